use std::time::{Duration, SystemTime};

use outbox_core::{ClaimRequest, Failure, FailureAction, Store};

use crate::common::{Fixture, assert_same, message};

fn dead(seq: i64, error: &str) -> Failure {
    Failure {
        seq,
        error: error.to_owned(),
        action: FailureAction::DeadLetter,
    }
}

#[tokio::test]
async fn dead_letters_can_be_listed_replayed_and_purged() {
    let f = Fixture::new().await;
    let store = f.store();
    let messages: Vec<_> = (0..4).map(|n| message(Some("k"), n)).collect();
    let seqs = f.outbox.enqueue_batch(&f.client, &messages).await.unwrap();
    // Two attempts for the first message, then it is given up on; the others fail at once.
    store
        .fail(&[Failure {
            seq: seqs[0],
            error: "timed out".into(),
            action: FailureAction::Retry {
                after: Duration::ZERO,
            },
        }])
        .await
        .unwrap();
    store
        .fail(&[
            dead(seqs[0], "e0"),
            dead(seqs[1], "e1"),
            dead(seqs[2], "e2"),
        ])
        .await
        .unwrap();
    assert_eq!(f.pending().await, [seqs[3]]);

    assert_eq!(f.outbox.count_dead_letters(&f.client).await.unwrap(), 3);
    let all = f.outbox.dead_letters(&f.client, 10, 0).await.unwrap();
    assert_eq!(all.iter().map(|d| d.seq).collect::<Vec<_>>(), seqs[..3]);
    assert_same(&all[0].message, &messages[0]);
    assert_eq!(all[0].attempts, 2);
    assert_eq!(all[0].error, "e0");
    assert_eq!(all[1].attempts, 1);
    assert!(all[0].failed_at <= SystemTime::now() + Duration::from_secs(60));
    let page = f.outbox.dead_letters(&f.client, 1, 1).await.unwrap();
    assert_eq!(page.len(), 1);
    assert_eq!(page[0].seq, seqs[1]);

    // Replay: back in the outbox with the same id, no attempts, at the end of the queue.
    let replayed = f
        .outbox
        .replay_dead_letters(&f.client, &[messages[1].id(), uuid::Uuid::now_v7()])
        .await
        .unwrap();
    assert_eq!(replayed.len(), 1);
    let (id, new_seq) = replayed[0];
    assert_eq!(id, messages[1].id());
    assert!(new_seq > seqs[3]);
    let claimed = store.claim(ClaimRequest::new(10, &[])).await.unwrap();
    assert_eq!(
        claimed.iter().map(|c| c.seq).collect::<Vec<_>>(),
        [seqs[3], new_seq]
    );
    assert_same(&claimed[1].message, &messages[1]);
    assert_eq!(claimed[1].attempts, 0);
    assert_eq!(f.outbox.count_dead_letters(&f.client).await.unwrap(), 2);

    // Purge by id, then by age.
    assert_eq!(
        f.outbox
            .purge_dead_letters(&f.client, &[messages[0].id()])
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        f.outbox
            .purge_dead_letters_before(&f.client, SystemTime::now() - Duration::from_secs(3600))
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        f.outbox
            .purge_dead_letters_before(&f.client, SystemTime::now() + Duration::from_secs(3600))
            .await
            .unwrap(),
        1
    );
    assert_eq!(f.outbox.count_dead_letters(&f.client).await.unwrap(), 0);
}

#[tokio::test]
async fn replay_refuses_an_id_still_in_the_outbox() {
    let f = Fixture::new().await;
    let store = f.store();
    let m = message(None, 1);
    let seq = f.outbox.enqueue(&f.client, &m).await.unwrap();
    store.fail(&[dead(seq, "gone")]).await.unwrap();
    // The same message enqueued again (same id) while its dead letter exists.
    f.outbox.enqueue(&f.client, &m).await.unwrap();
    let error = f
        .outbox
        .replay_dead_letters(&f.client, &[m.id()])
        .await
        .unwrap_err();
    assert_eq!(
        error.code(),
        Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION)
    );
    assert_eq!(f.outbox.count_dead_letters(&f.client).await.unwrap(), 1);
}

/// Dead-letters `messages` (enqueued in one batch) through the store; returns their seqs.
async fn dead_letter_all(f: &Fixture, messages: &[outbox_core::Message]) -> Vec<i64> {
    let seqs = f.outbox.enqueue_batch(&f.client, messages).await.unwrap();
    let failures: Vec<_> = seqs.iter().map(|&s| dead(s, &format!("e{s}"))).collect();
    f.store().fail(&failures).await.unwrap();
    seqs
}

fn on(subject: &str, key: Option<&str>) -> outbox_core::Message {
    let builder = outbox_core::Message::builder(subject).payload("x");
    match key {
        Some(key) => builder.key(key),
        None => builder,
    }
    .build()
    .unwrap()
}

#[tokio::test]
async fn filters_select_by_id_subject_key_and_age() {
    use outbox_postgres::dead_letter::DeadLetterFilter;
    let f = Fixture::new().await;
    let messages = [
        on("a.one", Some("k1")),
        on("a.one", Some("k2")),
        on("a.two", Some("k1")),
        on("a.two", None),
    ];
    let seqs = dead_letter_all(&f, &messages).await;
    let seqs_of = |filter: DeadLetterFilter| {
        let f = &f;
        async move {
            let listed = f
                .outbox
                .dead_letters_matching(&f.client, &filter, 100, 0)
                .await
                .unwrap();
            let count = f
                .outbox
                .count_dead_letters_matching(&f.client, &filter)
                .await
                .unwrap();
            assert_eq!(count, listed.len() as u64, "{filter:?}");
            listed.iter().map(|d| d.seq).collect::<Vec<_>>()
        }
    };
    assert_eq!(seqs_of(DeadLetterFilter::all()).await, seqs);
    assert_eq!(
        seqs_of(DeadLetterFilter::all().subject("a.one")).await,
        seqs[..2]
    );
    assert_eq!(
        seqs_of(DeadLetterFilter::all().key("k1")).await,
        [seqs[0], seqs[2]]
    );
    assert_eq!(
        seqs_of(DeadLetterFilter::all().subject("a.two").key("k1")).await,
        [seqs[2]]
    );
    assert_eq!(
        seqs_of(DeadLetterFilter::all().ids([messages[3].id(), messages[1].id()])).await,
        [seqs[1], seqs[3]]
    );
    assert!(
        seqs_of(DeadLetterFilter::all().ids(Vec::new()))
            .await
            .is_empty()
    );
    // Age on the database's clock: backdate one dead letter by an hour.
    let backdate = format!(
        "UPDATE {}.dead_letters SET failed_at = now() - interval '1 hour' WHERE seq = $1",
        f.db.schema()
    );
    f.client.execute(&backdate, &[&seqs[2]]).await.unwrap();
    assert_eq!(
        seqs_of(DeadLetterFilter::all().older_than(Duration::from_secs(1800))).await,
        [seqs[2]]
    );
    assert!(
        seqs_of(DeadLetterFilter::all().older_than(Duration::MAX))
            .await
            .is_empty()
    );
    // Paging follows the listing order: oldest failure first.
    let page = f
        .outbox
        .dead_letters_matching(&f.client, &DeadLetterFilter::all(), 2, 0)
        .await
        .unwrap();
    assert_eq!(
        page.iter().map(|d| d.seq).collect::<Vec<_>>(),
        [seqs[2], seqs[0]]
    );
}

#[tokio::test]
async fn bulk_replay_runs_in_batches_in_seq_order_and_skips_ids_in_the_outbox() {
    use outbox_postgres::dead_letter::DeadLetterFilter;
    let f = Fixture::new().await;
    let messages: Vec<_> = (0..7)
        .map(|n| on("bulk.replay", Some(if n % 2 == 0 { "even" } else { "odd" })))
        .collect();
    let seqs = dead_letter_all(&f, &messages).await;
    // The same message enqueued again while its dead letter exists: that one stays put.
    f.outbox.enqueue(&f.client, &messages[4]).await.unwrap();
    let mut reports = Vec::new();
    let outcome = f
        .outbox
        .replay_dead_letters_matching(&f.client, &DeadLetterFilter::all(), 3, |p| reports.push(*p))
        .await
        .unwrap();
    assert_eq!(outcome.matched, 7);
    assert_eq!(outcome.done, 6);
    assert_eq!(outcome.skipped(), 1);
    assert_eq!(outcome.batches, 3);
    assert_eq!(
        reports.iter().map(|p| p.matched).collect::<Vec<_>>(),
        [3, 6, 7]
    );
    assert_eq!(reports.last(), Some(&outcome));
    let left = f.outbox.dead_letters(&f.client, 10, 0).await.unwrap();
    assert_eq!(left.iter().map(|d| d.seq).collect::<Vec<_>>(), [seqs[4]]);

    // Back in the outbox in their original order, attempts reset, after what was there.
    let claimed = f.store().claim(ClaimRequest::new(100, &[])).await.unwrap();
    let ids: Vec<_> = claimed.iter().map(|c| c.message.id()).collect();
    let mut expected = vec![messages[4].id()];
    expected.extend(
        messages
            .iter()
            .enumerate()
            .filter(|(n, _)| *n != 4)
            .map(|(_, m)| m.id()),
    );
    assert_eq!(ids, expected);
    assert!(claimed.iter().all(|c| c.attempts == 0));
}

#[tokio::test]
async fn bulk_operations_leave_dead_letters_newer_than_their_start_alone() {
    use outbox_postgres::dead_letter::DeadLetterFilter;
    let f = Fixture::new().await;
    let messages: Vec<_> = (0..2).map(|_| on("bulk.late", None)).collect();
    let seqs = dead_letter_all(&f, &messages).await;
    // After the first batch, a message is dead-lettered on another connection (as a replayed
    // message failing again would be). The callback blocks until that committed, so the next
    // batches run after it.
    let (outbox, pg) = (f.outbox.clone(), f.db.pg_config());
    let mut late = None;
    let outcome = f
        .outbox
        .replay_dead_letters_matching(&f.client, &DeadLetterFilter::all(), 1, |_| {
            if late.is_none() {
                let (outbox, pg) = (outbox.clone(), pg.clone());
                late = Some(
                    std::thread::spawn(move || dead_letter_elsewhere(outbox, pg))
                        .join()
                        .unwrap(),
                );
            }
        })
        .await
        .unwrap();
    assert_eq!((outcome.matched, outcome.done), (2, 2));
    let left = f.outbox.dead_letters(&f.client, 10, 0).await.unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(Some(left[0].seq), late);
    assert!(left[0].seq > seqs[1]);
}

/// Enqueues and dead-letters one message on a runtime and connection of its own; returns its seq.
fn dead_letter_elsewhere(outbox: outbox_postgres::PgOutbox, pg: tokio_postgres::Config) -> i64 {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let (client, connection) = pg.connect(tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(connection);
        let seq = outbox
            .enqueue(&client, &on("bulk.late", None))
            .await
            .unwrap();
        outbox_postgres::PgStore::new(&outbox, pg)
            .fail(&[dead(seq, "late")])
            .await
            .unwrap();
        seq
    })
}

#[tokio::test]
async fn bulk_purge_deletes_what_matches_in_batches() {
    use outbox_postgres::dead_letter::DeadLetterFilter;
    let f = Fixture::new().await;
    let messages: Vec<_> = (0..5)
        .map(|n| on(if n < 3 { "purge.a" } else { "purge.b" }, None))
        .collect();
    let seqs = dead_letter_all(&f, &messages).await;
    let mut batches = 0;
    let outcome = f
        .outbox
        .purge_dead_letters_matching(
            &f.client,
            &DeadLetterFilter::all().subject("purge.a"),
            2,
            |_| batches += 1,
        )
        .await
        .unwrap();
    assert_eq!((outcome.matched, outcome.done, outcome.batches), (3, 3, 2));
    assert_eq!(batches, 2);
    let left = f.outbox.dead_letters(&f.client, 10, 0).await.unwrap();
    assert_eq!(left.iter().map(|d| d.seq).collect::<Vec<_>>(), seqs[3..]);
    // Nothing older than a day: nothing purged, one batch that found nothing.
    let outcome = f
        .outbox
        .purge_dead_letters_matching(
            &f.client,
            &DeadLetterFilter::all().older_than(Duration::from_secs(86_400)),
            2,
            |_| {},
        )
        .await
        .unwrap();
    assert_eq!((outcome.matched, outcome.done), (0, 0));
    // An empty table: no batch at all.
    f.outbox
        .purge_dead_letters_matching(&f.client, &DeadLetterFilter::all(), 1000, |_| {})
        .await
        .unwrap();
    let outcome = f
        .outbox
        .purge_dead_letters_matching(&f.client, &DeadLetterFilter::all(), 1000, |_| {})
        .await
        .unwrap();
    assert_eq!(outcome, Default::default());
    assert_eq!(f.outbox.count_dead_letters(&f.client).await.unwrap(), 0);
}
