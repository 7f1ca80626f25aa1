//! `tally demo` driven through a pipe, as a script would: the commands,
//! what they print, and what becomes of the data folder.
//!
//! Each test runs the demo in a process group of its own, so that a failing
//! test kills the demo and every node it started (the [`Demo`] guard), and
//! points the demo's temporary folder at a [`TempDir`] that is removed
//! whatever happens. Every wait is a bounded poll of the demo's output.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{BIN, STEP, TempDir, free_port};

/// Bound on the demo starting its nodes, posting the config and printing its intro.
const START_BOUND: Duration = Duration::from_secs(60);
/// Bound on one command's answer (a `get` waits 2 s for a consistent read).
const ANSWER_BOUND: Duration = Duration::from_secs(15);
/// Bound on the demo ending after `quit` (nodes get 12 s to stop cleanly).
const EXIT_BOUND: Duration = Duration::from_secs(30);
/// Bound on one run of curl or of the command-line client.
const CLIENT_BOUND: Duration = Duration::from_secs(20);

/// A running `tally demo`, its output collected line by line.
struct Demo {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Arc<Mutex<Vec<String>>>,
    /// How many lines earlier waits have consumed.
    seen: usize,
}

impl Demo {
    fn start(tmp: &Path, args: &[&str]) -> Demo {
        let mut child = Command::new(BIN)
            .arg("demo")
            .args(args)
            .env("TMPDIR", tmp)
            .env_remove("TALLY_LOG")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .expect("start tally demo");
        let lines = Arc::new(Mutex::new(Vec::new()));
        for stream in [
            Box::new(child.stdout.take().expect("stdout")) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().expect("stderr")),
        ] {
            let lines = lines.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines() {
                    let Ok(line) = line else { return };
                    lines.lock().unwrap_or_else(|p| p.into_inner()).push(line);
                }
            });
        }
        let stdin = child.stdin.take();
        Demo {
            child,
            stdin,
            lines,
            seen: 0,
        }
    }

    fn send(&mut self, command: &str) {
        let stdin = self.stdin.as_mut().expect("stdin still open");
        writeln!(stdin, "{command}").expect("write a command");
        stdin.flush().expect("flush a command");
    }

    fn output(&self) -> String {
        self.lines
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .join("\n")
    }

    /// The next line (after those already consumed) that contains `needle`.
    fn wait_for(&mut self, needle: &str, bound: Duration) -> String {
        let deadline = Instant::now() + bound;
        loop {
            {
                let lines = self.lines.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(k) = lines[self.seen..].iter().position(|l| l.contains(needle)) {
                    self.seen += k + 1;
                    return lines[self.seen - 1].clone();
                }
            }
            if Instant::now() >= deadline {
                panic!(
                    "no line with {needle:?} within {bound:?}; output:\n{}",
                    self.output()
                );
            }
            std::thread::sleep(STEP);
        }
    }

    /// Waits until some line, consumed or not, is a live line of node
    /// `id` in `state` (the view prints it when the state changes).
    fn wait_live(&self, id: u64, state: &str, bound: Duration) {
        let prefix = format!("] node {id}  ");
        let deadline = Instant::now() + bound;
        loop {
            {
                let lines = self.lines.lock().unwrap_or_else(|p| p.into_inner());
                let padded = format!("  {state}  ");
                let last = format!("  {state}");
                if lines
                    .iter()
                    .any(|l| l.contains(&prefix) && (l.contains(&padded) || l.ends_with(&last)))
                {
                    return;
                }
            }
            if Instant::now() >= deadline {
                panic!(
                    "no live line of node {id} {state} within {bound:?}; output:\n{}",
                    self.output()
                );
            }
            std::thread::sleep(STEP);
        }
    }

    /// Sends `command` until its answer line contains `want`, a few times
    /// (a node just resumed or healed may need a moment to be heard from).
    fn until(&mut self, command: &str, answer: &str, want: &str) -> String {
        let mut last = String::new();
        for _ in 0..5 {
            self.send(command);
            last = self.wait_for(answer, ANSWER_BOUND);
            if last.contains(want) {
                return last;
            }
        }
        panic!(
            "{command:?} never answered {want:?}; last: {last}\noutput:\n{}",
            self.output()
        );
    }

    /// `quit`, then the exit status.
    fn quit(&mut self) -> ExitStatus {
        self.send("quit");
        let deadline = Instant::now() + EXIT_BOUND;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status;
            }
            if Instant::now() >= deadline {
                panic!(
                    "the demo did not end within {EXIT_BOUND:?}; output:\n{}",
                    self.output()
                );
            }
            std::thread::sleep(STEP);
        }
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        // The nodes are in the demo's process group: kill them all.
        if let Ok(pgid) = libc::pid_t::try_from(self.child.id()) {
            // SAFETY: kill(2) on our own child's process group.
            unsafe {
                libc::kill(-pgid, libc::SIGCONT);
                libc::kill(-pgid, libc::SIGKILL);
            }
        }
        let _ = self.child.wait();
    }
}

/// A base port such that the demo's actor ports (BASE..BASE+2) and node
/// ports (BASE+10..BASE+12) were all free a moment ago.
fn free_base() -> u16 {
    // Blocks handed out in this process, so that two tests running at once
    // cannot get overlapping blocks.
    static GIVEN: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    for _ in 0..200 {
        let base = free_port();
        let mut given = GIVEN.lock().unwrap_or_else(|p| p.into_inner());
        if given.iter().any(|b| b.abs_diff(base) <= 13) {
            continue;
        }
        let all_free = (0..3)
            .flat_map(|i| [base + i, base + 10 + i])
            .all(|p| TcpListener::bind(("127.0.0.1", p)).is_ok());
        if all_free {
            given.push(base);
            return base;
        }
    }
    panic!("no free block of ports");
}

/// What a finished client command printed, and how it exited.
struct Ran {
    ok: bool,
    stdout: String,
    stderr: String,
}

/// Runs `cmd` to its end, killing it after [`CLIENT_BOUND`] (a panic then).
/// Its output is small, so the pipes cannot fill while it runs.
fn run_bounded(mut cmd: Command) -> Ran {
    let shown = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{shown}: cannot start: {e}"));
    let deadline = Instant::now() + CLIENT_BOUND;
    while child.try_wait().ok().flatten().is_none() {
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{shown}: still running after {CLIENT_BOUND:?}");
        }
        std::thread::sleep(STEP);
    }
    let out = child
        .wait_with_output()
        .expect("the output of a finished command");
    Ran {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// curl with `args`, its own deadline below [`CLIENT_BOUND`], and no proxy
/// from the environment.
fn curl(args: &[&str]) -> Ran {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", "10", "--noproxy", "*"])
        .args(args);
    run_bounded(cmd)
}

/// The word after `flag ` in `line`.
fn word_after<'a>(line: &'a str, flag: &str) -> &'a str {
    let rest = line
        .split_once(&format!("{flag} "))
        .unwrap_or_else(|| panic!("no {flag} in {line:?}"))
        .1;
    rest.split_whitespace().next().expect("a word")
}

/// The folder named on the intro's `data:` line.
fn data_folder(line: &str) -> PathBuf {
    let rest = line.split_once("data: ").expect("a data line").1;
    PathBuf::from(rest.split(" (").next().expect("a path"))
}

#[test]
fn the_demo_shows_pause_kill_restart_and_isolation() {
    let tmp = TempDir::new("demo");
    let base = free_base();
    let mut demo = Demo::start(
        tmp.path(),
        &["--base-port", &base.to_string(), "--with-load"],
    );
    demo.wait_for("every node found itself through its proxy", START_BOUND);
    let data = data_folder(&demo.wait_for("data: ", ANSWER_BOUND));
    assert!(data.starts_with(tmp.path()), "{}", data.display());
    assert!(data.join("node-1").is_dir(), "{}", data.display());
    demo.wait_for("type `help` for the commands", ANSWER_BOUND);
    let node2 = format!("node 2 (127.0.0.1:{})", base + 1);

    demo.send("inc visits 5 on 1");
    demo.wait_for(
        "inc visits 5 on node 1: acknowledged; node 1's value is now 5",
        ANSWER_BOUND,
    );

    // A paused node: consistent reads name it, local ones still answer.
    demo.send("pause 2");
    demo.wait_for("node 2 is paused", ANSWER_BOUND);
    demo.send("get visits on 1");
    let got = demo.wait_for("get visits on node 1:", ANSWER_BOUND);
    assert!(got.contains("value 5,"), "{got}");
    assert!(
        got.contains(&format!(
            "consistent_value unavailable (503): could not hear from {node2} within 2s"
        )),
        "{got}"
    );
    assert!(!got.contains("node 3 ("), "{got}");
    demo.wait_live(2, "paused", ANSWER_BOUND);
    demo.send("resume 2");
    demo.wait_for("node 2 runs again", ANSWER_BOUND);
    demo.until(
        "get visits on 1",
        "get visits on node 1:",
        "consistent_value 5; acknowledged 5: ok",
    );

    // A killed node comes back on its own folder and config.
    demo.send("kill 3");
    demo.wait_for("node 3 is killed", ANSWER_BOUND);
    demo.send("restart 3");
    let back = demo.wait_for("node 3 is back", START_BOUND);
    assert!(
        back.contains(&format!("it is 127.0.0.1:{}", base + 2)),
        "{back}"
    );
    demo.until(
        "get visits on 3",
        "get visits on node 3:",
        "consistent_value 5; acknowledged 5: ok",
    );

    // An isolated node still takes increments on its own port (G3); the
    // others cannot hear from it until it is healed.
    demo.send("isolate 2");
    demo.wait_for("node 2 is cut off", ANSWER_BOUND);
    demo.send("inc visits 2 on 2");
    demo.wait_for(
        "inc visits 2 on node 2: acknowledged; node 2's value is now 7",
        ANSWER_BOUND,
    );
    demo.send("get visits on 1");
    let got = demo.wait_for("get visits on node 1:", ANSWER_BOUND);
    // Node 2's own pushes are cut too: node 1 has not seen its +2.
    assert!(got.contains("value 5,"), "{got}");
    assert!(
        got.contains(&format!("could not hear from {node2} within 2s")),
        "{got}"
    );
    assert!(!got.contains("node 3 ("), "{got}");
    demo.wait_live(2, "up, isolated", ANSWER_BOUND);
    demo.send("heal 2");
    demo.wait_for("node 2 is back on the network", ANSWER_BOUND);
    demo.until(
        "get visits on 1",
        "get visits on node 1:",
        "consistent_value 7; acknowledged 7: ok",
    );
    // The load went on throughout; every consistent read of it lies
    // between what was acknowledged before and what was sent after.
    let load = demo.until("get load-a on 2", "get load-a on node 2:", ": ok");
    assert!(!load.contains("MISMATCH"), "{load}");

    let status = demo.quit();
    let out = demo.output();
    assert!(status.success(), "{status}; output:\n{out}");
    assert!(out.contains("acknowledged through the demo:"), "{out}");
    assert!(
        out.contains(&format!(
            "removed the demo's data folder {}",
            data.display()
        )),
        "{out}"
    );
    assert!(!data.exists(), "{} is still there", data.display());
}

#[test]
fn a_data_dir_is_kept_and_resumed() {
    let tmp = TempDir::new("demo-keep");
    let keep = tmp.path().join("kept");
    let keep_arg = keep.to_str().expect("a UTF-8 path").to_string();
    let base = free_base();
    let args = [
        "--base-port",
        &base.to_string(),
        "--nodes",
        "2",
        "--data-dir",
        &keep_arg,
    ];

    let mut demo = Demo::start(tmp.path(), &args);
    demo.wait_for("type `help` for the commands", START_BOUND);
    demo.send("inc kept 3 on 1");
    demo.wait_for("inc kept 3 on node 1: acknowledged", ANSWER_BOUND);
    let status = demo.quit();
    let out = demo.output();
    assert!(status.success(), "{status}; output:\n{out}");
    assert!(
        out.contains(&format!("the data stays in {}", keep.display())),
        "{out}"
    );
    drop(demo);
    assert!(keep.join("node-1").is_dir() && keep.join("node-2").is_dir());

    // A second run resumes from the folder: the count is still there.
    let mut demo = Demo::start(tmp.path(), &args);
    demo.wait_for("it holds an earlier run's data", START_BOUND);
    demo.wait_for("type `help` for the commands", ANSWER_BOUND);
    let got = demo.until(
        "get kept on 2",
        "get kept on node 2:",
        "consistent_value 3; acknowledged in this run 0",
    );
    assert!(got.contains("earlier runs"), "{got}");
    assert!(demo.quit().success(), "{}", demo.output());
    assert!(keep.join("node-1").is_dir());
    // Nothing was left in the temporary folder but the kept one.
    let left: Vec<_> = std::fs::read_dir(tmp.path())
        .expect("read the test folder")
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(left, vec![std::ffi::OsString::from("kept")]);
}

#[test]
fn the_demo_with_tls_speaks_only_https_and_keeps_its_certificates() {
    let tmp = TempDir::new("demo-tls");
    let keep = tmp.path().join("kept");
    let keep_arg = keep.to_str().expect("a UTF-8 path").to_string();
    let base = free_base();
    let args = [
        "--base-port",
        &base.to_string(),
        "--tls",
        "--data-dir",
        &keep_arg,
    ];
    let tls = keep.join("tls");
    let ca = tls.join("ca.pem");
    let ca_arg = ca.to_str().expect("a UTF-8 path");
    let proxy = format!("127.0.0.1:{base}");
    let own = format!("127.0.0.1:{}", base + 10);

    let mut demo = Demo::start(tmp.path(), &args);
    // Every node found itself by asking the actors, over TLS through the
    // proxies: the proxies carry TLS unchanged.
    demo.wait_for("every node found itself through its proxy", START_BOUND);
    demo.wait_for(
        &format!(
            "tls: made a CA and a certificate per node in {}",
            tls.display()
        ),
        ANSWER_BOUND,
    );
    let hint = demo.wait_for("from another terminal:", ANSWER_BOUND);
    assert_eq!(word_after(&hint, "--cacert"), ca_arg, "{hint}");
    for shown in [
        format!("-X POST https://{proxy}/counter/visits"),
        format!("https://{own}/counter/visits/consistent_value"),
        format!("tally status --cluster --node https://{own} --cacert {ca_arg}"),
    ] {
        assert!(hint.contains(&shown), "{shown:?} not in {hint}");
    }
    assert!(!hint.contains("http://"), "{hint}");
    for key in [
        "ca-key.pem",
        "node-1-key.pem",
        "node-2-key.pem",
        "node-3-key.pem",
    ] {
        let mode = std::fs::metadata(tls.join(key))
            .unwrap_or_else(|e| panic!("{key}: {e}"))
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{key}");
    }
    demo.wait_for("type `help` for the commands", ANSWER_BOUND);

    // The config was posted (the intro says so only after); increments and
    // a consistent read go over HTTPS.
    demo.send("inc x 5 on 1");
    demo.wait_for(
        "inc x 5 on node 1: acknowledged; node 1's value is now 5",
        ANSWER_BOUND,
    );
    demo.until(
        "get x on 2",
        "get x on node 2:",
        "consistent_value 5; acknowledged 5: ok",
    );

    // curl trusting the CA, on node 1's own port and through its proxy.
    for addr in [&own, &proxy] {
        let url = format!("https://{addr}/counter/x/value");
        let ran = curl(&["--cacert", ca_arg, &url]);
        assert!(ran.ok, "curl --cacert {url}: {}", ran.stderr);
        assert_eq!(ran.stdout, "5", "curl --cacert {url}");
    }
    // Plain HTTP is not served, and a client that does not trust the CA
    // does not get through the handshake.
    let plain = format!("http://{own}/counter/x/value");
    let ran = curl(&[&plain]);
    assert!(
        !ran.ok && ran.stdout.is_empty(),
        "curl {plain} answered: {:?} {:?}",
        ran.stdout,
        ran.stderr
    );
    let untrusted = format!("https://{own}/counter/x/value");
    let ran = curl(&[&untrusted]);
    assert!(
        !ran.ok,
        "curl {untrusted} without --cacert: {:?}",
        ran.stdout
    );

    // The command-line client over HTTPS.
    let mut get = Command::new(BIN);
    get.args(["get", "x", "--consistent", "--timeout", "10s"])
        .args(["--node", &format!("https://{own}"), "--cacert", ca_arg]);
    for name in [
        "TALLY_NODE",
        "TALLY_NODES",
        "TALLY_CACERT",
        "TALLY_TOKEN",
        "TALLY_SECRET",
    ] {
        get.env_remove(name);
    }
    let ran = run_bounded(get);
    assert!(ran.ok, "tally get --consistent over https: {}", ran.stderr);
    assert_eq!(ran.stdout.trim(), "5", "tally get --consistent over https");

    let status = demo.quit();
    assert!(status.success(), "{status}; output:\n{}", demo.output());
    drop(demo);

    // A second run on the kept folder uses the same CA and certificates.
    let before: Vec<Vec<u8>> = ["ca.pem", "node-1.pem", "node-1-key.pem"]
        .iter()
        .map(|f| std::fs::read(tls.join(f)).expect("a certificate file"))
        .collect();
    let mut demo = Demo::start(tmp.path(), &args);
    demo.wait_for(
        &format!(
            "tls: the CA and certificates of an earlier run, in {}",
            tls.display()
        ),
        START_BOUND,
    );
    demo.wait_for("type `help` for the commands", ANSWER_BOUND);
    demo.until(
        "get x on 3",
        "get x on node 3:",
        "consistent_value 5; acknowledged in this run 0",
    );
    assert!(demo.quit().success(), "{}", demo.output());
    let after: Vec<Vec<u8>> = ["ca.pem", "node-1.pem", "node-1-key.pem"]
        .iter()
        .map(|f| std::fs::read(tls.join(f)).expect("a certificate file"))
        .collect();
    assert!(before == after, "the kept certificates were replaced");
}
