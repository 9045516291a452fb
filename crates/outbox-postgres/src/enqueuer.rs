//! [`Enqueuer`]: the enqueue statements prepared once on a connection.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use outbox_core::Message;
use tokio_postgres::Statement;
use tokio_postgres::types::{ToSql, Type};

use crate::outbox::{ENQUEUE_BATCH_TYPES, ENQUEUE_TYPES, PARAMS_NOW, Plan, due_now};
use crate::wal::EMIT_TYPES;
use crate::{EnqueueMode, Error, Executor, PgOutbox, sql};

/// How many joined statements an [`Enqueuer`] keeps.
const JOINED_STATEMENTS: usize = 64;

/// [`PgOutbox::enqueue`] and [`PgOutbox::enqueue_batch`] with their statements prepared once on
/// one connection: each call then only binds and executes, instead of having PostgreSQL parse
/// and plan the insert again. Made by [`PgOutbox::prepare`].
///
/// For `tokio-postgres` connections: on a `deadpool-postgres` client or transaction, `enqueue`
/// already uses the connection's statement cache (see [`PgConfig::prepare_enqueue`]).
///
/// Use it with the connection it was prepared on, or with transactions of that connection: a
/// prepared statement lives in one server session. On another connection PostgreSQL answers
/// with an error (the statement does not exist there), which the call returns; nothing panics.
/// For the same reason, do not use it behind a pooler in transaction mode that does not keep
/// prepared statements.
///
/// The statements stay prepared until the last clone is dropped. Cloning is cheap (a reference
/// count).
///
/// [`PgConfig::prepare_enqueue`]: crate::PgConfig::prepare_enqueue
///
/// # Examples
///
/// ```no_run
/// # async fn example() -> Result<(), Box<dyn std::error::Error>> {
/// use outbox_core::Message;
/// use outbox_postgres::{PgConfig, PgOutbox};
///
/// let (mut client, connection) =
///     tokio_postgres::connect("postgres://postgres@127.0.0.1/app", tokio_postgres::NoTls).await?;
/// tokio::spawn(connection);
///
/// let outbox = PgOutbox::new(PgConfig::default())?;
/// // Once per connection.
/// let enqueuer = outbox.prepare(&client).await?;
///
/// for order in 0..3_i64 {
///     let tx = client.transaction().await?;
///     tx.execute("INSERT INTO orders (id) VALUES ($1)", &[&order]).await?;
///     let message = Message::builder("orders.created")
///         .key(format!("order-{order}"))
///         .payload("{}")
///         .build()?;
///     enqueuer.enqueue(&tx, &message).await?;
///     tx.commit().await?;
/// }
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct Enqueuer {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    outbox: PgOutbox,
    enqueue: Statement,
    /// The enqueue of a message due at once.
    enqueue_now: Statement,
    enqueue_batch: Statement,
    /// The `pg_notify` of [`WakeUp::Listen`](crate::WakeUp::Listen); `None` in Poll mode.
    notify: Option<Statement>,
    /// The emit of [`EnqueueMode::WalMessage`](crate::EnqueueMode::WalMessage); `None` in
    /// the insert mode.
    emit: Option<Statement>,
    /// The joined statements of [`Enqueuer::execute_and_enqueue`] and
    /// [`Enqueuer::execute_and_emit`], by [`Joined`] kind and then the caller's statement.
    joined: Mutex<[HashMap<String, Statement>; 3]>,
}

/// The kinds of joined statements an [`Enqueuer`] keeps.
#[derive(Clone, Copy, Debug)]
enum Joined {
    /// The insert of a scheduled message.
    Enqueue = 0,
    /// The insert of a message due at once.
    EnqueueNow = 1,
    /// The emit of a WAL message.
    Emit = 2,
}

impl Enqueuer {
    /// Like [`PgOutbox::enqueue`]: the same checks before anything is sent, the same errors and
    /// result, and the `pg_notify` in Listen mode; with the prepared statement.
    pub async fn enqueue<C: Executor + ?Sized>(
        &self,
        client: &C,
        message: &Message,
    ) -> Result<i64, Error> {
        let inner = &*self.inner;
        let plan = |due_now| Plan::Prepared {
            statement: if due_now {
                &inner.enqueue_now
            } else {
                &inner.enqueue
            },
            notify: inner.notify.as_ref(),
        };
        inner.outbox.enqueue_with(client, message, plan).await
    }

    /// Like [`PgOutbox::enqueue_batch`]: one statement for all of `messages`, seqs in their
    /// order; with the prepared statement. An empty slice sends nothing.
    pub async fn enqueue_batch<C: Executor + ?Sized>(
        &self,
        client: &C,
        messages: &[Message],
    ) -> Result<Vec<i64>, Error> {
        let inner = &*self.inner;
        let plan = Plan::Prepared {
            statement: &inner.enqueue_batch,
            notify: inner.notify.as_ref(),
        };
        inner
            .outbox
            .enqueue_batch_with(client, messages, plan)
            .await
    }

    /// [`PgOutbox::execute_and_enqueue`] on this connection: your `statement` (with a
    /// `RETURNING` clause) and the enqueue of `message` in one SQL statement, prepared on the
    /// first call with each `statement` and kept for the next ones.
    pub async fn execute_and_enqueue<C: Executor + ?Sized>(
        &self,
        client: &C,
        statement: &str,
        params: &[&(dyn ToSql + Sync)],
        message: &Message,
    ) -> Result<Option<i64>, Error> {
        let outbox = &self.inner.outbox;
        outbox.require_insert("execute_and_enqueue")?;
        outbox.check(message)?;
        let due_now = due_now(message);
        let kind = if due_now {
            Joined::EnqueueNow
        } else {
            Joined::Enqueue
        };
        let prepared = self
            .joined_statement(client, kind, statement, || {
                outbox
                    .sql()
                    .write_and_enqueue(statement, params.len(), due_now)
            })
            .await?;
        outbox
            .write_and_enqueue_with(
                client,
                &prepared,
                self.inner.notify.as_ref(),
                params,
                message,
            )
            .await
    }

    /// Like [`PgOutbox::emit`], with the prepared statement.
    pub async fn emit<C: Executor + ?Sized>(
        &self,
        client: &C,
        message: &Message,
    ) -> Result<(), Error> {
        self.emit_batch(client, std::slice::from_ref(message)).await
    }

    /// Like [`PgOutbox::emit_batch`], with the prepared statement: one WAL record for all of
    /// `messages`. An empty slice sends nothing.
    pub async fn emit_batch<C: Executor + ?Sized>(
        &self,
        client: &C,
        messages: &[Message],
    ) -> Result<(), Error> {
        let inner = &*self.inner;
        let Some(emit) = &inner.emit else {
            return inner.outbox.require_wal("emit");
        };
        if messages.is_empty() {
            return Ok(());
        }
        let plan = Plan::Prepared {
            statement: emit,
            notify: None,
        };
        inner.outbox.emit_with(client, messages, plan).await
    }

    /// [`PgOutbox::execute_and_emit`] on this connection: your `statement` and the emit of
    /// `message` in one SQL statement, prepared on the first call with each `statement`.
    pub async fn execute_and_emit<C: Executor + ?Sized>(
        &self,
        client: &C,
        statement: &str,
        params: &[&(dyn ToSql + Sync)],
        message: &Message,
    ) -> Result<bool, Error> {
        let outbox = &self.inner.outbox;
        outbox.require_wal("execute_and_emit")?;
        outbox.check(message)?;
        let prepared = self
            .joined_statement(client, Joined::Emit, statement, || {
                outbox.sql().write_and_emit(statement, params.len())
            })
            .await?;
        outbox
            .write_and_emit_with(client, &prepared, params, message)
            .await
    }

    /// The joined statement of `kind` for the caller's `statement`, prepared from `sql()` on
    /// first use.
    async fn joined_statement<C: Executor + ?Sized>(
        &self,
        client: &C,
        kind: Joined,
        statement: &str,
        sql: impl FnOnce() -> String,
    ) -> Result<Statement, Error> {
        if let Some(prepared) = self.joined()[kind as usize].get(statement) {
            return Ok(prepared.clone());
        }
        let prepared = client
            .prepare_typed(&sql(), &[])
            .await
            .map_err(Error::query("prepare a joined statement"))?;
        let mut joined = self.joined();
        let joined = &mut joined[kind as usize];
        // Texts are meant to be fixed, values travel as parameters; a caller that builds texts
        // anyway must not grow the cache without bound.
        if joined.len() >= JOINED_STATEMENTS {
            joined.clear();
        }
        joined.insert(statement.to_owned(), prepared.clone());
        Ok(prepared)
    }

    fn joined(&self) -> std::sync::MutexGuard<'_, [HashMap<String, Statement>; 3]> {
        // A cache of prepared statements: consistent after every insert, so keep using it
        // after a panic elsewhere.
        self.inner
            .joined
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The outbox these statements enqueue into.
    pub fn outbox(&self) -> &PgOutbox {
        &self.inner.outbox
    }
}

impl PgOutbox {
    /// Prepares the emit, after checking that the outbox's replication slot exists: a message
    /// emitted without it would never be decoded. Checked here, once per connection, rather
    /// than in every emit, where it cost about a tenth of a short transaction's rate.
    async fn prepare_emit<C: Executor + ?Sized>(&self, client: &C) -> Result<Statement, Error> {
        let slot = self.config().wal_slot();
        let lookup: [(&(dyn ToSql + Sync), Type); 1] = [(&slot, Type::TEXT)];
        let (emit, found) = futures::try_join!(
            client.prepare_typed(sql::EMIT, &EMIT_TYPES),
            client.query_typed(sql::WAL_SLOT, &lookup),
        )
        .map_err(Error::query("prepare emit"))?;
        if found.is_empty() {
            return Err(Error::Config(format!(
                "the outbox's replication slot {slot} does not exist: run migrate (with \
                 EnqueueMode::WalMessage) before emitting, or the messages would be lost"
            )));
        }
        Ok(emit)
    }

    /// Prepares the enqueue statements on `client`'s connection (one round trip) and returns an
    /// [`Enqueuer`] that runs them; see there for which connections it may then be used on.
    ///
    /// `client` may be a connection or a transaction: prepared statements belong to the session,
    /// so they outlive the transaction, even one that rolls back. On a `deadpool-postgres`
    /// client or transaction, the statements come from the connection's statement cache.
    pub async fn prepare<C: Executor + ?Sized>(&self, client: &C) -> Result<Enqueuer, Error> {
        let sql = self.sql();
        let ((enqueue, notify), enqueue_now, enqueue_batch) = futures::try_join!(
            self.prepare_with_notify(client, &sql.enqueue, &ENQUEUE_TYPES),
            client.prepare_typed(&sql.enqueue_now, &ENQUEUE_TYPES[..PARAMS_NOW]),
            client.prepare_typed(&sql.enqueue_batch, &ENQUEUE_BATCH_TYPES),
        )
        .map_err(Error::query("prepare enqueue"))?;
        let emit = match self.config().enqueue_mode {
            EnqueueMode::WalMessage => Some(self.prepare_emit(client).await?),
            _ => None,
        };
        Ok(Enqueuer {
            inner: Arc::new(Inner {
                outbox: self.clone(),
                enqueue,
                enqueue_now,
                enqueue_batch,
                notify,
                emit,
                joined: Mutex::default(),
            }),
        })
    }
}
