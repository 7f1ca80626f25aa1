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
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::api::types::ConnInfo;
use crate::metrics::{ConnectionClass, Metrics};
use crate::proto::INTERNAL_PREFIX;
use crate::tls::{HANDSHAKE_RECORD, PeerCert, Tls};
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

/// Default of `--header-timeout`.
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Default of `--write-timeout`.
pub const DEFAULT_WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Open files kept aside from the connection budgets: data files, outgoing
/// peer connections, the listener, standard streams.
pub const RESERVED_FILES: u64 = 512;

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
    /// Deadline for each write of an answer to make progress: a client
    /// that stops reading is closed after it.
    pub write_timeout: Duration,
}

impl Limits {
    /// Open files these budgets can hold at once, besides the reserve.
    pub fn files(&self) -> u64 {
        let n = self
            .max_connections
            .saturating_add(self.max_peer_connections)
            .saturating_add(self.max_pending_connections);
        u64::try_from(n).unwrap_or(u64::MAX)
    }

    /// Shrinks the budgets to fit `open_files` (the process's limit) with
    /// [`RESERVED_FILES`] kept aside, in proportion; returns whether they
    /// had to shrink. Beyond the limit, accept would fail (EMFILE) for
    /// every class alike, peers included, instead of refusing clients with
    /// a 503.
    pub fn fit_to(&mut self, open_files: u64) -> bool {
        let room = open_files.saturating_sub(RESERVED_FILES).max(3);
        let want = self.files();
        if want <= room {
            return false;
        }
        let scale = |n: usize| {
            let n = u64::try_from(n).unwrap_or(u64::MAX);
            usize::try_from((u128::from(n) * u128::from(room) / u128::from(want)) as u64)
                .unwrap_or(usize::MAX)
                .max(1)
        };
        self.max_connections = scale(self.max_connections);
        self.max_peer_connections = scale(self.max_peer_connections);
        self.max_pending_connections = scale(self.max_pending_connections);
        true
    }

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
            header_read_timeout: DEFAULT_HEADER_TIMEOUT,
            max_header_bytes: 64 * 1024,
            write_timeout: DEFAULT_WRITE_TIMEOUT,
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
/// With `tls`, every connection speaks TLS (see [`crate::tls`]), or, when
/// its flag is set, TLS or plain HTTP, told apart by the first byte.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    metrics: &Metrics,
    stop: CancellationToken,
    drain: Duration,
    tls: Option<(Arc<Tls>, bool)>,
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
        write_timeout: limits.write_timeout,
        tls,
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
    write_timeout: Duration,
    tls: Option<(Arc<Tls>, bool)>,
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
    let tls = match shared.tls.clone() {
        Some((tls, false)) => Some(tls),
        Some((tls, true)) => {
            let first = tokio::select! {
                first = first_byte(&stream, deadline) => first,
                () = place.pushed_out.cancelled() => None,
                () = shared.stop.cancelled() => None,
            };
            match first {
                Some(HANDSHAKE_RECORD) => Some(tls),
                Some(_) => None,
                None => return,
            }
        }
        None => None,
    };
    if let Some(tls) = tls {
        // The class is proven here, not claimed: a connection that
        // presented a certificate of the cluster's CA is a peer's.
        let acceptor = tokio_rustls::TlsAcceptor::from(tls.server_config());
        let handshake = tokio::time::timeout_at(deadline, acceptor.accept(stream));
        let stream = tokio::select! {
            done = handshake => match done {
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) => {
                    debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => return,
            },
            () = place.pushed_out.cancelled() => return,
            () = shared.stop.cancelled() => return,
        };
        let cert = stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| PeerCert(Arc::new(c.clone().into_owned())));
        let class = if cert.is_some() {
            Class::Peer
        } else {
            Class::Client
        };
        let conn = ConnInfo { peer, cert };
        admit_and_serve(&shared, stream, class, conn, deadline, place, watcher).await;
        return;
    }
    let class = tokio::select! {
        class = read_class(&stream, deadline) => class,
        () = place.pushed_out.cancelled() => None,
        () = shared.stop.cancelled() => None,
    };
    let Some(class) = class else {
        return;
    };
    let _ = stream.set_nodelay(true);
    let conn = ConnInfo { peer, cert: None };
    admit_and_serve(&shared, stream, class, conn, deadline, place, watcher).await;
}

/// Admits a classified connection into its budget and serves it, or
/// refuses it when the budget is full.
async fn admit_and_serve<S>(
    shared: &Shared,
    stream: S,
    class: Class,
    conn: ConnInfo,
    deadline: Instant,
    place: PendingPlace,
    watcher: Watcher,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
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
    // The first head must be complete by the deadline counted from accept.
    // hyper keeps one head deadline per connection, so later heads (and the
    // idle cut-off) get the same, shorter by however long the request line
    // took to start: nothing for a client that sends at once.
    let mut builder = shared.builder.clone();
    builder.header_read_timeout(deadline.saturating_duration_since(Instant::now()));
    let peer = conn.peer;
    let app = shared.app.clone();
    let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
        req.extensions_mut().insert(conn.clone());
        tower_service::Service::call(&mut app.clone(), req)
    });
    let io = WriteDeadline::new(stream, shared.write_timeout);
    let served = builder.serve_connection(TokioIo::new(io), service);
    if let Err(e) = watcher.watch(served).await {
        debug!(%peer, class = class.label(), error = %e, "connection ended with an error");
    }
    drop(admitted);
}

/// The first byte a client sent, peeked at; `None` when it closed or sent
/// nothing before `deadline`.
async fn first_byte(stream: &TcpStream, deadline: Instant) -> Option<u8> {
    let mut buf = [0u8; 1];
    match tokio::time::timeout_at(deadline, stream.peek(&mut buf)).await {
        Ok(Ok(1)) => Some(buf[0]),
        _ => None,
    }
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
async fn refuse<S>(mut stream: S, class: Class, limit: usize)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
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

/// Raises this process's soft limit on open files to its hard limit, and
/// returns the limit in force (`None` when it cannot be read).
pub fn raise_open_files_limit() -> Option<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return None;
    }
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: setrlimit reads the struct we pass.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            lim = raised;
        } else {
            warn!(
                soft = lim.rlim_cur,
                hard = lim.rlim_max,
                "cannot raise the open-files limit"
            );
        }
    }
    Some(lim.rlim_cur)
}

fn gauge_value(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

mod stream;
#[cfg(test)]
mod tests;

pub use stream::WriteDeadline;
