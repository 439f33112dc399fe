//! The OpenTelemetry flags: where to push traces, and which share of them.

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
}

impl TelemetryArgs {
    /// The settings-file keys these flags override.
    pub fn overrides(&self) -> Vec<(&'static str, Option<String>)> {
        vec![
            ("otlp_endpoint", self.otlp_endpoint.clone()),
            (
                "otlp_sampling_ratio",
                self.otlp_sampling_ratio.map(|r| r.to_string()),
            ),
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
            if !(e.starts_with("http://") || e.starts_with("https://")) {
                return Err(SettingsError::Invalid(format!(
                    "otlp_endpoint must be an http:// or https:// URL (OTLP over gRPC), got '{e}'"
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
    fn an_endpoint_must_be_a_url() {
        let err = resolve(&["--otlp-endpoint", "collector:4317"]).unwrap_err();
        assert!(err.contains("'collector:4317'"), "{err}");
        let s = resolve(&["--otlp-endpoint", "http://127.0.0.1:4317"]).expect("valid");
        assert_eq!(s.otlp_endpoint.as_deref(), Some("http://127.0.0.1:4317"));
    }
}
