//! The built `subscriber` binary against real NATS: each test gets its own stream (TestNats) or
//! its own server (NatsServer), so tests run in parallel.

mod common;

use std::time::Duration;

use async_nats::jetstream::stream;
use futures::StreamExt;
use outbox_testkit::{NatsServer, TestNats, create_stream};

use common::{Pipe, args, free_port, on, publish, run, run_until_timeout, spawn};

const WAIT: Duration = Duration::from_secs(20);

// ---- checking what is in the stream ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_order_messages_meet_expect_and_exit_0() {
    let nats = TestNats::new().await;
    let js = nats.jetstream();
    let subject = nats.subject("created");
    for (id, key, seq) in [
        ("m1", "alice", 1),
        ("m2", "bob", 1),
        ("m3", "alice", 2),
        ("m4", "alice", 3),
        ("m5", "bob", 2),
        ("m6", "bob", 3),
    ] {
        publish(&js, subject.clone(), Some(id), Some(key), seq).await;
    }
    // No key anywhere: counted, not order-checked.
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Msg-Id", "m7");
    js.publish_with_headers(subject.clone(), headers, "plain text".into())
        .await
        .expect("sent")
        .await
        .expect("acked");

    let base = on(&nats);
    let done = run(&args(
        &base,
        &["--expect", "7", "--timeout", "10", "--json"],
    ))
    .await;

    assert_eq!(done.code, Some(0), "{done:#?}");
    let json = done.json();
    assert_eq!(json["outcome"], "complete");
    assert_eq!(json["received"], 7);
    assert_eq!(json["distinct"], 7);
    assert_eq!(json["duplicates"], 0);
    assert_eq!(json["violations"], 0);
    assert_eq!(json["gaps"], 0);
    assert_eq!(json["keys"], 2);
    assert_eq!(json["unchecked"], 1);
    let lines = done.messages();
    assert_eq!(lines.len(), 7, "{done:#?}");
    assert!(lines[0].contains("msg_id=m1") && lines[0].contains("key=alice"));
    assert!(
        lines[0].contains(r#""seq":1"#),
        "payload is printed: {}",
        lines[0]
    );
    assert!(lines[6].contains("payload=plain text"));
    let human = &done.stdout[done.stdout.len() - 2];
    assert!(
        human.starts_with(
            "summary: outcome=complete received=7 distinct=7 duplicates=0 redelivered=0 violations=0"
        ),
        "{human}"
    );

    // --quiet keeps only the summary (and the JSON line).
    let quiet = run(&args(
        &base,
        &["--expect", "7", "--timeout", "10", "--quiet", "--json"],
    ))
    .await;
    assert_eq!(quiet.code, Some(0), "{quiet:#?}");
    assert_eq!(quiet.stdout.len(), 2, "{quiet:#?}");
    assert_eq!(quiet.json()["distinct"], 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lower_seq_after_a_higher_one_exits_1() {
    let nats = TestNats::new().await;
    let js = nats.jetstream();
    for (id, seq) in [("m1", 1), ("m2", 3), ("m3", 2), ("m4", 4)] {
        publish(&js, nats.subject("created"), Some(id), Some("carol"), seq).await;
    }
    let base = on(&nats);
    let done = run(&args(
        &base,
        &["--expect", "4", "--timeout", "10", "--json"],
    ))
    .await;

    assert_eq!(done.code, Some(1), "{done:#?}");
    let json = done.json();
    assert_eq!(json["outcome"], "violation");
    assert_eq!(json["violations"], 1);
    // It stops at the violation, before the 4th message.
    assert_eq!(json["distinct"], 3);
    assert!(
        done.stderr_text()
            .contains("order violation: key carol seq 2"),
        "{done:#?}"
    );
    assert!(done.messages()[2].contains("OUT OF ORDER"), "{done:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_msg_ids_a_repeated_key_and_seq_is_a_violation() {
    let nats = TestNats::new().await;
    let js = nats.jetstream();
    // No Nats-Msg-Id, so JetStream cannot deduplicate: the stream holds both copies.
    publish(&js, nats.subject("created"), None, Some("dave"), 1).await;
    publish(&js, nats.subject("created"), None, Some("dave"), 1).await;
    let base = on(&nats);
    let done = run(&args(
        &base,
        &["--expect", "2", "--timeout", "10", "--json"],
    ))
    .await;

    assert_eq!(done.code, Some(1), "{done:#?}");
    let json = done.json();
    assert_eq!(
        (json["distinct"].as_u64(), json["duplicates"].as_u64()),
        (Some(2), Some(0))
    );
    assert_eq!(json["violations"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_republished_msg_id_is_a_duplicate_not_a_violation() {
    let nats = TestNats::new().await;
    let js = nats.jetstream();
    // Shrink the dedup window so the same Nats-Msg-Id can be stored twice, as after a relay
    // crash longer than the window.
    let mut config = js
        .get_stream(nats.stream_name())
        .await
        .expect("stream")
        .cached_info()
        .config
        .clone();
    config.duplicate_window = Duration::from_millis(100);
    js.update_stream(&config).await.expect("update stream");

    publish(&js, nats.subject("created"), Some("m1"), Some("erin"), 1).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while publish(&js, nats.subject("created"), Some("m1"), Some("erin"), 1)
        .await
        .duplicate
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "dedup window never passed"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    publish(&js, nats.subject("created"), Some("m2"), Some("erin"), 2).await;

    let base = on(&nats);
    let done = run(&args(
        &base,
        &["--expect", "2", "--timeout", "10", "--json"],
    ))
    .await;

    assert_eq!(done.code, Some(0), "{done:#?}");
    let json = done.json();
    assert_eq!(json["received"], 3);
    assert_eq!(json["distinct"], 2);
    assert_eq!(json["duplicates"], 1);
    assert_eq!(json["violations"], 0);
    assert!(done.messages()[1].ends_with("[DUPLICATE]"), "{done:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_subject_filter_selects_messages() {
    let nats = TestNats::new().await;
    let js = nats.jetstream();
    publish(&js, nats.subject("created"), Some("c1"), Some("k"), 1).await;
    publish(&js, nats.subject("deleted"), Some("d1"), Some("k"), 2).await;
    publish(&js, nats.subject("created"), Some("c2"), Some("k"), 3).await;
    let created = nats.subject("created");
    let done = run(&[
        "--nats-url",
        nats.url(),
        "--stream",
        nats.stream_name(),
        "--subject",
        &created,
        "--expect",
        "2",
        "--timeout",
        "10",
    ])
    .await;

    assert_eq!(done.code, Some(0), "{done:#?}");
    let text = done.messages().join("\n");
    assert!(
        text.contains("msg_id=c1") && text.contains("msg_id=c2"),
        "{text}"
    );
    assert!(!text.contains("msg_id=d1"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subject_outside_the_stream_is_rejected_with_exit_2() {
    let nats = TestNats::new().await;
    let elsewhere = format!("not{}.>", nats.prefix());
    let done = run(&[
        "--nats-url",
        nats.url(),
        "--stream",
        nats.stream_name(),
        "--subject",
        &elsewhere,
        "--expect",
        "1",
        "--timeout",
        "10",
    ])
    .await;
    assert_eq!(done.code, Some(2), "{done:#?}");
    assert!(done.stderr_text().contains("ERROR"), "{done:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_reads_only_messages_stored_after_it_started() {
    let nats = TestNats::new().await;
    let js = nats.jetstream();
    publish(&js, nats.subject("created"), Some("old1"), Some("k"), 1).await;
    publish(&js, nats.subject("created"), Some("old2"), Some("k"), 2).await;
    let base = on(&nats);
    let mut sub = spawn(&args(
        &base,
        &["--new", "--expect", "1", "--timeout", "20", "--json"],
    ));
    sub.wait_for(Pipe::Stderr, "reading stream", WAIT).await;
    publish(&js, nats.subject("created"), Some("new3"), Some("k"), 3).await;
    let done = sub.finish().await;

    assert_eq!(done.code, Some(0), "{done:#?}");
    let text = done.messages().join("\n");
    assert!(text.contains("msg_id=new3"), "{text}");
    assert!(!text.contains("old"), "{text}");
    let json = done.json();
    assert_eq!(json["received"], 1);
    // Reading from "now", seq 3 is not a gap.
    assert_eq!(json["gaps"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_durable_consumer_continues_where_the_last_run_stopped() {
    let nats = TestNats::new().await;
    let js = nats.jetstream();
    for (id, seq) in [("m1", 1), ("m2", 2), ("m3", 3)] {
        publish(&js, nats.subject("created"), Some(id), Some("k"), seq).await;
    }
    let base = on(&nats);
    let first = run(&args(
        &base,
        &["--durable", "audit", "--expect", "2", "--timeout", "10"],
    ))
    .await;
    assert_eq!(first.code, Some(0), "{first:#?}");
    assert_eq!(first.messages().len(), 2, "{first:#?}");

    let second = run(&args(
        &base,
        &[
            "--durable",
            "audit",
            "--expect",
            "1",
            "--timeout",
            "10",
            "--json",
        ],
    ))
    .await;
    assert_eq!(second.code, Some(0), "{second:#?}");
    let text = second.messages().join("\n");
    assert!(
        text.contains("msg_id=m3") && !text.contains("msg_id=m1"),
        "{text}"
    );
    // The first run pulled only what it needed, so nothing waited for an ack timeout.
    let elapsed = second.json()["elapsed_ms"].as_u64().expect("elapsed_ms");
    assert!(elapsed < 5_000, "second run took {elapsed} ms");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_ephemeral_consumer_is_recreated_where_it_stopped() {
    let nats = TestNats::new().await;
    let js = nats.jetstream();
    let base = on(&nats);
    let mut sub = spawn(&args(
        &base,
        &["--expect", "4", "--timeout", "30", "--json"],
    ));
    sub.wait_for(Pipe::Stderr, "reading stream", WAIT).await;
    publish(&js, nats.subject("created"), Some("m1"), Some("k"), 1).await;
    publish(&js, nats.subject("created"), Some("m2"), Some("k"), 2).await;
    sub.wait_for_count("received message:", 2, WAIT).await;

    // Pull the consumer from under the subscriber, as a server losing it would.
    let stream = js.get_stream(nats.stream_name()).await.expect("stream");
    let names: Vec<String> = stream
        .consumer_names()
        .map(|n| n.expect("consumer name"))
        .collect()
        .await;
    assert_eq!(names.len(), 1, "{names:?}");
    stream
        .delete_consumer(&names[0])
        .await
        .expect("delete consumer");
    publish(&js, nats.subject("created"), Some("m3"), Some("k"), 3).await;
    publish(&js, nats.subject("created"), Some("m4"), Some("k"), 4).await;
    let done = sub.finish().await;

    assert_eq!(done.code, Some(0), "{done:#?}");
    let json = done.json();
    assert_eq!(json["distinct"], 4, "{done:#?}");
    // Recreated at stream sequence 3: nothing seen twice.
    assert_eq!(json["received"], 4, "{done:#?}");
    assert!(
        done.stderr_text().contains("from stream sequence 3"),
        "{done:#?}"
    );
}

// ---- signals ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_prints_the_summary_and_exits_0_when_all_was_in_order() {
    let nats = TestNats::new().await;
    let js = nats.jetstream();
    publish(&js, nats.subject("created"), Some("m1"), Some("k"), 1).await;
    let base = on(&nats);
    let mut sub = spawn(&args(&base, &["--json"]));
    sub.wait_for(Pipe::Stdout, "msg_id=m1", WAIT).await;
    sub.signal("INT").await;
    let done = sub.finish().await;

    assert_eq!(done.code, Some(0), "{done:#?}");
    let json = done.json();
    assert_eq!(json["outcome"], "interrupted");
    assert_eq!(json["distinct"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_before_expect_is_met_exits_1() {
    let nats = TestNats::new().await;
    let base = on(&nats);
    let mut sub = spawn(&args(
        &base,
        &["--expect", "5", "--timeout", "30", "--json"],
    ));
    sub.wait_for(Pipe::Stderr, "reading stream", WAIT).await;
    sub.signal("TERM").await;
    let done = sub.finish().await;

    assert_eq!(done.code, Some(1), "{done:#?}");
    assert_eq!(done.json()["outcome"], "interrupted");
}

// ---- bad input and unreachable services ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_url_exits_2_with_one_line() {
    for url in [
        "http://127.0.0.1:4222",
        "nats://host:notaport",
        "nats://",
        "",
    ] {
        let done = run(&["--nats-url", url, "--expect", "1"]).await;
        assert_eq!(done.code, Some(2), "{url:?}: {done:#?}");
        assert_eq!(done.stderr.len(), 1, "{url:?}: {done:#?}");
        assert!(done.stderr[0].contains("--nats-url"), "{url:?}: {done:#?}");
        assert!(done.stdout.is_empty(), "{url:?}: {done:#?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_flags_and_bad_numbers_exit_2_with_one_line() {
    for (argv, names) in [
        (&["--bogus"][..], "--bogus"),
        (&["--expect", "ten"], "--expect"),
        (&["--timeout", "0"], "--timeout"),
        (&["--stream", "has.dot"], "--stream"),
    ] {
        let done = run(argv).await;
        assert_eq!(done.code, Some(2), "{argv:?}: {done:#?}");
        assert_eq!(done.stderr.len(), 1, "{argv:?}: {done:#?}");
        assert!(done.stderr[0].contains(names), "{argv:?}: {done:#?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_server_is_retried_until_the_timeout_then_exits_1() {
    let url = format!("nats://127.0.0.1:{}", free_port());
    let started = std::time::Instant::now();
    let done = run_until_timeout(&["--nats-url", &url], "cannot reach NATS").await;

    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
    assert!(!done.stderr_text().contains("panicked"), "{done:#?}");
    assert_eq!(done.json()["attached"], false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_stream_is_waited_for() {
    let nats = TestNats::new().await;
    // A stream of our own that does not exist yet.
    let name = format!("{}_LATE", nats.stream_name());
    let prefix = format!("{}late", nats.prefix());
    let filter = format!("{prefix}.>");
    let mut sub = spawn(&[
        "--nats-url",
        nats.url(),
        "--stream",
        &name,
        "--subject",
        &filter,
        "--expect",
        "2",
        "--timeout",
        "30",
    ]);
    sub.wait_for(Pipe::Stderr, "not found", WAIT).await;

    let js = nats.jetstream();
    create_stream(
        &js,
        stream::Config {
            name: name.clone(),
            subjects: vec![filter.clone()],
            ..Default::default()
        },
    )
    .await
    .expect("create the late stream");
    publish(&js, format!("{prefix}.created"), Some("m1"), Some("k"), 1).await;
    publish(&js, format!("{prefix}.created"), Some("m2"), Some("k"), 2).await;
    let done = sub.finish().await;
    let _ = js.delete_stream(&name).await;

    assert_eq!(done.code, Some(0), "{done:#?}");
    assert_eq!(done.messages().len(), 2, "{done:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_restart_is_survived_without_loss_or_duplicates() {
    let mut server = NatsServer::start().await;
    let url = server.url();
    let nats = TestNats::on(&url).await;
    let js = nats.jetstream();
    let base = on(&nats);
    let mut sub = spawn(&args(
        &base,
        &["--expect", "4", "--timeout", "50", "--json"],
    ));
    sub.wait_for(Pipe::Stderr, "reading stream", WAIT).await;
    publish(&js, nats.subject("created"), Some("m1"), Some("k"), 1).await;
    publish(&js, nats.subject("created"), Some("m2"), Some("k"), 2).await;
    sub.wait_for_count("received message:", 2, WAIT).await;

    server.kill().await;
    sub.wait_for(Pipe::Stderr, "NATS connection lost", WAIT)
        .await;
    server.restart().await;
    // The test's own client reconnects too; publish once JetStream answers again.
    let deadline = tokio::time::Instant::now() + WAIT;
    for (id, seq) in [("m3", 3), ("m4", 4)] {
        loop {
            let sent = async {
                let mut headers = async_nats::HeaderMap::new();
                headers.insert("Nats-Msg-Id", id);
                headers.insert("Outbox-Key", "k");
                let payload = serde_json::json!({"customer_id": "k", "seq": seq}).to_string();
                js.publish_with_headers(nats.subject("created"), headers, payload.into())
                    .await?
                    .await
                    .map_err(async_nats::Error::from)
            };
            match sent.await {
                Ok(_) => break,
                Err(e) => {
                    assert!(
                        tokio::time::Instant::now() < deadline,
                        "publish after restart: {e}"
                    );
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
    let done = sub.finish().await;

    assert_eq!(done.code, Some(0), "{done:#?}");
    let json = done.json();
    assert_eq!(json["distinct"], 4, "{done:#?}");
    assert_eq!(json["violations"], 0, "{done:#?}");
    // The consumer may deliver again what it sent just before the crash: that is a redelivery
    // of the same stream message, not a duplicate in the stream.
    assert_eq!(json["duplicates"], 0, "{done:#?}");
    drop(nats);
}
