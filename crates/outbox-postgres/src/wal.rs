//! [`EnqueueMode::WalMessage`]: messages enqueued as WAL records, moved into the outbox table by
//! the leading relay.
//!
//! # How it works
//!
//! [`PgOutbox::emit`] writes the message into the caller's transaction as a *transactional
//! logical decoding message* (`pg_logical_emit_message(true, 'outbox:<schema>', ...)`): a WAL
//! record, decoded only if and when the transaction commits, in commit order. No row, no index
//! entry, no sequence value is written in the caller's transaction, which is most of what an
//! inserted enqueue costs it.
//!
//! The leading relay's [`PgStore`](crate::PgStore) streams the outbox's logical replication slot
//! (`pgoutput`, [`PgConfig::wal_slot`]) and, in batches, inserts the committed messages into
//! `messages` in one transaction that also records the end of the last transaction it took
//! (`wal_progress`). Only then does it confirm that position to the slot, so the server keeps
//! the WAL of every message not yet in the table. After a crash anywhere, the stream resumes at
//! the slot's confirmed position and transactions up to the recorded one are skipped: each
//! message is inserted exactly once. From the table on, everything is as with
//! [`EnqueueMode::Insert`]: claims, per-key order (commit order, which a WAL enqueue gives
//! exactly), retries, dead letters.
//!
//! # What it asks of the server and the operator
//!
//! - `wal_level = logical` (a restart), and a free replication slot and WAL sender
//!   (`max_replication_slots`, `max_wal_senders`). [`PgOutbox::migrate`] checks the level,
//!   creates the slot and its (empty) publication, both named [`PgConfig::wal_slot`], and fails
//!   with [`Error::Config`] if it cannot.
//! - The role the relay connects as needs the `REPLICATION` attribute (or superuser), and
//!   `pg_hba.conf` must let it connect to the database for logical replication (a
//!   `replication=database` connection matches the database's own name there).
//! - The replication stream has no TLS in this version: a store whose connect options require
//!   TLS (`sslmode=require` and up) refuses to claim, with [`Error::Config`] saying so. Run the
//!   relay over a local socket or a trusted network, or keep [`EnqueueMode::Insert`].
//! - **A slot keeps WAL until the relay confirms it.** While no relay runs, WAL accumulates
//!   on the server's disk; watch `pg_replication_slots` (or set `max_slot_wal_keep_size`, at
//!   the price of losing what the slot had not delivered if the limit is hit). When you retire
//!   the outbox, drop the slot with [`PgOutbox::drop_wal_slot`].
//! - Messages emitted while the slot does not exist are never decoded: migrate before the
//!   first emit, and never drop the slot of a live outbox.
//! - A slot belongs to its primary: after a failover to a standby, recreate it (PostgreSQL 17
//!   can synchronise slots to standbys).
//!
//! The backlog the relay reports counts the table only; messages still in the WAL are in the
//! slot's lag (`pg_current_wal_lsn() - confirmed_flush_lsn`).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use outbox_core::{Message, Schedule};
use tokio_postgres::types::{ToSql, Type};

use crate::outbox::{Plan, column};
use crate::sql;
use crate::{EnqueueMode, Error, Executor, PgOutbox};

/// The version byte that starts every encoded batch.
const FORMAT: u8 = 1;

/// The parameter types of [`sql::EMIT`]: the prefix and the encoded messages.
pub(crate) static EMIT_TYPES: [Type; 2] = [Type::TEXT, Type::BYTEA];

impl PgOutbox {
    /// Enqueues `message` as a WAL record of `client`'s transaction: it reaches the relay if and
    /// only if the transaction commits. One round trip, one small statement.
    ///
    /// Needs [`EnqueueMode::WalMessage`] (otherwise fails with [`Error::Config`], before
    /// anything is sent), and the slot [`migrate`](PgOutbox::migrate) created; see the
    /// [`wal`](crate::wal) module. Same checks as [`enqueue`](PgOutbox::enqueue), and the same
    /// use of prepared statements: cached on `deadpool-postgres` connections, kept by an
    /// [`Enqueuer`](crate::Enqueuer), otherwise sent with their types. A message scheduled
    /// [`After`](Schedule::After) a delay is due that long after its transaction's commit.
    ///
    /// There is no seq to return: the message gets one when the relay's store moves it into
    /// `messages`.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn example(client: &mut tokio_postgres::Client) -> Result<(), Box<dyn std::error::Error>> {
    /// use outbox_core::Message;
    /// use outbox_postgres::{EnqueueMode, PgConfig, PgOutbox};
    ///
    /// let config = PgConfig::builder().enqueue_mode(EnqueueMode::WalMessage).build()?;
    /// let outbox = PgOutbox::new(config)?;
    /// outbox.migrate(client).await?; // checks wal_level, creates the slot
    ///
    /// let tx = client.transaction().await?;
    /// tx.execute("INSERT INTO orders (id) VALUES ($1)", &[&42_i64]).await?;
    /// let event = Message::builder("orders.created").key("order-42").payload("{}").build()?;
    /// outbox.emit(&tx, &event).await?;
    /// tx.commit().await?;
    /// # Ok(()) }
    /// ```
    pub async fn emit<C: Executor + ?Sized>(
        &self,
        client: &C,
        message: &Message,
    ) -> Result<(), Error> {
        self.emit_with(client, std::slice::from_ref(message), self.plan(client))
            .await
    }

    /// Enqueues `messages` as **one** WAL record of `client`'s transaction, in this order. One
    /// invalid message fails the whole call before anything is sent; an empty slice sends
    /// nothing. Otherwise as [`emit`](PgOutbox::emit).
    pub async fn emit_batch<C: Executor + ?Sized>(
        &self,
        client: &C,
        messages: &[Message],
    ) -> Result<(), Error> {
        if messages.is_empty() {
            return Ok(());
        }
        self.emit_with(client, messages, self.plan(client)).await
    }

    /// Runs your `statement` and emits `message`, as **one** SQL statement on `client`: the
    /// WAL counterpart of [`execute_and_enqueue`](PgOutbox::execute_and_enqueue), with the same
    /// rules for `statement` (a data-modifying statement with `RETURNING`) and prepared
    /// statements. Returns whether `statement` returned a row, and so whether the message was
    /// emitted.
    pub async fn execute_and_emit<C: Executor + ?Sized>(
        &self,
        client: &C,
        statement: &str,
        params: &[&(dyn ToSql + Sync)],
        message: &Message,
    ) -> Result<bool, Error> {
        self.require_wal("execute_and_emit")?;
        self.check(message)?;
        let joined = self.sql().write_and_emit(statement, params.len());
        let prepared = client
            .prepare_typed(&joined, &[])
            .await
            .map_err(Error::query("prepare write and emit"))?;
        self.write_and_emit_with(client, &prepared, params, message)
            .await
    }

    /// [`execute_and_emit`](PgOutbox::execute_and_emit) with its joined statement prepared, for
    /// a `message` the caller has [checked](PgOutbox::check).
    pub(crate) async fn write_and_emit_with<C: Executor + ?Sized>(
        &self,
        client: &C,
        prepared: &tokio_postgres::Statement,
        params: &[&(dyn ToSql + Sync)],
        message: &Message,
    ) -> Result<bool, Error> {
        let prefix = self.wal_prefix();
        let content = encode(std::slice::from_ref(message));
        let mut values: Vec<&(dyn ToSql + Sync)> = Vec::with_capacity(params.len() + 2);
        values.extend_from_slice(params);
        values.push(&prefix);
        values.push(&content);
        let rows = client
            .query_prepared(prepared, &values)
            .await
            .map_err(Error::query("write and emit"))?;
        Ok(!rows.is_empty())
    }

    /// [`emit_batch`](PgOutbox::emit_batch), with its statement sent as `plan` says.
    pub(crate) async fn emit_with<C: Executor + ?Sized>(
        &self,
        client: &C,
        messages: &[Message],
        plan: Plan<'_>,
    ) -> Result<(), Error> {
        self.require_wal("emit")?;
        for message in messages {
            self.check(message)?;
        }
        let prefix = self.wal_prefix();
        let content = encode(messages);
        let values: [&(dyn ToSql + Sync); 2] = [&prefix, &content];
        self.run(client, sql::EMIT, &EMIT_TYPES, &values, plan)
            .await
            .map_err(Error::query("emit"))?;
        Ok(())
    }

    /// Fails with [`Error::Config`] unless the outbox enqueues through the WAL, so that no
    /// message goes where no relay reads it.
    pub(crate) fn require_wal(&self, call: &str) -> Result<(), Error> {
        match self.config().enqueue_mode {
            EnqueueMode::WalMessage => Ok(()),
            _ => Err(Error::Config(format!(
                "{call} needs EnqueueMode::WalMessage: this outbox inserts its messages \
                 (EnqueueMode::Insert), so use enqueue"
            ))),
        }
    }

    /// Fails with [`Error::Config`] if the outbox enqueues through the WAL: a row inserted
    /// beside WAL messages would overtake earlier messages of its key still in the WAL.
    pub(crate) fn require_insert(&self, call: &str) -> Result<(), Error> {
        match self.config().enqueue_mode {
            EnqueueMode::WalMessage => Err(Error::Config(format!(
                "{call} inserts into the table, but this outbox enqueues through the WAL \
                 (EnqueueMode::WalMessage): use emit, emit_batch or execute_and_emit"
            ))),
            _ => Ok(()),
        }
    }

    /// Fails with [`Error::Config`] unless the server runs with `wal_level = logical`: checked
    /// before the migrations, so that a server that cannot serve the mode is left untouched.
    pub(crate) async fn check_wal_level(
        &self,
        client: &tokio_postgres::Client,
    ) -> Result<(), Error> {
        let level: String = client
            .query_one(sql::WAL_LEVEL, &[])
            .await
            .map_err(Error::query("read wal_level"))?
            .try_get(0)
            .map_err(Error::query("read wal_level"))?;
        if level != "logical" {
            return Err(Error::Config(format!(
                "EnqueueMode::WalMessage needs wal_level = logical, and the server runs with \
                 wal_level = {level}: set it in postgresql.conf (or ALTER SYSTEM SET wal_level = \
                 logical) and restart the server"
            )));
        }
        Ok(())
    }

    /// Creates the outbox's publication and replication slot if they do not exist yet. Runs
    /// outside any transaction: PostgreSQL creates a logical slot only in a transaction that has
    /// written nothing, after waiting for the transactions running then.
    pub(crate) async fn set_up_wal(&self, client: &tokio_postgres::Client) -> Result<(), Error> {
        let name = self.config().wal_slot();
        let publication = client
            .query_opt(sql::WAL_PUBLICATION, &[&name])
            .await
            .map_err(Error::query("look up the publication"))?;
        if publication.is_none() {
            // An empty publication: pgoutput then sends no row changes, only the messages.
            let create = format!("CREATE PUBLICATION {}", sql::quote_ident(&name));
            if let Err(error) = client.batch_execute(&create).await
                && !is_duplicate(&error)
            {
                return Err(Error::query("create the publication")(error));
            }
        }
        let database: String = client
            .query_one("SELECT current_database()", &[])
            .await
            .map_err(Error::query("read the database name"))?
            .try_get(0)
            .map_err(Error::query("read the database name"))?;
        let slot = client
            .query_opt(sql::WAL_SLOT, &[&name])
            .await
            .map_err(Error::query("look up the replication slot"))?;
        match slot {
            Some(row) => {
                let plugin: Option<String> = row.try_get(0).map_err(Error::query("read slot"))?;
                let slot_database: Option<String> =
                    row.try_get(1).map_err(Error::query("read slot"))?;
                if plugin.as_deref() != Some("pgoutput")
                    || slot_database.as_deref() != Some(&database)
                {
                    return Err(Error::Config(format!(
                        "replication slot {name} exists but is not the outbox's: plugin {}, \
                         database {} (expected pgoutput, {database})",
                        plugin.as_deref().unwrap_or("none"),
                        slot_database.as_deref().unwrap_or("none"),
                    )));
                }
            }
            None => {
                if let Err(error) = client.query_one(sql::CREATE_WAL_SLOT, &[&name]).await
                    && !is_duplicate(&error)
                {
                    return Err(Error::Config(format!(
                        "could not create the replication slot {name} (are max_replication_slots \
                         used up, or does the role lack REPLICATION?): {}",
                        error
                    )));
                }
                tracing::info!(schema = %self.config().schema, slot = %name, "created the outbox's replication slot");
            }
        }
        Ok(())
    }

    /// Drops the outbox's replication slot and publication (see
    /// [`PgConfig::wal_slot`](crate::PgConfig::wal_slot)), if
    /// they exist: the server then stops keeping WAL for the outbox. Any message emitted and not
    /// yet moved into the table is lost with the slot, so call this only for an outbox you
    /// retire, with no relay running (a slot in use cannot be dropped: that fails).
    pub async fn drop_wal_slot(&self, client: &tokio_postgres::Client) -> Result<(), Error> {
        let name = self.config().wal_slot();
        client
            .execute(sql::DROP_WAL_SLOT, &[&name])
            .await
            .map_err(Error::query("drop the replication slot"))?;
        client
            .batch_execute(&format!(
                "DROP PUBLICATION IF EXISTS {}",
                sql::quote_ident(&name)
            ))
            .await
            .map_err(Error::query("drop the publication"))?;
        Ok(())
    }
}

/// The outbox's replication slot, as `pg_replication_slots` shows it: what an operator watches
/// in [`EnqueueMode::WalMessage`], since the slot keeps WAL on the server until the relay
/// confirms it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct WalSlotStatus {
    /// The slot's name ([`PgConfig::wal_slot`](crate::PgConfig::wal_slot)).
    pub name: String,
    /// Whether a stream reads the slot now: a leading relay's ingest.
    pub active: bool,
    /// WAL written since the position the ingest last confirmed, in bytes: an upper bound of
    /// what emitted messages still wait in (most of it is usually other tables' changes).
    pub unconfirmed_bytes: u64,
    /// WAL the server keeps for the slot, in bytes: what it costs the server's disk.
    pub retained_bytes: u64,
    /// PostgreSQL's `wal_status` of the slot: `reserved`, `extended`, `unreserved`, or `lost`
    /// (WAL the slot needed was removed, through `max_slot_wal_keep_size`: the messages in it
    /// are lost and the slot must be recreated).
    pub wal_status: Option<String>,
}

impl PgOutbox {
    /// The outbox's replication slot, or `None` if it does not exist (an outbox in the insert
    /// mode, or not migrated yet). One statement on `client`.
    pub async fn wal_slot_status<C: Executor + ?Sized>(
        &self,
        client: &C,
    ) -> Result<Option<WalSlotStatus>, Error> {
        const OP: &str = "read the replication slot";
        let name = self.config().wal_slot();
        let rows = client
            .query_typed(sql::WAL_SLOT_STATUS, &[(&name, Type::TEXT)])
            .await
            .map_err(Error::query(OP))?;
        let Some(row) = rows.first() else {
            return Ok(None);
        };
        let bytes = |name| column::<i64>(row, name, OP).map(|n| u64::try_from(n).unwrap_or(0));
        Ok(Some(WalSlotStatus {
            active: column(row, "active", OP)?,
            unconfirmed_bytes: bytes("unconfirmed_bytes")?,
            retained_bytes: bytes("retained_bytes")?,
            wal_status: column(row, "wal_status", OP)?,
            name,
        }))
    }
}

/// Whether `error` says the object exists already: another instance created it meanwhile.
fn is_duplicate(error: &tokio_postgres::Error) -> bool {
    error
        .code()
        .is_some_and(|code| *code == tokio_postgres::error::SqlState::DUPLICATE_OBJECT)
}

/// Encodes `messages` as the content of one logical decoding message.
///
/// Format 1, all integers big-endian: the version byte, the message count (u32), then per
/// message its id (16 bytes), creation time (i64 microseconds since the Unix epoch), schedule
/// (a tag byte: 0 none, 1 a delay in microseconds, 2 a time in microseconds since the Unix
/// epoch, each tag but 0 followed by an i64), subject, key (a byte 0 or 1, then the string),
/// header count (u32) and headers (name, value), payload. Strings and the payload are a u32
/// length and the bytes.
pub(crate) fn encode(messages: &[Message]) -> Vec<u8> {
    let size: usize = messages
        .iter()
        .map(|m| 64 + m.subject().len() + m.key().map_or(0, str::len) + m.wire_size())
        .sum();
    let mut out = Vec::with_capacity(5 + size);
    out.push(FORMAT);
    put_len(&mut out, messages.len());
    for message in messages {
        out.extend_from_slice(message.id().as_bytes());
        out.extend_from_slice(&micros_since_epoch(message.created_at()).to_be_bytes());
        match message.schedule() {
            Some(Schedule::After(delay)) => {
                out.push(1);
                let micros = i64::try_from(delay.as_micros()).unwrap_or(i64::MAX);
                out.extend_from_slice(&micros.to_be_bytes());
            }
            Some(Schedule::At(at)) => {
                out.push(2);
                out.extend_from_slice(&micros_since_epoch(at).to_be_bytes());
            }
            _ => out.push(0),
        }
        put_bytes(&mut out, message.subject().as_bytes());
        match message.key() {
            Some(key) => {
                out.push(1);
                put_bytes(&mut out, key.as_bytes());
            }
            None => out.push(0),
        }
        put_len(&mut out, message.headers().len());
        for (name, value) in message.headers() {
            put_bytes(&mut out, name.as_bytes());
            put_bytes(&mut out, value.as_bytes());
        }
        put_bytes(&mut out, message.payload());
    }
    out
}

/// Decodes the content of one logical decoding message written by [`encode`]. Messages
/// scheduled `After` a delay are due that long after `commit`, their transaction's commit time.
pub(crate) fn decode(content: &[u8], commit: SystemTime) -> Result<Vec<Message>, Error> {
    let mut reader = Reader { rest: content };
    let version = reader.u8()?;
    if version != FORMAT {
        return Err(Error::Protocol(format!(
            "WAL message of format {version}: this version reads format {FORMAT} only"
        )));
    }
    let count = reader.len()?;
    // Every message takes at least 35 bytes: a count larger than that allows is corrupt, and
    // must not reserve memory for it.
    let mut messages = Vec::with_capacity(count.min(content.len() / 35));
    for _ in 0..count {
        let id = uuid::Uuid::from_bytes(reader.array()?);
        let created_at = from_micros(reader.i64()?);
        let schedule = match reader.u8()? {
            0 => None,
            1 => Some(Schedule::At(
                commit + Duration::from_micros(u64::try_from(reader.i64()?).unwrap_or(0)),
            )),
            2 => Some(Schedule::At(from_micros(reader.i64()?))),
            tag => {
                return Err(Error::Protocol(format!(
                    "WAL message with schedule tag {tag}"
                )));
            }
        };
        let subject = reader.string()?;
        let key = match reader.u8()? {
            0 => None,
            _ => Some(reader.string()?),
        };
        let mut builder = Message::builder(subject).id(id).created_at(created_at);
        if let Some(key) = key {
            builder = builder.key(key);
        }
        for _ in 0..reader.len()? {
            let name = reader.string()?;
            builder = builder.header(name, reader.string()?);
        }
        builder = builder.payload(Bytes::copy_from_slice(reader.bytes()?));
        builder = match schedule {
            Some(Schedule::At(at)) => builder.deliver_at(at),
            _ => builder,
        };
        // Checked at emit; not again, like a message read from the table (see `build_stored`).
        messages.push(builder.build_stored());
    }
    if !reader.rest.is_empty() {
        return Err(Error::Protocol(format!(
            "WAL message with {} bytes after its last message",
            reader.rest.len()
        )));
    }
    Ok(messages)
}

fn put_len(out: &mut Vec<u8>, len: usize) {
    // Lengths are bounded by max_payload and the header limits, far below 4 GiB.
    out.extend_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_be_bytes());
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    put_len(out, bytes.len());
    out.extend_from_slice(bytes);
}

fn micros_since_epoch(at: SystemTime) -> i64 {
    match at.duration_since(UNIX_EPOCH) {
        Ok(after) => i64::try_from(after.as_micros()).unwrap_or(i64::MAX),
        Err(before) => -i64::try_from(before.duration().as_micros()).unwrap_or(i64::MAX),
    }
}

fn from_micros(micros: i64) -> SystemTime {
    let magnitude = Duration::from_micros(micros.unsigned_abs());
    if micros >= 0 {
        UNIX_EPOCH + magnitude
    } else {
        UNIX_EPOCH - magnitude
    }
}

/// Reads the fields of an encoded batch, failing on anything short or malformed.
struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], Error> {
        if self.rest.len() < n {
            return Err(Error::Protocol(format!(
                "WAL message cut short: {n} more bytes expected, {} left",
                self.rest.len()
            )));
        }
        let (head, rest) = self.rest.split_at(n);
        self.rest = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], Error> {
        let mut array = [0; N];
        array.copy_from_slice(self.take(N)?);
        Ok(array)
    }

    fn u8(&mut self) -> Result<u8, Error> {
        Ok(self.array::<1>()?[0])
    }

    fn i64(&mut self) -> Result<i64, Error> {
        Ok(i64::from_be_bytes(self.array()?))
    }

    fn len(&mut self) -> Result<usize, Error> {
        Ok(u32::from_be_bytes(self.array()?) as usize)
    }

    fn bytes(&mut self) -> Result<&'a [u8], Error> {
        let len = self.len()?;
        self.take(len)
    }

    fn string(&mut self) -> Result<String, Error> {
        let bytes = self.bytes()?;
        String::from_utf8(bytes.to_vec())
            .map_err(|_| Error::Protocol("WAL message with a string that is not UTF-8".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn commit() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_800_000_000)
    }

    #[test]
    fn messages_come_back_as_they_were_emitted() {
        // Times travel in microseconds, as PostgreSQL keeps them.
        let created = UNIX_EPOCH + Duration::from_micros(1_790_000_000_654_321);
        let plain = Message::builder("orders.created")
            .created_at(created)
            .payload("{}")
            .build()
            .unwrap();
        let full = Message::builder("orders.paid")
            .created_at(created)
            .key("customer-7")
            .header("Content-Type", "application/json")
            .header("X-Tenant", "ä")
            .payload(vec![0_u8, 255, 10, 13])
            .deliver_at(UNIX_EPOCH + Duration::from_micros(1_900_000_000_123_456))
            .build()
            .unwrap();
        let later = Message::builder("orders.reminder")
            .key("customer-7")
            .delay(Duration::from_secs(60))
            .build()
            .unwrap();
        let back = decode(
            &encode(&[plain.clone(), full.clone(), later.clone()]),
            commit(),
        )
        .unwrap();
        assert_eq!(back[0], plain);
        assert_eq!(back[1], full);
        assert_eq!(back[2].id(), later.id());
        assert_eq!(back[2].key(), Some("customer-7"));
        assert_eq!(
            back[2].schedule(),
            Some(Schedule::At(commit() + Duration::from_secs(60)))
        );
    }

    #[test]
    fn malformed_content_is_an_error_not_a_panic() {
        let good = encode(&[Message::builder("a.b")
            .key("k")
            .payload("xyz")
            .build()
            .unwrap()]);
        for cut in 0..good.len() {
            assert!(decode(&good[..cut], commit()).is_err(), "cut at {cut}");
        }
        let mut trailing = good.clone();
        trailing.push(0);
        assert!(decode(&trailing, commit()).is_err());
        let mut version = good.clone();
        version[0] = 9;
        assert!(decode(&version, commit()).is_err());
        // A count of four billion messages in a few bytes reserves nothing and fails.
        assert!(decode(&[FORMAT, 255, 255, 255, 255], commit()).is_err());
    }
}
