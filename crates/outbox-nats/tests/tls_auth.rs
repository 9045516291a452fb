//! NATS over TLS with every credential form, against servers of the test's own (certificates
//! from a test CA): user and password, NKey, token with a client certificate, and a JWT
//! `.creds` file in operator mode. Each form publishes to JetStream; wrong credentials fail with
//! a clear error that does not repeat them.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use outbox_core::redact::Secret;
use outbox_core::{Broker, Message};
use outbox_nats::{
    Error, JetStreamPublisher, NatsConnectOptions, NatsCredentials, NatsSecurity, StreamSpec,
    ensure_stream,
};
use outbox_testkit::{CertFiles, ConfiguredNatsServer, TestCa};

const PASSWORD: &str = "p4ssw0rd-nats";
const TOKEN: &str = "t0ken-nats";

/// `tls { ... }` for a server certificate of `ca`; `verify` asks clients for a certificate.
fn tls_block(server: &CertFiles, ca: &TestCa, verify: bool) -> String {
    let mut block = format!(
        "tls {{\n  cert_file: {}\n  key_file: {}\n  timeout: 5\n",
        quote(&server.cert),
        quote(&server.key)
    );
    if verify {
        block.push_str(&format!(
            "  ca_file: {}\n  verify: true\n",
            quote(ca.ca_file())
        ));
    }
    block.push_str("}\n");
    block
}

fn quote(path: &Path) -> String {
    format!("{:?}", path.display().to_string())
}

fn security(f: impl FnOnce(&mut NatsSecurity)) -> NatsSecurity {
    let mut s = NatsSecurity::default();
    f(&mut s);
    s
}

/// Connects with `url` and `security`.
async fn connect(url: &str, security: &NatsSecurity) -> Result<async_nats::Client, Error> {
    NatsConnectOptions::new(url)?
        .with_security(security)?
        .name("tls-auth-test")
        .connect()
        .await
}

/// Publishes one message to JetStream and waits for its acknowledgement.
async fn publish_to_jetstream(client: async_nats::Client) {
    let publisher = JetStreamPublisher::new(client);
    ensure_stream(
        publisher.context(),
        &StreamSpec::new("SECURE", ["secure.>"]),
    )
    .await
    .unwrap_or_else(|e| panic!("stream: {e}"));
    let message = Message::builder("secure.created")
        .key("k")
        .payload("{}")
        .build()
        .unwrap();
    let ack = publisher
        .publish(&message)
        .await
        .unwrap_or_else(|e| panic!("publish: {e}"))
        .await
        .unwrap_or_else(|e| panic!("ack: {e}"));
    assert!(!ack.duplicate);
}

/// The connection failed, with a message that names the server and holds none of `secrets`.
fn assert_refused(result: Result<async_nats::Client, Error>, secrets: &[&str]) -> String {
    let error = match result {
        Ok(_) => panic!("connected with bad credentials"),
        Err(error) => error,
    };
    let text = format!("{} / {error:?}", outbox_core::redact::error_chain(&error));
    assert!(text.contains("127.0.0.1"), "{text}");
    for secret in secrets {
        assert!(!text.contains(secret), "{secret} in: {text}");
    }
    text
}

#[tokio::test]
async fn user_password_and_nkey_over_tls() {
    let ca = TestCa::new("nats-users");
    let server_cert = ca.server_cert("server", &["localhost", "127.0.0.1"]);
    let nkey = nkeys::KeyPair::new_user();
    let seed = nkey.seed().unwrap();
    let server = ConfiguredNatsServer::start(&format!(
        "{}authorization {{\n  users: [\n    {{ user: alice, password: {PASSWORD:?} }}\n    \
         {{ nkey: {} }}\n  ]\n}}\n",
        tls_block(&server_cert, &ca, false),
        nkey.public_key()
    ))
    .await;
    let port = server.port();
    let ca_file = ca.ca_file().to_owned();

    // User and password as options, over tls://.
    let with_password = security(|s| {
        s.user = Some("alice".into());
        s.password = Some(PASSWORD.into());
        s.ca_file = Some(ca_file.clone());
    });
    let client = connect(&format!("tls://127.0.0.1:{port}"), &with_password)
        .await
        .unwrap_or_else(|e| panic!("{e}: {}", server.log()));
    assert!(client.server_info().tls_required);
    publish_to_jetstream(client).await;

    // In the URL, over nats:// (the CA makes TLS required).
    let with_ca = security(|s| s.ca_file = Some(ca_file.clone()));
    let client = connect(
        &format!("nats://alice:{PASSWORD}@localhost:{port}"),
        &with_ca,
    )
    .await
    .unwrap();
    publish_to_jetstream(client).await;

    // An NKey, from a seed file as NATS_NKEY names it.
    let seed_file = ca.dir().join("user.nk");
    std::fs::write(&seed_file, format!("{seed}\n")).unwrap();
    let env = |name: &str| match name {
        "NATS_NKEY" => Some(seed_file.display().to_string()),
        "NATS_CA" => Some(ca_file.display().to_string()),
        _ => None,
    };
    let from_env = NatsSecurity::from_env_with(env);
    let options = NatsConnectOptions::new(&format!("127.0.0.1:{port}"))
        .unwrap()
        .with_security(&from_env)
        .unwrap();
    assert!(matches!(
        options.credentials(),
        NatsCredentials::NKey { .. }
    ));
    assert!(!format!("{options:?} {options}").contains(&seed));
    publish_to_jetstream(options.connect().await.unwrap()).await;

    // A wrong password is refused, permanently, without the password in the message.
    let wrong = security(|s| {
        s.user = Some("alice".into());
        s.password = Some("wr0ng-pw".into());
        s.ca_file = Some(ca_file.clone());
    });
    let result = connect(&format!("tls://127.0.0.1:{port}"), &wrong).await;
    if let Err(error) = &result {
        assert!(!error.is_transient(), "{error}");
    }
    let text = assert_refused(result, &["wr0ng-pw", PASSWORD]);
    assert!(text.contains("authorization violation"), "{text}");

    // An NKey the server does not know.
    let stranger = nkeys::KeyPair::new_user().seed().unwrap();
    let result = connect(
        &format!("tls://127.0.0.1:{port}"),
        &security(|s| {
            s.nkey_seed = Some(Secret::new(stranger.clone()));
            s.ca_file = Some(ca_file.clone());
        }),
    )
    .await;
    assert_refused(result, &[&stranger]);

    // Without the test CA the server's certificate is not trusted.
    let result = connect(
        &format!("tls://alice:{PASSWORD}@127.0.0.1:{port}"),
        &NatsSecurity::default(),
    )
    .await;
    let text = assert_refused(result, &[PASSWORD]);
    assert!(
        text.to_lowercase().contains("tls") || text.contains("certificate"),
        "{text}"
    );
}

#[tokio::test]
async fn token_with_a_client_certificate() {
    let ca = TestCa::new("nats-token");
    let server_cert = ca.server_cert("server", &["127.0.0.1"]);
    let client_cert = ca.client_cert("client", "outbox");
    let server = ConfiguredNatsServer::start(&format!(
        "{}authorization {{\n  token: {TOKEN:?}\n}}\n",
        tls_block(&server_cert, &ca, true)
    ))
    .await;
    let url = format!("tls://127.0.0.1:{}", server.port());
    let ca_file = ca.ca_file().to_owned();

    // As the binaries' environment gives it.
    let env = |name: &str| match name {
        "NATS_TOKEN" => Some(TOKEN.to_owned()),
        "NATS_CA" => Some(ca_file.display().to_string()),
        "NATS_CERT" => Some(client_cert.cert.display().to_string()),
        "NATS_KEY" => Some(client_cert.key.display().to_string()),
        _ => None,
    };
    let good = NatsSecurity::from_env_with(env);
    assert!(!format!("{good:?}").contains(TOKEN));
    let client = connect(&url, &good)
        .await
        .unwrap_or_else(|e| panic!("{e}: {}", server.log()));
    publish_to_jetstream(client).await;

    // The token in the URL works too.
    let mut cert_only = good.clone();
    cert_only.token = None;
    let client = connect(
        &format!("tls://{TOKEN}@127.0.0.1:{}", server.port()),
        &cert_only,
    )
    .await
    .unwrap();
    publish_to_jetstream(client).await;

    // A wrong token.
    let mut wrong = good.clone();
    wrong.token = Some("wr0ng-t0ken".into());
    let text = assert_refused(connect(&url, &wrong).await, &["wr0ng-t0ken", TOKEN]);
    assert!(text.contains("authorization violation"), "{text}");

    // The right token without a client certificate: the TLS handshake fails.
    let mut no_cert = good.clone();
    no_cert.client_cert = None;
    no_cert.client_key = None;
    assert_refused(connect(&url, &no_cert).await, &[TOKEN]);
}

/// A NATS JWT (`header.claims.signature`, Ed25519 over the first two parts) issued by `issuer`
/// for `subject`.
fn jwt(issuer: &nkeys::KeyPair, subject: &str, name: &str, nats: serde_json::Value) -> String {
    let iat = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = serde_json::json!({
        "jti": uuid_like(),
        "iat": iat,
        "iss": issuer.public_key(),
        "name": name,
        "sub": subject,
        "nats": nats,
    });
    let header = URL_SAFE_NO_PAD.encode(r#"{"typ":"JWT","alg":"ed25519-nkey"}"#);
    let body = URL_SAFE_NO_PAD.encode(claims.to_string());
    let signed = format!("{header}.{body}");
    let signature = issuer.sign(signed.as_bytes()).unwrap();
    format!("{signed}.{}", URL_SAFE_NO_PAD.encode(signature))
}

/// A unique claim id (the server does not recompute it).
fn uuid_like() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{nanos:032X}{:08X}", std::process::id())
}

/// A `.creds` file: the user JWT and the user's seed, decorated as `nsc` writes them.
fn creds_file(dir: &Path, name: &str, user_jwt: &str, user: &nkeys::KeyPair) -> PathBuf {
    let path = dir.join(format!("{name}.creds"));
    std::fs::write(
        &path,
        format!(
            "-----BEGIN NATS USER JWT-----\n{user_jwt}\n------END NATS USER JWT------\n\n\
             ************************* IMPORTANT *************************\n\
             NKEY Seed printed below can be used to sign and prove identity.\n\n\
             -----BEGIN USER NKEY SEED-----\n{}\n------END USER NKEY SEED------\n",
            user.seed().unwrap()
        ),
    )
    .unwrap();
    path
}

#[tokio::test]
async fn jwt_credentials_file_in_operator_mode() {
    let ca = TestCa::new("nats-jwt");
    let server_cert = ca.server_cert("server", &["127.0.0.1"]);
    let operator = nkeys::KeyPair::new_operator();
    let account = nkeys::KeyPair::new_account();
    let system = nkeys::KeyPair::new_account();
    let user = nkeys::KeyPair::new_user();
    let operator_jwt = jwt(
        &operator,
        &operator.public_key(),
        "test-operator",
        serde_json::json!({ "type": "operator", "version": 2 }),
    );
    let account_claims = |jetstream: bool| {
        let storage = if jetstream { -1 } else { 0 };
        serde_json::json!({
            "type": "account",
            "version": 2,
            "limits": {
                "subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1,
                "wildcards": true, "conn": -1, "leaf": -1,
                "mem_storage": storage, "disk_storage": storage, "streams": -1, "consumer": -1
            }
        })
    };
    let account_jwt = jwt(
        &operator,
        &account.public_key(),
        "app",
        account_claims(true),
    );
    let system_jwt = jwt(
        &operator,
        &system.public_key(),
        "SYS",
        account_claims(false),
    );
    let user_claims = serde_json::json!({
        "type": "user", "version": 2, "pub": {}, "sub": {}, "subs": -1, "data": -1, "payload": -1
    });
    let user_jwt = jwt(&account, &user.public_key(), "relay", user_claims.clone());
    let operator_file = ca.dir().join("operator.jwt");
    std::fs::write(&operator_file, &operator_jwt).unwrap();
    let server = ConfiguredNatsServer::start(&format!(
        "{}operator: {}\nsystem_account: {}\nresolver: MEMORY\nresolver_preload: {{\n  {}: \
         {:?}\n  {}: {:?}\n}}\n",
        tls_block(&server_cert, &ca, false),
        quote(&operator_file),
        system.public_key(),
        account.public_key(),
        account_jwt,
        system.public_key(),
        system_jwt
    ))
    .await;
    let url = format!("tls://127.0.0.1:{}", server.port());

    let good = creds_file(ca.dir(), "relay", &user_jwt, &user);
    let env = |name: &str| match name {
        "NATS_CREDS" => Some(good.display().to_string()),
        "NATS_CA" => Some(ca.ca_file().display().to_string()),
        _ => None,
    };
    let client = connect(&url, &NatsSecurity::from_env_with(env))
        .await
        .unwrap_or_else(|e| panic!("{e}: {}", server.log()));
    publish_to_jetstream(client).await;

    // A user signed by an account the operator never issued.
    let rogue_account = nkeys::KeyPair::new_account();
    let rogue = nkeys::KeyPair::new_user();
    let rogue_jwt = jwt(&rogue_account, &rogue.public_key(), "rogue", user_claims);
    let bad = creds_file(ca.dir(), "rogue", &rogue_jwt, &rogue);
    let rogue_seed = rogue.seed().unwrap();
    let text = assert_refused(
        connect(
            &url,
            &security(|s| {
                s.creds_file = Some(bad.clone());
                s.ca_file = Some(ca.ca_file().to_owned());
            }),
        )
        .await,
        &[&rogue_seed],
    );
    assert!(text.contains("authorization violation"), "{text}");

    // A file that is not a credentials file says so, without its contents.
    let garbage = ca.dir().join("garbage.creds");
    std::fs::write(&garbage, "SUsecretlooking\n").unwrap();
    let error = NatsConnectOptions::new(&url)
        .unwrap()
        .with_security(&security(|s| s.creds_file = Some(garbage.clone())))
        .unwrap_err()
        .to_string();
    assert!(error.contains("garbage.creds is invalid"), "{error}");
    assert!(!error.contains("SUsecretlooking"), "{error}");
}
