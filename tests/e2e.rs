//! End-to-end tests: the real `tally` binary, several processes on
//! 127.0.0.1, driven over HTTP and with signals (SIGSTOP, SIGCONT, SIGKILL,
//! SIGTERM). Each test owns its ports and its temp folder; see
//! `common/mod.rs` for the harness.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::*;

const MAX: u128 = u64::MAX as u128;

/// What a bad request must not change: values of some names and the number
/// of names the node knows.
fn snapshot(c: &Cluster, i: usize, names: &[&str]) -> (Vec<u128>, u64) {
    let values = names.iter().map(|n| c.value(i, n)).collect();
    let count = c.status(i)["names"]
        .as_u64()
        .expect("status reports the number of names");
    (values, count)
}

fn actors_of(status: &serde_json::Value) -> Vec<String> {
    status["config"]["actors"]
        .as_array()
        .expect("config.actors is a list")
        .iter()
        .map(|a| a.as_str().expect("actor is a string").to_string())
        .collect()
}

fn strings(v: &serde_json::Value) -> Vec<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("not a list: {v}"))
        .iter()
        .map(|a| a.as_str().expect("a string").to_string())
        .collect()
}

// ---------------------------------------------------------------------------
// The API surface on one node

/// Every route answers as SPEC §2 says: status codes, `text/plain` bare
/// digits, the config summary, `/status`, percent-decoded names.
#[test]
fn every_route_answers_as_specified() {
    let c = Cluster::start("routes", 1, &[]);
    let me = c.addrs()[0].clone();

    let r = c.post_config(0, std::slice::from_ref(&me));
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.content_type.starts_with("application/json"), "{r:?}");
    let summary = r.json();
    assert_eq!(summary["changed"], true, "{summary}");
    let version = summary["version"].as_u64().expect("version");
    assert!(version >= 1, "{summary}");
    assert_eq!(
        strings(&summary["actors"]),
        std::slice::from_ref(&me),
        "{summary}"
    );
    assert_eq!(summary["self"], me.as_str(), "{summary}");

    // A name never seen reads 0, locally and cluster-wide.
    assert_eq!(c.value(0, "fresh"), 0);
    assert_eq!(c.consistent(0, "fresh", "5s").number(), 0);

    // POST answers the new local value: digits only, no newline.
    assert_eq!(c.incr(0, "visits", 5), 5);
    assert_eq!(c.incr(0, "visits", 7), 12);
    let r = c.http.post(&c.url(0, "/counter/visits"), " \n 30\t\r\n");
    assert_eq!(
        (r.status, r.body.as_str()),
        (200, "42"),
        "whitespace is allowed"
    );
    let r = c.http.post(&c.url(0, "/counter/visits"), "0");
    assert_eq!(
        (r.status, r.body.as_str()),
        (200, "42"),
        "adding 0 is allowed"
    );
    assert_eq!(c.value(0, "visits"), 42);
    let r = c.consistent(0, "visits", "5s");
    assert!(r.content_type.starts_with("text/plain"), "{r:?}");
    assert_eq!(r.body, "42");
    // Without ?timeout the node default applies.
    let r = c.http.get(&c.url(0, "/counter/visits/consistent_value"));
    assert_eq!((r.status, r.body.as_str()), (200, "42"));

    let s = c.status(0);
    assert_eq!(s["id"], 1, "{s}");
    assert_eq!(s["self"], me.as_str(), "{s}");
    assert_eq!(actors_of(&s), std::slice::from_ref(&me), "{s}");
    assert_eq!(s["config"]["version"].as_u64(), Some(version), "{s}");
    assert!(s["peers"].is_array(), "{s}");
    assert!(!s["incarnation"].as_str().unwrap_or("").is_empty(), "{s}");
    let data_dir = c.nodes[0].spec.data_dir.clone().expect("set");
    assert_eq!(s["data_dir"], data_dir.display().to_string(), "{s}");

    // Names are one percent-decoded path segment.
    assert_eq!(c.incr(0, "a%2Fb", 3), 3);
    assert_eq!(c.value(0, "a%2Fb"), 3);
    assert_eq!(c.value(0, "a%2fb"), 3, "hex digits in either case");
    assert_eq!(c.value(0, "a"), 0, "a%2Fb is not the counter a");
    c.http
        .get(&c.url(0, "/counter/a/b/value"))
        .assert_error(404, "a raw slash is not part of a name");
    assert_eq!(c.incr(0, "%61bc", 4), 4);
    assert_eq!(c.value(0, "abc"), 4, "%61bc and abc are the same name");
    assert_eq!(c.incr(0, "caf%C3%A9", 2), 2);
    assert_eq!(c.value(0, "caf%c3%a9"), 2);
    assert_eq!(c.incr(0, "a%20b", 6), 6);
    assert_eq!(c.consistent(0, "a%20b", "5s").number(), 6);
    // 1024 bytes is the longest name, counted in bytes of UTF-8.
    let ascii = "n".repeat(1024);
    assert_eq!(c.incr(0, &ascii, 1), 1);
    assert_eq!(c.value(0, &ascii), 1);
    let two_byte = "%C3%A9".repeat(512);
    assert_eq!(c.incr(0, &two_byte, 8), 8);
    assert_eq!(c.consistent(0, &two_byte, "5s").number(), 8);
}

/// Each malformed counter request gets the right 4xx with a JSON `error`,
/// and leaves every stored value (and the set of names) unchanged.
#[test]
fn bad_counter_requests_are_refused_and_change_nothing() {
    let c = Cluster::start_configured("badcounter", 1, &[]);
    assert_eq!(c.incr(0, "c", 7), 7);
    assert_eq!(c.incr(0, "big", u64::MAX), MAX);
    let watched = ["c", "big", "edge"];
    let before = snapshot(&c, 0, &watched);
    let check = |r: Resp, status: u16, what: &str| {
        r.assert_error(status, what);
        assert_eq!(
            snapshot(&c, 0, &watched),
            before,
            "{what} changed stored data"
        );
    };
    let post_c = c.url(0, "/counter/c");

    for body in [
        "",
        "   \n\t",
        "abc",
        "12a",
        "-1",
        "-0",
        "+1",
        "1.5",
        "1.0",
        "1e3",
        "0x10",
        "1 2",
        "1,000",
        "٣",
        "18446744073709551616",
        "99999999999999999999999999999999999999999",
    ] {
        check(
            c.http.post(&post_c, body),
            400,
            &format!("POST body {body:?}"),
        );
    }
    check(
        c.http.request("POST", &post_c, Some(b"\xff\xfe1")),
        400,
        "body that is not UTF-8",
    );

    // An increment that would overflow this node's own component.
    let post_big = c.url(0, "/counter/big");
    check(c.http.post(&post_big, "1"), 400, "overflow by 1");
    check(
        c.http.post(&post_big, &u64::MAX.to_string()),
        400,
        "overflow by u64::MAX",
    );
    assert_eq!(
        c.http.post(&post_big, "0").body,
        MAX.to_string(),
        "+0 never overflows"
    );

    // Bodies over 64 KiB.
    let over = "1".repeat(64 * 1024 + 1);
    check(c.http.post(&post_c, &over), 413, "65537-byte body");
    let padded_over = format!("1{}", " ".repeat(64 * 1024));
    check(
        c.http.post(&post_c, &padded_over),
        413,
        "65537-byte body of whitespace",
    );

    // Empty, too long, or not UTF-8 names, on every counter route.
    for (method, path) in [
        ("GET", "/counter//value".to_string()),
        ("GET", "/counter//consistent_value".to_string()),
        ("POST", "/counter/".to_string()),
        ("POST", format!("/counter/{}", "n".repeat(1025))),
        ("GET", format!("/counter/{}/value", "n".repeat(1025))),
        (
            "GET",
            format!("/counter/{}/consistent_value", "n".repeat(1025)),
        ),
        ("POST", format!("/counter/{}", "%C3%A9".repeat(513))),
        ("POST", "/counter/%FF".to_string()),
        ("GET", "/counter/%FF/value".to_string()),
        ("GET", "/counter/a%FFb/consistent_value".to_string()),
        ("POST", "/counter/%C3%28".to_string()),
        ("GET", "/counter/%C3/value".to_string()),
    ] {
        let body = (method == "POST").then_some(&b"1"[..]);
        let r = c.http.request(method, &c.url(0, &path), body);
        let shown: String = path.chars().take(60).collect();
        check(r, 400, &format!("{method} {shown}"));
    }

    // Bad deadlines on a consistent read.
    for t in ["abc", "0", "-1", "", "1x", "0s", "NaN", "inf"] {
        let url = c.url(0, &format!("/counter/c/consistent_value?timeout={t}"));
        check(c.http.get(&url), 400, &format!("timeout={t:?}"));
    }

    // The limit is "over 64 KiB": exactly 64 KiB is accepted.
    let exact = format!("1{}", " ".repeat(64 * 1024 - 1));
    let r = c.http.post(&c.url(0, "/counter/edge"), &exact);
    assert_eq!(
        (r.status, r.body.as_str()),
        (200, "1"),
        "a 64 KiB body is allowed"
    );
    assert_eq!(c.value(0, "c"), 7);
    assert_eq!(c.value(0, "big"), MAX);
}

/// Malformed `POST /config` bodies get 400 (413 when too large) with a JSON
/// `error`, and neither the config nor any counter changes.
#[test]
fn bad_config_is_refused_and_changes_nothing() {
    let c = Cluster::start_configured("badconfig", 2, &[]);
    assert_eq!(c.incr(0, "c", 3), 3);
    let before: Vec<serde_json::Value> = (0..2).map(|i| c.status(i)["config"].clone()).collect();
    let [a1, a2] = [c.addrs()[0].clone(), c.addrs()[1].clone()];
    let url = c.url(0, "/config");
    let mut bodies: Vec<String> = [
        "",
        "   ",
        "{",
        "null",
        "[]",
        "{}",
        "\"127.0.0.1\"",
        r#"{"actors": "127.0.0.1:7777"}"#,
        r#"{"actors": []}"#,
        r#"{"actors": null}"#,
        r#"{"actors": [1, 2]}"#,
        r#"{"actors": [null]}"#,
        r#"{"actors": [["127.0.0.1"]]}"#,
        r#"{"actors": ["not an address"]}"#,
        r#"{"actors": [""]}"#,
        r#"{"actors": ["host"]}"#,
        r#"{"actors": ["127.0.0.1:0"]}"#,
        r#"{"actors": ["127.0.0.1:99999"]}"#,
        r#"{"actors": ["127.0.0.1:x"]}"#,
        r#"{"actors": ["http://127.0.0.1:80"]}"#,
        r#"{"actors": ["a b:80"]}"#,
        r#"{"actors": ["::1:80:"]}"#,
        r#"{"actors": ["[::1]"]}"#,
        r#"{"actors": ["300.1.1.1"]}"#,
        r#"{"actors": ["127.0.0.1", "127.0.0.1:7777"]}"#,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    bodies.push(format!(r#"{{"actors": ["{a1}", "{a1}"]}}"#));
    bodies.push(format!(r#"{{"actors": ["{a1}", "{a2}", "{a1}"]}}"#));
    bodies.push(format!(r#"{{"actors": ["{a1}", " {a1} "]}}"#));
    bodies.push(format!(r#"{{"actors": ["{a1}", "{a2}", "nope"]}}"#));
    for body in &bodies {
        let r = c.http.post(&url, body);
        r.assert_error(400, &format!("config {body:?}"));
        assert_eq!(
            c.status(0)["config"],
            before[0],
            "config {body:?} changed the config"
        );
        assert_eq!(c.value(0, "c"), 3);
    }
    let huge = format!(r#"{{"actors": ["{a1}"], "pad": "{}"}}"#, "x".repeat(70_000));
    c.http
        .post(&url, &huge)
        .assert_error(413, "config over 64 KiB");
    // Nothing reached the other node either.
    assert_eq!(c.status(1)["config"], before[1]);
    assert_eq!(c.status(0)["config"], before[0]);
    assert_eq!(c.consistent(1, "c", "5s").number(), 3);
}

/// Unknown routes answer 404 and wrong methods 405, with a JSON `error`,
/// and neither changes a counter or the config.
#[test]
fn unknown_routes_are_404_and_wrong_methods_405() {
    let c = Cluster::start_configured("methods", 1, &[]);
    assert_eq!(c.incr(0, "c", 5), 5);
    let config = c.status(0)["config"].clone();
    let watched = ["c", "a", "a%2Fb", "b"];
    let before = snapshot(&c, 0, &watched);
    let valid_config = format!(r#"{{"actors": ["{}"]}}"#, c.addrs()[0]);
    let cases: Vec<(&str, &str, Option<&str>, u16)> = vec![
        ("POST", "/", Some("1"), 405),
        ("GET", "/nope", None, 404),
        ("POST", "/nope", Some("1"), 404),
        ("GET", "/counter", None, 404),
        ("POST", "/counter", Some("1"), 404),
        ("GET", "/counters/c/value", None, 404),
        ("GET", "/counter/c/other", None, 404),
        ("GET", "/counter/c/value/extra", None, 404),
        ("GET", "/counter/c/value/", None, 404),
        ("POST", "/counter/c/", Some("1"), 404),
        ("POST", "/counter/a/b", Some("1"), 404),
        ("POST", "/counter/c/increment", Some("1"), 404),
        ("GET", "/config/x", None, 404),
        ("DELETE", "/counters", None, 405),
        ("PUT", "/counter/c", Some("5"), 405),
        ("PATCH", "/counter/c", Some("5"), 405),
        ("DELETE", "/counter/c", None, 405),
        ("POST", "/counter/c/value", Some("5"), 405),
        ("PUT", "/counter/c/value", Some("5"), 405),
        ("DELETE", "/counter/c/value", None, 405),
        ("POST", "/counter/c/consistent_value", Some("5"), 405),
        ("DELETE", "/counter/c/consistent_value", None, 405),
        ("GET", "/config", None, 405),
        ("PUT", "/config", Some(valid_config.as_str()), 405),
        ("DELETE", "/config", None, 405),
        ("POST", "/status", Some("{}"), 405),
        ("DELETE", "/status", None, 405),
    ];
    for (method, path, body, status) in cases {
        let r = c
            .http
            .request(method, &c.url(0, path), body.map(str::as_bytes));
        let what = format!("{method} {path}");
        r.assert_error(status, &what);
        assert_eq!(
            snapshot(&c, 0, &watched),
            before,
            "{what} changed stored data"
        );
        assert_eq!(c.status(0)["config"], config, "{what} changed the config");
    }
}

/// Requests malformed at the HTTP level (sent raw over TCP) are refused with
/// a 4xx, do not crash the node and change nothing; a chunked body over the
/// limit gets 413 with a JSON error, and a well-formed chunked body works.
#[test]
fn malformed_http_is_refused_without_harm() {
    let c = Cluster::start_configured("raw", 1, &[]);
    let port = c.nodes[0].spec.port;
    assert_eq!(c.incr(0, "c", 5), 5);
    let watched = ["c"];
    let before = snapshot(&c, 0, &watched);
    let t = Duration::from_secs(5);

    let big = "1".repeat(70_000);
    let chunked_big = format!(
        "POST /counter/c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n{:x}\r\n{big}\r\n0\r\n\r\n",
        big.len()
    );
    let (status, raw) = raw_request(port, chunked_big.as_bytes(), t);
    assert_eq!(status, Some(413), "chunked 70000-byte body: {raw:.300}");
    let v: serde_json::Value = serde_json::from_str(raw_body(&raw)).expect("JSON error body");
    assert!(v["error"].is_string(), "{raw}");
    assert_eq!(snapshot(&c, 0, &watched), before);

    let cases: [&[u8]; 7] = [
        b"GET /counter/\xff/value HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        b"GET /counter/a b/value HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        b"BLAH\r\n\r\n",
        b"POST /counter/c HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\nConnection: close\r\n\r\n5",
        b"POST /counter/c HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\nConnection: close\r\n\r\n55",
        b"POST /counter/c HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\nConnection: close\r\n\r\n5",
        b"POST /counter/c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\nzz\r\n5\r\n0\r\n\r\n",
    ];
    for req in cases {
        let shown = String::from_utf8_lossy(req);
        let (status, raw) = raw_request(port, req, t);
        let status = status.unwrap_or_else(|| panic!("no HTTP answer to {shown:?}: {raw:?}"));
        assert!(
            (400..500).contains(&status),
            "{shown:?} answered {status}: {raw:?}"
        );
        assert_eq!(snapshot(&c, 0, &watched), before, "{shown:?} changed data");
    }

    // A well-formed chunked body ("1" then "2": twelve) is read in full.
    let chunked = b"POST /counter/c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n1\r\n1\r\n1\r\n2\r\n0\r\n\r\n";
    let (status, raw) = raw_request(port, chunked, t);
    assert_eq!(status, Some(200), "{raw}");
    assert_eq!(raw_body(&raw), "17");
}

/// A client that sends headers and then stalls mid-body holds only its own
/// connection: other clients are served at once, and SIGTERM still stops
/// the node (exit 0) within its shutdown bound, keeping acknowledged data.
#[test]
fn a_stalled_client_slows_nothing_else_and_cannot_block_shutdown() {
    let mut c = Cluster::start_configured("stalled", 1, &["--shutdown-timeout", "2s"]);
    assert_eq!(c.incr(0, "s", 4), 4);
    let port = c.nodes[0].spec.port;
    let mut stalled = eintr::connect(("127.0.0.1", port)).expect("connect");
    eintr::write_all(
        &mut stalled,
        b"POST /counter/s HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n1",
    )
    .expect("write");
    for _ in 0..5 {
        let t = Instant::now();
        c.incr(0, "s", 1);
        c.value(0, "s");
        assert!(
            t.elapsed() < Duration::from_secs(1),
            "slowed by a stalled client"
        );
    }
    assert_eq!(c.value(0, "s"), 9);
    let t = Instant::now();
    c.nodes[0].signal("TERM");
    let status = c.nodes[0].wait_exit(Duration::from_secs(2 + 5));
    let status = status.unwrap_or_else(|| {
        panic!("SIGTERM with a stalled client: no exit within the 2 s shutdown bound + 5 s")
    });
    assert!(status.success(), "exit status {status} after SIGTERM");
    drop(stalled);
    assert!(t.elapsed() < Duration::from_secs(7));
    c.restart(0);
    assert_eq!(
        c.value(0, "s"),
        9,
        "the stalled request added nothing; the rest is kept"
    );
}

/// G6: nothing waits without a deadline, not a handler. A client that
/// sends a request head announcing a body and then stalls after one byte
/// gets an error answer (408) or a closed connection within the body
/// deadline (10 s), never a 2xx, and the partial body changes nothing.
#[test]
fn a_stalled_body_is_cut_off_within_a_bound() {
    let c = Cluster::start_configured("stalledbody", 1, &[]);
    let port = c.nodes[0].spec.port;
    let mut s = eintr::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    eintr::write_all(
        &mut s,
        b"POST /counter/s HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n1",
    )
    .expect("write");
    let mut buf = [0u8; 512];
    match eintr::read(&mut s, &mut buf) {
        // Closed, or an error answer: the node gave up on the body.
        Ok(0) => {}
        Ok(n) => {
            let answer = String::from_utf8_lossy(&buf[..n]);
            assert!(!answer.starts_with("HTTP/1.1 2"), "{answer}");
        }
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Err(e) => panic!("no answer and no close 30 s after the body stalled ({e})"),
    }
    assert_eq!(c.value(0, "s"), 0);
}

// ---------------------------------------------------------------------------
// Replication and consistent reads

/// Many clients increment concurrently on all three nodes; afterwards every
/// node's consistent_value is exactly the sum of acknowledged increments
/// (G1, G2), all local values converge to it (G4), and sums beyond u64 are
/// exact.
#[test]
fn concurrent_increments_on_all_nodes_sum_exactly() {
    let c = Cluster::start_configured("concurrent", 3, &[]);
    let names = ["alpha", "beta", "x%2Fy"];
    const THREADS_PER_NODE: usize = 4;
    const PER_THREAD: u64 = 30;
    let acked: Vec<BTreeMap<&str, u128>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..3)
            .flat_map(|node| (0..THREADS_PER_NODE).map(move |t| (node, t)))
            .map(|(node, t)| {
                let c = &c;
                s.spawn(move || {
                    let http = Http::new(true);
                    let mut sums: BTreeMap<&str, u128> = BTreeMap::new();
                    let mut last: BTreeMap<&str, u128> = BTreeMap::new();
                    for k in 0..PER_THREAD {
                        let name = names[(t + k as usize) % names.len()];
                        let amount = 1 + (k * 37 + t as u64 * 101 + node as u64 * 7) % 1000;
                        let url = c.url(node, &format!("/counter/{name}"));
                        let r = http.post(&url, &amount.to_string());
                        assert_eq!(r.status, 200, "node {node}: {r:?}");
                        let v = parse_digits(&r.body);
                        // The local value never goes back: this answer is at
                        // least the previous one seen here plus this amount.
                        let floor = last.get(name).copied().unwrap_or(0) + u128::from(amount);
                        assert!(v >= floor, "node {node} answered {v} < {floor} for {name}");
                        last.insert(name, v);
                        *sums.entry(name).or_default() += u128::from(amount);
                    }
                    sums
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("client thread"))
            .collect()
    });
    let mut total: BTreeMap<&str, u128> = BTreeMap::new();
    for sums in &acked {
        for (name, v) in sums {
            *total.entry(name).or_default() += v;
        }
    }
    assert_eq!(total.len(), names.len());
    // No waiting for replication: a consistent read that starts after the
    // acknowledgements must include all of them, and nothing more.
    for i in 0..3 {
        for (name, sum) in &total {
            let r = c.consistent(i, name, "5s");
            assert_eq!(r.status, 200, "node {i} {name}: {r:?}");
            assert_eq!(
                parse_digits(&r.body),
                *sum,
                "consistent {name} on node {}",
                i + 1
            );
        }
    }
    for i in 0..3 {
        for (name, sum) in &total {
            c.wait_value(i, name, *sum, Duration::from_secs(10));
        }
    }
    // Each node's component is a u64; the sum is exact beyond u64::MAX.
    for i in 0..3 {
        assert!(c.incr(i, "huge", u64::MAX) >= MAX);
    }
    for i in 0..3 {
        let r = c.consistent(i, "huge", "5s");
        assert_eq!(r.body, (3 * MAX).to_string(), "{r:?}");
    }
    for i in 0..3 {
        c.wait_value(i, "huge", 3 * MAX, Duration::from_secs(10));
    }
}

/// One node SIGSTOPped: a consistent read answers 503 naming exactly that
/// node, by its deadline and not much before, with a best-known value that
/// invents nothing; POST, value and status on the others stay fast. A read
/// in flight when the node resumes answers 200 promptly, and afterwards
/// every node reads the exact sum and the paused node catches up.
#[test]
fn a_paused_peer_gives_503_within_the_deadline_and_slows_nothing_else() {
    let c = Cluster::start_configured("pause", 3, &[]);
    let addrs = c.addrs();
    let mut sum = 0u128;
    for i in 0..3 {
        c.incr(i, "p", (i as u64 + 1) * 10);
        sum += (i as u128 + 1) * 10;
    }
    c.nodes[2].signal("STOP");

    std::thread::scope(|s| {
        let reads: Vec<_> = (0..2)
            .map(|i| {
                let c = &c;
                s.spawn(move || {
                    let t = Instant::now();
                    let r = c.consistent(i, "p", "2s");
                    (r, t.elapsed())
                })
            })
            .collect();
        // Meanwhile the two running nodes answer at once.
        for _ in 0..10 {
            for i in 0..2 {
                let t = Instant::now();
                c.incr(i, "p", 1);
                sum += 1;
                c.value(i, "p");
                c.status(i);
                assert!(
                    t.elapsed() < Duration::from_secs(1),
                    "node {} slowed by a paused peer: {:?}",
                    i + 1,
                    t.elapsed()
                );
            }
        }
        // Re-posting the config does not hang on the paused node either.
        let t = Instant::now();
        let r = c.post_config(1, &addrs);
        assert_eq!((r.status, r.json()["changed"].clone()), (200, false.into()));
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());

        for (i, h) in reads.into_iter().enumerate() {
            let (r, took) = h.join().expect("reader");
            let v = r.assert_error(503, &format!("consistent read on node {}", i + 1));
            assert_eq!(strings(&v["unreachable"]), [addrs[2].clone()], "{v}");
            let best = u128::from(v["best_known_value"].as_u64().expect("best_known_value"));
            assert!(
                best >= 30,
                "best_known_value {best} misses what nodes 1 and 2 had"
            );
            assert!(
                best <= sum,
                "best_known_value {best} exceeds the {sum} sent"
            );
            assert!(
                took >= Duration::from_millis(1800),
                "gave up after {took:?}, before its 2 s deadline"
            );
            assert!(
                took < Duration::from_secs(5),
                "503 came {took:?} after the request, deadline 2 s"
            );
        }
    });

    // A read waiting on the paused node answers promptly once it resumes.
    let started = AtomicBool::new(false);
    std::thread::scope(|s| {
        let reader = s.spawn(|| {
            started.store(true, Ordering::SeqCst);
            let r = c.consistent(1, "p", "20s");
            (r, Instant::now())
        });
        assert!(wait_until(Duration::from_secs(5), || started.load(Ordering::SeqCst)));
        // Keep the pause longer than one peer call (1 s), so the read is
        // retrying when the node comes back.
        std::thread::sleep(Duration::from_millis(1500));
        assert!(
            !reader.is_finished(),
            "the read answered while a node was paused"
        );
        let resumed = Instant::now();
        c.nodes[2].signal("CONT");
        let (r, done) = reader.join().expect("reader");
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(parse_digits(&r.body), sum);
        let lag = done.saturating_duration_since(resumed);
        assert!(
            lag < Duration::from_secs(3),
            "answered {lag:?} after the node resumed"
        );
    });

    for i in 0..3 {
        let r = c.consistent(i, "p", "5s");
        assert_eq!(
            (r.status, r.body.clone()),
            (200, sum.to_string()),
            "node {}",
            i + 1
        );
    }
    c.wait_value(2, "p", sum, Duration::from_secs(10));
}

/// A consistent read hears from every node rather than trusting local
/// state: with anti-entropy slowed to a minute, a node paused while others
/// count misses their pushes, yet once resumed its consistent_value is the
/// exact cluster sum at once (G1, G5).
#[test]
fn consistent_reads_consult_every_node_not_local_state() {
    let c = Cluster::start_configured("divergent", 3, &["--sync-interval", "60s"]);
    let addrs = c.addrs();
    let mut sum = 0u128;
    for (i, amount) in [(0, 1), (2, 2)] {
        c.incr(i, "g", amount);
        sum += u128::from(amount);
    }
    for i in 0..3 {
        c.wait_value(i, "g", sum, Duration::from_secs(10));
    }
    c.nodes[2].signal("STOP");
    c.incr(0, "g", 5);
    c.incr(1, "g", 6);
    sum += 11;
    for i in 0..2 {
        eventually(
            &format!("node {} sees node 3 as unreachable", i + 1),
            Duration::from_secs(10),
            || {
                let s = c.status(i);
                let down = s["peers"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|p| p["actor"] == addrs[2].as_str() && p["reachable"] == false);
                down.then_some(()).ok_or(format!("{}", s["peers"]))
            },
        );
    }
    c.incr(0, "g", 7);
    c.incr(1, "g", 8);
    sum += 15;
    c.nodes[2].signal("CONT");
    let local = c.value(2, "g");
    let r = c.consistent(2, "g", "5s");
    assert_eq!(
        (r.status, r.body.clone()),
        (200, sum.to_string()),
        "consistent read on node 3 (its local value was {local})"
    );
    for i in 0..2 {
        let r = c.consistent(i, "g", "5s");
        assert_eq!((r.status, r.body.clone()), (200, sum.to_string()));
    }
    eprintln!("divergent: node 3 local {local}, cluster {sum}");
}

/// Increments `name` on node `i` and adds the amount to the expected sums.
fn add(
    c: &Cluster,
    sums: &mut BTreeMap<&'static str, u128>,
    i: usize,
    name: &'static str,
    amount: u64,
) -> u128 {
    *sums.entry(name).or_default() += u128::from(amount);
    c.incr(i, name, amount)
}

/// SIGKILL right after an acknowledged burst, restart with the same id and
/// folder and no config post: every acknowledged increment is kept, the
/// node shows its config and incarnation again, catches up on what others
/// acknowledged while it was down, and answers consistent reads. Then the
/// whole cluster is killed and restarted, again without a config post.
#[test]
fn a_killed_node_restarts_from_its_storage_and_rejoins() {
    let mut c = Cluster::start_configured("restart", 3, &[]);
    let addrs = c.addrs();
    let mut sums: BTreeMap<&str, u128> = BTreeMap::new();
    for i in 0..3 {
        add(&c, &mut sums, i, "r", 100 + i as u64);
        add(&c, &mut sums, i, "q%2Fz", 1);
    }
    let before = c.status(2);
    let mut last = 0;
    for k in 1..=20 {
        last = add(&c, &mut sums, 2, "burst", k);
    }
    c.nodes[2].kill();

    // While it is down: reads that need it fail in time, writes elsewhere work.
    let t = Instant::now();
    let r = c.consistent(0, "r", "1s");
    let v = r.assert_error(503, "consistent read with node 3 down");
    assert_eq!(strings(&v["unreachable"]), [addrs[2].clone()], "{v}");
    assert!(t.elapsed() < Duration::from_secs(4), "{:?}", t.elapsed());
    add(&c, &mut sums, 0, "r", 1000);
    add(&c, &mut sums, 1, "r", 2000);
    add(&c, &mut sums, 1, "burst", 5);
    add(&c, &mut sums, 0, "down", 9);

    // Restart it while its peers are paused, so that what it shows can only
    // come from its own storage.
    for i in 0..2 {
        c.nodes[i].signal("STOP");
    }
    c.restart(2);
    let after = c.status(2);
    let own_burst = c.value(2, "burst");
    for i in 0..2 {
        c.nodes[i].signal("CONT");
    }
    assert_eq!(
        after["config"], before["config"],
        "config not recovered from storage"
    );
    assert_eq!(
        after["incarnation"], before["incarnation"],
        "same folder, same incarnation"
    );
    assert_eq!(
        own_burst, last,
        "node 3 lost acknowledged increments over SIGKILL"
    );
    for (name, sum) in sums.clone() {
        c.wait_value(2, name, sum, Duration::from_secs(10));
    }
    for (name, sum) in sums.clone() {
        for i in [2, 0] {
            let r = c.consistent(i, name, "5s");
            assert_eq!(
                (r.status, parse_digits(&r.body)),
                (200, sum),
                "{name} on node {}",
                i + 1
            );
        }
    }

    // The whole cluster crashes and comes back with no config post.
    for i in 0..3 {
        c.nodes[i].kill();
    }
    for i in 0..3 {
        c.restart(i);
        assert_eq!(
            actors_of(&c.status(i)),
            addrs,
            "node {} lost its config",
            i + 1
        );
    }
    add(&c, &mut sums, 0, "r", 7);
    for i in 0..3 {
        for (name, sum) in &sums {
            let r = c.consistent(i, name, "5s");
            assert_eq!(
                (r.status, parse_digits(&r.body)),
                (200, *sum),
                "{name} on node {}",
                i + 1
            );
        }
    }
}

/// G8: a config posted to one node reaches all of them, each finds which
/// actor is itself, re-posting the same actors (any order, any spelling of
/// the same address) changes nothing, and a membership change keeps the
/// counts of the node that leaves.
#[test]
fn config_reaches_all_nodes_and_reposts_change_nothing() {
    let c = Cluster::start("config", 3, &[]);
    let addrs = c.addrs();
    assert_eq!(c.status(0)["config"]["actors"], serde_json::json!([]));

    let r = c.post_config(1, &addrs);
    assert_eq!(r.status, 200, "{r:?}");
    let summary = r.json();
    assert_eq!(summary["changed"], true, "{summary}");
    assert_eq!(strings(&summary["actors"]), addrs, "{summary}");
    assert_eq!(summary["self"], addrs[1].as_str(), "{summary}");
    let version = summary["version"].as_u64().expect("version");
    assert_eq!(
        c.wait_config_everywhere(&addrs, Duration::from_secs(10)),
        version
    );
    for (i, addr) in addrs.iter().enumerate() {
        eventually(
            &format!("node {} knows itself", i + 1),
            Duration::from_secs(10),
            || {
                let s = c.status(i);
                (s["self"] == addr.as_str())
                    .then_some(())
                    .ok_or(format!("{s}"))
            },
        );
    }

    // The same actors again, to any node, in any order or spelling.
    let reordered: Vec<String> = vec![
        format!(" {} ", addrs[2]),
        addrs[0].clone(),
        addrs[1].clone(),
    ];
    for (i, list) in [(2, addrs.clone()), (0, addrs.clone()), (1, reordered)] {
        let r = c.post_config(i, &list);
        assert_eq!(r.status, 200, "{r:?}");
        let j = r.json();
        assert_eq!(j["changed"], false, "re-post to node {}: {j}", i + 1);
        assert_eq!(j["version"].as_u64(), Some(version), "{j}");
        assert_eq!(strings(&j["actors"]), addrs, "{j}");
    }
    for i in 0..3 {
        let s = c.status(i);
        assert_eq!(
            s["config"]["version"].as_u64(),
            Some(version),
            "node {}: {s}",
            i + 1
        );
        assert_eq!(actors_of(&s), addrs);
    }

    // Counts, then node 3 leaves: what it counted stays counted.
    let mut sum = 0;
    for i in 0..3 {
        c.incr(i, "m", 10 + i as u64);
        sum += 10 + i as u128;
    }
    for i in 0..3 {
        c.wait_value(i, "m", sum, Duration::from_secs(10));
    }
    let pair = addrs[..2].to_vec();
    let r = c.post_config(0, &pair);
    assert_eq!(r.status, 200, "{r:?}");
    let j = r.json();
    assert_eq!(j["changed"], true, "{j}");
    let v2 = j["version"].as_u64().expect("version");
    assert!(v2 > version, "{j}");
    eventually(
        "nodes 1 and 2 adopt the new config",
        Duration::from_secs(10),
        || {
            for i in 0..2 {
                let s = c.status(i);
                if actors_of(&s) != pair || s["config"]["version"].as_u64() != Some(v2) {
                    return Err(format!("node {}: {s}", i + 1));
                }
            }
            Ok(())
        },
    );
    // Node 3 left: it refuses increments, naming the cluster's actors (its
    // acknowledgements would be covered by no consistent read once it has
    // handed off), and hands off what it holds.
    let refused = c.http.post(&c.url(2, "/counter/m"), "1");
    let body = refused.assert_error(409, "an increment on a node that left");
    assert_eq!(strings(&body["actors"]), pair, "{body}");
    eventually(
        "node 3's hand-off is confirmed on nodes 1 and 2",
        Duration::from_secs(10),
        || {
            for i in 0..2 {
                let s = c.status(i);
                let leaving = &s["config"]["leaving"];
                if leaving[0]["actor"] != addrs[2].as_str() || leaving[0]["handed_off"] != true {
                    return Err(format!("node {}: {s}", i + 1));
                }
            }
            Ok(())
        },
    );
    // Having handed off, it refuses config posts too: reads under the
    // current config never ask it, so they would not learn of one made there.
    let r = c.post_config(2, &addrs);
    let body = r.assert_error(409, "a config posted to a node that left");
    assert_eq!(strings(&body["actors"]), pair, "{body}");
    // Then node 3 is no longer needed for a consistent read, even paused.
    c.nodes[2].signal("STOP");
    for i in 0..2 {
        let r = c.consistent(i, "m", "5s");
        assert_eq!(
            (r.status, r.body.clone()),
            (200, sum.to_string()),
            "node {}",
            i + 1
        );
    }
    c.nodes[2].signal("CONT");
}

// ---------------------------------------------------------------------------
// Data folders

/// G9: two nodes started from the same working folder with no --data-dir
/// keep their data apart, under tally-data/node-1 and tally-data/node-2,
/// and each finds its own data again after a restart.
#[test]
fn nodes_sharing_a_working_folder_keep_separate_data() {
    let mut c = Cluster::empty("cwd");
    for id in 1..=2 {
        let mut spec = c.spec(id, &[]);
        spec.data_dir = None;
        c.add(spec);
    }
    let r = c.post_config(0, &c.addrs());
    assert_eq!(r.status, 200, "{r:?}");
    c.wait_config_everywhere(&c.addrs(), Duration::from_secs(10));
    c.incr(0, "one", 5);
    c.incr(1, "two", 7);

    let root = c.dir().join("tally-data");
    let mut incarnations = Vec::new();
    for i in 0..2 {
        let s = c.status(i);
        let expected = root.join(format!("node-{}", i + 1));
        let reported = std::path::PathBuf::from(s["data_dir"].as_str().expect("data_dir"));
        let reported = if reported.is_relative() {
            c.dir().join(reported)
        } else {
            reported
        };
        assert_eq!(
            std::fs::canonicalize(&reported).ok(),
            std::fs::canonicalize(&expected).ok(),
            "node {} data folder: {s}",
            i + 1
        );
        let files = std::fs::read_dir(&expected)
            .unwrap_or_else(|e| panic!("{}: {e}", expected.display()))
            .count();
        assert!(files > 0, "{} is empty", expected.display());
        incarnations.push(s["incarnation"].clone());
    }
    assert_ne!(incarnations[0], incarnations[1], "two nodes, one identity");
    let mut entries: Vec<String> = std::fs::read_dir(&root)
        .expect("tally-data")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    entries.sort();
    assert_eq!(
        entries,
        ["node-1", "node-2"],
        "stray files in the shared folder"
    );

    for i in 0..2 {
        c.nodes[i].kill();
    }
    // Restarted in the other order, each finds its own folder again.
    for i in [1, 0] {
        c.restart(i);
        let s = c.status(i);
        assert_eq!(
            s["incarnation"],
            incarnations[i],
            "node {} got another folder",
            i + 1
        );
        assert_eq!(s["id"], i as u64 + 1);
    }
    assert_eq!(c.value(0, "one"), 5);
    assert_eq!(c.value(1, "two"), 7);
}

/// G9: without --data-dir the data folder is `./tally-data/node-<ID>` and
/// nothing else. When it cannot be a folder (a regular file in its place or
/// in place of `tally-data`, which stops root too), the node exits non-zero
/// with a message naming it and pointing to --data-dir / TALLY_DATA_DIR,
/// and creates nothing under HOME, XDG_DATA_HOME or TMPDIR instead.
#[test]
fn an_unusable_default_data_folder_stops_the_node_and_nothing_moves_elsewhere() {
    let c = Cluster::empty("nofallback");
    let home = c.dir().join("home");
    let xdg = c.dir().join("xdg");
    let tmp = c.dir().join("tmp");
    for d in [&home, &xdg, &tmp] {
        std::fs::create_dir_all(d).expect("mkdir");
    }
    let blocker = c.dir().join("tally-data");
    let cases = [
        // `tally-data` itself is a file, XDG_DATA_HOME set.
        (blocker.clone(), true),
        // `tally-data/node-1` is a file, no XDG_DATA_HOME (HOME applies).
        (blocker.join("node-1"), false),
    ];
    for (k, (file, with_xdg)) in cases.into_iter().enumerate() {
        let _ = std::fs::remove_dir_all(&blocker);
        let _ = std::fs::remove_file(&blocker);
        std::fs::create_dir_all(file.parent().expect("parent")).expect("mkdir");
        std::fs::write(&file, b"not a folder").expect("write");
        let mut spec = c.spec(1, &[]);
        spec.data_dir = None;
        let mut cmd = spec.command();
        cmd.env("HOME", &home).env("TMPDIR", &tmp);
        if with_xdg {
            cmd.env("XDG_DATA_HOME", &xdg);
        } else {
            cmd.env_remove("XDG_DATA_HOME");
        }
        let (status, stderr) = run_expecting_exit(
            cmd,
            &c.dir().join(format!("nofallback-{k}.log")),
            Duration::from_secs(10),
        );
        let status = status.unwrap_or_else(|| {
            panic!(
                "case {k}: the node started although {} is a file; stderr: {stderr}",
                file.display()
            )
        });
        assert!(!status.success(), "case {k}: exit {status}; {stderr}");
        assert!(!stderr.contains("panicked"), "case {k}: {stderr}");
        for needle in ["tally-data/node-1", "--data-dir", "TALLY_DATA_DIR"] {
            assert!(
                stderr.contains(needle),
                "case {k}: message lacks {needle:?}: {stderr}"
            );
        }
        for d in [&home, &xdg, &tmp] {
            let entries: Vec<_> = std::fs::read_dir(d)
                .expect("read_dir")
                .map(|e| e.expect("entry").file_name())
                .collect();
            assert!(
                entries.is_empty(),
                "case {k}: the node wrote under {} instead: {entries:?}",
                d.display()
            );
        }
        assert_eq!(
            std::fs::read(&file).expect("read"),
            b"not a folder",
            "case {k}"
        );
    }
}

/// A second process on a data folder in use refuses to start, with a
/// message naming the folder, and the first keeps working; a folder that
/// belongs to another node id and a port in use are refused the same way.
#[test]
fn a_second_process_on_the_same_folder_refuses_to_start() {
    let mut c = Cluster::start_configured("lock", 1, &[]);
    assert_eq!(c.incr(0, "c", 9), 9);
    let data_dir = c.nodes[0].spec.data_dir.clone().expect("set");
    let shown = data_dir.display().to_string();

    let mut spec = c.spec(1, &[]);
    spec.data_dir = Some(data_dir.clone());
    let (status, stderr) = run_expecting_exit(
        spec.command(),
        &c.dir().join("second.log"),
        Duration::from_secs(10),
    );
    let status = status.expect("second process still running after 10 s");
    assert!(!status.success(), "second process exited with {status}");
    assert!(
        stderr.contains(&shown),
        "stderr does not name {shown}: {stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    // The first is unharmed.
    assert_eq!(c.incr(0, "c", 1), 10);
    assert_eq!(c.status(0)["data_dir"], shown.as_str());

    // Another process on the same port.
    let mut spec = c.spec(7, &[]);
    spec.port = c.nodes[0].spec.port;
    let (status, stderr) = run_expecting_exit(
        spec.command(),
        &c.dir().join("port.log"),
        Duration::from_secs(10),
    );
    let status = status.expect("process on a busy port still running after 10 s");
    assert!(!status.success(), "exited with {status}");
    assert!(stderr.contains(&c.nodes[0].addr()), "{stderr}");
    assert_eq!(c.value(0, "c"), 10);

    // The folder of node 1 cannot become node 2's.
    c.nodes[0].signal("TERM");
    let exit = c.nodes[0]
        .wait_exit(Duration::from_secs(10))
        .expect("stops on SIGTERM");
    assert!(exit.success(), "{exit}");
    let mut spec = c.spec(2, &[]);
    spec.data_dir = Some(data_dir.clone());
    let (status, stderr) = run_expecting_exit(
        spec.command(),
        &c.dir().join("other-id.log"),
        Duration::from_secs(10),
    );
    let status = status.expect("node 2 on node 1's folder still running after 10 s");
    assert!(!status.success(), "exited with {status}");
    assert!(
        stderr.contains(&shown),
        "stderr does not name {shown}: {stderr}"
    );
    c.restart(0);
    assert_eq!(c.value(0, "c"), 10);
}

/// A data folder that cannot be a folder (a path under a regular file, or
/// the file itself) makes the node exit non-zero with a message that names
/// it (no panic), and nothing is overwritten. (A database file that fails
/// its check is damage: `tests/damage.rs`.)
#[test]
fn an_unusable_data_folder_stops_the_node_with_a_message() {
    let c = Cluster::empty("unusable");
    let file = c.dir().join("plain-file");
    std::fs::write(&file, b"not a folder").expect("write");
    for (k, dir) in [file.join("sub"), file.clone()].into_iter().enumerate() {
        let mut spec = c.spec(1, &[]);
        spec.data_dir = Some(dir.clone());
        let (status, stderr) = run_expecting_exit(
            spec.command(),
            &c.dir().join(format!("unusable-{k}.log")),
            Duration::from_secs(10),
        );
        let status = status.unwrap_or_else(|| panic!("{} accepted as data folder", dir.display()));
        assert!(!status.success(), "{}: exit {status}", dir.display());
        assert!(
            stderr.contains("tally: "),
            "no message on stderr: {stderr:?}"
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
        let shown = dir.display().to_string();
        assert!(
            stderr.contains(&shown),
            "message does not name {shown}: {stderr}"
        );
    }
    assert_eq!(std::fs::read(&file).expect("read"), b"not a folder");
}

/// G7: a node whose folder was wiped restarts with a new incarnation, counts
/// from its new component without losing its old one, learns the config
/// from its peers, and once synced never reports less than the cluster had
/// acknowledged; every node then reads the exact sum.
#[test]
fn a_wiped_node_gets_a_new_incarnation_and_never_goes_back() {
    let mut c = Cluster::start_configured("wipe", 3, &[]);
    let addrs = c.addrs();
    let mut sum = 0u128;
    for (i, amount) in [(2, 1000), (2, 234), (0, 5), (1, 6)] {
        c.incr(i, "w", amount);
        sum += u128::from(amount);
    }
    // Node 3's count lives on at its peers.
    for i in 0..2 {
        c.wait_value(i, "w", sum, Duration::from_secs(10));
    }
    let old = c.status(2)["incarnation"].clone();
    c.nodes[2].kill();
    let data_dir = c.nodes[2].spec.data_dir.clone().expect("set");
    std::fs::remove_dir_all(&data_dir).expect("wipe");
    c.restart(2);
    assert_ne!(
        c.status(2)["incarnation"],
        old,
        "a wiped folder kept its incarnation"
    );

    // Acknowledged at once, before it knows the cluster: still counted.
    c.incr(2, "w", 7);
    sum += 7;
    c.wait_config_everywhere(&addrs, Duration::from_secs(10));
    c.wait_value(2, "w", sum, Duration::from_secs(10));
    // Synced: from now on it never reports less.
    let v = c.incr(2, "w", 3);
    sum += 3;
    assert_eq!(v, sum, "a new increment on the wiped node");
    for i in 0..3 {
        let r = c.consistent(i, "w", "5s");
        assert_eq!(
            (r.status, parse_digits(&r.body)),
            (200, sum),
            "node {}",
            i + 1
        );
    }
    for i in 0..3 {
        c.wait_value(i, "w", sum, Duration::from_secs(10));
    }
}

/// G1 for a wiped node that has not heard from its peers yet: it lost its
/// config with its folder, so it cannot know whom to ask, and its
/// consistent_value must not answer 200 with less than the cluster
/// acknowledged (it answers 503 until a peer hands the config back). The
/// peers are paused so that this window is certain to be observed.
#[test]
fn a_wiped_node_never_answers_a_consistent_value_below_the_acknowledged_sum() {
    let mut c = Cluster::start_configured("wipeg1", 3, &[]);
    c.incr(0, "w", 50);
    c.incr(2, "w", 500);
    for i in 0..2 {
        c.wait_value(i, "w", 550, Duration::from_secs(10));
    }
    c.nodes[2].kill();
    std::fs::remove_dir_all(c.nodes[2].spec.data_dir.clone().expect("set")).expect("wipe");
    for i in 0..2 {
        c.nodes[i].signal("STOP");
    }
    c.restart(2);
    let r = c.consistent(2, "w", "1s");
    for i in 0..2 {
        c.nodes[i].signal("CONT");
    }
    assert!(
        r.status != 200 || parse_digits(&r.body) >= 550,
        "consistent_value on the wiped node: {r:?}, acknowledged 550"
    );
}

/// SIGTERM stops a node with exit status 0 within a bound, also while a
/// peer is paused and has a push pending, and what it acknowledged is there
/// after a restart.
#[test]
fn sigterm_exits_zero_promptly_and_keeps_data() {
    let mut c = Cluster::start_configured("term", 2, &[]);
    c.incr(0, "t", 11);
    c.incr(1, "t", 1);
    let t = Instant::now();
    c.nodes[1].signal("TERM");
    let status = c.nodes[1]
        .wait_exit(Duration::from_secs(5))
        .expect("no exit within 5 s of SIGTERM");
    assert!(status.success(), "exit status {status}");
    assert!(t.elapsed() < Duration::from_secs(5));

    c.restart(1);
    c.nodes[1].signal("STOP");
    assert_eq!(
        c.incr(0, "t", 5),
        17,
        "node 1 counts while its peer is paused"
    );
    let t = Instant::now();
    c.nodes[0].signal("TERM");
    let status = c.nodes[0]
        .wait_exit(Duration::from_secs(8))
        .expect("no exit within 8 s of SIGTERM with a paused peer");
    assert!(status.success(), "exit status {status}");
    c.nodes[1].signal("CONT");
    assert!(t.elapsed() < Duration::from_secs(8), "{:?}", t.elapsed());

    c.restart(0);
    assert_eq!(c.value(0, "t"), 17);
    for i in 0..2 {
        let r = c.consistent(i, "t", "5s");
        assert_eq!(
            (r.status, r.body.clone()),
            (200, "17".to_string()),
            "node {}",
            i + 1
        );
    }
}

/// Names received by anti-entropy on node `i`, per peer.
fn pulled_per_peer(c: &Cluster, i: usize) -> Vec<u64> {
    let body = c.http.get(&c.url(i, "/metrics")).body;
    body.lines()
        .filter(|l| l.starts_with("tally_replication_pulled_names_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .collect()
}

/// Adds 1 to `n` (a multiple of 1000) new names `{prefix}-{b}-{i}` on node
/// `i`, in batches of 1000.
fn write_names(c: &Cluster, i: usize, prefix: &str, n: u64) {
    for b in 0..n / 1000 {
        let items: Vec<String> = (0..1000)
            .map(|k| format!(r#"{{"name":"{prefix}-{b}-{k}","amount":1}}"#))
            .collect();
        let body = format!(r#"{{"increments":[{}]}}"#, items.join(","));
        let r = c.http.post(&c.url(i, "/counters"), &body);
        assert_eq!(r.status, 200, "{r:?}");
    }
}

/// Pages of node `i`'s pulls fetched ahead, answered with `outcome`, all peers together.
fn pulls_ahead(c: &Cluster, i: usize, outcome: &str) -> u64 {
    let body = c.http.get(&c.url(i, "/metrics")).body;
    let label = format!("outcome=\"{outcome}\"");
    body.lines()
        .filter(|l| l.starts_with("tally_replication_pulls_ahead_total{") && l.contains(&label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

/// A node that comes back far behind both of its peers fetches the backlog
/// from one of them at a time: when it first holds every name, the other
/// peer has sent it about a page (fetched before the turn was taken), not
/// the backlog a second time. Pulled from both at once, as before the
/// turn, each peer sends nearly all of it by then. With the turn, each
/// page after the first is fetched while the one before it merges, and
/// the peer (of this version, in protocol 3) answers those pulls ahead.
#[test]
fn a_node_far_behind_catches_up_from_one_peer_at_a_time() {
    const PAGE: u64 = 10_000;
    const NAMES: u64 = 8 * PAGE;
    let mut c = Cluster::start_configured("catch-up", 3, &[]);
    c.incr(0, "before", 1);
    c.wait_value(2, "before", 1, Duration::from_secs(10));
    let base = c.status(2)["names"].as_u64().expect("names");
    c.nodes[2].kill();
    write_names(&c, 0, "far", NAMES);
    let held = |c: &Cluster, i| c.status(i)["names"].as_u64().unwrap_or(0);
    assert!(
        wait_until(Duration::from_secs(60), || held(&c, 1) >= base + NAMES),
        "node 2 did not get the names"
    );

    c.restart(2);
    assert!(
        wait_until(Duration::from_secs(120), || held(&c, 2) >= base + NAMES),
        "node 3 did not catch up"
    );
    let pulled = pulled_per_peer(&c, 2);
    assert_eq!(pulled.len(), 2, "a count per peer: {pulled:?}");
    let fewest = *pulled.iter().min().expect("two peers");
    let most = *pulled.iter().max().expect("two peers");
    assert!(
        most >= NAMES - PAGE,
        "the backlog came from one peer: {pulled:?}"
    );
    assert!(
        fewest <= 3 * PAGE,
        "both peers sent the backlog: {pulled:?} names pulled per peer"
    );
    let answered = pulls_ahead(&c, 2, "answered");
    assert!(
        answered >= NAMES / PAGE / 2,
        "{answered} pages of {} fetched ahead",
        NAMES / PAGE
    );
    assert_eq!(pulls_ahead(&c, 2, "refused"), 0, "refused by this version");
}

/// A peer of a version before pulls ahead (the one the rolling-upgrade test
/// starts from) refuses them: a node far behind it asks once, then pulls
/// it one page at a time for a while, and gets every name.
#[test]
fn an_older_peer_that_refuses_pulls_ahead_is_pulled_one_page_at_a_time() {
    const PAGE: u64 = 10_000;
    const NAMES: u64 = 3 * PAGE;
    let old = common::upgrade::upgrade_from();
    let mut c = Cluster::empty("ahead-old");
    let mut spec = c.spec(1, &[]);
    spec.bin = Some(old);
    c.add(spec);
    let spec = c.spec(2, &[]);
    c.add(spec);
    assert_eq!(c.post_config(0, &c.addrs()).status, 200);
    c.incr(0, "before", 1);
    c.wait_value(1, "before", 1, Duration::from_secs(10));
    let base = c.status(1)["names"].as_u64().expect("names");
    c.nodes[1].kill();
    write_names(&c, 0, "old", NAMES);
    c.restart(1);
    let held = |c: &Cluster| c.status(1)["names"].as_u64().unwrap_or(0);
    assert!(
        wait_until(Duration::from_secs(60), || held(&c) >= base + NAMES),
        "node 2 did not catch up from the older node 1"
    );
    assert_eq!(c.value(1, "old-29-999"), 1);
    assert_eq!(pulls_ahead(&c, 1, "refused"), 1, "asked once");
    assert_eq!(pulls_ahead(&c, 1, "answered"), 0);
}
