//! Secrets never reach the service's output: its logs while PostgreSQL or NATS cannot be
//! reached, `--help`, its error lines, `/health` and `/ready`. Each run's stderr is read whole
//! and searched for the secrets it was given. And the service works over verified TLS.

#![cfg(all(feature = "postgres", feature = "nats"))]

mod support;

use std::process::Command;
use std::time::Duration;

use outbox_testkit::{ConfiguredNatsServer, PgCluster, PgClusterConfig, TestCa, TestDatabase};
use support::{EXAMPLE, Example, args, free_port, http, isolation};

const SECRET: &str = "s3cr3t-x7";

/// Credentials in every place the service takes them from.
fn secret_env() -> Vec<(&'static str, String)> {
    vec![
        ("PGPASSWORD", SECRET.to_owned()),
        ("NATS_TOKEN", format!("{SECRET}-token")),
    ]
}

fn assert_clean(text: &str, what: &str) {
    assert!(!text.contains(SECRET), "{what} holds the secret:\n{text}");
}

#[tokio::test]
async fn an_unreachable_database_is_logged_without_its_password() {
    let db = TestDatabase::new().await;
    let app = TestDatabase::new().await;
    let mut list = args(&[
        "--database-url",
        &format!("postgres://user:{SECRET}@127.0.0.1:1/db?sslmode=prefer"),
        "--role",
        "replica",
        "--port",
        "0",
        "--orders",
        "1",
    ]);
    list.extend(isolation(db.schema(), app.schema(), "REDACT", "redact"));
    let mut example = Example::spawn("db-down", &list, &[]);
    // The first failure and the first retry.
    example
        .wait_for_line("127.0.0.1:1", Duration::from_secs(30))
        .await;
    example
        .wait_for_line("retrying", Duration::from_secs(30))
        .await;
    example.signal("TERM");
    example.wait_exit(Duration::from_secs(30)).await;
    let logs = example.logs();
    assert!(
        logs.contains("postgres://user:***@127.0.0.1:1/db"),
        "{logs}"
    );
    assert_clean(&logs, "the log");
}

/// The test database's URL with a password: its own, or an added one (the test server trusts
/// local connections, so an added password is ignored by it).
fn database_url_with_password(db: &TestDatabase) -> (String, String) {
    let url = db.url().to_owned();
    let Some((scheme, rest)) = url.split_once("://") else {
        panic!("unexpected DATABASE_URL form");
    };
    match rest.split_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((_, password)) => (url.clone(), password.to_owned()),
            None => (
                format!("{scheme}://{userinfo}:{SECRET}@{host}"),
                SECRET.to_owned(),
            ),
        },
        None => panic!("DATABASE_URL has no user"),
    }
}

#[tokio::test]
async fn an_unreachable_nats_is_logged_without_its_credentials() {
    let db = TestDatabase::new().await;
    let app = TestDatabase::new().await;
    let (database_url, db_password) = database_url_with_password(&db);
    let port = free_port();
    let mut list = args(&[
        "--database-url",
        &database_url,
        "--nats-url",
        &format!("nats://user:{SECRET}@127.0.0.1:1"),
        "--role",
        "leader",
        "--port",
        &port.to_string(),
    ]);
    list.extend(isolation(db.schema(), app.schema(), "REDACT", "redact"));
    let mut example = Example::spawn("nats-down", &list, &[]);
    example
        .wait_for_line(
            "connecting to NATS at nats://user:***@127.0.0.1:1",
            Duration::from_secs(30),
        )
        .await;
    example
        .wait_for_line("retrying", Duration::from_secs(30))
        .await;
    for path in ["/health", "/ready"] {
        let (_, body) = http(port, "GET", path, None).await;
        assert_clean(&body, path);
        assert!(!body.contains(&db_password), "{path}: {body}");
    }
    example.signal("TERM");
    example.wait_exit(Duration::from_secs(30)).await;
    let logs = example.logs();
    assert_clean(&logs, "the log");
    assert!(!logs.contains(&db_password), "{logs}");
}

#[tokio::test]
async fn refused_nats_credentials_end_the_service_with_a_clear_line() {
    let server = ConfiguredNatsServer::start("authorization { token: \"right-token\" }").await;
    let db = TestDatabase::new().await;
    let app = TestDatabase::new().await;
    let mut list = args(&[
        "--database-url",
        db.url(),
        "--nats-url",
        &format!("nats://127.0.0.1:{}", server.port()),
        "--role",
        "leader",
        "--port",
        "0",
    ]);
    list.extend(isolation(db.schema(), app.schema(), "REDACT", "redact"));
    let env = secret_env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut example = Example::spawn("nats-refused", &list, &env);
    let status = example.wait_exit(Duration::from_secs(60)).await;
    assert_eq!(status.code(), Some(1), "{}", example.logs());
    let logs = example.logs();
    assert!(logs.contains("authorization violation"), "{logs}");
    assert_clean(&logs, "the log");
}

#[test]
fn help_and_usage_errors_show_no_secret() {
    let run = |args: &[&str], secrets_in_env: bool| {
        let mut command = Command::new(EXAMPLE);
        command.args(args).env_remove("NATS_URL");
        if secrets_in_env {
            command
                .env("DATABASE_URL", format!("postgres://u:{SECRET}@h/db"))
                .env("NATS_URL", format!("nats://u:{SECRET}@h:4222"))
                .env("NATS_PASSWORD", SECRET);
            for (key, value) in secret_env() {
                command.env(key, value);
            }
        }
        let output = command.output().expect("the binary runs");
        (
            output.status.code(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ),
        )
    };
    let (code, help) = run(&["--help"], true);
    assert_eq!(code, Some(0));
    assert!(help.contains("--nats-creds"), "{help}");
    assert_clean(&help, "--help");

    // Two credential forms at once (URL and token): a usage error that names them, not them.
    let (code, error) = run(&[], true);
    assert_eq!(code, Some(2), "{error}");
    assert!(error.contains("credentials in the URL"), "{error}");
    assert_clean(&error, "the usage error");

    let (code, error) = run(
        &[
            "--nats-url",
            "nats://h:4222",
            "--nats-creds",
            "/nonexistent.creds",
            "--database-url",
            &format!("postgres://u:{SECRET}@h/db"),
        ],
        false,
    );
    assert_eq!(code, Some(2), "{error}");
    assert!(error.contains("/nonexistent.creds"), "{error}");
    assert_clean(&error, "the usage error");
}

#[tokio::test]
async fn a_replica_writes_its_orders_over_verified_tls() {
    let ca = TestCa::new("example");
    let server = ca.server_cert("server", &["localhost"]);
    let config = PgClusterConfig::new()
        .tls(&server.cert, &server.key)
        .hba("hostssl all app 127.0.0.1/32 scram-sha-256");
    let cluster = match PgCluster::start(config).await {
        Ok(cluster) => cluster,
        Err(reason) => {
            eprintln!("skipping the TLS test of the example: {reason}");
            return;
        }
    };
    cluster
        .execute(&format!("CREATE ROLE app LOGIN PASSWORD '{SECRET}'"))
        .await;
    cluster.execute("CREATE DATABASE app OWNER app").await;
    let url = format!(
        "postgres://app@localhost:{}/app?sslmode=verify-full&sslrootcert={}",
        cluster.port(),
        ca.ca_file().display()
    );
    let list = args(&[
        "--database-url",
        &url,
        "--role",
        "replica",
        "--port",
        "0",
        "--orders",
        "20",
    ]);
    // The password from PGPASSWORD, as libpq would take it. The server accepts TLS only, and a
    // replica exits 0 once all its orders are committed.
    let mut example = Example::spawn("tls", &list, &[("PGPASSWORD", SECRET)]);
    let status = example.wait_exit(Duration::from_secs(60)).await;
    assert_eq!(status.code(), Some(0), "{}", example.logs());
    assert!(
        example.logs().contains("replica finished its orders"),
        "{}",
        example.logs()
    );
    assert_clean(&example.logs(), "the log");
}
