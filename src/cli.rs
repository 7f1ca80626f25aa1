//! Command line: `tally <ID>` runs a node; `tally demo` runs a local cluster;
//! `tally inc | get | status | config | ls` are the client (see [`crate::client`]).
//!
//! Every node setting is a flag with a `TALLY_*` environment variable and a
//! default in code; `tally --help` lists them all.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use clap::{Args, Parser, Subcommand};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tracing::{error, info};

use crate::client::{self, Action, Conn};
use crate::daemon::run;
use crate::node::Settings;
use crate::server::{DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_PEER_CONNECTIONS, Limits};

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
        The client commands (inc, get, status, config, ls) talk to the node given by\n\
        --node or TALLY_NODE (default http://127.0.0.1:7777) and send --secret or\n\
        TALLY_SECRET as the x-tally-secret header; `tally <COMMAND> --help` lists\n\
        their flags. Client exit codes: 0 success, 1 the node answered an error,\n\
        2 the node could not be reached (or bad usage), 3 a consistent read could\n\
        not hear from every node.",
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
    /// Start a local cluster of nodes on 127.0.0.1, post its config, and
    /// keep it running until Ctrl-C.
    Demo {
        /// How many nodes.
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=9))]
        nodes: u64,
        /// Port of node 1; node N listens on BASE_PORT + N - 1.
        #[arg(long, default_value_t = 7701)]
        base_port: u16,
        /// Folder holding each node's data folder.
        #[arg(long, default_value = "tally-demo")]
        dir: PathBuf,
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
    /// Show a node's status (GET /status).
    ///
    /// Prints its id, incarnation, listen address, config version and actors, each
    /// peer's reachability, last contact, lag and pending pushes, the number of
    /// names, and its data folder and size.
    Status {
        #[command(flatten)]
        client: ClientArgs,
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

/// Flags shared by every client command.
// Doc comments here are --help text, not rustdoc: brackets and <ID> are literal.
#[allow(rustdoc::broken_intra_doc_links, rustdoc::invalid_html_tags)]
#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Client options")]
pub struct ClientArgs {
    /// Node to talk to: http://HOST:PORT, HOST:PORT, [V6]:PORT or HOST (port 7777 implied).
    #[arg(long, value_name = "URL", env = "TALLY_NODE", default_value = client::DEFAULT_NODE,
          value_parser = client::parse_node)]
    pub node: String,

    /// Print JSON for scripts: the node's JSON answer (also for errors), or
    /// {"name": ..., "value": ...} for counter values.
    #[arg(long)]
    pub json: bool,

    /// Cluster secret, sent as the x-tally-secret header; `config` needs it when the cluster has one.
    #[arg(long, env = "TALLY_SECRET", hide_env_values = true)]
    pub secret: Option<String>,

    /// Deadline of the whole request, e.g. 15s, 500ms [default: 15s].
    #[arg(long, value_name = "DURATION", value_parser = duration)]
    pub timeout: Option<Duration>,
}

impl ClientArgs {
    fn conn(self) -> Conn {
        Conn {
            node: self.node,
            json: self.json,
            secret: self.secret,
            timeout: self.timeout,
        }
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
    #[arg(long, env = "TALLY_LISTEN", default_value = "0.0.0.0:7777")]
    pub listen: SocketAddr,

    /// Data folder of this node [default: ./tally-data/node-<ID>, under the
    /// working folder; if it cannot be created or written the node refuses
    /// to start rather than use another folder].
    #[arg(long, env = "TALLY_DATA_DIR")]
    pub data_dir: Option<PathBuf>,

    /// Default deadline of a consistent read (e.g. 10s, 500ms).
    #[arg(long, env = "TALLY_CONSISTENT_TIMEOUT", default_value = "10s", value_parser = duration)]
    pub consistent_timeout: Duration,

    /// Largest deadline a request may ask for with ?timeout=.
    #[arg(long, env = "TALLY_MAX_CONSISTENT_TIMEOUT", default_value = "60s", value_parser = duration)]
    pub max_consistent_timeout: Duration,

    /// Deadline of one call to a peer.
    #[arg(long, env = "TALLY_PEER_TIMEOUT", default_value = "1s", value_parser = duration)]
    pub peer_timeout: Duration,

    /// Deadline for opening a connection to a peer.
    #[arg(long, env = "TALLY_CONNECT_TIMEOUT", default_value = "500ms", value_parser = duration)]
    pub connect_timeout: Duration,

    /// Pause between anti-entropy rounds with each peer.
    #[arg(long, env = "TALLY_SYNC_INTERVAL", default_value = "500ms", value_parser = duration)]
    pub sync_interval: Duration,

    /// Bound on the whole shutdown sequence after SIGTERM or SIGINT.
    #[arg(long, env = "TALLY_SHUTDOWN_TIMEOUT", default_value = "10s", value_parser = duration)]
    pub shutdown_timeout: Duration,

    /// Cluster secret required on /config and internal routes, and sent to peers.
    #[arg(long, env = "TALLY_SECRET", hide_env_values = true)]
    pub secret: Option<String>,

    /// File whose first line is the cluster secret (instead of --secret).
    #[arg(long, env = "TALLY_SECRET_FILE", conflicts_with = "secret")]
    pub secret_file: Option<PathBuf>,

    /// Longest any request waits for storage; a commit running longer counts
    /// as a stalled disk (increments then answer 503 with Retry-After).
    #[arg(long, env = "TALLY_STORAGE_TIMEOUT", default_value = "5s", value_parser = duration)]
    pub storage_timeout: Duration,

    /// Other actors that must store an increment before it is acknowledged
    /// (0: acknowledged once durable on this node). With 1 or more, a node
    /// whose data folder is lost loses no acknowledged increment; a request
    /// can ask for more with ?replicas=K.
    #[arg(long, env = "TALLY_MIN_REPLICAS", default_value_t = 0,
          value_parser = clap::value_parser!(u64).range(0..=255))]
    pub min_replicas: u64,

    /// How long an increment waits for its replicas before answering 503
    /// (it stays applied on this node and replicates later).
    #[arg(long, env = "TALLY_REPLICA_TIMEOUT", default_value = "5s", value_parser = duration)]
    pub replica_timeout: Duration,

    /// Most client connections open at once; more are refused with 503. A
    /// connection whose first request is under /_internal/ (another node's)
    /// counts against --max-peer-connections instead, so clients cannot
    /// crowd out replication.
    #[arg(long, env = "TALLY_MAX_CONNECTIONS", default_value_t = DEFAULT_MAX_CONNECTIONS)]
    pub max_connections: usize,

    /// Most connections from other nodes open at once; more are refused with
    /// 503. Each peer may hold up to 64 calls in flight, one connection each:
    /// the default lets 16 peers all do so.
    #[arg(long, env = "TALLY_MAX_PEER_CONNECTIONS", default_value_t = DEFAULT_MAX_PEER_CONNECTIONS)]
    pub max_peer_connections: usize,

    /// Deadline for a client to send a whole request head (the first one
    /// counted from accept); also closes idle connections.
    #[arg(long, env = "TALLY_HEADER_TIMEOUT", default_value = "10s", value_parser = duration)]
    pub header_timeout: Duration,

    /// How long an Idempotency-Key is remembered (e.g. 24h is 86400s).
    #[arg(long, env = "TALLY_IDEMPOTENCY_WINDOW", default_value = "86400s", value_parser = duration)]
    pub idempotency_window: Duration,

    /// Most Idempotency-Keys remembered; the oldest are forgotten first.
    #[arg(long, env = "TALLY_IDEMPOTENCY_KEYS", default_value_t = 100_000)]
    pub idempotency_keys: usize,

    /// Log filter, e.g. info, debug, tally=debug,warn.
    #[arg(long, env = "TALLY_LOG", default_value = "info")]
    pub log: String,
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
        Some(Commands::Status { client }) => (Action::Status, client),
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
    init_logging("warn");
    client::run(action, args.conn())
}

/// Runs a node or the demo cluster.
fn serve(cli: Cli) -> ExitCode {
    init_logging(&cli.node.log);
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
            dir,
        }) => runtime.block_on(demo(nodes, base_port, &dir)),
        Some(_) => Err("not a node command".into()),
        None => runtime.block_on(run_node(cli.node)),
    };
    // A blocking thread stuck in a stalled disk call must not hold the exit.
    runtime.shutdown_timeout(Duration::from_secs(1));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            error!("{message}");
            eprintln!("tally: {message}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

async fn run_node(args: NodeArgs) -> Result<(), String> {
    let id = args.id.ok_or("a node id is required")?;
    let data_dir = match args.data_dir {
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
    if secret.as_deref() == Some("") {
        return Err("the cluster secret is empty".into());
    }
    let mut settings = Settings::new(id, args.listen, data_dir);
    settings.consistent_timeout = args.consistent_timeout;
    settings.max_consistent_timeout = args.max_consistent_timeout.max(args.consistent_timeout);
    settings.peer_timeout = args.peer_timeout;
    settings.connect_timeout = args.connect_timeout;
    settings.sync_interval = args.sync_interval;
    settings.shutdown_timeout = args.shutdown_timeout;
    settings.secret = secret.map(Arc::from);
    settings.store.idempotency_window = args.idempotency_window;
    settings.store.idempotency_capacity = args.idempotency_keys.max(1);
    settings.store.timeout = args.storage_timeout;
    settings.min_replicas = usize::try_from(args.min_replicas).unwrap_or(usize::MAX);
    settings.replica_timeout = args.replica_timeout;
    let max_connections = args.max_connections.max(1);
    let max_peer_connections = args.max_peer_connections.max(1);
    let limits = Limits {
        max_connections,
        max_peer_connections,
        max_pending_connections: Limits::pending_for(max_connections, max_peer_connections),
        header_read_timeout: args.header_timeout,
        ..Limits::default()
    };
    run(settings, limits, stop_signal())
        .await
        .map_err(|e| e.to_string())
}

/// Resolves when SIGTERM or SIGINT arrives.
async fn stop_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        error!("cannot install signal handlers; stop the node with SIGKILL");
        return std::future::pending().await;
    };
    let which = tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    };
    info!(signal = which, "stop requested");
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

/// A one-shot HTTP request with a deadline; returns status and body.
pub async fn http(
    method: &str,
    url: &str,
    body: Vec<u8>,
    timeout: Duration,
) -> Result<(u16, String), String> {
    let client: Client<_, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let req = hyper::Request::builder()
        .method(method)
        .uri(url)
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| format!("bad request for {url}: {e}"))?;
    let exchange = async {
        let resp = client
            .request(req)
            .await
            .map_err(|e| format!("cannot reach {url}: {e}"))?;
        let status = resp.status().as_u16();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("reading answer of {url}: {e}"))?
            .to_bytes();
        Ok((status, String::from_utf8_lossy(&bytes).into_owned()))
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| format!("{url} did not answer within {timeout:?}"))?
}

/// Children killed when dropped, so a failed demo leaves nothing running.
struct Cluster(Vec<Child>);

impl Drop for Cluster {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

async fn demo(nodes: u64, base_port: u16, dir: &Path) -> Result<(), String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this executable: {e}"))?;
    let addrs: Vec<String> = (0..nodes)
        .map(|i| format!("127.0.0.1:{}", u64::from(base_port) + i))
        .collect();
    let mut cluster = Cluster(Vec::new());
    for (i, addr) in addrs.iter().enumerate() {
        let id = i as u64 + 1;
        let child = Command::new(&exe)
            .arg(id.to_string())
            .arg("--listen")
            .arg(addr)
            .arg("--data-dir")
            .arg(dir.join(format!("node-{id}")))
            .env("TALLY_LOG", "warn")
            .spawn()
            .map_err(|e| format!("cannot start node {id}: {e}"))?;
        cluster.0.push(child);
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    for addr in &addrs {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(format!("node at {addr} did not start within 15s"));
            }
            let url = format!("http://{addr}/status");
            if let Ok((200, _)) =
                http("GET", &url, Vec::new(), left.min(Duration::from_secs(1))).await
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let config = serde_json::json!({ "actors": addrs }).to_string();
    let (status, body) = http(
        "POST",
        &format!("http://{}/config", addrs[0]),
        config.into_bytes(),
        Duration::from_secs(5),
    )
    .await?;
    if status != 200 {
        return Err(format!("posting the config failed ({status}): {body}"));
    }
    println!(
        "tally demo: {nodes} nodes running, data under {}",
        dir.display()
    );
    for (i, addr) in addrs.iter().enumerate() {
        println!("  node {} at http://{addr}", i + 1);
    }
    let a = &addrs[0];
    let b = addrs.last().expect("at least one node");
    println!("try:");
    println!("  curl -X POST http://{a}/counter/visits -d 5");
    println!("  curl http://{b}/counter/visits/value");
    println!("  curl http://{b}/counter/visits/consistent_value");
    println!("  curl http://{a}/status");
    println!("or with the client in this binary:");
    println!("  tally inc visits 5 --node {a}");
    println!("  tally get visits --consistent --node {b}");
    println!("  tally status --node {a}");
    println!("Ctrl-C stops the cluster.");
    stop_signal().await;
    // Ask every node to stop cleanly (a terminal's Ctrl-C may have reached
    // them already), then give them time before the guard kills what is left.
    for child in &cluster.0 {
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
    }
    let deadline = Instant::now() + Duration::from_secs(12);
    for child in &mut cluster.0 {
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("tally").chain(args.iter().copied()))
    }

    #[test]
    fn definitions_are_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn a_number_runs_a_node() {
        let cli = parse(&["1"]).unwrap();
        assert!(cli.command.is_none());
        assert_eq!(cli.node.id, Some(1));
        let cli = parse(&["7", "--listen", "127.0.0.1:9000", "--log", "warn"]).unwrap();
        assert!(cli.command.is_none());
        assert_eq!(cli.node.id, Some(7));
        assert_eq!(cli.node.listen, "127.0.0.1:9000".parse().unwrap());
        assert!(parse(&[]).is_err(), "a node needs an id");
        assert!(parse(&["0"]).is_err(), "ids are positive");
        assert!(parse(&["1", "inc", "x"]).is_err(), "a node takes one id");
    }

    #[test]
    fn inc_is_the_client() {
        let cli = parse(&["inc", "x"]).unwrap();
        match cli.command {
            Some(Commands::Inc {
                name,
                n,
                idempotency_key,
                client,
            }) => {
                assert_eq!((name.as_str(), n, idempotency_key), ("x", 1, None));
                assert!(!client.json);
                assert_eq!(client.timeout, None);
            }
            other => panic!("parsed as {other:?}"),
        }
        let cli = parse(&[
            "inc",
            "a/b",
            "5",
            "--node",
            "127.0.0.1:7701",
            "--idempotency-key",
            "k1",
            "--json",
            "--timeout",
            "2s",
            "--secret",
            "s",
        ])
        .unwrap();
        match cli.command {
            Some(Commands::Inc {
                name,
                n,
                idempotency_key,
                client,
            }) => {
                assert_eq!(name, "a/b");
                assert_eq!(n, 5);
                assert_eq!(idempotency_key.as_deref(), Some("k1"));
                assert_eq!(client.node, "http://127.0.0.1:7701");
                assert!(client.json);
                assert_eq!(client.timeout, Some(Duration::from_secs(2)));
                assert_eq!(client.secret.as_deref(), Some("s"));
            }
            other => panic!("parsed as {other:?}"),
        }
        for bad in [
            &["inc"][..],
            &["inc", "x", "-1"],
            &["inc", "x", "1.5"],
            &["inc", "x", "18446744073709551616"],
            &["inc", ""],
            &["inc", "x", "--node", "https://x"],
            &["inc", "x", "--timeout", "0"],
            &["inc", "x", "--idempotency-key", "a b"],
            &["get"],
            &["config"],
            &["ls", "--limit", "0"],
        ] {
            assert!(parse(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn every_client_command_parses() {
        assert!(matches!(
            parse(&["get", "x", "--consistent", "--timeout", "500ms"]).unwrap().command,
            Some(Commands::Get { consistent: true, client, .. })
                if client.timeout == Some(Duration::from_millis(500))
        ));
        assert!(matches!(
            parse(&["status", "--json"]).unwrap().command,
            Some(Commands::Status { client }) if client.json
        ));
        assert!(matches!(
            parse(&["config", "10.0.0.1", "10.0.0.2:7777"]).unwrap().command,
            Some(Commands::Config { actors, .. }) if actors == ["10.0.0.1", "10.0.0.2:7777"]
        ));
        assert!(matches!(
            parse(&["ls", "ab", "--limit", "10", "--after", "abc"]).unwrap().command,
            Some(Commands::Ls { prefix: Some(p), limit: Some(10), after: Some(a), .. })
                if p == "ab" && a == "abc"
        ));
        assert!(matches!(
            parse(&["demo"]).unwrap().command,
            Some(Commands::Demo { nodes: 3, .. })
        ));
    }
}
