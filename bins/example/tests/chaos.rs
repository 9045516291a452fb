//! The orders service under failure (issue 3): leader processes SIGKILLed in the middle of the
//! stream while a producer writes orders. A standby takes over each time; the stream ends with
//! every order's event exactly once and each customer's events in `seq` order 1, 2, 3 …
#![cfg(all(feature = "postgres", feature = "nats"))]

mod support;

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use outbox_testkit::Received;
use serde_json::Value;
use support::{Env, Example};
use tokio::time::Instant;

const START: Duration = Duration::from_secs(30);
const WAIT: Duration = Duration::from_secs(60);

const ORDERS: usize = 4_000;
const CUSTOMERS: usize = 25;

impl Env {
    fn leader(&self, name: &str) -> Example {
        self.start(name, &["--role", "leader", "--port", "0"])
    }

    async fn stream_len(&self) -> u64 {
        let mut stream = self
            .nats
            .jetstream()
            .get_stream(self.nats.stream_name())
            .await
            .expect("the stream");
        stream.info().await.expect("stream info").state.messages
    }

    /// Waits until the stream holds at least `n` messages; returns how many it holds.
    async fn until_stream_has(&self, n: u64) -> u64 {
        let deadline = Instant::now() + WAIT;
        loop {
            let len = self.stream_len().await;
            if len >= n {
                return len;
            }
            assert!(Instant::now() < deadline, "stream holds {len} of {n}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn until_outbox_empty(&self) {
        let deadline = Instant::now() + WAIT;
        loop {
            let pending = self
                .count("SELECT count(*) FROM \"{outbox}\".messages")
                .await;
            if pending == 0 {
                return;
            }
            assert!(Instant::now() < deadline, "{pending} events still pending");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Checks what the stream holds: every id once, subject and key right, and per customer the
/// seqs 1, 2, 3 … in stream order (a lost event leaves a gap, a duplicate repeats a seq).
/// Returns the count per customer.
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
        let body: Value = serde_json::from_slice(&message.payload).expect("JSON payload");
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

/// Waits until one of `candidates` logs that it became leader; returns its index.
async fn new_leader(candidates: &[&Example]) -> usize {
    let deadline = Instant::now() + START;
    loop {
        if let Some(i) = candidates
            .iter()
            .position(|c| c.count_lines("became leader") > 0)
        {
            return i;
        }
        assert!(Instant::now() < deadline, "no candidate became leader");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn leaders_sigkilled_twice_mid_stream_lose_and_duplicate_nothing() {
    let env = Env::new().await;
    let mut a = env.leader("a");
    let mut b = env.leader("b");
    let first = new_leader(&[&a, &b]).await;
    let (leader, standby) = if first == 0 {
        (&mut a, &mut b)
    } else {
        (&mut b, &mut a)
    };
    assert_eq!(standby.count_lines("became leader"), 0, "two leaders");

    // Orders keep coming for about three seconds while leaders die.
    let mut producer = env.start(
        "producer",
        &[
            "--role",
            "replica",
            "--port",
            "0",
            "--orders",
            &ORDERS.to_string(),
            "--customers",
            &CUSTOMERS.to_string(),
            "--rate",
            "1500",
        ],
    );

    // First kill: a fifth of the way in.
    let at_first = env.until_stream_has(ORDERS as u64 / 5).await;
    leader.signal("KILL");
    leader.wait_exit(START).await;
    standby.wait_for_line("became leader", START).await;
    // A fresh standby for the next takeover.
    let mut c = env.leader("c");
    c.wait_for_line("campaigning for leadership", START).await;

    // Second kill: the standby that took over, three fifths of the way in.
    let at_second = env.until_stream_has(ORDERS as u64 * 3 / 5).await;
    standby.signal("KILL");
    standby.wait_exit(START).await;
    c.wait_for_line("became leader", START).await;
    assert!(
        at_second < ORDERS as u64,
        "the stream was complete before the second kill"
    );

    assert_eq!(
        producer.wait_exit(WAIT).await.code(),
        Some(0),
        "producer: {}",
        producer.logs()
    );
    assert_eq!(
        env.count("SELECT count(*) FROM \"{app}\".orders").await,
        ORDERS as i64
    );
    env.until_outbox_empty().await;
    let messages = env
        .nats
        .wait_for_stream(ORDERS, Duration::from_secs(30))
        .await;
    assert_eq!(messages.len(), ORDERS, "every event once in the stream");
    let per_customer = check_stream(&messages, &env.nats.subject("created"));
    assert_eq!(per_customer.len(), CUSTOMERS);
    assert_eq!(per_customer.values().sum::<i64>(), ORDERS as i64);
    eprintln!("killed leaders at {at_first} and {at_second} of {ORDERS} events");

    c.signal("TERM");
    assert_eq!(c.wait_exit(START).await.code(), Some(0));
    assert_eq!(c.count_lines("became leader"), 1);
}
