//! [`PgElector`]: leadership as a PostgreSQL advisory lock held by the store's session.
//!
//! ```text
//!   campaign()                         lock taken           session closed, check failed
//!  ───────────▶ Standby ──────────────────────────▶ Leading ─────────────────────────▶ Lost
//!                 │  ▲  pg_try_advisory_lock                │  Term::lose(), session closed
//!                 └──┘  false: retry every                  │
//!                       campaign_interval                   │ Leadership dropped
//!                                                           ▼
//!                                                        Resigned: session closed, lock freed
//! ```

use std::sync::Arc;

use async_trait::async_trait;
use outbox_core::{Elector, Leadership, Term};
use tokio_postgres::types::ToSql;

use crate::session::Session;
use crate::{Error, PgStore};

/// Elects one relay per schema with `pg_try_advisory_lock(lock_id)` on the store's session.
///
/// Made by [`PgStore::elector`]. While it leads, the store claims and completes on the very
/// session that holds the lock, so the lock and the right to work end together.
///
/// # Guarantees
///
/// - [`campaign`](Elector::campaign) returns only once this store's session holds the lock; a
///   standby retries every [`campaign_interval`](crate::PgConfig::campaign_interval), so it
///   takes over within about that long after the leader's session ends.
/// - Every [`check_interval`](crate::PgConfig::check_interval) the leader checks that its
///   session is alive and still holds the lock. When the session closes (for example
///   `pg_terminate_backend`), a check fails, or a check takes longer than
///   [`check_timeout`](crate::PgConfig::check_timeout), the term is reported lost at once
///   ([`Leadership::lost`]) and the session is closed, so the next campaign reconnects.
/// - Dropping the [`Leadership`] closes the session, which releases the lock at once.
/// - The session sets short server-side TCP keepalives, so if this host vanishes the server
///   frees the lock within about [`Keepalive::detection_time`](crate::Keepalive::detection_time);
///   the configuration guarantees the leader notices the loss before that.
///
/// Errors (an unreachable database, a failed lock attempt) are returned from `campaign` for the
/// relay to log and retry after a backoff; loss of a term is logged here, once, with its reason.
#[derive(Clone, Debug)]
pub struct PgElector {
    store: PgStore,
}

impl PgElector {
    pub(crate) fn new(store: PgStore) -> Self {
        Self { store }
    }

    async fn campaign_inner(&self) -> Result<Leadership, Error> {
        let config = self.store.outbox().config();
        let lock_id = config.lock_id();
        loop {
            if !self.store.has_live_term() {
                let session = self.store.session().await?;
                // If this future is dropped while the lock request is in flight, the server may
                // grant the lock with no term to show for it: close the session then.
                let mut guard = DiscardOnDrop {
                    store: &self.store,
                    epoch: Some(session.epoch),
                };
                let locked = self.try_lock(&session, lock_id).await?;
                guard.epoch = None;
                if locked && let Some((leadership, term)) = self.store.begin_term(&session) {
                    tokio::spawn(watch(self.store.clone(), session, term));
                    return Ok(leadership);
                }
            }
            tokio::time::sleep(config.campaign_interval).await;
        }
    }

    async fn try_lock(&self, session: &Session, lock_id: i64) -> Result<bool, Error> {
        let timeout = self.store.outbox().config().check_timeout;
        let params: [&(dyn ToSql + Sync); 1] = [&lock_id];
        let attempt = session
            .client
            .query_one(&session.statements.try_lock, &params);
        let result = match tokio::time::timeout(timeout, attempt).await {
            Err(_) => Err(Error::Timeout("taking the leadership lock")),
            Ok(result) => result
                .and_then(|row| row.try_get::<_, bool>(0))
                .map_err(Error::query("take the leadership lock")),
        };
        if result.is_err() {
            // Whatever went wrong, a fresh session is the way back.
            self.store.discard(session.epoch);
        }
        result
    }
}

#[async_trait]
impl Elector for PgElector {
    async fn campaign(&self) -> Result<Leadership, outbox_core::Error> {
        self.campaign_inner()
            .await
            .map_err(outbox_core::Error::election)
    }
}

/// Closes the session with `epoch`, if still set, when dropped.
struct DiscardOnDrop<'a> {
    store: &'a PgStore,
    epoch: Option<u64>,
}

impl Drop for DiscardOnDrop<'_> {
    fn drop(&mut self) {
        if let Some(epoch) = self.epoch {
            self.store.discard(epoch);
        }
    }
}

/// Watches one term until it ends; then closes its session.
async fn watch(store: PgStore, session: Arc<Session>, term: Term) {
    let config = store.outbox().config().clone();
    let lock_id = config.lock_id();
    let lost = loop {
        let check = async {
            tokio::time::sleep(config.check_interval).await;
            let params: [&(dyn ToSql + Sync); 1] = [&lock_id];
            let query = session
                .client
                .query_one(&session.statements.holds_lock, &params);
            match tokio::time::timeout(config.check_timeout, query).await {
                Err(_) => Some("leadership check timed out".to_owned()),
                Ok(Err(error)) => Some(format!("leadership check failed: {error}")),
                Ok(Ok(row)) => match row.try_get::<_, bool>(0) {
                    Ok(true) => None,
                    Ok(false) => Some("the session no longer holds the leadership lock".to_owned()),
                    Err(error) => Some(format!("leadership check failed: {error}")),
                },
            }
        };
        tokio::select! {
            biased;
            () = term.resigned() => break None,
            // The session's own task already logged why it ended.
            () = session.closed() => break Some(None),
            failure = check => if let Some(reason) = failure { break Some(Some(reason)) },
        }
    };
    // Close the session first: by the time the relay hears of the loss and campaigns again, the
    // old session is gone and cannot be mistaken for the new one.
    store.end_term(&session);
    if let Some(reason) = lost {
        term.lose();
        if let Some(reason) = reason {
            tracing::warn!(schema = %config.schema, %reason, "giving up leadership");
        }
    }
}
