//! One database session of a store: its connection task, its prepared statements, its end.

use std::fmt;

use tokio::task::AbortHandle;
use tokio_postgres::{Client, Statement};
use tokio_util::sync::CancellationToken;

use crate::connect::Tls;
use crate::sql;
use crate::{Error, PgOutbox};

/// The statements the relay runs on every round, prepared once per session.
#[derive(Debug)]
pub(crate) struct Statements {
    pub(crate) claim: Statement,
    pub(crate) claim_gaps: Statement,
    pub(crate) complete: Statement,
    pub(crate) fail: Statement,
    pub(crate) try_lock: Statement,
    pub(crate) holds_lock: Statement,
}

/// An open session. Dropping or [`close`](Session::close)-ing it closes the socket at once,
/// which ends the server backend and frees any advisory lock it held.
pub(crate) struct Session {
    /// Tells this session apart from earlier and later ones of the same store.
    pub(crate) epoch: u64,
    pub(crate) client: Client,
    pub(crate) statements: Statements,
    closed: CancellationToken,
    task: AbortHandle,
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("epoch", &self.epoch)
            .field("closed", &self.is_closed())
            .finish_non_exhaustive()
    }
}

impl Session {
    /// Connects with `db` (over `tls`), sets the session's keepalives and prepares the
    /// statements, all within the configured connect timeout.
    pub(crate) async fn open(
        outbox: &PgOutbox,
        db: &tokio_postgres::Config,
        tls: &Tls,
        epoch: u64,
    ) -> Result<Session, Error> {
        let timeout = outbox.config().connect_timeout;
        tokio::time::timeout(timeout, Self::open_inner(outbox, db, tls, epoch))
            .await
            .map_err(|_| Error::Timeout("opening a postgresql session"))?
    }

    async fn open_inner(
        outbox: &PgOutbox,
        db: &tokio_postgres::Config,
        tls: &Tls,
        epoch: u64,
    ) -> Result<Session, Error> {
        let (client, connection) = tls.connect(db).await.map_err(Error::Connect)?;
        let closed = CancellationToken::new();
        let schema = outbox.config().schema.clone();
        let task = tokio::spawn({
            let closed = closed.clone();
            async move {
                // Ends when the server closes the session (terminated backend, shutdown) or the
                // network fails; a session closed by this crate is aborted and logs nothing.
                if let Err(error) = connection.await {
                    tracing::warn!(%error, %schema, "outbox database session ended");
                }
                closed.cancel();
            }
        })
        .abort_handle();
        // On an error below, dropping `client` ends the connection task gracefully.
        let keepalive = outbox.config().keepalive;
        let idle = keepalive.idle.as_secs().to_string();
        let interval = keepalive.interval.as_secs().to_string();
        let count = keepalive.count.to_string();
        client
            .query(sql::SESSION_SETTINGS, &[&idle, &interval, &count])
            .await
            .map_err(Error::query("apply session settings"))?;
        let sql = outbox.sql();
        let (claim, claim_gaps, complete, fail, try_lock, holds_lock) = futures::try_join!(
            client.prepare(&sql.claim),
            client.prepare(&sql.claim_gaps),
            client.prepare(&sql.complete),
            client.prepare(&sql.fail),
            client.prepare(sql::TRY_LOCK),
            client.prepare(sql::HOLDS_LOCK),
        )
        .map_err(Error::query("prepare statements"))?;
        Ok(Session {
            epoch,
            client,
            statements: Statements {
                claim,
                claim_gaps,
                complete,
                fail,
                try_lock,
                holds_lock,
            },
            closed,
            task,
        })
    }

    /// Whether the connection ended.
    pub(crate) fn is_closed(&self) -> bool {
        self.closed.is_cancelled() || self.client.is_closed()
    }

    /// Resolves when the connection ended.
    pub(crate) async fn closed(&self) {
        self.closed.cancelled().await;
    }

    /// Closes the connection now, even while other handles on this session exist.
    pub(crate) fn close(&self) {
        self.task.abort();
        self.closed.cancel();
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.task.abort();
    }
}
