//! A running node: wires storage, membership, replication and the HTTP
//! server together, and owns the shutdown sequence.
//!
//! Shutdown order: stop accepting connections and finish in-flight requests
//! (axum's graceful shutdown), stop every background task, push what peers
//! still lack (including what a push cut short had taken), then let the
//! storage writer commit what is queued and stop. Every background task
//! watches one cancellation token and is tracked, so "all stopped" is
//! awaited, with a bound, rather than assumed.

use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::cluster::{Actor, ClusterConfig};
use crate::crdt::GCounter;
use crate::metrics::{Metrics, Outcome};
use crate::proto::{
    MAX_NAMES_PER_MESSAGE, NodeRef, PROTOCOL_VERSION, Request, RequestEnvelope, Response,
    ResponseEnvelope, WireCounter,
};
use crate::replication::Peers;
use crate::storage::redb::RedbEngine;
use crate::storage::{Engine, Identity, Incremented, Store, StoreError, StoreOptions};
use crate::transport::{CallError, HttpTransport, Transport};

/// Everything a node needs to run; filled from flags and environment by the binary.
#[derive(Clone, Debug)]
pub struct Settings {
    pub id: u64,
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    /// Default deadline of a consistent read.
    pub consistent_timeout: Duration,
    /// Largest deadline a request may ask for with `?timeout=`.
    pub max_consistent_timeout: Duration,
    /// Deadline of one call to a peer.
    pub peer_timeout: Duration,
    /// Deadline for opening a connection to a peer.
    pub connect_timeout: Duration,
    /// Pause between anti-entropy rounds with each peer.
    pub sync_interval: Duration,
    /// Bound on the whole shutdown sequence.
    pub shutdown_timeout: Duration,
    pub secret: Option<Arc<str>>,
    pub store: StoreOptions,
    /// Shared by every layer of this node.
    pub metrics: Metrics,
}

impl Settings {
    pub fn new(id: u64, listen: SocketAddr, data_dir: PathBuf) -> Self {
        Settings {
            id,
            listen,
            data_dir,
            consistent_timeout: Duration::from_secs(10),
            max_consistent_timeout: Duration::from_secs(60),
            peer_timeout: Duration::from_secs(1),
            connect_timeout: Duration::from_millis(500),
            sync_interval: Duration::from_millis(500),
            shutdown_timeout: Duration::from_secs(10),
            secret: None,
            store: StoreOptions::default(),
            metrics: Metrics::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A consistent read that could not hear from every actor in time.
#[derive(Debug, Serialize)]
pub struct Unreachable {
    pub reason: String,
    pub unreachable: Vec<String>,
    pub best_known_value: u128,
}

#[derive(Debug, Serialize)]
pub struct ConfigSummary {
    pub changed: bool,
    pub version: u64,
    pub origin: u64,
    pub actors: Vec<String>,
    #[serde(rename = "self")]
    pub me: Option<String>,
}

pub struct Node {
    settings: Settings,
    store: Store,
    identity: Identity,
    transport: Arc<dyn Transport>,
    config: watch::Sender<ClusterConfig>,
    /// Serializes config changes so persisting and publishing happen in one order.
    config_lock: tokio::sync::Mutex<()>,
    me: watch::Sender<Option<Actor>>,
    peers: Arc<Peers>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
    started: Instant,
}

impl Node {
    /// Opens the data folder and starts the background tasks (not the HTTP server).
    pub fn start(
        settings: Settings,
        transport: Arc<dyn Transport>,
    ) -> Result<Arc<Node>, StartError> {
        let engine = Arc::new(RedbEngine::open(&settings.data_dir)?);
        Self::start_with(settings, engine, transport)
    }

    /// Starts a node over any storage engine and transport.
    pub fn start_with(
        settings: Settings,
        engine: Arc<dyn Engine>,
        transport: Arc<dyn Transport>,
    ) -> Result<Arc<Node>, StartError> {
        let peers = Arc::new(Peers::default());
        let hook_peers = peers.clone();
        let store_options = StoreOptions {
            metrics: settings.metrics.clone(),
            ..settings.store.clone()
        };
        let opened = Store::with_engine(
            engine,
            settings.id,
            store_options,
            Arc::new(move |names: &[String]| hook_peers.mark_dirty(names)),
        )?;
        let identity = opened.store.identity();
        info!(
            version = env!("CARGO_PKG_VERSION"),
            id = identity.node,
            incarnation = format_args!("{:016x}", identity.incarnation),
            data_dir = %settings.data_dir.display(),
            new_folder = opened.created,
            names = opened.store.names(),
            config_version = opened.config.stamp.version,
            "storage recovered"
        );
        let node = Arc::new(Node {
            store: opened.store,
            identity,
            transport,
            config: watch::Sender::new(opened.config),
            config_lock: tokio::sync::Mutex::new(()),
            me: watch::Sender::new(None),
            peers,
            shutdown: CancellationToken::new(),
            tracker: TaskTracker::new(),
            started: Instant::now(),
            settings,
        });
        node.spawn(membership_loop(node.clone()));
        Ok(node)
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn identity(&self) -> Identity {
        self.identity
    }

    pub fn config(&self) -> ClusterConfig {
        self.config.borrow().clone()
    }

    pub fn me(&self) -> Option<Actor> {
        self.me.borrow().clone()
    }

    pub fn peers(&self) -> &Peers {
        &self.peers
    }

    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Runs a background task that ends when the node shuts down.
    pub fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        let token = self.shutdown.clone();
        self.tracker.spawn(async move {
            tokio::select! {
                _ = token.cancelled() => {}
                _ = task => {}
            }
        });
    }

    fn envelope(&self, req: Request) -> RequestEnvelope {
        RequestEnvelope {
            v: PROTOCOL_VERSION,
            from: self.identity.into(),
            config: self.config(),
            req,
        }
    }

    /// Calls a peer and adopts any newer config its answer carries.
    pub async fn call(
        &self,
        to: &Actor,
        req: Request,
        timeout: Duration,
    ) -> Result<ResponseEnvelope, CallError> {
        let env = self.envelope(req);
        let resp = self.transport.call(to, &env, timeout).await?;
        if resp.v != PROTOCOL_VERSION {
            return Err(CallError::Protocol(format!(
                "peer speaks protocol {}, this node {PROTOCOL_VERSION}",
                resp.v
            )));
        }
        if let Some(config) = &resp.config
            && let Err(e) = self.adopt_config(config.clone()).await
        {
            warn!(error = %e, "could not store a config learned from a peer");
        }
        Ok(resp)
    }

    /// Answers a peer's call.
    pub async fn handle_rpc(&self, env: RequestEnvelope) -> Result<ResponseEnvelope, RpcError> {
        if env.v != PROTOCOL_VERSION {
            return Err(RpcError::BadRequest(format!(
                "protocol {} is not supported; this node speaks {PROTOCOL_VERSION}",
                env.v
            )));
        }
        let theirs = env.config;
        // Most messages carry the config this node already has: only a newer
        // one is validated and adopted (which takes the config lock).
        let newer = theirs.is_set() && self.config.borrow().is_superseded_by(&theirs);
        if newer {
            crate::api::validate_config(&theirs).map_err(RpcError::BadRequest)?;
            self.adopt_config(theirs.clone()).await?;
        }
        let resp = match env.req {
            Request::Hello | Request::Config => Response::Ack,
            Request::Push { counters } => {
                let counters = validate_counters(counters)?;
                self.store
                    .merge(crate::storage::Merge {
                        counters,
                        mark: None,
                    })
                    .await?;
                Response::Ack
            }
            Request::Pull {
                incarnation,
                since,
                limit,
            } => {
                if incarnation != self.identity.incarnation {
                    // The asker's mark belongs to another incarnation: tell it who we are first.
                    Response::Changes {
                        counters: Vec::new(),
                        next: 0,
                        head: 0,
                        more: true,
                    }
                } else {
                    let changes = self
                        .store
                        .changes_since(since, limit.clamp(1, MAX_NAMES_PER_MESSAGE))
                        .await?;
                    Response::Changes {
                        counters: changes
                            .counters
                            .into_iter()
                            .map(|(n, c)| WireCounter::new(n, &c))
                            .collect(),
                        next: changes.next,
                        head: changes.head,
                        more: changes.more,
                    }
                }
            }
            Request::Read { name } => {
                crate::api::validate_name(&name).map_err(RpcError::BadRequest)?;
                Response::Counter {
                    components: (&self.store.counter(&name).unwrap_or_default()).into(),
                }
            }
        };
        let ours = self.config();
        Ok(ResponseEnvelope {
            v: PROTOCOL_VERSION,
            from: self.identity.into(),
            config: theirs.is_superseded_by(&ours).then_some(ours),
            resp,
        })
    }

    /// Adopts `config` if it supersedes the current one; returns whether it did.
    pub async fn adopt_config(&self, config: ClusterConfig) -> Result<bool, StoreError> {
        let _guard = self.config_lock.lock().await;
        if !self.config.borrow().is_superseded_by(&config) {
            return Ok(false);
        }
        self.store.save_config(config.clone()).await?;
        info!(
            version = config.stamp.version,
            origin = config.stamp.origin,
            actors = ?config.actors.iter().map(Actor::as_str).collect::<Vec<_>>(),
            "config applied"
        );
        self.config.send_replace(config);
        Ok(true)
    }

    /// `POST /config`: a new actor list posted by a client to this node.
    pub async fn post_config(&self, actors: Vec<Actor>) -> Result<ConfigSummary, StoreError> {
        let next = {
            let current = self.config.borrow().clone();
            current.next(actors, self.identity.node)
        };
        let changed = match next {
            Some(next) => {
                let old = self.config();
                let adopted = self.adopt_config(next.clone()).await?;
                if adopted {
                    self.announce(&old, &next);
                }
                adopted
            }
            None => false,
        };
        let me = self.wait_for_me(Duration::from_millis(500)).await;
        let config = self.config();
        Ok(ConfigSummary {
            changed,
            version: config.stamp.version,
            origin: config.stamp.origin,
            actors: config.actors.iter().map(|a| a.to_string()).collect(),
            me: me.map(|a| a.to_string()),
        })
    }

    /// Tells every actor of the old and new config about a new config, once;
    /// anti-entropy keeps carrying it to those this misses.
    fn announce(self: &Node, old: &ClusterConfig, new: &ClusterConfig) {
        let mut targets: Vec<Actor> = old.actors.iter().chain(&new.actors).cloned().collect();
        targets.sort();
        targets.dedup();
        let me = self.me();
        for actor in targets.into_iter().filter(|a| Some(a) != me.as_ref()) {
            let env = self.envelope(Request::Config);
            let transport = self.transport.clone();
            let timeout = self.settings.peer_timeout;
            self.tracker.spawn(async move {
                let _ = transport.call(&actor, &env, timeout).await;
            });
        }
    }

    async fn wait_for_me(&self, bound: Duration) -> Option<Actor> {
        let mut rx = self.me.subscribe();
        let _ = tokio::time::timeout(bound, rx.wait_for(Option::is_some)).await;
        self.me()
    }

    /// Increments with an optional idempotency key (single or batch):
    /// durable before it returns, applied once per key.
    pub async fn increment_once(
        &self,
        items: Vec<(String, u64)>,
        key: Option<String>,
    ) -> Result<Incremented, StoreError> {
        self.store.increment_once(items, key).await
    }

    /// `POST /counter/<name>`: durable before it returns.
    pub async fn increment(&self, name: String, amount: u64) -> Result<u128, StoreError> {
        if amount == 0 {
            return Ok(self.store.value(&name));
        }
        let values = self.store.increment(vec![(name, amount)]).await?;
        Ok(values[0])
    }

    /// `GET /counter/<name>/consistent_value`: hears from every actor (itself
    /// included) during this call, retrying the silent ones until `deadline`.
    pub async fn consistent_value(
        &self,
        name: &str,
        timeout: Duration,
    ) -> Result<u128, Unreachable> {
        let started = Instant::now();
        let result = self.consistent_read(name, timeout).await;
        let outcome = match &result {
            Ok(_) => "ok",
            Err(u) if u.unreachable.is_empty() => "no_config",
            Err(_) => "unavailable",
        };
        let m = &self.settings.metrics;
        m.consistent_reads.get_or_create(&Outcome { outcome }).inc();
        m.consistent_seconds
            .observe(started.elapsed().as_secs_f64());
        result
    }

    async fn consistent_read(&self, name: &str, timeout: Duration) -> Result<u128, Unreachable> {
        let deadline = Instant::now() + timeout;
        let config = self.config();
        let mut merged = self.store.counter(name).unwrap_or_default();
        if !config.is_set() {
            // Without a config this node cannot know whom to hear from: it
            // may be new, or it may have lost its data folder and with it
            // the list of peers that hold what it acknowledged. Only a 503
            // is safe (G1); writes and local reads work as a cluster of one.
            return Err(Unreachable {
                reason: "this node has no cluster config yet; POST /config first".into(),
                unreachable: Vec::new(),
                best_known_value: merged.value(),
            });
        }
        let me = self.me();
        let mut calls = JoinSet::new();
        for actor in config.actors.iter().filter(|a| Some(*a) != me.as_ref()) {
            let actor = actor.clone();
            let env = self.envelope(Request::Read {
                name: name.to_string(),
            });
            let transport = self.transport.clone();
            let per_call = self.settings.peer_timeout;
            calls.spawn(async move {
                let result = read_until(&*transport, &actor, &env, per_call, deadline).await;
                (actor, result)
            });
        }
        let mut unreachable = Vec::new();
        while let Some(joined) = calls.join_next().await {
            match joined {
                Ok((_, Some(theirs))) => {
                    merged.merge(&theirs);
                }
                Ok((actor, None)) => unreachable.push(actor.to_string()),
                Err(e) => unreachable.push(format!("(task failed: {e})")),
            }
        }
        if unreachable.is_empty() {
            Ok(merged.value())
        } else {
            unreachable.sort();
            Err(Unreachable {
                reason: format!("could not hear from every node within {timeout:?}"),
                unreachable,
                best_known_value: merged.value(),
            })
        }
    }

    /// Stops the node: the HTTP server must already have drained.
    pub async fn shutdown(self: &Arc<Node>) {
        let bound = self.settings.shutdown_timeout;
        let sequence = async {
            // Every background task stops first, so that a push cut short
            // has put its names back before the last flush takes them.
            self.shutdown.cancel();
            self.tracker.close();
            self.tracker.wait().await;
            self.peers
                .flush(self, self.settings.peer_timeout.min(bound / 2))
                .await;
            self.store.close().await;
        };
        if tokio::time::timeout(bound, sequence).await.is_err() {
            warn!(?bound, "shutdown did not finish in time");
        }
    }
}

/// Calls `actor` until it answers or `deadline` passes. The pause between
/// attempts stays short so a healed network is noticed promptly.
async fn read_until(
    transport: &dyn Transport,
    actor: &Actor,
    env: &RequestEnvelope,
    per_call: Duration,
    deadline: Instant,
) -> Option<GCounter> {
    let mut pause = Duration::from_millis(20);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        if let Ok(resp) = transport.call(actor, env, per_call.min(left)).await
            && let Response::Counter { components } = resp.resp
        {
            return Some(components.into_iter().collect());
        }
        let left = deadline.saturating_duration_since(Instant::now());
        tokio::time::sleep(pause.min(left)).await;
        pause = (pause * 2).min(Duration::from_millis(200));
    }
}

fn validate_counters(counters: Vec<WireCounter>) -> Result<Vec<(String, GCounter)>, RpcError> {
    if counters.len() > MAX_NAMES_PER_MESSAGE {
        return Err(RpcError::BadRequest(format!(
            "at most {MAX_NAMES_PER_MESSAGE} counters per message"
        )));
    }
    counters
        .into_iter()
        .map(|c| {
            crate::api::validate_name(&c.name).map_err(RpcError::BadRequest)?;
            Ok(c.into_parts())
        })
        .collect()
}

/// Errors answering a peer.
#[derive(Debug, thiserror::Error)]
pub enum RpcError {
    #[error("{0}")]
    BadRequest(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Keeps "which actor am I" and the peer tasks in step with the config.
async fn membership_loop(node: Arc<Node>) {
    let mut rx = node.config.subscribe();
    loop {
        let config = rx.borrow_and_update().clone();
        let me = identify(&node, &config, &mut rx).await;
        if node.me() != me {
            info!(me = ?me.as_ref().map(Actor::as_str), "identified this node in the config");
        }
        node.me.send_replace(me.clone());
        let peers: Vec<Actor> = config
            .actors
            .iter()
            .filter(|a| Some(*a) != me.as_ref())
            .cloned()
            .collect();
        node.peers.reconcile(&node, &peers);
        if me.is_none() && config.is_set() {
            // Still unknown (the handshake is retried until the config changes).
            continue;
        }
        if rx.changed().await.is_err() {
            return;
        }
    }
}

/// Finds which actor is this node: by its own addresses when that is
/// unambiguous, else by asking each actor who it is. Returns `None` when
/// neither works before a second passes or the config changes.
async fn identify(
    node: &Arc<Node>,
    config: &ClusterConfig,
    rx: &mut watch::Receiver<ClusterConfig>,
) -> Option<Actor> {
    if !config.is_set() {
        return None;
    }
    let listen = node.settings.listen;
    let local: Vec<&Actor> = config
        .actors
        .iter()
        .filter(|a| is_local(a, listen))
        .collect();
    if let [only] = local.as_slice() {
        return Some((*only).clone());
    }
    let round = async {
        let mut asks = JoinSet::new();
        for actor in config.actors.clone() {
            let node = node.clone();
            asks.spawn(async move {
                let env = node.envelope(Request::Hello);
                let resp = node
                    .transport
                    .call(&actor, &env, node.settings.peer_timeout)
                    .await;
                (actor, resp.map(|r| r.from))
            });
        }
        while let Some(Ok((actor, resp))) = asks.join_next().await {
            if matches!(resp, Ok(from) if from == NodeRef::from(node.identity)) {
                return Some(actor);
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        None
    };
    tokio::select! {
        found = round => found,
        _ = rx.changed() => None,
    }
}

/// Whether `actor` names this node's own listening socket.
fn is_local(actor: &Actor, listen: SocketAddr) -> bool {
    let Some(addr) = actor.socket_addr() else {
        return false;
    };
    if addr.port() != listen.port() {
        return false;
    }
    if !listen.ip().is_unspecified() {
        return addr.ip() == listen.ip();
    }
    // Binding succeeds only for an address of one of this host's interfaces.
    UdpSocket::bind(SocketAddr::new(addr.ip(), 0)).is_ok()
}

/// Runs a node until `stop` resolves: listens, serves, then shuts down in order.
pub async fn run(
    mut settings: Settings,
    limits: crate::server::Limits,
    stop: impl Future<Output = ()> + Send + 'static,
) -> Result<(), StartError> {
    let listener =
        TcpListener::bind(settings.listen)
            .await
            .map_err(|source| StartError::Listen {
                addr: settings.listen,
                source,
            })?;
    settings.listen = listener.local_addr().map_err(|source| StartError::Listen {
        addr: settings.listen,
        source,
    })?;
    if settings.secret.is_none() {
        warn!(
            "no cluster secret set: anyone who can reach this port can change config and inject counts"
        );
    }
    let transport = Arc::new(HttpTransport::new(
        settings.connect_timeout,
        settings.secret.clone(),
        settings.metrics.clone(),
    ));
    let node = Node::start(settings, transport)?;
    info!(listen = %node.settings.listen, "listening");
    let app = crate::api::router(node.clone());
    let token = node.shutdown_token();
    let stop_serving = CancellationToken::new();
    let trigger = stop_serving.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = stop => {}
            _ = token.cancelled() => {}
        }
        trigger.cancel();
    });
    crate::server::serve(
        listener,
        app,
        limits,
        &node.settings.metrics,
        stop_serving,
        node.settings.shutdown_timeout,
    )
    .await;
    node.shutdown().await;
    info!("stopped");
    Ok(())
}
