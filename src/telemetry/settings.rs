//! The OpenTelemetry flags: where to push traces, and which share of them; where to push
//! metrics, and how often.

use std::time::Duration;

use clap::Args;

use crate::settings::{Settings, SettingsError};

#[derive(Debug, Clone, Default, Args)]
pub struct TelemetryArgs {
    /// OTLP/gRPC collector to push traces to, e.g. http://otel-collector:4317; without it no
    /// span is made [default: none]
    #[arg(long, env = "TOLLGATE_OTLP_ENDPOINT", value_name = "URL")]
    pub otlp_endpoint: Option<String>,
    /// Share of ShouldRateLimit calls traced when the caller sent no sampling decision; a
    /// caller's `traceparent` decision is always followed [default: 1.0]
    #[arg(long, env = "TOLLGATE_OTLP_SAMPLING_RATIO", value_name = "RATIO")]
    pub otlp_sampling_ratio: Option<f64>,
    /// OTLP/gRPC collector to push the /metrics series to, e.g. http://otel-collector:4317;
    /// without it nothing is pushed (/metrics is served either way) [default: none]
    #[arg(long, env = "TOLLGATE_OTLP_METRICS_ENDPOINT", value_name = "URL")]
    pub otlp_metrics_endpoint: Option<String>,
    /// How often the metrics are pushed, between 1s and 1h [default: 60s]
    #[arg(long, env = "TOLLGATE_OTLP_METRICS_INTERVAL", value_name = "DURATION")]
    pub otlp_metrics_interval: Option<String>,
}

/// Bounds of `--otlp-metrics-interval`: each push renders every series (as a scrape does), so
/// not more than once a second; and a push less than hourly is no longer monitoring.
pub const METRICS_INTERVAL_MIN: Duration = Duration::from_secs(1);
pub const METRICS_INTERVAL_MAX: Duration = Duration::from_secs(3600);

impl TelemetryArgs {
    /// The settings-file keys these flags override.
    pub fn overrides(&self) -> Vec<(&'static str, Option<String>)> {
        vec![
            ("otlp_endpoint", self.otlp_endpoint.clone()),
            (
                "otlp_sampling_ratio",
                self.otlp_sampling_ratio.map(|r| r.to_string()),
            ),
            ("otlp_metrics_endpoint", self.otlp_metrics_endpoint.clone()),
            ("otlp_metrics_interval", self.otlp_metrics_interval.clone()),
        ]
    }
}

impl Settings {
    pub(crate) fn validate_telemetry(&self) -> Result<(), SettingsError> {
        if !(0.0..=1.0).contains(&self.otlp_sampling_ratio) {
            return Err(SettingsError::Invalid(format!(
                "otlp_sampling_ratio must be between 0 and 1, got {}",
                self.otlp_sampling_ratio
            )));
        }
        if let Some(e) = &self.otlp_endpoint {
            // As for the metrics push: no TLS trust store in the OTLP client, so an https://
            // collector would fail every export; refused here instead.
            if !e.starts_with("http://") {
                return Err(SettingsError::Invalid(format!(
                    "otlp_endpoint must be an http:// URL (OTLP over gRPC, plaintext, e.g. a \
                     collector agent on the node), got '{e}'"
                )));
            }
        }
        self.validate_metrics_push()
    }

    fn validate_metrics_push(&self) -> Result<(), SettingsError> {
        let i = self.otlp_metrics_interval;
        if !(METRICS_INTERVAL_MIN..=METRICS_INTERVAL_MAX).contains(&i) {
            return Err(SettingsError::Invalid(format!(
                "otlp_metrics_interval must be between 1s and 1h, got {}",
                humantime::format_duration(i)
            )));
        }
        if let Some(e) = &self.otlp_metrics_endpoint {
            // The OTLP client is built without a TLS trust store: an https:// collector would
            // fail every push, so it is refused here rather than at the first export.
            if !e.starts_with("http://") {
                return Err(SettingsError::Invalid(format!(
                    "otlp_metrics_endpoint must be an http:// URL (OTLP over gRPC, plaintext, \
                     e.g. a collector agent on the node), got '{e}'"
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::settings::Cli;
    use clap::Parser;

    fn resolve(a: &[&str]) -> Result<crate::settings::Settings, String> {
        let mut full = vec!["tollgate"];
        full.extend_from_slice(a);
        Cli::try_parse_from(full)
            .expect("parses")
            .serve
            .resolve()
            .map_err(|e| e.to_string())
    }

    #[test]
    fn tracing_is_off_without_an_endpoint_and_samples_everything_by_default() {
        let s = resolve(&[]).expect("valid");
        assert!(s.otlp_endpoint.is_none());
        assert_eq!(s.otlp_sampling_ratio, 1.0);
    }

    #[test]
    fn a_sampling_ratio_outside_zero_to_one_is_refused() {
        let err = resolve(&["--otlp-sampling-ratio", "1.5"]).unwrap_err();
        assert!(err.contains("otlp_sampling_ratio"), "{err}");
    }

    #[test]
    fn metrics_are_not_pushed_without_an_endpoint_and_every_minute_by_default() {
        let s = resolve(&[]).expect("valid");
        assert!(s.otlp_metrics_endpoint.is_none());
        assert_eq!(s.otlp_metrics_interval, std::time::Duration::from_secs(60));
        let s = resolve(&[
            "--otlp-metrics-endpoint",
            "http://127.0.0.1:4317",
            "--otlp-metrics-interval",
            "15s",
        ])
        .expect("valid");
        assert_eq!(
            s.otlp_metrics_endpoint.as_deref(),
            Some("http://127.0.0.1:4317")
        );
        assert_eq!(s.otlp_metrics_interval, std::time::Duration::from_secs(15));
    }

    #[test]
    fn a_metrics_interval_outside_one_second_to_one_hour_is_refused() {
        for bad in ["500ms", "0s", "2h"] {
            let err = resolve(&["--otlp-metrics-interval", bad]).unwrap_err();
            assert!(
                err.contains("otlp_metrics_interval must be between 1s and 1h"),
                "{err}"
            );
            assert!(err.contains(bad), "{err}");
        }
        let err = resolve(&["--otlp-metrics-interval", "soon"]).unwrap_err();
        assert!(err.contains("\"soon\""), "{err}");
    }

    #[test]
    fn a_metrics_endpoint_must_be_a_plaintext_url() {
        for bad in ["collector:4317", "https://collector:4317"] {
            let err = resolve(&["--otlp-metrics-endpoint", bad]).unwrap_err();
            assert!(
                err.contains("otlp_metrics_endpoint must be an http:// URL"),
                "{err}"
            );
            assert!(err.contains(&format!("'{bad}'")), "{err}");
        }
    }

    #[test]
    fn an_endpoint_must_be_a_url() {
        let err = resolve(&["--otlp-endpoint", "collector:4317"]).unwrap_err();
        assert!(err.contains("'collector:4317'"), "{err}");
        let s = resolve(&["--otlp-endpoint", "http://127.0.0.1:4317"]).expect("valid");
        assert_eq!(s.otlp_endpoint.as_deref(), Some("http://127.0.0.1:4317"));
    }

    #[test]
    fn a_traces_endpoint_must_be_plain_http() {
        for bad in ["collector:4317", "https://collector:4317"] {
            let err = resolve(&["--otlp-endpoint", bad]).unwrap_err();
            assert!(
                err.contains("otlp_endpoint must be an http:// URL") && err.contains(bad),
                "{bad}: {err}"
            );
        }
    }
}
