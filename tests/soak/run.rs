//! The soak run: three nodes of the real binary in network namespaces,
//! under a steady, paced load for `SOAK_SECS`, with a fault schedule
//! spread over the run (see `plan.rs`) and every node process sampled
//! (see `sample.rs`); then a final heal, the history judged by the chaos
//! checker with nothing excused, and resource use judged by the leak rule
//! (see `leak.rs`).

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::check::{
    Bounds, ConfigView, DISK_RESUME_BOUND, DiskRecovery, FaultRec, History, Latency, Micros,
    REPLICA_GRACE, ReadKind, ReadRec, ReadResult, Refusal, WriteRec, WriteResult, check, classify,
};
use super::client::{Client, Outcome, encode_segment, parse_value, read_result};
use super::harness::{Harness, Setup, fill, missing_prerequisite, node_binary};
use super::leak::{self, RULES, Sample, Verdict};
use super::plan::{self, Kind, Planned};
use super::rng::Rng;
use super::sample;

/// Node processes; every one is an actor of the one config.
pub const NODES: usize = 3;
/// Increment writers, value readers and consistent readers.
const WRITERS: usize = 4;
const CONSISTENT_READERS: usize = 2;
/// Pace of the readers.
const VALUE_EVERY: Duration = Duration::from_millis(100);
const CONSISTENT_EVERY: Duration = Duration::from_millis(400);
/// Client deadline of one increment or `value` (the replica deadline is 1 s).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
const POLL: Duration = Duration::from_millis(50);
/// Bound on a node answering /status after it was (re)started.
const START_BOUND: Duration = Duration::from_secs(20);
/// After the final heal, every node's values must be equal (and hold
/// everything acknowledged) within this.
const CONVERGE_BOUND: Duration = Duration::from_secs(10);
const CONVERGE_WAIT: Duration = Duration::from_secs(25);
/// A process lifetime is judged when it has this much left after its warm-up.
pub const MIN_SPAN_SECS: u64 = 180;
/// The shared working folder's tmpfs: room for three logs at their bound
/// (40 MiB each) and their B-trees, and what the full-disk fault fills.
const TMPFS_MIB: u64 = 256;
/// Idempotency keys a node remembers: the keys the full-disk fault sends
/// reach this cap within the first fault, so the key store is as fixed as
/// the set of names (and its pruning runs all along).
const IDEMPOTENCY_KEYS: &str = "1000";
/// What a planted leak adds, per hour: four to eight times its rule's
/// limit, so that even a short run (SOAK_SECS=420) judges enough of it.
const PLANT_RSS_MIB_H: f64 = 64.0;
const PLANT_FDS_H: f64 = 160.0;
const PLANT_DISK_MIB_H: f64 = 64.0;

// ---------------------------------------------------------------------------
// Parameters

/// `SOAK_PLANT_LEAK`: leaks planted on the steady node, to show the rule fails.
#[derive(Clone, Copy, Debug, Default)]
pub struct Plant {
    /// The sampler adds a growing offset to its resident memory.
    pub rss: bool,
    /// The sampler adds a growing offset to its descriptor count.
    pub fds: bool,
    /// A real file grows in its data folder.
    pub disk: bool,
}

pub struct Params {
    pub seed: u64,
    pub secs: u64,
    /// Increments per second, all writers together.
    pub rate: u64,
    pub sample_every: Duration,
    pub warmup: u64,
    pub plant: Plant,
}

fn env_u64(key: &str, default: u64, ok: impl Fn(u64) -> bool, what: &str) -> u64 {
    match std::env::var(key) {
        Ok(raw) if !raw.trim().is_empty() => {
            let raw = raw.trim();
            let parsed = match raw.strip_prefix("0x") {
                Some(hex) => u64::from_str_radix(hex, 16),
                None => raw.parse(),
            };
            parsed
                .ok()
                .filter(|v| ok(*v))
                .unwrap_or_else(|| panic!("{key}={raw:?} is not {what}"))
        }
        _ => default,
    }
}

impl Params {
    pub fn from_env() -> Params {
        let clock = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        let seed = env_u64(
            "SOAK_SEED",
            Rng::new(clock ^ u64::from(std::process::id())).next_u64(),
            |_| true,
            "a u64",
        );
        let warmup = env_u64(
            "SOAK_WARMUP_SECS",
            60,
            |v| v <= 3600,
            "a number of seconds ≤ 3600",
        );
        // The first full disk comes about a minute in; the stretch after its
        // recovery needs the warm-up and the judged span.
        let min_secs = warmup + MIN_SPAN_SECS + 120;
        let secs = env_u64(
            "SOAK_SECS",
            1800,
            |v| v >= min_secs,
            &format!(
                "a number of seconds ≥ {min_secs} (the first full disk, then the warm-up, then {MIN_SPAN_SECS}s to judge)"
            ),
        );
        let rate = env_u64("SOAK_RATE", 200, |v| (1..=5000).contains(&v), "in 1..=5000");
        let sample_every = Duration::from_secs(env_u64(
            "SOAK_SAMPLE_SECS",
            5,
            |v| (1..=60).contains(&v),
            "in 1..=60",
        ));
        let mut plant = Plant::default();
        if let Ok(list) = std::env::var("SOAK_PLANT_LEAK") {
            for what in list.split(',').map(str::trim).filter(|w| !w.is_empty()) {
                match what {
                    "rss" => plant.rss = true,
                    "fds" => plant.fds = true,
                    "disk" => plant.disk = true,
                    other => panic!("SOAK_PLANT_LEAK: {other:?} is not rss, fds or disk"),
                }
            }
        }
        Params {
            seed,
            secs,
            rate,
            sample_every,
            warmup,
            plant,
        }
    }

    pub fn replay(&self) -> String {
        let mut flags = String::new();
        if self.rate != 200 {
            flags.push_str(&format!(" SOAK_RATE={}", self.rate));
        }
        if self.warmup != 60 {
            flags.push_str(&format!(" SOAK_WARMUP_SECS={}", self.warmup));
        }
        if self.sample_every != Duration::from_secs(5) {
            flags.push_str(&format!(
                " SOAK_SAMPLE_SECS={}",
                self.sample_every.as_secs()
            ));
        }
        let planted: Vec<&str> = [
            (self.plant.rss, "rss"),
            (self.plant.fds, "fds"),
            (self.plant.disk, "disk"),
        ]
        .iter()
        .filter(|(on, _)| *on)
        .map(|(_, what)| *what)
        .collect();
        if !planted.is_empty() {
            flags.push_str(&format!(" SOAK_PLANT_LEAK={}", planted.join(",")));
        }
        format!(
            "SOAK_SEED={} SOAK_SECS={}{flags} make soak",
            self.seed, self.secs
        )
    }
}

/// The counter names: a fixed set. Four are 1000 bytes long, so that the
/// log grows fast enough to be folded several times in a run; one needs
/// percent-encoding. Returns (name, label for messages).
pub fn names() -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = ["c0", "c1", "c2", "a b/ü"]
        .iter()
        .map(|s| (s.to_string(), format!("{s:?}")))
        .collect();
    for i in 0..4 {
        let head = format!("long-{i}-");
        let name = format!("{head}{}", "x".repeat(1000 - head.len()));
        out.push((name, format!("long-{i} (1000 bytes)")));
    }
    out
}

// ---------------------------------------------------------------------------
// Shared state

struct State {
    epoch: Instant,
    /// When the workload began and ends.
    began: Instant,
    deadline: Instant,
    ips: Vec<String>,
    names: Vec<String>,
    labels: Vec<String>,
    acked: Vec<AtomicU64>,
    sent: Vec<AtomicU64>,
    stop: AtomicBool,
    writes: Mutex<Vec<WriteRec>>,
    reads: Mutex<Vec<ReadRec>>,
    faults: Mutex<Vec<FaultRec>>,
    disk_recoveries: Mutex<Vec<DiskRecovery>>,
    /// Problems found outside the history (restarts, recovery, final values).
    problems: Mutex<Vec<String>>,
    /// When each node process was started: (node, pid, seconds since epoch).
    starts: Mutex<Vec<(usize, u32, f64)>>,
    samples: Mutex<Vec<Sample>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl State {
    fn now(&self) -> Micros {
        self.epoch.elapsed().as_micros() as Micros
    }

    fn secs(&self) -> f64 {
        self.epoch.elapsed().as_secs_f64()
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
            eprintln!("soak: PROBLEM: {msg}");
        }
        problems.push(msg);
    }

    fn started(&self, node: usize, pid: Option<u32>) {
        if let Some(pid) = pid {
            let t = self.secs();
            lock(&self.starts).push((node, pid, t));
        }
    }
}

/// Polls `cond` until it yields a value or `bound` passes.
fn poll<T>(bound: Duration, mut cond: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + bound;
    loop {
        if let Some(v) = cond() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(POLL);
    }
}

/// Sleeps until `until`, in short steps, unless the run stops first.
fn sleep_until(st: &State, until: Instant) {
    while st.running() {
        let now = Instant::now();
        if now >= until {
            return;
        }
        std::thread::sleep((until - now).min(Duration::from_millis(200)));
    }
}

/// A steady pace: one call per `every` on average (each gap drawn in
/// 0.5..1.5 of it); a caller that fell behind by more than a few gaps
/// starts afresh rather than catching up in a burst.
struct Pace {
    next: Instant,
    every: Duration,
}

impl Pace {
    fn new(every: Duration) -> Pace {
        Pace {
            next: Instant::now(),
            every,
        }
    }

    fn wait(&mut self, st: &State, rng: &mut Rng) {
        let now = Instant::now();
        if now > self.next + self.every * 4 {
            self.next = now;
        }
        sleep_until(st, self.next);
        let gap = self.every.as_micros() as u64;
        self.next += Duration::from_micros(rng.range(gap / 2, gap + gap / 2));
    }
}

fn status_json(client: &Client, st: &State, node: usize) -> Option<serde_json::Value> {
    match client
        .get(&st.url(node, "/status"), Duration::from_secs(1))
        .0
    {
        Outcome::Answer(200, body) => serde_json::from_str(&body).ok(),
        _ => None,
    }
}

fn knows_config(status: &serde_json::Value, st: &State, node: usize) -> bool {
    let me = format!("{}:7777", st.ips[node - 1]);
    status["config"]["version"].as_u64().unwrap_or(0) > 0
        && status["self"].as_str() == Some(me.as_str())
}

fn config_view(status: &serde_json::Value) -> Option<ConfigView> {
    let version = status["config"]["version"].as_u64()?;
    let origin = status["config"]["origin"].as_u64()?;
    let mut actors: Vec<String> = status["config"]["actors"]
        .as_array()?
        .iter()
        .filter_map(|x| x.as_str().map(String::from))
        .collect();
    actors.sort();
    Some((version, origin, actors))
}

fn consistent(
    client: &Client,
    st: &State,
    node: usize,
    name: usize,
    timeout_ms: u64,
) -> ReadResult {
    let url = st.counter_url(
        node,
        name,
        &format!("/consistent_value?timeout={timeout_ms}ms"),
    );
    read_result(
        client.get(&url, Duration::from_millis(timeout_ms + 2500)).0,
        true,
    )
}

/// A consistent read, recorded in the history.
fn consistent_recorded(
    client: &Client,
    st: &State,
    node: usize,
    name: usize,
    timeout_ms: u64,
) -> ReadResult {
    let start = st.now();
    let acked_at_start = st.acked[name].load(Ordering::SeqCst);
    let result = consistent(client, st, node, name, timeout_ms);
    lock(&st.reads).push(ReadRec {
        node,
        name,
        kind: ReadKind::Consistent { timeout_ms },
        start,
        end: st.now(),
        acked_at_start,
        sent_at_end: st.sent[name].load(Ordering::SeqCst),
        result: result.clone(),
    });
    result
}

// ---------------------------------------------------------------------------
// Workload

fn increment(
    st: &State,
    client: &Client,
    node: usize,
    name: usize,
    amount: u64,
    key: Option<&str>,
) -> WriteResult {
    st.sent[name].fetch_add(amount, Ordering::SeqCst);
    let start = st.now();
    let (outcome, _) = client.post_keyed(
        &st.counter_url(node, name, ""),
        &amount.to_string(),
        key,
        REQUEST_TIMEOUT,
    );
    let result = match outcome {
        Outcome::Answer(200, body) if parse_value(&body).is_some() => {
            st.acked[name].fetch_add(amount, Ordering::SeqCst);
            let local = parse_value(&body).unwrap_or(0);
            let sent = u128::from(st.sent[name].load(Ordering::SeqCst));
            if local < u128::from(amount) || local > sent {
                st.problem(format!(
                    "G2: POST /counter/{} +{amount} to node {node} answered local value {local}, outside {amount}..={sent} (sent so far)",
                    st.labels[name]
                ));
            }
            WriteResult::Acked
        }
        Outcome::Answer(status, body) => WriteResult::Rejected(status, body),
        Outcome::Failed(e) => WriteResult::Uncertain(e),
    };
    lock(&st.writes).push(WriteRec {
        node,
        name,
        amount,
        start,
        end: st.now(),
        result: result.clone(),
    });
    result
}

fn writer(st: &State, mut rng: Rng, every: Duration) {
    let client = Client::new();
    let mut pace = Pace::new(every);
    while st.running() {
        pace.wait(st, &mut rng);
        if !st.running() {
            break;
        }
        let node = 1 + rng.index(NODES);
        let name = rng.index(st.names.len());
        increment(st, &client, node, name, rng.range(1, 10), None);
    }
}

fn reader(st: &State, mut rng: Rng, consistent_reads: bool) {
    let client = Client::new();
    let mut pace = Pace::new(if consistent_reads {
        CONSISTENT_EVERY
    } else {
        VALUE_EVERY
    });
    while st.running() {
        pace.wait(st, &mut rng);
        if !st.running() {
            break;
        }
        let node = 1 + rng.index(NODES);
        let name = rng.index(st.names.len());
        if consistent_reads {
            let timeout_ms = if rng.chance(1, 3) { 1000 } else { 3000 };
            consistent_recorded(&client, st, node, name, timeout_ms);
        } else {
            let start = st.now();
            let acked_at_start = st.acked[name].load(Ordering::SeqCst);
            let url = st.counter_url(node, name, "/value");
            let result = read_result(client.get(&url, REQUEST_TIMEOUT).0, false);
            lock(&st.reads).push(ReadRec {
                node,
                name,
                kind: ReadKind::Value,
                start,
                end: st.now(),
                acked_at_start,
                sent_at_end: st.sent[name].load(Ordering::SeqCst),
                result,
            });
        }
    }
}

/// Samples every node process every `every` (and grows the planted file),
/// and prints a progress line about once a minute.
fn sampler(h: &Harness, st: &State, plant: Plant, steady: usize, every: Duration) {
    let planted = h
        .work
        .join(format!("tally-data/node-{steady}/soak-planted-leak"));
    let mut planted_until = st.secs();
    let mut next = Instant::now();
    let mut next_report = Instant::now() + Duration::from_secs(60);
    while st.running() {
        let t = st.secs();
        if plant.disk {
            // Only into a folder the node made: a wiped node makes its own again.
            let grow = ((t - planted_until) * PLANT_DISK_MIB_H * 1024.0 * 1024.0 / 3600.0) as usize;
            if grow > 0 && planted.parent().is_some_and(|p| p.is_dir()) {
                use std::io::Write;
                let appended = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&planted)
                    .and_then(|mut f| f.write_all(&vec![0x5Au8; grow]));
                if appended.is_ok() {
                    planted_until = t;
                }
            }
        }
        let mut line = Vec::new();
        for node in 1..=NODES {
            let Some(pid) = h.nodes().pid(node) else {
                line.push(format!("n{node} down"));
                continue;
            };
            let folder = h.work.join(format!("tally-data/node-{node}"));
            let Some(mut reading) = sample::read(pid, &folder) else {
                continue;
            };
            if node == steady {
                if plant.rss {
                    reading.rss_kib += (PLANT_RSS_MIB_H * 1024.0 * t / 3600.0) as u64;
                }
                if plant.fds {
                    reading.fds += (PLANT_FDS_H * t / 3600.0) as u64;
                }
            }
            line.push(format!(
                "n{node} rss {:.1}M fds {} store {:.1}M log {:.1}M",
                reading.rss_kib as f64 / 1024.0,
                reading.fds,
                reading.store as f64 / 1048576.0,
                reading.log as f64 / 1048576.0
            ));
            lock(&st.samples).push(Sample {
                node,
                pid,
                at: t,
                reading,
            });
        }
        if Instant::now() >= next_report {
            next_report += Duration::from_secs(60);
            let acked: u64 = lock(&st.writes)
                .iter()
                .filter(|w| w.result == WriteResult::Acked)
                .count() as u64;
            eprintln!(
                "soak: {:>6.0}s {acked} increments acknowledged, {} faults applied; {}",
                st.began.elapsed().as_secs_f64(),
                lock(&st.faults).len(),
                line.join(", ")
            );
        }
        next += every;
        sleep_until(st, next);
    }
}

// ---------------------------------------------------------------------------
// Faults

/// Starts node `id` again on its folder (no config posted) and makes a
/// consistent read the moment it answers.
fn restart(h: &Harness, st: &State, client: &Client, id: usize) -> Result<(), String> {
    let pid = {
        let mut nodes = h.nodes();
        nodes.spawn(id)?;
        nodes.pid(id)
    };
    st.started(id, pid);
    if poll(START_BOUND, || status_json(client, st, id)).is_none() {
        return Err(format!(
            "node {id} did not answer /status within {START_BOUND:?} after a restart"
        ));
    }
    consistent_recorded(client, st, id, id % st.names.len(), 3000);
    Ok(())
}

/// A restarted node knows its config and itself in it again within 5 s
/// (from its folder, or after a wipe from its peers), SPEC G7/G8.
fn expect_config_back(st: &State, client: &Client, id: usize, wiped: bool) {
    let known = poll(Duration::from_secs(5), || {
        status_json(client, st, id).filter(|s| knows_config(s, st, id))
    });
    if known.is_none() {
        st.problem(format!(
            "G7/G8: node {id} restarted{} but does not know its config and itself in it within 5s: {:?}",
            if wiped { " with a wiped folder" } else { " on its folder" },
            status_json(client, st, id).map(|s| (s["self"].clone(), s["config"].clone()))
        ));
    }
}

fn apply(h: &Harness, st: &State, client: &Client, p: &Planned) -> Result<(), String> {
    let label = p.kind.label();
    let begin = st.now();
    eprintln!(
        "soak: {:>8.3}s {label} for {:.1}s",
        st.began.elapsed().as_secs_f64(),
        p.hold.as_secs_f64()
    );
    let others = |i: usize| (1..=NODES).filter(move |&j| j != i).map(move |j| (i, j));
    let mut rec = FaultRec {
        label: label.clone(),
        begin,
        ..FaultRec::default()
    };
    match &p.kind {
        Kind::DiskFull => return disk_full(h, st, client, &label, p.hold),
        Kind::Pause(i) => {
            rec.down = vec![*i];
            h.nodes().pause(*i)?;
            rec.active_from = st.now();
            std::thread::sleep(p.hold);
            rec.active_until = st.now();
            h.nodes().resume(*i)?;
        }
        Kind::Isolate(_) | Kind::CutLink(..) => {
            rec.cuts = match &p.kind {
                Kind::Isolate(i) => others(*i).collect(),
                Kind::CutLink(a, b) => vec![(*a, *b)],
                _ => unreachable!(),
            };
            h.lab.partition(&rec.cuts)?;
            rec.active_from = st.now();
            std::thread::sleep(p.hold);
            rec.active_until = st.now();
            h.lab.heal()?;
        }
        Kind::Kill(i) | Kind::Wipe(i) => {
            let wiped = matches!(p.kind, Kind::Wipe(_));
            rec.down = vec![*i];
            rec.wiped = wiped;
            h.nodes().crash(*i)?;
            if wiped {
                let dir = h.work.join(format!("tally-data/node-{i}"));
                std::fs::remove_dir_all(&dir)
                    .map_err(|e| format!("cannot delete {}: {e}", dir.display()))?;
            }
            rec.active_from = st.now();
            std::thread::sleep(p.hold);
            rec.active_until = st.now();
            restart(h, st, client, *i)?;
            expect_config_back(st, client, *i, wiped);
        }
    }
    rec.end = st.now();
    lock(&st.faults).push(rec);
    Ok(())
}

/// Fills the shared tmpfs, sends every node increments with fresh
/// idempotency keys while it is full (so commits surely meet it), frees
/// it, and measures how long each node takes to acknowledge again (its
/// process unchanged).
fn disk_full(
    h: &Harness,
    st: &State,
    client: &Client,
    label: &str,
    hold: Duration,
) -> Result<(), String> {
    let pids: Vec<Option<u32>> = (1..=NODES).map(|i| h.nodes().pid(i)).collect();
    let begin = st.now();
    let filler = h.work.join("filler");
    let filled = fill(&filler, TMPFS_MIB)?;
    let active_from = st.now();
    eprintln!(
        "soak: {:>8.3}s   wrote {} MiB of filler: the filesystem is full",
        st.began.elapsed().as_secs_f64(),
        filled >> 20
    );
    let until = Instant::now() + hold;
    let fault_no = lock(&st.disk_recoveries).len();
    std::thread::scope(|s| {
        for node in 1..=NODES {
            s.spawn(move || {
                let client = Client::new();
                for k in 0..100_000u32 {
                    if Instant::now() >= until {
                        break;
                    }
                    let key = format!("soak-disk-{fault_no}-n{node}-{k}-{}", "k".repeat(64));
                    increment(
                        st,
                        &client,
                        node,
                        k as usize % st.names.len(),
                        1,
                        Some(&key),
                    );
                    std::thread::sleep(Duration::from_millis(2));
                }
            });
        }
    });
    let active_until = st.now();
    std::fs::remove_file(&filler).map_err(|e| format!("cannot delete the filler: {e}"))?;
    let freed_at = st.now();
    let freed = Instant::now();
    let bound = Duration::from_micros(DISK_RESUME_BOUND) + Duration::from_secs(2);
    let resumed: Vec<(usize, Option<Micros>)> = std::thread::scope(|s| {
        let probes: Vec<_> = (1..=NODES)
            .map(|node| {
                s.spawn(move || {
                    let client = Client::new();
                    let mut k = node;
                    let ok = poll(bound, || {
                        k += 1;
                        matches!(
                            increment(st, &client, node, k % st.names.len(), 1, None),
                            WriteResult::Acked
                        )
                        .then(|| freed.elapsed().as_micros() as Micros)
                    });
                    (node, ok)
                })
            })
            .collect();
        probes
            .into_iter()
            .enumerate()
            .map(|(i, p)| p.join().unwrap_or((i + 1, None)))
            .collect()
    });
    let restarted: Vec<usize> = (1..=NODES)
        .filter(|&i| h.nodes().exited(i).is_some() || h.nodes().pid(i) != pids[i - 1])
        .collect();
    let end = st.now();
    let health: Vec<String> = (1..=NODES)
        .map(|i| {
            let s = status_json(client, st, i);
            format!(
                "n{i} {}",
                s.map_or("no status".to_string(), |s| format!(
                    "errors={} recoveries={}",
                    s["storage"]["errors"], s["storage"]["recoveries"]
                ))
            )
        })
        .collect();
    eprintln!(
        "soak: {:>8.3}s   space back; writes again after {}; storage: {}",
        st.began.elapsed().as_secs_f64(),
        resumed
            .iter()
            .map(|(i, t)| format!(
                "n{i} {}",
                t.map_or("never".to_string(), |t| format!("{:.0}ms", t as f64 / 1e3))
            ))
            .collect::<Vec<_>>()
            .join(", "),
        health.join(", ")
    );
    lock(&st.faults).push(FaultRec {
        label: label.to_string(),
        begin,
        active_from,
        active_until,
        end,
        disk_full: true,
        ..FaultRec::default()
    });
    lock(&st.disk_recoveries).push(DiskRecovery {
        freed_at,
        resumed,
        restarted,
    });
    Ok(())
}

fn faults(h: &Harness, st: &State, schedule: &[Planned]) -> Result<(), String> {
    let client = Client::new();
    for p in schedule {
        sleep_until(st, st.began + p.at);
        if !st.running() {
            break;
        }
        for i in 1..=NODES {
            if let Some(status) = h.nodes().exited(i) {
                return Err(format!("node {i} exited on its own ({status})"));
            }
        }
        apply(h, st, &client, p)?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Judging

/// The chaos checker's bounds as the soak uses them: the nodes run with
/// min-replicas 1, so nothing a wipe took is excused.
pub fn bounds() -> Bounds {
    Bounds {
        excuse_wipes: false,
        ..Bounds::default()
    }
}

/// Increments refused for want of a replica while the shared disk was full
/// (the replicas could not store them either), or shortly after: allowed,
/// and left out of the history the chaos checker judges, which excuses
/// such refusals only for unreachable peers. Returns the writes kept and
/// how many were set aside.
pub fn set_aside_disk_replica_refusals(
    writes: Vec<WriteRec>,
    faults: &[FaultRec],
) -> (Vec<WriteRec>, usize) {
    let full = |s: Micros, e: Micros| {
        faults
            .iter()
            .any(|f| f.disk_full && s <= f.end.saturating_add(REPLICA_GRACE) && e >= f.begin)
    };
    let before = writes.len();
    let kept: Vec<WriteRec> = writes
        .into_iter()
        .filter(|w| match &w.result {
            WriteResult::Rejected(status, body) => {
                !(matches!(classify(*status, body), Refusal::Replicas { .. })
                    && full(w.start, w.end))
            }
            _ => true,
        })
        .collect();
    let set_aside = before - kept.len();
    (kept, set_aside)
}

/// The final values, after convergence: every node's `value` and
/// `consistent_value` of every name in acked..=sent, nothing excused, and
/// one value per name. `seen[name]` holds (node, what, result).
pub fn final_problems(
    labels: &[String],
    acked: &[u64],
    sent: &[u64],
    seen: &[Vec<(usize, &str, ReadResult)>],
) -> Vec<String> {
    let mut out = Vec::new();
    for (k, answers) in seen.iter().enumerate() {
        let mut values = Vec::new();
        for (node, what, result) in answers {
            match result {
                ReadResult::Value(v) if *v >= u128::from(acked[k]) && *v <= u128::from(sent[k]) => {
                    values.push(*v)
                }
                other => out.push(format!(
                    "G1/G2: final {what} of {} on node {node} is {other:?}; it must be 200 with a value in acked..=sent = {}..={}",
                    labels[k], acked[k], sent[k]
                )),
            }
        }
        values.sort_unstable();
        values.dedup();
        if values.len() > 1 {
            out.push(format!(
                "G4: final values of {} differ between nodes or reads: {values:?}",
                labels[k]
            ));
        }
    }
    out
}

fn converge(st: &State) -> Option<Duration> {
    let client = Client::new();
    let healed = Instant::now();
    let mut last = String::new();
    let found = poll(CONVERGE_WAIT, || {
        for name in 0..st.names.len() {
            let acked = u128::from(st.acked[name].load(Ordering::SeqCst));
            let mut values = Vec::new();
            for node in 1..=NODES {
                let url = st.counter_url(node, name, "/value");
                match read_result(client.get(&url, REQUEST_TIMEOUT).0, false) {
                    ReadResult::Value(v) => values.push(v),
                    other => {
                        last = format!("node {node} {}: {other:?}", st.labels[name]);
                        return None;
                    }
                }
            }
            if values.iter().any(|v| *v != values[0] || *v < acked) {
                last = format!("{}: values {values:?}, acked {acked}", st.labels[name]);
                return None;
            }
        }
        Some(healed.elapsed())
    });
    if found.is_none() {
        st.problem(format!(
            "G4: the nodes did not converge within {CONVERGE_WAIT:?} of the final heal; last seen {last}"
        ));
    }
    found
}

fn mib(bytes: u64) -> String {
    format!("{:.1}", bytes as f64 / 1048576.0)
}

/// The resource table of the summary: one row per process lifetime.
fn resource_rows(judged: &[leak::Judged]) -> String {
    let mut out = String::new();
    for j in judged {
        let l = &j.life;
        let (t0, t1) = (
            l.samples.first().map_or(0.0, |s| s.0),
            l.samples.last().map_or(0.0, |s| s.0),
        );
        out.push_str(&format!(
            "  n{} pid {:<7} {} {:>6.0}s, sampled {:>4.0}s..{:<4.0}s ({} samples)\n",
            l.node,
            l.pid,
            if l.after_recovery {
                "storage reopened at"
            } else {
                "started"
            },
            l.started,
            t0,
            t1,
            l.samples.len()
        ));
        for (rule, v) in RULES.iter().zip(&j.verdicts) {
            let row = match v {
                Verdict::NotJudged(why) => {
                    let first = l.samples.first().map_or(0.0, |s| (rule.of)(&s.1));
                    let last = l.samples.last().map_or(0.0, |s| (rule.of)(&s.1));
                    format!("{first:.2} -> {last:.2} {}; not judged: {why}", rule.unit)
                }
                Verdict::Flat(f) | Verdict::Leak(f) => format!(
                    "{:.2} -> {:.2} {u} from {:.0}s to {:.0}s, slope {:+.2} {u}/h (halves {:+.1}, {:+.1}; growth {:+.2} {u}): {}",
                    f.first,
                    f.last,
                    f.from,
                    f.to,
                    f.per_hour,
                    f.halves.0,
                    f.halves.1,
                    f.growth(),
                    if matches!(v, Verdict::Leak(_)) {
                        "LEAK"
                    } else {
                        "flat"
                    },
                    u = rule.unit,
                ),
            };
            out.push_str(&format!("      {:<5} {row}\n", rule.metric));
        }
        let (first_log, last_log) = (
            l.samples.first().map_or(0, |s| s.1.log),
            l.samples.last().map_or(0, |s| s.1.log),
        );
        out.push_str(&format!(
            "      log   {} -> {} MiB, at most {} MiB (bound {} MiB), folded {} time(s)\n",
            mib(first_log),
            mib(last_log),
            mib(j.log_max),
            leak::LOG_BOUND >> 20,
            j.folds
        ));
    }
    out
}

/// Every sample, as CSV under cargo's target/tmp (kept after the run, for
/// a closer look at a curve); returns where, or why not.
fn write_samples(seed: u64, samples: &[Sample]) -> String {
    let path =
        std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("soak-{seed}-samples.csv"));
    let mut text = String::from("node,pid,seconds,rss_kib,fds,store_bytes,log_bytes\n");
    for s in samples {
        let r = &s.reading;
        text.push_str(&format!(
            "{},{},{:.1},{},{},{},{}\n",
            s.node, s.pid, s.at, r.rss_kib, r.fds, r.store, r.log
        ));
    }
    match std::fs::write(&path, text) {
        Ok(()) => path.display().to_string(),
        Err(e) => format!("not written ({}: {e})", path.display()),
    }
}

// ---------------------------------------------------------------------------
// The run

pub fn soak() {
    let params = Params::from_env();
    if let Some(why) = missing_prerequisite(true) {
        panic!("soak cannot run: {why}. Run it as root with ip, nft, tc and mount (`make soak`)");
    }
    let bin = match std::env::var_os("SOAK_BIN").filter(|v| !v.is_empty()) {
        Some(b) => std::fs::canonicalize(&b).unwrap_or_else(|e| panic!("SOAK_BIN={b:?}: {e}")),
        None => node_binary(),
    };
    let mut rng = Rng::new(params.seed);
    let steady = 1 + rng.index(NODES);
    let restart_gap = Duration::from_secs(params.warmup + MIN_SPAN_SECS)
        .min(Duration::from_secs(params.secs / 3));
    let schedule = plan::plan(&mut rng, params.secs, NODES, steady, restart_gap);
    eprintln!(
        "soak: seed={} secs={} rate={}/s sample every {:?}, warm-up {}s, judged spans ≥ {MIN_SPAN_SECS}s, steady node n{steady}, planted leak {:?}\nsoak: node binary {}\nsoak: replay with: {}",
        params.seed,
        params.secs,
        params.rate,
        params.sample_every,
        params.warmup,
        params.plant,
        bin.display(),
        params.replay()
    );
    for p in &schedule {
        eprintln!(
            "soak:   planned at {:>6.1}s: {} for {:.1}s",
            p.at.as_secs_f64(),
            p.kind.label(),
            p.hold.as_secs_f64()
        );
    }
    let setup = Setup {
        nodes: NODES,
        node_env: vec![
            ("TALLY_MIN_REPLICAS".into(), "1".into()),
            ("TALLY_REPLICA_TIMEOUT".into(), "1s".into()),
            ("TALLY_IDEMPOTENCY_KEYS".into(), IDEMPOTENCY_KEYS.into()),
        ],
        tmpfs_mib: Some(TMPFS_MIB),
    };
    let h = Harness::new(&setup, bin.clone())
        .unwrap_or_else(|e| panic!("soak: cannot build the test network: {e}"));
    let ips: Vec<String> = (1..=NODES).map(|i| h.lab.node_ip(i)).collect();
    let names = names();
    let epoch = Instant::now();
    let mut st = State {
        epoch,
        began: epoch,
        deadline: epoch,
        ips: ips.clone(),
        names: names.iter().map(|(n, _)| n.clone()).collect(),
        labels: names.iter().map(|(_, l)| l.clone()).collect(),
        acked: names.iter().map(|_| AtomicU64::new(0)).collect(),
        sent: names.iter().map(|_| AtomicU64::new(0)).collect(),
        stop: AtomicBool::new(false),
        writes: Mutex::new(Vec::new()),
        reads: Mutex::new(Vec::new()),
        faults: Mutex::new(Vec::new()),
        disk_recoveries: Mutex::new(Vec::new()),
        problems: Mutex::new(Vec::new()),
        starts: Mutex::new(Vec::new()),
        samples: Mutex::new(Vec::new()),
    };
    let client = Client::new();

    // Start the nodes, post the config once, wait until the cluster is whole.
    for i in 1..=NODES {
        let pid = {
            let mut nodes = h.nodes();
            nodes.spawn(i).unwrap_or_else(|e| panic!("{e}"));
            nodes.pid(i)
        };
        st.started(i, pid);
    }
    for i in 1..=NODES {
        if poll(START_BOUND, || status_json(&client, &st, i)).is_none() {
            panic!(
                "node {i} did not answer /status within {START_BOUND:?}\n{}",
                h.logs(40)
            );
        }
        let pid = h.nodes().pid(i).expect("just started");
        let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap_or_default();
        assert_eq!(
            exe,
            std::fs::canonicalize(&bin).unwrap_or(bin.clone()),
            "pid {pid} of node {i} is not the node binary; signals and samples would miss it"
        );
    }
    let actors = serde_json::json!({ "actors": ips }).to_string();
    match client
        .post(&st.url(1, "/config"), &actors, Duration::from_secs(5))
        .0
    {
        Outcome::Answer(200, _) => {}
        other => panic!("POST /config to node 1 failed: {other:?}\n{}", h.logs(40)),
    }
    for i in 1..=NODES {
        let ok = poll(Duration::from_secs(10), || {
            status_json(&client, &st, i).filter(|s| knows_config(s, &st, i))?;
            matches!(consistent(&client, &st, i, 0, 3000), ReadResult::Value(_)).then_some(())
        });
        assert!(
            ok.is_some(),
            "node {i} did not learn the config and answer a consistent read within 10s\n{}",
            h.logs(40)
        );
    }

    // The workload, the sampler and the faults, side by side.
    st.began = Instant::now();
    st.deadline = st.began + Duration::from_secs(params.secs);
    eprintln!(
        "soak: cluster of {NODES} up in {:.1}s; {}s of workload from {:.1}s",
        epoch.elapsed().as_secs_f64(),
        params.secs,
        st.secs()
    );
    let st = st;
    let fault_result = std::thread::scope(|s| {
        let every = Duration::from_micros(1_000_000 * WRITERS as u64 / params.rate);
        for _ in 0..WRITERS {
            let r = rng.fork();
            let st = &st;
            s.spawn(move || writer(st, r, every));
        }
        for k in 0..=CONSISTENT_READERS {
            let r = rng.fork();
            let st = &st;
            s.spawn(move || reader(st, r, k > 0));
        }
        let (hr, str_) = (&h, &st);
        s.spawn(move || sampler(hr, str_, params.plant, steady, params.sample_every));
        let result = s.spawn(|| faults(&h, &st, &schedule)).join();
        if !matches!(result, Ok(Ok(()))) {
            st.stop.store(true, Ordering::SeqCst);
        }
        result
    });
    match fault_result {
        Ok(Ok(())) => {}
        Ok(Err(e)) => st.problem(format!("fault injection stopped: {e}")),
        Err(_) => st.problem("the fault thread panicked".into()),
    }
    let workload_end = st.secs();

    // Final heal, convergence, final values.
    if let Err(e) = h.lab.heal() {
        st.problem(format!("the final heal failed: {e}"));
    }
    for i in 1..=NODES {
        if let Some(status) = h.nodes().exited(i) {
            st.problem(format!("node {i} exited on its own ({status})"));
        }
        if h.nodes().running(i) {
            let _ = h.nodes().resume(i);
        } else if let Err(e) = restart(&h, &st, &client, i) {
            st.problem(e);
        }
    }
    let mut final_configs = Vec::new();
    let agreed = poll(Duration::from_secs(10), || {
        final_configs = (1..=NODES)
            .map(|i| {
                (
                    i,
                    status_json(&client, &st, i).and_then(|s| config_view(&s)),
                )
            })
            .collect::<Vec<(usize, Option<ConfigView>)>>();
        let first = final_configs[0].1.clone()?;
        final_configs
            .iter()
            .all(|(_, v)| v.as_ref() == Some(&first))
            .then_some(())
    });
    if agreed.is_none() {
        st.problem(format!(
            "G8: after the final heal the nodes do not report one config: {final_configs:?}"
        ));
    }
    let converged = converge(&st);
    if let Some(t) = converged
        && t > CONVERGE_BOUND
    {
        st.problem(format!(
            "G4: the nodes converged only {:.1}s after the final heal (bound {CONVERGE_BOUND:?})",
            t.as_secs_f64()
        ));
    }
    let acked: Vec<u64> = st.acked.iter().map(|a| a.load(Ordering::SeqCst)).collect();
    let sent: Vec<u64> = st.sent.iter().map(|a| a.load(Ordering::SeqCst)).collect();
    let seen: Vec<Vec<(usize, &str, ReadResult)>> = (0..st.names.len())
        .map(|k| {
            (1..=NODES)
                .flat_map(|node| {
                    let url = st.counter_url(node, k, "/value");
                    let value = read_result(client.get(&url, REQUEST_TIMEOUT).0, false);
                    let cons = consistent(&client, &st, node, k, 3000);
                    [(node, "value", value), (node, "consistent_value", cons)]
                })
                .collect()
        })
        .collect();
    for p in final_problems(&st.labels, &acked, &sent, &seen) {
        st.problem(p);
    }
    let finals: Vec<String> = seen
        .iter()
        .enumerate()
        .map(|(k, answers)| {
            let mut values: Vec<String> = answers
                .iter()
                .map(|(_, _, r)| match r {
                    ReadResult::Value(v) => v.to_string(),
                    other => format!("{other:?}"),
                })
                .collect();
            values.dedup();
            format!(
                "  {:<22} acked={:<8} sent={:<8} final={}",
                st.labels[k],
                acked[k],
                sent[k],
                values.join(",")
            )
        })
        .collect();

    // Judge the history: the chaos checker, with nothing a wipe took excused.
    let faults = std::mem::take(&mut *lock(&st.faults));
    // When the nodes had reopened their storage after each full disk.
    let reopened: Vec<f64> = faults
        .iter()
        .filter(|f| f.disk_full)
        .map(|f| f.end as f64 / 1e6)
        .collect();
    let (writes, disk_replica_refusals) =
        set_aside_disk_replica_refusals(std::mem::take(&mut *lock(&st.writes)), &faults);
    let reads = std::mem::take(&mut *lock(&st.reads));
    let consistent_lat = |want: fn(&ReadResult) -> bool| {
        Latency::of(
            reads
                .iter()
                .filter(|r| matches!(r.kind, ReadKind::Consistent { .. }) && want(&r.result))
                .map(|r| r.end - r.start)
                .collect(),
        )
    };
    let lat_200 = consistent_lat(|r| matches!(r, ReadResult::Value(_)));
    let lat_503 = consistent_lat(|r| matches!(r, ReadResult::Unavailable { .. }));
    // On nodes that were running throughout (G5 binds only those).
    let beyond_deadline = reads
        .iter()
        .filter(|r| {
            !faults
                .iter()
                .any(|f| f.down.contains(&r.node) && r.start <= f.end && r.end >= f.begin)
        })
        .filter_map(|r| match (r.kind, &r.result) {
            (
                ReadKind::Consistent { timeout_ms },
                ReadResult::Value(_) | ReadResult::Unavailable { .. },
            ) => Some((r.end - r.start) as i64 / 1000 - timeout_ms as i64),
            _ => None,
        })
        .max();
    let history = History {
        writes,
        reads,
        faults,
        disk_recoveries: std::mem::take(&mut *lock(&st.disk_recoveries)),
        final_configs,
        ..History::default()
    };
    let bounds = bounds();
    let report = check(&history, &ips, &st.labels, &bounds);
    let stats = &report.stats;

    // Judge resource use, from the samples taken during the workload.
    let samples: Vec<Sample> = lock(&st.samples)
        .iter()
        .filter(|s| s.at <= workload_end)
        .cloned()
        .collect();
    let starts = lock(&st.starts).clone();
    let lives = leak::lifetimes(&samples, &starts, &reopened);
    let csv = write_samples(params.seed, &samples);
    let (judged, leaks) = leak::judge_all(&lives, params.warmup as f64, MIN_SPAN_SECS as f64);

    let mut violations: Vec<String> = lock(&st.problems).clone();
    violations.extend(report.violations.iter().cloned());
    violations.extend(leaks);
    if history.faults.len() < schedule.len() {
        violations.push(format!(
            "only {} of the {} planned faults were applied",
            history.faults.len(),
            schedule.len()
        ));
    }
    if stats.acked == 0 || stats.consistent_ok == 0 {
        violations.push(
            "the workload made no progress (no acked increment or no consistent read)".into(),
        );
    }
    let ms = |t: Option<Duration>| {
        t.map_or("never".into(), |t| {
            format!("{:.0}ms", t.as_secs_f64() * 1e3)
        })
    };
    let thresholds: Vec<String> = RULES
        .iter()
        .map(|r| {
            format!(
                "{} > {} {u}/h and > {} {u} over the span",
                r.metric,
                r.per_hour,
                r.min_growth,
                u = r.unit
            )
        })
        .collect();
    let summary = format!(
        "\n===== tally soak summary (seed {}, {NODES} nodes, {}s, {} increments/s asked, min-replicas 1, planted leak {:?}) =====\n\
         requests: {} increments, {} value reads, {} consistent reads\n\
         increments: {} acknowledged, {} refused ({} by full storage, {} short of a replica, {} more short of a replica while the disk was full, {} without a config after a wipe), {} uncertain (no answer: paused, killed or wiped nodes)\n\
         faults applied: {} {:?}\n\
         full disks: {}\n\
         consistent reads: {} answered 200, {} answered 503, {} no answer\n\
         consistent read latency: 200 {}; 503 {}; slowest answer on a running node {} ms past its timeout (allowed: {} ms)\n\
         increment latency (running nodes): {}\n\
         value latency (running nodes):     {}\n\
         after the final heal: converged in {}\n\
         final counters (every node's value and consistent_value):\n{}\n\
         samples: {}\n\
         resources (warm-up {}s after each start and storage recovery; judged with ≥ {MIN_SPAN_SECS}s left; leak when {}, and half of both in each half of the span; resident ≤ {} MiB; log ≤ {} MiB):\n{}\
         violations: {}\n",
        params.seed,
        params.secs,
        params.rate,
        params.plant,
        stats.writes + disk_replica_refusals,
        stats.value_reads,
        stats.consistent_reads,
        stats.acked,
        stats.rejected + disk_replica_refusals,
        stats.refused_storage,
        stats.refused_replicas,
        disk_replica_refusals,
        stats.refused_no_config,
        stats.uncertain,
        history.faults.len(),
        stats.faults,
        history
            .disk_recoveries
            .iter()
            .map(|d| format!(
                "space back at {:.0}s, every node wrote again within {}",
                d.freed_at as f64 / 1e6,
                d.resumed
                    .iter()
                    .map(|(_, t)| *t)
                    .try_fold(0, |m, t| t.map(|t| t.max(m)))
                    .map_or("never".to_string(), |t| format!("{:.0}ms", t as f64 / 1e3))
            ))
            .collect::<Vec<_>>()
            .join("; "),
        stats.consistent_ok,
        stats.consistent_503,
        stats.consistent_failed,
        lat_200,
        lat_503,
        beyond_deadline.map_or("n/a".into(), |m| m.to_string()),
        bounds.consistent_slack_ms,
        stats.write_all,
        stats.value_all,
        ms(converged),
        finals.join("\n"),
        csv,
        params.warmup,
        thresholds.join(", "),
        leak::RSS_CEILING_MIB,
        leak::LOG_BOUND >> 20,
        resource_rows(&judged),
        violations.len(),
    );
    eprintln!("{summary}");
    if !violations.is_empty() {
        eprintln!("{}", h.logs(30));
        let shown: Vec<&String> = violations.iter().take(30).collect();
        panic!(
            "soak: {} violation(s):\n  {}\n{}seed {}; replay with:\n  {}",
            violations.len(),
            shown
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join("\n  "),
            if violations.len() > 30 {
                format!("  ... and {} more\n", violations.len() - 30)
            } else {
                String::new()
            },
            params.seed,
            params.replay()
        );
    }
}
