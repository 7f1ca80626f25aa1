//! An engine for tests that runs every call on both real engines, redb on
//! disk and memory, and panics the moment they answer differently: the two
//! engines keep one contract, and any divergence is a bug in one of them.

use std::path::Path;

use super::memory::MemoryEngine;
use super::redb::RedbEngine;
use super::{Batch, Changes, Engine, Loaded, StoreError};

pub struct Mirror<D: Engine = RedbEngine> {
    pub disk: D,
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

impl<D: Engine> Engine for Mirror<D> {
    fn load(&self, node: u64) -> Result<Loaded, StoreError> {
        let d = self.disk.load(node)?;
        let m = self.mem.load(node)?;
        // Incarnations are drawn at random by each engine; the rest must match.
        assert_eq!(d.counters, m.counters, "load: counters");
        assert_eq!(d.keys, m.keys, "load: idempotency keys");
        assert_eq!(d.membership, m.membership, "load: membership");
        assert_eq!(d.head, m.head, "load: head");
        assert_eq!(d.me, m.me, "load: me");
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

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use std::path::PathBuf;
    use std::sync::Arc;

    use super::*;
    use crate::cluster::parse_actors;
    use crate::crdt::{GCounter, ReplicaId};
    use crate::storage::logged::{LogEngine, LogLimits};
    use crate::storage::{Merge, PeerMark, Store, StoreDeps, StoreOptions, memory, redb};

    #[derive(Clone, Debug)]
    enum Step {
        Inc(u8, u64, Option<u8>),
        Merge(u8, u64, u64),
        Changes(u64, usize),
        Mark(u64),
        Post(u8),
        Reopen,
        /// Stops the node and starts it again on the same folder, after
        /// leaving part of a record after the last one in the newest log
        /// segment (a record torn by a crash; the number seeds which part).
        Restart(u64),
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            4 => (0u8..6, 0u64..5, proptest::option::of(0u8..4))
                .prop_map(|(n, a, k)| Step::Inc(n, a, k)),
            2 => (0u8..6, 1u64..4, 0u64..20).prop_map(|(n, p, c)| Step::Merge(n, p, c)),
            2 => (0u64..30, 1usize..4).prop_map(|(s, l)| Step::Changes(s, l)),
            1 => (1u64..4).prop_map(Step::Mark),
            1 => (1u8..8).prop_map(Step::Post),
            1 => Just(Step::Reopen),
            1 => any::<u64>().prop_map(Step::Restart),
        ]
    }

    fn temp_dir(what: &str) -> PathBuf {
        std::env::temp_dir().join(format!(
            "tally-{what}-{}-{}",
            std::process::id(),
            fastrand::u64(..)
        ))
    }

    /// Runs `steps` through a store over both engines; `open` opens the
    /// disk engine on the folder (again, after a restart).
    async fn run<D: Engine>(dir: &Path, open: impl Fn(&Path) -> D, steps: Vec<Step>) {
        let mut engine = Arc::new(Mirror {
            disk: open(dir),
            mem: memory::MemoryEngine::new(),
        });
        let mut s = Store::with_engine(
            engine.clone(),
            1,
            StoreOptions::default(),
            StoreDeps::default(),
        )
        .unwrap()
        .store;
        for step in steps {
            match step {
                Step::Inc(n, amount, key) => {
                    let _ = s
                        .increment_once(
                            vec![(format!("n{n}"), amount)],
                            key.map(|k| format!("k{k}")),
                        )
                        .await;
                }
                Step::Merge(n, peer, count) => {
                    let mut c = GCounter::new();
                    let _ = c.increment(
                        ReplicaId {
                            node: peer + 1,
                            incarnation: peer,
                        },
                        count,
                    );
                    s.merge(Merge {
                        counters: vec![(format!("n{n}"), c)],
                        mark: Some(PeerMark {
                            incarnation: peer,
                            seq: count,
                        }),
                    })
                    .await
                    .unwrap();
                }
                Step::Changes(since, limit) => {
                    s.changes_since(since, limit).await.unwrap();
                }
                Step::Mark(peer) => {
                    s.mark(peer).await.unwrap();
                }
                Step::Post(bits) => {
                    let actors: Vec<String> = (0..3)
                        .filter(|i| bits & (1 << i) != 0)
                        .map(|i| format!("10.0.0.{}", i + 1))
                        .collect();
                    let actors = parse_actors(&actors).unwrap();
                    s.update_membership(move |m| m.post(actors, 1))
                        .await
                        .unwrap();
                }
                Step::Reopen => engine.reopen().unwrap(),
                Step::Restart(torn) => {
                    s.close().await;
                    drop(s);
                    let Mirror { disk, mem } =
                        Arc::into_inner(engine).expect("the store is closed");
                    drop(disk);
                    crate::storage::journal::tear(
                        &crate::storage::disk::OsDisk::unlocked(dir),
                        torn,
                    );
                    engine = Arc::new(Mirror {
                        disk: open(dir),
                        mem,
                    });
                    // Opening loads both engines and compares what they hold.
                    s = Store::with_engine(
                        engine.clone(),
                        1,
                        StoreOptions::default(),
                        StoreDeps::default(),
                    )
                    .unwrap()
                    .store;
                }
            }
        }
        s.close().await;
        // What each engine kept, read back whole, must agree too.
        engine.load(1).unwrap();
    }

    fn on_runtime(f: impl std::future::Future<Output = ()>) {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(f);
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

        /// Every operation runs on redb and on memory at once, and they must
        /// answer alike, down to sequence numbers and change pages.
        #[test]
        fn redb_and_memory_keep_one_contract(steps in prop::collection::vec(step(), 1..40)) {
            let dir = temp_dir("mirror-redb");
            on_runtime(run(&dir, |d| redb::RedbEngine::open(d).unwrap(), steps));
            std::fs::remove_dir_all(&dir).unwrap();
        }

        /// The same for the logged engine, with limits so small that most
        /// commits fold the log into the B-tree, and restarts that replay a
        /// log ending in a torn record.
        #[test]
        fn logged_and_memory_keep_one_contract(
            steps in prop::collection::vec(step(), 1..60),
            names in 1usize..6,
            bytes in 64u64..2048,
        ) {
            let dir = temp_dir("mirror-log");
            let limits = LogLimits { names, bytes };
            on_runtime(run(&dir, |d| LogEngine::with_limits(d, limits).unwrap(), steps));
            std::fs::remove_dir_all(&dir).unwrap();
        }
    }
}
