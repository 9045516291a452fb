//! The HTTP limits of the orders service against the real PostgreSQL and NATS: body size,
//! validation, a burst of malformed requests, the request timeout, and `/ready`. Each test has
//! its own outbox schema, app schema, stream and subjects.
#![cfg(all(feature = "postgres", feature = "nats"))]

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use outbox_testkit::{NatsServer, TestNats};
use serde_json::{Value, json};
use support::{Env, Example, args, free_port, http_json, isolation};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const START: Duration = Duration::from_secs(30);
const EXIT: Duration = Duration::from_secs(30);
/// The body limit of the service.
const LIMIT: usize = 64 * 1024;

impl Env {
    /// Starts a replica with HTTP on a free port and waits until it listens.
    async fn replica(&self, extra: &[&str]) -> (Example, u16) {
        let port = free_port();
        let mut all = vec!["--role", "replica"];
        let port_text = port.to_string();
        all.extend(["--port", port_text.as_str()]);
        all.extend(extra);
        let replica = self.start("replica", &all);
        replica.wait_for_line("HTTP listening", START).await;
        (replica, port)
    }

    async fn orders_in_database(&self) -> i64 {
        self.count("SELECT count(*) FROM \"{app}\".orders").await
    }
}

/// A reply read off the wire.
#[derive(Debug)]
struct Reply {
    status: u16,
    headers: BTreeMap<String, String>,
    body: Vec<u8>,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "{}: body {:?} is not JSON: {e}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// The `error` of a JSON error body.
    fn reason(&self) -> String {
        let body = self.json();
        body["error"]
            .as_str()
            .unwrap_or_else(|| panic!("no `error` in {body}"))
            .to_owned()
    }
}

/// Sends `request` byte for byte to 127.0.0.1:`port` and reads until the server closes.
///
/// `None` when the server closed without a status line. A write cut short is not an error (a
/// server may answer 413 before it has read the whole body), nor is a reset after the reply.
async fn raw(port: u16, request: &[u8]) -> Option<Reply> {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap_or_else(|e| panic!("connect to port {port}: {e}"));
    let _ = stream.write_all(request).await;
    read_reply(&mut stream).await
}

async fn read_reply(stream: &mut tokio::net::TcpStream) -> Option<Reply> {
    let mut received = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    let read = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => received.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    assert!(read.is_ok(), "no end of the reply within 30 s");
    parse_reply(&received)
}

fn parse_reply(bytes: &[u8]) -> Option<Reply> {
    let end = bytes.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&bytes[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers: BTreeMap<String, String> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let mut body = bytes[end + 4..].to_vec();
    if headers
        .get("transfer-encoding")
        .is_some_and(|t| t.eq_ignore_ascii_case("chunked"))
    {
        body = dechunk(&body);
    } else if let Some(length) = headers.get("content-length") {
        let length: usize = length.parse().expect("a numeric content-length");
        assert_eq!(body.len(), length, "body shorter than its content-length");
    }
    Some(Reply {
        status,
        headers,
        body,
    })
}

fn dechunk(mut bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let line_end = bytes
            .windows(2)
            .position(|w| w == b"\r\n")
            .expect("chunk size line");
        let size_text = String::from_utf8_lossy(&bytes[..line_end]);
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .expect("hex chunk size");
        bytes = &bytes[line_end + 2..];
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&bytes[..size]);
        bytes = &bytes[size + 2..];
    }
}

/// A complete HTTP/1.1 request with a `Content-Length` body.
fn request(method: &str, path: &str, body: &[u8]) -> Vec<u8> {
    let mut bytes = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

/// A `POST /order` whose body is sent in chunks, without a `Content-Length`.
fn chunked_order(body: &[u8]) -> Vec<u8> {
    let mut bytes = b"POST /order HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\
          Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        .to_vec();
    for piece in body.chunks(8 * 1024) {
        bytes.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
        bytes.extend_from_slice(piece);
        bytes.extend_from_slice(b"\r\n");
    }
    bytes.extend_from_slice(b"0\r\n\r\n");
    bytes
}

/// A valid order padded with spaces to exactly `size` bytes.
fn padded_order(customer: &str, size: usize) -> Vec<u8> {
    let order = format!(r#"{{"name": "padded", "total": 10, "customer_id": "{customer}"}}"#);
    let mut body = order.into_bytes();
    assert!(body.len() <= size);
    body.resize(size, b' ');
    body
}

async fn post_order(port: u16, body: &[u8]) -> Reply {
    raw(port, &request("POST", "/order", body))
        .await
        .expect("a reply to POST /order")
}

#[tokio::test(flavor = "multi_thread")]
async fn bodies_over_64_kib_get_413_and_bad_fields_get_400_with_a_reason() {
    let env = Env::new().await;
    let (mut replica, port) = env.replica(&[]).await;

    // Up to the limit is fine, one byte more is not.
    let reply = post_order(port, &padded_order("edge", LIMIT)).await;
    assert_eq!(reply.status, 201, "{:?}", reply.json());
    for body in [padded_order("edge", LIMIT + 1), vec![b'x'; 1024 * 1024]] {
        let reply = post_order(port, &body).await;
        assert_eq!(reply.status, 413, "{} bytes", body.len());
        assert!(
            reply
                .headers
                .get("content-type")
                .is_some_and(|t| t.starts_with("application/json")),
            "{:?}",
            reply.headers
        );
        assert!(reply.reason().contains("64 KiB"), "{}", reply.reason());
    }
    // Without a Content-Length, the limit holds while the chunks arrive.
    let reply = raw(port, &chunked_order(&padded_order("edge", LIMIT + 100)))
        .await
        .expect("a reply");
    assert_eq!(reply.status, 413);
    assert!(reply.reason().contains("64 KiB"), "{}", reply.reason());

    let long_name = "n".repeat(201);
    let long_id = "c".repeat(1025);
    let cases: Vec<(Value, &str)> = vec![
        (json!({"name": "", "total": 1}), "`name` must not be empty"),
        (
            json!({"name": "   ", "total": 1}),
            "`name` must not be empty",
        ),
        (
            json!({"name": long_name, "total": 1}),
            "`name` is longer than 200 characters",
        ),
        (
            json!({"name": "a\u{7}b", "total": 1}),
            "`name` must not contain control",
        ),
        (json!({"name": 12, "total": 1}), "`name` must be a string"),
        (json!({"total": 1}), "missing field `name`"),
        (
            json!({"name": "a", "total": -1}),
            "`total` must not be negative",
        ),
        (
            json!({"name": "a", "total": 100_000_001}),
            "`total` must be at most 100000000",
        ),
        (
            json!({"name": "a", "total": u64::MAX}),
            "`total` must be at most 100000000",
        ),
        (
            json!({"name": "a", "total": 2.5}),
            "`total` must be an integer",
        ),
        (
            json!({"name": "a", "total": "3"}),
            "`total` must be an integer",
        ),
        (json!({"name": "a"}), "missing field `total`"),
        (
            json!({"name": "a", "total": 1, "customer_id": ""}),
            "`customer_id` must not be empty",
        ),
        (
            json!({"name": "a", "total": 1, "customer_id": long_id}),
            "`customer_id` is longer than 1024 bytes",
        ),
        (
            json!({"name": "a", "total": 1, "customer_id": "a\tb"}),
            "`customer_id` must not contain control",
        ),
        (
            json!({"name": "a", "total": 1, "customer_id": "bob "}),
            "`customer_id` must not start or end with spaces",
        ),
        (
            json!({"name": "a", "total": 1, "customer_id": 7}),
            "`customer_id` must be a string",
        ),
        (json!([1, 2]), "expected a JSON object"),
    ];
    for (body, expected) in &cases {
        let reply = post_order(port, body.to_string().as_bytes()).await;
        assert_eq!(reply.status, 400, "{body}");
        let reason = reply.reason();
        assert!(reason.contains(expected), "{body}: {reason}");
    }
    let reply = post_order(port, b"{\"name\": \"a\", ").await;
    assert_eq!(reply.status, 400);
    assert!(
        reply.reason().starts_with("invalid JSON"),
        "{}",
        reply.reason()
    );

    // The bounds themselves are accepted.
    let longest = "é".repeat(200);
    let reply = post_order(
        port,
        json!({"name": longest, "total": 100_000_000, "customer_id": "edge"})
            .to_string()
            .as_bytes(),
    )
    .await;
    assert_eq!(reply.status, 201, "{}", reply.json());
    assert_eq!(reply.json()["seq"], 2);

    assert_eq!(env.orders_in_database().await, 2, "only the valid orders");
    replica.signal("TERM");
    assert_eq!(replica.wait_exit(EXIT).await.code(), Some(0));
}

/// One kind of malformed request, and the statuses it may get.
struct Malformed {
    what: &'static str,
    request: Vec<u8>,
    /// `None` stands for "the server closed without a reply", acceptable only for requests
    /// that are not HTTP at all or whose body never ends.
    expected: &'static [Option<u16>],
    /// Whether the client ends its side of the connection after sending.
    hang_up: bool,
}

fn malformed_kinds() -> Vec<Malformed> {
    let deep = format!("{}{}", "[".repeat(20_000), "]".repeat(20_000));
    vec![
        Malformed {
            what: "invalid JSON",
            request: request("POST", "/order", b"{not json"),
            expected: &[Some(400)],
            hang_up: false,
        },
        Malformed {
            what: "nesting beyond the parser's limit",
            request: request("POST", "/order", deep.as_bytes()),
            expected: &[Some(400)],
            hang_up: false,
        },
        Malformed {
            what: "wrong types",
            request: request("POST", "/order", br#"{"name": 5, "total": "x"}"#),
            expected: &[Some(400)],
            hang_up: false,
        },
        Malformed {
            what: "values out of range",
            request: request("POST", "/order", br#"{"name": "", "total": -5}"#),
            expected: &[Some(400)],
            hang_up: false,
        },
        Malformed {
            what: "oversized body",
            request: request("POST", "/order", &vec![b'{'; 200 * 1024]),
            expected: &[Some(413)],
            hang_up: false,
        },
        Malformed {
            what: "oversized chunked body",
            request: chunked_order(&vec![b' '; 100 * 1024]),
            expected: &[Some(413)],
            hang_up: false,
        },
        Malformed {
            what: "wrong method",
            request: request("DELETE", "/order", b""),
            expected: &[Some(405)],
            hang_up: false,
        },
        Malformed {
            what: "GET /order",
            request: request("GET", "/order", b""),
            expected: &[Some(405)],
            hang_up: false,
        },
        Malformed {
            what: "unknown path",
            request: request("POST", "/orders/../../etc", b"{}"),
            expected: &[Some(404)],
            hang_up: false,
        },
        Malformed {
            what: "not HTTP",
            request: b"HELLO THERE\r\n\r\n".to_vec(),
            expected: &[Some(400), None],
            hang_up: false,
        },
        Malformed {
            what: "body shorter than its Content-Length, then end of stream",
            request: b"POST /order HTTP/1.1\r\nHost: x\r\nContent-Length: 500\r\n\r\n{\"name\""
                .to_vec(),
            expected: &[Some(400), None],
            hang_up: true,
        },
    ]
}

#[tokio::test(flavor = "multi_thread")]
async fn a_burst_of_malformed_requests_leaves_the_server_serving() {
    const BURST: usize = 1_000;
    let env = Env::new().await;
    let (mut replica, port) = env.replica(&[]).await;

    let kinds = std::sync::Arc::new(malformed_kinds());
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..BURST {
        let kinds = kinds.clone();
        tasks.spawn(async move {
            let kind = i % kinds.len();
            let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .unwrap_or_else(|e| panic!("connect: {e}"));
            let _ = stream.write_all(&kinds[kind].request).await;
            if kinds[kind].hang_up {
                let _ = stream.shutdown().await;
            }
            (kind, read_reply(&mut stream).await)
        });
    }
    let mut seen: BTreeMap<(&str, Option<u16>), usize> = BTreeMap::new();
    while let Some(joined) = tasks.join_next().await {
        let (kind, reply) = joined.expect("request task");
        let kind = &kinds[kind];
        let status = reply.as_ref().map(|r| r.status);
        assert!(
            kind.expected.contains(&status),
            "{}: got {status:?}, expected one of {:?}",
            kind.what,
            kind.expected
        );
        if let Some(reply) = reply.filter(|r| r.headers.contains_key("content-type")) {
            assert!(!reply.reason().is_empty(), "{}", kind.what);
        }
        *seen.entry((kind.what, status)).or_default() += 1;
    }
    eprintln!("replies to the burst: {seen:?}");
    assert_eq!(seen.values().sum::<usize>(), BURST);

    assert!(replica.is_running(), "{}", replica.logs());
    let (status, health) = http_json(port, "GET", "/health", None).await;
    assert_eq!((status, health["status"].clone()), (200, json!("ok")));
    let (status, placed) = http_json(
        port,
        "POST",
        "/order",
        Some(r#"{"name": "after the storm", "total": 100, "customer_id": "calm"}"#),
    )
    .await;
    assert_eq!(status, 201, "{placed}");
    assert_eq!(
        env.orders_in_database().await,
        1,
        "nothing malformed was stored"
    );
    let logs = replica.logs();
    assert!(!logs.contains("panicked"), "{logs}");

    replica.signal("TERM");
    assert_eq!(replica.wait_exit(EXIT).await.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_slower_than_the_timeout_gets_503() {
    let env = Env::new().await;
    let (mut replica, port) = env.replica(&["--request-timeout-ms", "300"]).await;

    // Headers announce 100 bytes; 10 arrive and the connection stays open.
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    stream
        .write_all(
            b"POST /order HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 100\r\n\r\n\
              {\"name\": ",
        )
        .await
        .expect("send");
    let reply = read_reply(&mut stream).await.expect("a reply");
    assert_eq!(reply.status, 503);
    assert!(
        reply.reason().contains("not completed within 300ms"),
        "{}",
        reply.reason()
    );
    drop(stream);

    // The server goes on serving, and the cut-off request stored nothing.
    let (status, placed) = http_json(
        port,
        "POST",
        "/order",
        Some(r#"{"name": "prompt", "total": 1}"#),
    )
    .await;
    assert_eq!(status, 201, "{placed}");
    assert_eq!(env.orders_in_database().await, 1);

    replica.signal("TERM");
    assert_eq!(replica.wait_exit(EXIT).await.code(), Some(0));
}

/// Polls `GET /ready` until `done` holds for (status, body), or panics after `START`.
async fn wait_ready(port: u16, what: &str, done: impl Fn(u16, &Value) -> bool) -> (u16, Value) {
    let deadline = tokio::time::Instant::now() + START;
    loop {
        let (status, body) = http_json(port, "GET", "/ready", None).await;
        if done(status, &body) {
            return (status, body);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "/ready never became {what}: last {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn ready_follows_the_broker_of_a_leader() {
    let mut server = NatsServer::start().await;
    let env = Env::with_nats(TestNats::on(&server.url()).await).await;
    server.kill().await;

    let port = free_port();
    let mut leader = env.start("leader", &["--role", "leader", "--port", &port.to_string()]);
    leader.wait_for_line("HTTP listening", START).await;
    leader.wait_for_line("retrying in", START).await;

    // NATS unreachable: not ready, and the body says why; liveness is unaffected.
    let (status, body) = http_json(port, "GET", "/ready", None).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["status"], "not ready");
    assert_eq!(body["role"], "leader");
    assert_eq!(body["checks"]["database"]["status"], "up", "{body}");
    assert!(
        body["checks"]["database"]["schema_version"]
            .as_i64()
            .is_some_and(|v| v >= 1),
        "{body}"
    );
    assert_eq!(body["checks"]["broker"]["status"], "down", "{body}");
    assert!(
        body["checks"]["broker"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("not connected")),
        "{body}"
    );
    assert_eq!(body["relay"]["leading"], false, "{body}");
    let (status, _) = http_json(port, "GET", "/health", None).await;
    assert_eq!(status, 200);

    // NATS back: ready once the relay connected and leads.
    server.restart().await;
    let (_, body) = wait_ready(port, "ready and leading", |status, body| {
        status == 200 && body["relay"]["leading"] == json!(true)
    })
    .await;
    assert_eq!(body["status"], "ready");
    assert_eq!(body["checks"]["broker"]["status"], "up", "{body}");
    assert_eq!(
        body["checks"]["broker"]["stream"],
        env.nats.stream_name(),
        "{body}"
    );
    assert_eq!(body["relay"]["state"], "leading");
    assert!(body["relay"]["since"].is_string(), "{body}");
    assert!(body["relay"]["for_seconds"].is_number(), "{body}");
    // /health keeps its shape.
    let (_, health) = http_json(port, "GET", "/health", None).await;
    assert_eq!(
        health,
        json!({"role": "leader", "leading": true, "status": "ok"})
    );

    // NATS gone again: not ready once the client noticed.
    server.kill().await;
    let (_, body) = wait_ready(port, "503", |status, _| status == 503).await;
    assert_eq!(body["checks"]["broker"]["status"], "down", "{body}");
    assert_eq!(body["checks"]["database"]["status"], "up", "{body}");

    leader.signal("TERM");
    assert_eq!(leader.wait_exit(EXIT).await.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread")]
async fn ready_needs_the_outbox_migrations_and_ignores_the_broker_on_a_replica() {
    let env = Env::new().await;
    let (mut replica, port) = env.replica(&[]).await;

    let (status, body) = http_json(port, "GET", "/ready", None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "ready");
    assert_eq!(body["role"], "replica");
    assert_eq!(body["checks"]["database"]["status"], "up");
    assert!(
        body["checks"]["database"]["schema_version"]
            .as_i64()
            .is_some_and(|v| v >= 1),
        "{body}"
    );
    assert!(
        body["checks"]["database"]["elapsed_ms"].is_number(),
        "{body}"
    );
    assert_eq!(body["checks"]["broker"]["status"], "unused");
    assert_eq!(body["relay"], json!({"state": "off", "leading": false}));

    // The service migrates at startup, so a database without the migrations is only seen when
    // they vanish under a running instance.
    let client = env.outbox_db.connect().await;
    client
        .batch_execute(&format!(
            "DROP SCHEMA \"{}\" CASCADE",
            env.outbox_db.schema()
        ))
        .await
        .expect("drop the outbox schema");
    let (status, body) = http_json(port, "GET", "/ready", None).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["status"], "not ready");
    assert_eq!(body["checks"]["database"]["status"], "down");
    assert!(
        body["checks"]["database"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("not migrated")),
        "{body}"
    );
    let (status, _) = http_json(port, "GET", "/health", None).await;
    assert_eq!(status, 200);

    replica.signal("TERM");
    assert_eq!(replica.wait_exit(EXIT).await.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread")]
async fn ready_is_bounded_when_the_database_hangs_and_503_when_it_is_gone() {
    // A database of our own that can be frozen and stopped: the shared one must stay up.
    let Some(mut postgres) = LocalPostgres::start() else {
        eprintln!("skipped: no PostgreSQL server binaries to start a private database");
        return;
    };
    let nats = TestNats::new().await;
    let port = free_port();
    let mut all = isolation("outbox", "orders_app", nats.stream_name(), nats.prefix());
    all.extend(args(&["--role", "replica", "--port", &port.to_string()]));
    let mut replica = Example::spawn(
        "replica",
        &all,
        &[
            ("DATABASE_URL", postgres.url.as_str()),
            ("NATS_URL", nats.url()),
        ],
    );
    replica.wait_for_line("HTTP listening", START).await;
    let (status, body) = http_json(port, "GET", "/ready", None).await;
    assert_eq!(status, 200, "{body}");

    // Frozen server: connections stay open and nothing answers. The check gives up on its own.
    postgres.signal("STOP");
    let (status, body) = http_json(port, "GET", "/ready", None).await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body["checks"]["database"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("no answer within")),
        "{body}"
    );
    let (status, _) = http_json(port, "GET", "/health", None).await;
    assert_eq!(status, 200, "liveness does not wait for the database");
    postgres.signal("CONT");
    wait_ready(port, "ready again", |status, _| status == 200).await;

    // Stopped server: refused at once.
    postgres.stop();
    let (_, body) = wait_ready(port, "503", |status, _| status == 503).await;
    assert_eq!(body["checks"]["database"]["status"], "down", "{body}");

    replica.signal("TERM");
    assert_eq!(replica.wait_exit(EXIT).await.code(), Some(0));
}

/// A PostgreSQL server of this test's own, in a temporary directory, on a free port.
struct LocalPostgres {
    dir: std::path::PathBuf,
    bin: std::path::PathBuf,
    url: String,
    running: bool,
}

impl LocalPostgres {
    fn start() -> Option<Self> {
        let bin = [
            "/usr/lib/postgresql/17/bin",
            "/usr/lib/postgresql/16/bin",
            "/usr/lib/postgresql/15/bin",
        ]
        .iter()
        .map(std::path::PathBuf::from)
        .find(|dir| dir.join("pg_ctl").exists())?;
        let port = free_port();
        let dir =
            std::env::temp_dir().join(format!("example-ready-pg-{}-{port}", std::process::id()));
        let run = |program: &str, args: &[&str]| {
            let mut command = std::process::Command::new(bin.join(program));
            command.args(args);
            as_postgres_user(&mut command);
            let output = command.output().expect("run a PostgreSQL tool");
            assert!(
                output.status.success(),
                "{program}: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        };
        std::fs::create_dir_all(&dir).expect("temporary directory");
        chown_to_postgres(&dir);
        let data = dir.join("data").to_string_lossy().into_owned();
        run(
            "initdb",
            &["-D", &data, "-U", "postgres", "--auth=trust", "-E", "UTF8"],
        );
        let options = format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1",
            dir.display()
        );
        let log = dir.join("log").to_string_lossy().into_owned();
        run(
            "pg_ctl",
            &["-D", &data, "-o", &options, "-l", &log, "-w", "start"],
        );
        Some(LocalPostgres {
            dir,
            bin,
            url: format!("postgres://postgres@127.0.0.1:{port}/postgres"),
            running: true,
        })
    }

    /// Sends `signal` to the server and every process it forked (its sessions).
    fn signal(&self, signal: &str) {
        let pid_file = self.dir.join("data").join("postmaster.pid");
        let Some(postmaster) = std::fs::read_to_string(&pid_file)
            .ok()
            .and_then(|text| text.lines().next()?.trim().parse::<u32>().ok())
        else {
            return;
        };
        let mut pids = vec![postmaster];
        for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
                continue;
            };
            // The fields after the command name (which may hold spaces): state, then ppid.
            let parent = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok());
            if parent == Some(postmaster) {
                pids.push(pid);
            }
        }
        for pid in pids {
            let _ = std::process::Command::new("kill")
                .arg(format!("-{signal}"))
                .arg(pid.to_string())
                .status();
        }
    }

    fn stop(&mut self) {
        if !self.running {
            return;
        }
        self.running = false;
        // A frozen server cannot stop.
        self.signal("CONT");
        let data = self.dir.join("data").to_string_lossy().into_owned();
        let mut command = std::process::Command::new(self.bin.join("pg_ctl"));
        command.args(["-D", &data, "-m", "immediate", "-w", "stop"]);
        as_postgres_user(&mut command);
        let _ = command.output();
    }
}

impl Drop for LocalPostgres {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// PostgreSQL refuses to run as root: run its tools as the `postgres` user when we are root.
fn as_postgres_user(command: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    if let Some((uid, gid)) = postgres_ids() {
        command.uid(uid).gid(gid);
    }
}

fn chown_to_postgres(dir: &std::path::Path) {
    if let Some((uid, gid)) = postgres_ids() {
        std::os::unix::fs::chown(dir, Some(uid), Some(gid)).expect("chown the data directory");
    }
}

/// The uid and gid of `postgres` when this process runs as root.
fn postgres_ids() -> Option<(u32, u32)> {
    use std::os::unix::fs::MetadataExt;
    let me = std::fs::metadata("/proc/self").ok()?;
    if me.uid() != 0 {
        return None;
    }
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        (fields.first() == Some(&"postgres"))
            .then(|| Some((fields.get(2)?.parse().ok()?, fields.get(3)?.parse().ok()?)))
            .flatten()
    })
}
