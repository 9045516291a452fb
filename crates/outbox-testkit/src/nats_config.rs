use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::process::{Child, Command};

/// A `nats-server` run from a configuration file of the test's own (TLS, users, operator
/// mode), on a free port of 127.0.0.1, with JetStream storing in a temporary directory that is
/// removed on drop.
///
/// The file given to [`start`](Self::start) is the test's configuration; `listen` and the
/// JetStream `store_dir` are added in front of it.
///
/// # Examples
///
/// ```no_run
/// # #[tokio::main] async fn main() {
/// let server = outbox_testkit::ConfiguredNatsServer::start(
///     r#"authorization { token: "t0ken" }"#,
/// )
/// .await;
/// let url = format!("nats://t0ken@127.0.0.1:{}", server.port());
/// # }
/// ```
#[derive(Debug)]
pub struct ConfiguredNatsServer {
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl ConfiguredNatsServer {
    /// Writes the configuration and starts the server; returns once it accepts connections.
    ///
    /// # Panics
    ///
    /// When `nats-server` is not installed, rejects the configuration, or does not start.
    pub async fn start(config: &str) -> Self {
        let port = crate::nats::free_port();
        let dir = std::env::temp_dir().join(format!("outbox-nats-conf-{}", crate::unique_suffix()));
        let store = dir.join("jetstream");
        std::fs::create_dir_all(&store).unwrap_or_else(|e| panic!("{}: {e}", store.display()));
        let file = dir.join("server.conf");
        let text = format!(
            "listen: \"127.0.0.1:{port}\"\njetstream {{\n  store_dir: {}\n}}\n{config}\n",
            quote(&store)
        );
        std::fs::write(&file, text).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let log_path = dir.join("server.log");
        let log = std::fs::File::create(&log_path)
            .unwrap_or_else(|e| panic!("{}: {e}", log_path.display()));
        let mut child = Command::new(crate::nats::nats_server_binary())
            .arg("-c")
            .arg(&file)
            .kill_on_drop(true)
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start nats-server (is it installed?): {e}"));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "nats-server exited with {status}: {}",
                    std::fs::read_to_string(&log_path).unwrap_or_default()
                );
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "nats-server did not start on port {port}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Self {
            port,
            dir,
            child: Some(child),
        }
    }

    /// The port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }
}

/// `path` as a quoted string of the configuration language.
pub(crate) fn quote(path: &Path) -> String {
    format!("{:?}", path.display().to_string())
}

impl Drop for ConfiguredNatsServer {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.start_kill();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
