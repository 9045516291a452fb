//! Bad input: exit code 2 and one line on stderr naming the problem, before any connection.

mod support;

use std::process::Command;

use support::EXAMPLE;

fn run(args: &[&str]) -> (Option<i32>, String, String) {
    let output = Command::new(EXAMPLE)
        .args(args)
        .env_remove("DATABASE_URL")
        .env_remove("NATS_URL")
        .output()
        .expect("the binary runs");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
#[cfg(feature = "postgres")]
fn bad_input_exits_2_with_one_line_naming_the_problem() {
    let cases: &[(&[&str], &str)] = &[
        (&["--bogus"], "--bogus"),
        (&["--role", "boss"], "--role"),
        (&["--leader", "--role", "replica"], "--leader"),
        (&["--orders", "many"], "--orders"),
        (&["--orders", "-5"], "--orders"),
        (&["--customers", "-2"], "--customers"),
        (&["--rate", "fast"], "--rate"),
        (&["--rate", "-1"], "--rate"),
        (&["--customers", "0"], "--customers"),
        (&["--concurrency", "0"], "--concurrency"),
        (&["--port", "65536"], "--port"),
        (&["--database-url", "not a url"], "--database-url"),
        (&["--database-url", "mysql://u@h/db"], "--database-url"),
        (
            &["--database-url", "postgres://u@h:port/db"],
            "--database-url",
        ),
        (&["--dsn", "postgres://u@h:99999/db"], "--database-url"),
        (&["--nats-url", "http://h:4222"], "--nats-url"),
        (&["--nats-url", "nats://h:port"], "--nats-url"),
        (&["--natsdsn", "::"], "--nats-url"),
        (&["--schema", "Has Spaces"], "--schema"),
        (&["--app-schema", "pg_catalog"], "--app-schema"),
        (&["--stream", "a.b"], "--stream"),
        (&["--subject-prefix", "orders.*"], "--subject-prefix"),
    ];
    for (args, needle) in cases {
        let (code, stdout, stderr) = run(args);
        assert_eq!(code, Some(2), "{args:?}: stderr {stderr:?}");
        assert_eq!(stdout, "", "{args:?}");
        assert_eq!(stderr.trim().lines().count(), 1, "{args:?}: {stderr:?}");
        assert!(stderr.contains(needle), "{args:?}: {stderr:?}");
    }
}

#[test]
fn a_bad_url_from_the_environment_is_refused_too() {
    let output = Command::new(EXAMPLE)
        .env("DATABASE_URL", "redis://h")
        .env_remove("NATS_URL")
        .output()
        .expect("the binary runs");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--database-url"), "{stderr}");
}

#[test]
#[cfg(feature = "postgres")]
fn passwords_never_reach_the_error_line() {
    let (code, _, stderr) = run(&["--database-url", "postgres://u:hunter2@h:nope/db"]);
    assert_eq!(code, Some(2));
    assert!(!stderr.contains("hunter2"), "{stderr}");
    assert!(stderr.contains("u:***@h"), "{stderr}");
    let (code, _, stderr) = run(&["--nats-url", "http://u:hunter2@h"]);
    assert_eq!(code, Some(2));
    assert!(!stderr.contains("hunter2"), "{stderr}");
}

#[test]
fn help_and_version_exit_0() {
    let (code, stdout, _) = run(&["--help"]);
    assert_eq!(code, Some(0));
    for flag in [
        "--database-url",
        "--nats-url",
        "--role",
        "--port",
        "--orders",
        "--rate",
    ] {
        assert!(stdout.contains(flag), "help lacks {flag}");
    }
    let (code, stdout, _) = run(&["--version"]);
    assert_eq!(code, Some(0));
    assert!(stdout.starts_with("example "), "{stdout}");
}

#[test]
#[cfg(not(feature = "postgres"))]
fn a_build_without_postgres_says_so() {
    let (code, _, stderr) = run(&[]);
    assert_eq!(code, Some(2));
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("`postgres` feature"), "{stderr}");
}

#[test]
#[cfg(all(feature = "postgres", not(feature = "nats")))]
fn a_build_without_nats_refuses_to_lead() {
    let (code, _, stderr) = run(&["--role", "leader"]);
    assert_eq!(code, Some(2));
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("`nats` feature"), "{stderr}");
}
