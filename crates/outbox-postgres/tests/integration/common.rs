//! Helpers shared by the integration tests: a migrated schema per test, and ways to look inside.

use std::time::Duration;

use outbox_core::Message;
use outbox_postgres::{PgConfig, PgConfigBuilder, PgOutbox, PgStore};
use outbox_testkit::TestDatabase;
use tokio_postgres::Client;

/// A migrated outbox in a fresh schema, and a connection to inspect it.
pub(crate) struct Fixture {
    pub(crate) db: TestDatabase,
    pub(crate) outbox: PgOutbox,
    pub(crate) client: Client,
}

impl Fixture {
    /// A fixture with the default configuration (but its own schema).
    pub(crate) async fn new() -> Fixture {
        Fixture::with(|b| b).await
    }

    /// A fixture whose configuration `tweak` adjusts.
    pub(crate) async fn with(tweak: impl FnOnce(PgConfigBuilder) -> PgConfigBuilder) -> Fixture {
        let db = TestDatabase::new().await;
        let config = tweak(PgConfig::builder().schema(db.schema()))
            .build()
            .expect("config");
        let outbox = PgOutbox::new(config).expect("outbox");
        let client = db.connect().await;
        outbox.migrate(&client).await.expect("migrate");
        Fixture { db, outbox, client }
    }

    /// A new store on this fixture's outbox.
    pub(crate) fn store(&self) -> PgStore {
        PgStore::new(&self.outbox, self.db.pg_config())
    }

    /// Seqs in the outbox, ascending.
    pub(crate) async fn pending(&self) -> Vec<i64> {
        let sql = format!("SELECT seq FROM {}.messages ORDER BY seq", self.db.schema());
        self.client
            .query(&sql, &[])
            .await
            .expect("pending")
            .iter()
            .map(|r| r.get(0))
            .collect()
    }

    /// Waits until the outbox is empty.
    pub(crate) async fn wait_until_empty(&self, timeout: Duration) {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let pending = self.pending().await;
            if pending.is_empty() {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "outbox still holds {} messages",
                pending.len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The backend pids holding this outbox's leadership lock, with their application names.
    pub(crate) async fn lock_holders(&self) -> Vec<(i32, String)> {
        let sql = "\
            SELECT l.pid, a.application_name FROM pg_locks l JOIN pg_stat_activity a USING (pid)
            WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
              AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
              AND ((l.classid::bigint << 32) | l.objid::bigint) = $1";
        self.client
            .query(sql, &[&self.outbox.config().lock_id()])
            .await
            .expect("lock holders")
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect()
    }

    /// Terminates the session holding the leadership lock; returns its pid.
    pub(crate) async fn terminate_leader(&self) -> i32 {
        let holders = self.lock_holders().await;
        assert_eq!(holders.len(), 1, "expected one lock holder: {holders:?}");
        let (pid, name) = &holders[0];
        assert_eq!(name, &format!("outbox-relay {}", self.db.schema()));
        let row = self
            .client
            .query_one("SELECT pg_terminate_backend($1)", &[pid])
            .await
            .expect("terminate");
        assert!(row.get::<_, bool>(0), "backend {pid} not terminated");
        *pid
    }
}

/// A message on `test.subject` with an optional key and payload `n`.
pub(crate) fn message(key: Option<&str>, n: usize) -> Message {
    let builder = Message::builder("test.subject").payload(n.to_string());
    match key {
        Some(key) => builder.key(key),
        None => builder,
    }
    .build()
    .expect("message")
}

/// Awaits `future` for at most `timeout`, panicking with `what` if it takes longer.
pub(crate) async fn within<F: Future>(timeout: Duration, what: &str, future: F) -> F::Output {
    tokio::time::timeout(timeout, future)
        .await
        .unwrap_or_else(|_| panic!("{what} did not happen within {timeout:?}"))
}

/// Asserts that a stored message is the one sent: every field equal, except that PostgreSQL
/// keeps `created_at` to the microsecond.
#[track_caller]
pub(crate) fn assert_same(got: &Message, sent: &Message) {
    assert_eq!(got.id(), sent.id());
    assert_eq!(got.subject(), sent.subject());
    assert_eq!(got.key(), sent.key());
    assert_eq!(got.payload(), sent.payload());
    assert_eq!(got.headers(), sent.headers());
    let drift = sent
        .created_at()
        .duration_since(got.created_at())
        .expect("created_at never moves forward");
    assert!(
        drift < Duration::from_micros(1),
        "created_at off by {drift:?}"
    );
}
