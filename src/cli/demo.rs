//! `tally demo`: a local cluster on 127.0.0.1 to watch the guarantees hold
//! while you pause, kill, restart and cut off its nodes.
//!
//! The demo starts N processes of this executable, each behind a TCP proxy
//! of its own ([`proxy`]: the proxies' addresses are the config's actors,
//! which is how `isolate` can cut a node off without root), posts the
//! config, and then shows a line per node every second ([`view`]) while it
//! reads commands from stdin ([`command`]; a pipe works too). With
//! `--with-load` it sends a steady trickle of increments to every node and
//! keeps count of what each acknowledged ([`load`]), so that `get` can hold
//! `consistent_value` to the acknowledged total. With `--tls` it makes a CA
//! and a certificate per node ([`certs`]), starts every node with them, and
//! speaks HTTPS to the nodes; the proxies carry the TLS bytes unchanged.
//!
//! Data goes to a fresh folder under the system's temporary folder, removed
//! when the demo ends (also on error), unless `--data-dir` names a folder to
//! keep. Stopping sends SIGCONT to paused nodes and SIGTERM to all, waits
//! for them with a deadline, and SIGKILLs what is left.
//!
//! Left out: the demo changes no node behaviour (the nodes are ordinary
//! processes with ordinary flags), so it cannot show a full disk or a
//! one-way partition; the chaos suite does.

mod actions;
mod certs;
mod command;
mod data;
mod load;
mod nodes;
mod proxy;
mod requests;
mod view;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::stop_signal;
use crate::api::types::{Status, Unavailable, paths};
use command::Command;
use data::DataDir;
use load::Ledger;
use nodes::{Life, Procs};
use proxy::Net;
use requests::{Client, Reply, error_message, http, post_increment, read_value, wait_status};
use view::{Row, Screen, Seen};

/// A node's own port is its actor's (its proxy's) plus this.
pub const OWN_PORT_OFFSET: u16 = 10;
/// Deadline of a consistent read made by `get`.
const GET_TIMEOUT: Duration = Duration::from_secs(2);
/// Deadline of the demo's other requests to a node.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// Deadline of a view poll of one node.
const POLL_TIMEOUT: Duration = Duration::from_millis(700);
/// Bound on nodes starting, finding themselves, and coming back after `restart`.
const START_BOUND: Duration = Duration::from_secs(20);
/// Bound on the nodes' clean shutdown before they are killed.
const STOP_BOUND: Duration = Duration::from_secs(12);
/// How often the view is refreshed.
const VIEW_EVERY: Duration = Duration::from_secs(1);

/// `tally demo`'s flags.
#[derive(Debug)]
pub struct Options {
    pub nodes: u64,
    pub base_port: u16,
    pub data_dir: Option<PathBuf>,
    pub with_load: bool,
    /// Make a CA and node certificates, and run every node with TLS.
    pub tls: bool,
}

pub(super) async fn demo(opts: Options) -> Result<(), String> {
    let n = usize::try_from(opts.nodes).map_err(|_| "too many nodes")?;
    let last = u32::from(opts.base_port) + u32::from(OWN_PORT_OFFSET) + opts.nodes as u32;
    if opts.base_port == 0 || last > 65_536 {
        return Err(format!(
            "--base-port {} leaves no room for {} actor ports and {} node ports (BASE_PORT to BASE_PORT+{})",
            opts.base_port,
            opts.nodes,
            opts.nodes,
            u32::from(OWN_PORT_OFFSET) + opts.nodes as u32 - 1
        ));
    }
    let data = DataDir::prepare(opts.data_dir.as_deref())?;
    let ids: Vec<u64> = (1..=opts.nodes).collect();
    let certs = if opts.tls {
        Some(certs::Certs::prepare(&data.path, &ids)?)
    } else {
        None
    };
    let client = match &certs {
        Some(c) => Client::tls(&c.ca)?,
        None => Client::plain(),
    };
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this executable: {e}"))?;
    let loopback = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let mut listeners = Vec::new();
    let mut procs = Procs::new(exe);
    for i in 0..n {
        let actor = SocketAddr::new(loopback, opts.base_port + i as u16);
        let listener = TcpListener::bind(actor)
            .await
            .map_err(|e| format!("cannot listen on {actor} for node {}: {e}", i + 1))?;
        listeners.push(listener);
        let id = i as u64 + 1;
        procs.add(
            id,
            SocketAddr::new(actor.ip(), actor.port() + OWN_PORT_OFFSET),
            data.path.join(format!("node-{id}")),
            data.path.join(format!("node-{id}.log")),
            certs.as_ref().map(|c| c.nodes[i].clone()),
        );
    }
    let demo = Arc::new(Demo {
        actors: (0..n)
            .map(|i| format!("127.0.0.1:{}", opts.base_port + i as u16))
            .collect(),
        listens: procs.all.iter().map(|p| p.listen).collect(),
        procs: Mutex::new(procs),
        client,
        certs,
        net: Arc::new(Net::new(n)),
        ledger: Arc::new(Ledger::default()),
        names: Mutex::new(Vec::new()),
        screen: Screen::new(n),
        fresh: data.fresh,
        run: fastrand::u64(..),
        seq: AtomicU64::new(0),
        work: CancellationToken::new(),
        tasks: TaskTracker::new(),
    });
    let network = CancellationToken::new();
    let proxies = TaskTracker::new();
    for (i, listener) in listeners.into_iter().enumerate() {
        proxies.spawn(proxy::serve(
            demo.net.clone(),
            i,
            listener,
            demo.listens[i],
            network.clone(),
        ));
    }
    // Ctrl-C or SIGTERM at any point, starting included, ends the demo
    // the same way as `quit`.
    let result = tokio::select! {
        r = run(&demo, &opts, &data) => r,
        () = stop_signal() => {
            demo.screen.say("stop requested");
            Ok(())
        }
    };
    // The same ending for success and failure: nodes first (their last
    // pushes still cross the proxies), then the proxies.
    demo.work.cancel();
    demo.tasks.close();
    let _ = tokio::time::timeout(Duration::from_secs(3), demo.tasks.wait()).await;
    let children = demo.procs().begin_stop();
    if !children.is_empty() {
        demo.screen
            .say(&format!("stopping {} nodes (SIGTERM)...", children.len()));
    }
    let killed = nodes::finish_stop(children, STOP_BOUND).await;
    if !killed.is_empty() {
        demo.screen.say(&format!(
            "nodes {killed:?} did not stop within {STOP_BOUND:?}: killed"
        ));
    }
    network.cancel();
    proxies.close();
    let _ = tokio::time::timeout(Duration::from_secs(3), proxies.wait()).await;
    demo.screen.say(&demo.summary());
    demo.screen.close();
    demo.screen.say(&data.finish());
    result
}

/// Everything the demo's tasks share.
struct Demo {
    /// Each node's address in the config: its proxy's.
    actors: Vec<String>,
    /// Where each node itself listens.
    listens: Vec<SocketAddr>,
    /// Held for a signal or a spawn, never across an await.
    procs: Mutex<Procs>,
    /// How the demo's own requests reach the nodes: HTTP or HTTPS.
    client: Client,
    /// The TLS files, with `--tls`.
    certs: Option<certs::Certs>,
    net: Arc<Net>,
    ledger: Arc<Ledger>,
    /// The names the view shows, in order of first use.
    names: Mutex<Vec<String>>,
    screen: Screen,
    /// Whether the data folder started empty, so the ledger holds every count.
    fresh: bool,
    /// Distinguishes this run's idempotency keys from an earlier run's.
    run: u64,
    seq: AtomicU64,
    /// Stops the view, the load and the watchers.
    work: CancellationToken,
    tasks: TaskTracker,
}

async fn run(demo: &Arc<Demo>, opts: &Options, data: &DataDir) -> Result<(), String> {
    for i in 0..demo.actors.len() {
        demo.start(i)?;
    }
    for i in 0..demo.listens.len() {
        demo.started(i).await?;
    }
    let config = serde_json::json!({ "actors": demo.actors }).to_string();
    match http(
        &demo.client,
        hyper::Method::POST,
        demo.listens[0],
        paths::CONFIG,
        config.into_bytes(),
        None,
        Duration::from_secs(10),
    )
    .await
    {
        Ok((200, _)) => {}
        Ok((status, body)) => return Err(format!("posting the config failed ({status}): {body}")),
        Err(e) => return Err(format!("posting the config failed: {e}")),
    }
    // Each node finds its actor by asking the actors who they are: through
    // the proxies, its own leads back to it.
    for (i, listen) in demo.listens.iter().enumerate() {
        let actor = demo.actors[i].clone();
        wait_status(&demo.client, *listen, START_BOUND, |s| {
            s.me.as_deref() == Some(&actor)
        })
        .await
        .map_err(|e| format!("node {} did not find itself as {actor}: {e}", i + 1))?;
    }
    demo.screen.say(&demo.intro(data, opts.with_load));
    if opts.with_load {
        demo.names()
            .extend(load::NAMES.iter().map(|s| s.to_string()));
        for (i, listen) in demo.listens.iter().enumerate() {
            demo.tasks.spawn(load::drive(
                demo.client.clone(),
                i,
                *listen,
                demo.run,
                demo.ledger.clone(),
                demo.work.clone(),
            ));
        }
    }
    let watcher = demo.clone();
    demo.tasks.spawn(async move { watcher.view_loop().await });
    let mut lines = stdin_lines();
    loop {
        demo.screen.prompt();
        let line = lines.recv().await;
        let line = match line {
            Some(Ok(line)) => line,
            None => {
                demo.screen.say("end of input: stopping");
                return Ok(());
            }
            Some(Err(e)) => return Err(format!("cannot read commands from stdin: {e}")),
        };
        match command::parse(&line) {
            Ok(Command::Quit) => return Ok(()),
            Ok(cmd) => demo.execute(cmd).await,
            Err(e) => demo.screen.say(&e),
        }
    }
}

impl Demo {
    fn procs(&self) -> std::sync::MutexGuard<'_, Procs> {
        self.procs.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn names(&self) -> std::sync::MutexGuard<'_, Vec<String>> {
        self.names.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn start(&self, i: usize) -> Result<(), String> {
        let pid = self.procs().start(i)?;
        self.net.set_pid(i, Some(pid));
        Ok(())
    }

    /// Waits until node `i` answers, failing at once (with the end of its
    /// log) if its process ends meanwhile, e.g. because its port is taken.
    async fn started(&self, i: usize) -> Result<(), String> {
        let listen = self.listens[i];
        let ended = async {
            loop {
                let ended = self.procs().reap();
                if !ended.is_empty() {
                    let log = &self.procs().all[i].log;
                    let text = std::fs::read_to_string(log).unwrap_or_default();
                    let tail: Vec<&str> = text.lines().rev().take(5).collect();
                    let tail: Vec<&str> = tail.into_iter().rev().collect();
                    return format!("{}\n{}", ended.join("\n"), tail.join("\n"));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        };
        tokio::select! {
            up = wait_status(&self.client, listen, START_BOUND, |_| true) => up
                .map(|_| ())
                .map_err(|e| format!("node {} at {listen} did not start: {e}", i + 1)),
            why = ended => Err(why),
        }
    }

    /// "node 2" for an actor of the config, else the actor itself.
    fn label(&self, actor: &str) -> String {
        match self.actors.iter().position(|a| a == actor) {
            Some(i) => format!("node {}", i + 1),
            None => actor.to_string(),
        }
    }

    /// The node index a command names, if the demo has it.
    fn index(&self, n: u64) -> Result<usize, String> {
        usize::try_from(n)
            .ok()
            .filter(|&n| (1..=self.actors.len()).contains(&n))
            .map(|n| n - 1)
            .ok_or_else(|| format!("there is no node {n}: nodes are 1 to {}", self.actors.len()))
    }

    fn intro(&self, data: &DataDir, with_load: bool) -> String {
        let mut out = format!(
            "tally demo: {} nodes on 127.0.0.1, config posted; every node found itself through its proxy\n",
            self.actors.len()
        );
        let procs = self.procs();
        for (i, p) in procs.all.iter().enumerate() {
            out.push_str(&format!(
                "  node {}: actor {} (its proxy), listens on {}, log {}\n",
                p.id,
                self.actors[i],
                p.listen,
                p.log.display()
            ));
        }
        out.push_str(&data.describe());
        out.push('\n');
        if with_load {
            out.push_str(&format!(
                "load: about 5 increments a second on each node, over {}; `get load-a` compares consistent_value with what the nodes acknowledged\n",
                load::NAMES.join(", ")
            ));
        }
        let a = &self.actors[0];
        let own = self.listens[0];
        match &self.certs {
            None => out.push_str(&format!(
                "from another terminal: curl -X POST http://{a}/counter/visits -d 5 (through node 1's proxy), \
                 curl http://{own}/counter/visits/consistent_value (node 1's own port), tally status --cluster --node {own}\n\
                 web console: http://{own}/\n"
            )),
            Some(certs) => {
                let ca = shell_word(&certs.ca);
                out.push_str(&format!(
                    "{}\n\
                     tls: every node speaks only TLS, to clients and to its peers (mutual TLS); clients trust the CA {ca}\n\
                     from another terminal: curl --cacert {ca} -X POST https://{a}/counter/visits -d 5 (through node 1's proxy), \
                     curl --cacert {ca} https://{own}/counter/visits/consistent_value (node 1's own port), \
                     tally status --cluster --node https://{own} --cacert {ca}\n\
                     web console: https://{own}/ (a browser asks first, unless it trusts {ca})\n",
                    certs.made
                ));
            }
        }
        out.push_str("type `help` for the commands");
        out
    }

    /// The lines of the view, now.
    async fn rows(self: &Arc<Self>) -> Vec<Row> {
        let names = self.names().clone();
        let mut rows = Vec::new();
        let mut asks = tokio::task::JoinSet::new();
        {
            let procs = self.procs();
            for (i, p) in procs.all.iter().enumerate() {
                let isolated = self.net.is_isolated(i);
                let mut state = life_word(p.life).to_string();
                if isolated {
                    state.push_str(", isolated");
                }
                rows.push(Row {
                    id: p.id,
                    actor: self.actors[i].clone(),
                    state,
                    status: None,
                    acked: (!self.names().is_empty() && self.ledger_used())
                        .then(|| self.ledger.acked_by(i)),
                });
                if p.life == Life::Up {
                    let demo = self.clone();
                    let names = names.clone();
                    asks.spawn(async move { (i, demo.seen(i, &names).await) });
                }
            }
        }
        while let Some(joined) = asks.join_next().await {
            if let Ok((i, seen)) = joined {
                rows[i].status = seen;
            }
        }
        rows
    }

    fn ledger_used(&self) -> bool {
        !self.ledger.all().is_empty()
    }

    /// One node's status and values, if it answers.
    async fn seen(&self, i: usize, names: &[String]) -> Option<Seen> {
        let listen = self.listens[i];
        let (status, body) = http(
            &self.client,
            hyper::Method::GET,
            listen,
            paths::STATUS,
            Vec::new(),
            None,
            POLL_TIMEOUT,
        )
        .await
        .ok()?;
        if status != 200 {
            return None;
        }
        let s: Status = serde_json::from_str(&body).ok()?;
        let mut values = Vec::new();
        for name in names.iter().take(4) {
            values.push((
                name.clone(),
                read_value(&self.client, listen, name).await.ok(),
            ));
        }
        Some(Seen::from_status(&s, values, |actor| {
            match self.actors.iter().position(|a| a == actor) {
                Some(j) => format!("n{}", j + 1),
                None => actor.to_string(),
            }
        }))
    }

    async fn view_loop(self: Arc<Self>) {
        loop {
            for line in self.procs().reap() {
                self.screen.say(&line);
            }
            let rows = tokio::select! {
                rows = self.rows() => rows,
                () = self.work.cancelled() => return,
            };
            self.screen.show(&rows, false);
            tokio::select! {
                () = tokio::time::sleep(VIEW_EVERY) => {}
                () = self.work.cancelled() => return,
            }
        }
    }

    fn summary(&self) -> String {
        let all = self.ledger.all();
        if all.is_empty() {
            return "nothing was incremented through the demo".into();
        }
        let mut out = String::from("acknowledged through the demo:");
        for (name, sent) in all {
            out.push_str(&format!(" {name}={}", sent.acked));
            if sent.in_doubt > 0 {
                out.push_str(&format!(" (+{} in doubt)", sent.in_doubt));
            }
        }
        out
    }
}

/// `path` as one shell word: as it is when it holds only characters that
/// need no quoting, else in single quotes.
fn shell_word(path: &Path) -> String {
    let text = path.to_string_lossy();
    let plain = text
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "/._-+:,@%=".contains(c));
    if plain && !text.is_empty() {
        text.into_owned()
    } else {
        format!("'{}'", text.replace('\'', r"'\''"))
    }
}

fn life_word(life: Life) -> &'static str {
    match life {
        Life::Up => "up",
        Life::Paused => "paused",
        Life::Killed => "killed",
        Life::Exited => "exited",
    }
}

/// Lines of stdin, read on a thread of their own: a blocking read that
/// never ends (a terminal nobody types in) must hold neither the runtime
/// nor the exit, and the thread ends with the process.
fn stdin_lines() -> tokio::sync::mpsc::Receiver<std::io::Result<String>> {
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    std::thread::spawn(move || {
        for line in std::io::stdin().lines() {
            let failed = line.is_err();
            if tx.blocking_send(line).is_err() || failed {
                return;
            }
        }
    });
    rx
}
