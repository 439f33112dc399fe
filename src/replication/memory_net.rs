//! In-memory peer connections for in-process cluster tests: a node listens at its peer
//! address in a table instead of on a socket, and a dial hands the listener one end of an
//! in-memory pipe. The gRPC stack above (tonic, HTTP/2, the peer protocol) is the real one;
//! only the bytes skip the kernel, so a fleet of a hundred members fits in one process's file
//! descriptors (over loopback TCP every link costs two, and 100 members need 19,800).

use std::collections::HashMap;
use std::future::Ready;
use std::task::{Context, Poll};

use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use tokio::io::DuplexStream;
use tokio::sync::mpsc;

/// Each direction of a connection buffers this much before the writer waits: a frame is at
/// most 1 MiB, and HTTP/2 flow control paces it in smaller pieces.
const PIPE_BYTES: usize = 256 * 1024;

#[derive(Debug, Default)]
pub struct MemoryNet {
    listeners: Mutex<HashMap<String, mpsc::UnboundedSender<DuplexStream>>>,
}

impl MemoryNet {
    /// Listen at `addr` (a node's peer address); a later listener at the same address (a
    /// restarted node) replaces the earlier one.
    pub fn listen(&self, addr: &str) -> mpsc::UnboundedReceiver<DuplexStream> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.listeners.lock().insert(addr.to_string(), tx);
        rx
    }

    /// Connect to the node listening at `addr`: refused when none is, or it stopped.
    pub fn dial(&self, addr: &str) -> std::io::Result<DuplexStream> {
        let refused = || {
            std::io::Error::new(
                std::io::ErrorKind::ConnectionRefused,
                format!("nothing listens at {addr} on the in-memory test network"),
            )
        };
        let listeners = self.listeners.lock();
        let tx = listeners.get(addr).ok_or_else(refused)?;
        let (ours, theirs) = tokio::io::duplex(PIPE_BYTES);
        tx.send(theirs).map_err(|_| refused())?;
        Ok(ours)
    }
}

/// A tonic connector that dials one address on the in-memory network.
#[derive(Clone)]
pub(crate) struct Dial {
    pub net: std::sync::Arc<MemoryNet>,
    pub addr: String,
}

impl tower_service::Service<http::Uri> for Dial {
    type Response = TokioIo<DuplexStream>;
    type Error = std::io::Error;
    type Future = Ready<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: http::Uri) -> Self::Future {
        std::future::ready(self.net.dial(&self.addr).map(TokioIo::new))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn a_dial_reaches_the_listener_and_bytes_flow_both_ways() {
        let net = MemoryNet::default();
        let mut incoming = net.listen("127.0.0.1:9");
        let mut client = net.dial("127.0.0.1:9").expect("listening");
        let mut server = incoming.recv().await.expect("accepted");
        client.write_all(b"ping").await.expect("write");
        let mut buf = [0u8; 4];
        server.read_exact(&mut buf).await.expect("read");
        assert_eq!(&buf, b"ping");
    }

    #[test]
    fn a_dial_to_an_address_nobody_listens_at_is_refused_and_says_where() {
        let net = MemoryNet::default();
        let e = net.dial("127.0.0.1:9").expect_err("nobody there");
        assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused);
        assert!(e.to_string().contains("127.0.0.1:9"), "{e}");
        drop(net.listen("127.0.0.1:9"));
        assert!(net.dial("127.0.0.1:9").is_err(), "the listener stopped");
    }
}
