//! `outbox migrate` and `outbox status`.
//!
//! The figures come from outbox-postgres ([`PgOutbox::status`], [`PgOutbox::leader`]); ages are
//! computed on the database's clock.

use anyhow::Context;
use outbox_postgres::{LeaderSession, PgConfig, PgOutbox};
use serde::Serialize;

use crate::cli::Settings;
use crate::db;
use crate::output::{self, age, print_json};

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
    let version = outbox
        .schema_version(&client)
        .await
        .map_err(|e| query_failed("reading the schema version", &settings.schema, &e))?;
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
    pending: u64,
    /// Of those, due now.
    due: u64,
    /// Of those, not due yet: scheduled for later, or waiting for a retry.
    not_due: u64,
    /// Messages that failed at least once and wait for (or are in) their next attempt.
    retrying: u64,
    /// Seconds since the oldest pending message was created.
    oldest_pending_age_seconds: f64,
    /// Seconds the oldest due message has been due: how far behind the relay is (0 when
    /// nothing is due).
    lag_seconds: f64,
    /// Messages given up on.
    dead_letters: u64,
    /// The advisory lock key the leader holds.
    lock_id: i64,
    /// The session holding it, if any.
    leader: Option<Leader>,
    /// The replication slot of the WAL enqueue mode, if the outbox has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    wal_slot: Option<WalSlot>,
}

/// The outbox's replication slot (`EnqueueMode::WalMessage`), from `pg_replication_slots`.
#[derive(Debug, Serialize)]
struct WalSlot {
    name: String,
    /// Whether a leading relay's ingest streams it now.
    active: bool,
    /// WAL written since the ingest's last confirmed position.
    unconfirmed_bytes: u64,
    /// WAL the server keeps for the slot.
    retained_bytes: u64,
    wal_status: Option<String>,
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
    let outbox = outbox(settings, lock_id)?;
    let client = db::connect(settings).await?;
    let status = read_status(&outbox, &client).await?;
    if settings.json {
        print_json(&status)
    } else {
        print!("{}", render_status(&status, &settings.database_redacted));
        Ok(())
    }
}

/// The outbox in `--schema`, whose leader holds `lock_id` (by default the schema's lock).
fn outbox(settings: &Settings, lock_id: Option<i64>) -> anyhow::Result<PgOutbox> {
    let mut config = PgConfig::builder().schema(settings.schema.as_str());
    if let Some(lock_id) = lock_id {
        config = config.lock_id(lock_id);
    }
    let config = config.build().context("invalid outbox configuration")?;
    PgOutbox::new(config).context("invalid outbox configuration")
}

async fn read_status(outbox: &PgOutbox, client: &tokio_postgres::Client) -> anyhow::Result<Status> {
    let schema = &outbox.config().schema;
    let figures = outbox
        .status(client)
        .await
        .map_err(|e| query_failed("reading the outbox", schema, &e))?;
    let leader = outbox
        .leader(client)
        .await
        .map_err(|e| query_failed("looking up the leader", schema, &e))?;
    let wal_slot = outbox
        .wal_slot_status(client)
        .await
        .map_err(|e| query_failed("reading the replication slot", schema, &e))?;
    Ok(Status {
        schema: schema.clone(),
        schema_version: figures.schema_version,
        pending: figures.pending,
        due: figures.due,
        not_due: figures.pending.saturating_sub(figures.due),
        retrying: figures.retrying,
        oldest_pending_age_seconds: figures.oldest_pending_age.as_secs_f64(),
        lag_seconds: figures.lag.as_secs_f64(),
        dead_letters: figures.dead_letters,
        lock_id: outbox.config().lock_id(),
        leader: leader.map(Leader::from),
        wal_slot: wal_slot.map(|slot| WalSlot {
            name: slot.name,
            active: slot.active,
            unconfirmed_bytes: slot.unconfirmed_bytes,
            retained_bytes: slot.retained_bytes,
            wal_status: slot.wal_status,
        }),
    })
}

impl From<LeaderSession> for Leader {
    fn from(session: LeaderSession) -> Self {
        Leader {
            pid: session.pid,
            user: session.user,
            client_addr: session.client_addr.map(|addr| addr.to_string()),
            client_port: session.client_port,
            application_name: session.application_name,
            backend_start: session.backend_start.map(output::timestamp),
            session_age_seconds: session.session_age.map(|age| age.as_secs_f64()),
            state: session.state,
        }
    }
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
    if let Some(slot) = &s.wal_slot {
        lines.push(format!(
            "  wal slot         {}: {}, {} unconfirmed, {} kept ({})",
            slot.name,
            if slot.active {
                "streamed"
            } else {
                "not streamed"
            },
            bytes(slot.unconfirmed_bytes),
            bytes(slot.retained_bytes),
            slot.wal_status.as_deref().unwrap_or("unknown"),
        ));
    }
    let mut out = lines.join("\n");
    out.push('\n');
    out
}

/// A byte count in the largest unit that keeps it above 1.
fn bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

fn query_failed(what: &str, schema: &str, error: &outbox_postgres::Error) -> anyhow::Error {
    db::failed(
        what,
        schema,
        error.code(),
        error as &(dyn std::error::Error + 'static),
    )
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
            wal_slot: None,
        }
    }

    #[test]
    fn a_wal_slot_is_reported_with_what_it_keeps() {
        let mut s = status(None);
        assert!(!render_status(&s, "db").contains("wal slot"));
        s.wal_slot = Some(WalSlot {
            name: "outbox_outbox".into(),
            active: true,
            unconfirmed_bytes: 512,
            retained_bytes: 3 * 1024 * 1024 + 512 * 1024,
            wal_status: Some("reserved".into()),
        });
        let text = render_status(&s, "db");
        assert!(
            text.contains(
                "  wal slot         outbox_outbox: streamed, 512 B unconfirmed, 3.5 MiB kept (reserved)\n"
            ),
            "{text}"
        );
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
}
