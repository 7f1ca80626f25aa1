//! The live view: a line per node, about every second, and the one place
//! that writes to stdout.
//!
//! On a terminal the lines stay in a block at the top of the screen,
//! redrawn in place, while commands and their answers scroll below it (a
//! scroll region). Anywhere else (a pipe, a file, a terminal too small)
//! each node's line is printed when its state changes, and otherwise at
//! most every [`PLAIN_EVERY`], so a log stays readable.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::api::types::Status;

/// How often an unchanged-state line is repeated when stdout is not a terminal.
pub const PLAIN_EVERY: Duration = Duration::from_secs(5);

/// What the view shows of one node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Row {
    pub id: u64,
    /// Its address in the config (its proxy's).
    pub actor: String,
    /// up, paused, killed, exited, each with ", isolated" when cut off.
    pub state: String,
    /// `None` when the node did not answer (or was not asked: paused, killed).
    pub status: Option<Seen>,
    /// Acknowledged by this node, of what the demo sent (with `--with-load`).
    pub acked: Option<u128>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Seen {
    /// Its local `value` of each name the demo shows.
    pub values: Vec<(String, Option<u128>)>,
    pub names: u64,
    /// Per peer: its label (n2) and its lag, or why there is none.
    pub lags: Vec<(String, Lag)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lag {
    Changes(u64),
    Unreachable,
    Unknown,
}

impl Seen {
    /// What the view needs of `GET /status`; `label` names a peer's actor.
    pub fn from_status(
        s: &Status,
        values: Vec<(String, Option<u128>)>,
        label: impl Fn(&str) -> String,
    ) -> Seen {
        let lags = s
            .peers
            .iter()
            .map(|p| {
                let lag = match p.reachable {
                    Some(true) => Lag::Changes(p.lag_changes),
                    Some(false) => Lag::Unreachable,
                    None => Lag::Unknown,
                };
                (label(&p.actor), lag)
            })
            .collect();
        Seen {
            values,
            names: s.names,
            lags,
        }
    }
}

/// One node's line.
pub fn format_row(r: &Row) -> String {
    let mut out = format!("node {}  {:<15}  {:<16}", r.id, r.actor, r.state);
    match &r.status {
        None if r.state.starts_with("up") => out.push_str("  (no answer)"),
        None => {}
        Some(seen) => {
            for (name, value) in &seen.values {
                match value {
                    Some(v) => {
                        let _ = write!(out, "  {name}={v}");
                    }
                    None => {
                        let _ = write!(out, "  {name}=?");
                    }
                }
            }
            let _ = write!(out, "  names {}", seen.names);
            if !seen.lags.is_empty() {
                out.push_str("  lag");
                for (peer, lag) in &seen.lags {
                    match lag {
                        Lag::Changes(n) => {
                            let _ = write!(out, " {peer}={n}");
                        }
                        Lag::Unreachable => {
                            let _ = write!(out, " {peer}=unreachable");
                        }
                        Lag::Unknown => {
                            let _ = write!(out, " {peer}=?");
                        }
                    }
                }
            }
        }
    }
    if let Some(acked) = r.acked {
        let _ = write!(out, "  acked {acked}");
    }
    out.trim_end().to_string()
}

/// Where output goes.
pub struct Screen {
    mode: Mutex<Mode>,
    started: Instant,
}

enum Mode {
    /// A block of `height` lines at the top, above a scroll region.
    Block { height: u16, rows: u16, cols: u16 },
    Plain {
        /// Per node: the state and the time of its last printed line, and that line.
        last: HashMap<u64, (String, Instant, String)>,
    },
}

impl Screen {
    /// `nodes` lines of view, plus a title and a rule.
    pub fn new(nodes: usize) -> Screen {
        let height = u16::try_from(nodes + 2).unwrap_or(u16::MAX);
        let mode = match terminal_size() {
            Some((rows, cols))
                if std::io::stdout().is_terminal() && rows >= height + 6 && cols >= 40 =>
            {
                let mut out = std::io::stdout().lock();
                // Clear, scroll only below the block, and start at the bottom.
                let _ = write!(out, "\x1b[2J\x1b[{};{rows}r\x1b[{rows};1H", height + 1);
                let _ = out.flush();
                Mode::Block { height, rows, cols }
            }
            _ => Mode::Plain {
                last: HashMap::new(),
            },
        };
        Screen {
            mode: Mutex::new(mode),
            started: Instant::now(),
        }
    }

    fn mode(&self) -> std::sync::MutexGuard<'_, Mode> {
        self.mode.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Prints command output (one or more lines) below the view.
    pub fn say(&self, text: &str) {
        let _mode = self.mode();
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{text}");
        let _ = out.flush();
    }

    /// The prompt, on a terminal only.
    pub fn prompt(&self) {
        let mode = self.mode();
        if matches!(*mode, Mode::Block { .. }) {
            let mut out = std::io::stdout().lock();
            let _ = write!(out, "demo> ");
            let _ = out.flush();
        }
    }

    /// Shows the rows: redrawn in place on a terminal, else printed as
    /// they change. `force` prints every row now (the `status` command).
    pub fn show(&self, rows: &[Row], force: bool) {
        let mut mode = self.mode();
        let mut out = std::io::stdout().lock();
        let now = Instant::now();
        match &mut *mode {
            Mode::Block { height, cols, .. } if !force => {
                let elapsed = now.duration_since(self.started).as_secs();
                let title = format!(
                    "tally demo, {elapsed}s: node, actor (through its proxy), state, local values, names, lag to peers (changes not yet confirmed)"
                );
                let mut lines = vec![title];
                lines.extend(rows.iter().map(format_row));
                lines.push("-".repeat(usize::from(*cols)));
                // Save the cursor, draw the block, restore: typing is not disturbed.
                let _ = write!(out, "\x1b7");
                for (i, line) in lines.iter().take(usize::from(*height)).enumerate() {
                    let fitted: String = line.chars().take(usize::from(*cols)).collect();
                    let _ = write!(out, "\x1b[{};1H{fitted}\x1b[K", i + 1);
                }
                let _ = write!(out, "\x1b8");
            }
            Mode::Block { .. } => {
                for r in rows {
                    let _ = writeln!(out, "{}", format_row(r));
                }
            }
            Mode::Plain { last } => {
                let stamp = now.duration_since(self.started).as_secs();
                for r in rows {
                    let line = format_row(r);
                    let due = match last.get(&r.id) {
                        None => true,
                        Some((state, at, printed)) => {
                            force
                                || *state != r.state
                                || (*printed != line && now.duration_since(*at) >= PLAIN_EVERY)
                        }
                    };
                    if due {
                        let _ = writeln!(out, "[{stamp:>4}s] {line}");
                        last.insert(r.id, (r.state.clone(), now, line));
                    }
                }
            }
        }
        let _ = out.flush();
    }

    /// Gives the terminal its whole screen back.
    pub fn close(&self) {
        let mode = self.mode();
        if let Mode::Block { rows, .. } = *mode {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "\x1b[r\x1b[{rows};1H");
            let _ = out.flush();
        }
    }
}

/// Rows and columns of the terminal on stdout, if it is one.
fn terminal_size() -> Option<(u16, u16)> {
    let mut size = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes one `winsize` into the struct we pass.
    let ok = unsafe { libc::ioctl(libc::STDOUT_FILENO, libc::TIOCGWINSZ, &mut size) } == 0;
    (ok && size.ws_row > 0 && size.ws_col > 0).then_some((size.ws_row, size.ws_col))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_row_shows_values_names_and_lag() {
        let row = Row {
            id: 1,
            actor: "127.0.0.1:7701".into(),
            state: "up".into(),
            status: Some(Seen {
                values: vec![("a".into(), Some(5)), ("b".into(), None)],
                names: 2,
                lags: vec![
                    ("n2".into(), Lag::Changes(0)),
                    ("n3".into(), Lag::Unreachable),
                ],
            }),
            acked: Some(7),
        };
        assert_eq!(
            format_row(&row),
            "node 1  127.0.0.1:7701   up                a=5  b=?  names 2  lag n2=0 n3=unreachable  acked 7"
        );
        let paused = Row {
            state: "paused".into(),
            status: None,
            acked: None,
            ..row.clone()
        };
        assert_eq!(format_row(&paused), "node 1  127.0.0.1:7701   paused");
        let silent = Row {
            status: None,
            acked: None,
            ..row
        };
        assert!(format_row(&silent).ends_with("(no answer)"));
    }
}
