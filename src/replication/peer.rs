//! What this node knows about one peer, and what to send it next: a pure
//! state machine, driven by events (a commit, a push's outcome, a pull's
//! answer, the peer pulling from us) and asked for the next message (a push,
//! a pull). It does no I/O and reads no clock (the caller passes `now`), so
//! partitions, restarts and replays are tested here without a runtime.
//!
//! The rules it keeps:
//! - Names whose own component changed wait in `dirty` for a push to a
//!   member; while the peer is known to be down they are dropped instead (it
//!   will pull them), and a push cut short puts them back.
//! - A push that carried every dirty name, acknowledged, means the peer holds
//!   every own change committed up to the head the names were committed by,
//!   unless some own change was never delivered: names dropped while the
//!   peer was down, a push that failed, commits from before the peer was
//!   known. Such a *gap* is closed only by the peer pulling past it (a pull
//!   says how far it holds everything, contiguously). Pushes acknowledged
//!   while a gap is open are not lost: every own change after the gap went
//!   out in them, so once a pull closes the gap the peer holds everything up
//!   to the last of them too.
//! - The pull position is the peer's own sequence for one incarnation of the
//!   peer; an answer from another incarnation (its folder was replaced)
//!   restarts from the mark stored for that incarnation.
//! - `stored` (how far the peer durably holds our changes) only rises.

use std::collections::BTreeSet;

use tokio::time::Instant;

use crate::cluster::Actor;
use crate::crdt::GCounter;
use crate::proto::{MAX_NAMES_PER_MESSAGE, ReplicaId};
use crate::storage::PeerMark;
use crate::transport::CallError;

use super::{PullError, SyncError};

/// One peer, as this node sees it.
#[derive(Debug)]
pub struct PeerState {
    pub actor: Actor,
    /// Members get pushes and count as replicas; leavers are only pulled from.
    member: bool,
    dirty: BTreeSet<String>,
    /// The head sequence the dirty names were committed by.
    dirty_head: u64,
    position: Option<PeerMark>,
    reachable: Option<bool>,
    last_contact: Option<Instant>,
    last_error: Option<SyncError>,
    peer: Option<ReplicaId>,
    /// Changes the peer had that we had not merged at the last pull.
    lag: u64,
    /// How far (in our sequence) the peer durably holds our changes.
    stored: u64,
    /// The highest head of own changes no push delivered: pushes may raise
    /// `stored` only once it is past this.
    gap: u64,
    /// Every own change after `gap` up to here reached the peer in an
    /// acknowledged push (`gap` itself when none did yet): what `stored`
    /// rises to once a pull closes the gap.
    delivered: u64,
    /// Who acknowledged those pushes: only a pull by the same incarnation
    /// of the peer closes the gap in front of them.
    delivered_to: Option<ReplicaId>,
    /// The protocol of its last answer to a pull.
    protocol: Option<u32>,
    /// Until when pulls go one page at a time: the peer refused a pull
    /// ahead (a version before it).
    no_ahead_until: Option<Instant>,
}

/// How long a peer that refused a pull ahead is pulled one page at a time
/// before it is asked again (it may have been upgraded meanwhile).
pub const AHEAD_REPROBE: std::time::Duration = std::time::Duration::from_secs(60);

/// Names to push, taken out of `dirty`.
#[derive(Debug, PartialEq, Eq)]
pub struct Push {
    pub names: Vec<String>,
    /// When the push carries every dirty name: the head it covers.
    covers: Option<u64>,
    /// The head its names were committed by (a gap if it fails).
    head: u64,
    /// Whether dirty names are left for another push right after.
    pub more: bool,
}

/// A change of reachability, worth one log line.
#[derive(Debug, Clone)]
pub enum Reachability {
    Unchanged,
    Reachable,
    Unreachable(SyncError),
}

/// What to do with a pull's answer.
#[derive(Debug, PartialEq)]
pub enum PullStep {
    /// The peer answered as another incarnation: look up the mark stored
    /// for it, then [`PeerState::resume`] from there.
    LookUpMark { incarnation: u64 },
    /// Merge these counters and record `mark` in the same commit, then
    /// [`PeerState::merged`]; pull again at once when `more`.
    Merge {
        counters: Vec<(String, GCounter)>,
        mark: PeerMark,
        head: u64,
        more: bool,
    },
}

/// A pull's answer, as the peer sent it.
pub struct PullAnswer {
    pub from: ReplicaId,
    pub counters: Vec<(String, GCounter)>,
    pub next: u64,
    pub head: u64,
    pub more: bool,
}

/// What this node knows of a peer as of one moment, for `/status` (whose
/// JSON form, `api::types::PeerReport`, is the API's to keep stable).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerView {
    pub actor: Actor,
    /// `None` until a call to it has ended.
    pub reachable: Option<bool>,
    /// How long ago it last answered.
    pub last_contact_ago: Option<std::time::Duration>,
    pub last_error: Option<String>,
    /// Who answered at its address last.
    pub replica: Option<ReplicaId>,
    pub lag_changes: u64,
    pub pending_push: usize,
    /// False for a leaver this node only pulls from (its hand-off).
    pub member: bool,
    /// How far (in this node's sequence) the peer is known to hold our changes.
    pub stored_seq: u64,
    /// The protocol of its last answer to a pull (3 binary, 2 JSON).
    pub protocol: Option<u32>,
}

impl PeerState {
    /// A peer known from now on; own changes up to `head` were never
    /// pushed to it (they were made before), so they are a gap.
    pub fn new(actor: Actor, member: bool, head: u64) -> Self {
        PeerState {
            actor,
            member,
            dirty: BTreeSet::new(),
            dirty_head: 0,
            position: None,
            reachable: None,
            last_contact: None,
            last_error: None,
            peer: None,
            lag: 0,
            stored: 0,
            gap: head,
            delivered: head,
            delivered_to: None,
            protocol: None,
            no_ahead_until: None,
        }
    }

    pub fn is_member(&self) -> bool {
        self.member
    }

    /// Returns whether the role changed.
    pub fn set_member(&mut self, member: bool) -> bool {
        std::mem::replace(&mut self.member, member) != member
    }

    pub fn stored(&self) -> u64 {
        self.stored
    }

    pub fn is(&self, who: ReplicaId) -> bool {
        self.peer == Some(who)
    }

    /// Names whose own component changed, committed by `head`.
    pub fn committed(&mut self, names: &[String], head: u64) {
        if self.member {
            self.dirty.extend(names.iter().cloned());
            self.dirty_head = self.dirty_head.max(head);
        } else {
            // Never pushed to a leaver: should it become a member again,
            // they are a gap.
            self.open_gap(head);
        }
    }

    /// The next push, if there is one to make. A peer known to be down (or
    /// not a member) gets none: its dirty names are dropped, it will pull
    /// them. `force` pushes even to a peer last seen down (at shutdown).
    pub fn take_push(&mut self, force: bool) -> Option<Push> {
        if !self.member || (!force && self.reachable == Some(false)) {
            if !self.dirty.is_empty() {
                self.dirty.clear();
                self.open_gap(self.dirty_head);
            }
            return None;
        }
        if self.dirty.is_empty() {
            return None;
        }
        if self.dirty.len() > MAX_NAMES_PER_MESSAGE {
            let first_left = self
                .dirty
                .iter()
                .nth(MAX_NAMES_PER_MESSAGE)
                .cloned()
                .expect("more than the limit");
            let rest = self.dirty.split_off(&first_left);
            let names = std::mem::replace(&mut self.dirty, rest)
                .into_iter()
                .collect();
            return Some(Push {
                names,
                covers: None,
                head: self.dirty_head,
                more: true,
            });
        }
        Some(Push {
            names: std::mem::take(&mut self.dirty).into_iter().collect(),
            covers: Some(self.dirty_head),
            head: self.dirty_head,
            more: false,
        })
    }

    /// A push was dropped before its call finished: its names go back.
    pub fn push_abandoned(&mut self, push: Push) {
        self.dirty.extend(push.names);
    }

    /// A push's outcome (the answering node, or the error). Returns the
    /// reachability change and whether `stored` rose.
    pub fn push_done(
        &mut self,
        push: Push,
        result: Result<ReplicaId, CallError>,
        now: Instant,
    ) -> (Reachability, bool) {
        let from = result.as_ref().ok().copied();
        let change = self.contact(result.map(Some).map_err(SyncError::Push), now);
        let Some(from) = from else {
            // Left to anti-entropy: its names were not delivered.
            self.open_gap(push.head);
            return (change, false);
        };
        if self.delivered_to != Some(from) {
            // Another incarnation answers (its folder was replaced): what
            // the pushes before delivered, it does not hold.
            self.open_gap(self.delivered);
            self.delivered_to = Some(from);
        }
        let raised = match push.covers {
            // One push at a time, and every dirty name goes out in one or
            // opens a gap: every own change after the gap is in this push or
            // in an acknowledged one before it.
            Some(head) => {
                self.delivered = self.delivered.max(head);
                self.stored_upto(self.stored)
            }
            None => false,
        };
        (change, raised)
    }

    /// What to ask the peer for next: its changes after this mark.
    pub fn pull_request(&self) -> PeerMark {
        self.position.unwrap_or_default()
    }

    /// A pull's answer.
    pub fn pulled(&mut self, answer: PullAnswer, now: Instant) -> (Reachability, PullStep) {
        let change = self.contact(Ok(Some(answer.from)), now);
        let asked = self.pull_request();
        if answer.from.incarnation != asked.incarnation {
            return (
                change,
                PullStep::LookUpMark {
                    incarnation: answer.from.incarnation,
                },
            );
        }
        let step = PullStep::Merge {
            counters: answer.counters,
            mark: PeerMark {
                incarnation: asked.incarnation,
                seq: answer.next,
            },
            head: answer.head,
            more: answer.more,
        };
        (change, step)
    }

    /// Resumes pulling the peer's `mark.incarnation` from `mark.seq`.
    pub fn resume(&mut self, mark: PeerMark) {
        self.position = Some(mark);
    }

    /// A page was merged and its mark stored; returns the lag left.
    pub fn merged(&mut self, mark: PeerMark, head: u64) -> u64 {
        self.position = Some(mark);
        self.lag = head.saturating_sub(mark.seq);
        self.lag
    }

    pub fn pull_failed(&mut self, error: PullError, now: Instant) -> Reachability {
        self.contact(Err(SyncError::Pull(error)), now)
    }

    /// The peer pulled our changes after `since`: it durably holds them up
    /// to there. Returns whether `stored` rose.
    pub fn stored_upto(&mut self, since: u64) -> bool {
        let before = self.stored;
        self.stored = self.stored.max(since);
        let same_peer = self.delivered_to.is_some_and(|d| self.peer == Some(d));
        if self.stored >= self.gap && same_peer {
            // Up to the gap by the pull, and past it by the pushes.
            self.stored = self.stored.max(self.delivered);
        }
        self.stored > before
    }

    /// Own changes up to `head` may not have reached the peer: pushes
    /// acknowledged so far say nothing past them.
    fn open_gap(&mut self, head: u64) {
        self.gap = self.gap.max(head);
        self.delivered = self.gap;
    }

    fn contact(
        &mut self,
        result: Result<Option<ReplicaId>, SyncError>,
        now: Instant,
    ) -> Reachability {
        let was = self.reachable;
        match result {
            Ok(peer) => {
                self.reachable = Some(true);
                self.last_contact = Some(now);
                self.last_error = None;
                if peer.is_some() {
                    self.peer = peer;
                }
                if was == Some(true) {
                    Reachability::Unchanged
                } else {
                    Reachability::Reachable
                }
            }
            Err(e) => {
                self.reachable = Some(false);
                self.last_error = Some(e.clone());
                if was == Some(false) {
                    Reachability::Unchanged
                } else {
                    Reachability::Unreachable(e)
                }
            }
        }
    }

    pub fn report(&self, now: Instant) -> PeerView {
        PeerView {
            actor: self.actor.clone(),
            reachable: self.reachable,
            last_contact_ago: self.last_contact.map(|t| now.saturating_duration_since(t)),
            last_error: self.last_error.as_ref().map(ToString::to_string),
            replica: self.peer,
            lag_changes: self.lag,
            pending_push: self.dirty.len(),
            member: self.member,
            stored_seq: self.stored,
            protocol: self.protocol,
        }
    }

    /// Whether the next page may be fetched while this one merges.
    pub fn pulls_ahead(&self, now: Instant) -> bool {
        self.no_ahead_until.is_none_or(|until| now >= until)
    }

    /// The peer refused a pull ahead: one page at a time for [`AHEAD_REPROBE`].
    pub fn refused_ahead(&mut self, now: Instant) {
        self.no_ahead_until = Some(now + AHEAD_REPROBE);
    }

    /// Notes the protocol a pull was answered in.
    pub fn answered_in(&mut self, protocol: u32) {
        self.protocol = Some(protocol);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn peer() -> PeerState {
        PeerState::new(Actor::parse("10.0.0.2").unwrap(), true, 0)
    }

    fn timed_out() -> CallError {
        CallError::Timeout(Duration::from_secs(1))
    }

    fn refused() -> PullError {
        PullError::Call(CallError::Refused {
            status: 503,
            bytes: 0,
        })
    }

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    const THEM: ReplicaId = ReplicaId {
        node: 2,
        incarnation: 7,
    };

    fn answer(from: ReplicaId, next: u64, head: u64, more: bool) -> PullAnswer {
        PullAnswer {
            from,
            counters: Vec::new(),
            next,
            head,
            more,
        }
    }

    #[test]
    fn a_push_takes_every_dirty_name_and_covers_their_head() {
        let now = Instant::now();
        let mut p = peer();
        assert_eq!(p.take_push(false), None);
        p.committed(&names(&["b", "a"]), 4);
        p.committed(&names(&["a"]), 6);
        let push = p.take_push(false).unwrap();
        assert_eq!(push.names, names(&["a", "b"]));
        assert!(!push.more);
        assert_eq!(p.take_push(false), None, "one push takes them all");
        let (change, raised) = p.push_done(push, Ok(THEM), now);
        assert!(matches!(change, Reachability::Reachable), "{change:?}");
        assert!(raised);
        assert_eq!(p.stored(), 6, "the peer holds everything up to head 6");
    }

    #[test]
    fn a_partition_drops_pushes_and_the_heal_goes_through_pulls() {
        let now = Instant::now();
        let mut p = peer();
        p.committed(&names(&["a"]), 1);
        let push = p.take_push(false).unwrap();
        let (change, raised) = p.push_done(push, Err(timed_out()), now);
        assert!(
            matches!(&change, Reachability::Unreachable(e) if e.to_string() == "push: timed out after 1s"),
            "{change:?}"
        );
        assert!(!raised, "a failed push stores nothing");
        // While down, new changes are not queued for it: it will pull them.
        p.committed(&names(&["b"]), 2);
        assert_eq!(p.take_push(false), None);
        assert_eq!(p.report(now).pending_push, 0);
        assert!(
            matches!(p.pull_failed(refused(), now), Reachability::Unchanged),
            "one log line per change"
        );
        // The heal: its pull of our changes after 2 says it holds them.
        assert!(p.stored_upto(2));
        assert!(!p.stored_upto(1), "stored never goes down");
        let (change, _) = p.pulled(answer(THEM, 0, 0, true), now + Duration::from_secs(1));
        assert!(matches!(change, Reachability::Reachable), "{change:?}");
        p.committed(&names(&["c"]), 3);
        assert!(
            p.take_push(false).is_some(),
            "reachable again: pushes resume"
        );
    }

    #[test]
    fn a_push_after_a_gap_does_not_claim_what_it_did_not_carry() {
        let now = Instant::now();
        let mut p = peer();
        // Names dropped while the peer was down: commit 3 never reached it.
        p.committed(&names(&["a"]), 1);
        let push = p.take_push(false).unwrap();
        p.push_done(push, Err(timed_out()), now);
        p.committed(&names(&["b"]), 3);
        assert_eq!(p.take_push(false), None);
        // Back: a push of "c" (commit 5) alone says nothing of 1 and 3.
        let (_, step) = p.pulled(answer(THEM, 0, 0, true), now);
        assert!(matches!(step, PullStep::LookUpMark { .. }));
        p.committed(&names(&["c"]), 5);
        let push = p.take_push(false).unwrap();
        assert!(!p.push_done(push, Ok(THEM), now).1);
        assert_eq!(p.stored(), 0);
        // Its pull past the gap does, and pushes count again after it.
        assert!(p.stored_upto(4));
        p.committed(&names(&["d"]), 7);
        let push = p.take_push(false).unwrap();
        assert!(p.push_done(push, Ok(THEM), now).1);
        assert_eq!(p.stored(), 7);
    }

    /// Seen in the chaos suite (`chaos_min_replicas_wipes`, seed
    /// 14157598223164466605) and on loopback: a node resumed from SIGSTOP,
    /// its push in flight timed out (a gap), the one peer it could reach
    /// acknowledged the next pushes within milliseconds, its pull then
    /// passed the gap, and still the increments those pushes carried
    /// answered 503 "stored on 0 of the 1 other actors required": the
    /// acknowledged pushes were forgotten, and only the pull after next
    /// would have counted them.
    #[test]
    fn pushes_acknowledged_while_a_gap_is_open_count_once_a_pull_closes_it() {
        let now = Instant::now();
        let mut p = peer();
        p.committed(&names(&["a"]), 10);
        let push = p.take_push(false).unwrap();
        assert!(p.push_done(push, Ok(THEM), now).1);
        // The push of commit 12 times out: a gap.
        p.committed(&names(&["b"]), 12);
        let push = p.take_push(false).unwrap();
        p.push_done(push, Err(timed_out()), now);
        // Reachable again; commits 13 and 15 are pushed and acknowledged,
        // which says nothing of 11 and 12 yet.
        p.pulled(answer(THEM, 0, 0, true), now);
        for (name, head) in [("c", 13), ("d", 15)] {
            p.committed(&names(&[name]), head);
            let push = p.take_push(false).unwrap();
            assert!(!p.push_done(push, Ok(THEM), now).1);
        }
        assert_eq!(p.stored(), 10);
        // Its pull past the gap: it holds everything up to 12 by the pull,
        // and 13 to 15 by the pushes it acknowledged since.
        assert!(p.stored_upto(12));
        assert_eq!(p.stored(), 15);
        p.committed(&names(&["e"]), 16);
        let push = p.take_push(false).unwrap();
        assert!(p.push_done(push, Ok(THEM), now).1);
        assert_eq!(p.stored(), 16);
    }

    #[test]
    fn a_new_gap_forgets_the_pushes_acknowledged_before_it() {
        let now = Instant::now();
        let mut p = peer();
        p.committed(&names(&["a"]), 2);
        let push = p.take_push(false).unwrap();
        p.push_done(push, Err(timed_out()), now);
        p.pulled(answer(THEM, 0, 0, true), now);
        p.committed(&names(&["b"]), 4);
        let push = p.take_push(false).unwrap();
        assert!(!p.push_done(push, Ok(THEM), now).1);
        // Down again: commit 6 is dropped, a gap past the pushes so far.
        p.pull_failed(refused(), now);
        p.committed(&names(&["c"]), 6);
        assert_eq!(p.take_push(false), None);
        p.pulled(answer(THEM, 0, 0, true), now);
        p.committed(&names(&["d"]), 8);
        let push = p.take_push(false).unwrap();
        assert!(!p.push_done(push, Ok(THEM), now).1);
        // A pull that closes the first gap only: nothing past it counts.
        assert!(p.stored_upto(3));
        assert_eq!(p.stored(), 3, "commit 6 may be missing");
        assert!(p.stored_upto(6));
        assert_eq!(p.stored(), 8, "past the second gap: the push of 8 counts");
    }

    #[test]
    fn pushes_to_a_replaced_incarnation_do_not_count_for_the_new_one() {
        let now = Instant::now();
        let mut p = peer();
        p.committed(&names(&["a"]), 2);
        let push = p.take_push(false).unwrap();
        p.push_done(push, Err(timed_out()), now);
        p.pulled(answer(THEM, 0, 0, true), now);
        p.committed(&names(&["b"]), 4);
        let push = p.take_push(false).unwrap();
        assert!(!p.push_done(push, Ok(THEM), now).1);
        // Its folder is replaced; the new incarnation pulls past the gap:
        // commit 4 went to the old one only.
        let reborn = ReplicaId {
            node: 2,
            incarnation: 8,
        };
        p.pulled(answer(reborn, 0, 0, true), now);
        assert!(p.stored_upto(2));
        assert_eq!(p.stored(), 2);
        // It acknowledges a push of commit 6: 3 and 4 are a gap for it.
        p.committed(&names(&["c"]), 6);
        let push = p.take_push(false).unwrap();
        assert!(!p.push_done(push, Ok(reborn), now).1);
        assert!(p.stored_upto(4));
        assert_eq!(p.stored(), 6);
    }

    #[test]
    fn changes_from_before_a_peer_was_known_are_a_gap() {
        let now = Instant::now();
        let mut p = PeerState::new(Actor::parse("10.0.0.3").unwrap(), true, 10);
        p.committed(&names(&["a"]), 11);
        let push = p.take_push(false).unwrap();
        assert!(
            !p.push_done(push, Ok(THEM), now).1,
            "commits 1..=10 never went to it"
        );
        assert!(p.stored_upto(10));
        p.committed(&names(&["b"]), 12);
        let push = p.take_push(false).unwrap();
        assert!(p.push_done(push, Ok(THEM), now).1);
    }

    #[test]
    fn a_push_cut_short_puts_its_names_back() {
        let mut p = peer();
        p.committed(&names(&["a", "b"]), 2);
        let push = p.take_push(false).unwrap();
        p.push_abandoned(push);
        assert_eq!(p.take_push(true).unwrap().names, names(&["a", "b"]));
    }

    #[test]
    fn a_long_dirty_set_goes_in_pages_and_only_the_last_covers() {
        let now = Instant::now();
        let mut p = peer();
        let many: Vec<String> = (0..MAX_NAMES_PER_MESSAGE + 5)
            .map(|i| format!("n{i:06}"))
            .collect();
        p.committed(&many, 9);
        let first = p.take_push(false).unwrap();
        assert_eq!(first.names.len(), MAX_NAMES_PER_MESSAGE);
        assert!(first.more);
        let (_, raised) = p.push_done(first, Ok(THEM), now);
        assert!(!raised, "part of the changes is not all of them");
        let rest = p.take_push(false).unwrap();
        assert_eq!(rest.names.len(), 5);
        assert!(p.push_done(rest, Ok(THEM), now).1);
        assert_eq!(p.stored(), 9);
    }

    #[test]
    fn a_leaver_gets_no_pushes_but_is_pulled() {
        let mut p = PeerState::new(Actor::parse("10.0.0.4").unwrap(), false, 0);
        p.committed(&names(&["a"]), 1);
        assert_eq!(p.take_push(true), None);
        assert_eq!(p.pull_request(), PeerMark::default());
        assert!(p.set_member(true));
        assert!(!p.set_member(true));
    }

    #[test]
    fn changes_made_while_a_peer_was_not_a_member_are_a_gap() {
        let now = Instant::now();
        let mut p = PeerState::new(Actor::parse("10.0.0.4").unwrap(), false, 0);
        p.committed(&names(&["a"]), 3);
        assert!(p.set_member(true));
        p.committed(&names(&["b"]), 5);
        let push = p.take_push(false).unwrap();
        assert_eq!(push.names, names(&["b"]));
        assert!(
            !p.push_done(push, Ok(THEM), now).1,
            "commit 3 never went to it"
        );
        assert!(p.stored_upto(3));
        assert_eq!(p.stored(), 5);
    }

    #[test]
    fn pulls_resume_per_incarnation_and_restart_after_a_lost_folder() {
        let now = Instant::now();
        let mut p = peer();
        // First contact: learn the incarnation, resume from the stored mark.
        let (_, step) = p.pulled(answer(THEM, 0, 0, true), now);
        assert_eq!(step, PullStep::LookUpMark { incarnation: 7 });
        p.resume(PeerMark {
            incarnation: 7,
            seq: 3,
        });
        assert_eq!(p.pull_request().seq, 3);
        let (_, step) = p.pulled(answer(THEM, 8, 10, true), now);
        let PullStep::Merge {
            mark, head, more, ..
        } = step
        else {
            panic!("{step:?}")
        };
        assert_eq!((mark.seq, head, more), (8, 10, true));
        assert_eq!(p.merged(mark, head), 2, "lag");
        assert_eq!(p.pull_request().seq, 8);
        // Its folder is replaced: a new incarnation starts from its own mark.
        let reborn = ReplicaId {
            node: 2,
            incarnation: 8,
        };
        let (_, step) = p.pulled(answer(reborn, 0, 0, true), now);
        assert_eq!(step, PullStep::LookUpMark { incarnation: 8 });
        p.resume(PeerMark {
            incarnation: 8,
            seq: 0,
        });
        assert!(p.is(reborn));
        assert_eq!(
            p.pull_request(),
            PeerMark {
                incarnation: 8,
                seq: 0
            }
        );
    }
}
