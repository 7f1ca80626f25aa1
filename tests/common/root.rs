//! Whether this test process runs as root (the real-network and disk suites
//! need it): read from /proc, no extra crate.

/// Why root-only tests cannot run here, if they cannot: `None` as root.
pub fn not_root(needs: &str) -> Option<String> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let euid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or("?");
    (euid != "0").then(|| format!("{needs} needs root; effective uid is {euid}"))
}
