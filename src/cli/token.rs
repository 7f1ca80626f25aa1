//! `tally token new | hash`: makes client tokens and the lines of the
//! tokens file that admit them (see [`crate::auth`]). Nothing here talks
//! to a node or keeps a token.

use std::io::{BufRead as _, IsTerminal as _, Read as _, Write as _};
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use clap::Subcommand;

use crate::auth::{self, MIN_TOKEN_LEN, Scopes};

// Doc comments here are --help text, not rustdoc: brackets and <TOKEN> are literal.
#[allow(rustdoc::broken_intra_doc_links, rustdoc::invalid_html_tags)]
#[derive(Subcommand, Debug)]
pub enum TokenCommand {
    /// Make a new random token (`tally_` and 64 hex digits, 256 bits)
    ///
    /// Prints the token on the first line and, on the second, the line to
    /// append to the tokens file, which holds only the token's SHA-256:
    ///
    ///   tally token new --name ci-bot --scope read,write --expires 90d | tail -1 >> tokens
    ///
    /// The token is shown only once: nothing keeps it.
    #[command(verbatim_doc_comment)]
    New {
        /// Its name in the tokens file and the audit log: 1 to 64 characters
        /// of A-Z a-z 0-9 . _ -, unique in the file.
        #[arg(long, value_parser = parse_name)]
        name: String,
        /// What it may do: read, write and admin, comma-separated. They are
        /// independent: admin does not include read or write.
        #[arg(long, value_name = "SCOPES", value_parser = parse_scopes)]
        scope: Scopes,
        /// When it stops working: a duration from now (30d, 12h) or an RFC
        /// 3339 time (2027-01-01T00:00:00Z) [default: never].
        #[arg(long, value_name = "WHEN", value_parser = parse_expires)]
        expires: Option<Expires>,
    },
    /// Read a token from stdin and print its SHA-256 in hex
    ///
    /// The hash is the second field of the token's line in the tokens file.
    /// For tokens made elsewhere, which need at least 32 random characters
    /// of visible ASCII:
    ///
    ///   printf %s "$TOKEN" | tally token hash
    #[command(verbatim_doc_comment)]
    Hash,
}

/// When a new token stops working, as given to --expires.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expires {
    After(Duration),
    At(SystemTime),
}

fn parse_name(raw: &str) -> Result<String, String> {
    if auth::valid_name(raw) {
        Ok(raw.to_string())
    } else {
        Err("a name is 1 to 64 characters of A-Z, a-z, 0-9, '.', '_' and '-'".into())
    }
}

fn parse_scopes(raw: &str) -> Result<Scopes, String> {
    raw.parse().map_err(|e: auth::ScopeError| e.to_string())
}

fn parse_expires(raw: &str) -> Result<Expires, String> {
    if let Ok(d) = crate::input::parse_duration(raw) {
        return Ok(Expires::After(d));
    }
    auth::parse_expiry(raw)
        .map(Expires::At)
        .map_err(|e| format!("neither a duration like 30d or 12h, nor a time: {e}"))
}

pub fn run(command: TokenCommand) -> ExitCode {
    match command {
        TokenCommand::New {
            name,
            scope,
            expires,
        } => new(&name, scope, expires),
        TokenCommand::Hash => hash(),
    }
}

fn new(name: &str, scopes: Scopes, expires: Option<Expires>) -> ExitCode {
    let token = match auth::new_token() {
        Ok(token) => token,
        Err(e) => {
            super::say(&format!("cannot read random bytes from the kernel: {e}"));
            return ExitCode::FAILURE;
        }
    };
    let text = match render_new(name, &token, scopes, expires, SystemTime::now()) {
        Ok(text) => text,
        Err(e) => {
            super::say(&e);
            return ExitCode::from(2);
        }
    };
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        super::say(&format!("cannot print the token: {e}"));
        return ExitCode::FAILURE;
    }
    super::say(
        &"the token (first line) is shown only once and kept nowhere: hand it over now; \
          the second line, which holds only its SHA-256, goes in the tokens file",
    );
    ExitCode::SUCCESS
}

/// What `tally token new` prints: the token, then its tokens-file line.
fn render_new(
    name: &str,
    token: &str,
    scopes: Scopes,
    expires: Option<Expires>,
    now: SystemTime,
) -> Result<String, String> {
    let expires = match expires {
        None => None,
        // Rounded up to a whole second: the line is read by people.
        Some(Expires::After(d)) => Some(
            now.checked_add(d)
                .map(whole_second_up)
                .ok_or("--expires is too far ahead")?,
        ),
        Some(Expires::At(at)) if at <= now => {
            return Err(format!(
                "--expires {} is already past",
                humantime::format_rfc3339(at)
            ));
        }
        Some(Expires::At(at)) => Some(at),
    };
    let line = auth::file_line(name, token, scopes, expires).map_err(|e| e.to_string())?;
    Ok(format!("{token}\n{line}\n"))
}

fn whole_second_up(t: SystemTime) -> SystemTime {
    match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) if d.subsec_nanos() > 0 => {
            SystemTime::UNIX_EPOCH + Duration::from_secs(d.as_secs().saturating_add(1))
        }
        _ => t,
    }
}

/// Longest input `tally token hash` reads.
const MAX_HASH_INPUT: u64 = 4096;

fn hash() -> ExitCode {
    let stdin = std::io::stdin();
    let mut input = Vec::new();
    let read = if stdin.is_terminal() {
        super::say(&"paste the token, then press Enter");
        stdin
            .lock()
            .take(MAX_HASH_INPUT + 1)
            .read_until(b'\n', &mut input)
    } else {
        stdin
            .lock()
            .take(MAX_HASH_INPUT + 1)
            .read_to_end(&mut input)
    };
    if let Err(e) = read {
        super::say(&format!("cannot read stdin: {e}"));
        return ExitCode::FAILURE;
    }
    match token_hash(&input) {
        Ok(hex) => {
            let _ = writeln!(std::io::stdout(), "{hex}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            super::say(&e);
            ExitCode::from(2)
        }
    }
}

/// The hex SHA-256 of the one token `input` holds (spaces and the end of
/// line around it ignored). The error never repeats the input.
fn token_hash(input: &[u8]) -> Result<String, String> {
    if input.len() as u64 > MAX_HASH_INPUT {
        return Err(format!(
            "stdin holds more than {MAX_HASH_INPUT} bytes: give one token"
        ));
    }
    let token = input.trim_ascii();
    if token.is_empty() {
        return Err("no token on stdin: e.g. printf %s \"$TOKEN\" | tally token hash".into());
    }
    if token.contains(&b'\n') {
        return Err("stdin holds more than one line: give one token".into());
    }
    if !token.iter().all(u8::is_ascii_graphic) {
        return Err(
            "a token is visible ASCII without spaces: it travels as Authorization: Bearer <token>"
                .into(),
        );
    }
    if token.len() < MIN_TOKEN_LEN {
        return Err(format!(
            "the token has {} characters; use at least {MIN_TOKEN_LEN} random ones \
             (`tally token new` makes them): the tokens file holds a fast hash, which \
             does not protect a short token",
            token.len()
        ));
    }
    Ok(auth::hex(&auth::digest(token)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{Granted, Scope, Tokens};

    fn at(text: &str) -> SystemTime {
        auth::parse_expiry(text).unwrap()
    }

    #[test]
    fn token_new_prints_the_token_then_a_line_that_admits_it() {
        let token = auth::new_token().unwrap();
        let now = at("2026-06-01T12:00:00.5Z");
        let scopes = parse_scopes("read,write").unwrap();
        let expires = parse_expires("30d").unwrap();
        let out = render_new("ci-bot", &token, scopes, Some(expires), now).unwrap();
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 2, "{out}");
        assert_eq!(lines[0], token);
        assert!(!lines[1].contains(&token));
        // 30 days on, rounded up to a whole second.
        assert!(
            lines[1].ends_with(" read,write 2026-07-01T12:00:01Z"),
            "{}",
            lines[1]
        );
        let tokens = Tokens::parse(lines[1]).unwrap();
        let header = format!("Bearer {}", lines[0]);
        assert_eq!(
            tokens.check(Some(header.as_bytes()), Scope::Write, now),
            Ok(Granted {
                name: "ci-bot".into()
            })
        );
        assert!(
            tokens
                .check(
                    Some(header.as_bytes()),
                    Scope::Write,
                    at("2026-07-01T12:00:01Z")
                )
                .is_err()
        );

        let fixed = parse_expires("2027-01-01T00:00:00Z").unwrap();
        let out = render_new("a", &token, scopes, Some(fixed), now).unwrap();
        assert!(out.ends_with(" read,write 2027-01-01T00:00:00Z\n"), "{out}");
        let out = render_new("a", &token, scopes, None, now).unwrap();
        assert!(out.ends_with(" read,write\n"), "{out}");
    }

    #[test]
    fn token_new_refuses_a_past_expiry_and_bad_flags() {
        let token = auth::new_token().unwrap();
        let now = at("2026-06-01T00:00:00Z");
        let read = parse_scopes("read").unwrap();
        let past = Expires::At(at("2026-06-01T00:00:00Z"));
        let err = render_new("a", &token, read, Some(past), now).unwrap_err();
        assert!(err.contains("already past"), "{err}");
        assert!(parse_name("a b").is_err());
        assert!(parse_name(&"n".repeat(65)).is_err());
        assert_eq!(parse_name("ci-bot.2_x"), Ok("ci-bot.2_x".into()));
        assert!(parse_scopes("").is_err());
        assert!(parse_scopes("read,root").unwrap_err().contains("\"root\""));
        assert_eq!(
            parse_expires("12h"),
            Ok(Expires::After(Duration::from_secs(12 * 3600)))
        );
        let err = parse_expires("2027-01-01T00:00:00").unwrap_err();
        assert!(err.contains("no time zone"), "{err}");
        assert!(parse_expires("soon").is_err());
    }

    #[test]
    fn token_hash_prints_the_sha256_of_one_long_token() {
        let token = auth::new_token().unwrap();
        let expected = auth::hex(&auth::digest(token.as_bytes()));
        assert_eq!(token_hash(token.as_bytes()), Ok(expected.clone()));
        assert_eq!(
            token_hash(format!("{token}\n").as_bytes()),
            Ok(expected.clone())
        );
        assert_eq!(
            token_hash(format!("  {token}\r\n").as_bytes()),
            Ok(expected)
        );
        // The SHA-256 of a known input, so that a wrong hash cannot pass.
        assert_eq!(
            token_hash(&[b'a'; 32]).unwrap(),
            "3ba3f5f43b92602683c19aee62a20342b084dd5971ddd33808d81a328879a547"
        );
        let short = "x".repeat(MIN_TOKEN_LEN - 1);
        for bad in [
            String::new(),
            "\n".into(),
            short.clone(),
            format!("{token}\n{token}\n"),
            format!("{} {}", &token[..20], &token[20..]),
            format!("{token}\u{e9}"),
            "a".repeat(usize::try_from(MAX_HASH_INPUT).unwrap() + 1),
        ] {
            let err = token_hash(bad.as_bytes()).unwrap_err();
            assert!(!err.contains(&token) && !err.contains(&short), "{err}");
        }
    }
}
