//! The one error type of the core, shared by every backend through the traits.

use std::fmt;

/// A boxed error from a backend, kept as the source of an [`Error`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Why an outbox operation failed, and whether trying again may help.
///
/// Backends classify their own failures: a lost connection is [`Error::Store`] or
/// [`Error::Broker`] with `transient: true`; a payload over the broker's limit is
/// `transient: false`. The relay only asks [`Error::is_retryable`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The message is malformed: bad subject, header or payload. Never retried.
    #[error("invalid message: {0}")]
    InvalidMessage(String),
    /// A configuration value is out of range or inconsistent. Never retried.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The store (database) failed.
    #[error("store {}: {source}", Kind(*.transient))]
    Store {
        /// Whether the same operation may succeed later (connection lost, serialization failure).
        transient: bool,
        /// What the store reported.
        #[source]
        source: BoxError,
    },
    /// The broker failed or rejected a message.
    #[error("broker {}: {source}", Kind(*.transient))]
    Broker {
        /// Whether publishing the same message may succeed later (timeout, no responders).
        transient: bool,
        /// What the broker reported.
        #[source]
        source: BoxError,
    },
    /// The broker cannot be reached at all (connection lost, no responders, timed out). Not the
    /// message's fault: the relay pauses publishing and backs off without counting an attempt.
    #[error("broker unavailable: {source}")]
    Unavailable {
        /// What the broker client reported.
        #[source]
        source: BoxError,
    },
    /// Leader election failed (for example its database session could not be opened).
    #[error("election error: {source}")]
    Election {
        /// What the elector reported.
        #[source]
        source: BoxError,
    },
    /// This instance does not lead (any more); work that needs leadership was refused.
    #[error("not the leader")]
    NotLeader,
    /// A payload could not be encoded or decoded as JSON.
    #[error("json: {0}")]
    Json(#[from] serde_json::Error),
}

struct Kind(bool);

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0 {
            "error (transient)"
        } else {
            "error (permanent)"
        })
    }
}

impl Error {
    /// A transient store error: the operation may succeed if retried.
    pub fn store_transient(source: impl Into<BoxError>) -> Self {
        Self::Store {
            transient: true,
            source: source.into(),
        }
    }

    /// A permanent store error: retrying the same operation will fail again.
    pub fn store_permanent(source: impl Into<BoxError>) -> Self {
        Self::Store {
            transient: false,
            source: source.into(),
        }
    }

    /// A transient broker error: publishing the same message again may succeed.
    pub fn broker_transient(source: impl Into<BoxError>) -> Self {
        Self::Broker {
            transient: true,
            source: source.into(),
        }
    }

    /// A permanent broker error: the broker will never accept this message.
    pub fn broker_permanent(source: impl Into<BoxError>) -> Self {
        Self::Broker {
            transient: false,
            source: source.into(),
        }
    }

    /// The broker cannot be reached: publishing pauses, no attempt is counted.
    pub fn broker_unavailable(source: impl Into<BoxError>) -> Self {
        Self::Unavailable {
            source: source.into(),
        }
    }

    /// Whether the broker as a whole is unreachable, rather than this message failing.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Self::Unavailable { .. })
    }

    /// An election error.
    pub fn election(source: impl Into<BoxError>) -> Self {
        Self::Election {
            source: source.into(),
        }
    }

    /// Whether the failed operation may succeed if tried again later.
    ///
    /// ```
    /// use outbox_core::Error;
    /// assert!(Error::broker_transient("timed out").is_retryable());
    /// assert!(!Error::broker_permanent("payload too large").is_retryable());
    /// ```
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Store { transient, .. } | Self::Broker { transient, .. } => *transient,
            Self::Unavailable { .. } | Self::Election { .. } | Self::NotLeader => true,
            Self::InvalidMessage(_) | Self::Config(_) | Self::Json(_) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_say_what_failed_and_whether_it_is_transient() {
        let e = Error::store_transient("connection closed");
        assert_eq!(e.to_string(), "store error (transient): connection closed");
        let e = Error::broker_permanent("maximum payload exceeded");
        assert_eq!(
            e.to_string(),
            "broker error (permanent): maximum payload exceeded"
        );
        assert!(!Error::InvalidMessage("x".into()).is_retryable());
        assert!(Error::NotLeader.is_retryable());
    }
}
