//! Soak run: three nodes of the real `tally` binary in network namespaces
//! under a steady load for `SOAK_SECS` (30 minutes by default), with
//! partitions, pauses, kills, a full disk and a wipe spread over the run;
//! no acknowledged increment may be lost, consistent reads must answer
//! within their bounds, and resident memory, open descriptors and disk use
//! must stay flat. See TESTING.md ("Soak").
//!
//! The run itself is `#[ignore]`d (it is long and needs root): `make soak`
//! runs it. The other tests here check the checker — the leak rule, the
//! sampler, the fault plan and the final-value rule — without root.

#[allow(dead_code)]
#[path = "chaos/check.rs"]
mod check;
#[allow(dead_code)]
#[path = "chaos/client.rs"]
mod client;
#[allow(dead_code)]
#[path = "chaos/cluster.rs"]
mod cluster;
#[path = "common/eintr.rs"]
mod eintr;
#[allow(dead_code)]
#[path = "chaos/harness.rs"]
mod harness;
#[allow(dead_code)]
#[path = "soak/leak.rs"]
mod leak;
#[allow(dead_code)]
#[path = "chaos/net.rs"]
mod net;
#[path = "soak/plan.rs"]
mod plan;
#[allow(dead_code)]
#[path = "chaos/rng.rs"]
mod rng;
#[path = "common/root.rs"]
mod root;
#[path = "soak/run.rs"]
mod run;
#[path = "soak/sample.rs"]
mod sample;

/// The soak itself: `make soak`, or
/// `cargo test --release --test soak -- --ignored --nocapture` as root.
#[test]
#[ignore = "a long run as root (SOAK_SECS, default 1800 s): use `make soak`"]
fn soak() {
    run::soak();
}

mod leak_rule {
    use super::leak::*;
    use super::rng::Rng;

    const MIB_KIB: f64 = 1024.0;
    /// The span a lifetime needs after its warm-up, as the soak runs it.
    const SPAN: f64 = super::run::MIN_SPAN_SECS as f64;

    /// A lifetime of `secs` seconds sampled every 5 s, RSS in MiB given by
    /// `rss(t)` plus up to ±`noise` MiB of noise.
    fn series(secs: u64, noise: f64, rss: impl Fn(f64) -> f64) -> Vec<(f64, f64)> {
        let mut rng = Rng::new(7);
        (0..=secs / 5)
            .map(|k| {
                let t = (k * 5) as f64;
                let jitter = (rng.below(2001) as f64 / 1000.0 - 1.0) * noise;
                (t, rss(t) + jitter)
            })
            .collect()
    }

    fn fit(v: &Verdict) -> Fit {
        match v {
            Verdict::Flat(f) | Verdict::Leak(f) => *f,
            other => panic!("expected a fit, got {other:?}"),
        }
    }

    #[test]
    fn least_squares_recovers_a_line() {
        let pts: Vec<(f64, f64)> = (0..10).map(|x| (x as f64, 2.0 * x as f64 + 5.0)).collect();
        assert!((least_squares(&pts).unwrap() - 2.0).abs() < 1e-9);
        assert_eq!(least_squares(&pts[..2]), None);
        assert_eq!(least_squares(&[(1.0, 1.0), (1.0, 2.0), (1.0, 3.0)]), None);
    }

    #[test]
    fn a_flat_noisy_lifetime_is_flat() {
        let pts = series(1800, 1.0, |_| 10.0);
        let v = judge(&pts, 0.0, 60.0, SPAN, &RSS);
        assert!(matches!(v, Verdict::Flat(_)), "{v:?}");
        assert!(fit(&v).per_hour.abs() < 2.0, "{v:?}");
    }

    #[test]
    fn a_slow_leak_above_the_limit_is_caught_and_one_below_is_not() {
        let leaking = series(1800, 1.0, |t| 10.0 + 20.0 * t / 3600.0);
        let v = judge(&leaking, 0.0, 60.0, SPAN, &RSS);
        assert!(matches!(v, Verdict::Leak(_)), "{v:?}");
        assert!((fit(&v).per_hour - 20.0).abs() < 2.0, "{v:?}");
        let slow = series(1800, 1.0, |t| 10.0 + 10.0 * t / 3600.0);
        assert!(matches!(
            judge(&slow, 0.0, 60.0, SPAN, &RSS),
            Verdict::Flat(_)
        ));
        // The 10-minute run: the same leak is caught there too.
        let short = series(600, 1.0, |t| 10.0 + 32.0 * t / 3600.0);
        assert!(matches!(
            judge(&short, 0.0, 60.0, SPAN, &RSS),
            Verdict::Leak(_)
        ));
    }

    #[test]
    fn growth_during_the_warm_up_is_not_judged() {
        // 8 -> 20 MiB in the first minute after a start, flat after.
        let pts = series(900, 0.5, |t| {
            if t < 60.0 {
                8.0 + 12.0 * t / 60.0
            } else {
                20.0
            }
        });
        assert!(matches!(
            judge(&pts, 0.0, 60.0, SPAN, &RSS),
            Verdict::Flat(_)
        ));
        // The warm-up is counted from the process's start, not from the run's.
        let late: Vec<(f64, f64)> = pts.iter().map(|(t, v)| (t + 500.0, *v)).collect();
        assert!(matches!(
            judge(&late, 500.0, 60.0, SPAN, &RSS),
            Verdict::Flat(_)
        ));
        // Without the warm-up, the climb is a leak.
        let first_minutes: Vec<(f64, f64)> =
            late.iter().copied().filter(|p| p.0 <= 600.0).collect();
        assert!(matches!(
            judge(&first_minutes, 0.0, 0.0, 30.0, &RSS),
            Verdict::Leak(_)
        ));
    }

    #[test]
    fn short_lifetimes_are_not_judged_and_a_blip_is_not_a_trend() {
        let pts = series(230, 0.0, |t| 10.0 + 100.0 * t / 3600.0);
        assert!(matches!(
            judge(&pts, 0.0, 60.0, SPAN, &RSS),
            Verdict::NotJudged(_)
        ));
        // 260 s judged, a 1 MiB step in its middle: the line climbs faster
        // than the limit, but by less than the 2 MiB a span must grow by.
        let blip = series(320, 0.0, |t| if t < 190.0 { 10.0 } else { 11.0 });
        let v = judge(&blip, 0.0, 60.0, SPAN, &RSS);
        assert!(matches!(v, Verdict::Flat(_)), "{v:?}");
        assert!(fit(&v).per_hour > RSS.per_hour, "{v:?}");
        assert!(fit(&v).growth() < RSS.min_growth, "{v:?}");
    }

    #[test]
    fn a_one_off_step_or_a_ramp_that_levels_off_is_not_a_leak_and_steps_that_go_on_are() {
        // 3 MiB more after a fault at 400 s, then flat: fast and large
        // enough overall, but the first half of the span does not grow.
        let step = series(600, 0.2, |t| if t < 400.0 { 30.0 } else { 33.0 });
        let v = judge(&step, 0.0, 60.0, SPAN, &RSS);
        assert!(matches!(v, Verdict::Flat(_)), "{v:?}");
        let f = fit(&v);
        assert!(
            f.per_hour > RSS.per_hour && f.growth() > RSS.min_growth,
            "{v:?}"
        );
        assert!(f.halves.0.abs() < 2.0, "{v:?}");
        // A ramp after a pause that levels off: 40 -> 44.9 MiB over the
        // first 120 s judged, then 0.4 MiB more over the last 140 (as node 1
        // did in a 10-minute run): the second half climbs at about 10 MiB/h,
        // more than half the limit, but by far less than half the minimum.
        let ramp = series(410, 0.02, |t| {
            if t < 270.0 {
                40.0 + 4.9 * ((t - 150.0).max(0.0) / 120.0)
            } else {
                44.9 + 0.4 * (t - 270.0) / 140.0
            }
        });
        let v = judge(&ramp, 90.0, 60.0, SPAN, &RSS);
        assert!(matches!(v, Verdict::Flat(_)), "{v:?}");
        let f = fit(&v);
        assert!(
            f.per_hour > RSS.per_hour && f.growth() > RSS.min_growth,
            "{v:?}"
        );
        assert!(
            f.halves.0 > RSS.per_hour / 2.0 && f.halves.1 > RSS.per_hour / 2.0,
            "{v:?}"
        );
        // 0.5 MiB more after every fault, one a minute: 30 MiB/h in both halves.
        let steps = series(600, 0.2, |t| 30.0 + 0.5 * (t / 60.0).floor());
        let v = judge(&steps, 0.0, 60.0, SPAN, &RSS);
        assert!(matches!(v, Verdict::Leak(_)), "{v:?}");
    }

    #[test]
    fn descriptor_and_store_leaks_are_caught_and_churn_is_not() {
        // Connections come and go: 20 ± 5 descriptors.
        let churn = series(1800, 5.0, |_| 20.0);
        assert!(matches!(
            judge(&churn, 0.0, 60.0, SPAN, &FDS),
            Verdict::Flat(_)
        ));
        // One descriptor every two minutes.
        let fd_leak = series(1800, 5.0, |t| 20.0 + (t / 120.0).floor());
        assert!(matches!(
            judge(&fd_leak, 0.0, 60.0, SPAN, &FDS),
            Verdict::Leak(_)
        ));
        // A B-tree growing 20 MiB an hour, in steps of 1 MiB.
        let store_leak = series(1800, 0.0, |t| 1.0 + (t * 20.0 / 3600.0).floor());
        assert!(matches!(
            judge(&store_leak, 0.0, 60.0, SPAN, &STORE),
            Verdict::Leak(_)
        ));
    }

    fn reading(rss_mib: f64, fds: u64, store_mib: f64, log_mib: f64) -> Reading {
        Reading {
            rss_kib: (rss_mib * MIB_KIB) as u64,
            fds,
            store: (store_mib * 1048576.0) as u64,
            log: (log_mib * 1048576.0) as u64,
        }
    }

    fn samples(
        node: usize,
        pid: u32,
        from: u64,
        to: u64,
        r: impl Fn(f64) -> Reading,
    ) -> Vec<Sample> {
        (from / 5..=to / 5)
            .map(|k| {
                let at = (k * 5) as f64;
                Sample {
                    node,
                    pid,
                    at,
                    reading: r(at),
                }
            })
            .collect()
    }

    #[test]
    fn lifetimes_are_one_pid_each_split_at_storage_recoveries() {
        let mut all = samples(1, 10, 0, 300, |_| reading(10.0, 20, 1.0, 2.0));
        all.extend(samples(1, 11, 310, 900, |_| reading(10.0, 20, 1.0, 2.0)));
        all.extend(samples(2, 12, 0, 900, |_| reading(10.0, 20, 1.0, 2.0)));
        let lives = lifetimes(&all, &[(1, 10, -2.0), (1, 11, 303.0)], &[602.0]);
        let got: Vec<(usize, u32, f64, bool, usize)> = lives
            .iter()
            .map(|l| (l.node, l.pid, l.started, l.after_recovery, l.samples.len()))
            .collect();
        assert_eq!(
            got,
            vec![
                (1, 10, -2.0, false, 61),
                (1, 11, 303.0, false, 59),
                (1, 11, 602.0, true, 60),
                (2, 12, 0.0, false, 121),
                (2, 12, 602.0, true, 60),
            ]
        );
    }

    #[test]
    fn judge_all_reports_leaks_logs_beyond_their_bound_and_unjudged_runs() {
        // Node 1 leaks memory; node 2's log folds twice, node 3's never does
        // and passes its bound.
        let mut all = samples(1, 10, 0, 1200, |t| {
            reading(10.0 + 30.0 * t / 3600.0, 20, 1.0, 2.0)
        });
        all.extend(samples(2, 11, 0, 1200, |t| {
            reading(10.0, 20, 1.0, 2.0 + (t % 400.0) * 30.0 / 400.0)
        }));
        all.extend(samples(3, 12, 0, 1200, |t| {
            reading(10.0, 20, 1.0, 2.0 + t / 20.0)
        }));
        // Node 4 holds more memory than a node ever should, flat.
        all.extend(samples(4, 13, 0, 1200, |_| reading(300.0, 20, 1.0, 2.0)));
        let lives = lifetimes(&all, &[], &[]);
        let (judged, violations) = judge_all(&lives, 60.0, SPAN);
        assert_eq!(violations.len(), 3, "{violations:#?}");
        assert!(
            violations[0].starts_with("leak: node 1 (pid 10) rss grew +30"),
            "{violations:#?}"
        );
        assert!(
            violations[1].starts_with("leak: node 3 (pid 12) log held 40.2 MiB"),
            "{violations:#?}"
        );
        assert!(
            violations[2].starts_with("leak: node 4 (pid 13) held 300.0 MiB resident at 0s"),
            "{violations:#?}"
        );
        assert!(matches!(judged[3].verdicts[0], Verdict::Flat(_)));
        assert_eq!(judged[1].folds, 3);
        assert_eq!(judged[2].folds, 0);

        // Lifetimes too short to judge: the run judged nothing, and says so.
        let short = samples(1, 10, 0, 150, |_| reading(10.0, 20, 1.0, 2.0));
        let (_, violations) = judge_all(&lifetimes(&short, &[], &[]), 60.0, SPAN);
        assert!(
            violations.len() == 1 && violations[0].contains("was not judged"),
            "{violations:#?}"
        );
    }
}

/// The sampler reads real processes and folders: a quiet one is flat, one
/// that leaks memory, descriptors and disk is caught on all three.
mod sampler {
    use std::path::PathBuf;
    use std::time::Duration;

    use super::leak::*;
    use super::sample;

    fn temp_dir(tag: &str) -> PathBuf {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "tally-soak-{tag}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        std::fs::create_dir_all(dir.join("log")).unwrap();
        dir
    }

    /// Samples `pid` and `folder` 30 times, running `step` before each
    /// sample, and judges with no warm-up and a 1 s span. The samples are
    /// stamped 50 ms apart whatever the machine's speed, so that the
    /// verdict depends on how much grew per step, not on how many steps a
    /// loaded machine fits in a second.
    fn watch(pid: u32, folder: &std::path::Path, mut step: impl FnMut()) -> Vec<Verdict> {
        let mut all = Vec::new();
        for k in 0..30u32 {
            step();
            let reading = sample::read(pid, folder).expect("the process is alive");
            all.push(Sample {
                node: 1,
                pid,
                at: f64::from(k) * 0.05,
                reading,
            });
            std::thread::sleep(Duration::from_millis(20));
        }
        let lives = lifetimes(&all, &[], &[]);
        assert_eq!(lives.len(), 1);
        let (judged, _) = judge_all(&lives, 0.0, 1.0);
        judged[0].verdicts.clone()
    }

    #[test]
    fn a_quiet_process_is_flat() {
        let folder = temp_dir("quiet");
        std::fs::write(folder.join("tally.redb"), vec![1u8; 64 << 10]).unwrap();
        let mut child = std::process::Command::new("sleep")
            .arg("10")
            .spawn()
            .unwrap();
        let verdicts = watch(child.id(), &folder, || {});
        let _ = child.kill();
        let _ = child.wait();
        let _ = std::fs::remove_dir_all(&folder);
        assert!(
            verdicts.iter().all(|v| matches!(v, Verdict::Flat(_))),
            "{verdicts:#?}"
        );
    }

    #[test]
    fn a_process_that_leaks_is_caught_on_every_metric() {
        let folder = temp_dir("leaky");
        let mut memory: Vec<Vec<u8>> = Vec::new();
        let mut files: Vec<std::fs::File> = Vec::new();
        let grown = folder.join("grows");
        let verdicts = watch(std::process::id(), &folder, || {
            // 2 MiB touched, one descriptor and 256 KiB on disk per step.
            memory.push(vec![1u8; 2 << 20]);
            files.push(std::fs::File::open("/dev/null").unwrap());
            use std::io::Write;
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&grown)
                .and_then(|mut f| f.write_all(&[7u8; 256 << 10]))
                .unwrap();
        });
        drop(memory);
        drop(files);
        let _ = std::fs::remove_dir_all(&folder);
        for (rule, v) in RULES.iter().zip(&verdicts) {
            assert!(matches!(v, Verdict::Leak(_)), "{}: {v:?}", rule.metric);
        }
    }

    #[test]
    fn disk_use_splits_the_log_from_the_rest_and_a_missing_folder_is_empty() {
        let folder = temp_dir("split");
        std::fs::write(folder.join("tally.redb"), vec![1u8; 1 << 20]).unwrap();
        std::fs::write(folder.join("log").join("1.log"), vec![1u8; 2 << 20]).unwrap();
        let r = sample::read(std::process::id(), &folder).unwrap();
        let _ = std::fs::remove_dir_all(&folder);
        assert!(r.log >= 2 << 20 && r.log < (2 << 20) + (64 << 10), "{r:?}");
        assert!(
            r.store >= 1 << 20 && r.store < (1 << 20) + (64 << 10),
            "{r:?}"
        );
        assert_eq!(sample::disk_use(&folder), 0);
        assert!(r.rss_kib > 0 && r.fds > 0, "{r:?}");
    }
}

mod soak_rules {
    use super::check::*;
    use super::run::{bounds, final_problems, set_aside_disk_replica_refusals};

    fn write(start_ms: u64, result: WriteResult) -> WriteRec {
        WriteRec {
            node: 1,
            name: 0,
            amount: 1,
            start: start_ms * 1000,
            end: start_ms * 1000 + 1000,
            result,
        }
    }

    fn replicas_503() -> WriteResult {
        WriteResult::Rejected(
            503,
            r#"{"error":"stored on 0 of the 1 other actors required","stored":0,"required":1,"local_values":["9"]}"#
                .into(),
        )
    }

    #[test]
    fn replica_refusals_are_set_aside_only_around_a_full_disk() {
        let disk = FaultRec {
            label: "disk-full".into(),
            begin: 10_000_000,
            active_from: 10_100_000,
            active_until: 14_000_000,
            end: 15_000_000,
            disk_full: true,
            ..FaultRec::default()
        };
        let writes = vec![
            write(9_000, replicas_503()),
            write(12_000, replicas_503()),
            write(17_000, replicas_503()),
            write(
                12_000,
                WriteResult::Rejected(
                    503,
                    r#"{"error":"storage: No space left on device (os error 28)"}"#.into(),
                ),
            ),
            write(12_000, WriteResult::Acked),
            write(30_000, replicas_503()),
        ];
        let (kept, aside) = set_aside_disk_replica_refusals(writes, std::slice::from_ref(&disk));
        assert_eq!(aside, 2);
        let starts: Vec<u64> = kept.iter().map(|w| w.start / 1000).collect();
        assert_eq!(starts, vec![9_000, 12_000, 12_000, 30_000]);
        // What is kept the checker still judges: a replica 503 on a whole
        // network is a violation.
        let h = History {
            writes: kept,
            faults: vec![disk],
            ..History::default()
        };
        let ips: Vec<String> = (1..=3).map(|i| format!("10.77.1.{}", 10 + i)).collect();
        let v = check(&h, &ips, &["a".to_string()], &bounds()).violations;
        assert_eq!(v.len(), 2, "{v:#?}");
        assert!(v.iter().all(|m| m.starts_with("G3:")), "{v:#?}");
    }

    #[test]
    fn final_values_must_hold_every_acknowledged_increment_and_agree() {
        let labels = vec!["a".to_string(), "b".to_string()];
        let ok = |v: u128| ReadResult::Value(v);
        let check = |a: Vec<ReadResult>, b: Vec<ReadResult>| {
            let seen: Vec<Vec<(usize, &str, ReadResult)>> = [a, b]
                .into_iter()
                .map(|rs| {
                    rs.into_iter()
                        .enumerate()
                        .map(|(i, r)| (i + 1, "value", r))
                        .collect()
                })
                .collect();
            final_problems(&labels, &[10, 5], &[12, 5], &seen)
        };
        assert_eq!(
            check(vec![ok(11), ok(11)], vec![ok(5), ok(5)]),
            Vec::<String>::new()
        );
        let v = check(vec![ok(9), ok(11)], vec![ok(5), ok(5)]);
        assert!(
            v.len() == 1 && v[0].starts_with("G1/G2: final value of a on node 1 is Value(9)"),
            "{v:#?}"
        );
        let v = check(vec![ok(11), ok(11)], vec![ok(6), ok(5)]);
        assert!(v.len() == 1 && v[0].contains("of b on node 1"), "{v:#?}");
        let v = check(
            vec![ok(10), ok(12)],
            vec![ok(5), ReadResult::Failed("timeout".into())],
        );
        assert_eq!(v.len(), 2, "{v:#?}");
        assert!(v[0].starts_with("G4: final values of a differ"), "{v:#?}");
        assert!(v[1].contains("Failed"), "{v:#?}");
    }

    #[test]
    fn nothing_a_wipe_took_is_excused() {
        let wipe = FaultRec {
            label: "wipe n2".into(),
            begin: 10_000_000,
            active_from: 10_010_000,
            active_until: 10_900_000,
            end: 11_000_000,
            down: vec![2],
            wiped: true,
            ..FaultRec::default()
        };
        let h = History {
            writes: vec![WriteRec {
                node: 2,
                name: 0,
                amount: 3,
                start: 9_000_000,
                end: 9_010_000,
                result: WriteResult::Acked,
            }],
            reads: vec![ReadRec {
                node: 1,
                name: 0,
                kind: ReadKind::Consistent { timeout_ms: 1000 },
                start: 12_000_000,
                end: 12_010_000,
                acked_at_start: 3,
                sent_at_end: 3,
                result: ReadResult::Value(0),
            }],
            faults: vec![wipe],
            ..History::default()
        };
        let ips: Vec<String> = (1..=3).map(|i| format!("10.77.1.{}", 10 + i)).collect();
        let v = check(&h, &ips, &["a".to_string()], &bounds()).violations;
        assert!(
            v.iter()
                .any(|m| m.starts_with("G1:") && m.contains("lost 3")),
            "{v:#?}"
        );
    }
}

mod fault_plan {
    use std::time::Duration;

    use super::plan::*;
    use super::rng::Rng;

    #[test]
    fn faults_are_spread_spare_the_steady_node_and_space_restarts() {
        for secs in [360u64, 600, 1800, 3600] {
            for seed in 0..50u64 {
                // As the soak computes it: the warm-up and the judged span, or a third of the run.
                let gap = Duration::from_secs(60 + super::run::MIN_SPAN_SECS)
                    .min(Duration::from_secs(secs / 3));
                let steady = 1 + (seed % 3) as usize;
                let plan = plan(&mut Rng::new(seed), secs, 3, steady, gap);
                let (total, kills, wipes, disks) = counts(secs);
                assert_eq!(plan.len(), total, "secs {secs} seed {seed}");
                let count = |f: fn(&Kind) -> bool| plan.iter().filter(|p| f(&p.kind)).count();
                assert_eq!(count(|k| matches!(k, Kind::DiskFull)), disks);
                assert!(count(|k| matches!(k, Kind::Kill(_))) <= kills);
                assert!(count(|k| matches!(k, Kind::Wipe(_))) <= wipes);
                if secs >= 300 {
                    assert_eq!(
                        count(|k| matches!(k, Kind::Kill(_))),
                        kills,
                        "secs {secs} seed {seed}: {plan:#?}"
                    );
                    assert_eq!(
                        count(|k| matches!(k, Kind::Wipe(_))),
                        wipes,
                        "secs {secs} seed {seed}: {plan:#?}"
                    );
                }
                let mut last_start = [Duration::ZERO; 4];
                for (k, p) in plan.iter().enumerate() {
                    assert!(p.at >= QUIET_START);
                    let done = p.at + p.hold + Duration::from_secs(5);
                    assert!(
                        done <= Duration::from_secs(secs) - QUIET_END,
                        "secs {secs} seed {seed}: {p:?}"
                    );
                    if let Some(next) = plan.get(k + 1) {
                        assert!(
                            done <= next.at,
                            "secs {secs} seed {seed}: {p:?} then {next:?}"
                        );
                    }
                    if let Some(i) = p.kind.restarts() {
                        assert_ne!(i, steady, "secs {secs} seed {seed}");
                        assert!(
                            p.at >= last_start[i] + gap,
                            "secs {secs} seed {seed}: {plan:#?}"
                        );
                        last_start[i] = p.at + p.hold;
                    }
                }
            }
        }
    }
}
