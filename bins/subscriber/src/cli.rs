//! Command line and environment (DESIGN.md section 6). Every value is validated here, so a bad
//! one ends the program with exit code 2 and one line before anything connects.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use async_nats::ServerAddr;
use clap::Parser;
use clap::builder::BoolishValueParser;

/// Seconds `--expect` waits when `--timeout` is not given.
pub(crate) const DEFAULT_EXPECT_TIMEOUT_SECS: u64 = 60;

/// The database `--inbox` uses when neither `--database-url` nor `DATABASE_URL` is given.
pub(crate) const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

/// Reads a JetStream stream and checks what arrives: duplicates (by Nats-Msg-Id) and the order
/// of each key's messages (the payload's `seq`, per Outbox-Key header or `customer_id`).
#[derive(Debug, Parser)]
#[command(name = "subscriber", version, about, long_about = None)]
pub(crate) struct Cli {
    /// NATS server URL, or several separated by commas (nats://, tls://, ws://, wss:// or host:port).
    #[arg(
        long,
        env = "NATS_URL",
        hide_env_values = true,
        default_value = "nats://127.0.0.1:4222",
        alias = "natsdsn",
        value_name = "URL"
    )]
    pub(crate) nats_url: NatsServers,

    #[command(flatten)]
    pub(crate) nats_security: outbox_nats::NatsSecurityArgs,

    /// JetStream stream to read.
    #[arg(long, default_value = "ORDERS", value_name = "NAME", value_parser = parse_name)]
    pub(crate) stream: String,

    /// Filter subject of the consumer (wildcards allowed); must lie within the stream's subjects.
    #[arg(long, default_value = "orders.>", value_parser = parse_subject)]
    pub(crate) subject: String,

    /// Continue the durable consumer NAME (created if missing) instead of an ephemeral one.
    #[arg(long, value_name = "NAME", value_parser = parse_name)]
    pub(crate) durable: Option<String>,

    /// Deliver only messages stored from now on (default: from the stream's first message).
    #[arg(long)]
    pub(crate) new: bool,

    /// Exit 0 once N distinct messages arrived without an order violation; exit 1 on a violation.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) expect: Option<u64>,

    /// Give up after SECS seconds: exit 1 if --expect is not met yet [default: 60 with --expect].
    #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) timeout: Option<u64>,

    /// Do not print each message, only the summary.
    #[arg(long, short)]
    pub(crate) quiet: bool,

    /// Also print the summary as one JSON line on stdout, after the human one.
    #[arg(long)]
    pub(crate) json: bool,

    /// Apply each message once to PostgreSQL through an inbox (its id recorded and its effect
    /// written in one transaction), and ack it after the commit; messages applied before are
    /// skipped.
    #[arg(long, env = "SUBSCRIBER_INBOX", value_parser = BoolishValueParser::new())]
    pub(crate) inbox: bool,

    /// PostgreSQL URL for --inbox (postgres://user[:password]@host[:port]/database).
    #[arg(
        long,
        env = "DATABASE_URL",
        hide_env_values = true,
        default_value = DEFAULT_DATABASE_URL,
        alias = "dsn",
        value_name = "URL"
    )]
    pub(crate) database_url: DatabaseUrlArg,

    /// Schema of the inbox table and of the table the messages are applied to, for --inbox.
    #[arg(long, default_value = "subscriber", value_name = "NAME", value_parser = parse_schema)]
    pub(crate) inbox_schema: String,
}

impl Cli {
    /// How long the run may last, if bounded.
    pub(crate) fn time_limit(&self) -> Option<Duration> {
        self.timeout
            .or(self.expect.map(|_| DEFAULT_EXPECT_TIMEOUT_SECS))
            .map(Duration::from_secs)
    }

    /// Whether the consumer starts at the stream's first message, so every key starts at seq 1.
    pub(crate) fn reads_from_start(&self) -> bool {
        !self.new && self.durable.is_none()
    }

    /// The NATS servers with the credentials and TLS settings given, checked (files read).
    pub(crate) fn nats_options(&self) -> Result<outbox_nats::NatsConnectOptions, String> {
        outbox_nats::NatsConnectOptions::with_servers(self.nats_url.addrs().iter().cloned())
            .and_then(|options| options.with_security(&self.nats_security.clone().into()))
            .map(|options| options.name("outbox-subscriber"))
            .map_err(|e| format!("invalid NATS settings: {e}"))
    }
}

/// `--database-url` as given. It is checked only with `--inbox`, so that a `DATABASE_URL` meant
/// for another program does not stop a run that only checks the stream. It may hold a password,
/// so it is never shown: `Debug` hides it.
#[derive(Clone)]
pub(crate) struct DatabaseUrlArg(String);

impl DatabaseUrlArg {
    /// The URL, password included: for connecting, never for printing.
    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for DatabaseUrlArg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DatabaseUrlArg(..)")
    }
}

impl FromStr for DatabaseUrlArg {
    type Err = std::convert::Infallible;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Ok(Self(text.to_owned()))
    }
}

/// One or more NATS server addresses, validated as async-nats will read them.
#[derive(Clone, Debug)]
pub(crate) struct NatsServers {
    text: String,
    addrs: Vec<ServerAddr>,
}

impl NatsServers {
    /// The addresses, for `async_nats::connect`.
    pub(crate) fn addrs(&self) -> &[ServerAddr] {
        &self.addrs
    }
}

/// The servers as given, passwords and tokens masked.
impl fmt::Display for NatsServers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&outbox_core::redact::redact_url(&self.text))
    }
}

impl FromStr for NatsServers {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let addrs = text
            .split(',')
            .map(|part| parse_server(part.trim()))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            text: text.to_owned(),
            addrs,
        })
    }
}

fn parse_server(text: &str) -> Result<ServerAddr, String> {
    if text.is_empty() {
        return Err("empty server address".to_owned());
    }
    // async-nats reads a bare `host:port` as `nats://host:port`; do the same, so that its
    // scheme check and ours agree.
    let full = if text.contains("://") {
        text.to_owned()
    } else {
        format!("nats://{text}")
    };
    let url = url::Url::parse(&full).map_err(|e| format!("{text}: {e}"))?;
    if !matches!(url.scheme(), "nats" | "tls" | "ws" | "wss") {
        return Err(format!(
            "{text}: scheme must be nats, tls, ws or wss, not {}",
            url.scheme()
        ));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(format!("{text}: no host"));
    }
    if !matches!(url.path(), "" | "/") || url.query().is_some() || url.fragment().is_some() {
        return Err(format!(
            "{text}: a server URL has no path, query or fragment"
        ));
    }
    ServerAddr::from_url(url).map_err(|e| format!("{text}: {e}"))
}

/// A PostgreSQL schema name, by the inbox's rules (quoted in every statement anyway).
fn parse_schema(text: &str) -> Result<String, String> {
    outbox_postgres::validate_schema(text).map_err(|e| e.to_string())?;
    Ok(text.to_owned())
}

/// A stream or consumer name: what JetStream accepts in its API subjects.
fn parse_name(text: &str) -> Result<String, String> {
    if text.is_empty() {
        return Err("empty name".to_owned());
    }
    if let Some(c) = text
        .chars()
        .find(|c| c.is_whitespace() || c.is_control() || matches!(c, '.' | '*' | '>' | '/' | '\\'))
    {
        return Err(format!("{c:?} is not allowed in a name"));
    }
    Ok(text.to_owned())
}

/// A subject filter: dot-separated non-empty tokens, `*` as a whole token, `>` only last.
fn parse_subject(text: &str) -> Result<String, String> {
    if text.is_empty() {
        return Err("empty subject".to_owned());
    }
    if text.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("a subject has no whitespace".to_owned());
    }
    let tokens: Vec<&str> = text.split('.').collect();
    for (i, token) in tokens.iter().enumerate() {
        if token.is_empty() {
            return Err("empty token between dots".to_owned());
        }
        if token.len() > 1 && token.contains(['*', '>']) {
            return Err(format!("wildcard inside token {token:?}"));
        }
        if *token == ">" && i + 1 != tokens.len() {
            return Err("'>' must be the last token".to_owned());
        }
    }
    Ok(text.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;
    use clap::error::ErrorKind;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("subscriber").chain(args.iter().copied()))
    }

    #[test]
    fn command_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn defaults_match_the_interface_contract() {
        let cli = parse(&["--nats-url", "nats://127.0.0.1:4222"]).expect("parses");
        assert_eq!(cli.stream, "ORDERS");
        assert_eq!(cli.subject, "orders.>");
        assert_eq!(cli.durable, None);
        assert!(!cli.new && !cli.quiet && !cli.json);
        assert_eq!(cli.expect, None);
        assert_eq!(cli.time_limit(), None);
        assert!(cli.reads_from_start());
        assert!(!cli.inbox);
        assert_eq!(cli.inbox_schema, "subscriber");
    }

    #[test]
    fn inbox_flags_parse_and_bad_schemas_are_usage_errors() {
        let cli = parse(&[
            "--inbox",
            "--inbox-schema",
            "audit_1",
            "--database-url",
            "postgres://u:s3cret@db:5432/app",
        ])
        .expect("parses");
        assert!(cli.inbox);
        assert_eq!(cli.inbox_schema, "audit_1");
        assert_eq!(cli.database_url.expose(), "postgres://u:s3cret@db:5432/app");
        assert!(!format!("{cli:?}").contains("s3cret"));
        for bad in ["1audit", "a;b", "pg_x", ""] {
            let err = parse(&["--inbox-schema", bad]).expect_err(bad);
            assert_eq!(err.kind(), ErrorKind::ValueValidation, "{bad:?}: {err}");
        }
    }

    #[test]
    fn expect_alone_is_bounded_by_the_default_timeout() {
        let cli = parse(&["--expect", "5"]).expect("parses");
        assert_eq!(cli.time_limit(), Some(Duration::from_secs(60)));
        let cli = parse(&["--expect", "5", "--timeout", "3"]).expect("parses");
        assert_eq!(cli.time_limit(), Some(Duration::from_secs(3)));
    }

    #[test]
    fn natsdsn_is_an_alias() {
        let cli = parse(&["--natsdsn", "localhost:4333"]).expect("parses");
        assert_eq!(cli.nats_url.to_string(), "localhost:4333");
        assert_eq!(cli.nats_url.addrs().len(), 1);
    }

    #[test]
    fn accepts_valid_server_lists() {
        for ok in [
            "nats://127.0.0.1:4222",
            "localhost",
            "localhost:4222",
            "tls://demo.nats.io:4443",
            "ws://h:80",
            "wss://h",
            "nats://user:pass@h:4222",
            "nats://a:1, nats://b:2",
        ] {
            assert!(ok.parse::<NatsServers>().is_ok(), "{ok} should parse");
        }
    }

    #[test]
    fn rejects_malformed_server_urls() {
        for bad in [
            "",
            "http://h:4222",
            "nats://",
            "nats://h:notaport",
            "nats://h:99999",
            "nats://h:4222/path",
            "a,,b",
        ] {
            assert!(bad.parse::<NatsServers>().is_err(), "{bad:?} should fail");
        }
    }

    #[test]
    fn bad_values_are_usage_errors() {
        for args in [
            &["--nats-url", "http://x"][..],
            &["--expect", "ten"],
            &["--expect", "0"],
            &["--timeout=-1"],
            &["--stream", "a.b"],
            &["--durable", "has space"],
            &["--subject", "orders..x"],
            &["--subject", "orders.>.x"],
            &["--subject", "ord*"],
        ] {
            let err = parse(args).expect_err("must fail");
            assert_eq!(err.kind(), ErrorKind::ValueValidation, "{args:?}: {err}");
            assert_eq!(err.exit_code(), 2);
        }
        let err = parse(&["--bogus"]).expect_err("must fail");
        assert_eq!(err.kind(), ErrorKind::UnknownArgument);
        assert_eq!(err.exit_code(), 2);
    }

    #[test]
    fn subjects_with_wildcards_are_accepted() {
        for ok in ["orders.>", "orders.*", "orders.*.eu", ">", "a"] {
            assert_eq!(parse_subject(ok).as_deref(), Ok(ok));
        }
    }
}
