//! The command-line client: `tally inc | get | status | config | ls | health`
//! send one HTTP request to a node (`tally config` repeats it until the
//! cluster holds the config; `tally status --cluster` then asks every actor
//! of its config) and print its answer for people or, with `--json`, for
//! scripts. Paths, headers and bodies are the server's own (`api::types`).
//!
//! Several nodes may be given: a command that cannot reach the first asks
//! the next, and so on, except `inc`, which only ever goes to the first: an
//! Idempotency-Key is remembered by the node that applied it, so an
//! increment silently retried on another node could be applied twice.
//!
//! `tally health` exits 0 or 1 only (Docker's HEALTHCHECK reserves 2).
//!
//! Exit codes: 0 success; 1 the node answered an error (or an answer that
//! could not be understood); 2 the node could not be reached within the
//! deadline (clap also uses 2 for usage errors); 3 a consistent read could
//! not hear from every node (the unreachable nodes and the best known value
//! are printed on stderr), or a config is still spreading at the deadline.
//!
//! Nothing here panics on any input or answer; every request has a deadline.

mod format;

use std::fmt::Write as _;
use std::io::Write as _;
use std::process::ExitCode;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::api::probes::cluster_of;
use crate::api::types::{
    ConfigSummary, IDEMPOTENCY_HEADER, Listing, Probe, SECRET_HEADER, Status, Unavailable,
    encode_query, paths,
};
use crate::tls::ClientTls;
use format::{
    excerpt, format_cluster, format_config, format_page, format_status, printable, shell_quote,
    status_line,
};
pub use format::{human_bytes, human_duration};
pub use tally_client::exchange::{Answer, Req, SendError, parse_node, send};

/// Exit code when the node answered an error.
pub const EXIT_FAILED: u8 = 1;
/// Exit code when the node could not be reached.
pub const EXIT_UNREACHABLE: u8 = 2;
/// Exit code when a consistent read could not hear from every node, or a
/// config is still spreading.
pub const EXIT_INCOMPLETE: u8 = 3;
/// Deadline of a whole client request unless `--timeout` says otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(15);
/// The node a client talks to unless told otherwise.
pub const DEFAULT_NODE: &str = "http://127.0.0.1:7777";

/// How to reach the node, shared by every client command.
#[derive(Clone, Debug)]
pub struct Conn {
    /// Base URLs without a trailing slash, e.g. `http://127.0.0.1:7777`, in
    /// the order they are tried; never empty.
    pub nodes: Vec<String>,
    pub json: bool,
    pub secret: Option<String>,
    /// Sent as `Authorization: Bearer` when set.
    pub token: Option<String>,
    /// For `https://` nodes: the CA bundle to trust (`--cacert`).
    pub tls: ClientTls,
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
    Status {
        /// Every actor of the node's config, one row each.
        cluster: bool,
    },
    /// `/readyz`, or `/livez` when `live`.
    Health {
        live: bool,
    },
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

/// The request that `action` sends.
fn request(action: &Action, conn: &Conn) -> Req {
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
    if let Some(token) = &conn.token {
        req.headers
            .push(("authorization", format!("Bearer {token}")));
    }
    match action {
        Action::Inc {
            name,
            amount,
            idempotency_key,
        } => {
            req.method = hyper::Method::POST;
            req.path = paths::counter(name);
            req.body = amount.to_string().into_bytes();
            if let Some(key) = idempotency_key {
                req.headers.push((IDEMPOTENCY_HEADER, key.clone()));
            }
        }
        Action::Get { name, consistent } => {
            req.path = if *consistent {
                let mut p = paths::consistent_value(name);
                if let Some(t) = conn.timeout {
                    let _ = write!(p, "?timeout={}ms", server_deadline(t).as_millis());
                }
                p
            } else {
                paths::value(name)
            };
        }
        Action::Status { .. } => req.path = paths::STATUS.into(),
        Action::Health { live: false } => req.path = paths::READYZ.into(),
        Action::Health { live: true } => req.path = paths::LIVEZ.into(),
        Action::Config { actors, forget } => {
            req.method = hyper::Method::POST;
            req.path = paths::CONFIG.into();
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
                query.push(format!("prefix={}", encode_query(p)));
            }
            if let Some(a) = after {
                query.push(format!("after={}", encode_query(a)));
            }
            if let Some(l) = limit {
                query.push(format!("limit={l}"));
            }
            req.path = paths::COUNTERS.into();
            if !query.is_empty() {
                req.path = format!("{}?{}", paths::COUNTERS, query.join("&"));
            }
        }
    }
    req
}

/// Sends the request of `action` and turns the answer into an [`Outcome`].
/// A node that cannot be reached is passed over for the next one, but for
/// increments (see the module's doc); each node gets what is left of the
/// deadline.
pub async fn execute(action: &Action, conn: &Conn) -> Outcome {
    let timeout = conn.timeout.unwrap_or(DEFAULT_TIMEOUT);
    let deadline = tokio::time::Instant::now() + timeout;
    let req = request(action, conn);
    let nodes: &[String] = match action {
        Action::Inc { .. } | Action::Health { .. } => &conn.nodes[..conn.nodes.len().min(1)],
        _ => &conn.nodes,
    };
    let mut passed_over = Vec::new();
    let mut outcome = Outcome::fail(EXIT_UNREACHABLE, "no node to ask");
    for node in nodes {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            break;
        }
        outcome = ask(action, conn, &req, node, left).await;
        if outcome.code != EXIT_UNREACHABLE {
            break;
        }
        passed_over.push(outcome.stderr.trim_end().to_string());
    }
    if outcome.code != EXIT_UNREACHABLE && !passed_over.is_empty() {
        let skipped = passed_over.join("\n");
        outcome.stderr = format!(
            "{skipped}\ntally: asked the next node instead\n{}",
            outcome.stderr
        );
    } else if passed_over.len() > 1 {
        outcome.stderr = passed_over.join("\n") + "\n";
    }
    if matches!(action, Action::Health { .. }) && outcome.code != 0 {
        outcome.code = EXIT_FAILED;
    }
    outcome
}

/// `action` against one node.
async fn ask(action: &Action, conn: &Conn, req: &Req, node: &str, timeout: Duration) -> Outcome {
    let url = format!("{node}{}", req.path);
    if matches!(action, Action::Config { .. }) {
        return post_config_until_stored(action, conn, req, node, &url, timeout).await;
    }
    let started = tokio::time::Instant::now();
    let answer = match send(req, &url, timeout, &conn.tls).await {
        Ok(a) => a,
        Err(e) => return unreachable(action, node, e),
    };
    if let (Action::Status { cluster: true }, 200) = (action, answer.status) {
        let left = timeout.saturating_sub(started.elapsed());
        return cluster_status(conn.json, &answer, left, &conn.tls).await;
    }
    interpret(action, conn.json, &answer)
}

/// `tally status --cluster`: the config in the node's `/status`, then every
/// actor of it asked for its own.
async fn cluster_status(
    json: bool,
    answer: &Answer,
    timeout: Duration,
    tls: &ClientTls,
) -> Outcome {
    let own: Status = match serde_json::from_str(&answer.body) {
        Ok(s) => s,
        Err(e) => return unexpected(&e.to_string(), answer),
    };
    let per_actor = timeout.min(crate::api::probes::DEFAULT_CLUSTER_TIMEOUT);
    let report = cluster_of(own, per_actor, tls).await;
    if json {
        return match serde_json::to_string_pretty(&report) {
            Ok(s) => Outcome::ok(s + "\n"),
            Err(e) => Outcome::fail(EXIT_FAILED, format!("cannot encode JSON: {e}")),
        };
    }
    let mut out = Outcome::ok(format_cluster(&report));
    let down = report.nodes.iter().filter(|n| !n.reachable).count();
    if down > 0 {
        out.code = EXIT_INCOMPLETE;
        out.stderr = format!(
            "tally: {down} of {} nodes could not be asked\n",
            report.nodes.len()
        );
    }
    out
}

fn unreachable(action: &Action, node: &str, e: SendError) -> Outcome {
    match e {
        SendError::Invalid(reason) => Outcome::fail(EXIT_FAILED, reason),
        SendError::Unreachable { reason, maybe_sent } => {
            let mut message = format!("cannot reach {node}: {reason}");
            if maybe_sent && matches!(action, Action::Inc { .. }) {
                message.push_str(
                    "; the increment may or may not have been applied \
                     (retry with the same --idempotency-key to apply it once)",
                );
            }
            Outcome::fail(EXIT_UNREACHABLE, message)
        }
    }
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
    node: &str,
    url: &str,
    timeout: Duration,
) -> Outcome {
    let deadline = tokio::time::Instant::now() + timeout;
    // Later posts are no-ops: what changed is what the first one did.
    let mut first_changed = None;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let mut answer = match send(req, url, left.max(Duration::from_millis(1)), &conn.tls).await {
            Ok(a) => a,
            Err(e) => return unreachable(action, node, e),
        };
        let mut waiting = Vec::new();
        if let Ok(mut summary) = serde_json::from_str::<ConfigSummary>(&answer.body) {
            let changed = *first_changed.get_or_insert(summary.changed);
            if changed && !summary.changed {
                summary.changed = true;
                answer.body = serde_json::to_string(&summary).unwrap_or(answer.body);
            }
            waiting = config_waiting(&summary);
        }
        let mut outcome = interpret(action, conn.json, &answer);
        if outcome.code != 0 || waiting.is_empty() {
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
fn config_waiting(c: &ConfigSummary) -> Vec<String> {
    let mut out = Vec::new();
    if !c.pending.is_empty() {
        out.push(format!("not stored yet by {}", c.pending.join(", ")));
    }
    let handing_off: Vec<&str> = c
        .leaving
        .iter()
        .filter(|l| !l.handed_off)
        .map(|l| l.actor.as_str())
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
    if json && !matches!(action, Action::Inc { .. } | Action::Get { .. }) {
        return match serde_json::from_str::<Value>(&answer.body) {
            Ok(_) => Outcome::ok(format!("{}\n", answer.body.trim())),
            Err(_) => unexpected("not JSON", answer),
        };
    }
    match action {
        Action::Inc { name, .. } | Action::Get { name, .. } => value(name, json, answer),
        Action::Status { .. } => typed(answer, |s: Status| Outcome::ok(format_status(&s))),
        Action::Health { .. } => typed(answer, |p: Probe| Outcome::ok(format!("{}\n", p.status))),
        Action::Config { .. } => typed(answer, |c: ConfigSummary| Outcome::ok(format_config(&c))),
        Action::Ls { .. } => typed(answer, |page: Listing| {
            let mut out = Outcome::ok(format_page(&page));
            if let Some(next) = &page.next {
                out.stderr = format!(
                    "tally: more counters follow; continue with --after {}\n",
                    shell_quote(next)
                );
            }
            out
        }),
    }
}

fn unexpected(what: &str, answer: &Answer) -> Outcome {
    Outcome::fail(
        EXIT_FAILED,
        format!("unexpected answer ({what}): {}", excerpt(&answer.body)),
    )
}

/// Reads a JSON answer into its type and renders it.
fn typed<T: DeserializeOwned>(answer: &Answer, render: impl FnOnce(T) -> Outcome) -> Outcome {
    match serde_json::from_str::<T>(&answer.body) {
        Ok(v) => render(v),
        Err(e) => unexpected(&e.to_string(), answer),
    }
}

/// A counter value: decimal digits alone.
fn value(name: &str, json: bool, answer: &Answer) -> Outcome {
    let text = answer.body.trim();
    let value = match text.parse::<u128>() {
        Ok(v) if text.bytes().all(|b| b.is_ascii_digit()) => v,
        _ => return unexpected("not a decimal value", answer),
    };
    if !json {
        return Outcome::ok(format!("{value}\n"));
    }
    #[derive(Serialize)]
    struct Named<'a> {
        name: &'a str,
        value: u128,
    }
    match serde_json::to_string(&Named { name, value }) {
        Ok(s) => Outcome::ok(s + "\n"),
        Err(e) => Outcome::fail(EXIT_FAILED, format!("cannot encode JSON: {e}")),
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
            if let Ok(u) = serde_json::from_str::<Unavailable>(&answer.body) {
                // An empty list (a node without a config) has nothing to name.
                if !u.unreachable.is_empty() {
                    let nodes: Vec<String> = u.unreachable.iter().map(|n| printable(n)).collect();
                    let _ = writeln!(out.stderr, "unreachable: {}", nodes.join(", "));
                }
                let _ = writeln!(
                    out.stderr,
                    "best known value: {} (may miss increments held only by those nodes)",
                    u.best_known_value
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
            out.stderr.push_str(
                "tally: pass a token allowed to do this with --token or TALLY_TOKEN \
                 (or the cluster secret with --secret or TALLY_SECRET for config)\n",
            );
        }
        _ => {}
    }
    out
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

#[cfg(test)]
mod tests;
