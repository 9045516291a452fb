//! [`PgInbox`]: exactly-once processing on the consumer side.
//!
//! The outbox delivers every message at least once, so a consumer may see a message again: a
//! JetStream redelivery after a lost ack, a consumer replaying the stream, a republish after the
//! duplicate window. The inbox makes the consumer's *database* effects happen once per message
//! id: in the transaction that applies the effect, [`PgInbox::process`] first records the id in
//! the inbox table. If the id was already recorded by a committed transaction, it answers
//! [`Processed::Duplicate`] and the consumer skips the effect; otherwise the effect and the record
//! commit (or roll back) together. The message is acknowledged to the broker only after the
//! commit, so a crash anywhere leads to a redelivery that is either applied (nothing committed)
//! or skipped (everything committed).
//!
//! # The guarantee, precisely
//!
//! For one inbox table, the statements a consumer runs in the transaction passed to
//! [`process`](PgInbox::process) after it answered [`Processed::New`] are committed at most once
//! per message id; with acknowledgement after commit and a broker that redelivers unacknowledged
//! messages, exactly once. Effects outside that transaction (an HTTP call, an e-mail, a write to
//! another database) are not covered: they can happen again when the transaction fails after
//! them, and they can happen without the transaction committing.
//!
//! # Concurrency
//!
//! Two consumers that receive the same message at the same moment cannot both apply it. The
//! record is an `INSERT ... ON CONFLICT (message_id) DO NOTHING` on the table's primary key. Under
//! `READ COMMITTED` (PostgreSQL's default), the second insert finds the first one's row not yet
//! committed and **waits** for that transaction to end: if it commits, the second answers
//! [`Processed::Duplicate`]; if it rolls back, the second inserts and answers [`Processed::New`].
//! The waiting consumer holds its transaction open meanwhile, so keep the effect short, and mind
//! `lock_timeout` if you set one (its error is transient: redeliver). Under `REPEATABLE READ` or
//! `SERIALIZABLE`, the second consumer instead fails with a serialization failure, which
//! [`Error::is_transient`] reports as transient: roll back, do not acknowledge, and the
//! redelivery answers [`Processed::Duplicate`].
//!
//! # Retention
//!
//! A record must outlive every possible redelivery of its message: keep records at least as long
//! as the stream keeps messages (its `max_age`), or as far back as a consumer may replay.
//! [`PgInbox::purge_older_than`] deletes older records in batches.
//!
//! # Examples
//!
//! ```no_run
//! # async fn example(message_id: uuid::Uuid) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! use outbox_postgres::{Handled, InboxConfig, PgInbox};
//!
//! let (mut client, connection) =
//!     tokio_postgres::connect("postgres://postgres@127.0.0.1/app", tokio_postgres::NoTls).await?;
//! tokio::spawn(connection);
//! let inbox = PgInbox::new(InboxConfig::default())?; // table inbox.messages
//! inbox.migrate(&client).await?;
//!
//! // `message_id` is the `Nats-Msg-Id` header of the delivered message.
//! let handled = inbox
//!     .handle(&mut client, message_id, "orders.created", async |tx| {
//!         tx.execute("UPDATE stock SET reserved = reserved + 1 WHERE item = $1", &[&7_i64])
//!             .await?;
//!         Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
//!     })
//!     .await?;
//! if let Handled::Duplicate = handled {
//!     // Applied before: nothing was done this time.
//! }
//! // Now, and only now, acknowledge the message to the broker.
//! # Ok(()) }
//! ```

mod sql;

use std::time::{Duration, SystemTime};

use tokio_postgres::types::{ToSql, Type};
use uuid::Uuid;

use self::sql::InboxSql;
use crate::config::stable_hash;
use crate::outbox::column;
use crate::sql::{BEGIN, COMMIT, MIGRATION_LOCK, ROLLBACK};
use crate::{Error, Executor, validate_schema};

/// Records deleted per statement by [`PgInbox::purge_older_than`].
pub const PURGE_BATCH_SIZE: i64 = 1000;

/// Where the inbox lives: `schema.table`.
///
/// Both names follow the rules of [`validate_schema`] and are quoted in every statement (so their
/// letter case is kept). The schema may be shared with your own tables, but the table must be
/// the inbox's alone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InboxConfig {
    /// The schema, created by [`PgInbox::migrate`] if missing. Default `inbox`.
    pub schema: String,
    /// The table. Default `messages`.
    pub table: String,
}

impl Default for InboxConfig {
    fn default() -> Self {
        Self {
            schema: "inbox".to_owned(),
            table: "messages".to_owned(),
        }
    }
}

impl InboxConfig {
    /// Checks both names; [`PgInbox::new`] calls it.
    pub fn validate(&self) -> Result<(), Error> {
        validate_schema(&self.schema)?;
        // Same rules, told about a table.
        validate_schema(&self.table).map_err(|error| match error {
            Error::Config(reason) => Error::Config(reason.replacen("schema name", "table name", 1)),
            other => other,
        })
    }

    /// The name of the `received_at` index: `<table>_received_at_idx`, or, when that would exceed
    /// PostgreSQL's 63-byte limit, `inbox_` and a hash of the table name.
    fn index_name(&self) -> String {
        let name = format!("{}_received_at_idx", self.table);
        if name.len() <= 63 {
            name
        } else {
            format!(
                "inbox_{:016x}_received_at_idx",
                stable_hash("outbox-inbox-index:", &self.table)
            )
        }
    }

    /// The transaction-level advisory lock key that serializes migrations of this table.
    fn migration_lock_id(&self) -> i64 {
        stable_hash(
            "outbox-inbox-migrate:",
            &format!("{}.{}", self.schema, self.table),
        )
    }
}

/// What [`PgInbox::process`] found.
#[must_use = "a duplicate must skip its effect"]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Processed {
    /// First sight of this id: it is recorded in the transaction. Apply the effect in the same
    /// transaction, commit, then acknowledge the message.
    New,
    /// A committed transaction already recorded this id: skip the effect and acknowledge the
    /// message. Nothing was written.
    Duplicate,
}

impl Processed {
    /// Whether the effect must be applied.
    pub fn is_new(self) -> bool {
        self == Processed::New
    }
}

/// What [`PgInbox::handle`] did.
#[must_use]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Handled<T> {
    /// The effect ran and committed with the record; it returned this value.
    Applied(T),
    /// The message had been applied before; the effect did not run.
    Duplicate,
}

/// The inbox in one table: records which message ids a consumer has applied.
///
/// Cloning is cheap (the SQL is rendered once, at construction). See the [module](self) for the
/// guarantee and what happens under concurrency.
#[derive(Clone, Debug)]
pub struct PgInbox {
    inner: std::sync::Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    config: InboxConfig,
    sql: InboxSql,
}

impl PgInbox {
    /// An inbox in `config.schema`.`config.table`; fails if [`InboxConfig::validate`] does.
    pub fn new(config: InboxConfig) -> Result<Self, Error> {
        config.validate()?;
        let sql = InboxSql::render(&config.schema, &config.table, &config.index_name());
        Ok(Self {
            inner: std::sync::Arc::new(Inner { config, sql }),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &InboxConfig {
        &self.inner.config
    }

    /// Creates the schema, the table and its index where missing; returns whether the table was
    /// created by this call. Safe to call at every start.
    ///
    /// Runs in one transaction on `client`, under a transaction-level advisory lock derived from
    /// the schema and table names, so instances starting together create the table once. Fails
    /// (and creates nothing) if a table of that name exists without the inbox's columns.
    /// `client` must not be inside a transaction; with a `deadpool-postgres` client, pass
    /// `&**client`.
    pub async fn migrate(&self, client: &tokio_postgres::Client) -> Result<bool, Error> {
        client
            .batch_execute(BEGIN)
            .await
            .map_err(Error::query("begin inbox migration"))?;
        match self.migrate_in_transaction(client).await {
            Ok(created) => {
                client
                    .batch_execute(COMMIT)
                    .await
                    .map_err(Error::query("commit inbox migration"))?;
                Ok(created)
            }
            Err(error) => {
                // The original error is what matters; a failed rollback means the connection is
                // gone, which also ends the transaction.
                let _ = client.batch_execute(ROLLBACK).await;
                Err(error)
            }
        }
    }

    async fn migrate_in_transaction(&self, client: &tokio_postgres::Client) -> Result<bool, Error> {
        let sql = &self.inner.sql;
        client
            .execute(MIGRATION_LOCK, &[&self.config().migration_lock_id()])
            .await
            .map_err(Error::query("take the inbox migration lock"))?;
        let row = client
            .query_one(sql::TABLE_EXISTS, &[&sql.table])
            .await
            .map_err(Error::query("look for the inbox table"))?;
        let existed: bool = column(&row, "present", "look for the inbox table")?;
        client
            .batch_execute(&sql.create_table)
            .await
            .map_err(Error::query("create the inbox table"))?;
        client
            .batch_execute(&sql.check_columns)
            .await
            .map_err(Error::query("check the inbox table's columns"))?;
        client
            .batch_execute(&sql.create_index)
            .await
            .map_err(Error::query("create the inbox index"))?;
        if !existed {
            tracing::info!(
                schema = %self.config().schema,
                table = %self.config().table,
                "created inbox table"
            );
        }
        Ok(!existed)
    }

    /// Records `message_id` in `tx`; answers whether the caller must apply the message's effect.
    ///
    /// Call it first in the transaction that applies the effect. On [`Processed::New`], apply the
    /// effect in `tx`, commit, and only then acknowledge the message: if anything fails before
    /// the commit, the record rolls back with the effect and a redelivery is applied afresh. On
    /// [`Processed::Duplicate`], skip the effect and acknowledge. `subject` is kept for
    /// inspection only.
    ///
    /// If another transaction recorded the same id and has not ended yet, this call waits for it
    /// (see the [module](self) documentation). A `deadpool-postgres` transaction is accepted as
    /// is (`&tx` dereferences to the `tokio-postgres` one).
    ///
    /// It takes a transaction, not any [`Executor`]: on a bare client the record would commit on
    /// its own, before the effect, and a crash in between would lose the message.
    pub async fn process(
        &self,
        tx: &tokio_postgres::Transaction<'_>,
        message_id: Uuid,
        subject: &str,
    ) -> Result<Processed, Error> {
        let params: [(&(dyn ToSql + Sync), Type); 2] =
            [(&message_id, Type::UUID), (&subject, Type::TEXT)];
        let inserted = tx
            .execute_typed(&self.inner.sql.record, &params)
            .await
            .map_err(Error::query("record in the inbox"))?;
        Ok(if inserted == 1 {
            Processed::New
        } else {
            Processed::Duplicate
        })
    }

    /// Processes one message in a transaction of its own on `client`: records it, runs `effect`
    /// in the same transaction if it is new, and commits.
    ///
    /// Returns [`Handled::Applied`] with the effect's value once the commit succeeded, and
    /// [`Handled::Duplicate`] without running `effect` if the message was applied before. If
    /// `effect` fails, the transaction rolls back (record included) and its error is returned, so
    /// a redelivery runs it again. Acknowledge the message only after an `Ok`. A failed commit is
    /// returned as an error; whether it committed is then unknown, and the redelivery settles it.
    ///
    /// The effect must do its work through the transaction it is given; see [`PgInbox::process`]
    /// for the rest. With `deadpool-postgres`, `&mut object` dereferences to the client.
    pub async fn handle<T, E, F>(
        &self,
        client: &mut tokio_postgres::Client,
        message_id: Uuid,
        subject: &str,
        effect: F,
    ) -> Result<Handled<T>, E>
    where
        F: AsyncFnOnce(&tokio_postgres::Transaction<'_>) -> Result<T, E>,
        E: From<Error>,
    {
        let tx = client
            .transaction()
            .await
            .map_err(Error::query("begin inbox transaction"))?;
        if self.process(&tx, message_id, subject).await? == Processed::Duplicate {
            // Nothing was written: the rollback only ends the transaction, and its failure
            // changes nothing about the answer.
            let _ = tx.rollback().await;
            return Ok(Handled::Duplicate);
        }
        match effect(&tx).await {
            Ok(value) => {
                tx.commit()
                    .await
                    .map_err(Error::query("commit inbox transaction"))?;
                Ok(Handled::Applied(value))
            }
            Err(error) => {
                // The effect's error is what matters; a failed rollback means the connection is
                // gone, which rolls the transaction back too.
                let _ = tx.rollback().await;
                Err(error)
            }
        }
    }

    /// Whether `message_id` is recorded (as seen by `client`: a transaction in progress elsewhere
    /// is not visible).
    pub async fn contains<C: Executor + ?Sized>(
        &self,
        client: &C,
        message_id: Uuid,
    ) -> Result<bool, Error> {
        let params: [(&(dyn ToSql + Sync), Type); 1] = [(&message_id, Type::UUID)];
        let rows = client
            .query_typed(&self.inner.sql.contains, &params)
            .await
            .map_err(Error::query("look up the inbox"))?;
        match rows.as_slice() {
            [row] => column(row, "present", "look up the inbox"),
            _ => Err(Error::Protocol(format!(
                "inbox lookup returned {} rows instead of 1",
                rows.len()
            ))),
        }
    }

    /// Deletes the records received more than `age` ago (on the database's clock), in batches of
    /// [`PURGE_BATCH_SIZE`]; returns how many were deleted.
    ///
    /// On a client, each batch commits on its own, so a long purge neither holds locks for long
    /// nor loses its progress to an error; inside a transaction, everything commits with it.
    /// Records received after the purge started are never deleted. A purged message that is
    /// delivered again is applied again: see the [module](self) documentation on retention.
    pub async fn purge_older_than<C: Executor + ?Sized>(
        &self,
        client: &C,
        age: Duration,
    ) -> Result<u64, Error> {
        // Nothing is that old (the table did not exist), and PostgreSQL's timestamps end a few
        // thousand years back: answer without asking.
        const NOTHING_IS_OLDER: Duration = Duration::from_secs(1000 * 366 * 24 * 3600);
        if age >= NOTHING_IS_OLDER {
            return Ok(0);
        }
        let micros = i64::try_from(age.as_micros()).unwrap_or(i64::MAX);
        let params: [(&(dyn ToSql + Sync), Type); 1] = [(&micros, Type::INT8)];
        let rows = client
            .query_typed(sql::CUTOFF, &params)
            .await
            .map_err(Error::query("compute the inbox purge cutoff"))?;
        let cutoff: SystemTime = match rows.as_slice() {
            [row] => column(row, "cutoff", "compute the inbox purge cutoff")?,
            _ => {
                return Err(Error::Protocol(format!(
                    "inbox purge cutoff returned {} rows instead of 1",
                    rows.len()
                )));
            }
        };
        let params: [(&(dyn ToSql + Sync), Type); 2] = [
            (&cutoff, Type::TIMESTAMPTZ),
            (&PURGE_BATCH_SIZE, Type::INT8),
        ];
        let mut deleted = 0;
        loop {
            let batch = client
                .execute_typed(&self.inner.sql.purge_batch, &params)
                .await
                .map_err(Error::query("purge the inbox"))?;
            deleted += batch;
            if batch < PURGE_BATCH_SIZE.unsigned_abs() {
                return Ok(deleted);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_documented_ones() {
        let config = InboxConfig::default();
        assert_eq!(config.schema, "inbox");
        assert_eq!(config.table, "messages");
        config.validate().unwrap();
        assert_eq!(config.index_name(), "messages_received_at_idx");
    }

    #[test]
    fn hostile_or_malformed_names_are_rejected() {
        for name in [
            "",
            "1inbox",
            "in-box",
            "in box",
            "a\"b",
            "a;drop table x",
            "pg_catalog",
            "PG_x",
            "é",
            &"a".repeat(64),
        ] {
            let bad_schema = InboxConfig {
                schema: name.to_owned(),
                ..InboxConfig::default()
            };
            assert!(
                PgInbox::new(bad_schema).is_err(),
                "schema {name:?} accepted"
            );
            let bad_table = InboxConfig {
                table: name.to_owned(),
                ..InboxConfig::default()
            };
            let error = PgInbox::new(bad_table).unwrap_err();
            assert!(
                error.to_string().contains("table name"),
                "table {name:?}: {error}"
            );
        }
    }

    #[test]
    fn long_table_names_get_a_short_index_name() {
        let config = InboxConfig {
            schema: "s".to_owned(),
            table: "t".repeat(63),
        };
        config.validate().unwrap();
        let index = config.index_name();
        assert!(index.len() <= 63, "{index}");
        assert!(index.starts_with("inbox_"));
        let other = InboxConfig {
            table: "u".repeat(63),
            ..config.clone()
        };
        assert_ne!(other.index_name(), index);
    }

    #[test]
    fn lock_keys_are_stable_and_differ_per_table() {
        assert_eq!(stable_hash("", ""), 0xcbf2_9ce4_8422_2325_u64 as i64);
        assert_eq!(stable_hash("", "a"), 0xaf63_dc4c_8601_ec8c_u64 as i64);
        let a = InboxConfig::default();
        let b = InboxConfig {
            table: "other".to_owned(),
            ..InboxConfig::default()
        };
        assert_ne!(a.migration_lock_id(), b.migration_lock_id());
    }
}
