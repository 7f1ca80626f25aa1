//! Background replication: an immediate push of every local change, and a
//! periodic pull (anti-entropy) that repairs whatever a push missed.
//!
//! What to send to whom is decided by [`peer::PeerState`], a pure state
//! machine per peer; this file owns only the tasks, timers and calls around
//! it, reaching the rest of the node through a narrow [`Context`] (the store,
//! a [`Messenger`], deadlines, metrics), never the node itself.
//!
//! Each peer gets two tasks. The *push* task waits for names whose own
//! component changed here (published by the storage writer on a channel
//! before the increments are acknowledged, and fanned out to the peers by a
//! dispatcher task), and sends their counters in one batch with one call at
//! a time, so a paused peer holds at most one call and one timeout. Pushes
//! to one peer start at most every `PUSH_INTERVAL` (5 ms), so that under a
//! steady write load each carries many commits' names.
//!
//! The *pull* task asks the peer, every sync interval, for the names it
//! changed after the last sequence we merged (the peer's own local sequence,
//! valid for the peer's incarnation). Only names that changed travel, so a
//! quiet cluster with a million names exchanges a few bytes per round. What
//! a peer learned from others also gets a new sequence there, so changes
//! reach every node through any path. The mark is stored in the same commit
//! as the merged counters, so a crash cannot skip changes.
//!
//! A pull that finds more than a page waiting fetches the rest only with
//! the catch-up turn (`catch_up.rs`), so a node far behind fetches its
//! backlog from one peer at a time instead of once from each at once.
//!
//! Members pull from every actor of the config and from every leaver whose
//! hand-off is not confirmed (that pull is the hand-off), and push only to
//! actors. Increments that must reach K other actors before they are
//! acknowledged (`--min-replicas`) wait on how far each member is known to
//! hold our changes.
//!
//! Left out: forwarding pushes (anti-entropy covers transitivity) and
//! adaptive intervals.

mod answer;
mod catch_up;
mod error;
pub mod peer;

pub use error::{AnswerError, PullError, SyncError};

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::cluster::Actor;
use crate::crdt::GCounter;
use crate::messenger::Messenger;
use crate::metrics::{self, Metrics, PeerOutcome};
use crate::proto::{
    MAX_COMPONENTS_PER_PUSH, MAX_NAMES_PER_MESSAGE, ReplicaId, Request, Response, WireCounter,
};
use crate::storage::{Committed, Merge, PeerMark, Store};
use crate::transport::CallError;
use catch_up::{CatchUp, Turn};
use peer::{PeerState, PeerView, PullAnswer, PullStep, Push, Reachability};

/// Most pull pages fetched in one round; a round that stops there with
/// more to fetch is followed by the next one after [`CATCH_UP_PAUSE`], not
/// a whole sync interval (a node catching up on a million names).
const MAX_PAGES_PER_ROUND: usize = 64;
const CATCH_UP_PAUSE: Duration = Duration::from_millis(10);

/// The shortest time between the starts of two pushes to one peer (unless
/// the last one left names for the next). What commits meanwhile travels in
/// the next push, so a peer under a steady write load merges a few large
/// pushes instead of one per commit here, each costing it an `fdatasync`.
const PUSH_INTERVAL: Duration = Duration::from_millis(5);

/// What replication needs of the node.
pub struct Context {
    pub store: Store,
    pub messenger: Messenger,
    /// Deadline of one call to a peer.
    pub peer_timeout: Duration,
    /// Pause between anti-entropy rounds with each peer.
    pub sync_interval: Duration,
    pub metrics: Metrics,
    /// Cancelled when the node stops; every task here watches it.
    pub shutdown: CancellationToken,
    /// Every task here is tracked by it, so the node can wait for them.
    pub tasks: TaskTracker,
}

/// The peers this node replicates with.
pub struct Replicator {
    ctx: Context,
    /// Held only to look up or swap entries; never across an await. Ordered,
    /// so tasks start in the same order on every run of a simulation.
    peers: Mutex<BTreeMap<Actor, Arc<Peer>>>,
    /// Woken whenever any peer's `stored` rises.
    stored_changed: Notify,
    /// Taken by the dispatcher while it runs, put back when it stops, so
    /// the last flush finds what it had not dispatched yet.
    committed: Mutex<Option<mpsc::UnboundedReceiver<Committed>>>,
    /// The turn to pull while far behind.
    catch_up: CatchUp,
}

struct Peer {
    actor: Actor,
    /// Held briefly, never across an await.
    state: Mutex<PeerState>,
    wake: Notify,
    cancel: CancellationToken,
    label: metrics::Peer,
}

impl Peer {
    fn state(&self) -> std::sync::MutexGuard<'_, PeerState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Replicator {
    /// Starts the dispatcher of `committed` changes; peers come with
    /// [`Replicator::reconcile`].
    pub fn start(ctx: Context, committed: mpsc::UnboundedReceiver<Committed>) -> Arc<Self> {
        let r = Arc::new(Replicator {
            ctx,
            peers: Mutex::new(BTreeMap::new()),
            stored_changed: Notify::new(),
            committed: Mutex::new(Some(committed)),
            catch_up: CatchUp::default(),
        });
        // Tracked but not cancelled from outside: it stops itself on the
        // shutdown token and hands its receiver back.
        r.ctx.tasks.spawn(dispatch(r.clone()));
        r
    }

    fn all(&self) -> Vec<Arc<Peer>> {
        self.peers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }

    fn mark_dirty(&self, c: &Committed) {
        for peer in self.all() {
            peer.state().committed(&c.names, c.head);
            peer.wake.notify_one();
        }
    }

    /// A peer pulled our changes after `since` for our incarnation: it has
    /// durably merged everything up to `since`.
    pub fn note_pulled(&self, from: ReplicaId, since: u64) {
        for peer in self.all() {
            let mut s = peer.state();
            if s.is(from) && s.stored_upto(since) {
                self.stored_changed.notify_waiters();
            }
        }
    }

    /// Waits until `k` members hold our changes up to `seq`, or `deadline`;
    /// returns how many did.
    pub async fn wait_stored(&self, seq: u64, k: usize, deadline: Instant) -> usize {
        let have = || {
            self.all()
                .iter()
                .filter(|p| {
                    let s = p.state();
                    s.is_member() && s.stored() >= seq
                })
                .count()
        };
        loop {
            let notified = self.stored_changed.notified();
            tokio::pin!(notified);
            // Registered before counting, so a rise in between is not missed.
            notified.as_mut().enable();
            let now = have();
            if now >= k {
                return now;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return have();
            }
        }
    }

    pub fn report(&self) -> Vec<PeerView> {
        let now = Instant::now();
        let mut out: Vec<PeerView> = self.all().iter().map(|p| p.state().report(now)).collect();
        out.sort_by(|a, b| a.actor.cmp(&b.actor));
        out
    }

    /// Makes the peer set equal to `wanted` (actor, is a member), starting
    /// and stopping tasks.
    pub fn reconcile(self: &Arc<Self>, wanted: &[(Actor, bool)]) {
        let mut map = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        map.retain(|actor, peer| {
            let keep = wanted.iter().any(|(a, _)| a == actor);
            if !keep {
                info!(peer = %actor, "peer removed");
                peer.cancel.cancel();
            }
            keep
        });
        for (actor, member) in wanted {
            if let Some(peer) = map.get(actor) {
                if peer.state().set_member(*member) {
                    info!(peer = %actor, member, "peer role changed");
                }
                continue;
            }
            info!(peer = %actor, member, "peer added");
            let peer = Arc::new(Peer {
                actor: actor.clone(),
                state: Mutex::new(PeerState::new(
                    actor.clone(),
                    *member,
                    self.ctx.store.head(),
                )),
                wake: Notify::new(),
                cancel: self.ctx.shutdown.child_token(),
                label: metrics::Peer {
                    peer: actor.to_string(),
                },
            });
            map.insert(actor.clone(), peer.clone());
            self.spawn(&peer, push_loop(self.clone(), peer.clone()));
            self.spawn(&peer, pull_loop(self.clone(), peer.clone()));
        }
    }

    fn spawn(&self, peer: &Peer, task: impl Future<Output = ()> + Send + 'static) {
        let cancel = peer.cancel.clone();
        self.ctx.tasks.spawn(async move {
            tokio::select! {
                _ = cancel.cancelled() => {}
                _ = task => {}
            }
        });
    }

    /// One last push of whatever is still dirty (what the dispatcher had
    /// not handed out included), each peer at most `timeout`. Call it once
    /// the tasks have stopped.
    pub async fn flush(self: &Arc<Self>, timeout: Duration) {
        let rx = self
            .committed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(mut rx) = rx {
            while let Ok(c) = rx.try_recv() {
                self.mark_dirty(&c);
            }
        }
        let tasks: Vec<_> = self
            .all()
            .into_iter()
            .map(|peer| {
                let r = self.clone();
                tokio::spawn(async move { push_once(&r, &peer, timeout, true).await })
            })
            .collect();
        for t in tasks {
            let _ = t.await;
        }
    }

    /// One log line per reachability change, and the `peer_up` gauge.
    fn log(&self, peer: &Peer, change: Reachability) {
        let up = match change {
            Reachability::Unchanged => return,
            Reachability::Reachable => {
                info!(peer = %peer.label.peer, "peer reachable");
                1
            }
            Reachability::Unreachable(e) => {
                warn!(peer = %peer.label.peer, error = %e, "peer unreachable");
                0
            }
        };
        self.ctx.metrics.peer_up.get_or_create(&peer.label).set(up);
    }
}

/// Hands every committed change to the peers until the node stops.
async fn dispatch(r: Arc<Replicator>) {
    let Some(mut rx) = r.committed.lock().unwrap_or_else(|p| p.into_inner()).take() else {
        return;
    };
    loop {
        tokio::select! {
            biased;
            _ = r.ctx.shutdown.cancelled() => break,
            c = rx.recv() => match c {
                Some(c) => r.mark_dirty(&c),
                None => break,
            },
        }
    }
    *r.committed.lock().unwrap_or_else(|p| p.into_inner()) = Some(rx);
}

async fn push_loop(r: Arc<Replicator>, peer: Arc<Peer>) {
    let mut next: Option<Instant> = None;
    loop {
        peer.wake.notified().await;
        if let Some(at) = next.filter(|at| *at > Instant::now()) {
            tokio::time::sleep_until(at).await;
        }
        let started = Instant::now();
        let more = push_once(&r, &peer, r.ctx.peer_timeout, false).await;
        next = (!more).then(|| started + PUSH_INTERVAL);
    }
}

/// Puts a push's names back if it is dropped before its call finishes
/// (the node is stopping), so the last flush still sends them.
struct InFlight<'a> {
    peer: &'a Peer,
    push: Option<Push>,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if let Some(push) = self.push.take() {
            self.peer.state().push_abandoned(push);
        }
    }
}

/// The counters of one push, within [`MAX_COMPONENTS_PER_PUSH`] together:
/// whole while they fit, then only this node's own component (a push is
/// for this node's increments; what it relays and no longer fits reaches
/// the peer by anti-entropy, whose pages are not bounded in components).
fn push_counters(
    names: &[String],
    me: ReplicaId,
    counter: impl Fn(&str) -> Option<GCounter>,
) -> Vec<WireCounter> {
    // Room for one component of every name after the whole counters.
    let mut room = MAX_COMPONENTS_PER_PUSH.saturating_sub(names.len());
    names
        .iter()
        .filter_map(|n| {
            let c = counter(n)?;
            if c.len() <= room {
                room -= c.len();
                return Some(WireCounter::new(n.clone(), &c));
            }
            let own = c.get(me);
            (own > 0).then(|| WireCounter::new(n.clone(), &GCounter::of(me, own)))
        })
        .collect()
}

/// One push of what is dirty for `peer`; says whether it left names for
/// the next one.
async fn push_once(r: &Replicator, peer: &Peer, timeout: Duration, force: bool) -> bool {
    let Some(push) = peer.state().take_push(force) else {
        return false;
    };
    let more = push.more;
    if more {
        peer.wake.notify_one();
    }
    let counters = push_counters(&push.names, r.ctx.store.identity(), |n| {
        r.ctx.store.counter(n)
    });
    let count = counters.len();
    let mut in_flight = InFlight {
        peer,
        push: Some(push),
    };
    let result = r
        .ctx
        .messenger
        .call(&peer.actor, Request::Push { counters }, timeout)
        .await;
    let push = in_flight.push.take().expect("taken once");
    let outcome = if result.is_ok() { "ok" } else { "error" };
    r.ctx
        .metrics
        .pushes
        .get_or_create(&PeerOutcome {
            peer: peer.label.peer.clone(),
            outcome,
        })
        .inc();
    if result.is_ok() {
        debug!(peer = %peer.label.peer, names = count, "pushed");
    }
    let result = result.map(|env| env.from);
    let (change, raised) = peer.state().push_done(push, result, Instant::now());
    r.log(peer, change);
    if raised {
        r.stored_changed.notify_waiters();
    }
    more
}

async fn pull_loop(r: Arc<Replicator>, peer: Arc<Peer>) {
    let interval = r.ctx.sync_interval;
    let mut turn = None;
    loop {
        let result = pull_round(&r, &peer, &mut turn).await;
        let behind = matches!(result, Ok(true));
        if !(behind && turn.as_mut().is_some_and(Turn::keep)) {
            turn = None;
        }
        let outcome = if result.is_ok() { "ok" } else { "error" };
        r.ctx
            .metrics
            .pulls
            .get_or_create(&PeerOutcome {
                peer: peer.label.peer.clone(),
                outcome,
            })
            .inc();
        if let Err(e) = result {
            let change = peer.state().pull_failed(e, Instant::now());
            r.log(&peer, change);
        }
        // Jitter keeps the nodes' rounds from lining up.
        let pause = if behind {
            CATCH_UP_PAUSE
        } else {
            interval.mul_f64(0.8 + fastrand::f64() * 0.4)
        };
        tokio::time::sleep(pause).await;
    }
}

/// Checks a page of changes before anything of it is merged: valid names,
/// and no count of this node's own component above what it holds.
fn check_page(store: &Store, counters: &[(String, GCounter)]) -> Result<(), PullError> {
    for (name, _) in counters {
        crate::input::validate_name(name)?;
    }
    match store.raises_own(counters) {
        Some((name, claimed, held)) => Err(PullError::RaisesOwn {
            name: name.to_string(),
            claimed,
            held,
        }),
        None => Ok(()),
    }
}

/// One anti-entropy round; `Ok(true)` when it stopped with pages left.
/// Pages after the first are fetched with the catch-up `turn`, taken here
/// unless its holder stalls. With the turn, each page is fetched while the
/// one before it merges (a pull ahead), so that the peer's reading and
/// encoding, the network and the decoding here overlap with this node's
/// commit instead of adding up to it; a peer that refuses pulls ahead (a
/// version before them) is pulled one page at a time for a while.
async fn pull_round(
    r: &Replicator,
    peer: &Peer,
    turn: &mut Option<Turn>,
) -> Result<bool, PullError> {
    let actor = &peer.actor;
    let (mut far_behind, mut waited) = (false, false);
    // The next page, when it was fetched while the last one merged.
    let mut ahead = None;
    for page in 1..=MAX_PAGES_PER_ROUND {
        if far_behind && turn.is_none() && !waited {
            waited = true;
            // The longest a holder may take over one page: a call and a merge.
            let stall = r.ctx.peer_timeout + r.ctx.store.deadline();
            *turn = r.catch_up.take(stall).await;
        }
        let env = match ahead.take() {
            Some(env) => env,
            None => {
                let PeerMark { incarnation, seq } = peer.state().pull_request();
                let req = Request::Pull {
                    incarnation,
                    since: seq,
                    limit: MAX_NAMES_PER_MESSAGE,
                };
                r.ctx.messenger.call(actor, req, r.ctx.peer_timeout).await?
            }
        };
        peer.state().answered_in(env.v);
        let Response::Changes {
            counters,
            next,
            head,
            more,
        } = env.resp
        else {
            return Err(PullError::NotChanges);
        };
        let counters: Vec<(String, GCounter)> =
            counters.into_iter().map(WireCounter::into_parts).collect();
        check_page(&r.ctx.store, &counters)?;
        let answer = PullAnswer {
            from: env.from,
            counters,
            next,
            head,
            more,
        };
        let (change, step) = peer.state().pulled(answer, Instant::now());
        r.log(peer, change);
        match step {
            PullStep::LookUpMark { incarnation } => {
                // First contact, or the peer's folder was replaced: resume
                // from what we merged of this incarnation before, if anything.
                let seq = r.ctx.store.mark(incarnation).await?;
                peer.state().resume(PeerMark { incarnation, seq });
            }
            PullStep::Merge {
                counters,
                mark,
                head,
                more,
            } => {
                let n = counters.len();
                let merging = r.ctx.store.merge(Merge {
                    counters,
                    mark: Some(mark),
                });
                let pull_ahead = more
                    && page < MAX_PAGES_PER_ROUND
                    && turn.is_some()
                    && peer.state().pulls_ahead(Instant::now());
                let fetched = if pull_ahead {
                    // From where this page ends; `since` still says only
                    // what is durable here, since a peer counts it as
                    // stored (`--min-replicas`, hand-offs).
                    let req = Request::PullAhead {
                        incarnation: mark.incarnation,
                        since: peer.state().pull_request().seq,
                        start: mark.seq,
                        limit: MAX_NAMES_PER_MESSAGE,
                    };
                    let fetch = r.ctx.messenger.call(actor, req, r.ctx.peer_timeout);
                    let (merged, fetched) = tokio::join!(merging, fetch);
                    merged?;
                    Some(fetched)
                } else {
                    merging.await?;
                    None
                };
                let lag = peer.state().merged(mark, head);
                let m = &r.ctx.metrics;
                m.peer_lag
                    .get_or_create(&peer.label)
                    .set(i64::try_from(lag).unwrap_or(i64::MAX));
                m.pulled_names.get_or_create(&peer.label).inc_by(n as u64);
                if n > 0 {
                    debug!(peer = %peer.label.peer, names = n, "pulled");
                }
                if turn.is_some() {
                    r.catch_up.progressed();
                }
                if !more {
                    return Ok(false);
                }
                far_behind = true;
                let Some(fetched) = fetched else {
                    continue;
                };
                let outcome = match &fetched {
                    Ok(_) => "answered",
                    Err(CallError::Refused {
                        status: 400..=499, ..
                    }) => "refused",
                    Err(_) => "failed",
                };
                m.pulls_ahead
                    .get_or_create(&PeerOutcome {
                        peer: peer.label.peer.clone(),
                        outcome,
                    })
                    .inc();
                ahead = match fetched {
                    Ok(env) => Some(env),
                    // A version before pulls ahead refuses them (400): the
                    // next page is pulled as usual, and so is the next
                    // when every call to the peer is in use.
                    Err(CallError::Refused {
                        status: 400..=499, ..
                    }) => {
                        peer.state().refused_ahead(Instant::now());
                        None
                    }
                    Err(CallError::Busy) => None,
                    Err(e) => return Err(e.into()),
                };
            }
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crdt::Component;

    fn replica(node: u64) -> ReplicaId {
        ReplicaId {
            node,
            incarnation: 7,
        }
    }

    /// A counter with a component of 1 for each of nodes `from..=to`.
    fn wide(from: u64, to: u64) -> GCounter {
        (from..=to)
            .map(|node| Component {
                node,
                incarnation: 7,
                count: 1,
            })
            .collect()
    }

    #[test]
    fn a_push_stays_within_its_components_and_keeps_this_nodes_own() {
        let me = replica(1);
        let max = MAX_COMPONENTS_PER_PUSH as u64;
        // Node 1 (this one) counted in both; "big" alone would fill a push.
        let small = wide(1, 3);
        let big = wide(1, max);
        // Relayed only: this node never counted in it.
        let relayed = wide(2, max);
        let counters = [("small", small), ("big", big), ("relayed", relayed)];
        let counter = |n: &str| {
            counters
                .iter()
                .find(|(k, _)| *k == n)
                .map(|(_, c)| c.clone())
        };
        let names: Vec<String> = ["small", "big", "gone", "relayed"]
            .map(String::from)
            .to_vec();
        let push = push_counters(&names, me, counter);
        let total: usize = push.iter().map(|w| w.components.len()).sum();
        assert!(total <= MAX_COMPONENTS_PER_PUSH, "{total} components");
        let got: Vec<(&str, usize)> = push
            .iter()
            .map(|w| (w.name.as_str(), w.components.len()))
            .collect();
        // "small" whole; "big" only with this node's own component; "gone"
        // is no longer held; "relayed" does not fit and has no component
        // of this node: left to anti-entropy.
        assert_eq!(got, [("small", 3), ("big", 1)]);
        assert_eq!(push[1].clone().into_parts().1.get(me), 1);
    }
}
