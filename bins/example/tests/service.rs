//! The orders service against the real PostgreSQL and NATS: HTTP contract, relaying, load
//! generator, leadership, shutdown, unreachable database. Each test has its own outbox schema,
//! app schema, stream and subjects.
#![cfg(all(feature = "postgres", feature = "nats"))]

mod support;

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use outbox_testkit::{NatsServer, Received, TestNats};
use serde_json::{Value, json};
use support::{Env, Example, args, free_port, http, http_json};

const START: Duration = Duration::from_secs(30);
const EXIT: Duration = Duration::from_secs(30);

fn payload(message: &Received) -> Value {
    serde_json::from_slice(&message.payload).expect("JSON payload")
}

/// Checks what the stream holds: every id once, subject and key right, and per customer the
/// seqs 1, 2, 3 … in stream order. Returns the count per customer.
fn check_stream(messages: &[Received], subject: &str) -> BTreeMap<String, i64> {
    let mut ids = HashSet::new();
    let mut last_seq: BTreeMap<String, i64> = BTreeMap::new();
    for message in messages {
        assert_eq!(message.subject, subject);
        let id = message.msg_id().expect("Nats-Msg-Id");
        assert!(
            ids.insert(id.to_owned()),
            "message id {id} twice in the stream"
        );
        let body = payload(message);
        assert_eq!(body["event_type"], "order_created");
        let customer = body["customer_id"]
            .as_str()
            .expect("customer_id")
            .to_owned();
        assert_eq!(message.key(), Some(customer.as_str()), "Outbox-Key");
        let seq = body["seq"].as_i64().expect("seq");
        let last = last_seq.entry(customer.clone()).or_insert(0);
        assert_eq!(
            seq,
            *last + 1,
            "customer {customer}: seq {seq} after {last}"
        );
        *last = seq;
    }
    last_seq
}

#[tokio::test(flavor = "multi_thread")]
async fn http_contract_of_a_replica() {
    let env = Env::new().await;
    let port = free_port();
    let mut replica = env.start(
        "replica",
        &["--role", "replica", "--port", &port.to_string()],
    );
    replica.wait_for_line("HTTP listening", START).await;

    let (status, health) = http_json(port, "GET", "/health", None).await;
    assert_eq!(status, 200);
    assert_eq!(
        health,
        json!({"role": "replica", "leading": false, "status": "ok"})
    );

    let order = r#"{"name": "book", "total": 1200, "customer_id": "alice"}"#;
    let (status, first) = http_json(port, "POST", "/order", Some(order)).await;
    assert_eq!(status, 201, "{first}");
    assert_eq!(first["customer_id"], "alice");
    assert_eq!(first["seq"], 1);
    assert!(first["order_id"].as_str().is_some_and(|s| s.len() == 36));
    assert!(first["message_id"].as_str().is_some_and(|s| s.len() == 36));
    let (status, second) = http_json(port, "POST", "/order", Some(order)).await;
    assert_eq!(status, 201, "{second}");
    assert_eq!(second["seq"], 2);
    assert_ne!(second["order_id"], first["order_id"]);

    let (status, anonymous) = http_json(
        port,
        "POST",
        "/order",
        Some(r#"{"name": "pen", "total": 3}"#),
    )
    .await;
    assert_eq!(status, 201, "{anonymous}");
    assert_eq!(anonymous["seq"], 1);
    assert!(
        anonymous["customer_id"]
            .as_str()
            .is_some_and(|s| !s.is_empty())
    );

    for bad in [
        "{not json",
        "[]",
        r#"{"total": 1}"#,
        r#"{"name": "x", "total": "12"}"#,
        r#"{"name": "x", "total": 1.5}"#,
        r#"{"name": "x", "total": 1, "customer_id": 5}"#,
    ] {
        let (status, body) = http_json(port, "POST", "/order", Some(bad)).await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert!(
            body["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{body}"
        );
    }
    let (status, _) = http(port, "GET", "/order", None).await;
    assert_eq!(status, 405);
    let (status, _) = http(port, "POST", "/health", Some("{}")).await;
    assert_eq!(status, 405);
    let (status, _) = http(port, "GET", "/orders", None).await;
    assert_eq!(status, 404);

    // Three orders, three events waiting in the outbox: a replica never relays.
    assert_eq!(env.count("SELECT count(*) FROM \"{app}\".orders").await, 3);
    assert_eq!(
        env.count("SELECT count(*) FROM \"{outbox}\".messages")
            .await,
        3
    );
    assert_eq!(env.nats.stream_messages().await.len(), 0);

    replica.signal("TERM");
    assert_eq!(replica.wait_exit(EXIT).await.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_leader_relays_http_orders_and_reports_leading() {
    let env = Env::new().await;
    let port = free_port();
    let mut leader = env.start("leader", &["--role", "leader", "--port", &port.to_string()]);
    leader.wait_for_line("became leader", START).await;
    leader.wait_for_line("HTTP listening", START).await;

    // The state reaches /health through a watch channel, a moment after the log line.
    let deadline = tokio::time::Instant::now() + START;
    let (status, health) = loop {
        let (status, health) = http_json(port, "GET", "/health", None).await;
        if health["leading"] == json!(true) || tokio::time::Instant::now() > deadline {
            break (status, health);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(status, 200);
    assert_eq!(
        health,
        json!({"role": "leader", "leading": true, "status": "ok"})
    );

    let order = r#"{"name": "lamp", "total": 4500, "customer_id": "bob"}"#;
    let (status, placed) = http_json(port, "POST", "/order", Some(order)).await;
    assert_eq!(status, 201, "{placed}");

    let messages = env.nats.wait_for_stream(1, Duration::from_secs(20)).await;
    assert_eq!(messages.len(), 1);
    let message = &messages[0];
    assert_eq!(message.subject, env.nats.subject("created"));
    assert_eq!(message.msg_id(), placed["message_id"].as_str());
    assert_eq!(message.key(), Some("bob"));
    assert_eq!(
        payload(message),
        json!({
            "event_type": "order_created",
            "order_id": placed["order_id"],
            "customer_id": "bob",
            "seq": 1,
            "order": {"name": "lamp", "total": 4500}
        })
    );

    leader.signal("TERM");
    assert_eq!(leader.wait_exit(EXIT).await.code(), Some(0));
    assert_eq!(
        env.count("SELECT count(*) FROM \"{outbox}\".messages")
            .await,
        0,
        "the leader drained the outbox"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replicas_load_is_relayed_by_the_leader_in_per_customer_order() {
    let env = Env::new().await;
    let mut leader = env.start("leader", &["--role", "leader", "--port", "0"]);
    leader.wait_for_line("became leader", START).await;

    let mut replica = env.start(
        "replica",
        &[
            "--role",
            "replica",
            "--port",
            "0",
            "--orders",
            "200",
            "--customers",
            "5",
        ],
    );
    let status = replica.wait_exit(Duration::from_secs(60)).await;
    assert_eq!(status.code(), Some(0), "replica: {}", replica.logs());
    assert!(replica.logs().contains("all 200 orders committed"));

    let messages = env.nats.wait_for_stream(200, Duration::from_secs(30)).await;
    assert_eq!(messages.len(), 200);
    let per_customer = check_stream(&messages, &env.nats.subject("created"));
    assert_eq!(per_customer.len(), 5);
    for (customer, count) in &per_customer {
        assert!(customer.starts_with("customer-"), "{customer}");
        assert_eq!(*count, 40, "{customer}");
    }

    leader.signal("TERM");
    assert_eq!(leader.wait_exit(EXIT).await.code(), Some(0));
    assert_eq!(
        env.count("SELECT count(*) FROM \"{outbox}\".messages")
            .await,
        0
    );
    assert_eq!(leader.count_lines("became leader; relaying"), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_standby_leader_takes_over_when_the_leader_is_killed() {
    let env = Env::new().await;
    let (port_a, port_b) = (free_port(), free_port());
    let mut a = env.start("a", &["--role", "leader", "--port", &port_a.to_string()]);
    let mut b = env.start("b", &["--leader", "--port", &port_b.to_string()]);
    a.wait_for_line("HTTP listening", START).await;
    b.wait_for_line("HTTP listening", START).await;

    // One of the two leads, and only one.
    let leading = tokio::select! {
        _ = a.wait_for_line("became leader", START) => 'a',
        _ = b.wait_for_line("became leader", START) => 'b',
    };
    // /health follows the relay's state a moment after the log line: poll, bounded.
    let (leader_port, standby_port) = if leading == 'a' {
        (port_a, port_b)
    } else {
        (port_b, port_a)
    };
    let deadline = tokio::time::Instant::now() + START;
    loop {
        let (_, health) = http_json(leader_port, "GET", "/health", None).await;
        if health["leading"] == json!(true) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the leader's /health never said leading: {health}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (_, health) = http_json(standby_port, "GET", "/health", None).await;
    assert_eq!(health["leading"], json!(false), "{health}");
    let (leader, standby) = if leading == 'a' {
        (&mut a, &mut b)
    } else {
        (&mut b, &mut a)
    };

    let mut replica = env.start(
        "replica",
        &[
            "--port",
            "0",
            "--orders",
            "300",
            "--customers",
            "7",
            "--rate",
            "300",
        ],
    );
    // Kill the leader while orders are flowing.
    env.nats.wait_for_stream(50, Duration::from_secs(30)).await;
    leader.signal("KILL");
    standby.wait_for_line("became leader", START).await;

    assert_eq!(
        replica.wait_exit(Duration::from_secs(60)).await.code(),
        Some(0)
    );
    let messages = env.nats.wait_for_stream(300, Duration::from_secs(30)).await;
    assert_eq!(messages.len(), 300, "JetStream dropped every republish");
    let per_customer = check_stream(&messages, &env.nats.subject("created"));
    assert_eq!(per_customer.values().sum::<i64>(), 300);

    standby.signal("TERM");
    assert_eq!(standby.wait_exit(EXIT).await.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_database_is_retried_with_log_lines_not_a_panic() {
    let port = free_port();
    let url = format!("postgres://postgres:secret@127.0.0.1:{port}/test");
    let mut example = Example::spawn(
        "no-db",
        &args(&["--role", "leader", "--port", "0"]),
        &[("DATABASE_URL", url.as_str())],
    );
    example.wait_for_line("retrying in", START).await;
    assert!(example.is_running());
    example.signal("TERM");
    assert_eq!(example.wait_exit(EXIT).await.code(), Some(0));
    let logs = example.logs();
    assert!(!logs.contains("panicked"), "{logs}");
    assert!(!logs.contains("secret"), "the password was logged:\n{logs}");
    assert!(logs.contains(&format!("127.0.0.1:{port}")), "{logs}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_leader_waits_for_nats_and_relays_once_it_is_up() {
    let mut server = NatsServer::start().await;
    let env = Env::with_nats(TestNats::on(&server.url()).await).await;
    server.kill().await;

    let port = free_port();
    let mut leader = env.start("leader", &["--role", "leader", "--port", &port.to_string()]);
    leader.wait_for_line("connecting to NATS", START).await;
    leader.wait_for_line("retrying in", START).await;
    // Orders are taken while NATS is down: they wait in the outbox.
    let order = r#"{"name": "kettle", "total": 2500, "customer_id": "carol"}"#;
    for _ in 0..3 {
        let (status, body) = http_json(port, "POST", "/order", Some(order)).await;
        assert_eq!(status, 201, "{body}");
    }
    let (_, health) = http_json(port, "GET", "/health", None).await;
    assert_eq!(health["leading"], false);

    server.restart().await;
    leader.wait_for_line("became leader", START).await;
    let messages = env.nats.wait_for_stream(3, Duration::from_secs(30)).await;
    let per_customer = check_stream(&messages, &env.nats.subject("created"));
    assert_eq!(per_customer.get("carol"), Some(&3));

    leader.signal("TERM");
    assert_eq!(leader.wait_exit(EXIT).await.code(), Some(0));
}
