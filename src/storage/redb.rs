//! The disk engine: one redb file per data folder.
//!
//! redb is a pure-Rust, single-file, copy-on-write B-tree with ACID
//! transactions: a commit is durable when `commit` returns, and a crash
//! leaves the last committed state. Tables:
//! - `counters`: name -> local sequence (u64 LE) + encoded counter;
//! - `by_seq`: local sequence -> name, one entry per name at its latest sequence;
//! - `meta`: node id, incarnation, head sequence, config (JSON);
//! - `peer_marks`: peer incarnation -> the peer sequence merged so far.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use super::idempotency::KeyRecord;
use super::{Batch, Changes, Engine, Loaded, StoreError};
use crate::cluster::ClusterConfig;
use crate::crdt::GCounter;

const COUNTERS: TableDefinition<&str, &[u8]> = TableDefinition::new("counters");
const BY_SEQ: TableDefinition<u64, &str> = TableDefinition::new("by_seq");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const MARKS: TableDefinition<u64, u64> = TableDefinition::new("peer_marks");
/// idempotency key -> JSON `KeyRecord`.
const KEYS: TableDefinition<&str, &[u8]> = TableDefinition::new("idempotency_keys");

const DB_FILE: &str = "tally.redb";
const LOCK_FILE: &str = "LOCK";

fn engine(e: impl Into<redb::Error>) -> StoreError {
    StoreError::Engine(e.into().to_string())
}

pub struct RedbEngine {
    db: Database,
    dir: PathBuf,
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
        let created = !dir.join(DB_FILE).exists();
        let db = Database::create(dir.join(DB_FILE))
            .map_err(|e| StoreError::Engine(format!("{}: {e}", dir.join(DB_FILE).display())))?;
        Ok(RedbEngine {
            db,
            dir: dir.to_path_buf(),
            created,
            _lock: lock,
        })
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
        let txn = self.db.begin_write().map_err(engine)?;
        let (incarnation, config) = {
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
            let config = match meta.get("config").map_err(engine)? {
                None => ClusterConfig::default(),
                Some(v) => serde_json::from_slice(v.value())
                    .map_err(|e| StoreError::Corrupt(format!("stored config: {e}")))?,
            };
            (incarnation, config)
        };
        txn.commit().map_err(engine)?;
        let txn = self.db.begin_read().map_err(engine)?;
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
            config,
            counters,
            keys,
            created: self.created,
        })
    }

    fn commit(&self, batch: &Batch<'_>) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(engine)?;
        {
            let mut meta = txn.open_table(META).map_err(engine)?;
            let mut counters = txn.open_table(COUNTERS).map_err(engine)?;
            let mut by_seq = txn.open_table(BY_SEQ).map_err(engine)?;
            let mut peer_marks = txn.open_table(MARKS).map_err(engine)?;
            let mut seq = read_u64(&meta, "seq")?;
            for (name, counter) in batch.counters {
                let old = counters
                    .get(name.as_str())
                    .map_err(engine)?
                    .map(|row| decode_row(row.value()).map(|(lseq, _)| lseq))
                    .transpose()?;
                if let Some(old) = old {
                    by_seq.remove(old).map_err(engine)?;
                }
                seq += 1;
                by_seq.insert(seq, name.as_str()).map_err(engine)?;
                counters
                    .insert(name.as_str(), encode_row(seq, counter).as_slice())
                    .map_err(engine)?;
            }
            meta.insert("seq", seq.to_le_bytes().as_slice())
                .map_err(engine)?;
            for &(peer, mark) in batch.marks {
                let prev = peer_marks
                    .get(peer)
                    .map_err(engine)?
                    .map_or(0, |g| g.value());
                if mark > prev {
                    peer_marks.insert(peer, mark).map_err(engine)?;
                }
            }
            if let Some(config) = batch.config {
                let json = serde_json::to_vec(config).expect("config serializes");
                meta.insert("config", json.as_slice()).map_err(engine)?;
            }
            let mut keys = txn.open_table(KEYS).map_err(engine)?;
            for k in batch.keys_del {
                keys.remove(k.as_str()).map_err(engine)?;
            }
            for (k, r) in batch.keys_put {
                let json = serde_json::to_vec(r).expect("records serialize");
                keys.insert(k.as_str(), json.as_slice()).map_err(engine)?;
            }
        }
        txn.commit().map_err(engine)
    }

    fn changes_since(&self, since: u64, limit: usize) -> Result<Changes, StoreError> {
        let txn = self.db.begin_read().map_err(engine)?;
        let head = read_u64(&txn.open_table(META).map_err(engine)?, "seq")?;
        let by_seq = txn.open_table(BY_SEQ).map_err(engine)?;
        let counters = txn.open_table(COUNTERS).map_err(engine)?;
        let mut out = Changes {
            head,
            next: head,
            ..Changes::default()
        };
        for entry in by_seq.range(since.saturating_add(1)..).map_err(engine)? {
            let (seq, name) = entry.map_err(engine)?;
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
        if !out.more {
            out.next = head;
        }
        Ok(out)
    }

    fn mark(&self, peer_incarnation: u64) -> Result<u64, StoreError> {
        let txn = self.db.begin_read().map_err(engine)?;
        let table = txn.open_table(MARKS).map_err(engine)?;
        Ok(table
            .get(peer_incarnation)
            .map_err(engine)?
            .map_or(0, |g| g.value()))
    }

    fn location(&self) -> Option<&Path> {
        Some(&self.dir)
    }

    fn blocking(&self) -> bool {
        true
    }
}
