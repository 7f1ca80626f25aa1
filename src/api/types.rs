//! The public HTTP vocabulary, defined once and shared by the server
//! (`api`) and the command-line client: paths and route templates, header
//! names, limits, and every JSON body. A change here changes both sides.
//!
//! The bodies are the API's own types, not the lower layers': storage,
//! replication and the node hand out plain views (no serde), and the
//! conversions below turn them into what goes on the wire. So a layer can
//! change how it keeps its state without changing a public body, and the
//! client reads `/status` without depending on the layers it describes.

use std::time::Duration;

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde::{Deserialize, Serialize};

use crate::auth::Scope;
use crate::crdt::Component;
use crate::node;
use crate::proto::{RPC_PATH, RPC_PATH_V3};
use crate::replication::peer::PeerView;
use crate::storage::{HealthView, Salvage, ScrubView};

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

/// Every public path. Each operation on them, and the scope it needs, is
/// in [`ENDPOINTS`]; `docs/openapi.json` describes them all (served at
/// [`paths::OPENAPI`]), and `tests/openapi.rs` keeps the two equal.
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
    /// The OpenAPI document of these routes.
    pub const OPENAPI: &str = "/openapi.json";
    pub const COUNTER_PREFIX: &str = "/counter/";
    /// The templates of the routes under [`COUNTER_PREFIX`].
    pub const COUNTER: &str = "/counter/{name}";
    pub const VALUE: &str = "/counter/{name}/value";
    pub const CONSISTENT_VALUE: &str = "/counter/{name}/consistent_value";

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

/// One operation of the public API: a method on a path template (as in
/// [`Route::template`]), and the scope a client token needs for it, `None`
/// for the routes open to all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Endpoint {
    pub method: &'static str,
    pub template: &'static str,
    pub scope: Option<Scope>,
}

const fn endpoint(method: &'static str, template: &'static str, scope: Option<Scope>) -> Endpoint {
    Endpoint {
        method,
        template,
        scope,
    }
}

const OPEN: Option<Scope> = None;
const READ: Option<Scope> = Some(Scope::Read);
const WRITE: Option<Scope> = Some(Scope::Write);
const ADMIN: Option<Scope> = Some(Scope::Admin);

/// Every public operation, in one place: the router serves these and no
/// other (see `api::router`), the token check takes each one's scope from
/// here, and `tests/openapi.rs` checks that `docs/openapi.json` documents
/// exactly these. A `GET` also answers `HEAD`. The internal routes under
/// `/_internal/` are not public and not here.
pub const ENDPOINTS: &[Endpoint] = &[
    endpoint("GET", paths::CONSOLE, OPEN),
    endpoint("GET", paths::CONSOLE_ASSET, OPEN),
    endpoint("GET", paths::OPENAPI, OPEN),
    endpoint("GET", paths::LIVEZ, OPEN),
    endpoint("GET", paths::READYZ, OPEN),
    endpoint("POST", paths::CONFIG, ADMIN),
    endpoint("GET", paths::STATUS, READ),
    endpoint("GET", paths::CLUSTER_STATUS, READ),
    endpoint("GET", paths::METRICS, READ),
    endpoint("GET", paths::COUNTERS, READ),
    endpoint("POST", paths::COUNTERS, WRITE),
    endpoint("GET", paths::COUNTER, READ),
    endpoint("POST", paths::COUNTER, WRITE),
    endpoint("GET", paths::VALUE, READ),
    endpoint("GET", paths::CONSISTENT_VALUE, READ),
];

/// The methods [`ENDPOINTS`] lists for `template`, as an `Allow` header
/// says them (`GET, POST`).
pub fn allowed_methods(template: &str) -> String {
    ENDPOINTS
        .iter()
        .filter(|e| e.template == template)
        .map(|e| e.method)
        .collect::<Vec<_>>()
        .join(", ")
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
    OpenApi,
    Rpc,
    RpcV3,
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
            paths::OPENAPI => Route::OpenApi,
            RPC_PATH => Route::Rpc,
            RPC_PATH_V3 => Route::RpcV3,
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
            Route::OpenApi => paths::OPENAPI,
            Route::Rpc => RPC_PATH,
            Route::RpcV3 => RPC_PATH_V3,
            Route::Counter(_) => paths::COUNTER,
            Route::Value(_) => paths::VALUE,
            Route::ConsistentValue(_) => paths::CONSISTENT_VALUE,
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

/// The body of `POST /config`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigRequest {
    pub actors: Vec<String>,
    /// Leavers to stop waiting for (see
    /// [`Membership::post_forgetting`](crate::cluster::Membership::post_forgetting)).
    #[serde(default)]
    pub forget: Vec<String>,
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

/// What a node does in the cluster, as `/status` names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// No config yet: a cluster of one.
    Unconfigured,
    Member,
    /// Left the config; handing off what it holds.
    Leaving,
    /// Left the config and handed off.
    HandedOff,
    /// Not named by the config at all.
    Outside,
    /// Has a config but does not know yet which actor it is.
    Unknown,
}

impl Role {
    /// The name `/status` gives it.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Unconfigured => "unconfigured",
            Role::Member => "member",
            Role::Leaving => "leaving",
            Role::HandedOff => "handed_off",
            Role::Outside => "outside",
            Role::Unknown => "unknown",
        }
    }
}

impl From<node::Role> for Role {
    fn from(role: node::Role) -> Self {
        match role {
            node::Role::Unconfigured => Role::Unconfigured,
            node::Role::Member => Role::Member,
            node::Role::Leaving => Role::Leaving,
            node::Role::HandedOff => Role::HandedOff,
            node::Role::Outside => Role::Outside,
            node::Role::Unknown => Role::Unknown,
        }
    }
}

/// What `/status` shows of a peer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PeerReport {
    pub actor: String,
    /// `null` until a call to it has ended.
    pub reachable: Option<bool>,
    pub last_contact_ms_ago: Option<u128>,
    pub last_error: Option<String>,
    /// The node id and incarnation (16 hex digits) that answered at its
    /// address last.
    pub node: Option<u64>,
    pub incarnation: Option<String>,
    /// Changes the peer had that this node had not merged at the last pull.
    pub lag_changes: u64,
    /// Names waiting to be pushed to it.
    pub pending_push: usize,
    /// False for a leaver this node only pulls from (its hand-off).
    pub member: bool,
    /// How far (in this node's sequence) the peer is known to hold our changes.
    pub stored_seq: u64,
    /// The protocol of its last answer to a pull: 3 (binary), or 2 (JSON)
    /// for a peer of a version before protocol 3; `null` before one.
    pub protocol: Option<u32>,
}

impl From<PeerView> for PeerReport {
    fn from(p: PeerView) -> Self {
        PeerReport {
            actor: p.actor.to_string(),
            reachable: p.reachable,
            last_contact_ms_ago: p.last_contact_ago.map(|d| d.as_millis()),
            last_error: p.last_error,
            node: p.replica.map(|r| r.node),
            incarnation: p.replica.map(|r| format!("{:016x}", r.incarnation)),
            lag_changes: p.lag_changes,
            pending_push: p.pending_push,
            member: p.member,
            stored_seq: p.stored_seq,
            protocol: p.protocol,
        }
    }
}

/// What `/status` shows of storage.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct HealthReport {
    pub healthy: bool,
    /// Why not, when unhealthy.
    pub problem: Option<String>,
    /// How long storage has been unhealthy.
    pub unhealthy_for_ms: Option<u128>,
    pub last_error: Option<String>,
    pub last_error_ms_ago: Option<u128>,
    /// Failed commits and recovery attempts since start.
    pub errors: u64,
    /// Failure episodes that ended with the database reopened.
    pub recoveries: u64,
    /// Places in the data folder's files found damaged since the node
    /// started (when it opened them, or by the scrub), and the latest of
    /// them.
    #[serde(default)]
    pub damage_found: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub damage: Vec<String>,
    /// Damage found when the folder was opened, now or by an earlier run,
    /// and how the node went on (stored in the folder).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub salvaged: Vec<SalvageReport>,
    /// The last scrub pass.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scrub: Option<ScrubReport>,
}

impl From<HealthView> for HealthReport {
    fn from(h: HealthView) -> Self {
        HealthReport {
            healthy: h.healthy,
            problem: h.problem,
            unhealthy_for_ms: h.unhealthy_for.map(|d| d.as_millis()),
            last_error: h.last_error,
            last_error_ms_ago: h.last_error_ago.map(|d| d.as_millis()),
            errors: h.errors,
            recoveries: h.recoveries,
            damage_found: h.damage_found,
            damage: h.damage,
            salvaged: h.salvaged.into_iter().map(SalvageReport::from).collect(),
            scrub: h.scrub.map(ScrubReport::from),
        }
    }
}

/// The last scrub pass over the data folder's files.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ScrubReport {
    /// Passes finished since the node started.
    pub passes: u64,
    pub bytes: u64,
    pub took_ms: u128,
    /// Places the pass found damaged (each repaired from memory).
    pub damage: u64,
    /// How long ago the pass ended.
    #[serde(default)]
    pub ended_ms_ago: u128,
}

impl From<ScrubView> for ScrubReport {
    fn from(s: ScrubView) -> Self {
        ScrubReport {
            passes: s.passes,
            bytes: s.bytes,
            took_ms: s.took.as_millis(),
            damage: s.damage,
            ended_ms_ago: s.ended_ago.as_millis(),
        }
    }
}

/// Damage found in the data folder's files when it was opened, and how
/// the node went on. Storage keeps the same facts in the folder as its own
/// type ([`Salvage`]); this one is the `/status` form, so the two can
/// change apart.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct SalvageReport {
    /// When, in milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// Each place found damaged: file, byte offset, what was wrong.
    pub damage: Vec<String>,
    /// What could not be read back.
    pub lost: String,
    /// The incarnation the folder had, and the one it counts on with.
    pub from_incarnation: u64,
    pub to_incarnation: u64,
}

impl From<Salvage> for SalvageReport {
    fn from(s: Salvage) -> Self {
        SalvageReport {
            at_ms: s.at_ms,
            damage: s.damage,
            lost: s.lost,
            from_incarnation: s.from_incarnation,
            to_incarnation: s.to_incarnation,
        }
    }
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
        assert_eq!(Route::of(RPC_PATH_V3), Route::RpcV3);
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

    /// Each endpoint's template is what its paths are counted and
    /// checked under, and no operation is listed twice.
    #[test]
    fn endpoints_name_templates_that_paths_parse_to() {
        for (i, e) in ENDPOINTS.iter().enumerate() {
            let path = e
                .template
                .replace("{name}", "visits")
                .replace("{asset}", "console.js");
            assert_eq!(Route::of(&path).template(), e.template, "{path}");
            assert!(
                !ENDPOINTS[..i]
                    .iter()
                    .any(|o| (o.method, o.template) == (e.method, e.template)),
                "{} {} listed twice",
                e.method,
                e.template
            );
        }
        assert_eq!(allowed_methods(paths::COUNTER), "GET, POST");
        assert_eq!(allowed_methods(paths::VALUE), "GET");
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

    /// `/status` as the views of storage and replication turn into it,
    /// byte for byte: the JSON below is what the bodies serialized to when
    /// storage and replication still defined them, so a change to a view
    /// cannot change what clients read.
    #[test]
    fn status_json_is_unchanged_by_the_views_it_is_made_from() {
        use crate::cluster::Actor;
        use crate::crdt::ReplicaId;
        let ms = Duration::from_millis;
        let peers = vec![
            PeerView {
                actor: Actor::parse("10.0.0.1:7777").unwrap(),
                reachable: Some(false),
                last_contact_ago: Some(ms(1500)),
                last_error: Some("refused".into()),
                replica: Some(ReplicaId {
                    node: 1,
                    incarnation: 0xabc,
                }),
                lag_changes: 4,
                pending_push: 2,
                member: false,
                stored_seq: 9,
                protocol: Some(3),
            },
            PeerView {
                actor: Actor::parse("10.0.0.2:7777").unwrap(),
                reachable: None,
                last_contact_ago: None,
                last_error: None,
                replica: None,
                lag_changes: 0,
                pending_push: 0,
                member: true,
                stored_seq: 0,
                protocol: None,
            },
        ];
        let health = HealthView {
            healthy: false,
            problem: Some("disk full".into()),
            unhealthy_for: Some(ms(5)),
            last_error: Some("disk full".into()),
            last_error_ago: Some(ms(7)),
            errors: 2,
            recoveries: 1,
            damage_found: 3,
            damage: vec!["a at byte 1".into()],
            salvaged: vec![Salvage {
                at_ms: 1000,
                damage: vec!["b at byte 2".into()],
                lost: "nothing".into(),
                from_incarnation: 1,
                to_incarnation: 2,
                now: true,
            }],
            scrub: Some(ScrubView {
                passes: 4,
                bytes: 4096,
                took: ms(12),
                damage: 1,
                ended_ago: ms(30),
            }),
        };
        let status = Status {
            id: 3,
            incarnation: "00000000000000ab".into(),
            version: "1.2.3".into(),
            listen: "0.0.0.0:7777".into(),
            uptime_secs: 75,
            me: Some("10.0.0.3:7777".into()),
            role: Some(node::Role::HandedOff.into()),
            config: StatusConfig::default(),
            peers: peers.into_iter().map(PeerReport::from).collect(),
            names: 12,
            idempotency_keys: 1,
            storage: Some(health.into()),
            head_seq: 40,
            min_replicas: 1,
            data_dir: Some("/d".into()),
            data_bytes: 8192,
            connections: None,
        };
        let json = serde_json::to_string(&status).unwrap();
        assert_eq!(
            json,
            concat!(
                r#"{"id":3,"incarnation":"00000000000000ab","version":"1.2.3","listen":"0.0.0.0:7777","#,
                r#""uptime_secs":75,"self":"10.0.0.3:7777","role":"handed_off","#,
                r#""config":{"version":0,"origin":0,"actors":[],"leaving":[],"read_set":[]},"#,
                r#""peers":[{"actor":"10.0.0.1:7777","reachable":false,"last_contact_ms_ago":1500,"#,
                r#""last_error":"refused","node":1,"incarnation":"0000000000000abc","lag_changes":4,"#,
                r#""pending_push":2,"member":false,"stored_seq":9,"protocol":3},"#,
                r#"{"actor":"10.0.0.2:7777","reachable":null,"last_contact_ms_ago":null,"#,
                r#""last_error":null,"node":null,"incarnation":null,"lag_changes":0,"#,
                r#""pending_push":0,"member":true,"stored_seq":0,"protocol":null}],"#,
                r#""names":12,"idempotency_keys":1,"#,
                r#""storage":{"healthy":false,"problem":"disk full","unhealthy_for_ms":5,"#,
                r#""last_error":"disk full","last_error_ms_ago":7,"errors":2,"recoveries":1,"#,
                r#""damage_found":3,"damage":["a at byte 1"],"#,
                r#""salvaged":[{"at_ms":1000,"damage":["b at byte 2"],"lost":"nothing","#,
                r#""from_incarnation":1,"to_incarnation":2}],"#,
                r#""scrub":{"passes":4,"bytes":4096,"took_ms":12,"damage":1,"ended_ms_ago":30}},"#,
                r#""head_seq":40,"min_replicas":1,"data_dir":"/d","data_bytes":8192}"#,
            )
        );
        let back: Status = serde_json::from_str(&json).unwrap();
        assert_eq!(serde_json::to_string(&back).unwrap(), json, "reads back");

        let quiet = HealthReport::from(HealthView {
            healthy: true,
            ..HealthView::default()
        });
        assert_eq!(
            serde_json::to_string(&quiet).unwrap(),
            concat!(
                r#"{"healthy":true,"problem":null,"unhealthy_for_ms":null,"last_error":null,"#,
                r#""last_error_ms_ago":null,"errors":0,"recoveries":0,"damage_found":0}"#,
            )
        );
    }

    #[test]
    fn roles_are_named_as_before() {
        use node::Role as R;
        for (role, name) in [
            (R::Unconfigured, "unconfigured"),
            (R::Member, "member"),
            (R::Leaving, "leaving"),
            (R::HandedOff, "handed_off"),
            (R::Outside, "outside"),
            (R::Unknown, "unknown"),
        ] {
            let wire = Role::from(role);
            assert_eq!(wire.as_str(), name);
            assert_eq!(serde_json::to_value(wire).unwrap(), name);
            assert_eq!(serde_json::from_value::<Role>(name.into()).unwrap(), wire);
        }
    }

    #[test]
    fn a_config_request_refuses_unknown_fields() {
        let req: ConfigRequest = serde_json::from_str(r#"{"actors": ["a"]}"#).unwrap();
        assert!(req.forget.is_empty());
        assert!(serde_json::from_str::<ConfigRequest>(r#"{"actors": [], "force": true}"#).is_err());
    }

    #[test]
    fn a_status_from_an_older_node_still_reads() {
        let s: Status = serde_json::from_str(r#"{"id": 3, "names": 7}"#).unwrap();
        assert_eq!((s.id, s.names, s.role), (3, 7, None));
    }
}
