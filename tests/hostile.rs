//! Hostile input over raw sockets: malformed HTTP, slowloris, huge headers,
//! 10 MB bodies, garbage on the internal route, thousands of names, floods
//! of silent connections. Each must get a 4xx or a closed connection, and
//! afterwards the node is alive, its memory bounded and its acknowledged
//! data intact.

mod common;

use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{Cluster, eintr, eventually, raw_request};

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
