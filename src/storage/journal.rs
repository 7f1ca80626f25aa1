//! The write-ahead log: every commit is one record appended to a segment
//! file and made durable with one `fdatasync`, before anything is
//! acknowledged. Records are folded into the B-tree later, many commits at
//! a time (see `logged.rs`); the log only has to survive until then.
//!
//! A record is `[payload length: u32][CRC-32 of the payload: u32][payload]`,
//! little-endian; the payload is the record's log sequence number (LSN) and
//! the batch in a compact binary form (membership, identity and idempotency
//! keys, which are rare, as one JSON tail). Segments are named by the LSN of
//! their first record and hold consecutive LSNs.
//!
//! Segments grow in zero-filled steps of [`STEP`] bytes written ahead of
//! the records, so that most appends overwrite blocks the file already has:
//! the `fdatasync` then writes the record alone, not also the file's size
//! and block map (on ext4 that halves the writes per commit).
//!
//! Reading a segment stops at the first place that holds no whole record:
//! zeros (the space written ahead), or a record that is short or fails its
//! checksum. In the newest segment that is the end of the log — after a
//! crash, a record that was being written when it happened (never
//! acknowledged: its fsync had not returned), and anything after it is
//! cleared. In an earlier segment the records must reach exactly the first
//! LSN of the next segment (each was complete and synced before the next
//! one began); if they stop short, the log is damaged and opening fails.

use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::idempotency::KeyRecord;
use super::{Batch, PeerMark, StoreError};
use crate::cluster::{Actor, Membership};
use crate::crdt::GCounter;

const SUFFIX: &str = ".log";
/// How far a segment is extended with zeros at a time.
pub const STEP: u64 = 1 << 20;
const HEADER: usize = 8;
/// A record larger than this is damage, not data (a batch is at most a few MiB).
const MAX_RECORD: usize = 1 << 30;

/// The rare parts of a batch, encoded as JSON at the end of a record.
#[derive(Default, Serialize, Deserialize)]
struct Tail {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    membership: Option<Membership>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    me: Option<Actor>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    keys_put: Vec<(String, KeyRecord)>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    keys_del: Vec<String>,
}

fn put_u32(out: &mut Vec<u8>, v: usize) {
    out.extend_from_slice(&u32::try_from(v).expect("fits a record").to_le_bytes());
}

/// Appends one whole record (header and payload) for `batch` to `out`.
pub fn encode(lsn: u64, batch: &Batch, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0; HEADER]);
    out.extend_from_slice(&lsn.to_le_bytes());
    put_u32(out, batch.counters.len());
    for (name, counter) in &batch.counters {
        put_u32(out, name.len());
        out.extend_from_slice(name.as_bytes());
        let encoded = counter.encode();
        put_u32(out, encoded.len());
        out.extend_from_slice(&encoded);
    }
    put_u32(out, batch.marks.len());
    for mark in &batch.marks {
        out.extend_from_slice(&mark.incarnation.to_le_bytes());
        out.extend_from_slice(&mark.seq.to_le_bytes());
    }
    if batch.membership.is_some()
        || batch.me.is_some()
        || !batch.keys_put.is_empty()
        || !batch.keys_del.is_empty()
    {
        let tail = Tail {
            membership: batch.membership.clone(),
            me: batch.me.clone(),
            keys_put: batch.keys_put.clone(),
            keys_del: batch.keys_del.clone(),
        };
        serde_json::to_writer(&mut *out, &tail).expect("a batch serializes");
    }
    let payload = &out[start + HEADER..];
    let len = u32::try_from(payload.len()).expect("fits a record");
    let crc = crc32(payload);
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    out[start + 4..start + HEADER].copy_from_slice(&crc.to_le_bytes());
}

fn crc32(bytes: &[u8]) -> u32 {
    crc32fast::hash(bytes)
}

/// Reads a payload back; `None` only for a payload that passed its checksum
/// yet does not parse (a bug, reported as corruption by the caller).
fn decode(payload: &[u8]) -> Option<(u64, Batch)> {
    let mut r = payload;
    let mut take = |n: usize| -> Option<&[u8]> {
        if r.len() < n {
            return None;
        }
        let (head, rest) = r.split_at(n);
        r = rest;
        Some(head)
    };
    let u64_at = |b: &[u8]| u64::from_le_bytes(b.try_into().expect("8 bytes"));
    let u32_at = |b: &[u8]| u32::from_le_bytes(b.try_into().expect("4 bytes")) as usize;
    let lsn = u64_at(take(8)?);
    let mut batch = Batch::default();
    for _ in 0..u32_at(take(4)?) {
        let n = u32_at(take(4)?);
        let name = std::str::from_utf8(take(n)?).ok()?.to_string();
        let n = u32_at(take(4)?);
        let counter = GCounter::decode(take(n)?).ok()?;
        batch.counters.insert(name, counter);
    }
    for _ in 0..u32_at(take(4)?) {
        let incarnation = u64_at(take(8)?);
        let seq = u64_at(take(8)?);
        batch.marks.push(PeerMark { incarnation, seq });
    }
    if !r.is_empty() {
        let tail: Tail = serde_json::from_slice(r).ok()?;
        batch.membership = tail.membership;
        batch.me = tail.me;
        batch.keys_put = tail.keys_put;
        batch.keys_del = tail.keys_del;
    }
    Some((lsn, batch))
}

fn io(path: &Path, e: std::io::Error) -> StoreError {
    StoreError::engine(e).in_file(path)
}

fn segment_path(dir: &Path, first: u64) -> PathBuf {
    dir.join(format!("{first:020}{SUFFIX}"))
}

/// The segments in `dir`, by first LSN.
fn segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>, StoreError> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| io(dir, e))? {
        let entry = entry.map_err(|e| io(dir, e))?;
        let name = entry.file_name();
        let Some(first) = name
            .to_str()
            .and_then(|n| n.strip_suffix(SUFFIX))
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        out.push((first, entry.path()));
    }
    out.sort();
    Ok(out)
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io(dir, e))
}

/// Reads a whole file, retrying interrupted reads.
fn read_all(path: &Path) -> Result<Vec<u8>, StoreError> {
    let mut bytes = Vec::new();
    let mut file = File::open(path).map_err(|e| io(path, e))?;
    loop {
        match file.read_to_end(&mut bytes) {
            Ok(_) => return Ok(bytes),
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(io(path, e)),
        }
    }
}

/// The log of one data folder, open for appending.
pub struct Journal {
    dir: PathBuf,
    path: PathBuf,
    file: File,
    /// Bytes of whole, synced records in the current segment.
    len: u64,
    /// Bytes the current segment holds (records, then zeros).
    size: u64,
    next_lsn: u64,
    /// Set by a failed append: nothing more is written until `reset`.
    poisoned: bool,
    buf: Vec<u8>,
}

/// What replaying the log found.
pub struct Replayed {
    pub journal: Journal,
    /// Bytes of records kept in the log (replayed or not).
    pub bytes: u64,
}

impl Journal {
    /// Opens the log in `dir` (creating it), hands every record after
    /// `after` to `apply` in order, cuts a torn tail off the last segment,
    /// and opens that segment for appending.
    pub fn replay(
        dir: &Path,
        after: u64,
        mut apply: impl FnMut(u64, Batch),
    ) -> Result<Replayed, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
        let found = segments(dir)?;
        let mut expected: Option<u64> = None;
        let mut bytes = 0;
        let mut last: Option<(PathBuf, u64, u64, u64)> = None;
        for (i, (first, path)) in found.iter().enumerate() {
            let data = read_all(path)?;
            if let Some(want) = expected
                && *first != want
            {
                return Err(StoreError::Corrupt(format!(
                    "log segment {} starts at LSN {first}, but the segment before it ends \
                     at LSN {}: the log is damaged",
                    path.display(),
                    want - 1
                )));
            }
            let mut lsn = *first;
            let mut at = 0usize;
            while let Some(payload) = record_at(&data, at) {
                let (found_lsn, batch) = decode(payload).ok_or_else(|| {
                    StoreError::Corrupt(format!(
                        "log record at byte {at} of {} does not parse",
                        path.display()
                    ))
                })?;
                if found_lsn != lsn {
                    return Err(StoreError::Corrupt(format!(
                        "log record at byte {at} of {} has LSN {found_lsn}, expected {lsn}",
                        path.display()
                    )));
                }
                if lsn > after {
                    apply(lsn, batch);
                }
                lsn += 1;
                at += HEADER + payload.len();
            }
            bytes += at as u64;
            expected = Some(lsn);
            if i + 1 == found.len() {
                // Whatever follows the last whole record must be zeros.
                let clean = data[at..].iter().all(|&b| b == 0);
                let size = if clean { data.len() } else { at };
                last = Some((path.clone(), at as u64, size as u64, lsn));
            }
        }
        let (path, len, size, next_lsn) = match last {
            // The newest segment goes on from the B-tree's position.
            Some(last) if last.3 > after => last,
            // No log, or one that ends before what the B-tree already holds
            // (its newer, empty segment was lost): every record is folded
            // in, so the log starts again after the B-tree's position.
            _ => {
                let next = after + 1;
                for (_, old) in &found {
                    std::fs::remove_file(old).map_err(|e| io(old, e))?;
                }
                let path = segment_path(dir, next);
                File::create(&path).map_err(|e| io(&path, e))?;
                sync_dir(dir)?;
                (path, 0, 0, next)
            }
        };
        let file = OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(|e| io(&path, e))?;
        let mut journal = Journal {
            dir: dir.to_path_buf(),
            path,
            file,
            len,
            size,
            next_lsn,
            poisoned: false,
            buf: Vec::new(),
        };
        journal.cut()?;
        Ok(Replayed { journal, bytes })
    }

    /// Appends one record and waits until it is on the disk; returns the
    /// record's LSN and size. A failure leaves the log refusing appends
    /// until `reset` cuts whatever part of the record was written.
    pub fn append(&mut self, batch: &Batch) -> Result<(u64, u64), StoreError> {
        if self.poisoned {
            return Err(io(
                &self.path,
                std::io::Error::other("an earlier write failed; the log must be reopened"),
            ));
        }
        let lsn = self.next_lsn;
        self.buf.clear();
        encode(lsn, batch, &mut self.buf);
        let size = self.buf.len() as u64;
        let end = self.len + size;
        // Zeros ahead of the record, written first: a crash between the two
        // writes leaves a log that ends in zeros, which reads as its end.
        let grown = end.next_multiple_of(STEP) + STEP;
        let written = self
            .grow_to(end, grown)
            .and_then(|()| self.file.write_all_at(&self.buf, self.len))
            .and_then(|()| self.file.sync_data());
        if let Err(e) = written {
            self.poisoned = true;
            return Err(io(&self.path, e));
        }
        self.len = end;
        self.next_lsn += 1;
        if self.buf.capacity() > 1 << 20 {
            self.buf = Vec::new();
        }
        Ok((lsn, size))
    }

    /// Extends the segment with zeros to `to` bytes if it is shorter than `need`.
    fn grow_to(&mut self, need: u64, to: u64) -> std::io::Result<()> {
        if need <= self.size {
            return Ok(());
        }
        let zeros = vec![0u8; (to - self.size) as usize];
        self.file.write_all_at(&zeros, self.size)?;
        self.size = to;
        Ok(())
    }

    /// Drops whatever a failed append left after the last whole record.
    pub fn reset(&mut self) -> Result<(), StoreError> {
        self.file = OpenOptions::new()
            .write(true)
            .open(&self.path)
            .map_err(|e| io(&self.path, e))?;
        // What the failed write left is unknown: keep the records alone.
        self.size = u64::MAX;
        self.cut()?;
        self.poisoned = false;
        Ok(())
    }

    /// Truncates the current segment to its whole records, unless only
    /// zeros follow them.
    fn cut(&mut self) -> Result<(), StoreError> {
        let size = self.file.metadata().map_err(|e| io(&self.path, e))?.len();
        if size != self.size {
            self.file
                .set_len(self.len)
                .and_then(|()| self.file.sync_all())
                .map_err(|e| io(&self.path, e))?;
            self.size = self.len;
        }
        Ok(())
    }

    /// Starts a new segment; records from now on go there.
    pub fn rotate(&mut self) -> Result<(), StoreError> {
        let path = segment_path(&self.dir, self.next_lsn);
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .map_err(|e| io(&path, e))?;
        sync_dir(&self.dir)?;
        self.file = file;
        self.path = path;
        self.len = 0;
        self.size = 0;
        Ok(())
    }

    /// Deletes every segment before the current one (their records are in
    /// the B-tree).
    pub fn drop_older(&self) -> Result<(), StoreError> {
        for (_, path) in segments(&self.dir)? {
            if path != self.path {
                std::fs::remove_file(&path).map_err(|e| io(&path, e))?;
            }
        }
        sync_dir(&self.dir)
    }
}

/// The payload of the whole record at `at`, if one is there (every
/// payload holds at least its LSN, so zeros are never a record).
fn record_at(data: &[u8], at: usize) -> Option<&[u8]> {
    let header = data.get(at..at + HEADER)?;
    let len = u32::from_le_bytes(header[..4].try_into().expect("4 bytes")) as usize;
    let crc = u32::from_le_bytes(header[4..].try_into().expect("4 bytes"));
    if !(8..=MAX_RECORD).contains(&len) {
        return None;
    }
    let payload = data.get(at + HEADER..at + HEADER + len)?;
    (crc32(payload) == crc).then_some(payload)
}
