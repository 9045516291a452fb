//! The relay's own vacuum of the hot table.
//!
//! Rows the relay deleted leave heap tuples and index entries behind until a vacuum removes them.
//! Claims skip the seqs this store deleted itself (see the `claim` module), but not those a
//! previous leader deleted, nor the table's growth: without a vacuum, inserts keep extending the
//! table and every new leader's claims walk the dead entries at its head. Autovacuum wakes up
//! once a minute at most (`autovacuum_naptime`), during which a busy relay deletes hundreds of
//! thousands of rows. So the store vacuums `messages` itself, on a connection of its own, once it
//! deleted [`PgConfig::vacuum_every`](crate::PgConfig::vacuum_every) rows since the last vacuum
//! *and* at least as many as the backlog held when it was last sampled: it runs beside the relay
//! (a vacuum takes no lock that blocks inserts, deletes or claims).
//!
//! The second condition is autovacuum's scale factor, set to 1. A vacuum reads every page of the
//! table that is not all-visible and every page of both indexes, live or dead: its cost grows
//! with the table, not with the rows it removes. Vacuuming every 50,000 deletes while a relay
//! drained a 200,000-message backlog read the remaining backlog four times over, and cost the
//! drain 8% of its speed; waiting until as many rows were deleted as the backlog held keeps a
//! vacuum's cost proportional to the deletes it follows, whatever the backlog.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::PgOutbox;
use crate::connect::Tls;

/// When to vacuum, and whether one is running.
#[derive(Debug, Default)]
pub(crate) struct Vacuum {
    /// Rows deleted since the last vacuum started.
    deleted: AtomicU64,
    /// Messages in the outbox when the backlog was last sampled.
    backlog: AtomicU64,
    running: AtomicBool,
    /// Set after a vacuum was refused (not the table's owner): logged once, never tried again.
    refused: AtomicBool,
}

impl Vacuum {
    /// Records the outbox's size, as the backlog sample counted it.
    pub(crate) fn backlog(&self, pending: u64) {
        self.backlog.store(pending, Ordering::Relaxed);
    }

    /// Counts `n` deleted rows; true when a vacuum is to start now: `every`, and at least the
    /// last sampled backlog, were deleted since the last one started, and none is running.
    fn start(&self, n: usize, every: u64) -> bool {
        let total = self.deleted.fetch_add(n as u64, Ordering::Relaxed) + n as u64;
        let due = every.max(self.backlog.load(Ordering::Relaxed));
        if total < due || self.refused.load(Ordering::Relaxed) {
            return false;
        }
        if self.running.swap(true, Ordering::AcqRel) {
            return false;
        }
        self.deleted.store(0, Ordering::Relaxed);
        true
    }

    /// Counts `n` deleted rows; starts a vacuum when `every`, and at least the last sampled
    /// backlog, were deleted since the last one and none is running.
    pub(crate) fn deleted(
        self: &Arc<Self>,
        n: usize,
        outbox: &PgOutbox,
        db: &tokio_postgres::Config,
        tls: &Tls,
    ) {
        let Some(every) = outbox.config().vacuum_every else {
            return;
        };
        if !self.start(n, every) {
            return;
        }
        let this = Arc::clone(self);
        let statement = outbox.sql().vacuum.clone();
        let mut db = db.clone();
        db.application_name(outbox.config().vacuum_name());
        let tls = tls.clone();
        tokio::spawn(async move {
            let started = tokio::time::Instant::now();
            match run(&db, &tls, &statement).await {
                Ok(()) => {
                    tracing::debug!(elapsed = ?started.elapsed(), "vacuumed the outbox table")
                }
                Err(error)
                    if error.code()
                        == Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE) =>
                {
                    this.refused.store(true, Ordering::Relaxed);
                    tracing::warn!(
                        "cannot vacuum the outbox table (not its owner); leaving it to \
                         autovacuum: {error}"
                    );
                }
                Err(error) => {
                    tracing::debug!(%error, "vacuum of the outbox table failed; trying again later")
                }
            }
            this.running.store(false, Ordering::Release);
        });
    }
}

async fn run(
    db: &tokio_postgres::Config,
    tls: &Tls,
    statement: &str,
) -> Result<(), tokio_postgres::Error> {
    let (client, connection) = tls.connect(db).await?;
    let driver = tokio::spawn(connection);
    let result = client.batch_execute(statement).await;
    drop(client);
    let _ = driver.await;
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_vacuum_is_due_after_every_deletes_or_the_backlog_if_larger() {
        let vacuum = Vacuum::default();
        assert!(!vacuum.start(40, 100));
        assert!(vacuum.start(60, 100));
        // Running: none starts, and the deletes meanwhile count towards the next one.
        assert!(!vacuum.start(100, 100));
        vacuum.running.store(false, Ordering::Release);
        assert!(vacuum.start(0, 100));
        vacuum.running.store(false, Ordering::Release);

        // A backlog of 1,000: a vacuum once 1,000 rows were deleted, not 100.
        vacuum.backlog(1_000);
        assert!(!vacuum.start(999, 100));
        assert!(vacuum.start(1, 100));
        vacuum.running.store(false, Ordering::Release);

        // Refused once: never again.
        vacuum.backlog(0);
        vacuum.refused.store(true, Ordering::Relaxed);
        assert!(!vacuum.start(1_000, 100));
    }
}
