//! The relay's logs during a broker outage: one line when it starts, one when it ends.

use std::time::Duration;

use outbox_core::Standalone;
use outbox_testkit::FaultyBroker;
use outbox_testkit::memory::{MemoryBroker, MemoryStore};

mod support;
use support::{WAIT, assert_all_once_in_key_order, fast_config, messages, start, until_empty};

/// Collects formatted log lines in memory.
#[derive(Clone, Default)]
struct Logs(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Logs {
    fn count(&self, needle: &str) -> usize {
        String::from_utf8_lossy(&self.0.lock().unwrap())
            .lines()
            .filter(|l| l.contains(needle))
            .count()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_outage_is_logged_once_when_it_starts_and_once_when_it_ends() {
    let logs = Logs::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    // The only test of this binary: tracing caches per call site whether anyone listens, which
    // a scoped subscriber in a binary full of concurrent tests cannot rely on.
    tracing::subscriber::set_global_default(subscriber).unwrap();

    let store = MemoryStore::new();
    let broker = FaultyBroker::new(MemoryBroker::new());
    broker.set_down(true);
    let sent = messages(500, 20);
    for m in &sent {
        store.enqueue(m.clone());
    }
    let relay = start(store.clone(), broker.clone(), Standalone, fast_config());
    tokio::time::timeout(WAIT, async {
        while broker.failures() < 200 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap();
    broker.set_down(false);
    until_empty(&store).await;
    relay.stop().await;

    assert_eq!(logs.count("broker unavailable; publishing paused"), 1);
    assert_eq!(logs.count("broker available again"), 1);
    assert_eq!(logs.count("became leader"), 1);
    assert_all_once_in_key_order(&sent, &broker.inner().published());
}
