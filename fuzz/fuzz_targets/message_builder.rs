//! Arbitrary subject, key, headers, payload and times through `MessageBuilder::build`.
//!
//! Never a panic. A refusal is `Error::InvalidMessage`. An accepted message passes
//! `Message::validate`, survives a JSON round trip (the stored form), contains nothing
//! PostgreSQL refuses, is publishable by `outbox-nats` (subject and headers), has the
//! `wire_size` the publisher computes, and its header block, encoded as on the wire and decoded
//! the way a NATS client decodes it, gives back exactly the headers that were sent.

#![no_main]

use std::collections::BTreeMap;
use std::str::FromStr;
use std::time::{Duration, SystemTime};

use arbitrary::Arbitrary;
use async_nats::{HeaderMap, HeaderName};
use libfuzzer_sys::fuzz_target;
use outbox_core::{Error, Message};
use outbox_nats::headers::{check_subject, nats_headers, wire_size};

#[derive(Arbitrary, Debug)]
enum Time {
    After(u64),
    Before(u64),
}

impl Time {
    fn get(&self) -> Option<SystemTime> {
        match *self {
            Time::After(secs) => SystemTime::UNIX_EPOCH.checked_add(Duration::from_secs(secs)),
            Time::Before(secs) => SystemTime::UNIX_EPOCH.checked_sub(Duration::from_secs(secs)),
        }
    }
}

#[derive(Arbitrary, Debug)]
struct Input {
    subject: String,
    key: Option<String>,
    headers: Vec<(String, String)>,
    payload: Vec<u8>,
    delay: Option<u64>,
    deliver_at: Option<Time>,
    created_at: Option<Time>,
}

/// Decodes a header block the way async-nats does on receipt: lines, `name:value`, the value
/// trimmed, lines starting with whitespace continuing the previous value.
fn decode(block: &[u8]) -> BTreeMap<String, Vec<String>> {
    let text = std::str::from_utf8(block).expect("a header block is UTF-8");
    let mut lines = text.lines().peekable();
    assert_eq!(lines.next(), Some("NATS/1.0"));
    let mut headers: BTreeMap<String, Vec<String>> = BTreeMap::new();
    while let Some(line) = lines.next() {
        if line.is_empty() {
            continue;
        }
        let (name, value) = line.split_once(':').expect("every header line has a colon");
        HeaderName::from_str(name).expect("a received name parses");
        let mut value = value.trim_start().to_owned();
        while let Some(more) = lines.next_if(|l| l.starts_with(char::is_whitespace)) {
            value.push_str(more);
        }
        value.truncate(value.trim_end().len());
        headers.entry(name.to_owned()).or_default().push(value);
    }
    headers
}

/// The wire form of a header block: `NATS/1.0\r\n`, `name: value\r\n` each, `\r\n`.
fn encode(headers: &HeaderMap) -> Vec<u8> {
    let mut block = b"NATS/1.0\r\n".to_vec();
    for (name, values) in headers.iter() {
        for value in values {
            block.extend_from_slice(AsRef::<str>::as_ref(name).as_bytes());
            block.extend_from_slice(b": ");
            block.extend_from_slice(value.as_str().as_bytes());
            block.extend_from_slice(b"\r\n");
        }
    }
    block.extend_from_slice(b"\r\n");
    block
}

fuzz_target!(|input: Input| {
    let mut builder = Message::builder(input.subject).payload(input.payload);
    if let Some(key) = input.key {
        builder = builder.key(key);
    }
    for (name, value) in input.headers {
        builder = builder.header(name, value);
    }
    if let Some(secs) = input.delay {
        builder = builder.delay(Duration::from_secs(secs));
    }
    if let Some(at) = input.deliver_at.as_ref().and_then(Time::get) {
        builder = builder.deliver_at(at);
    }
    if let Some(at) = input.created_at.as_ref().and_then(Time::get) {
        builder = builder.created_at(at);
    }
    let message = match builder.build() {
        Ok(message) => message,
        Err(Error::InvalidMessage(reason)) => {
            assert!(!reason.is_empty());
            return;
        }
        Err(other) => panic!("refused with the wrong error: {other}"),
    };

    message.validate().expect("a built message validates");

    // The stored form: JSON (headers go to a jsonb column, which refuses \u0000).
    let json = serde_json::to_string(&message).expect("serializes");
    let back: Message = serde_json::from_str(&json).expect("deserializes");
    assert_eq!(back, message);
    // PostgreSQL text and jsonb cannot hold NUL.
    let texts = [message.subject(), message.key().unwrap_or_default()];
    let header_texts = message
        .headers()
        .iter()
        .flat_map(|(n, v)| [n.as_str(), v.as_str()]);
    for text in texts.into_iter().chain(header_texts) {
        assert!(!text.contains('\0'), "{text:?}");
    }

    // Publishable as it is.
    check_subject(message.subject()).expect("the publisher accepts the subject");
    let map = nats_headers(&message).expect("the publisher accepts the headers");
    assert_eq!(
        message.wire_size(),
        wire_size(&map, message.payload().len()),
        "the enqueue-time size is the publish-time size"
    );

    // And received exactly as sent.
    let block = encode(&map);
    assert_eq!(block.len() + message.payload().len(), message.wire_size());
    let mut expected: BTreeMap<String, Vec<String>> = message
        .headers()
        .iter()
        .map(|(name, value)| (name.clone(), vec![value.clone()]))
        .collect();
    expected.insert("Nats-Msg-Id".to_owned(), vec![message.id().to_string()]);
    if let Some(key) = message.key() {
        expected.insert("Outbox-Key".to_owned(), vec![key.to_owned()]);
    }
    assert_eq!(decode(&block), expected);
});
