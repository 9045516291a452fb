//! Connecting: [`parse_url`] checks a server URL without connecting, [`connect`] connects.

use std::str::FromStr;

use async_nats::{ConnectOptions, ServerAddr};

use crate::Error;

/// Parses a NATS server URL, or a comma-separated list of them, without connecting.
///
/// Accepts `nats://host:port`, `tls://host:port` and `host:port` (the scheme defaults to
/// `nats`, the port to 4222), with optional `user:password@`. Fails with
/// [`Error::InvalidUrl`] naming the problem; a password in the URL is masked in the error.
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
        url: redact(url),
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
/// the URL with [`parse_url`].
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
    connect_with_options(url, ConnectOptions::new().name("outbox")).await
}

/// Like [`connect`], with your own options (credentials, TLS, name, event callback).
pub async fn connect_with_options(
    url: &str,
    options: ConnectOptions,
) -> Result<async_nats::Client, Error> {
    let addrs = parse_url(url)?;
    options
        .connect(addrs)
        .await
        .map_err(|source| Error::Connect {
            url: redact(url),
            source,
        })
}

/// `url` with the password of every `user:password@` part replaced by `***`.
fn redact(url: &str) -> String {
    url.split(',')
        .map(|part| {
            let start = part.find("://").map_or(0, |i| i + 3);
            let rest = &part[start..];
            let authority_end = rest.find('/').unwrap_or(rest.len());
            match rest[..authority_end].rfind('@') {
                Some(at) => {
                    let userinfo = &rest[..at];
                    let user = userinfo.split(':').next().unwrap_or_default();
                    let masked = if userinfo.contains(':') {
                        format!("{user}:***")
                    } else {
                        "***".to_owned()
                    };
                    format!("{}{masked}{}", &part[..start], &rest[at..])
                }
                None => part.to_owned(),
            }
        })
        .collect::<Vec<_>>()
        .join(",")
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
        assert_eq!(redact("nats://u:secret@h:1/x"), "nats://u:***@h:1/x");
        assert_eq!(redact("token@h"), "***@h");
        assert_eq!(redact("nats://h:1,tls://a:b@c"), "nats://h:1,tls://a:***@c");
        let err = parse_url("ftp://u:secret@h").unwrap_err();
        assert!(!err.to_string().contains("secret"), "{err}");
    }

    #[tokio::test]
    async fn an_unreachable_server_is_a_transient_error() {
        // A port nothing listens on: bind, read the port, close.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap();
        let err = connect(&format!("nats://127.0.0.1:{port}"))
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Connect { .. }), "{err}");
        assert!(err.is_transient(), "{err}");
        assert!(
            err.to_string()
                .starts_with("cannot connect to nats at nats://127.0.0.1:"),
            "{err}"
        );
    }
}
