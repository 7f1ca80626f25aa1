//! Bugs the simulation can plant, each to show that one check of the
//! checker can fail. Every bug lives in a seam the simulation owns (the
//! storage engine, the transport, the request handler of the simulated
//! host), never in the node's code.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tally::cluster::Actor;
use tally::crdt::Component;
use tally::node::Node;
use tally::proto::{
    PROTOCOL_VERSION, ReplicaId, Request, RequestEnvelope, Response, ResponseEnvelope,
};
use tally::storage::memory::MemoryEngine;
use tally::storage::{Batch, Changes, Engine, Loaded, StoreError};
use tally::transport::{CallError, CallFuture, Transport};

use super::{PORT, SimTransport, host, now};

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Planted {
    None,
    /// The engine acknowledges commits of counters without keeping them:
    /// what a node that replies before committing looks like after a crash.
    AckBeforeCommit,
    /// The prototype's bug: each node's total travels as if it were the
    /// sender's own component, so merging by maximum mixes totals.
    TotalsByMaximum,
    /// `Read` calls to this node (by index) are answered with an empty
    /// counter without asking it: a consistent read "hears" from everyone
    /// but misses that node's increments.
    ReadSkips(usize),
    /// Every component in a `Push` request or a `Changes` answer arrives one
    /// higher than it was sent.
    Inflate,
    /// `Push` and `Pull` calls are lost (they time out) until this sim time.
    SyncLate(Duration),
    /// Calls ignore their deadline: a peer that does not answer holds the
    /// caller for a minute (the prototype's calls without deadlines).
    NoDeadline,
    /// A consistent read runs four times as long as it was asked to.
    LongReads,
    /// `Read` calls fail at once, so consistent reads never hear from a peer.
    ReadsFail,
    /// An increment is acknowledged only once every peer answered a call:
    /// increments cannot be acknowledged while partitioned.
    AckAfterPeers,
    /// Increments are always refused.
    NeverAck,
}

impl Planted {
    /// An empty data folder.
    pub fn fresh_engine(self) -> Arc<dyn Engine> {
        match self {
            Planted::AckBeforeCommit => Arc::new(ForgetfulEngine(MemoryEngine::new())),
            _ => Arc::new(MemoryEngine::new()),
        }
    }

    /// The deadline a consistent read is given.
    pub fn read_deadline(self, asked: Duration) -> Duration {
        match self {
            Planted::LongReads => asked * 4,
            _ => asked,
        }
    }

    /// A call's real deadline.
    pub fn call_limit(self, timeout: Duration) -> Duration {
        match self {
            Planted::NoDeadline => Duration::from_secs(60),
            _ => timeout,
        }
    }

    /// Rewrites a request before it is sent, or answers it without sending it.
    pub fn shortcut(
        self,
        to: &Actor,
        req: &mut RequestEnvelope,
        timeout: Duration,
    ) -> Option<CallFuture> {
        match (self, &mut req.req) {
            (Planted::ReadsFail, Request::Read { .. }) => Some(Box::pin(async {
                Err(CallError::Unreachable("planted: reads fail".into()))
            })),
            (Planted::ReadSkips(k), Request::Read { .. })
                if to.as_str() == format!("{}:{PORT}", host(k)) =>
            {
                let env = ResponseEnvelope {
                    v: PROTOCOL_VERSION,
                    from: ReplicaId {
                        node: k as u64 + 1,
                        incarnation: 1,
                    },
                    membership: None,
                    resp: Response::Counter {
                        components: Vec::new(),
                    },
                };
                Some(Box::pin(async move { Ok(env) }))
            }
            (Planted::SyncLate(until), Request::Push { .. } | Request::Pull { .. })
                if now() < until =>
            {
                Some(Box::pin(async move {
                    tokio::time::sleep(timeout).await;
                    Err(CallError::Timeout(timeout))
                }))
            }
            (Planted::Inflate, Request::Push { counters }) => {
                for c in counters {
                    inflate(&mut c.components);
                }
                None
            }
            _ => None,
        }
    }

    /// Rewrites an answer as it arrives.
    pub fn tamper_response(self, env: &mut ResponseEnvelope) {
        match self {
            Planted::TotalsByMaximum => totals_by_maximum(env),
            Planted::Inflate => {
                if let Response::Changes { counters, .. } = &mut env.resp {
                    for c in counters {
                        inflate(&mut c.components);
                    }
                }
            }
            _ => {}
        }
    }

    /// Runs in the host's handler before an increment is applied; an error
    /// refuses the increment.
    pub async fn before_increment(
        self,
        node: &Node,
        transport: &SimTransport,
    ) -> Result<(), String> {
        match self {
            Planted::NeverAck => Err("planted: increments refused".into()),
            Planted::AckAfterPeers => {
                let membership = node.membership();
                let config = membership.config.clone();
                let me = node.me();
                let env = RequestEnvelope {
                    v: PROTOCOL_VERSION,
                    from: node.identity(),
                    membership,
                    req: Request::Hello,
                };
                let give_up = now() + Duration::from_secs(30);
                for actor in config.actors.iter().filter(|a| Some(*a) != me.as_ref()) {
                    while transport
                        .call(actor, &env, Duration::from_secs(1))
                        .await
                        .is_err()
                    {
                        if now() >= give_up {
                            return Err(format!("planted: {actor} did not answer"));
                        }
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }
}

fn inflate(components: &mut [Component]) {
    for c in components {
        c.count = c.count.saturating_add(1);
    }
}

fn totals_by_maximum(env: &mut ResponseEnvelope) {
    let from = env.from;
    let collapse = |components: &mut Vec<Component>| {
        let total: u128 = components.iter().map(|c| u128::from(c.count)).sum();
        *components = vec![Component {
            node: from.node,
            incarnation: from.incarnation,
            count: u64::try_from(total).unwrap_or(u64::MAX),
        }];
    };
    match &mut env.resp {
        Response::Counter { components } => collapse(components),
        Response::Changes { counters, .. } => {
            for c in counters {
                collapse(&mut c.components);
            }
        }
        Response::Ack | Response::Mark { .. } => {}
    }
}

/// A memory engine that acknowledges commits without keeping their counters.
pub struct ForgetfulEngine(pub MemoryEngine);

impl Engine for ForgetfulEngine {
    fn load(&self, node: u64) -> Result<Loaded, StoreError> {
        self.0.load(node)
    }
    fn commit(&self, batch: &Batch) -> Result<u64, StoreError> {
        // Keep config and marks, drop the counters.
        self.0.commit(&Batch {
            counters: BTreeMap::new(),
            marks: batch.marks.clone(),
            membership: batch.membership.clone(),
            keys_put: batch.keys_put.clone(),
            keys_del: batch.keys_del.clone(),
            me: batch.me.clone(),
        })
    }
    fn changes_since(&self, since: u64, limit: usize) -> Result<Changes, StoreError> {
        self.0.changes_since(since, limit)
    }
    fn mark(&self, peer_incarnation: u64) -> Result<u64, StoreError> {
        self.0.mark(peer_incarnation)
    }
    fn location(&self) -> Option<&std::path::Path> {
        None
    }
    fn blocking(&self) -> bool {
        false
    }
}
