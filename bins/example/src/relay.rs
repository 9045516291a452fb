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
    nats: outbox_nats::NatsConnectOptions,
    nats_redacted: String,
    stream: String,
    stream_subjects: String,
    schema: String,
    backlog_interval: Duration,
}

impl From<&Settings> for RelaySettings {
    fn from(settings: &Settings) -> Self {
        RelaySettings {
            nats: settings.nats.clone(),
            nats_redacted: settings.nats_redacted.clone(),
            stream: settings.stream.clone(),
            stream_subjects: settings.stream_subjects(),
            schema: settings.schema.clone(),
            backlog_interval: settings.backlog_interval,
        }
    }
}

/// Connects to NATS, provisions the stream, then runs the relay until `shutdown`; relay states
/// go to `state` (for `/health`) and are logged, the NATS client to `nats` once connected (for
/// `/ready`).
///
/// NATS being down at startup is retried with backoff; once connected, the client reconnects
/// by itself and the relay retries failed publishes.
pub(crate) async fn run(
    settings: RelaySettings,
    outbox: PgOutbox,
    pg_config: outbox_postgres::PgConnectOptions,
    state: watch::Sender<RelayState>,
    nats: watch::Sender<Option<async_nats::Client>>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let what = format!("connecting to NATS at {}", settings.nats_redacted);
    let options = settings
        .nats
        .clone()
        .name("outbox-example")
        .connection_timeout(Duration::from_secs(5));
    // Refused credentials end the service; an unreachable server is waited for.
    let connected = retry::until_ready(&what, &shutdown, outbox_nats::Error::is_transient, || {
        options.connect()
    })
    .await;
    let client = match connected {
        None => return Ok(()),
        Some(result) => result.context("NATS")?,
    };
    tracing::info!("connected to NATS at {}", settings.nats_redacted);
    nats.send_replace(Some(client.clone()));

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

    let store = PgStore::with_connect_options(&outbox, &pg_config);
    let elector = store.elector();
    let config = RelayConfig::builder()
        .backlog_interval(settings.backlog_interval)
        .build()
        .context("relay configuration")?;
    let relay = Relay::new(store, publisher, elector, config).context("relay configuration")?;
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
