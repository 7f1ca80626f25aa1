//! What a seed decides: the nodes, the faults over time and how the network
//! misbehaves.
//!
//! The plan is the one source of truth for the state of every host and link
//! at any sim time ([`Plan::link`], [`Plan::running`], [`Plan::paused`],
//! [`Plan::cut`]): the runner applies exactly that state whenever it changes,
//! and the checker judges the history by the same functions. Faults may
//! overlap in time; the state at `t` is derived from every fault active at
//! `t`, so the end of one fault never undoes another that still holds.

use std::time::Duration;

/// Widening applied to a request's time span before asking whether a fault
/// touched it, so that the runner's one-tick lag in applying the plan can
/// only hide a violation, never invent one.
pub const SLOP: Duration = Duration::from_millis(20);

/// How long a node must be up, unpaused and connected to another node for
/// what it acknowledged to be owed even if its data folder is lost later:
/// longer than the sync interval (500 ms ± 20 %) plus a peer call still
/// waiting out its 1 s timeout when contact resumes (as on a held link), a
/// pull round trip with latency and held-back messages, and one more
/// timeout for a lost message.
pub const REPLICATION_WINDOW: Duration = Duration::from_secs(3);

#[derive(Clone, Debug, PartialEq)]
pub enum Fault {
    /// One node cut from every other node (clients still reach it).
    Isolate(usize),
    /// Nodes split into two groups.
    Halves(Vec<usize>),
    /// a–b cut, but both still reach c: a non-transitive partition.
    Bridge(usize, usize),
    /// Every message to and from the node held, as if the process were stopped.
    Pause(usize),
    /// Process killed; restarted with its data once no crash of it holds.
    Crash(usize),
    /// Process killed and its data folder lost when the window starts;
    /// restarted (empty) once no crash of it holds.
    Wipe(usize),
}

#[derive(Clone, Debug)]
pub struct Window {
    pub start: Duration,
    pub end: Duration,
    pub fault: Fault,
}

/// Everything a seed decides.
#[derive(Clone, Debug)]
pub struct Plan {
    pub seed: u64,
    pub nodes: usize,
    /// Possibly overlapping; all end by `heal_at`.
    pub faults: Vec<Window>,
    /// When faults stop and the network is whole again.
    pub heal_at: Duration,
    /// When the workload stops waiting for convergence.
    pub end_at: Duration,
    pub max_latency: Duration,
    /// Chance that a message between nodes breaks its link for a while
    /// (turmoil's fail rate; until `heal_at`, node-to-node links only).
    pub fail_rate: f64,
    /// Chance that a node-to-node request is delivered a second time, late
    /// (its answer ignored).
    pub duplicate_rate: f64,
    /// Chance that a node-to-node request is held back before it is sent, so
    /// later ones overtake it.
    pub delay_rate: f64,
    /// Longest hold-back of a delayed or duplicated request.
    pub max_extra_delay: Duration,
    /// Chance that a workload client drops its connection mid-request.
    pub client_break_rate: f64,
    pub wipes: bool,
}

/// One end of a link: a node (by index) or the workload's client host.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum End {
    Node(usize),
    Client,
}

/// The state of the network between two hosts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Link {
    Open,
    /// Messages held until released (an end is paused).
    Held,
    /// Messages dropped (a partition).
    Cut,
}

fn ms(v: u64) -> Duration {
    Duration::from_millis(v)
}

fn random_fault(rng: &mut fastrand::Rng, nodes: usize, wipes: bool) -> Fault {
    let a = rng.usize(0..nodes);
    match rng.u8(0..if wipes { 7 } else { 6 }) {
        0 | 1 => Fault::Isolate(a),
        2 => {
            let mut group: Vec<usize> = (0..nodes).filter(|_| rng.bool()).collect();
            if group.is_empty() || group.len() == nodes {
                group = vec![a];
            }
            Fault::Halves(group)
        }
        3 => {
            let b = (a + 1 + rng.usize(0..nodes - 1)) % nodes;
            Fault::Bridge(a, b)
        }
        4 => Fault::Pause(a),
        5 => Fault::Crash(a),
        _ => Fault::Wipe(a),
    }
}

impl Plan {
    /// A random plan: a chain of faults with calm gaps between them, a third
    /// of which get a second fault (any kind, any node) starting inside them
    /// and possibly outlasting them, so faults overlap: a crash during a
    /// partition, a pause during a crash, two partitions at once.
    pub fn random(seed: u64, wipes: bool) -> Plan {
        let mut rng = fastrand::Rng::with_seed(seed);
        let nodes = 3 + rng.usize(0..=2);
        let heal_at = Duration::from_secs(20);
        let mut faults = Vec::new();
        let mut t = ms(rng.u64(500..2000));
        while t < heal_at {
            let end = (t + ms(rng.u64(500..4000))).min(heal_at);
            faults.push(Window {
                start: t,
                end,
                fault: random_fault(&mut rng, nodes, wipes),
            });
            if rng.u8(0..3) == 0 {
                let start = t + ms(rng.u64(0..(end - t).as_millis() as u64));
                let inner_end = (start + ms(rng.u64(300..3000))).min(heal_at);
                faults.push(Window {
                    start,
                    end: inner_end,
                    fault: random_fault(&mut rng, nodes, wipes),
                });
            }
            t = end + ms(rng.u64(0..1500));
        }
        faults.sort_by_key(|w| w.start);
        let noisy = |rng: &mut fastrand::Rng, rate: f64| if rng.bool() { rate } else { 0.0 };
        Plan {
            seed,
            nodes,
            faults,
            heal_at,
            end_at: heal_at + Duration::from_secs(15),
            max_latency: ms(rng.u64(1..50)),
            fail_rate: noisy(&mut rng, 0.002),
            duplicate_rate: noisy(&mut rng, 0.03),
            delay_rate: noisy(&mut rng, 0.05),
            max_extra_delay: ms(200),
            client_break_rate: noisy(&mut rng, 0.01),
            wipes,
        }
    }

    fn active(&self, t: Duration) -> impl Iterator<Item = &Fault> + '_ {
        self.faults
            .iter()
            .filter(move |w| w.start <= t && t < w.end)
            .map(|w| &w.fault)
    }

    /// Whether a network fault separates nodes `a` and `b` at `t`.
    pub fn partitioned(&self, a: usize, b: usize, t: Duration) -> bool {
        a != b
            && self.active(t).any(|f| match f {
                Fault::Isolate(x) => *x == a || *x == b,
                Fault::Halves(g) => g.contains(&a) != g.contains(&b),
                Fault::Bridge(x, y) => (*x == a && *y == b) || (*x == b && *y == a),
                Fault::Pause(_) | Fault::Crash(_) | Fault::Wipe(_) => false,
            })
    }

    /// Whether node `x` is paused at `t`.
    pub fn paused(&self, x: usize, t: Duration) -> bool {
        self.active(t).any(|f| *f == Fault::Pause(x))
    }

    /// Whether node `x`'s process runs at `t` (no crash or wipe of it holds).
    pub fn running(&self, x: usize, t: Duration) -> bool {
        !self
            .active(t)
            .any(|f| *f == Fault::Crash(x) || *f == Fault::Wipe(x))
    }

    /// Whether node `x` answers its clients at `t`: running and not paused.
    pub fn serving(&self, x: usize, t: Duration) -> bool {
        self.running(x, t) && !self.paused(x, t)
    }

    /// The state of the link between two hosts at `t`. A partition drops
    /// messages even to a paused end; crashes leave links as they are (the
    /// host itself is down).
    pub fn link(&self, a: End, b: End, t: Duration) -> Link {
        if let (End::Node(x), End::Node(y)) = (a, b)
            && self.partitioned(x, y, t)
        {
            return Link::Cut;
        }
        let paused = |e: End| matches!(e, End::Node(x) if self.paused(x, t));
        if paused(a) || paused(b) {
            Link::Held
        } else {
            Link::Open
        }
    }

    /// Whether node `a` cannot talk to node `b` at `t`, for any reason:
    /// partition, pause or crash of either.
    pub fn cut(&self, a: usize, b: usize, t: Duration) -> bool {
        a != b
            && (self.link(End::Node(a), End::Node(b), t) != Link::Open
                || !self.running(a, t)
                || !self.running(b, t))
    }

    /// Whether node `x` can exchange messages with at least one other node at `t`.
    pub fn connected(&self, x: usize, t: Duration) -> bool {
        (0..self.nodes).any(|y| y != x && !self.cut(x, y, t))
    }

    /// Every sim time at which the plan's state may change, sorted: the
    /// state is constant between two of them.
    pub fn changes(&self) -> Vec<Duration> {
        let mut out: Vec<Duration> = self
            .faults
            .iter()
            .flat_map(|w| [w.start, w.end])
            .chain([self.heal_at])
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// Whether `pred` holds at every instant of `[from, to]` (exact: the
    /// state only changes at [`Plan::changes`]).
    pub fn holds_throughout(
        &self,
        from: Duration,
        to: Duration,
        pred: impl Fn(Duration) -> bool,
    ) -> bool {
        pred(from)
            && self
                .changes()
                .into_iter()
                .filter(|c| from < *c && *c <= to)
                .all(pred)
    }

    /// Whether node `x` served clients for all of `[from, to]`, widened by [`SLOP`].
    pub fn serving_throughout(&self, x: usize, from: Duration, to: Duration) -> bool {
        self.holds_throughout(from.saturating_sub(SLOP), to + SLOP, |t| self.serving(x, t))
    }

    /// Whether nodes `a` and `b` were cut off from each other for all of
    /// `[from, to]`, widened by [`SLOP`].
    pub fn cut_throughout(&self, a: usize, b: usize, from: Duration, to: Duration) -> bool {
        self.holds_throughout(from.saturating_sub(SLOP), to + SLOP, |t| self.cut(a, b, t))
    }

    /// Whether, within `[from, to]`, node `x` was connected to some other
    /// node (both running and unpaused, no partition between them) for an
    /// unbroken stretch of at least `sustained`.
    pub fn had_contact(&self, x: usize, from: Duration, to: Duration, sustained: Duration) -> bool {
        let mut bounds: Vec<Duration> = self
            .changes()
            .into_iter()
            .filter(|c| from < *c && *c < to)
            .collect();
        bounds.push(to);
        let mut segment = from;
        let mut run: Option<Duration> = None;
        for next in bounds {
            if self.connected(x, segment) {
                let began = *run.get_or_insert(segment);
                if next - began >= sustained {
                    return true;
                }
            } else {
                run = None;
            }
            segment = next;
        }
        false
    }
}

/// The wipe exemption: an increment node `node` acknowledged at `acked_at`
/// is excused from G1 by a wipe of that node at `wiped_at` only if the wipe
/// came after it and, in between, the node never had [`REPLICATION_WINDOW`]
/// of unbroken contact with another node. With that much contact it had
/// time to replicate the increment, which is then owed like any other.
pub fn excused_by_wipe(plan: &Plan, node: usize, acked_at: Duration, wiped_at: Duration) -> bool {
    wiped_at >= acked_at && !plan.had_contact(node, acked_at, wiped_at, REPLICATION_WINDOW)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: f64) -> Duration {
        Duration::from_secs_f64(v)
    }

    /// Three nodes and these faults (start, end in seconds).
    fn plan(faults: Vec<(f64, f64, Fault)>) -> Plan {
        Plan {
            nodes: 3,
            faults: faults
                .into_iter()
                .map(|(start, end, fault)| Window {
                    start: s(start),
                    end: s(end),
                    fault,
                })
                .collect(),
            ..Plan::random(1, false)
        }
    }

    #[test]
    fn a_wipe_excuses_what_the_node_never_had_time_to_replicate() {
        // Isolated from 1 s to 10 s, wiped at 10 s: at most 1 s of contact.
        let p = plan(vec![
            (1.0, 10.0, Fault::Isolate(0)),
            (10.0, 11.0, Fault::Wipe(0)),
        ]);
        assert!(excused_by_wipe(&p, 0, s(2.0), s(10.0)));
        assert!(excused_by_wipe(&p, 0, s(0.0), s(10.0)));
        // Isolated only from 5 s: acknowledged at 1 s, it had 4 s to replicate.
        let p = plan(vec![
            (5.0, 10.0, Fault::Isolate(0)),
            (10.0, 11.0, Fault::Wipe(0)),
        ]);
        assert!(!excused_by_wipe(&p, 0, s(1.0), s(10.0)));
        // Acknowledged at 4 s: 1 s is too short to count.
        assert!(excused_by_wipe(&p, 0, s(4.0), s(10.0)));
    }

    #[test]
    fn a_wipe_never_excuses_what_came_after_it() {
        let p = plan(vec![(5.0, 6.0, Fault::Wipe(0))]);
        assert!(!excused_by_wipe(&p, 0, s(7.0), s(5.0)));
        // Right before it, with no time to replicate: excused.
        assert!(excused_by_wipe(&p, 0, s(4.5), s(5.0)));
        // Long before it, on a whole network: owed.
        assert!(!excused_by_wipe(&p, 0, s(1.0), s(5.0)));
    }

    #[test]
    fn contact_needs_a_running_unpaused_peer_and_an_unbroken_stretch() {
        // Node 0 is connected from 0 s to 2 s, then cut by overlapping
        // partitions, then its only peers are down or paused until the wipe.
        let p = plan(vec![
            (2.0, 5.0, Fault::Isolate(0)),
            (4.0, 7.0, Fault::Halves(vec![0])),
            (7.0, 12.0, Fault::Crash(1)),
            (6.5, 12.0, Fault::Pause(2)),
            (12.0, 13.0, Fault::Wipe(0)),
        ]);
        assert!(excused_by_wipe(&p, 0, s(0.5), s(12.0)));
        assert!(!p.had_contact(0, s(0.5), s(12.0), REPLICATION_WINDOW));
        assert!(p.had_contact(0, s(0.0), s(12.0), Duration::from_secs(2)));
        assert!(!p.had_contact(0, s(0.1), s(12.0), Duration::from_secs(2)));
        // Contact in stretches of 2 s each does not add up to 3 s.
        let p = plan(vec![
            (2.0, 2.5, Fault::Pause(0)),
            (4.5, 5.0, Fault::Isolate(0)),
            (7.0, 8.0, Fault::Wipe(0)),
        ]);
        assert!(excused_by_wipe(&p, 0, s(0.0), s(7.0)));
        assert!(excused_by_wipe(&p, 0, s(1.5), s(7.0)));
        // A long calm stretch after the faults: owed.
        assert!(!excused_by_wipe(&p, 0, s(0.0), s(20.0)));
    }

    #[test]
    fn overlapping_faults_compose() {
        let p = plan(vec![
            (1.0, 6.0, Fault::Isolate(0)),
            (4.0, 12.0, Fault::Halves(vec![0, 1])),
            (5.0, 9.0, Fault::Pause(1)),
            (8.0, 10.0, Fault::Crash(1)),
        ]);
        let (n0, n1, n2) = (End::Node(0), End::Node(1), End::Node(2));
        // The isolation ends at 6 s; the split still separates 0 from 2.
        assert_eq!(p.link(n0, n2, s(7.0)), Link::Cut);
        assert_eq!(p.link(n0, n1, s(5.5)), Link::Cut);
        // After the isolation 0 and 1 are on one side, but 1 is paused: held.
        assert_eq!(p.link(n0, n1, s(7.0)), Link::Held);
        assert_eq!(p.link(End::Client, n1, s(7.0)), Link::Held);
        // Crashed while paused: down, its links still held.
        assert!(!p.running(1, s(8.5)));
        assert_eq!(p.link(n0, n1, s(8.5)), Link::Held);
        // The pause ends inside the crash: links open, the node still down.
        assert_eq!(p.link(n0, n1, s(9.5)), Link::Open);
        assert!(p.cut(0, 1, s(9.5)));
        assert!(!p.cut(0, 1, s(10.5)));
        assert!(p.cut(0, 2, s(11.9)));
        assert!(!p.cut(0, 2, s(12.0)));
        assert!(p.cut_throughout(0, 2, s(1.1), s(11.9)));
        assert!(!p.cut_throughout(0, 2, s(1.1), s(12.5)));
        assert!(p.serving_throughout(2, s(0.0), s(19.0)));
        assert!(!p.serving_throughout(1, s(0.0), s(5.0)));
        assert_eq!(
            p.changes(),
            [1.0, 4.0, 5.0, 6.0, 8.0, 9.0, 10.0, 12.0, 20.0].map(s)
        );
    }
}
