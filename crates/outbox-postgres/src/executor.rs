//! [`Executor`]: the connections and transactions that `enqueue` and the admin functions accept.

use futures::future::BoxFuture;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Row, Statement};

mod sealed {
    pub trait Sealed {}
}

/// Something a statement can run on: a client or a transaction of `tokio-postgres` or (feature
/// `deadpool`, on by default) of `deadpool-postgres`.
///
/// Pass your own transaction to [`PgOutbox::enqueue`](crate::PgOutbox::enqueue) so the message
/// commits or rolls back with your business rows.
///
/// Most statements are sent with their parameter types (`query_typed`), in one round trip and
/// without a named prepared statement, so they also work behind poolers that do not keep
/// prepared statements. The enqueue is the exception where it pays: on a `deadpool-postgres`
/// client or transaction, [`enqueue`](crate::PgOutbox::enqueue) and
/// [`enqueue_batch`](crate::PgOutbox::enqueue_batch) use the connection's statement cache
/// (unless [`PgConfig::prepare_enqueue`](crate::PgConfig::prepare_enqueue) is off), and an
/// [`Enqueuer`](crate::Enqueuer) holds statements prepared on a `tokio-postgres` connection.
///
/// The trait is sealed: the set of implementations is part of this crate's API.
pub trait Executor: sealed::Sealed + Send + Sync {
    #[doc(hidden)]
    fn query_typed<'a>(
        &'a self,
        statement: &'a str,
        params: &'a [(&'a (dyn ToSql + Sync), Type)],
    ) -> BoxFuture<'a, Result<Vec<Row>, tokio_postgres::Error>>;

    #[doc(hidden)]
    fn execute_typed<'a>(
        &'a self,
        statement: &'a str,
        params: &'a [(&'a (dyn ToSql + Sync), Type)],
    ) -> BoxFuture<'a, Result<u64, tokio_postgres::Error>>;

    /// Prepares `statement` with parameter types `types`: from the connection's statement cache
    /// where [`caches_statements`](Executor::caches_statements), else with a Parse round trip.
    #[doc(hidden)]
    fn prepare_typed<'a>(
        &'a self,
        statement: &'a str,
        types: &'a [Type],
    ) -> BoxFuture<'a, Result<Statement, tokio_postgres::Error>>;

    /// Whether [`prepare_typed`](Executor::prepare_typed) keeps the statements of this
    /// connection, so that preparing again costs no round trip.
    #[doc(hidden)]
    fn caches_statements(&self) -> bool;

    /// Runs a statement prepared on this connection.
    #[doc(hidden)]
    fn query_prepared<'a>(
        &'a self,
        statement: &'a Statement,
        params: &'a [&'a (dyn ToSql + Sync)],
    ) -> BoxFuture<'a, Result<Vec<Row>, tokio_postgres::Error>>;
}

/// The `tokio-postgres` client and transaction: the same inherent methods, none cached.
macro_rules! tokio_postgres_executor {
    ($t:ty) => {
        impl sealed::Sealed for $t {}
        impl Executor for $t {
            fn query_typed<'a>(
                &'a self,
                statement: &'a str,
                params: &'a [(&'a (dyn ToSql + Sync), Type)],
            ) -> BoxFuture<'a, Result<Vec<Row>, tokio_postgres::Error>> {
                Box::pin(<$t>::query_typed(self, statement, params))
            }

            fn execute_typed<'a>(
                &'a self,
                statement: &'a str,
                params: &'a [(&'a (dyn ToSql + Sync), Type)],
            ) -> BoxFuture<'a, Result<u64, tokio_postgres::Error>> {
                Box::pin(<$t>::execute_typed(self, statement, params))
            }

            fn prepare_typed<'a>(
                &'a self,
                statement: &'a str,
                types: &'a [Type],
            ) -> BoxFuture<'a, Result<Statement, tokio_postgres::Error>> {
                Box::pin(<$t>::prepare_typed(self, statement, types))
            }

            fn caches_statements(&self) -> bool {
                false
            }

            fn query_prepared<'a>(
                &'a self,
                statement: &'a Statement,
                params: &'a [&'a (dyn ToSql + Sync)],
            ) -> BoxFuture<'a, Result<Vec<Row>, tokio_postgres::Error>> {
                Box::pin(<$t>::query(self, statement, params))
            }
        }
    };
}

tokio_postgres_executor!(tokio_postgres::Client);
tokio_postgres_executor!(tokio_postgres::Transaction<'_>);

/// The `deadpool-postgres` client and transaction: they run what the `tokio-postgres` value
/// they wrap runs, and prepare from the connection's statement cache.
#[cfg(feature = "deadpool")]
macro_rules! deadpool_executor {
    ($t:ty, wraps $inner:ty) => {
        impl sealed::Sealed for $t {}
        impl Executor for $t {
            fn query_typed<'a>(
                &'a self,
                statement: &'a str,
                params: &'a [(&'a (dyn ToSql + Sync), Type)],
            ) -> BoxFuture<'a, Result<Vec<Row>, tokio_postgres::Error>> {
                let inner: &$inner = self;
                Executor::query_typed(inner, statement, params)
            }

            fn execute_typed<'a>(
                &'a self,
                statement: &'a str,
                params: &'a [(&'a (dyn ToSql + Sync), Type)],
            ) -> BoxFuture<'a, Result<u64, tokio_postgres::Error>> {
                let inner: &$inner = self;
                Executor::execute_typed(inner, statement, params)
            }

            fn prepare_typed<'a>(
                &'a self,
                statement: &'a str,
                types: &'a [Type],
            ) -> BoxFuture<'a, Result<Statement, tokio_postgres::Error>> {
                Box::pin(self.prepare_typed_cached(statement, types))
            }

            fn caches_statements(&self) -> bool {
                true
            }

            fn query_prepared<'a>(
                &'a self,
                statement: &'a Statement,
                params: &'a [&'a (dyn ToSql + Sync)],
            ) -> BoxFuture<'a, Result<Vec<Row>, tokio_postgres::Error>> {
                let inner: &$inner = self;
                Executor::query_prepared(inner, statement, params)
            }
        }
    };
}

#[cfg(feature = "deadpool")]
deadpool_executor!(deadpool_postgres::Object, wraps tokio_postgres::Client);
#[cfg(feature = "deadpool")]
deadpool_executor!(deadpool_postgres::Transaction<'_>, wraps tokio_postgres::Transaction<'_>);
