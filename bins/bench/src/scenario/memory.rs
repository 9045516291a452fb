//! `memory`: the peak resident memory of a relay draining a large outbox.
//!
//! The relay runs in a child process (this binary's hidden `relay-child` subcommand), so the
//! figure is the relay's alone: not the preloading, the stream check or the parent's buffers.
//! The child reports its progress and `VmRSS`/`VmHWM` as JSON lines on stdout; the parent also
//! reads the child's `/proc/<pid>/status` while it runs, as a cross-check.

use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use outbox_core::RelayConfig;
use outbox_postgres::{PgConfig, PgOutbox, WakeUp};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

use super::{
    Ctx, Outcome, RunningRelay, check, drain_timeout, key_order_name, preload, relay_config,
};
use crate::cli::ChildArgs;
use crate::procfs::{self, CpuSnapshot};
use crate::progress::Progress;
use crate::report::round;

/// What the child reports, every [`REPORT_EVERY`] and once at the end.
#[derive(Debug, Serialize, Deserialize)]
struct ChildReport {
    completed: u64,
    rss_kib: u64,
    hwm_kib: u64,
    elapsed_s: f64,
    /// CPU-seconds the child used so far.
    cpu_s: f64,
    done: bool,
}

const REPORT_EVERY: Duration = Duration::from_millis(250);

fn mib(kib: u64) -> f64 {
    round(kib as f64 / 1024.0, 1)
}

pub(crate) async fn run(ctx: &mut Ctx<'_>) -> anyhow::Result<Outcome> {
    let n = ctx.args.memory_messages();
    let config = ctx.relay_config()?;
    let fx = ctx.env.fixture("memory", WakeUp::Poll).await?;
    let result = async {
        preload(&fx, ctx.env, ctx.shape(), n).await?;
        let exe = std::env::current_exe().context("finding the bench binary")?;
        let mut command = Command::new(exe);
        command
            .arg("relay-child")
            // In the environment, not the arguments: a URL may hold a password, and arguments
            // are visible to every user of the machine.
            .env("DATABASE_URL", &ctx.env.servers.database_url)
            .env("NATS_URL", &ctx.env.servers.nats_url)
            .args(["--schema", &fx.schema])
            .args(["--messages", &n.to_string()])
            .args(["--batch-size", &config.batch_size.to_string()])
            .args(["--max-in-flight", &config.max_in_flight.to_string()])
            .args(["--key-order", key_order_name(config.key_order)])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        let cpu_before = CpuSnapshot::take();
        let mut child = command.spawn().context("starting the relay child")?;
        let pid = child.id().map(|p| p.to_string()).unwrap_or_default();
        let stdout = child.stdout.take().context("the child's stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let progress = Progress::bar("memory (relay child)", n);
        // RSS at each tenth of the drain: flat when nothing grows with N.
        let mut by_tenth: Vec<Option<u64>> = vec![None; 11];
        let mut parent_hwm = 0_u64;
        let mut last: Option<ChildReport> = None;
        let deadline = Instant::now() + drain_timeout(n);
        let mut sample = tokio::time::interval(Duration::from_millis(50));
        loop {
            tokio::select! {
                line = lines.next_line() => match line? {
                    Some(line) => {
                        let report: ChildReport = serde_json::from_str(&line)
                            .with_context(|| format!("the child said {line:?}"))?;
                        progress.set(report.completed);
                        let tenth = usize::try_from(report.completed * 10 / n.max(1)).unwrap_or(10).min(10);
                        by_tenth[tenth].get_or_insert(report.rss_kib);
                        let done = report.done;
                        last = Some(report);
                        if done {
                            break;
                        }
                    }
                    None => break,
                },
                _ = sample.tick() => {
                    if let Some((_, hwm)) = procfs::rss_kib(&pid) {
                        parent_hwm = parent_hwm.max(hwm);
                    }
                    if Instant::now() > deadline {
                        bail!("the relay child did not finish within {:?}", drain_timeout(n));
                    }
                }
            }
        }
        let status = child.wait().await?;
        let cpu = cpu_before.until(&CpuSnapshot::take());
        progress.done();
        if !status.success() {
            bail!("the relay child failed: {status}");
        }
        let Some(last) = last.filter(|r| r.done) else {
            bail!("the relay child ended without its final report");
        };
        let violations = check(&fx, n).await?;
        let peak = last.hwm_kib.max(parent_hwm);
        let figures = json!({
            "peak_rss_mib": mib(peak),
            "peak_rss_mib_seen_by_parent": mib(parent_hwm),
            "rss_mib_by_tenth_drained": by_tenth.iter().map(|s| s.map(mib)).collect::<Vec<_>>(),
            "messages_per_s": round(n as f64 / last.elapsed_s, 0),
            "seconds": round(last.elapsed_s, 3),
            "relay_cpu_s": round(last.cpu_s, 2),
            "cpu": cpu,
        });
        Ok(Outcome {
            parameters: json!({
                "messages": n,
                "keys": ctx.args.keys,
                "payload_bytes": ctx.args.payload,
                "batch_size": config.batch_size,
                "max_in_flight": config.max_in_flight,
                "key_order": key_order_name(config.key_order),
                "process": "relay alone in a child process (multi-threaded tokio runtime)",
            }),
            figures,
            violations,
        })
    }
    .await;
    fx.cleanup().await;
    result
}

/// The child: runs the relay on an existing schema until `messages` were completed, reporting
/// progress and memory on stdout.
pub(crate) async fn child(args: ChildArgs) -> anyhow::Result<()> {
    let pg = outbox_postgres::PgConnectOptions::from_url(&args.servers.database_url)?;
    let outbox = PgOutbox::new(PgConfig::builder().schema(args.schema.as_str()).build()?)?;
    let nats = crate::env::nats_client(&args.servers.nats_url).await?;
    let config: RelayConfig = relay_config(args.batch_size, args.max_in_flight, args.key_order)?;
    let relay = RunningRelay::start(&pg, nats, &outbox, config, false).await?;
    {
        let report = |done: bool| {
            let (rss_kib, hwm_kib) = procfs::rss_kib("self").unwrap_or((0, 0));
            let report = ChildReport {
                completed: relay.probe.completed(),
                rss_kib,
                hwm_kib,
                elapsed_s: relay.started.elapsed().as_secs_f64(),
                cpu_s: procfs::process_cpu_s("self").unwrap_or(0.0),
                done,
            };
            serde_json::to_string(&report).map(|line| println!("{line}"))
        };
        relay.probe.set_target(args.messages);
        let wait = relay
            .probe
            .wait_completed(args.messages, drain_timeout(args.messages));
        tokio::pin!(wait);
        loop {
            tokio::select! {
                result = &mut wait => {
                    result?;
                    break;
                }
                () = tokio::time::sleep(REPORT_EVERY) => report(false)?,
            }
        }
        report(true)?;
    }
    relay.stop().await
}
