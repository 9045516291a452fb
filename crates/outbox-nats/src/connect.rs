//! Connecting: [`parse_url`] checks a server URL without connecting, [`NatsConnectOptions`]
//! adds TLS and credentials, [`connect`] connects with defaults.
//!
//! Every credential form of NATS is supported, one at a time:
//!
//! | Form | URL | [`NatsSecurity`] field | Environment ([`NatsSecurity::from_env`]) |
//! |---|---|---|---|
//! | user and password | `nats://user:password@host` | `user`, `password` | `NATS_USER`, `NATS_PASSWORD` |
//! | token | `nats://token@host` | `token` | `NATS_TOKEN` |
//! | NKey | — | `nkey_seed`, or `nkey_file` (a file holding the seed) | `NATS_NKEY` (the file) |
//! | JWT credentials (`.creds`) | — | `creds_file` | `NATS_CREDS` |
//!
//! TLS is used when a server is given as `tls://host:port`, when `tls_required` is set, when a
//! CA file or a client certificate is given (as in the Go client), or when the server demands
//! it. Without a CA file the system's roots are trusted. The crypto provider is rustls' `ring`.
//!
//! Secrets never leave this module in text: `Display` and `Debug` of the options, and every
//! [`Error`], show URLs with their passwords and tokens masked, and no seed or token at all.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use async_nats::{ConnectOptions, ServerAddr};
use outbox_core::redact::{Secret, redact_url};

use crate::Error;

/// Parses a NATS server URL, or a comma-separated list of them, without connecting.
///
/// Accepts `nats://host:port`, `tls://host:port` and `host:port` (the scheme defaults to
/// `nats`, the port to 4222), with optional `user:password@` or `token@`. Fails with
/// [`Error::InvalidUrl`] naming the problem; a password or token in the URL is masked in the
/// error.
///
/// # Examples
///
/// ```
/// assert_eq!(outbox_nats::parse_url("nats://127.0.0.1:4222")?.len(), 1);
/// assert_eq!(outbox_nats::parse_url("a:4222, b:4222")?.len(), 2);
/// let err = outbox_nats::parse_url("http://u:secret@host").unwrap_err();
/// assert!(!err.to_string().contains("secret"));
/// # Ok::<(), outbox_nats::Error>(())
/// ```
pub fn parse_url(url: &str) -> Result<Vec<ServerAddr>, Error> {
    let invalid = |reason: String| Error::InvalidUrl {
        url: redact_url(url),
        reason,
    };
    if url.trim().is_empty() {
        return Err(invalid("it is empty".to_owned()));
    }
    url.split(',')
        .map(str::trim)
        .map(|part| {
            if part.is_empty() {
                return Err(invalid("the server list has an empty entry".to_owned()));
            }
            let addr = ServerAddr::from_str(part).map_err(|e| invalid(parse_reason(&e)))?;
            match addr.scheme() {
                "nats" | "tls" => {}
                other => {
                    return Err(invalid(format!(
                        "scheme {other:?} is not supported (use nats:// or tls://)"
                    )));
                }
            }
            if addr.host().is_empty() {
                return Err(invalid("the host is missing".to_owned()));
            }
            Ok(addr)
        })
        .collect()
}

/// Connects to the NATS server(s) at `url` with async-nats' default options, after checking
/// the URL with [`parse_url`]. A `user:password@` or `token@` in the URL is used; for other
/// credentials and TLS settings, use [`NatsConnectOptions`].
///
/// Once connected, the client reconnects by itself forever; publishes during an outage wait
/// (bounded by the publishers' timeouts). The initial connection is tried once: on an
/// unreachable server this fails with a transient [`Error::Connect`] and the caller retries.
///
/// # Examples
///
/// ```no_run
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// match outbox_nats::connect("nats://127.0.0.1:4222").await {
///     Ok(client) => println!("connected to {}", client.server_info().server_name),
///     Err(e) if e.is_transient() => eprintln!("nats not reachable yet, retrying: {e}"),
///     Err(e) => eprintln!("giving up: {e}"),
/// }
/// # }
/// ```
pub async fn connect(url: &str) -> Result<async_nats::Client, Error> {
    NatsConnectOptions::new(url)?.connect().await
}

/// Like [`connect`], with your own async-nats options (credentials, TLS, name, event callback).
/// A `user:password@` or `token@` in the URL is added to `options`.
pub async fn connect_with_options(
    url: &str,
    options: ConnectOptions,
) -> Result<async_nats::Client, Error> {
    let parsed = NatsConnectOptions::new(url)?;
    let options = match &parsed.credentials {
        NatsCredentials::UserPassword { user, password } => {
            options.user_and_password(user.clone(), password.expose().to_owned())
        }
        NatsCredentials::Token(token) => options.token(token.expose().to_owned()),
        _ => options,
    };
    options
        .connect(parsed.servers.clone())
        .await
        .map_err(|source| Error::Connect {
            url: parsed.redacted,
            source,
        })
}

/// Credentials and TLS settings for a NATS connection, as configuration gives them: every
/// field optional, checked when applied with [`NatsConnectOptions::with_security`].
///
/// `Debug` shows paths and masks the secrets.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct NatsSecurity {
    /// A `.creds` file: the user JWT and its NKey seed (decentralized auth).
    pub creds_file: Option<PathBuf>,
    /// A file holding an NKey seed (`SU...`).
    pub nkey_file: Option<PathBuf>,
    /// An NKey seed (`SU...`) itself.
    pub nkey_seed: Option<Secret>,
    /// A token.
    pub token: Option<Secret>,
    /// A user name; needs `password`.
    pub user: Option<String>,
    /// The user's password; needs `user`.
    pub password: Option<Secret>,
    /// Refuse to connect without TLS, whatever the URL's scheme.
    pub tls_required: bool,
    /// A PEM file of the certificate authorities to trust instead of the system's roots.
    pub ca_file: Option<PathBuf>,
    /// A PEM client certificate, for servers that verify clients; needs `client_key`.
    pub client_cert: Option<PathBuf>,
    /// The client certificate's PEM private key; needs `client_cert`.
    pub client_key: Option<PathBuf>,
}

impl NatsSecurity {
    /// Reads the process environment: `NATS_CREDS`, `NATS_NKEY` (a seed file), `NATS_TOKEN`,
    /// `NATS_USER` and `NATS_PASSWORD`, `NATS_CA`, `NATS_CERT` and `NATS_KEY`, and
    /// `NATS_TLS_REQUIRED` (anything but `0`, `false`, `no`, `off`). Unset or empty variables
    /// are absent.
    pub fn from_env() -> Self {
        Self::from_env_with(|name| std::env::var(name).ok())
    }

    /// Like [`from_env`](Self::from_env), reading variables through `env`.
    pub fn from_env_with(env: impl Fn(&str) -> Option<String>) -> Self {
        let var = |name: &str| env(name).filter(|value| !value.is_empty());
        Self {
            creds_file: var("NATS_CREDS").map(PathBuf::from),
            nkey_file: var("NATS_NKEY").map(PathBuf::from),
            nkey_seed: None,
            token: var("NATS_TOKEN").map(Secret::from),
            user: var("NATS_USER"),
            password: var("NATS_PASSWORD").map(Secret::from),
            tls_required: var("NATS_TLS_REQUIRED").is_some_and(|v| {
                !matches!(
                    v.to_ascii_lowercase().as_str(),
                    "0" | "false" | "no" | "off" | "n" | "f"
                )
            }),
            ca_file: var("NATS_CA").map(PathBuf::from),
            client_cert: var("NATS_CERT").map(PathBuf::from),
            client_key: var("NATS_KEY").map(PathBuf::from),
        }
    }
}

/// The command-line flags of [`NatsSecurity`], each with its environment variable, for a
/// binary's `#[command(flatten)]` (feature `clap`). Secret values are never shown by `--help`
/// and print as `***` in `Debug`.
///
/// | Flag | Environment |
/// |---|---|
/// | `--nats-creds FILE` | `NATS_CREDS` |
/// | `--nats-nkey FILE` | `NATS_NKEY` |
/// | `--nats-token TOKEN` | `NATS_TOKEN` |
/// | `--nats-user USER`, `--nats-password PASSWORD` | `NATS_USER`, `NATS_PASSWORD` |
/// | `--nats-tls` | `NATS_TLS_REQUIRED` |
/// | `--nats-ca FILE` | `NATS_CA` |
/// | `--nats-cert FILE`, `--nats-key FILE` | `NATS_CERT`, `NATS_KEY` |
#[cfg(feature = "clap")]
#[derive(Clone, Debug, Default, clap::Args)]
#[non_exhaustive]
pub struct NatsSecurityArgs {
    /// NATS credentials file (.creds: a user JWT and its NKey seed).
    #[arg(
        long = "nats-creds",
        env = "NATS_CREDS",
        hide_env_values = true,
        value_name = "FILE"
    )]
    pub creds: Option<PathBuf>,
    /// File holding a NATS NKey seed (SU...).
    #[arg(
        long = "nats-nkey",
        env = "NATS_NKEY",
        hide_env_values = true,
        value_name = "FILE"
    )]
    pub nkey: Option<PathBuf>,
    /// NATS token (prefer the environment variable: other users can read command lines).
    #[arg(
        long = "nats-token",
        env = "NATS_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    pub token: Option<Secret>,
    /// NATS user; needs --nats-password.
    #[arg(
        long = "nats-user",
        env = "NATS_USER",
        hide_env_values = true,
        value_name = "USER"
    )]
    pub user: Option<String>,
    /// NATS password (prefer the environment variable: other users can read command lines).
    #[arg(
        long = "nats-password",
        env = "NATS_PASSWORD",
        hide_env_values = true,
        value_name = "PASSWORD"
    )]
    pub password: Option<Secret>,
    /// Refuse to talk to NATS without TLS (implied by tls:// URLs, --nats-ca and --nats-cert).
    #[arg(
        long = "nats-tls",
        env = "NATS_TLS_REQUIRED",
        hide_env_values = true,
        value_parser = clap::builder::FalseyValueParser::new()
    )]
    pub tls: bool,
    /// PEM file of the certificate authorities that sign the NATS server's certificate
    /// (default: the system's roots).
    #[arg(
        long = "nats-ca",
        env = "NATS_CA",
        hide_env_values = true,
        value_name = "FILE"
    )]
    pub ca: Option<PathBuf>,
    /// PEM client certificate for NATS servers that verify clients; needs --nats-key.
    #[arg(
        long = "nats-cert",
        env = "NATS_CERT",
        hide_env_values = true,
        value_name = "FILE"
    )]
    pub cert: Option<PathBuf>,
    /// PEM private key of --nats-cert.
    #[arg(
        long = "nats-key",
        env = "NATS_KEY",
        hide_env_values = true,
        value_name = "FILE"
    )]
    pub key: Option<PathBuf>,
}

#[cfg(feature = "clap")]
impl From<NatsSecurityArgs> for NatsSecurity {
    fn from(args: NatsSecurityArgs) -> Self {
        Self {
            creds_file: args.creds,
            nkey_file: args.nkey,
            nkey_seed: None,
            token: args.token,
            user: args.user,
            password: args.password,
            tls_required: args.tls,
            ca_file: args.ca,
            client_cert: args.cert,
            client_key: args.key,
        }
    }
}

/// How the client proves who it is. Secrets print as `***`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum NatsCredentials {
    /// None beyond what the URL holds (`user:password@` or `token@`).
    #[default]
    None,
    /// A user and password.
    UserPassword {
        /// The user.
        user: String,
        /// The password.
        password: Secret,
    },
    /// A token.
    Token(Secret),
    /// An NKey seed; the server knows its public key.
    NKey {
        /// The public key (`U...`), safe to show.
        public_key: String,
        /// The seed.
        seed: Secret,
    },
    /// The contents of a `.creds` file: a user JWT and its seed.
    Creds {
        /// The file it was read from.
        path: PathBuf,
        /// The file's contents.
        contents: Secret,
    },
}

impl NatsCredentials {
    /// A description without secrets: `"token"`, `"user alice with a password"`, ...
    pub fn describe(&self) -> String {
        match self {
            NatsCredentials::None => "no credentials".to_owned(),
            NatsCredentials::UserPassword { user, .. } => format!("user {user} with a password"),
            NatsCredentials::Token(_) => "a token".to_owned(),
            NatsCredentials::NKey { public_key, .. } => format!("nkey {public_key}"),
            NatsCredentials::Creds { path, .. } => {
                format!("credentials file {}", path.display())
            }
        }
    }
}

/// The client name a connection announces when none is set.
const DEFAULT_NAME: &str = "outbox";

/// Everything needed to connect to NATS: servers, credentials, TLS, client name.
///
/// Built from a URL ([`new`](Self::new)), or from `NATS_URL` and the `NATS_*` variables
/// ([`from_env`](Self::from_env)), then refined with [`with_security`](Self::with_security) and
/// the other builder methods. Files are read and checked while building, so a missing `.creds`
/// file or a malformed seed fails at startup with a message naming the file, not as an endless
/// retry. `Display` is the server list with secrets masked; `Debug` masks them too.
///
/// # Examples
///
/// ```no_run
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), outbox_nats::Error> {
/// use outbox_nats::{NatsConnectOptions, NatsSecurity};
///
/// let mut security = NatsSecurity::default();
/// security.creds_file = Some("/etc/outbox/relay.creds".into());
/// security.ca_file = Some("/etc/outbox/nats-ca.pem".into());
/// let options = NatsConnectOptions::new("tls://nats.internal:4222")?
///     .with_security(&security)?
///     .name("orders-relay");
/// let client = options.connect().await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct NatsConnectOptions {
    servers: Vec<ServerAddr>,
    redacted: String,
    url_has_credentials: bool,
    name: String,
    credentials: NatsCredentials,
    tls_required: bool,
    ca_file: Option<PathBuf>,
    client_cert: Option<(PathBuf, PathBuf)>,
    connection_timeout: Option<Duration>,
}

impl fmt::Debug for NatsConnectOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Not the servers themselves: a ServerAddr's Debug prints its password.
        f.debug_struct("NatsConnectOptions")
            .field("servers", &self.redacted)
            .field("name", &self.name)
            .field("credentials", &self.credentials)
            .field("tls_required", &self.tls_required)
            .field("ca_file", &self.ca_file)
            .field("client_cert", &self.client_cert)
            .field("connection_timeout", &self.connection_timeout)
            .finish()
    }
}

impl fmt::Display for NatsConnectOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted)
    }
}

impl NatsConnectOptions {
    /// Options for the server(s) at `url` (see [`parse_url`]). A `user:password@` or `token@`
    /// in the URL becomes the credentials (async-nats itself does not read them from URLs).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidUrl`] as [`parse_url`], and when the servers of a list carry different
    /// credentials.
    pub fn new(url: &str) -> Result<Self, Error> {
        let servers = parse_url(url)?;
        Self::from_servers(servers, redact_url(url))
    }

    /// Options for servers parsed elsewhere, taking their credentials as [`new`](Self::new)
    /// does.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidUrl`] when the servers carry different credentials.
    pub fn with_servers(servers: impl IntoIterator<Item = ServerAddr>) -> Result<Self, Error> {
        let servers: Vec<ServerAddr> = servers.into_iter().collect();
        let text = servers
            .iter()
            .map(|s| s.clone().into_inner().to_string())
            .collect::<Vec<_>>()
            .join(",");
        Self::from_servers(servers, redact_url(&text))
    }

    fn from_servers(servers: Vec<ServerAddr>, redacted: String) -> Result<Self, Error> {
        let mut credentials: Option<NatsCredentials> = None;
        let mut bare = Vec::with_capacity(servers.len());
        for server in servers {
            let found = url_credentials(&server);
            match (&credentials, found) {
                (_, None) => {}
                (None, Some(found)) => credentials = Some(found),
                (Some(known), Some(found)) if *known == found => {}
                (Some(_), Some(_)) => {
                    return Err(Error::InvalidUrl {
                        url: redacted,
                        reason: "the servers carry different credentials".to_owned(),
                    });
                }
            }
            bare.push(without_credentials(server));
        }
        let url_has_credentials = credentials.is_some();
        Ok(Self {
            servers: bare,
            redacted,
            url_has_credentials,
            name: DEFAULT_NAME.to_owned(),
            credentials: credentials.unwrap_or_default(),
            tls_required: false,
            ca_file: None,
            client_cert: None,
            connection_timeout: None,
        })
    }

    /// `NATS_URL` (default `nats://127.0.0.1:4222`) with the credentials and TLS settings of
    /// [`NatsSecurity::from_env`].
    ///
    /// # Errors
    ///
    /// As [`new`](Self::new) and [`with_security`](Self::with_security).
    pub fn from_env() -> Result<Self, Error> {
        let url = std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned());
        Self::new(&url)?.with_security(&NatsSecurity::from_env())
    }

    /// Applies credentials and TLS settings: reads the `.creds`, seed, CA and client
    /// certificate files and checks them.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] naming the problem, never a secret: two credential forms at once (the
    /// URL's `user:password@` counts), a user without a password or the reverse, a client
    /// certificate without its key, a file that cannot be read, a malformed `.creds` file or
    /// seed.
    pub fn with_security(mut self, security: &NatsSecurity) -> Result<Self, Error> {
        let mut forms: Vec<&str> = Vec::new();
        if self.url_has_credentials {
            forms.push("credentials in the URL");
        }
        let s = security;
        if s.creds_file.is_some() {
            forms.push("a credentials file");
        }
        if s.nkey_file.is_some() || s.nkey_seed.is_some() {
            forms.push("an nkey");
        }
        if s.token.is_some() {
            forms.push("a token");
        }
        if s.user.is_some() || s.password.is_some() {
            forms.push("a user and password");
        }
        if s.nkey_file.is_some() && s.nkey_seed.is_some() {
            return Err(config("give an nkey seed or an nkey seed file, not both"));
        }
        if forms.len() > 1 {
            return Err(config(&format!(
                "nats credentials: give one form, not {}",
                forms.join(" and ")
            )));
        }
        let credentials = if let Some(path) = &s.creds_file {
            let contents = read_secret_file(path, "nats credentials file")?;
            // Parsed here for the error; async-nats parses it again when connecting.
            ConnectOptions::new()
                .credentials(contents.expose())
                .map_err(|e| {
                    config(&format!(
                        "nats credentials file {} is invalid: {e}",
                        path.display()
                    ))
                })?;
            NatsCredentials::Creds {
                path: path.clone(),
                contents,
            }
        } else if let Some(path) = &s.nkey_file {
            let seed = read_secret_file(path, "nkey seed file")?;
            nkey(
                Secret::new(seed.expose().trim()),
                &format!("nkey seed file {}", path.display()),
            )?
        } else if let Some(seed) = &s.nkey_seed {
            nkey(seed.clone(), "nkey seed")?
        } else if let Some(token) = &s.token {
            if token.expose().is_empty() {
                return Err(config("the nats token is empty"));
            }
            NatsCredentials::Token(token.clone())
        } else {
            match (&s.user, &s.password) {
                (Some(user), Some(password)) => NatsCredentials::UserPassword {
                    user: user.clone(),
                    password: password.clone(),
                },
                (Some(user), None) => {
                    return Err(config(&format!(
                        "nats user {user} is given without a password"
                    )));
                }
                (None, Some(_)) => {
                    return Err(config("a nats password is given without a user"));
                }
                // None given here: keep the URL's, if any.
                (None, None) => self.credentials.clone(),
            }
        };
        if let Some(ca) = &s.ca_file {
            check_pem(ca, "nats CA file", "CERTIFICATE")?;
        }
        let client_cert = match (&s.client_cert, &s.client_key) {
            (Some(cert), Some(key)) => {
                check_pem(cert, "nats client certificate", "CERTIFICATE")?;
                check_pem(key, "nats client key", "PRIVATE KEY")?;
                Some((cert.clone(), key.clone()))
            }
            (None, None) => None,
            (Some(_), None) => {
                return Err(config("a nats client certificate is given without its key"));
            }
            (None, Some(_)) => {
                return Err(config("a nats client key is given without its certificate"));
            }
        };
        self.credentials = credentials;
        // As in the Go client: a CA or client certificate means TLS.
        self.tls_required = s.tls_required || s.ca_file.is_some() || client_cert.is_some();
        self.ca_file = s.ca_file.clone();
        self.client_cert = client_cert;
        Ok(self)
    }

    /// The client name the server shows (`connz`); default `outbox`.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// How long one attempt to reach a server may take (async-nats' default: 5 s).
    pub fn connection_timeout(mut self, timeout: Duration) -> Self {
        self.connection_timeout = Some(timeout);
        self
    }

    /// Refuses to connect without TLS, whatever the URL's scheme.
    pub fn require_tls(mut self, required: bool) -> Self {
        self.tls_required = required;
        self
    }

    /// The servers.
    pub fn servers(&self) -> &[ServerAddr] {
        &self.servers
    }

    /// The credentials (secrets masked in their `Debug`).
    pub fn credentials(&self) -> &NatsCredentials {
        &self.credentials
    }

    /// Whether the connection must use TLS: a `tls://` server, `tls_required`, a CA file or a
    /// client certificate.
    pub fn tls_required(&self) -> bool {
        self.tls_required || self.servers.iter().any(ServerAddr::tls_required)
    }

    /// The server list with secrets masked, as `Display` shows it.
    pub fn redacted(&self) -> &str {
        &self.redacted
    }

    /// The async-nats options these settings make, to add more of your own (an event
    /// callback, a reconnect policy) before [`connect_with`](Self::connect_with).
    ///
    /// # Errors
    ///
    /// [`Error::Config`] if the `.creds` contents no longer parse (they were checked when
    /// applied).
    pub fn connect_options(&self) -> Result<ConnectOptions, Error> {
        let mut options = ConnectOptions::new().name(&self.name);
        if let Some(timeout) = self.connection_timeout {
            options = options.connection_timeout(timeout);
        }
        options = match &self.credentials {
            NatsCredentials::None => options,
            NatsCredentials::UserPassword { user, password } => {
                options.user_and_password(user.clone(), password.expose().to_owned())
            }
            NatsCredentials::Token(token) => options.token(token.expose().to_owned()),
            NatsCredentials::NKey { seed, .. } => options.nkey(seed.expose().to_owned()),
            NatsCredentials::Creds { path, contents } => {
                options.credentials(contents.expose()).map_err(|e| {
                    config(&format!(
                        "nats credentials file {} is invalid: {e}",
                        path.display()
                    ))
                })?
            }
        };
        if self.tls_required {
            options = options.require_tls(true);
        }
        if let Some(ca) = &self.ca_file {
            options = options.add_root_certificates(ca.clone());
        }
        if let Some((cert, key)) = &self.client_cert {
            options = options.add_client_certificate(cert.clone(), key.clone());
        }
        Ok(options)
    }

    /// Connects (one attempt per server; async-nats reconnects by itself afterwards).
    ///
    /// # Errors
    ///
    /// [`Error::Connect`]: transient for an unreachable server, permanent for refused
    /// credentials or a failed TLS handshake. The message masks the URL's secrets.
    pub async fn connect(&self) -> Result<async_nats::Client, Error> {
        self.connect_with(|options| options).await
    }

    /// Like [`connect`](Self::connect), after `customize` adds to the async-nats options.
    ///
    /// # Errors
    ///
    /// As [`connect`](Self::connect).
    pub async fn connect_with(
        &self,
        customize: impl FnOnce(ConnectOptions) -> ConnectOptions,
    ) -> Result<async_nats::Client, Error> {
        customize(self.connect_options()?)
            .connect(self.servers.clone())
            .await
            .map_err(|source| Error::Connect {
                url: self.redacted.clone(),
                source,
            })
    }
}

fn config(message: &str) -> Error {
    Error::Config(message.to_owned())
}

fn read_secret_file(path: &Path, what: &str) -> Result<Secret, Error> {
    std::fs::read_to_string(path)
        .map(Secret::new)
        .map_err(|e| config(&format!("cannot read {what} {}: {e}", path.display())))
}

/// The credentials in a server URL's user info, %-decoded: `user:password@` or `token@`.
fn url_credentials(server: &ServerAddr) -> Option<NatsCredentials> {
    let decode = |text: &str| {
        percent_encoding::percent_decode_str(text)
            .decode_utf8_lossy()
            .into_owned()
    };
    match (server.username(), server.password()) {
        (Some(user), Some(password)) => Some(NatsCredentials::UserPassword {
            user: decode(user),
            password: Secret::new(decode(password)),
        }),
        (Some(token), None) => Some(NatsCredentials::Token(Secret::new(decode(token)))),
        (None, Some(password)) => Some(NatsCredentials::UserPassword {
            user: String::new(),
            password: Secret::new(decode(password)),
        }),
        (None, None) => None,
    }
}

/// `server` without its user info, which lives in the credentials from then on.
fn without_credentials(server: ServerAddr) -> ServerAddr {
    let mut url = server.clone().into_inner();
    if url.set_username("").is_err() || url.set_password(None).is_err() {
        return server;
    }
    ServerAddr::from_url(url).unwrap_or(server)
}

/// Checks an NKey seed; `what` names it in the error (the seed itself never is).
fn nkey(seed: Secret, what: &str) -> Result<NatsCredentials, Error> {
    let pair = nkeys::KeyPair::from_seed(seed.expose())
        .map_err(|_| config(&format!("{what} is not a valid nkey seed (SU...)")))?;
    Ok(NatsCredentials::NKey {
        public_key: pair.public_key(),
        seed,
    })
}

/// Checks that `path` is readable and holds a PEM block whose label ends with `label`.
fn check_pem(path: &Path, what: &str, label: &str) -> Result<(), Error> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| config(&format!("cannot read {what} {}: {e}", path.display())))?;
    let found = text.lines().any(|line| {
        line.strip_prefix("-----BEGIN ")
            .and_then(|rest| rest.strip_suffix("-----"))
            .is_some_and(|l| l.ends_with(label))
    });
    if found {
        Ok(())
    } else {
        Err(config(&format!(
            "{what} {} holds no PEM {label}",
            path.display()
        )))
    }
}

/// async-nats' reason without its capitalised preamble, so that messages stay lowercase.
fn parse_reason(error: &std::io::Error) -> String {
    let text = error.to_string();
    match text.strip_prefix("NATS server URL is invalid: ") {
        Some(reason) => reason.to_owned(),
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn good_urls_parse() {
        for url in [
            "nats://127.0.0.1:4222",
            "127.0.0.1:4222",
            "localhost",
            "tls://demo.nats.io:4443",
            "nats://user:pass@host:4222",
            "nats://a:1,nats://b:2",
        ] {
            parse_url(url).unwrap_or_else(|e| panic!("{url}: {e}"));
        }
    }

    #[test]
    fn bad_urls_say_why() {
        for (url, why) in [
            ("", "empty"),
            ("http://host:4222", "invalid scheme"),
            ("ws://host:4222", "scheme \"ws\" is not supported"),
            ("nats://host:99999", "invalid"),
            ("nats://", "host"),
            ("nats://a:1,,nats://b:2", "empty entry"),
            ("nats://ho st", "invalid"),
        ] {
            let err = parse_url(url).unwrap_err();
            assert!(matches!(err, Error::InvalidUrl { .. }), "{url}: {err}");
            assert!(!err.is_transient());
            assert!(err.to_string().contains(why), "{url}: {err}");
        }
    }

    #[test]
    fn passwords_are_masked() {
        let err = parse_url("ftp://u:secret@h").unwrap_err();
        assert!(!err.to_string().contains("secret"), "{err}");
        let err = parse_url("nats://secret@h:99999").unwrap_err();
        assert!(!err.to_string().contains("secret"), "{err}");
        let options = NatsConnectOptions::new("nats://u:secret@h:1,tls://u:secret@h2").unwrap();
        let shown = format!("{options} {options:?}");
        assert!(!shown.contains("secret"), "{shown}");
        assert_eq!(options.to_string(), "nats://u:***@h:1,tls://u:***@h2");
        let options = NatsConnectOptions::new("tls://tok3n@h2").unwrap();
        let shown = format!("{options} {options:?}");
        assert!(!shown.contains("tok3n"), "{shown}");
        let options = NatsConnectOptions::with_servers(parse_url("u:secret@h").unwrap()).unwrap();
        assert_eq!(options.to_string(), "nats://u:***@h");
        assert_eq!(
            options.credentials(),
            &NatsCredentials::UserPassword {
                user: "u".into(),
                password: Secret::new("secret")
            }
        );
        assert!(options.servers()[0].password().is_none());
        let options = NatsConnectOptions::new("nats://t%40k@a,nats://t%40k@b").unwrap();
        assert_eq!(
            options.credentials(),
            &NatsCredentials::Token(Secret::new("t@k"))
        );
        let err = NatsConnectOptions::new("nats://u:p1@a,nats://u:p2@b").unwrap_err();
        assert!(err.to_string().contains("different credentials"), "{err}");
        assert!(!err.to_string().contains("p1"), "{err}");
    }

    fn security(f: impl FnOnce(&mut NatsSecurity)) -> NatsSecurity {
        let mut s = NatsSecurity::default();
        f(&mut s);
        s
    }

    #[test]
    fn one_credential_form_at_a_time() {
        let base = NatsConnectOptions::new("nats://h:4222").unwrap();
        for (s, needle) in [
            (
                security(|s| {
                    s.token = Some("t0ken".into());
                    s.user = Some("u".into());
                    s.password = Some("pw".into());
                }),
                "not a token and a user and password",
            ),
            (
                security(|s| s.user = Some("u".into())),
                "without a password",
            ),
            (
                security(|s| s.password = Some("pw".into())),
                "without a user",
            ),
            (
                security(|s| s.nkey_seed = Some("SUnotaseed".into())),
                "not a valid nkey seed",
            ),
            (
                security(|s| s.creds_file = Some("/nonexistent/x.creds".into())),
                "cannot read nats credentials file /nonexistent/x.creds",
            ),
            (
                security(|s| s.client_cert = Some("/c.pem".into())),
                "without its key",
            ),
            (
                security(|s| s.ca_file = Some("/nonexistent/ca.pem".into())),
                "cannot read nats CA file",
            ),
        ] {
            let err = base.clone().with_security(&s).unwrap_err().to_string();
            assert!(err.contains(needle), "{err}");
            for secret in ["t0ken", "pw", "SUnotaseed"] {
                assert!(!err.contains(secret), "{err}");
            }
        }
        let in_url = NatsConnectOptions::new("nats://u:pw@h:4222").unwrap();
        let err = in_url
            .with_security(&security(|s| s.token = Some("t".into())))
            .unwrap_err();
        assert!(err.to_string().contains("credentials in the URL"), "{err}");
    }

    #[test]
    fn seeds_are_checked_and_never_shown() {
        let pair = nkeys::KeyPair::new_user();
        let seed = pair.seed().unwrap();
        let options = NatsConnectOptions::new("nats://h:4222")
            .unwrap()
            .with_security(&security(|s| s.nkey_seed = Some(seed.clone().into())))
            .unwrap();
        assert_eq!(
            options.credentials().describe(),
            format!("nkey {}", pair.public_key())
        );
        let shown = format!("{options:?}");
        assert!(!shown.contains(&seed), "{shown}");
        assert!(!options.tls_required());
    }

    #[test]
    fn environment_is_read() {
        let env = |name: &str| match name {
            "NATS_TOKEN" => Some("t0ken".to_owned()),
            "NATS_CA" => Some("/ca.pem".to_owned()),
            "NATS_USER" => Some(String::new()),
            "NATS_TLS_REQUIRED" => Some("true".to_owned()),
            _ => None,
        };
        let s = NatsSecurity::from_env_with(env);
        assert_eq!(s.token, Some(Secret::new("t0ken")));
        assert_eq!(s.ca_file, Some(PathBuf::from("/ca.pem")));
        assert_eq!(s.user, None);
        assert!(s.tls_required);
        assert!(!format!("{s:?}").contains("t0ken"));
    }

    #[tokio::test]
    async fn an_unreachable_server_is_a_transient_error() {
        // A port nothing listens on: bind, read the port, close.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap();
        let err = connect(&format!("nats://u:s3cr3t@127.0.0.1:{port}"))
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Connect { .. }), "{err}");
        assert!(err.is_transient(), "{err}");
        assert!(
            err.to_string()
                .starts_with("cannot connect to nats at nats://u:***@127.0.0.1:"),
            "{err}"
        );
        assert!(!format!("{err} {err:?}").contains("s3cr3t"), "{err:?}");
    }
}
