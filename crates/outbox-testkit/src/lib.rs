//! Fixtures, fakes and conformance suites for code built on the outbox crates.
//!
//! | Item | What it gives a test |
//! |---|---|
//! | [`TestDatabase`] | a fresh schema name on the PostgreSQL of `DATABASE_URL`, dropped afterwards |
//! | [`TestNats`] | a fresh JetStream stream and subject prefix on the NATS of `NATS_URL`, deleted afterwards |
//! | [`create_stream`] | a JetStream stream of the test's own, created through a loaded server's passing failures |
//! | [`NatsServer`] | a `nats-server` child process on a free port, to kill and restart |
//! | [`ConfiguredNatsServer`] | a `nats-server` started from a configuration of the test's own (TLS, users, operator mode) |
//! | [`PgCluster`] | a throwaway PostgreSQL cluster (`initdb`, own `pg_hba.conf`, TLS) on a free port |
//! | [`TestCa`] | a throwaway certificate authority: CA, server and client certificates as PEM files |
//! | [`FaultyBroker`], [`FaultyStore`] | wrap any broker or store and fail on command |
//! | [`RelayTask`] | a relay running in its own task: start, wait until leading, stop, abort |
//! | [`assert_exactly_once_in_key_order`] | the check that matters: each message once, per-key order |
//! | [`memory`] | the in-memory store, broker and election of `outbox-core` |
//! | [`store_suite`] | every behaviour a [`Store`](outbox_core::Store) must have, as one test each |
//! | [`broker_suite`] | every behaviour a [`Broker`](outbox_core::Broker) must have, as one test each |
//!
//! The fixtures read `DATABASE_URL` (default `postgres://postgres@127.0.0.1:5432/test`) and
//! `NATS_URL` (default `nats://127.0.0.1:4222`). When a service does not answer they panic with a
//! message that says what to start. With the `containers` feature, [`TestDatabase`] starts
//! PostgreSQL in a container when `DATABASE_URL` is unset, the default does not answer, and a
//! Docker engine does.
//!
//! # Features
//!
//! | Feature | Default | Enables |
//! |---|---|---|
//! | `containers` | off | PostgreSQL through testcontainers when no database is reachable |
#![deny(missing_docs)]

pub mod broker_suite;
mod check;
mod cleanup;
mod database;
mod faulty;
mod nats;
mod nats_config;
mod postgres_server;
mod received;
mod relay;
pub mod store_suite;
mod tls;

pub use check::{
    assert_exactly_once_in_key_order, assert_nothing_to_claim, assert_published_once_in_key_order,
};
pub use database::{DEFAULT_DATABASE_URL, SchemaGuard, TestDatabase};
pub use faulty::{FaultyBroker, FaultyStore};
pub use nats::{DEFAULT_NATS_URL, NatsServer, TestNats, create_stream};
pub use nats_config::ConfiguredNatsServer;
pub use postgres_server::{PgCluster, PgClusterConfig};
pub use received::Received;
pub use relay::RelayTask;
pub use tls::{CertFiles, TestCa};

/// The in-memory backend of `outbox-core`, re-exported for tests.
pub mod memory {
    pub use outbox_core::memory::*;
}

/// A short unique name part: 32 lowercase hex digits.
pub fn unique_suffix() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}
