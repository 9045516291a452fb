//! Command line: which scenarios, against which servers, with which sizes.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Benchmarks the outbox against real PostgreSQL and NATS JetStream. Prints one JSON line per
/// scenario on stdout and appends it to `--out`; exits 1 when a scenario fails or finds a
/// violation of per-key order or uniqueness.
#[derive(Debug, Parser)]
#[command(name = "outbox-bench", version, args_conflicts_with_subcommands = true)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Option<Command>,
    #[command(flatten)]
    pub(crate) run: RunArgs,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Internal: the relay of the `memory` scenario, in a process of its own so that its RSS is
    /// the relay's alone.
    #[command(hide = true)]
    RelayChild(ChildArgs),
}

/// The scenarios, in the order they run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, ValueEnum)]
pub(crate) enum Scenario {
    /// One relay drains a preloaded outbox into JetStream.
    Drain,
    /// The same drain by the simplest correct loop over tokio-postgres and async-nats.
    Raw,
    /// Commit-to-ack and commit-to-receive latency at steady producer rates.
    Latency,
    /// Producer transactions/s with and without the outbox enqueue, with NOTIFY, and with the
    /// WAL enqueue (on a server with `wal_level = logical`).
    Produce,
    /// Peak RSS of a relay process draining a large outbox.
    Memory,
    /// `drain` over a grid of batch sizes and ack windows (not run by default).
    Sweep,
    /// Dead tuples and table size under sustained traffic, default autovacuum settings against
    /// the migration's (not run by default: minutes).
    Hygiene,
}

impl Scenario {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Scenario::Drain => "drain",
            Scenario::Raw => "raw",
            Scenario::Latency => "latency",
            Scenario::Produce => "produce",
            Scenario::Memory => "memory",
            Scenario::Sweep => "sweep",
            Scenario::Hygiene => "hygiene",
        }
    }
}

/// How the relay is woken in the `latency` scenario.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum WakeUpArg {
    Poll,
    Listen,
    Both,
}

/// The relay's `KeyOrder`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum KeyOrderArg {
    Strict,
    Pipelined,
}

impl KeyOrderArg {
    pub(crate) fn to_key_order(self) -> outbox_core::KeyOrder {
        match self {
            KeyOrderArg::Strict => outbox_core::KeyOrder::Strict,
            KeyOrderArg::Pipelined => outbox_core::KeyOrder::Pipelined,
        }
    }
}

/// Connection settings, shared by the benchmark and its child process.
#[derive(Clone, Debug, Args)]
pub(crate) struct Servers {
    /// PostgreSQL URL (libpq's sslmode, sslrootcert, PGPASSWORD, ... apply).
    #[arg(
        long,
        env = "DATABASE_URL",
        hide_env_values = true,
        default_value = "postgres://postgres@127.0.0.1:5432/test"
    )]
    pub(crate) database_url: String,
    /// NATS URL (JetStream enabled); credentials and TLS from NATS_CREDS, NATS_NKEY, NATS_TOKEN,
    /// NATS_USER/NATS_PASSWORD, NATS_CA, NATS_CERT/NATS_KEY.
    #[arg(
        long,
        env = "NATS_URL",
        hide_env_values = true,
        default_value = "nats://127.0.0.1:4222"
    )]
    pub(crate) nats_url: String,
}

#[derive(Debug, Args)]
pub(crate) struct RunArgs {
    #[command(flatten)]
    pub(crate) servers: Servers,
    /// Scenario to run (repeatable). Default: drain, raw, latency, produce, memory.
    #[arg(long = "scenario", value_name = "NAME")]
    pub(crate) scenarios: Vec<Scenario>,
    /// A small version of every scenario, in under a minute.
    #[arg(long)]
    pub(crate) quick: bool,
    /// Messages preloaded for drain, raw and sweep. Default: 200000 (quick: 20000).
    #[arg(short = 'n', long = "messages", value_name = "N")]
    pub(crate) messages: Option<u64>,
    /// Distinct message keys.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) keys: u32,
    /// Payload bytes per message (at least 32).
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(32..=1_000_000))]
    pub(crate) payload: u32,
    /// The relay's batch size. Default: RelayConfig's.
    #[arg(long)]
    pub(crate) batch_size: Option<usize>,
    /// The relay's ack window (max in flight). Default: RelayConfig's.
    #[arg(long)]
    pub(crate) max_in_flight: Option<usize>,
    /// How the relay orders a key's messages (strict: one in flight per key).
    #[arg(long, value_enum, default_value_t = KeyOrderArg::Strict)]
    pub(crate) key_order: KeyOrderArg,
    /// Where JSON lines are appended.
    #[arg(long, default_value = "target/bench/results.jsonl")]
    pub(crate) out: PathBuf,
    /// Runs of drain and raw, and rounds of the produce scenario's modes; figures are medians.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=20))]
    pub(crate) repeat: u32,
    /// Producer rates of the latency scenario, messages/s.
    #[arg(long, value_delimiter = ',', default_values_t = [1000_u32, 5000])]
    pub(crate) rates: Vec<u32>,
    /// Seconds each latency rate runs. Default: 20 (quick: 3).
    #[arg(long)]
    pub(crate) latency_secs: Option<f64>,
    /// Wake-up modes the latency scenario measures.
    #[arg(long, value_enum, default_value_t = WakeUpArg::Both)]
    pub(crate) wake_up: WakeUpArg,
    /// Concurrent producers of the produce scenario.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub(crate) producers: u32,
    /// Seconds each produce mode runs. Default: 10 (quick: 2).
    #[arg(long)]
    pub(crate) produce_secs: Option<f64>,
    /// Messages the memory scenario drains. Default: 1000000 (quick: 100000).
    #[arg(long)]
    pub(crate) memory_messages: Option<u64>,
    /// Batch sizes of the sweep.
    #[arg(long, value_delimiter = ',', default_values_t = [64_usize, 256, 1024])]
    pub(crate) sweep_batch: Vec<usize>,
    /// Ack windows (max in flight) of the sweep.
    #[arg(long, value_delimiter = ',', default_values_t = [256_usize, 1024, 4096])]
    pub(crate) sweep_in_flight: Vec<usize>,
    /// Messages each hygiene variant sends through the relay. Default: 1000000 (quick: 50000).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) hygiene_messages: Option<u64>,
    /// Producers' total rate in the hygiene scenario, messages/s: steady traffic, below what
    /// the relay drains even on a busy machine.
    #[arg(long, default_value_t = 5_000, value_parser = clap::value_parser!(u32).range(100..))]
    pub(crate) hygiene_rate: u32,
    /// Seconds the hygiene scenario waits, once the outbox is empty, for the next autovacuum.
    /// Default: 90 (quick: 0).
    #[arg(long, value_parser = parse_seconds)]
    pub(crate) hygiene_settle_secs: Option<f64>,
}

impl RunArgs {
    /// The scenarios to run, in their fixed order, each once.
    pub(crate) fn selected(&self) -> Vec<Scenario> {
        let mut chosen = if self.scenarios.is_empty() {
            vec![
                Scenario::Drain,
                Scenario::Raw,
                Scenario::Latency,
                Scenario::Produce,
                Scenario::Memory,
            ]
        } else {
            self.scenarios.clone()
        };
        chosen.sort();
        chosen.dedup();
        chosen
    }

    pub(crate) fn drain_messages(&self) -> u64 {
        self.messages
            .unwrap_or(if self.quick { 20_000 } else { 200_000 })
    }

    pub(crate) fn latency_secs(&self) -> f64 {
        self.latency_secs
            .unwrap_or(if self.quick { 3.0 } else { 20.0 })
    }

    pub(crate) fn produce_secs(&self) -> f64 {
        self.produce_secs
            .unwrap_or(if self.quick { 2.0 } else { 10.0 })
    }

    pub(crate) fn memory_messages(&self) -> u64 {
        self.memory_messages
            .unwrap_or(if self.quick { 100_000 } else { 1_000_000 })
    }

    pub(crate) fn hygiene_messages(&self) -> u64 {
        self.hygiene_messages
            .unwrap_or(if self.quick { 50_000 } else { 1_000_000 })
    }

    pub(crate) fn hygiene_settle_secs(&self) -> f64 {
        self.hygiene_settle_secs
            .unwrap_or(if self.quick { 0.0 } else { 90.0 })
    }

    /// The key count and payload size every scenario uses.
    pub(crate) fn shape(&self) -> Shape {
        Shape {
            keys: self.keys,
            payload: self.payload as usize,
        }
    }
}

/// A number of seconds: finite, not negative, at most a day.
fn parse_seconds(value: &str) -> Result<f64, String> {
    let secs: f64 = value
        .parse()
        .map_err(|_| format!("{value:?} is not a number of seconds"))?;
    if secs.is_finite() && (0.0..=86_400.0).contains(&secs) {
        Ok(secs)
    } else {
        Err(format!("{value} is not between 0 and 86400 seconds"))
    }
}

/// What the generated messages look like.
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub(crate) struct Shape {
    pub(crate) keys: u32,
    pub(crate) payload: usize,
}

#[derive(Debug, Args)]
pub(crate) struct ChildArgs {
    #[command(flatten)]
    pub(crate) servers: Servers,
    #[arg(long)]
    pub(crate) schema: String,
    #[arg(long)]
    pub(crate) messages: u64,
    #[arg(long)]
    pub(crate) batch_size: Option<usize>,
    #[arg(long)]
    pub(crate) max_in_flight: Option<usize>,
    #[arg(long, value_enum, default_value_t = KeyOrderArg::Strict)]
    pub(crate) key_order: KeyOrderArg,
}
