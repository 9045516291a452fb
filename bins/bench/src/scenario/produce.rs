//! `produce`: concurrent producers commit single-order transactions as fast as they can — a
//! business row alone, then with the outbox enqueue, then with the insert and the enqueue as one
//! statement (`execute_and_enqueue`), then with the enqueue and a NOTIFY (`WakeUp::Listen`), then
//! with the enqueue while the relay drains concurrently.
//!
//! Then the same on a server with `wal_level = logical` (`DATABASE_URL`'s if it has it, else a
//! temporary cluster, see [`WalServer`]) for `EnqueueMode::WalMessage`: a plain run of its own,
//! the inserted enqueue for comparison, the WAL enqueue (`Enqueuer::emit`), the insert and the
//! emit as one statement (`execute_and_emit`), and the emit while the relay (its store's ingest
//! from the replication slot included) drains concurrently. Without such a server (no server
//! binaries for a cluster), those modes are skipped and the record says why.
//!
//! Each producer owns a disjoint set of keys, so its commit order is each key's order; after the
//! timed part the relay drains what was enqueued (for the WAL modes, until the slot confirmed
//! the WAL written up to the producers' stop and the table is empty) and the stream is checked.

use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use hdrhistogram::Histogram;
use outbox_postgres::{EnqueueMode, PgConnectOptions, WakeUp};
use serde_json::{Value, json};

use super::{Ctx, Outcome, RunningRelay, check, drain_timeout};
use crate::env::{Env, Fixture, pg_client};
use crate::procfs::CpuSnapshot;
use crate::progress::Progress;
use crate::report::{histogram, median, percentiles_ms, round};
use crate::verify::Violations;
use crate::wal_server::WalServer;
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
    /// `EnqueueMode::WalMessage`: `emit` instead of `enqueue`.
    wal: bool,
}

impl Mode {
    fn enqueue_mode(self) -> EnqueueMode {
        if self.wal {
            EnqueueMode::WalMessage
        } else {
            EnqueueMode::Insert
        }
    }
}

/// The modes on `DATABASE_URL`'s server; the first is the plain run the others are compared to.
const MODES: [Mode; 5] = [
    Mode {
        name: "plain",
        enqueue: None,
        relaying: false,
        joined: false,
        wal: false,
    },
    Mode {
        name: "outbox",
        enqueue: Some(WakeUp::Poll),
        relaying: false,
        joined: false,
        wal: false,
    },
    Mode {
        name: "outbox_one_statement",
        enqueue: Some(WakeUp::Poll),
        relaying: false,
        joined: true,
        wal: false,
    },
    Mode {
        name: "outbox_notify",
        enqueue: Some(WakeUp::Listen),
        relaying: false,
        joined: false,
        wal: false,
    },
    Mode {
        name: "outbox_relaying",
        enqueue: Some(WakeUp::Poll),
        relaying: true,
        joined: false,
        wal: false,
    },
];

/// The modes on the WAL server: a plain run and the inserted enqueue of its own, so that the
/// WAL enqueue is compared with runs on the same server, seconds apart.
const WAL_MODES: [Mode; 6] = [
    Mode {
        name: "plain",
        enqueue: None,
        relaying: false,
        joined: false,
        wal: false,
    },
    Mode {
        name: "outbox",
        enqueue: Some(WakeUp::Poll),
        relaying: false,
        joined: false,
        wal: false,
    },
    Mode {
        name: "outbox_wal",
        enqueue: Some(WakeUp::Poll),
        relaying: false,
        joined: false,
        wal: true,
    },
    Mode {
        name: "outbox_wal_one_statement",
        enqueue: Some(WakeUp::Poll),
        relaying: false,
        joined: true,
        wal: true,
    },
    Mode {
        name: "outbox_wal_relaying",
        enqueue: Some(WakeUp::Poll),
        relaying: true,
        joined: false,
        wal: true,
    },
    Mode {
        name: "outbox_relaying",
        enqueue: Some(WakeUp::Poll),
        relaying: true,
        joined: false,
        wal: false,
    },
];

/// The ratios reported for the WAL server: name, and the mode (in [`WAL_MODES`]) over its plain.
const WAL_RATIOS: [(&str, usize); 5] = [
    ("wal_over_plain", 2),
    ("wal_one_statement_over_plain", 3),
    ("wal_relaying_over_plain", 4),
    ("insert_over_plain_on_wal_server", 1),
    ("insert_relaying_over_plain_on_wal_server", 5),
];

/// Where a mode runs.
#[derive(Clone, Copy, Debug)]
struct Place<'a> {
    pg: &'a PgConnectOptions,
    /// The other server, running beside this one (the temporary cluster, or `DATABASE_URL`'s
    /// while runs are on the cluster): checkpointed before each run too.
    beside: Option<&'a PgConnectOptions>,
    /// Before the mode's name in progress bars.
    label: &'static str,
}

/// One run of a mode: its rate and its figures.
type Run = (f64, Value);

pub(crate) async fn run(ctx: &mut Ctx<'_>) -> anyhow::Result<Outcome> {
    let wal = WalServer::start(ctx.env).await?;
    let outcome = measure(ctx, wal.as_ref()).await;
    if let Ok(server) = wal {
        server.stop().await;
    }
    outcome
}

/// The rounds of every mode, on `DATABASE_URL`'s server and then on `wal`'s (or, with
/// `Err(reason)`, without the WAL modes).
async fn measure(ctx: &Ctx<'_>, wal: Result<&WalServer, &String>) -> anyhow::Result<Outcome> {
    let secs = ctx.args.produce_secs();
    let producers = ctx.args.producers.min(ctx.args.keys);
    let rounds = ctx.args.repeat;
    let cluster = wal.ok().filter(|server| server.separate());
    let main = Place {
        pg: &ctx.env.pg,
        beside: cluster.map(|server| &server.pg),
        label: "",
    };
    let on_wal = wal.ok().map(|server| Place {
        pg: &server.pg,
        beside: cluster.map(|_| &ctx.env.pg),
        label: "wal:",
    });
    // Modes take turns, round after round: a drift of the machine's speed (other processes,
    // the page cache) then touches every mode alike, and each round gives one ratio of its own.
    // The ways of enqueueing follow their server's plain run directly, so their ratios compare
    // runs a few seconds apart.
    let mut runs: Vec<Vec<Run>> = vec![Vec::new(); MODES.len()];
    let mut wal_runs: Vec<Vec<Run>> = vec![Vec::new(); WAL_MODES.len()];
    let mut violations = Violations::default();
    for _ in 0..rounds {
        for (m, mode) in MODES.into_iter().enumerate() {
            runs[m].push(run_mode(ctx, main, mode, producers, secs, &mut violations).await?);
        }
        if let Some(place) = on_wal {
            for (m, mode) in WAL_MODES.into_iter().enumerate() {
                let run = run_mode(ctx, place, mode, producers, secs, &mut violations)
                    .await
                    .with_context(|| format!("mode {} on the WAL server", mode.name))?;
                wal_runs[m].push(run);
            }
        }
    }
    let rates = Rates::of(&runs);
    let mut figures = mode_figures(&MODES, &runs, &rates);
    figures.insert("outbox_over_plain".into(), json!(rates.ratio(1)));
    figures.insert(
        "outbox_over_plain_per_round".into(),
        json!(rates.per_round(1)),
    );
    figures.insert(
        "outbox_over_plain_round_median".into(),
        json!(rates.round_median(1)),
    );
    figures.insert("one_statement_over_plain".into(), json!(rates.ratio(2)));
    figures.insert(
        "one_statement_over_plain_per_round".into(),
        json!(rates.per_round(2)),
    );
    figures.insert(
        "one_statement_over_plain_round_median".into(),
        json!(rates.round_median(2)),
    );
    figures.insert("notify_over_plain".into(), json!(rates.ratio(3)));
    figures.insert("relaying_over_plain".into(), json!(rates.ratio(4)));
    figures.insert(
        "relaying_over_plain_per_round".into(),
        json!(rates.per_round(4)),
    );
    match wal {
        Ok(_) => {
            let rates = Rates::of(&wal_runs);
            figures.insert(
                "wal".into(),
                Value::Object(mode_figures(&WAL_MODES, &wal_runs, &rates)),
            );
            for (name, m) in WAL_RATIOS {
                figures.insert(name.into(), json!(rates.ratio(m)));
                figures.insert(format!("{name}_per_round"), json!(rates.per_round(m)));
                figures.insert(format!("{name}_round_median"), json!(rates.round_median(m)));
            }
        }
        Err(reason) => {
            figures.insert("wal".into(), json!({ "skipped": reason }));
            for (name, _) in WAL_RATIOS {
                for suffix in ["", "_per_round", "_round_median"] {
                    figures.insert(format!("{name}{suffix}"), Value::Null);
                }
            }
        }
    }
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
            "wal_server": wal.ok().map(|server| server.description.clone()),
            "wal_transaction": "BEGIN; INSERT order (prepared) [pipelined with Enqueuer::emit of one message: SELECT pg_logical_emit_message(true, prefix, encoded), prepared once per producer connection]; COMMIT",
            "wal_one_statement": "BEGIN; WITH business AS (INSERT order RETURNING id) SELECT pg_logical_emit_message(...) WHERE EXISTS (SELECT FROM business) (Enqueuer::execute_and_emit, prepared once); COMMIT",
            "wal_modes": {
                "plain": "business row only, on the WAL server",
                "outbox": "+ enqueue (EnqueueMode::Insert, as outbox above), on the WAL server",
                "outbox_wal": "+ emit (EnqueueMode::WalMessage), no relay while producing",
                "outbox_wal_one_statement": "the insert and the emit in one statement",
                "outbox_wal_relaying": "+ emit, the relay draining concurrently: its store's ingest streams the replication slot into the table, the relay publishes from there",
                "outbox_relaying": "+ enqueue (EnqueueMode::Insert), the relay draining concurrently, on the WAL server",
            },
            "wal_drain": "after each mode with an enqueue, the relay runs until it published every committed message; for the WAL modes also until the slot's confirmed_flush_lsn passed pg_current_wal_lsn() as read when the producers stopped (an empty logical message of another prefix is committed right after, so that the ingest has a commit to confirm past it); then the table must be empty and the stream is checked",
            "drain": "in each run with an enqueue: the rows in the table when the producers stopped, the WAL the slot had not confirmed then (WAL modes), and the seconds from the stop until everything was published, which for the modes without a relay while producing include the relay's start, and for the WAL modes the ingest's next report of its position to the server (once a second)",
        }),
        figures: Value::Object(figures),
        violations,
    })
}

/// Runs `mode` once in a fresh fixture on `place`'s server.
async fn run_mode(
    ctx: &Ctx<'_>,
    place: Place<'_>,
    mode: Mode,
    producers: u32,
    secs: f64,
    violations: &mut Violations,
) -> anyhow::Result<Run> {
    let fx = ctx
        .env
        .fixture_on(
            place.pg,
            mode.name,
            mode.enqueue.unwrap_or(WakeUp::Poll),
            mode.enqueue_mode(),
        )
        .await?;
    let result = once(ctx, &fx, place, mode, producers, secs).await;
    fx.cleanup().await;
    let (rate, figure, v) = result?;
    violations.add(&v);
    Ok((rate, figure))
}

/// Each mode's rates, round by round; the first mode is the plain one.
struct Rates(Vec<Vec<f64>>);

impl Rates {
    fn of(runs: &[Vec<Run>]) -> Self {
        Self(
            runs.iter()
                .map(|r| r.iter().map(|(rate, _)| *rate).collect())
                .collect(),
        )
    }

    fn median(&self, m: usize) -> f64 {
        median(&self.0[m])
    }

    /// Mode `m`'s median rate over the plain mode's.
    fn ratio(&self, m: usize) -> f64 {
        round(self.median(m) / self.median(0), 3)
    }

    /// Each round's ratio of mode `m` to that round's plain run.
    fn per_round(&self, m: usize) -> Vec<f64> {
        self.0[m]
            .iter()
            .zip(&self.0[0])
            .map(|(rate, plain)| round(rate / plain, 3))
            .collect()
    }

    /// The median of the rounds' own ratios: each compares runs seconds apart.
    fn round_median(&self, m: usize) -> f64 {
        round(median(&self.per_round(m)), 3)
    }
}

/// Each mode's median rate, its runs' rates, and the run whose rate is the median.
fn mode_figures(
    modes: &[Mode],
    runs: &[Vec<Run>],
    rates: &Rates,
) -> serde_json::Map<String, Value> {
    let mut figures = serde_json::Map::new();
    for (m, mode) in modes.iter().enumerate() {
        // The run whose rate is the median stands for the mode (its CPU and latencies).
        let median_rate = rates.median(m);
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
                "runs_tx_per_s": rates.0[m].iter().map(|r| round(*r, 0)).collect::<Vec<_>>(),
                "median_run": representative,
            }),
        );
    }
    figures
}

async fn once(
    ctx: &Ctx<'_>,
    fx: &Fixture,
    place: Place<'_>,
    mode: Mode,
    producers: u32,
    secs: f64,
) -> anyhow::Result<(f64, Value, Violations)> {
    let env: &Env = ctx.env;
    let relay = if mode.relaying {
        Some(
            RunningRelay::start(
                &fx.pg,
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
        clients.push(pg_client(&fx.pg).await?);
    }
    // Every mode starts on a fresh checkpoint: one falling inside a run (the previous modes
    // wrote and drained enough WAL to set one off) would slow that mode alone.
    let mut servers = vec![&fx.pg];
    servers.extend(place.beside);
    env.settle_servers(&servers).await;
    let progress = Progress::counter(&format!("produce {}{}", place.label, mode.name));
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
    let stopped = Instant::now();
    let cpu = cpu_before.until(&CpuSnapshot::take());
    drop(clients);
    progress.done();
    let rate = commits as f64 / secs;

    let mut violations = Violations::default();
    let mut drain = Value::Null;
    if mode.enqueue.is_some() {
        let rows_at_stop = fx.outbox_len().await?;
        let (unconfirmed, wal_end) = if fx.wal() {
            (
                Some(slot_unconfirmed(fx).await?),
                Some(wal_end_marked(fx).await?),
            )
        } else {
            (None, None)
        };
        // Drain what was enqueued (or what is left of it) and check the stream.
        let relay = match relay {
            Some(relay) => relay,
            None => {
                RunningRelay::start(
                    &fx.pg,
                    env.nats().await?,
                    &fx.outbox,
                    ctx.relay_config()?,
                    false,
                )
                .await?
            }
        };
        let progress = Progress::bar(&format!("draining {}{}", place.label, mode.name), commits);
        let drained = async {
            let timeout = drain_timeout(commits);
            relay.wait_completed(commits, timeout, &progress).await?;
            if let Some(end) = &wal_end {
                wait_slot_confirmed(fx, end, timeout).await?;
            }
            anyhow::Ok(stopped.elapsed())
        }
        .await;
        relay.stop().await?;
        progress.done();
        let drained = drained?;
        violations = check(fx, commits).await?;
        // From the producers' stop until everything was published (and, for the WAL modes,
        // the slot confirmed): for the modes without a relay while producing, a relay's start
        // and its drain of the whole run.
        drain = json!({
            "rows_at_stop": rows_at_stop,
            "seconds": round(drained.as_secs_f64(), 3),
        });
        if let Some(unconfirmed) = unconfirmed {
            drain["slot_unconfirmed_bytes_at_stop"] = json!(unconfirmed);
        }
    }
    let mut figure = json!({
        "transactions": commits,
        "tx_per_s": round(rate, 0),
        "tx_ms": percentiles_ms(&tx_times),
        "cpu": cpu,
    });
    if !drain.is_null() {
        figure["drain"] = drain;
    }
    Ok((rate, figure, violations))
}

/// WAL written since the slot's confirmed position, in bytes: the outbox's messages not yet
/// ingested, and everything else written since.
async fn slot_unconfirmed(fx: &Fixture) -> anyhow::Result<u64> {
    let status = fx
        .outbox
        .wal_slot_status(&fx.admin)
        .await?
        .with_context(|| {
            format!(
                "the replication slot {} is gone",
                fx.outbox.config().wal_slot()
            )
        })?;
    Ok(status.unconfirmed_bytes)
}

/// `pg_current_wal_lsn()` now, after every producer's commit, which the slot's confirmed
/// position must reach; then commits an empty logical message of a prefix of the bench's own
/// (which the ingest decodes and skips). The confirmed position moves as the ingest reports
/// one: at the commits it decodes, and otherwise only when the server's keepalives get it to
/// (seen on PostgreSQL 15: within a few seconds). This commit past the point gives the ingest a
/// position to confirm at once, instead of leaving the drain's time to keepalives.
async fn wal_end_marked(fx: &Fixture) -> anyhow::Result<String> {
    let end: String = fx
        .admin
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await?
        .try_get(0)?;
    fx.admin
        .batch_execute("SELECT pg_logical_emit_message(true, 'outbox-bench', 'drained')")
        .await?;
    Ok(end)
}

/// Waits until the fixture's slot confirmed the WAL up to `end`: every transaction committed
/// before it was ingested, and the server no longer keeps its WAL for the outbox.
async fn wait_slot_confirmed(fx: &Fixture, end: &str, timeout: Duration) -> anyhow::Result<()> {
    let slot = fx.outbox.config().wal_slot();
    let deadline = Instant::now() + timeout;
    loop {
        let row = fx
            .admin
            .query_opt(
                "SELECT confirmed_flush_lsn::text, confirmed_flush_lsn >= $2::text::pg_lsn \
                 FROM pg_replication_slots WHERE slot_name = $1",
                &[&slot, &end],
            )
            .await?
            .with_context(|| format!("the replication slot {slot} is gone"))?;
        if row.try_get::<_, Option<bool>>(1)? == Some(true) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            let confirmed: Option<String> = row.try_get(0)?;
            bail!(
                "the replication slot {slot} confirmed {} and not yet {end}, the WAL's end when \
                 the producers stopped, within {timeout:?}, though the relay published every \
                 message",
                confirmed.as_deref().unwrap_or("nothing")
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What a producer's transaction does besides its business insert.
enum How {
    Plain,
    /// A separate enqueue (or emit, in the WAL mode), pipelined with the insert.
    Separate(outbox_postgres::PgOutbox),
    /// The insert and the enqueue (or emit) in one statement.
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
    let wal = match &how {
        How::Separate(outbox) | How::Joined(outbox) => {
            outbox.config().enqueue_mode == EnqueueMode::WalMessage
        }
        How::Plain => false,
    };
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
            Some(enqueuer) if joined && wal => {
                let emitted = enqueuer
                    .execute_and_emit(&tx, &joined_sql, &params, &message)
                    .await
                    .context("insert and emit")?;
                ensure!(emitted, "the insert returned no row");
            }
            Some(enqueuer) if joined => {
                enqueuer
                    .execute_and_enqueue(&tx, &joined_sql, &params, &message)
                    .await
                    .context("insert and enqueue")?
                    .context("the insert returned no row")?;
            }
            // The emit goes out with the business statement, in the same round trip, as the
            // enqueue does below.
            Some(enqueuer) if wal => {
                let (inserted, emitted) =
                    tokio::join!(tx.execute(&insert, &params), enqueuer.emit(&tx, &message));
                inserted?;
                emitted.context("emit")?;
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
