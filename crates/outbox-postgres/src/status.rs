//! What an operator or a readiness check asks of an outbox: its schema version, its backlog, and
//! which session leads.
//!
//! Every figure is read on the database: ages are measured on the database's clock, never on the
//! caller's.

use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use tokio_postgres::types::{ToSql, Type};

use crate::outbox::column;
use crate::sql;
use crate::{Error, Executor, PgOutbox};

/// A snapshot of an outbox: its figures come from one statement, so they are consistent with
/// each other (as of one moment), though stale as soon as they are read.
///
/// `pending` and `lag` are the figures a leading relay reports as its backlog
/// ([`Store::backlog`](outbox_core::Store::backlog)), computed with the same SQL.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct OutboxStatus {
    /// The latest applied migration; `None` if `schema_migrations` is empty.
    pub schema_version: Option<i32>,
    /// Messages in the outbox: committed and not yet acknowledged by the broker, due or not.
    pub pending: u64,
    /// Of those, the ones due now (available to the relay, unless an earlier message of the same
    /// key waits for a retry). `pending - due` are scheduled for later or waiting for a retry.
    pub due: u64,
    /// Of the pending messages, those that failed at least once: waiting for their next attempt,
    /// or in it.
    pub retrying: u64,
    /// How long ago the oldest pending message was created; zero when nothing is pending.
    ///
    /// `created_at` is set by the producer's clock (the database's clock measures the age), so a
    /// skewed producer shifts this figure; a creation time in the future counts as zero.
    pub oldest_pending_age: Duration,
    /// How long the oldest due message has been due: how far behind the relay is. Zero when
    /// nothing is due. A message scheduled for later or waiting for a retry does not count until
    /// its time comes. Measured entirely on the database's clock.
    pub lag: Duration,
    /// Messages given up on, kept in `dead_letters`.
    pub dead_letters: u64,
}

/// The session holding an outbox's leadership lock, as `pg_stat_activity` shows it.
///
/// What the connected role can see depends on its privileges: of another role's session, without
/// `pg_read_all_stats` (or membership in that role), PostgreSQL shows the pid, the user and the
/// application name only; the other fields are then `None`.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct LeaderSession {
    /// The server process of the session (`pg_backend_pid()` in it): what
    /// `pg_terminate_backend` takes to end it, and with it the leadership.
    pub pid: i32,
    /// The role the session is logged in as.
    pub user: Option<String>,
    /// The client's address. `None` for a client on a Unix socket, or when hidden.
    pub client_addr: Option<IpAddr>,
    /// The client's TCP port; `-1` for a Unix socket. `None` when hidden.
    pub client_port: Option<i32>,
    /// The session's `application_name`: `outbox-relay <schema>` for a
    /// [`PgStore`](crate::PgStore)'s session unless
    /// [`PgConfig::application_name`](crate::PgConfig::application_name) says otherwise.
    pub application_name: Option<String>,
    /// When the session started. The session has led since then at the earliest, not
    /// necessarily since then: a standby campaigns on the session it will lead with.
    pub backend_start: Option<SystemTime>,
    /// How long the session has existed, on the database's clock (so unaffected by the caller's).
    pub session_age: Option<Duration>,
    /// What the session is doing: `active`, `idle`, `idle in transaction`, ...
    pub state: Option<String>,
}

impl PgOutbox {
    /// A snapshot of the outbox: schema version, pending, due and retrying messages, the age of
    /// the oldest one, the lag, and the dead letters. One statement on `client`.
    ///
    /// Counting scans `messages`, so it costs in proportion to the backlog: fine for a report or
    /// a metric sampled every few seconds, not for every request. Fails with [`Error::Query`]
    /// (SQLSTATE `undefined_table` or `invalid_schema_name`) when the schema is not migrated;
    /// [`schema_version`](PgOutbox::schema_version) tells that case apart without failing.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn example(client: &tokio_postgres::Client) -> Result<(), outbox_postgres::Error> {
    /// use outbox_postgres::{PgConfig, PgOutbox};
    ///
    /// let outbox = PgOutbox::new(PgConfig::default())?;
    /// let status = outbox.status(client).await?;
    /// println!("{} pending, {:?} behind", status.pending, status.lag);
    /// match outbox.leader(client).await? {
    ///     Some(leader) => println!("led by backend {}", leader.pid),
    ///     None => println!("no relay leads"),
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn status<C: Executor + ?Sized>(&self, client: &C) -> Result<OutboxStatus, Error> {
        const OP: &str = "read outbox status";
        let rows = client
            .query_typed(&self.sql().status, &[])
            .await
            .map_err(Error::query(OP))?;
        let [row] = rows.as_slice() else {
            return Err(Error::Protocol(format!(
                "status returned {} rows instead of 1",
                rows.len()
            )));
        };
        let count = |name| column::<i64>(row, name, OP).map(|n| u64::try_from(n).unwrap_or(0));
        let seconds = |name| column::<f64>(row, name, OP).map(duration);
        Ok(OutboxStatus {
            schema_version: column(row, "schema_version", OP)?,
            pending: count("pending")?,
            due: count("due")?,
            retrying: count("retrying")?,
            oldest_pending_age: seconds("oldest_pending_age_seconds")?,
            lag: seconds("lag_seconds")?,
            dead_letters: count("dead_letters")?,
        })
    }

    /// The session holding this outbox's leadership lock
    /// ([`PgConfig::lock_id`](crate::PgConfig::lock_id)) in the database `client` is connected
    /// to, or `None` when no session holds it: no relay leads right now.
    ///
    /// Advisory locks belong to one database, so `client` must be connected to the database the
    /// relays use. The answer is a snapshot: leadership may change right after.
    pub async fn leader<C: Executor + ?Sized>(
        &self,
        client: &C,
    ) -> Result<Option<LeaderSession>, Error> {
        const OP: &str = "look up the leader";
        let lock_id = self.config().lock_id();
        let params: [(&(dyn ToSql + Sync), Type); 1] = [(&lock_id, Type::INT8)];
        let rows = client
            .query_typed(sql::LEADER, &params)
            .await
            .map_err(Error::query(OP))?;
        let Some(row) = rows.first() else {
            return Ok(None);
        };
        let session_age: Option<f64> = column(row, "session_age_seconds", OP)?;
        Ok(Some(LeaderSession {
            pid: column(row, "pid", OP)?,
            user: column(row, "usename", OP)?,
            client_addr: column(row, "client_addr", OP)?,
            client_port: column(row, "client_port", OP)?,
            application_name: column(row, "application_name", OP)?,
            backend_start: column(row, "backend_start", OP)?,
            session_age: session_age.map(duration),
            state: column(row, "state", OP)?,
        }))
    }

    /// The latest migration applied to this outbox's schema, or `None` when the schema, its
    /// `schema_migrations` table, or any recorded migration is missing: the schema is not
    /// migrated.
    ///
    /// Never fails because the schema is missing, so it suits a readiness check (compare with
    /// the version your build expects), and it leaves a transaction passed as `client` usable.
    /// Two statements: whether the table exists, then its latest version.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn example(client: &tokio_postgres::Client) -> Result<(), outbox_postgres::Error> {
    /// use outbox_postgres::{PgConfig, PgOutbox};
    ///
    /// let outbox = PgOutbox::new(PgConfig::default())?;
    /// let ready = outbox.schema_version(client).await?.is_some();
    /// # let _ = ready; Ok(()) }
    /// ```
    pub async fn schema_version<C: Executor + ?Sized>(
        &self,
        client: &C,
    ) -> Result<Option<i32>, Error> {
        const OP: &str = "read the schema version";
        let schema = self.config().schema.as_str();
        let params: [(&(dyn ToSql + Sync), Type); 1] = [(&schema, Type::TEXT)];
        let rows = client
            .query_typed(sql::SCHEMA_MIGRATIONS_EXISTS, &params)
            .await
            .map_err(Error::query(OP))?;
        let present = match rows.as_slice() {
            [row] => column::<bool>(row, "present", OP)?,
            _ => return Err(Error::Protocol("exists returned no row".to_owned())),
        };
        if !present {
            return Ok(None);
        }
        let rows = client
            .query_typed(&self.sql().schema_version, &[])
            .await
            .map_err(Error::query(OP))?;
        match rows.as_slice() {
            [row] => column(row, "version", OP),
            _ => Err(Error::Protocol("max returned no row".to_owned())),
        }
    }
}

/// Seconds as computed by PostgreSQL; negative or non-finite values (never produced by the
/// statements, which clamp) read as zero.
fn duration(seconds: f64) -> Duration {
    Duration::try_from_secs_f64(seconds.max(0.0)).unwrap_or_default()
}
