//! Both publishers while their server is down and after it is back: errors are transient and
//! come within the configured timeout, and JetStream stores a message retried across the
//! outage once. Each test runs its own nats-server (`NatsServer`) on a free port.

use std::time::Duration;

use outbox_core::{Ack, Broker, Message};
use outbox_nats::{
    CoreConfig, CorePublisher, JetStreamConfig, JetStreamPublisher, StreamSpec, ensure_stream,
};
use outbox_testkit::NatsServer;
use tokio::time::{Instant, timeout};

const SHORT: Duration = Duration::from_millis(500);

async fn publish<B: Broker>(broker: &B, message: &Message) -> Result<Ack, outbox_core::Error> {
    broker.publish(message).await?.await
}

/// Publishes until it succeeds, as the relay would (every failure must be transient).
async fn publish_until_acked<B: Broker>(broker: &B, message: &Message) -> Ack {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match publish(broker, message).await {
            Ok(ack) => return ack,
            Err(e) => {
                assert!(e.is_retryable(), "permanent error during an outage: {e}");
                assert!(Instant::now() < deadline, "still failing after 30 s: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jetstream_outage_is_transient_and_the_retry_is_stored_once() {
    let mut server = NatsServer::start().await;
    let client = outbox_nats::connect(&server.url()).await.unwrap();
    let config = JetStreamConfig::builder()
        .ack_timeout(SHORT)
        .build()
        .unwrap();
    let publisher = JetStreamPublisher::with_config(client, config).unwrap();
    ensure_stream(
        publisher.context(),
        &StreamSpec::new("OUTAGE", ["outage.>"]),
    )
    .await
    .unwrap();
    let before = Message::builder("outage.a").build().unwrap();
    publish(&publisher, &before).await.unwrap();

    server.kill().await;
    let during = Message::builder("outage.a").build().unwrap();
    let error = timeout(Duration::from_secs(10), publish(&publisher, &during))
        .await
        .expect("a publish during an outage must fail within its ack timeout")
        .unwrap_err();
    assert!(error.is_retryable(), "{error}");

    server.restart().await;
    // The failed publish may still have reached the server after the reconnect; either way the
    // stream ends up with it once.
    publish_until_acked(&publisher, &during).await;
    let again = publish(&publisher, &during).await.unwrap();
    assert!(again.duplicate);
    let mut stream = publisher.context().get_stream("OUTAGE").await.unwrap();
    assert_eq!(stream.info().await.unwrap().state.messages, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn core_outage_is_transient_and_publishing_resumes() {
    let mut server = NatsServer::start().await;
    let client = outbox_nats::connect(&server.url()).await.unwrap();
    let config = CoreConfig::builder().flush_timeout(SHORT).build().unwrap();
    let publisher = CorePublisher::with_config(client, config).unwrap();
    publish(&publisher, &Message::builder("outage.a").build().unwrap())
        .await
        .unwrap();

    server.kill().await;
    // The client may take a moment to notice; until it does, writes still "succeed" (core NATS
    // is at most once). Once it noticed, the flush cannot complete and times out.
    let deadline = Instant::now() + Duration::from_secs(10);
    let error = loop {
        let m = Message::builder("outage.a").build().unwrap();
        match timeout(Duration::from_secs(5), publish(&publisher, &m))
            .await
            .expect("a publish during an outage must fail within its flush timeout")
        {
            Err(e) => break e,
            Ok(_) => {
                assert!(Instant::now() < deadline, "publishes kept succeeding");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    assert!(error.is_retryable(), "{error}");

    server.restart().await;
    let m = Message::builder("outage.a").build().unwrap();
    publish_until_acked(&publisher, &m).await;
}
