use std::collections::BTreeMap;

use bytes::Bytes;

/// A message as a subscriber received it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Received {
    /// The subject it was published on.
    pub subject: String,
    /// Its headers (the first value of each).
    pub headers: BTreeMap<String, String>,
    /// Its payload.
    pub payload: Bytes,
}

impl Received {
    /// Converts a NATS message.
    pub fn from_nats(message: &async_nats::Message) -> Self {
        let headers = message
            .headers
            .iter()
            .flat_map(|h| h.iter())
            .filter_map(|(name, values)| {
                values
                    .first()
                    .map(|v| (name.to_string(), v.as_str().to_owned()))
            })
            .collect();
        Self {
            subject: message.subject.to_string(),
            headers,
            payload: message.payload.clone(),
        }
    }

    /// What a NATS subscriber would receive for `message`: its headers plus `Nats-Msg-Id` and,
    /// when it has a key, `Outbox-Key`.
    pub fn from_message(message: &outbox_core::Message) -> Self {
        let mut headers = message.headers().clone();
        headers.insert("Nats-Msg-Id".into(), message.id().to_string());
        if let Some(key) = message.key() {
            headers.insert("Outbox-Key".into(), key.to_owned());
        }
        Self {
            subject: message.subject().to_owned(),
            headers,
            payload: message.payload().clone(),
        }
    }

    /// The `Nats-Msg-Id` header: the outbox message id.
    pub fn msg_id(&self) -> Option<&str> {
        self.headers.get("Nats-Msg-Id").map(String::as_str)
    }

    /// The `Outbox-Key` header: the message's ordering key.
    pub fn key(&self) -> Option<&str> {
        self.headers.get("Outbox-Key").map(String::as_str)
    }
}
