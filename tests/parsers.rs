//! Every parser that sees outside input, fed arbitrary bytes and checked
//! against what it promises. (Coverage-guided fuzzing with cargo-fuzz needs
//! a nightly toolchain, which this project does not use; these properties
//! run in every `cargo test`.)

use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;
use tally::api::types::ConfigRequest;
use tally::cluster::{Actor, parse_actors};
use tally::crdt::GCounter;
use tally::input::decode_name;
use tally::input::{parse_amount, parse_duration as parse_timeout};
use tally::node::{Deps, Node, Settings};
use tally::proto::{RequestEnvelope, ResponseEnvelope, decode_request, decode_response};
use tally::storage::memory::MemoryEngine;
use tally::transport::{CallError, CallFuture, Transport};

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn amount_parser_accepts_exactly_padded_decimal_u64(bytes in prop::collection::vec(any::<u8>(), 0..40)) {
        let result = parse_amount(&bytes);
        let text = std::str::from_utf8(&bytes).ok().map(str::trim);
        let expected = text
            .filter(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|t| t.parse::<u64>().ok());
        prop_assert_eq!(result.ok(), expected);
    }

    #[test]
    fn every_u64_round_trips_with_whitespace(n in any::<u64>(), pre in "[ \t\r\n]{0,3}", post in "[ \t\r\n]{0,3}") {
        let body = format!("{pre}{n}{post}");
        prop_assert_eq!(parse_amount(body.as_bytes()), Ok(n));
    }

    #[test]
    fn names_decode_to_bounded_utf8(raw in "[ -~]{0,40}|(%[0-9A-Fa-f]{2}){0,20}") {
        if let Ok(name) = decode_name(&raw) {
            prop_assert!(!name.is_empty() && name.len() <= 1024);
            let again = percent_encoding::utf8_percent_encode(&name, percent_encoding::NON_ALPHANUMERIC).to_string();
            prop_assert_eq!(decode_name(&again).unwrap(), name);
        }
    }

    #[test]
    fn config_parsing_never_panics_and_canonical_actors_are_fixed_points(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
        let parsed = serde_json::from_slice::<ConfigRequest>(&bytes)
            .ok()
            .and_then(|req| parse_actors(&req.actors).ok());
        for a in parsed.unwrap_or_default() {
            prop_assert_eq!(Actor::parse(a.as_str()).unwrap(), a);
        }
    }

    #[test]
    fn actor_strings_never_panic_and_canonicalise_idempotently(raw in "\\PC{0,30}") {
        if let Ok(a) = Actor::parse(&raw) {
            prop_assert_eq!(Actor::parse(a.as_str()).unwrap(), a);
        }
    }

    #[test]
    fn timeouts_never_panic(raw in "\\PC{0,12}") {
        if let Ok(d) = parse_timeout(&raw) {
            prop_assert!(d > Duration::ZERO);
        }
    }

    #[test]
    fn counter_decoding_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..100)) {
        if let Ok(c) = GCounter::decode(&bytes) {
            prop_assert_eq!(GCounter::decode(&c.encode()).unwrap(), c);
        }
    }

    #[test]
    fn internal_messages_from_arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        let derived = serde_json::from_slice::<RequestEnvelope>(&bytes);
        let fast = decode_request(&bytes);
        prop_assert_eq!(derived.is_ok(), fast.is_ok());
        let _ = decode_response(&bytes);
    }
}

/// The fast decoders give exactly the derived decoders' answers.
fn same<T: std::fmt::Debug>(
    derived: serde_json::Result<T>,
    fast: serde_json::Result<T>,
) -> Result<(), TestCaseError> {
    match (derived, fast) {
        (Ok(d), Ok(f)) => prop_assert_eq!(format!("{d:?}"), format!("{f:?}")),
        (Err(_), Err(_)) => {}
        (d, f) => prop_assert!(false, "derived {:?}, fast {:?}", d, f),
    }
    Ok(())
}

fn arb_response_json() -> impl Strategy<Value = String> {
    let name = prop_oneof![
        "[a-z]{1,5}",
        Just(String::new()),
        Just("a\\u0062".to_string())
    ];
    let component = (
        0u64..3,
        0u64..3,
        prop_oneof![
            Just("1".to_string()),
            Just("-1".to_string()),
            Just("\"x\"".to_string())
        ],
    )
        .prop_map(|(n, i, c)| format!(r#"{{"node":{n},"incarnation":{i},"count":{c}}}"#));
    let components =
        prop::collection::vec(component, 0..3).prop_map(|cs| format!("[{}]", cs.join(",")));
    let counter = (name, components.clone())
        .prop_map(|(n, cs)| format!(r#"{{"name":"{n}","components":{cs}}}"#));
    let extra = prop_oneof![
        Just(String::new()),
        Just(r#","extra":[1,{"a":2}]"#.to_string()),
        Just(r#","op":"ack""#.to_string()),
        Just(r#","more":true"#.to_string()),
    ];
    let resp = prop_oneof![
        Just(r#"{"op":"ack""#.to_string()),
        Just(r#"{"op":"nonsense""#.to_string()),
        Just(r#"{"nop":"ack""#.to_string()),
        any::<u64>().prop_map(|s| format!(r#"{{"op":"mark","seq":{s}"#)),
        components
            .clone()
            .prop_map(|cs| format!(r#"{{"op":"counter","components":{cs}"#)),
        prop::collection::vec(components, 0..4)
            .prop_map(|cs| format!(r#"{{"op":"counters","counters":[{}]"#, cs.join(","))),
        (
            prop::collection::vec(counter, 0..4),
            any::<u64>(),
            any::<bool>(),
            prop_oneof![Just(""), Just(r#","head":3"#)]
        )
            .prop_map(|(cs, n, more, head)| format!(
                r#"{{"op":"changes","counters":[{}],"next":{n},"more":{more}{head}"#,
                cs.join(",")
            )),
    ];
    let membership = prop_oneof![
        Just("null".to_string()),
        Just(
            r#"{"config":{"stamp":{"version":1,"origin":9},"actors":["10.0.0.1:7777"]}}"#
                .to_string()
        ),
    ];
    (resp, extra, membership).prop_map(|(resp, extra, m)| {
        format!(r#"{{"v":2,"from":{{"node":9,"incarnation":9}},"membership":{m},"resp":{resp}{extra}}}}}"#)
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn fast_request_decoding_agrees_with_serde(json in arb_envelope_json()) {
        same(
            serde_json::from_str::<RequestEnvelope>(&json),
            decode_request(json.as_bytes()),
        )?;
    }

    #[test]
    fn fast_response_decoding_agrees_with_serde(json in arb_response_json()) {
        same(
            serde_json::from_str::<ResponseEnvelope>(&json),
            decode_response(json.as_bytes()),
        )?;
    }
}

/// A transport to nowhere: the node under test never reaches a peer.
struct Nowhere;

impl Transport for Nowhere {
    fn call(&self, _: &Actor, _: &RequestEnvelope, _: Duration) -> CallFuture {
        Box::pin(async { Err(CallError::Unreachable("no network in this test".into())) })
    }
}

fn arb_envelope_json() -> impl Strategy<Value = String> {
    let name = prop_oneof!["[a-z]{1,5}", Just(String::new()), "x{1020,1030}"];
    let count = prop_oneof![Just(0u64), 1u64..10, Just(u64::MAX)];
    let component = (0u64..3, 0u64..3, count)
        .prop_map(|(n, i, c)| format!(r#"{{"node":{n},"incarnation":{i},"count":{c}}}"#));
    let counter = (name.clone(), prop::collection::vec(component, 0..3))
        .prop_map(|(n, cs)| format!(r#"{{"name":"{n}","components":[{}]}}"#, cs.join(",")));
    let actors = prop_oneof![
        Just("[]".to_string()),
        Just(r#"["10.0.0.1:7777"]"#.to_string()),
        Just(r#"["not an address"]"#.to_string()),
        Just(r#"["10.0.0.1:7777","10.0.0.1:7777"]"#.to_string()),
    ];
    let version = prop_oneof![Just(0u64), 1u64..3, Just(u64::MAX)];
    let req = prop_oneof![
        Just(r#"{"op":"hello"}"#.to_string()),
        Just(r#"{"op":"config"}"#.to_string()),
        prop::collection::vec(counter, 0..4)
            .prop_map(|cs| format!(r#"{{"op":"push","counters":[{}]}}"#, cs.join(","))),
        (any::<u64>(), any::<u64>(), 0usize..100_000).prop_map(|(i, s, l)| format!(
            r#"{{"op":"pull","incarnation":{i},"since":{s},"limit":{l}}}"#
        )),
        name.clone()
            .prop_map(|n| format!(r#"{{"op":"read","name":"{n}"}}"#)),
        prop::collection::vec(name, 0..4).prop_map(|ns| format!(
            r#"{{"op":"read_many","names":[{}]}}"#,
            ns.iter()
                .map(|n| format!("\"{n}\""))
                .collect::<Vec<_>>()
                .join(",")
        )),
        any::<u64>().prop_map(|i| format!(r#"{{"op":"mark","incarnation":{i}}}"#)),
    ];
    // What else a membership may say about departed actors, well formed or not.
    let extra = prop_oneof![
        Just(String::new()),
        Just(r#","leaving":["10.0.0.2:7777"]"#.to_string()),
        Just(r#","leaving":["10.0.0.1:7777"]"#.to_string()),
        Just(r#","retired":["bad address"]"#.to_string()),
        Just(r#","parent":{"version":99,"origin":1}"#.to_string()),
    ];
    let sets = prop_oneof![
        Just(String::new()),
        Just(r#","orphans":["10.0.0.3:7777"]"#.to_string()),
        Just(
            r#","handed_off":[{"actor":"10.0.0.2:7777","stamp":{"version":1,"origin":9}}]"#
                .to_string()
        ),
    ];
    (0u32..4, version, actors, extra, sets, req).prop_map(|(v, ver, actors, extra, sets, req)| {
        format!(
            r#"{{"v":{v},"from":{{"node":9,"incarnation":9}},"membership":{{"config":{{"stamp":{{"version":{ver},"origin":9}},"actors":{actors}{extra}}}{sets}}},"req":{req}}}"#
        )
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    /// Whatever a peer (or an attacker on the internal route) sends, the
    /// node answers or refuses without panicking, never lowers a value, and
    /// never stores a name the public API would refuse.
    #[test]
    fn internal_messages_are_handled_or_refused(json in arb_envelope_json()) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let settings = Settings::new(1, "127.0.0.1:7777".parse().unwrap(), "unused".into());
            let deps = Deps::new(Arc::new(Nowhere)).with_engine(Arc::new(MemoryEngine::new()));
            let node = Node::start(settings, deps).unwrap();
            node.increment(vec![("a".into(), 5)], None, None).await.unwrap();
            if let Ok(env) = serde_json::from_str::<RequestEnvelope>(&json) {
                let _ = node.peers().answer(env).await;
            }
            assert!(node.store().value("a") >= 5);
            for (name, _) in node.store().list("", None, usize::MAX) {
                assert!(!name.is_empty() && name.len() <= 1024, "stored a bad name {}", name.len());
            }
            let membership = node.membership();
            assert_eq!(membership.validate(), Ok(()), "stored an invalid config");
            if membership.is_set() {
                assert!(!membership.config.actors.is_empty());
            }
            node.shutdown().await;
        });
    }
}
