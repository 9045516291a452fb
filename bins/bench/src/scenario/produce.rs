//! `produce`: concurrent producers commit single-order transactions as fast as they can — a
//! business row alone, then with the outbox enqueue, then with the insert and the enqueue as one
//! statement (`execute_and_enqueue`), then with the enqueue and a NOTIFY (`WakeUp::Listen`), then
//! with the enqueue while the relay drains concurrently.
//!
//! Each producer owns a disjoint set of keys, so its commit order is each key's order; after the
//! timed part the relay drains what was enqueued and the stream is checked.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use hdrhistogram::Histogram;
use outbox_postgres::WakeUp;
use serde_json::{Value, json};

use super::{Ctx, Outcome, RunningRelay, check, drain_timeout};
use crate::env::{Env, Fixture};
use crate::procfs::CpuSnapshot;
use crate::progress::Progress;
use crate::report::{histogram, median, percentiles_ms, round};
use crate::verify::Violations;
use crate::workload::Generator;

/// One way of producing.
#[derive(Clone, Copy, Debug)]
struct Mode {
    name: &'static str,
    /// `None`: the business row only.
    enqueue: Option<WakeUp>,
    /// The relay runs while producers commit.
    relaying: bool,
    /// The business insert and the enqueue as one statement (`execute_and_enqueue`).
    joined: bool,
}

const MODES: [Mode; 5] = [
    Mode {
        name: "plain",
        enqueue: None,
        relaying: false,
        joined: false,
    },
    Mode {
        name: "outbox",
        enqueue: Some(WakeUp::Poll),
        relaying: false,
        joined: false,
    },
    Mode {
        name: "outbox_one_statement",
        enqueue: Some(WakeUp::Poll),
        relaying: false,
        joined: true,
    },
    Mode {
        name: "outbox_notify",
        enqueue: Some(WakeUp::Listen),
        relaying: false,
        joined: false,
    },
    Mode {
        name: "outbox_relaying",
        enqueue: Some(WakeUp::Poll),
        relaying: true,
        joined: false,
    },
];

pub(crate) async fn run(ctx: &mut Ctx<'_>) -> anyhow::Result<Outcome> {
    let secs = ctx.args.produce_secs();
    let producers = ctx.args.producers.min(ctx.args.keys);
    let rounds = ctx.args.repeat;
    // Modes take turns, round after round: a drift of the machine's speed (other processes,
    // the page cache) then touches every mode alike, and each round gives one ratio of its own.
    // The two ways of enqueueing follow the plain run directly, so their ratios compare runs a
    // few seconds apart.
    let mut runs: Vec<Vec<(f64, Value)>> = vec![Vec::new(); MODES.len()];
    let mut violations = Violations::default();
    for _ in 0..rounds {
        for (m, mode) in MODES.into_iter().enumerate() {
            let fx = ctx
                .env
                .fixture(mode.name, mode.enqueue.unwrap_or(WakeUp::Poll))
                .await?;
            let result = once(ctx, &fx, mode, producers, secs).await;
            fx.cleanup().await;
            let (rate, figure, v) = result?;
            violations.add(&v);
            runs[m].push((rate, figure));
        }
    }
    let rates: Vec<Vec<f64>> = runs
        .iter()
        .map(|r| r.iter().map(|(rate, _)| *rate).collect())
        .collect();
    let mut figures = serde_json::Map::new();
    for (m, mode) in MODES.into_iter().enumerate() {
        // The run whose rate is the median stands for the mode (its CPU and latencies).
        let median_rate = median(&rates[m]);
        let representative = runs[m]
            .iter()
            .min_by(|a, b| {
                (a.0 - median_rate)
                    .abs()
                    .total_cmp(&(b.0 - median_rate).abs())
            })
            .map(|(_, figure)| figure.clone())
            .unwrap_or(Value::Null);
        figures.insert(
            mode.name.to_owned(),
            json!({
                "tx_per_s": round(median_rate, 0),
                "runs_tx_per_s": rates[m].iter().map(|r| round(*r, 0)).collect::<Vec<_>>(),
                "median_run": representative,
            }),
        );
    }
    let plain = median(&rates[0]);
    let ratio = |m: usize| round(median(&rates[m]) / plain, 3);
    let per_round = |m: usize| {
        rates[m]
            .iter()
            .zip(&rates[0])
            .map(|(rate, plain)| round(rate / plain, 3))
            .collect::<Vec<_>>()
    };
    // The median of the rounds' own ratios: each compares runs seconds apart.
    let round_median = |m: usize| round(median(&per_round(m)), 3);
    figures.insert("outbox_over_plain".into(), json!(ratio(1)));
    figures.insert("outbox_over_plain_per_round".into(), json!(per_round(1)));
    figures.insert(
        "outbox_over_plain_round_median".into(),
        json!(round_median(1)),
    );
    figures.insert("one_statement_over_plain".into(), json!(ratio(2)));
    figures.insert(
        "one_statement_over_plain_per_round".into(),
        json!(per_round(2)),
    );
    figures.insert(
        "one_statement_over_plain_round_median".into(),
        json!(round_median(2)),
    );
    figures.insert("notify_over_plain".into(), json!(ratio(3)));
    figures.insert("relaying_over_plain".into(), json!(ratio(4)));
    figures.insert("relaying_over_plain_per_round".into(), json!(per_round(4)));
    Ok(Outcome {
        parameters: json!({
            "producers": producers,
            "seconds_per_mode": secs,
            "rounds": rounds,
            "keys": ctx.args.keys,
            "payload_bytes": ctx.args.payload,
            "transaction": "BEGIN; INSERT order (prepared) [pipelined with the enqueue of one message, prepared once per producer connection (Enqueuer)]; COMMIT",
            "one_statement": "BEGIN; WITH business AS (INSERT order RETURNING id) INSERT message (Enqueuer::execute_and_enqueue, prepared once); COMMIT",
            "modes": {
                "plain": "business row only",
                "outbox": "+ enqueue, WakeUp::Poll (no NOTIFY)",
                "outbox_notify": "+ enqueue, WakeUp::Listen (pg_notify in every transaction)",
                "outbox_relaying": "+ enqueue, WakeUp::Poll, the relay draining concurrently",
                "outbox_one_statement": "the insert and the enqueue in one statement, WakeUp::Poll",
            },
        }),
        figures: Value::Object(figures),
        violations,
    })
}

async fn once(
    ctx: &Ctx<'_>,
    fx: &Fixture,
    mode: Mode,
    producers: u32,
    secs: f64,
) -> anyhow::Result<(f64, Value, Violations)> {
    let env: &Env = ctx.env;
    let relay = if mode.relaying {
        Some(
            RunningRelay::start(
                &env.pg,
                env.nats().await?,
                &fx.outbox,
                ctx.relay_config()?,
                false,
            )
            .await?,
        )
    } else {
        None
    };
    let mut clients = Vec::new();
    for _ in 0..producers {
        clients.push(env.pg_client().await?);
    }
    // Every mode starts on a fresh checkpoint: one falling inside a run (the previous modes
    // wrote and drained enough WAL to set one off) would slow that mode alone.
    env.settle().await;
    let progress = Progress::counter(&format!("produce {}", mode.name));
    let start = Instant::now() + Duration::from_millis(100);
    let end = start + Duration::from_secs_f64(secs);
    let cpu_before = CpuSnapshot::take();
    let tasks: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(p, client)| {
            let p = u32::try_from(p).unwrap_or(0);
            let generator =
                Generator::partition(&fx.subject, ctx.shape(), 7 + u64::from(p), p, producers);
            let how = match (mode.enqueue, mode.joined) {
                (None, _) => How::Plain,
                (Some(_), false) => How::Separate(fx.outbox.clone()),
                (Some(_), true) => How::Joined(fx.outbox.clone()),
            };
            tokio::spawn(produce(
                client,
                how,
                fx.schema.clone(),
                generator,
                start,
                end,
                progress.clone(),
            ))
        })
        .collect();
    let mut commits = 0_u64;
    let mut tx_times = histogram();
    // Kept open until the CPU snapshot: a backend that exits takes its CPU time with it.
    let mut clients = Vec::new();
    for task in tasks {
        let (count, times, client) = task.await??;
        commits += count;
        tx_times.add(&times)?;
        clients.push(client);
    }
    let cpu = cpu_before.until(&CpuSnapshot::take());
    drop(clients);
    progress.done();
    let rate = commits as f64 / secs;

    let mut violations = Violations::default();
    if mode.enqueue.is_some() {
        // Drain what was enqueued (or what is left of it) and check the stream.
        let relay = match relay {
            Some(relay) => relay,
            None => {
                RunningRelay::start(
                    &env.pg,
                    env.nats().await?,
                    &fx.outbox,
                    ctx.relay_config()?,
                    false,
                )
                .await?
            }
        };
        let progress = Progress::bar(&format!("draining {}", mode.name), commits);
        let drained = relay
            .wait_completed(commits, drain_timeout(commits), &progress)
            .await;
        relay.stop().await?;
        progress.done();
        drained?;
        violations = check(fx, commits).await?;
    }
    let figure = json!({
        "transactions": commits,
        "tx_per_s": round(rate, 0),
        "tx_ms": percentiles_ms(&tx_times),
        "cpu": cpu,
    });
    Ok((rate, figure, violations))
}

/// What a producer's transaction does besides its business insert.
enum How {
    Plain,
    /// A separate enqueue, pipelined with the insert.
    Separate(outbox_postgres::PgOutbox),
    /// The insert and the enqueue in one statement.
    Joined(outbox_postgres::PgOutbox),
}

/// One producer: commits transactions back to back from `start` until `end`.
async fn produce(
    mut client: tokio_postgres::Client,
    how: How,
    schema: String,
    mut generator: Generator,
    start: Instant,
    end: Instant,
    progress: Progress,
) -> anyhow::Result<(u64, Histogram<u64>, tokio_postgres::Client)> {
    let insert_sql = format!("INSERT INTO \"{schema}\".orders (customer, total) VALUES ($1, $2)");
    let insert = client.prepare(&insert_sql).await?;
    let joined_sql = format!("{insert_sql} RETURNING id");
    // Prepared once on this connection, as the business insert is: each enqueue then only
    // binds and executes.
    let enqueuer = match &how {
        How::Plain => None,
        How::Separate(outbox) | How::Joined(outbox) => {
            Some(outbox.prepare(&client).await.context("prepare enqueue")?)
        }
    };
    let joined = matches!(how, How::Joined(_));
    let mut times = histogram();
    let mut count = 0;
    tokio::time::sleep_until(start.into()).await;
    while Instant::now() < end {
        let began = Instant::now();
        let message = generator.message()?;
        let customer = message.key().unwrap_or_default().to_owned();
        let total = 1999_i64;
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 2] = [&customer, &total];
        let tx = client.transaction().await?;
        match &enqueuer {
            None => {
                tx.execute(&insert, &params).await?;
            }
            Some(enqueuer) if joined => {
                enqueuer
                    .execute_and_enqueue(&tx, &joined_sql, &params, &message)
                    .await
                    .context("insert and enqueue")?
                    .context("the insert returned no row")?;
            }
            // The enqueue goes out with the business statement, in the same round trip: how a
            // service should call it (tokio-postgres pipelines concurrent statements).
            Some(enqueuer) => {
                let (inserted, enqueued) = tokio::join!(
                    tx.execute(&insert, &params),
                    enqueuer.enqueue(&tx, &message)
                );
                inserted?;
                enqueued.context("enqueue")?;
            }
        }
        tx.commit().await?;
        let us = u64::try_from(began.elapsed().as_micros()).unwrap_or(u64::MAX);
        times.saturating_record(us.max(1));
        count += 1;
        if count % 64 == 0 {
            progress.inc(64);
        }
    }
    Ok((count, times, client))
}
