use std::time::Duration;

use outbox_core::{ClaimRequest, Store};

use crate::common::{Fixture, message};

async fn count(f: &Fixture, table: &str) -> i64 {
    let sql = format!("SELECT count(*) FROM {}.{table}", f.db.schema());
    f.client.query_one(&sql, &[]).await.unwrap().get(0)
}

#[tokio::test]
async fn without_retention_completed_messages_are_deleted() {
    let f = Fixture::new().await;
    let m = message(Some("key-a"), 1);
    f.outbox.enqueue(&f.client, &m).await.unwrap();
    let store = f.store();
    let claimed = store.claim(ClaimRequest::new(10, &[])).await.unwrap();
    store.complete(&[claimed[0].seq]).await.unwrap();
    assert_eq!(count(&f, "messages").await, 0);
    assert_eq!(count(&f, "published").await, 0);
}

#[tokio::test]
async fn with_retention_completed_messages_move_to_published_and_are_purged_by_age() {
    let f = Fixture::with(|b| b.retention(Duration::from_secs(3600))).await;
    let sent: Vec<_> = (0..25)
        .map(|i| message(Some(&format!("key-{}", i % 3)), i))
        .collect();
    f.outbox.enqueue_batch(&f.client, &sent).await.unwrap();
    let store = f.store();
    let claimed = store.claim(ClaimRequest::new(3, &[])).await.unwrap();
    assert_eq!(claimed.len(), 3);
    let seqs: Vec<i64> = claimed.iter().map(|c| c.seq).collect();
    store.complete(&seqs).await.unwrap();
    assert_eq!(count(&f, "messages").await, 22);
    assert_eq!(count(&f, "published").await, 3);

    // What was kept is the message as published, with its id and when.
    let sql = format!(
        "SELECT id, subject, key, payload FROM {}.published ORDER BY seq",
        f.db.schema()
    );
    let rows = f.client.query(&sql, &[]).await.unwrap();
    for (row, c) in rows.iter().zip(&claimed) {
        assert_eq!(row.get::<_, uuid::Uuid>(0), c.message.id());
        assert_eq!(row.get::<_, &str>(1), c.message.subject());
        assert_eq!(row.get::<_, Option<&str>>(2), c.message.key());
        assert_eq!(row.get::<_, &[u8]>(3), &c.message.payload()[..]);
    }

    // Within the retention: housekeeping and an explicit purge keep them.
    store.housekeep().await.unwrap();
    let purged = f
        .outbox
        .purge_published(&f.client, Duration::from_secs(3600), 2, |_| {})
        .await
        .unwrap();
    assert_eq!(purged, 0);
    assert_eq!(count(&f, "published").await, 3);

    // Past it (a retention of zero, as `outbox purge-published --older-than 0s` does), in
    // batches of 2, with progress after each.
    let sql = format!(
        "UPDATE {}.published SET published_at = published_at - interval '2 hours'",
        f.db.schema()
    );
    f.client.execute(&sql, &[]).await.unwrap();
    let mut progress = Vec::new();
    let purged = f
        .outbox
        .purge_published(&f.client, Duration::from_secs(3600), 2, |n| {
            progress.push(n)
        })
        .await
        .unwrap();
    assert_eq!(purged, 3);
    assert_eq!(progress, [2, 3]);
    assert_eq!(count(&f, "published").await, 0);
    assert_eq!(count(&f, "messages").await, 22);
}

#[tokio::test]
async fn the_leading_relay_purges_expired_rows_while_it_works() {
    let f = Fixture::with(|b| b.retention(Duration::from_secs(3600))).await;
    let store = f.store();
    for i in 0..4 {
        f.outbox
            .enqueue(&f.client, &message(Some(&format!("key-{i}")), i))
            .await
            .unwrap();
    }
    let claimed = store.claim(ClaimRequest::new(100, &[])).await.unwrap();
    let seqs: Vec<i64> = claimed.iter().map(|c| c.seq).collect();
    store.complete(&seqs[..2]).await.unwrap();
    let sql = format!(
        "UPDATE {}.published SET published_at = published_at - interval '2 hours'",
        f.db.schema()
    );
    f.client.execute(&sql, &[]).await.unwrap();
    store.complete(&seqs[2..]).await.unwrap();
    assert_eq!(count(&f, "published").await, 4);
    store.housekeep().await.unwrap();
    assert_eq!(count(&f, "published").await, 2, "only the expired two went");
}

#[tokio::test]
async fn a_zero_retention_is_a_configuration_error() {
    let err = outbox_postgres::PgConfig::builder()
        .retention(Duration::ZERO)
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("retention"), "{err}");
}

#[tokio::test]
async fn the_store_vacuums_the_hot_table_after_every_so_many_deletes() {
    let f = Fixture::with(|b| b.vacuum_every(Some(100))).await;
    let sent: Vec<_> = (0..250)
        .map(|i| message(Some(&format!("key-{}", i % 7)), i))
        .collect();
    f.outbox.enqueue_batch(&f.client, &sent).await.unwrap();
    let store = f.store();
    let vacuums = async || -> i64 {
        let sql = "SELECT vacuum_count FROM pg_stat_user_tables \
                   WHERE schemaname = $1 AND relname = 'messages'";
        f.client
            .query_one(sql, &[&f.db.schema()])
            .await
            .unwrap()
            .get(0)
    };
    assert_eq!(vacuums().await, 0);
    // 50 deletes: below the threshold.
    let claimed = store.claim(ClaimRequest::new(50, &[])).await.unwrap();
    let seqs: Vec<i64> = claimed.iter().map(|c| c.seq).collect();
    store.complete(&seqs).await.unwrap();
    // 100 more: over it; the vacuum runs on a connection of its own.
    let claimed = store.claim(ClaimRequest::new(100, &[])).await.unwrap();
    let seqs: Vec<i64> = claimed.iter().map(|c| c.seq).collect();
    store.complete(&seqs).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while vacuums().await == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no vacuum after 150 deletes with vacuum_every = 100"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn vacuum_every_can_be_turned_off_but_not_set_to_zero() {
    let config = outbox_postgres::PgConfig::builder()
        .vacuum_every(None)
        .build()
        .unwrap();
    assert_eq!(config.vacuum_every, None);
    let err = outbox_postgres::PgConfig::builder()
        .vacuum_every(Some(0))
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("vacuum_every"), "{err}");
}
