//! What a client may send, checked once for everyone: counter names (SPEC
//! §2: one URL path segment, percent-decoded, 1 to 1024 bytes of UTF-8),
//! increment amounts, idempotency keys and durations. Pure, with typed
//! errors; the HTTP layer, the internal protocol and the command-line client
//! all use these, so they cannot disagree.

use std::time::Duration;

/// Longest counter name, in bytes of UTF-8.
pub const MAX_NAME_LEN: usize = 1024;
/// Longest idempotency key, in bytes.
pub const MAX_KEY_LEN: usize = 128;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("counter name is empty")]
    Empty,
    #[error("counter name is {0} bytes; at most {MAX_NAME_LEN} are allowed")]
    TooLong(usize),
    #[error("counter name has a '%' that is not followed by two hex digits")]
    BadEscape,
    #[error("counter name is not valid UTF-8 after percent-decoding")]
    NotUtf8,
}

pub fn validate_name(name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.len() > MAX_NAME_LEN {
        return Err(NameError::TooLong(name.len()));
    }
    Ok(())
}

/// Percent-decodes one path segment into a valid counter name.
pub fn decode_name(raw: &str) -> Result<String, NameError> {
    let b = raw.as_bytes();
    let bad_escape = b.iter().enumerate().any(|(i, &c)| {
        c == b'%'
            && !(b.get(i + 1).is_some_and(u8::is_ascii_hexdigit)
                && b.get(i + 2).is_some_and(u8::is_ascii_hexdigit))
    });
    if bad_escape {
        return Err(NameError::BadEscape);
    }
    let name = percent_encoding::percent_decode_str(raw)
        .decode_utf8()
        .map_err(|_| NameError::NotUtf8)?
        .into_owned();
    validate_name(&name)?;
    Ok(name)
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AmountError {
    #[error("body is not UTF-8")]
    NotUtf8,
    #[error("body is empty; send a non-negative decimal integer")]
    Empty,
    #[error("body {0:?} is not a non-negative decimal integer")]
    NotDecimal(String),
    #[error("amount {0} is larger than {max}", max = u64::MAX)]
    TooLarge(String),
}

/// Parses an increment body: a non-negative decimal integer that fits a u64,
/// surrounding whitespace allowed.
pub fn parse_amount(body: &[u8]) -> Result<u64, AmountError> {
    let s = std::str::from_utf8(body)
        .map_err(|_| AmountError::NotUtf8)?
        .trim();
    if s.is_empty() {
        return Err(AmountError::Empty);
    }
    if !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(AmountError::NotDecimal(truncate(s, 40).to_string()));
    }
    s.parse::<u64>()
        .map_err(|_| AmountError::TooLarge(truncate(s, 40).to_string()))
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("Idempotency-Key must be 1 to {MAX_KEY_LEN} characters")]
    Length,
    #[error("Idempotency-Key must be visible ASCII characters")]
    NotVisibleAscii,
}

/// Checks an idempotency key: 1 to 128 visible ASCII characters.
pub fn validate_key(key: &str) -> Result<(), KeyError> {
    if key.is_empty() || key.len() > MAX_KEY_LEN {
        return Err(KeyError::Length);
    }
    if !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(KeyError::NotVisibleAscii);
    }
    Ok(())
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a positive duration like 500ms, 2s, 1m30s, 24h or 2.5 (seconds)")]
pub struct DurationError(pub String);

/// Parses a positive duration (`?timeout=` and every duration flag): what
/// `humantime` reads (`500ms`, `2s`, `1m30s`, `24h`, `1h 15m`), or a decimal
/// number of seconds with an optional `s` or `ms` (`1.5`, `2.5s`, `0.5ms`).
pub fn parse_duration(raw: &str) -> Result<Duration, DurationError> {
    let bad = || DurationError(raw.to_string());
    if let Ok(d) = humantime::parse_duration(raw.trim()) {
        return if d.is_zero() { Err(bad()) } else { Ok(d) };
    }
    let (number, scale) = if let Some(ms) = raw.strip_suffix("ms") {
        (ms, 0.001)
    } else if let Some(s) = raw.strip_suffix('s') {
        (s, 1.0)
    } else {
        (raw, 1.0)
    };
    let n: f64 = number.parse().map_err(|_| bad())?;
    if !n.is_finite() || n <= 0.0 {
        return Err(bad());
    }
    Duration::try_from_secs_f64(n * scale).map_err(|_| bad())
}

/// A duration flag: read by [`parse_duration`], printed by
/// [`format_duration`] (so `--help` shows defaults the way they are typed).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dur(pub Duration);

impl std::fmt::Display for Dur {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&format_duration(self.0))
    }
}

impl std::str::FromStr for Dur {
    type Err = DurationError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_duration(s).map(Dur)
    }
}

/// A duration as [`parse_duration`] reads it back: `24h`, `5m`, `1s`, `500ms`.
pub fn format_duration(d: Duration) -> String {
    let secs = d.as_secs();
    if d.subsec_nanos() == 0 && secs > 0 && secs.is_multiple_of(3600) {
        format!("{}h", secs / 3600)
    } else if d.subsec_nanos() == 0 && secs > 0 && secs.is_multiple_of(60) {
        format!("{}m", secs / 60)
    } else if d.subsec_nanos() == 0 {
        format!("{}s", d.as_secs())
    } else if d.subsec_nanos().is_multiple_of(1_000_000) {
        format!("{}ms", d.as_millis())
    } else {
        format!("{}s", d.as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_bounded() {
        assert_eq!(validate_name(""), Err(NameError::Empty));
        assert!(validate_name(&"a".repeat(1024)).is_ok());
        assert_eq!(
            validate_name(&"a".repeat(1025)),
            Err(NameError::TooLong(1025))
        );
        assert_eq!(decode_name("%FF"), Err(NameError::NotUtf8));
        assert_eq!(decode_name("%ZZ"), Err(NameError::BadEscape));
        assert!(decode_name("a%").is_err());
        assert!(decode_name("a%2").is_err());
        assert_eq!(decode_name("%25").unwrap(), "%");
        assert_eq!(decode_name("a%2Fb%20c").unwrap(), "a/b c");
    }

    #[test]
    fn amounts_parse_strictly() {
        assert_eq!(parse_amount(b"5"), Ok(5));
        assert_eq!(parse_amount(b" \n 42\t\r\n"), Ok(42));
        assert_eq!(parse_amount(b"0"), Ok(0));
        assert_eq!(parse_amount(b"007"), Ok(7));
        assert_eq!(parse_amount(b"18446744073709551615"), Ok(u64::MAX));
        for bad in [
            &b""[..],
            b"   ",
            b"-1",
            b"+1",
            b"1.5",
            b"1e3",
            b"abc",
            b"1 2",
            b"0x10",
            b"18446744073709551616",
            b"\xff",
        ] {
            assert!(parse_amount(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn keys_are_visible_ascii_and_bounded() {
        assert!(validate_key("retry-1").is_ok());
        assert!(validate_key(&"k".repeat(MAX_KEY_LEN)).is_ok());
        assert_eq!(validate_key(""), Err(KeyError::Length));
        assert_eq!(validate_key("has space"), Err(KeyError::NotVisibleAscii));
        assert!(validate_key("é").is_err());
        assert_eq!(
            validate_key(&"k".repeat(MAX_KEY_LEN + 1)),
            Err(KeyError::Length)
        );
    }

    #[test]
    fn durations_parse_and_print_back() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("24h"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1h 15m"), Ok(Duration::from_secs(4500)));
        assert_eq!(parse_duration("2.5s"), Ok(Duration::from_millis(2500)));
        for bad in ["", "0", "0s", "-1", "abc", "1x", "NaN", "inf", "1h -5m"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} should be refused");
        }
        for d in [
            Duration::from_secs(10),
            Duration::from_millis(500),
            Duration::from_micros(1500),
            Duration::from_secs(86_400),
            Duration::from_secs(90),
            Duration::from_secs(300),
        ] {
            assert_eq!(parse_duration(&format_duration(d)), Ok(d), "{d:?}");
        }
    }
}
