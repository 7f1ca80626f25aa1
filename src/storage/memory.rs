//! The memory engine: the same contract as the disk engine, kept in a map.
//!
//! Used by simulations and tests. Share one `Arc<MemoryEngine>` between a
//! node and its restarted self to model a disk that survives a crash; use a
//! fresh one to model a lost data folder. Disk faults can be injected
//! ([`DiskFault`]); like redb after an I/O error, a failed commit leaves the
//! engine refusing every later commit until it is reopened, and a reopen
//! fails while the fault lasts.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Mutex;

use tokio::time::Instant;

use super::idempotency::KeyRecord;
use super::{Batch, Changes, Engine, Loaded, StoreError};
use crate::cluster::{Actor, Membership};
use crate::crdt::GCounter;

/// A fault of the simulated disk.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DiskFault {
    #[default]
    None,
    /// Commits fail with ENOSPC and write nothing.
    Full,
    /// Commits write everything, then report an fsync error (EIO): the
    /// caller cannot tell whether they were kept.
    FailSync,
    /// Every call waits until then, as on a disk that stopped answering.
    Stall(Instant),
    /// Commits panic: a bug in the writer's path, not a disk fault.
    Panic,
}

#[derive(Default)]
struct State {
    node: u64,
    incarnation: u64,
    seq: u64,
    counters: BTreeMap<String, (u64, GCounter)>,
    by_seq: BTreeMap<u64, String>,
    marks: HashMap<u64, u64>,
    membership: Membership,
    keys: BTreeMap<String, KeyRecord>,
    me: Option<Actor>,
    fault: DiskFault,
    /// Set by a failed commit, cleared by a reopen (redb's behaviour).
    poisoned: bool,
}

#[derive(Default)]
pub struct MemoryEngine {
    state: Mutex<State>,
    /// Says it blocks, as a disk engine does (its writer then runs on a
    /// thread of its own), and notes which thread each commit ran on.
    blocks: bool,
    commit_threads: Mutex<Vec<Option<String>>>,
}

impl MemoryEngine {
    pub fn new() -> Self {
        Self::default()
    }

    /// An engine treated as a disk engine: see [`Engine::blocking`].
    pub fn blocking() -> Self {
        MemoryEngine {
            blocks: true,
            ..Self::default()
        }
    }

    /// The names of the threads commits ran on, oldest first (only for an
    /// engine made by [`MemoryEngine::blocking`]).
    pub fn commit_threads(&self) -> Vec<Option<String>> {
        self.commit_threads
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Makes every later commit fail as on a full disk (true), or lets the
    /// disk take writes again (false).
    pub fn fail_commits(&self, fail: bool) {
        self.inject(if fail {
            DiskFault::Full
        } else {
            DiskFault::None
        });
    }

    /// Sets the disk's fault; `DiskFault::None` ends it.
    pub fn inject(&self, fault: DiskFault) {
        self.state().fault = fault;
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn io(kind: std::io::ErrorKind, what: &str) -> StoreError {
    StoreError::engine(std::io::Error::new(kind, what.to_string()))
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
            membership: s.membership.clone(),
            counters: s
                .counters
                .iter()
                .map(|(k, (_, c))| (k.clone(), c.clone()))
                .collect(),
            keys: s.keys.iter().map(|(k, r)| (k.clone(), r.clone())).collect(),
            head: s.seq,
            me: s.me.clone(),
            created,
            salvage: None,
            damage: Vec::new(),
        })
    }

    fn commit(&self, batch: &Batch) -> Result<u64, StoreError> {
        if self.blocks {
            let thread = std::thread::current().name().map(str::to_string);
            let mut threads = self
                .commit_threads
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            threads.push(thread);
        }
        let mut s = self.state();
        if s.poisoned {
            return Err(io(
                std::io::ErrorKind::Other,
                "previous I/O error; reopen the database",
            ));
        }
        match s.fault {
            DiskFault::Full => {
                s.poisoned = true;
                return Err(io(
                    std::io::ErrorKind::StorageFull,
                    "no space left on device (simulated)",
                ));
            }
            DiskFault::FailSync => s.poisoned = true,
            DiskFault::Panic => {
                drop(s);
                panic!("injected: the engine's commit panicked");
            }
            DiskFault::None | DiskFault::Stall(_) => {}
        }
        for (name, counter) in &batch.counters {
            s.seq += 1;
            let seq = s.seq;
            if let Some((old, _)) = s.counters.insert(name.clone(), (seq, counter.clone())) {
                s.by_seq.remove(&old);
            }
            s.by_seq.insert(seq, name.clone());
        }
        for mark in &batch.marks {
            let slot = s.marks.entry(mark.incarnation).or_insert(0);
            *slot = (*slot).max(mark.seq);
        }
        if let Some(m) = &batch.membership {
            s.membership = m.clone();
        }
        if let Some(me) = &batch.me {
            s.me = Some(me.clone());
        }
        for k in &batch.keys_del {
            s.keys.remove(k);
        }
        for (k, r) in &batch.keys_put {
            s.keys.insert(k.clone(), r.clone());
        }
        if s.fault == DiskFault::FailSync {
            return Err(io(std::io::ErrorKind::Other, "fsync failed (simulated)"));
        }
        Ok(s.seq)
    }

    fn reopen(&self) -> Result<(), StoreError> {
        let mut s = self.state();
        match s.fault {
            DiskFault::Full | DiskFault::FailSync => Err(io(
                std::io::ErrorKind::Other,
                "the disk is still failing (simulated)",
            )),
            DiskFault::None | DiskFault::Stall(_) | DiskFault::Panic => {
                s.poisoned = false;
                Ok(())
            }
        }
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
        self.blocks
    }

    fn ready_at(&self) -> Option<Instant> {
        match self.state().fault {
            DiskFault::Stall(until) if until > Instant::now() => Some(until),
            _ => None,
        }
    }
}
