//! The HTTP surface: routing, request parsing, and what every answer looks
//! like.
//!
//! Public routes (SPEC §2) answer `text/plain` decimal digits with no
//! trailing newline. Every error, including the ones axum or hyper produce
//! (unknown route, wrong method), leaves as `{"error": "..."}`; errors are
//! mapped to statuses in one place (`error`). Bad input is refused before
//! anything is stored. Node-to-node traffic uses one route under
//! `/_internal/`, which no counter route can reach. The vocabulary (paths,
//! headers, limits, bodies) is in [`types`], shared with the client.
//!
//! One file per kind of route: `counters` (the counter routes, batches and
//! listing), `admin` (config, status and its history, metrics and the
//! internal route), `backup` (backups and restores), `probes` (health
//! probes and the cluster-wide status and history), `console` (the web
//! console at `/`) and [`openapi`] (the API's OpenAPI document, at
//! `/openapi.json`).
//!
//! The public operations are one table, [`types::ENDPOINTS`]: the router
//! is built from it, the token check ([`access`]) reads each operation's
//! scope from it, and `tests/openapi.rs` holds `docs/openapi.json` to it.

pub mod access;
mod admin;
mod backup;
mod console;
mod counters;
pub mod error;
pub mod openapi;
pub mod probes;
pub mod types;

use std::sync::Arc;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get, post};

use axum::extract::FromRef;

use crate::auth::{Audit, SharedTokens};
use crate::metrics::{Route as MetricRoute, RouteStatus};
use crate::node::Node;
use crate::proto::{RPC_PATH, RPC_PATH_V3};
use crate::tls::ClientTls;
pub use error::ApiError;
use types::{BODY_TIMEOUT, ENDPOINTS, Endpoint, MAX_BODY, Route, SECRET_HEADER, paths};

/// Who may call the node, and how it calls others' public routes: the
/// API's business, handed to [`router`] beside the node.
pub struct Access {
    /// The tokens in force, when clients must present one (`--tokens-file`).
    pub tokens: Option<Arc<SharedTokens>>,
    /// Where admin actions and failed authentications are written.
    pub audit: Arc<Audit>,
    /// How `/status/cluster` calls the other nodes' `/status`.
    pub client_tls: ClientTls,
}

/// What a handler may ask for: the node, or the access rules.
#[derive(Clone)]
struct ApiState {
    node: Arc<Node>,
    access: Arc<Access>,
}

impl FromRef<ApiState> for Arc<Node> {
    fn from_ref(state: &ApiState) -> Self {
        state.node.clone()
    }
}

impl FromRef<ApiState> for Arc<Access> {
    fn from_ref(state: &ApiState) -> Self {
        state.access.clone()
    }
}

pub fn router(node: Arc<Node>, access: Arc<Access>) -> Router {
    // Every public operation comes from the one table; the counter routes
    // (one segment of any bytes, then a verb) are served by the fallback,
    // which also answers every unknown path.
    let mut routes = Router::new();
    let mut templates: Vec<&'static str> = Vec::new();
    for e in ENDPOINTS {
        if !e.template.starts_with(paths::COUNTER_PREFIX) && !templates.contains(&e.template) {
            templates.push(e.template);
        }
    }
    for template in templates {
        let methods = ENDPOINTS
            .iter()
            .filter(|e| e.template == template)
            .map(handler)
            .reduce(MethodRouter::merge)
            .expect("a template of the table has an operation");
        routes = routes.route(template, methods);
    }
    let routes = routes
        .route(RPC_PATH, post(admin::rpc))
        .route(RPC_PATH_V3, post(admin::rpc_v3))
        .fallback(counters::counter_routes);
    // The token check only where tokens are configured (the file is read
    // again on SIGHUP, but whether there is one is fixed at start): an open
    // node's requests do not pass through it.
    let routes = if access.tokens.is_some() {
        routes.layer(middleware::from_fn_with_state(
            access.clone(),
            access::check,
        ))
    } else {
        routes
    };
    // One layer, not two: each `from_fn` layer costs every request a boxed
    // service and a boxed future.
    routes
        .layer(middleware::from_fn_with_state(node.clone(), observe))
        .with_state(ApiState { node, access })
}

/// The handler of one operation of [`ENDPOINTS`] outside `/counter/`. An
/// operation added to the table without a handler here stops every node
/// (and every test) at its start, and a handler here that the table does
/// not list is never served.
fn handler(e: &Endpoint) -> MethodRouter<ApiState> {
    match (e.method, e.template) {
        ("GET", paths::CONSOLE) => get(console::page),
        ("GET", paths::CONSOLE_ASSET) => get(console::asset),
        ("GET", paths::OPENAPI) => get(openapi::document),
        ("GET", paths::LIVEZ) => get(probes::livez),
        ("GET", paths::READYZ) => get(probes::readyz),
        ("POST", paths::CONFIG) => post(admin::post_config),
        ("GET", paths::STATUS) => get(admin::status),
        ("GET", paths::CLUSTER_STATUS) => get(probes::cluster_status),
        ("GET", paths::STATUS_HISTORY) => get(admin::status_history),
        ("GET", paths::CLUSTER_HISTORY) => get(probes::cluster_history),
        ("GET", paths::BACKUP) => get(backup::page),
        ("POST", paths::RESTORE) => post(backup::restore),
        ("GET", paths::METRICS) => get(admin::metrics),
        ("GET", paths::COUNTERS) => get(counters::list),
        ("POST", paths::COUNTERS) => post(counters::batch_increment),
        (method, template) => panic!("no handler for {method} {template}"),
    }
}

/// Every response's last step: errors as JSON (see [`json_errors`]), then
/// counted by method, route and status, and timed.
async fn observe(State(node): State<Arc<Node>>, req: Request, next: Next) -> Response {
    let route = Route::of(req.uri().path()).template();
    let method = crate::metrics::method_label(req.method().as_str());
    let started = tokio::time::Instant::now();
    let resp = json_errors(next.run(req).await).await;
    let m = node.metrics();
    m.requests
        .get_or_create(&RouteStatus {
            method,
            route,
            status: resp.status().as_u16(),
        })
        .inc();
    m.request_seconds
        .get_or_create(&MetricRoute { method, route })
        .observe(started.elapsed().as_secs_f64());
    resp
}

/// Rewrites any error response that is not already JSON (axum's own
/// rejections, 404s, 405s) into `{"error": "..."}`.
async fn json_errors(resp: Response) -> Response {
    let mut resp = json_error_body(resp).await;
    // A refused credential ends the connection: a client without one
    // cannot keep its connection, and its place in the budget, open.
    if matches!(
        resp.status(),
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN
    ) {
        resp.headers_mut().insert(
            header::CONNECTION,
            header::HeaderValue::from_static("close"),
        );
    }
    resp
}

async fn json_error_body(resp: Response) -> Response {
    let status = resp.status();
    let is_json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return resp;
    }
    let (parts, body) = resp.into_parts();
    let text = axum::body::to_bytes(body, MAX_BODY)
        .await
        .unwrap_or_default();
    let mut message = String::from_utf8_lossy(&text).trim().to_string();
    if message.is_empty() {
        message = status
            .canonical_reason()
            .unwrap_or("request failed")
            .to_lowercase();
    }
    let mut out = ApiError::new(status, message).into_response();
    if let Some(allow) = parts.headers.get(header::ALLOW) {
        out.headers_mut().insert(header::ALLOW, allow.clone());
    }
    out
}

/// A counter value: decimal digits alone.
fn text(value: u128) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        value.to_string(),
    )
        .into_response()
}

/// Reads a whole body, refusing one over `limit` bytes (413) or one that
/// does not arrive within `BODY_TIMEOUT` (408): a stalled client cannot hold
/// a request open (G6).
async fn read_body(body: Body, limit: usize) -> Result<Bytes, ApiError> {
    match tokio::time::timeout(BODY_TIMEOUT, axum::body::to_bytes(body, limit)).await {
        Err(_) => Err(ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            format!("the body did not arrive within {BODY_TIMEOUT:?}"),
        )),
        Ok(Err(_)) => Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("body is larger than {limit} bytes"),
        )),
        Ok(Ok(bytes)) => Ok(bytes),
    }
}

/// Checks the cluster secret when one is set.
fn authorize(node: &Node, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(secret) = &node.settings().secret else {
        return Ok(());
    };
    match headers.get(SECRET_HEADER) {
        None => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            format!("this route needs the cluster secret in {SECRET_HEADER}"),
        )),
        Some(given) if constant_time_eq(given.as_bytes(), secret.as_bytes()) => Ok(()),
        Some(_) => Err(ApiError::new(StatusCode::FORBIDDEN, "wrong cluster secret")),
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for (i, &x) in a.iter().enumerate() {
        diff |= usize::from(x ^ b.get(i % b.len().max(1)).copied().unwrap_or(0));
    }
    diff == 0
}

fn query_param<'a>(query: Option<&'a str>, key: &str) -> Option<&'a str> {
    query?
        .split('&')
        .filter_map(|kv| kv.split_once('=').or(Some((kv, ""))))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
}

/// `?timeout=` of a request: `default` when absent, at most `max`.
fn timeout_param(
    query: Option<&str>,
    default: std::time::Duration,
    max: std::time::Duration,
) -> Result<std::time::Duration, ApiError> {
    Ok(match query_param(query, "timeout") {
        None => default,
        Some(raw) => crate::input::parse_duration(raw)
            .map_err(ApiError::bad_request)?
            .min(max),
    })
}

/// Decodes a query value: `%XX` escapes and `+` for a space.
fn query_value(raw: &str) -> Result<String, ApiError> {
    percent_encoding::percent_decode_str(&raw.replace('+', " "))
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| ApiError::bad_request("query value is not valid UTF-8"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_compare_exactly() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
        assert!(!constant_time_eq(b"", b"a"));
    }
}
