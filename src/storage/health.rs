//! Whether storage works, as the writer last found it, for `/status`,
//! `/metrics` and the logs.
//!
//! Storage is unhealthy while the writer is in a failure episode (a commit
//! failed and the database has not been reopened and probed since), or while
//! a commit has been running for longer than the storage deadline (a stalled
//! disk). Each episode is logged once at ERROR when it starts and once when
//! it ends.
//!
//! What it hands out ([`HealthView`]) is plain data with typed durations:
//! the JSON `/status` shows of it is `api::types::HealthReport`, so storage
//! can change how it keeps health without changing the public body.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use super::Salvage;
use crate::metrics::Metrics;

/// Places found damaged that `/status` lists (the oldest are dropped).
const DAMAGE_SHOWN: usize = 16;

/// Shared between the writer (which records) and the node (which reports).
pub struct Health {
    state: Mutex<State>,
    /// Past this, a running commit counts as a stalled disk.
    stall_after: Duration,
    metrics: Metrics,
}

#[derive(Default)]
struct State {
    /// When the current failure episode began, and the error that began it.
    failing: Option<(Instant, String)>,
    /// The latest error seen, healthy or not.
    last_error: Option<(Instant, String)>,
    commit_started: Option<Instant>,
    errors: u64,
    recoveries: u64,
    damage: Vec<String>,
    damage_found: u64,
    salvaged: Vec<Salvage>,
    /// When the last scrub pass ended, and what it found.
    scrub: Option<(Instant, ScrubView)>,
}

/// The last scrub pass over the data folder's files.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ScrubView {
    /// Passes finished since the node started.
    pub passes: u64,
    pub bytes: u64,
    pub took: Duration,
    /// Places the pass found damaged (each repaired from memory).
    pub damage: u64,
    /// How long ago the pass ended, as of the view.
    pub ended_ago: Duration,
}

/// Storage's health as of one moment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HealthView {
    pub healthy: bool,
    /// Why not, when unhealthy.
    pub problem: Option<String>,
    /// How long storage has been unhealthy.
    pub unhealthy_for: Option<Duration>,
    /// The latest error seen, healthy or not, and how long ago.
    pub last_error: Option<String>,
    pub last_error_ago: Option<Duration>,
    /// Failed commits and recovery attempts since start.
    pub errors: u64,
    /// Failure episodes that ended with the database reopened.
    pub recoveries: u64,
    /// Places in the data folder's files found damaged since the node
    /// started (when it opened them, or by the scrub), and the latest of
    /// them (the oldest are dropped).
    pub damage_found: u64,
    pub damage: Vec<String>,
    /// Damage found when the folder was opened, now or by an earlier run,
    /// and how the node went on (stored in the folder).
    pub salvaged: Vec<Salvage>,
    pub scrub: Option<ScrubView>,
}

impl Health {
    pub fn new(stall_after: Duration, metrics: Metrics) -> Self {
        metrics.storage_healthy.set(1);
        Health {
            state: Mutex::new(State::default()),
            stall_after,
            metrics,
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn commit_started(&self) {
        self.state().commit_started = Some(Instant::now());
    }

    pub fn commit_finished(&self) {
        self.state().commit_started = None;
    }

    /// Records an error; returns true when it starts a failure episode.
    pub fn failed(&self, error: &str) -> bool {
        let now = Instant::now();
        let mut s = self.state();
        s.errors += 1;
        s.last_error = Some((now, error.to_string()));
        self.metrics.storage_errors.inc();
        self.metrics.storage_healthy.set(0);
        if s.failing.is_none() {
            s.failing = Some((now, error.to_string()));
            return true;
        }
        false
    }

    /// Ends the failure episode; returns how long it lasted.
    pub fn recovered(&self) -> Option<Duration> {
        let mut s = self.state();
        let (since, _) = s.failing.take()?;
        s.recoveries += 1;
        self.metrics.storage_recoveries.inc();
        self.metrics.storage_healthy.set(1);
        Some(since.elapsed())
    }

    /// Records a place found damaged.
    pub fn damage_found(&self, what: String) {
        let mut s = self.state();
        s.damage_found += 1;
        s.damage.push(what);
        let drop = s.damage.len().saturating_sub(DAMAGE_SHOWN);
        s.damage.drain(..drop);
        self.metrics.storage_damage.inc();
    }

    /// The salvages recorded in the folder.
    pub fn set_salvaged(&self, salvaged: Vec<Salvage>) {
        self.metrics
            .storage_salvages
            .set(i64::try_from(salvaged.len()).unwrap_or(i64::MAX));
        self.state().salvaged = salvaged;
    }

    /// Records a finished scrub pass.
    pub fn scrubbed(&self, bytes: u64, took: Duration, damage: u64) {
        let mut s = self.state();
        let passes = s.scrub.as_ref().map_or(0, |(_, r)| r.passes) + 1;
        s.scrub = Some((
            Instant::now(),
            ScrubView {
                passes,
                bytes,
                took,
                damage,
                ended_ago: Duration::ZERO,
            },
        ));
        self.metrics.storage_scrub_passes.inc();
    }

    pub fn is_healthy(&self) -> bool {
        self.report().healthy
    }

    pub fn report(&self) -> HealthView {
        let now = Instant::now();
        let s = self.state();
        let stalled = s
            .commit_started
            .filter(|t| now.duration_since(*t) > self.stall_after);
        let (problem, since) = match (&s.failing, stalled) {
            (Some((since, e)), _) => (Some(e.clone()), Some(*since)),
            (None, Some(t)) => (
                Some(format!(
                    "a commit has been running for {:?} (stalled disk?)",
                    now.duration_since(t)
                )),
                Some(t),
            ),
            (None, None) => (None, None),
        };
        // The gauge follows stalls too, since a scrape reads it here.
        self.metrics
            .storage_healthy
            .set(i64::from(problem.is_none()));
        HealthView {
            healthy: problem.is_none(),
            problem,
            unhealthy_for: since.map(|t| now.duration_since(t)),
            last_error: s.last_error.as_ref().map(|(_, e)| e.clone()),
            last_error_ago: s.last_error.as_ref().map(|(t, _)| now.duration_since(*t)),
            errors: s.errors,
            recoveries: s.recoveries,
            damage_found: s.damage_found,
            damage: s.damage.clone(),
            salvaged: s.salvaged.clone(),
            scrub: s.scrub.as_ref().map(|(at, r)| ScrubView {
                ended_ago: now.duration_since(*at),
                ..r.clone()
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn an_episode_starts_once_and_ends_on_recovery() {
        let h = Health::new(Duration::from_secs(5), Metrics::default());
        assert!(h.is_healthy());
        assert!(h.failed("disk full"), "the first error starts an episode");
        assert!(!h.failed("still full"), "later errors do not");
        let r = h.report();
        assert!(!r.healthy);
        assert_eq!(r.problem.as_deref(), Some("disk full"));
        assert_eq!(r.last_error.as_deref(), Some("still full"));
        assert_eq!(r.errors, 2);
        tokio::time::advance(Duration::from_secs(3)).await;
        assert_eq!(h.recovered(), Some(Duration::from_secs(3)));
        assert_eq!(h.recovered(), None);
        let r = h.report();
        assert!(r.healthy);
        assert_eq!(r.recoveries, 1);
        assert_eq!(r.last_error_ago, Some(Duration::from_secs(3)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_commit_running_past_the_deadline_is_a_stall() {
        let m = Metrics::default();
        let h = Health::new(Duration::from_secs(5), m.clone());
        h.commit_started();
        tokio::time::advance(Duration::from_secs(4)).await;
        assert!(h.is_healthy(), "a slow commit is not yet a stall");
        tokio::time::advance(Duration::from_secs(2)).await;
        let r = h.report();
        assert!(!r.healthy);
        assert!(r.problem.unwrap().contains("stalled"));
        assert!(m.encode().contains("tally_storage_healthy 0"));
        h.commit_finished();
        assert!(h.is_healthy());
        assert!(m.encode().contains("tally_storage_healthy 1"));
    }
}
