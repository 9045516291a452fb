//! The two [`Broker`] implementations: [`JetStreamPublisher`] (the default) and
//! [`CorePublisher`].

use std::time::Duration;

use async_nats::Subject;
use async_nats::jetstream::{self, context::ContextBuilder};
use async_trait::async_trait;
use outbox_core::{Ack, Broker, Message, PendingAck};

use crate::headers::{check_subject, nats_headers, wire_size};
use crate::{CoreConfig, Error, JetStreamConfig};

/// Checks a message against the server's limit and maps it to NATS headers; returns them with
/// the wire size and the limit, for error reports.
fn prepare(
    client: &async_nats::Client,
    message: &Message,
) -> Result<(async_nats::HeaderMap, usize, usize), Error> {
    check_subject(message.subject())?;
    let headers = nats_headers(message)?;
    let size = wire_size(&headers, message.payload().len());
    // The limit from the server's latest INFO. Checked here because a server answers an
    // oversized publish by closing the connection, failing everything else in flight.
    let max = client.max_payload();
    if size > max {
        return Err(Error::PayloadTooLarge { size, max });
    }
    Ok((headers, size, max))
}

/// Publishes to JetStream; a message counts as published once a stream stored it.
///
/// Each message is sent with `Nats-Msg-Id: <message id>`, `Outbox-Key: <key>` (when it has a key)
/// and its own headers (see [`headers`](crate::headers)). [`publish`](Broker::publish) returns as
/// soon as the message is handed to the connection; its [`PendingAck`] resolves when JetStream's
/// acknowledgement arrives, with [`Ack::duplicate`] when the stream already held a message with
/// that id inside its duplicate window, so a republish after a crash is stored once.
///
/// # Guarantees and limits
///
/// - At least once into the stream, exactly once within the stream's duplicate window.
/// - A subject that no stream captures fails with the transient [`Error::NoStream`]; create the
///   stream with [`ensure_stream`](crate::ensure_stream).
/// - Messages over the server's `max_payload` fail at once with the permanent
///   [`Error::PayloadTooLarge`], without being sent.
/// - Acknowledgements in flight are bounded by async-nats' `max_ack_inflight`, which must not
///   be below the relay's `max_in_flight` (see [`JetStreamConfig`]).
///
/// # Examples
///
/// ```no_run
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use outbox_core::{Broker, Message};
/// use outbox_nats::{JetStreamConfig, JetStreamPublisher};
///
/// let client = outbox_nats::connect("nats://127.0.0.1:4222").await?;
/// let publisher = JetStreamPublisher::with_config(client, JetStreamConfig::default())?;
/// let pending = publisher.publish(&Message::builder("orders.created").build()?).await?;
/// let ack = pending.await?;
/// assert!(!ack.duplicate);
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct JetStreamPublisher {
    client: async_nats::Client,
    context: jetstream::Context,
}

impl JetStreamPublisher {
    /// A publisher on `client` with the default [`JetStreamConfig`].
    ///
    /// # Panics
    ///
    /// Outside a Tokio runtime: async-nats spawns the context's acknowledgement task.
    pub fn new(client: async_nats::Client) -> Self {
        Self::build(client, &JetStreamConfig::default())
    }

    /// A publisher on `client` whose acknowledgement timeout and window come from `config`.
    ///
    /// Fails with [`Error::Config`] when `config` does not validate.
    ///
    /// # Panics
    ///
    /// Outside a Tokio runtime: async-nats spawns the context's acknowledgement task.
    pub fn with_config(client: async_nats::Client, config: JetStreamConfig) -> Result<Self, Error> {
        config.validate()?;
        Ok(Self::build(client, &config))
    }

    fn build(client: async_nats::Client, config: &JetStreamConfig) -> Self {
        let context = ContextBuilder::new()
            .timeout(config.ack_timeout)
            .max_ack_inflight(config.max_ack_inflight)
            .build(client.clone());
        Self { client, context }
    }

    /// A publisher on a context you built yourself (for a JetStream domain or API prefix).
    ///
    /// The context's timeout is the acknowledgement timeout (async-nats' default: 5 s), and its
    /// `max_ack_inflight` (default 5000) must be at least the relay's `max_in_flight`.
    pub fn from_context(context: jetstream::Context) -> Self {
        Self {
            client: context.client(),
            context,
        }
    }

    /// The JetStream context messages are published through, e.g. for
    /// [`ensure_stream`](crate::ensure_stream).
    pub fn context(&self) -> &jetstream::Context {
        &self.context
    }

    /// The client under the context.
    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }
}

#[async_trait]
impl Broker for JetStreamPublisher {
    async fn publish(&self, message: &Message) -> Result<PendingAck, outbox_core::Error> {
        let (headers, size, max) = prepare(&self.client, message)?;
        // One copy of the subject, shared by the publish and the error of a failed ack.
        let subject = Subject::from(message.subject());
        let ack = self
            .context
            .publish_with_headers(subject.clone(), headers, message.payload().clone())
            .await
            .map_err(|e| Error::from_jetstream_publish(&subject, size, max, e))?;
        Ok(PendingAck::new(async move {
            match ack.await {
                Ok(ack) if ack.duplicate => Ok(Ack::duplicate()),
                Ok(_) => Ok(Ack::new()),
                Err(e) => Err(Error::from_jetstream_publish(&subject, size, max, e).into()),
            }
        }))
    }
}

/// Publishes with core NATS: **at most once**, to the subscribers online at that moment.
///
/// Nothing stores the message: a subscriber that is offline, slow (its buffer overflows) or
/// connected to a server that restarts misses it, and nothing tells the relay. Use it only when
/// losing a message is acceptable; [`JetStreamPublisher`] is the default for that reason. (A
/// JetStream stream capturing the subject does store core publishes, and deduplicates them by
/// the `Nats-Msg-Id` header this publisher also sends, but the relay cannot know whether it did.)
///
/// Its [`PendingAck`] resolves once the message was written to the server connection, as
/// reported by async-nats' flush. That flush is local (no round trip to the server), and the
/// flushes of messages published together resolve together. It does not mean the server
/// received the message: bytes written just before a connection drops are lost.
///
/// Headers, subject checks and the `max_payload` check are those of [`JetStreamPublisher`].
///
/// # Examples
///
/// ```no_run
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use outbox_core::{Broker, Message};
/// use outbox_nats::CorePublisher;
///
/// let client = outbox_nats::connect("nats://127.0.0.1:4222").await?;
/// let publisher = CorePublisher::new(client);
/// publisher.publish(&Message::builder("orders.created").build()?).await?.await?;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct CorePublisher {
    client: async_nats::Client,
    flush_timeout: Duration,
}

impl CorePublisher {
    /// A publisher on `client` with the default [`CoreConfig`].
    pub fn new(client: async_nats::Client) -> Self {
        Self {
            client,
            flush_timeout: CoreConfig::default().flush_timeout,
        }
    }

    /// A publisher on `client` with `config`.
    ///
    /// Fails with [`Error::Config`] when `config` does not validate.
    pub fn with_config(client: async_nats::Client, config: CoreConfig) -> Result<Self, Error> {
        config.validate()?;
        Ok(Self {
            client,
            flush_timeout: config.flush_timeout,
        })
    }

    /// The client messages are published through.
    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }
}

#[async_trait]
impl Broker for CorePublisher {
    async fn publish(&self, message: &Message) -> Result<PendingAck, outbox_core::Error> {
        let (headers, size, max) = prepare(&self.client, message)?;
        let subject = message.subject().to_owned();
        let timeout = |waiting_for| Error::Timeout {
            subject: subject.clone(),
            waiting_for,
        };
        // While the client reconnects, its command queue fills and a send waits; bound that.
        tokio::time::timeout(
            self.flush_timeout,
            self.client
                .publish_with_headers(subject.clone(), headers, message.payload().clone()),
        )
        .await
        .map_err(|_| timeout("the send"))?
        .map_err(|e| Error::from_core_publish(&subject, size, max, e))?;
        // The flush command is queued when the ack is first awaited, after the publish command,
        // so it completes only once the publish was written.
        let client = self.client.clone();
        let flush_timeout = self.flush_timeout;
        Ok(PendingAck::new(async move {
            match tokio::time::timeout(flush_timeout, client.flush()).await {
                Ok(Ok(())) => Ok(Ack::new()),
                Ok(Err(e)) => Err(Error::Publish {
                    subject,
                    source: Box::new(e),
                }
                .into()),
                Err(_) => Err(Error::Timeout {
                    subject,
                    waiting_for: "the flush",
                }
                .into()),
            }
        }))
    }
}
