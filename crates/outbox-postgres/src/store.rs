//! [`PgStore`]: the relay's side of the outbox — claim, complete, fail — on one session.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use outbox_core::{
    Backlog, ClaimRequest, Claimed, Failure, FailureAction, Leadership, Store, Term,
};

use crate::claim::Deleted;
use crate::retention::DEFAULT_PURGE_BATCH;
use crate::vacuum::Vacuum;

/// Purge batches one housekeeping round runs at most, so that it never holds up the relay for
/// long; a backlog of expired rows is worked off over several rounds.
const HOUSEKEEPING_BATCHES: usize = 5;
use crate::connect::Tls;
use crate::ingest::{Ingest, Source};
use crate::listen::Listener;
use crate::outbox::{MessageColumns, column};
use crate::session::Session;
use crate::{EnqueueMode, Error, PgConnectOptions, PgElector, PgOutbox, WakeUp};

/// The PostgreSQL [`Store`]: claims due messages in `seq` order, deletes them once acknowledged,
/// reschedules or dead-letters failures.
///
/// It works on a single database session of its own, opened on first use (with the configured
/// keepalives and `application_name`) and reopened after it was lost. Cloning gives another
/// handle on the same session.
///
/// # Leadership
///
/// Once [`elector`](PgStore::elector) was called, the store works only while that elector holds
/// the leadership lock **on the store's current session**: otherwise every call fails with
/// [`Error::NotLeader`] (as [`outbox_core::Error::NotLeader`]). The lock and the work share the
/// session, so a leader whose session died, and with it the lock, cannot claim or complete
/// anything, even for an instant. Without an elector the store works unconditionally; use that
/// only when a single relay runs against the schema.
///
/// # Examples
///
/// ```no_run
/// use outbox_core::{Broker, CancellationToken, Relay, RelayConfig};
/// use outbox_postgres::{PgConfig, PgOutbox, PgStore};
///
/// async fn relay(broker: impl Broker, shutdown: CancellationToken)
///     -> Result<(), Box<dyn std::error::Error>>
/// {
///     let outbox = PgOutbox::new(PgConfig::default())?;
///     let db: tokio_postgres::Config = "postgres://postgres@127.0.0.1/app".parse()?;
///     let store = PgStore::new(&outbox, db);
///     let elector = store.elector();
///     Relay::new(store, broker, elector, RelayConfig::default())?
///         .run(shutdown)
///         .await;
///     Ok(())
/// }
/// ```
#[derive(Clone)]
pub struct PgStore {
    inner: Arc<Inner>,
}

struct Inner {
    outbox: PgOutbox,
    db: tokio_postgres::Config,
    tls: Tls,
    slot: Mutex<Slot>,
    /// One connection attempt at a time, so concurrent callers share the new session.
    connecting: tokio::sync::Mutex<()>,
    /// Set once an elector exists: from then on, work needs a live term.
    elected: AtomicBool,
    listener: Option<Listener>,
    /// Seqs this store deleted: they bound the claim's scans (see the `claim` module).
    deleted: Mutex<Deleted>,
    /// When to vacuum `messages` (see the `vacuum` module).
    vacuum: Arc<Vacuum>,
    /// The ingest of [`EnqueueMode::WalMessage`]; `None` in the insert mode.
    ingest: Option<Ingest>,
    /// A connection of its own for the backlog sample, opened when first needed: counting a
    /// large backlog takes tens of milliseconds, which on the session would hold up claims.
    stats: tokio::sync::Mutex<Option<tokio_postgres::Client>>,
}

#[derive(Default)]
struct Slot {
    session: Option<Arc<Session>>,
    last_epoch: u64,
    term: Option<LeaderTerm>,
}

/// The term of leadership held on the session with `epoch`.
struct LeaderTerm {
    epoch: u64,
    term: Term,
}

impl fmt::Debug for PgStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgStore")
            .field("schema", &self.inner.outbox.config().schema)
            .field("elected", &self.inner.elected.load(Ordering::Relaxed))
            .field("leading", &self.is_leading())
            .finish_non_exhaustive()
    }
}

impl PgStore {
    /// A store for `outbox`, connecting with `db` (without TLS: see
    /// [`with_connect_options`](PgStore::with_connect_options)).
    ///
    /// `db` is used as given, except for what the store's sessions need: `application_name`
    /// (see [`PgConfig::application_name`](crate::PgConfig::application_name)), the connect
    /// timeout and client-side TCP keepalives from the [`PgConfig`](crate::PgConfig). Nothing
    /// connects until the store or its elector is first used. Do not point `db` at a pooler in
    /// transaction mode: the leadership lock is a session lock.
    pub fn new(outbox: &PgOutbox, db: tokio_postgres::Config) -> PgStore {
        Self::connecting(outbox, db, Tls::Plain, None)
    }

    /// A store for `outbox` whose sessions (and `LISTEN` connection) connect with `options`:
    /// TLS and certificate checks as its `sslmode` says, its password. Otherwise as
    /// [`new`](PgStore::new).
    pub fn with_connect_options(outbox: &PgOutbox, options: &PgConnectOptions) -> PgStore {
        Self::connecting(
            outbox,
            options.config().clone(),
            Tls::Rustls(options.tls()),
            options.replication_refusal(),
        )
    }

    fn connecting(
        outbox: &PgOutbox,
        db: tokio_postgres::Config,
        tls: Tls,
        stream_refusal: Option<String>,
    ) -> PgStore {
        let config = outbox.config();
        let mut db = db;
        db.connect_timeout(config.connect_timeout)
            .keepalives(true)
            .keepalives_idle(config.keepalive.idle)
            .keepalives_interval(config.keepalive.interval)
            .keepalives_retries(config.keepalive.count);
        let listener = match config.wake_up {
            WakeUp::Poll => None,
            WakeUp::Listen => {
                let mut listen_db = db.clone();
                listen_db.application_name(config.listener_name());
                Some(Listener::new(outbox, listen_db, tls.clone()))
            }
        };
        let ingest = match config.enqueue_mode {
            EnqueueMode::WalMessage => Some(Ingest::new(Source::new(
                outbox,
                &db,
                tls.clone(),
                stream_refusal,
            ))),
            _ => None,
        };
        db.application_name(config.session_name());
        PgStore {
            inner: Arc::new(Inner {
                deleted: Mutex::new(Deleted::default()),
                vacuum: Arc::default(),
                stats: tokio::sync::Mutex::new(None),
                outbox: outbox.clone(),
                db,
                tls,
                slot: Mutex::new(Slot::default()),
                connecting: tokio::sync::Mutex::new(()),
                elected: AtomicBool::new(false),
                listener,
                ingest,
            }),
        }
    }

    /// The elector that campaigns on this store's session. From this call on, the store refuses
    /// to work unless this elector leads (see [Leadership](PgStore#leadership)).
    ///
    /// Use one elector per store: clones of it share the store's single session, and only one
    /// term runs on it at a time. Candidates that compete must each have their own store.
    pub fn elector(&self) -> PgElector {
        self.inner.elected.store(true, Ordering::SeqCst);
        PgElector::new(self.clone())
    }

    /// The outbox this store serves.
    pub fn outbox(&self) -> &PgOutbox {
        &self.inner.outbox
    }

    /// Whether this store's elector holds leadership right now.
    pub fn is_leading(&self) -> bool {
        let slot = self.slot();
        match (&slot.term, &slot.session) {
            (Some(t), Some(s)) => t.epoch == s.epoch && !t.term.is_over() && !s.is_closed(),
            _ => false,
        }
    }

    fn slot(&self) -> MutexGuard<'_, Slot> {
        // The slot holds plain data that is consistent after every statement; keep using it
        // after a panic elsewhere.
        self.inner
            .slot
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The current session if it is open.
    fn deleted(&self) -> MutexGuard<'_, Deleted> {
        // A set of seqs, consistent after every call; see `slot`.
        self.inner
            .deleted
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn live_session(&self) -> Option<Arc<Session>> {
        self.slot()
            .session
            .as_ref()
            .filter(|s| !s.is_closed())
            .cloned()
    }

    /// The current session, opening a new one if there is none or it closed.
    pub(crate) async fn session(&self) -> Result<Arc<Session>, Error> {
        if let Some(session) = self.live_session() {
            return Ok(session);
        }
        let _connecting = self.inner.connecting.lock().await;
        if let Some(session) = self.live_session() {
            return Ok(session);
        }
        let epoch = {
            let mut slot = self.slot();
            slot.last_epoch += 1;
            slot.last_epoch
        };
        let session = Arc::new(
            Session::open(&self.inner.outbox, &self.inner.db, &self.inner.tls, epoch).await?,
        );
        let old = self.slot().session.replace(session.clone());
        if let Some(old) = old {
            old.close();
        }
        Ok(session)
    }

    /// The session to work on: with an elector, only the session its live term holds.
    async fn working_session(&self) -> Result<Arc<Session>, Error> {
        if !self.inner.elected.load(Ordering::SeqCst) {
            return self.session().await;
        }
        let slot = self.slot();
        match (&slot.term, &slot.session) {
            (Some(t), Some(s)) if t.epoch == s.epoch && !t.term.is_over() && !s.is_closed() => {
                Ok(s.clone())
            }
            _ => Err(Error::NotLeader),
        }
    }

    /// Without an elector, a lost session is dropped so the next call reconnects. With one, the
    /// elector's watcher ends the term and closes the session.
    fn on_error(&self, session: &Session, error: Error) -> Error {
        if error.is_connection_lost() && !self.inner.elected.load(Ordering::SeqCst) {
            self.discard(session.epoch);
        }
        error
    }

    /// Closes the session with `epoch` if it is still the current one.
    pub(crate) fn discard(&self, epoch: u64) {
        let old = {
            let mut slot = self.slot();
            if slot.session.as_ref().is_some_and(|s| s.epoch == epoch) {
                slot.session.take()
            } else {
                None
            }
        };
        if let Some(old) = old {
            old.close();
        }
    }

    /// Whether a term is running on this store. A term that is over (lost or resigned) but not
    /// yet cleaned up by its watcher is ended here, session closed, so a new term never starts
    /// on the session of the old one.
    pub(crate) fn has_live_term(&self) -> bool {
        let ended = {
            let mut slot = self.slot();
            match &slot.term {
                Some(t) if !t.term.is_over() => return true,
                Some(t) => {
                    let epoch = t.epoch;
                    slot.term = None;
                    if slot.session.as_ref().is_some_and(|s| s.epoch == epoch) {
                        slot.session.take()
                    } else {
                        None
                    }
                }
                None => None,
            }
        };
        if let Some(session) = ended {
            session.close();
        }
        false
    }

    /// Starts a term on `session`, which just took the lock. `None` if the session was replaced
    /// meanwhile or another term runs.
    pub(crate) fn begin_term(&self, session: &Session) -> Option<(Leadership, Term)> {
        let mut slot = self.slot();
        let current = slot
            .session
            .as_ref()
            .is_some_and(|s| s.epoch == session.epoch && !s.is_closed());
        let busy = slot.term.as_ref().is_some_and(|t| !t.term.is_over());
        if !current || busy {
            return None;
        }
        let (leadership, term) = Leadership::new();
        slot.term = Some(LeaderTerm {
            epoch: session.epoch,
            term: term.clone(),
        });
        Some((leadership, term))
    }

    /// Counts the backlog on the store's backlog connection, opening it if needed.
    async fn count_backlog(&self) -> Result<Backlog, Error> {
        let mut stats = self.inner.stats.lock().await;
        let client = match stats.take().filter(|c| !c.is_closed()) {
            Some(client) => stats.insert(client),
            None => stats.insert(self.connect_stats().await?),
        };
        let row = client
            .query_one(&self.inner.outbox.sql().backlog, &[])
            .await
            .map_err(Error::query("backlog"))?;
        let pending: i64 = column(&row, "pending", "backlog")?;
        let lag: f64 = column(&row, "lag_seconds", "backlog")?;
        Ok(Backlog::new(
            u64::try_from(pending).unwrap_or(0),
            Duration::try_from_secs_f64(lag.max(0.0)).unwrap_or_default(),
        ))
    }

    /// Opens the connection the backlog is counted on.
    async fn connect_stats(&self) -> Result<tokio_postgres::Client, Error> {
        let config = self.inner.outbox.config();
        let mut db = self.inner.db.clone();
        db.application_name(config.stats_name());
        let (client, connection) =
            tokio::time::timeout(config.connect_timeout, self.inner.tls.connect(&db))
                .await
                .map_err(|_| Error::Timeout("opening the backlog connection"))?
                .map_err(Error::Connect)?;
        tokio::spawn(connection);
        // The count reads the whole table; compiling it would take longer than running it.
        client
            .batch_execute("SET jit = off")
            .await
            .map_err(Error::query("apply session settings"))?;
        Ok(client)
    }

    /// Ends the term held on the session with `epoch` and closes that session, which releases
    /// the lock.
    pub(crate) fn end_term(&self, session: &Session) {
        {
            let mut slot = self.slot();
            if slot.term.as_ref().is_some_and(|t| t.epoch == session.epoch) {
                slot.term = None;
            }
        }
        self.discard(session.epoch);
        session.close();
        // Only a leader samples the backlog: a follower keeps no connection for it. A sample
        // running right now keeps its connection until the next term ends.
        if let Ok(mut stats) = self.inner.stats.try_lock() {
            stats.take();
        }
    }
}

#[async_trait]
impl Store for PgStore {
    async fn claim(&self, request: ClaimRequest<'_>) -> Result<Vec<Claimed>, outbox_core::Error> {
        if let Some(ingest) = &self.inner.ingest {
            ingest.check()?;
        }
        let session = self.working_session().await?;
        if let Some(ingest) = &self.inner.ingest {
            ingest.serve(&session);
        }
        let limit = i64::try_from(request.limit).unwrap_or(i64::MAX);
        let gaps = self.deleted().gaps(request.exclude);
        let rows = match gaps {
            Some(gaps) => {
                session
                    .client
                    .query(
                        &session.statements.claim_gaps,
                        &[&gaps.after, &gaps.before, &limit],
                    )
                    .await
            }
            None => {
                session
                    .client
                    .query(&session.statements.claim, &[&request.exclude, &limit])
                    .await
            }
        }
        .map_err(|e| self.on_error(&session, Error::query("claim")(e)))?;
        let Some(columns) = rows.first().map(MessageColumns::of).transpose()? else {
            return Ok(Vec::new());
        };
        let mut rows = rows
            .into_iter()
            .map(|row| Ok((columns.seq(&row)?, row)))
            .collect::<Result<Vec<_>, Error>>()?;
        // Each gap's scan returns its first `limit` due rows in seq order; the claim is the
        // lowest `limit` of them all. Merged here rather than sorted in the statement, which
        // would copy every row into a sort (see `CLAIM_GAPS`).
        rows.sort_unstable_by_key(|&(seq, _)| seq);
        rows.truncate(request.limit);
        let mut claimed = Vec::with_capacity(rows.len());
        for (seq, row) in &rows {
            claimed.push(Claimed {
                seq: *seq,
                attempts: columns.attempts(row)?,
                message: columns.message(row)?,
            });
        }
        Ok(claimed)
    }

    async fn complete(&self, seqs: &[i64]) -> Result<(), outbox_core::Error> {
        if seqs.is_empty() {
            return Ok(());
        }
        let session = self.working_session().await?;
        session
            .client
            .execute(&session.statements.complete, &[&seqs])
            .await
            .map_err(|e| self.on_error(&session, Error::query("complete")(e)))?;
        self.deleted().extend(seqs);
        let inner = &self.inner;
        inner
            .vacuum
            .deleted(seqs.len(), &inner.outbox, &inner.db, &inner.tls);
        Ok(())
    }

    async fn fail(&self, failures: &[Failure]) -> Result<(), outbox_core::Error> {
        if failures.is_empty() {
            return Ok(());
        }
        let session = self.working_session().await?;
        let seqs: Vec<i64> = failures.iter().map(|f| f.seq).collect();
        let delays: Vec<Option<i64>> = failures
            .iter()
            .map(|f| match f.action {
                FailureAction::Retry { after } => {
                    Some(i64::try_from(after.as_micros()).unwrap_or(i64::MAX))
                }
                FailureAction::DeadLetter => None,
            })
            .collect();
        let errors: Vec<&str> = failures.iter().map(|f| f.error.as_str()).collect();
        session
            .client
            .execute(&session.statements.fail, &[&seqs, &delays, &errors])
            .await
            .map_err(|e| self.on_error(&session, Error::query("fail")(e)))?;
        Ok(())
    }

    /// Counted on a connection of its own, not the session, so claims go on meanwhile.
    async fn backlog(&self) -> Result<Option<Backlog>, outbox_core::Error> {
        // Only a leader samples: with an elector, a store that does not lead refuses.
        drop(self.working_session().await?);
        let counted = self.count_backlog().await;
        // A backlog that cannot be counted any more must not keep deferring the vacuum.
        let pending = counted.as_ref().map_or(0, |backlog| backlog.pending);
        self.inner.vacuum.backlog(pending);
        Ok(Some(counted?))
    }

    /// With a [retention](crate::PgConfig::retention), purges published messages older than
    /// it: up to five batches of [`DEFAULT_PURGE_BATCH`] rows per call,
    /// the rest at the next call.
    async fn housekeep(&self) -> Result<(), outbox_core::Error> {
        let Some(retention) = self.inner.outbox.config().retention else {
            return Ok(());
        };
        let session = self.working_session().await?;
        for _ in 0..HOUSEKEEPING_BATCHES {
            let purged = self
                .inner
                .outbox
                .purge_published_batch(&session.client, retention, DEFAULT_PURGE_BATCH)
                .await
                .map_err(|e| self.on_error(&session, e))?;
            if purged > 0 {
                tracing::debug!(purged, "purged published messages past their retention");
            }
            if purged < DEFAULT_PURGE_BATCH as u64 {
                break;
            }
        }
        Ok(())
    }

    async fn wait_for_work(&self, timeout: Duration) {
        match (&self.inner.listener, &self.inner.ingest) {
            (Some(listener), _) => listener.wait(timeout).await,
            (None, Some(ingest)) => {
                let _ = tokio::time::timeout(timeout, ingest.inserted()).await;
            }
            (None, None) => tokio::time::sleep(timeout).await,
        }
    }
}
