use std::time::Duration;

use outbox_core::{Broker, CancellationToken, Elector, Relay, RelayConfig, RelayState, Store};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// A [`Relay`] running in a task of its own, with its shutdown token and state.
///
/// # Examples
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use outbox_core::{RelayConfig, Standalone};
/// use outbox_testkit::RelayTask;
/// use outbox_testkit::memory::{MemoryBroker, MemoryStore};
///
/// let mut relay = RelayTask::start(MemoryStore::new(), MemoryBroker::new(), Standalone, RelayConfig::default());
/// relay.until_leading(std::time::Duration::from_secs(5)).await;
/// relay.stop().await;
/// # }
/// ```
#[derive(Debug)]
pub struct RelayTask {
    shutdown: CancellationToken,
    task: JoinHandle<()>,
    state: watch::Receiver<RelayState>,
}

/// How long [`RelayTask::stop`] waits for the relay to return.
const STOP_WITHIN: Duration = Duration::from_secs(60);

impl RelayTask {
    /// Spawns a relay.
    ///
    /// # Panics
    ///
    /// When `config` is invalid.
    pub fn start<S: Store, B: Broker, E: Elector>(
        store: S,
        broker: B,
        elector: E,
        config: RelayConfig,
    ) -> Self {
        let relay = Relay::new(store, broker, elector, config)
            .unwrap_or_else(|e| panic!("relay configuration: {e}"));
        let state = relay.state();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(relay.run(shutdown.clone()));
        Self {
            shutdown,
            task,
            state,
        }
    }

    /// The relay's state now.
    pub fn state(&self) -> RelayState {
        *self.state.borrow()
    }

    /// A receiver of the relay's states.
    pub fn states(&self) -> watch::Receiver<RelayState> {
        self.state.clone()
    }

    /// Waits until the relay leads.
    ///
    /// # Panics
    ///
    /// When it does not lead within `within`.
    pub async fn until_leading(&mut self, within: Duration) {
        tokio::time::timeout(within, self.state.wait_for(|s| s.is_leading()))
            .await
            .unwrap_or_else(|_| panic!("the relay did not lead within {within:?}"))
            .unwrap_or_else(|e| panic!("relay state: {e}"));
    }

    /// Cancels the relay gracefully and waits for `run` to return; returns how long that took.
    ///
    /// # Panics
    ///
    /// When the relay does not return within a minute, or its task panicked.
    pub async fn stop(self) -> Duration {
        let asked = Instant::now();
        self.shutdown.cancel();
        tokio::time::timeout(STOP_WITHIN, self.task)
            .await
            .unwrap_or_else(|_| panic!("the relay did not stop within {STOP_WITHIN:?}"))
            .unwrap_or_else(|e| panic!("relay task: {e}"));
        asked.elapsed()
    }

    /// Kills the relay without a goodbye, as a crash would: nothing is drained or recorded.
    pub async fn abort(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}
