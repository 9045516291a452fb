//! Run with:
//!
//! ```text
//! make bench                                    # every scenario, defaults; target/bench/results.jsonl
//! make bench ARGS=--quick                       # a small version of each, under a minute
//! cargo run --release -p outbox-bench -- --scenario drain --scenario raw -n 100000
//! cargo run --release -p outbox-bench -- --scenario sweep --quick --repeat 3
//! cargo run --release -p outbox-bench -- --scenario latency --rates 1000,5000 --wake-up poll
//! ```
//!
//! Benchmarks the outbox against the real PostgreSQL and NATS JetStream at `DATABASE_URL` and
//! `NATS_URL` (or `--database-url`, `--nats-url`), each scenario in a fresh schema and stream,
//! dropped afterwards. The URL is used as given (`make bench` adds `sslmode=disable` when it names
//! no sslmode: on one host TLS only encrypts a local socket); each line records the connection.
//!
//! | scenario | what it measures |
//! |---|---|
//! | `drain` | N preloaded messages (default 200,000, 1,000 keys, 256-byte payloads) published to JetStream and deleted by one relay (`PgStore` + `PgElector` + `JetStreamPublisher`): messages/s, and where the relay's time went |
//! | `raw` | the same drain by the simplest correct loop on tokio-postgres and async-nats: messages/s and `drain / raw` |
//! | `latency` | producers commit at 1,000/s and 5,000/s for 20 s while the relay runs (poll and listen wake-ups): commit → ack and commit → consumer, p50/p99/p99.9/max |
//! | `produce` | 16 producers committing single-order transactions: tx/s without the outbox, with it, with NOTIFY, and with the relay running; then on a server with `wal_level = logical` (`DATABASE_URL`'s, else a temporary cluster; skipped without server binaries) without the outbox, with it, and with the WAL enqueue (`EnqueueMode::WalMessage`) alone, in one statement with the insert, and with the relay running |
//! | `memory` | peak RSS of a relay process (a child of the bench) draining 1,000,000 messages |
//! | `sweep` | `drain` over batch sizes × ack windows (only when asked for) |
//! | `hygiene` | 1,000,000 messages through the relay at a steady 5,000/s, with the server's autovacuum settings and with the migration's: dead tuples, table and index size, autovacuum runs, one line per variant (only when asked for) |
//!
//! Every scenario reads the stream back (or consumes it live) and counts duplicates, per-key order
//! violations and missing messages; any violation, or any failed scenario, makes the exit code 1.
//!
//! Output: one JSON line per scenario on stdout (name, parameters, figures, violations, versions
//! of the crate, rustc, PostgreSQL and NATS, and the machine's CPU use during the scenario, which
//! tells how noisy it was), also appended to `--out` (default `target/bench/results.jsonl`).
//! Progress bars go to stderr, only when it is a terminal. Logs: `RUST_LOG` (default `warn`).

mod cli;
mod env;
mod instrument;
mod procfs;
mod progress;
mod report;
mod scenario;
mod verify;
mod wal_server;
mod workload;

use std::process::ExitCode;

use clap::Parser as _;
use serde_json::json;

use crate::cli::{Cli, Command, RunArgs, Scenario};
use crate::env::Env;
use crate::report::{Record, Reporter, now_unix};
use crate::scenario::{Ctx, Outcome};
use crate::verify::Violations;

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("outbox-bench: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match cli.command {
        Some(Command::RelayChild(args)) => match runtime.block_on(scenario::memory::child(args)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("outbox-bench relay-child: {error:#}");
                ExitCode::FAILURE
            }
        },
        None => match runtime.block_on(run(&cli.run)) {
            Ok(true) => ExitCode::SUCCESS,
            Ok(false) => ExitCode::FAILURE,
            Err(error) => {
                eprintln!("outbox-bench: {error:#}");
                ExitCode::FAILURE
            }
        },
    }
}

/// Runs the selected scenarios; `Ok(false)` when one failed or found a violation.
async fn run(args: &RunArgs) -> anyhow::Result<bool> {
    let env = Env::connect(&args.servers).await?;
    let reporter = Reporter::new(args.out.clone())?;
    let mut ctx = Ctx {
        env: &env,
        args,
        drain_rate: None,
    };
    let mut all_ok = true;
    let selected = args.selected();
    let paired = selected.contains(&Scenario::Drain) && selected.contains(&Scenario::Raw);
    for scenario in selected {
        let settled = env.settle().await;
        let started_at = now_unix();
        let machine = machine(settled);
        let outcomes = match scenario {
            Scenario::Raw if paired => continue,
            Scenario::Drain if paired => {
                let (drain, raw) = scenario::drain::run_with_raw(&mut ctx).await;
                vec![(Scenario::Drain, drain), (Scenario::Raw, raw)]
            }
            _ => run_one(scenario, &mut ctx).await,
        };
        for (scenario, outcome) in outcomes {
            let record = record(
                scenario,
                outcome,
                args.quick,
                started_at,
                &env,
                machine.clone(),
            );
            if !record.ok {
                all_ok = false;
                eprintln!(
                    "outbox-bench: scenario {} FAILED: {}",
                    scenario.name(),
                    record
                        .error
                        .clone()
                        .unwrap_or_else(|| format!("violations {:?}", record.violations))
                );
            }
            reporter.emit(&record)?;
        }
    }
    Ok(all_ok)
}

/// The machine before a scenario: CPU count, load, and how it was settled first.
fn machine(settled: String) -> serde_json::Value {
    json!({
        "settled_before": settled,
        "cpus": std::thread::available_parallelism().map(usize::from).unwrap_or(1),
        "loadavg_before": std::fs::read_to_string("/proc/loadavg")
            .ok()
            .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" ")),
    })
}

fn record(
    scenario: Scenario,
    outcome: anyhow::Result<Outcome>,
    quick: bool,
    started_at: u64,
    env: &Env,
    machine: serde_json::Value,
) -> Record {
    match outcome {
        Ok(Outcome {
            parameters,
            figures,
            violations,
        }) => Record {
            name: scenario.name(),
            quick,
            started_at,
            parameters,
            figures,
            ok: violations.total() == 0,
            violations,
            error: None,
            versions: env.versions.clone(),
            machine,
        },
        Err(error) => Record {
            name: scenario.name(),
            quick,
            started_at,
            parameters: json!(null),
            figures: json!(null),
            violations: Violations::default(),
            ok: false,
            error: Some(format!("{error:#}")),
            versions: env.versions.clone(),
            machine,
        },
    }
}

/// Runs one scenario: one outcome, or one per variant for `hygiene`.
async fn run_one(
    scenario: Scenario,
    ctx: &mut Ctx<'_>,
) -> Vec<(Scenario, anyhow::Result<Outcome>)> {
    let outcome = match scenario {
        Scenario::Drain => scenario::drain::run(ctx).await,
        Scenario::Raw => scenario::raw::run(ctx).await,
        Scenario::Latency => scenario::latency::run(ctx).await,
        Scenario::Produce => scenario::produce::run(ctx).await,
        Scenario::Memory => scenario::memory::run(ctx).await,
        Scenario::Sweep => scenario::sweep::run(ctx).await,
        Scenario::Hygiene => {
            return scenario::hygiene::run(ctx)
                .await
                .into_iter()
                .map(|outcome| (Scenario::Hygiene, outcome))
                .collect();
        }
    };
    vec![(scenario, outcome)]
}
