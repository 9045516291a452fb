//! The HTTP interface: `POST /order`, `GET /health`; JSON errors for everything else.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use outbox_core::RelayState;
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::cli::Role;
use crate::orders::{MAX_CUSTOMER_ID_LEN, NewOrder, Orders};

/// What the handlers share.
#[derive(Clone, Debug)]
struct AppState {
    orders: Arc<Orders>,
    role: Role,
    relay: watch::Receiver<RelayState>,
}

/// Binds `addr`; fails at once if the port is taken, before anything else starts.
pub(crate) async fn bind(addr: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))
}

/// Serves HTTP on `listener` until `shutdown` is cancelled, then finishes requests in flight.
pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    orders: Arc<Orders>,
    role: Role,
    relay: watch::Receiver<RelayState>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let app = router(AppState {
        orders,
        role,
        relay,
    });
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await?;
    Ok(())
}

fn router(state: AppState) -> Router {
    Router::new()
        .route("/order", post(create_order))
        .route("/health", get(health))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

fn error(status: StatusCode, reason: impl Into<String>) -> Response {
    (status, axum::Json(json!({ "error": reason.into() }))).into_response()
}

async fn not_found() -> Response {
    error(
        StatusCode::NOT_FOUND,
        "no such path; try POST /order or GET /health",
    )
}

async fn method_not_allowed() -> Response {
    error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
}

async fn health(State(state): State<AppState>) -> Response {
    let leading = state.relay.borrow().is_leading();
    axum::Json(json!({
        "role": state.role.as_str(),
        "leading": leading,
        "status": "ok",
    }))
    .into_response()
}

async fn create_order(State(state): State<AppState>, body: Bytes) -> Response {
    let order = match parse_order(&body) {
        Ok(order) => order,
        Err(reason) => return error(StatusCode::BAD_REQUEST, reason),
    };
    match state.orders.place(&order).await {
        Ok(placed) => (StatusCode::CREATED, axum::Json(placed)).into_response(),
        Err(e) => {
            let reason = crate::report::describe(&e);
            tracing::warn!(customer_id = %order.customer_id, "order failed: {reason}");
            error(StatusCode::SERVICE_UNAVAILABLE, reason)
        }
    }
}

/// Reads `{"name": str, "total": int, "customer_id": str (optional)}`.
///
/// A missing (or null) `customer_id` makes a new customer with a fresh UUIDv7 id, returned in
/// the response: an anonymous order gets its own key rather than piling onto one shared row.
/// Unknown fields are ignored.
fn parse_order(body: &[u8]) -> Result<NewOrder, String> {
    let value: Value = serde_json::from_slice(body).map_err(|e| format!("invalid JSON: {e}"))?;
    let Value::Object(mut fields) = value else {
        return Err("expected a JSON object {\"name\": string, \"total\": integer}".to_owned());
    };
    let name = match fields.remove("name") {
        Some(Value::String(name)) if !name.trim().is_empty() => name,
        Some(Value::String(_)) => return Err("`name` must not be empty".to_owned()),
        Some(_) => return Err("`name` must be a string".to_owned()),
        None => return Err("missing field `name`".to_owned()),
    };
    let total = match fields.remove("total") {
        Some(Value::Number(n)) => match n.as_i64() {
            Some(total) if total >= 0 => total,
            Some(_) => return Err("`total` must not be negative".to_owned()),
            None => return Err("`total` must be an integer".to_owned()),
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
    use super::parse_order;

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
    }

    #[test]
    fn bad_orders_say_why() {
        let cases: &[(&[u8], &str)] = &[
            (b"", "invalid JSON"),
            (b"{", "invalid JSON"),
            (b"[1]", "JSON object"),
            (br#"{"total":1}"#, "missing field `name`"),
            (br#"{"name":1,"total":1}"#, "`name` must be a string"),
            (br#"{"name":" ","total":1}"#, "`name` must not be empty"),
            (br#"{"name":"a"}"#, "missing field `total`"),
            (br#"{"name":"a","total":"1"}"#, "`total` must be an integer"),
            (br#"{"name":"a","total":1.5}"#, "`total` must be an integer"),
            (br#"{"name":"a","total":-1}"#, "negative"),
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
