//! The backup file: every counter of a cluster with all its components,
//! versioned, checksummed and written as a stream (no cluster in memory).
//!
//! A file is the magic `TALLYBAK`, the format version (`u32`, little
//! endian) and then frames. A frame is its kind (one byte), the length of
//! its payload (`u32`), a CRC-32 of the kind, the length and the payload
//! (`u32`), and the payload, JSON:
//! - first a header ([`Header`]): when, from which node, by which version;
//! - then any number of counter frames, each a list of
//!   [`StoredCounter`]s, the names in strictly increasing order across the
//!   whole file;
//! - last a trailer ([`Trailer`]): how many counters and frames came
//!   before, the sum of their values, whether the backup is partial and
//!   what it lacks, and the SHA-256 of every byte before the trailer.
//!
//! Nothing is believed before it is checked (G11): a frame's checksum
//! before its payload is decoded, the order of names, every name, and the
//! trailer's counts and hash against what was read. A file that ends
//! before its trailer is truncated, not shorter; a damaged one names the
//! byte offset of the frame that failed. A backup is written to a
//! temporary file beside the target and renamed once complete and synced,
//! so a backup that stopped half way never looks like a whole one.

use std::io::{self, Read, Write};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::api::types::StoredCounter;
use crate::crdt::GCounter;
use crate::input::validate_name;

/// The first bytes of every backup file.
pub const MAGIC: [u8; 8] = *b"TALLYBAK";
/// The format this build writes and reads.
pub const FORMAT: u32 = 1;
/// Largest frame payload: a page of a thousand of the longest names with
/// their components fits many times over.
pub const MAX_FRAME: u32 = 64 * 1024 * 1024;

mod kind {
    pub const HEADER: u8 = 1;
    pub const COUNTERS: u8 = 2;
    pub const TRAILER: u8 = 3;
}

/// What a backup says about itself, first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    pub format: u32,
    /// The version of tally that wrote it.
    pub tally_version: String,
    /// When the backup began (RFC 3339, UTC).
    pub started: String,
    /// The node it was taken through.
    pub node: String,
    /// The config's actors when it began, as that node reported them.
    pub actors: Vec<String>,
}

/// What a backup says about itself, last.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Trailer {
    pub counters: u64,
    /// Counter frames.
    pub frames: u64,
    /// The sum of every counter's value, in decimal.
    pub sum: String,
    /// Some nodes were not heard from (`--allow-partial`): what they alone
    /// held may be missing.
    pub partial: bool,
    /// The nodes a partial backup went without.
    pub without: Vec<String>,
    /// When the last page was read (RFC 3339, UTC).
    pub finished: String,
    /// SHA-256, in hex, of every byte of the file before the trailer frame.
    pub sha256: String,
}

/// Why a file is not a sound backup.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("not a tally backup (no TALLYBAK at its start)")]
    NotABackup,
    #[error("backup format {0}: this build reads format {FORMAT} (a newer tally wrote it?)")]
    Format(u32),
    #[error("the file ends at byte {at}, before its trailer: truncated")]
    Truncated { at: u64 },
    #[error("damaged frame at byte {at}: {what}")]
    Damaged { at: u64, what: String },
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// A whole file, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    pub header: Header,
    pub trailer: Trailer,
    /// Bytes in the file.
    pub bytes: u64,
}

/// Writes a backup as its pages arrive.
pub struct Writer<W: Write> {
    out: W,
    hash: Sha256,
    counters: u64,
    frames: u64,
    sum: u128,
    last: Option<String>,
}

impl<W: Write> Writer<W> {
    pub fn new(mut out: W, header: &Header) -> io::Result<Writer<W>> {
        let mut hash = Sha256::new();
        let mut head = Vec::with_capacity(12);
        head.extend_from_slice(&MAGIC);
        head.extend_from_slice(&FORMAT.to_le_bytes());
        out.write_all(&head)?;
        hash.update(&head);
        let mut w = Writer {
            out,
            hash,
            counters: 0,
            frames: 0,
            sum: 0,
            last: None,
        };
        w.frame(kind::HEADER, &serde_json::to_vec(header)?)?;
        Ok(w)
    }

    /// One page, names in increasing order after every name written so far.
    pub fn page(&mut self, counters: &[StoredCounter]) -> io::Result<()> {
        if counters.is_empty() {
            return Ok(());
        }
        for c in counters {
            if self.last.as_ref().is_some_and(|l| *l >= c.name) {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{:?} out of order after {:?}", c.name, self.last),
                ));
            }
            self.last = Some(c.name.clone());
            self.sum += value(c);
        }
        self.counters += counters.len() as u64;
        self.frames += 1;
        self.frame(kind::COUNTERS, &serde_json::to_vec(counters)?)
    }

    /// The trailer; returns the output, flushed.
    pub fn finish(mut self, without: Vec<String>, finished: String) -> io::Result<W> {
        let trailer = Trailer {
            counters: self.counters,
            frames: self.frames,
            sum: self.sum.to_string(),
            partial: !without.is_empty(),
            without,
            finished,
            sha256: hex(&self.hash.clone().finalize()),
        };
        self.frame(kind::TRAILER, &serde_json::to_vec(&trailer)?)?;
        self.out.flush()?;
        Ok(self.out)
    }

    fn frame(&mut self, kind: u8, payload: &[u8]) -> io::Result<()> {
        let len = u32::try_from(payload.len())
            .ok()
            .filter(|l| *l <= MAX_FRAME)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "frame too large"))?;
        let mut head = [0u8; 9];
        head[0] = kind;
        head[1..5].copy_from_slice(&len.to_le_bytes());
        let mut crc = crc32fast::Hasher::new();
        crc.update(&head[..5]);
        crc.update(payload);
        head[5..9].copy_from_slice(&crc.finalize().to_le_bytes());
        self.out.write_all(&head)?;
        self.out.write_all(payload)?;
        self.hash.update(head);
        self.hash.update(payload);
        Ok(())
    }
}

/// Reads and checks a whole backup, handing each page of counters to
/// `each` once its frame is checked; stops at the first error (of the
/// file, or `each`'s). Every page handed on is sound, but only a call that
/// returns `Ok` saw a whole file: check a file first (`each` doing
/// nothing) before acting on any of it.
pub fn read<E: From<BackupError>>(
    input: impl Read,
    mut each: impl FnMut(Vec<StoredCounter>) -> Result<(), E>,
) -> Result<Summary, E> {
    let mut r = Frames {
        input,
        at: 0,
        hash: Sha256::new(),
    };
    let mut magic = [0u8; 8];
    if !matches!(r.exact(&mut magic), Ok(true)) || magic != MAGIC {
        return Err(BackupError::NotABackup.into());
    }
    let mut format = [0u8; 4];
    if !r.exact(&mut format)? {
        return Err(BackupError::Truncated { at: r.at }.into());
    }
    let format = u32::from_le_bytes(format);
    if format != FORMAT {
        return Err(BackupError::Format(format).into());
    }
    let (at, k, payload) = r.frame()?.ok_or(BackupError::Truncated { at: r.at })?;
    if k != kind::HEADER {
        return Err(damaged(at, "the first frame is not the header").into());
    }
    let header: Header = json(at, &payload)?;
    let (mut counters, mut frames, mut sum) = (0u64, 0u64, 0u128);
    let mut last: Option<String> = None;
    loop {
        let before = r.hash.clone().finalize();
        let Some((at, k, payload)) = r.frame()? else {
            return Err(BackupError::Truncated { at: r.at }.into());
        };
        match k {
            kind::COUNTERS => {
                let page: Vec<StoredCounter> = json(at, &payload)?;
                if page.is_empty() {
                    return Err(damaged(at, "an empty page").into());
                }
                for c in &page {
                    validate_name(&c.name).map_err(|e| damaged(at, &format!("{e}")))?;
                    if last.as_ref().is_some_and(|l| *l >= c.name) {
                        return Err(damaged(at, &format!("{:?} out of order", c.name)).into());
                    }
                    last = Some(c.name.clone());
                    sum += value(c);
                }
                counters += page.len() as u64;
                frames += 1;
                each(page)?;
            }
            kind::TRAILER => {
                let trailer: Trailer = json(at, &payload)?;
                let expect = (counters, frames, sum.to_string(), hex(&before));
                let got = (
                    trailer.counters,
                    trailer.frames,
                    trailer.sum.clone(),
                    trailer.sha256.clone(),
                );
                if got != expect {
                    return Err(damaged(
                        at,
                        &format!(
                            "the trailer says {} counters in {} frames summing to {}, \
                             hash {}; the file holds {} in {} summing to {}, hash {}",
                            got.0, got.1, got.2, got.3, expect.0, expect.1, expect.2, expect.3
                        ),
                    )
                    .into());
                }
                if trailer.partial == trailer.without.is_empty() {
                    return Err(damaged(at, "a partial backup that lacks nothing").into());
                }
                let mut extra = [0u8; 1];
                if r.exact(&mut extra)? {
                    return Err(damaged(r.at - 1, "bytes after the trailer").into());
                }
                return Ok(Summary {
                    header,
                    trailer,
                    bytes: r.at,
                });
            }
            other => return Err(damaged(at, &format!("unknown frame kind {other}")).into()),
        }
    }
}

/// A counter's value as the sum of its components.
fn value(c: &StoredCounter) -> u128 {
    c.components.iter().cloned().collect::<GCounter>().value()
}

fn damaged(at: u64, what: &str) -> BackupError {
    BackupError::Damaged {
        at,
        what: what.to_string(),
    }
}

fn json<T: for<'de> Deserialize<'de>>(at: u64, payload: &[u8]) -> Result<T, BackupError> {
    serde_json::from_slice(payload).map_err(|e| damaged(at, &format!("{e}")))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

struct Frames<R> {
    input: R,
    at: u64,
    hash: Sha256,
}

impl<R: Read> Frames<R> {
    /// Fills `buf`; `false` at a clean end of input (nothing read), an
    /// error at an end part way.
    fn exact(&mut self, buf: &mut [u8]) -> Result<bool, BackupError> {
        let mut got = 0;
        while got < buf.len() {
            match self.input.read(&mut buf[got..]) {
                Ok(0) if got == 0 => return Ok(false),
                Ok(0) => {
                    return Err(BackupError::Truncated {
                        at: self.at + got as u64,
                    });
                }
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
        self.at += buf.len() as u64;
        self.hash.update(&*buf);
        Ok(true)
    }

    /// The next frame as (offset, kind, payload), checked; `None` at the
    /// end of input.
    fn frame(&mut self) -> Result<Option<(u64, u8, Vec<u8>)>, BackupError> {
        let at = self.at;
        let mut head = [0u8; 9];
        if !self.exact(&mut head)? {
            return Ok(None);
        }
        let len = u32::from_le_bytes(head[1..5].try_into().expect("4 bytes"));
        if len > MAX_FRAME {
            return Err(damaged(
                at,
                &format!("a frame of {len} bytes, past {MAX_FRAME}"),
            ));
        }
        let mut payload = vec![0u8; len as usize];
        if !self.exact(&mut payload)? && len > 0 {
            return Err(BackupError::Truncated { at: self.at });
        }
        let mut crc = crc32fast::Hasher::new();
        crc.update(&head[..5]);
        crc.update(&payload);
        let stored = u32::from_le_bytes(head[5..9].try_into().expect("4 bytes"));
        if crc.finalize() != stored {
            return Err(damaged(at, "checksum mismatch"));
        }
        Ok(Some((at, head[0], payload)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crdt::Component;

    fn counter(name: &str, counts: &[(u64, u64)]) -> StoredCounter {
        StoredCounter {
            name: name.into(),
            components: counts
                .iter()
                .map(|&(node, count)| Component {
                    node,
                    incarnation: 7,
                    count,
                })
                .collect(),
        }
    }

    fn header() -> Header {
        Header {
            format: FORMAT,
            tally_version: "test".into(),
            started: "2026-12-05T00:00:00Z".into(),
            node: "http://127.0.0.1:7777".into(),
            actors: vec!["127.0.0.1:7777".into()],
        }
    }

    fn file(pages: &[Vec<StoredCounter>], without: Vec<String>) -> Vec<u8> {
        let mut w = Writer::new(Vec::new(), &header()).unwrap();
        for p in pages {
            w.page(p).unwrap();
        }
        w.finish(without, "2026-12-05T00:00:01Z".into()).unwrap()
    }

    fn pages() -> Vec<Vec<StoredCounter>> {
        vec![
            vec![counter("a", &[(1, 2), (2, 3)]), counter("b", &[(1, 1)])],
            vec![counter("c", &[(3, u64::MAX), (4, u64::MAX)])],
        ]
    }

    fn all(bytes: &[u8]) -> Result<(Summary, Vec<StoredCounter>), BackupError> {
        let mut seen = Vec::new();
        let summary = read(bytes, |page| {
            seen.extend(page);
            Ok::<_, BackupError>(())
        })?;
        Ok((summary, seen))
    }

    #[test]
    fn what_is_written_reads_back_with_its_counts_and_sum() {
        let bytes = file(&pages(), vec![]);
        let (summary, seen) = all(&bytes).unwrap();
        assert_eq!(seen, pages().concat());
        assert_eq!(summary.header, header());
        let t = &summary.trailer;
        assert_eq!((t.counters, t.frames, t.partial), (3, 2, false));
        assert_eq!(t.sum, (6u128 + 2 * u128::from(u64::MAX)).to_string());
        assert_eq!(summary.bytes, bytes.len() as u64);
    }

    #[test]
    fn a_partial_backup_names_what_it_lacks() {
        let bytes = file(&pages(), vec!["10.0.0.3:7777".into()]);
        let (summary, _) = all(&bytes).unwrap();
        assert!(summary.trailer.partial);
        assert_eq!(summary.trailer.without, ["10.0.0.3:7777"]);
    }

    /// Every single flipped bit is found, wherever it is.
    #[test]
    fn any_flipped_bit_is_found() {
        let bytes = file(&pages(), vec![]);
        for i in 0..bytes.len() {
            for bit in [0u8, 3, 7] {
                let mut damaged = bytes.clone();
                damaged[i] ^= 1 << bit;
                assert!(
                    all(&damaged).is_err(),
                    "a flip of bit {bit} at byte {i} went unseen"
                );
            }
        }
    }

    /// A file cut anywhere is refused, never read as a shorter backup.
    #[test]
    fn any_truncation_is_found() {
        let bytes = file(&pages(), vec![]);
        for len in 0..bytes.len() {
            let e = all(&bytes[..len]).unwrap_err();
            assert!(
                matches!(e, BackupError::Truncated { .. } | BackupError::NotABackup),
                "cut at {len}: {e}"
            );
        }
    }

    #[test]
    fn a_dropped_or_repeated_page_is_found_even_with_sound_frames() {
        let whole = file(&pages(), vec![]);
        let one = file(&pages()[..1], vec![]);
        // The second file's trailer after the first file's pages: each frame
        // is sound, the counts and the hash are not.
        let trailer_at = |b: &[u8]| {
            let (s, _) = all(b).unwrap();
            (s.bytes as usize) - {
                let t = serde_json::to_vec(&s.trailer).unwrap();
                t.len() + 9
            }
        };
        let mut spliced = whole[..trailer_at(&whole)].to_vec();
        spliced.extend_from_slice(&one[trailer_at(&one)..]);
        assert!(matches!(all(&spliced), Err(BackupError::Damaged { .. })));
        // A page written twice breaks the order of names.
        let mut w = Writer::new(Vec::new(), &header()).unwrap();
        w.page(&pages()[0]).unwrap();
        assert!(w.page(&pages()[0]).is_err());
    }

    #[test]
    fn a_newer_format_is_refused_by_name() {
        let mut bytes = file(&pages(), vec![]);
        bytes[8] = 2;
        assert!(matches!(all(&bytes), Err(BackupError::Format(2))));
        assert!(matches!(
            all(b"PK\x03\x04..."),
            Err(BackupError::NotABackup)
        ));
    }
}
