//! `outbox migrate` and `outbox status`.
//!
//! The status queries read the outbox tables and PostgreSQL's own views; they live here, not in
//! outbox-postgres, because nothing but this report uses them. Ages are computed on the
//! database's clock.

use std::time::SystemTime;

use outbox_postgres::PgConfig;
use serde::Serialize;
use tokio_postgres::{Client, Row};

use crate::cli::Settings;
use crate::db;
use crate::output::{self, age, print_json};

const SCHEMA_VERSION: &str = "SELECT max(version) AS version FROM {schema}.schema_migrations";

// One pass over `messages`. `created_at` comes from the producer's clock, so its age is clamped
// at zero; `available_at` is always written on the database's clock.
const COUNTS: &str = "\
SELECT count(*) AS pending,
       count(*) FILTER (WHERE available_at <= now()) AS due,
       count(*) FILTER (WHERE attempts > 0) AS retrying,
       coalesce(greatest(extract(epoch FROM now() - min(created_at)), 0), 0)::float8
           AS oldest_pending_age,
       coalesce(extract(epoch FROM now() - min(available_at) FILTER (WHERE available_at <= now())),
                0)::float8 AS lag,
       (SELECT count(*) FROM {schema}.dead_letters) AS dead_letters
FROM {schema}.messages";

/// The sessions holding the leadership lock `$1` in this database. A bigint advisory key is
/// shown in `pg_locks` as its high 32 bits in `classid`, its low 32 bits in `objid`, and
/// `objsubid = 1` (outbox-postgres checks its own lock the same way).
const LEADER: &str = "\
SELECT a.pid,
       a.usename::text AS usename,
       host(a.client_addr) AS client_addr,
       a.client_port,
       a.application_name,
       a.backend_start,
       greatest(extract(epoch FROM now() - a.backend_start), 0)::float8 AS session_age,
       a.state
FROM pg_locks l
JOIN pg_stat_activity a ON a.pid = l.pid
WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
  AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
  AND ((l.classid::bigint << 32) | l.objid::bigint) = $1
ORDER BY a.backend_start";

/// What `outbox migrate --json` prints.
#[derive(Debug, Serialize)]
struct Migrated<'a> {
    schema: &'a str,
    /// Versions applied by this run, ascending; empty when the schema was up to date.
    applied: Vec<i32>,
    /// The schema's version after the run.
    version: Option<i32>,
}

/// `outbox migrate`.
pub(crate) async fn migrate(settings: &Settings) -> anyhow::Result<()> {
    let outbox = db::outbox(settings)?;
    let client = db::connect(settings).await?;
    let applied = outbox.migrate(&client).await.map_err(|e| {
        db::failed(
            "migration",
            &settings.schema,
            e.code(),
            &e as &(dyn std::error::Error + 'static),
        )
    })?;
    let version = schema_version(&client, &settings.schema).await?;
    let report = Migrated {
        schema: &settings.schema,
        applied,
        version,
    };
    if settings.json {
        return print_json(&report);
    }
    let version = report.version.map_or("none".to_owned(), |v| v.to_string());
    if report.applied.is_empty() {
        println!(
            "Schema \"{}\" is up to date (version {version}): no migration applied.",
            report.schema
        );
    } else {
        let list: Vec<String> = report.applied.iter().map(i32::to_string).collect();
        println!(
            "Schema \"{}\": applied migration{} {}; now at version {version}.",
            report.schema,
            if list.len() == 1 { "" } else { "s" },
            list.join(", ")
        );
    }
    Ok(())
}

/// What `outbox status --json` prints.
#[derive(Debug, Serialize)]
struct Status {
    schema: String,
    /// The latest applied migration.
    schema_version: Option<i32>,
    /// Messages in the outbox (not yet acknowledged by the broker).
    pending: i64,
    /// Of those, due now.
    due: i64,
    /// Of those, not due yet: scheduled for later, or waiting for a retry.
    not_due: i64,
    /// Messages that failed at least once and wait for (or are in) their next attempt.
    retrying: i64,
    /// Seconds since the oldest pending message was created.
    oldest_pending_age_seconds: f64,
    /// Seconds the oldest due message has been due: how far behind the relay is (0 when
    /// nothing is due).
    lag_seconds: f64,
    /// Messages given up on.
    dead_letters: i64,
    /// The advisory lock key the leader holds.
    lock_id: i64,
    /// The session holding it, if any.
    leader: Option<Leader>,
}

/// The session holding the leadership lock, from `pg_stat_activity`. Fields the connected role
/// may not see (another role's client address without `pg_read_all_stats`) are null.
#[derive(Debug, Serialize)]
struct Leader {
    pid: i32,
    user: Option<String>,
    client_addr: Option<String>,
    client_port: Option<i32>,
    application_name: Option<String>,
    /// When the leader's session started: it has led since then at the earliest (a standby
    /// campaigns on the session it will lead with).
    backend_start: Option<String>,
    session_age_seconds: Option<f64>,
    state: Option<String>,
}

/// `outbox status`.
pub(crate) async fn status(settings: &Settings, lock_id: Option<i64>) -> anyhow::Result<()> {
    let schema = &settings.schema;
    let lock_id = lock_id.unwrap_or_else(|| PgConfig::default_lock_id(schema));
    let client = db::connect(settings).await?;
    let schema_version = schema_version(&client, schema).await?;
    let counts = client
        .query_one(&render(COUNTS, schema), &[])
        .await
        .map_err(|e| query_failed("reading the outbox", schema, &e))?;
    let leaders = client
        .query(LEADER, &[&lock_id])
        .await
        .map_err(|e| query_failed("looking up the leader", schema, &e))?;
    let leader = match leaders.first() {
        Some(row) => Some(leader(row)?),
        None => None,
    };
    let pending: i64 = counts.try_get("pending")?;
    let due: i64 = counts.try_get("due")?;
    let status = Status {
        schema: schema.clone(),
        schema_version,
        pending,
        due,
        not_due: pending - due,
        retrying: counts.try_get("retrying")?,
        oldest_pending_age_seconds: counts.try_get("oldest_pending_age")?,
        lag_seconds: counts.try_get("lag")?,
        dead_letters: counts.try_get("dead_letters")?,
        lock_id,
        leader,
    };
    if settings.json {
        print_json(&status)
    } else {
        print!("{}", render_status(&status, &settings.database_redacted));
        Ok(())
    }
}

fn leader(row: &Row) -> anyhow::Result<Leader> {
    let backend_start: Option<SystemTime> = row.try_get("backend_start")?;
    Ok(Leader {
        pid: row.try_get("pid")?,
        user: row.try_get("usename")?,
        client_addr: row.try_get("client_addr")?,
        client_port: row.try_get("client_port")?,
        application_name: row.try_get("application_name")?,
        backend_start: backend_start.map(output::timestamp),
        session_age_seconds: row.try_get("session_age")?,
        state: row.try_get("state")?,
    })
}

fn render_status(s: &Status, database: &str) -> String {
    let version = s
        .schema_version
        .map_or("no migration".to_owned(), |v| format!("version {v}"));
    let mut lines = vec![
        format!("Outbox \"{}\" ({version}) on {database}", s.schema),
        format!("  pending          {}", s.pending),
        format!("    due now        {}", s.due),
        format!(
            "    not yet due    {}  (scheduled, or waiting to retry)",
            s.not_due
        ),
        format!("  retrying         {}  (failed at least once)", s.retrying),
        format!(
            "  oldest pending   {}",
            if s.pending == 0 {
                "-".to_owned()
            } else {
                age(s.oldest_pending_age_seconds)
            }
        ),
        format!(
            "  lag              {}  (how long the oldest due message has waited)",
            age(s.lag_seconds)
        ),
        format!("  dead letters     {}", s.dead_letters),
    ];
    let leader = match &s.leader {
        None => format!("none: no session holds lock {}", s.lock_id),
        Some(l) => {
            let mut parts = vec![format!("pid {}", l.pid)];
            if let Some(name) = l.application_name.as_deref().filter(|n| !n.is_empty()) {
                parts.push(format!("\"{name}\""));
            }
            match (&l.client_addr, l.client_port) {
                (Some(addr), Some(port)) if port > 0 => parts.push(format!("from {addr}:{port}")),
                (Some(addr), _) => parts.push(format!("from {addr}")),
                (None, Some(-1)) => parts.push("over a Unix socket".to_owned()),
                _ => {}
            }
            if let Some(user) = &l.user {
                parts.push(format!("as {user}"));
            }
            if let Some(start) = &l.backend_start {
                let ago = l.session_age_seconds.map(age).unwrap_or_default();
                let start = start.split('.').next().unwrap_or(start);
                parts.push(format!("session since {start}Z ({ago} ago)"));
            }
            parts.join(", ")
        }
    };
    lines.push(format!("  leader           {leader}"));
    let mut out = lines.join("\n");
    out.push('\n');
    out
}

async fn schema_version(client: &Client, schema: &str) -> anyhow::Result<Option<i32>> {
    let row = client
        .query_one(&render(SCHEMA_VERSION, schema), &[])
        .await
        .map_err(|e| query_failed("reading the schema version", schema, &e))?;
    Ok(row.try_get("version")?)
}

fn query_failed(what: &str, schema: &str, error: &tokio_postgres::Error) -> anyhow::Error {
    db::failed(what, schema, error.code(), error)
}

/// `template` with `{schema}` replaced by the quoted schema name (validated when parsed).
fn render(template: &str, schema: &str) -> String {
    template.replace("{schema}", &format!("\"{}\"", schema.replace('"', "\"\"")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(leader: Option<Leader>) -> Status {
        Status {
            schema: "outbox".into(),
            schema_version: Some(1),
            pending: 3,
            due: 2,
            not_due: 1,
            retrying: 1,
            oldest_pending_age_seconds: 125.4,
            lag_seconds: 0.0,
            dead_letters: 4,
            lock_id: 42,
            leader,
        }
    }

    #[test]
    fn status_reads_as_a_report() {
        let text = render_status(&status(None), "postgres://u@h/db");
        assert!(text.starts_with("Outbox \"outbox\" (version 1) on postgres://u@h/db\n"));
        assert!(text.contains("  pending          3\n"), "{text}");
        assert!(text.contains("  oldest pending   2m 5s\n"), "{text}");
        assert!(text.contains("  lag              0s  "), "{text}");
        assert!(text.contains("leader           none: no session holds lock 42"));
        let text = render_status(
            &status(Some(Leader {
                pid: 7,
                user: Some("postgres".into()),
                client_addr: Some("127.0.0.1".into()),
                client_port: Some(5000),
                application_name: Some("outbox-relay outbox".into()),
                backend_start: Some("2026-01-02T03:04:05.123456Z".into()),
                session_age_seconds: Some(61.0),
                state: Some("idle".into()),
            })),
            "db",
        );
        assert!(
            text.contains(
                "leader           pid 7, \"outbox-relay outbox\", from 127.0.0.1:5000, as \
                 postgres, session since 2026-01-02T03:04:05Z (1m 1s ago)"
            ),
            "{text}"
        );
    }

    #[test]
    fn the_schema_is_quoted() {
        assert_eq!(
            render(SCHEMA_VERSION, "t_1"),
            "SELECT max(version) AS version FROM \"t_1\".schema_migrations"
        );
    }
}
