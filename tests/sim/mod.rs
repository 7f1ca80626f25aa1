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

#![allow(dead_code)]

pub mod check;
pub mod plan;
pub mod planted;

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tally::cluster::Actor;
use tally::node::{Node, Settings};
use tally::proto::{RequestEnvelope, ResponseEnvelope};
use tally::storage::Engine;
use tally::transport::{CallError, CallFuture, Transport};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub use check::{Check, Violation, check};
pub use plan::{End, Fault, Link, Plan, Window};
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
/// Pause between a liveness probe's attempts.
const RETRY_PAUSE: Duration = Duration::from_millis(100);
/// Most attempts of one liveness probe (the bound in time ends it sooner).
const MAX_ATTEMPTS: usize = 200;
const CLIENTS: usize = 3;

/// What the simulated clients and peers send to a node.
#[derive(Serialize, Deserialize)]
enum Frame {
    Rpc(RequestEnvelope),
    Config(Vec<String>),
    Increment { name: String, amount: u64 },
    Value { name: String },
    Consistent { name: String, timeout_ms: u64 },
}

#[derive(Serialize, Deserialize, Debug)]
enum Reply {
    Rpc(Result<ResponseEnvelope, String>),
    Value(Result<u128, String>),
    Unavailable {
        unreachable: Vec<String>,
        best: u128,
    },
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
}

/// One request and its answer over a fresh connection.
async fn exchange(to: &str, req: RequestEnvelope) -> Result<ResponseEnvelope, CallError> {
    let mut s = turmoil::net::TcpStream::connect(to)
        .await
        .map_err(|e| CallError::Unreachable(e.to_string()))?;
    write_frame(&mut s, &Frame::Rpc(req))
        .await
        .map_err(|e| CallError::Unreachable(e.to_string()))?;
    match read_frame::<Reply>(&mut s).await {
        Ok(Reply::Rpc(Ok(env))) => Ok(env),
        Ok(Reply::Rpc(Err(e))) => Err(CallError::Refused {
            status: 400,
            body: e,
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
        Box::pin(async move {
            let call = async {
                if let Some(d) = delay {
                    tokio::time::sleep(d).await;
                }
                let mut env = exchange(&to, req).await?;
                planted.tamper_response(&mut env);
                Ok(env)
            };
            tokio::time::timeout(limit, call)
                .await
                .map_err(|_| CallError::Timeout(timeout))?
        })
    }
}

// ---------------------------------------------------------------- a host

/// The software of one simulated host: a node and its accept loop.
async fn run_node(
    id: u64,
    engine: Arc<dyn Engine>,
    transport: Arc<SimTransport>,
    planted: Planted,
) -> turmoil::Result {
    let mut settings = Settings::new(
        id,
        format!("0.0.0.0:{PORT}").parse().unwrap(),
        "unused".into(),
    );
    settings.sync_interval = Duration::from_millis(500);
    let node = Node::start_with(settings, engine, transport.clone())?;
    let listener = turmoil::net::TcpListener::bind(("0.0.0.0", PORT)).await?;
    loop {
        let (mut s, _) = listener.accept().await?;
        let node = node.clone();
        let transport = transport.clone();
        tokio::spawn(async move {
            let Ok(frame) = read_frame::<Frame>(&mut s).await else {
                return;
            };
            let reply = match frame {
                Frame::Rpc(env) => {
                    Reply::Rpc(node.handle_rpc(env).await.map_err(|e| e.to_string()))
                }
                Frame::Config(actors) => {
                    let actors = tally::cluster::parse_actors(&actors).expect("valid actors");
                    Reply::Value(
                        node.post_config(actors, Vec::new())
                            .await
                            .map(|s| u128::from(s.membership.stamp().version))
                            .map_err(|e| e.to_string()),
                    )
                }
                Frame::Increment { name, amount } => {
                    match planted.before_increment(&node, &transport).await {
                        Err(e) => Reply::Value(Err(e)),
                        Ok(()) => Reply::Value(
                            node.increment(vec![(name, amount)], None, None)
                                .await
                                .map(|done| done.values[0])
                                .map_err(|e| e.to_string()),
                        ),
                    }
                }
                Frame::Value { name } => Reply::Value(Ok(node.store().value(&name))),
                Frame::Consistent { name, timeout_ms } => {
                    let deadline = planted.read_deadline(Duration::from_millis(timeout_ms));
                    match node.consistent_value(&name, deadline).await {
                        Ok(v) => Reply::Value(Ok(v)),
                        Err(u) => Reply::Unavailable {
                            unreachable: u.unreachable.iter().map(|a| a.to_string()).collect(),
                            best: u.best_known_value,
                        },
                    }
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
    /// Any other error answer.
    Refused(String),
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
        Err(_) => Outcome::TimedOut,
        Ok(Err(outcome)) => outcome,
        Ok(Ok(Reply::Value(Ok(v)))) => Outcome::Ok(v),
        Ok(Ok(Reply::Value(Err(e)))) => Outcome::Refused(e),
        Ok(Ok(Reply::Unavailable { unreachable, best })) => {
            Outcome::Unavailable { unreachable, best }
        }
        Ok(Ok(other)) => Outcome::Refused(format!("unexpected reply {other:?}")),
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
    /// When an increment was first acknowledged after the heal.
    pub acked_at: Option<Duration>,
    /// When a consistent read first answered 200 after the heal.
    pub read_at: Option<Duration>,
    pub last_increment: Option<Outcome>,
    pub last_read: Option<Outcome>,
}

#[derive(Default, Debug)]
pub struct History {
    pub incs: Vec<Inc>,
    pub reads: Vec<Read>,
    /// (node, time) of every wipe.
    pub wipes: Vec<(usize, Duration)>,
    pub liveness: Vec<Liveness>,
    /// When every node first reported equal values for every name.
    pub converged_at: Option<Duration>,
    /// Per name, the value every node reported then.
    pub final_values: BTreeMap<String, Vec<u128>>,
    pub setup_failed: Option<String>,
}

// ---------------------------------------------------------------- the run

pub fn host(i: usize) -> String {
    format!("n{}", i + 1)
}

fn end_name(e: End) -> String {
    match e {
        End::Node(i) => host(i),
        End::Client => "client".into(),
    }
}

/// Every link the plan can affect: between nodes, and between the client and each node.
fn links(plan: &Plan) -> Vec<(End, End)> {
    let mut out = Vec::new();
    for a in 0..plan.nodes {
        for b in a + 1..plan.nodes {
            out.push((End::Node(a), End::Node(b)));
        }
        out.push((End::Client, End::Node(a)));
    }
    out
}

/// What the runner has applied to turmoil so far.
struct Applied {
    links: BTreeMap<(End, End), Link>,
    running: Vec<bool>,
    /// Which wipe windows have replaced their node's engine.
    wiped: Vec<bool>,
    /// Turmoil's fail rate on node-to-node links (0 from the heal on).
    fail_rate: f64,
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
        *state = Link::Cut;
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
    engines: &[Rc<RefCell<Arc<dyn Engine>>>],
    planted: Planted,
    history: &Mutex<History>,
) {
    for x in 0..plan.nodes {
        if applied.running[x] && !plan.running(x, now) {
            power_cut(sim, plan, x, applied);
            applied.running[x] = false;
        }
    }
    for (k, w) in plan.faults.iter().enumerate() {
        if let Fault::Wipe(x) = w.fault
            && !applied.wiped[k]
            && w.start <= now
        {
            applied.wiped[k] = true;
            *engines[x].borrow_mut() = planted.fresh_engine();
            history.lock().unwrap().wipes.push((x, now));
        }
    }
    for (pair, state) in applied.links.iter_mut() {
        let want = plan.link(pair.0, pair.1, now);
        if *state != want {
            let (a, b) = (end_name(pair.0), end_name(pair.1));
            match want {
                // Healthy again, and whatever was held is delivered.
                Link::Open => sim.release(a.as_str(), b.as_str()),
                Link::Held => sim.hold(a.as_str(), b.as_str()),
                Link::Cut => sim.partition(a.as_str(), b.as_str()),
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
    let engines: Vec<Rc<RefCell<Arc<dyn Engine>>>> = (0..plan.nodes)
        .map(|_| Rc::new(RefCell::new(planted.fresh_engine())))
        .collect();
    let noise = Noise {
        duplicate_rate: plan.duplicate_rate,
        delay_rate: plan.delay_rate,
        max_extra_delay: plan.max_extra_delay,
    };
    for (i, engine) in engines.iter().enumerate() {
        let engine = engine.clone();
        let boots = Rc::new(Cell::new(0u64));
        let seed = plan.seed;
        sim.host(host(i).as_str(), move || {
            let engine = engine.borrow().clone();
            boots.set(boots.get() + 1);
            let transport = Arc::new(SimTransport {
                planted,
                noise,
                rng: Mutex::new(fastrand::Rng::with_seed(
                    seed ^ (i as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15)
                        ^ boots.get().wrapping_mul(0xbf58_476d_1ce4_e5b9),
                )),
            });
            run_node(i as u64 + 1, engine, transport, planted)
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

    let changes = plan.changes();
    let mut next = 0;
    let mut healed = false;
    let mut applied = Applied {
        links: links(plan).into_iter().map(|l| (l, Link::Open)).collect(),
        running: vec![true; plan.nodes],
        wiped: vec![false; plan.faults.len()],
        fail_rate: plan.fail_rate,
    };
    loop {
        let now = sim.elapsed();
        if next < changes.len() && changes[next] <= now {
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
                plan,
                now,
                &mut applied,
                &engines,
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
    Arc::try_unwrap(history)
        .map(|m| m.into_inner().unwrap())
        .unwrap_or_else(|h| std::mem::take(&mut *h.lock().unwrap()))
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

/// One random client until shortly after the heal.
async fn client(c: usize, plan: Plan, history: Arc<Mutex<History>>) {
    let mut rng = fastrand::Rng::with_seed(plan.seed ^ (0x9e37_79b9 * (c as u64 + 1)));
    while now() < plan.heal_at + Duration::from_secs(2) {
        let node = rng.usize(0..plan.nodes);
        let name = NAMES[rng.usize(0..NAMES.len())];
        let after_heal = now() >= plan.heal_at;
        let brk = Break::draw(&mut rng, plan.client_break_rate);
        match rng.u8(0..10) {
            0..=5 => {
                let amount = rng.u64(1..=10);
                increment(&history, node, name, amount, brk).await;
            }
            6..=7 => {
                local_read(&history, node, name, brk, after_heal).await;
            }
            _ => {
                consistent_read(
                    &history,
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
/// until each succeeds or `heal_at + LIVENESS_BOUND` passes.
async fn probe_liveness(node: usize, plan: Plan, history: Arc<Mutex<History>>) -> Liveness {
    let bound = plan.heal_at + LIVENESS_BOUND;
    // The heal is planned: the runner applies it in the step where sim time
    // reaches `heal_at`, before any host runs that step. (Nothing from
    // outside the simulation may wake its tasks: that breaks replay.)
    tokio::time::sleep(plan.heal_at.saturating_sub(now())).await;
    let writes = async {
        let mut last = None;
        for attempt in 0..MAX_ATTEMPTS {
            if now() >= bound {
                break;
            }
            let name = NAMES[(node + attempt) % NAMES.len()];
            let outcome = increment(&history, node, name, 1, Break::No).await;
            if outcome.value().is_some() {
                return (Some(now()), Some(outcome));
            }
            last = Some(outcome);
            tokio::time::sleep(RETRY_PAUSE).await;
        }
        (None, last)
    };
    let reads = async {
        let mut last = None;
        for attempt in 0..MAX_ATTEMPTS {
            let left = bound.saturating_sub(now());
            if left.is_zero() {
                break;
            }
            let name = NAMES[(node + attempt) % NAMES.len()];
            let timeout = CONSISTENT_TIMEOUT.min(left);
            let outcome = consistent_read(
                &history,
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
    let ((acked_at, last_increment), (read_at, last_read)) = tokio::join!(writes, reads);
    Liveness {
        node,
        acked_at,
        read_at,
        last_increment,
        last_read,
    }
}

async fn workload(plan: Plan, history: Arc<Mutex<History>>) {
    let actors: Vec<String> = (0..plan.nodes)
        .map(|i| format!("{}:{PORT}", host(i)))
        .collect();
    // Post the config to one node; retry (bounded) until it is accepted.
    let mut posted = false;
    for attempt in 0..50 {
        let target = host(attempt % plan.nodes);
        if let Outcome::Ok(_) = ask(
            &target,
            Frame::Config(actors.clone()),
            Duration::from_secs(2),
            Break::No,
        )
        .await
        {
            posted = true;
            break;
        }
        tokio::time::sleep(RETRY_PAUSE).await;
    }
    if !posted {
        history.lock().unwrap().setup_failed = Some("config could not be posted".into());
        return;
    }
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| tokio::spawn(client(c, plan.clone(), history.clone())))
        .collect();
    let probes: Vec<_> = (0..plan.nodes)
        .map(|i| tokio::spawn(probe_liveness(i, plan.clone(), history.clone())))
        .collect();
    for t in clients {
        let _ = t.await;
    }
    // After the heal every node's values must become equal.
    let deadline = plan.end_at;
    while now() < deadline {
        let mut finals: BTreeMap<String, Vec<u128>> = BTreeMap::new();
        let mut complete = true;
        for name in NAMES {
            for i in 0..plan.nodes {
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
                .all(|vs| vs.len() == plan.nodes && vs.windows(2).all(|w| w[0] == w[1]));
        if agreed {
            let mut h = history.lock().unwrap();
            h.converged_at = Some(now());
            h.final_values = finals;
            break;
        }
        tokio::time::sleep(RETRY_PAUSE).await;
    }
    for p in probes {
        if let Ok(l) = p.await {
            history.lock().unwrap().liveness.push(l);
        }
    }
    // One consistent read per node and name after convergence, the nodes in parallel.
    let finals: Vec<_> = (0..plan.nodes)
        .map(|i| {
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
    s.push_str(&format!("{:?}{:?}", h.converged_at, h.liveness));
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
    format!(
        "{} increments ({acked} acked), {consistent} consistent reads ({ok} ok, {unavailable} 503), {broken} connections broken by clients, {} wipes, converged at {:?}",
        h.incs.len(),
        h.wipes.len(),
        h.converged_at
    )
}
