//! `tally check DATA_DIR`: what a stopped node's files hold, and whether
//! they read back as written (see `daemon::check_folder`).

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::Path;
use std::process::ExitCode;

use crate::daemon::{CheckReport, check_folder};

pub fn run(dir: &Path, json: bool) -> ExitCode {
    let report = match check_folder(dir) {
        Ok(report) => report,
        Err(e) => {
            let hint = if e.in_use() {
                "; stop the node first (a running node checks its own files: see its \
                 /status, storage.scrub)"
            } else {
                ""
            };
            super::say(&format!("cannot check {}: {e}{hint}", dir.display()));
            return ExitCode::from(2);
        }
    };
    let text = if json {
        serde_json::to_string_pretty(&report).expect("a report serializes") + "\n"
    } else {
        render(&report)
    };
    let _ = std::io::stdout().write_all(text.as_bytes());
    if report.is_clean() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// The report as people read it.
pub fn render(r: &CheckReport) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "data folder {}", r.folder.display());
    match &r.btree {
        Some(t) => {
            let _ = writeln!(
                out,
                "  B-tree: node {}, incarnation {}, {} names, log folded in up to record {}, {} bytes: verified",
                t.node, t.incarnation, t.names, t.log_lsn, t.bytes
            );
        }
        None if r.damage.is_empty() || r.log_records > 0 => {
            let _ = writeln!(out, "  B-tree: none (a new folder)");
        }
        None => {}
    }
    let _ = writeln!(
        out,
        "  log: {} records after the B-tree's position, next record {}{}",
        r.log_records,
        r.log_next,
        if r.torn_tail {
            "; a record a crash cut short at the end (never acknowledged; dropped at the next start)"
        } else {
            ""
        }
    );
    for s in &r.salvaged {
        let _ = writeln!(
            out,
            "  salvaged earlier (at {} ms since the epoch): lost {}; incarnation {:016x} -> {:016x}",
            s.at_ms, s.lost, s.from_incarnation, s.to_incarnation
        );
    }
    if r.is_clean() {
        let _ = writeln!(out, "no damage found");
        return out;
    }
    let _ = writeln!(out, "DAMAGE:");
    for d in &r.damage {
        let _ = writeln!(out, "  {d}");
    }
    if !r.lost.is_empty() {
        let _ = writeln!(out, "  cannot be read back: {}", r.lost.join(", "));
    }
    let _ = writeln!(
        out,
        "A node started on this folder salvages it by default (--on-damage salvage): it keeps \
         every record that reads back, sets the damaged files aside under damaged/, counts on \
         under a new incarnation and pulls back from its peers what they hold. With \
         --on-damage refuse it stops instead, changing nothing."
    );
    out
}
