//! Hand-built HTTP/2 frames, for tests that need what a well-behaved client never does (a
//! stream flood, a request that never ends). Shared by the test binaries.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len();
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// A ShouldRateLimit request's header block in HPACK, without the dynamic table.
pub fn request_headers() -> Vec<u8> {
    let mut b = vec![0x83, 0x86]; // :method POST, :scheme http
    let path = b"/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit";
    b.push(0x04); // :path, literal without indexing
    b.push(path.len() as u8);
    b.extend_from_slice(path);
    b.extend_from_slice(&[0x01, 1, b'x']); // :authority x
    let ct = b"application/grpc";
    b.extend_from_slice(&[0x0f, 0x10, ct.len() as u8]); // content-type
    b.extend_from_slice(ct);
    b
}

/// Read one frame: (type, flags, stream, payload); `None` on EOF, error or timeout.
pub fn read_frame(s: &mut TcpStream) -> Option<(u8, u8, u32, Vec<u8>)> {
    let mut h = [0u8; 9];
    s.read_exact(&mut h).ok()?;
    let len = (usize::from(h[0]) << 16) | (usize::from(h[1]) << 8) | usize::from(h[2]);
    let mut payload = vec![0u8; len];
    s.read_exact(&mut payload).ok()?;
    let stream = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff;
    Some((h[3], h[4], stream, payload))
}

/// Preface and an empty SETTINGS; returns the server's SETTINGS parameters, and ACKs them.
pub fn h2_handshake(s: &mut TcpStream) -> Vec<(u16, u32)> {
    s.write_all(PREFACE).expect("preface");
    s.write_all(&frame(0x4, 0, 0, &[])).expect("settings");
    let (kind, _, _, payload) = read_frame(s).expect("server settings");
    assert_eq!(kind, 0x4, "the server speaks first with SETTINGS");
    s.write_all(&frame(0x4, 0x1, 0, &[])).expect("settings ack");
    payload
        .chunks_exact(6)
        .map(|c| {
            (
                u16::from_be_bytes([c[0], c[1]]),
                u32::from_be_bytes([c[2], c[3], c[4], c[5]]),
            )
        })
        .collect()
}

/// Whether the peer closed the connection within `within` (EOF or reset, not a timeout).
pub fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        s.set_read_timeout(Some(Duration::from_millis(100)))
            .expect("timeout");
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return true,
        }
    }
    false
}
