//! Bugs the simulation can plant, each to show that one check of the
//! checker can fail. Every bug lives in a seam the simulation owns (the
//! storage engine, the transport, the request handler of the simulated
//! host), never in the node's code.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tally::cluster::{Actor, Membership};
use tally::crdt::Component;
use tally::node::{IncrementError, Node, Role, Settings};
use tally::proto::{
    PROTOCOL_VERSION, ReplicaId, Request, RequestEnvelope, Response, ResponseEnvelope, WireCounter,
};
use tally::storage::memory::{DiskFault, MemoryEngine};
use tally::storage::{Batch, Changes, Engine, Loaded, Merge, StoreError};
use tally::transport::{CallError, CallFuture};

use super::{HostDisk, NAMES, PORT, Plan, REPLICA_TIMEOUT, SIM_LOG, host, now};
use tally::storage::simdisk::SimDisk;

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
    /// Every node runs with `--min-replicas` set to all its peers (the
    /// plan says 0): increments cannot be acknowledged while partitioned.
    AckAfterPeers,
    /// Increments are always refused.
    NeverAck,
    /// Nodes run without the plan's `--min-replicas`: they acknowledge what
    /// no other node stored yet.
    NoReplicas,
    /// After a failed commit the engine never reopens: storage never heals
    /// once the disk works again (nor when the node restarts).
    NeverReopens,
    /// While fsync fails the engine reports commits of counters as
    /// successful and keeps nothing of them.
    AckFailedSync,
    /// `Read` calls to a node the sender's config does not name as an actor
    /// (a leaver) are answered with an empty counter: reads that ask only
    /// the config's actors.
    SkipLeavers,
    /// `List` calls to this node (by index) are answered with an empty
    /// last page without asking it: a backup's walk "hears" from everyone
    /// but misses that node's increments.
    PageSkips(usize),
    /// Configs newer than the first are stripped from every message: a
    /// post reaches only the node it was posted to.
    ConfigStuck,
    /// A node that left acknowledges increments anyway.
    LeaversAck,
    /// Local reads wait for storage to be healthy again.
    ReadsWaitForDisk,
    /// Every config post after the first is refused.
    RefusePosts,
    /// The log engine never syncs its appends (log seeds only).
    SkipSync,
    /// The log engine acknowledges an append before its sync, which runs
    /// at the next append (log seeds only).
    LateSync,
    /// A fold deletes the log it covers before the B-tree commits it (log
    /// seeds only).
    DeleteBeforeFold,
    /// Replication never carries this name (an index into `NAMES`): it is
    /// left out of every `Push` and every `Changes` answer, so the nodes
    /// never agree on it.
    SyncSkips(usize),
    /// A `Read` call that fails (a peer cut off, paused or down, or no
    /// answer within half the call's deadline) counts as an answer with
    /// nothing in it: a consistent read "hears" from a node it never
    /// reached.
    SilentIsEmpty,
    /// Consistent reads that arrive before this sim time answer 503 at
    /// once, whatever the network does.
    ReadsFailUntil(Duration),
    /// The host believes the liar's forged pushes: it merges their
    /// counters straight into the store, without the node's checks, and
    /// answers that it took them.
    BelievesForgedPushes,
}

impl Planted {
    /// An empty data folder for node `x` of `plan` (a new one for each
    /// wipe, `generation`).
    pub fn fresh_disk(self, plan: &Plan, x: usize, generation: u64) -> HostDisk {
        if plan.log {
            let mut options = SIM_LOG;
            match self {
                Planted::SkipSync => options.planted.log.skip_sync = true,
                Planted::LateSync => options.planted.log.late_sync = true,
                Planted::DeleteBeforeFold => options.planted.delete_before_fold = true,
                _ => {}
            }
            let seed = plan.seed
                ^ (x as u64 + 1).wrapping_mul(0x2545_f491_4f6c_dd1d)
                ^ generation.wrapping_mul(0x9e37_79b9_7f4a_7c15);
            let disk = SimDisk::new(&host(x), seed);
            // Three reads of the log in a hundred return a flipped bit,
            // which the next read does not repeat (B-tree reads are left
            // alone: their opens are tested apart, in storage::logged).
            disk.flip_reads("log/", 0.03);
            return HostDisk::Log { disk, options };
        }
        let memory = Arc::new(MemoryEngine::new());
        let fault = Arc::new(Mutex::new(DiskFault::None));
        let engine: Arc<dyn Engine> = match self {
            Planted::AckBeforeCommit => Arc::new(ForgetfulEngine(memory.clone())),
            Planted::NeverReopens => Arc::new(NeverReopens {
                inner: memory.clone(),
                failed: AtomicBool::new(false),
            }),
            Planted::AckFailedSync => Arc::new(LyingSync {
                inner: memory.clone(),
                fault: fault.clone(),
            }),
            _ => memory.clone(),
        };
        HostDisk::Memory {
            memory,
            engine,
            fault,
        }
    }

    /// Changes a node's settings.
    pub fn adjust(self, settings: &mut Settings, nodes: usize) {
        match self {
            Planted::AckAfterPeers => {
                settings.min_replicas = nodes - 1;
                settings.replica_timeout = REPLICA_TIMEOUT;
            }
            Planted::NoReplicas => settings.min_replicas = 0,
            _ => {}
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
            // Gives up before the caller does, to answer in its place.
            Planted::SilentIsEmpty => timeout / 2,
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
            (Planted::ReadsFail, Request::Read { .. } | Request::ReadMany { .. }) => {
                Some(Box::pin(async {
                    Err(CallError::Unreachable("planted: reads fail".into()))
                }))
            }
            (Planted::ReadSkips(k), read @ (Request::Read { .. } | Request::ReadMany { .. }))
                if to.as_str() == format!("{}:{PORT}", host(k)) =>
            {
                let env = ResponseEnvelope {
                    v: PROTOCOL_VERSION,
                    from: ReplicaId {
                        node: k as u64 + 1,
                        incarnation: 1,
                    },
                    membership: None,
                    resp: nothing_read(read),
                };
                Some(Box::pin(async move { Ok(env) }))
            }
            (Planted::PageSkips(k), Request::List { .. })
                if to.as_str() == format!("{}:{PORT}", host(k)) =>
            {
                let env = ResponseEnvelope {
                    v: PROTOCOL_VERSION,
                    from: ReplicaId {
                        node: k as u64 + 1,
                        incarnation: 1,
                    },
                    membership: None,
                    resp: Response::Page {
                        counters: Vec::new(),
                        more: false,
                    },
                };
                Some(Box::pin(async move { Ok(env) }))
            }
            (
                Planted::SyncLate(until),
                Request::Push { .. } | Request::Pull { .. } | Request::PullAhead { .. },
            ) if now() < until => Some(Box::pin(async move {
                tokio::time::sleep(timeout).await;
                Err(CallError::Timeout(timeout))
            })),
            (Planted::SyncSkips(k), Request::Push { counters }) => {
                counters.retain(|c| c.name != NAMES[k]);
                None
            }
            (Planted::Inflate, Request::Push { counters }) => {
                for c in counters {
                    inflate(&mut c.components);
                }
                None
            }
            (Planted::SkipLeavers, Request::Read { .. } | Request::ReadMany { .. })
                if !req.membership.config.actors.contains(to) =>
            {
                let resp = nothing_read(&req.req);
                let env = ResponseEnvelope {
                    v: PROTOCOL_VERSION,
                    from: ReplicaId {
                        node: node_of(to),
                        incarnation: 1,
                    },
                    membership: None,
                    resp,
                };
                Some(Box::pin(async move { Ok(env) }))
            }
            (Planted::ConfigStuck, _) => {
                strip_later_configs(&mut req.membership);
                None
            }
            _ => None,
        }
    }

    /// Rewrites an answer as it arrives.
    pub fn tamper_response(self, env: &mut ResponseEnvelope) {
        match self {
            Planted::TotalsByMaximum => totals_by_maximum(env),
            Planted::ConfigStuck => {
                if let Some(m) = &mut env.membership {
                    strip_later_configs(m);
                }
            }
            Planted::Inflate => {
                if let Response::Changes { counters, .. } = &mut env.resp {
                    for c in counters {
                        inflate(&mut c.components);
                    }
                }
            }
            Planted::SyncSkips(k) => {
                if let Response::Changes { counters, .. } = &mut env.resp {
                    counters.retain(|c| c.name != NAMES[k]);
                }
            }
            _ => {}
        }
    }

    /// What a failed call becomes: an empty answer to a read, with
    /// `SilentIsEmpty`.
    pub fn failed_call(
        self,
        to: &Actor,
        req: &Request,
        error: CallError,
    ) -> Result<ResponseEnvelope, CallError> {
        match (self, req) {
            (Planted::SilentIsEmpty, Request::Read { .. } | Request::ReadMany { .. }) => {
                Ok(ResponseEnvelope {
                    v: PROTOCOL_VERSION,
                    from: ReplicaId {
                        node: node_of(to),
                        incarnation: 1,
                    },
                    membership: None,
                    resp: nothing_read(req),
                })
            }
            _ => Err(error),
        }
    }

    /// Whether a consistent read that arrives now answers 503 at once.
    pub fn fails_read(self) -> bool {
        matches!(self, Planted::ReadsFailUntil(until) if now() < until)
    }

    /// Runs an increment in the host's handler.
    pub async fn increment(
        self,
        node: &Node,
        name: String,
        amount: u64,
    ) -> Result<u128, IncrementError> {
        match self {
            Planted::NeverAck => Err(IncrementError::Store(StoreError::Corrupt(
                "planted: increments refused".into(),
            ))),
            Planted::LeaversAck if matches!(node.role(), Role::Leaving | Role::HandedOff) => {
                Ok(node.store().increment(vec![(name, amount)]).await?[0])
            }
            _ => node
                .increment(vec![(name, amount)], None, None)
                .await
                .map(|done| done.values[0]),
        }
    }
}

impl Planted {
    /// Runs a local read in the host's handler.
    pub async fn value(self, node: &Node, name: &str) -> u128 {
        if self == Planted::ReadsWaitForDisk {
            for _ in 0..100 {
                if node.store().health().healthy {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        node.store().value(name)
    }

    /// Whether the host refuses a config post.
    pub fn refuses_post(self, node: &Node) -> bool {
        self == Planted::RefusePosts && node.membership().is_set()
    }

    /// Answers a forged message in the node's place, when this bug does:
    /// a push merged into the store as it came.
    pub async fn believe(self, node: &Node, env: &RequestEnvelope) -> Option<ResponseEnvelope> {
        let (Planted::BelievesForgedPushes, Request::Push { counters }) = (self, &env.req) else {
            return None;
        };
        let counters = counters
            .iter()
            .cloned()
            .map(WireCounter::into_parts)
            .collect();
        node.store()
            .merge(Merge {
                counters,
                mark: None,
            })
            .await
            .ok()?;
        Some(ResponseEnvelope {
            v: PROTOCOL_VERSION,
            from: node.identity(),
            membership: None,
            resp: Response::Ack,
        })
    }
}

/// Replaces any config after the first by an empty one, which no node adopts.
fn strip_later_configs(m: &mut Membership) {
    if m.stamp().version > 1 {
        *m = Membership::default();
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
        Response::Counters { counters } => {
            for components in counters {
                collapse(components);
            }
        }
        Response::Changes { counters, .. } | Response::Page { counters, .. } => {
            for c in counters {
                collapse(&mut c.components);
            }
        }
        Response::Ack | Response::Mark { .. } => {}
    }
}

/// A memory engine that acknowledges commits without keeping their counters.
pub struct ForgetfulEngine(pub Arc<MemoryEngine>);

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
    fn reopen(&self) -> Result<(), StoreError> {
        self.0.reopen()
    }
    fn location(&self) -> Option<&std::path::Path> {
        None
    }
    fn blocking(&self) -> bool {
        false
    }
    fn ready_at(&self) -> Option<tokio::time::Instant> {
        self.0.ready_at()
    }
}

/// A memory engine that never reopens once a commit failed.
pub struct NeverReopens {
    inner: Arc<MemoryEngine>,
    failed: AtomicBool,
}

impl Engine for NeverReopens {
    fn load(&self, node: u64) -> Result<Loaded, StoreError> {
        self.inner.load(node)
    }
    fn commit(&self, batch: &Batch) -> Result<u64, StoreError> {
        let result = self.inner.commit(batch);
        if result.is_err() {
            self.failed.store(true, Ordering::Relaxed);
        }
        result
    }
    fn reopen(&self) -> Result<(), StoreError> {
        if self.failed.load(Ordering::Relaxed) {
            return Err(StoreError::engine(std::io::Error::other(
                "planted: the database never reopens",
            )));
        }
        self.inner.reopen()
    }
    fn changes_since(&self, since: u64, limit: usize) -> Result<Changes, StoreError> {
        self.inner.changes_since(since, limit)
    }
    fn mark(&self, peer_incarnation: u64) -> Result<u64, StoreError> {
        self.inner.mark(peer_incarnation)
    }
    fn location(&self) -> Option<&std::path::Path> {
        None
    }
    fn blocking(&self) -> bool {
        false
    }
    fn ready_at(&self) -> Option<tokio::time::Instant> {
        self.inner.ready_at()
    }
}

/// A memory engine that, while fsync fails, reports commits of counters as
/// done and keeps nothing of them.
pub struct LyingSync {
    inner: Arc<MemoryEngine>,
    fault: Arc<Mutex<DiskFault>>,
}

impl Engine for LyingSync {
    fn load(&self, node: u64) -> Result<Loaded, StoreError> {
        self.inner.load(node)
    }
    fn commit(&self, batch: &Batch) -> Result<u64, StoreError> {
        if *self.fault.lock().unwrap() == DiskFault::FailSync && !batch.counters.is_empty() {
            return Ok(self.inner.changes_since(u64::MAX, 0)?.head);
        }
        self.inner.commit(batch)
    }
    fn reopen(&self) -> Result<(), StoreError> {
        self.inner.reopen()
    }
    fn changes_since(&self, since: u64, limit: usize) -> Result<Changes, StoreError> {
        self.inner.changes_since(since, limit)
    }
    fn mark(&self, peer_incarnation: u64) -> Result<u64, StoreError> {
        self.inner.mark(peer_incarnation)
    }
    fn location(&self) -> Option<&std::path::Path> {
        None
    }
    fn blocking(&self) -> bool {
        false
    }
    fn ready_at(&self) -> Option<tokio::time::Instant> {
        self.inner.ready_at()
    }
}

/// The id of the node at `to` (`n3:7777` is node 3).
fn node_of(to: &Actor) -> u64 {
    to.as_str()
        .strip_prefix('n')
        .and_then(|r| r.split(':').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// An answer to a read that holds nothing: an empty counter for each name.
fn nothing_read(req: &Request) -> Response {
    match req {
        Request::ReadMany { names } => Response::Counters {
            counters: vec![Vec::new(); names.len()],
        },
        _ => Response::Counter {
            components: Vec::new(),
        },
    }
}
