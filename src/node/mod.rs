//! A running node: wires storage, membership, replication and the HTTP
//! server together, and owns the shutdown sequence.
//!
//! One file per job, each with a narrow context of what it needs of the
//! node: `membership` ([`Place`]) keeps "who am I, whom do I replicate
//! with, have I handed off" in step with the config, `read` ([`Reads`])
//! runs consistent reads as `read_round` decides them, `history`
//! ([`History`]) keeps the last minutes of the node's rates for the
//! console; this file wires them, starts and stops the node and runs
//! increments. Peers' calls are
//! answered by replication ([`Replicator::answer`]).
//!
//! Shutdown order: stop accepting connections and let in-flight requests
//! finish (the server's bounded drain), stop every background task, push
//! what peers still lack (including what a push cut short had taken), then
//! let the storage writer commit what is queued and stop. The whole
//! sequence is bounded.

mod backup;
mod history;
mod membership;
mod read;
mod read_batch;
mod read_round;
mod settings;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

pub use backup::{ConsistentPage, RestoreError, Restored};
pub use history::{HISTORY_INTERVAL, HISTORY_SAMPLES, History, PeerLag, Reading, Sample};
pub use membership::{ConfigOutcome, Place, PostConfigError, Role, Whoami};
pub use read::Reads;
pub use read_round::Incomplete;
pub use settings::{Budgets, Deps, OnDamage, Settings, StoreOptions, WallClock, defaults};

use crate::cluster::{Actor, Membership};
use crate::messenger::Messenger;
use crate::metrics::{Metrics, Outcome};
use crate::replication::{self, Replicator};
use crate::storage::logged::{LogEngine, LogOptions};
use crate::storage::{Engine, Incremented, ReplicaId, Store, StoreDeps, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Fatal(String),
    /// TLS files, the tokens file, or a combination of them, unusable.
    #[error("{0}")]
    Security(String),
}

/// Why an increment was not acknowledged.
#[derive(Debug, thiserror::Error)]
pub enum IncrementError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// This node left the cluster: its acknowledgements would be covered by
    /// no consistent read.
    #[error(
        "this node ({me}) is not in the cluster's config; send increments to one of its actors"
    )]
    NotMember { me: String, actors: Vec<Actor> },
    /// Applied here, but fewer than the required other actors stored it in time.
    #[error(
        "stored on {stored} of the {required} other actors required within {timeout:?}; the increment is applied on this node and will replicate, but it is not acknowledged"
    )]
    Replicas {
        stored: usize,
        required: usize,
        timeout: Duration,
        values: Vec<u128>,
    },
    #[error("{required} other actors must store this increment, but the config has {available}")]
    TooFewActors { required: usize, available: usize },
}

pub struct Node {
    settings: Settings,
    store: Store,
    place: Arc<Place>,
    peers: Arc<Replicator>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
    started: Instant,
    /// Why the node must stop, when something it cannot live without died.
    fatal: Mutex<Option<String>>,
    reads: Arc<Reads>,
    /// Shared by every layer of this node.
    metrics: Metrics,
    /// The last minutes, one sample a second (see [`sample_loop`]). A std
    /// mutex: held only to push one sample or to copy the ring, never
    /// across an `.await`.
    history: Mutex<History>,
    /// The time of each sample.
    clock: WallClock,
}

impl Node {
    /// Opens the data folder (or starts over `deps.engine`) and starts the
    /// background tasks (not the HTTP server).
    pub fn start(settings: Settings, deps: Deps) -> Result<Arc<Node>, StartError> {
        let Deps {
            metrics,
            clock,
            transport,
            engine,
        } = deps;
        let engine: Arc<dyn Engine> = match engine {
            Some(engine) => engine,
            None => {
                let options = LogOptions {
                    on_damage: settings.on_damage,
                    ..LogOptions::default()
                };
                Arc::new(LogEngine::with_options(&settings.data_dir, options)?)
            }
        };
        let store_deps = StoreDeps {
            metrics: metrics.clone(),
            clock: clock.clone(),
        };
        let opened = Store::with_engine(engine, settings.id, settings.store.clone(), store_deps)?;
        let identity = opened.store.identity();
        info!(
            version = env!("CARGO_PKG_VERSION"),
            id = identity.node,
            incarnation = format_args!("{:016x}", identity.incarnation),
            data_dir = %settings.data_dir.display(),
            new_folder = opened.created,
            names = opened.store.names(),
            config_version = opened.store.membership().stamp().version,
            "storage recovered"
        );
        let health = opened.store.health();
        if let Some(event) = health.salvaged.last() {
            warn!(
                salvages = health.salvaged.len(),
                last_at_ms = event.at_ms,
                lost = %event.lost,
                from_incarnation = format_args!("{:016x}", event.from_incarnation),
                "this data folder was salvaged after damage (see /status storage.salvaged)"
            );
        }
        let shutdown = CancellationToken::new();
        let tracker = TaskTracker::new();
        let messenger = Messenger::new(transport, opened.store.clone());
        let peers = Replicator::start(
            replication::Context {
                store: opened.store.clone(),
                messenger: messenger.clone(),
                peer_timeout: settings.peer_timeout,
                sync_interval: settings.sync_interval,
                metrics: metrics.clone(),
                shutdown: shutdown.clone(),
                tasks: tracker.clone(),
            },
            opened.committed,
        );
        // The actor this node found itself to be before a restart, while
        // the config still names it: known at once, so a node that left
        // never acknowledges an increment while it finds out again.
        let remembered = opened
            .store
            .remembered_me()
            .filter(|me| opened.store.membership().everyone().contains(me))
            .map_or(Whoami::Unknown, Whoami::Is);
        let place = Arc::new(Place {
            store: opened.store.clone(),
            messenger: messenger.clone(),
            identity,
            listen: settings.listen,
            peer_timeout: settings.peer_timeout,
            sync_interval: settings.sync_interval,
            whoami: watch::Sender::new(remembered),
            peers: peers.clone(),
        });
        let reads = Arc::new(Reads {
            store: opened.store.clone(),
            messenger: messenger.clone(),
            whoami: place.whoami.subscribe(),
            peer_timeout: settings.peer_timeout,
            metrics: metrics.clone(),
            shutdown: shutdown.clone(),
            tasks: tracker.clone(),
            batches: Default::default(),
        });
        let node = Arc::new(Node {
            store: opened.store,
            place,
            peers,
            shutdown,
            tracker,
            started: Instant::now(),
            fatal: Mutex::new(None),
            reads,
            metrics,
            settings,
            history: Mutex::new(History::default()),
            clock,
        });
        node.spawn(membership::membership_loop(node.place.clone()));
        node.spawn(membership::handoff_loop(node.place.clone()));
        node.spawn(watch_writer(node.clone()));
        node.spawn(sample_loop(node.clone()));
        if let Some(every) = node.settings.scrub_interval {
            node.spawn(scrub_loop(node.clone(), every));
        }
        Ok(node)
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Every metric of this node, shared by all its layers.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn identity(&self) -> ReplicaId {
        self.store.identity()
    }

    pub fn membership(&self) -> Membership {
        self.store.membership()
    }

    /// Which actor of the config this node is, once known.
    pub fn me(&self) -> Option<Actor> {
        self.place.me()
    }

    pub fn role(&self) -> Role {
        self.place.role()
    }

    /// Which actor this node is, and `POST /config`.
    pub fn place(&self) -> &Arc<Place> {
        &self.place
    }

    /// Replication with the peers, and the answers to their calls.
    pub fn peers(&self) -> &Replicator {
        &self.peers
    }

    /// Consistent reads.
    pub fn reads(&self) -> &Arc<Reads> {
        &self.reads
    }

    /// The samples of the last minutes, oldest first.
    pub fn history(&self) -> Vec<Sample> {
        let h = self.history.lock().unwrap_or_else(|p| p.into_inner());
        h.samples().cloned().collect()
    }

    /// The node's cumulative counts now, as [`sample_loop`] reads them.
    fn reading(&self) -> Reading {
        let m = &self.metrics;
        let reads = |outcome: &'static str| {
            m.consistent_reads
                .get(&Outcome { outcome })
                .map_or(0, |c| c.get())
        };
        Reading {
            increments: m.increments.get(),
            consistent_ok: reads("ok"),
            consistent_failed: reads("unavailable") + reads("no_config"),
            consistent_seconds: m.consistent_seconds_sum.get(),
            storage_healthy: self.store.health().healthy,
            peers: self
                .peers
                .report()
                .into_iter()
                .map(|p| PeerLag {
                    actor: Arc::from(p.actor.to_string()),
                    lag_changes: p.lag_changes,
                    reachable: p.reachable,
                })
                .collect(),
        }
    }

    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Why the node stopped itself, if it did.
    pub fn fatal(&self) -> Option<String> {
        self.fatal.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Runs a background task that ends when the node shuts down.
    fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        let token = self.shutdown.clone();
        self.tracker.spawn(async move {
            tokio::select! {
                _ = token.cancelled() => {}
                _ = task => {}
            }
        });
    }

    /// Increments (one name or a batch) with an optional idempotency key:
    /// durable before it returns, applied once per key, and, when `replicas`
    /// (or `--min-replicas`) asks for it, stored by that many other actors.
    pub async fn increment(
        &self,
        items: Vec<(String, u64)>,
        key: Option<String>,
        replicas: Option<usize>,
    ) -> Result<Incremented, IncrementError> {
        let role = self.role();
        if !role.accepts_increments() {
            return Err(IncrementError::NotMember {
                me: self
                    .me()
                    .map_or_else(|| "unlisted".into(), |a| a.to_string()),
                actors: self.membership().config.actors,
            });
        }
        // A request may ask for more replicas than the node's minimum, never fewer.
        let required = replicas.unwrap_or(0).max(self.settings.min_replicas);
        if required > 0 {
            let available = self.membership().config.actors.len().saturating_sub(1);
            if required > available {
                return Err(IncrementError::TooFewActors {
                    required,
                    available,
                });
            }
        }
        let done = self.store.increment_once(items, key).await?;
        if required == 0 {
            return Ok(done);
        }
        let timeout = self.settings.replica_timeout;
        let stored = self
            .peers
            .wait_stored(done.seq, required, Instant::now() + timeout)
            .await;
        let outcome = if stored >= required { "ok" } else { "short" };
        self.metrics
            .replica_waits
            .get_or_create(&Outcome { outcome })
            .inc();
        if stored >= required {
            Ok(done)
        } else {
            Err(IncrementError::Replicas {
                stored,
                required,
                timeout,
                values: done.values,
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
                .flush(self.settings.peer_timeout.min(bound / 2))
                .await;
            self.store.close().await;
        };
        if tokio::time::timeout(bound, sequence).await.is_err() {
            warn!(?bound, "shutdown did not finish in time");
        }
    }
}

/// A scrub pass over the data folder every `every` (the first one `every`
/// after start: opening has just checked everything).
async fn scrub_loop(node: Arc<Node>, every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        if let Err(e) = node.store.scrub(node.settings.scrub_rate).await {
            warn!(error = %e, "a storage scrub pass stopped early; the next one starts on time");
        }
    }
}

/// A sample of the node's rates every [`HISTORY_INTERVAL`], into its
/// history; ends with the node (see [`Node::spawn`]). A late tick is taken
/// late, not twice: rates are over the time that really passed.
async fn sample_loop(node: Arc<Node>) {
    let mut tick = tokio::time::interval(HISTORY_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    let mut before = (Instant::now(), node.reading());
    loop {
        tick.tick().await;
        let now = (Instant::now(), node.reading());
        let at_ms = node.clock.now_ms();
        let sample = Sample::between(&before.1, &now.1, now.0 - before.0, at_ms);
        node.history
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(sample);
        before = now;
    }
}

/// Stops the node if the storage writer dies: it could never write again,
/// and a node that refuses every write forever is worse than one that exits.
async fn watch_writer(node: Arc<Node>) {
    let reason = node.store.stopped().await;
    error!(reason = %reason, "stopping the node: storage cannot write any more");
    *node.fatal.lock().unwrap_or_else(|p| p.into_inner()) = Some(reason);
    node.shutdown.cancel();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::RequestEnvelope;
    use crate::storage::memory::MemoryEngine;
    use crate::transport::{CallError, CallFuture, Transport};

    struct Nowhere;

    impl Transport for Nowhere {
        fn call(&self, _: &Actor, _: &RequestEnvelope, _: Duration) -> CallFuture {
            Box::pin(async { Err(CallError::Unreachable("no network in this test".into())) })
        }
    }

    #[tokio::test]
    async fn a_node_whose_writer_dies_stops_itself_and_says_why() {
        let settings = Settings::new(1, "127.0.0.1:7777".parse().unwrap(), "unused".into());
        // Commits panic: the storage writer dies on its first write.
        let engine = Arc::new(MemoryEngine::new());
        engine.inject(crate::storage::memory::DiskFault::Panic);
        let node = Node::start(settings, Deps::new(Arc::new(Nowhere)).with_engine(engine)).unwrap();
        assert!(
            node.increment(vec![("a".into(), 1)], None, None)
                .await
                .is_err()
        );
        tokio::time::timeout(Duration::from_secs(5), node.shutdown_token().cancelled())
            .await
            .expect("the node stops itself instead of refusing writes forever");
        let why = node.fatal().expect("and records why");
        assert!(why.contains("panicked"), "{why}");
    }

    #[tokio::test]
    async fn a_node_that_left_refuses_increments_naming_the_actors() {
        let settings = Settings::new(1, "127.0.0.1:7777".parse().unwrap(), "unused".into());
        let deps = Deps::new(Arc::new(Nowhere)).with_engine(Arc::new(MemoryEngine::new()));
        let node = Node::start(settings, deps).unwrap();
        // Its own listening address: found without asking anyone.
        let me = Actor::parse("127.0.0.1:7777").unwrap();
        let other = Actor::parse("10.9.9.2").unwrap();
        let both = vec![me.clone(), other.clone()];
        node.store
            .update_membership(move |m| m.post(both, 2))
            .await
            .unwrap();
        let role = |want: Role| {
            let node = node.clone();
            async move {
                for _ in 0..200 {
                    if node.role() == want {
                        return true;
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                false
            }
        };
        assert!(role(Role::Member).await, "{:?}", node.role());
        node.increment(vec![("a".into(), 1)], None, None)
            .await
            .expect("a member acknowledges");
        let rest = vec![other.clone()];
        node.store
            .update_membership(move |m| m.post(rest, 2))
            .await
            .unwrap();
        assert!(role(Role::Leaving).await, "{:?}", node.role());
        match node.increment(vec![("a".into(), 1)], None, None).await {
            Err(IncrementError::NotMember { actors, .. }) => assert_eq!(actors, vec![other]),
            other => panic!("a leaver must refuse, got {other:?}"),
        }
        assert_eq!(node.store.value("a"), 1, "and change nothing");
        node.shutdown().await;
    }

    /// The sampler's task: a sample a second from the node's own counts,
    /// rates over the second that passed, and nothing after the shutdown.
    #[tokio::test(start_paused = true)]
    async fn the_node_samples_its_rates_once_a_second() {
        let settings = Settings::new(1, "127.0.0.1:7777".parse().unwrap(), "unused".into());
        let deps = Deps::new(Arc::new(Nowhere)).with_engine(Arc::new(MemoryEngine::new()));
        let node = Node::start(settings, deps).unwrap();
        // The first reading is taken at start; five increments in the
        // first second.
        tokio::time::sleep(Duration::from_millis(100)).await;
        for _ in 0..5 {
            node.increment(vec![("a".into(), 1)], None, None)
                .await
                .unwrap();
        }
        tokio::time::sleep(Duration::from_millis(1000)).await;
        let h = node.history();
        assert_eq!(h.len(), 1, "{h:?}");
        assert_eq!(h[0].increments_per_sec, 5.0, "{h:?}");
        assert!(h[0].storage_healthy);
        assert!(h[0].peers.is_empty(), "no config, no peers");
        tokio::time::sleep(Duration::from_secs(10)).await;
        let h = node.history();
        assert_eq!(h.len(), 11, "one a second");
        assert_eq!(h[10].increments_per_sec, 0.0, "idle since");
        node.shutdown().await;
        let stopped = node.history().len();
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(
            node.history().len(),
            stopped,
            "sampling ended with the node"
        );
    }

    /// A peer that takes every push at once and records the names of each;
    /// its pull pages are empty.
    #[derive(Default)]
    struct Recorder {
        pushes: Mutex<Vec<Vec<String>>>,
    }

    impl Transport for Recorder {
        fn call(&self, _: &Actor, env: &RequestEnvelope, _: Duration) -> CallFuture {
            use crate::proto::{PROTOCOL_VERSION, Request, Response, ResponseEnvelope};
            let resp = match &env.req {
                Request::Push { counters } => {
                    let names = counters.iter().map(|c| c.name.clone()).collect();
                    self.pushes.lock().unwrap().push(names);
                    Response::Ack
                }
                Request::Pull { since, .. } => Response::Changes {
                    counters: Vec::new(),
                    next: *since,
                    head: *since,
                    more: false,
                },
                _ => return Box::pin(async { Err(CallError::Unreachable("not here".into())) }),
            };
            let from = crate::crdt::ReplicaId {
                node: 2,
                incarnation: 1,
            };
            Box::pin(async move {
                Ok(ResponseEnvelope {
                    v: PROTOCOL_VERSION,
                    from,
                    membership: None,
                    resp,
                })
            })
        }
    }

    /// Under a steady write load, one push carries several commits: 100
    /// increments 1 ms apart (the timer's resolution) reach the peer in
    /// about one push per push interval, not one per increment, and every
    /// name arrives.
    #[tokio::test(start_paused = true)]
    async fn pushes_under_steady_writes_carry_many_commits() {
        let peer = Arc::new(Recorder::default());
        let settings = Settings::new(1, "127.0.0.1:7777".parse().unwrap(), "unused".into());
        let deps = Deps::new(peer.clone()).with_engine(Arc::new(MemoryEngine::new()));
        let node = Node::start(settings, deps).unwrap();
        let actors = vec![
            Actor::parse("127.0.0.1:7777").unwrap(),
            Actor::parse("10.9.9.2:7777").unwrap(),
        ];
        node.store
            .update_membership(move |m| m.post(actors, 1))
            .await
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while node.me().is_none() {
            assert!(Instant::now() < deadline, "the node never found itself");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let started = Instant::now();
        for i in 0..100 {
            node.increment(vec![(format!("n{i}"), 1)], None, None)
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let writing = started.elapsed();
        let pushed = |peer: &Recorder| {
            let pushes = peer.pushes.lock().unwrap();
            let names: std::collections::BTreeSet<String> =
                pushes.iter().flatten().cloned().collect();
            (pushes.len(), names.len())
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while pushed(&peer).1 < 100 {
            assert!(Instant::now() < deadline, "pushed {:?}", pushed(&peer));
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let (pushes, names) = pushed(&peer);
        assert_eq!(names, 100);
        // One push per 5 ms interval of writing, the first at once, and the
        // last after the writes.
        let most = writing.as_millis() as usize / 5 + 2;
        assert!(most < 50, "{writing:?} of writing is not a steady load");
        assert!(
            pushes <= most,
            "{pushes} pushes for 100 increments in {writing:?}"
        );
        node.shutdown().await;
    }
}
