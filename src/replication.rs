//! Background replication: an immediate push of every local change, and a
//! periodic pull (anti-entropy) that repairs whatever a push missed.
//!
//! Each peer gets two tasks. The *push* task waits for names whose own
//! component changed here (marked by the storage writer after each commit),
//! and sends their counters in one batch with one call at a time, so a paused
//! peer holds at most one call and one timeout. While a peer is known to be
//! down its pushes are dropped: it will pull them.
//!
//! The *pull* task asks the peer, every sync interval, for the names it
//! changed after the last sequence we merged (the peer's own local sequence,
//! valid for the peer's incarnation). Only names that changed travel, so a
//! quiet cluster with a million names exchanges a few bytes per round. What
//! a peer learned from others also gets a new sequence there, so changes
//! reach every node through any path. The mark is stored in the same commit
//! as the merged counters, so a crash cannot skip changes.
//!
//! Members pull from every actor of the config and from every leaver whose
//! hand-off is not confirmed (that pull is the hand-off), and push only to
//! actors.
//!
//! Each peer also tracks how far it has durably stored this node's changes
//! (`stored`, in this node's local sequence): a push it acknowledged covers
//! every change committed before the push was taken, and a pull it sends
//! says how far it has merged. Increments that must reach K other actors
//! before they are acknowledged (`--min-replicas`) wait on it.
//!
//! Left out: forwarding pushes (anti-entropy covers transitivity) and
//! adaptive intervals.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::cluster::Actor;
use crate::metrics::{self, Metrics, PeerOutcome};
use crate::node::Node;
use crate::proto::{MAX_NAMES_PER_MESSAGE, NodeRef, Request, Response, WireCounter};
use crate::storage::{Merge, PeerMark};

/// Most pull pages fetched in one round before yielding to the next interval.
const MAX_PAGES_PER_ROUND: usize = 64;

/// What one peer looks like from here.
#[derive(Clone, Debug, Default)]
pub struct PeerStatus {
    pub reachable: Option<bool>,
    pub last_contact: Option<Instant>,
    pub last_error: Option<String>,
    pub peer: Option<NodeRef>,
    /// Changes the peer had that we had not merged at the last pull.
    pub lag: u64,
    /// Names waiting to be pushed to it.
    pub pending_push: usize,
}

#[derive(Serialize)]
pub struct PeerReport {
    pub actor: String,
    pub reachable: Option<bool>,
    pub last_contact_ms_ago: Option<u128>,
    pub last_error: Option<String>,
    pub node: Option<u64>,
    pub incarnation: Option<String>,
    pub lag_changes: u64,
    pub pending_push: usize,
    /// False for a leaver this node only pulls from (its hand-off).
    pub member: bool,
    /// How far (in this node's sequence) the peer is known to hold our changes.
    pub stored_seq: u64,
}

/// Names waiting for a push, and the head sequence they were committed by.
#[derive(Default)]
struct Dirty {
    names: BTreeSet<String>,
    head: u64,
}

struct Peer {
    actor: Actor,
    metrics: Metrics,
    dirty: Mutex<Dirty>,
    wake: Notify,
    status: Mutex<PeerStatus>,
    /// Members get pushes and count as replicas; leavers are only pulled from.
    member: AtomicBool,
    /// How far the peer durably holds our changes; only rises.
    stored: AtomicU64,
    /// Shared by all peers: woken whenever any `stored` rises.
    stored_changed: Arc<Notify>,
    cancel: CancellationToken,
}

impl Peer {
    fn label(&self) -> metrics::Peer {
        metrics::Peer {
            peer: self.actor.to_string(),
        }
    }

    fn record(&self, result: Result<Option<NodeRef>, String>) {
        self.metrics
            .peer_up
            .get_or_create(&self.label())
            .set(i64::from(result.is_ok()));
        let mut s = self.status.lock().unwrap_or_else(|p| p.into_inner());
        let was = s.reachable;
        match result {
            Ok(peer) => {
                s.reachable = Some(true);
                s.last_contact = Some(Instant::now());
                s.last_error = None;
                if peer.is_some() {
                    s.peer = peer;
                }
                if was != Some(true) {
                    info!(peer = %self.actor, "peer reachable");
                }
            }
            Err(e) => {
                s.reachable = Some(false);
                if was != Some(false) {
                    warn!(peer = %self.actor, error = %e, "peer unreachable");
                }
                s.last_error = Some(e);
            }
        }
    }

    /// Records that the peer durably holds our changes up to `seq`.
    fn stored_upto(&self, seq: u64) {
        if self.stored.fetch_max(seq, Ordering::AcqRel) < seq {
            self.stored_changed.notify_waiters();
        }
    }

    fn is_member(&self) -> bool {
        self.member.load(Ordering::Relaxed)
    }

    fn is_down(&self) -> bool {
        self.status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .reachable
            == Some(false)
    }
}

/// The set of peers this node replicates with.
#[derive(Default)]
pub struct Peers {
    /// Held only to look up or swap entries; never across an await. Ordered,
    /// so tasks start in the same order on every run of a simulation.
    map: Mutex<BTreeMap<Actor, Arc<Peer>>>,
    stored_changed: Arc<Notify>,
}

impl Peers {
    /// Marks `names`, committed by `head`, as needing a push to every
    /// member; called after each commit.
    pub fn mark_dirty(&self, names: &[String], head: u64) {
        for peer in self.all().into_iter().filter(|p| p.is_member()) {
            let mut dirty = peer.dirty.lock().unwrap_or_else(|p| p.into_inner());
            dirty.names.extend(names.iter().cloned());
            dirty.head = dirty.head.max(head);
            drop(dirty);
            peer.wake.notify_one();
        }
    }

    /// A peer pulled our changes after `since` for our incarnation: it has
    /// durably merged everything up to `since`.
    pub fn note_pulled(&self, from: NodeRef, since: u64) {
        for peer in self.all() {
            let is_it = peer
                .status
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .peer
                .is_some_and(|r| r == from);
            if is_it {
                peer.stored_upto(since);
            }
        }
    }

    /// Waits until `k` members hold our changes up to `seq`, or `deadline`;
    /// returns how many did.
    pub async fn wait_stored(&self, seq: u64, k: usize, deadline: Instant) -> usize {
        let have = || {
            self.all()
                .iter()
                .filter(|p| p.is_member() && p.stored.load(Ordering::Acquire) >= seq)
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

    /// How many members this node replicates to.
    pub fn members(&self) -> usize {
        self.all().iter().filter(|p| p.is_member()).count()
    }

    fn all(&self) -> Vec<Arc<Peer>> {
        self.map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }

    pub fn report(&self) -> Vec<PeerReport> {
        let mut out: Vec<PeerReport> = self
            .all()
            .iter()
            .map(|p| {
                let s = p.status.lock().unwrap_or_else(|e| e.into_inner()).clone();
                PeerReport {
                    actor: p.actor.to_string(),
                    reachable: s.reachable,
                    last_contact_ms_ago: s.last_contact.map(|t| t.elapsed().as_millis()),
                    last_error: s.last_error,
                    node: s.peer.map(|r| r.node),
                    incarnation: s.peer.map(|r| format!("{:016x}", r.incarnation)),
                    lag_changes: s.lag,
                    pending_push: p
                        .dirty
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .names
                        .len(),
                    member: p.is_member(),
                    stored_seq: p.stored.load(Ordering::Acquire),
                }
            })
            .collect();
        out.sort_by(|a, b| a.actor.cmp(&b.actor));
        out
    }

    /// Makes the peer set equal to `wanted` (actor, is a member), starting
    /// and stopping tasks.
    pub fn reconcile(&self, node: &Arc<Node>, wanted: &[(Actor, bool)]) {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
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
                if peer.member.swap(*member, Ordering::Relaxed) != *member {
                    info!(peer = %actor, member, "peer role changed");
                }
                continue;
            }
            info!(peer = %actor, member, "peer added");
            let peer = Arc::new(Peer {
                actor: actor.clone(),
                metrics: node.settings().metrics.clone(),
                dirty: Mutex::new(Dirty::default()),
                wake: Notify::new(),
                status: Mutex::new(PeerStatus::default()),
                member: AtomicBool::new(*member),
                stored: AtomicU64::new(0),
                stored_changed: self.stored_changed.clone(),
                cancel: node.shutdown_token().child_token(),
            });
            map.insert(actor.clone(), peer.clone());
            node.spawn(push_loop(node.clone(), peer.clone()));
            node.spawn(pull_loop(node.clone(), peer));
        }
    }

    /// One last push of whatever is still dirty, each peer at most `timeout`.
    pub async fn flush(&self, node: &Arc<Node>, timeout: Duration) {
        let tasks: Vec<_> = self
            .all()
            .into_iter()
            .map(|peer| {
                let node = node.clone();
                tokio::spawn(async move { push_once(&node, &peer, timeout).await })
            })
            .collect();
        for t in tasks {
            let _ = t.await;
        }
    }
}

async fn push_loop(node: Arc<Node>, peer: Arc<Peer>) {
    loop {
        tokio::select! {
            _ = peer.cancel.cancelled() => return,
            _ = peer.wake.notified() => {}
        }
        if peer.is_down() || !peer.is_member() {
            // It will pull what it missed once it is back.
            peer.dirty
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .names
                .clear();
            continue;
        }
        push_once(&node, &peer, node.settings().peer_timeout).await;
    }
}

async fn push_once(node: &Arc<Node>, peer: &Peer, timeout: Duration) {
    // `covers`: when the whole dirty set goes, an acknowledged push means
    // the peer holds every own change committed up to that head.
    let (names, covers): (Vec<String>, Option<u64>) = {
        let mut dirty = peer.dirty.lock().unwrap_or_else(|p| p.into_inner());
        if dirty.names.len() > MAX_NAMES_PER_MESSAGE {
            let first_left = dirty
                .names
                .iter()
                .nth(MAX_NAMES_PER_MESSAGE)
                .cloned()
                .expect("more than the limit");
            let rest = dirty.names.split_off(&first_left);
            peer.wake.notify_one();
            (
                std::mem::replace(&mut dirty.names, rest)
                    .into_iter()
                    .collect(),
                None,
            )
        } else {
            (
                std::mem::take(&mut dirty.names).into_iter().collect(),
                Some(dirty.head),
            )
        }
    };
    if names.is_empty() {
        return;
    }
    let counters: Vec<WireCounter> = names
        .iter()
        .filter_map(|n| {
            let c = node.store().counter(n)?;
            Some(WireCounter::new(n.clone(), &c))
        })
        .collect();
    let count = counters.len();
    // If this push is cut short (the node is shutting down), its names go
    // back to the dirty set, so the final flush still sends them.
    let mut unsent = Unsent { peer, names };
    let result = node
        .call(&peer.actor, Request::Push { counters }, timeout)
        .await;
    // Sent or failed: a failed push is left to anti-entropy, as before.
    unsent.names.clear();
    let outcome = if result.is_ok() { "ok" } else { "error" };
    peer.metrics
        .pushes
        .get_or_create(&PeerOutcome {
            peer: peer.actor.to_string(),
            outcome,
        })
        .inc();
    match result {
        Ok(env) => {
            debug!(peer = %peer.actor, names = count, "pushed");
            peer.record(Ok(Some(env.from)));
            if let Some(head) = covers {
                peer.stored_upto(head);
            }
        }
        Err(e) => peer.record(Err(format!("push: {e}"))),
    }
}

/// Names taken for a push whose call has not finished; put back in the
/// peer's dirty set if the push is dropped before it finishes.
struct Unsent<'a> {
    peer: &'a Peer,
    names: Vec<String>,
}

impl Drop for Unsent<'_> {
    fn drop(&mut self) {
        if !self.names.is_empty() {
            self.peer
                .dirty
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .names
                .extend(self.names.drain(..));
        }
    }
}

async fn pull_loop(node: Arc<Node>, peer: Arc<Peer>) {
    let mut position: Option<PeerMark> = None;
    let interval = node.settings().sync_interval;
    loop {
        let result = pull_round(&node, &peer, &mut position).await;
        let outcome = if result.is_ok() { "ok" } else { "error" };
        peer.metrics
            .pulls
            .get_or_create(&PeerOutcome {
                peer: peer.actor.to_string(),
                outcome,
            })
            .inc();
        if let Err(e) = result {
            peer.record(Err(format!("pull: {e}")));
        }
        // Jitter keeps the nodes' rounds from lining up.
        let pause = interval.mul_f64(0.8 + fastrand::f64() * 0.4);
        tokio::select! {
            _ = peer.cancel.cancelled() => return,
            _ = tokio::time::sleep(pause) => {}
        }
    }
}

async fn pull_round(
    node: &Arc<Node>,
    peer: &Peer,
    position: &mut Option<PeerMark>,
) -> Result<(), String> {
    for _ in 0..MAX_PAGES_PER_ROUND {
        let PeerMark {
            incarnation,
            seq: since,
        } = position.unwrap_or_default();
        let env = node
            .call(
                &peer.actor,
                Request::Pull {
                    incarnation,
                    since,
                    limit: MAX_NAMES_PER_MESSAGE,
                },
                node.settings().peer_timeout,
            )
            .await
            .map_err(|e| e.to_string())?;
        peer.record(Ok(Some(env.from)));
        let Response::Changes {
            counters,
            next,
            head,
            more,
        } = env.resp
        else {
            return Err("pull answered with something other than changes".into());
        };
        if env.from.incarnation != incarnation {
            // First contact, or the peer's folder was replaced: resume from
            // what we merged of this incarnation before, if anything.
            let mark = node
                .store()
                .mark(env.from.incarnation)
                .await
                .map_err(|e| e.to_string())?;
            *position = Some(PeerMark {
                incarnation: env.from.incarnation,
                seq: mark,
            });
            continue;
        }
        let n = counters.len();
        node.store()
            .merge(Merge {
                counters: counters.into_iter().map(WireCounter::into_parts).collect(),
                mark: Some(PeerMark {
                    incarnation,
                    seq: next,
                }),
            })
            .await
            .map_err(|e| e.to_string())?;
        *position = Some(PeerMark {
            incarnation,
            seq: next,
        });
        {
            let mut s = peer.status.lock().unwrap_or_else(|p| p.into_inner());
            s.lag = head.saturating_sub(next);
        }
        let label = peer.label();
        peer.metrics
            .peer_lag
            .get_or_create(&label)
            .set(i64::try_from(head.saturating_sub(next)).unwrap_or(i64::MAX));
        peer.metrics
            .pulled_names
            .get_or_create(&label)
            .inc_by(n as u64);
        if n > 0 {
            debug!(peer = %peer.actor, names = n, "pulled");
        }
        if !more {
            return Ok(());
        }
    }
    Ok(())
}
