//! [`Enqueuer`]: the enqueue statements prepared once on a connection.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use outbox_core::Message;
use tokio_postgres::Statement;
use tokio_postgres::types::ToSql;

use crate::outbox::{ENQUEUE_BATCH_TYPES, ENQUEUE_TYPES, PARAMS_NOW, Plan, due_now};
use crate::{Error, Executor, PgOutbox};

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
    /// The joined statements of [`Enqueuer::execute_and_enqueue`], by the caller's statement:
    /// for scheduled messages first, then for messages due at once.
    joined: Mutex<[HashMap<String, Statement>; 2]>,
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
        let inner = &*self.inner;
        inner.outbox.check(message)?;
        let due_now = due_now(message);
        let known = self.joined()[usize::from(due_now)].get(statement).cloned();
        let prepared = match known {
            Some(prepared) => prepared,
            None => {
                let sql = inner
                    .outbox
                    .sql()
                    .write_and_enqueue(statement, params.len(), due_now);
                let prepared = client
                    .prepare_typed(&sql, &[])
                    .await
                    .map_err(Error::query("prepare write and enqueue"))?;
                let mut joined = self.joined();
                let joined = &mut joined[usize::from(due_now)];
                // Texts are meant to be fixed, values travel as parameters; a caller that
                // builds texts anyway must not grow the cache without bound.
                if joined.len() >= JOINED_STATEMENTS {
                    joined.clear();
                }
                joined.insert(statement.to_owned(), prepared.clone());
                prepared
            }
        };
        inner
            .outbox
            .write_and_enqueue_with(client, &prepared, inner.notify.as_ref(), params, message)
            .await
    }

    fn joined(&self) -> std::sync::MutexGuard<'_, [HashMap<String, Statement>; 2]> {
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
        Ok(Enqueuer {
            inner: Arc::new(Inner {
                outbox: self.clone(),
                enqueue,
                enqueue_now,
                enqueue_batch,
                notify,
                joined: Mutex::default(),
            }),
        })
    }
}
