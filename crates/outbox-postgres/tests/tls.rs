//! PostgreSQL over TLS, against a cluster of the test's own: `ssl = on` with a certificate of
//! a test CA, and a `pg_hba.conf` that accepts TLS connections only (`hostssl`), so plaintext is
//! refused. Skipped, with the reason, where no PostgreSQL server binaries are installed.

use std::time::Duration;

use outbox_core::redact::error_chain;
use outbox_core::{ClaimRequest, Message, Store};
use outbox_postgres::{
    PasswordSource, PgConfig, PgConnectOptions, PgOutbox, PgStore, SslMode, WakeUp,
};
use outbox_testkit::{CertFiles, PgCluster, PgClusterConfig, TestCa, assert_nothing_to_claim};

const PASSWORD: &str = "s3cr3t-pg";

/// A TLS-only cluster with `app` (password) and `certuser` (client certificate) roles.
struct Fixture {
    cluster: PgCluster,
    ca: TestCa,
    other_ca: TestCa,
    client: CertFiles,
}

impl Fixture {
    async fn start() -> Option<Self> {
        let ca = TestCa::new("pg");
        // The certificate names `localhost` only: connecting to 127.0.0.1 shows the name check.
        let server = ca.server_cert("server", &["localhost"]);
        let client = ca.client_cert("certuser", "certuser");
        let config = PgClusterConfig::new()
            .tls(&server.cert, &server.key)
            .client_ca(ca.ca_file())
            .hba("hostssl all certuser 127.0.0.1/32 cert")
            .hba("hostssl all app 127.0.0.1/32 scram-sha-256");
        let cluster = match PgCluster::start(config).await {
            Ok(cluster) => cluster,
            Err(reason) => {
                eprintln!("skipping the PostgreSQL TLS test: {reason}");
                return None;
            }
        };
        for sql in [
            format!("CREATE ROLE app LOGIN PASSWORD '{PASSWORD}'"),
            "CREATE ROLE certuser LOGIN".to_owned(),
            "CREATE DATABASE app OWNER app".to_owned(),
        ] {
            cluster.execute(&sql).await;
        }
        Some(Self {
            cluster,
            ca,
            other_ca: TestCa::new("other"),
            client,
        })
    }

    /// `postgres://app:PASSWORD@HOST:port/app?params`.
    fn url(&self, host: &str, params: &str) -> String {
        format!(
            "postgres://app:{PASSWORD}@{host}:{}/app?{params}",
            self.cluster.port()
        )
    }

    fn ca(&self) -> String {
        self.ca.ca_file().display().to_string()
    }
}

/// Connects with `url`'s options; on success says whether the session is encrypted.
async fn try_connect(options: &PgConnectOptions) -> Result<bool, String> {
    let (client, connection) = options.connect().await.map_err(|e| error_chain(&e))?;
    tokio::spawn(connection);
    let row = client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .map_err(|e| error_chain(&e))?;
    Ok(row.get(0))
}

async fn connect_url(url: &str) -> Result<bool, String> {
    let options = PgConnectOptions::from_url_with_env(url, |_| None).map_err(|e| e.to_string())?;
    try_connect(&options).await
}

#[tokio::test]
async fn sslmodes_encrypt_and_verify_as_libpq_does() {
    let Some(fx) = Fixture::start().await else {
        return;
    };
    let ca = fx.ca();
    let other = fx.other_ca.ca_file().display().to_string();

    // Plaintext is refused by the server (hostssl only).
    let error = connect_url(&fx.url("localhost", "sslmode=disable"))
        .await
        .expect_err("plaintext was accepted");
    assert!(error.contains("no pg_hba.conf entry"), "{error}");
    assert!(!error.contains(PASSWORD), "{error}");

    // Encrypted without a certificate check, as in libpq.
    for params in ["sslmode=require", "sslmode=prefer", ""] {
        let ssl = connect_url(&fx.url("127.0.0.1", params))
            .await
            .unwrap_or_else(|e| panic!("{params}: {e}"));
        assert!(ssl, "{params}: not encrypted");
    }

    // Chain and host name checked.
    let verify_full = format!("sslmode=verify-full&sslrootcert={ca}");
    assert!(
        connect_url(&fx.url("localhost", &verify_full))
            .await
            .unwrap()
    );
    let error = connect_url(&fx.url(
        "localhost",
        &format!("sslmode=verify-full&sslrootcert={other}"),
    ))
    .await
    .expect_err("a certificate of another CA was trusted");
    assert!(error.contains("UnknownIssuer"), "{error}");
    assert!(!error.contains(PASSWORD), "{error}");
    let error = connect_url(&fx.url("127.0.0.1", &verify_full))
        .await
        .expect_err("a certificate for another name was accepted");
    assert!(error.contains("not valid for name"), "{error}");

    // verify-ca checks the chain, not the name; require with a root certificate does too.
    assert!(
        connect_url(&fx.url("127.0.0.1", &format!("sslmode=verify-ca&sslrootcert={ca}")))
            .await
            .unwrap()
    );
    for mode in ["verify-ca", "require"] {
        let error =
            connect_url(&fx.url("127.0.0.1", &format!("sslmode={mode}&sslrootcert={other}")))
                .await
                .expect_err(mode);
        assert!(error.contains("UnknownIssuer"), "{mode}: {error}");
    }
}

#[tokio::test]
async fn passwords_and_client_certificates_authenticate() {
    let Some(fx) = Fixture::start().await else {
        return;
    };
    let port = fx.cluster.port();
    let ca = fx.ca();
    let no_password =
        format!("postgres://app@localhost:{port}/app?sslmode=verify-full&sslrootcert={ca}");

    // PGPASSWORD.
    let env = |name: &str| (name == "PGPASSWORD").then(|| PASSWORD.to_owned());
    let options = PgConnectOptions::from_url_with_env(&no_password, env).unwrap();
    assert_eq!(options.password_source(), &PasswordSource::Environment);
    assert!(try_connect(&options).await.unwrap());

    // A password file, named by the URL.
    let dir = fx.ca.dir();
    let passfile = dir.join("pgpass");
    std::fs::write(&passfile, format!("localhost:{port}:app:app:{PASSWORD}\n")).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&passfile, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let with_file = format!("{no_password}&passfile={}", passfile.display());
    let options = PgConnectOptions::from_url_with_env(&with_file, |_| None).unwrap();
    assert_eq!(
        options.password_source(),
        &PasswordSource::PasswordFile(passfile.clone())
    );
    assert!(try_connect(&options).await.unwrap());

    // A wrong password: refused, and the error does not repeat it.
    let wrong = format!(
        "postgres://app:wr0ng-pw@localhost:{port}/app?sslmode=verify-full&sslrootcert={ca}"
    );
    let error = connect_url(&wrong)
        .await
        .expect_err("wrong password accepted");
    assert!(error.contains("password authentication failed"), "{error}");
    assert!(!error.contains("wr0ng-pw"), "{error}");

    // No password at all.
    let error = connect_url(&no_password)
        .await
        .expect_err("no password accepted");
    assert!(error.contains("password"), "{error}");

    // A client certificate (`cert` authentication: its CN is the user).
    let with_cert = format!(
        "postgres://certuser@localhost:{port}/app?sslmode=verify-full&sslrootcert={ca}\
         &sslcert={}&sslkey={}",
        fx.client.cert.display(),
        fx.client.key.display()
    );
    assert!(connect_url(&with_cert).await.unwrap());
    let without_cert =
        format!("postgres://certuser@localhost:{port}/app?sslmode=verify-full&sslrootcert={ca}");
    let error = connect_url(&without_cert)
        .await
        .expect_err("cert authentication without a certificate");
    assert!(error.contains("certificate"), "{error}");

    // A deadpool-postgres pool over the same options.
    let options = PgConnectOptions::from_url_with_env(&no_password, env).unwrap();
    let pool = deadpool_postgres::Pool::builder(
        options.deadpool_manager(deadpool_postgres::ManagerConfig::default()),
    )
    .max_size(2)
    .build()
    .unwrap();
    let client = pool.get().await.unwrap();
    let row = client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap();
    assert!(row.get::<_, bool>(0));
}

#[tokio::test]
async fn the_store_claims_over_tls() {
    let Some(fx) = Fixture::start().await else {
        return;
    };
    let options = PgConnectOptions::from_url_with_env(
        &fx.url(
            "localhost",
            &format!("sslmode=verify-full&sslrootcert={}", fx.ca()),
        ),
        |_| None,
    )
    .unwrap();
    assert_eq!(options.ssl_mode(), SslMode::VerifyFull);
    let schema = "tls_outbox";
    let outbox = PgOutbox::new(
        PgConfig::builder()
            .schema(schema)
            .wake_up(WakeUp::Listen)
            .build()
            .unwrap(),
    )
    .unwrap();
    let (client, connection) = options.connect().await.unwrap();
    tokio::spawn(connection);
    outbox.migrate(&client).await.unwrap();
    let message = Message::builder("orders.created")
        .key("customer-1")
        .payload("{}")
        .build()
        .unwrap();
    outbox.enqueue(&client, &message).await.unwrap();

    let store = PgStore::with_connect_options(&outbox, &options);
    let claimed = store.claim(ClaimRequest::new(10, &[])).await.unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].message.id(), message.id());
    store.complete(&[claimed[0].seq]).await.unwrap();
    assert_nothing_to_claim(&store).await;

    // The store's session and its LISTEN connection (started by the first wait) both use TLS.
    store.wait_for_work(Duration::from_millis(1)).await;
    let admin = fx.cluster.admin().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let sessions = loop {
        let rows = admin
            .query(
                "SELECT a.application_name, s.ssl FROM pg_stat_activity a \
                 JOIN pg_stat_ssl s USING (pid) WHERE a.application_name LIKE $1 \
                 ORDER BY 1",
                &[&format!("%{schema}")],
            )
            .await
            .unwrap();
        let sessions: Vec<(String, bool)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
        if sessions.len() == 2 || tokio::time::Instant::now() > deadline {
            break sessions;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(
        sessions,
        [
            (format!("outbox-listen {schema}"), true),
            (format!("outbox-relay {schema}"), true)
        ],
        "{}",
        fx.cluster.log()
    );
}
