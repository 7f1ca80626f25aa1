//! Hostile input over raw sockets: malformed HTTP, slowloris, huge headers,
//! 10 MB bodies, garbage on the internal route, thousands of names, floods
//! of silent connections. Each must get a 4xx or a closed connection, and
//! afterwards the node is alive, its memory bounded and its acknowledged
//! data intact.

mod common;

use std::net::TcpStream;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::{Cluster, TempDir, eintr, eventually, raw_request, read_answer};

/// Resident memory of a process, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmRSS")
}

/// Status code of a raw answer, or `None` when the server closed without one.
fn status_of(raw: &str) -> Option<u16> {
    raw.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
}

/// Sends a head announcing `len` body bytes, then streams zeros until the
/// server answers or closes; returns what it answered.
fn stream_body(port: u16, path: &str, len: usize) -> Option<u16> {
    let mut s = eintr::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(15))).unwrap();
    let head = format!("POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len}\r\n\r\n");
    eintr::write_all(&mut s, head.as_bytes()).unwrap();
    let chunk = vec![b'7'; 64 * 1024];
    let mut sent = 0;
    while sent < len {
        let n = chunk.len().min(len - sent);
        if eintr::write_all(&mut s, &chunk[..n]).is_err() {
            break; // the server stopped reading: allowed
        }
        sent += n;
    }
    let mut out = Vec::new();
    let _ = eintr::read_to_end(&mut s, &mut out);
    status_of(&String::from_utf8_lossy(&out))
}

#[test]
fn hostile_input_leaves_the_node_alive_bounded_and_intact() {
    let c = Cluster::start_configured("hostile", 2, &["--header-timeout", "2s"]);
    let port = c.nodes[0].spec.port;
    let pid = c.nodes[0].pid();
    assert_eq!(c.incr(0, "keep", 42), 42);
    c.wait_value(1, "keep", 42, Duration::from_secs(10));
    let rss_before = rss_kib(pid);
    let t = Duration::from_secs(10);

    // Malformed requests: a 4xx or a closed connection, never a 5xx.
    let malformed: [&[u8]; 8] = [
        b"\x00\x01\x02\x03garbage\r\n\r\n",
        b"GET\r\n\r\n",
        b"GET /counter/a/value HTTP/9.9\r\n\r\n",
        b"POST /counter/a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n12345",
        b"POST /counter/a HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
        b"POST /counter/a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"GET /counter/%ZZ/value HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        b"POST /_internal/v1/rpc HTTP/1.1\r\nHost: x\r\nContent-Length: 9\r\nConnection: close\r\n\r\n{\"v\":1,}}",
    ];
    for req in malformed {
        let (status, raw) = raw_request(port, req, t);
        if let Some(s) = status {
            assert!(
                (400..500).contains(&s),
                "{:?} got {raw:?}",
                String::from_utf8_lossy(req)
            );
        }
    }

    // A 200 KiB header: refused or closed.
    let huge = format!(
        "GET /counter/keep/value HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\nConnection: close\r\n\r\n",
        "a".repeat(200 * 1024)
    );
    let (status, raw) = raw_request(port, huge.as_bytes(), t);
    assert!(status.is_none_or(|s| (400..500).contains(&s)), "{raw:.200}");

    // 10 MB bodies: 413 on the public route, a 4xx on the internal one.
    let s = stream_body(port, "/counter/big", 10 * 1024 * 1024);
    assert!(s.is_none_or(|s| s == 413), "public 10 MB body: {s:?}");
    let s = stream_body(port, "/_internal/v1/rpc", 10 * 1024 * 1024);
    assert!(
        s.is_none_or(|s| (400..500).contains(&s)),
        "internal 10 MB body: {s:?}"
    );

    // Slowloris: 100 connections that never finish their head. Others are
    // served meanwhile, and the node closes them after the header deadline.
    let mut loris: Vec<TcpStream> = (0..100)
        .map(|_| {
            let mut s = eintr::connect(("127.0.0.1", port)).unwrap();
            eintr::write_all(
                &mut s,
                b"GET /counter/keep/value HTTP/1.1\r\nHost: x\r\nX-Slow: ",
            )
            .unwrap();
            s
        })
        .collect();
    let started = Instant::now();
    assert_eq!(c.value(0, "keep"), 42);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "served while loris waits"
    );
    for s in &mut loris {
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut buf = [0u8; 512];
        // Closed by the server (EOF or a 408/400 first), not left hanging.
        let closed = loop {
            match eintr::read(s, &mut buf) {
                Ok(0) => break true,
                Ok(_) => continue,
                Err(e) => break e.kind() == std::io::ErrorKind::ConnectionReset,
            }
        };
        assert!(closed, "a stalled head was not cut off");
    }

    // Thousands of distinct names, through batches.
    for b in 0..5 {
        let items: Vec<String> = (0..1000)
            .map(|i| format!(r#"{{"name":"n{b}-{i}","amount":1}}"#))
            .collect();
        let body = format!(r#"{{"increments":[{}]}}"#, items.join(","));
        let r = c.http.post(&c.url(0, "/counters"), &body);
        assert_eq!(r.status, 200, "{r:?}");
    }
    assert_eq!(c.status(0)["names"], 5001);

    // Alive, intact, bounded.
    assert_eq!(c.status(0)["id"], 1);
    assert_eq!(c.value(0, "keep"), 42);
    assert_eq!(c.consistent(1, "keep", "5s").number(), 42);
    let rss_after = rss_kib(pid);
    assert!(
        rss_after < rss_before + 200 * 1024,
        "memory grew from {rss_before} KiB to {rss_after} KiB"
    );
}

/// Connections that never send a byte cannot pile up or crowd anyone out.
/// Node 1 has room for 8 pending connections (its two budgets, 4 + 4) and a
/// header deadline of 30 s; of 200 silent connections all but the newest 8
/// are closed at once, not at the deadline. Meanwhile a client is served,
/// and a config posted only now (so node 2 must open fresh connections,
/// classified among the silent ones) replicates an increment and lets a
/// consistent read on node 2 hear from node 1. The metrics show the bound.
#[test]
fn silent_connections_are_bounded_and_crowd_out_no_one() {
    let mut c = Cluster::empty("silent");
    let spec = c.spec(
        1,
        &[
            "--max-connections",
            "4",
            "--max-peer-connections",
            "4",
            "--header-timeout",
            "30s",
        ],
    );
    c.add(spec);
    let spec = c.spec(2, &[]);
    c.add(spec);
    let port = c.nodes[0].spec.port;

    let mut silent: Vec<Option<TcpStream>> = (0..200)
        .map(|_| {
            let s = eintr::connect(("127.0.0.1", port)).expect("connect");
            s.set_nonblocking(true).expect("nonblocking");
            Some(s)
        })
        .collect();
    let started = Instant::now();
    let mut closed = 0;
    eventually(
        "node 1 closes all but 8 silent connections",
        Duration::from_secs(10),
        || {
            for slot in &mut silent {
                let Some(s) = slot else { continue };
                let mut buf = [0u8; 64];
                match eintr::read(s, &mut buf) {
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Ok(n) => {
                        assert_eq!(n, 0, "a silent connection got an answer");
                        *slot = None;
                        closed += 1;
                    }
                    Err(_) => {
                        *slot = None;
                        closed += 1;
                    }
                }
            }
            if closed >= 192 {
                Ok(())
            } else {
                Err(format!("{closed} closed"))
            }
        },
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "closed by the bound, not by the 30 s deadline"
    );

    let t = Instant::now();
    assert_eq!(c.value(0, "s"), 0);
    assert!(t.elapsed() < Duration::from_secs(2), "a client waited");
    let r = c.post_config(1, &c.addrs());
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(c.incr(1, "s", 3), 3);
    c.wait_value(0, "s", 3, Duration::from_secs(10));
    let r = c.consistent(1, "s", "5s");
    assert_eq!((r.status, r.body.as_str()), (200, "3"), "{r:?}");

    let metrics = c.http.get(&c.url(0, "/metrics")).body;
    let value = |line_start: &str| -> f64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(line_start))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {line_start} in {metrics}"))
    };
    let pending = value(r#"tally_connections{class="pending"} "#);
    assert!(pending <= 8.0, "{pending} pending connections");
    let pushed_out = value(r#"tally_connections_refused_total{class="pending"} "#);
    assert!(
        pushed_out >= 192.0,
        "{pushed_out} pending connections closed"
    );
    drop(silent);
}

/// The value of the metric line that starts with `line_start` (name and
/// labels, then a space) in `GET /metrics` of node `i`, read on a fresh
/// connection.
fn metric(c: &Cluster, i: usize, line_start: &str) -> Result<f64, String> {
    let url = c.url(i, "/metrics");
    let r = c
        .http
        .try_request("GET", &url, None, Duration::from_secs(5))?;
    r.body
        .lines()
        .find_map(|l| l.strip_prefix(line_start))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| format!("no {line_start:?} in {}", r.body))
}

/// A client that sends requests and never reads the answers cannot hold a
/// connection: once the node cannot write an answer within
/// `--write-timeout` (2 s here) it closes the connection. One connection
/// pipelines up to 5,000 `GET /metrics` (far more answer bytes than the
/// socket buffers hold) and reads nothing; the node's gauge of open client
/// connections then falls back to at most 1 (the connection reading it).
#[test]
fn a_client_that_never_reads_is_cut_off_by_the_write_deadline() {
    let c = Cluster::start("never-reads", 1, &["--write-timeout", "2s"]);
    let port = c.nodes[0].spec.port;
    let one_answer = c.http.get(&c.url(0, "/metrics")).body.len();
    assert!(
        one_answer * 5_000 > 32 << 20,
        "5,000 answers of {one_answer} bytes would not fill the socket buffers"
    );

    let mut stuck = eintr::connect(("127.0.0.1", port)).expect("connect");
    stuck
        .set_write_timeout(Some(Duration::from_secs(2)))
        .expect("write timeout");
    let request = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n";
    let mut sent = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    while sent < 5_000 && Instant::now() < deadline && eintr::write_all(&mut stuck, request).is_ok()
    {
        sent += 1;
    }
    assert!(sent > 0, "no request could be sent");

    eventually(
        "the node closes the connection that never reads",
        Duration::from_secs(30),
        || {
            let open = metric(&c, 0, r#"tally_connections{class="client"} "#)?;
            if open <= 1.0 {
                Ok(())
            } else {
                Err(format!(
                    "{open} client connections open after {sent} requests"
                ))
            }
        },
    );
    assert_eq!(c.value(0, "alive"), 0, "the node still serves");
    drop(stuck);
}

/// A fresh temp folder holding a file whose first line is `secret`.
fn secret_file(secret: &str) -> (TempDir, PathBuf) {
    let dir = TempDir::new("secret");
    let path = dir.path().join("secret");
    std::fs::write(&path, format!("{secret}\n")).expect("write the secret file");
    (dir, path)
}

/// An internal request that asks who the node is; without the cluster
/// secret unless `headers` carries it. Keep-alive (HTTP/1.1's default).
fn hello_request(headers: &str) -> String {
    let body = r#"{"v":2,"from":{"node":9,"incarnation":9},"membership":{"config":{"stamp":{"version":0,"origin":0},"actors":[]}},"req":{"op":"hello"}}"#;
    format!(
        "POST /_internal/v1/rpc HTTP/1.1\r\nHost: x\r\n{headers}Content-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// A request refused for its cluster secret ends its connection: a
/// keep-alive internal request without the secret gets 401, and one with
/// a wrong secret 403, each with `Connection: close`, and the node closes
/// the socket at once (long before its 60 s idle deadline), so a refused
/// caller cannot keep holding a connection.
#[test]
fn a_refused_secret_closes_the_connection() {
    let (_dir, path) = secret_file("hostile-secret-7");
    let path = path.to_str().expect("a UTF-8 path");
    let c = Cluster::start(
        "auth-close",
        1,
        &["--secret-file", path, "--header-timeout", "60s"],
    );
    let port = c.nodes[0].spec.port;
    for (headers, want) in [("", 401), ("x-tally-secret: wrong\r\n", 403)] {
        let mut s = eintr::connect(("127.0.0.1", port)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(15)))
            .expect("read timeout");
        s.set_write_timeout(Some(Duration::from_secs(15)))
            .expect("write timeout");
        eintr::write_all(&mut s, hello_request(headers).as_bytes()).expect("send the request");
        let answer = read_answer(&mut s)
            .expect("read the answer")
            .unwrap_or_else(|| panic!("closed without an answer (expected {want})"));
        assert_eq!(answer.status, want, "{answer:?}");
        assert_eq!(
            answer
                .header("connection")
                .map(str::to_ascii_lowercase)
                .as_deref(),
            Some("close"),
            "the {want} does not announce the close: {answer:?}"
        );
        let mut rest = Vec::new();
        let end = eintr::read_to_end(&mut s, &mut rest);
        let closed = match &end {
            Ok(_) => true,
            Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
        };
        assert!(
            closed,
            "the connection stayed open after the {want}: {end:?}"
        );
        assert!(
            rest.is_empty(),
            "bytes after the {want}: {:?}",
            String::from_utf8_lossy(&rest)
        );
    }
}

/// What an [`UnauthenticatedFlood`] saw.
#[derive(Default)]
struct FloodSeen {
    /// Connections that got an answer or were closed by the node.
    answered: AtomicUsize,
    /// Connections still open.
    open: AtomicUsize,
}

/// `n` connections to a node, each sending a keep-alive internal request
/// without the cluster secret every 500 ms (so none is ever idle), reading
/// and dropping whatever comes back, never closed from this side until the
/// flood stops. Stopped (and joined) on drop; stops by itself after two
/// minutes.
struct UnauthenticatedFlood {
    stop: Arc<AtomicBool>,
    seen: Arc<FloodSeen>,
    thread: Option<JoinHandle<()>>,
}

impl UnauthenticatedFlood {
    fn start(port: u16, n: usize) -> UnauthenticatedFlood {
        let conns: Vec<TcpStream> = (0..n)
            .map(|_| {
                let s = eintr::connect(("127.0.0.1", port)).expect("connect");
                s.set_nonblocking(true).expect("nonblocking");
                s
            })
            .collect();
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(FloodSeen::default());
        let thread = {
            let (stop, seen) = (stop.clone(), seen.clone());
            std::thread::spawn(move || flood(conns, &stop, &seen))
        };
        UnauthenticatedFlood {
            stop,
            seen,
            thread: Some(thread),
        }
    }
}

impl Drop for UnauthenticatedFlood {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The loop of an [`UnauthenticatedFlood`].
fn flood(conns: Vec<TcpStream>, stop: &AtomicBool, seen: &FloodSeen) {
    use std::io::{ErrorKind, Write};
    struct Conn {
        stream: Option<TcpStream>,
        /// Request bytes not written yet: a new request is queued only
        /// once the last one went out whole.
        outbox: Vec<u8>,
        answered: bool,
    }
    let request = hello_request("").into_bytes();
    let mut conns: Vec<Conn> = conns
        .into_iter()
        .map(|s| Conn {
            stream: Some(s),
            outbox: request.clone(),
            answered: false,
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut next_round = Instant::now() + Duration::from_millis(500);
    let mut buf = [0u8; 4096];
    while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
        let queue = Instant::now() >= next_round;
        if queue {
            next_round = Instant::now() + Duration::from_millis(500);
        }
        for conn in &mut conns {
            let Some(s) = conn.stream.as_mut() else {
                continue;
            };
            // Drop what came back, noting the first answer or the close.
            let mut closed = false;
            for _ in 0..64 {
                match eintr::read(s, &mut buf) {
                    Ok(0) => {
                        closed = true;
                        break;
                    }
                    Ok(_) => conn.answered = true,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(_) => {
                        closed = true;
                        break;
                    }
                }
            }
            if queue && conn.outbox.is_empty() {
                conn.outbox.clone_from(&request);
            }
            if !closed && !conn.outbox.is_empty() {
                match eintr::retry(|| s.write(&conn.outbox)) {
                    Ok(n) => {
                        conn.outbox.drain(..n);
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                    Err(_) => closed = true,
                }
            }
            if closed {
                conn.answered = true;
                conn.stream = None;
            }
        }
        seen.answered.store(
            conns.iter().filter(|c| c.answered).count(),
            Ordering::SeqCst,
        );
        seen.open.store(
            conns.iter().filter(|c| c.stream.is_some()).count(),
            Ordering::SeqCst,
        );
        std::thread::sleep(common::STEP);
    }
}

/// Callers without the cluster secret cannot squat the peer budget. Both
/// nodes share a secret and node 1 admits 8 peer connections. 64
/// connections to node 1 each send an internal request without the secret
/// and keep sending one every 500 ms, never closing. Only then is the
/// config posted (to node 2, with the secret), so node 2 must open fresh
/// connections to node 1: an increment on node 2 still reaches node 1, and
/// a consistent read on node 1 answers 200 with it.
#[test]
fn unauthenticated_callers_cannot_squat_the_peer_budget() {
    const SECRET: &str = "flood-secret-8";
    let (_dir, path) = secret_file(SECRET);
    let path = path.to_str().expect("a UTF-8 path");
    let c = Cluster::start(
        "auth-flood",
        2,
        &["--secret-file", path, "--max-peer-connections", "8"],
    );
    let flood = UnauthenticatedFlood::start(c.nodes[0].spec.port, 64);
    eventually(
        "every flood connection was answered or closed",
        Duration::from_secs(30),
        || match flood.seen.answered.load(Ordering::SeqCst) {
            64 => Ok(()),
            n => Err(format!("{n} of 64")),
        },
    );

    let addrs = c.addrs();
    let body = serde_json::json!({ "actors": addrs }).to_string();
    let r = c.http.request_with_headers(
        "POST",
        &c.url(1, "/config"),
        &[("x-tally-secret", SECRET)],
        Some(body.as_bytes()),
    );
    assert_eq!(r.resp.status, 200, "config with the secret: {r:?}");
    assert_eq!(c.incr(1, "flooded", 5), 5);
    c.wait_value(0, "flooded", 5, Duration::from_secs(30));
    let r = c.consistent(0, "flooded", "10s");
    assert_eq!(
        (r.status, r.body.as_str()),
        (200, "5"),
        "consistent read on node 1 during the flood: {r:?}"
    );
    let open = flood.seen.open.load(Ordering::SeqCst);
    eprintln!("flood connections still open at the end: {open}");
    drop(flood);
}
