//! The backup routes (admin scope): `GET /backup`, one consistent page of
//! every counter with its components, and `POST /restore`, which merges
//! counters into the cluster through this node. What makes a page
//! consistent and a restore safe is in the node (`node/backup.rs`).

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use super::types::{
    BackupPage, MAX_RESTORE, MAX_RESTORE_BODY, RestoreAnswer, RestoreRequest, StoredCounter,
    Unavailable,
};
use super::{ApiError, query_param, query_value, read_body, timeout_param};
use crate::cluster::Actor;
use crate::crdt::GCounter;
use crate::input::validate_name;
use crate::node::{Incomplete, Node, RestoreError};
use crate::proto::{MAX_COMPONENTS_PER_PUSH, MAX_LIST};

/// `GET /backup?after=NAME&limit=N&timeout=D&without=ACTOR,...`
pub(super) async fn page(
    State(node): State<Arc<Node>>,
    req: Request,
) -> Result<Response, ApiError> {
    let query = req.uri().query();
    let after = query_param(query, "after")
        .map(query_value)
        .transpose()?
        .filter(|a| !a.is_empty());
    if let Some(a) = &after {
        validate_name(a).map_err(|e| ApiError::bad_request(format!("after: {e}")))?;
    }
    let limit = match query_param(query, "limit") {
        None => MAX_LIST,
        Some(raw) => Some(raw)
            .filter(|r| !r.is_empty() && r.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|r| r.parse::<usize>().ok())
            .filter(|n| (1..=MAX_LIST).contains(n))
            .ok_or_else(|| ApiError::bad_request(format!("limit must be 1 to {MAX_LIST}")))?,
    };
    let without = match query_param(query, "without") {
        None => Vec::new(),
        Some(raw) => query_value(raw)?
            .split(',')
            .filter(|a| !a.trim().is_empty())
            .map(|a| {
                Actor::parse(a.trim())
                    .map_err(|e| ApiError::bad_request(format!("without: {a:?}: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?,
    };
    let settings = node.settings();
    let timeout = timeout_param(
        query,
        settings.consistent_timeout,
        settings.max_consistent_timeout,
    )?;
    match node
        .reads()
        .consistent_page(after.as_deref(), limit, timeout, without.clone())
        .await
    {
        Ok(page) => Ok(axum::Json(BackupPage {
            counters: page
                .counters
                .into_iter()
                .map(|(name, c)| StoredCounter {
                    components: (&c).into(),
                    name,
                })
                .collect(),
            next: page.next,
            without: without.iter().map(Actor::to_string).collect(),
        })
        .into_response()),
        Err(e) => Ok(unavailable(e)),
    }
}

/// `POST /restore` with `{"counters": [{"name": ..., "components": [...]}]}`.
pub(super) async fn restore(
    State(node): State<Arc<Node>>,
    req: Request,
) -> Result<Response, ApiError> {
    let settings = node.settings();
    let timeout = timeout_param(
        req.uri().query(),
        settings.consistent_timeout,
        settings.max_consistent_timeout,
    )?;
    let bytes = read_body(req.into_body(), MAX_RESTORE_BODY).await?;
    let body: RestoreRequest = serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::bad_request(format!(
            "not JSON of the form {{\"counters\": [{{\"name\": ..., \"components\": \
             [{{\"node\": ..., \"incarnation\": ..., \"count\": ...}}]}}]}}: {e}"
        ))
    })?;
    let counters = checked(body.counters)?;
    match node.reads().restore(counters, timeout).await {
        Ok(done) => Ok(axum::Json(RestoreAnswer {
            counters: done.counters,
            changed: done.changed,
        })
        .into_response()),
        Err(RestoreError::Incomplete(e)) => Ok(unavailable(e)),
        Err(e @ RestoreError::RaisesOwner { .. }) => {
            Err(ApiError::new(StatusCode::CONFLICT, e.to_string()))
        }
        Err(RestoreError::Store(e)) => Err(e.into()),
    }
}

/// The counters of a restore, believed only once checked (G11): at most
/// [`MAX_RESTORE`], valid names, components bounded as in a push.
fn checked(counters: Vec<StoredCounter>) -> Result<Vec<(String, GCounter)>, ApiError> {
    if counters.len() > MAX_RESTORE {
        return Err(ApiError::bad_request(format!(
            "at most {MAX_RESTORE} counters per restore, not {}",
            counters.len()
        )));
    }
    let components: usize = counters.iter().map(|c| c.components.len()).sum();
    if components > MAX_COMPONENTS_PER_PUSH {
        return Err(ApiError::bad_request(format!(
            "at most {MAX_COMPONENTS_PER_PUSH} components per restore, not {components}"
        )));
    }
    counters
        .into_iter()
        .map(|c| {
            validate_name(&c.name)
                .map_err(|e| ApiError::bad_request(format!("{:?}: {e}", c.name)))?;
            Ok((c.name, c.components.into_iter().collect()))
        })
        .collect()
}

/// 503 naming the nodes not heard from.
fn unavailable(e: Incomplete) -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        axum::Json(Unavailable {
            error: e.reason,
            unreachable: e.unreachable.iter().map(|a| a.to_string()).collect(),
            best_known_value: e.best_known_value,
        }),
    )
        .into_response()
}
