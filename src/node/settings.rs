//! What a node is started with: [`Settings`], plain data that the binary
//! fills from flags and environment (and that a test compares and prints),
//! and [`Deps`], the live objects it is handed beside them: the metrics
//! registry, the clock, the transport and the storage engine. (Who may
//! call the node, its tokens and audit log, is the API's business: see
//! `api::Access`.)
//!
//! Every default is a constant of [`defaults`] (or of the layer that uses
//! it, such as the store's), read by [`Settings::new`] and by the flags, so
//! a flag's default and the code's cannot drift apart.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub use tally_client::types::Budgets;

use crate::metrics::Metrics;
use crate::storage::Engine;
use crate::tls::{PlainHttp, TlsFiles};
use crate::transport::Transport;

/// Tuning of the store: idempotency window and bounds, storage deadline.
pub use crate::storage::StoreOptions;
/// Milliseconds since the Unix epoch, as the idempotency windows count them.
pub use crate::storage::WallClock;
/// What to do when opening the data folder finds records it cannot read back.
pub use crate::storage::logged::OnDamage;

/// Everything a node is configured with; filled from flags and environment
/// by the binary. Plain data: the live objects are in [`Deps`].
#[derive(Clone, Debug, PartialEq)]
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
    /// Other actors that must store an increment before it is acknowledged
    /// (0: acknowledged once durable here).
    pub min_replicas: usize,
    /// How long an increment waits for its replicas before answering 503.
    pub replica_timeout: Duration,
    pub secret: Option<Arc<str>>,
    /// Peers prove who they are with certificates of the cluster's CA: the
    /// internal route answers only them, each for its own node id. (A peer
    /// that presents a certificate speaks for its node id alone in any
    /// case; without this, a caller without one is checked for the secret.)
    pub peer_tls: bool,
    /// Plain HTTP beside TLS, while TLS is turned on (or off) node by node.
    pub plain_http: PlainHttp,
    /// Certificate, key and CA bundle of the listener and of calls to peers.
    pub tls: Option<TlsFiles>,
    /// The tokens file, when clients must present a token (`--tokens-file`);
    /// the daemon loads it and hands the tokens to the API.
    pub tokens_file: Option<PathBuf>,
    pub store: StoreOptions,
    /// What to do when opening the data folder finds records it cannot read back.
    pub on_damage: OnDamage,
    /// Pause between scrub passes over the data folder's files (`None`: no scrub).
    pub scrub_interval: Option<Duration>,
    /// Bytes a second a scrub pass reads, at most.
    pub scrub_rate: u64,
    /// The server's connection budgets, as `/status` reports them.
    pub budgets: Budgets,
}

/// Every default of a node, once: [`Settings::new`] and the flags read them.
/// (The store's are `storage::DEFAULT_*`, read through [`StoreOptions::default`].)
pub mod defaults {
    use std::time::Duration;

    use super::{OnDamage, PlainHttp};

    pub const LISTEN: &str = "0.0.0.0:7777";
    pub const CONSISTENT_TIMEOUT: Duration = Duration::from_secs(10);
    pub const MAX_CONSISTENT_TIMEOUT: Duration = Duration::from_secs(60);
    pub const PEER_TIMEOUT: Duration = Duration::from_secs(1);
    pub const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
    pub const SYNC_INTERVAL: Duration = Duration::from_millis(500);
    pub const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);
    pub const MIN_REPLICAS: usize = 0;
    pub const REPLICA_TIMEOUT: Duration = Duration::from_secs(5);
    /// TLS only, once a node has TLS.
    pub const PLAIN_HTTP: PlainHttp = PlainHttp::Off;
    /// Keep what reads back and count on under a new incarnation.
    pub const ON_DAMAGE: OnDamage = OnDamage::Salvage;
    /// A pass every hour: damage is found within the hour, while memory
    /// still holds what repairs it.
    pub const SCRUB_INTERVAL: Duration = Duration::from_secs(3600);
    /// 8 MiB/s: a pass over a 1M-name folder (about 200 MiB) reads for
    /// about 25 s, a small share of one disk.
    pub const SCRUB_RATE: u64 = 8 << 20;
}

impl Settings {
    pub fn new(id: u64, listen: SocketAddr, data_dir: PathBuf) -> Self {
        Settings {
            id,
            listen,
            data_dir,
            consistent_timeout: defaults::CONSISTENT_TIMEOUT,
            max_consistent_timeout: defaults::MAX_CONSISTENT_TIMEOUT,
            peer_timeout: defaults::PEER_TIMEOUT,
            connect_timeout: defaults::CONNECT_TIMEOUT,
            sync_interval: defaults::SYNC_INTERVAL,
            shutdown_timeout: defaults::SHUTDOWN_TIMEOUT,
            min_replicas: defaults::MIN_REPLICAS,
            replica_timeout: defaults::REPLICA_TIMEOUT,
            secret: None,
            peer_tls: false,
            plain_http: defaults::PLAIN_HTTP,
            tls: None,
            tokens_file: None,
            store: StoreOptions::default(),
            on_damage: defaults::ON_DAMAGE,
            scrub_interval: Some(defaults::SCRUB_INTERVAL),
            scrub_rate: defaults::SCRUB_RATE,
            budgets: Budgets::default(),
        }
    }
}

/// The live objects a node runs with, handed to [`super::Node::start`]
/// beside its [`Settings`].
#[derive(Clone)]
pub struct Deps {
    /// Shared by every layer of this node.
    pub metrics: Metrics,
    /// Wall-clock time of the idempotency windows (which must survive a
    /// restart, so not tokio's clock).
    pub clock: WallClock,
    /// How this node calls its peers.
    pub transport: Arc<dyn Transport>,
    /// The storage engine; `None`: the log engine in `settings.data_dir`,
    /// opened with `settings.on_damage`.
    pub engine: Option<Arc<dyn Engine>>,
}

impl Deps {
    /// Calls over `transport`, with a fresh metrics registry, the system
    /// clock and the log engine in the data folder.
    pub fn new(transport: Arc<dyn Transport>) -> Self {
        Deps {
            metrics: Metrics::default(),
            clock: WallClock::default(),
            transport,
            engine: None,
        }
    }

    /// The same over `engine` instead of the log engine.
    pub fn with_engine(self, engine: Arc<dyn Engine>) -> Self {
        Deps {
            engine: Some(engine),
            ..self
        }
    }
}
