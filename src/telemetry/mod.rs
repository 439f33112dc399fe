//! OpenTelemetry traces over OTLP/gRPC: a span per ShouldRateLimit ([`request`]), parented to
//! the caller's W3C `traceparent`, and the spans of background work (config and certificate
//! reloads, peer resyncs) through `tracing-opentelemetry`. And, apart from traces, the
//! `/metrics` series pushed over OTLP/gRPC at an interval ([`metrics_push`]).
//!
//! Off unless `--otlp-endpoint` is given, and then nothing at all is done per request: the RLS
//! handler holds no tracer and takes the same path as before.
//!
//! The crates are the maintained ones (`opentelemetry`, `opentelemetry_sdk`,
//! `opentelemetry-otlp` on tonic, `tracing-opentelemetry`). The SDK's batch processor exports
//! from a thread of its own, where tonic finds no tokio reactor; [`on_runtime::OnRuntime`] runs
//! each export on the server's runtime instead.

mod export_log;
pub mod exposition;
mod metrics_push;
mod on_runtime;
pub mod otlp_metrics;
pub mod request;
pub mod settings;

use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry::KeyValue;
use opentelemetry_otlp::{SpanExporter, WithExportConfig};
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider, Tracer};
use opentelemetry_sdk::Resource;

use crate::settings::Settings;

pub use metrics_push::MetricsPush;
pub use request::RequestTracer;

/// How long one export may take before it is abandoned (the spans of that batch are lost).
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("--otlp-endpoint {endpoint}: {reason}")]
    Exporter { endpoint: String, reason: String },
    #[error("--otlp-metrics-endpoint {endpoint}: {reason}")]
    MetricsEndpoint { endpoint: String, reason: String },
}

/// The tracer provider of one server: owns the export pipeline, flushed on shutdown.
pub struct Telemetry {
    provider: SdkTracerProvider,
}

impl Telemetry {
    /// The pipeline the settings ask for; `None` when `--otlp-endpoint` is not set. Must be
    /// called on the tokio runtime that will carry the exports.
    pub fn start(settings: &Settings) -> Result<Option<Telemetry>, TelemetryError> {
        let Some(endpoint) = &settings.otlp_endpoint else {
            return Ok(None);
        };
        let exporter = SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint.clone())
            .with_timeout(EXPORT_TIMEOUT)
            .build()
            .map_err(|e| TelemetryError::Exporter {
                endpoint: endpoint.clone(),
                reason: e.to_string(),
            })?;
        // A caller's sampling decision (Envoy's) is followed, so a trace is never cut in half;
        // the ratio applies to calls that arrive without one.
        let sampler = Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            settings.otlp_sampling_ratio,
        )));
        let resource = Resource::builder()
            .with_service_name("tollgate")
            .with_attribute(KeyValue::new(
                "service.instance.id",
                settings.node_id.clone(),
            ))
            .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
            .build();
        let provider = SdkTracerProvider::builder()
            .with_sampler(sampler)
            .with_resource(resource)
            .with_batch_exporter(on_runtime::OnRuntime::new(exporter))
            .build();
        Ok(Some(Telemetry { provider }))
    }

    /// The tracer for spans of background work (given to `tracing-opentelemetry`).
    pub fn tracer(&self) -> Tracer {
        self.provider.tracer("tollgate")
    }

    /// The ShouldRateLimit span maker.
    pub fn request_tracer(&self) -> RequestTracer {
        RequestTracer::new(self.tracer())
    }

    /// Export what is still buffered, then stop. Blocks a thread of its own, not a worker.
    /// Flush the spans not yet exported, until `deadline` (the shutdown's) at the latest: the
    /// flush runs on the blocking pool, and past the deadline the process exits without it.
    pub async fn shutdown(self, deadline: tokio::time::Instant) {
        let provider = self.provider;
        let flush = tokio::task::spawn_blocking(move || provider.shutdown());
        match tokio::time::timeout_at(deadline, flush).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => tracing::warn!(error = %e, "flushing traces at shutdown failed"),
            Ok(Err(e)) => tracing::warn!(error = %e, "flushing traces at shutdown panicked"),
            Err(_) => tracing::warn!("traces not flushed by the shutdown deadline"),
        }
    }
}
