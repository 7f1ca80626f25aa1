//! The engine seam: what an engine stores and answers, and the errors and
//! values that cross it. Engines are `redb` (on disk) and `memory`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::idempotency::KeyRecord;
use crate::cluster::{Actor, Membership};
use crate::crdt::{GCounter, Overflow};

/// A source error of an engine, kept whole so its cause (an OS error) shows.
pub type EngineSource = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("data folder {path}: {source}")]
    Folder {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("data folder {0} is in use by another tally process")]
    Locked(PathBuf),
    #[error("data folder {path} belongs to node {found}, not node {wanted}")]
    WrongNode {
        path: PathBuf,
        found: u64,
        wanted: u64,
    },
    #[error("{}{source}", file.as_ref().map(|f| format!("{}: ", f.display())).unwrap_or_default())]
    Engine {
        file: Option<PathBuf>,
        source: EngineSource,
    },
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// A log block whose checksum holds but whose format is newer than
    /// this binary's, or a B-tree that records such a log: a newer tally
    /// wrote the folder. Refused whatever `--on-damage` says, since
    /// salvaging would drop what it wrote.
    #[error(
        "{}: written in log format {found} by a newer tally; this one reads format {reads}, so it \
         refuses the data folder and changes nothing in it (run the newer version)",
        file.display()
    )]
    NewerFormat {
        file: PathBuf,
        found: u64,
        reads: u64,
    },
    /// Damage found when opening, with the node set to refuse rather than
    /// salvage (`--on-damage refuse`); nothing was changed.
    #[error("{0}")]
    Damaged(String),
    #[error(transparent)]
    Overflow(#[from] Overflow),
    #[error("Idempotency-Key {0:?} was first used with a different request")]
    KeyReused(String),
    /// Storage failed and is being reopened; nothing was acknowledged.
    #[error("storage is unavailable ({0}); writes resume once it recovers")]
    Unavailable(Arc<StoreError>),
    /// The call may still be applied later: its outcome is unknown.
    #[error("storage did not answer within {0:?}")]
    Timeout(Duration),
    #[error("storage is shutting down")]
    Closed,
}

impl StoreError {
    /// An engine error with no file named yet.
    pub fn engine(source: impl Into<EngineSource>) -> StoreError {
        StoreError::Engine {
            file: None,
            source: source.into(),
        }
    }

    /// Names the file an engine error happened in, if it names none yet.
    pub fn in_file(self, path: &Path) -> StoreError {
        match self {
            StoreError::Engine { file: None, source } => StoreError::Engine {
                file: Some(path.to_path_buf()),
                source,
            },
            other => other,
        }
    }

    /// Whether retrying later may succeed (storage trouble rather than a
    /// refusal of this request).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            StoreError::Engine { .. } | StoreError::Unavailable(_) | StoreError::Timeout(_)
        )
    }
}

/// What an engine holds, read once at open.
pub struct Loaded {
    pub incarnation: u64,
    pub membership: Membership,
    pub counters: BTreeMap<String, GCounter>,
    /// Remembered idempotency keys.
    pub keys: Vec<(String, KeyRecord)>,
    /// The last local sequence number given out.
    pub head: u64,
    /// Which actor this node last found itself to be.
    pub me: Option<Actor>,
    /// Whether the data folder was new.
    pub created: bool,
    /// Damage this folder's engine found when opening it, now or before,
    /// and how it went on (oldest first; the last is this open's when
    /// [`Salvage::now`] is set).
    pub salvage: Option<Vec<Salvage>>,
    /// Damage this open found that lost no record (the engine went on
    /// past it, under the same incarnation): each place, for `/status`.
    pub damage: Vec<String>,
}

/// Damage found in a data folder's files when it was opened, and how the
/// node went on: every record that read back whole was kept, and the node
/// counts on under a new incarnation, so it never counts again below what
/// its peers may have seen of the records it lost (SPEC G7, G11).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Salvage {
    /// When, in milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// Each place found damaged: file, byte offset, what was wrong.
    pub damage: Vec<String>,
    /// What could not be read back.
    pub lost: String,
    /// The incarnation the folder had, and the one it counts on with.
    pub from_incarnation: u64,
    pub to_incarnation: u64,
    /// Set on the event of this very open (not stored).
    #[serde(skip)]
    pub now: bool,
}

/// How far a node has merged a peer's changes: the peer's own local
/// sequence, valid for one incarnation of the peer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PeerMark {
    pub incarnation: u64,
    pub seq: u64,
}

/// One commit's worth of changes.
#[derive(Default)]
pub struct Batch {
    /// Each name's whole new counter; each gets a new local sequence.
    pub counters: BTreeMap<String, GCounter>,
    /// Only raised, never lowered.
    pub marks: Vec<PeerMark>,
    pub membership: Option<Membership>,
    /// Idempotency keys to remember, and to forget.
    pub keys_put: Vec<(String, KeyRecord)>,
    pub keys_del: Vec<String>,
    /// Which actor this node found itself to be.
    pub me: Option<Actor>,
}

impl Batch {
    pub fn is_empty(&self) -> bool {
        self.counters.is_empty()
            && self.marks.is_empty()
            && self.membership.is_none()
            && self.me.is_none()
            && self.keys_put.is_empty()
            && self.keys_del.is_empty()
    }
}

/// A transactional store of counters, marks and membership.
pub trait Engine: Send + Sync + 'static {
    /// Reads identity, membership and counters, creating the identity on first use.
    fn load(&self, node: u64) -> Result<Loaded, StoreError>;
    /// Applies a batch atomically; returns the last sequence number given out.
    fn commit(&self, batch: &Batch) -> Result<u64, StoreError>;
    /// Names changed after `since`, at most `limit`, from one snapshot.
    fn changes_since(&self, since: u64, limit: usize) -> Result<Changes, StoreError>;
    fn mark(&self, peer_incarnation: u64) -> Result<u64, StoreError>;
    /// Closes and reopens the underlying files after an I/O error.
    fn reopen(&self) -> Result<(), StoreError> {
        Ok(())
    }
    /// The data folder, for engines that have one.
    fn location(&self) -> Option<&Path>;
    /// Whether calls block on I/O (and so belong on a blocking thread).
    fn blocking(&self) -> bool;
    /// For simulated disks: calls must wait until then (a stalled disk).
    fn ready_at(&self) -> Option<Instant> {
        None
    }
    /// One step of a scrub: reads one file (or part of one) of the
    /// engine's from `at` on, checks them, repairs what it can alone (see
    /// [`Scrubbed`]), and says where to go on. Engines without files have
    /// nothing to scrub.
    fn scrub(&self, at: ScrubAt) -> Result<Scrubbed, StoreError> {
        let _ = at;
        Ok(Scrubbed {
            next: ScrubAt::Done,
            ..Scrubbed::default()
        })
    }
    /// Replaces damaged files with `image` (memory holds every counter
    /// whole, so nothing is lost); returns the new head sequence, past the
    /// old one so that peers pull every name again.
    fn rebuild(&self, image: &Image) -> Result<u64, StoreError> {
        Ok(image.head)
    }
}

/// Where a scrub pass goes on.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum ScrubAt {
    #[default]
    Start,
    /// The log segment starting at or after this record.
    Log(u64),
    /// The B-tree's counter rows after this name.
    Tree(Option<String>),
    Done,
}

/// What one step of a scrub read and found.
#[derive(Debug, Default)]
pub struct Scrubbed {
    /// [`ScrubAt::Done`] when the pass is over.
    pub next: ScrubAt,
    pub bytes: u64,
    /// Each place found damaged, in words (file, offset or name, what).
    pub damage: Vec<String>,
    /// The B-tree failed its check: the store rebuilds it from memory
    /// ([`Engine::rebuild`]).
    pub rebuild: bool,
}

/// Everything a node holds, from memory: what [`Engine::rebuild`] writes.
pub struct Image {
    pub node: u64,
    pub incarnation: u64,
    pub counters: Vec<(String, GCounter)>,
    pub membership: Membership,
    pub me: Option<Actor>,
    pub keys: Vec<(String, KeyRecord)>,
    /// The last sequence given out.
    pub head: u64,
}

/// What a peer asked for when pulling: our changes after `since`.
#[derive(Debug, Default)]
pub struct Changes {
    pub counters: Vec<(String, GCounter)>,
    /// Resume from here next time.
    pub next: u64,
    /// Our head sequence when the snapshot was taken.
    pub head: u64,
    pub more: bool,
}

/// A peer's changes to fold in, and the peer mark to record with them.
pub struct Merge {
    pub counters: Vec<(String, GCounter)>,
    pub mark: Option<PeerMark>,
}

/// The answer to an increment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Incremented {
    /// Each name's local value after the increment.
    pub values: Vec<u128>,
    /// True when an idempotency key matched and nothing was applied again.
    pub replayed: bool,
    /// The local sequence once it was durable: a peer holding our changes
    /// up to here holds this increment.
    pub seq: u64,
}
