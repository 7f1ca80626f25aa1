//! The HTTP/1.1 accept loop, with the limits that keep a hostile or broken
//! client from holding the node, and clients from crowding out its peers.
//!
//! Every accepted connection is *classified* by its first request line,
//! peeked at without consuming it: a request for a path under
//! [`INTERNAL_PREFIX`] (where node-to-node calls go) makes a peer
//! connection, anything else a client connection. Each class has its own
//! budget of open connections (`--max-connections` for clients,
//! `--max-peer-connections` for peers), so a flood of clients cannot starve
//! replication and consistent reads. A connection over its budget gets a
//! `503` with a JSON error, `Retry-After` and `Connection: close`, and is
//! closed without a reset (see `refuse`).
//!
//! A connection whose request line has not arrived yet is *pending*. Pending
//! connections are bounded too: beyond [`Limits::max_pending_connections`]
//! the oldest is closed to make room, so a flood of silent connections costs
//! bounded memory and cannot keep a peer that just connected (and sends its
//! request line at once) from being classified.
//!
//! The header deadline runs from accept: a first request head must be
//! complete within it, classification included. It also closes idle
//! keep-alive connections and slowloris attempts. Request heads are capped.
//!
//! Shutdown stops accepting at once, drops pending connections, lets
//! in-flight requests finish within a bound, and closes idle connections.
//!
//! The class is what a connection claims, not who it is: a client that
//! requests a path under `/_internal/` counts against the peer budget (and,
//! with a cluster secret, is refused by the route). The budgets keep client
//! load from crowding out peers; they are no defence against a deliberate
//! attacker on the node's network (see the README's threat model).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use hyper_util::service::TowerToHyperService;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::metrics::{ConnectionClass, Metrics};
use crate::proto::INTERNAL_PREFIX;
use crate::transport::MAX_IN_FLIGHT_PER_PEER;

/// Default of `--max-connections`: client connections open at once.
pub const DEFAULT_MAX_CONNECTIONS: usize = 4096;

/// Default of `--max-peer-connections`: 1024, that is 16 peers each at
/// [`MAX_IN_FLIGHT_PER_PEER`] (64) calls in flight. A peer makes each call
/// on a connection of its own (HTTP/1.1), so this lets a 17-node cluster
/// run every peer at its cap at once and never refuse one of them. In
/// ordinary operation a peer holds two or three connections (one push, one
/// anti-entropy pull, the consistent reads in progress), so the largest
/// config (256 actors) fits too. Larger would mostly raise what a flood of
/// requests to `/_internal/` can hold (the class is claimed, not proven);
/// and both budgets together must stay within the process's file limit.
pub const DEFAULT_MAX_PEER_CONNECTIONS: usize = 16 * MAX_IN_FLIGHT_PER_PEER;

/// `Retry-After` of a refused connection, in seconds.
const RETRY_AFTER_SECS: u32 = 1;
/// How long a refused connection is kept to read what its client still
/// sends, after the 503 and the end of our side of the stream.
const REFUSE_LINGER: Duration = Duration::from_secs(1);
/// Most bytes read (and dropped) from a refused connection.
const REFUSE_DRAIN_BYTES: usize = 1 << 20;
/// Longest request method considered when classifying.
const MAX_METHOD: usize = 16;
/// Bytes peeked at: a method, a space and the internal prefix tell the class.
const PEEK_BYTES: usize = MAX_METHOD + 1 + INTERNAL_PREFIX.len();
/// First and longest pause before peeking again at a partial request line.
const PEEK_PAUSE_MIN: Duration = Duration::from_millis(1);
const PEEK_PAUSE_MAX: Duration = Duration::from_millis(100);

#[derive(Clone, Debug)]
pub struct Limits {
    /// Most client connections open at once; more are refused (503).
    pub max_connections: usize,
    /// Most peer connections (first request under `/_internal/`) open at
    /// once; more are refused (503).
    pub max_peer_connections: usize,
    /// Most connections accepted but not admitted yet (request line not
    /// arrived, or being refused); beyond it the oldest is closed.
    pub max_pending_connections: usize,
    /// Deadline for a client to send a complete request head, from accept
    /// for the first one; also closes idle keep-alive connections.
    pub header_read_timeout: Duration,
    /// Largest request head (request line plus headers), in bytes.
    pub max_header_bytes: usize,
}

impl Limits {
    /// The default bound on pending connections: both budgets together, so
    /// that a burst filling both at once is classified without any of its
    /// connections pushing out another.
    pub fn pending_for(max_connections: usize, max_peer_connections: usize) -> usize {
        max_connections.saturating_add(max_peer_connections)
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_peer_connections: DEFAULT_MAX_PEER_CONNECTIONS,
            max_pending_connections: Limits::pending_for(
                DEFAULT_MAX_CONNECTIONS,
                DEFAULT_MAX_PEER_CONNECTIONS,
            ),
            header_read_timeout: Duration::from_secs(10),
            max_header_bytes: 64 * 1024,
        }
    }
}

/// Which budget a connection counts against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    Client,
    Peer,
}

impl Class {
    fn label(self) -> &'static str {
        match self {
            Class::Client => "client",
            Class::Peer => "peer",
        }
    }
}

/// The class of a connection whose first bytes are `head`, or `None` while
/// they do not tell yet. A request line `METHOD /_internal/...` is a
/// peer's; anything else (another path, an absolute URI, bytes that are not
/// a request line) is a client's, and is left to the HTTP parser to judge.
pub fn classify(head: &[u8]) -> Option<Class> {
    let prefix = INTERNAL_PREFIX.as_bytes();
    let method_ok = |m: &[u8]| m.len() <= MAX_METHOD && m.iter().all(u8::is_ascii_uppercase);
    let Some(space) = head.iter().position(|&b| b == b' ') else {
        // Still in the method, if it is one.
        return if method_ok(head) {
            None
        } else {
            Some(Class::Client)
        };
    };
    if space == 0 || !method_ok(&head[..space]) {
        return Some(Class::Client);
    }
    let path = &head[space + 1..];
    let n = path.len().min(prefix.len());
    if path[..n] != prefix[..n] {
        Some(Class::Client)
    } else if n == prefix.len() {
        Some(Class::Peer)
    } else {
        None
    }
}

/// Serves `app` until `stop` is cancelled, then drains for at most `drain`.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    metrics: &Metrics,
    stop: CancellationToken,
    drain: Duration,
) {
    let graceful = GracefulShutdown::new();
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes.max(8192))
        .keep_alive(true);
    let class = |class| ConnectionClass { class };
    let shared = Arc::new(Shared {
        app,
        builder,
        header_timeout: limits.header_read_timeout,
        clients: Budget::new(Class::Client, limits.max_connections, metrics),
        peers: Budget::new(Class::Peer, limits.max_peer_connections, metrics),
        pending: Arc::new(Pending {
            cap: limits.max_pending_connections.max(1),
            set: Mutex::default(),
            open: metrics.connections.get_or_create(&class("pending")).clone(),
            pushed_out: metrics
                .connections_refused
                .get_or_create(&class("pending"))
                .clone(),
        }),
        stop: stop.clone(),
    });
    loop {
        let (stream, peer) = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Usually EMFILE: back off instead of spinning.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let place = shared.pending.enter();
        tokio::spawn(connection(
            shared.clone(),
            stream,
            peer,
            Instant::now(),
            place,
            graceful.watcher(),
        ));
    }
    drop(listener);
    info!("no longer accepting connections; draining");
    if tokio::time::timeout(drain, graceful.shutdown())
        .await
        .is_err()
    {
        warn!(?drain, "in-flight requests did not finish in time");
    }
}

/// What every connection task shares.
struct Shared {
    app: Router,
    builder: hyper::server::conn::http1::Builder,
    header_timeout: Duration,
    clients: Budget,
    peers: Budget,
    pending: Arc<Pending>,
    stop: CancellationToken,
}

/// One connection from accept to close: classify, admit or refuse, serve.
/// `watcher` keeps the drain at shutdown waiting for it.
async fn connection(
    shared: Arc<Shared>,
    stream: TcpStream,
    peer: SocketAddr,
    accepted: Instant,
    place: PendingPlace,
    watcher: Watcher,
) {
    let deadline = accepted + shared.header_timeout;
    let class = tokio::select! {
        class = read_class(&stream, deadline) => class,
        () = place.pushed_out.cancelled() => None,
        () = shared.stop.cancelled() => None,
    };
    let Some(class) = class else {
        return;
    };
    let budget = match class {
        Class::Client => &shared.clients,
        Class::Peer => &shared.peers,
    };
    let Some(admitted) = budget.admit() else {
        let refused = budget.refused.inc() + 1;
        if refused.is_power_of_two() {
            warn!(
                class = class.label(),
                refused,
                limit = budget.limit,
                "too many connections of this class; refusing new ones (503)"
            );
        }
        tokio::select! {
            () = refuse(stream, class, budget.limit) => {}
            () = place.pushed_out.cancelled() => {}
            () = shared.stop.cancelled() => {}
        }
        return;
    };
    drop(place);
    let _ = stream.set_nodelay(true);
    // The first head must be complete by the deadline counted from accept.
    // hyper keeps one head deadline per connection, so later heads (and the
    // idle cut-off) get the same, shorter by however long the request line
    // took to start: nothing for a client that sends at once.
    let mut builder = shared.builder.clone();
    builder.header_read_timeout(deadline.saturating_duration_since(Instant::now()));
    let service = TowerToHyperService::new(shared.app.clone());
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    if let Err(e) = watcher.watch(conn).await {
        debug!(%peer, class = class.label(), error = %e, "connection ended with an error");
    }
    drop(admitted);
}

/// Peeks at the first request line until it tells the class. `None`: the
/// connection closed or failed, or said too little before `deadline`.
async fn read_class(stream: &TcpStream, deadline: Instant) -> Option<Class> {
    let mut buf = [0u8; PEEK_BYTES];
    let mut pause = PEEK_PAUSE_MIN;
    loop {
        let n = match tokio::time::timeout_at(deadline, stream.peek(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => n,
            _ => return None,
        };
        if let Some(class) = classify(&buf[..n]) {
            return Some(class);
        }
        // Part of the line is there, and peek answers at once with the same
        // bytes until more arrive: look again after a pause that grows.
        if Instant::now() + pause >= deadline {
            return None;
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(PEEK_PAUSE_MAX);
    }
}

/// Answers a connection over its budget and closes it.
///
/// The client gets `503` with a JSON error, `Retry-After` and
/// `Connection: close`, which any HTTP client reports as what it is (an
/// overloaded server to retry later) rather than a broken connection. To
/// make sure it can read that answer, the connection is not just dropped:
/// closing a socket with unread request bytes makes the kernel send a
/// reset, which can destroy the answer before the client reads it. So our
/// side is shut down after the answer (FIN) and what the client still sends
/// is read and dropped until it closes, for at most [`REFUSE_LINGER`] and
/// [`REFUSE_DRAIN_BYTES`]. Meanwhile the connection holds a pending place,
/// so refusals in progress are bounded like every pending connection.
async fn refuse(mut stream: TcpStream, class: Class, limit: usize) {
    let body = serde_json::json!({
        "error": format!(
            "too many {} connections (limit {limit}); retry later",
            class.label()
        )
    })
    .to_string();
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nretry-after: {RETRY_AFTER_SECS}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let linger = async {
        stream.write_all(answer.as_bytes()).await?;
        stream.shutdown().await?;
        let mut sink = [0u8; 4096];
        let mut drained = 0;
        while drained < REFUSE_DRAIN_BYTES {
            match stream.read(&mut sink).await? {
                0 => break,
                n => drained += n,
            }
        }
        Ok::<(), std::io::Error>(())
    };
    let _ = tokio::time::timeout(REFUSE_LINGER, linger).await;
}

/// The open connections of one class and their limit.
struct Budget {
    limit: usize,
    permits: Arc<Semaphore>,
    open: Gauge,
    refused: Counter,
}

impl Budget {
    fn new(class: Class, limit: usize, metrics: &Metrics) -> Budget {
        let limit = limit.clamp(1, Semaphore::MAX_PERMITS);
        let label = ConnectionClass {
            class: class.label(),
        };
        Budget {
            limit,
            permits: Arc::new(Semaphore::new(limit)),
            open: metrics.connections.get_or_create(&label).clone(),
            refused: metrics.connections_refused.get_or_create(&label).clone(),
        }
    }

    fn admit(&self) -> Option<Admitted> {
        let permit = self.permits.clone().try_acquire_owned().ok()?;
        self.open.inc();
        Some(Admitted {
            _permit: permit,
            open: self.open.clone(),
        })
    }
}

/// A place in a budget, given back when dropped.
struct Admitted {
    _permit: OwnedSemaphorePermit,
    open: Gauge,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.open.dec();
    }
}

/// Connections accepted and not admitted yet, oldest first.
struct Pending {
    cap: usize,
    set: Mutex<PendingSet>,
    open: Gauge,
    pushed_out: Counter,
}

#[derive(Default)]
struct PendingSet {
    next: u64,
    waiting: BTreeMap<u64, CancellationToken>,
}

/// A pending connection's place; `pushed_out` fires when it is closed to
/// make room for a newer one.
struct PendingPlace {
    id: u64,
    pushed_out: CancellationToken,
    pending: Arc<Pending>,
}

impl Pending {
    fn enter(self: &Arc<Self>) -> PendingPlace {
        let pushed_out = CancellationToken::new();
        let mut set = self.set.lock().unwrap_or_else(PoisonError::into_inner);
        if set.waiting.len() >= self.cap
            && let Some((_, oldest)) = set.waiting.pop_first()
        {
            oldest.cancel();
            let n = self.pushed_out.inc() + 1;
            if n.is_power_of_two() {
                warn!(
                    closed = n,
                    limit = self.cap,
                    "too many connections without a request line; closing the oldest"
                );
            }
        }
        let id = set.next;
        set.next += 1;
        set.waiting.insert(id, pushed_out.clone());
        self.open.set(gauge_value(set.waiting.len()));
        PendingPlace {
            id,
            pushed_out,
            pending: self.clone(),
        }
    }
}

impl Drop for PendingPlace {
    fn drop(&mut self) {
        let mut set = self
            .pending
            .set
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        set.waiting.remove(&self.id);
        self.pending.open.set(gauge_value(set.waiting.len()));
    }
}

fn gauge_value(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
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
            serve(listener, app, limits, &m, s, Duration::from_secs(1)).await;
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
        let end =
            tokio::time::timeout(Duration::from_secs(5), refused.read_to_end(&mut rest)).await;
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
}
