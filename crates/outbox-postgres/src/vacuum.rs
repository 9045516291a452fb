//! The relay's own vacuum of the hot table.
//!
//! Every claim walks `messages_pkey` from the lowest seq. Rows the relay deleted leave index
//! entries behind until a vacuum removes them; a scan skips such entries once they are marked
//! dead, but still reads them, so without a vacuum every claim gets slower with each message
//! published (measured: a 200,000-message drain's claims went from 3.7 to 6.3 ms). Autovacuum
//! wakes up once a minute at most (`autovacuum_naptime`), during which a busy relay deletes
//! hundreds of thousands of rows. So the store vacuums `messages` itself, on a connection of its
//! own, after every [`PgConfig::vacuum_every`](crate::PgConfig::vacuum_every) rows it deleted:
//! it runs beside the relay (a vacuum takes no lock that blocks inserts, deletes or claims).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::PgOutbox;
use crate::connect::Tls;

/// When to vacuum, and whether one is running.
#[derive(Debug, Default)]
pub(crate) struct Vacuum {
    /// Rows deleted since the last vacuum started.
    deleted: AtomicU64,
    running: AtomicBool,
    /// Set after a vacuum was refused (not the table's owner): logged once, never tried again.
    refused: AtomicBool,
}

impl Vacuum {
    /// Counts `n` deleted rows; starts a vacuum when `every` were deleted since the last one
    /// and none is running.
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
        let total = self.deleted.fetch_add(n as u64, Ordering::Relaxed) + n as u64;
        if total < every || self.refused.load(Ordering::Relaxed) {
            return;
        }
        if self.running.swap(true, Ordering::AcqRel) {
            return;
        }
        self.deleted.store(0, Ordering::Relaxed);
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
