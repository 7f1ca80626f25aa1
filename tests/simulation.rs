//! Deterministic simulation of a cluster under random faults (see tests/sim).
//!
//! `cargo test --test simulation` runs a fixed set of seeds plus a few fresh
//! ones drawn from the clock; a failure prints each failing seed with the
//! one command that replays it. `TALLY_SIM_SEEDS=N` changes how many fixed
//! seeds run, `TALLY_SIM_FIRST=K` where they start, `TALLY_SIM_FRESH=N` how
//! many fresh ones; `TALLY_SIM_LIARS=1` runs a liar on every seed, not on
//! one in three.

mod sim;

use std::io::Write;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sim::{
    Answer, Changes, Check, DiskKind, Fault, Flavor, Lie, Outcome, Plan, Planted, Post, Strike,
    Violation, Window, check, fingerprint, run, summary,
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

/// What a seed draws besides partitions, pauses and crashes: every fourth
/// seed wipes data folders, and half of those run with `--min-replicas 1`
/// (wiping one node only); three seeds in four fail disks; three in sixteen
/// change membership one config after the other, and one in sixteen also
/// posts conflicting configs on two sides of a partition; two more in
/// sixteen change membership one config after the other while wiping data
/// folders, one of them with `--min-replicas 1`. About one seed in three
/// runs a liar, chosen by a hash of the seed so that every seed keeps the
/// faults it drew before liars existed.
fn flavor_for(seed: u64) -> Flavor {
    let (changes, wipes, min_replicas) = match seed % 16 {
        1 | 5 | 9 => (Changes::Sequential, false, 0),
        13 => (Changes::Conflicting, false, 0),
        2 => (Changes::Sequential, true, 0),
        6 => (Changes::Sequential, true, 1),
        r => (Changes::None, r % 4 == 0, usize::from(r % 8 == 4)),
    };
    Flavor {
        wipes,
        disks: seed % 4 != 3,
        changes,
        min_replicas,
        log: seed % 3 == 2,
        // Three residues in seven: those that no seed of a regression test
        // below has, so that each keeps the plan it failed with.
        extra: matches!(seed % 7, 1 | 4 | 5),
        liar: mix(seed ^ 0x6c69_6172).is_multiple_of(3) || env_u64("TALLY_SIM_LIARS", 0) == 1,
    }
}

fn plan_for(seed: u64) -> Plan {
    Plan::random(seed, flavor_for(seed))
}

/// Writes straight to the terminal, past the test harness's capture, so
/// that seeds show up in CI logs even when the test passes.
fn announce(line: &str) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// Runs each seed; panics listing every failing seed with its replay command.
fn run_seeds(seeds: impl IntoIterator<Item = u64>) {
    let started = std::time::Instant::now();
    let mut failures = Vec::new();
    let mut ran = 0;
    let mut logged = 0;
    let mut disks = tally::storage::simdisk::SimStats::default();
    let (mut one_ways, mut slows, mut struck, mut settled, mut wiped_changing) = (0, 0, 0, 0, 0);
    let (mut liars, mut forged, mut refused) = (0, 0, 0);
    let verbose = std::env::var_os("TALLY_SIM_VERBOSE").is_some();
    for seed in seeds {
        ran += 1;
        let plan = plan_for(seed);
        logged += u64::from(plan.log);
        let history = run(&plan, Planted::None);
        if let Some(d) = &history.disks {
            disks.add(d);
        }
        let one_way = |w: &Window| matches!(w.fault, Fault::OneWay(..));
        let slow = |w: &Window| matches!(w.fault, Fault::Slow(_));
        one_ways += u64::from(plan.faults.iter().any(one_way));
        slows += u64::from(plan.faults.iter().any(slow));
        struck += history.posts.iter().filter(|p| p.struck.is_some()).count() as u64;
        settled += u64::from(history.settled.is_some());
        wiped_changing += u64::from(plan.wipes && plan.changes != Changes::None);
        liars += u64::from(history.liar);
        forged += history.forged.len();
        refused += history
            .forged
            .iter()
            .filter(|f| matches!(f.answer, Answer::Refused(_)))
            .count();
        let bad = check(&plan, &history);
        if verbose {
            announce(&format!(
                "seed {seed} ({:?}, min_replicas {}): {}; {} violations",
                plan.changes,
                plan.min_replicas,
                summary(&history),
                bad.len()
            ));
        }
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
    announce(&format!(
        "simulation: {ran} seeds ({logged} on the log engine over a simulated disk: {} power cuts, \
         {} unsynced writes lost and {} torn at them, {} writes and {} syncs failed, {} reads \
         flipped; {one_ways} with a one-way partition, {slows} with a slow peer, {wiped_changing} \
         changing membership while wiping folders; {struck} config posts whose node was struck, \
         {settled} runs whose final config was learned after the heal; {liars} with a liar: \
         {refused} of its {forged} forged messages refused, the rest unanswered or flagged), {} \
         failed, in {:.1} s",
        disks.crashes,
        disks.lost_writes,
        disks.torn_writes,
        disks.failed_writes,
        disks.failed_syncs,
        disks.flipped_reads,
        failures.len(),
        started.elapsed().as_secs_f64()
    ));
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
    if std::env::var_os("TALLY_SIM_DUMP").is_some() {
        for i in &history.incs {
            println!(
                "inc {} n{} +{} {:?}..{:?} {:?}",
                i.name,
                i.node + 1,
                i.amount,
                i.start,
                i.end,
                i.outcome
            );
        }
        for r in &history.reads {
            println!(
                "read{} {} n{} {:?}..{:?} {:?}",
                if r.consistent { "!" } else { "" },
                r.name,
                r.node + 1,
                r.start,
                r.end,
                r.outcome
            );
        }
        println!("wipes {:?}", history.wipes);
        println!("posts {:#?}", history.posts);
        println!("recoveries {:#?}", history.recoveries);
        println!("liveness {:#?}", history.liveness);
        for f in &history.forged {
            println!(
                "forged {:?} to n{} {:?}..{:?} {}: {:?}",
                f.lie,
                f.node + 1,
                f.start,
                f.end,
                f.what,
                f.answer
            );
        }
        println!(
            "configs {:?} {:?}",
            history.configs_agreed_at, history.configs
        );
    }
    println!("{}", summary(&history));
    println!("fingerprint: {}", fingerprint(&history));
    let bad = check(&plan, &history);
    let lines: Vec<String> = bad.iter().map(Violation::to_string).collect();
    assert!(bad.is_empty(), "seed {seed}:\n{}", lines.join("\n"));
}

/// Whether turmoil seeds tokio's own random choices (`--cfg tokio_unstable`).
fn tokio_is_seeded() -> bool {
    cfg!(tokio_unstable)
}

/// The first seed from `from` (within 1000) whose plan has `wanted`.
fn seed_with(from: u64, wanted: impl Fn(&Plan) -> bool) -> u64 {
    (from..from + 1000)
        .find(|&s| wanted(&plan_for(s)))
        .expect("some seed has it")
}

// ---------------------------------------------------------------- violations found

/// Runs one fixed seed and asserts the checker finds nothing.
fn assert_seed_passes(seed: u64) {
    let plan = plan_for(seed);
    let history = run(&plan, Planted::None);
    let bad: Vec<String> = check(&plan, &history)
        .iter()
        .map(Violation::to_string)
        .collect();
    assert!(
        bad.is_empty(),
        "seed {seed}: {}\n{bad:#?}",
        summary(&history)
    );
}

/// Regression: `--min-replicas 1` acknowledged an increment although no
/// other actor stored it, then lost it with its node's data folder. n2's disk is full
/// from 1.378 s to 1.956 s, so its pulls fail and it marks both peers
/// down; an increment of "d" at 2.198 s is dropped from the push queue
/// (the peers are "down") while the queue keeps its head sequence; a push
/// of "c" at 2.25 s is acknowledged as covering that head, which satisfies
/// the wait for "d"'s replica. "d" +1 is acknowledged at 2.306 s, n2 is
/// wiped at 2.315 s, and the read of "d" on n1 at 3.638 s misses it
/// (src/replication.rs: `push_loop` clears the names of a peer marked down
/// but keeps `dirty.head`, and `push_once` reports that head as stored).
/// Seed 21892 takes another path to it: n3 restarts at 7.047 s and commits
/// +3 of "b" at 7.127 s before it has identified itself and started its
/// peers, so no peer marks "b" dirty; a push of "c" at 7.245 s covers the
/// head, "b" is acknowledged at 7.27 s and lost with the wipe at 7.432 s.
#[test]
fn replica_counted_for_a_change_no_push_carried_seeds_20_21892() {
    assert_seed_passes(20);
    assert_seed_passes(21892);
}

/// Regression: a consistent read on a node whose disk failed went by the
/// config it held, not by the newer one a peer reported: the call (then `Node::call`,
/// now `Messenger::call`) cannot store
/// the newer config (storage refuses writes), only logs it, and the read
/// extends only when the stored membership changes. Seed 265: n4 (disk
/// failing) holds the first config {n2, n3, n4}; n3 answers with the next
/// one naming all five, and the read answers 200 at 3.566 s without
/// hearing from n1, cut off from it. Seed 293: n3 (disk full) answers 200
/// at 10.637 s under the first config and misses increments n1 and n5
/// acknowledged (then src/node/mod.rs `Node::call` and src/node/read.rs; the read
/// now goes by `ReadRound`'s view, src/node/read_round.rs). Many
/// more seeds fail the same way (TESTING.md lists them).
#[test]
fn a_read_on_a_failing_disk_ignores_a_newer_config_seeds_265_293() {
    assert_seed_passes(265);
    assert_seed_passes(293);
}

/// Regression: a consistent read that heard the actors before a leaver's
/// hand-off was confirmed answered, once the hand-off excused the leaver,
/// with those earlier answers, which lack what the leaver acknowledged meanwhile.
/// Seed 485: the third config removes n1 while n1 is cut off; n1 keeps
/// acknowledging (+6 of "d" at 10.215 s). A read of "d" on n4 from
/// 10.455 s hears n2, n3 and n5 at once, waits for n1, is cut off itself
/// from 11.401 s, learns at 13.1 s that n1 handed off (at 11.58 s) and
/// answers 200 with the answers of 10.5 s: 89, without n1's +6
/// (src/node/read.rs: `heard` outlives the hand-off that excuses a leaver).
/// Seed 5585 fails the same way.
#[test]
fn a_read_counts_answers_from_before_a_hand_off_seed_485() {
    assert_seed_passes(485);
}

/// Regression: a node that left and handed off acknowledged increments
/// after a restart, until it had found out again which actor it is
/// (`Role::Unknown` accepts increments); nobody pulls from it any more, so
/// they are lost for good. Seed 833: n3, removed by the fourth config,
/// refuses at 14.917 s, crashes at 19.729 s, restarts at 20 s and
/// acknowledges +1 of "c" at 20.004 s; it refuses again from 21.29 s, and
/// the converged value lacks the +1. Seeds 497, 5049, 10013, 11209, 20193,
/// 20941, 21037 and 21521 fail the same way
/// (src/node/membership.rs: `Role::accepts_increments`, identification
/// by asking the actors when its addresses do not tell).
#[test]
fn a_restarted_leaver_acknowledges_while_unidentified_seeds_497_833() {
    assert_seed_passes(833);
    assert_seed_passes(497);
}

/// Regression: conflicting posts lost, for good, what a node acknowledged
/// that the losing config re-added and the winning one lists as retired: nodes that
/// held the losing config make orphans only of the nodes the winning one
/// does not name at all, and a retired node is named, so nobody pulls from
/// it again. Seed 21709: the first config {n1, n4, n5} becomes {n1, n3, n5}
/// and n4 hands off; then {all five} (stamp 3.1, re-adding n4) and
/// {n1, n2, n5} (3.5, n4 retired) are posted on two sides of a partition.
/// n4, an actor of the losing config, acknowledges +1 of "a" at 14.302 s;
/// the converged value never has it (src/cluster.rs:
/// `Membership::merged_with`).
#[test]
fn conflicting_posts_lose_a_retired_node_the_loser_re_added_seed_21709() {
    assert_seed_passes(21709);
}

/// Regression: the same with the winning config listing the node as
/// leaving rather than retired. Seed 2685: the second config {n1, n3, n4}
/// (2.2) removes n2 and n5, and n5 hands off under it; then {n3, n4, n5}
/// (3.1, re-adding n5) and {n1, n2, n3} (3.3, made where n5's hand-off
/// was not yet known, so n5 is leaving) are posted on two sides of a
/// partition. n5, an actor of the losing config, acknowledges +9 of "c" at
/// 12.019 s; the winner's nodes took n5's hand-off under 2.2 as counting
/// under 3.3 too, so nobody pulled from n5 again and the converged value
/// lacked the +9 (src/cluster/membership.rs: `excused`, `merged_with`: an
/// actor of a losing config hands off again, under the winner itself).
#[test]
fn conflicting_posts_lose_what_a_leaver_the_loser_re_added_acknowledged_seed_2685() {
    assert_seed_passes(2685);
}

/// Regression: a node whose storage failed could not hand off what it
/// held: a pull from it read the B-tree, which a failing disk leaves
/// unopened, so the pull failed until storage recovered, and a disk lost
/// meanwhile took along increments the node had had seconds to hand on.
/// Seed 3170 (the log engine): n3, cut off from 1.126 s to 3.843 s,
/// acknowledges +2 of "b" at 1.441 s; its disk dies at 3.971 s and its
/// folder is lost at 8.334 s; its peers' pulls in between all failed, and
/// the converged value lacked the +2 (`on_pull`, now in src/replication/answer.rs, answers
/// from memory while storage fails; src/storage/logged.rs serves a pull
/// past the B-tree's head from the overlay alone).
#[test]
fn a_node_whose_storage_fails_still_hands_off_seed_3170() {
    assert_seed_passes(3170);
}

/// The checker's own regressions, found in sweeps after the node bugs above
/// were fixed. Seed 10653: a node being added refused increments (409)
/// before it had heard of the config that adds it, cut off from the node
/// that took the post; that is allowed (README), and was flagged. Seed
/// 21805: of two conflicting posts, the one that lost answered with the
/// stamp of the winner it adopted meanwhile, and the history took it for
/// the winner; a post now records the stamp of the config it made.
#[test]
fn checker_regressions_seeds_10653_21805() {
    assert_seed_passes(10653);
    assert_seed_passes(21805);
}

/// The checker's regression with membership changes and wipes: seed
/// 6658 re-adds n5 with a config (posted to n1, then wiped before that
/// config reached anyone who kept it) that is lost; n5, left out by the
/// config that survived, loses its folder and acknowledges as a cluster of
/// one. The lost config was taken as naming n5, so what n5 acknowledged was
/// counted as owed.
#[test]
fn checker_regression_seed_6658() {
    assert_seed_passes(6658);
}

#[test]
fn a_seed_replays_exactly() {
    assert!(
        tokio_is_seeded(),
        "build with --cfg tokio_unstable (.cargo/config.toml; a RUSTFLAGS variable replaces it): without it tokio's own choices are not seeded and seeds that change membership do not replay"
    );
    // A plan with crashes, a wipe, a stalled disk (whose end each boot of
    // a host computes on its own clock) and a liar, and a plan that
    // changes membership, each replayed while the other runs on another
    // thread (so tokio's process-wide task ids interleave).
    let has = |plan: &Plan, f: fn(&Fault) -> bool| plan.faults.iter().any(|w| f(&w.fault));
    let faulty = plan_for(seed_with(60, |p| {
        has(p, |f| matches!(f, Fault::Crash(_)))
            && has(p, |f| matches!(f, Fault::Wipe(_)))
            && has(p, |f| matches!(f, Fault::Disk(_, DiskKind::Stall)))
            && p.liar
    }));
    // The second also has a one-way partition, a slow peer and a post
    // whose node is struck (a fault timed by the workload as it ran).
    let changing = plan_for(seed_with(5, |p| {
        p.posts.len() >= 2
            && p.posts.iter().any(|q| q.strike.is_some())
            && has(p, |f| matches!(f, Fault::OneWay(..)))
            && has(p, |f| matches!(f, Fault::Slow(_)))
    }));
    let a = run(&faulty, Planted::None);
    let other = {
        let changing = changing.clone();
        std::thread::spawn(move || run(&changing, Planted::None))
    };
    let b = run(&faulty, Planted::None);
    let c = other.join().expect("the other simulation ran");
    let d = run(&changing, Planted::None);
    assert!(a.incs.iter().any(|i| i.acked()), "the workload ran");
    assert!(!a.forged.is_empty(), "the liar lied");
    assert!(
        d.posts.iter().filter(|p| p.config().is_some()).count() >= 2,
        "configs were posted: {:#?}",
        d.posts
    );
    assert!(!d.struck.is_empty(), "a post's node was struck");
    assert_eq!(fingerprint(&a), fingerprint(&b));
    assert_eq!(fingerprint(&c), fingerprint(&d));
    assert_ne!(fingerprint(&a), fingerprint(&c), "seeds differ");
}

/// The log engine's simulated disks decide at each power cut which
/// unsynced writes land, tear or vanish, file by file: with appends never
/// synced (so every crash leaves several files with unsynced writes), a
/// plan replayed after other runs in the process gives the same history.
/// It failed while the disk kept its files in a `HashMap`, whose order (and
/// with it, which file drew which choice) changes from one map to the next.
#[test]
fn a_power_cut_on_the_log_engine_replays_exactly() {
    let plan = lying_disk(1);
    let a = run(&plan, Planted::SkipSync);
    let _ = run(&calm(7), Planted::None);
    let b = run(&plan, Planted::SkipSync);
    let lost = |h: &sim::History| h.disks.as_ref().map(|d| (d.lost_writes, d.torn_writes));
    assert!(lost(&a).is_some_and(|(l, t)| l + t > 0), "{:?}", a.disks);
    assert_eq!(lost(&a), lost(&b));
    assert_eq!(fingerprint(&a), fingerprint(&b));
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
        walks: false,
        ..Plan::random(seed, Flavor::default())
    }
}

/// `plan` on `nodes` nodes, the first config naming them all.
fn sized(nodes: usize, plan: Plan) -> Plan {
    Plan {
        nodes,
        initial: (0..nodes).collect(),
        ..plan
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

/// [`assert_caught`] on the first of `seeds` whose plan exposes `bug`.
/// Whether one seed's interleaving exposes a timing bug (an acknowledgement
/// before its sync, a log deleted too early) moves with any change to the
/// node's tasks; the checker must catch the bug on some seed of a few, and
/// that seed must pass without it. Says which seed it was.
fn assert_caught_on_some(
    seeds: std::ops::RangeInclusive<u64>,
    plan: impl Fn(u64) -> Plan,
    bug: Planted,
    expected: Check,
) {
    for seed in seeds.clone() {
        let p = plan(seed);
        if check(&p, &run(&p, bug)).iter().any(|v| v.check == expected) {
            eprintln!("{bug:?} caught by {expected:?} on seed {seed}");
            assert_caught(&p, bug, expected, false);
            return;
        }
    }
    panic!("{bug:?} went unnoticed by {expected:?} on every seed of {seeds:?}");
}

/// The prototype's bug: each node's total arrives as if it were the
/// sender's own component, so a receiver counts what it already holds again
/// (G2, hundreds of times on this plan; it trips no G1 check).
#[test]
fn the_checker_catches_merging_totals_by_maximum() {
    assert_caught(&calm(11), Planted::TotalsByMaximum, Check::G2, false);
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
    let bad = assert_caught(&plan, Planted::ReadSkips(1), Check::G1Read, false);
    // And those reads answered 200 while n2 was cut off from them throughout.
    assert!(bad.iter().any(|v| v.check == Check::G5Unheard), "{bad:#?}");
}

/// The same for a backup: n2 is cut off and keeps acknowledging; walks
/// elsewhere "hear" an empty page from it and complete without its
/// increments.
#[test]
fn the_checker_catches_a_backup_that_skips_a_node() {
    let plan = Plan {
        walks: true,
        ..with_faults(13, vec![window(2.0, 12.0, Fault::Isolate(1))])
    };
    let bad = assert_caught(&plan, Planted::PageSkips(1), Check::G1Read, false);
    assert!(bad.iter().any(|v| v.check == Check::G5Unheard), "{bad:#?}");
}

#[test]
fn the_checker_catches_a_read_that_takes_silence_for_an_answer() {
    // n1 is paused: a read elsewhere whose call to n1 times out counts it
    // as an empty answer and answers 200. n1 acknowledges nothing while
    // paused, so nothing is missing: only the rule that a read must hear
    // from every actor catches it.
    let plan = with_faults(31, vec![window(3.0, 9.0, Fault::Pause(0))]);
    assert_caught(&plan, Planted::SilentIsEmpty, Check::G5Unheard, true);
}

#[test]
fn the_checker_catches_replication_that_never_carries_a_name() {
    // "a" never travels in a push or a pull: the nodes never agree on it.
    assert_caught(&calm(32), Planted::SyncSkips(0), Check::G4Never, true);
}

#[test]
fn the_checker_catches_consistent_reads_that_fail_after_the_heal() {
    // Consistent reads answer 503 until 7 s after the heal: those started
    // from 5 s after it fail, though each node succeeds within the
    // liveness bound.
    let plan = calm(33);
    assert_caught(
        &plan,
        Planted::ReadsFailUntil(plan.heal_at + Duration::from_secs(7)),
        Check::G5AfterHeal,
        true,
    );
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
    assert!(
        bad.iter().any(|v| v.check == Check::G5AfterHeal),
        "{bad:#?}"
    );
}

#[test]
fn the_checker_catches_increments_that_wait_for_peers() {
    // Every node runs with --min-replicas 2 (all its peers) where the plan
    // says 0: while n1 is cut off, increments on every node wait for a
    // peer they cannot reach and answer 503; after the heal they succeed.
    let plan = sized(
        3,
        with_faults(18, vec![window(3.0, 9.0, Fault::Isolate(0))]),
    );
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
    let plan = sized(
        3,
        with_faults(
            20,
            vec![
                window(2.0, 8.0, Fault::Isolate(0)),
                window(5.0, 16.0, Fault::Halves(vec![0])),
                window(6.0, 7.5, Fault::Pause(2)),
                window(9.0, 11.0, Fault::Crash(1)),
            ],
        ),
    );
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

/// A one-way cut between two nodes: n1's messages to n2 are dropped, n2's
/// to n1 pass. Neither can hear from the other (n1's calls fail at
/// connect; n2's reach n1, which handles them, but their answers are
/// lost), so consistent reads on both sides answer 503 throughout, and the
/// two converge after it.
#[test]
fn a_one_way_cut_fails_reads_on_both_sides() {
    let plan = sized(
        2,
        with_faults(34, vec![window(3.0, 11.0, Fault::OneWay(0, 1))]),
    );
    let history = run(&plan, Planted::None);
    let bad: Vec<String> = check(&plan, &history)
        .iter()
        .map(Violation::to_string)
        .collect();
    assert!(bad.is_empty(), "{bad:#?}");
    let inside = |x: usize| {
        history
            .reads
            .iter()
            .filter(move |r| r.consistent && r.node == x)
            .filter(|r| r.start >= secs(3.1) && r.end <= secs(10.9))
    };
    for x in 0..2 {
        assert!(inside(x).count() >= 2, "{:#?}", history.reads);
        assert!(
            inside(x).all(|r| matches!(&r.outcome,
                Outcome::Unavailable { unreachable, .. } if unreachable.len() == 1)),
            "{:#?}",
            inside(x).collect::<Vec<_>>()
        );
    }
}

/// n1 answers its peers slowly (each request waits 0.2–1.5 s, around the
/// 1 s deadline of a peer call) for 10 s: consistent reads elsewhere hear
/// from it late, or not in time and answer 503; its own reads and every
/// increment answer as usual; nothing else breaks.
#[test]
fn a_slow_peer_delays_reads_and_nothing_else() {
    let plan = sized(3, with_faults(35, vec![window(3.0, 13.0, Fault::Slow(0))]));
    let history = run(&plan, Planted::None);
    let bad: Vec<String> = check(&plan, &history)
        .iter()
        .map(Violation::to_string)
        .collect();
    assert!(bad.is_empty(), "{bad:#?}");
    let inside = |r: &&sim::Read| r.consistent && r.start >= secs(3.0) && r.end <= secs(13.0);
    let elsewhere: Vec<&sim::Read> = history
        .reads
        .iter()
        .filter(inside)
        .filter(|r| r.node != 0)
        .collect();
    let late = elsewhere
        .iter()
        .filter(|r| r.value().is_some() && r.end - r.start >= secs(0.2))
        .count();
    let failed = elsewhere.iter().filter(|r| r.value().is_none()).count();
    assert!(
        late >= 1,
        "{late} late, {failed} failed of {}: {elsewhere:#?}",
        elsewhere.len()
    );
}

// ---------------------------------------------------------------- storage faults

#[test]
fn the_checker_catches_storage_that_never_heals() {
    // n1's disk is full for 3 s; an engine that never reopens after the
    // failed commit keeps refusing writes once the disk has room again.
    let plan = with_faults(21, vec![window(3.0, 6.0, Fault::Disk(0, DiskKind::Full))]);
    assert_caught(&plan, Planted::NeverReopens, Check::DiskRecovery, false);
}

#[test]
fn the_checker_catches_local_reads_that_wait_for_the_disk() {
    // n1's disk is full for 4 s: local reads must answer from memory.
    let plan = with_faults(29, vec![window(3.0, 7.0, Fault::Disk(0, DiskKind::Full))]);
    assert_caught(&plan, Planted::ReadsWaitForDisk, Check::G3, true);
}

#[test]
fn the_checker_catches_a_failed_fsync_reported_as_success() {
    // n1 is cut off, its fsync fails, and it crashes: an engine that
    // reports the commits as done while keeping nothing of them loses what
    // n1 acknowledged meanwhile.
    let plan = with_faults(
        22,
        vec![
            window(2.0, 10.0, Fault::Isolate(0)),
            window(3.0, 8.0, Fault::Disk(0, DiskKind::FailSync)),
            window(8.0, 9.0, Fault::Crash(0)),
        ],
    );
    assert_caught(&plan, Planted::AckFailedSync, Check::G1Final, false);
}

#[test]
fn disk_faults_refuse_writes_keep_reads_and_heal() {
    // Each kind of disk fault on n1, one after the other; n2 is cut off
    // during the first.
    let plan = sized(
        3,
        with_faults(
            23,
            vec![
                window(2.0, 4.0, Fault::Disk(0, DiskKind::Full)),
                window(3.0, 5.0, Fault::Isolate(1)),
                window(6.0, 8.0, Fault::Disk(0, DiskKind::FailSync)),
                window(10.0, 12.0, Fault::Disk(0, DiskKind::Stall)),
            ],
        ),
    );
    let history = run(&plan, Planted::None);
    let bad: Vec<String> = check(&plan, &history)
        .iter()
        .map(Violation::to_string)
        .collect();
    assert!(bad.is_empty(), "{bad:#?}");
    let on_n1 = |from: f64, to: f64| {
        history
            .incs
            .iter()
            .filter(move |i| i.node == 0 && i.start >= secs(from) && i.end <= secs(to))
    };
    for (from, to) in [(2.1, 3.9), (6.1, 7.9)] {
        assert!(
            on_n1(from, to).count() >= 3
                && on_n1(from, to).all(|i| matches!(
                    i.outcome,
                    Outcome::Refused(sim::Refusal::Storage, _) | Outcome::Broken
                )),
            "increments on a failing disk answer 503 at once: {:#?}",
            on_n1(from, to).collect::<Vec<_>>()
        );
    }
    assert!(
        on_n1(10.1, 12.0).all(|i| matches!(i.outcome, Outcome::TimedOut | Outcome::Broken)),
        "increments on a stalled disk wait"
    );
    let reads = history
        .reads
        .iter()
        .filter(|r| r.node == 0 && !r.consistent && r.start >= secs(2.0) && r.end <= secs(12.0));
    assert!(reads.clone().count() >= 3 && reads.clone().all(|r| r.value().is_some()));
    assert_eq!(
        history.recoveries.len(),
        3,
        "one recovery probe per fault: {:#?}",
        history.recoveries
    );
    assert!(history.recoveries.iter().all(|r| r.took_at.is_some()));
}

// ---------------------------------------------------------------- writes that survive a lost disk

/// `calm(seed)` with `--min-replicas 1` and these faults.
fn replicated(seed: u64, faults: Vec<Window>) -> Plan {
    Plan {
        min_replicas: 1,
        wipes: true,
        ..with_faults(seed, faults)
    }
}

#[test]
fn the_checker_catches_acknowledgements_without_replicas() {
    // n1 is cut off and then loses its disk: with --min-replicas 1 it may
    // not acknowledge anything meanwhile, and nothing it acknowledged is
    // excused by the wipe.
    let plan = replicated(
        24,
        vec![
            window(2.0, 8.0, Fault::Isolate(0)),
            window(8.0, 9.0, Fault::Wipe(0)),
        ],
    );
    assert_caught(&plan, Planted::NoReplicas, Check::G1Final, false);
}

// ---------------------------------------------------------------- membership changes

/// Four nodes, the first config naming n1–n3, these posts and faults.
fn changing(seed: u64, posts: Vec<Post>, faults: Vec<Window>) -> Plan {
    Plan {
        nodes: 4,
        initial: vec![0, 1, 2],
        posts,
        changes: Changes::Sequential,
        ..with_faults(seed, faults)
    }
}

fn post(at: f64, actors: &[usize], to: usize) -> Post {
    Post {
        at: secs(at),
        actors: actors.to_vec(),
        side: Some(vec![to]),
        strike: None,
    }
}

#[test]
fn the_checker_catches_reads_that_skip_leavers() {
    // n3 is cut off and keeps acknowledging; n4 replaces it. Reads that
    // ask only the new config's actors miss what n3 acknowledged.
    let plan = changing(
        25,
        vec![post(5.0, &[0, 1, 3], 0)],
        vec![window(2.0, 12.0, Fault::Isolate(2))],
    );
    assert_caught(&plan, Planted::SkipLeavers, Check::G1Read, false);
}

#[test]
fn the_checker_catches_a_config_that_does_not_spread() {
    let plan = changing(26, vec![post(5.0, &[0, 1, 2, 3], 0)], Vec::new());
    assert_caught(&plan, Planted::ConfigStuck, Check::OneConfig, false);
}

#[test]
fn the_checker_catches_posts_that_fail() {
    let plan = changing(30, vec![post(5.0, &[0, 1, 3], 0)], Vec::new());
    assert_caught(&plan, Planted::RefusePosts, Check::Post, false);
}

#[test]
fn the_checker_catches_leavers_that_keep_acknowledging() {
    let plan = changing(27, vec![post(5.0, &[0, 1, 3], 0)], Vec::new());
    assert_caught(&plan, Planted::LeaversAck, Check::Departed, false);
}

/// A post to n1 while n3 is paused (so the post waits up to 1 s for n3's
/// answer), and n1 crashes 300 ms after it was sent, for 1 s.
fn crashed_post(seed: u64, wipe: bool) -> Plan {
    Plan {
        wipes: wipe,
        ..changing(
            seed,
            vec![Post {
                strike: Some(Strike {
                    after: secs(0.3),
                    down: secs(1.0),
                    wipe,
                }),
                ..post(5.0, &[0, 1, 3], 0)
            }],
            vec![window(4.0, 8.0, Fault::Pause(2))],
        )
    }
}

#[test]
fn a_post_whose_node_crashes_before_answering_is_learned_from_that_node() {
    let plan = crashed_post(36, false);
    let history = run(&plan, Planted::None);
    let bad: Vec<String> = check(&plan, &history)
        .iter()
        .map(Violation::to_string)
        .collect();
    assert!(bad.is_empty(), "{bad:#?}");
    let p = &history.posts[1];
    assert_eq!(history.struck.len(), 1, "{:#?}", history.struck);
    assert!(p.stamp().is_none(), "the crash came first: {p:#?}");
    // n1 stored the config before it called n3; once restarted it has it.
    assert_eq!(p.resolved, Some(Some((2, 1))), "{p:#?}");
    assert!(history.configs.iter().all(|(_, s)| *s == Some((2, 1))));
}

#[test]
fn a_config_lost_with_its_node_s_folder_leaves_the_old_one() {
    // n1 is cut off from everyone when it takes the post: it answers 200
    // with every other node pending, and loses its folder 300 ms later.
    // The cluster keeps the first config; the loss is excused, nothing
    // else is.
    let plan = Plan {
        faults: vec![window(4.0, 8.0, Fault::Isolate(0))],
        ..crashed_post(37, true)
    };
    let history = run(&plan, Planted::None);
    let bad: Vec<String> = check(&plan, &history)
        .iter()
        .map(Violation::to_string)
        .collect();
    assert!(bad.is_empty(), "{bad:#?}");
    let p = &history.posts[1];
    assert!(p.stamp().is_some(), "{p:#?}");
    assert_eq!(p.resolved, Some(None), "{p:#?}");
    assert_eq!(history.settled, history.posts[0].stamp());
}

#[test]
fn a_removed_node_refuses_and_a_read_waits_for_it() {
    // n3 is removed while cut off: it acknowledges until it learns, and
    // reads elsewhere answer 503 rather than a value without its increments.
    let plan = changing(
        28,
        vec![post(5.0, &[0, 1, 3], 0)],
        vec![window(2.0, 12.0, Fault::Isolate(2))],
    );
    let history = run(&plan, Planted::None);
    let bad: Vec<String> = check(&plan, &history)
        .iter()
        .map(Violation::to_string)
        .collect();
    assert!(bad.is_empty(), "{bad:#?}");
    assert!(
        history
            .incs
            .iter()
            .any(|i| i.node == 2 && i.acked() && i.start > secs(6.0) && i.end < secs(12.0)),
        "n3 acknowledges while it does not know it left"
    );
    assert!(
        history.incs.iter().any(|i| i.node == 2
            && i.start > secs(13.0)
            && matches!(i.outcome, Outcome::Refused(sim::Refusal::NotMember, _))),
        "and refuses once it knows"
    );
    let inside = history
        .reads
        .iter()
        .filter(|r| r.consistent && r.node != 2 && r.start > secs(5.5) && r.end < secs(11.9));
    assert!(inside.clone().count() >= 1);
    assert!(
        inside.clone().all(|r| r.value().is_none()),
        "{:#?}",
        inside.collect::<Vec<_>>()
    );
}

// ---------------------------------------------------------------- the log engine on a lying disk

/// `with_faults(seed, faults)` on the log engine over simulated disks.
fn logged(seed: u64, faults: Vec<Window>) -> Plan {
    Plan {
        log: true,
        ..with_faults(seed, faults)
    }
}

/// n1 is cut off and acknowledges increments alone; its disk dies partway
/// through whatever it is doing (a fold, often: the simulation folds once
/// three names changed) and it loses power four times: each cut decides
/// anew which unsynced writes land, so a bug that leaves acknowledged
/// writes unsynced is all but sure to lose one.
fn lying_disk(seed: u64) -> Plan {
    logged(
        seed,
        vec![
            window(2.0, 12.0, Fault::Isolate(0)),
            window(4.0, 6.0, Fault::Disk(0, DiskKind::Dying)),
            window(5.5, 6.0, Fault::Crash(0)),
            window(7.5, 7.8, Fault::Crash(0)),
            window(9.0, 9.3, Fault::Crash(0)),
            window(10.5, 10.8, Fault::Crash(0)),
        ],
    )
}

#[test]
fn the_checker_catches_appends_that_are_never_synced() {
    // A seed may lose unsynced records and still have nothing short, when
    // a later record of the same name lands each time (a record holds
    // whole counters): the checker rightly finds nothing there.
    assert_caught_on_some(2..=9, lying_disk, Planted::SkipSync, Check::G1Final);
}

#[test]
fn the_checker_catches_acknowledgements_before_the_sync() {
    assert_caught_on_some(1..=8, lying_disk, Planted::LateSync, Check::G1Final);
}

/// n1 is cut off and acknowledges increments alone; five times its disk
/// dies partway (after 0 to 23 changes, by the seed) and it loses power
/// just before the disk comes back: each is a chance for the disk to die
/// inside a fold, after the planted bug deleted the log the fold had not
/// committed yet. About one seed in ten exposes it (seeds 4, 5 and 29 of the
/// first 30 when this was written), one in thirty with `lying_disk`.
fn dying_disks(seed: u64) -> Plan {
    let mut faults = vec![window(2.0, 12.0, Fault::Isolate(0))];
    for k in 0..5 {
        let t = 2.5 + 1.8 * k as f64;
        faults.push(window(t, t + 1.0, Fault::Disk(0, DiskKind::Dying)));
        faults.push(window(t + 0.8, t + 1.1, Fault::Crash(0)));
    }
    logged(seed, faults)
}

#[test]
fn the_checker_catches_a_fold_that_deletes_the_log_before_the_b_tree_commits() {
    assert_caught_on_some(
        1..=30,
        dying_disks,
        Planted::DeleteBeforeFold,
        Check::G1Final,
    );
}

// ---------------------------------------------------------------- forged messages (G11)

/// A node that believes the liar's pushes answers that it took them (G11),
/// and the component they raised shows as increments nobody sent (G2).
#[test]
fn the_checker_catches_a_node_that_believes_forged_pushes() {
    let plan = Plan {
        liar: true,
        ..calm(38)
    };
    let bad = assert_caught(
        &plan,
        Planted::BelievesForgedPushes,
        Check::G11ForgedAccepted,
        false,
    );
    assert!(bad.iter().any(|v| v.check == Check::G2), "{bad:#?}");
}

/// Seeds of every kind, none of which draws a liar of its own, each run
/// with one: 5 changes membership one config after the other on the log
/// engine, with one-way cuts, slow peers and struck posts; 12 wipes one
/// data folder with `--min-replicas 1`; 13 posts conflicting configs; 32
/// wipes data folders on the log engine.
const LIAR_SEEDS: [u64; 4] = [5, 12, 13, 32];

/// A liar on seeds of every kind (crashes and wipes, the log engine,
/// membership changes, `--min-replicas 1`): each forged message is refused,
/// every kind of lie is told at least once, and nothing else breaks.
#[test]
fn a_liar_is_refused_and_changes_nothing() {
    let mut refused = std::collections::BTreeMap::new();
    for seed in LIAR_SEEDS {
        let plan = Plan {
            liar: true,
            ..plan_for(seed)
        };
        let history = run(&plan, Planted::None);
        let bad: Vec<String> = check(&plan, &history)
            .iter()
            .map(Violation::to_string)
            .collect();
        announce(&format!(
            "simulation: seed {seed} with a liar: {}",
            summary(&history)
        ));
        assert!(
            bad.is_empty(),
            "seed {seed}: {}\n{bad:#?}",
            summary(&history)
        );
        for f in &history.forged {
            if let Answer::Refused(why) = &f.answer {
                // A refusal for the protocol version would refuse every
                // lie alike, and prove nothing of the checks behind it.
                assert!(!why.contains("protocol"), "seed {seed}: {f:#?}");
                *refused.entry(f.lie).or_insert(0) += 1;
            }
        }
    }
    for lie in Lie::ALL {
        assert!(
            refused.get(&lie).is_some_and(|&n| n > 0),
            "no {lie:?} was refused: {refused:?}"
        );
    }
}
