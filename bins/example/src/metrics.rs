//! Prometheus export: the recorder behind the `metrics` facade, and `GET /metrics`, served on
//! the HTTP port and, with `--metrics-port`, on a listener of its own.
//!
//! What is exported: the relay's `outbox_*` series (see `outbox_core::telemetry`) and the
//! service's own [`ORDERS_CREATED`] and [`HTTP_RESPONSES`]. The two histograms of the relay are
//! rendered as Prometheus histograms (with buckets), not summaries, so they aggregate across
//! instances.

use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use outbox_core::telemetry;
use serde_json::json;
use tokio_util::sync::CancellationToken;

/// `orders_created_total`: orders committed through `POST /order`.
pub(crate) const ORDERS_CREATED: &str = "orders_created_total";
/// `http_responses_total{status}`: responses of the HTTP port, by status code.
pub(crate) const HTTP_RESPONSES: &str = "http_responses_total";

/// The content type of the Prometheus text exposition format.
const TEXT_FORMAT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Upper bounds of the publish latency buckets, in seconds: from a fast local broker (under a
/// millisecond) to the JetStream acknowledgement timeout (10 s).
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Upper bounds of the batch size buckets: powers of two up to the largest `batch_size`.
const BATCH_BUCKETS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
];

/// How often the recorder's histograms are compacted.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// Installs the Prometheus recorder for the whole process and describes the service's series.
///
/// Must run before the relay is built, so that its descriptions reach this recorder. Fails if a
/// recorder is already installed.
pub(crate) fn install() -> anyhow::Result<PrometheusHandle> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full(telemetry::PUBLISH_LATENCY.to_owned()),
            LATENCY_BUCKETS,
        )
        .and_then(|builder| {
            builder.set_buckets_for_metric(
                Matcher::Full(telemetry::BATCH_SIZE.to_owned()),
                BATCH_BUCKETS,
            )
        })
        .and_then(PrometheusBuilder::install_recorder)
        .map_err(|e| anyhow::anyhow!("cannot install the Prometheus recorder: {e}"))?;
    telemetry::describe();
    metrics::describe_counter!(ORDERS_CREATED, "Orders committed through POST /order.");
    metrics::describe_counter!(
        HTTP_RESPONSES,
        "Responses of the HTTP port, by status code."
    );
    // Counters are exported from their first increment on; starting them at zero lets
    // `rate()` and alerts on failures see a series before the first failure.
    for name in [
        telemetry::PUBLISHED,
        telemetry::DUPLICATES,
        telemetry::RETRIED,
        telemetry::DEAD_LETTERED,
        telemetry::LEADERSHIP_CHANGES,
        ORDERS_CREATED,
    ] {
        metrics::counter!(name).increment(0);
    }
    for reason in ["transient", "permanent", "unavailable"] {
        metrics::counter!(telemetry::FAILURES, "reason" => reason).increment(0);
    }
    Ok(handle)
}

/// Compacts the recorder's histograms every few seconds until `shutdown`: without it, samples
/// recorded between scrapes pile up in memory.
pub(crate) async fn upkeep(handle: PrometheusHandle, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(UPKEEP_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => handle.run_upkeep(),
        }
    }
}

/// `GET /metrics`: the current values in the Prometheus text format.
pub(crate) async fn scrape(State(handle): State<PrometheusHandle>) -> Response {
    ([(header::CONTENT_TYPE, TEXT_FORMAT)], handle.render()).into_response()
}

/// Serves `GET /metrics` alone on `listener` until `shutdown`.
pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    handle: PrometheusHandle,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let app = Router::new()
        .route("/metrics", get(scrape))
        .fallback(|| async {
            (
                StatusCode::NOT_FOUND,
                axum::Json(json!({ "error": "no such path; try GET /metrics" })),
            )
        })
        .with_state(handle);
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await?;
    Ok(())
}

/// Counts a response of the HTTP port.
pub(crate) fn record_response(status: StatusCode) {
    metrics::counter!(HTTP_RESPONSES, "status" => status.as_str().to_owned()).increment(1);
}

/// Counts an order committed through HTTP.
pub(crate) fn record_order_created() {
    metrics::counter!(ORDERS_CREATED).increment(1);
}
