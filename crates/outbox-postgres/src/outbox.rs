//! [`PgOutbox`]: migrations and enqueueing in the caller's transaction.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use outbox_core::{Headers, Message, Schedule};
use tokio_postgres::types::{FromSql, Json, ToSql, Type};
use tokio_postgres::{Row, Statement};
use uuid::Uuid;

use crate::sql::{self, Sql};
use crate::{EnqueueMode, Error, Executor, PgConfig, WakeUp};

/// The outbox in one PostgreSQL schema: runs its migrations and enqueues messages.
///
/// Cloning is cheap (a reference count); every clone uses the same configuration and the SQL
/// rendered once for its schema.
///
/// # Examples
///
/// Enqueue in your own `tokio-postgres` transaction: the message is published if and only if the
/// transaction commits.
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
/// outbox.migrate(&client).await?;
///
/// let tx = client.transaction().await?;
/// tx.execute("UPDATE accounts SET balance = balance - 10 WHERE id = $1", &[&7_i64]).await?;
/// let message = Message::builder("accounts.debited").key("account-7").payload("10").build()?;
/// let seq = outbox.enqueue(&tx, &message).await?;
/// tx.commit().await?;
/// # let _ = seq; Ok(()) }
/// ```
///
/// The same with a `deadpool-postgres` pool (feature `deadpool`, on by default):
///
/// ```no_run
/// # async fn example(pool: deadpool_postgres::Pool) -> Result<(), Box<dyn std::error::Error>> {
/// use outbox_core::Message;
/// use outbox_postgres::{PgConfig, PgOutbox};
///
/// let outbox = PgOutbox::new(PgConfig::default())?;
/// let mut client = pool.get().await?;
/// let tx = client.transaction().await?;
/// let messages = [
///     Message::builder("orders.created").key("customer-1").payload("{}").build()?,
///     Message::builder("orders.created").key("customer-2").payload("{}").build()?,
/// ];
/// let seqs = outbox.enqueue_batch(&tx, &messages).await?;
/// tx.commit().await?;
/// assert!(seqs[0] < seqs[1]);
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct PgOutbox {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    config: PgConfig,
    sql: Sql,
    channel: String,
    /// The prefix of the outbox's WAL messages (see the `wal` module).
    wal_prefix: String,
}

impl PgOutbox {
    /// The schema version [`migrate`](PgOutbox::migrate) brings a schema to: the latest migration
    /// this crate ships. [`schema_version`](PgOutbox::schema_version) reports what a database has.
    pub const SCHEMA_VERSION: i32 = sql::MIGRATIONS[sql::MIGRATIONS.len() - 1].version;

    /// An outbox configured by `config`; fails if [`PgConfig::validate`] does.
    pub fn new(config: PgConfig) -> Result<Self, Error> {
        config.validate()?;
        let channel = config.channel();
        let wal_prefix = config.wal_prefix();
        let sql = Sql::render(&config.schema, &channel, config.retention.is_some());
        Ok(Self {
            inner: Arc::new(Inner {
                config,
                sql,
                channel,
                wal_prefix,
            }),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &PgConfig {
        &self.inner.config
    }

    pub(crate) fn sql(&self) -> &Sql {
        &self.inner.sql
    }

    pub(crate) fn channel(&self) -> &str {
        &self.inner.channel
    }

    pub(crate) fn wal_prefix(&self) -> &str {
        &self.inner.wal_prefix
    }

    /// Creates or upgrades the schema; returns the versions this call applied (empty when the
    /// schema was up to date).
    ///
    /// Runs in one transaction on `client`, under a transaction-level advisory lock derived from
    /// the schema name, so instances starting at the same time migrate one after the other and
    /// the later ones find nothing to do. Each migration is recorded in
    /// `<schema>.schema_migrations` and applied once. On error the transaction is rolled back
    /// and nothing is applied. `client` must not be inside a transaction; with a
    /// `deadpool-postgres` client, pass `&**client`.
    ///
    /// With [`EnqueueMode::WalMessage`], first checks that the server runs with
    /// `wal_level = logical` (failing with [`Error::Config`] before anything is applied), and
    /// after the migrations creates the outbox's publication and replication slot if they do not
    /// exist (see the [`wal`](crate::wal) module). Creating a slot waits for the transactions
    /// running at that moment to end.
    pub async fn migrate(&self, client: &tokio_postgres::Client) -> Result<Vec<i32>, Error> {
        let wal = self.config().enqueue_mode == EnqueueMode::WalMessage;
        if wal {
            self.check_wal_level(client).await?;
        }
        client
            .batch_execute(sql::BEGIN)
            .await
            .map_err(Error::query("begin migration"))?;
        match self.migrate_in_transaction(client).await {
            Ok(applied) => {
                client
                    .batch_execute(sql::COMMIT)
                    .await
                    .map_err(Error::query("commit migration"))?;
                if wal {
                    self.set_up_wal(client).await?;
                }
                Ok(applied)
            }
            Err(error) => {
                // The original error is what matters; a failed rollback means the connection is
                // gone, which also ends the transaction.
                let _ = client.batch_execute(sql::ROLLBACK).await;
                Err(error)
            }
        }
    }

    async fn migrate_in_transaction(
        &self,
        client: &tokio_postgres::Client,
    ) -> Result<Vec<i32>, Error> {
        let sql = self.sql();
        client
            .execute(sql::MIGRATION_LOCK, &[&self.config().migration_lock_id()])
            .await
            .map_err(Error::query("take the migration lock"))?;
        client
            .batch_execute(&sql.bootstrap)
            .await
            .map_err(Error::query("create the schema"))?;
        let applied: Vec<i32> = client
            .query(&sql.applied_versions, &[])
            .await
            .map_err(Error::query("read applied migrations"))?
            .iter()
            .map(|row| row.try_get(0))
            .collect::<Result<_, _>>()
            .map_err(Error::query("read applied migrations"))?;
        let mut done = Vec::new();
        for migration in sql::MIGRATIONS {
            if applied.contains(&migration.version) {
                continue;
            }
            let version = migration.version;
            client
                .batch_execute(&sql.migration(migration))
                .await
                .map_err(|source| Error::Migration { version, source })?;
            client
                .execute(&sql.record_migration, &[&version, &migration.name])
                .await
                .map_err(|source| Error::Migration { version, source })?;
            tracing::info!(schema = %self.config().schema, version, name = migration.name, "applied outbox migration");
            done.push(version);
        }
        Ok(done)
    }

    /// Enqueues `message` on `client` (usually your open transaction); returns its seq.
    ///
    /// The message becomes visible to the relay when the transaction commits and never if it
    /// rolls back. One round trip. With [`WakeUp::Listen`], also sends one `pg_notify` in the
    /// same transaction (pipelined, no extra round trip).
    ///
    /// On a `deadpool-postgres` client or transaction, with [`PgConfig::prepare_enqueue`] (the
    /// default), the statement is prepared through the connection's statement cache: the first
    /// enqueue of a connection takes one more round trip to prepare it, the following ones skip
    /// parsing and planning. Other executors send the statement with its parameter types; see
    /// [`PgOutbox::prepare`] for prepared statements on a `tokio-postgres` connection.
    ///
    /// Fails with [`Error::InvalidMessage`], before anything is sent (so the transaction stays
    /// usable), for a message that [`Message::validate`] rejects or whose
    /// [`wire_size`](Message::wire_size) is over [`PgConfig::max_payload`].
    pub async fn enqueue<C: Executor + ?Sized>(
        &self,
        client: &C,
        message: &Message,
    ) -> Result<i64, Error> {
        self.enqueue_with(client, message, |_| self.plan(client))
            .await
    }

    /// Enqueues `messages` with one statement on `client`; returns their seqs, in the order of
    /// `messages` (and increasing in that order).
    ///
    /// Same visibility rules, checks and use of prepared statements as
    /// [`enqueue`](PgOutbox::enqueue); one invalid message fails the whole call before anything
    /// is sent. An empty slice sends nothing.
    pub async fn enqueue_batch<C: Executor + ?Sized>(
        &self,
        client: &C,
        messages: &[Message],
    ) -> Result<Vec<i64>, Error> {
        self.enqueue_batch_with(client, messages, self.plan(client))
            .await
    }

    /// How `enqueue` and `enqueue_batch` send their statement on `client`.
    pub(crate) fn plan<C: Executor + ?Sized>(&self, client: &C) -> Plan<'static> {
        if self.config().prepare_enqueue && client.caches_statements() {
            Plan::Cached
        } else {
            Plan::Typed
        }
    }

    /// [`enqueue`](PgOutbox::enqueue), with its statement sent as `plan` says; `plan` is told
    /// whether the message is due at once, which picks the statement.
    pub(crate) async fn enqueue_with<'p, C: Executor + ?Sized>(
        &self,
        client: &C,
        message: &Message,
        plan: impl FnOnce(bool) -> Plan<'p>,
    ) -> Result<i64, Error> {
        self.require_insert("enqueue")?;
        self.check(message)?;
        let params = OneParams::new(message);
        let sql = self.sql();
        let statement = if params.due_now() {
            &sql.enqueue_now
        } else {
            &sql.enqueue
        };
        let values = params.values();
        let bound = params.bound();
        let rows = self
            .run(
                client,
                statement,
                &ENQUEUE_TYPES[..bound],
                &values[..bound],
                plan(params.due_now()),
            )
            .await
            .map_err(Error::query("enqueue"))?;
        match rows.as_slice() {
            [row] => column(row, "seq", "enqueue"),
            _ => Err(Error::Protocol(format!(
                "enqueue returned {} rows instead of 1",
                rows.len()
            ))),
        }
    }

    /// [`enqueue_batch`](PgOutbox::enqueue_batch), with its statement sent as `plan` says.
    pub(crate) async fn enqueue_batch_with<C: Executor + ?Sized>(
        &self,
        client: &C,
        messages: &[Message],
        plan: Plan<'_>,
    ) -> Result<Vec<i64>, Error> {
        self.require_insert("enqueue_batch")?;
        if messages.is_empty() {
            return Ok(Vec::new());
        }
        for message in messages {
            self.check(message)?;
        }
        let params = BatchParams::new(messages);
        let rows = self
            .run(
                client,
                &self.sql().enqueue_batch,
                &ENQUEUE_BATCH_TYPES,
                &params.values(),
                plan,
            )
            .await
            .map_err(Error::query("enqueue batch"))?;
        seqs_in_order(&params.ids, &rows, "enqueue batch")
    }

    /// Runs an enqueue statement (`sql`, whose parameters have `types`) with `values`, and its
    /// `pg_notify` in Listen mode, the way `plan` says.
    pub(crate) async fn run<C: Executor + ?Sized>(
        &self,
        client: &C,
        sql: &str,
        types: &[Type],
        values: &[&(dyn ToSql + Sync)],
        plan: Plan<'_>,
    ) -> Result<Vec<Row>, tokio_postgres::Error> {
        match plan {
            Plan::Typed => {
                let typed: Vec<(&(dyn ToSql + Sync), Type)> = values
                    .iter()
                    .zip(types)
                    .map(|(value, ty)| (*value, ty.clone()))
                    .collect();
                self.with_notify(client, client.query_typed(sql, &typed))
                    .await
            }
            Plan::Cached => {
                let (statement, notify) = self.prepare_with_notify(client, sql, types).await?;
                self.run_prepared(client, &statement, notify.as_ref(), values)
                    .await
            }
            Plan::Prepared { statement, notify } => {
                self.run_prepared(client, statement, notify, values).await
            }
        }
    }

    /// Prepares `sql` (parameters of `types`) on `client` and, in Listen mode, the `pg_notify`
    /// too, both in one round trip.
    pub(crate) async fn prepare_with_notify<C: Executor + ?Sized>(
        &self,
        client: &C,
        sql: &str,
        types: &[Type],
    ) -> Result<(Statement, Option<Statement>), tokio_postgres::Error> {
        let statement = client.prepare_typed(sql, types);
        match self.config().wake_up {
            WakeUp::Poll => Ok((statement.await?, None)),
            WakeUp::Listen => {
                let notify = client.prepare_typed(sql::NOTIFY, &NOTIFY_TYPES);
                let (statement, notify) = futures::try_join!(statement, notify)?;
                Ok((statement, Some(notify)))
            }
        }
    }

    /// Runs a prepared enqueue `statement`, pipelined with the prepared `notify` if there is one.
    async fn run_prepared<C: Executor + ?Sized>(
        &self,
        client: &C,
        statement: &Statement,
        notify: Option<&Statement>,
        values: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, tokio_postgres::Error> {
        let rows = client.query_prepared(statement, values);
        match notify {
            None => rows.await,
            Some(notify) => {
                let channel = self.channel();
                let params: [&(dyn ToSql + Sync); 1] = [&channel];
                let (rows, _) = futures::try_join!(rows, client.query_prepared(notify, &params))?;
                Ok(rows)
            }
        }
    }

    /// Runs your `statement` and enqueues `message`, as **one** SQL statement on `client`; the
    /// message is enqueued only if `statement` returned at least one row. Returns its seq, or
    /// `None` when `statement` changed nothing and nothing was enqueued.
    ///
    /// `statement` is an `INSERT`, `UPDATE` or `DELETE` **with a `RETURNING` clause** (any
    /// columns, `RETURNING 1` will do), whose parameters are `params` (`$1`, `$2`, ...). It runs
    /// as a data-modifying `WITH` query of the enqueue, so it and the message commit or roll back
    /// together, like an [`enqueue`](PgOutbox::enqueue) next to it in the same transaction
    /// would. What it buys: the enqueue costs no statement of its own, which is most of what an
    /// enqueue costs a short transaction (measured with 16 producers on 2 cores: single-insert
    /// transactions kept about 0.89 of their rate with the enqueue in the same statement, about
    /// 0.78 with a separate, pipelined, prepared enqueue). It also makes "publish only if the
    /// update matched" one statement: `UPDATE ... WHERE version = $2 RETURNING 1`.
    ///
    /// The joined statement is always a prepared one (the types of your parameters come from
    /// PostgreSQL), so behind a pooler it needs the pooler's support for prepared statements,
    /// whatever [`PgConfig::prepare_enqueue`] says. On a `deadpool-postgres` client or
    /// transaction it is prepared once per connection, through its statement cache; on a
    /// `tokio-postgres` one it is prepared for each call, one more round trip, unless you call
    /// this through an [`Enqueuer`](crate::Enqueuer), which keeps it. Same checks as
    /// [`enqueue`](PgOutbox::enqueue), before anything is sent; a `statement` without
    /// `RETURNING` fails with PostgreSQL's error.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn example(client: &mut tokio_postgres::Client) -> Result<(), Box<dyn std::error::Error>> {
    /// use outbox_core::Message;
    /// use outbox_postgres::{PgConfig, PgOutbox};
    ///
    /// let outbox = PgOutbox::new(PgConfig::default())?;
    /// let tx = client.transaction().await?;
    /// let event = Message::builder("orders.created").key("customer-7").payload("{}").build()?;
    /// let seq = outbox
    ///     .execute_and_enqueue(
    ///         &tx,
    ///         "INSERT INTO orders (customer, total) VALUES ($1, $2) RETURNING id",
    ///         &[&"customer-7", &1999_i64],
    ///         &event,
    ///     )
    ///     .await?;
    /// tx.commit().await?;
    /// assert!(seq.is_some());
    /// # Ok(()) }
    /// ```
    pub async fn execute_and_enqueue<C: Executor + ?Sized>(
        &self,
        client: &C,
        statement: &str,
        params: &[&(dyn ToSql + Sync)],
        message: &Message,
    ) -> Result<Option<i64>, Error> {
        self.require_insert("execute_and_enqueue")?;
        self.check(message)?;
        let sql = self
            .sql()
            .write_and_enqueue(statement, params.len(), due_now(message));
        let (prepared, notify) = self
            .prepare_with_notify(client, &sql, &[])
            .await
            .map_err(Error::query("prepare write and enqueue"))?;
        self.write_and_enqueue_with(client, &prepared, notify.as_ref(), params, message)
            .await
    }

    /// [`execute_and_enqueue`](PgOutbox::execute_and_enqueue) with its joined statement (and, in
    /// Listen mode, the `pg_notify`) already prepared on `client`, for a `message` the caller
    /// has [checked](PgOutbox::check).
    pub(crate) async fn write_and_enqueue_with<C: Executor + ?Sized>(
        &self,
        client: &C,
        prepared: &Statement,
        notify: Option<&Statement>,
        params: &[&(dyn ToSql + Sync)],
        message: &Message,
    ) -> Result<Option<i64>, Error> {
        let ours = OneParams::new(message);
        let mut values: Vec<&(dyn ToSql + Sync)> = Vec::with_capacity(params.len() + PARAMS);
        values.extend_from_slice(params);
        values.extend_from_slice(&ours.values()[..ours.bound()]);
        let rows = self
            .run_prepared(client, prepared, notify, &values)
            .await
            .map_err(Error::query("write and enqueue"))?;
        match rows.as_slice() {
            [] => Ok(None),
            [row] => column(row, "seq", "write and enqueue").map(Some),
            _ => Err(Error::Protocol(format!(
                "write and enqueue returned {} rows instead of 1",
                rows.len()
            ))),
        }
    }

    /// Refuses, before anything is sent, a message that [`Message::validate`] rejects or that is
    /// over [`PgConfig::max_payload`]: the broker would refuse it too, but only after commit,
    /// as a dead letter.
    pub(crate) fn check(&self, message: &Message) -> Result<(), Error> {
        let invalid =
            |reason: String| Error::InvalidMessage(format!("message {}: {reason}", message.id()));
        message.validate().map_err(|error| match error {
            outbox_core::Error::InvalidMessage(reason) => invalid(reason),
            other => invalid(other.to_string()),
        })?;
        let size = message.wire_size();
        let max = self.config().max_payload;
        if size > max {
            return Err(invalid(format!(
                "{size} bytes with headers, over max_payload of {max} bytes"
            )));
        }
        Ok(())
    }

    /// Runs `statement`, pipelined with a `pg_notify` on the same connection in Listen mode.
    pub(crate) async fn with_notify<C: Executor + ?Sized, T>(
        &self,
        client: &C,
        statement: impl Future<Output = Result<T, tokio_postgres::Error>>,
    ) -> Result<T, tokio_postgres::Error> {
        match self.config().wake_up {
            WakeUp::Poll => statement.await,
            WakeUp::Listen => {
                let channel = self.channel();
                let params: [(&(dyn ToSql + Sync), Type); 1] = [(&channel, Type::TEXT)];
                let notify = client.query_typed(sql::NOTIFY, &params);
                let (result, _) = futures::try_join!(statement, notify)?;
                Ok(result)
            }
        }
    }
}

/// How an enqueue sends its statement.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Plan<'s> {
    /// With its parameter types, unnamed: parsed and planned on every call, but fit for any
    /// pooler.
    Typed,
    /// Prepared through the connection's statement cache (deadpool-postgres).
    Cached,
    /// Prepared beforehand on this connection, with the `pg_notify` in Listen mode.
    Prepared {
        statement: &'s Statement,
        notify: Option<&'s Statement>,
    },
}

/// How many parameters the enqueue statements take.
const PARAMS: usize = 8;

/// How many of them the statements for a message due at once take: the first six, without the
/// schedule.
pub(crate) const PARAMS_NOW: usize = 6;

/// The parameter types of `enqueue`, in the order of [`OneParams::values`].
pub(crate) static ENQUEUE_TYPES: [Type; PARAMS] = [
    Type::UUID,
    Type::TEXT,
    Type::TEXT,
    Type::BYTEA,
    Type::JSONB,
    Type::TIMESTAMPTZ,
    Type::TIMESTAMPTZ,
    Type::INT8,
];

/// The parameter types of `enqueue_batch`, in the order of [`BatchParams::values`].
pub(crate) static ENQUEUE_BATCH_TYPES: [Type; PARAMS] = [
    Type::UUID_ARRAY,
    Type::TEXT_ARRAY,
    Type::TEXT_ARRAY,
    Type::BYTEA_ARRAY,
    Type::JSONB_ARRAY,
    Type::TIMESTAMPTZ_ARRAY,
    Type::TIMESTAMPTZ_ARRAY,
    Type::INT8_ARRAY,
];

/// The parameter type of [`sql::NOTIFY`]: the channel.
static NOTIFY_TYPES: [Type; 1] = [Type::TEXT];

/// The values `enqueue` binds for one message, owned here so that either way of sending the
/// statement can borrow them.
struct OneParams<'m> {
    id: Uuid,
    subject: &'m str,
    key: Option<&'m str>,
    payload: &'m [u8],
    headers: Json<&'m Headers>,
    created_at: SystemTime,
    at: Option<SystemTime>,
    delay_us: i64,
}

impl<'m> OneParams<'m> {
    fn new(message: &'m Message) -> Self {
        let (at, delay_us) = schedule(message);
        Self {
            id: message.id(),
            subject: message.subject(),
            key: message.key(),
            payload: message.payload().as_ref(),
            headers: Json(message.headers()),
            created_at: message.created_at(),
            at,
            delay_us,
        }
    }

    /// Whether the message is due at once, so that the statements without its schedule apply.
    fn due_now(&self) -> bool {
        self.at.is_none() && self.delay_us == 0
    }

    /// How many of [`values`](OneParams::values) the statement for this message binds.
    fn bound(&self) -> usize {
        if self.due_now() { PARAMS_NOW } else { PARAMS }
    }

    /// The parameters, of [`ENQUEUE_TYPES`].
    fn values(&self) -> [&(dyn ToSql + Sync); PARAMS] {
        [
            &self.id,
            &self.subject,
            &self.key,
            &self.payload,
            &self.headers,
            &self.created_at,
            &self.at,
            &self.delay_us,
        ]
    }
}

/// The values `enqueue_batch` binds: one array per column.
pub(crate) struct BatchParams<'m> {
    ids: Vec<Uuid>,
    subjects: Vec<&'m str>,
    keys: Vec<Option<&'m str>>,
    payloads: Vec<&'m [u8]>,
    headers: Vec<Json<&'m Headers>>,
    created: Vec<SystemTime>,
    at: Vec<Option<SystemTime>>,
    delay_us: Vec<i64>,
}

impl<'m> BatchParams<'m> {
    pub(crate) fn new(messages: &'m [Message]) -> Self {
        let (at, delay_us) = messages.iter().map(schedule).unzip();
        Self {
            ids: messages.iter().map(Message::id).collect(),
            subjects: messages.iter().map(Message::subject).collect(),
            keys: messages.iter().map(Message::key).collect(),
            payloads: messages.iter().map(|m| m.payload().as_ref()).collect(),
            headers: messages.iter().map(|m| Json(m.headers())).collect(),
            created: messages.iter().map(Message::created_at).collect(),
            at,
            delay_us,
        }
    }

    /// The parameters, of [`ENQUEUE_BATCH_TYPES`].
    pub(crate) fn values(&self) -> [&(dyn ToSql + Sync); PARAMS] {
        [
            &self.ids,
            &self.subjects,
            &self.keys,
            &self.payloads,
            &self.headers,
            &self.created,
            &self.at,
            &self.delay_us,
        ]
    }
}

/// Whether `message` is due at once (no schedule, or a zero delay): it is then enqueued by the
/// statements that leave `available_at` and `delayed` to their defaults.
pub(crate) fn due_now(message: &Message) -> bool {
    OneParams::new(message).due_now()
}

/// The `available_at` parameters of a message: an absolute time, or a delay in microseconds
/// after the database's `now()`.
fn schedule(message: &Message) -> (Option<SystemTime>, i64) {
    match message.schedule() {
        Some(Schedule::At(at)) => (Some(at), 0),
        Some(Schedule::After(delay)) => {
            (None, i64::try_from(delay.as_micros()).unwrap_or(i64::MAX))
        }
        _ => (None, 0),
    }
}

/// Maps `(id, seq)` rows back to the order of `ids`.
pub(crate) fn seqs_in_order(
    ids: &[Uuid],
    rows: &[Row],
    operation: &'static str,
) -> Result<Vec<i64>, Error> {
    let mut by_id = HashMap::with_capacity(rows.len());
    for row in rows {
        let id: Uuid = column(row, "id", operation)?;
        by_id.insert(id, column::<i64>(row, "seq", operation)?);
    }
    ids.iter()
        .map(|id| {
            by_id.get(id).copied().ok_or_else(|| {
                Error::Protocol(format!("{operation} returned no seq for message {id}"))
            })
        })
        .collect()
}

/// Reads `name` from `row`, naming `operation` in the error.
pub(crate) fn column<'a, T: FromSql<'a>>(
    row: &'a Row,
    name: &str,
    operation: &'static str,
) -> Result<T, Error> {
    row.try_get(name).map_err(Error::query(operation))
}

/// Where a result holds the columns of a stored message: found by name once, then read by
/// position from every row of the result (a lookup by name compares the name with every
/// column's, for every value read).
#[derive(Debug, Clone, Copy)]
pub(crate) struct MessageColumns {
    seq: usize,
    attempts: usize,
    id: usize,
    subject: usize,
    key: usize,
    payload: usize,
    headers: usize,
    created_at: usize,
}

impl MessageColumns {
    const OP: &str = "read message";

    /// The positions in `row`'s result, which must have every column of a message.
    pub(crate) fn of(row: &Row) -> Result<Self, Error> {
        let find = |name: &str| {
            row.columns()
                .iter()
                .position(|c| c.name() == name)
                .ok_or_else(|| Error::Protocol(format!("a message's row has no column {name}")))
        };
        Ok(Self {
            seq: find("seq")?,
            attempts: find("attempts")?,
            id: find("id")?,
            subject: find("subject")?,
            key: find("key")?,
            payload: find("payload")?,
            headers: find("headers")?,
            created_at: find("created_at")?,
        })
    }

    fn get<'a, T: FromSql<'a>>(row: &'a Row, index: usize) -> Result<T, Error> {
        row.try_get(index).map_err(Error::query(Self::OP))
    }

    pub(crate) fn seq(&self, row: &Row) -> Result<i64, Error> {
        Self::get(row, self.seq)
    }

    /// The attempts so far; negative values (never written by this crate) read as 0.
    pub(crate) fn attempts(&self, row: &Row) -> Result<u32, Error> {
        let attempts: i32 = Self::get(row, self.attempts)?;
        Ok(u32::try_from(attempts).unwrap_or(0))
    }

    /// Rebuilds the message stored in `row`.
    pub(crate) fn message(&self, row: &Row) -> Result<Message, Error> {
        let subject: String = Self::get(row, self.subject)?;
        let key: Option<String> = Self::get(row, self.key)?;
        let payload: Vec<u8> = Self::get(row, self.payload)?;
        let StoredHeaders(headers) = Self::get(row, self.headers)?;
        let mut builder = Message::builder(subject)
            .id(Self::get(row, self.id)?)
            .payload(Bytes::from(payload))
            .created_at(Self::get(row, self.created_at)?);
        if let Some(key) = key {
            builder = builder.key(key);
        }
        for (name, value) in headers {
            builder = builder.header(name, value);
        }
        // Not rechecked: it was checked at enqueue, perhaps under older rules, and a message
        // that failed here would fail every claim and stop the relay. What the broker cannot
        // carry fails at publish and is dead-lettered.
        Ok(builder.build_stored())
    }
}

/// A `headers` column. Almost every message has none: `{}` is read without a JSON parse.
struct StoredHeaders(Headers);

impl<'a> FromSql<'a> for StoredHeaders {
    fn from_sql(
        ty: &Type,
        raw: &'a [u8],
    ) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        // jsonb's binary form is a version byte (1) and the text; json's is the text.
        let text = if *ty == Type::JSONB {
            raw.strip_prefix(&[1])
        } else {
            Some(raw)
        };
        if text == Some(b"{}".as_slice()) {
            return Ok(Self(Headers::new()));
        }
        Json::<Headers>::from_sql(ty, raw).map(|Json(headers)| Self(headers))
    }

    fn accepts(ty: &Type) -> bool {
        <Json<Headers> as FromSql>::accepts(ty)
    }
}
