//! Wrappers around the relay's store and broker that count and time what the relay asks of
//! them, without changing what it does. They tell when a drain is complete (the store completed
//! every message) and where the relay's time goes (claim, complete, publish, waiting).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use outbox_core::{
    Backlog, Broker, ClaimRequest, Claimed, Error, Failure, Message, PendingAck, Store,
};
use serde::Serialize;
use tokio::sync::watch;
use uuid::Uuid;

/// Counters shared by a [`ProbedStore`] and a [`ProbedBroker`].
#[derive(Debug)]
pub(crate) struct Probe {
    claims: AtomicU64,
    claimed: AtomicU64,
    claim_ns: AtomicU64,
    empty_claims: AtomicU64,
    completes: AtomicU64,
    complete_ns: AtomicU64,
    fails: AtomicU64,
    failed: AtomicU64,
    waits: AtomicU64,
    wait_ns: AtomicU64,
    backlogs: AtomicU64,
    backlog_ns: AtomicU64,
    publishes: AtomicU64,
    publish_ns: AtomicU64,
    completed: watch::Sender<u64>,
    /// Messages expected in a drain; spreads claim times over tenths of it (0: not a drain).
    target: AtomicU64,
    /// Per tenth of the drain (by messages completed when the claim started): claims, nanos.
    claims_by_tenth: [(AtomicU64, AtomicU64); 10],
    /// Per message id, when the relay saw its acknowledgement (only when asked for).
    acks: Option<Mutex<Vec<(Uuid, Instant)>>>,
}

impl Probe {
    pub(crate) fn new(record_acks: bool) -> Arc<Self> {
        Arc::new(Self {
            claims: AtomicU64::new(0),
            claimed: AtomicU64::new(0),
            claim_ns: AtomicU64::new(0),
            empty_claims: AtomicU64::new(0),
            completes: AtomicU64::new(0),
            complete_ns: AtomicU64::new(0),
            fails: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            waits: AtomicU64::new(0),
            wait_ns: AtomicU64::new(0),
            backlogs: AtomicU64::new(0),
            backlog_ns: AtomicU64::new(0),
            publishes: AtomicU64::new(0),
            publish_ns: AtomicU64::new(0),
            completed: watch::Sender::new(0),
            target: AtomicU64::new(0),
            claims_by_tenth: Default::default(),
            acks: record_acks.then(|| Mutex::new(Vec::new())),
        })
    }

    /// Says how many messages the drain expects, so claim times can be told apart by progress.
    pub(crate) fn set_target(&self, n: u64) {
        self.target.store(n, Ordering::Relaxed);
    }

    /// Messages the store completed (deleted) so far.
    pub(crate) fn completed(&self) -> u64 {
        *self.completed.borrow()
    }

    /// Waits until at least `n` messages were completed, for at most `timeout`.
    pub(crate) async fn wait_completed(&self, n: u64, timeout: Duration) -> anyhow::Result<()> {
        let mut rx = self.completed.subscribe();
        match tokio::time::timeout(timeout, rx.wait_for(|done| *done >= n)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(_)) => anyhow::bail!("the relay's store was dropped"),
            Err(_) => anyhow::bail!(
                "the relay completed {} of {n} messages within {timeout:?}",
                self.completed()
            ),
        }
    }

    /// The recorded acknowledgement times, emptied.
    pub(crate) fn take_acks(&self) -> Vec<(Uuid, Instant)> {
        self.acks
            .as_ref()
            .map(|acks| std::mem::take(&mut *acks.lock().unwrap_or_else(|e| e.into_inner())))
            .unwrap_or_default()
    }

    /// What was counted, with `wall` the time the relay ran.
    pub(crate) fn phases(&self, wall: Duration) -> Phases {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let secs = |a: &AtomicU64| load(a) as f64 / 1e9;
        let per = |num: u64, den: u64| {
            if den == 0 {
                0.0
            } else {
                num as f64 / den as f64
            }
        };
        let claims = load(&self.claims);
        let completes = load(&self.completes);
        let completed = self.completed();
        let accounted = secs(&self.claim_ns)
            + secs(&self.complete_ns)
            + secs(&self.publish_ns)
            + secs(&self.backlog_ns);
        Phases {
            wall_s: wall.as_secs_f64(),
            claims,
            empty_claims: load(&self.empty_claims),
            rows_per_claim: per(load(&self.claimed), claims),
            claim_s: secs(&self.claim_ns),
            ms_per_claim: per(load(&self.claim_ns), claims) / 1e6,
            completes,
            rows_per_complete: per(completed, completes),
            complete_s: secs(&self.complete_ns),
            ms_per_complete: per(load(&self.complete_ns), completes) / 1e6,
            publishes: load(&self.publishes),
            publish_s: secs(&self.publish_ns),
            fails: load(&self.fails),
            failed: load(&self.failed),
            poll_waits: load(&self.waits),
            poll_wait_s: secs(&self.wait_ns),
            backlog_samples: load(&self.backlogs),
            backlog_s: secs(&self.backlog_ns),
            other_s: (wall.as_secs_f64() - accounted - secs(&self.wait_ns)).max(0.0),
            ms_per_claim_by_tenth: self
                .claims_by_tenth
                .iter()
                .map(|(count, ns)| (per(load(ns), load(count)) / 1e4).round() / 100.0)
                .collect(),
        }
    }
}

/// Where one relay's time went. The relay loop is one task, so `claim_s + complete_s +
/// publish_s + backlog_s + poll_wait_s + other_s` is its wall time; `other_s` is waiting for
/// acknowledgements (with no room to claim) and its own bookkeeping.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct Phases {
    pub(crate) wall_s: f64,
    pub(crate) claims: u64,
    pub(crate) empty_claims: u64,
    pub(crate) rows_per_claim: f64,
    pub(crate) claim_s: f64,
    pub(crate) ms_per_claim: f64,
    pub(crate) completes: u64,
    pub(crate) rows_per_complete: f64,
    pub(crate) complete_s: f64,
    pub(crate) ms_per_complete: f64,
    pub(crate) publishes: u64,
    pub(crate) publish_s: f64,
    pub(crate) fails: u64,
    pub(crate) failed: u64,
    pub(crate) poll_waits: u64,
    pub(crate) poll_wait_s: f64,
    /// The relay's backlog samples (`count(*)` of the outbox, for its gauges).
    pub(crate) backlog_samples: u64,
    pub(crate) backlog_s: f64,
    pub(crate) other_s: f64,
    /// Mean claim time in each tenth of a drain: it grows when the claim walks what earlier
    /// claims left behind (deleted rows not yet vacuumed).
    pub(crate) ms_per_claim_by_tenth: Vec<f64>,
}

fn nanos(since: Instant) -> u64 {
    u64::try_from(since.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// A [`Store`] that counts and times the calls it forwards.
#[derive(Clone, Debug)]
pub(crate) struct ProbedStore<S> {
    inner: S,
    probe: Arc<Probe>,
}

impl<S> ProbedStore<S> {
    pub(crate) fn new(inner: S, probe: Arc<Probe>) -> Self {
        Self { inner, probe }
    }
}

#[async_trait]
impl<S: Store> Store for ProbedStore<S> {
    async fn claim(&self, request: ClaimRequest<'_>) -> Result<Vec<Claimed>, Error> {
        let p = &self.probe;
        let done = p.completed();
        let start = Instant::now();
        let result = self.inner.claim(request).await;
        let took = nanos(start);
        p.claim_ns.fetch_add(took, Ordering::Relaxed);
        let target = p.target.load(Ordering::Relaxed);
        if let Some(tenths) = (done * 10).checked_div(target) {
            let tenth = usize::try_from(tenths).unwrap_or(9).min(9);
            p.claims_by_tenth[tenth].0.fetch_add(1, Ordering::Relaxed);
            p.claims_by_tenth[tenth]
                .1
                .fetch_add(took, Ordering::Relaxed);
        }
        p.claims.fetch_add(1, Ordering::Relaxed);
        if let Ok(batch) = &result {
            p.claimed.fetch_add(batch.len() as u64, Ordering::Relaxed);
            if batch.is_empty() {
                p.empty_claims.fetch_add(1, Ordering::Relaxed);
            }
        }
        result
    }

    async fn complete(&self, seqs: &[i64]) -> Result<(), Error> {
        let start = Instant::now();
        let result = self.inner.complete(seqs).await;
        let p = &self.probe;
        p.complete_ns.fetch_add(nanos(start), Ordering::Relaxed);
        p.completes.fetch_add(1, Ordering::Relaxed);
        if result.is_ok() {
            p.completed.send_modify(|done| *done += seqs.len() as u64);
        }
        result
    }

    async fn fail(&self, failures: &[Failure]) -> Result<(), Error> {
        let p = &self.probe;
        p.fails.fetch_add(1, Ordering::Relaxed);
        p.failed.fetch_add(failures.len() as u64, Ordering::Relaxed);
        self.inner.fail(failures).await
    }

    async fn backlog(&self) -> Result<Option<Backlog>, Error> {
        let start = Instant::now();
        let result = self.inner.backlog().await;
        let p = &self.probe;
        p.backlog_ns.fetch_add(nanos(start), Ordering::Relaxed);
        p.backlogs.fetch_add(1, Ordering::Relaxed);
        result
    }

    async fn wait_for_work(&self, timeout: Duration) {
        let start = Instant::now();
        self.inner.wait_for_work(timeout).await;
        let p = &self.probe;
        p.wait_ns.fetch_add(nanos(start), Ordering::Relaxed);
        p.waits.fetch_add(1, Ordering::Relaxed);
    }
}

/// A [`Broker`] that times the sends it forwards and, when its probe records acks, notes when
/// each acknowledgement reached the relay.
#[derive(Clone, Debug)]
pub(crate) struct ProbedBroker<B> {
    inner: B,
    probe: Arc<Probe>,
}

impl<B> ProbedBroker<B> {
    pub(crate) fn new(inner: B, probe: Arc<Probe>) -> Self {
        Self { inner, probe }
    }
}

#[async_trait]
impl<B: Broker> Broker for ProbedBroker<B> {
    async fn publish(&self, message: &Message) -> Result<PendingAck, Error> {
        let start = Instant::now();
        let pending = self.inner.publish(message).await;
        let p = &self.probe;
        p.publish_ns.fetch_add(nanos(start), Ordering::Relaxed);
        p.publishes.fetch_add(1, Ordering::Relaxed);
        if p.acks.is_none() {
            return pending;
        }
        let pending = pending?;
        let probe = self.probe.clone();
        let id = message.id();
        Ok(PendingAck::new(async move {
            let result = pending.await;
            if result.is_ok()
                && let Some(acks) = &probe.acks
            {
                let at = Instant::now();
                acks.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push((id, at));
            }
            result
        }))
    }
}
