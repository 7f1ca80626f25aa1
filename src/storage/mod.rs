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
//! Nodes store on disk through [`logged::LogEngine`]: a write-ahead log in
//! front of the [`redb::RedbEngine`] B-tree (itself an [`Engine`] too, for
//! tests). The writer calls it from a thread of its own, other callers from
//! blocking threads. [`memory::MemoryEngine`] is called inline so
//! simulations stay deterministic, with injectable disk faults.
//! Left out: compaction of the redb file and online backup.

pub mod check;
pub mod disk;
mod engine;
pub mod health;
pub mod idempotency;
pub mod journal;
pub mod logged;
pub mod memory;
#[cfg(test)]
mod mirror;
mod overlay;
mod plan;
pub mod redb;
mod scrub;
pub mod simdisk;
mod writer;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};

/// Who owns a data folder: its node id and the incarnation drawn with it.
pub use crate::crdt::ReplicaId;
pub use engine::{
    Batch, Changes, Engine, EngineSource, Image, Incremented, Loaded, Merge, PeerMark, Salvage,
    ScrubAt, Scrubbed, StoreError,
};
pub use health::{Health, HealthView, ScrubView};

use crate::cluster::{Actor, Membership};
use crate::crdt::GCounter;
use crate::metrics::Metrics;

/// Most operations folded into one commit.
const MAX_BATCH: usize = 4096;

/// Tuning of the store: plain data, compared and printed as it is.
#[derive(Clone, Debug, PartialEq)]
pub struct StoreOptions {
    /// How long an idempotency key is remembered.
    pub idempotency_window: Duration,
    /// Most idempotency keys remembered; the oldest are forgotten first.
    pub idempotency_capacity: usize,
    /// Most bytes of idempotency keys remembered; the oldest are forgotten first.
    pub idempotency_bytes: usize,
    /// Longest any call waits for storage (and when a running commit counts as stalled).
    pub timeout: Duration,
}

/// What the store is handed to run with, beside its options.
#[derive(Clone, Debug, Default)]
pub struct StoreDeps {
    /// Where commit latency, batch size, health and applied increments are counted.
    pub metrics: Metrics,
    /// Wall-clock time for idempotency windows, which must survive a restart
    /// (so not tokio's clock); tests inject their own.
    pub clock: WallClock,
}

/// Milliseconds since the Unix epoch.
#[derive(Clone)]
pub struct WallClock(pub Arc<dyn Fn() -> u64 + Send + Sync>);

impl WallClock {
    pub fn now_ms(&self) -> u64 {
        (self.0)()
    }
}

impl Default for WallClock {
    fn default() -> Self {
        WallClock(Arc::new(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        }))
    }
}

impl std::fmt::Debug for WallClock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WallClock")
    }
}

/// Default of `--idempotency-window`.
pub const DEFAULT_IDEMPOTENCY_WINDOW: Duration = Duration::from_secs(24 * 3600);
/// Default of `--idempotency-keys`.
pub const DEFAULT_IDEMPOTENCY_KEYS: usize = 100_000;
/// Default of `--idempotency-memory`: 64 MiB.
pub const DEFAULT_IDEMPOTENCY_BYTES: usize = 64 << 20;
/// Default of `--storage-timeout`: far above a healthy commit (milliseconds),
/// below what a client waits.
pub const DEFAULT_STORAGE_TIMEOUT: Duration = Duration::from_secs(5);

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            idempotency_window: DEFAULT_IDEMPOTENCY_WINDOW,
            idempotency_capacity: DEFAULT_IDEMPOTENCY_KEYS,
            idempotency_bytes: DEFAULT_IDEMPOTENCY_BYTES,
            timeout: DEFAULT_STORAGE_TIMEOUT,
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
        reply: Reply<usize>,
    },
    Membership {
        change: MembershipChange,
        reply: Reply<Option<Membership>>,
    },
    RememberMe {
        me: Actor,
        reply: Reply<()>,
    },
    /// Replaces the engine's damaged files with what memory holds.
    Rebuild {
        reply: Reply<()>,
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
    memory: RwLock<BTreeMap<Box<str>, GCounter>>,
    /// Shared, so a reader (a consistent read, a commit's plan) holds it
    /// without copying it.
    membership: watch::Sender<Arc<Membership>>,
    /// Which actor this node is, as last stored.
    me: Mutex<Option<Actor>>,
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
    identity: ReplicaId,
    timeout: Duration,
    metrics: Metrics,
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
    pub fn open(
        dir: &Path,
        node: u64,
        options: StoreOptions,
        deps: StoreDeps,
    ) -> Result<Opened, StoreError> {
        Self::with_engine(Arc::new(logged::LogEngine::open(dir)?), node, options, deps)
    }

    /// Opens a store over any engine and starts its writer (so it must
    /// be called inside a tokio runtime).
    pub fn with_engine(
        engine: Arc<dyn Engine>,
        node: u64,
        options: StoreOptions,
        deps: StoreDeps,
    ) -> Result<Opened, StoreError> {
        let loaded = engine.load(node)?;
        let health = Health::new(options.timeout, deps.metrics.clone());
        for what in &loaded.damage {
            health.damage_found(what.clone());
        }
        if let Some(events) = &loaded.salvage {
            if let Some(now) = events.last().filter(|e| e.now) {
                for what in &now.damage {
                    health.damage_found(what.clone());
                }
            }
            health.set_salvaged(events.clone());
        }
        let identity = ReplicaId {
            node,
            incarnation: loaded.incarnation,
        };
        let shared = Arc::new(Shared {
            // Boxed names: 16 bytes in each of the map's entries instead
            // of 24, for as long as the name exists (B6: RSS per name).
            // Collected from sorted names in one go, the map's nodes are
            // full; inserted one by one in order, each split node would
            // stay about half full (~40 bytes more per name).
            memory: RwLock::new(
                loaded
                    .counters
                    .into_iter()
                    .map(|(name, c)| (name.into_boxed_str(), c))
                    .collect(),
            ),
            membership: watch::Sender::new(Arc::new(loaded.membership)),
            me: Mutex::new(loaded.me),
            keys: AtomicUsize::new(loaded.keys.len()),
            head: AtomicU64::new(loaded.head),
            health,
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
                deps.clone(),
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
                    metrics: deps.metrics,
                }),
            },
            created: loaded.created,
            committed,
        })
    }

    pub fn identity(&self) -> ReplicaId {
        self.inner.identity
    }

    /// The deadline of one call to the writer (a commit, a merge).
    pub fn deadline(&self) -> Duration {
        self.inner.timeout
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

    /// The first of `counters` that would raise this node's own component
    /// past what it holds, as (name, claimed, held). Only this node's own
    /// increments raise its component: a peer learns it from this node, so
    /// a higher count in a message is invented, and merging it would also
    /// make every later increment of that name overflow.
    pub fn raises_own<'a>(
        &self,
        counters: &'a [(String, GCounter)],
    ) -> Option<(&'a str, u64, u64)> {
        let me = self.inner.identity;
        self.read(|m| {
            counters.iter().find_map(|(name, theirs)| {
                let claimed = theirs.get(me);
                if claimed == 0 {
                    // Nothing claimed of this node's own component: no lookup.
                    return None;
                }
                let held = m.get(name.as_str()).map_or(0, |c| c.get(me));
                (claimed > held).then_some((name.as_str(), claimed, held))
            })
        })
    }

    pub fn names(&self) -> usize {
        self.read(|m| m.len())
    }

    /// Up to `limit` (name, counter) pairs with names after `after` that start with `prefix`.
    pub fn list(&self, prefix: &str, after: Option<&str>, limit: usize) -> Vec<(String, GCounter)> {
        use std::ops::Bound;
        let start = match after {
            Some(a) if a >= prefix => Bound::Excluded(a),
            _ => Bound::Included(prefix),
        };
        self.read(|m| {
            m.range::<str, _>((start, Bound::Unbounded))
                .take_while(|(k, _)| k.starts_with(prefix))
                .take(limit)
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect()
        })
    }

    fn read<T>(&self, f: impl FnOnce(&BTreeMap<Box<str>, GCounter>) -> T) -> T {
        f(&self
            .inner
            .shared
            .memory
            .read()
            .unwrap_or_else(|p| p.into_inner()))
    }

    /// Which actor this node found itself to be when it last knew, as stored.
    pub fn remembered_me(&self) -> Option<Actor> {
        self.inner
            .shared
            .me
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Stores which actor this node is, so a restart knows it at once.
    pub async fn remember_me(&self, me: Actor) -> Result<(), StoreError> {
        self.call(|reply| Op::RememberMe { me, reply }).await
    }

    /// The durable membership (config).
    pub fn membership(&self) -> Membership {
        Membership::clone(&self.inner.shared.membership.borrow())
    }

    /// Reads the membership in place, without copying it (the hot path).
    pub fn with_membership<T>(&self, f: impl FnOnce(&Membership) -> T) -> T {
        f(&self.inner.shared.membership.borrow())
    }

    /// Notified after each durable membership change.
    pub fn watch_membership(&self) -> watch::Receiver<Arc<Membership>> {
        self.inner.shared.membership.subscribe()
    }

    /// The last local sequence number given out by a durable commit.
    pub fn head(&self) -> u64 {
        self.inner.shared.head.load(Ordering::Acquire)
    }

    pub fn health(&self) -> HealthView {
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

    /// Replaces the engine's damaged files with what memory holds (every
    /// counter whole, the membership, the idempotency keys).
    pub async fn rebuild(&self) -> Result<(), StoreError> {
        self.call(|reply| Op::Rebuild { reply }).await
    }

    /// Folds a peer's counters in; returns how many names changed.
    pub async fn merge(&self, merge: Merge) -> Result<usize, StoreError> {
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

    /// Bytes used by the data folder's files (0 without a folder, or when
    /// the disk does not answer within the storage deadline). Read on a
    /// blocking thread: a stalled disk must not stall the runtime.
    pub async fn disk_bytes(&self) -> u64 {
        let Some(dir) = self.dir().map(Path::to_path_buf) else {
            return 0;
        };
        let sum = tokio::task::spawn_blocking(move || {
            std::fs::read_dir(dir)
                .map(|rd| {
                    rd.filter_map(|e| e.ok()?.metadata().ok())
                        .map(|m| m.len())
                        .sum()
                })
                .unwrap_or(0)
        });
        match tokio::time::timeout(self.inner.timeout, sum).await {
            Ok(Ok(bytes)) => bytes,
            _ => 0,
        }
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

#[cfg(test)]
mod fault_tests;
#[cfg(test)]
mod tests;
