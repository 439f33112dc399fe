//! The Envoy adapter: `envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit` over the
//! [`Limiter`]. Everything it does beyond the limiter is measurement and error mapping; the
//! mapping of a decision to Envoy's response is in `respond`.

pub mod respond;
pub mod unary;

use std::sync::Arc;
use std::time::Instant;

use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_server::RateLimitService;
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use tonic::{Request, Response, Status};

use crate::limiter::Limiter;
use crate::metrics::Answer;
use crate::readiness::Readiness;
use crate::telemetry::RequestTracer;

pub use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_server::RateLimitServiceServer;

/// gRPC service name, as health checks ask for it.
pub const SERVICE_NAME: &str = "envoy.service.ratelimit.v3.RateLimitService";

/// The name the reference registers with the gRPC health service; probes written for it ask
/// for this one.
pub const REFERENCE_HEALTH_NAME: &str = "ratelimit";

pub struct RlsService {
    limiter: Arc<Limiter>,
    readiness: Arc<Readiness>,
    /// Set only with `--otlp-endpoint`: without it no span is made.
    tracer: Option<RequestTracer>,
}

impl RlsService {
    pub fn new(limiter: Arc<Limiter>, readiness: Arc<Readiness>) -> Self {
        RlsService {
            limiter,
            readiness,
            tracer: None,
        }
    }

    /// Trace every call (as the tracer samples them).
    pub fn with_tracer(mut self, tracer: Option<RequestTracer>) -> Self {
        self.tracer = tracer;
        self
    }
}

/// Decide a request and account for it the same way for gRPC and HTTP callers.
pub fn decide(
    limiter: &Limiter,
    readiness: &Readiness,
    req: &RateLimitRequest,
) -> Result<RateLimitResponse, Status> {
    let start = Instant::now();
    let metrics = limiter.metrics();
    if !readiness.synced() {
        // Not synced means the answer could be wrong: let Envoy's failure mode decide instead.
        metrics.request(Answer::Unavailable);
        return Err(unary::handled(Status::unavailable(
            "tollgate is not ready: its state is not yet synced with its peers",
        )));
    }
    let result = limiter.should_rate_limit(req);
    metrics.latency.record(start.elapsed());
    match result {
        Ok(r) => {
            metrics.request(Answer::Ok);
            Ok(r)
        }
        Err(e) => {
            metrics.request(Answer::InvalidArgument);
            Err(unary::handled(Status::invalid_argument(e.to_string())))
        }
    }
}

#[tonic::async_trait]
impl RateLimitService for RlsService {
    async fn should_rate_limit(
        &self,
        request: Request<RateLimitRequest>,
    ) -> Result<Response<RateLimitResponse>, Status> {
        let Some(tracer) = &self.tracer else {
            return decide(&self.limiter, &self.readiness, request.get_ref()).map(Response::new);
        };
        let span = tracer.start(request.metadata());
        let result = decide(&self.limiter, &self.readiness, request.get_ref());
        span.finish(request.get_ref(), &result);
        result.map(Response::new)
    }
}
