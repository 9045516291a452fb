//! W3C trace context from `POST /order` to the JetStream message: the `traceparent` of the
//! request reaches the event's NATS headers, and an order without one starts a trace of its own.
#![cfg(all(feature = "postgres", feature = "nats"))]

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use outbox_testkit::Received;
use serde_json::Value;
use support::{Env, free_port, http_json_with};

const START: Duration = Duration::from_secs(30);
const EXIT: Duration = Duration::from_secs(30);

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
const TRACESTATE: &str = "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE";

/// `POST /order` with `body` and extra request headers; returns the status and the JSON body.
async fn post_order(port: u16, body: &str, headers: &[(&str, &str)]) -> (u16, Value) {
    http_json_with(port, "POST", "/order", headers, Some(body)).await
}

/// The trace id of a `traceparent` value (its second field).
fn trace_id_of(traceparent: &str) -> &str {
    let id = traceparent.split('-').nth(1).unwrap_or("");
    assert_eq!(id.len(), 32, "traceparent {traceparent:?}");
    id
}

#[tokio::test(flavor = "multi_thread")]
async fn the_traceparent_of_an_order_request_arrives_in_the_nats_headers() {
    let env = Env::new().await;
    let port = free_port();
    let mut leader = env.start("leader", &["--role", "leader", "--port", &port.to_string()]);
    leader.wait_for_line("became leader", START).await;
    leader.wait_for_line("HTTP listening", START).await;

    let order = |customer: &str| {
        format!(r#"{{"name": "lamp", "total": 4500, "customer_id": "{customer}"}}"#)
    };
    let (status, traced) = post_order(
        port,
        &order("traced"),
        &[("traceparent", TRACEPARENT), ("tracestate", TRACESTATE)],
    )
    .await;
    assert_eq!(status, 201, "{traced}");
    assert_eq!(traced["trace_id"], TRACE_ID, "{traced}");
    let (status, untraced) = post_order(port, &order("untraced"), &[]).await;
    assert_eq!(status, 201, "{untraced}");
    // W3C: an invalid traceparent (uppercase hex here) is ignored, and a new trace starts.
    let (status, invalid) = post_order(
        port,
        &order("invalid"),
        &[("traceparent", &TRACEPARENT.to_uppercase())],
    )
    .await;
    assert_eq!(status, 201, "{invalid}");

    let messages = env.nats.wait_for_stream(3, Duration::from_secs(30)).await;
    assert_eq!(messages.len(), 3, "{messages:?}");
    let by_id: BTreeMap<&str, &Received> = messages
        .iter()
        .map(|m| (m.msg_id().expect("Nats-Msg-Id"), m))
        .collect();
    let headers = |placed: &Value| {
        let id = placed["message_id"].as_str().expect("message_id");
        &by_id
            .get(id)
            .unwrap_or_else(|| panic!("message {id} not in the stream"))
            .headers
    };

    let arrived = headers(&traced);
    let traceparent = arrived.get("traceparent").expect("traceparent header");
    assert_eq!(trace_id_of(traceparent), TRACE_ID, "{arrived:?}");
    assert_eq!(
        arrived.get("tracestate").map(String::as_str),
        Some(TRACESTATE)
    );

    for placed in [&untraced, &invalid] {
        let arrived = headers(placed);
        let traceparent = arrived.get("traceparent").expect("traceparent header");
        let fresh = trace_id_of(traceparent);
        assert_eq!(Some(fresh), placed["trace_id"].as_str(), "{arrived:?}");
        assert_ne!(fresh, TRACE_ID);
        assert_ne!(fresh, "0".repeat(32));
        assert!(
            fresh
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        );
    }
    assert_ne!(untraced["trace_id"], invalid["trace_id"]);

    // The order is logged with its trace id.
    let line = leader.wait_for_line("order placed", START).await;
    assert!(line.contains("trace_id="), "{line}");
    assert!(
        leader.logs().contains(&format!("trace_id={TRACE_ID}")),
        "{}",
        leader.logs()
    );

    leader.signal("TERM");
    assert_eq!(leader.wait_exit(EXIT).await.code(), Some(0));
}
