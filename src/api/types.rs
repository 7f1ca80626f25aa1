//! The public HTTP vocabulary, defined once and shared by the server
//! (`api`) and the command-line client: paths and route templates, header
//! names, limits, and every JSON body. A change here changes both sides.

use std::time::Duration;

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde::{Deserialize, Serialize};

use crate::crdt::Component;
use crate::node::Role;
use crate::proto::RPC_PATH;
use crate::replication::peer::PeerReport;
use crate::storage::HealthReport;

pub use crate::proto::SECRET_HEADER;

/// What every request of a connection carries in its extensions (the
/// server puts it there): the client's address and, over TLS, the
/// certificate it presented (already verified against the cluster's CA).
#[derive(Clone, Debug)]
pub struct ConnInfo {
    pub peer: std::net::SocketAddr,
    pub cert: Option<crate::tls::PeerCert>,
}
/// Names a request so that a retry is applied once.
pub const IDEMPOTENCY_HEADER: &str = "idempotency-key";
/// Marks an answer repeated for a known idempotency key.
pub const REPLAYED_HEADER: &str = "idempotent-replayed";

/// Largest body accepted on public routes.
pub const MAX_BODY: usize = 64 * 1024;
/// Deadline for a request body to arrive once its head has.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// Most increments in one batch.
pub const MAX_BATCH_ITEMS: usize = 1000;
/// Largest page of `GET /counters`, and the default one.
pub const MAX_PAGE: usize = 1000;
pub const DEFAULT_PAGE: usize = 100;

/// Every public path.
pub mod paths {
    /// The web console, and its script and style sheet under `/console/`.
    pub const CONSOLE: &str = "/";
    pub const CONSOLE_ASSET: &str = "/console/{asset}";
    pub const CONSOLE_ASSETS: &str = "/console/";
    pub const CONFIG: &str = "/config";
    pub const STATUS: &str = "/status";
    pub const CLUSTER_STATUS: &str = "/status/cluster";
    pub const LIVEZ: &str = "/livez";
    pub const READYZ: &str = "/readyz";
    pub const METRICS: &str = "/metrics";
    pub const COUNTERS: &str = "/counters";
    pub const COUNTER_PREFIX: &str = "/counter/";

    /// `/counter/<name>`, the name percent-encoded into one segment.
    pub fn counter(name: &str) -> String {
        format!("{COUNTER_PREFIX}{}", super::encode_name(name))
    }

    pub fn value(name: &str) -> String {
        format!("{}/value", counter(name))
    }

    pub fn consistent_value(name: &str) -> String {
        format!("{}/consistent_value", counter(name))
    }
}

/// Everything but RFC 3986 unreserved characters (`A-Z a-z 0-9 - . _ ~`).
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'~')
    .remove(b'.');
/// For the names `.` and `..`, which a proxy could otherwise normalise away.
const SEGMENT_AND_DOT: &AsciiSet = &SEGMENT.add(b'.');

/// Percent-encodes a counter name into one path segment.
pub fn encode_name(name: &str) -> String {
    if name == "." || name == ".." {
        return utf8_percent_encode(name, SEGMENT_AND_DOT).to_string();
    }
    utf8_percent_encode(name, SEGMENT).to_string()
}

/// Percent-encodes a query value.
pub fn encode_query(value: &str) -> String {
    utf8_percent_encode(value, SEGMENT).to_string()
}

/// What a request path is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route<'a> {
    Console,
    ConsoleAsset,
    Config,
    Status,
    ClusterStatus,
    Livez,
    Readyz,
    Metrics,
    Counters,
    Rpc,
    /// `/counter/<raw segment>`
    Counter(&'a str),
    Value(&'a str),
    ConsistentValue(&'a str),
    /// Under `/counter/` but more segments than a name and a verb.
    BadCounterPath,
    Unknown,
}

impl<'a> Route<'a> {
    pub fn of(path: &'a str) -> Route<'a> {
        match path {
            paths::CONSOLE => Route::Console,
            p if p.starts_with(paths::CONSOLE_ASSETS) => Route::ConsoleAsset,
            paths::CONFIG => Route::Config,
            paths::STATUS => Route::Status,
            paths::CLUSTER_STATUS => Route::ClusterStatus,
            paths::LIVEZ => Route::Livez,
            paths::READYZ => Route::Readyz,
            paths::METRICS => Route::Metrics,
            paths::COUNTERS => Route::Counters,
            RPC_PATH => Route::Rpc,
            _ => {
                let Some(rest) = path.strip_prefix(paths::COUNTER_PREFIX) else {
                    return Route::Unknown;
                };
                let mut parts = rest.split('/');
                match (parts.next(), parts.next(), parts.next()) {
                    (Some(raw), None, None) => Route::Counter(raw),
                    (Some(raw), Some("value"), None) => Route::Value(raw),
                    (Some(raw), Some("consistent_value"), None) => Route::ConsistentValue(raw),
                    _ => Route::BadCounterPath,
                }
            }
        }
    }

    /// The template of the route, so metric labels stay few.
    pub fn template(&self) -> &'static str {
        match self {
            Route::Console => paths::CONSOLE,
            Route::ConsoleAsset => paths::CONSOLE_ASSET,
            Route::Config => paths::CONFIG,
            Route::Status => paths::STATUS,
            Route::ClusterStatus => paths::CLUSTER_STATUS,
            Route::Livez => paths::LIVEZ,
            Route::Readyz => paths::READYZ,
            Route::Metrics => paths::METRICS,
            Route::Counters => paths::COUNTERS,
            Route::Rpc => RPC_PATH,
            Route::Counter(_) => "/counter/{name}",
            Route::Value(_) => "/counter/{name}/value",
            Route::ConsistentValue(_) => "/counter/{name}/consistent_value",
            Route::BadCounterPath | Route::Unknown => "other",
        }
    }
}

/// Every error body.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
}

// Bodies that carry u128 values are typed structs: serde_json writes a u128
// directly, but cannot hold one in a `serde_json::Value`.

/// A consistent read that could not hear from every node it needed (503).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Unavailable {
    pub error: String,
    pub unreachable: Vec<String>,
    pub best_known_value: u128,
}

/// The answer to `POST /config`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ConfigSummary {
    pub changed: bool,
    pub version: u64,
    pub origin: u64,
    pub actors: Vec<String>,
    #[serde(rename = "self")]
    pub me: Option<String>,
    /// Nodes that hold this config now (this node included).
    #[serde(default)]
    pub stored: Vec<String>,
    /// Nodes that did not answer yet; the config reaches them later.
    #[serde(default)]
    pub pending: Vec<String>,
    /// Nodes that left the config and whether each handed off what it held.
    #[serde(default)]
    pub leaving: Vec<Leaver>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Leaver {
    pub actor: String,
    pub handed_off: bool,
}

/// `GET /counter/<name>`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CounterView {
    pub name: String,
    pub value: u128,
    pub components: Vec<Component>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct NamedValue {
    pub name: String,
    pub value: u128,
}

/// `POST /counters`.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BatchRequest {
    pub increments: Vec<BatchItem>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BatchItem {
    pub name: String,
    pub amount: u64,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct BatchAnswer {
    pub values: Vec<NamedValue>,
}

/// `GET /counters`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Listing {
    pub counters: Vec<NamedValue>,
    /// Pass as `after` for the next page; `None` on the last.
    pub next: Option<String>,
}

/// `GET /status`. Read back with every field defaulted, so a client can
/// show what an older node sends.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Status {
    pub id: u64,
    pub incarnation: String,
    pub version: String,
    pub listen: String,
    pub uptime_secs: u64,
    #[serde(rename = "self")]
    pub me: Option<String>,
    pub role: Option<Role>,
    pub config: StatusConfig,
    pub peers: Vec<PeerReport>,
    pub names: u64,
    pub idempotency_keys: u64,
    pub storage: Option<HealthReport>,
    pub head_seq: u64,
    pub min_replicas: u64,
    pub data_dir: Option<String>,
    pub data_bytes: u64,
    /// Connection budgets and the open-files limit they were fitted to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connections: Option<crate::node::Budgets>,
}

/// `GET /livez` and `GET /readyz` when they answer 200.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Probe {
    /// `live` or `ready`.
    pub status: String,
}

/// `GET /readyz` when the node is not ready (503).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct NotReady {
    /// The reasons joined into one message.
    pub error: String,
    pub reasons: Vec<String>,
}

/// `GET /status/cluster`, and what `tally status --cluster` prints as JSON:
/// every actor of a node's config (leaving ones too), each asked for its
/// own `/status`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ClusterStatus {
    /// The id of the node whose config was used.
    pub from: u64,
    pub config_version: u64,
    pub nodes: Vec<ClusterNode>,
}

/// One actor of [`ClusterStatus`].
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ClusterNode {
    pub actor: String,
    /// The node whose config was used.
    pub me: bool,
    /// Whether it is leaving the config.
    pub leaving: bool,
    pub reachable: bool,
    /// Why it could not be asked, when it could not.
    pub error: Option<String>,
    /// How long its `/status` took to answer, in milliseconds.
    pub rtt_ms: Option<f64>,
    /// Its own `/status`.
    pub status: Option<Status>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct StatusConfig {
    pub version: u64,
    pub origin: u64,
    pub actors: Vec<String>,
    pub leaving: Vec<Leaver>,
    pub read_set: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_parse_and_name_their_templates() {
        assert_eq!(Route::of("/"), Route::Console);
        assert_eq!(
            Route::of("/console/console.js").template(),
            "/console/{asset}"
        );
        assert_eq!(Route::of("/").template(), "/");
        assert_eq!(Route::of("/config"), Route::Config);
        assert_eq!(Route::of(RPC_PATH), Route::Rpc);
        assert_eq!(Route::of("/counter/a%2Fb"), Route::Counter("a%2Fb"));
        assert_eq!(Route::of("/counter/x/value"), Route::Value("x"));
        assert_eq!(
            Route::of("/counter/x/consistent_value"),
            Route::ConsistentValue("x")
        );
        assert_eq!(Route::of("/counter/x/y"), Route::BadCounterPath);
        assert_eq!(Route::of("/counter/x/value/z"), Route::BadCounterPath);
        assert_eq!(Route::of("/nope"), Route::Unknown);
        assert_eq!(Route::of("/livez"), Route::Livez);
        assert_eq!(Route::of("/readyz").template(), "/readyz");
        assert_eq!(Route::of("/status/cluster"), Route::ClusterStatus);
        assert_eq!(Route::of("/counter/x").template(), "/counter/{name}");
    }

    #[test]
    fn paths_encode_a_name_into_one_segment() {
        for name in ["a/b", "..", ".", "a b", "ü", "%", "a.b"] {
            let path = paths::value(name);
            let Route::Value(raw) = Route::of(&path) else {
                panic!("{path}")
            };
            assert_eq!(crate::input::decode_name(raw).unwrap(), name, "{path}");
        }
        assert_eq!(paths::counter("a.b"), "/counter/a.b");
        assert_eq!(paths::counter(".."), "/counter/%2E%2E");
    }

    #[test]
    fn names_are_encoded_into_one_segment() {
        assert_eq!(encode_name("visits"), "visits");
        assert_eq!(encode_name("a/b"), "a%2Fb");
        assert_eq!(encode_name("a b?c#d%e"), "a%20b%3Fc%23d%25e");
        assert_eq!(encode_name("A-z_0.9~"), "A-z_0.9~");
        assert_eq!(encode_name("é"), "%C3%A9");
        assert_eq!(encode_name(".."), "%2E%2E");
        assert_eq!(encode_name("."), "%2E");
    }

    #[test]
    fn bodies_carry_values_beyond_u64() {
        let body = serde_json::to_string(&Unavailable {
            error: "e".into(),
            unreachable: vec![],
            best_known_value: 3 * u128::from(u64::MAX),
        })
        .unwrap();
        assert!(body.contains("55340232221128654845"), "{body}");
        let back: Unavailable = serde_json::from_str(&body).unwrap();
        assert_eq!(back.best_known_value, 3 * u128::from(u64::MAX));
    }

    #[test]
    fn a_status_from_an_older_node_still_reads() {
        let s: Status = serde_json::from_str(r#"{"id": 3, "names": 7}"#).unwrap();
        assert_eq!((s.id, s.names, s.role), (3, 7, None));
    }
}
