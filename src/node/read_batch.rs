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

use super::read::Reads;
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

impl Reads {
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
            let mut peers = self.batches.lock();
            let peer = peers.entry(actor.clone()).or_default();
            peer.waiting.push((name, reply));
            let start = peer.calls < CALLS_PER_PEER;
            if start {
                peer.calls += 1;
            }
            start
        };
        if start_call {
            let reads = self.clone();
            let actor = actor.clone();
            let stop = self.shutdown.clone();
            self.tasks.spawn(async move {
                tokio::select! {
                    _ = stop.cancelled() => {}
                    _ = reads.send_reads(actor) => {}
                }
            });
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
                let mut peers = self.batches.lock();
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
                let mut calls = tokio::task::JoinSet::new();
                for (name, reply) in batch {
                    let reads = self.clone();
                    let actor = actor.clone();
                    calls.spawn(async move {
                        let _ = reply.send(reads.read_one(&actor, name).await);
                    });
                }
                calls.join_all().await;
            } else {
                self.read_many(&actor, batch).await;
            }
        }
    }

    async fn read_one(&self, actor: &Actor, name: String) -> Result<Answer, CallError> {
        let env = self
            .messenger
            .call(actor, Request::Read { name }, self.peer_timeout)
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
            .messenger
            .call(actor, Request::ReadMany { names }, self.peer_timeout)
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
                    if let Some(peer) = self.batches.lock().get_mut(actor) {
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::crdt::{Component, ReplicaId};
    use crate::node::{Deps, Node, Settings};
    use crate::proto::{PROTOCOL_VERSION, RequestEnvelope, ResponseEnvelope};
    use crate::storage::memory::MemoryEngine;
    use crate::transport::{CallFuture, Transport};

    /// Two peers that answer reads after `DELAY`, each holding 5 of its own
    /// in every counter; `legacy` peers refuse `ReadMany` as an older
    /// version does. Counts the calls and the names they carried.
    struct SlowPeers {
        legacy: bool,
        calls: AtomicUsize,
        names: AtomicUsize,
        most: AtomicUsize,
    }

    const DELAY: Duration = Duration::from_millis(100);

    impl SlowPeers {
        fn new(legacy: bool) -> Arc<Self> {
            Arc::new(SlowPeers {
                legacy,
                calls: AtomicUsize::new(0),
                names: AtomicUsize::new(0),
                most: AtomicUsize::new(0),
            })
        }
    }

    impl Transport for SlowPeers {
        fn call(&self, to: &Actor, env: &RequestEnvelope, _: Duration) -> CallFuture {
            let node = if to.as_str().starts_with("10.9.9.2") {
                2
            } else {
                3
            };
            let answer = |n: usize| {
                self.calls.fetch_add(1, Ordering::SeqCst);
                self.names.fetch_add(n, Ordering::SeqCst);
                self.most.fetch_max(n, Ordering::SeqCst);
            };
            let mine = vec![Component {
                node,
                incarnation: 1,
                count: 5,
            }];
            let resp = match &env.req {
                Request::Read { .. } => {
                    answer(1);
                    Ok(Response::Counter { components: mine })
                }
                Request::ReadMany { .. } if self.legacy => Err(CallError::Refused {
                    status: 400,
                    bytes: 60,
                }),
                Request::ReadMany { names } => {
                    answer(names.len());
                    Ok(Response::Counters {
                        counters: vec![mine; names.len()],
                    })
                }
                _ => Err(CallError::Unreachable("not part of this test".into())),
            };
            Box::pin(async move {
                tokio::time::sleep(DELAY).await;
                resp.map(|resp| ResponseEnvelope {
                    v: PROTOCOL_VERSION,
                    from: ReplicaId {
                        node,
                        incarnation: 1,
                    },
                    membership: None,
                    resp,
                })
            })
        }
    }

    /// Twenty reads at once on a node of three; returns what each answered.
    async fn twenty_reads(peers: Arc<SlowPeers>) -> Vec<Result<u128, String>> {
        let settings = Settings::new(1, "127.0.0.1:7777".parse().unwrap(), "unused".into());
        let node = Node::start(
            settings,
            Deps::new(peers).with_engine(Arc::new(MemoryEngine::new())),
        )
        .unwrap();
        let actors: Vec<Actor> = ["127.0.0.1:7777", "10.9.9.2:7777", "10.9.9.3:7777"]
            .iter()
            .map(|a| Actor::parse(a).unwrap())
            .collect();
        node.store
            .update_membership(move |m| m.post(actors, 1))
            .await
            .unwrap();
        // The node finds itself by its listening address, in a task: wait
        // for it, or a read would also ask the node itself.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while node.me().is_none() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the node never found itself"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let mut reads = tokio::task::JoinSet::new();
        for _ in 0..20 {
            let node = node.clone();
            reads.spawn(async move {
                node.reads()
                    .consistent_value("a", Duration::from_secs(10))
                    .await
                    .map_err(|e| format!("{e:?}"))
            });
        }
        let answers = reads.join_all().await;
        node.shutdown().await;
        answers
    }

    #[tokio::test]
    async fn reads_waiting_on_a_peer_share_its_calls() {
        let peers = SlowPeers::new(false);
        for answer in twenty_reads(peers.clone()).await {
            assert_eq!(answer, Ok(10), "every read hears both peers");
        }
        // Each read was carried to each peer once; the first two calls to
        // a peer carry one read each, the rest wait and go together.
        assert_eq!(peers.names.load(Ordering::SeqCst), 40);
        let calls = peers.calls.load(Ordering::SeqCst);
        assert!(calls <= 8, "{calls} calls for 40 reads of a peer");
        assert!(peers.most.load(Ordering::SeqCst) >= 10);
    }

    #[tokio::test]
    async fn a_peer_that_refuses_read_many_is_read_one_name_at_a_time() {
        let peers = SlowPeers::new(true);
        for answer in twenty_reads(peers.clone()).await {
            assert_eq!(answer, Ok(10), "every read still hears both peers");
        }
        assert_eq!(peers.most.load(Ordering::SeqCst), 1, "only Read answered");
    }
}
