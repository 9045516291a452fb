//! The [`Store`] trait: where committed messages wait until the broker acknowledged them.

use std::time::Duration;

use async_trait::async_trait;

use crate::{Error, Message};

/// A message the relay claimed from the store, with its place in the outbox.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claimed {
    /// Enqueue order: strictly increasing in the order messages were written.
    pub seq: i64,
    /// Failed publish attempts so far.
    pub attempts: u32,
    /// The message itself.
    pub message: Message,
}

/// A snapshot of a store's backlog.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Backlog {
    /// Messages in the outbox, due or not.
    pub pending: u64,
    /// Age of the oldest due message; zero when none is due.
    pub lag: Duration,
}

impl Backlog {
    /// A snapshot.
    pub fn new(pending: u64, lag: Duration) -> Self {
        Self { pending, lag }
    }
}

/// What [`Store::claim`] should return.
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub struct ClaimRequest<'a> {
    /// The most messages to return.
    pub limit: usize,
    /// Messages the relay already holds (published, or waiting behind an earlier message of their
    /// key, and not yet completed or failed): never return these.
    pub exclude: &'a [i64],
}

impl<'a> ClaimRequest<'a> {
    /// A request for up to `limit` messages, skipping the seqs in `exclude`.
    pub fn new(limit: usize, exclude: &'a [i64]) -> Self {
        Self { limit, exclude }
    }
}

/// A failed publish, and what the store should do about it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    /// The message's seq.
    pub seq: i64,
    /// The error, as text, kept with the message.
    pub error: String,
    /// Retry later, or give up.
    pub action: FailureAction,
}

/// What happens to a message whose publish failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureAction {
    /// Count the attempt and make the message due again after this delay (measured on the
    /// store's clock). Later messages of its key stay blocked until it is published.
    Retry {
        /// How long to wait before the next attempt.
        after: Duration,
    },
    /// Move the message to the dead letters, in the same transaction that removes it from the
    /// outbox, which unblocks its key.
    DeadLetter,
}

/// Where committed messages wait.
///
/// # Contract
///
/// Every implementation passes the testkit's store conformance suite, which checks:
///
/// - [`claim`](Store::claim) returns committed, due messages in `seq` order, never one listed in
///   `exclude`, and never a message while an earlier message of its key is waiting for a retry
///   (not yet due). Several messages of one key may come in one batch, in order.
/// - [`complete`](Store::complete) removes messages for good; completing an unknown seq is not an
///   error (a message may be completed twice after a crash).
/// - [`fail`](Store::fail) reschedules or dead-letters each message as told.
/// - Messages of rolled-back transactions are never returned.
///
/// The relay may run a [`complete`](Store::complete) and a [`claim`](Store::claim) at the same
/// time (it pipelines them into one round trip); the seqs being completed are in the claim's
/// `exclude` list, so either order of execution is correct.
///
/// A store used under an [`Elector`](crate::Elector) should refuse to claim or complete when this
/// instance no longer leads (the PostgreSQL store does this by working on the session that holds
/// the leadership lock).
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Claims up to `request.limit` due messages, oldest first, heads of keys only.
    async fn claim(&self, request: ClaimRequest<'_>) -> Result<Vec<Claimed>, Error>;

    /// Removes messages the broker acknowledged.
    async fn complete(&self, seqs: &[i64]) -> Result<(), Error>;

    /// Records failed publishes: reschedules or dead-letters each message.
    async fn fail(&self, failures: &[Failure]) -> Result<(), Error>;

    /// How many messages wait, and how long the oldest due one has waited; `None` when the
    /// store cannot tell cheaply. Sampled by the relay for the `outbox_pending_messages` and
    /// `outbox_lag_seconds` gauges. The default returns `None`.
    async fn backlog(&self) -> Result<Option<Backlog>, Error> {
        Ok(None)
    }

    /// Upkeep the store does while its relay leads, such as purging published messages kept
    /// for a retention period. Called every
    /// [`backlog_interval`](crate::RelayConfig::backlog_interval), right after the backlog is
    /// sampled; it should do a bounded amount of work and return. The default does nothing.
    async fn housekeep(&self) -> Result<(), Error> {
        Ok(())
    }

    /// Waits until new messages may be due, or until `timeout` passed.
    ///
    /// A wake-up is a hint: the relay claims after it either way. The default sleeps for
    /// `timeout`; stores with a notification channel return early.
    async fn wait_for_work(&self, timeout: Duration) {
        tokio::time::sleep(timeout).await;
    }
}
