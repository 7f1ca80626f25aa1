//! `tally backup`, `backup verify`, `restore`, `export` and `import`.
//!
//! A backup walks `GET /backup` page by page, each page consistent (heard
//! from every node of the read set), and streams them into a backup file
//! ([`crate::backup`]); a restore checks the whole file first, then sends
//! it page by page to `POST /restore`. Export and import do the same with
//! JSON lines. Every request goes to the first `--node` that answers, so a
//! node that goes away part way is replaced by the next.

use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use serde::{Deserialize, Serialize};

use crate::api::types::{MAX_RESTORE, StoredCounter};
use crate::backup::{self, BackupError, FORMAT, Header, Summary, Writer};
use crate::client::{Conn, EXIT_FAILED, EXIT_INCOMPLETE, EXIT_UNREACHABLE};
use crate::crdt::{Component, GCounter};
use crate::input::validate_name;

use super::say;

mod progress;
mod remote;

use progress::Progress;
use remote::{Sender, status, walk};

/// A failed command: what to say, and the exit code.
struct Failed(u8, String);

impl Failed {
    fn exit(self) -> ExitCode {
        say(&self.1);
        ExitCode::from(self.0)
    }
}

fn failed(message: impl std::fmt::Display) -> Failed {
    Failed(EXIT_FAILED, message.to_string())
}

fn runtime() -> Result<tokio::runtime::Runtime, Failed> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| failed(format!("cannot start the runtime: {e}")))
}

/// Runs `work` and prints what it reports.
fn print_report(work: impl Future<Output = Result<String, Failed>>) -> ExitCode {
    match runtime().and_then(|rt| rt.block_on(work)) {
        Ok(report) => {
            println!("{report}");
            ExitCode::SUCCESS
        }
        Err(f) => f.exit(),
    }
}

/// `tally backup -o FILE`.
pub fn backup(output: &Path, allow_partial: bool, conn: &Conn) -> ExitCode {
    match runtime().and_then(|rt| rt.block_on(take_backup(output, allow_partial, conn))) {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => f.exit(),
    }
}

async fn take_backup(output: &Path, allow_partial: bool, conn: &Conn) -> Result<(), Failed> {
    let status = status(conn).await?;
    let header = Header {
        format: FORMAT,
        tally_version: env!("CARGO_PKG_VERSION").to_string(),
        started: now(),
        node: conn.nodes[0].clone(),
        actors: status.config.actors.clone(),
    };
    let to_stdout = output == Path::new("-");
    let temp = temporary(output);
    let file: Box<dyn Write> = if to_stdout {
        Box::new(std::io::stdout().lock())
    } else {
        let f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&temp)
            .map_err(|e| failed(format!("cannot create {}: {e}", temp.display())))?;
        Box::new(f)
    };
    let result = async {
        let mut w = Writer::new(BufWriter::with_capacity(1 << 20, file), &header)
            .map_err(|e| failed(format!("cannot write the backup: {e}")))?;
        let progress = Progress::new("backup", status.names);
        let without = walk(conn, allow_partial, &progress, |page| {
            w.page(&page.counters)
                .map_err(|e| failed(format!("cannot write the backup: {e}")))
        })
        .await?;
        let out = w
            .finish(without.clone(), now())
            .map_err(|e| failed(format!("cannot write the backup: {e}")))?;
        drop(out);
        progress.done();
        Ok::<_, Failed>(without)
    }
    .await;
    if to_stdout {
        return result.map(|_| ());
    }
    let without = match result {
        Ok(w) => w,
        Err(f) => {
            let _ = std::fs::remove_file(&temp);
            return Err(f);
        }
    };
    durable_rename(&temp, output).map_err(|e| {
        let _ = std::fs::remove_file(&temp);
        failed(format!("cannot finish {}: {e}", output.display()))
    })?;
    let summary = read_file(output, |_| Ok(()))?;
    println!("{}", describe(output, &summary));
    if !without.is_empty() {
        say(&format!(
            "the backup is partial: it lacks what only {} held",
            without.join(", ")
        ));
        return Err(Failed(EXIT_INCOMPLETE, "backup written, partial".into()));
    }
    Ok(())
}

/// `tally backup verify FILE`: checks a file without a cluster.
pub fn verify(file: &Path, json: bool) -> ExitCode {
    match read_file(file, |_| Ok(())) {
        Ok(summary) => {
            if json {
                let out = serde_json::json!({
                    "file": file.display().to_string(),
                    "bytes": summary.bytes,
                    "header": summary.header,
                    "trailer": summary.trailer,
                });
                println!("{out:#}");
            } else {
                println!("{}", describe(file, &summary));
            }
            ExitCode::SUCCESS
        }
        Err(f) => f.exit(),
    }
}

/// `tally restore FILE`: checks the whole file, then merges it page by page.
pub fn restore(file: &Path, after: Option<&str>, conn: &Conn) -> ExitCode {
    let summary = match read_file(file, |_| Ok(())) {
        Ok(s) => s,
        Err(f) => return f.exit(),
    };
    if summary.trailer.partial {
        say(&format!(
            "{} is a partial backup: it lacks what only {} held",
            file.display(),
            summary.trailer.without.join(", ")
        ));
    }
    let run = async {
        let progress = Progress::new("restore", summary.trailer.counters);
        let mut sender = Sender::new(conn, after, &progress);
        // The file is read again on a thread of its own, a page or two
        // ahead of what is sent: never the whole file in memory.
        let (pages, mut next) = tokio::sync::mpsc::channel(2);
        let path = file.to_path_buf();
        let reader = std::thread::spawn(move || {
            read_file(&path, |page| {
                pages
                    .blocking_send(page)
                    .map_err(|_| failed("stopped reading"))
            })
        });
        while let Some(page) = next.recv().await {
            sender.queue(page);
            if let Err(f) = sender.flush().await {
                drop(next);
                let _ = reader.join();
                return Err(f);
            }
        }
        match reader.join() {
            Ok(Ok(_)) => {}
            Ok(Err(f)) => return Err(sender.stopped(f)),
            Err(_) => return Err(failed("the file reader failed")),
        }
        progress.done();
        Ok::<_, Failed>(sender.report())
    };
    print_report(run)
}

/// One line of `tally export`, and of what `tally import` reads.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    name: String,
    /// The sum of the components; checked on import when present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    value: Option<u128>,
    components: Vec<Component>,
}

/// `tally export`: every counter as JSON lines, consistently.
pub fn export(output: &Path, allow_partial: bool, conn: &Conn) -> ExitCode {
    let run = async {
        let status = status(conn).await?;
        let to_stdout = output == Path::new("-");
        let file: Box<dyn Write> = if to_stdout {
            Box::new(std::io::stdout().lock())
        } else {
            Box::new(
                std::fs::File::create(output)
                    .map_err(|e| failed(format!("cannot create {}: {e}", output.display())))?,
            )
        };
        let mut out = BufWriter::new(file);
        let progress = Progress::new("export", status.names);
        let without = walk(conn, allow_partial, &progress, |page| {
            for c in page.counters {
                let value = c.components.iter().cloned().collect::<GCounter>().value();
                let line = Line {
                    name: c.name,
                    value: Some(value),
                    components: c.components,
                };
                serde_json::to_writer(&mut out, &line)
                    .map_err(std::io::Error::from)
                    .and_then(|()| out.write_all(b"\n"))
                    .map_err(|e| failed(format!("cannot write: {e}")))?;
            }
            Ok(())
        })
        .await?;
        out.flush()
            .map_err(|e| failed(format!("cannot write: {e}")))?;
        progress.done();
        if !without.is_empty() {
            return Err(Failed(
                EXIT_INCOMPLETE,
                format!(
                    "the export is partial: it lacks what only {} held",
                    without.join(", ")
                ),
            ));
        }
        Ok(())
    };
    match runtime().and_then(|rt| rt.block_on(run)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => f.exit(),
    }
}

/// `tally import FILE`: JSON lines (as `export` writes them) merged into
/// the cluster; every line is checked before anything is sent.
pub fn import(file: &Path, conn: &Conn) -> ExitCode {
    let lines = match read_lines(file) {
        Ok(l) => l,
        Err(f) => return f.exit(),
    };
    let run = async {
        let progress = Progress::new("import", lines.len() as u64);
        let mut sender = Sender::new(conn, None, &progress);
        for chunk in lines.chunks(MAX_RESTORE) {
            sender.queue(chunk.to_vec());
            sender.flush().await?;
        }
        progress.done();
        Ok::<_, Failed>(sender.report())
    };
    print_report(run)
}

fn read_lines(file: &Path) -> Result<Vec<StoredCounter>, Failed> {
    let input: Box<dyn BufRead> = if file == Path::new("-") {
        Box::new(std::io::stdin().lock())
    } else {
        let f = std::fs::File::open(file).map_err(|e| {
            Failed(
                EXIT_UNREACHABLE,
                format!("cannot open {}: {e}", file.display()),
            )
        })?;
        Box::new(BufReader::new(f))
    };
    let mut out = Vec::new();
    for (i, line) in input.lines().enumerate() {
        let at = |what: String| failed(format!("{}:{}: {what}", file.display(), i + 1));
        let line = line.map_err(|e| at(e.to_string()))?;
        if line.trim().is_empty() {
            continue;
        }
        let l: Line = serde_json::from_str(&line).map_err(|e| at(e.to_string()))?;
        validate_name(&l.name).map_err(|e| at(e.to_string()))?;
        let sum = l.components.iter().cloned().collect::<GCounter>().value();
        if let Some(v) = l.value.filter(|v| *v != sum) {
            return Err(at(format!(
                "value {v} is not the sum of the components ({sum})"
            )));
        }
        out.push(StoredCounter {
            name: l.name,
            components: l.components,
        });
    }
    Ok(out)
}

/// Reads and checks a backup file, handing on each checked page.
fn read_file(
    file: &Path,
    each: impl FnMut(Vec<StoredCounter>) -> Result<(), Failed>,
) -> Result<Summary, Failed> {
    let f = std::fs::File::open(file).map_err(|e| {
        Failed(
            EXIT_UNREACHABLE,
            format!("cannot open {}: {e}", file.display()),
        )
    })?;
    backup::read(BufReader::with_capacity(1 << 20, f), each)
        .map_err(|f: Failed| Failed(f.0, format!("{}: {}", file.display(), f.1)))
}

impl From<BackupError> for Failed {
    fn from(e: BackupError) -> Failed {
        failed(e)
    }
}

fn describe(file: &Path, s: &Summary) -> String {
    let t = &s.trailer;
    let partial = if t.partial {
        format!("PARTIAL: lacks what only {} held", t.without.join(", "))
    } else {
        "complete".into()
    };
    format!(
        "{}: sound, {partial}\n  format {}, written by tally {}\n  taken through {} \
         from {} to {}\n  actors: {}\n  {} counters, values summing to {}, {} bytes\n  sha256 {}",
        file.display(),
        s.header.format,
        s.header.tally_version,
        s.header.node,
        s.header.started,
        t.finished,
        s.header.actors.join(", "),
        t.counters,
        t.sum,
        s.bytes,
        t.sha256
    )
}

fn now() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

/// `FILE.partial` beside `FILE`: written, synced, then renamed.
fn temporary(output: &Path) -> PathBuf {
    let mut name = output.file_name().unwrap_or_default().to_os_string();
    name.push(".partial");
    output.with_file_name(name)
}

fn durable_rename(temp: &Path, output: &Path) -> std::io::Result<()> {
    std::fs::File::open(temp)?.sync_all()?;
    std::fs::rename(temp, output)?;
    let dir = match output.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    std::fs::File::open(dir)?.sync_all()
}
