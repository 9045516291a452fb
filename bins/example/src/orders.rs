//! The service's own tables and the order transaction: one order and its event, atomically.

use deadpool_postgres::{Pool, PoolError};
use outbox_core::{Message, TraceContext};
use outbox_postgres::PgOutbox;
use serde::Serialize;
use tracing::Instrument;
use uuid::Uuid;

/// Largest customer id, in bytes: it is the message key, which the outbox caps at 1 KiB.
pub(crate) const MAX_CUSTOMER_ID_LEN: usize = outbox_core::message::MAX_KEY_LEN;

/// An order to place.
#[derive(Clone, Debug)]
pub(crate) struct NewOrder {
    /// The customer; also the event's ordering key.
    pub(crate) customer_id: String,
    /// What was ordered.
    pub(crate) name: String,
    /// The amount, in the smallest currency unit.
    pub(crate) total: i64,
}

/// A committed order.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct Placed {
    /// The order's id (UUIDv7).
    pub(crate) order_id: Uuid,
    /// The customer.
    pub(crate) customer_id: String,
    /// 1, 2, 3 … per customer, in the order the customer's orders committed.
    pub(crate) seq: i64,
    /// The outbox message id: the event's `Nats-Msg-Id`.
    pub(crate) message_id: Uuid,
    /// The W3C trace id the event carries in its `traceparent` header: the caller's, or a new
    /// one.
    pub(crate) trace_id: String,
}

/// The event payload, as the contract spells it.
#[derive(Serialize)]
struct OrderCreated<'a> {
    event_type: &'static str,
    order_id: Uuid,
    customer_id: &'a str,
    seq: i64,
    order: OrderBody<'a>,
}

#[derive(Serialize)]
struct OrderBody<'a> {
    name: &'a str,
    total: i64,
}

/// Why an order was not placed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum OrderError {
    /// No connection could be had from the pool.
    #[error("database unavailable: {0}")]
    Pool(#[from] PoolError),
    /// A statement or the commit failed.
    #[error("database error: {0}")]
    Database(#[from] tokio_postgres::Error),
    /// The event could not be built (a customer id the outbox refuses as a key).
    #[error("invalid event: {0}")]
    Message(#[source] outbox_core::Error),
    /// The outbox failed to enqueue the event.
    #[error("outbox error: {0}")]
    Outbox(#[from] outbox_postgres::Error),
}

impl OrderError {
    /// Whether trying the same order again later may succeed: lost or refused connections,
    /// serialization failures, a server that is shutting down or out of resources.
    pub(crate) fn is_transient(&self) -> bool {
        match self {
            OrderError::Pool(PoolError::Backend(error)) => is_transient_pg(error),
            OrderError::Pool(_) => true,
            OrderError::Database(error) => is_transient_pg(error),
            OrderError::Message(_) => false,
            OrderError::Outbox(error) => error.is_transient(),
        }
    }
}

/// Whether a PostgreSQL error may go away on its own (see [`OrderError::is_transient`]).
pub(crate) fn is_transient_pg(error: &tokio_postgres::Error) -> bool {
    match error.code() {
        // No SQLSTATE: the connection broke or could not be made.
        None => true,
        Some(code) => {
            let class = &code.code()[..2];
            // 08 connection exception, 40 transaction rollback, 53 insufficient resources,
            // 57 operator intervention (admin shutdown, cannot connect now), 58 system error.
            matches!(class, "08" | "40" | "53" | "57" | "58")
        }
    }
}

/// The SQL of the service, with its schema spliced in once.
#[derive(Debug)]
struct Sql {
    migrate: String,
    next_seq: String,
    insert_order: String,
}

impl Sql {
    fn new(schema: &str) -> Self {
        // The schema was validated as a plain lowercase identifier; quoting keeps it one anyway.
        let s = format!("\"{schema}\"");
        Sql {
            migrate: format!(
                "CREATE SCHEMA IF NOT EXISTS {s};
                 CREATE TABLE IF NOT EXISTS {s}.customers (
                     id text PRIMARY KEY,
                     order_seq bigint NOT NULL,
                     created_at timestamptz NOT NULL DEFAULT now(),
                     updated_at timestamptz NOT NULL DEFAULT now()
                 );
                 CREATE TABLE IF NOT EXISTS {s}.orders (
                     id uuid PRIMARY KEY,
                     customer_id text NOT NULL REFERENCES {s}.customers (id),
                     seq bigint NOT NULL,
                     name text NOT NULL,
                     total bigint NOT NULL,
                     message_id uuid NOT NULL,
                     created_at timestamptz NOT NULL DEFAULT now(),
                     UNIQUE (customer_id, seq)
                 );"
            ),
            // Creating or updating the customer's row locks it until commit: concurrent orders of
            // one customer serialize here, so their seqs and their outbox order agree.
            next_seq: format!(
                "INSERT INTO {s}.customers AS c (id, order_seq) VALUES ($1, 1)
                 ON CONFLICT (id) DO UPDATE SET order_seq = c.order_seq + 1, updated_at = now()
                 RETURNING c.order_seq"
            ),
            insert_order: format!(
                "INSERT INTO {s}.orders (id, customer_id, seq, name, total, message_id)
                 VALUES ($1, $2, $3, $4, $5, $6)"
            ),
        }
    }
}

/// Places orders: the business rows and the outbox event in one transaction.
#[derive(Debug)]
pub(crate) struct Orders {
    pool: Pool,
    outbox: PgOutbox,
    subject: String,
    schema: String,
    sql: Sql,
}

impl Orders {
    /// Orders in `schema`, written through `pool`, with events on `subject`.
    pub(crate) fn new(pool: Pool, outbox: PgOutbox, schema: &str, subject: String) -> Self {
        Orders {
            pool,
            outbox,
            subject,
            schema: schema.to_owned(),
            sql: Sql::new(schema),
        }
    }

    /// Creates the service's schema and tables if missing. Safe when several instances start
    /// at once: they take turns on a transaction-scoped advisory lock.
    pub(crate) async fn migrate(
        &self,
        client: &mut tokio_postgres::Client,
    ) -> Result<(), tokio_postgres::Error> {
        let tx = client.transaction().await?;
        tx.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
            &[&format!("outbox-example:{}", self.schema)],
        )
        .await?;
        tx.batch_execute(&self.sql.migrate).await?;
        tx.commit().await
    }

    /// Places one order of the load generator, in a trace of its own: see
    /// [`place_traced`](Orders::place_traced).
    pub(crate) async fn place(&self, order: &NewOrder) -> Result<Placed, OrderError> {
        self.place_in_span(order, None, false).await
    }

    /// Places one order of a request that carried `incoming` (its `traceparent` and
    /// `tracestate`), and logs it with its trace id.
    ///
    /// The event carries the trace context on to its consumers: with the `otel` feature, the
    /// context of this order's span (a child of `incoming`, exported over OTLP); without it,
    /// `incoming` as it came. With neither, a new trace starts here, so every order can be
    /// followed from its event to its consumers.
    pub(crate) async fn place_traced(
        &self,
        order: &NewOrder,
        incoming: Option<TraceContext>,
    ) -> Result<Placed, OrderError> {
        self.place_in_span(order, incoming, true).await
    }

    async fn place_in_span(
        &self,
        order: &NewOrder,
        incoming: Option<TraceContext>,
        log: bool,
    ) -> Result<Placed, OrderError> {
        let span = tracing::info_span!(
            "place_order",
            customer_id = %order.customer_id,
            trace_id = tracing::field::Empty,
        );
        #[cfg(feature = "otel")]
        if let Some(incoming) = &incoming {
            incoming.set_parent_of(&span);
        }
        let trace = span.in_scope(|| event_trace(incoming));
        span.record("trace_id", tracing::field::display(trace.trace_id()));
        let placed = self
            .place_once(order, &trace)
            .instrument(span.clone())
            .await?;
        span.in_scope(|| {
            let (order_id, seq, message_id) = (placed.order_id, placed.seq, placed.message_id);
            // One line per request is a service's usual log; the load generator's thousands of
            // orders are summarised by its progress lines instead.
            if log {
                tracing::info!(%order_id, seq, %message_id, "order placed");
            } else {
                tracing::debug!(%order_id, seq, %message_id, "order placed");
            }
        });
        Ok(placed)
    }

    /// Places one order: locks or creates the customer's row (which gives the order its
    /// per-customer `seq`), inserts the order and enqueues its `order_created` event carrying
    /// `trace`, then commits. Nothing is written unless all of it commits.
    async fn place_once(
        &self,
        order: &NewOrder,
        trace: &TraceContext,
    ) -> Result<Placed, OrderError> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let next_seq = tx.prepare_cached(&self.sql.next_seq).await?;
        let seq: i64 = tx.query_one(&next_seq, &[&order.customer_id]).await?.get(0);

        let order_id = Uuid::now_v7();
        let event = OrderCreated {
            event_type: "order_created",
            order_id,
            customer_id: &order.customer_id,
            seq,
            order: OrderBody {
                name: &order.name,
                total: order.total,
            },
        };
        let message = Message::builder(self.subject.as_str())
            .key(order.customer_id.as_str())
            .trace_context(trace)
            .json(&event)
            .and_then(|builder| builder.build())
            .map_err(OrderError::Message)?;

        let insert_order = tx.prepare_cached(&self.sql.insert_order).await?;
        tx.execute(
            &insert_order,
            &[
                &order_id,
                &order.customer_id,
                &seq,
                &order.name,
                &order.total,
                &message.id(),
            ],
        )
        .await?;
        self.outbox.enqueue(&tx, &message).await?;
        tx.commit().await?;
        Ok(Placed {
            order_id,
            customer_id: order.customer_id.clone(),
            seq,
            message_id: message.id(),
            trace_id: trace.trace_id().to_string(),
        })
    }
}

/// The trace context an order's event carries: the current span's when OpenTelemetry records
/// it (feature `otel` with an exporter), else the caller's, else a new trace.
fn event_trace(incoming: Option<TraceContext>) -> TraceContext {
    #[cfg(feature = "otel")]
    if let Some(current) = TraceContext::current() {
        return current;
    }
    incoming.unwrap_or_else(TraceContext::random)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sql_names_the_schema_everywhere() {
        let sql = Sql::new("shop");
        assert!(sql.migrate.contains("\"shop\".customers"));
        assert!(sql.next_seq.contains("\"shop\".customers"));
        assert!(sql.insert_order.contains("\"shop\".orders"));
    }

    #[test]
    fn event_payload_has_the_contract_fields() {
        let id = Uuid::nil();
        let event = OrderCreated {
            event_type: "order_created",
            order_id: id,
            customer_id: "c",
            seq: 3,
            order: OrderBody {
                name: "book",
                total: 12,
            },
        };
        let value = serde_json::to_value(&event).unwrap();
        assert_eq!(
            value,
            serde_json::json!({
                "event_type": "order_created",
                "order_id": id.to_string(),
                "customer_id": "c",
                "seq": 3,
                "order": {"name": "book", "total": 12}
            })
        );
    }
}
