//! Dead-letter administration: list, replay and purge messages the relay gave up on.

use std::time::{Duration, SystemTime};

use outbox_core::Message;
use tokio_postgres::Row;
use tokio_postgres::types::{ToSql, Type};
use uuid::Uuid;

use crate::outbox::{MessageColumns, column};
use crate::{Error, Executor, PgOutbox};

/// The longest [`DeadLetterFilter::older_than`] honoured as given; longer ones mean this long.
/// (A cutoff of `now()` minus i64::MAX microseconds would be out of PostgreSQL's timestamp range.)
const MAX_AGE: Duration = Duration::from_secs(1000 * 366 * 24 * 3600);

/// A message the relay gave up on, kept with why.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct DeadLetter {
    /// Its seq in the outbox when it failed.
    pub seq: i64,
    /// Failed publish attempts, the last one included.
    pub attempts: u32,
    /// The last error.
    pub error: String,
    /// When it was dead-lettered (database clock).
    pub failed_at: SystemTime,
    /// The message, with its original id.
    pub message: Message,
}

/// Which dead letters a list, count, replay or purge applies to: those matching every condition
/// set. The default ([`DeadLetterFilter::all`]) sets none and matches every dead letter.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use outbox_postgres::dead_letter::DeadLetterFilter;
///
/// let stale_orders = DeadLetterFilter::all()
///     .subject("orders.created")
///     .older_than(Duration::from_secs(7 * 24 * 3600));
/// assert!(!stale_orders.is_all());
/// assert!(DeadLetterFilter::default().is_all());
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct DeadLetterFilter {
    /// Only dead letters of these message ids. Default: `None` (any id).
    pub ids: Option<Vec<Uuid>>,
    /// Only dead letters with exactly this subject. Default: `None` (any subject).
    pub subject: Option<String>,
    /// Only dead letters with exactly this key. Default: `None` (any key, or none).
    pub key: Option<String>,
    /// Only dead letters that failed more than this long ago, by the database's clock.
    /// Default: `None` (any age). Ages beyond 1,000 years count as 1,000 years.
    pub older_than: Option<Duration>,
}

impl DeadLetterFilter {
    /// The filter that matches every dead letter.
    pub fn all() -> Self {
        Self::default()
    }

    /// Sets [`DeadLetterFilter::ids`](field@DeadLetterFilter::ids).
    #[must_use]
    pub fn ids(mut self, ids: impl Into<Vec<Uuid>>) -> Self {
        self.ids = Some(ids.into());
        self
    }

    /// Sets [`DeadLetterFilter::subject`](field@DeadLetterFilter::subject).
    #[must_use]
    pub fn subject(mut self, subject: impl Into<String>) -> Self {
        self.subject = Some(subject.into());
        self
    }

    /// Sets [`DeadLetterFilter::key`](field@DeadLetterFilter::key).
    #[must_use]
    pub fn key(mut self, key: impl Into<String>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// Sets [`DeadLetterFilter::older_than`](field@DeadLetterFilter::older_than).
    #[must_use]
    pub fn older_than(mut self, age: Duration) -> Self {
        self.older_than = Some(age);
        self
    }

    /// Whether no condition is set, so the filter matches every dead letter.
    pub fn is_all(&self) -> bool {
        self == &Self::default()
    }

    /// Runs `statement`, whose first four parameters are this filter's, followed by `extra`.
    async fn query<C: Executor + ?Sized>(
        &self,
        client: &C,
        statement: &str,
        extra: &[(&(dyn ToSql + Sync), Type)],
    ) -> Result<Vec<Row>, tokio_postgres::Error> {
        let age_us = self
            .older_than
            .map(|age| i64::try_from(age.min(MAX_AGE).as_micros()).unwrap_or(i64::MAX));
        let mut params: Vec<(&(dyn ToSql + Sync), Type)> = vec![
            (&self.ids, Type::UUID_ARRAY),
            (&self.subject, Type::TEXT),
            (&self.key, Type::TEXT),
            (&age_us, Type::INT8),
        ];
        params.extend_from_slice(extra);
        client.query_typed(statement, &params).await
    }
}

/// Running totals of a bulk replay or purge
/// ([`PgOutbox::replay_dead_letters_matching`], [`PgOutbox::purge_dead_letters_matching`]),
/// reported after each batch; the last value is the outcome.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct BulkProgress {
    /// Batches run so far.
    pub batches: u64,
    /// Dead letters that matched the filter when their batch ran.
    pub matched: u64,
    /// Of those, replayed (moved back into the outbox) or purged.
    pub done: u64,
}

impl BulkProgress {
    /// Matched but not done: gone meanwhile (replayed or purged by someone else) or, for a
    /// replay, left in place because a message with the same id is still in the outbox.
    pub fn skipped(&self) -> u64 {
        self.matched.saturating_sub(self.done)
    }
}

/// Which batch statement a bulk operation runs.
#[derive(Clone, Copy, Debug)]
enum Bulk {
    Replay,
    Purge,
}

/// The dead letters of a listing's rows.
fn dead_letters_from_rows(rows: &[Row]) -> Result<Vec<DeadLetter>, Error> {
    const OP: &str = "list dead letters";
    let Some(columns) = rows.first().map(MessageColumns::of).transpose()? else {
        return Ok(Vec::new());
    };
    rows.iter()
        .map(|row| {
            Ok(DeadLetter {
                seq: columns.seq(row)?,
                attempts: columns.attempts(row)?,
                error: column(row, "error", OP)?,
                failed_at: column(row, "failed_at", OP)?,
                message: columns.message(row)?,
            })
        })
        .collect()
}

/// # Dead letters
///
/// A message lands in `<schema>.dead_letters` after its last allowed attempt or a permanent
/// broker error, in the same statement that removes it from the outbox (which unblocks its key).
/// These functions run on any [`Executor`], so they can be part of your own transaction.
///
/// ```no_run
/// # async fn example(client: tokio_postgres::Client, outbox: outbox_postgres::PgOutbox)
/// # -> Result<(), outbox_postgres::Error> {
/// use std::time::{Duration, SystemTime};
///
/// for dead in outbox.dead_letters(&client, 100, 0).await? {
///     println!("{} failed {} times: {}", dead.message.id(), dead.attempts, dead.error);
/// }
/// let first = outbox.dead_letters(&client, 1, 0).await?;
/// let ids: Vec<_> = first.iter().map(|d| d.message.id()).collect();
/// outbox.replay_dead_letters(&client, &ids).await?;
/// let week_ago = SystemTime::now() - Duration::from_secs(7 * 24 * 3600);
/// outbox.purge_dead_letters_before(&client, week_ago).await?;
/// # Ok(()) }
/// ```
///
/// Selected by a [`DeadLetterFilter`], in batches, with running totals:
///
/// ```no_run
/// # async fn example(client: tokio_postgres::Client, outbox: outbox_postgres::PgOutbox)
/// # -> Result<(), outbox_postgres::Error> {
/// use std::time::Duration;
/// use outbox_postgres::dead_letter::DeadLetterFilter;
///
/// let fixed = DeadLetterFilter::all().subject("orders.created").key("customer-7");
/// println!("{} to replay", outbox.count_dead_letters_matching(&client, &fixed).await?);
/// let done = outbox
///     .replay_dead_letters_matching(&client, &fixed, 1000, |p| println!("{} so far", p.done))
///     .await?;
/// println!("replayed {}, skipped {}", done.done, done.skipped());
///
/// let stale = DeadLetterFilter::all().older_than(Duration::from_secs(30 * 24 * 3600));
/// outbox.purge_dead_letters_matching(&client, &stale, 1000, |_| {}).await?;
/// # Ok(()) }
/// ```
impl PgOutbox {
    /// Up to `limit` dead letters, oldest failure first, skipping the first `offset`.
    pub async fn dead_letters<C: Executor + ?Sized>(
        &self,
        client: &C,
        limit: usize,
        offset: usize,
    ) -> Result<Vec<DeadLetter>, Error> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let offset = i64::try_from(offset).unwrap_or(i64::MAX);
        let params: [(&(dyn ToSql + Sync), Type); 2] =
            [(&limit, Type::INT8), (&offset, Type::INT8)];
        let rows = client
            .query_typed(&self.sql().list_dead_letters, &params)
            .await
            .map_err(Error::query("list dead letters"))?;
        dead_letters_from_rows(&rows)
    }

    /// The number of dead letters.
    pub async fn count_dead_letters<C: Executor + ?Sized>(&self, client: &C) -> Result<u64, Error> {
        let rows = client
            .query_typed(&self.sql().count_dead_letters, &[])
            .await
            .map_err(Error::query("count dead letters"))?;
        let count: i64 = match rows.as_slice() {
            [row] => column(row, "count", "count dead letters")?,
            _ => return Err(Error::Protocol("count returned no row".to_owned())),
        };
        Ok(u64::try_from(count).unwrap_or(0))
    }

    /// Moves the dead letters with these message ids back into the outbox: same id, attempts
    /// reset, due now, at the end of the queue (a new seq). Returns `(id, new seq)` for each
    /// replayed message, in their original order; unknown ids are skipped.
    ///
    /// Atomic: a dead letter leaves the table only together with its reinsertion. Fails (and
    /// changes nothing) if a message with the same id is still in the outbox.
    pub async fn replay_dead_letters<C: Executor + ?Sized>(
        &self,
        client: &C,
        ids: &[Uuid],
    ) -> Result<Vec<(Uuid, i64)>, Error> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let params: [(&(dyn ToSql + Sync), Type); 1] = [(&ids, Type::UUID_ARRAY)];
        let rows = self
            .with_notify(
                client,
                client.query_typed(&self.sql().replay_dead_letters, &params),
            )
            .await
            .map_err(Error::query("replay dead letters"))?;
        let mut replayed = rows
            .iter()
            .map(|row| {
                Ok((
                    column(row, "id", "replay dead letters")?,
                    column(row, "seq", "replay dead letters")?,
                ))
            })
            .collect::<Result<Vec<(Uuid, i64)>, Error>>()?;
        // Reinserted in their original order, so new seqs follow it.
        replayed.sort_by_key(|(_, seq)| *seq);
        Ok(replayed)
    }

    /// Deletes the dead letters with these message ids; returns how many were deleted.
    pub async fn purge_dead_letters<C: Executor + ?Sized>(
        &self,
        client: &C,
        ids: &[Uuid],
    ) -> Result<u64, Error> {
        if ids.is_empty() {
            return Ok(0);
        }
        let params: [(&(dyn ToSql + Sync), Type); 1] = [(&ids, Type::UUID_ARRAY)];
        client
            .execute_typed(&self.sql().purge_dead_letters, &params)
            .await
            .map_err(Error::query("purge dead letters"))
    }

    /// Up to `limit` dead letters matching `filter`, oldest failure first, skipping the first
    /// `offset`. With [`DeadLetterFilter::all`] this is [`dead_letters`](PgOutbox::dead_letters).
    pub async fn dead_letters_matching<C: Executor + ?Sized>(
        &self,
        client: &C,
        filter: &DeadLetterFilter,
        limit: usize,
        offset: usize,
    ) -> Result<Vec<DeadLetter>, Error> {
        const OP: &str = "list dead letters";
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let offset = i64::try_from(offset).unwrap_or(i64::MAX);
        let rows = filter
            .query(
                client,
                &self.sql().list_dead_letters_matching,
                &[(&limit, Type::INT8), (&offset, Type::INT8)],
            )
            .await
            .map_err(Error::query(OP))?;
        dead_letters_from_rows(&rows)
    }

    /// The number of dead letters matching `filter`.
    pub async fn count_dead_letters_matching<C: Executor + ?Sized>(
        &self,
        client: &C,
        filter: &DeadLetterFilter,
    ) -> Result<u64, Error> {
        const OP: &str = "count dead letters";
        let rows = filter
            .query(client, &self.sql().count_dead_letters_matching, &[])
            .await
            .map_err(Error::query(OP))?;
        match rows.as_slice() {
            [row] => Ok(u64::try_from(column::<i64>(row, "count", OP)?).unwrap_or(0)),
            _ => Err(Error::Protocol("count returned no row".to_owned())),
        }
    }

    /// Moves every dead letter matching `filter` back into the outbox, `batch_size` at a time
    /// (at least 1), calling `on_batch` with the running totals after each batch.
    ///
    /// As with [`replay_dead_letters`](PgOutbox::replay_dead_letters): same id (so JetStream
    /// still drops a copy it already has), attempts reset, due now, at the end of the queue.
    /// Dead letters are replayed in their original seq order, so each key keeps its order.
    ///
    /// - Each batch is one statement: a dead letter leaves the table only together with its
    ///   reinsertion. On a plain client each batch commits by itself, so an interrupted replay
    ///   leaves whole batches done and the rest untouched; inside your transaction, all or none.
    /// - A dead letter whose id is still in the outbox is left in place and counted as skipped
    ///   (the single-batch function fails instead).
    /// - Only dead letters that existed when the call started are considered: a replayed
    ///   message that fails again meanwhile is not replayed a second time.
    pub async fn replay_dead_letters_matching<C: Executor + ?Sized>(
        &self,
        client: &C,
        filter: &DeadLetterFilter,
        batch_size: usize,
        on_batch: impl FnMut(&BulkProgress),
    ) -> Result<BulkProgress, Error> {
        self.bulk(client, filter, batch_size, on_batch, Bulk::Replay)
            .await
    }

    /// Deletes every dead letter matching `filter`, `batch_size` at a time (at least 1), calling
    /// `on_batch` with the running totals after each batch.
    ///
    /// Batches as in [`replay_dead_letters_matching`](PgOutbox::replay_dead_letters_matching):
    /// one statement each, seq order, and only dead letters that existed when the call started.
    pub async fn purge_dead_letters_matching<C: Executor + ?Sized>(
        &self,
        client: &C,
        filter: &DeadLetterFilter,
        batch_size: usize,
        on_batch: impl FnMut(&BulkProgress),
    ) -> Result<BulkProgress, Error> {
        self.bulk(client, filter, batch_size, on_batch, Bulk::Purge)
            .await
    }

    async fn bulk<C: Executor + ?Sized>(
        &self,
        client: &C,
        filter: &DeadLetterFilter,
        batch_size: usize,
        mut on_batch: impl FnMut(&BulkProgress),
        kind: Bulk,
    ) -> Result<BulkProgress, Error> {
        let operation = match kind {
            Bulk::Replay => "replay dead letters",
            Bulk::Purge => "purge dead letters",
        };
        let rows = client
            .query_typed(&self.sql().last_dead_letter_seq, &[])
            .await
            .map_err(Error::query(operation))?;
        let last: Option<i64> = match rows.as_slice() {
            [row] => column(row, "seq", operation)?,
            _ => return Err(Error::Protocol("max returned no row".to_owned())),
        };
        let mut progress = BulkProgress::default();
        let Some(last) = last else {
            return Ok(progress);
        };
        let limit = i64::try_from(batch_size.max(1)).unwrap_or(i64::MAX);
        let mut after = i64::MIN;
        loop {
            let extra: [(&(dyn ToSql + Sync), Type); 3] = [
                (&after, Type::INT8),
                (&last, Type::INT8),
                (&limit, Type::INT8),
            ];
            let rows = match kind {
                Bulk::Replay => {
                    let statement = &self.sql().replay_dead_letter_batch;
                    self.with_notify(client, filter.query(client, statement, &extra))
                        .await
                }
                Bulk::Purge => {
                    let statement = &self.sql().purge_dead_letter_batch;
                    filter.query(client, statement, &extra).await
                }
            }
            .map_err(Error::query(operation))?;
            let [row] = rows.as_slice() else {
                return Err(Error::Protocol(format!(
                    "{operation} batch returned {} rows instead of 1",
                    rows.len()
                )));
            };
            let matched: i64 = column(row, "matched", operation)?;
            let done: i64 = column(row, "done", operation)?;
            let last_seq: Option<i64> = column(row, "last_seq", operation)?;
            progress.batches += 1;
            progress.matched += u64::try_from(matched).unwrap_or(0);
            progress.done += u64::try_from(done).unwrap_or(0);
            on_batch(&progress);
            match last_seq {
                Some(seq) if matched >= limit => after = seq,
                _ => return Ok(progress),
            }
        }
    }

    /// Deletes the dead letters that failed before `before`; returns how many were deleted.
    pub async fn purge_dead_letters_before<C: Executor + ?Sized>(
        &self,
        client: &C,
        before: SystemTime,
    ) -> Result<u64, Error> {
        let params: [(&(dyn ToSql + Sync), Type); 1] = [(&before, Type::TIMESTAMPTZ)];
        client
            .execute_typed(&self.sql().purge_dead_letters_before, &params)
            .await
            .map_err(Error::query("purge dead letters"))
    }
}
