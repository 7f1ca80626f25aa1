//! Judges a history against SPEC §3 (G1–G5, and G11 for the liar's forged
//! messages) and the liveness required after the last heal. Every time in
//! the history is sim time, the clock the plan is written in.

use std::fmt;
use std::time::Duration;

use super::plan::{REPLICATION_WINDOW, SLOP, excused_by_wipe_among};
use super::{
    CLIENT_TIMEOUT, History, Inc, LIVENESS_BOUND, Outcome, Plan, Posted, RECOVERY_BOUND, Refusal,
    final_config, newest,
};

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
    /// After the heal an actor of the final config acknowledged no
    /// increment, or answered no consistent read with 200, within
    /// `LIVENESS_BOUND`.
    Liveness,
    /// After the heal a node that left the cluster did not refuse an
    /// increment as a non-member within `LIVENESS_BOUND`.
    Departed,
    /// A node whose disk works again (and that runs, and is an actor) took
    /// no increment into storage within `RECOVERY_BOUND`.
    DiskRecovery,
    /// After the heal the nodes of the last configs posted did not all
    /// report the same config, the one with the highest stamp.
    OneConfig,
    /// A config post to a running node with a working disk that holds the
    /// newest config did not answer 200.
    Post,
    /// G11: a node took a forged internal message that it must refuse (see
    /// `sim::liar`): a push raising its own component, or past the bounds
    /// of a push; a config too far ahead in version; a pull that fakes a
    /// replica's acknowledgement.
    G11ForgedAccepted,
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

/// Whether a post's config may have been lost, or not reached the nodes of
/// the config it came from, with its node's data folder: that node was
/// wiped after the post was sent, before it had [`REPLICATION_WINDOW`] of
/// contact with an actor of that config. (A config is stored on its node
/// before it answers, then sent to everyone; until an actor of the old
/// config holds it, a read that goes by the old one cannot learn it, and
/// after the wipe the node itself may relearn the old one.)
fn fragile(plan: &Plan, h: &History, p: &Posted) -> bool {
    let (Some(x), Some(base)) = (p.target, newest(&h.posts, p.generation)) else {
        // The first config is posted before any fault.
        return false;
    };
    let base = &base.actors;
    h.wipes.iter().any(|&(n, w)| {
        n == x
            && w + SLOP >= p.start
            && !plan.had_contact_among(x, p.start, w, REPLICATION_WINDOW, base)
    })
}

/// The configs a request running from `from` to `to` may go by: the newest
/// config posted (200) before it began, and every config posted (or sent,
/// with an unknown outcome) until it ended. A config that did not survive,
/// or may not have reached the nodes of the one before it (see
/// [`fragile`]), leaves the one before in force.
/// `fragile` holds [`fragile`] of each post, in order.
fn in_force<'h>(
    fragile: &[bool],
    h: &'h History,
    from: Duration,
    to: Duration,
) -> impl Iterator<Item = &'h Posted> {
    let base = h
        .posts
        .iter()
        .zip(fragile)
        .filter(|(p, fragile)| p.config().is_some() && p.end <= from && !**fragile)
        .map(|(p, _)| p.generation)
        .max()
        .unwrap_or(0);
    h.posts
        .iter()
        .filter(move |p| p.generation >= base && p.made() && p.start <= to)
}

/// Whether node `x` is an actor of every config in force from `from` to `to`.
fn actor_throughout(fragile: &[bool], h: &History, x: usize, from: Duration, to: Duration) -> bool {
    in_force(fragile, h, from, to).all(|p| p.actors.contains(&x))
}

/// The nodes a node replicates to whatever config it holds by `t`: the
/// actors of every config made by then.
fn steady_peers(plan: &Plan, h: &History, t: Duration) -> Vec<usize> {
    (0..plan.nodes)
        .filter(|x| {
            h.posts
                .iter()
                .filter(|p| p.made() && p.start <= t)
                .all(|p| p.actors.contains(x))
        })
        .collect()
}

/// Whether node `x` may hold, by `to`, a config it left: one made by then
/// that does not name it, after (or beside) one that did. A node cut off
/// from the newest config keeps an older one, so one removed and re-added
/// refuses increments until it learns it was re-added. A node no config
/// named before never holds one that leaves it out.
fn ever_left(h: &History, x: usize, to: Duration) -> bool {
    h.posts.iter().any(|p| {
        p.made()
            && p.start <= to
            && !p.actors.contains(&x)
            && h.posts
                .iter()
                .any(|q| q.made() && q.generation <= p.generation && q.actors.contains(&x))
    })
}

/// Whether node `x` may still hold, at `t`, a config that does not name it
/// (README: a node refuses increments while the config it holds does not
/// name it): some config made by then does not, and since the last one
/// that does, `x` has not had [`REPLICATION_WINDOW`] of unbroken contact
/// with the node that took that post.
fn may_not_know_it_is_named(plan: &Plan, h: &History, x: usize, t: Duration) -> bool {
    let made = || h.posts.iter().filter(|p| p.made() && p.start <= t);
    if !made().any(|p| !p.actors.contains(&x)) {
        return false;
    }
    match made()
        .filter(|p| p.actors.contains(&x))
        .max_by_key(|p| p.start)
    {
        None => true,
        Some(named) => named.target.is_none_or(|poster| {
            !plan.had_contact_with(x, poster, named.start, t, REPLICATION_WINDOW)
        }),
    }
}

/// Nodes whose increments a consistent read may miss although they were
/// acknowledged by an actor: those that a [`fragile`] config added, for
/// what they acknowledged from its post on until they had
/// [`REPLICATION_WINDOW`] of contact with an actor of the config before it
/// (as actors of the new config they hold it, but a read that goes by the
/// old one does not ask them until one of its actors learned the new one
/// from them). Returns (node, from, until); they are owed to the
/// converged value like everything else.
fn added_by_fragile(plan: &Plan, h: &History) -> Vec<(usize, Duration, Duration)> {
    let mut out = Vec::new();
    for p in h.posts.iter().filter(|p| fragile(plan, h, p)) {
        let before: Vec<usize> = newest(&h.posts, p.generation)
            .map(|b| b.actors.clone())
            .unwrap_or_default();
        for &x in p.actors.iter().filter(|x| !before.contains(x)) {
            let until = plan
                .contact_by(x, p.start, REPLICATION_WINDOW, &before)
                .unwrap_or(Duration::MAX);
            out.push((x, p.start, until));
        }
    }
    out
}

/// Nodes whose increments a consistent read is not promised (README,
/// "Membership changes"): with conflicting posts, the nodes that only the
/// losing config named, for what they acknowledged once it was posted.
/// Returns them with the time the losing config was posted.
fn unpromised(h: &History) -> Option<(Vec<usize>, Duration)> {
    let last = h.posts.iter().map(|p| p.generation).max()?;
    let pair: Vec<&Posted> = h
        .posts
        .iter()
        .filter(|p| p.generation == last && p.config().is_some())
        .collect();
    if pair.len() < 2 {
        return None;
    }
    let winner = pair.iter().max_by_key(|p| p.config())?;
    let parent = newest(&h.posts, last)?;
    let mut nodes = Vec::new();
    let mut since = Duration::MAX;
    for loser in pair.iter().filter(|p| p.config() != winner.config()) {
        since = since.min(loser.start);
        nodes.extend(
            loser
                .actors
                .iter()
                .filter(|x| !winner.actors.contains(x) && !parent.actors.contains(x)),
        );
    }
    Some((nodes, since))
}

/// Checks a history against G1–G5, liveness, storage recovery and
/// membership; returns every violation found.
pub fn check(plan: &Plan, h: &History) -> Vec<Violation> {
    // The plan as it ran: with the strikes the workload timed from posts.
    let plan = &plan.with_faults(&h.struck);
    let mut bad = Vec::new();
    let mut flag = |check: Check, detail: String| bad.push(Violation { check, detail });
    if let Some(e) = &h.setup_failed {
        flag(Check::Setup, e.clone());
        return bad;
    }
    // G11: every forged message is refused.
    for f in h.forged.iter().filter(|f| f.believed()) {
        flag(
            Check::G11ForgedAccepted,
            format!(
                "n{} took a forged message ({:?}: {}) sent at {:?}, answered at {:?}: {:?}",
                f.node + 1,
                f.lie,
                f.what,
                f.start,
                f.end,
                f.answer
            ),
        );
    }
    let fragile: Vec<bool> = h.posts.iter().map(|p| fragile(plan, h, p)).collect();
    // An acknowledged increment is owed to a read that answered at `by`
    // unless a wipe of its node before then excuses it: the first such
    // wipe, per increment. With `--min-replicas` nothing is excused:
    // another node stored it first.
    let peers_at: Vec<Vec<usize>> = h
        .wipes
        .iter()
        .map(|&(_, w)| steady_peers(plan, h, w))
        .collect();
    let excused_from: Vec<Option<Duration>> = h
        .incs
        .iter()
        .map(|i| {
            if plan.min_replicas > 0 || !i.acked() {
                return None;
            }
            h.wipes
                .iter()
                .zip(&peers_at)
                .filter(|&(&(n, w), peers)| {
                    n == i.node && excused_by_wipe_among(plan, n, i.end, w, peers)
                })
                .map(|(&(_, w), _)| w)
                .min()
        })
        .collect();
    let excused = |k: usize, by: Duration| excused_from[k].is_some_and(|w| w <= by);
    // A node that no config which exists names never had one: what it
    // acknowledged, it acknowledged as a cluster of one, which nothing
    // promises (README). Only a config lost with a data folder does that.
    let configured_node = |x: usize| {
        h.posts
            .iter()
            .any(|p| p.config().is_some() && p.actors.contains(&x))
    };
    // A node wiped once the newest config that exists leaves it out comes
    // back as a new node, without a config: once its hand-off was
    // confirmed nobody asks it again, and it acknowledges increments as a
    // cluster of one (README: not promised) until a config that names it
    // again reaches it. Owed to no one, and not held to refuse as a
    // leaver. (Configs lost with a folder do not count: nobody holds them
    // to ask it.)
    let exists = |p: &&Posted| p.made() && p.config().is_some();
    let wiped_out = |x: usize, from: Duration, to: Duration| {
        h.wipes.iter().any(|&(n, w)| {
            let latest = h
                .posts
                .iter()
                .filter(exists)
                .filter(|p| p.start <= w)
                .map(|p| p.generation)
                .max();
            n == x
                && w <= from
                && h.posts
                    .iter()
                    .filter(exists)
                    .any(|p| Some(p.generation) == latest && !p.actors.contains(&x))
                && !h
                    .posts
                    .iter()
                    .filter(exists)
                    .any(|p| w < p.start && p.start <= to && p.actors.contains(&x))
        })
    };
    let configured = |i: &Inc| configured_node(i.node) && !wiped_out(i.node, i.start, i.end);
    let unpromised = unpromised(h);
    let added_by_fragile = added_by_fragile(plan, h);
    let promised = |i: &Inc| {
        !matches!(&unpromised, Some((nodes, since)) if nodes.contains(&i.node) && i.start >= *since)
            && !added_by_fragile
                .iter()
                .any(|&(x, since, until)| x == i.node && since <= i.start && i.start < until)
    };
    let owed_before = |name: &str, t: Duration, by: Duration, all: bool| -> u128 {
        h.incs
            .iter()
            .enumerate()
            .filter(|&(k, i)| i.acked() && i.name == name && i.end <= t && !excused(k, by))
            .filter(|(_, i)| configured(i))
            .filter(|(_, i)| all || promised(i))
            .map(|(_, i)| u128::from(i.amount))
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
    let finals: Vec<usize> = final_config(&h.posts)
        .map(|f| f.actors.clone())
        .unwrap_or_default();

    // Posts: one made to a running node with a working disk that holds the
    // newest config answers 200 (the workload chose it so), unless the
    // node went down (a strike) before the answer came.
    let struck_first = |p: &Posted| {
        matches!(p.outcome, Outcome::Lost(_) | Outcome::TimedOut)
            && p.struck.as_ref().is_some_and(|s| s.start <= p.end + SLOP)
    };
    for p in h
        .posts
        .iter()
        .filter(|p| p.made() && p.stamp().is_none() && !struck_first(p))
    {
        flag(
            Check::Post,
            format!(
                "config {:?} posted to n{} at {:?} answered {:?}",
                p.actors,
                p.target.map_or(0, |t| t + 1),
                p.start,
                p.outcome
            ),
        );
    }

    // G3: increments answer on every node that runs, during partitions too,
    // unless it left the cluster, waits for replicas it was asked to wait
    // for, or its disk fails.
    for i in &h.incs {
        if !plan.serving_throughout(i.node, i.start, i.end)
            || matches!(i.outcome, Outcome::Ok(_) | Outcome::Broken)
        {
            continue;
        }
        let excused = match &i.outcome {
            Outcome::Refused(Refusal::NotMember, _) => {
                ever_left(h, i.node, i.end) || may_not_know_it_is_named(plan, h, i.node, i.start)
            }
            Outcome::Refused(Refusal::Replicas | Refusal::TooFewActors, _) => plan.min_replicas > 0,
            Outcome::Refused(Refusal::Storage, _) | Outcome::TimedOut => {
                !plan.disk_settled_throughout(i.node, i.start, i.end)
            }
            _ => false,
        };
        if !excused {
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
            // G3: local reads answer on every node that runs, whatever its disk does.
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
        // before it began (unless a wipe before it answered excuses it, or
        // the README does not promise it).
        if let Some(v) = r.value() {
            let owed = owed_before(&r.name, r.start, r.end, false);
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
            Outcome::Refused(..) | Outcome::Broken | Outcome::Posted(_) | Outcome::Status(_) => {
                false
            }
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
        // G5: never 200 while a node it must hear from (an actor of every
        // config in force) was cut off throughout.
        if r.value().is_some()
            && let Some(other) = (0..plan.nodes).find(|&o| {
                actor_throughout(&fragile, h, o, r.start, r.end)
                    && plan.cut_throughout(r.node, o, r.start, r.end)
            })
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
            && finals.contains(&r.node)
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
                let owed = owed_before(name, Duration::MAX, Duration::MAX, true);
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
            // Per node: what each node acknowledged is in its own
            // components, so an uncertain increment applied elsewhere
            // cannot hide a lost one in the sum.
            for (name, per_node) in &h.final_components {
                for node in 0..plan.nodes {
                    let owed: u128 = h
                        .incs
                        .iter()
                        .enumerate()
                        .filter(|(_, i)| i.acked() && &i.name == name && i.node == node)
                        .filter(|&(k, i)| !excused(k, Duration::MAX) && configured(i))
                        .map(|(_, i)| u128::from(i.amount))
                        .sum();
                    let held = per_node.get(&node).copied().unwrap_or(0);
                    if held < owed {
                        flag(
                            Check::G1Final,
                            format!(
                                "{name:?} converged with n{}'s components at {held} < {owed} it acknowledged",
                                node + 1
                            ),
                        );
                    }
                }
            }
        }
    }

    // Liveness: after the heal every actor of the final config acknowledges
    // and reads consistently; every node that left refuses increments.
    let bound = plan.heal_at + LIVENESS_BOUND;
    for node in 0..plan.nodes {
        let probe = h.liveness.iter().find(|l| l.node == node);
        if probe.is_some_and(|l| l.departed) {
            if probe.and_then(|l| l.refused_at).is_none_or(|t| t > bound)
                && !wiped_out(node, bound, bound)
            {
                flag(
                    Check::Departed,
                    format!(
                        "n{} left the cluster but refused no increment as a non-member between the heal at {:?} and {bound:?}; last answer {:?}",
                        node + 1,
                        plan.heal_at,
                        probe.and_then(|l| l.last_increment.clone())
                    ),
                );
            }
            continue;
        }
        if !finals.contains(&node) {
            continue;
        }
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

    // Storage heals by itself: once a node's disk works again, the node
    // takes writes within the bound, without a restart.
    for r in &h.recoveries {
        let until = r.from + RECOVERY_BOUND;
        let applies = plan.serving_throughout(r.node, r.from, until)
            && plan.holds_throughout(r.from, until, |t| plan.disk(r.node, t).is_none())
            && !r.not_asked;
        if applies && r.took_at.is_none_or(|t| t > until) {
            flag(
                Check::DiskRecovery,
                format!(
                    "n{}'s disk worked again from {:?}, but no increment was taken by {until:?}; last answer {:?}",
                    r.node + 1,
                    r.from,
                    r.last
                ),
            );
        }
    }

    // One config everywhere after the heal: the highest stamp posted last
    // (of the configs that exist: one may be lost with a data folder, if
    // its node never had the time to hand it on).
    for (p, &fragile_post) in h
        .posts
        .iter()
        .zip(&fragile)
        .filter(|(p, _)| p.stamp().is_some() && p.config().is_none())
    {
        if !fragile_post {
            flag(
                Check::OneConfig,
                format!(
                    "config {:?} posted to n{} at {:?} answered {:?}, but the nodes settled on an older one, {:?}, though no wipe excuses its loss",
                    p.actors,
                    p.target.map_or(0, |t| t + 1),
                    p.start,
                    p.outcome,
                    h.settled
                ),
            );
        }
    }
    let last = h
        .posts
        .iter()
        .filter(|p| p.config().is_some())
        .map(|p| p.generation)
        .max();
    let highest = h
        .posts
        .iter()
        .filter(|p| Some(p.generation) == last)
        .filter_map(|p| p.config())
        .max();
    let disagree: Vec<String> = h
        .configs
        .iter()
        .filter(|(_, stamp)| *stamp != highest)
        .map(|(x, stamp)| format!("n{}: {stamp:?}", x + 1))
        .collect();
    if h.configs_agreed_at.is_none() || !disagree.is_empty() {
        flag(
            Check::OneConfig,
            format!(
                "after the heal the nodes did not all report config {highest:?} by {bound:?}: {}",
                disagree.join(", ")
            ),
        );
    }
    bad
}
