//! How one node calls another: a narrow seam with an HTTP implementation.
//!
//! Every call has a deadline that covers connecting, sending and reading the
//! whole answer, so a paused or unreachable peer costs the caller one
//! timeout and never a stuck task (SPEC G6). Connections are pooled and kept
//! alive. Tests and simulations can put any other [`Transport`] behind the
//! same trait.
//!
//! The HTTP transport speaks the newest protocol a peer knows (see
//! [`crate::proto`]): protocol 3 (binary) to a peer that answers it, and
//! protocol 2 (JSON) to one that does not know its route (404 or 405: a
//! node of an older version). It learns which on the first call, within
//! that call, and tries protocol 3 again every [`REPROBE`] while a peer
//! speaks only 2, so an upgraded peer is called in 3 within that time. A
//! peer known to speak 3 that stops knowing it (rolled back) fails one call
//! and is called in 2 from the next.

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
use crate::proto::{
    BINARY_TYPE, RPC_PATH, RPC_PATH_V3, RequestEnvelope, ResponseEnvelope, SECRET_HEADER, binary,
};
use crate::tls::{ClientTls, Connector, PeerCert, speaks_for};
pub use tally_client::exchange::error_chain;

/// Largest internal response body accepted.
pub const MAX_RPC_BODY: usize = 64 * 1024 * 1024;
/// Most calls in flight to one peer; more fail at once instead of queueing
/// behind a peer that does not answer.
pub const MAX_IN_FLIGHT_PER_PEER: usize = 64;
/// How long a peer that does not know protocol 3 is called in protocol 2
/// before protocol 3 is tried again.
pub const REPROBE: Duration = Duration::from_secs(30);

/// What a peer was found to speak.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Speaks {
    /// Not called yet: try protocol 3, and 2 within the same call if the
    /// peer does not know it.
    Unknown,
    /// It answered protocol 3.
    Binary,
    /// It did not know protocol 3's route; called in protocol 2 until
    /// `until`, then probed like an unknown peer.
    Json { until: tokio::time::Instant },
}

/// What a call sends: protocol 3's body, protocol 2's, or both (3 first).
struct Bodies {
    binary: Option<Vec<u8>>,
    json: Option<Vec<u8>>,
}

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
    /// What each peer speaks; held briefly to look up or update.
    speaks: Arc<Mutex<HashMap<String, Speaks>>>,
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
            speaks: Arc::default(),
        }
    }

    /// The bodies a call to `to` sends, by what it speaks.
    fn bodies(&self, to: &str, req: &RequestEnvelope) -> Bodies {
        let speaks = lock(&self.speaks).get(to).copied();
        let probe = match speaks.unwrap_or(Speaks::Unknown) {
            Speaks::Binary => false,
            Speaks::Unknown => true,
            Speaks::Json { until } if tokio::time::Instant::now() >= until => true,
            Speaks::Json { .. } => {
                return Bodies {
                    binary: None,
                    json: Some(crate::proto::encode_request_json(req)),
                };
            }
        };
        Bodies {
            binary: Some(binary::encode_request(req)),
            json: probe.then(|| crate::proto::encode_request_json(req)),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Records what `peer` was found to speak, with one log line when that changes.
fn learned(map: &Mutex<HashMap<String, Speaks>>, peer: &str, now: Speaks) {
    let before = {
        let mut map = lock(map);
        let before = map.get(peer).copied();
        if before == Some(now) {
            return;
        }
        map.insert(peer.to_string(), now);
        before
    };
    let was_json = matches!(before, Some(Speaks::Json { .. }));
    match now {
        Speaks::Binary if was_json => {
            tracing::info!(peer, "peer speaks protocol 3 (binary) again");
        }
        Speaks::Json { .. } if !was_json => tracing::info!(
            peer,
            "peer does not know protocol 3 (an older version?); calling it in protocol 2 (JSON)"
        ),
        _ => {}
    }
}

impl Transport for HttpTransport {
    fn call(&self, to: &Actor, req: &RequestEnvelope, timeout: Duration) -> CallFuture {
        let client = self.client.clone();
        let scheme = if self.tls { "https" } else { "http" };
        let peer_name = to.to_string();
        let bodies = self.bodies(&peer_name, req);
        let call = Call {
            client,
            base: format!("{scheme}://{to}"),
            tls: self.tls,
            secret: self.secret.clone(),
            metrics: self.metrics.clone(),
            peer: Peer {
                peer: peer_name.clone(),
            },
        };
        let speaks = self.speaks.clone();
        let permits = lock(&self.in_flight)
            .entry(peer_name.clone())
            .or_insert_with(|| Arc::new(Semaphore::new(MAX_IN_FLIGHT_PER_PEER)))
            .clone();
        Box::pin(async move {
            let _permit = permits.try_acquire_owned().map_err(|_| CallError::Busy)?;
            let exchange = async {
                if let Some(body) = bodies.binary {
                    match call.post(true, body).await {
                        Ok(answer) => {
                            learned(&speaks, &peer_name, Speaks::Binary);
                            return Ok(answer);
                        }
                        // No such route: a version before protocol 3. Such
                        // a node with client tokens or TLS answers an
                        // unknown path with 401 or 403 instead; if the
                        // refusal was meant, protocol 2 gets it too.
                        Err(CallError::Refused {
                            status: status @ (401 | 403 | 404 | 405),
                            bytes,
                        }) => {
                            let until = tokio::time::Instant::now() + REPROBE;
                            learned(&speaks, &peer_name, Speaks::Json { until });
                            if bodies.json.is_none() {
                                return Err(CallError::Refused { status, bytes });
                            }
                        }
                        Err(e) => return Err(e),
                    }
                }
                let body = bodies.json.expect("a call sends one body at least");
                call.post(false, body).await
            };
            tokio::time::timeout(timeout, exchange)
                .await
                .map_err(|_| CallError::Timeout(timeout))?
        })
    }
}

/// One call's means: what it needs of the transport, owned by its future.
struct Call {
    client: Client<Connector, Full<Bytes>>,
    /// `scheme://host:port`.
    base: String,
    tls: bool,
    secret: Option<Arc<str>>,
    metrics: Metrics,
    peer: Peer,
}

impl Call {
    /// Sends `body` in protocol 3 (`binary`) or 2, and decodes the answer.
    async fn post(&self, binary: bool, body: Vec<u8>) -> Result<ResponseEnvelope, CallError> {
        let (path, media) = if binary {
            (RPC_PATH_V3, BINARY_TYPE)
        } else {
            (RPC_PATH, "application/json")
        };
        let uri = format!("{}{path}", self.base);
        self.metrics
            .peer_bytes_sent
            .get_or_create(&self.peer)
            .inc_by(body.len() as u64);
        let mut builder =
            hyper::Request::post(uri.as_str()).header(hyper::header::CONTENT_TYPE, media);
        if let Some(secret) = &self.secret {
            builder = builder.header(SECRET_HEADER, secret.as_ref());
        }
        let request = builder
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| CallError::Protocol(e.to_string()))?;
        let resp = self
            .client
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
        self.metrics
            .peer_bytes_received
            .get_or_create(&self.peer)
            .inc_by(bytes.len() as u64);
        if !status.is_success() {
            // What a peer (or whatever answers at its address) says
            // is not repeated: /status shows only the status.
            return Err(CallError::Refused {
                status: status.as_u16(),
                bytes: bytes.len(),
            });
        }
        let answer = if binary {
            binary::decode_response(&bytes)
                .map_err(|e| CallError::Protocol(format!("malformed answer ({e})")))?
        } else {
            crate::proto::decode_response(&bytes).map_err(|e| {
                CallError::Protocol(format!(
                    "malformed answer ({:?} error at line {} column {})",
                    e.classify(),
                    e.line(),
                    e.column()
                ))
            })?
        };
        if self.tls && !cert.is_some_and(|c| speaks_for(&c.0, answer.from.node)) {
            return Err(CallError::Protocol(format!(
                "the answer claims to come from node {}, which the peer's certificate does not name",
                answer.from.node
            )));
        }
        Ok(answer)
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
