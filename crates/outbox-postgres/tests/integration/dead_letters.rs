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
