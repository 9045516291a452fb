//! Logs, the trace context of incoming requests, and (feature `otel`) OpenTelemetry traces.
//!
//! Logs go to stderr, filtered by `RUST_LOG` (default `info,tokio_postgres=warn`).
//!
//! With the `otel` feature, spans are also exported over OTLP (HTTP, protobuf) when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` (e.g. `http://localhost:4318`) or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is set: the spans `RUST_LOG` enables, and the relay's
//! per-message spans (`outbox_core::relay` at DEBUG). The other standard `OTEL_*` variables apply
//! (`OTEL_SERVICE_NAME`, default `outbox-example`; `OTEL_EXPORTER_OTLP_HEADERS`;
//! `OTEL_TRACES_SAMPLER`), and `OTEL_SDK_DISABLED=true` turns export off; `https` endpoints use
//! rustls with ring. Without the feature nothing of OpenTelemetry is built in, and trace contexts
//! are still carried from requests to events.

use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Keeps the exporter alive; dropping it flushes the spans not yet exported.
#[must_use = "dropping it stops the export"]
#[derive(Debug)]
pub(crate) struct Telemetry {
    #[cfg(feature = "otel")]
    _export: Option<outbox_core::trace::otlp::Export>,
}

/// The log filter when `RUST_LOG` is unset or invalid. tokio-postgres logs every server NOTICE
/// ("schema already exists, skipping") at info.
const DEFAULT_FILTER: &str = "info,tokio_postgres=warn";

/// Installs the global `tracing` subscriber: logs on stderr and, with `otel`, the OTLP export.
pub(crate) fn init() -> Telemetry {
    use std::io::IsTerminal;
    use tracing_subscriber::Layer as _;
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let logs = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none())
        .with_filter(filter);
    let registry = tracing_subscriber::registry().with(logs);
    #[cfg(feature = "otel")]
    {
        let (export, status) = outbox_core::trace::otlp::Export::from_env("outbox-example");
        let layer = export.as_ref().map(|export| {
            tracing_opentelemetry::layer()
                .with_tracer(export.tracer("example"))
                .with_filter(otel_filter())
        });
        registry.with(layer).init();
        status.log();
        Telemetry { _export: export }
    }
    #[cfg(not(feature = "otel"))]
    {
        registry.init();
        Telemetry {}
    }
}

/// The trace context of an HTTP request: its `traceparent` and `tracestate` headers.
///
/// `None` when there is no valid `traceparent` (W3C: the receiver then starts a new trace), also
/// when the header appears more than once. Several `tracestate` headers are joined; an invalid
/// one is dropped.
#[cfg(feature = "postgres")]
pub(crate) fn incoming_trace(headers: &axum::http::HeaderMap) -> Option<outbox_core::TraceContext> {
    use outbox_core::trace::{TRACEPARENT, TRACESTATE};
    let mut parents = headers.get_all(TRACEPARENT).iter();
    let parent = parents.next()?;
    if parents.next().is_some() {
        tracing::debug!("ignoring a request with several traceparent headers");
        return None;
    }
    let Ok(parent) = parent.to_str() else {
        tracing::debug!("ignoring a traceparent header that is not ASCII");
        return None;
    };
    let states: Vec<&str> = headers
        .get_all(TRACESTATE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    let state = (!states.is_empty()).then(|| states.join(","));
    let trace = outbox_core::TraceContext::from_headers(Some(parent), state.as_deref());
    if trace.is_none() {
        tracing::debug!("ignoring an invalid traceparent header; the order starts a new trace");
    }
    trace
}

/// What is exported: the spans `RUST_LOG` enables, and the relay's per-message spans (DEBUG),
/// which the logs leave out because formatting one per message is not free.
#[cfg(feature = "otel")]
fn otel_filter() -> EnvFilter {
    let base = std::env::var("RUST_LOG")
        .ok()
        .filter(|v| EnvFilter::try_new(v).is_ok())
        .unwrap_or_else(|| DEFAULT_FILTER.to_owned());
    EnvFilter::builder().parse_lossy(format!("{base},outbox_core::relay=debug"))
}

#[cfg(all(test, feature = "postgres"))]
mod tests {
    use axum::http::{HeaderMap, HeaderValue};

    use super::incoming_trace;

    const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn the_request_headers_give_the_trace_context() {
        let mut headers = HeaderMap::new();
        assert_eq!(incoming_trace(&headers), None);
        headers.insert("traceparent", HeaderValue::from_static(PARENT));
        let trace = incoming_trace(&headers).unwrap();
        assert_eq!(trace.traceparent(), PARENT);
        assert_eq!(trace.state(), None);
        headers.append("tracestate", HeaderValue::from_static("a=1"));
        headers.append("tracestate", HeaderValue::from_static("b=2"));
        assert_eq!(incoming_trace(&headers).unwrap().state(), Some("a=1,b=2"));
    }

    #[test]
    fn invalid_or_repeated_traceparents_are_ignored() {
        let mut headers = HeaderMap::new();
        headers.insert("traceparent", HeaderValue::from_static("00-nonsense"));
        assert_eq!(incoming_trace(&headers), None);
        let mut headers = HeaderMap::new();
        headers.append("traceparent", HeaderValue::from_static(PARENT));
        headers.append("traceparent", HeaderValue::from_static(PARENT));
        assert_eq!(incoming_trace(&headers), None);
        // A bad tracestate does not cost the traceparent.
        let mut headers = HeaderMap::new();
        headers.insert("traceparent", HeaderValue::from_static(PARENT));
        headers.insert("tracestate", HeaderValue::from_static("NOT VALID"));
        let trace = incoming_trace(&headers).unwrap();
        assert_eq!(
            (trace.traceparent().as_str(), trace.state()),
            (PARENT, None)
        );
    }
}
