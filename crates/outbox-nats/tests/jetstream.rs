//! JetStreamPublisher against a real NATS server: headers, deduplication, error classes and the
//! acknowledgement window. Each test has its own stream and subjects (`TestNats`).

use std::collections::HashSet;
use std::time::Duration;

use futures::stream::{FuturesUnordered, StreamExt};
use outbox_core::{Broker, Message};
use outbox_nats::{Error, JetStreamConfig, JetStreamPublisher};
use outbox_testkit::TestNats;

const WAIT: Duration = Duration::from_secs(10);

fn message(subject: String) -> Message {
    Message::builder(subject)
        .payload("{}")
        .build()
        .unwrap_or_else(|e| panic!("{e}"))
}

/// The `outbox_nats::Error` inside a core error.
fn nats_error(error: &outbox_core::Error) -> &Error {
    std::error::Error::source(error)
        .and_then(|s| s.downcast_ref::<Error>())
        .unwrap_or_else(|| panic!("not an outbox_nats::Error: {error:?}"))
}

async fn publish_result(
    publisher: &JetStreamPublisher,
    message: &Message,
) -> Result<outbox_core::Ack, outbox_core::Error> {
    match publisher.publish(message).await {
        Ok(pending) => pending.await,
        Err(e) => Err(e),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_message_carries_its_id_key_and_headers() {
    let nats = TestNats::new().await;
    let publisher = JetStreamPublisher::new(nats.client());
    let keyed = Message::builder(nats.subject("orders.created"))
        .key("customer-7")
        .header("Content-Type", "application/json")
        .header("X-Trace", "abc")
        .payload("{\"n\":1}")
        .build()
        .unwrap();
    let unkeyed = message(nats.subject("orders.created"));
    for m in [&keyed, &unkeyed] {
        publish_result(&publisher, m).await.unwrap();
    }
    let got = nats.wait_for_stream(2, WAIT).await;
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].msg_id(), Some(keyed.id().to_string().as_str()));
    assert_eq!(got[0].key(), Some("customer-7"));
    assert_eq!(got[0].headers["Content-Type"], "application/json");
    assert_eq!(got[0].headers["X-Trace"], "abc");
    assert_eq!(got[0].headers.len(), 4, "{:?}", got[0].headers);
    assert_eq!(got[0].payload.as_ref(), b"{\"n\":1}");
    assert_eq!(got[1].msg_id(), Some(unkeyed.id().to_string().as_str()));
    assert_eq!(got[1].key(), None);
    assert_eq!(got[1].headers.len(), 1, "{:?}", got[1].headers);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_republish_is_stored_once_and_acknowledged_as_duplicate() {
    let nats = TestNats::new().await;
    let publisher = JetStreamPublisher::new(nats.client());
    let m = message(nats.subject("dup"));
    let first = publish_result(&publisher, &m).await.unwrap();
    // A relay restarted after a crash: a new connection, the same message.
    let other = JetStreamPublisher::new(async_nats::connect(nats.url()).await.unwrap());
    let second = publish_result(&other, &m).await.unwrap();
    assert!(!first.duplicate);
    assert!(second.duplicate);
    assert_eq!(nats.stream_len().await, 1);
    let got = nats.stream_messages().await;
    assert_eq!(got[0].msg_id(), Some(m.id().to_string().as_str()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payload_over_max_payload_fails_permanently_before_sending() {
    let nats = TestNats::new().await;
    let client = nats.client();
    let publisher = JetStreamPublisher::new(client.clone());
    let max = client.server_info().max_payload;
    assert!(max > 0);
    // Exactly at the limit once headers count: the payload alone fits, payload + headers do not.
    let big = Message::builder(nats.subject("big"))
        .payload(vec![b'x'; max - 10])
        .build()
        .unwrap();
    let error = publisher.publish(&big).await.unwrap_err();
    assert!(!error.is_retryable(), "{error}");
    match nats_error(&error) {
        Error::PayloadTooLarge { size, max: limit } => {
            assert_eq!(*limit, max);
            assert!(*size > max);
        }
        other => panic!("wrong error: {other}"),
    }
    // The connection was not closed by the server: the next message goes through at once.
    publish_result(&publisher, &message(nats.subject("small")))
        .await
        .unwrap();
    assert_eq!(
        client.connection_state(),
        async_nats::connection::State::Connected
    );
    assert_eq!(
        client
            .statistics()
            .connects
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    assert_eq!(nats.stream_len().await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_over_the_streams_max_msg_size_is_rejected_permanently() {
    let nats = TestNats::new().await;
    let js = nats.jetstream();
    let mut stream = js.get_stream(nats.stream_name()).await.unwrap();
    let mut config = stream.info().await.unwrap().config.clone();
    config.max_message_size = 1000;
    js.update_stream(&config).await.unwrap();

    let publisher = JetStreamPublisher::new(nats.client());
    let big = Message::builder(nats.subject("big"))
        .payload(vec![b'x'; 2000])
        .build()
        .unwrap();
    let error = publish_result(&publisher, &big).await.unwrap_err();
    assert!(!error.is_retryable(), "{error}");
    assert!(
        matches!(
            nats_error(&error),
            Error::Rejected {
                permanent: true,
                ..
            }
        ),
        "{error}"
    );
    // NATS 2.9.10's words.
    assert!(
        error
            .to_string()
            .contains("message size exceeds maximum allowed (code 400, error code 10054)"),
        "{error}"
    );
    publish_result(&publisher, &message(nats.subject("small")))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subject_without_a_stream_is_a_transient_error() {
    let nats = TestNats::new().await;
    let publisher = JetStreamPublisher::new(nats.client());
    // No stream on the shared server captures this prefix.
    let subject = format!("outbox-nats-nostream.{}", outbox_testkit::unique_suffix());
    let error = publish_result(&publisher, &message(subject.clone()))
        .await
        .unwrap_err();
    assert!(error.is_retryable(), "{error}");
    match nats_error(&error) {
        Error::NoStream { subject: s } => assert_eq!(*s, subject),
        other => panic!("wrong error: {other}"),
    }
    assert!(
        error.to_string().contains("no stream captures subject"),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wildcard_subjects_are_invalid_messages() {
    let nats = TestNats::new().await;
    let publisher = JetStreamPublisher::new(nats.client());
    // The builder refuses it; the publisher must too, for a message that bypassed the builder
    // (a stored row, rebuilt without checks).
    assert!(Message::builder(nats.subject("*")).build().is_err());
    let m = Message::builder(nats.subject("*"))
        .payload("{}")
        .build_stored();
    let error = publisher.publish(&m).await.unwrap_err();
    assert!(
        matches!(error, outbox_core::Error::InvalidMessage(_)),
        "{error}"
    );
    assert!(!error.is_retryable());
    assert_eq!(nats.stream_len().await, 0);
}

/// The relay's window: at most 1024 acknowledgements in flight, the same as async-nats' own
/// window here, so a publish never waits for an acknowledgement nobody polls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_messages_through_a_window_of_1024_are_stored_once() {
    const N: usize = 10_000;
    const WINDOW: usize = 1024;
    let nats = TestNats::new().await;
    let config = JetStreamConfig::builder()
        .max_ack_inflight(WINDOW)
        .build()
        .unwrap();
    let publisher = JetStreamPublisher::with_config(nats.client(), config).unwrap();
    let messages: Vec<Message> = (0..N)
        .map(|i| {
            Message::builder(nats.subject(&format!("window.{}", i % 16)))
                .key(format!("k{}", i % 64))
                .payload(format!("{i}"))
                .build()
                .unwrap()
        })
        .collect();
    let run = async {
        let mut in_flight = FuturesUnordered::new();
        let mut most = 0;
        for m in &messages {
            while in_flight.len() >= WINDOW {
                let ack: Result<outbox_core::Ack, outbox_core::Error> =
                    in_flight.next().await.unwrap();
                assert!(!ack.unwrap().duplicate);
            }
            in_flight.push(publisher.publish(m).await.unwrap());
            most = most.max(in_flight.len());
        }
        while let Some(ack) = in_flight.next().await {
            assert!(!ack.unwrap().duplicate);
        }
        most
    };
    let most = tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("publishing 10,000 messages deadlocked or took over 2 minutes");
    assert_eq!(most, WINDOW);
    assert_eq!(nats.stream_len().await, N as u64);
    let got = nats.stream_messages().await;
    let ids: HashSet<&str> = got.iter().filter_map(|r| r.msg_id()).collect();
    assert_eq!(ids.len(), N);
    let want: HashSet<String> = messages.iter().map(|m| m.id().to_string()).collect();
    assert!(ids.iter().all(|id| want.contains(*id)));
}
