//! `outbox` over TLS, configured in `DATABASE_URL` as libpq reads it, and without its password
//! in any message.

use std::process::{Command, Output};

use outbox_testkit::{PgCluster, PgClusterConfig, TestCa};

const OUTBOX: &str = env!("CARGO_BIN_EXE_outbox");
const SECRET: &str = "s3cr3t-z9";

fn outbox(url: &str, args: &[&str]) -> Output {
    Command::new(OUTBOX)
        .env("DATABASE_URL", url)
        .env_remove("PGPASSWORD")
        .args(args)
        .output()
        .expect("the binary runs")
}

fn output_text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[test]
fn bad_tls_settings_and_unreachable_servers_are_reported_without_the_password() {
    let output = outbox(
        &format!(
            "postgres://u:{SECRET}@127.0.0.1:1/db?sslmode=verify-full&sslrootcert=/nonexistent/ca.pem"
        ),
        &["status"],
    );
    let text = output_text(&output);
    assert_eq!(output.status.code(), Some(2), "{text}");
    assert!(
        text.contains("cannot read CA file /nonexistent/ca.pem"),
        "{text}"
    );
    assert!(!text.contains(SECRET), "{text}");

    let output = outbox(
        &format!("postgres://u:{SECRET}@127.0.0.1:1/db"),
        &["status"],
    );
    let text = output_text(&output);
    assert_eq!(output.status.code(), Some(1), "{text}");
    assert!(text.contains("postgres://u:***@127.0.0.1:1/db"), "{text}");
    assert!(!text.contains(SECRET), "{text}");
}

#[tokio::test]
async fn migrate_and_status_over_verified_tls() {
    let ca = TestCa::new("outbox-cli");
    let server = ca.server_cert("server", &["localhost"]);
    let config = PgClusterConfig::new()
        .tls(&server.cert, &server.key)
        .hba("hostssl all admin 127.0.0.1/32 scram-sha-256");
    let cluster = match PgCluster::start(config).await {
        Ok(cluster) => cluster,
        Err(reason) => {
            eprintln!("skipping the TLS test of the admin CLI: {reason}");
            return;
        }
    };
    cluster
        .execute(&format!("CREATE ROLE admin LOGIN PASSWORD '{SECRET}'"))
        .await;
    cluster.execute("CREATE DATABASE app OWNER admin").await;
    let url = |mode: &str| {
        format!(
            "postgres://admin:{SECRET}@localhost:{}/app?sslmode={mode}&sslrootcert={}",
            cluster.port(),
            ca.ca_file().display()
        )
    };
    let output = outbox(&url("verify-full"), &["migrate"]);
    assert_eq!(output.status.code(), Some(0), "{}", output_text(&output));
    let output = outbox(&url("verify-full"), &["status", "--json"]);
    assert_eq!(output.status.code(), Some(0), "{}", output_text(&output));

    // Plaintext is refused by the server; the error names the reason, not the password.
    let output = outbox(&url("disable"), &["status"]);
    let text = output_text(&output);
    assert_eq!(output.status.code(), Some(1), "{text}");
    assert!(text.contains("no pg_hba.conf entry"), "{text}");
    assert!(!text.contains(SECRET), "{text}");
}
