//! Logs, the trace context each message carries, and (feature `otel`) OpenTelemetry traces.
//!
//! Logs go to stderr, filtered by `RUST_LOG` (default `info,async_nats=warn`). Each message is
//! handled inside a `consume_message` span that names its subject, stream sequence, message id
//! and the trace id of its `traceparent` header (W3C), so every line logged about a message says
//! which trace it belongs to; `RUST_LOG=subscriber=debug` adds one line per message.
//!
//! With the `otel` feature, spans are also exported over OTLP (HTTP, protobuf) when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` (e.g. `http://localhost:4318`) or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is set, and a message's span is a child of the span that
//! enqueued it: the consumer continues the producer's trace. The other standard `OTEL_*`
//! variables apply (`OTEL_SERVICE_NAME`, default `outbox-subscriber`;
//! `OTEL_EXPORTER_OTLP_HEADERS`; `OTEL_TRACES_SAMPLER`), and `OTEL_SDK_DISABLED=true` turns
//! export off; `https` endpoints use rustls with ring.

use async_nats::jetstream;
use outbox_core::TraceContext;
use outbox_core::trace::{TRACEPARENT, TRACESTATE};
use tracing::Instrument;
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

/// Installs the global `tracing` subscriber: logs on stderr and, with `otel`, the OTLP export.
pub(crate) fn init() -> Telemetry {
    use std::io::IsTerminal;
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,async_nats=warn"));
    let logs = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false);
    let registry = tracing_subscriber::registry().with(filter).with(logs);
    #[cfg(feature = "otel")]
    {
        let (export, status) = outbox_core::trace::otlp::Export::from_env("outbox-subscriber");
        let layer = export
            .as_ref()
            .map(|export| tracing_opentelemetry::layer().with_tracer(export.tracer("subscriber")));
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

/// Runs `work` (handling `message`) inside the message's span; see [`message_span`].
pub(crate) async fn traced<F: Future>(message: &jetstream::Message, work: F) -> F::Output {
    work.instrument(message_span(message)).await
}

/// The span a message is handled in: `consume_message` with its subject, stream sequence,
/// `Nats-Msg-Id` and trace id. With `otel`, a child of the message's trace context.
fn message_span(message: &jetstream::Message) -> tracing::Span {
    let header = |name: &str| {
        message
            .headers
            .as_ref()
            .and_then(|h| h.get(name))
            .map(|v| v.as_str())
    };
    let trace = TraceContext::from_headers(header(TRACEPARENT), header(TRACESTATE));
    let stream_seq = message.info().ok().map(|info| info.stream_sequence);
    let span = tracing::info_span!(
        "consume_message",
        otel.kind = "consumer",
        subject = %message.subject,
        stream_seq,
        msg_id = header("Nats-Msg-Id"),
        trace_id = trace.as_ref().map(|t| tracing::field::display(t.trace_id())),
    );
    #[cfg(feature = "otel")]
    if let Some(trace) = &trace {
        trace.set_parent_of(&span);
    }
    span.in_scope(|| match &trace {
        Some(trace) => tracing::debug!(parent_id = %trace.parent_id(), "message received"),
        None => tracing::debug!("message received without a valid traceparent"),
    });
    span
}
