//! Client tokens with scopes, and the audit log of what they were used for.
//!
//! A client token is a bearer credential: whoever presents it in
//! `Authorization: Bearer <token>` may do what its scopes allow. `tally
//! token new` makes one from 32 random bytes, written `tally_` and 64
//! lowercase hex digits. Because a token carries 256 bits of randomness, a
//! node stores and compares only its SHA-256: a fast hash is enough when
//! nothing can be guessed, so checking a request costs one hash and one
//! table lookup, and a copy of the tokens file grants nothing.
//!
//! # The tokens file
//!
//! One token per line, fields separated by spaces or tabs; `#` starts a
//! comment (to the end of the line) and blank lines are ignored:
//!
//! ```text
//! # NAME   SHA256_HEX                                                        SCOPES      [EXPIRES]
//! ci-bot   3f2a...(64 hex digits)...                                          read,write  2027-01-01T00:00:00Z
//! ops      9b1c...(64 hex digits)...                                          read,write,admin
//! ```
//!
//! - NAME: 1 to 64 characters of `A-Z a-z 0-9 . _ -`, unique in the file.
//!   It is what the audit log and refusals show, never the token.
//! - SHA256_HEX: the token's SHA-256 in hex (`tally token hash` prints it),
//!   unique in the file.
//! - SCOPES: a comma-separated list of `read`, `write` and `admin`. They are
//!   independent: `admin` does not include `read` or `write`.
//! - EXPIRES (optional): an RFC 3339 time with `Z` or an offset, e.g.
//!   `2027-01-01T00:00:00Z`; the token works until, not including, then.
//!
//! A file with a malformed line is refused whole, with its path, the line
//! number and what is wrong (no error ever repeats a hash, nor any field
//! long enough to be a token). A file is also refused when it is larger
//! than [`MAX_FILE_BYTES`], holds more than [`MAX_TOKENS`] tokens, or can
//! be written by every user of the host. [`SharedTokens::reload`] swaps in
//! a new file only when it is valid, so a bad edit keeps the tokens in
//! force.
//!
//! # Which scope each route needs
//!
//! - read: reads (`GET /counter/<name>/value`, `consistent_value`,
//!   `GET /counters`, the JSON view `GET /counter/<name>`), and `/status`,
//!   `/status/cluster`, `/status/history` and `/metrics`, which show names
//!   and counts, not secrets.
//! - write: increments (`POST /counter/<name>`, the batch `POST /counters`).
//! - admin: `POST /config`.
//! - none: `/livez` and `/readyz` stay open, so that probes need no
//!   credential; so do the console's page and assets (static files: the
//!   console asks for a token when its first request gets a 401).
//! - Internal routes under `/_internal/` never take a token: peers prove
//!   themselves by mutual TLS or the cluster secret.
//!
//! A request without a token gets 401 ([`Denied::status`]); a known token
//! without the scope gets 403. Either way nothing changes.
//!
//! # The audit log
//!
//! [`Audit`] writes, under the `tracing` target `audit`, every admin action
//! allowed, every refused credential, and every reload of the tokens file.
//! The first two are rate limited so that a flood of bad requests cannot
//! fill the disk; what the limit drops is counted and reported.
//!
//! # Left out
//!
//! - Scopes narrower than a whole kind of route (per counter name or
//!   prefix) and roles; a token is either allowed a kind of route or not.
//! - Revocation other than deleting the line and reloading the file.
//! - Slowing down or blocking clients that keep presenting bad tokens: the
//!   audit log limits only its own lines.
//! - A slow password hash (bcrypt, Argon2): tokens made elsewhere must be
//!   just as random, which `tally token hash` enforces only by length.

mod audit;
mod mint;
mod tokens;

pub use audit::{Audit, DEFAULT_AUDIT_LINES_PER_SECOND, Event};
pub use mint::{TOKEN_PREFIX, file_line, fill_random, new_token};
pub use tokens::{
    Denied, ExpiryError, Granted, LineError, MAX_FILE_BYTES, MAX_NAME_LEN, MAX_TOKENS,
    MIN_TOKEN_LEN, Scope, ScopeError, Scopes, SharedTokens, Tokens, TokensError, TokensErrorKind,
    bearer, digest, hex, parse_expiry, valid_name,
};
