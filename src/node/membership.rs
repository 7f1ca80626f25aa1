//! Keeps this node's place in the cluster in step with the membership:
//! which actor it is, whom it replicates with, and, once it has left, the
//! hand-off of what it holds.
//!
//! A node that left the config stops acknowledging increments at once
//! (answers 409: a consistent read under the new config would not be
//! obliged to ask it once it has handed off). Until its hand-off is
//! confirmed, members keep pulling from it and consistent reads keep asking
//! it; it confirms the hand-off itself, by asking every actor of the config
//! how far it has durably merged its changes, and records the confirmation
//! in the membership, which every message then spreads.

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use crate::cluster::{Actor, Membership, Stamp, Standing};
use crate::messenger::Messenger;
use crate::proto::{ReplicaId, Request, Response};
use crate::replication::Replicator;
use crate::storage::{Store, StoreError};

/// This node's place in the cluster: which actor it is, whom it replicates
/// with, and its hand-off once it left. What the membership tasks and
/// `POST /config` need of the node, and nothing else.
pub struct Place {
    pub(super) store: Store,
    pub(super) messenger: Messenger,
    pub(super) identity: ReplicaId,
    /// Where this node listens: how it finds itself among the actors.
    pub(super) listen: SocketAddr,
    /// Deadline of one call to a peer.
    pub(super) peer_timeout: Duration,
    /// Pause between attempts to confirm the hand-off.
    pub(super) sync_interval: Duration,
    pub(super) whoami: watch::Sender<Whoami>,
    /// Kept in step with the membership by [`membership_loop`].
    pub(super) peers: Arc<Replicator>,
}

/// Which actor of the membership this node is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Whoami {
    /// Not found yet (no config, or some actors did not answer).
    Unknown,
    Is(Actor),
    /// Every named actor answered, and none is this node.
    NotListed,
}

impl Whoami {
    /// The actor this node is, once found.
    pub fn actor(&self) -> Option<&Actor> {
        match self {
            Whoami::Is(a) => Some(a),
            _ => None,
        }
    }
}

/// What this node does in the cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// No config yet: a cluster of one.
    Unconfigured,
    Member,
    /// Left the config; handing off what it holds.
    Leaving,
    /// Left the config and handed off.
    HandedOff,
    /// Not named by the config at all.
    Outside,
    /// Has a config but does not know yet which actor it is.
    Unknown,
}

impl Role {
    pub fn of(membership: &Membership, who: &Whoami) -> Role {
        if !membership.is_set() {
            return Role::Unconfigured;
        }
        match who {
            Whoami::Is(me) => match membership.standing(me) {
                Standing::Member => Role::Member,
                Standing::Leaving => Role::Leaving,
                Standing::HandedOff => Role::HandedOff,
                Standing::Outside => Role::Outside,
            },
            Whoami::NotListed => Role::Outside,
            Whoami::Unknown => Role::Unknown,
        }
    }

    /// Whether increments are acknowledged here: refused only once this
    /// node knows it is not an actor of the config.
    pub fn accepts_increments(self) -> bool {
        matches!(self, Role::Unconfigured | Role::Member | Role::Unknown)
    }
}

/// Why `POST /config` was refused.
#[derive(Debug, thiserror::Error)]
pub enum PostConfigError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Consistent reads under the current config would never ask this node,
    /// so they could miss a config made here: it must be posted to a node
    /// they do ask.
    #[error(
        "this node is no longer part of the cluster, which would not learn of a config posted here; post it to one of the actors"
    )]
    NotMember { actors: Vec<Actor> },
}

/// What `POST /config` did.
#[derive(Debug)]
pub struct ConfigOutcome {
    pub changed: bool,
    /// The stamp of the config this post made, if it made one (a concurrent
    /// config may have superseded it by the time the post answers).
    pub created: Option<Stamp>,
    /// The membership once the post has been announced.
    pub membership: Membership,
    pub me: Option<Actor>,
    /// Nodes that answered holding this config (this node included).
    pub stored: Vec<Actor>,
    /// Nodes that did not answer in time; the config reaches them later.
    pub pending: Vec<Actor>,
}

impl Place {
    /// Which actor of the config this node is, once known.
    pub fn me(&self) -> Option<Actor> {
        self.whoami.borrow().actor().cloned()
    }

    pub fn role(&self) -> Role {
        self.store
            .with_membership(|m| Role::of(m, &self.whoami.borrow()))
    }

    /// `POST /config`: a new actor list posted by a client to this node.
    /// Tells every node concerned, and reports which of them hold it.
    pub async fn post_config(
        self: &Arc<Self>,
        actors: Vec<Actor>,
        forget: Vec<Actor>,
    ) -> Result<ConfigOutcome, PostConfigError> {
        let origin = self.identity.node;
        let before = self.store.membership();
        if before.is_set() && matches!(self.role(), Role::Outside | Role::HandedOff) {
            return Err(PostConfigError::NotMember {
                actors: before.config.actors,
            });
        }
        if !forget.is_empty() {
            warn!(
                forget = ?forget.iter().map(Actor::as_str).collect::<Vec<_>>(),
                "forgetting leavers without their hand-off: what only they held is lost to consistent reads"
            );
        }
        let changed = self
            .store
            .update_membership(move |m| m.post_forgetting(actors, &forget, origin))
            .await?;
        if let Some(m) = &changed {
            crate::messenger::log_adopted(m);
        }
        let now = self.store.membership();
        let me = self.wait_for_me(Duration::from_millis(500)).await;
        let mut targets: Vec<Actor> = now
            .read_set()
            .into_iter()
            .chain(before.read_set())
            .filter(|a| Some(a) != me.as_ref())
            .collect();
        targets.sort();
        targets.dedup();
        let mut calls = JoinSet::new();
        for actor in targets {
            let place = self.clone();
            calls.spawn(async move {
                let ok = place
                    .messenger
                    .call(&actor, Request::Config, place.peer_timeout)
                    .await
                    .is_ok();
                (actor, ok)
            });
        }
        let mut stored: Vec<Actor> = me.iter().cloned().collect();
        let mut pending = Vec::new();
        while let Some(joined) = calls.join_next().await {
            if let Ok((actor, ok)) = joined {
                if ok { &mut stored } else { &mut pending }.push(actor);
            }
        }
        stored.sort();
        pending.sort();
        Ok(ConfigOutcome {
            changed: changed.is_some(),
            created: changed.as_ref().map(Membership::stamp),
            membership: self.store.membership(),
            me,
            stored,
            pending,
        })
    }

    async fn wait_for_me(&self, bound: Duration) -> Option<Actor> {
        let mut rx = self.whoami.subscribe();
        let _ = tokio::time::timeout(bound, rx.wait_for(|w| *w != Whoami::Unknown)).await;
        self.me()
    }
}

/// Keeps "which actor am I" and the peer tasks in step with the membership.
pub(super) async fn membership_loop(place: Arc<Place>) {
    let mut rx = place.store.watch_membership();
    // The addresses this node last identified itself among.
    let mut identified_among: Option<Vec<Actor>> = None;
    loop {
        let m = rx.borrow_and_update().clone();
        let everyone = m.everyone();
        let unknown = *place.whoami.borrow() == Whoami::Unknown;
        if identified_among.as_ref() != Some(&everyone) || unknown {
            let mut who = identify(&place, &m, &everyone, &mut rx).await;
            // An address found before and still named stays this node's
            // until shown otherwise: a leaver that cannot reach anyone must
            // not fall back to "unknown" (which accepts increments).
            if let (Whoami::Unknown, Whoami::Is(before)) = (&who, &*place.whoami.borrow())
                && everyone.contains(before)
            {
                who = Whoami::Is(before.clone());
            }
            if who != Whoami::Unknown {
                identified_among = Some(everyone);
            }
            if *place.whoami.borrow() != who {
                info!(whoami = ?who, "identified this node in the config");
                place.whoami.send_replace(who.clone());
            }
            if let Whoami::Is(me) = who
                && place.store.remembered_me().as_ref() != Some(&me)
                && let Err(e) = place.store.remember_me(me).await
            {
                debug!(error = %e, "could not store which actor this node is");
            }
        }
        let role = place.role();
        place.peers.reconcile(&peers_for(&m, role, place.me()));
        if role == Role::Unknown {
            // Not found yet: identification is retried (it waits for a
            // second or for the membership to change).
            continue;
        }
        if rx.changed().await.is_err() {
            return;
        }
    }
}

/// Whom a node replicates with, and which of them are members (pushed to,
/// counted as replicas); leavers are only pulled from, as their hand-off.
fn peers_for(m: &Membership, role: Role, me: Option<Actor>) -> Vec<(Actor, bool)> {
    match role {
        Role::Member | Role::Unknown => m
            .read_set()
            .into_iter()
            .filter(|a| Some(a) != me.as_ref())
            .map(|a| {
                let member = m.config.has_actor(&a);
                (a, member)
            })
            .collect(),
        // A node outside the config replicates with nobody: members pull
        // from it while it hands off.
        Role::Unconfigured | Role::Leaving | Role::HandedOff | Role::Outside => Vec::new(),
    }
}

/// Finds which actor is this node: by its own addresses when that is
/// unambiguous, else by asking each actor who it is. Gives up (Unknown)
/// after a second or when the membership changes.
async fn identify(
    place: &Arc<Place>,
    m: &Membership,
    everyone: &[Actor],
    rx: &mut watch::Receiver<Arc<Membership>>,
) -> Whoami {
    if !m.is_set() {
        return Whoami::Unknown;
    }
    let listen = place.listen;
    let local: Vec<&Actor> = everyone.iter().filter(|a| is_local(a, listen)).collect();
    if let [only] = local.as_slice() {
        return Whoami::Is((*only).clone());
    }
    let round = async {
        let mut asks = JoinSet::new();
        for actor in everyone.iter().cloned() {
            let place = place.clone();
            asks.spawn(async move {
                // Not `call`: asking who they are adopts nothing yet.
                let env = place.messenger.envelope(Request::Hello);
                let resp = place
                    .messenger
                    .call_raw(&actor, &env, place.peer_timeout)
                    .await;
                (actor, resp.map(|r| r.from))
            });
        }
        let mut all_answered = true;
        while let Some(joined) = asks.join_next().await {
            match joined {
                Ok((actor, Ok(from))) if from == place.identity => {
                    return Whoami::Is(actor);
                }
                Ok((_, Ok(_))) => {}
                _ => all_answered = false,
            }
        }
        if all_answered {
            return Whoami::NotListed;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        Whoami::Unknown
    };
    tokio::select! {
        found = round => found,
        _ = rx.changed() => Whoami::Unknown,
    }
}

/// Whether `actor` names this node's own listening socket.
fn is_local(actor: &Actor, listen: SocketAddr) -> bool {
    let Some(addr) = actor.socket_addr() else {
        return false;
    };
    if addr.port() != listen.port() {
        return false;
    }
    if !listen.ip().is_unspecified() {
        return addr.ip() == listen.ip();
    }
    // Binding succeeds only for an address of one of this host's interfaces.
    UdpSocket::bind(SocketAddr::new(addr.ip(), 0)).is_ok()
}

/// While this node is leaving, confirms its hand-off: once every actor of
/// the config, at this config, has durably merged this node's changes up to
/// its head, records the hand-off in the membership.
pub(super) async fn handoff_loop(place: Arc<Place>) {
    loop {
        let pause = place.sync_interval.mul_f64(0.8 + fastrand::f64() * 0.4);
        tokio::time::sleep(pause).await;
        if place.role() != Role::Leaving {
            continue;
        }
        let Some(me) = place.me() else { continue };
        let m = place.store.membership();
        let head = place.store.head();
        let incarnation = place.identity.incarnation;
        let mut asks = JoinSet::new();
        for actor in m.config.actors.clone() {
            let place = place.clone();
            asks.spawn(async move {
                let resp = place
                    .messenger
                    .call(&actor, Request::Mark { incarnation }, place.peer_timeout)
                    .await;
                match resp.map(|r| r.resp) {
                    Ok(Response::Mark { seq }) => Some(seq),
                    _ => None,
                }
            });
        }
        let mut behind = 0;
        while let Some(joined) = asks.join_next().await {
            // A mark past our own head is not a confirmation but a lie (or
            // a peer that confuses us with another incarnation).
            let now = place.store.head();
            if !matches!(joined, Ok(Some(seq)) if seq >= head && seq <= now) {
                behind += 1;
            }
        }
        // An answer may have carried a newer config: confirm only under the
        // config every actor answered at.
        if behind > 0 || place.store.membership().stamp() != m.stamp() {
            debug!(behind, head, "hand-off not complete yet");
            continue;
        }
        let stamp = m.stamp();
        let who = me.clone();
        match place
            .store
            .update_membership(move |cur| {
                (cur.stamp() == stamp)
                    .then(|| cur.with_handoff(&who))
                    .flatten()
            })
            .await
        {
            Ok(Some(_)) => info!(
                me = %me,
                version = stamp.version,
                head,
                "hand-off confirmed: every actor holds what this node acknowledged"
            ),
            Ok(None) => {}
            Err(e) => debug!(error = %e, "could not record the hand-off"),
        }
    }
}
