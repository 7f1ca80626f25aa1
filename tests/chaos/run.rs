//! The chaos run: builds the network, starts the nodes, runs the workload
//! and the fault schedule side by side, heals, measures recovery, and hands
//! the history to the checker.

use std::collections::VecDeque;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::check::{
    Bounds, ConfigChange, ConfigView, DISK_RESUME_BOUND, DiskRecovery, FaultRec, History, Micros,
    ReadKind, ReadRec, ReadResult, WriteRec, WriteResult, check, excused, wipe_excuses,
};
use super::client::{Client, Outcome, encode_segment, parse_value, read_result};
use super::harness::{
    Harness, Setup, cannot_run, env_flag, fill, missing_prerequisite, node_binary, serial,
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
/// Bound on every running node reporting the same config after a
/// membership change healed, and after the final heal.
const CONFIG_SETTLE_BOUND: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------
// Parameters and prerequisites

/// The configurations of the chaos run, one test each.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Profile {
    /// `chaos_real_network`: 5 processes, a 3-node config to start with,
    /// membership changes and a full disk among the faults; the strict
    /// checker (wipes only with TALLY_CHAOS_WIPE, and then excused).
    Default,
    /// `chaos_min_replicas_wipes`: 3 nodes with TALLY_MIN_REPLICAS=1, wipes
    /// on (one of them right after the node was cut off), and no excuse for
    /// anything a wipe takes.
    Replicas,
    /// `chaos_rolling_upgrade`: 3 nodes started from an older tally (see
    /// `upgrade_from`), upgraded one by one to this build under the
    /// workload and plain faults, one rolled back to the older binary and
    /// upgraded again; the strict checker.
    Upgrade,
}

impl Profile {
    fn test_name(self) -> &'static str {
        match self {
            Profile::Default => "chaos_real_network",
            Profile::Replicas => "chaos_min_replicas_wipes",
            Profile::Upgrade => "chaos_rolling_upgrade",
        }
    }
}

pub struct Params {
    pub profile: Profile,
    pub seed: u64,
    /// Node processes started.
    pub nodes: usize,
    pub secs: u64,
    pub ci: bool,
    pub wipe: bool,
    /// Membership changes among the faults; the first config then names
    /// all nodes but the last two.
    pub membership: bool,
    /// The full-disk fault (the shared working folder on a tmpfs).
    pub disk: bool,
    /// TALLY_MIN_REPLICAS of every node (0: not set).
    pub min_replicas: usize,
}

/// A flag that is on unless set to 0/false (`default` when unset).
fn env_on(key: &str, default: bool) -> bool {
    match std::env::var(key) {
        Ok(v) => !(v.is_empty() || v == "0" || v.eq_ignore_ascii_case("false")),
        Err(_) => default,
    }
}

/// Size of the tmpfs the shared working folder lives on when the disk fault is on.
pub const TMPFS_MIB: u64 = 64;
/// The replica deadline of the nodes in the min-replicas run: shorter than
/// the client's deadline, so an increment that cannot reach a replica is
/// answered (503) rather than left hanging.
const REPLICA_TIMEOUT: &str = "1s";

impl Params {
    pub fn from_env(profile: Profile) -> Params {
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
        let (default_nodes, default_secs) = match profile {
            Profile::Default => (5, 60),
            Profile::Replicas => (3, 30),
            Profile::Upgrade => (3, 60),
        };
        let nodes = match std::env::var("TALLY_CHAOS_NODES") {
            Ok(raw) => raw
                .trim()
                .parse::<usize>()
                .ok()
                .filter(|n| (1..=20).contains(n))
                .unwrap_or_else(|| panic!("TALLY_CHAOS_NODES={raw:?} is not a number in 1..=20")),
            Err(_) => default_nodes,
        };
        let secs = match std::env::var("TALLY_CHAOS_SECS") {
            Ok(raw) => raw
                .trim()
                .parse::<u64>()
                .ok()
                .filter(|s| *s >= 5)
                .unwrap_or_else(|| panic!("TALLY_CHAOS_SECS={raw:?} is not a number ≥ 5")),
            Err(_) => default_secs,
        };
        match profile {
            Profile::Default => Params {
                profile,
                seed,
                nodes,
                secs,
                ci: env_flag("CI"),
                wipe: env_flag("TALLY_CHAOS_WIPE"),
                membership: nodes >= 4 && env_on("TALLY_CHAOS_MEMBERSHIP", true),
                disk: env_on("TALLY_CHAOS_DISK", true),
                min_replicas: 0,
            },
            Profile::Replicas => {
                assert!(
                    nodes >= 2,
                    "the min-replicas run needs at least 2 nodes (TALLY_CHAOS_NODES={nodes})"
                );
                Params {
                    profile,
                    seed,
                    nodes,
                    secs,
                    ci: env_flag("CI"),
                    wipe: true,
                    membership: false,
                    disk: false,
                    min_replicas: 1,
                }
            }
            Profile::Upgrade => Params {
                profile,
                seed,
                nodes,
                secs,
                ci: env_flag("CI"),
                wipe: false,
                membership: false,
                disk: env_on("TALLY_CHAOS_DISK", true),
                min_replicas: 0,
            },
        }
    }

    /// The actors of the config posted at the start (1-based).
    pub fn initial_actors(&self) -> Vec<usize> {
        let k = if self.membership {
            self.nodes - 2
        } else {
            self.nodes
        };
        (1..=k).collect()
    }

    /// Increments a wipe took with it are excused unless nodes wait for replicas.
    pub fn excuse_wipes(&self) -> bool {
        self.min_replicas == 0
    }

    pub fn replay(&self) -> String {
        let mut flags = String::new();
        if self.profile != Profile::Replicas {
            if self.wipe {
                flags.push_str(" TALLY_CHAOS_WIPE=1");
            }
            if !self.membership && self.nodes >= 4 {
                flags.push_str(" TALLY_CHAOS_MEMBERSHIP=0");
            }
            if !self.disk {
                flags.push_str(" TALLY_CHAOS_DISK=0");
            }
        }
        if let Some(only) = only_kinds() {
            flags.push_str(&format!(" TALLY_CHAOS_ONLY={}", only.join(",")));
        }
        format!(
            "TALLY_CHAOS_SEED={} TALLY_CHAOS_NODES={} TALLY_CHAOS_SECS={}{flags} cargo test --release --test chaos {} -- --nocapture",
            self.seed,
            self.nodes,
            self.secs,
            self.profile.test_name()
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
    /// Whether increments a wipe took with it are excused (not with min-replicas).
    excuse_wipes: bool,
    /// Membership changes and the full disk among the faults.
    membership: bool,
    disk: bool,
    /// Nodes clients send requests to (bit i-1 for node i): those named by
    /// a config whose post was answered. Nodes never named by one have no
    /// config; the deployment contract posts one before any other request.
    enrolled: AtomicU64,
    /// Nodes known to hold a config (they reported one at a settle check):
    /// a restart must bring it back.
    configured: AtomicU64,
    /// The actors of the config the nodes last agreed on.
    current: Mutex<Vec<usize>>,
    initial_actors: Vec<usize>,
    changes: Mutex<Vec<ConfigChange>>,
    disk_recoveries: Mutex<Vec<DiskRecovery>>,
    final_configs: Mutex<Vec<(usize, Option<ConfigView>)>>,
    /// The rolling upgrade of `Profile::Upgrade`.
    upgrade: Option<Upgrade>,
}

/// A rolling upgrade: every node starts from `old`; the steps move one
/// node at a time to `new` (or back to `old`).
struct Upgrade {
    old: PathBuf,
    new: PathBuf,
    /// The steps not yet taken, in order: (node, back to the old binary).
    steps: Mutex<VecDeque<(usize, bool)>>,
}

impl Upgrade {
    /// Upgrade two nodes, roll the first back while the second runs the new
    /// binary and the third the old, then upgrade it again and the third:
    /// every mix of versions serves, and the run ends on the new one.
    fn plan(old: PathBuf, new: PathBuf, rng: &mut Rng, n: usize) -> Upgrade {
        let order: Vec<usize> = rng.subset(n, n).into_iter().map(|i| i + 1).collect();
        let mut steps: VecDeque<(usize, bool)> = VecDeque::new();
        steps.push_back((order[0], false));
        if n >= 2 {
            steps.push_back((order[1], false));
        }
        steps.push_back((order[0], true));
        steps.push_back((order[0], false));
        for &i in order.iter().skip(2) {
            steps.push_back((i, false));
        }
        Upgrade {
            old,
            new,
            steps: Mutex::new(steps),
        }
    }
}

fn bits(nodes: &[usize]) -> u64 {
    nodes.iter().fold(0, |acc, i| acc | (1 << (i - 1)))
}

fn nodes_of(mask: u64, n: usize) -> Vec<usize> {
    (1..=n).filter(|i| mask & (1 << (i - 1)) != 0).collect()
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

    fn enrolled(&self) -> Vec<usize> {
        nodes_of(self.enrolled.load(Ordering::SeqCst), self.ips.len())
    }

    fn configured(&self) -> Vec<usize> {
        nodes_of(self.configured.load(Ordering::SeqCst), self.ips.len())
    }

    /// A random node clients may use.
    fn pick_node(&self, rng: &mut Rng) -> usize {
        let enrolled = self.enrolled();
        if enrolled.is_empty() {
            return 1;
        }
        enrolled[rng.index(enrolled.len())]
    }

    /// Node number of an actor address (`ip:7777`), if it is one of ours.
    fn node_of(&self, actor: &str) -> Option<usize> {
        self.ips
            .iter()
            .position(|ip| actor == format!("{ip}:7777") || actor == ip)
            .map(|i| i + 1)
    }

    fn actors_json(&self, nodes: &[usize]) -> String {
        let list: Vec<&String> = nodes.iter().map(|&i| &self.ips[i - 1]).collect();
        serde_json::json!({ "actors": list }).to_string()
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
/// acknowledged sum, less what wiped nodes may have taken with them (when
/// that is excused).
fn owed(world: &World) -> Vec<u64> {
    let faults = lock(&world.faults).clone();
    let acked = |k: usize| world.acked[k].load(Ordering::SeqCst);
    if !world.excuse_wipes || !faults.iter().any(|f| f.wiped) {
        return (0..world.names.len()).map(acked).collect();
    }
    let h = History {
        writes: lock(&world.writes).clone(),
        faults,
        ..History::default()
    };
    let excuses = wipe_excuses(&h, world.names.len(), true);
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

/// Whether node `node` holds a config and knows which actor it is (SPEC G7,
/// G8: a restart brings both back without a re-post).
fn knows_config(status: &serde_json::Value, world: &World, node: usize) -> bool {
    let me = format!("{}:7777", world.ips[node - 1]);
    status["config"]["version"].as_u64().unwrap_or(0) > 0
        && status["self"].as_str() == Some(me.as_str())
}

/// What a node's `/status` says of its config.
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

/// Polls every node in `nodes` until all report the same config (set);
/// returns each one's last view, and whether they agreed.
fn await_one_config(
    client: &Client,
    world: &World,
    nodes: &[usize],
    bound: Duration,
) -> (Vec<(usize, Option<ConfigView>)>, bool) {
    let mut last = Vec::new();
    let agreed = poll(bound, || {
        last = nodes
            .iter()
            .map(|&i| {
                (
                    i,
                    status_json(client, world, i).and_then(|s| config_view(&s)),
                )
            })
            .collect::<Vec<_>>();
        let first = last.first()?.1.clone()?;
        let same = first.0 > 0 && last.iter().all(|(_, v)| v.as_ref() == Some(&first));
        same.then_some(())
    })
    .is_some();
    (last, agreed)
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

// ---------------------------------------------------------------------------
// Workload

/// Sends one increment and records it (sent before, acknowledged on 200).
fn increment(world: &World, client: &Client, node: usize, name: usize, amount: u64) -> WriteResult {
    increment_keyed(world, client, node, name, amount, None)
}

/// [`increment`] with an optional `Idempotency-Key` (each key used once).
fn increment_keyed(
    world: &World,
    client: &Client,
    node: usize,
    name: usize,
    amount: u64,
    key: Option<&str>,
) -> WriteResult {
    world.sent[name].fetch_add(amount, Ordering::SeqCst);
    let start = world.now();
    let (outcome, _) = client.post_keyed(
        &world.counter_url(node, name, ""),
        &amount.to_string(),
        key,
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
        result: result.clone(),
    });
    result
}

fn writer(world: &World, mut rng: Rng) {
    let client = Client::new();
    for _ in 0..10_000_000u64 {
        if !world.running() {
            break;
        }
        let node = world.pick_node(&mut rng);
        let name = rng.index(world.names.len());
        let amount = rng.range(1, 10);
        increment(world, &client, node, name, amount);
        std::thread::sleep(Duration::from_millis(rng.range(0, 8)));
    }
}

fn reader(world: &World, mut rng: Rng, kind_consistent: bool) {
    let client = Client::new();
    for _ in 0..10_000_000u64 {
        if !world.running() {
            break;
        }
        let node = world.pick_node(&mut rng);
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
    /// Cut off (acknowledging alone, or trying to), then wiped and
    /// restarted while still cut off, then healed.
    IsolateWipe(usize),
    Delay(usize),
    /// Configs posted while a partition holds (see [`MembershipPlan`]).
    Membership(MembershipPlan),
    /// The shared working folder's filesystem filled up, then freed.
    DiskFull,
}

/// A membership change under a partition: `posts` are (node the config is
/// posted to, actors of the config); one post grows or shrinks the config,
/// two on opposite sides of the partition conflict.
#[derive(Debug)]
struct MembershipPlan {
    kind: &'static str,
    sides: (Vec<usize>, Vec<usize>),
    posts: Vec<(usize, Vec<usize>)>,
}

/// The names of the fault kinds, by their number in [`Fault::pick`], as
/// `TALLY_CHAOS_ONLY` takes them.
const KIND_NAMES: [&str; 10] = [
    "pause",
    "isolate",
    "cut-link",
    "crash",
    "delay",
    "wipe",
    "split",
    "isolate-wipe",
    "membership",
    "disk-full",
];

/// `TALLY_CHAOS_ONLY=kind,kind`: only these fault kinds (to replay or
/// study one of them).
fn only_kinds() -> Option<Vec<String>> {
    let raw = std::env::var("TALLY_CHAOS_ONLY").ok()?;
    let list: Vec<String> = raw
        .split(',')
        .map(|k| k.trim().to_string())
        .filter(|k| !k.is_empty())
        .collect();
    for k in &list {
        assert!(
            KIND_NAMES.contains(&k.as_str()),
            "TALLY_CHAOS_ONLY: unknown fault kind {k:?} (kinds: {KIND_NAMES:?})"
        );
    }
    (!list.is_empty()).then_some(list)
}

/// What the fault picker needs to know of the run.
struct PickCtx {
    only: Option<Vec<String>>,
    n: usize,
    wipe: bool,
    membership: bool,
    /// Every third fault of a run with membership changes is one.
    membership_turn: bool,
    disk: bool,
    /// Actors of the config the nodes last agreed on.
    current: Vec<usize>,
}

impl Fault {
    fn pick(rng: &mut Rng, ctx: &PickCtx) -> Fault {
        let n = ctx.n;
        let node = |rng: &mut Rng| 1 + rng.index(n);
        let allowed = |kind: &str| {
            ctx.only
                .as_ref()
                .is_none_or(|o| o.iter().any(|k| k == kind))
        };
        if ctx.membership_turn && allowed("membership") {
            // A few tries: the partition drawn may leave a side without an actor.
            for _ in 0..5 {
                if let Some(plan) = membership_plan(rng, ctx) {
                    return Fault::Membership(plan);
                }
            }
        }
        let mut kinds = vec![0, 3, 4];
        if n >= 2 {
            kinds.push(1);
        }
        if n >= 3 {
            kinds.push(2);
        }
        if ctx.wipe {
            kinds.push(5);
            if n >= 2 {
                kinds.push(7);
            }
        }
        if n >= 4 {
            kinds.push(6);
        }
        if ctx.membership {
            kinds.push(8);
        }
        if ctx.disk {
            kinds.push(9);
        }
        if let Some(only) = &ctx.only {
            kinds.retain(|k| only.iter().any(|name| KIND_NAMES[*k] == name));
            assert!(
                !kinds.is_empty(),
                "TALLY_CHAOS_ONLY={only:?} names no fault this run can apply (kinds: {KIND_NAMES:?})"
            );
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
                let (a, b) = halves(rng, n);
                Fault::Split(a, b)
            }
            7 => Fault::IsolateWipe(node(rng)),
            8 => match membership_plan(rng, ctx) {
                Some(plan) => Fault::Membership(plan),
                None => Fault::Pause(node(rng)),
            },
            9 => Fault::DiskFull,
            _ => Fault::Pause(node(rng)),
        }
    }

    fn cuts(&self, n: usize) -> Vec<(usize, usize)> {
        let isolate = |i: usize| (1..=n).filter(|j| *j != i).map(|j| (i, j)).collect();
        let split = |a: &[usize], b: &[usize]| {
            a.iter()
                .flat_map(|x| b.iter().map(move |y| (*x, *y)))
                .collect()
        };
        match self {
            Fault::Isolate(i) | Fault::IsolateWipe(i) => isolate(*i),
            Fault::Split(a, b) => split(a, b),
            Fault::Membership(plan) => split(&plan.sides.0, &plan.sides.1),
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
            Fault::IsolateWipe(i) => {
                format!("isolate-wipe n{i} (cut off, then wiped and restarted while cut off)")
            }
            Fault::Delay(i) => match mode {
                DelayMode::Netem => format!("delay n{i} (netem 50ms±20ms)"),
                DelayMode::TbfFallback => format!("delay n{i} (tbf fallback, no netem)"),
            },
            Fault::Membership(plan) => {
                let posts: Vec<String> = plan
                    .posts
                    .iter()
                    .map(|(to, actors)| format!("{actors:?} to n{to}"))
                    .collect();
                format!(
                    "{} under split {:?}|{:?}: {}",
                    plan.kind,
                    plan.sides.0,
                    plan.sides.1,
                    posts.join(" and ")
                )
            }
            Fault::DiskFull => format!("disk-full (the shared {TMPFS_MIB} MiB tmpfs filled up)"),
        }
    }
}

/// Random halves of the nodes (the first has n/2 of them).
fn halves(rng: &mut Rng, n: usize) -> (Vec<usize>, Vec<usize>) {
    let a: Vec<usize> = rng.subset(n, n / 2).into_iter().map(|i| i + 1).collect();
    let b: Vec<usize> = (1..=n).filter(|i| !a.contains(i)).collect();
    (a, b)
}

/// A membership change from the current config: a grow to every node (when
/// some are out), a shrink to n-2 random nodes (when all are in), or, a
/// third of the time, two different configs posted on the two sides of the
/// partition. Configs are posted to actors of the current config; `None`
/// when the partition drawn leaves a side without one.
fn membership_plan(rng: &mut Rng, ctx: &PickCtx) -> Option<MembershipPlan> {
    let n = ctx.n;
    let current = &ctx.current;
    let conflict = rng.chance(1, 3);
    let sides = if rng.chance(1, 2) {
        halves(rng, n)
    } else {
        let x = 1 + rng.index(n);
        (vec![x], (1..=n).filter(|&i| i != x).collect())
    };
    let on = |side: &[usize], rng: &mut Rng| {
        let candidates: Vec<usize> = side
            .iter()
            .copied()
            .filter(|i| current.contains(i))
            .collect();
        (!candidates.is_empty()).then(|| candidates[rng.index(candidates.len())])
    };
    // A random config of n-2..=n actors, different from `current` and `other`.
    let fresh = |rng: &mut Rng, other: &[usize]| {
        for _ in 0..50 {
            let k = rng.range((n - 2) as u64, n as u64) as usize;
            let c: Vec<usize> = rng.subset(n, k).into_iter().map(|i| i + 1).collect();
            if c != *current && c != other {
                return Some(c);
            }
        }
        None
    };
    if conflict {
        let a = on(&sides.0, rng)?;
        let b = on(&sides.1, rng)?;
        let x = fresh(rng, &[])?;
        let y = fresh(rng, &x)?;
        return Some(MembershipPlan {
            kind: "conflicting-configs",
            sides,
            posts: vec![(a, x), (b, y)],
        });
    }
    let side = if rng.chance(1, 2) { &sides.0 } else { &sides.1 };
    let to = on(side, rng)?;
    let (kind, actors) = if current.len() < n {
        ("grow", (1..=n).collect())
    } else {
        let k = n - 2;
        let c: Vec<usize> = rng.subset(n, k).into_iter().map(|i| i + 1).collect();
        ("shrink", c)
    };
    Some(MembershipPlan {
        kind,
        sides,
        posts: vec![(to, actors)],
    })
}

/// Restarts node `id` with the same id and folder, without posting config,
/// and makes a consistent read on it the moment it answers.
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
    Ok(())
}

/// A restarted node that held a config knows it again, and itself in it,
/// within 5 s (from its folder, or, after a wipe, from its peers), G7/G8.
/// A node nobody will tell (never configured, or wiped while outside the
/// config) is not expected to.
fn expect_config_back(world: &World, client: &Client, id: usize, wiped: bool) {
    if !world.configured().contains(&id) {
        return;
    }
    if wiped && !lock(&world.current).contains(&id) {
        return;
    }
    let known = poll(Duration::from_secs(5), || {
        status_json(client, world, id).filter(|s| knows_config(s, world, id))
    });
    if known.is_none() {
        world.problem(format!(
            "G7/G8: node {id} restarted{} but does not know a config and itself in it within 5s: {:?}",
            if wiped {
                " with a wiped folder"
            } else {
                " from its folder"
            },
            status_json(client, world, id).map(|s| (s["self"].clone(), s["config"].clone()))
        ));
    }
}

fn record(world: &World, f: FaultRec) {
    lock(&world.faults).push(f);
}

fn faults(h: &Harness, world: &World, mut rng: Rng) -> Result<(), String> {
    let client = Client::new();
    let n = world.ips.len();
    let mode = h.lab.delay_mode;
    for slot in 0..100_000u32 {
        if !world.running() {
            break;
        }
        for i in 1..=n {
            if let Some(status) = h.nodes().exited(i) {
                return Err(format!("node {i} exited on its own ({status})"));
            }
        }
        // Every other slot, from the first, is the next step of a rolling
        // upgrade: versions mix under the faults between them.
        if let Some(up) = &world.upgrade
            && slot % 2 == 0
        {
            let next = lock(&up.steps).front().copied();
            if let Some((id, back)) = next {
                let finish_by = world.deadline.checked_sub(FINAL_HOLD);
                if finish_by.is_none_or(|t| Instant::now() + START_BOUND / 2 > t) {
                    break;
                }
                upgrade_step(h, world, &client, up, id, back)?;
                lock(&up.steps).pop_front();
                std::thread::sleep(Duration::from_millis(rng.range(300, 1500)));
                continue;
            }
        }
        let ctx = PickCtx {
            only: only_kinds(),
            n,
            wipe: world.wipe,
            membership: world.membership,
            membership_turn: world.membership && slot % 3 == 1,
            disk: world.disk,
            current: lock(&world.current).clone(),
        };
        let fault = Fault::pick(&mut rng, &ctx);
        let hold = Duration::from_millis(rng.range(1000, 4000));
        let gap = Duration::from_millis(rng.range(300, 1500));
        // Room for what follows the hold: a membership change waits for the
        // config to settle, a full disk for every node to write again.
        let tail = match fault {
            Fault::Membership(_) => CONFIG_SETTLE_BOUND,
            Fault::DiskFull => Duration::from_micros(DISK_RESUME_BOUND),
            _ => Duration::ZERO,
        };
        let finish_by = world.deadline.checked_sub(FINAL_HOLD);
        if finish_by.is_none_or(|t| Instant::now() + hold + gap + tail / 2 > t) {
            break;
        }
        let label = fault.label(mode);
        let cuts = fault.cuts(n);
        let begin = world.now();
        eprintln!(
            "chaos: {:>8.3}s {label} for {:.1}s",
            begin as f64 / 1e6,
            hold.as_secs_f64()
        );
        match &fault {
            Fault::Membership(plan) => {
                membership_change(h, world, &client, plan, &label, &cuts, hold)?
            }
            Fault::DiskFull => disk_full(h, world, &client, &label, hold)?,
            Fault::IsolateWipe(i) => isolate_wipe(h, world, &client, *i, &label, &cuts, hold)?,
            _ => plain_fault(h, world, &client, &mut rng, &fault, &label, &cuts, hold)?,
        }
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
            ..FaultRec::default()
        });
    }
    Ok(())
}

/// Partitions, pauses, crashes, wipes and delays: applied, held (a third of
/// the partitions with a pause or crash nested in their middle), healed.
#[allow(clippy::too_many_arguments)]
fn plain_fault(
    h: &Harness,
    world: &World,
    client: &Client,
    rng: &mut Rng,
    fault: &Fault,
    label: &str,
    cuts: &[(usize, usize)],
    hold: Duration,
) -> Result<(), String> {
    let n = world.ips.len();
    let mode = h.lab.delay_mode;
    let mut down = Vec::new();
    let mut degraded = Vec::new();
    let begin = world.now();
    match fault {
        Fault::Isolate(_) | Fault::Split(..) | Fault::CutLink(..) => h.lab.partition(cuts)?,
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
            wipe_folder(h, *i)?;
        }
        Fault::Delay(i) => {
            if mode == DelayMode::TbfFallback {
                degraded.push(*i);
            }
            h.lab.delay(*i)?;
        }
        other => return Err(format!("not a plain fault: {other:?}")),
    }
    let active_from = world.now();
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
            restart(h, world, client, victim)?;
            expect_config_back(world, client, victim, false);
        } else {
            h.nodes().resume(victim)?;
        }
        record(
            world,
            FaultRec {
                label: inner_label,
                begin: inner_begin,
                active_from: inner_from,
                active_until: inner_until,
                end: world.now(),
                down: vec![victim],
                ..FaultRec::default()
            },
        );
        std::thread::sleep(hold.saturating_sub(third * 2));
    } else {
        std::thread::sleep(hold);
    }
    let active_until = world.now();
    match fault {
        Fault::Pause(i) => h.nodes().resume(*i)?,
        Fault::Crash(i) | Fault::Wipe(i) => {
            restart(h, world, client, *i)?;
            expect_config_back(world, client, *i, matches!(fault, Fault::Wipe(_)));
        }
        _ => h.lab.heal()?,
    }
    record(
        world,
        FaultRec {
            label: label.to_string(),
            begin,
            active_from,
            active_until,
            end: world.now(),
            cuts: cuts.to_vec(),
            down,
            degraded,
            wiped: matches!(fault, Fault::Wipe(_)),
            disk_full: false,
        },
    );
    Ok(())
}

/// Bound on a node exiting after SIGTERM (G6: shutdown is bounded too).
const STOP_BOUND: Duration = Duration::from_secs(20);
/// Bound on a consistent read answering 200 on every node after an upgrade
/// step, the network whole.
const MIXED_READ_BOUND: Duration = Duration::from_secs(10);

/// One step of a rolling upgrade: node `id` stopped as an operator stops
/// it (SIGTERM), then started on its folder from the other binary.
fn upgrade_step(
    h: &Harness,
    world: &World,
    client: &Client,
    up: &Upgrade,
    id: usize,
    back: bool,
) -> Result<(), String> {
    let (bin, label) = if back {
        (&up.old, format!("roll back n{id} to the older build"))
    } else {
        (&up.new, format!("upgrade n{id} to this build"))
    };
    let begin = world.now();
    eprintln!("chaos: {:>8.3}s {label}", begin as f64 / 1e6);
    if let Err(e) = h.nodes().stop(id, STOP_BOUND) {
        world.problem(format!("G6: stopping n{id} for the {label}: {e}"));
    }
    let active_from = world.now();
    h.nodes().set_binary(id, bin.clone());
    let active_until = world.now();
    restart(h, world, client, id)?;
    check_exe(h, id)?;
    expect_config_back(world, client, id, false);
    // The network is whole and every node runs: whatever mix of versions
    // this step made must serve consistent reads on every node (G5), which
    // needs each node to understand every other.
    for i in 1..=world.ips.len() {
        let mut last = None;
        let served = poll(MIXED_READ_BOUND, || {
            let r = consistent(client, world, i, 0, 3000);
            let ok = matches!(r, ReadResult::Value(_));
            last = Some(r);
            ok.then_some(())
        });
        if served.is_none() {
            world.problem(format!(
                "G5: after the step \"{label}\", the network whole, a consistent read on n{i} did not answer 200 within {MIXED_READ_BOUND:?}: last {last:?}"
            ));
        }
    }
    record(
        world,
        FaultRec {
            label,
            begin,
            active_from,
            active_until,
            end: world.now(),
            down: vec![id],
            ..FaultRec::default()
        },
    );
    Ok(())
}

/// Once every node runs this build, each calls every peer in the newest
/// protocol (3), within the time a node waits before it tries 3 again on a
/// peer that did not know it: the upgrade really moved the cluster to it.
fn expect_newest_protocol(client: &Client, world: &World) {
    let n = world.ips.len();
    let protocols = |i: usize| -> Option<Vec<(String, serde_json::Value)>> {
        let status = status_json(client, world, i)?;
        let peers = status["peers"].as_array()?;
        Some(
            peers
                .iter()
                .map(|p| {
                    (
                        p["actor"].as_str().unwrap_or("").to_string(),
                        p["protocol"].clone(),
                    )
                })
                .collect(),
        )
    };
    for i in 1..=n {
        let mut last = None;
        let all_3 = poll(PROTOCOL_BOUND, || {
            let seen = protocols(i);
            let ok = seen
                .as_ref()
                .is_some_and(|p| p.len() == n - 1 && p.iter().all(|(_, v)| v == 3));
            last = seen;
            ok.then_some(())
        });
        if all_3.is_none() {
            world.problem(format!(
                "n{i} does not call every peer in protocol 3 within {PROTOCOL_BOUND:?} of the end of the upgrade: {last:?}"
            ));
        }
    }
}

/// Bound on every node calling every peer in protocol 3 after the upgrade:
/// the node's wait before it tries 3 again on a peer that did not know it
/// (30 s), and a few pulls.
const PROTOCOL_BOUND: Duration = Duration::from_secs(40);

/// Node `id`'s process runs the binary it was started from: `ip netns
/// exec` must exec the node, so that signals reach it, and an upgrade must
/// really have changed the binary.
fn check_exe(h: &Harness, id: usize) -> Result<(), String> {
    let nodes = h.nodes();
    let pid = nodes
        .pid(id)
        .ok_or_else(|| format!("node {id} is not running"))?;
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap_or_default();
    let bin = nodes.binary(id);
    let want = std::fs::canonicalize(bin).unwrap_or(bin.to_path_buf());
    if exe != want {
        return Err(format!(
            "pid {pid} of node {id} runs {}, not {}",
            exe.display(),
            want.display()
        ));
    }
    Ok(())
}

fn wipe_folder(h: &Harness, i: usize) -> Result<(), String> {
    let dir = h.work.join(format!("tally-data/node-{i}"));
    std::fs::remove_dir_all(&dir).map_err(|e| format!("cannot delete {}: {e}", dir.display()))
}

/// Node `i` cut off for the first half of the hold (clients keep sending
/// it increments: without min-replicas it acknowledges them alone), then
/// SIGKILLed, its folder deleted and restarted while still cut off; healed
/// at the end of the hold.
fn isolate_wipe(
    h: &Harness,
    world: &World,
    client: &Client,
    i: usize,
    label: &str,
    cuts: &[(usize, usize)],
    hold: Duration,
) -> Result<(), String> {
    let begin = world.now();
    h.lab.partition(cuts)?;
    let active_from = world.now();
    std::thread::sleep(hold / 2);
    let wipe_begin = world.now();
    h.nodes().crash(i)?;
    wipe_folder(h, i)?;
    let wipe_from = world.now();
    restart(h, world, client, i)?;
    let restarted = world.now();
    record(
        world,
        FaultRec {
            label: format!("wipe n{i} (inside {label})"),
            begin: wipe_begin,
            active_from: wipe_from,
            active_until: restarted,
            end: restarted,
            down: vec![i],
            wiped: true,
            ..FaultRec::default()
        },
    );
    std::thread::sleep(hold / 2);
    let active_until = world.now();
    h.lab.heal()?;
    record(
        world,
        FaultRec {
            label: label.to_string(),
            begin,
            active_from,
            active_until,
            end: world.now(),
            cuts: cuts.to_vec(),
            ..FaultRec::default()
        },
    );
    expect_config_back(world, client, i, true);
    Ok(())
}

/// Posts the plan's configs while its partition holds, heals, and waits for
/// every running node named by a config to report the same one.
fn membership_change(
    h: &Harness,
    world: &World,
    client: &Client,
    plan: &MembershipPlan,
    label: &str,
    cuts: &[(usize, usize)],
    hold: Duration,
) -> Result<(), String> {
    let begin = world.now();
    h.lab.partition(cuts)?;
    let active_from = world.now();
    // Surely in force before the posts.
    std::thread::sleep(Duration::from_millis(200));
    let mut posted = Vec::new();
    for (to, actors) in &plan.posts {
        let answer = client
            .post(
                &world.url(*to, "/config"),
                &world.actors_json(actors),
                Duration::from_secs(5),
            )
            .0;
        match &answer {
            Outcome::Answer(200, _) => {
                posted.push(actors.clone());
                // Clients may use the nodes it names from now on.
                world.enrolled.fetch_or(bits(actors), Ordering::SeqCst);
            }
            other => world.problem(format!(
                "G8: POST /config {actors:?} to node {to} during {label} answered {other:?}"
            )),
        }
        eprintln!(
            "chaos: {:>8.3}s   posted {actors:?} to n{to}: {}",
            world.now() as f64 / 1e6,
            match &answer {
                Outcome::Answer(s, b) => format!("{s} {b}"),
                Outcome::Failed(e) => e.clone(),
            }
        );
    }
    std::thread::sleep(hold.saturating_sub(Duration::from_millis(200)));
    let active_until = world.now();
    h.lab.heal()?;
    let healed = world.now();
    let named = world.enrolled();
    let (views, agreed) = await_one_config(client, world, &named, CONFIG_SETTLE_BOUND);
    let end = world.now();
    let settled = if agreed {
        let actors: Vec<usize> = views
            .first()
            .and_then(|(_, v)| v.as_ref())
            .map(|(_, _, a)| a.iter().filter_map(|x| world.node_of(x)).collect())
            .unwrap_or_default();
        let mut sorted = actors.clone();
        sorted.sort_unstable();
        *lock(&world.current) = sorted.clone();
        world.configured.fetch_or(bits(&named), Ordering::SeqCst);
        eprintln!(
            "chaos: {:>8.3}s   every node named by a config reports {:?} {:.0}ms after the heal",
            end as f64 / 1e6,
            views.first().and_then(|(_, v)| v.clone()),
            (end - healed) as f64 / 1e3
        );
        Some(sorted)
    } else {
        eprintln!(
            "chaos: {:>8.3}s   the nodes did not agree on a config within {CONFIG_SETTLE_BOUND:?}: {views:?}",
            end as f64 / 1e6
        );
        None
    };
    record(
        world,
        FaultRec {
            label: label.to_string(),
            begin,
            active_from,
            active_until,
            end,
            cuts: cuts.to_vec(),
            ..FaultRec::default()
        },
    );
    lock(&world.changes).push(ConfigChange {
        label: label.to_string(),
        begin,
        end,
        posted,
        settled,
    });
    Ok(())
}

/// Fills the shared working folder's tmpfs with a file, holds, deletes the
/// file, then measures how long each running node takes to acknowledge an
/// increment again (its process unchanged: no restart).
fn disk_full(
    h: &Harness,
    world: &World,
    client: &Client,
    label: &str,
    hold: Duration,
) -> Result<(), String> {
    let n = world.ips.len();
    let pids: Vec<Option<u32>> = (1..=n).map(|i| h.nodes().pid(i)).collect();
    let begin = world.now();
    let filler = h.work.join("filler");
    let filled = fill(&filler, TMPFS_MIB)?;
    let active_from = world.now();
    eprintln!(
        "chaos: {:>8.3}s   wrote {} MiB of filler: the filesystem is full",
        active_from as f64 / 1e6,
        filled >> 20
    );
    // Storage pressure while it is full: increments with a fresh
    // Idempotency-Key each (the key is stored with the increment), so every
    // actor's database must grow and its commits meet the full disk, however
    // much free room its file had. They are recorded like any increment.
    let members: Vec<usize> = lock(&world.current).clone();
    let until = Instant::now() + hold;
    let fault_no = lock(&world.disk_recoveries).len();
    std::thread::scope(|s| {
        for &node in &members {
            s.spawn(move || {
                let client = Client::new();
                for k in 0..100_000u32 {
                    if Instant::now() >= until {
                        break;
                    }
                    let key = format!("disk-full-{fault_no}-n{node}-{k}-{}", "k".repeat(64));
                    let name = k as usize % world.names.len();
                    increment_keyed(world, &client, node, name, 1, Some(&key));
                    std::thread::sleep(Duration::from_millis(2));
                }
            });
        }
    });
    let active_until = world.now();
    std::fs::remove_file(&filler).map_err(|e| format!("cannot delete the filler: {e}"))?;
    let freed_at = world.now();
    let freed = Instant::now();
    // Every running node must acknowledge an increment again within the
    // bound, by itself; each is probed in its own thread.
    let bound = Duration::from_micros(DISK_RESUME_BOUND) + Duration::from_secs(2);
    // (Only actors of the config: a node that left refuses increments by
    // design, and one never given a config is not sent requests.)
    let running: Vec<usize> = lock(&world.current)
        .iter()
        .copied()
        .filter(|&i| h.nodes().running(i))
        .collect();
    let resumed: Vec<(usize, Option<Micros>)> = std::thread::scope(|s| {
        let probes: Vec<_> = running
            .iter()
            .map(|&node| {
                s.spawn(move || {
                    let client = Client::new();
                    let mut k = node;
                    let ok = poll(bound, || {
                        k += 1;
                        let name = k % world.names.len();
                        matches!(increment(world, &client, node, name, 1), WriteResult::Acked)
                            .then(|| freed.elapsed().as_micros() as Micros)
                    });
                    (node, ok)
                })
            })
            .collect();
        probes
            .into_iter()
            .zip(&running)
            .map(|(p, &node)| p.join().unwrap_or((node, None)))
            .collect()
    });
    let restarted: Vec<usize> = (1..=n)
        .filter(|&i| h.nodes().exited(i).is_some() || h.nodes().pid(i) != pids[i - 1])
        .collect();
    let end = world.now();
    let health: Vec<String> = world
        .enrolled()
        .iter()
        .map(|&i| {
            let s = status_json(client, world, i);
            format!(
                "n{i} {}",
                s.map_or("no status".to_string(), |s| format!(
                    "healthy={} errors={} recoveries={}",
                    s["storage"]["healthy"], s["storage"]["errors"], s["storage"]["recoveries"]
                ))
            )
        })
        .collect();
    eprintln!(
        "chaos: {:>8.3}s   space back; writes again after {:?}; storage: {}",
        end as f64 / 1e6,
        resumed
            .iter()
            .map(|(i, t)| format!(
                "n{i} {}",
                t.map_or("never".to_string(), |t| format!("{:.0}ms", t as f64 / 1e3))
            ))
            .collect::<Vec<_>>(),
        health.join(", ")
    );
    record(
        world,
        FaultRec {
            label: label.to_string(),
            begin,
            active_from,
            active_until,
            end,
            disk_full: true,
            ..FaultRec::default()
        },
    );
    lock(&world.disk_recoveries).push(DiskRecovery {
        freed_at,
        resumed,
        restarted,
    });
    Ok(())
}

// ---------------------------------------------------------------------------
// Recovery after the final heal

struct Recovery {
    /// Consistent reads already waiting when the network healed: the slowest
    /// one's answer, after the heal.
    in_flight: Option<Duration>,
    /// Until every running node named by a config reported the same one.
    config_agreed: Option<Duration>,
    consistent_everywhere: Option<Duration>,
    converged: Option<Duration>,
}

/// Time from `healed` until a consistent read answers 200 on every node.
fn measure_consistent(world: &World, healed: Instant) -> Option<Duration> {
    let nodes = world.enrolled();
    let owed = &owed(world);
    let per_node: Vec<Option<Duration>> = std::thread::scope(|s| {
        let handles: Vec<_> = nodes
            .iter()
            .map(|&node| {
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
    for (i, t) in nodes.iter().zip(&per_node) {
        eprintln!(
            "chaos: node {i} consistent after the heal: {}",
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

/// Time from `healed` until every member's value of every name is equal and
/// ≥ acked. (A node that left the config is no longer replicated to.)
fn measure_convergence(world: &World, healed: Instant) -> Option<Duration> {
    let client = Client::new();
    let members = lock(&world.current).clone();
    let mut last = String::new();
    let owed = owed(world);
    let found = poll(RECOVERY_WAIT, || {
        for (name, &acked) in owed.iter().enumerate() {
            let acked = u128::from(acked);
            let mut values = Vec::with_capacity(members.len());
            for &node in &members {
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
            Some(_) => world
                .enrolled()
                .into_iter()
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
        // G8: every running node named by a config reports the same one.
        let named = world.enrolled();
        let (views, agreed) = await_one_config(&client, world, &named, CONFIG_SETTLE_BOUND);
        let config_agreed = agreed.then(|| healed.elapsed());
        if agreed && let Some((_, Some((_, _, actors)))) = views.first() {
            let mut members: Vec<usize> = actors.iter().filter_map(|a| world.node_of(a)).collect();
            members.sort_unstable();
            *lock(&world.current) = members;
        }
        eprintln!(
            "chaos: final config {}: {:?}",
            config_agreed.map_or("not agreed".to_string(), |t| format!(
                "agreed {:.0}ms after the heal",
                t.as_secs_f64() * 1e3
            )),
            views
        );
        *lock(&world.final_configs) = views;
        let c = s.spawn(move || measure_consistent(world, healed));
        let v = s.spawn(move || measure_convergence(world, healed));
        Ok(Recovery {
            in_flight,
            config_agreed,
            consistent_everywhere: c.join().unwrap_or(None),
            converged: v.join().unwrap_or(None),
        })
    })
}

/// After convergence: every member's value, and every configured node's
/// consistent value, of every name lies between what was acknowledged and
/// what was sent. A node that left the config is no longer replicated to:
/// its own value is only bounded by what was sent.
fn final_values(world: &World) -> Vec<String> {
    let client = Client::new();
    let mut lines = Vec::new();
    let owed = owed(world);
    let members = lock(&world.current).clone();
    for (name, &acked) in owed.iter().enumerate() {
        let sent = world.sent[name].load(Ordering::SeqCst);
        let mut seen = Vec::new();
        for node in world.enrolled() {
            let url = world.counter_url(node, name, "/value");
            let value = read_result(client.get(&url, REQUEST_TIMEOUT).0, false);
            let cons = consistent(&client, world, node, name, 3000);
            if !members.contains(&node) {
                match &value {
                    ReadResult::Value(v) if *v <= u128::from(sent) => {}
                    other => world.problem(format!(
                        "final value of {:?} on node {node} (outside the config) is {other:?}; it must be 200 and ≤ {sent} sent",
                        world.names[name]
                    )),
                }
            }
            let checked: &[(&str, &ReadResult)] = if members.contains(&node) {
                &[("value", &value), ("consistent_value", &cons)]
            } else {
                &[("consistent_value", &cons)]
            };
            for &(what, r) in checked {
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

pub fn chaos(profile: Profile) {
    let params = Params::from_env(profile);
    if let Some(why) = missing_prerequisite(params.disk) {
        cannot_run(&why);
        return;
    }
    let _serial = serial();
    let _replay = ReplayOnPanic(params.replay());
    // Past the harness's capture, like the simulation's fresh seeds: a
    // passing run's log names its seed too.
    let _ = writeln!(
        std::io::stderr(),
        "chaos: {} seed={} nodes={} secs={} first config {:?} membership={} disk={} wipe={} min_replicas={}\nchaos: replay with: {}",
        profile.test_name(),
        params.seed,
        params.nodes,
        params.secs,
        params.initial_actors(),
        params.membership,
        params.disk,
        params.wipe,
        params.min_replicas,
        params.replay()
    );
    let bin = node_binary();
    eprintln!("chaos: node binary {}", bin.display());
    let old = (profile == Profile::Upgrade).then(|| {
        let old = super::upgrade::upgrade_from();
        eprintln!("chaos: older binary to upgrade from {}", old.display());
        old
    });
    let setup_started = Instant::now();
    let mut node_env = Vec::new();
    if params.min_replicas > 0 {
        node_env.push((
            "TALLY_MIN_REPLICAS".to_string(),
            params.min_replicas.to_string(),
        ));
        node_env.push((
            "TALLY_REPLICA_TIMEOUT".to_string(),
            REPLICA_TIMEOUT.to_string(),
        ));
    }
    let setup = Setup {
        nodes: params.nodes,
        node_env,
        tmpfs_mib: params.disk.then_some(TMPFS_MIB),
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
        // Past the harness's capture: a passing run must show it too.
        let _ = writeln!(std::io::stderr(), "\n!!! chaos: WARNING: {why}\n");
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
        excuse_wipes: params.excuse_wipes(),
        membership: params.membership,
        disk: params.disk,
        enrolled: AtomicU64::new(bits(&params.initial_actors())),
        configured: AtomicU64::new(bits(&params.initial_actors())),
        current: Mutex::new(params.initial_actors()),
        initial_actors: params.initial_actors(),
        changes: Mutex::new(Vec::new()),
        disk_recoveries: Mutex::new(Vec::new()),
        final_configs: Mutex::new(Vec::new()),
        upgrade: old.as_ref().map(|old| {
            // Its own stream, so that the plan moves no other choice of the seed.
            let mut plan_rng = Rng::new(params.seed ^ 0x005e_ed0f_0a9e_u64);
            Upgrade::plan(old.clone(), bin.clone(), &mut plan_rng, n)
        }),
    };
    let client = Client::new();

    // Start the nodes, post the config once, wait until the cluster is whole.
    for i in 1..=n {
        if let Some(old) = &old {
            h.nodes().set_binary(i, old.clone());
        }
        h.nodes().spawn(i).unwrap_or_else(|e| panic!("{e}"));
    }
    for i in 1..=n {
        if !wait_ready(&client, &world, i, START_BOUND) {
            panic!(
                "node {i} did not answer /status within {START_BOUND:?}\n{}",
                h.logs(40)
            );
        }
        check_exe(&h, i).unwrap_or_else(|e| panic!("{e}; signals would miss it"));
    }
    // The first config, posted once to node 1; nodes outside it run without one.
    let first = world.initial_actors.clone();
    match client
        .post(
            &world.url(1, "/config"),
            &world.actors_json(&first),
            Duration::from_secs(5),
        )
        .0
    {
        Outcome::Answer(200, _) => {}
        other => panic!("POST /config to node 1 failed: {other:?}\n{}", h.logs(40)),
    }
    let (views, agreed) = await_one_config(&client, &world, &first, Duration::from_secs(10));
    let want: Vec<String> = first
        .iter()
        .map(|&i| format!("{}:7777", ips[i - 1]))
        .collect();
    let mut want_sorted = want.clone();
    want_sorted.sort();
    assert!(
        agreed
            && views
                .iter()
                .all(|(_, v)| v.as_ref().is_some_and(|v| v.2 == want_sorted)),
        "G8: the nodes of the first config did not all learn it within 10s: {views:?}\n{}",
        h.logs(40)
    );
    for i in 1..=n {
        let status = poll(Duration::from_secs(10), || {
            status_json(&client, &world, i)
                .filter(|s| !first.contains(&i) || knows_config(s, &world, i))
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
    for &i in &first {
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
    if let Some(up) = &world.upgrade {
        let left = lock(&up.steps).clone();
        if !left.is_empty() {
            world.problem(format!(
                "the rolling upgrade did not finish within {}s: steps (node, roll back) left {left:?}",
                params.secs
            ));
        }
    }

    // Final heal and recovery.
    let recovery = match recover(&h, &world) {
        Ok(r) => r,
        Err(e) => {
            world.problem(format!("final heal failed, recovery not measured: {e}"));
            Recovery {
                in_flight: None,
                config_agreed: None,
                consistent_everywhere: None,
                converged: None,
            }
        }
    };
    if world.upgrade.is_some() {
        expect_newest_protocol(&client, &world);
    }
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
        initial_actors: world.initial_actors.clone(),
        changes: std::mem::take(&mut *lock(&world.changes)),
        disk_recoveries: std::mem::take(&mut *lock(&world.disk_recoveries)),
        final_configs: std::mem::take(&mut *lock(&world.final_configs)),
    };
    let bounds = Bounds {
        excuse_wipes: params.excuse_wipes(),
        ..Bounds::default()
    };
    let report = check(&history, &ips, &names, &bounds);
    let st = &report.stats;
    let changes_summary = if history.changes.is_empty() {
        "none".to_string()
    } else {
        history
            .changes
            .iter()
            .map(|c| {
                format!(
                    "\n  {:.1}s {} -> settled on {}",
                    c.begin as f64 / 1e6,
                    c.label,
                    c.settled
                        .as_ref()
                        .map_or("nothing (violation)".to_string(), |a| format!(
                            "{a:?} after {:.1}s",
                            (c.end - c.begin) as f64 / 1e6
                        ))
                )
            })
            .collect::<String>()
    };
    let disk_summary = if history.disk_recoveries.is_empty() {
        "none".to_string()
    } else {
        history
            .disk_recoveries
            .iter()
            .map(|d| {
                let slowest = d
                    .resumed
                    .iter()
                    .map(|(_, t)| *t)
                    .try_fold(0, |m, t| t.map(|t| t.max(m)));
                format!(
                    "\n  space back at {:.1}s: every running node wrote again within {}",
                    d.freed_at as f64 / 1e6,
                    slowest.map_or("never (violation)".to_string(), |t| format!(
                        "{:.0}ms",
                        t as f64 / 1e3
                    ))
                )
            })
            .collect::<String>()
    };
    let ms = |t: Option<Duration>| {
        t.map_or("never".into(), |t| {
            format!("{:.0}ms", t.as_secs_f64() * 1e3)
        })
    };
    let mut summary = format!(
        "\n===== tally chaos summary: {} (seed {}, {} nodes, {}s, min-replicas {}, delay via {:?}) =====\n\
         faults applied: {} {:?}\n\
         membership changes: {}\n\
         full disks: {}\n\
         increments: {} sent, {} acked, {} uncertain, {} rejected ({} by a node outside the config, {} by full storage, {} short of replicas, {} without a config)\n\
         value reads: {}   consistent reads: {} ({} ok, {} 503, {} no answer)\n\
         consistent reads wholly inside a fault that cut their node (must be 503): {}; 503s naming extra nodes: {}\n\
         G3 value latency during partitions (running nodes): {}\n\
         G3 value latency during faults (running nodes): {}\n\
         G3 value latency whole run (running nodes):     {}\n\
         G3 increment latency (running nodes):           {}\n\
         G5 consistent read latency (running nodes):     {}\n\
         after the final heal: reads waiting across it answered in {}; one config everywhere in {}; fresh consistent reads succeed on every node in {}; converged in {}\n\
         final config: {:?}\n\
         final counters:\n{}\n",
        profile.test_name(),
        params.seed,
        n,
        params.secs,
        params.min_replicas,
        h.lab.delay_mode,
        history.faults.len(),
        st.faults,
        changes_summary,
        disk_summary,
        st.writes,
        st.acked,
        st.uncertain,
        st.rejected,
        st.refused_not_member,
        st.refused_storage,
        st.refused_replicas,
        st.refused_no_config,
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
        ms(recovery.config_agreed),
        ms(recovery.consistent_everywhere),
        ms(recovery.converged),
        history.final_configs.first().and_then(|(_, v)| v.clone()),
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
