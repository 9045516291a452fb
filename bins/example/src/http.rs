//! The HTTP interface: `POST /order`, `GET /health` (liveness), `GET /ready` (readiness),
//! `GET /metrics`; JSON errors for everything else.
//!
//! Limits, so that a burst of bad or slow requests costs bounded memory and never stops the
//! server: request bodies over [`MAX_BODY_BYTES`] get 413; a request not answered within the
//! request timeout gets 503; at most [`MAX_ORDERS_IN_FLIGHT`] orders are processed at once (the
//! others wait, within the request timeout, before their bodies are read). Every refusal is a
//! JSON `{"error": reason}`.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use deadpool_postgres::Pool;
use metrics_exporter_prometheus::PrometheusHandle;
use outbox_core::RelayState;
use outbox_postgres::PgOutbox;
use serde_json::{Value, json};
use tokio::sync::{Semaphore, watch};
use tokio_util::sync::CancellationToken;

use crate::cli::Role;
use crate::orders::{MAX_CUSTOMER_ID_LEN, NewOrder, Orders};

/// Largest request body accepted, in bytes.
pub(crate) const MAX_BODY_BYTES: usize = 64 * 1024;
/// Longest order name, in characters.
pub(crate) const MAX_NAME_CHARS: usize = 200;
/// Largest order total, in the smallest currency unit (1,000,000.00).
pub(crate) const MAX_TOTAL: i64 = 100_000_000;
/// Orders processed at once; later ones wait for a slot. Bounds the request bodies held in
/// memory (each at most [`MAX_BODY_BYTES`]) while the database is slow; the connection pool
/// bounds the transactions themselves.
pub(crate) const MAX_ORDERS_IN_FLIGHT: usize = 512;
/// Connections waiting to be accepted; the kernel caps it at `net.core.somaxconn`.
const LISTEN_BACKLOG: u32 = 4096;
/// How long each readiness check may take before it counts as failed.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// What the HTTP server needs besides its listener.
#[derive(Clone, Debug)]
pub(crate) struct Service {
    /// Places the orders.
    pub(crate) orders: Arc<Orders>,
    /// This instance's role, as `/health` and `/ready` report it.
    pub(crate) role: Role,
    /// The relay's state and since when.
    pub(crate) relay: RelayClock,
    /// What `/ready` checks.
    pub(crate) readiness: Readiness,
    /// The recorder `/metrics` renders.
    pub(crate) metrics: PrometheusHandle,
    /// Longest time a request may take, body included, before it is answered 503.
    pub(crate) request_timeout: Duration,
}

/// The dependencies `/ready` checks.
#[derive(Clone, Debug)]
pub(crate) struct Readiness {
    /// The pool the orders use: a check through it sees what an order would see.
    pub(crate) pool: Pool,
    /// The outbox whose migrations must be applied.
    pub(crate) outbox: PgOutbox,
    /// The broker connection, if this instance publishes.
    pub(crate) broker: BrokerProbe,
}

/// The broker connection `/ready` looks at.
#[derive(Clone, Debug)]
pub(crate) enum BrokerProbe {
    /// This instance never publishes (a replica): the broker does not make it ready or not.
    Unused,
    /// The relay's NATS client, once it has connected, and the stream it publishes to.
    #[cfg(feature = "nats")]
    Nats {
        /// `None` until the relay's first connection succeeded.
        client: watch::Receiver<Option<async_nats::Client>>,
        /// The stream the relay publishes to.
        stream: String,
    },
}

/// The relay's state, and when it last changed (as far as this process saw).
#[derive(Clone, Debug)]
pub(crate) struct RelayClock {
    state: watch::Receiver<RelayState>,
    since: Arc<Mutex<(RelayState, SystemTime)>>,
}

impl RelayClock {
    /// Starts recording the changes of `state`. Call it before the relay starts, so the first
    /// transitions are timed.
    pub(crate) fn start(mut state: watch::Receiver<RelayState>) -> Self {
        let current = *state.borrow_and_update();
        let since = Arc::new(Mutex::new((current, SystemTime::now())));
        let clock = RelayClock {
            state: state.clone(),
            since: since.clone(),
        };
        tokio::spawn(async move {
            // Ends when the relay's sender is gone: the state cannot change any more.
            while state.changed().await.is_ok() {
                let current = *state.borrow_and_update();
                if let Ok(mut since) = since.lock()
                    && since.0 != current
                {
                    *since = (current, SystemTime::now());
                }
            }
        });
        clock
    }

    /// The current state, read from the relay itself (never behind).
    fn state(&self) -> RelayState {
        *self.state.borrow()
    }

    /// Since when the relay is in `state`, if the recorder has seen that state yet.
    fn since(&self, state: RelayState) -> Option<SystemTime> {
        let since = self.since.lock().ok()?;
        (since.0 == state).then_some(since.1)
    }
}

/// What the handlers share.
#[derive(Clone, Debug)]
struct AppState {
    orders: Arc<Orders>,
    role: Role,
    relay: RelayClock,
    readiness: Readiness,
    metrics: PrometheusHandle,
}

/// Binds `addr`; fails at once if the port is taken, before anything else starts.
///
/// The queue of connections waiting to be accepted holds [`LISTEN_BACKLOG`] (as far as the
/// kernel's `somaxconn` allows): when a burst of clients connects faster than the server
/// accepts, an overflowing queue makes the kernel drop handshakes and fall back to SYN cookies,
/// and clients see resets.
pub(crate) async fn bind(addr: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()
    } else {
        tokio::net::TcpSocket::new_v6()
    };
    socket
        .and_then(|socket| {
            // As std and tokio do: a restarted server rebinds while old connections linger.
            #[cfg(unix)]
            socket.set_reuseaddr(true)?;
            socket.bind(addr)?;
            socket.listen(LISTEN_BACKLOG)
        })
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))
}

/// Serves HTTP on `listener` until `shutdown` is cancelled, then finishes requests in flight.
pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    service: Service,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let timeout = service.request_timeout;
    let app = router(
        AppState {
            orders: service.orders,
            role: service.role,
            relay: service.relay,
            readiness: service.readiness,
            metrics: service.metrics,
        },
        timeout,
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await?;
    Ok(())
}

fn router(state: AppState, request_timeout: Duration) -> Router {
    let slots = Arc::new(Semaphore::new(MAX_ORDERS_IN_FLIGHT));
    let metrics = state.metrics.clone();
    Router::new()
        .route(
            "/order",
            post(create_order).route_layer(middleware::from_fn_with_state(slots, take_slot)),
        )
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/metrics", get(crate::metrics::scrape).with_state(metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(middleware::from_fn_with_state(request_timeout, time_limit))
        .layer(middleware::from_fn(count_response))
}

fn error(status: StatusCode, reason: impl Into<String>) -> Response {
    (status, axum::Json(json!({ "error": reason.into() }))).into_response()
}

/// Answers 503 when the request (body included) is not done within `limit`. A request cut off
/// while committing an order may still have placed it: the response says so.
async fn time_limit(State(limit): State<Duration>, request: Request, next: Next) -> Response {
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("request not completed within {limit:?}; an order may still have been placed"),
        ),
    }
}

/// Holds one of the order slots while the order is processed.
async fn take_slot(State(slots): State<Arc<Semaphore>>, request: Request, next: Next) -> Response {
    // The semaphore is never closed; the outer time limit bounds the wait.
    let Ok(_slot) = slots.acquire().await else {
        return error(StatusCode::SERVICE_UNAVAILABLE, "shutting down");
    };
    next.run(request).await
}

async fn count_response(request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    crate::metrics::record_response(response.status());
    response
}

async fn not_found() -> Response {
    error(
        StatusCode::NOT_FOUND,
        "no such path; try POST /order, GET /health, GET /ready or GET /metrics",
    )
}

async fn method_not_allowed() -> Response {
    error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
}

/// Liveness: answers as long as the process serves HTTP, whatever its dependencies do.
async fn health(State(state): State<AppState>) -> Response {
    let leading = state.relay.state().is_leading();
    axum::Json(json!({
        "role": state.role.as_str(),
        "leading": leading,
        "status": "ok",
    }))
    .into_response()
}

/// Readiness: 200 when the database answers with the outbox migrated and (for an instance
/// that publishes) the broker is connected and its stream answers; 503 otherwise. Each check
/// runs at the same time as the others, bounded by [`CHECK_TIMEOUT`].
async fn ready(State(state): State<AppState>) -> Response {
    let (database, broker) = tokio::join!(
        check_database(&state.readiness),
        check_broker(&state.readiness.broker)
    );
    let ready = database.is_ok() && broker.is_ok();
    let body = json!({
        "status": if ready { "ready" } else { "not ready" },
        "role": state.role.as_str(),
        "checks": {
            "database": database.into_json(),
            "broker": broker.into_json(),
        },
        "relay": relay_json(state.role, &state.relay),
    });
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(body)).into_response()
}

/// The outcome of one readiness check.
#[derive(Debug)]
enum Check {
    /// The dependency answered; extra fields for the report.
    Up(serde_json::Map<String, Value>),
    /// It does not matter for this instance.
    Unused(&'static str),
    /// It failed, with the reason.
    Down(String),
}

impl Check {
    fn is_ok(&self) -> bool {
        !matches!(self, Check::Down(_))
    }

    fn into_json(self) -> Value {
        match self {
            Check::Up(mut fields) => {
                fields.insert("status".to_owned(), json!("up"));
                Value::Object(fields)
            }
            Check::Unused(reason) => json!({ "status": "unused", "reason": reason }),
            Check::Down(error) => json!({ "status": "down", "error": error }),
        }
    }
}

/// Runs `check` within [`CHECK_TIMEOUT`], adding how long it took.
async fn timed<F>(check: F) -> Check
where
    F: Future<Output = Check>,
{
    let started = Instant::now();
    let outcome = tokio::time::timeout(CHECK_TIMEOUT, check)
        .await
        .unwrap_or_else(|_| Check::Down(format!("no answer within {CHECK_TIMEOUT:?}")));
    match outcome {
        Check::Up(mut fields) => {
            let elapsed = started.elapsed().as_secs_f64() * 1000.0;
            fields.insert(
                "elapsed_ms".to_owned(),
                json!((elapsed * 10.0).round() / 10.0),
            );
            Check::Up(fields)
        }
        other => other,
    }
}

async fn check_database(readiness: &Readiness) -> Check {
    timed(async {
        let client = match readiness.pool.get().await {
            Ok(client) => client,
            Err(e) => return Check::Down(crate::report::describe(&e)),
        };
        match readiness.outbox.schema_version(&client).await {
            Ok(Some(version)) => {
                let mut fields = serde_json::Map::new();
                fields.insert("schema_version".to_owned(), json!(version));
                Check::Up(fields)
            }
            Ok(None) => Check::Down(format!(
                "the outbox schema {:?} is not migrated",
                readiness.outbox.config().schema
            )),
            Err(e) => Check::Down(crate::report::describe(&e)),
        }
    })
    .await
}

async fn check_broker(broker: &BrokerProbe) -> Check {
    match broker {
        BrokerProbe::Unused => Check::Unused("a replica never publishes"),
        #[cfg(feature = "nats")]
        BrokerProbe::Nats { client, stream } => {
            let client = client.borrow().clone();
            let Some(client) = client else {
                return Check::Down("not connected to NATS yet".to_owned());
            };
            timed(async move {
                let state = client.connection_state();
                if state != async_nats::connection::State::Connected {
                    return Check::Down(format!("NATS connection is {state}"));
                }
                // A request to the JetStream API: the server answers, JetStream is enabled
                // and the relay's stream exists.
                match async_nats::jetstream::new(client).get_stream(stream).await {
                    Ok(_) => {
                        let mut fields = serde_json::Map::new();
                        fields.insert("stream".to_owned(), json!(stream));
                        Check::Up(fields)
                    }
                    Err(e) => Check::Down(format!(
                        "JetStream stream {stream}: {}",
                        crate::report::describe(&e)
                    )),
                }
            })
            .await
        }
    }
}

fn relay_json(role: Role, relay: &RelayClock) -> Value {
    if role == Role::Replica {
        return json!({ "state": "off", "leading": false });
    }
    let state = relay.state();
    let name = match state {
        RelayState::Campaigning => "campaigning",
        RelayState::Leading => "leading",
        RelayState::Stopped => "stopped",
        _ => "unknown",
    };
    let mut body = json!({ "state": name, "leading": state.is_leading() });
    if let Some(since) = relay.since(state) {
        body["since"] = json!(humantime::format_rfc3339_millis(since).to_string());
        let for_seconds = since.elapsed().unwrap_or_default().as_secs_f64();
        body["for_seconds"] = json!((for_seconds * 10.0).round() / 10.0);
    }
    body
}

async fn create_order(
    State(state): State<AppState>,
    headers: axum::http::HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let body = match body {
        Ok(body) => body,
        Err(rejection) => return body_refused(&rejection),
    };
    let order = match parse_order(&body) {
        Ok(order) => order,
        Err(reason) => return error(StatusCode::BAD_REQUEST, reason),
    };
    // The caller's W3C trace context travels on with the order's event.
    let trace = crate::telemetry::incoming_trace(&headers);
    match state.orders.place_traced(&order, trace).await {
        Ok(placed) => {
            crate::metrics::record_order_created();
            (StatusCode::CREATED, axum::Json(placed)).into_response()
        }
        Err(e) => {
            let reason = crate::report::describe(&e);
            tracing::warn!(customer_id = %order.customer_id, "order failed: {reason}");
            error(StatusCode::SERVICE_UNAVAILABLE, reason)
        }
    }
}

/// The JSON answer to a body that could not be read: 413 over the limit, else what axum says.
fn body_refused(rejection: &BytesRejection) -> Response {
    let status = rejection.status();
    if status == StatusCode::PAYLOAD_TOO_LARGE {
        error(
            status,
            format!(
                "request body over the limit of {} KiB",
                MAX_BODY_BYTES / 1024
            ),
        )
    } else {
        error(
            status,
            format!("cannot read the request body: {}", rejection.body_text()),
        )
    }
}

/// Reads `{"name": str, "total": int, "customer_id": str (optional)}`.
///
/// `name`: 1 to [`MAX_NAME_CHARS`] characters, not only spaces, no control characters. `total`:
/// an integer from 0 to [`MAX_TOTAL`]. `customer_id`: 1 to [`MAX_CUSTOMER_ID_LEN`] bytes, no
/// control characters, no leading or trailing spaces. A missing (or null) `customer_id` makes a
/// new customer with a fresh UUIDv7 id, returned in the response: an anonymous order gets its
/// own key rather than piling onto one shared row. Unknown fields are ignored.
fn parse_order(body: &[u8]) -> Result<NewOrder, String> {
    let value: Value = serde_json::from_slice(body).map_err(|e| format!("invalid JSON: {e}"))?;
    let Value::Object(mut fields) = value else {
        return Err("expected a JSON object {\"name\": string, \"total\": integer}".to_owned());
    };
    let name = match fields.remove("name") {
        Some(Value::String(name)) => {
            if name.trim().is_empty() {
                return Err("`name` must not be empty".to_owned());
            }
            if name.chars().count() > MAX_NAME_CHARS {
                return Err(format!("`name` is longer than {MAX_NAME_CHARS} characters"));
            }
            if name.chars().any(char::is_control) {
                return Err("`name` must not contain control characters".to_owned());
            }
            name
        }
        Some(_) => return Err("`name` must be a string".to_owned()),
        None => return Err("missing field `name`".to_owned()),
    };
    let total = match fields.remove("total") {
        Some(Value::Number(n)) if n.is_i64() || n.is_u64() => match n.as_i64() {
            Some(total) if (0..=MAX_TOTAL).contains(&total) => total,
            Some(total) if total < 0 => return Err("`total` must not be negative".to_owned()),
            _ => {
                return Err(format!(
                    "`total` must be at most {MAX_TOTAL} (in the smallest currency unit)"
                ));
            }
        },
        Some(_) => return Err("`total` must be an integer".to_owned()),
        None => return Err("missing field `total`".to_owned()),
    };
    let customer_id = match fields.remove("customer_id") {
        None | Some(Value::Null) => uuid::Uuid::now_v7().to_string(),
        Some(Value::String(id)) => {
            if id.is_empty() {
                return Err("`customer_id` must not be empty".to_owned());
            }
            if id.len() > MAX_CUSTOMER_ID_LEN {
                return Err(format!(
                    "`customer_id` is longer than {MAX_CUSTOMER_ID_LEN} bytes"
                ));
            }
            // It travels as a message header (the key): no control characters.
            if id.chars().any(char::is_control) {
                return Err("`customer_id` must not contain control characters".to_owned());
            }
            // " alice" and "alice" would be two customers that look alike in every log.
            if id.trim() != id {
                return Err("`customer_id` must not start or end with spaces".to_owned());
            }
            id
        }
        Some(_) => return Err("`customer_id` must be a string".to_owned()),
    };
    Ok(NewOrder {
        customer_id,
        name,
        total,
    })
}

#[cfg(test)]
mod tests {
    use super::{MAX_NAME_CHARS, MAX_TOTAL, parse_order};

    #[test]
    fn good_orders_parse() {
        let o = parse_order(br#"{"name":"book","total":12,"customer_id":"c-1"}"#).unwrap();
        assert_eq!(
            (o.name.as_str(), o.total, o.customer_id.as_str()),
            ("book", 12, "c-1")
        );
        let o = parse_order(br#"{"name":"book","total":0,"extra":true}"#).unwrap();
        assert_eq!(
            uuid::Uuid::parse_str(&o.customer_id)
                .unwrap()
                .get_version_num(),
            7
        );
        let o = parse_order(br#"{"name":"book","total":1,"customer_id":null}"#).unwrap();
        assert!(!o.customer_id.is_empty());
        let longest = format!(
            r#"{{"name":"{}","total":{MAX_TOTAL}}}"#,
            "é".repeat(MAX_NAME_CHARS)
        );
        let o = parse_order(longest.as_bytes()).unwrap();
        assert_eq!(o.total, MAX_TOTAL);
    }

    #[test]
    fn bad_orders_say_why() {
        let long_name = format!(
            r#"{{"name":"{}","total":1}}"#,
            "a".repeat(MAX_NAME_CHARS + 1)
        );
        let too_much = format!(r#"{{"name":"a","total":{}}}"#, MAX_TOTAL + 1);
        let cases: &[(&[u8], &str)] = &[
            (b"", "invalid JSON"),
            (b"{", "invalid JSON"),
            (b"[1]", "JSON object"),
            (br#"{"total":1}"#, "missing field `name`"),
            (br#"{"name":1,"total":1}"#, "`name` must be a string"),
            (br#"{"name":" ","total":1}"#, "`name` must not be empty"),
            (long_name.as_bytes(), "`name` is longer than 200 characters"),
            (br#"{"name":"a\u0000b","total":1}"#, "control"),
            (br#"{"name":"a"}"#, "missing field `total`"),
            (br#"{"name":"a","total":"1"}"#, "`total` must be an integer"),
            (br#"{"name":"a","total":1.5}"#, "`total` must be an integer"),
            (br#"{"name":"a","total":-1}"#, "negative"),
            (too_much.as_bytes(), "at most 100000000"),
            (
                br#"{"name":"a","total":18446744073709551615}"#,
                "at most 100000000",
            ),
            (
                br#"{"name":"a","total":1e30}"#,
                "`total` must be an integer",
            ),
            (
                br#"{"name":"a","total":1,"customer_id":7}"#,
                "`customer_id` must be a string",
            ),
            (
                br#"{"name":"a","total":1,"customer_id":""}"#,
                "must not be empty",
            ),
            (br#"{"name":"a","total":1,"customer_id":"a\nb"}"#, "control"),
            (br#"{"name":"a","total":1,"customer_id":" bob"}"#, "spaces"),
        ];
        for (body, reason) in cases {
            let error = parse_order(body).unwrap_err();
            assert!(
                error.contains(reason),
                "{}: {error}",
                String::from_utf8_lossy(body)
            );
        }
    }
}
