//! The B-tree: one redb file per data folder (nodes reach it through the
//! write-ahead log in `logged.rs`).
//!
//! redb is a pure-Rust, single-file, copy-on-write B-tree with ACID
//! transactions: a commit is durable when `commit` returns, and a crash
//! leaves the last committed state. Tables:
//! - `counters`: name -> local sequence (u64 LE) + encoded counter;
//! - `by_seq`: local sequence -> name, one entry per name at its latest sequence;
//! - `meta`: node id, incarnation, head sequence, membership (JSON), and
//!   the last write-ahead log record folded in (`log_lsn`, see `logged.rs`);
//! - `peer_marks`: peer incarnation -> the peer sequence merged so far.
//!
//! After an I/O error redb refuses every later transaction until the
//! database is closed and opened again; [`RedbEngine::reopen`] does that
//! (the writer calls it, with backoff, until the disk takes writes again).

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{RwLock, RwLockReadGuard};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use super::idempotency::KeyRecord;
use super::{Batch, Changes, Engine, Loaded, StoreError};
use crate::cluster::{Actor, ClusterConfig, Membership};
use crate::crdt::GCounter;

const COUNTERS: TableDefinition<&str, &[u8]> = TableDefinition::new("counters");
const BY_SEQ: TableDefinition<u64, &str> = TableDefinition::new("by_seq");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const MARKS: TableDefinition<u64, u64> = TableDefinition::new("peer_marks");
/// idempotency key -> JSON `KeyRecord`.
const KEYS: TableDefinition<&str, &[u8]> = TableDefinition::new("idempotency_keys");

const DB_FILE: &str = "tally.redb";
/// redb's page cache. Every counter is also held in the store's memory, so
/// the cache serves only checkpoints and peers' pulls; redb's default (1 GiB)
/// would keep a copy of the whole file after the load at startup.
const CACHE_BYTES: usize = 32 << 20;

fn open_db(file: &Path) -> Result<Database, StoreError> {
    Database::builder()
        .set_cache_size(CACHE_BYTES)
        .create(file)
        .map_err(|e| engine(e).in_file(file))
}
const LOCK_FILE: &str = "LOCK";

fn engine(e: impl Into<redb::Error>) -> StoreError {
    StoreError::engine(e.into())
}

pub struct RedbEngine {
    /// `None` only while being reopened. Readers hold the read lock for a
    /// whole transaction, so a reopen never overlaps one.
    db: RwLock<Option<Database>>,
    dir: PathBuf,
    file: PathBuf,
    created: bool,
    /// Held for the life of the engine: a second process on the folder fails to lock it.
    _lock: File,
}

impl RedbEngine {
    /// Opens (creating if needed) the data folder `dir`, refusing one that
    /// another process holds.
    pub fn open(dir: &Path) -> Result<RedbEngine, StoreError> {
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
        let file = dir.join(DB_FILE);
        let created = !file.exists();
        let db = open_db(&file)?;
        Ok(RedbEngine {
            db: RwLock::new(Some(db)),
            dir: dir.to_path_buf(),
            file,
            created,
            _lock: lock,
        })
    }

    fn db(&self) -> Result<DbGuard<'_>, StoreError> {
        let guard = self.db.read().unwrap_or_else(|p| p.into_inner());
        if guard.is_none() {
            return Err(StoreError::engine("the database is being reopened").in_file(&self.file));
        }
        Ok(DbGuard(guard))
    }

    fn located<T>(&self, result: Result<T, StoreError>) -> Result<T, StoreError> {
        result.map_err(|e| e.in_file(&self.file))
    }

    fn load_inner(&self, node: u64) -> Result<Loaded, StoreError> {
        let db = self.db()?;
        let txn = db.begin_write().map_err(engine)?;
        let (incarnation, membership, head, me) = {
            let mut meta = txn.open_table(META).map_err(engine)?;
            txn.open_table(COUNTERS).map_err(engine)?;
            txn.open_table(BY_SEQ).map_err(engine)?;
            txn.open_table(MARKS).map_err(engine)?;
            txn.open_table(KEYS).map_err(engine)?;
            let found = read_u64(&meta, "node_id")?;
            if found != 0 && found != node {
                return Err(StoreError::WrongNode {
                    path: self.dir.clone(),
                    found,
                    wanted: node,
                });
            }
            let mut incarnation = read_u64(&meta, "incarnation")?;
            if incarnation == 0 {
                incarnation = fastrand::u64(1..);
                meta.insert("node_id", node.to_le_bytes().as_slice())
                    .map_err(engine)?;
                meta.insert("incarnation", incarnation.to_le_bytes().as_slice())
                    .map_err(engine)?;
            }
            let membership = match meta.get("config").map_err(engine)? {
                None => Membership::default(),
                Some(v) => decode_membership(v.value())?,
            };
            let me = match meta.get("me").map_err(engine)? {
                None => None,
                Some(v) => Some(
                    std::str::from_utf8(v.value())
                        .ok()
                        .and_then(|s| Actor::parse(s).ok())
                        .ok_or_else(|| StoreError::Corrupt("stored actor of this node".into()))?,
                ),
            };
            (incarnation, membership, read_u64(&meta, "seq")?, me)
        };
        txn.commit().map_err(engine)?;
        let txn = db.begin_read().map_err(engine)?;
        let table = txn.open_table(COUNTERS).map_err(engine)?;
        let mut counters = BTreeMap::new();
        for entry in table.iter().map_err(engine)? {
            let (k, v) = entry.map_err(engine)?;
            counters.insert(k.value().to_string(), decode_row(v.value())?.1);
        }
        let mut keys = Vec::new();
        for entry in txn
            .open_table(KEYS)
            .map_err(engine)?
            .iter()
            .map_err(engine)?
        {
            let (k, v) = entry.map_err(engine)?;
            let record: KeyRecord = serde_json::from_slice(v.value())
                .map_err(|e| StoreError::Corrupt(format!("idempotency key: {e}")))?;
            keys.push((k.value().to_string(), record));
        }
        Ok(Loaded {
            incarnation,
            membership,
            counters,
            keys,
            head,
            me,
            created: self.created,
        })
    }
}

struct DbGuard<'a>(RwLockReadGuard<'a, Option<Database>>);

impl std::ops::Deref for DbGuard<'_> {
    type Target = Database;
    fn deref(&self) -> &Database {
        self.0.as_ref().expect("checked when the guard was taken")
    }
}

fn read_u64(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    key: &str,
) -> Result<u64, StoreError> {
    match table.get(key).map_err(engine)? {
        None => Ok(0),
        Some(v) => v
            .value()
            .try_into()
            .map(u64::from_le_bytes)
            .map_err(|_| StoreError::Corrupt(format!("meta {key} is not a u64"))),
    }
}

/// The stored membership; folders written before membership hand-offs hold
/// a bare config.
fn decode_membership(bytes: &[u8]) -> Result<Membership, StoreError> {
    serde_json::from_slice::<Membership>(bytes)
        .or_else(|_| serde_json::from_slice::<ClusterConfig>(bytes).map(Membership::new))
        .map_err(|e| StoreError::Corrupt(format!("stored config: {e}")))
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

impl Engine for RedbEngine {
    fn load(&self, node: u64) -> Result<Loaded, StoreError> {
        self.located(self.load_inner(node))
    }

    fn reopen(&self) -> Result<(), StoreError> {
        let mut slot = self.db.write().unwrap_or_else(|p| p.into_inner());
        // Dropping the old handle releases redb's own lock on the file.
        drop(slot.take());
        let db = open_db(&self.file)?;
        *slot = Some(db);
        Ok(())
    }

    fn commit(&self, batch: &Batch) -> Result<u64, StoreError> {
        self.located(self.commit_inner(batch))
    }

    fn changes_since(&self, since: u64, limit: usize) -> Result<Changes, StoreError> {
        let mut out = self.located(self.changes_inner(since, limit, &|_| false))?;
        if !out.more {
            out.next = out.head;
        }
        Ok(out)
    }

    fn mark(&self, peer_incarnation: u64) -> Result<u64, StoreError> {
        let db = self.db()?;
        let read = || -> Result<u64, StoreError> {
            let txn = db.begin_read().map_err(engine)?;
            let table = txn.open_table(MARKS).map_err(engine)?;
            Ok(table
                .get(peer_incarnation)
                .map_err(engine)?
                .map_or(0, |g| g.value()))
        };
        self.located(read())
    }

    fn location(&self) -> Option<&Path> {
        Some(&self.dir)
    }

    fn blocking(&self) -> bool {
        true
    }
}

/// Changes folded in from the write-ahead log: each name with the sequence
/// the log gave it, and the log position they reach.
#[derive(Default)]
pub struct Checkpoint {
    pub counters: BTreeMap<String, (u64, GCounter)>,
    pub head: u64,
    pub marks: HashMap<u64, u64>,
    pub membership: Option<Membership>,
    pub me: Option<Actor>,
    /// Keys to remember (`Some`) or to forget (`None`).
    pub keys: BTreeMap<String, Option<KeyRecord>>,
    /// The last log record included.
    pub lsn: u64,
}

/// The tables of one write transaction.
struct Tables<'t> {
    meta: redb::Table<'t, &'static str, &'static [u8]>,
    counters: redb::Table<'t, &'static str, &'static [u8]>,
    by_seq: redb::Table<'t, u64, &'static str>,
    marks: redb::Table<'t, u64, u64>,
    keys: redb::Table<'t, &'static str, &'static [u8]>,
}

impl<'t> Tables<'t> {
    fn open(txn: &'t redb::WriteTransaction) -> Result<Self, StoreError> {
        Ok(Tables {
            meta: txn.open_table(META).map_err(engine)?,
            counters: txn.open_table(COUNTERS).map_err(engine)?,
            by_seq: txn.open_table(BY_SEQ).map_err(engine)?,
            marks: txn.open_table(MARKS).map_err(engine)?,
            keys: txn.open_table(KEYS).map_err(engine)?,
        })
    }

    /// Stores `counter` at sequence `seq`, dropping the name's older index entry.
    fn put_counter(&mut self, name: &str, seq: u64, counter: &GCounter) -> Result<(), StoreError> {
        let old = self
            .counters
            .get(name)
            .map_err(engine)?
            .map(|row| decode_row(row.value()).map(|(lseq, _)| lseq))
            .transpose()?;
        if let Some(old) = old {
            self.by_seq.remove(old).map_err(engine)?;
        }
        self.by_seq.insert(seq, name).map_err(engine)?;
        self.counters
            .insert(name, encode_row(seq, counter).as_slice())
            .map_err(engine)?;
        Ok(())
    }

    fn put_u64(&mut self, key: &str, value: u64) -> Result<(), StoreError> {
        self.meta
            .insert(key, value.to_le_bytes().as_slice())
            .map_err(engine)?;
        Ok(())
    }

    /// Raises a peer mark; never lowers it.
    fn raise_mark(&mut self, incarnation: u64, seq: u64) -> Result<(), StoreError> {
        let prev = self
            .marks
            .get(incarnation)
            .map_err(engine)?
            .map_or(0, |g| g.value());
        if seq > prev {
            self.marks.insert(incarnation, seq).map_err(engine)?;
        }
        Ok(())
    }

    fn put_me(&mut self, me: &Actor) -> Result<(), StoreError> {
        self.meta
            .insert("me", me.as_str().as_bytes())
            .map_err(engine)?;
        Ok(())
    }

    fn put_membership(&mut self, membership: &Membership) -> Result<(), StoreError> {
        let json = serde_json::to_vec(membership).expect("membership serializes");
        self.meta
            .insert("config", json.as_slice())
            .map_err(engine)?;
        Ok(())
    }

    fn put_key(&mut self, key: &str, record: Option<&KeyRecord>) -> Result<(), StoreError> {
        match record {
            None => {
                self.keys.remove(key).map_err(engine)?;
            }
            Some(r) => {
                let json = serde_json::to_vec(r).expect("records serialize");
                self.keys.insert(key, json.as_slice()).map_err(engine)?;
            }
        }
        Ok(())
    }
}

impl RedbEngine {
    /// Runs `f` over the tables of one write transaction and commits it.
    fn write<T>(
        &self,
        f: impl FnOnce(&mut Tables<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let db = self.db()?;
        let txn = db.begin_write().map_err(engine)?;
        let out = {
            let mut tables = Tables::open(&txn)?;
            f(&mut tables)?
        };
        txn.commit().map_err(engine)?;
        Ok(out)
    }

    fn commit_inner(&self, batch: &Batch) -> Result<u64, StoreError> {
        self.write(|t| {
            let mut seq = read_u64(&t.meta, "seq")?;
            for (name, counter) in &batch.counters {
                seq += 1;
                t.put_counter(name, seq, counter)?;
            }
            t.put_u64("seq", seq)?;
            for mark in &batch.marks {
                t.raise_mark(mark.incarnation, mark.seq)?;
            }
            if let Some(me) = &batch.me {
                t.put_me(me)?;
            }
            if let Some(membership) = &batch.membership {
                t.put_membership(membership)?;
            }
            for k in &batch.keys_del {
                t.put_key(k, None)?;
            }
            for (k, r) in &batch.keys_put {
                t.put_key(k, Some(r))?;
            }
            Ok(seq)
        })
    }

    /// Folds changes from the log in, in one durable transaction.
    pub fn checkpoint(&self, c: &Checkpoint) -> Result<(), StoreError> {
        let write = self.write(|t| {
            for (name, (seq, counter)) in &c.counters {
                t.put_counter(name, *seq, counter)?;
            }
            t.put_u64("seq", c.head)?;
            t.put_u64("log_lsn", c.lsn)?;
            for (&incarnation, &seq) in &c.marks {
                t.raise_mark(incarnation, seq)?;
            }
            if let Some(me) = &c.me {
                t.put_me(me)?;
            }
            if let Some(membership) = &c.membership {
                t.put_membership(membership)?;
            }
            for (k, r) in &c.keys {
                t.put_key(k, r.as_ref())?;
            }
            Ok(())
        });
        self.located(write)
    }

    /// The last log record folded in by a checkpoint (0: none).
    pub fn log_lsn(&self) -> Result<u64, StoreError> {
        let db = self.db()?;
        let read = || -> Result<u64, StoreError> {
            let txn = db.begin_read().map_err(engine)?;
            read_u64(&txn.open_table(META).map_err(engine)?, "log_lsn")
        };
        self.located(read())
    }

    /// Names changed after `since`, at most `limit`, skipping the names
    /// `newer` says are held elsewhere at a later sequence. Unlike
    /// `changes_since`, `next` is the sequence of the last name returned
    /// (or `since`) even when nothing more follows here.
    pub fn changes_except(
        &self,
        since: u64,
        limit: usize,
        newer: &dyn Fn(&str) -> bool,
    ) -> Result<Changes, StoreError> {
        self.located(self.changes_inner(since, limit, newer))
    }

    fn changes_inner(
        &self,
        since: u64,
        limit: usize,
        newer: &dyn Fn(&str) -> bool,
    ) -> Result<Changes, StoreError> {
        let db = self.db()?;
        let txn = db.begin_read().map_err(engine)?;
        let head = read_u64(&txn.open_table(META).map_err(engine)?, "seq")?;
        let by_seq = txn.open_table(BY_SEQ).map_err(engine)?;
        let counters = txn.open_table(COUNTERS).map_err(engine)?;
        let mut out = Changes {
            head,
            next: since,
            ..Changes::default()
        };
        for entry in by_seq.range(since.saturating_add(1)..).map_err(engine)? {
            let (seq, name) = entry.map_err(engine)?;
            if newer(name.value()) {
                continue;
            }
            if out.counters.len() == limit {
                out.more = true;
                break;
            }
            let name = name.value().to_string();
            let row = counters
                .get(name.as_str())
                .map_err(engine)?
                .ok_or_else(|| StoreError::Corrupt(format!("index names missing {name:?}")))?;
            let (_, counter) = decode_row(row.value())?;
            out.next = seq.value();
            out.counters.push((name, counter));
        }
        Ok(out)
    }
}
