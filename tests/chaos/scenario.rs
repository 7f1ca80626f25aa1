//! A scripted scenario on the real network: the membership change that used
//! to lose acknowledged increments.
//!
//! Four nodes under a steady increment load. Node 4 is cut off (nftables)
//! and keeps acknowledging increments alone; a config without node 4 is
//! posted to node 1 while it is still cut off; the network heals. Before the
//! hand-off existed, members stopped asking node 4 at once, so consistent
//! reads answered without what node 4 had acknowledged alone, and nothing
//! ever pulled it from node 4.
//!
//! Asserted: every increment acknowledged anywhere (node 4's included) is in
//! every consistent read on a member that starts after it, and in the
//! converged values; node 4 answers 409 to increments once it has the new
//! config (and those change nothing); every member's `/status` shows node
//! 4's hand-off confirmed within a bound; then, node 4 paused, consistent
//! reads on members still answer 200.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::client::{Client, Outcome};
use super::harness::{Harness, Setup, cannot_run, missing_prerequisite, node_binary, serial};
use super::rng::Rng;

const NODES: usize = 4;
const NAMES: [&str; 4] = ["h0", "h1", "h2", "h3"];
const WRITERS: usize = 3;
const READERS: usize = 2;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
const POLL: Duration = Duration::from_millis(50);
/// How long node 4 acknowledges increments alone before the config changes.
const ALONE: Duration = Duration::from_millis(1500);
/// Node 4 stays cut off this much longer, not knowing it was removed.
const ALONE_AFTER_POST: Duration = Duration::from_millis(500);
/// Bound on node 4 learning the new config, and on members reporting its
/// hand-off confirmed, counted from the heal.
const HANDOFF_BOUND: Duration = Duration::from_secs(10);
/// Bound on members converging after the hand-off.
const CONVERGE_BOUND: Duration = Duration::from_secs(10);

#[derive(Clone, Debug)]
enum Answer {
    Acked,
    Refused(u16, String),
    Uncertain(String),
}

#[derive(Clone, Debug)]
struct Write {
    node: usize,
    amount: u64,
    start: Duration,
    answer: Answer,
}

#[derive(Clone, Debug)]
struct Read {
    node: usize,
    name: usize,
    start: Duration,
    end: Duration,
    acked_at_start: u64,
    outcome: Outcome,
}

struct World {
    epoch: Instant,
    ips: Vec<String>,
    acked: Vec<AtomicU64>,
    sent: Vec<AtomicU64>,
    /// Amounts answered with an error by a node (not applied).
    refused: Vec<AtomicU64>,
    stop: AtomicBool,
    /// Writers send to node 4 only while this holds.
    to_node4: AtomicBool,
    writes: Mutex<Vec<Write>>,
    reads: Mutex<Vec<Read>>,
}

impl World {
    fn url(&self, node: usize, path: &str) -> String {
        format!("http://{}:7777{path}", self.ips[node - 1])
    }

    fn now(&self) -> Duration {
        self.epoch.elapsed()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Polls `cond` until it yields a value or `bound` passes.
fn poll<T>(bound: Duration, mut cond: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + bound;
    for _ in 0..bound.as_millis() / POLL.as_millis() + 2 {
        if let Some(v) = cond() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            break;
        }
        std::thread::sleep(POLL);
    }
    None
}

fn status(client: &Client, world: &World, node: usize) -> Option<serde_json::Value> {
    match client
        .get(&world.url(node, "/status"), Duration::from_secs(1))
        .0
    {
        Outcome::Answer(200, body) => serde_json::from_str(&body).ok(),
        _ => None,
    }
}

fn actors_of(json: &serde_json::Value) -> Vec<String> {
    let mut v: Vec<String> = json
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn parse(body: &str) -> Option<u64> {
    (!body.is_empty() && body.bytes().all(|b| b.is_ascii_digit()))
        .then(|| body.parse().ok())
        .flatten()
}

fn writer(world: &World, mut rng: Rng) {
    let client = Client::new();
    for _ in 0..1_000_000u32 {
        if world.stop.load(Ordering::SeqCst) {
            break;
        }
        let last = if world.to_node4.load(Ordering::SeqCst) {
            NODES
        } else {
            NODES - 1
        };
        let node = 1 + rng.index(last);
        let name = rng.index(NAMES.len());
        let amount = rng.range(1, 5);
        world.sent[name].fetch_add(amount, Ordering::SeqCst);
        let start = world.now();
        let outcome = client
            .post(
                &world.url(node, &format!("/counter/{}", NAMES[name])),
                &amount.to_string(),
                REQUEST_TIMEOUT,
            )
            .0;
        let answer = match outcome {
            Outcome::Answer(200, body) if parse(&body).is_some() => {
                world.acked[name].fetch_add(amount, Ordering::SeqCst);
                Answer::Acked
            }
            Outcome::Answer(status, body) => {
                world.refused[name].fetch_add(amount, Ordering::SeqCst);
                Answer::Refused(status, body)
            }
            Outcome::Failed(e) => Answer::Uncertain(e),
        };
        lock(&world.writes).push(Write {
            node,
            amount,
            start,
            answer,
        });
        std::thread::sleep(Duration::from_millis(rng.range(0, 4)));
    }
}

/// Consistent reads on members (nodes 1 to 3).
fn reader(world: &World, mut rng: Rng) {
    let client = Client::new();
    for _ in 0..1_000_000u32 {
        if world.stop.load(Ordering::SeqCst) {
            break;
        }
        let node = 1 + rng.index(NODES - 1);
        let name = rng.index(NAMES.len());
        let acked_at_start = world.acked[name].load(Ordering::SeqCst);
        let start = world.now();
        let outcome = client
            .get(
                &world.url(
                    node,
                    &format!("/counter/{}/consistent_value?timeout=1s", NAMES[name]),
                ),
                Duration::from_secs(4),
            )
            .0;
        lock(&world.reads).push(Read {
            node,
            name,
            start,
            end: world.now(),
            acked_at_start,
            outcome,
        });
        std::thread::sleep(Duration::from_millis(rng.range(2, 10)));
    }
}

pub fn handoff() {
    if let Some(why) = missing_prerequisite(false) {
        cannot_run(&why);
        return;
    }
    let _serial = serial();
    let bin = node_binary();
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    eprintln!(
        "handoff: node binary {}; workload seed {seed}",
        bin.display()
    );
    let setup = Setup {
        nodes: NODES,
        ..Setup::default()
    };
    let h = match Harness::new(&setup, bin) {
        Ok(h) => h,
        Err(e) => {
            cannot_run(&format!("cannot build the test network: {e}"));
            return;
        }
    };
    let ips: Vec<String> = (1..=NODES).map(|i| h.lab.node_ip(i)).collect();
    let addr = |i: usize| format!("{}:7777", ips[i - 1]);
    let world = World {
        epoch: Instant::now(),
        ips: ips.clone(),
        acked: NAMES.iter().map(|_| AtomicU64::new(0)).collect(),
        sent: NAMES.iter().map(|_| AtomicU64::new(0)).collect(),
        refused: NAMES.iter().map(|_| AtomicU64::new(0)).collect(),
        stop: AtomicBool::new(false),
        to_node4: AtomicBool::new(true),
        writes: Mutex::new(Vec::new()),
        reads: Mutex::new(Vec::new()),
    };
    let client = Client::new();
    let mut failures: Vec<String> = Vec::new();

    for i in 1..=NODES {
        h.nodes().spawn(i).unwrap_or_else(|e| panic!("{e}"));
    }
    for i in 1..=NODES {
        assert!(
            poll(Duration::from_secs(20), || status(&client, &world, i)).is_some(),
            "node {i} did not answer /status\n{}",
            h.logs(30)
        );
    }
    let all: Vec<String> = (1..=NODES).map(addr).collect();
    let post = |actors: &[String]| {
        client
            .post(
                &world.url(1, "/config"),
                &serde_json::json!({ "actors": actors }).to_string(),
                Duration::from_secs(5),
            )
            .0
    };
    match post(&all) {
        Outcome::Answer(200, _) => {}
        other => panic!("POST /config failed: {other:?}\n{}", h.logs(30)),
    }
    for i in 1..=NODES {
        let ok = poll(Duration::from_secs(10), || {
            let s = status(&client, &world, i)?;
            (actors_of(&s["config"]["actors"]) == all
                && s["self"].as_str() == Some(addr(i).as_str()))
            .then_some(())
        });
        assert!(ok.is_some(), "node {i} did not learn the first config");
    }
    for i in 1..=NODES {
        let ok = poll(Duration::from_secs(10), || {
            matches!(
                client
                    .get(
                        &world.url(i, "/counter/h0/consistent_value"),
                        Duration::from_secs(4)
                    )
                    .0,
                Outcome::Answer(200, _)
            )
            .then_some(())
        });
        assert!(
            ok.is_some(),
            "no consistent read on node {i} of a fresh cluster"
        );
    }

    let mut rng = Rng::new(seed);
    let mut node4_alone_units = 0u64;
    let mut t_learned = None;
    std::thread::scope(|s| {
        for _ in 0..WRITERS {
            let r = rng.fork();
            s.spawn(|| writer(&world, r));
        }
        for _ in 0..READERS {
            let r = rng.fork();
            s.spawn(|| reader(&world, r));
        }
        // Stops the workload however this scope ends.
        struct StopOnDrop<'a>(&'a AtomicBool);
        impl Drop for StopOnDrop<'_> {
            fn drop(&mut self) {
                self.0.store(true, Ordering::SeqCst);
            }
        }
        let _stop = StopOnDrop(&world.stop);

        std::thread::sleep(Duration::from_secs(1));
        let cut_at = world.now();
        h.lab
            .partition(&[(4, 1), (4, 2), (4, 3)])
            .unwrap_or_else(|e| panic!("{e}"));
        eprintln!("handoff: {:.3}s node 4 cut off", cut_at.as_secs_f64());
        std::thread::sleep(ALONE);
        let members: Vec<String> = (1..NODES).map(addr).collect();
        let posted_at = world.now();
        let answer = post(&members);
        eprintln!(
            "handoff: {:.3}s config without node 4 posted to node 1: {answer:?}",
            posted_at.as_secs_f64()
        );
        match &answer {
            Outcome::Answer(200, body) => {
                let json: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
                let leaving = &json["leaving"];
                let listed = leaving.as_array().is_some_and(|l| {
                    l.iter()
                        .any(|x| x["actor"] == addr(4).as_str() && x["handed_off"] == false)
                });
                if !listed {
                    failures.push(format!(
                        "POST /config does not list node 4 as leaving without a hand-off: {body}"
                    ));
                }
            }
            other => failures.push(format!("POST /config without node 4 answered {other:?}")),
        }
        std::thread::sleep(ALONE_AFTER_POST);
        let healed_at = world.now();
        h.lab.heal().unwrap_or_else(|e| panic!("{e}"));
        eprintln!("handoff: {:.3}s healed", healed_at.as_secs_f64());
        node4_alone_units = lock(&world.writes)
            .iter()
            .filter(|w| w.node == 4 && matches!(w.answer, Answer::Acked) && w.start >= cut_at)
            .map(|w| w.amount)
            .sum();

        // Node 4 learns the config, then refuses increments.
        let learned = poll(HANDOFF_BOUND, || {
            let s = status(&client, &world, 4)?;
            (actors_of(&s["config"]["actors"]) == members).then(|| world.now())
        });
        match learned {
            Some(t) => {
                eprintln!(
                    "handoff: {:.3}s node 4 reports the new config ({:.0}ms after the heal)",
                    t.as_secs_f64(),
                    (t - healed_at).as_secs_f64() * 1e3
                );
                t_learned = Some(t);
            }
            None => failures.push(format!(
                "node 4 did not report the config without it within {HANDOFF_BOUND:?} of the heal: {:?}",
                status(&client, &world, 4).map(|s| s["config"].clone())
            )),
        }
        match client
            .post(&world.url(4, "/counter/h0"), "1", REQUEST_TIMEOUT)
            .0
        {
            Outcome::Answer(409, body) => {
                world.refused[0].fetch_add(1, Ordering::SeqCst);
                let json: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
                if !json["error"].is_string() || actors_of(&json["actors"]) != members {
                    failures.push(format!(
                        "node 4's 409 does not carry an error and the actors {members:?}: {body}"
                    ));
                }
            }
            Outcome::Answer(200, _) => {
                world.acked[0].fetch_add(1, Ordering::SeqCst);
                failures.push(
                    "node 4, removed from the config, acknowledged an increment (200) instead of 409"
                        .into(),
                );
            }
            other => failures.push(format!(
                "an increment to node 4 after it left answered {other:?}, not 409"
            )),
        }
        world.sent[0].fetch_add(1, Ordering::SeqCst);

        // Members report the hand-off confirmed.
        let confirmed = poll(HANDOFF_BOUND, || {
            for i in 1..NODES {
                let s = status(&client, &world, i)?;
                let done = s["config"]["leaving"].as_array().is_some_and(|l| {
                    l.iter()
                        .any(|x| x["actor"] == addr(4).as_str() && x["handed_off"] == true)
                });
                let read_set = actors_of(&s["config"]["read_set"]);
                if !done || read_set != members {
                    return None;
                }
            }
            Some(world.now())
        });
        match confirmed {
            Some(t) => eprintln!(
                "handoff: {:.3}s every member reports node 4's hand-off confirmed ({:.0}ms after the heal)",
                t.as_secs_f64(),
                (t - healed_at).as_secs_f64() * 1e3
            ),
            None => failures.push(format!(
                "members did not report node 4's hand-off confirmed within {HANDOFF_BOUND:?} of the heal: {:?}",
                (1..NODES)
                    .map(|i| status(&client, &world, i).map(|s| s["config"].clone()))
                    .collect::<Vec<_>>()
            )),
        }
        std::thread::sleep(Duration::from_secs(1));
        world.to_node4.store(false, Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(500));
    });
    let end_of_load = world.now();

    let acked: Vec<u64> = world
        .acked
        .iter()
        .map(|a| a.load(Ordering::SeqCst))
        .collect();
    let sent: Vec<u64> = world
        .sent
        .iter()
        .map(|a| a.load(Ordering::SeqCst))
        .collect();
    let refused: Vec<u64> = world
        .refused
        .iter()
        .map(|a| a.load(Ordering::SeqCst))
        .collect();
    let writes = std::mem::take(&mut *lock(&world.writes));
    let reads = std::mem::take(&mut *lock(&world.reads));

    if node4_alone_units == 0 {
        failures
            .push("node 4 acknowledged nothing while cut off: the scenario proves nothing".into());
    }
    // Node 4 refuses every increment that starts once it reports the new config.
    if let Some(t) = t_learned {
        let wrong: Vec<&Write> = writes
            .iter()
            .filter(|w| w.node == 4 && w.start >= t)
            .filter(|w| !matches!(&w.answer, Answer::Refused(409, _)))
            .collect();
        for w in wrong.iter().take(3) {
            failures.push(format!(
                "node 4 answered {:?} to +{} at {:.3}s, after it reported the config without it; it must refuse with 409",
                w.answer,
                w.amount,
                w.start.as_secs_f64()
            ));
        }
        if wrong.len() > 3 {
            failures.push(format!(
                "... node 4 answered {} increments in all with something else than 409 after it reported the config without it ({} units acknowledged)",
                wrong.len(),
                wrong
                    .iter()
                    .filter(|w| matches!(w.answer, Answer::Acked))
                    .map(|w| w.amount)
                    .sum::<u64>()
            ));
        }
    }
    for w in &writes {
        if let Answer::Refused(status, body) = &w.answer
            && !(w.node == 4 && *status == 409)
        {
            failures.push(format!(
                "node {} refused +{} with {status} {body} at {:.3}s",
                w.node,
                w.amount,
                w.start.as_secs_f64()
            ));
        }
    }
    // G3: every node runs throughout the load, so every increment is answered.
    for w in writes
        .iter()
        .filter(|w| matches!(w.answer, Answer::Uncertain(_)))
        .take(3)
    {
        failures.push(format!(
            "G3: +{} to running node {} got no answer at {:.3}s: {:?}",
            w.amount,
            w.node,
            w.start.as_secs_f64(),
            w.answer
        ));
    }
    // G1 over every consistent read on a member.
    let mut ok_reads = 0;
    let mut lost_reads = 0;
    let mut max_lost = 0u64;
    for r in &reads {
        if let Outcome::Answer(200, body) = &r.outcome {
            ok_reads += 1;
            let v = parse(body).unwrap_or(0);
            if v < r.acked_at_start {
                lost_reads += 1;
                max_lost = max_lost.max(r.acked_at_start - v);
                if lost_reads <= 5 {
                    failures.push(format!(
                        "G1: consistent_value of {} on node {} at {:.3}s..{:.3}s answered {v} but {} had been acknowledged before it started (lost {})",
                        NAMES[r.name],
                        r.node,
                        r.start.as_secs_f64(),
                        r.end.as_secs_f64(),
                        r.acked_at_start,
                        r.acked_at_start - v
                    ));
                }
            }
        }
    }
    if lost_reads > 5 {
        failures.push(format!(
            "G1: ... {lost_reads} consistent reads in all missed acknowledged increments (up to {max_lost} units)"
        ));
    }

    // Members converge on values that hold every acknowledged increment and
    // none of the refused ones.
    let mut finals = Vec::new();
    for (k, name) in NAMES.iter().enumerate() {
        let hi = sent[k] - refused[k];
        let mut last = Vec::new();
        let converged = poll(CONVERGE_BOUND, || {
            last = (1..NODES)
                .map(|i| {
                    match client
                        .get(
                            &world.url(i, &format!("/counter/{name}/value")),
                            REQUEST_TIMEOUT,
                        )
                        .0
                    {
                        Outcome::Answer(200, b) => parse(&b),
                        _ => None,
                    }
                })
                .collect::<Vec<_>>();
            let first = last[0]?;
            last.iter().all(|v| *v == Some(first)).then_some(first)
        });
        match converged {
            Some(v) if v >= acked[k] && v <= hi => finals.push(v),
            Some(v) => failures.push(format!(
                "members converged on {name} = {v}, outside acknowledged..=sent-refused = {}..={hi} (lost {})",
                acked[k],
                acked[k].saturating_sub(v)
            )),
            None => failures.push(format!(
                "members did not converge on {name} within {CONVERGE_BOUND:?}: {last:?}"
            )),
        }
    }

    // Node 4 paused: members no longer need it.
    h.nodes().pause(4).unwrap_or_else(|e| panic!("{e}"));
    let paused_at = world.now();
    for i in 1..NODES {
        for (k, name) in NAMES.iter().enumerate() {
            let outcome = client
                .get(
                    &world.url(i, &format!("/counter/{name}/consistent_value?timeout=3s")),
                    Duration::from_secs(6),
                )
                .0;
            match &outcome {
                Outcome::Answer(200, body) if parse(body).is_some_and(|v| v >= acked[k]) => {}
                other => failures.push(format!(
                    "with node 4 paused after its hand-off, consistent_value of {name} on node {i} answered {other:?}; it must be 200 and ≥ {} acknowledged",
                    acked[k]
                )),
            }
        }
    }
    let paused_reads = world.now() - paused_at;
    let _ = h.nodes().resume(4);

    let node4_acked: u64 = writes
        .iter()
        .filter(|w| w.node == 4 && matches!(w.answer, Answer::Acked))
        .map(|w| w.amount)
        .sum();
    let uncertain: Vec<&String> = writes
        .iter()
        .filter_map(|w| match &w.answer {
            Answer::Uncertain(e) => Some(e),
            _ => None,
        })
        .collect();
    let node4_refused = writes
        .iter()
        .filter(|w| w.node == 4 && matches!(w.answer, Answer::Refused(409, _)))
        .count();
    eprintln!(
        "\n===== hand-off scenario summary =====\n\
         increments: {} sent, {} acknowledged ({} units by node 4, {node4_alone_units} of them while it was cut off), {} refused by node 4 with 409, {} unanswered {:?}\n\
         consistent reads on members: {} ({} × 200, {lost_reads} missing acknowledged increments)\n\
         final values on members: {finals:?} (acknowledged {acked:?}, sent {sent:?}, refused {refused:?})\n\
         load ran {:.1}s; consistent reads with node 4 paused took {:.0}ms in all\n\
         violations: {}\n",
        writes.len(),
        writes
            .iter()
            .filter(|w| matches!(w.answer, Answer::Acked))
            .count(),
        node4_acked,
        node4_refused,
        uncertain.len(),
        uncertain.iter().take(3).collect::<Vec<_>>(),
        reads.len(),
        ok_reads,
        end_of_load.as_secs_f64(),
        paused_reads.as_secs_f64() * 1e3,
        failures.len()
    );
    if !failures.is_empty() {
        eprintln!("{}", h.logs(25));
        panic!(
            "hand-off scenario: {} violation(s):\n  {}",
            failures.len(),
            failures.join("\n  ")
        );
    }
}

/// A node removed, handed off, re-added, then cut off while it acknowledges
/// increments alone, and removed again: its second departure must make it
/// a leaver again (its hand-off under the earlier config covered only what
/// it held then). Asserted: the second POST /config names it leaving
/// without a hand-off, and no consistent read on a member answers 200
/// without the increments it acknowledged alone.
pub fn readd_after_handoff() {
    if let Some(why) = missing_prerequisite(false) {
        cannot_run(&why);
        return;
    }
    let _serial = serial();
    let bin = node_binary();
    eprintln!("readd: node binary {}", bin.display());
    const N: usize = 3;
    let setup = Setup {
        nodes: N,
        ..Setup::default()
    };
    let h = match Harness::new(&setup, bin) {
        Ok(h) => h,
        Err(e) => {
            cannot_run(&format!("cannot build the test network: {e}"));
            return;
        }
    };
    let ips: Vec<String> = (1..=N).map(|i| h.lab.node_ip(i)).collect();
    let addr = |i: usize| format!("{}:7777", ips[i - 1]);
    let world = World {
        epoch: Instant::now(),
        ips: ips.clone(),
        acked: vec![AtomicU64::new(0)],
        sent: vec![AtomicU64::new(0)],
        refused: vec![AtomicU64::new(0)],
        stop: AtomicBool::new(false),
        to_node4: AtomicBool::new(false),
        writes: Mutex::new(Vec::new()),
        reads: Mutex::new(Vec::new()),
    };
    let client = Client::new();
    for i in 1..=N {
        h.nodes().spawn(i).unwrap_or_else(|e| panic!("{e}"));
    }
    for i in 1..=N {
        assert!(
            poll(Duration::from_secs(20), || status(&client, &world, i)).is_some(),
            "node {i} did not answer /status"
        );
    }
    let post = |nodes: &[usize]| -> serde_json::Value {
        let actors: Vec<String> = nodes.iter().map(|&i| addr(i)).collect();
        match client
            .post(
                &world.url(1, "/config"),
                &serde_json::json!({ "actors": actors }).to_string(),
                Duration::from_secs(5),
            )
            .0
        {
            Outcome::Answer(200, body) => serde_json::from_str(&body).unwrap_or_default(),
            other => panic!("POST /config {nodes:?} to node 1 answered {other:?}"),
        }
    };
    // Every node in `on` reports a config with exactly `actors`.
    let settled = |on: &[usize], actors: &[usize]| {
        let mut want: Vec<String> = actors.iter().map(|&i| addr(i)).collect();
        want.sort();
        let ok = poll(Duration::from_secs(10), || {
            on.iter()
                .all(|&i| {
                    status(&client, &world, i)
                        .is_some_and(|s| actors_of(&s["config"]["actors"]) == want)
                })
                .then_some(())
        });
        assert!(
            ok.is_some(),
            "nodes {on:?} did not all report actors {actors:?}"
        );
    };
    let incr = |node: usize, amount: u64| -> bool {
        let ok = matches!(
            client
                .post(
                    &world.url(node, "/counter/r"),
                    &amount.to_string(),
                    REQUEST_TIMEOUT
                )
                .0,
            Outcome::Answer(200, _)
        );
        if ok {
            world.acked[0].fetch_add(amount, Ordering::SeqCst);
        }
        ok
    };

    post(&[1, 2, 3]);
    settled(&[1, 2, 3], &[1, 2, 3]);
    assert!(incr(3, 1), "node 3 acknowledges an increment");
    // Node 3 leaves and hands off.
    post(&[1, 2]);
    let handed_off = poll(HANDOFF_BOUND, || {
        let s = status(&client, &world, 1)?;
        s["config"]["leaving"]
            .as_array()?
            .iter()
            .any(|x| x["actor"] == addr(3).as_str() && x["handed_off"] == true)
            .then_some(())
    });
    assert!(
        handed_off.is_some(),
        "node 3's first hand-off was not confirmed"
    );
    settled(&[1, 2, 3], &[1, 2]);
    // Node 3 comes back as an actor.
    post(&[1, 2, 3]);
    settled(&[1, 2, 3], &[1, 2, 3]);
    let back = poll(Duration::from_secs(10), || {
        (status(&client, &world, 3)?["role"] == "member").then_some(())
    });
    assert!(back.is_some(), "node 3 is not a member again");
    // Cut off, it acknowledges increments alone.
    h.lab
        .partition(&[(3, 1), (3, 2)])
        .unwrap_or_else(|e| panic!("{e}"));
    let mut alone = 0;
    for _ in 0..10 {
        if incr(3, 7) {
            alone += 7;
        }
    }
    assert!(alone > 0, "node 3 acknowledged nothing while cut off");
    let acked = world.acked[0].load(Ordering::SeqCst);
    // It is removed again while cut off.
    let answer = post(&[1, 2]);
    let mut failures = Vec::new();
    let leaving = answer["leaving"].as_array().is_some_and(|l| {
        l.iter()
            .any(|x| x["actor"] == addr(3).as_str() && x["handed_off"] == false)
    });
    if !leaving {
        failures.push(format!(
            "POST /config [1, 2] does not name node 3 as leaving without a hand-off, though it acknowledged {alone} units since it was re-added: {answer}"
        ));
    }
    for node in [1, 2] {
        match client
            .get(
                &world.url(node, "/counter/r/consistent_value?timeout=1s"),
                Duration::from_secs(4),
            )
            .0
        {
            Outcome::Answer(200, body) => {
                let v = parse(&body).unwrap_or(0);
                if v < acked {
                    failures.push(format!(
                        "G1: consistent_value of r on node {node}, node 3 cut off, answered {v} but {acked} had been acknowledged (lost {}: what node 3 acknowledged alone)",
                        acked - v
                    ));
                }
            }
            Outcome::Answer(503, _) => {}
            other => failures.push(format!(
                "consistent_value of r on node {node} answered {other:?}"
            )),
        }
    }
    h.lab.heal().unwrap_or_else(|e| panic!("{e}"));
    // Once the network heals, consistent reads on members include them (the
    // hand-off pulls them), within a bound.
    let mut last = None;
    let healed = poll(HANDOFF_BOUND, || {
        last = match client
            .get(
                &world.url(1, "/counter/r/consistent_value?timeout=1s"),
                Duration::from_secs(4),
            )
            .0
        {
            Outcome::Answer(200, body) => parse(&body),
            _ => None,
        };
        last.filter(|v| *v >= acked)
    });
    if healed.is_none() {
        failures.push(format!(
            "G1: {HANDOFF_BOUND:?} after the heal, consistent_value of r on node 1 is still {last:?} < {acked} acknowledged"
        ));
    }
    eprintln!(
        "readd: node 3 acknowledged {alone} units alone; second removal answered leaving={}",
        answer["leaving"]
    );
    if !failures.is_empty() {
        eprintln!("{}", h.logs(20));
        panic!(
            "re-added node: {} violation(s):\n  {}",
            failures.len(),
            failures.join("\n  ")
        );
    }
}
