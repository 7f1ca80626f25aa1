//! The chaos run: builds the network, starts the nodes, runs the workload
//! and the fault schedule side by side, heals, measures recovery, and hands
//! the history to the checker.

use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::check::{
    Bounds, FaultRec, History, Micros, ReadKind, ReadRec, ReadResult, WriteRec, WriteResult, check,
    excused, wipe_excuses,
};
use super::client::{Client, Outcome, encode_segment};
use super::harness::{
    Harness, Setup, cannot_run, env_flag, missing_prerequisite, node_binary, serial,
};
use super::net::DelayMode;
use super::rng::Rng;

/// Counter names: a small set so reads and writes collide; one needs percent-encoding.
const NAMES: [&str; 8] = ["c0", "c1", "c2", "c3", "c4", "c5", "c6", "a b/ü"];
const WRITERS: usize = 4;
const VALUE_READERS: usize = 2;
const CONSISTENT_READERS: usize = 2;
/// Client deadline of one increment or `value`.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// Pause between two polls of a condition.
const POLL: Duration = Duration::from_millis(50);
/// What the recovery after the final heal must beat.
const RECOVERY_BOUND: Duration = Duration::from_secs(10);
/// How long recovery is measured before giving up (beyond the bound, for the figure).
const RECOVERY_WAIT: Duration = Duration::from_secs(25);
/// The workload's last seconds run under a full partition (every node cut
/// off from every other), so the nodes diverge before the final heal.
const FINAL_HOLD: Duration = Duration::from_secs(3);
/// Deadline of the consistent reads left waiting across the final heal.
const IN_FLIGHT_TIMEOUT_MS: u64 = 20_000;
/// A consistent read waiting when the network heals answers 200 within this
/// (G5: "promptly, not at the end of a backoff").
const IN_FLIGHT_BOUND: Duration = Duration::from_secs(5);
/// Bound on a node answering /status after it was (re)started.
const START_BOUND: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------
// Parameters and prerequisites

pub struct Params {
    pub seed: u64,
    pub nodes: usize,
    pub secs: u64,
    pub ci: bool,
    pub wipe: bool,
}

impl Params {
    pub fn from_env() -> Params {
        let seed = match std::env::var("TALLY_CHAOS_SEED") {
            Ok(raw) => {
                let raw = raw.trim();
                let parsed = match raw.strip_prefix("0x") {
                    Some(hex) => u64::from_str_radix(hex, 16),
                    None => raw.parse(),
                };
                parsed.unwrap_or_else(|_| panic!("TALLY_CHAOS_SEED={raw:?} is not a u64"))
            }
            Err(_) => {
                let nanos = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(0);
                Rng::new(nanos ^ u64::from(std::process::id())).next_u64()
            }
        };
        let nodes = match std::env::var("TALLY_CHAOS_NODES") {
            Ok(raw) => raw
                .trim()
                .parse::<usize>()
                .ok()
                .filter(|n| (1..=20).contains(n))
                .unwrap_or_else(|| panic!("TALLY_CHAOS_NODES={raw:?} is not a number in 1..=20")),
            Err(_) => 3,
        };
        let secs = match std::env::var("TALLY_CHAOS_SECS") {
            Ok(raw) => raw
                .trim()
                .parse::<u64>()
                .ok()
                .filter(|s| *s >= 5)
                .unwrap_or_else(|| panic!("TALLY_CHAOS_SECS={raw:?} is not a number ≥ 5")),
            Err(_) => 60,
        };
        Params {
            seed,
            nodes,
            secs,
            ci: env_flag("CI"),
            wipe: env_flag("TALLY_CHAOS_WIPE"),
        }
    }

    pub fn replay(&self) -> String {
        format!(
            "TALLY_CHAOS_SEED={} TALLY_CHAOS_NODES={} TALLY_CHAOS_SECS={}{} cargo test --release --test chaos -- --nocapture",
            self.seed,
            self.nodes,
            self.secs,
            if self.wipe { " TALLY_CHAOS_WIPE=1" } else { "" }
        )
    }
}

/// Prints the seed and the replay command if the test panics.
struct ReplayOnPanic(String);

impl Drop for ReplayOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("\nchaos: FAILED; replay with:\n  {}\n", self.0);
        }
    }
}

// ---------------------------------------------------------------------------
// Shared state of a run

struct World {
    epoch: Instant,
    deadline: Instant,
    ips: Vec<String>,
    names: Vec<String>,
    acked: Vec<AtomicU64>,
    sent: Vec<AtomicU64>,
    stop: AtomicBool,
    writes: Mutex<Vec<WriteRec>>,
    reads: Mutex<Vec<ReadRec>>,
    faults: Mutex<Vec<FaultRec>>,
    /// Problems found outside the history (setup, restarts, recovery).
    problems: Mutex<Vec<String>>,
    /// The full partition left in force at the end of the workload, healed by `recover`.
    final_fault: Mutex<Option<FaultRec>>,
    /// Whether the data-loss fault is in the mix (TALLY_CHAOS_WIPE).
    wipe: bool,
}

impl World {
    fn now(&self) -> Micros {
        self.epoch.elapsed().as_micros() as Micros
    }

    fn url(&self, node: usize, path: &str) -> String {
        format!("http://{}:7777{path}", self.ips[node - 1])
    }

    fn counter_url(&self, node: usize, name: usize, suffix: &str) -> String {
        self.url(
            node,
            &format!("/counter/{}{suffix}", encode_segment(&self.names[name])),
        )
    }

    fn running(&self) -> bool {
        !self.stop.load(Ordering::SeqCst) && Instant::now() < self.deadline
    }

    fn problem(&self, msg: String) {
        let mut problems = lock(&self.problems);
        if problems.len() < 20 {
            eprintln!("chaos: PROBLEM: {msg}");
        }
        problems.push(msg);
    }
}

/// Per name, what every node must include once the faults are over: the
/// acknowledged sum, less what wiped nodes may have taken with them.
fn owed(world: &World) -> Vec<u64> {
    let faults = lock(&world.faults).clone();
    let acked = |k: usize| world.acked[k].load(Ordering::SeqCst);
    if !faults.iter().any(|f| f.wiped) {
        return (0..world.names.len()).map(acked).collect();
    }
    let h = History {
        writes: lock(&world.writes).clone(),
        reads: Vec::new(),
        faults,
    };
    let excuses = wipe_excuses(&h, world.names.len());
    (0..world.names.len())
        .map(|k| acked(k).saturating_sub(excused(&excuses, k, Micros::MAX)))
        .collect()
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Polls `cond` until it yields a value or `bound` passes.
fn poll<T>(bound: Duration, mut cond: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + bound;
    let max_rounds = bound.as_millis() / POLL.as_millis().max(1) + 2;
    for _ in 0..max_rounds {
        if let Some(v) = cond() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(POLL);
    }
    None
}

fn parse_value(body: &str) -> Option<u128> {
    if body.is_empty() || !body.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    body.parse().ok()
}

fn status_json(client: &Client, world: &World, node: usize) -> Option<serde_json::Value> {
    match client
        .get(&world.url(node, "/status"), Duration::from_secs(1))
        .0
    {
        Outcome::Answer(200, body) => serde_json::from_str(&body).ok(),
        _ => None,
    }
}

fn wait_ready(client: &Client, world: &World, node: usize, bound: Duration) -> bool {
    poll(bound, || status_json(client, world, node)).is_some()
}

/// Whether node `node` knows the whole config and which actor it is.
fn knows_config(status: &serde_json::Value, world: &World, node: usize) -> bool {
    let actors: Vec<&str> = status["config"]["actors"]
        .as_array()
        .map(|a| a.iter().filter_map(|x| x.as_str()).collect())
        .unwrap_or_default();
    let want: Vec<String> = world.ips.iter().map(|ip| format!("{ip}:7777")).collect();
    actors.len() == want.len()
        && want.iter().all(|w| actors.contains(&w.as_str()))
        && status["self"].as_str() == Some(want[node - 1].as_str())
}

fn consistent(
    client: &Client,
    world: &World,
    node: usize,
    name: usize,
    timeout_ms: u64,
) -> ReadResult {
    let url = world.counter_url(
        node,
        name,
        &format!("/consistent_value?timeout={timeout_ms}ms"),
    );
    let client_timeout = Duration::from_millis(timeout_ms + 2500);
    read_result(client.get(&url, client_timeout).0, true)
}

fn read_result(outcome: Outcome, consistent: bool) -> ReadResult {
    match outcome {
        Outcome::Answer(200, body) => match parse_value(&body) {
            Some(v) => ReadResult::Value(v),
            None => ReadResult::BadAnswer(200, body),
        },
        Outcome::Answer(503, body) if consistent => {
            match serde_json::from_str::<serde_json::Value>(&body) {
                Ok(json) if json["error"].is_string() => ReadResult::Unavailable {
                    unreachable: json["unreachable"]
                        .as_array()
                        .map(|a| {
                            a.iter()
                                .map(|x| x.as_str().map(str::to_string).unwrap_or(x.to_string()))
                                .collect()
                        })
                        .unwrap_or_default(),
                    best: json["best_known_value"].as_u64().map(u128::from),
                },
                _ => ReadResult::BadAnswer(503, body),
            }
        }
        Outcome::Answer(status, body) => ReadResult::BadAnswer(status, body),
        Outcome::Failed(e) => ReadResult::Failed(e),
    }
}

// ---------------------------------------------------------------------------
// Workload

fn writer(world: &World, mut rng: Rng) {
    let client = Client::new();
    let n = world.ips.len() as u64;
    for _ in 0..10_000_000u64 {
        if !world.running() {
            break;
        }
        let node = 1 + rng.below(n) as usize;
        let name = rng.index(world.names.len());
        let amount = rng.range(1, 10);
        world.sent[name].fetch_add(amount, Ordering::SeqCst);
        let start = world.now();
        let (outcome, _) = client.post(
            &world.counter_url(node, name, ""),
            &amount.to_string(),
            REQUEST_TIMEOUT,
        );
        let result = match outcome {
            Outcome::Answer(200, body) if parse_value(&body).is_some() => {
                world.acked[name].fetch_add(amount, Ordering::SeqCst);
                // The answer is the node's new local value: it includes this
                // increment and nothing that was never sent.
                let local = parse_value(&body).unwrap_or(0);
                let sent = u128::from(world.sent[name].load(Ordering::SeqCst));
                if local < u128::from(amount) || local > sent {
                    world.problem(format!(
                        "G2: POST /counter/{} +{amount} to node {node} answered local value {local}, outside {amount}..={sent} (sent so far)",
                        world.names[name]
                    ));
                }
                WriteResult::Acked
            }
            Outcome::Answer(status, body) => WriteResult::Rejected(status, body),
            Outcome::Failed(e) => WriteResult::Uncertain(e),
        };
        let end = world.now();
        lock(&world.writes).push(WriteRec {
            node,
            name,
            amount,
            start,
            end,
            result,
        });
        std::thread::sleep(Duration::from_millis(rng.range(0, 8)));
    }
}

fn reader(world: &World, mut rng: Rng, kind_consistent: bool) {
    let client = Client::new();
    let n = world.ips.len() as u64;
    for _ in 0..10_000_000u64 {
        if !world.running() {
            break;
        }
        let node = 1 + rng.below(n) as usize;
        let name = rng.index(world.names.len());
        let start = world.now();
        let acked_at_start = world.acked[name].load(Ordering::SeqCst);
        let (kind, result) = if kind_consistent {
            let timeout_ms = if rng.chance(1, 3) { 1000 } else { 3000 };
            (
                ReadKind::Consistent { timeout_ms },
                consistent(&client, world, node, name, timeout_ms),
            )
        } else {
            let url = world.counter_url(node, name, "/value");
            (
                ReadKind::Value,
                read_result(client.get(&url, REQUEST_TIMEOUT).0, false),
            )
        };
        let end = world.now();
        let sent_at_end = world.sent[name].load(Ordering::SeqCst);
        lock(&world.reads).push(ReadRec {
            node,
            name,
            kind,
            start,
            end,
            acked_at_start,
            sent_at_end,
            result,
        });
        std::thread::sleep(Duration::from_millis(rng.range(2, 12)));
    }
}

// ---------------------------------------------------------------------------
// Faults

#[derive(Debug)]
enum Fault {
    /// One node cut off from every other.
    Isolate(usize),
    /// Two halves that cannot talk to each other.
    Split(Vec<usize>, Vec<usize>),
    /// One link cut; both ends still reach the rest (a non-transitive partition).
    CutLink(usize, usize),
    Pause(usize),
    Crash(usize),
    /// Crash, lose the whole data folder, restart (SPEC G7's second sentence).
    Wipe(usize),
    Delay(usize),
}

impl Fault {
    fn pick(rng: &mut Rng, n: usize, wipe: bool) -> Fault {
        let node = |rng: &mut Rng| 1 + rng.index(n);
        let mut kinds = vec![0, 3, 4];
        if n >= 2 {
            kinds.push(1);
        }
        if n >= 3 {
            kinds.push(2);
        }
        if wipe {
            kinds.push(5);
        }
        if n >= 4 {
            kinds.push(6);
        }
        match kinds[rng.index(kinds.len())] {
            1 => Fault::Isolate(node(rng)),
            2 => {
                let pair = rng.subset(n, 2);
                Fault::CutLink(pair[0] + 1, pair[1] + 1)
            }
            3 => Fault::Crash(node(rng)),
            4 => Fault::Delay(node(rng)),
            5 => Fault::Wipe(node(rng)),
            6 => {
                let k = n / 2;
                let a: Vec<usize> = rng.subset(n, k).into_iter().map(|i| i + 1).collect();
                let b: Vec<usize> = (1..=n).filter(|i| !a.contains(i)).collect();
                Fault::Split(a, b)
            }
            _ => Fault::Pause(node(rng)),
        }
    }

    fn cuts(&self, n: usize) -> Vec<(usize, usize)> {
        match self {
            Fault::Isolate(i) => (1..=n).filter(|j| j != i).map(|j| (*i, j)).collect(),
            Fault::Split(a, b) => a
                .iter()
                .flat_map(|x| b.iter().map(move |y| (*x, *y)))
                .collect(),
            Fault::CutLink(a, b) => vec![(*a, *b)],
            _ => Vec::new(),
        }
    }

    fn label(&self, mode: DelayMode) -> String {
        match self {
            Fault::Isolate(i) => format!("isolate n{i}"),
            Fault::Split(a, b) => format!("split {a:?}|{b:?}"),
            Fault::CutLink(a, b) => format!("cut-link n{a}-n{b}"),
            Fault::Pause(i) => format!("pause n{i}"),
            Fault::Crash(i) => format!("crash n{i}"),
            Fault::Wipe(i) => format!("wipe n{i} (crash, data folder deleted, restart)"),
            Fault::Delay(i) => match mode {
                DelayMode::Netem => format!("delay n{i} (netem 50ms±20ms)"),
                DelayMode::TbfFallback => format!("delay n{i} (tbf fallback, no netem)"),
            },
        }
    }
}

/// Restarts node `id` with the same id and folder, without posting config,
/// and checks it came back with its config (G7, G8).
fn restart(h: &Harness, world: &World, client: &Client, id: usize) -> Result<(), String> {
    h.nodes().spawn(id)?;
    if !wait_ready(client, world, id, START_BOUND) {
        return Err(format!(
            "node {id} did not answer /status within {START_BOUND:?} after a restart"
        ));
    }
    // A consistent read the moment it answers: it must already include
    // everything acknowledged (G1), or answer 503, never a partial 200.
    let name = id % world.names.len();
    let start = world.now();
    let acked_at_start = world.acked[name].load(Ordering::SeqCst);
    let result = consistent(client, world, id, name, 3000);
    lock(&world.reads).push(ReadRec {
        node: id,
        name,
        kind: ReadKind::Consistent { timeout_ms: 3000 },
        start,
        end: world.now(),
        acked_at_start,
        sent_at_end: world.sent[name].load(Ordering::SeqCst),
        result,
    });
    let known = poll(Duration::from_secs(5), || {
        status_json(client, world, id).filter(|s| knows_config(s, world, id))
    });
    if known.is_none() {
        world.problem(format!(
            "G7/G8: node {id} restarted from its folder but does not know the cluster config and itself within 5s: {:?}",
            status_json(client, world, id)
        ));
    }
    Ok(())
}

fn faults(h: &Harness, world: &World, mut rng: Rng) -> Result<(), String> {
    let client = Client::new();
    let n = world.ips.len();
    let mode = h.lab.delay_mode;
    for _ in 0..100_000u32 {
        if !world.running() {
            break;
        }
        for i in 1..=n {
            if let Some(status) = h.nodes().exited(i) {
                return Err(format!("node {i} exited on its own ({status})"));
            }
        }
        let fault = Fault::pick(&mut rng, n, world.wipe);
        let hold = Duration::from_millis(rng.range(1000, 4000));
        let gap = Duration::from_millis(rng.range(300, 1500));
        let finish_by = world.deadline.checked_sub(FINAL_HOLD);
        if finish_by.is_none_or(|t| Instant::now() + hold + gap > t) {
            break;
        }
        let label = fault.label(mode);
        let cuts = fault.cuts(n);
        let mut down = Vec::new();
        let mut degraded = Vec::new();
        let begin = world.now();
        match &fault {
            Fault::Isolate(_) | Fault::Split(..) | Fault::CutLink(..) => h.lab.partition(&cuts)?,
            Fault::Pause(i) => {
                down.push(*i);
                h.nodes().pause(*i)?;
            }
            Fault::Crash(i) => {
                down.push(*i);
                h.nodes().crash(*i)?;
            }
            Fault::Wipe(i) => {
                down.push(*i);
                h.nodes().crash(*i)?;
                let dir = h.work.join(format!("tally-data/node-{i}"));
                std::fs::remove_dir_all(&dir)
                    .map_err(|e| format!("cannot delete {}: {e}", dir.display()))?;
            }
            Fault::Delay(i) => {
                if mode == DelayMode::TbfFallback {
                    degraded.push(*i);
                }
                h.lab.delay(*i)?;
            }
        }
        let active_from = world.now();
        eprintln!(
            "chaos: {:>8.3}s {label} for {:.1}s",
            begin as f64 / 1e6,
            hold.as_secs_f64()
        );
        if !cuts.is_empty() && rng.chance(1, 3) {
            // A node paused, or crashed and restarted, while the partition holds.
            let third = hold / 3;
            std::thread::sleep(third);
            let victim = 1 + rng.index(n);
            let crash = rng.chance(1, 2);
            let kind = if crash {
                "nested-crash"
            } else {
                "nested-pause"
            };
            let inner_label = format!("{kind} n{victim} (inside {label})");
            let inner_begin = world.now();
            if crash {
                h.nodes().crash(victim)?;
            } else {
                h.nodes().pause(victim)?;
            }
            let inner_from = world.now();
            eprintln!(
                "chaos: {:>8.3}s {inner_label} for {:.1}s",
                inner_begin as f64 / 1e6,
                third.as_secs_f64()
            );
            std::thread::sleep(third);
            let inner_until = world.now();
            if crash {
                restart(h, world, &client, victim)?;
            } else {
                h.nodes().resume(victim)?;
            }
            lock(&world.faults).push(FaultRec {
                label: inner_label,
                begin: inner_begin,
                active_from: inner_from,
                active_until: inner_until,
                end: world.now(),
                cuts: Vec::new(),
                down: vec![victim],
                degraded: Vec::new(),
                wiped: false,
            });
            std::thread::sleep(hold.saturating_sub(third * 2));
        } else {
            std::thread::sleep(hold);
        }
        let active_until = world.now();
        match &fault {
            Fault::Isolate(_) | Fault::Split(..) | Fault::CutLink(..) | Fault::Delay(_) => {
                h.lab.heal()?
            }
            Fault::Pause(i) => h.nodes().resume(*i)?,
            Fault::Crash(i) | Fault::Wipe(i) => restart(h, world, &client, *i)?,
        }
        let end = world.now();
        lock(&world.faults).push(FaultRec {
            label,
            begin,
            active_from,
            active_until,
            end,
            cuts,
            down,
            degraded,
            wiped: matches!(fault, Fault::Wipe(_)),
        });
        if !world.running() {
            break;
        }
        std::thread::sleep(gap);
    }
    // The final fault: every node alone, until the main thread heals it.
    if n >= 2 && world.running() {
        let cuts: Vec<(usize, usize)> = (1..=n)
            .flat_map(|a| (a + 1..=n).map(move |b| (a, b)))
            .collect();
        let begin = world.now();
        h.lab.partition(&cuts)?;
        let active_from = world.now();
        eprintln!(
            "chaos: {:>8.3}s final partition: every node alone, until after the workload",
            begin as f64 / 1e6
        );
        *lock(&world.final_fault) = Some(FaultRec {
            label: "final-partition (every node alone)".into(),
            begin,
            active_from,
            active_until: u64::MAX,
            end: u64::MAX,
            cuts,
            down: Vec::new(),
            degraded: Vec::new(),
            wiped: false,
        });
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Recovery after the final heal

struct Recovery {
    /// Consistent reads already waiting when the network healed: the slowest
    /// one's answer, after the heal.
    in_flight: Option<Duration>,
    consistent_everywhere: Option<Duration>,
    converged: Option<Duration>,
}

/// Time from `healed` until a consistent read answers 200 on every node.
fn measure_consistent(world: &World, healed: Instant) -> Option<Duration> {
    let n = world.ips.len();
    let owed = &owed(world);
    let per_node: Vec<Option<Duration>> = std::thread::scope(|s| {
        let handles: Vec<_> = (1..=n)
            .map(|node| {
                s.spawn(move || {
                    let client = Client::new();
                    let mut k = 0usize;
                    poll(RECOVERY_WAIT, || {
                        k += 1;
                        let name = k % world.names.len();
                        let acked = owed[name];
                        match consistent(&client, world, node, name, 3000) {
                            ReadResult::Value(v) => {
                                if v < u128::from(acked) {
                                    world.problem(format!(
                                        "G1: after the final heal, consistent_value of {:?} on node {node} is {v} < {acked} acknowledged",
                                        world.names[name]
                                    ));
                                }
                                Some(healed.elapsed())
                            }
                            _ => None,
                        }
                    })
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or(None))
            .collect()
    });
    for (i, t) in per_node.iter().enumerate() {
        eprintln!(
            "chaos: node {} consistent after the heal: {}",
            i + 1,
            t.map_or("never".into(), |t| format!(
                "{:.0}ms",
                t.as_secs_f64() * 1e3
            ))
        );
    }
    per_node
        .into_iter()
        .try_fold(Duration::ZERO, |acc, t| t.map(|t| acc.max(t)))
}

/// Time from `healed` until every node's value of every name is equal and ≥ acked.
fn measure_convergence(world: &World, healed: Instant) -> Option<Duration> {
    let client = Client::new();
    let n = world.ips.len();
    let mut last = String::new();
    let owed = owed(world);
    let found = poll(RECOVERY_WAIT, || {
        for (name, &acked) in owed.iter().enumerate() {
            let acked = u128::from(acked);
            let mut values = Vec::with_capacity(n);
            for node in 1..=n {
                let url = world.counter_url(node, name, "/value");
                match read_result(client.get(&url, REQUEST_TIMEOUT).0, false) {
                    ReadResult::Value(v) => values.push(v),
                    other => {
                        last = format!("node {node} {:?}: {other:?}", world.names[name]);
                        return None;
                    }
                }
            }
            if values.iter().any(|v| *v != values[0] || *v < acked) {
                last = format!("{:?}: values {values:?}, acked {acked}", world.names[name]);
                return None;
            }
        }
        Some(healed.elapsed())
    });
    if found.is_none() {
        world.problem(format!(
            "G4: nodes did not converge within {RECOVERY_WAIT:?} of the final heal; last seen {last}"
        ));
    }
    found
}

fn recover(h: &Harness, world: &World) -> Result<Recovery, String> {
    let client = Client::new();
    let n = world.ips.len();
    let partitioned = lock(&world.final_fault).take();
    std::thread::scope(|s| {
        // Consistent reads that start while every node is alone and must
        // answer 200 soon after the heal, long before their deadline.
        let waiting: Vec<_> = match &partitioned {
            Some(_) => (1..=n)
                .map(|node| {
                    s.spawn(move || {
                        let client = Client::new();
                        let name = node % world.names.len();
                        let start = world.now();
                        let acked_at_start = world.acked[name].load(Ordering::SeqCst);
                        let result = consistent(&client, world, node, name, IN_FLIGHT_TIMEOUT_MS);
                        let end = world.now();
                        ReadRec {
                            node,
                            name,
                            kind: ReadKind::Consistent {
                                timeout_ms: IN_FLIGHT_TIMEOUT_MS,
                            },
                            start,
                            end,
                            acked_at_start,
                            sent_at_end: world.sent[name].load(Ordering::SeqCst),
                            result,
                        }
                    })
                })
                .collect(),
            None => Vec::new(),
        };
        if partitioned.is_some() {
            // Held so the reads above are surely waiting on their peers.
            std::thread::sleep(Duration::from_secs(1));
        }
        // Recovery is timed from the start of the heal.
        let healed = Instant::now();
        let healed_at = world.now();
        h.lab.heal()?;
        for i in 1..=n {
            if let Some(status) = h.nodes().exited(i) {
                return Err(format!("node {i} exited on its own ({status})"));
            }
            if h.nodes().running(i) {
                h.nodes().resume(i)?;
            } else {
                h.nodes().spawn(i)?;
            }
        }
        for i in 1..=n {
            if !wait_ready(&client, world, i, START_BOUND) {
                return Err(format!(
                    "node {i} does not answer /status after the final heal"
                ));
            }
        }
        eprintln!(
            "chaos: {:>8.3}s final heal started; all nodes running and whole after {:.0}ms",
            healed_at as f64 / 1e6,
            healed.elapsed().as_secs_f64() * 1e3
        );
        if let Some(mut f) = partitioned {
            f.active_until = healed_at;
            f.end = world.now();
            lock(&world.faults).push(f);
        }
        let mut in_flight = if waiting.is_empty() {
            None
        } else {
            Some(Duration::ZERO)
        };
        for handle in waiting {
            let Ok(r) = handle.join() else {
                in_flight = None;
                continue;
            };
            let after = Duration::from_micros(r.end.saturating_sub(healed_at));
            eprintln!(
                "chaos: node {} consistent read waiting across the heal: {:?} {:.0}ms after it",
                r.node,
                r.result,
                after.as_secs_f64() * 1e3
            );
            match &r.result {
                ReadResult::Value(_) if after <= IN_FLIGHT_BOUND => {
                    in_flight = in_flight.map(|m| m.max(after));
                }
                other => {
                    world.problem(format!(
                        "G5: a consistent_value?timeout={IN_FLIGHT_TIMEOUT_MS}ms on node {} that was waiting when the network healed answered {other:?} {:.0}ms after the heal; it must answer 200 within {IN_FLIGHT_BOUND:?}",
                        r.node,
                        after.as_secs_f64() * 1e3
                    ));
                    in_flight = None;
                }
            }
            lock(&world.reads).push(r);
        }
        let c = s.spawn(move || measure_consistent(world, healed));
        let v = s.spawn(move || measure_convergence(world, healed));
        Ok(Recovery {
            in_flight,
            consistent_everywhere: c.join().unwrap_or(None),
            converged: v.join().unwrap_or(None),
        })
    })
}

/// After convergence: every node's value and consistent value of every name
/// lies between what was acknowledged and what was sent.
fn final_values(world: &World) -> Vec<String> {
    let client = Client::new();
    let mut lines = Vec::new();
    let owed = owed(world);
    for (name, &acked) in owed.iter().enumerate() {
        let sent = world.sent[name].load(Ordering::SeqCst);
        let mut seen = Vec::new();
        for node in 1..=world.ips.len() {
            let url = world.counter_url(node, name, "/value");
            let value = read_result(client.get(&url, REQUEST_TIMEOUT).0, false);
            let cons = consistent(&client, world, node, name, 3000);
            for (what, r) in [("value", &value), ("consistent_value", &cons)] {
                match r {
                    ReadResult::Value(v) if *v >= u128::from(acked) && *v <= u128::from(sent) => {
                        seen.push(*v)
                    }
                    other => world.problem(format!(
                        "final {what} of {:?} on node {node} is {other:?}; it must be 200 with a value in acked..=sent = {acked}..={sent}",
                        world.names[name]
                    )),
                }
            }
        }
        seen.dedup();
        let raw = world.acked[name].load(Ordering::SeqCst);
        let lost = if raw > acked {
            format!(" (owed {acked}: the rest may be lost with wiped folders)")
        } else {
            String::new()
        };
        lines.push(format!(
            "  {:<8} acked={raw:<7} sent={sent:<7} final={seen:?}{lost}",
            format!("{:?}", world.names[name])
        ));
        if seen.len() > 1 {
            world.problem(format!(
                "final values of {:?} differ between nodes or reads: {seen:?}",
                world.names[name]
            ));
        }
    }
    lines
}

// ---------------------------------------------------------------------------
// The run

pub fn chaos() {
    let params = Params::from_env();
    if let Some(why) = missing_prerequisite(false) {
        cannot_run(&why);
        return;
    }
    let _serial = serial();
    let _replay = ReplayOnPanic(params.replay());
    eprintln!(
        "chaos: seed={} nodes={} secs={}\nchaos: replay with: {}",
        params.seed,
        params.nodes,
        params.secs,
        params.replay()
    );
    let bin = node_binary();
    eprintln!("chaos: node binary {}", bin.display());
    let setup_started = Instant::now();
    let setup = Setup {
        nodes: params.nodes,
        ..Setup::default()
    };
    let h = match Harness::new(&setup, bin.clone()) {
        Ok(h) => h,
        Err(e) => {
            cannot_run(&format!("cannot build the test network: {e}"));
            return;
        }
    };
    if h.lab.delay_mode == DelayMode::TbfFallback {
        let why = "the kernel has no sch_netem (tc netem); the delay fault falls back to a tbf rate limit";
        if params.ci && !env_flag("TALLY_CHAOS_ALLOW_NO_NETEM") {
            panic!(
                "{why}. On CI install the kernel's extra modules (e.g. linux-modules-extra-$(uname -r)) or set TALLY_CHAOS_ALLOW_NO_NETEM=1"
            );
        }
        eprintln!("\n!!! chaos: WARNING: {why}\n");
    }
    let n = params.nodes;
    let ips: Vec<String> = (1..=n).map(|i| h.lab.node_ip(i)).collect();
    let names: Vec<String> = NAMES.iter().map(|s| s.to_string()).collect();
    let world = World {
        epoch: Instant::now(),
        deadline: Instant::now(), // set below, once the cluster is up
        ips: ips.clone(),
        names: names.clone(),
        acked: names.iter().map(|_| AtomicU64::new(0)).collect(),
        sent: names.iter().map(|_| AtomicU64::new(0)).collect(),
        stop: AtomicBool::new(false),
        writes: Mutex::new(Vec::new()),
        reads: Mutex::new(Vec::new()),
        faults: Mutex::new(Vec::new()),
        problems: Mutex::new(Vec::new()),
        final_fault: Mutex::new(None),
        wipe: params.wipe,
    };
    let client = Client::new();

    // Start the nodes, post the config once, wait until the cluster is whole.
    for i in 1..=n {
        h.nodes().spawn(i).unwrap_or_else(|e| panic!("{e}"));
    }
    for i in 1..=n {
        if !wait_ready(&client, &world, i, START_BOUND) {
            panic!(
                "node {i} did not answer /status within {START_BOUND:?}\n{}",
                h.logs(40)
            );
        }
        // `ip netns exec` must exec the node, so that signals reach it.
        let pid = h.nodes().pid(i).expect("just started");
        let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap_or_default();
        let want = std::fs::canonicalize(&bin).unwrap_or(bin.clone());
        assert_eq!(
            exe, want,
            "pid {pid} of node {i} is not the node binary; signals would miss it"
        );
    }
    let config = serde_json::json!({ "actors": ips }).to_string();
    match client
        .post(&world.url(1, "/config"), &config, Duration::from_secs(5))
        .0
    {
        Outcome::Answer(200, _) => {}
        other => panic!("POST /config to node 1 failed: {other:?}\n{}", h.logs(40)),
    }
    for i in 1..=n {
        let status = poll(Duration::from_secs(10), || {
            status_json(&client, &world, i).filter(|s| knows_config(s, &world, i))
        })
        .unwrap_or_else(|| {
            panic!(
                "G8: node {i} did not learn the config posted to node 1 (and itself in it) within 10s: {:?}\n{}",
                status_json(&client, &world, i),
                h.logs(40)
            )
        });
        // G9: the default data folder is derived from the id, under the working folder.
        let dir = status["data_dir"].as_str().unwrap_or("");
        assert!(
            dir.ends_with(&format!("tally-data/node-{i}")),
            "G9: node {i} keeps its data in {dir:?}, not ./tally-data/node-{i}"
        );
        assert!(
            h.work.join(format!("tally-data/node-{i}")).is_dir(),
            "G9: {} does not exist",
            h.work.join(format!("tally-data/node-{i}")).display()
        );
    }
    for i in 1..=n {
        let ok = poll(Duration::from_secs(10), || {
            matches!(
                consistent(&client, &world, i, 0, 3000),
                ReadResult::Value(_)
            )
            .then_some(())
        });
        assert!(
            ok.is_some(),
            "a consistent read on node {i} of a whole, fresh cluster did not succeed within 10s\n{}",
            h.logs(40)
        );
    }
    eprintln!(
        "chaos: cluster of {n} up in {:.1}s; running the workload and faults for {}s",
        setup_started.elapsed().as_secs_f64(),
        params.secs
    );

    // The workload and the faults, side by side.
    let world = World {
        deadline: Instant::now() + Duration::from_secs(params.secs),
        ..world
    };
    let mut rng = Rng::new(params.seed);
    let fault_rng = rng.fork();
    let fault_result = std::thread::scope(|s| {
        for _ in 0..WRITERS {
            let r = rng.fork();
            s.spawn(|| writer(&world, r));
        }
        for k in 0..VALUE_READERS + CONSISTENT_READERS {
            let r = rng.fork();
            let w = &world;
            s.spawn(move || reader(w, r, k >= VALUE_READERS));
        }
        let result = s.spawn(|| faults(&h, &world, fault_rng)).join();
        if !matches!(result, Ok(Ok(()))) {
            world.stop.store(true, Ordering::SeqCst);
        }
        result
    });
    let fault_error = match fault_result {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(e),
        Err(_) => Some("the fault thread panicked".to_string()),
    };
    if let Some(e) = &fault_error {
        world.problem(format!("fault injection stopped: {e}"));
    }

    // Final heal and recovery.
    let recovery = match recover(&h, &world) {
        Ok(r) => r,
        Err(e) => {
            world.problem(format!("final heal failed, recovery not measured: {e}"));
            Recovery {
                in_flight: None,
                consistent_everywhere: None,
                converged: None,
            }
        }
    };
    let finals = if recovery.converged.is_some() {
        final_values(&world)
    } else {
        Vec::new()
    };
    for (what, t) in [
        (
            "a consistent read succeeded on every node",
            recovery.consistent_everywhere,
        ),
        ("all nodes converged", recovery.converged),
    ] {
        if let Some(t) = t
            && t > RECOVERY_BOUND
        {
            world.problem(format!(
                "G4/G5: after the final heal, {what} only after {:.1}s (bound {RECOVERY_BOUND:?})",
                t.as_secs_f64()
            ));
        }
    }

    // G9: the shared folder holds nothing but each node's own data folder (and our logs).
    let listing = |dir: &Path| -> Vec<String> {
        std::fs::read_dir(dir)
            .map(|rd| {
                rd.filter_map(Result::ok)
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    };
    let stray: Vec<String> = listing(&h.work)
        .into_iter()
        .filter(|f| f != "tally-data")
        .chain(
            listing(&h.work.join("tally-data"))
                .into_iter()
                .filter(|f| !(1..=n).any(|i| *f == format!("node-{i}")))
                .map(|f| format!("tally-data/{f}")),
        )
        .collect();
    if !stray.is_empty() {
        world.problem(format!(
            "G9: the shared working folder holds files that belong to no node's folder: {stray:?}"
        ));
    }

    // Judge the history.
    let history = History {
        writes: std::mem::take(&mut *lock(&world.writes)),
        reads: std::mem::take(&mut *lock(&world.reads)),
        faults: std::mem::take(&mut *lock(&world.faults)),
    };
    let report = check(&history, &ips, &names, &Bounds::default());
    let st = &report.stats;
    let ms = |t: Option<Duration>| {
        t.map_or("never".into(), |t| {
            format!("{:.0}ms", t.as_secs_f64() * 1e3)
        })
    };
    let mut summary = format!(
        "\n===== tally chaos summary (seed {}, {} nodes, {}s, delay via {:?}) =====\n\
         faults applied: {} {:?}\n\
         increments: {} sent, {} acked, {} uncertain, {} rejected\n\
         value reads: {}   consistent reads: {} ({} ok, {} 503, {} no answer)\n\
         consistent reads wholly inside a fault that cut their node (must be 503): {}; 503s naming extra nodes: {}\n\
         G3 value latency during partitions (running nodes): {}\n\
         G3 value latency during faults (running nodes): {}\n\
         G3 value latency whole run (running nodes):     {}\n\
         G3 increment latency (running nodes):           {}\n\
         G5 consistent read latency (running nodes):     {}\n\
         after the final heal: reads waiting across it answered in {}; fresh consistent reads succeed on every node in {}; converged in {}\n\
         final counters:\n{}\n",
        params.seed,
        n,
        params.secs,
        h.lab.delay_mode,
        history.faults.len(),
        st.faults,
        st.writes,
        st.acked,
        st.uncertain,
        st.rejected,
        st.value_reads,
        st.consistent_reads,
        st.consistent_ok,
        st.consistent_503,
        st.consistent_failed,
        st.strict_g5_reads,
        st.extra_unreachable,
        st.value_during_partitions,
        st.value_during_faults,
        st.value_all,
        st.write_all,
        st.consistent_all,
        if n >= 2 {
            ms(recovery.in_flight)
        } else {
            "n/a (one node)".into()
        },
        ms(recovery.consistent_everywhere),
        ms(recovery.converged),
        finals.join("\n"),
    );
    let mut violations: Vec<String> = lock(&world.problems).clone();
    violations.extend(report.violations.iter().cloned());
    if history.faults.is_empty() {
        violations.push("no fault was applied: the run proves nothing".into());
    }
    if st.acked == 0 || st.consistent_ok == 0 {
        violations.push(
            "the workload made no progress (no acked increment or no consistent read)".into(),
        );
    }
    summary.push_str(&format!("violations: {}\n", violations.len()));
    eprintln!("{summary}");
    if !violations.is_empty() {
        eprintln!("{}", h.logs(30));
        eprintln!("{}", h.lab.describe());
        panic!(
            "chaos: {} violation(s):\n{}seed {}; replay with:\n  {}",
            violations.len(),
            grouped(&violations, 5),
            params.seed,
            params.replay()
        );
    }
}

/// Violations grouped by guarantee (the tag before the first colon), at most
/// `per_group` of each shown.
fn grouped(violations: &[String], per_group: usize) -> String {
    let mut groups: Vec<(&str, Vec<&String>)> = Vec::new();
    for v in violations {
        let tag = v
            .split_once(':')
            .map(|(t, _)| t)
            .filter(|t| t.len() <= 12)
            .unwrap_or("other");
        match groups.iter_mut().find(|(t, _)| *t == tag) {
            Some((_, list)) => list.push(v),
            None => groups.push((tag, vec![v])),
        }
    }
    let mut out = String::new();
    for (tag, list) in groups {
        out.push_str(&format!("[{tag}] {} violation(s)\n", list.len()));
        for v in list.iter().take(per_group) {
            out.push_str(&format!("  {v}\n"));
        }
        if list.len() > per_group {
            out.push_str(&format!("  ... and {} more\n", list.len() - per_group));
        }
    }
    out
}
