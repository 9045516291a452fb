//! A property test of the relay over the in-memory store and a faulty in-memory broker: random
//! interleavings of transactions (begin, enqueue, commit, rollback), broker faults (random
//! failures, transient and permanent failures on command, an unreachable broker, lost
//! acknowledgements), relay crashes and restarts, and time passing.
//!
//! Once the faults stop and the relay has run until the outbox is empty:
//!
//! - every committed message was published or dead-lettered;
//! - nothing rolled back, and nothing never enqueued, was published;
//! - the broker saw each message id once (it deduplicates, as JetStream does);
//! - per key, published messages are in enqueue order (a dead-lettered message lets the later
//!   messages of its key pass, but never reorders them);
//! - a message is both published and dead-lettered only if the relay crashed or an
//!   acknowledgement was lost (the broker had it, the relay could not know).
//!
//! The application serializes the writers of a key, as DESIGN.md asks (an order locks its
//! customer's row): a transaction that would write a key another open transaction has written
//! skips that write, as if it waited for the row lock.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use outbox_core::{CancellationToken, Message, Relay, RelayConfig, Standalone};
use outbox_testkit::FaultyBroker;
use outbox_testkit::memory::{MemoryBroker, MemoryStore, MemoryTransaction};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError};
use uuid::Uuid;

/// Ordering keys; `None` is a message without a key.
const KEYS: [Option<&str>; 5] = [Some("a"), Some("b"), Some("c"), Some("d"), None];
/// Most transactions open at once.
const MAX_OPEN: usize = 3;
/// How long the relay may take to empty the outbox once the faults stopped.
const QUIESCENCE: Duration = Duration::from_secs(10);

#[derive(Clone, Debug)]
enum Op {
    /// Opens a transaction.
    Begin,
    /// Enqueues a message with `KEYS[key]` in the open transaction `tx` (modulo their number;
    /// opens one if none is open).
    Enqueue {
        tx: usize,
        key: usize,
    },
    /// Commits `n` messages with `KEYS[key]`, each in a transaction of its own.
    Burst {
        key: usize,
        n: usize,
    },
    Commit {
        tx: usize,
    },
    Rollback {
        tx: usize,
    },
    /// From now on, this many tenths of the publishes fail with a transient error.
    FailRatio(u8),
    /// The next `n` publishes fail.
    FailNext {
        n: usize,
        transient: bool,
    },
    /// The broker is unreachable, or reachable again.
    Down(bool),
    /// Messages are published but their acknowledgements are lost.
    LoseAcks(bool),
    /// The relay task is aborted mid-flight and a new relay started.
    Crash,
    /// Time passes.
    Run {
        ms: u64,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => Just(Op::Begin),
        10 => (0..MAX_OPEN, 0..KEYS.len()).prop_map(|(tx, key)| Op::Enqueue { tx, key }),
        3 => (0..KEYS.len(), 1..8usize).prop_map(|(key, n)| Op::Burst { key, n }),
        4 => (0..MAX_OPEN).prop_map(|tx| Op::Commit { tx }),
        1 => (0..MAX_OPEN).prop_map(|tx| Op::Rollback { tx }),
        1 => (0..=5u8).prop_map(Op::FailRatio),
        1 => (1..4usize, any::<bool>()).prop_map(|(n, transient)| Op::FailNext { n, transient }),
        1 => any::<bool>().prop_map(Op::Down),
        1 => any::<bool>().prop_map(Op::LoseAcks),
        1 => Just(Op::Crash),
        3 => (0..5u64).prop_map(|ms| Op::Run { ms }),
    ]
}

/// A case: its operations, with crashes and lost acknowledgements in about half of the cases
/// only, so that "never both published and dead-lettered" is checked often.
fn case() -> impl Strategy<Value = Vec<Op>> {
    (any::<bool>(), prop::collection::vec(op(), 1..100)).prop_map(|(chaos, ops)| {
        ops.into_iter()
            .filter(|op| chaos || !matches!(op, Op::Crash | Op::LoseAcks(_)))
            .collect()
    })
}

fn relay_config() -> RelayConfig {
    // A narrow window (messages queue behind their key), fast retries and few attempts, so that
    // dead letters by exhaustion happen too.
    RelayConfig::builder()
        .batch_size(4)
        .max_in_flight(8)
        .poll_interval(Duration::from_millis(1))
        .retry_base(Duration::from_millis(1))
        .retry_max(Duration::from_millis(8))
        .reconnect_base(Duration::from_millis(1))
        .reconnect_max(Duration::from_millis(8))
        .max_attempts(4)
        .build()
        .expect("valid relay configuration")
}

struct RunningRelay {
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

fn start(store: &MemoryStore, broker: &FaultyBroker<MemoryBroker>) -> RunningRelay {
    let relay =
        Relay::new(store.clone(), broker.clone(), Standalone, relay_config()).expect("valid relay");
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(relay.run(shutdown.clone()));
    RunningRelay { shutdown, task }
}

struct OpenTx {
    tx: MemoryTransaction,
    keys: HashSet<&'static str>,
    messages: Vec<(i64, Message)>,
}

/// What the test did, to check the outcome against.
#[derive(Default)]
struct Model {
    open: Vec<OpenTx>,
    /// Seq of every committed message, by id.
    committed: HashMap<Uuid, i64>,
    rolled_back: HashSet<Uuid>,
    /// A crash or a lost acknowledgement happened: a message may then be published and later
    /// dead-lettered by a failure of its republish.
    republished: bool,
    next: usize,
}

impl Model {
    fn begin(&mut self, store: &MemoryStore) {
        self.open.push(OpenTx {
            tx: store.begin(),
            keys: HashSet::new(),
            messages: Vec::new(),
        });
    }

    /// A new message with `key`; its payload numbers it.
    fn message(&mut self, key: Option<&str>) -> Message {
        let mut builder = Message::builder("prop.relay").payload(self.next.to_string());
        self.next += 1;
        if let Some(k) = key {
            builder = builder.key(k);
        }
        builder.build().expect("valid message")
    }

    fn finish(&mut self, index: usize, commit: bool) {
        let open = self.open.remove(index);
        if commit {
            open.tx.commit();
            self.committed
                .extend(open.messages.iter().map(|(seq, m)| (m.id(), *seq)));
        } else {
            open.tx.rollback();
            self.rolled_back
                .extend(open.messages.iter().map(|(_, m)| m.id()));
        }
    }
}

async fn run_case(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let store = MemoryStore::new();
    let broker = FaultyBroker::new(MemoryBroker::new());
    let mut relay = start(&store, &broker);
    let mut model = Model::default();

    for op in ops {
        match op {
            Op::Begin if model.open.len() < MAX_OPEN => model.begin(&store),
            Op::Begin => {}
            Op::Enqueue { tx, key } => {
                if model.open.is_empty() {
                    model.begin(&store);
                }
                let index = tx % model.open.len();
                let key = KEYS[key];
                let locked = key.is_some_and(|k| {
                    model
                        .open
                        .iter()
                        .enumerate()
                        .any(|(i, o)| i != index && o.keys.contains(k))
                });
                if locked {
                    continue;
                }
                let message = model.message(key);
                let open = &mut model.open[index];
                let seq = open.tx.enqueue(message.clone());
                open.messages.push((seq, message));
                open.keys.extend(key);
            }
            Op::Burst { key, n } => {
                let key = KEYS[key];
                // Committed at once, so only while no open transaction holds the key.
                if key.is_some_and(|k| model.open.iter().any(|o| o.keys.contains(k))) {
                    continue;
                }
                for _ in 0..n {
                    let message = model.message(key);
                    let seq = store.enqueue(message.clone());
                    model.committed.insert(message.id(), seq);
                }
            }
            Op::Commit { tx } if !model.open.is_empty() => {
                let index = tx % model.open.len();
                model.finish(index, true);
            }
            Op::Rollback { tx } if !model.open.is_empty() => {
                let index = tx % model.open.len();
                model.finish(index, false);
            }
            Op::Commit { .. } | Op::Rollback { .. } => {}
            Op::FailRatio(tenths) => broker.fail_ratio(f64::from(tenths) / 10.0),
            Op::FailNext { n, transient } => broker.fail_next(n, transient),
            Op::Down(down) => broker.set_down(down),
            Op::LoseAcks(lose) => {
                model.republished |= lose;
                broker.lose_acks(lose);
            }
            Op::Crash => {
                relay.task.abort();
                let _ = relay.task.await;
                model.republished = true;
                relay = start(&store, &broker);
            }
            Op::Run { ms } => tokio::time::sleep(Duration::from_millis(ms)).await,
        }
    }

    // Transactions still open roll back, the faults stop, and the relay empties the outbox.
    while !model.open.is_empty() {
        model.finish(0, false);
    }
    broker.fail_ratio(0.0);
    broker.fail_next(0, true);
    broker.set_down(false);
    broker.lose_acks(false);
    let quiet = tokio::time::timeout(QUIESCENCE, async {
        while store.pending_len() > 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await;
    prop_assert!(
        quiet.is_ok(),
        "still pending after {QUIESCENCE:?}: {:?}",
        store.pending()
    );
    relay.shutdown.cancel();
    relay.task.await.expect("the relay stops");

    let published = broker.inner().published();
    let published_ids: HashSet<Uuid> = published.iter().map(Message::id).collect();
    let dead: HashSet<Uuid> = store
        .dead_letters()
        .iter()
        .map(|d| d.message.id())
        .collect();
    prop_assert_eq!(
        published_ids.len(),
        published.len(),
        "an id published twice"
    );
    for id in &published_ids {
        prop_assert!(
            model.committed.contains_key(id),
            "published but never committed: {} (rolled back: {})",
            id,
            model.rolled_back.contains(id)
        );
    }
    for id in &dead {
        prop_assert!(
            model.committed.contains_key(id),
            "dead letter {} unknown",
            id
        );
    }
    for id in model.committed.keys() {
        prop_assert!(
            published_ids.contains(id) || dead.contains(id),
            "committed but neither published nor dead-lettered: {}",
            id
        );
    }
    if !model.republished {
        prop_assert!(
            published_ids.is_disjoint(&dead),
            "published and dead-lettered without a crash or a lost ack"
        );
    }
    let mut last: HashMap<&str, i64> = HashMap::new();
    for message in &published {
        let Some(key) = message.key() else { continue };
        let seq = model.committed[&message.id()];
        if let Some(previous) = last.insert(key, seq) {
            prop_assert!(
                previous < seq,
                "key {}: seq {} published after seq {}",
                key,
                seq,
                previous
            );
        }
    }
    prop_assert_eq!(store.pending_len(), 0);
    Ok(())
}

proptest! {
    #![proptest_config(Config {
        cases: 64,
        // Cases run in real time with random broker failures, so a failing case does not
        // replay deterministically: keep no regression file, report the case instead.
        failure_persistence: None,
        max_shrink_iters: 256,
        ..Config::default()
    })]

    #[test]
    fn committed_messages_are_published_or_dead_lettered_in_key_order(
        ops in case()
    ) {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_time()
            .build()
            .expect("a runtime");
        runtime.block_on(run_case(ops))?;
    }
}
