//! How an outbox [`Message`] becomes a NATS message: subject checks, header mapping, size.
//!
//! Every published message carries:
//!
//! | Header | Value | Why |
//! |---|---|---|
//! | [`MSG_ID_HEADER`] (`Nats-Msg-Id`) | the message id (hyphenated UUIDv7) | JetStream drops a republish inside the stream's duplicate window |
//! | [`KEY_HEADER`] (`Outbox-Key`) | the ordering key, when the message has one | consumers can check per-key order |
//! | every header of the message | as given | |
//!
//! The two headers above are set by the publisher: a message header with the same name (in any
//! letter case) is replaced, so a message cannot forge another message's id.

use std::str::FromStr;

use async_nats::{HeaderMap, HeaderName, HeaderValue};
use outbox_core::Message;

use crate::Error;

/// The header carrying the message's ordering key: `Outbox-Key`.
pub const KEY_HEADER: &str = "Outbox-Key";

/// The header carrying the message id, which JetStream deduplicates on: `Nats-Msg-Id`.
pub const MSG_ID_HEADER: &str = "Nats-Msg-Id";

/// The NATS headers for `message`: its own headers, then [`MSG_ID_HEADER`] and [`KEY_HEADER`].
///
/// Fails with [`Error::InvalidHeader`] for a name or value NATS cannot carry (a message built by
/// [`Message::builder`] never has one, but a deserialized one might).
///
/// # Examples
///
/// ```
/// use outbox_core::Message;
/// use outbox_nats::{KEY_HEADER, MSG_ID_HEADER, headers::nats_headers};
///
/// let message = Message::builder("orders.created").key("customer-1").header("X-Trace", "t1").build()?;
/// let headers = nats_headers(&message)?;
/// assert_eq!(headers.get(MSG_ID_HEADER).map(|v| v.as_str()), Some(message.id().to_string().as_str()));
/// assert_eq!(headers.get(KEY_HEADER).map(|v| v.as_str()), Some("customer-1"));
/// assert_eq!(headers.get("X-Trace").map(|v| v.as_str()), Some("t1"));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn nats_headers(message: &Message) -> Result<HeaderMap, Error> {
    let mut headers = HeaderMap::new();
    for (name, value) in message.headers() {
        // The builder refuses reserved names (`Nats-*`, `Outbox-Key`); a row written around it
        // (by hand, or before that check existed) must still not forge the id or key, nor make
        // the publish conditional or a stream purge.
        if outbox_core::message::is_reserved_header(name) {
            continue;
        }
        headers.insert(header_name(name)?, header_value(name, value)?);
    }
    headers.insert(MSG_ID_HEADER, message.id().hyphenated().to_string());
    if let Some(key) = message.key() {
        headers.insert(KEY_HEADER, header_value(KEY_HEADER, key)?);
    }
    Ok(headers)
}

fn header_name(name: &str) -> Result<HeaderName, Error> {
    let invalid = |reason: &str| Error::InvalidHeader {
        name: name.to_owned(),
        reason: reason.to_owned(),
    };
    if name.is_empty() {
        return Err(invalid("the name is empty"));
    }
    HeaderName::from_str(name)
        .map_err(|_| invalid("the name must be printable ASCII without ':' or spaces"))
}

fn header_value(name: &str, value: &str) -> Result<HeaderValue, Error> {
    HeaderValue::from_str(value).map_err(|_| Error::InvalidHeader {
        name: name.to_owned(),
        reason: "the value contains a line break".to_owned(),
    })
}

/// Bytes that `headers` and a payload of `payload_len` take on the wire, which is what the
/// server compares with its `max_payload`: `NATS/1.0\r\n`, each `name: value\r\n`, `\r\n`.
pub fn wire_size(headers: &HeaderMap, payload_len: usize) -> usize {
    if headers.is_empty() {
        return payload_len;
    }
    let lines: usize = headers
        .iter()
        .flat_map(|(name, values)| {
            values
                .iter()
                .map(move |value| AsRef::<str>::as_ref(name).len() + 2 + value.as_str().len() + 2)
        })
        .sum();
    b"NATS/1.0\r\n".len() + lines + 2 + payload_len
}

/// Checks that `subject` can be published to: what [`Message::builder`] checks (non-empty, at
/// most 1 KiB, no whitespace, no empty token), and no wildcard token (`*` or `>`), which NATS
/// does not deliver as a literal subject.
pub fn check_subject(subject: &str) -> Result<(), Error> {
    let invalid = |reason: String| Error::InvalidSubject {
        subject: subject.to_owned(),
        reason,
    };
    outbox_core::message::validate_subject(subject).map_err(|e| match e {
        outbox_core::Error::InvalidMessage(reason) => invalid(reason),
        other => invalid(other.to_string()),
    })?;
    if subject.split('.').any(|token| token == "*" || token == ">") {
        return Err(invalid("wildcards cannot be published to".to_owned()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
        headers.get(name).map(HeaderValue::as_str)
    }

    #[test]
    fn id_key_and_message_headers_are_mapped() {
        let m = Message::builder("a.b")
            .key("k-1")
            .header("Content-Type", "application/json")
            .build()
            .unwrap();
        let h = nats_headers(&m).unwrap();
        assert_eq!(get(&h, "Nats-Msg-Id"), Some(m.id().to_string().as_str()));
        assert_eq!(get(&h, "Outbox-Key"), Some("k-1"));
        assert_eq!(get(&h, "Content-Type"), Some("application/json"));
        assert_eq!(h.iter().count(), 3);
    }

    #[test]
    fn no_key_no_key_header() {
        let m = Message::builder("a").build().unwrap();
        let h = nats_headers(&m).unwrap();
        assert_eq!(get(&h, KEY_HEADER), None);
        assert!(get(&h, MSG_ID_HEADER).is_some());
    }

    #[test]
    fn message_headers_cannot_forge_id_or_key() {
        // `build_stored`: as if written around the builder's checks.
        let m = Message::builder("a")
            .header("nats-msg-id", "forged")
            .header("Nats-Msg-Id", "forged")
            .header("OUTBOX-KEY", "forged")
            .header("Nats-Rollup", "all")
            .build_stored();
        let h = nats_headers(&m).unwrap();
        assert_eq!(get(&h, MSG_ID_HEADER), Some(m.id().to_string().as_str()));
        assert_eq!(h.iter().count(), 1, "{h:?}");
    }

    #[test]
    fn deserialized_bad_headers_are_errors_not_panics() {
        let good = Message::builder("a").header("X", "v").build().unwrap();
        let text = serde_json::to_string(&good).unwrap();
        for (from, to) in [
            (r#""X":"v""#, r#""X":"a\r\nb""#),
            (r#""X":"v""#, r#""a b":"v""#),
            (r#""X":"v""#, r#""":"v""#),
        ] {
            let bad: Message = serde_json::from_str(&text.replace(from, to)).unwrap();
            let err = nats_headers(&bad).unwrap_err();
            assert!(matches!(err, Error::InvalidHeader { .. }), "{err}");
            assert!(!err.is_transient());
        }
    }

    #[test]
    fn wire_size_matches_the_encoding() {
        let mut h = HeaderMap::new();
        assert_eq!(wire_size(&h, 7), 7);
        h.insert("Ab", "cde");
        // "NATS/1.0\r\n" + "Ab: cde\r\n" + "\r\n"
        assert_eq!(wire_size(&h, 7), 10 + 9 + 2 + 7);
    }

    #[test]
    fn wildcards_and_malformed_subjects_are_rejected() {
        for s in ["a.*", "a.>", ">", "a b", "a..b", ""] {
            let err = check_subject(s).unwrap_err();
            assert!(matches!(err, Error::InvalidSubject { .. }), "{s:?}: {err}");
        }
        let err = check_subject("a..b").unwrap_err();
        assert_eq!(
            outbox_core::Error::from(err).to_string(),
            "invalid message: invalid subject \"a..b\": subject \"a..b\" has an empty token"
        );
        for s in ["a", "a.b-c", "a.*b", "orders.created"] {
            check_subject(s).unwrap();
        }
    }
}
