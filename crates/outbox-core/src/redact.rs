//! Keeping secrets out of logs and error messages.
//!
//! Every crate and binary of the outbox quotes connection strings through [`redact_url`], never
//! as given, and keeps passwords, tokens and key seeds in a [`Secret`], whose `Debug` and
//! `Display` print `***`. [`error_chain`] puts an error and its causes on one line for a log.
//!
//! # Examples
//!
//! ```
//! use outbox_core::redact::{Secret, redact_url};
//!
//! assert_eq!(redact_url("postgres://app:s3cr3t@db:5432/orders"), "postgres://app:***@db:5432/orders");
//! assert_eq!(redact_url("nats://tok3n@a:4222,nats://u:p@b"), "nats://***@a:4222,nats://u:***@b");
//! assert_eq!(redact_url("host=db password='s3 cr3t' sslmode=require"), "host=db password=*** sslmode=require");
//! assert_eq!(format!("{:?}", Secret::new("s3cr3t")), "***");
//! ```

use std::fmt;

/// What a secret is replaced with.
pub const MASK: &str = "***";

/// Query and keyword parameters whose values are secrets.
const SECRET_KEYS: [&str; 3] = ["password", "sslpassword", "token"];

/// `text`, a connection string, with every secret in it replaced by `***`.
///
/// Handles, in any mix and even when malformed (so that an error can quote what it rejects):
///
/// - URLs with user info: `scheme://user:password@host` keeps the user and masks the password.
///   In `postgres://` and `postgresql://` URLs a lone `user@` is a user name and stays; in any
///   other scheme (`nats://token@host`) and in a bare `token@host` it is a token and is masked.
/// - comma-separated server lists (`nats://a:p@h1,nats://b:q@h2`, `postgres://u:p@h1,h2/db`);
/// - `password=`, `sslpassword=` and `token=` in a query string;
/// - libpq keyword/value strings (`host=h password='x y'`).
///
/// Masking errs on the side of hiding: a password holding an unencoded `,` or `@` may take part
/// of a neighbouring host name with it, never the other way round.
pub fn redact_url(text: &str) -> String {
    if text.contains("://") || !looks_like_keyword_value(text) {
        redact_url_list(text)
    } else {
        redact_keyword_value(text)
    }
}

/// `error` and its causes on one line: each cause joined with `: ` unless the message already
/// holds it (wrappers that print their source), and multi-line messages (PostgreSQL's DETAIL
/// and HINT) joined with `; `.
///
/// The text is the errors' own; pass nothing that prints a secret.
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = cause.source();
    }
    message
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

/// A password, token or key seed: `Debug` and `Display` print `***`, so that it can sit in a
/// struct that is logged or in a `{:?}` of a configuration without leaking.
///
/// Equality compares the secrets, so configurations stay comparable in tests.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps `value`.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself, to hand to a driver. Never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(MASK)
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(MASK)
    }
}

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        Ok(Self(value.to_owned()))
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Self(value)
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Self {
        Self(value.to_owned())
    }
}

/// Whether `text` starts like libpq's `keyword = value`.
fn looks_like_keyword_value(text: &str) -> bool {
    let text = text.trim_start();
    let key_len = text
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(text.len());
    key_len > 0 && text[key_len..].trim_start().starts_with('=')
}

fn is_secret_key(key: &str) -> bool {
    SECRET_KEYS
        .iter()
        .any(|k| key.trim().eq_ignore_ascii_case(k))
}

/// A URL or a comma-separated list of URLs (or bare `host:port` entries).
fn redact_url_list(text: &str) -> String {
    let trimmed = text.trim_start();
    let scheme = trimmed
        .split_once("://")
        .map(|(s, _)| s.to_ascii_lowercase());
    if matches!(scheme.as_deref(), Some("postgres" | "postgresql")) {
        // One URL, its host list included: `postgres://u:p@h1:5432,h2:5433/db`.
        return redact_one_url(text, UserRule::KeepUser);
    }
    let mut pieces: Vec<String> = Vec::new();
    for piece in text.split(',') {
        match pieces.last_mut() {
            // A piece with user info but no scheme of its own, after a piece without user info,
            // may be the rest of a password that holds a comma: keep them together, so that
            // the whole password is masked.
            Some(previous) if !previous.contains('@') && has_bare_userinfo(piece) => {
                previous.push(',');
                previous.push_str(piece);
            }
            _ => pieces.push(piece.to_owned()),
        }
    }
    pieces
        .iter()
        .map(|piece| redact_one_url(piece, UserRule::MaskUser))
        .collect::<Vec<_>>()
        .join(",")
}

/// Whether `piece` has an `@` that is not preceded by a `://` of its own.
fn has_bare_userinfo(piece: &str) -> bool {
    match (piece.find('@'), piece.find("://")) {
        (Some(at), Some(scheme)) => at < scheme,
        (Some(_), None) => true,
        (None, _) => false,
    }
}

/// What a user-info part without a `:` is.
#[derive(Clone, Copy)]
enum UserRule {
    /// A user name (PostgreSQL): shown.
    KeepUser,
    /// A token (NATS): masked.
    MaskUser,
}

fn redact_one_url(url: &str, rule: UserRule) -> String {
    let start = url.find("://").map_or(0, |i| i + 3);
    let (head, rest) = url.split_at(start);
    // Where the user info ends: the last '@' before the query, or, when there is none there,
    // the first '@' at all (drivers read the user info up to the first '@', so a password
    // holding a '?' ends there).
    let query_start = rest.find('?').unwrap_or(rest.len());
    let at = rest[..query_start].rfind('@').or_else(|| rest.find('@'));
    let masked = match at {
        Some(at) => {
            let (userinfo, host) = rest.split_at(at);
            match (userinfo.split_once(':'), rule) {
                (Some((user, _)), _) => format!("{head}{user}:{MASK}{host}"),
                (None, UserRule::KeepUser) => url.to_owned(),
                (None, UserRule::MaskUser) => format!("{head}{MASK}{host}"),
            }
        }
        None => url.to_owned(),
    };
    redact_query(&masked)
}

/// Masks the values of secret parameters in the query string, if there is one.
fn redact_query(url: &str) -> String {
    let Some((base, query)) = url.split_once('?') else {
        return url.to_owned();
    };
    let query: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((key, _)) if is_secret_key(&decode(key)) => format!("{key}={MASK}"),
            _ => pair.to_owned(),
        })
        .collect();
    format!("{base}?{}", query.join("&"))
}

/// `%xx`-decoding good enough to recognise a key; anything malformed is kept as it is.
fn decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (bytes[i], bytes.get(i + 1), bytes.get(i + 2)) {
            (b'%', Some(&h), Some(&l)) if hex(h).is_some() && hex(l).is_some() => {
                let value = hex(h).unwrap_or(0) * 16 + hex(l).unwrap_or(0);
                out.push(u8::try_from(value).unwrap_or(b'?'));
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// libpq's `keyword = value ...`, values optionally single-quoted with `\` escapes.
fn redact_keyword_value(text: &str) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut rest = text.trim_start();
    while !rest.is_empty() {
        let Some(eq) = rest.find('=') else {
            // A trailing word without a value: not a secret's syntax, but hide it anyway.
            out.push(MASK.to_owned());
            break;
        };
        let key = rest[..eq].trim();
        if key.is_empty() || key.contains(char::is_whitespace) {
            out.push(MASK.to_owned());
            break;
        }
        let after = rest[eq + 1..].trim_start();
        let Some(value_len) = value_length(after) else {
            // An unterminated quote: everything after it may be the secret.
            out.push(format!("{key}={MASK}"));
            break;
        };
        let value = &after[..value_len];
        if is_secret_key(key) {
            out.push(format!("{key}={MASK}"));
        } else {
            out.push(format!("{key}={value}"));
        }
        rest = after[value_len..].trim_start();
    }
    out.join(" ")
}

/// The length of the value at the start of `text`: a quoted string with its quotes, or a run
/// up to whitespace. `None` for an unterminated quote.
fn value_length(text: &str) -> Option<usize> {
    let mut chars = text.char_indices();
    if text.starts_with('\'') {
        chars.next();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    chars.next();
                }
                '\'' => return Some(i + 1),
                _ => {}
            }
        }
        None
    } else {
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    chars.next();
                }
                c if c.is_whitespace() => return Some(i),
                _ => {}
            }
        }
        Some(text.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postgres_urls() {
        for (url, redacted) in [
            (
                "postgres://u:secret@h:5432/db",
                "postgres://u:***@h:5432/db",
            ),
            ("postgres://u@h/db", "postgres://u@h/db"),
            ("postgresql://h/db", "postgresql://h/db"),
            (
                "postgres://u:p@ss/w@h/db?password=x&sslmode=disable",
                "postgres://u:***@h/db?password=***&sslmode=disable",
            ),
            (
                "postgres://u:p,w@h1:5432,h2:5433/db",
                "postgres://u:***@h1:5432,h2:5433/db",
            ),
            ("postgres://u:p?x@h/db", "postgres://u:***@h/db"),
            (
                "postgres://u@h/db?sslrootcert=/a@b/ca.pem&password=x",
                "postgres://u@h/db?sslrootcert=/a@b/ca.pem&password=***",
            ),
            (
                "postgres://h/db?pass%77ord=x&sslpassword=y&Token=z",
                "postgres://h/db?pass%77ord=***&sslpassword=***&Token=***",
            ),
            (
                "postgres://h/db?password=a:b@c",
                "postgres://h/db?password=***",
            ),
        ] {
            assert_eq!(redact_url(url), redacted, "{url}");
        }
    }

    #[test]
    fn nats_urls_and_lists() {
        for (url, redacted) in [
            ("nats://u:secret@h:1/x", "nats://u:***@h:1/x"),
            ("token@h", "***@h"),
            ("nats://tok@h:4222", "nats://***@h:4222"),
            ("nats://h:1,tls://a:b@c", "nats://h:1,tls://a:***@c"),
            (
                "nats://a:b@h1:4222,nats://c:d@h2",
                "nats://a:***@h1:4222,nats://c:***@h2",
            ),
            ("a:4222, b:4222", "a:4222, b:4222"),
            // A password with a comma: hidden whole, with the host name before it.
            ("nats://u:p,w@h", "nats://u:***@h"),
            ("u:p,w@h", "u:***@h"),
            ("not a url", "not a url"),
            ("", ""),
        ] {
            assert_eq!(redact_url(url), redacted, "{url}");
        }
    }

    #[test]
    fn keyword_value_strings() {
        for (text, redacted) in [
            (
                "host=h password=secret dbname=x",
                "host=h password=*** dbname=x",
            ),
            (
                "host = h  password = 'se cr\\'et' user=u",
                "host=h password=*** user=u",
            ),
            ("password='unterminated secret", "password=***"),
            ("host=h sslpassword=x", "host=h sslpassword=***"),
            ("host=h junk secret", "host=h ***"),
            ("PASSWORD=x", "PASSWORD=***"),
        ] {
            let out = redact_url(text);
            assert_eq!(out, redacted, "{text}");
            assert!(!out.contains("secret") && !out.contains("cr"), "{out}");
        }
    }

    #[test]
    fn nothing_secret_survives() {
        // Every form at once, each secret distinct, so a partial leak is seen.
        for text in [
            "postgres://app:pw1@h/db?password=pw2",
            "nats://pw3@h1,nats://u:pw4@h2,pw5@h3",
            "host=h password=pw6",
            "host=h password='pw7",
        ] {
            let out = redact_url(text);
            for n in 1..=7 {
                assert!(!out.contains(&format!("pw{n}")), "{text} -> {out}");
            }
        }
    }

    #[test]
    fn secrets_print_as_a_mask() {
        let secret = Secret::new("s3cr3t");
        assert_eq!(format!("{secret} {secret:?}"), "*** ***");
        assert_eq!(secret.expose(), "s3cr3t");
        assert_eq!(Secret::from("a"), Secret::new("a".to_owned()));
    }

    #[test]
    fn error_chains_fit_on_one_line() {
        #[derive(Debug, thiserror::Error)]
        #[error("outer: {0}")]
        struct Outer(#[source] Middle);
        #[derive(Debug, thiserror::Error)]
        #[error("middle")]
        struct Middle(#[source] std::io::Error);
        let error = Outer(Middle(std::io::Error::other("refused\nHINT: start it")));
        assert_eq!(
            error_chain(&error),
            "outer: middle: refused; HINT: start it"
        );
    }
}
