//! The store conformance suite: every behaviour a [`Store`] must have, one function each.
//!
//! A backend implements [`StoreHarness`] (how to enqueue, and how to look inside) and invokes
//! [`store_conformance!`](crate::store_conformance), which makes one `#[tokio::test]` per
//! property. Changing the meaning of the [`Store`] trait is not done until this suite covers it.
//!
//! # Examples
//!
//! ```
//! use outbox_testkit::store_suite::MemoryStoreHarness;
//!
//! async fn harness() -> MemoryStoreHarness {
//!     MemoryStoreHarness::default()
//! }
//!
//! outbox_testkit::store_conformance!(harness);
//! # fn main() {}
//! ```

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use outbox_core::memory::{MemoryBroker, MemoryStore};
use outbox_core::{
    CancellationToken, ClaimRequest, Failure, FailureAction, Message, Relay, RelayConfig,
    Standalone, Store,
};
use uuid::Uuid;

/// How the suite drives and inspects a store.
#[async_trait]
pub trait StoreHarness: Send + Sync + 'static {
    /// The store under test.
    type Store: Store + Clone;
    /// A handle on the store.
    fn store(&self) -> Self::Store;
    /// Enqueues each message in its own committed transaction; returns their seqs.
    async fn enqueue(&self, messages: &[Message]) -> Vec<i64>;
    /// Enqueues the messages in one transaction that rolls back.
    async fn enqueue_rolled_back(&self, messages: &[Message]);
    /// Seqs still in the outbox, ascending.
    async fn pending(&self) -> Vec<i64>;
    /// Dead letters as (message id, error), oldest first.
    async fn dead_letters(&self) -> Vec<(Uuid, String)>;
}

/// The in-memory store's harness: the reference for other backends.
#[derive(Clone, Debug, Default)]
pub struct MemoryStoreHarness {
    store: MemoryStore,
}

#[async_trait]
impl StoreHarness for MemoryStoreHarness {
    type Store = MemoryStore;

    fn store(&self) -> MemoryStore {
        self.store.clone()
    }

    async fn enqueue(&self, messages: &[Message]) -> Vec<i64> {
        messages
            .iter()
            .map(|m| self.store.enqueue(m.clone()))
            .collect()
    }

    async fn enqueue_rolled_back(&self, messages: &[Message]) {
        let mut tx = self.store.begin();
        for m in messages {
            tx.enqueue(m.clone());
        }
        tx.rollback();
    }

    async fn pending(&self) -> Vec<i64> {
        self.store.pending().iter().map(|c| c.seq).collect()
    }

    async fn dead_letters(&self) -> Vec<(Uuid, String)> {
        self.store
            .dead_letters()
            .into_iter()
            .map(|d| (d.message.id(), d.error))
            .collect()
    }
}

fn message(key: Option<&str>, n: usize) -> Message {
    let builder = Message::builder("conformance.store").payload(format!("payload {n}"));
    match key {
        Some(key) => builder.key(key),
        None => builder,
    }
    .build()
    .unwrap_or_else(|e| panic!("test message: {e}"))
}

async fn claim_all<S: Store>(store: &S, exclude: &[i64]) -> Vec<i64> {
    store
        .claim(ClaimRequest::new(10_000, exclude))
        .await
        .unwrap_or_else(|e| panic!("claim: {e}"))
        .iter()
        .map(|c| c.seq)
        .collect()
}

fn retry(seq: i64, after: Duration) -> Failure {
    Failure {
        seq,
        error: "transient failure".into(),
        action: FailureAction::Retry { after },
    }
}

/// Committed messages are claimed oldest first, with everything they were enqueued with.
pub async fn claims_committed_messages_in_seq_order<H: StoreHarness>(h: H) {
    let sent = vec![
        Message::builder("conformance.a")
            .key("k1")
            .payload(&b"\x00\xffbinary"[..])
            .header("X-Trace", "abc")
            .build()
            .unwrap_or_else(|e| panic!("{e}")),
        message(None, 2),
        message(Some("k2"), 3),
    ];
    let seqs = h.enqueue(&sent).await;
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "seqs not increasing: {seqs:?}"
    );
    let claimed = h
        .store()
        .claim(ClaimRequest::new(10, &[]))
        .await
        .unwrap_or_else(|e| panic!("claim: {e}"));
    assert_eq!(claimed.iter().map(|c| c.seq).collect::<Vec<_>>(), seqs);
    for (got, want) in claimed.iter().zip(&sent) {
        assert_eq!(got.attempts, 0);
        assert_eq!(got.message.id(), want.id());
        assert_eq!(got.message.subject(), want.subject());
        assert_eq!(got.message.key(), want.key());
        assert_eq!(got.message.payload(), want.payload());
        assert_eq!(got.message.headers(), want.headers());
    }
}

/// Messages of a transaction that rolled back are never claimed.
pub async fn rolled_back_messages_are_never_claimed<H: StoreHarness>(h: H) {
    h.enqueue_rolled_back(&[message(Some("a"), 1), message(None, 2)])
        .await;
    let kept = h.enqueue(&[message(Some("a"), 3)]).await;
    assert_eq!(claim_all(&h.store(), &[]).await, kept);
    assert_eq!(h.pending().await, kept);
}

/// A claim returns at most `limit` messages and never one in `exclude`.
pub async fn claim_honours_limit_and_exclude<H: StoreHarness>(h: H) {
    let msgs: Vec<_> = (0..10).map(|n| message(None, n)).collect();
    let seqs = h.enqueue(&msgs).await;
    let store = h.store();
    let first = store
        .claim(ClaimRequest::new(4, &[]))
        .await
        .unwrap_or_else(|e| panic!("claim: {e}"));
    assert_eq!(first.iter().map(|c| c.seq).collect::<Vec<_>>(), seqs[..4]);
    let held: Vec<i64> = first.iter().map(|c| c.seq).collect();
    assert_eq!(claim_all(&store, &held).await, seqs[4..]);
    // Claiming does not remove anything.
    assert_eq!(h.pending().await, seqs);
}

/// With completed and held messages between the rest, a claim returns the lowest due seqs, up to
/// `limit`, from every stretch between them, in seq order.
pub async fn claim_spans_completed_and_held_messages<H: StoreHarness>(h: H) {
    let msgs: Vec<_> = (0..12).map(|n| message(None, n)).collect();
    let s = h.enqueue(&msgs).await;
    let store = h.store();
    store
        .complete(&[s[2], s[3], s[9]])
        .await
        .unwrap_or_else(|e| panic!("complete: {e}"));
    let held = [s[0], s[6]];
    let claim = |limit| {
        let store = &store;
        async move {
            store
                .claim(ClaimRequest::new(limit, &held))
                .await
                .unwrap_or_else(|e| panic!("claim: {e}"))
                .iter()
                .map(|c| c.seq)
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(claim(3).await, [s[1], s[4], s[5]]);
    assert_eq!(claim(5).await, [s[1], s[4], s[5], s[7], s[8]]);
    assert_eq!(
        claim(100).await,
        [s[1], s[4], s[5], s[7], s[8], s[10], s[11]]
    );
}

/// Several messages of one key may come in one batch, in enqueue order.
pub async fn messages_of_a_key_come_in_order<H: StoreHarness>(h: H) {
    let msgs: Vec<_> = (0..20)
        .map(|n| message(Some(["x", "y"][n % 2]), n))
        .collect();
    let seqs = h.enqueue(&msgs).await;
    assert_eq!(claim_all(&h.store(), &[]).await, seqs);
}

/// Completed messages are gone; completing twice, or an unknown seq, is not an error.
pub async fn complete_removes_for_good<H: StoreHarness>(h: H) {
    let seqs = h
        .enqueue(&[message(Some("a"), 1), message(Some("a"), 2)])
        .await;
    let store = h.store();
    store
        .complete(&seqs[..1])
        .await
        .unwrap_or_else(|e| panic!("complete: {e}"));
    store
        .complete(&[seqs[0], i64::MAX - 1])
        .await
        .unwrap_or_else(|e| panic!("complete again: {e}"));
    assert_eq!(h.pending().await, seqs[1..]);
    assert_eq!(claim_all(&store, &[]).await, seqs[1..]);
}

/// A message waiting for a retry blocks later messages of its key, and only of its key; once
/// due it is claimed again with its attempt counted.
pub async fn retry_blocks_its_key_until_due<H: StoreHarness>(h: H) {
    let seqs = h
        .enqueue(&[
            message(Some("a"), 1),
            message(Some("a"), 2),
            message(Some("b"), 3),
            message(None, 4),
        ])
        .await;
    let store = h.store();
    store
        .fail(&[retry(seqs[0], Duration::from_millis(300))])
        .await
        .unwrap_or_else(|e| panic!("fail: {e}"));
    assert_eq!(claim_all(&store, &[]).await, vec![seqs[2], seqs[3]]);

    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let claimed = store
            .claim(ClaimRequest::new(100, &[]))
            .await
            .unwrap_or_else(|e| panic!("claim: {e}"));
        if claimed.len() == 4 {
            assert_eq!(claimed.iter().map(|c| c.seq).collect::<Vec<_>>(), seqs);
            assert_eq!(claimed[0].attempts, 1);
            assert_eq!(claimed[1].attempts, 0);
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "retried message never became due again"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A dead-lettered message leaves the outbox with its error, and its key flows again.
pub async fn dead_letter_unblocks_its_key<H: StoreHarness>(h: H) {
    let msgs = [message(Some("a"), 1), message(Some("a"), 2)];
    let seqs = h.enqueue(&msgs).await;
    let store = h.store();
    store
        .fail(&[retry(seqs[0], Duration::from_secs(3600))])
        .await
        .unwrap_or_else(|e| panic!("fail: {e}"));
    assert!(claim_all(&store, &[]).await.is_empty());
    store
        .fail(&[Failure {
            seq: seqs[0],
            error: "payload too large".into(),
            action: FailureAction::DeadLetter,
        }])
        .await
        .unwrap_or_else(|e| panic!("fail: {e}"));
    assert_eq!(h.pending().await, seqs[1..]);
    assert_eq!(claim_all(&store, &[]).await, seqs[1..]);
    let dead = h.dead_letters().await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].0, msgs[0].id());
    assert!(
        dead[0].1.contains("payload too large"),
        "error kept: {dead:?}"
    );
}

/// A scheduled message is not claimed before it is due, holds back the later messages of its
/// key until then, and is claimed in order afterwards.
pub async fn scheduled_message_waits_and_holds_its_key<H: StoreHarness>(h: H) {
    let scheduled = Message::builder("conformance.store")
        .key("a")
        .delay(Duration::from_millis(400))
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    let seqs = h
        .enqueue(&[scheduled, message(Some("a"), 2), message(Some("b"), 3)])
        .await;
    let store = h.store();
    assert_eq!(claim_all(&store, &[]).await, vec![seqs[2]]);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let claimed = claim_all(&store, &[]).await;
        if claimed.len() == 3 {
            assert_eq!(claimed, seqs);
            break;
        }
        assert_eq!(claimed, vec![seqs[2]], "nothing of key a before it is due");
        assert!(
            tokio::time::Instant::now() < deadline,
            "scheduled message never became due"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The backlog, where the store reports one, counts what waits and how late the oldest due
/// message is; both return to zero once everything is completed.
pub async fn backlog_counts_pending_and_lag<H: StoreHarness>(h: H) {
    let store = h.store();
    let seqs = h.enqueue(&[message(Some("a"), 1), message(None, 2)]).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let Some(backlog) = store
        .backlog()
        .await
        .unwrap_or_else(|e| panic!("backlog: {e}"))
    else {
        return;
    };
    assert_eq!(backlog.pending, 2);
    assert!(backlog.lag >= Duration::from_millis(10), "{backlog:?}");
    store
        .complete(&seqs)
        .await
        .unwrap_or_else(|e| panic!("complete: {e}"));
    let backlog = store
        .backlog()
        .await
        .unwrap_or_else(|e| panic!("backlog: {e}"))
        .unwrap_or_else(|| panic!("backlog went away"));
    assert_eq!(backlog.pending, 0);
    assert_eq!(backlog.lag, Duration::ZERO);
}

/// The relay moves everything through this store: each message once, per-key order kept, the
/// outbox empty afterwards.
pub async fn relays_everything_in_key_order<H: StoreHarness>(h: H) {
    let msgs: Vec<_> = (0..600)
        .map(|n| {
            message(
                if n % 7 == 0 {
                    None
                } else {
                    Some(["a", "b", "c", "d", "e"][n % 5])
                },
                n,
            )
        })
        .collect();
    h.enqueue(&msgs).await;
    let broker = MemoryBroker::new();
    let config = RelayConfig::builder()
        .batch_size(50)
        .max_in_flight(200)
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    let relay =
        Relay::new(h.store(), broker.clone(), Standalone, config).unwrap_or_else(|e| panic!("{e}"));
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(relay.run(shutdown.clone()));
    tokio::time::timeout(Duration::from_secs(30), broker.wait_for(msgs.len()))
        .await
        .unwrap_or_else(|_| panic!("not everything was published"));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !h.pending().await.is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "outbox not emptied");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    shutdown.cancel();
    task.await.unwrap_or_else(|e| panic!("relay task: {e}"));
    let published = broker.published();
    assert_eq!(published.len(), msgs.len());
    assert_eq!(broker.duplicates(), 0);
    let position: HashMap<Uuid, usize> =
        msgs.iter().enumerate().map(|(i, m)| (m.id(), i)).collect();
    let mut last: HashMap<&str, usize> = HashMap::new();
    for m in &published {
        if let Some(key) = m.key() {
            let pos = position[&m.id()];
            if let Some(prev) = last.insert(key, pos) {
                assert!(
                    prev < pos,
                    "key {key}: message {pos} published after {prev}"
                );
            }
        }
    }
}

/// Makes one `#[tokio::test]` per store property, each with a fresh harness from `$make`
/// (an async fn returning a [`StoreHarness`]).
#[macro_export]
macro_rules! store_conformance {
    ($make:path) => {
        $crate::__conformance_cases!(store_suite, $make;
            claims_committed_messages_in_seq_order,
            rolled_back_messages_are_never_claimed,
            claim_honours_limit_and_exclude,
            claim_spans_completed_and_held_messages,
            messages_of_a_key_come_in_order,
            complete_removes_for_good,
            retry_blocks_its_key_until_due,
            dead_letter_unblocks_its_key,
            scheduled_message_waits_and_holds_its_key,
            backlog_counts_pending_and_lag,
            relays_everything_in_key_order,
        );
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_cases {
    ($suite:ident, $make:path; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                $crate::$suite::$case($make().await).await;
            }
        )*
    };
}
