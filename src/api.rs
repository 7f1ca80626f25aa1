//! The HTTP surface: request parsing, routing and the mapping of every error
//! to a status and a JSON body, in one place.
//!
//! Public routes (SPEC §2) answer `text/plain` decimal digits with no
//! trailing newline. Every error, including the ones axum or hyper produce
//! (unknown route, wrong method), leaves as `{"error": "..."}`. Bad input is
//! refused before anything is stored. Node-to-node traffic uses one route
//! under `/_internal/`, which no counter route can reach.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;

use crate::cluster::{ConfigRequest, parse_actors};
use crate::crdt::{Component, GCounter};
use crate::input::{self, parse_amount, parse_duration, validate_key, validate_name};
use crate::metrics::{Route as MetricRoute, RouteStatus};
use crate::node::{ConfigOutcome, Incomplete, IncrementError, Node, PostConfigError, RpcError};
use crate::proto::{RPC_PATH, RequestEnvelope};
use crate::storage::{Incremented, StoreError};
use crate::transport::{MAX_RPC_BODY, SECRET_HEADER};
use serde::{Deserialize, Serialize};

/// Largest body accepted on public routes.
pub const MAX_BODY: usize = 64 * 1024;
/// Deadline for a request body to arrive once its head has.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// Seconds a client is asked to wait before retrying a write refused
/// because storage is failing or slow.
const RETRY_AFTER_SECS: u64 = 1;

/// An error on its way to the client.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    body: serde_json::Value,
    /// Sent as `Retry-After` (seconds) on a 503 worth retrying.
    retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            body: json!({ "error": message.into() }),
            retry_after: None,
        }
    }

    pub fn bad_request(message: impl std::fmt::Display) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message.to_string())
    }

    /// Adds a field to the JSON body.
    fn with(mut self, key: &str, value: serde_json::Value) -> Self {
        self.body[key] = value;
        self
    }

    fn retry_after(mut self, secs: u64) -> Self {
        self.retry_after = Some(secs);
        self
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (self.status, axum::Json(self.body)).into_response();
        if let Some(secs) = self.retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from(secs));
        }
        resp
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        let status = match e {
            StoreError::Overflow(_) => StatusCode::BAD_REQUEST,
            StoreError::KeyReused(_) => StatusCode::UNPROCESSABLE_ENTITY,
            StoreError::Closed => StatusCode::SERVICE_UNAVAILABLE,
            ref e if e.is_transient() => {
                return ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
                    .retry_after(RETRY_AFTER_SECS);
            }
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError::new(status, e.to_string())
    }
}

impl From<PostConfigError> for ApiError {
    fn from(e: PostConfigError) -> Self {
        let message = e.to_string();
        match e {
            PostConfigError::Store(e) => e.into(),
            PostConfigError::NotMember { actors } => {
                let actors: Vec<String> = actors.iter().map(|a| a.to_string()).collect();
                ApiError::new(StatusCode::CONFLICT, message).with("actors", json!(actors))
            }
        }
    }
}

impl From<IncrementError> for ApiError {
    fn from(e: IncrementError) -> Self {
        let message = e.to_string();
        match e {
            IncrementError::Store(e) => e.into(),
            IncrementError::NotMember { actors, .. } => {
                let actors: Vec<String> = actors.iter().map(|a| a.to_string()).collect();
                ApiError::new(StatusCode::CONFLICT, message).with("actors", json!(actors))
            }
            IncrementError::Replicas {
                stored,
                required,
                values,
                ..
            } => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, message)
                .with("stored", json!(stored))
                .with("required", json!(required))
                // Values can exceed what a JSON number holds exactly: strings.
                .with(
                    "local_values",
                    json!(values.iter().map(u128::to_string).collect::<Vec<_>>()),
                )
                .retry_after(RETRY_AFTER_SECS),
            IncrementError::TooFewActors {
                required,
                available,
            } => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, message)
                .with("required", json!(required))
                .with("available", json!(available)),
        }
    }
}

impl From<RpcError> for ApiError {
    fn from(e: RpcError) -> Self {
        match e {
            RpcError::BadRequest(m) => ApiError::bad_request(m),
            RpcError::Store(e) => e.into(),
        }
    }
}

pub fn router(node: Arc<Node>) -> Router {
    Router::new()
        .route("/config", post(post_config))
        .route(RPC_PATH, post(rpc))
        .route("/status", get(status))
        .route("/counters", get(list_counters).post(batch_increment))
        .route("/metrics", get(metrics))
        .fallback(fallback)
        .layer(middleware::from_fn(json_errors))
        .layer(middleware::from_fn_with_state(node.clone(), observe))
        .with_state(node)
}

/// The route template of a path, so metric labels stay few.
fn route_of(path: &str) -> &'static str {
    match path {
        "/config" => "/config",
        "/status" => "/status",
        "/metrics" => "/metrics",
        "/counters" => "/counters",
        RPC_PATH => RPC_PATH,
        _ => match path.strip_prefix("/counter/") {
            Some(rest) if !rest.contains('/') => "/counter/{name}",
            Some(rest) if rest.ends_with("/consistent_value") => "/counter/{name}/consistent_value",
            Some(rest) if rest.ends_with("/value") => "/counter/{name}/value",
            _ => "other",
        },
    }
}

/// Counts every request by route and status, and times it.
async fn observe(State(node): State<Arc<Node>>, req: Request, next: Next) -> Response {
    let route = route_of(req.uri().path());
    let started = std::time::Instant::now();
    let resp = next.run(req).await;
    let m = &node.settings().metrics;
    m.requests
        .get_or_create(&RouteStatus {
            route,
            status: resp.status().as_u16(),
        })
        .inc();
    m.request_seconds
        .get_or_create(&MetricRoute { route })
        .observe(started.elapsed().as_secs_f64());
    resp
}

async fn metrics(State(node): State<Arc<Node>>) -> Response {
    let m = &node.settings().metrics;
    m.names
        .set(i64::try_from(node.store().names()).unwrap_or(i64::MAX));
    m.idempotency_keys
        .set(i64::try_from(node.store().remembered_keys()).unwrap_or(i64::MAX));
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        m.encode(),
    )
        .into_response()
}

/// Rewrites any error response that is not already JSON (axum's own
/// rejections, 404s, 405s) into `{"error": "..."}`.
async fn json_errors(req: Request, next: Next) -> Response {
    let resp = next.run(req).await;
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

async fn post_config(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    authorize(&node, &headers)?;
    let bytes = read_body(body, MAX_BODY).await?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request(
            r#"config body is empty; send {"actors": ["host:port", ...]}"#,
        ));
    }
    let req: ConfigRequest = serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::bad_request(format!(
            "config is not valid JSON of the form {{\"actors\": [...]}}: {e}"
        ))
    })?;
    let actors = parse_actors(&req.actors).map_err(ApiError::bad_request)?;
    let mut forget = Vec::with_capacity(req.forget.len());
    for raw in &req.forget {
        let a = crate::cluster::Actor::parse(raw).map_err(ApiError::bad_request)?;
        if actors.contains(&a) {
            return Err(ApiError::bad_request(format!(
                "actor {a} cannot be both an actor and forgotten"
            )));
        }
        forget.push(a);
    }
    let outcome = node.post_config(actors, forget).await?;
    Ok(axum::Json(ConfigSummary::from(outcome)).into_response())
}

/// The answer to `POST /config`.
#[derive(Serialize)]
struct ConfigSummary {
    changed: bool,
    version: u64,
    origin: u64,
    actors: Vec<String>,
    #[serde(rename = "self")]
    me: Option<String>,
    /// Nodes that hold this config now (this node included).
    stored: Vec<String>,
    /// Nodes that did not answer yet; the config reaches them later.
    pending: Vec<String>,
    /// Nodes that left the config and whether each handed off what it held.
    leaving: Vec<Leaver>,
}

#[derive(Serialize)]
struct Leaver {
    actor: String,
    handed_off: bool,
}

fn leavers(m: &crate::cluster::Membership) -> Vec<Leaver> {
    m.leavers()
        .into_iter()
        .map(|(a, handed_off)| Leaver {
            actor: a.to_string(),
            handed_off,
        })
        .collect()
}

impl From<ConfigOutcome> for ConfigSummary {
    fn from(o: ConfigOutcome) -> Self {
        let strings = |v: &[crate::cluster::Actor]| v.iter().map(|a| a.to_string()).collect();
        ConfigSummary {
            changed: o.changed,
            version: o.membership.config.stamp.version,
            origin: o.membership.config.stamp.origin,
            actors: strings(&o.membership.config.actors),
            me: o.me.map(|a| a.to_string()),
            stored: strings(&o.stored),
            pending: strings(&o.pending),
            leaving: leavers(&o.membership),
        }
    }
}

/// Percent-decodes one path segment into a valid counter name.
pub fn decode_name(raw: &str) -> Result<String, ApiError> {
    input::decode_name(raw).map_err(ApiError::bad_request)
}

fn query_param<'a>(query: Option<&'a str>, key: &str) -> Option<&'a str> {
    query?
        .split('&')
        .filter_map(|kv| kv.split_once('=').or(Some((kv, ""))))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
}

async fn fallback(State(node): State<Arc<Node>>, req: Request) -> Result<Response, ApiError> {
    let path = req.uri().path().to_string();
    let Some(rest) = path.strip_prefix("/counter/") else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no route {path}"),
        ));
    };
    let segments: Vec<&str> = rest.split('/').collect();
    let method = req.method().clone();
    let allow = |methods: &'static str| {
        let mut resp = ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{method} is not allowed on {path}; use {methods}"),
        )
        .into_response();
        resp.headers_mut()
            .insert(header::ALLOW, header::HeaderValue::from_static(methods));
        Ok(resp)
    };
    match segments.as_slice() {
        [raw] if method == Method::GET || method == Method::HEAD => {
            let name = decode_name(raw)?;
            Ok(axum::Json(counter_view(&name, node.store().counter(&name))).into_response())
        }
        [raw] => {
            if method != Method::POST {
                return allow("GET, POST");
            }
            let name = decode_name(raw)?;
            let key = idempotency_key(req.headers())?;
            let replicas = replicas_param(req.uri().query())?;
            let bytes = read_body(req.into_body(), MAX_BODY).await?;
            let amount = parse_amount(&bytes).map_err(ApiError::bad_request)?;
            let done = node.increment(vec![(name, amount)], key, replicas).await?;
            Ok(replayed(text(done.values[0]), &done))
        }
        [raw, "value"] => {
            if method != Method::GET && method != Method::HEAD {
                return allow("GET");
            }
            let name = decode_name(raw)?;
            Ok(text(node.store().value(&name)))
        }
        [raw, "consistent_value"] => {
            if method != Method::GET && method != Method::HEAD {
                return allow("GET");
            }
            let name = decode_name(raw)?;
            let settings = node.settings();
            let timeout = match query_param(req.uri().query(), "timeout") {
                None => settings.consistent_timeout,
                Some(raw) => parse_duration(raw)
                    .map_err(ApiError::bad_request)?
                    .min(settings.max_consistent_timeout),
            };
            match node.consistent_value(&name, timeout).await {
                Ok(v) => Ok(text(v)),
                // A typed body: values can exceed what serde_json::Value holds.
                Err(Incomplete {
                    reason,
                    unreachable,
                    best_known_value,
                }) => Ok((
                    StatusCode::SERVICE_UNAVAILABLE,
                    axum::Json(Unavailable {
                        error: reason,
                        unreachable: unreachable.iter().map(|a| a.to_string()).collect(),
                        best_known_value,
                    }),
                )
                    .into_response()),
            }
        }
        _ => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no route {path}; counter names are one path segment (encode '/' as %2F)"),
        )),
    }
}

/// Header that marks an answer repeated for a known idempotency key.
pub const REPLAYED_HEADER: &str = "idempotent-replayed";
/// Most increments in one batch.
pub const MAX_BATCH_ITEMS: usize = 1000;
/// Largest page of `GET /counters`.
pub const MAX_PAGE: usize = 1000;

/// Marks the answer to a retried request that was not applied again.
fn replayed(mut resp: Response, done: &Incremented) -> Response {
    if done.replayed {
        resp.headers_mut()
            .insert(REPLAYED_HEADER, header::HeaderValue::from_static("true"));
    }
    resp
}

/// `?replicas=K`: other actors that must store the increment before it is acknowledged.
fn replicas_param(query: Option<&str>) -> Result<Option<usize>, ApiError> {
    let Some(raw) = query_param(query, "replicas") else {
        return Ok(None);
    };
    Some(raw)
        .filter(|r| !r.is_empty() && r.len() <= 3 && r.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|r| r.parse::<usize>().ok())
        .filter(|k| *k <= crate::cluster::MAX_ACTORS)
        .map(Some)
        .ok_or_else(|| {
            ApiError::bad_request(format!(
                "replicas must be 0 to {}",
                crate::cluster::MAX_ACTORS
            ))
        })
}

fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let mut all = headers.get_all("idempotency-key").iter();
    let Some(raw) = all.next() else {
        return Ok(None);
    };
    if all.next().is_some() {
        return Err(ApiError::bad_request(
            "send one Idempotency-Key header, not several",
        ));
    }
    let key = raw
        .to_str()
        .map_err(|_| ApiError::bad_request("Idempotency-Key must be visible ASCII characters"))?;
    validate_key(key).map_err(ApiError::bad_request)?;
    Ok(Some(key.to_string()))
}

// Bodies that carry u128 values are typed structs: serde_json writes a u128
// directly, but cannot hold one in a `serde_json::Value`.

#[derive(Serialize)]
struct Unavailable {
    error: String,
    unreachable: Vec<String>,
    best_known_value: u128,
}

#[derive(Serialize)]
struct CounterView {
    name: String,
    value: u128,
    components: Vec<Component>,
}

#[derive(Serialize)]
struct NamedValue {
    name: String,
    value: u128,
}

#[derive(Serialize)]
struct BatchAnswer {
    values: Vec<NamedValue>,
}

#[derive(Serialize)]
struct Listing {
    counters: Vec<NamedValue>,
    next: Option<String>,
}

/// `GET /counter/<name>`: the counter as JSON with its components.
fn counter_view(name: &str, counter: Option<GCounter>) -> CounterView {
    let counter = counter.unwrap_or_default();
    CounterView {
        name: name.to_string(),
        value: counter.value(),
        components: (&counter).into(),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchRequest {
    increments: Vec<BatchItem>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchItem {
    name: String,
    amount: u64,
}

/// `POST /counters`: many increments applied atomically in one commit.
async fn batch_increment(
    State(node): State<Arc<Node>>,
    req: Request,
) -> Result<Response, ApiError> {
    let key = idempotency_key(req.headers())?;
    let replicas = replicas_param(req.uri().query())?;
    let body = req.into_body();
    let bytes = read_body(body, MAX_BODY).await?;
    let req: BatchRequest = serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::bad_request(format!(
            "batch is not JSON of the form {{\"increments\": [{{\"name\": ..., \"amount\": ...}}]}}: {e}"
        ))
    })?;
    if req.increments.is_empty() || req.increments.len() > MAX_BATCH_ITEMS {
        return Err(ApiError::bad_request(format!(
            "a batch holds 1 to {MAX_BATCH_ITEMS} increments"
        )));
    }
    let mut items = Vec::with_capacity(req.increments.len());
    for item in req.increments {
        validate_name(&item.name).map_err(ApiError::bad_request)?;
        items.push((item.name, item.amount));
    }
    let names: Vec<String> = items.iter().map(|(n, _)| n.clone()).collect();
    let done = node.increment(items, key, replicas).await?;
    let values = names
        .into_iter()
        .zip(done.values.iter().copied())
        .map(|(name, value)| NamedValue { name, value })
        .collect();
    Ok(replayed(
        axum::Json(BatchAnswer { values }).into_response(),
        &done,
    ))
}

/// Decodes a query value: `%XX` escapes and `+` for a space.
fn query_value(raw: &str) -> Result<String, ApiError> {
    percent_encoding::percent_decode_str(&raw.replace('+', " "))
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| ApiError::bad_request("query value is not valid UTF-8"))
}

/// `GET /counters?prefix=&after=&limit=`: names in order with local values.
async fn list_counters(State(node): State<Arc<Node>>, req: Request) -> Result<Response, ApiError> {
    let query = req.uri().query();
    let prefix = query_param(query, "prefix")
        .map(query_value)
        .transpose()?
        .unwrap_or_default();
    let after = query_param(query, "after").map(query_value).transpose()?;
    let limit = match query_param(query, "limit") {
        None => 100,
        Some(raw) => Some(raw)
            .filter(|r| !r.is_empty() && r.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|r| r.parse::<usize>().ok())
            .filter(|n| (1..=MAX_PAGE).contains(n))
            .ok_or_else(|| ApiError::bad_request(format!("limit must be 1 to {MAX_PAGE}")))?,
    };
    let page = node.store().list(&prefix, after.as_deref(), limit + 1);
    let more = page.len() > limit;
    let next = if more {
        page.get(limit - 1).map(|(n, _)| n.clone())
    } else {
        None
    };
    let counters = page
        .into_iter()
        .take(limit)
        .map(|(name, c)| NamedValue {
            value: c.value(),
            name,
        })
        .collect();
    Ok(axum::Json(Listing { counters, next }).into_response())
}

async fn rpc(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    authorize(&node, &headers)?;
    let bytes = read_body(body, MAX_RPC_BODY).await?;
    let env: RequestEnvelope = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::bad_request(format!("malformed internal message: {e}")))?;
    let resp = node.handle_rpc(env).await?;
    Ok(axum::Json(resp).into_response())
}

async fn status(State(node): State<Arc<Node>>) -> Response {
    let m = node.membership();
    let id = node.identity();
    let strings = |v: &[crate::cluster::Actor]| v.iter().map(|a| a.to_string()).collect::<Vec<_>>();
    axum::Json(json!({
        "id": id.node,
        "incarnation": format!("{:016x}", id.incarnation),
        "version": env!("CARGO_PKG_VERSION"),
        "listen": node.settings().listen.to_string(),
        "uptime_secs": node.uptime().as_secs(),
        "self": node.me().map(|a| a.to_string()),
        "role": node.role(),
        "config": {
            "version": m.config.stamp.version,
            "origin": m.config.stamp.origin,
            "actors": strings(&m.config.actors),
            "leaving": leavers(&m),
            "read_set": strings(&m.read_set()),
        },
        "peers": node.peers().report(),
        "names": node.store().names(),
        "idempotency_keys": node.store().remembered_keys(),
        "storage": node.store().health(),
        "head_seq": node.store().head(),
        "min_replicas": node.settings().min_replicas,
        "data_dir": node.store().dir().map(|d| d.display().to_string()),
        "data_bytes": node.store().disk_bytes(),
    }))
    .into_response()
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

    #[test]
    fn bodies_carry_values_beyond_u64() {
        let body = serde_json::to_string(&Unavailable {
            error: "e".into(),
            unreachable: vec![],
            best_known_value: 3 * u128::from(u64::MAX),
        })
        .unwrap();
        assert!(body.contains("55340232221128654845"), "{body}");
    }
}
