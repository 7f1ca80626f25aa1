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
//!
//! Nothing read is believed unchecked: every open verifies the checksum of
//! every page of the committed trees (redb's integrity check, which also
//! falls back to the previous commit when the newest one does not verify:
//! `logged.rs` then finds the B-tree behind its log), a file that cannot
//! be opened that way is reported as damage (as is a panic of redb on
//! bytes it did not expect), and each counter row carries a CRC-32 of its
//! own, since redb checks page checksums only at open and a row is read
//! again whenever a peer pulls it.
//!
//! The file is reached through the [`Disk`] seam, so the same code runs on
//! a simulated disk.

use std::collections::{BTreeMap, HashMap};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock, RwLockReadGuard};

use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};

use super::disk::{Backend, Disk, OsDisk, set_aside};
use super::idempotency::KeyRecord;
use super::{Batch, Changes, Engine, Image, Loaded, Salvage, StoreError};
use crate::cluster::{Actor, ClusterConfig, Membership};
use crate::crdt::GCounter;

const COUNTERS: TableDefinition<&str, &[u8]> = TableDefinition::new("counters");
const BY_SEQ: TableDefinition<u64, &str> = TableDefinition::new("by_seq");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const MARKS: TableDefinition<u64, u64> = TableDefinition::new("peer_marks");
/// idempotency key -> JSON `KeyRecord`.
const KEYS: TableDefinition<&str, &[u8]> = TableDefinition::new("idempotency_keys");

/// The B-tree's file in the data folder.
pub const DB_FILE: &str = "tally.redb";
/// The log format whose presence the B-tree records under `wal`.
pub(super) const WAL_FORMAT: u64 = 2;
/// Salvage events kept in the folder (the oldest are forgotten).
const MAX_SALVAGE_EVENTS: usize = 16;
/// redb's page cache. Every counter is also held in the store's memory, so
/// the cache serves only checkpoints and peers' pulls; redb's default (1 GiB)
/// would keep a copy of the whole file after the load at startup.
const CACHE_BYTES: usize = 16 << 20;

/// Opens the B-tree file, verifying every page of its committed trees; a
/// file that fails the check, or that makes redb panic, is damage.
///
/// When the newest commit does not verify, redb falls back to the one
/// before and writes that back: a bit that one read flipped would then
/// undo a commit for good. So that fallback is refused, and the file read
/// again (as after any open that found unexpected bytes), until it has
/// failed [`OPENS`] times.
fn open_db(disk: &dyn Disk) -> Result<Database, StoreError> {
    let mut attempt = 1;
    loop {
        let last = attempt == OPENS;
        match open_once(disk, last) {
            Err(e) if !last && doubtful(&e) => attempt += 1,
            other => return other,
        }
    }
}

/// An open that found bytes it did not expect, or refused the fallback:
/// worth reading again before believing it.
fn doubtful(e: &StoreError) -> bool {
    match e {
        StoreError::Corrupt(_) => true,
        StoreError::Engine { source, .. } => matches!(
            source.downcast_ref::<redb::Error>(),
            Some(redb::Error::RepairAborted)
        ),
        _ => false,
    }
}

/// Opens of a B-tree whose newest commit fails its check, before the
/// fallback to the commit before it is allowed.
const OPENS: usize = 3;

fn open_once(disk: &dyn Disk, fallback: bool) -> Result<Database, StoreError> {
    let name = disk.display(DB_FILE);
    let file = disk
        .open(DB_FILE, true)
        .map_err(|e| StoreError::engine(e).in_file(&name))?;
    let opened = catch_unwind(AssertUnwindSafe(|| {
        Database::builder()
            .set_cache_size(CACHE_BYTES)
            .set_check_integrity_on_open(true)
            .set_repair_callback(move |session| {
                // Called at 0.3 only when the newest commit did not verify.
                if !fallback && (session.progress() - 0.3).abs() < 1e-9 {
                    session.abort();
                }
            })
            .create_with_backend(Backend(file))
    }));
    match opened {
        Ok(Ok(db)) => Ok(db),
        Ok(Err(redb::DatabaseError::Storage(redb::StorageError::Corrupted(why)))) => {
            Err(StoreError::Corrupt(format!(
                "{}: the B-tree fails its check: {why}",
                name.display()
            )))
        }
        Ok(Err(e)) => match redb::Error::from(e) {
            // Not the bytes of a B-tree where they should be (its header).
            redb::Error::Io(io) if io.kind() == std::io::ErrorKind::InvalidData => {
                Err(StoreError::Corrupt(format!(
                    "{}: the B-tree fails its check: {io}",
                    name.display()
                )))
            }
            e => Err(engine(e).in_file(&name)),
        },
        Err(panic) => Err(StoreError::Corrupt(format!(
            "{}: the B-tree could not be read ({})",
            name.display(),
            panic_message(&*panic)
        ))),
    }
}

/// The message of a caught panic.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

fn engine(e: impl Into<redb::Error>) -> StoreError {
    StoreError::engine(e.into())
}

pub struct RedbEngine {
    /// `None` only while being reopened. Readers hold the read lock for a
    /// whole transaction, so a reopen never overlaps one.
    db: RwLock<Option<Database>>,
    disk: Arc<dyn Disk>,
    file: PathBuf,
    created: bool,
}

impl RedbEngine {
    /// Opens (creating if needed) the data folder `dir`, refusing one that
    /// another process holds.
    pub fn open(dir: &Path) -> Result<RedbEngine, StoreError> {
        Self::on(Arc::new(OsDisk::lock(dir)?))
    }

    /// Opens (creating if needed) the B-tree of a data folder; a damaged
    /// file is refused with [`StoreError::Corrupt`].
    pub fn on(disk: Arc<dyn Disk>) -> Result<RedbEngine, StoreError> {
        let file = disk.display(DB_FILE);
        let exists = disk
            .exists(DB_FILE)
            .map_err(|e| StoreError::engine(e).in_file(&file))?;
        let created = !exists
            || disk
                .open(DB_FILE, false)
                .and_then(|f| f.len())
                .map_err(|e| StoreError::engine(e).in_file(&file))?
                == 0;
        let db = open_db(&*disk)?;
        if created {
            // The new file's entry in the folder must be as durable as its pages.
            disk.sync_dir("")
                .map_err(|e| StoreError::engine(e).in_file(&file))?;
        }
        Ok(RedbEngine {
            db: RwLock::new(Some(db)),
            disk,
            file,
            created,
        })
    }

    /// Whether the file was made by this open.
    pub fn created(&self) -> bool {
        self.created
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
        let (incarnation, membership, head, me, salvage) = {
            let mut meta = txn.open_table(META).map_err(engine)?;
            txn.open_table(COUNTERS).map_err(engine)?;
            txn.open_table(BY_SEQ).map_err(engine)?;
            txn.open_table(MARKS).map_err(engine)?;
            txn.open_table(KEYS).map_err(engine)?;
            // A newer tally's folder is refused before anything is written:
            // this binary would not read the log it records.
            let wal = read_u64(&meta, "wal")?;
            if wal > WAL_FORMAT {
                return Err(StoreError::NewerFormat {
                    file: self.file.clone(),
                    found: wal,
                    reads: WAL_FORMAT,
                });
            }
            let found = read_u64(&meta, "node_id")?;
            if found != 0 && found != node {
                return Err(StoreError::WrongNode {
                    path: self.disk.display(""),
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
            let salvage = match meta.get("salvaged").map_err(engine)? {
                None => None,
                Some(v) => Some(
                    serde_json::from_slice::<Vec<Salvage>>(v.value())
                        .map_err(|e| StoreError::Corrupt(format!("stored salvage events: {e}")))?,
                ),
            };
            (
                incarnation,
                membership,
                read_u64(&meta, "seq")?,
                me,
                salvage,
            )
        };
        txn.commit().map_err(engine)?;
        let txn = db.begin_read().map_err(engine)?;
        let table = txn.open_table(COUNTERS).map_err(engine)?;
        // Rows come sorted by name: the map is built from them in one go
        // (a bulk build, linear), rather than one insert per row.
        let mut rows = Vec::new();
        let mut unchecked = Vec::new();
        for entry in table.iter().map_err(engine)? {
            let (k, v) = entry.map_err(engine)?;
            let name = k.value();
            let (lseq, counter, checked) = decode_row(name, v.value())?;
            if !checked {
                unchecked.push((name.to_string(), lseq, counter.clone()));
            }
            rows.push((name.to_string(), counter));
        }
        let counters = BTreeMap::from_iter(rows);
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
        drop(table);
        drop(txn);
        if !unchecked.is_empty() {
            // Rows written before rows carried a checksum get one now.
            let txn = db.begin_write().map_err(engine)?;
            {
                let mut table = txn.open_table(COUNTERS).map_err(engine)?;
                for (name, lseq, counter) in &unchecked {
                    table
                        .insert(name.as_str(), encode_row(name, *lseq, counter).as_slice())
                        .map_err(engine)?;
                }
            }
            txn.commit().map_err(engine)?;
        }
        Ok(Loaded {
            incarnation,
            membership,
            counters,
            keys,
            head,
            me,
            created: self.created,
            salvage,
            damage: Vec::new(),
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

/// The checksum of a counter row: its name and its body, so that a key
/// changed on disk is caught as surely as a value.
fn row_crc(name: &str, body: &[u8]) -> [u8; 4] {
    let mut h = crc32fast::Hasher::new();
    h.update(name.as_bytes());
    h.update(body);
    h.finalize().to_le_bytes()
}

/// A counter row: `[local sequence: u64][counter][CRC-32 of the name and
/// both]`. Rows written before rows carried a checksum have none; their
/// length tells them apart (a counter is whole 24-byte entries), and
/// `checked` says which one was read.
fn decode_row(name: &str, bytes: &[u8]) -> Result<(u64, GCounter, bool), StoreError> {
    let bad = |why: &str| StoreError::Corrupt(format!("the counter row of {name:?} {why}"));
    let checked = bytes.len() % crate::crdt::ENTRY_LEN == 12;
    let body = if checked {
        let (body, crc) = bytes.split_at(bytes.len() - 4);
        if row_crc(name, body) != crc {
            return Err(bad("fails its checksum"));
        }
        body
    } else {
        bytes
    };
    if body.len() < 8 {
        return Err(bad("is too short"));
    }
    let lseq = u64::from_le_bytes(body[..8].try_into().expect("8 bytes"));
    let counter = GCounter::decode(&body[8..]).map_err(|e| bad(&e.to_string()))?;
    Ok((lseq, counter, checked))
}

fn encode_row(name: &str, lseq: u64, counter: &GCounter) -> Vec<u8> {
    let mut out = lseq.to_le_bytes().to_vec();
    out.extend_from_slice(&counter.encode());
    let crc = row_crc(name, &out);
    out.extend_from_slice(&crc);
    out
}

impl Engine for RedbEngine {
    fn load(&self, node: u64) -> Result<Loaded, StoreError> {
        self.located(self.load_inner(node))
    }

    fn reopen(&self) -> Result<(), StoreError> {
        let mut slot = self.db.write().unwrap_or_else(|p| p.into_inner());
        drop(slot.take());
        let db = open_db(&*self.disk)?;
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
        self.disk.location()
    }

    fn blocking(&self) -> bool {
        self.disk.blocking()
    }

    fn ready_at(&self) -> Option<tokio::time::Instant> {
        self.disk.ready_at()
    }
}

/// Changes folded in from the write-ahead log: each name with the sequence
/// the log gave it, and the log position they reach.
#[derive(Clone, Default)]
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
    /// A salvage: the folder counts on under a new incarnation, forgets
    /// how far it had merged each peer (so it pulls everything again), and
    /// records the event.
    pub salvage: Option<Salvage>,
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
    /// One descent of the counters' B-tree: the insert hands back the row
    /// it replaced, checked like any row read.
    fn put_counter(&mut self, name: &str, seq: u64, counter: &GCounter) -> Result<(), StoreError> {
        let old = self
            .counters
            .insert(name, encode_row(name, seq, counter).as_slice())
            .map_err(engine)?
            .map(|row| decode_row(name, row.value()).map(|(lseq, _, _)| lseq))
            .transpose()?;
        if let Some(old) = old {
            self.by_seq.remove(old).map_err(engine)?;
        }
        self.by_seq.insert(seq, name).map_err(engine)?;
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
            if let Some(salvage) = &c.salvage {
                t.put_u64("incarnation", salvage.to_incarnation)?;
                t.marks.retain(|_, _| false).map_err(engine)?;
                let mut events = match t.meta.get("salvaged").map_err(engine)? {
                    Some(v) => serde_json::from_slice::<Vec<Salvage>>(v.value())
                        .map_err(|e| StoreError::Corrupt(format!("stored salvage events: {e}")))?,
                    None => Vec::new(),
                };
                events.push(salvage.clone());
                let keep = events.len().saturating_sub(MAX_SALVAGE_EVENTS);
                let json = serde_json::to_vec(&events[keep..]).expect("events serialize");
                t.meta.insert("salvaged", json.as_slice()).map_err(engine)?;
            }
            t.put_u64("wal", WAL_FORMAT)?;
            Ok(())
        });
        self.located(write)
    }

    /// Node id, incarnation, number of names, whether a log in the current
    /// format is expected, and the salvages recorded: for `tally check`.
    pub fn summary(&self) -> Result<(u64, u64, u64, bool, Vec<Salvage>), StoreError> {
        let db = self.db()?;
        let read = || -> Result<_, StoreError> {
            let txn = db.begin_read().map_err(engine)?;
            let (node, incarnation, wal, salvaged) = match txn.open_table(META) {
                Ok(meta) => {
                    let salvaged = match meta.get("salvaged").map_err(engine)? {
                        Some(v) => serde_json::from_slice(v.value()).map_err(|e| {
                            StoreError::Corrupt(format!("stored salvage events: {e}"))
                        })?,
                        None => Vec::new(),
                    };
                    (
                        read_u64(&meta, "node_id")?,
                        read_u64(&meta, "incarnation")?,
                        read_u64(&meta, "wal")?,
                        salvaged,
                    )
                }
                Err(redb::TableError::TableDoesNotExist(_)) => (0, 0, 0, Vec::new()),
                Err(e) => return Err(engine(e)),
            };
            let names = match txn.open_table(COUNTERS) {
                Ok(t) => t.len().map_err(engine)?,
                Err(redb::TableError::TableDoesNotExist(_)) => 0,
                Err(e) => return Err(engine(e)),
            };
            if wal > WAL_FORMAT {
                return Err(StoreError::NewerFormat {
                    file: self.file.clone(),
                    found: wal,
                    reads: WAL_FORMAT,
                });
            }
            Ok((node, incarnation, names, wal == WAL_FORMAT, salvaged))
        };
        self.located(read())
    }

    /// Whether a log in the current format goes on after [`Self::log_lsn`]
    /// (false for a new folder, or one from before that format).
    pub fn log_expected(&self) -> Result<bool, StoreError> {
        Ok(self.meta_u64("wal")? == WAL_FORMAT)
    }

    /// Records `wal` as a tally of another log format would have.
    #[cfg(test)]
    pub fn set_log_format(&self, format: u64) -> Result<(), StoreError> {
        let write = self.write(|t| t.put_u64("wal", format));
        self.located(write)
    }

    /// Records that the log in the current format exists (once it does).
    pub fn expect_log(&self) -> Result<(), StoreError> {
        let write = self.write(|t| t.put_u64("wal", WAL_FORMAT));
        self.located(write)
    }

    fn meta_u64(&self, key: &str) -> Result<u64, StoreError> {
        let db = self.db()?;
        let read = || -> Result<u64, StoreError> {
            let txn = db.begin_read().map_err(engine)?;
            read_u64(&txn.open_table(META).map_err(engine)?, key)
        };
        self.located(read())
    }

    /// Closes the B-tree and opens it again, which verifies every page
    /// of it from the disk (redb checks checksums only when it opens, and
    /// serves later reads from its cache).
    pub fn verify(&self) -> Result<(), StoreError> {
        self.reopen()
    }

    /// Sets the B-tree file aside (under `damaged/`) and writes a new one
    /// holding `image`, the log folded in up to `log_lsn`. Every name gets
    /// a new sequence after the image's head; returns the new head.
    pub fn rebuild(&self, image: &Image, log_lsn: u64) -> Result<u64, StoreError> {
        let mut slot = self.db.write().unwrap_or_else(|p| p.into_inner());
        drop(slot.take());
        set_aside(&*self.disk, DB_FILE, true)?;
        let db = open_db(&*self.disk)?;
        self.disk
            .sync_dir("")
            .map_err(|e| StoreError::engine(e).in_file(&self.file))?;
        let txn = db.begin_write().map_err(engine)?;
        let head = {
            let mut t = Tables::open(&txn)?;
            t.put_u64("node_id", image.node)?;
            t.put_u64("incarnation", image.incarnation)?;
            let mut seq = image.head;
            for (name, counter) in &image.counters {
                seq += 1;
                t.put_counter(name, seq, counter)?;
            }
            t.put_u64("seq", seq)?;
            t.put_u64("log_lsn", log_lsn)?;
            t.put_u64("wal", WAL_FORMAT)?;
            t.put_membership(&image.membership)?;
            if let Some(me) = &image.me {
                t.put_me(me)?;
            }
            for (k, r) in &image.keys {
                t.put_key(k, Some(r))?;
            }
            seq
        };
        txn.commit().map_err(engine)?;
        *slot = Some(db);
        Ok(head)
    }

    /// The last log record folded in by a checkpoint (0: none).
    pub fn log_lsn(&self) -> Result<u64, StoreError> {
        self.meta_u64("log_lsn")
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
            let (_, counter, _) = decode_row(&name, row.value())?;
            out.next = seq.value();
            out.counters.push((name, counter));
        }
        Ok(out)
    }
}
