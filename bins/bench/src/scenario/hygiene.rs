//! `hygiene`: what the outbox's hot table looks like after a long stream of messages went
//! through it, with PostgreSQL's default autovacuum settings and with the per-table settings of
//! migration 2.
//!
//! Every message is inserted by a producer and deleted by the relay minutes later at most, so
//! the table's live rows stay few while its dead rows pile up until a vacuum removes them. How
//! many pile up, and how large the table and its indexes grow meanwhile, depends on when
//! autovacuum visits the table: that is what this scenario measures, sampling
//! `pg_stat_user_tables` and the relation sizes every second while producers commit at a steady
//! rate below what the relay drains.
//!
//! Two variants, each in a fresh schema: `default` resets the table's storage parameters, so the
//! server's settings apply; `tuned` keeps them as migrated. Autovacuum's wake-up interval
//! (`autovacuum_naptime`) is a server setting no table can change: it is reported, not set.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use outbox_core::{CancellationToken, Message};
use outbox_postgres::{PgOutbox, WakeUp};
use serde_json::{Value, json};
use tokio::sync::watch;
use uuid::Uuid;

use super::{Ctx, Outcome, RunningRelay, check, drain_timeout, key_order_name};
use crate::env::Fixture;
use crate::procfs::CpuSnapshot;
use crate::progress::Progress;
use crate::report::{histogram, percentiles_ms, round};

/// Producer tasks (connections) that share the rate; each owns a disjoint set of keys.
const PRODUCERS: u32 = 4;
/// Messages per producer transaction (one `enqueue_batch`).
const BATCH: usize = 100;
const SAMPLE_EVERY: Duration = Duration::from_secs(1);
/// One point of the reported timeline per this many samples.
const TIMELINE_EVERY: usize = 10;
/// How long the deletes may take to show in the statistics once the relay completed them.
const STATS_LAG: Duration = Duration::from_secs(15);

/// The storage parameters migration 2 sets on `messages`, which `default` resets.
const STORAGE_PARAMETERS: &str = "autovacuum_vacuum_scale_factor, autovacuum_vacuum_threshold, \
     autovacuum_vacuum_insert_scale_factor, autovacuum_vacuum_insert_threshold, \
     autovacuum_analyze_scale_factor, autovacuum_analyze_threshold, autovacuum_vacuum_cost_delay";

/// Server settings that decide when and how fast autovacuum works.
const SERVER_SETTINGS: [&str; 8] = [
    "autovacuum",
    "autovacuum_naptime",
    "autovacuum_max_workers",
    "autovacuum_vacuum_cost_delay",
    "autovacuum_vacuum_cost_limit",
    "autovacuum_vacuum_threshold",
    "autovacuum_vacuum_scale_factor",
    "autovacuum_vacuum_insert_threshold",
];

// One clock for every time: the database's, so that `last_autovacuum` compares with the rest.
const SAMPLE: &str = "\
SELECT extract(epoch FROM clock_timestamp())::float8,
       s.n_live_tup, s.n_dead_tup, s.n_tup_ins, s.n_tup_del,
       s.autovacuum_count, s.vacuum_count, s.autoanalyze_count,
       extract(epoch FROM s.last_autovacuum)::float8,
       pg_relation_size(s.relid), pg_indexes_size(s.relid), pg_total_relation_size(s.relid),
       (SELECT p.phase FROM pg_stat_progress_vacuum p WHERE p.relid = s.relid LIMIT 1)
FROM pg_stat_user_tables s
WHERE s.relid = $1::text::regclass";

/// The table's storage parameters under test.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Storage {
    /// The server's autovacuum settings (the table's parameters reset).
    Default,
    /// The parameters migration 2 sets.
    Tuned,
}

impl Storage {
    fn name(self) -> &'static str {
        match self {
            Storage::Default => "default",
            Storage::Tuned => "tuned",
        }
    }
}

/// The table at one instant, as the statistics and the relation sizes tell.
#[derive(Clone, Debug)]
struct Sample {
    /// Database clock, seconds since the epoch.
    at: f64,
    live: i64,
    dead: i64,
    inserted: i64,
    deleted: i64,
    autovacuums: i64,
    vacuums: i64,
    autoanalyzes: i64,
    last_autovacuum: Option<f64>,
    table_bytes: i64,
    index_bytes: i64,
    total_bytes: i64,
    /// The phase of a vacuum of the table in progress, if any.
    vacuum_phase: Option<String>,
}

impl Sample {
    async fn take(client: &tokio_postgres::Client, table: &str) -> anyhow::Result<Self> {
        let row = client
            .query_one(SAMPLE, &[&table])
            .await
            .context("sampling pg_stat_user_tables")?;
        Ok(Self {
            at: row.try_get(0)?,
            live: row.try_get(1)?,
            dead: row.try_get(2)?,
            inserted: row.try_get(3)?,
            deleted: row.try_get(4)?,
            autovacuums: row.try_get(5)?,
            vacuums: row.try_get(6)?,
            autoanalyzes: row.try_get(7)?,
            last_autovacuum: row.try_get(8)?,
            table_bytes: row.try_get(9)?,
            index_bytes: row.try_get(10)?,
            total_bytes: row.try_get(11)?,
            vacuum_phase: row.try_get(12)?,
        })
    }

    /// The sizes and counts, with times relative to `t0`.
    fn summary(&self, t0: f64) -> Value {
        json!({
            "t_s": round(self.at - t0, 1),
            "live_tuples": self.live,
            "dead_tuples": self.dead,
            "table_bytes": self.table_bytes,
            "table_mib": mib(self.table_bytes),
            "index_bytes": self.index_bytes,
            "index_mib": mib(self.index_bytes),
            "total_bytes": self.total_bytes,
            "total_mib": mib(self.total_bytes),
            "autovacuum_count": self.autovacuums,
            "inserted": self.inserted,
            "deleted": self.deleted,
        })
    }
}

fn mib(bytes: i64) -> f64 {
    round(bytes as f64 / (1024.0 * 1024.0), 2)
}

/// Both variants, one outcome (and JSON line) each; a failed variant does not stop the other.
pub(crate) async fn run(ctx: &Ctx<'_>) -> Vec<anyhow::Result<Outcome>> {
    let mut outcomes = Vec::new();
    for storage in [Storage::Default, Storage::Tuned] {
        outcomes.push(run_variant(ctx, storage).await);
    }
    outcomes
}

async fn run_variant(ctx: &Ctx<'_>, storage: Storage) -> anyhow::Result<Outcome> {
    let fx = ctx
        .env
        .fixture(&format!("hygiene_{}", storage.name()), WakeUp::Poll)
        .await?;
    let result = variant(ctx, &fx, storage).await;
    fx.cleanup().await;
    result
}

async fn variant(ctx: &Ctx<'_>, fx: &Fixture, storage: Storage) -> anyhow::Result<Outcome> {
    let n = ctx.args.hygiene_messages();
    let rate = ctx.args.hygiene_rate;
    let config = ctx.relay_config()?;
    let table = format!("\"{}\".messages", fx.schema);
    if storage == Storage::Default {
        fx.admin
            .batch_execute(&format!("ALTER TABLE {table} RESET ({STORAGE_PARAMETERS})"))
            .await
            .context("resetting the table's storage parameters")?;
    }
    let reloptions: Vec<String> = fx
        .admin
        .query_one(
            "SELECT coalesce(reloptions, '{}') FROM pg_class WHERE oid = $1::text::regclass",
            &[&table],
        )
        .await?
        .try_get(0)?;
    let mut server = serde_json::Map::new();
    for name in SERVER_SETTINGS {
        let value: String = fx
            .admin
            .query_one("SELECT current_setting($1)", &[&name])
            .await?
            .try_get(0)?;
        server.insert(name.to_owned(), Value::String(value));
    }
    let autovacuum_on = server.get("autovacuum").and_then(Value::as_str) == Some("on");
    if !autovacuum_on {
        tracing::warn!(
            "autovacuum is off on this server: only the store's own vacuum (PgConfig::vacuum_every) \
             runs, so the two table settings cannot differ; point --database-url at a server with \
             autovacuum on to compare them"
        );
    }
    let settle = if autovacuum_on {
        Duration::from_secs_f64(ctx.args.hygiene_settle_secs())
    } else {
        Duration::ZERO
    };

    // The sampler has a connection of its own, so that it never waits behind a check.
    let sampler_client = ctx.env.pg_client().await?;
    let first = Sample::take(&sampler_client, &table).await?;
    let t0 = first.at;
    let (latest_tx, mut latest) = watch::channel(first.clone());
    let stop_sampling = CancellationToken::new();
    // Stops the sampler however this function ends.
    let _stop_sampling_on_exit = stop_sampling.clone().drop_guard();
    let sampler = tokio::spawn(sample_until(
        sampler_client,
        table.clone(),
        first,
        latest_tx,
        stop_sampling.clone(),
    ));

    let cpu_before = CpuSnapshot::take();
    let relay = RunningRelay::start(
        &ctx.env.pg,
        ctx.env.nats().await?,
        &fx.outbox,
        config.clone(),
        true,
    )
    .await?;
    let producers = PRODUCERS.min(ctx.args.keys);
    let mut clients = Vec::new();
    for _ in 0..producers {
        clients.push(ctx.env.pg_client().await?);
    }
    let start = Instant::now() + Duration::from_millis(100);
    let batch_gap = Duration::from_secs_f64(BATCH as f64 / f64::from(rate));
    let tasks: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(p, client)| {
            let p = u32::try_from(p).unwrap_or(0);
            let quota =
                n / u64::from(producers) + u64::from(u64::from(p) < n % u64::from(producers));
            let generator = crate::workload::Generator::partition(
                &fx.subject,
                ctx.shape(),
                7_000 + u64::from(p),
                p,
                producers,
            );
            tokio::spawn(produce(
                client,
                fx.outbox.clone(),
                generator,
                quota,
                Schedule {
                    start: start + batch_gap * p,
                    interval: batch_gap * producers,
                },
            ))
        })
        .collect();
    let producing = async {
        let mut commits = Vec::with_capacity(usize::try_from(n).unwrap_or(0));
        let mut late = 0;
        for task in tasks {
            let (c, l) = task.await??;
            commits.extend(c);
            late += l;
        }
        anyhow::Ok((commits, late, start.elapsed()))
    };
    let progress = Progress::bar(&format!("hygiene {} (relayed)", storage.name()), n);
    let timeout = Duration::from_secs_f64(n as f64 / f64::from(rate)) + drain_timeout(n);
    let relaying = relay.wait_completed(n, timeout, &progress);
    let joined = tokio::try_join!(producing, relaying);
    progress.done();
    let ((commits, late, produced_in), relayed_in) = match joined {
        Ok(done) => done,
        Err(error) => {
            relay.stop().await?;
            return Err(error);
        }
    };

    // The relay deleted every row; the final figures wait until the statistics say so too.
    let emptied = tokio::time::timeout(STATS_LAG, latest.wait_for(|s| s.deleted >= n as i64))
        .await
        .is_ok();
    let at_empty = latest.borrow().clone();
    let settled = if settle.is_zero() {
        None
    } else {
        let vacuumed = tokio::time::timeout(
            settle,
            latest.wait_for(|s| s.autovacuums > at_empty.autovacuums),
        )
        .await
        .is_ok();
        Some((vacuumed, latest.borrow().clone()))
    };
    let cpu = cpu_before.until(&CpuSnapshot::take());
    let acks = relay.probe.take_acks();
    let phases = relay.probe.phases(relay.started.elapsed());
    relay.stop().await?;
    stop_sampling.cancel();
    let samples = sampler.await??;
    let violations = check(fx, n).await?;

    let committed: std::collections::HashMap<Uuid, Instant> = commits.into_iter().collect();
    let mut to_ack = histogram();
    for (id, at) in &acks {
        if let Some(commit) = committed.get(id) {
            let us = at.saturating_duration_since(*commit).as_micros();
            to_ack.saturating_record(u64::try_from(us).unwrap_or(u64::MAX).max(1));
        }
    }

    // Up to the moment the outbox was empty: the settle phase only shows what a vacuum leaves.
    let during: Vec<&Sample> = samples.iter().filter(|s| s.at <= at_empty.at).collect();
    let peak = |f: fn(&Sample) -> i64| during.iter().map(|s| f(s)).max().unwrap_or(0);
    let autovacuum_at_s: Vec<f64> = {
        let mut at: Vec<f64> = samples
            .iter()
            .filter_map(|s| s.last_autovacuum)
            .filter(|&t| t >= t0)
            .map(|t| round(t - t0, 1))
            .collect();
        at.dedup();
        at
    };
    let timeline: Vec<Value> = samples
        .iter()
        .step_by(TIMELINE_EVERY)
        .map(|s| {
            json!([
                round(s.at - t0, 0),
                s.live,
                s.dead,
                mib(s.table_bytes),
                mib(s.index_bytes),
                s.autovacuums,
            ])
        })
        .collect();
    let relayed_s = relayed_in.as_secs_f64();
    let figures = json!({
        "storage": storage.name(),
        "seconds": round(relayed_s, 1),
        "messages_per_s": round(n as f64 / relayed_s, 0),
        "produced_per_s": round(n as f64 / produced_in.as_secs_f64(), 0),
        "late_batches_over_5ms": late,
        "dead_tuples": { "peak": peak(|s| s.dead), "final": at_empty.dead },
        "live_tuples": { "peak": peak(|s| s.live), "final": at_empty.live },
        "table_bytes": { "peak": peak(|s| s.table_bytes), "final": at_empty.table_bytes },
        "table_mib": { "peak": mib(peak(|s| s.table_bytes)), "final": mib(at_empty.table_bytes) },
        "index_bytes": { "peak": peak(|s| s.index_bytes), "final": at_empty.index_bytes },
        "index_mib": { "peak": mib(peak(|s| s.index_bytes)), "final": mib(at_empty.index_bytes) },
        "total_mib": { "peak": mib(peak(|s| s.total_bytes)), "final": mib(at_empty.total_bytes) },
        "autovacuum_runs": at_empty.autovacuums - samples.first().map_or(0, |s| s.autovacuums),
        "autovacuum_at_s": autovacuum_at_s,
        "samples_with_vacuum_running": samples.iter().filter(|s| s.vacuum_phase.is_some()).count(),
        "vacuum_runs": at_empty.vacuums,
        "autoanalyze_runs": at_empty.autoanalyzes,
        "final_at_s": round(at_empty.at - t0, 1),
        "final_statistics_complete": emptied,
        "final": at_empty.summary(t0),
        "after_settle": settled.map(|(vacuumed, s)| {
            let mut v = s.summary(t0);
            v["autovacuum_seen"] = json!(vacuumed);
            v
        }),
        "commit_to_ack_ms": percentiles_ms(&to_ack),
        "relay": {
            "claims": phases.claims,
            "rows_per_claim": round(phases.rows_per_claim, 1),
            "ms_per_claim": round(phases.ms_per_claim, 3),
            "ms_per_claim_by_tenth": phases.ms_per_claim_by_tenth,
            "rows_per_complete": round(phases.rows_per_complete, 1),
            "ms_per_complete": round(phases.ms_per_complete, 3),
        },
        "timeline_columns": ["t_s", "live", "dead", "table_mib", "index_mib", "autovacuums"],
        "timeline": timeline,
        "cpu": cpu,
    });
    let naptime = server
        .get("autovacuum_naptime")
        .cloned()
        .unwrap_or(Value::Null);
    Ok(Outcome {
        parameters: json!({
            "storage": storage.name(),
            "reloptions": reloptions,
            "messages": n,
            "rate_per_s": rate,
            "producers": producers,
            "messages_per_transaction": BATCH,
            "keys": ctx.args.keys,
            "payload_bytes": ctx.args.payload,
            "batch_size": config.batch_size,
            "max_in_flight": config.max_in_flight,
            "key_order": key_order_name(config.key_order),
            "sample_interval_s": SAMPLE_EVERY.as_secs_f64(),
            "settle_s": settle.as_secs_f64(),
            "autovacuum_naptime": naptime,
            "server": server,
        }),
        figures,
        violations,
    })
}

/// Samples the table every [`SAMPLE_EVERY`] until stopped; publishes each sample and returns
/// them all, `first` included.
async fn sample_until(
    client: tokio_postgres::Client,
    table: String,
    first: Sample,
    latest: watch::Sender<Sample>,
    stop: CancellationToken,
) -> anyhow::Result<Vec<Sample>> {
    let mut samples = vec![first];
    let mut tick = tokio::time::interval(SAMPLE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        let sample = Sample::take(&client, &table).await?;
        latest.send_replace(sample.clone());
        samples.push(sample);
    }
    Ok(samples)
}

/// When a producer commits: its `i`-th transaction starts at `start + i * interval`.
#[derive(Clone, Copy, Debug)]
struct Schedule {
    start: Instant,
    interval: Duration,
}

/// One producer: commits `quota` messages, [`BATCH`] per transaction, on schedule (catching up
/// when behind, so that the total is exact); returns each message's id and commit time, and
/// how many transactions started more than 5 ms late.
async fn produce(
    mut client: tokio_postgres::Client,
    outbox: PgOutbox,
    mut generator: crate::workload::Generator,
    quota: u64,
    schedule: Schedule,
) -> anyhow::Result<(Vec<(Uuid, Instant)>, u64)> {
    let mut commits = Vec::with_capacity(usize::try_from(quota).unwrap_or(0));
    let mut batch: Vec<Message> = Vec::with_capacity(BATCH);
    let mut late = 0;
    let mut left = quota;
    let mut i = 0_u32;
    while left > 0 {
        let due = schedule.start + schedule.interval * i;
        tokio::time::sleep_until(due.into()).await;
        if due.elapsed() > Duration::from_millis(5) {
            late += 1;
        }
        let size = usize::try_from(left).unwrap_or(BATCH).min(BATCH);
        batch.clear();
        for _ in 0..size {
            batch.push(generator.message()?);
        }
        let tx = client.transaction().await?;
        outbox
            .enqueue_batch(&tx, &batch)
            .await
            .context("enqueue_batch")?;
        tx.commit().await?;
        let at = Instant::now();
        commits.extend(batch.iter().map(|m| (m.id(), at)));
        left -= size as u64;
        i += 1;
    }
    Ok((commits, late))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn storage_names_are_the_reported_ones() {
        assert_eq!(Storage::Default.name(), "default");
        assert_eq!(Storage::Tuned.name(), "tuned");
    }

    #[test]
    fn every_parameter_of_the_migration_is_reset() {
        let migration =
            include_str!("../../../../crates/outbox-postgres/migrations/0002_claim_index.sql");
        let mut set = 0;
        for line in migration.lines() {
            if let Some((name, _)) = line.trim().split_once(" = ")
                && name.starts_with("autovacuum_")
            {
                set += 1;
                assert!(
                    STORAGE_PARAMETERS.split(", ").any(|p| p == name),
                    "{name} is set by the migration but not reset by the default variant"
                );
            }
        }
        assert!(
            set > 0,
            "the migration sets no autovacuum parameter any more"
        );
    }
}
