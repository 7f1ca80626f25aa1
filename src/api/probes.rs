//! Health probes and the cluster-wide status: `GET /livez`, `GET /readyz`
//! and `GET /status/cluster`.
//!
//! `/livez` answers whenever the process serves HTTP. `/readyz` answers 200
//! only when the node should be sent traffic: it has a config, knows which
//! actor it is, is one of the config's actors, its storage commits, and it
//! is not shutting down; otherwise 503 with every reason.
//!
//! `/status/cluster` asks every actor of this node's config (leaving ones
//! too) for its `/status`, all at once, each within one deadline, and
//! answers them in config order; [`gather`] is shared with
//! `tally status --cluster`, which asks from the client's side.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::types::{
    ClusterHistory, ClusterNode, ClusterStatus, NodeHistory, NotReady, Probe, Status,
    StatusHistory, history_of, paths,
};
use super::{Access, ApiError, admin, timeout_param};
use crate::node::{Node, Role};
use crate::tls::ClientTls;
use tally_client::exchange::{Req, SendError, parse_node, send};

/// Deadline of each actor's `/status` unless `?timeout=` says otherwise.
pub const DEFAULT_CLUSTER_TIMEOUT: Duration = Duration::from_secs(2);
/// Most `/status/cluster` requests served at once by one node.
pub const MAX_CLUSTER_GATHERS: usize = 4;
static CLUSTER_GATHERS: tokio::sync::Semaphore =
    tokio::sync::Semaphore::const_new(MAX_CLUSTER_GATHERS);
/// Most actors asked at once by one gathering.
pub const MAX_CLUSTER_ASKS: usize = 32;

/// Largest `?timeout=` of `/status/cluster`.
pub const MAX_CLUSTER_TIMEOUT: Duration = Duration::from_secs(10);

pub(super) async fn livez() -> Response {
    axum::Json(Probe {
        status: "live".into(),
    })
    .into_response()
}

pub(super) async fn readyz(State(node): State<Arc<Node>>) -> Response {
    let reasons = not_ready(&node);
    if reasons.is_empty() {
        return axum::Json(Probe {
            status: "ready".into(),
        })
        .into_response();
    }
    let body = NotReady {
        error: format!("not ready: {}", reasons.join("; ")),
        reasons,
    };
    (
        StatusCode::SERVICE_UNAVAILABLE,
        [(header::RETRY_AFTER, "1")],
        axum::Json(body),
    )
        .into_response()
}

/// Why the node should not be sent traffic; empty when it should.
fn not_ready(node: &Node) -> Vec<String> {
    let mut reasons = Vec::new();
    if node.shutdown_token().is_cancelled() {
        reasons.push("shutting down".to_string());
    }
    match node.role() {
        Role::Member => {}
        Role::Unconfigured => reasons.push("no config posted yet".into()),
        Role::Unknown => {
            reasons.push("does not know yet which actor of its config it is".into());
        }
        Role::Leaving | Role::HandedOff => {
            reasons.push("left the config (it only hands off what it holds)".into());
        }
        Role::Outside => reasons.push("not an actor of its config".into()),
    }
    let health = node.store().health();
    if !health.healthy {
        let why = health.problem.unwrap_or_else(|| "failing".into());
        reasons.push(format!("storage unavailable: {why}"));
    }
    reasons
}

pub(super) async fn cluster_status(
    State(node): State<Arc<Node>>,
    State(access): State<Arc<Access>>,
    req: Request,
) -> Result<Response, ApiError> {
    let timeout = timeout_param(
        req.uri().query(),
        DEFAULT_CLUSTER_TIMEOUT,
        MAX_CLUSTER_TIMEOUT,
    )?;
    // Each such request fans out to every actor: only a few run at once,
    // so a flood of them cannot turn this node into a flood of requests.
    let Ok(_turn) = CLUSTER_GATHERS.try_acquire() else {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{MAX_CLUSTER_GATHERS} cluster status requests are already in progress; retry"),
        ));
    };
    let own = admin::status_of(&node).await;
    Ok(axum::Json(cluster_of(own, timeout, &access.client_tls).await).into_response())
}

/// The cluster as the node whose status is `own` is configured: every actor
/// of its config, leaving ones too, asked for its status (see [`gather`]).
pub async fn cluster_of(own: Status, timeout: Duration, tls: &ClientTls) -> ClusterStatus {
    let mut actors: Vec<(String, bool)> = own
        .config
        .actors
        .iter()
        .map(|a| (a.clone(), false))
        .collect();
    actors.extend(own.config.leaving.iter().map(|l| (l.actor.clone(), true)));
    let (from, config_version, me) = (own.id, own.config.version, own.me.clone());
    ClusterStatus {
        from,
        config_version,
        nodes: gather(&actors, me.as_deref(), Some(own), timeout, tls).await,
    }
}

/// Asks each actor (with whether it is leaving) for its `/status`, all at
/// once, each within `timeout`; `me` is the actor whose status is already
/// known as `own` (it is not asked again). Rows keep the order of `actors`.
pub async fn gather(
    actors: &[(String, bool)],
    me: Option<&str>,
    own: Option<Status>,
    timeout: Duration,
    tls: &ClientTls,
) -> Vec<ClusterNode> {
    let own = own.filter(|_| me.is_some());
    let names: Vec<String> = actors.iter().map(|(a, _)| a.clone()).collect();
    let answers = fan_out(&names, me, paths::STATUS, timeout, tls).await;
    actors
        .iter()
        .zip(answers)
        .map(|((actor, leaving), answer)| {
            let mut row = ClusterNode {
                actor: actor.clone(),
                me: me == Some(actor.as_str()),
                leaving: *leaving,
                ..ClusterNode::default()
            };
            match answer {
                Some(Ok((status, rtt))) => {
                    row.reachable = true;
                    row.rtt_ms = Some(rtt.as_secs_f64() * 1000.0);
                    row.status = Some(status);
                }
                Some(Err(e)) => row.error = Some(e),
                None => {
                    row.reachable = own.is_some();
                    row.status = own.clone();
                }
            }
            row
        })
        .collect()
}

/// Asks each of `actors` but `me` for `path`, all at once (at most
/// [`MAX_CLUSTER_ASKS`] at a time), each within `timeout`: the answer and
/// how long it took, or why there is none, in the order of `actors`
/// (`None` for `me`).
async fn fan_out<T: serde::de::DeserializeOwned + Send + 'static>(
    actors: &[String],
    me: Option<&str>,
    path: &'static str,
    timeout: Duration,
    tls: &ClientTls,
) -> Vec<Option<Result<(T, Duration), String>>> {
    let mut out: Vec<Option<Result<(T, Duration), String>>> = actors
        .iter()
        .map(|a| (me != Some(a.as_str())).then(|| Err(format!("no answer within {timeout:?}"))))
        .collect();
    let mut asks = JoinSet::new();
    let turns = Arc::new(tokio::sync::Semaphore::new(MAX_CLUSTER_ASKS));
    for (i, actor) in actors.iter().enumerate() {
        if out[i].is_none() {
            continue;
        }
        let (actor, turns, tls) = (actor.clone(), turns.clone(), tls.clone());
        asks.spawn(async move {
            let _turn = turns.acquire_owned().await;
            (i, ask(&actor, path, timeout, &tls).await)
        });
    }
    // Each ask ends within its own deadline; this bound only guards it.
    let _ = tokio::time::timeout(timeout + Duration::from_secs(1), async {
        while let Some(done) = asks.join_next().await {
            if let Ok((i, answer)) = done {
                out[i] = Some(answer);
            }
        }
    })
    .await;
    out
}

/// One actor's answer to `GET path` and how long it took.
async fn ask<T: serde::de::DeserializeOwned>(
    actor: &str,
    path: &str,
    timeout: Duration,
    tls: &ClientTls,
) -> Result<(T, Duration), String> {
    let scheme = if tls.is_some() { "https" } else { "http" };
    let base = parse_node(&format!("{scheme}://{actor}"))?;
    let req = Req {
        method: hyper::Method::GET,
        path: path.into(),
        headers: Vec::new(),
        body: Vec::new(),
        content_type: "text/plain; charset=utf-8",
    };
    let started = Instant::now();
    let answer = send(&req, &format!("{base}{path}"), timeout, tls)
        .await
        .map_err(|e| match e {
            SendError::Invalid(reason) | SendError::Unreachable { reason, .. } => reason,
        })?;
    let rtt = started.elapsed();
    if answer.status != 200 {
        return Err(format!("{path} answered {}", answer.status));
    }
    // The error names where the answer went wrong, not what it said.
    let value = serde_json::from_str(&answer.body).map_err(|e| {
        format!(
            "{path} answered something else than expected ({:?} error at line {} column {})",
            e.classify(),
            e.line(),
            e.column()
        )
    })?;
    Ok((value, rtt))
}

/// `GET /status/cluster/history[?timeout=2s]`: every actor's
/// `/status/history` (this node's own read here), in config order, so the
/// console can chart each node.
pub(super) async fn cluster_history(
    State(node): State<Arc<Node>>,
    State(access): State<Arc<Access>>,
    req: Request,
) -> Result<Response, ApiError> {
    let timeout = timeout_param(
        req.uri().query(),
        DEFAULT_CLUSTER_TIMEOUT,
        MAX_CLUSTER_TIMEOUT,
    )?;
    let Ok(_turn) = CLUSTER_GATHERS.try_acquire() else {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{MAX_CLUSTER_GATHERS} cluster requests are already in progress; retry"),
        ));
    };
    let m = node.membership();
    // The config's actors, then the leavers it still hears from.
    let mut actors: Vec<String> = m.config.actors.iter().map(|a| a.to_string()).collect();
    for a in m.read_set() {
        let a = a.to_string();
        if !actors.contains(&a) {
            actors.push(a);
        }
    }
    let me = node.me().map(|a| a.to_string());
    let own = history_of(node.identity().node, &node.history());
    let answers = fan_out::<StatusHistory>(
        &actors,
        me.as_deref(),
        paths::STATUS_HISTORY,
        timeout,
        &access.client_tls,
    )
    .await;
    let nodes = actors
        .into_iter()
        .zip(answers)
        .map(|(actor, answer)| {
            let me = me.as_deref() == Some(actor.as_str());
            match answer {
                None => NodeHistory {
                    actor,
                    me,
                    error: None,
                    history: Some(own.clone()),
                },
                Some(Ok((h, _))) => NodeHistory {
                    actor,
                    me,
                    error: None,
                    history: Some(h),
                },
                Some(Err(e)) => NodeHistory {
                    actor,
                    me,
                    error: Some(e),
                    history: None,
                },
            }
        })
        .collect();
    Ok(axum::Json(ClusterHistory {
        from: node.identity().node,
        nodes,
    })
    .into_response())
}
