//! What every real-network test of this suite shares: its prerequisites,
//! the node binary, and the harness that owns the network, the processes
//! and the folders and removes them on every exit path.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use super::cluster::{Nodes, log_tail};
use super::eintr;
use super::net::{Lab, sh};

/// The tests of this binary that build a network run one at a time: they
/// share the process id their names derive from, and two clusters on two
/// cores would blur each other's latency figures.
static SERIAL: Mutex<()> = Mutex::new(());

/// Held for the whole of a real-network test.
pub fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

pub fn env_flag(key: &str) -> bool {
    std::env::var(key)
        .map(|v| !v.is_empty() && v != "0" && !v.eq_ignore_ascii_case("false"))
        .unwrap_or(false)
}

/// Why the test cannot run here, if it cannot.
pub fn missing_prerequisite(tmpfs: bool) -> Option<String> {
    if let Some(why) =
        crate::root::not_root("the chaos test (network namespaces, nftables, tc, mounts)")
    {
        return Some(why);
    }
    let mut tools = vec![
        ("ip", &["-V"][..], "iproute2"),
        ("nft", &["--version"][..], "nftables"),
        ("tc", &["-V"][..], "iproute2"),
    ];
    if tmpfs {
        tools.push(("mount", &["--version"][..], "mount"));
        tools.push(("umount", &["--version"][..], "mount"));
    }
    for (tool, args, package) in tools {
        if let Err(e) = sh(tool, args) {
            return Some(format!("`{tool}` is missing (install {package}): {e}"));
        }
    }
    None
}

/// Fails, so a missing setup never reads as a pass, unless the person
/// running it opted out with TALLY_CHAOS_SKIP=1 (never under CI).
pub fn cannot_run(why: &str) {
    if env_flag("CI") || !env_flag("TALLY_CHAOS_SKIP") {
        panic!(
            "chaos test cannot run: {why}. Run it as root with ip, nft and tc, \
             or set TALLY_CHAOS_SKIP=1 to skip it knowingly (ignored under CI)"
        );
    }
    // Past the test harness's capture: a skipped test reads "ok", so the
    // line must show in a passing run too.
    let test = std::thread::current()
        .name()
        .unwrap_or("chaos test")
        .to_string();
    let _ = writeln!(
        std::io::stderr(),
        "\n!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n\
         !!! {test} SKIPPED (not a pass, TALLY_CHAOS_SKIP=1): {why}\n\
         !!! run it as root with ip, nft and tc installed.\n\
         !!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n"
    );
}

/// The node binary: `TALLY_CHAOS_BIN` when set (e.g. an older release, to
/// show a test fails against it); else the release build when present and
/// not older than the one cargo built for this test; else the one cargo built.
pub fn node_binary() -> PathBuf {
    if let Some(chosen) = std::env::var_os("TALLY_CHAOS_BIN").filter(|v| !v.is_empty()) {
        let chosen = PathBuf::from(chosen);
        assert!(
            chosen.is_file(),
            "TALLY_CHAOS_BIN={} is not a file",
            chosen.display()
        );
        return std::fs::canonicalize(&chosen).unwrap_or(chosen);
    }
    let built = PathBuf::from(env!("CARGO_BIN_EXE_tally"));
    let release = built
        .parent()
        .and_then(Path::parent)
        .map(|target| target.join("release").join("tally"));
    let mtime = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    if let Some(release) = release
        && release != built
        && release.exists()
    {
        if mtime(&release) >= mtime(&built) {
            return release;
        }
        eprintln!(
            "chaos: {} is older than {}; using the latter (run `cargo build --release` to test a release build)",
            release.display(),
            built.display()
        );
    }
    built
}

/// A tmpfs mounted on a folder, unmounted on drop.
pub struct Tmpfs {
    pub point: PathBuf,
}

impl Tmpfs {
    pub fn mount(point: &Path, mib: u64) -> Result<Tmpfs, String> {
        std::fs::create_dir_all(point)
            .map_err(|e| format!("cannot create {}: {e}", point.display()))?;
        let p = point.to_str().ok_or("the mount point is not UTF-8")?;
        sh(
            "mount",
            &[
                "-t",
                "tmpfs",
                "-o",
                &format!("size={mib}m,mode=0755"),
                "tally-chaos",
                p,
            ],
        )?;
        Ok(Tmpfs {
            point: point.to_path_buf(),
        })
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let p = self.point.display().to_string();
        if sh("umount", &[&p]).is_err() {
            // Busy (a process still holds a file): detach it now, freed when released.
            let _ = sh("umount", &["-l", &p]);
        }
    }
}

/// Writes `path` until its filesystem (a tmpfs of `mib` MiB) is full;
/// returns the bytes written.
pub fn fill(path: &Path, mib: u64) -> Result<u64, String> {
    use std::io::Write;
    let mut f = std::fs::File::create(path)
        .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
    let mut written = 0u64;
    // 1 MiB blocks, then what is left in 4 KiB ones; bounded, the tmpfs
    // holds `mib` MiB.
    for (size, count) in [(1usize << 20, 4 * mib + 16), (4096, 1024)] {
        let block = vec![0xA5u8; size];
        for _ in 0..count {
            match eintr::retry(|| f.write(&block)) {
                Ok(0) | Err(_) => break,
                Ok(k) => written += k as u64,
            }
        }
    }
    Ok(written)
}

/// What a harness sets up besides the network.
#[derive(Clone, Debug, Default)]
pub struct Setup {
    pub nodes: usize,
    /// Environment every node gets (beyond TALLY_LOG; no TALLY_* leaks in
    /// from the caller).
    pub node_env: Vec<(String, String)>,
    /// Mount a tmpfs of this many MiB on the shared working folder.
    pub tmpfs_mib: Option<u64>,
}

/// Everything a real-network test created, removed on every exit path.
pub struct Harness {
    pub lab: Lab,
    nodes: Mutex<Nodes>,
    /// Holds the shared working folder and the logs; removed on drop.
    pub base: PathBuf,
    /// The nodes' shared working folder (their data is under
    /// `tally-data/node-<i>`); a tmpfs mount point when asked for.
    pub work: PathBuf,
    pub logs: PathBuf,
    tmpfs: Option<Tmpfs>,
}

impl Harness {
    pub fn new(setup: &Setup, bin: PathBuf) -> Result<Harness, String> {
        let pid = std::process::id();
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let base = std::env::temp_dir().join(format!("tally-chaos-{pid}-{nanos}"));
        let work = base.join("run");
        let logs = base.join("logs");
        for dir in [&work, &logs] {
            std::fs::create_dir_all(dir)
                .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        }
        let tmpfs = match setup.tmpfs_mib {
            Some(mib) => match Tmpfs::mount(&work, mib) {
                Ok(t) => Some(t),
                Err(e) => {
                    let _ = std::fs::remove_dir_all(&base);
                    return Err(format!("cannot mount a tmpfs: {e}"));
                }
            },
            None => None,
        };
        let lab = match Lab::create(pid, setup.nodes) {
            Ok(lab) => lab,
            Err(e) => {
                drop(tmpfs);
                let _ = std::fs::remove_dir_all(&base);
                return Err(e);
            }
        };
        let namespaces = (1..=setup.nodes).map(|i| lab.node_ns(i)).collect();
        let mut nodes = Nodes::new(bin, work.clone(), logs.clone(), namespaces);
        nodes.env = setup.node_env.clone();
        Ok(Harness {
            lab,
            nodes: Mutex::new(nodes),
            base,
            work,
            logs,
            tmpfs,
        })
    }

    pub fn nodes(&self) -> MutexGuard<'_, Nodes> {
        self.nodes.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn logs(&self, lines: usize) -> String {
        let mut out = String::new();
        for i in 1..=self.lab.nodes {
            out.push_str(&format!(
                "----- node {i} log (last {lines} lines) -----\n{}\n",
                log_tail(&self.logs, i, lines)
            ));
        }
        out
    }
}

impl Harness {
    /// Copies the nodes' logs to `target/test-output/<this run's folder>`
    /// before the folder is removed: on a failure (the test is panicking),
    /// and on every run with `TALLY_CHAOS_KEEP_LOGS=1`. Says where.
    fn keep_logs(&self) {
        if !std::thread::panicking() && !env_flag("TALLY_CHAOS_KEEP_LOGS") {
            return;
        }
        let Some(run) = self.base.file_name() else {
            return;
        };
        let dest = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .parent()
            .map_or_else(|| self.base.clone(), |target| target.join("test-output"))
            .join(run);
        let copied = std::fs::create_dir_all(&dest).and_then(|()| {
            for entry in std::fs::read_dir(&self.logs)? {
                let entry = entry?;
                std::fs::copy(entry.path(), dest.join(entry.file_name()))?;
            }
            Ok(())
        });
        let mut err = std::io::stderr();
        let _ = match copied {
            Ok(()) => writeln!(err, "chaos: node logs kept in {}", dest.display()),
            Err(e) => writeln!(
                err,
                "chaos: could not keep the node logs in {}: {e}",
                dest.display()
            ),
        };
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.nodes().kill_all();
        self.keep_logs();
        // Unmounted before the folder is removed (and after every node is gone).
        self.tmpfs.take();
        self.lab.destroy();
        let _ = std::fs::remove_dir_all(&self.base);
    }
}
