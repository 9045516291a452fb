use std::str::FromStr;

use outbox_core::redact::redact_url as redact;
use tokio_postgres::NoTls;

/// The database used when `DATABASE_URL` is unset.
pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

/// A fresh, uniquely named schema on the test database, dropped (with everything in it) when
/// the fixture is dropped.
///
/// The schema is not created: the outbox migrations create it, as they would in production.
///
/// # Examples
///
/// ```no_run
/// # #[tokio::main] async fn main() {
/// let db = outbox_testkit::TestDatabase::new().await;
/// let client = db.connect().await;
/// client.batch_execute(&format!("CREATE SCHEMA {}", db.schema())).await.unwrap();
/// # }
/// ```
#[derive(Debug)]
pub struct TestDatabase {
    url: String,
    schema: String,
    #[cfg(feature = "containers")]
    _container: Option<
        testcontainers_modules::testcontainers::ContainerAsync<
            testcontainers_modules::postgres::Postgres,
        >,
    >,
}

impl TestDatabase {
    /// Connects to `DATABASE_URL` (or the default) and picks a fresh schema name.
    ///
    /// # Panics
    ///
    /// When the database does not answer, with a message saying what to start.
    pub async fn new() -> Self {
        let configured = std::env::var("DATABASE_URL").ok();
        let url = configured
            .clone()
            .unwrap_or_else(|| DEFAULT_DATABASE_URL.to_owned());
        let schema = format!("t_{}", crate::unique_suffix());
        match try_connect(&url).await {
            Ok(_) => Self {
                url,
                schema,
                #[cfg(feature = "containers")]
                _container: None,
            },
            Err(error) => {
                #[cfg(feature = "containers")]
                if configured.is_none() {
                    if let Some((container, url)) = start_container().await {
                        return Self {
                            url,
                            schema,
                            _container: Some(container),
                        };
                    }
                }
                panic!(
                    "PostgreSQL at {} does not answer ({error}). Start it (e.g. `make up`, or \
                     `scripts/services.sh`) or set DATABASE_URL.",
                    redact(&url)
                )
            }
        }
    }

    /// The database URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The schema name for this test: unique, a valid unquoted identifier.
    pub fn schema(&self) -> &str {
        &self.schema
    }

    /// The connection settings.
    ///
    /// # Panics
    ///
    /// When the URL does not parse.
    pub fn pg_config(&self) -> tokio_postgres::Config {
        tokio_postgres::Config::from_str(&self.url)
            .unwrap_or_else(|e| panic!("DATABASE_URL {} is invalid: {e}", redact(&self.url)))
    }

    /// A new connection; its connection task runs in the background.
    ///
    /// # Panics
    ///
    /// When the database does not answer.
    pub async fn connect(&self) -> tokio_postgres::Client {
        try_connect(&self.url)
            .await
            .unwrap_or_else(|e| panic!("cannot connect to {}: {e}", redact(&self.url)))
    }
}

async fn try_connect(url: &str) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, connection) = tokio_postgres::connect(url, NoTls).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

#[cfg(feature = "containers")]
async fn start_container() -> Option<(
    testcontainers_modules::testcontainers::ContainerAsync<
        testcontainers_modules::postgres::Postgres,
    >,
    String,
)> {
    use testcontainers_modules::testcontainers::runners::AsyncRunner;
    let container = match testcontainers_modules::postgres::Postgres::default()
        .start()
        .await
    {
        Ok(container) => container,
        Err(error) => {
            eprintln!("no PostgreSQL and no Docker engine for testcontainers: {error}");
            return None;
        }
    };
    let port = container.get_host_port_ipv4(5432).await.ok()?;
    let url = format!("postgres://postgres:postgres@127.0.0.1:{port}/postgres");
    Some((container, url))
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        drop_schema(&self.url, &self.schema);
    }
}

/// Drops a schema other than a [`TestDatabase`]'s own (a test that creates one under a name of
/// its choosing) with everything in it when the guard is dropped, even by a panic.
///
/// # Examples
///
/// ```no_run
/// # #[tokio::main] async fn main() {
/// let db = outbox_testkit::TestDatabase::new().await;
/// let _guard = db.schema_guard("Mixed_Case");
/// db.connect().await.batch_execute("CREATE SCHEMA \"Mixed_Case\"").await.unwrap();
/// # }
/// ```
#[derive(Debug)]
#[must_use = "the schema is dropped when the guard is"]
pub struct SchemaGuard {
    url: String,
    schema: String,
}

impl TestDatabase {
    /// A guard that drops `schema` (quoted: its name may hold capitals) on this database when
    /// it is dropped.
    pub fn schema_guard(&self, schema: &str) -> SchemaGuard {
        SchemaGuard {
            url: self.url.clone(),
            schema: schema.to_owned(),
        }
    }
}

impl Drop for SchemaGuard {
    fn drop(&mut self) {
        drop_schema(&self.url, &self.schema);
    }
}

/// Drops `schema` (quoted) with everything in it, from a `Drop`; best effort.
fn drop_schema(url: &str, schema: &str) {
    let url = url.to_owned();
    let sql = format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE");
    crate::cleanup::block_on_thread(async move {
        if let Ok((client, connection)) = tokio_postgres::connect(&url, NoTls).await {
            tokio::spawn(connection);
            let _ = client.batch_execute(&sql).await;
        }
    });
}
