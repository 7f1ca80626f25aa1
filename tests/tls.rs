//! TLS, mutual TLS between peers and client tokens, on real processes:
//! certificates made by `tally cert`, requests made with curl (what an
//! operator uses), certificates and tokens rotated without a restart.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use common::{BIN, TempDir, eintr, eventually, free_port};

const BOUND: Duration = Duration::from_secs(30);

/// Runs `tally` with `args`; panics with its output when it fails.
fn tally(args: &[&str]) -> String {
    let out = output(Command::new(BIN).args(args));
    assert!(
        out.status.success(),
        "tally {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn output(cmd: &mut Command) -> Output {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    eintr::wait_with_output(child).expect("wait")
}

/// What curl got: the HTTP status (0 when no answer) and the body.
#[derive(Debug)]
struct Got {
    status: u16,
    body: String,
    curl_exit: i32,
}

/// One request with curl. `args` come before the URL (e.g. `--cacert`).
fn curl(args: &[&str], url: &str) -> Got {
    let out = output(
        Command::new("curl")
            .args(["-sS", "--max-time", "10", "-o", "-", "-w", "\n%{http_code}"])
            .args(args)
            .arg(url),
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    Got {
        status: code.trim().parse().unwrap_or(0),
        body: body.to_string(),
        curl_exit: out.status.code().unwrap_or(-1),
    }
}

/// A CA and node certificates in one folder.
struct Pki {
    dir: PathBuf,
}

impl Pki {
    fn new(dir: &Path, name: &str) -> Pki {
        let dir = dir.join(name);
        tally(&["cert", "ca", "--out", s(&dir), "--name", name]);
        Pki { dir }
    }

    fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// Makes node `id`'s certificate and key (replacing earlier ones).
    fn node(&self, id: u64) -> (PathBuf, PathBuf) {
        tally(&[
            "cert",
            "node",
            "--ca",
            s(&self.dir),
            "--id",
            &id.to_string(),
            "--host",
            "127.0.0.1",
            "--out",
            s(&self.dir),
            "--force",
        ]);
        (
            self.dir.join(format!("node-{id}.pem")),
            self.dir.join(format!("node-{id}-key.pem")),
        )
    }
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// Node processes, killed on drop.
struct Nodes {
    children: Vec<(u64, Child, PathBuf)>,
}

impl Nodes {
    fn start(&mut self, id: u64, port: u16, dir: &Path, args: &[String]) {
        let log = dir.join(format!("node-{id}.log"));
        let file = std::fs::File::create(&log).expect("log");
        let child = Command::new(BIN)
            .arg(id.to_string())
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--data-dir", s(&dir.join(format!("data-{id}")))])
            .args(["--sync-interval", "200ms"])
            .args(args)
            .env("TALLY_LOG", "info")
            .env_remove("TALLY_SECRET")
            .env_remove("TALLY_SECRET_FILE")
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log"))
            .stderr(file)
            .spawn()
            .expect("spawn tally");
        self.children.push((id, child, log));
    }

    fn pid(&self, id: u64) -> u32 {
        self.children
            .iter()
            .find(|c| c.0 == id)
            .expect("node")
            .1
            .id()
    }

    fn log(&self, id: u64) -> String {
        let path = &self.children.iter().find(|c| c.0 == id).expect("node").2;
        std::fs::read_to_string(path).unwrap_or_default()
    }

    /// Whether node `id` still runs (it was never restarted).
    fn running(&mut self, id: u64) -> bool {
        let child = &mut self
            .children
            .iter_mut()
            .find(|c| c.0 == id)
            .expect("node")
            .1;
        matches!(child.try_wait(), Ok(None))
    }

    fn hup(&self, id: u64) {
        common::signal(self.pid(id), "HUP");
    }

    /// Stops node `id` cleanly (SIGTERM) and forgets its process.
    fn stop(&mut self, id: u64) {
        let i = self.children.iter().position(|c| c.0 == id).expect("node");
        let (_, mut child, _) = self.children.remove(i);
        common::signal(child.id(), "TERM");
        let status = eintr::wait(&mut child).expect("wait");
        assert!(status.success(), "node {id} stopped with {status}");
    }
}

impl Drop for Nodes {
    fn drop(&mut self) {
        for (_, child, _) in &mut self.children {
            let _ = child.kill();
            let _ = eintr::wait(child);
        }
    }
}

fn tls_args(cert: &Path, key: &Path, ca: &Path) -> Vec<String> {
    vec![
        "--tls-cert".into(),
        s(cert).into(),
        "--tls-key".into(),
        s(key).into(),
        "--tls-ca".into(),
        s(ca).into(),
    ]
}

fn url(port: u16, path: &str) -> String {
    format!("https://127.0.0.1:{port}{path}")
}

/// Waits until `port` answers `/livez` over TLS trusting `ca`.
fn wait_live(nodes: &Nodes, id: u64, port: u16, ca: &Path) {
    eventually(&format!("node {id} live over TLS"), BOUND, || {
        let got = curl(&["--cacert", s(ca)], &url(port, "/livez"));
        if got.status == 200 {
            Ok(())
        } else {
            Err(format!("{got:?}; log:\n{}", nodes.log(id)))
        }
    });
}

fn config_body(ports: &[u16]) -> String {
    let actors: Vec<String> = ports.iter().map(|p| format!("\"127.0.0.1:{p}\"")).collect();
    format!("{{\"actors\": [{}]}}", actors.join(", "))
}

#[test]
fn a_tls_cluster_serves_https_and_refuses_plain_http_and_foreign_peers() {
    let dir = TempDir::new("tls");
    let pki = Pki::new(dir.path(), "cluster-ca");
    let other = Pki::new(dir.path(), "other-ca");
    let ca = pki.ca();
    let ports = [free_port(), free_port()];
    let mut nodes = Nodes {
        children: Vec::new(),
    };
    for (i, &port) in ports.iter().enumerate() {
        let id = i as u64 + 1;
        let (cert, key) = pki.node(id);
        nodes.start(id, port, dir.path(), &tls_args(&cert, &key, &ca));
    }
    for (i, &port) in ports.iter().enumerate() {
        wait_live(&nodes, i as u64 + 1, port, &ca);
    }
    let c = ["--cacert", s(&ca)];
    let posted = curl(
        &[&c[..], &["-X", "POST", "-d", &config_body(&ports)]].concat(),
        &url(ports[0], "/config"),
    );
    assert_eq!(posted.status, 200, "{posted:?}");
    let inc = curl(
        &[&c[..], &["-X", "POST", "-d", "5"]].concat(),
        &url(ports[0], "/counter/x"),
    );
    assert_eq!((inc.status, inc.body.as_str()), (200, "5"), "{inc:?}");
    // The consistent read on node 2 hears node 1 over mutual TLS.
    let read = curl(&c, &url(ports[1], "/counter/x/consistent_value"));
    assert_eq!((read.status, read.body.as_str()), (200, "5"), "{read:?}");
    let cli = tally(&[
        "get",
        "x",
        "--consistent",
        "--node",
        &url(ports[1], ""),
        "--cacert",
        s(&ca),
    ]);
    assert_eq!(cli.trim(), "5");

    // Plain HTTP gets no answer.
    let plain = curl(
        &[],
        &format!("http://127.0.0.1:{}/counter/x/value", ports[0]),
    );
    assert_ne!(plain.status, 200, "{plain:?}");
    assert_ne!(plain.body, "5", "{plain:?}");
    // A client without a certificate never reaches the internal route.
    let hello = r#"{"v":2,"from":{"node":2,"incarnation":1},"membership":{"config":{"stamp":{"version":0,"origin":0},"actors":[]}},"req":{"op":"hello"}}"#;
    let rpc = url(ports[0], "/_internal/v1/rpc");
    let anonymous = curl(&[&c[..], &["-X", "POST", "-d", hello]].concat(), &rpc);
    assert_eq!(anonymous.status, 403, "{anonymous:?}");
    // A certificate of another CA ends the handshake.
    let (foreign_cert, foreign_key) = other.node(2);
    let foreign = curl(
        &[
            &c[..],
            &["--cert", s(&foreign_cert), "--key", s(&foreign_key)],
            &["-X", "POST", "-d", hello],
        ]
        .concat(),
        &rpc,
    );
    assert_eq!(foreign.status, 0, "{foreign:?}");
    assert_ne!(foreign.curl_exit, 0, "{foreign:?}");
    // A peer of the cluster speaks only for its own node id: node 2's
    // certificate cannot send a message as node 3 (or as node 1).
    let node2 = (
        dir.path().join("cluster-ca/node-2.pem"),
        dir.path().join("cluster-ca/node-2-key.pem"),
    );
    for (from, want) in [(3, 403), (1, 403), (2, 200)] {
        let msg = hello.replace("\"node\":2", &format!("\"node\":{from}"));
        let got = curl(
            &[
                &c[..],
                &["--cert", s(&node2.0), "--key", s(&node2.1)],
                &["-X", "POST", "-d", &msg],
            ]
            .concat(),
            &rpc,
        );
        assert_eq!(got.status, want, "message from node {from}: {got:?}");
    }
    // Nothing of the above changed the counter.
    let after = curl(&c, &url(ports[0], "/counter/x/consistent_value"));
    assert_eq!((after.status, after.body.as_str()), (200, "5"), "{after:?}");
    // The backup tools speak TLS: a backup over HTTPS, restored over HTTPS.
    let file = dir.path().join("tls.tallybak");
    let https = url(ports[1], "");
    tally(&[
        "backup",
        "--node",
        &https,
        "--cacert",
        s(&ca),
        "-o",
        s(&file),
    ]);
    let restored = tally(&["restore", s(&file), "--node", &https, "--cacert", s(&ca)]);
    assert!(
        restored.contains("merged 1 counters; 0 of them changed"),
        "{restored}"
    );
}

#[test]
fn certificates_and_the_ca_rotate_without_a_restart() {
    let dir = TempDir::new("tls-rotate");
    let old = Pki::new(dir.path(), "old-ca");
    let new = Pki::new(dir.path(), "new-ca");
    // Every node reads its files from one place; rotation rewrites them.
    let live = dir.path().join("live");
    std::fs::create_dir_all(&live).unwrap();
    let bundle = live.join("ca-bundle.pem");
    let install = |pki: &Pki, id: u64| {
        let (cert, key) = pki.node(id);
        // Key first: a reload between the two writes fails to pair them
        // and keeps the old ones, and the next change reloads both.
        std::fs::copy(&key, live.join(format!("node-{id}-key.pem"))).unwrap();
        std::fs::copy(&cert, live.join(format!("node-{id}.pem"))).unwrap();
    };
    let write_bundle = |cas: &[&Pki]| {
        let text: String = cas
            .iter()
            .map(|p| std::fs::read_to_string(p.ca()).unwrap())
            .collect();
        std::fs::write(&bundle, text).unwrap();
    };
    write_bundle(&[&old]);
    let ports = [free_port(), free_port()];
    let mut nodes = Nodes {
        children: Vec::new(),
    };
    for (i, &port) in ports.iter().enumerate() {
        let id = i as u64 + 1;
        install(&old, id);
        let args = tls_args(
            &live.join(format!("node-{id}.pem")),
            &live.join(format!("node-{id}-key.pem")),
            &bundle,
        );
        nodes.start(id, port, dir.path(), &args);
    }
    for (i, &port) in ports.iter().enumerate() {
        wait_live(&nodes, i as u64 + 1, port, &old.ca());
    }
    let with = |pki: &Pki| vec!["--cacert".to_string(), s(&pki.ca()).to_string()];
    let req = |pki: &Pki, extra: &[&str], port: u16, path: &str| {
        let mut args = with(pki);
        args.extend(extra.iter().map(|a| a.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        curl(&args, &url(port, path))
    };
    let posted = req(
        &old,
        &["-X", "POST", "-d", &config_body(&ports)],
        ports[0],
        "/config",
    );
    assert_eq!(posted.status, 200, "{posted:?}");
    let inc = req(&old, &["-X", "POST", "-d", "7"], ports[0], "/counter/r");
    assert_eq!(inc.status, 200, "{inc:?}");

    // 1. Both CAs trusted: the bundle grows, on SIGHUP.
    write_bundle(&[&old, &new]);
    for id in [1, 2] {
        nodes.hup(id);
    }
    // 2. New certificates: node 1 by SIGHUP, node 2 by the file watch.
    install(&new, 1);
    nodes.hup(1);
    install(&new, 2);
    for (i, &port) in ports.iter().enumerate() {
        eventually(
            &format!("node {} serves the new certificate", i + 1),
            BOUND,
            || {
                let got = req(&new, &[], port, "/livez");
                (got.status == 200).then_some(()).ok_or(format!("{got:?}"))
            },
        );
    }
    // Peers, each now presenting a certificate of the new CA, still hear
    // each other: a consistent read must reach both.
    eventually(
        "a consistent read after the new certificates",
        BOUND,
        || {
            let got = req(&new, &[], ports[1], "/counter/r/consistent_value");
            (got.status == 200 && got.body == "7")
                .then_some(())
                .ok_or(format!("{got:?}"))
        },
    );
    // 3. The old CA leaves the bundle.
    write_bundle(&[&new]);
    for id in [1, 2] {
        nodes.hup(id);
    }
    let inc = req(&new, &["-X", "POST", "-d", "1"], ports[1], "/counter/r");
    assert_eq!((inc.status, inc.body.as_str()), (200, "8"), "{inc:?}");
    eventually("a consistent read with the new CA alone", BOUND, || {
        let got = req(&new, &[], ports[0], "/counter/r/consistent_value");
        (got.status == 200 && got.body == "8")
            .then_some(())
            .ok_or(format!("{got:?}"))
    });
    // A client that trusts only the old CA is refused now.
    let stale = req(&old, &[], ports[0], "/livez");
    assert_ne!(stale.status, 200, "{stale:?}");
    // None of it needed a restart.
    assert!(nodes.running(1) && nodes.running(2));
    assert!(nodes.log(1).contains("TLS certificates reloaded"));
    assert!(nodes.log(2).contains("TLS certificates reloaded"));
}

/// The token a `tally token new` printed, and the line for the file.
fn new_token(name: &str, scopes: &str) -> (String, String) {
    let out = tally(&["token", "new", "--name", name, "--scope", scopes]);
    let mut lines = out.lines();
    let token = lines.next().expect("token").to_string();
    let line = lines.next().expect("file line").to_string();
    (token, line)
}

#[test]
fn tokens_gate_each_route_by_scope_and_rotate_on_sighup() {
    let dir = TempDir::new("tokens");
    let (reader, reader_line) = new_token("reader", "read");
    let (writer, writer_line) = new_token("writer", "read,write");
    let (admin, admin_line) = new_token("ops", "read,write,admin");
    let tokens = dir.path().join("tokens");
    std::fs::write(
        &tokens,
        format!("{reader_line}\n{writer_line}\n{admin_line}\n"),
    )
    .unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "a-cluster-secret-of-some-length\n").unwrap();
    let port = free_port();
    let mut nodes = Nodes {
        children: Vec::new(),
    };

    // Tokens while the internal route is open to anyone: refused at start,
    // or a forged internal message would be a write without a token.
    let refused = output(
        Command::new(BIN)
            .args(["9", "--listen", &format!("127.0.0.1:{}", free_port())])
            .args(["--data-dir", s(&dir.path().join("data-9"))])
            .args(["--tokens-file", s(&tokens)])
            .env_remove("TALLY_SECRET")
            .env_remove("TALLY_SECRET_FILE"),
    );
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--tokens-file"));

    let args: Vec<String> = vec![
        "--tokens-file".into(),
        s(&tokens).into(),
        "--secret-file".into(),
        s(&secret).into(),
    ];
    nodes.start(1, port, dir.path(), &args);
    let http = |token: Option<&str>, extra: &[&str], path: &str| {
        let mut a: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        if let Some(t) = token {
            a.push("-H".into());
            a.push(format!("Authorization: Bearer {t}"));
        }
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        curl(&a, &format!("http://127.0.0.1:{port}{path}"))
    };
    eventually("node 1 live", BOUND, || {
        let got = http(None, &[], "/livez");
        (got.status == 200).then_some(()).ok_or(format!("{got:?}"))
    });
    let config = config_body(&[port]);
    let post_config = |token: Option<&str>| {
        http(
            token,
            &[
                "-X",
                "POST",
                "-H",
                "x-tally-secret: a-cluster-secret-of-some-length",
                "-d",
                &config,
            ],
            "/config",
        )
    };
    assert_eq!(post_config(None).status, 401);
    assert_eq!(post_config(Some(&writer)).status, 403);
    assert_eq!(post_config(Some(&admin)).status, 200);
    let inc = |token: Option<&str>| http(token, &["-X", "POST", "-d", "2"], "/counter/t");
    let no_token = inc(None);
    assert_eq!(no_token.status, 401, "{no_token:?}");
    assert!(no_token.body.contains("token"), "{no_token:?}");
    assert_eq!(inc(Some("tally_not-a-token-of-this-node")).status, 401);
    assert_eq!(inc(Some(&reader)).status, 403);
    let ok = inc(Some(&writer));
    assert_eq!((ok.status, ok.body.as_str()), (200, "2"), "{ok:?}");
    for path in [
        "/counter/t/value",
        "/counter/t/consistent_value",
        "/counters",
        "/status",
        "/metrics",
    ] {
        assert_eq!(http(None, &[], path).status, 401, "{path} without a token");
        assert_eq!(
            http(Some(&reader), &[], path).status,
            200,
            "{path} with read"
        );
    }
    for path in ["/livez", "/readyz", "/"] {
        assert_eq!(http(None, &[], path).status, 200, "{path} is open");
    }
    // The refusals went to the audit log, and none of them changed the counter.
    assert_eq!(http(Some(&reader), &[], "/counter/t/value").body, "2");
    eventually("the audit log", BOUND, || {
        let log = nodes.log(1);
        (log.contains("audit") && log.contains("reason=\"scope\""))
            .then_some(())
            .ok_or(log)
    });

    // Backups and restores need an admin token, through the client flags.
    let file = dir.path().join("tokens.tallybak");
    let node = format!("http://127.0.0.1:{port}");
    let backup = |token: &str| {
        output(Command::new(BIN).args([
            "backup",
            "--node",
            &node,
            "-o",
            s(&file),
            "--token",
            token,
        ]))
    };
    let refused = backup(&reader);
    assert_eq!(refused.status.code(), Some(1), "{refused:?}");
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("403"),
        "{refused:?}"
    );
    assert!(!file.exists());
    assert!(backup(&admin).status.success());
    let restore = |token: &str| {
        output(Command::new(BIN).args(["restore", s(&file), "--node", &node, "--token", token]))
    };
    assert_eq!(restore(&writer).status.code(), Some(1));
    assert!(restore(&admin).status.success());

    // Rotation: the writer's token is replaced; SIGHUP puts the file in force.
    let (writer2, writer2_line) = new_token("writer2", "write");
    std::fs::write(
        &tokens,
        format!("{reader_line}\n{writer2_line}\n{admin_line}\n"),
    )
    .unwrap();
    nodes.hup(1);
    eventually("the new tokens in force", BOUND, || {
        let old = inc(Some(&writer));
        let new = inc(Some(&writer2));
        (old.status == 401 && new.status == 200)
            .then_some(())
            .ok_or(format!("old {old:?}, new {new:?}"))
    });
    // A malformed file leaves the tokens in force.
    std::fs::write(&tokens, "this is not a tokens file\n").unwrap();
    nodes.hup(1);
    eventually("the failed reload in the audit log", BOUND, || {
        let log = nodes.log(1);
        log.contains("reload_failed").then_some(()).ok_or(log)
    });
    assert_eq!(inc(Some(&writer2)).status, 200);
    assert!(nodes.running(1));
}

/// TLS turned on in a running cluster, one node at a time, with
/// `--plain-http`: `call` (TLS and plain accepted, peers called plain),
/// then `accept` (peers called over TLS), then TLS only. Each step restarts
/// one node while the other serves; no increment is lost, and every node
/// answers a consistent read after each step.
#[test]
fn tls_is_turned_on_node_by_node_without_an_outage() {
    let dir = TempDir::new("tls-rollout");
    let pki = Pki::new(dir.path(), "ca");
    let ca = pki.ca();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "a-cluster-secret-of-some-length\n").unwrap();
    let ports = [free_port(), free_port()];
    let certs: Vec<(PathBuf, PathBuf)> = (1..=2).map(|id| pki.node(id)).collect();
    let args = |id: u64, mode: Option<&str>| {
        let mut a = vec!["--secret-file".to_string(), s(&secret).to_string()];
        if let Some(mode) = mode {
            let (cert, key) = &certs[id as usize - 1];
            a.extend(tls_args(cert, key, &ca));
            if mode != "tls-only" {
                a.extend(["--plain-http".to_string(), mode.to_string()]);
            }
        }
        a
    };
    let mut nodes = Nodes {
        children: Vec::new(),
    };
    for id in [1, 2] {
        nodes.start(id, ports[id as usize - 1], dir.path(), &args(id, None));
    }
    let plain = |port: u16, extra: &[&str], path: &str| {
        curl(extra, &format!("http://127.0.0.1:{port}{path}"))
    };
    let secure = |port: u16, extra: &[&str], path: &str| {
        let mut a = vec!["--cacert", s(&ca)];
        a.extend_from_slice(extra);
        curl(&a, &url(port, path))
    };
    for &port in &ports {
        eventually("plain node live", BOUND, || {
            let got = plain(port, &[], "/livez");
            (got.status == 200).then_some(()).ok_or(format!("{got:?}"))
        });
    }
    let config = config_body(&ports);
    let posted = plain(
        ports[0],
        &[
            "-X",
            "POST",
            "-H",
            "x-tally-secret: a-cluster-secret-of-some-length",
            "-d",
            &config,
        ],
        "/config",
    );
    assert_eq!(posted.status, 200, "{posted:?}");
    let mut sum = 0u64;
    // One step: node `id` restarts in `mode`; the other keeps counting
    // meanwhile; then both nodes answer a consistent read with the sum.
    let mut step = |nodes: &mut Nodes, id: u64, mode: &str, modes: [&str; 2]| {
        let other = 3 - id;
        let port = ports[id as usize - 1];
        nodes.stop(id);
        // The other node serves alone while this one is down.
        let other_port = ports[other as usize - 1];
        let inc = |port: u16, node_mode: &str| {
            let extra = ["-X", "POST", "-d", "1"];
            if node_mode == "plain" {
                plain(port, &extra, "/counter/roll")
            } else {
                secure(port, &extra, "/counter/roll")
            }
        };
        let got = inc(other_port, modes[other as usize - 1]);
        assert_eq!(got.status, 200, "{got:?}");
        sum += 1;
        nodes.start(id, port, dir.path(), &args(id, Some(mode)));
        wait_live(nodes, id, port, &ca);
        let got = inc(port, mode);
        assert_eq!(got.status, 200, "{got:?}");
        sum += 1;
        for (i, &port) in ports.iter().enumerate() {
            let node_mode = if i as u64 + 1 == id { mode } else { modes[i] };
            let want = sum.to_string();
            eventually(
                &format!(
                    "node {} reads {want} consistently after node {id} went {mode}",
                    i + 1
                ),
                BOUND,
                || {
                    let got = if node_mode == "plain" {
                        plain(port, &[], "/counter/roll/consistent_value")
                    } else {
                        secure(port, &[], "/counter/roll/consistent_value")
                    };
                    (got.status == 200 && got.body == want)
                        .then_some(())
                        .ok_or(format!("{got:?}"))
                },
            );
        }
    };
    step(&mut nodes, 1, "call", ["plain", "plain"]);
    step(&mut nodes, 2, "call", ["call", "plain"]);
    step(&mut nodes, 1, "accept", ["call", "call"]);
    step(&mut nodes, 2, "accept", ["accept", "call"]);
    step(&mut nodes, 1, "tls-only", ["accept", "accept"]);
    step(&mut nodes, 2, "tls-only", ["tls-only", "accept"]);
    // TLS only now: plain HTTP gets no answer from either node.
    for &port in &ports {
        let got = plain(port, &[], "/livez");
        assert_ne!(got.status, 200, "{got:?}");
    }
}
