//! [`PgConfig`]: where the outbox lives in PostgreSQL and how the relay's sessions behave.

use std::time::Duration;

use crate::Error;

/// How the relay learns that new messages were committed.
///
/// Either way the relay also polls (`RelayConfig::poll_interval`, 5 ms by default): a wake-up is
/// only a hint, the rows are the truth.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum WakeUp {
    /// No signal: the relay's short poll (an indexed probe of the outbox) finds new messages.
    ///
    /// The default, because a `NOTIFY` makes every enqueuing commit take a database-wide lock:
    /// measured with 16 producers on 2 cores, throughput fell from about 25,000 to about 7,000
    /// transactions per second when each commit notified.
    #[default]
    Poll,
    /// Each `enqueue`/`enqueue_batch` call sends `pg_notify` in the caller's transaction, and the
    /// store keeps a dedicated `LISTEN` connection (reconnected when it drops) that wakes the
    /// relay. Lowest latency on an idle system; costs enqueue throughput under load.
    Listen,
}

/// How an enqueued message reaches the `messages` table the relay claims from.
///
/// Both keep every guarantee: a message exists if and only if its transaction commits, is
/// published at least once, and its key's messages keep their order. They differ in what the
/// enqueuing transaction pays and in what the server must be configured for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum EnqueueMode {
    /// `enqueue` inserts the row in the caller's transaction. Works on any server.
    #[default]
    Insert,
    /// [`emit`](crate::PgOutbox::emit) writes the message into the caller's transaction's WAL
    /// as a logical decoding message (`pg_logical_emit_message`), and the leading relay's store
    /// moves committed messages into `messages`, in commit order, through a logical
    /// replication slot (see the [`wal`](crate::wal) module).
    ///
    /// The enqueue then costs the transaction a WAL record instead of a row, an index entry per
    /// index and a sequence value: measured with 16 producers on 2 cores, single-insert
    /// transactions kept 0.83–0.95 of their rate with a WAL enqueue, 0.70–0.80 with an inserted
    /// one. The work moves to the leading relay's side (decoding, then inserting in batches).
    /// Needs `wal_level = logical`
    /// and a replication slot, which [`migrate`](crate::PgOutbox::migrate) creates; see the
    /// `wal` module for what a slot asks of the operator.
    WalMessage,
}

/// Client- and server-side TCP keepalives of the store's sessions.
///
/// They bound how long a vanished peer goes unnoticed: the server ends the session of a silent
/// client after about `idle + interval × count`, which frees the leadership lock so a standby can
/// take over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Keepalive {
    /// Idle time before the first probe. Default: 5 s. Whole seconds, at least 1.
    pub idle: Duration,
    /// Time between probes. Default: 2 s. Whole seconds, at least 1.
    pub interval: Duration,
    /// Unanswered probes before the connection is declared dead. Default: 3.
    pub count: u32,
}

impl Default for Keepalive {
    fn default() -> Self {
        Self {
            idle: Duration::from_secs(5),
            interval: Duration::from_secs(2),
            count: 3,
        }
    }
}

impl Keepalive {
    /// Keepalives with the given idle time, interval and probe count.
    pub fn new(idle: Duration, interval: Duration, count: u32) -> Self {
        Self {
            idle,
            interval,
            count,
        }
    }

    /// How long a silent peer takes to be declared dead: `idle + interval × count`.
    pub fn detection_time(&self) -> Duration {
        self.idle + self.interval * self.count
    }
}

/// Configuration of the PostgreSQL outbox. `Default` holds every default; [`PgConfig::builder`]
/// changes some and validates.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use outbox_postgres::{PgConfig, WakeUp};
///
/// let config = PgConfig::builder()
///     .schema("billing_outbox")
///     .wake_up(WakeUp::Listen)
///     .check_interval(Duration::from_millis(100))
///     .build()?;
/// assert_eq!(config.lock_id(), PgConfig::default_lock_id("billing_outbox"));
/// # Ok::<(), outbox_postgres::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct PgConfig {
    /// The schema holding the outbox tables. Default: `"outbox"`.
    ///
    /// Must match `^[A-Za-z_][A-Za-z0-9_]{0,62}$` and not start with `pg_` (see
    /// [`validate_schema`]). It is quoted in every statement, so its letter case is kept:
    /// `Billing` and `billing` are two schemas, and in `psql` you write `"Billing".messages`.
    /// Several schemas give independent outboxes (tenants, tests) in one database.
    pub schema: String,
    /// The advisory lock key the leader holds. Default: `None`, meaning
    /// [`PgConfig::default_lock_id`] of the schema, so each schema elects its own leader.
    pub lock_id: Option<i64>,
    /// How the relay is woken for new messages. Default: [`WakeUp::Poll`].
    pub wake_up: WakeUp,
    /// How often the leader checks that its session is alive and still holds the lock.
    /// Default: 250 ms.
    pub check_interval: Duration,
    /// How long one leadership check (or lock attempt) may take before the leader gives up its
    /// session. Default: 2 s. `check_interval + check_timeout` must stay below
    /// [`Keepalive::detection_time`], so that a cut-off leader stops before the server frees its
    /// lock for a standby.
    pub check_timeout: Duration,
    /// How often a standby tries to take the lock. Default: 500 ms.
    pub campaign_interval: Duration,
    /// Timeout for opening a session. Default: 5 s.
    pub connect_timeout: Duration,
    /// TCP keepalives of the sessions. Default: [`Keepalive::default`] (5 s idle, 2 s interval,
    /// 3 probes: a vanished peer is noticed within about 11 s).
    pub keepalive: Keepalive,
    /// `application_name` of the store's sessions, shown in `pg_stat_activity`.
    /// Default: `None`, meaning `"outbox-relay <schema>"` (and `"outbox-listen <schema>"`,
    /// `"outbox-stats <schema>"`, `"outbox-vacuum <schema>"` for the `LISTEN`, backlog and
    /// vacuum connections).
    pub application_name: Option<String>,
    /// Largest message [`PgOutbox::enqueue`](crate::PgOutbox::enqueue) accepts, in bytes, as
    /// [`Message::wire_size`](outbox_core::Message::wire_size) counts it: payload and headers,
    /// the id and key headers included. Default: 1 MiB, NATS' default `max_payload`. A larger
    /// message is refused with [`Error::InvalidMessage`] and nothing is written, instead of
    /// being dead-lettered by the broker later. Set it to your broker's limit; at least 1 KiB.
    pub max_payload: usize,
    /// Keep published messages this long instead of deleting them. Default: `None` (deleted
    /// once acknowledged). With a retention, an acknowledged message moves from `messages` to
    /// `published` (with `published_at`) in the statement that would have deleted it, so the hot
    /// table stays as small as without; the leading relay purges rows older than the retention
    /// in batches, and `outbox purge-published` (or
    /// [`PgOutbox::purge_published`](crate::PgOutbox::purge_published)) does on demand.
    pub retention: Option<Duration>,
    /// The store vacuums `messages` itself, on a connection of its own, after deleting this
    /// many rows, or as many as the backlog last held if that is more. Default: 50,000. Dead
    /// rows grow the table and slow claims until a vacuum removes them, and autovacuum runs once
    /// a minute at most; a vacuum reads the whole table, so during a larger backlog it waits
    /// until as many rows were deleted as the backlog held. `None` leaves it to autovacuum (for
    /// example when the relay's role does not own the table).
    pub vacuum_every: Option<u64>,
    /// Enqueue with prepared statements where the connection keeps them. Default: `true`.
    ///
    /// When true, [`enqueue`](crate::PgOutbox::enqueue) and
    /// [`enqueue_batch`](crate::PgOutbox::enqueue_batch) on a `deadpool-postgres` client or
    /// transaction prepare their statements through that connection's statement cache: one Parse
    /// round trip per connection, then only bind and execute, which spares the server parsing and
    /// planning the insert on every call. Other executors always send the statement with its
    /// parameter types (`query_typed`); [`PgOutbox::prepare`](crate::PgOutbox::prepare) gives a
    /// `tokio-postgres` connection the same saving.
    ///
    /// Set it to false behind a pooler in transaction mode that does not carry prepared
    /// statements between server connections (PgBouncer before 1.21, or with
    /// `max_prepared_statements = 0`): there a statement prepared in one transaction may be
    /// missing in the next.
    pub prepare_enqueue: bool,
    /// How enqueued messages reach the table the relay claims from. Default:
    /// [`EnqueueMode::Insert`].
    pub enqueue_mode: EnqueueMode,
}

impl Default for PgConfig {
    fn default() -> Self {
        Self {
            schema: "outbox".to_owned(),
            lock_id: None,
            wake_up: WakeUp::Poll,
            check_interval: Duration::from_millis(250),
            check_timeout: Duration::from_secs(2),
            campaign_interval: Duration::from_millis(500),
            connect_timeout: Duration::from_secs(5),
            keepalive: Keepalive::default(),
            application_name: None,
            max_payload: DEFAULT_MAX_PAYLOAD,
            retention: None,
            vacuum_every: Some(50_000),
            prepare_enqueue: true,
            enqueue_mode: EnqueueMode::Insert,
        }
    }
}

/// NATS' default `max_payload`: 1 MiB.
const DEFAULT_MAX_PAYLOAD: usize = 1024 * 1024;

impl PgConfig {
    /// A builder starting from the defaults.
    pub fn builder() -> PgConfigBuilder {
        PgConfigBuilder(Self::default())
    }

    /// Checks every value; [`PgOutbox::new`](crate::PgOutbox::new) calls it.
    pub fn validate(&self) -> Result<(), Error> {
        validate_schema(&self.schema)?;
        let fail = |m: &str| Err(Error::Config(m.to_owned()));
        if self.check_interval.is_zero() {
            return fail("check_interval must be positive");
        }
        if self.check_timeout.is_zero() {
            return fail("check_timeout must be positive");
        }
        if self.campaign_interval.is_zero() {
            return fail("campaign_interval must be positive");
        }
        if self.connect_timeout.is_zero() {
            return fail("connect_timeout must be positive");
        }
        let k = &self.keepalive;
        if k.idle < Duration::from_secs(1) || k.idle.subsec_nanos() != 0 {
            return fail("keepalive idle must be a whole number of seconds, at least 1");
        }
        if k.interval < Duration::from_secs(1) || k.interval.subsec_nanos() != 0 {
            return fail("keepalive interval must be a whole number of seconds, at least 1");
        }
        if k.count == 0 {
            return fail("keepalive count must be at least 1");
        }
        if self.check_interval + self.check_timeout >= k.detection_time() {
            return fail(
                "check_interval + check_timeout must be shorter than the keepalive detection time \
                 (idle + interval * count), or a cut-off leader could outlive its lock",
            );
        }
        if let Some(name) = &self.application_name
            && (name.is_empty() || name.len() > 63 || !name.is_ascii())
        {
            return fail("application_name must be 1 to 63 ASCII characters");
        }
        if self.max_payload < 1024 {
            return fail("max_payload must be at least 1024 bytes");
        }
        if self.vacuum_every == Some(0) {
            return fail("vacuum_every must be positive (or None, to leave it to autovacuum)");
        }
        if self.retention.is_some_and(|r| r.is_zero()) {
            return fail("retention must be positive (or None, to delete published messages)");
        }
        if self.enqueue_mode == EnqueueMode::WalMessage && self.wake_up == WakeUp::Listen {
            return fail(
                "EnqueueMode::WalMessage wakes the relay itself, when its messages reach the \
                 table: use WakeUp::Poll, which also spares every commit NOTIFY's lock",
            );
        }
        Ok(())
    }

    /// The advisory lock key the leader holds: [`lock_id`](PgConfig::lock_id) if set, else
    /// [`PgConfig::default_lock_id`] of the schema.
    pub fn lock_id(&self) -> i64 {
        self.lock_id
            .unwrap_or_else(|| Self::default_lock_id(&self.schema))
    }

    /// The lock key derived from a schema name: 64-bit FNV-1a of `"outbox-leader:<schema>"`.
    /// Stable across versions and platforms, so instances of different builds agree.
    pub fn default_lock_id(schema: &str) -> i64 {
        stable_hash("outbox-leader:", schema)
    }

    /// The transaction-level advisory lock key that serializes migrations of this schema.
    pub(crate) fn migration_lock_id(&self) -> i64 {
        stable_hash("outbox-migrate:", &self.schema)
    }

    /// The notification channel of [`WakeUp::Listen`]: `outbox_<schema>`, or, when that would
    /// exceed PostgreSQL's 63-byte limit, `outbox_` and a hash of the schema.
    pub fn channel(&self) -> String {
        let channel = format!("outbox_{}", self.schema);
        if channel.len() <= 63 {
            channel
        } else {
            format!(
                "outbox_{:016x}",
                stable_hash("outbox-channel:", &self.schema)
            )
        }
    }

    /// The name of the replication slot and of the publication of [`EnqueueMode::WalMessage`]:
    /// `outbox_<schema>` for a lower-case schema, else (or when that would exceed 63 bytes)
    /// `outbox_` and a hash of the schema, since slot names allow only lower-case letters,
    /// digits and underscores.
    pub fn wal_slot(&self) -> String {
        let slot = format!("outbox_{}", self.schema);
        if slot.len() <= 63 && !self.schema.bytes().any(|b| b.is_ascii_uppercase()) {
            slot
        } else {
            format!("outbox_{:016x}", stable_hash("outbox-slot:", &self.schema))
        }
    }

    /// The prefix of the outbox's logical decoding messages, so that the outboxes of several
    /// schemas in one database, and other emitters, are told apart.
    pub(crate) fn wal_prefix(&self) -> String {
        format!("outbox:{}", self.schema)
    }

    /// The `application_name` of the WAL ingest's connections.
    pub(crate) fn ingest_name(&self) -> String {
        self.application_name
            .clone()
            .unwrap_or_else(|| truncate(format!("outbox-ingest {}", self.schema)))
    }

    /// The `application_name` of the relay's session.
    pub(crate) fn session_name(&self) -> String {
        self.application_name
            .clone()
            .unwrap_or_else(|| truncate(format!("outbox-relay {}", self.schema)))
    }

    /// The `application_name` of the store's backlog connection.
    pub(crate) fn stats_name(&self) -> String {
        self.application_name
            .clone()
            .unwrap_or_else(|| truncate(format!("outbox-stats {}", self.schema)))
    }

    /// The `application_name` of the store's vacuum connection.
    pub(crate) fn vacuum_name(&self) -> String {
        self.application_name
            .clone()
            .unwrap_or_else(|| truncate(format!("outbox-vacuum {}", self.schema)))
    }

    /// The `application_name` of the `LISTEN` connection.
    pub(crate) fn listener_name(&self) -> String {
        self.application_name
            .clone()
            .unwrap_or_else(|| truncate(format!("outbox-listen {}", self.schema)))
    }
}

/// PostgreSQL truncates identifiers-like settings to 63 bytes; do it here so the name we look
/// for is the name the server shows. Names are ASCII, so any byte index is a char boundary.
fn truncate(mut name: String) -> String {
    name.truncate(63);
    name
}

/// Checks a schema name: `^[A-Za-z_][A-Za-z0-9_]{0,62}$`, and not `pg_*` in any letter case
/// (reserved by PostgreSQL).
///
/// The rule keeps names to what needs no escaping and fits PostgreSQL's 63-byte identifiers
/// (longer ones would be truncated silently, so two configured names could meet in one schema).
/// Names are quoted in every statement all the same, so a name is never read as SQL.
pub fn validate_schema(schema: &str) -> Result<(), Error> {
    let mut bytes = schema.bytes();
    let valid = match bytes.next() {
        Some(first) => {
            (first.is_ascii_alphabetic() || first == b'_')
                && schema.len() <= 63
                && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
        }
        None => false,
    };
    let shown = || match schema.char_indices().nth(64) {
        Some((end, _)) => format!("{:?}...", &schema[..end]),
        None => format!("{schema:?}"),
    };
    if !valid {
        return Err(Error::Config(format!(
            "schema name {} must be 1 to 63 ASCII letters, digits and underscores, not starting \
             with a digit (^[A-Za-z_][A-Za-z0-9_]{{0,62}}$)",
            shown()
        )));
    }
    if schema
        .get(..3)
        .is_some_and(|prefix| prefix.eq_ignore_ascii_case("pg_"))
    {
        return Err(Error::Config(format!(
            "schema name {} is reserved: names starting with pg_ belong to postgresql",
            shown()
        )));
    }
    Ok(())
}

/// 64-bit FNV-1a of `prefix` then `name`, as a signed lock key: stable across builds and
/// platforms, so instances of different versions serialize on the same key.
pub(crate) fn stable_hash(prefix: &str, name: &str) -> i64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in prefix.bytes().chain(name.bytes()) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    i64::from_ne_bytes(hash.to_ne_bytes())
}

/// Builds a [`PgConfig`]; [`build`](PgConfigBuilder::build) validates it.
#[derive(Clone, Debug)]
#[must_use]
pub struct PgConfigBuilder(PgConfig);

impl PgConfigBuilder {
    /// See [`PgConfig::schema`].
    pub fn schema(mut self, schema: impl Into<String>) -> Self {
        self.0.schema = schema.into();
        self
    }

    /// See [`PgConfig::lock_id`].
    pub fn lock_id(mut self, lock_id: i64) -> Self {
        self.0.lock_id = Some(lock_id);
        self
    }

    /// See [`PgConfig::wake_up`].
    pub fn wake_up(mut self, wake_up: WakeUp) -> Self {
        self.0.wake_up = wake_up;
        self
    }

    /// See [`PgConfig::check_interval`].
    pub fn check_interval(mut self, interval: Duration) -> Self {
        self.0.check_interval = interval;
        self
    }

    /// See [`PgConfig::check_timeout`].
    pub fn check_timeout(mut self, timeout: Duration) -> Self {
        self.0.check_timeout = timeout;
        self
    }

    /// See [`PgConfig::campaign_interval`].
    pub fn campaign_interval(mut self, interval: Duration) -> Self {
        self.0.campaign_interval = interval;
        self
    }

    /// See [`PgConfig::connect_timeout`].
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.0.connect_timeout = timeout;
        self
    }

    /// See [`PgConfig::keepalive`].
    pub fn keepalive(mut self, keepalive: Keepalive) -> Self {
        self.0.keepalive = keepalive;
        self
    }

    /// See [`PgConfig::application_name`].
    pub fn application_name(mut self, name: impl Into<String>) -> Self {
        self.0.application_name = Some(name.into());
        self
    }

    /// See [`PgConfig::max_payload`].
    pub fn max_payload(mut self, bytes: usize) -> Self {
        self.0.max_payload = bytes;
        self
    }

    /// See [`PgConfig::vacuum_every`].
    pub fn vacuum_every(mut self, rows: Option<u64>) -> Self {
        self.0.vacuum_every = rows;
        self
    }

    /// See [`PgConfig::retention`].
    pub fn retention(mut self, retention: Duration) -> Self {
        self.0.retention = Some(retention);
        self
    }

    /// See [`PgConfig::prepare_enqueue`].
    pub fn prepare_enqueue(mut self, prepare: bool) -> Self {
        self.0.prepare_enqueue = prepare;
        self
    }

    /// See [`PgConfig::enqueue_mode`].
    pub fn enqueue_mode(mut self, mode: EnqueueMode) -> Self {
        self.0.enqueue_mode = mode;
        self
    }

    /// Validates and returns the configuration.
    pub fn build(self) -> Result<PgConfig, Error> {
        self.0.validate()?;
        Ok(self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_documented_ones() {
        let c = PgConfig::default();
        assert_eq!(c.schema, "outbox");
        assert_eq!(c.lock_id, None);
        assert_eq!(c.lock_id(), PgConfig::default_lock_id("outbox"));
        assert_eq!(c.wake_up, WakeUp::Poll);
        assert_eq!(c.check_interval, Duration::from_millis(250));
        assert_eq!(c.check_timeout, Duration::from_secs(2));
        assert_eq!(c.campaign_interval, Duration::from_millis(500));
        assert_eq!(c.connect_timeout, Duration::from_secs(5));
        assert_eq!(c.keepalive.idle, Duration::from_secs(5));
        assert_eq!(c.keepalive.interval, Duration::from_secs(2));
        assert_eq!(c.keepalive.count, 3);
        assert_eq!(c.keepalive.detection_time(), Duration::from_secs(11));
        assert_eq!(c.application_name, None);
        assert_eq!(c.max_payload, 1024 * 1024);
        assert_eq!(c.retention, None);
        assert_eq!(c.vacuum_every, Some(50_000));
        assert!(c.prepare_enqueue);
        assert_eq!(c.enqueue_mode, EnqueueMode::Insert);
        assert!(
            !PgConfig::builder()
                .prepare_enqueue(false)
                .build()
                .unwrap()
                .prepare_enqueue
        );
        assert_eq!(c.session_name(), "outbox-relay outbox");
        assert_eq!(c.listener_name(), "outbox-listen outbox");
        assert_eq!(c.stats_name(), "outbox-stats outbox");
        assert_eq!(c.channel(), "outbox_outbox");
        c.validate().unwrap();
    }

    #[test]
    fn lock_ids_are_stable_and_differ_per_schema() {
        // Pinned: instances built from different versions must agree on the key.
        assert_eq!(
            PgConfig::default_lock_id("outbox"),
            stable_hash("outbox-leader:", "outbox")
        );
        assert_eq!(stable_hash("", ""), 0xcbf2_9ce4_8422_2325_u64 as i64);
        assert_eq!(stable_hash("", "a"), 0xaf63_dc4c_8601_ec8c_u64 as i64);
        assert_ne!(
            PgConfig::default_lock_id("a"),
            PgConfig::default_lock_id("b")
        );
        let c = PgConfig::builder().schema("a").build().unwrap();
        assert_ne!(c.lock_id(), c.migration_lock_id());
        let c = PgConfig::builder().lock_id(42).build().unwrap();
        assert_eq!(c.lock_id(), 42);
    }

    #[test]
    fn hostile_or_malformed_schema_names_are_rejected() {
        for name in [
            "",
            "1outbox",
            "out-box",
            "out box",
            "a\"b",
            "a;drop schema public",
            "pg_catalog",
            "pg_temp",
            "PG_x",
            "é",
            "x\"; drop table y; --",
            "a\0",
            &"a".repeat(64),
        ] {
            assert!(validate_schema(name).is_err(), "{name:?} accepted");
            assert!(PgConfig::builder().schema(name).build().is_err());
        }
        for name in [
            "outbox",
            "Outbox",
            "_x",
            "t_3f2a9",
            "Mixed_Case_9",
            &"a".repeat(63),
        ] {
            validate_schema(name).unwrap();
        }
        let error = validate_schema(&"a;".repeat(10_000)).unwrap_err();
        assert!(error.to_string().len() < 300, "{error}");
    }

    #[test]
    fn long_schema_names_get_a_short_channel() {
        let c = PgConfig::builder().schema("a".repeat(63)).build().unwrap();
        assert!(c.channel().len() <= 63);
        assert!(c.channel().starts_with("outbox_"));
        assert!(c.session_name().len() <= 63);
    }

    #[test]
    fn wal_slots_are_valid_slot_names_one_per_schema() {
        let slot = |schema: &str| {
            PgConfig::builder()
                .schema(schema)
                .build()
                .unwrap()
                .wal_slot()
        };
        assert_eq!(slot("billing"), "outbox_billing");
        for schema in ["Billing", "BILLING", &"b".repeat(63)] {
            let name = slot(schema);
            assert!(name.len() <= 63, "{name}");
            assert!(
                name.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
                "{name}"
            );
        }
        assert_ne!(slot("Billing"), slot("billing"));
        assert_ne!(slot("Billing"), slot("BILLING"));
    }

    #[test]
    fn wal_messages_are_not_announced_with_notify() {
        let wal = || PgConfig::builder().enqueue_mode(EnqueueMode::WalMessage);
        assert!(wal().build().is_ok());
        let error = wal().wake_up(WakeUp::Listen).build().unwrap_err();
        assert!(error.to_string().contains("WakeUp::Poll"), "{error}");
    }

    #[test]
    fn inconsistent_values_are_rejected() {
        let b = PgConfig::builder;
        assert!(b().check_interval(Duration::ZERO).build().is_err());
        assert!(b().campaign_interval(Duration::ZERO).build().is_err());
        assert!(b().check_timeout(Duration::from_secs(20)).build().is_err());
        let k = |idle, interval, count| {
            b().keepalive(Keepalive::new(
                Duration::from_millis(idle),
                Duration::from_millis(interval),
                count,
            ))
            .build()
        };
        assert!(k(500, 1000, 3).is_err());
        assert!(k(1500, 1000, 3).is_err());
        assert!(k(5000, 1000, 0).is_err());
        assert!(k(60_000, 10_000, 6).is_ok());
        assert!(b().application_name("").build().is_err());
        assert!(b().max_payload(1023).build().is_err());
        assert!(b().max_payload(1024).build().is_ok());
    }
}
