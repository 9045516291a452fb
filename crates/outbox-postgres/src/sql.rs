//! Every SQL statement of the crate, in one place.
//!
//! Templates name the schema as `{schema}`; [`Sql::render`] replaces it with the validated,
//! quoted schema name once, when a [`PgOutbox`](crate::PgOutbox) is made. Values always travel as
//! bind parameters, never as text in a statement.

/// One versioned migration, shipped in the crate.
#[derive(Debug)]
pub(crate) struct Migration {
    /// Recorded in `schema_migrations`; applied in ascending order, each once.
    pub(crate) version: i32,
    /// A short name, recorded next to the version.
    pub(crate) name: &'static str,
    /// The statements, with `{schema}` placeholders.
    pub(crate) sql: &'static str,
}

/// The migrations, oldest first. Never edit one that was released: add the next version.
pub(crate) const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "init",
        sql: include_str!("../migrations/0001_init.sql"),
    },
    Migration {
        version: 2,
        name: "claim index",
        sql: include_str!("../migrations/0002_claim_index.sql"),
    },
    Migration {
        version: 3,
        name: "published",
        sql: include_str!("../migrations/0003_published.sql"),
    },
    Migration {
        version: 4,
        name: "delayed",
        sql: include_str!("../migrations/0004_delayed.sql"),
    },
    Migration {
        version: 5,
        name: "wal progress",
        sql: include_str!("../migrations/0005_wal_progress.sql"),
    },
];

pub(crate) const BEGIN: &str = "BEGIN";
pub(crate) const COMMIT: &str = "COMMIT";
pub(crate) const ROLLBACK: &str = "ROLLBACK";

/// Serializes migrations of one schema across instances; released at commit or rollback.
pub(crate) const MIGRATION_LOCK: &str = "SELECT pg_advisory_xact_lock($1)";

/// Creates what the migration runner needs before it can read the applied versions.
const BOOTSTRAP: &str = "\
CREATE SCHEMA IF NOT EXISTS {schema};
CREATE TABLE IF NOT EXISTS {schema}.schema_migrations (
    version    integer     PRIMARY KEY,
    name       text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)";

const APPLIED_VERSIONS: &str = "SELECT version FROM {schema}.schema_migrations ORDER BY version";

const RECORD_MIGRATION: &str =
    "INSERT INTO {schema}.schema_migrations (version, name) VALUES ($1, $2)";

// `available_at`: the scheduled time if any ($7), else now() plus the delay in microseconds ($8,
// zero when not scheduled): "due" is always decided on the database's clock. Only a scheduled
// message is `delayed` (and indexed by due time); any other is due at once.
const ENQUEUE: &str = "\
INSERT INTO {schema}.messages (id, subject, key, payload, headers, created_at, available_at, delayed)
VALUES ($1, $2, $3, $4, $5, $6, coalesce($7, now() + $8 * interval '1 microsecond'),
        $7 IS NOT NULL OR $8 > 0)
RETURNING seq";

// The enqueue of a message due at once, the common case: `available_at` and `delayed` take
// their defaults (now(), false), so the statement evaluates no expression. PostgreSQL builds an
// executor state for every execution of even a prepared statement, expressions included:
// counted with callgrind, this form saves the server about 7,000 of the ~197,000 instructions of
// a transaction that inserts one business row and enqueues one message.
const ENQUEUE_NOW: &str = "\
INSERT INTO {schema}.messages (id, subject, key, payload, headers, created_at)
VALUES ($1, $2, $3, $4, $5, $6)
RETURNING seq";

// Rows are inserted in input order (ORDER BY ord), so their identity values increase with it;
// the caller still maps seqs back by id rather than trusting the order of RETURNING.
const ENQUEUE_BATCH: &str = "\
INSERT INTO {schema}.messages
    (id, subject, key, payload, headers, created_at, available_at, delayed)
SELECT id, subject, key, payload, headers, created_at,
       coalesce(at, now() + delay_us * interval '1 microsecond'),
       at IS NOT NULL OR delay_us > 0
FROM unnest($1::uuid[], $2::text[], $3::text[], $4::bytea[], $5::jsonb[], $6::timestamptz[],
            $7::timestamptz[], $8::bigint[])
     WITH ORDINALITY AS m (id, subject, key, payload, headers, created_at, at, delay_us, ord)
ORDER BY ord
RETURNING id, seq";

// The caller's data-modifying statement (with its RETURNING clause) and the enqueue of one
// message, as one statement: the message is inserted only if the caller's statement returned a
// row. `{statement}` is the caller's text, spliced in last; `{pN}` are the placeholders of the
// message's parameters, numbered after the caller's. Casts give every parameter its type, so the
// statement can be prepared without naming any.
const WRITE_AND_ENQUEUE: &str = "\
WITH business AS (
{statement}
)
INSERT INTO {schema}.messages (id, subject, key, payload, headers, created_at, available_at, delayed)
SELECT {p1}::uuid, {p2}::text, {p3}::text, {p4}::bytea, {p5}::jsonb, {p6}::timestamptz,
       coalesce({p7}::timestamptz, now() + {p8}::bigint * interval '1 microsecond'),
       {p7}::timestamptz IS NOT NULL OR {p8}::bigint > 0
WHERE EXISTS (SELECT FROM business)
RETURNING seq";

/// [`WRITE_AND_ENQUEUE`] for a message due at once (see [`ENQUEUE_NOW`]): six parameters.
const WRITE_AND_ENQUEUE_NOW: &str = "\
WITH business AS (
{statement}
)
INSERT INTO {schema}.messages (id, subject, key, payload, headers, created_at)
SELECT {p1}::uuid, {p2}::text, {p3}::text, {p4}::bytea, {p5}::jsonb, {p6}::timestamptz
WHERE EXISTS (SELECT FROM business)
RETURNING seq";

/// The enqueue of [`EnqueueMode::WalMessage`](crate::EnqueueMode::WalMessage): one
/// transactional logical decoding message ($1 the outbox's prefix, $2 the encoded messages),
/// decoded only if and when the transaction commits.
pub(crate) const EMIT: &str = "SELECT pg_logical_emit_message(true, $1::text, $2::bytea)";

/// [`EMIT`] joined with the caller's statement, as [`WRITE_AND_ENQUEUE`] is with the insert:
/// one row if the message was emitted, none if the caller's statement returned no row.
const WRITE_AND_EMIT: &str = "\
WITH business AS (
{statement}
)
SELECT pg_logical_emit_message(true, {p1}::text, {p2}::bytea)
WHERE EXISTS (SELECT FROM business)";

/// The ingest's position, locked for its transaction: a second ingest (a former leader's, still
/// finishing) waits here and then sees what the first one inserted.
const WAL_PROGRESS_LOCK: &str = "SELECT lsn FROM {schema}.wal_progress FOR UPDATE";

const WAL_PROGRESS_READ: &str = "SELECT lsn FROM {schema}.wal_progress";

const WAL_PROGRESS_SET: &str = "UPDATE {schema}.wal_progress SET lsn = $1";

pub(crate) const WAL_LEVEL: &str = "SELECT current_setting('wal_level')";

/// The slot named $1, if any: its plugin and database.
pub(crate) const WAL_SLOT: &str = "\
SELECT plugin, database FROM pg_replication_slots WHERE slot_name = $1 AND slot_type = 'logical'";

/// The slot named $1: whether a stream reads it, and how much WAL it holds back, in bytes: not
/// yet confirmed by the ingest, and kept for it.
pub(crate) const WAL_SLOT_STATUS: &str = "\
SELECT active,
       coalesce(pg_current_wal_lsn() - confirmed_flush_lsn, 0)::bigint AS unconfirmed_bytes,
       coalesce(pg_current_wal_lsn() - restart_lsn, 0)::bigint AS retained_bytes,
       wal_status
FROM pg_replication_slots WHERE slot_name = $1";

pub(crate) const CREATE_WAL_SLOT: &str =
    "SELECT pg_create_logical_replication_slot($1, 'pgoutput')";

pub(crate) const DROP_WAL_SLOT: &str = "\
SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1";

pub(crate) const WAL_PUBLICATION: &str = "SELECT FROM pg_publication WHERE pubname = $1";

/// Sent in the enqueuing transaction, so it is delivered at commit and never for a rollback.
/// PostgreSQL folds identical notifications of one transaction into one.
pub(crate) const NOTIFY: &str = "SELECT pg_notify($1, '')";

/// `{channel}` is a quoted identifier made from the validated schema name.
const LISTEN: &str = "LISTEN {channel}";

/// The settings of a relay session: server-side keepalives, which let the server notice a
/// vanished client host and end its session, freeing the leadership lock (values are whole
/// seconds, as text); no `synchronous_commit`; plans that stay on the indexes.
//
// `synchronous_commit = off`: the relay's session only deletes published messages and records
// failures. If the server crashes before such a commit reaches disk, the message is simply
// published again (and dropped as a duplicate by JetStream's window) or its failure counted again;
// nothing is lost. Waiting for a WAL flush on every batch would only add the disk's latency to
// every round trip of the relay. Producers' enqueues keep the server's setting.
//
// Plans: the session runs a handful of statements, thousands of times a second, on a table whose
// statistics are always wrong (it is mostly empty, or holds a backlog, and its rows live for
// milliseconds). With custom plans, every claim was planned again (0.2 ms, as long as running
// it) and, after a vacuum had refreshed the row count, one plan combined the primary key and
// the available_at index in bitmaps and sorted the whole backlog: 20 ms instead of 0.3 for 256
// rows. Every statement of the session has an index path that is right at any table size, so
// the session plans each statement once (generic plans, rebuilt when the table's statistics
// change) and never with a sequential or bitmap scan. Without JIT: a disabled scan type only
// gets a huge cost, so a statement left with nothing but a sequential scan (the backlog count)
// looked expensive enough to compile, 50-100 ms during which the session's claims waited.
pub(crate) const SESSION_SETTINGS: &str = "\
SELECT set_config('tcp_keepalives_idle', $1, false),
       set_config('tcp_keepalives_interval', $2, false),
       set_config('tcp_keepalives_count', $3, false),
       set_config('synchronous_commit', 'off', false),
       set_config('plan_cache_mode', 'force_generic_plan', false),
       set_config('enable_seqscan', 'off', false),
       set_config('enable_bitmapscan', 'off', false),
       set_config('jit', 'off', false)";

/// Session-level, so it lives exactly as long as the session that took it.
pub(crate) const TRY_LOCK: &str = "SELECT pg_try_advisory_lock($1)";

/// Whether this session holds the advisory lock `$1`. A bigint key is stored in `pg_locks` as
/// its high 32 bits in `classid` and low 32 bits in `objid`, with `objsubid = 1`.
pub(crate) const HOLDS_LOCK: &str = "\
SELECT EXISTS (
    SELECT 1 FROM pg_locks
    WHERE locktype = 'advisory' AND granted AND objsubid = 1
      AND pid = pg_backend_pid()
      AND ((classid::bigint << 32) | objid::bigint) = $1
)";

// Walks the primary key in seq order. `NOT IN (SELECT unnest(..))` becomes a hashed subplan
// whatever the plan, so a long exclude list costs one hash probe per row (`<> ALL($1)` is only
// hashed in custom plans). `waiting` holds, per key, the first message that is not yet due
// (waiting for a retry or scheduled later): found once per statement through the partial index
// of delayed messages, and usually empty. A message that is not `delayed` is always due. A keyed
// row goes out only if its key has no waiting message before it: settled once per statement
// when nothing waits (an init plan), else by the hashed `NOT IN` for almost every row; only rows
// of a waiting key pay for the exact check.
const CLAIM: &str = "\
WITH waiting AS MATERIALIZED (
    SELECT key, min(seq) AS seq
    FROM {schema}.messages
    WHERE delayed AND available_at > now() AND key IS NOT NULL
    GROUP BY key
)
SELECT m.seq, m.attempts, m.id, m.subject, m.key, m.payload, m.headers, m.created_at
FROM {schema}.messages m
WHERE (NOT m.delayed OR m.available_at <= now())
  AND m.seq NOT IN (SELECT unnest($1::bigint[]))
  AND (m.key IS NULL
       OR NOT EXISTS (SELECT FROM waiting)
       OR m.key NOT IN (SELECT key FROM waiting)
       OR NOT EXISTS (SELECT 1 FROM waiting w WHERE w.key = m.key AND w.seq < m.seq))
ORDER BY m.seq
LIMIT $2";

// The same claim over the open seq intervals `($1[i], $2[i])` only (see the `claim` module):
// one bounded index range scan per interval instead of a filter over every held row. Each scan
// returns the first $3 rows of its interval in index order; the store merges them and keeps the
// lowest $3. Sorting here instead would copy every row, payload and all, into a sort: a tenth of
// the server's work per claimed message.
const CLAIM_GAPS: &str = "\
WITH waiting AS MATERIALIZED (
    SELECT key, min(seq) AS seq
    FROM {schema}.messages
    WHERE delayed AND available_at > now() AND key IS NOT NULL
    GROUP BY key
)
SELECT c.*
FROM unnest($1::bigint[], $2::bigint[]) AS g (after_seq, before_seq)
CROSS JOIN LATERAL (
    SELECT m.seq, m.attempts, m.id, m.subject, m.key, m.payload, m.headers, m.created_at
    FROM {schema}.messages m
    WHERE m.seq > g.after_seq AND m.seq < g.before_seq
      AND (NOT m.delayed OR m.available_at <= now())
      AND (m.key IS NULL
           OR NOT EXISTS (SELECT FROM waiting)
           OR m.key NOT IN (SELECT key FROM waiting)
           OR NOT EXISTS (SELECT 1 FROM waiting w WHERE w.key = m.key AND w.seq < m.seq))
    ORDER BY m.seq
    LIMIT $3
) c";

/// How far behind the relay is, spliced in as `{lag_seconds}` over `messages`: the seconds the
/// oldest due message has been due, 0 when none is. One definition, so the relay's backlog metric
/// and the status report agree.
const LAG_SECONDS: &str = "coalesce(extract(epoch FROM now() - min(available_at) \
                           FILTER (WHERE NOT delayed OR available_at <= now())), 0)::float8";

// One scan for both figures; sampled every few seconds by a leading relay.
const BACKLOG: &str = "\
SELECT count(*) AS pending,
       {lag_seconds} AS lag_seconds
FROM {schema}.messages";

// The status report, in one statement so its figures are one snapshot. `created_at` comes from
// the producer's clock, so its age is clamped at zero; `available_at` is always written on the
// database's clock.
const STATUS: &str = "\
SELECT (SELECT max(version) FROM {schema}.schema_migrations) AS schema_version,
       count(*) AS pending,
       count(*) FILTER (WHERE NOT delayed OR available_at <= now()) AS due,
       count(*) FILTER (WHERE attempts > 0) AS retrying,
       coalesce(greatest(extract(epoch FROM now() - min(created_at)), 0), 0)::float8
           AS oldest_pending_age_seconds,
       {lag_seconds} AS lag_seconds,
       (SELECT count(*) FROM {schema}.dead_letters) AS dead_letters
FROM {schema}.messages";

/// Whether schema `$1` (unquoted) holds a `schema_migrations` table. `to_regclass` answers NULL
/// for a missing schema or table instead of failing, which would abort the caller's transaction.
pub(crate) const SCHEMA_MIGRATIONS_EXISTS: &str =
    "SELECT to_regclass(format('%I.schema_migrations', $1::text)) IS NOT NULL AS present";

const SCHEMA_VERSION: &str = "SELECT max(version) AS version FROM {schema}.schema_migrations";

/// The session holding the leadership lock `$1` in this database, with what `pg_stat_activity`
/// shows of it. The key is encoded in `pg_locks` as in [`HOLDS_LOCK`]. Only an exclusive holder
/// leads: a session holding the same key in shared mode is not the leader (and blocks one).
/// Columns the connected role may not see of another role's session are NULL.
pub(crate) const LEADER: &str = "\
SELECT a.pid,
       a.usename::text AS usename,
       a.client_addr,
       a.client_port,
       a.application_name,
       a.backend_start,
       greatest(extract(epoch FROM now() - a.backend_start), 0)::float8 AS session_age_seconds,
       a.state
FROM pg_locks l
JOIN pg_stat_activity a ON a.pid = l.pid
WHERE l.locktype = 'advisory' AND l.granted AND l.mode = 'ExclusiveLock' AND l.objsubid = 1
  AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
  AND ((l.classid::bigint << 32) | l.objid::bigint) = $1
ORDER BY a.backend_start
LIMIT 1";

const COMPLETE: &str = "DELETE FROM {schema}.messages WHERE seq = ANY($1::bigint[])";

// COMPLETE with a retention: the same delete, its rows kept in `published`, in one statement.
const COMPLETE_RETAINING: &str = "\
WITH done AS (
    DELETE FROM {schema}.messages WHERE seq = ANY($1::bigint[])
    RETURNING seq, id, subject, key, payload, headers, created_at, attempts
)
INSERT INTO {schema}.published (seq, id, subject, key, payload, headers, created_at, attempts)
SELECT seq, id, subject, key, payload, headers, created_at, attempts FROM done";

// The relay's own vacuum of the hot table (see the `vacuum` module).
const VACUUM: &str = "VACUUM {schema}.messages";

const COUNT_PUBLISHED: &str = "\
SELECT count(*) AS n FROM {schema}.published WHERE published_at < now() - $1 * interval '1 microsecond'";

// Up to $2 published rows older than $1 microseconds, oldest first; returns how many went.
const PURGE_PUBLISHED_BATCH: &str = "\
WITH gone AS (
    DELETE FROM {schema}.published
    WHERE seq IN (
        SELECT seq FROM {schema}.published
        WHERE published_at < now() - $1 * interval '1 microsecond'
        ORDER BY published_at, seq
        LIMIT $2)
    RETURNING 1
)
SELECT count(*) AS purged FROM gone";

// One statement, so rescheduling and dead-lettering a batch is atomic without an explicit
// transaction (the leader session is shared by concurrent statements). A NULL delay means
// "dead-letter". Data-modifying CTEs always run, referenced or not.
const FAIL: &str = "\
WITH f AS (
    SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::text[]) AS f (seq, delay_us, error)
), retried AS (
    UPDATE {schema}.messages m
    SET attempts = m.attempts + 1,
        available_at = now() + f.delay_us * interval '1 microsecond',
        delayed = true,
        last_error = f.error
    FROM f
    WHERE m.seq = f.seq AND f.delay_us IS NOT NULL
), moved AS (
    DELETE FROM {schema}.messages m
    USING f
    WHERE m.seq = f.seq AND f.delay_us IS NULL
    RETURNING m.seq, m.id, m.subject, m.key, m.payload, m.headers, m.created_at,
              m.available_at, m.attempts, m.last_error, f.error AS final_error
)
INSERT INTO {schema}.dead_letters
    (seq, id, subject, key, payload, headers, created_at, available_at, attempts, last_error, error)
SELECT seq, id, subject, key, payload, headers, created_at, available_at, attempts + 1, last_error,
       final_error
FROM moved";

const LIST_DEAD_LETTERS: &str = "\
SELECT seq, attempts, id, subject, key, payload, headers, created_at, error, failed_at
FROM {schema}.dead_letters
ORDER BY failed_at, seq
LIMIT $1 OFFSET $2";

const COUNT_DEAD_LETTERS: &str = "SELECT count(*) FROM {schema}.dead_letters";

const REPLAY_DEAD_LETTERS: &str = "\
WITH replayed AS (
    DELETE FROM {schema}.dead_letters WHERE id = ANY($1::uuid[])
    RETURNING seq, id, subject, key, payload, headers, created_at
)
INSERT INTO {schema}.messages (id, subject, key, payload, headers, created_at)
SELECT id, subject, key, payload, headers, created_at FROM replayed ORDER BY seq
RETURNING id, seq";

const PURGE_DEAD_LETTERS: &str = "DELETE FROM {schema}.dead_letters WHERE id = ANY($1::uuid[])";

const PURGE_DEAD_LETTERS_BEFORE: &str = "DELETE FROM {schema}.dead_letters WHERE failed_at < $1";

/// The `WHERE` condition of a `DeadLetterFilter`, spliced in as `{filter}`: `$1` ids, `$2`
/// subject, `$3` key, `$4` minimum age in microseconds; a NULL parameter matches everything.
/// Statements are sent unnamed, so each is planned with its values and the NULL tests fold away.
const DEAD_LETTER_FILTER: &str = "\
($1::uuid[] IS NULL OR id = ANY($1::uuid[]))
  AND ($2::text IS NULL OR subject = $2::text)
  AND ($3::text IS NULL OR key = $3::text)
  AND ($4::bigint IS NULL OR failed_at < now() - $4::bigint * interval '1 microsecond')";

const LIST_DEAD_LETTERS_MATCHING: &str = "\
SELECT seq, attempts, id, subject, key, payload, headers, created_at, error, failed_at
FROM {schema}.dead_letters
WHERE {filter}
ORDER BY failed_at, seq
LIMIT $5 OFFSET $6";

const COUNT_DEAD_LETTERS_MATCHING: &str =
    "SELECT count(*) FROM {schema}.dead_letters WHERE {filter}";

/// The newest dead letter when a bulk operation starts: it works on seqs up to this one only,
/// so messages it replays that fail again (new seqs, always higher) are not picked up again.
const LAST_DEAD_LETTER_SEQ: &str = "SELECT max(seq) AS seq FROM {schema}.dead_letters";

// One batch of a bulk replay, in one statement (so atomic): the next `$7` matching dead letters
// after seq `$5` up to seq `$6`, in seq order. Those whose id is still in the outbox stay where
// they are (counted as matched, not done). Reinserted in seq order, so the new seqs keep the
// original order of each key.
const REPLAY_DEAD_LETTER_BATCH: &str = "\
WITH picked AS (
    SELECT seq FROM {schema}.dead_letters
    WHERE {filter} AND seq > $5 AND seq <= $6
    ORDER BY seq
    LIMIT $7
), moved AS (
    DELETE FROM {schema}.dead_letters d
    USING picked p
    WHERE d.seq = p.seq
      AND NOT EXISTS (SELECT 1 FROM {schema}.messages m WHERE m.id = d.id)
    RETURNING d.seq, d.id, d.subject, d.key, d.payload, d.headers, d.created_at
), inserted AS (
    INSERT INTO {schema}.messages (id, subject, key, payload, headers, created_at)
    SELECT id, subject, key, payload, headers, created_at FROM moved ORDER BY seq
    RETURNING seq
)
SELECT (SELECT count(*) FROM picked) AS matched,
       (SELECT max(seq) FROM picked) AS last_seq,
       (SELECT count(*) FROM inserted) AS done";

// One batch of a bulk purge; same selection as a replay batch.
const PURGE_DEAD_LETTER_BATCH: &str = "\
WITH picked AS (
    SELECT seq FROM {schema}.dead_letters
    WHERE {filter} AND seq > $5 AND seq <= $6
    ORDER BY seq
    LIMIT $7
), gone AS (
    DELETE FROM {schema}.dead_letters d
    USING picked p
    WHERE d.seq = p.seq
    RETURNING d.seq
)
SELECT (SELECT count(*) FROM picked) AS matched,
       (SELECT max(seq) FROM picked) AS last_seq,
       (SELECT count(*) FROM gone) AS done";

/// The statements of one schema, rendered once.
#[derive(Debug)]
pub(crate) struct Sql {
    pub(crate) bootstrap: String,
    pub(crate) applied_versions: String,
    pub(crate) record_migration: String,
    pub(crate) enqueue: String,
    pub(crate) enqueue_now: String,
    pub(crate) enqueue_batch: String,
    /// [`WRITE_AND_ENQUEUE`] with the schema filled in; see [`Sql::write_and_enqueue`].
    write_and_enqueue: String,
    /// [`WRITE_AND_ENQUEUE_NOW`] with the schema filled in.
    write_and_enqueue_now: String,
    /// [`WRITE_AND_EMIT`], see [`Sql::write_and_emit`].
    write_and_emit: String,
    pub(crate) wal_progress_lock: String,
    pub(crate) wal_progress_read: String,
    pub(crate) wal_progress_set: String,
    pub(crate) listen: String,
    pub(crate) claim: String,
    pub(crate) claim_gaps: String,
    pub(crate) complete: String,
    pub(crate) purge_published_batch: String,
    pub(crate) count_published: String,
    pub(crate) vacuum: String,
    pub(crate) backlog: String,
    pub(crate) status: String,
    pub(crate) schema_version: String,
    pub(crate) fail: String,
    pub(crate) list_dead_letters: String,
    pub(crate) count_dead_letters: String,
    pub(crate) replay_dead_letters: String,
    pub(crate) purge_dead_letters: String,
    pub(crate) purge_dead_letters_before: String,
    pub(crate) list_dead_letters_matching: String,
    pub(crate) count_dead_letters_matching: String,
    pub(crate) last_dead_letter_seq: String,
    pub(crate) replay_dead_letter_batch: String,
    pub(crate) purge_dead_letter_batch: String,
    schema: String,
}

impl Sql {
    /// Renders every statement for `schema` (already validated) and notification `channel`.
    /// The caller's `statement`, which takes `params` parameters, joined with the enqueue of one
    /// message (parameters `params + 1` to `params + 8`, or to `params + 6` for a message
    /// `due_now`). A trailing `;` is dropped.
    pub(crate) fn write_and_enqueue(
        &self,
        statement: &str,
        params: usize,
        due_now: bool,
    ) -> String {
        let mut sql = if due_now {
            self.write_and_enqueue_now.clone()
        } else {
            self.write_and_enqueue.clone()
        };
        for i in 1..=8 {
            sql = sql.replace(&format!("{{p{i}}}"), &format!("${}", params + i));
        }
        let statement = statement.trim_end().trim_end_matches(';');
        sql.replace("{statement}", statement)
    }

    /// The caller's `statement`, which takes `params` parameters, joined with the emit of one
    /// WAL message (parameters `params + 1` and `params + 2`).
    pub(crate) fn write_and_emit(&self, statement: &str, params: usize) -> String {
        let sql = self
            .write_and_emit
            .replace("{p1}", &format!("${}", params + 1))
            .replace("{p2}", &format!("${}", params + 2));
        let statement = statement.trim_end().trim_end_matches(';');
        sql.replace("{statement}", statement)
    }

    pub(crate) fn render(schema: &str, channel: &str, retaining: bool) -> Sql {
        let schema = quote_ident(schema);
        let r = |template: &str| {
            template
                .replace("{filter}", DEAD_LETTER_FILTER)
                .replace("{lag_seconds}", LAG_SECONDS)
                .replace("{schema}", &schema)
        };
        Sql {
            bootstrap: r(BOOTSTRAP),
            applied_versions: r(APPLIED_VERSIONS),
            record_migration: r(RECORD_MIGRATION),
            enqueue: r(ENQUEUE),
            enqueue_now: r(ENQUEUE_NOW),
            enqueue_batch: r(ENQUEUE_BATCH),
            write_and_enqueue: r(WRITE_AND_ENQUEUE),
            write_and_enqueue_now: r(WRITE_AND_ENQUEUE_NOW),
            write_and_emit: r(WRITE_AND_EMIT),
            wal_progress_lock: r(WAL_PROGRESS_LOCK),
            wal_progress_read: r(WAL_PROGRESS_READ),
            wal_progress_set: r(WAL_PROGRESS_SET),
            listen: LISTEN.replace("{channel}", &quote_ident(channel)),
            claim: r(CLAIM),
            claim_gaps: r(CLAIM_GAPS),
            complete: r(if retaining {
                COMPLETE_RETAINING
            } else {
                COMPLETE
            }),
            purge_published_batch: r(PURGE_PUBLISHED_BATCH),
            count_published: r(COUNT_PUBLISHED),
            vacuum: r(VACUUM),
            backlog: r(BACKLOG),
            status: r(STATUS),
            schema_version: r(SCHEMA_VERSION),
            fail: r(FAIL),
            list_dead_letters: r(LIST_DEAD_LETTERS),
            count_dead_letters: r(COUNT_DEAD_LETTERS),
            replay_dead_letters: r(REPLAY_DEAD_LETTERS),
            purge_dead_letters: r(PURGE_DEAD_LETTERS),
            purge_dead_letters_before: r(PURGE_DEAD_LETTERS_BEFORE),
            list_dead_letters_matching: r(LIST_DEAD_LETTERS_MATCHING),
            count_dead_letters_matching: r(COUNT_DEAD_LETTERS_MATCHING),
            last_dead_letter_seq: r(LAST_DEAD_LETTER_SEQ),
            replay_dead_letter_batch: r(REPLAY_DEAD_LETTER_BATCH),
            purge_dead_letter_batch: r(PURGE_DEAD_LETTER_BATCH),
            schema,
        }
    }

    /// A migration's statements for this schema.
    pub(crate) fn migration(&self, migration: &Migration) -> String {
        migration.sql.replace("{schema}", &self.schema)
    }
}

/// Quotes an identifier. Names are validated before they get here; doubling quotes keeps this
/// safe on its own.
pub(crate) fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_placeholder_is_replaced() {
        let sql = Sql::render("tenant_1", "outbox_tenant_1", true);
        for text in [
            &sql.bootstrap,
            &sql.claim,
            &sql.claim_gaps,
            &sql.complete,
            &sql.purge_published_batch,
            &sql.fail,
            &sql.enqueue,
            &sql.enqueue_now,
            &sql.enqueue_batch,
            &sql.write_and_enqueue("UPDATE t SET a = $1 RETURNING 1", 1, false),
            &sql.write_and_enqueue("UPDATE t SET a = $1 RETURNING 1", 1, true),
            &sql.replay_dead_letters,
            &sql.list_dead_letters_matching,
            &sql.count_dead_letters_matching,
            &sql.replay_dead_letter_batch,
            &sql.purge_dead_letter_batch,
            &sql.listen,
            &sql.backlog,
            &sql.status,
            &sql.schema_version,
        ] {
            assert!(!text.contains('{'), "{text}");
        }
        assert!(sql.claim.contains("FROM \"tenant_1\".messages m"));
        assert_eq!(sql.listen, "LISTEN \"outbox_tenant_1\"");
        for migration in MIGRATIONS {
            let text = sql.migration(migration);
            assert!(!text.contains("{schema}"));
            assert!(text.contains("\"tenant_1\"."), "{text}");
        }
    }

    #[test]
    fn the_backlog_and_the_status_share_one_lag() {
        let sql = Sql::render("t_1", "outbox_t_1", false);
        assert!(
            sql.backlog
                .contains(&format!("{LAG_SECONDS} AS lag_seconds"))
        );
        assert!(
            sql.status
                .contains(&format!("{LAG_SECONDS} AS lag_seconds"))
        );
        assert_eq!(
            sql.schema_version,
            "SELECT max(version) AS version FROM \"t_1\".schema_migrations"
        );
    }

    #[test]
    fn migrations_are_numbered_in_order() {
        for (i, migration) in MIGRATIONS.iter().enumerate() {
            assert_eq!(migration.version, i32::try_from(i + 1).unwrap());
        }
    }

    #[test]
    fn quoting_doubles_quotes() {
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
    }
}
