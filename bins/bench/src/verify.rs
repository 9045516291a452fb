//! Checks what reached the stream: every message once, each key's messages in order.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use anyhow::{Context as _, bail};
use async_nats::jetstream::{self, consumer};
use futures::StreamExt;
use outbox_nats::{KEY_HEADER, MSG_ID_HEADER};
use serde::Serialize;

use crate::progress::Progress;
use crate::workload::{key_name, parse_payload};

/// How long reading the stream may stall before the check gives up.
const READ_STALL: Duration = Duration::from_secs(15);

/// Everything that makes a run fail. All zero in a correct run.
#[derive(Clone, Debug, Default, Serialize)]
pub(crate) struct Violations {
    /// A message id seen more than once.
    pub(crate) duplicates: u64,
    /// A message of a key arrived after a later one of the same key, or skipped one.
    pub(crate) out_of_order: u64,
    /// Committed messages that never arrived.
    pub(crate) missing: u64,
    /// Messages without the headers or payload the bench wrote.
    pub(crate) malformed: u64,
    /// Rows left in the outbox after everything was acknowledged.
    pub(crate) left_in_outbox: u64,
}

impl Violations {
    pub(crate) fn total(&self) -> u64 {
        self.duplicates + self.out_of_order + self.missing + self.malformed + self.left_in_outbox
    }

    pub(crate) fn add(&mut self, other: &Violations) {
        self.duplicates += other.duplicates;
        self.out_of_order += other.out_of_order;
        self.missing += other.missing;
        self.malformed += other.malformed;
        self.left_in_outbox += other.left_in_outbox;
    }
}

/// What [`Checker::observe`] made of a message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Seen {
    /// First time this id arrived; here is the id.
    New(String),
    Duplicate,
    Malformed,
}

/// Checks messages in the order they arrive.
#[derive(Debug, Default)]
pub(crate) struct Checker {
    last: HashMap<u32, u64>,
    ids: HashSet<String>,
    violations: Violations,
}

impl Checker {
    pub(crate) fn observe(
        &mut self,
        headers: Option<&async_nats::HeaderMap>,
        payload: &[u8],
    ) -> Seen {
        let header = |name: &str| {
            headers
                .and_then(|h| h.get(name))
                .map(|v| v.as_str().to_owned())
        };
        let (Some(id), Some(key), Some((k, n))) = (
            header(MSG_ID_HEADER),
            header(KEY_HEADER),
            parse_payload(payload),
        ) else {
            self.violations.malformed += 1;
            return Seen::Malformed;
        };
        if key != key_name(k) {
            self.violations.malformed += 1;
            return Seen::Malformed;
        }
        if !self.ids.insert(id.clone()) {
            self.violations.duplicates += 1;
            return Seen::Duplicate;
        }
        let last = self.last.entry(k).or_insert(0);
        if n != *last + 1 {
            self.violations.out_of_order += 1;
        }
        *last = (*last).max(n);
        Seen::New(id)
    }

    /// Distinct messages seen.
    pub(crate) fn distinct(&self) -> u64 {
        self.ids.len() as u64
    }

    /// The violations, counting messages short of `expected` as missing.
    pub(crate) fn finish(mut self, expected: u64) -> Violations {
        self.violations.missing = expected.saturating_sub(self.distinct());
        self.violations
    }
}

/// Reads the whole stream from its first message and checks it against `expected` messages.
pub(crate) async fn read_stream(
    js: &jetstream::Context,
    stream: &str,
    expected: u64,
) -> anyhow::Result<Violations> {
    let mut handle = js.get_stream(stream).await?;
    let stored = handle.info().await?.state.messages;
    let consumer: consumer::PullConsumer = handle
        .create_consumer(consumer::pull::Config {
            deliver_policy: consumer::DeliverPolicy::All,
            ack_policy: consumer::AckPolicy::None,
            inactive_threshold: Duration::from_secs(30),
            ..Default::default()
        })
        .await
        .context("creating the checking consumer")?;
    let mut messages = consumer
        .stream()
        .max_messages_per_batch(1_000)
        .messages()
        .await?;
    let progress = Progress::bar("checking the stream", stored);
    let mut checker = Checker::default();
    let mut read = 0;
    while read < stored {
        let message = match tokio::time::timeout(READ_STALL, messages.next()).await {
            Ok(Some(Ok(message))) => message,
            Ok(Some(Err(error))) => bail!("reading stream {stream}: {error}"),
            Ok(None) | Err(_) => bail!("stream {stream} stalled after {read} of {stored} messages"),
        };
        checker.observe(message.headers.as_ref(), &message.payload);
        read += 1;
        if read % 1_000 == 0 {
            progress.set(read);
        }
    }
    progress.done();
    Ok(checker.finish(expected))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workload::payload;

    fn headers(id: &str, k: u32) -> async_nats::HeaderMap {
        let mut h = async_nats::HeaderMap::new();
        h.insert(MSG_ID_HEADER, id);
        h.insert(KEY_HEADER, key_name(k).as_str());
        h
    }

    #[test]
    fn finds_duplicates_reordering_and_missing_messages() {
        let mut c = Checker::default();
        assert_eq!(
            c.observe(Some(&headers("a", 1)), &payload(1, 1, 32)),
            Seen::New("a".into())
        );
        assert_eq!(
            c.observe(Some(&headers("a", 1)), &payload(1, 1, 32)),
            Seen::Duplicate
        );
        c.observe(Some(&headers("c", 1)), &payload(1, 3, 32));
        c.observe(Some(&headers("b", 1)), &payload(1, 2, 32));
        assert_eq!(c.observe(None, &payload(1, 4, 32)), Seen::Malformed);
        let v = c.finish(4);
        assert_eq!(v.duplicates, 1);
        assert_eq!(v.out_of_order, 2);
        assert_eq!(v.missing, 1);
        assert_eq!(v.malformed, 1);
        assert_eq!(v.total(), 5);
    }

    #[test]
    fn a_clean_sequence_has_no_violations() {
        let mut c = Checker::default();
        for n in 1..=3 {
            for k in 0..2 {
                let id = format!("{k}-{n}");
                c.observe(Some(&headers(&id, k)), &payload(k, n, 64));
            }
        }
        assert_eq!(c.finish(6).total(), 0);
    }
}
