//! The relay loop of `outbox-core` under faults, over the in-memory backend.

use std::time::Duration;

use outbox_core::{Message, RelayState, Standalone};
use outbox_testkit::memory::{MemoryBroker, MemoryElection, MemoryStore};
use outbox_testkit::{FaultyBroker, FaultyStore};

mod support;
use support::{WAIT, assert_all_once_in_key_order, fast_config, messages, start, until_empty};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_failures_are_retried_in_key_order() {
    let store = MemoryStore::new();
    let sent = messages(3000, 30);
    for m in &sent {
        store.enqueue(m.clone());
    }
    let broker = FaultyBroker::new(MemoryBroker::new());
    broker.fail_ratio(0.3);
    let relay = start(store.clone(), broker.clone(), Standalone, fast_config());
    until_empty(&store).await;
    relay.stop().await;
    assert!(
        broker.failures() > 500,
        "failures injected: {}",
        broker.failures()
    );
    assert_all_once_in_key_order(&sent, &broker.inner().published());
    assert!(store.dead_letters().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permanent_failure_dead_letters_and_unblocks_the_key() {
    let store = MemoryStore::new();
    let sent = messages(10, 1);
    let broker = FaultyBroker::new(MemoryBroker::new());
    broker.fail_next(1, false);
    for m in &sent {
        store.enqueue(m.clone());
    }
    let relay = start(store.clone(), broker.clone(), Standalone, fast_config());
    until_empty(&store).await;
    relay.stop().await;
    let dead = store.dead_letters();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].message.id(), sent[0].id());
    assert!(dead[0].error.contains("rejected"), "{}", dead[0].error);
    assert_all_once_in_key_order(&sent[1..], &broker.inner().published());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exhausted_retries_dead_letter() {
    let store = MemoryStore::new();
    let broker = FaultyBroker::new(MemoryBroker::new());
    broker.fail_next(3, true);
    let sent = messages(2, 1);
    for m in &sent {
        store.enqueue(m.clone());
    }
    let mut config = fast_config();
    config.max_attempts = 3;
    let relay = start(store.clone(), broker.clone(), Standalone, config);
    until_empty(&store).await;
    relay.stop().await;
    let dead = store.dead_letters();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].attempts, 3);
    assert_eq!(broker.inner().published(), vec![sent[1].clone()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unavailable_broker_pauses_without_counting_attempts() {
    let store = MemoryStore::new();
    let broker = FaultyBroker::new(MemoryBroker::new());
    broker.set_down(true);
    let sent = messages(200, 10);
    for m in &sent {
        store.enqueue(m.clone());
    }
    // One attempt allowed: any counted failure would dead-letter.
    let mut config = fast_config();
    config.max_attempts = 1;
    let relay = start(store.clone(), broker.clone(), Standalone, config);
    tokio::time::timeout(WAIT, async {
        while broker.failures() < 20 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap();
    assert_eq!(store.pending_len(), 200);
    assert!(store.pending().iter().all(|c| c.attempts == 0));
    broker.set_down(false);
    until_empty(&store).await;
    relay.stop().await;
    assert!(store.dead_letters().is_empty());
    assert_all_once_in_key_order(&sent, &broker.inner().published());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_acks_are_republished_and_deduplicated() {
    let store = MemoryStore::new();
    let broker = FaultyBroker::new(MemoryBroker::new());
    broker.lose_acks(true);
    let sent = messages(300, 10);
    for m in &sent {
        store.enqueue(m.clone());
    }
    let relay = start(store.clone(), broker.clone(), Standalone, fast_config());
    broker.inner().wait_for(10).await;
    broker.lose_acks(false);
    until_empty(&store).await;
    relay.stop().await;
    assert!(broker.inner().duplicates() > 0);
    assert_all_once_in_key_order(&sent, &broker.inner().published());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_between_publish_and_delete_republishes_once() {
    let store = MemoryStore::new();
    let faulty = FaultyStore::new(store.clone());
    faulty.fail_completes(true);
    let broker = MemoryBroker::new();
    let sent = messages(500, 20);
    for m in &sent {
        store.enqueue(m.clone());
    }
    let first = start(faulty.clone(), broker.clone(), Standalone, fast_config());
    tokio::time::timeout(WAIT, broker.wait_for(20))
        .await
        .unwrap();
    first.abort().await;
    assert!(faulty.completes_refused() > 0);
    assert!(store.pending_len() > 0);

    let second = start(store.clone(), broker.clone(), Standalone, fast_config());
    until_empty(&store).await;
    second.stop().await;
    assert!(
        broker.duplicates() > 0,
        "something was published twice and dropped"
    );
    assert_all_once_in_key_order(&sent, &broker.published());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_relay_leads_and_a_standby_takes_over() {
    let store = MemoryStore::new();
    let broker = MemoryBroker::new();
    let election = MemoryElection::new();
    let mut a = start(
        store.clone(),
        broker.clone(),
        election.elector(),
        fast_config(),
    );
    a.until_leading(WAIT).await;
    let mut b = start(
        store.clone(),
        broker.clone(),
        election.elector(),
        fast_config(),
    );
    tokio::task::yield_now().await;
    assert_eq!(b.state(), RelayState::Campaigning);

    let sent = messages(100, 5);
    for m in &sent {
        store.enqueue(m.clone());
    }
    broker.wait_for(100).await;
    a.stop().await;
    b.until_leading(WAIT).await;

    let more = messages(100, 5);
    for m in &more {
        store.enqueue(m.clone());
    }
    broker.wait_for(200).await;
    election.depose();
    b.until_leading(WAIT).await;
    until_empty(&store).await;
    b.stop().await;
    let all: Vec<Message> = sent.into_iter().chain(more).collect();
    assert_all_once_in_key_order(&all, &broker.published());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_is_prompt_and_loses_nothing() {
    let store = MemoryStore::new();
    let broker = MemoryBroker::new();
    let sent = messages(5000, 50);
    for m in &sent {
        store.enqueue(m.clone());
    }
    let relay = start(store.clone(), broker.clone(), Standalone, fast_config());
    broker.wait_for(100).await;
    relay.stop().await;
    let published = broker.published().len();
    assert_eq!(
        published + store.pending_len(),
        sent.len(),
        "acknowledged and recorded"
    );
    let relay = start(store.clone(), broker.clone(), Standalone, fast_config());
    until_empty(&store).await;
    relay.stop().await;
    assert_all_once_in_key_order(&sent, &broker.published());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_keys_keep_order_without_failures_and_lose_nothing_with_them() {
    let mut config = fast_config();
    config.key_order = outbox_core::KeyOrder::Pipelined;

    let store = MemoryStore::new();
    let broker = MemoryBroker::new();
    let sent = messages(2000, 4);
    for m in &sent {
        store.enqueue(m.clone());
    }
    let relay = start(store.clone(), broker.clone(), Standalone, config.clone());
    until_empty(&store).await;
    relay.stop().await;
    assert_all_once_in_key_order(&sent, &broker.published());

    // Under failures, order may break, but every message is still published once.
    let store = MemoryStore::new();
    let broker = FaultyBroker::new(MemoryBroker::new());
    broker.fail_ratio(0.2);
    for m in &sent {
        store.enqueue(m.clone());
    }
    let relay = start(store.clone(), broker.clone(), Standalone, config);
    until_empty(&store).await;
    relay.stop().await;
    let published = broker.inner().published();
    assert_eq!(published.len(), sent.len());
    assert!(store.dead_letters().is_empty());
}
