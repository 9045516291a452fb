//! The inbox: a message's effect, applied in the transaction that records its id, commits once
//! however often (and however concurrently) the message is delivered.

use std::sync::Arc;
use std::time::Duration;

use outbox_postgres::{Error, Handled, InboxConfig, PgInbox, Processed};
use outbox_testkit::TestDatabase;
use tokio::sync::Barrier;
use tokio_postgres::{Client, Transaction};
use uuid::Uuid;

use crate::common::within;

const WAIT: Duration = Duration::from_secs(10);

/// The effect's failure in these tests: the inbox's errors and the driver's become one type.
type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A migrated inbox in a fresh schema, with an effect table `applied (message_id, times)`.
struct Setup {
    db: TestDatabase,
    inbox: PgInbox,
    client: Client,
}

impl Setup {
    async fn new() -> Setup {
        let db = TestDatabase::new().await;
        let inbox = PgInbox::new(InboxConfig {
            schema: db.schema().to_owned(),
            table: "inbox".to_owned(),
        })
        .expect("inbox");
        let client = db.connect().await;
        assert!(inbox.migrate(&client).await.expect("migrate"));
        client
            .batch_execute(&format!(
                "CREATE TABLE {}.applied (message_id uuid PRIMARY KEY, times int NOT NULL)",
                db.schema()
            ))
            .await
            .expect("effect table");
        Setup { db, inbox, client }
    }

    /// The effect: counts one application of `id` (so a second one would show as 2).
    async fn apply(&self, tx: &Transaction<'_>, id: Uuid) -> Result<(), tokio_postgres::Error> {
        tx.execute(
            &format!(
                "INSERT INTO {}.applied VALUES ($1, 1) \
                 ON CONFLICT (message_id) DO UPDATE SET times = applied.times + 1",
                self.db.schema()
            ),
            &[&id],
        )
        .await
        .map(drop)
    }

    /// How often the effect of `id` was committed.
    async fn times(&self, id: Uuid) -> i32 {
        self.client
            .query_opt(
                &format!(
                    "SELECT times FROM {}.applied WHERE message_id = $1",
                    self.db.schema()
                ),
                &[&id],
            )
            .await
            .expect("times")
            .map_or(0, |row| row.get(0))
    }

    /// Processes one delivery of `id` through `handle` on `client`.
    async fn deliver(&self, client: &mut Client, id: Uuid) -> Handled<()> {
        self.inbox
            .handle(client, id, "test.subject", async |tx| {
                self.apply(tx, id).await?;
                Ok::<_, BoxError>(())
            })
            .await
            .expect("handle")
    }
}

#[tokio::test]
async fn a_message_delivered_again_and_again_is_applied_once() {
    let s = Setup::new().await;
    let mut client = s.db.connect().await;
    let id = Uuid::now_v7();
    let other = Uuid::now_v7();

    assert_eq!(s.deliver(&mut client, id).await, Handled::Applied(()));
    for _ in 0..5 {
        assert_eq!(s.deliver(&mut client, id).await, Handled::Duplicate);
    }
    assert_eq!(s.deliver(&mut client, other).await, Handled::Applied(()));
    assert_eq!(s.times(id).await, 1);
    assert_eq!(s.times(other).await, 1);
    assert!(s.inbox.contains(&s.client, id).await.unwrap());
    assert!(!s.inbox.contains(&s.client, Uuid::now_v7()).await.unwrap());

    // The record keeps the subject and when the first delivery was applied.
    let row = s
        .client
        .query_one(
            &format!(
                "SELECT subject, received_at <= now() FROM {}.inbox WHERE message_id = $1",
                s.db.schema()
            ),
            &[&id],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "test.subject");
    assert!(row.get::<_, bool>(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_deliveries_of_the_same_messages_apply_each_once() {
    let s = Arc::new(Setup::new().await);
    let ids: Arc<Vec<Uuid>> = Arc::new((0..30).map(|_| Uuid::now_v7()).collect());
    let consumers = 4;
    let start = Arc::new(Barrier::new(consumers));
    let mut tasks = Vec::new();
    for _ in 0..consumers {
        let (s, ids, start) = (s.clone(), ids.clone(), start.clone());
        let mut client = s.db.connect().await;
        tasks.push(tokio::spawn(async move {
            start.wait().await;
            let mut applied = 0;
            // Every consumer receives every message, in the same order, as after a redelivery
            // storm: they race on each id.
            for &id in ids.iter() {
                if s.deliver(&mut client, id).await == Handled::Applied(()) {
                    applied += 1;
                }
            }
            applied
        }));
    }
    let mut applied = 0;
    for task in tasks {
        applied += task.await.unwrap();
    }
    assert_eq!(
        applied,
        ids.len(),
        "each message applied by exactly one consumer"
    );
    for &id in ids.iter() {
        assert_eq!(s.times(id).await, 1, "message {id}");
    }
}

/// Where a second consumer's record waits while the first consumer's transaction is open, and
/// what it answers when that transaction ends.
async fn second_consumer_while_first_is_open(commit_first: bool) -> Processed {
    let s = Setup::new().await;
    let id = Uuid::now_v7();
    let mut first = s.db.connect().await;
    let second = s.db.connect().await;
    let second_pid: i32 = second
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);

    let tx = first.transaction().await.unwrap();
    assert_eq!(
        s.inbox.process(&tx, id, "test.subject").await.unwrap(),
        Processed::New
    );
    s.apply(&tx, id).await.unwrap();

    let inbox = s.inbox.clone();
    let racing = tokio::spawn(async move {
        let mut second = second;
        let tx = second.transaction().await.unwrap();
        let processed = inbox.process(&tx, id, "test.subject").await.unwrap();
        tx.commit().await.unwrap();
        processed
    });
    // The second record waits on the first transaction's uncommitted row.
    within(WAIT, "the second record waits on a lock", async {
        loop {
            let waiting: Option<String> = s
                .client
                .query_one(
                    "SELECT wait_event_type FROM pg_stat_activity WHERE pid = $1",
                    &[&second_pid],
                )
                .await
                .unwrap()
                .get(0);
            if waiting.as_deref() == Some("Lock") {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(!racing.is_finished());

    if commit_first {
        tx.commit().await.unwrap();
    } else {
        tx.rollback().await.unwrap();
    }
    let processed = within(WAIT, "the second record", racing).await.unwrap();
    let expected_times = i32::from(commit_first);
    assert_eq!(s.times(id).await, expected_times);
    assert!(s.inbox.contains(&s.client, id).await.unwrap());
    processed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_concurrent_duplicate_waits_for_the_first_commit_and_is_skipped() {
    assert_eq!(
        second_consumer_while_first_is_open(true).await,
        Processed::Duplicate
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_concurrent_duplicate_takes_over_when_the_first_rolls_back() {
    assert_eq!(
        second_consumer_while_first_is_open(false).await,
        Processed::New
    );
}

#[tokio::test]
async fn a_failing_effect_rolls_back_its_record_so_the_redelivery_applies_it() {
    let s = Setup::new().await;
    let mut client = s.db.connect().await;
    let id = Uuid::now_v7();

    // The effect writes, then fails: neither its write nor the record survives.
    let failed = s
        .inbox
        .handle(&mut client, id, "test.subject", async |tx| {
            s.apply(tx, id).await?;
            Err::<(), BoxError>("the downstream check failed".into())
        })
        .await;
    assert_eq!(
        failed.unwrap_err().to_string(),
        "the downstream check failed"
    );
    assert_eq!(s.times(id).await, 0);
    assert!(!s.inbox.contains(&s.client, id).await.unwrap());

    // The same with `process`: a transaction dropped without commit takes the record with it.
    {
        let tx = client.transaction().await.unwrap();
        assert_eq!(
            s.inbox.process(&tx, id, "test.subject").await.unwrap(),
            Processed::New
        );
        s.apply(&tx, id).await.unwrap();
    }
    assert_eq!(s.times(id).await, 0);

    // The redelivery is applied, once.
    assert_eq!(s.deliver(&mut client, id).await, Handled::Applied(()));
    assert_eq!(s.deliver(&mut client, id).await, Handled::Duplicate);
    assert_eq!(s.times(id).await, 1);
}

#[tokio::test]
async fn the_effect_returns_its_value_and_inbox_errors_convert() {
    let s = Setup::new().await;
    let mut client = s.db.connect().await;
    let id = Uuid::now_v7();
    let value = s
        .inbox
        .handle(&mut client, id, "test.subject", async |tx| {
            s.apply(tx, id).await?;
            Ok::<_, BoxError>(42)
        })
        .await
        .unwrap();
    assert_eq!(value, Handled::Applied(42));

    // An inbox table that is gone is the inbox's error, returned as the caller's error type.
    s.client
        .batch_execute(&format!("DROP TABLE {}.inbox", s.db.schema()))
        .await
        .unwrap();
    let error: Error = s
        .inbox
        .handle(&mut client, Uuid::now_v7(), "test.subject", async |_tx| {
            Ok::<_, Error>(())
        })
        .await
        .unwrap_err();
    assert!(matches!(error, Error::Query { .. }), "{error}");
    assert!(!error.is_transient());
}

#[tokio::test]
async fn deadpool_clients_and_transactions_are_accepted() {
    let s = Setup::new().await;
    let manager = deadpool_postgres::Manager::new(s.db.pg_config(), tokio_postgres::NoTls);
    let pool = deadpool_postgres::Pool::builder(manager)
        .max_size(1)
        .build()
        .unwrap();
    let mut object = pool.get().await.unwrap();
    let id = Uuid::now_v7();

    let tx = object.transaction().await.unwrap();
    assert_eq!(
        s.inbox.process(&tx, id, "test.subject").await.unwrap(),
        Processed::New
    );
    tx.commit().await.unwrap();
    let handled = s
        .inbox
        .handle(&mut object, id, "test.subject", async |_tx| {
            Ok::<_, Error>(())
        })
        .await
        .unwrap();
    assert_eq!(handled, Handled::Duplicate);
    assert!(s.inbox.contains(&object, id).await.unwrap());
}

#[tokio::test]
async fn migrating_twice_is_harmless_and_concurrent_migrations_create_once() {
    let s = Setup::new().await;
    // Created by Setup; again finds it in place.
    assert!(!s.inbox.migrate(&s.client).await.unwrap());
    let mut client = s.db.connect().await;
    let id = Uuid::now_v7();
    assert_eq!(s.deliver(&mut client, id).await, Handled::Applied(()));
    assert!(!s.inbox.migrate(&s.client).await.unwrap());
    assert!(s.inbox.contains(&s.client, id).await.unwrap(), "kept");

    let other = PgInbox::new(InboxConfig {
        schema: s.db.schema().to_owned(),
        table: "second_inbox".to_owned(),
    })
    .unwrap();
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let client = s.db.connect().await;
        let other = other.clone();
        tasks.push(tokio::spawn(async move { other.migrate(&client).await }));
    }
    let mut created = 0;
    for task in tasks {
        created += usize::from(task.await.unwrap().unwrap());
    }
    assert_eq!(created, 1, "exactly one instance creates the table");
}

#[tokio::test]
async fn a_foreign_table_of_the_same_name_fails_the_migration() {
    let db = TestDatabase::new().await;
    let client = db.connect().await;
    client
        .batch_execute(&format!(
            "CREATE SCHEMA {s}; CREATE TABLE {s}.inbox (nothing int)",
            s = db.schema()
        ))
        .await
        .unwrap();
    let inbox = PgInbox::new(InboxConfig {
        schema: db.schema().to_owned(),
        table: "inbox".to_owned(),
    })
    .unwrap();
    let error = inbox.migrate(&client).await.unwrap_err();
    assert!(
        error
            .to_string()
            .contains("check the inbox table's columns"),
        "{error}"
    );
    assert!(!error.is_transient());
    // Rolled back: no index was left on the foreign table.
    let indexes: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_indexes WHERE schemaname = $1",
            &[&db.schema()],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(indexes, 0);
}

#[tokio::test]
async fn hostile_schema_and_table_names_are_rejected() {
    for name in [
        "",
        "1inbox",
        "in-box",
        "x\"; DROP SCHEMA public CASCADE; --",
        "a;b",
        "pg_catalog",
        "public.inbox",
        &"a".repeat(64),
    ] {
        for config in [
            InboxConfig {
                schema: name.to_owned(),
                table: "inbox".to_owned(),
            },
            InboxConfig {
                schema: "app".to_owned(),
                table: name.to_owned(),
            },
        ] {
            let error = PgInbox::new(config.clone()).unwrap_err();
            assert!(matches!(error, Error::Config(_)), "{config:?}: {error}");
            assert!(!error.is_transient());
        }
    }
}

#[tokio::test]
async fn purge_deletes_old_records_in_batches_and_keeps_recent_ones() {
    let s = Setup::new().await;
    let table = format!("{}.inbox", s.db.schema());
    // More than two batches of old records, and a few recent ones.
    s.client
        .batch_execute(&format!(
            "INSERT INTO {table} (message_id, subject, received_at)
             SELECT gen_random_uuid(), 'old', now() - interval '2 days'
             FROM generate_series(1, 2500)"
        ))
        .await
        .unwrap();
    let mut client = s.db.connect().await;
    let recent = Uuid::now_v7();
    assert_eq!(s.deliver(&mut client, recent).await, Handled::Applied(()));

    let deleted = s
        .inbox
        .purge_older_than(&s.client, Duration::from_secs(24 * 3600))
        .await
        .unwrap();
    assert_eq!(deleted, 2500);
    let left: i64 = s
        .client
        .query_one(&format!("SELECT count(*) FROM {table}"), &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 1);
    assert!(s.inbox.contains(&s.client, recent).await.unwrap());
    // Nothing is older than a thousand years, and an absurd age is not an error.
    assert_eq!(
        s.inbox
            .purge_older_than(&s.client, Duration::MAX)
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        s.inbox
            .purge_older_than(&s.client, Duration::from_secs(24 * 3600))
            .await
            .unwrap(),
        0
    );
}
