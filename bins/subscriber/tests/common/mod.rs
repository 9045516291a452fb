//! Runs the built `subscriber` binary and publishes test messages.

#![allow(dead_code, unreachable_pub)] // each test file uses a different part

use std::process::Stdio;
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, publish::PublishAck};
use outbox_testkit::TestNats;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;
use tokio::time::{Instant, timeout};

/// Upper bound on one subscriber run, so a hang fails the test instead of stalling CI.
pub const RUN_LIMIT: Duration = Duration::from_secs(60);

/// What a finished run left behind.
#[derive(Debug)]
pub struct Finished {
    pub code: Option<i32>,
    pub stdout: Vec<String>,
    pub stderr: Vec<String>,
}

impl Finished {
    /// The JSON summary: the last stdout line.
    pub fn json(&self) -> serde_json::Value {
        let last = self
            .stdout
            .last()
            .unwrap_or_else(|| panic!("no stdout: {self:#?}"));
        serde_json::from_str(last)
            .unwrap_or_else(|e| panic!("last line is not JSON ({e}): {self:#?}"))
    }

    /// The per-message lines.
    pub fn messages(&self) -> Vec<&str> {
        self.stdout
            .iter()
            .filter(|l| l.starts_with("received message:"))
            .map(String::as_str)
            .collect()
    }

    pub fn stderr_text(&self) -> String {
        self.stderr.join("\n")
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pipe {
    Stdout,
    Stderr,
}

/// A running subscriber whose output can be awaited line by line.
#[derive(Debug)]
pub struct Running {
    child: Child,
    lines: mpsc::UnboundedReceiver<(Pipe, String)>,
    stdout: Vec<String>,
    stderr: Vec<String>,
}

/// The flags that point the subscriber at `nats`' stream and its subjects.
pub fn on(nats: &TestNats) -> Vec<String> {
    vec![
        "--nats-url".into(),
        nats.url().into(),
        "--stream".into(),
        nats.stream_name().into(),
        "--subject".into(),
        format!("{}.>", nats.prefix()),
    ]
}

/// `base` followed by `extra`, as the argument list of a run.
pub fn args<'a>(base: &'a [String], extra: &[&'a str]) -> Vec<&'a str> {
    base.iter()
        .map(String::as_str)
        .chain(extra.iter().copied())
        .collect()
}

/// Starts `subscriber args...` with `NATS_URL` unset and logs at info.
pub fn spawn(args: &[&str]) -> Running {
    spawn_with_env(args, &[])
}

/// `spawn` with extra environment variables.
pub fn spawn_with_env(args: &[&str], env: &[(&str, &str)]) -> Running {
    let mut child = Command::new(env!("CARGO_BIN_EXE_subscriber"))
        .args(args)
        .env_remove("NATS_URL")
        .env("RUST_LOG", "info")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("the subscriber binary starts");
    let (tx, lines) = mpsc::unbounded_channel();
    let stdout = child.stdout.take().expect("piped stdout");
    let stderr = child.stderr.take().expect("piped stderr");
    forward(stdout, Pipe::Stdout, tx.clone());
    forward(stderr, Pipe::Stderr, tx);
    Running {
        child,
        lines,
        stdout: Vec::new(),
        stderr: Vec::new(),
    }
}

fn forward<R>(reader: R, pipe: Pipe, tx: mpsc::UnboundedSender<(Pipe, String)>)
where
    R: tokio::io::AsyncRead + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        let mut lines = BufReader::new(reader).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if tx.send((pipe, line)).is_err() {
                break;
            }
        }
    });
}

impl Running {
    /// Waits until a line of `pipe` contains `needle`; panics after `limit` with what was seen.
    pub async fn wait_for(&mut self, pipe: Pipe, needle: &str, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            let seen = match pipe {
                Pipe::Stdout => &self.stdout,
                Pipe::Stderr => &self.stderr,
            };
            if seen.iter().any(|l| l.contains(needle)) {
                return;
            }
            match tokio::time::timeout_at(deadline, self.lines.recv()).await {
                Ok(Some((p, line))) => self.keep(p, line),
                Ok(None) | Err(_) => panic!(
                    "no {pipe:?} line with {needle:?} within {limit:?}\nstdout: {:#?}\nstderr: {:#?}",
                    self.stdout, self.stderr
                ),
            }
        }
    }

    /// Counts stdout lines containing `needle`, waiting until there are `n` of them.
    pub async fn wait_for_count(&mut self, needle: &str, n: usize, limit: Duration) {
        let deadline = Instant::now() + limit;
        while self.stdout.iter().filter(|l| l.contains(needle)).count() < n {
            match tokio::time::timeout_at(deadline, self.lines.recv()).await {
                Ok(Some((p, line))) => self.keep(p, line),
                Ok(None) | Err(_) => panic!(
                    "fewer than {n} stdout lines with {needle:?} within {limit:?}\nstdout: {:#?}\nstderr: {:#?}",
                    self.stdout, self.stderr
                ),
            }
        }
    }

    fn keep(&mut self, pipe: Pipe, line: String) {
        match pipe {
            Pipe::Stdout => self.stdout.push(line),
            Pipe::Stderr => self.stderr.push(line),
        }
    }

    /// Sends a signal (e.g. "INT", "TERM") to the process.
    pub async fn signal(&self, name: &str) {
        let pid = self.child.id().expect("still running");
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(pid.to_string())
            .status()
            .await
            .expect("kill runs");
        assert!(status.success(), "kill -{name} {pid} failed");
    }

    /// Waits for the process to exit (at most [`RUN_LIMIT`]) and collects all its output.
    pub async fn finish(mut self) -> Finished {
        let status = match timeout(RUN_LIMIT, self.child.wait()).await {
            Ok(status) => status.expect("waiting for the subscriber"),
            Err(_) => {
                let _ = self.child.kill().await;
                panic!(
                    "subscriber still running after {RUN_LIMIT:?}\nstdout: {:#?}\nstderr: {:#?}",
                    self.stdout, self.stderr
                );
            }
        };
        // The pipes close when the process exits; the forwarders then end the channel.
        while let Ok(Some((p, line))) = timeout(Duration::from_secs(5), self.lines.recv()).await {
            self.keep(p, line);
        }
        Finished {
            code: status.code(),
            stdout: self.stdout,
            stderr: self.stderr,
        }
    }
}

/// Runs `subscriber args...` to completion.
pub async fn run(args: &[&str]) -> Finished {
    spawn(args).finish().await
}

/// Runs `subscriber args...` with extra environment variables, to completion.
pub async fn run_with_env(args: &[&str], env: &[(&str, &str)]) -> Finished {
    spawn_with_env(args, env).finish().await
}

/// Runs `subscriber args... --expect 1 --timeout 2 --json` against a server that does not
/// answer, and checks that it logged `retried` at least twice, then gave up with exit code 1
/// and outcome `timeout`. Returns the run for further checks.
pub async fn run_until_timeout(args: &[&str], retried: &str) -> Finished {
    let argv: Vec<&str> = args
        .iter()
        .copied()
        .chain(["--expect", "1", "--timeout", "2", "--json"])
        .collect();
    let done = run(&argv).await;
    assert_eq!(done.code, Some(1), "{done:#?}");
    let stderr = done.stderr_text();
    assert!(
        stderr.matches(retried).count() >= 2,
        "expected retries in the log: {stderr}"
    );
    assert_eq!(done.json()["outcome"], "timeout", "{done:#?}");
    done
}

/// Publishes an order-like event: JSON `{"customer_id": key, "seq": seq}` with the outbox's
/// headers when given. Returns the server's ack.
pub async fn publish(
    js: &jetstream::Context,
    subject: String,
    msg_id: Option<&str>,
    key: Option<&str>,
    seq: u64,
) -> PublishAck {
    let mut headers = HeaderMap::new();
    if let Some(id) = msg_id {
        headers.insert("Nats-Msg-Id", id);
    }
    if let Some(key) = key {
        headers.insert("Outbox-Key", key);
    }
    let payload = serde_json::json!({
        "event_type": "order_created",
        "customer_id": key,
        "seq": seq,
    })
    .to_string();
    js.publish_with_headers(subject, headers, payload.into())
        .await
        .expect("publish sent")
        .await
        .expect("publish acked")
}

/// A TCP port with nothing listening on it (free a moment ago).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}
