//! Run with:
//!
//! ```text
//! cargo run -p subscriber                                  # everything in ORDERS, until Ctrl-C
//! cargo run -p subscriber -- --expect 100 --timeout 30     # exit 0 once 100 distinct arrived in order
//! cargo run -p subscriber -- --new --quiet --json          # only new messages; summary only, plus JSON
//! cargo run -p subscriber -- --durable audit               # continue the durable consumer "audit"
//! cargo run -p subscriber -- --inbox --expect 100          # also apply each message once to PostgreSQL
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
//! With `--inbox` (module `inbox`), each message is also applied to PostgreSQL exactly once: its
//! id recorded in an inbox table and its effect written in one transaction, then acked; a message
//! applied before (by this run, an earlier one or another subscriber) is skipped.
//!
//! Output: one `received message: ...` line per message and one `summary: ...` line on stdout
//! (with `--json`, the summary again as a JSON line); logs on stderr (`RUST_LOG` filters them).
//! Each message is handled in a span carrying the trace id of its W3C `traceparent` header; with
//! the `otel` feature (off by default) spans are exported over OTLP when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` is set, each message's span a child of the span that enqueued
//! it.
//!
//! Exit codes: 0 verified (`--expect` met, or stopped by signal or `--timeout` after reading with
//! no violation); 1 a violation, `--expect` not met in time, the stream never reached, or (with
//! `--inbox`) a database error that will not pass; 2 bad input (a flag, a URL, a number, or
//! settings the server rejects, such as a subject outside the stream).

mod check;
mod cli;
mod consume;
mod inbox;
mod output;
mod run;
mod telemetry;

use std::process::ExitCode;

use clap::Parser;
use clap::error::ErrorKind;

use crate::cli::Cli;

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => return usage_error(&err),
    };
    let _telemetry = telemetry::init();
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
