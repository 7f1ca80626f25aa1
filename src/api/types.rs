//! The public HTTP vocabulary is `tally_client::types`, shared with every
//! client; this module re-exports it, and adds what only the server needs:
//! what a connection carries, and the conversions that turn the lower
//! layers' plain views (storage, replication and the node keep no serde
//! types) into the bodies of `/status`.

pub use tally_client::types::*;

use crate::auth::Scope;
use crate::node;
use crate::replication::peer::PeerView;
use crate::storage::{HealthView, Salvage, ScrubView};

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
    endpoint("GET", paths::STATUS_HISTORY, READ),
    endpoint("GET", paths::CLUSTER_HISTORY, READ),
    endpoint("GET", paths::BACKUP, ADMIN),
    endpoint("POST", paths::RESTORE, ADMIN),
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

/// What every request of a connection carries in its extensions (the
/// server puts it there): the client's address and, over TLS, the
/// certificate it presented (already verified against the cluster's CA).
#[derive(Clone, Debug)]
pub struct ConnInfo {
    pub peer: std::net::SocketAddr,
    pub cert: Option<crate::tls::PeerCert>,
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

/// The columns of `samples`, taken by node `node`.
pub fn history_of(node: u64, samples: &[node::Sample]) -> StatusHistory {
    // Three decimals: the rates are counts over about a second.
    let round = |v: f64| (v * 1000.0).round() / 1000.0;
    let mut out = StatusHistory {
        node,
        interval_ms: node::HISTORY_INTERVAL.as_millis() as u64,
        capacity: node::HISTORY_SAMPLES,
        ..StatusHistory::default()
    };
    for (i, s) in samples.iter().enumerate() {
        out.at_ms.push(s.at_ms);
        out.increments_per_sec.push(round(s.increments_per_sec));
        out.consistent_ok_per_sec
            .push(round(s.consistent_ok_per_sec));
        out.consistent_failed_per_sec
            .push(round(s.consistent_failed_per_sec));
        out.consistent_read_ms.push(s.consistent_read_ms.map(round));
        out.storage_healthy.push(s.storage_healthy);
        for p in &s.peers {
            let column = match out.peers.iter().position(|h| *h.actor == *p.actor) {
                Some(at) => &mut out.peers[at],
                None => {
                    out.peers.push(PeerHistory {
                        actor: p.actor.to_string(),
                        lag_changes: vec![None; i],
                        reachable: vec![None; i],
                    });
                    out.peers.last_mut().expect("just pushed")
                }
            };
            column.lag_changes.push(Some(p.lag_changes));
            column.reachable.push(p.reachable);
        }
        // Peers this sample does not name.
        for column in &mut out.peers {
            column.lag_changes.resize(i + 1, None);
            column.reachable.resize(i + 1, None);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

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
        assert_eq!(Route::of("/status/history"), Route::StatusHistory);
        assert_eq!(Route::of("/status/history").template(), "/status/history");
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

    /// Samples become columns of equal length; a peer that some samples do
    /// not name has `null` there.
    #[test]
    fn a_history_is_columns_of_its_samples() {
        use crate::node::{PeerLag, Sample};
        let peer = |actor: &str, lag| PeerLag {
            actor: actor.into(),
            lag_changes: lag,
            reachable: Some(true),
        };
        let sample = |at_ms, peers| Sample {
            at_ms,
            increments_per_sec: 1.0 / 3.0,
            consistent_ok_per_sec: 2.0,
            consistent_failed_per_sec: 0.0,
            consistent_read_ms: (at_ms == 2).then_some(1.5),
            storage_healthy: at_ms != 3,
            peers,
        };
        let samples = vec![
            sample(1, vec![peer("a", 1)]),
            sample(2, vec![peer("a", 2), peer("b", 5)]),
            sample(3, vec![peer("b", 6)]),
        ];
        let h = history_of(7, &samples);
        assert_eq!(h.node, 7);
        assert_eq!(h.interval_ms, 1000);
        assert_eq!(h.at_ms, vec![1, 2, 3]);
        assert_eq!(h.increments_per_sec, vec![0.333; 3]);
        assert_eq!(h.consistent_read_ms, vec![None, Some(1.5), None]);
        assert_eq!(h.storage_healthy, vec![true, true, false]);
        let lags: Vec<(&str, Vec<Option<u64>>)> = h
            .peers
            .iter()
            .map(|p| (p.actor.as_str(), p.lag_changes.clone()))
            .collect();
        assert_eq!(
            lags,
            vec![
                ("a", vec![Some(1), Some(2), None]),
                ("b", vec![None, Some(5), Some(6)]),
            ]
        );
        assert!(h.peers.iter().all(|p| p.reachable.len() == 3));
        let json = serde_json::to_string(&h).unwrap();
        assert_eq!(serde_json::from_str::<StatusHistory>(&json).unwrap(), h);
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
