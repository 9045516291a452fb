//! Dead-letter administration: list, replay and purge messages the relay gave up on.

use std::time::SystemTime;

use outbox_core::Message;
use tokio_postgres::types::{ToSql, Type};
use uuid::Uuid;

use crate::outbox::{attempts_from_row, column, message_from_row};
use crate::{Error, Executor, PgOutbox};

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
        rows.iter()
            .map(|row| {
                let seq: i64 = column(row, "seq", "list dead letters")?;
                Ok(DeadLetter {
                    seq,
                    attempts: attempts_from_row(row)?,
                    error: column(row, "error", "list dead letters")?,
                    failed_at: column(row, "failed_at", "list dead letters")?,
                    message: message_from_row(row, seq)?,
                })
            })
            .collect()
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
