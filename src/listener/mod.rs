//! Accepting connections on the public ports (gRPC and HTTP) without letting clients exhaust
//! the process: a bound on open connections, idle and header-read timeouts on each, and an
//! accept loop that backs off (and says so once, at warn) when `accept` fails, e.g. with
//! EMFILE when the process is out of file descriptors, instead of spinning on it.
//!
//! The seam for TLS: [`Listener::accept`] hands out the raw TCP stream with its permit, and
//! [`Listener::wrap`] puts any stream (a TLS stream over that TCP stream) under the timeouts.
//! [`Listener::next`] does both for plaintext.
//!
//! Files: `conn.rs` (the per-connection timeouts), `h2_headers.rs` (the frame scanner that
//! spots an HTTP/2 header block that never ends), `backoff.rs` (accept failures),
//! `serve_http.rs` (the HTTP port's hyper server with its header-read timeout).

mod backoff;
mod conn;
pub mod h2_headers;
mod serve_http;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::Stream;
use metrics::{Counter, Label};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::{info, warn};

use crate::metrics::Metrics;
use backoff::AcceptBackoff;
pub use conn::{Conn, ConnPolicy};
pub use serve_http::serve_http;

/// Bounds that apply to each public port separately.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Open connections beyond which new ones wait in the kernel's backlog.
    pub max_connections: usize,
    /// A connection with no byte either way for this long is closed.
    pub idle_timeout: Duration,
    /// A request's headers (and on gRPC the HTTP/2 preface) must arrive within this.
    pub header_read_timeout: Duration,
}

/// A bound TCP listener with the limits above.
pub struct Listener {
    tcp: TcpListener,
    port: &'static str,
    permits: Arc<Semaphore>,
    policy: ConnPolicy,
    watch_h2_headers: bool,
    backoff: AcceptBackoff,
    accept_errors: Counter,
    /// The connection bound is being hit; reported once per episode.
    at_capacity: bool,
}

impl Listener {
    /// `port` labels metrics and logs ("grpc", "http"); `watch_h2_headers` is for ports that
    /// speak HTTP/2 only, where hyper has no header-read timeout of its own.
    pub fn new(
        tcp: TcpListener,
        port: &'static str,
        limits: &Limits,
        metrics: &Metrics,
        watch_h2_headers: bool,
    ) -> Listener {
        let label = || vec![Label::new("port", port)];
        let closed = |reason: &'static str| {
            metrics.counter(
                "tollgate_connections_closed_total",
                vec![Label::new("port", port), Label::new("reason", reason)],
            )
        };
        Listener {
            tcp,
            port,
            permits: Arc::new(Semaphore::new(limits.max_connections.max(1))),
            policy: ConnPolicy {
                idle_timeout: limits.idle_timeout,
                header_read_timeout: limits.header_read_timeout,
                open: metrics.gauge("tollgate_connections", label()),
                closed_idle: closed("idle"),
                closed_headers: closed("header_timeout"),
            },
            watch_h2_headers,
            backoff: AcceptBackoff::default(),
            accept_errors: metrics.counter("tollgate_accept_errors_total", label()),
            at_capacity: false,
        }
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.tcp.local_addr()
    }

    pub fn header_read_timeout(&self) -> Duration {
        self.policy.header_read_timeout
    }

    /// Wait for a free connection slot, then for a connection. Failed accepts are retried
    /// with backoff; this only returns a connection.
    pub async fn accept(&mut self) -> (TcpStream, SocketAddr, OwnedSemaphorePermit) {
        let permit = self.permit().await;
        loop {
            match self.tcp.accept().await {
                Ok((stream, addr)) => {
                    if self.backoff.succeeded() {
                        info!(port = self.port, "accepting connections again");
                    }
                    return (stream, addr, permit);
                }
                // The client gave up between SYN and accept: nothing is wrong with us.
                Err(e) if is_connection_error(&e) => continue,
                Err(e) => {
                    self.accept_errors.increment(1);
                    let (delay, first) = self.backoff.failed();
                    if first {
                        warn!(port = self.port, error = %e, "accept failing (out of file descriptors?); retrying with backoff, new connections wait");
                    }
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    async fn permit(&mut self) -> OwnedSemaphorePermit {
        if let Ok(p) = self.permits.clone().try_acquire_owned() {
            self.at_capacity = false;
            return p;
        }
        if !self.at_capacity {
            self.at_capacity = true;
            warn!(
                port = self.port,
                "connection limit reached; new connections wait until one closes"
            );
        }
        match self.permits.clone().acquire_owned().await {
            Ok(p) => p,
            // The semaphore is never closed.
            Err(_) => unreachable!("connection semaphore closed"),
        }
    }

    /// Put `io` (the accepted stream, or a TLS stream over it) under the timeouts.
    pub fn wrap<S>(&self, io: S, permit: OwnedSemaphorePermit) -> Conn<S> {
        self.wrapper().wrap(io, permit)
    }

    /// What [`Listener::wrap`] needs, to wrap a connection in another task (after a TLS
    /// handshake that must not hold up the accept loop).
    pub fn wrapper(&self) -> Wrapper {
        Wrapper {
            policy: self.policy.clone(),
            watch_h2_headers: self.watch_h2_headers,
        }
    }

    /// The next plaintext connection, ready to serve.
    pub async fn next(&mut self) -> Conn<TcpStream> {
        let (stream, _, permit) = self.accept().await;
        // Small request/response messages: Nagle would only add latency.
        let _ = stream.set_nodelay(true);
        self.wrap(stream, permit)
    }

    /// Connections as a stream, for tonic's `serve_with_incoming_shutdown`.
    pub fn into_incoming(self) -> impl Stream<Item = io::Result<Conn<TcpStream>>> + Send {
        futures_util::stream::unfold(self, |mut l| async move {
            let conn = l.next().await;
            Some((Ok(conn), l))
        })
    }
}

/// A listener's timeouts, detached from it: see [`Listener::wrapper`].
#[derive(Clone)]
pub struct Wrapper {
    policy: ConnPolicy,
    watch_h2_headers: bool,
}

impl Wrapper {
    pub fn wrap<S>(&self, io: S, permit: OwnedSemaphorePermit) -> Conn<S> {
        Conn::new(io, permit, self.policy.clone(), self.watch_h2_headers)
    }
}

fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}
