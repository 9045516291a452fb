//! `drain`: one relay publishes a preloaded outbox to JetStream and empties it.

use outbox_core::RelayConfig;
use outbox_postgres::WakeUp;
use serde::Serialize;
use serde_json::json;

use super::{Ctx, Outcome, RunningRelay, check, drain_timeout, preload, raw};
use crate::cli::Shape;
use crate::env::Env;
use crate::instrument::Phases;
use crate::procfs::{CpuSnapshot, CpuUsage};
use crate::progress::Progress;
use crate::report::{median, round};
use crate::verify::Violations;

/// One drain, measured.
#[derive(Debug, Serialize)]
pub(crate) struct DrainRun {
    pub(crate) messages_per_s: f64,
    pub(crate) seconds: f64,
    pub(crate) phases: Phases,
    pub(crate) cpu: CpuUsage,
    #[serde(skip)]
    pub(crate) violations: Violations,
}

pub(crate) async fn run(ctx: &mut Ctx<'_>) -> anyhow::Result<Outcome> {
    let mut runs = Vec::new();
    for _ in 0..ctx.args.repeat {
        runs.push(run_once(ctx).await?);
    }
    Ok(outcome(ctx, &runs))
}

/// `drain` and `raw` with their runs alternating, so that both see the same machine (which may
/// be busy with other work): drain, raw, drain, raw, …
pub(crate) async fn run_with_raw(
    ctx: &mut Ctx<'_>,
) -> (anyhow::Result<Outcome>, anyhow::Result<Outcome>) {
    let mut drains = Vec::new();
    let mut raws = Vec::new();
    for _ in 0..ctx.args.repeat {
        match run_once(ctx).await {
            Ok(run) => drains.push(run),
            Err(error) => return (Err(error), Err(anyhow::anyhow!("not run: drain failed"))),
        }
        match raw::run_once(ctx).await {
            Ok(run) => raws.push(run),
            Err(error) => return (Ok(outcome(ctx, &drains)), Err(error)),
        }
    }
    let drain = outcome(ctx, &drains);
    let rates: Vec<f64> = drains.iter().map(|r| r.messages_per_s).collect();
    let raw = raw::outcome(ctx, raws, &rates);
    (Ok(drain), raw)
}

async fn run_once(ctx: &Ctx<'_>) -> anyhow::Result<DrainRun> {
    let config = ctx.relay_config()?;
    drain_once(
        ctx.env,
        ctx.shape(),
        ctx.args.drain_messages(),
        &config,
        "drain",
    )
    .await
}

/// The record of some drain runs; also leaves the median rate for `raw`'s ratio.
fn outcome(ctx: &mut Ctx<'_>, runs: &[DrainRun]) -> Outcome {
    let n = ctx.args.drain_messages();
    let config = ctx.relay_config().unwrap_or_default();
    let mut violations = Violations::default();
    for run in runs {
        violations.add(&run.violations);
    }
    let rates: Vec<f64> = runs.iter().map(|r| r.messages_per_s).collect();
    let rate = median(&rates);
    ctx.drain_rate = Some(rate);
    let median_run = runs.iter().min_by(|a, b| {
        (a.messages_per_s - rate)
            .abs()
            .total_cmp(&(b.messages_per_s - rate).abs())
    });
    Outcome {
        parameters: json!({
            "messages": n,
            "keys": ctx.args.keys,
            "payload_bytes": ctx.args.payload,
            "batch_size": config.batch_size,
            "max_in_flight": config.max_in_flight,
            "key_order": super::key_order_name(config.key_order),
            "poll_interval_ms": config.poll_interval.as_secs_f64() * 1e3,
            "repeat": ctx.args.repeat,
            "store": "PgStore + PgElector",
            "broker": "JetStreamPublisher (Nats-Msg-Id)",
        }),
        figures: json!({
            "messages_per_s": round(rate, 0),
            "runs_messages_per_s": rates.iter().map(|r| round(*r, 0)).collect::<Vec<_>>(),
            "median_run": median_run,
        }),
        violations,
    }
}

/// Preloads `n` messages into a fresh schema, drains them with one relay, checks the stream.
pub(crate) async fn drain_once(
    env: &Env,
    shape: Shape,
    n: u64,
    config: &RelayConfig,
    label: &str,
) -> anyhow::Result<DrainRun> {
    let fx = env.fixture(label, WakeUp::Poll).await?;
    let result = async {
        preload(&fx, env, shape, n).await?;
        let nats = env.nats().await?;
        let progress = Progress::bar(&format!("{label} (relay)"), n);
        let cpu_before = CpuSnapshot::take();
        let relay = RunningRelay::start(&env.pg, nats, &fx.outbox, config.clone(), false).await?;
        let waited = relay.wait_completed(n, drain_timeout(n), &progress).await;
        let cpu = cpu_before.until(&CpuSnapshot::take());
        let phases = relay.probe.phases(relay.started.elapsed());
        relay.stop().await?;
        progress.done();
        let elapsed = waited?;
        let violations = check(&fx, n).await?;
        Ok(DrainRun {
            messages_per_s: n as f64 / elapsed.as_secs_f64(),
            seconds: round(elapsed.as_secs_f64(), 3),
            phases,
            cpu,
            violations,
        })
    }
    .await;
    fx.cleanup().await;
    result
}
