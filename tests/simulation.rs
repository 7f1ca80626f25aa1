//! Deterministic simulation of a cluster under random faults (see tests/sim).
//!
//! `cargo test --test simulation` runs many seeds; a failure prints the one
//! command that replays its seed. `TALLY_SIM_SEEDS=N` changes how many,
//! `TALLY_SIM_FIRST=K` where they start.

mod sim;

use std::time::Duration;

use sim::{Fault, Plan, Planted, Window, check, fingerprint, run, summary};

fn env_u64(key: &str, default: u64) -> u64 {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn replay_command(seed: u64) -> String {
    format!("TALLY_SIM_SEED={seed} cargo test --release --test simulation replay -- --nocapture")
}

/// Every fourth seed also wipes data folders.
fn plan_for(seed: u64) -> Plan {
    Plan::random(seed, seed.is_multiple_of(4))
}

/// Runs every `stride`-th seed from `first + offset`; two tests split the
/// seeds so both cores work.
fn run_seeds(offset: u64, stride: u64) {
    let first = env_u64("TALLY_SIM_FIRST", 1);
    let count = env_u64("TALLY_SIM_SEEDS", 300);
    let mut failures = Vec::new();
    let mut ran = 0;
    for seed in (first + offset..first + count).step_by(stride as usize) {
        ran += 1;
        let plan = plan_for(seed);
        let history = run(&plan, Planted::None);
        let bad = check(&plan, &history);
        if !bad.is_empty() {
            failures.push(format!(
                "seed {seed}: {}\n  {}\n  replay: {}",
                summary(&history),
                bad.join("\n  "),
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

#[test]
fn random_faults_never_break_the_guarantees_even_seeds() {
    run_seeds(1, 2);
}

#[test]
fn random_faults_never_break_the_guarantees_odd_seeds() {
    run_seeds(0, 2);
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
    let bad = check(&plan, &history);
    assert!(bad.is_empty(), "seed {seed}:\n{}", bad.join("\n"));
}

#[test]
fn a_seed_replays_exactly() {
    // A plan with crashes and a wipe, replayed while another simulation
    // runs on another thread (so tokio's process-wide task ids interleave).
    let plan = plan_for(48);
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
    assert!(!a.incs.is_empty(), "the workload ran");
    assert_eq!(fingerprint(&a), fingerprint(&b));
    assert_ne!(fingerprint(&a), fingerprint(&other), "seeds differ");
}

/// A plan without faults: concurrent increments on every node.
fn calm(seed: u64) -> Plan {
    Plan {
        faults: Vec::new(),
        fail_rate: 0.0,
        ..Plan::random(seed, false)
    }
}

#[test]
fn the_checker_catches_merging_totals_by_maximum() {
    let plan = calm(11);
    let bad = check(&plan, &run(&plan, Planted::TotalsByMaximum));
    assert!(
        bad.iter()
            .any(|b| b.starts_with("G1") || b.starts_with("G2")),
        "the planted bug went unnoticed: {bad:?}"
    );
    // The same plan without the bug passes: the finding is the bug's.
    assert!(check(&plan, &run(&plan, Planted::None)).is_empty());
}

#[test]
fn the_checker_catches_acknowledging_before_committing() {
    // n1 is cut off (so what it acknowledges stays on it), then crashes.
    let plan = Plan {
        faults: vec![
            Window {
                start: Duration::from_secs(2),
                end: Duration::from_secs(8),
                fault: Fault::Isolate(0),
            },
            Window {
                start: Duration::from_secs(8),
                end: Duration::from_secs(9),
                fault: Fault::Crash(0),
            },
        ],
        ..calm(12)
    };
    let bad = check(&plan, &run(&plan, Planted::AckBeforeCommit));
    assert!(
        bad.iter().any(|b| b.starts_with("G1")),
        "the planted bug went unnoticed: {bad:?}"
    );
    assert!(check(&plan, &run(&plan, Planted::None)).is_empty());
}

#[test]
fn overlapping_partitions_hold_until_the_last_one_ends() {
    // n1 isolated from 2 s to 8 s and, overlapping, split from everyone
    // from 5 s to 16 s, with a pause of n3 and a crash of n2 on top. Ending
    // the isolation at 8 s must not heal n1: consistent reads on n2 and n3
    // in between must still fail to hear from it.
    let secs = Duration::from_secs_f64;
    let window = |start: f64, end: f64, fault: Fault| Window {
        start: secs(start),
        end: secs(end),
        fault,
    };
    let plan = Plan {
        nodes: 3,
        faults: vec![
            window(2.0, 8.0, Fault::Isolate(0)),
            window(5.0, 16.0, Fault::Halves(vec![0])),
            window(6.0, 7.5, Fault::Pause(2)),
            window(9.0, 11.0, Fault::Crash(1)),
        ],
        ..calm(20)
    };
    let history = run(&plan, Planted::None);
    let bad = check(&plan, &history);
    assert!(bad.is_empty(), "{bad:#?}");
    let reads: Vec<&sim::Read> = history
        .reads
        .iter()
        .filter(|r| r.consistent && r.node != 0 && r.start >= secs(8.1) && r.end <= secs(15.9))
        .collect();
    assert!(
        reads.len() >= 2,
        "too few consistent reads fell inside the second partition: {reads:#?}"
    );
    for r in reads {
        assert!(
            r.value.is_none(),
            "a read inside the partition answered 200: {r:?}"
        );
        if r.unavailable {
            assert!(
                r.unreachable.iter().any(|u| u.starts_with("n1:")),
                "{r:?} did not name n1"
            );
        }
    }
}
