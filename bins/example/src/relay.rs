//! Wiring of the leader's relay: PostgreSQL store and elector, JetStream publisher, the stream.
//! The relay loop itself is `outbox_core::Relay`; this module only connects its parts and logs
//! its state.

use std::time::Duration;

use anyhow::Context as _;
use outbox_core::{Relay, RelayConfig, RelayState};
use outbox_nats::{JetStreamPublisher, StreamSpec, ensure_stream};
use outbox_postgres::{PgOutbox, PgStore};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::cli::Settings;
use crate::retry;

/// What the relay needs from the settings.
#[derive(Clone, Debug)]
pub(crate) struct RelaySettings {
    nats_url: String,
    nats_redacted: String,
    stream: String,
    stream_subjects: String,
    schema: String,
}

impl From<&Settings> for RelaySettings {
    fn from(settings: &Settings) -> Self {
        RelaySettings {
            nats_url: settings.nats_url.clone(),
            nats_redacted: settings.nats_redacted.clone(),
            stream: settings.stream.clone(),
            stream_subjects: settings.stream_subjects(),
            schema: settings.schema.clone(),
        }
    }
}

/// Connects to NATS, provisions the stream, then runs the relay until `shutdown`; relay states
/// go to `state` (for `/health`) and are logged.
///
/// NATS being down at startup is retried with backoff; once connected, the client reconnects
/// by itself and the relay retries failed publishes.
pub(crate) async fn run(
    settings: RelaySettings,
    outbox: PgOutbox,
    pg_config: tokio_postgres::Config,
    state: watch::Sender<RelayState>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let what = format!("connecting to NATS at {}", settings.nats_redacted);
    // async-nats takes a list of servers, not a comma-separated string.
    let servers: Vec<String> = settings
        .nats_url
        .split(',')
        .map(|url| url.trim().to_owned())
        .collect();
    let connected = retry::until_ready(
        &what,
        &shutdown,
        |_| true,
        || {
            async_nats::ConnectOptions::new()
                .name("outbox-example")
                .connection_timeout(Duration::from_secs(5))
                .connect(servers.clone())
        },
    )
    .await;
    let client = match connected {
        None => return Ok(()),
        Some(result) => result.context("NATS")?,
    };
    tracing::info!("connected to NATS at {}", settings.nats_redacted);

    let publisher = JetStreamPublisher::new(client);
    let spec = StreamSpec::new(
        settings.stream.as_str(),
        [settings.stream_subjects.as_str()],
    );
    let what = format!("provisioning JetStream stream {}", settings.stream);
    let provisioned =
        retry::until_ready(&what, &shutdown, outbox_nats::Error::is_transient, || {
            ensure_stream(publisher.context(), &spec)
        })
        .await;
    match provisioned {
        None => return Ok(()),
        Some(result) => {
            result.with_context(|| format!("JetStream stream {}", settings.stream))?;
        }
    }
    tracing::info!(
        "stream {} ready on {} (duplicate window {:?})",
        settings.stream,
        settings.stream_subjects,
        spec.duplicate_window
    );

    let store = PgStore::new(&outbox, pg_config);
    let elector = store.elector();
    let relay = Relay::new(store, publisher, elector, RelayConfig::default())
        .context("relay configuration")?;
    let watcher = tokio::spawn(forward_states(relay.state(), state, settings));
    relay.run(shutdown).await;
    let _ = watcher.await;
    Ok(())
}

/// Forwards relay states to `out` (for `/health`). The relay itself logs one line when it
/// becomes leader and one when it loses leadership.
async fn forward_states(
    mut states: watch::Receiver<RelayState>,
    out: watch::Sender<RelayState>,
    settings: RelaySettings,
) {
    tracing::info!(
        "campaigning for leadership of outbox schema {:?}; the leader relays to stream {}",
        settings.schema,
        settings.stream
    );
    loop {
        let current = *states.borrow_and_update();
        out.send_replace(current);
        if current == RelayState::Stopped || states.changed().await.is_err() {
            return;
        }
    }
}
