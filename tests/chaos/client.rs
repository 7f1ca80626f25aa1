//! The test's HTTP client: ureq with statuses as values, a deadline on
//! every request, and pooled keep-alive connections kept younger than the
//! node's idle timeout.

use std::time::{Duration, Instant};

use super::check::ReadResult;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The node answered with this status and body.
    Answer(u16, String),
    /// No answer: timeout, refused, reset. The request may or may not have been applied.
    Failed(String),
}

#[derive(Clone)]
pub struct Client {
    agent: ureq::Agent,
}

impl Default for Client {
    fn default() -> Self {
        Self::new()
    }
}

impl Client {
    pub fn new() -> Self {
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(10)))
            .max_idle_age(Duration::from_secs(4))
            .max_idle_connections_per_host(8)
            .build();
        Client {
            agent: config.into(),
        }
    }

    pub fn get(&self, url: &str, timeout: Duration) -> (Outcome, Duration) {
        let started = Instant::now();
        let result = self
            .agent
            .get(url)
            .config()
            .timeout_global(Some(timeout))
            .build()
            .call();
        (finish(result), started.elapsed())
    }

    pub fn post(&self, url: &str, body: &str, timeout: Duration) -> (Outcome, Duration) {
        self.post_keyed(url, body, None, timeout)
    }

    /// A POST with an optional `Idempotency-Key` header.
    pub fn post_keyed(
        &self,
        url: &str,
        body: &str,
        key: Option<&str>,
        timeout: Duration,
    ) -> (Outcome, Duration) {
        let started = Instant::now();
        let mut req = self.agent.post(url);
        if let Some(key) = key {
            req = req.header("Idempotency-Key", key);
        }
        let result = req
            .config()
            .timeout_global(Some(timeout))
            .build()
            .send(body);
        (finish(result), started.elapsed())
    }
}

fn finish(result: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> Outcome {
    match result {
        Ok(mut resp) => {
            let status = resp.status().as_u16();
            match resp.body_mut().read_to_string() {
                Ok(body) => Outcome::Answer(status, body),
                Err(e) => Outcome::Failed(format!("reading the body: {e}")),
            }
        }
        Err(e) => Outcome::Failed(e.to_string()),
    }
}

/// Percent-encodes a counter name as one path segment.
pub fn encode_segment(name: &str) -> String {
    let mut out = String::new();
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A counter value as the node writes it: decimal digits alone.
pub fn parse_value(body: &str) -> Option<u128> {
    if body.is_empty() || !body.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    body.parse().ok()
}

/// What a read answered, for the history: a value, a consistent read's 503
/// with its JSON parsed (`consistent`), another answer, or no answer.
pub fn read_result(outcome: Outcome, consistent: bool) -> ReadResult {
    match outcome {
        Outcome::Answer(200, body) => match parse_value(&body) {
            Some(v) => ReadResult::Value(v),
            None => ReadResult::BadAnswer(200, body),
        },
        Outcome::Answer(503, body) if consistent => {
            match serde_json::from_str::<serde_json::Value>(&body) {
                Ok(json) if json["error"].is_string() => ReadResult::Unavailable {
                    unreachable: json["unreachable"]
                        .as_array()
                        .map(|a| {
                            a.iter()
                                .map(|x| x.as_str().map(str::to_string).unwrap_or(x.to_string()))
                                .collect()
                        })
                        .unwrap_or_default(),
                    best: json["best_known_value"].as_u64().map(u128::from),
                },
                _ => ReadResult::BadAnswer(503, body),
            }
        }
        Outcome::Answer(status, body) => ReadResult::BadAnswer(status, body),
        Outcome::Failed(e) => ReadResult::Failed(e),
    }
}
