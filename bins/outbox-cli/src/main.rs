//! Run with:
//!
//! ```text
//! export DATABASE_URL=postgres://postgres@127.0.0.1:5432/test
//! cargo run -p outbox-cli -- migrate
//! cargo run -p outbox-cli -- status                      # add --json for scripts
//! cargo run -p outbox-cli -- dead-letters list --subject orders.created --older-than 1h
//! cargo run -p outbox-cli -- dead-letters replay --id 0190d6f1-8f43-7c3a-9a1e-0b1c2d3e4f50
//! cargo run -p outbox-cli -- dead-letters replay --all --key customer-7
//! cargo run -p outbox-cli -- dead-letters purge --older-than 30d --yes
//! ```
//!
//! `outbox`, the operator's command for a transactional outbox in PostgreSQL:
//!
//! - `migrate` applies the migrations embedded in this build and prints the versions applied.
//! - `status` shows pending, due and retrying messages, the age of the oldest one, the lag (how
//!   long the oldest due message has waited), dead letters, and the session holding the
//!   leadership lock (pid, client address, application name, since when).
//! - `dead-letters list|replay|purge` inspects the messages the relay gave up on, puts them back
//!   into the outbox (same id, attempts reset, in their original order) or deletes them; by
//!   `--id`, by filter (`--subject`, `--key`, `--older-than`) or `--all`. Bulk operations run in
//!   batches (`--batch-size`, default 1000), each committed on its own, with a progress bar when
//!   stderr is a terminal.
//!
//! Settings: `--database-url`/`DATABASE_URL` (required; alias `--dsn`), `--schema` (default
//! `outbox`), `--json` (one JSON document on stdout instead of tables). Purges, and replays of
//! more than named ids, ask for confirmation on the terminal; `--yes` skips the question, and
//! without a terminal it is required.
//!
//! Exit codes: 0 done; 1 failed (database unreachable after 3 attempts, schema not migrated,
//! confirmation declined, an `--id` that is no dead letter); 2 bad input (unknown flag, malformed
//! URL, number or duration, no selection, confirmation impossible), with one line on stderr.

mod cli;
mod confirm;
mod db;
mod dead_letters;
mod output;
mod published;
mod status;

use std::process::ExitCode;

use cli::{Action, Parsed, Settings};

fn main() -> ExitCode {
    let settings = match cli::parse() {
        Parsed::Run(settings) => settings,
        Parsed::Printed => return ExitCode::SUCCESS,
        Parsed::Usage(error) => {
            eprintln!("error: {}", db::one_line(&error.0));
            return ExitCode::from(cli::EXIT_USAGE);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(&settings)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {}", report(&error));
            ExitCode::FAILURE
        }
    }
}

async fn run(settings: &Settings) -> anyhow::Result<()> {
    match &settings.action {
        Action::Migrate => status::migrate(settings).await,
        Action::Status { lock_id } => status::status(settings, *lock_id).await,
        Action::List {
            filter,
            limit,
            offset,
        } => dead_letters::list(settings, filter, *limit, *offset).await,
        Action::Bulk(bulk) => dead_letters::bulk(settings, bulk).await,
        Action::PurgePublished(purge) => published::purge(settings, purge).await,
    }
}

/// The error and its causes on one line, each cause once.
fn report(error: &anyhow::Error) -> String {
    let mut message = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if !message.contains(&text) {
            if !message.is_empty() {
                message.push_str(": ");
            }
            message.push_str(&text);
        }
    }
    db::one_line(&message)
}
