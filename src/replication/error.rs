//! What goes wrong in replication, typed: a peer's last error in `/status`
//! says which exchange failed and why, and an answer to a peer says what
//! was wrong with its message.

use std::sync::Arc;

use crate::input::NameError;
use crate::storage::StoreError;
use crate::transport::CallError;

/// Why an exchange with a peer failed (a peer's `last_error`).
#[derive(Debug, Clone, thiserror::Error)]
pub enum SyncError {
    #[error("push: {0}")]
    Push(CallError),
    #[error("pull: {0}")]
    Pull(PullError),
}

/// Why a pull round stopped before its last page.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PullError {
    #[error(transparent)]
    Call(#[from] CallError),
    /// Merging the page (or looking up a mark) failed here.
    #[error(transparent)]
    Store(Arc<StoreError>),
    #[error("pull answered a bad name: {0}")]
    BadName(#[from] NameError),
    #[error(
        "pull answered a count of this node's own component of {name:?} \
         ({claimed}) above what it counted ({held})"
    )]
    RaisesOwn {
        name: String,
        claimed: u64,
        held: u64,
    },
    #[error("pull answered with something other than changes")]
    NotChanges,
}

impl From<StoreError> for PullError {
    fn from(e: StoreError) -> Self {
        PullError::Store(Arc::new(e))
    }
}

/// Why a peer's message was refused.
#[derive(Debug, thiserror::Error)]
pub enum AnswerError {
    #[error("protocol {got} is not supported; this node speaks 2 and {speaks}")]
    Protocol { got: u32, speaks: u32 },
    /// The membership it carries may not be merged (see
    /// `Membership::check_received`).
    #[error("{0}")]
    Membership(crate::cluster::ConfigError),
    #[error(transparent)]
    BadName(#[from] NameError),
    #[error("at most {max} {what} per message")]
    TooMany { what: &'static str, max: usize },
    #[error("a push carries at most {max} components, not {got}")]
    TooManyComponents { max: usize, got: usize },
    #[error(
        "a push may not raise this node's own component of {name:?} \
         (it claims {claimed}, this node counted {held})"
    )]
    RaisesOwn {
        name: String,
        claimed: u64,
        held: u64,
    },
    #[error("a pull since {since} is past this node's head ({head})")]
    PastHead { since: u64, head: u64 },
    #[error(
        "a pull ahead must start between since ({since}) and this node's head ({head}), not at {start}"
    )]
    BadStart { since: u64, start: u64, head: u64 },
    #[error(transparent)]
    Store(#[from] StoreError),
}
