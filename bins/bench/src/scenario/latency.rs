//! `latency`: producers commit at a steady rate while the relay runs; per message, the time from
//! its commit to the relay seeing JetStream's acknowledgement, and to a consumer receiving it.
//!
//! Everything runs in this process, so one clock serves all: producers note when their commit
//! returned, a probe around the publisher notes when each acknowledgement reached the relay, and
//! a JetStream consumer on the stream notes each arrival (and checks order and duplicates).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_nats::jetstream::consumer;
use futures::StreamExt;
use outbox_core::CancellationToken;
use outbox_postgres::WakeUp;
use serde_json::{Value, json};
use tokio::sync::watch;
use uuid::Uuid;

use super::{Ctx, Outcome, RunningRelay};
use crate::cli::{Shape, WakeUpArg};
use crate::env::{Env, Fixture};
use crate::procfs::CpuSnapshot;
use crate::progress::Progress;
use crate::report::{histogram, percentiles_ms, round};
use crate::verify::{Checker, Seen, Violations};
use crate::workload::Generator;

/// Producers (connections) that share the rate, whatever it is. With pipelined, prepared
/// transactions 16 keep up with 5,000/s here and 8 do not (4,730-4,800/s: each waits for its
/// commit's flush); more only add backends competing for the same cores (measured at 5,000/s:
/// p99 commit-to-ack 15 ms with 16 producers, 24 ms with 32, 28 ms with 50).
const PRODUCERS: u32 = 16;
/// How long the relay and the consumer may take to catch up once producers stop.
const CATCH_UP: Duration = Duration::from_secs(30);

pub(crate) async fn run(ctx: &mut Ctx<'_>) -> anyhow::Result<Outcome> {
    let modes: &[WakeUp] = match ctx.args.wake_up {
        WakeUpArg::Poll => &[WakeUp::Poll],
        WakeUpArg::Listen => &[WakeUp::Listen],
        WakeUpArg::Both => &[WakeUp::Poll, WakeUp::Listen],
    };
    let secs = ctx.args.latency_secs();
    let config = ctx.relay_config()?;
    let mut figures = serde_json::Map::new();
    let mut violations = Violations::default();
    for &mode in modes {
        for &rate in &ctx.args.rates {
            let label = format!("{}@{rate}/s", mode_name(mode));
            let producers = producers(ctx.args.keys);
            // Each rate starts without the previous one's writes still being flushed.
            ctx.env.settle().await;
            let fx = ctx
                .env
                .fixture(&format!("latency_{}_{rate}", mode_name(mode)), mode)
                .await?;
            let result = once(
                ctx.env,
                &fx,
                ctx.shape(),
                rate,
                secs,
                producers,
                &config,
                &label,
            )
            .await;
            fx.cleanup().await;
            let (figure, v) = result?;
            violations.add(&v);
            figures.insert(label, figure);
        }
    }
    Ok(Outcome {
        parameters: json!({
            "rates_per_s": ctx.args.rates,
            "seconds_per_rate": secs,
            "producers": PRODUCERS.min(ctx.args.keys),
            "keys": ctx.args.keys,
            "payload_bytes": ctx.args.payload,
            "wake_up": modes.iter().map(|m| mode_name(*m)).collect::<Vec<_>>(),
            "batch_size": config.batch_size,
            "max_in_flight": config.max_in_flight,
            "key_order": super::key_order_name(config.key_order),
            "poll_interval_ms": config.poll_interval.as_secs_f64() * 1e3,
            "transaction": "BEGIN; INSERT order (prepared) [pipelined with the enqueue of one message, prepared once per producer connection (Enqueuer)]; COMMIT",
            "consumer": "JetStream push consumer, no acks",
        }),
        figures: Value::Object(figures),
        violations,
    })
}

/// How many producers share a rate: [`PRODUCERS`], but never more than there are keys (each
/// producer owns its own).
fn producers(keys: u32) -> u32 {
    PRODUCERS.min(keys)
}

pub(crate) fn mode_name(mode: WakeUp) -> &'static str {
    match mode {
        WakeUp::Listen => "listen",
        _ => "poll",
    }
}

#[allow(clippy::too_many_arguments)]
async fn once(
    env: &Env,
    fx: &Fixture,
    shape: Shape,
    rate: u32,
    secs: f64,
    producers: u32,
    config: &outbox_core::RelayConfig,
    label: &str,
) -> anyhow::Result<(Value, Violations)> {
    let stop_consumer = CancellationToken::new();
    let (received_tx, received_rx) = watch::channel(0_u64);
    let consumer = tokio::spawn(consume(
        fx.js.clone(),
        fx.stream.clone(),
        stop_consumer.clone(),
        received_tx,
    ));

    let relay =
        RunningRelay::start(&env.pg, env.nats().await?, &fx.outbox, config.clone(), true).await?;
    // Producers connect before the clock starts.
    let mut clients = Vec::new();
    for _ in 0..producers {
        clients.push(env.pg_client().await?);
    }
    let duration = Duration::from_secs_f64(secs);
    let expected_total = (f64::from(rate) * secs) as u64;
    let progress = Progress::bar(&format!("latency {label}"), expected_total);
    let start = Instant::now() + Duration::from_millis(100);
    let cpu_before = CpuSnapshot::take();
    let tasks: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(p, client)| {
            let p = u32::try_from(p).unwrap_or(0);
            let generator =
                Generator::partition(&fx.subject, shape, 1000 + u64::from(p), p, producers);
            tokio::spawn(produce(
                client,
                fx.outbox.clone(),
                fx.schema.clone(),
                generator,
                Schedule {
                    start,
                    interval: Duration::from_secs_f64(f64::from(producers) / f64::from(rate)),
                    offset: Duration::from_secs_f64(f64::from(p) / f64::from(rate)),
                    end: start + duration,
                },
                progress.clone(),
            ))
        })
        .collect();
    let mut commits = Vec::new();
    let mut late = 0_u64;
    // Kept open until the CPU snapshot: a backend that exits takes its CPU time with it.
    let mut clients = Vec::new();
    for task in tasks {
        let (c, l, client) = task.await??;
        clients.push(client);
        commits.extend(c);
        late += l;
    }
    let produced_in = start.elapsed();
    let total = commits.len() as u64;
    progress.done();

    let caught_up = relay
        .wait_completed(total, CATCH_UP, &Progress::bar("relay catching up", total))
        .await;
    let mut received_rx = received_rx;
    let received = tokio::time::timeout(CATCH_UP, received_rx.wait_for(|r| *r >= total)).await;
    let cpu = cpu_before.until(&CpuSnapshot::take());
    drop(clients);
    let acks = relay.probe.take_acks();
    let phases = relay.probe.phases(relay.started.elapsed());
    relay.stop().await?;
    stop_consumer.cancel();
    let (checker, arrivals) = consumer.await??;
    caught_up?;
    if received.is_err() {
        anyhow::bail!(
            "the consumer received {} of {total} messages",
            checker.distinct()
        );
    }

    let committed: HashMap<Uuid, Instant> = commits.into_iter().collect();
    let latencies = |events: &[(Uuid, Instant)]| {
        let mut h = histogram();
        for (id, at) in events {
            if let Some(commit) = committed.get(id) {
                let us = at.saturating_duration_since(*commit).as_micros();
                h.saturating_record(u64::try_from(us).unwrap_or(u64::MAX).max(1));
            }
        }
        h
    };
    let to_ack = latencies(&acks);
    let to_receive = latencies(&arrivals);
    let mut violations = checker.finish(total);
    violations.left_in_outbox = fx.outbox_len().await?;
    let stored = fx.stream_len().await?;
    if stored != total {
        violations.missing = violations.missing.max(total.saturating_sub(stored));
    }
    let figure = json!({
        "producers": producers,
        "committed": total,
        "achieved_rate_per_s": round(total as f64 / produced_in.as_secs_f64(), 0),
        "late_commits_over_5ms": late,
        "commit_to_ack_ms": percentiles_ms(&to_ack),
        "commit_to_receive_ms": percentiles_ms(&to_receive),
        "relay": {
            "claims": phases.claims,
            "empty_claims": phases.empty_claims,
            "rows_per_claim": round(phases.rows_per_claim, 1),
            "ms_per_claim": round(phases.ms_per_claim, 3),
            "rows_per_complete": round(phases.rows_per_complete, 1),
        },
        "cpu": cpu,
    });
    Ok((figure, violations))
}

/// When producer `p` commits: its `i`-th transaction starts at `start + offset + i * interval`.
#[derive(Clone, Copy, Debug)]
struct Schedule {
    start: Instant,
    interval: Duration,
    offset: Duration,
    end: Instant,
}

/// One producer: commits on schedule until the end; returns (message id, commit time) pairs and
/// how many transactions started more than 5 ms late.
async fn produce(
    mut client: tokio_postgres::Client,
    outbox: outbox_postgres::PgOutbox,
    schema: String,
    mut generator: Generator,
    schedule: Schedule,
    progress: Progress,
) -> anyhow::Result<(Vec<(Uuid, Instant)>, u64, tokio_postgres::Client)> {
    let insert = client
        .prepare(&format!(
            "INSERT INTO \"{schema}\".orders (customer, total) VALUES ($1, $2)"
        ))
        .await?;
    // Prepared once on this connection, as the business insert is: each enqueue then only
    // binds and executes.
    let enqueuer = outbox.prepare(&client).await.context("prepare enqueue")?;
    let mut commits = Vec::new();
    let mut late = 0;
    let mut i = 0_u32;
    loop {
        let due = schedule.start + schedule.offset + schedule.interval * i;
        // Open loop with a deadline: a producer that fell behind stops on time, and the
        // achieved rate says so.
        if due >= schedule.end || Instant::now() >= schedule.end {
            break;
        }
        tokio::time::sleep_until(due.into()).await;
        if due.elapsed() > Duration::from_millis(5) {
            late += 1;
        }
        let message = generator.message()?;
        let customer = message.key().unwrap_or_default().to_owned();
        let tx = client.transaction().await?;
        // The enqueue goes out with the business statement, in the same round trip, as in the
        // produce scenario.
        let total = 1999_i64;
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 2] = [&customer, &total];
        let (inserted, enqueued) = tokio::join!(
            tx.execute(&insert, &params),
            enqueuer.enqueue(&tx, &message)
        );
        inserted?;
        enqueued.context("enqueue")?;
        tx.commit().await?;
        commits.push((message.id(), Instant::now()));
        progress.inc(1);
        i += 1;
    }
    Ok((commits, late, client))
}

/// Reads the stream as it fills until stopped; notes each arrival and checks it.
///
/// A push consumer: JetStream sends each message as it is stored. A pull consumer costs the
/// server more per message (pull requests, waiting-request bookkeeping), and on this machine the
/// server's extra garbage collection showed in the relay's acknowledgements: with the pull
/// consumer, nats-server's collections ran about once a second and each one held back
/// acknowledgements for 15-40 ms (matched against its `GODEBUG=gctrace=1` log). In runs of the
/// scenario alone, p99 commit-to-ack at 5,000/s was 10.6-24.8 ms with the pull consumer (median
/// 16.6, eleven runs), 12.4-15.8 ms with this one (median 13.6, six runs), 10.3-10.8 ms with no
/// consumer; nats-server used 2.9-3.8 s of CPU in the 20 s with the pull consumer, 2.8-3.0 s
/// with this one, 2.3 s with none.
async fn consume(
    js: async_nats::jetstream::Context,
    stream: String,
    stop: CancellationToken,
    received: watch::Sender<u64>,
) -> anyhow::Result<(Checker, Vec<(Uuid, Instant)>)> {
    let consumer: consumer::PushConsumer = js
        .get_stream(&stream)
        .await?
        .create_consumer(consumer::push::Config {
            deliver_subject: js.client().new_inbox(),
            deliver_policy: consumer::DeliverPolicy::All,
            ack_policy: consumer::AckPolicy::None,
            inactive_threshold: Duration::from_secs(30),
            ..Default::default()
        })
        .await?;
    let mut messages = consumer.messages().await?;
    let mut checker = Checker::default();
    let mut arrivals = Vec::new();
    loop {
        let message = tokio::select! {
            () = stop.cancelled() => break,
            message = messages.next() => message,
        };
        let at = Instant::now();
        let message = match message {
            Some(Ok(message)) => message,
            Some(Err(error)) => return Err(error).context("latency consumer"),
            None => break,
        };
        if let Seen::New(id) = checker.observe(message.headers.as_ref(), &message.payload) {
            if let Ok(id) = id.parse::<Uuid>() {
                arrivals.push((id, at));
            }
            received.send_modify(|r| *r += 1);
        }
    }
    Ok((checker, arrivals))
}
