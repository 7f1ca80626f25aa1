//! Prometheus metrics, served as OpenMetrics text at `GET /metrics`.
//!
//! One [`Metrics`] per node, cloned into the layers that record: the HTTP
//! layer (requests and latency by route and status), storage (commit latency
//! and batch size, increments applied), the transport (bytes per peer),
//! replication (pushes and pulls by outcome, reachability and lag per peer),
//! consistent reads (outcome and duration) and the server (open and refused
//! connections by class). Gauges that are cheaper to read than to track
//! (names, remembered keys) are set when scraped.
//! Labels are bounded: routes are templates, peers are config actors.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteStatus {
    pub route: &'static str,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Route {
    pub route: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Peer {
    pub peer: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PeerOutcome {
    pub peer: String,
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Outcome {
    pub outcome: &'static str,
}

/// A connection's class: `client`, `peer`, or `pending` (accepted, not
/// admitted to a budget yet).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConnectionClass {
    pub class: &'static str,
}

fn latency_histogram() -> Histogram {
    // 100 µs to about 26 s.
    Histogram::new(exponential_buckets(0.0001, 2.0, 19))
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// Every metric of a node; cheap to clone (all handles share their values).
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    pub requests: Family<RouteStatus, Counter>,
    pub request_seconds: HistogramFamily<Route>,
    pub increments: Counter,
    pub commit_seconds: Histogram,
    pub commit_batch_size: Histogram,
    pub peer_bytes_sent: Family<Peer, Counter>,
    pub peer_bytes_received: Family<Peer, Counter>,
    pub pushes: Family<PeerOutcome, Counter>,
    pub pulls: Family<PeerOutcome, Counter>,
    pub pulled_names: Family<Peer, Counter>,
    pub peer_up: Family<Peer, Gauge>,
    pub peer_lag: Family<Peer, Gauge>,
    pub consistent_reads: Family<Outcome, Counter>,
    pub consistent_seconds: Histogram,
    pub names: Gauge,
    pub idempotency_keys: Gauge,
    pub storage_healthy: Gauge,
    pub storage_errors: Counter,
    pub storage_recoveries: Counter,
    pub replica_waits: Family<Outcome, Counter>,
    pub connections: Family<ConnectionClass, Gauge>,
    pub connections_refused: Family<ConnectionClass, Counter>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let m = Metrics {
            registry: Arc::new(Registry::default()),
            requests: Family::default(),
            request_seconds: Family::new_with_constructor(latency_histogram),
            increments: Counter::default(),
            commit_seconds: latency_histogram(),
            commit_batch_size: Histogram::new(exponential_buckets(1.0, 2.0, 13)),
            peer_bytes_sent: Family::default(),
            peer_bytes_received: Family::default(),
            pushes: Family::default(),
            pulls: Family::default(),
            pulled_names: Family::default(),
            peer_up: Family::default(),
            peer_lag: Family::default(),
            consistent_reads: Family::default(),
            consistent_seconds: latency_histogram(),
            names: Gauge::default(),
            idempotency_keys: Gauge::default(),
            storage_healthy: Gauge::default(),
            storage_errors: Counter::default(),
            storage_recoveries: Counter::default(),
            replica_waits: Family::default(),
            connections: Family::default(),
            connections_refused: Family::default(),
        };
        let mut r = Registry::with_prefix("tally");
        r.register(
            "http_requests",
            "HTTP requests by route and status",
            m.requests.clone(),
        );
        r.register(
            "http_request_seconds",
            "HTTP request latency by route",
            m.request_seconds.clone(),
        );
        r.register(
            "increments_applied",
            "Increment requests applied (not replays)",
            m.increments.clone(),
        );
        r.register(
            "storage_commit_seconds",
            "Storage commit latency",
            m.commit_seconds.clone(),
        );
        r.register(
            "storage_commit_batch_size",
            "Operations per storage commit",
            m.commit_batch_size.clone(),
        );
        r.register(
            "peer_bytes_sent",
            "Bytes sent to each peer",
            m.peer_bytes_sent.clone(),
        );
        r.register(
            "peer_bytes_received",
            "Bytes received from each peer",
            m.peer_bytes_received.clone(),
        );
        r.register(
            "replication_pushes",
            "Pushes to each peer by outcome",
            m.pushes.clone(),
        );
        r.register(
            "replication_pulls",
            "Anti-entropy pulls from each peer by outcome",
            m.pulls.clone(),
        );
        r.register(
            "replication_pulled_names",
            "Names received by anti-entropy from each peer",
            m.pulled_names.clone(),
        );
        r.register(
            "peer_up",
            "1 if the peer answered the last call, else 0",
            m.peer_up.clone(),
        );
        r.register(
            "peer_lag_changes",
            "Changes the peer had that this node had not merged at the last pull",
            m.peer_lag.clone(),
        );
        r.register(
            "consistent_reads",
            "Consistent reads by outcome",
            m.consistent_reads.clone(),
        );
        r.register(
            "consistent_read_seconds",
            "Consistent read duration",
            m.consistent_seconds.clone(),
        );
        r.register(
            "names",
            "Counter names stored on this node",
            m.names.clone(),
        );
        r.register(
            "idempotency_keys",
            "Idempotency keys remembered",
            m.idempotency_keys.clone(),
        );
        r.register(
            "storage_healthy",
            "1 while storage commits succeed, 0 during a failure or a stalled commit",
            m.storage_healthy.clone(),
        );
        r.register(
            "storage_errors",
            "Failed storage commits and recovery attempts",
            m.storage_errors.clone(),
        );
        r.register(
            "storage_recoveries",
            "Storage failure episodes ended by reopening the database",
            m.storage_recoveries.clone(),
        );
        r.register(
            "replica_waits",
            "Increments that waited for other actors to store them, by outcome",
            m.replica_waits.clone(),
        );
        r.register(
            "connections",
            "Open connections by class: client, peer, pending (accepted, not admitted yet)",
            m.connections.clone(),
        );
        r.register(
            "connections_refused",
            "Connections refused by class: over the client or the peer budget, or pending ones \
             closed to make room",
            m.connections_refused.clone(),
        );
        Metrics {
            registry: Arc::new(r),
            ..m
        }
    }

    /// The OpenMetrics text of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recorded_values_appear_in_the_text() {
        let m = Metrics::new();
        m.requests
            .get_or_create(&RouteStatus {
                route: "/counter/{name}",
                status: 200,
            })
            .inc();
        m.increments.inc_by(3);
        m.peer_up
            .get_or_create(&Peer {
                peer: "10.0.0.2:7777".into(),
            })
            .set(1);
        let text = m.encode();
        assert!(
            text.contains(r#"tally_http_requests_total{route="/counter/{name}",status="200"} 1"#),
            "{text}"
        );
        assert!(text.contains("tally_increments_applied_total 3"), "{text}");
        assert!(
            text.contains(r#"tally_peer_up{peer="10.0.0.2:7777"} 1"#),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"));
    }
}
