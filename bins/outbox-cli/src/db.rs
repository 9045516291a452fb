//! The database connection: a bounded retry for a server that is briefly away, and errors that
//! say what to do.

use std::time::Duration;

use anyhow::{Context, anyhow};
use outbox_postgres::{PgConfig, PgOutbox};
use tokio_postgres::Client;
use tokio_postgres::error::SqlState;

use crate::cli::Settings;

/// Connection attempts before giving up on an unreachable server: a command line tool reports,
/// it does not wait for the server indefinitely.
const ATTEMPTS: u32 = 3;
/// Pause after the first failed attempt; doubled after each further one.
const FIRST_PAUSE: Duration = Duration::from_millis(300);
/// Limit of one attempt.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The outbox in `--schema`, as outbox-postgres sees it.
pub(crate) fn outbox(settings: &Settings) -> anyhow::Result<PgOutbox> {
    let config = PgConfig::builder()
        .schema(settings.schema.as_str())
        .build()
        .context("invalid outbox configuration")?;
    PgOutbox::new(config).context("invalid outbox configuration")
}

/// A connection, its task spawned. Retries a failure to reach the server (refused, timed out)
/// [`ATTEMPTS`] times in all; an answer from the server (bad password, no such database) is final.
pub(crate) async fn connect(settings: &Settings) -> anyhow::Result<Client> {
    let mut options = settings.database.clone();
    options
        .config_mut()
        .application_name("outbox-cli")
        .connect_timeout(CONNECT_TIMEOUT);
    let mut pause = FIRST_PAUSE;
    let mut attempt = 1;
    loop {
        match options.connect().await {
            Ok((client, connection)) => {
                tokio::spawn(async move {
                    // A failure shows up as an error of the statement that was running.
                    let _ = connection.await;
                });
                return Ok(client);
            }
            Err(error) if error.code().is_none() && attempt < ATTEMPTS => {
                tokio::time::sleep(pause).await;
                pause *= 2;
                attempt += 1;
            }
            Err(error) => {
                let tries = if attempt > 1 {
                    format!(" ({attempt} attempts)")
                } else {
                    String::new()
                };
                return Err(anyhow!(
                    "cannot connect to PostgreSQL at {}{tries}: {}",
                    settings.database_redacted,
                    describe(&error)
                ));
            }
        }
    }
}

/// Turns a failed statement into an error that names `what` failed and, when the outbox tables
/// are missing, says to run `outbox migrate`.
pub(crate) fn failed(
    what: &str,
    schema: &str,
    code: Option<&SqlState>,
    error: &(dyn std::error::Error + 'static),
) -> anyhow::Error {
    if code.is_some_and(|c| *c == SqlState::UNDEFINED_TABLE || *c == SqlState::INVALID_SCHEMA_NAME)
    {
        anyhow!(
            "schema \"{schema}\" holds no outbox tables: run `outbox --schema {schema} migrate` first ({})",
            describe(error)
        )
    } else {
        anyhow!("{what} failed: {}", describe(error))
    }
}

/// `error` and its sources on one line, each source once (drivers often print their source
/// themselves, and PostgreSQL's DETAIL and HINT come on lines of their own).
pub(crate) fn describe(error: &(dyn std::error::Error + 'static)) -> String {
    outbox_core::redact::error_chain(error)
}

/// `text` with its lines joined by `; `.
pub(crate) fn one_line(text: &str) -> String {
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_fit_on_one_line() {
        assert_eq!(one_line("ERROR: x\nDETAIL: y\n"), "ERROR: x; DETAIL: y");
        let error = std::io::Error::other("connection refused");
        assert_eq!(describe(&error), "connection refused");
    }
}
