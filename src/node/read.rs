//! Consistent reads (SPEC G1, G5): hear, during this request, from every
//! node whose acknowledged increments might be missing here.
//!
//! The read starts from the local counter and asks, in parallel, every
//! actor of the membership's read set (the config's actors and every leaver
//! whose hand-off is not confirmed). Answers are merged per component. When
//! an answer carries a newer membership, the read goes on under it (even if
//! storage cannot keep it just now): nodes it adds are asked too, answers
//! already heard still count. When a node leaves the read set (its hand-off
//! was confirmed), everyone is asked again: what they said before may
//! predate what it handed over. Each silent actor is retried with a short pause, so a healed
//! network is noticed at once, until the deadline; then the read answers
//! with what it could not hear from.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;
use tokio::time::Instant;

use super::Node;
use crate::cluster::{Actor, Membership};
use crate::crdt::GCounter;
use crate::metrics::Outcome;

/// A consistent read that could not hear from every node it needed.
#[derive(Debug)]
pub struct Incomplete {
    pub reason: String,
    pub unreachable: Vec<Actor>,
    pub best_known_value: u128,
}

impl Node {
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
        let m = &self.settings.metrics;
        m.consistent_reads.get_or_create(&Outcome { outcome }).inc();
        m.consistent_seconds
            .observe(started.elapsed().as_secs_f64());
        result
    }

    async fn consistent_read(
        self: &Arc<Self>,
        name: &str,
        timeout: Duration,
    ) -> Result<u128, Incomplete> {
        let deadline = Instant::now() + timeout;
        let mut stored = self.store.watch_membership();
        // What this read goes by: the stored membership, merged with any an
        // answer carries (even when storage cannot keep it right now).
        let mut view = stored.borrow_and_update().clone();
        let mut merged = self.store.counter(name).unwrap_or_default();
        if !view.is_set() {
            // Without a config this node cannot know whom to hear from: it
            // may be new, or it may have lost its data folder and with it
            // the list of peers that hold what it acknowledged. Only a 503
            // is safe (G1); writes and local reads work as a cluster of one.
            return Err(Incomplete {
                reason: "this node has no cluster config yet; POST /config first".into(),
                unreachable: Vec::new(),
                best_known_value: merged.value(),
            });
        }
        // This node's own state was read above, during the request.
        let mut heard: BTreeSet<Actor> = self.me().into_iter().collect();
        let mut asked: BTreeSet<Actor> = BTreeSet::new();
        let mut calls = JoinSet::new();
        let mut read_set = view.read_set();
        let needed = loop {
            let now_set = view.read_set();
            if read_set.iter().any(|a| !now_set.contains(a)) {
                // A node left the read set (its hand-off was confirmed): the
                // answers heard so far may predate what it handed over, so
                // they are asked again.
                calls = JoinSet::new();
                asked.clear();
                heard = self.me().into_iter().collect();
                merged.merge(&self.store.counter(name).unwrap_or_default());
            }
            read_set = now_set;
            let needed: Vec<Actor> = read_set
                .iter()
                .filter(|a| !heard.contains(*a))
                .cloned()
                .collect();
            if needed.is_empty() {
                return Ok(merged.value());
            }
            for actor in &needed {
                if asked.insert(actor.clone()) {
                    let node = self.clone();
                    let actor = actor.clone();
                    let name = name.to_string();
                    calls.spawn(async move {
                        let answer = node.read_until(&actor, name, deadline).await;
                        (actor, answer)
                    });
                }
            }
            tokio::select! {
                biased;
                joined = calls.join_next() => match joined {
                    Some(Ok((actor, Some((theirs, membership))))) => {
                        merged.merge(&theirs);
                        heard.insert(actor);
                        if let Some(next) = membership.and_then(|m| view.merged_with(&m)) {
                            view = next;
                        }
                    }
                    // Gave up at the deadline, or the task failed.
                    Some(_) => {}
                    None => break needed,
                },
                changed = stored.changed() => match changed {
                    Ok(()) => {
                        let m = stored.borrow_and_update().clone();
                        if let Some(next) = view.merged_with(&m) {
                            view = next;
                        }
                    }
                    Err(_) => break needed,
                },
                _ = tokio::time::sleep_until(deadline) => break needed,
            }
        };
        let mut unreachable = needed;
        unreachable.sort();
        Err(Incomplete {
            reason: format!("could not hear from every node within {timeout:?}"),
            unreachable,
            best_known_value: merged.value(),
        })
    }

    /// Calls `actor` until it answers or `deadline` passes. The pause between
    /// attempts stays short so a healed network is noticed promptly.
    async fn read_until(
        self: &Arc<Self>,
        actor: &Actor,
        name: String,
        deadline: Instant,
    ) -> Option<(GCounter, Option<Membership>)> {
        let per_call = self.settings.peer_timeout;
        let mut pause = Duration::from_millis(20);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            if let Ok(answer) = self
                .read_from(actor, name.clone(), per_call.min(left))
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
