//! PostgreSQL backend of the transactional outbox: migrations, enqueueing in the caller's
//! transaction, the relay's [`Store`](outbox_core::Store) and leader election.
//!
//! A service writes its business rows and its outbox messages in one transaction with
//! [`PgOutbox::enqueue`]: the messages exist if and only if the transaction commits. A relay
//! ([`outbox_core::Relay`]) then reads them through a [`PgStore`] and publishes them. Several
//! instances may run relays: a [`PgElector`] lets one of them lead, through an advisory lock held
//! by the very session the store works on.
//!
//! | Module | What it holds |
//! |---|---|
//! | [`config`] | [`PgConfig`] (schema, lock id, wake-up mode, session timings) and its builder |
//! | [`connect`] | [`PgConnectOptions`]: a `DATABASE_URL` with libpq's `sslmode` (up to `verify-full`), root and client certificates, and passwords from the URL, `PGPASSWORD` or a password file |
//! | [`outbox`] | [`PgOutbox`]: [`migrate`](PgOutbox::migrate), [`enqueue`](PgOutbox::enqueue), [`enqueue_batch`](PgOutbox::enqueue_batch), [`execute_and_enqueue`](PgOutbox::execute_and_enqueue) (your write and the enqueue as one statement) |
//! | [`executor`] | [`Executor`]: the clients and transactions `enqueue` accepts |
//! | [`enqueuer`] | [`Enqueuer`]: the enqueue statements prepared once on a `tokio-postgres` connection, by [`prepare`](PgOutbox::prepare) |
//! | [`store`] | [`PgStore`]: claim, complete, fail, wait for work |
//! | [`elector`] | [`PgElector`]: leadership as a session-level advisory lock |
//! | [`dead_letter`] | [`DeadLetter`] and the list, replay and purge functions |
//! | [`retention`] | published messages kept for [`PgConfig::retention`]: [`purge_published`](PgOutbox::purge_published) |
//! | [`inbox`] | [`PgInbox`], [`InboxConfig`]: exactly-once processing on the consumer side, [`process`](PgInbox::process) and [`handle`](PgInbox::handle) |
//! | [`status`] | [`OutboxStatus`], [`LeaderSession`]: [`status`](PgOutbox::status), [`leader`](PgOutbox::leader), [`schema_version`](PgOutbox::schema_version) |
//! | [`wal`] | [`EnqueueMode::WalMessage`]: [`emit`](PgOutbox::emit) a message as a WAL record, which the leading store moves into the table through a logical replication slot; [`WalSlotStatus`] |
//! | [`error`] | [`Error`], classified transient or permanent |
//!
//! Everything lives in one schema (default `outbox`): `messages`, `dead_letters`, `published`
//! (used with a retention only) and `schema_migrations`. All SQL is in one internal module; the migrations are embedded. A
//! consumer's [`PgInbox`] is one table of its own, in a schema of your choice, with its statements
//! beside it.
//!
//! # Features
//!
//! | Feature | Default | Enables |
//! |---|---|---|
//! | `deadpool` | on | [`Executor`] for `deadpool_postgres::Object` and `deadpool_postgres::Transaction` |
//!
//! # Examples
//!
//! Migrate, enqueue in a transaction, and run a relay that leads while it holds the lock:
//!
//! ```no_run
//! use outbox_core::{Broker, CancellationToken, Message, Relay, RelayConfig};
//! use outbox_postgres::{PgConfig, PgOutbox, PgStore};
//!
//! // `broker` is e.g. outbox-nats' JetStream publisher.
//! async fn service(broker: impl Broker) -> Result<(), Box<dyn std::error::Error>> {
//!     let url = "postgres://postgres@127.0.0.1:5432/app";
//!     let (mut client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
//!     tokio::spawn(connection);
//!
//!     let outbox = PgOutbox::new(PgConfig::default())?;
//!     outbox.migrate(&client).await?;
//!
//!     let tx = client.transaction().await?;
//!     tx.execute("INSERT INTO orders (id, total) VALUES ($1, $2)", &[&42_i64, &1999_i64])
//!         .await?;
//!     let message = Message::builder("orders.created")
//!         .key("customer-7")
//!         .payload(r#"{"id":42}"#)
//!         .build()?;
//!     outbox.enqueue(&tx, &message).await?;
//!     tx.commit().await?;
//!
//!     let store = PgStore::new(&outbox, url.parse()?);
//!     let elector = store.elector();
//!     let relay = Relay::new(store, broker, elector, RelayConfig::default())?;
//!     let shutdown = CancellationToken::new();
//!     let running = tokio::spawn(relay.run(shutdown.clone()));
//!     // ... on SIGTERM:
//!     shutdown.cancel();
//!     running.await?;
//!     Ok(())
//! }
//! ```
//!
//! # Operational notes
//!
//! - TLS: build the store with [`PgStore::with_connect_options`] and a [`PgConnectOptions`]
//!   parsed from the URL (`?sslmode=verify-full&sslrootcert=/path/ca.pem`); its sessions, the
//!   `LISTEN` connection included, then encrypt and verify as the URL says. [`PgStore::new`] with a
//!   bare `tokio_postgres::Config` connects without TLS.
//! - Point the store at PostgreSQL directly or through a pooler in session mode: a pooler in
//!   transaction mode breaks session-level advisory locks. `enqueue` on a `tokio-postgres`
//!   connection works through any pooler (it uses no named prepared statements); on a
//!   `deadpool-postgres` connection it uses the connection's prepared statements, so behind a
//!   transaction-mode pooler that does not keep them, set [`PgConfig::prepare_enqueue`] to
//!   false. An [`Enqueuer`] and [`execute_and_enqueue`](PgOutbox::execute_and_enqueue) always
//!   use prepared statements.
//! - The leader's session is visible in `pg_stat_activity` as `outbox-relay <schema>`.
#![deny(missing_docs)]

mod claim;
pub mod config;
pub mod connect;
pub mod dead_letter;
pub mod elector;
pub mod enqueuer;
pub mod error;
pub mod executor;
pub mod inbox;
mod ingest;
mod listen;
pub mod outbox;
pub mod retention;
mod session;
mod sql;
pub mod status;
pub mod store;
mod vacuum;
pub mod wal;

pub use config::{EnqueueMode, Keepalive, PgConfig, PgConfigBuilder, WakeUp, validate_schema};
pub use connect::{
    ConnectOptionsError, MakeRustlsConnect, PasswordSource, PgConnectOptions, PgConnection,
    RootCerts, SslMode,
};
pub use dead_letter::{BulkProgress, DeadLetter, DeadLetterFilter};
pub use elector::PgElector;
pub use enqueuer::Enqueuer;
pub use error::Error;
pub use executor::Executor;
pub use inbox::{Handled, InboxConfig, PgInbox, Processed};
pub use outbox::PgOutbox;
pub use retention::DEFAULT_PURGE_BATCH;
pub use status::{LeaderSession, OutboxStatus};
pub use store::PgStore;
pub use wal::WalSlotStatus;

/// The README's examples, compiled as doctests so that they stay true.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
struct ReadmeDoctests;
