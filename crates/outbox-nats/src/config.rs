//! Settings of the publishers: [`JetStreamConfig`] and [`CoreConfig`].

use std::time::Duration;

use outbox_core::RelayConfig;

use crate::Error;

/// How a [`JetStreamPublisher`](crate::JetStreamPublisher) waits for acknowledgements.
/// `Default` holds every default; [`JetStreamConfig::builder`] changes some.
///
/// # The ack window
///
/// The relay bounds the acknowledgements it keeps in flight ([`RelayConfig::max_in_flight`],
/// default 1024). async-nats has its own bound ([`max_ack_inflight`](Self::max_ack_inflight),
/// set on its `jetstream::ContextBuilder`, not on `ConnectOptions`): past it, a publish *waits*
/// for an earlier acknowledgement to be consumed. The relay consumes acknowledgements only
/// between publishes, so if async-nats' bound were below the relay's, the relay would wait for
/// itself forever. Keep `max_ack_inflight >= RelayConfig::max_in_flight`;
/// [`check_relay`](Self::check_relay) says whether that holds.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use outbox_core::RelayConfig;
/// use outbox_nats::JetStreamConfig;
///
/// let config = JetStreamConfig::builder().ack_timeout(Duration::from_secs(5)).build()?;
/// assert_eq!(config.max_ack_inflight, 5000);
/// config.check_relay(&RelayConfig::default())?;
/// # Ok::<(), outbox_nats::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct JetStreamConfig {
    /// How long to wait for a message's acknowledgement (JetStream's PubAck) before reporting a
    /// transient [`Error::Timeout`]; also the bound on JetStream API requests made through the
    /// publisher's context. Default: 10 s.
    pub ack_timeout: Duration,
    /// Most acknowledgements async-nats keeps pending before a publish waits. Must be at least
    /// the relay's [`RelayConfig::max_in_flight`]. Default: 5000 (async-nats' own default).
    pub max_ack_inflight: usize,
}

impl Default for JetStreamConfig {
    fn default() -> Self {
        Self {
            ack_timeout: Duration::from_secs(10),
            max_ack_inflight: 5000,
        }
    }
}

impl JetStreamConfig {
    /// A builder starting from the defaults.
    pub fn builder() -> JetStreamConfigBuilder {
        JetStreamConfigBuilder(Self::default())
    }

    /// Checks that the values are usable.
    pub fn validate(&self) -> Result<(), Error> {
        if self.ack_timeout.is_zero() {
            return Err(Error::Config("ack_timeout must be positive".into()));
        }
        if self.max_ack_inflight == 0 || u32::try_from(self.max_ack_inflight).is_err() {
            return Err(Error::Config(
                "max_ack_inflight must be between 1 and 4294967295".into(),
            ));
        }
        Ok(())
    }

    /// Checks that a relay configured with `relay` cannot outrun async-nats' ack window (see
    /// [the ack window](Self#the-ack-window)).
    pub fn check_relay(&self, relay: &RelayConfig) -> Result<(), Error> {
        if self.max_ack_inflight < relay.max_in_flight {
            return Err(Error::Config(format!(
                "max_ack_inflight ({}) must be at least the relay's max_in_flight ({}), \
                 or the relay waits for itself",
                self.max_ack_inflight, relay.max_in_flight
            )));
        }
        Ok(())
    }
}

/// Builds a [`JetStreamConfig`]; [`build`](JetStreamConfigBuilder::build) validates it.
#[derive(Clone, Debug)]
#[must_use]
pub struct JetStreamConfigBuilder(JetStreamConfig);

impl JetStreamConfigBuilder {
    /// See [`JetStreamConfig::ack_timeout`].
    pub fn ack_timeout(mut self, value: Duration) -> Self {
        self.0.ack_timeout = value;
        self
    }

    /// See [`JetStreamConfig::max_ack_inflight`].
    pub fn max_ack_inflight(mut self, value: usize) -> Self {
        self.0.max_ack_inflight = value;
        self
    }

    /// Validates and returns the configuration.
    pub fn build(self) -> Result<JetStreamConfig, Error> {
        self.0.validate()?;
        Ok(self.0)
    }
}

/// How a [`CorePublisher`](crate::CorePublisher) waits for its messages to leave.
/// `Default` holds every default; [`CoreConfig::builder`] changes some.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use outbox_nats::CoreConfig;
///
/// let config = CoreConfig::builder().flush_timeout(Duration::from_secs(2)).build()?;
/// assert_eq!(config.flush_timeout, Duration::from_secs(2));
/// # Ok::<(), outbox_nats::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct CoreConfig {
    /// How long a publish may wait to be handed to the connection, and then to be written to
    /// the socket, before reporting a transient [`Error::Timeout`] (the client buffers while it
    /// reconnects). Default: 10 s.
    pub flush_timeout: Duration,
}

impl Default for CoreConfig {
    fn default() -> Self {
        Self {
            flush_timeout: Duration::from_secs(10),
        }
    }
}

impl CoreConfig {
    /// A builder starting from the defaults.
    pub fn builder() -> CoreConfigBuilder {
        CoreConfigBuilder(Self::default())
    }

    /// Checks that the values are usable.
    pub fn validate(&self) -> Result<(), Error> {
        if self.flush_timeout.is_zero() {
            return Err(Error::Config("flush_timeout must be positive".into()));
        }
        Ok(())
    }
}

/// Builds a [`CoreConfig`]; [`build`](CoreConfigBuilder::build) validates it.
#[derive(Clone, Debug)]
#[must_use]
pub struct CoreConfigBuilder(CoreConfig);

impl CoreConfigBuilder {
    /// See [`CoreConfig::flush_timeout`].
    pub fn flush_timeout(mut self, value: Duration) -> Self {
        self.0.flush_timeout = value;
        self
    }

    /// Validates and returns the configuration.
    pub fn build(self) -> Result<CoreConfig, Error> {
        self.0.validate()?;
        Ok(self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_documented_ones() {
        let js = JetStreamConfig::default();
        assert_eq!(js.ack_timeout, Duration::from_secs(10));
        assert_eq!(js.max_ack_inflight, 5000);
        js.validate().unwrap();
        let core = CoreConfig::default();
        assert_eq!(core.flush_timeout, Duration::from_secs(10));
        core.validate().unwrap();
    }

    #[test]
    fn the_default_window_fits_the_default_relay() {
        JetStreamConfig::default()
            .check_relay(&RelayConfig::default())
            .unwrap();
        let small = JetStreamConfig::builder()
            .max_ack_inflight(100)
            .build()
            .unwrap();
        let err = small.check_relay(&RelayConfig::default()).unwrap_err();
        assert!(err.to_string().contains("max_in_flight (1024)"), "{err}");
    }

    #[test]
    fn out_of_range_values_are_refused() {
        assert!(
            JetStreamConfig::builder()
                .ack_timeout(Duration::ZERO)
                .build()
                .is_err()
        );
        assert!(
            JetStreamConfig::builder()
                .max_ack_inflight(0)
                .build()
                .is_err()
        );
        assert!(
            CoreConfig::builder()
                .flush_timeout(Duration::ZERO)
                .build()
                .is_err()
        );
        let err = CoreConfig::builder()
            .flush_timeout(Duration::ZERO)
            .build()
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid configuration: flush_timeout must be positive"
        );
    }
}
