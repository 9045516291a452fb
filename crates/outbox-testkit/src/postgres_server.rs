use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio_postgres::NoTls;

/// How to set up a [`PgCluster`]: `pg_hba.conf` lines, TLS files, extra settings.
#[derive(Clone, Debug, Default)]
pub struct PgClusterConfig {
    hba: Vec<String>,
    tls: Option<(PathBuf, PathBuf)>,
    client_ca: Option<PathBuf>,
    settings: Vec<String>,
}

impl PgClusterConfig {
    /// A cluster reachable only by the superuser `postgres` over its socket (trust).
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a `pg_hba.conf` line (after the superuser's socket line, in order).
    pub fn hba(mut self, line: &str) -> Self {
        self.hba.push(line.to_owned());
        self
    }

    /// Turns on `ssl` with this certificate and key (PEM files, copied into the data directory).
    pub fn tls(mut self, cert: &Path, key: &Path) -> Self {
        self.tls = Some((cert.to_owned(), key.to_owned()));
        self
    }

    /// Sets `ssl_ca_file`: the CA whose client certificates the server accepts.
    pub fn client_ca(mut self, ca: &Path) -> Self {
        self.client_ca = Some(ca.to_owned());
        self
    }

    /// Adds a `postgresql.conf` line.
    pub fn setting(mut self, line: &str) -> Self {
        self.settings.push(line.to_owned());
        self
    }
}

/// A throwaway PostgreSQL cluster: `initdb` in a temporary directory, `postgres` as a child
/// process listening on 127.0.0.1 and a free port, for tests that need a server configured
/// their way (TLS, `pg_hba.conf`). Stopped and removed on drop.
///
/// Run as root, the server runs as the `postgres` user (through `setpriv`), since PostgreSQL
/// refuses to run as root. The binaries are looked up in `PG_BIN`, then
/// `/usr/lib/postgresql/<version>/bin`, then `PATH`.
#[derive(Debug)]
pub struct PgCluster {
    root: PathBuf,
    data: PathBuf,
    port: u16,
    bin: PathBuf,
    run_as: Option<(u32, u32)>,
    child: Option<Child>,
}

impl PgCluster {
    /// Where the PostgreSQL server binaries are, or why there are none (a reason to skip).
    pub fn binaries() -> Result<PathBuf, String> {
        let has_tools = |dir: &Path| dir.join("initdb").exists() && dir.join("postgres").exists();
        if let Ok(dir) = std::env::var("PG_BIN") {
            let dir = PathBuf::from(dir);
            return if has_tools(&dir) {
                Ok(dir)
            } else {
                Err(format!(
                    "PG_BIN={} has no initdb and postgres",
                    dir.display()
                ))
            };
        }
        let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
            .map(|entries| entries.flatten().map(|e| e.path().join("bin")).collect())
            .unwrap_or_default();
        versions.sort();
        if let Some(dir) = versions.into_iter().rev().find(|dir| has_tools(dir)) {
            return Ok(dir);
        }
        std::env::var_os("PATH")
            .into_iter()
            .flat_map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
            .find(|dir| has_tools(dir))
            .ok_or_else(|| {
                "no PostgreSQL server binaries (initdb, postgres): install PostgreSQL or set PG_BIN"
                    .to_owned()
            })
    }

    /// Creates and starts a cluster, waiting until it accepts connections.
    ///
    /// # Errors
    ///
    /// A reason to skip the test: no server binaries, or root without a `postgres` user to run
    /// the server as.
    ///
    /// # Panics
    ///
    /// When `initdb` or the server fails: the message holds their output.
    pub async fn start(config: PgClusterConfig) -> Result<Self, String> {
        let bin = Self::binaries()?;
        let run_as = if effective_uid() == Some(0) {
            Some(user_ids("postgres").ok_or_else(|| {
                "running as root and there is no `postgres` user to run PostgreSQL as".to_owned()
            })?)
        } else {
            None
        };
        let root = std::env::temp_dir().join(format!("outbox-pg-{}", crate::unique_suffix()));
        let data = root.join("data");
        std::fs::create_dir_all(&root).unwrap_or_else(|e| panic!("{}: {e}", root.display()));
        let mut cluster = Self {
            root,
            data,
            port: crate::nats::free_port(),
            bin,
            run_as,
            child: None,
        };
        cluster.chown(&cluster.root.clone());
        cluster.initdb();
        cluster.configure(&config);
        cluster.launch().await;
        Ok(cluster)
    }

    /// The TCP port (on 127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The directory of the server's Unix socket.
    pub fn socket_dir(&self) -> &Path {
        &self.root
    }

    /// A superuser connection over the Unix socket (trust), for setting up roles and databases.
    ///
    /// # Panics
    ///
    /// When the server does not answer.
    pub async fn admin(&self) -> tokio_postgres::Client {
        self.try_admin()
            .await
            .unwrap_or_else(|e| panic!("cannot connect to the test cluster: {e}"))
    }

    /// Runs `sql` as the superuser, in one implicit transaction (so not `CREATE DATABASE`
    /// together with other statements).
    ///
    /// # Panics
    ///
    /// When the statement fails.
    pub async fn execute(&self, sql: &str) {
        self.admin()
            .await
            .batch_execute(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {}", outbox_core::redact::error_chain(&e)));
    }

    /// The server's log so far (for a failing test's message).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.root.join("server.log")).unwrap_or_default()
    }

    async fn try_admin(&self) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        let mut config = tokio_postgres::Config::new();
        config
            .host_path(&self.root)
            .port(self.port)
            .user("postgres")
            .dbname("postgres")
            .connect_timeout(Duration::from_secs(5));
        let (client, connection) = config.connect(NoTls).await?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(client)
    }

    /// A command that runs `program` as the server's user.
    fn command(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        match self.run_as {
            Some((uid, gid)) => {
                let mut command = Command::new("setpriv");
                command
                    .arg(format!("--reuid={uid}"))
                    .arg(format!("--regid={gid}"))
                    .arg("--clear-groups")
                    .arg(path);
                command
            }
            None => Command::new(path),
        }
    }

    fn chown(&self, path: &Path) {
        #[cfg(unix)]
        if let Some((uid, gid)) = self.run_as {
            std::os::unix::fs::chown(path, Some(uid), Some(gid))
                .unwrap_or_else(|e| panic!("chown {}: {e}", path.display()));
        }
    }

    fn initdb(&self) {
        let output = self
            .command("initdb")
            .arg("-D")
            .arg(&self.data)
            .args([
                "-U",
                "postgres",
                "--auth=trust",
                "--no-sync",
                "-E",
                "UTF8",
                "--locale=C",
            ])
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run initdb: {e}"));
        assert!(
            output.status.success(),
            "initdb failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }

    fn configure(&self, config: &PgClusterConfig) {
        let mut conf = vec![
            "listen_addresses = '127.0.0.1'".to_owned(),
            format!("port = {}", self.port),
            format!("unix_socket_directories = '{}'", self.root.display()),
            "fsync = off".to_owned(),
            "max_connections = 30".to_owned(),
            "shared_buffers = 16MB".to_owned(),
            "log_connections = on".to_owned(),
        ];
        if let Some((cert, key)) = &config.tls {
            self.copy_private(cert, "server.crt");
            self.copy_private(key, "server.key");
            conf.push("ssl = on".to_owned());
            conf.push("ssl_cert_file = 'server.crt'".to_owned());
            conf.push("ssl_key_file = 'server.key'".to_owned());
        }
        if let Some(ca) = &config.client_ca {
            self.copy_private(ca, "client_ca.crt");
            conf.push("ssl_ca_file = 'client_ca.crt'".to_owned());
        }
        conf.extend(config.settings.iter().cloned());
        let path = self.data.join("postgresql.conf");
        let mut text = std::fs::read_to_string(&path).unwrap_or_default();
        text.push('\n');
        text.push_str(&conf.join("\n"));
        text.push('\n');
        std::fs::write(&path, text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));

        let mut hba = vec!["local all postgres trust".to_owned()];
        hba.extend(config.hba.iter().cloned());
        let path = self.data.join("pg_hba.conf");
        std::fs::write(&path, hba.join("\n") + "\n")
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    }

    /// Copies `from` into the data directory as `name`, readable by the server's user only (the
    /// server refuses a key that others may read).
    fn copy_private(&self, from: &Path, name: &str) {
        let to = self.data.join(name);
        std::fs::copy(from, &to).unwrap_or_else(|e| panic!("{}: {e}", from.display()));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o600))
                .unwrap_or_else(|e| panic!("{}: {e}", to.display()));
        }
        self.chown(&to);
    }

    async fn launch(&mut self) {
        let log_path = self.root.join("server.log");
        let log = std::fs::File::create(&log_path)
            .unwrap_or_else(|e| panic!("{}: {e}", log_path.display()));
        let err = log
            .try_clone()
            .unwrap_or_else(|e| panic!("{}: {e}", log_path.display()));
        let child = self
            .command("postgres")
            .arg("-D")
            .arg(&self.data)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start postgres: {e}"));
        self.child = Some(child);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            if self.try_admin().await.is_ok() {
                return;
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("postgres exited with {status}: {}", self.log());
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "postgres did not accept connections within 30 s: {}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // A fast shutdown ends the backends and removes shared memory; a kill is the
            // fallback if pg_ctl cannot do it.
            let stopped = self
                .command("pg_ctl")
                .arg("-D")
                .arg(&self.data)
                .args(["stop", "-m", "fast", "-w", "-t", "20"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if !stopped {
                let _ = child.kill();
            }
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// This process's effective user id, from `/proc` or `id -u`.
fn effective_uid() -> Option<u32> {
    if let Ok(status) = std::fs::read_to_string("/proc/self/status") {
        let uid = status
            .lines()
            .find_map(|line| line.strip_prefix("Uid:"))
            .and_then(|ids| ids.split_whitespace().nth(1))
            .and_then(|id| id.parse().ok());
        if uid.is_some() {
            return uid;
        }
    }
    let output = Command::new("id").arg("-u").output().ok()?;
    String::from_utf8_lossy(&output.stdout).trim().parse().ok()
}

/// The user and group ids of `user`.
fn user_ids(user: &str) -> Option<(u32, u32)> {
    let id = |flag: &str| {
        let output = Command::new("id").args([flag, user]).output().ok()?;
        if !output.status.success() {
            return None;
        }
        String::from_utf8_lossy(&output.stdout).trim().parse().ok()
    };
    Some((id("-u")?, id("-g")?))
}
