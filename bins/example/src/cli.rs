//! Command line and environment: parsing, validation, and the one-line errors of bad input.

// A build without `postgres` only parses its input, then says which feature it lacks.
#![cfg_attr(not(feature = "postgres"), allow(dead_code))]

use std::net::IpAddr;
use std::process::ExitCode;

use clap::{Parser, ValueEnum};
use outbox_core::redact::redact_url;

/// The database used when neither `--database-url` nor `DATABASE_URL` is given.
pub(crate) const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/test";
/// The NATS server used when neither `--nats-url` nor `NATS_URL` is given.
pub(crate) const DEFAULT_NATS_URL: &str = "nats://127.0.0.1:4222";

/// Exit code of bad input: an unknown flag, a malformed value, a missing feature.
pub(crate) const EXIT_USAGE: u8 = 2;

/// An orders service that writes each order and its `orders.created` event in one transaction;
/// a leader also relays the events to JetStream.
#[derive(Debug, Parser)]
#[command(name = "example", version, max_term_width = 100)]
struct Cli {
    /// PostgreSQL URL (postgres://user[:password]@host[:port]/db); TLS with
    /// ?sslmode=verify-full&sslrootcert=CA.pem (libpq's parameters, PGPASSWORD, PGPASSFILE).
    #[arg(
        long = "database-url",
        visible_alias = "dsn",
        env = "DATABASE_URL",
        hide_env_values = true,
        default_value = DEFAULT_DATABASE_URL,
        value_name = "URL"
    )]
    database_url: String,

    /// NATS URL (nats://[user:password@]host[:port]; several separated by commas).
    #[arg(
        long = "nats-url",
        visible_alias = "natsdsn",
        env = "NATS_URL",
        hide_env_values = true,
        default_value = DEFAULT_NATS_URL,
        value_name = "URL"
    )]
    nats_url: String,

    #[cfg(feature = "nats")]
    #[command(flatten)]
    nats_security: outbox_nats::NatsSecurityArgs,

    /// `leader` campaigns for leadership and relays while it leads; `replica` never relays.
    /// Default: replica.
    #[arg(long, value_enum, value_name = "ROLE")]
    role: Option<Role>,

    /// Same as `--role leader` (kept from the original Go example; `--leader=false` means replica).
    #[arg(
        long,
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true",
        value_name = "BOOL"
    )]
    leader: Option<bool>,

    /// Address the HTTP server listens on.
    #[arg(long, default_value = "0.0.0.0", value_name = "IP")]
    host: IpAddr,

    /// HTTP port; 0 disables the HTTP server.
    #[arg(
        long,
        default_value_t = 8080,
        value_name = "PORT",
        allow_negative_numbers = true
    )]
    port: u16,

    /// Port of a listener serving only `GET /metrics` (Prometheus), on --host; 0 means none.
    /// The HTTP port serves `/metrics` too.
    #[arg(
        long = "metrics-port",
        env = "METRICS_PORT",
        default_value_t = 0,
        value_name = "PORT",
        allow_negative_numbers = true
    )]
    metrics_port: u16,

    /// How long an HTTP request may take, body included, before it is answered 503.
    #[arg(
        long = "request-timeout-ms",
        default_value_t = 15_000,
        value_parser = clap::value_parser!(u64).range(1..=3_600_000),
        value_name = "MS",
        hide = true
    )]
    request_timeout_ms: u64,

    /// How often a leading relay samples the backlog gauges (outbox_pending_messages,
    /// outbox_lag_seconds).
    #[arg(
        long = "backlog-interval-ms",
        default_value_t = 5_000,
        value_parser = clap::value_parser!(u64).range(1..=3_600_000),
        value_name = "MS",
        hide = true
    )]
    backlog_interval_ms: u64,

    /// Orders to write with the built-in load generator (0: none). A replica exits once all are
    /// committed; a leader keeps relaying.
    #[arg(
        long,
        default_value_t = 0,
        value_name = "N",
        allow_negative_numbers = true
    )]
    orders: u64,

    /// Orders per second of the load generator; 0 writes as fast as it can.
    #[arg(
        long,
        default_value_t = 0.0,
        value_parser = parse_rate,
        value_name = "R",
        allow_negative_numbers = true
    )]
    rate: f64,

    /// Customers the generated orders are spread over (ids customer-1 … customer-K).
    #[arg(
        long,
        default_value_t = 10,
        value_parser = clap::value_parser!(u64).range(1..),
        value_name = "K",
        allow_negative_numbers = true
    )]
    customers: u64,

    /// Concurrent transactions of the load generator.
    #[arg(
        long,
        default_value_t = 4,
        value_parser = clap::value_parser!(u16).range(1..=256),
        value_name = "C",
        allow_negative_numbers = true
    )]
    concurrency: u16,

    /// PostgreSQL schema of the outbox tables.
    #[arg(long, default_value = "outbox", value_parser = parse_identifier, value_name = "NAME")]
    schema: String,

    /// PostgreSQL schema of the service's own tables (customers, orders).
    #[arg(
        long = "app-schema",
        default_value = "orders_app",
        value_parser = parse_identifier,
        value_name = "NAME"
    )]
    app_schema: String,

    /// JetStream stream the leader creates if missing (subjects `<prefix>.>`, duplicate window
    /// 2 min).
    #[arg(long, default_value = "ORDERS", value_parser = parse_stream, value_name = "NAME")]
    stream: String,

    /// Subject prefix: events go to `<prefix>.created`, the stream captures `<prefix>.>`.
    #[arg(
        long = "subject-prefix",
        default_value = "orders",
        value_parser = parse_subject_prefix,
        value_name = "PREFIX"
    )]
    subject_prefix: String,
}

/// What this instance does besides serving orders.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum Role {
    /// Campaigns for leadership and relays the outbox while it leads.
    Leader,
    /// Never relays.
    Replica,
}

impl Role {
    /// The name used on the command line and in `/health`.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Role::Leader => "leader",
            Role::Replica => "replica",
        }
    }
}

/// What the load generator does.
#[derive(Clone, Copy, Debug)]
pub(crate) struct LoadPlan {
    /// Orders to write.
    pub(crate) orders: u64,
    /// Orders per second; 0 means unthrottled.
    pub(crate) rate: f64,
    /// Customers to spread the orders over.
    pub(crate) customers: u64,
    /// Concurrent transactions.
    pub(crate) concurrency: usize,
}

/// Validated settings: everything the service needs, checked before any connection is made.
#[derive(Debug)]
pub(crate) struct Settings {
    /// The database URL without its password.
    pub(crate) database_redacted: String,
    /// The database connection settings (TLS, password) read from the URL.
    #[cfg(feature = "postgres")]
    pub(crate) database: outbox_postgres::PgConnectOptions,
    /// The NATS URL without its password.
    #[cfg_attr(not(feature = "nats"), allow(dead_code))]
    pub(crate) nats_redacted: String,
    /// The NATS servers, credentials and TLS settings, checked.
    #[cfg(feature = "nats")]
    pub(crate) nats: outbox_nats::NatsConnectOptions,
    /// Leader or replica.
    pub(crate) role: Role,
    /// HTTP listen address.
    pub(crate) host: IpAddr,
    /// HTTP port; 0 disables HTTP.
    pub(crate) port: u16,
    /// Port of the metrics-only listener; 0 means none.
    pub(crate) metrics_port: u16,
    /// Longest time an HTTP request may take.
    pub(crate) request_timeout: std::time::Duration,
    /// How often a leading relay samples the backlog gauges.
    #[cfg_attr(not(feature = "nats"), allow(dead_code))]
    pub(crate) backlog_interval: std::time::Duration,
    /// The load generator's plan.
    pub(crate) load: LoadPlan,
    /// Outbox schema.
    pub(crate) schema: String,
    /// Application schema.
    pub(crate) app_schema: String,
    /// JetStream stream name.
    #[cfg_attr(not(feature = "nats"), allow(dead_code))]
    pub(crate) stream: String,
    /// Subject prefix.
    pub(crate) subject_prefix: String,
}

impl Settings {
    /// The subject of order events: `<prefix>.created`.
    pub(crate) fn subject(&self) -> String {
        format!("{}.created", self.subject_prefix)
    }

    /// The subjects the stream captures: `<prefix>.>`.
    #[cfg_attr(not(feature = "nats"), allow(dead_code))]
    pub(crate) fn stream_subjects(&self) -> String {
        format!("{}.>", self.subject_prefix)
    }
}

/// Parses the command line and environment.
///
/// On bad input, prints one line naming the problem to stderr and returns exit code 2; `--help`
/// and `--version` print to stdout and return 0.
pub(crate) fn parse() -> Result<Settings, ExitCode> {
    parse_from(std::env::args_os())
}

fn parse_from<I, T>(args: I) -> Result<Settings, ExitCode>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(error) if !error.use_stderr() => {
            // --help and --version: clap prints them in full.
            let _ = error.print();
            return Err(ExitCode::SUCCESS);
        }
        Err(error) => return Err(usage_error(&clap_message(&error.to_string()))),
    };
    cli.validate().map_err(|message| usage_error(&message))
}

/// Prints `message` as the single line of a usage error and returns exit code 2.
pub(crate) fn usage_error(message: &str) -> ExitCode {
    let message = message.trim();
    let message = message.strip_prefix("error: ").unwrap_or(message);
    eprintln!("error: {}", first_line(message));
    ExitCode::from(EXIT_USAGE)
}

/// The first line of a clap error, plus its list of possible values if it has one.
fn clap_message(text: &str) -> String {
    let mut message = first_line(text);
    if let Some(values) = text
        .lines()
        .map(str::trim)
        .find(|line| line.starts_with("[possible values:"))
    {
        message.push(' ');
        message.push_str(values);
    }
    message
}

fn first_line(text: &str) -> String {
    text.lines()
        .map(str::trim)
        .find(|line| !line.is_empty())
        .unwrap_or("invalid arguments")
        .to_owned()
}

impl Cli {
    fn validate(self) -> Result<Settings, String> {
        let role = match (self.role, self.leader) {
            (Some(role), Some(leader)) if (role == Role::Leader) != leader => {
                return Err(format!(
                    "--leader={leader} contradicts --role {}",
                    role.as_str()
                ));
            }
            (Some(role), _) => role,
            (None, Some(true)) => Role::Leader,
            (None, _) => Role::Replica,
        };
        let database_redacted = redact_url(&self.database_url);
        let checked = check_database_url(&self.database_url)
            .map_err(|e| format!("invalid --database-url {database_redacted}: {e}"));
        #[cfg(feature = "postgres")]
        let database = checked?;
        #[cfg(not(feature = "postgres"))]
        checked?;
        let nats_redacted = redact_url(&self.nats_url);
        check_nats_url(&self.nats_url)
            .map_err(|e| format!("invalid --nats-url {nats_redacted}: {e}"))?;
        #[cfg(feature = "nats")]
        let nats = outbox_nats::NatsConnectOptions::new(&self.nats_url)
            .and_then(|nats| nats.with_security(&self.nats_security.into()))
            .map_err(|e| format!("invalid NATS settings: {e}"))?;
        Ok(Settings {
            database_redacted,
            #[cfg(feature = "postgres")]
            database,
            nats_redacted,
            #[cfg(feature = "nats")]
            nats,
            role,
            host: self.host,
            port: self.port,
            metrics_port: self.metrics_port,
            request_timeout: std::time::Duration::from_millis(self.request_timeout_ms),
            backlog_interval: std::time::Duration::from_millis(self.backlog_interval_ms),
            load: LoadPlan {
                orders: self.orders,
                rate: self.rate,
                customers: self.customers,
                concurrency: usize::from(self.concurrency),
            },
            schema: self.schema,
            app_schema: self.app_schema,
            stream: self.stream,
            subject_prefix: self.subject_prefix,
        })
    }
}

/// Checks a PostgreSQL URL: the scheme, then everything outbox-postgres checks (tokio-postgres'
/// parameters, libpq's TLS parameters and the files they name), then a user and a host
/// (tokio-postgres has no defaults for them).
#[cfg(feature = "postgres")]
fn check_database_url(url: &str) -> Result<outbox_postgres::PgConnectOptions, String> {
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return Err("expected postgres://user@host[:port]/database".to_owned());
    }
    let options = outbox_postgres::PgConnectOptions::from_url(url).map_err(|e| {
        // The error quotes the URL, which the caller's message already shows.
        match e {
            outbox_postgres::ConnectOptionsError::InvalidUrl { reason, .. } => reason,
            other => other.to_string(),
        }
    })?;
    if options.config().get_user().is_none() {
        return Err("no user (postgres://USER@host/database)".to_owned());
    }
    if options.config().get_hosts().is_empty() {
        return Err("no host (postgres://user@HOST/database)".to_owned());
    }
    Ok(options)
}

/// Without the `postgres` feature: the scheme only.
#[cfg(not(feature = "postgres"))]
fn check_database_url(url: &str) -> Result<(), String> {
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return Err("expected postgres://user@host[:port]/database".to_owned());
    }
    Ok(())
}

/// Checks a NATS URL or a comma-separated list of them: scheme `nats` or `tls`, a host, a port
/// that parses.
fn check_nats_url(urls: &str) -> Result<(), String> {
    for url in urls.split(',').map(str::trim) {
        let parsed = url::Url::parse(url).map_err(|e| format!("{e}"))?;
        if !matches!(parsed.scheme(), "nats" | "tls") {
            return Err(format!(
                "scheme {:?} is not nats:// or tls://",
                parsed.scheme()
            ));
        }
        if parsed.host_str().is_none_or(str::is_empty) {
            return Err("no host (nats://HOST:4222)".to_owned());
        }
        if !matches!(parsed.path(), "" | "/") || parsed.query().is_some() {
            return Err("a NATS URL has no path or query".to_owned());
        }
    }
    Ok(())
}

fn parse_rate(value: &str) -> Result<f64, String> {
    let rate: f64 = value
        .parse()
        .map_err(|_| "not a number of orders per second".to_owned())?;
    if !rate.is_finite() || rate < 0.0 {
        return Err("must be 0 (unthrottled) or a positive number".to_owned());
    }
    Ok(rate)
}

/// A PostgreSQL identifier we can splice into SQL without quoting doubts: lowercase ASCII
/// letters, digits and `_`, starting with a letter or `_`, at most 63 bytes, and not `pg_…`
/// (reserved by PostgreSQL for system schemas).
fn parse_identifier(value: &str) -> Result<String, String> {
    let ok = !value.is_empty()
        && value.len() <= 63
        && value
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        && !value.as_bytes()[0].is_ascii_digit()
        && !value.starts_with("pg_");
    if ok {
        Ok(value.to_owned())
    } else {
        Err(
            "expected a lowercase identifier: a-z, 0-9 and _, not starting with a digit or pg_, \
             at most 63 characters"
                .to_owned(),
        )
    }
}

/// A JetStream stream name: letters, digits, `-` and `_` (no `.`, `*`, `>`, spaces or path
/// separators, which the server refuses or which break its file store).
fn parse_stream(value: &str) -> Result<String, String> {
    let ok = !value.is_empty()
        && value.len() <= 255
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(value.to_owned())
    } else {
        Err("expected a stream name of letters, digits, '-' and '_'".to_owned())
    }
}

/// A subject prefix: what the outbox accepts as a subject (dot-separated tokens of printable
/// characters, no wildcards, not a `$` system subject), checked by the same rules.
fn parse_subject_prefix(value: &str) -> Result<String, String> {
    let ok = value.len() <= 256
        && outbox_core::message::validate_subject(&format!("{value}.created")).is_ok();
    if ok {
        Ok(value.to_owned())
    } else {
        Err(
            "expected dot-separated subject tokens without spaces, '*' or '>', not starting \
             with '$'"
                .to_owned(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_args(args: &[&str]) -> Result<Settings, String> {
        let cli = Cli::try_parse_from(std::iter::once("example").chain(args.iter().copied()))
            .map_err(|e| clap_message(&e.to_string()))?;
        cli.validate()
    }

    #[test]
    fn defaults_match_the_contract() {
        let s = parse_args(&[
            "--database-url",
            DEFAULT_DATABASE_URL,
            "--nats-url",
            DEFAULT_NATS_URL,
        ])
        .unwrap();
        assert_eq!(s.role, Role::Replica);
        assert_eq!(s.port, 8080);
        assert_eq!(s.metrics_port, 0);
        assert_eq!(s.request_timeout, std::time::Duration::from_secs(15));
        assert_eq!(s.backlog_interval, std::time::Duration::from_secs(5));
        assert_eq!(s.load.orders, 0);
        assert_eq!(s.load.rate, 0.0);
        assert_eq!(s.load.customers, 10);
        assert_eq!(s.load.concurrency, 4);
        assert_eq!(s.schema, "outbox");
        assert_eq!(s.app_schema, "orders_app");
        assert_eq!(s.stream, "ORDERS");
        assert_eq!(s.subject(), "orders.created");
        assert_eq!(s.stream_subjects(), "orders.>");
    }

    #[test]
    fn seed_aliases_are_accepted() {
        let s = parse_args(&[
            "--dsn",
            "postgres://u@h/db",
            "--natsdsn",
            "nats://h:1",
            "--leader",
        ])
        .unwrap();
        assert_eq!(s.role, Role::Leader);
        assert_eq!(s.database_redacted, "postgres://u@h/db");
        assert_eq!(s.nats_redacted, "nats://h:1");
        assert_eq!(parse_args(&["--leader=false"]).unwrap().role, Role::Replica);
        assert_eq!(
            parse_args(&["--leader", "--role", "leader"]).unwrap().role,
            Role::Leader
        );
        assert!(parse_args(&["--leader", "--role", "replica"]).is_err());
    }

    #[test]
    fn bad_input_names_the_problem() {
        let mut cases: Vec<(&[&str], &str)> = vec![
            (&["--database-url", "mysql://h/db"], "--database-url"),
            (&["--nats-url", "http://h:4222"], "--nats-url"),
            (&["--nats-url", "nats://h:99999"], "--nats-url"),
            (&["--nats-url", "localhost"], "--nats-url"),
            (&["--role", "boss"], "[possible values: leader, replica]"),
            (&["--orders", "many"], "--orders"),
            (&["--orders", "-1"], "--orders"),
            (&["--rate", "-3"], "--rate"),
            (&["--customers", "0"], "--customers"),
            (&["--port", "70000"], "--port"),
            (&["--metrics-port", "70000"], "--metrics-port"),
            (&["--backlog-interval-ms", "0"], "--backlog-interval-ms"),
            (&["--schema", "Bad Name"], "--schema"),
            (&["--stream", "a.b"], "--stream"),
            (&["--subject-prefix", "a.>"], "--subject-prefix"),
            (&["--subject-prefix", "$JS.API"], "--subject-prefix"),
            (&["--bogus"], "--bogus"),
        ];
        // Without the feature there is no tokio-postgres to parse the rest of the URL.
        if cfg!(feature = "postgres") {
            cases.push((
                &["--database-url", "postgres://u@h:notaport/db"],
                "--database-url",
            ));
            cases.push((&["--database-url", "postgres:///db"], "--database-url"));
        }
        for (args, needle) in cases {
            let error = parse_args(args)
                .err()
                .unwrap_or_else(|| panic!("{args:?} accepted"));
            assert!(!error.contains('\n'), "{error}");
            assert!(error.contains(needle), "{args:?}: {error}");
        }
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact_url("postgres://u:secret@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(
            redact_url("postgres://u:p@ss/w@h/db?password=x&sslmode=disable"),
            "postgres://u:***@h/db?password=***&sslmode=disable"
        );
        assert_eq!(redact_url("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(
            redact_url("nats://a:b@h1:4222,nats://c:d@h2"),
            "nats://a:***@h1:4222,nats://c:***@h2"
        );
        assert_eq!(redact_url("not a url"), "not a url");
    }
}
