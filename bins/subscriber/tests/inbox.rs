//! `subscriber --inbox` against real NATS and PostgreSQL: every message's effect is committed
//! once, however often JetStream delivers it. Each test has its own stream and schema.

mod common;

use outbox_testkit::{TestDatabase, TestNats};
use uuid::Uuid;

use common::{Finished, args, free_port, on, publish, run, run_until_timeout, run_with_env, spawn};

/// The flags that point the subscriber at `nats`' stream and at an inbox in `db`'s schema.
fn inbox_args(nats: &TestNats, db: &TestDatabase) -> Vec<String> {
    let mut all = on(nats);
    all.extend(
        [
            "--inbox",
            "--database-url",
            db.url(),
            "--inbox-schema",
            db.schema(),
        ]
        .map(str::to_owned),
    );
    all
}

/// Publishes `per_key` messages for each of `keys`, interleaved, with UUID ids and `seq` 1, 2, …
/// per key; returns how many.
async fn publish_orders(nats: &TestNats, keys: &[&str], per_key: u64) -> u64 {
    let js = nats.jetstream();
    for seq in 1..=per_key {
        for key in keys {
            let id = Uuid::now_v7().to_string();
            publish(&js, nats.subject("created"), Some(&id), Some(key), seq).await;
        }
    }
    per_key * keys.len() as u64
}

/// `(key, messages, last_seq)` rows of the effect table, by key.
async fn effects(db: &TestDatabase) -> Vec<(String, i64, Option<i64>)> {
    let client = db.connect().await;
    client
        .query(
            &format!(
                "SELECT key, messages, last_seq FROM \"{}\".key_counts ORDER BY key",
                db.schema()
            ),
            &[],
        )
        .await
        .expect("effect table")
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect()
}

async fn inbox_records(db: &TestDatabase) -> i64 {
    db.connect()
        .await
        .query_one(
            &format!("SELECT count(*) FROM \"{}\".inbox", db.schema()),
            &[],
        )
        .await
        .expect("inbox table")
        .get(0)
}

/// The inbox counts of a run's JSON summary: (applied, skipped, rejected).
fn counts(done: &Finished) -> (u64, u64, u64) {
    let json = done.json();
    let inbox = &json["inbox"];
    let n = |name: &str| {
        inbox[name]
            .as_u64()
            .unwrap_or_else(|| panic!("no inbox.{name}: {done:#?}"))
    };
    (n("applied"), n("skipped"), n("rejected"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_delivery_of_every_message_is_skipped_and_each_is_applied_once() {
    let nats = TestNats::new().await;
    let db = TestDatabase::new().await;
    let n = publish_orders(&nats, &["alice", "bob", "carol"], 4).await;
    let expect = n.to_string();
    let base = inbox_args(&nats, &db);

    let first = run(&args(
        &base,
        &["--expect", &expect, "--timeout", "30", "--json"],
    ))
    .await;
    assert_eq!(first.code, Some(0), "{first:#?}");
    assert_eq!(counts(&first), (n, 0, 0), "{first:#?}");
    let applied_once = vec![
        ("alice".to_owned(), 4, Some(4)),
        ("bob".to_owned(), 4, Some(4)),
        ("carol".to_owned(), 4, Some(4)),
    ];
    assert_eq!(effects(&db).await, applied_once);
    assert_eq!(inbox_records(&db).await, 12);

    // A new consumer from the stream's start delivers every message a second time; this run
    // enables the inbox through the environment instead of the flag.
    let without_flag: Vec<&str> = args(&base, &["--expect", &expect, "--timeout", "30", "--json"])
        .into_iter()
        .filter(|a| *a != "--inbox")
        .collect();
    let second = run_with_env(&without_flag, &[("SUBSCRIBER_INBOX", "1")]).await;
    assert_eq!(second.code, Some(0), "{second:#?}");
    assert_eq!(counts(&second), (0, n, 0), "{second:#?}");
    let lines = second.messages();
    assert_eq!(lines.len(), 12, "{second:#?}");
    assert!(
        lines
            .iter()
            .all(|l| l.ends_with("[ALREADY APPLIED: skipped]")),
        "{second:#?}"
    );
    assert!(
        second.stderr_text().contains("redelivered, skipped"),
        "{second:#?}"
    );
    let human = &second.stdout[second.stdout.len() - 2];
    assert!(
        human.contains("inbox_applied=0 inbox_skipped=12 inbox_rejected=0"),
        "{human}"
    );
    // Nothing was applied twice.
    assert_eq!(effects(&db).await, applied_once);
    assert_eq!(inbox_records(&db).await, 12);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_subscribers_at_once_apply_each_message_once_between_them() {
    let nats = TestNats::new().await;
    let db = TestDatabase::new().await;
    let n = publish_orders(&nats, &["dave", "erin"], 25).await;
    let expect = n.to_string();
    let base = inbox_args(&nats, &db);
    let argv = args(
        &base,
        &["--quiet", "--expect", &expect, "--timeout", "40", "--json"],
    );
    // Both read the whole stream, so both receive every message, at about the same time.
    let one = spawn(&argv);
    let two = spawn(&argv);
    let (one, two) = tokio::join!(one.finish(), two.finish());

    assert_eq!(one.code, Some(0), "{one:#?}");
    assert_eq!(two.code, Some(0), "{two:#?}");
    let (a1, s1, r1) = counts(&one);
    let (a2, s2, r2) = counts(&two);
    assert_eq!(a1 + a2, n, "applied once between them: {one:#?} {two:#?}");
    assert_eq!(s1 + s2, n, "and skipped by the other");
    assert_eq!(r1 + r2, 0);
    assert_eq!(
        effects(&db).await,
        [
            ("dave".to_owned(), 25, Some(25)),
            ("erin".to_owned(), 25, Some(25)),
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_without_a_uuid_msg_id_is_not_applied() {
    let nats = TestNats::new().await;
    let db = TestDatabase::new().await;
    let js = nats.jetstream();
    publish(&js, nats.subject("created"), Some("m1"), Some("frank"), 1).await;
    let id = Uuid::now_v7().to_string();
    publish(&js, nats.subject("created"), Some(&id), Some("frank"), 2).await;
    let base = inbox_args(&nats, &db);
    let done = run(&args(
        &base,
        &["--expect", "2", "--timeout", "30", "--json"],
    ))
    .await;

    assert_eq!(done.code, Some(0), "{done:#?}");
    assert_eq!(counts(&done), (1, 0, 1), "{done:#?}");
    assert!(done.messages()[0].ends_with("[NOT APPLIED: no UUID msg id]"));
    assert!(
        done.stderr_text().contains("msg id m1"),
        "the log names the message: {done:#?}"
    );
    assert_eq!(effects(&db).await, [("frank".to_owned(), 1, Some(2))]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_in_the_way_fails_the_run_with_exit_1() {
    let nats = TestNats::new().await;
    let db = TestDatabase::new().await;
    db.connect()
        .await
        .batch_execute(&format!(
            "CREATE SCHEMA \"{s}\"; CREATE TABLE \"{s}\".inbox (nothing int)",
            s = db.schema()
        ))
        .await
        .expect("a foreign table");
    publish_orders(&nats, &["gina"], 1).await;
    let base = inbox_args(&nats, &db);
    let done = run(&args(
        &base,
        &["--expect", "1", "--timeout", "30", "--json"],
    ))
    .await;

    assert_eq!(done.code, Some(1), "{done:#?}");
    assert_eq!(done.json()["outcome"], "failed", "{done:#?}");
    assert!(
        done.stderr_text().contains("cannot prepare the inbox"),
        "{done:#?}"
    );
    assert!(
        done.messages().is_empty(),
        "nothing was consumed: {done:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_database_is_retried_until_the_timeout() {
    let nats = TestNats::new().await;
    let url = format!("postgres://someone:s3cret@127.0.0.1:{}/test", free_port());
    let done = run_until_timeout(
        &[
            "--nats-url",
            nats.url(),
            "--stream",
            nats.stream_name(),
            "--inbox",
            "--database-url",
            &url,
        ],
        "cannot prepare the inbox",
    )
    .await;

    let stderr = done.stderr_text();
    assert!(
        stderr.contains("postgres://someone:***@127.0.0.1:"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("s3cret"),
        "the password is never shown: {stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_database_url_matters_only_with_the_inbox() {
    let nats = TestNats::new().await;
    publish_orders(&nats, &["hal"], 1).await;
    let subject = format!("{}.>", nats.prefix());
    let base = [
        "--nats-url",
        nats.url(),
        "--stream",
        nats.stream_name(),
        "--subject",
        &subject,
        "--expect",
        "1",
        "--timeout",
        "10",
    ];
    let bad = [("DATABASE_URL", "mysql://root:s3cret@db/app")];

    let checking_only = run_with_env(&base, &bad).await;
    assert_eq!(checking_only.code, Some(0), "{checking_only:#?}");

    let with_inbox: Vec<&str> = base.iter().copied().chain(["--inbox"]).collect();
    let done = run_with_env(&with_inbox, &bad).await;
    assert_eq!(done.code, Some(2), "{done:#?}");
    assert_eq!(done.stderr.len(), 1, "{done:#?}");
    assert!(
        done.stderr[0].contains("invalid --database-url"),
        "{done:#?}"
    );
    assert!(!done.stderr[0].contains("s3cret"), "{done:#?}");
    assert!(done.stdout.is_empty(), "{done:#?}");
}
