//! CorePublisher against a real NATS server, with a subscriber on the test's own subjects.

use std::sync::atomic::Ordering;
use std::time::Duration;

use futures::StreamExt;
use outbox_core::{Broker, Message};
use outbox_nats::{CorePublisher, Error};
use outbox_testkit::{Received, TestNats};

const WAIT: Duration = Duration::from_secs(10);

/// Returns once the server answered something sent after everything `client` sent before.
/// (async-nats' `flush` is local: it does not wait for the server.) A request nobody listens
/// to comes back at once as "no responders".
async fn round_trip(client: &async_nats::Client) {
    let nobody = format!("outbox-nats-barrier.{}", outbox_testkit::unique_suffix());
    let answer = client.request(nobody, "".into()).await;
    assert!(
        matches!(&answer, Err(e) if e.kind() == async_nats::RequestErrorKind::NoResponders),
        "{answer:?}"
    );
}

/// A subscription on the test's prefix, registered with the server before it returns.
async fn subscribe(nats: &TestNats) -> (async_nats::Client, async_nats::Subscriber) {
    let client = async_nats::connect(nats.url()).await.unwrap();
    let subscription = client
        .subscribe(format!("{}.>", nats.prefix()))
        .await
        .unwrap();
    round_trip(&client).await;
    (client, subscription)
}

async fn next(subscription: &mut async_nats::Subscriber) -> Received {
    let message = tokio::time::timeout(WAIT, subscription.next())
        .await
        .expect("no message within 10 s")
        .expect("subscription ended");
    Received::from_nats(&message)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribers_get_the_id_key_and_headers() {
    let nats = TestNats::new().await;
    let (_client, mut subscription) = subscribe(&nats).await;
    let publisher = CorePublisher::new(nats.client());
    let m = Message::builder(nats.subject("core"))
        .key("k-1")
        .header("X-Trace", "t")
        .payload("hello")
        .build()
        .unwrap();
    let ack = publisher.publish(&m).await.unwrap().await.unwrap();
    assert!(!ack.duplicate);
    let got = next(&mut subscription).await;
    assert_eq!(got.subject, m.subject());
    assert_eq!(got.payload.as_ref(), b"hello");
    assert_eq!(got.msg_id(), Some(m.id().to_string().as_str()));
    assert_eq!(got.key(), Some("k-1"));
    assert_eq!(got.headers["X-Trace"], "t");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_payload_fails_permanently_and_keeps_the_connection() {
    let nats = TestNats::new().await;
    let (_client, mut subscription) = subscribe(&nats).await;
    let client = nats.client();
    let publisher = CorePublisher::new(client.clone());
    let max = client.server_info().max_payload;
    let big = Message::builder(nats.subject("big"))
        .payload(vec![0u8; max + 1])
        .build()
        .unwrap();
    let error = publisher.publish(&big).await.unwrap_err();
    assert!(!error.is_retryable(), "{error}");
    let inner = std::error::Error::source(&error).and_then(|s| s.downcast_ref::<Error>());
    assert!(
        matches!(inner, Some(Error::PayloadTooLarge { .. })),
        "{error}"
    );
    let small = Message::builder(nats.subject("small")).build().unwrap();
    publisher.publish(&small).await.unwrap().await.unwrap();
    assert_eq!(next(&mut subscription).await.subject, small.subject());
    assert_eq!(client.statistics().connects.load(Ordering::Relaxed), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_resolve_without_a_round_trip_each() {
    let nats = TestNats::new().await;
    let (_client, mut subscription) = subscribe(&nats).await;
    // Its own connection, so that everything it reads is an answer to it.
    let client = async_nats::connect(nats.url()).await.unwrap();
    // After the connect handshake, so that its answers have arrived before counting.
    round_trip(&client).await;
    let publisher = CorePublisher::new(client.clone());
    let read_before = client.statistics().in_bytes.load(Ordering::Relaxed);
    let sent_before = client.statistics().out_messages.load(Ordering::Relaxed);
    let messages: Vec<Message> = (0..500)
        .map(|i| {
            Message::builder(nats.subject("many"))
                .payload(format!("{i}"))
                .build()
                .unwrap()
        })
        .collect();
    let mut pending = Vec::new();
    for m in &messages {
        pending.push(publisher.publish(m).await.unwrap());
    }
    for ack in futures::future::join_all(pending).await {
        ack.unwrap();
    }
    // The flushes are local. A PING per flush would have read 500 PONGs (3,000 bytes); the
    // server may still PING a young connection by itself ("PING\r\n", 6 bytes).
    let sent = client.statistics().out_messages.load(Ordering::Relaxed) - sent_before;
    let read = client.statistics().in_bytes.load(Ordering::Relaxed) - read_before;
    assert_eq!(sent, 500);
    assert!(read <= 12, "read {read} bytes while publishing");
    for i in 0..500 {
        assert_eq!(next(&mut subscription).await.payload, format!("{i}"));
    }
}
