//! The server `EnqueueMode::WalMessage` is measured on: `DATABASE_URL`'s if it runs with
//! `wal_level = logical`, else a temporary cluster of the bench's own, since the shared server
//! must not be restarted to change its `wal_level`.

use std::any::Any;
use std::path::Path;

use anyhow::Context as _;
use outbox_postgres::PgConnectOptions;
use outbox_testkit::{PgCluster, PgClusterConfig};
use serde_json::{Value, json};

use crate::env::{Env, pg_client};
use crate::progress::Progress;

/// Settings of the temporary cluster, after the test kit's own (later lines win): `initdb`'s
/// defaults where the test kit departs from them for speed (`fsync`, `shared_buffers`), and
/// what the WAL mode needs. Replication connections (`replication=database`) match `pg_hba.conf`
/// lines by database name, so the `host all` line lets the relay's ingest in.
const CLUSTER_SETTINGS: [&str; 7] = [
    "wal_level = logical",
    "max_replication_slots = 20",
    "max_wal_senders = 20",
    "fsync = on",
    "shared_buffers = 128MB",
    "max_connections = 100",
    "log_connections = off",
];

/// The settings reported with the figures.
const REPORTED: [&str; 7] = [
    "wal_level",
    "shared_buffers",
    "synchronous_commit",
    "fsync",
    "full_page_writes",
    "max_wal_size",
    "wal_compression",
];

/// A server with `wal_level = logical`.
#[derive(Debug)]
pub(crate) struct WalServer {
    pub(crate) pg: PgConnectOptions,
    /// Where it is, its version and settings, for the record.
    pub(crate) description: Value,
    /// `None`: `DATABASE_URL`'s server.
    cluster: Option<PgCluster>,
}

impl WalServer {
    /// `DATABASE_URL`'s server if its `wal_level` is `logical`, else a temporary cluster.
    /// `Ok(Err(reason))` when there is neither (no server binaries, the cluster did not start):
    /// a reason to skip, not a failure.
    pub(crate) async fn start(env: &Env) -> anyhow::Result<Result<WalServer, String>> {
        let client = env.pg_client().await?;
        let level: String = client
            .query_one("SELECT current_setting('wal_level')", &[])
            .await?
            .try_get(0)?;
        if level == "logical" {
            let description = describe(&env.pg, "DATABASE_URL".to_owned()).await?;
            return Ok(Ok(WalServer {
                pg: env.pg.clone(),
                description,
                cluster: None,
            }));
        }
        let progress = Progress::counter("cluster (wal=logical)");
        let server = Self::cluster().await;
        progress.done();
        Ok(server)
    }

    async fn cluster() -> Result<WalServer, String> {
        let mut config = PgClusterConfig::new().hba("host all all 127.0.0.1/32 trust");
        for setting in CLUSTER_SETTINGS {
            config = config.setting(setting);
        }
        // The test kit panics when initdb or the server fails (with their output): caught, so
        // that the bench reports it and goes on.
        let cluster = match tokio::spawn(PgCluster::start(config)).await {
            Ok(Ok(cluster)) => cluster,
            Ok(Err(reason)) => return Err(reason),
            Err(error) if error.is_panic() => {
                return Err(format!(
                    "the temporary cluster did not start: {}",
                    panic_message(error.into_panic().as_ref())
                ));
            }
            Err(error) => return Err(format!("the temporary cluster did not start: {error}")),
        };
        let url = format!(
            "postgres://postgres@127.0.0.1:{}/postgres?sslmode=disable",
            cluster.port()
        );
        let described = async {
            let pg = PgConnectOptions::from_url(&url)?;
            let data = cluster.socket_dir();
            let place = format!(
                "temporary cluster: initdb defaults, wal_level=logical, fsync on, data in {} ({})",
                data.display(),
                filesystem(data).unwrap_or_else(|| "filesystem unknown".to_owned())
            );
            let description = describe(&pg, place).await?;
            anyhow::Ok((pg, description))
        }
        .await;
        match described {
            Ok((pg, description)) => Ok(WalServer {
                pg,
                description,
                cluster: Some(cluster),
            }),
            Err(error) => {
                let reason = format!("the temporary cluster does not answer: {error:#}");
                stop(cluster).await;
                Err(reason)
            }
        }
    }

    /// Stops and removes the temporary cluster, if there is one.
    pub(crate) async fn stop(self) {
        if let Some(cluster) = self.cluster {
            stop(cluster).await;
        }
    }

    /// Whether this is a server of its own, beside `DATABASE_URL`'s.
    pub(crate) fn separate(&self) -> bool {
        self.cluster.is_some()
    }
}

/// Stopping waits for `pg_ctl`: off the runtime's threads.
async fn stop(cluster: PgCluster) {
    let _ = tokio::task::spawn_blocking(move || drop(cluster)).await;
}

/// Where the server is, its version and the settings that bear on commit rates.
async fn describe(pg: &PgConnectOptions, place: String) -> anyhow::Result<Value> {
    let client = pg_client(pg)
        .await
        .context("connecting to the WAL server")?;
    let mut description = serde_json::Map::new();
    description.insert("where".into(), json!(place));
    let version: String = client
        .query_one("SHOW server_version", &[])
        .await?
        .try_get(0)?;
    description.insert("postgres".into(), json!(version));
    for name in REPORTED {
        let value: String = client
            .query_one("SELECT current_setting($1)", &[&name])
            .await?
            .try_get(0)?;
        description.insert(name.into(), json!(value));
    }
    Ok(Value::Object(description))
}

/// The type of the filesystem holding `path` (`ext4`, `tmpfs`, ...), from `/proc/mounts`: on
/// `tmpfs` an fsync costs nothing, which would flatter every commit rate measured there.
fn filesystem(path: &Path) -> Option<String> {
    let mounts = std::fs::read_to_string("/proc/mounts").ok()?;
    let path = path.canonicalize().ok()?;
    mounts
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let _device = fields.next()?;
            let mount = fields.next()?;
            let kind = fields.next()?;
            path.starts_with(mount)
                .then(|| (mount.len(), kind.to_owned()))
        })
        .max_by_key(|(len, _)| *len)
        .map(|(_, kind)| kind)
}

fn panic_message(panic: &(dyn Any + Send)) -> String {
    if let Some(message) = panic.downcast_ref::<String>() {
        message.clone()
    } else if let Some(message) = panic.downcast_ref::<&str>() {
        (*message).to_owned()
    } else {
        "a panic without a message".to_owned()
    }
}
