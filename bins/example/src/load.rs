//! The load generator: N orders over K customers, at a rate, with C concurrent transactions.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use tokio::sync::Mutex;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::cli::LoadPlan;
use crate::orders::{NewOrder, Orders};

/// How a generator run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Every order committed.
    Completed,
    /// Shutdown came first (the log line says how many orders committed).
    Interrupted,
}

/// The `i`-th generated order (from 0): customers take turns, so each gets N/K orders.
fn nth_order(i: u64, customers: u64) -> NewOrder {
    NewOrder {
        customer_id: format!("customer-{}", i % customers + 1),
        name: format!("order-{}", i + 1),
        total: i64::try_from(i % 997 + 1).unwrap_or(1) * 100,
    }
}

/// Hands out start times `period` apart, so C workers together keep to the rate.
#[derive(Debug)]
struct Pacer {
    period: Duration,
    next: Mutex<Instant>,
}

impl Pacer {
    fn new(rate: f64) -> Option<Self> {
        (rate > 0.0).then(|| Pacer {
            period: Duration::from_secs_f64(1.0 / rate),
            next: Mutex::new(Instant::now()),
        })
    }

    async fn wait(&self) {
        let slot = {
            let mut next = self.next.lock().await;
            // A worker that fell behind does not earn a burst: the schedule restarts from now.
            let slot = (*next).max(Instant::now());
            *next = slot + self.period;
            slot
        };
        tokio::time::sleep_until(slot).await;
    }
}

/// Writes `plan.orders` orders through `orders`, each in its own transaction, until all
/// committed or `shutdown` is cancelled.
///
/// A transient failure (database down, connection lost) is logged and the order retried with
/// backoff, forever; a permanent one ends the run with an error.
pub(crate) async fn generate(
    orders: Arc<Orders>,
    plan: LoadPlan,
    shutdown: CancellationToken,
) -> anyhow::Result<Outcome> {
    let started = Instant::now();
    tracing::info!(
        orders = plan.orders,
        customers = plan.customers,
        rate = plan.rate,
        concurrency = plan.concurrency,
        "load generator started"
    );
    let next = Arc::new(AtomicU64::new(0));
    let committed = Arc::new(AtomicU64::new(0));
    let pacer = Pacer::new(plan.rate).map(Arc::new);
    // A worker that fails permanently stops the others through this token.
    let stop = shutdown.child_token();

    let mut workers = tokio::task::JoinSet::new();
    let workers_count = plan
        .concurrency
        .min(usize::try_from(plan.orders).unwrap_or(usize::MAX));
    for _ in 0..workers_count {
        let orders = orders.clone();
        let next = next.clone();
        let committed = committed.clone();
        let pacer = pacer.clone();
        let stop = stop.clone();
        workers.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= plan.orders || stop.is_cancelled() {
                    return Ok(());
                }
                if let Some(pacer) = &pacer {
                    tokio::select! {
                        () = stop.cancelled() => return Ok(()),
                        () = pacer.wait() => {}
                    }
                }
                let order = nth_order(i, plan.customers);
                if !place_with_retry(&orders, &order, &stop).await? {
                    return Ok(());
                }
                committed.fetch_add(1, Ordering::Relaxed);
            }
        });
    }

    let mut progress = tokio::time::interval(Duration::from_secs(1));
    progress.tick().await;
    let mut last_logged = 0;
    let mut failure = None;
    loop {
        tokio::select! {
            joined = workers.join_next() => match joined {
                None => break,
                Some(Ok(Ok(()))) => {}
                Some(Ok(Err(e))) => {
                    stop.cancel();
                    failure.get_or_insert(e);
                }
                Some(Err(e)) => {
                    stop.cancel();
                    failure.get_or_insert(anyhow::anyhow!("load generator worker failed: {e}"));
                }
            },
            _ = progress.tick() => {
                let done = committed.load(Ordering::Relaxed);
                if done != last_logged {
                    last_logged = done;
                    let rate = done as f64 / started.elapsed().as_secs_f64();
                    tracing::info!("orders committed: {done}/{} ({rate:.0}/s)", plan.orders);
                }
            }
        }
    }
    if let Some(e) = failure {
        return Err(e);
    }
    let done = committed.load(Ordering::Relaxed);
    let elapsed = started.elapsed();
    if done < plan.orders {
        tracing::info!(
            "load generator interrupted: {done}/{} orders committed",
            plan.orders
        );
        return Ok(Outcome::Interrupted);
    }
    tracing::info!(
        "all {done} orders committed in {:.1} s ({:.0}/s)",
        elapsed.as_secs_f64(),
        done as f64 / elapsed.as_secs_f64().max(1e-9)
    );
    Ok(Outcome::Completed)
}

/// Places `order`, retrying transient failures with backoff. Returns `Ok(false)` if `stop`
/// came first.
async fn place_with_retry(
    orders: &Orders,
    order: &NewOrder,
    stop: &CancellationToken,
) -> anyhow::Result<bool> {
    let mut backoff = ExponentialBuilder::new()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_secs(5))
        .with_jitter()
        .without_max_times()
        .build();
    loop {
        // An order in flight is finished, not abandoned, so the count of committed orders
        // stays exact; the pool's timeouts bound how long that takes.
        match orders.place(order).await {
            Ok(_) => return Ok(true),
            Err(e) if e.is_transient() => {
                let delay = backoff.next().unwrap_or(Duration::from_secs(5));
                tracing::warn!(
                    "order for {} failed: {}; retrying in {delay:.1?}",
                    order.customer_id,
                    crate::report::describe(&e)
                );
                tokio::select! {
                    () = stop.cancelled() => return Ok(false),
                    () = tokio::time::sleep(delay) => {}
                }
            }
            Err(e) => {
                return Err(anyhow::anyhow!(
                    "order for {} failed permanently: {}",
                    order.customer_id,
                    crate::report::describe(&e)
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orders_take_turns_over_customers() {
        let ids: Vec<String> = (0..6).map(|i| nth_order(i, 3).customer_id).collect();
        assert_eq!(
            ids,
            [
                "customer-1",
                "customer-2",
                "customer-3",
                "customer-1",
                "customer-2",
                "customer-3"
            ]
        );
        assert!(nth_order(5, 3).total > 0);
    }

    #[tokio::test(start_paused = true)]
    async fn pacer_spaces_starts_by_the_period() {
        let pacer = Pacer::new(10.0).unwrap();
        let start = Instant::now();
        for _ in 0..5 {
            pacer.wait().await;
        }
        // Slots at 0, 100, 200, 300, 400 ms.
        assert_eq!(start.elapsed(), Duration::from_millis(400));
        assert!(Pacer::new(0.0).is_none());
    }
}
