use std::path::PathBuf;
use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream};
use futures::StreamExt;
use tokio::process::{Child, Command};

use crate::Received;

/// The NATS server used when `NATS_URL` is unset.
pub const DEFAULT_NATS_URL: &str = "nats://127.0.0.1:4222";

/// A fresh JetStream stream on subjects `<prefix>.>`, with a 2-minute duplicate window, deleted
/// when the fixture is dropped.
///
/// # Examples
///
/// ```no_run
/// # #[tokio::main] async fn main() {
/// let nats = outbox_testkit::TestNats::new().await;
/// nats.jetstream().publish(nats.subject("a"), "x".into()).await.unwrap().await.unwrap();
/// assert_eq!(nats.wait_for_stream(1, std::time::Duration::from_secs(5)).await.len(), 1);
/// # }
/// ```
#[derive(Debug)]
pub struct TestNats {
    url: String,
    client: async_nats::Client,
    stream_name: String,
    prefix: String,
}

impl TestNats {
    /// Connects to `NATS_URL` (or the default) and creates the stream.
    ///
    /// # Panics
    ///
    /// When NATS does not answer or JetStream is not enabled, with a message saying what to start.
    pub async fn new() -> Self {
        let url = std::env::var("NATS_URL").unwrap_or_else(|_| DEFAULT_NATS_URL.to_owned());
        Self::on(&url).await
    }

    /// Like [`new`](TestNats::new), on the server at `url`.
    ///
    /// # Panics
    ///
    /// When NATS does not answer or JetStream is not enabled.
    pub async fn on(url: &str) -> Self {
        let client = async_nats::connect(url).await.unwrap_or_else(|e| {
            panic!(
                "NATS at {url} does not answer ({e}). Start nats-server with JetStream \
                 (`nats-server -js`, `make up` or `scripts/services.sh`) or set NATS_URL."
            )
        });
        let suffix = crate::unique_suffix();
        let stream_name = format!("T_{suffix}");
        let prefix = format!("t{suffix}");
        let config = stream::Config {
            name: stream_name.clone(),
            subjects: vec![format!("{prefix}.>")],
            duplicate_window: Duration::from_secs(120),
            ..Default::default()
        };
        create_stream(&jetstream::new(client.clone()), config)
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "cannot create a JetStream stream at {url} ({e}); is JetStream enabled \
                     (-js), and what does the server's log say?"
                )
            });
        Self {
            url: url.to_owned(),
            client,
            stream_name,
            prefix,
        }
    }

    /// The server URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// A client connected to the server.
    pub fn client(&self) -> async_nats::Client {
        self.client.clone()
    }

    /// A JetStream context on the client.
    pub fn jetstream(&self) -> jetstream::Context {
        jetstream::new(self.client.clone())
    }

    /// The stream's name.
    pub fn stream_name(&self) -> &str {
        &self.stream_name
    }

    /// The subject prefix the stream captures.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// `<prefix>.<suffix>`: a subject the stream captures.
    pub fn subject(&self, suffix: &str) -> String {
        format!("{}.{suffix}", self.prefix)
    }

    /// Number of messages stored in the stream.
    ///
    /// # Panics
    ///
    /// When the stream cannot be read.
    pub async fn stream_len(&self) -> u64 {
        let mut stream = self
            .jetstream()
            .get_stream(&self.stream_name)
            .await
            .unwrap_or_else(|e| panic!("stream {}: {e}", self.stream_name));
        stream
            .info()
            .await
            .unwrap_or_else(|e| panic!("stream {}: {e}", self.stream_name))
            .state
            .messages
    }

    /// Everything stored in the stream, in stream order.
    ///
    /// # Panics
    ///
    /// When the stream cannot be read.
    pub async fn stream_messages(&self) -> Vec<Received> {
        let n = self.stream_len().await;
        read_stream(&self.jetstream(), &self.stream_name, n as usize).await
    }

    /// Waits until the stream holds at least `n` messages or `timeout` passed, then returns
    /// everything in it.
    ///
    /// # Panics
    ///
    /// When the stream cannot be read.
    pub async fn wait_for_stream(&self, n: usize, timeout: Duration) -> Vec<Received> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        while (self.stream_len().await as usize) < n && tokio::time::Instant::now() < deadline {
            tick.tick().await;
        }
        self.stream_messages().await
    }
}

/// Creates the stream of `config` on `js`, trying again while the server fails on its side.
///
/// A server under load sometimes fails to set up a stream's file store and answers only with a
/// generic 500 ("error creating store for stream"; the cause goes to its own log). Nothing was
/// created then, so up to four more tries, 50 ms further apart each time, ride it out; any
/// other error is returned at once.
///
/// # Errors
///
/// The server's answer when it refuses the stream, or still fails after five tries.
///
/// # Examples
///
/// ```no_run
/// # #[tokio::main] async fn main() {
/// use async_nats::jetstream::{self, stream};
///
/// let client = async_nats::connect("nats://127.0.0.1:4222").await.unwrap();
/// let config = stream::Config {
///     name: "ORDERS".to_owned(),
///     subjects: vec!["orders.>".to_owned()],
///     ..Default::default()
/// };
/// outbox_testkit::create_stream(&jetstream::new(client), config).await.unwrap();
/// # }
/// ```
pub async fn create_stream(
    js: &jetstream::Context,
    config: stream::Config,
) -> Result<stream::Stream, jetstream::context::CreateStreamError> {
    const TRIES: u64 = 5;
    let mut attempt = 1;
    loop {
        match js.create_stream(config.clone()).await {
            Err(e) if attempt < TRIES && is_server_failure(&e) => {
                tokio::time::sleep(Duration::from_millis(50 * attempt)).await;
                attempt += 1;
            }
            created => return created,
        }
    }
}

fn is_server_failure(error: &jetstream::context::CreateStreamError) -> bool {
    matches!(
        error.kind(),
        jetstream::context::CreateStreamErrorKind::JetStream(e) if e.code() >= 500
    )
}

async fn read_stream(js: &jetstream::Context, name: &str, n: usize) -> Vec<Received> {
    if n == 0 {
        return Vec::new();
    }
    let stream = js
        .get_stream(name)
        .await
        .unwrap_or_else(|e| panic!("stream {name}: {e}"));
    let consumer: consumer::PullConsumer = stream
        .create_consumer(consumer::pull::Config {
            deliver_policy: consumer::DeliverPolicy::All,
            ack_policy: consumer::AckPolicy::None,
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("consumer on {name}: {e}"));
    let mut messages = consumer
        .messages()
        .await
        .unwrap_or_else(|e| panic!("consumer on {name}: {e}"));
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        match tokio::time::timeout(Duration::from_secs(10), messages.next()).await {
            Ok(Some(Ok(message))) => out.push(Received::from_nats(&message.message)),
            Ok(Some(Err(e))) => panic!("reading stream {name}: {e}"),
            Ok(None) | Err(_) => panic!("stream {name} ended after {} of {n} messages", out.len()),
        }
    }
    out
}

impl Drop for TestNats {
    fn drop(&mut self) {
        // A fresh connection: the test's client is driven by the test's runtime, which this
        // drop is blocking.
        let url = self.url.clone();
        let name = self.stream_name.clone();
        crate::cleanup::block_on_thread(async move {
            let _ = tokio::time::timeout(Duration::from_secs(5), async {
                if let Ok(client) = async_nats::connect(&url).await {
                    let _ = jetstream::new(client).delete_stream(&name).await;
                }
            })
            .await;
        });
    }
}

/// A `nats-server` with JetStream, run as a child process on a free port, for tests that kill
/// and restart the broker. Its store lives in a temporary directory removed on drop.
#[derive(Debug)]
pub struct NatsServer {
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl NatsServer {
    /// Starts a server and waits until it accepts connections.
    ///
    /// # Panics
    ///
    /// When `nats-server` is not installed or does not start.
    pub async fn start() -> Self {
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("outbox-nats-{}", crate::unique_suffix()));
        let mut server = Self {
            port,
            dir,
            child: None,
        };
        server.restart().await;
        server
    }

    /// The server's URL.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Kills the server (SIGKILL) and waits for it to exit.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
    }

    /// Starts the server again on the same port and store directory.
    ///
    /// # Panics
    ///
    /// When `nats-server` is not installed or does not start.
    pub async fn restart(&mut self) {
        self.kill().await;
        let child = Command::new(nats_server_binary())
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-js",
                "-sd",
            ])
            .arg(&self.dir)
            .kill_on_drop(true)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start nats-server (is it installed?): {e}"));
        self.child = Some(child);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(("127.0.0.1", self.port))
            .await
            .is_err()
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "nats-server did not start on port {}",
                self.port
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.start_kill();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub(crate) fn nats_server_binary() -> PathBuf {
    if let Ok(path) = std::env::var("NATS_SERVER_BIN") {
        return PathBuf::from(path);
    }
    [
        "/usr/sbin/nats-server",
        "/usr/local/bin/nats-server",
        "/usr/bin/nats-server",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|p| p.exists())
    .unwrap_or_else(|| PathBuf::from("nats-server"))
}

/// A port that was free a moment ago.
pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("no free port: {e}"))
}
