//! End-to-end tests of the operator features, on real `tally` processes:
//! idempotency keys, batch increments, the paginated listing, the JSON view
//! of a counter, Prometheus metrics, `/status` reachability, SIGTERM under
//! load and the cluster secret. Each test owns its ports and temp folder
//! (see `common/mod.rs`); every wait is a bounded poll.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};

const KEY: &str = "Idempotency-Key";
const REPLAYED: &str = "idempotent-replayed";
const SECRET_HEADER: &str = "x-tally-secret";
const SECRET: &str = "s3cret";
const RPC: &str = "/_internal/v1/rpc";
const MAX: u128 = u64::MAX as u128;

/// A push from a node 9 that is in no config, claiming 1000 increments of `x`.
const FORGED_PUSH: &str = r#"{"v":2,"from":{"node":9,"incarnation":9},"membership":{"config":{"stamp":{"version":0,"origin":0},"actors":[]}},"req":{"op":"push","counters":[{"name":"x","components":[{"node":9,"incarnation":9,"count":1000}]}]}}"#;

#[track_caller]
fn post_with(c: &Cluster, i: usize, path: &str, headers: &[(&str, &str)], body: &str) -> Answer {
    c.http
        .request_with_headers("POST", &c.url(i, path), headers, Some(body.as_bytes()))
}

fn names_count(c: &Cluster, i: usize) -> u64 {
    c.status(i)["names"]
        .as_u64()
        .expect("status reports the number of names")
}

/// Percent-encodes everything but unreserved characters (RFC 3986).
fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn batch_body(items: &[(&str, u64)]) -> String {
    let increments: Vec<Value> = items
        .iter()
        .map(|(n, a)| json!({"name": n, "amount": a}))
        .collect();
    json!({ "increments": increments }).to_string()
}

/// The `values` of a batch answer as (name, value) pairs.
fn batch_values(r: &Resp) -> Vec<(String, u128)> {
    assert_eq!(r.status, 200, "batch refused: {r:?}");
    assert!(r.content_type.starts_with("application/json"), "{r:?}");
    r.json()["values"]
        .as_array()
        .unwrap_or_else(|| panic!("no values list: {r:?}"))
        .iter()
        .map(|e| {
            (
                e["name"].as_str().expect("name").to_string(),
                u128::from(e["value"].as_u64().expect("value")),
            )
        })
        .collect()
}

// ---------------------------------------------------------------------------
// 1. Idempotency keys

/// A key is applied once and answered with its first answer again (marked
/// `idempotent-replayed: true`), on the single and the batch route; the
/// same key on another request is 422 and applies nothing; all of this
/// survives SIGKILL and a restart; malformed keys are 400.
#[test]
fn idempotency_keys_apply_once_also_after_a_crash() {
    let mut c = Cluster::start("idem", 1, &[]);

    let first = post_with(&c, 0, "/counter/x", &[(KEY, "k")], "5");
    assert_eq!(
        (first.resp.status, first.resp.body.as_str()),
        (200, "5"),
        "{first:?}"
    );
    assert!(
        first.resp.content_type.starts_with("text/plain"),
        "{first:?}"
    );
    assert_eq!(first.header(REPLAYED), None, "a first use is no replay");
    let again = post_with(&c, 0, "/counter/x", &[(KEY, "k")], "5");
    assert_eq!(
        (again.resp.status, again.resp.body.as_str()),
        (200, "5"),
        "{again:?}"
    );
    assert_eq!(again.header(REPLAYED), Some("true"), "{again:?}");
    assert_eq!(c.value(0, "x"), 5, "the retry was applied again");

    // The answer is the remembered one, not the current value.
    assert_eq!(c.incr(0, "x", 1), 6);
    let third = post_with(&c, 0, "/counter/x", &[(KEY, "k")], "5");
    assert_eq!(
        (third.resp.status, third.resp.body.as_str()),
        (200, "5"),
        "{third:?}"
    );
    assert_eq!(third.header(REPLAYED), Some("true"), "{third:?}");
    assert_eq!(c.value(0, "x"), 6);

    // The same keyed request sent concurrently is applied once: one answer
    // is the original, the others replays of it.
    let answers: Vec<Answer> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|_| s.spawn(|| post_with(&c, 0, "/counter/conc", &[(KEY, "kc")], "4")))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("client thread"))
            .collect()
    });
    for a in &answers {
        assert_eq!((a.resp.status, a.resp.body.as_str()), (200, "4"), "{a:?}");
    }
    let originals = answers
        .iter()
        .filter(|a| a.header(REPLAYED).is_none())
        .count();
    assert_eq!(
        originals, 1,
        "exactly one answer is not a replay: {answers:?}"
    );
    assert_eq!(
        c.value(0, "conc"),
        4,
        "concurrent retries applied more than once"
    );

    // The longest key (128 characters) is accepted.
    let long_key = "L".repeat(128);
    let r = post_with(&c, 0, "/counter/edge", &[(KEY, &long_key)], "3");
    assert_eq!((r.resp.status, r.resp.body.as_str()), (200, "3"), "{r:?}");

    // Batch route.
    let batch = batch_body(&[("a", 2), ("b", 3)]);
    let want = json!({"values": [{"name": "a", "value": 2}, {"name": "b", "value": 3}]});
    let b1 = post_with(&c, 0, "/counters", &[(KEY, "kb")], &batch);
    assert_eq!(b1.resp.status, 200, "{b1:?}");
    assert_eq!(b1.resp.json(), want, "{b1:?}");
    assert_eq!(b1.header(REPLAYED), None, "{b1:?}");
    let b2 = post_with(&c, 0, "/counters", &[(KEY, "kb")], &batch);
    assert_eq!(b2.resp.status, 200, "{b2:?}");
    assert_eq!(b2.resp.body, b1.resp.body, "a replay answers the same body");
    assert_eq!(b2.header(REPLAYED), Some("true"), "{b2:?}");
    assert_eq!((c.value(0, "a"), c.value(0, "b")), (2, 3));

    let before_names = names_count(&c, 0);
    let state = |c: &Cluster| -> Vec<u128> {
        ["x", "y", "a", "b", "edge", "conc"]
            .iter()
            .map(|n| c.value(0, n))
            .collect()
    };
    let expected = vec![6, 0, 2, 3, 3, 4];
    assert_eq!(state(&c), expected);

    // The same key with another request: 422, nothing applied.
    let reuse = |c: &Cluster, context: &str| {
        for (path, key, body) in [
            ("/counter/x", "k", "6".to_string()),
            ("/counter/y", "k", "5".to_string()),
            ("/counter/x", "k", "0".to_string()),
            ("/counters", "k", batch_body(&[("x", 6)])),
            ("/counters", "kb", batch_body(&[("a", 2)])),
            ("/counters", "kb", batch_body(&[("a", 2), ("b", 4)])),
            (
                "/counters",
                "kb",
                batch_body(&[("a", 2), ("b", 3), ("y", 1)]),
            ),
            ("/counter/a", "kb", "2".to_string()),
        ] {
            let r = post_with(c, 0, path, &[(KEY, key)], &body);
            r.resp.assert_error(
                422,
                &format!("{context}: key {key:?} reused on {path} with {body}"),
            );
            assert_eq!(r.header(REPLAYED), None, "{r:?}");
        }
    };
    reuse(&c, "before the crash");
    assert_eq!(state(&c), expected);

    // Malformed keys: 400, nothing applied, on both routes.
    let too_long = "k".repeat(200);
    for bad in [
        "has space",
        "tab\tinside",
        too_long.as_str(),
        &"L".repeat(129),
    ] {
        let r = post_with(&c, 0, "/counter/x", &[(KEY, bad)], "1");
        r.resp
            .assert_error(400, &format!("key {bad:?} on /counter/x"));
        let r = post_with(&c, 0, "/counters", &[(KEY, bad)], &batch);
        r.resp
            .assert_error(400, &format!("key {bad:?} on /counters"));
    }
    assert_eq!(state(&c), expected);
    assert_eq!(names_count(&c, 0), before_names);

    // SIGKILL, restart on the same folder: the keys are remembered.
    c.nodes[0].kill();
    c.restart(0);
    assert_eq!(state(&c), expected, "values after the restart");
    let r = post_with(&c, 0, "/counter/x", &[(KEY, "k")], "5");
    assert_eq!((r.resp.status, r.resp.body.as_str()), (200, "5"), "{r:?}");
    assert_eq!(r.header(REPLAYED), Some("true"), "{r:?}");
    let r = post_with(&c, 0, "/counters", &[(KEY, "kb")], &batch);
    assert_eq!(r.resp.status, 200, "{r:?}");
    assert_eq!(r.resp.body, b1.resp.body, "batch replay after restart");
    assert_eq!(r.header(REPLAYED), Some("true"), "{r:?}");
    let r = post_with(&c, 0, "/counter/edge", &[(KEY, &long_key)], "3");
    assert_eq!((r.resp.status, r.resp.body.as_str()), (200, "3"), "{r:?}");
    assert_eq!(r.header(REPLAYED), Some("true"), "{r:?}");
    reuse(&c, "after the crash");
    assert_eq!(state(&c), expected, "retries after the restart applied");

    // A new key is a new increment.
    let r = post_with(&c, 0, "/counter/x", &[(KEY, "k2")], "1");
    assert_eq!((r.resp.status, r.resp.body.as_str()), (200, "7"), "{r:?}");
    assert_eq!(r.header(REPLAYED), None, "{r:?}");
}

/// The documented limits of the window: with `--idempotency-keys 2` the
/// oldest key is forgotten when a third arrives, and with
/// `--idempotency-window 1s` a key is forgotten once a second has passed,
/// with no other write in between; a forgotten key is a new key.
#[test]
fn idempotency_keys_are_forgotten_beyond_capacity_and_window() {
    // Two nodes: one with a small capacity, one with a short window.
    let mut c = Cluster::empty("idemwin");
    let spec = c.spec(1, &["--idempotency-keys", "2"]);
    c.add(spec);
    let spec = c.spec(2, &["--idempotency-window", "1s"]);
    c.add(spec);
    let keyed = |i: usize, key: &str, name: &str| {
        post_with(&c, i, &format!("/counter/{name}"), &[(KEY, key)], "1")
    };

    // Capacity: k1, k2, k3 leaves k2 and k3.
    for (key, want) in [("k1", "1"), ("k2", "2"), ("k3", "3")] {
        let r = keyed(0, key, "cap");
        assert_eq!((r.resp.status, r.resp.body.as_str()), (200, want), "{r:?}");
        assert_eq!(r.header(REPLAYED), None, "{r:?}");
    }
    let r = keyed(0, "k3", "cap");
    assert_eq!(
        (r.resp.body.as_str(), r.header(REPLAYED)),
        ("3", Some("true")),
        "{r:?}"
    );
    let r = keyed(0, "k1", "cap");
    assert_eq!(
        (r.resp.status, r.resp.body.as_str(), r.header(REPLAYED)),
        (200, "4", None),
        "the oldest key beyond capacity is forgotten: {r:?}"
    );
    assert_eq!(c.value(0, "cap"), 4);

    // Window: once a second has passed, kw is forgotten by itself.
    let r = keyed(1, "kw", "win");
    assert_eq!(
        (r.resp.body.as_str(), r.header(REPLAYED)),
        ("1", None),
        "{r:?}"
    );
    let used = Instant::now();
    let r = keyed(1, "kw", "win");
    assert_eq!(
        (r.resp.body.as_str(), r.header(REPLAYED)),
        ("1", Some("true")),
        "{r:?}"
    );
    assert!(
        wait_until(Duration::from_secs(5), || used.elapsed()
            > Duration::from_millis(1300)),
        "time passes"
    );
    let r = keyed(1, "kw", "win");
    assert_eq!(
        (r.resp.status, r.resp.body.as_str(), r.header(REPLAYED)),
        (200, "2", None),
        "a key past its window is a new key: {r:?}"
    );
    assert_eq!(c.value(1, "win"), 2);
}

// ---------------------------------------------------------------------------
// 2. Batch increments

/// `POST /counters` answers every name's new value, applies all or nothing
/// (an overflowing item refuses the whole batch), and refuses malformed
/// batches with 400/413 without changing anything.
#[test]
fn batches_are_atomic_and_bad_batches_change_nothing() {
    let c = Cluster::start("batch", 1, &[]);
    let url = c.url(0, "/counters");

    let r = c.http.post(&url, &batch_body(&[("a", 2), ("b", 3)]));
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.content_type.starts_with("application/json"), "{r:?}");
    assert_eq!(
        r.json(),
        json!({"values": [{"name": "a", "value": 2}, {"name": "b", "value": 3}]})
    );
    assert_eq!((c.value(0, "a"), c.value(0, "b")), (2, 3));
    // Without a key a repeated batch is a new batch.
    let r = c.http.post(&url, &batch_body(&[("a", 2), ("b", 3)]));
    assert_eq!(
        batch_values(&r),
        [("a".to_string(), 4), ("b".to_string(), 6)]
    );

    // Atomicity: bring "full" to u64::MAX - 1 with one increment, then a
    // batch whose second item overflows must leave the first undone.
    assert_eq!(c.incr(0, "full", u64::MAX - 1), MAX - 1);
    let names_before = names_count(&c, 0);
    let r = c.http.post(&url, &batch_body(&[("spare", 1), ("full", 5)]));
    let e = r.assert_error(400, "overflowing batch");
    assert!(
        e["error"].as_str().unwrap_or("").contains("overflow"),
        "the error should say overflow: {e}"
    );
    // Two items of one name that overflow only together.
    let r = c
        .http
        .post(&url, &batch_body(&[("twice", u64::MAX), ("twice", 1)]));
    r.assert_error(400, "batch overflowing one name in two items");
    assert_eq!(c.value(0, "spare"), 0, "the batch was applied in part");
    assert_eq!(c.value(0, "twice"), 0, "the batch was applied in part");
    assert_eq!(c.value(0, "full"), MAX - 1);
    assert_eq!(
        names_count(&c, 0),
        names_before,
        "a refused batch made names"
    );

    // Bad batches.
    let snapshot = |c: &Cluster| -> (Vec<u128>, u64) {
        let values = ["a", "b", "full", "spare", "x", "many"]
            .iter()
            .map(|n| c.value(0, n))
            .collect();
        (values, names_count(c, 0))
    };
    let before = snapshot(&c);
    let item = r#"{"name":"a","amount":1}"#;
    let items = |n: usize| vec![item; n].join(",");
    let long_name = "n".repeat(1025);
    let bad: Vec<(&str, String, u16)> = vec![
        ("empty list", r#"{"increments": []}"#.into(), 400),
        (
            "1001 items",
            format!(r#"{{"increments": [{}]}}"#, items(1001)),
            400,
        ),
        (
            "unknown top-level field",
            format!(r#"{{"increments": [{item}], "extra": 1}}"#),
            400,
        ),
        (
            "unknown item field",
            r#"{"increments": [{"name":"a","amount":1,"extra":true}]}"#.into(),
            400,
        ),
        (
            "empty name",
            format!(r#"{{"increments": [{item}, {{"name":"","amount":1}}]}}"#),
            400,
        ),
        (
            "1025-byte name",
            format!(r#"{{"increments": [{item}, {{"name":"{long_name}","amount":1}}]}}"#),
            400,
        ),
        (
            "negative amount",
            format!(r#"{{"increments": [{item}, {{"name":"b","amount":-1}}]}}"#),
            400,
        ),
        (
            "fractional amount",
            r#"{"increments": [{"name":"a","amount":1.5}]}"#.into(),
            400,
        ),
        (
            "amount as a string",
            r#"{"increments": [{"name":"a","amount":"1"}]}"#.into(),
            400,
        ),
        (
            "amount beyond u64",
            r#"{"increments": [{"name":"x","amount":18446744073709551616}]}"#.into(),
            400,
        ),
        (
            "missing amount",
            r#"{"increments": [{"name":"x"}]}"#.into(),
            400,
        ),
        (
            "name not a string",
            r#"{"increments": [{"name":5,"amount":1}]}"#.into(),
            400,
        ),
        (
            "increments not a list",
            format!(r#"{{"increments": {item}}}"#),
            400,
        ),
        ("missing increments", "{}".into(), 400),
        ("a bare list", format!("[{item}]"), 400),
        ("truncated JSON", format!(r#"{{"increments": [{item}"#), 400),
        ("not JSON", "a=1&b=2".into(), 400),
        ("empty body", String::new(), 400),
        (
            "body over 64 KiB",
            format!(r#"{{"increments": [{}]}}"#, items(3000)),
            413,
        ),
    ];
    for (what, body, status) in &bad {
        let r = c.http.post(&url, body);
        r.assert_error(*status, what);
        assert_eq!(snapshot(&c), before, "{what} changed stored data");
    }

    // The largest batch, 1000 items of one name, is applied whole.
    let r = c.http.post(
        &url,
        &format!(
            r#"{{"increments": [{}]}}"#,
            vec![r#"{"name":"many","amount":1}"#; 1000].join(",")
        ),
    );
    let values = batch_values(&r);
    assert_eq!(values.len(), 1000, "one answer per item");
    assert_eq!(values.last(), Some(&("many".to_string(), 1000)));
    assert_eq!(c.value(0, "many"), 1000);
}

/// A batch replicates like single increments: consistent reads on either
/// node of a 2-node cluster see the sum of batches made on both, and the
/// other node's local value converges.
#[test]
fn batches_replicate() {
    let c = Cluster::start_configured("batchrep", 2, &[]);
    let url = |i| c.url(i, "/counters");
    let r = c.http.post(&url(0), &batch_body(&[("r", 4), ("s", 6)]));
    assert_eq!(
        batch_values(&r),
        [("r".to_string(), 4), ("s".to_string(), 6)]
    );
    let r = c.http.post(&url(1), &batch_body(&[("r", 10)]));
    assert_eq!(batch_values(&r)[0].0, "r");
    for i in 0..2 {
        assert_eq!(c.consistent(i, "r", "5s").number(), 14, "node {}", i + 1);
        assert_eq!(c.consistent(i, "s", "5s").number(), 6, "node {}", i + 1);
    }
    c.wait_value(1, "s", 6, Duration::from_secs(10));
    c.wait_value(0, "r", 14, Duration::from_secs(10));
    c.wait_value(1, "r", 14, Duration::from_secs(10));
}

// ---------------------------------------------------------------------------
// 3. Listing

/// Follows `next` through `GET /counters?prefix=..&limit=..`; returns every
/// (name, value) seen, checking each page holds 1..=limit entries.
fn list_all(c: &Cluster, prefix: &str, limit: usize) -> Vec<(String, u128)> {
    let mut after: Option<String> = None;
    let mut got = Vec::new();
    for _page in 0..100 {
        let mut path = format!("/counters?prefix={}&limit={limit}", enc(prefix));
        if let Some(a) = &after {
            path.push_str(&format!("&after={}", enc(a)));
        }
        let r = c.http.get(&c.url(0, &path));
        assert_eq!(r.status, 200, "{path}: {r:?}");
        assert!(r.content_type.starts_with("application/json"), "{r:?}");
        let v = r.json();
        let page = v["counters"]
            .as_array()
            .unwrap_or_else(|| panic!("{path}: no counters list: {v}"));
        assert!(
            page.len() <= limit,
            "{path}: page of {} > limit {limit}: {v}",
            page.len()
        );
        for e in page {
            got.push((
                e["name"].as_str().expect("name").to_string(),
                u128::from(e["value"].as_u64().expect("value")),
            ));
        }
        match &v["next"] {
            Value::Null => return got,
            Value::String(next) => {
                assert!(!page.is_empty(), "{path}: empty page with a next: {v}");
                after = Some(next.clone());
            }
            other => panic!("{path}: next is neither null nor a string: {other}"),
        }
    }
    panic!("listing of prefix {prefix:?} did not end within 100 pages: {got:?}");
}

/// Paging through a prefix returns every matching name exactly once, in
/// byte order, with its local value; limits outside 1..=1000 are 400;
/// percent-encoded prefixes (space, '/', UTF-8) work.
#[test]
fn listing_pages_through_every_name_once_in_order() {
    let c = Cluster::start("list", 1, &[]);
    let p_names = [
        "p", "p a", "p/x", "p\u{e9}", "p0", "pZ", "pa", "pb", "pz", "p~", "pa/b", "p+q", "p&q=1",
        "p%41",
    ];
    let others = ["o", "q", "P", "ap", "\u{e9}p"];
    let items: Vec<(&str, u64)> = p_names
        .iter()
        .chain(&others)
        .enumerate()
        .map(|(i, n)| (*n, i as u64 + 1))
        .collect();
    let r = c.http.post(&c.url(0, "/counters"), &batch_body(&items));
    assert_eq!(batch_values(&r).len(), items.len());
    let value_of: BTreeMap<&str, u128> = items.iter().map(|(n, a)| (*n, u128::from(*a))).collect();

    let mut want: Vec<(String, u128)> = p_names
        .iter()
        .map(|n| (n.to_string(), value_of[n]))
        .collect();
    want.sort(); // String order is byte order.
    for limit in [1, 2, 3, 1000] {
        assert_eq!(list_all(&c, "p", limit), want, "prefix p, limit {limit}");
    }
    // Values are the local values.
    for (name, v) in &want {
        assert_eq!(c.value(0, &enc(name)), *v, "{name}");
    }
    // No prefix: every name; a prefix nothing has: nothing.
    assert_eq!(list_all(&c, "", 4).len(), items.len());
    assert_eq!(list_all(&c, "nothing-has-this", 2), []);

    // `after` need not be a stored name.
    let r = c
        .http
        .get(&c.url(0, "/counters?prefix=p&after=pc&limit=1000"));
    assert_eq!(r.status, 200, "{r:?}");
    let names: Vec<String> = r.json()["counters"]
        .as_array()
        .expect("counters")
        .iter()
        .map(|e| e["name"].as_str().expect("name").to_string())
        .collect();
    let want_after: Vec<String> = want
        .iter()
        .map(|(n, _)| n.clone())
        .filter(|n| n.as_str() > "pc")
        .collect();
    assert_eq!(names, want_after);

    // Percent-encoded prefixes.
    for (query, want_names) in [
        ("p%20", vec!["p a"]),
        ("p+", vec!["p a"]),
        ("p%2F", vec!["p/x"]),
        ("pa%2f", vec!["pa/b"]),
        ("p%C3%A9", vec!["p\u{e9}"]),
        ("p%2B", vec!["p+q"]),
        ("p%26", vec!["p&q=1"]),
        ("p%25", vec!["p%41"]),
        ("%C3%A9", vec!["\u{e9}p"]),
    ] {
        let r = c
            .http
            .get(&c.url(0, &format!("/counters?prefix={query}&limit=10")));
        assert_eq!(r.status, 200, "prefix={query}: {r:?}");
        let v = r.json();
        let got: Vec<(String, u128)> = v["counters"]
            .as_array()
            .expect("counters")
            .iter()
            .map(|e| {
                (
                    e["name"].as_str().expect("name").to_string(),
                    u128::from(e["value"].as_u64().expect("value")),
                )
            })
            .collect();
        let want: Vec<(String, u128)> = want_names
            .iter()
            .map(|n| (n.to_string(), value_of[n]))
            .collect();
        assert_eq!(got, want, "prefix={query}");
        assert_eq!(v["next"], Value::Null, "prefix={query}");
    }

    // Bad limits and a prefix that is not UTF-8.
    for query in [
        "limit=0",
        "limit=1001",
        "limit=abc",
        "limit=-1",
        "limit=",
        "limit=2.5",
        "limit=99999999999999999999999",
        "prefix=%FF",
    ] {
        let r = c.http.get(&c.url(0, &format!("/counters?{query}")));
        r.assert_error(400, query);
    }
}

// ---------------------------------------------------------------------------
// 4. JSON view of one counter

/// `GET /counter/<name>` is JSON with the name, the value and one component
/// per node that counted (node id, incarnation, count) summing to the value.
#[test]
fn json_view_shows_every_nodes_component() {
    let c = Cluster::start_configured("view", 2, &[]);
    let view = |i: usize, name: &str| -> Value {
        let r = c.http.get(&c.url(i, &format!("/counter/{name}")));
        assert_eq!(r.status, 200, "{r:?}");
        assert!(r.content_type.starts_with("application/json"), "{r:?}");
        r.json()
    };
    assert_eq!(
        view(0, "never"),
        json!({"name": "never", "value": 0, "components": []})
    );

    c.incr(0, "j", 3);
    c.incr(1, "j", 4);
    c.incr(1, "j", 1);
    let incarnations: Vec<u64> = (0..2)
        .map(|i| {
            let hex = c.status(i)["incarnation"]
                .as_str()
                .expect("incarnation")
                .to_string();
            u64::from_str_radix(&hex, 16).unwrap_or_else(|e| panic!("{hex}: {e}"))
        })
        .collect();
    for i in 0..2 {
        let v = eventually(
            &format!("node {} sees both components of j", i + 1),
            Duration::from_secs(10),
            || {
                let v = view(i, "j");
                if v["value"] == 8 {
                    Ok(v)
                } else {
                    Err(v.to_string())
                }
            },
        );
        assert_eq!(v["name"], "j", "{v}");
        let mut comps: Vec<(u64, u64, u64)> = v["components"]
            .as_array()
            .unwrap_or_else(|| panic!("no components: {v}"))
            .iter()
            .map(|c| {
                let obj = c.as_object().expect("component is an object");
                assert_eq!(obj.len(), 3, "component fields: {c}");
                (
                    c["node"].as_u64().expect("node"),
                    c["incarnation"].as_u64().expect("incarnation"),
                    c["count"].as_u64().expect("count"),
                )
            })
            .collect();
        comps.sort();
        assert_eq!(
            comps,
            [(1, incarnations[0], 3), (2, incarnations[1], 5)],
            "node {}: {v}",
            i + 1
        );
        let sum: u64 = comps.iter().map(|c| c.2).sum();
        assert_eq!(v["value"], sum, "{v}");
    }

    // Sums beyond u64 are exact in the view (and in every other answer).
    c.incr(0, "huge", u64::MAX);
    c.incr(1, "huge", u64::MAX);
    let exact = (2 * MAX).to_string();
    for i in 0..2 {
        eventually(
            &format!("node {} view of huge is exact", i + 1),
            Duration::from_secs(10),
            || {
                let r = c.http.get(&c.url(i, "/counter/huge"));
                if r.status == 200 && r.body.contains(&format!(r#""value":{exact}"#)) {
                    Ok(())
                } else {
                    Err(format!("{r:?}"))
                }
            },
        );
        assert_eq!(c.consistent(i, "huge", "5s").number(), 2 * MAX);
        let r = c.http.get(&c.url(i, "/counters?prefix=huge"));
        assert!(
            r.body
                .contains(&format!(r#"{{"name":"huge","value":{exact}}}"#)),
            "listing of huge on node {}: {r:?}",
            i + 1
        );
    }

    // Percent-decoded names; bad names are 400.
    c.incr(0, "j%2Fk", 2);
    assert_eq!(
        view(0, "j%2Fk"),
        json!({"name": "j/k", "value": 2, "components": [
            {"node": 1, "incarnation": incarnations[0], "count": 2}
        ]})
    );
    let r = c.http.get(&c.url(0, "/counter/%FF"));
    r.assert_error(400, "name not UTF-8");
    let r = c
        .http
        .get(&c.url(0, &format!("/counter/{}", "n".repeat(1025))));
    r.assert_error(400, "name too long");
}

// ---------------------------------------------------------------------------
// 5. Metrics

#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// Parses the sample lines of Prometheus/OpenMetrics text.
fn parse_metrics(text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in text.lines() {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (name, labels, rest) = match line.find('{') {
            Some(open) if line.find(' ').is_none_or(|sp| open < sp) => {
                let close = line
                    .rfind('}')
                    .unwrap_or_else(|| panic!("unclosed labels: {line}"));
                (
                    &line[..open],
                    parse_labels(&line[open + 1..close]),
                    &line[close + 1..],
                )
            }
            _ => {
                let (n, rest) = line
                    .split_once(' ')
                    .unwrap_or_else(|| panic!("no value: {line}"));
                (n, BTreeMap::new(), rest)
            }
        };
        let raw = rest
            .split_whitespace()
            .next()
            .unwrap_or_else(|| panic!("no value: {line}"));
        let value = raw
            .parse::<f64>()
            .unwrap_or_else(|e| panic!("value {raw:?} of {line:?}: {e}"));
        out.push(Sample {
            name: name.to_string(),
            labels,
            value,
        });
    }
    out
}

fn parse_labels(s: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.peek() == Some(&',') || chars.peek() == Some(&' ') {
            chars.next();
        }
        let mut key = String::new();
        for ch in chars.by_ref() {
            if ch == '=' {
                break;
            }
            key.push(ch);
        }
        if key.is_empty() {
            return out;
        }
        assert_eq!(chars.next(), Some('"'), "label {key} of {s:?}");
        let mut value = String::new();
        while let Some(ch) = chars.next() {
            match ch {
                '\\' => match chars.next() {
                    Some('n') => value.push('\n'),
                    Some(other) => value.push(other),
                    None => break,
                },
                '"' => break,
                other => value.push(other),
            }
        }
        out.insert(key, value);
    }
}

/// The value of the sample `name` whose labels are exactly `labels`.
fn sample(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let want: BTreeMap<String, String> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    samples
        .iter()
        .find(|s| s.name == name && s.labels == want)
        .map(|s| s.value)
}

fn scrape(c: &Cluster, i: usize) -> Vec<Sample> {
    let r = c.http.get(&c.url(i, "/metrics"));
    assert_eq!(r.status, 200, "{r:?}");
    assert!(
        r.content_type.starts_with("application/openmetrics-text"),
        "metrics content type: {r:?}"
    );
    assert!(r.body.ends_with("# EOF\n"), "OpenMetrics ends with # EOF");
    parse_metrics(&r.body)
}

/// `/metrics` is OpenMetrics text whose counters move by exactly what was
/// done: increments applied (replays excluded), requests by route and
/// status, consistent reads by outcome; peers show up and bytes flow.
#[test]
fn metrics_count_what_happened() {
    let c = Cluster::start_configured("metrics", 2, &[]);
    let addrs = c.addrs();
    let inc = |s: &[Sample]| sample(s, "tally_increments_applied_total", &[]).unwrap_or(0.0);
    let http = |s: &[Sample], status: &str| {
        sample(
            s,
            "tally_http_requests_total",
            &[
                ("method", "POST"),
                ("route", "/counter/{name}"),
                ("status", status),
            ],
        )
        .unwrap_or(0.0)
    };
    let reads = |s: &[Sample]| {
        sample(s, "tally_consistent_reads_total", &[("outcome", "ok")]).unwrap_or(0.0)
    };

    let before = scrape(&c, 0);
    const N: u64 = 7;
    for k in 1..=N {
        c.incr(0, "m", k);
    }
    let r = c.http.post(&c.url(0, "/counter/m"), "abc");
    r.assert_error(400, "bad body");
    // A keyed increment and its replay: one increment, two requests.
    for _ in 0..2 {
        let r = post_with(&c, 0, "/counter/mk", &[(KEY, "metrics-key")], "1");
        assert_eq!(r.resp.status, 200, "{r:?}");
    }
    assert_eq!(
        c.consistent(0, "m", "5s").number(),
        u128::from(N * (N + 1) / 2)
    );
    let after = scrape(&c, 0);

    assert_eq!(
        inc(&after) - inc(&before),
        (N + 1) as f64,
        "tally_increments_applied_total"
    );
    assert_eq!(
        http(&after, "200") - http(&before, "200"),
        (N + 2) as f64,
        "http requests 200 on /counter/{{name}}"
    );
    assert_eq!(
        http(&after, "400") - http(&before, "400"),
        1.0,
        "http requests 400 on /counter/{{name}}"
    );
    assert_eq!(reads(&after) - reads(&before), 1.0, "consistent reads ok");
    // Reads of the same route template count under their own method.
    assert_eq!(
        sample(
            &after,
            "tally_http_requests_total",
            &[
                ("method", "GET"),
                ("route", "/counter/{name}/consistent_value"),
                ("status", "200"),
            ],
        ),
        Some(1.0),
        "GET requests are apart from POST ones"
    );
    assert_eq!(
        sample(
            &after,
            "tally_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        Some(1.0)
    );
    assert!(
        sample(&after, "process_resident_memory_bytes", &[]).is_some_and(|b| b > 1e6),
        "a node holds more than a megabyte resident"
    );
    assert!(sample(&after, "process_open_fds", &[]).is_some_and(|n| n >= 3.0));
    assert_eq!(
        sample(&after, "tally_names", &[]),
        Some(names_count(&c, 0) as f64),
        "tally_names matches /status"
    );

    // Each node sees the other up, and has sent it bytes.
    for (i, peer) in [(0, &addrs[1]), (1, &addrs[0])] {
        eventually(
            &format!("node {} reports peer {peer} up with bytes sent", i + 1),
            Duration::from_secs(10),
            || {
                let s = scrape(&c, i);
                let up = sample(&s, "tally_peer_up", &[("peer", peer)]);
                let sent = sample(&s, "tally_peer_bytes_sent_total", &[("peer", peer)]);
                match (up, sent) {
                    (Some(u), Some(b)) if u == 1.0 && b > 0.0 => Ok(()),
                    other => Err(format!("(up, bytes sent) = {other:?}")),
                }
            },
        );
    }
}

// ---------------------------------------------------------------------------
// 6. Status

fn peer_report(c: &Cluster, observer: usize, actor: &str) -> Result<Value, String> {
    let url = c.url(observer, "/status");
    let r = c
        .http
        .try_request("GET", &url, None, Duration::from_secs(3))?;
    if r.status != 200 {
        return Err(format!("status answered {r:?}"));
    }
    let s = r.json();
    s["peers"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["actor"] == actor).cloned())
        .ok_or_else(|| format!("no peer {actor} in {s}"))
}

/// In a 3-node cluster, `/status` shows a SIGSTOPped peer unreachable within
/// a bound, and reachable with a recent contact again after SIGCONT; the
/// other peer stays reachable throughout.
#[test]
fn status_tracks_a_paused_peer() {
    let c = Cluster::start_configured("status", 3, &[]);
    let addrs = c.addrs();
    for (i, addr) in addrs.iter().enumerate() {
        let s = c.status(i);
        assert_eq!(s["id"], i as u64 + 1, "{s}");
        assert_eq!(s["self"], addr.as_str(), "{s}");
        let inc = s["incarnation"].as_str().expect("incarnation");
        assert!(
            inc.len() == 16 && inc.bytes().all(|b| b.is_ascii_hexdigit()),
            "{s}"
        );
        assert_eq!(s["config"]["actors"], json!(addrs), "{s}");
    }
    let victim = 2;
    let all_up = |bound_ms: u64| {
        for obs in 0..2 {
            for (j, actor) in addrs.iter().enumerate() {
                if j == obs {
                    continue;
                }
                eventually(
                    &format!("node {} sees {actor} reachable", obs + 1),
                    Duration::from_secs(10),
                    || {
                        let p = peer_report(&c, obs, actor)?;
                        let recent = p["last_contact_ms_ago"]
                            .as_u64()
                            .is_some_and(|ms| ms <= bound_ms);
                        if p["reachable"] == true && recent && p["node"] == j as u64 + 1 {
                            Ok(())
                        } else {
                            Err(p.to_string())
                        }
                    },
                );
            }
        }
    };
    all_up(2000);

    c.nodes[victim].signal("STOP");
    let paused = Instant::now();
    for obs in 0..2 {
        eventually(
            &format!("node {} sees the paused node unreachable", obs + 1),
            Duration::from_secs(10),
            || {
                let p = peer_report(&c, obs, &addrs[victim])?;
                if p["reachable"] == false {
                    Ok(())
                } else {
                    Err(p.to_string())
                }
            },
        );
        // The other live peer is unaffected.
        let other = &addrs[1 - obs];
        let p = peer_report(&c, obs, other).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(p["reachable"], true, "{p}");
    }
    eprintln!(
        "paused peer reported unreachable after {:?}",
        paused.elapsed()
    );
    // The metrics agree.
    for obs in 0..2 {
        let s = scrape(&c, obs);
        assert_eq!(
            sample(&s, "tally_peer_up", &[("peer", &addrs[victim])]),
            Some(0.0),
            "node {} tally_peer_up of the paused node",
            obs + 1
        );
    }

    c.nodes[victim].signal("CONT");
    let resumed = Instant::now();
    all_up(1000);
    for obs in 0..2 {
        let s = scrape(&c, obs);
        assert_eq!(
            sample(&s, "tally_peer_up", &[("peer", &addrs[victim])]),
            Some(1.0),
            "node {} tally_peer_up of the resumed node",
            obs + 1
        );
    }
    eprintln!(
        "resumed peer reported reachable after {:?}",
        resumed.elapsed()
    );
}

// ---------------------------------------------------------------------------
// 7. SIGTERM under load

/// Sets a flag when dropped, so load threads stop on every path.
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// SIGTERM while four clients increment: the node exits 0 within 15 s, and
/// after a restart on the same folder the value lies between the
/// acknowledged sum and the sent sum.
#[test]
fn sigterm_under_load_exits_zero_and_keeps_every_acknowledged_increment() {
    let mut c = Cluster::start_configured("term", 1, &[]);
    let url = c.url(0, "/counter/load");
    let acked = AtomicU64::new(0);
    let sent = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    let mut exit = None;
    let mut took = Duration::ZERO;
    std::thread::scope(|s| {
        let _stop = StopOnDrop(&stop);
        for t in 1..=4u64 {
            let (url, acked, sent, stop) = (&url, &acked, &sent, &stop);
            s.spawn(move || {
                let http = Http::new(true);
                let deadline = Instant::now() + Duration::from_secs(30);
                let body = t.to_string();
                while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
                    sent.fetch_add(t, Ordering::SeqCst);
                    match http.try_request(
                        "POST",
                        url,
                        Some(body.as_bytes()),
                        Duration::from_secs(5),
                    ) {
                        Ok(r) if r.status == 200 => {
                            acked.fetch_add(t, Ordering::SeqCst);
                        }
                        // Refused, shutting down or no answer: this client stops.
                        other => {
                            eprintln!("client {t} stops on {other:?}");
                            return;
                        }
                    }
                }
            });
        }
        eventually("load is acknowledged", Duration::from_secs(10), || {
            let a = acked.load(Ordering::SeqCst);
            if a >= 300 {
                Ok(())
            } else {
                Err(format!("acknowledged {a}"))
            }
        });
        c.nodes[0].signal("TERM");
        let termed = Instant::now();
        exit = c.nodes[0].wait_exit(Duration::from_secs(15));
        took = termed.elapsed();
    });
    let exit = exit.unwrap_or_else(|| panic!("no exit within 15 s of SIGTERM"));
    assert!(
        exit.success(),
        "exit status {exit} after SIGTERM; log:\n{}",
        c.nodes[0].log()
    );
    eprintln!("exited {took:?} after SIGTERM");
    let (acked, sent) = (acked.into_inner(), sent.into_inner());
    c.restart(0);
    let value = c.value(0, "load");
    eprintln!("SIGTERM under load: acknowledged {acked}, stored {value}, sent {sent}");
    assert!(
        u128::from(acked) <= value && value <= u128::from(sent),
        "after restart: acknowledged {acked} <= value {value} <= sent {sent} does not hold"
    );
    assert!(
        !c.nodes[0].log().contains("panicked"),
        "{}",
        c.nodes[0].log()
    );
}

// ---------------------------------------------------------------------------
// 8. Cluster secret

/// With `--secret`, `/config` and the internal route refuse a missing
/// secret (401) or a wrong one (403) and change nothing; a forged push
/// cannot inject counts; public routes need no secret; with the right
/// secret the config is applied and the nodes replicate (they send the
/// secret to each other). Without a secret the same forged push is accepted.
#[test]
fn the_cluster_secret_guards_config_and_internal_routes() {
    let c = Cluster::start("secret", 2, &["--secret", SECRET]);
    let addrs = c.addrs();
    let cfg = json!({ "actors": addrs }).to_string();
    let configs: Vec<Value> = (0..2).map(|i| c.status(i)["config"].clone()).collect();
    assert_eq!(configs[0]["actors"], json!([]), "{}", configs[0]);

    let refused = |context: &str| {
        for i in 0..2 {
            let r = c.http.post(&c.url(i, "/config"), &cfg);
            r.assert_error(401, &format!("{context}: config without secret"));
            let r = c.http.post(&c.url(i, RPC), FORGED_PUSH);
            r.assert_error(401, &format!("{context}: push without secret"));
            for wrong in ["s3creT", "wrong", "s3cret-and-more", "x"] {
                let r = post_with(&c, i, "/config", &[(SECRET_HEADER, wrong)], &cfg);
                r.resp
                    .assert_error(403, &format!("{context}: config with secret {wrong:?}"));
                let r = post_with(&c, i, RPC, &[(SECRET_HEADER, wrong)], FORGED_PUSH);
                r.resp
                    .assert_error(403, &format!("{context}: push with secret {wrong:?}"));
            }
        }
    };
    refused("before any config");
    for (i, config) in configs.iter().enumerate() {
        assert_eq!(&c.status(i)["config"], config, "config changed");
        assert_eq!(c.value(i, "x"), 0, "a forged push was merged");
        assert_eq!(names_count(&c, i), 0, "a refused request made names");
    }

    // Public routes need no secret.
    assert_eq!(c.incr(0, "pub", 1), 1);
    assert_eq!(c.value(0, "pub"), 1);

    // The right secret.
    let r = post_with(&c, 0, "/config", &[(SECRET_HEADER, SECRET)], &cfg);
    assert_eq!(r.resp.status, 200, "{r:?}");
    assert_eq!(r.resp.json()["changed"], true, "{r:?}");
    c.wait_config_everywhere(&addrs, Duration::from_secs(10));
    c.wait_peers_known(Duration::from_secs(10));
    c.incr(0, "sec", 2);
    c.incr(1, "sec", 5);
    for i in 0..2 {
        assert_eq!(c.consistent(i, "sec", "5s").number(), 7, "node {}", i + 1);
    }
    c.wait_value(1, "pub", 1, Duration::from_secs(10));
    c.wait_value(0, "sec", 7, Duration::from_secs(10));
    // Still refused once configured, and x is still untouched.
    refused("configured");
    for i in 0..2 {
        assert_eq!(c.consistent(i, "x", "5s").number(), 0, "node {}", i + 1);
    }

    // The secret shows nowhere a client or a log reader can see it.
    for i in 0..2 {
        for path in ["/status", "/metrics"] {
            let r = c.http.get(&c.url(i, path));
            assert!(!r.body.contains(SECRET), "{path} shows the secret: {r:?}");
        }
        let log = c.nodes[i].log();
        assert!(!log.contains(SECRET), "the log shows the secret:\n{log}");
    }

    // Without a secret anyone who reaches the port can inject counts: the
    // reason to set one.
    let open = Cluster::start("nosecret", 1, &[]);
    let r = open.http.post(&open.url(0, RPC), FORGED_PUSH);
    assert_eq!(r.status, 200, "forged push on a node without secret: {r:?}");
    assert_eq!(open.value(0, "x"), 1000, "the forged count was merged");
}

// ---------------------------------------------------------------------------
// 7. Connection budgets

/// What a [`Flood`] saw.
#[derive(Default)]
struct FloodStats {
    /// Connections answered 200 and still open.
    held: AtomicU64,
    /// Connections that ended without a 200: refused.
    refused: AtomicU64,
    /// Refused connections that got no answer at all (closed or reset).
    unanswered: AtomicU64,
    /// Largest counter value read through the flood.
    seen: AtomicU64,
    /// Refusals that were not a readable 503 with a JSON error,
    /// `Retry-After` and `Connection: close`.
    bad_refusals: std::sync::Mutex<Vec<String>>,
}

/// `threads` client connections to one node, held open, each sending
/// `GET /counter/<name>/value` every 50 ms and reconnecting when refused;
/// stopped (and joined) on drop.
struct Flood {
    stop: std::sync::Arc<AtomicBool>,
    stats: std::sync::Arc<FloodStats>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Flood {
    fn start(port: u16, name: &str, threads: usize) -> Flood {
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let stats = std::sync::Arc::new(FloodStats::default());
        let request = format!("GET /counter/{name}/value HTTP/1.1\r\nHost: flood\r\n\r\n");
        let threads = (0..threads)
            .map(|_| {
                let (stop, stats, request) = (stop.clone(), stats.clone(), request.clone());
                std::thread::spawn(move || flood_connection(port, &request, &stop, &stats))
            })
            .collect();
        Flood {
            stop,
            stats,
            threads,
        }
    }

    fn held(&self) -> u64 {
        self.stats.held.load(Ordering::SeqCst)
    }

    fn refused(&self) -> u64 {
        self.stats.refused.load(Ordering::SeqCst)
    }

    fn seen(&self) -> u64 {
        self.stats.seen.load(Ordering::SeqCst)
    }

    fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Flood {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One flooding client: connect, send requests on the open connection
/// until the node refuses or closes it, reconnect.
fn flood_connection(port: u16, request: &str, stop: &AtomicBool, stats: &FloodStats) {
    const PACE: Duration = Duration::from_millis(50);
    while !stop.load(Ordering::SeqCst) {
        let Ok(mut s) = eintr::connect(("127.0.0.1", port)) else {
            stats.refused.fetch_add(1, Ordering::SeqCst);
            std::thread::sleep(PACE);
            continue;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
        let _ = s.set_write_timeout(Some(Duration::from_secs(5)));
        let mut admitted = false;
        while !stop.load(Ordering::SeqCst) {
            if eintr::write_all(&mut s, request.as_bytes()).is_err() {
                break;
            }
            match read_answer(&mut s) {
                Ok(Some(a)) if a.status == 200 => {
                    if !admitted {
                        admitted = true;
                        stats.held.fetch_add(1, Ordering::SeqCst);
                    }
                    if let Ok(v) = a.body.parse::<u64>() {
                        stats.seen.fetch_max(v, Ordering::SeqCst);
                    }
                }
                Ok(Some(a)) => {
                    let json_error = serde_json::from_str::<Value>(&a.body)
                        .is_ok_and(|v| v["error"].as_str().is_some_and(|e| !e.is_empty()));
                    if a.status != 503
                        || !json_error
                        || a.header("retry-after").is_none()
                        || a.header("connection") != Some("close")
                    {
                        stats
                            .bad_refusals
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .push(format!("{a:?}"));
                    }
                    break;
                }
                Ok(None) | Err(_) => {
                    if !admitted {
                        stats.unanswered.fetch_add(1, Ordering::SeqCst);
                    }
                    break;
                }
            }
            std::thread::sleep(PACE);
        }
        if admitted {
            stats.held.fetch_sub(1, Ordering::SeqCst);
        } else {
            stats.refused.fetch_add(1, Ordering::SeqCst);
        }
        std::thread::sleep(PACE);
    }
}

/// A flood of client connections beyond `--max-connections` cannot starve
/// replication: peers have a budget of their own. Node 1 allows 8 client
/// connections and 24 flooding clients hold and retry them; only then is
/// the config posted (so no peer connection to node 1 exists yet). An
/// increment on node 2 still reaches node 1 (read through the flood's own
/// connections) and a consistent read on node 2, which must hear from node
/// 1, answers 200, all while the flood is held and still refused. Refused
/// clients get a readable 503; the metrics count them by class.
#[test]
fn a_client_flood_does_not_starve_replication() {
    let mut c = Cluster::empty("flood");
    let spec = c.spec(1, &["--max-connections", "8"]);
    c.add(spec);
    let spec = c.spec(2, &[]);
    c.add(spec);
    let addrs = c.addrs();

    let mut flood = Flood::start(c.nodes[0].spec.port, "f", 24);
    eventually(
        "the flood holds node 1's 8 client slots",
        Duration::from_secs(10),
        || {
            if flood.held() == 8 && flood.refused() >= 16 {
                Ok(())
            } else {
                Err(format!("held {} refused {}", flood.held(), flood.refused()))
            }
        },
    );

    let r = c.post_config(1, &addrs);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(c.incr(1, "f", 7), 7);
    eventually(
        "node 1's value (read by the flood) reaches 7",
        Duration::from_secs(10),
        || match flood.seen() {
            7 => Ok(()),
            v => Err(format!("flood reads {v}; held {}", flood.held())),
        },
    );
    let refused_before = flood.refused();
    let r = c.consistent(1, "f", "5s");
    assert_eq!((r.status, r.body.as_str()), (200, "7"), "{r:?}");
    eventually(
        "the flood is still refused",
        Duration::from_secs(10),
        || {
            if flood.refused() > refused_before {
                Ok(())
            } else {
                Err(format!("refused {}", flood.refused()))
            }
        },
    );
    assert_eq!(flood.held(), 8, "the flood still holds the client slots");

    flood.stop();
    let bad = flood.stats.bad_refusals.lock().unwrap().clone();
    assert!(
        bad.is_empty(),
        "refusals that were not a proper 503: {bad:?}"
    );
    assert_eq!(
        flood.stats.unanswered.load(Ordering::SeqCst),
        0,
        "refused clients closed or reset without an answer"
    );
    let samples = eventually(
        "node 1 serves /metrics again",
        Duration::from_secs(10),
        || {
            let r =
                c.http
                    .try_request("GET", &c.url(0, "/metrics"), None, Duration::from_secs(2))?;
            if r.status == 200 {
                Ok(parse_metrics(&r.body))
            } else {
                Err(format!("{r:?}"))
            }
        },
    );
    let refused = |class| {
        sample(
            &samples,
            "tally_connections_refused_total",
            &[("class", class)],
        )
    };
    assert!(
        refused("client").is_some_and(|n| n >= flood.refused() as f64),
        "client refusals: {:?}, flood saw {}",
        refused("client"),
        flood.refused()
    );
    assert_eq!(refused("peer"), Some(0.0), "no peer connection refused");
    assert!(
        sample(&samples, "tally_connections", &[("class", "client")]).is_some_and(|n| n >= 1.0),
        "this scrape's own connection is a client"
    );
    assert!(
        sample(&samples, "tally_connections", &[("class", "peer")]).is_some(),
        "peer connections are counted"
    );
}

/// Loses node 3's data folder right after it acknowledged increments alone
/// (its peers paused), then returns what a consistent read on node 1 sees
/// and the sums acknowledged and sent.
fn wipe_after_acking_alone(extra: &[&str]) -> (u128, u128, u128) {
    let mut c = Cluster::start_configured("wipe", 3, extra);
    // Replicated normally first.
    let mut acked = 0u128;
    let mut sent = 0u128;
    for _ in 0..5 {
        sent += 2;
        c.incr(2, "w", 2);
        acked += 2;
    }
    // Node 3 cut off from both peers (paused), then increments on it.
    c.nodes[0].signal("STOP");
    c.nodes[1].signal("STOP");
    for _ in 0..5 {
        sent += 3;
        let r = c.http.post(&c.url(2, "/counter/w"), "3");
        if r.status == 200 {
            acked += 3;
        }
    }
    // Its data folder is lost; it restarts empty, and its peers come back.
    c.nodes[2].kill();
    std::fs::remove_dir_all(c.dir().join("node-3")).unwrap();
    c.restart(2);
    c.nodes[0].signal("CONT");
    c.nodes[1].signal("CONT");
    let seen = eventually(
        "a consistent read on node 1",
        Duration::from_secs(15),
        || {
            let r = c.consistent(0, "w", "5s");
            if r.status == 200 {
                Ok(r.number())
            } else {
                Err(format!("{r:?}"))
            }
        },
    );
    (seen, acked, sent)
}

/// With --min-replicas 1 an increment is acknowledged only once another
/// actor holds it, so a lost data folder loses nothing acknowledged; the same
/// run without it loses what the node acknowledged alone (which shows the
/// check can fail).
#[test]
fn min_replicas_keeps_every_acknowledged_increment_when_a_folder_is_lost() {
    let (seen, acked, sent) =
        wipe_after_acking_alone(&["--min-replicas", "1", "--replica-timeout", "1s"]);
    assert_eq!(acked, 10, "nothing was acknowledged while node 3 was alone");
    assert!(
        seen >= acked && seen <= sent,
        "consistent read {seen}, acknowledged {acked}, sent {sent}"
    );
    let (seen, acked, _) = wipe_after_acking_alone(&[]);
    assert_eq!(acked, 25, "alone, node 3 acknowledged everything");
    assert!(
        seen < acked,
        "without replicas the lost folder takes its acknowledgements along ({seen} of {acked})"
    );
}

#[test]
fn replica_requirements_answer_503_saying_how_many_stored_it() {
    let c = Cluster::start_configured("replicas", 3, &["--replica-timeout", "1s"]);
    // Per request: both others store it.
    let r = c.http.post(&c.url(0, "/counter/r?replicas=2"), "1");
    assert_eq!(r.number(), 1, "{r:?}");
    assert_eq!(
        c.value(1, "r"),
        1,
        "acknowledged means stored on the others"
    );
    assert_eq!(c.value(2, "r"), 1);
    // More than the config has: refused at once, nothing applied.
    let r = c.http.post(&c.url(0, "/counter/r?replicas=3"), "1");
    let body = r.assert_error(503, "more replicas than actors");
    assert_eq!(body["available"], 2, "{body}");
    assert_eq!(c.value(0, "r"), 1);
    // One other actor paused: two cannot be had within the deadline.
    c.nodes[2].signal("STOP");
    let started = Instant::now();
    let a = post_with(&c, 0, "/counter/r?replicas=2", &[], "1");
    let body = a.resp.assert_error(503, "a replica is paused");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "bounded by --replica-timeout"
    );
    assert_eq!(
        (body["stored"].clone(), body["required"].clone()),
        (json!(1), json!(2)),
        "{body}"
    );
    assert!(a.header("retry-after").is_some(), "{a:?}");
    assert_eq!(
        body["local_values"],
        json!(["2"]),
        "applied here, not acknowledged"
    );
    // One is enough.
    let r = c.http.post(&c.url(0, "/counter/r?replicas=1"), "1");
    assert_eq!(r.number(), 3, "{r:?}");
    for bad in ["x", "-1", "999"] {
        let r = c
            .http
            .post(&c.url(0, &format!("/counter/r?replicas={bad}")), "1");
        r.assert_error(400, "a bad replica count");
    }
    c.nodes[2].signal("CONT");
    c.wait_value(2, "r", 3, Duration::from_secs(10));
}
