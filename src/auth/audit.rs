//! The audit log: admin actions allowed, credentials refused, and reloads
//! of the tokens file, written as structured `tracing` events under the
//! target `audit` (so `--log audit=info,...` and log shippers can pick them
//! out).
//!
//! Allowed admin actions and refused credentials are each limited to a
//! number of lines per second (fixed one-second windows, one per kind, so
//! that a flood of refusals cannot push an admin action out of the log).
//! What the limit drops is counted; the next line written of that kind
//! carries the count as `suppressed`, and [`Audit::flush`], called once
//! the second is over, writes it in a line of its own when no such line
//! came. Reload events are rare and always written.
//!
//! Recording takes a short-held std `Mutex` (a few integer operations,
//! never across an await) and allocates nothing when it drops a line. The
//! time is passed in, so the limiter is tested without sleeping.
//!
//! Left out: counting dropped lines in the metrics, and writing the audit
//! log to a file of its own (the log subscriber decides where it goes).

use std::net::SocketAddr;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use tracing::{info, warn};

use super::tokens::{Denied, TokensError};

/// Lines of each limited kind written per second unless told otherwise.
pub const DEFAULT_AUDIT_LINES_PER_SECOND: u32 = 20;

/// How long a rate window lasts.
const WINDOW: Duration = Duration::from_secs(1);

/// Longest request path written, in bytes: a counter name can be a
/// kilobyte, percent-encoded three times that.
const MAX_PATH_SHOWN: usize = 256;

/// Something worth an audit line. Borrowed, so that building one costs
/// nothing when the limiter drops it.
#[derive(Debug, Clone, Copy)]
pub enum Event<'a> {
    /// A request that needs the admin scope was let through.
    AdminAllowed {
        token: &'a str,
        method: &'a str,
        path: &'a str,
    },
    /// A request was refused for its credential (401 or 403).
    AuthFailed {
        denied: &'a Denied,
        client: SocketAddr,
        method: &'a str,
        path: &'a str,
    },
    /// The tokens file was read again and put in force.
    TokensReloaded { tokens: usize },
    /// The tokens file was read again and refused; the old tokens stay.
    ReloadFailed { error: &'a TokensError },
}

/// The kinds of event that share a rate window.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Allowed = 0,
    Failed = 1,
}

impl Kind {
    const ALL: [Kind; 2] = [Kind::Allowed, Kind::Failed];

    fn name(self) -> &'static str {
        match self {
            Kind::Allowed => "admin_allowed",
            Kind::Failed => "auth_failed",
        }
    }
}

impl Event<'_> {
    fn kind(&self) -> Option<Kind> {
        match self {
            Event::AdminAllowed { .. } => Some(Kind::Allowed),
            Event::AuthFailed { .. } => Some(Kind::Failed),
            Event::TokensReloaded { .. } | Event::ReloadFailed { .. } => None,
        }
    }
}

/// One kind's rate window.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Window {
    /// When the current window began; `None` before the first line.
    start: Option<Instant>,
    /// Lines written in the current window.
    written: u32,
    /// Lines dropped and not yet reported, across windows.
    suppressed: u64,
}

impl Window {
    /// Whether a line at `now` may be written: `Some` with the count of
    /// dropped lines it must report (handed over, so reported once), or
    /// `None` when it is dropped.
    fn admit(&mut self, now: Instant, per_second: u32) -> Option<u64> {
        if self.start.is_none_or(|s| now.duration_since(s) >= WINDOW) {
            self.start = Some(now);
            self.written = 0;
        }
        if self.written < per_second {
            self.written += 1;
            Some(std::mem::take(&mut self.suppressed))
        } else {
            self.suppressed = self.suppressed.saturating_add(1);
            None
        }
    }

    /// The dropped lines to report on their own, once the window in which
    /// they were dropped is over.
    fn overdue(&mut self, now: Instant) -> Option<u64> {
        let over = self.start.is_some_and(|s| now.duration_since(s) >= WINDOW);
        (over && self.suppressed > 0).then(|| std::mem::take(&mut self.suppressed))
    }
}

/// The audit log with its rate limit. Shared by reference between request
/// handlers (it is `Sync`).
#[derive(Debug)]
pub struct Audit {
    per_second: u32,
    windows: Mutex<[Window; 2]>,
}

impl Default for Audit {
    fn default() -> Audit {
        Audit::new(DEFAULT_AUDIT_LINES_PER_SECOND)
    }
}

impl Audit {
    /// An audit log that writes at most `per_second` lines of each limited
    /// kind a second (at least 1).
    pub fn new(per_second: u32) -> Audit {
        Audit {
            per_second: per_second.max(1),
            windows: Mutex::new([Window::default(); 2]),
        }
    }

    /// Writes `event` as it happened at `now`, unless the rate limit drops
    /// it; returns whether it was written.
    pub fn record(&self, event: &Event<'_>, now: Instant) -> bool {
        let suppressed = match event.kind() {
            None => 0,
            Some(kind) => {
                let mut windows = self.windows.lock().unwrap_or_else(PoisonError::into_inner);
                match windows[kind as usize].admit(now, self.per_second) {
                    Some(n) => n,
                    None => return false,
                }
            }
        };
        write(event, Some(suppressed).filter(|&n| n > 0));
        true
    }

    /// Reports, each in a line of its own, the lines dropped in windows
    /// that are over by `now` and not yet reported by a later line. Call
    /// it about once a second.
    pub fn flush(&self, now: Instant) {
        let overdue = {
            let mut windows = self.windows.lock().unwrap_or_else(PoisonError::into_inner);
            Kind::ALL.map(|kind| windows[kind as usize].overdue(now))
        };
        for (kind, count) in Kind::ALL.into_iter().zip(overdue) {
            if let Some(suppressed) = count {
                warn!(
                    target: "audit",
                    event = "suppressed",
                    kind = kind.name(),
                    suppressed,
                    "audit lines dropped by the rate limit"
                );
            }
        }
    }
}

fn write(event: &Event<'_>, suppressed: Option<u64>) {
    match *event {
        Event::AdminAllowed {
            token,
            method,
            path,
        } => info!(
            target: "audit",
            event = "admin_allowed",
            token,
            method,
            path = shorten(path),
            suppressed,
            "admin action allowed"
        ),
        Event::AuthFailed {
            denied,
            client,
            method,
            path,
        } => warn!(
            target: "audit",
            event = "auth_failed",
            reason = denied.reason(),
            status = denied.status(),
            token = denied.token_name(),
            client = %client,
            method,
            path = shorten(path),
            suppressed,
            "request refused for its credential"
        ),
        Event::TokensReloaded { tokens } => info!(
            target: "audit",
            event = "tokens_reloaded",
            tokens,
            "tokens file reloaded"
        ),
        Event::ReloadFailed { error } => warn!(
            target: "audit",
            event = "tokens_reload_failed",
            error = %error,
            "tokens file refused; the tokens in force stay as they were"
        ),
    }
}

/// `path` cut to at most [`MAX_PATH_SHOWN`] bytes, at a character boundary.
fn shorten(path: &str) -> &str {
    if path.len() <= MAX_PATH_SHOWN {
        return path;
    }
    let mut end = MAX_PATH_SHOWN;
    while !path.is_char_boundary(end) {
        end -= 1;
    }
    &path[..end]
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::auth::{Scope, Tokens};

    /// Log output gathered in memory.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// The log lines `f` writes on this thread.
    fn lines(f: impl FnOnce()) -> Vec<String> {
        let out = Captured::default();
        let writer = out.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .without_time()
            .with_max_level(tracing::Level::INFO)
            .finish();
        tracing::subscriber::with_default(subscriber, f);
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        text.lines().map(str::to_string).collect()
    }

    fn client() -> SocketAddr {
        "192.0.2.7:51000".parse().unwrap()
    }

    fn refused(audit: &Audit, denied: &Denied, now: Instant) -> bool {
        audit.record(
            &Event::AuthFailed {
                denied,
                client: client(),
                method: "POST",
                path: "/config",
            },
            now,
        )
    }

    #[test]
    fn the_window_admits_n_a_second_and_hands_over_the_dropped_count_once() {
        let t0 = Instant::now();
        let mut w = Window::default();
        assert_eq!(w.admit(t0, 2), Some(0));
        assert_eq!(w.admit(t0 + Duration::from_millis(10), 2), Some(0));
        assert_eq!(w.admit(t0 + Duration::from_millis(20), 2), None);
        assert_eq!(w.admit(t0 + Duration::from_millis(999), 2), None);
        assert_eq!(w.overdue(t0 + Duration::from_millis(999)), None);
        // The window is over a second after its first line, not its last.
        assert_eq!(w.admit(t0 + Duration::from_secs(1), 2), Some(2));
        assert_eq!(w.admit(t0 + Duration::from_millis(1001), 2), Some(0));
        assert_eq!(w.admit(t0 + Duration::from_millis(1002), 2), None);
        assert_eq!(w.overdue(t0 + Duration::from_millis(1500)), None);
        assert_eq!(w.overdue(t0 + Duration::from_secs(2)), Some(1));
        assert_eq!(w.overdue(t0 + Duration::from_secs(3)), None);
        assert_eq!(w.admit(t0 + Duration::from_secs(3), 2), Some(0));
    }

    #[test]
    fn at_most_n_lines_a_second_then_one_reports_what_was_dropped() {
        let audit = Audit::new(3);
        let t0 = Instant::now();
        let denied = Denied::Unknown;
        let mut written = Vec::new();
        let out = lines(|| {
            for i in 0..10u64 {
                written.push(refused(&audit, &denied, t0 + Duration::from_millis(i * 50)));
            }
            written.push(refused(&audit, &denied, t0 + Duration::from_secs(1)));
            written.push(refused(&audit, &denied, t0 + Duration::from_millis(1100)));
        });
        let mut expected = vec![true; 3];
        expected.extend([false; 7]);
        expected.extend([true, true]);
        assert_eq!(written, expected);
        assert_eq!(out.len(), 5, "{out:#?}");
        for line in &out {
            assert!(line.contains("WARN audit:"), "{line}");
            assert!(line.contains("reason=\"unknown\""), "{line}");
            assert!(line.contains("status=401"), "{line}");
            assert!(line.contains("client=192.0.2.7:51000"), "{line}");
        }
        assert!(
            out[..3].iter().all(|l| !l.contains("suppressed")),
            "{out:#?}"
        );
        assert!(out[3].contains("suppressed=7"), "{}", out[3]);
        assert!(!out[4].contains("suppressed"), "{}", out[4]);
    }

    #[test]
    fn flush_reports_dropped_lines_once_their_second_is_over() {
        let audit = Audit::new(1);
        let t0 = Instant::now();
        let out = lines(|| {
            for i in 0..5 {
                refused(&audit, &Denied::Malformed, t0 + Duration::from_millis(i));
            }
            audit.flush(t0 + Duration::from_millis(500));
            audit.flush(t0 + Duration::from_secs(1));
            audit.flush(t0 + Duration::from_secs(2));
            refused(&audit, &Denied::Malformed, t0 + Duration::from_secs(2));
        });
        assert_eq!(out.len(), 3, "{out:#?}");
        assert!(out[1].contains("event=\"suppressed\""), "{}", out[1]);
        assert!(out[1].contains("kind=\"auth_failed\""), "{}", out[1]);
        assert!(out[1].contains("suppressed=4"), "{}", out[1]);
        assert!(!out[2].contains("suppressed"), "{}", out[2]);
    }

    #[test]
    fn refusals_cannot_crowd_out_admin_actions_or_reloads() {
        let audit = Audit::new(2);
        let t0 = Instant::now();
        let refusal = Denied::Scope {
            name: "reader".into(),
            need: Scope::Admin,
        };
        let error = Tokens::parse("x").unwrap_err();
        let out = lines(|| {
            for _ in 0..50 {
                refused(&audit, &refusal, t0);
            }
            let admin = Event::AdminAllowed {
                token: "ops",
                method: "POST",
                path: "/config",
            };
            assert!(audit.record(&admin, t0));
            assert!(audit.record(&admin, t0));
            assert!(!audit.record(&admin, t0));
            for _ in 0..5 {
                assert!(audit.record(&Event::TokensReloaded { tokens: 3 }, t0));
                assert!(audit.record(&Event::ReloadFailed { error: &error }, t0));
            }
        });
        assert_eq!(out.len(), 2 + 2 + 10, "{out:#?}");
        assert!(out[0].contains("token=\"reader\"") && out[0].contains("status=403"));
        assert!(out[0].contains("reason=\"scope\""), "{}", out[0]);
        assert!(out[2].contains("INFO audit:"), "{}", out[2]);
        assert!(out[2].contains("event=\"admin_allowed\""), "{}", out[2]);
        assert!(out[2].contains("token=\"ops\""), "{}", out[2]);
        assert!(
            out[2].contains("method=\"POST\" path=\"/config\""),
            "{}",
            out[2]
        );
        assert!(
            out[4].contains("event=\"tokens_reloaded\" tokens=3"),
            "{}",
            out[4]
        );
        assert!(
            out[5].contains("event=\"tokens_reload_failed\""),
            "{}",
            out[5]
        );
        assert!(out[5].contains("line 1"), "{}", out[5]);
    }

    #[test]
    fn long_paths_are_cut_at_a_character_boundary() {
        let long = format!("/counter/{}", "é".repeat(300));
        let cut = shorten(&long);
        assert!(cut.len() <= MAX_PATH_SHOWN && cut.len() >= MAX_PATH_SHOWN - 1);
        assert!(long.starts_with(cut));
        assert_eq!(shorten("/config"), "/config");
    }
}
