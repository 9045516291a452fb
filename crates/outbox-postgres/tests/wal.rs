//! `EnqueueMode::WalMessage`: messages emitted as WAL records, moved into the table by the
//! leading store through a logical replication slot, published to the real JetStream.
//!
//! The shared server runs with `wal_level = replica`, so the tests that stream WAL start a
//! cluster of their own with `wal_level = logical` (skipped, with the reason, where no server
//! binaries are installed). The refusals are checked against the shared server.

use std::time::Duration;

use outbox_core::{ClaimRequest, Message, RelayConfig, Store};
use outbox_nats::JetStreamPublisher;
use outbox_postgres::{EnqueueMode, Error, PgConfig, PgConnectOptions, PgOutbox, PgStore};
use outbox_testkit::{
    PgCluster, PgClusterConfig, RelayTask, TestDatabase, TestNats, assert_exactly_once_in_key_order,
};
use tokio::time::Instant;

const WAIT: Duration = Duration::from_secs(60);

/// A cluster with `wal_level = logical`, a migrated WAL-mode outbox in it, and a stream.
struct Fixture {
    cluster: PgCluster,
    nats: TestNats,
    outbox: PgOutbox,
    client: tokio_postgres::Client,
}

impl Fixture {
    async fn start(tweak: impl FnOnce(PgConfig) -> PgConfig) -> Option<Fixture> {
        let config = PgClusterConfig::new()
            .setting("wal_level = logical")
            .setting("max_replication_slots = 10")
            .setting("max_wal_senders = 10")
            .hba("host all all 127.0.0.1/32 trust");
        let cluster = match PgCluster::start(config).await {
            Ok(cluster) => cluster,
            Err(reason) => {
                eprintln!("skipping the WAL enqueue test: {reason}");
                return None;
            }
        };
        let mut config = PgConfig::default();
        config.enqueue_mode = EnqueueMode::WalMessage;
        let outbox = PgOutbox::new(tweak(config)).expect("outbox");
        let (client, connection) = tokio_postgres::connect(
            &format!(
                "host=127.0.0.1 port={} user=postgres dbname=postgres",
                cluster.port()
            ),
            tokio_postgres::NoTls,
        )
        .await
        .expect("connect to the test cluster");
        tokio::spawn(connection);
        outbox.migrate(&client).await.expect("migrate");
        client
            .batch_execute(
                "CREATE TABLE orders (id bigserial PRIMARY KEY, customer text NOT NULL, \
                 state text NOT NULL DEFAULT 'new')",
            )
            .await
            .expect("orders");
        Some(Fixture {
            cluster,
            nats: TestNats::new().await,
            outbox,
            client,
        })
    }

    fn db(&self) -> tokio_postgres::Config {
        let mut db = tokio_postgres::Config::new();
        db.host("127.0.0.1")
            .port(self.cluster.port())
            .user("postgres")
            .dbname("postgres");
        db
    }

    /// The cluster over its Unix socket, as the superuser.
    fn socket_db(&self) -> tokio_postgres::Config {
        let mut db = tokio_postgres::Config::new();
        db.host_path(self.cluster.socket_dir())
            .port(self.cluster.port())
            .user("postgres")
            .dbname("postgres");
        db
    }

    /// A relay whose store connects with `db`, its replication stream included.
    fn relay(&self, db: tokio_postgres::Config) -> RelayTask {
        let store = PgStore::new(&self.outbox, db);
        let elector = store.elector();
        RelayTask::start(
            store,
            JetStreamPublisher::new(self.nats.client()),
            elector,
            RelayConfig::default(),
        )
    }

    async fn scalar<T: for<'a> tokio_postgres::types::FromSql<'a>>(&self, sql: &str) -> T {
        self.client
            .query_one(sql, &[])
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
            .get(0)
    }

    /// Waits until the slot has confirmed everything written so far: every committed message
    /// is in the table (or was published and deleted).
    async fn until_slot_caught_up(&self) {
        let slot = self.outbox.config().wal_slot();
        let sql = format!(
            "SELECT confirmed_flush_lsn >= $1 FROM pg_replication_slots WHERE slot_name = '{slot}'"
        );
        let written: tokio_postgres::types::PgLsn =
            self.scalar("SELECT pg_current_wal_lsn()").await;
        let deadline = Instant::now() + WAIT;
        loop {
            let caught_up: bool = self
                .client
                .query_one(&sql, &[&written])
                .await
                .expect("slot position")
                .get(0);
            if caught_up {
                return;
            }
            assert!(Instant::now() < deadline, "the slot never caught up");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// A message on `subject` with `key` and payload `n`.
fn message(subject: &str, key: &str, n: usize) -> Message {
    Message::builder(subject)
        .key(key)
        .payload(format!("{{\"n\":{n}}}"))
        .build()
        .expect("message")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emitted_messages_reach_jetstream_once_in_commit_order_and_rolled_back_ones_never() {
    let Some(mut s) = Fixture::start(|c| c).await else {
        return;
    };
    let mut sent = Vec::new();
    let subject = s.nats.subject("orders");
    let enqueuer = s.outbox.prepare(&s.client).await.expect("prepare");

    // Every way to emit, interleaved over two keys, one transaction each.
    for round in 0..5 {
        let key = |i: usize| format!("customer-{}", (round + i) % 2);
        let tx = s.client.transaction().await.unwrap();
        let one = message(&subject, &key(0), round * 10);
        s.outbox.emit(&tx, &one).await.expect("emit");
        tx.commit().await.unwrap();
        sent.push(one);

        let tx = s.client.transaction().await.unwrap();
        let batch = vec![
            message(&subject, &key(1), round * 10 + 1),
            message(&subject, &key(0), round * 10 + 2),
        ];
        s.outbox.emit_batch(&tx, &batch).await.expect("emit batch");
        tx.commit().await.unwrap();
        sent.extend(batch);

        let tx = s.client.transaction().await.unwrap();
        let prepared = message(&subject, &key(1), round * 10 + 3);
        enqueuer.emit(&tx, &prepared).await.expect("prepared emit");
        tx.commit().await.unwrap();
        sent.push(prepared);

        let tx = s.client.transaction().await.unwrap();
        let joined = message(&subject, &key(0), round * 10 + 4);
        let emitted = s
            .outbox
            .execute_and_emit(
                &tx,
                "INSERT INTO orders (customer) VALUES ($1) RETURNING id",
                &[&key(0)],
                &joined,
            )
            .await
            .expect("execute and emit");
        assert!(emitted);
        let unmatched = message(&subject, &key(0), round * 10 + 5);
        let emitted = enqueuer
            .execute_and_emit(
                &tx,
                "UPDATE orders SET state = 'paid' WHERE id = $1 RETURNING id",
                &[&-1_i64],
                &unmatched,
            )
            .await
            .expect("execute and emit, no row");
        assert!(
            !emitted,
            "an update that matched nothing emitted its message"
        );
        tx.commit().await.unwrap();
        sent.push(joined);

        let tx = s.client.transaction().await.unwrap();
        let rolled_back = message(&subject, &key(1), round * 10 + 6);
        s.outbox.emit(&tx, &rolled_back).await.expect("emit");
        tx.rollback().await.unwrap();
    }
    // Scheduled an hour after its commit: moved into the table, held there.
    let later = Message::builder(s.nats.subject("orders"))
        .key("customer-later")
        .delay(Duration::from_secs(3600))
        .build()
        .unwrap();
    let tx = s.client.transaction().await.unwrap();
    s.outbox.emit(&tx, &later).await.expect("emit scheduled");
    tx.commit().await.unwrap();
    let committed_at: std::time::SystemTime = s.scalar("SELECT now()").await;

    // Over the socket here, over TCP in the next test.
    let relay = s.relay(s.socket_db());
    let got = s.nats.wait_for_stream(sent.len(), WAIT).await;
    s.until_slot_caught_up().await;
    relay.stop().await;
    assert_exactly_once_in_key_order(&sent, &got);

    let held = s
        .client
        .query("SELECT id, delayed, available_at FROM outbox.messages", &[])
        .await
        .unwrap();
    assert_eq!(held.len(), 1, "only the scheduled message is left");
    assert_eq!(held[0].get::<_, uuid::Uuid>(0), later.id());
    assert!(
        held[0].get::<_, bool>(1),
        "the scheduled message is delayed"
    );
    let due: std::time::SystemTime = held[0].get(2);
    let early = committed_at + Duration::from_secs(3600) - Duration::from_secs(5);
    assert!(due >= early, "due {due:?}, committed {committed_at:?}");
    assert!(due <= committed_at + Duration::from_secs(3600) + Duration::from_secs(5));
    let recorded: tokio_postgres::types::PgLsn =
        s.scalar("SELECT lsn FROM outbox.wal_progress").await;
    assert!(u64::from(recorded) > 0, "the ingest recorded its progress");
    let slot = s
        .outbox
        .wal_slot_status(&s.client)
        .await
        .expect("slot status")
        .expect("the slot exists");
    assert_eq!(slot.name, "outbox_outbox");
    assert_eq!(slot.wal_status.as_deref(), Some("reserved"));
    assert!(slot.retained_bytes >= slot.unconfirmed_bytes, "{slot:?}");

    // Retired: the slot and its publication go, and the server keeps no WAL for them.
    s.outbox
        .drop_wal_slot(&s.client)
        .await
        .expect("drop the slot");
    assert_eq!(s.outbox.wal_slot_status(&s.client).await.unwrap(), None);
    let publications: i64 = s.scalar("SELECT count(*) FROM pg_publication").await;
    assert_eq!(publications, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ingest_cut_off_again_and_again_inserts_every_message_once() {
    // Published messages are kept, so a message inserted twice would show there even after
    // JetStream dropped its second publish as a duplicate.
    let Some(mut s) = Fixture::start(|mut c| {
        c.retention = Some(Duration::from_secs(3600));
        c
    })
    .await
    else {
        return;
    };
    let relay = s.relay(s.db());
    let schema = s.outbox.config().schema.clone();
    let killer_db = s.db();
    let killing = tokio::spawn(async move {
        let (client, connection) = killer_db.connect(tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(connection);
        let sql = "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
                   WHERE application_name = $1 OR application_name = $2";
        let ingest = format!("outbox-ingest {schema}");
        let session = format!("outbox-relay {schema}");
        let mut terminated = 0_i64;
        for round in 0..30 {
            tokio::time::sleep(Duration::from_millis(40)).await;
            // Mostly the ingest's connections (stream and inserts); now and then the store's
            // session too, which ends the term and with it the ingest.
            let second = if round % 5 == 4 { &session } else { &ingest };
            let row = client.query_one(sql, &[&ingest, second]).await.unwrap();
            terminated += row.get::<_, i64>(0);
        }
        terminated
    });

    let mut sent = Vec::new();
    let subject = s.nats.subject("orders");
    for t in 0..600 {
        let batch: Vec<Message> = (0..1 + t % 4)
            .map(|i| message(&subject, &format!("key-{}", (t + i) % 13), t * 10 + i))
            .collect();
        let tx = s.client.transaction().await.unwrap();
        s.outbox.emit_batch(&tx, &batch).await.expect("emit");
        tx.commit().await.unwrap();
        sent.extend(batch);
    }
    let terminated = killing.await.unwrap();
    assert!(terminated > 0, "no connection was ever cut off");

    let got = s.nats.wait_for_stream(sent.len(), WAIT).await;
    s.until_slot_caught_up().await;
    relay.stop().await;
    assert_exactly_once_in_key_order(&sent, &got);
    let (rows, ids): (i64, i64) = {
        let row = s
            .client
            .query_one(
                "SELECT count(*), count(DISTINCT id) FROM outbox.published",
                &[],
            )
            .await
            .unwrap();
        (row.get(0), row.get(1))
    };
    assert_eq!(ids, sent.len() as i64, "every message was published");
    assert_eq!(rows, ids, "a message was inserted into the table twice");
    let left: i64 = s.scalar("SELECT count(*) FROM outbox.messages").await;
    assert_eq!(left, 0);
}

#[tokio::test]
async fn wal_mode_refuses_what_would_lose_or_reorder_messages() {
    let db = TestDatabase::new().await;
    let mut client = db.connect().await;
    let level: String = client
        .query_one("SHOW wal_level", &[])
        .await
        .unwrap()
        .get(0);
    let wal = PgOutbox::new(
        PgConfig::builder()
            .schema(db.schema())
            .enqueue_mode(EnqueueMode::WalMessage)
            .build()
            .unwrap(),
    )
    .unwrap();
    let migrated = wal.migrate(&client).await;
    if level == "logical" {
        migrated.expect("migrate");
        wal.drop_wal_slot(&client).await.expect("drop the slot");
    } else {
        let error = migrated.expect_err("migrate on a server without logical WAL");
        assert!(matches!(error, Error::Config(_)), "{error}");
        assert!(error.to_string().contains("wal_level = logical"), "{error}");
        // Refused before anything was applied.
        let version = wal.schema_version(&client).await.expect("schema version");
        assert_eq!(version, None, "the refused migration applied something");
        PgOutbox::new(PgConfig::builder().schema(db.schema()).build().unwrap())
            .unwrap()
            .migrate(&client)
            .await
            .expect("migrate in the insert mode");
    }

    // Without the slot, no connection may start emitting.
    let error = wal
        .prepare(&client)
        .await
        .expect_err("prepare without a slot");
    assert!(error.to_string().contains("does not exist"), "{error}");

    let message = Message::builder("orders.created").build().unwrap();
    let tx = client.transaction().await.unwrap();
    let error = wal
        .enqueue(&tx, &message)
        .await
        .expect_err("enqueue in WAL mode");
    assert!(matches!(error, Error::Config(_)), "{error}");
    let error = wal
        .enqueue_batch(&tx, std::slice::from_ref(&message))
        .await
        .expect_err("enqueue_batch in WAL mode");
    assert!(matches!(error, Error::Config(_)), "{error}");
    // Refused before anything was sent: the transaction is still usable.
    tx.execute("SELECT 1", &[])
        .await
        .expect("transaction still usable");
    tx.rollback().await.unwrap();

    // The replication stream has no TLS: a store told to require it says so at its first claim.
    let url = format!("{}?sslmode=require", db.url().split('?').next().unwrap());
    let options: PgConnectOptions = url.parse().expect("options");
    let store = PgStore::with_connect_options(&wal, &options);
    let error = store
        .claim(ClaimRequest::new(10, &[]))
        .await
        .expect_err("a WAL-mode claim over TLS");
    assert!(error.to_string().contains("without TLS"), "{error}");

    let insert = PgOutbox::new(PgConfig::builder().schema(db.schema()).build().unwrap()).unwrap();
    let error = insert
        .emit(&client, &message)
        .await
        .expect_err("emit in insert mode");
    assert!(matches!(error, Error::Config(_)), "{error}");
    assert!(
        error.to_string().contains("EnqueueMode::WalMessage"),
        "{error}"
    );
}
