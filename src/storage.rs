//! Durable storage: one redb file per data folder, written by one thread.
//!
//! Guarantees:
//! - An increment is committed (fsync'd) before its reply is sent, and every
//!   write that arrives while a commit is in progress joins the next one
//!   (group commit), so throughput does not fall to one fsync per request.
//! - An increment that would overflow this node's component is refused and
//!   changes nothing; a batch of increments is applied all or nothing.
//! - Every stored change to a name gets a new local sequence number, indexed,
//!   so a peer can ask "what changed since sequence N" and get only that
//!   (the basis of anti-entropy, see `replication`).
//! - A data folder is used by one process at a time (an exclusive lock on
//!   `LOCK`), belongs to one node id, and carries a random incarnation drawn
//!   when it was created (SPEC G7).
//!
//! An in-memory mirror of every counter answers local reads without touching
//! disk; only the writer thread changes it, and only after a commit succeeds.
//! Left out: compaction of the redb file and online backup.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::{mpsc, oneshot};

use crate::cluster::ClusterConfig;
use crate::crdt::{GCounter, Overflow, ReplicaId};

/// name -> lseq (8 bytes, little-endian) followed by the encoded counter.
const COUNTERS: TableDefinition<&str, &[u8]> = TableDefinition::new("counters");
/// lseq -> name; exactly one entry per name, at its latest lseq.
const BY_SEQ: TableDefinition<u64, &str> = TableDefinition::new("by_seq");
/// Small singletons: node id, incarnation, head sequence, config.
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
/// peer incarnation -> the peer's sequence up to which we have merged its changes.
const MARKS: TableDefinition<u64, u64> = TableDefinition::new("peer_marks");

const DB_FILE: &str = "tally.redb";
const LOCK_FILE: &str = "LOCK";
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
    Engine(#[from] redb::Error),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    #[error(transparent)]
    Overflow(#[from] Overflow),
    #[error("storage is shutting down")]
    Closed,
}

impl StoreError {
    fn engine(e: impl Into<redb::Error>) -> Self {
        StoreError::Engine(e.into())
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
    pub mark: Option<(u64, u64)>,
}

type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

enum Op {
    Increment {
        items: Vec<(String, u64)>,
        reply: Reply<Vec<u128>>,
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

struct Inner {
    db: Arc<Database>,
    ops: mpsc::Sender<Op>,
    /// Held briefly (a map lookup or an insert), never across an await, so a
    /// std lock is cheaper than an async one.
    memory: Arc<RwLock<BTreeMap<String, GCounter>>>,
    identity: Identity,
    dir: PathBuf,
    _lock: File,
}

/// What `Store::open` found on disk.
pub struct Opened {
    pub store: Store,
    pub config: ClusterConfig,
    pub created: bool,
}

impl Store {
    /// Opens (creating if needed) the data folder of node `node`.
    pub fn open(dir: &Path, node: u64, hook: ChangeHook) -> Result<Opened, StoreError> {
        let folder = |source| StoreError::Folder {
            path: dir.to_path_buf(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(folder)?;
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join(LOCK_FILE))
            .map_err(folder)?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(StoreError::Locked(dir.to_path_buf()));
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(folder(e)),
        }
        let created = !dir.join(DB_FILE).exists();
        let db = Database::create(dir.join(DB_FILE)).map_err(StoreError::engine)?;
        let (identity, config) = init_meta(&db, dir, node)?;
        let memory = load_counters(&db)?;
        let db = Arc::new(db);
        let memory = Arc::new(RwLock::new(memory));
        let (tx, rx) = mpsc::channel(MAX_BATCH);
        let writer = Writer {
            db: db.clone(),
            memory: memory.clone(),
            own: identity.replica(),
            hook,
        };
        std::thread::Builder::new()
            .name("tally-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(folder)?;
        Ok(Opened {
            store: Store {
                inner: Arc::new(Inner {
                    db,
                    ops: tx,
                    memory,
                    identity,
                    dir: dir.to_path_buf(),
                    _lock: lock,
                }),
            },
            config,
            created,
        })
    }

    pub fn identity(&self) -> Identity {
        self.inner.identity
    }

    pub fn dir(&self) -> &Path {
        &self.inner.dir
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
        self.call(|reply| Op::Increment { items, reply }).await
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
        self.inner
            .ops
            .send(op(tx))
            .await
            .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
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
        let db = self.inner.db.clone();
        blocking(move || {
            let txn = db.begin_read().map_err(StoreError::engine)?;
            let table = match txn.open_table(MARKS) {
                Ok(t) => t,
                Err(redb::TableError::TableDoesNotExist(_)) => return Ok(0),
                Err(e) => return Err(StoreError::engine(e)),
            };
            Ok(table
                .get(peer_incarnation)
                .map_err(StoreError::engine)?
                .map_or(0, |g| g.value()))
        })
        .await
    }

    /// Our changes after sequence `since`, at most `limit` names, from one snapshot.
    pub async fn changes_since(&self, since: u64, limit: usize) -> Result<Changes, StoreError> {
        let db = self.inner.db.clone();
        blocking(move || {
            let txn = db.begin_read().map_err(StoreError::engine)?;
            let head = read_u64(&txn.open_table(META).map_err(StoreError::engine)?, "seq")?;
            let by_seq = txn.open_table(BY_SEQ).map_err(StoreError::engine)?;
            let counters = txn.open_table(COUNTERS).map_err(StoreError::engine)?;
            let mut out = Changes {
                head,
                next: head,
                ..Changes::default()
            };
            for entry in by_seq
                .range(since.saturating_add(1)..)
                .map_err(StoreError::engine)?
            {
                let (seq, name) = entry.map_err(StoreError::engine)?;
                if out.counters.len() == limit {
                    out.more = true;
                    break;
                }
                let name = name.value().to_string();
                let row = counters
                    .get(name.as_str())
                    .map_err(StoreError::engine)?
                    .ok_or_else(|| StoreError::Corrupt(format!("index names missing {name:?}")))?;
                let (_, counter) = decode_row(row.value())?;
                out.next = seq.value();
                out.counters.push((name, counter));
            }
            if !out.more {
                out.next = head;
            }
            Ok(out)
        })
        .await
    }

    /// Bytes used by the data folder's files.
    pub fn disk_bytes(&self) -> u64 {
        std::fs::read_dir(&self.inner.dir)
            .map(|rd| {
                rd.filter_map(|e| e.ok()?.metadata().ok())
                    .map(|m| m.len())
                    .sum()
            })
            .unwrap_or(0)
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or(Err(StoreError::Closed))
}

fn read_u64(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    key: &str,
) -> Result<u64, StoreError> {
    match table.get(key).map_err(StoreError::engine)? {
        None => Ok(0),
        Some(v) => v
            .value()
            .try_into()
            .map(u64::from_le_bytes)
            .map_err(|_| StoreError::Corrupt(format!("meta {key} is not a u64"))),
    }
}

fn decode_row(bytes: &[u8]) -> Result<(u64, GCounter), StoreError> {
    if bytes.len() < 8 {
        return Err(StoreError::Corrupt("counter row too short".into()));
    }
    let lseq = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes"));
    let counter = GCounter::decode(&bytes[8..]).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    Ok((lseq, counter))
}

fn encode_row(lseq: u64, counter: &GCounter) -> Vec<u8> {
    let mut out = lseq.to_le_bytes().to_vec();
    out.extend_from_slice(&counter.encode());
    out
}

/// Reads or creates the node id, incarnation and config.
fn init_meta(
    db: &Database,
    dir: &Path,
    node: u64,
) -> Result<(Identity, ClusterConfig), StoreError> {
    let txn = db.begin_write().map_err(StoreError::engine)?;
    let result = {
        let mut meta = txn.open_table(META).map_err(StoreError::engine)?;
        txn.open_table(COUNTERS).map_err(StoreError::engine)?;
        txn.open_table(BY_SEQ).map_err(StoreError::engine)?;
        txn.open_table(MARKS).map_err(StoreError::engine)?;
        let found = read_u64(&meta, "node_id")?;
        if found != 0 && found != node {
            return Err(StoreError::WrongNode {
                path: dir.to_path_buf(),
                found,
                wanted: node,
            });
        }
        let mut incarnation = read_u64(&meta, "incarnation")?;
        if incarnation == 0 {
            incarnation = fastrand::u64(1..);
            meta.insert("node_id", node.to_le_bytes().as_slice())
                .map_err(StoreError::engine)?;
            meta.insert("incarnation", incarnation.to_le_bytes().as_slice())
                .map_err(StoreError::engine)?;
        }
        let config = match meta.get("config").map_err(StoreError::engine)? {
            None => ClusterConfig::default(),
            Some(v) => serde_json::from_slice(v.value())
                .map_err(|e| StoreError::Corrupt(format!("stored config: {e}")))?,
        };
        (Identity { node, incarnation }, config)
    };
    txn.commit().map_err(StoreError::engine)?;
    Ok(result)
}

fn load_counters(db: &Database) -> Result<BTreeMap<String, GCounter>, StoreError> {
    let txn = db.begin_read().map_err(StoreError::engine)?;
    let table = txn.open_table(COUNTERS).map_err(StoreError::engine)?;
    let mut out = BTreeMap::new();
    for entry in table.iter().map_err(StoreError::engine)? {
        let (k, v) = entry.map_err(StoreError::engine)?;
        out.insert(k.value().to_string(), decode_row(v.value())?.1);
    }
    Ok(out)
}

/// The single owner of writes.
struct Writer {
    db: Arc<Database>,
    memory: Arc<RwLock<BTreeMap<String, GCounter>>>,
    own: ReplicaId,
    hook: ChangeHook,
}

/// Replies owed once the batch commits.
enum Pending {
    Increment(Reply<Vec<u128>>, Result<Vec<u128>, StoreError>),
    Merge(Reply<Vec<String>>, Vec<String>),
    Config(Reply<()>),
}

impl Writer {
    fn run(self, mut rx: mpsc::Receiver<Op>) {
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

    fn apply(&self, ops: Vec<Op>) {
        let mut working: BTreeMap<String, GCounter> = BTreeMap::new();
        let mut own_changed: Vec<String> = Vec::new();
        let mut pending = Vec::with_capacity(ops.len());
        let mut marks = Vec::new();
        let mut config = None;
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
                Op::Increment { items, reply } => {
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
                        let values = items.iter().map(|(n, _)| staged[n].value()).collect();
                        for (name, c) in staged {
                            if items.iter().any(|(n, a)| n == &name && *a > 0) {
                                own_changed.push(name.clone());
                                working.insert(name, c);
                            }
                        }
                        values
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
        let committed = if working.is_empty() && marks.is_empty() && config.is_none() {
            Ok(())
        } else {
            self.commit(&working, &marks, config.as_ref())
        };
        if committed.is_ok() {
            let mut memory = self.memory.write().unwrap_or_else(|p| p.into_inner());
            for (name, c) in working {
                memory.insert(name, c);
            }
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
                    let _ = reply.send(Err(StoreError::Corrupt(format!("commit failed: {e}"))));
                }
                (Pending::Merge(reply, _), Err(e)) => {
                    let _ = reply.send(Err(StoreError::Corrupt(format!("commit failed: {e}"))));
                }
                (Pending::Config(reply), Err(e)) => {
                    let _ = reply.send(Err(StoreError::Corrupt(format!("commit failed: {e}"))));
                }
            }
        }
        if committed.is_ok() && !own_changed.is_empty() {
            own_changed.sort();
            own_changed.dedup();
            (self.hook)(&own_changed);
        }
    }

    fn commit(
        &self,
        working: &BTreeMap<String, GCounter>,
        marks: &[(u64, u64)],
        config: Option<&ClusterConfig>,
    ) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(StoreError::engine)?;
        {
            let mut meta = txn.open_table(META).map_err(StoreError::engine)?;
            let mut counters = txn.open_table(COUNTERS).map_err(StoreError::engine)?;
            let mut by_seq = txn.open_table(BY_SEQ).map_err(StoreError::engine)?;
            let mut peer_marks = txn.open_table(MARKS).map_err(StoreError::engine)?;
            let mut seq = read_u64(&meta, "seq")?;
            for (name, counter) in working {
                let old = counters
                    .get(name.as_str())
                    .map_err(StoreError::engine)?
                    .map(|row| decode_row(row.value()).map(|(lseq, _)| lseq))
                    .transpose()?;
                if let Some(old) = old {
                    by_seq.remove(old).map_err(StoreError::engine)?;
                }
                seq += 1;
                by_seq
                    .insert(seq, name.as_str())
                    .map_err(StoreError::engine)?;
                counters
                    .insert(name.as_str(), encode_row(seq, counter).as_slice())
                    .map_err(StoreError::engine)?;
            }
            meta.insert("seq", seq.to_le_bytes().as_slice())
                .map_err(StoreError::engine)?;
            for &(peer, mark) in marks {
                let prev = peer_marks
                    .get(peer)
                    .map_err(StoreError::engine)?
                    .map_or(0, |g| g.value());
                if mark > prev {
                    peer_marks.insert(peer, mark).map_err(StoreError::engine)?;
                }
            }
            if let Some(config) = config {
                let json = serde_json::to_vec(config).expect("config serializes");
                meta.insert("config", json.as_slice())
                    .map_err(StoreError::engine)?;
            }
        }
        txn.commit().map_err(StoreError::engine)
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

    #[tokio::test]
    async fn increments_survive_reopen_and_the_incarnation_is_kept() {
        let dir = temp_dir("reopen");
        let inc;
        {
            let opened = Store::open(&dir, 3, no_hook()).unwrap();
            assert!(opened.created);
            let s = opened.store;
            inc = s.identity().incarnation;
            assert_eq!(s.increment(vec![("a".into(), 5)]).await.unwrap(), vec![5]);
            assert_eq!(s.increment(vec![("a".into(), 2)]).await.unwrap(), vec![7]);
            s.close().await;
        }
        let opened = Store::open(&dir, 3, no_hook()).unwrap();
        assert!(!opened.created, "the folder was reopened, not created");
        assert_eq!(opened.store.identity().incarnation, inc);
        assert_eq!(opened.store.value("a"), 7);
        drop(opened);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn a_folder_is_locked_and_bound_to_its_node() {
        let dir = temp_dir("lock");
        let first = Store::open(&dir, 1, no_hook()).unwrap();
        assert!(matches!(
            Store::open(&dir, 1, no_hook()),
            Err(StoreError::Locked(_))
        ));
        first.store.close().await;
        drop(first);
        assert!(matches!(
            Store::open(&dir, 2, no_hook()),
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
        let dir = temp_dir("overflow");
        let s = Store::open(&dir, 1, no_hook()).unwrap().store;
        s.increment(vec![("a".into(), u64::MAX)]).await.unwrap();
        let err = s
            .increment(vec![("b".into(), 1), ("a".into(), 1)])
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Overflow(_)));
        assert_eq!(s.value("b"), 0);
        assert_eq!(s.value("a"), u128::from(u64::MAX));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn concurrent_increments_are_all_applied() {
        let dir = temp_dir("group");
        let s = Store::open(&dir, 1, no_hook()).unwrap().store;
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
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn changes_since_returns_only_newer_names_in_pages() {
        let dir = temp_dir("changes");
        let s = Store::open(&dir, 1, no_hook()).unwrap().store;
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
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn merges_keep_the_maximum_and_record_the_mark() {
        let dir = temp_dir("merge");
        let s = Store::open(&dir, 1, no_hook()).unwrap().store;
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
        assert_eq!(s.mark(9).await.unwrap(), 17);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
