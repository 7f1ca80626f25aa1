//! Consistent reads (SPEC G1, G5): hear, during this request, from every
//! node whose acknowledged increments might be missing here.
//!
//! [`ReadRound`](super::read_round::ReadRound) decides; this file only
//! makes the calls, all polled in the request's own task (no task per
//! read). Every actor the round names is asked in parallel (calls to one
//! peer are gathered with other reads' in `read_batch.rs`), each
//! silent one retried with a short pause so a healed network is noticed at
//! once, until the deadline; answers and memberships learned on the way go
//! back to the round.
//!
//! [`Reads`] is all a read needs of the node: the store, the messenger,
//! which actor this node is, a deadline per call, metrics and the node's
//! task tracker.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::Whoami;
use super::read_batch::{Answer, ReadBatcher};
use super::read_round::{Gathered, Incomplete, Next, ReadRound};
use crate::cluster::{Actor, Membership};
use crate::messenger::Messenger;
use crate::metrics::{Metrics, Outcome};
use crate::storage::Store;

/// What consistent reads need of the node.
pub struct Reads {
    pub(super) store: Store,
    pub(super) messenger: Messenger,
    /// Which actor this node is (kept by the membership task).
    pub(super) whoami: watch::Receiver<Whoami>,
    /// Deadline of one call to a peer.
    pub(super) peer_timeout: Duration,
    pub(super) metrics: Metrics,
    /// Cancelled when the node stops; calls in flight stop with it.
    pub(super) shutdown: CancellationToken,
    pub(super) tasks: TaskTracker,
    /// Consistent reads waiting on each peer.
    pub(super) batches: ReadBatcher,
}

impl Reads {
    /// `GET /counter/<name>/consistent_value`.
    pub async fn consistent_value(
        self: &Arc<Self>,
        name: &str,
        timeout: Duration,
    ) -> Result<u128, Incomplete> {
        let started = Instant::now();
        let result = self.consistent_read(name, timeout).await;
        let outcome = match &result {
            Ok(_) => "ok",
            Err(u) if u.unreachable.is_empty() => "no_config",
            Err(_) => "unavailable",
        };
        let m = &self.metrics;
        m.consistent_reads.get_or_create(&Outcome { outcome }).inc();
        let secs = started.elapsed().as_secs_f64();
        m.consistent_seconds.observe(secs);
        m.consistent_seconds_sum.inc_by(secs);
        result
    }

    fn me(&self) -> Option<Actor> {
        self.whoami.borrow().actor().cloned()
    }

    async fn consistent_read(
        self: &Arc<Self>,
        name: &str,
        timeout: Duration,
    ) -> Result<u128, Incomplete> {
        let deadline = Instant::now() + timeout;
        let local = || self.store.counter(name).unwrap_or_default();
        let round = self.start_round(local(), timeout)?;
        self.run_round(round, deadline, local, |actor| async move {
            let answer = self.read_until(&actor, name, deadline).await;
            (actor, answer)
        })
        .await
        .map_err(|round| round.give_up())
    }

    /// A round under the stored membership, from this node's own state.
    pub(super) fn start_round<S: Gathered>(
        &self,
        local: S,
        timeout: Duration,
    ) -> Result<ReadRound<S>, Incomplete> {
        let view = self.store.watch_membership().borrow().clone();
        ReadRound::start(view, local, self.me(), timeout)
    }

    /// Runs `round` until it completes or `deadline` passes (then the
    /// round is handed back, to say what it lacks). `ask` calls one actor
    /// until it answers or the deadline passes; `local` reads this node's
    /// own state again when the round restarts.
    pub(super) async fn run_round<S, Ask, Fut>(
        &self,
        mut round: ReadRound<S>,
        deadline: Instant,
        local: impl Fn() -> S,
        ask: Ask,
    ) -> Result<S::Value, ReadRound<S>>
    where
        S: Gathered,
        Ask: Fn(Actor) -> Fut,
        Fut: Future<Output = (Actor, Option<(S, Option<Membership>)>)>,
    {
        let mut stored = self.store.watch_membership();
        stored.borrow_and_update();
        round.learned(&stored.borrow());
        let mut calls = FuturesUnordered::new();
        loop {
            match round.next() {
                Next::Done(value) => return Ok(value),
                Next::Restart => {
                    // Dropping them cancels the calls of the old round.
                    calls = FuturesUnordered::new();
                    round.restart(&local(), self.me());
                    continue;
                }
                Next::Ask { round: r, actors } => {
                    for actor in actors {
                        let call = ask(actor);
                        calls.push(async move { (r, call.await) });
                    }
                }
            }
            tokio::select! {
                biased;
                answered = calls.next() => match answered {
                    Some((r, (actor, Some((theirs, membership))))) => {
                        round.heard(r, actor, &theirs, membership.as_ref());
                    }
                    // Gave up at the deadline.
                    Some((_, (_, None))) => {}
                    None => break,
                },
                changed = stored.changed() => match changed {
                    Ok(()) => round.learned(&stored.borrow_and_update()),
                    Err(_) => break,
                },
                _ = tokio::time::sleep_until(deadline) => break,
            }
        }
        Err(round)
    }

    /// Calls `actor` until it answers or `deadline` passes. The pause between
    /// attempts stays short so a healed network is noticed promptly.
    async fn read_until(
        self: &Arc<Self>,
        actor: &Actor,
        name: &str,
        deadline: Instant,
    ) -> Option<Answer> {
        let per_call = self.peer_timeout;
        let mut pause = Duration::from_millis(20);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            if let Ok(answer) = self
                .read_from(actor, name.to_string(), per_call.min(left))
                .await
            {
                return Some(answer);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            tokio::time::sleep(pause.min(left)).await;
            pause = (pause * 2).min(Duration::from_millis(200));
        }
    }
}
