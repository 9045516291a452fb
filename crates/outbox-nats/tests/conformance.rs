//! The testkit's broker conformance suite against both publishers, on a real NATS server
//! (`NATS_URL`, default `nats://127.0.0.1:4222`).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use outbox_nats::{CorePublisher, JetStreamPublisher};
use outbox_testkit::broker_suite::BrokerHarness;
use outbox_testkit::{Received, TestNats};
use tokio::sync::watch;

/// Publishes with JetStream into the test's own stream and reads back what the stream stored.
struct JetStreamHarness {
    nats: TestNats,
    publisher: JetStreamPublisher,
}

async fn jetstream_harness() -> JetStreamHarness {
    let nats = TestNats::new().await;
    let publisher = JetStreamPublisher::new(nats.client());
    JetStreamHarness { nats, publisher }
}

#[async_trait]
impl BrokerHarness for JetStreamHarness {
    type Broker = JetStreamPublisher;

    fn broker(&self) -> &JetStreamPublisher {
        &self.publisher
    }

    fn subject(&self, name: &str) -> String {
        self.nats.subject(name)
    }

    async fn received(&self, n: usize, timeout: Duration) -> Vec<Received> {
        self.nats.wait_for_stream(n, timeout).await
    }

    fn deduplicates(&self) -> bool {
        true
    }

    fn max_payload(&self) -> usize {
        self.nats.client().server_info().max_payload
    }
}

/// Publishes with core NATS on the test's own subject prefix, to a subscription opened (and
/// confirmed by a round trip) before anything is published.
struct CoreHarness {
    nats: TestNats,
    publisher: CorePublisher,
    received: Arc<Mutex<Vec<Received>>>,
    count: watch::Receiver<usize>,
}

async fn core_harness() -> CoreHarness {
    let nats = TestNats::new().await;
    // A second connection, so that the subscriber is not the publisher's connection.
    let subscriber = async_nats::connect(nats.url())
        .await
        .unwrap_or_else(|e| panic!("connect: {e}"));
    let mut subscription = subscriber
        .subscribe(format!("{}.>", nats.prefix()))
        .await
        .unwrap_or_else(|e| panic!("subscribe: {e}"));
    // A round trip after the SUB makes sure the server registered it: async-nats' flush is
    // local, but a request nobody listens to comes back from the server as "no responders".
    let nobody = format!("outbox-nats-barrier.{}", outbox_testkit::unique_suffix());
    let answer = subscriber.request(nobody, "".into()).await;
    assert!(
        matches!(&answer, Err(e) if e.kind() == async_nats::RequestErrorKind::NoResponders),
        "{answer:?}"
    );
    let received = Arc::new(Mutex::new(Vec::new()));
    let (count_tx, count) = watch::channel(0);
    let sink = Arc::clone(&received);
    tokio::spawn(async move {
        // Keep the subscriber's client alive as long as the subscription.
        let _client = subscriber;
        while let Some(message) = subscription.next().await {
            let len = {
                let mut all = sink.lock().unwrap_or_else(|e| e.into_inner());
                all.push(Received::from_nats(&message));
                all.len()
            };
            count_tx.send_replace(len);
        }
    });
    let publisher = CorePublisher::new(nats.client());
    CoreHarness {
        nats,
        publisher,
        received,
        count,
    }
}

#[async_trait]
impl BrokerHarness for CoreHarness {
    type Broker = CorePublisher;

    fn broker(&self) -> &CorePublisher {
        &self.publisher
    }

    fn subject(&self, name: &str) -> String {
        self.nats.subject(name)
    }

    async fn received(&self, n: usize, timeout: Duration) -> Vec<Received> {
        let mut count = self.count.clone();
        let _ = tokio::time::timeout(timeout, count.wait_for(|c| *c >= n)).await;
        self.received
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn deduplicates(&self) -> bool {
        false
    }

    fn max_payload(&self) -> usize {
        self.nats.client().server_info().max_payload
    }
}

mod jetstream {
    use super::jetstream_harness;
    outbox_testkit::broker_conformance!(jetstream_harness);
}

mod core {
    use super::core_harness;
    outbox_testkit::broker_conformance!(core_harness);
}
