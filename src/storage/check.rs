//! `tally check DATA_DIR`: verifies a stopped node's files, changing
//! nothing, and says what it found.
//!
//! The B-tree is checked on a copy (redb's integrity check may repair what
//! it opens, and the folder must stay exactly as it is); the log is read
//! the way a start reads it, with the same rules for damage and torn
//! records (`journal.rs`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;

use super::disk::{Disk, OsDisk};
use super::journal;
use super::redb::{DB_FILE, RedbEngine};
use super::{Salvage, StoreError};

/// What `tally check` found.
#[derive(Debug, Serialize)]
pub struct CheckReport {
    pub folder: PathBuf,
    /// `None` when the B-tree could not be read (see `damage`).
    pub btree: Option<TreeSummary>,
    /// Log records read after the B-tree's position, and the LSN the log
    /// reaches.
    pub log_records: usize,
    pub log_next: u64,
    /// A record a crash cut short at the end of the log: normal after a
    /// crash, dropped at the next start.
    pub torn_tail: bool,
    /// Every place found damaged.
    pub damage: Vec<String>,
    /// Log records the B-tree lacks that could not be read back.
    pub lost: Vec<String>,
    /// Salvages recorded in the folder by earlier starts.
    pub salvaged: Vec<Salvage>,
}

impl CheckReport {
    pub fn is_clean(&self) -> bool {
        self.damage.is_empty()
    }
}

/// What the B-tree holds, in brief.
#[derive(Debug, Serialize)]
pub struct TreeSummary {
    pub node: u64,
    pub incarnation: String,
    pub names: u64,
    /// The last log record folded in.
    pub log_lsn: u64,
    pub bytes: u64,
}

/// Checks the data folder `dir` of a stopped node.
pub fn check(dir: &Path) -> Result<CheckReport, StoreError> {
    if !dir.is_dir() {
        return Err(StoreError::Folder {
            path: dir.to_path_buf(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such folder"),
        });
    }
    if OsDisk::in_use(dir) {
        return Err(StoreError::Locked(dir.to_path_buf()));
    }
    let disk = OsDisk::unlocked(dir);
    let mut report = CheckReport {
        folder: dir.to_path_buf(),
        btree: None,
        log_records: 0,
        log_next: 0,
        torn_tail: false,
        damage: Vec::new(),
        lost: Vec::new(),
        salvaged: Vec::new(),
    };
    let (after, expected) = match tree_summary(dir) {
        Ok(None) => (0, false),
        Ok(Some((summary, expected, salvaged))) => {
            let after = summary.log_lsn;
            report.btree = Some(summary);
            report.salvaged = salvaged;
            (after, expected)
        }
        Err(StoreError::Corrupt(why)) => {
            report.damage.push(why);
            (0, false)
        }
        Err(e) => return Err(e),
    };
    let replayed = journal::replay(&disk, after, expected, &mut |_, _| {})?;
    report.log_records = replayed.records;
    report.log_next = replayed.next;
    report.torn_tail = replayed.torn;
    report
        .damage
        .extend(replayed.damage.iter().map(ToString::to_string));
    report.lost = replayed
        .lost
        .iter()
        .map(|(from, to)| match to {
            Some(to) => format!("log records {from} to {to}"),
            None => format!("log records from {from} to where the damage ends"),
        })
        .collect();
    Ok(report)
}

/// Opens a copy of the B-tree (in a temporary folder) and reads its
/// summary; `None` when there is no B-tree.
fn tree_summary(dir: &Path) -> Result<Option<(TreeSummary, bool, Vec<Salvage>)>, StoreError> {
    let file = dir.join(DB_FILE);
    if !file.exists() {
        return Ok(None);
    }
    let scratch = std::env::temp_dir().join(format!(
        "tally-check-{}-{}",
        std::process::id(),
        fastrand::u64(..)
    ));
    let folder = |source| StoreError::Folder {
        path: scratch.clone(),
        source,
    };
    std::fs::create_dir_all(&scratch).map_err(folder)?;
    let result = (|| {
        std::fs::copy(&file, scratch.join(DB_FILE))
            .map_err(|e| StoreError::engine(e).in_file(&file))?;
        let copy: Arc<dyn Disk> = Arc::new(OsDisk::unlocked(&scratch));
        let tree = RedbEngine::on(copy).map_err(|e| match e {
            StoreError::Corrupt(why) => StoreError::Corrupt(why.replace(
                &scratch.join(DB_FILE).display().to_string(),
                &file.display().to_string(),
            )),
            e => e,
        })?;
        let (node, incarnation, names, expected, salvaged) =
            tree.summary().map_err(|e| match e {
                StoreError::NewerFormat { found, reads, .. } => StoreError::NewerFormat {
                    file: file.clone(),
                    found,
                    reads,
                },
                e => e,
            })?;
        Ok(Some((
            TreeSummary {
                node,
                incarnation: format!("{incarnation:016x}"),
                names,
                log_lsn: tree.log_lsn()?,
                bytes: std::fs::metadata(&file).map_or(0, |m| m.len()),
            },
            expected,
            salvaged,
        )))
    })();
    let _ = std::fs::remove_dir_all(&scratch);
    result
}
