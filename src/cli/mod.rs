//! Command line: `tally <ID>` runs a node; `tally demo` runs a local cluster;
//! `tally inc | get | status | config | ls` are the client (see [`crate::client`]).
//!
//! Every node setting is a flag with a `TALLY_*` environment variable and a
//! default in code; `tally --help` lists them all.

mod backup;
mod cert;
mod check;
mod demo;
mod node;
mod token;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use tracing::error;

use crate::client::{self, Action, Conn};
use crate::tls::ClientTls;
use demo::demo;
#[cfg(test)]
use node::check_secret;
pub use node::{DamagePolicy, LogFormat, NodeArgs, PlainHttpArg};
use node::{run_node, stop_signal};

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
        The client commands (inc, get, ls, status, health, config, backup, restore,\n\
        export, import) talk to the node\n\
        given by --node, TALLY_NODES or TALLY_NODE (default http://127.0.0.1:7777;\n\
        with several, a command asks the next when one cannot be reached, except\n\
        inc) and send --secret or TALLY_SECRET as the x-tally-secret header;\n\
        `tally <COMMAND> --help` lists their flags. Client exit codes: 0 success,\n\
        1 the node answered an error, 2 the node could not be reached (or bad\n\
        usage), 3 a consistent read could not hear from every node (or, for\n\
        status --cluster, some node could not be asked; for backup and export,\n\
        some node could not be heard from); health exits 0 or 1 only.\n\n\
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
    /// Back up every counter of the cluster, with all its components, into a
    /// file, while the cluster serves (GET /backup, admin scope).
    ///
    /// The counters are read in pages of names, each heard from every node of
    /// the config, as a consistent read is: the file holds every increment
    /// acknowledged anywhere before the backup began, and of those made while
    /// it runs, some or none. It is versioned and checksummed, written to
    /// FILE.partial and renamed to FILE once complete. When a node cannot be
    /// heard from, the backup fails naming it (exit 3), unless --allow-partial:
    /// then it goes on without it and marks the file partial, naming what it
    /// lacks (exit 3 too). `tally backup verify FILE` checks a file offline.
    #[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
    Backup {
        #[command(subcommand)]
        command: Option<BackupCommand>,
        /// The file to write (`-`: standard output, written as it comes).
        #[arg(short = 'o', long = "output", value_name = "FILE", required = true)]
        output: Option<PathBuf>,
        /// Go on without nodes that cannot be heard from; the file says it is partial.
        #[arg(long)]
        allow_partial: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Merge a backup into a running cluster, new or old (POST /restore, admin scope).
    ///
    /// Checks the whole file first, then sends it page by page. Components merge
    /// by maximum: restoring twice is restoring once, and restoring into the
    /// cluster the backup came from changes nothing newer. A page that would raise
    /// a running node's own component past what that node counted is refused.
    /// Every node of the config must answer (each page is checked against them).
    /// An interrupted restore says how far it got: run it again with --after NAME,
    /// or from the start.
    Restore {
        /// The backup file (from `tally backup`).
        #[arg(value_name = "FILE")]
        file: PathBuf,
        /// Skip the counters up to and including NAME (resume an interrupted restore).
        #[arg(long, value_name = "NAME")]
        after: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Write every counter with its components as JSON lines, read consistently
    /// like a backup (GET /backup, admin scope):
    /// {"name": ..., "value": ..., "components": [{"node": ..., "incarnation": ..., "count": ...}]}
    Export {
        /// Where to write (`-`: standard output).
        #[arg(short = 'o', long = "output", value_name = "FILE", default_value = "-")]
        output: PathBuf,
        /// Go on without nodes that cannot be heard from (exit 3 at the end).
        #[arg(long)]
        allow_partial: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Merge JSON lines (as `tally export` writes them) into the cluster
    /// (POST /restore, admin scope). Components merge by maximum, so importing
    /// again changes nothing; it never applies increments. Every line is checked
    /// (a "value" must be the sum of the components) before anything is sent.
    Import {
        /// The file of JSON lines (`-`: standard input, read whole first).
        #[arg(value_name = "FILE")]
        file: PathBuf,
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

/// `tally backup verify`.
#[derive(Subcommand, Debug)]
pub enum BackupCommand {
    /// Check a backup file without a cluster: every frame's checksum, the order
    /// of names, the counts and the SHA-256 in its trailer. Prints what it holds;
    /// exits 0 when sound, 1 when damaged (naming the byte offset), 2 when it
    /// cannot be read.
    Verify {
        #[arg(value_name = "FILE")]
        file: PathBuf,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
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
        Some(Commands::Backup {
            command: Some(BackupCommand::Verify { file, json }),
            ..
        }) => return backup::verify(&file, json),
        Some(Commands::Backup {
            command: None,
            output,
            allow_partial,
            client,
        }) => {
            let output = output.unwrap_or_else(|| PathBuf::from("-"));
            return with_conn(client, |conn| backup::backup(&output, allow_partial, conn));
        }
        Some(Commands::Restore {
            file,
            after,
            client,
        }) => {
            return with_conn(client, |conn| {
                backup::restore(&file, after.as_deref(), conn)
            });
        }
        Some(Commands::Export {
            output,
            allow_partial,
            client,
        }) => return with_conn(client, |conn| backup::export(&output, allow_partial, conn)),
        Some(Commands::Import { file, client }) => {
            return with_conn(client, |conn| backup::import(&file, conn));
        }
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

/// Runs a client command that needs its connection settings.
fn with_conn(args: ClientArgs, run: impl FnOnce(&Conn) -> ExitCode) -> ExitCode {
    let _ = init_logging("warn", LogFormat::Text);
    match args.conn() {
        Ok(conn) => run(&conn),
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

#[cfg(test)]
mod tests;
