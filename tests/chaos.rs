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
#[path = "chaos/harness.rs"]
mod harness;
#[path = "chaos/net.rs"]
mod net;
#[path = "chaos/rng.rs"]
mod rng;
#[path = "chaos/run.rs"]
mod run;
#[path = "chaos/scenario.rs"]
mod scenario;

#[test]
fn chaos_real_network() {
    run::chaos();
}

/// The membership change that used to lose increments a removed node had
/// acknowledged alone, replayed step by step (see `chaos/scenario.rs`).
#[test]
fn membership_handoff_scenario() {
    scenario::handoff();
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
}
