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
//!
//! ## Damage
//!
//! Opening checks every byte it reads (see `journal.rs` and `redb.rs`): a
//! B-tree that fails its integrity check, log records that do not read
//! back as written, a log that does not go on exactly where the B-tree
//! stops. Each place is logged at ERROR with its file and offset. If no
//! record the B-tree lacks was lost, the node goes on (in a new log
//! segment). Otherwise it *salvages* ([`OnDamage::Salvage`], the default,
//! since under the deployment contract nobody passes flags after a crash):
//! - every record that reads back whole is kept, before the damage and
//!   after it; a B-tree that does not open is set aside under `damaged/`
//!   and replaced by what the log holds; damaged log segments are copied
//!   there too, as evidence;
//! - the node counts on under a **new incarnation**, in one B-tree
//!   transaction with everything kept: its new component starts at zero,
//!   which no peer has seen, so it never counts again below what its peers
//!   may hold of the component it had (SPEC G7); that old component keeps
//!   whatever value survived here and whatever peers hold, never raised by
//!   this node again;
//! - it forgets how far it had merged each peer, so it pulls everything
//!   again and gets back whatever the lost records had merged;
//! - the event is stored in the folder (shown by `/status`).
//!
//! What a salvage cannot give back: increments this node acknowledged in
//! the lost records that no peer received (with `--min-replicas 1` there
//! are none), and the idempotency keys of those records.
//! [`OnDamage::Refuse`] instead stops the node with the damage named and
//! nothing changed, for an operator who wants to look first
//! (`tally check`).
//!
//! The engine runs on the [`Disk`] seam: the real folder, or a simulated
//! disk that loses, tears and flips what it holds.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

use tracing::{error, warn};

use super::disk::{Disk, OsDisk, set_aside};
use super::journal::{self, Journal, Replayed};
use super::redb::{Checkpoint, DB_FILE, RedbEngine};
use super::{Batch, Changes, Engine, Image, Loaded, Salvage, ScrubAt, Scrubbed, StoreError};

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

/// What a node does when opening finds records it cannot read back.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OnDamage {
    /// Keep what reads back and count on under a new incarnation.
    #[default]
    Salvage,
    /// Stop with the damage named, changing nothing.
    Refuse,
}

/// Bugs a simulation plants to show its checker catches them; all off in
/// every node.
#[doc(hidden)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Planted {
    pub log: journal::Planted,
    /// A fold deletes the log segments it covers before the B-tree commits.
    pub delete_before_fold: bool,
}

/// How the engine runs.
#[derive(Clone, Copy, Debug)]
pub struct LogOptions {
    pub limits: LogLimits,
    pub on_damage: OnDamage,
    /// How far a log segment grows with zeros at a time.
    pub step: u64,
    #[doc(hidden)]
    pub planted: Planted,
}

impl Default for LogOptions {
    fn default() -> Self {
        LogOptions {
            limits: LogLimits::default(),
            on_damage: OnDamage::default(),
            step: journal::STEP,
            planted: Planted::default(),
        }
    }
}

/// What the log holds beyond the B-tree.
#[derive(Default)]
struct Overlay {
    /// The last sequence number given out.
    head: u64,
    /// The head the B-tree holds: every change after it is here.
    base: u64,
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
            salvage: None,
        }
    }

    /// Adds what the log holds to what the B-tree held.
    fn onto(&self, loaded: &mut Loaded) {
        for (name, (_, counter)) in &self.counters {
            loaded.counters.insert(name.clone(), counter.clone());
        }
        if let Some(m) = &self.membership {
            loaded.membership = m.clone();
        }
        if let Some(me) = &self.me {
            loaded.me = Some(me.clone());
        }
        if !self.keys.is_empty() {
            let mut keys: BTreeMap<_, _> = std::mem::take(&mut loaded.keys).into_iter().collect();
            for (k, r) in &self.keys {
                match r {
                    Some(r) => keys.insert(k.clone(), r.clone()),
                    None => keys.remove(k),
                };
            }
            loaded.keys = keys.into_iter().collect();
        }
        loaded.head = self.head;
    }
}

pub struct LogEngine {
    disk: Arc<dyn Disk>,
    tree: RedbEngine,
    /// Only the writer appends; `None` until the first `load`.
    journal: Mutex<Option<Journal>>,
    /// Readers hold it for a whole read, and a checkpoint holds it for
    /// writing while the B-tree commits, so a read sees the B-tree and the
    /// overlay from the same moment.
    overlay: RwLock<Overlay>,
    options: LogOptions,
    /// Why the B-tree was set aside when the engine opened (taken by the
    /// first load, which salvages).
    tree_damage: Mutex<Option<String>>,
    /// The last record the B-tree is known to hold.
    folded: AtomicU64,
}

impl LogEngine {
    /// Opens (creating if needed) the data folder `dir`, refusing one that
    /// another process holds.
    pub fn open(dir: &Path) -> Result<LogEngine, StoreError> {
        Self::with_options(dir, LogOptions::default())
    }

    pub fn with_limits(dir: &Path, limits: LogLimits) -> Result<LogEngine, StoreError> {
        Self::with_options(
            dir,
            LogOptions {
                limits,
                ..LogOptions::default()
            },
        )
    }

    pub fn with_options(dir: &Path, options: LogOptions) -> Result<LogEngine, StoreError> {
        Self::on(Arc::new(OsDisk::lock(dir)?), options)
    }

    /// Opens the engine over any disk (the real folder or a simulated one).
    pub fn on(disk: Arc<dyn Disk>, options: LogOptions) -> Result<LogEngine, StoreError> {
        let (tree, tree_damage) = match RedbEngine::on(disk.clone()) {
            Ok(tree) => (tree, None),
            Err(StoreError::Corrupt(why)) => {
                error!(file = %disk.display(DB_FILE).display(), damage = %why, "storage damage: the B-tree cannot be read");
                if options.on_damage == OnDamage::Refuse {
                    return Err(refused(&*disk, std::slice::from_ref(&why)));
                }
                let kept = set_aside(&*disk, DB_FILE, true)?;
                warn!(file = %disk.display(&kept).display(), "the damaged B-tree was set aside; the node goes on from its log and its peers");
                (RedbEngine::on(disk.clone())?, Some(why))
            }
            Err(e) => return Err(e),
        };
        Ok(LogEngine {
            disk,
            tree,
            journal: Mutex::new(None),
            overlay: RwLock::new(Overlay::default()),
            options,
            tree_damage: Mutex::new(tree_damage),
            folded: AtomicU64::new(0),
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

    /// Reopens the B-tree, which verifies it; one that comes back older
    /// than the log it covered (redb fell back to an earlier commit after
    /// finding the newest one damaged) is damage too.
    fn verify_tree(&self) -> Result<(), StoreError> {
        self.tree.verify()?;
        let folded = self.folded.load(Ordering::Acquire);
        let found = self.tree.log_lsn()?;
        if found < folded {
            return Err(StoreError::Corrupt(format!(
                "{}: the B-tree came back holding the log up to record {found}, but it had \
                 folded it in up to record {folded}",
                self.disk.display(DB_FILE).display()
            )));
        }
        Ok(())
    }

    fn open_journal(&self, tail: Option<(String, u64)>, next: u64) -> Result<Journal, StoreError> {
        let mut journal = Journal::open(self.disk.clone(), tail, next, self.options.step)?;
        journal.planted = self.options.planted.log;
        Ok(journal)
    }

    /// Folds the overlay into the B-tree and deletes the log it covered.
    fn checkpoint(&self, journal: &mut Journal) -> Result<(), StoreError> {
        // Records from now on go to a new segment, which the checkpoint
        // does not cover and which therefore survives it.
        journal.rotate()?;
        if self.options.planted.delete_before_fold {
            journal.drop_older()?;
        }
        let mut overlay = self.write();
        let bytes = overlay.bytes;
        let checkpoint = overlay.take();
        if let Err(e) = self.tree.checkpoint(&checkpoint) {
            // Nothing was folded in: the overlay keeps it all.
            restore(&mut overlay, checkpoint, bytes);
            return Err(e);
        }
        overlay.base = checkpoint.head;
        self.folded.store(checkpoint.lsn, Ordering::Release);
        drop(overlay);
        journal.drop_older()
    }

    /// Evidence: the damaged log segments, copied to `damaged/`.
    fn set_aside_damaged(&self, replayed: &Replayed) -> Result<(), StoreError> {
        for path in &replayed.read {
            if replayed
                .damage
                .iter()
                .any(|d| d.file == self.disk.display(path))
            {
                set_aside(&*self.disk, path, false)?;
            }
        }
        Ok(())
    }

    /// The first record of a log that goes on past every segment there is.
    fn past_every_segment(&self, replayed: &Replayed) -> Result<u64, StoreError> {
        Ok(self
            .disk
            .list(journal::DIR)
            .map_err(|e| StoreError::engine(e).in_file(&self.disk.display(journal::DIR)))?
            .iter()
            .filter_map(|n| n.split('.').next()?.parse::<u64>().ok())
            .map(|first| first + 1)
            .fold(replayed.next, u64::max))
    }

    /// Keeps what reads back and goes on under a new incarnation (see the
    /// module doc). `overlay` holds every record that read back.
    fn salvage(
        &self,
        loaded: &mut Loaded,
        replayed: &Replayed,
        overlay: &mut Overlay,
        tree_damage: Option<String>,
    ) -> Result<Journal, StoreError> {
        let lost = describe_lost(tree_damage.is_some(), &replayed.lost);
        let mut damage: Vec<String> = tree_damage.into_iter().collect();
        damage.extend(replayed.damage.iter().map(|d| d.to_string()));
        self.set_aside_damaged(replayed)?;
        let next = self.past_every_segment(replayed)?;
        let journal = self.open_journal(None, next)?;
        let mut to = fastrand::u64(1..);
        while to == loaded.incarnation {
            to = fastrand::u64(1..);
        }
        let event = Salvage {
            at_ms: now_ms(),
            damage,
            lost,
            from_incarnation: loaded.incarnation,
            to_incarnation: to,
            now: true,
        };
        overlay.onto(loaded);
        overlay.lsn = next - 1;
        let mut checkpoint = overlay.take();
        checkpoint.salvage = Some(event.clone());
        self.tree.checkpoint(&checkpoint)?;
        self.folded.store(checkpoint.lsn, Ordering::Release);
        overlay.head = checkpoint.head;
        overlay.base = checkpoint.head;
        journal.drop_older()?;
        error!(
            from_incarnation = format_args!("{:016x}", event.from_incarnation),
            to_incarnation = format_args!("{:016x}", event.to_incarnation),
            lost = %event.lost,
            "storage salvaged: every record that read back is kept; this node counts on under a \
             new incarnation and pulls from its peers what they hold"
        );
        loaded.incarnation = to;
        loaded.salvage.get_or_insert_with(Vec::new).push(event);
        Ok(journal)
    }
}

/// What a salvage could not read back, in words.
fn describe_lost(tree: bool, lost: &[(u64, Option<u64>)]) -> String {
    let mut parts = Vec::new();
    if tree {
        parts.push("the B-tree (what was folded into it; peers hold their copies)".to_string());
    }
    for (from, to) in lost {
        parts.push(match to {
            Some(to) if to == from => format!("log record {from}"),
            Some(to) => format!("log records {from} to {to}"),
            None => format!("log records from {from} to where the damage ends"),
        });
    }
    if parts.is_empty() {
        "nothing".into()
    } else {
        parts.join(", ")
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The error of a node set to refuse damaged storage.
fn refused(disk: &dyn Disk, damage: &[String]) -> StoreError {
    let folder = disk.display("");
    StoreError::Damaged(format!(
        "storage damage in {}: {}. The damaged files were left as they are. See `tally check {}`; to keep every \
         record that reads back and count on under a new incarnation (peers send back what \
         they hold), start the node with --on-damage salvage",
        folder.display(),
        damage.join("; "),
        folder.display()
    ))
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
        self.folded.store(after, Ordering::Release);
        let expected = self.tree.log_expected()?;
        let mut overlay = Overlay {
            head: loaded.head,
            base: loaded.head,
            lsn: after,
            ..Overlay::default()
        };
        let replayed = journal::replay(&*self.disk, after, expected, &mut |lsn, batch| {
            overlay.apply(lsn, batch, 0);
        })?;
        overlay.bytes = replayed.bytes;
        for d in &replayed.damage {
            error!(
                file = %d.file.display(),
                offset = d.offset,
                record = d.lsn,
                damage = %d.what,
                "storage damage: the log does not read back as written"
            );
        }
        let tree_damage = self
            .tree_damage
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        let lost = tree_damage.is_some() || replayed.lost_records();
        if lost && self.journal().is_some() {
            // Found while the node runs (reloading after an I/O error): the
            // store's memory holds every counter, and rebuilds from it.
            let what: Vec<String> = (tree_damage.iter().cloned())
                .chain(replayed.damage.iter().map(|d| d.to_string()))
                .collect();
            return Err(StoreError::Corrupt(what.join("; ")));
        }
        if lost && self.options.on_damage == OnDamage::Refuse {
            let what: Vec<String> = replayed.damage.iter().map(|d| d.to_string()).collect();
            return Err(refused(&*self.disk, &what));
        }
        let journal = if lost {
            self.salvage(&mut loaded, &replayed, &mut overlay, tree_damage)?
        } else {
            let journal = if replayed.damage.is_empty() {
                self.open_journal(replayed.tail.clone(), replayed.next)?
            } else {
                // Nothing lost: the damaged segments are copied aside, and
                // what they hold is folded into the B-tree right away (below)
                // so that they are deleted, not read as damage at every start.
                warn!(
                    "the log was damaged where no record was lost; what it holds is folded in now \
                     and it goes on in a new segment"
                );
                loaded.damage = replayed.damage.iter().map(|d| d.to_string()).collect();
                self.set_aside_damaged(&replayed)?;
                let next = self.past_every_segment(&replayed)?;
                overlay.lsn = next - 1;
                self.open_journal(None, next)?
            };
            Journal::remove(&*self.disk, &replayed.covered)?;
            if !expected {
                self.tree.expect_log()?;
            }
            overlay.onto(&mut loaded);
            journal
        };
        *self.write() = overlay;
        let mut slot = self.journal();
        *slot = Some(journal);
        if replayed.legacy || !loaded.damage.is_empty() {
            // Folds in the records of the old format, or of damaged
            // segments, and deletes them.
            self.checkpoint(slot.as_mut().expect("just opened"))?;
        }
        Ok(loaded)
    }

    fn commit(&self, batch: &Batch) -> Result<u64, StoreError> {
        let mut slot = self.journal();
        let journal = slot
            .as_mut()
            .ok_or_else(|| StoreError::engine("the log is not open (load it first)"))?;
        let due = {
            let o = self.read();
            o.counters.len() >= self.options.limits.names || o.bytes >= self.options.limits.bytes
        };
        if due {
            self.checkpoint(journal)?;
        }
        let (lsn, bytes) = journal.append(batch)?;
        let mut overlay = self.write();
        overlay.apply(lsn, clone_batch(batch), bytes);
        Ok(overlay.head)
    }

    /// A peer that has pulled up to the B-tree's head or past it gets the
    /// rest from the overlay alone, without reading the B-tree: the usual
    /// case, and the one that still answers while the B-tree cannot be
    /// read (storage failing and being reopened), so that what this node
    /// holds keeps reaching its peers then too.
    fn changes_since(&self, since: u64, limit: usize) -> Result<Changes, StoreError> {
        let overlay = self.read();
        let newer = |name: &str| overlay.counters.contains_key(name);
        let mut out = if since >= overlay.base {
            Changes {
                next: since,
                ..Changes::default()
            }
        } else {
            self.tree.changes_except(since, limit, &newer)?
        };
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
        self.verify_tree()?;
        if let Some(journal) = self.journal().as_mut() {
            journal.reset()?;
        }
        Ok(())
    }

    /// Writes a new B-tree holding `image` (the old one set aside) and
    /// starts a new log segment: every record is then in the B-tree.
    fn rebuild(&self, image: &Image) -> Result<u64, StoreError> {
        let mut slot = self.journal();
        let journal = slot
            .as_mut()
            .ok_or_else(|| StoreError::engine("the log is not open (load it first)"))?;
        // The new segment first: a crash before the B-tree commits leaves
        // the old B-tree and a log that goes on into it.
        journal.rotate()?;
        let mut overlay = self.write();
        let lsn = journal.next_lsn() - 1;
        let head = self.tree.rebuild(image, lsn)?;
        *overlay = Overlay {
            head,
            base: head,
            lsn,
            ..Overlay::default()
        };
        self.folded.store(lsn, Ordering::Release);
        drop(overlay);
        journal.drop_older()?;
        warn!(head, "the B-tree was rebuilt from memory; nothing was lost");
        Ok(head)
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

    /// Log segments first, then the B-tree. A damaged segment is repaired
    /// by folding at once: every record after the B-tree's position is in
    /// the overlay, so the fold writes it all and deletes the damaged file.
    /// The B-tree is closed and opened again, which verifies every page of
    /// it (pulls and folds wait meanwhile; increments and reads do not); if
    /// it fails, the store rebuilds it from memory.
    fn scrub(&self, at: ScrubAt) -> Result<Scrubbed, StoreError> {
        match at {
            ScrubAt::Start => Ok(Scrubbed {
                next: ScrubAt::Log(0),
                ..Scrubbed::default()
            }),
            ScrubAt::Log(from) => {
                let Some(seg) = journal::segments(&*self.disk)?
                    .into_iter()
                    .find(|s| s.first >= from)
                else {
                    return Ok(Scrubbed {
                        next: ScrubAt::Tree(None),
                        ..Scrubbed::default()
                    });
                };
                let active = self.journal().as_ref().map(Journal::position);
                let limit = active.filter(|(p, _)| *p == seg.path).map(|(_, len)| len);
                let (bytes, damage) = journal::check_segment(&*self.disk, &seg, limit)?;
                if !damage.is_empty() {
                    let mut slot = self.journal();
                    if let Some(journal) = slot.as_mut() {
                        self.checkpoint(journal)?;
                    }
                }
                Ok(Scrubbed {
                    next: ScrubAt::Log(seg.first + 1),
                    bytes,
                    damage: damage.iter().map(ToString::to_string).collect(),
                    rebuild: false,
                })
            }
            ScrubAt::Tree(_) => {
                let bytes = self
                    .disk
                    .open(DB_FILE, false)
                    .and_then(|f| f.len())
                    .unwrap_or(0);
                let damage = match self.verify_tree() {
                    Ok(()) => Vec::new(),
                    Err(StoreError::Corrupt(why)) => vec![why],
                    Err(e) => return Err(e),
                };
                Ok(Scrubbed {
                    next: ScrubAt::Done,
                    bytes,
                    rebuild: !damage.is_empty(),
                    damage,
                })
            }
            ScrubAt::Done => Ok(Scrubbed {
                next: ScrubAt::Done,
                ..Scrubbed::default()
            }),
        }
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
    use crate::storage::redb::WAL_FORMAT;
    use crate::storage::simdisk::{SimDisk, SimFault};

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

    fn log_dir(dir: &Path) -> PathBuf {
        dir.join(journal::DIR)
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
        copy_dir(&log_dir(dir), before);
        assert_eq!(engine.commit(&one("d", 1)).unwrap(), 4);
        assert_eq!(engine.tree.log_lsn().unwrap(), 3, "the checkpoint ran");
    }

    /// A data folder a newer tally wrote (a log block of a newer format) is
    /// refused even though the node salvages damage by default: salvaging
    /// would drop what the newer version wrote. Nothing in it changes.
    #[test]
    fn a_folder_of_a_newer_format_is_refused_not_salvaged() {
        let dir = temp_dir();
        let engine = LogEngine::open(&dir).unwrap();
        engine.load(1).unwrap();
        for name in ["a", "b", "c"] {
            engine.commit(&one(name, 1)).unwrap();
        }
        drop(engine);
        let segment = std::fs::read_dir(log_dir(&dir))
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.extension().is_some_and(|x| x == "wal"))
            .expect("a log segment");
        let mut data = std::fs::read(&segment).unwrap();
        journal::reframe(&mut data, 1, 3);
        std::fs::write(&segment, &data).unwrap();
        let before = files(&dir);
        let err = LogEngine::open(&dir)
            .and_then(|e| e.load(1))
            .err()
            .expect("refused");
        assert!(matches!(err, StoreError::NewerFormat { .. }), "{err}");
        assert!(err.to_string().contains("log format 3"), "{err}");
        assert_eq!(files(&dir), before, "no file added or set aside");
        assert!(
            std::fs::read(&segment).unwrap() == data,
            "the log is untouched"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// The same when the B-tree records a log of a newer format: this
    /// binary would not replay that log, so it must not start on it either.
    /// Nothing in the folder changes, and the newer version finds it whole.
    #[test]
    fn a_folder_whose_tree_records_a_newer_log_is_refused() {
        let dir = temp_dir();
        let engine = LogEngine::open(&dir).unwrap();
        engine.load(1).unwrap();
        for name in ["a", "b", "c"] {
            engine.commit(&one(name, 1)).unwrap();
        }
        engine.tree.set_log_format(WAL_FORMAT_NEWER).unwrap();
        drop(engine);
        let before = files(&dir);
        let err = LogEngine::open(&dir)
            .and_then(|e| e.load(1))
            .err()
            .expect("refused");
        assert!(
            matches!(
                err,
                StoreError::NewerFormat {
                    found: WAL_FORMAT_NEWER,
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("newer tally"), "{err}");
        assert_eq!(files(&dir), before, "no file added or set aside");
        // `tally check` says the same of it.
        let Err(checked) = crate::storage::check::check(&dir) else {
            panic!("tally check took a newer folder");
        };
        assert!(
            matches!(&checked, StoreError::NewerFormat { file, .. } if file.starts_with(&dir)),
            "{checked}"
        );
        // Nothing was lost: as the newer format's reader, the counts are there.
        let engine = LogEngine::open(&dir).unwrap();
        engine.tree.set_log_format(WAL_FORMAT).unwrap();
        let loaded = engine.load(1).unwrap();
        assert_eq!(loaded.counters.len(), 3, "{:?}", loaded.counters);
        drop(engine);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// The `wal` format after this binary's.
    const WAL_FORMAT_NEWER: u64 = WAL_FORMAT + 1;

    /// The paths of every file below `dir`, sorted.
    fn files(dir: &Path) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                out.extend(files(&path));
            } else {
                out.push(path);
            }
        }
        out.sort();
        out
    }

    /// A crash after a checkpoint committed but before it deleted the log
    /// it covered: the old records are in the B-tree already and must not
    /// be given new sequence numbers again.
    #[test]
    fn records_folded_in_are_not_replayed() {
        let dir = temp_dir();
        let before = temp_dir();
        three_then_checkpoint(&dir, &before);
        copy_dir(&before, &log_dir(&dir));
        let engine = LogEngine::open(&dir).unwrap();
        let loaded = engine.load(1).unwrap();
        assert!(loaded.salvage.is_none());
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

    /// A log older than the B-tree (files lost, or restored from an older
    /// copy): records it no longer holds may have been acknowledged, so it
    /// is damage, salvaged under a new incarnation with everything the
    /// B-tree and the log still hold, and a second open finds it whole.
    #[test]
    fn a_log_behind_the_b_tree_is_damage_and_is_salvaged() {
        let dir = temp_dir();
        let two = temp_dir();
        let limits = LogLimits {
            names: 3,
            bytes: u64::MAX,
        };
        let engine = LogEngine::with_limits(&dir, limits).unwrap();
        let first = engine.load(1).unwrap().incarnation;
        engine.commit(&one("a", 1)).unwrap();
        engine.commit(&one("b", 1)).unwrap();
        copy_dir(&log_dir(&dir), &two);
        engine.commit(&one("c", 1)).unwrap();
        engine.commit(&one("d", 1)).unwrap();
        assert_eq!(
            engine.tree.log_lsn().unwrap(),
            3,
            "a, b and c are folded in"
        );
        drop(engine);
        // The log holds records 1 and 2 only; the B-tree is at 3, and
        // record 4 (d) is gone with the newer segment.
        std::fs::remove_dir_all(log_dir(&dir)).unwrap();
        copy_dir(&two, &log_dir(&dir));
        let engine = LogEngine::open(&dir).unwrap();
        let loaded = engine.load(1).unwrap();
        let event = loaded.salvage.as_ref().unwrap().last().unwrap().clone();
        assert!(event.now);
        assert_eq!(event.from_incarnation, first);
        assert_ne!(loaded.incarnation, first);
        assert!(event.lost.contains("log records from 4"), "{}", event.lost);
        for name in ["a", "b", "c"] {
            assert!(loaded.counters.contains_key(name), "{name}");
        }
        assert_eq!(engine.commit(&one("e", 1)).unwrap(), loaded.head + 1);
        drop(engine);
        let engine = LogEngine::open(&dir).unwrap();
        let again = engine.load(1).unwrap();
        assert_eq!(again.incarnation, loaded.incarnation, "salvaged once");
        assert!(!again.salvage.unwrap().last().unwrap().now);
        assert!(again.counters.contains_key("e"));
        drop(engine);
        std::fs::remove_dir_all(&dir).unwrap();
        std::fs::remove_dir_all(&two).unwrap();
    }

    /// A small node's data on a simulated disk: `n` names, one commit
    /// each, folded every `fold` names.
    fn node_with(n: usize, fold: usize) -> (SimDisk, Loaded) {
        let disk = SimDisk::new("n1", 5);
        let engine = LogEngine::on(Arc::new(disk.clone()), small(fold)).unwrap();
        engine.load(1).unwrap();
        for i in 0..n {
            engine
                .commit(&one(&format!("name-{i:02}"), i as u64 + 1))
                .unwrap();
        }
        drop(engine);
        let loaded = LogEngine::on(Arc::new(disk.clone()), small(fold))
            .unwrap()
            .load(1)
            .unwrap();
        assert!(loaded.salvage.is_none());
        (disk, loaded)
    }

    fn small(fold: usize) -> LogOptions {
        LogOptions {
            limits: LogLimits {
                names: fold,
                bytes: u64::MAX,
            },
            step: 4 * journal::BLOCK as u64,
            ..LogOptions::default()
        }
    }

    fn segment(disk: &SimDisk) -> String {
        disk.paths()
            .into_iter()
            .filter(|p| p.starts_with("log/"))
            .max()
            .unwrap()
    }

    /// The measurement this format answers: 30 names, one byte flipped in
    /// the payload of the 10th record from the end. It used to start
    /// silently with 20 names; now the damage is reported, the 29 records
    /// that read back are kept, and the node counts on as a new incarnation.
    #[test]
    fn a_flipped_byte_in_the_log_is_salvaged_not_cut() {
        let (disk, before) = node_with(30, 1000);
        let path = segment(&disk);
        disk.flip(&path, ((20 * journal::BLOCK + 40) * 8) as u64);
        let engine = LogEngine::on(Arc::new(disk.clone()), small(1000)).unwrap();
        let loaded = engine.load(1).unwrap();
        let event = loaded.salvage.as_ref().unwrap().last().unwrap().clone();
        assert_eq!(event.lost, "log record 21");
        assert!(
            event.damage[0].contains("at byte 10240"),
            "{:?}",
            event.damage
        );
        assert_ne!(loaded.incarnation, before.incarnation);
        assert_eq!(loaded.counters.len(), 29);
        assert!(!loaded.counters.contains_key("name-20"));
        for (name, c) in &loaded.counters {
            assert_eq!(Some(c), before.counters.get(name), "{name}");
        }
        assert!(
            disk.paths().iter().any(|p| p.starts_with("damaged/")),
            "the damaged segment is kept as evidence"
        );
        drop(engine);
        let again = LogEngine::on(Arc::new(disk), small(1000))
            .unwrap()
            .load(1)
            .unwrap();
        assert_eq!(again.incarnation, loaded.incarnation);
        assert_eq!(again.counters, loaded.counters);
    }

    #[test]
    fn a_node_set_to_refuse_changes_nothing() {
        let (disk, clean) = node_with(5, 1000);
        let incarnation = clean.incarnation;
        let path = segment(&disk);
        disk.flip(&path, ((4 * journal::BLOCK + 40) * 8) as u64);
        let files = |d: &SimDisk| {
            d.paths()
                .into_iter()
                .filter(|p| p.starts_with("log/") || p.starts_with("damaged/"))
                .map(|p| (p.clone(), d.contents(&p)))
                .collect::<Vec<_>>()
        };
        let before = files(&disk);
        let options = LogOptions {
            on_damage: OnDamage::Refuse,
            ..small(1000)
        };
        let engine = LogEngine::on(Arc::new(disk.clone()), options).unwrap();
        match engine.load(1) {
            Err(StoreError::Damaged(why)) => {
                assert!(why.contains("at byte 2048"), "{why}");
                assert!(why.contains("--on-damage salvage"), "{why}");
            }
            Err(e) => panic!("expected damage, got {e}"),
            Ok(_) => panic!("a damaged log was accepted"),
        }
        drop(engine);
        assert_eq!(files(&disk), before, "the log is left as it was");
        // Salvaging later still finds the damage and the same incarnation.
        let loaded = LogEngine::on(Arc::new(disk), small(1000))
            .unwrap()
            .load(1)
            .unwrap();
        assert_eq!(loaded.salvage.unwrap()[0].from_incarnation, incarnation);
    }

    /// A B-tree that fails its integrity check is set aside; what the log
    /// holds is kept and the node counts on as a new incarnation.
    #[test]
    fn a_damaged_b_tree_is_set_aside_and_salvaged() {
        let (disk, before) = node_with(6, 4);
        // Every page of the file after the header, flipped: the trees cannot verify.
        let len = disk.contents(DB_FILE).unwrap().len() as u64;
        for page in 1..len / 4096 {
            disk.flip(DB_FILE, page * 4096 * 8 + 100 * 8);
        }
        let engine = LogEngine::on(Arc::new(disk.clone()), small(4)).unwrap();
        let loaded = engine.load(1).unwrap();
        let event = loaded.salvage.as_ref().unwrap().last().unwrap().clone();
        assert!(event.lost.contains("B-tree"), "{}", event.lost);
        assert_ne!(loaded.incarnation, before.incarnation);
        // name-04 and name-05 were in the log after the fold of the first four.
        for name in ["name-04", "name-05"] {
            assert_eq!(loaded.counters.get(name), before.counters.get(name));
        }
        assert!(disk.paths().iter().any(|p| p.ends_with("-tally.redb")));
    }

    /// Every bit of a small node's log, flipped in turn (exhaustively, on a
    /// simulated disk): the damage is reported, or what the node loads is
    /// exactly what it loaded before.
    #[test]
    fn every_flipped_bit_of_a_small_log_is_reported_or_harmless() {
        let (disk, clean) = node_with(3, 1000);
        let path = segment(&disk);
        let bits = disk.contents(&path).unwrap().len() as u64 * 8;
        let (mut reported, mut harmless) = (0, 0);
        for bit in 0..bits {
            let copy = disk.fork("copy");
            copy.flip(&path, bit);
            let loaded = LogEngine::on(Arc::new(copy), small(1000))
                .unwrap()
                .load(1)
                .unwrap();
            if loaded.salvage.is_some() {
                reported += 1;
                assert_ne!(loaded.incarnation, clean.incarnation);
            } else {
                assert_eq!(loaded.counters, clean.counters, "bit {bit}");
                assert_eq!(loaded.incarnation, clean.incarnation, "bit {bit}");
                harmless += 1;
            }
        }
        assert_eq!(reported + harmless, bits);
        assert!(reported > 0);
    }

    /// Bits of a small node's B-tree, sampled: the damage is reported, or
    /// the node loads exactly what it did before.
    #[test]
    fn sampled_flipped_bits_of_the_b_tree_are_reported_or_harmless() {
        let (disk, clean) = node_with(6, 4);
        let bits = disk.contents(DB_FILE).unwrap().len() as u64 * 8;
        let mut rng = fastrand::Rng::with_seed(11);
        let (mut reported, mut harmless) = (0, 0);
        for _ in 0..300 {
            let bit = rng.u64(..bits);
            let copy = disk.fork("copy");
            copy.flip(DB_FILE, bit);
            let loaded = LogEngine::on(Arc::new(copy), small(4))
                .unwrap()
                .load(1)
                .unwrap();
            if loaded.salvage.is_some() {
                reported += 1;
            } else {
                assert_eq!(loaded.counters, clean.counters, "bit {bit}");
                assert_eq!(loaded.incarnation, clean.incarnation, "bit {bit}");
                harmless += 1;
            }
        }
        assert!(
            reported > 0 && harmless > 0,
            "{reported} reported, {harmless} harmless"
        );
    }

    /// A bit flipped by one read of the B-tree when it opens (not on the
    /// disk) is not believed: the newest commit is read again rather than
    /// given up for the one before it.
    #[test]
    fn a_flip_in_one_read_of_the_b_tree_is_read_again_not_rolled_back() {
        let (disk, clean) = node_with(6, 4);
        let mut salvaged = 0;
        for _ in 0..40 {
            let copy = disk.fork("copy");
            copy.flip_next_reads(DB_FILE, 1);
            let loaded = LogEngine::on(Arc::new(copy), small(4))
                .unwrap()
                .load(1)
                .unwrap();
            salvaged += usize::from(loaded.salvage.is_some());
            assert_eq!(loaded.counters, clean.counters);
        }
        assert_eq!(salvaged, 0, "a transient flip was taken for damage");
    }

    /// Power cuts at random points of a run of commits and folds: every
    /// commit that returned is there after the restart, nothing else is
    /// invented, and a crash is never taken for damage.
    #[test]
    fn crashes_lose_nothing_committed_and_are_never_damage() {
        for seed in 0..40 {
            let disk = SimDisk::new("n1", seed);
            let mut rng = fastrand::Rng::with_seed(seed);
            let mut committed: BTreeMap<String, u64> = BTreeMap::new();
            let mut incarnation = None;
            for boot in 0..6 {
                let engine = LogEngine::on(Arc::new(disk.clone()), small(3)).unwrap();
                let loaded = engine.load(1).unwrap();
                assert!(
                    loaded.salvage.is_none(),
                    "seed {seed} boot {boot}: {:?}",
                    loaded.salvage
                );
                assert_eq!(
                    *incarnation.get_or_insert(loaded.incarnation),
                    loaded.incarnation
                );
                for (name, &count) in &committed {
                    let held = loaded.counters.get(name).map_or(0, GCounter::value);
                    assert!(
                        held >= u128::from(count),
                        "seed {seed} boot {boot}: {name} lost"
                    );
                }
                for _ in 0..rng.usize(1..12) {
                    let name = format!("n{}", rng.u8(..5));
                    let count = committed.get(&name).copied().unwrap_or(0) + 1;
                    // The next commit may or may not reach the disk; it only counts once it returns.
                    engine.commit(&one(&name, count)).unwrap();
                    committed.insert(name, count);
                }
                if rng.bool() {
                    let name = format!("n{}", rng.u8(..5));
                    let count = committed.get(&name).copied().unwrap_or(0) + 1;
                    disk.inject(SimFault::FailSync);
                    let _ = engine.commit(&one(&name, count));
                    disk.inject(SimFault::None);
                }
                drop(engine);
                disk.crash();
            }
        }
    }

    /// Not a check: how long opening a folder of a million names takes,
    /// the B-tree verified page by page. `cargo test --release --lib --
    /// --ignored open_of_a_million_names --nocapture` (BENCHMARKS.md).
    #[test]
    #[ignore]
    fn open_of_a_million_names() {
        let dir = temp_dir();
        let engine = LogEngine::open(&dir).unwrap();
        engine.load(1).unwrap();
        let id = ReplicaId {
            node: 1,
            incarnation: 7,
        };
        for chunk in 0..100 {
            let mut batch = Batch::default();
            for i in 0..10_000 {
                let mut c = GCounter::new();
                c.increment(id, 1).unwrap();
                batch.counters.insert(format!("name-{chunk:03}-{i:05}"), c);
            }
            engine.commit(&batch).unwrap();
        }
        drop(engine);
        let bytes = std::fs::metadata(dir.join(DB_FILE)).unwrap().len();
        for round in 0..3 {
            let started = std::time::Instant::now();
            let engine = LogEngine::open(&dir).unwrap();
            let opened = started.elapsed();
            let loaded = engine.load(1).unwrap();
            let total = started.elapsed();
            assert_eq!(loaded.counters.len(), 1_000_000);
            eprintln!(
                "round {round}: B-tree {bytes} bytes; opened and verified in {opened:?}, loaded in {total:?}"
            );
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
