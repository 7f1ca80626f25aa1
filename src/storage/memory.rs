//! The memory engine: the same contract as the disk engine, kept in a map.
//!
//! Used by simulations and tests. Share one `Arc<MemoryEngine>` between a
//! node and its restarted self to model a disk that survives a crash; use a
//! fresh one to model a lost data folder. Commits can be made to fail, to
//! model a full or broken disk.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use super::idempotency::KeyRecord;
use super::{Batch, Changes, Engine, Loaded, StoreError};
use crate::cluster::ClusterConfig;
use crate::crdt::GCounter;

#[derive(Default)]
struct State {
    node: u64,
    incarnation: u64,
    seq: u64,
    counters: BTreeMap<String, (u64, GCounter)>,
    by_seq: BTreeMap<u64, String>,
    marks: HashMap<u64, u64>,
    config: ClusterConfig,
    keys: BTreeMap<String, KeyRecord>,
}

#[derive(Default)]
pub struct MemoryEngine {
    state: Mutex<State>,
    fail_commits: AtomicBool,
}

impl MemoryEngine {
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes every later commit fail (true) or succeed again (false).
    pub fn fail_commits(&self, fail: bool) {
        self.fail_commits.store(fail, Ordering::SeqCst);
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Engine for MemoryEngine {
    fn load(&self, node: u64) -> Result<Loaded, StoreError> {
        let mut s = self.state();
        let created = s.incarnation == 0;
        if created {
            s.node = node;
            s.incarnation = fastrand::u64(1..);
        } else if s.node != node {
            return Err(StoreError::WrongNode {
                path: "(memory)".into(),
                found: s.node,
                wanted: node,
            });
        }
        Ok(Loaded {
            incarnation: s.incarnation,
            config: s.config.clone(),
            counters: s
                .counters
                .iter()
                .map(|(k, (_, c))| (k.clone(), c.clone()))
                .collect(),
            keys: s.keys.iter().map(|(k, r)| (k.clone(), r.clone())).collect(),
            created,
        })
    }

    fn commit(&self, batch: &Batch<'_>) -> Result<(), StoreError> {
        if self.fail_commits.load(Ordering::SeqCst) {
            return Err(StoreError::Engine("injected commit failure".into()));
        }
        let mut s = self.state();
        for (name, counter) in batch.counters {
            s.seq += 1;
            let seq = s.seq;
            if let Some((old, _)) = s.counters.insert(name.clone(), (seq, counter.clone())) {
                s.by_seq.remove(&old);
            }
            s.by_seq.insert(seq, name.clone());
        }
        for &(peer, mark) in batch.marks {
            let slot = s.marks.entry(peer).or_insert(0);
            *slot = (*slot).max(mark);
        }
        if let Some(config) = batch.config {
            s.config = config.clone();
        }
        for k in batch.keys_del {
            s.keys.remove(k);
        }
        for (k, r) in batch.keys_put {
            s.keys.insert(k.clone(), r.clone());
        }
        Ok(())
    }

    fn changes_since(&self, since: u64, limit: usize) -> Result<Changes, StoreError> {
        let s = self.state();
        let mut out = Changes {
            head: s.seq,
            next: s.seq,
            ..Changes::default()
        };
        for (&seq, name) in s.by_seq.range(since.saturating_add(1)..) {
            if out.counters.len() == limit {
                out.more = true;
                break;
            }
            out.next = seq;
            out.counters
                .push((name.clone(), s.counters[name].1.clone()));
        }
        if !out.more {
            out.next = s.seq;
        }
        Ok(out)
    }

    fn mark(&self, peer_incarnation: u64) -> Result<u64, StoreError> {
        Ok(self
            .state()
            .marks
            .get(&peer_incarnation)
            .copied()
            .unwrap_or(0))
    }

    fn location(&self) -> Option<&Path> {
        None
    }

    fn blocking(&self) -> bool {
        false
    }
}
