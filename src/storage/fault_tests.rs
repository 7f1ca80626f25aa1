//! Storage faults on the memory engine under paused time: a full disk, an
//! fsync error whose write landed, a stall, a writer that dies; and the
//! disk engine reopened.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::tests::temp_dir;
use super::*;

/// A memory store with a short storage deadline, and its engine.
fn faulty() -> (Store, Arc<memory::MemoryEngine>) {
    let engine = Arc::new(memory::MemoryEngine::new());
    let options = StoreOptions {
        timeout: Duration::from_secs(1),
        ..StoreOptions::default()
    };
    let store = Store::with_engine(engine.clone(), 1, options, StoreDeps::default())
        .unwrap()
        .store;
    (store, engine)
}

/// A store over `engine` with the default options.
fn open(engine: Arc<dyn Engine>) -> Store {
    Store::with_engine(engine, 1, StoreOptions::default(), StoreDeps::default())
        .unwrap()
        .store
}

/// Waits (in paused time) until storage reports itself healthy.
async fn healed(s: &Store) -> bool {
    for _ in 0..100 {
        if s.health().healthy {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

#[tokio::test(start_paused = true)]
async fn a_full_disk_refuses_writes_then_heals_by_itself() {
    let (s, engine) = faulty();
    s.increment(vec![("a".into(), 1)]).await.unwrap();
    engine.inject(memory::DiskFault::Full);
    let err = s.increment(vec![("a".into(), 1)]).await.unwrap_err();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err}");
    assert!(err.is_transient());
    assert!(err.to_string().contains("no space left"), "{err}");
    assert_eq!(s.value("a"), 1, "nothing of a failed commit is visible");
    let report = s.health();
    assert!(!report.healthy);
    assert!(report.problem.unwrap().contains("no space left"));
    // While it fails, writes are refused at once, and reads work.
    let started = Instant::now();
    assert!(s.increment(vec![("b".into(), 1)]).await.is_err());
    assert!(started.elapsed() < Duration::from_millis(10));
    assert_eq!(s.value("a"), 1);
    // Still failing: retries do not heal it.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(!s.health().healthy);
    engine.inject(memory::DiskFault::None);
    assert!(
        healed(&s).await,
        "storage recovers once the disk takes writes"
    );
    assert_eq!(s.health().recoveries, 1);
    assert_eq!(s.increment(vec![("a".into(), 1)]).await.unwrap(), vec![2]);
}

#[tokio::test(start_paused = true)]
async fn a_commit_reported_failed_but_written_is_folded_in_on_recovery() {
    let engine = Arc::new(memory::MemoryEngine::new());
    let opened = Store::with_engine(
        engine.clone(),
        1,
        StoreOptions::default(),
        StoreDeps::default(),
    )
    .unwrap();
    let (s, mut committed) = (opened.store, opened.committed);
    engine.inject(memory::DiskFault::FailSync);
    assert!(s.increment(vec![("a".into(), 5)]).await.is_err());
    assert_eq!(s.value("a"), 0, "not acknowledged, not visible");
    assert!(committed.try_recv().is_err(), "nothing published");
    engine.inject(memory::DiskFault::None);
    assert!(healed(&s).await);
    // The disk kept it: the node resumes from what the disk holds, so it
    // never counts again from a value lower than one it may have written.
    assert_eq!(s.value("a"), 5);
    assert_eq!(
        committed.try_recv().unwrap().names,
        ["a"],
        "and replicates it"
    );
    assert_eq!(s.increment(vec![("a".into(), 1)]).await.unwrap(), vec![6]);
}

#[tokio::test(start_paused = true)]
async fn a_stalled_disk_costs_callers_one_deadline_and_shows_in_health() {
    let (s, engine) = faulty();
    engine.inject(memory::DiskFault::Stall(
        Instant::now() + Duration::from_secs(10),
    ));
    let started = Instant::now();
    let err = s.increment(vec![("a".into(), 1)]).await.unwrap_err();
    assert!(matches!(err, StoreError::Timeout(_)), "{err}");
    assert_eq!(started.elapsed(), Duration::from_secs(1));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let report = s.health();
    assert!(!report.healthy);
    assert!(report.problem.unwrap().contains("stalled"));
    let marks = s.mark(7).await;
    assert!(
        matches!(marks, Err(StoreError::Timeout(_))),
        "reads wait at most the deadline too"
    );
    // Once the disk answers, the timed-out increment lands after all
    // (its outcome was unknown, not refused) and writes go on.
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert!(s.health().healthy);
    assert_eq!(s.increment(vec![("a".into(), 1)]).await.unwrap(), vec![2]);
}

#[tokio::test]
async fn a_dead_writer_is_reported_not_hidden() {
    a_dead_writer_is_reported(memory::MemoryEngine::new()).await;
}

#[tokio::test]
async fn a_dead_writer_on_its_own_thread_is_reported_not_hidden() {
    a_dead_writer_is_reported(memory::MemoryEngine::blocking()).await;
}

async fn a_dead_writer_is_reported(engine: memory::MemoryEngine) {
    let engine = Arc::new(engine);
    engine.inject(memory::DiskFault::Panic);
    let s = open(engine);
    assert!(matches!(
        s.increment(vec![("a".into(), 1)]).await,
        Err(StoreError::Closed)
    ));
    let reason = tokio::time::timeout(Duration::from_secs(5), s.stopped())
        .await
        .expect("the store reports its writer's end");
    assert!(reason.contains("panicked"), "{reason}");
}

/// A disk engine's commits run on the writer's own thread, not on the
/// runtime's blocking pool nor on one of its workers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocking_engine_commits_on_the_writers_own_thread() {
    let engine = Arc::new(memory::MemoryEngine::blocking());
    let s = open(engine.clone());
    for i in 1..=3 {
        assert_eq!(s.increment(vec![("a".into(), 1)]).await.unwrap(), vec![i]);
    }
    let threads = engine.commit_threads();
    assert_eq!(threads.len(), 3, "{threads:?}");
    assert!(
        threads.iter().all(|t| t.as_deref() == Some("tally-writer")),
        "{threads:?}"
    );
    s.close().await;
}

#[tokio::test]
async fn a_disk_store_reopens_with_everything_it_held() {
    let dir = temp_dir("reopen-engine");
    let engine = Arc::new(redb::RedbEngine::open(&dir).unwrap());
    let s = open(engine.clone());
    s.increment(vec![("a".into(), 3)]).await.unwrap();
    engine.reopen().unwrap();
    assert_eq!(engine.load(1).unwrap().counters["a"].value(), 3);
    assert_eq!(s.increment(vec![("a".into(), 1)]).await.unwrap(), vec![4]);
    s.close().await;
    drop(s);
    drop(engine);
    std::fs::remove_dir_all(&dir).unwrap();
}
