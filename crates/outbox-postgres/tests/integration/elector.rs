use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use outbox_core::memory::MemoryBroker;
use outbox_core::{
    Broker, CancellationToken, ClaimRequest, Elector, Error as CoreError, Message, PendingAck,
    Relay, RelayConfig, Store,
};
use tokio::sync::watch;

use crate::common::{Fixture, message, within};

async fn claim_error<S: Store>(store: &S) -> CoreError {
    store
        .claim(ClaimRequest::new(10, &[]))
        .await
        .expect_err("claim should be refused")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_one_elector_leads_and_a_standby_takes_over_on_resign() {
    let f = Fixture::new().await;
    let (a, b) = (f.store(), f.store());
    let (elector_a, elector_b) = (a.elector(), b.elector());

    let leadership_a = within(
        Duration::from_secs(5),
        "first campaign",
        elector_a.campaign(),
    )
    .await
    .unwrap();
    let mut campaign_b = tokio::spawn(async move { elector_b.campaign().await });
    // B keeps trying (every 500 ms) but must not win while A holds the lock.
    assert!(
        tokio::time::timeout(Duration::from_millis(1500), &mut campaign_b)
            .await
            .is_err(),
        "second elector won while the first leads"
    );
    assert!(a.is_leading() && !b.is_leading());
    assert_eq!(f.lock_holders().await.len(), 1);
    a.claim(ClaimRequest::new(10, &[])).await.unwrap();
    assert!(matches!(claim_error(&b).await, CoreError::NotLeader));

    drop(leadership_a);
    let leadership_b = within(Duration::from_secs(2), "takeover", campaign_b)
        .await
        .unwrap()
        .unwrap();
    assert!(!leadership_b.is_lost());
    assert!(b.is_leading() && !a.is_leading());
    b.claim(ClaimRequest::new(10, &[])).await.unwrap();
    assert!(matches!(claim_error(&a).await, CoreError::NotLeader));
    let holders = f.lock_holders().await;
    assert_eq!(holders.len(), 1, "{holders:?}");
}

#[tokio::test]
async fn a_store_with_an_elector_refuses_work_until_it_leads() {
    let f = Fixture::new().await;
    let store = f.store();
    store.claim(ClaimRequest::new(10, &[])).await.unwrap();
    let elector = store.elector();
    assert!(matches!(claim_error(&store).await, CoreError::NotLeader));
    assert!(matches!(
        store.complete(&[1]).await.unwrap_err(),
        CoreError::NotLeader
    ));
    let leadership = elector.campaign().await.unwrap();
    store.claim(ClaimRequest::new(10, &[])).await.unwrap();
    drop(leadership);
    assert!(matches!(claim_error(&store).await, CoreError::NotLeader));
}

/// A leader counts its backlog on a connection of its own, beside the session its claims run
/// on; the connection closes when the term ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_backlog_is_counted_beside_the_leader_session_while_leading() {
    let f = Fixture::new().await;
    let store = f.store();
    let elector = store.elector();
    assert!(matches!(
        store.backlog().await.unwrap_err(),
        CoreError::NotLeader
    ));
    let leadership = elector.campaign().await.unwrap();
    f.outbox
        .enqueue(&f.client, &message(Some("a"), 1))
        .await
        .unwrap();
    assert_eq!(store.backlog().await.unwrap().unwrap().pending, 1);
    let stats = format!("outbox-stats {}", f.db.schema());
    let connections = || async {
        f.client
            .query(
                "SELECT pid FROM pg_stat_activity WHERE application_name = $1",
                &[&stats],
            )
            .await
            .unwrap()
            .iter()
            .map(|row| row.get::<_, i32>(0))
            .collect::<Vec<_>>()
    };
    let counting = connections().await;
    assert_eq!(counting.len(), 1, "{counting:?}");
    let holders = f.lock_holders().await;
    assert!(holders.iter().all(|(pid, _)| *pid != counting[0]));

    drop(leadership);
    within(
        Duration::from_secs(5),
        "the backlog connection to close",
        async {
            while !connections().await.is_empty() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn campaigning_right_after_resigning_starts_a_clean_term() {
    let f = Fixture::new().await;
    let store = f.store();
    let elector = store.elector();
    let mut pids = Vec::new();
    for _ in 0..3 {
        let leadership = within(Duration::from_secs(5), "campaign", elector.campaign())
            .await
            .unwrap();
        let holders = f.lock_holders().await;
        assert_eq!(holders.len(), 1, "{holders:?}");
        pids.push(holders[0].0);
        drop(leadership);
    }
    pids.dedup();
    assert_eq!(pids.len(), 3, "each term runs on a session of its own");

    let leadership = elector.campaign().await.unwrap();
    // Several leadership checks pass without a loss.
    assert!(
        tokio::time::timeout(Duration::from_millis(800), leadership.lost())
            .await
            .is_err(),
        "a fresh term was lost"
    );
    store.claim(ClaimRequest::new(10, &[])).await.unwrap();
}

#[tokio::test]
async fn the_lock_check_recognises_negative_and_positive_lock_ids() {
    let schema_id = |f: &Fixture| outbox_postgres::PgConfig::default_lock_id(f.db.schema());
    for negative in [true, false] {
        let probe = Fixture::new().await;
        let id = if negative {
            schema_id(&probe) | i64::MIN
        } else {
            schema_id(&probe) & i64::MAX
        };
        drop(probe);
        let f = Fixture::with(|b| b.lock_id(id).check_interval(Duration::from_millis(20))).await;
        let store = f.store();
        let leadership = store.elector().campaign().await.unwrap();
        assert_eq!(f.lock_holders().await.len(), 1, "lock id {id}");
        // Many checks run meanwhile; a check that misread the key would report a loss.
        assert!(
            tokio::time::timeout(Duration::from_millis(300), leadership.lost())
                .await
                .is_err(),
            "lock id {id}: leadership lost"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminated_leader_session_loses_leadership_at_once() {
    let f = Fixture::new().await;
    let store = f.store();
    let elector = store.elector();
    let leadership = elector.campaign().await.unwrap();
    f.outbox
        .enqueue(&f.client, &message(None, 1))
        .await
        .unwrap();
    assert_eq!(
        store.claim(ClaimRequest::new(10, &[])).await.unwrap().len(),
        1
    );

    let old_pid = f.terminate_leader().await;
    within(Duration::from_secs(2), "leadership loss", leadership.lost()).await;
    assert!(matches!(claim_error(&store).await, CoreError::NotLeader));
    assert!(!store.is_leading());
    drop(leadership);

    let again = within(Duration::from_secs(5), "new campaign", elector.campaign())
        .await
        .unwrap();
    let holders = f.lock_holders().await;
    assert_eq!(holders.len(), 1);
    assert_ne!(holders[0].0, old_pid, "a new session holds the lock");
    assert_eq!(
        store.claim(ClaimRequest::new(10, &[])).await.unwrap().len(),
        1
    );
    drop(again);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relays_lose_nothing_when_their_sessions_are_terminated() {
    const N: usize = 3000;
    let f = Fixture::new().await;
    let messages: Vec<_> = (0..N)
        .map(|n| message((n % 10 != 0).then(|| ["a", "b", "c", "d"][n % 4]), n))
        .collect();
    for chunk in messages.chunks(500) {
        f.outbox.enqueue_batch(&f.client, chunk).await.unwrap();
    }

    // Two instances race for leadership. The gate holds publishes, so each termination happens
    // while the leader has work in hand.
    let memory = MemoryBroker::new();
    let broker = GatedBroker::new(memory.clone());
    let config = RelayConfig::builder()
        .batch_size(16)
        .max_in_flight(32)
        .build()
        .unwrap();
    let shutdown = CancellationToken::new();
    let mut tasks = Vec::new();
    for _ in 0..2 {
        let store = f.store();
        let relay = Relay::new(
            store.clone(),
            broker.clone(),
            store.elector(),
            config.clone(),
        )
        .unwrap();
        tasks.push(tokio::spawn(relay.run(shutdown.clone())));
    }

    for part in [N / 4, N / 2] {
        within(Duration::from_secs(30), "progress", memory.wait_for(part)).await;
        broker.set_open(false);
        f.terminate_leader().await;
        assert!(memory.published().len() < N, "terminated before the end");
        broker.set_open(true);
    }
    within(Duration::from_secs(60), "all published", memory.wait_for(N)).await;
    f.wait_until_empty(Duration::from_secs(10)).await;
    shutdown.cancel();
    for task in tasks {
        within(Duration::from_secs(15), "relay shutdown", task)
            .await
            .unwrap();
    }

    let published = memory.published();
    assert_eq!(
        published.len(),
        N,
        "every message published once (dedup by id)"
    );
    let position: HashMap<_, _> = messages
        .iter()
        .enumerate()
        .map(|(i, m)| (m.id(), i))
        .collect();
    let mut last: HashMap<&str, usize> = HashMap::new();
    for m in &published {
        if let Some(key) = m.key()
            && let Some(previous) = last.insert(key, position[&m.id()])
        {
            assert!(previous < position[&m.id()], "key {key} out of order");
        }
    }
    assert!(
        f.outbox
            .dead_letters(&f.client, 10, 0)
            .await
            .unwrap()
            .is_empty()
    );
}

/// A broker whose publishes wait while the gate is closed.
#[derive(Clone, Debug)]
struct GatedBroker {
    inner: MemoryBroker,
    open: std::sync::Arc<watch::Sender<bool>>,
}

impl GatedBroker {
    fn new(inner: MemoryBroker) -> Self {
        Self {
            inner,
            open: std::sync::Arc::new(watch::Sender::new(true)),
        }
    }

    fn set_open(&self, open: bool) {
        self.open.send_replace(open);
    }
}

#[async_trait]
impl Broker for GatedBroker {
    async fn publish(&self, message: &Message) -> Result<PendingAck, CoreError> {
        let mut open = self.open.subscribe();
        open.wait_for(|open| *open)
            .await
            .map_err(CoreError::broker_transient)?;
        self.inner.publish(message).await
    }
}
