//! The HTTP port's server loop: hyper directly rather than `axum::serve`, because `axum::serve`
//! sets no timer, so hyper's HTTP/1 header-read timeout is off and a client sending one header
//! byte a second holds its connection forever.

use std::io;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio_util::sync::CancellationToken;

use crate::tls::Listener;

/// Serve `app` on `listener` (TLS or plain, bounded) until `stop`, then let open connections finish.
pub async fn serve_http(
    mut listener: Listener,
    app: Router,
    max_concurrent_streams: u32,
    stop: CancellationToken,
) -> io::Result<()> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(listener.header_read_timeout());
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(max_concurrent_streams);
    let graceful = GracefulShutdown::new();
    loop {
        let conn = tokio::select! {
            c = listener.next() => c,
            _ = stop.cancelled() => break,
        };
        let service = TowerToHyperService::new(app.clone());
        let served = builder
            .serve_connection_with_upgrades(TokioIo::new(conn), service)
            .into_owned();
        let served = graceful.watch(served);
        tokio::spawn(async move {
            if let Err(e) = served.await {
                tracing::trace!(error = %e, "HTTP connection ended with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}
