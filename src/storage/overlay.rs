//! What the write-ahead log holds beyond the B-tree, in memory: the layers
//! [`LogEngine`](super::logged::LogEngine) reads between the log and redb.
//!
//! There are at most two: the *live* overlay the writer applies each commit
//! to, and under it the *frozen* overlay a fold is writing into the B-tree
//! on a thread of its own. A read looks at the live overlay first, then the
//! frozen one, then the B-tree; a name is read from the newest layer that
//! holds it, since each layer holds only later sequences than the ones
//! under it. When the fold commits, the frozen layer is dropped (the B-tree
//! holds it); when it fails, the frozen layer goes back under the live one,
//! and the log, whose segments are deleted only after a fold commits, still
//! holds every record of it.

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use super::redb::Checkpoint;
use super::{Batch, Changes, Loaded};
use crate::crdt::GCounter;

/// The live overlay: what the log holds beyond the B-tree and the frozen
/// overlay.
#[derive(Default)]
pub(super) struct Overlay {
    /// The last sequence number given out.
    pub head: u64,
    /// The head the B-tree holds: every change after it is in a layer.
    pub base: u64,
    counters: HashMap<String, (u64, GCounter)>,
    by_seq: BTreeMap<u64, String>,
    marks: HashMap<u64, u64>,
    membership: Option<crate::cluster::Membership>,
    me: Option<crate::cluster::Actor>,
    keys: BTreeMap<String, Option<super::idempotency::KeyRecord>>,
    /// The last record applied.
    pub lsn: u64,
    /// Log bytes since the last fold began.
    pub bytes: u64,
}

impl Overlay {
    /// An empty overlay over a B-tree whose head is `head` and which
    /// holds the log up to record `lsn`.
    pub fn over(head: u64, lsn: u64) -> Overlay {
        Overlay {
            head,
            base: head,
            lsn,
            ..Overlay::default()
        }
    }

    /// Applies one batch; sequences continue from `head` in the batch's order.
    pub fn apply(&mut self, lsn: u64, batch: Batch, bytes: u64) {
        for (name, counter) in batch.counters {
            self.head += 1;
            match self.counters.entry(name) {
                Entry::Occupied(mut held) => {
                    self.by_seq.remove(&held.get().0);
                    self.by_seq.insert(self.head, held.key().clone());
                    *held.get_mut() = (self.head, counter);
                }
                Entry::Vacant(slot) => {
                    self.by_seq.insert(self.head, slot.key().clone());
                    slot.insert((self.head, counter));
                }
            }
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

    /// Names held.
    pub fn names(&self) -> usize {
        self.counters.len()
    }

    /// Empties the overlay into what a fold writes (`head`, `base` and
    /// `lsn` stay).
    pub fn take(&mut self) -> Frozen {
        let bytes = std::mem::take(&mut self.bytes);
        Frozen {
            checkpoint: Checkpoint {
                counters: std::mem::take(&mut self.counters).into_iter().collect(),
                head: self.head,
                marks: std::mem::take(&mut self.marks),
                membership: self.membership.take(),
                me: self.me.take(),
                keys: std::mem::take(&mut self.keys),
                lsn: self.lsn,
                salvage: None,
            },
            by_seq: std::mem::take(&mut self.by_seq),
            bytes,
        }
    }

    /// Puts a fold that did not commit back under what came after it:
    /// whatever both hold, this overlay's is newer.
    pub fn unfreeze(&mut self, frozen: Frozen) {
        let Frozen {
            checkpoint: c,
            by_seq,
            bytes,
        } = frozen;
        self.bytes += bytes;
        let mut counters = c.counters;
        for (seq, name) in by_seq {
            if self.counters.contains_key(&name) {
                continue;
            }
            if let Some(row) = counters.remove(&name) {
                self.by_seq.insert(seq, name.clone());
                self.counters.insert(name, row);
            }
        }
        for (incarnation, seq) in c.marks {
            let slot = self.marks.entry(incarnation).or_insert(0);
            *slot = (*slot).max(seq);
        }
        if self.membership.is_none() {
            self.membership = c.membership;
        }
        if self.me.is_none() {
            self.me = c.me;
        }
        for (k, r) in c.keys {
            self.keys.entry(k).or_insert(r);
        }
    }

    /// Adds what the log holds to what the B-tree held.
    pub fn onto(&self, loaded: &mut Loaded) {
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

/// An overlay being folded into the B-tree: what the fold writes, and the
/// names by sequence for readers.
#[derive(Clone)]
pub(super) struct Frozen {
    pub checkpoint: Checkpoint,
    by_seq: BTreeMap<u64, String>,
    /// Log bytes it covers.
    bytes: u64,
}

/// The overlays, newest first.
#[derive(Default)]
pub(super) struct Layers {
    pub live: Overlay,
    /// Being folded into the B-tree by a thread of its own.
    pub frozen: Option<Arc<Frozen>>,
}

impl Layers {
    /// Whether a layer holds `name` (then the B-tree's copy is older).
    pub fn holds(&self, name: &str) -> bool {
        self.live.counters.contains_key(name)
            || self
                .frozen
                .as_ref()
                .is_some_and(|f| f.checkpoint.counters.contains_key(name))
    }

    /// Adds to `out` (which holds what the B-tree gave, everything up to
    /// `out.next` at most) the layers' names changed after `since`, oldest
    /// first, until `limit`.
    pub fn extend(&self, since: u64, limit: usize, out: &mut Changes) {
        let after = since.saturating_add(1);
        let frozen = self.frozen.as_deref().map(|f| {
            f.by_seq
                .range(after..)
                .filter(|(_, name)| !self.live.counters.contains_key(name.as_str()))
                .map(|(&seq, name)| (seq, name, &f.checkpoint.counters[name].1))
        });
        let live = (self.live.by_seq.range(after..))
            .map(|(&seq, name)| (seq, name, &self.live.counters[name].1));
        for (seq, name, counter) in frozen.into_iter().flatten().chain(live) {
            if out.counters.len() == limit {
                out.more = true;
                return;
            }
            out.next = seq;
            out.counters.push((name.clone(), counter.clone()));
        }
    }

    /// The highest mark the layers hold for a peer's incarnation.
    pub fn mark(&self, incarnation: u64) -> Option<u64> {
        let live = self.live.marks.get(&incarnation).copied();
        let frozen = (self.frozen.as_ref()).and_then(|f| f.checkpoint.marks.get(&incarnation));
        live.max(frozen.copied())
    }
}
