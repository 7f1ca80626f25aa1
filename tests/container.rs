//! The container image under faults: a three-node cluster of
//! `docker/compose.yaml` (one container per node, one shared data volume,
//! static addresses on a bridge network) is paused, cut off, restarted and
//! killed with Docker's own tools, and every acknowledged increment must be there
//! at the end, on every node, without the config ever being posted again.
//!
//! It needs Docker, a compose tool and the image of `make image`, so plain
//! `cargo test` leaves it out (`#[ignore]`); `make image-test` (part of
//! `make test`) runs it with that image (`TALLY_IMAGE`) and compose command
//! (`TALLY_COMPOSE`). Without a working Docker it fails, unless
//! `TALLY_CONTAINER_SKIP=1` asks to skip it (loudly; never under `CI`).
//!
//! Every Docker command runs with a deadline; the cluster's containers,
//! network and volume are removed by a guard on every exit path, also when
//! an assertion fails (after printing the nodes' last log lines).

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Http, STEP, eintr, eventually, parse_digits};

/// The executable inside the image (the package's layout).
const EXE: &str = "/challenge/bin/challenge-executable";
/// The counter the test increments.
const NAME: &str = "x";
/// Bound on one Docker or compose command that should be quick.
const DOCKER_BOUND: Duration = Duration::from_secs(60);
/// Bound on `compose up` (creating a network, a volume and three containers).
const UP_BOUND: Duration = Duration::from_secs(120);
/// Bound on the cluster healing after a fault: a consistent read answering
/// 200 with everything acknowledged, every node's value converged.
const HEAL_BOUND: Duration = Duration::from_secs(30);
/// Bound on a consistent read with `?timeout=2s` answering at all: it must
/// say 503 well before this when a node cannot be heard from.
const READ_503_BOUND: Duration = Duration::from_secs(10);
/// What `docker restart -t` gives a node to stop: above its own shutdown
/// bound (10 s), as `stop_grace_period` in the compose file.
const STOP_GRACE_SECS: &str = "15";

// ---------------------------------------------------------------------------
// Commands with deadlines

/// What a finished command printed, and whether it exited 0.
struct Ran {
    ok: bool,
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Runs `cmd` to completion or kills it after `bound`. `Err` when it could
/// not be started or ran out of time.
fn run_bounded(mut cmd: Command, bound: Duration) -> Result<Ran, String> {
    let shown = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{shown}: cannot start: {e}"))?;
    // Readers on their own threads, so a chatty command cannot fill a pipe
    // and block while we wait for it to exit.
    let mut out = child.stdout.take().expect("piped stdout");
    let mut err = child.stderr.take().expect("piped stderr");
    let out_reader =
        std::thread::spawn(move || eintr::read_to_string(&mut out).unwrap_or_default());
    let err_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = eintr::read_to_end(&mut err, &mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    });
    let deadline = Instant::now() + bound;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(STEP),
            _ => {
                let _ = child.kill();
                let _ = eintr::wait(&mut child);
                break None;
            }
        }
    };
    let stdout = out_reader.join().unwrap_or_default();
    let stderr = err_reader.join().unwrap_or_default();
    match status {
        Some(status) => Ok(Ran {
            ok: status.success(),
            code: status.code(),
            stdout,
            stderr,
        }),
        None => Err(format!(
            "{shown}: still running after {bound:?}, killed; stderr: {}",
            stderr.trim()
        )),
    }
}

/// `docker ARGS`, which must exit 0 within [`DOCKER_BOUND`]; its stdout.
#[track_caller]
fn docker(args: &[&str]) -> String {
    match run_bounded(docker_cmd(args), DOCKER_BOUND) {
        Ok(ran) if ran.ok => ran.stdout.trim().to_string(),
        Ok(ran) => panic!(
            "docker {args:?} exited {:?}: {}",
            ran.code,
            ran.stderr.trim()
        ),
        Err(e) => panic!("{e}"),
    }
}

// ---------------------------------------------------------------------------
// Prerequisites

/// The image and compose command to test with.
struct Setup {
    image: String,
    compose: Vec<String>,
}

/// What to run with, or `None` (loudly) when Docker is missing and
/// `TALLY_CONTAINER_SKIP=1` asks to skip; otherwise a missing Docker fails.
fn setup() -> Option<Setup> {
    let image = std::env::var("TALLY_IMAGE")
        .unwrap_or_else(|_| format!("tally:{}", env!("CARGO_PKG_VERSION")));
    let missing = match run_bounded(
        docker_cmd(&["info", "--format", "{{.ServerVersion}}"]),
        DOCKER_BOUND,
    ) {
        Ok(ran) if ran.ok => None,
        Ok(ran) => Some(format!(
            "`docker info` failed: {}",
            ran.stderr.trim().trim_end_matches('.')
        )),
        Err(e) => Some(e),
    };
    if let Some(why) = missing {
        let skip = std::env::var("TALLY_CONTAINER_SKIP").is_ok_and(|v| v == "1")
            && std::env::var_os("CI").is_none();
        assert!(
            skip,
            "the container test cannot run: {why}. It needs a running Docker daemon \
             (`make deps` installs Docker and docker-compose on Debian, as root); \
             set TALLY_CONTAINER_SKIP=1 to skip it knowingly"
        );
        common::announce(&format!(
            "!!! container test SKIPPED (not a pass, TALLY_CONTAINER_SKIP=1): {why}"
        ));
        return None;
    }
    let compose = compose_command();
    let mut version = Command::new(&compose[0]);
    version.args(&compose[1..]).arg("version");
    match run_bounded(version, DOCKER_BOUND) {
        Ok(ran) if ran.ok => {}
        Ok(ran) => panic!(
            "the compose command {compose:?} does not work ({}); install docker-compose \
             or set TALLY_COMPOSE",
            ran.stderr.trim()
        ),
        Err(e) => panic!("the compose command {compose:?} does not work: {e}"),
    }
    let found = run_bounded(docker_cmd(&["image", "inspect", &image]), DOCKER_BOUND);
    assert!(
        found.as_ref().is_ok_and(|r| r.ok),
        "image {image} not found: run `make image` (or `make image-test`), or set TALLY_IMAGE"
    );
    Some(Setup { image, compose })
}

/// `docker ARGS`, to run with [`run_bounded`].
fn docker_cmd(args: &[&str]) -> Command {
    let mut cmd = Command::new("docker");
    cmd.args(args);
    cmd
}

/// `TALLY_COMPOSE` as given (split on spaces), else `docker compose` when
/// that works, else `docker-compose` (Debian 12's 1.29).
fn compose_command() -> Vec<String> {
    if let Ok(given) = std::env::var("TALLY_COMPOSE") {
        let words: Vec<String> = given.split_whitespace().map(String::from).collect();
        if !words.is_empty() {
            return words;
        }
    }
    let plugin = run_bounded(docker_cmd(&["compose", "version"]), DOCKER_BOUND);
    if plugin.is_ok_and(|r| r.ok) {
        vec!["docker".into(), "compose".into()]
    } else {
        vec!["docker-compose".into()]
    }
}

// ---------------------------------------------------------------------------
// The cluster

/// A compose project of three nodes, removed with its network and volume
/// when dropped.
struct ComposeCluster {
    compose: Vec<String>,
    project: String,
    image: String,
    /// First three octets of the cluster's /24; node N is `.1N`.
    net: String,
    /// Container ids of node 1, 2, 3.
    ids: Vec<String>,
    /// The Docker network the nodes are on.
    network: String,
    http: Http,
}

impl ComposeCluster {
    /// Brings the cluster up under a unique project name, on a /24 that no
    /// other network uses (another one is tried when Docker says it overlaps).
    fn up(setup: &Setup) -> ComposeCluster {
        let unique = u64::from(std::process::id()) ^ u64::from(nanos());
        let mut last_error = String::new();
        for attempt in 0..6u64 {
            let octet = 100 + (unique.wrapping_add(attempt * 37) % 150);
            let mut cluster = ComposeCluster {
                compose: setup.compose.clone(),
                project: format!("tallytest{}x{attempt}", unique % 1_000_000),
                image: setup.image.clone(),
                net: format!("10.213.{octet}"),
                ids: Vec::new(),
                network: String::new(),
                http: Http::new(false),
            };
            eprintln!(
                "container: project {} ({}), network {}.0/24, compose {:?}",
                cluster.project, cluster.image, cluster.net, cluster.compose
            );
            let ran = run_bounded(cluster.compose_cmd(&["up", "-d"]), UP_BOUND)
                .unwrap_or_else(|e| panic!("compose up: {e}"));
            if ran.ok {
                cluster.ids = (1..=3)
                    .map(|n| {
                        let id = cluster.compose_out(&["ps", "-q", &format!("node{n}")]);
                        assert!(!id.is_empty(), "compose ps -q node{n}: no container");
                        id
                    })
                    .collect();
                cluster.network = docker(&[
                    "inspect",
                    "-f",
                    "{{range $name, $_ := .NetworkSettings.Networks}}{{$name}}{{end}}",
                    &cluster.ids[0],
                ]);
                return cluster;
            }
            last_error = ran.stderr.trim().to_string();
            // `cluster` is dropped here: whatever the failed `up` created goes.
            if !last_error.contains("overlap") {
                break;
            }
            eprintln!("container: {}.0/24 is taken; trying another", cluster.net);
        }
        panic!("compose up failed: {last_error}");
    }

    /// The compose command for this project, with the compose file's settings.
    fn compose_cmd(&self, args: &[&str]) -> Command {
        let file = concat!(env!("CARGO_MANIFEST_DIR"), "/docker/compose.yaml");
        let mut cmd = Command::new(&self.compose[0]);
        cmd.args(&self.compose[1..])
            .args(["-p", &self.project, "-f", file])
            .args(args)
            .env("TALLY_IMAGE", &self.image)
            .env("TALLY_NET", &self.net)
            .env("TALLY_BIND", "127.0.0.1")
            .env("TALLY_LOG", "info");
        // Empty: Docker picks free host ports (read back with `docker port`).
        for n in 1..=3 {
            cmd.env(format!("TALLY_PORT_{n}"), "");
        }
        cmd
    }

    #[track_caller]
    fn compose_out(&self, args: &[&str]) -> String {
        match run_bounded(self.compose_cmd(args), DOCKER_BOUND) {
            Ok(ran) if ran.ok => ran.stdout.trim().to_string(),
            Ok(ran) => panic!(
                "compose {args:?} exited {:?}: {}",
                ran.code,
                ran.stderr.trim()
            ),
            Err(e) => panic!("{e}"),
        }
    }

    fn id(&self, node: usize) -> &str {
        &self.ids[node - 1]
    }

    fn ip(&self, node: usize) -> String {
        format!("{}.1{node}", self.net)
    }

    fn actor(&self, node: usize) -> String {
        format!("{}:7777", self.ip(node))
    }

    /// `path` on node, through the host port Docker published its 7777 on
    /// (asked every time: it may change when the container restarts).
    fn try_url(&self, node: usize, path: &str) -> Result<String, String> {
        let ran = run_bounded(
            docker_cmd(&["port", self.id(node), "7777/tcp"]),
            DOCKER_BOUND,
        )?;
        ran.stdout
            .lines()
            .find_map(|l| l.trim().strip_prefix("127.0.0.1:"))
            .map(|port| format!("http://127.0.0.1:{port}{path}"))
            .ok_or_else(|| {
                format!(
                    "node{node}: no port published on 127.0.0.1: {:?} {:?}",
                    ran.stdout, ran.stderr
                )
            })
    }

    #[track_caller]
    fn url(&self, node: usize, path: &str) -> String {
        self.try_url(node, path).unwrap_or_else(|e| panic!("{e}"))
    }

    /// `challenge-executable ARGS` run inside node's container (as its
    /// user), talking to the node over the container's own loopback: this
    /// reaches a node even while it is cut off from the network, and so
    /// from its published port.
    fn exec(&self, node: usize, args: &[&str]) -> Ran {
        let mut cmd = docker_cmd(&["exec", self.id(node), EXE]);
        cmd.args(args);
        run_bounded(cmd, DOCKER_BOUND).unwrap_or_else(|e| panic!("{e}"))
    }

    /// `GET path` on node; `Err` when no answer came.
    fn get(&self, node: usize, path: &str) -> Result<common::Resp, String> {
        let url = self.try_url(node, path)?;
        self.http
            .try_request("GET", &url, None, Duration::from_secs(12))
    }

    /// Adds `amount` on node over HTTP; it must be acknowledged (G3: a
    /// running node answers increments without waiting on the others).
    #[track_caller]
    fn inc(&self, node: usize, amount: u64, acked: &mut u128) {
        let started = Instant::now();
        let url = self.url(node, &format!("/counter/{NAME}"));
        let resp = self
            .http
            .try_request(
                "POST",
                &url,
                Some(amount.to_string().as_bytes()),
                Duration::from_secs(5),
            )
            .unwrap_or_else(|e| panic!("increment on node{node}: {e}"));
        assert_eq!(
            resp.status, 200,
            "increment of {amount} on node{node}: {resp:?}"
        );
        parse_digits(&resp.body);
        *acked += u128::from(amount);
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "increment on node{node} took {:?}",
            started.elapsed()
        );
    }

    /// Waits until node serves HTTP (`GET /livez` answers 200).
    fn wait_live(&self, node: usize) {
        eventually(&format!("node{node} live"), HEAL_BOUND, || {
            let resp = self.get(node, "/livez")?;
            (resp.status == 200)
                .then_some(())
                .ok_or(format!("{resp:?}"))
        });
    }

    /// Waits until node is ready (`GET /readyz` 200: a config, storage healthy).
    fn wait_ready(&self, node: usize) {
        eventually(&format!("node{node} ready"), HEAL_BOUND, || {
            let resp = self.get(node, "/readyz")?;
            (resp.status == 200)
                .then_some(())
                .ok_or(format!("{resp:?}"))
        });
    }

    /// Waits until a consistent read on node answers 200 with `want`.
    fn wait_consistent(&self, node: usize, want: u128) {
        let started = Instant::now();
        eventually(
            &format!("consistent_value on node{node} = {want}"),
            HEAL_BOUND,
            || {
                let resp = self.get(
                    node,
                    &format!("/counter/{NAME}/consistent_value?timeout=2s"),
                )?;
                match resp.status {
                    200 if parse_digits(&resp.body) == want => Ok(()),
                    200 => {
                        let got = parse_digits(&resp.body);
                        // More than was sent would be an invented increment (G2).
                        assert!(
                            got <= want,
                            "node{node}: consistent_value {got} > {want} sent"
                        );
                        Err(format!("200 {got}"))
                    }
                    _ => Err(format!("{resp:?}")),
                }
            },
        );
        eprintln!(
            "container: node{node} consistent_value = {want} after {:?}",
            started.elapsed()
        );
    }

    /// Waits until node's local value is `want`.
    fn wait_value(&self, node: usize, want: u128) {
        eventually(&format!("value on node{node} = {want}"), HEAL_BOUND, || {
            let resp = self.get(node, &format!("/counter/{NAME}/value"))?;
            match resp.status {
                200 if parse_digits(&resp.body) == want => Ok(()),
                _ => Err(format!("{resp:?}")),
            }
        });
    }

    /// A consistent read on `reader` must answer 503 within
    /// [`READ_503_BOUND`], naming `silent` (and no other node) as unreachable.
    fn assert_read_names(&self, reader: usize, silent: usize) {
        let started = Instant::now();
        let resp = self
            .get(
                reader,
                &format!("/counter/{NAME}/consistent_value?timeout=2s"),
            )
            .unwrap_or_else(|e| panic!("consistent read on node{reader}: {e}"));
        let took = started.elapsed();
        assert!(
            took < READ_503_BOUND,
            "consistent read on node{reader} took {took:?}"
        );
        let body = resp.assert_error(503, &format!("consistent read on node{reader}"));
        let unreachable: Vec<&str> = body["unreachable"]
            .as_array()
            .unwrap_or_else(|| panic!("503 without \"unreachable\": {body}"))
            .iter()
            .filter_map(|a| a.as_str())
            .collect();
        assert_eq!(
            unreachable,
            vec![self.actor(silent).as_str()],
            "consistent read on node{reader}: unreachable nodes"
        );
        eprintln!("container: node{reader}: 503 naming node{silent} after {took:?}");
    }

    /// Prints the last log lines of every node (when a test fails).
    fn print_logs(&self) {
        for (i, id) in self.ids.iter().enumerate() {
            let mut cmd = docker_cmd(&["logs", "--tail", "40", id]);
            cmd.stderr(Stdio::piped());
            if let Ok(ran) = run_bounded(cmd, DOCKER_BOUND) {
                eprintln!(
                    "---- node{} ({id}), last log lines ----\n{}{}",
                    i + 1,
                    ran.stdout,
                    ran.stderr
                );
            }
        }
    }
}

impl Drop for ComposeCluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.print_logs();
        }
        // A paused container is unpaused first, so that it stops cleanly.
        for id in &self.ids {
            let _ = run_bounded(docker_cmd(&["unpause", id]), DOCKER_BOUND);
        }
        let down = run_bounded(
            self.compose_cmd(&["down", "-v", "--remove-orphans", "-t", "5"]),
            UP_BOUND,
        );
        if !down.as_ref().is_ok_and(|r| r.ok) {
            eprintln!(
                "container: compose down failed ({}); removing by label",
                match &down {
                    Ok(r) => r.stderr.trim().to_string(),
                    Err(e) => e.clone(),
                }
            );
        }
        // Whatever `down` left behind (or what a failed `up` made), by the
        // project's label.
        let label = format!("label=com.docker.compose.project={}", self.project);
        for (list, remove) in [
            (vec!["ps", "-aq", "--filter", &label], vec!["rm", "-f"]),
            (
                vec!["network", "ls", "-q", "--filter", &label],
                vec!["network", "rm"],
            ),
            (
                vec!["volume", "ls", "-q", "--filter", &label],
                vec!["volume", "rm", "-f"],
            ),
        ] {
            let Ok(found) = run_bounded(docker_cmd(&list), DOCKER_BOUND) else {
                continue;
            };
            let ids: Vec<&str> = found.stdout.split_whitespace().collect();
            if !ids.is_empty() {
                let mut args = remove.clone();
                args.extend(ids);
                let _ = run_bounded(docker_cmd(&args), DOCKER_BOUND);
            }
        }
    }
}

fn nanos() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0)
}

// ---------------------------------------------------------------------------
// The test

#[test]
#[ignore = "needs Docker and the image of `make image`: `make image-test` runs it"]
fn a_compose_cluster_keeps_every_acknowledged_increment_through_pause_partition_restart_and_crash()
{
    let Some(setup) = setup() else { return };
    let started = Instant::now();
    let version = docker(&[
        "image",
        "inspect",
        "-f",
        "{{index .Config.Labels \"org.opencontainers.image.version\"}}",
        &setup.image,
    ]);
    assert_eq!(
        version,
        env!("CARGO_PKG_VERSION"),
        "{}'s version label",
        setup.image
    );
    let c = ComposeCluster::up(&setup);
    let mut acked: u128 = 0;

    // The image runs as its unprivileged user, from the folder holding
    // challenge/, with the data folders on the one shared volume.
    let mut mounts = Vec::new();
    for n in 1..=3 {
        c.wait_live(n);
        mounts.push(docker(&[
            "inspect",
            "-f",
            "{{range .Mounts}}{{.Type}} {{.Name}} {{.Destination}};{{end}}",
            c.id(n),
        ]));
        let user = docker(&["inspect", "-f", "{{.Config.User}}", c.id(n)]);
        assert_eq!(user, "10001:10001", "node{n}'s user");
        let top = docker(&["top", c.id(n), "-o", "uid,pid,args"]);
        assert!(
            top.lines()
                .skip(1)
                .all(|l| l.split_whitespace().next() == Some("10001")),
            "node{n} runs a process that is not uid 10001:\n{top}"
        );
    }
    assert!(
        mounts[0].starts_with("volume ") && mounts[0].ends_with(" /tally-data;"),
        "node1's mounts: {mounts:?}"
    );
    assert!(
        mounts.iter().all(|m| *m == mounts[0]),
        "the nodes do not share one volume: {mounts:?}"
    );

    // The config, posted once, with the three static addresses.
    let actors: Vec<String> = (1..=3).map(|n| c.ip(n)).collect();
    let body = serde_json::json!({ "actors": actors }).to_string();
    let resp = c
        .http
        .try_request(
            "POST",
            &c.url(1, "/config"),
            Some(body.as_bytes()),
            Duration::from_secs(15),
        )
        .unwrap_or_else(|e| panic!("POST /config: {e}"));
    assert_eq!(resp.status, 200, "POST /config: {resp:?}");
    for n in 1..=3 {
        c.wait_ready(n);
        let status = c.get(n, "/status").unwrap_or_else(|e| panic!("{e}")).json();
        assert_eq!(
            status["data_dir"].as_str(),
            Some(format!("tally-data/node-{n}").as_str()),
            "node{n}'s data folder (under the working folder /, on the shared volume)"
        );
    }
    for n in 1..=3 {
        c.inc(n, n as u64, &mut acked);
    }
    for n in 1..=3 {
        c.wait_consistent(n, acked);
    }
    eprintln!(
        "container: cluster up and configured in {:?}",
        started.elapsed()
    );

    // a. node3 paused (SIGSTOP of its whole cgroup): the others keep
    // acknowledging; a consistent read says 503 naming node3 in time; after
    // the unpause it answers 200 with everything.
    docker(&["pause", c.id(3)]);
    c.inc(1, 10, &mut acked);
    c.inc(2, 20, &mut acked);
    c.assert_read_names(1, 3);
    c.assert_read_names(2, 3);
    docker(&["unpause", c.id(3)]);
    c.wait_consistent(1, acked);

    // b. node3 disconnected from the network. Its published port goes with
    // it (Docker forwards to the container's address on that network), so
    // it is reached with `docker exec`, through its own loopback.
    docker(&["network", "disconnect", &c.network, c.id(3)]);
    c.inc(1, 100, &mut acked);
    c.inc(2, 200, &mut acked);
    let ran = c.exec(3, &["inc", NAME, "300"]);
    assert!(
        ran.ok,
        "inc on the cut-off node3 exited {:?}: {}",
        ran.code, ran.stderr
    );
    parse_digits(ran.stdout.trim());
    acked += 300;
    c.assert_read_names(1, 3);
    // node3 cannot hear from anyone: its consistent read fails (exit 3).
    let ran = c.exec(3, &["get", NAME, "--consistent", "--timeout", "3s"]);
    assert_eq!(
        ran.code,
        Some(3),
        "consistent read on the cut-off node3: stdout {:?}, stderr {:?}",
        ran.stdout,
        ran.stderr
    );
    docker(&["network", "connect", "--ip", &c.ip(3), &c.network, c.id(3)]);
    c.wait_consistent(1, acked);
    c.wait_consistent(3, acked);

    // c. node2 restarted (SIGTERM, a clean stop, then the same id on the
    // same volume and address): it comes back with its config and counters,
    // and nobody posts the config again.
    let before = c.get(2, "/status").unwrap_or_else(|e| panic!("{e}")).json();
    docker(&["restart", "-t", STOP_GRACE_SECS, c.id(2)]);
    c.wait_live(2);
    let logs = {
        let mut cmd = docker_cmd(&["logs", c.id(2)]);
        cmd.stderr(Stdio::piped());
        let ran = run_bounded(cmd, DOCKER_BOUND).unwrap_or_else(|e| panic!("{e}"));
        format!("{}{}", ran.stdout, ran.stderr)
    };
    assert!(
        logs.contains("stop requested") && logs.contains("stopped"),
        "node2 did not log a clean stop on SIGTERM before its restart"
    );
    let after = c.get(2, "/status").unwrap_or_else(|e| panic!("{e}")).json();
    assert_eq!(
        after["config"]["actors"], before["config"]["actors"],
        "node2's config after the restart"
    );
    assert_eq!(
        after["incarnation"], before["incarnation"],
        "node2 kept its data folder"
    );
    c.wait_ready(2);
    c.wait_consistent(2, acked);
    c.inc(2, 1000, &mut acked);

    // And a crash: node1 killed (SIGKILL), then started again.
    let before = c.get(1, "/status").unwrap_or_else(|e| panic!("{e}")).json();
    docker(&["kill", "-s", "KILL", c.id(1)]);
    docker(&["start", c.id(1)]);
    c.wait_live(1);
    let after = c.get(1, "/status").unwrap_or_else(|e| panic!("{e}")).json();
    assert_eq!(
        after["config"]["actors"], before["config"]["actors"],
        "node1's config after the crash"
    );
    assert_eq!(
        after["incarnation"], before["incarnation"],
        "node1 kept its data folder"
    );
    c.wait_ready(1);
    c.inc(1, 2000, &mut acked);

    // d. Every acknowledged increment is everywhere.
    for n in 1..=3 {
        c.wait_consistent(n, acked);
    }
    for n in 1..=3 {
        c.wait_value(n, acked);
    }
    // The image's HEALTHCHECK (`challenge-executable health`) agrees.
    for n in 1..=3 {
        eventually(&format!("node{n} healthy"), HEAL_BOUND, || {
            let health = docker(&["inspect", "-f", "{{.State.Health.Status}}", c.id(n)]);
            (health == "healthy").then_some(()).ok_or(health)
        });
    }
    eprintln!(
        "container: PASS: {acked} acknowledged, on every node, in {:?}",
        started.elapsed()
    );
    let project = c.project.clone();
    drop(c);
    // The guard left nothing behind.
    let label = format!("label=com.docker.compose.project={project}");
    for list in [
        vec!["ps", "-aq", "--filter", &label],
        vec!["network", "ls", "-q", "--filter", &label],
        vec!["volume", "ls", "-q", "--filter", &label],
    ] {
        let left = docker(&list);
        assert!(left.is_empty(), "docker {list:?} after the cleanup: {left}");
    }
}
