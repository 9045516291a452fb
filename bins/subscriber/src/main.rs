//! Run with:
//!
//! ```text
//! cargo run -p subscriber                                  # everything in ORDERS, until Ctrl-C
//! cargo run -p subscriber -- --expect 100 --timeout 30     # exit 0 once 100 distinct arrived in order
//! cargo run -p subscriber -- --new --quiet --json          # only new messages; summary only, plus JSON
//! cargo run -p subscriber -- --durable audit               # continue the durable consumer "audit"
//! NATS_URL=nats://10.0.0.5:4222 cargo run -p subscriber -- --stream ORDERS --subject 'orders.created'
//! ```
//!
//! Reads the outbox's JetStream stream and verifies what arrives (DESIGN.md section 6): every
//! message is printed, and a summary counts distinct messages, duplicates (a `Nats-Msg-Id` stored
//! twice), redeliveries (a stream message delivered twice, which is the consumer's doing) and
//! per-key order violations (each `Outbox-Key`'s `seq` must rise with the stream order). The
//! consumer is ephemeral and starts at the stream's first message unless `--new` or `--durable`
//! says otherwise; a missing stream or an unreachable server is waited for, with backoff.
//!
//! Output: one `received message: ...` line per message and one `summary: ...` line on stdout
//! (with `--json`, the summary again as a JSON line); logs on stderr (`RUST_LOG` filters them).
//!
//! Exit codes: 0 verified (`--expect` met, or stopped by signal or `--timeout` after reading with
//! no violation); 1 a violation, `--expect` not met in time, or the stream never reached; 2 bad
//! input (a flag, a URL, a number, or settings the server rejects, such as a subject outside the
//! stream).

mod check;
mod cli;
mod consume;
mod output;
mod run;

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use clap::error::ErrorKind;
use tracing_subscriber::EnvFilter;

use crate::cli::Cli;

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => return usage_error(&err),
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| EnvFilter::new("info,async_nats=warn")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .init();
    ExitCode::from(run::run(&cli).await)
}

/// `--help` and `--version` print as usual; every other clap error becomes its first line
/// (which names the flag and the problem), with exit code 2.
fn usage_error(err: &clap::Error) -> ExitCode {
    if matches!(
        err.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        let _ = err.print();
        return ExitCode::from(u8::try_from(err.exit_code()).unwrap_or(2));
    }
    let rendered = err.render().to_string();
    let first = rendered
        .lines()
        .next()
        .unwrap_or("error: invalid arguments")
        .trim_end();
    eprintln!("{first} (see --help)");
    ExitCode::from(2)
}
