//! Command line and environment: parsing, validation, and the one-line errors of bad input.

use std::ffi::OsString;
use std::io::IsTerminal;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use outbox_core::redact::redact_url;
use outbox_postgres::dead_letter::DeadLetterFilter;
use uuid::Uuid;

/// Exit code of bad input: an unknown flag, a malformed value, a refused confirmation.
pub(crate) const EXIT_USAGE: u8 = 2;

/// Rows per statement of a bulk replay or purge, unless `--batch-size` says otherwise.
const DEFAULT_BATCH_SIZE: usize = 1000;

/// Administers a transactional outbox in PostgreSQL: migrations, status, dead letters.
#[derive(Debug, Parser)]
#[command(
    name = "outbox",
    version,
    max_term_width = 100,
    propagate_version = true
)]
struct Cli {
    /// PostgreSQL URL (postgres://user[:password]@host[:port]/db). Required, from this flag or
    /// DATABASE_URL.
    #[arg(
        long = "database-url",
        visible_alias = "dsn",
        env = "DATABASE_URL",
        hide_env_values = true,
        global = true,
        value_name = "URL"
    )]
    database_url: Option<String>,

    /// Schema of the outbox tables.
    #[arg(
        long,
        default_value = "outbox",
        global = true,
        value_parser = parse_schema,
        value_name = "NAME"
    )]
    schema: String,

    /// Print one JSON document on stdout instead of tables.
    #[arg(long, global = true)]
    json: bool,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create or upgrade the outbox tables (the migrations embedded in this build).
    Migrate,
    /// Pending and due messages, lag, retries, dead letters, and the current leader.
    Status {
        /// The leadership lock key, if the relays set one (default: derived from the schema).
        #[arg(long, value_name = "N", allow_negative_numbers = true)]
        lock_id: Option<i64>,
    },
    /// List, replay or purge the messages the relay gave up on.
    #[command(subcommand)]
    DeadLetters(DeadLetterCommand),
    /// Delete published messages kept by a retention (PgConfig::retention) past an age. The
    /// leading relay does this on its own; this is for doing it now, or with another age.
    PurgePublished {
        /// Only messages published more than this long ago (database clock), e.g. 90s, 12h, 7d;
        /// 0s purges all.
        #[arg(
            long = "older-than",
            default_value = "24h",
            value_parser = parse_age,
            value_name = "DURATION"
        )]
        older_than: Duration,
        /// Do not ask for confirmation (needed when stdin is not a terminal).
        #[arg(long, short = 'y')]
        yes: bool,
        /// Rows per statement; each batch commits on its own.
        #[arg(
            long = "batch-size",
            default_value_t = outbox_postgres::DEFAULT_PURGE_BATCH,
            value_parser = parse_batch_size,
            value_name = "N"
        )]
        batch_size: usize,
    },
}

#[derive(Debug, Subcommand)]
enum DeadLetterCommand {
    /// Dead letters, oldest failure first.
    List {
        /// Rows to show.
        #[arg(
            long,
            default_value_t = 50,
            value_parser = clap::value_parser!(u64).range(1..=100_000),
            value_name = "N",
            allow_negative_numbers = true
        )]
        limit: u64,
        /// Matching rows to skip first.
        #[arg(
            long,
            default_value_t = 0,
            value_name = "N",
            allow_negative_numbers = true
        )]
        offset: u64,
        #[command(flatten)]
        filters: Filters,
    },
    /// Put dead letters back into the outbox: same message id (JetStream's duplicate window still
    /// drops a copy it already has), attempts reset, due now, in their original order.
    Replay(Selection),
    /// Delete dead letters for good.
    Purge(Selection),
}

#[derive(Debug, Args)]
struct Filters {
    /// Only dead letters with exactly this subject.
    #[arg(long, value_name = "SUBJECT")]
    subject: Option<String>,
    /// Only dead letters with exactly this key.
    #[arg(long, value_name = "KEY")]
    key: Option<String>,
    /// Only dead letters that failed more than this long ago (database clock), e.g. 90s, 15m,
    /// 12h, 7d, "1h 30m".
    #[arg(long = "older-than", value_parser = parse_age, value_name = "DURATION")]
    older_than: Option<Duration>,
}

#[derive(Debug, Args)]
struct Selection {
    /// These dead letters (message ids); repeat the flag or list several after it.
    #[arg(
        long = "id",
        value_name = "UUID",
        num_args = 1..,
        conflicts_with_all = ["all", "subject", "key", "older_than"]
    )]
    ids: Vec<Uuid>,
    /// Every dead letter (narrowed by the filters, if any).
    #[arg(long)]
    all: bool,
    #[command(flatten)]
    filters: Filters,
    /// Do not ask for confirmation (needed when stdin is not a terminal).
    #[arg(long, short = 'y')]
    yes: bool,
    /// Dead letters per statement; each batch commits on its own.
    #[arg(
        long = "batch-size",
        default_value_t = DEFAULT_BATCH_SIZE,
        value_parser = parse_batch_size,
        value_name = "N"
    )]
    batch_size: usize,
}

/// Validated settings: everything a command needs, checked before any connection is made.
#[derive(Debug)]
pub(crate) struct Settings {
    /// The database to connect to: the URL's TLS mode, certificates and password.
    pub(crate) database: outbox_postgres::PgConnectOptions,
    /// The database URL without its password, for messages.
    pub(crate) database_redacted: String,
    /// Outbox schema, validated.
    pub(crate) schema: String,
    /// JSON output instead of tables.
    pub(crate) json: bool,
    /// What to do.
    pub(crate) action: Action,
}

/// A validated command.
#[derive(Debug)]
pub(crate) enum Action {
    /// `migrate`.
    Migrate,
    /// `status`.
    Status {
        /// Explicit leadership lock key.
        lock_id: Option<i64>,
    },
    /// `dead-letters list`.
    List {
        /// Which dead letters.
        filter: DeadLetterFilter,
        /// Rows to show.
        limit: usize,
        /// Rows to skip.
        offset: usize,
    },
    /// `dead-letters replay` or `dead-letters purge`.
    Bulk(Bulk),
    /// `purge-published`.
    PurgePublished(Purge),
}

/// A purge of published messages past an age.
#[derive(Debug)]
pub(crate) struct Purge {
    /// Kept longer than this.
    pub(crate) older_than: Duration,
    /// Ask before acting (not with `--yes`).
    pub(crate) confirm: bool,
    /// Rows per statement.
    pub(crate) batch_size: usize,
}

/// A replay or a purge of selected dead letters.
#[derive(Debug)]
pub(crate) struct Bulk {
    /// Replay or purge.
    pub(crate) kind: BulkKind,
    /// The selection.
    pub(crate) target: Target,
    /// Ask before acting: false with `--yes`, and for a replay by id (which only puts back
    /// messages the operator named).
    pub(crate) confirm: bool,
    /// Dead letters per statement.
    pub(crate) batch_size: usize,
}

/// Which bulk operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BulkKind {
    /// Back into the outbox.
    Replay,
    /// Deleted.
    Purge,
}

impl BulkKind {
    /// The verb, lowercase.
    pub(crate) fn verb(self) -> &'static str {
        match self {
            BulkKind::Replay => "replay",
            BulkKind::Purge => "purge",
        }
    }
}

/// Which dead letters a bulk operation selects.
#[derive(Debug)]
pub(crate) enum Target {
    /// Named by message id (deduplicated, in the order given).
    Ids(Vec<Uuid>),
    /// Every dead letter matching the filter (which may match all).
    Matching(DeadLetterFilter),
}

impl Target {
    /// The filter that selects these dead letters.
    pub(crate) fn filter(&self) -> DeadLetterFilter {
        match self {
            Target::Ids(ids) => DeadLetterFilter::all().ids(ids.clone()),
            Target::Matching(filter) => filter.clone(),
        }
    }
}

/// Bad input: printed as one line, exit code 2.
#[derive(Debug)]
pub(crate) struct UsageError(pub(crate) String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// What parsing decided: run with these settings, or exit now (help, version, bad input).
#[derive(Debug)]
pub(crate) enum Parsed {
    /// Run.
    Run(Box<Settings>),
    /// `--help` or `--version` was printed: exit 0.
    Printed,
    /// Bad input: print the line, exit 2.
    Usage(UsageError),
}

/// Parses the command line and environment. `stdin_is_terminal` decides whether a command that
/// needs confirmation can ask for it.
pub(crate) fn parse() -> Parsed {
    parse_from(std::env::args_os(), std::io::stdin().is_terminal())
}

fn parse_from<I, T>(args: I, stdin_is_terminal: bool) -> Parsed
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    match Cli::try_parse_from(args) {
        Ok(cli) => match cli.validate(stdin_is_terminal) {
            Ok(settings) => Parsed::Run(Box::new(settings)),
            Err(message) => Parsed::Usage(UsageError(message)),
        },
        Err(error) if !error.use_stderr() => {
            // --help and --version: clap prints them in full, on stdout.
            let _ = error.print();
            Parsed::Printed
        }
        Err(error) => Parsed::Usage(UsageError(clap_message(&error.to_string()))),
    }
}

impl Cli {
    fn validate(self, stdin_is_terminal: bool) -> Result<Settings, String> {
        let url = self.database_url.ok_or_else(|| {
            "no database: set DATABASE_URL or pass --database-url postgres://user@host/db"
                .to_owned()
        })?;
        let database_redacted = redact_url(&url);
        let database = parse_database_url(&url)
            .map_err(|e| format!("invalid --database-url {database_redacted}: {e}"))?;
        let action = match self.command {
            Command::Migrate => Action::Migrate,
            Command::Status { lock_id } => Action::Status { lock_id },
            Command::DeadLetters(DeadLetterCommand::List {
                limit,
                offset,
                filters,
            }) => Action::List {
                filter: filters.into_filter(),
                limit: usize::try_from(limit).unwrap_or(usize::MAX),
                offset: usize::try_from(offset).unwrap_or(usize::MAX),
            },
            Command::DeadLetters(DeadLetterCommand::Replay(selection)) => {
                Action::Bulk(selection.validate(BulkKind::Replay, stdin_is_terminal)?)
            }
            Command::DeadLetters(DeadLetterCommand::Purge(selection)) => {
                Action::Bulk(selection.validate(BulkKind::Purge, stdin_is_terminal)?)
            }
            Command::PurgePublished {
                older_than,
                yes,
                batch_size,
            } => {
                if !yes && !stdin_is_terminal {
                    return Err("refusing to purge without confirmation: stdin is not a \
                                terminal; pass --yes to purge without asking"
                        .to_owned());
                }
                Action::PurgePublished(Purge {
                    older_than,
                    confirm: !yes,
                    batch_size,
                })
            }
        };
        Ok(Settings {
            database,
            database_redacted,
            schema: self.schema,
            json: self.json,
            action,
        })
    }
}

impl Filters {
    fn into_filter(self) -> DeadLetterFilter {
        let mut filter = DeadLetterFilter::all();
        if let Some(subject) = self.subject {
            filter = filter.subject(subject);
        }
        if let Some(key) = self.key {
            filter = filter.key(key);
        }
        if let Some(age) = self.older_than {
            filter = filter.older_than(age);
        }
        filter
    }
}

impl Selection {
    fn validate(self, kind: BulkKind, stdin_is_terminal: bool) -> Result<Bulk, String> {
        let verb = kind.verb();
        let target = if self.ids.is_empty() {
            let filter = self.filters.into_filter();
            if filter.is_all() && !self.all {
                return Err(format!(
                    "say which dead letters to {verb}: --id UUID..., --all, or a filter \
                     (--subject, --key, --older-than)"
                ));
            }
            Target::Matching(filter)
        } else {
            let mut ids = self.ids;
            let mut seen = std::collections::HashSet::new();
            ids.retain(|id| seen.insert(*id));
            Target::Ids(ids)
        };
        let needs_asking = kind == BulkKind::Purge || matches!(target, Target::Matching(_));
        let confirm = needs_asking && !self.yes;
        if confirm && !stdin_is_terminal {
            return Err(format!(
                "refusing to {verb} without confirmation: stdin is not a terminal; pass --yes \
                 to {verb} without asking"
            ));
        }
        Ok(Bulk {
            kind,
            target,
            confirm,
            batch_size: self.batch_size,
        })
    }
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
        .strip_prefix("error: ")
        .map(str::to_owned)
        .unwrap_or(message)
}

/// The first non-empty line of `text`, trimmed.
pub(crate) fn first_line(text: &str) -> String {
    text.lines()
        .map(str::trim)
        .find(|line| !line.is_empty())
        .unwrap_or("invalid arguments")
        .to_owned()
}

/// Checks a PostgreSQL URL: the scheme, then everything tokio-postgres checks, then a user and a
/// host (tokio-postgres has no defaults for them).
fn parse_database_url(url: &str) -> Result<outbox_postgres::PgConnectOptions, String> {
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return Err("expected postgres://user@host[:port]/database".to_owned());
    }
    let options = outbox_postgres::PgConnectOptions::from_url(url).map_err(|e| match e {
        // The caller's message quotes the URL already.
        outbox_postgres::ConnectOptionsError::InvalidUrl { reason, .. } => first_line(&reason),
        other => first_line(&other.to_string()),
    })?;
    if options.config().get_user().is_none() {
        return Err("no user (postgres://USER@host/database)".to_owned());
    }
    if options.config().get_hosts().is_empty() {
        return Err("no host (postgres://user@HOST/database)".to_owned());
    }
    Ok(options)
}

fn parse_schema(value: &str) -> Result<String, String> {
    outbox_postgres::validate_schema(value)
        .map(|()| value.to_owned())
        .map_err(|_| {
            "expected a lowercase identifier: a-z, 0-9 and _, not starting with a digit or pg_, \
             at most 63 characters"
                .to_owned()
        })
}

/// The longest `--older-than` accepted: 100 years.
const MAX_AGE: Duration = Duration::from_secs(100 * 366 * 24 * 3600);

fn parse_age(value: &str) -> Result<Duration, String> {
    let age = humantime::parse_duration(value.trim())
        .map_err(|e| format!("{e} (expected e.g. 90s, 15m, 12h, 7d, \"1h 30m\")"))?;
    if age > MAX_AGE {
        return Err("more than 100 years".to_owned());
    }
    Ok(age)
}

fn parse_batch_size(value: &str) -> Result<usize, String> {
    match value.parse::<usize>() {
        Ok(n) if (1..=100_000).contains(&n) => Ok(n),
        _ => Err("expected a number from 1 to 100000".to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const URL: &str = "postgres://postgres@127.0.0.1:5432/test";

    fn parse_args(args: &[&str], tty: bool) -> Result<Settings, String> {
        let all = ["outbox", "--database-url", URL]
            .into_iter()
            .chain(args.iter().copied());
        match parse_from(all, tty) {
            Parsed::Run(settings) => Ok(*settings),
            Parsed::Usage(UsageError(message)) => Err(message),
            Parsed::Printed => Err("printed".to_owned()),
        }
    }

    fn bulk(args: &[&str], tty: bool) -> Bulk {
        match parse_args(args, tty).unwrap().action {
            Action::Bulk(bulk) => bulk,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn defaults() {
        let s = parse_args(&["status"], false).unwrap();
        assert_eq!(s.schema, "outbox");
        assert!(!s.json);
        assert!(matches!(s.action, Action::Status { lock_id: None }));
        let s = parse_args(
            &["dead-letters", "list", "--json", "--schema", "t_1"],
            false,
        )
        .unwrap();
        assert!(s.json);
        assert_eq!(s.schema, "t_1");
        match s.action {
            Action::List {
                filter,
                limit,
                offset,
            } => {
                assert!(filter.is_all());
                assert_eq!((limit, offset), (50, 0));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            bulk(&["dead-letters", "purge", "--all", "--yes"], false).batch_size,
            1000
        );
    }

    #[test]
    fn filters_and_ids_are_read() {
        let s = parse_args(
            &[
                "dead-letters",
                "list",
                "--subject",
                "a.b",
                "--key",
                "k",
                "--older-than",
                "1h 30m",
            ],
            false,
        )
        .unwrap();
        let Action::List { filter, .. } = s.action else {
            panic!()
        };
        assert_eq!(filter.subject.as_deref(), Some("a.b"));
        assert_eq!(filter.key.as_deref(), Some("k"));
        assert_eq!(filter.older_than, Some(Duration::from_secs(5400)));

        let a = Uuid::now_v7().to_string();
        let b = Uuid::now_v7().to_string();
        let bulk = bulk(
            &["dead-letters", "replay", "--id", &a, &b, "--id", &a],
            false,
        );
        // A replay by id does not ask: it only puts back what the operator named.
        assert!(!bulk.confirm);
        match bulk.target {
            Target::Ids(ids) => {
                assert_eq!(ids.iter().map(Uuid::to_string).collect::<Vec<_>>(), [a, b])
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn destructive_commands_ask_unless_told_not_to() {
        let id = Uuid::now_v7().to_string();
        assert!(bulk(&["dead-letters", "purge", "--all"], true).confirm);
        assert!(bulk(&["dead-letters", "purge", "--id", &id], true).confirm);
        assert!(bulk(&["dead-letters", "replay", "--all"], true).confirm);
        assert!(bulk(&["dead-letters", "replay", "--subject", "s"], true).confirm);
        assert!(!bulk(&["dead-letters", "purge", "--all", "-y"], true).confirm);
        // Without a terminal there is nobody to ask: refuse, unless --yes.
        for args in [
            &["dead-letters", "purge", "--all"][..],
            &["dead-letters", "purge", "--older-than", "7d"],
            &["dead-letters", "replay", "--all"],
        ] {
            let error = parse_args(args, false).unwrap_err();
            assert!(error.contains("--yes"), "{error}");
        }
        assert!(!bulk(&["dead-letters", "replay", "--id", &id], false).confirm);
    }

    #[test]
    fn bad_input_names_the_problem() {
        let cases: &[(&[&str], &str)] = &[
            (&["--bogus", "status"], "--bogus"),
            (&["frobnicate"], "frobnicate"),
            (&["status", "--lock-id", "x"], "--lock-id"),
            (&["--schema", "Bad Name", "status"], "--schema"),
            (&["--schema", "pg_catalog", "status"], "--schema"),
            (&["dead-letters", "list", "--limit", "many"], "--limit"),
            (&["dead-letters", "list", "--limit", "0"], "--limit"),
            (&["dead-letters", "list", "--offset", "-1"], "--offset"),
            (
                &["dead-letters", "list", "--older-than", "soon"],
                "--older-than",
            ),
            (
                &["dead-letters", "list", "--older-than", "1000years"],
                "--older-than",
            ),
            (&["dead-letters", "replay", "--id", "nope"], "--id"),
            (&["dead-letters", "replay", "--yes"], "--id UUID"),
            (&["dead-letters", "purge", "-y"], "--all"),
            (
                &[
                    "dead-letters",
                    "purge",
                    "--id",
                    "0190d6f1-8f43-7c3a-9a1e-0b1c2d3e4f50",
                    "--all",
                ],
                "--all",
            ),
            (
                &["dead-letters", "purge", "--all", "--batch-size", "0"],
                "--batch-size",
            ),
        ];
        for (args, needle) in cases {
            let error = parse_args(args, true)
                .err()
                .unwrap_or_else(|| panic!("{args:?} accepted"));
            assert!(!error.contains('\n'), "{error}");
            assert!(error.contains(needle), "{args:?}: {error}");
        }
    }

    #[test]
    fn database_urls_are_checked_and_redacted() {
        for url in [
            "mysql://u@h/db",
            "postgres://u@h:port/db",
            "postgres:///db",
            "not a url",
        ] {
            let error = match parse_from(["outbox", "--database-url", url, "status"], false) {
                Parsed::Usage(UsageError(message)) => message,
                other => panic!("{url}: {other:?}"),
            };
            assert!(error.contains("--database-url"), "{error}");
        }
        assert_eq!(
            redact_url("postgres://u:p@ss/w@h/db?password=x&sslmode=disable"),
            "postgres://u:***@h/db?password=***&sslmode=disable"
        );
        assert_eq!(redact_url(URL), URL);
    }
}
