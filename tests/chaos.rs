//! Real-network chaos test: the `tally` binary as N nodes, each in its own
//! Linux network namespace, under partitions (nftables), pauses (SIGSTOP),
//! crashes (SIGKILL + restart) and link delay (tc netem), with a checker
//! for the guarantees of SPEC §3. See TESTING.md ("Chaos test").
//!
//! Needs root, `ip`, `nft` and `tc`. Without them it fails, unless
//! `TALLY_CHAOS_SKIP=1` asks to skip it (loudly; never under `CI`).

#[path = "chaos/check.rs"]
mod check;
#[path = "chaos/client.rs"]
mod client;
#[path = "chaos/cluster.rs"]
mod cluster;
#[path = "common/eintr.rs"]
mod eintr;
#[path = "chaos/harness.rs"]
mod harness;
#[path = "chaos/net.rs"]
mod net;
#[path = "chaos/rng.rs"]
mod rng;
#[path = "common/root.rs"]
mod root;
#[path = "chaos/run.rs"]
mod run;
#[path = "chaos/scenario.rs"]
mod scenario;
#[path = "common/upgrade.rs"]
mod upgrade;

/// 5 processes, a 3-node config to start with; partitions, pauses, crashes,
/// delay, membership changes under partitions and a full disk.
#[test]
fn chaos_real_network() {
    run::chaos(run::Profile::Default);
}

/// 3 nodes that acknowledge an increment only once another node stored it
/// (TALLY_MIN_REPLICAS=1), with wiped data folders among the faults: no
/// acknowledged increment may be lost, wipes included.
#[test]
fn chaos_min_replicas_wipes() {
    run::chaos(run::Profile::Replicas);
}

/// A rolling upgrade under the workload and plain faults: 3 nodes started
/// from the tally that `scripts/upgrade-from.sh` names (built once and
/// cached), upgraded one by one to this build, one rolled back to the older
/// binary on the folder the newer one wrote, then upgraded again. Every
/// guarantee is checked throughout, with each node's stop and start as its
/// fault. `TALLY_UPGRADE_FROM` names another older binary.
#[test]
fn chaos_rolling_upgrade() {
    run::chaos(run::Profile::Upgrade);
}

/// The membership change that used to lose increments a removed node had
/// acknowledged alone, replayed step by step (see `chaos/scenario.rs`).
#[test]
fn membership_handoff_scenario() {
    scenario::handoff();
}

/// A node re-added after its hand-off, then removed again while it had
/// acknowledged increments alone (see `chaos/scenario.rs`). Before 2538bdd
/// the earlier hand-off still excused the node, so the second removal
/// retired it at once and consistent reads stopped asking it.
#[test]
fn membership_readd_after_handoff_scenario() {
    scenario::readd_after_handoff();
}

/// The checker must be able to fail: each history below breaks one guarantee.
mod checker {
    use super::check::*;

    fn ips() -> Vec<String> {
        vec![
            "10.77.1.11".into(),
            "10.77.1.12".into(),
            "10.77.1.13".into(),
        ]
    }

    fn names() -> Vec<String> {
        vec!["a".into(), "b".into()]
    }

    fn ms(x: u64) -> Micros {
        x * 1000
    }

    fn write(node: usize, amount: u64, start: u64, end: u64, result: WriteResult) -> WriteRec {
        WriteRec {
            node,
            name: 0,
            amount,
            start: ms(start),
            end: ms(end),
            result,
        }
    }

    fn read(
        node: usize,
        kind: ReadKind,
        span: (u64, u64),
        acked: u64,
        sent: u64,
        result: ReadResult,
    ) -> ReadRec {
        ReadRec {
            node,
            name: 0,
            kind,
            start: ms(span.0),
            end: ms(span.1),
            acked_at_start: acked,
            sent_at_end: sent,
            result,
        }
    }

    const CONS: ReadKind = ReadKind::Consistent { timeout_ms: 1000 };

    fn isolate_n1(from: u64, until: u64) -> FaultRec {
        FaultRec {
            label: "isolate n1".into(),
            begin: ms(from - 5),
            active_from: ms(from),
            active_until: ms(until),
            end: ms(until + 5),
            cuts: vec![(1, 2), (1, 3)],
            down: vec![],
            degraded: vec![],
            wiped: false,
            disk_full: false,
        }
    }

    fn pause(node: usize, from: u64, until: u64) -> FaultRec {
        FaultRec {
            label: format!("pause n{node}"),
            begin: ms(from),
            active_from: ms(from),
            active_until: ms(until),
            end: ms(until),
            cuts: vec![],
            down: vec![node],
            degraded: vec![],
            wiped: false,
            disk_full: false,
        }
    }

    fn run(h: &History) -> Vec<String> {
        check(h, &ips(), &names(), &Bounds::default()).violations
    }

    fn only(h: &History, tag: &str) {
        let v = run(h);
        assert!(!v.is_empty(), "expected a {tag} violation, got none");
        assert!(
            v.iter().all(|m| m.starts_with(tag)),
            "expected only {tag}: {v:#?}"
        );
    }

    /// A small history that satisfies everything.
    fn clean() -> History {
        History {
            writes: vec![
                write(1, 5, 0, 10, WriteResult::Acked),
                write(2, 3, 20, 30, WriteResult::Acked),
                write(3, 4, 7100, 7900, WriteResult::Uncertain("timeout".into())),
            ],
            reads: vec![
                read(3, ReadKind::Value, (40, 45), 8, 8, ReadResult::Value(8)),
                read(2, CONS, (50, 80), 8, 8, ReadResult::Value(8)),
                read(
                    1,
                    CONS,
                    (3100, 4100),
                    8,
                    8,
                    ReadResult::Unavailable {
                        unreachable: vec!["10.77.1.12:7777".into(), "10.77.1.13:7777".into()],
                        best: Some(8),
                    },
                ),
                read(2, CONS, (8100, 8140), 8, 12, ReadResult::Value(12)),
            ],
            faults: vec![isolate_n1(3000, 5000), pause(3, 7000, 8000)],
            ..History::default()
        }
    }

    #[test]
    fn accepts_a_clean_history() {
        assert_eq!(run(&clean()), Vec::<String>::new());
    }

    #[test]
    fn catches_a_lost_increment() {
        let mut h = clean();
        h.reads
            .push(read(3, CONS, (100, 130), 8, 8, ReadResult::Value(5)));
        let v = run(&h);
        assert!(
            v.iter()
                .any(|m| m.starts_with("G1:") && m.contains("lost 3")),
            "{v:#?}"
        );
    }

    #[test]
    fn catches_an_invented_increment() {
        let mut h = clean();
        h.reads.push(read(
            3,
            ReadKind::Value,
            (100, 130),
            8,
            8,
            ReadResult::Value(9),
        ));
        only(&h, "G2:");
    }

    #[test]
    fn catches_an_invented_best_known_value() {
        let mut h = clean();
        h.reads[2].result = ReadResult::Unavailable {
            unreachable: vec!["10.77.1.12:7777".into(), "10.77.1.13:7777".into()],
            best: Some(13),
        };
        only(&h, "G2:");
    }

    #[test]
    fn catches_a_consistent_read_that_cannot_have_heard_from_everyone() {
        let mut h = clean();
        h.reads[2].result = ReadResult::Value(8);
        only(&h, "G5:");
    }

    #[test]
    fn catches_an_incomplete_unreachable_list() {
        let mut h = clean();
        h.reads[2].result = ReadResult::Unavailable {
            unreachable: vec!["10.77.1.12:7777".into()],
            best: Some(8),
        };
        let v = run(&h);
        assert!(
            v.len() == 1 && v[0].contains("misses [\"10.77.1.13\"]"),
            "{v:#?}"
        );
    }

    #[test]
    fn requires_503_of_reads_on_the_connected_side_waiting_for_a_paused_node() {
        let mut h = clean();
        h.reads
            .push(read(1, CONS, (7100, 7900), 12, 12, ReadResult::Value(12)));
        only(&h, "G5:");
    }

    #[test]
    fn catches_a_slow_or_silent_consistent_read() {
        let mut h = clean();
        h.reads
            .push(read(2, CONS, (9000, 12100), 12, 12, ReadResult::Value(12)));
        only(&h, "G5:");
        let mut h = clean();
        h.reads.push(read(
            2,
            CONS,
            (9000, 11500),
            12,
            12,
            ReadResult::Failed("timeout".into()),
        ));
        only(&h, "G5:");
    }

    #[test]
    fn catches_a_503_on_a_whole_network() {
        let mut h = clean();
        h.reads.push(read(
            2,
            CONS,
            (20_000, 21_000),
            12,
            12,
            ReadResult::Unavailable {
                unreachable: vec!["10.77.1.13:7777".into()],
                best: Some(12),
            },
        ));
        only(&h, "G5:");
    }

    #[test]
    fn forgives_what_a_paused_node_cannot_do() {
        let mut h = clean();
        h.writes.push(write(
            3,
            2,
            7100,
            9100,
            WriteResult::Uncertain("timeout".into()),
        ));
        h.reads.push(read(
            3,
            ReadKind::Value,
            (7500, 9500),
            12,
            14,
            ReadResult::Failed("timeout".into()),
        ));
        h.reads.push(read(
            3,
            CONS,
            (7500, 12500),
            12,
            14,
            ReadResult::Failed("timeout".into()),
        ));
        assert_eq!(run(&h), Vec::<String>::new());
    }

    #[test]
    fn catches_slow_or_failed_local_operations() {
        let mut h = clean();
        h.reads.push(read(
            2,
            ReadKind::Value,
            (3100, 4600),
            8,
            12,
            ReadResult::Value(8),
        ));
        only(&h, "G3:");
        let mut h = clean();
        h.writes.push(write(
            2,
            1,
            3100,
            5100,
            WriteResult::Uncertain("timeout".into()),
        ));
        only(&h, "G3:");
        let mut h = clean();
        h.writes.push(write(
            2,
            1,
            100,
            110,
            WriteResult::Rejected(500, "{}".into()),
        ));
        only(&h, "G3:");
    }

    #[test]
    fn catches_reads_going_backwards() {
        let mut h = clean();
        h.reads
            .push(read(2, CONS, (8200, 8250), 8, 12, ReadResult::Value(9)));
        let v = run(&h);
        assert!(v.len() == 1 && v[0].contains("went backwards"), "{v:#?}");
        let mut h = clean();
        h.reads.push(read(
            3,
            ReadKind::Value,
            (100, 120),
            8,
            8,
            ReadResult::Value(7),
        ));
        let v = run(&h);
        assert!(v.len() == 1 && v[0].contains("went backwards"), "{v:#?}");
    }

    #[test]
    fn allows_a_read_relayed_around_a_cut_link() {
        let mut h = clean();
        h.faults.push(FaultRec {
            label: "cut-link n1-n2".into(),
            begin: ms(30_000),
            active_from: ms(30_000),
            active_until: ms(33_000),
            end: ms(33_000),
            cuts: vec![(1, 2)],
            down: vec![],
            degraded: vec![],
            wiped: false,
            disk_full: false,
        });
        h.reads.push(read(
            1,
            CONS,
            (30_100, 30_200),
            12,
            12,
            ReadResult::Value(12),
        ));
        assert_eq!(run(&h), Vec::<String>::new());
        let f = &h.faults[2];
        assert_eq!(cut_off(1, f, 3), Vec::<usize>::new());
        let split = FaultRec {
            cuts: vec![(1, 3), (2, 3)],
            down: vec![1],
            ..f.clone()
        };
        assert_eq!(cut_off(2, &split, 3), vec![1, 3]);
        assert_eq!(cut_off(3, &split, 3), vec![1, 2]);
    }

    #[test]
    fn a_wiped_node_may_lose_recent_increments_and_must_relearn_its_config() {
        let wipe = FaultRec {
            label: "wipe n2".into(),
            begin: ms(10_000),
            active_from: ms(10_010),
            active_until: ms(10_900),
            end: ms(11_000),
            cuts: vec![],
            down: vec![2],
            degraded: vec![],
            wiped: true,
            disk_full: false,
        };
        let no_config = ReadResult::Unavailable {
            unreachable: vec![],
            best: Some(0),
        };
        let base = || {
            let mut h = clean();
            h.faults.push(wipe.clone());
            // Node 2 acknowledges +3 shortly before it loses its folder.
            h.writes.push(write(2, 3, 9000, 9010, WriteResult::Acked));
            h.reads.push(read(
                2,
                ReadKind::Value,
                (9500, 9510),
                11,
                11,
                ReadResult::Value(11),
            ));
            h
        };
        let mut h = base();
        // That +3 may be gone; nothing else may.
        h.reads.push(read(
            1,
            CONS,
            (12_000, 12_010),
            11,
            15,
            ReadResult::Value(8),
        ));
        // Node 2's own value restarts with its folder.
        h.reads.push(read(
            2,
            ReadKind::Value,
            (12_000, 12_010),
            11,
            15,
            ReadResult::Value(0),
        ));
        // Until it relearns the config it has no one to name.
        h.reads
            .push(read(2, CONS, (12_500, 12_510), 11, 15, no_config.clone()));
        assert_eq!(run(&h), Vec::<String>::new());

        let mut lost_more = base();
        lost_more.reads.push(read(
            1,
            CONS,
            (12_000, 12_010),
            11,
            15,
            ReadResult::Value(7),
        ));
        let v = run(&lost_more);
        assert!(
            v.len() == 1 && v[0].starts_with("G1:") && v[0].contains("lost 1"),
            "{v:#?}"
        );

        let mut not_wiped = base();
        not_wiped
            .reads
            .push(read(1, CONS, (12_500, 12_510), 11, 15, no_config));
        only(&not_wiped, "G5:");
    }

    #[test]
    fn unreachable_entries_match_whole_addresses() {
        let list = vec!["10.77.1.111:7777".to_string()];
        assert!(!names_ip(&list, "10.77.1.11"));
        assert!(names_ip(&["10.77.1.11:7777".to_string()], "10.77.1.11"));
        assert!(names_ip(&["10.77.1.11".to_string()], "10.77.1.11"));
    }

    // ---- membership, storage and replica rules ----

    fn ips4() -> Vec<String> {
        (1..=4).map(|i| format!("10.77.1.{}", 10 + i)).collect()
    }

    fn run4(h: &History, bounds: &Bounds) -> Vec<String> {
        check(h, &ips4(), &names(), bounds).violations
    }

    fn refusal_409() -> WriteResult {
        WriteResult::Rejected(
            409,
            r#"{"error":"this node is not in the cluster's config","actors":["10.77.1.11:7777","10.77.1.12:7777"]}"#
                .into(),
        )
    }

    fn replicas_503() -> WriteResult {
        WriteResult::Rejected(
            503,
            r#"{"error":"stored on 0 of the 1 other actors required","stored":0,"required":1,"local_values":["9"]}"#
                .into(),
        )
    }

    fn storage_503() -> WriteResult {
        WriteResult::Rejected(
            503,
            r#"{"error":"storage: No space left on device (os error 28)"}"#.into(),
        )
    }

    fn no_config_503() -> WriteResult {
        WriteResult::Rejected(
            503,
            r#"{"error":"1 other actors must store this increment, but the config has 0","required":1,"available":0}"#
                .into(),
        )
    }

    /// Four processes, a config of nodes 1-3 to start with, then (10-12 s,
    /// under a split) a config without node 3 that settles.
    fn with_a_shrink() -> History {
        History {
            writes: vec![write(1, 5, 0, 10, WriteResult::Acked)],
            reads: vec![read(2, CONS, (50, 80), 5, 5, ReadResult::Value(5))],
            faults: vec![FaultRec {
                label: "shrink under split".into(),
                begin: ms(10_000),
                active_from: ms(10_010),
                active_until: ms(11_500),
                end: ms(12_000),
                cuts: vec![(1, 3), (2, 3), (3, 4)],
                ..FaultRec::default()
            }],
            initial_actors: vec![1, 2, 3],
            changes: vec![ConfigChange {
                label: "shrink under split".into(),
                begin: ms(10_000),
                end: ms(12_000),
                posted: vec![vec![1, 2]],
                settled: Some(vec![1, 2]),
            }],
            ..History::default()
        }
    }

    #[test]
    fn refusals_classify_by_their_answer() {
        let body = |r: WriteResult| match r {
            WriteResult::Rejected(s, b) => classify(s, &b),
            _ => unreachable!(),
        };
        assert_eq!(body(refusal_409()), Refusal::NotMember);
        assert_eq!(
            body(replicas_503()),
            Refusal::Replicas {
                stored: 0,
                required: 1
            }
        );
        assert_eq!(body(storage_503()), Refusal::Storage);
        assert_eq!(body(no_config_503()), Refusal::TooFewActors);
        assert_eq!(classify(409, r#"{"error":"x"}"#), Refusal::Other);
        assert_eq!(classify(500, r#"{"error":"x"}"#), Refusal::Other);
        assert_eq!(classify(503, "not json"), Refusal::Other);
    }

    #[test]
    fn a_409_from_a_node_that_left_is_refused_not_lost() {
        let mut h = with_a_shrink();
        // Node 3 left: it refuses, and reads owe nothing for it.
        h.writes.push(write(3, 4, 13_000, 13_002, refusal_409()));
        h.reads
            .push(read(1, CONS, (13_100, 13_110), 5, 9, ReadResult::Value(5)));
        assert_eq!(run4(&h, &Bounds::default()), Vec::<String>::new());

        // Node 1 was an actor of every config: its 409 breaks G3.
        let mut h = with_a_shrink();
        h.writes.push(write(1, 4, 13_000, 13_002, refusal_409()));
        let v = run4(&h, &Bounds::default());
        assert!(
            v.len() == 1 && v[0].starts_with("G3:") && v[0].contains("409"),
            "{v:#?}"
        );

        // Node 3 before any change named a config without it: G3 too.
        let mut h = with_a_shrink();
        h.writes.push(write(3, 4, 5_000, 5_002, refusal_409()));
        let v = run4(&h, &Bounds::default());
        assert!(v.len() == 1 && v[0].starts_with("G3:"), "{v:#?}");
    }

    #[test]
    fn g1_makes_no_exception_for_a_membership_change() {
        // Node 3 acknowledges +4 alone, cut off, as the config without it is
        // posted; a read after the change must still include it.
        let mut h = with_a_shrink();
        h.writes
            .push(write(3, 4, 10_500, 10_502, WriteResult::Acked));
        h.reads
            .push(read(1, CONS, (12_500, 12_510), 9, 9, ReadResult::Value(9)));
        assert_eq!(run4(&h, &Bounds::default()), Vec::<String>::new());
        h.reads
            .push(read(2, CONS, (12_600, 12_610), 9, 9, ReadResult::Value(5)));
        let v = run4(&h, &Bounds::default());
        assert!(
            v.iter()
                .any(|m| m.starts_with("G1:") && m.contains("lost 4")),
            "{v:#?}"
        );
    }

    #[test]
    fn rules_naming_nodes_bind_only_actors_of_every_config_in_force() {
        let isolate_n4 = FaultRec {
            label: "isolate n4".into(),
            begin: ms(3_000),
            active_from: ms(3_000),
            active_until: ms(5_000),
            end: ms(5_000),
            cuts: vec![(4, 1), (4, 2), (4, 3)],
            ..FaultRec::default()
        };
        let mut h = with_a_shrink();
        h.faults.push(isolate_n4.clone());
        // Node 4 is in no config: a read need not hear from it.
        h.reads
            .push(read(1, CONS, (3_100, 3_200), 5, 5, ReadResult::Value(5)));
        assert_eq!(run4(&h, &Bounds::default()), Vec::<String>::new());
        // When every node is an actor, the same read cannot have heard from all.
        h.initial_actors = Vec::new();
        h.changes[0].posted = vec![vec![1, 2, 4]];
        h.changes[0].settled = Some(vec![1, 2, 4]);
        let v = run4(&h, &Bounds::default());
        assert!(
            v.len() == 1 && v[0].starts_with("G5:") && v[0].contains("200"),
            "{v:#?}"
        );

        // During the change that removes node 3 (cut off by the split), a
        // read on node 1 may answer 200 or a 503 that does not name node 3;
        // node 4, an actor of no config, is named by no rule either.
        let mut h = with_a_shrink();
        h.reads
            .push(read(1, CONS, (10_100, 11_000), 5, 5, ReadResult::Value(5)));
        h.reads.push(read(
            2,
            CONS,
            (10_100, 11_100),
            5,
            5,
            ReadResult::Unavailable {
                unreachable: vec!["10.77.1.11:7777".into()],
                best: Some(5),
            },
        ));
        assert_eq!(run4(&h, &Bounds::default()), Vec::<String>::new());
        // But nodes 1 and 2 stay actors throughout: had node 1 been cut off
        // from node 2 (and from node 4, which could relay), a 200 would be caught.
        h.faults[0].cuts.extend([(1, 2), (1, 4)]);
        let v = run4(&h, &Bounds::default());
        assert!(
            v.len() == 1 && v[0].starts_with("G5:") && v[0].contains("answered 200"),
            "{v:#?}"
        );
    }

    #[test]
    fn a_node_without_a_config_may_say_so_until_it_is_given_one() {
        let no_config = ReadResult::Unavailable {
            unreachable: vec![],
            best: Some(0),
        };
        let mut h = with_a_shrink();
        h.reads
            .push(read(4, CONS, (2_000, 2_010), 5, 5, no_config.clone()));
        // Also while cut off from actors it would otherwise have to name.
        h.reads
            .push(read(4, CONS, (10_100, 10_110), 5, 5, no_config.clone()));
        assert_eq!(run4(&h, &Bounds::default()), Vec::<String>::new());
        // Once a change naming node 4 settled, it holds a config: G5.
        h.changes[0].posted = vec![vec![1, 2, 4]];
        h.changes[0].settled = Some(vec![1, 2, 4]);
        h.reads
            .push(read(4, CONS, (13_000, 13_010), 5, 5, no_config));
        let v = run4(&h, &Bounds::default());
        assert!(
            v.len() == 1 && v[0].starts_with("G5:") && v[0].contains("13.000s"),
            "{v:#?}"
        );
    }

    #[test]
    fn a_change_must_settle_and_the_final_configs_agree() {
        let mut h = with_a_shrink();
        h.changes[0].settled = None;
        let v = run4(&h, &Bounds::default());
        assert!(v.len() == 1 && v[0].starts_with("G8:"), "{v:#?}");

        let view = |v: u64| Some((v, 1, vec!["10.77.1.11:7777".to_string()]));
        let mut h = with_a_shrink();
        h.final_configs = vec![(1, view(2)), (2, view(2)), (3, view(2))];
        assert_eq!(run4(&h, &Bounds::default()), Vec::<String>::new());
        h.final_configs[2] = (3, view(1));
        let v = run4(&h, &Bounds::default());
        assert!(v.len() == 1 && v[0].starts_with("G8:"), "{v:#?}");
        h.final_configs[2] = (3, None);
        let v = run4(&h, &Bounds::default());
        assert!(v.len() == 1 && v[0].starts_with("G8:"), "{v:#?}");
    }

    fn with_a_full_disk() -> History {
        let mut h = clean();
        h.faults.push(FaultRec {
            label: "disk-full".into(),
            begin: ms(20_000),
            active_from: ms(20_050),
            active_until: ms(22_000),
            end: ms(22_500),
            disk_full: true,
            ..FaultRec::default()
        });
        h.writes.push(write(2, 3, 21_000, 21_001, storage_503()));
        h.disk_recoveries.push(DiskRecovery {
            freed_at: ms(22_000),
            resumed: vec![(1, Some(ms(300))), (2, Some(ms(900))), (3, Some(ms(20)))],
            restarted: vec![],
        });
        h
    }

    #[test]
    fn storage_refusals_only_while_the_disk_is_full_and_writes_resume_in_time() {
        assert_eq!(run(&with_a_full_disk()), Vec::<String>::new());
        let mut h = with_a_full_disk();
        h.writes.push(write(2, 3, 30_000, 30_001, storage_503()));
        only(&h, "G10:");
        let mut h = with_a_full_disk();
        h.disk_recoveries[0].resumed[1] = (2, Some(ms(10_500)));
        only(&h, "G10:");
        let mut h = with_a_full_disk();
        h.disk_recoveries[0].resumed[1] = (2, None);
        only(&h, "G10:");
        let mut h = with_a_full_disk();
        h.disk_recoveries[0].restarted = vec![3];
        only(&h, "G10:");
    }

    #[test]
    fn replica_refusals_only_while_a_node_cannot_reach_enough_actors() {
        let mut h = clean();
        // Node 1 is isolated 3-5 s: it cannot get its increment stored.
        h.writes.push(write(1, 2, 3_200, 4_200, replicas_503()));
        // Just after the heal, its peers may not have pulled yet.
        h.writes.push(write(1, 2, 5_100, 6_100, replicas_503()));
        assert_eq!(run(&h), Vec::<String>::new());
        // With node 3 paused node 2 still reaches node 1: no excuse.
        let mut h = clean();
        h.faults.push(pause(3, 30_000, 31_000));
        h.writes.push(write(2, 2, 30_100, 30_200, replicas_503()));
        only(&h, "G3:");
        // Whereas with node 1 isolated as well, node 2 reaches no one.
        h.faults.push(isolate_n1(30_000, 31_000));
        assert_eq!(run(&h), Vec::<String>::new());
        // Nor on a whole network.
        let mut h = clean();
        h.writes.push(write(2, 2, 15_000, 16_000, replicas_503()));
        only(&h, "G3:");
        // Node 2 itself paused 30-32 s: the pushes it had in flight failed
        // when it resumed, and its peers must pull past them first, as after
        // a heal (seen in chaos_min_replicas_wipes, seed 14157598223164466605).
        let mut h = clean();
        h.faults.push(pause(2, 30_000, 32_000));
        h.writes.push(write(2, 2, 32_010, 33_011, replicas_503()));
        assert_eq!(run(&h), Vec::<String>::new());
        // But not 3 s after that.
        h.writes.push(write(2, 2, 35_100, 36_100, replicas_503()));
        only(&h, "G3:");
    }

    #[test]
    fn a_refusal_for_want_of_a_config_only_while_relearning_it() {
        let wipe = FaultRec {
            label: "wipe n2".into(),
            begin: ms(10_000),
            active_from: ms(10_010),
            active_until: ms(10_900),
            end: ms(11_000),
            down: vec![2],
            wiped: true,
            ..FaultRec::default()
        };
        let mut h = clean();
        h.faults.push(wipe);
        h.writes.push(write(2, 1, 11_100, 11_101, no_config_503()));
        assert_eq!(run(&h), Vec::<String>::new());
        h.writes.push(write(2, 1, 300, 301, no_config_503()));
        only(&h, "G3:");
    }

    #[test]
    fn without_the_wipe_excuse_nothing_a_wipe_took_is_forgiven() {
        let strict = Bounds {
            excuse_wipes: false,
            ..Bounds::default()
        };
        let mut h = clean();
        h.faults.push(FaultRec {
            label: "wipe n2".into(),
            begin: ms(10_000),
            active_from: ms(10_010),
            active_until: ms(10_900),
            end: ms(11_000),
            down: vec![2],
            wiped: true,
            ..FaultRec::default()
        });
        h.writes.push(write(2, 3, 9_000, 9_010, WriteResult::Acked));
        h.reads.push(read(
            1,
            CONS,
            (12_000, 12_010),
            11,
            15,
            ReadResult::Value(15),
        ));
        assert_eq!(
            check(&h, &ips(), &names(), &strict).violations,
            Vec::<String>::new()
        );
        // The increment node 2 acknowledged before its wipe is owed.
        let mut lost = h;
        lost.reads.push(read(
            3,
            CONS,
            (12_100, 12_110),
            11,
            15,
            ReadResult::Value(8),
        ));
        assert!(
            check(&lost, &ips(), &names(), &Bounds::default())
                .violations
                .iter()
                .all(|m| !m.contains("lost 3")),
            "the default run excuses it"
        );
        let v = check(&lost, &ips(), &names(), &strict).violations;
        assert!(
            v.iter()
                .any(|m| m.starts_with("G1:") && m.contains("lost 3")),
            "{v:#?}"
        );
        assert!(
            v.iter().any(|m| m.contains("went backwards")),
            "consistent reads may not go back across a wipe either: {v:#?}"
        );
    }
}
