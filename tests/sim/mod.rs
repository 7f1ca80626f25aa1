//! A deterministic simulation of a tally cluster on turmoil.
//!
//! The real node code (`Node`: replication, anti-entropy, config
//! propagation, self-identification, consistent reads) runs on each
//! simulated host over the memory storage engine; node-to-node calls travel
//! through turmoil's simulated TCP, so partitions, held links (a paused
//! process), latency, connection failures, crashes and restarts all hit the
//! real protocol. Only HTTP framing is replaced, by a length-prefixed JSON
//! frame, because the HTTP layer is not what is under test here. The
//! transport also duplicates and holds back requests, so messages arrive
//! twice and out of order.
//!
//! A seed fixes everything: the fault schedule, the workload, turmoil's
//! network randomness, the transport's and the nodes' own randomness.
//!
//! On plans with a liar, one more host sends the nodes forged internal
//! messages until the heal (see [`liar`]); every node must refuse them all.

#![allow(dead_code)]

pub mod check;
pub mod liar;
pub mod plan;
pub mod planted;

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::io::Write;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tally::cluster::Actor;
use tally::node::{Deps, IncrementError, Node, Settings};
use tally::proto::{RequestEnvelope, ResponseEnvelope, binary};
use tally::storage::logged::{LogEngine, LogLimits, LogOptions, OnDamage};
use tally::storage::memory::{DiskFault, MemoryEngine};
use tally::storage::simdisk::{SimDisk, SimFault, SimStats};
use tally::storage::{Engine, StoreError};
use tally::transport::{CallError, CallFuture, Transport};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub use check::{Check, Violation, check};
pub use liar::{Answer, Forged, Lie};
pub use plan::{Changes, DiskKind, End, Fault, Flavor, Link, Plan, Post, Strike, Window};
pub use planted::Planted;

const PORT: u16 = 7777;
const MAX_FRAME: usize = 64 * 1024 * 1024;

/// Names the workload uses.
pub const NAMES: [&str; 4] = ["a", "b", "c", "d"];
/// Deadline of the workload's consistent reads.
pub const CONSISTENT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a client waits for an increment or a local read (the G3 bound).
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long after the network heals every node must have acknowledged an
/// increment and answered a consistent read with 200.
pub const LIVENESS_BOUND: Duration = Duration::from_secs(10);
/// How long after its disk works again a node must acknowledge an increment.
pub const RECOVERY_BOUND: Duration = Duration::from_secs(5);
/// `Settings::replica_timeout` on seeds with `--min-replicas`: below the
/// client's timeout, so a short increment answers 503 rather than nothing.
pub const REPLICA_TIMEOUT: Duration = Duration::from_millis(1500);
/// How long the workload waits for a config post to answer.
const POST_TIMEOUT: Duration = Duration::from_secs(5);
/// How long after its planned time a post may still find a node to take it.
const POST_WINDOW: Duration = Duration::from_secs(3);
/// Pause between a liveness probe's attempts.
const RETRY_PAUSE: Duration = Duration::from_millis(100);
/// Most attempts of one liveness probe (the bound in time ends it sooner).
const MAX_ATTEMPTS: usize = 200;
const CLIENTS: usize = 3;

/// What the simulated clients and peers send to a node.
#[derive(Serialize, Deserialize)]
enum Frame {
    /// A call from the liar's own identity, as an envelope.
    Rpc(RequestEnvelope),
    /// A node-to-node call in protocol 3's bytes, as the HTTP transport
    /// sends it, decoded by the product's decoder as the server decodes it.
    Rpc3(Vec<u8>),
    Config(Vec<String>),
    Increment {
        name: String,
        amount: u64,
    },
    Value {
        name: String,
    },
    Consistent {
        name: String,
        timeout_ms: u64,
    },
    Status,
    /// The node's counter of a name, component by component.
    Components {
        name: String,
    },
    /// A backup's walk of consistent pages of `limit` names from the
    /// start, within `timeout_ms` in all: every name's value.
    Walk {
        limit: usize,
        timeout_ms: u64,
    },
    /// A forged internal message from the liar: the JSON body of the
    /// internal route, embedded as it is and decoded by the product's own
    /// decoder as the HTTP server decodes it (whose bounds on names and
    /// components apply while decoding).
    Forged(Box<serde_json::value::RawValue>),
}

/// Why a node refused a request, as the HTTP layer would tell by status.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// 409: this node left the cluster.
    NotMember,
    /// 503: applied here, but too few other actors stored it in time.
    Replicas,
    /// 503: the config has fewer other actors than required.
    TooFewActors,
    /// 503: storage failed or did not answer in time.
    Storage,
    Other,
}

impl Refusal {
    fn of_increment(e: &IncrementError) -> Refusal {
        match e {
            IncrementError::NotMember { .. } => Refusal::NotMember,
            IncrementError::Replicas { .. } => Refusal::Replicas,
            IncrementError::TooFewActors { .. } => Refusal::TooFewActors,
            IncrementError::Store(e) if e.is_transient() => Refusal::Storage,
            IncrementError::Store(_) => Refusal::Other,
        }
    }
}

/// What a node says of itself: its config's stamp and actors, its role,
/// and whether its storage is healthy.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct NodeStatus {
    pub stamp: (u64, u64),
    pub actors: Vec<String>,
    pub role: String,
    pub healthy: bool,
}

#[derive(Serialize, Deserialize, Debug)]
enum Reply {
    Rpc(Result<ResponseEnvelope, String>),
    /// The answer to an `Rpc3`, in protocol 3's bytes.
    Rpc3(Result<Vec<u8>, String>),
    Value(Result<u128, String>),
    Refused {
        kind: Refusal,
        message: String,
    },
    Unavailable {
        unreachable: Vec<String>,
        best: u128,
    },
    Posted {
        stamp: (u64, u64),
    },
    Status(NodeStatus),
    Components(Vec<tally::crdt::Component>),
    Walked(Vec<(String, u128)>),
}

async fn write_frame<T: Serialize>(
    s: &mut turmoil::net::TcpStream,
    value: &T,
) -> std::io::Result<()> {
    let bytes = serde_json::to_vec(value).expect("frames serialize");
    s.write_all(&(bytes.len() as u32).to_le_bytes()).await?;
    s.write_all(&bytes).await?;
    s.flush().await
}

async fn read_frame<T: for<'de> Deserialize<'de>>(
    s: &mut turmoil::net::TcpStream,
) -> std::io::Result<T> {
    let mut len = [0u8; 4];
    s.read_exact(&mut len).await?;
    let len = u32::from_le_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(std::io::Error::other("frame too large"));
    }
    let mut buf = vec![0u8; len];
    s.read_exact(&mut buf).await?;
    serde_json::from_slice(&buf).map_err(std::io::Error::other)
}

/// Sim time, the same clock on every host and in the runner.
pub fn now() -> Duration {
    turmoil::sim_elapsed().expect("called inside the simulation")
}

// ---------------------------------------------------------------- transport

/// How the transport misbehaves on its own (from the plan).
#[derive(Clone, Copy, Debug)]
struct Noise {
    duplicate_rate: f64,
    delay_rate: f64,
    max_extra_delay: Duration,
}

/// The node-to-node transport over simulated TCP: one connection per call.
/// Some requests are held back a random time before they are sent (so later
/// ones overtake them), some are sent a second time, late, with the second
/// answer ignored; planted bugs hook in here.
pub struct SimTransport {
    planted: Planted,
    noise: Noise,
    rng: Mutex<fastrand::Rng>,
    /// Print every node-to-node call and its answer (`TALLY_SIM_TRACE`).
    trace: bool,
}

/// One request and its answer over a fresh connection.
async fn exchange(to: &str, req: RequestEnvelope) -> Result<ResponseEnvelope, CallError> {
    let mut s = turmoil::net::TcpStream::connect(to)
        .await
        .map_err(|e| CallError::Unreachable(e.to_string()))?;
    write_frame(&mut s, &Frame::Rpc3(binary::encode_request(&req)))
        .await
        .map_err(|e| CallError::Unreachable(e.to_string()))?;
    match read_frame::<Reply>(&mut s).await {
        Ok(Reply::Rpc3(Ok(bytes))) => binary::decode_response(&bytes)
            .map_err(|e| CallError::Protocol(format!("malformed answer ({e})"))),
        Ok(Reply::Rpc3(Err(e))) => Err(CallError::Refused {
            status: 400,
            bytes: e.len(),
        }),
        Ok(other) => Err(CallError::Protocol(format!("{other:?}"))),
        Err(e) => Err(CallError::Unreachable(e.to_string())),
    }
}

impl Transport for SimTransport {
    fn call(&self, to: &Actor, req: &RequestEnvelope, timeout: Duration) -> CallFuture {
        let mut req = req.clone();
        if let Some(shortcut) = self.planted.shortcut(to, &mut req, timeout) {
            return shortcut;
        }
        // What a failed call is taken for, when a planted bug decides.
        let failed =
            (self.planted == Planted::SilentIsEmpty).then(|| (to.clone(), req.req.clone()));
        let to = to.to_string();
        let (delay, duplicate) = {
            let mut rng = self.rng.lock().unwrap();
            let mut lag = |rate: f64| {
                (rng.f64() < rate).then(|| {
                    Duration::from_millis(
                        rng.u64(1..=self.noise.max_extra_delay.as_millis().max(1) as u64),
                    )
                })
            };
            let delay = lag(self.noise.delay_rate);
            (delay, lag(self.noise.duplicate_rate))
        };
        let limit = self.planted.call_limit(timeout);
        if let Some(lag) = duplicate {
            let (to, req) = (to.clone(), req.clone());
            tokio::spawn(async move {
                tokio::time::sleep(lag).await;
                let _ = tokio::time::timeout(limit, exchange(&to, req)).await;
            });
        }
        let planted = self.planted;
        let trace = self.trace;
        Box::pin(async move {
            let call = async {
                if let Some(d) = delay {
                    tokio::time::sleep(d).await;
                }
                let traced = trace.then(|| (now(), req.from.node, format!("{:?}", req.req)));
                let answer = exchange(&to, req).await;
                if let Some((start, from, what)) = traced {
                    // Past the harness's capture, like the seeds.
                    let _ = writeln!(
                        std::io::stderr(),
                        "call {start:?}..{:?} n{from} -> {to} {what} => {:?}",
                        now(),
                        answer
                            .as_ref()
                            .map(|env| (&env.resp, env.membership.as_ref().map(|m| m.stamp())))
                    );
                }
                let mut env = answer?;
                planted.tamper_response(&mut env);
                Ok(env)
            };
            let result = tokio::time::timeout(limit, call)
                .await
                .unwrap_or(Err(CallError::Timeout(timeout)));
            match (result, failed) {
                (Err(e), Some((to, req))) => planted.failed_call(&to, &req, e),
                (result, _) => result,
            }
        })
    }
}

// ---------------------------------------------------------------- a host

/// A host's disk, which outlives the host's crashes.
#[derive(Clone)]
pub enum HostDisk {
    /// The memory engine that faults are injected into, and the engine the
    /// node runs on (the same one, or a planted wrapper of it).
    Memory {
        memory: Arc<MemoryEngine>,
        engine: Arc<dyn Engine>,
        /// The fault injected last, for planted engines that act on it.
        fault: Arc<Mutex<DiskFault>>,
    },
    /// A simulated disk under the shipped log engine, opened afresh at each
    /// boot as a process opens its files.
    Log { disk: SimDisk, options: LogOptions },
}

/// The log engine's limits in the simulation: a fold once three names
/// changed (of the workload's four), so a 20 s run folds, rotates and
/// deletes segments hundreds of times.
pub const SIM_LOG: LogOptions = LogOptions {
    limits: LogLimits {
        names: 3,
        bytes: 16 << 10,
    },
    on_damage: OnDamage::Salvage,
    step: 16 << 10,
    // Inline, so that a seed replays exactly.
    background: false,
    planted: tally::storage::logged::Planted {
        log: tally::storage::journal::Planted {
            skip_sync: false,
            late_sync: false,
        },
        delete_before_fold: false,
    },
};

impl HostDisk {
    fn inject(&self, fault: DiskFault) {
        match self {
            HostDisk::Memory {
                memory, fault: f, ..
            } => {
                *f.lock().unwrap() = fault;
                memory.inject(fault);
            }
            HostDisk::Log { disk, .. } => disk.inject(match fault {
                DiskFault::None | DiskFault::Panic => SimFault::None,
                DiskFault::Full => SimFault::Full,
                DiskFault::FailSync => SimFault::FailSync,
                DiskFault::Stall(until) => SimFault::Stall(until),
            }),
        }
    }

    /// A disk that takes `after` more changes, then fails (log seeds; the
    /// memory engine fails its syncs instead). A disk dying already goes
    /// on counting.
    fn dying(&self, after: u64) {
        match self {
            HostDisk::Memory { .. } => self.inject(DiskFault::FailSync),
            HostDisk::Log { disk, .. } => {
                if !matches!(disk.fault(), SimFault::Dying(_)) {
                    disk.inject(SimFault::Dying(after));
                }
            }
        }
    }

    /// The engine a process that boots runs on.
    fn boot(&self) -> Result<Arc<dyn Engine>, StoreError> {
        match self {
            HostDisk::Memory { engine, .. } => {
                // A process that starts opens its database afresh: an I/O
                // error of its previous run does not carry over (a disk
                // that still fails fails again).
                let _ = engine.reopen();
                Ok(engine.clone())
            }
            HostDisk::Log { disk, options } => {
                Ok(Arc::new(LogEngine::on(Arc::new(disk.clone()), *options)?))
            }
        }
    }

    /// The power is cut: a simulated disk loses what was not synced.
    fn crash(&self) {
        if let HostDisk::Log { disk, .. } = self {
            disk.crash();
        }
    }

    /// What the simulated disk did, if it is one.
    pub fn stats(&self) -> Option<SimStats> {
        match self {
            HostDisk::Log { disk, .. } => Some(disk.stats()),
            HostDisk::Memory { .. } => None,
        }
    }
}

/// Makes node `x`'s disk do what the plan says now. A stall's end is a
/// tokio instant of this host's clock (each boot of a host has a clock of
/// its own), so faults are injected from inside the host.
fn apply_disk(plan: &Plan, x: usize, disk: &HostDisk) {
    let t = now();
    let fault = match plan.disk(x, t) {
        None => DiskFault::None,
        Some(DiskKind::Dying) => return disk.dying(plan.dying_after(x, t)),
        Some(DiskKind::Full) => DiskFault::Full,
        Some(DiskKind::FailSync) => DiskFault::FailSync,
        Some(DiskKind::Stall) => {
            DiskFault::Stall(tokio::time::Instant::now() + plan.stall_end(x, t).saturating_sub(t))
        }
    };
    disk.inject(fault);
}

/// Follows the plan's faults of node `x`'s disk while the host runs.
async fn disk_faults(plan: Arc<Plan>, x: usize, disk: HostDisk) {
    for c in plan.changes() {
        let t = now();
        if c <= t {
            continue;
        }
        tokio::time::sleep(c - t).await;
        apply_disk(&plan, x, &disk);
    }
}

/// The software of one simulated host: a node and its accept loop.
async fn run_node(
    x: usize,
    plan: Arc<Plan>,
    disk: HostDisk,
    transport: Arc<SimTransport>,
    planted: Planted,
    boot_seed: u64,
) -> turmoil::Result {
    // The memory engine starts on the disk as the plan has it; the log
    // engine opens its files on a disk that works, and the plan's fault
    // applies from then on (a node that cannot open its files does not
    // start, which tests/disk.rs covers on real processes).
    if matches!(disk, HostDisk::Log { .. }) {
        disk.inject(DiskFault::None);
    } else {
        apply_disk(&plan, x, &disk);
    }
    let engine = disk.boot()?;
    let mut settings = Settings::new(
        x as u64 + 1,
        format!("0.0.0.0:{PORT}").parse().unwrap(),
        "unused".into(),
    );
    settings.sync_interval = Duration::from_millis(500);
    settings.min_replicas = plan.min_replicas;
    settings.replica_timeout = REPLICA_TIMEOUT;
    planted.adjust(&mut settings, plan.nodes);
    let node = Node::start(settings, Deps::new(transport.clone()).with_engine(engine))?;
    apply_disk(&plan, x, &disk);
    tokio::spawn(disk_faults(plan.clone(), x, disk.clone()));
    // How long each request from a peer waits while the node is slow.
    let lag = Arc::new(Mutex::new(fastrand::Rng::with_seed(boot_seed)));
    let listener = turmoil::net::TcpListener::bind(("0.0.0.0", PORT)).await?;
    loop {
        let (mut s, _) = listener.accept().await?;
        let node = node.clone();
        let plan = plan.clone();
        let lag = lag.clone();
        tokio::spawn(async move {
            let Ok(frame) = read_frame::<Frame>(&mut s).await else {
                return;
            };
            let reply = match frame {
                Frame::Rpc(env) => {
                    if plan.slow(x, now()) {
                        let wait = lag.lock().unwrap().u64(200..=1500);
                        tokio::time::sleep(Duration::from_millis(wait)).await;
                    }
                    Reply::Rpc(node.peers().answer(env).await.map_err(|e| e.to_string()))
                }
                Frame::Rpc3(bytes) => {
                    if plan.slow(x, now()) {
                        let wait = lag.lock().unwrap().u64(200..=1500);
                        tokio::time::sleep(Duration::from_millis(wait)).await;
                    }
                    Reply::Rpc3(match binary::decode_request(&bytes) {
                        Err(e) => Err(format!("malformed internal message: {e}")),
                        Ok(env) => match node.peers().answer(env).await {
                            Ok(resp) => Ok(binary::encode_response(&resp)),
                            Err(e) => Err(e.to_string()),
                        },
                    })
                }
                Frame::Forged(body) => {
                    if plan.slow(x, now()) {
                        let wait = lag.lock().unwrap().u64(200..=1500);
                        tokio::time::sleep(Duration::from_millis(wait)).await;
                    }
                    match tally::proto::decode_request(body.get().as_bytes()) {
                        Err(e) => Reply::Rpc(Err(format!("malformed internal message: {e}"))),
                        Ok(env) => match planted.believe(&node, &env).await {
                            Some(believed) => Reply::Rpc(Ok(believed)),
                            None => Reply::Rpc(
                                node.peers().answer(env).await.map_err(|e| e.to_string()),
                            ),
                        },
                    }
                }
                Frame::Config(_) if planted.refuses_post(&node) => Reply::Refused {
                    kind: Refusal::Other,
                    message: "planted: posts refused".into(),
                },
                Frame::Config(actors) => {
                    let actors = tally::cluster::parse_actors(&actors).expect("valid actors");
                    match node.place().post_config(actors, Vec::new()).await {
                        Ok(s) => {
                            // The config this post made, not a concurrent
                            // one that won meanwhile.
                            let stamp = s.created.unwrap_or_else(|| s.membership.stamp());
                            Reply::Posted {
                                stamp: (stamp.version, stamp.origin),
                            }
                        }
                        Err(e) => Reply::Refused {
                            kind: match e {
                                tally::node::PostConfigError::NotMember { .. } => {
                                    Refusal::NotMember
                                }
                                tally::node::PostConfigError::Store(ref e) if e.is_transient() => {
                                    Refusal::Storage
                                }
                                tally::node::PostConfigError::Store(_) => Refusal::Other,
                            },
                            message: e.to_string(),
                        },
                    }
                }
                Frame::Increment { name, amount } => {
                    match planted.increment(&node, name, amount).await {
                        Ok(v) => Reply::Value(Ok(v)),
                        Err(e) => Reply::Refused {
                            kind: Refusal::of_increment(&e),
                            message: e.to_string(),
                        },
                    }
                }
                Frame::Value { name } => Reply::Value(Ok(planted.value(&node, &name).await)),
                Frame::Consistent { .. } if planted.fails_read() => Reply::Unavailable {
                    unreachable: vec!["planted: reads fail".into()],
                    best: 0,
                },
                Frame::Consistent { name, timeout_ms } => {
                    let deadline = planted.read_deadline(Duration::from_millis(timeout_ms));
                    match node.reads().consistent_value(&name, deadline).await {
                        Ok(v) => Reply::Value(Ok(v)),
                        Err(u) => Reply::Unavailable {
                            unreachable: u.unreachable.iter().map(|a| a.to_string()).collect(),
                            best: u.best_known_value,
                        },
                    }
                }
                Frame::Components { name } => {
                    Reply::Components((&node.store().counter(&name).unwrap_or_default()).into())
                }
                Frame::Walk { limit, timeout_ms } => {
                    let deadline = tokio::time::Instant::now() + Duration::from_millis(timeout_ms);
                    let mut after: Option<String> = None;
                    let mut values = Vec::new();
                    loop {
                        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                        match node
                            .reads()
                            .consistent_page(after.as_deref(), limit, left, Vec::new())
                            .await
                        {
                            Ok(page) => {
                                values.extend(
                                    page.counters.iter().map(|(n, c)| (n.clone(), c.value())),
                                );
                                match page.next {
                                    Some(n) => after = Some(n),
                                    None => break Reply::Walked(values),
                                }
                            }
                            Err(u) => {
                                break Reply::Unavailable {
                                    unreachable: u
                                        .unreachable
                                        .iter()
                                        .map(|a| a.to_string())
                                        .collect(),
                                    best: 0,
                                };
                            }
                        }
                    }
                }
                Frame::Status => {
                    let m = node.membership();
                    Reply::Status(NodeStatus {
                        stamp: (m.stamp().version, m.stamp().origin),
                        actors: m.config.actors.iter().map(|a| a.to_string()).collect(),
                        role: format!("{:?}", node.role()),
                        healthy: node.store().health().healthy,
                    })
                }
            };
            let _ = write_frame(&mut s, &reply).await;
        });
    }
}

// ---------------------------------------------------------------- a client's call

/// What became of one client request.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// 200 with this value.
    Ok(u128),
    /// A consistent read's 503.
    Unavailable {
        unreachable: Vec<String>,
        best: u128,
    },
    /// An error answer.
    Refused(Refusal, String),
    /// A config post's 200, with the stamp of the node's config after it.
    Posted((u64, u64)),
    /// What a node said of itself.
    Status(NodeStatus),
    /// The client dropped the connection on purpose before the answer.
    Broken,
    /// The connection failed (refused or reset): the host is down or restarting.
    Lost(String),
    /// No answer within the client's timeout.
    TimedOut,
}

impl Outcome {
    pub fn value(&self) -> Option<u128> {
        match self {
            Outcome::Ok(v) => Some(*v),
            _ => None,
        }
    }
}

/// Where a client drops its own connection, if it does.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Break {
    No,
    /// Connected, sent nothing.
    BeforeSend,
    /// Half a frame sent.
    MidFrame,
    /// The whole request sent, the answer not awaited.
    BeforeReply,
}

impl Break {
    fn draw(rng: &mut fastrand::Rng, rate: f64) -> Break {
        if rng.f64() >= rate {
            return Break::No;
        }
        match rng.u8(0..3) {
            0 => Break::BeforeSend,
            1 => Break::MidFrame,
            _ => Break::BeforeReply,
        }
    }
}

/// A client's call to a node. A connection the client breaks itself is
/// `Broken`; turmoil's random link failures never touch client links (they
/// lose messages silently, which would be indistinguishable from a node
/// that does not answer), so `TimedOut` always means the node did not answer.
async fn ask(host: &str, frame: Frame, timeout: Duration, brk: Break) -> Outcome {
    match call_node(host, frame, timeout, brk).await {
        Err(outcome) => outcome,
        Ok(Reply::Value(Ok(v))) => Outcome::Ok(v),
        Ok(Reply::Value(Err(e))) => Outcome::Refused(Refusal::Other, e),
        Ok(Reply::Refused { kind, message }) => Outcome::Refused(kind, message),
        Ok(Reply::Unavailable { unreachable, best }) => Outcome::Unavailable { unreachable, best },
        Ok(Reply::Posted { stamp }) => Outcome::Posted(stamp),
        Ok(Reply::Status(status)) => Outcome::Status(status),
        Ok(other) => Outcome::Refused(Refusal::Other, format!("unexpected reply {other:?}")),
    }
}

/// A client's call to a node: the reply, or what became of the call.
async fn call_node(
    host: &str,
    frame: Frame,
    timeout: Duration,
    brk: Break,
) -> Result<Reply, Outcome> {
    let exchange = async {
        let lost = |e: std::io::Error| Outcome::Lost(e.to_string());
        let mut s = turmoil::net::TcpStream::connect((host, PORT))
            .await
            .map_err(lost)?;
        match brk {
            Break::No => {}
            Break::BeforeSend => return Err(Outcome::Broken),
            Break::MidFrame => {
                let bytes = serde_json::to_vec(&frame).expect("frames serialize");
                s.write_all(&(bytes.len() as u32).to_le_bytes())
                    .await
                    .map_err(lost)?;
                s.write_all(&bytes[..bytes.len() / 2]).await.map_err(lost)?;
                return Err(Outcome::Broken);
            }
            Break::BeforeReply => {
                write_frame(&mut s, &frame).await.map_err(lost)?;
                return Err(Outcome::Broken);
            }
        }
        write_frame(&mut s, &frame).await.map_err(lost)?;
        read_frame::<Reply>(&mut s).await.map_err(lost)
    };
    match tokio::time::timeout(timeout, exchange).await {
        Err(_) => Err(Outcome::TimedOut),
        Ok(result) => result,
    }
}

// ---------------------------------------------------------------- history

#[derive(Clone, Debug)]
pub struct Inc {
    pub name: String,
    pub node: usize,
    pub amount: u64,
    pub start: Duration,
    pub end: Duration,
    pub outcome: Outcome,
}

impl Inc {
    /// Acknowledged with 200; otherwise uncertain.
    pub fn acked(&self) -> bool {
        matches!(self.outcome, Outcome::Ok(_))
    }
}

#[derive(Clone, Debug)]
pub struct Read {
    pub name: String,
    pub node: usize,
    pub consistent: bool,
    /// The node's deadline (consistent reads).
    pub timeout: Duration,
    /// How long the client waited at most.
    pub client_timeout: Duration,
    pub start: Duration,
    pub end: Duration,
    pub outcome: Outcome,
    pub after_heal: bool,
}

impl Read {
    pub fn value(&self) -> Option<u128> {
        self.outcome.value()
    }
}

/// What the post-heal probe of one node found.
#[derive(Clone, Debug)]
pub struct Liveness {
    pub node: usize,
    /// Not an actor of the final config: it must refuse increments.
    pub departed: bool,
    /// When an increment was first acknowledged after the heal.
    pub acked_at: Option<Duration>,
    /// When a consistent read first answered 200 after the heal.
    pub read_at: Option<Duration>,
    /// When an increment was first refused because the node left.
    pub refused_at: Option<Duration>,
    pub last_increment: Option<Outcome>,
    pub last_read: Option<Outcome>,
}

/// One config post: the initial one (generation 0) and each planned one.
#[derive(Clone, Debug)]
pub struct Posted {
    /// Posts of one generation are concurrent; each generation starts from
    /// the newest config of the ones before.
    pub generation: usize,
    pub start: Duration,
    pub end: Duration,
    /// The node that took it; `None` when no node holding the newest
    /// config could be found in time (the post was not made).
    pub target: Option<usize>,
    pub actors: Vec<usize>,
    pub outcome: Outcome,
    /// The stamp of the config it was made from (none for the first).
    pub base: Option<(u64, u64)>,
    /// The crash or wipe of its node that the plan timed from it.
    pub struck: Option<Window>,
    /// What became of a post whose fate its answer does not tell, learned
    /// from the nodes later: `Some(Some(stamp))`, its config exists (a post
    /// that got no answer, its node struck); `Some(None)`, its config does
    /// not (never made, or lost with a data folder before it spread).
    pub resolved: Option<Option<(u64, u64)>>,
}

impl Posted {
    /// The stamp of the config made, if the post answered 200.
    pub fn stamp(&self) -> Option<(u64, u64)> {
        match self.outcome {
            Outcome::Posted(stamp) => Some(stamp),
            _ => None,
        }
    }

    /// The stamp of the config this post made, if it exists: as answered,
    /// unless learned otherwise since.
    pub fn config(&self) -> Option<(u64, u64)> {
        self.resolved.unwrap_or_else(|| self.stamp())
    }

    /// The stamp its config has if it was made: one version past its base,
    /// with its node as origin.
    pub fn expected(&self) -> Option<(u64, u64)> {
        Some((self.base?.0 + 1, self.target? as u64 + 1))
    }

    /// Whether the post was sent (it may have been applied).
    pub fn made(&self) -> bool {
        self.target.is_some()
    }
}

/// The newest config among posts of generations below `before`: the
/// highest stamp of the latest generation with a config that exists.
pub fn newest(posts: &[Posted], before: usize) -> Option<&Posted> {
    let ok = || {
        posts
            .iter()
            .filter(|p| p.generation < before && p.config().is_some())
    };
    let generation = ok().map(|p| p.generation).max()?;
    ok().filter(|p| p.generation == generation)
        .max_by_key(|p| p.config())
}

/// The config the run ends with.
pub fn final_config(posts: &[Posted]) -> Option<&Posted> {
    newest(posts, usize::MAX)
}

/// What the probe after a disk fault found.
#[derive(Clone, Debug)]
pub struct Recovery {
    pub node: usize,
    /// When the disk worked again.
    pub from: Duration,
    /// When an increment was first taken by storage (acknowledged, or
    /// applied but short of replicas).
    pub took_at: Option<Duration>,
    /// Whether some answer refused before storage was asked (the node left
    /// the cluster, or has too few actors for its `--min-replicas`).
    pub not_asked: bool,
    pub last: Option<Outcome>,
}

#[derive(Default, Debug)]
pub struct History {
    pub incs: Vec<Inc>,
    pub reads: Vec<Read>,
    /// (node, time) of every wipe.
    pub wipes: Vec<(usize, Duration)>,
    pub liveness: Vec<Liveness>,
    pub posts: Vec<Posted>,
    pub recoveries: Vec<Recovery>,
    /// When every node of the last generation's configs first reported the
    /// same config, and what each reported last.
    pub configs_agreed_at: Option<Duration>,
    pub configs: Vec<(usize, Option<(u64, u64)>)>,
    /// When every actor of the final config first reported equal values for every name.
    pub converged_at: Option<Duration>,
    /// Per name, the value every node reported then.
    pub final_values: BTreeMap<String, Vec<u128>>,
    /// Per name, each node's total over its components (all its
    /// incarnations) as one actor of the final config held them then.
    pub final_components: BTreeMap<String, BTreeMap<usize, u128>>,
    pub setup_failed: Option<String>,
    /// What the simulated disks did (log seeds): every disk the run used,
    /// wiped ones included, summed.
    pub disks: Option<SimStats>,
    /// Faults the workload added to the plan while it ran: strikes of the
    /// nodes posts went to (see [`plan::Strike`]).
    pub struck: Vec<Window>,
    /// The config every node reported once the network healed, when the
    /// fate of some post had to be learned that way.
    pub settled: Option<(u64, u64)>,
    /// Whether the liar ran (see [`liar`]).
    pub liar: bool,
    /// Every forged message the liar sent, and what became of it.
    pub forged: Vec<Forged>,
    /// Backup walks that completed (each also recorded as reads).
    pub walks: usize,
}

// ---------------------------------------------------------------- the run

pub fn host(i: usize) -> String {
    format!("n{}", i + 1)
}

fn end_name(e: End) -> String {
    match e {
        End::Node(i) => host(i),
        End::Client => "client".into(),
        End::Liar => "liar".into(),
    }
}

/// Every link the plan can affect: between nodes, and between the client
/// (and the liar, if the plan has one) and each node.
fn links(plan: &Plan) -> Vec<(End, End)> {
    let mut out = Vec::new();
    for a in 0..plan.nodes {
        for b in a + 1..plan.nodes {
            out.push((End::Node(a), End::Node(b)));
        }
        out.push((End::Client, End::Node(a)));
        if plan.liar {
            out.push((End::Liar, End::Node(a)));
        }
    }
    out
}

/// What the runner has applied to turmoil so far.
struct Applied {
    /// Each link's two ways: first to second, second to first.
    links: BTreeMap<(End, End), (Link, Link)>,
    running: Vec<bool>,
    /// Which wipe windows have replaced their node's engine.
    wiped: Vec<bool>,
    /// Turmoil's fail rate on node-to-node links (0 from the heal on).
    fail_rate: f64,
}

/// Every host's disk now, and the disks wipes replaced (kept for their figures).
struct Disks {
    current: Vec<Rc<RefCell<HostDisk>>>,
    retired: Vec<HostDisk>,
}

/// Kills node `x` as a power cut would: whatever its dying tasks send is
/// lost. Tokio drops a runtime's tasks in an order that depends on
/// process-wide task ids, and every stream dropped sends a FIN whose latency
/// turmoil draws from its one random stream; were those messages sent, a
/// history would depend on what ran before it in the process, and a seed
/// would not replay. So the node's links are cut, with no random failure
/// (which would also draw), while it dies; the caller then restores them.
fn power_cut(sim: &mut turmoil::Sim<'_>, plan: &Plan, x: usize, applied: &mut Applied) {
    let me = host(x);
    for (pair, state) in applied.links.iter_mut() {
        let other = match *pair {
            (End::Node(a), b) if a == x => b,
            (a, End::Node(b)) if b == x => a,
            _ => continue,
        };
        let other = end_name(other);
        sim.set_link_fail_rate(me.as_str(), other.as_str(), 0.0);
        sim.partition(me.as_str(), other.as_str());
        *state = (Link::Cut, Link::Cut);
    }
    sim.crash(me.as_str());
    for y in (0..plan.nodes).filter(|&y| y != x) {
        sim.set_link_fail_rate(me.as_str(), host(y).as_str(), applied.fail_rate);
    }
}

/// Makes turmoil's hosts and links match the plan at `now`: crashes first,
/// then lost folders, then links, then restarts, so a node restarts into
/// the network it should see.
fn apply(
    sim: &mut turmoil::Sim<'_>,
    plan: &Plan,
    now: Duration,
    applied: &mut Applied,
    disks: &mut Disks,
    planted: Planted,
    history: &Mutex<History>,
) {
    for (x, disk) in disks.current.iter().enumerate() {
        if applied.running[x] && !plan.running(x, now) {
            power_cut(sim, plan, x, applied);
            disk.borrow().crash();
            applied.running[x] = false;
        }
    }
    for (k, w) in plan.faults.iter().enumerate() {
        if let Fault::Wipe(x) = w.fault
            && !applied.wiped[k]
            && w.start <= now
        {
            applied.wiped[k] = true;
            let generation = applied.wiped.iter().filter(|w| **w).count() as u64;
            let old = std::mem::replace(
                &mut *disks.current[x].borrow_mut(),
                planted.fresh_disk(plan, x, generation),
            );
            disks.retired.push(old);
            history.lock().unwrap().wipes.push((x, now));
        }
    }
    let fail_rate = applied.fail_rate;
    for (pair, state) in applied.links.iter_mut() {
        let want = (
            plan.flow(pair.0, pair.1, now),
            plan.flow(pair.1, pair.0, now),
        );
        if *state != want {
            let (a, b) = (end_name(pair.0), end_name(pair.1));
            let (a, b) = (a.as_str(), b.as_str());
            match want {
                // Healthy again, and whatever was held is delivered.
                (Link::Open, Link::Open) => sim.release(a, b),
                (Link::Held, Link::Held) => sim.hold(a, b),
                (Link::Cut, Link::Cut) => sim.partition(a, b),
                // One way cut: turmoil keeps a state per way. Hold or
                // release both (a release delivers what was held), then
                // cut one way, which drops what is under way on it.
                (ab, ba) => {
                    if ab == Link::Held || ba == Link::Held {
                        sim.hold(a, b);
                    } else {
                        sim.release(a, b);
                    }
                    if ab == Link::Cut {
                        sim.partition_oneway(a, b);
                    }
                    if ba == Link::Cut {
                        sim.partition_oneway(b, a);
                    }
                }
            }
            // Turmoil's random failures break a link both ways and repair
            // it both ways, which would undo a one-way cut: none on such a
            // link while it holds.
            let one_way = |(ab, ba): (Link, Link)| (ab == Link::Cut) != (ba == Link::Cut);
            if one_way(*state) != one_way(want) {
                let rate = if one_way(want) { 0.0 } else { fail_rate };
                sim.set_link_fail_rate(a, b, rate);
            }
            *state = want;
        }
    }
    for x in 0..plan.nodes {
        if !applied.running[x] && plan.running(x, now) {
            sim.bounce(host(x).as_str());
            applied.running[x] = true;
        }
    }
}

/// Runs one plan to completion and returns what the clients saw.
pub fn run(plan: &Plan, planted: Planted) -> History {
    assert!(
        plan.faults
            .iter()
            .all(|w| w.start < w.end && w.end <= plan.heal_at),
        "every fault ends by the heal"
    );
    fastrand::seed(plan.seed);
    let mut sim = turmoil::Builder::new()
        .simulation_duration(plan.end_at + Duration::from_secs(60))
        .tick_duration(Duration::from_millis(1))
        .max_message_latency(plan.max_latency)
        .fail_rate(plan.fail_rate)
        .repair_rate(0.5)
        .rng_seed(plan.seed)
        // A paused host gets every held connection at once when it resumes;
        // turmoil panics past this backlog, where a kernel would drop.
        .tcp_capacity(4096)
        .build();
    let mut disks = Disks {
        current: (0..plan.nodes)
            .map(|x| Rc::new(RefCell::new(planted.fresh_disk(plan, x, 0))))
            .collect(),
        retired: Vec::new(),
    };
    let shared_plan = Arc::new(plan.clone());
    let noise = Noise {
        duplicate_rate: plan.duplicate_rate,
        delay_rate: plan.delay_rate,
        max_extra_delay: plan.max_extra_delay,
    };
    for (i, disk) in disks.current.iter().enumerate() {
        let disk = disk.clone();
        let boots = Rc::new(Cell::new(0u64));
        let seed = plan.seed;
        let plan = shared_plan.clone();
        sim.host(host(i).as_str(), move || {
            let disk = disk.borrow().clone();
            boots.set(boots.get() + 1);
            let transport = Arc::new(SimTransport {
                planted,
                noise,
                trace: std::env::var_os("TALLY_SIM_TRACE").is_some(),
                rng: Mutex::new(fastrand::Rng::with_seed(
                    seed ^ (i as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15)
                        ^ boots.get().wrapping_mul(0xbf58_476d_1ce4_e5b9),
                )),
            });
            let boot_seed = seed
                ^ (i as u64 + 1).wrapping_mul(0x2545_f491_4f6c_dd1d)
                ^ boots.get().wrapping_mul(0x94d0_49bb_1331_11eb);
            run_node(i, plan.clone(), disk, transport, planted, boot_seed)
        });
    }
    let history = Arc::new(Mutex::new(History::default()));
    {
        let history = history.clone();
        let plan = plan.clone();
        sim.client("client", async move {
            workload(plan, history).await;
            Ok(())
        });
    }
    // Turmoil loses messages on a broken link silently; client links are
    // spared so that a client's timeout always means a silent node.
    for i in 0..plan.nodes {
        sim.set_link_fail_rate("client", host(i).as_str(), 0.0);
    }
    if plan.liar {
        history.lock().unwrap().liar = true;
        let history = history.clone();
        let plan = plan.clone();
        let nodes = plan.nodes;
        sim.client("liar", async move {
            liar::liar(plan, history).await;
            Ok(())
        });
        // Spared like the client's: the liar skips a node only when the
        // plan cuts it off, pauses it or takes it down.
        for i in 0..nodes {
            sim.set_link_fail_rate("liar", host(i).as_str(), 0.0);
        }
    }

    // The plan with the faults the workload added so far.
    let mut effective = plan.clone();
    let mut changes = plan.changes();
    let mut next = 0;
    let mut healed = false;
    let mut applied = Applied {
        links: links(plan)
            .into_iter()
            .map(|l| (l, (Link::Open, Link::Open)))
            .collect(),
        running: vec![true; plan.nodes],
        wiped: vec![false; plan.faults.len()],
        fail_rate: plan.fail_rate,
    };
    loop {
        let now = sim.elapsed();
        let mut due = next < changes.len() && changes[next] <= now;
        {
            let h = history.lock().unwrap();
            let known = effective.faults.len() - plan.faults.len();
            if h.struck.len() > known {
                // A strike the workload timed from a post: part of the plan
                // from now on (it starts now at the earliest).
                effective.faults.extend(h.struck[known..].iter().cloned());
                applied.wiped.resize(effective.faults.len(), false);
                changes = effective.changes();
                next = changes.partition_point(|c| *c < now);
                due = true;
            }
        }
        if due {
            while next < changes.len() && changes[next] <= now {
                next += 1;
            }
            if now >= plan.heal_at && !healed {
                // A whole network: no more broken links either.
                sim.set_fail_rate(0.0);
                for (a, b) in links(plan) {
                    sim.set_link_fail_rate(end_name(a).as_str(), end_name(b).as_str(), 0.0);
                }
                applied.fail_rate = 0.0;
                healed = true;
            }
            apply(
                &mut sim,
                &effective,
                now,
                &mut applied,
                &mut disks,
                planted,
                &history,
            );
        }
        match sim.step() {
            Ok(true) => break,
            Ok(false) => {}
            Err(e) => {
                history.lock().unwrap().setup_failed = Some(format!("simulation error: {e}"));
                break;
            }
        }
    }
    drop(sim);
    let mut history = Arc::try_unwrap(history)
        .map(|m| m.into_inner().unwrap())
        .unwrap_or_else(|h| std::mem::take(&mut *h.lock().unwrap()));
    let all = disks.current.iter().map(|d| d.borrow().clone());
    for disk in all.chain(disks.retired) {
        if let Some(s) = disk.stats() {
            history.disks.get_or_insert_with(SimStats::default).add(&s);
        }
    }
    history
}

// ---------------------------------------------------------------- the workload

/// An increment, recorded in the history.
async fn increment(
    history: &Mutex<History>,
    node: usize,
    name: &str,
    amount: u64,
    brk: Break,
) -> Outcome {
    let start = now();
    let outcome = ask(
        &host(node),
        Frame::Increment {
            name: name.to_string(),
            amount,
        },
        CLIENT_TIMEOUT,
        brk,
    )
    .await;
    history.lock().unwrap().incs.push(Inc {
        name: name.to_string(),
        node,
        amount,
        start,
        end: now(),
        outcome: outcome.clone(),
    });
    outcome
}

/// A local read, recorded in the history.
async fn local_read(
    history: &Mutex<History>,
    node: usize,
    name: &str,
    brk: Break,
    after_heal: bool,
) -> Outcome {
    let start = now();
    let outcome = ask(
        &host(node),
        Frame::Value {
            name: name.to_string(),
        },
        CLIENT_TIMEOUT,
        brk,
    )
    .await;
    history.lock().unwrap().reads.push(Read {
        name: name.to_string(),
        node,
        consistent: false,
        timeout: CLIENT_TIMEOUT,
        client_timeout: CLIENT_TIMEOUT,
        start,
        end: now(),
        outcome: outcome.clone(),
        after_heal,
    });
    outcome
}

/// A consistent read with deadline `timeout`, recorded in the history; the
/// client waits up to `client_timeout`.
async fn consistent_read(
    history: &Mutex<History>,
    node: usize,
    name: &str,
    timeout: Duration,
    client_timeout: Duration,
    brk: Break,
    after_heal: bool,
) -> Outcome {
    let start = now();
    let outcome = ask(
        &host(node),
        Frame::Consistent {
            name: name.to_string(),
            timeout_ms: timeout.as_millis() as u64,
        },
        client_timeout,
        brk,
    )
    .await;
    history.lock().unwrap().reads.push(Read {
        name: name.to_string(),
        node,
        consistent: true,
        timeout,
        client_timeout,
        start,
        end: now(),
        outcome: outcome.clone(),
        after_heal,
    });
    outcome
}

/// A backup's walk through `node` (pages of two names, so a walk of the
/// four names takes three pages), recorded when it completes as one
/// consistent read per name that started and ended with the walk: the
/// checks of a successful consistent read (G1, G2, G5's unheard node)
/// apply to each. A walk that fails is not recorded: unlike a read, a
/// walk's pages each wait on the cluster, and nothing bounds how many.
async fn walk(history: &Mutex<History>, node: usize, timeout: Duration) {
    let start = now();
    let reply = call_node(
        &host(node),
        Frame::Walk {
            limit: 2,
            timeout_ms: timeout.as_millis() as u64,
        },
        timeout + Duration::from_secs(3),
        Break::No,
    )
    .await;
    let Ok(Reply::Walked(values)) = reply else {
        return;
    };
    let end = now();
    let mut h = history.lock().unwrap();
    h.walks += 1;
    for name in NAMES {
        let value = values
            .iter()
            .find(|(n, _)| n == name)
            .map_or(0, |(_, v)| *v);
        h.reads.push(Read {
            name: name.to_string(),
            node,
            consistent: true,
            timeout,
            client_timeout: timeout + Duration::from_secs(3),
            start,
            end,
            outcome: Outcome::Ok(value),
            after_heal: false,
        });
    }
}

/// Backups now and then, from a random named node, until the heal; a
/// random stream of its own, so the clients' choices stay as they were.
async fn walker(w: Shared) {
    let plan = &w.plan;
    let mut rng = fastrand::Rng::with_seed(plan.seed ^ 0x5bd1_e995_0b0c_0a11);
    while now() < plan.heal_at {
        tokio::time::sleep(Duration::from_millis(rng.u64(300..1500))).await;
        let named = w.named();
        let node = named[rng.usize(0..named.len())];
        walk(&w.history, node, CONSISTENT_TIMEOUT * 2).await;
    }
}

/// What the workload shares between its tasks.
#[derive(Clone)]
struct Shared {
    plan: Plan,
    history: Arc<Mutex<History>>,
    /// Nodes named as actors by some config that has been posted (200):
    /// only they get client requests. A node no config named yet would
    /// acknowledge as a cluster of one, which nothing promises to cover.
    named: Arc<Mutex<Vec<usize>>>,
    /// Set once the last planned post has been made or given up.
    posts_done: tokio::sync::watch::Receiver<bool>,
}

impl Shared {
    fn named(&self) -> Vec<usize> {
        self.named.lock().unwrap().clone()
    }

    fn is_named(&self, x: usize) -> bool {
        self.named.lock().unwrap().contains(&x)
    }
}

/// One random client until shortly after the heal.
async fn client(c: usize, w: Shared) {
    let plan = &w.plan;
    let history = &w.history;
    let mut rng = fastrand::Rng::with_seed(plan.seed ^ (0x9e37_79b9 * (c as u64 + 1)));
    while now() < plan.heal_at + Duration::from_secs(2) {
        let named = w.named();
        let node = named[rng.usize(0..named.len())];
        let name = NAMES[rng.usize(0..NAMES.len())];
        let after_heal = now() >= plan.heal_at;
        let brk = Break::draw(&mut rng, plan.client_break_rate);
        match rng.u8(0..10) {
            0..=5 => {
                let amount = rng.u64(1..=10);
                increment(history, node, name, amount, brk).await;
            }
            6..=7 => {
                local_read(history, node, name, brk, after_heal).await;
            }
            _ => {
                consistent_read(
                    history,
                    node,
                    name,
                    CONSISTENT_TIMEOUT,
                    CONSISTENT_TIMEOUT + Duration::from_secs(3),
                    brk,
                    after_heal,
                )
                .await;
            }
        }
        tokio::time::sleep(Duration::from_millis(rng.u64(5..60))).await;
    }
}

/// From the heal on, retries an increment and a consistent read on `node`
/// until each succeeds or `heal_at + LIVENESS_BOUND` passes; on a node that
/// left the cluster, retries an increment until one is refused for that.
async fn probe_liveness(node: usize, w: Shared) -> Liveness {
    let plan = &w.plan;
    let history = &w.history;
    let bound = plan.heal_at + LIVENESS_BOUND;
    // The heal is planned: the runner applies it in the step where sim time
    // reaches `heal_at`, before any host runs that step. (Nothing from
    // outside the simulation may wake its tasks: that breaks replay.)
    tokio::time::sleep(plan.heal_at.saturating_sub(now())).await;
    let mut done = w.posts_done.clone();
    let _ = done.wait_for(|d| *d).await;
    // A node that a config which still exists named, and the final one
    // does not (one named only by a config lost with a data folder never
    // heard of it).
    let departed = {
        let h = history.lock().unwrap();
        final_config(&h.posts).is_some_and(|f| !f.actors.contains(&node))
            && h.posts
                .iter()
                .any(|p| p.config().is_some() && p.actors.contains(&node))
    };
    let writes = async {
        let mut last = None;
        let mut acked_at = None;
        for attempt in 0..MAX_ATTEMPTS {
            if now() >= bound {
                break;
            }
            let name = NAMES[(node + attempt) % NAMES.len()];
            let outcome = increment(history, node, name, 1, Break::No).await;
            if outcome.value().is_some() {
                acked_at = acked_at.or(Some(now()));
                if !departed {
                    return (acked_at, None, Some(outcome));
                }
            }
            if departed && matches!(outcome, Outcome::Refused(Refusal::NotMember, _)) {
                return (acked_at, Some(now()), Some(outcome));
            }
            last = Some(outcome);
            tokio::time::sleep(RETRY_PAUSE).await;
        }
        (acked_at, None, last)
    };
    let reads = async {
        let mut last = None;
        for attempt in 0..MAX_ATTEMPTS {
            let left = bound.saturating_sub(now());
            if left.is_zero() || departed {
                break;
            }
            let name = NAMES[(node + attempt) % NAMES.len()];
            let timeout = CONSISTENT_TIMEOUT.min(left);
            let outcome = consistent_read(
                history,
                node,
                name,
                timeout,
                (timeout + Duration::from_secs(3)).min(left),
                Break::No,
                true,
            )
            .await;
            if outcome.value().is_some() {
                return (Some(now()), Some(outcome));
            }
            last = Some(outcome);
            tokio::time::sleep(RETRY_PAUSE).await;
        }
        (None, last)
    };
    let ((acked_at, refused_at, last_increment), (read_at, last_read)) =
        tokio::join!(writes, reads);
    Liveness {
        node,
        departed,
        acked_at,
        read_at,
        refused_at,
        last_increment,
        last_read,
    }
}

/// From `from`, when node `x`'s disk works again, retries an increment on
/// it until storage takes one or `RECOVERY_BOUND` passes.
async fn probe_recovery(x: usize, from: Duration, w: Shared) {
    tokio::time::sleep(from.saturating_sub(now())).await;
    if !w.is_named(x) {
        return;
    }
    let bound = from + RECOVERY_BOUND;
    let mut probe = Recovery {
        node: x,
        from,
        took_at: None,
        not_asked: false,
        last: None,
    };
    for attempt in 0..MAX_ATTEMPTS {
        if now() >= bound {
            break;
        }
        let name = NAMES[(x + attempt) % NAMES.len()];
        let outcome = increment(&w.history, x, name, 1, Break::No).await;
        probe.not_asked |= matches!(
            outcome,
            Outcome::Refused(Refusal::TooFewActors | Refusal::NotMember, _)
        );
        let took = matches!(
            outcome,
            Outcome::Ok(_) | Outcome::Refused(Refusal::Replicas, _)
        );
        probe.last = Some(outcome);
        if took {
            probe.took_at = Some(now());
            break;
        }
        tokio::time::sleep(RETRY_PAUSE).await;
    }
    w.history.lock().unwrap().recoveries.push(probe);
}

fn actor_names(actors: &[usize]) -> Vec<String> {
    actors
        .iter()
        .map(|&i| format!("{}:{PORT}", host(i)))
        .collect()
}

/// One request and its raw answer, if any (within a second).
async fn ask_raw(host: &str, frame: Frame) -> Option<Reply> {
    let exchange = async {
        let mut s = turmoil::net::TcpStream::connect((host, PORT)).await.ok()?;
        write_frame(&mut s, &frame).await.ok()?;
        read_frame::<Reply>(&mut s).await.ok()
    };
    tokio::time::timeout(Duration::from_secs(1), exchange)
        .await
        .ok()
        .flatten()
}

/// Asks node `x` for its status.
async fn status(x: usize) -> Option<NodeStatus> {
    match ask(&host(x), Frame::Status, Duration::from_secs(1), Break::No).await {
        Outcome::Status(s) => Some(s),
        _ => None,
    }
}

/// The plan with the faults added so far (strikes of posts' nodes).
fn effective(w: &Shared) -> Plan {
    w.plan.with_faults(&w.history.lock().unwrap().struck)
}

/// Makes one planned post: to the first node (in a seeded order) that may
/// take it, holds the newest config and is an actor of it. A post with a
/// strike adds, as it is sent, the crash (or wipe) of that node to the plan.
async fn post_one(
    w: &Shared,
    post: &Post,
    generation: usize,
    newest: &Posted,
    mut rng: fastrand::Rng,
) -> Posted {
    let stamp = newest.config().expect("the newest config exists");
    let mut candidates: Vec<usize> = newest
        .actors
        .iter()
        .copied()
        .filter(|x| post.side.as_ref().is_none_or(|side| side.contains(x)))
        .collect();
    rng.shuffle(&mut candidates);
    for _ in 0..MAX_ATTEMPTS {
        if now() > post.at + POST_WINDOW {
            break;
        }
        let plan = effective(w);
        for &x in &candidates {
            // Only a node that runs, and whose disk works, for as long as
            // the post may take: a post left uncertain would make the next
            // one a conflicting one.
            let (from, until) = (now(), now() + POST_TIMEOUT);
            if !plan.serving_throughout(x, from, until)
                || !plan.disk_settled_throughout(x, from, until)
            {
                continue;
            }
            if status(x).await.is_some_and(|s| s.stamp == stamp) {
                let start = now();
                let struck = post.strike.and_then(|strike| {
                    let begin = start + strike.after;
                    let wipe =
                        strike.wipe && (plan.min_replicas == 0 || plan.wipe_victim == Some(x));
                    let window = Window {
                        start: begin,
                        end: (begin + strike.down).min(plan.heal_at),
                        fault: if wipe {
                            Fault::Wipe(x)
                        } else {
                            Fault::Crash(x)
                        },
                    };
                    (window.start < window.end).then(|| {
                        w.history.lock().unwrap().struck.push(window.clone());
                        window
                    })
                });
                let outcome = ask(
                    &host(x),
                    Frame::Config(actor_names(&post.actors)),
                    POST_TIMEOUT,
                    Break::No,
                )
                .await;
                return Posted {
                    generation,
                    start,
                    end: now(),
                    target: Some(x),
                    actors: post.actors.clone(),
                    outcome,
                    base: Some(stamp),
                    struck,
                    resolved: None,
                };
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Posted {
        generation,
        start: now(),
        end: now(),
        target: None,
        actors: post.actors.clone(),
        outcome: Outcome::Refused(Refusal::Other, "no node held the newest config".into()),
        base: Some(stamp),
        struck: None,
        resolved: None,
    }
}

/// A post that got no answer because its node crashed: once the node runs
/// again, its own config says whether the post was made (a config is
/// stored before anyone else can see it, so one the node lacks after its
/// restart exists nowhere). Gives up after a few seconds, or at the heal.
async fn resolve_crashed(w: &Shared, p: &mut Posted) {
    let (Some(x), Some(base), Some(window)) = (p.target, p.base, p.struck.clone()) else {
        return;
    };
    tokio::time::sleep(window.end.saturating_sub(now())).await;
    let until = (now() + Duration::from_secs(3)).min(w.plan.heal_at);
    while now() < until {
        if let Some(s) = status(x).await {
            if s.stamp == base {
                p.resolved = Some(None);
            } else if s.actors == actor_names(&p.actors) && Some(s.stamp) == p.expected() {
                p.resolved = Some(Some(s.stamp));
            }
            return;
        }
        tokio::time::sleep(RETRY_PAUSE).await;
    }
}

/// The node index of an actor's name (`n3:7777` is 2).
fn node_index(actor: &str) -> Option<usize> {
    actor
        .strip_prefix('n')?
        .split(':')
        .next()?
        .parse::<usize>()
        .ok()?
        .checked_sub(1)
}

/// After the heal, learns which config the cluster holds, for runs where a
/// config may have been lost with a data folder, or where a post's fate is
/// still unknown: asks every node until the highest config any of them
/// reports is reported by every node that holds one and by all its actors.
/// Then marks the post that made it as made, and every post after it as
/// lost. Gives up 5 s after the heal (the checks of one config then fail).
async fn settle(w: &Shared) {
    let bound = w.plan.heal_at + Duration::from_secs(5);
    tokio::time::sleep(w.plan.heal_at.saturating_sub(now())).await;
    let settled = loop {
        let mut seen = Vec::new();
        for x in 0..w.plan.nodes {
            if let Some(s) = status(x).await
                && s.stamp != (0, 0)
            {
                seen.push((x, s));
            }
        }
        let highest = seen.iter().map(|(_, s)| s).max_by_key(|s| s.stamp);
        if let Some(top) = highest {
            let actors: Vec<usize> = top.actors.iter().filter_map(|a| node_index(a)).collect();
            let agreed = seen.iter().all(|(_, s)| s.stamp == top.stamp)
                && actors
                    .iter()
                    .all(|a| seen.iter().any(|(x, s)| x == a && s.stamp == top.stamp));
            if agreed {
                break Some(top.stamp);
            }
        }
        if now() >= bound {
            break None;
        }
        tokio::time::sleep(RETRY_PAUSE).await;
    };
    let Some(stamp) = settled else {
        return;
    };
    let mut h = w.history.lock().unwrap();
    h.settled = Some(stamp);
    let made = h.posts.iter().position(|p| {
        p.config() == Some(stamp)
            || (p.stamp().is_none() && p.resolved.is_none() && p.expected() == Some(stamp))
    });
    let Some(k) = made else {
        return;
    };
    h.posts[k].resolved = Some(Some(stamp));
    let generation = h.posts[k].generation;
    for p in h.posts.iter_mut().filter(|p| p.generation > generation) {
        p.resolved = Some(None);
    }
    let mut named = w.named.lock().unwrap();
    named.extend(&h.posts[k].actors);
    named.sort();
    named.dedup();
}

/// Makes the planned posts, generation by generation; stops at a post that
/// did not answer 200 (its config may or may not exist), unless its node
/// was struck and tells, once it runs again, whether the post was made; and
/// after a post whose node lost its data folder (whether the config
/// survived is known only when the network heals).
async fn poster(w: Shared, done: tokio::sync::watch::Sender<bool>) {
    let plan = &w.plan;
    let mut generations: Vec<Vec<Post>> = Vec::new();
    for post in &plan.posts {
        match generations.last_mut() {
            Some(g) if g[0].at == post.at => g.push(post.clone()),
            _ => generations.push(vec![post.clone()]),
        }
    }
    let mut rng = fastrand::Rng::with_seed(plan.seed ^ 0x0c0f_f1e5);
    for (k, group) in generations.into_iter().enumerate() {
        let generation = k + 1;
        tokio::time::sleep(group[0].at.saturating_sub(now())).await;
        let Some(base) = newest(&w.history.lock().unwrap().posts, generation).cloned() else {
            break;
        };
        let tasks: Vec<_> = group
            .into_iter()
            .map(|post| {
                let w = w.clone();
                let base = base.clone();
                let rng = fastrand::Rng::with_seed(rng.u64(..));
                tokio::spawn(async move { post_one(&w, &post, generation, &base, rng).await })
            })
            .collect();
        let mut made = Vec::new();
        for t in tasks {
            if let Ok(p) = t.await {
                made.push(p);
            }
        }
        for p in &mut made {
            if p.stamp().is_none()
                && matches!(&p.struck, Some(s) if matches!(s.fault, Fault::Crash(_)))
            {
                resolve_crashed(&w, p).await;
            }
        }
        let unknown = made
            .iter()
            .any(|p| p.made() && p.config().is_none() && p.resolved.is_none());
        let wiped = made
            .iter()
            .any(|p| matches!(&p.struck, Some(s) if matches!(s.fault, Fault::Wipe(_))));
        {
            let mut named = w.named.lock().unwrap();
            for p in made.iter().filter(|p| p.config().is_some()) {
                named.extend(&p.actors);
            }
            named.sort();
            named.dedup();
        }
        w.history.lock().unwrap().posts.extend(made);
        if unknown || wiped {
            break;
        }
    }
    // A config can be lost with a data folder, and a post can be left
    // without an answer: the nodes tell, once the network heals.
    let uncertain = w
        .history
        .lock()
        .unwrap()
        .posts
        .iter()
        .any(|p| p.made() && p.config().is_none() && p.resolved.is_none());
    if plan.changes != Changes::None && (plan.wipes || uncertain) {
        settle(&w).await;
    }
    let _ = done.send(true);
}

/// After the heal, asks every actor of the final generation's configs (the
/// final one, or both conflicting ones) for its config until they all
/// report the same one, or the liveness bound.
async fn await_one_config(w: &Shared) {
    let nodes: Vec<usize> = {
        let h = w.history.lock().unwrap();
        let last = final_config(&h.posts).map(|p| p.generation);
        let mut nodes: Vec<usize> = h
            .posts
            .iter()
            .filter(|p| Some(p.generation) == last && p.config().is_some())
            .flat_map(|p| p.actors.iter().copied())
            .collect();
        nodes.sort();
        nodes.dedup();
        nodes
    };
    let bound = w.plan.heal_at + LIVENESS_BOUND;
    let mut seen = Vec::new();
    for _ in 0..MAX_ATTEMPTS {
        seen.clear();
        for &x in &nodes {
            seen.push((x, status(x).await.map(|s| s.stamp)));
        }
        let first = seen.first().and_then(|(_, s)| *s);
        if first.is_some() && seen.iter().all(|(_, s)| *s == first) {
            let mut h = w.history.lock().unwrap();
            h.configs_agreed_at = Some(now());
            h.configs = seen;
            return;
        }
        if now() >= bound {
            break;
        }
        tokio::time::sleep(RETRY_PAUSE).await;
    }
    w.history.lock().unwrap().configs = seen;
}

async fn workload(plan: Plan, history: Arc<Mutex<History>>) {
    // Post the first config to one of its actors; retry (bounded) until it is accepted.
    let actors = actor_names(&plan.initial);
    let mut initial = None;
    for attempt in 0..50 {
        let target = plan.initial[attempt % plan.initial.len()];
        let start = now();
        let outcome = ask(
            &host(target),
            Frame::Config(actors.clone()),
            Duration::from_secs(2),
            Break::No,
        )
        .await;
        if let Outcome::Posted(_) = outcome {
            initial = Some(Posted {
                generation: 0,
                start,
                end: now(),
                target: Some(target),
                actors: plan.initial.clone(),
                outcome,
                base: None,
                struck: None,
                resolved: None,
            });
            break;
        }
        tokio::time::sleep(RETRY_PAUSE).await;
    }
    let Some(initial) = initial else {
        history.lock().unwrap().setup_failed = Some("config could not be posted".into());
        return;
    };
    history.lock().unwrap().posts.push(initial);
    let (done_tx, done_rx) = tokio::sync::watch::channel(false);
    let w = Shared {
        plan: plan.clone(),
        history: history.clone(),
        named: Arc::new(Mutex::new(plan.initial.clone())),
        posts_done: done_rx,
    };
    let poster = tokio::spawn(poster(w.clone(), done_tx));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| tokio::spawn(client(c, w.clone())))
        .collect();
    let walker = tokio::spawn({
        let w = w.clone();
        async move {
            if w.plan.walks {
                walker(w).await;
            }
        }
    });
    let recoveries: Vec<_> = (0..plan.nodes)
        .flat_map(|x| plan.disk_recoveries(x).into_iter().map(move |at| (x, at)))
        .map(|(x, at)| tokio::spawn(probe_recovery(x, at, w.clone())))
        .collect();
    // Every node some config named gets a probe: they are known by the heal.
    let probes: Vec<_> = (0..plan.nodes)
        .map(|i| {
            let w = w.clone();
            tokio::spawn(async move {
                tokio::time::sleep(w.plan.heal_at.saturating_sub(now())).await;
                let mut done = w.posts_done.clone();
                let _ = done.wait_for(|d| *d).await;
                if w.is_named(i) {
                    Some(probe_liveness(i, w).await)
                } else {
                    None
                }
            })
        })
        .collect();
    let _ = poster.await;
    for t in clients.into_iter().chain(recoveries).chain([walker]) {
        let _ = t.await;
    }
    let finals_of: Vec<usize> = final_config(&history.lock().unwrap().posts)
        .map(|f| f.actors.clone())
        .unwrap_or_default();
    // After the heal the actors of the final config must agree on every value.
    let deadline = plan.end_at;
    while now() < deadline {
        let mut finals: BTreeMap<String, Vec<u128>> = BTreeMap::new();
        let mut complete = true;
        for name in NAMES {
            for &i in &finals_of {
                match ask(
                    &host(i),
                    Frame::Value {
                        name: name.to_string(),
                    },
                    Duration::from_secs(1),
                    Break::No,
                )
                .await
                {
                    Outcome::Ok(v) => finals.entry(name.to_string()).or_default().push(v),
                    _ => complete = false,
                }
            }
        }
        let agreed = complete
            && finals
                .values()
                .all(|vs| vs.len() == finals_of.len() && vs.windows(2).all(|w| w[0] == w[1]));
        if agreed {
            let converged_at = now();
            let mut components = BTreeMap::new();
            for name in NAMES {
                let frame = Frame::Components {
                    name: name.to_string(),
                };
                if let Some(Reply::Components(cs)) = ask_raw(&host(finals_of[0]), frame).await {
                    let mut per_node: BTreeMap<usize, u128> = BTreeMap::new();
                    for c in cs {
                        *per_node.entry(c.node as usize - 1).or_default() += u128::from(c.count);
                    }
                    components.insert(name.to_string(), per_node);
                }
            }
            let mut h = history.lock().unwrap();
            h.converged_at = Some(converged_at);
            h.final_values = finals;
            h.final_components = components;
            break;
        }
        tokio::time::sleep(RETRY_PAUSE).await;
    }
    await_one_config(&w).await;
    for p in probes {
        if let Ok(Some(l)) = p.await {
            history.lock().unwrap().liveness.push(l);
        }
    }
    // One consistent read per final actor and name after convergence, the nodes in parallel.
    let finals: Vec<_> = finals_of
        .iter()
        .map(|&i| {
            let history = history.clone();
            tokio::spawn(async move {
                for name in NAMES {
                    consistent_read(
                        &history,
                        i,
                        name,
                        CONSISTENT_TIMEOUT,
                        CONSISTENT_TIMEOUT + Duration::from_secs(3),
                        Break::No,
                        true,
                    )
                    .await;
                }
            })
        })
        .collect();
    for t in finals {
        let _ = t.await;
    }
}

// ---------------------------------------------------------------- reports

/// A short fingerprint of a history, to show that a seed replays exactly.
pub fn fingerprint(h: &History) -> String {
    let mut s = String::new();
    for i in &h.incs {
        s.push_str(&format!(
            "i{}{}{}{:?}{:?};",
            i.name, i.node, i.amount, i.end, i.outcome
        ));
    }
    for r in &h.reads {
        s.push_str(&format!("r{}{}{:?}{:?};", r.name, r.node, r.end, r.outcome));
    }
    for p in &h.posts {
        s.push_str(&format!("p{:?}{:?}{:?};", p.target, p.end, p.outcome));
    }
    for r in &h.recoveries {
        s.push_str(&format!("d{}{:?}{:?};", r.node, r.took_at, r.last));
    }
    for f in &h.forged {
        s.push_str(&format!("f{:?}{}{:?}{:?};", f.lie, f.node, f.end, f.answer));
    }
    s.push_str(&format!(
        "{:?}{:?}{:?}{:?}",
        h.converged_at, h.liveness, h.configs_agreed_at, h.configs
    ));
    format!("{}:{:x}", s.len(), fxhash(&s))
}

fn fxhash(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

pub fn summary(h: &History) -> String {
    let acked = h.incs.iter().filter(|i| i.acked()).count();
    let consistent = h.reads.iter().filter(|r| r.consistent).count();
    let ok = h
        .reads
        .iter()
        .filter(|r| r.consistent && r.value().is_some())
        .count();
    let unavailable = h
        .reads
        .iter()
        .filter(|r| matches!(r.outcome, Outcome::Unavailable { .. }))
        .count();
    let broken = h
        .incs
        .iter()
        .map(|i| &i.outcome)
        .chain(h.reads.iter().map(|r| &r.outcome))
        .filter(|o| **o == Outcome::Broken)
        .count();
    let refused = |kind: Refusal| {
        h.incs
            .iter()
            .filter(|i| matches!(i.outcome, Outcome::Refused(k, _) if k == kind))
            .count()
    };
    let posts: Vec<String> = h
        .posts
        .iter()
        .filter(|p| p.generation > 0)
        .map(|p| match (p.target, p.stamp()) {
            (Some(t), Some(s)) => format!("{:?} to n{} at {:?}: {s:?}", p.actors, t + 1, p.start),
            (Some(t), None) => format!(
                "{:?} to n{} at {:?}: {:?}",
                p.actors,
                t + 1,
                p.start,
                p.outcome
            ),
            (None, _) => format!("{:?} not made", p.actors),
        })
        .collect();
    format!(
        "{} increments ({acked} acked; refused: {} storage, {} not a member, {} short of replicas), {consistent} consistent reads ({ok} ok, {unavailable} 503), {broken} connections broken by clients, {} backup walks, {} wipes, {} disk recoveries probed, posts [{}], converged at {:?}",
        h.incs.len(),
        refused(Refusal::Storage),
        refused(Refusal::NotMember),
        refused(Refusal::Replicas),
        h.walks,
        h.wipes.len(),
        h.recoveries.len(),
        posts.join("; "),
        h.converged_at
    ) + &match &h.disks {
        Some(d) => format!(
            "; log engine on simulated disks: {} crashes, {} unsynced writes lost and {} torn, {} failed writes, {} failed syncs, {} reads flipped",
            d.crashes,
            d.lost_writes,
            d.torn_writes,
            d.failed_writes,
            d.failed_syncs,
            d.flipped_reads
        ),
        None => String::new(),
    } + &if h.liar {
        let refused = |lie: Lie| {
            h.forged
                .iter()
                .filter(|f| f.lie == lie && matches!(f.answer, Answer::Refused(_)))
                .count()
        };
        let total = Lie::ALL.into_iter().map(refused).sum::<usize>();
        let answered = |accepted: bool| {
            h.forged
                .iter()
                .filter(|f| match f.answer {
                    Answer::Accepted { .. } => accepted,
                    Answer::Unanswered(_) => !accepted,
                    Answer::Refused(_) => false,
                })
                .count()
        };
        format!(
            "; liar: {} forged messages, {total} refused (own component raised {}, version jumps {}, faked acknowledgements {}, too many components {}, too many names {}), {} accepted, {} unanswered",
            h.forged.len(),
            refused(Lie::RaiseOwn),
            refused(Lie::VersionJump),
            refused(Lie::FakeAck),
            refused(Lie::TooManyComponents),
            refused(Lie::TooManyNames),
            answered(true),
            answered(false),
        )
    } else {
        "; no liar".to_string()
    }
}
