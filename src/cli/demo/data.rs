//! Where the demo's nodes keep their data.

use std::path::{Path, PathBuf};

/// The demo's data folder: a fresh temporary one removed at the end, or
/// one the user keeps.
pub struct DataDir {
    pub path: PathBuf,
    pub temporary: bool,
    /// Whether it held no data before this run.
    pub fresh: bool,
}

impl DataDir {
    pub fn prepare(keep: Option<&Path>) -> Result<DataDir, String> {
        match keep {
            Some(path) => {
                let fresh = std::fs::read_dir(path).map_or(true, |mut d| d.next().is_none());
                std::fs::create_dir_all(path)
                    .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
                Ok(DataDir {
                    path: path.to_path_buf(),
                    temporary: false,
                    fresh,
                })
            }
            None => {
                let nanos = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.subsec_nanos());
                let path = std::env::temp_dir()
                    .join(format!("tally-demo-{}-{nanos:08x}", std::process::id()));
                std::fs::create_dir(&path)
                    .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
                Ok(DataDir {
                    path,
                    temporary: true,
                    fresh: true,
                })
            }
        }
    }

    pub fn describe(&self) -> String {
        if self.temporary {
            format!(
                "data: {} (temporary, removed when the demo ends; --data-dir DIR keeps it)",
                self.path.display()
            )
        } else if self.fresh {
            format!("data: {} (kept after the demo ends)", self.path.display())
        } else {
            format!(
                "data: {} (kept; it holds an earlier run's data, which the nodes resume from)",
                self.path.display()
            )
        }
    }

    /// Removes a temporary folder; says what became of the data.
    pub fn finish(self) -> String {
        if self.temporary {
            match std::fs::remove_dir_all(&self.path) {
                Ok(()) => format!("removed the demo's data folder {}", self.path.display()),
                Err(e) => format!("could not remove {}: {e}", self.path.display()),
            }
        } else {
            format!("the data stays in {}", self.path.display())
        }
    }
}

impl Drop for DataDir {
    fn drop(&mut self) {
        // `finish` already did this on the normal path; this is for a panic.
        if self.temporary {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}
