//! Hostile input over raw sockets: malformed HTTP, slowloris, huge headers,
//! 10 MB bodies, garbage on the internal route, thousands of names. Each
//! must get a 4xx or a closed connection, and afterwards the node is alive,
//! its memory bounded and its acknowledged data intact.

mod common;

use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{Cluster, eintr, raw_request};

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
