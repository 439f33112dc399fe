//! Pushing the `/metrics` series over OTLP/gRPC every `--otlp-metrics-interval`.
//!
//! A task of its own, off the request path: each interval it takes the snapshot a scrape takes
//! (gauges refreshed, then rendered, through the same one-at-a-time gate on the blocking pool),
//! reads it back ([`super::exposition`]), maps it ([`super::otlp_metrics`]) and exports it with
//! the `opentelemetry-proto` tonic client. The request path is not touched: it updates the same
//! atomics whether or not anything pushes them.
//!
//! A collector that is down or slow costs this task only: the channel connects lazily, each
//! push is bounded by a timeout, a failed push is dropped (the next one carries cumulative
//! values, so nothing is lost but resolution), counted in
//! `tollgate_otlp_metrics_exports_total{result="failed"}` and logged at a bounded rate. On
//! shutdown one last push sends the final counts.

use std::sync::Arc;
use std::time::{Duration, Instant};

use metrics::{Counter, Label};
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_client::MetricsServiceClient;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint};
use tracing::{info, warn};

use super::export_log::{ExportLog, Say, LOG_EVERY};
use super::exposition::{self, ExpositionError};
use super::otlp_metrics::{self, Times, MAX_POINTS_PER_REQUEST};
use super::TelemetryError;
use crate::http::scrape::{ScrapeError, ScrapeGate};
use crate::limiter::Limiter;
use crate::settings::Settings;

/// Longest one push may take (render wait aside); shorter intervals bound it instead.
const MAX_PUSH_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
enum PushError {
    #[error("taking the snapshot: {0}")]
    Snapshot(#[from] ScrapeError),
    #[error("reading the snapshot back: {0}")]
    Exposition(#[from] ExpositionError),
    #[error("mapping the snapshot panicked")]
    Mapping,
    #[error("the collector answered {0}")]
    Export(#[from] tonic::Status),
    #[error("the collector refused {rejected} points: {message}")]
    Rejected { rejected: i64, message: String },
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

/// The running push task; [`MetricsPush::stop`] ends it after a last push.
pub struct MetricsPush {
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl MetricsPush {
    /// Start pushing when `--otlp-metrics-endpoint` is set; `None` otherwise. Must be called on
    /// the runtime that will carry the pushes.
    pub fn start(
        settings: &Settings,
        limiter: Arc<Limiter>,
        gate: ScrapeGate,
    ) -> Result<Option<MetricsPush>, TelemetryError> {
        let Some(endpoint) = &settings.otlp_metrics_endpoint else {
            return Ok(None);
        };
        let timeout = settings.otlp_metrics_interval.min(MAX_PUSH_TIMEOUT);
        let channel = Endpoint::from_shared(endpoint.clone())
            .map_err(|e| TelemetryError::MetricsEndpoint {
                endpoint: endpoint.clone(),
                reason: e.to_string(),
            })?
            .connect_timeout(timeout)
            .timeout(timeout)
            .connect_lazy();
        let metrics = limiter.metrics();
        let result = |r: &'static str| {
            metrics.counter(
                "tollgate_otlp_metrics_exports_total",
                vec![Label::new("result", r)],
            )
        };
        let pusher = Pusher {
            start_ns: now_ns(&limiter),
            client: MetricsServiceClient::new(channel),
            node_id: settings.node_id.clone(),
            endpoint: endpoint.clone(),
            timeout,
            ok: result("ok"),
            failed: result("failed"),
            log: ExportLog::new(LOG_EVERY),
            limiter,
            gate,
        };
        let stop = CancellationToken::new();
        let task = tokio::spawn(pusher.run(settings.otlp_metrics_interval, stop.clone()));
        info!(
            %endpoint,
            interval = ?settings.otlp_metrics_interval,
            "pushing metrics over OTLP"
        );
        Ok(Some(MetricsPush { stop, task }))
    }

    /// Push once more (the final counts), then end.
    /// Stop pushing; a push in progress gets until `deadline` (the shutdown's).
    pub async fn stop(mut self, deadline: tokio::time::Instant) {
        self.stop.cancel();
        match tokio::time::timeout_at(deadline, &mut self.task).await {
            Ok(Err(e)) => warn!(error = %e, "the OTLP metrics push task failed"),
            Ok(Ok(())) => {}
            Err(_) => {
                warn!("an OTLP metrics push was still running at the shutdown deadline");
                self.task.abort();
            }
        }
    }
}

struct Pusher {
    limiter: Arc<Limiter>,
    gate: ScrapeGate,
    client: MetricsServiceClient<Channel>,
    node_id: String,
    endpoint: String,
    start_ns: u64,
    timeout: Duration,
    ok: Counter,
    failed: Counter,
    log: ExportLog,
}

impl Pusher {
    async fn run(mut self, interval: Duration, stop: CancellationToken) {
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tick.tick() => {}
            }
            tokio::select! {
                _ = stop.cancelled() => break,
                r = self.push() => self.account(r),
            }
        }
        let r = self.push().await;
        self.account(r);
    }

    /// Snapshot, map, export; every step bounded.
    async fn push(&mut self) -> Result<(), PushError> {
        let text = self.gate.render(self.limiter.clone()).await?;
        let times = Times {
            start_ns: self.start_ns,
            now_ns: now_ns(&self.limiter),
        };
        let node_id = self.node_id.clone();
        let requests = tokio::task::spawn_blocking(move || {
            let snapshot = exposition::parse(&text)?;
            Ok::<_, ExpositionError>(otlp_metrics::export_requests(
                &snapshot,
                &node_id,
                times,
                MAX_POINTS_PER_REQUEST,
            ))
        })
        .await
        .map_err(|_| PushError::Mapping)??;
        let timeout = self.timeout;
        tokio::time::timeout(timeout, self.export(requests))
            .await
            .map_err(|_| PushError::Timeout(timeout))?
    }

    async fn export(
        &mut self,
        requests: Vec<ExportMetricsServiceRequest>,
    ) -> Result<(), PushError> {
        for request in requests {
            let answer = self.client.export(request).await?.into_inner();
            if let Some(partial) = answer.partial_success {
                if partial.rejected_data_points > 0 {
                    return Err(PushError::Rejected {
                        rejected: partial.rejected_data_points,
                        message: partial.error_message,
                    });
                }
            }
        }
        Ok(())
    }

    fn account(&mut self, result: Result<(), PushError>) {
        match result {
            Ok(()) => {
                self.ok.increment(1);
                if let Say::Recovered { failed } = self.log.succeeded() {
                    info!(endpoint = %self.endpoint, failed, "OTLP metrics export works again");
                }
            }
            Err(e) => {
                self.failed.increment(1);
                if let Say::Failing { failed } = self.log.failed(Instant::now()) {
                    warn!(
                        endpoint = %self.endpoint,
                        error = %e,
                        failed_since_last_line = failed,
                        "OTLP metrics export failed; serving is not affected (next line in at \
                         most {LOG_EVERY:?} while it keeps failing)"
                    );
                }
            }
        }
    }
}

fn now_ns(limiter: &Limiter) -> u64 {
    u64::try_from(limiter.clock().now()).unwrap_or(0)
}
