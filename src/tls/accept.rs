//! Accepting connections, with or without TLS, for tonic and for the HTTP port alike.
//!
//! Handshakes run in tasks of their own, never in the accept loop, so a client that connects
//! and stalls (or a plaintext client on a TLS port) delays nobody else; each is bounded by
//! [`HANDSHAKE_TIMEOUT`] and at most [`MAX_PENDING_HANDSHAKES`] run at once. The accept task
//! ends when the server drops its end of the channel (on shutdown).

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use metrics::Counter;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, Semaphore};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt as _;
use tonic::transport::server::{Connected, TcpConnectInfo};
use tracing::debug;

use super::serving::ServingTls;

/// A handshake not finished by then is dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Handshakes in progress at once; accepting pauses beyond it.
pub const MAX_PENDING_HANDSHAKES: usize = 256;

/// An accepted connection: plain TCP, or TLS over TCP once the handshake is done.
pub enum Conn {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl Conn {
    fn tcp(&self) -> &TcpStream {
        match self {
            Conn::Plain(s) => s,
            Conn::Tls(s) => s.get_ref().0,
        }
    }
}

/// TLS is counted on the listener: how many handshakes failed (a plaintext client, a client
/// certificate another CA signed, a stall).
#[derive(Clone)]
pub struct Tls {
    pub serving: Arc<ServingTls>,
    pub handshake_failures: Counter,
}

/// A connection as the servers see it: TLS or plain, under the listener's connection bound
/// and timeouts (`crate::listener`), which also count the TLS handshake's time.
pub type Bounded = crate::listener::Conn<Conn>;

/// Accept on `listener` in a task of its own, handing over connections (after the handshake
/// when `tls` is set) until the receiving end is dropped. The listener holds the connection
/// bound and backs off when accept fails.
fn spawn_accept(
    mut listener: crate::listener::Listener,
    tls: Option<Tls>,
) -> mpsc::Receiver<(Bounded, SocketAddr)> {
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        let pending = Arc::new(Semaphore::new(MAX_PENDING_HANDSHAKES));
        let wrapper = listener.wrapper();
        loop {
            let (tcp, addr, permit) = tokio::select! {
                _ = tx.closed() => return,
                a = listener.accept() => a,
            };
            let _ = tcp.set_nodelay(true);
            let Some(tls) = &tls else {
                if tx
                    .send((wrapper.wrap(Conn::Plain(tcp), permit), addr))
                    .await
                    .is_err()
                {
                    return;
                }
                continue;
            };
            let Ok(pending_permit) = pending.clone().acquire_owned().await else {
                return;
            };
            let acceptor = TlsAcceptor::from(tls.serving.current());
            let (tx, tls, wrapper) = (tx.clone(), tls.clone(), wrapper.clone());
            tokio::spawn(async move {
                let _pending = pending_permit;
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(s)) => {
                        let conn = wrapper.wrap(Conn::Tls(Box::new(s)), permit);
                        let _ = tx.send((conn, addr)).await;
                    }
                    Ok(Err(e)) => {
                        tls.handshake_failures.increment(1);
                        debug!(listener = tls.serving.name(), %addr, error = %e, "TLS handshake refused");
                    }
                    Err(_) => {
                        tls.handshake_failures.increment(1);
                        debug!(listener = tls.serving.name(), %addr, "TLS handshake timed out");
                    }
                }
            });
        }
    });
    rx
}

/// The incoming connections of a tonic server.
pub fn incoming(
    listener: crate::listener::Listener,
    tls: Option<Tls>,
) -> impl tokio_stream::Stream<Item = io::Result<Bounded>> + Send + 'static {
    ReceiverStream::new(spawn_accept(listener, tls)).map(|(c, _)| Ok(c))
}

/// The HTTP port's connections (`crate::listener::serve_http`).
pub struct Listener {
    rx: mpsc::Receiver<(Bounded, SocketAddr)>,
    header_read_timeout: Duration,
}

impl Listener {
    pub fn new(listener: crate::listener::Listener, tls: Option<Tls>) -> Listener {
        let header_read_timeout = listener.header_read_timeout();
        Listener {
            rx: spawn_accept(listener, tls),
            header_read_timeout,
        }
    }

    pub fn header_read_timeout(&self) -> Duration {
        self.header_read_timeout
    }

    /// The next connection, ready to serve.
    pub async fn next(&mut self) -> Bounded {
        match self.rx.recv().await {
            Some((c, _)) => c,
            // The accept task only ends when this receiver is gone: never reached while it
            // lives, but wait forever rather than spin if it ever is.
            None => std::future::pending().await,
        }
    }
}

impl Connected for Conn {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.tcp().connect_info()
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Conn::Plain(s) => s.is_write_vectored(),
            Conn::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_flush(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
