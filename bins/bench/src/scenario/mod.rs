//! The scenarios, and the relay they share.

pub(crate) mod drain;
pub(crate) mod hygiene;
pub(crate) mod latency;
pub(crate) mod memory;
pub(crate) mod produce;
pub(crate) mod raw;
pub(crate) mod sweep;

use std::sync::Arc;
use std::time::{Duration, Instant};

use outbox_core::{CancellationToken, Relay, RelayConfig};
use outbox_nats::{JetStreamConfig, JetStreamPublisher};
use outbox_postgres::{PgConnectOptions, PgOutbox, PgStore};
use serde_json::Value;
use tokio::task::JoinHandle;

use crate::cli::{KeyOrderArg, RunArgs, Shape};
use crate::env::{Env, Fixture};
use crate::instrument::{Probe, ProbedBroker, ProbedStore};
use crate::progress::Progress;
use crate::verify::{self, Violations};
use crate::workload::{self, Generator};

/// What a scenario hands back for its JSON line.
#[derive(Debug)]
pub(crate) struct Outcome {
    pub(crate) parameters: Value,
    pub(crate) figures: Value,
    pub(crate) violations: Violations,
}

/// What every scenario gets.
#[derive(Debug)]
pub(crate) struct Ctx<'a> {
    pub(crate) env: &'a Env,
    pub(crate) args: &'a RunArgs,
    /// The median drain rate, once `drain` ran, for `raw`'s ratio.
    pub(crate) drain_rate: Option<f64>,
}

impl Ctx<'_> {
    pub(crate) fn shape(&self) -> Shape {
        self.args.shape()
    }

    /// The relay configuration under test: the defaults, with the command line's overrides.
    pub(crate) fn relay_config(&self) -> anyhow::Result<RelayConfig> {
        relay_config(
            self.args.batch_size,
            self.args.max_in_flight,
            self.args.key_order,
        )
    }
}

pub(crate) fn relay_config(
    batch_size: Option<usize>,
    max_in_flight: Option<usize>,
    key_order: KeyOrderArg,
) -> anyhow::Result<RelayConfig> {
    let defaults = RelayConfig::default();
    Ok(RelayConfig::builder()
        .batch_size(batch_size.unwrap_or(defaults.batch_size))
        .max_in_flight(max_in_flight.unwrap_or(defaults.max_in_flight))
        .key_order(key_order.to_key_order())
        .build()?)
}

/// The production relay (PostgreSQL store with its advisory-lock elector, JetStream publisher),
/// with probes around the store and broker, running in a task.
#[derive(Debug)]
pub(crate) struct RunningRelay {
    pub(crate) probe: Arc<Probe>,
    pub(crate) started: Instant,
    shutdown: CancellationToken,
    task: JoinHandle<()>,
}

impl RunningRelay {
    pub(crate) async fn start(
        pg: &PgConnectOptions,
        nats: async_nats::Client,
        outbox: &PgOutbox,
        config: RelayConfig,
        record_acks: bool,
    ) -> anyhow::Result<Self> {
        let js_config = JetStreamConfig::builder()
            .max_ack_inflight(config.max_in_flight.max(5_000))
            .build()?;
        js_config.check_relay(&config)?;
        let publisher = JetStreamPublisher::with_config(nats, js_config)?;
        let store = PgStore::with_connect_options(outbox, pg);
        let elector = store.elector();
        let probe = Probe::new(record_acks);
        let relay = Relay::new(
            ProbedStore::new(store, probe.clone()),
            ProbedBroker::new(publisher, probe.clone()),
            elector,
            config,
        )?;
        let shutdown = CancellationToken::new();
        let started = Instant::now();
        let task = tokio::spawn(relay.run(shutdown.clone()));
        Ok(Self {
            probe,
            started,
            shutdown,
            task,
        })
    }

    /// Waits until `n` messages were completed, showing progress; returns the time since start.
    pub(crate) async fn wait_completed(
        &self,
        n: u64,
        timeout: Duration,
        progress: &Progress,
    ) -> anyhow::Result<Duration> {
        self.probe.set_target(n);
        let done = self.probe.wait_completed(n, timeout);
        tokio::pin!(done);
        loop {
            tokio::select! {
                result = &mut done => {
                    result?;
                    progress.set(self.probe.completed());
                    return Ok(self.started.elapsed());
                }
                () = tokio::time::sleep(Duration::from_millis(100)) => {
                    progress.set(self.probe.completed());
                }
            }
        }
    }

    /// Shuts the relay down and waits for it.
    pub(crate) async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        self.task.await?;
        Ok(())
    }
}

/// A generous bound on draining `n` messages.
pub(crate) fn drain_timeout(n: u64) -> Duration {
    Duration::from_secs(60 + n / 1_000)
}

/// Preloads `n` messages into the fixture's outbox.
pub(crate) async fn preload(fx: &Fixture, env: &Env, shape: Shape, n: u64) -> anyhow::Result<()> {
    let mut client = env.pg_client().await?;
    let mut generator = Generator::new(&fx.subject, shape, 42);
    let progress = Progress::bar("preloading", n);
    workload::preload(&mut client, &fx.outbox, &mut generator, n, &progress).await?;
    progress.done();
    // Fresh statistics, as a table that grew this fast would have after autovacuum.
    fx.admin
        .batch_execute(&format!("ANALYZE \"{}\".messages", fx.schema))
        .await?;
    // The preload's writes are flushed now, not during the drain that is measured.
    env.settle().await;
    Ok(())
}

/// Reads the stream back and checks it, and checks the outbox is empty.
pub(crate) async fn check(fx: &Fixture, expected: u64) -> anyhow::Result<Violations> {
    let mut violations = verify::read_stream(&fx.js, &fx.stream, expected).await?;
    violations.left_in_outbox = fx.outbox_len().await?;
    Ok(violations)
}

/// The command-line name of a key order.
pub(crate) fn key_order_name(order: outbox_core::KeyOrder) -> &'static str {
    match order {
        outbox_core::KeyOrder::Pipelined => "pipelined",
        _ => "strict",
    }
}
