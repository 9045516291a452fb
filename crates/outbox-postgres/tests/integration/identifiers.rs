//! Configured names are validated, then quoted everywhere: a hostile name is refused before it
//! reaches SQL, and any legal name, letter case included, works end to end.

use std::time::Duration;

use outbox_core::{ClaimRequest, Message, Store};
use outbox_postgres::{Error, PgConfig, PgOutbox, PgStore, WakeUp, validate_schema};
use outbox_testkit::{TestDatabase, assert_nothing_to_claim};

use crate::common::within;

#[test]
fn hostile_schema_names_are_refused_with_a_clear_error() {
    for name in [
        r#"x"; drop table y; --"#,
        "x; drop table y",
        "x'--",
        "x.y",
        "x y",
        "x\0y",
        "x\ny",
        "\"x\"",
        "",
        "9lives",
        "pg_catalog",
        "Pg_Toast",
        "ünïcode",
        &"a".repeat(64),
    ] {
        let error = PgConfig::builder().schema(name).build().unwrap_err();
        assert!(matches!(error, Error::Config(_)), "{name:?}: {error}");
        assert!(!error.is_transient());
        let text = error.to_string();
        assert!(
            text.starts_with("invalid configuration: schema name"),
            "{text}"
        );
        // A config built by hand is checked again when the outbox is made.
        let mut config = PgConfig::default();
        config.schema = name.to_owned();
        assert!(matches!(PgOutbox::new(config), Err(Error::Config(_))));
        assert!(validate_schema(name).is_err());
    }
    let error = validate_schema(r#"x"; drop table y; --"#).unwrap_err();
    assert_eq!(
        error.to_string(),
        "invalid configuration: schema name \"x\\\"; drop table y; --\" must be 1 to 63 ASCII \
         letters, digits and underscores, not starting with a digit \
         (^[A-Za-z_][A-Za-z0-9_]{0,62}$)"
    );
}

/// Migrates an outbox in `schema`, enqueues two messages (one committed, one rolled back),
/// claims and completes the committed one, and checks what the status and the catalog say.
async fn round_trip(db: &TestDatabase, schema: &str, wake_up: WakeUp) {
    let config = PgConfig::builder()
        .schema(schema)
        .wake_up(wake_up)
        .build()
        .unwrap_or_else(|e| panic!("{schema:?} refused: {e}"));
    let outbox = PgOutbox::new(config).unwrap();
    let mut client = db.connect().await;
    let applied = outbox.migrate(&client).await.unwrap();
    assert_eq!(applied.first(), Some(&1), "{applied:?}");
    assert!(outbox.migrate(&client).await.unwrap().is_empty());
    // Created with its exact name, not folded to lower case.
    let exists: bool = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)",
            &[&schema],
        )
        .await
        .unwrap()
        .get(0);
    assert!(exists, "schema {schema:?} not created under its own name");
    assert_eq!(
        outbox.schema_version(&client).await.unwrap(),
        applied.last().copied()
    );

    let store = PgStore::new(&outbox, db.pg_config());
    if wake_up == WakeUp::Listen {
        // The first wait starts the listener and returns once it listens.
        within(
            Duration::from_secs(10),
            "listener start",
            store.wait_for_work(Duration::from_secs(60)),
        )
        .await;
    }
    let waiter = tokio::spawn({
        let store = store.clone();
        async move { store.wait_for_work(Duration::from_secs(60)).await }
    });

    let kept = Message::builder("identifiers.kept")
        .key("k")
        .build()
        .unwrap();
    let tx = client.transaction().await.unwrap();
    outbox
        .enqueue(&tx, &Message::builder("identifiers.lost").build().unwrap())
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    let tx = client.transaction().await.unwrap();
    let seq = outbox.enqueue(&tx, &kept).await.unwrap();
    tx.commit().await.unwrap();
    if wake_up == WakeUp::Listen {
        // The notification reached the listener on this schema's channel.
        within(Duration::from_secs(10), "wake-up", waiter)
            .await
            .unwrap();
    } else {
        waiter.abort();
    }

    assert_eq!(outbox.status(&client).await.unwrap().pending, 1);
    let claimed = store.claim(ClaimRequest::new(10, &[])).await.unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!((claimed[0].seq, claimed[0].message.id()), (seq, kept.id()));
    store.complete(&[seq]).await.unwrap();
    assert_nothing_to_claim(&store).await;
    assert_eq!(outbox.status(&client).await.unwrap().pending, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odd_but_legal_schema_names_work_end_to_end() {
    let db = TestDatabase::new().await;
    let suffix = outbox_testkit::unique_suffix();
    let mixed = format!("Odd_Case_{suffix}");
    let longest = format!("_Max_Len_{suffix}_")
        .chars()
        .cycle()
        .take(63)
        .collect::<String>();
    assert_eq!(longest.len(), 63);
    let _guards = [&mixed, &longest].map(|name| db.schema_guard(name));

    round_trip(&db, &mixed, WakeUp::Poll).await;
    // The longest name makes the longest channel name, which is shortened to a hash.
    round_trip(&db, &longest, WakeUp::Listen).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_differing_only_in_case_are_separate_outboxes() {
    let db = TestDatabase::new().await;
    let lower = format!("case_{}", outbox_testkit::unique_suffix());
    let upper = lower.to_uppercase();
    let _guards = [&lower, &upper].map(|name| db.schema_guard(name));

    round_trip(&db, &upper, WakeUp::Listen).await;
    let client = db.connect().await;
    let lower_outbox = PgOutbox::new(PgConfig::builder().schema(&lower).build().unwrap()).unwrap();
    let upper_outbox = PgOutbox::new(PgConfig::builder().schema(&upper).build().unwrap()).unwrap();
    assert_ne!(
        lower_outbox.config().lock_id(),
        upper_outbox.config().lock_id()
    );
    // The upper-case schema is migrated; the lower-case one is not, and is not confused with it.
    assert_eq!(lower_outbox.schema_version(&client).await.unwrap(), None);
    assert_eq!(
        lower_outbox.migrate(&client).await.unwrap().first(),
        Some(&1)
    );
    lower_outbox
        .enqueue(&client, &Message::builder("a").build().unwrap())
        .await
        .unwrap();
    assert_eq!(lower_outbox.status(&client).await.unwrap().pending, 1);
    assert_eq!(upper_outbox.status(&client).await.unwrap().pending, 0);
}
