//! The demo's requests to its nodes, each to a node's own port and each
//! with a deadline, through the one HTTP exchange (`tally_client::exchange`):
//! plain HTTP, or HTTPS trusting the demo's CA when it runs with `--tls`.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::api::types::{ErrorBody, IDEMPOTENCY_HEADER, Status, paths};
use crate::tls::ClientTls;
use tally_client::exchange;

/// Deadline of a local read.
const READ_TIMEOUT: Duration = Duration::from_secs(1);

/// How the demo reaches its nodes: `http://`, or `https://` verified
/// against one CA. Cheap to clone (the TLS config is shared).
#[derive(Clone, Debug)]
pub struct Client {
    tls: ClientTls,
}

impl Client {
    /// Plain HTTP.
    pub fn plain() -> Client {
        Client {
            tls: ClientTls::None,
        }
    }

    /// HTTPS, trusting the CA certificate (PEM) at `ca`.
    pub fn tls(ca: &Path) -> Result<Client, String> {
        let config = crate::tls::client_config(ca).map_err(|e| e.to_string())?;
        Ok(Client {
            tls: ClientTls::Fixed(config),
        })
    }

    pub fn scheme(&self) -> &'static str {
        if self.tls.is_some() { "https" } else { "http" }
    }

    /// The URL of `path` on the node listening on `addr`.
    pub fn url(&self, addr: SocketAddr, path: &str) -> String {
        format!("{}://{addr}{path}", self.scheme())
    }
}

/// A node's answer to an increment.
pub enum Reply {
    Value(u128),
    Error {
        status: u16,
        message: String,
    },
    /// The node could not be reached before anything was sent: not applied.
    NotSent(String),
    /// The request may have reached the node: it may be applied.
    NoAnswer(String),
}

pub async fn post_increment(
    client: &Client,
    listen: SocketAddr,
    name: &str,
    amount: u64,
    key: Option<&str>,
    timeout: Duration,
) -> Reply {
    match exchange(
        client,
        hyper::Method::POST,
        listen,
        &paths::counter(name),
        amount.to_string().into_bytes(),
        key,
        timeout,
    )
    .await
    {
        Ok((200, body)) => match body.trim().parse() {
            Ok(v) => Reply::Value(v),
            Err(_) => Reply::Error {
                status: 200,
                message: format!("not a number: {body}"),
            },
        },
        Ok((status, body)) => Reply::Error {
            status,
            message: error_message(&body),
        },
        Err(exchange::SendError::Unreachable {
            reason,
            maybe_sent: false,
        }) => Reply::NotSent(reason),
        Err(exchange::SendError::Unreachable { reason, .. }) => Reply::NoAnswer(reason),
        Err(exchange::SendError::Invalid(e)) => Reply::NoAnswer(e),
    }
}

pub async fn read_value(client: &Client, listen: SocketAddr, name: &str) -> Result<u128, String> {
    match http(
        client,
        hyper::Method::GET,
        listen,
        &paths::value(name),
        Vec::new(),
        None,
        READ_TIMEOUT,
    )
    .await?
    {
        (200, body) => body
            .trim()
            .parse()
            .map_err(|_| format!("not a number: {body}")),
        (status, body) => Err(format!("{status}: {}", error_message(&body))),
    }
}

/// Polls a node's `GET /status` until `ready` holds or `bound` passes.
pub async fn wait_status(
    client: &Client,
    listen: SocketAddr,
    bound: Duration,
    ready: impl Fn(&Status) -> bool,
) -> Result<Status, String> {
    let deadline = Instant::now() + bound;
    let mut last = String::from("no answer yet");
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!("not within {bound:?}; last: {last}"));
        }
        match http(
            client,
            hyper::Method::GET,
            listen,
            paths::STATUS,
            Vec::new(),
            None,
            left.min(Duration::from_secs(1)),
        )
        .await
        {
            Ok((200, body)) => match serde_json::from_str::<Status>(&body) {
                Ok(s) if ready(&s) => return Ok(s),
                Ok(s) => last = format!("self: {:?}", s.me),
                Err(e) => last = format!("unreadable status: {e}"),
            },
            Ok((status, body)) => last = format!("{status}: {}", error_message(&body)),
            Err(e) => last = e,
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The `error` of a JSON error body, else the body itself.
pub fn error_message(body: &str) -> String {
    serde_json::from_str::<ErrorBody>(body).map_or_else(|_| body.trim().to_string(), |e| e.error)
}

/// One request to a node's own port, through the one HTTP exchange (`tally_client::exchange`).
pub async fn http(
    client: &Client,
    method: hyper::Method,
    listen: SocketAddr,
    path: &str,
    body: Vec<u8>,
    idempotency_key: Option<&str>,
    timeout: Duration,
) -> Result<(u16, String), String> {
    match exchange(client, method, listen, path, body, idempotency_key, timeout).await {
        Ok(a) => Ok(a),
        Err(exchange::SendError::Invalid(e)) => Err(e),
        Err(exchange::SendError::Unreachable { reason, .. }) => Err(reason),
    }
}

async fn exchange(
    client: &Client,
    method: hyper::Method,
    listen: SocketAddr,
    path: &str,
    body: Vec<u8>,
    idempotency_key: Option<&str>,
    timeout: Duration,
) -> Result<(u16, String), exchange::SendError> {
    let req = exchange::Req {
        method,
        path: String::new(),
        headers: idempotency_key
            .map(|k| (IDEMPOTENCY_HEADER, k.to_string()))
            .into_iter()
            .collect(),
        body,
        content_type: "text/plain",
    };
    let url = client.url(listen, path);
    let a = exchange::send(&req, &url, timeout, &client.tls).await?;
    Ok((a.status, a.body))
}
