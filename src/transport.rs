//! How one node calls another: a narrow seam with an HTTP implementation.
//!
//! Every call has a deadline that covers connecting, sending and reading the
//! whole answer, so a paused or unreachable peer costs the caller one
//! timeout and never a stuck task (SPEC G6). Connections are pooled and kept
//! alive. Tests and simulations can put any other [`Transport`] behind the
//! same trait.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::sync::Semaphore;

use crate::cluster::Actor;
use crate::metrics::{Metrics, Peer};
use crate::proto::{RPC_PATH, RequestEnvelope, ResponseEnvelope, SECRET_HEADER};
use crate::tls::{ClientTls, Connector, PeerCert, speaks_for};

/// Largest internal response body accepted.
pub const MAX_RPC_BODY: usize = 64 * 1024 * 1024;
/// Most calls in flight to one peer; more fail at once instead of queueing
/// behind a peer that does not answer.
pub const MAX_IN_FLIGHT_PER_PEER: usize = 64;

#[derive(Debug, Clone, thiserror::Error)]
pub enum CallError {
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("cannot reach peer: {0}")]
    Unreachable(String),
    /// The answer's body is not kept: it is whatever answered at the
    /// peer's address, and /status must not repeat it (see `refused_reason`).
    #[error("peer answered {status}{}", refused_reason(*.status))]
    Refused { status: u16, bytes: usize },
    #[error("bad answer from peer: {0}")]
    Protocol(String),
    #[error("{MAX_IN_FLIGHT_PER_PEER} calls already in flight to this peer")]
    Busy,
}

pub type CallFuture = Pin<Box<dyn Future<Output = Result<ResponseEnvelope, CallError>> + Send>>;

/// Sends one request to one actor and waits at most `timeout` for its answer.
pub trait Transport: Send + Sync + 'static {
    fn call(&self, to: &Actor, req: &RequestEnvelope, timeout: Duration) -> CallFuture;
}

/// Pooled keep-alive HTTP/1.1 client, over TLS when the node has it.
#[derive(Clone)]
pub struct HttpTransport {
    client: Client<Connector, Full<Bytes>>,
    /// With TLS, every answer must come from a peer whose certificate names
    /// the node id the answer claims (see [`crate::tls::speaks_for`]).
    tls: bool,
    secret: Option<Arc<str>>,
    metrics: Metrics,
    /// One permit pool per peer; held briefly to look up or insert.
    in_flight: Arc<Mutex<HashMap<String, Arc<Semaphore>>>>,
}

impl HttpTransport {
    pub fn new(
        connect_timeout: Duration,
        secret: Option<Arc<str>>,
        metrics: Metrics,
        tls: ClientTls,
    ) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(connect_timeout));
        connector.set_nodelay(true);
        connector.set_keepalive(Some(Duration::from_secs(30)));
        let client = Client::builder(TokioExecutor::new())
            // Below the server's 10 s idle cut-off, so a pooled connection is
            // rarely reused just as the peer closes it.
            .pool_idle_timeout(Duration::from_secs(5))
            .pool_max_idle_per_host(16)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .build(Connector::new(connector, tls.clone()));
        HttpTransport {
            client,
            tls: tls.is_some(),
            secret,
            metrics,
            in_flight: Arc::default(),
        }
    }
}

impl Transport for HttpTransport {
    fn call(&self, to: &Actor, req: &RequestEnvelope, timeout: Duration) -> CallFuture {
        let client = self.client.clone();
        let scheme = if self.tls { "https" } else { "http" };
        let uri = format!("{scheme}://{to}{RPC_PATH}");
        let tls = self.tls;
        let body = serde_json::to_vec(req).expect("requests serialize");
        let secret = self.secret.clone();
        let peer = Peer {
            peer: to.to_string(),
        };
        self.metrics
            .peer_bytes_sent
            .get_or_create(&peer)
            .inc_by(body.len() as u64);
        let metrics = self.metrics.clone();
        let permits = self
            .in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(to.to_string())
            .or_insert_with(|| Arc::new(Semaphore::new(MAX_IN_FLIGHT_PER_PEER)))
            .clone();
        Box::pin(async move {
            let _permit = permits.try_acquire_owned().map_err(|_| CallError::Busy)?;
            let mut builder = hyper::Request::post(uri.as_str())
                .header(hyper::header::CONTENT_TYPE, "application/json");
            if let Some(secret) = &secret {
                builder = builder.header(SECRET_HEADER, secret.as_ref());
            }
            let request = builder
                .body(Full::new(Bytes::from(body)))
                .map_err(|e| CallError::Protocol(e.to_string()))?;
            let exchange = async {
                let resp = client
                    .request(request)
                    .await
                    .map_err(|e| CallError::Unreachable(error_chain(&e)))?;
                let status = resp.status();
                let cert = resp.extensions().get::<PeerCert>().cloned();
                let bytes = Limited::new(resp.into_body(), MAX_RPC_BODY)
                    .collect()
                    .await
                    .map_err(|e| CallError::Unreachable(e.to_string()))?
                    .to_bytes();
                metrics
                    .peer_bytes_received
                    .get_or_create(&peer)
                    .inc_by(bytes.len() as u64);
                if !status.is_success() {
                    // What a peer (or whatever answers at its address) says
                    // is not repeated: /status shows only the status.
                    return Err(CallError::Refused {
                        status: status.as_u16(),
                        bytes: bytes.len(),
                    });
                }
                let answer = crate::proto::decode_response(&bytes).map_err(|e| {
                    CallError::Protocol(format!(
                        "malformed answer ({:?} error at line {} column {})",
                        e.classify(),
                        e.line(),
                        e.column()
                    ))
                })?;
                if tls && !cert.is_some_and(|c| speaks_for(&c.0, answer.from.node)) {
                    return Err(CallError::Protocol(format!(
                        "the answer claims to come from node {}, which the peer's certificate does not name",
                        answer.from.node
                    )));
                }
                Ok(answer)
            };
            tokio::time::timeout(timeout, exchange)
                .await
                .map_err(|_| CallError::Timeout(timeout))?
        })
    }
}

/// What a refusal from a peer usually means, by status alone.
fn refused_reason(status: u16) -> &'static str {
    match status {
        400 => " (it refused the message)",
        401 => " (it needs the cluster secret)",
        403 => " (it refused this node's secret or certificate)",
        404 | 405 => " (it is not a tally node of this protocol)",
        413 => " (the message is too large for it)",
        503 => " (it is overloaded or its storage is unavailable)",
        _ => "",
    }
}

/// The causes of an error, most specific last, without a generic outer
/// message (hyper-util's "client error (Connect)") when there is a cause.
pub fn error_chain(e: &dyn std::error::Error) -> String {
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
