//! The JetStream side: connect, find the stream, attach a pull consumer and hand every message to
//! a [`Handler`]. Anything that may heal by itself (server down, stream not created yet, consumer
//! lost in a server restart) is logged and retried with backoff; only a setting the server
//! rejects ends the loop.
//!
//! The default consumer is ephemeral and remembers the stream sequence it reached, so after a
//! failure it is recreated exactly where it stopped (the way async-nats' ordered consumer does,
//! but also correct for `--new` before the first message). A durable consumer keeps its position
//! on the server, and its messages are acked after they are checked. With `--inbox` the ephemeral
//! consumer acks explicitly too, after the message's effect committed: a message left unacked is
//! delivered again.

use std::ops::ControlFlow;
use std::time::Duration;

use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, PullConsumer, pull};
use async_nats::jetstream::stream::{ConsumerErrorKind, Stream as JsStream};
use async_nats::jetstream::{self, AckKind, ErrorCode, context::GetStreamErrorKind};
use async_nats::{Client, Event};
use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder, Retryable};
use futures::StreamExt;
use tracing::{info, warn};

use crate::check::{KEY_HEADER, MSG_ID_HEADER};

/// How often an idle consumer must show it is alive; two missed heartbeats mean it is gone.
const HEARTBEAT: Duration = Duration::from_secs(5);
/// Lifetime of one pull request of the ephemeral consumer's continuous reader.
const PULL_EXPIRES: Duration = Duration::from_secs(30);
/// Lifetime of one pull request of the durable consumer: how long an idle batch waits before the
/// next is requested (and so, with the client's 5 s grace, how soon a lost server is noticed).
const BATCH_EXPIRES: Duration = Duration::from_secs(5);
/// Most messages asked for in one pull request.
const MAX_BATCH: usize = 200;
/// How long the server keeps an ephemeral consumer nobody pulls from (after we exit).
const EPHEMERAL_INACTIVE: Duration = Duration::from_secs(30);

/// What to read and how.
#[derive(Clone, Debug)]
pub(crate) struct Settings {
    pub(crate) stream: String,
    pub(crate) subject: String,
    pub(crate) durable: Option<String>,
    pub(crate) new_only: bool,
    /// Whether every message is acked (or terminated) as the handler says: always for a durable
    /// consumer, and for an ephemeral one with `--inbox`.
    pub(crate) explicit_ack: bool,
}

/// A message as the checks and the output see it.
#[derive(Debug)]
pub(crate) struct Delivery<'a> {
    pub(crate) subject: &'a str,
    /// Where the message sits in the stream (absent only if the server omitted its metadata).
    pub(crate) stream_seq: Option<u64>,
    pub(crate) msg_id: Option<&'a str>,
    pub(crate) key: Option<&'a str>,
    pub(crate) payload: &'a [u8],
}

/// What a handler made of one message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Reply {
    /// `Break` ends the loop (after the message is settled).
    pub(crate) flow: ControlFlow<()>,
    /// What an explicitly acking consumer tells the server.
    pub(crate) settle: Settle,
}

/// How a message is settled with the server (consumers with explicit acks only).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Settle {
    /// Done with it.
    Ack,
    /// It can never be handled: the server must not deliver it again.
    Terminate,
    /// Not handled: left unacked, so the server delivers it again after its ack wait.
    Leave,
}

/// Receives what the consumer loop sees.
pub(crate) trait Handler {
    /// A consumer is attached and reading (called again after each re-attach).
    fn attached(&mut self, description: &str);
    /// One message.
    async fn message(&mut self, delivery: &Delivery<'_>) -> Reply;
    /// How many more messages the handler needs at most (`None`: no limit).
    fn wanted(&self) -> Option<u64>;
}

/// Why attaching failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum AttachError {
    /// Worth retrying: the server, the stream or the consumer may come (back).
    #[error("{0}")]
    Transient(String),
    /// The server rejected our settings; retrying would give the same answer.
    #[error("{0}")]
    Rejected(String),
}

/// Backoff between attempts: 100 ms doubling to 5 s, with jitter, forever (the caller bounds the
/// run with `--timeout` or a signal).
fn backoff() -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_secs(5))
        .with_jitter()
        .without_max_times()
}

/// Connects to NATS, retrying with backoff until it answers. Later disconnects are healed by
/// async-nats itself; its events are logged. Refused credentials or TLS settings are
/// [`AttachError::Rejected`]: waiting does not change them.
pub(crate) async fn connect(
    options: &outbox_nats::NatsConnectOptions,
) -> Result<Client, AttachError> {
    info!("connecting to NATS at {options}");
    let attempt =
        || options.connect_with(|o| o.event_callback(|event| async move { log_event(&event) }));
    loop {
        let result = attempt
            .retry(backoff())
            .when(outbox_nats::Error::is_transient)
            .notify(|err, delay| {
                warn!("cannot reach NATS: {err}; retrying in {delay:.1?}");
            })
            .await;
        match result {
            Ok(client) => return Ok(client),
            Err(err) if !err.is_transient() => {
                return Err(AttachError::Rejected(format!("NATS refused us: {err}")));
            }
            // Unreachable with an unbounded backoff; if it happens, start a fresh one.
            Err(err) => warn!("cannot reach NATS: {err}"),
        }
    }
}

fn log_event(event: &Event) {
    match event {
        Event::Connected => info!("NATS connection established"),
        Event::Disconnected => warn!("NATS connection lost; reconnecting"),
        Event::Closed => warn!("NATS connection closed"),
        // Sent for each failed reconnect attempt; async-nats keeps trying with its own backoff.
        Event::ClientError(err) => warn!("NATS reconnect attempt failed: {err}"),
        other => warn!("NATS: {other}"),
    }
}

/// Reads the stream through a consumer, re-attaching after failures, until the handler breaks
/// or the server rejects the settings.
#[derive(Debug)]
pub(crate) struct Consumer {
    js: jetstream::Context,
    settings: Settings,
    /// Where a new ephemeral consumer must start: the stream sequence after the last message
    /// seen (or, for `--new`, after the last one stored when we first attached).
    resume_at: Option<u64>,
    /// The ephemeral consumer in use, deleted before a replacement is made.
    ephemeral: Option<String>,
}

impl Consumer {
    pub(crate) fn new(client: Client, settings: Settings) -> Self {
        Self {
            js: jetstream::new(client),
            settings,
            resume_at: None,
            ephemeral: None,
        }
    }

    /// Runs until `handler` breaks (`Ok`) or attaching is rejected (`Err`).
    pub(crate) async fn run(&mut self, handler: &mut impl Handler) -> Result<(), AttachError> {
        let mut delays = Pacer::new();
        loop {
            let reason = match self.attach().await {
                Ok((consumer, description)) => {
                    handler.attached(&description);
                    let read = if self.settings.durable.is_some() {
                        self.read_batches(&consumer, handler, &mut delays).await
                    } else {
                        self.read_continuously(&consumer, handler, &mut delays)
                            .await
                    };
                    match read {
                        ControlFlow::Break(()) => return Ok(()),
                        ControlFlow::Continue(reason) => reason,
                    }
                }
                Err(AttachError::Transient(reason)) => reason,
                Err(rejected) => return Err(rejected),
            };
            let delay = delays.next();
            warn!("{reason}; retrying in {delay:.1?}");
            tokio::time::sleep(delay).await;
        }
    }

    /// The ephemeral consumer's reader: one long-lived pull subscription with heartbeats, so a
    /// lost consumer is noticed within two heartbeats. Returns why it stopped unless the handler
    /// broke.
    async fn read_continuously(
        &mut self,
        consumer: &PullConsumer,
        handler: &mut impl Handler,
        delays: &mut Pacer,
    ) -> ControlFlow<(), String> {
        let mut messages = match consumer
            .stream()
            .heartbeat(HEARTBEAT)
            .expires(PULL_EXPIRES)
            .messages()
            .await
        {
            Ok(messages) => messages,
            Err(err) => return ControlFlow::Continue(format!("cannot start pulling: {err}")),
        };
        loop {
            match messages.next().await {
                Some(Ok(message)) => {
                    delays.reset();
                    self.deliver(&message, handler).await?;
                }
                Some(Err(err)) => return ControlFlow::Continue(format!("consumer failed: {err}")),
                None => return ControlFlow::Continue("consumer ended".to_owned()),
            }
        }
    }

    /// The durable consumer's reader: pull requests for no more messages than the handler still
    /// wants, so that when `--expect` is met no message is left delivered but unacked (it would
    /// come back to the next run only after the ack wait).
    async fn read_batches(
        &mut self,
        consumer: &PullConsumer,
        handler: &mut impl Handler,
        delays: &mut Pacer,
    ) -> ControlFlow<(), String> {
        loop {
            let size = handler
                .wanted()
                .map_or(MAX_BATCH, |n| usize::try_from(n).unwrap_or(MAX_BATCH))
                .clamp(1, MAX_BATCH);
            let mut batch = match consumer
                .batch()
                .max_messages(size)
                .expires(BATCH_EXPIRES)
                .messages()
                .await
            {
                Ok(batch) => batch,
                Err(err) => return ControlFlow::Continue(format!("cannot pull: {err}")),
            };
            // A batch ends when it is full or expires; then the next one is requested.
            while let Some(item) = batch.next().await {
                match item {
                    Ok(message) => {
                        delays.reset();
                        self.deliver(&message, handler).await?;
                    }
                    Err(err) => return ControlFlow::Continue(format!("consumer failed: {err}")),
                }
            }
        }
    }

    async fn deliver(
        &mut self,
        message: &jetstream::Message,
        handler: &mut impl Handler,
    ) -> ControlFlow<()> {
        let stream_seq = match message.info() {
            Ok(info) => {
                self.resume_at = Some(info.stream_sequence + 1);
                Some(info.stream_sequence)
            }
            Err(err) => {
                // JetStream always sends the metadata, so this is a protocol surprise worth a
                // line, not a crash; the message is counted but its order cannot be checked.
                warn!(
                    "message on {} without JetStream metadata: {err}",
                    message.subject
                );
                None
            }
        };
        let header = |name: &str| {
            message
                .headers
                .as_ref()
                .and_then(|h| h.get(name))
                .map(|v| v.as_str())
        };
        let delivery = Delivery {
            subject: message.subject.as_str(),
            stream_seq,
            msg_id: header(MSG_ID_HEADER),
            key: header(KEY_HEADER),
            payload: &message.payload,
        };
        let reply = crate::telemetry::traced(message, handler.message(&delivery)).await;
        if self.settings.explicit_ack {
            let sent = match reply.settle {
                Settle::Ack => message.ack().await,
                Settle::Terminate => message.ack_with(AckKind::Term).await,
                Settle::Leave => Ok(()),
            };
            if let Err(err) = sent {
                // The server delivers it again later; the checker counts that as a redelivery.
                warn!("cannot ack message on {}: {err}", message.subject);
            }
        }
        reply.flow
    }

    /// Finds the stream and creates (or finds) the consumer; returns it with a description for
    /// the log.
    async fn attach(&mut self) -> Result<(PullConsumer, String), AttachError> {
        let stream = self
            .js
            .get_stream(&self.settings.stream)
            .await
            .map_err(|err| stream_error(&err, err.kind(), &self.settings.stream))?;
        match self.settings.durable.clone() {
            Some(name) => self.durable(&stream, name).await,
            None => self.ephemeral(&stream).await,
        }
    }

    async fn ephemeral(
        &mut self,
        stream: &JsStream,
    ) -> Result<(PullConsumer, String), AttachError> {
        if let Some(old) = self.ephemeral.take() {
            // Best effort: a consumer we cannot delete expires after EPHEMERAL_INACTIVE anyway.
            let _ = stream.delete_consumer(&old).await;
        }
        if self.resume_at.is_none() && self.settings.new_only {
            self.resume_at = Some(stream.cached_info().state.last_sequence + 1);
        }
        let (deliver_policy, from) = match self.resume_at {
            Some(start_sequence) => (
                DeliverPolicy::ByStartSequence { start_sequence },
                format!("stream sequence {start_sequence}"),
            ),
            None => (DeliverPolicy::All, "the first message".to_owned()),
        };
        let consumer = stream
            .create_consumer(pull::Config {
                filter_subject: self.settings.subject.clone(),
                deliver_policy,
                // Without --inbox nothing is acked: a replacement consumer resumes from
                // `resume_at`. With it, a message whose effect did not commit must come back.
                ack_policy: if self.settings.explicit_ack {
                    AckPolicy::Explicit
                } else {
                    AckPolicy::None
                },
                inactive_threshold: EPHEMERAL_INACTIVE,
                description: Some("outbox subscriber (ephemeral)".to_owned()),
                ..Default::default()
            })
            .await
            .map_err(|err| consumer_error(&err, err.kind(), &self.settings.stream))?;
        self.ephemeral = Some(consumer.cached_info().name.clone());
        let description = format!(
            "reading stream {} subject {} from {from} (ephemeral consumer {})",
            self.settings.stream,
            self.settings.subject,
            consumer.cached_info().name
        );
        Ok((consumer, description))
    }

    async fn durable(
        &self,
        stream: &JsStream,
        name: String,
    ) -> Result<(PullConsumer, String), AttachError> {
        let config = pull::Config {
            durable_name: Some(name.clone()),
            filter_subject: self.settings.subject.clone(),
            deliver_policy: if self.settings.new_only {
                DeliverPolicy::New
            } else {
                DeliverPolicy::All
            },
            ack_policy: AckPolicy::Explicit,
            description: Some("outbox subscriber (durable)".to_owned()),
            ..Default::default()
        };
        let consumer: PullConsumer = stream
            .get_or_create_consumer(&name, config)
            .await
            .map_err(|err| consumer_error(&err, err.kind(), &self.settings.stream))?;
        let info = consumer.cached_info();
        if info.config.filter_subject != self.settings.subject {
            // An existing durable keeps the settings it was created with.
            warn!(
                "durable consumer {name} filters {:?}, not {:?}: reading what it filters",
                info.config.filter_subject, self.settings.subject
            );
        }
        let description = format!(
            "reading stream {} with durable consumer {name} (filter {}, {} pending, {} awaiting ack)",
            self.settings.stream,
            info.config.filter_subject,
            info.num_pending,
            info.num_ack_pending
        );
        Ok((consumer, description))
    }
}

fn stream_error(
    err: &dyn std::fmt::Display,
    kind: GetStreamErrorKind,
    stream: &str,
) -> AttachError {
    match kind {
        GetStreamErrorKind::JetStream(e) if e.error_code() == ErrorCode::STREAM_NOT_FOUND => {
            not_found(stream)
        }
        GetStreamErrorKind::JetStream(e) => classify(&e, &format!("stream {stream}")),
        GetStreamErrorKind::Request => {
            AttachError::Transient(format!("cannot look up stream {stream}: {err}"))
        }
        GetStreamErrorKind::EmptyName | GetStreamErrorKind::InvalidStreamName => {
            AttachError::Rejected(format!("stream {stream}: {err}"))
        }
    }
}

fn not_found(stream: &str) -> AttachError {
    AttachError::Transient(format!(
        "stream {stream} not found (it may not be created yet)"
    ))
}

fn consumer_error(
    err: &dyn std::fmt::Display,
    kind: ConsumerErrorKind,
    stream: &str,
) -> AttachError {
    match kind {
        ConsumerErrorKind::JetStream(e) if e.error_code() == ErrorCode::STREAM_NOT_FOUND => {
            not_found(stream)
        }
        ConsumerErrorKind::JetStream(e) => classify(&e, &format!("consumer on stream {stream}")),
        ConsumerErrorKind::InvalidName | ConsumerErrorKind::InvalidConsumerType => {
            AttachError::Rejected(format!("consumer on stream {stream}: {err}"))
        }
        ConsumerErrorKind::TimedOut | ConsumerErrorKind::Request | ConsumerErrorKind::Other => {
            AttachError::Transient(format!(
                "cannot create a consumer on stream {stream}: {err}"
            ))
        }
    }
}

/// A JetStream API error is a rejection when it is about our settings (they will not change by
/// waiting); anything else (leader elections, resource pressure) may pass.
fn classify(err: &jetstream::Error, what: &str) -> AttachError {
    const SETTINGS: [ErrorCode; 11] = [
        ErrorCode::CONSUMER_FILTER_NOT_SUBSET,
        ErrorCode::CONSUMER_CREATE_FILTER_SUBJECT_MISMATCH,
        ErrorCode::CONSUMER_CREATE_DURABLE_AND_NAME_MISMATCH,
        ErrorCode::CONSUMER_BAD_DURABLE_NAME,
        ErrorCode::CONSUMER_NAME_TOO_LONG,
        ErrorCode::CONSUMER_NAME_CONTAINS_PATH_SEPARATORS,
        ErrorCode::STREAM_NAME_CONTAINS_PATH_SEPARATORS,
        ErrorCode::CONSUMER_EMPTY_FILTER,
        ErrorCode::CONSUMER_PULL_REQUIRES_ACK,
        ErrorCode::CONSUMER_DURABLE_NAME_NOT_SET,
        ErrorCode::CONSUMER_PULL_NOT_DURABLE,
    ];
    if SETTINGS.contains(&err.error_code()) {
        AttachError::Rejected(format!("{what}: {err}"))
    } else {
        AttachError::Transient(format!("{what}: {err}"))
    }
}

/// Delays between failed attempts, restarting from the shortest once messages flow again.
#[derive(Debug)]
struct Pacer {
    delays: ExponentialBackoff,
    used: bool,
}

impl Pacer {
    fn new() -> Self {
        Self {
            delays: backoff().build(),
            used: false,
        }
    }

    fn next(&mut self) -> Duration {
        self.used = true;
        self.delays.next().unwrap_or(Duration::from_secs(5))
    }

    fn reset(&mut self) {
        if self.used {
            *self = Self::new();
        }
    }
}
