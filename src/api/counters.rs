//! The counter routes: increments (one or a batch), local and consistent
//! reads, the JSON view of one counter, and the listing.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::types::{
    BatchAnswer, BatchRequest, CounterView, DEFAULT_PAGE, IDEMPOTENCY_HEADER, Listing,
    MAX_BATCH_ITEMS, MAX_BODY, MAX_PAGE, NamedValue, REPLAYED_HEADER, Route, Unavailable,
    allowed_methods, paths,
};
use super::{ApiError, query_param, query_value, read_body, text, timeout_param};
use crate::input::{self, parse_amount, validate_key, validate_name};
use crate::node::{Incomplete, Node};
use crate::storage::Incremented;

/// Percent-decodes one path segment into a valid counter name.
fn decode_name(raw: &str) -> Result<String, ApiError> {
    input::decode_name(raw).map_err(ApiError::bad_request)
}

/// Every path under `/counter/` (and every unknown path). The methods each
/// answers are those [`ENDPOINTS`](super::types::ENDPOINTS) lists.
pub(super) async fn counter_routes(
    State(node): State<Arc<Node>>,
    req: Request,
) -> Result<Response, ApiError> {
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    let reads = method == Method::GET || method == Method::HEAD;
    let allow = |template: &str| -> Result<Response, ApiError> {
        let methods = allowed_methods(template);
        let mut resp = ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{method} is not allowed on {path}; use {methods}"),
        )
        .into_response();
        if let Ok(value) = header::HeaderValue::from_str(&methods) {
            resp.headers_mut().insert(header::ALLOW, value);
        }
        Ok(resp)
    };
    match Route::of(&path) {
        Route::Counter(raw) if reads => {
            let name = decode_name(raw)?;
            Ok(axum::Json(counter_view(&name, &node)).into_response())
        }
        Route::Counter(raw) if method == Method::POST => {
            increment(&node, decode_name(raw)?, req).await
        }
        Route::Counter(_) => allow(paths::COUNTER),
        Route::Value(raw) if reads => Ok(text(node.store().value(&decode_name(raw)?))),
        Route::ConsistentValue(raw) if reads => {
            let timeout = read_deadline(&node, req.uri().query())?;
            consistent(&node, &decode_name(raw)?, timeout).await
        }
        Route::Value(_) => allow(paths::VALUE),
        Route::ConsistentValue(_) => allow(paths::CONSISTENT_VALUE),
        Route::BadCounterPath => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no route {path}; counter names are one path segment (encode '/' as %2F)"),
        )),
        _ => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no route {path}"),
        )),
    }
}

/// `POST /counter/<name>[?replicas=K]`.
async fn increment(node: &Arc<Node>, name: String, req: Request) -> Result<Response, ApiError> {
    let key = idempotency_key(req.headers())?;
    let replicas = replicas_param(req.uri().query())?;
    let bytes = read_body(req.into_body(), MAX_BODY).await?;
    let amount = parse_amount(&bytes).map_err(ApiError::bad_request)?;
    let done = node.increment(vec![(name, amount)], key, replicas).await?;
    Ok(replayed(text(done.values[0]), &done))
}

/// The deadline a consistent read asks for with `?timeout=`, capped.
fn read_deadline(node: &Node, query: Option<&str>) -> Result<std::time::Duration, ApiError> {
    let settings = node.settings();
    timeout_param(
        query,
        settings.consistent_timeout,
        settings.max_consistent_timeout,
    )
}

/// `GET /counter/<name>/consistent_value`.
async fn consistent(
    node: &Arc<Node>,
    name: &str,
    timeout: std::time::Duration,
) -> Result<Response, ApiError> {
    match node.reads().consistent_value(name, timeout).await {
        Ok(v) => Ok(text(v)),
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
    let mut all = headers.get_all(IDEMPOTENCY_HEADER).iter();
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

/// `GET /counter/<name>`: the counter as JSON with its components.
fn counter_view(name: &str, node: &Node) -> CounterView {
    let counter = node.store().counter(name).unwrap_or_default();
    CounterView {
        name: name.to_string(),
        value: counter.value(),
        components: (&counter).into(),
    }
}

/// `POST /counters`: many increments applied atomically in one commit.
pub(super) async fn batch_increment(
    State(node): State<Arc<Node>>,
    req: Request,
) -> Result<Response, ApiError> {
    let key = idempotency_key(req.headers())?;
    let replicas = replicas_param(req.uri().query())?;
    let bytes = read_body(req.into_body(), MAX_BODY).await?;
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

/// `GET /counters?prefix=&after=&limit=`: names in order with local values.
pub(super) async fn list(
    State(node): State<Arc<Node>>,
    req: Request,
) -> Result<Response, ApiError> {
    let query = req.uri().query();
    let prefix = query_param(query, "prefix")
        .map(query_value)
        .transpose()?
        .unwrap_or_default();
    let after = query_param(query, "after").map(query_value).transpose()?;
    let limit = match query_param(query, "limit") {
        None => DEFAULT_PAGE,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replica_counts_parse_strictly() {
        assert_eq!(replicas_param(None).unwrap(), None);
        assert_eq!(replicas_param(Some("replicas=2")).unwrap(), Some(2));
        assert_eq!(replicas_param(Some("x=1&replicas=0")).unwrap(), Some(0));
        for bad in [
            "replicas=",
            "replicas=-1",
            "replicas=a",
            "replicas=257",
            "replicas=99999999999",
        ] {
            assert!(
                replicas_param(Some(bad)).is_err(),
                "{bad:?} should be refused"
            );
        }
    }
}
