//! Harness for the end-to-end tests: runs the real `tally` binary as child
//! processes on 127.0.0.1, talks HTTP to them, injects faults (SIGSTOP,
//! SIGCONT, SIGKILL, SIGTERM) and cleans up after itself.
//!
//! Everything a test waits for is a bounded poll on a condition
//! ([`wait_until`], [`eventually`]); a failing test leaves no process running
//! (the [`Cluster`] kills its children in `Drop`) and no folder behind (the
//! [`TempDir`] removes itself).

#![allow(dead_code)]

pub mod eintr;
pub mod root;
pub mod upgrade;

use std::collections::BTreeSet;
use std::fs::File;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_tally");

/// Pause between two checks of a polled condition.
pub const STEP: Duration = Duration::from_millis(25);
/// Bound on a node becoming ready after it was spawned.
pub const START_BOUND: Duration = Duration::from_secs(15);
/// Bound on a single HTTP exchange that is expected to be quick.
pub const HTTP_TIMEOUT: Duration = Duration::from_secs(10);

/// Flags every test node gets, so the cluster converges quickly; the
/// deadlines of peer calls stay at the node's defaults.
pub const FAST_SYNC: &[&str] = &["--sync-interval", "200ms"];

/// Writes `line` to stderr past the test harness's capture, which shows a
/// test's `eprintln!` output only when it fails: a test that skips itself
/// reads "ok", so the line saying so must show in a passing run too.
pub fn announce(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{line}");
}

// ---------------------------------------------------------------------------
// Waiting

/// Whether the environment variable `key` is set to something other than
/// empty, `0` or `false`.
pub fn env_flag(key: &str) -> bool {
    std::env::var(key)
        .map(|v| !v.is_empty() && v != "0" && !v.eq_ignore_ascii_case("false"))
        .unwrap_or(false)
}

/// Polls `cond` every [`STEP`] until it holds or `bound` passes; returns
/// whether it held.
pub fn wait_until(bound: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + bound;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(STEP);
    }
}

/// Polls `probe` until it returns `Some`, or panics after `bound` with
/// `what` and the last observation.
pub fn eventually<T>(
    what: &str,
    bound: Duration,
    mut probe: impl FnMut() -> Result<T, String>,
) -> T {
    let deadline = Instant::now() + bound;
    loop {
        let last = match probe() {
            Ok(v) => return v,
            Err(e) => e,
        };
        if Instant::now() >= deadline {
            panic!("{what}: not true within {bound:?}; last observation: {last}");
        }
        std::thread::sleep(STEP);
    }
}

// ---------------------------------------------------------------------------
// Folders and ports

static UNIQUE: AtomicU64 = AtomicU64::new(0);
static HANDED_OUT: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());

/// A fresh folder under the system temp folder, removed on drop.
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let path = std::env::temp_dir().join(format!(
            "tally-e2e-{tag}-{}-{}-{nanos}",
            std::process::id(),
            UNIQUE.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create the test folder");
        TempDir { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// A port that was free a moment ago. Drawn below the kernel's ephemeral
/// range (32768+), so that a node restarted on the same port cannot find it
/// taken by some unrelated outgoing connection in the meantime.
pub fn free_port() -> u16 {
    loop {
        let seed = u64::from(std::process::id())
            .wrapping_mul(0x9E37_79B9_7F4A_7C15)
            .wrapping_add(UNIQUE.fetch_add(1, Ordering::Relaxed).wrapping_mul(7919))
            .wrapping_add(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| u64::from(d.subsec_nanos()))
                    .unwrap_or(0),
            );
        let port = 20_000 + (seed % 12_000) as u16;
        let mut given = HANDED_OUT.lock().unwrap_or_else(|p| p.into_inner());
        if !given.contains(&port) && TcpListener::bind(("127.0.0.1", port)).is_ok() {
            // Never handed out twice in this test process, so two tests
            // running in parallel cannot pick the same port.
            given.insert(port);
            return port;
        }
    }
}

// ---------------------------------------------------------------------------
// HTTP

/// One HTTP answer, read in full.
#[derive(Debug, Clone)]
pub struct Resp {
    pub status: u16,
    pub content_type: String,
    pub body: String,
}

impl Resp {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", self.body))
    }

    /// The body as a decimal value, for the counter routes (which must
    /// answer 200 with the digits alone).
    pub fn number(&self) -> u128 {
        assert_eq!(self.status, 200, "expected 200, got {self:?}");
        parse_digits(&self.body)
    }

    /// Checks this is an error with the given status and a JSON body whose
    /// `error` field is a non-empty string; returns the JSON.
    #[track_caller]
    pub fn assert_error(&self, status: u16, context: &str) -> serde_json::Value {
        assert_eq!(
            self.status, status,
            "{context}: wrong status; answer {self:?}"
        );
        assert!(
            self.content_type.starts_with("application/json"),
            "{context}: error is not JSON; answer {self:?}"
        );
        let v = self.json();
        let msg = v.get("error").and_then(|e| e.as_str()).unwrap_or_default();
        assert!(
            !msg.trim().is_empty(),
            "{context}: error body lacks a message in \"error\"; answer {self:?}"
        );
        v
    }
}

/// Parses a counter body strictly: ASCII digits only, no sign, no
/// whitespace, no newline (what `strconv.Atoi` would accept).
#[track_caller]
pub fn parse_digits(body: &str) -> u128 {
    assert!(
        !body.is_empty() && body.bytes().all(|b| b.is_ascii_digit()),
        "counter body is not bare decimal digits: {body:?}"
    );
    body.parse()
        .unwrap_or_else(|e| panic!("{body:?} is not a u128: {e}"))
}

/// A blocking HTTP client that treats every status as an answer.
#[derive(Clone)]
pub struct Http {
    agent: ureq::Agent,
}

impl Default for Http {
    fn default() -> Self {
        Http::new(false)
    }
}

impl Http {
    /// `pooled`: keep connections alive between requests. Tests that restart
    /// nodes use unpooled clients so a connection to a killed process is
    /// never reused.
    pub fn new(pooled: bool) -> Http {
        let mut builder = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(HTTP_TIMEOUT))
            .proxy(None);
        if !pooled {
            builder = builder
                .max_idle_connections(0)
                .max_idle_connections_per_host(0);
        }
        Http {
            agent: builder.build().new_agent(),
        }
    }

    /// Sends one request; `Err` only when no HTTP answer came at all.
    pub fn try_request(
        &self,
        method: &str,
        url: &str,
        body: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<Resp, String> {
        let result = match (method, body) {
            ("GET", _) => self
                .agent
                .get(url)
                .config()
                .timeout_global(Some(timeout))
                .build()
                .call(),
            ("DELETE", _) => self
                .agent
                .delete(url)
                .config()
                .timeout_global(Some(timeout))
                .build()
                .call(),
            ("HEAD", _) => self
                .agent
                .head(url)
                .config()
                .timeout_global(Some(timeout))
                .build()
                .call(),
            (m, body) => {
                let builder = match m {
                    "POST" => self.agent.post(url),
                    "PUT" => self.agent.put(url),
                    "PATCH" => self.agent.patch(url),
                    other => panic!("method {other} not supported by the harness"),
                };
                let builder = builder.config().timeout_global(Some(timeout)).build();
                match body {
                    Some(b) => builder.send(b),
                    None => builder.send_empty(),
                }
            }
        };
        let mut resp = result.map_err(|e| format!("{method} {url}: {e}"))?;
        let status = resp.status().as_u16();
        let content_type = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let body = resp
            .body_mut()
            .read_to_string()
            .map_err(|e| format!("{method} {url}: reading the body: {e}"))?;
        Ok(Resp {
            status,
            content_type,
            body,
        })
    }

    #[track_caller]
    pub fn request(&self, method: &str, url: &str, body: Option<&[u8]>) -> Resp {
        self.try_request(method, url, body, HTTP_TIMEOUT)
            .unwrap_or_else(|e| panic!("no answer: {e}"))
    }

    #[track_caller]
    pub fn get(&self, url: &str) -> Resp {
        self.request("GET", url, None)
    }

    #[track_caller]
    pub fn post(&self, url: &str, body: &str) -> Resp {
        self.request("POST", url, Some(body.as_bytes()))
    }

    /// Like [`Http::try_request`] (GET or POST only), with extra request
    /// `headers`; also returns the response headers, names in lower case.
    pub fn try_request_with_headers(
        &self,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<Answer, String> {
        let result = match method {
            "GET" => {
                let mut b = self.agent.get(url);
                for (k, v) in headers {
                    b = b.header(*k, *v);
                }
                b.config().timeout_global(Some(timeout)).build().call()
            }
            "POST" => {
                let mut b = self.agent.post(url);
                for (k, v) in headers {
                    b = b.header(*k, *v);
                }
                let b = b.config().timeout_global(Some(timeout)).build();
                match body {
                    Some(body) => b.send(body),
                    None => b.send_empty(),
                }
            }
            other => panic!("method {other} not supported with headers by the harness"),
        };
        let mut resp = result.map_err(|e| format!("{method} {url}: {e}"))?;
        let status = resp.status().as_u16();
        let response_headers: Vec<(String, String)> = resp
            .headers()
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_ascii_lowercase(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect();
        let content_type = response_headers
            .iter()
            .find(|(k, _)| k == "content-type")
            .map(|(_, v)| v.clone())
            .unwrap_or_default();
        let body = resp
            .body_mut()
            .read_to_string()
            .map_err(|e| format!("{method} {url}: reading the body: {e}"))?;
        Ok(Answer {
            resp: Resp {
                status,
                content_type,
                body,
            },
            headers: response_headers,
        })
    }

    /// [`Http::try_request_with_headers`] with [`HTTP_TIMEOUT`]; panics when
    /// no answer came.
    #[track_caller]
    pub fn request_with_headers(
        &self,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> Answer {
        self.try_request_with_headers(method, url, headers, body, HTTP_TIMEOUT)
            .unwrap_or_else(|e| panic!("no answer: {e}"))
    }
}

/// An answer together with its response headers.
#[derive(Debug, Clone)]
pub struct Answer {
    pub resp: Resp,
    /// (lower-case name, value) pairs, in the order received.
    pub headers: Vec<(String, String)>,
}

impl Answer {
    /// The first value of response header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Writes `request` on a fresh connection and reads until the server closes
/// it or `timeout` passes; returns the status and the raw answer.
pub fn raw_request(port: u16, request: &[u8], timeout: Duration) -> (Option<u16>, String) {
    let mut stream = eintr::connect(("127.0.0.1", port)).expect("connect");
    stream.set_read_timeout(Some(timeout)).expect("set timeout");
    stream
        .set_write_timeout(Some(timeout))
        .expect("set timeout");
    // A server may answer (and close) before it read everything: not an error here.
    let _ = eintr::write_all(&mut stream, request);
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match eintr::read(&mut stream, &mut buf) {
            Ok(0) => break,
            Ok(n) => {
                out.extend_from_slice(&buf[..n]);
                if answer_complete(&out) {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|s| s.parse().ok());
    (status, text)
}

/// One HTTP/1.1 answer read off a connection that stays open.
#[derive(Debug, Clone)]
pub struct RawAnswer {
    pub status: u16,
    /// (lower-case name, value) pairs, in the order received.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl RawAnswer {
    /// The first value of response header `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Reads one answer (head and `Content-Length` body) from `stream`, which
/// stays usable for the next request. `Ok(None)`: the server closed the
/// connection before a whole answer.
pub fn read_answer(stream: &mut TcpStream) -> std::io::Result<Option<RawAnswer>> {
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        match eintr::read(stream, &mut buf)? {
            0 => return Ok(None),
            n => raw.extend_from_slice(&buf[..n]),
        }
    };
    let head = String::from_utf8_lossy(&raw[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.strip_prefix("HTTP/1.1 "))
        .and_then(|rest| rest.get(..3))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP answer: {head:?}")))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let len: usize = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = raw[head_end + 4..].to_vec();
    while body.len() < len {
        match eintr::read(stream, &mut buf)? {
            0 => return Ok(None),
            n => body.extend_from_slice(&buf[..n]),
        }
    }
    Ok(Some(RawAnswer {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }))
}

/// Whether `raw` holds a full response with a Content-Length body.
fn answer_complete(raw: &[u8]) -> bool {
    let text = String::from_utf8_lossy(raw);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return false;
    };
    let len = head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case("content-length")
            .then(|| v.trim().parse::<usize>().ok())?
    });
    matches!(len, Some(n) if body.len() >= n)
}

/// The body of a raw HTTP answer.
pub fn raw_body(raw: &str) -> &str {
    raw.split_once("\r\n\r\n").map_or("", |(_, b)| b)
}

// ---------------------------------------------------------------------------
// Processes

/// Sends `signal` (e.g. "STOP", "CONT", "KILL", "TERM") to `pid`.
pub fn signal(pid: u32, signal: &str) {
    let status = signal_quietly(pid, signal).expect("run kill");
    assert!(status.success(), "kill -{signal} {pid} failed");
}

/// How to start one node.
#[derive(Clone, Debug)]
pub struct NodeSpec {
    pub id: u64,
    pub port: u16,
    /// `None`: no `--data-dir`, the node picks its default folder.
    pub data_dir: Option<PathBuf>,
    /// Working folder of the process.
    pub cwd: PathBuf,
    pub extra: Vec<String>,
    /// Where stdout and stderr go (appended across restarts).
    pub log: PathBuf,
    /// Another tally binary (an older version); `None`: this build's.
    pub bin: Option<PathBuf>,
}

impl NodeSpec {
    pub fn command(&self) -> Command {
        let mut cmd = Command::new(self.bin.as_deref().unwrap_or(Path::new(BIN)));
        cmd.arg(self.id.to_string())
            .arg("--listen")
            .arg(format!("127.0.0.1:{}", self.port));
        if let Some(dir) = &self.data_dir {
            cmd.arg("--data-dir").arg(dir);
        }
        cmd.args(&self.extra)
            .current_dir(&self.cwd)
            .env("TALLY_LOG", "warn")
            .env_remove("TALLY_DATA_DIR")
            .env_remove("TALLY_LISTEN")
            .env_remove("TALLY_SECRET")
            .env_remove("TALLY_SECRET_FILE")
            .stdin(Stdio::null());
        cmd
    }
}

/// One node process and how to restart it.
pub struct NodeProc {
    pub spec: NodeSpec,
    child: Option<Child>,
}

impl NodeProc {
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.spec.port)
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.spec.port)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("node is running").id()
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    fn spawn(&mut self) {
        assert!(self.child.is_none(), "node {} already runs", self.spec.id);
        let log = File::options()
            .create(true)
            .append(true)
            .open(&self.spec.log)
            .expect("open the node log");
        let child = self
            .spec
            .command()
            .stdout(log.try_clone().expect("clone log handle"))
            .stderr(log)
            .spawn()
            .expect("spawn tally");
        self.child = Some(child);
    }

    /// Polls `/status` until it answers 200; panics with the log if the
    /// process exits or the bound passes.
    fn wait_ready(&mut self, http: &Http) {
        let url = self.url("/status");
        let deadline = Instant::now() + START_BOUND;
        loop {
            if let Some(status) = self.try_wait() {
                panic!(
                    "node {} exited during start with {status}; log:\n{}",
                    self.spec.id,
                    self.log()
                );
            }
            if let Ok(r) = http.try_request("GET", &url, None, Duration::from_secs(2))
                && r.status == 200
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "node {} not ready within {START_BOUND:?}; log:\n{}",
                self.spec.id,
                self.log()
            );
            std::thread::sleep(STEP);
        }
    }

    /// The exit status if the process has exited (and reaps it).
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        match child.try_wait() {
            Ok(Some(status)) => {
                self.child = None;
                Some(status)
            }
            _ => None,
        }
    }

    pub fn signal(&self, sig: &str) {
        signal(self.pid(), sig);
    }

    /// SIGKILL (after SIGCONT, in case it is stopped) and reap.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = signal_quietly(child.id(), "CONT");
            let _ = child.kill();
            let _ = eintr::wait(&mut child);
        }
    }

    /// Waits up to `bound` for the process to exit; returns its status.
    pub fn wait_exit(&mut self, bound: Duration) -> Option<ExitStatus> {
        let mut status = None;
        wait_until(bound, || {
            status = self.try_wait();
            status.is_some()
        });
        status
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.spec.log).unwrap_or_default()
    }
}

fn signal_quietly(pid: u32, sig: &str) -> std::io::Result<ExitStatus> {
    eintr::status(
        Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(pid.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    )
}

/// A set of nodes on loopback, each with its own port and data folder under
/// one temp folder. Dropping it kills every process, then removes the folder.
pub struct Cluster {
    pub nodes: Vec<NodeProc>,
    pub http: Http,
    dir: TempDir,
}

impl Cluster {
    /// An empty cluster in a fresh temp folder; add nodes with [`Cluster::add`].
    pub fn empty(tag: &str) -> Cluster {
        Cluster {
            nodes: Vec::new(),
            http: Http::new(false),
            dir: TempDir::new(tag),
        }
    }

    /// Starts `n` nodes (ids 1..=n) with [`FAST_SYNC`] (unless `extra` sets
    /// its own sync interval) and `extra` flags and
    /// waits until each answers. No config is posted.
    pub fn start(tag: &str, n: u64, extra: &[&str]) -> Cluster {
        let mut c = Cluster::empty(tag);
        for id in 1..=n {
            let spec = c.spec(id, extra);
            c.add(spec);
        }
        c
    }

    /// Like [`Cluster::start`], then posts the config naming all nodes to
    /// node 1 and waits until every node has adopted it.
    pub fn start_configured(tag: &str, n: u64, extra: &[&str]) -> Cluster {
        let c = Cluster::start(tag, n, extra);
        let r = c.post_config(0, &c.addrs());
        assert_eq!(r.status, 200, "config refused: {r:?}");
        c.wait_config_everywhere(&c.addrs(), Duration::from_secs(10));
        c.wait_peers_known(Duration::from_secs(10));
        c
    }

    /// Waits until every node knows which actor it is and lists all the
    /// others as peers (so replication to each of them has started).
    pub fn wait_peers_known(&self, bound: Duration) {
        let addrs = self.addrs();
        for (i, addr) in addrs.iter().enumerate() {
            eventually(&format!("node {} knows its peers", i + 1), bound, || {
                let url = self.url(i, "/status");
                let s = self
                    .http
                    .try_request("GET", &url, None, Duration::from_secs(2))?
                    .json();
                let mut peers: Vec<String> = s["peers"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|p| p["actor"].as_str().map(String::from))
                    .collect();
                peers.sort();
                let mut want: Vec<String> = addrs.iter().filter(|a| *a != addr).cloned().collect();
                want.sort();
                if s["self"] == addr.as_str() && peers == want {
                    Ok(())
                } else {
                    Err(format!("self {} peers {peers:?}", s["self"]))
                }
            });
        }
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The spec of node `id`: own port, data folder `<dir>/node-<id>`.
    pub fn spec(&self, id: u64, extra: &[&str]) -> NodeSpec {
        let mut args: Vec<String> = Vec::new();
        if !extra.contains(&FAST_SYNC[0]) {
            args.extend(FAST_SYNC.iter().map(|s| s.to_string()));
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        NodeSpec {
            id,
            port: free_port(),
            data_dir: Some(self.dir.path().join(format!("node-{id}"))),
            cwd: self.dir.path().to_path_buf(),
            extra: args,
            log: self.dir.path().join(format!(
                "node-{id}-{}.log",
                UNIQUE.fetch_add(1, Ordering::Relaxed)
            )),
            bin: None,
        }
    }

    /// Spawns a node and waits until it answers; returns its index.
    pub fn add(&mut self, spec: NodeSpec) -> usize {
        let mut node = NodeProc { spec, child: None };
        node.spawn();
        self.nodes.push(node);
        let i = self.nodes.len() - 1;
        self.nodes[i].wait_ready(&self.http);
        i
    }

    /// Restarts node `i` from the same spec (same id, port, data folder).
    pub fn restart(&mut self, i: usize) {
        self.nodes[i].spawn();
        self.nodes[i].wait_ready(&self.http);
    }

    pub fn addrs(&self) -> Vec<String> {
        self.nodes.iter().map(NodeProc::addr).collect()
    }

    pub fn url(&self, i: usize, path: &str) -> String {
        self.nodes[i].url(path)
    }

    pub fn post_config(&self, i: usize, actors: &[String]) -> Resp {
        let body = serde_json::json!({ "actors": actors }).to_string();
        self.http.post(&self.url(i, "/config"), &body)
    }

    pub fn status(&self, i: usize) -> serde_json::Value {
        let r = self.http.get(&self.url(i, "/status"));
        assert_eq!(r.status, 200, "status of node {i}: {r:?}");
        r.json()
    }

    /// `POST /counter/<name>` on node `i`; asserts 200 and returns the value.
    #[track_caller]
    pub fn incr(&self, i: usize, name: &str, amount: u64) -> u128 {
        let r = self.http.post(
            &self.url(i, &format!("/counter/{name}")),
            &amount.to_string(),
        );
        assert_eq!(
            r.status, 200,
            "increment {name} by {amount} on node {i}: {r:?}"
        );
        assert!(r.content_type.starts_with("text/plain"), "{r:?}");
        r.number()
    }

    /// `GET /counter/<name>/value` on node `i`.
    #[track_caller]
    pub fn value(&self, i: usize, name: &str) -> u128 {
        let r = self
            .http
            .get(&self.url(i, &format!("/counter/{name}/value")));
        assert!(r.content_type.starts_with("text/plain"), "{r:?}");
        r.number()
    }

    /// `GET /counter/<name>/consistent_value?timeout=..` on node `i`.
    pub fn consistent(&self, i: usize, name: &str, timeout: &str) -> Resp {
        self.http.request(
            "GET",
            &self.url(
                i,
                &format!("/counter/{name}/consistent_value?timeout={timeout}"),
            ),
            None,
        )
    }

    /// Waits until node `i`'s local value of `name` equals `want`.
    #[track_caller]
    pub fn wait_value(&self, i: usize, name: &str, want: u128, bound: Duration) {
        eventually(
            &format!("node {} value of {name} == {want}", i + 1),
            bound,
            || {
                let url = self.url(i, &format!("/counter/{name}/value"));
                match self
                    .http
                    .try_request("GET", &url, None, Duration::from_secs(2))
                {
                    Ok(r) if r.status == 200 && r.body == want.to_string() => Ok(()),
                    other => Err(format!("{other:?}")),
                }
            },
        );
    }

    /// Waits until every running node's `/status` shows `actors` (same
    /// order, canonical) and all show the same config version.
    pub fn wait_config_everywhere(&self, actors: &[String], bound: Duration) -> u64 {
        eventually("every node has the config", bound, || {
            let mut versions = Vec::new();
            for (i, n) in self.nodes.iter().enumerate() {
                if !n.is_running() {
                    continue;
                }
                let url = self.url(i, "/status");
                let s = self
                    .http
                    .try_request("GET", &url, None, Duration::from_secs(2))?
                    .json();
                let got: Vec<String> = s["config"]["actors"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|x| x.as_str().map(String::from))
                            .collect()
                    })
                    .unwrap_or_default();
                if got != actors {
                    return Err(format!("node {} has actors {got:?}", i + 1));
                }
                versions.push(s["config"]["version"].as_u64().unwrap_or(0));
            }
            if versions.windows(2).any(|w| w[0] != w[1]) {
                return Err(format!("versions differ: {versions:?}"));
            }
            Ok(versions.first().copied().unwrap_or(0))
        })
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let failing = std::thread::panicking();
        for node in &mut self.nodes {
            node.kill();
        }
        if failing {
            for node in &self.nodes {
                let log = node.log();
                let tail: String = log
                    .lines()
                    .rev()
                    .take(40)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect::<Vec<_>>()
                    .join("\n");
                eprintln!(
                    "---- log of node {} (port {}), last lines ----\n{tail}",
                    node.spec.id, node.spec.port
                );
            }
        }
    }
}

/// Runs a process that is expected to fail at start; kills it if it is
/// still running after `bound`. Returns (exit status if it exited, stderr).
/// Only stderr is kept (stdout is discarded).
pub fn run_expecting_exit(
    mut cmd: Command,
    log: &Path,
    bound: Duration,
) -> (Option<ExitStatus>, String) {
    let file = File::create(log).expect("create log");
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(file)
        .spawn()
        .expect("spawn tally");
    let mut status = None;
    wait_until(bound, || {
        status = child.try_wait().ok().flatten();
        status.is_some()
    });
    if status.is_none() {
        let _ = child.kill();
        let _ = eintr::wait(&mut child);
    }
    (status, std::fs::read_to_string(log).unwrap_or_default())
}
