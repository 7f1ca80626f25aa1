//! [`Client`]: increments that are applied once however often they are
//! retried, reads that fail over, and consistent reads whose 503 is a
//! typed error.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::ClientConfig;
use serde::de::DeserializeOwned;
use tokio::time::Instant;

use crate::exchange::{Answer, Req, SendError, parse_node, send};
use crate::tls::{ClientTls, client_config};
use crate::types::{
    BatchAnswer, BatchItem, BatchRequest, CounterView, IDEMPOTENCY_HEADER, NamedValue, Status,
    Unavailable, encode_query, paths,
};

/// How long an operation may take, all attempts together, unless
/// [`Builder::timeout`] says otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(15);
/// The longest pause between two attempts.
const MAX_PAUSE: Duration = Duration::from_secs(1);

/// Why an operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// Bad input, caught before anything was sent (a node address, a CA
    /// file, a request that cannot be built).
    #[error("{0}")]
    Invalid(String),
    /// No node answered, and nothing was applied.
    #[error("no node could be reached: {0}")]
    Unreachable(String),
    /// The increment reached `node` and may have been applied there; no
    /// answer came before the deadline. Retrying with the same key on the
    /// same node ([`Client::increment_with_key`]) applies it at most once.
    #[error(
        "the increment may or may not have been applied on {node} ({reason}); \
         retry there with the key {key} to apply it once"
    )]
    Uncertain {
        node: String,
        key: String,
        reason: String,
    },
    /// A node refused the request: `status` and its `{"error": ...}`.
    #[error("{node} answered {status}: {message}")]
    Refused {
        node: String,
        status: u16,
        message: String,
    },
    /// A consistent read could not hear from every node of the cluster by
    /// its deadline (the node's 503).
    #[error("{message} (could not hear from {}; best known value {best_known_value})", unreachable.join(", "))]
    Incomplete {
        message: String,
        /// The nodes it could not hear from.
        unreachable: Vec<String>,
        /// The value from the nodes it heard from.
        best_known_value: u128,
    },
}

/// An acknowledged increment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Incremented {
    /// The node's local value after the increment.
    pub value: u128,
    /// The node that applied it.
    pub node: String,
}

/// Builds a [`Client`].
#[derive(Debug, Clone)]
pub struct Builder {
    nodes: Vec<String>,
    token: Option<String>,
    tls: ClientTls,
    timeout: Duration,
}

impl Builder {
    /// A node to talk to: `http://HOST:PORT`, `https://HOST:PORT`,
    /// `HOST:PORT`, `[V6]:PORT` or `HOST` (port 7777). Nodes are tried in
    /// the order given.
    pub fn node(mut self, address: &str) -> Result<Builder, Error> {
        self.nodes
            .push(parse_node(address).map_err(Error::Invalid)?);
        Ok(self)
    }

    /// A client token, sent as `Authorization: Bearer`.
    pub fn token(mut self, token: impl Into<String>) -> Builder {
        self.token = Some(token.into());
        self
    }

    /// Trust the CA bundle (PEM) at `path` for `https://` nodes.
    pub fn ca_file(mut self, path: impl AsRef<Path>) -> Result<Builder, Error> {
        let config = client_config(path.as_ref()).map_err(|e| Error::Invalid(e.to_string()))?;
        self.tls = ClientTls::Fixed(config);
        Ok(self)
    }

    /// A TLS config of your own for `https://` nodes.
    pub fn tls_config(mut self, config: Arc<ClientConfig>) -> Builder {
        self.tls = ClientTls::Fixed(config);
        self
    }

    /// How long one operation may take, its retries included
    /// [default: 15 s].
    pub fn timeout(mut self, timeout: Duration) -> Builder {
        self.timeout = timeout;
        self
    }

    pub fn build(self) -> Result<Client, Error> {
        if self.nodes.is_empty() {
            return Err(Error::Invalid("a client needs at least one node".into()));
        }
        if self.timeout.is_zero() {
            return Err(Error::Invalid("the timeout must be above zero".into()));
        }
        Ok(Client {
            nodes: self.nodes,
            token: self.token,
            tls: self.tls,
            timeout: self.timeout,
        })
    }
}

/// A client of a tally cluster. Cheap to clone; every method is safe to
/// call from many tasks at once.
#[derive(Debug, Clone)]
pub struct Client {
    nodes: Vec<String>,
    token: Option<String>,
    tls: ClientTls,
    timeout: Duration,
}

impl Client {
    pub fn builder() -> Builder {
        Builder {
            nodes: Vec::new(),
            token: None,
            tls: ClientTls::None,
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// A fresh idempotency key: 128 random bits.
    pub fn new_key() -> String {
        format!("tc-{:032x}", fastrand::u128(..))
    }

    /// Adds `amount` to `name`, exactly once (see [`Client::increment_with_key`]).
    pub async fn increment(&self, name: &str, amount: u64) -> Result<Incremented, Error> {
        self.increment_with_key(name, amount, &Client::new_key())
            .await
    }

    /// Adds `amount` to `name` with the idempotency key `key`. While no
    /// answer comes, the same request goes to the same node again until the
    /// deadline: the node applies it once and answers every retry alike. It
    /// goes to the next node only when it cannot have reached the first
    /// (the connection failed); a node that answered 503 (its storage is
    /// unavailable, or it is shutting down) applied nothing and is retried
    /// too. At the deadline without an answer: [`Error::Uncertain`], with
    /// the key to retry with.
    pub async fn increment_with_key(
        &self,
        name: &str,
        amount: u64,
        key: &str,
    ) -> Result<Incremented, Error> {
        let req = self.request(
            hyper::Method::POST,
            paths::counter(name),
            amount.to_string().into_bytes(),
            Some(key),
        );
        let (node, answer) = self.write(&req, key).await?;
        let value = digits(&node, &answer)?;
        Ok(Incremented { value, node })
    }

    /// Adds each amount to its name in one commit (at most 1000), exactly
    /// once, like [`Client::increment`]; the values after it, in order.
    pub async fn increment_batch(&self, items: &[(&str, u64)]) -> Result<Vec<NamedValue>, Error> {
        let body = BatchRequest {
            increments: items
                .iter()
                .map(|(name, amount)| BatchItem {
                    name: name.to_string(),
                    amount: *amount,
                })
                .collect(),
        };
        let key = Client::new_key();
        let req = self.request(
            hyper::Method::POST,
            paths::COUNTERS.to_string(),
            serde_json::to_vec(&body).map_err(|e| Error::Invalid(e.to_string()))?,
            Some(&key),
        );
        let (node, answer) = self.write(&req, &key).await?;
        Ok(json::<BatchAnswer>(&node, &answer)?.values)
    }

    /// `name`'s value on the first node that answers (0 if never seen).
    pub async fn value(&self, name: &str) -> Result<u128, Error> {
        let req = self.request(hyper::Method::GET, paths::value(name), Vec::new(), None);
        let (node, answer) = self.read(&req).await?;
        digits(&node, &answer)
    }

    /// `name`'s value across the cluster: every increment any node
    /// acknowledged before the call, heard from every node within the
    /// node's own deadline.
    pub async fn consistent_value(&self, name: &str) -> Result<u128, Error> {
        let deadline = server_deadline(self.timeout);
        let path = format!(
            "{}?timeout={}ms",
            paths::consistent_value(name),
            deadline.as_millis()
        );
        let req = self.request(hyper::Method::GET, path, Vec::new(), None);
        let (node, answer) = self.read(&req).await?;
        digits(&node, &answer)
    }

    /// `name` with its components, as one node holds it.
    pub async fn counter(&self, name: &str) -> Result<CounterView, Error> {
        let req = self.request(hyper::Method::GET, paths::counter(name), Vec::new(), None);
        let (node, answer) = self.read(&req).await?;
        json(&node, &answer)
    }

    /// The first answering node's `/status`.
    pub async fn status(&self) -> Result<Status, Error> {
        let req = self.request(
            hyper::Method::GET,
            paths::STATUS.to_string(),
            Vec::new(),
            None,
        );
        let (node, answer) = self.read(&req).await?;
        json(&node, &answer)
    }

    /// Names after `after` starting with `prefix`, with one node's values:
    /// a page of at most `limit`, and where the next starts.
    pub async fn list(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<crate::types::Listing, Error> {
        let mut path = format!("{}?limit={limit}", paths::COUNTERS);
        if !prefix.is_empty() {
            path.push_str(&format!("&prefix={}", encode_query(prefix)));
        }
        if let Some(a) = after {
            path.push_str(&format!("&after={}", encode_query(a)));
        }
        let req = self.request(hyper::Method::GET, path, Vec::new(), None);
        let (node, answer) = self.read(&req).await?;
        json(&node, &answer)
    }

    fn request(
        &self,
        method: hyper::Method,
        path: String,
        body: Vec<u8>,
        key: Option<&str>,
    ) -> Req {
        let mut headers = Vec::new();
        if let Some(token) = &self.token {
            headers.push(("authorization", format!("Bearer {token}")));
        }
        if let Some(key) = key {
            headers.push((IDEMPOTENCY_HEADER, key.to_string()));
        }
        let content_type = if body_is_json(&body) {
            "application/json"
        } else {
            "text/plain; charset=utf-8"
        };
        Req {
            method,
            path,
            headers,
            body,
            content_type,
        }
    }

    /// A read on the first node that answers; a node that cannot be
    /// reached or answers 5xx (but a consistent read's 503) is passed over.
    async fn read(&self, req: &Req) -> Result<(String, Answer), Error> {
        let deadline = Instant::now() + self.timeout;
        let mut why = Vec::new();
        for node in &self.nodes {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            match send(req, &format!("{node}{}", req.path), left, &self.tls).await {
                Ok(a) if a.status == 503 && is_incomplete(&a) => return Ok((node.clone(), a)),
                Ok(a) if a.status >= 500 => why.push(format!("{node}: {}", message(&a))),
                Ok(a) => return Ok((node.clone(), a)),
                Err(SendError::Invalid(e)) => return Err(Error::Invalid(e)),
                Err(SendError::Unreachable { reason, .. }) => why.push(format!("{node}: {reason}")),
            }
        }
        Err(Error::Unreachable(why.join("; ")))
    }

    /// A write with an idempotency key: see [`Client::increment_with_key`].
    async fn write(&self, req: &Req, key: &str) -> Result<(String, Answer), Error> {
        let deadline = Instant::now() + self.timeout;
        let mut why = Vec::new();
        for node in &self.nodes {
            let url = format!("{node}{}", req.path);
            let mut pause = Duration::from_millis(50);
            let mut reached = false;
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    if reached {
                        return Err(Error::Uncertain {
                            node: node.clone(),
                            key: key.to_string(),
                            reason: why.pop().unwrap_or_default(),
                        });
                    }
                    return Err(Error::Unreachable(why.join("; ")));
                }
                match send(req, &url, left, &self.tls).await {
                    Ok(a) if a.status == 503 => why.push(format!("{node}: {}", message(&a))),
                    Ok(a) => return Ok((node.clone(), a)),
                    Err(SendError::Invalid(e)) => return Err(Error::Invalid(e)),
                    Err(SendError::Unreachable { reason, maybe_sent }) => {
                        why.push(format!("{node}: {reason}"));
                        reached |= maybe_sent;
                        if !reached {
                            // It never got there: the next node may take it.
                            break;
                        }
                    }
                }
                let left = deadline.saturating_duration_since(Instant::now());
                tokio::time::sleep(pause.min(left)).await;
                pause = (pause * 2).min(MAX_PAUSE);
            }
        }
        Err(Error::Unreachable(why.join("; ")))
    }
}

/// The deadline to ask a node for, a little under the client's own, so the
/// node's 503 arrives before the client gives up.
pub fn server_deadline(client: Duration) -> Duration {
    let margin = (client / 5).min(Duration::from_secs(1));
    (client - margin).max(Duration::from_millis(1))
}

fn body_is_json(body: &[u8]) -> bool {
    body.first() == Some(&b'{')
}

fn is_incomplete(a: &Answer) -> bool {
    serde_json::from_str::<Unavailable>(&a.body).is_ok()
}

/// The `error` of a JSON error body, or the body.
fn message(a: &Answer) -> String {
    serde_json::from_str::<serde_json::Value>(&a.body)
        .ok()
        .and_then(|v| v.get("error")?.as_str().map(str::to_string))
        .unwrap_or_else(|| format!("{} {}", a.status, a.body))
}

fn refused(node: &str, a: &Answer) -> Error {
    if a.status == 503
        && let Ok(u) = serde_json::from_str::<Unavailable>(&a.body)
    {
        return Error::Incomplete {
            message: u.error,
            unreachable: u.unreachable,
            best_known_value: u.best_known_value,
        };
    }
    Error::Refused {
        node: node.to_string(),
        status: a.status,
        message: message(a),
    }
}

fn digits(node: &str, a: &Answer) -> Result<u128, Error> {
    if a.status != 200 {
        return Err(refused(node, a));
    }
    a.body.parse().map_err(|_| Error::Refused {
        node: node.to_string(),
        status: a.status,
        message: format!("not a value: {:?}", a.body),
    })
}

fn json<T: DeserializeOwned>(node: &str, a: &Answer) -> Result<T, Error> {
    if a.status != 200 {
        return Err(refused(node, a));
    }
    serde_json::from_str(&a.body).map_err(|e| Error::Refused {
        node: node.to_string(),
        status: a.status,
        message: format!("unexpected answer: {e}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_needs_a_node_and_a_valid_address() {
        assert!(matches!(Client::builder().build(), Err(Error::Invalid(_))));
        assert!(matches!(
            Client::builder().node("ftp://x"),
            Err(Error::Invalid(_))
        ));
        let c = Client::builder().node("10.0.0.1").unwrap().build().unwrap();
        assert_eq!(c.nodes, ["http://10.0.0.1:7777"]);
    }

    #[test]
    fn keys_are_fresh_and_valid() {
        let (a, b) = (Client::new_key(), Client::new_key());
        assert_ne!(a, b);
        assert!(a.len() <= 128 && a.bytes().all(|b| b.is_ascii_graphic()));
    }

    #[test]
    fn a_consistent_reads_503_is_typed() {
        let a = Answer {
            status: 503,
            body:
                r#"{"error":"could not hear","unreachable":["10.0.0.3:7777"],"best_known_value":7}"#
                    .into(),
        };
        assert_eq!(
            digits("n", &a),
            Err(Error::Incomplete {
                message: "could not hear".into(),
                unreachable: vec!["10.0.0.3:7777".into()],
                best_known_value: 7,
            })
        );
        let b = Answer {
            status: 400,
            body: r#"{"error":"bad name"}"#.into(),
        };
        assert!(matches!(
            digits("n", &b),
            Err(Error::Refused { status: 400, .. })
        ));
    }

    /// An unreachable node that was never reached is passed over; with
    /// none left, the error says so and nothing is uncertain.
    #[tokio::test]
    async fn an_increment_no_node_received_is_not_uncertain() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let c = Client::builder()
            .node(&format!("127.0.0.1:{port}"))
            .unwrap()
            .timeout(Duration::from_millis(500))
            .build()
            .unwrap();
        assert!(matches!(
            c.increment("x", 1).await,
            Err(Error::Unreachable(_))
        ));
    }
}
