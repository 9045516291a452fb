//! [`Executor`]: the connections and transactions that `enqueue` and the admin functions accept.

use futures::future::BoxFuture;
use tokio_postgres::Row;
use tokio_postgres::types::{ToSql, Type};

mod sealed {
    pub trait Sealed {}
}

/// Something a statement can run on: a client or a transaction of `tokio-postgres` or (feature
/// `deadpool`, on by default) of `deadpool-postgres`.
///
/// Pass your own transaction to [`PgOutbox::enqueue`](crate::PgOutbox::enqueue) so the message
/// commits or rolls back with your business rows. Statements are sent with their parameter types
/// (`query_typed`), in one round trip and without a named prepared statement, so they also work
/// behind poolers that do not keep prepared statements.
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
}

impl sealed::Sealed for tokio_postgres::Client {}
impl Executor for tokio_postgres::Client {
    fn query_typed<'a>(
        &'a self,
        statement: &'a str,
        params: &'a [(&'a (dyn ToSql + Sync), Type)],
    ) -> BoxFuture<'a, Result<Vec<Row>, tokio_postgres::Error>> {
        Box::pin(tokio_postgres::Client::query_typed(self, statement, params))
    }

    fn execute_typed<'a>(
        &'a self,
        statement: &'a str,
        params: &'a [(&'a (dyn ToSql + Sync), Type)],
    ) -> BoxFuture<'a, Result<u64, tokio_postgres::Error>> {
        Box::pin(tokio_postgres::Client::execute_typed(
            self, statement, params,
        ))
    }
}

impl sealed::Sealed for tokio_postgres::Transaction<'_> {}
impl Executor for tokio_postgres::Transaction<'_> {
    fn query_typed<'a>(
        &'a self,
        statement: &'a str,
        params: &'a [(&'a (dyn ToSql + Sync), Type)],
    ) -> BoxFuture<'a, Result<Vec<Row>, tokio_postgres::Error>> {
        Box::pin(tokio_postgres::Transaction::query_typed(
            self, statement, params,
        ))
    }

    fn execute_typed<'a>(
        &'a self,
        statement: &'a str,
        params: &'a [(&'a (dyn ToSql + Sync), Type)],
    ) -> BoxFuture<'a, Result<u64, tokio_postgres::Error>> {
        Box::pin(tokio_postgres::Transaction::execute_typed(
            self, statement, params,
        ))
    }
}

#[cfg(feature = "deadpool")]
impl sealed::Sealed for deadpool_postgres::Object {}
#[cfg(feature = "deadpool")]
impl Executor for deadpool_postgres::Object {
    fn query_typed<'a>(
        &'a self,
        statement: &'a str,
        params: &'a [(&'a (dyn ToSql + Sync), Type)],
    ) -> BoxFuture<'a, Result<Vec<Row>, tokio_postgres::Error>> {
        let client: &tokio_postgres::Client = self;
        Executor::query_typed(client, statement, params)
    }

    fn execute_typed<'a>(
        &'a self,
        statement: &'a str,
        params: &'a [(&'a (dyn ToSql + Sync), Type)],
    ) -> BoxFuture<'a, Result<u64, tokio_postgres::Error>> {
        let client: &tokio_postgres::Client = self;
        Executor::execute_typed(client, statement, params)
    }
}

#[cfg(feature = "deadpool")]
impl sealed::Sealed for deadpool_postgres::Transaction<'_> {}
#[cfg(feature = "deadpool")]
impl Executor for deadpool_postgres::Transaction<'_> {
    fn query_typed<'a>(
        &'a self,
        statement: &'a str,
        params: &'a [(&'a (dyn ToSql + Sync), Type)],
    ) -> BoxFuture<'a, Result<Vec<Row>, tokio_postgres::Error>> {
        let transaction: &tokio_postgres::Transaction<'_> = self;
        Executor::query_typed(transaction, statement, params)
    }

    fn execute_typed<'a>(
        &'a self,
        statement: &'a str,
        params: &'a [(&'a (dyn ToSql + Sync), Type)],
    ) -> BoxFuture<'a, Result<u64, tokio_postgres::Error>> {
        let transaction: &tokio_postgres::Transaction<'_> = self;
        Executor::execute_typed(transaction, statement, params)
    }
}
