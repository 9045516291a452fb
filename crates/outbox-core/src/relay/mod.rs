//! The relay: moves committed messages from a [`Store`] to a [`Broker`] while this instance leads.
//!
//! ```text
//!            campaign() won                     shutdown
//!  Campaigning ───────────────▶ Leading ──────────────────▶ Stopped
//!      ▲                          │   (drain acks in flight for at most
//!      │   leadership lost,       │    shutdown_grace, record them)
//!      └──────────────────────────┘
//!          store failed: resign, back off, campaign again
//! ```
//!
//! While leading, one loop (in `dispatch`) repeats: record acknowledged and failed messages in
//! the store; claim the next batch of due messages (heads of keys, skipping what it holds);
//! publish each one whose key has nothing in flight, queue the others behind their key; then wait
//! for an acknowledgement, a wake-up from the store, or the poll interval. Messages of one key go
//! out one at a time in `seq` order, each only after the previous one was acknowledged; different
//! keys go out concurrently, up to [`RelayConfig::max_in_flight`].
//!
//! Crash safety comes from the order of effects: a message leaves the store only after its
//! acknowledgement, so a crash anywhere leads to a republish, never to a loss, and a broker that
//! deduplicates by message id (JetStream) drops the republish.

mod backoff;
mod dispatch;

use std::convert::Infallible;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use crate::{Broker, Elector, Error, RelayConfig, Store};
use backoff::Backoff;
use dispatch::{Dispatcher, TermEnd};

/// What a relay is doing; watch it with [`Relay::state`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RelayState {
    /// Waiting to lead (another instance leads, or the store is unreachable).
    Campaigning,
    /// Leading and relaying.
    Leading,
    /// Shut down.
    Stopped,
}

impl RelayState {
    /// Whether this instance currently leads.
    pub fn is_leading(self) -> bool {
        self == RelayState::Leading
    }
}

/// Moves committed messages from a store to a broker, while its elector says it leads.
///
/// # Guarantees
///
/// - A message is removed from the store only after the broker acknowledged it.
/// - Messages with the same key are published in `seq` order, the next only after the previous
///   one was acknowledged; a failed message blocks its own key until it is retried or
///   dead-lettered, never other keys.
/// - Failed publishes are retried with exponential backoff and jitter; after
///   [`RelayConfig::max_attempts`], or at once for a permanent error, the message is
///   dead-lettered.
/// - While the broker is unavailable ([`Error::is_unavailable`]) it pauses publishing, backs
///   off, logs once when the broker goes away and once when it is back, and counts no attempts.
/// - On leadership loss it stops publishing at once; on shutdown it stops claiming, waits for
///   acknowledgements in flight for at most [`RelayConfig::shutdown_grace`], records them, and
///   returns.
///
/// See the [crate documentation](crate) for an example.
#[derive(Debug)]
pub struct Relay<S, B, E> {
    store: S,
    broker: B,
    elector: E,
    config: RelayConfig,
    state: watch::Sender<RelayState>,
}

impl<S: Store, B: Broker, E: Elector> Relay<S, B, E> {
    /// A relay over `store`, `broker` and `elector`; fails if `config` is invalid.
    pub fn new(store: S, broker: B, elector: E, config: RelayConfig) -> Result<Self, Error> {
        config.validate()?;
        crate::telemetry::describe();
        Ok(Self {
            store,
            broker,
            elector,
            config,
            state: watch::Sender::new(RelayState::Campaigning),
        })
    }

    /// A receiver of the relay's state, e.g. for a health endpoint.
    pub fn state(&self) -> watch::Receiver<RelayState> {
        self.state.subscribe()
    }

    /// Runs until `shutdown` is cancelled: campaigns, relays while leading, campaigns again after
    /// a loss. Errors of the store, broker or elector are logged and retried with backoff; they
    /// never end the loop.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut reconnect = Backoff::new(self.config.reconnect_base, self.config.reconnect_max);
        loop {
            self.state.send_replace(RelayState::Campaigning);
            let campaign = tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                result = self.elector.campaign() => result,
            };
            let leadership = match campaign {
                Ok(leadership) => leadership,
                Err(error) => {
                    let delay = reconnect.next_delay();
                    tracing::warn!(%error, retry_in = ?delay, "campaign for leadership failed");
                    if sleep_or_shutdown(delay, &shutdown).await {
                        break;
                    }
                    continue;
                }
            };
            self.state.send_replace(RelayState::Leading);
            crate::telemetry::leading(true);
            tracing::info!("became leader; relaying");
            // The backlog sample and housekeeping run beside the dispatcher, in this task: a
            // count of a large backlog takes tens of milliseconds, during which claims and
            // acknowledgements go on. They stop with the term.
            let end = tokio::select! {
                end = Dispatcher::new(&self.store, &self.broker, &self.config)
                    .run(&leadership, &shutdown) => end,
                never = sample_every(&self.store, self.config.backlog_interval) => match never {},
            };
            drop(leadership);
            crate::telemetry::leading(false);
            self.state.send_replace(RelayState::Campaigning);
            match end {
                TermEnd::Shutdown => break,
                TermEnd::Lost => {
                    tracing::warn!("lost leadership; stopped relaying");
                    reconnect.reset();
                }
                TermEnd::Failed(error) => {
                    let delay = reconnect.next_delay();
                    tracing::warn!(%error, retry_in = ?delay, "store failed; resigned leadership");
                    if sleep_or_shutdown(delay, &shutdown).await {
                        break;
                    }
                }
            }
        }
        self.state.send_replace(RelayState::Stopped);
        tracing::info!("relay stopped");
    }
}

/// Every `interval` from now: updates the backlog gauges, then lets the store do its
/// housekeeping. Runs until dropped.
async fn sample_every<S: Store>(store: &S, interval: Duration) -> Infallible {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        match store.backlog().await {
            Ok(Some(backlog)) => crate::telemetry::backlog(backlog.pending, backlog.lag),
            Ok(None) => {}
            Err(error) => tracing::debug!(%error, "could not sample the backlog"),
        }
        if let Err(error) = store.housekeep().await {
            tracing::warn!(%error, "store housekeeping failed; trying again later");
        }
    }
}

/// Sleeps for `delay`; returns whether shutdown came first.
async fn sleep_or_shutdown(delay: Duration, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        () = shutdown.cancelled() => true,
        () = tokio::time::sleep(delay) => false,
    }
}
