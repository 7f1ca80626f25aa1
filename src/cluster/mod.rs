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

use std::net::{IpAddr, SocketAddr};

use serde::{Deserialize, Serialize};

mod membership;

pub use membership::{Handoff, Membership, Standing};

/// The port an actor listens on when its address names none.
pub const DEFAULT_PORT: u16 = 7777;
/// Most actors a config may list.
pub const MAX_ACTORS: usize = 256;
/// Most ancestors a config remembers.
pub const MAX_LINEAGE: usize = 64;
/// Most actors a config may remember as leaving or retired, and a
/// membership as orphans or hand-offs.
pub const MAX_DEPARTED: usize = 4096;
const MAX_ACTOR_LEN: usize = 262;
/// Most a config version received from a peer may be ahead of this node's.
///
/// Posts add one to the version, so a real cluster never comes near it,
/// while a forged message cannot push the version to its end in one step:
/// from 0, exhausting it would take 2^44 forged messages, and a `POST
/// /config` (which adds one) always wins over what was forged before.
pub const MAX_VERSION_STEP: u64 = 1 << 20;

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
    #[error(
        "config version {theirs} is more than {MAX_VERSION_STEP} ahead of this node's ({ours})"
    )]
    VersionJump { theirs: u64, ours: u64 },
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
    /// The stamps of the configs this one was made from, its parent first
    /// (at most [`MAX_LINEAGE`]): whether a config descends from another.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lineage: Vec<Stamp>,
}

impl ClusterConfig {
    /// Whether this node has received any config yet (before one, it is a cluster of one).
    pub fn is_set(&self) -> bool {
        self.stamp.version > 0
    }

    fn sort_key(&self) -> (Stamp, [Vec<&Actor>; 3], &[Stamp]) {
        (
            self.stamp,
            [
                sorted(&self.actors),
                sorted(&self.leaving),
                sorted(&self.retired),
            ],
            &self.lineage,
        )
    }

    /// The stamp of the config this one was made from (zero for a first one).
    pub fn parent(&self) -> Stamp {
        self.lineage.first().copied().unwrap_or_default()
    }

    /// Whether this config was made, step by step, from the one stamped
    /// `ancestor` (as far back as the lineage remembers).
    pub fn descends_from(&self, ancestor: Stamp) -> bool {
        self.lineage.contains(&ancestor)
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
        if self.lineage.len() > MAX_LINEAGE
            || self.lineage.first().is_some_and(|p| *p >= self.stamp)
            || self.lineage.windows(2).any(|w| w[1] >= w[0])
        {
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

pub(crate) fn validate_departed<'a>(
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
}
