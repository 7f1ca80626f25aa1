//! Cluster membership: parsing actor addresses and ordering config versions.
//!
//! A config is the list of every node's address plus a *stamp* (version,
//! origin node). Posting a config whose set of actors differs from the
//! current one creates the next version; every node adopts the highest stamp
//! it sees, so conflicting posts end the same way everywhere (SPEC G8). An
//! identical re-post is a no-op. This module is pure: resolving and
//! contacting actors happens elsewhere.

use std::net::{IpAddr, SocketAddr};

use serde::{Deserialize, Serialize};

/// The port an actor listens on when its address names none.
pub const DEFAULT_PORT: u16 = 7777;
/// Most actors a config may list.
pub const MAX_ACTORS: usize = 256;
const MAX_ACTOR_LEN: usize = 262;

/// One node's address in canonical form: `ip:port`, `[v6]:port` or `host:port`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Actor(String);

impl Actor {
    /// Parses an actor as the SPEC allows: an IP address (port 7777
    /// implied), `host:port`, or `[v6]:port`; returns it in canonical form.
    pub fn parse(raw: &str) -> Result<Actor, String> {
        let s = raw.trim();
        if s.is_empty() {
            return Err("an actor is empty".into());
        }
        if s.len() > MAX_ACTOR_LEN {
            return Err(format!("actor {raw:?} is too long"));
        }
        if let Ok(ip) = s.parse::<IpAddr>() {
            return Ok(Actor(SocketAddr::new(ip, DEFAULT_PORT).to_string()));
        }
        if let Ok(sa) = s.parse::<SocketAddr>() {
            if sa.port() == 0 {
                return Err(format!("actor {raw:?} has port 0"));
            }
            return Ok(Actor(sa.to_string()));
        }
        let bad = || format!("actor {raw:?} is not an IP address, host:port or [v6]:port");
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
/// actor list itself, so any two distinct configs compare the same way on
/// every node.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Stamp {
    pub version: u64,
    pub origin: u64,
}

/// A versioned cluster configuration.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterConfig {
    pub stamp: Stamp,
    /// In the order they were posted; no duplicates.
    pub actors: Vec<Actor>,
}

impl ClusterConfig {
    /// Whether this node has received any config yet (before one, it is a cluster of one).
    pub fn is_set(&self) -> bool {
        self.stamp.version > 0
    }

    fn sort_key(&self) -> (Stamp, Vec<&Actor>) {
        (self.stamp, self.sorted_actors())
    }

    fn sorted_actors(&self) -> Vec<&Actor> {
        let mut v: Vec<&Actor> = self.actors.iter().collect();
        v.sort();
        v
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
        let mut theirs: Vec<&Actor> = actors.iter().collect();
        theirs.sort();
        self.sorted_actors() == theirs
    }

    /// The config that a post of `actors` at node `origin` produces, or `None`
    /// when it names exactly the current actors (a no-op).
    pub fn next(&self, actors: Vec<Actor>, origin: u64) -> Option<ClusterConfig> {
        if self.is_set() && self.same_actors(&actors) {
            return None;
        }
        Some(ClusterConfig {
            stamp: Stamp {
                version: self.stamp.version.saturating_add(1),
                origin,
            },
            actors,
        })
    }
}

/// The body of `POST /config`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigRequest {
    pub actors: Vec<String>,
}

/// Validates a posted actor list: non-empty, bounded, each parseable, no duplicates.
pub fn parse_actors(raw: &[String]) -> Result<Vec<Actor>, String> {
    if raw.is_empty() {
        return Err("actors must list at least one address".into());
    }
    if raw.len() > MAX_ACTORS {
        return Err(format!("at most {MAX_ACTORS} actors are allowed"));
    }
    let mut out: Vec<Actor> = Vec::with_capacity(raw.len());
    for r in raw {
        let a = Actor::parse(r)?;
        if out.contains(&a) {
            return Err(format!("actor {a} is listed twice"));
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
        assert!(parse_actors(&raw).unwrap_err().contains("twice"));
        assert!(parse_actors(&[]).is_err());
    }

    #[test]
    fn identical_repost_is_a_noop_and_a_change_bumps_the_version() {
        let c0 = ClusterConfig::default();
        let c1 = c0.next(actors(&["10.0.0.1", "10.0.0.2"]), 1).unwrap();
        assert_eq!(
            c1.stamp,
            Stamp {
                version: 1,
                origin: 1
            }
        );
        assert!(c1.next(actors(&["10.0.0.2", "10.0.0.1"]), 2).is_none());
        let c2 = c1.next(actors(&["10.0.0.1"]), 2).unwrap();
        assert_eq!(c2.stamp.version, 2);
        assert!(c1.is_superseded_by(&c2));
        assert!(!c2.is_superseded_by(&c1));
    }

    #[test]
    fn concurrent_posts_resolve_the_same_way_everywhere() {
        let base = ClusterConfig::default();
        let a = base.next(actors(&["10.0.0.1"]), 1).unwrap();
        let b = base.next(actors(&["10.0.0.2"]), 2).unwrap();
        assert!(a.is_superseded_by(&b));
        assert!(!b.is_superseded_by(&a));
        // Same stamp, different actors (cannot happen from one origin, but
        // the order must still be total).
        let c = ClusterConfig {
            stamp: b.stamp,
            actors: actors(&["10.0.0.3"]),
        };
        assert!(b.is_superseded_by(&c) != c.is_superseded_by(&b));
    }
}
