//! Failure tests against the real PostgreSQL and NATS (DESIGN.md section 5, issue 3): a broker
//! killed mid-stream, the leader's sessions terminated while a standby competes, a poison message,
//! a broker failing at random, and a shutdown in the middle of a batch.
//!
//! Each test has its own schema and stream, and checks what a consumer would see: every message
//! in the stream exactly once (distinct `Nats-Msg-Id` = count), messages of a key in enqueue
//! order, the outbox empty, and no dead letter unless one is expected.

use std::time::Duration;

use async_trait::async_trait;
use outbox_core::{Broker, Elector, Message, PendingAck, RelayConfig, RelayState, Store};
use outbox_nats::{JetStreamConfig, JetStreamPublisher};
use outbox_postgres::WakeUp;
use outbox_testkit::{
    FaultyBroker, NatsServer, RelayTask, TestNats, assert_exactly_once_in_key_order,
};
use tokio::time::Instant;

mod common;
use common::{Fixture, WAIT, stream_len};

fn start<S: Store, B: Broker, E: Elector>(
    store: S,
    broker: B,
    elector: E,
    config: RelayConfig,
) -> RelayTask {
    RelayTask::start(store, broker, elector, config)
}

/// A relay window narrow enough that a fault lands in the middle of the stream.
fn narrow() -> outbox_core::RelayConfigBuilder {
    RelayConfig::builder().batch_size(32).max_in_flight(32)
}

// ---------------------------------------------------------------------------------------------
// 1. The broker is killed for 5 s in the middle of the stream.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_killed_for_five_seconds_mid_stream_loses_and_duplicates_nothing() {
    let mut server = NatsServer::start().await;
    // TestNats provisions a file-backed stream on the private server, so it survives the restart.
    let mut f = Fixture::with(TestNats::on(&server.url()).await, |b| b).await;
    let sent = f.enqueue_many(5_000, 50).await;

    // The relay's own client, with async-nats' default reconnect behaviour (forever, backing off
    // up to 4 s). A short ack timeout makes the outage visible to the relay quickly.
    let client = outbox_nats::connect(&server.url()).await.unwrap();
    let js = JetStreamConfig::builder()
        .ack_timeout(Duration::from_secs(1))
        .build()
        .unwrap();
    let publisher = JetStreamPublisher::with_config(client, js).unwrap();
    let config = narrow()
        .reconnect_base(Duration::from_millis(50))
        .reconnect_max(Duration::from_millis(500))
        .build()
        .unwrap();
    let store = f.store();
    let mut relay = start(store.clone(), publisher, store.elector(), config);
    relay.until_leading(WAIT).await;

    let before = f.until_stream_has(5_000 / 3).await;
    assert!(before < 5_000, "the stream was complete before the kill");
    server.kill().await;
    let killed_at = Instant::now();

    // The outage lasts five seconds by design. Meanwhile the relay keeps leading, and failed
    // publishes cost no attempts: they are "broker unavailable", not the messages' fault.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        relay.state(),
        RelayState::Leading,
        "relay during the outage"
    );
    assert!(f.pending().await > 0, "nothing was left to publish");
    assert_eq!(
        f.scalar("SELECT count(*) FROM {schema}.messages WHERE attempts > 0")
            .await,
        0,
        "attempts were counted while the broker was down"
    );

    server.restart().await;
    f.until_empty().await;
    let recovered = killed_at.elapsed();
    assert_eq!(relay.state(), RelayState::Leading, "relay after the outage");
    assert_eq!(f.dead_letters().await, 0);
    f.assert_stream_holds(&sent).await;
    eprintln!("stream held {before} at the kill; outbox empty {recovered:?} after it");
    relay.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 3. The leader's sessions are terminated three times while a standby relay competes.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_sessions_terminated_three_times_with_a_standby_competing() {
    // LISTEN mode, so that the leader has a second session to lose.
    let mut f = Fixture::with(TestNats::new().await, |b| {
        b.wake_up(WakeUp::Listen)
            .campaign_interval(Duration::from_millis(100))
    })
    .await;
    let sent = f.enqueue_many(6_000, 50).await;
    let config = || {
        RelayConfig::builder()
            .batch_size(16)
            .max_in_flight(16)
            .build()
            .unwrap()
    };
    let (a_store, b_store) = (f.store(), f.store());
    let a = start(a_store.clone(), f.publisher(), a_store.elector(), config());
    let b = start(b_store.clone(), f.publisher(), b_store.elector(), config());

    let lock_holder = f.sql(
        "SELECT l.pid FROM pg_locks l JOIN pg_stat_activity a USING (pid) \
         WHERE l.locktype = 'advisory' AND l.granted \
           AND a.application_name = 'outbox-relay {schema}'",
    );
    let terminate = f.sql(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
         WHERE pid = $1 OR application_name = 'outbox-listen {schema}'",
    );
    let mut holders = Vec::new();
    for round in 0..3u64 {
        // The (new) leader's session holds the lock: terminate it, and the LISTEN sessions,
        // once the stream moved on.
        let deadline = Instant::now() + WAIT;
        let pid: i32 = loop {
            let rows = f.client.query(&lock_holder, &[]).await.unwrap();
            assert!(rows.len() <= 1, "round {round}: two sessions hold the lock");
            match rows.first().map(|r| r.get::<_, i32>(0)) {
                Some(pid) if !holders.contains(&pid) => break pid,
                _ => {
                    assert!(Instant::now() < deadline, "round {round}: no new leader");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        };
        holders.push(pid);
        let len = f.until_stream_has(1_500 * (round + 1)).await;
        assert!(
            len < 6_000,
            "round {round}: the stream was already complete"
        );
        let killed: i64 = f
            .client
            .query_one(&terminate, &[&pid])
            .await
            .unwrap()
            .get(0);
        assert!(killed >= 1, "round {round}: terminated {killed} sessions");
    }
    f.until_empty().await;

    // Exactly one of the two leads once things settled.
    let deadline = Instant::now() + WAIT;
    while a.state().is_leading() == b.state().is_leading() {
        assert!(Instant::now() < deadline, "not exactly one leader");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(f.dead_letters().await, 0);
    f.assert_stream_holds(&sent).await;
    a.stop().await;
    b.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 4. A poison message: dead-lettered at once, its key unblocked; replayed once fixed.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_message_is_dead_lettered_at_once_and_published_after_a_fixed_replay() {
    // The outbox's own limit is set above the server's, so that the broker is the one to refuse.
    let nats = TestNats::new().await;
    let max = nats.client().server_info().max_payload;
    let mut f = Fixture::with(nats, |b| b.max_payload(2 * max)).await;
    let poison = Message::builder(f.nats.subject("orders"))
        .key("key-a")
        .payload(vec![b'x'; max + 1])
        .build()
        .unwrap();
    // Five messages on each of five keys; the second message of key-a is the poison.
    let mut all = Vec::new();
    for n in 0..5 {
        for key in ["key-a", "key-b", "key-c", "key-d", "key-e"] {
            if key == "key-a" && n == 1 {
                all.push(poison.clone());
            } else {
                all.push(f.message(key, n));
            }
        }
    }
    f.enqueue(&all).await;
    let healthy: Vec<Message> = all
        .iter()
        .filter(|m| m.id() != poison.id())
        .cloned()
        .collect();

    let store = f.store();
    let relay = start(
        store.clone(),
        f.publisher(),
        store.elector(),
        RelayConfig::default(),
    );
    f.until_empty().await;
    f.assert_stream_holds(&healthy).await;
    let dead = f.outbox.dead_letters(&f.client, 10, 0).await.unwrap();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].message.id(), poison.id());
    assert_eq!(dead[0].attempts, 1, "a permanent error is not retried");
    assert!(
        dead[0].error.contains("max_payload") && dead[0].error.contains(&max.to_string()),
        "the error names the limit: {}",
        dead[0].error
    );

    // Replayed as it is, it fails the same way, once more.
    let replayed = f
        .outbox
        .replay_dead_letters(&f.client, &[poison.id()])
        .await
        .unwrap();
    assert_eq!(replayed.len(), 1);
    let fx = &f;
    wait_until(move || async move { fx.pending().await == 0 && fx.dead_letters().await == 1 })
        .await;
    let dead = f.outbox.dead_letters(&f.client, 10, 0).await.unwrap();
    assert_eq!(dead[0].attempts, 1);
    assert_eq!(stream_len(&f.nats).await, Some(healthy.len() as u64));

    // Fixed (a payload the server accepts) and replayed: published, with its original id.
    let fixed = br#"{"fixed":true}"#.as_slice();
    let updated = f
        .client
        .execute(
            &f.sql("UPDATE {schema}.dead_letters SET payload = $1 WHERE id = $2"),
            &[&fixed, &poison.id()],
        )
        .await
        .unwrap();
    assert_eq!(updated, 1);
    f.outbox
        .replay_dead_letters(&f.client, &[poison.id()])
        .await
        .unwrap();
    f.until_empty().await;
    let got = f.nats.wait_for_stream(all.len(), WAIT).await;
    assert_eq!(got.len(), all.len());
    let last = got.last().unwrap();
    assert_eq!(last.msg_id(), Some(poison.id().to_string().as_str()));
    assert_eq!(last.key(), Some("key-a"));
    assert_eq!(last.payload, fixed);
    assert_exactly_once_in_key_order(&healthy, &got[..got.len() - 1]);
    assert_eq!(f.dead_letters().await, 0);
    relay.stop().await;
}

/// Polls `condition` every 10 ms until it holds.
///
/// # Panics
///
/// After [`WAIT`].
async fn wait_until<F, Fut>(condition: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + WAIT;
    while !condition().await {
        assert!(
            Instant::now() < deadline,
            "condition not reached in {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// 5. A broker failing 30 % of publishes at random.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_failing_thirty_percent_at_random_delivers_ten_thousand_once_in_key_order() {
    let mut f = Fixture::new().await;
    let sent = f.enqueue_many(10_000, 100).await;
    let broker = FaultyBroker::new(f.publisher());
    broker.fail_ratio(0.3);
    // Fast retries; enough attempts that no message runs out of them (0.3^50).
    let config = RelayConfig::builder()
        .retry_base(Duration::from_millis(2))
        .retry_max(Duration::from_millis(50))
        .max_attempts(50)
        .build()
        .unwrap();
    let store = f.store();
    let relay = start(store.clone(), broker.clone(), store.elector(), config);

    // The relay deletes a message once published, so watch the table while it works: messages
    // whose publish failed wait with their attempts and last error recorded.
    let observer = f.db.connect().await;
    let probe = f.sql(
        "SELECT count(*) AS total, coalesce(max(attempts), 0) AS attempts, \
                min(last_error) FILTER (WHERE attempts > 0) AS error \
         FROM {schema}.messages",
    );
    let mut most_attempts = 0;
    let mut an_error = None;
    let deadline = Instant::now() + WAIT;
    loop {
        let row = observer.query_one(&probe, &[]).await.unwrap();
        most_attempts = most_attempts.max(row.get::<_, i32>("attempts"));
        if let Some(error) = row.get::<_, Option<String>>("error") {
            an_error = Some(error);
        }
        if row.get::<_, i64>("total") == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "messages still pending");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    relay.stop().await;

    assert!(
        broker.failures() > 2_000,
        "injected failures: {}",
        broker.failures()
    );
    assert!(most_attempts >= 1, "no attempt was recorded");
    let error = an_error.expect("a recorded error");
    assert!(error.contains("injected"), "{error}");
    assert_eq!(f.dead_letters().await, 0);
    f.assert_stream_holds(&sent).await;
    eprintln!(
        "{} publishes, {} failed; most attempts seen on one message: {most_attempts}",
        broker.attempts(),
        broker.failures()
    );
}

/// Deterministic companion of the random test: each message's first publish fails, and the
/// relay stops before the retry is due, so the table shows exactly what was recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_publish_records_its_attempt_error_and_retry_time() {
    let mut f = Fixture::new().await;
    let sent: Vec<Message> = (0..5).map(|n| f.message(&format!("key-{n}"), n)).collect();
    f.enqueue(&sent).await;
    let broker = FaultyBroker::new(f.publisher());
    broker.fail_next(sent.len(), true);
    let config = RelayConfig::builder()
        .retry_base(Duration::from_secs(30))
        .retry_max(Duration::from_secs(60))
        .build()
        .unwrap();
    let store = f.store();
    let relay = start(store.clone(), broker.clone(), store.elector(), config);
    let fx = &f;
    wait_until(move || async move {
        fx.scalar("SELECT count(*) FROM {schema}.messages WHERE attempts = 1")
            .await
            == 5
    })
    .await;
    relay.stop().await;

    let rows = f
        .client
        .query(
            &f.sql(
                "SELECT attempts, last_error, \
                        extract(epoch FROM available_at - now())::float8 AS due_in \
                 FROM {schema}.messages ORDER BY seq",
            ),
            &[],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 5);
    for row in &rows {
        assert_eq!(row.get::<_, i32>("attempts"), 1);
        let error: String = row.get("last_error");
        assert!(error.contains("publish failed (injected)"), "{error}");
        let due_in: f64 = row.get("due_in");
        assert!(
            (20.0..=120.0).contains(&due_in),
            "retry due in {due_in} s, not after the backoff"
        );
    }
    assert_eq!(broker.failures(), 5);
    assert_eq!(stream_len(&f.nats).await, Some(0));

    // Made due, the retries go out, each once.
    f.client
        .execute(
            &f.sql("UPDATE {schema}.messages SET available_at = now()"),
            &[],
        )
        .await
        .unwrap();
    let store = f.store();
    let relay = start(
        store.clone(),
        broker,
        store.elector(),
        RelayConfig::default(),
    );
    f.until_empty().await;
    relay.stop().await;
    f.assert_stream_holds(&sent).await;
}

// ---------------------------------------------------------------------------------------------
// 7. Graceful shutdown in the middle of a batch.
// ---------------------------------------------------------------------------------------------

/// What a shutdown may take beyond its grace period on a busy machine: recording the last
/// acknowledgements and resigning.
const MARGIN: Duration = Duration::from_secs(1);

/// A broker whose acknowledgements arrive `delay` late: the message is sent at once.
#[derive(Clone, Debug)]
struct SlowAcks<B> {
    inner: B,
    delay: Duration,
}

#[async_trait]
impl<B: Broker> Broker for SlowAcks<B> {
    async fn publish(&self, message: &Message) -> Result<PendingAck, outbox_core::Error> {
        let pending = self.inner.publish(message).await?;
        let delay = self.delay;
        Ok(PendingAck::new(async move {
            tokio::time::sleep(delay).await;
            pending.await
        }))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_mid_batch_returns_within_the_grace_period_and_records_what_was_acked() {
    let mut f = Fixture::new().await;
    let sent = f.enqueue_many(3_000, 100).await;
    let grace = Duration::from_secs(3);
    let config = RelayConfig::builder()
        .batch_size(64)
        .max_in_flight(128)
        .shutdown_grace(grace)
        .build()
        .unwrap();
    let slow = SlowAcks {
        inner: f.publisher(),
        delay: Duration::from_millis(50),
    };
    let store = f.store();
    let relay = start(store.clone(), slow, store.elector(), config);
    f.until_stream_has(500).await;
    let took = relay.stop().await;
    assert!(took <= grace + MARGIN, "run() took {took:?} to return");

    // Every acknowledgement in flight arrived within the grace period and was recorded: what the
    // stream holds is exactly what left the outbox.
    let published = stream_len(&f.nats).await.unwrap();
    let pending = f.pending().await;
    assert!(pending > 0, "the stream was complete before the shutdown");
    assert_eq!(
        published + pending as u64,
        sent.len() as u64,
        "stream {published} + outbox {pending}"
    );

    let store = f.store();
    let relay = start(
        store.clone(),
        f.publisher(),
        store.elector(),
        RelayConfig::default(),
    );
    f.until_empty().await;
    relay.stop().await;
    f.assert_stream_holds(&sent).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_with_acks_that_never_come_returns_at_the_grace_period() {
    let mut f = Fixture::new().await;
    let sent = f.enqueue_many(200, 20).await;
    let grace = Duration::from_millis(500);
    let config = RelayConfig::builder()
        .shutdown_grace(grace)
        .build()
        .unwrap();
    // Sent, stored by JetStream, but acknowledged far beyond the grace period.
    let hung = SlowAcks {
        inner: f.publisher(),
        delay: Duration::from_secs(30),
    };
    let store = f.store();
    let relay = start(store.clone(), hung, store.elector(), config);
    // One message per key is in flight; the others wait behind it.
    f.until_stream_has(20).await;
    let took = relay.stop().await;
    assert!(
        took >= grace && took <= grace + MARGIN,
        "run() took {took:?} to return"
    );
    assert_eq!(
        f.pending().await,
        200,
        "nothing acknowledged, nothing removed"
    );

    // The next relay publishes everything again; JetStream drops the 20 it already holds.
    let store = f.store();
    let relay = start(
        store.clone(),
        f.publisher(),
        store.elector(),
        RelayConfig::default(),
    );
    f.until_empty().await;
    relay.stop().await;
    f.assert_stream_holds(&sent).await;
}
