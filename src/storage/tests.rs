//! The store over both engines, its failure handling and recovery.

use std::path::PathBuf;

use super::*;
use crate::crdt::ReplicaId;

pub(super) fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "tally-storage-{tag}-{}-{}",
        std::process::id(),
        fastrand::u64(..)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// The same store over each engine: the disk one in a fresh folder (removed on drop) and memory.
struct Both {
    stores: Vec<Store>,
    dir: PathBuf,
}

impl Drop for Both {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn both(tag: &str) -> Both {
    let dir = temp_dir(tag);
    let disk = Store::open(&dir, 1, StoreOptions::default(), StoreDeps::default())
        .unwrap()
        .store;
    let mem = Store::with_engine(
        Arc::new(memory::MemoryEngine::new()),
        1,
        StoreOptions::default(),
        StoreDeps::default(),
    )
    .unwrap()
    .store;
    Both {
        stores: vec![disk, mem],
        dir,
    }
}

#[tokio::test]
async fn increments_survive_reopen_and_the_incarnation_is_kept() {
    let dir = temp_dir("reopen");
    let inc;
    {
        let opened = Store::open(&dir, 3, StoreOptions::default(), StoreDeps::default()).unwrap();
        assert!(opened.created);
        let s = opened.store;
        inc = s.identity().incarnation;
        assert_eq!(s.increment(vec![("a".into(), 5)]).await.unwrap(), vec![5]);
        assert_eq!(s.increment(vec![("a".into(), 2)]).await.unwrap(), vec![7]);
        s.close().await;
    }
    let opened = Store::open(&dir, 3, StoreOptions::default(), StoreDeps::default()).unwrap();
    assert!(!opened.created, "the folder was reopened, not created");
    assert_eq!(opened.store.identity().incarnation, inc);
    assert_eq!(opened.store.value("a"), 7);
    drop(opened);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn a_folder_is_locked_and_bound_to_its_node() {
    let dir = temp_dir("lock");
    let first = Store::open(&dir, 1, StoreOptions::default(), StoreDeps::default()).unwrap();
    assert!(matches!(
        Store::open(&dir, 1, StoreOptions::default(), StoreDeps::default()),
        Err(StoreError::Locked(_))
    ));
    first.store.close().await;
    drop(first);
    assert!(matches!(
        Store::open(&dir, 2, StoreOptions::default(), StoreDeps::default()),
        Err(StoreError::WrongNode {
            found: 1,
            wanted: 2,
            ..
        })
    ));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn a_batch_with_an_overflow_changes_nothing() {
    let both = both("overflow");
    for s in &both.stores {
        s.increment(vec![("a".into(), u64::MAX)]).await.unwrap();
        let err = s
            .increment(vec![("b".into(), 1), ("a".into(), 1)])
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Overflow(_)));
        assert_eq!(s.value("b"), 0);
        assert_eq!(s.value("a"), u128::from(u64::MAX));
        let changes = s.changes_since(0, 10).await.unwrap();
        assert_eq!(changes.counters.len(), 1, "the refused batch left no trace");
    }
}

#[tokio::test]
async fn concurrent_increments_are_all_applied() {
    let both = both("group");
    for s in &both.stores {
        let tasks: Vec<_> = (0..200)
            .map(|i| {
                let s = s.clone();
                tokio::spawn(async move { s.increment(vec![(format!("n{}", i % 7), 1)]).await })
            })
            .collect();
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        let total: u128 = (0..7).map(|i| s.value(&format!("n{i}"))).sum();
        assert_eq!(total, 200);
    }
}

#[tokio::test]
async fn changes_since_returns_only_newer_names_in_pages() {
    let both = both("changes");
    for s in &both.stores {
        for name in ["a", "b", "c"] {
            s.increment(vec![(name.into(), 1)]).await.unwrap();
        }
        let all = s.changes_since(0, 10).await.unwrap();
        assert_eq!(all.counters.len(), 3);
        assert!(!all.more);
        assert_eq!(all.next, all.head);
        // Touch "a" again: only it is newer than the previous head.
        s.increment(vec![("a".into(), 1)]).await.unwrap();
        let delta = s.changes_since(all.head, 10).await.unwrap();
        let names: Vec<_> = delta.counters.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["a"]);
        // Paging walks every name exactly once.
        let p1 = s.changes_since(0, 2).await.unwrap();
        assert!(p1.more);
        let p2 = s.changes_since(p1.next, 2).await.unwrap();
        assert!(!p2.more);
        let mut seen: Vec<_> = p1
            .counters
            .iter()
            .chain(&p2.counters)
            .map(|(n, _)| n.clone())
            .collect();
        seen.sort();
        assert_eq!(seen, ["a", "b", "c"]);
    }
}

#[tokio::test]
async fn merges_keep_the_maximum_and_record_the_mark() {
    let both = both("merge");
    for s in &both.stores {
        let peer = ReplicaId {
            node: 2,
            incarnation: 9,
        };
        let mut theirs = GCounter::new();
        theirs.increment(peer, 4).unwrap();
        let changed = s
            .merge(Merge {
                counters: vec![("x".into(), theirs.clone())],
                mark: Some(PeerMark {
                    incarnation: 9,
                    seq: 17,
                }),
            })
            .await
            .unwrap();
        assert_eq!(changed, 1);
        let again = s
            .merge(Merge {
                counters: vec![("x".into(), theirs)],
                mark: Some(PeerMark {
                    incarnation: 9,
                    seq: 5,
                }),
            })
            .await
            .unwrap();
        assert_eq!(again, 0);
        assert_eq!(s.value("x"), 4);
        assert_eq!(s.mark(9).await.unwrap(), 17, "marks never go down");
    }
}

#[tokio::test]
async fn a_closed_store_refuses_writes() {
    let both = both("closed");
    for s in &both.stores {
        s.close().await;
        assert!(matches!(
            s.increment(vec![("a".into(), 1)]).await,
            Err(StoreError::Closed)
        ));
    }
}

#[tokio::test]
async fn a_repeated_idempotency_key_is_applied_once_also_after_reopen() {
    let dir = temp_dir("idem");
    {
        let s = Store::open(&dir, 1, StoreOptions::default(), StoreDeps::default())
            .unwrap()
            .store;
        let first = s
            .increment_once(vec![("a".into(), 5)], Some("k1".into()))
            .await
            .unwrap();
        assert_eq!((first.values, first.replayed), (vec![5], false));
        s.increment(vec![("a".into(), 1)]).await.unwrap();
        let again = s
            .increment_once(vec![("a".into(), 5)], Some("k1".into()))
            .await
            .unwrap();
        assert_eq!((again.values, again.replayed), (vec![5], true));
        assert_eq!(s.value("a"), 6);
        assert!(matches!(
            s.increment_once(vec![("a".into(), 7)], Some("k1".into()))
                .await,
            Err(StoreError::KeyReused(_))
        ));
        assert_eq!(s.value("a"), 6, "a refused reuse changes nothing");
        assert_eq!(s.remembered_keys(), 1);
        s.close().await;
    }
    let s = Store::open(&dir, 1, StoreOptions::default(), StoreDeps::default())
        .unwrap()
        .store;
    let after = s
        .increment_once(vec![("a".into(), 5)], Some("k1".into()))
        .await
        .unwrap();
    assert!(after.replayed);
    assert_eq!(s.value("a"), 6);
    s.close().await;
    drop(s);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn concurrent_requests_with_one_key_apply_once() {
    let s = Store::with_engine(
        Arc::new(memory::MemoryEngine::new()),
        1,
        StoreOptions::default(),
        StoreDeps::default(),
    )
    .unwrap()
    .store;
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let s = s.clone();
            tokio::spawn(async move {
                s.increment_once(vec![("a".into(), 3)], Some("same".into()))
                    .await
            })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap().values, vec![3]);
    }
    assert_eq!(s.value("a"), 3);
}

#[tokio::test]
async fn remembered_keys_are_bounded() {
    let options = StoreOptions {
        idempotency_capacity: 3,
        ..StoreOptions::default()
    };
    let engine = Arc::new(memory::MemoryEngine::new());
    let s = Store::with_engine(engine.clone(), 1, options.clone(), StoreDeps::default())
        .unwrap()
        .store;
    for i in 0..5 {
        s.increment_once(vec![("a".into(), 1)], Some(format!("k{i}")))
            .await
            .unwrap();
    }
    assert_eq!(s.remembered_keys(), 3);
    // The oldest was forgotten: reusing it is a new increment.
    let again = s
        .increment_once(vec![("a".into(), 1)], Some("k0".into()))
        .await
        .unwrap();
    assert!(!again.replayed);
    assert_eq!(s.value("a"), 6);
    // What is stored matches what is remembered.
    s.close().await;
    let reopened = Store::with_engine(engine, 1, options, StoreDeps::default())
        .unwrap()
        .store;
    assert_eq!(reopened.remembered_keys(), 3);
}

#[tokio::test]
async fn idempotency_keys_expire_at_their_window_by_the_injected_clock() {
    let now = Arc::new(std::sync::atomic::AtomicU64::new(1_000));
    let clock = now.clone();
    let options = StoreOptions {
        idempotency_window: Duration::from_secs(10),
        ..StoreOptions::default()
    };
    let deps = StoreDeps {
        clock: WallClock(Arc::new(move || {
            clock.load(std::sync::atomic::Ordering::SeqCst)
        })),
        ..StoreDeps::default()
    };
    let s = Store::with_engine(Arc::new(memory::MemoryEngine::new()), 1, options, deps)
        .unwrap()
        .store;
    let key = || Some("k".to_string());
    assert!(
        !s.increment_once(vec![("a".into(), 1)], key())
            .await
            .unwrap()
            .replayed
    );
    now.store(10_999, std::sync::atomic::Ordering::SeqCst);
    assert!(
        s.increment_once(vec![("a".into(), 1)], key())
            .await
            .unwrap()
            .replayed,
        "inside the window: a replay"
    );
    now.store(11_000, std::sync::atomic::Ordering::SeqCst);
    assert!(
        !s.increment_once(vec![("a".into(), 1)], key())
            .await
            .unwrap()
            .replayed,
        "at the window's end: a new increment"
    );
    assert_eq!(s.value("a"), 2);
}

#[tokio::test]
async fn membership_changes_are_durable_and_published() {
    let mut both = both("membership");
    for s in &both.stores {
        let mut rx = s.watch_membership();
        let actors = crate::cluster::parse_actors(&["10.0.0.1".to_string()]).unwrap();
        let changed = s
            .update_membership(move |m| m.post(actors, 1))
            .await
            .unwrap()
            .expect("a first config is a change");
        assert!(rx.has_changed().unwrap());
        assert_eq!(**rx.borrow_and_update(), changed);
        let again = crate::cluster::parse_actors(&["10.0.0.1".to_string()]).unwrap();
        assert!(
            s.update_membership(move |m| m.post(again, 1))
                .await
                .unwrap()
                .is_none()
        );
        assert_eq!(s.membership(), changed);
    }
    let s = both.stores.remove(0);
    s.close().await;
    drop(s);
    let reopened = Store::open(&both.dir, 1, StoreOptions::default(), StoreDeps::default())
        .unwrap()
        .store;
    assert_eq!(reopened.membership().stamp().version, 1);
}
