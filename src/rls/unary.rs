//! What tonic does before `ShouldRateLimit`'s handler runs, made strict and counted.
//!
//! ShouldRateLimit is unary: its body carries exactly one gRPC message. tonic decodes the first
//! and discards the rest, so a body with two messages would be answered for the first one only,
//! whatever the second said. [`OneMessage`] watches the body's gRPC framing as it streams (no
//! copy, no buffering) and fails the call with INVALID_ARGUMENT as soon as a second message
//! begins.
//!
//! Answers tonic makes without the handler (a body that does not decode, an empty body, a
//! message over the size limit, an unsupported compression, and the second message above) never
//! reach `rls::decide`, which counts every answer it gives. [`Guarded`] counts those in
//! `tollgate_requests_total` under the code the client got, so that the counter is the whole of
//! what callers saw. The handler marks its own errors with [`handled`] so they are not counted
//! twice.

use std::error::Error as StdError;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::Buf;
use http_body::{Body, Frame, SizeHint};
use tonic::server::NamedService;
use tonic::Status;

use crate::metrics::{Answer, Metrics};

type BoxError = Box<dyn StdError + Send + Sync>;

/// The source the handler gives its own error statuses, so [`Guarded`] knows they are counted.
#[derive(Debug)]
struct Handled;

impl fmt::Display for Handled {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("answered by the ShouldRateLimit handler")
    }
}

impl StdError for Handled {}

/// Marks a status the handler answered with (and counted).
pub fn handled(mut status: Status) -> Status {
    status.set_source(Arc::new(Handled));
    status
}

fn is_handled(status: &Status) -> bool {
    status
        .source()
        .is_some_and(|s| s.downcast_ref::<Handled>().is_some())
}

/// The gRPC length-prefixed framing of a unary body: a 5-byte header (compression flag, length
/// as big-endian u32), then the message.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Framing {
    header: [u8; 5],
    header_len: usize,
    /// Message bytes still to come.
    message_left: u64,
    messages: u32,
}

impl Framing {
    /// Reads `chunk`; `Err` with the number of the message that begins once a second does.
    pub fn read(&mut self, mut chunk: &[u8]) -> Result<(), u32> {
        while !chunk.is_empty() {
            if self.message_left > 0 {
                let n = (self.message_left).min(chunk.len() as u64);
                self.message_left -= n;
                chunk = &chunk[n as usize..];
                continue;
            }
            if self.header_len == 0 && self.messages == 1 {
                return Err(2);
            }
            let n = (5 - self.header_len).min(chunk.len());
            self.header[self.header_len..self.header_len + n].copy_from_slice(&chunk[..n]);
            self.header_len += n;
            chunk = &chunk[n..];
            if self.header_len == 5 {
                let len = u32::from_be_bytes([
                    self.header[1],
                    self.header[2],
                    self.header[3],
                    self.header[4],
                ]);
                self.message_left = u64::from(len);
                self.header_len = 0;
                self.messages += 1;
            }
        }
        Ok(())
    }
}

pin_project_lite::pin_project! {
    /// A request body that fails once a second gRPC message begins.
    pub struct OneMessage<B> {
        #[pin]
        inner: B,
        framing: Framing,
    }
}

impl<B> OneMessage<B> {
    pub fn new(inner: B) -> Self {
        OneMessage {
            inner,
            framing: Framing::default(),
        }
    }
}

impl<B> Body for OneMessage<B>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    type Data = B::Data;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let frame = match ready!(this.inner.poll_frame(cx)) {
            None => return Poll::Ready(None),
            Some(Err(e)) => return Poll::Ready(Some(Err(e.into()))),
            Some(Ok(frame)) => frame,
        };
        if let Some(data) = frame.data_ref() {
            if this.framing.read(data.chunk()).is_err() {
                let status = Status::invalid_argument(
                    "ShouldRateLimit is unary: its body must carry exactly one message, and a \
                     second one began",
                );
                return Poll::Ready(Some(Err(Box::new(status))));
            }
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The ShouldRateLimit server with its body held to one message and every answer counted.
#[derive(Clone)]
pub struct Guarded<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

impl<S> Guarded<S> {
    pub fn new(inner: S, metrics: Arc<Metrics>) -> Self {
        Guarded { inner, metrics }
    }
}

impl<S: NamedService> NamedService for Guarded<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, B, ResBody> tower_service::Service<http::Request<B>> for Guarded<S>
where
    S: tower_service::Service<http::Request<OneMessage<B>>, Response = http::Response<ResBody>>,
{
    type Response = http::Response<ResBody>;
    type Error = S::Error;
    type Future = Counted<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let (parts, body) = req.into_parts();
        Counted {
            inner: self
                .inner
                .call(http::Request::from_parts(parts, OneMessage::new(body))),
            metrics: self.metrics.clone(),
        }
    }
}

pin_project_lite::pin_project! {
    /// The inner server's answer, counted when the handler did not count it.
    pub struct Counted<F> {
        #[pin]
        inner: F,
        metrics: Arc<Metrics>,
    }
}

impl<F, ResBody, E> Future for Counted<F>
where
    F: Future<Output = Result<http::Response<ResBody>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.inner.poll(cx));
        if let Ok(response) = &result {
            // tonic puts the status of every error answer in the response's extensions.
            if let Some(status) = response.extensions().get::<Status>() {
                if !is_handled(status) {
                    this.metrics.request(Answer::of_code(status.code()));
                }
            }
        }
        Poll::Ready(result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(len: u32) -> Vec<u8> {
        let mut f = vec![0u8];
        f.extend_from_slice(&len.to_be_bytes());
        f.extend(std::iter::repeat_n(7u8, len as usize));
        f
    }

    #[test]
    fn one_message_in_any_chunking_passes() {
        let body = frame(300);
        for split in [1, 2, 4, 5, 6, 100, 305] {
            let mut framing = Framing::default();
            for chunk in body.chunks(split) {
                assert_eq!(framing.read(chunk), Ok(()), "chunks of {split}");
            }
        }
    }

    #[test]
    fn a_second_message_is_refused_wherever_it_starts() {
        let mut body = frame(10);
        body.extend(frame(0));
        for split in [1, 3, 15, 16, 30] {
            let mut framing = Framing::default();
            let refused = body.chunks(split).any(|c| framing.read(c).is_err());
            assert!(refused, "chunks of {split}");
        }
    }

    #[test]
    fn an_empty_message_then_nothing_passes() {
        let mut framing = Framing::default();
        assert_eq!(framing.read(&frame(0)), Ok(()));
        assert_eq!(framing.read(&[]), Ok(()));
    }

    #[test]
    fn the_handlers_statuses_are_told_apart_from_tonics() {
        assert!(is_handled(&handled(Status::invalid_argument("x"))));
        assert!(!is_handled(&Status::internal("failed to decode")));
    }
}
