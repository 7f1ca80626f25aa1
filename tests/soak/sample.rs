//! Reads what the leak rule judges: a process's resident memory and open
//! file descriptors from `/proc`, and the space a data folder takes on
//! its filesystem (allocated blocks, as `du` counts them).

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use super::leak::Reading;

/// `VmRSS` of `/proc/PID/status`, in KiB; `None` once the process is gone.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// Entries of `/proc/PID/fd`; `None` once the process is gone.
pub fn fd_count(pid: u32) -> Option<u64> {
    let dir = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?;
    Some(dir.filter(|e| e.is_ok()).count() as u64)
}

/// Bytes allocated under `path` (files and folders, not following links);
/// entries that vanish while it looks are skipped, a missing path is 0.
pub fn disk_use(path: &Path) -> u64 {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return 0;
    };
    let mut total = meta.blocks() * 512;
    if meta.is_dir()
        && let Ok(entries) = std::fs::read_dir(path)
    {
        for entry in entries.flatten() {
            total += disk_use(&entry.path());
        }
    }
    total
}

/// One look at process `pid` serving from `folder`; `None` once it is gone.
pub fn read(pid: u32, folder: &Path) -> Option<Reading> {
    let rss_kib = rss_kib(pid)?;
    let fds = fd_count(pid)?;
    let all = disk_use(folder);
    let log = disk_use(&folder.join("log"));
    Some(Reading {
        rss_kib,
        fds,
        store: all.saturating_sub(log),
        log,
    })
}
