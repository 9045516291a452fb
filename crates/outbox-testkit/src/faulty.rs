use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use outbox_core::{Broker, ClaimRequest, Claimed, Error, Failure, Message, PendingAck, Store};
use rand::Rng;

#[derive(Debug, Default)]
struct Faults {
    down: AtomicBool,
    fail_next: AtomicUsize,
    fail_next_transient: AtomicBool,
    /// Probability of failure, in millionths.
    ratio_ppm: AtomicU64,
    lose_acks: AtomicBool,
    attempts: AtomicUsize,
    failures: AtomicUsize,
}

/// Wraps a broker and makes its publishes fail on command.
///
/// Cloning gives another handle on the same faults.
///
/// # Examples
///
/// ```
/// use outbox_testkit::FaultyBroker;
/// use outbox_testkit::memory::MemoryBroker;
///
/// let broker = FaultyBroker::new(MemoryBroker::new());
/// broker.fail_next(3, true); // the next three publishes fail with a transient error
/// broker.fail_ratio(0.3);    // then 30 % of publishes fail at random
/// broker.set_down(true);     // every publish fails until set_down(false)
/// ```
#[derive(Debug, Clone)]
pub struct FaultyBroker<B> {
    inner: Arc<B>,
    faults: Arc<Faults>,
    last_error: Arc<Mutex<Option<String>>>,
}

impl<B: Broker> FaultyBroker<B> {
    /// Wraps `inner`; no faults until told.
    pub fn new(inner: B) -> Self {
        Self {
            inner: Arc::new(inner),
            faults: Arc::default(),
            last_error: Arc::default(),
        }
    }

    /// The wrapped broker.
    pub fn inner(&self) -> &B {
        &self.inner
    }

    /// While `down`, every publish fails as if the broker could not be reached
    /// ([`Error::is_unavailable`]).
    pub fn set_down(&self, down: bool) {
        self.faults.down.store(down, Ordering::SeqCst);
    }

    /// The next `n` publishes fail, with a transient or a permanent error.
    pub fn fail_next(&self, n: usize, transient: bool) {
        self.faults
            .fail_next_transient
            .store(transient, Ordering::SeqCst);
        self.faults.fail_next.store(n, Ordering::SeqCst);
    }

    /// Each publish fails with a transient error with probability `ratio` (0.0 to 1.0).
    pub fn fail_ratio(&self, ratio: f64) {
        let ppm = (ratio.clamp(0.0, 1.0) * 1_000_000.0) as u64;
        self.faults.ratio_ppm.store(ppm, Ordering::SeqCst);
    }

    /// While set, messages really are published, but their acknowledgement is reported as a
    /// transient error: a lost ack, as after a connection drop.
    pub fn lose_acks(&self, lose: bool) {
        self.faults.lose_acks.store(lose, Ordering::SeqCst);
    }

    /// Publishes attempted so far.
    pub fn attempts(&self) -> usize {
        self.faults.attempts.load(Ordering::SeqCst)
    }

    /// Publishes failed on purpose so far.
    pub fn failures(&self) -> usize {
        self.faults.failures.load(Ordering::SeqCst)
    }

    fn injected(&self) -> Option<Error> {
        let f = &self.faults;
        if f.down.load(Ordering::SeqCst) {
            return Some(Error::broker_unavailable("broker down (injected)"));
        }
        let armed = f
            .fail_next
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if armed {
            return Some(if f.fail_next_transient.load(Ordering::SeqCst) {
                Error::broker_transient("publish failed (injected)")
            } else {
                Error::broker_permanent("message rejected (injected)")
            });
        }
        let ppm = f.ratio_ppm.load(Ordering::SeqCst);
        if ppm > 0 && rand::rng().random_range(0..1_000_000) < ppm {
            return Some(Error::broker_transient(
                "publish failed at random (injected)",
            ));
        }
        None
    }
}

#[async_trait]
impl<B: Broker> Broker for FaultyBroker<B> {
    async fn publish(&self, message: &Message) -> Result<PendingAck, Error> {
        self.faults.attempts.fetch_add(1, Ordering::SeqCst);
        if let Some(error) = self.injected() {
            self.faults.failures.fetch_add(1, Ordering::SeqCst);
            if let Ok(mut last) = self.last_error.lock() {
                *last = Some(error.to_string());
            }
            return Err(error);
        }
        let pending = self.inner.publish(message).await?;
        if self.faults.lose_acks.load(Ordering::SeqCst) {
            let faults = self.faults.clone();
            return Ok(PendingAck::new(async move {
                let _ = pending.await;
                faults.failures.fetch_add(1, Ordering::SeqCst);
                Err(Error::broker_transient("acknowledgement lost (injected)"))
            }));
        }
        Ok(pending)
    }
}

#[derive(Debug, Default)]
struct StoreFaults {
    fail_complete: AtomicBool,
    completes_refused: AtomicUsize,
}

/// Wraps a store and makes it fail on command, to simulate a relay that dies between publishing
/// and recording the acknowledgement.
///
/// Cloning gives another handle on the same faults.
#[derive(Debug, Clone)]
pub struct FaultyStore<S> {
    inner: S,
    faults: Arc<StoreFaults>,
}

impl<S: Store + Clone> FaultyStore<S> {
    /// Wraps `inner`; no faults until told.
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            faults: Arc::default(),
        }
    }

    /// While set, [`Store::complete`] removes nothing and fails with a transient error: as if the
    /// relay died right after the broker acknowledged.
    pub fn fail_completes(&self, fail: bool) {
        self.faults.fail_complete.store(fail, Ordering::SeqCst);
    }

    /// Completes refused so far.
    pub fn completes_refused(&self) -> usize {
        self.faults.completes_refused.load(Ordering::SeqCst)
    }
}

#[async_trait]
impl<S: Store + Clone> Store for FaultyStore<S> {
    async fn claim(&self, request: ClaimRequest<'_>) -> Result<Vec<Claimed>, Error> {
        self.inner.claim(request).await
    }

    async fn complete(&self, seqs: &[i64]) -> Result<(), Error> {
        if self.faults.fail_complete.load(Ordering::SeqCst) {
            self.faults.completes_refused.fetch_add(1, Ordering::SeqCst);
            return Err(Error::store_transient("complete refused (injected)"));
        }
        self.inner.complete(seqs).await
    }

    async fn fail(&self, failures: &[Failure]) -> Result<(), Error> {
        self.inner.fail(failures).await
    }

    async fn wait_for_work(&self, timeout: Duration) {
        self.inner.wait_for_work(timeout).await;
    }
}
