use outbox_postgres::{Error, PgConfig, PgOutbox};
use outbox_testkit::TestDatabase;

#[tokio::test]
async fn migrating_twice_applies_once() {
    let db = TestDatabase::new().await;
    let outbox = PgOutbox::new(PgConfig::builder().schema(db.schema()).build().unwrap()).unwrap();
    let client = db.connect().await;
    assert_eq!(outbox.migrate(&client).await.unwrap(), all_versions());
    assert_eq!(outbox.migrate(&client).await.unwrap(), Vec::<i32>::new());
    let tables: Vec<String> = client
        .query(
            "SELECT table_name::text FROM information_schema.tables WHERE table_schema = $1 ORDER BY 1",
            &[&db.schema()],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        tables,
        [
            "dead_letters",
            "messages",
            "published",
            "schema_migrations",
            "wal_progress"
        ]
    );
    let versions: Vec<i32> = client
        .query(
            &format!("SELECT version FROM {}.schema_migrations", db.schema()),
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(versions, all_versions());
}

/// Messages enqueued under version 3 keep their schedule after the upgrade to version 4: those
/// not yet due become `delayed` (and are indexed), the others are due.
#[tokio::test]
async fn upgrading_to_delayed_keeps_pending_schedules() {
    let db = TestDatabase::new().await;
    let schema = db.schema();
    let outbox = PgOutbox::new(PgConfig::builder().schema(schema).build().unwrap()).unwrap();
    let client = db.connect().await;
    outbox.migrate(&client).await.unwrap();
    // Back to version 3, with one message due and one scheduled an hour ahead.
    client
        .batch_execute(&format!(
            r#"DROP INDEX "{schema}".messages_delayed_available_at_idx;
               ALTER TABLE "{schema}".messages DROP COLUMN delayed;
               CREATE INDEX messages_available_at_idx ON "{schema}".messages (available_at);
               DELETE FROM "{schema}".schema_migrations WHERE version = 4;
               INSERT INTO "{schema}".messages (id, subject, key, payload, available_at)
               VALUES (gen_random_uuid(), 'a', 'k', '', now()),
                      (gen_random_uuid(), 'b', 'k', '', now() + interval '1 hour');"#
        ))
        .await
        .unwrap();
    assert_eq!(outbox.migrate(&client).await.unwrap(), vec![4]);
    let rows = client
        .query(
            &format!(r#"SELECT subject, delayed FROM "{schema}".messages ORDER BY seq"#),
            &[],
        )
        .await
        .unwrap();
    let flags: Vec<(String, bool)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(flags, [("a".to_owned(), false), ("b".to_owned(), true)]);
    let indexes: Vec<String> = client
        .query(
            "SELECT indexname::text FROM pg_indexes WHERE schemaname = $1 AND tablename = 'messages' ORDER BY 1",
            &[&schema],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        indexes,
        [
            "messages_delayed_available_at_idx",
            "messages_id_key",
            "messages_pkey"
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_migrations_of_one_schema_are_safe() {
    let db = TestDatabase::new().await;
    let outbox = PgOutbox::new(PgConfig::builder().schema(db.schema()).build().unwrap()).unwrap();
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let client = db.connect().await;
        let outbox = outbox.clone();
        tasks.push(tokio::spawn(async move { outbox.migrate(&client).await }));
    }
    let mut applied = Vec::new();
    for task in tasks {
        applied.extend(task.await.unwrap().unwrap());
    }
    assert_eq!(
        applied,
        all_versions(),
        "exactly one instance applies each migration"
    );
    let client = db.connect().await;
    let seq = outbox
        .enqueue(&client, &crate::common::message(None, 1))
        .await
        .unwrap();
    assert!(seq > 0);
}

#[tokio::test]
async fn a_failed_migration_leaves_nothing_behind() {
    let db = TestDatabase::new().await;
    let client = db.connect().await;
    // A table in the way makes migration 1 fail half-way (its index cannot be built on it).
    client
        .batch_execute(&format!(
            "CREATE SCHEMA {s}; CREATE TABLE {s}.messages (nothing int)",
            s = db.schema()
        ))
        .await
        .unwrap();
    let outbox = PgOutbox::new(PgConfig::builder().schema(db.schema()).build().unwrap()).unwrap();
    let error = outbox.migrate(&client).await.unwrap_err();
    assert!(
        matches!(error, Error::Migration { version: 1, .. }),
        "{error}"
    );
    assert!(!error.is_transient());
    let row = client
        .query_one(
            "SELECT to_regclass($1) IS NULL, to_regclass($2) IS NULL",
            &[
                &format!("{}.schema_migrations", db.schema()),
                &format!("{}.dead_letters", db.schema()),
            ],
        )
        .await
        .unwrap();
    assert!(
        row.get::<_, bool>(0) && row.get::<_, bool>(1),
        "rolled back"
    );
    // The connection is usable again (not stuck in an aborted transaction).
    client.simple_query("SELECT 1").await.unwrap();
}

#[test]
fn hostile_schema_names_are_rejected() {
    for schema in [
        "outbox\"; DROP SCHEMA public CASCADE; --",
        "a b",
        "pg_toast",
        "",
        "x.y",
    ] {
        let mut config = PgConfig::default();
        config.schema = schema.to_owned();
        match PgOutbox::new(config) {
            Err(Error::Config(message)) => assert!(message.contains("schema name"), "{message}"),
            other => panic!("{schema:?} accepted: {other:?}"),
        }
    }
}

fn all_versions() -> Vec<i32> {
    (1..=PgOutbox::SCHEMA_VERSION).collect()
}
