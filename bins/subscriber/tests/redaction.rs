//! The subscriber never prints NATS credentials: not while the server is unreachable, not when
//! it refuses them, not in `--help`.

use std::process::{Command, Output};

use outbox_testkit::ConfiguredNatsServer;

const SUBSCRIBER: &str = env!("CARGO_BIN_EXE_subscriber");
const SECRET: &str = "s3cr3t-y8";

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn subscriber() -> Command {
    let mut command = Command::new(SUBSCRIBER);
    command
        .env_remove("NATS_URL")
        .env_remove("NATS_TOKEN")
        .env_remove("NATS_USER")
        .env_remove("NATS_PASSWORD")
        .env("RUST_LOG", "info");
    command
}

#[test]
fn an_unreachable_server_is_logged_without_the_password() {
    let output = subscriber()
        .args(["--nats-url", &format!("nats://user:{SECRET}@127.0.0.1:1")])
        .args(["--timeout", "2", "--quiet"])
        .output()
        .expect("the binary runs");
    let text = text(&output);
    assert_eq!(output.status.code(), Some(1), "{text}");
    assert!(text.contains("nats://user:***@127.0.0.1:1"), "{text}");
    assert!(text.contains("retrying"), "{text}");
    assert!(!text.contains(SECRET), "{text}");
}

#[tokio::test]
async fn refused_credentials_end_the_run_without_repeating_them() {
    let server = ConfiguredNatsServer::start("authorization { token: \"right-token\" }").await;
    let output = subscriber()
        .args(["--nats-url", &format!("nats://127.0.0.1:{}", server.port())])
        .args(["--timeout", "20", "--quiet"])
        .env("NATS_TOKEN", SECRET)
        .output()
        .expect("the binary runs");
    let text = text(&output);
    assert_eq!(output.status.code(), Some(2), "{text}");
    assert!(text.contains("authorization violation"), "{text}");
    assert!(!text.contains(SECRET), "{text}");
}

#[test]
fn help_and_bad_settings_show_no_secret() {
    let output = subscriber()
        .arg("--help")
        .env("NATS_TOKEN", SECRET)
        .env("NATS_URL", format!("nats://u:{SECRET}@h:4222"))
        .output()
        .expect("the binary runs");
    let help = text(&output);
    assert_eq!(output.status.code(), Some(0), "{help}");
    assert!(help.contains("--nats-token"), "{help}");
    assert!(!help.contains(SECRET), "{help}");

    // A token and a password at once: exit 2 naming the forms, not the values.
    let output = subscriber()
        .args(["--nats-user", "u", "--timeout", "2"])
        .env("NATS_TOKEN", SECRET)
        .env("NATS_PASSWORD", SECRET)
        .output()
        .expect("the binary runs");
    let error = text(&output);
    assert_eq!(output.status.code(), Some(2), "{error}");
    assert!(
        error.contains("not a token and a user and password"),
        "{error}"
    );
    assert!(!error.contains(SECRET), "{error}");
}
