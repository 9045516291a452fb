//! `raw`: the same drain as `drain`, by the simplest correct loop written directly on
//! tokio-postgres and async-nats, as the near-limit reference.
//!
//! The loop reads batches in `seq` order past a cursor, publishes each message with
//! `Nats-Msg-Id` and keeps up to a window of acknowledgements in flight, and deletes what was
//! acknowledged, a batch per statement. What it gives up against the relay: no per-key order
//! under failure (it simply stops at the first failed publish: nothing unacknowledged is
//! deleted, but a real service would need retries, and a retried message would land after later
//! messages of its key); a `seq > cursor` scan that skips rows of transactions committing late
//! (fine for a preloaded table only); no leader election, no retries or dead letters, no
//! shutdown handling.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_nats::HeaderMap;
use async_nats::jetstream::context::ContextBuilder;
use bytes::Bytes;
use futures::stream::FuturesOrdered;
use futures::{FutureExt, StreamExt};
use outbox_nats::{KEY_HEADER, MSG_ID_HEADER};
use outbox_postgres::WakeUp;
use serde_json::json;
use uuid::Uuid;

use super::{Ctx, Outcome, check, preload};
use crate::env::{Env, Fixture};
use crate::procfs::CpuSnapshot;
use crate::progress::Progress;
use crate::report::{median, round};
use crate::verify::Violations;

/// One raw drain, measured.
#[derive(Debug)]
pub(crate) struct RawRun {
    pub(crate) messages_per_s: f64,
    pub(crate) figures: serde_json::Value,
    pub(crate) violations: Violations,
}

pub(crate) async fn run(ctx: &mut Ctx<'_>) -> anyhow::Result<Outcome> {
    let mut runs = Vec::new();
    for _ in 0..ctx.args.repeat {
        runs.push(run_once(ctx).await?);
    }
    outcome(ctx, runs, &[])
}

/// Preloads a fresh schema and drains it with the raw loop.
pub(crate) async fn run_once(ctx: &Ctx<'_>) -> anyhow::Result<RawRun> {
    let n = ctx.args.drain_messages();
    let config = ctx.relay_config()?;
    let fx = ctx.env.fixture("raw", WakeUp::Poll).await?;
    let result = raw_once(
        ctx.env,
        &fx,
        ctx,
        n,
        config.batch_size,
        config.max_in_flight,
    )
    .await;
    fx.cleanup().await;
    let (messages_per_s, figures, violations) = result?;
    Ok(RawRun {
        messages_per_s,
        figures,
        violations,
    })
}

/// The record of some raw runs; `drain_rates` are the relay's runs interleaved with them, if
/// any, for the pairwise ratios.
pub(crate) fn outcome(
    ctx: &Ctx<'_>,
    runs: Vec<RawRun>,
    drain_rates: &[f64],
) -> anyhow::Result<Outcome> {
    let n = ctx.args.drain_messages();
    let config = ctx.relay_config()?;
    let mut violations = Violations::default();
    for run in &runs {
        violations.add(&run.violations);
    }
    let rates: Vec<f64> = runs.iter().map(|r| r.messages_per_s).collect();
    let rate = median(&rates);
    let ratio = ctx.drain_rate.map(|drain| round(drain / rate, 3));
    let pairwise: Vec<f64> = drain_rates
        .iter()
        .zip(&rates)
        .map(|(drain, raw)| round(drain / raw, 3))
        .collect();
    Ok(Outcome {
        parameters: json!({
            "messages": n,
            "keys": ctx.args.keys,
            "payload_bytes": ctx.args.payload,
            "batch_size": config.batch_size,
            "ack_window": config.max_in_flight,
            "repeat": ctx.args.repeat,
            "interleaved_with_drain": !drain_rates.is_empty(),
            "loop": "SELECT seq > cursor LIMIT batch; publish with Nats-Msg-Id, ack window; DELETE = ANY(acked batch)",
        }),
        figures: json!({
            "messages_per_s": round(rate, 0),
            "runs_messages_per_s": rates.iter().map(|r| round(*r, 0)).collect::<Vec<_>>(),
            "drain_over_raw": ratio,
            "drain_over_raw_per_pair": pairwise,
            // Each pair ran back to back, so a drift of the machine's speed between pairs
            // cancels out in its ratio; the ratio of the medians does not cancel it.
            "drain_over_raw_pair_median": (!pairwise.is_empty()).then(|| median(&pairwise)),
            "runs": runs.into_iter().map(|r| r.figures).collect::<Vec<_>>(),
        }),
        violations,
    })
}

async fn raw_once(
    env: &Env,
    fx: &Fixture,
    ctx: &Ctx<'_>,
    n: u64,
    batch: usize,
    window: usize,
) -> anyhow::Result<(f64, serde_json::Value, Violations)> {
    preload(fx, env, ctx.shape(), n).await?;
    let client = env.pg_client().await?;
    let js = ContextBuilder::new()
        .timeout(Duration::from_secs(10))
        .max_ack_inflight(window.max(5_000))
        .build(env.nats().await?);
    let select = client
        .prepare(&format!(
            "SELECT seq, id, subject, key, payload FROM \"{}\".messages
             WHERE seq > $1 ORDER BY seq LIMIT $2",
            fx.schema
        ))
        .await?;
    let delete = client
        .prepare(&format!(
            "DELETE FROM \"{}\".messages WHERE seq = ANY($1::bigint[])",
            fx.schema
        ))
        .await?;
    let limit = i64::try_from(batch)?;
    let progress = Progress::bar("raw loop", n);
    let cpu_before = CpuSnapshot::take();
    let start = Instant::now();
    let (mut claim_s, mut delete_s, mut publish_s) = (0.0, 0.0, 0.0);
    let mut cursor = 0_i64;
    let mut exhausted = false;
    let mut in_flight = FuturesOrdered::new();
    let mut acked: Vec<i64> = Vec::with_capacity(batch);
    let mut deleted = 0_u64;
    loop {
        if !exhausted && in_flight.len() + batch <= window {
            let t = Instant::now();
            let rows = client.query(&select, &[&cursor, &limit]).await?;
            claim_s += t.elapsed().as_secs_f64();
            exhausted = rows.len() < batch;
            let t = Instant::now();
            for row in rows {
                let seq: i64 = row.try_get("seq")?;
                let id: Uuid = row.try_get("id")?;
                let subject: String = row.try_get("subject")?;
                let key: Option<String> = row.try_get("key")?;
                let payload: Vec<u8> = row.try_get("payload")?;
                let mut headers = HeaderMap::new();
                headers.insert(MSG_ID_HEADER, id.to_string().as_str());
                if let Some(key) = &key {
                    headers.insert(KEY_HEADER, key.as_str());
                }
                let ack = js
                    .publish_with_headers(subject, headers, Bytes::from(payload))
                    .await
                    .context("raw publish")?;
                in_flight.push_back(ack.into_future().map(move |r| (seq, r)));
                cursor = seq;
            }
            publish_s += t.elapsed().as_secs_f64();
            continue;
        }
        match in_flight.next().await {
            Some((seq, result)) => {
                result.context("raw acknowledgement")?;
                acked.push(seq);
            }
            None if exhausted => break,
            None => continue,
        }
        while let Some(Some((seq, result))) = in_flight.next().now_or_never() {
            result.context("raw acknowledgement")?;
            acked.push(seq);
        }
        if acked.len() >= batch || (exhausted && in_flight.is_empty()) {
            let t = Instant::now();
            client.execute(&delete, &[&acked]).await?;
            delete_s += t.elapsed().as_secs_f64();
            deleted += acked.len() as u64;
            acked.clear();
            progress.set(deleted);
        }
    }
    let elapsed = start.elapsed();
    let cpu = cpu_before.until(&CpuSnapshot::take());
    progress.done();
    let violations = check(fx, n).await?;
    let rate = n as f64 / elapsed.as_secs_f64();
    let run = json!({
        "messages_per_s": round(rate, 0),
        "seconds": round(elapsed.as_secs_f64(), 3),
        "claim_s": round(claim_s, 3),
        "publish_s": round(publish_s, 3),
        "delete_s": round(delete_s, 3),
        "cpu": cpu,
    });
    Ok((rate, run, violations))
}
