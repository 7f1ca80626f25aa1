//! The operator routes: `POST /config`, `GET /status`, `GET /status/history`,
//! `GET /metrics`, and
//! the one internal route other nodes call.

use std::sync::Arc;

use axum::Extension;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::types::{
    ConfigRequest, ConfigSummary, ConnInfo, Leaver, MAX_BODY, PeerReport, Status, StatusConfig,
    history_of,
};
use super::{ApiError, authorize, read_body};
use crate::cluster::{Actor, Membership, parse_actors};
use crate::node::{ConfigOutcome, Node};
use crate::proto::{self, RequestEnvelope};
use crate::tls::speaks_for;
use crate::transport::MAX_RPC_BODY;

pub(super) async fn post_config(
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
        let a = Actor::parse(raw).map_err(ApiError::bad_request)?;
        if actors.contains(&a) {
            return Err(ApiError::bad_request(format!(
                "actor {a} cannot be both an actor and forgotten"
            )));
        }
        forget.push(a);
    }
    let outcome = node.place().post_config(actors, forget).await?;
    Ok(axum::Json(summary(outcome)).into_response())
}

fn strings(v: &[Actor]) -> Vec<String> {
    v.iter().map(|a| a.to_string()).collect()
}

fn leavers(m: &Membership) -> Vec<Leaver> {
    m.leavers()
        .into_iter()
        .map(|(a, handed_off)| Leaver {
            actor: a.to_string(),
            handed_off,
        })
        .collect()
}

fn summary(o: ConfigOutcome) -> ConfigSummary {
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

/// The internal route. With mutual TLS, only a connection that presented a
/// certificate of the cluster's CA reaches it, and a message is taken only
/// from the node its certificate names (the secret is not needed then);
/// otherwise the cluster secret, when one is set, is checked.
pub(super) async fn rpc(
    State(node): State<Arc<Node>>,
    conn: Option<Extension<ConnInfo>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    serve_rpc(&node, conn, &headers, body, false).await
}

/// The internal route of protocol 3: the same messages, binary.
pub(super) async fn rpc_v3(
    State(node): State<Arc<Node>>,
    conn: Option<Extension<ConnInfo>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    serve_rpc(&node, conn, &headers, body, true).await
}

async fn serve_rpc(
    node: &Node,
    conn: Option<Extension<ConnInfo>>,
    headers: &HeaderMap,
    body: Body,
    binary: bool,
) -> Result<Response, ApiError> {
    // A caller that presented a certificate of the cluster's CA speaks for
    // the node id it names, and needs no secret. Without one: refused when
    // the node has TLS only, else checked for the secret.
    let cert = conn.and_then(|Extension(c)| c.cert);
    if cert.is_none() {
        if node.settings().peer_tls {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "the internal route answers only peers with a certificate of the cluster's CA",
            ));
        }
        authorize(node, headers)?;
    }
    let bytes = read_body(body, MAX_RPC_BODY).await?;
    let malformed = |e: &dyn std::fmt::Display| {
        ApiError::bad_request(format!("malformed internal message: {e}"))
    };
    let env: RequestEnvelope = if binary {
        proto::binary::decode_request(&bytes).map_err(|e| malformed(&e))?
    } else {
        proto::decode_request(&bytes).map_err(|e| malformed(&e))?
    };
    if let Some(cert) = cert
        && !speaks_for(&cert.0, env.from.node)
    {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!(
                "the message claims to come from node {}, which this peer's certificate does not name",
                env.from.node
            ),
        ));
    }
    let resp = node.peers().answer(env).await?;
    if binary {
        let bytes = proto::binary::encode_response(&resp);
        Ok(([(header::CONTENT_TYPE, proto::BINARY_TYPE)], bytes).into_response())
    } else {
        Ok(axum::Json(resp).into_response())
    }
}

pub(super) async fn status(State(node): State<Arc<Node>>) -> Response {
    axum::Json(status_of(&node).await).into_response()
}

/// What `GET /status` answers.
pub(super) async fn status_of(node: &Node) -> Status {
    let m = node.membership();
    let id = node.identity();
    let store = node.store();
    Status {
        id: id.node,
        incarnation: format!("{:016x}", id.incarnation),
        version: env!("CARGO_PKG_VERSION").to_string(),
        listen: node.settings().listen.to_string(),
        uptime_secs: node.uptime().as_secs(),
        me: node.me().map(|a| a.to_string()),
        role: Some(node.role().into()),
        config: StatusConfig {
            version: m.config.stamp.version,
            origin: m.config.stamp.origin,
            actors: strings(&m.config.actors),
            leaving: leavers(&m),
            read_set: strings(&m.read_set()),
        },
        peers: node
            .peers()
            .report()
            .into_iter()
            .map(PeerReport::from)
            .collect(),
        names: store.names() as u64,
        idempotency_keys: store.remembered_keys() as u64,
        storage: Some(store.health().into()),
        head_seq: store.head(),
        min_replicas: node.settings().min_replicas as u64,
        data_dir: store.dir().map(|d| d.display().to_string()),
        data_bytes: store.disk_bytes().await,
        connections: Some(node.settings().budgets.clone()),
    }
}

/// `GET /status/history`: the node's samples of the last minutes.
pub(super) async fn status_history(State(node): State<Arc<Node>>) -> Response {
    let samples = node.history();
    axum::Json(history_of(node.identity().node, &samples)).into_response()
}

pub(super) async fn metrics(State(node): State<Arc<Node>>) -> Response {
    let m = node.metrics();
    m.names
        .set(i64::try_from(node.store().names()).unwrap_or(i64::MAX));
    m.idempotency_keys
        .set(i64::try_from(node.store().remembered_keys()).unwrap_or(i64::MAX));
    // Refreshes the health gauge, which also follows stalls.
    let _ = node.store().health();
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        m.encode(),
    )
        .into_response()
}
