//! Remembered idempotency keys: a retry with the same key gets the first
//! answer again instead of a second increment.
//!
//! Keys are stored in the same commit as the increment they name, so a key
//! is remembered exactly when its increment is durable, also across a
//! restart. Memory is bounded: keys older than the window, and the oldest
//! keys beyond the capacity, are forgotten (deleted in the next commit). A
//! forgotten key is a new key: that is the documented limit of the window.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// What a key remembers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRecord {
    /// Identifies the request (names and amounts) the key was first used with.
    pub fingerprint: String,
    /// The values answered the first time.
    pub values: Vec<u128>,
    /// Milliseconds since the Unix epoch when the key was first used.
    pub created_ms: u64,
}

/// A stable description of an increment request: FNV-1a (128 bit) over the
/// names and amounts, so a batch of any size fits in a few bytes and the
/// value survives upgrades.
pub fn fingerprint(items: &[(String, u64)]) -> String {
    const PRIME: u128 = 0x0000_0000_0100_0000_0000_0000_0000_013B;
    let mut h: u128 = 0x6c62_272e_07bb_0142_62b8_2175_6295_c58d;
    let mut feed = |bytes: &[u8]| {
        for &b in bytes {
            h ^= u128::from(b);
            h = h.wrapping_mul(PRIME);
        }
    };
    for (name, amount) in items {
        feed(&(name.len() as u64).to_le_bytes());
        feed(name.as_bytes());
        feed(&amount.to_le_bytes());
    }
    format!("{}:{h:032x}", items.len())
}

/// The remembered keys, oldest first.
pub struct Keys {
    map: HashMap<String, KeyRecord>,
    order: VecDeque<(u64, String)>,
    window: Duration,
    capacity: usize,
}

impl Keys {
    pub fn new(mut loaded: Vec<(String, KeyRecord)>, window: Duration, capacity: usize) -> Self {
        loaded.sort_by_key(|(_, r)| r.created_ms);
        let order = loaded
            .iter()
            .map(|(k, r)| (r.created_ms, k.clone()))
            .collect();
        Keys {
            map: loaded.into_iter().collect(),
            order,
            window,
            capacity: capacity.max(1),
        }
    }

    /// The record of a key still inside its window at `now_ms`.
    pub fn get(&self, key: &str, now_ms: u64) -> Option<&KeyRecord> {
        let window_ms = u64::try_from(self.window.as_millis()).unwrap_or(u64::MAX);
        self.map
            .get(key)
            .filter(|r| r.created_ms.saturating_add(window_ms) > now_ms)
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Every remembered key with its record.
    pub fn records(&self) -> Vec<(String, KeyRecord)> {
        self.map
            .iter()
            .map(|(k, r)| (k.clone(), r.clone()))
            .collect()
    }

    /// The keys to forget so that `adding` more fit, as of `now_ms`.
    pub fn expired(&self, now_ms: u64, adding: usize) -> Vec<String> {
        let window_ms = u64::try_from(self.window.as_millis()).unwrap_or(u64::MAX);
        let over = (self.map.len() + adding).saturating_sub(self.capacity);
        self.order
            .iter()
            .enumerate()
            .take_while(|(i, (created, _))| {
                *i < over || created.saturating_add(window_ms) <= now_ms
            })
            .map(|(_, (_, k))| k.clone())
            .collect()
    }

    /// Applies a committed change.
    pub fn apply(&mut self, removed: &[String], added: Vec<(String, KeyRecord)>) {
        for k in removed {
            self.map.remove(k);
        }
        let removed_count = removed.len().min(self.order.len());
        self.order.drain(..removed_count);
        for (k, r) in added {
            if self.map.contains_key(&k) {
                // An expired key used again: drop its old place in the order.
                self.order.retain(|(_, old)| old != &k);
            }
            self.order.push_back((r.created_ms, k.clone()));
            self.map.insert(k, r);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(t: u64) -> KeyRecord {
        KeyRecord {
            fingerprint: "f".into(),
            values: vec![1],
            created_ms: t,
        }
    }

    #[test]
    fn keys_expire_by_age_and_by_capacity_oldest_first() {
        let mut keys = Keys::new(Vec::new(), Duration::from_millis(100), 3);
        keys.apply(&[], vec![("a".into(), rec(0)), ("b".into(), rec(50))]);
        assert!(keys.expired(60, 0).is_empty());
        assert_eq!(keys.expired(100, 0), ["a"]);
        // Capacity: adding two to two leaves room for one more than three.
        assert_eq!(keys.expired(60, 2), ["a"]);
        assert!(keys.get("a", 99).is_some());
        assert!(
            keys.get("a", 100).is_none(),
            "past its window a key is unknown"
        );
        let gone = keys.expired(100, 0);
        keys.apply(&gone, vec![("c".into(), rec(100))]);
        assert!(keys.get("a", 100).is_none());
        assert_eq!(keys.len(), 2);
        assert_eq!(keys.expired(149, 0), Vec::<String>::new());
        assert_eq!(keys.expired(150, 0), ["b"]);
    }

    #[test]
    fn an_expired_key_used_again_is_kept_once() {
        let mut keys = Keys::new(Vec::new(), Duration::from_millis(100), 10);
        keys.apply(&[], vec![("a".into(), rec(0)), ("b".into(), rec(10))]);
        // "a" expired at 100 and is used again at 105, before anything was forgotten.
        keys.apply(&[], vec![("a".into(), rec(105))]);
        assert_eq!(keys.len(), 2);
        assert_eq!(keys.expired(111, 0), ["b"]);
        let gone = keys.expired(111, 0);
        keys.apply(&gone, Vec::new());
        assert_eq!(keys.get("a", 150).map(|r| r.created_ms), Some(105));
    }

    #[test]
    fn fingerprints_tell_requests_apart() {
        let a = fingerprint(&[("a".into(), 1)]);
        assert_eq!(a, fingerprint(&[("a".into(), 1)]));
        assert_ne!(a, fingerprint(&[("a".into(), 2)]));
        assert_ne!(a, fingerprint(&[("b".into(), 1)]));
        assert_ne!(
            fingerprint(&[("ab".into(), 1)]),
            fingerprint(&[("a".into(), 1), ("b".into(), 1)])
        );
    }
}
