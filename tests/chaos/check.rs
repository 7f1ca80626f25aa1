//! The history of a chaos run and the checker that judges it against the
//! guarantees of SPEC §3. The checker is a pure function of the history, so
//! it is tested on its own with histories that break each guarantee.
//!
//! Times are microseconds since the start of the run.

use std::collections::BTreeMap;

pub type Micros = u64;

/// A read's (start, end, value).
type Seen = (Micros, Micros, u128);

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WriteResult {
    /// 200: the increment is acknowledged.
    Acked,
    /// No answer (timeout, refused, reset): it may or may not have been applied.
    Uncertain(String),
    /// An answer other than 200 to a valid increment.
    Rejected(u16, String),
}

#[derive(Clone, Debug)]
pub struct WriteRec {
    pub node: usize,
    pub name: usize,
    pub amount: u64,
    pub start: Micros,
    pub end: Micros,
    pub result: WriteResult,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadKind {
    Value,
    Consistent { timeout_ms: u64 },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReadResult {
    /// 200 with a decimal body.
    Value(u128),
    /// 503 from a consistent read, with its JSON body parsed.
    Unavailable {
        unreachable: Vec<String>,
        best: Option<u128>,
    },
    /// Any other answer, or a body that does not parse.
    BadAnswer(u16, String),
    /// No answer within the client's deadline, or a transport error.
    Failed(String),
}

#[derive(Clone, Debug)]
pub struct ReadRec {
    pub node: usize,
    pub name: usize,
    pub kind: ReadKind,
    pub start: Micros,
    pub end: Micros,
    /// Sum of the increments of this name acknowledged before the read started.
    pub acked_at_start: u64,
    /// Sum of the increments of this name sent (acknowledged or not) before it answered.
    pub sent_at_end: u64,
    pub result: ReadResult,
}

/// One injected fault. `begin..end` is the whole disturbance (from the first
/// action to the end of the heal, a restarted node answering included);
/// `active_from..active_until` is when it is surely in force.
#[derive(Clone, Debug, Default)]
pub struct FaultRec {
    pub label: String,
    pub begin: Micros,
    pub active_from: Micros,
    pub active_until: Micros,
    pub end: Micros,
    /// Node pairs (1-based) that cannot talk to each other.
    pub cuts: Vec<(usize, usize)>,
    /// Nodes paused or crashed.
    pub down: Vec<usize>,
    /// Nodes whose link is degraded by a delay qdisc that is not netem.
    pub degraded: Vec<usize>,
    /// The `down` nodes lost their whole data folder before restarting.
    pub wiped: bool,
    /// The nodes' shared filesystem was full (`begin..end` runs until every
    /// running node acknowledged an increment again).
    pub disk_full: bool,
}

/// A membership change made during the run: configs posted to nodes while a
/// partition held, then the network healed and the run waited for every
/// node to report the same config.
#[derive(Clone, Debug, Default)]
pub struct ConfigChange {
    pub label: String,
    /// From the first post to the moment the config settled (or the wait gave up).
    pub begin: Micros,
    pub end: Micros,
    /// The actors (1-based node numbers) of each config posted.
    pub posted: Vec<Vec<usize>>,
    /// The actors of the config every running node reported at `end`;
    /// `None` when they did not agree within the bound.
    pub settled: Option<Vec<usize>>,
}

/// What one node's `/status` said of its config: (version, origin, actors).
pub type ConfigView = (u64, u64, Vec<String>);

/// After the space of a full disk came back: how long each running node
/// took to acknowledge an increment again (`None`: not within the wait),
/// and whether its process stayed the same (no restart).
#[derive(Clone, Debug, Default)]
pub struct DiskRecovery {
    pub freed_at: Micros,
    pub resumed: Vec<(usize, Option<Micros>)>,
    /// Nodes whose process changed (or exited) across the fault.
    pub restarted: Vec<usize>,
}

/// G10: after the space returns, every running node acknowledges
/// increments again within this, without a restart.
pub const DISK_RESUME_BOUND: Micros = 10_000_000;

/// An increment answered 503 because too few other actors stored it in
/// time is excused while its node cannot reach enough of them, and this
/// long after (a healed peer is marked up and pulls within a second or so).
pub const REPLICA_GRACE: Micros = 3_000_000;

/// How far back, before a node's data folder is deleted, its acknowledged
/// increments may not have reached any peer yet (a fault holds up to 4 s,
/// replication after a heal takes a second or so).
pub const WIPE_EXCUSE: Micros = 6_000_000;

/// How long after a wiped node's restart it may still lack the config.
pub const WIPE_RELEARN: Micros = 10_000_000;

/// For each wipe (by its start): per name, the increments the wiped node
/// acknowledged shortly before it, which may be lost with its folder. SPEC
/// G1 covers crashes, not lost disks; G7 asks only that the node never
/// count on from a lower value, which the checks still hold it to.
pub fn wipe_excuses(h: &History, names: usize, excuse_wipes: bool) -> Vec<(Micros, Vec<u64>)> {
    if !excuse_wipes {
        return Vec::new();
    }
    h.faults
        .iter()
        .filter(|f| f.wiped)
        .map(|f| {
            let mut per_name = vec![0u64; names];
            for w in &h.writes {
                if w.result == WriteResult::Acked
                    && f.down.contains(&w.node)
                    && w.end + WIPE_EXCUSE >= f.begin
                    && w.end <= f.active_from
                    && w.name < names
                {
                    per_name[w.name] += w.amount;
                }
            }
            (f.begin, per_name)
        })
        .collect()
}

/// The sum of the excuses of wipes that began before `t`, for name `k`.
pub fn excused(excuses: &[(Micros, Vec<u64>)], k: usize, t: Micros) -> u64 {
    excuses
        .iter()
        .filter(|(begin, _)| *begin < t)
        .map(|(_, per_name)| per_name.get(k).copied().unwrap_or(0))
        .sum()
}

#[derive(Default, Debug)]
pub struct History {
    pub writes: Vec<WriteRec>,
    pub reads: Vec<ReadRec>,
    pub faults: Vec<FaultRec>,
    /// The actors of the config posted at the start; empty: every node.
    pub initial_actors: Vec<usize>,
    pub changes: Vec<ConfigChange>,
    pub disk_recoveries: Vec<DiskRecovery>,
    /// After the final heal, what each running node that was ever named by
    /// a config reported (the last look, once they agreed or the wait ended).
    pub final_configs: Vec<(usize, Option<ConfigView>)>,
}

/// Why a node refused an increment, from its answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// 409: this node is not an actor of the config it holds.
    NotMember,
    /// 503 from storage (full disk, I/O error).
    Storage,
    /// 503: fewer than `required` other actors stored it in time.
    Replicas {
        stored: u64,
        required: u64,
    },
    /// 503: the config has fewer other actors than the replicas required
    /// (a node without a config has none).
    TooFewActors,
    Other,
}

pub fn classify(status: u16, body: &str) -> Refusal {
    let json: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
    if !json["error"].is_string() {
        return Refusal::Other;
    }
    match status {
        409 if json["actors"].is_array() => Refusal::NotMember,
        503 => match (json["stored"].as_u64(), json["required"].as_u64()) {
            (Some(stored), Some(required)) => Refusal::Replicas { stored, required },
            (None, Some(_)) if json["available"].is_u64() => Refusal::TooFewActors,
            (None, None) => Refusal::Storage,
            _ => Refusal::Other,
        },
        _ => Refusal::Other,
    }
}

impl History {
    fn initial(&self, n: usize) -> Vec<usize> {
        if self.initial_actors.is_empty() {
            (1..=n).collect()
        } else {
            self.initial_actors.clone()
        }
    }

    /// The actor sets of every config that may have been in force on some
    /// node during `s..e`: the one settled before, and every one posted or
    /// settled by a change overlapping `s..e`. A change that never settled
    /// leaves all it posted possible from then on.
    pub fn possible_configs(&self, n: usize, s: Micros, e: Micros) -> Vec<Vec<usize>> {
        let mut possible = vec![self.initial(n)];
        let mut changes: Vec<&ConfigChange> = self.changes.iter().collect();
        changes.sort_by_key(|c| c.begin);
        for c in changes {
            if c.begin > e {
                break;
            }
            if c.end < s {
                match &c.settled {
                    Some(a) => possible = vec![a.clone()],
                    None => possible.extend(c.posted.iter().cloned()),
                }
            } else {
                possible.extend(c.posted.iter().cloned());
                possible.extend(c.settled.iter().cloned());
            }
        }
        possible
    }

    /// The nodes that were actors of every config in force during `s..e`:
    /// the only ones a rule may require a request to hear from, or to
    /// accept increments.
    pub fn members_throughout(&self, n: usize, s: Micros, e: Micros) -> Vec<usize> {
        let possible = self.possible_configs(n, s, e);
        (1..=n)
            .filter(|x| possible.iter().all(|c| c.contains(x)))
            .collect()
    }

    /// Whether node `x` may lack a config at `t`: it was not in the initial
    /// config and no change naming it had settled yet.
    pub fn maybe_unconfigured(&self, n: usize, x: usize, t: Micros) -> bool {
        if self.initial(n).contains(&x) {
            return false;
        }
        !self
            .changes
            .iter()
            .any(|c| c.end < t && c.settled.is_some() && c.posted.iter().any(|p| p.contains(&x)))
    }
}

/// What the checker asserts beyond the guarantees' plain logic.
#[derive(Clone, Debug)]
pub struct Bounds {
    /// G3: p99 of `value` and increment latency on a running node.
    pub p99_ms: u64,
    /// G3: the slowest `value` or increment on a running node.
    pub max_ms: u64,
    /// G5: a consistent read answers within its timeout plus this.
    pub consistent_slack_ms: u64,
    /// G5: a consistent read that starts this long after every fault has
    /// healed, on a network that stays whole, must answer 200.
    pub whole_grace_ms: u64,
    /// Whether increments a node acknowledged shortly before its folder was
    /// deleted are excused from G1 (not when nodes run with min-replicas).
    pub excuse_wipes: bool,
}

impl Default for Bounds {
    fn default() -> Self {
        Bounds {
            p99_ms: 500,
            max_ms: 2000,
            consistent_slack_ms: 2000,
            whole_grace_ms: 3000,
            excuse_wipes: true,
        }
    }
}

#[derive(Clone, Copy, Debug, Default)]
pub struct Latency {
    pub count: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl Latency {
    pub fn of(mut micros: Vec<u64>) -> Latency {
        if micros.is_empty() {
            return Latency::default();
        }
        micros.sort_unstable();
        let at = |p: f64| {
            let idx = ((micros.len() as f64 - 1.0) * p).round() as usize;
            micros[idx.min(micros.len() - 1)] as f64 / 1000.0
        };
        Latency {
            count: micros.len(),
            p50_ms: at(0.50),
            p99_ms: at(0.99),
            max_ms: *micros.last().unwrap_or(&0) as f64 / 1000.0,
        }
    }
}

impl std::fmt::Display for Latency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "n={} p50={:.1}ms p99={:.1}ms max={:.1}ms",
            self.count, self.p50_ms, self.p99_ms, self.max_ms
        )
    }
}

#[derive(Debug, Default)]
pub struct Stats {
    pub writes: usize,
    pub acked: usize,
    pub uncertain: usize,
    pub rejected: usize,
    /// Refusals the guarantees allow: by a node outside the config (409),
    /// by full storage (503), for want of replicas (503), for want of a
    /// config (503).
    pub refused_not_member: usize,
    pub refused_storage: usize,
    pub refused_replicas: usize,
    pub refused_no_config: usize,
    pub value_reads: usize,
    pub consistent_reads: usize,
    pub consistent_ok: usize,
    pub consistent_503: usize,
    pub consistent_failed: usize,
    /// Consistent reads made wholly inside a fault that cut their node off
    /// from some other node (and so had to answer 503).
    pub strict_g5_reads: usize,
    /// 503s that named more nodes than the fault in force cut off.
    pub extra_unreachable: usize,
    /// `value` latency on running nodes, during faults.
    pub value_during_faults: Latency,
    /// `value` latency on running nodes, during partitions.
    pub value_during_partitions: Latency,
    /// `value` latency on running nodes, whole run.
    pub value_all: Latency,
    /// Increment latency on running nodes, whole run.
    pub write_all: Latency,
    /// Consistent read latency on running nodes, whole run.
    pub consistent_all: Latency,
    pub faults: BTreeMap<String, usize>,
}

pub struct Report {
    pub violations: Vec<String>,
    pub stats: Stats,
}

fn secs(t: Micros) -> String {
    format!("{:.3}s", t as f64 / 1e6)
}

fn overlaps(s: Micros, e: Micros, from: Micros, until: Micros) -> bool {
    s <= until && e >= from
}

/// The faults overlapping `s..e`, for a message.
fn describe_faults(faults: &[FaultRec], s: Micros, e: Micros) -> String {
    let list: Vec<String> = faults
        .iter()
        .filter(|f| overlaps(s, e, f.begin, f.end))
        .map(|f| format!("{} [{}..{}]", f.label, secs(f.begin), secs(f.end)))
        .collect();
    if list.is_empty() {
        "no fault".to_string()
    } else {
        list.join(", ")
    }
}

/// A request's time span and the faults around it, formatted only when a
/// violation message needs it.
struct When<'a> {
    start: Micros,
    end: Micros,
    faults: &'a [FaultRec],
}

impl std::fmt::Display for When<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}..{} ({})",
            secs(self.start),
            secs(self.end),
            describe_faults(self.faults, self.start, self.end)
        )
    }
}

/// Whether `ip` (no port) is named by one entry of an `unreachable` list.
pub fn names_ip(entries: &[String], ip: &str) -> bool {
    entries
        .iter()
        .any(|u| u == ip || u.strip_prefix(ip).is_some_and(|r| r.starts_with(':')))
}

/// Judges a history. `ips[i]` is the address of node i+1; `names[k]` the
/// counter name number k.
pub fn check(h: &History, ips: &[String], names: &[String], bounds: &Bounds) -> Report {
    let mut v: Vec<String> = Vec::new();
    let mut st = Stats::default();
    let name = |k: usize| names.get(k).map(String::as_str).unwrap_or("?");

    // Node `node` stopped or slowed (beyond netem) at some time in [s, e].
    let disturbed = |node: usize, s: Micros, e: Micros| {
        h.faults.iter().any(|f| {
            (f.down.contains(&node) || f.degraded.contains(&node)) && overlaps(s, e, f.begin, f.end)
        })
    };
    let during_fault =
        |s: Micros, e: Micros| h.faults.iter().any(|f| overlaps(s, e, f.begin, f.end));
    let during_partition = |s: Micros, e: Micros| {
        h.faults
            .iter()
            .any(|f| !f.cuts.is_empty() && overlaps(s, e, f.begin, f.end))
    };
    let describe_faults = |s: Micros, e: Micros| describe_faults(&h.faults, s, e);

    for f in &h.faults {
        let kind = f.label.split_whitespace().next().unwrap_or("?");
        *st.faults.entry(kind.to_string()).or_default() += 1;
    }

    let n = ips.len();
    // A node whose folder was deleted, from its restart until it may have
    // relearned the config from its peers.
    let relearning = |node: usize, t: Micros| {
        h.faults.iter().any(|f| {
            f.wiped && f.down.contains(&node) && t >= f.active_from && t <= f.end + WIPE_RELEARN
        })
    };
    // Whether, at some time in [s, e] (or up to REPLICA_GRACE after a fault
    // healed), node `node` could reach fewer than `k` other actors of some
    // config in force. A node that is itself paused or down reaches none:
    // when it runs again, the pushes it had in flight have failed, and its
    // peers must pull past them before they count as replicas, as after a
    // partition heals.
    let short_of_peers = |node: usize, s: Micros, e: Micros, k: u64| {
        let around: Vec<&FaultRec> = h
            .faults
            .iter()
            .filter(|f| overlaps(s, e, f.begin, f.end.saturating_add(REPLICA_GRACE)))
            .collect();
        let union = FaultRec {
            cuts: around.iter().flat_map(|f| f.cuts.iter().copied()).collect(),
            down: around.iter().flat_map(|f| f.down.iter().copied()).collect(),
            ..FaultRec::default()
        };
        let itself_down = union.down.contains(&node);
        let unreachable = cut_off(node, &union, n);
        h.possible_configs(n, s, e).iter().any(|config| {
            let reachable = config
                .iter()
                .filter(|&&x| x != node && !itself_down && !unreachable.contains(&x))
                .count();
            (reachable as u64) < k
        })
    };
    let during_disk_fault = |s: Micros, e: Micros| {
        h.faults
            .iter()
            .any(|f| f.disk_full && overlaps(s, e, f.begin, f.end))
    };

    // Increments.
    let mut write_lat = Vec::new();
    for w in &h.writes {
        st.writes += 1;
        let eligible = !disturbed(w.node, w.start, w.end);
        let mut timed = eligible;
        match &w.result {
            WriteResult::Acked => st.acked += 1,
            WriteResult::Uncertain(e) => {
                st.uncertain += 1;
                if eligible {
                    v.push(format!(
                        "G3: POST /counter/{} +{} to running node {} got no answer ({e}) at {}..{} ({})",
                        name(w.name),
                        w.amount,
                        w.node,
                        secs(w.start),
                        secs(w.end),
                        describe_faults(w.start, w.end)
                    ));
                }
            }
            WriteResult::Rejected(status, body) => {
                st.rejected += 1;
                let what = format!(
                    "POST /counter/{} +{} to node {} answered {status} {body:?} at {}..{} ({})",
                    name(w.name),
                    w.amount,
                    w.node,
                    secs(w.start),
                    secs(w.end),
                    describe_faults(w.start, w.end)
                );
                let refusal = classify(*status, body);
                let excused = match &refusal {
                    // Refused, not acknowledged: owed to no read, lost by none.
                    Refusal::NotMember => {
                        let members = h.members_throughout(n, w.start, w.end);
                        if members.contains(&w.node) {
                            v.push(format!(
                                "G3: {what}, though node {} was an actor of every config in force ({members:?})",
                                w.node
                            ));
                            false
                        } else {
                            st.refused_not_member += 1;
                            true
                        }
                    }
                    Refusal::Storage => {
                        if during_disk_fault(w.start, w.end) {
                            st.refused_storage += 1;
                            true
                        } else {
                            v.push(format!("G10: {what}, with no storage fault in force"));
                            false
                        }
                    }
                    Refusal::Replicas { required, .. } => {
                        if !eligible || short_of_peers(w.node, w.start, w.end, *required) {
                            st.refused_replicas += 1;
                            true
                        } else {
                            v.push(format!(
                                "G3: {what}, though it could reach {required} other actors throughout"
                            ));
                            false
                        }
                    }
                    Refusal::TooFewActors => {
                        if relearning(w.node, w.start) || h.maybe_unconfigured(n, w.node, w.start) {
                            st.refused_no_config += 1;
                            true
                        } else {
                            v.push(format!(
                                "G3: {what}, though it had a config with enough actors"
                            ));
                            false
                        }
                    }
                    Refusal::Other => {
                        v.push(format!("G3: {what}"));
                        false
                    }
                };
                // A refusal that waited for replicas is bounded by the
                // replica deadline, not by G3's latency figures.
                timed = eligible && !excused;
            }
        }
        if timed {
            write_lat.push(w.end - w.start);
        }
    }
    st.write_all = Latency::of(write_lat);

    let mut value_lat_all = Vec::new();
    let mut value_lat_faults = Vec::new();
    let mut value_lat_partitions = Vec::new();
    let mut consistent_lat = Vec::new();
    // (name) -> [(start, end, value)] of 200 consistent reads; (node, name) -> same for value.
    // Reads are compared for going backwards only within one era between
    // wipes (a node's own value restarts with its lost folder).
    let mut consistent_seen: BTreeMap<(usize, usize), Vec<Seen>> = BTreeMap::new();
    let mut value_seen: BTreeMap<(usize, usize, usize), Vec<Seen>> = BTreeMap::new();
    let era = |node: Option<usize>, t: Micros| {
        h.faults
            .iter()
            .filter(|f| f.wiped && f.active_from <= t && node.is_none_or(|n| f.down.contains(&n)))
            .count()
    };
    let excuses = wipe_excuses(h, names.len(), bounds.excuse_wipes);
    let last_fault_end = |t: Micros| {
        h.faults
            .iter()
            .filter(|f| f.begin <= t)
            .map(|f| f.end)
            .max()
    };

    for r in &h.reads {
        let eligible = !disturbed(r.node, r.start, r.end);
        let what = match r.kind {
            ReadKind::Value => format!("value of {:?} on node {}", name(r.name), r.node),
            ReadKind::Consistent { timeout_ms } => format!(
                "consistent_value?timeout={timeout_ms}ms of {:?} on node {}",
                name(r.name),
                r.node
            ),
        };
        let when = When {
            start: r.start,
            end: r.end,
            faults: &h.faults,
        };
        let took = r.end - r.start;

        // G2: nothing beyond what was sent, in any answer.
        let shown = match &r.result {
            ReadResult::Value(x) => Some(*x),
            ReadResult::Unavailable { best, .. } => *best,
            _ => None,
        };
        if let Some(x) = shown
            && x > u128::from(r.sent_at_end)
        {
            v.push(format!(
                "G2: {what} answered {x} but only {} was ever sent by then, at {when}",
                r.sent_at_end
            ));
        }

        match r.kind {
            ReadKind::Value => {
                st.value_reads += 1;
                match &r.result {
                    ReadResult::Value(x) => {
                        value_seen
                            .entry((r.node, r.name, era(Some(r.node), r.start)))
                            .or_default()
                            .push((r.start, r.end, *x));
                    }
                    other if eligible => v.push(format!(
                        "G3: {what} on a running node did not answer 200: {other:?}, at {when}"
                    )),
                    ReadResult::BadAnswer(s, b) => {
                        v.push(format!("G3: {what} answered {s} {b:?}, at {when}"))
                    }
                    _ => {}
                }
                if eligible {
                    value_lat_all.push(took);
                    if during_fault(r.start, r.end) {
                        value_lat_faults.push(took);
                    }
                    if during_partition(r.start, r.end) {
                        value_lat_partitions.push(took);
                    }
                }
            }
            ReadKind::Consistent { timeout_ms } => {
                st.consistent_reads += 1;
                match &r.result {
                    ReadResult::Value(x) => {
                        st.consistent_ok += 1;
                        // G1: every acknowledged increment is in.
                        let owed = r
                            .acked_at_start
                            .saturating_sub(excused(&excuses, r.name, r.start));
                        if *x < u128::from(owed) {
                            v.push(format!(
                                "G1: {what} answered {x} but {owed} had been acknowledged before it started (lost {}), at {when}",
                                u128::from(owed) - x
                            ));
                        }
                        // Without the wipe excuse nothing may vanish with a
                        // folder: consistent reads never go back, across wipes too.
                        let era = if bounds.excuse_wipes {
                            era(None, r.start)
                        } else {
                            0
                        };
                        consistent_seen
                            .entry((r.name, era))
                            .or_default()
                            .push((r.start, r.end, *x));
                    }
                    ReadResult::Unavailable { unreachable, best } => {
                        st.consistent_503 += 1;
                        // A node that lost its folder (config included) and has
                        // not yet relearned the config from its peers, or that
                        // was not given one yet, has no one to name: it may
                        // answer 503 with an empty list.
                        let no_config =
                            relearning(r.node, r.start) || h.maybe_unconfigured(n, r.node, r.start);
                        if (unreachable.is_empty() && !no_config) || best.is_none() {
                            v.push(format!(
                                "G5: {what} answered 503 without a non-empty `unreachable` list and a `best_known_value` ({unreachable:?}, {best:?}), at {when}"
                            ));
                        }
                    }
                    ReadResult::BadAnswer(s, b) => {
                        v.push(format!("G5: {what} answered {s} {b:?}, at {when}"))
                    }
                    ReadResult::Failed(e) => {
                        st.consistent_failed += 1;
                        if eligible {
                            v.push(format!(
                                "G5: {what} on a running node gave no answer ({e}) after {}ms, at {when}",
                                took / 1000
                            ));
                        }
                    }
                }
                if eligible {
                    consistent_lat.push(took);
                    if took > (timeout_ms + bounds.consistent_slack_ms) * 1000 {
                        v.push(format!(
                            "G5: {what} took {}ms, more than its timeout + {}ms, at {when}",
                            took / 1000,
                            bounds.consistent_slack_ms
                        ));
                    }
                    // G5: wholly inside a fault that cuts this node off from
                    // others, it cannot have heard from them: 503 naming them.
                    for f in &h.faults {
                        if !(f.active_from <= r.start && r.end <= f.active_until) {
                            continue;
                        }
                        // Only nodes that were actors of every config in force
                        // during the read must have been heard from.
                        let members = h.members_throughout(n, r.start, r.end);
                        let expected: Vec<usize> = cut_off(r.node, f, n)
                            .into_iter()
                            .filter(|x| members.contains(x))
                            .collect();
                        if expected.is_empty() {
                            continue;
                        }
                        st.strict_g5_reads += 1;
                        let expected_ips: Vec<&str> =
                            expected.iter().map(|&j| ips[j - 1].as_str()).collect();
                        match &r.result {
                            // A node without a config knows no one to name (the
                            // empty list is judged above); its 503 is the answer.
                            ReadResult::Unavailable { unreachable, .. }
                                if unreachable.is_empty()
                                    && (relearning(r.node, r.start)
                                        || h.maybe_unconfigured(n, r.node, r.start)) => {}
                            ReadResult::Unavailable { unreachable, .. } => {
                                let missing: Vec<&str> = expected_ips
                                    .iter()
                                    .copied()
                                    .filter(|ip| !names_ip(unreachable, ip))
                                    .collect();
                                if !missing.is_empty() {
                                    v.push(format!(
                                        "G5: {what} during {} answered 503 but its unreachable list {unreachable:?} misses {missing:?}, at {when}",
                                        f.label
                                    ));
                                }
                                if unreachable.len() > expected.len() {
                                    st.extra_unreachable += 1;
                                }
                            }
                            ReadResult::Value(x) => v.push(format!(
                                "G5: {what} answered 200 ({x}) wholly inside {} [{}..{}], when it cannot have heard from {expected_ips:?}, at {when}",
                                f.label,
                                secs(f.active_from),
                                secs(f.active_until)
                            )),
                            _ => {}
                        }
                    }
                    // G5 liveness: long after the last heal, on a whole
                    // network, a consistent read answers 200.
                    if let ReadResult::Unavailable { unreachable, .. } = &r.result {
                        let whole_since = last_fault_end(r.end).unwrap_or(0);
                        let quiet = !during_fault(r.start, r.end)
                            && r.start >= whole_since + bounds.whole_grace_ms * 1000;
                        if quiet {
                            v.push(format!(
                                "G5: {what} answered 503 (unreachable {unreachable:?}) although the network had been whole and every node running for {}ms, at {when}",
                                (r.start - whole_since) / 1000
                            ));
                        }
                    }
                }
            }
        }
    }
    st.value_all = Latency::of(value_lat_all);
    st.value_during_faults = Latency::of(value_lat_faults);
    st.value_during_partitions = Latency::of(value_lat_partitions);
    st.consistent_all = Latency::of(consistent_lat);

    // G3 latency bounds, on running nodes.
    for (label, lat) in [("value", &st.value_all), ("increment", &st.write_all)] {
        if lat.count > 0 && lat.p99_ms > bounds.p99_ms as f64 {
            v.push(format!(
                "G3: {label} p99 latency on running nodes is {:.1}ms > {}ms ({lat})",
                lat.p99_ms, bounds.p99_ms
            ));
        }
        if lat.max_ms > bounds.max_ms as f64 {
            v.push(format!(
                "G3: slowest {label} on a running node took {:.1}ms > {}ms ({lat})",
                lat.max_ms, bounds.max_ms
            ));
        }
    }

    // Monotonic reads: a read that starts after another ended sees at least as much.
    for ((k, _), seen) in &consistent_seen {
        for msg in backwards(seen) {
            v.push(format!(
                "G1: consistent_value of {:?} went backwards: {msg}",
                name(*k)
            ));
        }
    }
    for ((node, k, _), seen) in &value_seen {
        for msg in backwards(seen) {
            v.push(format!(
                "G7: value of {:?} on node {node} went backwards: {msg}",
                name(*k)
            ));
        }
    }

    // G8: every membership change settles on one config everywhere.
    for c in &h.changes {
        if c.settled.is_none() {
            v.push(format!(
                "G8: after {} [{}..{}] the running nodes did not report one config within the bound",
                c.label,
                secs(c.begin),
                secs(c.end)
            ));
        }
    }
    if let Some((_, first)) = h.final_configs.first() {
        let differ = h
            .final_configs
            .iter()
            .any(|(_, c)| c.is_none() || c != first);
        if differ {
            v.push(format!(
                "G8: after the final heal the running nodes did not all report the same config (version, origin, actors): {:?}",
                h.final_configs
            ));
        }
    }
    // G10: once the space returns, every running node writes again, by itself.
    for d in &h.disk_recoveries {
        for (node, resumed) in &d.resumed {
            match resumed {
                Some(t) if *t <= DISK_RESUME_BOUND => {}
                other => v.push(format!(
                    "G10: node {node} acknowledged no increment within {}s of the space returning at {} ({})",
                    DISK_RESUME_BOUND / 1_000_000,
                    secs(d.freed_at),
                    other.map_or("never".to_string(), |t| format!("after {}", secs(t)))
                )),
            }
        }
        if !d.restarted.is_empty() {
            v.push(format!(
                "G10: nodes {:?} restarted or exited across the full disk at {}; they must resume without a restart",
                d.restarted,
                secs(d.freed_at)
            ));
        }
    }

    Report {
        violations: v,
        stats: st,
    }
}

/// The nodes `from` cannot hear from, by any path, while fault `f` holds:
/// those paused or crashed, and those outside its side of the partition.
/// (A cut link that leaves a path through a third node does not count: a
/// node may relay a read.)
pub fn cut_off(from: usize, f: &FaultRec, n: usize) -> Vec<usize> {
    let up = |x: usize| !f.down.contains(&x);
    let linked = |a: usize, b: usize| !f.cuts.contains(&(a, b)) && !f.cuts.contains(&(b, a));
    let mut reached = vec![false; n + 1];
    reached[from] = true;
    let mut frontier = vec![from];
    while let Some(a) = frontier.pop() {
        for (b, seen) in reached.iter_mut().enumerate().skip(1) {
            if !*seen && up(b) && linked(a, b) {
                *seen = true;
                frontier.push(b);
            }
        }
    }
    (1..=n).filter(|&x| !reached[x]).collect()
}

/// Reads (start, end, value) where a later read saw less than one that ended before it started.
fn backwards(seen: &[Seen]) -> Vec<String> {
    let mut by_end: Vec<(Micros, u128)> = seen.iter().map(|&(_, e, x)| (e, x)).collect();
    by_end.sort_unstable();
    // prefix[i] = the largest value among the i+1 earliest-ending reads, with its end.
    let mut prefix: Vec<(u128, Micros)> = Vec::with_capacity(by_end.len());
    for &(e, x) in &by_end {
        let best = match prefix.last() {
            Some(&(m, me)) if m >= x => (m, me),
            _ => (x, e),
        };
        prefix.push(best);
    }
    let mut out = Vec::new();
    for &(s, e, x) in seen {
        let ended_before = by_end.partition_point(|&(end, _)| end < s);
        if ended_before == 0 {
            continue;
        }
        let (m, me) = prefix[ended_before - 1];
        if m > x {
            out.push(format!(
                "{m} was read by a read that ended at {}, then {x} by one at {}..{}",
                secs(me),
                secs(s),
                secs(e)
            ));
            if out.len() >= 5 {
                break;
            }
        }
    }
    out
}
