//! The demo's node processes: this same executable started once per node,
//! signalled through `libc::kill`, and reaped.

use std::fs::OpenOptions;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::tls::TlsFiles;

/// The node's TLS settings in the environment: the demo removes them from
/// its nodes' environment and gives its own as flags, or none.
const TLS_ENV: [&str; 3] = ["TALLY_TLS_CERT", "TALLY_TLS_KEY", "TALLY_TLS_CA"];

/// What the demo last did to a node's process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Life {
    Up,
    Paused,
    Killed,
    /// Ended by itself; the exit status says how.
    Exited,
}

pub struct Proc {
    pub id: u64,
    /// Where the node listens (the demo and its commands talk to it here).
    pub listen: SocketAddr,
    /// Its data folder.
    pub dir: PathBuf,
    /// Its log file (the node's stderr).
    pub log: PathBuf,
    /// Its certificate, key and CA with `--tls`.
    pub tls: Option<TlsFiles>,
    pub life: Life,
    child: Option<Child>,
}

/// Every node process. Dropping it kills and reaps what still runs, so a
/// demo that fails leaves nothing behind.
pub struct Procs {
    exe: PathBuf,
    pub all: Vec<Proc>,
}

impl Procs {
    pub fn new(exe: PathBuf) -> Procs {
        Procs {
            exe,
            all: Vec::new(),
        }
    }

    pub fn add(
        &mut self,
        id: u64,
        listen: SocketAddr,
        dir: PathBuf,
        log: PathBuf,
        tls: Option<TlsFiles>,
    ) {
        self.all.push(Proc {
            id,
            listen,
            dir,
            log,
            tls,
            life: Life::Killed,
            child: None,
        });
    }

    /// Starts node `i` (index) on its folder; returns its process id.
    pub fn start(&mut self, i: usize) -> Result<u32, String> {
        let p = &mut self.all[i];
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&p.log)
            .map_err(|e| format!("cannot open {}: {e}", p.log.display()))?;
        let mut command = Command::new(&self.exe);
        command
            .arg(p.id.to_string())
            .arg("--listen")
            .arg(p.listen.to_string())
            .arg("--data-dir")
            .arg(&p.dir);
        if let Some(tls) = &p.tls {
            command
                .arg("--tls-cert")
                .arg(&tls.cert)
                .arg("--tls-key")
                .arg(&tls.key)
                .arg("--tls-ca")
                .arg(&tls.ca);
        }
        for name in TLS_ENV {
            command.env_remove(name);
        }
        let child = command
            .env("TALLY_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot start node {}: {e}", p.id))?;
        let pid = child.id();
        p.child = Some(child);
        p.life = Life::Up;
        Ok(pid)
    }

    pub fn pid(&self, i: usize) -> Option<u32> {
        self.all[i].child.as_ref().map(Child::id)
    }

    /// Sends `sig` to node `i`'s process, if it runs.
    pub fn signal(&self, i: usize, sig: libc::c_int) -> Result<(), String> {
        let pid = self
            .pid(i)
            .ok_or_else(|| format!("node {} is not running", self.all[i].id))?;
        let pid = libc::pid_t::try_from(pid).map_err(|_| format!("process id {pid} too large"))?;
        // SAFETY: kill(2) takes plain integers and touches no memory of ours.
        if unsafe { libc::kill(pid, sig) } == 0 {
            Ok(())
        } else {
            Err(format!(
                "cannot signal node {}: {}",
                self.all[i].id,
                std::io::Error::last_os_error()
            ))
        }
    }

    /// SIGKILL and reap node `i`.
    pub fn kill(&mut self, i: usize) -> Result<(), String> {
        self.signal(i, libc::SIGKILL)?;
        if let Some(mut child) = self.all[i].child.take() {
            // SIGKILL cannot be caught: the wait is for the kernel only.
            let _ = child.wait();
        }
        self.all[i].life = Life::Killed;
        Ok(())
    }

    /// Notices nodes that ended by themselves; returns a line per such node.
    pub fn reap(&mut self) -> Vec<String> {
        let mut out = Vec::new();
        for p in &mut self.all {
            let Some(child) = p.child.as_mut() else {
                continue;
            };
            if let Ok(Some(status)) = child.try_wait() {
                out.push(format!(
                    "node {} ended by itself ({status}); its log: {}",
                    p.id,
                    p.log.display()
                ));
                p.child = None;
                p.life = Life::Exited;
            }
        }
        out
    }

    /// Asks every running node to stop: SIGCONT to paused ones, then SIGTERM.
    /// Returns the children to wait for.
    pub fn begin_stop(&mut self) -> Vec<(u64, Child)> {
        let mut out = Vec::new();
        for i in 0..self.all.len() {
            if self.all[i].child.is_none() {
                continue;
            }
            if self.all[i].life == Life::Paused {
                let _ = self.signal(i, libc::SIGCONT);
            }
            let _ = self.signal(i, libc::SIGTERM);
            let p = &mut self.all[i];
            if let Some(child) = p.child.take() {
                out.push((p.id, child));
            }
            p.life = Life::Killed;
        }
        out
    }
}

/// Waits until every child has exited or `bound` passed, then SIGKILLs the
/// rest. Returns the ids of the nodes that had to be killed.
pub async fn finish_stop(mut children: Vec<(u64, Child)>, bound: Duration) -> Vec<u64> {
    let deadline = Instant::now() + bound;
    while Instant::now() < deadline {
        children.retain_mut(|(_, c)| !matches!(c.try_wait(), Ok(Some(_))));
        if children.is_empty() {
            return Vec::new();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut killed = Vec::new();
    for (id, mut child) in children {
        let _ = child.kill();
        let _ = child.wait();
        killed.push(id);
    }
    killed
}

impl Drop for Procs {
    fn drop(&mut self) {
        for p in &mut self.all {
            if let Some(mut child) = p.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}
