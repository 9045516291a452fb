//! Exponential backoff with jitter, for message retries and for reconnecting.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};

/// A stream of growing delays from `base` up to `max`, with jitter.
#[derive(Debug)]
pub(crate) struct Backoff {
    builder: ExponentialBuilder,
    delays: ExponentialBackoff,
    max: Duration,
}

impl Backoff {
    pub(crate) fn new(base: Duration, max: Duration) -> Self {
        let builder = builder(base, max);
        Self {
            delays: builder.build(),
            builder,
            max,
        }
    }

    pub(crate) fn next_delay(&mut self) -> Duration {
        // `without_max_times` makes the iterator endless; the cap is only a fallback.
        self.delays.next().unwrap_or(self.max)
    }

    pub(crate) fn reset(&mut self) {
        self.delays = self.builder.build();
    }
}

fn builder(base: Duration, max: Duration) -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(base)
        .with_max_delay(max)
        .with_factor(2.0)
        .with_jitter()
        .without_max_times()
}

/// The delay before retry number `attempt + 1` of a message that failed `attempt` times before.
pub(crate) fn retry_delay(base: Duration, max: Duration, attempts: u32) -> Duration {
    builder(base, max)
        .build()
        .nth(attempts as usize)
        .unwrap_or(max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_delays_grow_and_stay_under_the_cap() {
        let base = Duration::from_millis(100);
        let max = Duration::from_secs(5);
        for attempts in 0..30 {
            let d = retry_delay(base, max, attempts);
            assert!(d >= base.min(max), "attempt {attempts}: {d:?}");
            // jitter adds at most one more step's worth
            assert!(d <= max * 2, "attempt {attempts}: {d:?}");
        }
        assert!(retry_delay(base, max, 6) >= Duration::from_secs(5));
    }

    #[test]
    fn reset_starts_over() {
        let mut b = Backoff::new(Duration::from_millis(10), Duration::from_secs(1));
        for _ in 0..10 {
            b.next_delay();
        }
        b.reset();
        assert!(b.next_delay() < Duration::from_millis(30));
    }
}
