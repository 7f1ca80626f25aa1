//! The tokens file, parsed into a table keyed by each token's SHA-256, and
//! the check of a request's `Authorization` header against it.
//!
//! Parsing is pure ([`Tokens::parse`]); only [`Tokens::load`] and
//! [`SharedTokens`] touch the file system. Nothing here keeps or prints a
//! token, and no error or refusal repeats a hash: an error shows a field
//! only when it is shorter than [`MIN_TOKEN_LEN`], so not even a token
//! pasted into the wrong field is echoed.

use std::collections::HashMap;
use std::fmt;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, SystemTime};

use sha2::{Digest as _, Sha256};

/// Most tokens one file may hold.
pub const MAX_TOKENS: usize = 100_000;
/// Largest tokens file read, in bytes; a larger one is refused.
pub const MAX_FILE_BYTES: u64 = 16 * 1024 * 1024;
/// Longest token name, in characters.
pub const MAX_NAME_LEN: usize = 64;
/// Shortest token `tally token hash` accepts. The file holds a fast hash,
/// so a token must be too long and random to be guessed from it.
pub const MIN_TOKEN_LEN: usize = 32;

/// What a token may do. Scopes are independent: `Admin` does not include
/// `Read` or `Write`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    Read,
    Write,
    Admin,
}

impl Scope {
    pub const ALL: [Scope; 3] = [Scope::Read, Scope::Write, Scope::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Write => "write",
            Scope::Admin => "admin",
        }
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Scope {
    type Err = ScopeError;

    fn from_str(word: &str) -> Result<Scope, ScopeError> {
        Scope::ALL
            .into_iter()
            .find(|s| s.as_str() == word)
            .ok_or_else(|| ScopeError::Unknown(shown(word)))
    }
}

/// A set of scopes, written `read,write,admin` (always in that order).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Scopes(u8);

impl Scopes {
    pub const NONE: Scopes = Scopes(0);

    pub fn contains(self, scope: Scope) -> bool {
        self.0 & scope.bit() != 0
    }

    pub fn with(self, scope: Scope) -> Scopes {
        Scopes(self.0 | scope.bit())
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    pub fn iter(self) -> impl Iterator<Item = Scope> {
        Scope::ALL.into_iter().filter(move |s| self.contains(*s))
    }
}

impl FromIterator<Scope> for Scopes {
    fn from_iter<I: IntoIterator<Item = Scope>>(iter: I) -> Scopes {
        iter.into_iter().fold(Scopes::NONE, Scopes::with)
    }
}

impl fmt::Display for Scopes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, scope) in self.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            f.write_str(scope.as_str())?;
        }
        Ok(())
    }
}

impl fmt::Debug for Scopes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Scopes({self})")
    }
}

impl FromStr for Scopes {
    type Err = ScopeError;

    /// Reads `read,write`: at least one scope, no empty items, no unknown
    /// words; a scope named twice counts once.
    fn from_str(list: &str) -> Result<Scopes, ScopeError> {
        if list.is_empty() {
            return Err(ScopeError::Empty);
        }
        list.split(',')
            .map(|word| match word {
                "" => Err(ScopeError::EmptyItem),
                word => word.parse::<Scope>(),
            })
            .collect()
    }
}

/// Why a list of scopes was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScopeError {
    #[error("no scope given: write read, write or admin, comma-separated")]
    Empty,
    #[error("an empty item in the list of scopes (two commas, or one at an end)")]
    EmptyItem,
    #[error("unknown scope {0}: the scopes are read, write and admin")]
    Unknown(String),
}

/// Why an expiry time was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExpiryError {
    #[error("{0} is not an RFC 3339 time like 2027-01-01T00:00:00Z")]
    Format(String),
    #[error("{0} has no time zone: end it with Z (UTC) or an offset like +02:00")]
    NoZone(String),
    #[error("{0} is out of range (before 1970, or too far ahead)")]
    Range(String),
}

/// Reads an RFC 3339 time: `2027-01-01T00:00:00Z`, with optional
/// fractional seconds and `Z` or an offset such as `+02:00`. A time without
/// a zone is refused rather than guessed to be UTC.
pub fn parse_expiry(text: &str) -> Result<SystemTime, ExpiryError> {
    let format = || ExpiryError::Format(shown(text));
    if !text.is_ascii() {
        return Err(format());
    }
    let Some((body, offset_secs)) = split_zone(text) else {
        return Err(if date_time_shape(text) {
            ExpiryError::NoZone(shown(text))
        } else {
            format()
        });
    };
    if !date_time_shape(body) {
        return Err(format());
    }
    let mut local = body.to_string();
    local.replace_range(10..11, "T");
    let at = humantime::parse_rfc3339_weak(&local).map_err(|e| match e {
        humantime::TimestampError::OutOfRange => ExpiryError::Range(shown(text)),
        _ => format(),
    })?;
    let shift = Duration::from_secs(offset_secs.unsigned_abs());
    let utc = if offset_secs >= 0 {
        at.checked_sub(shift)
    } else {
        at.checked_add(shift)
    };
    utc.filter(|t| *t >= SystemTime::UNIX_EPOCH)
        .ok_or_else(|| ExpiryError::Range(shown(text)))
}

/// An ASCII time split into its date and time, and its zone's offset east
/// of UTC in seconds; `None` when it ends in no zone.
fn split_zone(text: &str) -> Option<(&str, i64)> {
    if let Some(body) = text.strip_suffix(['Z', 'z']) {
        return Some((body, 0));
    }
    let (body, zone) = text.split_at(text.len().checked_sub(6)?);
    let &[sign, h1, h2, b':', m1, m2] = zone.as_bytes() else {
        return None;
    };
    let sign = match sign {
        b'+' => 1,
        b'-' => -1,
        _ => return None,
    };
    if ![h1, h2, m1, m2].iter().all(u8::is_ascii_digit) {
        return None;
    }
    let hours = i64::from(h1 - b'0') * 10 + i64::from(h2 - b'0');
    let minutes = i64::from(m1 - b'0') * 10 + i64::from(m2 - b'0');
    (hours <= 23 && minutes <= 59).then_some((body, sign * (hours * 3600 + minutes * 60)))
}

/// Whether `body` is shaped `YYYY-MM-DDTHH:MM:SS[.fraction]`. humantime
/// reads the numbers but checks little after the seconds (and takes any
/// zone to be UTC), so the shape is checked here.
fn date_time_shape(body: &str) -> bool {
    let b = body.as_bytes();
    b.len() >= 19
        && b[..19].iter().enumerate().all(|(i, &c)| match i {
            4 | 7 => c == b'-',
            10 => matches!(c, b'T' | b't'),
            13 | 16 => c == b':',
            _ => c.is_ascii_digit(),
        })
        && match b.get(19) {
            None => true,
            Some(b'.') => b.len() > 20 && b[20..].iter().all(u8::is_ascii_digit),
            Some(_) => false,
        }
}

/// A field quoted for an error message, or only its length when it is
/// long enough to be a token or a hash.
pub(super) fn shown(field: &str) -> String {
    let chars = field.chars().count();
    if chars < MIN_TOKEN_LEN {
        format!("{field:?}")
    } else {
        format!("(a field of {chars} characters, not shown)")
    }
}

/// Whether `name` is a valid token name: 1 to [`MAX_NAME_LEN`] characters
/// of `A-Z a-z 0-9 . _ -`.
pub fn valid_name(name: &str) -> bool {
    (1..=MAX_NAME_LEN).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// The SHA-256 of a token, the key the tokens file stores.
pub fn digest(token: &[u8]) -> [u8; 32] {
    Sha256::digest(token).into()
}

/// Lowercase hex of a digest.
pub fn hex(digest: &[u8; 32]) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(64);
    for b in digest {
        let _ = write!(out, "{b:02x}");
    }
    out
}

fn unhex(field: &str) -> Result<[u8; 32], LineError> {
    if field.starts_with(super::TOKEN_PREFIX) {
        return Err(LineError::TokenNotHash);
    }
    if field.len() != 64 {
        return Err(LineError::HashLength(field.chars().count()));
    }
    let mut out = [0u8; 32];
    for (byte, pair) in out.iter_mut().zip(field.as_bytes().chunks_exact(2)) {
        let digit = |c: u8| (c as char).to_digit(16).ok_or(LineError::HashDigit);
        *byte = u8::try_from(digit(pair[0])? * 16 + digit(pair[1])?).expect("two hex digits");
    }
    Ok(out)
}

/// What is wrong with one line of a tokens file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LineError {
    #[error("expected NAME SHA256_HEX SCOPES [EXPIRES], found {0} field(s)")]
    Fields(usize),
    #[error("the name {0} is not 1 to 64 characters of A-Z, a-z, 0-9, '.', '_' and '-'")]
    Name(String),
    #[error(
        "the second field is a token, not its hash: store its SHA-256 (`tally token hash` prints it)"
    )]
    TokenNotHash,
    #[error("the second field is not a SHA-256: it needs 64 hex digits, not {0} characters")]
    HashLength(usize),
    #[error("the second field is not a SHA-256: it holds a character that is not a hex digit")]
    HashDigit,
    #[error("the scopes: {0}")]
    Scopes(ScopeError),
    #[error("the expiry: {0}")]
    Expires(ExpiryError),
    #[error("the name {name:?} is already used on line {first}")]
    DuplicateName { name: String, first: usize },
    #[error("the same hash as line {first} (token {first_name:?}): each token needs its own")]
    DuplicateHash { first_name: String, first: usize },
}

/// What is wrong with a tokens file.
#[derive(Debug, thiserror::Error)]
pub enum TokensErrorKind {
    #[error("cannot read it: {0}")]
    Read(std::io::Error),
    #[error("it is larger than {MAX_FILE_BYTES} bytes")]
    TooLarge,
    #[error(
        "every user of this host may write it (mode {mode:04o}), and so add a token: `chmod o-w` it"
    )]
    WorldWritable { mode: u32 },
    #[error("line {line}: not UTF-8 text")]
    NotUtf8 { line: usize },
    #[error("line {line}: more than {MAX_TOKENS} tokens")]
    TooMany { line: usize },
    #[error("line {line}: {error}")]
    Line { line: usize, error: LineError },
}

/// A tokens file that was refused, with its path when it was read from one.
#[derive(Debug)]
pub struct TokensError {
    path: Option<PathBuf>,
    kind: TokensErrorKind,
}

impl TokensError {
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    pub fn kind(&self) -> &TokensErrorKind {
        &self.kind
    }

    /// The line at fault, when one is.
    pub fn line(&self) -> Option<usize> {
        match self.kind {
            TokensErrorKind::NotUtf8 { line }
            | TokensErrorKind::TooMany { line }
            | TokensErrorKind::Line { line, .. } => Some(line),
            _ => None,
        }
    }
}

impl fmt::Display for TokensError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.path {
            Some(path) => write!(f, "tokens file {}: {}", path.display(), self.kind),
            None => write!(f, "tokens: {}", self.kind),
        }
    }
}

impl std::error::Error for TokensError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.kind {
            TokensErrorKind::Read(e) => Some(e),
            _ => None,
        }
    }
}

/// One token of the file, without its hash (the key of the table).
#[derive(Debug, Clone)]
struct Entry {
    name: String,
    scopes: Scopes,
    expires: Option<SystemTime>,
    line: usize,
}

/// The tokens of one file, keyed by SHA-256.
///
/// Looking a token up by its hash leaks through timing at most which hash
/// prefixes exist, and finding a token from its hash is the preimage
/// problem, so no constant-time comparison is needed.
pub struct Tokens {
    by_hash: HashMap<[u8; 32], Entry>,
}

impl fmt::Debug for Tokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The hashes stay out of debug output too.
        f.debug_struct("Tokens")
            .field("len", &self.by_hash.len())
            .finish()
    }
}

/// A request's token was accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Granted {
    /// The token's name, for the audit log.
    pub name: String,
}

/// Why a request's token was refused. The message is safe to send to the
/// client: it names the token at most, never the token or its hash.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    #[error("this request needs a token: send the header Authorization: Bearer <token>")]
    Missing,
    #[error("the Authorization header is not a Bearer token (Authorization: Bearer <token>)")]
    Malformed,
    #[error("the token is not valid on this node")]
    Unknown,
    #[error("token {name} has expired")]
    Expired { name: String },
    #[error("token {name} does not have the {need} scope this request needs")]
    Scope { name: String, need: Scope },
}

impl Denied {
    /// 401 when the request did not prove who sent it, 403 when it did
    /// but that token may not do this.
    pub fn status(&self) -> u16 {
        match self {
            Denied::Scope { .. } => 403,
            _ => 401,
        }
    }

    /// A short word for logs and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Denied::Missing => "missing",
            Denied::Malformed => "malformed",
            Denied::Unknown => "unknown",
            Denied::Expired { .. } => "expired",
            Denied::Scope { .. } => "scope",
        }
    }

    /// The name of the token presented, when it is known.
    pub fn token_name(&self) -> Option<&str> {
        match self {
            Denied::Expired { name } | Denied::Scope { name, .. } => Some(name),
            _ => None,
        }
    }

    /// The `WWW-Authenticate` header of the answer (RFC 6750, section 3).
    pub fn www_authenticate(&self) -> &'static str {
        match self {
            Denied::Missing => r#"Bearer realm="tally""#,
            Denied::Malformed => r#"Bearer realm="tally", error="invalid_request""#,
            Denied::Unknown | Denied::Expired { .. } => {
                r#"Bearer realm="tally", error="invalid_token""#
            }
            Denied::Scope { need, .. } => match need {
                Scope::Read => r#"Bearer realm="tally", error="insufficient_scope", scope="read""#,
                Scope::Write => {
                    r#"Bearer realm="tally", error="insufficient_scope", scope="write""#
                }
                Scope::Admin => {
                    r#"Bearer realm="tally", error="insufficient_scope", scope="admin""#
                }
            },
        }
    }
}

/// The token of an `Authorization` header value `Bearer <token>`: the
/// scheme in any case, then one space or more, then one word of visible
/// ASCII. `None` for anything else.
pub fn bearer(header: &[u8]) -> Option<&[u8]> {
    let header = header.trim_ascii();
    let space = header.iter().position(|&b| b == b' ')?;
    let (scheme, rest) = header.split_at(space);
    if !scheme.eq_ignore_ascii_case(b"bearer") {
        return None;
    }
    let start = rest.iter().position(|&b| b != b' ')?;
    let token = &rest[start..];
    token.iter().all(u8::is_ascii_graphic).then_some(token)
}

impl Tokens {
    /// Reads a tokens file's text (see the module docs of `auth`).
    pub fn parse(text: &str) -> Result<Tokens, TokensError> {
        parse_text(text).map_err(|kind| TokensError { path: None, kind })
    }

    /// Reads a tokens file: at most [`MAX_FILE_BYTES`], not writable by
    /// every user.
    pub fn load(path: &Path) -> Result<Tokens, TokensError> {
        use std::os::unix::fs::PermissionsExt as _;
        let fail = |kind| TokensError {
            path: Some(path.to_path_buf()),
            kind,
        };
        let file = std::fs::File::open(path).map_err(|e| fail(TokensErrorKind::Read(e)))?;
        let meta = file
            .metadata()
            .map_err(|e| fail(TokensErrorKind::Read(e)))?;
        let mode = meta.permissions().mode() & 0o7777;
        if mode & 0o002 != 0 {
            return Err(fail(TokensErrorKind::WorldWritable { mode }));
        }
        let mut bytes =
            Vec::with_capacity(usize::try_from(meta.len().min(MAX_FILE_BYTES + 1)).unwrap_or(0));
        file.take(MAX_FILE_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| fail(TokensErrorKind::Read(e)))?;
        if bytes.len() as u64 > MAX_FILE_BYTES {
            return Err(fail(TokensErrorKind::TooLarge));
        }
        let text = std::str::from_utf8(&bytes).map_err(|e| {
            let before = &bytes[..e.valid_up_to()];
            fail(TokensErrorKind::NotUtf8 {
                line: 1 + before.iter().filter(|&&b| b == b'\n').count(),
            })
        })?;
        parse_text(text).map_err(fail)
    }

    pub fn len(&self) -> usize {
        self.by_hash.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_hash.is_empty()
    }

    /// Checks a request's raw `Authorization` header value: a Bearer token
    /// that this file holds, not expired at `now`, with the scope `need`.
    /// A token is valid until, not including, its expiry.
    pub fn check(
        &self,
        authorization: Option<&[u8]>,
        need: Scope,
        now: SystemTime,
    ) -> Result<Granted, Denied> {
        let header = authorization.ok_or(Denied::Missing)?;
        let token = bearer(header).ok_or(Denied::Malformed)?;
        let entry = self.by_hash.get(&digest(token)).ok_or(Denied::Unknown)?;
        if entry.expires.is_some_and(|at| now >= at) {
            return Err(Denied::Expired {
                name: entry.name.clone(),
            });
        }
        if !entry.scopes.contains(need) {
            return Err(Denied::Scope {
                name: entry.name.clone(),
                need,
            });
        }
        Ok(Granted {
            name: entry.name.clone(),
        })
    }
}

fn parse_text(text: &str) -> Result<Tokens, TokensErrorKind> {
    let mut by_hash: HashMap<[u8; 32], Entry> = HashMap::new();
    let mut names: HashMap<&str, usize> = HashMap::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let content = raw.split('#').next().unwrap_or_default();
        let mut fields = content.split_ascii_whitespace();
        let Some(name) = fields.next() else {
            continue;
        };
        if by_hash.len() == MAX_TOKENS {
            return Err(TokensErrorKind::TooMany { line });
        }
        let bad = |error| TokensErrorKind::Line { line, error };
        let (Some(hash), Some(scopes)) = (fields.next(), fields.next()) else {
            let found = content.split_ascii_whitespace().count();
            return Err(bad(LineError::Fields(found)));
        };
        let expires = fields.next();
        if fields.next().is_some() {
            let found = content.split_ascii_whitespace().count();
            return Err(bad(LineError::Fields(found)));
        }
        if !valid_name(name) {
            return Err(bad(LineError::Name(shown(name))));
        }
        let hash = unhex(hash).map_err(bad)?;
        let scopes: Scopes = scopes.parse().map_err(|e| bad(LineError::Scopes(e)))?;
        let expires = expires
            .map(parse_expiry)
            .transpose()
            .map_err(|e| bad(LineError::Expires(e)))?;
        if let Some(&first) = names.get(name) {
            return Err(bad(LineError::DuplicateName {
                name: name.to_string(),
                first,
            }));
        }
        if let Some(first) = by_hash.get(&hash) {
            return Err(bad(LineError::DuplicateHash {
                first_name: first.name.clone(),
                first: first.line,
            }));
        }
        names.insert(name, line);
        by_hash.insert(
            hash,
            Entry {
                name: name.to_string(),
                scopes,
                expires,
                line,
            },
        );
    }
    Ok(Tokens { by_hash })
}

/// The tokens in force, swapped whole when the file is reloaded.
///
/// A std `RwLock` because every request reads it and holds it only to
/// clone an `Arc`, never across an await; a reload builds the new table
/// before taking the write lock.
pub struct SharedTokens {
    path: PathBuf,
    current: RwLock<Arc<Tokens>>,
    /// Serializes reloads, so that two racing ones cannot install an older
    /// read of the file after a newer one.
    reloading: Mutex<()>,
}

impl fmt::Debug for SharedTokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedTokens")
            .field("path", &self.path)
            .field("len", &self.current().len())
            .finish()
    }
}

impl SharedTokens {
    /// Reads the file once; a node should refuse to start when this fails.
    pub fn load(path: &Path) -> Result<SharedTokens, TokensError> {
        let tokens = Tokens::load(path)?;
        Ok(SharedTokens {
            path: path.to_path_buf(),
            current: RwLock::new(Arc::new(tokens)),
            reloading: Mutex::new(()),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The tokens in force now.
    pub fn current(&self) -> Arc<Tokens> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Reads the file again and puts it in force, returning how many
    /// tokens it holds. When the file is refused, the tokens in force stay
    /// as they were and the error says why.
    pub fn reload(&self) -> Result<usize, TokensError> {
        let _one_at_a_time = self
            .reloading
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let tokens = Tokens::load(&self.path)?;
        let count = tokens.len();
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(tokens);
        Ok(count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{file_line, new_token};

    const HASH_A: &str = "3f2a000000000000000000000000000000000000000000000000000000000001";
    const HASH_B: &str = "3f2a000000000000000000000000000000000000000000000000000000000002";

    fn at(text: &str) -> SystemTime {
        parse_expiry(text).expect("a valid time")
    }

    fn header(token: &str) -> Vec<u8> {
        format!("Bearer {token}").into_bytes()
    }

    /// A fresh folder under the system's temporary folder, removed on drop.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(tag: &str) -> Scratch {
            let dir = std::env::temp_dir().join(format!(
                "tally-auth-{tag}-{}-{}",
                std::process::id(),
                fastrand::u64(..)
            ));
            std::fs::create_dir_all(&dir).unwrap();
            Scratch(dir)
        }

        fn write(&self, text: &[u8], mode: u32) -> PathBuf {
            use std::os::unix::fs::PermissionsExt as _;
            let path = self.0.join("tokens");
            std::fs::write(&path, text).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            path
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn every_malformed_line_is_refused_with_its_number() {
        let long_name = "n".repeat(MAX_NAME_LEN + 1);
        let token = format!("tally_{}", "ab".repeat(32));
        let head = "# tokens\n\nok-1 3f2a000000000000000000000000000000000000000000000000000000000009 read\n";
        let cases: Vec<(String, LineError)> = vec![
            ("lonely".into(), LineError::Fields(1)),
            (format!("a {HASH_A}"), LineError::Fields(2)),
            (
                format!("a {HASH_A} read 2027-01-01T00:00:00Z extra"),
                LineError::Fields(5),
            ),
            (
                format!("bad/name {HASH_A} read"),
                LineError::Name("\"bad/name\"".into()),
            ),
            (
                format!("{long_name} {HASH_A} read"),
                LineError::Name(shown(&long_name)),
            ),
            (format!("é {HASH_A} read"), LineError::Name("\"é\"".into())),
            (
                format!("a {} read", &HASH_A[1..]),
                LineError::HashLength(63),
            ),
            (format!("a {HASH_A}0 read"), LineError::HashLength(65)),
            (format!("a {}g read", &HASH_A[1..]), LineError::HashDigit),
            (format!("a {token} read"), LineError::TokenNotHash),
            (
                format!("a {HASH_A} read,wrte"),
                LineError::Scopes(ScopeError::Unknown("\"wrte\"".into())),
            ),
            (
                format!("a {HASH_A} read,"),
                LineError::Scopes(ScopeError::EmptyItem),
            ),
            (
                format!("a {HASH_A} ,"),
                LineError::Scopes(ScopeError::EmptyItem),
            ),
            (
                format!("a {HASH_A} Read"),
                LineError::Scopes(ScopeError::Unknown("\"Read\"".into())),
            ),
            (
                format!("a {HASH_A} read tomorrow"),
                LineError::Expires(ExpiryError::Format("\"tomorrow\"".into())),
            ),
            (
                format!("a {HASH_A} read 2027-01-01T00:00:00"),
                LineError::Expires(ExpiryError::NoZone("\"2027-01-01T00:00:00\"".into())),
            ),
            (
                format!("a {HASH_A} read 2027-13-01T00:00:00Z"),
                LineError::Expires(ExpiryError::Range("\"2027-13-01T00:00:00Z\"".into())),
            ),
            (
                format!("ok-1 {HASH_A} read"),
                LineError::DuplicateName {
                    name: "ok-1".into(),
                    first: 3,
                },
            ),
            (
                "b 3f2a000000000000000000000000000000000000000000000000000000000009 write".into(),
                LineError::DuplicateHash {
                    first_name: "ok-1".into(),
                    first: 3,
                },
            ),
            (
                // The same hash in capitals is the same hash.
                "b 3F2A000000000000000000000000000000000000000000000000000000000009 write".into(),
                LineError::DuplicateHash {
                    first_name: "ok-1".into(),
                    first: 3,
                },
            ),
        ];
        for (bad, expected) in cases {
            let text = format!("{head}  # a comment\n{bad}\nok-2 {HASH_B} read\n");
            let err = Tokens::parse(&text).expect_err(&bad);
            assert_eq!(err.line(), Some(5), "{bad}");
            match err.kind() {
                TokensErrorKind::Line { line: 5, error } => assert_eq!(error, &expected, "{bad}"),
                other => panic!("{bad}: {other:?}"),
            }
            let message = err.to_string();
            assert!(message.starts_with("tokens: line 5: "), "{message}");
            for field in bad.split_ascii_whitespace().skip(1).take(1) {
                assert!(!message.contains(field), "{message} repeats {field}");
            }
            assert!(!message.contains(&token), "{message}");
        }
    }

    #[test]
    fn a_file_of_comments_blank_lines_and_tokens_is_read() {
        let text = format!(
            "# NAME HASH SCOPES [EXPIRES]\n\n   \t\nci-bot {HASH_A} read,write 2027-01-01T00:00:00Z # until the audit\r\nops\t{HASH_B}\tadmin,read,write\n#last\n"
        );
        let tokens = Tokens::parse(&text).unwrap();
        assert_eq!(tokens.len(), 2);
        assert!(!tokens.is_empty());
        assert!(Tokens::parse("# nothing\n\n").unwrap().is_empty());
        let entry = &tokens.by_hash[&unhex(HASH_A).unwrap()];
        assert_eq!(entry.name, "ci-bot");
        assert_eq!(entry.scopes.to_string(), "read,write");
        assert_eq!(entry.expires, Some(at("2027-01-01T00:00:00Z")));
        assert_eq!(entry.line, 4);
        let entry = &tokens.by_hash[&unhex(HASH_B).unwrap()];
        assert_eq!(entry.scopes.to_string(), "read,write,admin");
        assert_eq!(entry.expires, None);
        assert!(!format!("{tokens:?}").contains("3f2a"));
    }

    #[test]
    fn the_line_token_new_prints_admits_its_token() {
        let token = new_token().unwrap();
        let scopes: Scopes = "write,read".parse().unwrap();
        let line = file_line("ci-bot", &token, scopes, Some(at("2027-01-01T00:00:00Z"))).unwrap();
        assert!(!line.contains(&token));
        let tokens = Tokens::parse(&format!("# made by tally token new\n{line}\n")).unwrap();
        let now = at("2026-06-01T12:00:00Z");
        let granted = tokens.check(Some(&header(&token)), Scope::Write, now);
        assert_eq!(
            granted,
            Ok(Granted {
                name: "ci-bot".into()
            })
        );
        assert_eq!(
            tokens.check(Some(&header(&token)), Scope::Admin, now),
            Err(Denied::Scope {
                name: "ci-bot".into(),
                need: Scope::Admin
            })
        );
        let never = file_line("ops", &token, Scopes::NONE.with(Scope::Admin), None).unwrap();
        assert_eq!(never.split_ascii_whitespace().count(), 3);
        assert!(Tokens::parse(&never).is_ok());
    }

    #[test]
    fn each_refusal_has_its_status_and_says_nothing_secret() {
        let read = new_token().unwrap();
        let old = new_token().unwrap();
        let text = format!(
            "{}\n{}\n",
            file_line("reader", &read, "read".parse().unwrap(), None).unwrap(),
            file_line(
                "old",
                &old,
                "read,write,admin".parse().unwrap(),
                Some(at("2020-01-01T00:00:00Z"))
            )
            .unwrap(),
        );
        let tokens = Tokens::parse(&text).unwrap();
        let now = at("2026-01-01T00:00:00Z");
        let stranger = new_token().unwrap();
        let cases = [
            (None, Scope::Read, Denied::Missing, 401, "missing"),
            (
                Some(format!("Basic {read}")),
                Scope::Read,
                Denied::Malformed,
                401,
                "malformed",
            ),
            (
                Some(format!("Bearer {stranger}")),
                Scope::Read,
                Denied::Unknown,
                401,
                "unknown",
            ),
            (
                Some(format!("Bearer {old}")),
                Scope::Read,
                Denied::Expired { name: "old".into() },
                401,
                "expired",
            ),
            (
                Some(format!("Bearer {read}")),
                Scope::Write,
                Denied::Scope {
                    name: "reader".into(),
                    need: Scope::Write,
                },
                403,
                "scope",
            ),
        ];
        for (auth, need, expected, status, reason) in cases {
            let denied = tokens
                .check(auth.as_deref().map(str::as_bytes), need, now)
                .unwrap_err();
            assert_eq!(denied, expected);
            assert_eq!(denied.status(), status);
            assert_eq!(denied.reason(), reason);
            assert!(
                denied
                    .www_authenticate()
                    .starts_with("Bearer realm=\"tally\"")
            );
            let message = denied.to_string();
            for secret in [&read, &old, &stranger] {
                assert!(!message.contains(secret.as_str()), "{message}");
                assert!(
                    !message.contains(&hex(&digest(secret.as_bytes()))),
                    "{message}"
                );
            }
        }
        assert_eq!(
            Denied::Scope {
                name: "x".into(),
                need: Scope::Admin
            }
            .www_authenticate(),
            r#"Bearer realm="tally", error="insufficient_scope", scope="admin""#
        );
        assert_eq!(
            Denied::Expired { name: "old".into() }.token_name(),
            Some("old")
        );
        assert_eq!(Denied::Unknown.token_name(), None);
        assert_eq!(
            tokens.check(Some(&header(&read)), Scope::Read, now),
            Ok(Granted {
                name: "reader".into()
            })
        );
    }

    #[test]
    fn a_token_works_until_not_including_its_expiry() {
        let token = new_token().unwrap();
        let expires = at("2027-01-01T00:00:00Z");
        let line = file_line("t", &token, "read".parse().unwrap(), Some(expires)).unwrap();
        let tokens = Tokens::parse(&line).unwrap();
        let check = |now| tokens.check(Some(&header(&token)), Scope::Read, now);
        assert!(check(expires - Duration::from_nanos(1)).is_ok());
        let expired = Err(Denied::Expired { name: "t".into() });
        assert_eq!(check(expires), expired);
        assert_eq!(check(expires + Duration::from_secs(1)), expired);
    }

    #[test]
    fn bearer_takes_the_scheme_in_any_case_and_one_word_after_spaces() {
        for good in [
            "Bearer tok",
            "bearer tok",
            "BEARER tok",
            "bEaReR tok",
            "Bearer    tok",
            " Bearer tok \t",
        ] {
            assert_eq!(bearer(good.as_bytes()), Some(&b"tok"[..]), "{good:?}");
        }
        for bad in [
            "",
            "Bearer",
            "Bearer ",
            "Bearer    ",
            "Bearertok",
            "Bearer\ttok",
            "Bearer \ttok",
            "Bearer tok more",
            "Basic dG9rOg==",
            "Token tok",
            "Bearer tök",
        ] {
            assert_eq!(bearer(bad.as_bytes()), None, "{bad:?}");
        }
        let token = new_token().unwrap();
        let tokens =
            Tokens::parse(&file_line("t", &token, "read".parse().unwrap(), None).unwrap()).unwrap();
        let now = SystemTime::now();
        let granted = Ok(Granted { name: "t".into() });
        for scheme in ["Bearer", "bearer", "BEARER"] {
            for gap in [" ", "   "] {
                let value = format!("{scheme}{gap}{token}");
                assert_eq!(
                    tokens.check(Some(value.as_bytes()), Scope::Read, now),
                    granted
                );
            }
        }
        for bad in [
            "Bearer",
            "Bearer ",
            &format!("Bearer{token}"),
            &format!("Basic {token}"),
        ] {
            assert_eq!(
                tokens.check(Some(bad.as_bytes()), Scope::Read, now),
                Err(Denied::Malformed),
                "{bad:?}"
            );
        }
        // The token is compared whole: a prefix or a longer one is unknown.
        for near in [&token[..token.len() - 1], &format!("{token}0")] {
            assert_eq!(
                tokens.check(Some(&header(near)), Scope::Read, now),
                Err(Denied::Unknown)
            );
        }
    }

    #[test]
    fn scopes_read_and_print_as_a_set() {
        let s: Scopes = "write,read,read".parse().unwrap();
        assert!(s.contains(Scope::Read) && s.contains(Scope::Write) && !s.contains(Scope::Admin));
        assert_eq!(s.to_string(), "read,write");
        assert_eq!(s.iter().collect::<Vec<_>>(), [Scope::Read, Scope::Write]);
        let all: Scopes = Scope::ALL.into_iter().collect();
        assert_eq!(all.to_string(), "read,write,admin");
        assert_eq!("".parse::<Scopes>(), Err(ScopeError::Empty));
        assert_eq!("read,,write".parse::<Scopes>(), Err(ScopeError::EmptyItem));
        assert_eq!(
            "read,all".parse::<Scopes>(),
            Err(ScopeError::Unknown("\"all\"".into()))
        );
        assert_eq!(Scope::Admin.to_string(), "admin");
        assert_eq!("write".parse::<Scope>(), Ok(Scope::Write));
    }

    #[test]
    fn expiry_times_need_a_zone_and_honour_its_offset() {
        let utc = at("2027-01-01T00:00:00Z");
        assert_eq!(
            utc.duration_since(SystemTime::UNIX_EPOCH)
                .unwrap()
                .as_secs(),
            1_798_761_600
        );
        assert_eq!(at("2027-01-01t00:00:00z"), utc);
        assert_eq!(at("2027-01-01T02:00:00+02:00"), utc);
        assert_eq!(at("2026-12-31T18:30:00-05:30"), utc);
        assert_eq!(at("2027-01-01T00:00:00+00:00"), utc);
        assert_eq!(
            at("2027-01-01T00:00:00.25Z"),
            utc + Duration::from_millis(250)
        );
        assert_eq!(
            at("2027-01-01T00:00:00.5-01:00"),
            utc + Duration::from_secs(3600) + Duration::from_millis(500)
        );
        assert!(matches!(
            parse_expiry("2027-01-01T00:00:00"),
            Err(ExpiryError::NoZone(_))
        ));
        for bad in [
            "2027-01-01",
            "2027-01-01 00:00:00Z",
            "2027-01-01T00:00:00.Z",
            "2027-01-01T00:00:00.5x+01:00",
            "2027-01-01T00:00:00+24:00",
            "2027-01-01T00:00:00+0100",
            "2027-01-01T00:00:00ZZ",
            "2027-1-01T00:00:00Z",
            "30d",
            "２027-01-01T00:00:00Z",
        ] {
            assert!(
                matches!(parse_expiry(bad), Err(ExpiryError::Format(_))),
                "{bad:?}: {:?}",
                parse_expiry(bad)
            );
        }
        for far in [
            "1969-12-31T23:59:59Z",
            "1970-01-01T00:30:00+01:00",
            "2027-02-30T00:00:00Z",
        ] {
            assert!(
                matches!(parse_expiry(far), Err(ExpiryError::Range(_))),
                "{far:?}: {:?}",
                parse_expiry(far)
            );
        }
    }

    #[test]
    fn more_than_the_most_tokens_is_refused_at_the_line_past_it() {
        let mut text = String::from("# many\n");
        for i in 0..=MAX_TOKENS {
            let hash = hex(&digest(&i.to_le_bytes()));
            text.push_str(&format!("t{i} {hash} read\n"));
        }
        let err = Tokens::parse(&text).unwrap_err();
        assert!(matches!(err.kind(), TokensErrorKind::TooMany { line } if *line == MAX_TOKENS + 2));
        let cut = text.rfind("t100000 ").unwrap();
        assert_eq!(Tokens::parse(&text[..cut]).unwrap().len(), MAX_TOKENS);
    }

    #[test]
    fn load_bounds_the_file_and_names_it_in_errors() {
        let dir = Scratch::new("load");
        let limit = usize::try_from(MAX_FILE_BYTES).unwrap();
        // One comment line, so that the test times the read, not the parse.
        let path = dir.write(&vec![b'#'; limit], 0o600);
        assert!(Tokens::load(&path).unwrap().is_empty());
        let path = dir.write(&vec![b'#'; limit + 1], 0o600);
        let err = Tokens::load(&path).unwrap_err();
        assert!(matches!(err.kind(), TokensErrorKind::TooLarge), "{err}");
        assert_eq!(err.path(), Some(path.as_path()));
        assert!(
            err.to_string()
                .starts_with(&format!("tokens file {}: ", path.display()))
        );

        let bytes = [b"# a\n\nx ", HASH_A.as_bytes(), b" read\xff\n"].concat();
        let path = dir.write(&bytes, 0o600);
        let err = Tokens::load(&path).unwrap_err();
        assert!(
            matches!(err.kind(), TokensErrorKind::NotUtf8 { line: 3 }),
            "{err}"
        );

        let path = dir.write(
            format!("# a\nx {HASH_A} read\ny {HASH_A} read\n").as_bytes(),
            0o644,
        );
        let err = Tokens::load(&path).unwrap_err();
        assert_eq!(err.line(), Some(3));
        let message = err.to_string();
        assert!(
            message.starts_with(&format!("tokens file {}: line 3: ", path.display())),
            "{message}"
        );
        assert!(!message.contains(HASH_A), "{message}");

        let path = dir.write(format!("x {HASH_A} read\n").as_bytes(), 0o664);
        assert_eq!(Tokens::load(&path).unwrap().len(), 1);
        let path = dir.write(format!("x {HASH_A} read\n").as_bytes(), 0o646);
        let err = Tokens::load(&path).unwrap_err();
        assert!(
            matches!(err.kind(), TokensErrorKind::WorldWritable { mode: 0o646 }),
            "{err}"
        );

        let missing = dir.0.join("absent");
        let err = Tokens::load(&missing).unwrap_err();
        assert!(matches!(err.kind(), TokensErrorKind::Read(_)));
        assert!(err.to_string().contains("absent"), "{err}");
        assert!(std::error::Error::source(&err).is_some());
    }

    #[test]
    fn reload_keeps_the_old_tokens_when_the_new_file_is_refused() {
        let dir = Scratch::new("reload");
        let first = new_token().unwrap();
        let second = new_token().unwrap();
        let line =
            |name, token: &str| file_line(name, token, "read".parse().unwrap(), None).unwrap();
        let path = dir.write(format!("{}\n", line("first", &first)).as_bytes(), 0o600);
        let shared = SharedTokens::load(&path).unwrap();
        assert_eq!(shared.path(), path);
        let now = SystemTime::now();
        let check = |token: &str| {
            shared
                .current()
                .check(Some(&header(token)), Scope::Read, now)
        };
        assert!(check(&first).is_ok());
        let before = shared.current();

        dir.write(
            format!("{}\nsecond {HASH_A}\n", line("first", &first)).as_bytes(),
            0o600,
        );
        let err = shared.reload().unwrap_err();
        assert_eq!(err.line(), Some(2));
        assert!(check(&first).is_ok());
        assert_eq!(check(&second), Err(Denied::Unknown));

        dir.write(
            format!(
                "{}\n{}\n",
                line("second", &second),
                line("third", &new_token().unwrap())
            )
            .as_bytes(),
            0o600,
        );
        assert_eq!(shared.reload().unwrap(), 2);
        assert!(check(&second).is_ok());
        assert_eq!(check(&first), Err(Denied::Unknown));
        // A table taken before the reload stays as it was.
        assert!(
            before
                .check(Some(&header(&first)), Scope::Read, now)
                .is_ok()
        );
        assert!(!format!("{shared:?}").contains(HASH_A));
    }
}
