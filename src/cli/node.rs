//! The node's flags (`tally <ID>`), what they become (the node's settings
//! and the server's limits), and the node's start: its secret, its data
//! folder, its stop signal.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::Args;
use tracing::{error, info, warn};

use crate::daemon::{defaults, run};
use crate::input::Dur;
use crate::node::{OnDamage, Settings};
use crate::server::Limits;
use crate::tls::PlainHttp;

// Doc comments here are --help text, not rustdoc: brackets and <ID> are literal.
#[allow(rustdoc::broken_intra_doc_links, rustdoc::invalid_html_tags)]
#[derive(Args, Debug)]
pub struct NodeArgs {
    /// This node's id: a positive integer, unique in the cluster and stable across restarts.
    #[arg(value_parser = clap::value_parser!(u64).range(1..), required = true)]
    pub id: Option<u64>,

    /// Address and port to listen on.
    #[arg(long, env = "TALLY_LISTEN", default_value = defaults::LISTEN)]
    pub listen: SocketAddr,

    /// Data folder of this node [default: ./tally-data/node-<ID>, under the
    /// working folder; if it cannot be created or written the node refuses
    /// to start rather than use another folder].
    #[arg(long, env = "TALLY_DATA_DIR")]
    pub data_dir: Option<PathBuf>,

    /// Default deadline of a consistent read (e.g. 10s, 500ms).
    #[arg(long, env = "TALLY_CONSISTENT_TIMEOUT", default_value_t = Dur(defaults::CONSISTENT_TIMEOUT))]
    pub consistent_timeout: Dur,

    /// Largest deadline a request may ask for with ?timeout=.
    #[arg(long, env = "TALLY_MAX_CONSISTENT_TIMEOUT", default_value_t = Dur(defaults::MAX_CONSISTENT_TIMEOUT))]
    pub max_consistent_timeout: Dur,

    /// Deadline of one call to a peer.
    #[arg(long, env = "TALLY_PEER_TIMEOUT", default_value_t = Dur(defaults::PEER_TIMEOUT))]
    pub peer_timeout: Dur,

    /// Deadline for opening a connection to a peer.
    #[arg(long, env = "TALLY_CONNECT_TIMEOUT", default_value_t = Dur(defaults::CONNECT_TIMEOUT))]
    pub connect_timeout: Dur,

    /// Pause between anti-entropy rounds with each peer.
    #[arg(long, env = "TALLY_SYNC_INTERVAL", default_value_t = Dur(defaults::SYNC_INTERVAL))]
    pub sync_interval: Dur,

    /// Bound on the whole shutdown sequence after SIGTERM or SIGINT.
    #[arg(long, env = "TALLY_SHUTDOWN_TIMEOUT", default_value_t = Dur(defaults::SHUTDOWN_TIMEOUT))]
    pub shutdown_timeout: Dur,

    /// Cluster secret required on /config and internal routes, and sent to peers.
    #[arg(long, env = "TALLY_SECRET", hide_env_values = true)]
    pub secret: Option<String>,

    /// File whose first line is the cluster secret (instead of --secret).
    #[arg(long, env = "TALLY_SECRET_FILE", conflicts_with = "secret")]
    pub secret_file: Option<PathBuf>,

    /// Client tokens file: each line `NAME SHA256 SCOPES [EXPIRES]` (see
    /// `tally token`). With it, every request but the probes and the console
    /// page needs `Authorization: Bearer TOKEN` with the route's scope (read,
    /// write or admin). Needs TLS or a cluster secret too. Reloaded on SIGHUP.
    #[arg(long, env = "TALLY_TOKENS_FILE", value_name = "FILE")]
    pub tokens_file: Option<PathBuf>,

    /// This node's certificate chain (PEM). With --tls-key and --tls-ca, the
    /// node speaks only TLS, to clients and to peers; peers prove their node
    /// id with certificates of the CA (mutual TLS). Reloaded when the file
    /// changes or on SIGHUP. `tally cert` makes a test CA and certificates.
    #[arg(long, env = "TALLY_TLS_CERT", value_name = "FILE", requires_all = ["tls_key", "tls_ca"])]
    pub tls_cert: Option<PathBuf>,

    /// This node's private key (PEM) for --tls-cert.
    #[arg(long, env = "TALLY_TLS_KEY", value_name = "FILE", requires_all = ["tls_cert", "tls_ca"])]
    pub tls_key: Option<PathBuf>,

    /// The CA certificates (PEM bundle) that issue the cluster's node
    /// certificates; during a CA rotation, the old and the new CA together.
    #[arg(long, env = "TALLY_TLS_CA", value_name = "FILE", requires_all = ["tls_cert", "tls_key"])]
    pub tls_ca: Option<PathBuf>,

    /// With TLS, also accept plain HTTP, to turn TLS on (or off) in a running
    /// cluster one node at a time: `call` also calls peers over plain HTTP
    /// (while some have no TLS yet), `accept` calls them over TLS; `off`
    /// (the default): TLS only. See the README's security section.
    #[arg(long, env = "TALLY_PLAIN_HTTP", value_enum,
          default_value_t = PlainHttpArg::from(defaults::PLAIN_HTTP), requires = "tls_cert")]
    pub plain_http: PlainHttpArg,

    /// Longest any request waits for storage; a commit running longer counts
    /// as a stalled disk (increments then answer 503 with Retry-After).
    #[arg(long, env = "TALLY_STORAGE_TIMEOUT", default_value_t = Dur(defaults::STORAGE_TIMEOUT))]
    pub storage_timeout: Dur,

    /// Other actors that must store an increment before it is acknowledged
    /// (0: acknowledged once durable on this node). With 1 or more, a node
    /// whose data folder is lost loses no acknowledged increment; a request
    /// can ask for more with ?replicas=K.
    #[arg(long, env = "TALLY_MIN_REPLICAS", default_value_t = defaults::MIN_REPLICAS as u64,
          value_parser = clap::value_parser!(u64).range(0..=255))]
    pub min_replicas: u64,

    /// How long an increment waits for its replicas before answering 503
    /// (it stays applied on this node and replicates later).
    #[arg(long, env = "TALLY_REPLICA_TIMEOUT", default_value_t = Dur(defaults::REPLICA_TIMEOUT))]
    pub replica_timeout: Dur,

    /// Most client connections open at once; more are refused with 503. A
    /// connection whose first request is under /_internal/ (another node's)
    /// counts against --max-peer-connections instead, so clients cannot
    /// crowd out replication.
    #[arg(long, env = "TALLY_MAX_CONNECTIONS", default_value_t = defaults::MAX_CONNECTIONS)]
    pub max_connections: usize,

    /// Most connections from other nodes open at once; more are refused with
    /// 503. Each peer may hold up to 64 calls in flight, one connection each:
    /// the default lets 16 peers all do so.
    #[arg(long, env = "TALLY_MAX_PEER_CONNECTIONS", default_value_t = defaults::MAX_PEER_CONNECTIONS)]
    pub max_peer_connections: usize,

    /// Deadline for a client to send a whole request head (the first one
    /// counted from accept); also closes idle connections.
    #[arg(long, env = "TALLY_HEADER_TIMEOUT", default_value_t = Dur(defaults::HEADER_TIMEOUT))]
    pub header_timeout: Dur,

    /// Deadline for each write of an answer to make progress: a client that
    /// stops reading its answers is closed after it.
    #[arg(long, env = "TALLY_WRITE_TIMEOUT", default_value_t = Dur(defaults::WRITE_TIMEOUT))]
    pub write_timeout: Dur,

    /// How long an Idempotency-Key is remembered (e.g. 24h, 90m).
    #[arg(long, env = "TALLY_IDEMPOTENCY_WINDOW", default_value_t = Dur(defaults::IDEMPOTENCY_WINDOW))]
    pub idempotency_window: Dur,

    /// Most Idempotency-Keys remembered; the oldest are forgotten first.
    #[arg(long, env = "TALLY_IDEMPOTENCY_KEYS", default_value_t = defaults::IDEMPOTENCY_KEYS)]
    pub idempotency_keys: usize,

    /// Most memory the remembered Idempotency-Keys take, in bytes (a batch's
    /// key remembers a value per item); the oldest are forgotten first.
    #[arg(long, env = "TALLY_IDEMPOTENCY_MEMORY", value_name = "BYTES",
          default_value_t = defaults::IDEMPOTENCY_BYTES)]
    pub idempotency_memory: usize,

    /// What to do when starting finds damage that loses data (log records
    /// that do not read back as written, or a B-tree that fails its check):
    /// salvage (keep every record that does, count on under a new
    /// incarnation so that nothing peers saw is counted again, and pull
    /// back from peers what they hold), or refuse (stop with the damage
    /// named, the damaged files left as they are; see `tally check`).
    /// A record a crash cut short is never damage.
    #[arg(long, env = "TALLY_ON_DAMAGE", value_enum,
          default_value_t = DamagePolicy::from(defaults::ON_DAMAGE))]
    pub on_damage: DamagePolicy,

    /// Pause between scrub passes, which read the data folder's files back
    /// while the node runs and repair damage from memory (0: no scrub).
    #[arg(long, env = "TALLY_SCRUB_INTERVAL", default_value_t = Dur(defaults::SCRUB_INTERVAL))]
    pub scrub_interval: Dur,

    /// Most bytes a second a scrub pass reads.
    #[arg(long, env = "TALLY_SCRUB_RATE", default_value_t = defaults::SCRUB_RATE,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub scrub_rate: u64,

    /// Log filter, e.g. info, debug, tally=debug,warn (an invalid filter is an error).
    #[arg(long, env = "TALLY_LOG", default_value = "info")]
    pub log: String,

    /// Log line format: text (for people) or json (one object per line, for log shippers).
    #[arg(long, env = "TALLY_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// What a node does with damaged storage (see --on-damage).
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum DamagePolicy {
    Salvage,
    Refuse,
}

impl From<OnDamage> for DamagePolicy {
    fn from(policy: OnDamage) -> Self {
        match policy {
            OnDamage::Salvage => DamagePolicy::Salvage,
            OnDamage::Refuse => DamagePolicy::Refuse,
        }
    }
}

impl From<DamagePolicy> for OnDamage {
    fn from(policy: DamagePolicy) -> Self {
        match policy {
            DamagePolicy::Salvage => OnDamage::Salvage,
            DamagePolicy::Refuse => OnDamage::Refuse,
        }
    }
}

/// How log lines are written (to stderr).
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

pub(super) async fn run_node(args: NodeArgs) -> Result<(), String> {
    let id = args.id.ok_or("a node id is required")?;
    let data_dir = match args.data_dir.clone() {
        Some(d) => d,
        None => default_data_dir(id)?,
    };
    let secret = match (&args.secret, &args.secret_file) {
        (Some(s), _) => Some(s.trim().to_string()),
        (None, Some(path)) => Some(
            std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read secret file {}: {e}", path.display()))?
                .lines()
                .next()
                .unwrap_or("")
                .trim()
                .to_string(),
        ),
        (None, None) => None,
    };
    if let Some(secret) = &secret {
        check_secret(secret)?;
    }
    if args.secret.is_some()
        && std::env::args().any(|a| a == "--secret" || a.starts_with("--secret="))
    {
        warn!(
            "the cluster secret was given on the command line, where every process on this \
             host can read it; use --secret-file or TALLY_SECRET"
        );
    }
    let (settings, limits) = args.into_settings(id, data_dir, secret);
    run(settings, limits, stop_signal())
        .await
        .map_err(|e| e.to_string())
}

/// `--plain-http`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum PlainHttpArg {
    Off,
    Accept,
    Call,
}

impl From<PlainHttp> for PlainHttpArg {
    fn from(plain: PlainHttp) -> Self {
        match plain {
            PlainHttp::Off => PlainHttpArg::Off,
            PlainHttp::Accept => PlainHttpArg::Accept,
            PlainHttp::Call => PlainHttpArg::Call,
        }
    }
}

impl From<PlainHttpArg> for PlainHttp {
    fn from(plain: PlainHttpArg) -> Self {
        match plain {
            PlainHttpArg::Off => PlainHttp::Off,
            PlainHttpArg::Accept => PlainHttp::Accept,
            PlainHttpArg::Call => PlainHttp::Call,
        }
    }
}

/// Refuses a secret that cannot travel in an HTTP header as it is: empty,
/// or with characters other than visible ASCII.
pub(super) fn check_secret(secret: &str) -> Result<(), String> {
    if secret.is_empty() {
        return Err("the cluster secret is empty".into());
    }
    if let Some(c) = secret.chars().find(|c| !c.is_ascii_graphic()) {
        return Err(format!(
            "the cluster secret holds {c:?}: it travels in a header, so it may hold only visible \
             ASCII characters (no spaces or control characters)"
        ));
    }
    if secret.len() < 16 {
        warn!(
            length = secret.len(),
            "the cluster secret is short; use at least 16 random characters"
        );
    }
    Ok(())
}

impl NodeArgs {
    /// The node's settings and the server's limits these flags ask for.
    pub(super) fn into_settings(
        self,
        id: u64,
        data_dir: PathBuf,
        secret: Option<String>,
    ) -> (Settings, Limits) {
        let mut settings = Settings::new(id, self.listen, data_dir);
        settings.consistent_timeout = self.consistent_timeout.0;
        settings.max_consistent_timeout =
            self.max_consistent_timeout.0.max(self.consistent_timeout.0);
        settings.peer_timeout = self.peer_timeout.0;
        settings.connect_timeout = self.connect_timeout.0;
        settings.sync_interval = self.sync_interval.0;
        settings.shutdown_timeout = self.shutdown_timeout.0;
        settings.secret = secret.map(Arc::from);
        settings.tokens_file = self.tokens_file;
        settings.plain_http = self.plain_http.into();
        if let (Some(cert), Some(key), Some(ca)) = (self.tls_cert, self.tls_key, self.tls_ca) {
            settings.tls = Some(crate::tls::TlsFiles { cert, key, ca });
        }
        settings.store.idempotency_window = self.idempotency_window.0;
        settings.store.idempotency_capacity = self.idempotency_keys.max(1);
        settings.store.idempotency_bytes = self.idempotency_memory;
        settings.store.timeout = self.storage_timeout.0;
        settings.min_replicas = usize::try_from(self.min_replicas).unwrap_or(usize::MAX);
        settings.replica_timeout = self.replica_timeout.0;
        settings.on_damage = self.on_damage.into();
        settings.scrub_interval = Some(self.scrub_interval.0).filter(|d| !d.is_zero());
        settings.scrub_rate = self.scrub_rate;
        let max_connections = self.max_connections.max(1);
        let max_peer_connections = self.max_peer_connections.max(1);
        let limits = Limits {
            max_connections,
            max_peer_connections,
            max_pending_connections: Limits::pending_for(max_connections, max_peer_connections),
            header_read_timeout: self.header_timeout.0,
            write_timeout: self.write_timeout.0,
            ..Limits::default()
        };
        (settings, limits)
    }
}

/// Resolves when SIGTERM or SIGINT arrives. The handlers are installed at
/// once, not when the future is first polled: a node that told systemd it
/// is ready must already shut down cleanly on SIGTERM.
pub(super) fn stop_signal() -> impl std::future::Future<Output = ()> + Send + 'static {
    use tokio::signal::unix::{SignalKind, signal};
    let handlers = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    );
    async move {
        let (Ok(mut term), Ok(mut int)) = handlers else {
            error!("cannot install signal handlers; stop the node with SIGKILL");
            return std::future::pending().await;
        };
        let which = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        info!(signal = which, "stop requested");
    }
}

/// The default data folder: `tally-data/node-<ID>` under the working folder,
/// and nothing else. A node that silently moved to another folder would start
/// empty, without its config and without what it had not yet replicated, so
/// a default folder that cannot be created or written is an error.
fn default_data_dir(id: u64) -> Result<PathBuf, String> {
    let dir = PathBuf::from(DEFAULT_DATA_ROOT).join(format!("node-{id}"));
    usable(&dir).map_err(|e| {
        let shown = match std::env::current_dir() {
            Ok(cwd) => format!("{} (in {})", dir.display(), cwd.display()),
            Err(_) => dir.display().to_string(),
        };
        format!(
            "cannot use the default data folder {shown}: {e}; the node never falls back \
             to another folder: make this one usable, or choose one with --data-dir or \
             TALLY_DATA_DIR"
        )
    })?;
    Ok(dir)
}

/// Folder under the working folder that holds each node's default data folder.
const DEFAULT_DATA_ROOT: &str = "tally-data";

/// Creates `dir` if needed and checks a file can be written in it.
fn usable(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let probe = dir.join(".write-probe");
    std::fs::write(&probe, b"")?;
    std::fs::remove_file(&probe)
}
