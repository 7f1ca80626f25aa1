//! The soak's leak rule, a pure function of the samples, so that it is
//! tested on its own (see `tests/soak.rs`).
//!
//! Each node process is sampled every few seconds: resident memory, open
//! file descriptors, and the size of its data folder, split into the
//! write-ahead log and the rest (the B-tree and small files). A process
//! *lifetime* is one pid of one node, from its start to its end. After a
//! warm-up from the start, a least-squares line is fitted through the
//! samples of a lifetime that has at least `min_span` seconds left; a
//! metric *leaks* when its slope exceeds its rule's rate per hour, the
//! growth the line accounts for over the span exceeds the rule's minimum
//! (so that a blip in a short span is not taken for a trend), and each
//! half of the span, fitted alone, still grows at more than half the rate
//! and by more than half the minimum (a leak keeps leaking; a one-off step
//! or a ramp that levels off — the allocator keeping the high-water mark
//! of a partition's or a pause's backlog — does not).
//!
//! The log is judged by a bound instead: it grows by design until it
//! holds [`LOG_FOLD_MIB`] MiB of records, is then folded into the B-tree
//! and deleted, so within a fold cycle its slope is no evidence either way.

use std::collections::BTreeMap;

/// One look at a node process.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Reading {
    /// `VmRSS` of `/proc/PID/status`.
    pub rss_kib: u64,
    /// Entries of `/proc/PID/fd`.
    pub fds: u64,
    /// Bytes allocated in the data folder outside `log/`.
    pub store: u64,
    /// Bytes allocated in `log/`.
    pub log: u64,
}

#[derive(Clone, Debug)]
pub struct Sample {
    pub node: usize,
    pub pid: u32,
    /// Seconds since the workload began.
    pub at: f64,
    pub reading: Reading,
}

/// A growth rate that counts as a leak, with the reason for its size.
#[derive(Clone, Copy, Debug)]
pub struct Rule {
    pub metric: &'static str,
    pub unit: &'static str,
    /// Slope above which a metric leaks, in `unit` per hour.
    pub per_hour: f64,
    /// ... provided the fitted line also grows by more than this over the
    /// judged span, in `unit`.
    pub min_growth: f64,
    /// The metric of a reading, in `unit`.
    pub of: fn(&Reading) -> f64,
}

const MIB: f64 = 1024.0 * 1024.0;

/// Resident memory. A node serving the soak's load holds about 10 MiB; 16
/// MiB an hour would add more than its whole footprint every hour and
/// exhaust a 1 GiB container within three days. Allocator noise over a
/// 10-30 minute lifetime stays well below it (see TESTING.md).
pub const RSS: Rule = Rule {
    metric: "rss",
    unit: "MiB",
    per_hour: 16.0,
    min_growth: 2.0,
    of: |r| r.rss_kib as f64 / 1024.0,
};

/// Open file descriptors. A node holds about 20 (its files, the listener,
/// client and peer connections); connections come and go by a handful. 20
/// an hour is one descriptor leaked every three minutes: the default soft
/// limit of 1024 would be reached within two days.
pub const FDS: Rule = Rule {
    metric: "fds",
    unit: "fds",
    per_hour: 20.0,
    min_growth: 8.0,
    of: |r| r.fds as f64,
};

/// The data folder without its log: the B-tree, which with a fixed set of
/// names and a capped set of idempotency keys has nothing to grow for
/// once warm. 16 MiB an hour is 384 MiB a day for data that does not grow.
pub const STORE: Rule = Rule {
    metric: "store",
    unit: "MiB",
    per_hour: 16.0,
    min_growth: 2.0,
    of: |r| r.store as f64 / MIB,
};

pub const RULES: [Rule; 3] = [RSS, FDS, STORE];

/// The most resident memory a node may ever hold, in MiB. It serves this
/// load in about 15; but a storage recovery replays the whole log, and the
/// process keeps that memory: a node on its own, its disk filled and freed
/// ten times, held 67 MiB after the first recovery and settled at 116 MiB
/// from the eighth on, with logs of up to 34 MiB (TESTING.md, "Soak"). A
/// node beyond twice that holds memory it has no use for — among others a
/// leak in each recovery, which the slopes, judged between recoveries,
/// cannot see.
pub const RSS_CEILING_MIB: u64 = 256;

/// Log bytes after which the node folds the log into the B-tree (the
/// storage engine's `LogLimits::bytes`).
pub const LOG_FOLD_MIB: u64 = 32;

/// The most a node's log may hold: the fold limit, plus the record that
/// crossed it, plus the zeros a segment is extended with ahead of its
/// records (up to two 1 MiB steps) in the old segment and in the new one.
pub const LOG_BOUND: u64 = (LOG_FOLD_MIB + 8) << 20;

/// Slope (per second) of the least-squares line through `points`; `None`
/// with fewer than 3 points or no spread in time.
pub fn least_squares(points: &[(f64, f64)]) -> Option<f64> {
    if points.len() < 3 {
        return None;
    }
    let n = points.len() as f64;
    let mx = points.iter().map(|p| p.0).sum::<f64>() / n;
    let my = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxx: f64 = points.iter().map(|p| (p.0 - mx) * (p.0 - mx)).sum();
    let sxy: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    (sxx > 0.0).then(|| sxy / sxx)
}

/// The line fitted through the judged part of one lifetime.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Fit {
    pub samples: usize,
    /// The judged span, seconds since the workload began.
    pub from: f64,
    pub to: f64,
    /// The first and last sample in it.
    pub first: f64,
    pub last: f64,
    pub per_hour: f64,
    /// The slopes of the first and second half of the span, fitted alone.
    pub halves: (f64, f64),
}

impl Fit {
    /// Growth of the fitted line over the span.
    pub fn growth(&self) -> f64 {
        self.per_hour * (self.to - self.from) / 3600.0
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum Verdict {
    /// Too short after its warm-up (or too few samples) to judge.
    NotJudged(String),
    Flat(Fit),
    Leak(Fit),
}

/// Judges one metric of one lifetime: `points` are (seconds, value) and
/// the lifetime began at `started`.
pub fn judge(
    points: &[(f64, f64)],
    started: f64,
    warmup: f64,
    min_span: f64,
    rule: &Rule,
) -> Verdict {
    let judged: Vec<(f64, f64)> = points
        .iter()
        .copied()
        .filter(|p| p.0 >= started + warmup)
        .collect();
    let (Some(first), Some(last)) = (judged.first(), judged.last()) else {
        return Verdict::NotJudged("no sample after its warm-up".into());
    };
    let span = last.0 - first.0;
    if span < min_span {
        return Verdict::NotJudged(format!(
            "{span:.0}s after its warm-up, fewer than the {min_span:.0}s needed"
        ));
    }
    let Some(slope) = least_squares(&judged) else {
        return Verdict::NotJudged("too few samples".into());
    };
    let mid = (first.0 + last.0) / 2.0;
    let half = |keep: &dyn Fn(f64) -> bool| {
        let part: Vec<(f64, f64)> = judged.iter().copied().filter(|p| keep(p.0)).collect();
        least_squares(&part).map_or(0.0, |s| s * 3600.0)
    };
    let half_hours = span / 2.0 / 3600.0;
    let fit = Fit {
        samples: judged.len(),
        from: first.0,
        to: last.0,
        first: first.1,
        last: last.1,
        per_hour: slope * 3600.0,
        halves: (half(&|t| t <= mid), half(&|t| t >= mid)),
    };
    // Each half shows at least half the rate and half the growth.
    let grows = |per_hour: f64| {
        per_hour > rule.per_hour / 2.0 && per_hour * half_hours > rule.min_growth / 2.0
    };
    let persistent = grows(fit.halves.0) && grows(fit.halves.1);
    if fit.per_hour > rule.per_hour && fit.growth() > rule.min_growth && persistent {
        Verdict::Leak(fit)
    } else {
        Verdict::Flat(fit)
    }
}

/// One process of one node — or the part of it since its storage was last
/// reopened — and its samples in time order.
#[derive(Clone, Debug)]
pub struct Lifetime {
    pub node: usize,
    pub pid: u32,
    /// When it began (seconds since the workload began; negative for the
    /// processes started before it): the process's start, or the storage
    /// recovery it follows.
    pub started: f64,
    /// Whether it follows a storage recovery rather than a start.
    pub after_recovery: bool,
    pub samples: Vec<(f64, Reading)>,
}

/// Groups samples by process: `starts` says when each (node, pid) was
/// started (a pid without one starts at its first sample). Each process
/// is split again at every time in `reopened` (when the shared disk came
/// back after a full-disk fault and the nodes reopened their storage): a
/// storage recovery reloads the database and replays the log, as a start
/// does, and is judged like one, after a warm-up of its own.
pub fn lifetimes(
    samples: &[Sample],
    starts: &[(usize, u32, f64)],
    reopened: &[f64],
) -> Vec<Lifetime> {
    let mut out: Vec<Lifetime> = Vec::new();
    let mut index: BTreeMap<(usize, u32, usize), usize> = BTreeMap::new();
    for s in samples {
        let start = starts
            .iter()
            .find(|(n, p, _)| *n == s.node && *p == s.pid)
            .map(|(_, _, t)| *t);
        let last_reopen = reopened
            .iter()
            .copied()
            .filter(|&t| t <= s.at && start.is_none_or(|st| t > st))
            .fold(None, |m: Option<f64>, t| Some(m.map_or(t, |m| m.max(t))));
        let era = reopened.iter().filter(|&&t| Some(t) <= last_reopen).count();
        let k = *index.entry((s.node, s.pid, era)).or_insert_with(|| {
            out.push(Lifetime {
                node: s.node,
                pid: s.pid,
                started: last_reopen.or(start).unwrap_or(s.at),
                after_recovery: last_reopen.is_some(),
                samples: Vec::new(),
            });
            out.len() - 1
        });
        out[k].samples.push((s.at, s.reading));
    }
    for l in &mut out {
        l.samples.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    out.sort_by(|a, b| {
        (a.node, a.started)
            .partial_cmp(&(b.node, b.started))
            .unwrap_or(std::cmp::Ordering::Equal)
    });
    out
}

/// What the judge found for one lifetime.
#[derive(Clone, Debug)]
pub struct Judged {
    pub life: Lifetime,
    /// Per rule of [`RULES`], in order.
    pub verdicts: Vec<Verdict>,
    /// The largest log seen, and how many times it was folded (its size
    /// fell by more than 4 MiB from one sample to the next).
    pub log_max: u64,
    pub folds: usize,
}

/// Judges every lifetime; returns them and the violations: every leak,
/// every resident size beyond [`RSS_CEILING_MIB`], every log beyond
/// [`LOG_BOUND`], and a run in which no lifetime could be judged at all.
pub fn judge_all(lives: &[Lifetime], warmup: f64, min_span: f64) -> (Vec<Judged>, Vec<String>) {
    let mut violations = Vec::new();
    let mut out = Vec::new();
    for life in lives {
        let verdicts: Vec<Verdict> = RULES
            .iter()
            .map(|rule| {
                let points: Vec<(f64, f64)> = life
                    .samples
                    .iter()
                    .map(|(t, r)| (*t, (rule.of)(r)))
                    .collect();
                judge(&points, life.started, warmup, min_span, rule)
            })
            .collect();
        for (rule, v) in RULES.iter().zip(&verdicts) {
            if let Verdict::Leak(f) = v {
                violations.push(format!(
                    "leak: node {} (pid {}) {} grew {:+.1} {u}/h over {:.0}s after its warm-up ({:+.1} and {:+.1} {u}/h in its halves; {:.1} -> {:.1} {u}; limit {} {u}/h and {} {u} over the span, half of both in each half)",
                    life.node,
                    life.pid,
                    rule.metric,
                    f.per_hour,
                    f.to - f.from,
                    f.halves.0,
                    f.halves.1,
                    f.first,
                    f.last,
                    rule.per_hour,
                    rule.min_growth,
                    u = rule.unit,
                ));
            }
        }
        let log_max = life.samples.iter().map(|(_, r)| r.log).max().unwrap_or(0);
        let folds = life
            .samples
            .windows(2)
            .filter(|w| w[1].1.log + (4 << 20) < w[0].1.log)
            .count();
        if let Some((t, r)) = life
            .samples
            .iter()
            .find(|(_, r)| r.rss_kib > RSS_CEILING_MIB << 10)
        {
            violations.push(format!(
                "leak: node {} (pid {}) held {:.1} MiB resident at {t:.0}s, beyond the {RSS_CEILING_MIB} MiB it may ever hold",
                life.node,
                life.pid,
                r.rss_kib as f64 / 1024.0
            ));
        }
        if let Some((t, r)) = life.samples.iter().find(|(_, r)| r.log > LOG_BOUND) {
            violations.push(format!(
                "leak: node {} (pid {}) log held {:.1} MiB at {t:.0}s, beyond the {} MiB it may hold (folded at {LOG_FOLD_MIB} MiB)",
                life.node,
                life.pid,
                r.log as f64 / MIB,
                LOG_BOUND >> 20
            ));
        }
        out.push(Judged {
            life: life.clone(),
            verdicts,
            log_max,
            folds,
        });
    }
    let any_judged = out.iter().any(|j| {
        j.verdicts
            .iter()
            .all(|v| !matches!(v, Verdict::NotJudged(_)))
    });
    if !any_judged {
        violations.push(format!(
            "leak: no process (or stretch between storage recoveries) lasted {:.0}s beyond its {:.0}s warm-up: resource use was not judged",
            min_span, warmup
        ));
    }
    (out, violations)
}
