//! The soak's fault schedule: a fixed number of faults spread evenly over
//! the run, drawn from one seed, so that processes live long enough for
//! their resource use to be judged.
//!
//! One node, the *steady* node, is never killed or wiped: it lives the
//! whole run, so at least one long lifetime is always there to judge. The
//! other nodes are killed or wiped, each at most once per `restart_gap`.

use std::time::Duration;

use super::rng::Rng;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    /// SIGSTOP, held, SIGCONT.
    Pause(usize),
    /// One node cut off from every other (nftables, both ways).
    Isolate(usize),
    /// One link cut; both ends still reach the third node.
    CutLink(usize, usize),
    /// SIGKILL, held down, restarted with the same id and folder.
    Kill(usize),
    /// SIGKILL, the data folder deleted, held down, restarted.
    Wipe(usize),
    /// The shared tmpfs filled up, held, freed.
    DiskFull,
}

impl Kind {
    /// The first word is the fault's kind in the summary.
    pub fn label(&self) -> String {
        match self {
            Kind::Pause(i) => format!("pause n{i}"),
            Kind::Isolate(i) => format!("isolate n{i}"),
            Kind::CutLink(a, b) => format!("cut-link n{a}-n{b}"),
            Kind::Kill(i) => format!("kill n{i} (SIGKILL, restart on its folder)"),
            Kind::Wipe(i) => format!("wipe n{i} (SIGKILL, data folder deleted, restart)"),
            Kind::DiskFull => "disk-full (the shared tmpfs filled up)".to_string(),
        }
    }

    /// The node whose process this fault replaces, if any.
    pub fn restarts(&self) -> Option<usize> {
        match self {
            Kind::Kill(i) | Kind::Wipe(i) => Some(*i),
            _ => None,
        }
    }
}

#[derive(Clone, Debug)]
pub struct Planned {
    /// From the start of the workload.
    pub at: Duration,
    pub hold: Duration,
    pub kind: Kind,
}

/// No fault in the first seconds of the workload nor in its last ones.
pub const QUIET_START: Duration = Duration::from_secs(20);
pub const QUIET_END: Duration = Duration::from_secs(15);

/// How many faults of each kind a run of `secs` seconds gets: every kind at
/// least once, then one kill per 5 minutes, one wipe per 15, one full disk
/// per 10, and partitions and pauses for the rest of one fault per 40 s.
pub fn counts(secs: u64) -> (usize, usize, usize, usize) {
    let kills = (secs / 300).max(1) as usize;
    let wipes = (secs / 900).max(1) as usize;
    let disks = (secs / 600).max(1) as usize;
    let total = ((secs / 40) as usize).max(kills + wipes + disks + 2);
    (total, kills, wipes, disks)
}

/// The schedule for `n` nodes (≥ 3), `secs` seconds of workload, with
/// `steady` never restarted and no node restarted within `restart_gap` of
/// its last start (its first start counts: time 0). The restarts are
/// spread evenly over the slots that allow them, taking the other nodes
/// in turn; the first full disk comes early, the others are spread evenly;
/// partitions and pauses take the rest.
pub fn plan(
    rng: &mut Rng,
    secs: u64,
    n: usize,
    steady: usize,
    restart_gap: Duration,
) -> Vec<Planned> {
    assert!(n >= 3, "the soak plans for at least 3 nodes");
    let (total, kills, wipes, disks) = counts(secs);
    let usable = Duration::from_secs(secs).saturating_sub(QUIET_START + QUIET_END);
    let slot = usable / total as u32;
    let slot_start = |k: usize| QUIET_START + slot * k as u32;

    // 0 kill, 1 wipe, 2 disk, 3 partition or pause; kills and wipes in a
    // random order, placed evenly over the slots that start after the gap.
    let mut kinds = vec![3u8; total];
    let mut restarts: Vec<u8> = std::iter::repeat_n(0, kills)
        .chain(std::iter::repeat_n(1, wipes))
        .collect();
    for i in (1..restarts.len()).rev() {
        let j = rng.index(i + 1);
        restarts.swap(i, j);
    }
    let candidates: Vec<usize> = (0..total)
        .filter(|&k| slot_start(k) >= restart_gap)
        .collect();
    if !candidates.is_empty() {
        let r = restarts.len();
        for (j, kind) in restarts.iter().enumerate() {
            let k =
                candidates[((2 * j + 1) * candidates.len() / (2 * r)).min(candidates.len() - 1)];
            kinds[k] = *kind;
        }
    }
    // Full disks: the first early, in the second slot, the others evenly
    // after it, each on the nearest slot no restart took. A storage
    // recovery starts a stretch that is judged on its own, so the stretches
    // between them are long.
    for j in 0..disks {
        let want = 1 + j * (total - 1) / disks;
        let free = (0..total)
            .filter(|&k| kinds[k] == 3)
            .min_by_key(|&k| k.abs_diff(want));
        if let Some(k) = free {
            kinds[k] = 2;
        }
    }

    let mut others: Vec<usize> = (1..=n).filter(|&i| i != steady).collect();
    for i in (1..others.len()).rev() {
        let j = rng.index(i + 1);
        others.swap(i, j);
    }
    let mut turn = 0;
    let mut last_start = vec![Duration::ZERO; n + 1];
    let mut out = Vec::with_capacity(total);
    for (k, &kind) in kinds.iter().enumerate() {
        let hold = Duration::from_millis(match kind {
            0 => rng.range(1000, 4000),
            1 => rng.range(1000, 3000),
            2 => rng.range(3000, 6000),
            _ => rng.range(2000, 8000),
        });
        // Inside its slot, with room for the heal and the restart after it.
        let room = slot.saturating_sub(hold + Duration::from_secs(5));
        let at = slot_start(k) + Duration::from_millis(rng.below(room.as_millis() as u64 + 1));
        // The next node in turn, if it may be restarted by now.
        let restarted = (kind <= 1)
            .then(|| others[turn % others.len()])
            .filter(|&i| at >= last_start[i] + restart_gap);
        let node = |rng: &mut Rng| 1 + rng.index(n);
        let kind = match (kind, restarted) {
            (0, Some(i)) => Kind::Kill(i),
            (1, Some(i)) => Kind::Wipe(i),
            (2, _) => Kind::DiskFull,
            _ => match rng.below(3) {
                0 => Kind::Pause(node(rng)),
                1 => Kind::Isolate(node(rng)),
                _ => {
                    let pair = rng.subset(n, 2);
                    Kind::CutLink(pair[0] + 1, pair[1] + 1)
                }
            },
        };
        if let Some(i) = kind.restarts() {
            last_start[i] = at + hold;
            turn += 1;
        }
        out.push(Planned { at, hold, kind });
    }
    out
}
