//! Prepared enqueues: the `Enqueuer` of a `tokio-postgres` connection, and the statement cache of
//! `deadpool-postgres` connections.

use std::time::{Duration, Instant};

use outbox_core::{ClaimRequest, Message, Store};
use outbox_postgres::{Error, PgStore, WakeUp};
use outbox_testkit::assert_nothing_to_claim;
use tokio_postgres::error::SqlState;

use crate::common::{Fixture, assert_same, message, within};

/// A pool of one connection on the fixture's database, so every `get` returns the same one.
fn pool(f: &Fixture) -> deadpool_postgres::Pool {
    let manager = deadpool_postgres::Manager::new(f.db.pg_config(), tokio_postgres::NoTls);
    deadpool_postgres::Pool::builder(manager)
        .max_size(1)
        .build()
        .unwrap()
}

/// Waits until the store's listener listens: its first wait returns once it does.
async fn listening(store: &PgStore) {
    within(
        Duration::from_secs(10),
        "listener start",
        store.wait_for_work(Duration::from_secs(60)),
    )
    .await;
}

/// Runs `commit` while a relay's wait is pending; returns how long that wait took.
async fn wait_across(store: &PgStore, commit: impl Future<Output = ()>) -> Duration {
    let waiter = tokio::spawn({
        let store = store.clone();
        async move {
            let started = Instant::now();
            store.wait_for_work(Duration::from_secs(30)).await;
            started.elapsed()
        }
    });
    commit.await;
    within(Duration::from_secs(10), "wake-up", waiter)
        .await
        .unwrap()
}

#[tokio::test]
async fn enqueuer_messages_commit_and_roll_back_with_the_transaction() {
    let mut f = Fixture::new().await;
    let enqueuer = f.outbox.prepare(&f.client).await.unwrap();
    let committed = message(Some("k"), 1);

    let tx = f.client.transaction().await.unwrap();
    let kept = enqueuer.enqueue(&tx, &committed).await.unwrap();
    tx.commit().await.unwrap();
    let tx = f.client.transaction().await.unwrap();
    let lost = enqueuer.enqueue(&tx, &message(Some("k"), 2)).await.unwrap();
    tx.rollback().await.unwrap();
    assert!(lost > kept);

    // Prepared in a transaction that rolls back: the statements belong to the session.
    let tx = f.client.transaction().await.unwrap();
    let clone = f.outbox.prepare(&tx).await.unwrap().clone();
    tx.rollback().await.unwrap();
    let alone = clone.enqueue(&f.client, &message(None, 3)).await.unwrap();
    assert_eq!(clone.outbox().config(), f.outbox.config());

    assert_eq!(f.pending().await, [kept, alone]);
    let claimed = f.store().claim(ClaimRequest::new(10, &[])).await.unwrap();
    assert_eq!(claimed.len(), 2);
    assert_same(&claimed[0].message, &committed);
}

#[tokio::test]
async fn an_enqueuer_uncommitted_message_is_invisible_until_commit() {
    let mut f = Fixture::new().await;
    let enqueuer = f.outbox.prepare(&f.client).await.unwrap();
    let store = f.store();
    let tx = f.client.transaction().await.unwrap();
    let seq = enqueuer.enqueue(&tx, &message(None, 1)).await.unwrap();
    assert_nothing_to_claim(&store).await;
    tx.commit().await.unwrap();
    let claimed = store.claim(ClaimRequest::new(10, &[])).await.unwrap();
    assert_eq!(claimed.iter().map(|c| c.seq).collect::<Vec<_>>(), [seq]);
}

#[tokio::test]
async fn an_enqueuer_batch_keeps_its_order_and_every_field() {
    let mut f = Fixture::new().await;
    let enqueuer = f.outbox.prepare(&f.client).await.unwrap();
    let messages: Vec<Message> = (0..50)
        .map(|n| {
            let builder = Message::builder(format!("batch.m{n}"))
                .payload(vec![u8::try_from(n).unwrap(); n % 7])
                .header("X-N", n.to_string());
            if n % 3 == 0 {
                builder.delay(Duration::from_millis(1))
            } else {
                builder.key(format!("k{}", n % 5))
            }
            .build()
            .unwrap()
        })
        .collect();
    let tx = f.client.transaction().await.unwrap();
    let seqs = enqueuer.enqueue_batch(&tx, &messages).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(seqs.len(), messages.len());
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    assert!(
        enqueuer
            .enqueue_batch(&f.client, &[])
            .await
            .unwrap()
            .is_empty()
    );

    tokio::time::sleep(Duration::from_millis(20)).await;
    let claimed = f.store().claim(ClaimRequest::new(1000, &[])).await.unwrap();
    assert_eq!(claimed.iter().map(|c| c.seq).collect::<Vec<_>>(), seqs);
    for (got, sent) in claimed.iter().zip(&messages) {
        assert_same(&got.message, sent);
    }
}

#[tokio::test]
async fn an_enqueuer_refuses_invalid_messages_before_sending_anything() {
    let mut f = Fixture::with(|b| b.max_payload(4096)).await;
    let enqueuer = f.outbox.prepare(&f.client).await.unwrap();
    let oversized = Message::builder("test.subject")
        .payload(vec![7_u8; 4096])
        .build()
        .unwrap();

    let tx = f.client.transaction().await.unwrap();
    let error = enqueuer.enqueue(&tx, &oversized).await.unwrap_err();
    assert!(matches!(error, Error::InvalidMessage(_)), "{error}");
    assert!(!error.is_transient());
    assert!(
        error.to_string().contains(&oversized.id().to_string()),
        "{error}"
    );
    let same = f.outbox.enqueue(&tx, &oversized).await.unwrap_err();
    assert_eq!(error.to_string(), same.to_string());
    let error = enqueuer
        .enqueue_batch(&tx, &[message(None, 1), oversized.clone()])
        .await
        .unwrap_err();
    assert!(matches!(error, Error::InvalidMessage(_)), "{error}");
    // Nothing was sent: the transaction is still usable.
    let seq = enqueuer.enqueue(&tx, &message(None, 2)).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(f.pending().await, [seq]);
}

#[tokio::test]
async fn an_enqueuer_on_another_connection_fails_with_an_error() {
    let f = Fixture::new().await;
    let enqueuer = f.outbox.prepare(&f.client).await.unwrap();
    let other = f.db.connect().await;

    let error = enqueuer
        .enqueue(&other, &message(None, 1))
        .await
        .unwrap_err();
    assert!(matches!(error, Error::Query { .. }), "{error}");
    assert_eq!(error.code(), Some(&SqlState::INVALID_SQL_STATEMENT_NAME));
    let error = enqueuer
        .enqueue_batch(&other, &[message(None, 2)])
        .await
        .unwrap_err();
    assert_eq!(error.code(), Some(&SqlState::INVALID_SQL_STATEMENT_NAME));
    assert!(f.pending().await.is_empty());

    // Both connections go on working.
    let seq = f.outbox.enqueue(&other, &message(None, 3)).await.unwrap();
    let next = enqueuer
        .enqueue(&f.client, &message(None, 4))
        .await
        .unwrap();
    assert_eq!(f.pending().await, [seq, next]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_enqueuer_notifies_in_listen_mode_on_commit_only() {
    let mut f = Fixture::with(|b| b.wake_up(WakeUp::Listen)).await;
    let enqueuer = f.outbox.prepare(&f.client).await.unwrap();
    let store = f.store();
    listening(&store).await;

    // A rolled-back enqueue sends nothing: the wait runs to its timeout.
    let tx = f.client.transaction().await.unwrap();
    enqueuer.enqueue(&tx, &message(None, 1)).await.unwrap();
    tx.rollback().await.unwrap();
    let started = Instant::now();
    store.wait_for_work(Duration::from_millis(400)).await;
    assert!(
        started.elapsed() >= Duration::from_millis(350),
        "woken by a rollback"
    );

    let waited = wait_across(&store, async {
        let tx = f.client.transaction().await.unwrap();
        enqueuer.enqueue(&tx, &message(None, 2)).await.unwrap();
        tx.commit().await.unwrap();
    })
    .await;
    assert!(waited < Duration::from_secs(10), "waited {waited:?}");

    let waited = wait_across(&store, async {
        let tx = f.client.transaction().await.unwrap();
        enqueuer
            .enqueue_batch(&tx, &[message(None, 3), message(None, 4)])
            .await
            .unwrap();
        tx.commit().await.unwrap();
    })
    .await;
    assert!(waited < Duration::from_secs(10), "waited {waited:?}");
    assert_eq!(f.pending().await.len(), 3);
}

#[tokio::test]
async fn deadpool_enqueues_fill_the_connection_statement_cache() {
    let f = Fixture::new().await;
    let pool = pool(&f);
    let mut client = pool.get().await.unwrap();
    assert_eq!(client.statement_cache.size(), 0);

    let mut seqs = Vec::new();
    for n in 0..3 {
        seqs.push(f.outbox.enqueue(&client, &message(None, n)).await.unwrap());
    }
    assert_eq!(client.statement_cache.size(), 1);
    let tx = client.transaction().await.unwrap();
    seqs.push(f.outbox.enqueue(&tx, &message(None, 3)).await.unwrap());
    seqs.extend(
        f.outbox
            .enqueue_batch(&tx, &[message(None, 4), message(None, 5)])
            .await
            .unwrap(),
    );
    assert_eq!(tx.statement_cache.size(), 2);
    tx.commit().await.unwrap();

    // The same connection back from the pool keeps its statements.
    drop(client);
    let client = pool.get().await.unwrap();
    seqs.push(f.outbox.enqueue(&client, &message(None, 6)).await.unwrap());
    seqs.extend(
        f.outbox
            .enqueue_batch(&client, &[message(None, 7)])
            .await
            .unwrap(),
    );
    assert_eq!(client.statement_cache.size(), 2);
    assert_eq!(f.pending().await, seqs);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadpool_prepared_enqueues_notify_in_listen_mode() {
    let f = Fixture::with(|b| b.wake_up(WakeUp::Listen)).await;
    let pool = pool(&f);
    let mut client = pool.get().await.unwrap();
    let store = f.store();
    listening(&store).await;

    let waited = wait_across(&store, async {
        let tx = client.transaction().await.unwrap();
        f.outbox.enqueue(&tx, &message(None, 1)).await.unwrap();
        tx.commit().await.unwrap();
    })
    .await;
    assert!(waited < Duration::from_secs(10), "waited {waited:?}");
    // The insert and the notify.
    assert_eq!(client.statement_cache.size(), 2);
    assert_eq!(f.pending().await.len(), 1);
}

#[tokio::test]
async fn without_prepare_enqueue_deadpool_enqueues_prepare_nothing() {
    let f = Fixture::with(|b| b.prepare_enqueue(false)).await;
    let pool = pool(&f);
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

    assert_eq!(client.statement_cache.size(), 0);
    assert_eq!(f.pending().await, [alone, batch[0], batch[1]]);
}

/// A business table next to the fixture's outbox.
async fn accounts(f: &Fixture) -> String {
    let table = format!("{}.accounts", f.db.schema());
    f.client
        .batch_execute(&format!(
            "CREATE TABLE {table} (id bigint PRIMARY KEY, balance bigint NOT NULL);
             INSERT INTO {table} VALUES (1, 100)"
        ))
        .await
        .unwrap();
    table
}

async fn balance(f: &Fixture, table: &str) -> i64 {
    f.client
        .query_one(&format!("SELECT balance FROM {table} WHERE id = 1"), &[])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn a_write_and_its_message_go_in_one_statement_or_not_at_all() {
    let mut f = Fixture::new().await;
    let table = accounts(&f).await;
    let debit = format!("UPDATE {table} SET balance = balance - $1 WHERE id = $2 RETURNING 1;");
    let enqueuer = f.outbox.prepare(&f.client).await.unwrap();

    // Matched: written and enqueued, through the outbox and through the enqueuer (twice, the
    // second time with the statement it kept).
    let first = message(Some("account-1"), 1);
    let tx = f.client.transaction().await.unwrap();
    let a = f
        .outbox
        .execute_and_enqueue(&tx, &debit, &[&10_i64, &1_i64], &first)
        .await
        .unwrap()
        .unwrap();
    let b = enqueuer
        .execute_and_enqueue(
            &tx,
            &debit,
            &[&10_i64, &1_i64],
            &message(Some("account-1"), 2),
        )
        .await
        .unwrap()
        .unwrap();
    let c = enqueuer
        .execute_and_enqueue(
            &tx,
            &debit,
            &[&10_i64, &1_i64],
            &message(Some("account-1"), 3),
        )
        .await
        .unwrap()
        .unwrap();
    tx.commit().await.unwrap();
    assert!(a < b && b < c);
    assert_eq!(balance(&f, &table).await, 70);

    // Nothing matched: nothing enqueued.
    let none = enqueuer
        .execute_and_enqueue(&f.client, &debit, &[&10_i64, &2_i64], &message(None, 4))
        .await
        .unwrap();
    assert_eq!(none, None);

    // Rolled back: neither.
    let tx = f.client.transaction().await.unwrap();
    enqueuer
        .execute_and_enqueue(&tx, &debit, &[&10_i64, &1_i64], &message(None, 5))
        .await
        .unwrap()
        .unwrap();
    tx.rollback().await.unwrap();
    assert_eq!(balance(&f, &table).await, 70);
    assert_eq!(f.pending().await, [a, b, c]);

    let claimed = f.store().claim(ClaimRequest::new(10, &[])).await.unwrap();
    assert_eq!(claimed.len(), 3);
    assert_same(&claimed[0].message, &first);
}

#[tokio::test]
async fn a_joined_write_is_checked_and_fails_cleanly() {
    let mut f = Fixture::new().await;
    let table = accounts(&f).await;
    let enqueuer = f.outbox.prepare(&f.client).await.unwrap();
    let tx = f.client.transaction().await.unwrap();

    // An invalid message: refused before anything is sent, the transaction still usable.
    let bad = Message::builder("bad subject").build_stored();
    let debit = format!("UPDATE {table} SET balance = balance - 1 WHERE id = 1 RETURNING 1");
    let error = f
        .outbox
        .execute_and_enqueue(&tx, &debit, &[], &bad)
        .await
        .unwrap_err();
    assert!(matches!(error, Error::InvalidMessage(_)), "{error}");
    let error = enqueuer
        .execute_and_enqueue(&tx, &debit, &[], &bad)
        .await
        .unwrap_err();
    assert!(matches!(error, Error::InvalidMessage(_)), "{error}");
    tx.execute("SELECT 1", &[]).await.unwrap();
    tx.rollback().await.unwrap();

    // Without RETURNING: PostgreSQL's error, no panic, nothing written.
    let no_returning = format!("UPDATE {table} SET balance = 0 WHERE id = 1");
    let error = enqueuer
        .execute_and_enqueue(&f.client, &no_returning, &[], &message(None, 1))
        .await
        .unwrap_err();
    assert!(matches!(error, Error::Query { .. }), "{error}");
    assert_eq!(balance(&f, &table).await, 100);
    assert!(f.pending().await.is_empty());
}

#[tokio::test]
async fn a_joined_write_on_deadpool_is_prepared_once() {
    let f = Fixture::new().await;
    let table = accounts(&f).await;
    let pool = pool(&f);
    let insert = format!("INSERT INTO {table} VALUES ($1, 0) RETURNING id");
    for id in 2..5_i64 {
        let client = pool.get().await.unwrap();
        f.outbox
            .execute_and_enqueue(&client, &insert, &[&id], &message(None, 0))
            .await
            .unwrap()
            .unwrap();
    }
    let client = pool.get().await.unwrap();
    assert_eq!(client.statement_cache.size(), 1);
    assert_eq!(f.pending().await.len(), 3);
}

#[tokio::test]
async fn a_joined_write_notifies_in_listen_mode() {
    let mut f = Fixture::with(|b| b.wake_up(WakeUp::Listen)).await;
    let table = accounts(&f).await;
    let debit = format!("UPDATE {table} SET balance = balance - 1 WHERE id = 1 RETURNING 1");
    let enqueuer = f.outbox.prepare(&f.client).await.unwrap();
    let store = f.store();
    listening(&store).await;

    let waited = wait_across(&store, async {
        let tx = f.client.transaction().await.unwrap();
        f.outbox
            .execute_and_enqueue(&tx, &debit, &[], &message(None, 1))
            .await
            .unwrap()
            .unwrap();
        tx.commit().await.unwrap();
    })
    .await;
    assert!(waited < Duration::from_secs(10), "waited {waited:?}");

    let waited = wait_across(&store, async {
        let tx = f.client.transaction().await.unwrap();
        enqueuer
            .execute_and_enqueue(&tx, &debit, &[], &message(None, 2))
            .await
            .unwrap()
            .unwrap();
        tx.commit().await.unwrap();
    })
    .await;
    assert!(waited < Duration::from_secs(10), "waited {waited:?}");
    assert_eq!(f.pending().await.len(), 2);
    assert_eq!(balance(&f, &table).await, 98);
}

/// Every way of enqueueing one message picks the statement by its schedule: a message due at once
/// is stored as not delayed and due now, a scheduled one as delayed until its time, whichever
/// statement (typed, cached, prepared, joined with a write) carries it.
#[tokio::test]
async fn every_single_enqueue_stores_the_schedule_it_was_given() {
    let f = Fixture::new().await;
    let table = accounts(&f).await;
    let debit = format!("UPDATE {table} SET balance = balance - $1 WHERE id = $2 RETURNING 1");
    let pool = pool(&f);
    let pooled = pool.get().await.unwrap();
    let enqueuer = f.outbox.prepare(&f.client).await.unwrap();
    let schedules = [None, Some(Duration::ZERO), Some(Duration::from_secs(3600))];
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 2] = [&1_i64, &1_i64];

    let mut expected = Vec::new();
    for (path, delay) in (0..5).flat_map(|path| schedules.map(|delay| (path, delay))) {
        let builder = Message::builder(format!("schedule.p{path}")).payload("x");
        let message = match delay {
            Some(delay) => builder.delay(delay),
            None => builder,
        }
        .build()
        .unwrap();
        let seq = match path {
            0 => f.outbox.enqueue(&f.client, &message).await.unwrap(),
            1 => f.outbox.enqueue(&pooled, &message).await.unwrap(),
            2 => enqueuer.enqueue(&f.client, &message).await.unwrap(),
            3 => f
                .outbox
                .execute_and_enqueue(&f.client, &debit, &params, &message)
                .await
                .unwrap()
                .unwrap(),
            _ => enqueuer
                .execute_and_enqueue(&f.client, &debit, &params, &message)
                .await
                .unwrap()
                .unwrap(),
        };
        expected.push((seq, delay.is_some_and(|d| !d.is_zero())));
    }

    let rows = f
        .client
        .query(
            &format!(
                "SELECT seq, delayed, available_at > now() + interval '59 minutes' AS later,
                        available_at <= now() AS due
                 FROM {}.messages ORDER BY seq",
                f.db.schema()
            ),
            &[],
        )
        .await
        .unwrap();
    let stored: Vec<(i64, bool)> = rows
        .iter()
        .map(|row| {
            let delayed: bool = row.get("delayed");
            let (later, due): (bool, bool) = (row.get("later"), row.get("due"));
            assert_eq!(
                (later, due),
                (delayed, !delayed),
                "seq {}",
                row.get::<_, i64>("seq")
            );
            (row.get("seq"), delayed)
        })
        .collect();
    assert_eq!(stored, expected);
    assert_eq!(balance(&f, &table).await, 100 - 6);
}
