//! The [`Broker`] trait: where messages are published.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use async_trait::async_trait;
use futures::future::BoxFuture;

use crate::{Error, Message};

/// The broker's acknowledgement of one message.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Ack {
    /// The broker already had a message with this id and dropped this one (JetStream dedup).
    pub duplicate: bool,
}

impl Ack {
    /// An acknowledgement of a message the broker had not seen.
    pub fn new() -> Self {
        Self::default()
    }

    /// An acknowledgement of a message the broker recognised as a duplicate.
    pub fn duplicate() -> Self {
        Self { duplicate: true }
    }
}

/// A publish that was sent and waits for the broker's acknowledgement.
///
/// Resolves to the [`Ack`], or to the error that made the broker reject or lose the message.
#[must_use = "a message is only published once its acknowledgement resolved"]
pub struct PendingAck(BoxFuture<'static, Result<Ack, Error>>);

impl PendingAck {
    /// Wraps a future that resolves when the broker acknowledged the message.
    pub fn new(future: impl Future<Output = Result<Ack, Error>> + Send + 'static) -> Self {
        Self(Box::pin(future))
    }

    /// An acknowledgement that is already known.
    pub fn ready(result: Result<Ack, Error>) -> Self {
        Self::new(std::future::ready(result))
    }
}

impl Future for PendingAck {
    type Output = Result<Ack, Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.0.as_mut().poll(cx)
    }
}

impl fmt::Debug for PendingAck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PendingAck")
    }
}

/// Where messages are published.
///
/// # Contract
///
/// Every implementation passes the testkit's broker conformance suite, which checks:
///
/// - [`publish`](Broker::publish) returns once the message is sent, without waiting for the
///   acknowledgement, so the relay can keep many acknowledgements in flight.
/// - The [`PendingAck`] resolves `Ok` only after the broker took responsibility for the message
///   (JetStream: stored; core NATS: written to the server connection).
/// - The message id travels with the message, so a deduplicating broker drops a republish.
/// - Errors say whether a retry may help ([`Error::is_retryable`]): a payload over the broker's
///   limit is permanent, a timeout is transient.
#[async_trait]
pub trait Broker: Send + Sync + 'static {
    /// Sends `message` and returns the pending acknowledgement.
    async fn publish(&self, message: &Message) -> Result<PendingAck, Error>;
}
