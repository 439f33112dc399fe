//! Prometheus metrics: the service counters, and per-rule bucket aggregates for alerting and the
//! autoscaler.
//!
//! The recorder is owned, not installed globally: each server instance (and each test) has its
//! own registry, and handles are resolved once per rule at config load so the request path only
//! does atomic adds, never a label lookup.
//!
//! Bucket gauges (`token_bucket_*`) must be true at scrape time without scanning millions of
//! keys. All buckets of a rule refill at the same rate, so the most drained bucket is simply the
//! one that will be full last: each rule keeps the latest "full again at" time seen on the
//! request path, and the gauges are computed from it at scrape time.

mod detailed;
mod latency;
mod rule;
mod rule_series;

use std::sync::Arc;

use metrics::{Counter, Gauge, Key, KeyName, Label, Level, Metadata, Recorder, SharedString};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};

pub use latency::LatencyHistogram;

pub use detailed::{DetailedSeries, DEFAULT_SERIES_CAP};
pub use rule::{RuleCounters, RuleStats};
pub use rule_series::{RuleSeries, SeriesLabels};

const META: Metadata<'static> = Metadata::new("tollgate", Level::INFO, None);

/// gRPC codes ShouldRateLimit answers with, as label values. The handler answers the first
/// three; the others come from tonic before the handler runs (a body that does not decode, a
/// message over the size limit, an unsupported compression) and are counted by
/// `rls::unary::Guarded`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    Ok,
    InvalidArgument,
    Unavailable,
    Internal,
    OutOfRange,
    ResourceExhausted,
    Unimplemented,
    /// Any other code.
    Other,
}

impl Answer {
    const ALL: [Answer; 8] = [
        Answer::Ok,
        Answer::InvalidArgument,
        Answer::Unavailable,
        Answer::Internal,
        Answer::OutOfRange,
        Answer::ResourceExhausted,
        Answer::Unimplemented,
        Answer::Other,
    ];

    fn label(self) -> &'static str {
        match self {
            Answer::Ok => "OK",
            Answer::InvalidArgument => "InvalidArgument",
            Answer::Unavailable => "Unavailable",
            Answer::Internal => "Internal",
            Answer::OutOfRange => "OutOfRange",
            Answer::ResourceExhausted => "ResourceExhausted",
            Answer::Unimplemented => "Unimplemented",
            Answer::Other => "Other",
        }
    }

    /// The answer a gRPC status code is counted as.
    pub fn of_code(code: tonic::Code) -> Answer {
        match code {
            tonic::Code::Ok => Answer::Ok,
            tonic::Code::InvalidArgument => Answer::InvalidArgument,
            tonic::Code::Unavailable => Answer::Unavailable,
            tonic::Code::Internal => Answer::Internal,
            tonic::Code::OutOfRange => Answer::OutOfRange,
            tonic::Code::ResourceExhausted => Answer::ResourceExhausted,
            tonic::Code::Unimplemented => Answer::Unimplemented,
            _ => Answer::Other,
        }
    }
}

pub struct Metrics {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
    requests: [Counter; Answer::ALL.len()],
    pub latency: LatencyHistogram,
    pub unknown_domain: Counter,
    pub config_loads_ok: Counter,
    pub config_loads_failed: Counter,
    pub live_keys: Gauge,
    pub keys_shared: Counter,
    pub keys_denied: Counter,
    pub ready: Gauge,
    pub global_shadow_mode: Counter,
    pub detailed_dropped: Counter,
}

impl Metrics {
    pub fn new() -> Arc<Metrics> {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        describe(&recorder);
        let c = |name: &'static str, labels: &[(&'static str, &'static str)]| {
            recorder.register_counter(&key(name, labels), &META)
        };
        let requests = Answer::ALL.map(|a| c("tollgate_requests_total", &[("code", a.label())]));
        let version = recorder.register_gauge(
            &key(
                "tollgate_build_info",
                &[("version", env!("CARGO_PKG_VERSION"))],
            ),
            &META,
        );
        version.set(1.0);
        Arc::new(Metrics {
            requests,
            latency: LatencyHistogram::new(
                "tollgate_request_duration_seconds",
                "Time to decide a ShouldRateLimit call, in seconds.",
            ),
            unknown_domain: c("tollgate_unknown_domain_total", &[]),
            config_loads_ok: c("tollgate_config_loads_total", &[("result", "ok")]),
            config_loads_failed: c("tollgate_config_loads_total", &[("result", "failed")]),
            live_keys: recorder.register_gauge(&key("tollgate_live_keys", &[]), &META),
            keys_shared: c("tollgate_keys_over_cap_total", &[("action", "shared")]),
            keys_denied: c("tollgate_keys_over_cap_total", &[("action", "denied")]),
            ready: recorder.register_gauge(&key("tollgate_ready", &[]), &META),
            global_shadow_mode: c("tollgate_global_shadow_mode_total", &[]),
            detailed_dropped: c("tollgate_detailed_series_dropped_total", &[]),
            recorder,
            handle,
        })
    }

    pub fn request(&self, answer: Answer) {
        // The discriminant is the position in `Answer::ALL`.
        let i = answer as usize;
        self.requests[i].increment(1);
    }

    /// A counter with dynamic labels (rule counters, replication per-peer counters).
    pub fn counter(&self, name: &'static str, labels: Vec<Label>) -> Counter {
        self.recorder
            .register_counter(&Key::from_parts(name, labels), &META)
    }

    /// A gauge with dynamic labels.
    pub fn gauge(&self, name: &'static str, labels: Vec<Label>) -> Gauge {
        self.recorder
            .register_gauge(&Key::from_parts(name, labels), &META)
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = self.handle.render();
        self.latency.render(&mut out);
        out
    }
}

fn key(name: &'static str, labels: &[(&'static str, &'static str)]) -> Key {
    Key::from_parts(
        name,
        labels
            .iter()
            .map(|(k, v)| Label::new(*k, *v))
            .collect::<Vec<_>>(),
    )
}

fn describe(r: &PrometheusRecorder) {
    let d =
        |name: &'static str, help: &'static str| (KeyName::from(name), SharedString::from(help));
    let counters = [
        // The per-rule families are described in rule_series.rs, which writes them.
        d("tollgate_requests_total", "ShouldRateLimit calls answered, by gRPC code."),
        d("tollgate_unknown_domain_total", "Requests for a domain no config defines (answered OK)."),
        d("tollgate_config_loads_total", "Config loads and reloads, by result."),
        d("tollgate_keys_over_cap_total", "Charges for new keys beyond the live-key cap: answered from a shared bucket, or denied."),
        d("tollgate_connections_closed_total", "Client connections the server closed, by port and reason (idle, header_timeout)."),
        d("tollgate_accept_errors_total", "Failed accepts on a port (e.g. out of file descriptors), retried with backoff."),
        d("tollgate_tls_reloads_total", "Certificate reloads after their files changed, by listener and result."),
        d("tollgate_tls_handshake_failures_total", "TLS handshakes refused or timed out, by listener."),
        d("tollgate_global_shadow_mode_total", "Requests over a limit answered OK because global shadow mode is on."),
        d("tollgate_detailed_series_dropped_total", "Hits not given a per-value series because their rule reached its label cap."),
        d("tollgate_otlp_metrics_exports_total", "Pushes of these metrics over OTLP (--otlp-metrics-endpoint), by result."),
    ];
    for (name, help) in counters {
        r.describe_counter(name, None, help);
    }
    let gauges = [
        d(
            "tollgate_live_keys",
            "Keys with a live bucket in this instance.",
        ),
        d("tollgate_connections", "Open client connections, by port."),
        d(
            "tollgate_ready",
            "1 when the instance answers correctly (config loaded, state synced).",
        ),
        d(
            "tollgate_build_info",
            "Build information; the value is always 1.",
        ),
    ];
    for (name, help) in gauges {
        r.describe_gauge(name, None, help);
    }
}
