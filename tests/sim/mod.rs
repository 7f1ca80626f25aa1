//! A deterministic simulation of a tally cluster on turmoil.
//!
//! The real node code (`Node`: replication, anti-entropy, config
//! propagation, self-identification, consistent reads) runs on each
//! simulated host over the memory storage engine; node-to-node calls travel
//! through turmoil's simulated TCP, so partitions, held links (a paused
//! process), latency, connection failures, crashes and restarts all hit the
//! real protocol. Only HTTP framing is replaced, by a length-prefixed JSON
//! frame, because the HTTP layer is not what is under test here.
//!
//! A seed fixes everything: the fault schedule, the workload, turmoil's
//! network randomness and the nodes' own randomness.

#![allow(dead_code)]

pub mod plan;

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tally::cluster::Actor;
use tally::crdt::Component;
use tally::node::{Node, Settings};
use tally::proto::{RequestEnvelope, Response, ResponseEnvelope};
use tally::storage::memory::MemoryEngine;
use tally::storage::{Batch, Changes, Engine, Loaded, StoreError};
use tally::transport::{CallError, CallFuture, Transport};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

pub use plan::{End, Fault, Link, Plan, Window};

const PORT: u16 = 7777;
const MAX_FRAME: usize = 64 * 1024 * 1024;

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

/// Rewrites messages between nodes; used to plant bugs.
pub type Tamper = Arc<dyn Fn(&mut ResponseEnvelope) + Send + Sync>;

/// The node-to-node transport over simulated TCP: one connection per call.
pub struct SimTransport {
    tamper: Option<Tamper>,
}

impl Transport for SimTransport {
    fn call(&self, to: &Actor, req: &RequestEnvelope, timeout: Duration) -> CallFuture {
        let to = to.to_string();
        let req = req.clone();
        let tamper = self.tamper.clone();
        Box::pin(async move {
            let exchange = async {
                let mut s = turmoil::net::TcpStream::connect(to.as_str())
                    .await
                    .map_err(|e| CallError::Unreachable(e.to_string()))?;
                write_frame(&mut s, &Frame::Rpc(req))
                    .await
                    .map_err(|e| CallError::Unreachable(e.to_string()))?;
                match read_frame::<Reply>(&mut s).await {
                    Ok(Reply::Rpc(Ok(mut env))) => {
                        if let Some(t) = &tamper {
                            t(&mut env);
                        }
                        Ok(env)
                    }
                    Ok(Reply::Rpc(Err(e))) => Err(CallError::Refused {
                        status: 400,
                        body: e,
                    }),
                    Ok(other) => Err(CallError::Protocol(format!("{other:?}"))),
                    Err(e) => Err(CallError::Unreachable(e.to_string())),
                }
            };
            tokio::time::timeout(timeout, exchange)
                .await
                .map_err(|_| CallError::Timeout(timeout))?
        })
    }
}

/// The software of one simulated host: a node and its accept loop.
async fn run_node(id: u64, engine: Arc<dyn Engine>, tamper: Option<Tamper>) -> turmoil::Result {
    let mut settings = Settings::new(
        id,
        format!("0.0.0.0:{PORT}").parse().unwrap(),
        "unused".into(),
    );
    settings.sync_interval = Duration::from_millis(500);
    let node = Node::start_with(settings, engine, Arc::new(SimTransport { tamper }))?;
    let listener = turmoil::net::TcpListener::bind(("0.0.0.0", PORT)).await?;
    loop {
        let (mut s, _) = listener.accept().await?;
        let node = node.clone();
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
                        node.post_config(actors)
                            .await
                            .map(|s| u128::from(s.version))
                            .map_err(|e| e.to_string()),
                    )
                }
                Frame::Increment { name, amount } => Reply::Value(
                    node.increment(name, amount)
                        .await
                        .map_err(|e| e.to_string()),
                ),
                Frame::Value { name } => Reply::Value(Ok(node.store().value(&name))),
                Frame::Consistent { name, timeout_ms } => {
                    match node
                        .consistent_value(&name, Duration::from_millis(timeout_ms))
                        .await
                    {
                        Ok(v) => Reply::Value(Ok(v)),
                        Err(u) => Reply::Unavailable {
                            unreachable: u.unreachable,
                            best: u.best_known_value,
                        },
                    }
                }
            };
            let _ = write_frame(&mut s, &reply).await;
        });
    }
}

/// A client's call to a node; `None` when it did not answer in time.
async fn ask(host: &str, frame: Frame, timeout: Duration) -> Option<Reply> {
    let exchange = async {
        let mut s = turmoil::net::TcpStream::connect((host, PORT)).await.ok()?;
        write_frame(&mut s, &frame).await.ok()?;
        read_frame::<Reply>(&mut s).await.ok()
    };
    tokio::time::timeout(timeout, exchange).await.ok().flatten()
}

pub fn host(i: usize) -> String {
    format!("n{}", i + 1)
}

// ---------------------------------------------------------------- history

#[derive(Clone, Debug)]
pub struct Inc {
    pub name: String,
    pub node: usize,
    pub amount: u64,
    pub start: Duration,
    pub end: Duration,
    /// Acknowledged with 200; otherwise uncertain.
    pub acked: bool,
}

#[derive(Clone, Debug)]
pub struct Read {
    pub name: String,
    pub node: usize,
    pub consistent: bool,
    pub timeout: Duration,
    pub start: Duration,
    pub end: Duration,
    /// `Some(v)` for 200; `None` for 503 or no answer.
    pub value: Option<u128>,
    pub unavailable: bool,
    /// What a 503 named as unreachable.
    pub unreachable: Vec<String>,
    pub after_heal: bool,
}

#[derive(Default, Debug)]
pub struct History {
    pub incs: Vec<Inc>,
    pub reads: Vec<Read>,
    /// (node, time) of every wipe.
    pub wipes: Vec<(usize, Duration)>,
    /// Per name, the value every node reported at the end, when they all agreed.
    pub converged_at: Option<Duration>,
    pub final_values: BTreeMap<String, Vec<u128>>,
    pub setup_failed: Option<String>,
}

// ---------------------------------------------------------------- bugs to plant

/// A memory engine that acknowledges commits without keeping them: what a
/// node that replies before committing looks like after a crash.
pub struct ForgetfulEngine(pub MemoryEngine);

impl Engine for ForgetfulEngine {
    fn load(&self, node: u64) -> Result<Loaded, StoreError> {
        self.0.load(node)
    }
    fn commit(&self, batch: &Batch<'_>) -> Result<(), StoreError> {
        // Keep config and marks, drop the counters.
        let empty = BTreeMap::new();
        self.0.commit(&Batch {
            counters: &empty,
            marks: batch.marks,
            config: batch.config,
            keys_put: batch.keys_put,
            keys_del: batch.keys_del,
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

/// The prototype's bug: each node's *total* travels as if it were the
/// sender's own component, so merging by maximum mixes totals.
pub fn totals_by_maximum() -> Tamper {
    Arc::new(|env: &mut ResponseEnvelope| {
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
            Response::Ack => {}
        }
    })
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Planted {
    None,
    AckBeforeCommit,
    TotalsByMaximum,
}

// ---------------------------------------------------------------- the run

const NAMES: [&str; 4] = ["a", "b", "c", "d"];
const CONSISTENT_TIMEOUT: Duration = Duration::from_secs(3);
const CLIENTS: usize = 3;

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
        .simulation_duration(plan.end_at + Duration::from_secs(30))
        .tick_duration(Duration::from_millis(1))
        .max_message_latency(plan.max_latency)
        .fail_rate(plan.fail_rate)
        .repair_rate(0.5)
        .rng_seed(plan.seed)
        .build();
    let engines: Vec<Rc<RefCell<Arc<dyn Engine>>>> = (0..plan.nodes)
        .map(|_| Rc::new(RefCell::new(fresh_engine(planted))))
        .collect();
    let tamper = (planted == Planted::TotalsByMaximum).then(totals_by_maximum);
    for (i, engine) in engines.iter().enumerate() {
        let engine = engine.clone();
        let tamper = tamper.clone();
        sim.host(host(i).as_str(), move || {
            let engine = engine.borrow().clone();
            run_node(i as u64 + 1, engine, tamper.clone())
        });
    }
    let history = Arc::new(Mutex::new(History::default()));
    let healed = Arc::new(Mutex::new(false));
    {
        let history = history.clone();
        let plan = plan.clone();
        let healed = healed.clone();
        sim.client("client", async move {
            workload(plan, history, healed).await;
            Ok(())
        });
    }

    let changes = plan.changes();
    let mut next = 0;
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
            if now >= plan.heal_at && !*healed.lock().unwrap() {
                // A whole network: no more broken links either.
                sim.set_fail_rate(0.0);
                for (a, b) in links(plan) {
                    sim.set_link_fail_rate(end_name(a).as_str(), end_name(b).as_str(), 0.0);
                }
                applied.fail_rate = 0.0;
                *healed.lock().unwrap() = true;
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

/// An empty data folder, with the planted bug if any.
fn fresh_engine(planted: Planted) -> Arc<dyn Engine> {
    match planted {
        Planted::AckBeforeCommit => Arc::new(ForgetfulEngine(MemoryEngine::new())),
        _ => Arc::new(MemoryEngine::new()),
    }
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
    for (a, b) in links(plan) {
        if a == End::Node(x) || b == End::Node(x) {
            sim.set_link_fail_rate(
                end_name(a).as_str(),
                end_name(b).as_str(),
                applied.fail_rate,
            );
        }
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
            *engines[x].borrow_mut() = fresh_engine(planted);
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

fn outcome(reply: Option<Reply>) -> (Option<u128>, bool, Vec<String>) {
    match reply {
        Some(Reply::Value(Ok(v))) => (Some(v), false, Vec::new()),
        Some(Reply::Unavailable { unreachable, .. }) => (None, true, unreachable),
        _ => (None, false, Vec::new()),
    }
}

/// A client's consistent read of `name` on `node`, recorded in the history.
async fn consistent_read(
    history: &Mutex<History>,
    origin: Instant,
    node: usize,
    name: String,
    after_heal: bool,
) {
    let start = elapsed(origin);
    let reply = ask(
        &host(node),
        Frame::Consistent {
            name: name.clone(),
            timeout_ms: CONSISTENT_TIMEOUT.as_millis() as u64,
        },
        CONSISTENT_TIMEOUT + Duration::from_secs(3),
    )
    .await;
    let (value, unavailable, unreachable) = outcome(reply);
    history.lock().unwrap().reads.push(Read {
        name,
        node,
        consistent: true,
        timeout: CONSISTENT_TIMEOUT,
        start,
        end: elapsed(origin),
        value,
        unavailable,
        unreachable,
        after_heal,
    });
}

fn elapsed(origin: Instant) -> Duration {
    Instant::now() - origin
}

async fn workload(plan: Plan, history: Arc<Mutex<History>>, healed: Arc<Mutex<bool>>) {
    let origin = Instant::now();
    let actors: Vec<String> = (0..plan.nodes)
        .map(|i| format!("{}:{PORT}", host(i)))
        .collect();
    // Post the config to one node; wait (bounded) until it is accepted.
    let mut posted = false;
    for attempt in 0..50 {
        let target = host(attempt % plan.nodes);
        if let Some(Reply::Value(Ok(_))) = ask(
            &target,
            Frame::Config(actors.clone()),
            Duration::from_secs(2),
        )
        .await
        {
            posted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if !posted {
        history.lock().unwrap().setup_failed = Some("config could not be posted".into());
        return;
    }
    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        let plan = plan.clone();
        let history = history.clone();
        let healed = healed.clone();
        tasks.push(tokio::spawn(async move {
            let mut rng = fastrand::Rng::with_seed(plan.seed ^ (0x9e37_79b9 * (c as u64 + 1)));
            while elapsed(origin) < plan.heal_at + Duration::from_secs(2) {
                let node = rng.usize(0..plan.nodes);
                let name = NAMES[rng.usize(0..NAMES.len())].to_string();
                let start = elapsed(origin);
                let after_heal = *healed.lock().unwrap();
                match rng.u8(0..10) {
                    0..=5 => {
                        let amount = rng.u64(1..=10);
                        let reply = ask(
                            &host(node),
                            Frame::Increment {
                                name: name.clone(),
                                amount,
                            },
                            Duration::from_secs(2),
                        )
                        .await;
                        let acked = matches!(reply, Some(Reply::Value(Ok(_))));
                        history.lock().unwrap().incs.push(Inc {
                            name,
                            node,
                            amount,
                            start,
                            end: elapsed(origin),
                            acked,
                        });
                    }
                    6..=7 => {
                        let reply = ask(
                            &host(node),
                            Frame::Value { name: name.clone() },
                            Duration::from_secs(2),
                        )
                        .await;
                        let value = match reply {
                            Some(Reply::Value(Ok(v))) => Some(v),
                            _ => None,
                        };
                        history.lock().unwrap().reads.push(Read {
                            name,
                            node,
                            consistent: false,
                            timeout: Duration::from_secs(2),
                            start,
                            end: elapsed(origin),
                            value,
                            unavailable: false,
                            unreachable: Vec::new(),
                            after_heal,
                        });
                    }
                    _ => consistent_read(&history, origin, node, name, after_heal).await,
                }
                tokio::time::sleep(Duration::from_millis(rng.u64(5..60))).await;
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    // After healing: every node answers a consistent read, and all values converge.
    let deadline = plan.end_at;
    while elapsed(origin) < deadline {
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
                )
                .await
                {
                    Some(Reply::Value(Ok(v))) => {
                        finals.entry(name.to_string()).or_default().push(v)
                    }
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
            h.converged_at = Some(elapsed(origin));
            h.final_values = finals;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // One consistent read per node and name after convergence.
    for name in NAMES {
        for i in 0..plan.nodes {
            consistent_read(&history, origin, i, name.to_string(), true).await;
        }
    }
}

// ---------------------------------------------------------------- the checker

/// Checks a history against G1, G2, G4 and G5; returns every violation found.
pub fn check(plan: &Plan, h: &History) -> Vec<String> {
    let mut bad = Vec::new();
    if let Some(e) = &h.setup_failed {
        bad.push(format!("setup: {e}"));
        return bad;
    }
    // An acknowledged increment is owed to a read that answered at `by`
    // unless a wipe of its node before then excuses it.
    let excused = |i: &Inc, by: Duration| {
        h.wipes
            .iter()
            .any(|&(n, w)| n == i.node && w <= by && plan::excused_by_wipe(plan, n, i.end, w))
    };
    let acked_before = |name: &str, t: Duration, by: Duration| -> u128 {
        h.incs
            .iter()
            .filter(|i| i.acked && i.name == name && i.end <= t && !excused(i, by))
            .map(|i| u128::from(i.amount))
            .sum()
    };
    let sent_before = |name: &str, t: Duration| -> u128 {
        h.incs
            .iter()
            .filter(|i| i.name == name && i.start <= t)
            .map(|i| u128::from(i.amount))
            .sum()
    };
    let acked_total = |name: &str| -> u128 {
        h.incs
            .iter()
            .filter(|i| i.acked && i.name == name)
            .map(|i| u128::from(i.amount))
            .sum()
    };
    let acked_kept = |name: &str| acked_before(name, Duration::MAX, Duration::MAX);
    for r in &h.reads {
        if let Some(v) = r.value {
            // G2: never more than was sent.
            let sent = sent_before(&r.name, r.end);
            if v > sent {
                bad.push(format!(
                    "G2: {} read of {:?} on n{} at {:?} returned {v}, but only {sent} was sent",
                    if r.consistent { "consistent" } else { "local" },
                    r.name,
                    r.node + 1,
                    r.end
                ));
            }
        }
        if !r.consistent {
            continue;
        }
        // G1: a successful consistent read includes everything acknowledged before it began.
        if let Some(v) = r.value {
            let acked = acked_before(&r.name, r.start, r.end);
            if v < acked {
                bad.push(format!(
                    "G1: consistent read of {:?} on n{} started {:?} returned {v} < {acked} acknowledged before it",
                    r.name,
                    r.node + 1,
                    r.start
                ));
            }
        }
        // G5: bounded, and never 200 while a node it must hear from was cut off throughout.
        // A paused node cannot even receive the request, so its reads are not timed.
        let bound = r.timeout + Duration::from_millis(1500);
        let target_paused = !plan.holds_throughout(r.start, r.end, |t| !plan.paused(r.node, t));
        if r.end - r.start > bound && (r.value.is_some() || r.unavailable) && !target_paused {
            bad.push(format!(
                "G5: consistent read on n{} took {:?} (> {bound:?})",
                r.node + 1,
                r.end - r.start
            ));
        }
        if r.value.is_some() {
            let cut_throughout =
                (0..plan.nodes).any(|other| plan.cut_throughout(r.node, other, r.start, r.end));
            if cut_throughout {
                bad.push(format!(
                    "G5: consistent read on n{} answered 200 at {:?} although a node was cut off from it the whole time",
                    r.node + 1,
                    r.end
                ));
            }
        }
        if r.after_heal && r.value.is_none() && r.start >= plan.heal_at + Duration::from_secs(5) {
            bad.push(format!(
                "G5: consistent read of {:?} on n{} started {:?} failed at {:?}, well after the network healed ({})",
                r.name,
                r.node + 1,
                r.start,
                r.end,
                if r.unavailable {
                    format!("503, unreachable {:?}", r.unreachable)
                } else {
                    "no answer".to_string()
                }
            ));
        }
    }
    // G4: converge after healing, to a value that keeps every acknowledged increment.
    match h.converged_at {
        None => bad.push("G4: nodes never agreed after healing".into()),
        Some(t) => {
            if t > plan.heal_at + Duration::from_secs(10) {
                bad.push(format!(
                    "G4: converged only at {t:?}, healed at {:?}",
                    plan.heal_at
                ));
            }
            for (name, values) in &h.final_values {
                let v = values[0];
                let kept = acked_kept(name);
                let sent = sent_before(name, Duration::MAX);
                if v < kept {
                    bad.push(format!(
                        "G1: {name:?} converged to {v} < {kept} acknowledged (total acknowledged {})",
                        acked_total(name)
                    ));
                }
                if v > sent {
                    bad.push(format!("G2: {name:?} converged to {v} > {sent} sent"));
                }
            }
        }
    }
    bad
}

/// A short fingerprint of a history, to show that a seed replays exactly.
pub fn fingerprint(h: &History) -> String {
    let mut s = String::new();
    for i in &h.incs {
        s.push_str(&format!(
            "i{}{}{}{:?}{};",
            i.name, i.node, i.amount, i.end, i.acked
        ));
    }
    for r in &h.reads {
        s.push_str(&format!("r{}{}{:?}{:?};", r.name, r.node, r.end, r.value));
    }
    format!("{}:{:x}", s.len(), fxhash(&s))
}

fn fxhash(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

pub fn summary(h: &History) -> String {
    let acked = h.incs.iter().filter(|i| i.acked).count();
    let consistent = h.reads.iter().filter(|r| r.consistent).count();
    let ok = h
        .reads
        .iter()
        .filter(|r| r.consistent && r.value.is_some())
        .count();
    let unavailable = h.reads.iter().filter(|r| r.unavailable).count();
    format!(
        "{} increments ({acked} acked), {consistent} consistent reads ({ok} ok, {unavailable} 503), converged at {:?}",
        h.incs.len(),
        h.converged_at
    )
}
