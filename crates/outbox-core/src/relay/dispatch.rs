//! One term of leadership: claim, publish, record, repeat.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use foldhash::fast::RandomState;
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::backoff::{Backoff, retry_delay};
use crate::{
    Ack, Broker, ClaimRequest, Claimed, Error, Failure, FailureAction, KeyOrder, Leadership,
    PendingAck, RelayConfig, Store,
};
use crate::{telemetry, trace};

/// Why a term ended.
#[derive(Debug)]
pub(crate) enum TermEnd {
    /// Shutdown was requested; acknowledgements in flight were waited for and recorded.
    Shutdown,
    /// The elector reported the loss of leadership.
    Lost,
    /// The store failed; the relay resigns and campaigns again.
    Failed(Error),
}

/// A published message: when it was sent, and its `outbox.publish` span (open until the
/// acknowledgement is handled).
struct Sent {
    claimed: Claimed,
    at: Instant,
    span: tracing::Span,
}

/// A published message waiting for its acknowledgement. A plain future rather than a boxed
/// `async` block: one allocation less per message, and the message is moved once.
struct InFlight {
    /// Taken when the acknowledgement arrives.
    sent: Option<Sent>,
    ack: PendingAck,
}

impl Future for InFlight {
    type Output = (Sent, Result<Ack, Error>);

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let result = ready!(Pin::new(&mut self.ack).poll(cx));
        match self.sent.take() {
            Some(sent) => Poll::Ready((sent, result)),
            // Polled again after it completed, which `FuturesUnordered` never does.
            None => Poll::Pending,
        }
    }
}

type HashSet<T> = std::collections::HashSet<T, RandomState>;
type HashMap<K, V> = std::collections::HashMap<K, V, RandomState>;

/// The relay's working memory during one term.
pub(crate) struct Dispatcher<'a, S, B> {
    store: &'a S,
    broker: &'a B,
    config: &'a RelayConfig,
    /// Claimed and not yet recorded as completed or failed: never claimed again this term.
    held: HashSet<i64>,
    /// A key is present while one of its messages is in flight; the queue holds the messages
    /// of that key waiting for it, in `seq` order.
    keys: HashMap<String, VecDeque<Claimed>>,
    /// Keys with a failure not yet recorded in the store: their later messages must not go out
    /// before the store decided what comes next (retry later, dead letter, or claim again).
    blocked: HashSet<String>,
    in_flight: FuturesUnordered<InFlight>,
    /// Messages whose key an acknowledgement just freed, published together once the
    /// acknowledgements at hand are handled: back to back, they reach the broker in fewer writes.
    next_up: Vec<Claimed>,
    acked: Vec<i64>,
    failed: Vec<Failure>,
    draining: bool,
    /// The next claim may go out: false from a short claim (caught up) until the poll interval
    /// passed or the store woke the relay.
    claim_ready: bool,
    /// The last claim found less than it asked for.
    caught_up: bool,
    /// When caught up: when to claim again, unless the store wakes the relay earlier.
    poll_at: Option<Instant>,
    health: BrokerHealth,
    outage: Backoff,
}

/// One round trip to the store: deletes to send, and how many messages to claim (0: none).
#[derive(Debug, Clone, Copy)]
struct Round {
    flushing: bool,
    limit: usize,
}

/// Whether the broker answers; publishing pauses while it does not.
#[derive(Debug)]
enum BrokerHealth {
    Up,
    /// An unavailable error arrived since the last pause: pause before publishing more.
    Failing(Error),
    /// Paused at least once; waiting for an acknowledgement to show the broker is back.
    Down,
}

impl<'a, S: Store, B: Broker> Dispatcher<'a, S, B> {
    pub(crate) fn new(store: &'a S, broker: &'a B, config: &'a RelayConfig) -> Self {
        Self {
            store,
            broker,
            config,
            held: HashSet::default(),
            keys: HashMap::default(),
            blocked: HashSet::default(),
            in_flight: FuturesUnordered::new(),
            next_up: Vec::new(),
            acked: Vec::new(),
            failed: Vec::new(),
            draining: false,
            claim_ready: true,
            caught_up: false,
            poll_at: None,
            health: BrokerHealth::Up,
            outage: Backoff::new(config.reconnect_base, config.reconnect_max),
        }
    }

    pub(crate) async fn run(
        mut self,
        leadership: &Leadership,
        shutdown: &CancellationToken,
    ) -> TermEnd {
        let mut exclude = Vec::new();
        loop {
            // Failures are rare and keep their keys blocked until recorded: record them first.
            if let Err(error) = self.settle_failures().await {
                return TermEnd::Failed(error);
            }
            if leadership.is_lost() {
                return TermEnd::Lost;
            }
            if shutdown.is_cancelled() {
                return self.drain().await;
            }
            if let Some(error) = self.take_outage() {
                let delay = self.outage.next_delay();
                tracing::debug!(%error, retry_in = ?delay, "broker still unavailable");
                tokio::select! {
                    biased;
                    () = shutdown.cancelled() => {}
                    () = leadership.lost() => {}
                    () = tokio::time::sleep(delay) => {}
                }
                self.collect_ready().await;
                continue;
            }

            let Round { flushing, limit } = self.next_round();
            if !flushing && limit == 0 {
                // Nothing to send: wait for an acknowledgement or, when caught up, for new work.
                let waiting_for_work = !self.claim_ready || self.in_flight.is_empty();
                // The poll interval runs from the short claim, not from the last acknowledgement.
                let poll = self.poll_at.map_or(self.config.poll_interval, |at| {
                    at.saturating_duration_since(Instant::now())
                });
                tokio::select! {
                    biased;
                    () = shutdown.cancelled() => {}
                    () = leadership.lost() => {}
                    Some(done) = self.in_flight.next(), if !self.in_flight.is_empty() => {
                        self.on_ack(done);
                    }
                    () = self.store.wait_for_work(poll), if waiting_for_work => {
                        self.claim_ready = true;
                    }
                }
                self.collect_ready().await;
                continue;
            }
            if limit > 0 {
                exclude.clear();
                exclude.extend(self.held.iter().copied());
            }
            let (completed, claimed) = {
                let store = self.store;
                let acked = &self.acked;
                let exclude = &exclude;
                let complete = async move {
                    if flushing {
                        let span = tracing::debug_span!("outbox.complete", messages = acked.len());
                        store.complete(acked).instrument(span).await
                    } else {
                        Ok(())
                    }
                };
                let claim = async move {
                    if limit == 0 {
                        return None;
                    }
                    let span = tracing::debug_span!(
                        "outbox.claim",
                        limit,
                        claimed = tracing::field::Empty
                    );
                    let batch = store
                        .claim(ClaimRequest::new(limit, exclude))
                        .instrument(span.clone())
                        .await;
                    if let Ok(batch) = &batch {
                        span.record("claimed", batch.len());
                    }
                    Some(batch)
                };
                tokio::select! {
                    biased;
                    () = leadership.lost() => return TermEnd::Lost,
                    done = futures::future::join(complete, claim) => done,
                }
            };
            if let Err(error) = completed {
                return TermEnd::Failed(error);
            }
            if flushing {
                for seq in self.acked.drain(..) {
                    self.held.remove(&seq);
                }
            }
            if let Some(claimed) = claimed {
                let batch = match claimed {
                    Ok(batch) => batch,
                    Err(error) => return TermEnd::Failed(error),
                };
                if !batch.is_empty() {
                    telemetry::claimed(batch.len());
                }
                // A short batch means the relay caught up: claim again after the poll interval
                // (or a wake-up), not on every acknowledgement.
                self.caught_up = batch.len() < limit;
                self.claim_ready = !self.caught_up;
                self.poll_at = self
                    .caught_up
                    .then(|| Instant::now() + self.config.poll_interval);
                for claimed in batch {
                    self.dispatch(claimed).await;
                }
            }
            self.collect_ready().await;
        }
    }

    /// What the next round trip to the store does, if anything.
    ///
    /// With a backlog, claims are whole batches that overlap the acknowledgements of earlier
    /// ones: a claim goes out once a whole batch fits in the window, or at once when nothing is
    /// in flight. Once caught up, the relay claims whatever fits at each poll or wake-up. Deletes
    /// go out a batch at a time, or with the claim when nothing else is in flight or the relay
    /// is caught up; either way in the same round trip as the claim.
    fn next_round(&self) -> Round {
        let batch = self.config.batch_size;
        let idle = self.in_flight.is_empty();
        let flushing = !self.acked.is_empty()
            && (self.acked.len() >= batch || (self.claim_ready && (idle || self.caught_up)));
        let unsettled = if flushing { self.acked.len() } else { 0 };
        let room = self
            .config
            .max_in_flight
            .saturating_sub(self.held.len().saturating_sub(unsettled));
        let limit = room.min(batch);
        let claiming = self.claim_ready && (limit == batch || idle || self.caught_up);
        Round {
            flushing,
            limit: if claiming { limit } else { 0 },
        }
    }

    /// Records acknowledged and failed messages in the store, and waits for nothing else.
    async fn settle(&mut self) -> Result<(), Error> {
        if !self.acked.is_empty() {
            self.store.complete(&self.acked).await?;
            for seq in self.acked.drain(..) {
                self.held.remove(&seq);
            }
        }
        self.settle_failures().await
    }

    /// Records failed messages in the store. Afterwards the store's order rules hold for every
    /// key again, so no key stays blocked in memory.
    async fn settle_failures(&mut self) -> Result<(), Error> {
        if !self.failed.is_empty() {
            let dead = self
                .failed
                .iter()
                .filter(|f| f.action == FailureAction::DeadLetter)
                .count();
            tracing::warn!(
                failed = self.failed.len(),
                dead_lettered = dead,
                first_error = %self.failed[0].error,
                "publishes failed"
            );
            telemetry::settled_failures(self.failed.len() - dead, dead);
            let span = tracing::debug_span!(
                "outbox.fail",
                messages = self.failed.len(),
                dead_lettered = dead
            );
            self.store.fail(&self.failed).instrument(span).await?;
            for failure in self.failed.drain(..) {
                self.held.remove(&failure.seq);
            }
        }
        self.blocked.clear();
        Ok(())
    }

    /// Takes a claimed message: publishes it, or queues it behind its key's message in flight.
    async fn dispatch(&mut self, claimed: Claimed) {
        if claimed
            .message
            .key()
            .is_some_and(|key| self.blocked.contains(key))
        {
            // An earlier message of this key just failed: leave this one in the store.
            return;
        }
        self.held.insert(claimed.seq);
        let key = match self.config.key_order {
            KeyOrder::Strict => claimed.message.key(),
            // Pipelined: nothing waits behind its key; the blocked set still stops a key after
            // a failure.
            _ => None,
        };
        match key {
            Some(key) => match self.keys.get_mut(key) {
                Some(waiting) => waiting.push_back(claimed),
                None => {
                    self.keys.insert(key.to_owned(), VecDeque::new());
                    self.publish(claimed).await;
                }
            },
            None => self.publish(claimed).await,
        }
    }

    async fn publish(&mut self, claimed: Claimed) {
        let span = trace::publish_span(&claimed.message);
        if !span.is_disabled() {
            span.record("attempts", claimed.attempts);
        }
        match self
            .broker
            .publish(&claimed.message)
            .instrument(span.clone())
            .await
        {
            Ok(ack) => self.in_flight.push(InFlight {
                sent: Some(Sent {
                    claimed,
                    at: Instant::now(),
                    span,
                }),
                ack,
            }),
            Err(error) => {
                record_error(&span, &error);
                self.fail(claimed, error);
            }
        }
    }

    fn on_ack(&mut self, (sent, result): (Sent, Result<Ack, Error>)) {
        let Sent { claimed, at, span } = sent;
        match result {
            Ok(ack) => {
                span.record("duplicate", ack.duplicate);
                telemetry::acknowledged(ack.duplicate, at.elapsed());
                if matches!(self.health, BrokerHealth::Down) {
                    tracing::info!("broker available again; publishing resumed");
                    self.health = BrokerHealth::Up;
                    self.outage.reset();
                }
                if ack.duplicate {
                    tracing::debug!(id = %claimed.message.id(), "broker dropped a duplicate");
                }
                self.acked.push(claimed.seq);
                if let Some(key) = claimed.message.key() {
                    self.advance(key);
                }
            }
            Err(error) => {
                record_error(&span, &error);
                self.fail(claimed, error);
            }
        }
    }

    /// Makes the next waiting message of `key` the next to publish, or frees the key.
    fn advance(&mut self, key: &str) {
        let next = if self.draining {
            None
        } else {
            self.keys.get_mut(key).and_then(VecDeque::pop_front)
        };
        match next {
            Some(next) => self.next_up.push(next),
            None => self.release(key),
        }
    }

    /// Frees `key` and forgets its waiting messages; they are claimed again later, after
    /// whatever blocked them was recorded in the store.
    fn release(&mut self, key: &str) {
        if let Some(waiting) = self.keys.remove(key) {
            for claimed in waiting {
                self.held.remove(&claimed.seq);
            }
        }
    }

    fn fail(&mut self, claimed: Claimed, error: Error) {
        telemetry::failed(&error);
        if let Some(key) = claimed.message.key() {
            self.release(key);
            self.blocked.insert(key.to_owned());
        }
        if error.is_unavailable() {
            // Not the message's fault: forget it without counting an attempt; it stays due and
            // is claimed again once the broker answers.
            self.held.remove(&claimed.seq);
            if matches!(self.health, BrokerHealth::Up) {
                tracing::warn!(%error, "broker unavailable; publishing paused");
            }
            if !matches!(self.health, BrokerHealth::Failing(_)) {
                self.health = BrokerHealth::Failing(error);
            }
            return;
        }
        let attempts = claimed.attempts.saturating_add(1);
        let action = if error.is_retryable() && attempts < self.config.max_attempts {
            FailureAction::Retry {
                after: retry_delay(
                    self.config.retry_base,
                    self.config.retry_max,
                    claimed.attempts,
                ),
            }
        } else {
            FailureAction::DeadLetter
        };
        self.failed.push(Failure {
            seq: claimed.seq,
            error: error.to_string(),
            action,
        });
    }

    /// The error that calls for a pause, if one arrived since the last pause.
    fn take_outage(&mut self) -> Option<Error> {
        match std::mem::replace(&mut self.health, BrokerHealth::Down) {
            BrokerHealth::Failing(error) => Some(error),
            other => {
                self.health = other;
                None
            }
        }
    }

    /// Handles every acknowledgement that already arrived, without waiting, then publishes the
    /// messages they let go.
    async fn collect_ready(&mut self) {
        while let Some(Some(done)) = self.in_flight.next().now_or_never() {
            self.on_ack(done);
        }
        let mut next_up = std::mem::take(&mut self.next_up);
        for claimed in next_up.drain(..) {
            self.publish(claimed).await;
        }
        self.next_up = next_up;
    }

    /// Stops publishing, waits for acknowledgements in flight (bounded), records them.
    async fn drain(mut self) -> TermEnd {
        self.draining = true;
        for queue in self.keys.values_mut() {
            for claimed in queue.drain(..) {
                self.held.remove(&claimed.seq);
            }
        }
        let deadline = tokio::time::Instant::now() + self.config.shutdown_grace;
        while !self.in_flight.is_empty() {
            match tokio::time::timeout_at(deadline, self.in_flight.next()).await {
                Ok(Some(done)) => self.on_ack(done),
                Ok(None) => break,
                Err(_) => {
                    tracing::warn!(
                        in_flight = self.in_flight.len(),
                        "shutdown grace elapsed; unacknowledged messages will be published again"
                    );
                    break;
                }
            }
        }
        if let Err(error) = self.settle().await {
            tracing::warn!(%error, "could not record the last acknowledgements; they will be published again");
        }
        TermEnd::Shutdown
    }
}

/// Marks a publish span as failed.
fn record_error(span: &tracing::Span, error: &Error) {
    if !span.is_disabled() {
        span.record("error", tracing::field::display(error));
        span.record("otel.status_code", "ERROR");
    }
}
