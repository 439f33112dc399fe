//! One accepted connection, wrapped so that it cannot be held forever: it closes after
//! `idle_timeout` without a byte either way, and (on the gRPC port) when a header block stays
//! incomplete for `header_read_timeout`. It also holds its connection permit, so the count of
//! open connections drops exactly when the socket is dropped.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use metrics::{Counter, Gauge};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::{Instant, Sleep};

use super::h2_headers::HeaderWatch;

/// Why a connection was closed by the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expired {
    Idle,
    Headers,
}

/// What a connection shares with its listener: timeouts, and the metrics it updates.
#[derive(Clone)]
pub struct ConnPolicy {
    pub idle_timeout: Duration,
    pub header_read_timeout: Duration,
    pub open: Gauge,
    pub closed_idle: Counter,
    pub closed_headers: Counter,
}

pub struct Conn<S> {
    io: S,
    policy: ConnPolicy,
    /// Set on every byte read or written; the timer checks it lazily when it fires, so a busy
    /// connection does not re-arm a timer on every read.
    last_io: Instant,
    /// Only on HTTP/2-only ports (gRPC); the HTTP port's HTTP/1 head timeout is hyper's.
    headers: Option<(HeaderWatch, Instant)>,
    timer: Pin<Box<Sleep>>,
    expired: Option<Expired>,
    _permit: OwnedSemaphorePermit,
}

impl<S> Conn<S> {
    /// Wrap `io`; `watch_h2_headers` enables the header-block watch (HTTP/2 prior knowledge).
    pub fn new(
        io: S,
        permit: OwnedSemaphorePermit,
        policy: ConnPolicy,
        watch_h2_headers: bool,
    ) -> Conn<S> {
        let now = Instant::now();
        policy.open.increment(1.0);
        let headers = watch_h2_headers.then(|| (HeaderWatch::new(0), now));
        let mut conn = Conn {
            io,
            last_io: now,
            headers,
            timer: Box::pin(tokio::time::sleep_until(now + policy.idle_timeout)),
            policy,
            expired: None,
            _permit: permit,
        };
        let deadline = conn.next_deadline();
        conn.timer.as_mut().reset(deadline);
        conn
    }

    pub fn get_ref(&self) -> &S {
        &self.io
    }

    fn header_deadline(&self) -> Option<Instant> {
        let (watch, epoch) = self.headers.as_ref()?;
        let at = watch.deadline(self.policy.header_read_timeout)?;
        Some(*epoch + Duration::from_nanos(at))
    }

    fn next_deadline(&self) -> Instant {
        let idle = self.last_io + self.policy.idle_timeout;
        match self.header_deadline() {
            Some(h) if h < idle => h,
            _ => idle,
        }
    }

    /// Poll the timer; `Some` once the connection must close.
    fn poll_expiry(&mut self, cx: &mut Context<'_>) -> Option<Expired> {
        if let Some(e) = self.expired {
            return Some(e);
        }
        loop {
            if self.timer.as_mut().poll(cx).is_pending() {
                return None;
            }
            let now = Instant::now();
            if self.header_deadline().is_some_and(|h| h <= now) {
                return Some(self.expire(Expired::Headers));
            }
            if self.last_io + self.policy.idle_timeout <= now {
                return Some(self.expire(Expired::Idle));
            }
            let next = self.next_deadline();
            self.timer.as_mut().reset(next);
        }
    }

    fn expire(&mut self, why: Expired) -> Expired {
        self.expired = Some(why);
        match why {
            Expired::Idle => self.policy.closed_idle.increment(1),
            Expired::Headers => self.policy.closed_headers.increment(1),
        }
        tracing::debug!(?why, "closing a connection");
        why
    }

    fn saw_io(&mut self, read: &[u8]) {
        let now = Instant::now();
        self.last_io = now;
        if let Some((watch, epoch)) = &mut self.headers {
            let at = now.saturating_duration_since(*epoch).as_nanos() as u64;
            watch.feed(read, at);
        }
    }
}

fn expired_error(why: Expired) -> io::Error {
    let what = match why {
        Expired::Idle => "connection idle for longer than the idle timeout",
        Expired::Headers => "request headers not complete within the header read timeout",
    };
    io::Error::new(io::ErrorKind::TimedOut, what)
}

impl<S> Drop for Conn<S> {
    fn drop(&mut self) {
        self.policy.open.decrement(1.0);
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Conn<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(e) = this.expired {
            return Poll::Ready(Err(expired_error(e)));
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let read = &buf.filled()[before..];
                if !read.is_empty() {
                    this.saw_io(read);
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => match this.poll_expiry(cx) {
                Some(e) => Poll::Ready(Err(expired_error(e))),
                None => Poll::Pending,
            },
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Conn<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if let Some(e) = this.expired {
            return Poll::Ready(Err(expired_error(e)));
        }
        match Pin::new(&mut this.io).poll_write(cx, data) {
            Poll::Ready(Ok(n)) => {
                if n > 0 {
                    this.last_io = Instant::now();
                }
                Poll::Ready(Ok(n))
            }
            Poll::Pending => match this.poll_expiry(cx) {
                Some(e) => Poll::Ready(Err(expired_error(e))),
                None => Poll::Pending,
            },
            other => other,
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.io).poll_write_vectored(cx, bufs) {
            Poll::Ready(Ok(n)) => {
                if n > 0 {
                    this.last_io = Instant::now();
                }
                Poll::Ready(Ok(n))
            }
            other => other,
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

impl<S: tonic::transport::server::Connected> tonic::transport::server::Connected for Conn<S> {
    type ConnectInfo = S::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}
