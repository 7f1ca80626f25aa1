//! One HTTP exchange with a node's public routes: a request with a deadline
//! over the whole exchange, and the node address it goes to. [`Client`]
//! and the command-line client send every request through it, and a node
//! uses it to gather its peers' `/status` for `GET /status/cluster`.
//!
//! [`Client`]: crate::Client

use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper::header::{CONTENT_TYPE, HeaderName, HeaderValue};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::tls::{ClientTls, Connector};

/// Largest answer read from a node.
const MAX_ANSWER: usize = 64 * 1024 * 1024;

/// Normalises `--node`: `http://host:port[/prefix]`, `https://...`,
/// `host:port`, `[v6]:port` or a bare host (port 7777 implied, as for
/// actors; an `http://` URL without a port means port 80, `https://` 443). Returns the base URL without a trailing slash.
pub fn parse_node(raw: &str) -> Result<String, String> {
    let raw = raw.trim();
    if raw.is_empty() {
        return Err("the node address is empty".into());
    }
    let (scheme, with_scheme, rest) = match raw.split_once("://") {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("http") => ("http", true, rest),
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("https") => ("https", true, rest),
        Some((scheme, _)) => {
            return Err(format!(
                "only http:// and https:// nodes are supported, not {scheme}://"
            ));
        }
        None => ("http", false, raw),
    };
    let (authority, path) = match rest.find(['/', '?', '#']) {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    if path.contains(['?', '#']) {
        return Err(format!("{raw:?}: a node address has no query or fragment"));
    }
    if authority.is_empty() {
        return Err(format!("{raw:?} has no host"));
    }
    if authority.contains('@') {
        return Err(format!(
            "{raw:?}: user names in the node address are not supported"
        ));
    }
    let has_port = if authority.starts_with('[') {
        if !authority.contains(']') {
            return Err(format!("{raw:?}: unclosed '[' in the IPv6 address"));
        }
        authority.contains("]:")
    } else {
        match authority.matches(':').count() {
            0 => false,
            1 => true,
            _ => {
                return Err(format!(
                    "{raw:?}: write an IPv6 address in brackets, e.g. [::1]:7777"
                ));
            }
        }
    };
    let authority = if has_port || with_scheme {
        authority.to_string()
    } else {
        format!("{authority}:7777")
    };
    let base = format!("{scheme}://{authority}{}", path.trim_end_matches('/'));
    let uri: hyper::Uri = base
        .parse()
        .map_err(|e| format!("{raw:?} is not a valid node address: {e}"))?;
    if uri.host().is_none_or(str::is_empty) {
        return Err(format!("{raw:?} has no host"));
    }
    if has_port {
        match uri.port_u16() {
            Some(p) if p != 0 => {}
            _ => return Err(format!("{raw:?}: the port must be 1 to 65535")),
        }
    }
    Ok(base)
}

/// A request to a node, relative to its base URL.
#[derive(Debug)]
pub struct Req {
    pub method: hyper::Method,
    pub path: String,
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
    pub content_type: &'static str,
}

/// A node's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    pub body: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendError {
    /// The request could not be built, or the answer was too large.
    Invalid(String),
    /// No answer: the node is down, unreachable or too slow. `maybe_sent`
    /// when the request may have reached it.
    Unreachable { reason: String, maybe_sent: bool },
}

/// Sends one request to `url` and reads the whole answer, all within
/// `timeout`; an `https://` URL goes over TLS with `tls`.
pub async fn send(
    req: &Req,
    url: &str,
    timeout: Duration,
    tls: &ClientTls,
) -> Result<Answer, SendError> {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .build(Connector::new(HttpConnector::new(), tls.clone()));
    let mut builder = hyper::Request::builder()
        .method(req.method.clone())
        .uri(url)
        .header(CONTENT_TYPE, req.content_type);
    for (name, value) in &req.headers {
        let value = HeaderValue::from_str(value)
            .map_err(|_| SendError::Invalid(format!("{name} is not a valid header value")))?;
        builder = builder.header(HeaderName::from_static(name), value);
    }
    let request = builder
        .body(Full::new(Bytes::from(req.body.clone())))
        .map_err(|e| SendError::Invalid(format!("cannot build a request for {url}: {e}")))?;
    let exchange = async {
        let resp = client.request(request).await.map_err(|e| {
            let maybe_sent = !e.is_connect();
            SendError::Unreachable {
                reason: error_chain(&e),
                maybe_sent,
            }
        })?;
        let status = resp.status().as_u16();
        let bytes = Limited::new(resp.into_body(), MAX_ANSWER)
            .collect()
            .await
            .map_err(|e| {
                if e.is::<http_body_util::LengthLimitError>() {
                    SendError::Invalid(format!("the answer is larger than {MAX_ANSWER} bytes"))
                } else {
                    SendError::Unreachable {
                        reason: format!("reading the answer: {e}"),
                        maybe_sent: true,
                    }
                }
            })?
            .to_bytes();
        Ok(Answer {
            status,
            body: String::from_utf8_lossy(&bytes).into_owned(),
        })
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| SendError::Unreachable {
            reason: format!("no answer within {timeout:?}"),
            maybe_sent: true,
        })?
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_addresses_normalise() {
        let ok = [
            ("http://127.0.0.1:7777", "http://127.0.0.1:7777"),
            ("http://127.0.0.1:7777/", "http://127.0.0.1:7777"),
            ("127.0.0.1:7701", "http://127.0.0.1:7701"),
            ("localhost", "http://localhost:7777"),
            ("10.0.0.1", "http://10.0.0.1:7777"),
            ("[::1]:7777", "http://[::1]:7777"),
            ("[::1]", "http://[::1]:7777"),
            ("HTTP://example.com", "http://example.com"),
            ("http://proxy:80/tally/", "http://proxy:80/tally"),
            ("https://127.0.0.1:7777", "https://127.0.0.1:7777"),
            ("HTTPS://example.com", "https://example.com"),
        ];
        for (raw, want) in ok {
            assert_eq!(parse_node(raw).as_deref(), Ok(want), "{raw}");
        }
        for bad in [
            "", "ftp://x", "::1", "http://", "x:0", "x:99999", "x:port", "u@x:1", "x:1?q", "[::1",
            "a b:1",
        ] {
            assert!(parse_node(bad).is_err(), "{bad:?} should be refused");
        }
    }
}
