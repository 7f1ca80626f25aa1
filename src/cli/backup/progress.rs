//! A progress bar on a terminal (indicatif), a plain line every 2 s in a pipe.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

use crate::cli::say;

/// A progress bar on a terminal; a plain line now and then in a pipe.
pub(super) struct Progress {
    bar: Option<ProgressBar>,
    what: &'static str,
    done: std::cell::Cell<u64>,
    said: std::cell::Cell<Instant>,
}

impl Progress {
    pub(super) fn new(what: &'static str, expect: u64) -> Progress {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new(expect.max(1));
            bar.set_style(
                ProgressStyle::with_template(
                    "{prefix} [{bar:40}] {pos}/{len} counters, {per_sec}, {elapsed}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            bar.set_prefix(what);
            bar
        });
        Progress {
            bar,
            what,
            done: std::cell::Cell::new(0),
            said: std::cell::Cell::new(Instant::now()),
        }
    }

    pub(super) fn add(&self, n: u64) {
        self.done.set(self.done.get() + n);
        match &self.bar {
            Some(bar) => {
                // The node's count of names is an estimate: others may hold more.
                if self.done.get() > bar.length().unwrap_or(0) {
                    bar.set_length(self.done.get());
                }
                bar.inc(n);
            }
            None if self.said.get().elapsed() >= Duration::from_secs(2) => {
                self.said.set(Instant::now());
                say(&format!(
                    "{}: {} counters so far",
                    self.what,
                    self.done.get()
                ));
            }
            None => {}
        }
    }

    pub(super) fn note(&self, message: &str) {
        match &self.bar {
            Some(bar) => bar.println(format!("tally: {}: {message}", self.what)),
            None => say(&format!("{}: {message}", self.what)),
        }
    }

    pub(super) fn done(&self) {
        match &self.bar {
            Some(bar) => bar.finish_and_clear(),
            None => say(&format!("{}: {} counters", self.what, self.done.get())),
        }
    }
}
