//! Whether storage works, as the writer last found it, for `/status`,
//! `/metrics` and the logs.
//!
//! Storage is unhealthy while the writer is in a failure episode (a commit
//! failed and the database has not been reopened and probed since), or while
//! a commit has been running for longer than the storage deadline (a stalled
//! disk). Each episode is logged once at ERROR when it starts and once when
//! it ends.

use std::sync::Mutex;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::metrics::Metrics;

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
}

/// What `/status` shows of storage.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct HealthReport {
    pub healthy: bool,
    /// Why not, when unhealthy.
    pub problem: Option<String>,
    /// How long storage has been unhealthy.
    pub unhealthy_for_ms: Option<u128>,
    pub last_error: Option<String>,
    pub last_error_ms_ago: Option<u128>,
    /// Failed commits and recovery attempts since start.
    pub errors: u64,
    /// Failure episodes that ended with the database reopened.
    pub recoveries: u64,
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

    pub fn is_healthy(&self) -> bool {
        self.report().healthy
    }

    pub fn report(&self) -> HealthReport {
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
        HealthReport {
            healthy: problem.is_none(),
            problem,
            unhealthy_for_ms: since.map(|t| now.duration_since(t).as_millis()),
            last_error: s.last_error.as_ref().map(|(_, e)| e.clone()),
            last_error_ms_ago: s
                .last_error
                .as_ref()
                .map(|(t, _)| now.duration_since(*t).as_millis()),
            errors: s.errors,
            recoveries: s.recoveries,
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
        assert_eq!(r.last_error_ms_ago, Some(3000));
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
