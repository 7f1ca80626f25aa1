//! Command line: `tally <ID>` runs a node; `tally demo` runs a local cluster;
//! `tally inc | get | status | config | ls` are the client (see [`crate::client`]).
//!
//! Every node setting is a flag with a `TALLY_*` environment variable and a
//! default in code; `tally --help` lists them all.

mod cert;
mod check;
mod demo;
mod token;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use tracing::{error, info, warn};

use crate::tls::{ClientTls, PlainHttp};

use crate::client::{self, Action, Conn};
use crate::daemon::{defaults, run};
use crate::input::Dur;
use crate::node::{OnDamage, Settings};
use crate::server::Limits;
use demo::demo;

// Doc comments here are --help text, not rustdoc: brackets and <ID> are literal.
#[allow(rustdoc::broken_intra_doc_links, rustdoc::invalid_html_tags)]
#[derive(Parser, Debug)]
#[command(
    name = "tally",
    version,
    about = "A highly available, partition-tolerant database of named grow-only counters",
    long_about = "A highly available, partition-tolerant database of named grow-only counters.\n\n\
        `tally <ID>` runs node <ID> (a positive integer, unique and stable per node).\n\
        Post the cluster's addresses to any node with\n  \
        tally config 10.0.0.1 10.0.0.2 10.0.0.3 --node 10.0.0.1\n\
        `tally demo` starts a three-node cluster on loopback.\n\n\
        The client commands (inc, get, ls, status, health, config) talk to the node\n\
        given by --node, TALLY_NODES or TALLY_NODE (default http://127.0.0.1:7777;\n\
        with several, a command asks the next when one cannot be reached, except\n\
        inc) and send --secret or TALLY_SECRET as the x-tally-secret header;\n\
        `tally <COMMAND> --help` lists their flags. Client exit codes: 0 success,\n\
        1 the node answered an error, 2 the node could not be reached (or bad\n\
        usage), 3 a consistent read could not hear from every node (or, for\n\
        status --cluster, some node could not be asked); health exits 0 or 1 only.\n\n\
        Durations are written 500ms, 2s, 1m30s, 24h or as decimal seconds.",
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Commands>,
    #[command(flatten)]
    pub node: NodeArgs,
}

// Doc comments here are --help text, not rustdoc: brackets and <ID> are literal.
#[allow(rustdoc::broken_intra_doc_links, rustdoc::invalid_html_tags)]
#[derive(Subcommand, Debug)]
pub enum Commands {
    /// Start a local cluster on 127.0.0.1, post its config, and drive it
    /// from stdin: pause, resume, kill, restart, isolate and heal nodes, inc
    /// and get counters, while a line per node shows values and lag.
    ///
    /// Each node's actor address is a TCP proxy inside the demo (ports
    /// BASE_PORT..), in front of the node's own port (BASE_PORT+10..), so
    /// `isolate N` can cut node N off both ways without root. Type `help` in
    /// the demo for its commands; `quit`, Ctrl-C or the end of stdin stops
    /// every node (SIGTERM, then SIGKILL after a deadline).
    Demo {
        /// How many nodes.
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=9))]
        nodes: u64,
        /// Actor (proxy) port of node 1: node N's actor is BASE_PORT + N - 1,
        /// and the node itself listens 10 ports higher.
        #[arg(long, default_value_t = 7701)]
        base_port: u16,
        /// Keep the nodes' data (and logs) in DIR across runs; a run with the
        /// same --nodes and --base-port resumes from it [default: a fresh
        /// folder under the system's temporary folder, removed when the demo ends].
        #[arg(long, value_name = "DIR", alias = "dir")]
        data_dir: Option<PathBuf>,
        /// Send a steady trickle of increments (about 5 a second per node, on
        /// load-a, load-b, load-c), counting what each node acknowledged.
        #[arg(long)]
        with_load: bool,
        /// Run every node with TLS (mutual TLS between nodes): a CA and a
        /// certificate per node, for 127.0.0.1 and localhost, made in tls/ of
        /// the data folder (reused when --data-dir keeps them); the demo speaks
        /// HTTPS to the nodes and prints the curl and tally commands with --cacert.
        #[arg(long)]
        tls: bool,
    },
    /// Add N to a counter (POST /counter/NAME); prints the node's new local value.
    Inc {
        /// Counter name: 1 to 1024 bytes; any characters (percent-encoded on the wire).
        #[arg(value_parser = client::parse_name)]
        name: String,
        /// Amount to add: a non-negative integer that fits 64 bits.
        #[arg(default_value_t = 1)]
        n: u64,
        /// Sent as the Idempotency-Key header: a retry with the same key on the
        /// same node is applied once (1 to 128 visible ASCII characters).
        #[arg(long, value_name = "KEY", value_parser = client::parse_idempotency_key)]
        idempotency_key: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Read a counter: this node's local value, or with --consistent the cluster-wide value.
    Get {
        /// Counter name: 1 to 1024 bytes; any characters (percent-encoded on the wire).
        #[arg(value_parser = client::parse_name)]
        name: String,
        /// Read the cluster-wide value from every node (GET /counter/NAME/consistent_value).
        /// With --timeout the node gets slightly less than it to answer; without, the
        /// node's --consistent-timeout applies. When some node cannot be heard from,
        /// prints the unreachable nodes and the best known value on stderr and exits 3.
        #[arg(long)]
        consistent: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Show a node's status (GET /status), or with --cluster every node's.
    ///
    /// Prints its id, incarnation, listen address, config version and actors, each
    /// peer's reachability, last contact, lag and pending pushes, the number of
    /// names, and its data folder and size.
    ///
    /// With --cluster, reads the config from the node, asks every actor of it
    /// (leaving ones too) for its own status, and prints one row per node: id,
    /// address, reachable, config version, lag to each peer, names, data size,
    /// storage health and uptime. Exits 3 when some node could not be asked.
    Status {
        /// One row per node of the config, each asked directly.
        #[arg(long)]
        cluster: bool,
        /// Output format: table (for people) or json (same as --json).
        #[arg(short = 'o', long = "output", value_enum, default_value_t = Output::Table)]
        output: Output,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Check a node's health for scripts and container HEALTHCHECKs: exits 0
    /// when it is ready (GET /readyz: it has a config, knows which actor it
    /// is, its storage works and it is not shutting down), 1 otherwise
    /// (unreachable included), and says why.
    Health {
        /// Only check that the node serves (GET /livez).
        #[arg(long)]
        live: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Print a shell completion script: `tally completion bash > /etc/bash_completion.d/tally`.
    Completion {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff): `tally man > tally.1; man ./tally.1`.
    Man,
    /// Make a CA and node certificates for TLS, for a test or small cluster.
    ///
    /// `tally cert ca --out certs` makes the CA; `tally cert node --ca certs
    /// --id 1 --host 10.0.0.1 --out certs` has it sign node 1's certificate
    /// and prints the node flags that use it (--tls-cert, --tls-key,
    /// --tls-ca). Keys are ECDSA P-256, written readable by their owner only;
    /// no file is replaced without --force. An operator with a PKI of their
    /// own issues node certificates from it instead: `tally cert node --help`
    /// says what one must hold.
    Cert {
        #[command(subcommand)]
        command: cert::CertCommand,
    },
    /// Verify a stopped node's data folder, changing nothing: the B-tree
    /// (redb's integrity check, run on a copy) and every record of the
    /// write-ahead log. Prints what it found: damage with its file and
    /// offset, records that could not be read back, a record a crash cut
    /// short (normal after a crash), and earlier salvages. Exits 0 when
    /// clean, 1 when damage was found, 2 when the folder cannot be checked
    /// (missing, or in use by a running node).
    Check {
        /// The data folder, e.g. tally-data/node-1.
        #[arg(value_name = "DATA_DIR")]
        dir: PathBuf,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Make client tokens, or hash one made elsewhere, for the tokens file.
    ///
    /// `tally token new --name NAME --scope read,write [--expires 30d]` prints
    /// a new random token on the first line and, on the second, the line for
    /// the tokens file, which holds only the token's SHA-256 (so that
    /// `... | tail -1 >> tokens` adds it). `tally token hash` reads a token on
    /// stdin and prints its SHA-256. Clients send a token as Authorization:
    /// Bearer <TOKEN>.
    Token {
        #[command(subcommand)]
        command: token::TokenCommand,
    },
    /// Post the cluster's actors to a node (POST /config).
    ///
    /// The node passes them on to the others. Waits (up to --timeout) until every
    /// node holds the config and every node that left has handed off what it held,
    /// then prints whether anything changed, the config version, the actors, which
    /// actor the node is, which nodes hold it and each leaver's hand-off. Exits 3
    /// when something is still pending at the deadline (the config is applied and
    /// keeps spreading by itself).
    Config {
        /// Every node's address: an IP address (port 7777 implied), HOST:PORT or [V6]:PORT.
        #[arg(required = true, value_name = "ADDR")]
        actors: Vec<String>,
        /// Stop waiting for the hand-off of a node that left and is gone for
        /// good (or never existed): what only it held is lost to consistent
        /// reads. Repeat for several.
        #[arg(long, value_name = "ADDR")]
        forget: Vec<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List counters with this node's local values, one page at a time (GET /counters).
    Ls {
        /// Only names starting with PREFIX.
        prefix: Option<String>,
        /// Most counters to list [default: the node's page size].
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
        limit: Option<u64>,
        /// Start after this name (the `next` of the previous page).
        #[arg(long, value_name = "NAME")]
        after: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
}

/// How `tally status` prints.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    Table,
    Json,
}

/// Flags shared by every client command.
// Doc comments here are --help text, not rustdoc: brackets and <ID> are literal.
#[allow(rustdoc::broken_intra_doc_links, rustdoc::invalid_html_tags)]
#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Client options")]
pub struct ClientArgs {
    /// Node to talk to: http://HOST:PORT, HOST:PORT, [V6]:PORT or HOST (port 7777
    /// implied). Repeat it (or separate with commas) to name several: a command
    /// that cannot reach one asks the next, except `inc`, which only goes to the
    /// first (Idempotency-Keys are remembered per node, so an increment is never
    /// silently retried elsewhere). TALLY_NODE (one node) is read too
    /// [default: http://127.0.0.1:7777].
    #[arg(long = "node", value_name = "URL", env = "TALLY_NODES", value_delimiter = ',',
          value_parser = client::parse_node)]
    pub nodes: Vec<String>,

    /// Print JSON for scripts: the node's JSON answer (also for errors), or
    /// {"name": ..., "value": ...} for counter values.
    #[arg(long)]
    pub json: bool,

    /// Cluster secret, sent as the x-tally-secret header; `config` needs it when the cluster has one.
    #[arg(long, env = "TALLY_SECRET", hide_env_values = true)]
    pub secret: Option<String>,

    /// Client token, sent as `Authorization: Bearer`; needed when the node
    /// has a tokens file (read, write or admin scope, by command).
    #[arg(long, env = "TALLY_TOKEN", hide_env_values = true)]
    pub token: Option<String>,

    /// CA bundle (PEM) to trust for https:// nodes.
    #[arg(long, env = "TALLY_CACERT", value_name = "FILE")]
    pub cacert: Option<PathBuf>,

    /// Deadline of the whole request, e.g. 15s, 500ms [default: 15s].
    #[arg(long, value_name = "DURATION", value_parser = duration)]
    pub timeout: Option<Duration>,
}

impl ClientArgs {
    fn conn(self) -> Result<Conn, String> {
        let mut nodes = self.nodes;
        if nodes.is_empty() {
            let one = std::env::var("TALLY_NODE")
                .ok()
                .filter(|v| !v.trim().is_empty())
                .unwrap_or_else(|| client::DEFAULT_NODE.to_string());
            nodes.push(client::parse_node(&one).map_err(|e| format!("TALLY_NODE: {e}"))?);
        }
        let tls = match &self.cacert {
            Some(ca) => ClientTls::Fixed(crate::tls::client_config(ca).map_err(|e| e.to_string())?),
            None => ClientTls::None,
        };
        Ok(Conn {
            nodes,
            json: self.json,
            secret: self.secret,
            token: self.token,
            tls,
            timeout: self.timeout,
        })
    }
}

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

fn duration(raw: &str) -> Result<Duration, String> {
    crate::input::parse_duration(raw).map_err(|e| e.to_string())
}

pub fn main(cli: Cli) -> ExitCode {
    let (action, args) = match cli.command {
        None | Some(Commands::Demo { .. }) => return serve(cli),
        Some(Commands::Inc {
            name,
            n,
            idempotency_key,
            client,
        }) => (
            Action::Inc {
                name,
                amount: n,
                idempotency_key,
            },
            client,
        ),
        Some(Commands::Get {
            name,
            consistent,
            client,
        }) => (Action::Get { name, consistent }, client),
        Some(Commands::Status {
            cluster,
            output,
            mut client,
        }) => {
            client.json |= output == Output::Json;
            (Action::Status { cluster }, client)
        }
        Some(Commands::Health { live, client }) => (Action::Health { live }, client),
        Some(Commands::Completion { shell }) => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut cmd, "tally", &mut std::io::stdout());
            return ExitCode::SUCCESS;
        }
        Some(Commands::Man) => return man(),
        Some(Commands::Cert { command }) => return cert::run(command),
        Some(Commands::Check { dir, json }) => return check::run(&dir, json),
        Some(Commands::Token { command }) => return token::run(command),
        Some(Commands::Config {
            actors,
            forget,
            client,
        }) => (Action::Config { actors, forget }, client),
        Some(Commands::Ls {
            prefix,
            limit,
            after,
            client,
        }) => (
            Action::Ls {
                prefix,
                limit,
                after,
            },
            client,
        ),
    };
    // Client commands keep stdout for their answer; logs go to stderr, warnings only.
    let _ = init_logging("warn", LogFormat::Text);
    match args.conn() {
        Ok(conn) => client::run(action, conn),
        Err(e) => {
            say(&e);
            ExitCode::from(client::EXIT_UNREACHABLE)
        }
    }
}

/// `tally man`: the manual page, from the same definitions as `--help`.
fn man() -> ExitCode {
    let page = clap_mangen::Man::new(<Cli as clap::CommandFactory>::command());
    let mut out = Vec::new();
    if let Err(e) = page.render(&mut out) {
        say(&format!("cannot render the manual page: {e}"));
        return ExitCode::FAILURE;
    }
    let _ = std::io::Write::write_all(&mut std::io::stdout().lock(), &out);
    ExitCode::SUCCESS
}

/// Runs a node or the demo cluster.
fn serve(cli: Cli) -> ExitCode {
    if let Err(e) = init_logging(&cli.node.log, cli.node.log_format) {
        say(&e);
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            error!(error = %e, "cannot start the runtime");
            return ExitCode::FAILURE;
        }
    };
    let result = match cli.command {
        Some(Commands::Demo {
            nodes,
            base_port,
            data_dir,
            with_load,
            tls,
        }) => runtime.block_on(demo(demo::Options {
            nodes,
            base_port,
            data_dir,
            with_load,
            tls,
        })),
        Some(_) => Err("not a node command".into()),
        None => runtime.block_on(run_node(cli.node)),
    };
    // A blocking thread stuck in a stalled disk call must not hold the exit.
    runtime.shutdown_timeout(Duration::from_secs(1));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            error!("{message}");
            say(&message);
            ExitCode::FAILURE
        }
    }
}

/// Prints `tally: MESSAGE` on stderr; a stderr that cannot be written
/// (a closed pipe) is not worth a panic.
pub(crate) fn say(message: &dyn std::fmt::Display) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr(), "tally: {message}");
}

/// Installs the log subscriber; an invalid filter is refused, not replaced.
fn init_logging(filter: &str, format: LogFormat) -> Result<(), String> {
    let filter = tracing_subscriber::EnvFilter::builder()
        .with_regex(false)
        .parse(filter)
        .map_err(|e| format!("invalid --log (TALLY_LOG) filter {filter:?}: {e}"))?;
    // A line that cannot be written (stderr a pipe whose reader went away)
    // is dropped. By default the subscriber would report it with
    // `eprintln!`, which panics on that same stderr, killing whichever task
    // logged: a handler, the writer, or the one that waits for SIGTERM.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .log_internal_errors(false);
    match format {
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        LogFormat::Json => builder.json().with_ansi(false).init(),
    }
    Ok(())
}

async fn run_node(args: NodeArgs) -> Result<(), String> {
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
fn check_secret(secret: &str) -> Result<(), String> {
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
    fn into_settings(
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
fn stop_signal() -> impl std::future::Future<Output = ()> + Send + 'static {
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

#[cfg(test)]
mod tests;
