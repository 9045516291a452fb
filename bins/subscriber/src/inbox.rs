//! `--inbox`: each message is applied once to the subscriber's own table through the
//! outbox-postgres inbox, and acked only after that commit.
//!
//! The effect, per key (the `Outbox-Key` header, else the payload's `customer_id`, else the empty
//! string): a row of `<schema>.key_counts` counting the messages applied and keeping the highest
//! `seq` and the last message id. It commits in the transaction that records the message id in
//! `<schema>.inbox`, so a message delivered again (a redelivery, a replay from the stream's start,
//! a second subscriber) finds its id there and is skipped. A message without a UUID
//! `Nats-Msg-Id` cannot be recognised again, so it is not applied but rejected (terminated: the
//! server does not redeliver it).
//!
//! Database failures that may pass (connection lost, server restarting, serialization failure)
//! are retried with backoff, reconnecting as needed, while the message waits unacked; anything
//! else ends the run.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use outbox_postgres::{Handled, InboxConfig, PgConnectOptions, PgInbox};
use serde::Serialize;
use tokio_postgres::Client;
use tracing::{info, warn};
use uuid::Uuid;

use crate::check::Observation;
use crate::consume::Delivery;

/// The inbox table, in `--inbox-schema`.
pub(crate) const INBOX_TABLE: &str = "inbox";
/// The effect table, in `--inbox-schema`.
pub(crate) const EFFECT_TABLE: &str = "key_counts";

/// Creates the effect table where missing, under a lock so subscribers starting together do not
/// race on it. `{schema}` is validated and quoted.
const CREATE_EFFECT: &str = "\
SELECT pg_advisory_xact_lock(hashtextextended('outbox-subscriber:' || $1::text, 0))";
const CREATE_EFFECT_TABLE: &str = "\
CREATE TABLE IF NOT EXISTS {schema}.key_counts (
    key             text        PRIMARY KEY,
    messages        bigint      NOT NULL,
    last_seq        bigint,
    last_message_id uuid        NOT NULL,
    updated_at      timestamptz NOT NULL DEFAULT now()
)";

/// One message's effect.
const UPSERT_EFFECT: &str = "\
INSERT INTO {schema}.key_counts AS k (key, messages, last_seq, last_message_id)
VALUES ($1, 1, $2, $3)
ON CONFLICT (key) DO UPDATE
SET messages = k.messages + 1,
    last_seq = greatest(k.last_seq, excluded.last_seq),
    last_message_id = excluded.last_message_id,
    updated_at = now()";

/// What the inbox did with the messages of this run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub(crate) struct InboxCounts {
    /// Messages whose effect this run committed.
    pub(crate) applied: u64,
    /// Deliveries of messages applied before (by this run, an earlier one or another
    /// subscriber): redelivered, skipped, acked.
    pub(crate) skipped: u64,
    /// Deliveries without a UUID `Nats-Msg-Id`: not applied, terminated.
    pub(crate) rejected: u64,
}

/// What happened to one delivery.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Applied {
    /// The effect committed: ack.
    New,
    /// Applied before: skipped; ack.
    Duplicate,
    /// No usable message id: not applied; terminate.
    Rejected,
}

/// A PostgreSQL URL with its TLS settings (`sslmode`, `sslrootcert`, ...); shown without its
/// password.
#[derive(Clone)]
pub(crate) struct DatabaseUrl {
    options: PgConnectOptions,
}

impl FromStr for DatabaseUrl {
    type Err = String;

    /// Never quotes the text: it may hold a password.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if !(text.starts_with("postgres://") || text.starts_with("postgresql://")) {
            return Err("expected postgres://user[:password]@host[:port]/database".to_owned());
        }
        let mut options = PgConnectOptions::from_url(text).map_err(|e| e.to_string())?;
        let config = options.config_mut();
        if config.get_user().is_none() {
            return Err("no user (postgres://USER@host/database)".to_owned());
        }
        if config.get_hosts().is_empty() {
            return Err("no host (postgres://user@HOST/database)".to_owned());
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(5));
        }
        if config.get_application_name().is_none() {
            config.application_name("outbox-subscriber");
        }
        // A vanished server is noticed in seconds, while a message waits unacked.
        config
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(10))
            .keepalives_interval(Duration::from_secs(2))
            .keepalives_retries(3);
        Ok(Self { options })
    }
}

impl fmt::Display for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.options.redacted())
    }
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.options.redacted())
    }
}

/// Why the inbox cannot go on; the run ends.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct Fatal(String);

/// The subscriber's inbox: one connection, (re)opened on demand.
#[derive(Debug)]
pub(crate) struct Inbox {
    url: DatabaseUrl,
    inbox: PgInbox,
    create_effect_table: String,
    upsert: String,
    client: Option<Client>,
    counts: InboxCounts,
}

impl Inbox {
    /// An inbox in `schema` of the database at `url` (the text of `--database-url`); nothing
    /// connects yet. Fails on a malformed URL or schema.
    pub(crate) fn new(url: &str, schema: &str) -> Result<Self, String> {
        let url: DatabaseUrl = url
            .parse()
            .map_err(|e| format!("invalid --database-url: {e}"))?;
        let inbox = PgInbox::new(InboxConfig {
            schema: schema.to_owned(),
            table: INBOX_TABLE.to_owned(),
        })
        .map_err(|e| format!("invalid --inbox-schema: {e}"))?;
        // The schema passed PgInbox's validation: lowercase letters, digits and `_`.
        let quoted = format!("\"{schema}\"");
        Ok(Self {
            url,
            inbox,
            create_effect_table: CREATE_EFFECT_TABLE.replace("{schema}", &quoted),
            upsert: UPSERT_EFFECT.replace("{schema}", &quoted),
            client: None,
            counts: InboxCounts::default(),
        })
    }

    /// The counts so far.
    pub(crate) fn counts(&self) -> InboxCounts {
        self.counts
    }

    /// Connects and creates the inbox and effect tables where missing, retrying while the
    /// database is unreachable.
    pub(crate) async fn prepare(&mut self) -> Result<(), Fatal> {
        let mut delays = backoff();
        loop {
            match self.try_prepare().await {
                Ok(()) => {
                    info!(
                        "inbox ready: {schema}.{INBOX_TABLE} and {schema}.{EFFECT_TABLE} in {url}",
                        schema = self.inbox.config().schema,
                        url = self.url
                    );
                    return Ok(());
                }
                Err(e) if e.is_transient() => {
                    let delay = delays.next().unwrap_or(Duration::from_secs(5));
                    warn!(
                        "cannot prepare the inbox in {}: {e}; retrying in {delay:.1?}",
                        self.url
                    );
                    tokio::time::sleep(delay).await;
                }
                Err(e) => {
                    return Err(Fatal(format!(
                        "cannot prepare the inbox in {}: {e}",
                        self.url
                    )));
                }
            }
        }
    }

    async fn try_prepare(&mut self) -> Result<(), outbox_postgres::Error> {
        let schema = self.inbox.config().schema.clone();
        let inbox = self.inbox.clone();
        let create = self.create_effect_table.clone();
        let client = self.client().await?;
        inbox.migrate(client).await?;
        let tx = client
            .transaction()
            .await
            .map_err(query("begin creating the effect table"))?;
        tx.execute(CREATE_EFFECT, &[&schema])
            .await
            .map_err(query("lock the effect table's creation"))?;
        tx.batch_execute(&create)
            .await
            .map_err(query("create the effect table"))?;
        tx.commit()
            .await
            .map_err(query("commit the effect table"))?;
        Ok(())
    }

    /// Applies `delivery` once: records its id and upserts its key's row in one transaction.
    /// Returns when that is settled; retries what may pass, reconnecting as needed.
    pub(crate) async fn apply(&mut self, delivery: &Delivery<'_>) -> Result<Applied, Fatal> {
        let Some(id) = delivery.msg_id.and_then(|id| Uuid::parse_str(id).ok()) else {
            self.counts.rejected += 1;
            return Ok(Applied::Rejected);
        };
        let observation =
            Observation::parse(None, delivery.key, delivery.stream_seq, delivery.payload);
        let key = observation.key.unwrap_or_default();
        let seq = observation.seq.and_then(|seq| i64::try_from(seq).ok());
        let mut delays = backoff();
        loop {
            match self.try_apply(id, delivery.subject, &key, seq).await {
                Ok(Handled::Applied(())) => {
                    self.counts.applied += 1;
                    return Ok(Applied::New);
                }
                Ok(Handled::Duplicate) => {
                    self.counts.skipped += 1;
                    return Ok(Applied::Duplicate);
                }
                Err(e) if e.is_transient() => {
                    let delay = delays.next().unwrap_or(Duration::from_secs(5));
                    warn!("cannot apply msg id {id}: {e}; retrying in {delay:.1?}");
                    tokio::time::sleep(delay).await;
                }
                Err(e) => return Err(Fatal(format!("cannot apply msg id {id}: {e}"))),
            }
        }
    }

    async fn try_apply(
        &mut self,
        id: Uuid,
        subject: &str,
        key: &str,
        seq: Option<i64>,
    ) -> Result<Handled<()>, outbox_postgres::Error> {
        let inbox = self.inbox.clone();
        let upsert = self.upsert.clone();
        let client = self.client().await?;
        inbox
            .handle(client, id, subject, async |tx| {
                tx.execute(&upsert, &[&key, &seq, &id])
                    .await
                    .map_err(query("apply the effect"))?;
                Ok(())
            })
            .await
    }

    /// The open connection, or a new one.
    async fn client(&mut self) -> Result<&mut Client, outbox_postgres::Error> {
        let client = match self.client.take() {
            Some(client) if !client.is_closed() => client,
            _ => {
                let (client, connection) = self
                    .url
                    .options
                    .connect()
                    .await
                    .map_err(outbox_postgres::Error::Connect)?;
                tokio::spawn(async move {
                    if let Err(e) = connection.await {
                        warn!("PostgreSQL connection of the inbox ended: {e}");
                    }
                });
                client
            }
        };
        Ok(self.client.insert(client))
    }
}

fn query(operation: &'static str) -> impl FnOnce(tokio_postgres::Error) -> outbox_postgres::Error {
    move |source| outbox_postgres::Error::Query { operation, source }
}

/// Backoff between database attempts: 100 ms doubling to 5 s, with jitter, until the run ends.
fn backoff() -> impl Iterator<Item = Duration> {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_secs(5))
        .with_jitter()
        .without_max_times()
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_urls_are_shown_without_their_password() {
        let url: DatabaseUrl = "postgres://app:s3cret@db.example:5433/orders"
            .parse()
            .expect("parses");
        assert_eq!(url.to_string(), "postgres://app:***@db.example:5433/orders");
        assert!(!format!("{url:?}").contains("s3cret"));
    }

    #[test]
    fn malformed_database_urls_are_rejected_without_quoting_them() {
        for bad in [
            "",
            "mysql://u:s3cret@h/db",
            "postgres://u:s3cret@h:notaport/db",
            "postgres://u:s3cret@/db",
            "host=h password=s3cret",
        ] {
            let error = bad.parse::<DatabaseUrl>().expect_err(bad);
            assert!(!error.contains("s3cret"), "{bad:?}: {error}");
        }
    }

    #[test]
    fn bad_schemas_are_rejected() {
        let default = "postgres://postgres@127.0.0.1/test";
        assert!(Inbox::new(default, "subscriber").is_ok());
        for bad in ["", "1sub", "a;b", "pg_x", "x\"y"] {
            let error = Inbox::new(default, bad).expect_err(bad);
            assert!(error.starts_with("invalid --inbox-schema"), "{error}");
        }
    }
}
