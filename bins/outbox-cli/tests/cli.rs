//! The `outbox` binary against the real PostgreSQL (`DATABASE_URL`), each test in a schema of its
//! own. Commands run with stdin closed, so they never find a terminal to ask on.

use std::process::Stdio;
use std::time::{Duration, SystemTime};

use outbox_core::{Elector, Failure, FailureAction, Message, Store};
use outbox_postgres::{PgConfig, PgOutbox, PgStore};
use outbox_testkit::TestDatabase;
use serde_json::Value;
use uuid::Uuid;

const OUTBOX: &str = env!("CARGO_BIN_EXE_outbox");

/// What one run of the binary did.
#[derive(Debug)]
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Run {
    /// Asserts exit 0 and parses stdout as one JSON document.
    #[track_caller]
    fn json(&self) -> Value {
        assert_eq!(self.code, Some(0), "{self:?}");
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("{e}: {self:?}"))
    }

    /// Asserts exit 0 and returns stdout.
    #[track_caller]
    fn text(&self) -> &str {
        assert_eq!(self.code, Some(0), "{self:?}");
        &self.stdout
    }

    /// Asserts the exit code and a single line on stderr holding `needle`.
    #[track_caller]
    fn fails(&self, code: i32, needle: &str) {
        assert_eq!(self.code, Some(code), "{self:?}");
        assert_eq!(self.stderr.trim().lines().count(), 1, "{self:?}");
        assert!(self.stderr.contains(needle), "{needle:?} not in {self:?}");
    }
}

/// Runs `outbox ARGS` with stdin closed and the environment's DATABASE_URL removed.
async fn run_raw(args: &[&str]) -> Run {
    let output = tokio::process::Command::new(OUTBOX)
        .args(args)
        .env_remove("DATABASE_URL")
        .stdin(Stdio::null())
        .output()
        .await
        .expect("the binary runs");
    Run {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// A schema of its own, migrated, and the library's view of it.
struct Fixture {
    db: TestDatabase,
    outbox: PgOutbox,
    client: tokio_postgres::Client,
}

impl Fixture {
    /// A fresh schema; migrated unless `migrated` is false.
    async fn new(migrated: bool) -> Fixture {
        let db = TestDatabase::new().await;
        let config = PgConfig::builder().schema(db.schema()).build().unwrap();
        let outbox = PgOutbox::new(config).unwrap();
        let client = db.connect().await;
        if migrated {
            outbox.migrate(&client).await.unwrap();
        }
        Fixture { db, outbox, client }
    }

    /// Runs `outbox --database-url <test db> --schema <this schema> ARGS`.
    async fn run(&self, args: &[&str]) -> Run {
        let mut all = vec![
            "--database-url",
            self.db.url(),
            "--schema",
            self.db.schema(),
        ];
        all.extend_from_slice(args);
        run_raw(&all).await
    }

    fn store(&self) -> PgStore {
        PgStore::new(&self.outbox, self.db.pg_config())
    }

    /// Enqueues `messages` and dead-letters them all through the store; returns their seqs.
    async fn dead_letters(&self, messages: &[Message]) -> Vec<i64> {
        let seqs = self
            .outbox
            .enqueue_batch(&self.client, messages)
            .await
            .unwrap();
        let failures: Vec<Failure> = seqs
            .iter()
            .map(|&seq| Failure {
                seq,
                error: format!("rejected {seq}"),
                action: FailureAction::DeadLetter,
            })
            .collect();
        self.store().fail(&failures).await.unwrap();
        seqs
    }

    async fn count(&self, table: &str) -> i64 {
        let sql = format!("SELECT count(*) FROM {}.{table}", self.db.schema());
        self.client.query_one(&sql, &[]).await.unwrap().get(0)
    }

    /// Message ids in the outbox, in seq order, with their attempts.
    async fn outbox_ids(&self) -> Vec<(Uuid, i32)> {
        let sql = format!(
            "SELECT id, attempts FROM {}.messages ORDER BY seq",
            self.db.schema()
        );
        self.client
            .query(&sql, &[])
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect()
    }
}

fn message(subject: &str, key: Option<&str>) -> Message {
    let builder = Message::builder(subject).payload("{\"n\":1}");
    match key {
        Some(key) => builder.key(key),
        None => builder,
    }
    .build()
    .unwrap()
}

fn ids(value: &Value) -> Vec<String> {
    value["dead_letters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn migrate_applies_the_embedded_migrations_once() {
    let f = Fixture::new(false).await;
    let first = f.run(&["migrate", "--json"]).await.json();
    assert_eq!(first["schema"], f.db.schema());
    let all: Vec<i32> = (1..=PgOutbox::SCHEMA_VERSION).collect();
    assert_eq!(first["applied"], serde_json::json!(all));
    assert_eq!(first["version"], PgOutbox::SCHEMA_VERSION);
    assert_eq!(f.count("messages").await, 0);

    let again = f.run(&["--json", "migrate"]).await.json();
    assert_eq!(again["applied"], serde_json::json!([]));
    assert_eq!(again["version"], PgOutbox::SCHEMA_VERSION);
    let text = f.run(&["migrate"]).await;
    assert!(
        text.text().contains(&format!(
            "up to date (version {})",
            PgOutbox::SCHEMA_VERSION
        )),
        "{text:?}"
    );
}

#[tokio::test]
async fn status_of_an_empty_outbox() {
    let f = Fixture::new(true).await;
    let status = f.run(&["status", "--json"]).await.json();
    assert_eq!(status["schema"], f.db.schema());
    assert_eq!(status["schema_version"], PgOutbox::SCHEMA_VERSION);
    for field in ["pending", "due", "not_due", "retrying", "dead_letters"] {
        assert_eq!(status[field], 0, "{field}: {status}");
    }
    assert_eq!(status["lag_seconds"], 0.0);
    assert_eq!(status["oldest_pending_age_seconds"], 0.0);
    assert_eq!(status["lock_id"], PgConfig::default_lock_id(f.db.schema()));
    assert!(status["leader"].is_null(), "{status}");

    let run = f.run(&["status"]).await;
    let text = run.text();
    assert!(text.contains("  pending          0\n"), "{text}");
    assert!(text.contains("  leader           none"), "{text}");
}

#[tokio::test]
async fn status_counts_pending_due_retrying_and_dead_letters() {
    let f = Fixture::new(true).await;
    let hour = Duration::from_secs(3600);
    let messages = [
        // Created (on the producer's clock) two hours ago: the oldest pending message.
        Message::builder("s.a")
            .payload("0")
            .created_at(SystemTime::now() - 2 * hour)
            .build()
            .unwrap(),
        message("s.a", Some("k")),
        message("s.b", None),
        message("s.b", None),
        Message::builder("s.c")
            .payload("4")
            .delay(hour)
            .build()
            .unwrap(),
    ];
    let seqs = f.outbox.enqueue_batch(&f.client, &messages).await.unwrap();
    f.store()
        .fail(&[
            Failure {
                seq: seqs[1],
                error: "timed out".into(),
                action: FailureAction::Retry { after: hour },
            },
            Failure {
                seq: seqs[3],
                error: "too big".into(),
                action: FailureAction::DeadLetter,
            },
        ])
        .await
        .unwrap();
    // Due for ten minutes: the lag.
    let backdate = format!(
        "UPDATE {}.messages SET available_at = now() - interval '10 minutes' WHERE seq = $1",
        f.db.schema()
    );
    f.client.execute(&backdate, &[&seqs[2]]).await.unwrap();

    let status = f.run(&["status", "--json"]).await.json();
    assert_eq!(status["pending"], 4, "{status}");
    assert_eq!(status["due"], 2, "{status}");
    assert_eq!(status["not_due"], 2, "{status}");
    assert_eq!(status["retrying"], 1, "{status}");
    assert_eq!(status["dead_letters"], 1, "{status}");
    let lag = status["lag_seconds"].as_f64().unwrap();
    assert!((600.0..660.0).contains(&lag), "{status}");
    let oldest = status["oldest_pending_age_seconds"].as_f64().unwrap();
    assert!((7200.0..7260.0).contains(&oldest), "{status}");

    let run = f.run(&["status"]).await;
    let text = run.text();
    assert!(text.contains("  pending          4\n"), "{text}");
    assert!(text.contains("  oldest pending   2h"), "{text}");
    assert!(text.contains("  lag              10m"), "{text}");
    assert!(text.contains("  dead letters     1\n"), "{text}");
}

#[tokio::test]
async fn status_shows_the_session_holding_the_leadership_lock() {
    let f = Fixture::new(true).await;
    let store = f.store();
    let leadership = tokio::time::timeout(Duration::from_secs(10), store.elector().campaign())
        .await
        .expect("campaign in time")
        .expect("leadership");
    let name = format!("outbox-relay {}", f.db.schema());
    let pids: Vec<i32> = f
        .client
        .query(
            "SELECT pid FROM pg_stat_activity WHERE application_name = $1",
            &[&name],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(pids.len(), 1, "the store has one session: {pids:?}");

    let status = f.run(&["status", "--json"]).await.json();
    let leader = &status["leader"];
    assert_eq!(leader["pid"], pids[0], "{status}");
    assert_eq!(leader["application_name"], name.as_str());
    assert_eq!(leader["user"], "postgres");
    assert!(leader["backend_start"].as_str().unwrap().ends_with('Z'));
    let age = leader["session_age_seconds"].as_f64().unwrap();
    assert!((0.0..60.0).contains(&age), "{status}");
    // The same lock under another key is not this leader.
    let other = f.run(&["status", "--json", "--lock-id", "7"]).await.json();
    assert!(other["leader"].is_null(), "{other}");

    let run = f.run(&["status"]).await;
    let text = run.text();
    assert!(
        text.contains(&format!("  leader           pid {}, \"{name}\"", pids[0])),
        "{text}"
    );
    assert!(text.contains("session since"), "{text}");

    // Resigning closes the session; the lock goes with it.
    drop(leadership);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let status = f.run(&["status", "--json"]).await.json();
        if status["leader"].is_null() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "leader still shown: {status}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn dead_letters_are_listed_with_filters_and_pages() {
    let f = Fixture::new(true).await;
    let mut messages = vec![
        message("orders.created", Some("c1")),
        message("orders.created", Some("c2")),
        message("orders.created", Some("c1")),
        message("orders.paid", Some("c1")),
    ];
    messages.push(
        Message::builder("orders.paid")
            .payload(vec![0xff_u8, 0xfe])
            .header("trace", "t-1")
            .build()
            .unwrap(),
    );
    let seqs = f.dead_letters(&messages).await;
    let all_ids: Vec<String> = messages.iter().map(|m| m.id().to_string()).collect();

    let all = f.run(&["dead-letters", "list", "--json"]).await.json();
    assert_eq!(all["total"], 5);
    assert_eq!(all["limit"], 50);
    assert_eq!(ids(&all), all_ids);
    let first = &all["dead_letters"][0];
    assert_eq!(first["seq"], seqs[0]);
    assert_eq!(first["subject"], "orders.created");
    assert_eq!(first["key"], "c1");
    assert_eq!(first["attempts"], 1);
    assert_eq!(first["error"], format!("rejected {}", seqs[0]));
    assert_eq!(first["payload"], "{\"n\":1}");
    let binary = &all["dead_letters"][4];
    assert!(binary["key"].is_null());
    assert_eq!(binary["payload_base64"], "//4=");
    assert!(binary.get("payload").is_none());
    assert_eq!(binary["headers"]["trace"], "t-1");

    let paid = f
        .run(&["dead-letters", "list", "--json", "--subject", "orders.paid"])
        .await
        .json();
    assert_eq!(paid["total"], 2);
    assert_eq!(ids(&paid), all_ids[3..]);
    let c1 = f
        .run(&[
            "dead-letters",
            "list",
            "--key",
            "c1",
            "--subject",
            "orders.created",
            "--json",
        ])
        .await
        .json();
    assert_eq!(ids(&c1), [all_ids[0].clone(), all_ids[2].clone()]);
    let page = f
        .run(&[
            "dead-letters",
            "list",
            "--json",
            "--limit",
            "2",
            "--offset",
            "1",
        ])
        .await
        .json();
    assert_eq!(page["total"], 5);
    assert_eq!(ids(&page), all_ids[1..3]);

    // Age on the database's clock.
    let old = f
        .run(&["dead-letters", "list", "--json", "--older-than", "1h"])
        .await
        .json();
    assert_eq!(old["total"], 0);
    let backdate = format!(
        "UPDATE {}.dead_letters SET failed_at = now() - interval '2 hours' WHERE seq = $1",
        f.db.schema()
    );
    f.client.execute(&backdate, &[&seqs[1]]).await.unwrap();
    let old = f
        .run(&["dead-letters", "list", "--json", "--older-than", "1h"])
        .await
        .json();
    assert_eq!(ids(&old), [all_ids[1].clone()]);

    let run = f
        .run(&["dead-letters", "list", "--subject", "orders.paid"])
        .await;
    let text = run.text();
    assert!(text.starts_with("ID "), "{text}");
    assert!(text.contains(&all_ids[3]), "{text}");
    assert!(!text.contains(&all_ids[0]), "{text}");
    assert!(
        text.contains("1-2 of 2 dead letters with subject \"orders.paid\""),
        "{text}"
    );
}

#[tokio::test]
async fn replay_puts_dead_letters_back_with_their_ids() {
    let f = Fixture::new(true).await;
    let messages = [
        message("r.a", Some("k1")),
        message("r.a", Some("k1")),
        message("r.b", Some("k2")),
        message("r.b", Some("k2")),
    ];
    f.dead_letters(&messages).await;

    // By id: no question asked, even without a terminal.
    let id = messages[2].id().to_string();
    let report = f
        .run(&["dead-letters", "replay", "--id", &id, "--json"])
        .await
        .json();
    assert_eq!(report["action"], "replay");
    assert_eq!(report["replayed"], 1);
    assert_eq!(report["skipped"], 0);
    assert_eq!(report["not_found"], serde_json::json!([]));
    assert_eq!(f.outbox_ids().await, [(messages[2].id(), 0)]);
    assert_eq!(f.count("dead_letters").await, 3);

    // An id that is no dead letter (any more): reported, exit 1.
    let unknown = Uuid::now_v7().to_string();
    let run = f
        .run(&["dead-letters", "replay", "--json", "--id", &id, &unknown])
        .await;
    run.fails(1, &unknown);
    let report: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(report["replayed"], 0);
    assert_eq!(report["not_found"], serde_json::json!([id, unknown]));

    // By filter: needs --yes without a terminal; changes nothing when refused.
    let refused = f
        .run(&["dead-letters", "replay", "--all", "--subject", "r.a"])
        .await;
    refused.fails(2, "--yes");
    assert_eq!(f.count("dead_letters").await, 3);
    let report = f
        .run(&[
            "dead-letters",
            "replay",
            "--all",
            "--subject",
            "r.a",
            "--yes",
            "--json",
        ])
        .await
        .json();
    assert_eq!(report["matched"], 2);
    assert_eq!(report["replayed"], 2);
    // Appended in their original order, attempts reset.
    assert_eq!(
        f.outbox_ids().await,
        [
            (messages[2].id(), 0),
            (messages[0].id(), 0),
            (messages[1].id(), 0)
        ]
    );
    let left = f.run(&["dead-letters", "list", "--json"]).await.json();
    assert_eq!(ids(&left), [messages[3].id().to_string()]);

    let run = f
        .run(&["dead-letters", "replay", "--key", "k2", "-y"])
        .await;
    assert!(
        run.text()
            .contains("Replayed 1 of 1 dead letter with key \"k2\" into the outbox."),
        "{run:?}"
    );
    let run = f.run(&["dead-letters", "replay", "--all", "-y"]).await;
    assert!(
        run.text().contains("No dead letters: nothing to replay."),
        "{run:?}"
    );
}

#[tokio::test]
async fn purge_deletes_by_id_age_or_all() {
    let f = Fixture::new(true).await;
    let messages: Vec<Message> = (0..4).map(|_| message("p.a", None)).collect();
    let seqs = f.dead_letters(&messages).await;

    let id = messages[0].id().to_string();
    let report = f
        .run(&["dead-letters", "purge", "--id", &id, "--yes", "--json"])
        .await
        .json();
    assert_eq!(report["action"], "purge");
    assert_eq!(report["purged"], 1);
    assert!(report.get("replayed").is_none());
    assert_eq!(f.count("dead_letters").await, 3);

    let report = f
        .run(&[
            "dead-letters",
            "purge",
            "--older-than",
            "1h",
            "--yes",
            "--json",
        ])
        .await
        .json();
    assert_eq!(report["purged"], 0);
    assert_eq!(f.count("dead_letters").await, 3);
    let backdate = format!(
        "UPDATE {}.dead_letters SET failed_at = now() - interval '2 hours' WHERE seq = $1",
        f.db.schema()
    );
    f.client.execute(&backdate, &[&seqs[3]]).await.unwrap();
    let report = f
        .run(&[
            "dead-letters",
            "purge",
            "--older-than",
            "90m",
            "--yes",
            "--json",
        ])
        .await
        .json();
    assert_eq!(report["purged"], 1);

    let run = f.run(&["dead-letters", "purge", "--all", "--yes"]).await;
    assert!(
        run.text().contains("Purged 2 of 2 dead letters."),
        "{run:?}"
    );
    assert_eq!(f.count("dead_letters").await, 0);
    // Purging never touches the outbox itself.
    assert_eq!(f.count("messages").await, 0);
}

#[tokio::test]
async fn destructive_commands_without_yes_and_without_a_terminal_are_refused() {
    let f = Fixture::new(true).await;
    let messages: Vec<Message> = (0..2).map(|_| message("x.y", None)).collect();
    f.dead_letters(&messages).await;
    let id = messages[0].id().to_string();
    for args in [
        &["dead-letters", "purge", "--all"][..],
        &["dead-letters", "purge", "--id", &id],
        &["dead-letters", "purge", "--older-than", "0s", "--json"],
        &["dead-letters", "replay", "--all"],
    ] {
        let run = f.run(args).await;
        run.fails(2, "stdin is not a terminal; pass --yes");
        assert_eq!(run.stdout, "", "{args:?}");
    }
    assert_eq!(f.count("dead_letters").await, 2);
    assert_eq!(f.count("messages").await, 0);
}

#[tokio::test]
async fn bulk_operations_run_in_batches() {
    let f = Fixture::new(true).await;
    let messages: Vec<Message> = (0..2500)
        .map(|n| message("bulk.n", Some(&format!("k{}", n % 7))))
        .collect();
    let seqs = f.dead_letters(&messages).await;

    let report = f
        .run(&["dead-letters", "replay", "--all", "--yes", "--json"])
        .await
        .json();
    assert_eq!(report["replayed"], 2500);
    assert_eq!(report["batches"], 3);
    let expected: Vec<(Uuid, i32)> = messages.iter().map(|m| (m.id(), 0)).collect();
    assert_eq!(f.outbox_ids().await, expected, "original order kept");

    // Dead-letter them again (new seqs), then purge in batches of 1000.
    let sql = format!("SELECT seq FROM {}.messages ORDER BY seq", f.db.schema());
    let failures: Vec<Failure> = f
        .client
        .query(&sql, &[])
        .await
        .unwrap()
        .iter()
        .map(|row| Failure {
            seq: row.get(0),
            error: "again".into(),
            action: FailureAction::DeadLetter,
        })
        .collect();
    assert_eq!(failures.len(), 2500);
    assert!(failures.iter().all(|f| f.seq > seqs[2499]));
    f.store().fail(&failures).await.unwrap();
    let report = f
        .run(&[
            "dead-letters",
            "purge",
            "--all",
            "--yes",
            "--json",
            "--batch-size",
            "1000",
        ])
        .await
        .json();
    assert_eq!(report["purged"], 2500);
    assert_eq!(report["batches"], 3);
    assert_eq!(f.count("dead_letters").await, 0);
}

#[tokio::test]
async fn bad_input_exits_2_with_one_line_naming_the_problem() {
    let url = "postgres://postgres@127.0.0.1:5432/test";
    let cases: &[(&[&str], &str)] = &[
        (&["--bogus", "status"], "--bogus"),
        (&["status", "--frob"], "--frob"),
        (&["launch"], "launch"),
        (
            &["--database-url", "mysql://u@h/db", "status"],
            "--database-url",
        ),
        (
            &["--database-url", "postgres://u@h:port/db", "status"],
            "--database-url",
        ),
        (&["--database-url", "not a url", "status"], "--database-url"),
        (&["--schema", "Has Spaces", "status"], "--schema"),
        (&["dead-letters", "list", "--limit", "lots"], "--limit"),
        (&["dead-letters", "list", "--offset", "-3"], "--offset"),
        (
            &["dead-letters", "list", "--older-than", "yesterday"],
            "--older-than",
        ),
        (&["dead-letters", "replay", "--id", "not-a-uuid"], "--id"),
        (&["dead-letters", "replay", "-y"], "say which dead letters"),
        (
            &["dead-letters", "purge", "--all", "--batch-size", "0"],
            "--batch-size",
        ),
    ];
    for (args, needle) in cases {
        let mut all = vec!["--database-url", url];
        all.extend_from_slice(args);
        let run = run_raw(&all).await;
        run.fails(2, needle);
        assert_eq!(run.stdout, "", "{args:?}");
    }
    // No database at all.
    run_raw(&["status"]).await.fails(2, "DATABASE_URL");
    // Passwords stay out of the message.
    let run = run_raw(&["--database-url", "postgres://u:hunter2@h:nope/db", "status"]).await;
    run.fails(2, "u:***@h");
    assert!(!run.stderr.contains("hunter2"), "{run:?}");
}

#[tokio::test]
async fn a_database_url_comes_from_the_environment_too() {
    let f = Fixture::new(true).await;
    let output = tokio::process::Command::new(OUTBOX)
        .args(["--schema", f.db.schema(), "status", "--json"])
        .env("DATABASE_URL", f.db.url())
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let status: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(status["pending"], 0);
}

#[tokio::test]
async fn an_unreachable_database_fails_with_a_clear_error() {
    // Nothing listens on port 1: refused at once, retried a bounded number of times.
    let started = std::time::Instant::now();
    let run = run_raw(&[
        "--database-url",
        "postgres://postgres@127.0.0.1:1/test",
        "status",
    ])
    .await;
    run.fails(
        1,
        "cannot connect to PostgreSQL at postgres://postgres@127.0.0.1:1/test (3 attempts)",
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(run.stdout, "");
}

#[tokio::test]
async fn an_unmigrated_schema_says_to_run_migrate() {
    let f = Fixture::new(false).await;
    for args in [
        &["status"][..],
        &["dead-letters", "list"],
        &["dead-letters", "purge", "--all", "--yes"],
    ] {
        f.run(args).await.fails(
            1,
            &format!("run `outbox --schema {} migrate` first", f.db.schema()),
        );
    }
}

/// Runs `outbox ARGS` on a pseudo-terminal (util-linux `script`), typing `answer`; `None` when
/// `script` is missing.
async fn run_on_terminal(f: &Fixture, args: &[&str], answer: &str) -> Option<Run> {
    use tokio::io::AsyncWriteExt;
    let mut command = format!(
        "'{OUTBOX}' --database-url '{}' --schema '{}'",
        f.db.url(),
        f.db.schema()
    );
    for arg in args {
        assert!(!arg.contains('\''), "{arg}");
        command.push_str(&format!(" '{arg}'"));
    }
    let mut child = match tokio::process::Command::new("script")
        .args(["-qec", &command, "/dev/null"])
        .env_remove("DATABASE_URL")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(child) => child,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => panic!("script: {e}"),
    };
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(answer.as_bytes()).await.unwrap();
    drop(stdin);
    let output = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .expect("the command ends")
        .unwrap();
    Some(Run {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    })
}

#[tokio::test]
async fn on_a_terminal_destructive_commands_ask_first() {
    let f = Fixture::new(true).await;
    let messages: Vec<Message> = (0..2).map(|_| message("tty.a", None)).collect();
    f.dead_letters(&messages).await;
    let Some(declined) = run_on_terminal(&f, &["dead-letters", "purge", "--all"], "n\n").await
    else {
        eprintln!("skipped: util-linux `script` is not installed");
        return;
    };
    // The terminal merges stdout and stderr.
    assert_eq!(declined.code, Some(1), "{declined:?}");
    assert!(
        declined.stdout.contains(&format!(
            "Purge 2 dead letters in schema \"{}\"",
            f.db.schema()
        )),
        "{declined:?}"
    );
    assert!(
        declined.stdout.contains("this cannot be undone)? [y/N]"),
        "{declined:?}"
    );
    assert!(
        declined.stdout.contains("aborted: nothing was changed"),
        "{declined:?}"
    );
    assert_eq!(f.count("dead_letters").await, 2);

    let agreed = run_on_terminal(&f, &["dead-letters", "purge", "--all"], "y\n")
        .await
        .unwrap();
    assert_eq!(agreed.code, Some(0), "{agreed:?}");
    assert!(
        agreed.stdout.contains("Purged 2 of 2 dead letters."),
        "{agreed:?}"
    );
    assert_eq!(f.count("dead_letters").await, 0);
}

#[tokio::test]
async fn purge_published_deletes_what_a_retention_kept_past_the_age() {
    let f = Fixture::new(true).await;
    let retaining = PgOutbox::new(
        PgConfig::builder()
            .schema(f.db.schema())
            .retention(Duration::from_secs(3600))
            .build()
            .unwrap(),
    )
    .unwrap();
    let messages: Vec<Message> = (0..5)
        .map(|i| {
            Message::builder("cli.published")
                .key(format!("key-{i}"))
                .payload(format!("{i}"))
                .build()
                .unwrap()
        })
        .collect();
    let seqs = retaining.enqueue_batch(&f.client, &messages).await.unwrap();
    let store = PgStore::new(&retaining, f.db.pg_config());
    store.complete(&seqs).await.unwrap();
    // Three of the five were published two days ago.
    f.client
        .execute(
            &format!(
                "UPDATE {}.published SET published_at = now() - interval '2 days' \
                 WHERE seq = ANY($1)",
                f.db.schema()
            ),
            &[&&seqs[..3]],
        )
        .await
        .unwrap();

    f.run(&["purge-published"])
        .await
        .fails(2, "refusing to purge without confirmation");
    let report = f
        .run(&["purge-published", "--yes", "--json", "--batch-size", "2"])
        .await
        .json();
    assert_eq!(report["matched"], 3, "{report}");
    assert_eq!(report["purged"], 3, "{report}");
    assert_eq!(report["older_than_seconds"], 86_400);
    let left: i64 = f
        .client
        .query_one(
            &format!("SELECT count(*) FROM {}.published", f.db.schema()),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 2);

    let text = f
        .run(&["purge-published", "--yes", "--older-than", "0s"])
        .await;
    assert!(
        text.text().contains("Purged 2 published messages"),
        "{text:?}"
    );
    let text = f.run(&["purge-published", "--yes"]).await;
    assert!(text.text().contains("nothing to purge"), "{text:?}");
}
