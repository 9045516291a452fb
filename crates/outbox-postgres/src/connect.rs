//! [`PgConnectOptions`]: a `DATABASE_URL` read the way libpq reads it — TLS modes, root and
//! client certificates, passwords from the URL, the environment or a password file — turned
//! into a `tokio_postgres::Config` and a rustls connector.
//!
//! tokio-postgres itself knows `sslmode` `disable`, `prefer` and `require` only, and refuses the
//! other libpq parameters. [`PgConnectOptions::from_url`] takes them out of the URL, hands the
//! rest to tokio-postgres, and builds the TLS setup they describe:
//!
//! | `sslmode` | Encrypted | Certificate checked |
//! |---|---|---|
//! | `disable` | no | — |
//! | `prefer` (default) | if the server offers TLS | no; with `sslrootcert`, the chain |
//! | `require` | yes, or the connection fails | no; with `sslrootcert`, the chain (libpq's rule) |
//! | `verify-ca` | yes | the chain, against `sslrootcert` (or the system's roots) |
//! | `verify-full` | yes | the chain and that the certificate names the host |
//!
//! | Parameter | Meaning |
//! |---|---|
//! | `sslrootcert` | PEM file of the certificate authorities to trust; `system` for the system's roots (which needs `verify-full`, as in libpq) |
//! | `sslcert`, `sslkey` | PEM client certificate (chain) and its private key (PKCS#8, PKCS#1 or SEC1), for servers that ask for one |
//! | `passfile` | a password file in `.pgpass` format |
//!
//! Parameters may also come from libpq's environment variables when the URL does not set them:
//! `PGSSLMODE`, `PGSSLROOTCERT`, `PGSSLCERT`, `PGSSLKEY`, `PGPASSWORD`, `PGPASSFILE`. A password
//! comes from the URL, else `PGPASSWORD`, else the password file (`passfile`, else `PGPASSFILE`,
//! else `~/.pgpass` if it exists). As in libpq, a password file that others may read is not
//! used.
//!
//! Differences from libpq: `verify-ca` and `verify-full` without `sslrootcert` trust the
//! system's roots (libpq requires `~/.postgresql/root.crt`); the default files
//! `~/.postgresql/root.crt` and `~/.postgresql/postgresql.crt` are not read; `sslpassword`
//! (encrypted keys) and certificate revocation lists are not supported. When the URL has only
//! `hostaddr` and no host name, `prefer` connects without TLS, and the modes that require TLS
//! are refused: TLS needs a name for the server.
//!
//! Crypto is rustls with the `ring` provider, the same as async-nats'.

use std::fmt;
use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::str::FromStr;
use std::sync::Arc;

use futures::Stream;
use outbox_core::redact::redact_url;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio_postgres::config::Host;
use tokio_postgres::tls::MakeTlsConnect;
use tokio_postgres::{AsyncMessage, Client, NoTls, Socket};

pub use tokio_postgres_rustls::MakeRustlsConnect;

/// The connection [`PgConnectOptions::connect`] returns: drive it (spawn it) for the client to
/// work.
pub type PgConnection =
    tokio_postgres::Connection<Socket, <MakeRustlsConnect as MakeTlsConnect<Socket>>::Stream>;

/// libpq's `sslmode`: whether the connection is encrypted and what of the server's certificate
/// is checked. See the [module table](self).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SslMode {
    /// No TLS.
    Disable,
    /// TLS if the server offers it, plaintext otherwise.
    #[default]
    Prefer,
    /// TLS or no connection.
    Require,
    /// TLS with a certificate chain that leads to a trusted root.
    VerifyCa,
    /// TLS with a trusted chain and a certificate that names the host connected to.
    VerifyFull,
}

impl SslMode {
    /// The name used in URLs: `disable`, `prefer`, `require`, `verify-ca`, `verify-full`.
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }

    /// Whether the connection fails rather than go unencrypted.
    pub fn requires_tls(self) -> bool {
        matches!(
            self,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull
        )
    }

    fn tokio_postgres(self) -> tokio_postgres::config::SslMode {
        match self {
            SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => {
                tokio_postgres::config::SslMode::Require
            }
        }
    }
}

impl fmt::Display for SslMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for SslMode {
    type Err = ConnectOptionsError;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        match value {
            "disable" => Ok(SslMode::Disable),
            "prefer" => Ok(SslMode::Prefer),
            "require" => Ok(SslMode::Require),
            "verify-ca" => Ok(SslMode::VerifyCa),
            "verify-full" => Ok(SslMode::VerifyFull),
            other => Err(ConnectOptionsError::InvalidSslMode {
                value: other.to_owned(),
            }),
        }
    }
}

/// Whose certificates the server's chain must lead to.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RootCerts {
    /// The certificates in this PEM file (`sslrootcert=/path`).
    File(PathBuf),
    /// The operating system's trusted roots (`sslrootcert=system`, or `verify-ca` /
    /// `verify-full` without `sslrootcert`).
    System,
}

/// Where the password came from.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum PasswordSource {
    /// No password is sent (the server may not ask for one).
    None,
    /// The URL (`user:password@` or `password=`), or the `tokio_postgres::Config` given.
    Url,
    /// `PGPASSWORD`.
    Environment,
    /// A line of this password file.
    PasswordFile(PathBuf),
}

/// Why a database URL cannot be used. The URL is quoted with its password masked, and no
/// variant carries a password.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectOptionsError {
    /// The URL does not parse.
    #[error("invalid database url {url}: {reason}")]
    InvalidUrl {
        /// The URL, password masked.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// `sslmode` has an unknown value.
    #[error(
        "invalid sslmode {value:?}: expected disable, prefer, require, verify-ca or verify-full"
    )]
    InvalidSslMode {
        /// The value given.
        value: String,
    },
    /// A TLS mode needs a host name (not a socket directory, not only `hostaddr`).
    #[error("sslmode={mode} needs a host name{why}")]
    NeedsHostName {
        /// The mode.
        mode: SslMode,
        /// What the URL has instead.
        why: &'static str,
    },
    /// Parameters that do not go together, or a missing partner (`sslcert` without `sslkey`).
    #[error("{0}")]
    Conflict(String),
    /// A file named by the URL or the environment cannot be read.
    #[error("cannot read {what} {}: {source}", path.display())]
    ReadFile {
        /// `"CA file"`, `"client certificate"`, `"client key"` or `"password file"`.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The reason.
        #[source]
        source: io::Error,
    },
    /// A file was read but holds nothing usable.
    #[error("{what} {} is unusable: {reason}", path.display())]
    InvalidFile {
        /// `"CA file"`, `"client certificate"`, `"client key"` or `"password file"`.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The system's root certificates could not be loaded.
    #[error("no system root certificates to verify the server with: {0}")]
    NoSystemRoots(String),
    /// rustls refused the TLS setup (for example a key that does not match its certificate).
    #[error("tls setup failed: {0}")]
    Tls(#[source] rustls::Error),
}

/// Connection settings for PostgreSQL: a `tokio_postgres::Config` and the TLS connector its
/// `sslmode`, root and client certificates call for.
///
/// Build it from a URL with [`from_url`](Self::from_url) (libpq's parameters and environment, see
/// the [module documentation](self)), or from a `tokio_postgres::Config` with
/// [`from_config`](Self::from_config). Every file is read while building, so a missing CA file
/// or a password file with loose permissions fails at startup, with a message that names the
/// file, not at the first connection. `Display` and `Debug` show the URL with its password
/// masked.
///
/// # Examples
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use outbox_postgres::{PgConfig, PgConnectOptions, PgOutbox, PgStore, SslMode};
///
/// let options = PgConnectOptions::from_url(
///     "postgres://app@db.internal/orders?sslmode=verify-full&sslrootcert=/etc/ssl/db-ca.pem",
/// )?;
/// assert_eq!(options.ssl_mode(), SslMode::VerifyFull);
///
/// // A client of your own:
/// let (client, connection) = options.connect().await?;
/// tokio::spawn(connection);
///
/// // The relay's store:
/// let outbox = PgOutbox::new(PgConfig::default())?;
/// let store = PgStore::with_connect_options(&outbox, &options);
///
/// // A deadpool-postgres pool:
/// let manager = options.deadpool_manager(deadpool_postgres::ManagerConfig::default());
/// let pool = deadpool_postgres::Pool::builder(manager).max_size(8).build()?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct PgConnectOptions {
    config: tokio_postgres::Config,
    ssl_mode: SslMode,
    root_certs: Option<RootCerts>,
    client_cert: Option<(PathBuf, PathBuf)>,
    password_source: PasswordSource,
    redacted: String,
    tls: MakeRustlsConnect,
}

impl fmt::Debug for PgConnectOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgConnectOptions")
            .field("url", &self.redacted)
            .field("ssl_mode", &self.ssl_mode)
            .field("root_certs", &self.root_certs)
            .field("client_cert", &self.client_cert)
            .field("password_source", &self.password_source)
            .finish_non_exhaustive()
    }
}

impl fmt::Display for PgConnectOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted)
    }
}

impl FromStr for PgConnectOptions {
    type Err = ConnectOptionsError;

    fn from_str(url: &str) -> Result<Self, Self::Err> {
        Self::from_url(url)
    }
}

/// The parameters this module handles itself; the rest goes to tokio-postgres.
const OWN_PARAMS: [&str; 5] = ["sslmode", "sslrootcert", "sslcert", "sslkey", "passfile"];

impl PgConnectOptions {
    /// Reads a `postgres://` URL or a libpq `key=value` string, with libpq's environment
    /// variables (`PGPASSWORD`, `PGSSLMODE`, ...) as fallbacks, and reads the files it names.
    ///
    /// # Errors
    ///
    /// A [`ConnectOptionsError`] naming the problem: a URL tokio-postgres refuses, an unknown
    /// `sslmode`, `verify-full` without a host name, a file that cannot be read or parsed.
    pub fn from_url(url: &str) -> Result<Self, ConnectOptionsError> {
        Self::from_url_with_env(url, |name| std::env::var(name).ok())
    }

    /// Like [`from_url`](Self::from_url), with `env` in place of the process environment
    /// (`env("PGPASSWORD")`, `env("HOME")`, ...): for tests, and for services that keep their
    /// settings elsewhere.
    ///
    /// # Errors
    ///
    /// As [`from_url`](Self::from_url).
    pub fn from_url_with_env(
        url: &str,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConnectOptionsError> {
        let redacted = redact_url(url);
        let invalid = |reason: String| ConnectOptionsError::InvalidUrl {
            url: redacted.clone(),
            reason,
        };
        let (rest, own) = split_params(url).map_err(invalid)?;
        let mut config = tokio_postgres::Config::from_str(&rest)
            .map_err(|e| invalid(outbox_core::redact::error_chain(&e)))?;
        let param = |name: &str, var: &str| {
            own.iter()
                .rev()
                .find(|(key, _)| key == name)
                .map(|(_, value)| value.clone())
                .or_else(|| env(var))
                .filter(|value| !value.is_empty())
        };
        let root_certs = param("sslrootcert", "PGSSLROOTCERT").map(|value| {
            if value == "system" {
                RootCerts::System
            } else {
                RootCerts::File(PathBuf::from(value))
            }
        });
        let ssl_mode = match param("sslmode", "PGSSLMODE") {
            Some(value) => value.parse()?,
            // libpq: `sslrootcert=system` makes verify-full the default.
            None if root_certs == Some(RootCerts::System) => SslMode::VerifyFull,
            None => SslMode::Prefer,
        };
        let client_cert = match (param("sslcert", "PGSSLCERT"), param("sslkey", "PGSSLKEY")) {
            (Some(cert), Some(key)) => Some((PathBuf::from(cert), PathBuf::from(key))),
            (None, None) => None,
            (Some(_), None) => {
                return Err(ConnectOptionsError::Conflict(
                    "sslcert is set but sslkey is not: a client certificate needs its key"
                        .to_owned(),
                ));
            }
            (None, Some(_)) => {
                return Err(ConnectOptionsError::Conflict(
                    "sslkey is set but sslcert is not: a client key needs its certificate"
                        .to_owned(),
                ));
            }
        };
        let password_source = if config.get_password().is_some() {
            PasswordSource::Url
        } else if let Some(password) = env("PGPASSWORD").filter(|p| !p.is_empty()) {
            config.password(password);
            PasswordSource::Environment
        } else {
            let explicit = param("passfile", "PGPASSFILE").map(PathBuf::from);
            let default = env("HOME").map(|home| Path::new(&home).join(".pgpass"));
            match password_from_file(&config, explicit, default)? {
                Some((password, path)) => {
                    config.password(password);
                    PasswordSource::PasswordFile(path)
                }
                None => PasswordSource::None,
            }
        };
        Self::build(
            config,
            ssl_mode,
            root_certs,
            client_cert,
            password_source,
            redacted,
        )
    }

    /// Options for a `tokio_postgres::Config` you built: its `sslmode` (`disable`, `prefer` or
    /// `require`), with no certificate checks (libpq's meaning of those modes without
    /// `sslrootcert`). Use [`from_url`](Self::from_url) for verification.
    ///
    /// # Errors
    ///
    /// [`ConnectOptionsError::NeedsHostName`] for `require` with only a `hostaddr`.
    pub fn from_config(config: tokio_postgres::Config) -> Result<Self, ConnectOptionsError> {
        let ssl_mode = match config.get_ssl_mode() {
            tokio_postgres::config::SslMode::Disable => SslMode::Disable,
            tokio_postgres::config::SslMode::Prefer => SslMode::Prefer,
            _ => SslMode::Require,
        };
        let password_source = if config.get_password().is_some() {
            PasswordSource::Url
        } else {
            PasswordSource::None
        };
        let redacted = describe_config(&config);
        Self::build(config, ssl_mode, None, None, password_source, redacted)
    }

    fn build(
        mut config: tokio_postgres::Config,
        mut ssl_mode: SslMode,
        root_certs: Option<RootCerts>,
        client_cert: Option<(PathBuf, PathBuf)>,
        password_source: PasswordSource,
        redacted: String,
    ) -> Result<Self, ConnectOptionsError> {
        if root_certs == Some(RootCerts::System) && ssl_mode != SslMode::VerifyFull {
            return Err(ConnectOptionsError::Conflict(format!(
                "sslrootcert=system needs sslmode=verify-full, not {ssl_mode}: any public \
                 certificate authority could vouch for another host"
            )));
        }
        let hosts = config.get_hosts();
        if ssl_mode == SslMode::VerifyFull {
            #[cfg(unix)]
            if hosts.iter().any(|h| matches!(h, Host::Unix(_))) {
                return Err(ConnectOptionsError::NeedsHostName {
                    mode: ssl_mode,
                    why: ", not a socket directory (TLS runs over TCP only)",
                });
            }
        }
        if hosts.is_empty() && !config.get_hostaddrs().is_empty() {
            match ssl_mode {
                SslMode::Disable => {}
                // TLS would need a server name; without one, connect as before TLS existed.
                SslMode::Prefer => ssl_mode = SslMode::Disable,
                _ => {
                    return Err(ConnectOptionsError::NeedsHostName {
                        mode: ssl_mode,
                        why: ": the URL has only hostaddr (add host=NAME for the certificate)",
                    });
                }
            }
        }
        if hosts.is_empty() && config.get_hostaddrs().is_empty() && ssl_mode.requires_tls() {
            return Err(ConnectOptionsError::NeedsHostName {
                mode: ssl_mode,
                why: ": the URL has no host",
            });
        }
        config.ssl_mode(ssl_mode.tokio_postgres());
        let tls = client_config(ssl_mode, root_certs.as_ref(), client_cert.as_ref())?;
        Ok(Self {
            config,
            ssl_mode,
            root_certs,
            client_cert,
            password_source,
            redacted,
            tls: MakeRustlsConnect::new(tls),
        })
    }

    /// Why the replication stream of
    /// [`EnqueueMode::WalMessage`](crate::EnqueueMode::WalMessage) cannot follow these options,
    /// if it cannot: it has no TLS, so an `sslmode` that requires TLS rules it out.
    pub(crate) fn replication_refusal(&self) -> Option<String> {
        self.ssl_mode.requires_tls().then(|| {
            format!(
                "EnqueueMode::WalMessage streams WAL without TLS, and sslmode={} requires it: \
                 use EnqueueMode::Insert, or a connection without TLS (a local socket, \
                 sslmode=disable or prefer)",
                self.ssl_mode
            )
        })
    }

    /// The tokio-postgres settings (host, user, database, timeouts, ...). Its `ssl_mode` is
    /// the coarse one tokio-postgres knows; [`ssl_mode`](Self::ssl_mode) is the whole story.
    pub fn config(&self) -> &tokio_postgres::Config {
        &self.config
    }

    /// The tokio-postgres settings, to change timeouts, `application_name`, keepalives. Leave
    /// `ssl_mode` alone: the TLS connector was built for [`ssl_mode`](Self::ssl_mode).
    pub fn config_mut(&mut self) -> &mut tokio_postgres::Config {
        &mut self.config
    }

    /// The TLS mode.
    pub fn ssl_mode(&self) -> SslMode {
        self.ssl_mode
    }

    /// The roots the server's certificate is checked against, if it is checked.
    pub fn root_certs(&self) -> Option<&RootCerts> {
        self.root_certs.as_ref()
    }

    /// Where the password came from.
    pub fn password_source(&self) -> &PasswordSource {
        &self.password_source
    }

    /// The TLS connector for tokio-postgres and deadpool-postgres. With `sslmode=disable` it is
    /// never used.
    pub fn tls(&self) -> MakeRustlsConnect {
        self.tls.clone()
    }

    /// The URL with its password masked, as `Display` shows it.
    pub fn redacted(&self) -> &str {
        &self.redacted
    }

    /// Connects once. Spawn the returned connection; the client works while it runs.
    ///
    /// # Errors
    ///
    /// tokio-postgres' error: unreachable server, TLS handshake or certificate check failed,
    /// authentication refused. Its message holds no password.
    pub async fn connect(&self) -> Result<(Client, PgConnection), tokio_postgres::Error> {
        self.config.connect(self.tls()).await
    }

    /// A deadpool-postgres manager that connects with these options.
    #[cfg(feature = "deadpool")]
    pub fn deadpool_manager(
        &self,
        config: deadpool_postgres::ManagerConfig,
    ) -> deadpool_postgres::Manager {
        deadpool_postgres::Manager::from_config(self.config.clone(), self.tls(), config)
    }
}

/// How a store's sessions connect: without TLS (a store made from a bare
/// `tokio_postgres::Config`, as before TLS support) or with a [`PgConnectOptions`]' connector.
#[derive(Clone)]
pub(crate) enum Tls {
    Plain,
    Rustls(MakeRustlsConnect),
}

impl fmt::Debug for Tls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Tls::Plain => "Plain",
            Tls::Rustls(_) => "Rustls",
        })
    }
}

/// A connection to drive as a task.
pub(crate) type Driver = Pin<Box<dyn Future<Output = Result<(), tokio_postgres::Error>> + Send>>;

/// A connection read for its notifications.
pub(crate) type Messages =
    Pin<Box<dyn Stream<Item = Result<AsyncMessage, tokio_postgres::Error>> + Send>>;

impl Tls {
    /// Connects; the returned future drives the connection.
    pub(crate) async fn connect(
        &self,
        db: &tokio_postgres::Config,
    ) -> Result<(Client, Driver), tokio_postgres::Error> {
        match self {
            Tls::Plain => {
                let (client, connection) = db.connect(NoTls).await?;
                Ok((client, Box::pin(connection)))
            }
            Tls::Rustls(tls) => {
                let (client, connection) = db.connect(tls.clone()).await?;
                Ok((client, Box::pin(connection)))
            }
        }
    }

    /// Connects; the returned stream drives the connection and yields its notifications.
    pub(crate) async fn connect_for_messages(
        &self,
        db: &tokio_postgres::Config,
    ) -> Result<(Client, Messages), tokio_postgres::Error> {
        match self {
            Tls::Plain => {
                let (client, mut connection) = db.connect(NoTls).await?;
                let messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
                Ok((client, Box::pin(messages)))
            }
            Tls::Rustls(tls) => {
                let (client, mut connection) = db.connect(tls.clone()).await?;
                let messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
                Ok((client, Box::pin(messages)))
            }
        }
    }
}

/// Splits `url` into what tokio-postgres parses and this module's own parameters (decoded).
fn split_params(url: &str) -> Result<(String, Vec<(String, String)>), String> {
    let trimmed = url.trim();
    if trimmed.starts_with("postgres://") || trimmed.starts_with("postgresql://") {
        split_url_params(trimmed)
    } else if trimmed.contains("://") {
        Err("expected postgres://user@host[:port]/database or key=value pairs".to_owned())
    } else {
        split_keyword_params(trimmed)
    }
}

fn split_url_params(url: &str) -> Result<(String, Vec<(String, String)>), String> {
    // tokio-postgres reads the user info up to the first '@'; the query starts after it.
    let after_userinfo = url.find('@').map_or(0, |at| at + 1);
    let Some(q) = url[after_userinfo..].find('?').map(|i| i + after_userinfo) else {
        return Ok((url.to_owned(), Vec::new()));
    };
    let (base, query) = (&url[..q], &url[q + 1..]);
    let mut kept = Vec::new();
    let mut own = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let key = decode(key)?;
        if OWN_PARAMS.contains(&key.as_str()) {
            own.push((key, decode(value)?));
        } else {
            kept.push(pair);
        }
    }
    let rest = if kept.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    Ok((rest, own))
}

fn decode(text: &str) -> Result<String, String> {
    percent_encoding::percent_decode_str(text)
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| "a parameter is not valid UTF-8 once %-decoded".to_owned())
}

/// libpq's `key = value` form: values bare or single-quoted, with `\` escapes.
fn split_keyword_params(text: &str) -> Result<(String, Vec<(String, String)>), String> {
    let mut kept = Vec::new();
    let mut own = Vec::new();
    let mut rest = text.trim_start();
    while !rest.is_empty() {
        let eq = rest
            .find('=')
            .ok_or_else(|| "expected key=value pairs".to_owned())?;
        let key = rest[..eq].trim();
        if key.is_empty() || key.contains(char::is_whitespace) {
            return Err("expected key=value pairs".to_owned());
        }
        let after = rest[eq + 1..].trim_start();
        let (value, raw_len) = keyword_value(after)?;
        if OWN_PARAMS.contains(&key) {
            own.push((key.to_owned(), value));
        } else {
            kept.push(format!("{key}={}", &after[..raw_len]));
        }
        rest = after[raw_len..].trim_start();
    }
    Ok((kept.join(" "), own))
}

/// The value at the start of `text`, unescaped, and how many bytes it took.
fn keyword_value(text: &str) -> Result<(String, usize), String> {
    let mut value = String::new();
    let mut chars = text.char_indices();
    if text.starts_with('\'') {
        chars.next();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => value.extend(chars.next().map(|(_, c)| c)),
                '\'' => return Ok((value, i + 1)),
                c => value.push(c),
            }
        }
        Err("a quoted value is not closed".to_owned())
    } else {
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => value.extend(chars.next().map(|(_, c)| c)),
                c if c.is_whitespace() => return Ok((value, i)),
                c => value.push(c),
            }
        }
        Ok((value, text.len()))
    }
}

/// A description of a config without its password, for `Display`.
fn describe_config(config: &tokio_postgres::Config) -> String {
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(i, host)| {
            let name = match host {
                Host::Tcp(name) => name.clone(),
                #[cfg(unix)]
                Host::Unix(path) => path.display().to_string(),
            };
            match config.get_ports().get(i).or(config.get_ports().first()) {
                Some(port) => format!("{name}:{port}"),
                None => name,
            }
        })
        .collect();
    let user = config
        .get_user()
        .map(|u| format!("{u}@"))
        .unwrap_or_default();
    let db = config.get_dbname().unwrap_or_default();
    format!("postgres://{user}{}/{db}", hosts.join(","))
}

/// The password of the first line of the password file that matches the config, trying the
/// hosts in order. `explicit` (from `passfile` or `PGPASSFILE`) must be readable and private;
/// `default` (`~/.pgpass`) is skipped when it is missing.
fn password_from_file(
    config: &tokio_postgres::Config,
    explicit: Option<PathBuf>,
    default: Option<PathBuf>,
) -> Result<Option<(String, PathBuf)>, ConnectOptionsError> {
    let (path, required) = match (explicit, default) {
        (Some(path), _) => (path, true),
        (None, Some(path)) => (path, false),
        (None, None) => return Ok(None),
    };
    let Some(user) = config.get_user() else {
        return Ok(None);
    };
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if !required && e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(ConnectOptionsError::ReadFile {
                what: "password file",
                path,
                source,
            });
        }
    };
    if let Some(reason) = loose_permissions(&path) {
        if required {
            return Err(ConnectOptionsError::InvalidFile {
                what: "password file",
                path,
                reason,
            });
        }
        tracing::warn!(path = %path.display(), "password file not used: {reason}");
        return Ok(None);
    }
    let dbname = config.get_dbname().unwrap_or(user);
    let candidates = pgpass_hosts(config);
    for (host, port) in &candidates {
        for line in text.lines() {
            if let Some(password) = pgpass_match(line, host, *port, dbname, user) {
                return Ok(Some((password, path)));
            }
        }
    }
    Ok(None)
}

#[cfg(unix)]
fn loose_permissions(path: &Path) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).ok()?.permissions().mode();
    (mode & 0o077 != 0).then(|| {
        format!(
            "it has group or world access (mode {:o}); permissions should be u=rw (0600) or less",
            mode & 0o777
        )
    })
}

#[cfg(not(unix))]
fn loose_permissions(_path: &Path) -> Option<String> {
    None
}

/// The (host, port) pairs a password file line may name, in connection order: libpq matches
/// the host name, else the host address, else `localhost`; a socket directory also matches
/// `localhost`.
fn pgpass_hosts(config: &tokio_postgres::Config) -> Vec<(Vec<String>, u16)> {
    let ports = config.get_ports();
    let port = |i: usize| ports.get(i).or(ports.first()).copied().unwrap_or(5432);
    let hosts = config.get_hosts();
    if hosts.is_empty() {
        let addrs = config.get_hostaddrs();
        if addrs.is_empty() {
            return vec![(vec!["localhost".to_owned()], port(0))];
        }
        return addrs
            .iter()
            .enumerate()
            .map(|(i, addr)| (vec![addr.to_string()], port(i)))
            .collect();
    }
    hosts
        .iter()
        .enumerate()
        .map(|(i, host)| {
            let names = match host {
                Host::Tcp(name) => vec![name.clone()],
                #[cfg(unix)]
                Host::Unix(path) => vec![path.display().to_string(), "localhost".to_owned()],
            };
            (names, port(i))
        })
        .collect()
}

/// The password of a `.pgpass` line (`host:port:database:user:password`, `*` matching
/// anything, `\` escaping `:` and `\`) if the line matches.
fn pgpass_match(
    line: &str,
    hosts: &[String],
    port: u16,
    dbname: &str,
    user: &str,
) -> Option<String> {
    if line.starts_with('#') || line.trim().is_empty() {
        return None;
    }
    let mut fields: Vec<String> = Vec::with_capacity(4);
    let mut field = String::new();
    let mut chars = line.chars();
    while fields.len() < 4 {
        match chars.next()? {
            '\\' => field.extend(chars.next()),
            ':' => fields.push(std::mem::take(&mut field)),
            c => field.push(c),
        }
    }
    let matches = |pattern: &str, value: &str| pattern == "*" || pattern == value;
    let ok = hosts.iter().any(|h| matches(&fields[0], h))
        && matches(&fields[1], &port.to_string())
        && matches(&fields[2], dbname)
        && matches(&fields[3], user);
    if !ok {
        return None;
    }
    let mut password = String::new();
    while let Some(c) = chars.next() {
        match c {
            '\\' => password.extend(chars.next()),
            c => password.push(c),
        }
    }
    Some(password)
}

/// What the server's certificate is checked against: nothing or a chain of trust only (see
/// [`LaxVerifier`]), or a chain of trust and the host name.
enum Verification {
    Lax(Option<RootCertStore>),
    Full(RootCertStore),
}

fn client_config(
    mode: SslMode,
    root_certs: Option<&RootCerts>,
    client_cert: Option<&(PathBuf, PathBuf)>,
) -> Result<ClientConfig, ConnectOptionsError> {
    let verification = match (mode, root_certs) {
        (SslMode::Disable, _) | (SslMode::Prefer | SslMode::Require, None) => {
            Verification::Lax(None)
        }
        (SslMode::Prefer | SslMode::Require | SslMode::VerifyCa, Some(roots)) => {
            Verification::Lax(Some(load_roots(roots)?))
        }
        (SslMode::VerifyCa, None) => Verification::Lax(Some(load_roots(&RootCerts::System)?)),
        (SslMode::VerifyFull, roots) => {
            Verification::Full(load_roots(roots.unwrap_or(&RootCerts::System))?)
        }
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(ConnectOptionsError::Tls)?;
    let builder = match verification {
        Verification::Lax(roots) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(LaxVerifier {
                roots,
                algorithms: provider.signature_verification_algorithms,
            })),
        Verification::Full(roots) => builder.with_root_certificates(roots),
    };
    let mut config = match client_cert {
        Some((cert, key)) => {
            let certs = read_certs(cert, "client certificate")?;
            let key_pem = read_file(key, "client key")?;
            let key_der = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
                ConnectOptionsError::InvalidFile {
                    what: "client key",
                    path: key.clone(),
                    reason: format!("no PEM private key: {e}"),
                }
            })?;
            builder
                .with_client_auth_cert(certs, key_der)
                .map_err(ConnectOptionsError::Tls)?
        }
        None => builder.with_no_client_auth(),
    };
    // PostgreSQL 17's direct TLS negotiation requires it; earlier servers ignore it.
    config.alpn_protocols = vec![b"postgresql".to_vec()];
    Ok(config)
}

fn read_file(path: &Path, what: &'static str) -> Result<Vec<u8>, ConnectOptionsError> {
    std::fs::read(path).map_err(|source| ConnectOptionsError::ReadFile {
        what,
        path: path.to_owned(),
        source,
    })
}

fn read_certs(
    path: &Path,
    what: &'static str,
) -> Result<Vec<CertificateDer<'static>>, ConnectOptionsError> {
    let pem = read_file(path, what)?;
    let invalid = |reason: String| ConnectOptionsError::InvalidFile {
        what,
        path: path.to_owned(),
        reason,
    };
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(format!("bad PEM: {e}")))?;
    if certs.is_empty() {
        return Err(invalid("no PEM certificate in it".to_owned()));
    }
    Ok(certs)
}

fn load_roots(roots: &RootCerts) -> Result<RootCertStore, ConnectOptionsError> {
    let mut store = RootCertStore::empty();
    match roots {
        RootCerts::File(path) => {
            for cert in read_certs(path, "CA file")? {
                store
                    .add(cert)
                    .map_err(|e| ConnectOptionsError::InvalidFile {
                        what: "CA file",
                        path: path.clone(),
                        reason: format!("not a usable CA certificate: {e}"),
                    })?;
            }
        }
        RootCerts::System => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _ignored) = store.add_parsable_certificates(found.certs);
            if added == 0 {
                let errors: Vec<String> = found.errors.iter().map(ToString::to_string).collect();
                return Err(ConnectOptionsError::NoSystemRoots(if errors.is_empty() {
                    "none found (give sslrootcert=/path/to/ca.pem)".to_owned()
                } else {
                    errors.join("; ")
                }));
            }
        }
    }
    Ok(store)
}

/// The verifications below `sslmode=verify-full`, which check no host name.
///
/// Without `roots` (`sslmode=prefer` or `require` without a root certificate): encrypt, trust
/// any certificate (libpq's behaviour). With `roots` (`sslmode=verify-ca`, or a root certificate
/// given to `prefer` or `require`): the chain must lead to one of them. Either way the
/// handshake's signatures are checked, so the session is bound to the certificate the server
/// showed.
#[derive(Debug)]
struct LaxVerifier {
    roots: Option<RootCertStore>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for LaxVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let Some(roots) = &self.roots {
            let cert = rustls::server::ParsedCertificate::try_from(end_entity)?;
            rustls::client::verify_server_cert_signed_by_trust_anchor(
                &cert,
                roots,
                intermediates,
                now,
                self.algorithms.all,
            )?;
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn parse(url: &str) -> Result<PgConnectOptions, ConnectOptionsError> {
        PgConnectOptions::from_url_with_env(url, no_env)
    }

    #[test]
    fn modes_map_to_tokio_postgres() {
        use tokio_postgres::config::SslMode as Tp;
        for (url, mode, tp) in [
            ("postgres://u@h/db", SslMode::Prefer, Tp::Prefer),
            (
                "postgres://u@h/db?sslmode=disable",
                SslMode::Disable,
                Tp::Disable,
            ),
            (
                "postgres://u@h/db?sslmode=require",
                SslMode::Require,
                Tp::Require,
            ),
            (
                "postgres://u@h/db?sslmode=verify-full&application_name=x",
                SslMode::VerifyFull,
                Tp::Require,
            ),
            (
                "host=h user=u sslmode=verify-full",
                SslMode::VerifyFull,
                Tp::Require,
            ),
        ] {
            let options = parse(url).unwrap_or_else(|e| panic!("{url}: {e}"));
            assert_eq!(options.ssl_mode(), mode, "{url}");
            assert_eq!(options.config().get_ssl_mode(), tp, "{url}");
        }
        let options = parse("postgres://u@h/db?sslmode=verify-full&application_name=x").unwrap();
        assert_eq!(options.config().get_application_name(), Some("x"));
        assert_eq!(options.root_certs(), None);
    }

    #[test]
    fn bad_settings_say_why() {
        for (url, needle) in [
            (
                "postgres://u@h/db?sslmode=verify",
                "invalid sslmode \"verify\"",
            ),
            ("postgres://u@/db?sslmode=verify-full", "needs a host name"),
            (
                "postgres://u@%2Frun%2Fpostgresql/db?sslmode=verify-full",
                "not a socket directory",
            ),
            (
                "postgres://u@h/db?sslmode=require&sslrootcert=/nonexistent/ca.pem",
                "cannot read CA file /nonexistent/ca.pem",
            ),
            (
                "postgres://u@h/db?sslcert=/c.pem",
                "sslcert is set but sslkey is not",
            ),
            (
                "postgres://u@h/db?sslmode=require&sslrootcert=system",
                "sslrootcert=system needs sslmode=verify-full",
            ),
            ("postgres://u:s3cr3t@h/db?bogus=1", "unknown option"),
            ("postgres://u:s3cr3t@h:port/db", "invalid database url"),
            ("mysql://u:s3cr3t@h/db", "expected postgres://"),
            ("host=h password='s3cr3t", "not closed"),
            (
                "postgres://u@h/db?passfile=/nonexistent/pgpass",
                "cannot read password file /nonexistent/pgpass",
            ),
        ] {
            let error = parse(url).expect_err(url).to_string();
            assert!(error.contains(needle), "{url}: {error}");
            assert!(!error.contains("s3cr3t"), "{url}: {error}");
        }
    }

    #[test]
    fn passwords_come_from_url_then_environment_then_file() {
        let dir = std::env::temp_dir().join(format!("outbox-pgpass-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let passfile = dir.join("pgpass");
        std::fs::write(
            &passfile,
            "# comment\nother:*:*:*:wrong\nh:5432:db:u:from\\:file\n*:*:*:*:fallback\n",
        )
        .unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&passfile, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        let file = passfile.display().to_string();
        let env = |name: &str| match name {
            "PGPASSWORD" => Some("from-env".to_owned()),
            _ => None,
        };
        let url = format!("postgres://u:from-url@h/db?passfile={file}");
        let options = PgConnectOptions::from_url_with_env(&url, env).unwrap();
        assert_eq!(options.config().get_password(), Some(&b"from-url"[..]));
        assert_eq!(options.password_source(), &PasswordSource::Url);

        let url = format!("postgres://u@h/db?passfile={file}");
        let options = PgConnectOptions::from_url_with_env(&url, env).unwrap();
        assert_eq!(options.config().get_password(), Some(&b"from-env"[..]));
        assert_eq!(options.password_source(), &PasswordSource::Environment);

        let options = parse(&url).unwrap();
        assert_eq!(options.config().get_password(), Some(&b"from:file"[..]));
        assert_eq!(
            options.password_source(),
            &PasswordSource::PasswordFile(passfile.clone())
        );
        let options = parse(&format!("postgres://x@h:6000/y?passfile={file}")).unwrap();
        assert_eq!(options.config().get_password(), Some(&b"fallback"[..]));

        // PGPASSFILE, and the default ~/.pgpass.
        let env_file = |name: &str| (name == "PGPASSFILE").then(|| file.clone());
        let options = PgConnectOptions::from_url_with_env("postgres://u@h/db", env_file).unwrap();
        assert_eq!(options.config().get_password(), Some(&b"from:file"[..]));
        let home = |name: &str| (name == "HOME").then(|| dir.display().to_string());
        let options = PgConnectOptions::from_url_with_env("postgres://u@h/db", home).unwrap();
        assert_eq!(options.password_source(), &PasswordSource::None);
        std::fs::copy(&passfile, dir.join(".pgpass")).unwrap();
        let options = PgConnectOptions::from_url_with_env("postgres://u@h/db", home).unwrap();
        assert_eq!(options.config().get_password(), Some(&b"from:file"[..]));

        // Nobody else may read a password file.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&passfile, std::fs::Permissions::from_mode(0o644)).unwrap();
            let error = parse(&url).unwrap_err().to_string();
            assert!(error.contains("group or world access"), "{error}");
            let hidden = dir.join(".pgpass");
            std::fs::set_permissions(&hidden, std::fs::Permissions::from_mode(0o644)).unwrap();
            let options = PgConnectOptions::from_url_with_env("postgres://u@h/db", home).unwrap();
            assert_eq!(options.password_source(), &PasswordSource::None);
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn environment_supplies_tls_settings() {
        let env = |name: &str| (name == "PGSSLMODE").then(|| "require".to_owned());
        let options = PgConnectOptions::from_url_with_env("postgres://u@h/db", env).unwrap();
        assert_eq!(options.ssl_mode(), SslMode::Require);
        let options =
            PgConnectOptions::from_url_with_env("postgres://u@h/db?sslmode=disable", env).unwrap();
        assert_eq!(options.ssl_mode(), SslMode::Disable);
    }

    #[test]
    fn keyword_values_keep_their_quotes() {
        let (rest, own) =
            split_params("host=h password='a b\\'c' sslmode = verify-ca sslrootcert='/x y'")
                .unwrap();
        assert_eq!(rest, "host=h password='a b\\'c'");
        assert_eq!(
            own,
            [
                ("sslmode".to_owned(), "verify-ca".to_owned()),
                ("sslrootcert".to_owned(), "/x y".to_owned())
            ]
        );
        let config = tokio_postgres::Config::from_str(&rest).unwrap();
        assert_eq!(config.get_password(), Some(&b"a b'c"[..]));
    }

    #[test]
    fn url_params_are_decoded() {
        let (rest, own) =
            split_params("postgres://u:p%3Fq@h/db?sslrootcert=%2Fa%20b&connect_timeout=3").unwrap();
        assert_eq!(rest, "postgres://u:p%3Fq@h/db?connect_timeout=3");
        assert_eq!(own, [("sslrootcert".to_owned(), "/a b".to_owned())]);
        let (rest, own) = split_params("postgres://u:p?q@h/db").unwrap();
        assert_eq!(rest, "postgres://u:p?q@h/db");
        assert!(own.is_empty());
    }

    #[test]
    fn display_and_debug_hide_the_password() {
        let options = parse("postgres://u:s3cr3t@h/db?sslmode=require").unwrap();
        let shown = format!("{options} {options:?}");
        assert!(!shown.contains("s3cr3t"), "{shown}");
        assert!(shown.contains("postgres://u:***@h/db"), "{shown}");
        let mut config = tokio_postgres::Config::new();
        config
            .host("h")
            .port(5433)
            .user("u")
            .password("s3cr3t")
            .dbname("d");
        let options = PgConnectOptions::from_config(config).unwrap();
        assert_eq!(options.to_string(), "postgres://u@h:5433/d");
        assert!(!format!("{options:?}").contains("s3cr3t"));
    }

    #[test]
    fn hostaddr_alone_cannot_carry_tls() {
        let options = parse("postgres://u@/db?hostaddr=127.0.0.1").unwrap();
        assert_eq!(options.ssl_mode(), SslMode::Disable);
        let error = parse("postgres://u@/db?hostaddr=127.0.0.1&sslmode=require").unwrap_err();
        assert!(error.to_string().contains("only hostaddr"), "{error}");
    }
}
