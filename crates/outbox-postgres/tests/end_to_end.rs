//! PostgreSQL → relay → NATS JetStream, end to end, against the real services.

use std::time::Duration;

use outbox_core::{Elector, Message, RelayConfig, RelayState, Standalone, Store};
use outbox_nats::JetStreamPublisher;
use outbox_testkit::{FaultyStore, RelayTask};

mod common;
use common::{Fixture, WAIT};

fn start<S: Store, E: Elector>(store: S, elector: E, publisher: JetStreamPublisher) -> RelayTask {
    start_with(store, elector, publisher, RelayConfig::default())
}

fn start_with<S: Store, E: Elector>(
    store: S,
    elector: E,
    publisher: JetStreamPublisher,
    config: RelayConfig,
) -> RelayTask {
    RelayTask::start(store, publisher, elector, config)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_messages_are_published_once_and_rolled_back_ones_never() {
    let mut s = Fixture::new().await;
    let committed = s.message("customer-1", 1);
    let rolled_back = s.message("customer-1", 2);
    let tx = s.client.transaction().await.unwrap();
    s.outbox.enqueue(&tx, &rolled_back).await.unwrap();
    tx.rollback().await.unwrap();
    let tx = s.client.transaction().await.unwrap();
    s.outbox.enqueue(&tx, &committed).await.unwrap();
    tx.commit().await.unwrap();

    let store = s.store();
    let relay = start(store.clone(), store.elector(), s.publisher());
    s.until_empty().await;
    relay.stop().await;

    let got = s.nats.stream_messages().await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].msg_id(), Some(committed.id().to_string().as_str()));
    assert_eq!(got[0].key(), Some("customer-1"));
    assert_eq!(got[0].payload, committed.payload());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_messages_over_a_hundred_keys() {
    let mut s = Fixture::new().await;
    let sent = s.enqueue_many(10_000, 100).await;
    let store = s.store();
    let relay = start(store.clone(), store.elector(), s.publisher());
    s.until_empty().await;
    relay.stop().await;
    s.assert_stream_holds(&sent).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_killed_between_publish_and_delete_republishes_without_duplicates() {
    let mut s = Fixture::new().await;
    let sent = s.enqueue_many(2_000, 20).await;

    // The first relay publishes but cannot record acknowledgements, then dies.
    let faulty = FaultyStore::new(s.store());
    faulty.fail_completes(true);
    let first = start(faulty.clone(), Standalone, s.publisher());
    // Wait until it has published and tried to record acknowledgements at least once.
    let deadline = tokio::time::Instant::now() + WAIT;
    while faulty.completes_refused() == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the relay never tried to record an acknowledgement"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    first.abort().await;
    assert!(s.nats.stream_len().await >= 20);
    assert_eq!(s.pending().await, 2_000, "nothing was recorded as done");

    let store = s.store();
    let second = start(store.clone(), store.elector(), s.publisher());
    s.until_empty().await;
    second.stop().await;
    s.assert_stream_holds(&sent).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_relays_one_leads_and_the_other_takes_over_within_two_seconds() {
    let mut s = Fixture::new().await;
    let a_store = s.store();
    let mut a = start(a_store.clone(), a_store.elector(), s.publisher());
    a.until_leading(WAIT).await;
    let b_store = s.store();
    let mut b = start(b_store.clone(), b_store.elector(), s.publisher());

    let first = s.enqueue_many(500, 10).await;
    s.until_empty().await;
    assert!(a.state().is_leading());
    assert_eq!(b.state(), RelayState::Campaigning, "exactly one leads");

    // The leader dies without a goodbye: its task and session vanish.
    a.abort().await;
    drop(a_store);
    b.until_leading(Duration::from_secs(2)).await;

    let second = s.enqueue_many(500, 10).await;
    s.until_empty().await;
    b.stop().await;
    let all: Vec<Message> = first.into_iter().chain(second).collect();
    s.assert_stream_holds(&all).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminated_sessions_stop_the_leader_which_campaigns_again_and_loses_nothing() {
    let mut s = Fixture::new().await;
    let sent = s.enqueue_many(6_000, 50).await;
    let store = s.store();
    // A narrow window keeps the relay busy long enough to be interrupted mid-stream.
    let narrow = RelayConfig::builder()
        .batch_size(16)
        .max_in_flight(16)
        .build()
        .unwrap();
    let mut relay = start_with(store.clone(), store.elector(), s.publisher(), narrow);
    relay.until_leading(WAIT).await;

    let lock_holder = format!(
        "SELECT l.pid FROM pg_locks l JOIN pg_stat_activity a USING (pid) \
         WHERE l.locktype = 'advisory' AND l.granted AND a.application_name = 'outbox-relay {}'",
        s.db.schema()
    );
    let terminate = format!(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
         WHERE application_name LIKE 'outbox-% {}'",
        s.db.schema()
    );
    let mut previous = None;
    for round in 0..3 {
        // Wait for the (new) leader session to hold the lock, then kill its sessions mid-stream.
        let deadline = tokio::time::Instant::now() + WAIT;
        let pid: i32 = loop {
            let rows = s.client.query(&lock_holder, &[]).await.unwrap();
            match rows.first().map(|r| r.get::<_, i32>(0)) {
                Some(pid) if Some(pid) != previous => break pid,
                _ => {
                    assert!(
                        tokio::time::Instant::now() < deadline,
                        "round {round}: no new leader session"
                    );
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        };
        previous = Some(pid);
        let _ = s.nats.wait_for_stream(1_000 * (round + 1), WAIT).await;
        let killed: i64 = s.client.query_one(&terminate, &[]).await.unwrap().get(0);
        assert!(killed >= 1, "round {round}: no relay session found");
    }
    s.until_empty().await;
    relay.until_leading(WAIT).await;
    relay.stop().await;
    s.assert_stream_holds(&sent).await;
}
