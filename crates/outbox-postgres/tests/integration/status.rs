use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use outbox_core::{Elector, Failure, FailureAction, Message, Store};
use outbox_postgres::{PgConfig, PgOutbox};
use outbox_testkit::TestDatabase;
use tokio_postgres::error::SqlState;

use crate::common::{Fixture, message, within};

const HOUR: Duration = Duration::from_secs(3600);

#[tokio::test]
async fn status_of_an_empty_outbox() {
    let f = Fixture::new().await;
    let status = f.outbox.status(&f.client).await.unwrap();
    assert_eq!(status.schema_version, Some(PgOutbox::SCHEMA_VERSION));
    assert_eq!(
        (
            status.pending,
            status.due,
            status.retrying,
            status.dead_letters
        ),
        (0, 0, 0, 0)
    );
    assert_eq!(status.oldest_pending_age, Duration::ZERO);
    assert_eq!(status.lag, Duration::ZERO);
    assert_eq!(f.outbox.leader(&f.client).await.unwrap(), None);
}

#[tokio::test]
async fn status_counts_pending_due_scheduled_retrying_and_dead_letters() {
    let f = Fixture::new().await;
    let messages = [
        // Created (on the producer's clock) two hours ago, due now: the oldest pending message.
        Message::builder("s.a")
            .payload("0")
            .created_at(SystemTime::now() - 2 * HOUR)
            .build()
            .unwrap(),
        // Fails once and waits an hour for its retry: retrying, not due.
        message(Some("k"), 1),
        // Due since ten minutes ago: the lag.
        message(None, 2),
        // Dead-lettered: no longer pending.
        message(None, 3),
        // Scheduled an hour from now: pending, not due, not retrying.
        Message::builder("s.c")
            .payload("4")
            .delay(HOUR)
            .build()
            .unwrap(),
    ];
    let seqs = f.outbox.enqueue_batch(&f.client, &messages).await.unwrap();
    let store = f.store();
    store
        .fail(&[
            Failure {
                seq: seqs[1],
                error: "timed out".into(),
                action: FailureAction::Retry { after: HOUR },
            },
            Failure {
                seq: seqs[3],
                error: "too big".into(),
                action: FailureAction::DeadLetter,
            },
        ])
        .await
        .unwrap();
    let backdate = format!(
        "UPDATE {}.messages SET available_at = now() - interval '10 minutes' WHERE seq = $1",
        f.db.schema()
    );
    f.client.execute(&backdate, &[&seqs[2]]).await.unwrap();

    let status = f.outbox.status(&f.client).await.unwrap();
    assert_eq!(status.schema_version, Some(PgOutbox::SCHEMA_VERSION));
    assert_eq!(status.pending, 4, "{status:?}");
    assert_eq!(status.due, 2, "{status:?}");
    assert_eq!(status.retrying, 1, "{status:?}");
    assert_eq!(status.dead_letters, 1, "{status:?}");
    let minute = Duration::from_secs(60);
    assert!(
        (10 * minute..11 * minute).contains(&status.lag),
        "{status:?}"
    );
    assert!(
        (2 * HOUR..2 * HOUR + minute).contains(&status.oldest_pending_age),
        "{status:?}"
    );

    // The relay's backlog metric uses the same definitions.
    let backlog = store.backlog().await.unwrap().expect("a backlog");
    assert_eq!(backlog.pending, status.pending);
    assert!(
        backlog.lag >= status.lag && backlog.lag - status.lag < minute,
        "{backlog:?} vs {status:?}"
    );

    // Inside a transaction, the status sees the transaction's own messages.
    let mut client = f.db.connect().await;
    let tx = client.transaction().await.unwrap();
    f.outbox.enqueue(&tx, &message(None, 5)).await.unwrap();
    let inside = f.outbox.status(&tx).await.unwrap();
    assert_eq!((inside.pending, inside.due), (5, 3));
    tx.rollback().await.unwrap();
    assert_eq!(f.outbox.status(&f.client).await.unwrap().pending, 4);
}

/// The backend pid of the session named `name`, and what `pg_stat_activity` shows of it.
async fn session_named(
    f: &Fixture,
    name: &str,
) -> (i32, Option<IpAddr>, Option<i32>, Option<SystemTime>) {
    let rows = f
        .client
        .query(
            "SELECT pid, client_addr, client_port, backend_start FROM pg_stat_activity \
             WHERE application_name = $1",
            &[&name],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 1, "expected one session named {name}");
    let row = &rows[0];
    (row.get(0), row.get(1), row.get(2), row.get(3))
}

#[tokio::test]
async fn the_leader_is_the_session_holding_the_lock() {
    let f = Fixture::new().await;
    let lock_id = f.outbox.config().lock_id();

    // A session holding the key in shared mode does not lead (it keeps a leader out).
    let shared = f.db.connect().await;
    let locked: bool = shared
        .query_one("SELECT pg_try_advisory_lock_shared($1)", &[&lock_id])
        .await
        .unwrap()
        .get(0);
    assert!(locked);
    assert_eq!(f.outbox.leader(&f.client).await.unwrap(), None);
    drop(shared);

    let store = f.store();
    let leadership = within(
        Duration::from_secs(10),
        "campaign",
        store.elector().campaign(),
    )
    .await
    .unwrap();
    let name = format!("outbox-relay {}", f.db.schema());
    let (pid, client_addr, client_port, backend_start) = session_named(&f, &name).await;

    let leader = f.outbox.leader(&f.client).await.unwrap().expect("a leader");
    assert_eq!(leader.pid, pid);
    assert_eq!(leader.application_name.as_deref(), Some(name.as_str()));
    assert_eq!(leader.user.as_deref(), Some("postgres"));
    assert_eq!(leader.client_addr, client_addr);
    assert_eq!(leader.client_port, client_port);
    assert_eq!(leader.backend_start, backend_start);
    assert!(leader.backend_start.is_some());
    let age = leader.session_age.expect("a session age");
    assert!(age < Duration::from_secs(60), "{leader:?}");
    assert!(leader.state.is_some(), "{leader:?}");

    // The same schema under another lock key has no leader.
    let other = PgOutbox::new(
        PgConfig::builder()
            .schema(f.db.schema())
            .lock_id(PgConfig::default_lock_id(&format!(
                "{}-other",
                f.db.schema()
            )))
            .build()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(other.leader(&f.client).await.unwrap(), None);

    // Resigning closes the session; the lock goes with it.
    drop(leadership);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while f.outbox.leader(&f.client).await.unwrap().is_some() {
        assert!(tokio::time::Instant::now() < deadline, "leader still shown");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn schema_version_is_none_until_migrated() {
    let db = TestDatabase::new().await;
    let outbox = PgOutbox::new(PgConfig::builder().schema(db.schema()).build().unwrap()).unwrap();
    let mut client = db.connect().await;

    // No schema at all.
    assert_eq!(outbox.schema_version(&client).await.unwrap(), None);
    let error = outbox.status(&client).await.unwrap_err();
    assert!(
        error.code() == Some(&SqlState::INVALID_SCHEMA_NAME)
            || error.code() == Some(&SqlState::UNDEFINED_TABLE),
        "{error}"
    );

    // A schema without the outbox tables; asking inside a transaction leaves it usable.
    client
        .batch_execute(&format!("CREATE SCHEMA {}", db.schema()))
        .await
        .unwrap();
    let tx = client.transaction().await.unwrap();
    assert_eq!(outbox.schema_version(&tx).await.unwrap(), None);
    tx.execute("SELECT 1", &[]).await.unwrap();
    tx.commit().await.unwrap();

    assert_eq!(
        outbox.migrate(&client).await.unwrap(),
        (1..=PgOutbox::SCHEMA_VERSION).collect::<Vec<_>>()
    );
    assert_eq!(
        outbox.schema_version(&client).await.unwrap(),
        Some(PgOutbox::SCHEMA_VERSION)
    );
    assert_eq!(
        outbox.status(&client).await.unwrap().schema_version,
        Some(PgOutbox::SCHEMA_VERSION)
    );
}
