//! In-memory [`Store`], [`Broker`] and [`Elector`]: the reference backend.
//!
//! They follow the same contracts as the real backends (and pass the same conformance suites in
//! `outbox-testkit`), so they serve unit tests of the relay and of code built on it. They keep
//! nothing across a process restart.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;
use uuid::Uuid;

use crate::{
    Ack, Backlog, Broker, ClaimRequest, Claimed, Elector, Error, Failure, FailureAction,
    Leadership, Message, PendingAck, Schedule, Store, Term,
};

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock leaves plain data behind; keep using it.
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A message that was given up on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeadLetter {
    /// Its seq in the outbox.
    pub seq: i64,
    /// Failed attempts, the last one included.
    pub attempts: u32,
    /// The last error.
    pub error: String,
    /// The message.
    pub message: Message,
}

#[derive(Debug)]
struct Row {
    message: Message,
    attempts: u32,
    available_at: Instant,
    last_error: Option<String>,
}

#[derive(Debug, Default)]
struct StoreState {
    next_seq: i64,
    rows: BTreeMap<i64, Row>,
    dead: Vec<DeadLetter>,
}

#[derive(Debug, Default)]
struct StoreInner {
    state: Mutex<StoreState>,
    work: Notify,
}

/// An in-memory outbox. Cloning gives another handle on the same outbox.
#[derive(Clone, Debug, Default)]
pub struct MemoryStore {
    inner: Arc<StoreInner>,
}

impl MemoryStore {
    /// An empty outbox.
    pub fn new() -> Self {
        Self::default()
    }

    /// Enqueues `message` in a transaction of its own; returns its seq.
    pub fn enqueue(&self, message: Message) -> i64 {
        let mut tx = self.begin();
        let seq = tx.enqueue(message);
        tx.commit();
        seq
    }

    /// Starts a transaction. Its messages get their seq now and become visible at
    /// [`commit`](MemoryTransaction::commit); dropping it rolls back.
    pub fn begin(&self) -> MemoryTransaction {
        MemoryTransaction {
            store: self.clone(),
            rows: Vec::new(),
        }
    }

    /// Number of messages waiting (due or not).
    pub fn pending_len(&self) -> usize {
        lock(&self.inner.state).rows.len()
    }

    /// The messages waiting, in seq order.
    pub fn pending(&self) -> Vec<Claimed> {
        lock(&self.inner.state)
            .rows
            .iter()
            .map(|(seq, row)| Claimed {
                seq: *seq,
                attempts: row.attempts,
                message: row.message.clone(),
            })
            .collect()
    }

    /// The last error recorded for the message with `seq`, if it is still waiting.
    pub fn last_error(&self, seq: i64) -> Option<String> {
        lock(&self.inner.state)
            .rows
            .get(&seq)
            .and_then(|row| row.last_error.clone())
    }

    /// The dead letters, oldest first.
    pub fn dead_letters(&self) -> Vec<DeadLetter> {
        lock(&self.inner.state).dead.clone()
    }

    /// Moves a dead letter back into the outbox with its original id and no attempts.
    /// Returns whether it was found.
    pub fn replay(&self, seq: i64) -> bool {
        let mut state = lock(&self.inner.state);
        let Some(index) = state.dead.iter().position(|d| d.seq == seq) else {
            return false;
        };
        let dead = state.dead.remove(index);
        state.next_seq += 1;
        let seq = state.next_seq;
        state.rows.insert(
            seq,
            Row {
                message: dead.message,
                attempts: 0,
                available_at: Instant::now(),
                last_error: None,
            },
        );
        drop(state);
        self.inner.work.notify_one();
        true
    }
}

/// A transaction on a [`MemoryStore`]: all of its messages become visible at once, or none.
#[derive(Debug)]
#[must_use = "a transaction that is dropped rolls back"]
pub struct MemoryTransaction {
    store: MemoryStore,
    rows: Vec<(i64, Message)>,
}

impl MemoryTransaction {
    /// Enqueues `message`; returns the seq it will have.
    pub fn enqueue(&mut self, message: Message) -> i64 {
        let mut state = lock(&self.store.inner.state);
        state.next_seq += 1;
        let seq = state.next_seq;
        self.rows.push((seq, message));
        seq
    }

    /// Makes the messages visible to the relay.
    pub fn commit(mut self) {
        let now = Instant::now();
        let mut state = lock(&self.store.inner.state);
        for (seq, message) in self.rows.drain(..) {
            let available_at = match message.schedule() {
                Some(Schedule::After(delay)) => now + delay,
                Some(Schedule::At(at)) => {
                    now + at
                        .duration_since(std::time::SystemTime::now())
                        .unwrap_or_default()
                }
                _ => now,
            };
            state.rows.insert(
                seq,
                Row {
                    message,
                    attempts: 0,
                    available_at,
                    last_error: None,
                },
            );
        }
        drop(state);
        self.store.inner.work.notify_one();
    }

    /// Discards the messages.
    pub fn rollback(self) {}
}

#[async_trait]
impl Store for MemoryStore {
    async fn claim(&self, request: ClaimRequest<'_>) -> Result<Vec<Claimed>, Error> {
        let now = Instant::now();
        let exclude: HashSet<i64> = request.exclude.iter().copied().collect();
        let state = lock(&self.inner.state);
        let mut blocked: HashSet<&str> = HashSet::new();
        let mut batch = Vec::new();
        for (seq, row) in &state.rows {
            if batch.len() >= request.limit {
                break;
            }
            let key = row.message.key();
            if key.is_some_and(|k| blocked.contains(k)) {
                continue;
            }
            if row.available_at > now {
                if let Some(key) = key {
                    blocked.insert(key);
                }
                continue;
            }
            if exclude.contains(seq) {
                continue;
            }
            batch.push(Claimed {
                seq: *seq,
                attempts: row.attempts,
                message: row.message.clone(),
            });
        }
        Ok(batch)
    }

    async fn complete(&self, seqs: &[i64]) -> Result<(), Error> {
        let mut state = lock(&self.inner.state);
        for seq in seqs {
            state.rows.remove(seq);
        }
        Ok(())
    }

    async fn fail(&self, failures: &[Failure]) -> Result<(), Error> {
        let now = Instant::now();
        let mut state = lock(&self.inner.state);
        for failure in failures {
            match failure.action {
                FailureAction::Retry { after } => {
                    if let Some(row) = state.rows.get_mut(&failure.seq) {
                        row.attempts += 1;
                        row.available_at = now + after;
                        row.last_error = Some(failure.error.clone());
                    }
                }
                FailureAction::DeadLetter => {
                    if let Some(row) = state.rows.remove(&failure.seq) {
                        state.dead.push(DeadLetter {
                            seq: failure.seq,
                            attempts: row.attempts + 1,
                            error: failure.error.clone(),
                            message: row.message,
                        });
                    }
                }
            }
        }
        Ok(())
    }

    async fn wait_for_work(&self, timeout: Duration) {
        let _ = tokio::time::timeout(timeout, self.inner.work.notified()).await;
    }

    async fn backlog(&self) -> Result<Option<Backlog>, Error> {
        let now = Instant::now();
        let state = lock(&self.inner.state);
        let oldest_due = state
            .rows
            .values()
            .filter(|row| row.available_at <= now)
            .map(|row| row.available_at)
            .min();
        let lag = oldest_due.map_or(Duration::ZERO, |at| now - at);
        Ok(Some(Backlog::new(state.rows.len() as u64, lag)))
    }
}

#[derive(Debug, Default)]
struct BrokerState {
    seen: HashSet<Uuid>,
    published: Vec<Message>,
    duplicates: usize,
}

#[derive(Debug)]
struct BrokerInner {
    state: Mutex<BrokerState>,
    count: watch::Sender<usize>,
    max_payload: usize,
}

/// An in-memory broker that deduplicates by message id, as JetStream does.
///
/// Cloning gives another handle on the same broker.
#[derive(Clone, Debug)]
pub struct MemoryBroker {
    inner: Arc<BrokerInner>,
}

impl Default for MemoryBroker {
    fn default() -> Self {
        Self::with_max_payload(1024 * 1024)
    }
}

impl MemoryBroker {
    /// A broker accepting payloads up to 1 MiB (NATS' default).
    pub fn new() -> Self {
        Self::default()
    }

    /// A broker that rejects payloads over `max_payload` bytes with a permanent error.
    pub fn with_max_payload(max_payload: usize) -> Self {
        Self {
            inner: Arc::new(BrokerInner {
                state: Mutex::default(),
                count: watch::Sender::new(0),
                max_payload,
            }),
        }
    }

    /// Messages accepted, in the order they were accepted, without duplicates.
    pub fn published(&self) -> Vec<Message> {
        lock(&self.inner.state).published.clone()
    }

    /// Number of publishes dropped as duplicates.
    pub fn duplicates(&self) -> usize {
        lock(&self.inner.state).duplicates
    }

    /// Waits until at least `n` distinct messages were accepted.
    pub async fn wait_for(&self, n: usize) {
        let mut count = self.inner.count.subscribe();
        // The sender lives as long as `self`, so this cannot fail.
        let _ = count.wait_for(|c| *c >= n).await;
    }
}

#[async_trait]
impl Broker for MemoryBroker {
    async fn publish(&self, message: &Message) -> Result<PendingAck, Error> {
        if message.payload().len() > self.inner.max_payload {
            return Err(Error::broker_permanent(format!(
                "maximum payload exceeded: {} > {} bytes",
                message.payload().len(),
                self.inner.max_payload
            )));
        }
        let mut state = lock(&self.inner.state);
        let ack = if state.seen.insert(message.id()) {
            state.published.push(message.clone());
            let n = state.published.len();
            drop(state);
            self.inner.count.send_replace(n);
            Ack::new()
        } else {
            state.duplicates += 1;
            Ack::duplicate()
        };
        Ok(PendingAck::ready(Ok(ack)))
    }
}

#[derive(Debug, Default)]
struct ElectionInner {
    holder: Mutex<Option<Term>>,
    changed: Notify,
}

/// A group of in-memory electors: at most one of them leads at a time.
#[derive(Clone, Debug, Default)]
pub struct MemoryElection {
    inner: Arc<ElectionInner>,
}

/// One candidate of a [`MemoryElection`].
#[derive(Clone, Debug)]
pub struct MemoryElector {
    inner: Arc<ElectionInner>,
}

impl MemoryElection {
    /// A group with no leader.
    pub fn new() -> Self {
        Self::default()
    }

    /// A new candidate in this group.
    pub fn elector(&self) -> MemoryElector {
        MemoryElector {
            inner: self.inner.clone(),
        }
    }

    /// Takes leadership away from the current leader, as a lost session would.
    pub fn depose(&self) {
        if let Some(term) = lock(&self.inner.holder).take() {
            term.lose();
        }
        self.inner.changed.notify_waiters();
    }

    /// Whether some candidate leads now.
    pub fn has_leader(&self) -> bool {
        lock(&self.inner.holder)
            .as_ref()
            .is_some_and(|t| !t.is_over())
    }
}

#[async_trait]
impl Elector for MemoryElector {
    async fn campaign(&self) -> Result<Leadership, Error> {
        loop {
            let changed = self.inner.changed.notified();
            {
                let mut holder = lock(&self.inner.holder);
                if holder.as_ref().is_none_or(Term::is_over) {
                    let (leadership, term) = Leadership::new();
                    *holder = Some(term.clone());
                    let inner = self.inner.clone();
                    tokio::spawn(async move {
                        term.resigned().await;
                        inner.changed.notify_waiters();
                    });
                    return Ok(leadership);
                }
            }
            changed.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(key: &str) -> Message {
        Message::builder("t").key(key).build().unwrap()
    }

    #[tokio::test]
    async fn rolled_back_messages_are_never_claimed_and_late_commits_are() {
        let store = MemoryStore::new();
        let mut early = store.begin();
        early.enqueue(msg("a"));
        let mut rolled = store.begin();
        rolled.enqueue(msg("b"));
        store.enqueue(msg("c"));
        rolled.rollback();
        let got = store.claim(ClaimRequest::new(10, &[])).await.unwrap();
        assert_eq!(got.len(), 1);
        early.commit();
        let got = store.claim(ClaimRequest::new(10, &[])).await.unwrap();
        assert_eq!(got.iter().map(|c| c.seq).collect::<Vec<_>>(), vec![1, 3]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_message_waiting_for_retry_blocks_its_key_only() {
        let store = MemoryStore::new();
        let a1 = store.enqueue(msg("a"));
        store.enqueue(msg("a"));
        let b = store.enqueue(msg("b"));
        store
            .fail(&[Failure {
                seq: a1,
                error: "x".into(),
                action: FailureAction::Retry {
                    after: Duration::from_secs(1),
                },
            }])
            .await
            .unwrap();
        let got = store.claim(ClaimRequest::new(10, &[])).await.unwrap();
        assert_eq!(got.iter().map(|c| c.seq).collect::<Vec<_>>(), vec![b]);
        tokio::time::advance(Duration::from_secs(2)).await;
        let got = store.claim(ClaimRequest::new(10, &[])).await.unwrap();
        assert_eq!(got.len(), 3);
        assert_eq!(got[0].attempts, 1);
    }

    #[tokio::test]
    async fn one_leader_at_a_time() {
        let election = MemoryElection::new();
        let first = election.elector().campaign().await.unwrap();
        let second = election.elector();
        let waiting = tokio::spawn(async move { second.campaign().await });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        drop(first);
        let second = waiting.await.unwrap().unwrap();
        election.depose();
        assert!(second.is_lost());
    }
}
