//! ensure_stream against a real NATS server. Each test works on the stream of its own
//! `TestNats` (deleted on drop), deleting it first where a missing stream is needed.

use std::time::Duration;

use outbox_core::{Broker, Message};
use outbox_nats::{Error, JetStreamPublisher, StreamSpec, ensure_stream};
use outbox_testkit::TestNats;

/// A `TestNats` whose stream does not exist (yet).
async fn without_stream() -> TestNats {
    let nats = TestNats::new().await;
    nats.jetstream()
        .delete_stream(nats.stream_name())
        .await
        .unwrap_or_else(|e| panic!("delete stream: {e}"));
    nats
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creates_a_missing_stream_and_is_idempotent() {
    let nats = without_stream().await;
    let js = nats.jetstream();
    let spec = StreamSpec::new(nats.stream_name(), [format!("{}.>", nats.prefix())]);
    let created = ensure_stream(&js, &spec).await.unwrap();
    assert_eq!(created.config.name, nats.stream_name());
    assert_eq!(created.config.subjects, spec.subjects);
    assert_eq!(created.config.duplicate_window, Duration::from_secs(120));
    let again = ensure_stream(&js, &spec).await.unwrap();
    assert_eq!(again.config.subjects, spec.subjects);
    assert_eq!(again.config.duplicate_window, spec.duplicate_window);
    assert_eq!(again.created, created.created);

    let publisher = JetStreamPublisher::new(nats.client());
    let m = Message::builder(nats.subject("a")).build().unwrap();
    publisher.publish(&m).await.unwrap().await.unwrap();
    assert_eq!(nats.stream_len().await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn updates_the_duplicate_window_and_adds_subjects_keeping_others() {
    let nats = TestNats::new().await;
    let js = nats.jetstream();
    let own = format!("{}.>", nats.prefix());
    let extra = format!("{}-extra.>", nats.prefix());
    let mut spec = StreamSpec::new(nats.stream_name(), [extra.clone()]);
    spec.duplicate_window = Duration::from_secs(30);
    let updated = ensure_stream(&js, &spec).await.unwrap();
    assert_eq!(updated.config.duplicate_window, Duration::from_secs(30));
    assert_eq!(updated.config.subjects, vec![own.clone(), extra.clone()]);
    // What the server now holds, not what it answered.
    let mut stream = js.get_stream(nats.stream_name()).await.unwrap();
    let info = stream.info().await.unwrap();
    assert_eq!(info.config.duplicate_window, Duration::from_secs(30));
    assert_eq!(info.config.subjects, vec![own, extra]);
    // Messages count on the stream's other settings staying as they were.
    assert_eq!(info.state.messages, 0);

    let publisher = JetStreamPublisher::new(nats.client());
    let m = Message::builder(format!("{}-extra.a", nats.prefix()))
        .build()
        .unwrap();
    let first = publisher.publish(&m).await.unwrap().await.unwrap();
    let second = publisher.publish(&m).await.unwrap().await.unwrap();
    assert!(!first.duplicate && second.duplicate);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_callers_both_succeed() {
    let nats = without_stream().await;
    let spec = StreamSpec::new(nats.stream_name(), [format!("{}.>", nats.prefix())]);
    let (js_a, js_b) = (nats.jetstream(), nats.jetstream());
    let (a, b) = tokio::join!(ensure_stream(&js_a, &spec), ensure_stream(&js_b, &spec));
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a.created, b.created);
    assert_eq!(a.config.subjects, spec.subjects);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subjects_taken_by_another_stream_are_a_permanent_error() {
    let nats = TestNats::new().await;
    let spec = StreamSpec::new(format!("{}_OTHER", nats.stream_name()), [nats.subject("x")]);
    let error = ensure_stream(&nats.jetstream(), &spec).await.unwrap_err();
    assert!(matches!(error, Error::Stream { .. }), "{error}");
    assert!(!error.is_transient(), "{error}");
    assert!(error.to_string().contains("overlap"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_subject_list_is_a_config_error() {
    let nats = TestNats::new().await;
    let spec = StreamSpec::new(nats.stream_name(), Vec::<String>::new());
    let error = ensure_stream(&nats.jetstream(), &spec).await.unwrap_err();
    assert!(matches!(error, Error::Config(_)), "{error}");
}
