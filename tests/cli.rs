//! The command-line client against a real node: each test starts `tally <ID>`
//! as a child process on a free loopback port with its own temporary data
//! folder, runs client commands as separate processes and checks their
//! stdout, stderr and exit codes.
//!
//! Every wait is a bounded poll; a failing test leaves no process running
//! (the [`Node`] guard kills its child on drop) and no folder behind.

#[path = "common/eintr.rs"]
mod eintr;

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const BIN: &str = env!("CARGO_BIN_EXE_tally");
/// Bound on a node answering /status after it was spawned.
const START_BOUND: Duration = Duration::from_secs(10);
/// Bound on one client process (its own default deadline is 15 s; every
/// command here passes a shorter --timeout).
const RUN_BOUND: Duration = Duration::from_secs(10);
const STEP: Duration = Duration::from_millis(20);

static UNIQUE: AtomicU64 = AtomicU64::new(0);

/// A fresh folder under the system temp folder, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let path = std::env::temp_dir().join(format!(
            "tally-cli-{tag}-{}-{nanos}-{}",
            std::process::id(),
            UNIQUE.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&path).expect("create temp folder");
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A running node; killed on drop. Field order drops the child before its folder.
struct Node {
    child: Child,
    addr: String,
    _dir: TempDir,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = eintr::wait(&mut self.child);
    }
}

/// A command whose environment holds no `TALLY_*` variable of the caller's.
fn command() -> Command {
    let mut cmd = Command::new(BIN);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("TALLY_") {
            cmd.env_remove(key);
        }
    }
    cmd
}

/// A loopback port that was free a moment ago.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

/// Starts node `id` and waits until /status answers 200. Retries on another
/// port if the chosen one was taken in the meantime.
fn start_node(id: u64, extra: &[&str]) -> Node {
    let mut last = String::new();
    for _attempt in 0..3 {
        let dir = TempDir::new(&format!("node{id}"));
        let addr = format!("127.0.0.1:{}", free_port());
        let child = command()
            .arg(id.to_string())
            .args(["--listen", &addr, "--data-dir"])
            .arg(dir.0.join("data"))
            .args(extra)
            .env("TALLY_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn tally node");
        let mut node = Node {
            child,
            addr,
            _dir: dir,
        };
        let deadline = Instant::now() + START_BOUND;
        loop {
            if let Ok(Some(status)) = node.child.try_wait() {
                last = format!("node exited with {status}");
                break;
            }
            match raw_get(&node.addr, "/status") {
                Ok((200, _)) => return node,
                Ok((code, body)) => last = format!("/status answered {code}: {body}"),
                Err(e) => last = e,
            }
            if Instant::now() >= deadline {
                panic!(
                    "node {id} at {} not up within {START_BOUND:?}: {last}",
                    node.addr
                );
            }
            std::thread::sleep(STEP);
        }
    }
    panic!("node {id} did not start: {last}");
}

/// One HTTP/1.1 GET over a plain socket, independent of the client under test.
fn raw_get(addr: &str, path: &str) -> Result<(u16, String), String> {
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    raw_exchange(addr, &request)
}

/// `POST path` with body `1` and an `Idempotency-Key` header, over a plain socket.
fn raw_post_with_key(addr: &str, path: &str, key: &str) -> (u16, String) {
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nIdempotency-Key: {key}\r\nContent-Length: 1\r\nConnection: close\r\n\r\n1"
    );
    raw_exchange(addr, &request).expect("an answer")
}

fn raw_exchange(addr: &str, request: &str) -> Result<(u16, String), String> {
    let sock: SocketAddr = addr.parse().map_err(|e| format!("{addr}: {e}"))?;
    let mut stream = eintr::connect_timeout(&sock, Duration::from_secs(1))
        .map_err(|e| format!("connect {addr}: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .and_then(|_| stream.set_write_timeout(Some(Duration::from_secs(5))))
        .map_err(|e| e.to_string())?;
    eintr::write_all(&mut stream, request.as_bytes())
        .map_err(|e| format!("send to {addr}: {e}"))?;
    let mut raw = Vec::new();
    eintr::read_to_end(&mut stream, &mut raw).map_err(|e| format!("read from {addr}: {e}"))?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("no status line in {head:?}"))?;
    Ok((code, body.to_string()))
}

#[derive(Debug)]
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Runs `tally ARGS...` with a bound on its duration.
fn tally(args: &[&str]) -> Run {
    tally_env(args, &[])
}

fn tally_env(args: &[&str], env: &[(&str, &str)]) -> Run {
    let mut cmd = command();
    cmd.args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn tally client");
    let mut out = child.stdout.take().expect("stdout");
    let mut err = child.stderr.take().expect("stderr");
    let out_reader =
        std::thread::spawn(move || eintr::read_to_string(&mut out).unwrap_or_default());
    let err_reader =
        std::thread::spawn(move || eintr::read_to_string(&mut err).unwrap_or_default());
    let deadline = Instant::now() + RUN_BOUND;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for tally client") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = eintr::wait(&mut child);
            panic!("tally {args:?} did not finish within {RUN_BOUND:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    Run {
        code: status.code(),
        stdout: out_reader.join().unwrap_or_default(),
        stderr: err_reader.join().unwrap_or_default(),
    }
}

/// Runs a client command against `node` (adding `--node`, and `--timeout 5s`
/// unless the command has its own).
fn client(node: &Node, args: &[&str]) -> Run {
    let mut all = args.to_vec();
    all.extend(["--node", &node.addr]);
    if !args.contains(&"--timeout") {
        all.extend(["--timeout", "5s"]);
    }
    tally(&all)
}

/// Like [`client`], asserting exit code 0.
fn ok(node: &Node, args: &[&str]) -> String {
    let run = client(node, args);
    assert_eq!(run.code, Some(0), "tally {args:?} failed: {run:?}");
    run.stdout
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text:?}"))
}

#[test]
fn client_commands_against_one_node() {
    let node = start_node(1, &[]);

    // Increments return the new local value; a read returns their sum.
    assert_eq!(ok(&node, &["inc", "visits", "2"]), "2\n");
    assert_eq!(ok(&node, &["inc", "visits", "3"]), "5\n");
    assert_eq!(ok(&node, &["get", "visits"]), "5\n");
    assert_eq!(ok(&node, &["inc", "hits"]), "1\n", "N defaults to 1");
    assert_eq!(
        ok(&node, &["inc", "hits", "--idempotency-key", "k-1"]),
        "2\n"
    );

    // Names are percent-encoded into one path segment.
    assert_eq!(ok(&node, &["inc", "a/b", "4"]), "4\n");
    assert_eq!(ok(&node, &["get", "a/b"]), "4\n");
    assert_eq!(
        raw_get(&node.addr, "/counter/a%2Fb/value").unwrap(),
        (200, "4".to_string()),
        "'a/b' is stored under the name a/b"
    );
    assert_eq!(ok(&node, &["inc", "é ?#%+", "6"]), "6\n");
    assert_eq!(ok(&node, &["get", "é ?#%+"]), "6\n");

    // --json: {"name", "value"} for counter values.
    let v = json(&ok(&node, &["get", "visits", "--json"]));
    assert_eq!(v, serde_json::json!({"name": "visits", "value": 5}));
    let v = json(&ok(&node, &["inc", "a/b", "1", "--json"]));
    assert_eq!(v, serde_json::json!({"name": "a/b", "value": 5}));

    // Before a config a consistent read either answers (a cluster of one)
    // or is incomplete: exit 3 with the best known value, nothing on stdout.
    let before = client(&node, &["get", "visits", "--consistent"]);
    match before.code {
        Some(0) => assert_eq!(before.stdout, "5\n"),
        Some(3) => {
            assert_eq!(before.stdout, "", "{before:?}");
            assert!(
                before.stderr.contains("tally: 503")
                    && before.stderr.contains("best known value: 5"),
                "{before:?}"
            );
        }
        _ => panic!("unexpected consistent read before a config: {before:?}"),
    }

    // The config: changed the first time, unchanged on repeat.
    let first = ok(&node, &["config", &node.addr]);
    assert!(first.contains("changed: true"), "{first}");
    assert!(
        first.contains(&format!("actors:  {}", node.addr)),
        "{first}"
    );
    let again = ok(&node, &["config", &node.addr]);
    assert!(again.contains("changed: false"), "{again}");
    let v = json(&ok(&node, &["config", &node.addr, "--json"]));
    assert_eq!(v["changed"], false);
    assert_eq!(v["actors"], serde_json::json!([node.addr]));

    // A cluster of one: the consistent read is the local value.
    assert_eq!(ok(&node, &["get", "visits", "--consistent"]), "5\n");
    let v = json(&ok(
        &node,
        &["get", "visits", "--consistent", "--timeout", "3s", "--json"],
    ));
    assert_eq!(v, serde_json::json!({"name": "visits", "value": 5}));
    assert_eq!(ok(&node, &["get", "never-seen", "--consistent"]), "0\n");

    // Status, readable and as JSON.
    let status = ok(&node, &["status"]);
    assert!(status.starts_with("node 1,"), "{status}");
    assert!(
        status.contains(&format!("listen:  {}", node.addr)),
        "{status}"
    );
    assert!(status.contains("names:   4"), "{status}");
    let v = json(&ok(&node, &["status", "--json"]));
    assert_eq!(v["id"], 1);

    // The node's error JSON becomes "tally: <status>: <error>" and exit 1.
    let bad = client(&node, &["config", "not an address"]);
    assert_eq!(bad.code, Some(1), "{bad:?}");
    assert_eq!(bad.stdout, "");
    assert!(
        bad.stderr.starts_with("tally: 400 Bad Request: "),
        "{bad:?}"
    );
    let bad = client(&node, &["config", "not an address", "--json"]);
    assert_eq!(bad.code, Some(1), "{bad:?}");
    assert!(json(&bad.stdout)["error"].is_string(), "{bad:?}");

    // Bad usage is refused before anything is sent.
    for args in [&["inc", "visits", "-3"][..], &["inc", ""], &["get"]] {
        let run = client(&node, args);
        assert_eq!(run.code, Some(2), "{args:?}: {run:?}");
        assert_eq!(run.stdout, "");
    }
    assert_eq!(ok(&node, &["get", "visits"]), "5\n");

    // Listing: only where the node has GET /counters.
    match raw_get(&node.addr, "/counters?limit=1") {
        Ok((200, _)) => {
            let all = ok(&node, &["ls"]);
            let lines: Vec<&str> = all.lines().collect();
            assert_eq!(lines.len(), 4, "{all}");
            for (name, value) in [("a/b", 5), ("hits", 2), ("visits", 5)] {
                assert!(
                    lines
                        .iter()
                        .any(|l| l.starts_with(name) && l.ends_with(&format!(" {value}"))),
                    "{name} = {value} missing in\n{all}"
                );
            }
            let v = json(&ok(&node, &["ls", "vis", "--json"]));
            assert_eq!(
                v["counters"],
                serde_json::json!([{"name": "visits", "value": 5}])
            );
            let page = client(&node, &["ls", "--limit", "1"]);
            assert_eq!(page.code, Some(0), "{page:?}");
            assert_eq!(page.stdout.lines().count(), 1, "{page:?}");
            assert!(page.stderr.contains("--after"), "{page:?}");
            let v = json(&ok(&node, &["ls", "--limit", "1", "--json"]));
            let next = v["next"].as_str().expect("a next name").to_string();
            let rest = ok(&node, &["ls", "--after", &next]);
            assert_eq!(rest.lines().count(), 3, "{rest}");
        }
        Ok((404, _)) => {
            let run = client(&node, &["ls"]);
            assert_eq!(run.code, Some(1), "{run:?}");
            assert_eq!(run.stdout, "");
            assert!(
                run.stderr
                    .starts_with("tally: 404 Not Found: this node does not list counters"),
                "{run:?}"
            );
        }
        other => panic!("unexpected answer to GET /counters: {other:?}"),
    }
}

#[test]
fn a_closed_port_is_unreachable() {
    let addr = format!("127.0.0.1:{}", free_port());
    for args in [
        &["inc", "x"][..],
        &["get", "x", "--consistent"],
        &["status", "--json"],
        &["config", "10.0.0.1"],
        &["ls"],
    ] {
        let mut all = args.to_vec();
        all.extend(["--node", &addr, "--timeout", "3s"]);
        let run = tally(&all);
        assert_eq!(run.code, Some(2), "{all:?}: {run:?}");
        assert_eq!(run.stdout, "", "{all:?}");
        assert!(
            run.stderr
                .starts_with(&format!("tally: cannot reach http://{addr}: ")),
            "{all:?}: {run:?}"
        );
    }
    // The node address also comes from TALLY_NODE.
    let run = tally_env(&["get", "x", "--timeout", "3s"], &[("TALLY_NODE", &addr)]);
    assert_eq!(run.code, Some(2), "{run:?}");
    assert!(run.stderr.contains("cannot reach"), "{run:?}");
}

#[test]
fn config_sends_the_secret() {
    let node = start_node(2, &["--secret", "s3cret"]);
    let denied = client(&node, &["config", &node.addr]);
    assert_eq!(denied.code, Some(1), "{denied:?}");
    assert!(denied.stderr.starts_with("tally: 401"), "{denied:?}");
    let wrong = client(&node, &["config", &node.addr, "--secret", "nope"]);
    assert_eq!(wrong.code, Some(1), "{wrong:?}");
    assert!(wrong.stderr.starts_with("tally: 403"), "{wrong:?}");
    let first = ok(&node, &["config", &node.addr, "--secret", "s3cret"]);
    assert!(first.contains("changed: true"), "{first}");
    let run = tally_env(
        &[
            "config",
            &node.addr,
            "--node",
            &node.addr,
            "--timeout",
            "5s",
        ],
        &[("TALLY_SECRET", "s3cret")],
    );
    assert_eq!(run.code, Some(0), "{run:?}");
    assert!(run.stdout.contains("changed: false"), "{run:?}");
    let status = ok(&node, &["status"]);
    assert!(status.starts_with("node 2,"), "{status}");
}

#[test]
fn help_documents_every_client_flag() {
    let top = tally(&["--help"]);
    assert_eq!(top.code, Some(0));
    for word in [
        "inc",
        "get",
        "status",
        "config",
        "ls",
        "TALLY_NODE",
        "TALLY_SECRET",
    ] {
        assert!(top.stdout.contains(word), "{word} missing in --help");
    }
    for (cmd, flags) in [
        ("inc", &["--idempotency-key"][..]),
        ("get", &["--consistent"]),
        ("status", &[]),
        ("config", &["<ADDR>..."]),
        ("ls", &["--limit", "--after", "[PREFIX]"]),
    ] {
        let help = tally(&[cmd, "--help"]);
        assert_eq!(help.code, Some(0), "{cmd}");
        for flag in flags.iter().chain(&[
            "--node",
            "TALLY_NODE",
            "--json",
            "--secret",
            "TALLY_SECRET",
            "--timeout",
        ]) {
            assert!(
                help.stdout.contains(flag),
                "{flag} missing in `tally {cmd} --help`"
            );
        }
    }
}

/// `tally config` waits until every node holds the config; when one cannot
/// be reached it reports it as pending at its deadline and exits 3.
#[test]
fn config_waits_for_every_node_and_reports_the_pending_ones() {
    let node = start_node(1, &[]);
    let stored = ok(&node, &["config", &node.addr]);
    assert!(
        stored.contains(&format!("stored:  {}", node.addr)),
        "{stored}"
    );
    assert!(!stored.contains("pending"), "{stored}");
    // A second actor on a port where nothing listens never stores it.
    let silent = format!("127.0.0.1:{}", free_port());
    let started = Instant::now();
    let run = client(&node, &["config", &node.addr, &silent, "--timeout", "3s"]);
    assert_eq!(run.code, Some(3), "{run:?}");
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "bounded by --timeout"
    );
    assert!(run.stdout.contains("changed: true"), "{run:?}");
    assert!(
        run.stdout.contains(&format!("pending: {silent}")),
        "{run:?}"
    );
    assert!(
        run.stderr.contains("applied and keeps spreading") && run.stderr.contains(&silent),
        "{run:?}"
    );
    // Removing it again: the leaver never answers, so its hand-off stays
    // open, and consistent reads wait for it.
    let run = client(&node, &["config", &node.addr, "--timeout", "2s"]);
    assert_eq!(run.code, Some(3), "{run:?}");
    assert!(
        run.stdout
            .contains(&format!("leaving: {silent} (handing off)")),
        "{run:?}"
    );
    let read = client(&node, &["get", "x", "--consistent", "--timeout", "2s"]);
    assert_eq!(read.code, Some(3), "{read:?}");
    // Forgetting it (it never was a node) ends the wait.
    let run = client(&node, &["config", &node.addr, "--forget", &silent]);
    assert_eq!(run.code, Some(0), "{run:?}");
    assert!(run.stdout.contains("changed: true"), "{run:?}");
    assert!(!run.stdout.contains("leaving"), "{run:?}");
    assert_eq!(ok(&node, &["get", "x", "--consistent"]), "0\n");
}

/// The client and the node apply one rule to idempotency keys: the longest
/// key one accepts, the other accepts, and one byte more both refuse.
#[test]
fn client_and_node_agree_on_idempotency_keys() {
    let node = start_node(1, &[]);
    let longest = "k".repeat(tally::input::MAX_KEY_LEN);
    let ok_run = client(&node, &["inc", "keyed", "1", "--idempotency-key", &longest]);
    assert_eq!(ok_run.code, Some(0), "{ok_run:?}");
    let again = client(&node, &["inc", "keyed", "1", "--idempotency-key", &longest]);
    assert_eq!(again.stdout, "1\n", "a replay: {again:?}");
    let too_long = format!("{longest}k");
    let refused = client(
        &node,
        &["inc", "keyed", "1", "--idempotency-key", &too_long],
    );
    assert_eq!(refused.code, Some(2), "refused by the client: {refused:?}");
    assert!(refused.stderr.contains("1 to 128"), "{refused:?}");
    // The node says the same of the same key.
    let (status, body) = raw_post_with_key(&node.addr, "/counter/keyed", &too_long);
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("1 to 128"), "{body}");
}

/// Polls `check` every [`STEP`] until it returns `Some`, or panics after `bound`.
fn await_some<T>(bound: Duration, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + bound;
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(Instant::now() < deadline, "{what}: not within {bound:?}");
        std::thread::sleep(STEP);
    }
}

/// `tally health` follows `/readyz` (and `/livez` with --live) and exits 0
/// or 1 only: 1 for a node without config and for one that cannot be reached.
#[test]
fn health_exits_0_when_ready_and_1_otherwise() {
    let node = start_node(1, &[]);
    assert_eq!(raw_get(&node.addr, "/livez").unwrap().0, 200);
    let (code, body) = raw_get(&node.addr, "/readyz").unwrap();
    assert_eq!(code, 503, "{body}");
    assert_eq!(
        json(&body)["reasons"],
        serde_json::json!(["no config posted yet"])
    );

    let unready = client(&node, &["health"]);
    assert_eq!(unready.code, Some(1), "{unready:?}");
    assert!(
        unready.stderr.contains("not ready: no config posted yet"),
        "{unready:?}"
    );
    let live = client(&node, &["health", "--live"]);
    assert_eq!(
        (live.code, live.stdout.as_str()),
        (Some(0), "live\n"),
        "{live:?}"
    );
    let closed = format!("127.0.0.1:{}", free_port());
    let down = tally(&["health", "--node", &closed, "--timeout", "2s"]);
    assert_eq!(down.code, Some(1), "{down:?}");
    assert!(down.stderr.contains("cannot reach"), "{down:?}");

    ok(&node, &["config", &node.addr]);
    let ready = await_some(Duration::from_secs(10), "ready after config", || {
        let run = client(&node, &["health"]);
        (run.code == Some(0)).then_some(run)
    });
    assert_eq!(ready.stdout, "ready\n");
    let (code, body) = raw_get(&node.addr, "/readyz").unwrap();
    assert_eq!((code, json(&body)["status"].as_str()), (200, Some("ready")));
}

/// `tally status --cluster` asks every actor of the node's config and shows
/// the one it cannot reach; `GET /status/cluster` gathers the same server-side.
#[test]
fn cluster_status_names_every_actor_and_the_unreachable_one() {
    let a = start_node(1, &[]);
    let b = start_node(2, &[]);
    let gone = format!("127.0.0.1:{}", free_port());
    // The third actor never answers: the config is applied and keeps spreading (exit 3).
    let posted = client(&a, &["config", &a.addr, &b.addr, &gone, "--timeout", "2s"]);
    assert_eq!(posted.code, Some(3), "{posted:?}");
    await_some(Duration::from_secs(10), "b holds the config", || {
        let status = json(&raw_get(&b.addr, "/status").ok()?.1);
        (status["config"]["actors"].as_array()?.len() == 3).then_some(())
    });

    let table = client(&a, &["status", "--cluster"]);
    assert_eq!(table.code, Some(3), "{table:?}");
    assert!(
        table.stderr.contains("1 of 3 nodes could not be asked"),
        "{table:?}"
    );
    let row = |addr: &str| -> String {
        table
            .stdout
            .lines()
            .find(|l| l.split_whitespace().nth(1) == Some(addr))
            .unwrap_or_else(|| panic!("no row for {addr} in\n{}", table.stdout))
            .to_string()
    };
    assert!(row(&a.addr).contains(" yes"), "{}", table.stdout);
    assert!(row(&b.addr).contains(" yes"), "{}", table.stdout);
    assert!(row(&gone).contains(" no"), "{}", table.stdout);
    assert!(
        table.stdout.contains(&format!("  {gone}: ")),
        "the reason is shown: {}",
        table.stdout
    );

    let run = client(&a, &["status", "--cluster", "-o", "json"]);
    let report = json(&run.stdout);
    let nodes = report["nodes"].as_array().expect("nodes");
    let seen: Vec<(&str, bool)> = nodes
        .iter()
        .map(|n| (n["actor"].as_str().unwrap(), n["reachable"] == true))
        .collect();
    assert_eq!(
        seen,
        [
            (a.addr.as_str(), true),
            (b.addr.as_str(), true),
            (gone.as_str(), false)
        ]
    );
    assert_eq!(nodes[1]["status"]["id"], 2);

    let (code, body) = raw_get(&b.addr, "/status/cluster?timeout=1s").unwrap();
    assert_eq!(code, 200, "{body}");
    let server = json(&body);
    assert_eq!(server["from"], 2);
    let rows = server["nodes"].as_array().expect("nodes");
    assert_eq!(rows.len(), 3);
    assert_eq!(rows[1]["me"], true);
    assert_eq!(rows[0]["status"]["id"], 1);
    assert_eq!(rows[2]["reachable"], false);
    assert!(rows[2]["error"].is_string(), "{body}");
    let (code, body) = raw_get(&b.addr, "/status/cluster?timeout=soon").unwrap();
    assert_eq!(code, 400, "{body}");
}

/// Reads ask the next node when one cannot be reached; increments never do.
#[test]
fn reads_fail_over_to_the_next_node_but_increments_do_not() {
    let node = start_node(1, &[]);
    let closed = format!("127.0.0.1:{}", free_port());
    ok(&node, &["inc", "x", "4"]);
    let nodes = format!("{closed},{}", node.addr);
    let read = tally_env(&["get", "x", "--timeout", "5s"], &[("TALLY_NODES", &nodes)]);
    assert_eq!(
        (read.code, read.stdout.as_str()),
        (Some(0), "4\n"),
        "{read:?}"
    );
    assert!(
        read.stderr.contains("asked the next node instead"),
        "{read:?}"
    );

    let inc = tally(&[
        "inc",
        "x",
        "1",
        "--node",
        &closed,
        "--node",
        &node.addr,
        "--timeout",
        "3s",
    ]);
    assert_eq!(inc.code, Some(2), "{inc:?}");
    assert!(inc.stderr.contains(&closed), "{inc:?}");
    assert_eq!(
        ok(&node, &["get", "x"]),
        "4\n",
        "the increment went nowhere else"
    );
}

/// Completions and the manual page come from the same definitions as --help.
#[test]
fn completions_and_the_manual_page_print() {
    for (shell, marker) in [
        ("bash", "complete -F _tally"),
        ("zsh", "#compdef tally"),
        ("fish", "complete -c tally"),
    ] {
        let run = tally(&["completion", shell]);
        assert_eq!(run.code, Some(0), "{shell}: {run:?}");
        assert!(run.stdout.contains(marker), "{shell}: {}", run.stdout);
        assert!(run.stdout.contains("consistent"), "{shell}");
    }
    assert_eq!(tally(&["completion", "tcsh"]).code, Some(2));
    let man = tally(&["man"]);
    assert_eq!(man.code, Some(0), "{man:?}");
    assert!(
        man.stdout.starts_with(".ie") || man.stdout.contains(".TH tally"),
        "{}",
        man.stdout
    );
    for word in ["TALLY_LISTEN", "consistent", "completion"] {
        assert!(
            man.stdout.contains(word),
            "{word} missing in the manual page"
        );
    }
}

/// An invalid --log filter stops the node with a message instead of logging
/// at some other level; --log-format json writes one JSON object per line.
#[test]
fn log_filter_and_format() {
    let dir = TempDir::new("log");
    let bad = tally(&[
        "1",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        dir.0.join("d").to_str().unwrap(),
        "--log",
        "tally=loud",
    ]);
    assert_eq!(bad.code, Some(2), "{bad:?}");
    assert!(bad.stderr.contains("invalid --log"), "{bad:?}");

    let mut child = command()
        .args([
            "1",
            "--listen",
            "127.0.0.1:0",
            "--log-format",
            "json",
            "--data-dir",
        ])
        .arg(dir.0.join("d"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn node");
    let mut err = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(&mut err).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let first = rx.recv_timeout(Duration::from_secs(10));
    let _ = child.kill();
    let _ = eintr::wait(&mut child);
    let line = first.expect("a log line");
    let v = json(&line);
    assert!(
        v["level"].is_string() && v["fields"]["message"].is_string(),
        "{line}"
    );
}

/// Under systemd (NOTIFY_SOCKET set), the node reports READY=1 once it
/// listens and STOPPING=1 when asked to stop.
#[test]
fn systemd_hears_ready_and_stopping() {
    use std::os::unix::net::UnixDatagram;
    let dir = TempDir::new("notify");
    let sock_path = dir.0.join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).expect("bind notify socket");
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("read timeout");
    let mut child = command()
        .args(["1", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.0.join("d"))
        .env("NOTIFY_SOCKET", &sock_path)
        .env("TALLY_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn node");
    let mut heard = String::new();
    let mut buf = [0u8; 512];
    let deadline = Instant::now() + Duration::from_secs(10);
    while !heard.contains("READY=1") && Instant::now() < deadline {
        if let Ok(n) = eintr::retry(|| sock.recv(&mut buf)) {
            heard.push_str(&String::from_utf8_lossy(&buf[..n]));
            heard.push('\n');
        }
    }
    assert!(heard.contains("READY=1"), "{heard:?}");
    assert!(heard.contains("STATUS=serving on 127.0.0.1:"), "{heard:?}");
    // SAFETY: kill has no memory preconditions; the pid is our own child's.
    let pid = i32::try_from(child.id()).expect("pid");
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let mut stopping = false;
    while !stopping && Instant::now() < deadline + Duration::from_secs(10) {
        match eintr::retry(|| sock.recv(&mut buf)) {
            Ok(n) => stopping = String::from_utf8_lossy(&buf[..n]).contains("STOPPING=1"),
            Err(_) => break,
        }
    }
    let status = eintr::wait(&mut child).expect("wait");
    assert!(stopping, "no STOPPING=1 after SIGTERM");
    assert!(status.success(), "{status:?}");
}

/// A node whose stderr is a closed pipe (its log reader went away) keeps
/// serving and still stops cleanly on SIGTERM: a log line it cannot write
/// is dropped, it does not take the task that logged it down with it.
#[test]
fn a_node_outlives_its_log_reader() {
    let dir = TempDir::new("epipe");
    let addr = format!("127.0.0.1:{}", free_port());
    let mut child = command()
        .args(["1", "--listen", &addr, "--data-dir"])
        .arg(dir.0.join("d"))
        .env("TALLY_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn node");
    let err = child.stderr.take().expect("stderr");
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(err));
    // Wait until it listens, then close the pipe's only reader.
    let listening = lines
        .by_ref()
        .take(20)
        .any(|l| l.is_ok_and(|l| l.contains("listening")));
    assert!(listening, "no `listening` line");
    drop(lines);

    // Posting a config logs at info, into the closed pipe.
    let body = format!(r#"{{"actors":["{addr}"]}}"#);
    let config = format!(
        "POST /config HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let (code, body) = raw_exchange(&addr, &config).expect("config answered");
    assert_eq!(code, 200, "{body}");
    let (code, _) = await_some(Duration::from_secs(10), "ready", || {
        raw_get(&addr, "/readyz").ok().filter(|(c, _)| *c == 200)
    });
    assert_eq!(code, 200);
    let (code, body) = raw_post_with_key(&addr, "/counter/x", "k1");
    assert_eq!((code, body.as_str()), (200, "1"));

    // SIGTERM is logged too, and must still stop the node, cleanly.
    let pid = i32::try_from(child.id()).expect("pid");
    // SAFETY: kill has no memory preconditions; the pid is our own child's.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let status = await_some(Duration::from_secs(20), "exit after SIGTERM", || {
        child.try_wait().expect("try_wait")
    });
    assert!(status.success(), "{status:?}");
}
