//! [`Error`]: everything that can go wrong talking to NATS, classified as transient or permanent.
//!
//! The relay only asks [`outbox_core::Error::is_retryable`]; this module decides the answer for
//! NATS failures:
//!
//! | Failure | Variant | Retry? | Why |
//! |---|---|---|---|
//! | malformed server URL | [`InvalidUrl`](Error::InvalidUrl) | no | the same text never parses |
//! | server unreachable, DNS, connect timeout | [`Connect`](Error::Connect) | yes | servers come back |
//! | bad credentials, TLS setup | [`Connect`](Error::Connect) | no | same credentials fail again |
//! | subject with whitespace, wildcard or empty token | [`InvalidSubject`](Error::InvalidSubject) | no | the message itself is wrong |
//! | header name or value a broker cannot carry | [`InvalidHeader`](Error::InvalidHeader) | no | the message itself is wrong |
//! | payload plus headers over the server's `max_payload` | [`PayloadTooLarge`](Error::PayloadTooLarge) | no | checked before sending: the server would close the connection |
//! | no stream captures the subject (no responders) | [`NoStream`](Error::NoStream) | yes | the stream is usually being provisioned; a missing stream is an operator's fix, not the message's fault |
//! | no acknowledgement or flush in time | [`Timeout`](Error::Timeout) | yes | the republish is deduplicated by `Nats-Msg-Id` |
//! | connection lost, client closed | [`Publish`](Error::Publish) | yes | async-nats reconnects |
//! | JetStream says the message exceeds the stream's `max_msg_size`, or an expected-sequence/stream header does not match | [`Rejected`](Error::Rejected) | no | the same message is refused again |
//! | any other JetStream API error (storage full, no leader, JetStream disabled, ...) | [`Rejected`](Error::Rejected) | yes | bounded by `RelayConfig::max_attempts` anyway |
//! | stream provisioning | [`Stream`](Error::Stream) | by cause | request failures are transient, API refusals (overlapping subjects, bad config) permanent |

use async_nats::jetstream::{self, ErrorCode};

/// A boxed source error.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Why a NATS operation failed, and whether trying again may help ([`Error::is_transient`]).
///
/// Converts into [`outbox_core::Error`] with the same classification, so the relay retries what
/// is transient and dead-letters the rest.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The server URL cannot be parsed (credentials in it are not repeated here). Permanent.
    #[error("invalid nats url {url:?}: {reason}")]
    InvalidUrl {
        /// The URL as given, with any password masked.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Connecting to the server failed. Transient unless the server refused the credentials or
    /// TLS could not be set up.
    #[error("cannot connect to nats at {url}: {source}")]
    Connect {
        /// The server URL, with any password masked.
        url: String,
        /// What async-nats reported.
        #[source]
        source: async_nats::ConnectError,
    },
    /// A configuration value is out of range. Permanent.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The subject cannot be published to: empty token, whitespace, or a wildcard. Permanent.
    #[error("invalid subject {subject:?}: {reason}")]
    InvalidSubject {
        /// The subject.
        subject: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A header name or value cannot travel in a NATS message. Permanent.
    #[error("invalid header {name:?}: {reason}")]
    InvalidHeader {
        /// The header name.
        name: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Payload and headers together exceed the server's `max_payload`. Permanent.
    ///
    /// Checked before sending: a NATS server answers an oversized publish by closing the
    /// connection, which would fail every other message in flight.
    #[error("message is {size} bytes with headers, over the server's max_payload of {max} bytes")]
    PayloadTooLarge {
        /// Size of payload plus encoded headers, in bytes.
        size: usize,
        /// The server's limit, in bytes.
        max: usize,
    },
    /// No JetStream stream captures the subject: the publish had no responders. Transient, so
    /// messages wait (with backoff, up to `max_attempts`) for the stream to be created.
    #[error("no stream captures subject {subject:?} (no responders)")]
    NoStream {
        /// The subject.
        subject: String,
    },
    /// The acknowledgement, flush or send did not complete in time. Transient: a republish is
    /// dropped by JetStream's duplicate window.
    #[error("timed out waiting for {waiting_for} of a message on {subject:?}")]
    Timeout {
        /// The subject.
        subject: String,
        /// What did not arrive: `"the jetstream ack"`, `"the flush"`, `"the send"`.
        waiting_for: &'static str,
    },
    /// JetStream refused the message with an API error. Permanent when the error says the
    /// message itself can never be stored (over the stream's `max_msg_size`, an expected last
    /// sequence or message id or stream that does not match); transient otherwise.
    #[error("jetstream rejected a message on {subject:?}: {source}")]
    Rejected {
        /// The subject.
        subject: String,
        /// Whether the same message will be refused again.
        permanent: bool,
        /// The JetStream API error.
        #[source]
        source: jetstream::Error,
    },
    /// Sending failed: connection lost, client closed, an unreadable acknowledgement. Transient.
    #[error("publish on {subject:?} failed: {source}")]
    Publish {
        /// The subject.
        subject: String,
        /// What async-nats reported.
        #[source]
        source: BoxError,
    },
    /// Creating, reading or updating a stream failed.
    #[error("stream {name:?}: {source}")]
    Stream {
        /// The stream name.
        name: String,
        /// Whether trying again may succeed (request failures: yes; API refusals: no).
        transient: bool,
        /// What async-nats reported.
        #[source]
        source: BoxError,
    },
}

impl Error {
    /// Whether the same operation may succeed if tried again later. See the
    /// [module table](self) for each case.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Connect { source, .. } => matches!(
                source.kind(),
                async_nats::ConnectErrorKind::Dns
                    | async_nats::ConnectErrorKind::TimedOut
                    | async_nats::ConnectErrorKind::Io
                    | async_nats::ConnectErrorKind::MaxReconnects
            ),
            Self::NoStream { .. } | Self::Timeout { .. } | Self::Publish { .. } => true,
            Self::Rejected { permanent, .. } => !permanent,
            Self::Stream { transient, .. } => *transient,
            Self::InvalidUrl { .. }
            | Self::Config(_)
            | Self::InvalidSubject { .. }
            | Self::InvalidHeader { .. }
            | Self::PayloadTooLarge { .. } => false,
        }
    }

    /// Classifies a failed JetStream publish or acknowledgement of a message on `subject` of
    /// `size` bytes (payload and headers), sent to a server whose limit is `max`.
    pub(crate) fn from_jetstream_publish(
        subject: &str,
        size: usize,
        max: usize,
        error: jetstream::context::PublishError,
    ) -> Self {
        use jetstream::context::PublishErrorKind as Kind;
        let subject = subject.to_owned();
        match error.kind() {
            Kind::StreamNotFound => Self::NoStream { subject },
            Kind::TimedOut => Self::Timeout {
                subject,
                waiting_for: "the jetstream ack",
            },
            // Our own check runs first; async-nats only sees a smaller limit when the server's
            // INFO changed in between.
            Kind::MaxPayloadExceeded => Self::PayloadTooLarge { size, max },
            Kind::WrongLastMessageId | Kind::WrongLastSequence | Kind::Other => {
                match jetstream_api_error(&error) {
                    Some(source) => Self::Rejected {
                        subject,
                        permanent: is_permanent_rejection(&source),
                        source,
                    },
                    None => Self::Publish {
                        subject,
                        source: Box::new(error),
                    },
                }
            }
            // BrokenPipe (the connection dropped the request), MaxAckPending, and kinds added
            // by later async-nats versions.
            _ => Self::Publish {
                subject,
                source: Box::new(error),
            },
        }
    }

    /// Classifies a failed core NATS publish, like [`Error::from_jetstream_publish`].
    pub(crate) fn from_core_publish(
        subject: &str,
        size: usize,
        max: usize,
        error: async_nats::PublishError,
    ) -> Self {
        use async_nats::client::PublishErrorKind as Kind;
        let subject = subject.to_owned();
        match error.kind() {
            Kind::InvalidSubject => Self::InvalidSubject {
                subject,
                reason: error.to_string(),
            },
            Kind::MaxPayloadExceeded => Self::PayloadTooLarge { size, max },
            _ => Self::Publish {
                subject,
                source: Box::new(error),
            },
        }
    }

    /// Classifies a failed stream request on stream `name`.
    pub(crate) fn stream(name: &str, transient: bool, source: impl Into<BoxError>) -> Self {
        Self::Stream {
            name: name.to_owned(),
            transient,
            source: source.into(),
        }
    }
}

/// The JetStream API error inside an async-nats publish error, if the server sent one.
fn jetstream_api_error(error: &jetstream::context::PublishError) -> Option<jetstream::Error> {
    std::error::Error::source(error)?
        .downcast_ref::<jetstream::Error>()
        .cloned()
}

/// Whether JetStream refused the message for a reason that a retry cannot change.
///
/// Matched on the error code first, then on the description, since servers differ in which
/// code they attach to size errors (2.9 uses 10054 "message size exceeds maximum allowed").
pub(crate) fn is_permanent_rejection(error: &jetstream::Error) -> bool {
    const PERMANENT: [ErrorCode; 4] = [
        ErrorCode::STREAM_MESSAGE_EXCEEDS_MAXIMUM,
        ErrorCode::STREAM_WRONG_LAST_MESSAGE_ID,
        ErrorCode::STREAM_WRONG_LAST_SEQUENCE,
        ErrorCode::STREAM_NOT_MATCH,
    ];
    if PERMANENT.contains(&error.error_code()) {
        return true;
    }
    let text = error.to_string().to_ascii_lowercase();
    [
        "message size exceeds maximum",
        "maximum message size exceeded",
        "message too large",
        "maximum payload exceeded",
    ]
    .iter()
    .any(|needle| text.contains(needle))
}

impl From<Error> for outbox_core::Error {
    fn from(error: Error) -> Self {
        match error {
            Error::Config(_) | Error::InvalidUrl { .. } => Self::Config(error.to_string()),
            Error::InvalidSubject { .. } | Error::InvalidHeader { .. } => {
                Self::InvalidMessage(error.to_string())
            }
            // The broker as a whole is out of reach: the relay pauses instead of spending the
            // message's attempts.
            Error::Connect { .. }
            | Error::NoStream { .. }
            | Error::Timeout { .. }
            | Error::Publish { .. }
                if error.is_transient() =>
            {
                Self::broker_unavailable(error)
            }
            other if other.is_transient() => Self::broker_transient(other),
            other => Self::broker_permanent(other),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api_error(code: u64, description: &str) -> jetstream::Error {
        serde_json::from_value(serde_json::json!({
            "code": 400,
            "err_code": code,
            "description": description,
        }))
        .unwrap()
    }

    #[test]
    fn rejections_that_a_retry_cannot_change_are_permanent() {
        for (code, text) in [
            (10054, "message size exceeds maximum allowed"),
            (10071, "wrong last sequence: 4"),
            (10070, "wrong last msg ID: x"),
            (10060, "expected stream does not match"),
            // Size errors under another code, as other server versions word them.
            (10077, "maximum message size exceeded"),
            (10077, "Message too large"),
        ] {
            assert!(
                is_permanent_rejection(&api_error(code, text)),
                "{code} {text}"
            );
        }
        for (code, text) in [
            (10077, "maximum messages exceeded"),
            (10047, "insufficient storage resources available"),
            (10008, "JetStream system temporarily unavailable"),
            (10076, "JetStream not enabled"),
            (99999, "something new"),
        ] {
            assert!(
                !is_permanent_rejection(&api_error(code, text)),
                "{code} {text}"
            );
        }
    }

    #[test]
    fn classification_reaches_the_relay() {
        let transient = [
            Error::NoStream {
                subject: "a".into(),
            },
            Error::Timeout {
                subject: "a".into(),
                waiting_for: "the jetstream ack",
            },
            Error::Publish {
                subject: "a".into(),
                source: "broken pipe".into(),
            },
            Error::Rejected {
                subject: "a".into(),
                permanent: false,
                source: api_error(10047, "x"),
            },
            Error::stream("S", true, "timed out"),
        ];
        for e in transient {
            assert!(e.is_transient(), "{e}");
            let core = outbox_core::Error::from(e);
            assert!(core.is_retryable(), "{core}");
            assert!(matches!(
                core,
                outbox_core::Error::Broker { .. } | outbox_core::Error::Unavailable { .. }
            ));
        }
        let permanent = [
            Error::PayloadTooLarge { size: 2, max: 1 },
            Error::Rejected {
                subject: "a".into(),
                permanent: true,
                source: api_error(10054, "x"),
            },
            Error::InvalidSubject {
                subject: "a.*".into(),
                reason: "wildcard".into(),
            },
            Error::InvalidHeader {
                name: "a b".into(),
                reason: "space".into(),
            },
            Error::Config("x".into()),
            Error::InvalidUrl {
                url: "x".into(),
                reason: "y".into(),
            },
            Error::stream("S", false, "subjects overlap"),
        ];
        for e in permanent {
            assert!(!e.is_transient(), "{e}");
            assert!(!outbox_core::Error::from(e).is_retryable());
        }
    }

    #[test]
    fn messages_are_lowercase_and_name_the_subject() {
        let e = Error::PayloadTooLarge {
            size: 1_048_600,
            max: 1_048_576,
        };
        assert_eq!(
            e.to_string(),
            "message is 1048600 bytes with headers, over the server's max_payload of 1048576 bytes"
        );
        let e = Error::NoStream {
            subject: "orders.created".into(),
        };
        assert_eq!(
            e.to_string(),
            "no stream captures subject \"orders.created\" (no responders)"
        );
        let core = outbox_core::Error::from(Error::Timeout {
            subject: "a".into(),
            waiting_for: "the flush",
        });
        assert_eq!(
            core.to_string(),
            "broker unavailable: timed out waiting for the flush of a message on \"a\""
        );
        assert!(core.is_unavailable());
    }
}
