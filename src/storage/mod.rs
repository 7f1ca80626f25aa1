//! Durable storage behind one writer, over a pluggable engine.
//!
//! Guarantees:
//! - An increment is committed (durably, with the disk engine) before its
//!   reply is sent, and every write that arrives while a commit is in
//!   progress joins the next one (group commit), so throughput does not fall
//!   to one fsync per request.
//! - An increment that would overflow this node's component is refused and
//!   changes nothing; a batch of increments is applied all or nothing.
//! - Every stored change to a name gets a new local sequence number, indexed,
//!   so a peer can ask "what changed since sequence N" and get only that
//!   (the basis of anti-entropy, see `replication`).
//! - A data folder is used by one process at a time, belongs to one node id,
//!   and carries a random incarnation drawn when it was created (SPEC G7).
//! - Every call waits at most the storage deadline (`--storage-timeout`).
//! - A failed commit acknowledges nothing; storage then reports itself
//!   unhealthy, refuses writes at once (callers answer 503) while local reads
//!   keep working from memory, and the writer reopens the database in the
//!   background, reloads what it holds, and resumes by itself (SPEC G10).
//!
//! An in-memory mirror of every counter answers local reads without touching
//! the engine; only the writer changes it, and only after a commit succeeds.
//! The membership (config) is owned the same way: changed only by the
//! writer, after it is durable, and published on a watch channel.
//! Two engines implement [`Engine`]: [`redb::RedbEngine`] on disk, whose
//! calls run on blocking threads, and [`memory::MemoryEngine`], called inline
//! so simulations stay deterministic, with injectable disk faults.
//! Left out: compaction of the redb file and online backup.

pub mod health;
pub mod idempotency;
pub mod memory;
pub mod redb;
mod writer;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

pub use health::{Health, HealthReport};
use idempotency::KeyRecord;

use crate::cluster::Membership;
use crate::crdt::{GCounter, Overflow, ReplicaId};
use crate::metrics::Metrics;

/// Most operations folded into one commit.
const MAX_BATCH: usize = 4096;

/// A source error of an engine, kept whole so its cause (an OS error) shows.
pub type EngineSource = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("data folder {path}: {source}")]
    Folder {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("data folder {0} is in use by another tally process")]
    Locked(PathBuf),
    #[error("data folder {path} belongs to node {found}, not node {wanted}")]
    WrongNode {
        path: PathBuf,
        found: u64,
        wanted: u64,
    },
    #[error("{}{source}", file.as_ref().map(|f| format!("{}: ", f.display())).unwrap_or_default())]
    Engine {
        file: Option<PathBuf>,
        source: EngineSource,
    },
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    #[error(transparent)]
    Overflow(#[from] Overflow),
    #[error("Idempotency-Key {0:?} was first used with a different request")]
    KeyReused(String),
    /// Storage failed and is being reopened; nothing was acknowledged.
    #[error("storage is unavailable ({0}); writes resume once it recovers")]
    Unavailable(Arc<StoreError>),
    /// The call may still be applied later: its outcome is unknown.
    #[error("storage did not answer within {0:?}")]
    Timeout(Duration),
    #[error("storage is shutting down")]
    Closed,
}

impl StoreError {
    /// An engine error with no file named yet.
    pub fn engine(source: impl Into<EngineSource>) -> StoreError {
        StoreError::Engine {
            file: None,
            source: source.into(),
        }
    }

    /// Names the file an engine error happened in, if it names none yet.
    pub fn in_file(self, path: &Path) -> StoreError {
        match self {
            StoreError::Engine { file: None, source } => StoreError::Engine {
                file: Some(path.to_path_buf()),
                source,
            },
            other => other,
        }
    }

    /// Whether retrying later may succeed (storage trouble rather than a
    /// refusal of this request).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            StoreError::Engine { .. } | StoreError::Unavailable(_) | StoreError::Timeout(_)
        )
    }
}

/// What an engine holds, read once at open.
pub struct Loaded {
    pub incarnation: u64,
    pub membership: Membership,
    pub counters: BTreeMap<String, GCounter>,
    /// Remembered idempotency keys.
    pub keys: Vec<(String, KeyRecord)>,
    /// The last local sequence number given out.
    pub head: u64,
    /// Whether the data folder was new.
    pub created: bool,
}

/// How far a node has merged a peer's changes: the peer's own local
/// sequence, valid for one incarnation of the peer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PeerMark {
    pub incarnation: u64,
    pub seq: u64,
}

/// One commit's worth of changes.
#[derive(Default)]
pub struct Batch {
    /// Each name's whole new counter; each gets a new local sequence.
    pub counters: BTreeMap<String, GCounter>,
    /// Only raised, never lowered.
    pub marks: Vec<PeerMark>,
    pub membership: Option<Membership>,
    /// Idempotency keys to remember, and to forget.
    pub keys_put: Vec<(String, KeyRecord)>,
    pub keys_del: Vec<String>,
}

impl Batch {
    pub fn is_empty(&self) -> bool {
        self.counters.is_empty()
            && self.marks.is_empty()
            && self.membership.is_none()
            && self.keys_put.is_empty()
            && self.keys_del.is_empty()
    }
}

/// A transactional store of counters, marks and membership.
pub trait Engine: Send + Sync + 'static {
    /// Reads identity, membership and counters, creating the identity on first use.
    fn load(&self, node: u64) -> Result<Loaded, StoreError>;
    /// Applies a batch atomically; returns the last sequence number given out.
    fn commit(&self, batch: &Batch) -> Result<u64, StoreError>;
    /// Names changed after `since`, at most `limit`, from one snapshot.
    fn changes_since(&self, since: u64, limit: usize) -> Result<Changes, StoreError>;
    fn mark(&self, peer_incarnation: u64) -> Result<u64, StoreError>;
    /// Closes and reopens the underlying files after an I/O error.
    fn reopen(&self) -> Result<(), StoreError> {
        Ok(())
    }
    /// The data folder, for engines that have one.
    fn location(&self) -> Option<&Path>;
    /// Whether calls block on I/O (and so belong on a blocking thread).
    fn blocking(&self) -> bool;
    /// For simulated disks: calls must wait until then (a stalled disk).
    fn ready_at(&self) -> Option<Instant> {
        None
    }
}

/// Identity of the data folder's owner.
#[derive(Clone, Copy, Debug)]
pub struct Identity {
    pub node: u64,
    pub incarnation: u64,
}

impl Identity {
    pub fn replica(&self) -> ReplicaId {
        ReplicaId {
            node: self.node,
            incarnation: self.incarnation,
        }
    }
}

/// What a peer asked for when pulling: our changes after `since`.
#[derive(Debug, Default)]
pub struct Changes {
    pub counters: Vec<(String, GCounter)>,
    /// Resume from here next time.
    pub next: u64,
    /// Our head sequence when the snapshot was taken.
    pub head: u64,
    pub more: bool,
}

/// A peer's changes to fold in, and the peer mark to record with them.
pub struct Merge {
    pub counters: Vec<(String, GCounter)>,
    pub mark: Option<PeerMark>,
}

/// The answer to an increment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Incremented {
    /// Each name's local value after the increment.
    pub values: Vec<u128>,
    /// True when an idempotency key matched and nothing was applied again.
    pub replayed: bool,
    /// The local sequence once it was durable: a peer holding our changes
    /// up to here holds this increment.
    pub seq: u64,
}

/// Tuning of the store.
#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// How long an idempotency key is remembered.
    pub idempotency_window: Duration,
    /// Most idempotency keys remembered; the oldest are forgotten first.
    pub idempotency_capacity: usize,
    /// Longest any call waits for storage (and when a running commit counts as stalled).
    pub timeout: Duration,
    /// Where commit latency, batch size, health and applied increments are counted.
    pub metrics: Metrics,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            idempotency_window: Duration::from_secs(24 * 3600),
            idempotency_capacity: 100_000,
            timeout: Duration::from_secs(5),
            metrics: Metrics::default(),
        }
    }
}

type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

/// A change to the membership, decided by the writer against the current one.
pub type MembershipChange = Box<dyn FnOnce(&Membership) -> Option<Membership> + Send>;

enum Op {
    Increment {
        items: Vec<(String, u64)>,
        key: Option<String>,
        reply: Reply<Incremented>,
    },
    Merge {
        merge: Merge,
        reply: Reply<Vec<String>>,
    },
    Membership {
        change: MembershipChange,
        reply: Reply<Option<Membership>>,
    },
    Close {
        reply: oneshot::Sender<()>,
    },
}

/// Published by the writer after each commit (before its callers are
/// answered) and after a recovery, so replication can push what changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Committed {
    /// Names whose own component changed (after a recovery: every name
    /// whose counter the disk held more of than memory).
    pub names: Vec<String>,
    /// The head sequence once these changes were durable.
    pub head: u64,
}

/// Handle to the store; cheap to clone.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

/// What the writer and every handle share.
struct Shared {
    /// Held briefly (a map lookup or an insert), never across an await, so a
    /// std lock is cheaper than an async one.
    memory: RwLock<BTreeMap<String, GCounter>>,
    membership: watch::Sender<Membership>,
    /// Count of remembered idempotency keys, for metrics and status.
    keys: AtomicUsize,
    head: AtomicU64,
    health: Health,
    /// Set when the writer stopped without being asked to.
    stopped: watch::Sender<Option<String>>,
}

struct Inner {
    engine: Arc<dyn Engine>,
    ops: mpsc::Sender<Op>,
    shared: Arc<Shared>,
    identity: Identity,
    timeout: Duration,
}

/// What `Store::open` found.
pub struct Opened {
    pub store: Store,
    pub created: bool,
    /// Every durable change to push, in commit order.
    pub committed: mpsc::UnboundedReceiver<Committed>,
}

impl Store {
    /// Opens (creating if needed) the data folder of node `node` on disk.
    pub fn open(dir: &Path, node: u64, options: StoreOptions) -> Result<Opened, StoreError> {
        Self::with_engine(Arc::new(redb::RedbEngine::open(dir)?), node, options)
    }

    /// Opens a store over any engine and starts its writer task (so it must
    /// be called inside a tokio runtime).
    pub fn with_engine(
        engine: Arc<dyn Engine>,
        node: u64,
        options: StoreOptions,
    ) -> Result<Opened, StoreError> {
        let loaded = engine.load(node)?;
        let identity = Identity {
            node,
            incarnation: loaded.incarnation,
        };
        let shared = Arc::new(Shared {
            memory: RwLock::new(loaded.counters),
            membership: watch::Sender::new(loaded.membership),
            keys: AtomicUsize::new(loaded.keys.len()),
            head: AtomicU64::new(loaded.head),
            health: Health::new(options.timeout, options.metrics.clone()),
            stopped: watch::Sender::new(None),
        });
        let (ops, rx) = mpsc::channel(MAX_BATCH);
        // Unbounded: the writer must never wait on replication; what is
        // queued is bounded by the commit rate while replication lags.
        let (publish, committed) = mpsc::unbounded_channel();
        writer::spawn(
            writer::Writer::new(
                engine.clone(),
                identity,
                shared.clone(),
                loaded.keys,
                &options,
                publish,
            ),
            rx,
        );
        Ok(Opened {
            store: Store {
                inner: Arc::new(Inner {
                    engine,
                    ops,
                    shared,
                    identity,
                    timeout: options.timeout,
                }),
            },
            created: loaded.created,
            committed,
        })
    }

    pub fn identity(&self) -> Identity {
        self.inner.identity
    }

    /// The data folder, if the engine has one.
    pub fn dir(&self) -> Option<&Path> {
        self.inner.engine.location()
    }

    /// This node's local value of `name` (0 when never seen).
    pub fn value(&self, name: &str) -> u128 {
        self.read(|m| m.get(name).map_or(0, GCounter::value))
    }

    pub fn counter(&self, name: &str) -> Option<GCounter> {
        self.read(|m| m.get(name).cloned())
    }

    pub fn names(&self) -> usize {
        self.read(|m| m.len())
    }

    /// Up to `limit` (name, counter) pairs with names after `after` that start with `prefix`.
    pub fn list(&self, prefix: &str, after: Option<&str>, limit: usize) -> Vec<(String, GCounter)> {
        use std::ops::Bound;
        let start = match after {
            Some(a) if a >= prefix => Bound::Excluded(a.to_string()),
            _ => Bound::Included(prefix.to_string()),
        };
        self.read(|m| {
            m.range((start, Bound::Unbounded))
                .take_while(|(k, _)| k.starts_with(prefix))
                .take(limit)
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        })
    }

    fn read<T>(&self, f: impl FnOnce(&BTreeMap<String, GCounter>) -> T) -> T {
        f(&self
            .inner
            .shared
            .memory
            .read()
            .unwrap_or_else(|p| p.into_inner()))
    }

    /// The durable membership (config).
    pub fn membership(&self) -> Membership {
        self.inner.shared.membership.borrow().clone()
    }

    /// Notified after each durable membership change.
    pub fn watch_membership(&self) -> watch::Receiver<Membership> {
        self.inner.shared.membership.subscribe()
    }

    /// The last local sequence number given out by a durable commit.
    pub fn head(&self) -> u64 {
        self.inner.shared.head.load(Ordering::Acquire)
    }

    pub fn health(&self) -> HealthReport {
        self.inner.shared.health.report()
    }

    /// Resolves with the reason if the writer stops without being closed:
    /// the store can then never write again.
    pub async fn stopped(&self) -> String {
        let mut rx = self.inner.shared.stopped.subscribe();
        match rx.wait_for(Option::is_some).await {
            Ok(reason) => reason.clone().unwrap_or_default(),
            Err(_) => "the storage writer is gone".into(),
        }
    }

    /// Adds each amount to this node's component of its name, atomically and
    /// durably; returns each name's local value after the batch.
    pub async fn increment(&self, items: Vec<(String, u64)>) -> Result<Vec<u128>, StoreError> {
        Ok(self.increment_once(items, None).await?.values)
    }

    /// Like [`Store::increment`], but a request repeated with the same `key`
    /// within the window is answered with the first answer and applied once.
    pub async fn increment_once(
        &self,
        items: Vec<(String, u64)>,
        key: Option<String>,
    ) -> Result<Incremented, StoreError> {
        self.call(|reply| Op::Increment { items, key, reply }).await
    }

    /// How many idempotency keys are remembered.
    pub fn remembered_keys(&self) -> usize {
        self.inner.shared.keys.load(Ordering::Relaxed)
    }

    /// Folds a peer's counters in; returns the names that changed.
    pub async fn merge(&self, merge: Merge) -> Result<Vec<String>, StoreError> {
        self.call(|reply| Op::Merge { merge, reply }).await
    }

    /// Applies `change` to the current membership in the writer, so changes
    /// never race; returns the new membership when it changed, once durable.
    pub async fn update_membership(
        &self,
        change: impl FnOnce(&Membership) -> Option<Membership> + Send + 'static,
    ) -> Result<Option<Membership>, StoreError> {
        let change: MembershipChange = Box::new(change);
        self.call(|reply| Op::Membership { change, reply }).await
    }

    /// Sends one operation to the writer and waits for its answer, at most
    /// the storage deadline. A timed-out operation may still be applied.
    async fn call<T>(&self, op: impl FnOnce(Reply<T>) -> Op) -> Result<T, StoreError> {
        let (tx, rx) = oneshot::channel();
        let op = op(tx);
        let exchange = async {
            self.inner
                .ops
                .send(op)
                .await
                .map_err(|_| StoreError::Closed)?;
            rx.await.map_err(|_| StoreError::Closed)?
        };
        tokio::time::timeout(self.inner.timeout, exchange)
            .await
            .map_err(|_| StoreError::Timeout(self.inner.timeout))?
    }

    /// Commits what is queued and stops the writer; later writes fail with `Closed`.
    pub async fn close(&self) {
        let (tx, rx) = oneshot::channel();
        if self.inner.ops.send(Op::Close { reply: tx }).await.is_ok() {
            let _ = rx.await;
        }
    }

    /// The peer mark recorded for a peer incarnation (0 when none).
    pub async fn mark(&self, peer_incarnation: u64) -> Result<u64, StoreError> {
        self.engine_call(move |e| e.mark(peer_incarnation)).await
    }

    /// Our changes after sequence `since`, at most `limit` names, from one snapshot.
    pub async fn changes_since(&self, since: u64, limit: usize) -> Result<Changes, StoreError> {
        self.engine_call(move |e| e.changes_since(since, limit))
            .await
    }

    async fn engine_call<T: Send + 'static>(
        &self,
        f: impl FnOnce(&dyn Engine) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let timeout = self.inner.timeout;
        tokio::time::timeout(timeout, run_engine(&self.inner.engine, f))
            .await
            .map_err(|_| StoreError::Timeout(timeout))?
    }

    /// Bytes used by the data folder's files (0 without a folder).
    pub fn disk_bytes(&self) -> u64 {
        let Some(dir) = self.dir() else { return 0 };
        std::fs::read_dir(dir)
            .map(|rd| {
                rd.filter_map(|e| e.ok()?.metadata().ok())
                    .map(|m| m.len())
                    .sum()
            })
            .unwrap_or(0)
    }
}

/// Runs one engine call: on a blocking thread for a disk engine, inline
/// (after any simulated stall) for the memory engine.
async fn run_engine<T: Send + 'static>(
    engine: &Arc<dyn Engine>,
    f: impl FnOnce(&dyn Engine) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    if let Some(at) = engine.ready_at() {
        tokio::time::sleep_until(at).await;
    }
    if !engine.blocking() {
        return f(&**engine);
    }
    let engine = engine.clone();
    match tokio::task::spawn_blocking(move || f(&*engine)).await {
        Ok(result) => result,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(_) => Err(StoreError::Closed),
    }
}

/// What `/status` shows of storage.
#[derive(Clone, Debug, Serialize)]
pub struct StorageReport {
    #[serde(flatten)]
    pub health: HealthReport,
    pub head_seq: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(tag: &str) -> PathBuf {
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
        let disk = Store::open(&dir, 1, StoreOptions::default()).unwrap().store;
        let mem = Store::with_engine(
            Arc::new(memory::MemoryEngine::new()),
            1,
            StoreOptions::default(),
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
            let opened = Store::open(&dir, 3, StoreOptions::default()).unwrap();
            assert!(opened.created);
            let s = opened.store;
            inc = s.identity().incarnation;
            assert_eq!(s.increment(vec![("a".into(), 5)]).await.unwrap(), vec![5]);
            assert_eq!(s.increment(vec![("a".into(), 2)]).await.unwrap(), vec![7]);
            s.close().await;
        }
        let opened = Store::open(&dir, 3, StoreOptions::default()).unwrap();
        assert!(!opened.created, "the folder was reopened, not created");
        assert_eq!(opened.store.identity().incarnation, inc);
        assert_eq!(opened.store.value("a"), 7);
        drop(opened);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn a_folder_is_locked_and_bound_to_its_node() {
        let dir = temp_dir("lock");
        let first = Store::open(&dir, 1, StoreOptions::default()).unwrap();
        assert!(matches!(
            Store::open(&dir, 1, StoreOptions::default()),
            Err(StoreError::Locked(_))
        ));
        first.store.close().await;
        drop(first);
        assert!(matches!(
            Store::open(&dir, 2, StoreOptions::default()),
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
            assert_eq!(changed, ["x"]);
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
            assert!(again.is_empty());
            assert_eq!(s.value("x"), 4);
            assert_eq!(s.mark(9).await.unwrap(), 17, "marks never go down");
        }
    }

    /// A memory store with a short storage deadline, and its engine.
    fn faulty() -> (Store, Arc<memory::MemoryEngine>) {
        let engine = Arc::new(memory::MemoryEngine::new());
        let options = StoreOptions {
            timeout: Duration::from_secs(1),
            ..StoreOptions::default()
        };
        let store = Store::with_engine(engine.clone(), 1, options)
            .unwrap()
            .store;
        (store, engine)
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
        let opened = Store::with_engine(engine.clone(), 1, StoreOptions::default()).unwrap();
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

    /// An engine whose commits panic: a bug in the writer's path.
    struct Panicking(memory::MemoryEngine);

    impl Engine for Panicking {
        fn load(&self, node: u64) -> Result<Loaded, StoreError> {
            self.0.load(node)
        }
        fn commit(&self, _: &Batch) -> Result<u64, StoreError> {
            panic!("planted");
        }
        fn changes_since(&self, since: u64, limit: usize) -> Result<Changes, StoreError> {
            self.0.changes_since(since, limit)
        }
        fn mark(&self, peer: u64) -> Result<u64, StoreError> {
            self.0.mark(peer)
        }
        fn location(&self) -> Option<&Path> {
            None
        }
        fn blocking(&self) -> bool {
            false
        }
    }

    #[tokio::test]
    async fn a_dead_writer_is_reported_not_hidden() {
        let s = Store::with_engine(
            Arc::new(Panicking(memory::MemoryEngine::new())),
            1,
            StoreOptions::default(),
        )
        .unwrap()
        .store;
        assert!(matches!(
            s.increment(vec![("a".into(), 1)]).await,
            Err(StoreError::Closed)
        ));
        let reason = tokio::time::timeout(Duration::from_secs(5), s.stopped())
            .await
            .expect("the store reports its writer's end");
        assert!(reason.contains("planted"), "{reason}");
    }

    #[tokio::test]
    async fn a_disk_store_reopens_with_everything_it_held() {
        let dir = temp_dir("reopen-engine");
        let engine = Arc::new(redb::RedbEngine::open(&dir).unwrap());
        let s = Store::with_engine(engine.clone(), 1, StoreOptions::default())
            .unwrap()
            .store;
        s.increment(vec![("a".into(), 3)]).await.unwrap();
        engine.reopen().unwrap();
        assert_eq!(engine.load(1).unwrap().counters["a"].value(), 3);
        assert_eq!(s.increment(vec![("a".into(), 1)]).await.unwrap(), vec![4]);
        s.close().await;
        drop(s);
        drop(engine);
        std::fs::remove_dir_all(&dir).unwrap();
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
            assert_eq!(*rx.borrow_and_update(), changed);
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
        let reopened = Store::open(&both.dir, 1, StoreOptions::default())
            .unwrap()
            .store;
        assert_eq!(reopened.membership().stamp().version, 1);
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
            let s = Store::open(&dir, 1, StoreOptions::default()).unwrap().store;
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
        let s = Store::open(&dir, 1, StoreOptions::default()).unwrap().store;
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
        let s = Store::with_engine(engine.clone(), 1, options.clone())
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
        let reopened = Store::with_engine(engine, 1, options).unwrap().store;
        assert_eq!(reopened.remembered_keys(), 3);
    }
}
