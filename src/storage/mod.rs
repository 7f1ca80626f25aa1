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
//!
//! An in-memory mirror of every counter answers local reads without touching
//! the engine; only the writer changes it, and only after a commit succeeds.
//! Two engines implement [`Engine`]: [`redb::RedbEngine`] on disk, run by a
//! dedicated writer thread, and [`memory::MemoryEngine`], applied inline so
//! simulations stay deterministic.
//! Left out: compaction of the redb file and online backup.

pub mod idempotency;
pub mod memory;
pub mod redb;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use idempotency::{KeyRecord, Keys};

use tokio::sync::{mpsc, oneshot};

use crate::cluster::ClusterConfig;
use crate::crdt::{GCounter, Overflow, ReplicaId};
use crate::metrics::Metrics;

/// Most operations folded into one commit.
const MAX_BATCH: usize = 4096;

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
    #[error("storage engine: {0}")]
    Engine(String),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    #[error(transparent)]
    Overflow(#[from] Overflow),
    #[error("Idempotency-Key {0:?} was first used with a different request")]
    KeyReused(String),
    #[error("storage is shutting down")]
    Closed,
}

/// What an engine holds, read once at open.
pub struct Loaded {
    pub incarnation: u64,
    pub config: ClusterConfig,
    pub counters: BTreeMap<String, GCounter>,
    /// Remembered idempotency keys.
    pub keys: Vec<(String, KeyRecord)>,
    /// Whether the data folder was new.
    pub created: bool,
}

/// One commit's worth of changes.
pub struct Batch<'a> {
    /// Each name's whole new counter; each gets a new local sequence.
    pub counters: &'a BTreeMap<String, GCounter>,
    /// (peer incarnation, peer sequence) marks; only raised, never lowered.
    pub marks: &'a [(u64, u64)],
    pub config: Option<&'a ClusterConfig>,
    /// Idempotency keys to remember, and to forget.
    pub keys_put: &'a [(String, KeyRecord)],
    pub keys_del: &'a [String],
}

/// A transactional store of counters, marks and config.
pub trait Engine: Send + Sync + 'static {
    /// Reads identity, config and counters, creating the identity on first use.
    fn load(&self, node: u64) -> Result<Loaded, StoreError>;
    /// Applies a batch atomically.
    fn commit(&self, batch: &Batch<'_>) -> Result<(), StoreError>;
    /// Names changed after `since`, at most `limit`, from one snapshot.
    fn changes_since(&self, since: u64, limit: usize) -> Result<Changes, StoreError>;
    fn mark(&self, peer_incarnation: u64) -> Result<u64, StoreError>;
    /// The data folder, for engines that have one.
    fn location(&self) -> Option<&Path>;
    /// Whether calls block on I/O (and so belong on a blocking thread).
    fn blocking(&self) -> bool;
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
    pub mark: Option<(u64, u64)>,
}

/// The answer to an increment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Incremented {
    /// Each name's local value after the increment.
    pub values: Vec<u128>,
    /// True when an idempotency key matched and nothing was applied again.
    pub replayed: bool,
}

/// Tuning of the store.
#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// How long an idempotency key is remembered.
    pub idempotency_window: Duration,
    /// Most idempotency keys remembered; the oldest are forgotten first.
    pub idempotency_capacity: usize,
    /// Where commit latency, batch size and applied increments are counted.
    pub metrics: Metrics,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            idempotency_window: Duration::from_secs(24 * 3600),
            idempotency_capacity: 100_000,
            metrics: Metrics::default(),
        }
    }
}

type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

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
    SaveConfig {
        config: ClusterConfig,
        reply: Reply<()>,
    },
    Close {
        reply: oneshot::Sender<()>,
    },
}

/// Called by the writer after each commit with the names whose own
/// component changed, so replication can push them.
pub type ChangeHook = Arc<dyn Fn(&[String]) + Send + Sync>;

/// Handle to the store; cheap to clone.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

/// How operations reach the writer.
enum Driver {
    /// A dedicated thread batches what queues up while it commits.
    Thread(mpsc::Sender<Op>),
    /// Applied on the caller's task; `None` once closed.
    Inline(Mutex<Option<Box<Writer>>>),
}

struct Inner {
    engine: Arc<dyn Engine>,
    driver: Driver,
    /// Held briefly (a map lookup or an insert), never across an await, so a
    /// std lock is cheaper than an async one.
    memory: Arc<RwLock<BTreeMap<String, GCounter>>>,
    /// Count of remembered idempotency keys, for metrics and status.
    keys: Arc<AtomicUsize>,
    identity: Identity,
}

/// What `Store::open` found.
pub struct Opened {
    pub store: Store,
    pub config: ClusterConfig,
    pub created: bool,
}

impl Store {
    /// Opens (creating if needed) the data folder of node `node` on disk.
    pub fn open(
        dir: &Path,
        node: u64,
        options: StoreOptions,
        hook: ChangeHook,
    ) -> Result<Opened, StoreError> {
        Self::with_engine(Arc::new(redb::RedbEngine::open(dir)?), node, options, hook)
    }

    /// Opens a store over any engine.
    pub fn with_engine(
        engine: Arc<dyn Engine>,
        node: u64,
        options: StoreOptions,
        hook: ChangeHook,
    ) -> Result<Opened, StoreError> {
        let loaded = engine.load(node)?;
        let identity = Identity {
            node,
            incarnation: loaded.incarnation,
        };
        let memory = Arc::new(RwLock::new(loaded.counters));
        let keys_count = Arc::new(AtomicUsize::new(loaded.keys.len()));
        let writer = Writer {
            engine: engine.clone(),
            memory: memory.clone(),
            own: identity.replica(),
            hook,
            keys: Keys::new(
                loaded.keys,
                options.idempotency_window,
                options.idempotency_capacity,
            ),
            keys_count: keys_count.clone(),
            metrics: options.metrics.clone(),
        };
        let driver = if engine.blocking() {
            let (tx, rx) = mpsc::channel(MAX_BATCH);
            std::thread::Builder::new()
                .name("tally-writer".into())
                .spawn(move || writer.run(rx))
                .map_err(|source| StoreError::Folder {
                    path: engine.location().unwrap_or(Path::new("")).to_path_buf(),
                    source,
                })?;
            Driver::Thread(tx)
        } else {
            Driver::Inline(Mutex::new(Some(Box::new(writer))))
        };
        Ok(Opened {
            store: Store {
                inner: Arc::new(Inner {
                    engine,
                    driver,
                    memory,
                    keys: keys_count,
                    identity,
                }),
            },
            config: loaded.config,
            created: loaded.created,
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
        f(&self.inner.memory.read().unwrap_or_else(|p| p.into_inner()))
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
        self.inner.keys.load(Ordering::Relaxed)
    }

    /// Folds a peer's counters in; returns the names that changed.
    pub async fn merge(&self, merge: Merge) -> Result<Vec<String>, StoreError> {
        self.call(|reply| Op::Merge { merge, reply }).await
    }

    pub async fn save_config(&self, config: ClusterConfig) -> Result<(), StoreError> {
        self.call(|reply| Op::SaveConfig { config, reply }).await
    }

    async fn call<T>(&self, op: impl FnOnce(Reply<T>) -> Op) -> Result<T, StoreError> {
        let (tx, rx) = oneshot::channel();
        match &self.inner.driver {
            Driver::Thread(ops) => ops.send(op(tx)).await.map_err(|_| StoreError::Closed)?,
            Driver::Inline(writer) => {
                let mut writer = writer.lock().unwrap_or_else(|p| p.into_inner());
                writer
                    .as_mut()
                    .ok_or(StoreError::Closed)?
                    .apply(vec![op(tx)]);
            }
        }
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Commits what is queued and stops the writer; later writes fail with `Closed`.
    pub async fn close(&self) {
        match &self.inner.driver {
            Driver::Thread(ops) => {
                let (tx, rx) = oneshot::channel();
                if ops.send(Op::Close { reply: tx }).await.is_ok() {
                    let _ = rx.await;
                }
            }
            Driver::Inline(writer) => {
                writer.lock().unwrap_or_else(|p| p.into_inner()).take();
            }
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
        let engine = self.inner.engine.clone();
        if !engine.blocking() {
            return f(&*engine);
        }
        tokio::task::spawn_blocking(move || f(&*engine))
            .await
            .unwrap_or(Err(StoreError::Closed))
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

/// The single owner of writes.
struct Writer {
    engine: Arc<dyn Engine>,
    memory: Arc<RwLock<BTreeMap<String, GCounter>>>,
    own: ReplicaId,
    hook: ChangeHook,
    keys: Keys,
    keys_count: Arc<AtomicUsize>,
    metrics: Metrics,
}

/// Replies owed once the batch commits.
enum Pending {
    Increment(Reply<Incremented>, Result<Incremented, StoreError>),
    Merge(Reply<Vec<String>>, Vec<String>),
    Config(Reply<()>),
}

impl Writer {
    fn run(mut self, mut rx: mpsc::Receiver<Op>) {
        let mut close: Option<oneshot::Sender<()>> = None;
        while close.is_none() {
            let Some(first) = rx.blocking_recv() else {
                break;
            };
            let mut ops = vec![first];
            while ops.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(op) => ops.push(op),
                    Err(_) => break,
                }
            }
            let mut batch = Vec::with_capacity(ops.len());
            for op in ops {
                match op {
                    Op::Close { reply } => close = Some(reply),
                    op if close.is_none() => batch.push(op),
                    // Arrived after Close in the same batch: refuse it by dropping its reply.
                    _ => {}
                }
            }
            self.apply(batch);
        }
        rx.close();
        // Release the database before confirming, so the folder can be reopened at once.
        drop(self);
        if let Some(reply) = close {
            let _ = reply.send(());
        }
    }

    fn apply(&mut self, ops: Vec<Op>) {
        let started = std::time::Instant::now();
        let batch_size = ops.len();
        let mut working: BTreeMap<String, GCounter> = BTreeMap::new();
        let mut own_changed: Vec<String> = Vec::new();
        let mut pending = Vec::with_capacity(ops.len());
        let mut marks = Vec::new();
        let mut config = None;
        let mut keys_put: Vec<(String, KeyRecord)> = Vec::new();
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let current = |working: &BTreeMap<String, GCounter>, name: &str| {
            working.get(name).cloned().unwrap_or_else(|| {
                self.memory
                    .read()
                    .unwrap_or_else(|p| p.into_inner())
                    .get(name)
                    .cloned()
                    .unwrap_or_default()
            })
        };
        for op in ops {
            match op {
                Op::Increment { items, key, reply } => {
                    let fingerprint = key.as_ref().map(|_| idempotency::fingerprint(&items));
                    let seen = key.as_ref().and_then(|k| {
                        keys_put
                            .iter()
                            .find(|(put, _)| put == k)
                            .map(|(_, r)| r)
                            .or_else(|| self.keys.get(k, now_ms))
                    });
                    if let (Some(record), Some(key)) = (seen, &key) {
                        let outcome = if Some(&record.fingerprint) == fingerprint.as_ref() {
                            Ok(Incremented {
                                values: record.values.clone(),
                                replayed: true,
                            })
                        } else {
                            Err(StoreError::KeyReused(key.clone()))
                        };
                        pending.push(Pending::Increment(reply, outcome));
                        continue;
                    }
                    let mut staged: BTreeMap<String, GCounter> = BTreeMap::new();
                    let mut result = Ok(());
                    for (name, amount) in &items {
                        let mut c = staged
                            .get(name)
                            .cloned()
                            .unwrap_or_else(|| current(&working, name));
                        if let Err(e) = c.increment(self.own, *amount) {
                            result = Err(StoreError::Overflow(e));
                            break;
                        }
                        staged.insert(name.clone(), c);
                    }
                    let outcome = result.map(|()| {
                        let values: Vec<u128> =
                            items.iter().map(|(n, _)| staged[n].value()).collect();
                        for (name, c) in staged {
                            if items.iter().any(|(n, a)| n == &name && *a > 0) {
                                own_changed.push(name.clone());
                                working.insert(name, c);
                            }
                        }
                        if let (Some(key), Some(fingerprint)) = (key, fingerprint) {
                            keys_put.push((
                                key,
                                KeyRecord {
                                    fingerprint,
                                    values: values.clone(),
                                    created_ms: now_ms,
                                },
                            ));
                        }
                        Incremented {
                            values,
                            replayed: false,
                        }
                    });
                    pending.push(Pending::Increment(reply, outcome));
                }
                Op::Merge { merge, reply } => {
                    let mut changed = Vec::new();
                    for (name, theirs) in merge.counters {
                        let mut c = current(&working, &name);
                        if c.merge(&theirs) {
                            working.insert(name.clone(), c);
                            changed.push(name);
                        }
                    }
                    marks.extend(merge.mark);
                    pending.push(Pending::Merge(reply, changed));
                }
                Op::SaveConfig { config: c, reply } => {
                    config = Some(c);
                    pending.push(Pending::Config(reply));
                }
                Op::Close { .. } => unreachable!("filtered by run"),
            }
        }
        let keys_del = if keys_put.is_empty() {
            Vec::new()
        } else {
            self.keys.expired(now_ms, keys_put.len())
        };
        let nothing_to_write =
            working.is_empty() && marks.is_empty() && config.is_none() && keys_put.is_empty();
        let committed = if nothing_to_write {
            Ok(())
        } else {
            self.engine.commit(&Batch {
                counters: &working,
                marks: &marks,
                config: config.as_ref(),
                keys_put: &keys_put,
                keys_del: &keys_del,
            })
        };
        if !nothing_to_write {
            self.metrics
                .commit_seconds
                .observe(started.elapsed().as_secs_f64());
            self.metrics.commit_batch_size.observe(batch_size as f64);
        }
        if committed.is_ok() {
            let applied = pending
                .iter()
                .filter(|p| matches!(p, Pending::Increment(_, Ok(i)) if !i.replayed))
                .count();
            self.metrics.increments.inc_by(applied as u64);
            let mut memory = self.memory.write().unwrap_or_else(|p| p.into_inner());
            for (name, c) in working {
                memory.insert(name, c);
            }
            drop(memory);
            if !keys_put.is_empty() {
                self.keys.apply(&keys_del, keys_put);
                self.keys_count.store(self.keys.len(), Ordering::Relaxed);
            }
        }
        // Marked for a push before anything is acknowledged: a node that is
        // stopped right after an acknowledgement still pushes the change.
        if committed.is_ok() && !own_changed.is_empty() {
            own_changed.sort();
            own_changed.dedup();
            (self.hook)(&own_changed);
        }
        for p in pending {
            match (p, &committed) {
                (Pending::Increment(reply, outcome), Ok(())) => {
                    let _ = reply.send(outcome);
                }
                (Pending::Merge(reply, changed), Ok(())) => {
                    let _ = reply.send(Ok(changed));
                }
                (Pending::Config(reply), Ok(())) => {
                    let _ = reply.send(Ok(()));
                }
                (Pending::Increment(reply, _), Err(e)) => {
                    let _ = reply.send(Err(StoreError::Engine(format!("commit failed: {e}"))));
                }
                (Pending::Merge(reply, _), Err(e)) => {
                    let _ = reply.send(Err(StoreError::Engine(format!("commit failed: {e}"))));
                }
                (Pending::Config(reply), Err(e)) => {
                    let _ = reply.send(Err(StoreError::Engine(format!("commit failed: {e}"))));
                }
            }
        }
    }
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

    fn no_hook() -> ChangeHook {
        Arc::new(|_: &[String]| {})
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
        let disk = Store::open(&dir, 1, StoreOptions::default(), no_hook())
            .unwrap()
            .store;
        let mem = Store::with_engine(
            Arc::new(memory::MemoryEngine::new()),
            1,
            StoreOptions::default(),
            no_hook(),
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
            let opened = Store::open(&dir, 3, StoreOptions::default(), no_hook()).unwrap();
            assert!(opened.created);
            let s = opened.store;
            inc = s.identity().incarnation;
            assert_eq!(s.increment(vec![("a".into(), 5)]).await.unwrap(), vec![5]);
            assert_eq!(s.increment(vec![("a".into(), 2)]).await.unwrap(), vec![7]);
            s.close().await;
        }
        let opened = Store::open(&dir, 3, StoreOptions::default(), no_hook()).unwrap();
        assert!(!opened.created, "the folder was reopened, not created");
        assert_eq!(opened.store.identity().incarnation, inc);
        assert_eq!(opened.store.value("a"), 7);
        drop(opened);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn a_folder_is_locked_and_bound_to_its_node() {
        let dir = temp_dir("lock");
        let first = Store::open(&dir, 1, StoreOptions::default(), no_hook()).unwrap();
        assert!(matches!(
            Store::open(&dir, 1, StoreOptions::default(), no_hook()),
            Err(StoreError::Locked(_))
        ));
        first.store.close().await;
        drop(first);
        assert!(matches!(
            Store::open(&dir, 2, StoreOptions::default(), no_hook()),
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
                    mark: Some((9, 17)),
                })
                .await
                .unwrap();
            assert_eq!(changed, ["x"]);
            let again = s
                .merge(Merge {
                    counters: vec![("x".into(), theirs)],
                    mark: Some((9, 5)),
                })
                .await
                .unwrap();
            assert!(again.is_empty());
            assert_eq!(s.value("x"), 4);
            assert_eq!(s.mark(9).await.unwrap(), 17, "marks never go down");
        }
    }

    #[tokio::test]
    async fn a_failed_commit_acknowledges_nothing_and_changes_nothing() {
        let engine = Arc::new(memory::MemoryEngine::new());
        let s = Store::with_engine(engine.clone(), 1, StoreOptions::default(), no_hook())
            .unwrap()
            .store;
        s.increment(vec![("a".into(), 1)]).await.unwrap();
        engine.fail_commits(true);
        assert!(s.increment(vec![("a".into(), 1)]).await.is_err());
        assert_eq!(s.value("a"), 1);
        engine.fail_commits(false);
        assert_eq!(s.increment(vec![("a".into(), 1)]).await.unwrap(), vec![2]);
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
            let s = Store::open(&dir, 1, StoreOptions::default(), no_hook())
                .unwrap()
                .store;
            let first = s
                .increment_once(vec![("a".into(), 5)], Some("k1".into()))
                .await
                .unwrap();
            assert_eq!(
                first,
                Incremented {
                    values: vec![5],
                    replayed: false
                }
            );
            s.increment(vec![("a".into(), 1)]).await.unwrap();
            let again = s
                .increment_once(vec![("a".into(), 5)], Some("k1".into()))
                .await
                .unwrap();
            assert_eq!(
                again,
                Incremented {
                    values: vec![5],
                    replayed: true
                }
            );
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
        let s = Store::open(&dir, 1, StoreOptions::default(), no_hook())
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
            no_hook(),
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
        let s = Store::with_engine(engine.clone(), 1, options.clone(), no_hook())
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
        let reopened = Store::with_engine(engine, 1, options, no_hook())
            .unwrap()
            .store;
        assert_eq!(reopened.remembered_keys(), 3);
    }
}
