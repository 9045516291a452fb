//! The outbox message: what a service enqueues and the relay publishes.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::Error;

/// Message headers, sent as broker headers. Sorted by name so that stored rows are stable.
pub type Headers = BTreeMap<String, String>;

/// Largest subject accepted at build time, in bytes.
pub const MAX_SUBJECT_LEN: usize = 1024;
/// Largest key accepted at build time, in bytes.
pub const MAX_KEY_LEN: usize = 1024;
/// Largest total of a message's own headers accepted at build time, in bytes, counted as they
/// travel: `name: value\r\n` per header.
pub const MAX_HEADERS_LEN: usize = 64 * 1024;
/// Longest [`MessageBuilder::delay`] accepted at build time: 100 years.
pub const MAX_DELAY: Duration = Duration::from_secs(100 * 31_557_600);

/// Header names starting with this (in any letter case) belong to NATS.
const RESERVED_PREFIX: &str = "Nats-";
/// The header a publisher sets from the key.
const KEY_HEADER: &str = "Outbox-Key";
/// The header a publisher sets from the id.
const ID_HEADER: &str = "Nats-Msg-Id";

/// One event to publish: a subject, an optional ordering key, a payload and headers.
///
/// Its [`id`](Message::id) is a UUIDv7 made by the library when the message is built. The id
/// travels with the message to the broker (JetStream's `Nats-Msg-Id`), so a message published
/// twice after a crash is recognised as one.
///
/// Messages with the same [`key`](Message::key) are published in the order they were enqueued;
/// messages without a key have no order guarantee.
///
/// # Examples
///
/// ```
/// use outbox_core::Message;
///
/// #[derive(serde::Serialize)]
/// struct OrderCreated { order_id: u64 }
///
/// let message = Message::builder("orders.created")
///     .key("customer-42")
///     .header("Content-Type", "application/json")
///     .json(&OrderCreated { order_id: 7 })?
///     .build()?;
/// assert_eq!(message.subject(), "orders.created");
/// assert_eq!(message.key(), Some("customer-42"));
/// # Ok::<(), outbox_core::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    id: Uuid,
    subject: String,
    key: Option<String>,
    #[serde(with = "payload_serde")]
    payload: Bytes,
    headers: Headers,
    created_at: SystemTime,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    schedule: Option<Schedule>,
}

/// When a message becomes due for publishing, if not at once.
///
/// A scheduled message holds back the later messages of its key until it is published, so
/// per-key order is kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Schedule {
    /// This long after the enqueuing transaction started, measured on the store's clock.
    After(Duration),
    /// At this wall-clock time (the store compares it with its own clock).
    At(SystemTime),
}

impl Message {
    /// Starts a message for `subject`.
    pub fn builder(subject: impl Into<String>) -> MessageBuilder {
        MessageBuilder {
            id: None,
            subject: subject.into(),
            key: None,
            payload: Bytes::new(),
            headers: Headers::new(),
            created_at: None,
            schedule: None,
            error: None,
        }
    }

    /// A message whose payload is `value` encoded as JSON, with `Content-Type: application/json`.
    pub fn json<T: Serialize + ?Sized>(
        subject: impl Into<String>,
        value: &T,
    ) -> Result<Self, Error> {
        Self::builder(subject).json(value)?.build()
    }

    /// The message id: a UUIDv7, unique, made when the message was built.
    pub fn id(&self) -> Uuid {
        self.id
    }

    /// The subject (topic) to publish on.
    pub fn subject(&self) -> &str {
        &self.subject
    }

    /// The ordering key, if any.
    pub fn key(&self) -> Option<&str> {
        self.key.as_deref()
    }

    /// The payload bytes.
    pub fn payload(&self) -> &Bytes {
        &self.payload
    }

    /// The headers.
    pub fn headers(&self) -> &Headers {
        &self.headers
    }

    /// When the message was built.
    pub fn created_at(&self) -> SystemTime {
        self.created_at
    }

    /// When the message becomes due, if it was scheduled.
    pub fn schedule(&self) -> Option<Schedule> {
        self.schedule
    }

    /// Decodes the payload as JSON.
    pub fn decode_json<'a, T: Deserialize<'a>>(&'a self) -> Result<T, Error> {
        Ok(serde_json::from_slice(&self.payload)?)
    }

    /// Runs the checks of [`MessageBuilder::build`] again, for a message that did not come from
    /// it (deserialized, or rebuilt with [`MessageBuilder::build_stored`]). Stores call it at
    /// enqueue.
    pub fn validate(&self) -> Result<(), Error> {
        validate_subject(&self.subject)?;
        if let Some(key) = &self.key {
            validate_key(key)?;
        }
        validate_headers(&self.headers)?;
        validate_schedule(self.schedule, Some(self.created_at))
    }

    /// The bytes this message takes as a NATS message, which is what a server compares with its
    /// `max_payload`: the payload, plus a header block (`NATS/1.0\r\n`, a `name: value\r\n` line
    /// per header, `\r\n`) holding its headers, `Nats-Msg-Id` and, when it has a key,
    /// `Outbox-Key`. Stores compare it with their configured maximum at enqueue.
    pub fn wire_size(&self) -> usize {
        const UUID_LEN: usize = 36;
        let own: usize = self
            .headers
            .iter()
            .filter(|(name, _)| {
                // A publisher replaces these; only a stored message can hold them.
                !name.eq_ignore_ascii_case(ID_HEADER) && !name.eq_ignore_ascii_case(KEY_HEADER)
            })
            .map(|(name, value)| header_line_len(name, value))
            .sum();
        let id = ID_HEADER.len() + 2 + UUID_LEN + 2;
        let key = self
            .key
            .as_deref()
            .map_or(0, |key| header_line_len(KEY_HEADER, key));
        b"NATS/1.0\r\n".len() + own + id + key + 2 + self.payload.len()
    }
}

/// Builds a [`Message`]; [`build`](MessageBuilder::build) checks subject, key and headers.
#[derive(Debug)]
#[must_use]
pub struct MessageBuilder {
    id: Option<Uuid>,
    subject: String,
    key: Option<String>,
    payload: Bytes,
    headers: Headers,
    created_at: Option<SystemTime>,
    schedule: Option<Schedule>,
    error: Option<Error>,
}

impl MessageBuilder {
    /// Publishes the message no earlier than `delay` after enqueueing (on the store's clock).
    pub fn delay(mut self, delay: Duration) -> Self {
        self.schedule = Some(Schedule::After(delay));
        self
    }

    /// Publishes the message no earlier than `at`.
    pub fn deliver_at(mut self, at: SystemTime) -> Self {
        self.schedule = Some(Schedule::At(at));
        self
    }

    /// Sets the ordering key: messages with the same key are published in enqueue order.
    pub fn key(mut self, key: impl Into<String>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// Sets the payload.
    pub fn payload(mut self, payload: impl Into<Bytes>) -> Self {
        self.payload = payload.into();
        self
    }

    /// Sets the payload to `value` as JSON and the `Content-Type` header to `application/json`.
    pub fn json<T: Serialize + ?Sized>(mut self, value: &T) -> Result<Self, Error> {
        self.payload = Bytes::from(serde_json::to_vec(value)?);
        self.headers
            .insert("Content-Type".to_owned(), "application/json".to_owned());
        Ok(self)
    }

    /// Adds a header; a later header with the same name replaces the earlier one.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.insert(name.into(), value.into());
        self
    }

    /// Uses `id` instead of a fresh UUIDv7. For rebuilding stored messages and for tests; ids
    /// must stay unique, or the broker will drop the second message as a duplicate.
    pub fn id(mut self, id: Uuid) -> Self {
        self.id = Some(id);
        self
    }

    /// Sets the creation time, for rebuilding stored messages.
    pub fn created_at(mut self, at: SystemTime) -> Self {
        self.created_at = Some(at);
        self
    }

    /// Checks the message and builds it.
    ///
    /// Fails with [`Error::InvalidMessage`] for anything a broker could not carry exactly, or
    /// that could hurt the broker or the relay later (see [`validate_subject`],
    /// [`validate_key`], [`validate_header`]): a malformed subject, wildcard or `$` subject, a
    /// key or header value with control characters or edge whitespace, a header name outside
    /// printable ASCII, a reserved header name (`Nats-*`, `Outbox-Key`), headers over
    /// [`MAX_HEADERS_LEN`] in all, a delay over [`MAX_DELAY`], or a time outside the years 1970
    /// to 9999. The payload size is checked where the limit is known: by the store at enqueue
    /// (e.g. `PgConfig::max_payload`) and by the broker at publish.
    pub fn build(mut self) -> Result<Message, Error> {
        if let Some(error) = self.error {
            return Err(error);
        }
        validate_subject(&self.subject)?;
        if let Some(key) = &self.key {
            validate_key(key)?;
        }
        crate::trace::inject_current(&mut self.headers, self.id.is_none());
        validate_headers(&self.headers)?;
        validate_schedule(self.schedule, self.created_at)?;
        Ok(self.build_stored())
    }

    /// Builds a message read back from a store, without the checks of
    /// [`build`](MessageBuilder::build).
    ///
    /// The checks ran when the message was enqueued, possibly under older rules. A stored message
    /// must never stop the relay: if a broker cannot carry it, publishing fails with a permanent
    /// error and the relay dead-letters it, instead of every later claim failing on it. Use
    /// [`build`](MessageBuilder::build) for anything that is not already stored.
    pub fn build_stored(self) -> Message {
        Message {
            id: self.id.unwrap_or_else(Uuid::now_v7),
            subject: self.subject,
            key: self.key,
            payload: self.payload,
            headers: self.headers,
            created_at: self.created_at.unwrap_or_else(SystemTime::now),
            schedule: self.schedule,
        }
    }
}

/// Checks a subject as something to publish to, following NATS' subject rules.
///
/// Non-empty, at most [`MAX_SUBJECT_LEN`] bytes, no whitespace or control characters, tokens
/// separated by `.` and none empty, no wildcard token (`*` or `>`: publishers name one subject),
/// and not starting with `$`, which NATS reserves for the system (`$SYS`, `$JS` — a message on
/// `$JS.API.STREAM.DELETE.<name>` would be an API call, not an event).
pub fn validate_subject(subject: &str) -> Result<(), Error> {
    if subject.is_empty() {
        return Err(Error::InvalidMessage("subject is empty".into()));
    }
    if subject.len() > MAX_SUBJECT_LEN {
        return Err(Error::InvalidMessage(format!(
            "subject is {} bytes, over the limit of {MAX_SUBJECT_LEN}",
            subject.len()
        )));
    }
    if subject.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(Error::InvalidMessage(format!(
            "subject {subject:?} contains whitespace or control characters"
        )));
    }
    if subject.split('.').any(str::is_empty) {
        return Err(Error::InvalidMessage(format!(
            "subject {subject:?} has an empty token"
        )));
    }
    if subject.split('.').any(|token| token == "*" || token == ">") {
        return Err(Error::InvalidMessage(format!(
            "subject {subject:?} has a wildcard token: messages are published to one subject"
        )));
    }
    if subject.starts_with('$') {
        return Err(Error::InvalidMessage(format!(
            "subject {subject:?} starts with '$', which nats reserves for system subjects"
        )));
    }
    Ok(())
}

/// Checks an ordering key: non-empty, at most [`MAX_KEY_LEN`] bytes, and a valid header value
/// (it travels as the `Outbox-Key` header): no control characters but tab, no leading or
/// trailing whitespace.
pub fn validate_key(key: &str) -> Result<(), Error> {
    if key.is_empty() {
        return Err(Error::InvalidMessage("key is empty".into()));
    }
    if key.len() > MAX_KEY_LEN {
        return Err(Error::InvalidMessage(format!(
            "key is {} bytes, over the limit of {MAX_KEY_LEN}",
            key.len()
        )));
    }
    check_value(key).map_err(|reason| Error::InvalidMessage(format!("key {reason}")))
}

/// Checks one header, following the NATS header rules (ADR-4, like HTTP/1.1 fields).
///
/// The name is non-empty printable ASCII (`!` to `~`) without `:`, and not reserved (see
/// [`is_reserved_header`]). The value has no control character but tab (so no CR or LF, which
/// would end the header line) and no leading or trailing whitespace (receivers trim it, so it
/// would not arrive as sent). Values may be any other UTF-8; clients that read headers as ASCII
/// will not show non-ASCII values as sent. Error messages never repeat a value: headers may
/// carry credentials.
pub fn validate_header(name: &str, value: &str) -> Result<(), Error> {
    if name.is_empty() {
        return Err(Error::InvalidMessage("header name is empty".into()));
    }
    if !name.bytes().all(|b| b.is_ascii_graphic() && b != b':') {
        return Err(Error::InvalidMessage(format!(
            "header name {} must be printable ASCII without ':' or spaces",
            shown(name)
        )));
    }
    if is_reserved_header(name) {
        return Err(Error::InvalidMessage(format!(
            "header name {} is reserved: Nats-* headers instruct the server, and Outbox-Key and \
             Nats-Msg-Id are set by the publisher",
            shown(name)
        )));
    }
    check_value(value)
        .map_err(|reason| Error::InvalidMessage(format!("header {} {reason}", shown(name))))
}

/// Whether `name` is a header a message may not set itself: any `Nats-*` header (the server acts
/// on them: `Nats-Msg-Id` deduplicates, `Nats-Expected-*` make the publish conditional,
/// `Nats-Rollup` purges a subject or the stream, `Nats-TTL` expires the message) and
/// `Outbox-Key`, which the publisher sets from the key. Letter case does not matter.
pub fn is_reserved_header(name: &str) -> bool {
    name.get(..RESERVED_PREFIX.len())
        .is_some_and(|prefix| prefix.eq_ignore_ascii_case(RESERVED_PREFIX))
        || name.eq_ignore_ascii_case(KEY_HEADER)
}

/// Checks every header and their total size ([`MAX_HEADERS_LEN`]).
fn validate_headers(headers: &Headers) -> Result<(), Error> {
    for (name, value) in headers {
        validate_header(name, value)?;
    }
    let total: usize = headers
        .iter()
        .map(|(name, value)| header_line_len(name, value))
        .sum();
    if total > MAX_HEADERS_LEN {
        return Err(Error::InvalidMessage(format!(
            "headers take {total} bytes, over the limit of {MAX_HEADERS_LEN}"
        )));
    }
    Ok(())
}

/// What is wrong with a header value (or key), if anything.
fn check_value(value: &str) -> Result<(), String> {
    if value.chars().any(|c| c.is_control() && c != '\t') {
        return Err("has a control character (line breaks included) in its value".into());
    }
    if value.starts_with(char::is_whitespace) || value.ends_with(char::is_whitespace) {
        return Err("has leading or trailing whitespace in its value, which receivers trim".into());
    }
    Ok(())
}

/// Checks a schedule and a creation time.
fn validate_schedule(
    schedule: Option<Schedule>,
    created_at: Option<SystemTime>,
) -> Result<(), Error> {
    match schedule {
        Some(Schedule::After(delay)) if delay > MAX_DELAY => {
            return Err(Error::InvalidMessage(format!(
                "delay of {delay:?} is over the limit of {MAX_DELAY:?} (100 years)"
            )));
        }
        Some(Schedule::At(at)) => validate_time("deliver_at", at)?,
        _ => {}
    }
    match created_at {
        Some(at) => validate_time("created_at", at),
        None => Ok(()),
    }
}

/// Checks that a time can be stored: from 1970 to the end of 9999.
fn validate_time(what: &str, at: SystemTime) -> Result<(), Error> {
    if at < SystemTime::UNIX_EPOCH || at > max_time() {
        return Err(Error::InvalidMessage(format!(
            "{what} must lie between 1970 and the end of 9999"
        )));
    }
    Ok(())
}

/// 9999-12-31T23:59:59Z.
fn max_time() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(253_402_300_799)
}

/// Bytes of the header line `name: value\r\n`.
fn header_line_len(name: &str, value: &str) -> usize {
    name.len() + 2 + value.len() + 2
}

/// A name for an error message: debug-quoted, cut at 64 characters.
fn shown(name: &str) -> String {
    match name.char_indices().nth(64) {
        Some((end, _)) => format!("{:?}...", &name[..end]),
        None => format!("{name:?}"),
    }
}

mod payload_serde {
    use bytes::Bytes;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(payload: &Bytes, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(payload)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Bytes, D::Error> {
        Vec::<u8>::deserialize(d).map(Bytes::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_fresh_uuid_v7_in_creation_order() {
        let a = Message::builder("a").build().unwrap();
        let b = Message::builder("a").build().unwrap();
        assert_eq!(a.id().get_version_num(), 7);
        assert!(a.id() < b.id());
    }

    #[test]
    fn json_sets_payload_and_content_type() {
        let m = Message::json("orders.created", &serde_json::json!({"n": 1})).unwrap();
        assert_eq!(m.payload().as_ref(), br#"{"n":1}"#);
        assert_eq!(m.headers()["Content-Type"], "application/json");
        let v: serde_json::Value = m.decode_json().unwrap();
        assert_eq!(v["n"], 1);
    }

    /// The reason a build failed, for asserting on it.
    fn rejection(builder: MessageBuilder) -> String {
        match builder.build() {
            Err(Error::InvalidMessage(reason)) => reason,
            Err(other) => panic!("wrong error: {other}"),
            Ok(m) => panic!("accepted: {m:?}"),
        }
    }

    #[test]
    fn malformed_subjects_are_rejected() {
        let long = "a".repeat(MAX_SUBJECT_LEN + 1);
        for subject in [
            "", " ", "a b", "a\tb", "a..b", ".a", "a.", "a\nb", "a\r", "a\0b", "a\u{7f}",
            "a\u{a0}b", &long,
        ] {
            rejection(Message::builder(subject));
        }
        assert!(rejection(Message::builder("a..b")).contains("empty token"));
        Message::builder("a".repeat(MAX_SUBJECT_LEN))
            .build()
            .unwrap();
    }

    #[test]
    fn wildcard_and_system_subjects_are_rejected() {
        for subject in [
            "*",
            ">",
            "orders.*",
            "orders.>",
            "a.*.b",
            "$JS.API.STREAM.DELETE.X",
            "$SYS.x",
            "$KV.b.k",
        ] {
            rejection(Message::builder(subject));
        }
        assert!(rejection(Message::builder("orders.*")).contains("wildcard"));
        assert!(rejection(Message::builder("$JS.API.INFO")).contains("reserves"));
        // Only whole tokens are wildcards, and '$' only matters in front.
        for subject in [
            "orders.*x",
            "a.>b",
            "a.b$",
            "a.$b",
            "_INBOX_like.x",
            "Orders.Créé",
        ] {
            Message::builder(subject).build().unwrap();
        }
    }

    #[test]
    fn bad_keys_are_rejected() {
        for key in [
            "",
            " k",
            "k ",
            "k\n",
            "a\r\nNats-Rollup: all",
            "k\0",
            "\u{85}k",
            "k\u{3000}",
        ] {
            assert!(
                rejection(Message::builder("a").key(key)).starts_with("key"),
                "{key:?}"
            );
        }
        rejection(Message::builder("a").key("k".repeat(MAX_KEY_LEN + 1)));
        for key in ["k", "customer 42", "a\tb", "clé", &"k".repeat(MAX_KEY_LEN)] {
            Message::builder("a").key(key).build().unwrap();
        }
    }

    #[test]
    fn bad_header_names_are_rejected() {
        for name in ["", "a:b", "a b", "a\tb", "a\nb", "é", "a\u{7f}", ":"] {
            rejection(Message::builder("a").header(name, "v"));
        }
        for name in ["X-Ok", "x", "!#$%&'*+-.^_`|~", "A-1"] {
            Message::builder("a").header(name, "v").build().unwrap();
        }
    }

    #[test]
    fn reserved_header_names_are_rejected_in_any_case() {
        for name in [
            "Nats-Msg-Id",
            "nats-msg-id",
            "Nats-Expected-Last-Sequence",
            "Nats-Expected-Stream",
            "NATS-ROLLUP",
            "Nats-TTL",
            "Nats-",
            "Outbox-Key",
            "outbox-key",
        ] {
            assert!(is_reserved_header(name), "{name}");
            assert!(
                rejection(Message::builder("a").header(name, "v")).contains("reserved"),
                "{name}"
            );
        }
        for name in ["Nats", "NatsX", "X-Nats-Msg-Id", "Outbox-Keys", "Outbox"] {
            assert!(!is_reserved_header(name), "{name}");
        }
    }

    #[test]
    fn bad_header_values_are_rejected_without_repeating_them() {
        for value in [
            "v\r\nEvil: 1",
            "v\n",
            "v\r",
            "secret\0",
            "\u{1b}[31m",
            "v\u{7f}",
            "v\u{85}",
            " secret",
            "secret ",
            "\tv",
            "v\u{a0}",
        ] {
            let reason = rejection(Message::builder("a").header("Authorization", value));
            assert!(reason.starts_with("header \"Authorization\""), "{reason}");
            assert!(!reason.contains("secret"), "{reason}");
        }
        for value in ["", "fine value", "a\tb", "a: b", "ünïcödé", "\"quoted\""] {
            Message::builder("a").header("X", value).build().unwrap();
        }
    }

    #[test]
    fn long_names_are_cut_in_errors() {
        let name = format!("{}:", "n".repeat(1000));
        let reason = rejection(Message::builder("a").header(name, "v"));
        assert!(reason.len() < 200, "{reason}");
    }

    #[test]
    fn headers_over_the_total_limit_are_rejected() {
        // Each line is "hNNNN: " + 96 bytes + "\r\n" = 105 bytes.
        let fill = |n: usize| {
            (0..n).fold(Message::builder("a"), |b, i| {
                b.header(format!("h{i:04}"), "v".repeat(96))
            })
        };
        let fits = MAX_HEADERS_LEN / 105;
        fill(fits).build().unwrap();
        assert!(rejection(fill(fits + 1)).contains("over the limit"));
    }

    #[test]
    fn delays_and_times_out_of_range_are_rejected() {
        rejection(Message::builder("a").delay(MAX_DELAY + Duration::from_secs(1)));
        rejection(Message::builder("a").delay(Duration::MAX));
        Message::builder("a").delay(MAX_DELAY).build().unwrap();
        let far = SystemTime::UNIX_EPOCH + Duration::from_secs(300_000_000_000);
        rejection(Message::builder("a").deliver_at(far));
        rejection(Message::builder("a").created_at(far));
        let before = SystemTime::UNIX_EPOCH - Duration::from_secs(1);
        rejection(Message::builder("a").deliver_at(before));
        rejection(Message::builder("a").created_at(before));
        Message::builder("a")
            .deliver_at(max_time())
            .build()
            .unwrap();
        Message::builder("a")
            .created_at(SystemTime::UNIX_EPOCH)
            .build()
            .unwrap();
    }

    #[test]
    fn validate_catches_what_bypassed_the_builder() {
        let good = Message::builder("a")
            .key("k")
            .header("X", "v")
            .build()
            .unwrap();
        good.validate().unwrap();
        let text = serde_json::to_string(&good).unwrap();
        for (from, to) in [
            (r#""subject":"a""#, r#""subject":"a.>""#),
            (r#""key":"k""#, r#""key":"k\n""#),
            (r#""X":"v""#, r#""Nats-Rollup":"all""#),
            (r#""X":"v""#, r#""X":"v\r\nY: 1""#),
        ] {
            assert!(text.contains(from), "{text}");
            let bad: Message = serde_json::from_str(&text.replace(from, to)).unwrap();
            assert!(
                matches!(bad.validate(), Err(Error::InvalidMessage(_))),
                "{to} passed"
            );
        }
        let stored = Message::builder("a")
            .created_at(SystemTime::UNIX_EPOCH + Duration::from_secs(u64::MAX / 4))
            .build_stored();
        assert!(stored.validate().is_err());
    }

    #[test]
    fn stored_messages_are_rebuilt_without_checks() {
        let id = Uuid::now_v7();
        let m = Message::builder("a.*")
            .id(id)
            .key(" k")
            .header("Nats-Rollup", "all")
            .build_stored();
        assert_eq!((m.id(), m.subject(), m.key()), (id, "a.*", Some(" k")));
        assert_eq!(m.headers()["Nats-Rollup"], "all");
    }

    #[test]
    fn wire_size_counts_payload_headers_id_and_key() {
        let m = Message::builder("a").payload("12345").build().unwrap();
        // "NATS/1.0\r\n" + "Nats-Msg-Id: <36>\r\n" + "\r\n" + payload
        assert_eq!(m.wire_size(), 10 + (11 + 2 + 36 + 2) + 2 + 5);
        let keyed = Message::builder("a")
            .payload("12345")
            .key("k1")
            .header("X", "yz")
            .build()
            .unwrap();
        // + "Outbox-Key: k1\r\n" + "X: yz\r\n"
        assert_eq!(keyed.wire_size(), m.wire_size() + 16 + 7);
        // A stored message's own copy of a reserved header is replaced when published.
        let stored = Message::builder("a")
            .payload("12345")
            .header("nats-msg-id", "forged")
            .build_stored();
        assert_eq!(stored.wire_size(), m.wire_size());
    }

    #[test]
    fn schedules_are_kept() {
        let m = Message::builder("a")
            .delay(Duration::from_secs(5))
            .build()
            .unwrap();
        assert_eq!(m.schedule(), Some(Schedule::After(Duration::from_secs(5))));
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1);
        let m = Message::builder("a").deliver_at(at).build().unwrap();
        assert_eq!(m.schedule(), Some(Schedule::At(at)));
        assert_eq!(Message::builder("a").build().unwrap().schedule(), None);
    }

    #[test]
    fn serde_round_trip_keeps_everything() {
        let m = Message::builder("a.b")
            .key("k")
            .payload(&b"\x00\x01"[..])
            .header("h", "v")
            .build()
            .unwrap();
        let text = serde_json::to_string(&m).unwrap();
        let back: Message = serde_json::from_str(&text).unwrap();
        assert_eq!(back, m);
    }
}
