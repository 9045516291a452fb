//! [`Error`]: what went wrong in PostgreSQL, and whether retrying may help.

use std::io;

use tokio_postgres::error::SqlState;

/// An error of the PostgreSQL outbox.
///
/// [`Error::is_transient`] classifies it: lost connections, server shutdowns, serialization
/// failures and deadlocks are transient; SQL errors such as a missing table (the migrations did
/// not run) are permanent. Converted into [`outbox_core::Error`], the relay sees the same
/// classification through `is_retryable()`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A configuration value is invalid (for example a schema name). Never transient.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A message was refused at enqueue (for example a payload over
    /// [`PgConfig::max_payload`](crate::PgConfig::max_payload)); nothing was written. Never
    /// transient.
    #[error("invalid message: {0}")]
    InvalidMessage(String),
    /// A session could not be opened.
    #[error("could not connect to postgresql: {0}")]
    Connect(#[source] tokio_postgres::Error),
    /// Opening a session or running a check took longer than its timeout.
    #[error("{0} timed out")]
    Timeout(&'static str),
    /// A statement failed; `operation` says which.
    #[error("{operation} failed: {source}")]
    Query {
        /// What the crate was doing, e.g. `"claim"`.
        operation: &'static str,
        /// The driver's error, with the server's SQLSTATE if it sent one.
        #[source]
        source: tokio_postgres::Error,
    },
    /// A migration failed; its transaction was rolled back.
    #[error("migration {version} failed: {source}")]
    Migration {
        /// The version that failed.
        version: i32,
        /// The driver's error.
        #[source]
        source: tokio_postgres::Error,
    },
    /// A stored row is not a valid message (it was written by something other than this crate).
    #[error("stored message {seq} is invalid: {reason}")]
    Decode {
        /// The row's seq.
        seq: i64,
        /// What is wrong with it.
        reason: String,
    },
    /// The server answered something this crate did not expect (for example no row from an
    /// `INSERT ... RETURNING`). Never transient.
    #[error("unexpected reply from postgresql: {0}")]
    Protocol(String),
    /// The logical replication stream of
    /// [`EnqueueMode::WalMessage`](crate::EnqueueMode::WalMessage) could not be opened or
    /// broke off (the slot is in use by another session, the role lacks `REPLICATION`, the
    /// server went away). Transient: the leading store reopens it.
    #[error("wal replication stream: {0}")]
    Replication(String),
    /// This store has an elector, and the elector does not hold the lock on the store's current
    /// session: claiming or completing is refused.
    #[error("not the leader: the leadership lock is not held by this store's session")]
    NotLeader,
}

impl Error {
    pub(crate) fn query(operation: &'static str) -> impl FnOnce(tokio_postgres::Error) -> Error {
        move |source| Error::Query { operation, source }
    }

    /// Whether the same operation may succeed if tried again later: true for lost connections,
    /// timeouts, server shutdowns, serialization failures, deadlocks, lock timeouts and exhausted
    /// server resources, and for [`Error::NotLeader`] (leadership may come back).
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Config(_)
            | Error::InvalidMessage(_)
            | Error::Decode { .. }
            | Error::Protocol(_) => false,
            Error::Timeout(_) | Error::NotLeader | Error::Replication(_) => true,
            Error::Connect(source) => is_transient(source),
            Error::Query { source, .. } | Error::Migration { source, .. } => is_transient(source),
        }
    }

    /// The server's SQLSTATE, if the server reported the error.
    pub fn code(&self) -> Option<&SqlState> {
        match self {
            Error::Connect(source) => source.code(),
            Error::Query { source, .. } | Error::Migration { source, .. } => source.code(),
            _ => None,
        }
    }

    /// Whether the error says the session is gone, so it must be replaced.
    pub(crate) fn is_connection_lost(&self) -> bool {
        match self {
            Error::Timeout(_) => true,
            Error::Query { source, .. } => {
                source.is_closed()
                    || io_source(source).is_some()
                    || source
                        .code()
                        .is_some_and(|c| c.code().starts_with("08") || c.code().starts_with("57P"))
            }
            _ => false,
        }
    }
}

fn io_source(error: &tokio_postgres::Error) -> Option<&io::Error> {
    std::error::Error::source(error).and_then(|s| s.downcast_ref::<io::Error>())
}

/// Classifies a driver error by SQLSTATE class, or by kind when the server sent none.
fn is_transient(error: &tokio_postgres::Error) -> bool {
    if let Some(code) = error.code() {
        return is_transient_code(code);
    }
    // No SQLSTATE: the socket failed or closed (transient), or the driver could not encode or
    // decode a value (permanent).
    error.is_closed() || io_source(error).is_some()
}

fn is_transient_code(code: &SqlState) -> bool {
    let code = code.code();
    // 08: connection exception. 53: insufficient resources. 57P: operator intervention
    // (admin/crash shutdown, cannot connect now). 58: system error (I/O).
    ["08", "53", "57P", "58"]
        .iter()
        .any(|class| code.starts_with(class))
        || [
            SqlState::T_R_SERIALIZATION_FAILURE.code(),
            SqlState::T_R_DEADLOCK_DETECTED.code(),
            SqlState::LOCK_NOT_AVAILABLE.code(),
            SqlState::QUERY_CANCELED.code(),
            SqlState::IDLE_IN_TRANSACTION_SESSION_TIMEOUT.code(),
        ]
        .contains(&code)
}

impl From<Error> for outbox_core::Error {
    fn from(error: Error) -> Self {
        match error {
            Error::NotLeader => outbox_core::Error::NotLeader,
            Error::Config(message) => outbox_core::Error::Config(message),
            Error::InvalidMessage(reason) => outbox_core::Error::InvalidMessage(reason),
            other if other.is_transient() => outbox_core::Error::store_transient(other),
            other => outbox_core::Error::store_permanent(other),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlstates_are_classified() {
        for code in [
            SqlState::ADMIN_SHUTDOWN,
            SqlState::CRASH_SHUTDOWN,
            SqlState::CANNOT_CONNECT_NOW,
            SqlState::CONNECTION_FAILURE,
            SqlState::T_R_SERIALIZATION_FAILURE,
            SqlState::T_R_DEADLOCK_DETECTED,
            SqlState::TOO_MANY_CONNECTIONS,
            SqlState::IO_ERROR,
        ] {
            assert!(is_transient_code(&code), "{code:?}");
        }
        for code in [
            SqlState::UNDEFINED_TABLE,
            SqlState::UNIQUE_VIOLATION,
            SqlState::SYNTAX_ERROR,
            SqlState::INVALID_PASSWORD,
            SqlState::INSUFFICIENT_PRIVILEGE,
        ] {
            assert!(!is_transient_code(&code), "{code:?}");
        }
    }

    #[test]
    fn conversion_keeps_meaning() {
        let core: outbox_core::Error = Error::NotLeader.into();
        assert!(matches!(core, outbox_core::Error::NotLeader));
        let core: outbox_core::Error = Error::Config("bad".into()).into();
        assert!(!core.is_retryable());
        let core: outbox_core::Error = Error::Timeout("leadership check").into();
        assert!(core.is_retryable());
        assert_eq!(
            core.to_string(),
            "store error (transient): leadership check timed out"
        );
        let core: outbox_core::Error = Error::Decode {
            seq: 3,
            reason: "bad subject".into(),
        }
        .into();
        assert!(!core.is_retryable());
    }
}
