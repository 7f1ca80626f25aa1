//! The disk engine: a write-ahead log in front of the redb B-tree.
//!
//! A commit appends one record to the log and syncs it (one small
//! sequential write and one `fdatasync`), then updates an in-memory
//! *overlay* of what the log holds beyond the B-tree. Every so often (see
//! [`LogLimits`]) the overlay is folded into the B-tree in one transaction
//! — each name once, however many commits changed it — together with the
//! position in the log it reaches, and the log segments it covers are
//! deleted. Opening replays the log after that position. Reads (changes
//! for a peer, peer marks) combine the B-tree and the overlay.
//!
//! Sequence numbers are given exactly as the B-tree alone would give them,
//! so peers' marks stay valid across checkpoints and restarts.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

use super::journal::Journal;
use super::redb::{Checkpoint, RedbEngine};
use super::{Batch, Changes, Engine, Loaded, StoreError};

/// The log folder inside a data folder.
const LOG_DIR: &str = "log";

/// When the overlay is folded into the B-tree: whichever comes first.
#[derive(Clone, Copy, Debug)]
pub struct LogLimits {
    /// Names held in the overlay (memory, and the size of one checkpoint).
    pub names: usize,
    /// Bytes of log since the last checkpoint (replay time at a restart).
    pub bytes: u64,
}

impl Default for LogLimits {
    fn default() -> Self {
        LogLimits {
            names: 16_384,
            bytes: 32 << 20,
        }
    }
}

/// What the log holds beyond the B-tree.
#[derive(Default)]
struct Overlay {
    /// The last sequence number given out.
    head: u64,
    counters: HashMap<String, (u64, crate::crdt::GCounter)>,
    by_seq: BTreeMap<u64, String>,
    marks: HashMap<u64, u64>,
    membership: Option<crate::cluster::Membership>,
    me: Option<crate::cluster::Actor>,
    keys: BTreeMap<String, Option<super::idempotency::KeyRecord>>,
    /// The last record applied.
    lsn: u64,
    /// Log bytes since the last checkpoint.
    bytes: u64,
}

impl Overlay {
    /// Applies one batch; sequences continue from `head` in the batch's order.
    fn apply(&mut self, lsn: u64, batch: Batch, bytes: u64) {
        for (name, counter) in batch.counters {
            self.head += 1;
            if let Some((old, _)) = self.counters.get(&name) {
                self.by_seq.remove(old);
            }
            self.by_seq.insert(self.head, name.clone());
            self.counters.insert(name, (self.head, counter));
        }
        for mark in batch.marks {
            let slot = self.marks.entry(mark.incarnation).or_insert(0);
            *slot = (*slot).max(mark.seq);
        }
        if batch.membership.is_some() {
            self.membership = batch.membership;
        }
        if batch.me.is_some() {
            self.me = batch.me;
        }
        for k in batch.keys_del {
            self.keys.insert(k, None);
        }
        for (k, r) in batch.keys_put {
            self.keys.insert(k, Some(r));
        }
        self.lsn = lsn;
        self.bytes += bytes;
    }

    /// Empties the overlay into a checkpoint.
    fn take(&mut self) -> Checkpoint {
        self.by_seq.clear();
        self.bytes = 0;
        Checkpoint {
            counters: std::mem::take(&mut self.counters).into_iter().collect(),
            head: self.head,
            marks: std::mem::take(&mut self.marks),
            membership: self.membership.take(),
            me: self.me.take(),
            keys: std::mem::take(&mut self.keys),
            lsn: self.lsn,
        }
    }
}

pub struct LogEngine {
    tree: RedbEngine,
    /// Only the writer appends; `None` until the first `load`.
    journal: Mutex<Option<Journal>>,
    /// Readers hold it for a whole read, and a checkpoint holds it for
    /// writing while the B-tree commits, so a read sees the B-tree and the
    /// overlay from the same moment.
    overlay: RwLock<Overlay>,
    log_dir: PathBuf,
    limits: LogLimits,
}

impl LogEngine {
    /// Opens (creating if needed) the data folder `dir`, refusing one that
    /// another process holds.
    pub fn open(dir: &Path) -> Result<LogEngine, StoreError> {
        Self::with_limits(dir, LogLimits::default())
    }

    pub fn with_limits(dir: &Path, limits: LogLimits) -> Result<LogEngine, StoreError> {
        let tree = RedbEngine::open(dir)?;
        Ok(LogEngine {
            tree,
            journal: Mutex::new(None),
            overlay: RwLock::new(Overlay::default()),
            log_dir: dir.join(LOG_DIR),
            limits,
        })
    }

    fn journal(&self) -> MutexGuard<'_, Option<Journal>> {
        self.journal.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn read(&self) -> RwLockReadGuard<'_, Overlay> {
        self.overlay.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Overlay> {
        self.overlay.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Folds the overlay into the B-tree and deletes the log it covered.
    fn checkpoint(&self, journal: &mut Journal) -> Result<(), StoreError> {
        // Records from now on go to a new segment, which the checkpoint
        // does not cover and which therefore survives it.
        journal.rotate()?;
        let mut overlay = self.write();
        let bytes = overlay.bytes;
        let checkpoint = overlay.take();
        if let Err(e) = self.tree.checkpoint(&checkpoint) {
            // Nothing was folded in: the overlay keeps it all.
            restore(&mut overlay, checkpoint, bytes);
            return Err(e);
        }
        drop(overlay);
        journal.drop_older()
    }
}

/// Puts a checkpoint that failed back into the overlay.
fn restore(overlay: &mut Overlay, c: Checkpoint, bytes: u64) {
    overlay.bytes = bytes;
    for (name, (seq, counter)) in c.counters {
        overlay.by_seq.insert(seq, name.clone());
        overlay.counters.insert(name, (seq, counter));
    }
    overlay.marks = c.marks;
    overlay.membership = c.membership;
    overlay.me = c.me;
    overlay.keys = c.keys;
}

impl Engine for LogEngine {
    fn load(&self, node: u64) -> Result<Loaded, StoreError> {
        let mut loaded = self.tree.load(node)?;
        let after = self.tree.log_lsn()?;
        let mut overlay = Overlay {
            head: loaded.head,
            lsn: after,
            ..Overlay::default()
        };
        let replayed = Journal::replay(&self.log_dir, after, |lsn, batch| {
            overlay.apply(lsn, batch, 0);
        })?;
        overlay.bytes = replayed.bytes;
        // What the log adds to what the B-tree holds.
        for (name, (_, counter)) in &overlay.counters {
            loaded.counters.insert(name.clone(), counter.clone());
        }
        if let Some(m) = &overlay.membership {
            loaded.membership = m.clone();
        }
        if let Some(me) = &overlay.me {
            loaded.me = Some(me.clone());
        }
        if !overlay.keys.is_empty() {
            let mut keys: BTreeMap<_, _> = loaded.keys.into_iter().collect();
            for (k, r) in &overlay.keys {
                match r {
                    Some(r) => keys.insert(k.clone(), r.clone()),
                    None => keys.remove(k),
                };
            }
            loaded.keys = keys.into_iter().collect();
        }
        loaded.head = overlay.head;
        *self.write() = overlay;
        *self.journal() = Some(replayed.journal);
        Ok(loaded)
    }

    fn commit(&self, batch: &Batch) -> Result<u64, StoreError> {
        let mut slot = self.journal();
        let journal = slot
            .as_mut()
            .ok_or_else(|| StoreError::engine("the log is not open (load it first)"))?;
        let due = {
            let o = self.read();
            o.counters.len() >= self.limits.names || o.bytes >= self.limits.bytes
        };
        if due {
            self.checkpoint(journal)?;
        }
        let (lsn, bytes) = journal.append(batch)?;
        let mut overlay = self.write();
        overlay.apply(lsn, clone_batch(batch), bytes);
        Ok(overlay.head)
    }

    fn changes_since(&self, since: u64, limit: usize) -> Result<Changes, StoreError> {
        let overlay = self.read();
        let newer = |name: &str| overlay.counters.contains_key(name);
        let mut out = self.tree.changes_except(since, limit, &newer)?;
        if !out.more {
            for (&seq, name) in overlay.by_seq.range(since.saturating_add(1)..) {
                if out.counters.len() == limit {
                    out.more = true;
                    break;
                }
                out.next = seq;
                out.counters
                    .push((name.clone(), overlay.counters[name].1.clone()));
            }
        }
        out.head = overlay.head.max(out.head);
        if !out.more {
            out.next = out.head;
        }
        Ok(out)
    }

    fn mark(&self, peer_incarnation: u64) -> Result<u64, StoreError> {
        let overlay = self.read();
        let stored = self.tree.mark(peer_incarnation)?;
        Ok(overlay
            .marks
            .get(&peer_incarnation)
            .map_or(stored, |&m| m.max(stored)))
    }

    fn reopen(&self) -> Result<(), StoreError> {
        self.tree.reopen()?;
        if let Some(journal) = self.journal().as_mut() {
            journal.reset()?;
        }
        Ok(())
    }

    fn location(&self) -> Option<&Path> {
        self.tree.location()
    }

    fn blocking(&self) -> bool {
        true
    }
}

/// The batch to keep in the overlay (the caller keeps its own).
fn clone_batch(batch: &Batch) -> Batch {
    Batch {
        counters: batch.counters.clone(),
        marks: batch.marks.clone(),
        membership: batch.membership.clone(),
        keys_put: batch.keys_put.clone(),
        keys_del: batch.keys_del.clone(),
        me: batch.me.clone(),
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::crdt::{GCounter, ReplicaId};

    fn temp_dir() -> PathBuf {
        std::env::temp_dir().join(format!(
            "tally-logged-{}-{}",
            std::process::id(),
            fastrand::u64(..)
        ))
    }

    fn one(name: &str, count: u64) -> Batch {
        let mut c = GCounter::new();
        c.increment(
            ReplicaId {
                node: 1,
                incarnation: 7,
            },
            count,
        )
        .unwrap();
        Batch {
            counters: [(name.to_string(), c)].into(),
            ..Batch::default()
        }
    }

    fn copy_dir(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let path = entry.unwrap().path();
            std::fs::copy(&path, to.join(path.file_name().unwrap())).unwrap();
        }
    }

    /// Three commits fill the overlay; the fourth folds them into the
    /// B-tree first. The log as it was before that checkpoint is kept in
    /// `before`.
    fn three_then_checkpoint(dir: &Path, before: &Path) {
        let limits = LogLimits {
            names: 3,
            bytes: u64::MAX,
        };
        let engine = LogEngine::with_limits(dir, limits).unwrap();
        engine.load(1).unwrap();
        for (i, name) in ["a", "b", "c"].iter().enumerate() {
            assert_eq!(engine.commit(&one(name, 1)).unwrap(), i as u64 + 1);
        }
        copy_dir(&dir.join(LOG_DIR), before);
        assert_eq!(engine.commit(&one("d", 1)).unwrap(), 4);
        assert_eq!(engine.tree.log_lsn().unwrap(), 3, "the checkpoint ran");
    }

    /// A crash after a checkpoint committed but before it deleted the log
    /// it covered: the old records are in the B-tree already and must not
    /// be given new sequence numbers again.
    #[test]
    fn records_folded_in_are_not_replayed() {
        let dir = temp_dir();
        let before = temp_dir();
        three_then_checkpoint(&dir, &before);
        copy_dir(&before, &dir.join(LOG_DIR));
        let engine = LogEngine::open(&dir).unwrap();
        let loaded = engine.load(1).unwrap();
        assert_eq!(loaded.head, 4);
        assert_eq!(loaded.counters.len(), 4);
        let changes = engine.changes_since(0, 10).unwrap();
        let names: Vec<_> = changes.counters.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["a", "b", "c", "d"]);
        assert_eq!((changes.next, changes.head, changes.more), (4, 4, false));
        // Appending goes on after the last record, in the newest segment.
        assert_eq!(engine.commit(&one("a", 2)).unwrap(), 5);
        drop(engine);
        let engine = LogEngine::open(&dir).unwrap();
        assert_eq!(engine.load(1).unwrap().head, 5);
        drop(engine);
        std::fs::remove_dir_all(&dir).unwrap();
        std::fs::remove_dir_all(&before).unwrap();
    }

    /// A log that ends before the B-tree's position (files lost or
    /// restored from an older copy): every record in it is folded in, so
    /// the log starts again after that position, and the next open does
    /// not take the gap for damage.
    #[test]
    fn a_log_behind_the_b_tree_starts_again_after_it() {
        let dir = temp_dir();
        let two = temp_dir();
        let limits = LogLimits {
            names: 3,
            bytes: u64::MAX,
        };
        let engine = LogEngine::with_limits(&dir, limits).unwrap();
        engine.load(1).unwrap();
        engine.commit(&one("a", 1)).unwrap();
        engine.commit(&one("b", 1)).unwrap();
        copy_dir(&dir.join(LOG_DIR), &two);
        engine.commit(&one("c", 1)).unwrap();
        engine.commit(&one("d", 1)).unwrap();
        assert_eq!(
            engine.tree.log_lsn().unwrap(),
            3,
            "a, b and c are folded in"
        );
        drop(engine);
        // The log holds records 1 and 2 only; the B-tree is at 3.
        std::fs::remove_dir_all(dir.join(LOG_DIR)).unwrap();
        copy_dir(&two, &dir.join(LOG_DIR));
        for round in 0..2 {
            let engine = LogEngine::open(&dir).unwrap();
            let loaded = engine.load(1).unwrap();
            for name in ["a", "b", "c"] {
                assert!(loaded.counters.contains_key(name), "round {round}: {name}");
            }
            assert_eq!(engine.commit(&one("e", 1)).unwrap(), loaded.head + 1);
        }
        std::fs::remove_dir_all(&dir).unwrap();
        std::fs::remove_dir_all(&two).unwrap();
    }

    /// Only the newest segment may end in a torn record; damage anywhere
    /// else is corruption, reported rather than skipped.
    #[test]
    fn damage_before_the_newest_segment_is_refused() {
        let dir = temp_dir();
        let before = temp_dir();
        three_then_checkpoint(&dir, &before);
        copy_dir(&before, &dir.join(LOG_DIR));
        let old = before.join(format!("{:020}.log", 1));
        let mut bytes = std::fs::read(&old).unwrap();
        // A byte inside the first record's payload.
        bytes[12] ^= 0xff;
        std::fs::write(dir.join(LOG_DIR).join(old.file_name().unwrap()), bytes).unwrap();
        let engine = LogEngine::open(&dir).unwrap();
        match engine.load(1) {
            Err(StoreError::Corrupt(why)) => assert!(why.contains("is damaged"), "{why}"),
            Err(e) => panic!("expected corruption, got {e}"),
            Ok(_) => panic!("a damaged older segment was accepted"),
        }
        drop(engine);
        std::fs::remove_dir_all(&dir).unwrap();
        std::fs::remove_dir_all(&before).unwrap();
    }
}
