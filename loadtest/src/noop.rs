//! A ShouldRateLimit server that does no work: the baseline for throughput ratios.
//!
//! It runs on the same stack as tollgate (tonic's default server settings, TCP_NODELAY on, the
//! default multi-threaded tokio runtime), and answers OK with one OK status per descriptor, so
//! its responses are the size of a real service's. Whatever it costs is the cost of the gRPC
//! stack alone; tollgate's throughput divided by this one's is the share the limiter keeps.

use std::future::Future;
use std::net::SocketAddr;

use envoy_types::pb::envoy::service::ratelimit::v3::{
    rate_limit_response::{Code, DescriptorStatus},
    rate_limit_service_server::{RateLimitService, RateLimitServiceServer},
    RateLimitRequest, RateLimitResponse,
};
use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status};

#[derive(Debug, Default, Clone, Copy)]
pub struct NoopService;

#[tonic::async_trait]
impl RateLimitService for NoopService {
    async fn should_rate_limit(
        &self,
        request: Request<RateLimitRequest>,
    ) -> Result<Response<RateLimitResponse>, Status> {
        let statuses = request
            .get_ref()
            .descriptors
            .iter()
            .map(|_| DescriptorStatus {
                code: Code::Ok as i32,
                ..Default::default()
            })
            .collect();
        Ok(Response::new(RateLimitResponse {
            overall_code: Code::Ok as i32,
            statuses,
            ..Default::default()
        }))
    }
}

/// Binds `addr` (port 0 picks a free one); the caller learns the port before serving.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Serves until `shutdown` completes, then drains in-flight calls.
pub async fn serve(
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), tonic::transport::Error> {
    // `serve_with_incoming` ignores the builder's TCP options, so TCP_NODELAY is set here.
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    tonic::transport::Server::builder()
        .add_service(RateLimitServiceServer::new(NoopService))
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
}
