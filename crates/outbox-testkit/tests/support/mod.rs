//! Helpers shared by the relay test binaries.
#![allow(dead_code, unreachable_pub)] // each binary uses a different part

use std::time::Duration;

use outbox_core::{Broker, Elector, Message, RelayConfig, Store};
use outbox_testkit::memory::MemoryStore;
use outbox_testkit::{RelayTask, assert_published_once_in_key_order};

pub const WAIT: Duration = Duration::from_secs(30);

pub fn messages(n: usize, keys: usize) -> Vec<Message> {
    (0..n)
        .map(|i| {
            Message::builder("relay.test")
                .key(format!("k{}", i % keys))
                .payload(format!("{i}"))
                .build()
                .unwrap()
        })
        .collect()
}

pub fn fast_config() -> RelayConfig {
    RelayConfig::builder()
        .batch_size(64)
        .max_in_flight(256)
        .retry_base(Duration::from_millis(1))
        .retry_max(Duration::from_millis(20))
        .reconnect_base(Duration::from_millis(5))
        .reconnect_max(Duration::from_millis(50))
        .max_attempts(1000)
        .build()
        .unwrap()
}

pub fn start<S: Store, B: Broker, E: Elector>(
    store: S,
    broker: B,
    elector: E,
    config: RelayConfig,
) -> RelayTask {
    RelayTask::start(store, broker, elector, config)
}

pub async fn until_empty(store: &MemoryStore) {
    tokio::time::timeout(WAIT, async {
        while store.pending_len() > 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{} messages still pending", store.pending_len()));
}

pub fn assert_all_once_in_key_order(sent: &[Message], published: &[Message]) {
    assert_published_once_in_key_order(sent, published);
}
