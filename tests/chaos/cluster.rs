//! The node processes: the real `tally` binary, one per namespace, all
//! started from one shared working folder without `--data-dir` (so each
//! uses its default `./tally-data/node-<id>`, SPEC G9).

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::eintr;
use super::net::sh;

pub struct Nodes {
    /// The binary each node is started from, index 0 = node 1 (the
    /// rolling-upgrade run changes them one by one).
    bins: Vec<PathBuf>,
    pub work: PathBuf,
    /// Where each node's log goes (outside `work`, so a full working
    /// folder does not take the logs with it).
    pub logs: PathBuf,
    /// Environment every node gets, beyond TALLY_LOG.
    pub env: Vec<(String, String)>,
    /// Namespace of each node, index 0 = node 1.
    pub namespaces: Vec<String>,
    children: Vec<Option<Child>>,
    pub spawns: usize,
}

impl Nodes {
    pub fn new(bin: PathBuf, work: PathBuf, logs: PathBuf, namespaces: Vec<String>) -> Self {
        let children = namespaces.iter().map(|_| None).collect();
        Nodes {
            bins: namespaces.iter().map(|_| bin.clone()).collect(),
            work,
            logs,
            env: Vec::new(),
            namespaces,
            children,
            spawns: 0,
        }
    }

    pub fn log_path(logs: &Path, id: usize) -> PathBuf {
        logs.join(format!("node-{id}.log"))
    }

    /// Starts node `id` (1-based) in its namespace, in the shared folder.
    pub fn spawn(&mut self, id: usize) -> Result<(), String> {
        if self.children[id - 1].is_some() {
            return Err(format!("node {id} is already running"));
        }
        std::fs::create_dir_all(&self.logs)
            .map_err(|e| format!("cannot create the log folder: {e}"))?;
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(Self::log_path(&self.logs, id))
            .map_err(|e| format!("cannot open node {id}'s log: {e}"))?;
        let log2 = log
            .try_clone()
            .map_err(|e| format!("cannot clone node {id}'s log: {e}"))?;
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.namespaces[id - 1]])
            .arg(&self.bins[id - 1])
            .arg(id.to_string())
            .args(["--listen", "0.0.0.0:7777"])
            .current_dir(&self.work)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2);
        // Only the defaults count: no TALLY_* setting leaks in from the caller.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("TALLY_") {
                cmd.env_remove(&key);
            }
        }
        cmd.env("TALLY_LOG", "info").env("NO_COLOR", "1");
        for (key, value) in &self.env {
            cmd.env(key, value);
        }
        let child = cmd
            .spawn()
            .map_err(|e| format!("cannot start node {id}: {e}"))?;
        self.children[id - 1] = Some(child);
        self.spawns += 1;
        Ok(())
    }

    /// The binary node `id` is started from.
    pub fn binary(&self, id: usize) -> &Path {
        &self.bins[id - 1]
    }

    /// Starts node `id` from `bin` from its next start on.
    pub fn set_binary(&mut self, id: usize, bin: PathBuf) {
        self.bins[id - 1] = bin;
    }

    pub fn pid(&self, id: usize) -> Option<u32> {
        self.children[id - 1].as_ref().map(Child::id)
    }

    pub fn signal(&self, id: usize, sig: &str) -> Result<(), String> {
        let pid = self
            .pid(id)
            .ok_or_else(|| format!("node {id} is not running"))?;
        sh("kill", &[&format!("-{sig}"), &pid.to_string()]).map(|_| ())
    }

    pub fn pause(&self, id: usize) -> Result<(), String> {
        self.signal(id, "STOP")
    }

    pub fn resume(&self, id: usize) -> Result<(), String> {
        self.signal(id, "CONT")
    }

    /// SIGKILL and reap (`ip netns exec` execs the node, so the pid is the node's).
    pub fn crash(&mut self, id: usize) -> Result<(), String> {
        let mut child = self.children[id - 1]
            .take()
            .ok_or_else(|| format!("node {id} is not running"))?;
        let _ = sh("kill", &["-CONT", &child.id().to_string()]);
        let _ = sh("kill", &["-KILL", &child.id().to_string()]);
        eintr::wait(&mut child).map_err(|e| format!("cannot reap node {id}: {e}"))?;
        Ok(())
    }

    /// SIGTERM, as an operator stops a node, and reap it. A node that has
    /// not exited within `bound` is killed, and that is the error.
    pub fn stop(&mut self, id: usize, bound: Duration) -> Result<(), String> {
        let mut child = self.children[id - 1]
            .take()
            .ok_or_else(|| format!("node {id} is not running"))?;
        let pid = child.id().to_string();
        let _ = sh("kill", &["-CONT", &pid]);
        sh("kill", &["-TERM", &pid])?;
        let deadline = Instant::now() + bound;
        loop {
            match child.try_wait() {
                Ok(Some(status)) if status.success() => return Ok(()),
                Ok(Some(status)) => {
                    return Err(format!("node {id} exited with {status} on SIGTERM"));
                }
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                _ => {
                    let _ = sh("kill", &["-KILL", &pid]);
                    let _ = eintr::wait(&mut child);
                    return Err(format!(
                        "node {id} did not exit within {bound:?} of SIGTERM (killed)"
                    ));
                }
            }
        }
    }

    /// Whether node `id` has exited on its own; returns its status if so.
    pub fn exited(&mut self, id: usize) -> Option<String> {
        let child = self.children[id - 1].as_mut()?;
        match child.try_wait() {
            Ok(Some(status)) => Some(status.to_string()),
            _ => None,
        }
    }

    pub fn running(&self, id: usize) -> bool {
        self.children[id - 1].is_some()
    }

    /// SIGCONT then SIGKILL every node, and reap them.
    pub fn kill_all(&mut self) {
        for slot in &mut self.children {
            if let Some(mut child) = slot.take() {
                let pid = child.id().to_string();
                let _ = sh("kill", &["-CONT", &pid]);
                let _ = sh("kill", &["-KILL", &pid]);
                let _ = eintr::wait(&mut child);
            }
        }
    }
}

/// The last `lines` lines of node `id`'s log.
pub fn log_tail(logs: &Path, id: usize, lines: usize) -> String {
    let text = std::fs::read_to_string(Nodes::log_path(logs, id)).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
