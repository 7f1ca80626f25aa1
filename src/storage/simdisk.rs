//! A simulated disk that lies the way real ones do, for simulations and
//! tests of the disk engine (the engine nodes run, over [`Disk`]).
//!
//! What it models:
//! - **Crashes.** Every write lands in the process's view at once; only
//!   `sync_data` makes a file's writes durable, and only `sync_dir` makes
//!   the folder entries (files created, renamed, removed) durable. At a
//!   [`SimDisk::crash`], whatever was not synced may be lost: each unsynced
//!   write lands whole, lands in part (a random subset of its 512-byte
//!   sectors: a torn write), or not at all, in any order; each folder's
//!   unsynced entries land together or not at all. Handles from before the
//!   crash fail from then on.
//! - **Failing writes and syncs** ([`SimFault::Full`], [`SimFault::FailSync`]):
//!   a full disk fails every write that would store bytes (ENOSPC) and
//!   changes nothing; a failing sync reports EIO after deciding, write by
//!   write, what reached the disk, and forgets the rest (what Linux does
//!   with the pages of a failed `fsync`: the process still reads them, a
//!   crash loses them).
//! - **Stalls** ([`SimFault::Stall`]): every call waits until then.
//! - **Flipped bits**: reads of chosen files return one flipped bit at a
//!   given rate (transient, as from a bad cable), and [`SimDisk::rot`]
//!   flips a stored bit for good (bit rot).
//!
//! Sectors are 512 bytes and are written whole or not at all, as disks
//! promise. Every random choice comes from one seeded generator, so a run
//! replays exactly.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, ErrorKind};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::time::Instant;

use super::disk::{Disk, DiskFile};

/// The unit a disk writes whole.
pub const SECTOR: usize = 512;

/// A fault of the simulated disk, in force until replaced.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SimFault {
    #[default]
    None,
    /// Writes fail with ENOSPC and store nothing.
    Full,
    /// Syncs fail with EIO; what they were to make durable may or may not be.
    FailSync,
    /// Every call waits until then, as on a disk that stopped answering.
    Stall(Instant),
    /// The disk dies after this many more changes (writes, syncs, folder
    /// changes): from then on every change fails with EIO and lands
    /// nowhere, as when a device fails in the middle of a multi-step
    /// operation.
    Dying(u64),
}

/// What the disk did, for summaries.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SimStats {
    pub crashes: u64,
    /// Unsynced writes lost whole, and torn, at crashes.
    pub lost_writes: u64,
    pub torn_writes: u64,
    /// Reads that returned a flipped bit, and bits flipped at rest.
    pub flipped_reads: u64,
    pub rotten_bits: u64,
    pub failed_writes: u64,
    pub failed_syncs: u64,
}

impl SimStats {
    /// Adds another disk's figures to these.
    pub fn add(&mut self, other: &SimStats) {
        self.crashes += other.crashes;
        self.lost_writes += other.lost_writes;
        self.torn_writes += other.torn_writes;
        self.flipped_reads += other.flipped_reads;
        self.rotten_bits += other.rotten_bits;
        self.failed_writes += other.failed_writes;
        self.failed_syncs += other.failed_syncs;
    }
}

#[derive(Clone)]
enum Pending {
    Write { offset: u64, data: Vec<u8> },
    SetLen(u64),
}

#[derive(Clone, Default)]
struct Inode {
    /// What the process reads.
    data: Vec<u8>,
    /// What survives a crash.
    durable: Vec<u8>,
    /// Changes since the last sync, in order.
    pending: Vec<Pending>,
}

#[derive(Clone)]
struct State {
    /// Ordered, as every map here: a crash draws its choices file by file,
    /// so the order of the files must not change from one run to the next.
    inodes: BTreeMap<u64, Inode>,
    next_inode: u64,
    /// Path -> inode, as the process sees the folders.
    names: BTreeMap<String, u64>,
    /// Path -> inode, as a crash leaves them.
    durable_names: BTreeMap<String, u64>,
    /// Folders whose entries changed since their last sync.
    dirty_dirs: BTreeSet<String>,
    fault: SimFault,
    /// Reads of paths starting with this prefix flip a bit at this rate.
    flip_reads: Option<(String, f64)>,
    /// The next this many reads of paths starting with the prefix flip a bit.
    flip_next: Option<(String, u64)>,
    rng: fastrand::Rng,
    /// Bumped by each crash; handles of an earlier boot fail.
    boot: u64,
    /// The change in progress is the one the dying disk dies in: a write
    /// lands in part (some of its sectors, unsynced) before it fails.
    dying_now: bool,
    /// The dying disk has died.
    died: bool,
    stats: SimStats,
}

/// A simulated data folder; clones share it.
#[derive(Clone)]
pub struct SimDisk {
    state: Arc<Mutex<State>>,
    name: Arc<str>,
}

fn parent(path: &str) -> &str {
    path.rsplit_once('/').map_or("", |(dir, _)| dir)
}

fn apply(data: &mut Vec<u8>, op: &Pending) {
    match op {
        Pending::Write {
            offset,
            data: bytes,
        } => {
            let start = usize::try_from(*offset).expect("simulated files fit memory");
            let end = start + bytes.len();
            if data.len() < end {
                data.resize(end, 0);
            }
            data[start..end].copy_from_slice(bytes);
        }
        Pending::SetLen(len) => {
            data.resize(
                usize::try_from(*len).expect("simulated files fit memory"),
                0,
            );
        }
    }
}

/// The part of a write that lands when it is torn: a random subset of the
/// sectors it covers (a sector lands whole or not at all).
fn torn(rng: &mut fastrand::Rng, offset: u64, data: &[u8]) -> Vec<Pending> {
    let mut out = Vec::new();
    let mut at = 0usize;
    while at < data.len() {
        let pos = offset + at as u64;
        let to_boundary = SECTOR - (pos as usize % SECTOR);
        let end = (at + to_boundary).min(data.len());
        if rng.bool() {
            out.push(Pending::Write {
                offset: pos,
                data: data[at..end].to_vec(),
            });
        }
        at = end;
    }
    out
}

/// Counts one change against a dying disk; true when the disk is dead.
fn dead(s: &mut State) -> bool {
    match &mut s.fault {
        SimFault::Dying(0) => {
            // The first change that finds it dead is the one it dies in.
            s.dying_now = !s.died;
            s.died = true;
            true
        }
        SimFault::Dying(left) => {
            *left -= 1;
            false
        }
        _ => false,
    }
}

/// [`dead`] for a change that lands nothing when it fails.
fn dead_now(s: &mut State) -> bool {
    let dead = dead(s);
    s.dying_now = false;
    dead
}

fn eio(what: &str) -> io::Error {
    io::Error::other(format!(
        "input/output error: the device is gone ({what}, simulated)"
    ))
}

impl SimDisk {
    /// An empty disk whose random choices follow `seed`.
    pub fn new(name: &str, seed: u64) -> SimDisk {
        SimDisk {
            state: Arc::new(Mutex::new(State {
                inodes: BTreeMap::new(),
                next_inode: 1,
                names: BTreeMap::new(),
                durable_names: BTreeMap::new(),
                dirty_dirs: BTreeSet::new(),
                fault: SimFault::None,
                flip_reads: None,
                flip_next: None,
                rng: fastrand::Rng::with_seed(seed),
                boot: 0,
                dying_now: false,
                died: false,
                stats: SimStats::default(),
            })),
            name: name.into(),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A disk with the same contents and state, independent from now on.
    pub fn fork(&self, name: &str) -> SimDisk {
        SimDisk {
            state: Arc::new(Mutex::new(self.state().clone())),
            name: name.into(),
        }
    }

    pub fn inject(&self, fault: SimFault) {
        let mut s = self.state();
        s.fault = fault;
        s.died = false;
    }

    pub fn fault(&self) -> SimFault {
        self.state().fault
    }

    /// From now on, reads of files whose path starts with `prefix` return
    /// one flipped bit with probability `rate` (0 stops it).
    pub fn flip_reads(&self, prefix: &str, rate: f64) {
        self.state().flip_reads = (rate > 0.0).then(|| (prefix.to_string(), rate));
    }

    /// The next `reads` reads of files whose path starts with `prefix`
    /// each return one flipped bit.
    pub fn flip_next_reads(&self, prefix: &str, reads: u64) {
        self.state().flip_next = Some((prefix.to_string(), reads));
    }

    pub fn stats(&self) -> SimStats {
        self.state().stats
    }

    /// Power is cut: what was not synced may be lost or torn (see the
    /// module doc), and open handles stop working.
    pub fn crash(&self) {
        let mut s = self.state();
        let s = &mut *s;
        s.boot += 1;
        s.stats.crashes += 1;
        // Folder entries: each folder's unsynced changes land together or not at all.
        let dirty = std::mem::take(&mut s.dirty_dirs);
        for dir in dirty {
            if s.rng.bool() {
                s.durable_names.retain(|p, _| parent(p) != dir);
                for (p, &ino) in &s.names {
                    if parent(p) == dir {
                        s.durable_names.insert(p.clone(), ino);
                    }
                }
            }
        }
        s.names = s.durable_names.clone();
        let live: BTreeSet<u64> = s.names.values().copied().collect();
        s.inodes.retain(|ino, _| live.contains(ino));
        let rng = &mut s.rng;
        let stats = &mut s.stats;
        for inode in s.inodes.values_mut() {
            let mut content = std::mem::take(&mut inode.durable);
            // A third of the time nothing unsynced lands at all.
            let none = rng.u8(..3) == 0;
            for op in std::mem::take(&mut inode.pending) {
                if none {
                    stats.lost_writes += 1;
                    continue;
                }
                match (&op, rng.u8(..3)) {
                    (_, 0) => apply(&mut content, &op),
                    (Pending::Write { offset, data }, 1) => {
                        stats.torn_writes += 1;
                        for part in torn(rng, *offset, data) {
                            apply(&mut content, &part);
                        }
                    }
                    _ => stats.lost_writes += 1,
                }
            }
            inode.data = content.clone();
            inode.durable = content;
        }
    }

    /// Flips one stored bit for good, in a random file whose path starts
    /// with `prefix` and that holds bytes; returns the path and bit, if any.
    pub fn rot(&self, prefix: &str) -> Option<(String, u64)> {
        let mut s = self.state();
        let candidates: Vec<(String, u64)> = s
            .names
            .iter()
            .filter(|(p, ino)| p.starts_with(prefix) && !s.inodes[ino].durable.is_empty())
            .map(|(p, ino)| (p.clone(), *ino))
            .collect();
        if candidates.is_empty() {
            return None;
        }
        let (path, ino) = candidates[s.rng.usize(..candidates.len())].clone();
        let bits = s.inodes[&ino].durable.len() as u64 * 8;
        let bit = s.rng.u64(..bits);
        drop(s);
        self.flip(&path, bit);
        Some((path, bit))
    }

    /// Flips bit `bit` of the file at `path`, stored and seen alike.
    pub fn flip(&self, path: &str, bit: u64) {
        let mut s = self.state();
        s.stats.rotten_bits += 1;
        let ino = s.names[path];
        let inode = s.inodes.get_mut(&ino).expect("named inodes exist");
        let byte = (bit / 8) as usize;
        let mask = 1u8 << (bit % 8);
        for buf in [&mut inode.data, &mut inode.durable] {
            if byte < buf.len() {
                buf[byte] ^= mask;
            }
        }
    }

    /// The bytes of a file as the process sees them.
    pub fn contents(&self, path: &str) -> Option<Vec<u8>> {
        let s = self.state();
        s.names.get(path).map(|ino| s.inodes[ino].data.clone())
    }

    /// Replaces a file's bytes, durably (a test's hand on the platter).
    pub fn put(&self, path: &str, bytes: &[u8]) {
        let mut s = self.state();
        let ino = match s.names.get(path) {
            Some(&ino) => ino,
            None => {
                let ino = s.next_inode;
                s.next_inode += 1;
                s.names.insert(path.to_string(), ino);
                s.durable_names.insert(path.to_string(), ino);
                ino
            }
        };
        let inode = s.inodes.entry(ino).or_default();
        inode.data = bytes.to_vec();
        inode.durable = bytes.to_vec();
        inode.pending.clear();
    }

    /// Every file's path.
    pub fn paths(&self) -> Vec<String> {
        self.state().names.keys().cloned().collect()
    }
}

struct SimFile {
    disk: SimDisk,
    inode: u64,
    boot: u64,
}

fn stale() -> io::Error {
    io::Error::other("the simulated machine restarted; this handle is gone")
}

impl SimFile {
    /// The state, if this handle is still valid.
    fn live(&self) -> io::Result<MutexGuard<'_, State>> {
        let s = self.disk.state();
        if s.boot != self.boot || !s.inodes.contains_key(&self.inode) {
            return Err(stale());
        }
        Ok(s)
    }
}

impl DiskFile for SimFile {
    fn len(&self) -> io::Result<u64> {
        let s = self.live()?;
        Ok(s.inodes[&self.inode].data.len() as u64)
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let mut s = self.live()?;
        let data = &s.inodes[&self.inode].data;
        let start = usize::try_from(offset).map_err(io::Error::other)?;
        let end = start
            .checked_add(buf.len())
            .filter(|&e| e <= data.len())
            .ok_or_else(|| io::Error::new(ErrorKind::UnexpectedEof, "read past the end"))?;
        buf.copy_from_slice(&data[start..end]);
        let named = |s: &State, prefix: &str| {
            s.names
                .iter()
                .any(|(p, &ino)| ino == self.inode && p.starts_with(prefix))
        };
        let mut flip = false;
        if let Some((prefix, left)) = s.flip_next.clone()
            && !buf.is_empty()
            && named(&s, &prefix)
        {
            flip = true;
            s.flip_next = (left > 1).then(|| (prefix, left - 1));
        }
        if let Some((prefix, rate)) = s.flip_reads.clone()
            && !buf.is_empty()
            && named(&s, &prefix)
            && s.rng.f64() < rate
        {
            flip = true;
        }
        if flip {
            let bit = s.rng.usize(..buf.len() * 8);
            buf[bit / 8] ^= 1 << (bit % 8);
            s.stats.flipped_reads += 1;
        }
        Ok(())
    }

    fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        let mut s = self.live()?;
        if dead(&mut s) {
            s.stats.failed_writes += 1;
            if std::mem::take(&mut s.dying_now) {
                let s = &mut *s;
                let inode = s.inodes.get_mut(&self.inode).expect("checked live");
                for part in torn(&mut s.rng, offset, data) {
                    apply(&mut inode.data, &part);
                    inode.pending.push(part);
                }
            }
            return Err(eio("write"));
        }
        if s.fault == SimFault::Full && !data.is_empty() {
            s.stats.failed_writes += 1;
            return Err(io::Error::new(
                ErrorKind::StorageFull,
                "no space left on device (simulated)",
            ));
        }
        let op = Pending::Write {
            offset,
            data: data.to_vec(),
        };
        let inode = s.inodes.get_mut(&self.inode).expect("checked live");
        apply(&mut inode.data, &op);
        inode.pending.push(op);
        Ok(())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        let mut s = self.live()?;
        if dead_now(&mut s) {
            s.stats.failed_writes += 1;
            return Err(eio("truncate"));
        }
        let grows = len > s.inodes[&self.inode].data.len() as u64;
        if s.fault == SimFault::Full && grows {
            s.stats.failed_writes += 1;
            return Err(io::Error::new(
                ErrorKind::StorageFull,
                "no space left on device (simulated)",
            ));
        }
        let op = Pending::SetLen(len);
        let inode = s.inodes.get_mut(&self.inode).expect("checked live");
        apply(&mut inode.data, &op);
        inode.pending.push(op);
        Ok(())
    }

    fn sync_data(&self) -> io::Result<()> {
        let mut s = self.live()?;
        let s = &mut *s;
        let failing = s.fault == SimFault::FailSync || dead_now(s);
        let inode = s.inodes.get_mut(&self.inode).expect("checked live");
        if failing {
            s.stats.failed_syncs += 1;
            // Each write reached the disk or not; either way the kernel
            // forgets it, so the next sync succeeds without it.
            for op in std::mem::take(&mut inode.pending) {
                if s.rng.bool() {
                    apply(&mut inode.durable, &op);
                }
            }
            return Err(io::Error::other(
                "input/output error during fsync (simulated)",
            ));
        }
        for op in std::mem::take(&mut inode.pending) {
            apply(&mut inode.durable, &op);
        }
        Ok(())
    }
}

impl Disk for SimDisk {
    fn open(&self, path: &str, create: bool) -> io::Result<Arc<dyn DiskFile>> {
        let mut s = self.state();
        let ino = match s.names.get(path) {
            Some(&ino) => ino,
            None if create => {
                if dead_now(&mut s) {
                    s.stats.failed_writes += 1;
                    return Err(eio("create"));
                }
                if s.fault == SimFault::Full {
                    s.stats.failed_writes += 1;
                    return Err(io::Error::new(
                        ErrorKind::StorageFull,
                        "no space left on device (simulated)",
                    ));
                }
                let ino = s.next_inode;
                s.next_inode += 1;
                s.inodes.insert(ino, Inode::default());
                s.names.insert(path.to_string(), ino);
                s.dirty_dirs.insert(parent(path).to_string());
                ino
            }
            None => {
                return Err(io::Error::new(
                    ErrorKind::NotFound,
                    format!("{path}: no such file (simulated)"),
                ));
            }
        };
        Ok(Arc::new(SimFile {
            disk: self.clone(),
            inode: ino,
            boot: s.boot,
        }))
    }

    fn list(&self, dir: &str) -> io::Result<Vec<String>> {
        let s = self.state();
        Ok(s.names
            .keys()
            .filter(|p| parent(p) == dir)
            .map(|p| p.rsplit('/').next().unwrap_or(p).to_string())
            .collect())
    }

    fn exists(&self, path: &str) -> io::Result<bool> {
        Ok(self.state().names.contains_key(path))
    }

    fn create_dir(&self, _dir: &str) -> io::Result<()> {
        Ok(())
    }

    fn remove(&self, path: &str) -> io::Result<()> {
        let mut s = self.state();
        if dead_now(&mut s) {
            return Err(eio("unlink"));
        }
        if s.names.remove(path).is_none() {
            return Err(io::Error::new(ErrorKind::NotFound, "no such file"));
        }
        s.dirty_dirs.insert(parent(path).to_string());
        Ok(())
    }

    fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        let mut s = self.state();
        if dead_now(&mut s) {
            return Err(eio("rename"));
        }
        let ino = s
            .names
            .remove(from)
            .ok_or_else(|| io::Error::new(ErrorKind::NotFound, "no such file"))?;
        s.names.insert(to.to_string(), ino);
        s.dirty_dirs.insert(parent(from).to_string());
        s.dirty_dirs.insert(parent(to).to_string());
        Ok(())
    }

    fn sync_dir(&self, dir: &str) -> io::Result<()> {
        let mut s = self.state();
        let s = &mut *s;
        if s.fault == SimFault::FailSync || dead_now(s) {
            s.stats.failed_syncs += 1;
            return Err(io::Error::other(
                "input/output error during fsync (simulated)",
            ));
        }
        s.dirty_dirs.remove(dir);
        s.durable_names.retain(|p, _| parent(p) != dir);
        for (p, &ino) in &s.names {
            if parent(p) == dir {
                s.durable_names.insert(p.clone(), ino);
            }
        }
        Ok(())
    }

    fn display(&self, path: &str) -> PathBuf {
        PathBuf::from(format!("{}:{path}", self.name))
    }

    fn blocking(&self) -> bool {
        false
    }

    fn ready_at(&self) -> Option<Instant> {
        match self.state().fault {
            SimFault::Stall(until) if until > Instant::now() => Some(until),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(disk: &SimDisk, path: &str, offset: u64, bytes: &[u8]) -> Arc<dyn DiskFile> {
        let f = disk.open(path, true).unwrap();
        f.write_at(offset, bytes).unwrap();
        f
    }

    #[test]
    fn synced_writes_survive_a_crash_and_unsynced_ones_may_not() {
        let mut lost = 0;
        for seed in 0..64 {
            let disk = SimDisk::new("t", seed);
            let f = write(&disk, "a", 0, b"kept");
            f.sync_data().unwrap();
            disk.sync_dir("").unwrap();
            f.write_at(4, &[7; 1024]).unwrap();
            disk.crash();
            let after = disk.contents("a").unwrap();
            assert_eq!(&after[..4], b"kept", "seed {seed}");
            if after.len() == 4 {
                lost += 1;
            }
            assert!(f.len().is_err(), "a handle from before the crash is gone");
        }
        assert!(
            lost > 0 && lost < 64,
            "unsynced writes are sometimes lost: {lost}"
        );
    }

    #[test]
    fn a_torn_write_keeps_whole_sectors_only() {
        let mut torn = 0;
        for seed in 0..200 {
            let disk = SimDisk::new("t", seed);
            let f = write(&disk, "a", 0, &[0; 4 * SECTOR]);
            f.sync_data().unwrap();
            disk.sync_dir("").unwrap();
            f.write_at(0, &[1; 4 * SECTOR]).unwrap();
            disk.crash();
            let after = disk.contents("a").unwrap();
            let sectors: Vec<u8> = after.chunks(SECTOR).map(|c| c[0]).collect();
            for (c, &first) in after.chunks(SECTOR).zip(&sectors) {
                assert!(c.iter().all(|&b| b == first), "a sector is written whole");
            }
            if sectors.contains(&0) && sectors.contains(&1) {
                torn += 1;
            }
        }
        assert!(torn > 0, "some writes are torn");
    }

    #[test]
    fn a_new_file_needs_its_folder_synced() {
        let mut vanished = 0;
        for seed in 0..32 {
            let disk = SimDisk::new("t", seed);
            write(&disk, "log/x", 0, b"data").sync_data().unwrap();
            disk.crash();
            if !disk.exists("log/x").unwrap() {
                vanished += 1;
            }
            let disk = SimDisk::new("t", seed);
            write(&disk, "log/x", 0, b"data").sync_data().unwrap();
            disk.sync_dir("log").unwrap();
            disk.crash();
            assert_eq!(disk.contents("log/x").unwrap(), b"data");
        }
        assert!(vanished > 0);
    }

    #[test]
    fn a_failed_sync_forgets_what_it_did_not_store() {
        let disk = SimDisk::new("t", 3);
        let f = write(&disk, "a", 0, b"one");
        disk.inject(SimFault::FailSync);
        assert!(f.sync_data().is_err());
        disk.inject(SimFault::None);
        f.sync_data().unwrap();
        let mut buf = [0; 3];
        f.read_at(0, &mut buf).unwrap();
        assert_eq!(&buf, b"one", "the process still reads it");
        disk.sync_dir("").unwrap();
        disk.crash();
        let after = disk.contents("a").unwrap();
        assert!(after.is_empty() || after == b"one");
    }

    #[test]
    fn a_dying_disk_takes_some_changes_then_none() {
        let disk = SimDisk::new("t", 1);
        let f = write(&disk, "a", 0, b"x");
        disk.inject(SimFault::Dying(2));
        f.write_at(1, b"y").unwrap();
        f.sync_data().unwrap();
        assert!(f.write_at(2, b"z").is_err());
        assert!(disk.remove("a").is_err());
        assert_eq!(disk.contents("a").unwrap(), b"xy");
    }

    #[test]
    fn a_full_disk_stores_nothing() {
        let disk = SimDisk::new("t", 1);
        let f = write(&disk, "a", 0, b"x");
        disk.inject(SimFault::Full);
        let e = f.write_at(1, b"y").unwrap_err();
        assert_eq!(e.kind(), ErrorKind::StorageFull);
        assert_eq!(disk.contents("a").unwrap(), b"x");
    }

    #[test]
    fn flipped_reads_are_transient_and_rot_is_not() {
        let disk = SimDisk::new("t", 9);
        let f = write(&disk, "log/a", 0, &[0; 64]);
        f.sync_data().unwrap();
        disk.sync_dir("log").unwrap();
        disk.flip_reads("log/", 1.0);
        let mut buf = [0; 64];
        f.read_at(0, &mut buf).unwrap();
        assert_eq!(buf.iter().map(|b| b.count_ones()).sum::<u32>(), 1);
        disk.flip_reads("log/", 0.0);
        f.read_at(0, &mut buf).unwrap();
        assert_eq!(buf, [0; 64], "the stored bytes were not changed");
        disk.flip_next_reads("log/", 2);
        for _ in 0..2 {
            f.read_at(0, &mut buf).unwrap();
            assert_eq!(buf.iter().map(|b| b.count_ones()).sum::<u32>(), 1);
        }
        f.read_at(0, &mut buf).unwrap();
        assert_eq!(buf, [0; 64], "only the next two reads flipped");
        disk.rot("log/").unwrap();
        f.read_at(0, &mut buf).unwrap();
        assert_eq!(buf.iter().map(|b| b.count_ones()).sum::<u32>(), 1);
    }
}
