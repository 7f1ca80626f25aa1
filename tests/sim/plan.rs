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

/// How long after a disk fault ends its node may still refuse writes: the
/// storage writer retries its reopen with a backoff of at most 1 s, then
/// proves the disk with a probe commit.
pub const DISK_RECOVERY: Duration = Duration::from_millis(1500);

/// What a simulated disk does while a disk fault holds (see
/// `tally::storage::memory::DiskFault`). When faults of one disk overlap, the
/// greatest holds: a stall over a full disk over a failing fsync.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum DiskKind {
    /// Commits write everything, then report an fsync error.
    FailSync,
    /// The disk takes a few more changes, then fails every one with EIO
    /// until the fault ends: a device failing in the middle of a
    /// multi-step operation (a fold, a rotation). Log seeds only; the
    /// memory engine takes it as `FailSync`.
    Dying,
    /// Commits fail with ENOSPC and write nothing.
    Full,
    /// Every storage call waits until the stall ends.
    Stall,
}

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
    /// The node's disk fails (its process keeps running).
    Disk(usize, DiskKind),
    /// Messages from the first node to the second are dropped, the other
    /// way they pass. Over request and answer that cuts both ways, but not
    /// alike: the first node's calls to the second fail at once (the
    /// connection is never made), while the second's calls to the first
    /// arrive and are handled there, and only their answers are lost (the
    /// call runs into its deadline). So neither node can hear from the
    /// other ([`Plan::partitioned`] holds both ways), yet what the second
    /// sends the first still lands.
    OneWay(usize, usize),
    /// The node answers its peers slowly: every node-to-node request it
    /// receives waits 200 ms to 1.5 s (seeded) before it is handled, around
    /// the 1 s deadline of a peer call, so calls to it time out now and
    /// then. Its own calls, and its clients, are served as usual. Not a
    /// cut: a node can hear from it, late.
    Slow(usize),
}

/// A config posted during the run: `actors` (node indices) to a node that
/// holds the newest config. Posts with the same `at` are concurrent (a
/// conflicting pair, one on each side of a partition).
#[derive(Clone, Debug, PartialEq)]
pub struct Post {
    pub at: Duration,
    pub actors: Vec<usize>,
    /// Only these nodes may take the post; otherwise any actor of the newest config.
    pub side: Option<Vec<usize>>,
    /// The node that takes the post goes down shortly after it is sent.
    pub strike: Option<Strike>,
}

/// A crash (or a wipe) of the node a config is posted to, timed from the
/// moment the post is sent, so that it lands before or after the answer.
/// Which node that is, the workload learns only then: it adds the window
/// to the history, and the runner and the checker take it as part of the
/// plan from then on (see [`Plan::with_faults`]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Strike {
    /// From the post being sent to the node going down.
    pub after: Duration,
    /// How long it stays down.
    pub down: Duration,
    /// Its data folder is lost too (wipe seeds; on `--min-replicas` seeds
    /// only when it is [`Plan::wipe_victim`], otherwise it crashes).
    pub wipe: bool,
}

/// Whether and how a seed changes membership.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Changes {
    #[default]
    None,
    /// Configs posted one after the other, each to a node holding the newest.
    Sequential,
    /// Like `Sequential`, then two posts on opposite sides of a partition.
    Conflicting,
}

/// What kind of seed a plan is drawn for.
#[derive(Clone, Copy, Debug, Default)]
pub struct Flavor {
    pub wipes: bool,
    pub disks: bool,
    pub changes: Changes,
    /// Nodes run with `--min-replicas` this high; wipes then strike one node only.
    pub min_replicas: usize,
    /// Nodes store through the shipped log engine over a simulated disk
    /// that loses unsynced writes at crashes, tears them and flips read
    /// bits (otherwise: the memory engine).
    pub log: bool,
    /// The faults added after the first sweeps (one-way partitions, slow
    /// peers, crashes of the node a config was posted to), drawn from a
    /// generator of their own so that the rest of the plan stays as it was.
    pub extra: bool,
    /// A liar sends the nodes forged internal messages until the heal (see
    /// [`Plan::liar`]).
    pub liar: bool,
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
    /// The nodes the config posted at the start names.
    pub initial: Vec<usize>,
    /// Membership changes, by time.
    pub posts: Vec<Post>,
    pub changes: Changes,
    /// `Settings::min_replicas` of every node: with it no wipe excuses anything.
    pub min_replicas: usize,
    /// Nodes run the log engine over a simulated disk (see [`Flavor::log`]).
    pub log: bool,
    /// The one node whose data folder is lost on `--min-replicas` seeds.
    pub wipe_victim: Option<usize>,
    /// One more host, the liar, sends a random node a forged internal
    /// message every 200–500 ms from the start until the heal (see
    /// `sim::liar`); every node must refuse each of them (G11).
    pub liar: bool,
    /// Backups walk the cluster now and then until the heal (see
    /// `sim::walker`); every completed walk is checked like consistent
    /// reads. Off in the scripted scenarios, whose checks count reads.
    pub walks: bool,
}

/// One end of a link: a node (by index), the workload's client host, or
/// the liar's host.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum End {
    Node(usize),
    Client,
    Liar,
}

/// The state of the network between two hosts, or one way between them.
/// The order is severity: when the two ways differ, the link is the worse.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
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

fn random_fault(
    rng: &mut fastrand::Rng,
    nodes: usize,
    flavor: &Flavor,
    wipe_victim: Option<usize>,
) -> Fault {
    let a = rng.usize(0..nodes);
    let kinds = 6 + if flavor.wipes { 1 } else { 0 } + if flavor.disks { 2 } else { 0 };
    match rng.u8(0..kinds) {
        0 | 1 => Fault::Isolate(a),
        2 => Fault::Halves(random_group(rng, nodes, a)),
        3 => {
            let b = (a + 1 + rng.usize(0..nodes - 1)) % nodes;
            Fault::Bridge(a, b)
        }
        4 => Fault::Pause(a),
        5 => Fault::Crash(a),
        6 if flavor.wipes => Fault::Wipe(wipe_victim.unwrap_or(a)),
        _ => Fault::Disk(
            a,
            match rng.u8(0..3) {
                0 => DiskKind::Full,
                // On log seeds half the failing disks die partway instead
                // (by node, so that no draw changes the rest of the plan).
                1 if flavor.log && a.is_multiple_of(2) => DiskKind::Dying,
                1 => DiskKind::FailSync,
                _ => DiskKind::Stall,
            },
        ),
    }
}

/// What [`Flavor::extra`] adds to a plan, from a generator of its own: one
/// to three windows of 0.5–4 s, each a one-way partition between two nodes
/// or a node that answers its peers slowly.
fn extra_faults(seed: u64, nodes: usize, heal_at: Duration) -> Vec<Window> {
    let mut rng = fastrand::Rng::with_seed(seed ^ 0x6f6e_6577_6179_2121);
    (0..rng.usize(1..=3))
        .map(|_| {
            let start = ms(rng.u64(500..heal_at.as_millis() as u64 - 500));
            let end = (start + ms(rng.u64(500..4000))).min(heal_at);
            let a = rng.usize(0..nodes);
            let fault = if rng.bool() {
                Fault::OneWay(a, (a + 1 + rng.usize(0..nodes - 1)) % nodes)
            } else {
                Fault::Slow(a)
            };
            Window { start, end, fault }
        })
        .collect()
}

/// What [`Flavor::extra`] does to the posts of a seed that changes
/// membership one config after the other, from a generator of its own:
/// each post, with even odds, has the node that takes it go down 0–1.5 s
/// after it is sent (a post often waits up to 1 s for peers that a
/// partition hides, so about as often before its answer as after) for
/// 0.3–2 s; on wipe seeds half of those lose the data folder as well.
fn strike_posts(seed: u64, posts: &mut [Post], wipes: bool) {
    let mut rng = fastrand::Rng::with_seed(seed ^ 0x7374_7269_6b65_2121);
    for post in posts.iter_mut().filter(|p| p.side.is_none()) {
        if rng.bool() {
            post.strike = Some(Strike {
                after: ms(rng.u64(0..1500)),
                down: ms(rng.u64(300..2000)),
                wipe: wipes && rng.bool(),
            });
        }
    }
}

/// A random proper subset of the nodes (`a` alone when the draw is not).
fn random_group(rng: &mut fastrand::Rng, nodes: usize, a: usize) -> Vec<usize> {
    let mut group: Vec<usize> = (0..nodes).filter(|_| rng.bool()).collect();
    if group.is_empty() || group.len() == nodes {
        group = vec![a];
    }
    group
}

/// The next actor set from `current`: from 3 actors grow to all 5 or
/// replace one; from more, shrink to 3.
fn next_actors(rng: &mut fastrand::Rng, current: &[usize], nodes: usize) -> Vec<usize> {
    let outside: Vec<usize> = (0..nodes).filter(|x| !current.contains(x)).collect();
    let mut next: Vec<usize> = current.to_vec();
    if current.len() > 3 || outside.is_empty() {
        rng.shuffle(&mut next);
        next.truncate(3);
    } else if rng.bool() && outside.len() >= 2 {
        next.extend(&outside);
    } else {
        next.remove(rng.usize(0..next.len()));
        next.push(outside[rng.usize(0..outside.len())]);
    }
    next.sort();
    next
}

/// A partition in force at `at`: one node isolated or random halves, from
/// up to 1 s before to 1–4 s after.
fn partition_around(
    rng: &mut fastrand::Rng,
    nodes: usize,
    at: Duration,
    heal_at: Duration,
) -> Window {
    let a = rng.usize(0..nodes);
    let fault = if rng.bool() {
        Fault::Isolate(a)
    } else {
        Fault::Halves(random_group(rng, nodes, a))
    };
    Window {
        start: at.saturating_sub(ms(rng.u64(0..1000))),
        end: (at + ms(rng.u64(1000..4000))).min(heal_at),
        fault,
    }
}

/// The membership changes of a seed: the first config, the posts, and the
/// partitions they are made under.
fn draw_changes(
    rng: &mut fastrand::Rng,
    nodes: usize,
    changes: Changes,
    heal_at: Duration,
) -> (Vec<usize>, Vec<Post>, Vec<Window>) {
    let all: Vec<usize> = (0..nodes).collect();
    if changes == Changes::None {
        return (all, Vec::new(), Vec::new());
    }
    let mut current = all.clone();
    if rng.u8(0..4) != 0 {
        rng.shuffle(&mut current);
        current.truncate(3);
        current.sort();
    }
    let initial = current.clone();
    let mut posts = Vec::new();
    let mut windows = Vec::new();
    let sequential = match changes {
        Changes::Sequential => 1 + rng.usize(0..3),
        _ => rng.usize(0..2),
    };
    let mut at = ms(2000 + rng.u64(0..3000));
    for _ in 0..sequential {
        if at + Duration::from_secs(3) > heal_at {
            break;
        }
        let actors = next_actors(rng, &current, nodes);
        windows.push(partition_around(rng, nodes, at, heal_at));
        posts.push(Post {
            at,
            actors: actors.clone(),
            side: None,
            strike: None,
        });
        current = actors;
        at += ms(rng.u64(2500..5000));
    }
    if changes == Changes::Conflicting && at + Duration::from_secs(4) <= heal_at {
        // Two sides, each with an actor of the current config.
        let mut order = current.clone();
        rng.shuffle(&mut order);
        let side_a: Vec<usize> = all
            .iter()
            .copied()
            .filter(|&x| x == order[0] || (x != order[1] && rng.bool()))
            .collect();
        let side_b: Vec<usize> = all
            .iter()
            .copied()
            .filter(|x| !side_a.contains(x))
            .collect();
        windows.push(Window {
            start: at.saturating_sub(ms(rng.u64(200..1000))),
            end: (at + ms(rng.u64(2500..5000))).min(heal_at),
            fault: Fault::Halves(side_a.clone()),
        });
        let first = next_actors(rng, &current, nodes);
        let mut second = next_actors(rng, &current, nodes);
        for _ in 0..10 {
            if second != first {
                break;
            }
            second = next_actors(rng, &current, nodes);
        }
        posts.push(Post {
            at,
            actors: first,
            side: Some(side_a),
            strike: None,
        });
        posts.push(Post {
            at,
            actors: second,
            side: Some(side_b),
            strike: None,
        });
    }
    (initial, posts, windows)
}

impl Plan {
    /// A random plan: a chain of faults with calm gaps between them, a third
    /// of which get a second fault (any kind, any node) starting inside them
    /// and possibly outlasting them, so faults overlap: a crash during a
    /// partition, a pause during a crash, two partitions at once, a disk
    /// that fails during a partition. Seeds that change membership run five
    /// nodes and add a partition around each post.
    pub fn random(seed: u64, flavor: Flavor) -> Plan {
        let mut rng = fastrand::Rng::with_seed(seed);
        let nodes = if flavor.changes == Changes::None {
            3 + rng.usize(0..=2)
        } else {
            5
        };
        let wipe_victim = (flavor.min_replicas > 0).then(|| rng.usize(0..nodes));
        let heal_at = Duration::from_secs(20);
        let mut faults = Vec::new();
        let mut t = ms(rng.u64(500..2000));
        while t < heal_at {
            let end = (t + ms(rng.u64(500..4000))).min(heal_at);
            faults.push(Window {
                start: t,
                end,
                fault: random_fault(&mut rng, nodes, &flavor, wipe_victim),
            });
            if rng.u8(0..3) == 0 {
                let start = t + ms(rng.u64(0..(end - t).as_millis() as u64));
                let inner_end = (start + ms(rng.u64(300..3000))).min(heal_at);
                faults.push(Window {
                    start,
                    end: inner_end,
                    fault: random_fault(&mut rng, nodes, &flavor, wipe_victim),
                });
            }
            t = end + ms(rng.u64(0..1500));
        }
        let noisy = |rng: &mut fastrand::Rng, rate: f64| if rng.bool() { rate } else { 0.0 };
        let max_latency = ms(rng.u64(1..50));
        let fail_rate = noisy(&mut rng, 0.002);
        let duplicate_rate = noisy(&mut rng, 0.03);
        let delay_rate = noisy(&mut rng, 0.05);
        let client_break_rate = noisy(&mut rng, 0.01);
        let (initial, mut posts, partitions) =
            draw_changes(&mut rng, nodes, flavor.changes, heal_at);
        faults.extend(partitions);
        if flavor.extra {
            faults.extend(extra_faults(seed, nodes, heal_at));
            strike_posts(seed, &mut posts, flavor.wipes);
        }
        if flavor.log {
            // Half the power cuts on log seeds catch the disk in the middle
            // of a change: it dies 300 ms before (after a few more changes)
            // and the write it dies in lands in part. Chosen by the cut's
            // time, so that no draw changes the rest of the plan.
            let dying: Vec<Window> = faults
                .iter()
                .filter_map(|w| match w.fault {
                    Fault::Crash(x) | Fault::Wipe(x)
                        if (w.start.as_millis() / 7).is_multiple_of(2) =>
                    {
                        Some(Window {
                            start: w.start.saturating_sub(ms(300)),
                            end: w.start + ms(1),
                            fault: Fault::Disk(x, DiskKind::Dying),
                        })
                    }
                    _ => None,
                })
                .collect();
            faults.extend(dying);
        }
        faults.retain(|w| w.start < w.end);
        faults.sort_by_key(|w| w.start);
        Plan {
            seed,
            nodes,
            faults,
            heal_at,
            end_at: heal_at + Duration::from_secs(15),
            max_latency,
            fail_rate,
            duplicate_rate,
            delay_rate,
            max_extra_delay: ms(200),
            client_break_rate,
            wipes: flavor.wipes,
            initial,
            posts,
            changes: flavor.changes,
            min_replicas: flavor.min_replicas,
            log: flavor.log,
            wipe_victim,
            liar: flavor.liar,
            walks: true,
        }
    }

    /// This plan with `more` faults: those added while the plan ran
    /// (strikes of the nodes posts went to), after the planned ones.
    pub fn with_faults(&self, more: &[Window]) -> Plan {
        let mut plan = self.clone();
        plan.faults.extend(more.iter().cloned());
        plan
    }

    fn active(&self, t: Duration) -> impl Iterator<Item = &Fault> + '_ {
        self.faults
            .iter()
            .filter(move |w| w.start <= t && t < w.end)
            .map(|w| &w.fault)
    }

    /// Whether a network fault drops messages from node `from` to node `to` at `t`.
    pub fn dropped(&self, from: usize, to: usize, t: Duration) -> bool {
        from != to
            && self.active(t).any(|f| match f {
                Fault::Isolate(x) => *x == from || *x == to,
                Fault::Halves(g) => g.contains(&from) != g.contains(&to),
                Fault::Bridge(x, y) => (*x == from && *y == to) || (*x == to && *y == from),
                Fault::OneWay(x, y) => *x == from && *y == to,
                Fault::Pause(_)
                | Fault::Crash(_)
                | Fault::Wipe(_)
                | Fault::Disk(..)
                | Fault::Slow(_) => false,
            })
    }

    /// Whether a network fault separates nodes `a` and `b` at `t`: messages
    /// are dropped one way or both. Over request and answer one way is
    /// enough: neither can hear from the other (see [`Fault::OneWay`]).
    pub fn partitioned(&self, a: usize, b: usize, t: Duration) -> bool {
        self.dropped(a, b, t) || self.dropped(b, a, t)
    }

    /// Whether node `x` answers its peers slowly at `t`.
    pub fn slow(&self, x: usize, t: Duration) -> bool {
        self.active(t).any(|f| *f == Fault::Slow(x))
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

    /// The state of the way from host `from` to host `to` at `t`. A
    /// partition drops messages even to a paused end; crashes leave links
    /// as they are (the host itself is down).
    pub fn flow(&self, from: End, to: End, t: Duration) -> Link {
        if let (End::Node(x), End::Node(y)) = (from, to)
            && self.dropped(x, y, t)
        {
            return Link::Cut;
        }
        let paused = |e: End| matches!(e, End::Node(x) if self.paused(x, t));
        if paused(from) || paused(to) {
            Link::Held
        } else {
            Link::Open
        }
    }

    /// The state of the link between two hosts at `t`: the worse of its
    /// two ways.
    pub fn link(&self, a: End, b: End, t: Duration) -> Link {
        self.flow(a, b, t).max(self.flow(b, a, t))
    }

    /// Whether node `a` cannot talk to node `b` at `t`, for any reason:
    /// partition, pause or crash of either.
    pub fn cut(&self, a: usize, b: usize, t: Duration) -> bool {
        a != b
            && (self.link(End::Node(a), End::Node(b), t) != Link::Open
                || !self.running(a, t)
                || !self.running(b, t))
    }

    /// Whether node `x` can hand what it holds to at least one other node
    /// at `t`: they exchange messages and that node's disk takes writes.
    pub fn connected(&self, x: usize, t: Duration) -> bool {
        (0..self.nodes).any(|y| y != x && !self.cut(x, y, t) && self.disk_settled(y, t))
    }

    /// The fault of node `x`'s disk at `t`, if any.
    pub fn disk(&self, x: usize, t: Duration) -> Option<DiskKind> {
        self.active(t)
            .filter_map(|f| match f {
                Fault::Disk(y, kind) if *y == x => Some(*kind),
                _ => None,
            })
            .max()
    }

    /// Whether node `x`'s disk has worked since [`DISK_RECOVERY`] before `t`.
    pub fn disk_settled(&self, x: usize, t: Duration) -> bool {
        !self.faults.iter().any(|w| {
            matches!(w.fault, Fault::Disk(y, _) if y == x)
                && w.start <= t
                && t < w.end + DISK_RECOVERY
        })
    }

    /// How many changes a dying disk of node `x` takes at `t` before it
    /// fails: 0 to 23, fixed by the seed, the node and the fault's start.
    pub fn dying_after(&self, x: usize, t: Duration) -> u64 {
        let start = self
            .faults
            .iter()
            .filter(|w| w.fault == Fault::Disk(x, DiskKind::Dying) && w.start <= t && t < w.end)
            .map(|w| w.start.as_millis() as u64)
            .min()
            .unwrap_or(0);
        let mut h = self.seed ^ (x as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ start;
        h = (h ^ (h >> 31)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        (h ^ (h >> 29)) % 24
    }

    /// When the stall of node `x`'s disk that holds at `t` ends.
    pub fn stall_end(&self, x: usize, t: Duration) -> Duration {
        self.changes()
            .into_iter()
            .find(|&c| c > t && self.disk(x, c) != Some(DiskKind::Stall))
            .unwrap_or(self.heal_at)
    }

    /// Every time at which a fault of node `x`'s disk ends with no other
    /// holding: the disk works again from then.
    pub fn disk_recoveries(&self, x: usize) -> Vec<Duration> {
        let mut out = Vec::new();
        let mut before = None;
        for c in self.changes() {
            let now = self.disk(x, c);
            if before.is_some() && now.is_none() {
                out.push(c);
            }
            before = now;
        }
        out
    }

    /// Whether node `x`'s disk worked (and had recovered) throughout
    /// `[from, to]`, widened by [`SLOP`].
    pub fn disk_settled_throughout(&self, x: usize, from: Duration, to: Duration) -> bool {
        self.holds_throughout(from.saturating_sub(SLOP), to + SLOP, |t| {
            self.disk_settled(x, t)
        })
    }

    /// Every sim time at which the plan's state may change, sorted: the
    /// state is constant between two of them.
    pub fn changes(&self) -> Vec<Duration> {
        let mut out: Vec<Duration> = self
            .faults
            .iter()
            .flat_map(|w| [w.start, w.end])
            .chain(self.faults.iter().filter_map(|w| {
                matches!(w.fault, Fault::Disk(..)).then_some(w.end + DISK_RECOVERY)
            }))
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
        self.had_contact_if(from, to, sustained, |t| self.connected(x, t))
    }

    /// Like [`Plan::had_contact`], counting contact only with `peers`.
    pub fn had_contact_among(
        &self,
        x: usize,
        from: Duration,
        to: Duration,
        sustained: Duration,
        peers: &[usize],
    ) -> bool {
        self.had_contact_if(from, to, sustained, |t| {
            peers
                .iter()
                .any(|&y| y != x && !self.cut(x, y, t) && self.disk_settled(y, t))
        })
    }

    /// Like [`Plan::had_contact`], with node `y` in particular.
    pub fn had_contact_with(
        &self,
        x: usize,
        y: usize,
        from: Duration,
        to: Duration,
        sustained: Duration,
    ) -> bool {
        self.had_contact_if(from, to, sustained, |t| {
            x != y && !self.cut(x, y, t) && self.disk_settled(y, t)
        })
    }

    /// The first time, from `from` on, by which node `x` has been in
    /// contact with one of `peers` for an unbroken `sustained` (`None` if
    /// never before the plan ends, `end_at`).
    pub fn contact_by(
        &self,
        x: usize,
        from: Duration,
        sustained: Duration,
        peers: &[usize],
    ) -> Option<Duration> {
        let connected = |t: Duration| {
            peers
                .iter()
                .any(|&y| y != x && !self.cut(x, y, t) && self.disk_settled(y, t))
        };
        let mut bounds: Vec<Duration> = self
            .changes()
            .into_iter()
            .filter(|c| from < *c && *c < self.end_at)
            .collect();
        bounds.push(self.end_at);
        let mut segment = from;
        let mut run: Option<Duration> = None;
        for next in bounds {
            if connected(segment) {
                let began = *run.get_or_insert(segment);
                if next - began >= sustained {
                    return Some(began + sustained);
                }
            } else {
                run = None;
            }
            segment = next;
        }
        None
    }

    fn had_contact_if(
        &self,
        from: Duration,
        to: Duration,
        sustained: Duration,
        connected: impl Fn(Duration) -> bool,
    ) -> bool {
        let mut bounds: Vec<Duration> = self
            .changes()
            .into_iter()
            .filter(|c| from < *c && *c < to)
            .collect();
        bounds.push(to);
        let mut segment = from;
        let mut run: Option<Duration> = None;
        for next in bounds {
            if connected(segment) {
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

/// [`excused_by_wipe`] when membership changes: only contact with `peers`
/// counts, the nodes the node replicates to whatever config it holds (the
/// actors of every config made by the wipe).
pub fn excused_by_wipe_among(
    plan: &Plan,
    node: usize,
    acked_at: Duration,
    wiped_at: Duration,
    peers: &[usize],
) -> bool {
    wiped_at >= acked_at
        && !plan.had_contact_among(node, acked_at, wiped_at, REPLICATION_WINDOW, peers)
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
            ..Plan::random(1, Flavor::default())
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
    fn contact_is_counted_with_the_peers_named_and_dated() {
        // Node 0 reaches node 1 from 0 s to 2 s and from 6 s on, node 2
        // from 3 s on.
        let p = plan(vec![
            (2.0, 6.0, Fault::Bridge(0, 1)),
            (0.0, 3.0, Fault::Bridge(0, 2)),
        ]);
        assert!(p.had_contact_among(0, s(3.0), s(6.0), s(3.0), &[1, 2]));
        assert!(!p.had_contact_among(0, s(3.0), s(6.0), s(3.0), &[1]));
        assert_eq!(p.contact_by(0, s(0.0), s(3.0), &[1]), Some(s(9.0)));
        assert_eq!(p.contact_by(0, s(0.0), s(3.0), &[2]), Some(s(6.0)));
        assert_eq!(p.contact_by(0, s(0.0), s(1.0), &[1, 2]), Some(s(1.0)));
        assert_eq!(p.contact_by(0, s(0.0), s(3.0), &[]), None);
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

    #[test]
    fn a_one_way_cut_drops_one_way_and_separates_both() {
        let p = plan(vec![
            (1.0, 5.0, Fault::OneWay(0, 1)),
            (3.0, 4.0, Fault::Pause(1)),
            (2.0, 6.0, Fault::Slow(2)),
        ]);
        let (n0, n1, n2) = (End::Node(0), End::Node(1), End::Node(2));
        assert_eq!(p.flow(n0, n1, s(2.0)), Link::Cut);
        assert_eq!(p.flow(n1, n0, s(2.0)), Link::Open);
        // A pause of the far end holds the way that is not cut.
        assert_eq!(p.flow(n1, n0, s(3.5)), Link::Held);
        assert_eq!(p.flow(n0, n1, s(3.5)), Link::Cut);
        // Neither can hear from the other over request and answer.
        assert_eq!(p.link(n1, n0, s(2.0)), Link::Cut);
        assert!(p.partitioned(1, 0, s(2.0)) && p.partitioned(0, 1, s(2.0)));
        assert!(p.cut_throughout(1, 0, s(1.1), s(4.9)));
        assert!(!p.cut(0, 1, s(5.5)));
        // A slow node is not cut off, and its links are open.
        assert!(p.slow(2, s(2.0)) && !p.slow(2, s(6.0)) && !p.slow(0, s(2.0)));
        assert!(!p.cut(0, 2, s(2.0)));
        assert_eq!(p.link(n0, n2, s(2.0)), Link::Open);
    }

    #[test]
    fn disk_faults_compose_and_recover() {
        let p = plan(vec![
            (1.0, 4.0, Fault::Disk(0, DiskKind::FailSync)),
            (2.0, 3.0, Fault::Disk(0, DiskKind::Stall)),
            (2.5, 6.0, Fault::Disk(0, DiskKind::Full)),
            (8.0, 9.0, Fault::Disk(0, DiskKind::Stall)),
            (1.0, 2.0, Fault::Isolate(2)),
        ]);
        assert_eq!(p.disk(0, s(0.5)), None);
        assert_eq!(p.disk(0, s(1.5)), Some(DiskKind::FailSync));
        // A stall beats a full disk, which beats a failing fsync.
        assert_eq!(p.disk(0, s(2.7)), Some(DiskKind::Stall));
        assert_eq!(p.disk(0, s(3.5)), Some(DiskKind::Full));
        assert_eq!(p.stall_end(0, s(2.1)), s(3.0));
        assert_eq!(p.stall_end(0, s(8.0)), s(9.0));
        assert_eq!(p.disk(1, s(2.7)), None);
        // The disk works again at 6 s and 9 s; the node may refuse writes
        // for DISK_RECOVERY after each.
        assert_eq!(p.disk_recoveries(0), [s(6.0), s(9.0)]);
        assert!(p.disk_recoveries(1).is_empty());
        assert!(!p.disk_settled(0, s(7.0)));
        assert!(p.disk_settled(0, s(7.6)));
        assert!(p.disk_settled_throughout(0, s(7.6), s(7.9)));
        assert!(!p.disk_settled_throughout(0, s(7.6), s(8.5)));
        // A peer whose disk fails takes nothing: no contact for the wipe
        // exemption. Node 1 is isolated from 1 s to 2 s, and node 0's disk
        // does not settle before 7.5 s, so node 1 has only node 2.
        assert!(p.connected(1, s(5.0)));
        assert!(!p.connected(1, s(1.5)));
        let q = plan(vec![
            (1.0, 5.0, Fault::Disk(0, DiskKind::Full)),
            (1.0, 5.0, Fault::Disk(2, DiskKind::Full)),
        ]);
        assert!(!q.connected(1, s(3.0)));
        assert!(!q.connected(1, s(6.0)), "not before the disks recovered");
        assert!(q.connected(1, s(6.6)));
    }
}
