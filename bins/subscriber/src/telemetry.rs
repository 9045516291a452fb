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
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        #[cfg(feature = "otel")]
        if let Some(provider) = self.provider.take()
            && let Err(e) = provider.shutdown()
        {
            tracing::warn!("cannot flush the last spans to the OTLP endpoint: {e}");
        }
    }
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
        let (provider, status) = otel::provider("outbox-subscriber");
        let layer = provider.as_ref().map(|provider| {
            use opentelemetry::trace::TracerProvider as _;
            tracing_opentelemetry::layer().with_tracer(provider.tracer("subscriber"))
        });
        registry.with(layer).init();
        status.log();
        Telemetry { provider }
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

#[cfg(feature = "otel")]
mod otel {
    use opentelemetry_otlp::SpanExporter;
    use opentelemetry_sdk::Resource;
    use opentelemetry_sdk::trace::SdkTracerProvider;

    /// What became of the export, logged once the subscriber is installed.
    pub(super) enum Status {
        Exporting(String),
        Off(&'static str),
        Failed(String),
    }

    impl Status {
        pub(super) fn log(&self) {
            match self {
                Status::Exporting(to) => {
                    tracing::info!("exporting traces over OTLP/HTTP to {to}");
                }
                Status::Off(why) => tracing::info!("OpenTelemetry export off: {why}"),
                Status::Failed(why) => {
                    tracing::warn!("OpenTelemetry export off: cannot set up the exporter: {why}");
                }
            }
        }
    }

    /// A tracer provider exporting over OTLP/HTTP, when the environment asks for one.
    pub(super) fn provider(service: &str) -> (Option<SdkTracerProvider>, Status) {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        if var("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true")) {
            return (None, Status::Off("OTEL_SDK_DISABLED is true"));
        }
        let Some(endpoint) = var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
            .or_else(|| var("OTEL_EXPORTER_OTLP_ENDPOINT"))
        else {
            return (
                None,
                Status::Off("set OTEL_EXPORTER_OTLP_ENDPOINT (e.g. http://localhost:4318)"),
            );
        };
        // reqwest's TLS (an https endpoint) uses the process-wide rustls provider: ring, the
        // one the rest of the program uses. An error means one is installed already.
        let _ = rustls::crypto::ring::default_provider().install_default();
        // The exporter reads the endpoint and its headers from the environment itself.
        let exporter = match SpanExporter::builder().with_http().build() {
            Ok(exporter) => exporter,
            Err(e) => return (None, Status::Failed(e.to_string())),
        };
        let mut resource = Resource::builder();
        if var("OTEL_SERVICE_NAME").is_none() {
            resource = resource.with_service_name(service.to_owned());
        }
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource.build())
            .build();
        opentelemetry::global::set_tracer_provider(provider.clone());
        opentelemetry::global::set_text_map_propagator(
            opentelemetry_sdk::propagation::TraceContextPropagator::new(),
        );
        (Some(provider), Status::Exporting(shown(&endpoint)))
    }

    /// The endpoint without credentials, path or query: scheme, host and port.
    fn shown(endpoint: &str) -> String {
        match url::Url::parse(endpoint) {
            Ok(url) => match (url.host_str(), url.port_or_known_default()) {
                (Some(host), Some(port)) => format!("{}://{host}:{port}", url.scheme()),
                (Some(host), None) => format!("{}://{host}", url.scheme()),
                _ => "the configured endpoint".to_owned(),
            },
            Err(_) => "the configured endpoint".to_owned(),
        }
    }

    #[cfg(test)]
    mod tests {
        #[test]
        fn endpoints_are_shown_without_credentials() {
            assert_eq!(
                super::shown("http://user:secret@collector:4318/v1/traces?token=x"),
                "http://collector:4318"
            );
            assert_eq!(super::shown("not a url"), "the configured endpoint");
        }
    }
}
