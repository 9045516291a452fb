//! Published messages kept for a while ([`PgConfig::retention`](crate::PgConfig::retention)),
//! and their purge.

use std::time::Duration;

use tokio_postgres::types::{ToSql, Type};

use crate::outbox::column;
use crate::{Error, Executor, PgOutbox};

/// Rows one purge statement deletes at most: short statements, so that a purge never holds
/// locks or bloats the WAL in one go.
pub const DEFAULT_PURGE_BATCH: usize = 10_000;

impl PgOutbox {
    /// Deletes published messages kept longer than `older_than`, in batches of `batch_size`
    /// rows (oldest first), calling `on_batch` with the running total after each; returns the
    /// total. Only does something when the outbox keeps published messages
    /// ([`PgConfig::retention`](crate::PgConfig::retention)); the table exists either way once
    /// migrated.
    ///
    /// Each batch is its own statement: run it outside a transaction so that every batch
    /// commits on its own and a purge of millions of rows stays cheap to interrupt.
    pub async fn purge_published<C: Executor + ?Sized>(
        &self,
        client: &C,
        older_than: Duration,
        batch_size: usize,
        mut on_batch: impl FnMut(u64),
    ) -> Result<u64, Error> {
        let mut total = 0_u64;
        loop {
            let purged = self
                .purge_published_batch(client, older_than, batch_size)
                .await?;
            total += purged;
            on_batch(total);
            if purged < u64::try_from(batch_size.max(1)).unwrap_or(u64::MAX) {
                return Ok(total);
            }
        }
    }

    /// How many published messages were kept longer than `older_than`: what
    /// [`purge_published`](PgOutbox::purge_published) would delete now.
    pub async fn count_published<C: Executor + ?Sized>(
        &self,
        client: &C,
        older_than: Duration,
    ) -> Result<u64, Error> {
        const OP: &str = "count published messages";
        let micros = i64::try_from(older_than.as_micros()).unwrap_or(i64::MAX);
        let params: [(&(dyn ToSql + Sync), Type); 1] = [(&micros, Type::INT8)];
        let rows = client
            .query_typed(&self.sql().count_published, &params)
            .await
            .map_err(Error::query(OP))?;
        let n: i64 = match rows.as_slice() {
            [row] => column(row, "n", OP)?,
            _ => return Err(Error::Protocol("count returned no row".to_owned())),
        };
        Ok(u64::try_from(n).unwrap_or(0))
    }

    /// One batch of [`purge_published`](PgOutbox::purge_published): how many rows went.
    pub(crate) async fn purge_published_batch<C: Executor + ?Sized>(
        &self,
        client: &C,
        older_than: Duration,
        batch_size: usize,
    ) -> Result<u64, Error> {
        const OP: &str = "purge published messages";
        let micros = i64::try_from(older_than.as_micros()).unwrap_or(i64::MAX);
        let limit = i64::try_from(batch_size.max(1)).unwrap_or(i64::MAX);
        let params: [(&(dyn ToSql + Sync), Type); 2] =
            [(&micros, Type::INT8), (&limit, Type::INT8)];
        let rows = client
            .query_typed(&self.sql().purge_published_batch, &params)
            .await
            .map_err(Error::query(OP))?;
        let purged: i64 = match rows.as_slice() {
            [row] => column(row, "purged", OP)?,
            _ => return Err(Error::Protocol("count returned no row".to_owned())),
        };
        Ok(u64::try_from(purged).unwrap_or(0))
    }
}
