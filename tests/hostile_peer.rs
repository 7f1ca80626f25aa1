//! Messages that claim to come from a peer (SPEC G11): a node checks them
//! before they change anything. A forged message can be refused, but it
//! cannot take over the membership for good, poison a counter, make one
//! counter cost unbounded memory, or fake a replica's acknowledgement; and
//! bytes a remote answered with are never shown back in `/status`.
//!
//! Every test runs in open mode (no cluster secret), where anyone who
//! reaches the port can send such messages.

mod common;

use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use common::{Cluster, Resp, STEP, eintr, eventually};

const RPC: &str = "/_internal/v1/rpc";
const RPC_V3: &str = "/_internal/v3/rpc";
/// An address where nothing listens.
const NOWHERE: &str = "127.0.0.1:1";
/// The sender a forged message names when it does not pose as a real node.
const FORGER: (u64, u64) = (77, 0x77);

/// Node `i`'s identity as its `/status` reports it: (id, incarnation).
fn identity(c: &Cluster, i: usize) -> (u64, u64) {
    let s = c.status(i);
    let id = s["id"].as_u64().expect("status has a numeric id");
    let hex = s["incarnation"]
        .as_str()
        .expect("status has the incarnation as a string");
    let incarnation = u64::from_str_radix(hex, 16)
        .unwrap_or_else(|e| panic!("incarnation {hex:?} is not hexadecimal: {e}"));
    (id, incarnation)
}

/// A membership as it travels in an internal message: a config with a
/// stamp and actors, nothing else.
fn membership(version: u64, origin: u64, actors: &[String]) -> Value {
    json!({
        "config": {
            "stamp": { "version": version, "origin": origin },
            "actors": actors,
        }
    })
}

/// The membership node `i` holds, rebuilt from its `/status`: what a real
/// peer of a cluster that never changed its first config would send.
fn membership_of(c: &Cluster, i: usize) -> Value {
    let config = &c.status(i)["config"];
    let actors: Vec<String> = config["actors"]
        .as_array()
        .expect("status lists the actors")
        .iter()
        .map(|a| a.as_str().expect("an actor is a string").to_string())
        .collect();
    membership(
        config["version"].as_u64().expect("config version"),
        config["origin"].as_u64().expect("config origin"),
        &actors,
    )
}

/// An internal request of protocol `v` as JSON.
fn envelope(v: u32, from: (u64, u64), membership: Value, req: Value) -> Value {
    json!({
        "v": v,
        "from": { "node": from.0, "incarnation": from.1 },
        "membership": membership,
        "req": req,
    })
}

/// Sends node `i` one internal request with the given sender and membership.
fn rpc(c: &Cluster, i: usize, from: (u64, u64), membership: Value, req: Value) -> Resp {
    let envelope = envelope(2, from, membership, req);
    c.http.post(&c.url(i, RPC), &envelope.to_string())
}

/// The same request in protocol 3 (binary).
fn rpc_v3(c: &Cluster, i: usize, from: (u64, u64), membership: Value, req: Value) -> Resp {
    let envelope = envelope(3, from, membership, req);
    let env: tally::proto::RequestEnvelope =
        serde_json::from_value(envelope).expect("a request envelope");
    let bytes = tally::proto::binary::encode_request(&env);
    c.http.request("POST", &c.url(i, RPC_V3), Some(&bytes))
}

fn is_client_error(r: &Resp) -> bool {
    (400..500).contains(&r.status)
}

/// The config version node `i` reports.
fn config_version(c: &Cluster, i: usize) -> u64 {
    c.status(i)["config"]["version"]
        .as_u64()
        .expect("config version")
}

/// Waits until node `i` reports the role `member`.
fn wait_member(c: &Cluster, i: usize, bound: Duration) {
    eventually(&format!("node {} is a member", i + 1), bound, || {
        let url = c.url(i, "/status");
        let s = c
            .http
            .try_request("GET", &url, None, Duration::from_secs(2))?
            .json();
        if s["role"] == "member" {
            Ok(())
        } else {
            Err(format!("role {} config {}", s["role"], s["config"]))
        }
    });
}

/// A forged `config` message can be adopted (open mode cannot tell it from
/// a real one) but not for good: first, twice over, a forged config one
/// version ahead naming only an unreachable actor is undone by posting the
/// true actors, after which both nodes hold them, are members and
/// acknowledge increments. Then a forged config at version u64::MAX - 1,
/// which would leave no version for any later config, is refused with a
/// 4xx and changes nothing: increments still answer 200, the true actors
/// can be posted again, and a later post of another actor list is still a
/// change to a higher version.
#[test]
fn a_forged_config_cannot_take_over_the_membership_for_good() {
    let c = Cluster::start_configured("forged-config", 2, &[]);
    let addrs = c.addrs();
    let bound = Duration::from_secs(30);

    for cycle in 1..=2 {
        let version = config_version(&c, 0);
        let r = rpc(
            &c,
            0,
            FORGER,
            membership(version + 1, FORGER.0, &[NOWHERE.to_string()]),
            json!({ "op": "config" }),
        );
        assert!(
            r.status == 200 || is_client_error(&r),
            "cycle {cycle}: a forged config one version ahead got {r:?}"
        );
        let r = c.post_config(0, &addrs);
        assert_eq!(
            r.status, 200,
            "cycle {cycle}: posting the true actors: {r:?}"
        );
        c.wait_config_everywhere(&addrs, bound);
        for i in 0..2 {
            wait_member(&c, i, bound);
            assert_eq!(
                c.incr(i, &format!("cycle-{cycle}-node-{}", i + 1), 1),
                1,
                "cycle {cycle}: node {}",
                i + 1
            );
        }
    }

    let before = config_version(&c, 0);
    let r = rpc(
        &c,
        0,
        FORGER,
        membership(u64::MAX - 1, FORGER.0, &[NOWHERE.to_string()]),
        json!({ "op": "config" }),
    );
    assert!(
        is_client_error(&r),
        "a forged config at version u64::MAX - 1 was not refused: {r:?}"
    );
    let status = c.status(0);
    assert_eq!(
        status["config"]["version"], before,
        "the refused config changed the version: {status}"
    );
    assert_eq!(c.incr(0, "after-exhaustion", 1), 1);
    let r = c.post_config(0, &addrs);
    assert_eq!(r.status, 200, "posting the true actors again: {r:?}");
    let mut other = addrs.clone();
    other.push("127.0.0.1:2".to_string());
    let r = c.post_config(0, &other);
    assert_eq!(r.status, 200, "posting another actor list: {r:?}");
    let summary = r.json();
    assert_eq!(summary["changed"], true, "{summary}");
    let after = summary["version"].as_u64().expect("summary has a version");
    assert!(
        after > before && after < u64::MAX - 1,
        "the new config's version {after} does not follow {before}: {summary}"
    );
}

/// A push that sets node 1's own component of a name (its id and current
/// incarnation) is refused with a 4xx: only node 1 counts for itself, so a
/// peer can never hold more of that component than node 1 does. Neither
/// u64::MAX (which would make every later increment overflow) nor a
/// plausible 1000 is taken; the value stays 5, the next increment answers
/// 200 with 6, and node 2 converges to 6 as well. The same in protocol 3
/// (binary), where bytes that are no message at all are refused too.
#[test]
fn a_push_cannot_raise_this_nodes_own_component() {
    let c = Cluster::start_configured("own-component", 2, &[]);
    assert_eq!(c.incr(0, "own", 5), 5);
    c.wait_value(1, "own", 5, Duration::from_secs(20));
    let (id, incarnation) = identity(&c, 0);
    let peer = identity(&c, 1);

    type Send = fn(&Cluster, usize, (u64, u64), Value, Value) -> Resp;
    for (send, count) in [
        (rpc as Send, u64::MAX),
        (rpc, 1000),
        (rpc_v3, u64::MAX),
        (rpc_v3, 1000),
    ] {
        let r = send(
            &c,
            0,
            peer,
            membership_of(&c, 0),
            json!({
                "op": "push",
                "counters": [{
                    "name": "own",
                    "components": [{ "node": id, "incarnation": incarnation, "count": count }],
                }],
            }),
        );
        assert!(
            is_client_error(&r),
            "a push setting node 1's own component to {count} was not refused: {r:?}"
        );
        assert_eq!(
            c.value(0, "own"),
            5,
            "the push of {count} changed the value"
        );
    }
    for junk in [
        &b"TLY\x03"[..],
        b"TLY\x03\xff\xff",
        b"{\"v\":2}",
        &[0u8; 64],
    ] {
        let r = c.http.request("POST", &c.url(0, RPC_V3), Some(junk));
        assert_eq!(r.status, 400, "{junk:?} was not refused: {r:?}");
        assert!(r.body.contains("malformed internal message"), "{r:?}");
    }
    assert_eq!(c.value(0, "own"), 5);
    assert_eq!(c.incr(0, "own", 1), 6);
    c.wait_value(1, "own", 6, Duration::from_secs(20));
}

/// `n` components of made-up replicas, node ids from `first_node` on, with
/// counts 1 to 7; returns them with their sum.
fn fake_components(first_node: u64, n: u64) -> (Vec<Value>, u128) {
    let mut sum = 0u128;
    let components = (0..n)
        .map(|i| {
            let count = i % 7 + 1;
            sum += u128::from(count);
            json!({ "node": first_node + i, "incarnation": 0xC0FFEE + i, "count": count })
        })
        .collect();
    (components, sum)
}

/// One counter cannot be made to cost unbounded memory in one message: a
/// push carrying 100,000 components for one name is refused with a 4xx and
/// stores nothing (value 0, name not listed). Components are kept forever,
/// so a large counter must still be reachable over several messages: two
/// pushes of 5,000 distinct components each are accepted, the value is
/// the exact sum of all 10,000 counts, and node 2 converges to it.
#[test]
fn a_huge_counter_is_refused_in_one_message_but_grows_over_several() {
    let c = Cluster::start_configured("wide-counter", 2, &[]);
    let peer = identity(&c, 1);
    let push = |components: Vec<Value>| {
        rpc(
            &c,
            0,
            peer,
            membership_of(&c, 0),
            json!({ "op": "push", "counters": [{ "name": "wide", "components": components }] }),
        )
    };
    let names_before = c.status(0)["names"].clone();

    let (huge, _) = fake_components(1_000_000, 100_000);
    let r = push(huge);
    assert!(
        is_client_error(&r),
        "a push of 100,000 components for one name was not refused: {r:?}"
    );
    assert_eq!(c.value(0, "wide"), 0, "the refused push changed the value");
    let listing = c.http.get(&c.url(0, "/counters?prefix=wide")).json();
    assert_eq!(
        listing["counters"],
        json!([]),
        "the refused push made a name: {listing}"
    );
    assert_eq!(c.status(0)["names"], names_before);

    let (first, first_sum) = fake_components(2_000_000, 5_000);
    let r = push(first);
    assert_eq!(r.status, 200, "the first 5,000 components: {r:?}");
    let (second, second_sum) = fake_components(2_005_000, 5_000);
    let r = push(second);
    assert_eq!(r.status, 200, "5,000 more components: {r:?}");
    let sum = first_sum + second_sum;
    assert_eq!(c.value(0, "wide"), sum);
    c.wait_value(1, "wide", sum, Duration::from_secs(30));
}

/// A pull only says how far the asker holds this node's changes, and a
/// forged one must not count as a replica's acknowledgement. With
/// `--min-replicas 1`, node 2 is paused; a pull posing as node 2 that
/// claims to hold everything node 1 will ever write (`since` = u64::MAX)
/// is refused with a 4xx, and an increment on node 1 then answers 503
/// after the replica timeout, not 200: node 2 stored nothing.
#[test]
fn a_forged_pull_cannot_fake_a_replica_acknowledgement() {
    let c = Cluster::start_configured(
        "forged-ack",
        2,
        &["--min-replicas", "1", "--replica-timeout", "2s"],
    );
    // With both nodes running, node 2's real acknowledgement arrives.
    assert_eq!(c.incr(0, "x", 1), 1);
    let node2 = identity(&c, 1);
    let (_, incarnation1) = identity(&c, 0);
    let membership = membership_of(&c, 0);

    c.nodes[1].signal("STOP");
    let forged = rpc(
        &c,
        0,
        node2,
        membership,
        json!({ "op": "pull", "incarnation": incarnation1, "since": u64::MAX, "limit": 10 }),
    );
    let incr = c.http.post(&c.url(0, "/counter/x"), "1");
    c.nodes[1].signal("CONT");

    assert_ne!(
        incr.status, 200,
        "an increment was acknowledged as stored by paused node 2, after a forged pull \
         that got {forged:?}; the increment got {incr:?}"
    );
    incr.assert_error(503, "increment while node 2 is paused");
    assert!(
        is_client_error(&forged),
        "a pull claiming since = u64::MAX was not refused: {forged:?}"
    );
}

/// What the fake peer answers every request with.
const MARKER: &str = "ECHO-7f3a-MARKER";

/// An HTTP server on 127.0.0.1 that answers every request with a 500
/// whose body holds [`MARKER`], then closes the connection. Stopped (and
/// joined) on drop; it stops by itself after two minutes.
struct FakePeer {
    addr: String,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl FakePeer {
    fn start() -> FakePeer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the fake peer");
        listener
            .set_nonblocking(true)
            .expect("nonblocking listener");
        let addr = listener.local_addr().expect("local address").to_string();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(120);
            while !flag.load(Ordering::SeqCst) && Instant::now() < deadline {
                match eintr::accept(&listener) {
                    Ok((stream, _)) => answer_with_marker(stream),
                    Err(_) => std::thread::sleep(STEP),
                }
            }
        });
        FakePeer {
            addr,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for FakePeer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Reads one request (head and the body it announces, up to 1 MiB and for
/// at most 5 s) and answers it with a 500 naming [`MARKER`].
fn answer_with_marker(mut s: TcpStream) {
    let timeout = Some(Duration::from_secs(2));
    if s.set_nonblocking(false).is_err()
        || s.set_read_timeout(timeout).is_err()
        || s.set_write_timeout(timeout).is_err()
    {
        return;
    }
    let mut raw = Vec::new();
    let mut buf = [0u8; 8192];
    let mut wanted = None;
    let deadline = Instant::now() + Duration::from_secs(5);
    while raw.len() < 1 << 20 && Instant::now() < deadline {
        if wanted.is_none()
            && let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n")
        {
            let head = String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            wanted = Some(end + 4 + len);
        }
        if wanted.is_some_and(|w| raw.len() >= w) {
            break;
        }
        match eintr::read(&mut s, &mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
        }
    }
    let body = format!(r#"{{"error":"{MARKER} from the fake peer"}}"#);
    let answer = format!(
        "HTTP/1.1 500 Internal Server Error\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = eintr::write_all(&mut s, answer.as_bytes());
}

/// What a remote answered is not shown back: a node whose config names a
/// fake peer that answers every call with a 500 and a marker in the body
/// reports that peer's error in `/status`, but neither `/status` nor
/// `/status/cluster` contains the marker.
#[test]
fn bytes_a_peer_answered_are_not_echoed_in_status() {
    let c = Cluster::start("no-echo", 1, &[]);
    let fake = FakePeer::start();
    let actors = vec![c.nodes[0].addr(), fake.addr.clone()];
    let r = c.post_config(0, &actors);
    assert_eq!(r.status, 200, "config naming the fake peer: {r:?}");

    let error = eventually(
        "node 1 reports an error for the fake peer",
        Duration::from_secs(30),
        || {
            let url = c.url(0, "/status");
            let s = c
                .http
                .try_request("GET", &url, None, Duration::from_secs(5))?
                .json();
            let peer = s["peers"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|p| p["actor"] == fake.addr.as_str())
                .ok_or_else(|| format!("no peer {} in {}", fake.addr, s["peers"]))?;
            match peer["last_error"].as_str() {
                Some(e) if !e.is_empty() => Ok(e.to_string()),
                _ => Err(format!("peer without an error yet: {peer}")),
            }
        },
    );
    assert!(
        !error.contains(MARKER),
        "the peer's last error shows what it answered: {error:?}"
    );
    for path in ["/status", "/status/cluster"] {
        let r = c.http.get(&c.url(0, path));
        assert_eq!(r.status, 200, "{path}: {r:?}");
        assert!(
            !r.body.contains(MARKER),
            "{path} shows bytes the fake peer answered: {}",
            r.body
        );
    }
}

/// The names in a pull page node `i` answers to `from` (JSON protocol),
/// and whether the page covers all of node `i`'s changes.
fn pulled(c: &Cluster, i: usize, from: (u64, u64)) -> (Vec<String>, bool) {
    let (_, incarnation) = identity(c, i);
    let r = rpc(
        c,
        i,
        from,
        membership_of(c, i),
        json!({ "op": "pull", "incarnation": incarnation, "since": 0, "limit": 100 }),
    );
    assert_eq!(r.status, 200, "pull as {from:?}: {r:?}");
    let answer = r.json();
    let resp = &answer["resp"];
    assert_eq!(resp["op"], "changes", "{answer}");
    let mut names: Vec<String> = resp["counters"]
        .as_array()
        .expect("a page lists counters")
        .iter()
        .map(|c| c["name"].as_str().expect("a name").to_string())
        .collect();
    names.sort();
    let covers = resp["more"] == false && resp["next"] == resp["head"];
    (names, covers)
}

/// A pull page leaves out what the asker is sure to hold: counters whose
/// every component is its own, at the incarnation it asks as. Node 1's
/// `a` comes back to node 1 from node 2 only when the pull comes from
/// another incarnation of node 1 (one that lost its folder) or from
/// another node; a counter node 1 shares with node 2 always comes back.
/// Each page still covers every change node 2 made, skipped or not.
#[test]
fn a_pull_page_leaves_out_what_the_asker_made_itself() {
    let c = Cluster::start_configured("echo", 2, &[]);
    assert_eq!(c.incr(0, "a", 3), 3);
    assert_eq!(c.incr(0, "shared", 1), 1);
    c.wait_value(1, "shared", 1, Duration::from_secs(10));
    assert_eq!(c.incr(1, "shared", 2), 3);
    assert_eq!(c.incr(1, "b", 4), 4);
    c.wait_value(1, "a", 3, Duration::from_secs(10));
    c.wait_value(1, "shared", 3, Duration::from_secs(10));
    let node1 = identity(&c, 0);

    let (names, covers) = pulled(&c, 1, node1);
    assert_eq!(names, ["b", "shared"], "node 1 made `a` alone");
    assert!(covers, "the page covers the change it left out");

    let wiped = (node1.0, node1.1 ^ 1);
    let (names, covers) = pulled(&c, 1, wiped);
    assert_eq!(names, ["a", "b", "shared"], "another incarnation of node 1");
    assert!(covers);

    let (names, _) = pulled(&c, 1, FORGER);
    assert_eq!(names, ["a", "b", "shared"], "another node");
}

/// Node `i`'s head sequence, from a pull by [`FORGER`] (no member: it
/// counts for nothing).
fn head_of(c: &Cluster, i: usize) -> u64 {
    let (_, incarnation) = identity(c, i);
    let req = json!({ "op": "pull", "incarnation": incarnation, "since": 0, "limit": 1 });
    let r = rpc(c, i, FORGER, membership_of(c, i), req);
    assert_eq!(r.status, 200, "{r:?}");
    r.json()["resp"]["head"].as_u64().expect("a head")
}

/// A pull ahead (the next page fetched while the last one merges) starts
/// after `start`, and only between `since` and the head: node 1's page
/// starting after its first change holds the two names changed later, and
/// a start before `since` or past the head is refused.
#[test]
fn a_pull_ahead_starts_where_it_asks() {
    let c = Cluster::start_configured("ahead", 1, &[]);
    for name in ["first", "second", "third"] {
        assert_eq!(c.incr(0, name, 1), 1);
    }
    let (_, incarnation) = identity(&c, 0);
    let head = head_of(&c, 0);
    let ahead = |since: u64, start: u64| {
        json!({ "op": "pull_ahead", "incarnation": incarnation, "since": since,
                "start": start, "limit": 100 })
    };
    let first = rpc(
        &c,
        0,
        FORGER,
        membership_of(&c, 0),
        json!({ "op": "pull", "incarnation": incarnation, "since": 0, "limit": 1 }),
    );
    let after_first = first.json()["resp"]["next"].as_u64().expect("a next");
    assert!(after_first < head, "a page of one name: {first:?}");
    let r = rpc(&c, 0, FORGER, membership_of(&c, 0), ahead(0, after_first));
    assert_eq!(r.status, 200, "{r:?}");
    let resp = &r.json()["resp"];
    let mut names: Vec<&str> = resp["counters"]
        .as_array()
        .expect("counters")
        .iter()
        .map(|c| c["name"].as_str().expect("a name"))
        .collect();
    names.sort();
    assert_eq!(names, ["second", "third"], "{resp}");
    assert_eq!(resp["next"], head, "{resp}");
    for (since, start) in [(after_first, 0), (0, head + 1)] {
        let r = rpc(&c, 0, FORGER, membership_of(&c, 0), ahead(since, start));
        assert!(
            is_client_error(&r),
            "since {since}, start {start}, head {head}: {r:?}"
        );
    }
}

/// A pull ahead counts as stored only what its `since` says, not its
/// `start`: one posing as paused node 2, starting at node 1's head while
/// an increment waits for node 2's acknowledgement, does not get that
/// increment acknowledged.
#[test]
fn a_pull_ahead_does_not_acknowledge_what_it_starts_after() {
    let c = Cluster::start_configured(
        "ahead-ack",
        2,
        &["--min-replicas", "1", "--replica-timeout", "5s"],
    );
    assert_eq!(c.incr(0, "x", 1), 1);
    let node2 = identity(&c, 1);
    let (_, incarnation1) = identity(&c, 0);
    let membership = membership_of(&c, 0);
    let before = head_of(&c, 0);

    c.nodes[1].signal("STOP");
    let (incr, forged) = std::thread::scope(|s| {
        let incr = s.spawn(|| c.http.post(&c.url(0, "/counter/x"), "1"));
        let mut head = before;
        eventually(
            "the increment is committed on node 1",
            Duration::from_secs(4),
            || {
                head = head_of(&c, 0);
                if head > before {
                    Ok(())
                } else {
                    Err(format!("head {head}"))
                }
            },
        );
        let forged = rpc(
            &c,
            0,
            node2,
            membership,
            json!({ "op": "pull_ahead", "incarnation": incarnation1, "since": 0,
                    "start": head, "limit": 10 }),
        );
        (incr.join().expect("the increment's thread"), forged)
    });
    c.nodes[1].signal("CONT");
    assert_eq!(forged.status, 200, "a well-formed pull ahead: {forged:?}");
    incr.assert_error(503, "increment while node 2 is paused");
}
