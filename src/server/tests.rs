//! The accept loop's classification and budgets, in process.

use super::*;
use crate::proto::RPC_PATH;
use axum::routing::get;

/// A server on a loopback port with one peer route and one client route.
async fn start(limits: Limits) -> (SocketAddr, Metrics, CancellationToken) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = Router::new()
        .route("/_internal/x", get(|| async { "peer" }))
        .route("/a", get(|| async { "client" }));
    let metrics = Metrics::new();
    let stop = CancellationToken::new();
    let (m, s) = (metrics.clone(), stop.clone());
    tokio::spawn(async move {
        serve(listener, app, limits, &m, s, Duration::from_secs(1), None).await;
    });
    (addr, metrics, stop)
}

/// Reads one answer (head and Content-Length body), or what came
/// before the connection closed.
async fn answer(s: &mut TcpStream) -> String {
    let mut raw = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        let text = String::from_utf8_lossy(&raw).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .and_then(|v| v.parse::<usize>().ok());
            if len.is_some_and(|n| body.len() >= n) {
                return text;
            }
        }
        match tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => raw.extend_from_slice(&buf[..n]),
            _ => return text,
        }
    }
}

fn open(metrics: &Metrics, class: &'static str) -> i64 {
    metrics
        .connections
        .get_or_create(&ConnectionClass { class })
        .get()
}

#[tokio::test]
async fn a_request_line_sent_in_pieces_is_classified_when_it_tells() {
    let (addr, metrics, stop) = start(Limits::default()).await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    for piece in [
        &b"GE"[..],
        b"T /_int",
        b"ernal/x HTTP/1.1\r\nhost: x\r\n\r\n",
    ] {
        s.write_all(piece).await.unwrap();
        // A slow client: the server must wait for the next piece.
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    let got = answer(&mut s).await;
    assert!(got.starts_with("HTTP/1.1 200"), "{got}");
    assert!(got.ends_with("peer"), "{got}");
    assert_eq!((open(&metrics, "peer"), open(&metrics, "client")), (1, 0));
    assert_eq!(open(&metrics, "pending"), 0);
    stop.cancel();
}

#[tokio::test]
async fn a_full_client_budget_refuses_clients_readably_and_admits_peers() {
    let limits = Limits {
        max_connections: 1,
        max_peer_connections: 1,
        ..Limits::default()
    };
    let (addr, metrics, stop) = start(limits).await;
    let mut held = TcpStream::connect(addr).await.unwrap();
    held.write_all(b"GET /a HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    assert!(answer(&mut held).await.ends_with("client"));

    // A second client: a whole 503, then the end of the stream (no reset).
    let mut refused = TcpStream::connect(addr).await.unwrap();
    refused
        .write_all(b"GET /a HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let got = answer(&mut refused).await;
    assert!(got.starts_with("HTTP/1.1 503"), "{got}");
    for header in ["retry-after: 1\r\n", "connection: close\r\n"] {
        assert!(got.contains(header), "{header:?} missing: {got}");
    }
    let body = got.split_once("\r\n\r\n").unwrap().1;
    let json: serde_json::Value = serde_json::from_str(body).unwrap();
    assert!(json["error"].as_str().unwrap().contains("client"), "{body}");
    let mut rest = Vec::new();
    let end = tokio::time::timeout(Duration::from_secs(5), refused.read_to_end(&mut rest)).await;
    assert!(matches!(end, Ok(Ok(0))), "{end:?} {rest:?}");

    // A peer still gets in.
    let mut peer = TcpStream::connect(addr).await.unwrap();
    peer.write_all(b"GET /_internal/x HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    assert!(answer(&mut peer).await.ends_with("peer"));
    let refused_total = |class| {
        metrics
            .connections_refused
            .get_or_create(&ConnectionClass { class })
            .get()
    };
    assert_eq!((refused_total("client"), refused_total("peer")), (1, 0));
    assert_eq!((open(&metrics, "client"), open(&metrics, "peer")), (1, 1));
    stop.cancel();
}

#[test]
fn the_rpc_route_is_under_the_internal_prefix() {
    assert!(RPC_PATH.starts_with(INTERNAL_PREFIX));
}

#[test]
fn a_request_line_tells_its_class_as_soon_as_it_can() {
    let peer = format!("POST {RPC_PATH} HTTP/1.1\r\nhost: x\r\n\r\n");
    assert_eq!(classify(peer.as_bytes()), Some(Class::Peer));
    assert_eq!(
        classify(b"GET /_internal/anything HTTP/1.1"),
        Some(Class::Peer)
    );
    for client in [
        &b"GET /counter/x/value HTTP/1.1\r\n"[..],
        b"POST /config HTTP/1.1",
        b"GET / HTTP/1.1",
        b"GET /_internalx HTTP/1.1",
        b"GET /_internal HTTP/1.1",
        b"GET http://h/_internal/v1/rpc HTTP/1.1",
        b"\r\nPOST /_internal/v1/rpc HTTP/1.1",
        b"post /_internal/v1/rpc HTTP/1.1",
        b" /_internal/",
        b"\x00\x01garbage",
        b"GET /c",
        b"ABCDEFGHIJKLMNOPQ /_internal/",
    ] {
        assert_eq!(
            classify(client),
            Some(Class::Client),
            "{:?}",
            String::from_utf8_lossy(client)
        );
    }
    // Undecided until the bytes could still go either way.
    for partial in [
        &b""[..],
        b"P",
        b"POST",
        b"POST ",
        b"POST /",
        b"POST /_internal",
    ] {
        assert_eq!(
            classify(partial),
            None,
            "{:?}",
            String::from_utf8_lossy(partial)
        );
    }
}

#[test]
fn a_full_peek_always_decides() {
    // Whatever the first PEEK_BYTES bytes are, they decide the class.
    for fill in [b'A', b' ', b'/', b'_', b'x', b'\r'] {
        for space_at in 0..PEEK_BYTES {
            let mut head = vec![fill; PEEK_BYTES];
            head[space_at] = b' ';
            assert!(classify(&head).is_some(), "{head:?}");
        }
    }
    let mut head = b"ABCDEFGHIJKLMNOP /_internal/".to_vec();
    head.truncate(PEEK_BYTES);
    assert_eq!(classify(&head), Some(Class::Peer));
}

#[test]
fn the_oldest_pending_connection_makes_room() {
    let metrics = Metrics::new();
    let pending = Arc::new(Pending {
        cap: 2,
        set: Mutex::default(),
        open: metrics
            .connections
            .get_or_create(&ConnectionClass { class: "pending" })
            .clone(),
        pushed_out: Counter::default(),
    });
    let a = pending.enter();
    let b = pending.enter();
    assert_eq!(pending.open.get(), 2);
    let c = pending.enter();
    assert!(a.pushed_out.is_cancelled(), "the oldest is pushed out");
    assert!(!b.pushed_out.is_cancelled() && !c.pushed_out.is_cancelled());
    assert_eq!(pending.open.get(), 2);
    assert_eq!(pending.pushed_out.get(), 1);
    drop(b);
    assert_eq!(pending.open.get(), 1);
    let d = pending.enter();
    assert!(!c.pushed_out.is_cancelled() && !d.pushed_out.is_cancelled());
    drop(a);
    assert_eq!(pending.open.get(), 2, "a pushed-out place is gone already");
    drop((c, d));
    assert_eq!(pending.open.get(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_write_that_stays_blocked_fails_after_its_deadline() {
    use tokio::io::AsyncWriteExt;
    // The other end reads nothing: after 64 bytes every write blocks.
    let (near, _far) = tokio::io::duplex(64);
    let mut w = WriteDeadline::new(near, Duration::from_secs(2));
    w.write_all(&[1; 64]).await.unwrap();
    let started = Instant::now();
    let err = w.write_all(&[2; 64]).await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
    assert!(started.elapsed() >= Duration::from_secs(2));
}

#[tokio::test(start_paused = true)]
async fn a_write_that_makes_progress_is_not_cut_off() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (near, mut far) = tokio::io::duplex(64);
    let mut w = WriteDeadline::new(near, Duration::from_secs(2));
    // A slow reader: 64 bytes every second, each pause under the deadline.
    let reader = tokio::spawn(async move {
        let mut got = 0;
        let mut buf = [0u8; 64];
        while got < 640 {
            tokio::time::sleep(Duration::from_secs(1)).await;
            got += far.read(&mut buf).await.unwrap();
        }
        got
    });
    w.write_all(&[3; 640]).await.unwrap();
    assert_eq!(reader.await.unwrap(), 640);
}

#[test]
fn budgets_shrink_in_proportion_to_fit_the_open_files_limit() {
    let mut l = Limits::default();
    assert!(!l.fit_to(1 << 20), "the defaults fit a large limit");
    assert_eq!(l.max_connections, DEFAULT_MAX_CONNECTIONS);
    let mut l = Limits::default();
    assert!(l.fit_to(1024 + RESERVED_FILES));
    assert!(l.files() <= 1024, "{} files", l.files());
    assert!(l.max_peer_connections >= 1 && l.max_connections > l.max_peer_connections);
    let mut tiny = Limits::default();
    tiny.fit_to(0);
    assert!(tiny.max_connections >= 1 && tiny.max_peer_connections >= 1);
}
