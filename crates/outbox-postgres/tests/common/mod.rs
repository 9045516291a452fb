//! The fixture shared by the end-to-end and failure tests: a fresh schema, a fresh stream,
//! and the helpers that read them.
#![allow(dead_code, unreachable_pub)] // each test file uses a different part

use std::time::Duration;

use outbox_core::Message;
use outbox_nats::JetStreamPublisher;
use outbox_postgres::{PgConfig, PgConfigBuilder, PgOutbox, PgStore};
use outbox_testkit::{TestDatabase, TestNats, assert_exactly_once_in_key_order};
use tokio::time::Instant;

/// Upper bound of every wait: generous for a loaded CI machine, reached only by a failing test.
pub const WAIT: Duration = Duration::from_secs(60);

pub struct Fixture {
    pub db: TestDatabase,
    pub nats: TestNats,
    pub outbox: PgOutbox,
    pub client: tokio_postgres::Client,
}

impl Fixture {
    pub async fn new() -> Self {
        Self::with(TestNats::new().await, |b| b).await
    }

    pub async fn with(
        nats: TestNats,
        tweak: impl FnOnce(PgConfigBuilder) -> PgConfigBuilder,
    ) -> Self {
        let db = TestDatabase::new().await;
        let config = tweak(PgConfig::builder().schema(db.schema()))
            .build()
            .unwrap();
        let outbox = PgOutbox::new(config).unwrap();
        let client = db.connect().await;
        outbox.migrate(&client).await.unwrap();
        Fixture {
            db,
            nats,
            outbox,
            client,
        }
    }

    pub fn message(&self, key: &str, n: usize) -> Message {
        Message::builder(self.nats.subject("orders"))
            .key(key)
            .json(&serde_json::json!({ "key": key, "n": n }))
            .unwrap()
            .build()
            .unwrap()
    }

    /// `n` messages over `keys` keys (`key-0` …), enqueued in committed batches of 500.
    pub async fn enqueue_many(&mut self, n: usize, keys: usize) -> Vec<Message> {
        let sent: Vec<Message> = (0..n)
            .map(|i| self.message(&format!("key-{}", i % keys), i))
            .collect();
        self.enqueue(&sent).await;
        sent
    }

    pub async fn enqueue(&mut self, messages: &[Message]) {
        for chunk in messages.chunks(500) {
            let tx = self.client.transaction().await.unwrap();
            self.outbox.enqueue_batch(&tx, chunk).await.unwrap();
            tx.commit().await.unwrap();
        }
    }

    pub fn store(&self) -> PgStore {
        PgStore::new(&self.outbox, self.db.pg_config())
    }

    pub fn publisher(&self) -> JetStreamPublisher {
        JetStreamPublisher::new(self.nats.client())
    }

    pub fn sql(&self, template: &str) -> String {
        template.replace("{schema}", self.db.schema())
    }

    pub async fn scalar(&self, template: &str) -> i64 {
        let sql = self.sql(template);
        self.client
            .query_one(&sql, &[])
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
            .get(0)
    }

    pub async fn pending(&self) -> i64 {
        self.scalar("SELECT count(*) FROM {schema}.messages").await
    }

    pub async fn dead_letters(&self) -> i64 {
        self.scalar("SELECT count(*) FROM {schema}.dead_letters")
            .await
    }

    /// Waits until the outbox is empty.
    pub async fn until_empty(&self) {
        let deadline = Instant::now() + WAIT;
        loop {
            let pending = self.pending().await;
            if pending == 0 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{pending} messages still pending"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until the stream holds at least `n` messages. Read errors (a broker coming back)
    /// count as "not yet".
    pub async fn until_stream_has(&self, n: u64) -> u64 {
        let deadline = Instant::now() + WAIT;
        loop {
            let len = stream_len(&self.nats).await.unwrap_or(0);
            if len >= n {
                return len;
            }
            assert!(
                Instant::now() < deadline,
                "the stream holds {len} of {n} messages"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The stream holds exactly the messages `sent`, each once, in order per key.
    pub async fn assert_stream_holds(&self, sent: &[Message]) {
        let got = self.nats.wait_for_stream(sent.len(), WAIT).await;
        assert_exactly_once_in_key_order(sent, &got);
    }
}

/// The number of messages in the fixture's stream, or `None` while the server does not answer.
pub async fn stream_len(nats: &TestNats) -> Option<u64> {
    let mut stream = nats.jetstream().get_stream(nats.stream_name()).await.ok()?;
    Some(stream.info().await.ok()?.state.messages)
}
