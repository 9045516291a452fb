//! Running the built `example` binary in tests: spawn, watch its log lines, signal, talk HTTP.

#![allow(dead_code, unreachable_pub)]

use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use outbox_testkit::{TestDatabase, TestNats};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::watch;

/// The binary under test.
pub const EXAMPLE: &str = env!("CARGO_BIN_EXE_example");

/// A running `example` process; killed when dropped.
pub struct Example {
    name: String,
    child: Child,
    lines: watch::Receiver<Vec<String>>,
}

impl Example {
    /// Starts `example args…` with `RUST_LOG=info` and the given extra environment; its stderr
    /// is collected line by line (and echoed, prefixed by `name`, for failing tests).
    pub fn spawn(name: &str, args: &[String], env: &[(&str, &str)]) -> Self {
        let mut command = Command::new(EXAMPLE);
        command
            .args(args)
            .env_remove("DATABASE_URL")
            .env_remove("NATS_URL")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        for (key, value) in env {
            command.env(key, value);
        }
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {EXAMPLE}: {e}"));
        let stderr = child.stderr.take().expect("stderr is piped");
        let (tx, rx) = watch::channel(Vec::new());
        let prefix = name.to_owned();
        tokio::spawn(async move {
            let mut reader = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                eprintln!("[{prefix}] {line}");
                tx.send_modify(|lines| lines.push(line));
            }
        });
        Self {
            name: name.to_owned(),
            child,
            lines: rx,
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id().expect("the process is running")
    }

    /// Everything logged so far.
    pub fn logs(&self) -> String {
        self.lines.borrow().join("\n")
    }

    /// Waits until a logged line contains `needle`, and returns that line.
    ///
    /// # Panics
    ///
    /// After `timeout`, with the logs.
    pub async fn wait_for_line(&self, needle: &str, timeout: Duration) -> String {
        let mut lines = self.lines.clone();
        let found = tokio::time::timeout(
            timeout,
            lines.wait_for(|lines| lines.iter().any(|l| l.contains(needle))),
        )
        .await;
        match found {
            Ok(Ok(lines)) => lines
                .iter()
                .find(|l| l.contains(needle))
                .cloned()
                .unwrap_or_default(),
            _ => panic!(
                "{}: no log line with {needle:?} within {timeout:?}; logs:\n{}",
                self.name,
                self.logs()
            ),
        }
    }

    /// How many logged lines contain `needle`.
    pub fn count_lines(&self, needle: &str) -> usize {
        self.lines
            .borrow()
            .iter()
            .filter(|l| l.contains(needle))
            .count()
    }

    /// Sends `signal` (e.g. `"TERM"`, `"KILL"`) to the process.
    pub fn signal(&self, signal: &str) {
        let status = std::process::Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid().to_string())
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -{signal} {} failed", self.pid());
    }

    /// Waits for the process to exit.
    ///
    /// # Panics
    ///
    /// After `timeout`, with the logs.
    pub async fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        match tokio::time::timeout(timeout, self.child.wait()).await {
            Ok(Ok(status)) => {
                // Let the reader collect the last lines.
                let mut lines = self.lines.clone();
                let _ =
                    tokio::time::timeout(Duration::from_secs(2), lines.wait_for(|_| false)).await;
                status
            }
            Ok(Err(e)) => panic!("{}: wait failed: {e}", self.name),
            Err(_) => panic!(
                "{}: still running after {timeout:?}; logs:\n{}",
                self.name,
                self.logs()
            ),
        }
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

/// A TCP port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Sends `request`, a whole HTTP/1.1 request with `Connection: close`, to 127.0.0.1:`port`;
/// returns the whole response.
pub async fn exchange(port: u16, request: &str) -> String {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap_or_else(|e| panic!("connect to port {port}: {e}"));
    stream.write_all(request.as_bytes()).await.expect("send");
    let mut response = String::new();
    tokio::time::timeout(
        Duration::from_secs(30),
        stream.read_to_string(&mut response),
    )
    .await
    .expect("a response within 30 s")
    .expect("read");
    response
}

/// One HTTP/1.1 request to 127.0.0.1:`port`; returns the status and the body.
pub async fn http(port: u16, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
    http_with(port, method, path, &[], body).await
}

/// `http` with extra request headers.
pub async fn http_with(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> (u16, String) {
    let body = body.unwrap_or("");
    let extra: String = headers
        .iter()
        .map(|(name, value)| format!("{name}: {value}\r\n"))
        .collect();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\
         Content-Type: application/json\r\n{extra}Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let response = exchange(port, &request).await;
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad response: {response}"));
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// `http` with a JSON body parsed from the response.
pub async fn http_json(
    port: u16,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> (u16, serde_json::Value) {
    http_json_with(port, method, path, &[], body).await
}

/// `http_json` with extra request headers.
pub async fn http_json_with(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> (u16, serde_json::Value) {
    let (status, body) = http_with(port, method, path, headers, body).await;
    let value = serde_json::from_str(&body)
        .unwrap_or_else(|e| panic!("{method} {path} -> {status}: body {body:?} is not JSON: {e}"));
    (status, value)
}

/// Flags that give a run its own outbox schema, app schema, stream and subjects.
pub fn isolation(schema: &str, app_schema: &str, stream: &str, prefix: &str) -> Vec<String> {
    [
        "--schema",
        schema,
        "--app-schema",
        app_schema,
        "--stream",
        stream,
        "--subject-prefix",
        prefix,
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect()
}

/// Converts string slices to owned arguments.
pub fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}

/// Fixtures of one test: two fresh schemas (outbox, app) and a fresh stream.
pub struct Env {
    pub outbox_db: TestDatabase,
    pub app_db: TestDatabase,
    pub nats: TestNats,
}

impl Env {
    pub async fn new() -> Self {
        Self::with_nats(TestNats::new().await).await
    }

    pub async fn with_nats(nats: TestNats) -> Self {
        Env {
            outbox_db: TestDatabase::new().await,
            app_db: TestDatabase::new().await,
            nats,
        }
    }

    /// `DATABASE_URL` and `NATS_URL` of the fixtures.
    pub fn env(&self) -> [(&str, &str); 2] {
        [
            ("DATABASE_URL", self.outbox_db.url()),
            ("NATS_URL", self.nats.url()),
        ]
    }

    /// Starts `example` on the fixtures with `extra` arguments.
    pub fn start(&self, name: &str, extra: &[&str]) -> Example {
        self.start_with(name, extra, &[])
    }

    /// `start` with extra environment variables.
    pub fn start_with(&self, name: &str, extra: &[&str], env: &[(&str, &str)]) -> Example {
        let mut all = isolation(
            self.outbox_db.schema(),
            self.app_db.schema(),
            self.nats.stream_name(),
            self.nats.prefix(),
        );
        all.extend(args(extra));
        let mut vars = self.env().to_vec();
        vars.extend_from_slice(env);
        Example::spawn(name, &all, &vars)
    }

    /// The one value `sql` selects, with `{outbox}` and `{app}` standing for the schemas.
    pub async fn count(&self, sql: &str) -> i64 {
        let client = self.outbox_db.connect().await;
        let sql = sql
            .replace("{outbox}", self.outbox_db.schema())
            .replace("{app}", self.app_db.schema());
        client
            .query_one(&sql, &[])
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
            .get(0)
    }
}
