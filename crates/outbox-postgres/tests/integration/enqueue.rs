use std::time::{Duration, Instant};

use outbox_core::{ClaimRequest, Message, Store};
use outbox_postgres::WakeUp;
use outbox_testkit::assert_nothing_to_claim;

use crate::common::{Fixture, assert_same, message, within};

#[tokio::test]
async fn committed_messages_are_visible_and_rolled_back_ones_never() {
    let mut f = Fixture::new().await;
    let committed = message(Some("k"), 1);
    let rolled_back = message(Some("k"), 2);

    let tx = f.client.transaction().await.unwrap();
    let kept = f.outbox.enqueue(&tx, &committed).await.unwrap();
    tx.commit().await.unwrap();
    let tx = f.client.transaction().await.unwrap();
    let lost = f.outbox.enqueue(&tx, &rolled_back).await.unwrap();
    tx.rollback().await.unwrap();
    assert!(lost > kept);

    assert_eq!(f.pending().await, [kept]);
    let claimed = f.store().claim(ClaimRequest::new(10, &[])).await.unwrap();
    assert_eq!(claimed.len(), 1);
    assert_same(&claimed[0].message, &committed);
}

#[tokio::test]
async fn an_uncommitted_message_is_invisible_until_commit() {
    let mut f = Fixture::new().await;
    let store = f.store();
    let tx = f.client.transaction().await.unwrap();
    let seq = f.outbox.enqueue(&tx, &message(None, 1)).await.unwrap();
    assert_nothing_to_claim(&store).await;
    tx.commit().await.unwrap();
    let claimed = store.claim(ClaimRequest::new(10, &[])).await.unwrap();
    assert_eq!(claimed.iter().map(|c| c.seq).collect::<Vec<_>>(), [seq]);
}

#[tokio::test]
async fn a_batch_keeps_its_order_and_every_field() {
    let mut f = Fixture::new().await;
    let messages: Vec<Message> = (0..200)
        .map(|n| {
            let builder = Message::builder(format!("batch.m{n}"))
                .payload(vec![u8::try_from(n % 256).unwrap(); n % 7])
                .header("X-N", n.to_string());
            if n % 3 == 0 {
                builder
            } else {
                builder.key(format!("k{}", n % 5))
            }
            .build()
            .unwrap()
        })
        .collect();
    let tx = f.client.transaction().await.unwrap();
    let seqs = f.outbox.enqueue_batch(&tx, &messages).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(seqs.len(), messages.len());
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    assert!(
        f.outbox
            .enqueue_batch(&f.client, &[])
            .await
            .unwrap()
            .is_empty()
    );

    let claimed = f.store().claim(ClaimRequest::new(1000, &[])).await.unwrap();
    assert_eq!(claimed.iter().map(|c| c.seq).collect::<Vec<_>>(), seqs);
    for (got, sent) in claimed.iter().zip(&messages) {
        assert_same(&got.message, sent);
    }
}

#[tokio::test]
async fn a_batch_with_a_duplicate_id_fails_as_a_whole() {
    let f = Fixture::new().await;
    let m = message(None, 1);
    let error = f
        .outbox
        .enqueue_batch(&f.client, &[m.clone(), message(None, 2), m])
        .await
        .unwrap_err();
    assert!(!error.is_transient(), "{error}");
    assert_eq!(
        error.code(),
        Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION)
    );
    assert!(f.pending().await.is_empty());
}

#[tokio::test]
async fn deadpool_clients_and_transactions_are_accepted() {
    let f = Fixture::new().await;
    let manager = deadpool_postgres::Manager::new(f.db.pg_config(), tokio_postgres::NoTls);
    let pool = deadpool_postgres::Pool::builder(manager)
        .max_size(2)
        .build()
        .unwrap();

    let mut client = pool.get().await.unwrap();
    let alone = f.outbox.enqueue(&client, &message(None, 1)).await.unwrap();
    let tx = client.transaction().await.unwrap();
    let batch = f
        .outbox
        .enqueue_batch(&tx, &[message(Some("a"), 2), message(Some("a"), 3)])
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let tx = client.transaction().await.unwrap();
    f.outbox.enqueue(&tx, &message(None, 4)).await.unwrap();
    tx.rollback().await.unwrap();

    assert_eq!(f.pending().await, [alone, batch[0], batch[1]]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_mode_wakes_the_relay_on_commit_only() {
    let mut f = Fixture::with(|b| b.wake_up(WakeUp::Listen)).await;
    let store = f.store();
    // The first wait starts the listener and returns once it listens (it wakes on connect).
    within(
        Duration::from_secs(10),
        "listener start",
        store.wait_for_work(Duration::from_secs(60)),
    )
    .await;

    // A rolled-back enqueue sends nothing: the wait runs to its timeout.
    let tx = f.client.transaction().await.unwrap();
    f.outbox.enqueue(&tx, &message(None, 1)).await.unwrap();
    tx.rollback().await.unwrap();
    let started = Instant::now();
    store.wait_for_work(Duration::from_millis(400)).await;
    assert!(
        started.elapsed() >= Duration::from_millis(350),
        "woken by a rollback"
    );

    // A commit wakes a waiting relay long before its timeout.
    let waiter = tokio::spawn({
        let store = store.clone();
        async move {
            let started = Instant::now();
            store.wait_for_work(Duration::from_secs(30)).await;
            started.elapsed()
        }
    });
    let tx = f.client.transaction().await.unwrap();
    f.outbox.enqueue(&tx, &message(None, 2)).await.unwrap();
    tx.commit().await.unwrap();
    let waited = within(Duration::from_secs(10), "wake-up", waiter)
        .await
        .unwrap();
    assert!(waited < Duration::from_secs(10), "waited {waited:?}");
}

#[tokio::test]
async fn poll_mode_waits_for_the_timeout() {
    let f = Fixture::new().await;
    let store = f.store();
    f.outbox
        .enqueue(&f.client, &message(None, 1))
        .await
        .unwrap();
    let started = Instant::now();
    store.wait_for_work(Duration::from_millis(100)).await;
    assert!(started.elapsed() >= Duration::from_millis(100));
}

/// A message that `Message::builder` would refuse, made the way a caller could still make one:
/// by deserializing it.
fn forged(message: &Message, from: &str, to: &str) -> Message {
    let text = serde_json::to_string(message).unwrap();
    assert!(text.contains(from), "{text}");
    serde_json::from_str(&text.replace(from, to)).unwrap()
}

#[tokio::test]
async fn bad_headers_and_oversized_messages_are_refused_and_nothing_is_written() {
    let mut f = Fixture::with(|b| b.max_payload(4096)).await;
    let template = Message::builder("test.subject")
        .key("k")
        .header("X", "v")
        .build()
        .unwrap();
    let empty = Message::builder("test.subject").build().unwrap();
    let overhead = empty.wire_size();
    let refused = [
        forged(&template, r#""X":"v""#, r#""X":"v\r\nNats-Rollup: all""#),
        forged(&template, r#""X":"v""#, r#""Nats-Expected-Stream":"OTHER""#),
        forged(&template, r#""X":"v""#, r#""a b":"v""#),
        forged(&template, r#""key":"k""#, r#""key":"k\n""#),
        forged(
            &template,
            r#""subject":"test.subject""#,
            r#""subject":"test.>""#,
        ),
        // One byte over: payload plus the id header's block.
        Message::builder("test.subject")
            .payload(vec![7_u8; 4096 - overhead + 1])
            .build()
            .unwrap(),
        // Under the limit alone, over it with its headers.
        Message::builder("test.subject")
            .payload(vec![7_u8; 4000])
            .header("X-Big", "h".repeat(200))
            .build()
            .unwrap(),
    ];

    let tx = f.client.transaction().await.unwrap();
    for message in &refused {
        let error = f.outbox.enqueue(&tx, message).await.unwrap_err();
        assert!(
            matches!(error, outbox_postgres::Error::InvalidMessage(_)),
            "{error}"
        );
        assert!(!error.is_transient());
        assert!(
            error.to_string().contains(&message.id().to_string()),
            "{error}"
        );
        let core = outbox_core::Error::from(error);
        assert!(
            matches!(core, outbox_core::Error::InvalidMessage(_)),
            "{core}"
        );
    }
    let error = f
        .outbox
        .enqueue_batch(&tx, &[template.clone(), refused[0].clone()])
        .await
        .unwrap_err();
    assert!(matches!(error, outbox_postgres::Error::InvalidMessage(_)));
    // Refused before anything was sent: the caller's transaction is still usable.
    let exactly_at_limit = Message::builder("test.subject")
        .payload(vec![7_u8; 4096 - overhead])
        .build()
        .unwrap();
    assert_eq!(exactly_at_limit.wire_size(), 4096);
    let seq = f.outbox.enqueue(&tx, &exactly_at_limit).await.unwrap();
    tx.commit().await.unwrap();

    assert_eq!(f.pending().await, [seq]);
    let claimed = f.store().claim(ClaimRequest::new(10, &[])).await.unwrap();
    assert_same(&claimed[0].message, &exactly_at_limit);
}

#[tokio::test]
async fn the_default_limit_is_one_mebibyte() {
    let f = Fixture::new().await;
    assert_eq!(f.outbox.config().max_payload, 1024 * 1024);
    let m = Message::builder("test.subject")
        .payload(vec![0_u8; 1024 * 1024])
        .build()
        .unwrap();
    let error = f.outbox.enqueue(&f.client, &m).await.unwrap_err();
    assert!(error.to_string().contains("max_payload"), "{error}");
    assert!(f.pending().await.is_empty());
}

/// Headers at the edges of what the rules allow reach a JetStream consumer byte for byte: a
/// message that passed the checks cannot fail at publish because of its headers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odd_but_valid_headers_and_keys_arrive_as_sent() {
    let mut f = Fixture::new().await;
    let nats = outbox_testkit::TestNats::new().await;
    let message = Message::builder(nats.subject("odd.Ünïcode-subject_1"))
        .key("customer 42\twith tab, ünïcode and: colon")
        .header("!#$%&'*+-.^_`|~", "punctuation name")
        .header("X-Empty", "")
        .header("X-Tab", "a\tb")
        .header("X-Colon", "a: b: c")
        .header("X-Utf8", "ünïcode ✓ 🦀")
        .header("x-lower", "case kept")
        .header("X-LOWER", "distinct from x-lower")
        .header("X-Long", "v".repeat(8000))
        .payload(vec![0_u8, 255, 13, 10])
        .build()
        .unwrap();
    let tx = f.client.transaction().await.unwrap();
    f.outbox.enqueue(&tx, &message).await.unwrap();
    tx.commit().await.unwrap();

    let store = f.store();
    let relay = outbox_testkit::RelayTask::start(
        store.clone(),
        outbox_nats::JetStreamPublisher::new(nats.client()),
        store.elector(),
        outbox_core::RelayConfig::default(),
    );
    let got = nats.wait_for_stream(1, Duration::from_secs(30)).await;
    f.wait_until_empty(Duration::from_secs(30)).await;
    relay.stop().await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0], outbox_testkit::Received::from_message(&message));
    let dead: i64 = f
        .client
        .query_one(
            &format!("SELECT count(*) FROM {}.dead_letters", f.db.schema()),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(dead, 0);
}
