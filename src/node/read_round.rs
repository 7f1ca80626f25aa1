//! One consistent read, decided without I/O: whom to ask, what was heard,
//! when the read is complete, when it must start over, and what to say at
//! the deadline. The task in `read.rs` makes the calls and feeds the
//! answers back; everything that keeps G1 is here, tested as scenarios on
//! plain data.
//!
//! The read goes by a *view*: the membership stored when it started,
//! merged with every membership it learns of since (from storage, or
//! carried by an answer), so a read that meets a newer config goes on
//! under it even if storage cannot keep it right now. It is complete once
//! every actor of the view's read set was heard from during the read. An
//! actor that joins the read set is asked too; answers already heard still
//! count. An actor that *leaves* the read set (its hand-off was confirmed)
//! restarts the round: what the others said may predate what it handed
//! over, so every actor is asked again, and this node's own state is read
//! again.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use crate::cluster::{Actor, Membership};
use crate::crdt::GCounter;

/// A consistent read that could not hear from every node it needed.
#[derive(Debug, PartialEq)]
pub struct Incomplete {
    pub reason: String,
    pub unreachable: Vec<Actor>,
    pub best_known_value: u128,
}

/// What a round gathers from each actor it hears from, merged as the
/// answers come: one counter for a consistent read, a page of counters for
/// a consistent listing (`backup.rs`).
pub trait Gathered {
    /// What a complete round answers.
    type Value: std::fmt::Debug + PartialEq;
    /// Adds what one actor said: a merge, never a sum of totals.
    fn gather(&mut self, theirs: &Self);
    /// The answer, once every actor of the read set was heard from.
    fn value(&self) -> Self::Value;
    /// The sum of what was heard, for a round that cannot complete.
    fn best_known_value(&self) -> u128;
}

impl Gathered for GCounter {
    type Value = u128;
    fn gather(&mut self, theirs: &Self) {
        self.merge(theirs);
    }
    fn value(&self) -> u128 {
        GCounter::value(self)
    }
    fn best_known_value(&self) -> u128 {
        GCounter::value(self)
    }
}

/// What the read does next.
#[derive(Debug, PartialEq)]
pub enum Next<V = u128> {
    /// Every actor of the read set was heard from: the value.
    Done(V),
    /// Ask these actors (none: wait for the answers already asked for).
    /// Their answers are tagged with `round`.
    Ask { round: u64, actors: Vec<Actor> },
    /// An actor left the read set: drop the calls in flight, read this
    /// node's own state again and call [`ReadRound::restart`].
    Restart,
}

/// One consistent read of one name (or of what else `S` gathers).
#[derive(Debug)]
pub struct ReadRound<S = GCounter> {
    /// Shared with storage until the read learns something newer: a read
    /// copies no membership.
    view: Arc<Membership>,
    /// The view's read set, which the answers heard so far were gathered
    /// under (computed once per view).
    read_set: Vec<Actor>,
    /// An actor left the read set since this round began.
    restart: bool,
    merged: S,
    /// Heard during this round; this node itself from the start, when it
    /// knows which actor it is (its own state was read during the request).
    heard: BTreeSet<Actor>,
    asked: BTreeSet<Actor>,
    /// Not waited for: the caller chose to go on without them (a partial
    /// backup). Never set for a consistent read.
    excused: BTreeSet<Actor>,
    /// Bumped by every restart; answers to an older round are not believed.
    round: u64,
    timeout: Duration,
}

impl<S: Gathered> ReadRound<S> {
    /// Starts a read under the stored membership with this node's own
    /// state of the counter, read during the request. Without a config
    /// this node cannot know whom to hear from: it may be new, or it may
    /// have lost its data folder and with it the list of peers that hold
    /// what it acknowledged. Only a 503 is safe (G1).
    pub fn start(
        view: Arc<Membership>,
        local: S,
        me: Option<Actor>,
        timeout: Duration,
    ) -> Result<ReadRound<S>, Incomplete> {
        if !view.is_set() {
            return Err(Incomplete {
                reason: "this node has no cluster config yet; POST /config first".into(),
                unreachable: Vec::new(),
                best_known_value: local.best_known_value(),
            });
        }
        let read_set = view.read_set();
        Ok(ReadRound {
            view,
            read_set,
            restart: false,
            merged: local,
            heard: me.into_iter().collect(),
            asked: BTreeSet::new(),
            excused: BTreeSet::new(),
            round: 0,
            timeout,
        })
    }

    /// What to do now.
    pub fn next(&mut self) -> Next<S::Value> {
        if self.restart {
            return Next::Restart;
        }
        if self.needed().is_empty() {
            return Next::Done(self.merged.value());
        }
        let mut actors = Vec::new();
        for a in &self.read_set {
            if !self.heard.contains(a) && !self.asked.contains(a) && !self.excused.contains(a) {
                self.asked.insert(a.clone());
                actors.push(a.clone());
            }
        }
        Next::Ask {
            round: self.round,
            actors,
        }
    }

    /// Starts over under the current view: nobody heard, nobody asked,
    /// this node's own state read again (merged in: what was heard before
    /// is still true, only not enough).
    pub fn restart(&mut self, local: &S, me: Option<Actor>) {
        self.round += 1;
        self.restart = false;
        self.merged.gather(local);
        self.asked.clear();
        self.heard = me.into_iter().collect();
    }

    /// `actor` answered a call of `round` with its state of the counter
    /// and, when it differs from the caller's, its membership.
    pub fn heard(&mut self, round: u64, actor: Actor, theirs: &S, membership: Option<&Membership>) {
        if round != self.round {
            return;
        }
        self.merged.gather(theirs);
        self.heard.insert(actor);
        if let Some(m) = membership {
            self.learned(m);
        }
    }

    /// A membership learned during the read (stored here, or carried by an
    /// answer): the read goes on under the merge.
    pub fn learned(&mut self, m: &Membership) {
        let Some(next) = self.view.merged_with(m) else {
            return;
        };
        let now_set = next.read_set();
        // A node left the read set (its hand-off was confirmed): the
        // answers heard so far may predate what it handed over.
        self.restart |= self.read_set.iter().any(|a| !now_set.contains(a));
        self.read_set = now_set;
        self.view = Arc::new(next);
    }

    /// The deadline passed (or no call is left to wait for): the actors
    /// still needed, and the best value known.
    pub fn give_up(&self) -> Incomplete {
        let mut unreachable = self.needed();
        unreachable.sort();
        Incomplete {
            reason: format!("could not hear from every node within {:?}", self.timeout),
            unreachable,
            best_known_value: self.merged.best_known_value(),
        }
    }

    /// Goes on without `actors`: the round completes without hearing
    /// from them (what they hold may be missing from its value).
    pub fn excuse(&mut self, actors: impl IntoIterator<Item = Actor>) {
        self.excused.extend(actors);
    }

    /// The actors of the read set not heard from yet (and not excused).
    pub fn needed(&self) -> Vec<Actor> {
        self.read_set
            .iter()
            .filter(|a| !self.heard.contains(*a) && !self.excused.contains(*a))
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    //! Each test is a transcript of one read: what was stored, who answered
    //! what, and what the read did.

    use super::*;
    use crate::crdt::{Component, ReplicaId};

    fn actor(n: u8) -> Actor {
        Actor::parse(&format!("10.0.0.{n}")).unwrap()
    }

    fn actors(ns: &[u8]) -> Vec<Actor> {
        ns.iter().map(|n| actor(*n)).collect()
    }

    /// The config `ns` posted at node 1 over `base`.
    fn posted(base: &Membership, ns: &[u8]) -> Membership {
        base.post(actors(ns), 1).expect("a new config")
    }

    /// A counter holding `count` in node `node`'s component.
    fn count(node: u64, count: u64) -> GCounter {
        GCounter::of(
            ReplicaId {
                node,
                incarnation: 1,
            },
            count,
        )
    }

    fn ask(round: u64, ns: &[u8]) -> Next {
        Next::Ask {
            round,
            actors: actors(ns),
        }
    }

    const T: Duration = Duration::from_secs(10);

    #[test]
    fn a_read_asks_every_other_actor_once_and_sums_what_they_hold() {
        let m = posted(&Membership::default(), &[1, 2, 3]);
        let mut r = ReadRound::start(Arc::new(m), count(1, 5), Some(actor(1)), T).unwrap();
        assert_eq!(r.next(), ask(0, &[2, 3]), "not itself");
        assert_eq!(r.next(), ask(0, &[]), "nobody twice");
        r.heard(0, actor(3), &count(3, 7), None);
        assert_eq!(r.next(), ask(0, &[]), "still waiting for 2");
        r.heard(0, actor(2), &count(2, 1), None);
        assert_eq!(r.next(), Next::Done(13));
    }

    #[test]
    fn a_node_that_does_not_know_which_actor_it_is_asks_itself_too() {
        let m = posted(&Membership::default(), &[1, 2]);
        let mut r = ReadRound::start(Arc::new(m), count(1, 5), None, T).unwrap();
        assert_eq!(r.next(), ask(0, &[1, 2]));
    }

    #[test]
    fn without_a_config_only_a_503_is_safe() {
        let e = ReadRound::start(
            Arc::new(Membership::default()),
            count(1, 4),
            Some(actor(1)),
            T,
        )
        .unwrap_err();
        assert!(e.reason.contains("POST /config"), "{}", e.reason);
        assert_eq!((e.unreachable, e.best_known_value), (vec![], 4));
    }

    #[test]
    fn at_the_deadline_the_read_names_who_was_silent_and_the_best_value() {
        let m = posted(&Membership::default(), &[1, 2, 3]);
        let mut r = ReadRound::start(Arc::new(m), count(1, 5), Some(actor(1)), T).unwrap();
        r.next();
        r.heard(0, actor(2), &count(2, 2), None);
        let e = r.give_up();
        assert_eq!(e.unreachable, actors(&[3]));
        assert_eq!(e.best_known_value, 7);
        assert!(e.reason.contains("10s"), "{}", e.reason);
    }

    #[test]
    fn an_answer_merges_components_it_does_not_add_totals() {
        // The prototype's bug: two answers both holding node 2's 4 must
        // count it once; node 3's concurrent 6 must count too.
        let m = posted(&Membership::default(), &[1, 2, 3]);
        let mut r = ReadRound::start(Arc::new(m), count(2, 4), Some(actor(1)), T).unwrap();
        r.next();
        let mut both = count(2, 4);
        both.merge(&count(3, 6));
        r.heard(0, actor(2), &count(2, 4), None);
        r.heard(0, actor(3), &both, None);
        assert_eq!(r.next(), Next::Done(10));
    }

    #[test]
    fn a_newer_config_carried_by_an_answer_adds_whom_it_names() {
        let old = posted(&Membership::default(), &[1, 2]);
        let new = posted(&old, &[1, 2, 4]);
        let mut r = ReadRound::start(Arc::new(old), count(1, 1), Some(actor(1)), T).unwrap();
        assert_eq!(r.next(), ask(0, &[2]));
        r.heard(0, actor(2), &count(2, 1), Some(&new));
        assert_eq!(r.next(), ask(0, &[4]), "2's answer still counts");
        r.heard(0, actor(4), &count(4, 1), None);
        assert_eq!(r.next(), Next::Done(3));
    }

    #[test]
    fn a_leaver_is_heard_until_its_hand_off_is_confirmed() {
        let old = posted(&Membership::default(), &[1, 2, 3]);
        let new = posted(&old, &[1, 2]);
        let mut r =
            ReadRound::start(Arc::new(new.clone()), count(1, 1), Some(actor(1)), T).unwrap();
        assert_eq!(r.next(), ask(0, &[2, 3]), "3 left but has not handed off");
        r.heard(0, actor(2), &count(2, 1), None);
        assert_eq!(r.next(), ask(0, &[]));
        r.heard(0, actor(3), &count(3, 5), None);
        assert_eq!(r.next(), Next::Done(7));
    }

    #[test]
    fn a_confirmed_hand_off_during_the_read_asks_everyone_again() {
        let old = posted(&Membership::default(), &[1, 2, 3]);
        let leaving = posted(&old, &[1, 2]);
        let handed = leaving.with_handoff(&actor(3)).expect("a hand-off");
        let mut r = ReadRound::start(Arc::new(leaving), count(1, 1), Some(actor(1)), T).unwrap();
        assert_eq!(r.next(), ask(0, &[2, 3]));
        // 2 answered before 3's hand-off reached it; 3 never answers.
        r.heard(0, actor(2), &count(2, 1), None);
        r.learned(&handed);
        assert_eq!(
            r.next(),
            Next::Restart,
            "2's answer may predate the hand-off"
        );
        // What this node holds now includes what 3 handed over.
        let mut local = count(1, 1);
        local.merge(&count(3, 5));
        r.restart(&local, Some(actor(1)));
        assert_eq!(r.next(), ask(1, &[2]), "only the actors left, again");
        r.heard(0, actor(2), &count(2, 9), None);
        assert_eq!(
            r.next(),
            ask(1, &[]),
            "an answer to the old round is not believed"
        );
        let mut two = count(2, 1);
        two.merge(&count(3, 5));
        r.heard(1, actor(2), &two, None);
        assert_eq!(r.next(), Next::Done(7));
    }

    #[test]
    fn an_older_membership_changes_nothing() {
        let old = posted(&Membership::default(), &[1, 2]);
        let new = posted(&old, &[1, 2, 3]);
        let mut r = ReadRound::start(Arc::new(new), count(1, 1), Some(actor(1)), T).unwrap();
        r.learned(&old);
        assert_eq!(r.next(), ask(0, &[2, 3]));
    }

    #[test]
    fn a_read_of_a_counter_nobody_holds_is_zero_once_everyone_answered() {
        let m = posted(&Membership::default(), &[1, 2]);
        let mut r = ReadRound::start(Arc::new(m), GCounter::default(), Some(actor(1)), T).unwrap();
        r.next();
        r.heard(0, actor(2), &GCounter::default(), None);
        assert_eq!(r.next(), Next::Done(0));
        // Components of nodes not in the config still count (a departed
        // node's increments are kept).
        let m = posted(&Membership::default(), &[1]);
        let gone: GCounter = [Component {
            node: 9,
            incarnation: 3,
            count: 2,
        }]
        .into_iter()
        .collect();
        let mut r = ReadRound::start(Arc::new(m), gone, Some(actor(1)), T).unwrap();
        assert_eq!(r.next(), Next::Done(2));
    }
}
