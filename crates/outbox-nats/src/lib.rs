//! NATS publishers for the transactional outbox: JetStream (the default) and core NATS, stream
//! provisioning, and the mapping of outbox messages to NATS messages.
//!
//! The relay of `outbox-core` publishes through any [`Broker`](outbox_core::Broker); this crate
//! provides two:
//!
//! - [`JetStreamPublisher`] stores every message in a stream and resolves its acknowledgement
//!   when the stream stored it. Each message carries `Nats-Msg-Id: <message id>`, so a republish
//!   after a crash, inside the stream's duplicate window, is dropped by the server: no visible
//!   duplicates.
//! - [`CorePublisher`] sends with core NATS: at most once, to the subscribers online at that
//!   moment. Use it only where losing messages is acceptable.
//!
//! Both check a message before sending it: a subject NATS cannot publish to, a header it cannot
//! carry, or a payload over the server's `max_payload` fails at once with a permanent error (the
//! relay dead-letters it); connection trouble, timeouts and a missing stream are transient
//! (the relay retries with backoff). See [`error`] for the whole table.
//!
//! | Module | What it holds |
//! |---|---|
//! | [`publisher`] | [`JetStreamPublisher`] and [`CorePublisher`] |
//! | [`stream`] | [`StreamSpec`] and [`ensure_stream`]: create or update the stream |
//! | [`headers`] | [`KEY_HEADER`], [`MSG_ID_HEADER`] and the message → NATS mapping |
//! | [`config`] | [`JetStreamConfig`] (ack timeout, ack window) and [`CoreConfig`] |
//! | [`connect`](mod@connect) | [`NatsConnectOptions`] and [`NatsSecurity`]: TLS, user/password, token, NKey and `.creds` credentials; [`connect`](fn@connect) and [`parse_url`]: clear errors for bad URLs and unreachable servers |
//! | [`error`] | [`Error`]: transient or permanent |
//!
//! # Features
//!
//! | Feature | Default | Enables |
//! |---|---|---|
//! | `clap` | off | `NatsSecurityArgs`: `--nats-creds`, `--nats-token`, ... for a clap command line |
//!
//! # Examples
//!
//! Connect, make sure the stream exists, and publish one message the way the relay does.
//!
//! ```no_run
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use outbox_core::{Broker, Message};
//! use outbox_nats::{JetStreamConfig, JetStreamPublisher, StreamSpec, ensure_stream};
//!
//! let client = outbox_nats::connect("nats://127.0.0.1:4222").await?;
//! let config = JetStreamConfig::builder().ack_timeout(Duration::from_secs(5)).build()?;
//! let publisher = JetStreamPublisher::with_config(client, config)?;
//! ensure_stream(publisher.context(), &StreamSpec::new("ORDERS", ["orders.>"])).await?;
//!
//! let message = Message::builder("orders.created").key("customer-1").payload("{}").build()?;
//! let ack = publisher.publish(&message).await?.await?;
//! // The same message again (a republish after a crash) is dropped by the stream.
//! let again = publisher.publish(&message).await?.await?;
//! assert!(!ack.duplicate && again.duplicate);
//! # Ok(()) }
//! ```
#![deny(missing_docs)]

pub mod config;
pub mod connect;
pub mod error;
pub mod headers;
pub mod publisher;
pub mod stream;

pub use config::{CoreConfig, CoreConfigBuilder, JetStreamConfig, JetStreamConfigBuilder};
#[cfg(feature = "clap")]
pub use connect::NatsSecurityArgs;
pub use connect::{
    NatsConnectOptions, NatsCredentials, NatsSecurity, connect, connect_with_options, parse_url,
};
pub use error::Error;
pub use headers::{KEY_HEADER, MSG_ID_HEADER};
pub use publisher::{CorePublisher, JetStreamPublisher};
pub use stream::{StreamSpec, ensure_stream};
