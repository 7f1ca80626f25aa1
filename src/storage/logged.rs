//! The disk engine: a write-ahead log in front of the redb B-tree.
//!
//! A commit appends one record to the log and syncs it (one small
//! sequential write and one `fdatasync`), then updates an in-memory
//! *overlay* of what the log holds beyond the B-tree. Every so often (see
//! [`LogLimits`]) the overlay is folded into the B-tree in one transaction
//! — each name once, however many commits changed it — together with the
//! position in the log it reaches, and the log segments it covers are
//! deleted. The fold runs on a thread of its own while the writer appends
//! into a fresh overlay ([`LogOptions::background`]; see `overlay.rs` for
//! the layers and how a failed fold is put back). Opening replays the log
//! after that position. Reads (changes for a peer, peer marks) combine the
//! B-tree and the overlays.
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

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

use tracing::{error, warn};

use super::disk::{Disk, OsDisk, set_aside};
use super::journal::{self, Journal, Replayed};
use super::overlay::{Frozen, Layers, Overlay};
use super::redb::{DB_FILE, RedbEngine};
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
    /// Folds run on a thread of their own while the writer goes on into
    /// a fresh overlay (`false`: inside the commit that finds one due, as
    /// the simulation runs them, deterministically).
    pub background: bool,
    #[doc(hidden)]
    pub planted: Planted,
}

impl Default for LogOptions {
    fn default() -> Self {
        LogOptions {
            limits: LogLimits::default(),
            on_damage: OnDamage::default(),
            step: journal::STEP,
            background: true,
            planted: Planted::default(),
        }
    }
}

/// A fold running on a thread of its own, and the layer it writes.
struct Fold {
    thread: std::thread::JoinHandle<Result<(), StoreError>>,
    frozen: Arc<Frozen>,
}

pub struct LogEngine {
    disk: Arc<dyn Disk>,
    tree: Arc<RedbEngine>,
    /// Only the writer appends; `None` until the first `load`.
    journal: Mutex<Option<Journal>>,
    /// Readers hold it for a whole read. An inline fold holds it for
    /// writing while the B-tree commits; a fold in the background keeps
    /// its layer readable until it is reaped, so either way a read sees
    /// every name in the B-tree or in a layer above it.
    layers: RwLock<Layers>,
    /// The fold running in the background, if any; taken with `journal`
    /// held.
    pending: Mutex<Option<Fold>>,
    options: LogOptions,
    /// Why the B-tree was set aside when the engine opened (taken by the
    /// first load, which salvages).
    tree_damage: Mutex<Option<String>>,
    /// The last record the B-tree is known to hold.
    folded: AtomicU64,
    /// Holds background folds before they write, for tests.
    #[cfg(test)]
    gate: Option<Arc<tests::Gate>>,
}

impl Drop for LogEngine {
    /// A fold still running ends before the B-tree closes; the next open
    /// deletes the log it covered, or replays it if it failed.
    fn drop(&mut self) {
        self.abandon();
    }
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
            tree: Arc::new(tree),
            journal: Mutex::new(None),
            layers: RwLock::new(Layers::default()),
            pending: Mutex::new(None),
            options,
            tree_damage: Mutex::new(tree_damage),
            folded: AtomicU64::new(0),
            #[cfg(test)]
            gate: None,
        })
    }

    fn journal(&self) -> MutexGuard<'_, Option<Journal>> {
        self.journal.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn read(&self) -> RwLockReadGuard<'_, Layers> {
        self.layers.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Layers> {
        self.layers.write().unwrap_or_else(|p| p.into_inner())
    }

    fn pending(&self) -> MutexGuard<'_, Option<Fold>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
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

    /// Folds every layer into the B-tree now and deletes the log it
    /// covered; a fold running in the background ends first. Readers wait
    /// while the B-tree commits.
    fn checkpoint(&self, journal: &mut Journal) -> Result<(), StoreError> {
        self.settle(Some(journal))?;
        self.rotate(journal)?;
        let mut layers = self.write();
        let frozen = layers.live.take();
        if let Err(e) = self.tree.checkpoint(&frozen.checkpoint) {
            // Nothing was folded in: the overlay keeps it all.
            layers.live.unfreeze(frozen);
            return Err(e);
        }
        layers.live.base = frozen.checkpoint.head;
        self.folded.store(frozen.checkpoint.lsn, Ordering::Release);
        drop(layers);
        journal.drop_older()
    }

    /// Starts a fold of the live overlay: in the background (the writer
    /// waits only for the previous one, if it has not ended), or inline.
    fn fold_due(&self, journal: &mut Journal) -> Result<(), StoreError> {
        if !self.options.background {
            return self.checkpoint(journal);
        }
        self.settle(Some(journal))?;
        self.rotate(journal)?;
        // The live overlay becomes the frozen layer under one lock, so
        // that no reader sees it in neither.
        let mut layers = self.write();
        let frozen = Arc::new(layers.live.take());
        let tree = self.tree.clone();
        let folding = frozen.clone();
        #[cfg(test)]
        let gate = self.gate.clone();
        let spawned = std::thread::Builder::new()
            .name("tally-fold".into())
            .spawn(move || {
                #[cfg(test)]
                if let Some(gate) = gate {
                    gate.pass();
                }
                tree.checkpoint(&folding.checkpoint)
            });
        match spawned {
            Ok(thread) => {
                layers.frozen = Some(frozen.clone());
                *self.pending() = Some(Fold { thread, frozen });
                Ok(())
            }
            Err(e) => {
                let frozen = Arc::try_unwrap(frozen).unwrap_or_else(|f| (*f).clone());
                layers.live.unfreeze(frozen);
                drop(layers);
                warn!(error = %e, "no thread for a fold; folding inline");
                self.checkpoint(journal)
            }
        }
    }

    /// Starts a new log segment, which the next fold does not cover and
    /// which therefore survives it.
    fn rotate(&self, journal: &mut Journal) -> Result<(), StoreError> {
        journal.rotate()?;
        if self.options.planted.delete_before_fold {
            journal.drop_older()?;
        }
        Ok(())
    }

    /// Ends the background fold, if one runs: waits for it, then drops its
    /// layer and the log it covers, or puts the layer back if it failed.
    fn settle(&self, journal: Option<&Journal>) -> Result<(), StoreError> {
        let Some(fold) = self.pending().take() else {
            return Ok(());
        };
        let result = fold.thread.join().unwrap_or_else(|_| {
            Err(StoreError::engine(
                "the thread folding the log into the B-tree panicked",
            ))
        });
        let mut layers = self.write();
        layers.frozen = None;
        match result {
            Ok(()) => {
                layers.live.base = fold.frozen.checkpoint.head;
                self.folded
                    .store(fold.frozen.checkpoint.lsn, Ordering::Release);
                drop(layers);
                journal.map_or(Ok(()), Journal::drop_older)
            }
            Err(e) => {
                // Nobody else holds it now: readers borrow it under the lock.
                let frozen = Arc::try_unwrap(fold.frozen).unwrap_or_else(|f| (*f).clone());
                layers.live.unfreeze(frozen);
                Err(e)
            }
        }
    }

    /// Settles a background fold that has ended, without waiting.
    fn reap(&self, journal: &Journal) -> Result<(), StoreError> {
        let ended = (self.pending().as_ref()).is_some_and(|f| f.thread.is_finished());
        if ended {
            self.settle(Some(journal))
        } else {
            Ok(())
        }
    }

    /// Ends the background fold, if one runs, for a caller that goes on
    /// whatever it did (`load`, `rebuild`, dropping the engine): a failure
    /// is logged, and its layer goes back under the live one.
    fn abandon(&self) {
        if let Err(e) = self.settle(None) {
            warn!(error = %e, "a fold into the B-tree failed; the log still holds what it was folding");
        }
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
        let mut checkpoint = overlay.take().checkpoint;
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

impl Engine for LogEngine {
    fn load(&self, node: u64) -> Result<Loaded, StoreError> {
        self.abandon();
        let mut loaded = self.tree.load(node)?;
        let after = self.tree.log_lsn()?;
        self.folded.store(after, Ordering::Release);
        let expected = self.tree.log_expected()?;
        let mut overlay = Overlay::over(loaded.head, after);
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
        *self.write() = Layers {
            live: overlay,
            frozen: None,
        };
        let mut slot = self.journal();
        *slot = Some(journal);
        if replayed.legacy || !loaded.damage.is_empty() {
            // Folds in the records of the old format, or of damaged
            // segments, and deletes them.
            self.checkpoint(slot.as_mut().expect("just opened"))?;
        }
        Ok(loaded)
    }

    /// A fold that ended in the background is settled first: if it
    /// failed, this commit fails with its error (and appends nothing), so
    /// the store's usual recovery runs.
    fn commit(&self, batch: &Batch) -> Result<u64, StoreError> {
        let mut slot = self.journal();
        let journal = slot
            .as_mut()
            .ok_or_else(|| StoreError::engine("the log is not open (load it first)"))?;
        self.reap(journal)?;
        let due = {
            let live = &self.read().live;
            live.names() >= self.options.limits.names || live.bytes >= self.options.limits.bytes
        };
        if due {
            self.fold_due(journal)?;
        }
        let (lsn, bytes) = journal.append(batch)?;
        let mut layers = self.write();
        layers.live.apply(lsn, clone_batch(batch), bytes);
        Ok(layers.live.head)
    }

    /// A peer that has pulled up to the B-tree's head or past it gets the
    /// rest from the layers alone, without reading the B-tree: the usual
    /// case, and the one that still answers while the B-tree cannot be
    /// read (storage failing and being reopened), so that what this node
    /// holds keeps reaching its peers then too.
    fn changes_since(&self, since: u64, limit: usize) -> Result<Changes, StoreError> {
        let layers = self.read();
        let mut out = if since >= layers.live.base {
            Changes {
                next: since,
                ..Changes::default()
            }
        } else {
            self.tree
                .changes_except(since, limit, &|name| layers.holds(name))?
        };
        if !out.more {
            layers.extend(since, limit, &mut out);
        }
        out.head = layers.live.head.max(out.head);
        if !out.more {
            out.next = out.head;
        }
        Ok(out)
    }

    fn mark(&self, peer_incarnation: u64) -> Result<u64, StoreError> {
        let layers = self.read();
        let stored = self.tree.mark(peer_incarnation)?;
        Ok(layers
            .mark(peer_incarnation)
            .map_or(stored, |m| m.max(stored)))
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
        self.abandon();
        // The new segment first: a crash before the B-tree commits leaves
        // the old B-tree and a log that goes on into it.
        journal.rotate()?;
        let mut layers = self.write();
        let lsn = journal.next_lsn() - 1;
        let head = self.tree.rebuild(image, lsn)?;
        *layers = Layers {
            live: Overlay::over(head, lsn),
            frozen: None,
        };
        self.folded.store(lsn, Ordering::Release);
        drop(layers);
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
    use std::collections::BTreeMap;
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
        let options = LogOptions {
            limits,
            background: false,
            ..LogOptions::default()
        };
        let engine = LogEngine::with_options(dir, options).unwrap();
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
        let options = LogOptions {
            limits,
            background: false,
            ..LogOptions::default()
        };
        let engine = LogEngine::with_options(&dir, options).unwrap();
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
            background: false,
            ..LogOptions::default()
        }
    }

    /// Holds background folds before they write, until opened (at most
    /// 30 s, so that a failing test does not hang).
    #[derive(Default)]
    pub(super) struct Gate {
        open: Mutex<bool>,
        changed: std::sync::Condvar,
    }

    impl Gate {
        pub(super) fn pass(&self) {
            let open = self.open.lock().unwrap();
            let timeout = std::time::Duration::from_secs(30);
            drop(
                self.changed
                    .wait_timeout_while(open, timeout, |open| !*open),
            );
        }

        fn open(&self) {
            *self.open.lock().unwrap() = true;
            self.changed.notify_all();
        }
    }

    /// An engine that folds in the background once 3 names changed, its
    /// folds held at `gate`.
    fn gated(disk: &SimDisk) -> (LogEngine, Arc<Gate>) {
        let gate = Arc::new(Gate::default());
        let mut engine = LogEngine::on(
            Arc::new(disk.clone()),
            LogOptions {
                background: true,
                ..small(3)
            },
        )
        .unwrap();
        engine.gate = Some(gate.clone());
        engine.load(1).unwrap();
        (engine, gate)
    }

    fn names(changes: &Changes) -> Vec<(&str, u128)> {
        (changes.counters.iter())
            .map(|(n, c)| (n.as_str(), c.value()))
            .collect()
    }

    /// Waits (at most 30 s) until the background fold's thread has ended,
    /// without settling it.
    fn fold_ended(engine: &LogEngine) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while !(engine.pending().as_ref()).is_some_and(|f| f.thread.is_finished()) {
            assert!(std::time::Instant::now() < deadline, "the fold never ended");
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }

    /// While a fold runs in the background, a peer's pull reads three
    /// layers: the live overlay, the one being folded, the B-tree. Each
    /// name comes once, at its newest sequence, in order, across pages.
    #[test]
    fn a_fold_in_the_background_stays_readable_until_it_commits() {
        let disk = SimDisk::new("n1", 11);
        let (engine, gate) = gated(&disk);
        for name in ["a", "b"] {
            engine.commit(&one(name, 1)).unwrap();
        }
        let mut marked = one("c", 1);
        marked.marks.push(crate::storage::PeerMark {
            incarnation: 9,
            seq: 7,
        });
        engine.commit(&marked).unwrap();
        // Due: a, b and c are frozen and their fold waits at the gate.
        assert_eq!(engine.commit(&one("d", 1)).unwrap(), 4);
        assert_eq!(engine.commit(&one("a", 5)).unwrap(), 5);
        assert!(engine.pending().is_some(), "a fold runs");
        assert_eq!(engine.tree.log_lsn().unwrap(), 0, "nothing is folded yet");
        let expected = [("b", 1), ("c", 1), ("d", 1), ("a", 5)];
        let check = |engine: &LogEngine| {
            let all = engine.changes_since(0, 100).unwrap();
            assert_eq!(names(&all), expected);
            assert_eq!((all.next, all.head, all.more), (5, 5, false));
            let first = engine.changes_since(0, 2).unwrap();
            assert_eq!(names(&first), expected[..2]);
            assert_eq!((first.next, first.more), (3, true));
            let rest = engine.changes_since(first.next, 2).unwrap();
            assert_eq!(names(&rest), expected[2..]);
            assert_eq!((rest.next, rest.more), (5, false));
            assert_eq!(engine.mark(9).unwrap(), 7);
        };
        check(&engine);
        gate.open();
        engine.settle(engine.journal().as_ref()).unwrap();
        assert_eq!(engine.tree.log_lsn().unwrap(), 3, "a, b and c are folded");
        assert_eq!(
            disk.paths()
                .iter()
                .filter(|p| p.starts_with("log/"))
                .count(),
            1,
            "the segments the fold covered are deleted"
        );
        check(&engine);
        drop(engine);
        let loaded = LogEngine::on(Arc::new(disk.clone()), small(3))
            .unwrap()
            .load(1)
            .unwrap();
        assert_eq!(loaded.head, 5);
        let values: BTreeMap<_, _> = (loaded.counters.iter())
            .map(|(n, c)| (n.as_str(), c.value()))
            .collect();
        assert_eq!(values, [("a", 5), ("b", 1), ("c", 1), ("d", 1)].into());
    }

    /// A background fold that fails (the disk full) changes nothing: its
    /// layer goes back under the live one, the next commit fails with its
    /// error and appends nothing, and after the store's recovery (a
    /// reopen) every name is read and folded again.
    #[test]
    fn a_background_fold_that_fails_is_put_back_and_fails_the_next_commit() {
        let disk = SimDisk::new("n1", 12);
        let (engine, gate) = gated(&disk);
        for name in ["a", "b", "c", "d"] {
            engine.commit(&one(name, 2)).unwrap();
        }
        disk.inject(SimFault::Full);
        gate.open();
        fold_ended(&engine);
        disk.inject(SimFault::None);
        assert!(
            engine.commit(&one("e", 1)).is_err(),
            "the fold's failure is reported"
        );
        assert_eq!(engine.tree.log_lsn().unwrap(), 0);
        let held = engine.changes_since(0, 100).unwrap();
        assert_eq!(names(&held), [("a", 2), ("b", 2), ("c", 2), ("d", 2)]);
        engine.reopen().unwrap();
        engine.commit(&one("e", 1)).unwrap();
        engine.commit(&one("a", 3)).unwrap();
        let held = engine.changes_since(0, 100).unwrap();
        assert_eq!(
            names(&held),
            [("b", 2), ("c", 2), ("d", 2), ("e", 1), ("a", 3)]
        );
        engine.settle(engine.journal().as_ref()).unwrap();
        assert!(
            engine.tree.log_lsn().unwrap() >= 3,
            "folded on the next try"
        );
        drop(engine);
        disk.crash();
        let loaded = LogEngine::on(Arc::new(disk.clone()), small(3))
            .unwrap()
            .load(1)
            .unwrap();
        assert!(loaded.salvage.is_none());
        let values: BTreeMap<_, _> = (loaded.counters.iter())
            .map(|(n, c)| (n.as_str(), c.value()))
            .collect();
        assert_eq!(
            values,
            [("a", 3), ("b", 2), ("c", 2), ("d", 2), ("e", 1)].into()
        );
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
            // Half the seeds fold in the background, where a fold may
            // still run when a sync fails or the engine is dropped.
            let options = LogOptions {
                background: seed % 2 == 1,
                ..small(3)
            };
            for boot in 0..6 {
                let engine = LogEngine::on(Arc::new(disk.clone()), options).unwrap();
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
