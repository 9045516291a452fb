//! The core of the transactional outbox: the message model, the seams every backend implements,
//! and the relay loop that moves committed messages from a store to a broker.
//!
//! A service writes its business rows and an outbox [`Message`] in one database transaction
//! (see the store crate, e.g. `outbox-postgres`). A [`Relay`] then claims committed messages from a
//! [`Store`], publishes them through a [`Broker`], and removes them only after the broker
//! acknowledged them. An [`Elector`] makes sure one relay at a time does this.
//!
//! | Module | What it holds |
//! |---|---|
//! | [`message`] | [`Message`], its builder and header rules |
//! | [`store`] | the [`Store`] trait: claim, complete, fail, wait for work |
//! | [`broker`] | the [`Broker`] trait: publish with a pending acknowledgement |
//! | [`elector`] | the [`Elector`] trait, [`Leadership`], and the [`Standalone`] elector |
//! | [`relay`] | the [`Relay`] loop and its [`RelayState`] |
//! | [`config`] | [`RelayConfig`] and its builder |
//! | [`error`] | [`Error`], which says whether a failure is worth retrying |
//! | [`telemetry`] | the `outbox_*` metrics the relay records through the `metrics` facade |
//! | [`trace`] | [`TraceContext`]: the W3C `traceparent` a message carries to its consumers |
//! | [`redact`] | [`redact_url`](redact::redact_url), [`Secret`](redact::Secret), [`error_chain`](redact::error_chain): secrets kept out of logs and errors |
//! | `memory` | in-memory store, broker and elector (feature `memory`) |
//!
//! # Features
//!
//! | Feature | Default | Enables |
//! |---|---|---|
//! | `memory` | off | [`memory`](crate) module: the reference backend for unit tests |
//! | `opentelemetry` | off | [`TraceContext::current`](trace::TraceContext) and messages that pick up the current span's context (through `tracing-opentelemetry`) |
//! | `otlp` | off | `trace::otlp`: spans exported over OTLP/HTTP as the `OTEL_*` environment variables say (implies `opentelemetry`) |
//!
//! # Examples
//!
//! A relay over the in-memory backend (feature `memory`); real services use `outbox-postgres` and
//! `outbox-nats` in the same way.
//!
//! ```
//! # #[cfg(feature = "memory")]
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), outbox_core::Error> {
//! use outbox_core::memory::{MemoryBroker, MemoryStore};
//! use outbox_core::{Message, Relay, RelayConfig, Standalone};
//! use tokio_util::sync::CancellationToken;
//!
//! let store = MemoryStore::new();
//! let broker = MemoryBroker::new();
//! store.enqueue(Message::builder("orders.created").key("customer-1").payload("{}").build()?);
//!
//! let relay = Relay::new(store.clone(), broker.clone(), Standalone, RelayConfig::default())?;
//! let shutdown = CancellationToken::new();
//! let task = tokio::spawn(relay.run(shutdown.clone()));
//! broker.wait_for(1).await;
//! shutdown.cancel();
//! task.await.expect("relay task");
//! assert_eq!(store.pending_len(), 0);
//! # Ok(()) }
//! # #[cfg(not(feature = "memory"))]
//! # fn main() {}
//! ```
#![deny(missing_docs)]
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

pub mod broker;
pub mod config;
pub mod elector;
pub mod error;
#[cfg(feature = "memory")]
pub mod memory;
pub mod message;
pub mod redact;
pub mod relay;
pub mod store;
pub mod telemetry;
pub mod trace;

pub use broker::{Ack, Broker, PendingAck};
pub use config::{KeyOrder, RelayConfig, RelayConfigBuilder};
pub use elector::{Elector, Leadership, Standalone, Term};
pub use error::{BoxError, Error};
pub use message::{Headers, Message, MessageBuilder, Schedule};
pub use relay::{Relay, RelayState};
pub use store::{Backlog, ClaimRequest, Claimed, Failure, FailureAction, Store};
pub use trace::TraceContext;

/// Re-exported so that backends and users name the same cancellation token type.
pub use tokio_util::sync::CancellationToken;
