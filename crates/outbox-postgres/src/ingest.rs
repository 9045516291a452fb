//! The ingest of [`EnqueueMode::WalMessage`](crate::EnqueueMode::WalMessage): the leading
//! store's task that moves committed WAL messages into `messages` (see the [`wal`](crate::wal)
//! module for the whole design).
//!
//! One task per store session, started by the first claim on it and stopped when the session
//! closes, which is when a term of leadership ends: a store that stops leading stops ingesting,
//! and the slot is free for the next leader's store. Two ingests can still overlap for a moment
//! (a former leader's insert in flight); the `wal_progress` row they both lock keeps them from
//! inserting a transaction's messages twice.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::FutureExt;
use outbox_core::Message;
use pgwire_replication::{Lsn, ReplicationClient, ReplicationConfig, ReplicationEvent};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_postgres::config::Host;
use tokio_postgres::types::PgLsn;

use crate::connect::Tls;
use crate::outbox::{BatchParams, ENQUEUE_BATCH_TYPES};
use crate::session::Session;
use crate::{Error, PgOutbox, wal};

/// Messages one ingest transaction inserts at most (whole WAL transactions are never split, so
/// one larger transaction makes a larger batch).
const BATCH: usize = 1024;

/// How long a failed ingest waits before it reconnects.
const RETRY: Duration = Duration::from_millis(500);

/// Seconds between the Unix epoch and PostgreSQL's, 2000-01-01.
const PG_EPOCH: Duration = Duration::from_secs(946_684_800);

/// What the ingest connects with: the store's database settings and the replication stream's.
pub(crate) struct Source {
    pub(crate) outbox: PgOutbox,
    pub(crate) db: tokio_postgres::Config,
    pub(crate) tls: Tls,
    pub(crate) stream: ReplicationConfig,
    /// Why the stream cannot be opened with the store's connect options, if it cannot.
    pub(crate) refusal: Option<String>,
}

impl Source {
    /// The ingest's connections to the database `db` names, as the store's sessions connect:
    /// `tls` for the SQL connection; the replication stream has no TLS, so `refusal` says why
    /// it cannot be opened when the store's options require TLS.
    pub(crate) fn new(
        outbox: &PgOutbox,
        db: &tokio_postgres::Config,
        tls: Tls,
        refusal: Option<String>,
    ) -> Source {
        let config = outbox.config();
        let name = config.ingest_name();
        let mut db = db.clone();
        db.application_name(&name);
        let user = db.get_user().unwrap_or("postgres").to_owned();
        let password = db
            .get_password()
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .unwrap_or_default();
        let database = db.get_dbname().unwrap_or(&user).to_owned();
        let port = db.get_ports().first().copied().unwrap_or(5432);
        let slot = config.wal_slot();
        // A host starting with `/` is a socket directory, for this client as for libpq.
        let host = match db.get_hosts().first() {
            Some(Host::Unix(dir)) => dir.to_string_lossy().into_owned(),
            Some(Host::Tcp(host)) => host.clone(),
            None => "localhost".to_owned(),
        };
        let stream = ReplicationConfig::new(host, user, password, database, slot.clone(), slot)
            .with_port(port)
            .with_application_name(name)
            .with_status_interval(Duration::from_secs(1))
            .with_wakeup_interval(Duration::from_secs(5))
            .with_buffer_size(BATCH);
        Source {
            outbox: outbox.clone(),
            db,
            tls,
            stream,
            refusal,
        }
    }
}

/// The store's ingest: at most one task, for the store's current session.
pub(crate) struct Ingest {
    source: Arc<Source>,
    /// Raised after every insert, so that the relay claims at once instead of at its next poll.
    inserted: Arc<Notify>,
    running: Mutex<Option<Running>>,
}

struct Running {
    epoch: u64,
    task: JoinHandle<()>,
}

impl Ingest {
    pub(crate) fn new(source: Source) -> Ingest {
        Ingest {
            source: Arc::new(source),
            inserted: Arc::new(Notify::new()),
            running: Mutex::new(None),
        }
    }

    /// Fails with [`Error::Config`] when the stream cannot be opened with the store's connect
    /// options, so that the relay reports it instead of waiting for messages that never come.
    pub(crate) fn check(&self) -> Result<(), Error> {
        match &self.source.refusal {
            Some(refusal) => Err(Error::Config(refusal.clone())),
            None => Ok(()),
        }
    }

    /// Starts the ingest for `session` unless it runs already; replaces one left from an
    /// earlier session.
    pub(crate) fn serve(&self, session: &Arc<Session>) {
        let mut running = self
            .running
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if running
            .as_ref()
            .is_some_and(|r| r.epoch == session.epoch && !r.task.is_finished())
        {
            return;
        }
        if let Some(old) = running.take() {
            old.task.abort();
        }
        let task = tokio::spawn(run(
            self.source.clone(),
            session.clone(),
            self.inserted.clone(),
        ));
        *running = Some(Running {
            epoch: session.epoch,
            task,
        });
    }

    /// Resolves once the ingest inserted messages (at once if it did since the last call).
    pub(crate) async fn inserted(&self) {
        self.inserted.notified().await;
    }
}

impl Drop for Ingest {
    fn drop(&mut self) {
        if let Some(running) = self
            .running
            .get_mut()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
        {
            running.task.abort();
        }
    }
}

/// Ingests for as long as `session` is open, reconnecting after failures.
async fn run(source: Arc<Source>, session: Arc<Session>, inserted: Arc<Notify>) {
    let schema = &source.outbox.config().schema;
    loop {
        let Err(error) = tokio::select! {
            () = session.closed() => return,
            result = ingest(&source, &inserted) => result,
        };
        tracing::warn!(%schema, %error, "wal ingest failed; reconnecting");
        tokio::select! {
            () = session.closed() => return,
            () = tokio::time::sleep(RETRY) => {}
        }
    }
}

/// Messages read from the stream, not yet inserted: whole transactions, in commit order.
#[derive(Default)]
struct Pending {
    messages: Vec<Message>,
    /// Per transaction: the end of its commit record, and where its messages end in `messages`.
    transactions: Vec<(u64, usize)>,
}

/// Streams the slot and inserts what it delivers; returns only on error.
async fn ingest(source: &Source, inserted: &Notify) -> Result<Infallible, Error> {
    let outbox = &source.outbox;
    let sql = outbox.sql();
    let (mut db, connection) = tokio::time::timeout(
        outbox.config().connect_timeout,
        source.tls.connect(&source.db),
    )
    .await
    .map_err(|_| Error::Timeout("opening the wal ingest connection"))?
    .map_err(Error::Connect)?;
    tokio::spawn(connection);
    let (insert, lock, set) = futures::try_join!(
        db.prepare_typed(&sql.enqueue_batch, &ENQUEUE_BATCH_TYPES),
        db.prepare(&sql.wal_progress_lock),
        db.prepare(&sql.wal_progress_set),
    )
    .map_err(Error::query("prepare the wal ingest"))?;
    let recorded: PgLsn = db
        .query_one(&sql.wal_progress_read, &[])
        .await
        .map_err(Error::query("read the wal progress"))?
        .try_get(0)
        .map_err(Error::query("read the wal progress"))?;
    // Everything up to `done` is in the table, or had no message of ours.
    let mut done = u64::from(recorded);
    let mut config = source.stream.clone();
    config.ack_lsn = Some(Lsn::from_u64(done));
    let mut stream = ReplicationClient::connect(config)
        .await
        .map_err(|e| Error::Replication(e.to_string()))?;
    let prefix = outbox.wal_prefix();
    let mut open: Option<(SystemTime, Vec<Message>)> = None;
    let mut pending = Pending::default();
    loop {
        // Wait for the stream while nothing is pending; with messages pending, take only what
        // it has right now, and insert once it has nothing more or the batch is full.
        let event = if pending.messages.is_empty() {
            Some(stream.recv().await)
        } else {
            stream.recv().now_or_never()
        };
        if let Some(event) = event {
            let event = event
                .map_err(|e| Error::Replication(e.to_string()))?
                .ok_or_else(|| Error::Replication("the server ended the stream".into()))?;
            match event {
                ReplicationEvent::Begin {
                    commit_time_micros, ..
                } => open = Some((from_pg_micros(commit_time_micros), Vec::new())),
                ReplicationEvent::Message {
                    transactional: true,
                    prefix: ref emitted,
                    ref content,
                    ..
                } if emitted == prefix => {
                    let (commit, messages) = open.as_mut().ok_or_else(|| {
                        Error::Protocol("a wal message outside of a transaction".into())
                    })?;
                    messages.extend(wal::decode(content, *commit)?);
                }
                ReplicationEvent::Commit { end_lsn, .. } => {
                    let messages = open.take().map(|(_, messages)| messages);
                    let end = end_lsn.as_u64();
                    match messages {
                        // Read again after a reconnect: already in the table.
                        _ if end <= done => {}
                        Some(messages) if !messages.is_empty() => {
                            pending.messages.extend(messages);
                            pending.transactions.push((end, pending.messages.len()));
                        }
                        // Nothing of ours: confirmable as soon as nothing pending is before it.
                        _ if pending.messages.is_empty() => {
                            done = end;
                            stream.update_applied_lsn(end_lsn);
                        }
                        _ => pending.transactions.push((end, pending.messages.len())),
                    }
                }
                // The server has sent everything up to `wal_end`. With nothing pending or open,
                // all of it is handled, including records after the last commit (vacuum,
                // checkpoints): confirming them lets the server recycle that WAL on an idle
                // outbox too.
                ReplicationEvent::KeepAlive { wal_end, .. }
                    if open.is_none() && pending.messages.is_empty() && wal_end.as_u64() > done =>
                {
                    done = wal_end.as_u64();
                    stream.update_applied_lsn(wal_end);
                }
                _ => {}
            }
            if pending.messages.len() < BATCH {
                continue;
            }
        }
        done = flush(&mut db, &insert, &lock, &set, &mut pending).await?;
        stream.update_applied_lsn(Lsn::from_u64(done));
        inserted.notify_one();
    }
}

/// Inserts the pending transactions' messages and records the end of the last one, in one
/// transaction; returns that end. Transactions another ingest recorded meanwhile are skipped.
async fn flush(
    db: &mut tokio_postgres::Client,
    insert: &tokio_postgres::Statement,
    lock: &tokio_postgres::Statement,
    set: &tokio_postgres::Statement,
    pending: &mut Pending,
) -> Result<u64, Error> {
    let Some(&(end, _)) = pending.transactions.last() else {
        return Err(Error::Protocol(
            "a wal ingest with nothing to insert".into(),
        ));
    };
    let tx = db
        .transaction()
        .await
        .map_err(Error::query("begin the wal ingest"))?;
    let recorded: PgLsn = tx
        .query_one(lock, &[])
        .await
        .map_err(Error::query("lock the wal progress"))?
        .try_get(0)
        .map_err(Error::query("lock the wal progress"))?;
    let recorded = u64::from(recorded);
    let first = pending
        .transactions
        .iter()
        .take_while(|(tx_end, _)| *tx_end <= recorded)
        .last()
        .map_or(0, |&(_, upto)| upto);
    let messages = &pending.messages[first..];
    if !messages.is_empty() {
        let params = BatchParams::new(messages);
        tx.execute(insert, &params.values())
            .await
            .map_err(Error::query("insert wal messages"))?;
    }
    if end > recorded {
        tx.execute(set, &[&PgLsn::from(end)])
            .await
            .map_err(Error::query("record the wal progress"))?;
    }
    tx.commit()
        .await
        .map_err(Error::query("commit the wal ingest"))?;
    pending.messages.clear();
    pending.transactions.clear();
    Ok(end.max(recorded))
}

/// A time in PostgreSQL's representation: microseconds since 2000-01-01.
fn from_pg_micros(micros: i64) -> SystemTime {
    let since = Duration::from_micros(micros.unsigned_abs());
    if micros >= 0 {
        UNIX_EPOCH + PG_EPOCH + since
    } else {
        UNIX_EPOCH + PG_EPOCH - since
    }
}
