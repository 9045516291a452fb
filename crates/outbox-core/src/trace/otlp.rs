//! Exporting `tracing` spans over OTLP/HTTP (protobuf), configured by the standard `OTEL_*`
//! environment variables (feature `otlp`).
//!
//! [`Export::from_env`] sets up a tracer provider when `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or
//! `OTEL_EXPORTER_OTLP_ENDPOINT` (e.g. `http://localhost:4318`) is set and
//! `OTEL_SDK_DISABLED` is not `true`. The exporter itself reads the endpoint,
//! `OTEL_EXPORTER_OTLP_HEADERS` and the other exporter variables; `OTEL_SERVICE_NAME` and
//! `OTEL_TRACES_SAMPLER` apply as usual. `https` endpoints use rustls with ring: the process-wide
//! default provider is set to ring unless one is installed already.
//!
//! The provider becomes the global one and the W3C trace-context propagator the global
//! propagator. Put [`Export::tracer`] into a `tracing_opentelemetry` layer, and keep the
//! [`Export`] alive: dropping it flushes the spans not yet exported and ends the export.
//!
//! # Examples
//!
//! ```no_run
//! use outbox_core::trace::otlp::Export;
//!
//! let (export, status) = Export::from_env("my-service");
//! // Install a `tracing` subscriber with `export.as_ref().map(|e| e.tracer("my-service"))`
//! // in a `tracing_opentelemetry` layer, then say what became of the export:
//! status.log();
//! drop(export); // at shutdown: flushes the last spans
//! ```

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::SpanExporter;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};

/// The OTLP export: a tracer provider with a batch exporter. Dropping it flushes the spans not
/// yet exported and shuts the provider down.
#[must_use = "dropping it stops the export"]
#[derive(Debug)]
pub struct Export {
    provider: SdkTracerProvider,
}

/// What became of the export; [`Status::log`] says it once a subscriber is installed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    /// Spans are exported to this endpoint, shown as scheme, host and port only (no
    /// credentials, path or query).
    Exporting(String),
    /// The environment asks for no export, for this reason.
    Off(&'static str),
    /// The exporter could not be set up, for this reason; nothing is exported.
    Failed(String),
}

impl Status {
    /// Logs the status: `info` when exporting or off, `warn` when the exporter failed.
    pub fn log(&self) {
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

impl Export {
    /// An export over OTLP/HTTP when the environment asks for one, with what became of it.
    ///
    /// `service` is the `service.name` of the spans unless `OTEL_SERVICE_NAME` is set. `None`
    /// (with [`Status::Off`] or [`Status::Failed`]) when export is disabled, no endpoint is set,
    /// or the exporter cannot be built; the global provider is then left as it is.
    pub fn from_env(service: &str) -> (Option<Export>, Status) {
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
        // one the rest of the outbox uses. An error means one is installed already.
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
        (
            Some(Export { provider }),
            Status::Exporting(shown(&endpoint)),
        )
    }

    /// A tracer of the export's provider, named `name` (the instrumentation scope), for a
    /// `tracing_opentelemetry` layer.
    pub fn tracer(&self, name: &'static str) -> SdkTracer {
        self.provider.tracer(name)
    }
}

impl Drop for Export {
    fn drop(&mut self) {
        if let Err(e) = self.provider.shutdown() {
            tracing::warn!("cannot flush the last spans to the OTLP endpoint: {e}");
        }
    }
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
        assert_eq!(
            super::shown("https://collector.example"),
            "https://collector.example:443"
        );
        assert_eq!(super::shown("not a url"), "the configured endpoint");
    }
}
