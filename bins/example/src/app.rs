//! Startup and lifetime of the service: database, schema, HTTP, relay, load generator, signals.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use deadpool_postgres::{ManagerConfig, Pool, RecyclingMethod, Runtime};
use outbox_core::RelayState;
use outbox_postgres::{PgConfig, PgConnectOptions, PgOutbox};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::cli::{Role, Settings};
use crate::load::{self, Outcome};
use crate::orders::Orders;
use crate::{http, retry};

/// Runs the service until it is done (a replica's load) or signalled; `Ok` means exit 0.
pub(crate) async fn run(settings: Settings) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    // Installed before anything else happens: a signal during startup must meet our handler,
    // not the default action (termination without a graceful exit).
    let signals = Signals::install();
    tokio::spawn(watch_signals(signals, shutdown.clone()));
    // Before the relay is built: its metric descriptions go to the recorder installed then.
    let metrics = crate::metrics::install()?;
    tokio::spawn(crate::metrics::upkeep(metrics.clone(), shutdown.clone()));

    let pg_config = pg_config(&settings)?;
    let outbox_config = PgConfig::builder()
        .schema(settings.schema.as_str())
        .build()
        .context("outbox configuration")?;
    let outbox = PgOutbox::new(outbox_config).context("outbox configuration")?;
    let pool = pool(&pg_config, settings.load.concurrency)?;
    let orders = Arc::new(Orders::new(
        pool.clone(),
        outbox.clone(),
        &settings.app_schema,
        settings.subject(),
    ));

    tracing::info!(
        role = settings.role.as_str(),
        database = %settings.database_redacted,
        outbox_schema = %settings.schema,
        app_schema = %settings.app_schema,
        "starting"
    );
    if !prepare_database(&settings, &pg_config, &outbox, &orders, &shutdown).await? {
        tracing::info!("shut down before the database was ready");
        return Ok(());
    }

    if settings.role == Role::Replica && settings.load.orders == 0 && settings.port == 0 {
        tracing::info!(
            "replica without HTTP and without orders: schemas ready, nothing else to do"
        );
        return Ok(());
    }

    let (relay_state, relay_state_rx) = watch::channel(RelayState::Campaigning);
    let relay_clock = http::RelayClock::start(relay_state_rx);
    #[cfg_attr(not(feature = "nats"), allow(unused_mut))]
    let mut broker = http::BrokerProbe::Unused;
    let mut tasks = tokio::task::JoinSet::new();

    match settings.role {
        Role::Leader => {
            #[cfg(feature = "nats")]
            {
                let relay = crate::relay::RelaySettings::from(&settings);
                let (outbox, pg_config, shutdown) =
                    (outbox.clone(), pg_config.clone(), shutdown.clone());
                let (nats, nats_rx) = watch::channel(None);
                broker = http::BrokerProbe::Nats {
                    client: nats_rx,
                    stream: settings.stream.clone(),
                };
                tasks.spawn(async move {
                    crate::relay::run(relay, outbox, pg_config, relay_state, nats, shutdown)
                        .await
                        .context("relay")
                });
            }
            #[cfg(not(feature = "nats"))]
            {
                // main() refuses --role leader without the nats feature.
                drop(relay_state);
                anyhow::bail!("--role leader needs the `nats` feature");
            }
        }
        Role::Replica => {
            // A replica never relays, so `/health` always says `"leading": false`.
            relay_state.send_replace(RelayState::Stopped);
        }
    }

    if settings.port != 0 {
        let addr = SocketAddr::new(settings.host, settings.port);
        let listener = http::bind(addr).await?;
        tracing::info!(
            "HTTP listening on {}",
            listener.local_addr().unwrap_or(addr)
        );
        let service = http::Service {
            orders: orders.clone(),
            role: settings.role,
            relay: relay_clock,
            readiness: http::Readiness {
                pool,
                outbox: outbox.clone(),
                broker,
            },
            metrics: metrics.clone(),
            request_timeout: settings.request_timeout,
        };
        let shutdown = shutdown.clone();
        tasks.spawn(async move {
            http::serve(listener, service, shutdown)
                .await
                .context("HTTP server")
        });
    }

    if settings.metrics_port != 0 {
        let addr = SocketAddr::new(settings.host, settings.metrics_port);
        let listener = http::bind(addr).await?;
        tracing::info!(
            "metrics listening on {}",
            listener.local_addr().unwrap_or(addr)
        );
        let shutdown = shutdown.clone();
        tasks.spawn(async move {
            crate::metrics::serve(listener, metrics, shutdown)
                .await
                .context("metrics server")
        });
    }

    if settings.load.orders > 0 {
        let (orders, plan, shutdown) = (orders.clone(), settings.load, shutdown.clone());
        let role = settings.role;
        tasks.spawn(async move {
            let outcome = load::generate(orders, plan, shutdown.clone()).await?;
            // A replica's work is done; a leader keeps relaying until it is signalled.
            if outcome == Outcome::Completed && role == Role::Replica {
                tracing::info!("replica finished its orders; exiting");
                shutdown.cancel();
            }
            Ok(())
        });
    }

    // The first task to fail stops the others and becomes the exit error.
    let mut failure = None;
    while let Some(joined) = tasks.join_next().await {
        let error = match joined {
            Ok(Ok(())) => continue,
            Ok(Err(error)) => error,
            Err(error) => anyhow::anyhow!("task failed: {error}"),
        };
        shutdown.cancel();
        failure.get_or_insert(error);
    }
    match failure {
        Some(e) => Err(e),
        None => {
            tracing::info!("stopped");
            Ok(())
        }
    }
}

/// The connection settings (TLS and password as the URL says), with the service's defaults for
/// what the URL leaves out.
fn pg_config(settings: &Settings) -> anyhow::Result<PgConnectOptions> {
    let mut options = settings.database.clone();
    let config = options.config_mut();
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(Duration::from_secs(5));
    }
    if config.get_application_name().is_none() {
        config.application_name("outbox-example");
    }
    // A vanished peer is noticed in seconds, not after the kernel's two hours.
    config
        .keepalives(true)
        .keepalives_idle(Duration::from_secs(10))
        .keepalives_interval(Duration::from_secs(2))
        .keepalives_retries(3);
    Ok(options)
}

/// The connection pool of the order transactions (HTTP and generator). It connects lazily, and
/// every wait is bounded, so a database outage turns into errors rather than hung requests.
fn pool(config: &PgConnectOptions, concurrency: usize) -> anyhow::Result<Pool> {
    let manager = config.deadpool_manager(ManagerConfig {
        recycling_method: RecyclingMethod::Fast,
    });
    Pool::builder(manager)
        .max_size(concurrency + 8)
        .wait_timeout(Some(Duration::from_secs(10)))
        .create_timeout(Some(Duration::from_secs(10)))
        .recycle_timeout(Some(Duration::from_secs(5)))
        .runtime(Runtime::Tokio1)
        .build()
        .context("connection pool")
}

/// Connects and creates the outbox and application schemas, retrying while the database is
/// unreachable. Returns `false` if shutdown came first.
async fn prepare_database(
    settings: &Settings,
    pg_config: &PgConnectOptions,
    outbox: &PgOutbox,
    orders: &Orders,
    shutdown: &CancellationToken,
) -> anyhow::Result<bool> {
    let what = format!("connecting to PostgreSQL at {}", settings.database_redacted);
    let step = retry::until_ready(&what, shutdown, StartupError::is_transient, || async {
        let (mut client, connection) = pg_config.connect().await?;
        let connection = tokio::spawn(connection);
        let migrated = async {
            outbox.migrate(&client).await?;
            orders.migrate(&mut client).await?;
            Ok::<_, StartupError>(())
        }
        .await;
        drop(client);
        let _ = connection.await;
        migrated
    })
    .await;
    match step {
        None => Ok(false),
        Some(Ok(())) => {
            tracing::info!(
                "database ready: outbox schema {:?}, app schema {:?}",
                settings.schema,
                settings.app_schema
            );
            Ok(true)
        }
        Some(Err(e)) => Err(anyhow::anyhow!(
            "database {} cannot be used: {}",
            settings.database_redacted,
            crate::report::describe(&e)
        )),
    }
}

/// A failure while connecting or migrating.
#[derive(Debug, thiserror::Error)]
enum StartupError {
    #[error("{0}")]
    Postgres(#[from] tokio_postgres::Error),
    #[error("{0}")]
    Outbox(#[from] outbox_postgres::Error),
}

impl StartupError {
    fn is_transient(&self) -> bool {
        match self {
            StartupError::Postgres(e) => crate::orders::is_transient_pg(e),
            StartupError::Outbox(e) => e.is_transient(),
        }
    }
}

/// Cancels `shutdown` on the first SIGINT or SIGTERM; a second one exits at once.
async fn watch_signals(mut signals: Signals, shutdown: CancellationToken) {
    let mut received = 0;
    loop {
        let name = signals.next().await;
        received += 1;
        if received == 1 {
            tracing::info!("received {name}: shutting down (send again to exit at once)");
            shutdown.cancel();
        } else {
            tracing::warn!("received {name} again: exiting now");
            std::process::exit(130);
        }
    }
}

/// SIGINT and SIGTERM, registered with the runtime when installed.
#[cfg(unix)]
struct Signals {
    interrupt: Option<tokio::signal::unix::Signal>,
    terminate: Option<tokio::signal::unix::Signal>,
}

#[cfg(unix)]
impl Signals {
    fn install() -> Self {
        use tokio::signal::unix::{SignalKind, signal};
        let install = |kind: SignalKind, name: &str| {
            signal(kind)
                .map_err(|e| tracing::warn!("cannot listen for {name}: {e}"))
                .ok()
        };
        Self {
            interrupt: install(SignalKind::interrupt(), "SIGINT"),
            terminate: install(SignalKind::terminate(), "SIGTERM"),
        }
    }

    async fn next(&mut self) -> &'static str {
        async fn recv(signal: &mut Option<tokio::signal::unix::Signal>) -> Option<()> {
            match signal {
                Some(signal) => signal.recv().await,
                None => std::future::pending().await,
            }
        }
        tokio::select! {
            Some(()) = recv(&mut self.interrupt) => "SIGINT",
            Some(()) = recv(&mut self.terminate) => "SIGTERM",
            else => std::future::pending().await,
        }
    }
}

#[cfg(not(unix))]
struct Signals;

#[cfg(not(unix))]
impl Signals {
    fn install() -> Self {
        Self
    }

    async fn next(&mut self) -> &'static str {
        let _ = tokio::signal::ctrl_c().await;
        "Ctrl-C"
    }
}
