//! Reads from one peer, gathered: the consistent reads waiting on a peer at
//! one moment share one call (`ReadMany`) instead of making one call each,
//! so a busy node sends a few calls per peer however many reads it serves.
//!
//! A read joins the queue of its peer and waits, at most its own deadline,
//! for the answer to the next call that carries it. At most
//! [`CALLS_PER_PEER`] calls per peer are in flight; while they are, new
//! reads queue and go together in the call after. Every call is made after
//! the reads it carries started, so its answer includes whatever the peer
//! had acknowledged before them (G1). A read that gave up (its deadline
//! passed) is dropped from the queue. A peer that refuses `ReadMany` (an
//! older version) is asked one `Read` per name from then on.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::oneshot;

use super::Node;
use crate::cluster::{Actor, Membership};
use crate::crdt::GCounter;
use crate::proto::{Request, Response};
use crate::transport::CallError;

/// Calls for reads in flight to one peer at a time. Two, so that one call
/// stuck on a slow answer does not hold every read back.
const CALLS_PER_PEER: usize = 2;
/// Most names in one call.
const MAX_NAMES: usize = 1024;

/// A peer's state of one counter, and its membership when it differs.
pub(super) type Answer = (GCounter, Option<Membership>);
type Reply = oneshot::Sender<Result<Answer, CallError>>;

/// The reads waiting on each peer.
#[derive(Default)]
pub(super) struct ReadBatcher {
    peers: Mutex<HashMap<Actor, PeerReads>>,
}

#[derive(Default)]
struct PeerReads {
    waiting: Vec<(String, Reply)>,
    calls: usize,
    /// The peer refused `ReadMany`: one `Read` per name.
    single: bool,
}

impl ReadBatcher {
    fn lock(&self) -> MutexGuard<'_, HashMap<Actor, PeerReads>> {
        self.peers.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Node {
    /// `actor`'s state of `name`, from a call made after this one started;
    /// waits at most `timeout`.
    pub(super) async fn read_from(
        self: &Arc<Self>,
        actor: &Actor,
        name: String,
        timeout: Duration,
    ) -> Result<Answer, CallError> {
        let (reply, answer) = oneshot::channel();
        let start_call = {
            let mut peers = self.reads.lock();
            let peer = peers.entry(actor.clone()).or_default();
            peer.waiting.push((name, reply));
            let start = peer.calls < CALLS_PER_PEER;
            if start {
                peer.calls += 1;
            }
            start
        };
        if start_call {
            let node = self.clone();
            let actor = actor.clone();
            self.spawn(async move { node.send_reads(actor).await });
        }
        match tokio::time::timeout(timeout, answer).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(_)) => Err(CallError::Unreachable("the node is stopping".into())),
            Err(_) => Err(CallError::Timeout(timeout)),
        }
    }

    /// Sends what waits for `actor`, call after call, until nothing does.
    async fn send_reads(self: Arc<Self>, actor: Actor) {
        loop {
            let (batch, single) = {
                let mut peers = self.reads.lock();
                let peer = peers.entry(actor.clone()).or_default();
                peer.waiting.retain(|(_, reply)| !reply.is_closed());
                if peer.waiting.is_empty() {
                    peer.calls -= 1;
                    return;
                }
                let n = peer.waiting.len().min(MAX_NAMES);
                (peer.waiting.drain(..n).collect::<Vec<_>>(), peer.single)
            };
            if single || batch.len() == 1 {
                for (name, reply) in batch {
                    let answer = self.read_one(&actor, name).await;
                    let _ = reply.send(answer);
                }
            } else {
                self.read_many(&actor, batch).await;
            }
        }
    }

    async fn read_one(&self, actor: &Actor, name: String) -> Result<Answer, CallError> {
        let env = self
            .call(actor, Request::Read { name }, self.settings.peer_timeout)
            .await?;
        match env.resp {
            Response::Counter { components } => {
                Ok((components.into_iter().collect(), env.membership))
            }
            other => Err(CallError::Protocol(format!(
                "expected a counter, got {other:?}"
            ))),
        }
    }

    async fn read_many(&self, actor: &Actor, batch: Vec<(String, Reply)>) {
        let names = batch.iter().map(|(name, _)| name.clone()).collect();
        let answer = self
            .call(
                actor,
                Request::ReadMany { names },
                self.settings.peer_timeout,
            )
            .await;
        match answer {
            Ok(env) => match env.resp {
                Response::Counters { counters } if counters.len() == batch.len() => {
                    for ((_, reply), components) in batch.into_iter().zip(counters) {
                        let counter = components.into_iter().collect();
                        let _ = reply.send(Ok((counter, env.membership.clone())));
                    }
                }
                other => {
                    let e = CallError::Protocol(format!(
                        "expected {} counters, got {other:?}",
                        batch.len()
                    ));
                    answer_all(batch, &e);
                }
            },
            Err(e) => {
                if matches!(e, CallError::Refused { status: 400, .. }) {
                    // An older peer: the waiting reads retry, one call each.
                    if let Some(peer) = self.reads.lock().get_mut(actor) {
                        peer.single = true;
                    }
                }
                answer_all(batch, &e);
            }
        }
    }
}

fn answer_all(batch: Vec<(String, Reply)>, e: &CallError) {
    for (_, reply) in batch {
        let _ = reply.send(Err(e.clone()));
    }
}
