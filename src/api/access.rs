//! Who may do what, when the node has a tokens file (see [`crate::auth`]).
//!
//! Each route needs one scope, listed beside it in
//! [`ENDPOINTS`]: reads (values, consistent values, the
//! listing, a counter's JSON view) and the operator views (`/status`,
//! `/status/cluster`, `/status/history`, `/metrics`) need `read`;
//! increments `write`;
//! `POST /config` `admin`. Open to all: `/livez` and `/readyz` (probes
//! carry no token), the console's page and assets (static files; the
//! console asks for a token when its first request gets a 401), and
//! `/openapi.json` (the API's description, the same on every node). The
//! internal route takes no token: peers prove who they are with mutual TLS
//! or the cluster secret (see `admin::rpc`).
//!
//! A refusal is a 401 (no token, or not a valid one) or a 403 (a valid
//! token without the scope), with `WWW-Authenticate` and the JSON error,
//! and the connection is closed (see `json_errors`). Refusals and admin
//! actions go to the audit log, which is rate-limited.

use std::sync::Arc;
use std::time::SystemTime;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tokio::time::Instant;

use super::Access;
use super::ApiError;
use super::types::{ConnInfo, ENDPOINTS, Route};
use crate::auth::{Event, Scope};

/// The scope a request needs, or `None` for the routes open to all: the
/// scope [`ENDPOINTS`] gives the operation (`HEAD`
/// as `GET`). A method the path does not answer (a 405 to come) needs the
/// least scope of the path's operations, and an unknown path (a 404)
/// `read`, so that neither tells a client without a token more than a 401.
/// The internal routes need none: peers prove who they are otherwise.
pub fn needed(method: &Method, path: &str) -> Option<Scope> {
    let route = Route::of(path);
    if matches!(route, Route::Rpc | Route::RpcV3) {
        return None;
    }
    let template = route.template();
    let method = if *method == Method::HEAD {
        "GET"
    } else {
        method.as_str()
    };
    let on_path = || ENDPOINTS.iter().filter(|e| e.template == template);
    match on_path().find(|e| e.method == method) {
        Some(e) => e.scope,
        None => on_path()
            .map(|e| e.scope)
            .min()
            .unwrap_or(Some(Scope::Read)),
    }
}

/// Lets a request through when its token has the scope the route needs.
/// Layered only on a node with a tokens file (see `api::router`).
pub(super) async fn check(State(access): State<Arc<Access>>, req: Request, next: Next) -> Response {
    let Some(tokens) = &access.tokens else {
        return next.run(req).await;
    };
    let Some(need) = needed(req.method(), req.uri().path()) else {
        return next.run(req).await;
    };
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .map(HeaderValue::as_bytes);
    match tokens.current().check(presented, need, SystemTime::now()) {
        Ok(granted) => {
            if need == Scope::Admin {
                access.audit.record(
                    &Event::AdminAllowed {
                        token: &granted.name,
                        method: req.method().as_str(),
                        path: req.uri().path(),
                    },
                    Instant::now().into_std(),
                );
            }
            next.run(req).await
        }
        Err(denied) => {
            let client = req
                .extensions()
                .get::<ConnInfo>()
                .map(|c| c.peer)
                .unwrap_or_else(|| std::net::SocketAddr::from(([0, 0, 0, 0], 0)));
            access.audit.record(
                &Event::AuthFailed {
                    denied: &denied,
                    client,
                    method: req.method().as_str(),
                    path: req.uri().path(),
                },
                Instant::now().into_std(),
            );
            let status = StatusCode::from_u16(denied.status()).unwrap_or(StatusCode::UNAUTHORIZED);
            let mut resp = ApiError::new(status, denied.to_string()).into_response();
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(denied.www_authenticate()),
            );
            resp
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_route_needs_its_scope() {
        let get = Method::GET;
        let post = Method::POST;
        for (m, p, want) in [
            (&get, "/livez", None),
            (&get, "/readyz", None),
            (&get, "/", None),
            (&get, "/console/console.js", None),
            (&get, "/openapi.json", None),
            (&Method::HEAD, "/counter/x", Some(Scope::Read)),
            (&Method::PUT, "/counter/x", Some(Scope::Read)),
            (&get, "/config", Some(Scope::Admin)),
            (&Method::DELETE, "/livez", None),
            (&post, "/_internal/v1/rpc", None),
            (&post, "/_internal/v3/rpc", None),
            (&post, "/config", Some(Scope::Admin)),
            (&get, "/backup", Some(Scope::Admin)),
            (&post, "/restore", Some(Scope::Admin)),
            (&post, "/counter/x", Some(Scope::Write)),
            (&post, "/counters", Some(Scope::Write)),
            (&get, "/counter/x", Some(Scope::Read)),
            (&get, "/counter/x/value", Some(Scope::Read)),
            (&get, "/counter/x/consistent_value", Some(Scope::Read)),
            (&get, "/counters", Some(Scope::Read)),
            (&get, "/status", Some(Scope::Read)),
            (&get, "/status/cluster", Some(Scope::Read)),
            (&get, "/status/cluster/history", Some(Scope::Read)),
            (&get, "/status/history", Some(Scope::Read)),
            (&get, "/metrics", Some(Scope::Read)),
            (&post, "/counter/x/value", Some(Scope::Read)),
            (&get, "/nowhere", Some(Scope::Read)),
        ] {
            assert_eq!(needed(m, p), want, "{m} {p}");
        }
    }
}
