//! The write-ahead log: every commit is one record appended to a segment
//! file and made durable with one `fdatasync`, before anything is
//! acknowledged. Records are folded into the B-tree later, many commits at
//! a time (see `logged.rs`); the log only has to survive until then.
//!
//! ## Format: records in checked blocks
//!
//! A segment (`log/<first LSN, 20 digits>.wal`) is a sequence of 512-byte
//! blocks, a disk's unit of atomic writes. A record — one commit, numbered
//! by its log sequence number (LSN) — fills one or more whole blocks, and
//! every block carries a header of its own:
//!
//! ```text
//! 0..4    CRC-32 of bytes 4..512
//! 4       format (2); 5..8 zero
//! 8..16   LSN of the record            16..20  index of this block in it
//! 20..24  blocks in the record         24..28  payload bytes in the record
//! 28..32  zero                         32..512 payload, then zeros
//! ```
//!
//! The payload is the batch in a compact binary form (membership, identity
//! and idempotency keys, which are rare, as one JSON tail). Segments hold
//! consecutive LSNs and grow in zero-filled steps written ahead of the
//! records, so that most appends overwrite blocks the file already has.
//!
//! ## Telling a torn write from damage
//!
//! A disk writes a block whole or not at all, and a file's space that was
//! never written reads as zeros. So every block is exactly one of: *zero*
//! (never written), *good* (its checksum holds), or *damaged* (neither: a
//! disk changed bytes it had stored). A crash can only leave the one
//! record whose `fdatasync` had not returned — never acknowledged —
//! partly written: some of its blocks good and in place, the rest zero,
//! and nothing after it. Anything else is damage: a damaged block
//! anywhere, including in the last acknowledged record; a record cut short
//! by zeros while later records follow; records that stop short of the
//! next segment. Damage is reported with the file and offset, and replay
//! goes on with the next whole record after it (resynchronising on the
//! block headers), so valid records after a damaged one are kept; what the
//! damaged records held is lost here and `logged.rs` salvages around it.
//!
//! One case cannot be told apart: a block of the very last record that a
//! disk returns as zeros looks exactly like a block the crash did not let
//! land. Flipped bits are always caught.
//!
//! Folders written before this format have `.log` segments of unframed
//! records; they are replayed as before (a bad record ends the newest
//! segment) and the log goes on in `.wal` segments.

use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tracing::warn;

use super::disk::{Disk, DiskFile, read_all};
use super::idempotency::KeyRecord;
use super::{Batch, PeerMark, StoreError};
use crate::cluster::{Actor, Membership};
use crate::crdt::GCounter;

/// The log's folder inside the data folder.
pub const DIR: &str = "log";
const SUFFIX: &str = ".wal";
/// Segments written before records were framed in blocks.
const LEGACY_SUFFIX: &str = ".log";
/// How far a segment is extended with zeros at a time.
pub const STEP: u64 = 1 << 20;

/// The unit of the log: a disk sector.
pub const BLOCK: usize = 512;
const HEAD: usize = 32;
const ROOM: usize = BLOCK - HEAD;
const FORMAT: u8 = 2;
/// A record larger than this is damage, not data (a batch is at most a few MiB).
const MAX_PAYLOAD: usize = 1 << 30;
/// Reads of a segment that found damage, before the damage is believed (a
/// read can return a flipped bit that the disk does not hold).
const READS: usize = 3;

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

/// Appends the payload of `batch` to `out`.
fn encode_batch(batch: &Batch, out: &mut Vec<u8>) {
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
}

/// Reads a payload back; `None` for one that passed its checksums yet does
/// not parse (a bug, or damage the checksums missed).
fn decode_batch(payload: &[u8]) -> Option<Batch> {
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
    Some(batch)
}

fn crc32(bytes: &[u8]) -> u32 {
    crc32fast::hash(bytes)
}

fn le32(b: &[u8]) -> u32 {
    u32::from_le_bytes(b.try_into().expect("4 bytes"))
}

/// Appends the blocks of record `lsn` holding `payload` to `out`.
pub fn frame(lsn: u64, payload: &[u8], out: &mut Vec<u8>) {
    let count = payload.len().div_ceil(ROOM).max(1);
    let len = u32::try_from(payload.len()).expect("fits a record");
    let count32 = u32::try_from(count).expect("fits a record");
    for (i, chunk) in
        (0..count).map(|i| (i, &payload[i * ROOM..((i + 1) * ROOM).min(payload.len())]))
    {
        let start = out.len();
        out.resize(start + BLOCK, 0);
        let b = &mut out[start..start + BLOCK];
        b[4] = FORMAT;
        b[8..16].copy_from_slice(&lsn.to_le_bytes());
        b[16..20].copy_from_slice(&u32::try_from(i).expect("fits").to_le_bytes());
        b[20..24].copy_from_slice(&count32.to_le_bytes());
        b[24..28].copy_from_slice(&len.to_le_bytes());
        b[HEAD..HEAD + chunk.len()].copy_from_slice(chunk);
        let crc = crc32(&b[4..]);
        b[..4].copy_from_slice(&crc.to_le_bytes());
    }
}

/// Appends the whole record (its blocks) for `batch` to `out`.
/// Marks block `index` of a segment's bytes as written in `format`, its
/// checksum made to hold, as a tally of that format would have written it.
#[cfg(test)]
pub fn reframe(data: &mut [u8], index: usize, format: u8) {
    let b = &mut data[index * BLOCK..(index + 1) * BLOCK];
    b[4] = format;
    let crc = crc32(&b[4..]);
    b[..4].copy_from_slice(&crc.to_le_bytes());
}

#[cfg(test)]
pub fn encode(lsn: u64, batch: &Batch, out: &mut Vec<u8>) {
    let mut payload = Vec::new();
    encode_batch(batch, &mut payload);
    frame(lsn, &payload, out);
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Head {
    lsn: u64,
    index: u32,
    count: u32,
    len: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Block {
    /// Never written.
    Zero,
    Good(Head),
    /// Neither: bytes a disk changed.
    Damaged,
}

/// The format of the first block, among whole blocks of `data`, whose
/// checksum holds but whose format is newer than this binary's: bytes a
/// newer tally wrote, not damage.
fn newer_format(data: &[u8]) -> Option<u8> {
    data.chunks_exact(BLOCK)
        .find(|b| b[4] > FORMAT && le32(&b[..4]) == crc32(&b[4..]))
        .map(|b| b[4])
}

fn block(b: &[u8]) -> Block {
    if b.iter().all(|&x| x == 0) {
        return Block::Zero;
    }
    if b.len() < BLOCK
        || le32(&b[..4]) != crc32(&b[4..])
        || b[4] != FORMAT
        || b[5..8] != [0; 3]
        || b[28..32] != [0; 4]
    {
        return Block::Damaged;
    }
    let head = Head {
        lsn: u64::from_le_bytes(b[8..16].try_into().expect("8 bytes")),
        index: le32(&b[16..20]),
        count: le32(&b[20..24]),
        len: le32(&b[24..28]),
    };
    let (count, len) = (head.count as usize, head.len as usize);
    // The length must need exactly `count` blocks.
    let shaped = count >= 1
        && head.index < head.count
        && len <= MAX_PAYLOAD
        && len.div_ceil(ROOM).max(1) == count;
    if shaped {
        Block::Good(head)
    } else {
        Block::Damaged
    }
}

/// Where a segment's bytes stopped making sense.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Damage {
    pub file: PathBuf,
    pub offset: u64,
    /// The record expected there.
    pub lsn: u64,
    pub what: String,
}

impl std::fmt::Display for Damage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} at byte {} (record {}): {}",
            self.file.display(),
            self.offset,
            self.lsn,
            self.what
        )
    }
}

/// Where one whole record lies in a segment's bytes; its batch is decoded
/// only when it is applied, so that replay holds one decoded batch at a
/// time, not the whole log twice.
pub struct Record {
    pub lsn: u64,
    /// Bytes it takes in the log.
    pub size: u64,
    at: Payload,
}

enum Payload {
    /// In blocks from this one on, `len` bytes in all.
    Framed { block: usize, len: usize },
    /// Unframed, at this offset (legacy segments).
    Legacy { offset: usize, len: usize },
}

impl Record {
    /// The record's batch, read from its segment's bytes.
    fn batch(&self, data: &[u8]) -> Option<Batch> {
        match self.at {
            Payload::Framed { block, len } => {
                let mut payload = Vec::with_capacity(len);
                for k in 0..len.div_ceil(ROOM).max(1) {
                    let start = (block + k) * BLOCK + HEAD;
                    let take = (len - k * ROOM).min(ROOM);
                    payload.extend_from_slice(&data[start..start + take]);
                }
                decode_batch(&payload)
            }
            Payload::Legacy { offset, len } => decode_batch(&data[offset..offset + len]),
        }
    }
}

/// What one segment holds.
struct Scan {
    records: Vec<Record>,
    /// Where appends would go: after the last whole record.
    end: u64,
    /// The LSN after the last whole record.
    next: u64,
    /// Damage found, in order; replay resumed after each where it could.
    damage: Vec<(u64, u64, String)>,
    /// A record the crash cut short, dropped.
    torn: bool,
}

/// The blocks of `data` (a short final block counts as one).
fn blocks(data: &[u8]) -> Vec<Block> {
    data.chunks(BLOCK).map(block).collect()
}

/// The record of `lsn` starting at block `i`, if it is whole and good.
fn record_at(kinds: &[Block], i: usize, lsn: u64) -> Result<Record, String> {
    let head = match kinds[i] {
        Block::Good(h) if h.lsn == lsn && h.index == 0 => h,
        Block::Good(h) => {
            return Err(format!(
                "a block of record {} (part {} of {}) stands where record {lsn} should begin",
                h.lsn,
                h.index + 1,
                h.count
            ));
        }
        Block::Zero => return Err("zeros".into()),
        Block::Damaged => return Err("a block fails its checksum".into()),
    };
    let count = head.count as usize;
    for k in 0..count {
        let want = Head {
            index: u32::try_from(k).expect("fits"),
            ..head
        };
        match kinds.get(i + k) {
            Some(Block::Good(h)) if *h == want => {}
            Some(Block::Zero) | None => {
                return Err(format!("block {} of {count} is missing", k + 1));
            }
            Some(_) => return Err(format!("block {} of {count} is damaged", k + 1)),
        }
    }
    Ok(Record {
        lsn,
        size: (count * BLOCK) as u64,
        at: Payload::Framed {
            block: i,
            len: head.len as usize,
        },
    })
}

/// Whether everything from block `i` on is what a crash during the append
/// of record `lsn` leaves: zeros, and blocks of that record in place.
fn torn_tail(kinds: &[Block], i: usize, lsn: u64) -> bool {
    kinds[i..].iter().enumerate().all(|(k, b)| match b {
        Block::Zero => true,
        Block::Good(h) => h.lsn == lsn && h.index as usize == k,
        Block::Damaged => false,
    })
}

impl Scan {
    /// Nothing read yet of a segment starting at record `first`.
    fn at(first: u64) -> Scan {
        Scan {
            records: Vec::new(),
            end: 0,
            next: first,
            damage: Vec::new(),
            torn: false,
        }
    }
}

/// Reads the records of a segment whose first record is `first`.
fn scan(data: &[u8], first: u64) -> Scan {
    let kinds = blocks(data);
    let mut out = Scan::at(first);
    let mut i = 0;
    let mut lsn = first;
    while i < kinds.len() {
        match record_at(&kinds, i, lsn) {
            Ok(record) => {
                i += (record.size as usize) / BLOCK;
                lsn += 1;
                out.records.push(record);
                out.end = (i * BLOCK) as u64;
                out.next = lsn;
            }
            Err(_) if torn_tail(&kinds, i, lsn) => {
                out.torn = kinds[i..].iter().any(|b| *b != Block::Zero);
                break;
            }
            Err(why) => {
                out.damage.push(((i * BLOCK) as u64, lsn, why));
                // Resume at the next whole record of a later LSN, if any.
                let resumed = (i + 1..kinds.len()).find_map(|j| match kinds[j] {
                    Block::Good(h) if h.index == 0 && h.lsn >= lsn => {
                        record_at(&kinds, j, h.lsn).ok().map(|_| (j, h.lsn))
                    }
                    _ => None,
                });
                match resumed {
                    Some((j, at)) => {
                        i = j;
                        lsn = at;
                    }
                    None => break,
                }
            }
        }
    }
    out
}

/// A legacy (unframed) record's payload at `at`: `[len][crc][lsn, batch]`.
fn legacy_record_at(data: &[u8], at: usize) -> Option<&[u8]> {
    let header = data.get(at..at + 8)?;
    let len = le32(&header[..4]) as usize;
    if !(8..=MAX_PAYLOAD).contains(&len) {
        return None;
    }
    let payload = data.get(at + 8..at + 8 + len)?;
    (crc32(payload) == le32(&header[4..])).then_some(payload)
}

/// Reads a legacy segment the way it was written to be read: records up
/// to the first one that is missing or fails its checksum.
fn scan_legacy(data: &[u8], first: u64) -> Scan {
    let mut out = Scan::at(first);
    let mut at = 0;
    while let Some(payload) = legacy_record_at(data, at) {
        let lsn = u64::from_le_bytes(payload[..8].try_into().expect("8 bytes"));
        if lsn != out.next {
            out.damage
                .push((at as u64, out.next, format!("a record has LSN {lsn}")));
            return out;
        }
        out.records.push(Record {
            lsn,
            size: (8 + payload.len()) as u64,
            at: Payload::Legacy {
                offset: at + 16,
                len: payload.len() - 8,
            },
        });
        at += 8 + payload.len();
        out.end = at as u64;
        out.next += 1;
    }
    out.torn = data[at..].iter().any(|&b| b != 0);
    out
}

#[derive(Clone, Debug)]
pub struct Segment {
    pub first: u64,
    pub path: String,
    legacy: bool,
}

fn segment_path(first: u64) -> String {
    format!("{DIR}/{first:020}{SUFFIX}")
}

/// The segments of the log, by first LSN.
pub fn segments(disk: &dyn Disk) -> Result<Vec<Segment>, StoreError> {
    let mut out = Vec::new();
    for name in disk.list(DIR).map_err(|e| io(disk, DIR, e))? {
        let (stem, legacy) = if let Some(s) = name.strip_suffix(SUFFIX) {
            (s, false)
        } else if let Some(s) = name.strip_suffix(LEGACY_SUFFIX) {
            (s, true)
        } else {
            continue;
        };
        let Ok(first) = stem.parse::<u64>() else {
            continue;
        };
        out.push(Segment {
            first,
            path: format!("{DIR}/{name}"),
            legacy,
        });
    }
    out.sort_by_key(|s| (s.first, s.legacy));
    Ok(out)
}

fn io(disk: &dyn Disk, path: &str, e: std::io::Error) -> StoreError {
    StoreError::engine(e).in_file(&disk.display(path))
}

/// What replaying the log found.
pub struct Replayed {
    /// Whole records after the B-tree's position, handed to `apply`.
    pub records: usize,
    /// Bytes of records kept in the log (replayed or not).
    pub bytes: u64,
    /// Everything that did not read as it was written, in order.
    pub damage: Vec<Damage>,
    /// LSN ranges after the B-tree's position whose records were lost to
    /// damage (`None`: up to whatever the damaged stretch held, unknown).
    pub lost: Vec<(u64, Option<u64>)>,
    /// The LSN after the last record found.
    pub next: u64,
    /// Legacy segments were read.
    pub legacy: bool,
    /// A torn record was dropped from the end.
    pub torn: bool,
    /// Where appends can go on: the newest segment and the end of its
    /// records, when it is framed and undamaged.
    pub tail: Option<(String, u64)>,
    /// Segments wholly covered by the B-tree, to delete.
    pub covered: Vec<String>,
    /// The segments replay read.
    pub read: Vec<String>,
}

impl Replayed {
    /// Whether records the B-tree does not hold were lost.
    pub fn lost_records(&self) -> bool {
        !self.lost.is_empty()
    }
}

/// Reads a segment, again if it looks damaged: a read can flip a bit the
/// disk does not hold, and only damage that reads the same every time is
/// believed.
fn read_segment(disk: &dyn Disk, seg: &Segment) -> Result<(Vec<u8>, Scan), StoreError> {
    let file = disk
        .open(&seg.path, false)
        .map_err(|e| io(disk, &seg.path, e))?;
    let parse = |data: &[u8]| {
        if seg.legacy {
            scan_legacy(data, seg.first)
        } else {
            scan(data, seg.first)
        }
    };
    let mut seen: Option<(Vec<u8>, Scan)> = None;
    for _ in 0..READS {
        let data = read_all(&*file).map_err(|e| io(disk, &seg.path, e))?;
        if let Some((old, _)) = &seen
            && *old == data
        {
            break;
        }
        let found = parse(&data);
        if found.damage.is_empty() {
            if seen.is_some() {
                warn!(
                    file = %disk.display(&seg.path).display(),
                    "a read of the log returned damage that the next read did not: a transient read error"
                );
            }
            return Ok((data, found));
        }
        seen = Some((data, found));
    }
    Ok(seen.expect("read at least once"))
}

/// Reads the log in `disk` after LSN `after` (the B-tree's position),
/// changing nothing. `expected`: the B-tree says a log in this format goes
/// on right after `after` (false for a new folder, or one written before
/// this format); every fold starts the segment of record `after + 1`, so
/// that segment must then be there.
///
/// Every whole record after `after` is decoded and handed to `apply`, in
/// LSN order (with gaps where damage lost records); a record whose blocks
/// all hold but whose batch does not parse is corruption (an error).
pub fn replay(
    disk: &dyn Disk,
    after: u64,
    expected: bool,
    apply: &mut dyn FnMut(u64, Batch),
) -> Result<Replayed, StoreError> {
    let found = segments(disk)?;
    let mut out = Replayed {
        records: 0,
        bytes: 0,
        damage: Vec::new(),
        lost: Vec::new(),
        next: after + 1,
        legacy: found.iter().any(|s| s.legacy),
        torn: false,
        tail: None,
        covered: Vec::new(),
        read: Vec::new(),
    };
    // Segments before the one holding `after + 1` are wholly in the B-tree.
    let start = match found.iter().rposition(|s| s.first <= after + 1) {
        Some(k) if !expected || found[k].first == after + 1 => k,
        // The segment of `after + 1` is gone: this one is older.
        Some(k) => k + 1,
        None => 0,
    };
    out.covered = found[..start].iter().map(|s| s.path.clone()).collect();
    let live = &found[start..];
    let mut lost = Vec::new();
    if live.is_empty() {
        if expected {
            out.damage.push(Damage {
                file: disk.display(&segment_path(after + 1)),
                offset: 0,
                lsn: after + 1,
                what: format!(
                    "the B-tree holds the log up to record {after}, and the segment that goes \
                     on from there is missing"
                ),
            });
            out.lost.push((after + 1, None));
        }
        return Ok(out);
    }
    // The next record the log must hold, and where a loss of unknown extent began.
    let mut lsn = live[0].first.min(after + 1);
    let mut open_loss: Option<u64> = None;
    for (k, seg) in live.iter().enumerate() {
        let newest = k + 1 == live.len();
        if let Some(from) = open_loss.take() {
            // The damaged stretch before ran up to this segment.
            if seg.first > from {
                lost.push((from, Some(seg.first - 1)));
            }
        } else if seg.first > lsn {
            let what = if k == 0 {
                format!(
                    "the B-tree holds the log up to record {after}, but the log goes on at \
                     record {}",
                    seg.first
                )
            } else {
                format!("records {lsn} to {} are missing before it", seg.first - 1)
            };
            out.damage.push(Damage {
                file: disk.display(&seg.path),
                offset: 0,
                lsn,
                what,
            });
            lost.push((lsn, Some(seg.first - 1)));
        } else if seg.first < lsn {
            out.damage.push(Damage {
                file: disk.display(&seg.path),
                offset: 0,
                lsn,
                what: format!(
                    "it starts at record {}, inside the segment before it",
                    seg.first
                ),
            });
        }
        let (data, found) = read_segment(disk, seg)?;
        if let Some(newer) = newer_format(&data).filter(|_| !seg.legacy) {
            return Err(StoreError::NewerFormat {
                file: disk.display(&seg.path),
                found: newer.into(),
                reads: FORMAT.into(),
            });
        }
        out.read.push(seg.path.clone());
        for (offset, at, what) in &found.damage {
            out.damage.push(Damage {
                file: disk.display(&seg.path),
                offset: *offset,
                lsn: *at,
                what: what.clone(),
            });
        }
        // Records lost to damage inside this segment.
        let mut expect = seg.first;
        for r in &found.records {
            if r.lsn > expect {
                lost.push((expect, Some(r.lsn - 1)));
            }
            expect = r.lsn + 1;
        }
        let ends_damaged = found.damage.last().is_some_and(|(_, at, _)| *at >= expect);
        if ends_damaged {
            open_loss = Some(expect);
        } else if found.torn && !newest {
            // Only the newest segment can end in a record a crash cut short.
            out.damage.push(Damage {
                file: disk.display(&seg.path),
                offset: found.end,
                lsn: found.next,
                what: "an older segment ends in an incomplete record".into(),
            });
        }
        out.torn |= newest && found.torn;
        out.bytes += found.records.iter().map(|r| r.size).sum::<u64>();
        lsn = found.next;
        if newest && !seg.legacy && found.damage.is_empty() {
            out.tail = Some((seg.path.clone(), found.end));
        }
        for r in found.records.iter().filter(|r| r.lsn > after) {
            let batch = r.batch(&data).ok_or_else(|| {
                StoreError::Corrupt(format!(
                    "{}: record {} passes its checksums but does not parse",
                    disk.display(&seg.path).display(),
                    r.lsn
                ))
            })?;
            apply(r.lsn, batch);
            out.records += 1;
        }
    }
    if let Some(from) = open_loss {
        lost.push((from, None));
    }
    out.next = lsn.max(after + 1);
    // Only what the B-tree does not hold is lost.
    out.lost = lost
        .into_iter()
        .filter(|(_, to)| to.is_none_or(|to| to > after))
        .map(|(from, to)| (from.max(after + 1), to))
        .collect();
    Ok(out)
}

/// Checks one segment as a scrub does: its records from its first LSN
/// on, up to `limit` bytes (the synced part of the segment being
/// appended to), or all of it with nothing but zeros after the records.
/// Returns the bytes read and the damage found; a segment deleted
/// meanwhile (folded) has none.
pub fn check_segment(
    disk: &dyn Disk,
    seg: &Segment,
    limit: Option<u64>,
) -> Result<(u64, Vec<Damage>), StoreError> {
    let file = match disk.open(&seg.path, false) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((0, Vec::new())),
        Err(e) => return Err(io(disk, &seg.path, e)),
    };
    let mut seen: Option<Vec<Damage>> = None;
    let mut bytes = 0;
    for _ in 0..READS {
        let mut data = match read_all(&*file) {
            Ok(data) => data,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((0, Vec::new())),
            Err(e) => return Err(io(disk, &seg.path, e)),
        };
        if let Some(limit) = limit {
            data.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
        }
        bytes += data.len() as u64;
        let found = if seg.legacy {
            scan_legacy(&data, seg.first)
        } else {
            scan(&data, seg.first)
        };
        let mut damage: Vec<Damage> = found
            .damage
            .iter()
            .map(|(offset, lsn, what)| Damage {
                file: disk.display(&seg.path),
                offset: *offset,
                lsn: *lsn,
                what: what.clone(),
            })
            .collect();
        if found.torn && damage.is_empty() && limit.is_none() {
            damage.push(Damage {
                file: disk.display(&seg.path),
                offset: found.end,
                lsn: found.next,
                what: "a record after the last whole one is incomplete".into(),
            });
        }
        if damage.is_empty() {
            return Ok((bytes, damage));
        }
        seen = Some(damage);
    }
    Ok((bytes, seen.unwrap_or_default()))
}

/// The log of one data folder, open for appending.
pub struct Journal {
    disk: Arc<dyn Disk>,
    path: String,
    file: Arc<dyn DiskFile>,
    /// Bytes of whole, synced records in the current segment.
    len: u64,
    /// Bytes the current segment holds (records, then zeros).
    size: u64,
    next_lsn: u64,
    /// Set by a failed append: nothing more is written until `reset`.
    poisoned: bool,
    step: u64,
    payload: Vec<u8>,
    buf: Vec<u8>,
    /// A record written but not yet synced (only with a planted bug).
    unsynced: bool,
    pub planted: Planted,
}

/// Bugs a simulation plants to show its checker catches them; all off in
/// every node.
#[doc(hidden)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Planted {
    /// Appends never call `fdatasync`.
    pub skip_sync: bool,
    /// An append returns before its `fdatasync`, which runs at the next
    /// append instead: the commit is acknowledged before it is durable.
    pub late_sync: bool,
}

impl Journal {
    /// Opens the log for appending: at `end` of segment `path` (the
    /// newest, undamaged), or in a new segment starting at `next` when
    /// `path` is `None`.
    pub fn open(
        disk: Arc<dyn Disk>,
        tail: Option<(String, u64)>,
        next: u64,
        step: u64,
    ) -> Result<Journal, StoreError> {
        disk.create_dir(DIR).map_err(|e| io(&*disk, DIR, e))?;
        let (path, len) = match tail {
            Some(tail) => tail,
            None => {
                let path = segment_path(next);
                if disk.exists(&path).map_err(|e| io(&*disk, &path, e))? {
                    return Err(StoreError::Corrupt(format!(
                        "log segment {} exists already",
                        disk.display(&path).display()
                    )));
                }
                disk.open(&path, true)
                    .and_then(|_| disk.sync_dir(DIR))
                    .map_err(|e| io(&*disk, &path, e))?;
                (path, 0)
            }
        };
        let file = disk.open(&path, false).map_err(|e| io(&*disk, &path, e))?;
        // Whatever follows the records (zeros written ahead, or what a
        // crash left of a record) is cut: appends go on at `len`.
        let size = u64::MAX;
        let mut journal = Journal {
            disk,
            path,
            file,
            len,
            size,
            next_lsn: next,
            poisoned: false,
            step,
            payload: Vec::new(),
            buf: Vec::new(),
            unsynced: false,
            planted: Planted::default(),
        };
        journal.cut()?;
        Ok(journal)
    }

    /// Deletes segments (wholly covered by the B-tree, or set aside).
    pub fn remove(disk: &dyn Disk, paths: &[String]) -> Result<(), StoreError> {
        for path in paths {
            disk.remove(path).map_err(|e| io(disk, path, e))?;
        }
        if !paths.is_empty() {
            disk.sync_dir(DIR).map_err(|e| io(disk, DIR, e))?;
        }
        Ok(())
    }

    fn io(&self, e: std::io::Error) -> StoreError {
        io(&*self.disk, &self.path, e)
    }

    /// The LSN the next record gets.
    pub fn next_lsn(&self) -> u64 {
        self.next_lsn
    }

    /// The segment being appended to, and the bytes of synced records in it.
    pub fn position(&self) -> (String, u64) {
        (self.path.clone(), self.len)
    }

    /// Appends one record and waits until it is on the disk; returns the
    /// record's LSN and size. A failure leaves the log refusing appends
    /// until `reset` cuts whatever part of the record was written.
    pub fn append(&mut self, batch: &Batch) -> Result<(u64, u64), StoreError> {
        if self.poisoned {
            return Err(self.io(std::io::Error::other(
                "an earlier write failed; the log must be reopened",
            )));
        }
        let lsn = self.next_lsn;
        self.payload.clear();
        encode_batch(batch, &mut self.payload);
        self.buf.clear();
        frame(lsn, &self.payload, &mut self.buf);
        let size = self.buf.len() as u64;
        let end = self.len + size;
        // Zeros ahead of the record, written first: a crash between the two
        // writes leaves a log that ends in zeros, which reads as its end.
        let grown = end.next_multiple_of(self.step) + self.step;
        let mut written = self
            .grow_to(end, grown)
            .and_then(|()| self.file.write_at(self.len, &self.buf));
        if self.unsynced {
            // The previous record's sync, late (a planted bug).
            written = written.and_then(|()| self.file.sync_data());
        }
        if !self.planted.skip_sync && !self.planted.late_sync {
            written = written.and_then(|()| self.file.sync_data());
        }
        if let Err(e) = written {
            self.poisoned = true;
            return Err(self.io(e));
        }
        self.unsynced = self.planted.late_sync;
        self.len = end;
        self.next_lsn += 1;
        if self.buf.capacity() > 1 << 20 {
            self.buf = Vec::new();
            self.payload = Vec::new();
        }
        Ok((lsn, size))
    }

    /// Extends the segment with zeros to `to` bytes if it is shorter than `need`.
    fn grow_to(&mut self, need: u64, to: u64) -> std::io::Result<()> {
        if need <= self.size {
            return Ok(());
        }
        let zeros = vec![0u8; (to - self.size) as usize];
        self.file.write_at(self.size, &zeros)?;
        self.size = to;
        Ok(())
    }

    /// Drops whatever a failed append left after the last whole record.
    pub fn reset(&mut self) -> Result<(), StoreError> {
        self.file = self.disk.open(&self.path, false).map_err(|e| self.io(e))?;
        // What the failed write left is unknown: keep the records alone.
        self.size = u64::MAX;
        self.cut()?;
        self.poisoned = false;
        self.unsynced = false;
        Ok(())
    }

    /// Truncates the current segment to its whole records, unless only
    /// zeros follow them.
    fn cut(&mut self) -> Result<(), StoreError> {
        let size = self.file.len().map_err(|e| self.io(e))?;
        if size != self.size || size % BLOCK as u64 != 0 {
            self.file
                .set_len(self.len)
                .and_then(|()| self.file.sync_data())
                .map_err(|e| self.io(e))?;
            self.size = self.len;
        }
        Ok(())
    }

    /// Starts a new segment; records from now on go there. What a failed
    /// append left in the current one is cut first: a segment followed by
    /// another must end in whole records.
    pub fn rotate(&mut self) -> Result<(), StoreError> {
        if self.poisoned {
            self.reset()?;
        }
        if self.unsynced {
            self.file.sync_data().map_err(|e| self.io(e))?;
            self.unsynced = false;
        }
        let path = segment_path(self.next_lsn);
        let file = self.disk.open(&path, true).map_err(|e| self.io(e))?;
        file.set_len(0)
            .and_then(|()| self.disk.sync_dir(DIR))
            .map_err(|e| io(&*self.disk, &path, e))?;
        self.file = file;
        self.path = path;
        self.len = 0;
        self.size = 0;
        Ok(())
    }

    /// Deletes every segment before the current one (their records are in
    /// the B-tree).
    pub fn drop_older(&self) -> Result<(), StoreError> {
        for seg in segments(&*self.disk)? {
            if seg.path != self.path {
                self.disk
                    .remove(&seg.path)
                    .map_err(|e| io(&*self.disk, &seg.path, e))?;
            }
        }
        self.disk.sync_dir(DIR).map_err(|e| io(&*self.disk, DIR, e))
    }
}

/// Leaves in the newest segment what a crash leaves of a record whose
/// write did not finish: some of its blocks, in place, and not all (a
/// test's model of a torn append).
#[cfg(test)]
pub fn tear(disk: &dyn Disk, seed: u64) {
    let Some(seg) = segments(disk).unwrap().into_iter().rfind(|s| !s.legacy) else {
        return;
    };
    let file = disk.open(&seg.path, false).unwrap();
    let found = scan(&read_all(&*file).unwrap(), seg.first);
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut batch = Batch::default();
    let mut counter = GCounter::new();
    counter
        .increment(
            crate::crdt::ReplicaId {
                node: 9,
                incarnation: 9,
            },
            rng.u64(1..1000),
        )
        .unwrap();
    batch
        .counters
        .insert("t".repeat(rng.usize(1..2000)), counter);
    let mut record = Vec::new();
    encode(found.next, &batch, &mut record);
    let blocks = record.len() / BLOCK;
    let missing = rng.usize(..blocks);
    for (i, b) in record.chunks(BLOCK).enumerate() {
        if i != missing && rng.bool() {
            file.write_at(found.end + (i * BLOCK) as u64, b).unwrap();
        }
    }
    file.sync_data().unwrap();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crdt::ReplicaId;
    use crate::storage::simdisk::SimDisk;

    fn batch(name: &str, n: u64) -> Batch {
        let mut c = GCounter::new();
        c.increment(
            ReplicaId {
                node: 1,
                incarnation: 7,
            },
            n,
        )
        .unwrap();
        Batch {
            counters: [(name.to_string(), c)].into(),
            ..Batch::default()
        }
    }

    /// A log of `names` one-name records, as a node leaves it.
    fn log_of(names: &[String], step: u64) -> (SimDisk, Vec<u8>) {
        let disk = SimDisk::new("t", 1);
        let shared: Arc<dyn Disk> = Arc::new(disk.clone());
        let mut j = Journal::open(shared, None, 1, step).unwrap();
        for (i, name) in names.iter().enumerate() {
            j.append(&batch(name, i as u64 + 1)).unwrap();
        }
        let data = disk.contents(&segment_path(1)).unwrap();
        (disk, data)
    }

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("name-{i}")).collect()
    }

    /// Replays, keeping each record's LSN and names.
    fn read(disk: &dyn Disk, after: u64, expected: bool) -> (Replayed, Vec<(u64, Vec<String>)>) {
        let mut got = Vec::new();
        let r = replay(disk, after, expected, &mut |lsn, b| {
            got.push((lsn, b.counters.keys().cloned().collect()));
        })
        .unwrap();
        (r, got)
    }

    #[test]
    fn records_of_any_size_read_back() {
        let disk = SimDisk::new("t", 1);
        let shared: Arc<dyn Disk> = Arc::new(disk.clone());
        let mut j = Journal::open(shared.clone(), None, 1, 4096).unwrap();
        let long = "x".repeat(1000);
        for name in ["a", long.as_str(), "b"] {
            j.append(&batch(name, 1)).unwrap();
        }
        let (r, got) = read(&*shared, 0, true);
        assert!(r.damage.is_empty(), "{:?}", r.damage);
        assert_eq!(got.len(), 3);
        assert_eq!(r.bytes, 5 * BLOCK as u64, "a 1 KiB name takes three blocks");
        assert_eq!(r.next, 4);
    }

    /// A block of a newer format (its checksum holds) is not damage to
    /// salvage around: the folder is refused, and nothing in it changes.
    #[test]
    fn a_block_of_a_newer_format_refuses_the_folder() {
        let (disk, mut data) = log_of(&names(5), STEP);
        reframe(&mut data, 2, FORMAT + 1);
        disk.put(&segment_path(1), &data);
        let err = replay(&disk, 0, true, &mut |_, _| {})
            .err()
            .expect("refused");
        assert!(
            matches!(err, StoreError::NewerFormat { found, reads, .. }
                if found == u64::from(FORMAT) + 1 && reads == u64::from(FORMAT)),
            "{err}"
        );
        assert!(err.to_string().contains("newer tally"), "{err}");
        assert_eq!(disk.contents(&segment_path(1)).unwrap(), data);
        // The same bytes with a checksum that fails are damage, as before.
        data[2 * BLOCK] ^= 1;
        disk.put(&segment_path(1), &data);
        let (r, got) = read(&disk, 0, true);
        assert_eq!(r.damage.len(), 1, "{:?}", r.damage);
        assert_eq!(got.len(), 4);
    }

    /// The measurement that opened this work: a byte flipped in the 10th
    /// record from the end cut that record and the nine after it, silently.
    #[test]
    fn a_flip_inside_the_log_is_damage_and_later_records_are_kept() {
        let (disk, data) = log_of(&names(30), STEP);
        let ninth_from_end = 20 * BLOCK + HEAD + 3;
        disk.flip(&segment_path(1), (ninth_from_end * 8) as u64);
        let (r, got) = read(&disk, 0, true);
        assert_eq!(r.damage.len(), 1, "{:?}", r.damage);
        assert_eq!(r.damage[0].offset, (20 * BLOCK) as u64);
        assert_eq!(r.damage[0].lsn, 21);
        assert_eq!(r.lost, vec![(21, Some(21))]);
        assert_eq!(got.len(), 29, "the nine records after it are kept");
        assert_eq!(r.next, 31);
        drop(data);
    }

    /// The last acknowledged record is as protected as any other.
    #[test]
    fn a_flip_in_the_last_record_is_damage_not_a_torn_write() {
        let (disk, _) = log_of(&names(3), STEP);
        disk.flip(&segment_path(1), ((2 * BLOCK + 100) * 8) as u64);
        let (r, _) = read(&disk, 0, true);
        assert_eq!(r.damage.len(), 1);
        assert_eq!(r.lost, vec![(3, None)]);
        assert!(!r.torn);
    }

    #[test]
    fn a_record_cut_short_at_the_end_is_torn_and_dropped() {
        let (disk, data) = log_of(&names(2), STEP);
        let mut record = Vec::new();
        encode(3, &batch(&"y".repeat(1500), 1), &mut record);
        assert_eq!(record.len(), 4 * BLOCK);
        // Blocks 1 and 3 of four landed; 0 and 2 did not.
        let mut torn = data.clone();
        let at = 2 * BLOCK;
        torn[at + BLOCK..at + 2 * BLOCK].copy_from_slice(&record[BLOCK..2 * BLOCK]);
        torn[at + 3 * BLOCK..at + 4 * BLOCK].copy_from_slice(&record[3 * BLOCK..]);
        disk.put(&segment_path(1), &torn);
        let (r, got) = read(&disk, 0, true);
        assert!(r.damage.is_empty(), "{:?}", r.damage);
        assert!(r.torn);
        assert_eq!(got.len(), 2);
        assert_eq!(r.next, 3);
    }

    #[test]
    fn a_missing_block_before_later_records_is_damage() {
        let (disk, data) = log_of(&names(4), STEP);
        let mut holed = data.clone();
        holed[BLOCK..2 * BLOCK].fill(0);
        disk.put(&segment_path(1), &holed);
        let (r, got) = read(&disk, 0, true);
        assert_eq!(r.damage.len(), 1);
        assert_eq!(r.lost, vec![(2, Some(2))]);
        assert_eq!(got.len(), 3);
    }

    #[test]
    fn a_gap_between_the_b_tree_and_the_log_is_damage() {
        let (disk, _) = log_of(&names(2), STEP);
        disk.put(&segment_path(5), &[]);
        disk.remove(&segment_path(1)).unwrap();
        let (r, _) = read(&disk, 2, true);
        assert_eq!(r.lost, vec![(3, Some(4))], "{:?}", r.damage);
        let (r, _) = read(&disk, 4, true);
        assert!(r.damage.is_empty());
        disk.remove(&segment_path(5)).unwrap();
        let (r, _) = read(&disk, 4, true);
        assert_eq!(r.lost, vec![(5, None)], "a missing log is damage too");
        assert!(read(&disk, 4, false).0.damage.is_empty());
    }

    #[test]
    fn a_transient_flip_is_read_again_and_not_believed() {
        let (disk, _) = log_of(&names(5), STEP);
        disk.flip_next_reads("log/", 1);
        let (r, got) = read(&disk, 0, true);
        assert!(r.damage.is_empty(), "{:?}", r.damage);
        assert_eq!(got.len(), 5);
        // Damage that reads the same every time is believed.
        disk.flip_next_reads("log/", READS as u64);
        let (r, _) = read(&disk, 0, true);
        assert!(!r.damage.is_empty());
    }

    /// Every bit of a small log, flipped in turn: the flip is reported as
    /// damage, or what replay loads is exactly what it loaded before.
    #[test]
    fn every_flipped_bit_of_a_small_log_is_caught_or_harmless() {
        let step = 4 * BLOCK as u64;
        let (disk, data) = log_of(&names(4), step);
        let clean = read(&disk, 0, true).1;
        assert_eq!(clean.len(), 4);
        let path = segment_path(1);
        let (mut caught, mut harmless) = (0, 0);
        for bit in 0..(data.len() as u64 * 8) {
            disk.flip(&path, bit);
            let (r, got) = read(&disk, 0, true);
            if !r.damage.is_empty() {
                caught += 1;
            } else {
                assert_eq!(got, clean, "bit {bit} changed what loads, unreported");
                harmless += 1;
            }
            disk.flip(&path, bit);
        }
        assert_eq!(harmless, 0, "every bit of a framed log is checked");
        assert!(caught > 0);
    }
}
