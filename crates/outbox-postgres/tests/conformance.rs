//! The testkit's store conformance suite against PostgreSQL, three times: a store without an
//! elector (single relay), a store whose elector holds the leadership lock, and a store woken by
//! `LISTEN`/`NOTIFY`.

use async_trait::async_trait;
use outbox_core::{Elector, Leadership, Message};
use outbox_postgres::{PgConfig, PgOutbox, PgStore, WakeUp};
use outbox_testkit::TestDatabase;
use outbox_testkit::store_suite::StoreHarness;
use tokio::sync::Mutex;
use tokio_postgres::Client;
use uuid::Uuid;

struct PgHarness {
    // Dropped last: the schema goes only after the store and client are done.
    outbox: PgOutbox,
    store: PgStore,
    client: Mutex<Client>,
    _leadership: Option<Leadership>,
    db: TestDatabase,
}

async fn harness(elected: bool, wake_up: WakeUp) -> PgHarness {
    let db = TestDatabase::new().await;
    let config = PgConfig::builder()
        .schema(db.schema())
        .wake_up(wake_up)
        .build()
        .expect("config");
    let outbox = PgOutbox::new(config).expect("outbox");
    let client = db.connect().await;
    outbox.migrate(&client).await.expect("migrate");
    let store = PgStore::new(&outbox, db.pg_config());
    let leadership = if elected {
        Some(store.elector().campaign().await.expect("campaign"))
    } else {
        None
    };
    PgHarness {
        outbox,
        store,
        client: Mutex::new(client),
        _leadership: leadership,
        db,
    }
}

#[async_trait]
impl StoreHarness for PgHarness {
    type Store = PgStore;

    fn store(&self) -> PgStore {
        self.store.clone()
    }

    async fn enqueue(&self, messages: &[Message]) -> Vec<i64> {
        let client = self.client.lock().await;
        let mut seqs = Vec::with_capacity(messages.len());
        for message in messages {
            // Outside an explicit transaction each statement commits on its own.
            seqs.push(
                self.outbox
                    .enqueue(&*client, message)
                    .await
                    .expect("enqueue"),
            );
        }
        seqs
    }

    async fn enqueue_rolled_back(&self, messages: &[Message]) {
        let mut client = self.client.lock().await;
        let tx = client.transaction().await.expect("begin");
        self.outbox
            .enqueue_batch(&tx, messages)
            .await
            .expect("enqueue");
        tx.rollback().await.expect("rollback");
    }

    async fn pending(&self) -> Vec<i64> {
        let sql = format!("SELECT seq FROM {}.messages ORDER BY seq", self.db.schema());
        let client = self.client.lock().await;
        client
            .query(&sql, &[])
            .await
            .expect("pending")
            .iter()
            .map(|row| row.get(0))
            .collect()
    }

    async fn dead_letters(&self) -> Vec<(Uuid, String)> {
        let client = self.client.lock().await;
        self.outbox
            .dead_letters(&*client, 1000, 0)
            .await
            .expect("dead letters")
            .into_iter()
            .map(|d| (d.message.id(), d.error))
            .collect()
    }
}

mod standalone {
    async fn harness() -> super::PgHarness {
        super::harness(false, outbox_postgres::WakeUp::Poll).await
    }

    outbox_testkit::store_conformance!(harness);
}

mod elected {
    async fn harness() -> super::PgHarness {
        super::harness(true, outbox_postgres::WakeUp::Poll).await
    }

    outbox_testkit::store_conformance!(harness);
}

mod listen {
    async fn harness() -> super::PgHarness {
        super::harness(false, outbox_postgres::WakeUp::Listen).await
    }

    outbox_testkit::store_conformance!(harness);
}
