//! Remembered idempotency keys: a retry with the same key gets the first
//! answer again instead of a second increment.
//!
//! Keys are stored in the same commit as the increment they name, so a key
//! is remembered exactly when its increment is durable, also across a
//! restart. Memory is bounded, in keys and in bytes (a batch's key
//! remembers one value per item): keys older than the window, and the
//! oldest keys beyond either bound, are forgotten (deleted in the next
//! commit). A forgotten key is a new key: that is the documented limit of
//! the window.

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

/// What one remembered key costs in memory, roughly: its text, its
/// record, and the bookkeeping around them.
pub fn record_bytes(key: &str, record: &KeyRecord) -> usize {
    const OVERHEAD: usize = 96;
    2 * key.len() + record.fingerprint.len() + 16 * record.values.len() + OVERHEAD
}

/// The remembered keys, oldest first.
pub struct Keys {
    map: HashMap<String, KeyRecord>,
    order: VecDeque<(u64, String)>,
    window: Duration,
    capacity: usize,
    /// Most bytes remembered (see [`record_bytes`]), and how many are.
    max_bytes: usize,
    bytes: usize,
}

impl Keys {
    pub fn new(
        mut loaded: Vec<(String, KeyRecord)>,
        window: Duration,
        capacity: usize,
        max_bytes: usize,
    ) -> Self {
        loaded.sort_by_key(|(_, r)| r.created_ms);
        let order = loaded
            .iter()
            .map(|(k, r)| (r.created_ms, k.clone()))
            .collect();
        let bytes = loaded.iter().map(|(k, r)| record_bytes(k, r)).sum();
        Keys {
            map: loaded.into_iter().collect(),
            order,
            window,
            capacity: capacity.max(1),
            max_bytes,
            bytes,
        }
    }

    /// Bytes the remembered keys take (see [`record_bytes`]).
    pub fn bytes(&self) -> usize {
        self.bytes
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

    /// The keys to forget so that `adding` fit, as of `now_ms`: expired
    /// ones, and the oldest beyond the capacity or the bytes.
    pub fn expired(&self, now_ms: u64, adding: &[(String, KeyRecord)]) -> Vec<String> {
        let window_ms = u64::try_from(self.window.as_millis()).unwrap_or(u64::MAX);
        let over = (self.map.len() + adding.len()).saturating_sub(self.capacity);
        let adding_bytes: usize = adding.iter().map(|(k, r)| record_bytes(k, r)).sum();
        let mut bytes = self.bytes + adding_bytes;
        self.order
            .iter()
            .enumerate()
            .take_while(|(i, (created, key))| {
                let go = *i < over
                    || created.saturating_add(window_ms) <= now_ms
                    || bytes > self.max_bytes;
                if go {
                    bytes -= self.map.get(key).map_or(0, |r| record_bytes(key, r));
                }
                go
            })
            .map(|(_, (_, k))| k.clone())
            .collect()
    }

    /// Applies a committed change.
    pub fn apply(&mut self, removed: &[String], added: Vec<(String, KeyRecord)>) {
        for k in removed {
            if let Some(r) = self.map.remove(k) {
                self.bytes -= record_bytes(k, &r);
            }
        }
        let removed_count = removed.len().min(self.order.len());
        self.order.drain(..removed_count);
        for (k, r) in added {
            if let Some(old) = self.map.get(&k) {
                // An expired key used again: drop its old place in the order.
                self.bytes -= record_bytes(&k, old);
                self.order.retain(|(_, old)| old != &k);
            }
            self.bytes += record_bytes(&k, &r);
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
        let mut keys = Keys::new(Vec::new(), Duration::from_millis(100), 3, usize::MAX);
        keys.apply(&[], vec![("a".into(), rec(0)), ("b".into(), rec(50))]);
        assert!(keys.expired(60, &[]).is_empty());
        assert_eq!(keys.expired(100, &[]), ["a"]);
        // Capacity: adding two to two leaves room for one more than three.
        assert_eq!(
            keys.expired(60, &[("x".into(), rec(60)), ("y".into(), rec(60))]),
            ["a"]
        );
        assert!(keys.get("a", 99).is_some());
        assert!(
            keys.get("a", 100).is_none(),
            "past its window a key is unknown"
        );
        let gone = keys.expired(100, &[]);
        keys.apply(&gone, vec![("c".into(), rec(100))]);
        assert!(keys.get("a", 100).is_none());
        assert_eq!(keys.len(), 2);
        assert_eq!(keys.expired(149, &[]), Vec::<String>::new());
        assert_eq!(keys.expired(150, &[]), ["b"]);
    }

    #[test]
    fn an_expired_key_used_again_is_kept_once() {
        let mut keys = Keys::new(Vec::new(), Duration::from_millis(100), 10, usize::MAX);
        keys.apply(&[], vec![("a".into(), rec(0)), ("b".into(), rec(10))]);
        // "a" expired at 100 and is used again at 105, before anything was forgotten.
        keys.apply(&[], vec![("a".into(), rec(105))]);
        assert_eq!(keys.len(), 2);
        assert_eq!(keys.expired(111, &[]), ["b"]);
        let gone = keys.expired(111, &[]);
        keys.apply(&gone, Vec::new());
        assert_eq!(keys.get("a", 150).map(|r| r.created_ms), Some(105));
    }

    #[test]
    fn keys_are_forgotten_oldest_first_beyond_the_bytes() {
        let big = |t: u64| KeyRecord {
            fingerprint: "f".into(),
            values: vec![1; 1000],
            created_ms: t,
        };
        let one = record_bytes("a", &big(0));
        let mut keys = Keys::new(Vec::new(), Duration::from_secs(3600), 1000, 2 * one);
        keys.apply(&[], vec![("a".into(), big(0)), ("b".into(), big(1))]);
        assert_eq!(keys.bytes(), 2 * one);
        let adding = [("c".to_string(), big(2))];
        let gone = keys.expired(3, &adding);
        assert_eq!(gone, ["a"], "one key makes room for one more");
        keys.apply(&gone, adding.to_vec());
        assert_eq!(keys.bytes(), 2 * one);
        assert!(keys.get("a", 3).is_none() && keys.get("c", 3).is_some());
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
