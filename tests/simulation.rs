//! Deterministic simulation of a cluster under random faults (see tests/sim).
//!
//! `cargo test --test simulation` runs a fixed set of seeds plus a few fresh
//! ones drawn from the clock; a failure prints each failing seed with the
//! one command that replays it. `TALLY_SIM_SEEDS=N` changes how many fixed
//! seeds run, `TALLY_SIM_FIRST=K` where they start, `TALLY_SIM_FRESH=N` how
//! many fresh ones.

mod sim;

use std::io::Write;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sim::{
    Check, Fault, Outcome, Plan, Planted, Violation, Window, check, fingerprint, run, summary,
};

fn env_u64(key: &str, default: u64) -> u64 {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn replay_command(seed: u64) -> String {
    format!("TALLY_SIM_SEED={seed} cargo test --test simulation replay -- --exact --nocapture")
}

/// Every fourth seed also wipes data folders.
fn plan_for(seed: u64) -> Plan {
    Plan::random(seed, seed.is_multiple_of(4))
}

/// Writes straight to the terminal, past the test harness's capture, so
/// that seeds show up in CI logs even when the test passes.
fn announce(line: &str) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// Runs each seed; panics listing every failing seed with its replay command.
fn run_seeds(seeds: impl IntoIterator<Item = u64>) {
    let mut failures = Vec::new();
    let mut ran = 0;
    for seed in seeds {
        ran += 1;
        let plan = plan_for(seed);
        let history = run(&plan, Planted::None);
        let bad = check(&plan, &history);
        if !bad.is_empty() {
            let lines: Vec<String> = bad.iter().map(Violation::to_string).collect();
            failures.push(format!(
                "seed {seed}: {}\n  {}\n  replay: {}",
                summary(&history),
                lines.join("\n  "),
                replay_command(seed)
            ));
        }
    }
    assert!(ran > 0, "no seed ran");
    assert!(
        failures.is_empty(),
        "{} of {ran} seeds violated a guarantee:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// Every `stride`-th fixed seed from `first + offset`; two tests split the
/// seeds so both cores work.
fn fixed_seeds(offset: u64, stride: u64) -> impl Iterator<Item = u64> {
    let first = env_u64("TALLY_SIM_FIRST", 1);
    let count = env_u64("TALLY_SIM_SEEDS", 200);
    (first + offset..first + count).step_by(stride as usize)
}

#[test]
fn random_faults_never_break_the_guarantees_even_seeds() {
    run_seeds(fixed_seeds(1, 2));
}

#[test]
fn random_faults_never_break_the_guarantees_odd_seeds() {
    run_seeds(fixed_seeds(0, 2));
}

/// SplitMix64: spreads the clock's low-entropy bits over the whole seed.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A few seeds nobody chose, new on every run.
#[test]
fn fresh_seeds_from_the_clock() {
    let count = env_u64("TALLY_SIM_FRESH", 4);
    if count == 0 {
        announce("simulation: no fresh seeds (TALLY_SIM_FRESH=0)");
        return;
    }
    let clock = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_nanos() as u64;
    // Kept below 2^53 so that any tool that reads them as floats keeps them exact.
    let seeds: Vec<u64> = (0..count).map(|k| mix(clock ^ mix(k)) >> 11).collect();
    for &seed in &seeds {
        announce(&format!(
            "simulation: fresh seed {seed}; replay with: {}",
            replay_command(seed)
        ));
    }
    run_seeds(seeds);
}

/// Replays one seed (TALLY_SIM_SEED) and prints its plan and findings.
#[test]
fn replay() {
    if std::env::var_os("TALLY_SIM_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(
                std::env::var("TALLY_SIM_LOG").unwrap_or_default(),
            ))
            .try_init();
    }
    let seed = env_u64("TALLY_SIM_SEED", 7);
    let plan = plan_for(seed);
    let history = run(&plan, Planted::None);
    println!("plan: {plan:#?}");
    println!("{}", summary(&history));
    println!("fingerprint: {}", fingerprint(&history));
    let bad = check(&plan, &history);
    let lines: Vec<String> = bad.iter().map(Violation::to_string).collect();
    assert!(bad.is_empty(), "seed {seed}:\n{}", lines.join("\n"));
}

#[test]
fn a_seed_replays_exactly() {
    // A plan with crashes and a wipe, replayed while another simulation
    // runs on another thread (so tokio's process-wide task ids interleave).
    let plan = plan_for(60);
    assert!(
        plan.faults
            .iter()
            .any(|w| matches!(w.fault, Fault::Crash(_)))
            && plan
                .faults
                .iter()
                .any(|w| matches!(w.fault, Fault::Wipe(_))),
        "the plan crashes and wipes: {plan:#?}"
    );
    let a = run(&plan, Planted::None);
    let other = std::thread::spawn(|| run(&plan_for(5), Planted::None));
    let b = run(&plan, Planted::None);
    let other = other.join().expect("the other simulation ran");
    assert!(a.incs.iter().any(|i| i.acked()), "the workload ran");
    assert_eq!(fingerprint(&a), fingerprint(&b));
    assert_ne!(fingerprint(&a), fingerprint(&other), "seeds differ");
}

// ---------------------------------------------------------------- the checker can fail

fn secs(v: f64) -> Duration {
    Duration::from_secs_f64(v)
}

fn window(start: f64, end: f64, fault: Fault) -> Window {
    Window {
        start: secs(start),
        end: secs(end),
        fault,
    }
}

/// A plan without faults or broken links: concurrent increments on every node.
fn calm(seed: u64) -> Plan {
    Plan {
        faults: Vec::new(),
        fail_rate: 0.0,
        ..Plan::random(seed, false)
    }
}

/// `calm(seed)` with these faults.
fn with_faults(seed: u64, faults: Vec<Window>) -> Plan {
    Plan {
        faults,
        ..calm(seed)
    }
}

/// Runs `plan` with `bug` planted and asserts that `expected` is reported
/// (and, when `only` is set, nothing else), then asserts that the same plan
/// without the bug passes: the finding is the bug's.
fn assert_caught(plan: &Plan, bug: Planted, expected: Check, only: bool) -> Vec<Violation> {
    let bad = check(plan, &run(plan, bug));
    let lines: Vec<String> = bad.iter().map(Violation::to_string).collect();
    assert!(
        bad.iter().any(|v| v.check == expected),
        "{bug:?} went unnoticed by {expected:?}: {lines:#?}"
    );
    if only {
        assert!(
            bad.iter().all(|v| v.check == expected),
            "{bug:?} tripped more than {expected:?}: {lines:#?}"
        );
    }
    let clean: Vec<String> = check(plan, &run(plan, Planted::None))
        .iter()
        .map(Violation::to_string)
        .collect();
    assert!(
        clean.is_empty(),
        "the plan fails without {bug:?}: {clean:#?}"
    );
    bad
}

#[test]
fn the_checker_catches_merging_totals_by_maximum() {
    let plan = calm(11);
    let bad = check(&plan, &run(&plan, Planted::TotalsByMaximum));
    assert!(
        bad.iter()
            .any(|v| matches!(v.check, Check::G1Read | Check::G1Final | Check::G2)),
        "the planted bug went unnoticed: {bad:?}"
    );
    assert!(check(&plan, &run(&plan, Planted::None)).is_empty());
}

#[test]
fn the_checker_catches_acknowledging_before_committing() {
    // n1 is cut off (so what it acknowledges stays on it), then crashes.
    let plan = with_faults(
        12,
        vec![
            window(2.0, 8.0, Fault::Isolate(0)),
            window(8.0, 9.0, Fault::Crash(0)),
        ],
    );
    assert_caught(&plan, Planted::AckBeforeCommit, Check::G1Final, false);
}

#[test]
fn the_checker_catches_a_read_that_skips_a_node() {
    // n2 is cut off and keeps acknowledging; reads elsewhere "hear" an empty
    // counter from it and answer 200 without its increments.
    let plan = with_faults(13, vec![window(2.0, 12.0, Fault::Isolate(1))]);
    assert_caught(&plan, Planted::ReadSkips(1), Check::G1Read, false);
}

#[test]
fn the_checker_catches_invented_increments() {
    assert_caught(&calm(14), Planted::Inflate, Check::G2, false);
}

#[test]
fn the_checker_catches_late_convergence() {
    let plan = calm(15);
    // Replication resumes 11 s after the heal: the nodes agree late, not never.
    let bad = assert_caught(
        &plan,
        Planted::SyncLate(plan.heal_at + Duration::from_secs(11)),
        Check::G4Late,
        true,
    );
    assert!(bad.iter().all(|v| v.check != Check::G4Never));
}

#[test]
fn the_checker_catches_reads_past_their_deadline() {
    // n1 is paused: reads that need it end only at their deadline.
    let plan = with_faults(16, vec![window(2.0, 14.0, Fault::Pause(0))]);
    assert_caught(&plan, Planted::LongReads, Check::G5Deadline, false);
}

/// The prototype's bug, calls without deadlines, does not stretch a
/// consistent read: the read keeps its own deadline whatever its calls do.
#[test]
fn reads_keep_their_deadline_over_calls_without_one() {
    let plan = with_faults(16, vec![window(2.0, 14.0, Fault::Pause(0))]);
    let bad: Vec<String> = check(&plan, &run(&plan, Planted::NoDeadline))
        .iter()
        .filter(|v| v.check == Check::G5Deadline)
        .map(Violation::to_string)
        .collect();
    assert!(bad.is_empty(), "{bad:#?}");
}

#[test]
fn the_checker_catches_consistent_reads_that_always_fail() {
    let plan = calm(17);
    let bad = assert_caught(&plan, Planted::ReadsFail, Check::Liveness, false);
    let live = bad.iter().filter(|v| v.check == Check::Liveness).count();
    assert_eq!(
        live, plan.nodes,
        "one liveness violation per node: {bad:#?}"
    );
}

#[test]
fn the_checker_catches_increments_that_wait_for_peers() {
    // While n1 is cut off, increments on every node wait for a peer they
    // cannot reach; after the heal they succeed again.
    let plan = with_faults(18, vec![window(3.0, 9.0, Fault::Isolate(0))]);
    assert_caught(&plan, Planted::AckAfterPeers, Check::G3, true);
}

#[test]
fn the_checker_catches_a_node_that_never_acknowledges() {
    let plan = calm(19);
    let bad = assert_caught(&plan, Planted::NeverAck, Check::Liveness, false);
    let live = bad.iter().filter(|v| v.check == Check::Liveness).count();
    assert_eq!(
        live, plan.nodes,
        "one liveness violation per node: {bad:#?}"
    );
}

// ---------------------------------------------------------------- overlapping faults

#[test]
fn overlapping_partitions_hold_until_the_last_one_ends() {
    // n1 isolated from 2 s to 8 s and, overlapping, split from everyone
    // from 5 s to 16 s, with a pause of n3 and a crash of n2 on top. Ending
    // the isolation at 8 s must not heal n1: consistent reads on n2 and n3
    // in between must still fail to hear from it.
    let plan = Plan {
        nodes: 3,
        ..with_faults(
            20,
            vec![
                window(2.0, 8.0, Fault::Isolate(0)),
                window(5.0, 16.0, Fault::Halves(vec![0])),
                window(6.0, 7.5, Fault::Pause(2)),
                window(9.0, 11.0, Fault::Crash(1)),
            ],
        )
    };
    let history = run(&plan, Planted::None);
    let bad: Vec<String> = check(&plan, &history)
        .iter()
        .map(Violation::to_string)
        .collect();
    assert!(bad.is_empty(), "{bad:#?}");
    let inside =
        |r: &&sim::Read| r.consistent && r.node != 0 && r.start >= secs(8.1) && r.end <= secs(15.9);
    let reads: Vec<&sim::Read> = history.reads.iter().filter(inside).collect();
    assert!(
        reads.len() >= 2,
        "too few consistent reads fell inside the second partition: {reads:#?}"
    );
    for r in reads {
        match &r.outcome {
            Outcome::Unavailable { unreachable, .. } => assert!(
                unreachable.iter().any(|u| u.starts_with("n1:")),
                "{r:?} did not name n1"
            ),
            other => assert!(
                matches!(other, Outcome::Broken | Outcome::Lost(_)),
                "a read inside the partition answered {other:?}: {r:?}"
            ),
        }
    }
}
