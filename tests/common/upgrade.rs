//! The older tally that upgrade tests start from.

use std::path::{Path, PathBuf};

/// The older tally a rolling-upgrade run starts from: `TALLY_UPGRADE_FROM`
/// when set, else the binary `scripts/upgrade-from.sh` built (once) from the
/// commit it names and cached.
pub fn upgrade_from() -> PathBuf {
    if let Some(chosen) = std::env::var_os("TALLY_UPGRADE_FROM").filter(|v| !v.is_empty()) {
        let chosen = PathBuf::from(chosen);
        assert!(
            chosen.is_file(),
            "TALLY_UPGRADE_FROM={} is not a file",
            chosen.display()
        );
        return chosen;
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/upgrade-from.sh");
    let out = std::process::Command::new("bash")
        .arg(&script)
        .stderr(std::process::Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    assert!(
        out.status.success(),
        "{} failed ({}): no older binary to upgrade from",
        script.display(),
        out.status
    );
    let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let path = PathBuf::from(path);
    assert!(
        path.is_file(),
        "{} printed {}, which is not a file",
        script.display(),
        path.display()
    );
    path
}
