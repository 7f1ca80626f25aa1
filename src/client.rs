//! The command-line client: `tally inc | get | status | config | ls` send one
//! HTTP request to a node and print its answer for people or, with `--json`,
//! for scripts.
//!
//! Exit codes: 0 success; 1 the node answered an error (or an answer that
//! could not be understood); 2 the node could not be reached within the
//! deadline (clap also uses 2 for usage errors); 3 a consistent read could
//! not hear from every node (the unreachable nodes and the best known value
//! are printed on stderr).
//!
//! Nothing here panics on any input or answer; every request has a deadline.

use std::error::Error as _;
use std::fmt::Write as _;
use std::io::Write as _;
use std::process::ExitCode;
use std::time::Duration;

use axum::body::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{CONTENT_TYPE, HeaderName, HeaderValue};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Exit code when the node answered an error.
pub const EXIT_FAILED: u8 = 1;
/// Exit code when the node could not be reached.
pub const EXIT_UNREACHABLE: u8 = 2;
/// Exit code when a consistent read could not hear from every node.
pub const EXIT_INCOMPLETE: u8 = 3;

/// Deadline of a whole request when `--timeout` is not given.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(15);
/// Default node address of the client.
pub const DEFAULT_NODE: &str = "http://127.0.0.1:7777";
/// Header carrying the cluster secret (same as the nodes use between them).
pub const SECRET_HEADER: &str = "x-tally-secret";
/// Header making a retried increment apply once.
pub const IDEMPOTENCY_HEADER: &str = "idempotency-key";
/// Largest answer the client reads.
const MAX_ANSWER: usize = 64 * 1024 * 1024;

/// Everything but RFC 3986 unreserved characters (`A-Z a-z 0-9 - . _ ~`).
const COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');
/// Used for the names `.` and `..`, which a proxy could otherwise normalise away.
const COMPONENT_AND_DOT: &AsciiSet = &COMPONENT.add(b'.');

/// How to reach the node, shared by every client command.
#[derive(Clone, Debug)]
pub struct Conn {
    /// Base URL without a trailing slash, e.g. `http://127.0.0.1:7777`.
    pub node: String,
    pub json: bool,
    pub secret: Option<String>,
    /// Deadline of the whole request; `None` means [`DEFAULT_TIMEOUT`].
    pub timeout: Option<Duration>,
}

/// One client command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    Inc {
        name: String,
        amount: u64,
        idempotency_key: Option<String>,
    },
    Get {
        name: String,
        consistent: bool,
    },
    Status,
    Config {
        actors: Vec<String>,
        /// Leavers whose hand-off is given up.
        forget: Vec<String>,
    },
    Ls {
        prefix: Option<String>,
        limit: Option<u64>,
        after: Option<String>,
    },
}

/// What to print, and how to exit.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    pub stdout: String,
    pub stderr: String,
    pub code: u8,
}

impl Outcome {
    fn ok(stdout: String) -> Self {
        Outcome {
            stdout,
            ..Outcome::default()
        }
    }

    fn fail(code: u8, message: impl AsRef<str>) -> Self {
        Outcome {
            stdout: String::new(),
            stderr: format!("tally: {}\n", message.as_ref()),
            code,
        }
    }
}

/// Runs one client command to completion and returns the process exit code.
pub fn run(action: Action, conn: Conn) -> ExitCode {
    let outcome = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt.block_on(execute(&action, &conn)),
        Err(e) => Outcome::fail(EXIT_FAILED, format!("cannot start the runtime: {e}")),
    };
    // Write errors (a closed pipe, say) are ignored rather than panicking.
    if !outcome.stdout.is_empty() {
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(outcome.stdout.as_bytes());
        let _ = out.flush();
    }
    if !outcome.stderr.is_empty() {
        let _ = std::io::stderr().write_all(outcome.stderr.as_bytes());
    }
    ExitCode::from(outcome.code)
}

/// Sends the request of `action` and turns the answer into an [`Outcome`].
pub async fn execute(action: &Action, conn: &Conn) -> Outcome {
    let timeout = conn.timeout.unwrap_or(DEFAULT_TIMEOUT);
    let mut req = Req {
        method: hyper::Method::GET,
        path: String::new(),
        headers: Vec::new(),
        body: Vec::new(),
        content_type: "text/plain; charset=utf-8",
    };
    if let Some(secret) = &conn.secret {
        req.headers.push((SECRET_HEADER, secret.clone()));
    }
    match action {
        Action::Inc {
            name,
            amount,
            idempotency_key,
        } => {
            req.method = hyper::Method::POST;
            req.path = format!("/counter/{}", encode_name(name));
            req.body = amount.to_string().into_bytes();
            if let Some(key) = idempotency_key {
                req.headers.push((IDEMPOTENCY_HEADER, key.clone()));
            }
        }
        Action::Get { name, consistent } => {
            req.path = if *consistent {
                let mut p = format!("/counter/{}/consistent_value", encode_name(name));
                if let Some(t) = conn.timeout {
                    let _ = write!(p, "?timeout={}ms", server_deadline(t).as_millis());
                }
                p
            } else {
                format!("/counter/{}/value", encode_name(name))
            };
        }
        Action::Status => req.path = "/status".into(),
        Action::Config { actors, forget } => {
            req.method = hyper::Method::POST;
            req.path = "/config".into();
            let mut body = serde_json::json!({ "actors": actors });
            if !forget.is_empty() {
                body["forget"] = serde_json::json!(forget);
            }
            req.body = body.to_string().into_bytes();
            req.content_type = "application/json";
        }
        Action::Ls {
            prefix,
            limit,
            after,
        } => {
            let mut query = Vec::new();
            if let Some(p) = prefix.as_deref().filter(|p| !p.is_empty()) {
                query.push(format!("prefix={}", utf8_percent_encode(p, COMPONENT)));
            }
            if let Some(a) = after {
                query.push(format!("after={}", utf8_percent_encode(a, COMPONENT)));
            }
            if let Some(l) = limit {
                query.push(format!("limit={l}"));
            }
            req.path = "/counters".into();
            if !query.is_empty() {
                req.path = format!("/counters?{}", query.join("&"));
            }
        }
    }
    let url = format!("{}{}", conn.node, req.path);
    if matches!(action, Action::Config { .. }) {
        return post_config_until_stored(action, conn, &req, &url, timeout).await;
    }
    let answer = match send(&req, &url, timeout).await {
        Ok(a) => a,
        Err(SendError::Invalid(reason)) => return Outcome::fail(EXIT_FAILED, reason),
        Err(SendError::Unreachable { reason, maybe_sent }) => {
            let mut message = format!("cannot reach {}: {reason}", conn.node);
            if maybe_sent && matches!(action, Action::Inc { .. }) {
                message.push_str(
                    "; the increment may or may not have been applied \
                     (retry with the same --idempotency-key to apply it once)",
                );
            }
            return Outcome::fail(EXIT_UNREACHABLE, message);
        }
    };
    interpret(action, conn.json, &answer)
}

/// Pause between two posts of the same config while waiting for the cluster.
const CONFIG_POLL: Duration = Duration::from_millis(500);

/// `tally config`: posts the config, then posts it again (a no-op that
/// reports progress) until every node holds it and every node that left has
/// handed off, or the deadline passes. Exits 3 when something is still
/// pending then: the config is applied and keeps spreading by itself.
async fn post_config_until_stored(
    action: &Action,
    conn: &Conn,
    req: &Req,
    url: &str,
    timeout: Duration,
) -> Outcome {
    let deadline = tokio::time::Instant::now() + timeout;
    // Later posts are no-ops: what changed is what the first one did.
    let mut first_changed = None;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let mut answer = match send(req, url, left.max(Duration::from_millis(1))).await {
            Ok(a) => a,
            Err(SendError::Invalid(reason)) => return Outcome::fail(EXIT_FAILED, reason),
            Err(SendError::Unreachable { reason, .. }) => {
                return Outcome::fail(
                    EXIT_UNREACHABLE,
                    format!("cannot reach {}: {reason}", conn.node),
                );
            }
        };
        let mut waiting = Vec::new();
        if let Ok(mut v @ Value::Object(_)) = serde_json::from_str::<Value>(&answer.body) {
            let changed = *first_changed.get_or_insert(v["changed"] == true);
            if changed && v["changed"] == false {
                v["changed"] = Value::Bool(true);
                answer.body = v.to_string();
            }
            waiting = config_waiting(&v);
        }
        let mut outcome = interpret(action, conn.json, &answer);
        if outcome.code != 0 {
            return outcome;
        }
        if waiting.is_empty() {
            return outcome;
        }
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if left <= CONFIG_POLL {
            outcome.code = EXIT_INCOMPLETE;
            outcome.stderr = format!(
                "tally: the config is applied and keeps spreading, but within {timeout:?}: {}\n",
                waiting.join("; ")
            );
            return outcome;
        }
        tokio::time::sleep(CONFIG_POLL).await;
    }
}

/// What a `POST /config` answer says is still in progress, for people.
fn config_waiting(v: &Value) -> Vec<String> {
    let mut out = Vec::new();
    let pending: Vec<&str> = v["pending"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    if !pending.is_empty() {
        out.push(format!("not stored yet by {}", pending.join(", ")));
    }
    let handing_off: Vec<&str> = v["leaving"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|l| l["handed_off"] == false)
        .filter_map(|l| l["actor"].as_str())
        .collect();
    if !handing_off.is_empty() {
        out.push(format!(
            "still handing off what they hold: {}",
            handing_off.join(", ")
        ));
    }
    out
}

/// The `?timeout=` asked of the node, a little shorter than the client's own
/// deadline so that the node's 503 (naming the silent nodes) arrives in time.
pub fn server_deadline(client: Duration) -> Duration {
    let margin = (client / 5).min(Duration::from_secs(1));
    (client - margin).max(Duration::from_millis(1))
}

/// Turns an answer into what to print.
pub fn interpret(action: &Action, json: bool, answer: &Answer) -> Outcome {
    if !(200..300).contains(&answer.status) {
        return error_outcome(action, json, answer);
    }
    match action {
        Action::Inc { name, .. } | Action::Get { name, .. } => {
            let text = answer.body.trim();
            let value = match text.parse::<u128>() {
                Ok(v) if text.bytes().all(|b| b.is_ascii_digit()) => v,
                _ => {
                    return Outcome::fail(
                        EXIT_FAILED,
                        format!(
                            "unexpected answer (not a decimal value): {}",
                            excerpt(&answer.body)
                        ),
                    );
                }
            };
            if json {
                #[derive(Serialize)]
                struct Named<'a> {
                    name: &'a str,
                    value: u128,
                }
                match serde_json::to_string(&Named { name, value }) {
                    Ok(s) => Outcome::ok(s + "\n"),
                    Err(e) => Outcome::fail(EXIT_FAILED, format!("cannot encode JSON: {e}")),
                }
            } else {
                Outcome::ok(format!("{value}\n"))
            }
        }
        Action::Status | Action::Config { .. } => {
            let value: Value = match serde_json::from_str(&answer.body) {
                Ok(v @ Value::Object(_)) => v,
                _ => {
                    return Outcome::fail(
                        EXIT_FAILED,
                        format!(
                            "unexpected answer (not a JSON object): {}",
                            excerpt(&answer.body)
                        ),
                    );
                }
            };
            if json {
                Outcome::ok(format!("{}\n", answer.body.trim()))
            } else if matches!(action, Action::Status) {
                Outcome::ok(format_status(&value))
            } else {
                Outcome::ok(format_config(&value))
            }
        }
        Action::Ls { .. } => {
            let page: Page = match serde_json::from_str(&answer.body) {
                Ok(p) => p,
                Err(e) => {
                    return Outcome::fail(
                        EXIT_FAILED,
                        format!(
                            "unexpected answer to a listing ({e}): {}",
                            excerpt(&answer.body)
                        ),
                    );
                }
            };
            if json {
                return Outcome::ok(format!("{}\n", answer.body.trim()));
            }
            let mut out = Outcome::ok(format_page(&page));
            if let Some(next) = &page.next {
                out.stderr = format!(
                    "tally: more counters follow; continue with --after {}\n",
                    shell_quote(next)
                );
            }
            out
        }
    }
}

fn error_outcome(action: &Action, json: bool, answer: &Answer) -> Outcome {
    let parsed: Option<Value> = serde_json::from_str(&answer.body).ok();
    let stdout = match &parsed {
        Some(_) if json => format!("{}\n", answer.body.trim()),
        _ => String::new(),
    };
    let message = parsed
        .as_ref()
        .and_then(|v| v.get("error"))
        .and_then(Value::as_str)
        .map(str::to_string)
        .unwrap_or_else(|| {
            let text = excerpt(&answer.body);
            if text.is_empty() {
                "(no message)".to_string()
            } else {
                text
            }
        });
    let status = status_line(answer.status);
    let mut out = Outcome {
        stdout,
        stderr: format!("tally: {status}: {message}\n"),
        code: EXIT_FAILED,
    };
    match action {
        Action::Get {
            consistent: true, ..
        } if answer.status == 503 => {
            let unreachable = parsed.as_ref().and_then(|v| v.get("unreachable"));
            let best = parsed.as_ref().and_then(|v| v.get("best_known_value"));
            if let (Some(unreachable), Some(best)) = (unreachable, best) {
                // An empty list (a node without a config) has nothing to name.
                if let Some(list) = unreachable.as_array().filter(|l| !l.is_empty()) {
                    let nodes = list.iter().map(show).collect::<Vec<_>>().join(", ");
                    let _ = writeln!(out.stderr, "unreachable: {nodes}");
                }
                let _ = writeln!(
                    out.stderr,
                    "best known value: {} (may miss increments held only by those nodes)",
                    show(best)
                );
                out.code = EXIT_INCOMPLETE;
            }
        }
        Action::Ls { .. } if answer.status == 404 => {
            out.stderr = format!(
                "tally: {status}: this node does not list counters (GET /counters is not a \
                 route there; it runs an older tally): {message}\n"
            );
        }
        _ if answer.status == 401 || answer.status == 403 => {
            out.stderr
                .push_str("tally: pass the cluster secret with --secret or TALLY_SECRET\n");
        }
        _ => {}
    }
    out
}

/// One page of `GET /counters`.
#[derive(Debug, Deserialize, PartialEq, Eq)]
pub struct Page {
    pub counters: Vec<Listed>,
    #[serde(default)]
    pub next: Option<String>,
}

#[derive(Debug, Deserialize, PartialEq, Eq)]
pub struct Listed {
    pub name: String,
    pub value: u128,
}

fn format_page(page: &Page) -> String {
    let names: Vec<String> = page.counters.iter().map(|c| printable(&c.name)).collect();
    let width = names
        .iter()
        .map(|n| n.chars().count())
        .max()
        .unwrap_or(0)
        .min(48);
    let mut out = String::new();
    for (name, c) in names.iter().zip(&page.counters) {
        let _ = writeln!(out, "{name:<width$}  {}", c.value);
    }
    out
}

/// Renders the JSON of `POST /config` for people.
pub fn format_config(v: &Value) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "changed: {}", show(field(v, "changed")));
    let mut version = show(field(v, "version"));
    if let Some(origin) = v.get("origin").filter(|o| !o.is_null()) {
        let _ = write!(version, " (from node {})", show(origin));
    }
    let _ = writeln!(out, "version: {version}");
    let _ = writeln!(out, "actors:  {}", list(field(v, "actors")));
    let me = match v.get("self") {
        Some(Value::Null) | None => "not identified yet".to_string(),
        Some(s) => show(s),
    };
    let _ = writeln!(out, "self:    {me}");
    if let Some(stored) = v.get("stored").filter(|s| s.is_array()) {
        let _ = writeln!(out, "stored:  {}", list(stored));
    }
    if let Some(pending) = v["pending"].as_array().filter(|p| !p.is_empty()) {
        let _ = writeln!(out, "pending: {}", list(&Value::Array(pending.clone())));
    }
    for leaver in v["leaving"].as_array().into_iter().flatten() {
        let state = if leaver["handed_off"] == true {
            "handed off"
        } else {
            "handing off"
        };
        let _ = writeln!(out, "leaving: {} ({state})", show(&leaver["actor"]));
    }
    out
}

/// Renders the JSON of `GET /status` for people; fields a node does not
/// send show as `-`.
pub fn format_status(v: &Value) -> String {
    let mut out = String::new();
    let mut head = format!("node {}", show(field(v, "id")));
    if let Some(inc) = v.get("incarnation") {
        let _ = write!(head, ", incarnation {}", show(inc));
    }
    if let Some(ver) = v.get("version") {
        let _ = write!(head, ", tally {}", show(ver));
    }
    if let Some(up) = v.get("uptime_secs").and_then(Value::as_u64) {
        let _ = write!(head, ", up {}", human_duration(Duration::from_secs(up)));
    }
    let _ = writeln!(out, "{head}");
    let _ = writeln!(out, "listen:  {}", show(field(v, "listen")));
    let me = match v.get("self") {
        Some(Value::Null) | None => "not identified yet".to_string(),
        Some(s) => show(s),
    };
    let _ = writeln!(out, "self:    {me}");
    let config = field(v, "config");
    let actors = config.get("actors").and_then(Value::as_array);
    match actors {
        Some(a) if !a.is_empty() => {
            let _ = writeln!(
                out,
                "config:  version {} (from node {}), {} actor{}: {}",
                show(field(config, "version")),
                show(field(config, "origin")),
                a.len(),
                if a.len() == 1 { "" } else { "s" },
                list(field(config, "actors"))
            );
        }
        _ => {
            let _ = writeln!(
                out,
                "config:  none yet (version {}): increments and local reads only; \
                 post one with `tally config`",
                show(field(config, "version"))
            );
        }
    }
    match v.get("peers").and_then(Value::as_array) {
        Some(peers) if !peers.is_empty() => {
            let _ = writeln!(out, "peers:");
            let header = [
                "ACTOR",
                "NODE",
                "REACHABLE",
                "LAST CONTACT",
                "LAG",
                "PENDING PUSHES",
            ];
            let rows: Vec<[String; 6]> = peers
                .iter()
                .map(|p| {
                    let reachable = match p.get("reachable") {
                        Some(Value::Bool(true)) => "yes".to_string(),
                        Some(Value::Bool(false)) => "no".to_string(),
                        Some(Value::Null) | None => "unknown".to_string(),
                        Some(other) => show(other),
                    };
                    let contact = match p.get("last_contact_ms_ago").and_then(Value::as_u64) {
                        Some(ms) => format!("{} ago", human_duration(Duration::from_millis(ms))),
                        None => "never".to_string(),
                    };
                    [
                        show(field(p, "actor")),
                        show(field(p, "node")),
                        reachable,
                        contact,
                        show(field(p, "lag_changes")),
                        show(field(p, "pending_push")),
                    ]
                })
                .collect();
            let mut widths = header.map(str::len);
            for row in &rows {
                for (w, cell) in widths.iter_mut().zip(row) {
                    *w = (*w).max(cell.chars().count());
                }
            }
            let render = |cells: &[&str]| {
                let mut line = String::from(" ");
                for (cell, w) in cells.iter().zip(widths) {
                    let _ = write!(line, " {cell:<w$}");
                }
                line.trim_end().to_string()
            };
            let _ = writeln!(out, "{}", render(&header));
            for (row, p) in rows.iter().zip(peers) {
                let cells: Vec<&str> = row.iter().map(String::as_str).collect();
                let _ = writeln!(out, "{}", render(&cells));
                let failing = p.get("reachable") != Some(&Value::Bool(true));
                if let Some(err) = p.get("last_error").and_then(Value::as_str)
                    && failing
                {
                    let _ = writeln!(out, "    last error: {}", printable(err));
                }
            }
        }
        _ => {
            let _ = writeln!(out, "peers:   none");
        }
    }
    let _ = writeln!(out, "names:   {}", show(field(v, "names")));
    if let Some(keys) = v.get("idempotency_keys").filter(|k| !k.is_null()) {
        let _ = writeln!(out, "idempotency keys remembered: {}", show(keys));
    }
    let dir = match v.get("data_dir") {
        Some(Value::Null) | None => "in memory".to_string(),
        Some(d) => show(d),
    };
    match v.get("data_bytes").and_then(Value::as_u64) {
        Some(bytes) => {
            let _ = writeln!(out, "data:    {dir} ({})", human_bytes(bytes));
        }
        None => {
            let _ = writeln!(out, "data:    {dir}");
        }
    }
    out
}

static NULL: Value = Value::Null;

fn field<'a>(v: &'a Value, key: &str) -> &'a Value {
    v.get(key).unwrap_or(&NULL)
}

/// A JSON value for people: strings without quotes, null as `-`.
fn show(v: &Value) -> String {
    match v {
        Value::Null => "-".to_string(),
        Value::String(s) => printable(s),
        other => other.to_string(),
    }
}

fn list(v: &Value) -> String {
    match v.as_array() {
        Some(items) if items.is_empty() => "none".to_string(),
        Some(items) => items.iter().map(show).collect::<Vec<_>>().join(", "),
        None => show(v),
    }
}

/// Escapes control characters so a name cannot rearrange the terminal.
fn printable(s: &str) -> String {
    if s.chars().any(char::is_control) {
        s.chars()
            .map(|c| {
                if c.is_control() {
                    c.escape_default().to_string()
                } else {
                    c.to_string()
                }
            })
            .collect()
    } else {
        s.to_string()
    }
}

fn shell_quote(s: &str) -> String {
    let safe = !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~/:@%+=,".contains(&b));
    if safe {
        s.to_string()
    } else {
        format!("'{}'", printable(s).replace('\'', r"'\''"))
    }
}

fn excerpt(body: &str) -> String {
    let t = body.trim();
    let cut: String = t.chars().take(300).collect();
    let mut cut = printable(&cut);
    if t.chars().count() > 300 {
        cut.push('…');
    }
    cut
}

fn status_line(code: u16) -> String {
    match hyper::StatusCode::from_u16(code)
        .ok()
        .and_then(|s| s.canonical_reason())
    {
        Some(reason) => format!("{code} {reason}"),
        None => code.to_string(),
    }
}

fn human_duration(d: Duration) -> String {
    let ms = d.as_millis();
    let s = d.as_secs();
    if ms < 1000 {
        format!("{ms}ms")
    } else if s < 60 && d.subsec_millis() == 0 {
        format!("{s}s")
    } else if s < 60 {
        format!("{:.1}s", d.as_secs_f64())
    } else if s < 3600 {
        format!("{}m {}s", s / 60, s % 60)
    } else if s < 86400 {
        format!("{}h {}m", s / 3600, (s % 3600) / 60)
    } else {
        format!("{}d {}h", s / 86400, (s % 86400) / 3600)
    }
}

fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64;
    let mut unit = "B";
    for u in UNITS {
        if v < 1024.0 {
            break;
        }
        v /= 1024.0;
        unit = u;
    }
    format!("{v:.1} {unit}")
}

/// Percent-encodes a counter name into one path segment.
pub fn encode_name(name: &str) -> String {
    let set = if name == "." || name == ".." {
        COMPONENT_AND_DOT
    } else {
        COMPONENT
    };
    utf8_percent_encode(name, set).to_string()
}

/// Checks a counter name the way nodes do, before anything is sent.
pub fn parse_name(raw: &str) -> Result<String, String> {
    crate::input::validate_name(raw).map_err(|e| e.to_string())?;
    Ok(raw.to_string())
}

/// Checks an idempotency key is a valid, non-empty header value.
pub fn parse_idempotency_key(raw: &str) -> Result<String, String> {
    // The node's own rule: a key the client accepts is a key the node accepts.
    crate::input::validate_key(raw).map_err(|e| e.to_string())?;
    Ok(raw.to_string())
}

/// Normalises `--node`: `http://host:port[/prefix]`, `host:port`, `[v6]:port`
/// or a bare host (port 7777 implied, as for actors; an `http://` URL
/// without a port means port 80). Returns the base URL without a trailing slash.
pub fn parse_node(raw: &str) -> Result<String, String> {
    let raw = raw.trim();
    if raw.is_empty() {
        return Err("the node address is empty".into());
    }
    let (with_scheme, rest) = match raw.split_once("://") {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("http") => (true, rest),
        Some((scheme, _)) => {
            return Err(format!("only http:// nodes are supported, not {scheme}://"));
        }
        None => (false, raw),
    };
    let (authority, path) = match rest.find(['/', '?', '#']) {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    if path.contains(['?', '#']) {
        return Err(format!("{raw:?}: a node address has no query or fragment"));
    }
    if authority.is_empty() {
        return Err(format!("{raw:?} has no host"));
    }
    if authority.contains('@') {
        return Err(format!(
            "{raw:?}: user names in the node address are not supported"
        ));
    }
    let has_port = if authority.starts_with('[') {
        if !authority.contains(']') {
            return Err(format!("{raw:?}: unclosed '[' in the IPv6 address"));
        }
        authority.contains("]:")
    } else {
        match authority.matches(':').count() {
            0 => false,
            1 => true,
            _ => {
                return Err(format!(
                    "{raw:?}: write an IPv6 address in brackets, e.g. [::1]:7777"
                ));
            }
        }
    };
    let authority = if has_port || with_scheme {
        authority.to_string()
    } else {
        format!("{authority}:7777")
    };
    let base = format!("http://{authority}{}", path.trim_end_matches('/'));
    let uri: hyper::Uri = base
        .parse()
        .map_err(|e| format!("{raw:?} is not a valid node address: {e}"))?;
    if uri.host().is_none_or(str::is_empty) {
        return Err(format!("{raw:?} has no host"));
    }
    if has_port {
        match uri.port_u16() {
            Some(p) if p != 0 => {}
            _ => return Err(format!("{raw:?}: the port must be 1 to 65535")),
        }
    }
    Ok(base)
}

// ---------------------------------------------------------------------------
// HTTP

/// A request to a node, relative to its base URL.
#[derive(Debug)]
pub struct Req {
    pub method: hyper::Method,
    pub path: String,
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
    pub content_type: &'static str,
}

/// A node's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    pub body: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendError {
    /// The request could not be built, or the answer was too large.
    Invalid(String),
    /// No answer: the node is down, unreachable or too slow. `maybe_sent`
    /// when the request may have reached it.
    Unreachable { reason: String, maybe_sent: bool },
}

/// Sends one request to `url` and reads the whole answer, all within `timeout`.
pub async fn send(req: &Req, url: &str, timeout: Duration) -> Result<Answer, SendError> {
    let client: Client<_, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let mut builder = hyper::Request::builder()
        .method(req.method.clone())
        .uri(url)
        .header(CONTENT_TYPE, req.content_type);
    for (name, value) in &req.headers {
        let value = HeaderValue::from_str(value)
            .map_err(|_| SendError::Invalid(format!("{name} is not a valid header value")))?;
        builder = builder.header(HeaderName::from_static(name), value);
    }
    let request = builder
        .body(Full::new(Bytes::from(req.body.clone())))
        .map_err(|e| SendError::Invalid(format!("cannot build a request for {url}: {e}")))?;
    let exchange = async {
        let resp = client.request(request).await.map_err(|e| {
            let maybe_sent = !e.is_connect();
            SendError::Unreachable {
                reason: error_chain(&e),
                maybe_sent,
            }
        })?;
        let status = resp.status().as_u16();
        let bytes = Limited::new(resp.into_body(), MAX_ANSWER)
            .collect()
            .await
            .map_err(|e| {
                if e.is::<http_body_util::LengthLimitError>() {
                    SendError::Invalid(format!("the answer is larger than {MAX_ANSWER} bytes"))
                } else {
                    SendError::Unreachable {
                        reason: format!("reading the answer: {e}"),
                        maybe_sent: true,
                    }
                }
            })?
            .to_bytes();
        Ok(Answer {
            status,
            body: String::from_utf8_lossy(&bytes).into_owned(),
        })
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| SendError::Unreachable {
            reason: format!("no answer within {timeout:?}"),
            maybe_sent: true,
        })?
}

/// The causes of an error, most specific last, without hyper-util's generic
/// "client error (Connect)" prefix when there is a cause.
fn error_chain(e: &hyper_util::client::legacy::Error) -> String {
    let mut parts = Vec::new();
    let mut source = e.source();
    while let Some(s) = source {
        parts.push(s.to_string());
        source = s.source();
    }
    if parts.is_empty() {
        e.to_string()
    } else {
        parts.join(": ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_encoded_into_one_segment() {
        assert_eq!(encode_name("visits"), "visits");
        assert_eq!(encode_name("a/b"), "a%2Fb");
        assert_eq!(encode_name("a b?c#d%e"), "a%20b%3Fc%23d%25e");
        assert_eq!(encode_name("A-z_0.9~"), "A-z_0.9~");
        assert_eq!(encode_name("é"), "%C3%A9");
        assert_eq!(encode_name(".."), "%2E%2E");
        assert_eq!(encode_name("."), "%2E");
    }

    #[test]
    fn node_addresses_normalise() {
        let ok = [
            ("http://127.0.0.1:7777", "http://127.0.0.1:7777"),
            ("http://127.0.0.1:7777/", "http://127.0.0.1:7777"),
            ("127.0.0.1:7701", "http://127.0.0.1:7701"),
            ("localhost", "http://localhost:7777"),
            ("10.0.0.1", "http://10.0.0.1:7777"),
            ("[::1]:7777", "http://[::1]:7777"),
            ("[::1]", "http://[::1]:7777"),
            ("HTTP://example.com", "http://example.com"),
            ("http://proxy:80/tally/", "http://proxy:80/tally"),
        ];
        for (raw, want) in ok {
            assert_eq!(parse_node(raw).as_deref(), Ok(want), "{raw}");
        }
        for bad in [
            "",
            "https://x:1",
            "ftp://x",
            "::1",
            "http://",
            "x:0",
            "x:99999",
            "x:port",
            "u@x:1",
            "x:1?q",
            "[::1",
            "a b:1",
        ] {
            assert!(parse_node(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn server_deadline_leaves_a_margin() {
        assert_eq!(
            server_deadline(Duration::from_secs(2)),
            Duration::from_millis(1600)
        );
        assert_eq!(
            server_deadline(Duration::from_secs(15)),
            Duration::from_secs(14)
        );
        assert!(server_deadline(Duration::from_nanos(1)) > Duration::ZERO);
    }

    fn answer(status: u16, body: &str) -> Answer {
        Answer {
            status,
            body: body.into(),
        }
    }

    fn get(consistent: bool) -> Action {
        Action::Get {
            name: "a\"b".into(),
            consistent,
        }
    }

    #[test]
    fn values_print_plain_or_as_json() {
        assert_eq!(
            interpret(&get(false), false, &answer(200, "42")).stdout,
            "42\n"
        );
        let json = interpret(&get(false), true, &answer(200, "42")).stdout;
        let v: Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v, serde_json::json!({"name": "a\"b", "value": 42}));
        let big = u128::MAX.to_string();
        let out = interpret(&get(false), true, &answer(200, &big));
        assert!(out.stdout.contains(&big), "{out:?}");
        for bad in [
            "",
            "-1",
            "1.5",
            "x",
            "+3",
            "99999999999999999999999999999999999999999",
        ] {
            let out = interpret(&get(false), false, &answer(200, bad));
            assert_eq!(out.code, EXIT_FAILED, "{bad:?}");
            assert!(out.stdout.is_empty());
        }
    }

    #[test]
    fn errors_name_status_and_message() {
        let out = interpret(&get(false), false, &answer(400, r#"{"error":"bad name"}"#));
        assert_eq!(out.code, 1);
        assert_eq!(out.stderr, "tally: 400 Bad Request: bad name\n");
        let out = interpret(&get(false), false, &answer(502, "<html>oops</html>"));
        assert_eq!(out.stderr, "tally: 502 Bad Gateway: <html>oops</html>\n");
        let out = interpret(&Action::Status, false, &answer(599, ""));
        assert_eq!(out.stderr, "tally: 599: (no message)\n");
        let out = interpret(
            &Action::Config {
                actors: vec![],
                forget: vec![],
            },
            false,
            &answer(401, r#"{"error":"needs secret"}"#),
        );
        assert!(out.stderr.contains("--secret"), "{out:?}");
    }

    #[test]
    fn incomplete_consistent_reads_exit_3() {
        let body = r#"{"error":"could not hear","unreachable":["10.0.0.2:7777","10.0.0.3:7777"],"best_known_value":7}"#;
        let out = interpret(&get(true), false, &answer(503, body));
        assert_eq!(out.code, EXIT_INCOMPLETE);
        assert!(out.stdout.is_empty());
        assert!(
            out.stderr.contains("10.0.0.2:7777, 10.0.0.3:7777"),
            "{out:?}"
        );
        assert!(out.stderr.contains("best known value: 7"), "{out:?}");
        let no_config = r#"{"error":"no config","unreachable":[],"best_known_value":7}"#;
        let out = interpret(&get(true), false, &answer(503, no_config));
        assert_eq!(out.code, EXIT_INCOMPLETE);
        assert!(!out.stderr.contains("unreachable"), "{out:?}");
        let out = interpret(&get(true), true, &answer(503, body));
        assert_eq!(out.stdout.trim(), body);
        // A 503 without the list (a node shutting down) is an ordinary error.
        let out = interpret(
            &get(true),
            false,
            &answer(503, r#"{"error":"shutting down"}"#),
        );
        assert_eq!(out.code, EXIT_FAILED);
        let out = interpret(&get(false), false, &answer(503, body));
        assert_eq!(out.code, EXIT_FAILED);
    }

    #[test]
    fn listings_print_and_explain_old_nodes() {
        let ls = Action::Ls {
            prefix: None,
            limit: None,
            after: None,
        };
        let body =
            r#"{"counters":[{"name":"a","value":1},{"name":"bbb\n","value":22}],"next":"bbb\n"}"#;
        let out = interpret(&ls, false, &answer(200, body));
        assert_eq!(out.code, 0);
        assert_eq!(out.stdout, "a      1\nbbb\\n  22\n");
        assert!(out.stderr.contains("--after 'bbb\\n'"), "{out:?}");
        let out = interpret(&ls, false, &answer(200, r#"{"counters":[],"next":null}"#));
        assert_eq!((out.stdout.as_str(), out.stderr.as_str()), ("", ""));
        let out = interpret(
            &ls,
            false,
            &answer(404, r#"{"error":"no route /counters"}"#),
        );
        assert_eq!(out.code, 1);
        assert!(out.stderr.contains("does not list counters"), "{out:?}");
        let out = interpret(&ls, false, &answer(200, "[]"));
        assert_eq!(out.code, 1);
    }

    #[test]
    fn status_and_config_render_any_json() {
        let status = serde_json::json!({
            "id": 3, "incarnation": "00ff", "version": "0.1.0", "listen": "0.0.0.0:7777",
            "uptime_secs": 75, "self": "10.0.0.3:7777",
            "config": {"version": 2, "origin": 1, "actors": ["10.0.0.1:7777", "10.0.0.3:7777"]},
            "peers": [{"actor": "10.0.0.1:7777", "reachable": false, "last_contact_ms_ago": 1500,
                       "last_error": "refused", "node": null, "lag_changes": 4, "pending_push": 2}],
            "names": 12, "data_dir": "/d", "data_bytes": 2048
        });
        let text = format_status(&status);
        for want in [
            "node 3",
            "up 1m 15s",
            "10.0.0.3:7777",
            "version 2 (from node 1), 2 actors",
            "REACHABLE",
            "no",
            "1.5s ago",
            "last error: refused",
            "names:   12",
            "/d (2.0 KiB)",
        ] {
            assert!(text.contains(want), "{want:?} missing in\n{text}");
        }
        // Missing or oddly typed fields never panic.
        for odd in [
            serde_json::json!({}),
            serde_json::json!({"peers": [1, null, {}], "config": 5}),
        ] {
            assert!(format_status(&odd).starts_with("node -"));
            assert!(format_config(&odd).contains("changed: -"));
        }
        let cfg = serde_json::json!({"changed": true, "version": 1, "origin": 1,
                                     "actors": ["127.0.0.1:7777"], "self": null});
        let text = format_config(&cfg);
        assert!(text.contains("changed: true"), "{text}");
        assert!(text.contains("not identified yet"), "{text}");
    }

    #[test]
    fn idempotency_keys_are_header_safe() {
        assert!(parse_idempotency_key("abc-123").is_ok());
        for bad in ["", "a b", "é", "a\nb", &"k".repeat(256)] {
            assert!(parse_idempotency_key(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn sizes_and_durations_read_well() {
        assert_eq!(human_bytes(10), "10 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(u64::MAX), "16384.0 PiB");
        assert_eq!(human_duration(Duration::from_millis(5)), "5ms");
        assert_eq!(human_duration(Duration::from_secs(3700)), "1h 1m");
    }
}
