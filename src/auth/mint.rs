//! Making tokens and the lines of the tokens file that admit them.
//!
//! Randomness comes from the kernel (`getrandom(2)`), never from a seeded
//! generator: a token is a credential, not a test input.

use std::io;
use std::time::SystemTime;

use super::tokens::{LineError, ScopeError, Scopes, digest, hex, shown, valid_name};

/// How every token `tally token new` makes begins, so that one found in a
/// log or a repository is recognised for what it is.
pub const TOKEN_PREFIX: &str = "tally_";

/// Random bytes in a token: 256 bits.
const TOKEN_BYTES: usize = 32;

/// Fills `buf` from the kernel's random source, waiting for it to be
/// seeded at boot.
pub fn fill_random(buf: &mut [u8]) -> io::Result<()> {
    fill_with(buf, |rest| {
        // SAFETY: the pointer and length describe `rest`, a live, writable
        // slice that the kernel writes at most `rest.len()` bytes into.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n.unsigned_abs())
        }
    })
}

/// Calls `read` on what is left of `buf` until all of it is filled: a read
/// may be cut short by a signal (`Interrupted`, retried) or return fewer
/// bytes than asked.
fn fill_with(
    buf: &mut [u8],
    mut read: impl FnMut(&mut [u8]) -> io::Result<usize>,
) -> io::Result<()> {
    let mut filled = 0;
    while filled < buf.len() {
        match read(&mut buf[filled..]) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the random source gave no bytes",
                ));
            }
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// A new token: [`TOKEN_PREFIX`] and 64 lowercase hex digits.
pub fn new_token() -> io::Result<String> {
    let mut bytes = [0u8; TOKEN_BYTES];
    fill_random(&mut bytes)?;
    Ok(format!("{TOKEN_PREFIX}{}", hex(&bytes)))
}

/// The tokens-file line that admits `token` under `name` with `scopes`
/// until `expires`: `NAME SHA256_HEX SCOPES [EXPIRES]`.
pub fn file_line(
    name: &str,
    token: &str,
    scopes: Scopes,
    expires: Option<SystemTime>,
) -> Result<String, LineError> {
    if !valid_name(name) {
        return Err(LineError::Name(shown(name)));
    }
    if scopes.is_empty() {
        return Err(LineError::Scopes(ScopeError::Empty));
    }
    let hash = hex(&digest(token.as_bytes()));
    Ok(match expires {
        Some(at) => format!("{name} {hash} {scopes} {}", humantime::format_rfc3339(at)),
        None => format!("{name} {hash} {scopes}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{Scope, Tokens};

    #[test]
    fn new_tokens_are_prefixed_hex_and_differ() {
        let a = new_token().unwrap();
        let b = new_token().unwrap();
        assert_ne!(a, b);
        for token in [&a, &b] {
            assert_eq!(token.len(), TOKEN_PREFIX.len() + 64, "{token}");
            let digits = token.strip_prefix(TOKEN_PREFIX).expect("the prefix");
            assert!(
                digits
                    .bytes()
                    .all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')),
                "{token}"
            );
        }
    }

    #[test]
    fn fill_random_fills_the_whole_buffer() {
        let mut big = vec![0u8; 1 << 20];
        fill_random(&mut big).unwrap();
        // A 4 KiB block of zeros has chance 2^-32768 if the fill is real.
        for (i, block) in big.chunks(4096).enumerate() {
            assert!(block.iter().any(|&b| b != 0), "block {i} was left zero");
        }
        fill_random(&mut []).unwrap();
    }

    #[test]
    fn short_and_interrupted_reads_are_retried_until_the_buffer_is_full() {
        let mut calls = 0u8;
        let mut next = 1u8;
        let mut buf = [0u8; 10];
        fill_with(&mut buf, |rest| {
            calls += 1;
            if calls.is_multiple_of(2) {
                return Err(io::Error::from(io::ErrorKind::Interrupted));
            }
            let n = rest.len().min(3);
            for b in &mut rest[..n] {
                *b = next;
                next += 1;
            }
            Ok(n)
        })
        .unwrap();
        assert_eq!(buf, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
        assert_eq!(calls, 7);
        let denied = fill_with(&mut buf, |_| {
            Err(io::Error::from_raw_os_error(libc::ENOSYS))
        });
        assert_eq!(denied.unwrap_err().raw_os_error(), Some(libc::ENOSYS));
        let empty = fill_with(&mut buf, |_| Ok(0));
        assert_eq!(empty.unwrap_err().kind(), io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn file_lines_hold_the_hash_and_refuse_bad_names_and_no_scopes() {
        let token = "tally_0000000000000000000000000000000000000000000000000000000000000000";
        let read: Scopes = "read".parse().unwrap();
        let line = file_line("a.b_c-1", token, read, None).unwrap();
        assert_eq!(
            line,
            format!("a.b_c-1 {} read", hex(&digest(token.as_bytes())))
        );
        let at = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_798_761_600);
        let line = file_line("t", token, read.with(Scope::Admin), Some(at)).unwrap();
        assert!(line.ends_with(" read,admin 2027-01-01T00:00:00Z"), "{line}");
        assert_eq!(Tokens::parse(&line).unwrap().len(), 1);
        assert!(matches!(
            file_line("a b", token, read, None),
            Err(LineError::Name(_))
        ));
        assert!(matches!(
            file_line("", token, read, None),
            Err(LineError::Name(_))
        ));
        assert_eq!(
            file_line("a", token, Scopes::NONE, None),
            Err(LineError::Scopes(ScopeError::Empty))
        );
    }
}
