//! [`RelayConfig`]: every tunable of the relay, with its default.

use std::time::Duration;

use crate::Error;

/// How the relay works. `Default` holds every default; [`RelayConfig::builder`] changes some.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use outbox_core::RelayConfig;
///
/// let config = RelayConfig::builder()
///     .batch_size(500)
///     .poll_interval(Duration::from_millis(20))
///     .build()?;
/// assert_eq!(config.max_in_flight, 1024);
/// # Ok::<(), outbox_core::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct RelayConfig {
    /// Most messages claimed by one store round trip. Default: 256.
    pub batch_size: usize,
    /// Most messages held by the relay at once (published and waiting for their acknowledgement,
    /// or waiting behind an earlier message of their key). Default: 1024.
    pub max_in_flight: usize,
    /// How long the relay waits for work after finding none, unless the store wakes it earlier.
    /// Default: 5 ms (an indexed probe of an empty outbox is cheap).
    pub poll_interval: Duration,
    /// On shutdown, how long to wait for acknowledgements in flight. Default: 10 s.
    pub shutdown_grace: Duration,
    /// Publish attempts before a message goes to the dead letters. Default: 10.
    pub max_attempts: u32,
    /// Delay before the first retry; it doubles with each attempt, with jitter. Default: 100 ms.
    pub retry_base: Duration,
    /// Longest delay between retries. Default: 60 s.
    pub retry_max: Duration,
    /// First delay before campaigning again after a store or election error, and before
    /// publishing again while the broker is unavailable; doubles up to `reconnect_max`.
    /// Default: 250 ms.
    pub reconnect_base: Duration,
    /// Longest delay between reconnection attempts. Default: 5 s.
    pub reconnect_max: Duration,
    /// How strictly messages of one key are kept in order. Default: [`KeyOrder::Strict`].
    pub key_order: KeyOrder,
    /// How often a leading relay samples the store's backlog for the `outbox_pending_messages`
    /// and `outbox_lag_seconds` gauges. Default: 5 s.
    pub backlog_interval: Duration,
}

/// How the relay orders the messages of one key.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeyOrder {
    /// The next message of a key is published only after the previous one was acknowledged, so
    /// the broker stores them in order even when publishes fail and are retried. Throughput per
    /// key is one broker round trip per message; different keys go out concurrently.
    #[default]
    Strict,
    /// Messages of a key are sent in order without waiting for each acknowledgement. While
    /// nothing fails, a broker that keeps the order of one connection (NATS does) stores them in
    /// order. What it gives up: when a message fails, the later messages of its key that were
    /// already sent are not recalled, so they can be stored before the failed message's retry.
    /// Choose it when a hot key's throughput matters more than its order under failure.
    Pipelined,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            batch_size: 256,
            max_in_flight: 1024,
            poll_interval: Duration::from_millis(5),
            shutdown_grace: Duration::from_secs(10),
            max_attempts: 10,
            retry_base: Duration::from_millis(100),
            retry_max: Duration::from_secs(60),
            reconnect_base: Duration::from_millis(250),
            reconnect_max: Duration::from_secs(5),
            key_order: KeyOrder::Strict,
            backlog_interval: Duration::from_secs(5),
        }
    }
}

impl RelayConfig {
    /// A builder starting from the defaults.
    pub fn builder() -> RelayConfigBuilder {
        RelayConfigBuilder(Self::default())
    }

    /// Checks that the values are usable together.
    pub fn validate(&self) -> Result<(), Error> {
        let fail = |m: &str| Err(Error::Config(m.to_owned()));
        if self.batch_size == 0 {
            return fail("batch_size must be at least 1");
        }
        if self.max_in_flight < self.batch_size {
            return fail("max_in_flight must be at least batch_size");
        }
        if self.max_attempts == 0 {
            return fail("max_attempts must be at least 1");
        }
        if self.poll_interval.is_zero() {
            return fail("poll_interval must be positive");
        }
        if self.retry_base.is_zero() || self.retry_max < self.retry_base {
            return fail("retry_base must be positive and at most retry_max");
        }
        if self.backlog_interval.is_zero() {
            return fail("backlog_interval must be positive");
        }
        if self.reconnect_base.is_zero() || self.reconnect_max < self.reconnect_base {
            return fail("reconnect_base must be positive and at most reconnect_max");
        }
        Ok(())
    }
}

/// Builds a [`RelayConfig`]; [`build`](RelayConfigBuilder::build) validates it.
#[derive(Clone, Debug)]
#[must_use]
pub struct RelayConfigBuilder(RelayConfig);

macro_rules! setters {
    ($($(#[$doc:meta])* $name:ident: $ty:ty;)*) => {
        impl RelayConfigBuilder {
            $(
                $(#[$doc])*
                pub fn $name(mut self, value: $ty) -> Self {
                    self.0.$name = value;
                    self
                }
            )*
        }
    };
}

setters! {
    /// See [`RelayConfig::batch_size`].
    batch_size: usize;
    /// See [`RelayConfig::max_in_flight`].
    max_in_flight: usize;
    /// See [`RelayConfig::poll_interval`].
    poll_interval: Duration;
    /// See [`RelayConfig::shutdown_grace`].
    shutdown_grace: Duration;
    /// See [`RelayConfig::max_attempts`].
    max_attempts: u32;
    /// See [`RelayConfig::retry_base`].
    retry_base: Duration;
    /// See [`RelayConfig::retry_max`].
    retry_max: Duration;
    /// See [`RelayConfig::reconnect_base`].
    reconnect_base: Duration;
    /// See [`RelayConfig::reconnect_max`].
    reconnect_max: Duration;
    /// See [`RelayConfig::key_order`].
    key_order: KeyOrder;
    /// See [`RelayConfig::backlog_interval`].
    backlog_interval: Duration;
}

impl RelayConfigBuilder {
    /// Validates and returns the configuration.
    pub fn build(self) -> Result<RelayConfig, Error> {
        self.0.validate()?;
        Ok(self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_documented_ones() {
        let c = RelayConfig::default();
        assert_eq!(c.batch_size, 256);
        assert_eq!(c.max_in_flight, 1024);
        assert_eq!(c.poll_interval, Duration::from_millis(5));
        assert_eq!(c.shutdown_grace, Duration::from_secs(10));
        assert_eq!(c.max_attempts, 10);
        assert_eq!(c.retry_base, Duration::from_millis(100));
        assert_eq!(c.retry_max, Duration::from_secs(60));
        assert_eq!(c.reconnect_base, Duration::from_millis(250));
        assert_eq!(c.reconnect_max, Duration::from_secs(5));
        assert_eq!(c.key_order, KeyOrder::Strict);
        assert_eq!(c.backlog_interval, Duration::from_secs(5));
        c.validate().unwrap();
    }

    #[test]
    fn inconsistent_values_are_rejected() {
        assert!(RelayConfig::builder().batch_size(0).build().is_err());
        assert!(RelayConfig::builder().batch_size(2000).build().is_err());
        assert!(RelayConfig::builder().max_attempts(0).build().is_err());
        assert!(
            RelayConfig::builder()
                .poll_interval(Duration::ZERO)
                .build()
                .is_err()
        );
        assert!(
            RelayConfig::builder()
                .retry_max(Duration::from_millis(1))
                .build()
                .is_err()
        );
    }
}
