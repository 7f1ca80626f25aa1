//! Membership: a config plus what the cluster learned about it since it
//! was made (orphans, confirmed hand-offs), the read set a consistent read
//! must hear from, and the rules for merging, posting and handing off.
//! Pure. See the parent module for why these rules keep G1.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use super::{
    Actor, ClusterConfig, ConfigError, MAX_DEPARTED, MAX_LINEAGE, MAX_VERSION_STEP, Stamp,
    validate_departed,
};

/// A confirmed hand-off: every actor of the config stamped `stamp`, at that
/// config, had durably merged all that `actor` held.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Handoff {
    pub actor: Actor,
    pub stamp: Stamp,
}

/// A config plus what the cluster learned about it since it was made. Merged
/// by every node from every message, so it converges like the config does.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Membership {
    pub config: ClusterConfig,
    /// Actors that a config which lost to this one named, and this one does
    /// not: they may hold acknowledged increments, so they hand off too.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub orphans: BTreeSet<Actor>,
    /// Confirmed hand-offs under this config or its parent.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub handed_off: BTreeSet<Handoff>,
}

/// Where one actor stands in a membership.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Standing {
    Member,
    /// Left; consistent reads still need it.
    Leaving,
    /// Left and handed off.
    HandedOff,
    /// Not named at all.
    Outside,
}

impl Membership {
    pub fn new(config: ClusterConfig) -> Self {
        Membership {
            config,
            ..Membership::default()
        }
    }

    pub fn is_set(&self) -> bool {
        self.config.is_set()
    }

    pub fn stamp(&self) -> Stamp {
        self.config.stamp
    }

    /// Whether `actor`'s hand-off counts under this config: confirmed under
    /// this config, or under its parent for an actor that has been leaving
    /// since (one that was an actor in between may have acknowledged more:
    /// an orphan, made an actor again by a config that lost, hands off
    /// under this config itself).
    pub fn excused(&self, actor: &Actor) -> bool {
        let confirmed = |stamp: Stamp| {
            !stamp.is_zero()
                && self.handed_off.contains(&Handoff {
                    actor: actor.clone(),
                    stamp,
                })
        };
        !self.config.has_actor(actor)
            && (confirmed(self.config.stamp)
                || (self.config.leaving.contains(actor)
                    && !self.orphans.contains(actor)
                    && confirmed(self.config.parent())))
    }

    fn departed(&self) -> impl Iterator<Item = &Actor> {
        self.config
            .leaving
            .iter()
            .chain(&self.orphans)
            .filter(|a| !self.config.has_actor(a))
    }

    pub fn standing(&self, actor: &Actor) -> Standing {
        if self.config.has_actor(actor) {
            Standing::Member
        } else if self.departed().any(|a| a == actor) {
            if self.excused(actor) {
                Standing::HandedOff
            } else {
                Standing::Leaving
            }
        } else if self.config.retired.contains(actor) {
            Standing::HandedOff
        } else {
            Standing::Outside
        }
    }

    /// Every actor a consistent read must hear from: the config's actors
    /// and every leaver whose hand-off is not confirmed. Sorted, no duplicates.
    pub fn read_set(&self) -> Vec<Actor> {
        let mut out: Vec<Actor> = self
            .config
            .actors
            .iter()
            .chain(self.departed().filter(|a| !self.excused(a)))
            .cloned()
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// Leavers (from `leaving` and `orphans`) with whether each handed off.
    pub fn leavers(&self) -> Vec<(Actor, bool)> {
        let mut out: Vec<(Actor, bool)> = self
            .departed()
            .map(|a| (a.clone(), self.excused(a)))
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// Every address this membership names, in any role: where a node
    /// looks for itself.
    pub fn everyone(&self) -> Vec<Actor> {
        let mut out: Vec<Actor> = self
            .config
            .actors
            .iter()
            .chain(&self.config.leaving)
            .chain(&self.orphans)
            .chain(&self.config.retired)
            .cloned()
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// What merging `other` into `self` produces, or `None` when it adds nothing.
    ///
    /// A newer config replaces this one; actors this one still counted on
    /// (actors, leavers, orphans) that the newer one does not name become
    /// its orphans, so their increments are not forgotten when a concurrent
    /// config wins. The same config merges its orphans and hand-offs.
    pub fn merged_with(&self, other: &Membership) -> Option<Membership> {
        if self.config == other.config {
            let mut next = self.clone();
            next.orphans.extend(other.orphans.iter().cloned());
            next.handed_off.extend(other.handed_off.iter().cloned());
            next.prune();
            return (next != *self).then_some(next);
        }
        if !self.config.is_superseded_by(&other.config) {
            return None;
        }
        let mut next = other.clone();
        let config = &next.config;
        // Made step by step from ours: its poster accounted for our actors
        // and leavers (retiring only confirmed hand-offs). Otherwise a
        // concurrent config won, and an actor of ours it lists as retired
        // may have acknowledged more since, under ours.
        let descends = config.descends_from(self.config.stamp);
        let read = |a: &Actor| config.has_actor(a) || config.leaving.contains(a);
        let mut orphans: Vec<Actor> = Vec::new();
        for a in &self.config.actors {
            // An actor of a config that lost may have acknowledged under it
            // after a hand-off the winner still counts (it lists it leaving
            // since their common parent): it hands off again, under the winner.
            let named = if descends {
                read(a) || config.retired.contains(a)
            } else {
                config.has_actor(a)
            };
            if !named {
                orphans.push(a.clone());
            }
        }
        for a in self.config.leaving.iter().filter(|a| !self.excused(a)) {
            if !read(a) && !config.retired.contains(a) {
                orphans.push(a.clone());
            }
        }
        // Orphans stay orphans until they hand off under the winner: no
        // config's poster knew of them.
        orphans.extend(self.orphans.iter().filter(|a| !read(a)).cloned());
        next.orphans.extend(orphans);
        next.handed_off.extend(self.handed_off.iter().cloned());
        next.prune();
        Some(next)
    }

    /// Drops what no longer matters: hand-offs under other stamps than this
    /// config's and its parent's, orphans the config names itself.
    fn prune(&mut self) {
        let keep = [self.config.stamp, self.config.parent()];
        self.handed_off.retain(|h| keep.contains(&h.stamp));
        let config = &self.config;
        // An orphan the config retires, or lists as leaving, stays: it may
        // have acknowledged more, under a config that lost, since it
        // handed off.
        self.orphans.retain(|a| !config.has_actor(a));
    }

    /// The membership a post of `actors` at node `origin` produces, or
    /// `None` when it names exactly the current actors (a no-op).
    pub fn post(&self, actors: Vec<Actor>, origin: u64) -> Option<Membership> {
        self.post_forgetting(actors, &[], origin)
    }

    /// Like [`Membership::post`], and also gives up on the hand-off of the
    /// leavers in `forget`: they are retired as if they had handed off. What
    /// they acknowledged and no other node holds is then lost to consistent
    /// reads; it is the operator's way out for a node that is gone for good
    /// (or was never a node). A post that only forgets is a change too.
    pub fn post_forgetting(
        &self,
        actors: Vec<Actor>,
        forget: &[Actor],
        origin: u64,
    ) -> Option<Membership> {
        let forgets = self
            .departed()
            .any(|a| forget.contains(a) && !self.excused(a));
        if self.is_set() && self.config.same_actors(&actors) && !forgets {
            return None;
        }
        let settled = |a: &Actor| self.excused(a) || forget.contains(a);
        let departed: BTreeSet<&Actor> = self
            .config
            .actors
            .iter()
            .chain(self.departed())
            .filter(|a| !actors.contains(a))
            .collect();
        let leaving = departed
            .iter()
            .filter(|a| !settled(a))
            .map(|a| (*a).clone())
            .collect();
        let mut retired: Vec<Actor> = self
            .config
            .retired
            .iter()
            .chain(departed.iter().copied().filter(|a| settled(a)))
            .filter(|a| !actors.contains(a))
            .cloned()
            .collect();
        retired.sort();
        retired.dedup();
        let mut next = Membership {
            config: ClusterConfig {
                stamp: Stamp {
                    version: self.config.stamp.version.saturating_add(1),
                    origin,
                },
                actors,
                leaving,
                retired,
                lineage: std::iter::once(self.config.stamp)
                    .filter(|s| !s.is_zero())
                    .chain(self.config.lineage.iter().copied())
                    .take(MAX_LINEAGE)
                    .collect(),
            },
            orphans: BTreeSet::new(),
            handed_off: self.handed_off.clone(),
        };
        next.prune();
        Some(next)
    }

    /// Records that `actor` handed off under this config.
    pub fn with_handoff(&self, actor: &Actor) -> Option<Membership> {
        if !self.is_set() || self.config.has_actor(actor) || self.excused(actor) {
            return None;
        }
        let mut next = self.clone();
        next.handed_off.insert(Handoff {
            actor: actor.clone(),
            stamp: self.config.stamp,
        });
        Some(next)
    }

    /// Checks a membership received from a peer against this node's,
    /// `ours`: valid on its own, and not further ahead in version than
    /// [`MAX_VERSION_STEP`].
    pub fn check_received(&self, ours: &Membership) -> Result<(), ConfigError> {
        let (theirs, ours) = (self.config.stamp.version, ours.config.stamp.version);
        if theirs > ours.saturating_add(MAX_VERSION_STEP) {
            return Err(ConfigError::VersionJump { theirs, ours });
        }
        self.validate()
    }

    /// Checks a membership on its own: canonical, bounded, consistent.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.config.validate()?;
        validate_departed(self.orphans.iter(), &self.config.actors)?;
        if self.handed_off.len() > MAX_DEPARTED {
            return Err(ConfigError::TooManyDeparted);
        }
        for h in &self.handed_off {
            if Actor::parse(h.actor.as_str()).as_ref() != Ok(&h.actor) {
                return Err(ConfigError::NotCanonical);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::{ClusterConfig, ConfigError, Stamp, parse_actors};

    fn actors(v: &[&str]) -> Vec<Actor> {
        parse_actors(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    }

    fn a(s: &str) -> Actor {
        Actor::parse(s).unwrap()
    }

    fn first(list: &[&str]) -> Membership {
        Membership::default().post(actors(list), 1).unwrap()
    }

    #[test]
    fn identical_repost_is_a_noop_and_a_change_bumps_the_version() {
        let c1 = first(&["10.0.0.1", "10.0.0.2"]);
        assert_eq!(
            c1.stamp(),
            Stamp {
                version: 1,
                origin: 1
            }
        );
        assert!(c1.config.leaving.is_empty(), "{c1:?}");
        assert!(c1.post(actors(&["10.0.0.2", "10.0.0.1"]), 2).is_none());
        let c2 = c1.post(actors(&["10.0.0.1"]), 2).unwrap();
        assert_eq!(c2.stamp().version, 2);
        assert_eq!(c2.config.parent(), c1.stamp());
        assert!(c2.config.descends_from(c1.stamp()));
        assert!(c1.config.is_superseded_by(&c2.config));
        assert!(!c2.config.is_superseded_by(&c1.config));
        assert_eq!(c1.merged_with(&c2), Some(c2.clone()));
        assert_eq!(c2.merged_with(&c1), None, "an older config changes nothing");
    }

    #[test]
    fn concurrent_posts_resolve_the_same_way_everywhere() {
        let base = Membership::default();
        let x = base.post(actors(&["10.0.0.1"]), 1).unwrap();
        let y = base.post(actors(&["10.0.0.2"]), 2).unwrap();
        assert!(x.config.is_superseded_by(&y.config));
        assert!(!y.config.is_superseded_by(&x.config));
        // Same stamp, different actors (cannot happen from one origin, but
        // the order must still be total).
        let z = ClusterConfig {
            actors: actors(&["10.0.0.3"]),
            ..y.config.clone()
        };
        assert!(y.config.is_superseded_by(&z) != z.is_superseded_by(&y.config));
        // Whatever order the two arrive in, both sides end on the same membership.
        let at_x = x.merged_with(&y).unwrap();
        let at_y = y.merged_with(&x).unwrap_or(y.clone());
        assert_eq!(at_x.config, at_y.config);
        assert_eq!(
            at_x.merged_with(&at_y).unwrap_or(at_x.clone()),
            at_y.merged_with(&at_x).unwrap_or(at_y.clone())
        );
    }

    #[test]
    fn a_removed_actor_is_read_until_it_hands_off_then_retired() {
        let c1 = first(&["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4"]);
        let c2 = c1
            .post(actors(&["10.0.0.1", "10.0.0.2", "10.0.0.3"]), 1)
            .unwrap();
        let d = a("10.0.0.4");
        assert_eq!(c2.config.leaving, vec![d.clone()]);
        assert!(
            c2.read_set().contains(&d),
            "reads still hear from the leaver"
        );
        assert_eq!(c2.standing(&d), Standing::Leaving);
        assert_eq!(c2.leavers(), vec![(d.clone(), false)]);
        let done = c2.with_handoff(&d).unwrap();
        assert!(!done.read_set().contains(&d));
        assert_eq!(done.standing(&d), Standing::HandedOff);
        assert!(done.with_handoff(&d).is_none(), "recorded once");
        assert!(
            done.with_handoff(&a("10.0.0.1")).is_none(),
            "members do not hand off"
        );
        // The next change retires it, and a leaver that did not hand off stays leaving.
        let c3 = done.post(actors(&["10.0.0.1", "10.0.0.2"]), 2).unwrap();
        assert_eq!(c3.config.retired, vec![d.clone()]);
        assert_eq!(c3.config.leaving, vec![a("10.0.0.3")]);
        assert_eq!(
            c3.read_set(),
            vec![a("10.0.0.1"), a("10.0.0.2"), a("10.0.0.3")]
        );
        assert_eq!(c3.standing(&d), Standing::HandedOff);
        // Re-adding it makes it a member again, and no longer retired.
        let c4 = c3
            .post(actors(&["10.0.0.1", "10.0.0.2", "10.0.0.4"]), 1)
            .unwrap();
        assert!(c4.config.retired.is_empty());
        assert_eq!(c4.standing(&d), Standing::Member);
    }

    #[test]
    fn a_leaver_that_is_gone_for_good_can_be_forgotten() {
        let c1 = first(&["10.0.0.1", "10.0.0.2"]);
        let c2 = c1.post(actors(&["10.0.0.1"]), 1).unwrap();
        let gone = a("10.0.0.2");
        assert!(c2.read_set().contains(&gone));
        assert!(
            c2.post_forgetting(actors(&["10.0.0.1"]), &[a("10.0.0.9")], 1)
                .is_none(),
            "forgetting a node that is not leaving changes nothing"
        );
        let c3 = c2
            .post_forgetting(actors(&["10.0.0.1"]), std::slice::from_ref(&gone), 1)
            .expect("forgetting a leaver is a change");
        assert_eq!(c3.stamp().version, 3);
        assert!(c3.config.leaving.is_empty());
        assert_eq!(c3.config.retired, vec![gone.clone()]);
        assert_eq!(c3.read_set(), vec![a("10.0.0.1")]);
        assert_eq!(c3.standing(&gone), Standing::HandedOff);
    }

    #[test]
    fn a_hand_off_counts_under_the_next_config_too() {
        let c1 = first(&["10.0.0.1", "10.0.0.2", "10.0.0.3"]);
        let c2 = c1.post(actors(&["10.0.0.1", "10.0.0.2"]), 1).unwrap();
        let c = a("10.0.0.3");
        // Posted at a node that had not heard of the hand-off yet.
        let c3 = c2
            .post(actors(&["10.0.0.1", "10.0.0.2", "10.0.0.5"]), 2)
            .unwrap();
        assert_eq!(c3.config.leaving, vec![c.clone()]);
        assert!(c3.read_set().contains(&c));
        // A node that knows it was confirmed under c2 (c3's parent) excuses it.
        let knows = c2.with_handoff(&c).unwrap().merged_with(&c3).unwrap();
        assert!(!knows.read_set().contains(&c), "{knows:?}");
        // But not under a config two steps later, unless it was retired on the way.
        let c4 = c3.post(actors(&["10.0.0.1", "10.0.0.2"]), 2).unwrap();
        let stale = c2.with_handoff(&c).unwrap().merged_with(&c4).unwrap();
        assert!(stale.read_set().contains(&c), "{stale:?}");
    }

    #[test]
    fn a_losing_concurrent_config_leaves_its_own_actors_as_orphans() {
        let base = first(&["10.0.0.1", "10.0.0.2", "10.0.0.3"]);
        // One side adds .5; the other, concurrently, removes .3 and wins.
        let grown = base
            .post(actors(&["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.5"]), 1)
            .unwrap();
        let shrunk = base.post(actors(&["10.0.0.1", "10.0.0.2"]), 2).unwrap();
        assert!(grown.config.is_superseded_by(&shrunk.config));
        let merged = grown.merged_with(&shrunk).unwrap();
        assert_eq!(merged.config, shrunk.config);
        // .3 too: the winner lists it leaving, but it was an actor of the
        // loser, so only a hand-off under the winner itself excuses it.
        assert_eq!(
            merged.orphans.iter().cloned().collect::<Vec<_>>(),
            vec![a("10.0.0.3"), a("10.0.0.5")]
        );
        assert!(merged.read_set().contains(&a("10.0.0.5")));
        assert!(
            merged.read_set().contains(&a("10.0.0.3")),
            "a leaver of the winner"
        );
        // The winner's side learns the orphan by merging the same config.
        let told = shrunk.merged_with(&merged).unwrap();
        assert_eq!(told, merged);
        assert!(told.merged_with(&merged).is_none(), "merging is idempotent");
        // The orphan hands off like any leaver; a later config keeps it leaving until then.
        let next = merged.post(actors(&["10.0.0.1", "10.0.0.2"]), 1);
        assert!(next.is_none(), "same actors: a no-op");
        let next = merged.post(actors(&["10.0.0.1"]), 1).unwrap();
        assert!(next.config.leaving.contains(&a("10.0.0.5")));
        assert!(next.orphans.is_empty());
    }

    #[test]
    fn a_node_re_added_by_a_losing_config_is_read_though_the_winner_retired_it() {
        let c1 = first(&["10.0.0.1", "10.0.0.2", "10.0.0.3"]);
        let three = a("10.0.0.3");
        let c2 = c1
            .post(actors(&["10.0.0.1", "10.0.0.2"]), 1)
            .unwrap()
            .with_handoff(&three)
            .unwrap();
        // One side retires it for good, the other (concurrently) re-adds it,
        // and it acknowledges there; the first side wins.
        let winner = c2
            .post(actors(&["10.0.0.1", "10.0.0.2", "10.0.0.5"]), 2)
            .unwrap();
        assert_eq!(winner.config.retired, vec![three.clone()]);
        let loser = c2
            .post(actors(&["10.0.0.1", "10.0.0.2", "10.0.0.3"]), 1)
            .unwrap();
        assert!(loser.config.is_superseded_by(&winner.config));
        let merged = loser.merged_with(&winner).unwrap();
        assert!(merged.orphans.contains(&three), "{merged:?}");
        assert!(merged.read_set().contains(&three));
        // A node that merely missed the steps between (same lineage) does
        // not resurrect a node that handed off and may be switched off.
        let stale = c1.merged_with(&winner).unwrap();
        assert!(winner.config.descends_from(c1.stamp()));
        assert!(!stale.read_set().contains(&three), "{stale:?}");
    }

    /// Simulation seed 2685: a node removed and handed off (v2), then
    /// re-added by a config that lost (v3/1), acknowledges there; the
    /// winner (v3/3, also made from v2) still lists it as leaving, and its
    /// hand-off under v2 must not excuse what it acknowledged since.
    #[test]
    fn a_hand_off_before_a_losing_config_does_not_excuse_what_came_after() {
        let c1 = first(&["10.0.0.1", "10.0.0.2", "10.0.0.3"]);
        let three = a("10.0.0.3");
        let c2 = c1.post(actors(&["10.0.0.1", "10.0.0.2"]), 2).unwrap();
        // The winner is posted where the hand-off is not known yet: .3 leaving.
        let winner = c2.post(actors(&["10.0.0.1"]), 3).unwrap();
        assert!(winner.config.leaving.contains(&three));
        let loser = c2
            .with_handoff(&three)
            .unwrap()
            .post(actors(&["10.0.0.1", "10.0.0.2", "10.0.0.3"]), 1)
            .unwrap();
        assert!(loser.config.is_superseded_by(&winner.config));
        let merged = loser.merged_with(&winner).unwrap();
        assert!(merged.orphans.contains(&three), "{merged:?}");
        assert!(merged.read_set().contains(&three), "{merged:?}");
        // The winner's side, merging the same config, learns it too, even
        // with the hand-off under v2 in hand.
        let told = winner
            .merged_with(&c2.with_handoff(&three).unwrap())
            .unwrap_or(winner.clone())
            .merged_with(&merged)
            .unwrap();
        assert!(told.read_set().contains(&three), "{told:?}");
        // It is excused once it hands off under the winner itself.
        let done = merged.with_handoff(&three).unwrap();
        assert!(!done.read_set().contains(&three));
    }

    #[test]
    fn received_configs_are_validated() {
        let c1 = first(&["10.0.0.1", "10.0.0.2"]);
        assert_eq!(c1.validate(), Ok(()));
        assert_eq!(Membership::default().validate(), Ok(()));
        let mut overlap = c1.clone();
        overlap.config.leaving = vec![a("10.0.0.1")];
        assert!(matches!(overlap.validate(), Err(ConfigError::Overlap(_))));
        let mut orphan = c1.clone();
        orphan.orphans.insert(a("10.0.0.2"));
        assert!(orphan.validate().is_err());
        let mut parent = c1.clone();
        parent.config.lineage = vec![parent.config.stamp];
        assert_eq!(parent.validate(), Err(ConfigError::BadParent));
        let mut exhausted = c1.clone();
        exhausted.config.stamp.version = u64::MAX;
        assert_eq!(exhausted.validate(), Err(ConfigError::VersionExhausted));
        // A forged jump towards the end of the versions is refused, so a
        // post can always make a newer config.
        let mut jump = c1.clone();
        jump.config.stamp.version = u64::MAX - 1;
        assert!(matches!(
            jump.check_received(&c1),
            Err(ConfigError::VersionJump { .. })
        ));
        assert!(matches!(
            jump.check_received(&Membership::default()),
            Err(ConfigError::VersionJump { .. })
        ));
        let mut step = c1.clone();
        step.config.stamp.version = 1 + crate::cluster::MAX_VERSION_STEP;
        assert_eq!(step.check_received(&c1), Ok(()));
        let mut unset = Membership::default();
        unset.config.actors = actors(&["10.0.0.1"]);
        assert!(unset.validate().is_err());
        let old_format: ClusterConfig = serde_json::from_str(
            r#"{"stamp":{"version":3,"origin":2},"actors":["10.0.0.1:7777"]}"#,
        )
        .unwrap();
        assert_eq!(Membership::new(old_format).validate(), Ok(()));
    }
}
