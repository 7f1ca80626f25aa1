//! Judges a history against SPEC §3 (G1–G5) and the liveness required after
//! the last heal. Every time in the history is sim time, the clock the plan
//! is written in.

use std::fmt;
use std::time::Duration;

use super::plan::excused_by_wipe;
use super::{CLIENT_TIMEOUT, History, Inc, LIVENESS_BOUND, Outcome, Plan};

/// Which check found a violation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Check {
    /// The run itself failed (config never accepted, simulation error).
    Setup,
    /// G1: a consistent read that answered 200 missed an increment
    /// acknowledged before it began.
    G1Read,
    /// G1: the converged value lost an acknowledged increment.
    G1Final,
    /// G2: a value (local, consistent, a 503's best known or converged)
    /// above what clients had sent.
    G2,
    /// G3: an increment or local read sent to a node that was running and
    /// unpaused throughout did not answer 200 within the client's timeout.
    G3,
    /// G4: the nodes agreed, but later than 10 s after the heal.
    G4Late,
    /// G4: the nodes never agreed.
    G4Never,
    /// G5: a consistent read on a node running and unpaused throughout
    /// answered later than its deadline + 1.5 s, or not at all.
    G5Deadline,
    /// G5: a consistent read answered 200 although a node it must hear from
    /// was cut off from it for the whole read.
    G5Unheard,
    /// G5: a consistent read that started 5 s after the heal failed.
    G5AfterHeal,
    /// After the heal a node acknowledged no increment, or answered no
    /// consistent read with 200, within `LIVENESS_BOUND`.
    Liveness,
}

#[derive(Clone, Debug)]
pub struct Violation {
    pub check: Check,
    pub detail: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}: {}", self.check, self.detail)
    }
}

/// How much later than its deadline a consistent read may answer.
const DEADLINE_SLACK: Duration = Duration::from_millis(1500);
/// How long after the heal every consistent read must succeed.
const AFTER_HEAL: Duration = Duration::from_secs(5);
/// How long after the heal the nodes must agree.
const CONVERGENCE_BOUND: Duration = Duration::from_secs(10);

/// Checks a history against G1–G5 and liveness; returns every violation found.
pub fn check(plan: &Plan, h: &History) -> Vec<Violation> {
    let mut bad = Vec::new();
    let mut flag = |check: Check, detail: String| bad.push(Violation { check, detail });
    if let Some(e) = &h.setup_failed {
        flag(Check::Setup, e.clone());
        return bad;
    }
    // An acknowledged increment is owed to a read that answered at `by`
    // unless a wipe of its node before then excuses it.
    let excused = |i: &Inc, by: Duration| {
        h.wipes
            .iter()
            .any(|&(n, w)| n == i.node && w <= by && excused_by_wipe(plan, n, i.end, w))
    };
    let owed_before = |name: &str, t: Duration, by: Duration| -> u128 {
        h.incs
            .iter()
            .filter(|i| i.acked() && i.name == name && i.end <= t && !excused(i, by))
            .map(|i| u128::from(i.amount))
            .sum()
    };
    let sent_before = |name: &str, t: Duration| -> u128 {
        h.incs
            .iter()
            .filter(|i| i.name == name && i.start <= t)
            .map(|i| u128::from(i.amount))
            .sum()
    };
    let acked_total = |name: &str| -> u128 {
        h.incs
            .iter()
            .filter(|i| i.acked() && i.name == name)
            .map(|i| u128::from(i.amount))
            .sum()
    };

    // G3: increments answer on every node that runs, during partitions too.
    for i in &h.incs {
        if plan.serving_throughout(i.node, i.start, i.end)
            && !matches!(i.outcome, Outcome::Ok(_) | Outcome::Broken)
        {
            flag(
                Check::G3,
                format!(
                    "increment of {:?} on n{} from {:?} to {:?}, a running node, was not acknowledged within {CLIENT_TIMEOUT:?}: {:?}",
                    i.name,
                    i.node + 1,
                    i.start,
                    i.end,
                    i.outcome
                ),
            );
        }
    }

    for r in &h.reads {
        let kind = if r.consistent { "consistent" } else { "local" };
        // G2: never more than was sent.
        let shown = match &r.outcome {
            Outcome::Ok(v) => Some(*v),
            Outcome::Unavailable { best, .. } => Some(*best),
            _ => None,
        };
        if let Some(v) = shown {
            let sent = sent_before(&r.name, r.end);
            if v > sent {
                flag(
                    Check::G2,
                    format!(
                        "{kind} read of {:?} on n{} at {:?} showed {v}, but only {sent} was sent",
                        r.name,
                        r.node + 1,
                        r.end
                    ),
                );
            }
        }
        let serving = plan.serving_throughout(r.node, r.start, r.end);
        if !r.consistent {
            // G3: local reads answer on every node that runs.
            if serving && !matches!(r.outcome, Outcome::Ok(_) | Outcome::Broken) {
                flag(
                    Check::G3,
                    format!(
                        "local read of {:?} on n{} from {:?} to {:?}, a running node, did not answer within {CLIENT_TIMEOUT:?}: {:?}",
                        r.name,
                        r.node + 1,
                        r.start,
                        r.end,
                        r.outcome
                    ),
                );
            }
            continue;
        }
        // G1: a successful consistent read includes everything acknowledged
        // before it began (unless a wipe before it answered excuses it).
        if let Some(v) = r.value() {
            let owed = owed_before(&r.name, r.start, r.end);
            if v < owed {
                flag(
                    Check::G1Read,
                    format!(
                        "consistent read of {:?} on n{} from {:?} to {:?} returned {v} < {owed} acknowledged before it",
                        r.name,
                        r.node + 1,
                        r.start,
                        r.end
                    ),
                );
            }
        }
        // G5: a node that runs throughout answers by its deadline.
        let bound = r.timeout + DEADLINE_SLACK;
        let took = r.end - r.start;
        let late = match &r.outcome {
            Outcome::Ok(_) | Outcome::Unavailable { .. } => took > bound,
            Outcome::TimedOut => r.client_timeout >= bound,
            Outcome::Lost(_) => true,
            Outcome::Refused(_) | Outcome::Broken => false,
        };
        if serving && late {
            flag(
                Check::G5Deadline,
                format!(
                    "consistent read of {:?} on n{} from {:?} (deadline {:?}), a running node, ended after {took:?} (> {bound:?}): {:?}",
                    r.name,
                    r.node + 1,
                    r.start,
                    r.timeout,
                    r.outcome
                ),
            );
        }
        // G5: never 200 while a node it must hear from was cut off throughout.
        if r.value().is_some()
            && let Some(other) =
                (0..plan.nodes).find(|&o| plan.cut_throughout(r.node, o, r.start, r.end))
        {
            flag(
                Check::G5Unheard,
                format!(
                    "consistent read of {:?} on n{} from {:?} to {:?} answered 200 although n{} was cut off from it the whole time",
                    r.name,
                    r.node + 1,
                    r.start,
                    r.end,
                    other + 1
                ),
            );
        }
        if r.after_heal
            && r.value().is_none()
            && r.outcome != Outcome::Broken
            && r.start >= plan.heal_at + AFTER_HEAL
        {
            flag(
                Check::G5AfterHeal,
                format!(
                    "consistent read of {:?} on n{} started {:?}, {AFTER_HEAL:?} after the heal, failed at {:?}: {:?}",
                    r.name,
                    r.node + 1,
                    r.start,
                    r.end,
                    r.outcome
                ),
            );
        }
    }

    // G4: converge after the heal, to a value that keeps every owed increment.
    match h.converged_at {
        None => flag(Check::G4Never, "nodes never agreed after the heal".into()),
        Some(t) => {
            if t > plan.heal_at + CONVERGENCE_BOUND {
                flag(
                    Check::G4Late,
                    format!(
                        "nodes agreed only at {t:?}, healed at {:?} (bound {CONVERGENCE_BOUND:?})",
                        plan.heal_at
                    ),
                );
            }
            for (name, values) in &h.final_values {
                let v = values[0];
                let owed = owed_before(name, Duration::MAX, Duration::MAX);
                let sent = sent_before(name, Duration::MAX);
                if v < owed {
                    flag(
                        Check::G1Final,
                        format!(
                            "{name:?} converged to {v} < {owed} owed (total acknowledged {})",
                            acked_total(name)
                        ),
                    );
                }
                if v > sent {
                    flag(
                        Check::G2,
                        format!("{name:?} converged to {v} > {sent} sent"),
                    );
                }
            }
        }
    }

    // Liveness: after the heal every node acknowledges and reads consistently.
    let bound = plan.heal_at + LIVENESS_BOUND;
    for node in 0..plan.nodes {
        let probe = h.liveness.iter().find(|l| l.node == node);
        let acked = probe.and_then(|l| l.acked_at).filter(|&t| t <= bound);
        let read = probe.and_then(|l| l.read_at).filter(|&t| t <= bound);
        if acked.is_none() {
            flag(
                Check::Liveness,
                format!(
                    "n{} acknowledged no increment between the heal at {:?} and {bound:?}; last answer {:?}",
                    node + 1,
                    plan.heal_at,
                    probe.and_then(|l| l.last_increment.clone())
                ),
            );
        }
        if read.is_none() {
            flag(
                Check::Liveness,
                format!(
                    "n{} answered no consistent read with 200 between the heal at {:?} and {bound:?}; last answer {:?}",
                    node + 1,
                    plan.heal_at,
                    probe.and_then(|l| l.last_read.clone())
                ),
            );
        }
    }
    bad
}
