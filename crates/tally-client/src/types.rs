//! The public HTTP vocabulary of tally, defined once and shared by the
//! node's API, its command-line client and [`Client`](crate::Client): paths
//! and route templates, header names, limits, and every JSON body. A
//! change here changes every side.
//!
//! The node builds these bodies from its own plain views (its storage,
//! replication and membership keep no serde types), so a node can change
//! how it keeps its state without changing a body, and a client reads
//! `/status` without depending on what it describes.

use std::time::Duration;

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde::{Deserialize, Serialize};

// Node-to-node routes: not for clients, named here so that the route
// parser below (and the node's metrics) know them.
/// The prefix of every internal route; it cannot collide with the public API.
/// The server counts a connection whose first request is under it against
/// the peer budget (see the node's `server` module).
pub const INTERNAL_PREFIX: &str = "/_internal/";
/// The path of the internal route of protocol 2 (JSON), under [`INTERNAL_PREFIX`].
pub const RPC_PATH: &str = "/_internal/v1/rpc";
/// The path of the internal route of protocol 3 (binary).
pub const RPC_PATH_V3: &str = "/_internal/v3/rpc";
/// Header carrying the cluster secret on `/config` and internal calls.
pub const SECRET_HEADER: &str = "x-tally-secret";

/// The wire form of a counter: a list of components.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Component {
    pub node: u64,
    pub incarnation: u64,
    pub count: u64,
}

/// The connection budgets the server runs with, after they were fitted to
/// the open-files limit.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Budgets {
    pub max_connections: u64,
    pub max_peer_connections: u64,
    pub max_pending_connections: u64,
    /// The process's open-files limit (0: unknown).
    pub open_files_limit: u64,
    /// Seconds a write of an answer may stay blocked before the connection is closed.
    pub write_timeout_secs: f64,
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
/// in the node's table of endpoints; `docs/openapi.json` describes them all
/// (served at [`paths::OPENAPI`]), and the node's tests keep the two equal.
pub mod paths {
    /// The web console, and its script and style sheet under `/console/`.
    pub const CONSOLE: &str = "/";
    pub const CONSOLE_ASSET: &str = "/console/{asset}";
    pub const CONSOLE_ASSETS: &str = "/console/";
    pub const CONFIG: &str = "/config";
    pub const STATUS: &str = "/status";
    pub const CLUSTER_STATUS: &str = "/status/cluster";
    /// The node's last minutes, one sample a second (the console's charts).
    pub const STATUS_HISTORY: &str = "/status/history";
    /// Every actor's `/status/history`, gathered by the node asked.
    pub const CLUSTER_HISTORY: &str = "/status/cluster/history";
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
    /// One consistent page of every counter with its components (admin).
    pub const BACKUP: &str = "/backup";
    /// Merges counters with their components into the cluster (admin).
    pub const RESTORE: &str = "/restore";

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
    StatusHistory,
    ClusterHistory,
    Livez,
    Readyz,
    Metrics,
    Counters,
    OpenApi,
    Backup,
    Restore,
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
            paths::STATUS_HISTORY => Route::StatusHistory,
            paths::CLUSTER_HISTORY => Route::ClusterHistory,
            paths::LIVEZ => Route::Livez,
            paths::READYZ => Route::Readyz,
            paths::METRICS => Route::Metrics,
            paths::COUNTERS => Route::Counters,
            paths::OPENAPI => Route::OpenApi,
            paths::BACKUP => Route::Backup,
            paths::RESTORE => Route::Restore,
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
            Route::StatusHistory => paths::STATUS_HISTORY,
            Route::ClusterHistory => paths::CLUSTER_HISTORY,
            Route::Livez => paths::LIVEZ,
            Route::Readyz => paths::READYZ,
            Route::Metrics => paths::METRICS,
            Route::Counters => paths::COUNTERS,
            Route::OpenApi => paths::OPENAPI,
            Route::Backup => paths::BACKUP,
            Route::Restore => paths::RESTORE,
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

/// One counter with its components, as `GET /backup` lists it and
/// `POST /restore` takes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoredCounter {
    pub name: String,
    pub components: Vec<Component>,
}

/// `GET /backup?after=&limit=&timeout=&without=`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BackupPage {
    pub counters: Vec<StoredCounter>,
    /// Pass as `after` for the next page; `None` on the last.
    pub next: Option<String>,
    /// The actors the page went without (`?without=`): what they alone
    /// hold may be missing.
    pub without: Vec<String>,
}

/// The body of `POST /restore`: at most [`MAX_RESTORE`] counters.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestoreRequest {
    pub counters: Vec<StoredCounter>,
}

/// Most counters in one `POST /restore`.
pub const MAX_RESTORE: usize = 1000;
/// Largest body of `POST /restore`: a full page of the longest names with
/// a few components each.
pub const MAX_RESTORE_BODY: usize = 4 * 1024 * 1024;

/// The answer to `POST /restore`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RestoreAnswer {
    /// Counters in the request.
    pub counters: usize,
    /// Of them, those the node's state changed for (0 when all it said was
    /// already known: a restore repeated, or into the cluster it came from).
    pub changed: usize,
}

/// The body of `POST /config`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigRequest {
    pub actors: Vec<String>,
    /// Leavers to stop waiting for (see the node's
    /// `Membership::post_forgetting`).
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
    pub connections: Option<Budgets>,
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

/// Damage found in the data folder's files when it was opened, and how
/// the node went on. Storage keeps the same facts in the folder as its own
/// type (`storage::Salvage`); this one is the `/status` form, so the two can
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

/// `GET /status/history`: this node's last minutes, one sample every
/// `interval_ms`, oldest first, as columns: the `n`-th entry of every list
/// belongs to the `n`-th sample. Rates are per second over the interval
/// that ended at `at_ms` (Unix milliseconds).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct StatusHistory {
    /// The id of the node that took the samples.
    pub node: u64,
    pub interval_ms: u64,
    /// Most samples kept; older ones are dropped.
    pub capacity: usize,
    pub at_ms: Vec<u64>,
    pub increments_per_sec: Vec<f64>,
    /// Consistent reads answered 200, per second.
    pub consistent_ok_per_sec: Vec<f64>,
    /// Consistent reads answered 503 (or without a config), per second.
    pub consistent_failed_per_sec: Vec<f64>,
    /// Mean duration of the consistent reads that ended in the interval;
    /// `null` when none did.
    pub consistent_read_ms: Vec<Option<f64>>,
    pub storage_healthy: Vec<bool>,
    /// Every peer that some sample names, in the order they first appear.
    pub peers: Vec<PeerHistory>,
}

/// `GET /status/cluster/history`: each actor's [`StatusHistory`], in the
/// order of the asked node's config (leavers it still hears from after).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct ClusterHistory {
    /// The id of the node asked.
    pub from: u64,
    pub nodes: Vec<NodeHistory>,
}

/// One actor's history, or why it could not be had.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct NodeHistory {
    pub actor: String,
    /// The node asked.
    pub me: bool,
    pub error: Option<String>,
    pub history: Option<StatusHistory>,
}

/// One peer's column of [`StatusHistory`]; `null` where a sample does not
/// name the peer (before it joined, after it left).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct PeerHistory {
    pub actor: String,
    /// Changes the peer had that this node had not merged at its last pull.
    pub lag_changes: Vec<Option<u64>>,
    pub reachable: Vec<Option<bool>>,
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
