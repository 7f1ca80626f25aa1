//! The file seam under the disk engine: a data folder as the write-ahead
//! log and the B-tree see it.
//!
//! [`OsDisk`] is the real folder (and the one nodes run on); the simulated
//! disk in `simdisk.rs` implements the same traits over memory, with the
//! faults a real disk has: writes that were not synced are lost at a crash
//! (the last one maybe torn), reads that return flipped bits, writes and
//! syncs that fail, syncs that stall. The log (`journal.rs`) and the
//! B-tree (`redb.rs`, through [`Backend`]) do all their I/O through it, so
//! the engine a simulation runs is the engine nodes run.
//!
//! Paths are relative to the folder, `/`-separated (`log/…`, `tally.redb`).
//! Folders are made with [`Disk::create_dir`]; a simulated disk keeps no
//! folder entries of its own, only the files in them.

use std::io::{self, ErrorKind};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::time::Instant;

use super::StoreError;

/// One open file.
#[allow(clippy::len_without_is_empty)]
pub trait DiskFile: Send + Sync {
    fn len(&self) -> io::Result<u64>;
    /// Fills `buf` from `offset`; reading past the end is an error.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()>;
    fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()>;
    /// New bytes read as zeros.
    fn set_len(&self, len: u64) -> io::Result<()>;
    /// Makes what was written durable (not the folder entry of a new file).
    fn sync_data(&self) -> io::Result<()>;
}

/// A data folder.
pub trait Disk: Send + Sync + 'static {
    /// Opens a file for reading and writing, creating it (empty) if `create`.
    fn open(&self, path: &str, create: bool) -> io::Result<Arc<dyn DiskFile>>;
    /// The names of the files in a folder (`""` is the data folder itself);
    /// a missing folder has none.
    fn list(&self, dir: &str) -> io::Result<Vec<String>>;
    fn exists(&self, path: &str) -> io::Result<bool>;
    fn create_dir(&self, dir: &str) -> io::Result<()>;
    fn remove(&self, path: &str) -> io::Result<()>;
    /// Replaces `to` if it exists.
    fn rename(&self, from: &str, to: &str) -> io::Result<()>;
    /// Makes the folder's entries durable: files created, renamed or
    /// removed in it since.
    fn sync_dir(&self, dir: &str) -> io::Result<()>;
    /// The path to name in messages.
    fn display(&self, path: &str) -> PathBuf;
    /// The folder on a real file system, if it is one.
    fn location(&self) -> Option<&Path> {
        None
    }
    /// Whether calls block on I/O, and so belong on a blocking thread; a
    /// simulated disk answers at once and runs inline, deterministically.
    fn blocking(&self) -> bool;
    /// For a simulated stall: calls must wait until then.
    fn ready_at(&self) -> Option<Instant> {
        None
    }
}

/// Where damaged files are set aside, inside the data folder.
pub const DAMAGED_DIR: &str = "damaged";

/// Keeps a damaged file under `damaged/`: moved (`take`) or copied.
/// Returns where it went.
pub fn set_aside(disk: &dyn Disk, path: &str, take: bool) -> Result<String, StoreError> {
    let err = |p: &str, e: std::io::Error| StoreError::engine(e).in_file(&disk.display(p));
    disk.create_dir(DAMAGED_DIR)
        .map_err(|e| err(DAMAGED_DIR, e))?;
    let taken = disk
        .list(DAMAGED_DIR)
        .map_err(|e| err(DAMAGED_DIR, e))?
        .len();
    let name = path.rsplit('/').next().unwrap_or(path);
    let to = format!("{DAMAGED_DIR}/{taken:04}-{name}");
    if take {
        disk.rename(path, &to).map_err(|e| err(path, e))?;
        disk.sync_dir("").map_err(|e| err("", e))?;
    } else {
        let bytes = read_all(&*disk.open(path, false).map_err(|e| err(path, e))?)
            .map_err(|e| err(path, e))?;
        let copy = disk.open(&to, true).map_err(|e| err(&to, e))?;
        copy.write_at(0, &bytes)
            .and_then(|()| copy.sync_data())
            .map_err(|e| err(&to, e))?;
    }
    disk.sync_dir(DAMAGED_DIR)
        .map_err(|e| err(DAMAGED_DIR, e))?;
    Ok(to)
}

/// Reads a whole file.
pub fn read_all(file: &dyn DiskFile) -> io::Result<Vec<u8>> {
    let len = usize::try_from(file.len()?).map_err(io::Error::other)?;
    let mut buf = vec![0; len];
    file.read_at(0, &mut buf)?;
    Ok(buf)
}

/// The real data folder.
pub struct OsDisk {
    root: PathBuf,
    /// Held for the life of the disk: a second process on the folder fails to lock it.
    _lock: Option<std::fs::File>,
}

/// The file whose lock marks a data folder in use.
const LOCK_FILE: &str = "LOCK";

impl OsDisk {
    /// The folder at `root`, which must exist, without taking its lock
    /// (for reading a stopped node's folder).
    pub fn unlocked(root: &Path) -> OsDisk {
        OsDisk {
            root: root.to_path_buf(),
            _lock: None,
        }
    }

    /// Creates the folder `root` if needed and takes its lock, refusing a
    /// folder another process holds.
    pub fn lock(root: &Path) -> Result<OsDisk, StoreError> {
        let folder = |source| StoreError::Folder {
            path: root.to_path_buf(),
            source,
        };
        std::fs::create_dir_all(root).map_err(folder)?;
        let lock = std::fs::File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(root.join(LOCK_FILE))
            .map_err(folder)?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(StoreError::Locked(root.to_path_buf()));
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(folder(e)),
        }
        Ok(OsDisk {
            root: root.to_path_buf(),
            _lock: Some(lock),
        })
    }

    /// Whether another process holds the folder's lock.
    pub fn in_use(root: &Path) -> bool {
        let Ok(lock) = std::fs::File::options()
            .write(true)
            .open(root.join(LOCK_FILE))
        else {
            return false;
        };
        matches!(lock.try_lock(), Err(std::fs::TryLockError::WouldBlock))
    }

    fn path(&self, path: &str) -> PathBuf {
        if path.is_empty() {
            self.root.clone()
        } else {
            self.root.join(path)
        }
    }
}

struct OsFile(std::fs::File);

/// Repeats a call that a signal interrupted.
fn retry<T>(mut f: impl FnMut() -> io::Result<T>) -> io::Result<T> {
    loop {
        match f() {
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

impl DiskFile for OsFile {
    fn len(&self) -> io::Result<u64> {
        Ok(self.0.metadata()?.len())
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        // read_exact_at repeats interrupted and short reads itself.
        self.0.read_exact_at(buf, offset)
    }

    fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.0.write_all_at(data, offset)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        retry(|| self.0.set_len(len))
    }

    fn sync_data(&self) -> io::Result<()> {
        retry(|| self.0.sync_data())
    }
}

impl Disk for OsDisk {
    fn open(&self, path: &str, create: bool) -> io::Result<Arc<dyn DiskFile>> {
        let file = retry(|| {
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(create)
                .truncate(false)
                .open(self.path(path))
        })?;
        Ok(Arc::new(OsFile(file)))
    }

    fn list(&self, dir: &str) -> io::Result<Vec<String>> {
        let entries = match std::fs::read_dir(self.path(dir)) {
            Ok(entries) => entries,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut names = Vec::new();
        for entry in entries {
            let entry = entry?;
            if entry.file_type()?.is_file()
                && let Some(name) = entry.file_name().to_str()
            {
                names.push(name.to_string());
            }
        }
        names.sort();
        Ok(names)
    }

    fn exists(&self, path: &str) -> io::Result<bool> {
        self.path(path).try_exists()
    }

    fn create_dir(&self, dir: &str) -> io::Result<()> {
        std::fs::create_dir_all(self.path(dir))
    }

    fn remove(&self, path: &str) -> io::Result<()> {
        std::fs::remove_file(self.path(path))
    }

    fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        std::fs::rename(self.path(from), self.path(to))
    }

    fn sync_dir(&self, dir: &str) -> io::Result<()> {
        retry(|| std::fs::File::open(self.path(dir))?.sync_all())
    }

    fn display(&self, path: &str) -> PathBuf {
        self.path(path)
    }

    fn location(&self) -> Option<&Path> {
        Some(&self.root)
    }

    fn blocking(&self) -> bool {
        true
    }
}

/// The B-tree's file, as redb's storage backend.
pub struct Backend(pub Arc<dyn DiskFile>);

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Backend")
    }
}

impl redb::StorageBackend for Backend {
    fn len(&self) -> io::Result<u64> {
        self.0.len()
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
        self.0.read_at(offset, out)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.0.set_len(len)
    }

    fn sync_data(&self) -> io::Result<()> {
        self.0.sync_data()
    }

    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.0.write_at(offset, data)
    }
}
