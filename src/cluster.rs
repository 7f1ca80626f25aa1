//! Cluster membership: actor addresses, config versions, and the hand-off
//! of what leaving nodes hold. Pure: resolving and contacting actors happens
//! elsewhere.
//!
//! A config is the list of every node's address plus a *stamp* (version,
//! origin node). Posting a config whose set of actors differs from the
//! current one creates the next version; every node adopts the highest stamp
//! it sees, so conflicting posts end the same way everywhere (SPEC G8). An
//! identical re-post is a no-op.
//!
//! The one mistake this module exists to prevent is a membership change
//! that drops acknowledged increments: a node removed from the config may
//! hold increments nobody else has (it may have acked them alone, cut off).
//! So a config also names the actors that left along its lineage and have
//! not handed off (`leaving`), and a [`Membership`] adds what nodes learn
//! later about the same config: actors that only a losing concurrent config
//! named (`orphans`) and confirmed hand-offs (`handed_off`). A consistent
//! read must hear from its [`Membership::read_set`]: every actor, and every
//! leaver whose hand-off is not confirmed.
//!
//! A hand-off of actor L is confirmed under stamp S when every actor of S,
//! itself at config S, has durably merged everything L held once L stopped
//! acknowledging increments. Such a confirmation excuses L under S and under
//! the configs made directly from S (whose `parent` is S): every actor of S
//! is an actor or a leaver there, and a leaver's own hand-off covers what it
//! received while at S. Older confirmations are folded into `retired` when a
//! config is made, so a decommissioned node is never asked again.
//!
//! Left out: a guarantee for increments acknowledged by a node that only a
//! losing concurrent config named, before any node of the winning config
//! hears of it (see README, "Membership changes").

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};

use serde::{Deserialize, Serialize};

/// The port an actor listens on when its address names none.
pub const DEFAULT_PORT: u16 = 7777;
/// Most actors a config may list.
pub const MAX_ACTORS: usize = 256;
/// Most actors a config may remember as leaving or retired, and a
/// membership as orphans or hand-offs.
pub const MAX_DEPARTED: usize = 4096;
const MAX_ACTOR_LEN: usize = 262;

/// Why an address or a config was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("an actor is empty")]
    EmptyActor,
    #[error("actor {0:?} is too long")]
    ActorTooLong(String),
    #[error("actor {0:?} has port 0")]
    PortZero(String),
    #[error("actor {0:?} is not an IP address, host:port or [v6]:port")]
    BadActor(String),
    #[error("actors must list at least one address")]
    NoActors,
    #[error("at most {MAX_ACTORS} actors are allowed")]
    TooManyActors,
    #[error("actor {0} is listed twice")]
    Duplicate(Actor),
    #[error("config actors are not in canonical form")]
    NotCanonical,
    #[error("config version is exhausted")]
    VersionExhausted,
    #[error("config lists {0} both as an actor and as departed")]
    Overlap(Actor),
    #[error("at most {MAX_DEPARTED} departed actors are remembered")]
    TooManyDeparted,
    #[error("a config's parent must be older than the config")]
    BadParent,
}

/// One node's address in canonical form: `ip:port`, `[v6]:port` or `host:port`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Actor(String);

impl Actor {
    /// Parses an actor as the SPEC allows: an IP address (port 7777
    /// implied), `host:port`, or `[v6]:port`; returns it in canonical form.
    pub fn parse(raw: &str) -> Result<Actor, ConfigError> {
        let s = raw.trim();
        if s.is_empty() {
            return Err(ConfigError::EmptyActor);
        }
        if s.len() > MAX_ACTOR_LEN {
            return Err(ConfigError::ActorTooLong(raw.to_string()));
        }
        if let Ok(ip) = s.parse::<IpAddr>() {
            return Ok(Actor(SocketAddr::new(ip, DEFAULT_PORT).to_string()));
        }
        if let Ok(sa) = s.parse::<SocketAddr>() {
            if sa.port() == 0 {
                return Err(ConfigError::PortZero(raw.to_string()));
            }
            return Ok(Actor(sa.to_string()));
        }
        let bad = || ConfigError::BadActor(raw.to_string());
        let (host, port) = s.rsplit_once(':').ok_or_else(bad)?;
        let port: u16 = port.parse().map_err(|_| bad())?;
        if port == 0 || !valid_hostname(host) {
            return Err(bad());
        }
        Ok(Actor(format!("{}:{port}", host.to_ascii_lowercase())))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The socket address when the actor is a literal IP address.
    pub fn socket_addr(&self) -> Option<SocketAddr> {
        self.0.parse().ok()
    }
}

impl std::fmt::Display for Actor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn valid_hostname(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// Orders configs: higher version wins, then higher origin node id, then the
/// config's content itself, so any two distinct configs compare the same way
/// on every node.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Stamp {
    pub version: u64,
    pub origin: u64,
}

impl Stamp {
    pub fn is_zero(&self) -> bool {
        self.version == 0
    }
}

/// A versioned cluster configuration.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterConfig {
    pub stamp: Stamp,
    /// In the order they were posted; no duplicates.
    pub actors: Vec<Actor>,
    /// Actors that left along this config's lineage without a confirmed
    /// hand-off when it was made: consistent reads still hear from them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub leaving: Vec<Actor>,
    /// Actors that left and handed off: never asked again unless re-added.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retired: Vec<Actor>,
    /// The stamp of the config this one was made from.
    #[serde(default, skip_serializing_if = "Stamp::is_zero")]
    pub parent: Stamp,
}

impl ClusterConfig {
    /// Whether this node has received any config yet (before one, it is a cluster of one).
    pub fn is_set(&self) -> bool {
        self.stamp.version > 0
    }

    fn sort_key(&self) -> (Stamp, [Vec<&Actor>; 3], Stamp) {
        (
            self.stamp,
            [
                sorted(&self.actors),
                sorted(&self.leaving),
                sorted(&self.retired),
            ],
            self.parent,
        )
    }

    /// Whether `other` should replace `self`.
    pub fn is_superseded_by(&self, other: &ClusterConfig) -> bool {
        // Every internal message carries a config: decide on the stamps
        // alone unless they tie, so the common case allocates nothing.
        match other.stamp.cmp(&self.stamp) {
            std::cmp::Ordering::Equal => other.sort_key() > self.sort_key(),
            order => order == std::cmp::Ordering::Greater,
        }
    }

    pub fn same_actors(&self, actors: &[Actor]) -> bool {
        sorted(&self.actors) == sorted(actors)
    }

    pub fn has_actor(&self, actor: &Actor) -> bool {
        self.actors.contains(actor)
    }

    /// Checks a config received from a peer: canonical, bounded, consistent.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.stamp.version == u64::MAX {
            return Err(ConfigError::VersionExhausted);
        }
        if !self.is_set() {
            return if self == &ClusterConfig::default() {
                Ok(())
            } else {
                Err(ConfigError::NotCanonical)
            };
        }
        let raw: Vec<String> = self.actors.iter().map(|a| a.to_string()).collect();
        if parse_actors(&raw)? != self.actors {
            return Err(ConfigError::NotCanonical);
        }
        if self.parent >= self.stamp {
            return Err(ConfigError::BadParent);
        }
        for list in [&self.leaving, &self.retired] {
            validate_departed(list.iter(), &self.actors)?;
        }
        if let Some(both) = self.leaving.iter().find(|a| self.retired.contains(a)) {
            return Err(ConfigError::Duplicate(both.clone()));
        }
        Ok(())
    }
}

fn sorted(actors: &[Actor]) -> Vec<&Actor> {
    let mut v: Vec<&Actor> = actors.iter().collect();
    v.sort();
    v
}

fn validate_departed<'a>(
    list: impl ExactSizeIterator<Item = &'a Actor>,
    actors: &[Actor],
) -> Result<(), ConfigError> {
    if list.len() > MAX_DEPARTED {
        return Err(ConfigError::TooManyDeparted);
    }
    for a in list {
        if Actor::parse(a.as_str()).as_ref() != Ok(a) {
            return Err(ConfigError::NotCanonical);
        }
        if actors.contains(a) {
            return Err(ConfigError::Overlap(a.clone()));
        }
    }
    Ok(())
}

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
    /// since (one that was an actor in between may have acknowledged more).
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
                || (self.config.leaving.contains(actor) && confirmed(self.config.parent)))
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
        let named: BTreeSet<&Actor> = next.everyone_in_config().collect();
        let orphans: Vec<Actor> = self
            .config
            .actors
            .iter()
            .chain(self.departed())
            .filter(|a| !named.contains(a))
            .cloned()
            .collect();
        next.orphans.extend(orphans);
        next.handed_off.extend(self.handed_off.iter().cloned());
        next.prune();
        Some(next)
    }

    fn everyone_in_config(&self) -> impl Iterator<Item = &Actor> {
        self.config
            .actors
            .iter()
            .chain(&self.config.leaving)
            .chain(&self.config.retired)
    }

    /// Drops what no longer matters: hand-offs under other stamps than this
    /// config's and its parent's, orphans the config names itself.
    fn prune(&mut self) {
        let keep = [self.config.stamp, self.config.parent];
        self.handed_off.retain(|h| keep.contains(&h.stamp));
        let config = &self.config;
        self.orphans.retain(|a| {
            !config.has_actor(a) && !config.leaving.contains(a) && !config.retired.contains(a)
        });
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
                parent: self.config.stamp,
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

    /// Checks a membership received from a peer.
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

/// The body of `POST /config`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigRequest {
    pub actors: Vec<String>,
    /// Leavers to stop waiting for (see [`Membership::post_forgetting`]).
    #[serde(default)]
    pub forget: Vec<String>,
}

/// Validates a posted actor list: non-empty, bounded, each parseable, no duplicates.
pub fn parse_actors(raw: &[String]) -> Result<Vec<Actor>, ConfigError> {
    if raw.is_empty() {
        return Err(ConfigError::NoActors);
    }
    if raw.len() > MAX_ACTORS {
        return Err(ConfigError::TooManyActors);
    }
    let mut out: Vec<Actor> = Vec::with_capacity(raw.len());
    for r in raw {
        let a = Actor::parse(r)?;
        if out.contains(&a) {
            return Err(ConfigError::Duplicate(a));
        }
        out.push(a);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn actors(v: &[&str]) -> Vec<Actor> {
        parse_actors(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn actors_are_canonicalised() {
        assert_eq!(Actor::parse("10.0.0.1").unwrap().as_str(), "10.0.0.1:7777");
        assert_eq!(
            Actor::parse(" 10.0.0.2:8000 ").unwrap().as_str(),
            "10.0.0.2:8000"
        );
        assert_eq!(Actor::parse("::1").unwrap().as_str(), "[::1]:7777");
        assert_eq!(Actor::parse("[::1]:9000").unwrap().as_str(), "[::1]:9000");
        assert_eq!(Actor::parse("Node-A:7777").unwrap().as_str(), "node-a:7777");
    }

    #[test]
    fn bad_actors_are_refused() {
        for bad in [
            "",
            "  ",
            "host",
            "host:",
            "host:0",
            "host:99999",
            "1.2.3.4:x",
            "a b:1",
            "-a:1",
            "[::1]",
            "http://x:1",
            "1.2.3.4:0",
        ] {
            assert!(Actor::parse(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn duplicates_after_canonicalisation_are_refused() {
        let raw = vec!["10.0.0.1".to_string(), "10.0.0.1:7777".to_string()];
        assert!(
            parse_actors(&raw)
                .unwrap_err()
                .to_string()
                .contains("twice")
        );
        assert!(parse_actors(&[]).is_err());
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
        assert_eq!(c2.config.parent, c1.stamp());
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
        assert_eq!(
            merged.orphans.iter().cloned().collect::<Vec<_>>(),
            vec![a("10.0.0.5")]
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
        parent.config.parent = parent.config.stamp;
        assert_eq!(parent.validate(), Err(ConfigError::BadParent));
        let mut exhausted = c1.clone();
        exhausted.config.stamp.version = u64::MAX;
        assert_eq!(exhausted.validate(), Err(ConfigError::VersionExhausted));
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
