//! An engine for tests that runs every call on both real engines, redb on
//! disk and memory, and panics the moment they answer differently: the two
//! engines keep one contract, and any divergence is a bug in one of them.

use std::path::Path;

use super::memory::MemoryEngine;
use super::redb::RedbEngine;
use super::{Batch, Changes, Engine, Loaded, StoreError};

pub struct Mirror {
    pub disk: RedbEngine,
    pub mem: MemoryEngine,
}

fn same_outcome<T: PartialEq + std::fmt::Debug>(
    what: &str,
    disk: Result<T, StoreError>,
    mem: Result<T, StoreError>,
) -> Result<T, StoreError> {
    match (disk, mem) {
        (Ok(d), Ok(m)) => {
            assert_eq!(d, m, "{what}: the engines disagree");
            Ok(d)
        }
        (Err(d), Err(_)) => Err(d),
        (d, m) => panic!("{what}: one engine failed: disk {d:?}, memory {m:?}"),
    }
}

impl Engine for Mirror {
    fn load(&self, node: u64) -> Result<Loaded, StoreError> {
        let d = self.disk.load(node)?;
        let m = self.mem.load(node)?;
        // Incarnations are drawn at random by each engine; the rest must match.
        assert_eq!(d.counters, m.counters, "load: counters");
        assert_eq!(d.keys, m.keys, "load: idempotency keys");
        assert_eq!(d.membership, m.membership, "load: membership");
        assert_eq!(d.head, m.head, "load: head");
        Ok(d)
    }

    fn commit(&self, batch: &Batch) -> Result<u64, StoreError> {
        same_outcome("commit", self.disk.commit(batch), self.mem.commit(batch))
    }

    fn changes_since(&self, since: u64, limit: usize) -> Result<Changes, StoreError> {
        let d = self.disk.changes_since(since, limit)?;
        let m = self.mem.changes_since(since, limit)?;
        assert_eq!(
            (&d.counters, d.next, d.head, d.more),
            (&m.counters, m.next, m.head, m.more),
            "changes_since({since}, {limit})"
        );
        Ok(d)
    }

    fn mark(&self, peer: u64) -> Result<u64, StoreError> {
        same_outcome("mark", self.disk.mark(peer), self.mem.mark(peer))
    }

    fn reopen(&self) -> Result<(), StoreError> {
        same_outcome("reopen", self.disk.reopen(), self.mem.reopen())
    }

    fn location(&self) -> Option<&Path> {
        self.disk.location()
    }

    fn blocking(&self) -> bool {
        true
    }
}
