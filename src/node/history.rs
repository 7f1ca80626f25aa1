//! The node's recent past, one sample a second, for the web console's
//! charts: a freshly opened page draws the last ten minutes at once.
//!
//! A task reads the node's own cumulative counts every second (increments
//! applied, consistent reads by outcome and their summed duration, as the
//! metrics record them), its peers' lag and reachability (as `/status`
//! reports them) and whether storage commits; [`Sample::between`] turns two
//! such readings into rates over the interval, and [`History`] keeps the
//! newest [`HISTORY_SAMPLES`] of them, dropping the oldest. Both are plain
//! data, tested without a runtime.
//!
//! Bounded: at most [`HISTORY_SAMPLES`] samples, each a fixed part and one
//! entry per peer, whose actor is shared with the sample before it while it
//! stays the same (see README, "Web console", for the bytes). Left out: any
//! history of the other nodes (each keeps its own), anything kept across a
//! restart, and percentiles (the read latency is the mean over the second).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

/// How often a sample is taken.
pub const HISTORY_INTERVAL: Duration = Duration::from_secs(1);
/// Most samples kept: ten minutes at one a second.
pub const HISTORY_SAMPLES: usize = 600;

/// The node's cumulative counts at one instant.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Reading {
    /// Increments applied since start (not replays).
    pub increments: u64,
    /// Consistent reads answered 200 since start.
    pub consistent_ok: u64,
    /// Consistent reads that could not hear from every node they needed
    /// (503), or had no config.
    pub consistent_failed: u64,
    /// Seconds spent in consistent reads since start, all outcomes.
    pub consistent_seconds: f64,
    /// Whether storage commits right now.
    pub storage_healthy: bool,
    pub peers: Vec<PeerLag>,
}

/// One peer as a sample records it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerLag {
    pub actor: Arc<str>,
    /// Changes the peer had that this node had not merged at its last pull.
    pub lag_changes: u64,
    /// `None` until a call to it has ended.
    pub reachable: Option<bool>,
}

/// One interval of the node's life, ending at `at_ms`.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// Unix time in milliseconds at the end of the interval.
    pub at_ms: u64,
    pub increments_per_sec: f64,
    pub consistent_ok_per_sec: f64,
    pub consistent_failed_per_sec: f64,
    /// Mean duration of the consistent reads that ended in the interval,
    /// in milliseconds; `None` when none did.
    pub consistent_read_ms: Option<f64>,
    pub storage_healthy: bool,
    pub peers: Vec<PeerLag>,
}

impl Sample {
    /// The rates between two readings `elapsed` apart (an `elapsed` of zero
    /// counts as a millisecond); lag, reachability and health are `now`'s.
    pub fn between(before: &Reading, now: &Reading, elapsed: Duration, at_ms: u64) -> Sample {
        let secs = elapsed.as_secs_f64().max(0.001);
        let rate = |a: u64, b: u64| b.saturating_sub(a) as f64 / secs;
        let reads = (now.consistent_ok + now.consistent_failed)
            .saturating_sub(before.consistent_ok + before.consistent_failed);
        let consistent_read_ms = (reads > 0).then(|| {
            (now.consistent_seconds - before.consistent_seconds).max(0.0) * 1000.0 / reads as f64
        });
        Sample {
            at_ms,
            increments_per_sec: rate(before.increments, now.increments),
            consistent_ok_per_sec: rate(before.consistent_ok, now.consistent_ok),
            consistent_failed_per_sec: rate(before.consistent_failed, now.consistent_failed),
            consistent_read_ms,
            storage_healthy: now.storage_healthy,
            peers: now.peers.clone(),
        }
    }
}

/// The newest samples, oldest first, at most `capacity` of them.
#[derive(Debug)]
pub struct History {
    samples: VecDeque<Sample>,
    capacity: usize,
}

impl Default for History {
    fn default() -> Self {
        History::new(HISTORY_SAMPLES)
    }
}

impl History {
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        History {
            samples: VecDeque::with_capacity(capacity),
            capacity,
        }
    }

    /// Adds the newest sample, dropping the oldest when full. A peer's
    /// actor is shared with the newest sample's while it is the same, so
    /// the ring holds one copy of each actor, not one per sample.
    pub fn push(&mut self, mut sample: Sample) {
        if let Some(last) = self.samples.back() {
            for p in &mut sample.peers {
                if let Some(same) = last.peers.iter().find(|q| q.actor == p.actor) {
                    p.actor = same.actor.clone();
                }
            }
        }
        if self.samples.len() == self.capacity {
            self.samples.pop_front();
        }
        self.samples.push_back(sample);
    }

    pub fn len(&self) -> usize {
        self.samples.len()
    }

    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Every sample kept, oldest first.
    pub fn samples(&self) -> impl Iterator<Item = &Sample> {
        self.samples.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(at_ms: u64) -> Sample {
        Sample::between(
            &Reading::default(),
            &Reading::default(),
            HISTORY_INTERVAL,
            at_ms,
        )
    }

    #[test]
    fn the_ring_is_bounded_and_drops_the_oldest() {
        let mut h = History::new(5);
        assert!(h.is_empty());
        for at in 0..12 {
            h.push(sample(at));
            assert!(h.len() <= 5, "{} samples", h.len());
        }
        let kept: Vec<u64> = h.samples().map(|s| s.at_ms).collect();
        assert_eq!(kept, vec![7, 8, 9, 10, 11], "the newest five, oldest first");
        assert_eq!(h.capacity(), 5);
        assert_eq!(History::default().capacity(), HISTORY_SAMPLES);
        // The default holds ten minutes and no more.
        let mut h = History::default();
        for at in 0..(HISTORY_SAMPLES as u64 + 50) {
            h.push(sample(at));
        }
        assert_eq!(h.len(), HISTORY_SAMPLES);
        assert_eq!(h.samples().next().map(|s| s.at_ms), Some(50));
    }

    #[test]
    fn rates_are_counts_over_the_elapsed_time() {
        let before = Reading {
            increments: 100,
            consistent_ok: 10,
            consistent_failed: 1,
            consistent_seconds: 0.5,
            storage_healthy: true,
            peers: Vec::new(),
        };
        let now = Reading {
            increments: 130,
            consistent_ok: 14,
            consistent_failed: 2,
            consistent_seconds: 0.5 + 0.1,
            storage_healthy: false,
            peers: vec![PeerLag {
                actor: "10.0.0.2:7777".into(),
                lag_changes: 7,
                reachable: Some(false),
            }],
        };
        // 30 increments over 2 s: 15/s, not 30/s.
        let s = Sample::between(&before, &now, Duration::from_secs(2), 42);
        assert_eq!(s.at_ms, 42);
        assert_eq!(s.increments_per_sec, 15.0);
        assert_eq!(s.consistent_ok_per_sec, 2.0);
        assert_eq!(s.consistent_failed_per_sec, 0.5);
        // 0.1 s over 5 reads that ended in the interval: 20 ms each.
        let mean = s.consistent_read_ms.expect("reads ended");
        assert!((mean - 20.0).abs() < 1e-9, "{mean}");
        // State is the newer reading's.
        assert!(!s.storage_healthy);
        assert_eq!(s.peers, now.peers);
        // Half a second: rates double.
        let s = Sample::between(&before, &now, Duration::from_millis(500), 43);
        assert_eq!(s.increments_per_sec, 60.0);
        // No reads ended: no latency, not zero.
        let s = Sample::between(&now, &now, HISTORY_INTERVAL, 44);
        assert_eq!(s.consistent_read_ms, None);
        assert_eq!(s.increments_per_sec, 0.0);
        // A zero interval does not divide by zero.
        let s = Sample::between(&before, &now, Duration::ZERO, 45);
        assert!(s.increments_per_sec.is_finite());
    }

    #[test]
    fn an_actor_is_kept_once_however_many_samples_name_it() {
        let mut h = History::new(10);
        for at in 0..10 {
            let mut s = sample(at);
            s.peers = vec![PeerLag {
                actor: Arc::from("10.0.0.2:7777"),
                lag_changes: at,
                reachable: Some(true),
            }];
            h.push(s);
        }
        let first = &h.samples().next().unwrap().peers[0].actor;
        for s in h.samples() {
            assert!(Arc::ptr_eq(first, &s.peers[0].actor));
        }
        assert_eq!(Arc::strong_count(first), 10);
    }

    /// What README states of the ring's memory: a sample of 80 bytes plus
    /// 32 per peer (and each actor's text once).
    #[test]
    fn a_sample_is_as_small_as_the_readme_says() {
        assert!(std::mem::size_of::<Sample>() <= 80);
        assert!(std::mem::size_of::<PeerLag>() <= 32);
    }
}
