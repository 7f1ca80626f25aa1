//! Counter names (SPEC §2): one URL path segment, percent-decoded, 1 to
//! 1024 bytes of UTF-8. Pure; shared by the HTTP layer, the internal
//! protocol and the client, so they cannot disagree.

/// Longest counter name, in bytes of UTF-8.
pub const MAX_NAME_LEN: usize = 1024;

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
}
