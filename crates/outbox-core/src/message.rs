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
    /// Fails with [`Error::InvalidMessage`] for an empty or malformed subject (whitespace, empty
    /// tokens), a key or subject over 1 KiB, or a header name or value that a broker cannot carry
    /// (empty name, `:` or whitespace in a name, CR or LF anywhere).
    pub fn build(self) -> Result<Message, Error> {
        if let Some(error) = self.error {
            return Err(error);
        }
        validate_subject(&self.subject)?;
        if let Some(key) = &self.key {
            if key.is_empty() {
                return Err(Error::InvalidMessage("key is empty".into()));
            }
            if key.len() > MAX_KEY_LEN {
                return Err(Error::InvalidMessage(format!(
                    "key is {} bytes, over the limit of {MAX_KEY_LEN}",
                    key.len()
                )));
            }
        }
        for (name, value) in &self.headers {
            validate_header(name, value)?;
        }
        Ok(Message {
            id: self.id.unwrap_or_else(Uuid::now_v7),
            subject: self.subject,
            key: self.key,
            payload: self.payload,
            headers: self.headers,
            created_at: self.created_at.unwrap_or_else(SystemTime::now),
            schedule: self.schedule,
        })
    }
}

/// Checks a subject: non-empty, at most 1 KiB, dot-separated non-empty tokens, no whitespace.
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
    Ok(())
}

/// Checks a header: the name is non-empty printable ASCII without `:`; the value has no CR or LF.
pub fn validate_header(name: &str, value: &str) -> Result<(), Error> {
    if name.is_empty() {
        return Err(Error::InvalidMessage("header name is empty".into()));
    }
    if !name.bytes().all(|b| b.is_ascii_graphic() && b != b':') {
        return Err(Error::InvalidMessage(format!(
            "header name {name:?} must be printable ASCII without ':' or spaces"
        )));
    }
    if value.contains(['\r', '\n']) {
        return Err(Error::InvalidMessage(format!(
            "header {name:?} has a line break in its value"
        )));
    }
    Ok(())
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

    #[test]
    fn bad_subjects_keys_and_headers_are_rejected() {
        for subject in ["", "a b", "a..b", ".a", "a.", "a\nb"] {
            assert!(
                Message::builder(subject).build().is_err(),
                "{subject:?} accepted"
            );
        }
        assert!(Message::builder("a").key("").build().is_err());
        assert!(Message::builder("a").key("k".repeat(2000)).build().is_err());
        assert!(Message::builder("a").header("", "v").build().is_err());
        assert!(Message::builder("a").header("a:b", "v").build().is_err());
        assert!(Message::builder("a").header("a b", "v").build().is_err());
        assert!(
            Message::builder("a")
                .header("x", "v\r\nEvil: 1")
                .build()
                .is_err()
        );
        assert!(
            Message::builder("orders.*")
                .header("X-Ok", "fine value")
                .build()
                .is_ok()
        );
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
