//! The servers under test, and the fresh schema and stream each scenario runs in.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use async_nats::jetstream;
use outbox_nats::{StreamSpec, ensure_stream};
use outbox_postgres::{EnqueueMode, PgConfig, PgConnectOptions, PgOutbox, WakeUp};
use serde::Serialize;

use crate::cli::Servers;

/// What produced the figures.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct Versions {
    pub(crate) outbox: &'static str,
    pub(crate) rustc: &'static str,
    pub(crate) postgres: String,
    /// How the bench reaches PostgreSQL: TCP or a Unix socket, with or without TLS. On one
    /// machine TLS only encrypts a local socket, yet costs both ends CPU the figures then miss.
    pub(crate) postgres_connection: String,
    pub(crate) nats: String,
}

/// Connections to the servers under test.
#[derive(Debug)]
pub(crate) struct Env {
    /// PostgreSQL as `DATABASE_URL` says: TLS, certificates, password (libpq's parameters).
    pub(crate) pg: PgConnectOptions,
    pub(crate) servers: Servers,
    pub(crate) versions: Versions,
    /// Makes this run's schema and stream names unique.
    run_id: String,
    next_fixture: AtomicU32,
}

impl Env {
    /// Checks both servers answer and records their versions.
    pub(crate) async fn connect(servers: &Servers) -> anyhow::Result<Env> {
        let pg = PgConnectOptions::from_url(&servers.database_url)
            .context("--database-url / DATABASE_URL is not usable")?;
        let client = pg_client(&pg)
            .await
            .context("connecting to PostgreSQL (is it running? see `make services`)")?;
        let row = client.query_one("SHOW server_version", &[]).await?;
        let postgres: String = row.try_get(0)?;
        let postgres_connection = connection(&client).await?;
        let nats = nats_client(&servers.nats_url)
            .await
            .context("connecting to NATS (is it running with JetStream? see `make services`)")?;
        let versions = Versions {
            outbox: env!("CARGO_PKG_VERSION"),
            rustc: env!("BENCH_RUSTC_VERSION"),
            postgres,
            postgres_connection,
            nats: nats.server_info().version,
        };
        let run_id = format!("{:06x}", rand::random::<u32>() & 0xff_ffff);
        Ok(Env {
            pg,
            servers: servers.clone(),
            versions,
            run_id,
            next_fixture: AtomicU32::new(1),
        })
    }

    pub(crate) async fn pg_client(&self) -> anyhow::Result<tokio_postgres::Client> {
        pg_client(&self.pg).await
    }

    /// Lets the machine settle before a measured run: flushes the server's dirty buffers
    /// (`CHECKPOINT`), so that what one run wrote is not written out, with full-page images in
    /// the WAL after it, while the next one is measured; then the kernel's dirty pages (`sync`),
    /// or the next run's writes (PostgreSQL's and JetStream's) stall behind the writeback of
    /// the last one's, for up to 100-200 ms at a time. `CHECKPOINT` needs a superuser or
    /// `pg_checkpoint`, and the server on this host for `sync` to reach its files; returns what
    /// happened, for the record.
    pub(crate) async fn settle(&self) -> String {
        self.settle_servers(&[&self.pg]).await
    }

    /// [`settle`](Env::settle) with a `CHECKPOINT` on each of `servers` (the scenario's, and
    /// another one a scenario keeps running beside it, whose checkpointer would otherwise write
    /// during the next run).
    pub(crate) async fn settle_servers(&self, servers: &[&PgConnectOptions]) -> String {
        let checkpoint = async {
            for server in servers {
                let client = pg_client(server).await?;
                client.batch_execute("CHECKPOINT").await?;
            }
            anyhow::Ok(())
        }
        .await;
        let sync = tokio::process::Command::new("sync").status().await;
        let checkpoint = match checkpoint {
            Ok(()) => "done".to_owned(),
            Err(error) => format!("skipped: {error:#}"),
        };
        let sync = match sync {
            Ok(status) if status.success() => "done".to_owned(),
            Ok(status) => format!("failed: {status}"),
            Err(error) => format!("skipped: {error}"),
        };
        format!("checkpoint {checkpoint}, sync {sync}")
    }

    pub(crate) async fn nats(&self) -> anyhow::Result<async_nats::Client> {
        nats_client(&self.servers.nats_url).await
    }

    /// A fresh outbox schema (migrated, with an `orders` table for producers) and a fresh
    /// JetStream stream capturing its subject.
    pub(crate) async fn fixture(&self, label: &str, wake_up: WakeUp) -> anyhow::Result<Fixture> {
        self.fixture_on(&self.pg, label, wake_up, EnqueueMode::Insert)
            .await
    }

    /// [`fixture`](Env::fixture) on the server `pg` connects to, enqueueing as `mode` says (with
    /// [`EnqueueMode::WalMessage`], the migration also creates the outbox's replication slot and
    /// publication, which [`Fixture::cleanup`] drops).
    pub(crate) async fn fixture_on(
        &self,
        pg: &PgConnectOptions,
        label: &str,
        wake_up: WakeUp,
        mode: EnqueueMode,
    ) -> anyhow::Result<Fixture> {
        let index = self.next_fixture.fetch_add(1, Ordering::Relaxed);
        let tag = format!("{}_{index}_{label}", self.run_id);
        let schema = format!("bench_{tag}");
        let config = PgConfig::builder()
            .schema(schema.as_str())
            .wake_up(wake_up)
            .enqueue_mode(mode)
            .build()?;
        let outbox = PgOutbox::new(config)?;
        let admin = pg_client(pg).await?;
        if let Err(error) = outbox.migrate(&admin).await {
            // The tables may exist by now (the WAL mode sets up its slot after them).
            if mode == EnqueueMode::WalMessage {
                let _ = outbox.drop_wal_slot(&admin).await;
            }
            let _ = admin
                .batch_execute(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
                .await;
            return Err(error.into());
        }
        admin
            .batch_execute(&format!(
                "CREATE TABLE \"{schema}\".orders (
                     id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                     customer text NOT NULL,
                     total bigint NOT NULL,
                     created_at timestamptz NOT NULL DEFAULT now())"
            ))
            .await?;
        let stream = format!("BENCH_{}", tag.to_uppercase());
        let subject = format!("bench.{}.{index}.created", self.run_id);
        let js = jetstream::new(self.nats().await?);
        ensure_stream(&js, &StreamSpec::new(stream.as_str(), [subject.as_str()])).await?;
        Ok(Fixture {
            schema,
            stream,
            subject,
            outbox,
            pg: pg.clone(),
            admin,
            js,
        })
    }
}

/// One scenario's schema and stream; [`Fixture::cleanup`] removes both.
#[derive(Debug)]
pub(crate) struct Fixture {
    pub(crate) schema: String,
    pub(crate) stream: String,
    pub(crate) subject: String,
    pub(crate) outbox: PgOutbox,
    /// The server the schema is on.
    pub(crate) pg: PgConnectOptions,
    /// A connection for set-up and checks, never timed.
    pub(crate) admin: tokio_postgres::Client,
    pub(crate) js: jetstream::Context,
}

impl Fixture {
    /// Rows still in the outbox.
    pub(crate) async fn outbox_len(&self) -> anyhow::Result<u64> {
        let row = self
            .admin
            .query_one(
                &format!("SELECT count(*) FROM \"{}\".messages", self.schema),
                &[],
            )
            .await?;
        Ok(u64::try_from(row.try_get::<_, i64>(0)?).unwrap_or(0))
    }

    /// Messages stored in the stream.
    pub(crate) async fn stream_len(&self) -> anyhow::Result<u64> {
        let mut stream = self.js.get_stream(&self.stream).await?;
        Ok(stream.info().await?.state.messages)
    }

    /// Whether the outbox enqueues through the WAL (and so has a replication slot).
    pub(crate) fn wal(&self) -> bool {
        self.outbox.config().enqueue_mode == EnqueueMode::WalMessage
    }

    /// Drops the slot (if the outbox has one), the schema, and deletes the stream; failures are
    /// reported, not fatal.
    pub(crate) async fn cleanup(self) {
        if self.wal() {
            self.drop_wal_slot().await;
        }
        let drop = format!("DROP SCHEMA IF EXISTS \"{}\" CASCADE", self.schema);
        if let Err(error) = self.admin.batch_execute(&drop).await {
            tracing::warn!(%error, schema = %self.schema, "could not drop the bench schema");
        }
        if let Err(error) = self.js.delete_stream(&self.stream).await {
            tracing::warn!(%error, stream = %self.stream, "could not delete the bench stream");
        }
    }

    /// Drops the outbox's replication slot and publication, or the server keeps WAL for it
    /// forever. The walsender of a relay just stopped may hold the slot for a moment: retried
    /// for a few seconds, then that walsender is ended.
    async fn drop_wal_slot(&self) {
        let slot = self.outbox.config().wal_slot();
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut terminated = false;
        loop {
            let error = match self.outbox.drop_wal_slot(&self.admin).await {
                Ok(()) => return,
                Err(error) => error,
            };
            if Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            if terminated {
                tracing::warn!(%error, %slot, "could not drop the bench's replication slot: drop it by hand, or the server keeps WAL for it");
                return;
            }
            terminated = true;
            let _ = self
                .admin
                .execute(
                    "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots \
                     WHERE slot_name = $1 AND active_pid IS NOT NULL",
                    &[&slot],
                )
                .await;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// How `client` is connected, e.g. "TCP, TLSv1.3" or "Unix socket, no TLS".
async fn connection(client: &tokio_postgres::Client) -> anyhow::Result<String> {
    let row = client
        .query_one(
            "SELECT inet_server_addr() IS NULL AS socket, s.ssl, s.version \
             FROM pg_stat_ssl s WHERE s.pid = pg_backend_pid()",
            &[],
        )
        .await?;
    let transport = if row.try_get("socket")? {
        "Unix socket"
    } else {
        "TCP"
    };
    let tls: bool = row.try_get("ssl")?;
    let version: Option<String> = row.try_get("version")?;
    Ok(match (tls, version) {
        (true, Some(version)) => format!("{transport}, {version}"),
        (true, None) => format!("{transport}, TLS"),
        (false, _) => format!("{transport}, no TLS"),
    })
}

pub(crate) async fn pg_client(
    options: &PgConnectOptions,
) -> anyhow::Result<tokio_postgres::Client> {
    let (client, connection) = options.connect().await?;
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::debug!(%error, "bench connection ended");
        }
    });
    Ok(client)
}

/// Connects to `url` with the credentials and TLS settings of the `NATS_*` variables.
pub(crate) async fn nats_client(url: &str) -> anyhow::Result<async_nats::Client> {
    let client = outbox_nats::NatsConnectOptions::new(url)?
        .with_security(&outbox_nats::NatsSecurity::from_env())?
        .name("outbox-bench")
        .connect()
        .await?;
    // The server's INFO (version, max_payload) arrives with the connection; make sure it did.
    for _ in 0..100 {
        if !client.server_info().version.is_empty() {
            return Ok(client);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    bail!(
        "NATS at {} sent no server info",
        outbox_core::redact::redact_url(url)
    )
}
