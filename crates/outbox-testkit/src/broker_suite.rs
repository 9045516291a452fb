//! The broker conformance suite: every behaviour a [`Broker`] must have, one function each.
//!
//! A backend implements [`BrokerHarness`] (the broker, and how to see what arrived) and invokes
//! [`broker_conformance!`](crate::broker_conformance), which makes one `#[tokio::test]` per
//! property.
//!
//! # Examples
//!
//! ```
//! use outbox_testkit::broker_suite::MemoryBrokerHarness;
//!
//! async fn harness() -> MemoryBrokerHarness {
//!     MemoryBrokerHarness::default()
//! }
//!
//! outbox_testkit::broker_conformance!(harness);
//! # fn main() {}
//! ```

use std::collections::HashSet;
use std::time::Duration;

use async_trait::async_trait;
use futures::stream::{FuturesOrdered, StreamExt};
use outbox_core::memory::MemoryBroker;
use outbox_core::{Broker, Message};

use crate::Received;

/// How the suite drives a broker and sees what arrived.
#[async_trait]
pub trait BrokerHarness: Send + Sync + 'static {
    /// The broker under test.
    type Broker: Broker;
    /// The broker.
    fn broker(&self) -> &Self::Broker;
    /// A subject whose messages [`received`](BrokerHarness::received) reports.
    fn subject(&self, name: &str) -> String;
    /// What arrived on the harness' subjects, in arrival order, after waiting until `n` arrived
    /// or `timeout` passed.
    async fn received(&self, n: usize, timeout: Duration) -> Vec<Received>;
    /// Whether the broker drops a republished message (same id): JetStream does, core NATS does not.
    fn deduplicates(&self) -> bool;
    /// The largest payload the broker accepts.
    fn max_payload(&self) -> usize;
}

/// The in-memory broker's harness: the reference for other backends.
#[derive(Clone, Debug, Default)]
pub struct MemoryBrokerHarness {
    broker: MemoryBroker,
}

#[async_trait]
impl BrokerHarness for MemoryBrokerHarness {
    type Broker = MemoryBroker;

    fn broker(&self) -> &MemoryBroker {
        &self.broker
    }

    fn subject(&self, name: &str) -> String {
        format!("conformance.{name}")
    }

    async fn received(&self, n: usize, timeout: Duration) -> Vec<Received> {
        let _ = tokio::time::timeout(timeout, self.broker.wait_for(n)).await;
        self.broker
            .published()
            .iter()
            .map(Received::from_message)
            .collect()
    }

    fn deduplicates(&self) -> bool {
        true
    }

    fn max_payload(&self) -> usize {
        1024 * 1024
    }
}

const WAIT: Duration = Duration::from_secs(10);
/// How long to wait for something that must not arrive.
const QUIET: Duration = Duration::from_millis(300);

fn build(subject: String, key: Option<&str>, payload: Vec<u8>) -> Message {
    let builder = Message::builder(subject).payload(payload);
    match key {
        Some(key) => builder.key(key),
        None => builder,
    }
    .build()
    .unwrap_or_else(|e| panic!("test message: {e}"))
}

async fn publish_and_ack<B: Broker>(broker: &B, message: &Message) -> outbox_core::Ack {
    broker
        .publish(message)
        .await
        .unwrap_or_else(|e| panic!("publish: {e}"))
        .await
        .unwrap_or_else(|e| panic!("ack: {e}"))
}

/// An acknowledged message arrives with its subject, payload, id, key and headers.
pub async fn acknowledged_message_arrives_intact<H: BrokerHarness>(h: H) {
    let message = Message::builder(h.subject("intact"))
        .key("customer-1")
        .header("X-Trace", "trace-1")
        .payload(&b"{\"a\":1}\x00"[..])
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    let ack = publish_and_ack(h.broker(), &message).await;
    assert!(!ack.duplicate);
    let got = h.received(1, WAIT).await;
    assert_eq!(got.len(), 1, "{got:?}");
    let got = &got[0];
    assert_eq!(got.subject, message.subject());
    assert_eq!(got.payload, message.payload());
    assert_eq!(got.msg_id(), Some(message.id().to_string().as_str()));
    assert_eq!(got.key(), Some("customer-1"));
    assert_eq!(
        got.headers.get("X-Trace").map(String::as_str),
        Some("trace-1")
    );
}

/// Many publishes may wait for their acknowledgements at once; all arrive, once each.
pub async fn many_acks_in_flight<H: BrokerHarness>(h: H) {
    const N: usize = 2000;
    let messages: Vec<_> = (0..N)
        .map(|i| build(h.subject("window"), None, format!("{i}").into_bytes()))
        .collect();
    let mut pending = FuturesOrdered::new();
    for message in &messages {
        pending.push_back(
            h.broker()
                .publish(message)
                .await
                .unwrap_or_else(|e| panic!("publish: {e}")),
        );
    }
    while let Some(ack) = pending.next().await {
        ack.unwrap_or_else(|e| panic!("ack: {e}"));
    }
    let got = h.received(N, WAIT).await;
    let ids: HashSet<_> = got.iter().filter_map(Received::msg_id).collect();
    assert_eq!(got.len(), N);
    assert_eq!(ids.len(), N);
}

/// Messages published one after another (each after the previous ack) arrive in that order.
pub async fn sequential_publishes_arrive_in_order<H: BrokerHarness>(h: H) {
    let messages: Vec<_> = (0..50)
        .map(|i| build(h.subject("order"), Some("k"), format!("{i}").into_bytes()))
        .collect();
    for message in &messages {
        publish_and_ack(h.broker(), message).await;
    }
    let got = h.received(messages.len(), WAIT).await;
    let want: Vec<_> = messages.iter().map(|m| m.payload().clone()).collect();
    let got: Vec<_> = got.into_iter().map(|r| r.payload).collect();
    assert_eq!(got, want);
}

/// A republished message (same id) is dropped by a deduplicating broker, and acknowledged as a
/// duplicate.
pub async fn republish_is_deduplicated<H: BrokerHarness>(h: H) {
    let message = build(h.subject("dedup"), Some("k"), b"once".to_vec());
    publish_and_ack(h.broker(), &message).await;
    let second = publish_and_ack(h.broker(), &message).await;
    if !h.deduplicates() {
        return;
    }
    assert!(second.duplicate, "second ack should say duplicate");
    let later = build(h.subject("dedup"), Some("k"), b"later".to_vec());
    publish_and_ack(h.broker(), &later).await;
    let got = h.received(3, QUIET).await;
    assert_eq!(got.len(), 2, "{got:?}");
}

/// A payload over the broker's limit fails permanently, and the broker keeps working.
pub async fn oversized_payload_fails_permanently<H: BrokerHarness>(h: H) {
    let big = build(h.subject("big"), Some("k"), vec![b'x'; h.max_payload() + 1]);
    let result = match h.broker().publish(&big).await {
        Ok(pending) => pending.await.map(|_| ()),
        Err(e) => Err(e),
    };
    let error = result.expect_err("an oversized payload must fail");
    assert!(!error.is_retryable(), "must be permanent: {error}");
    let small = build(h.subject("big"), Some("k"), b"small".to_vec());
    publish_and_ack(h.broker(), &small).await;
    let got = h.received(1, WAIT).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].payload.as_ref(), b"small");
}

/// Makes one `#[tokio::test]` per broker property, each with a fresh harness from `$make`
/// (an async fn returning a [`BrokerHarness`]).
#[macro_export]
macro_rules! broker_conformance {
    ($make:path) => {
        $crate::__conformance_cases!(broker_suite, $make;
            acknowledged_message_arrives_intact,
            many_acks_in_flight,
            sequential_publishes_arrive_in_order,
            republish_is_deduplicated,
            oversized_payload_fails_permanently,
        );
    };
}
