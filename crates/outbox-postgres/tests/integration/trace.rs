//! W3C trace context through the outbox: the `traceparent` a message was enqueued with arrives
//! in the NATS message's headers, unchanged, after a relay published it from PostgreSQL.

use std::time::Duration;

use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use outbox_core::trace::{TRACEPARENT, TRACESTATE, publish_span};
use outbox_core::{Message, RelayConfig, TraceContext};
use outbox_nats::JetStreamPublisher;
use outbox_testkit::{Received, RelayTask, TestNats};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;

use crate::common::{Fixture, within};

const WAIT: Duration = Duration::from_secs(60);

/// Enqueues `messages` in one committed transaction, relays them to `nats` and returns what the
/// stream holds.
async fn through_the_outbox(
    f: &mut Fixture,
    nats: &TestNats,
    messages: &[Message],
) -> Vec<Received> {
    let tx = f.client.transaction().await.expect("begin");
    for message in messages {
        f.outbox.enqueue(&tx, message).await.expect("enqueue");
    }
    tx.commit().await.expect("commit");

    let store = f.store();
    let mut relay = RelayTask::start(
        store.clone(),
        JetStreamPublisher::new(nats.client()),
        store.elector(),
        RelayConfig::default(),
    );
    relay.until_leading(WAIT).await;
    f.wait_until_empty(WAIT).await;
    relay.stop().await;
    let received = within(
        WAIT,
        "the stream filling",
        nats.wait_for_stream(messages.len(), WAIT),
    )
    .await;
    assert_eq!(received.len(), messages.len(), "{received:?}");
    received
}

#[tokio::test]
async fn a_trace_id_set_before_enqueue_arrives_in_the_nats_headers() {
    let mut f = Fixture::new().await;
    let nats = TestNats::new().await;
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let tracestate = "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE";
    let trace = TraceContext::parse(traceparent)
        .unwrap()
        .with_state(tracestate)
        .unwrap();
    let fresh = TraceContext::random();
    let traced = Message::builder(nats.subject("orders"))
        .key("customer-1")
        .trace_context(&trace)
        .payload("1")
        .build()
        .unwrap();
    let started = Message::builder(nats.subject("orders"))
        .key("customer-1")
        .trace_context(&fresh)
        .payload("2")
        .build()
        .unwrap();
    let untraced = Message::builder(nats.subject("orders"))
        .key("customer-1")
        .payload("3")
        .build()
        .unwrap();

    let got = through_the_outbox(&mut f, &nats, &[traced, started, untraced]).await;

    // Same key, so stream order is enqueue order.
    assert_eq!(
        got[0].headers.get(TRACEPARENT).map(String::as_str),
        Some(traceparent)
    );
    assert_eq!(
        got[0].headers.get(TRACESTATE).map(String::as_str),
        Some(tracestate)
    );
    let arrived = TraceContext::from_headers(
        got[0].headers.get(TRACEPARENT).map(String::as_str),
        got[0].headers.get(TRACESTATE).map(String::as_str),
    )
    .expect("a valid traceparent");
    assert_eq!(
        arrived.trace_id().to_string(),
        "4bf92f3577b34da6a3ce929d0e0e4736"
    );
    assert_eq!(arrived, trace);

    let arrived = got[1].headers.get(TRACEPARENT).expect("traceparent");
    assert_eq!(arrived, &fresh.traceparent());
    assert_eq!(got[1].headers.get(TRACESTATE), None);

    // Nothing is made up for a message enqueued without a context (no OpenTelemetry layer here).
    assert_eq!(
        got[2].headers.get(TRACEPARENT),
        None,
        "{:?}",
        got[2].headers
    );
}

#[tokio::test]
async fn a_message_built_in_an_opentelemetry_span_continues_its_trace() {
    let mut f = Fixture::new().await;
    let nats = TestNats::new().await;
    // An SDK tracer without an exporter: spans get real ids, nothing is sent anywhere. The
    // subscriber is this thread's default, and this test's runtime runs on this thread only.
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("outbox-test")));
    let _default = tracing::subscriber::set_default(subscriber);

    let request = tracing::info_span!("handle_request");
    let (message, span_trace_id, span_id) = request.in_scope(|| {
        let current = tracing::Span::current().context();
        let ids = current.span().span_context().clone();
        let message = Message::builder(nats.subject("orders"))
            .key("customer-1")
            .payload("1")
            .build()
            .unwrap();
        (message, ids.trace_id(), ids.span_id())
    });
    let carried = message
        .trace_context()
        .expect("the span's context was filled in");
    assert_eq!(carried.trace_id().to_string(), span_trace_id.to_string());
    assert_eq!(carried.parent_id().to_string(), span_id.to_string());

    // An explicit context wins over the current span's.
    let explicit = TraceContext::random();
    let chosen = request.in_scope(|| {
        Message::builder(nats.subject("orders"))
            .key("customer-1")
            .trace_context(&explicit)
            .payload("2")
            .build()
            .unwrap()
    });
    assert_eq!(chosen.trace_context(), Some(explicit.clone()));

    // The relay's publish span joins the message's trace, not the trace it is made in.
    let relay_batch = tracing::info_span!("relay_batch");
    let publish = relay_batch.in_scope(|| publish_span(&message));
    let publish_ids = publish.context().span().span_context().clone();
    assert_eq!(publish_ids.trace_id(), span_trace_id);
    assert_ne!(publish_ids.span_id(), span_id);
    drop(publish);

    let got = through_the_outbox(&mut f, &nats, &[message, chosen]).await;
    assert_eq!(
        got[0].headers.get(TRACEPARENT).map(String::as_str),
        Some(carried.traceparent().as_str())
    );
    assert!(
        got[0].headers[TRACEPARENT].contains(&span_trace_id.to_string()),
        "{:?}",
        got[0].headers
    );
    assert_eq!(
        got[1].headers.get(TRACEPARENT).map(String::as_str),
        Some(explicit.traceparent().as_str())
    );
    provider.shutdown().ok();
}
