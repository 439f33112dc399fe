//! Watches the bytes a client sends on an HTTP/2 connection for header blocks that never end.
//!
//! hyper's HTTP/2 server has no header-read timeout: a client that sends a HEADERS frame one
//! byte a second (or never finishes its connection preface) holds a connection and a stream
//! forever while staying "active", so an idle timeout never fires. This scanner follows the
//! frame layout only (9-byte frame headers, payload lengths, the END_HEADERS flag); it decodes
//! nothing and allocates nothing. It is pure: time is passed in.

use std::time::Duration;

/// The client connection preface: `PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n`.
const PREFACE_LEN: usize = 24;
const FRAME_HEADER_LEN: usize = 9;
const HEADERS: u8 = 0x1;
const PUSH_PROMISE: u8 = 0x5;
const CONTINUATION: u8 = 0x9;
const END_HEADERS: u8 = 0x4;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Bytes of the preface still to come.
    Preface(usize),
    /// A frame header, `have` bytes of it read so far.
    FrameHeader {
        buf: [u8; FRAME_HEADER_LEN],
        have: usize,
    },
    /// Payload bytes still to skip; `ends_block` when this frame carries END_HEADERS.
    Payload { remaining: usize, ends_block: bool },
}

/// Where a connection is in its incoming byte stream, and since when a header block (or the
/// preface) has been incomplete.
#[derive(Debug, Clone)]
pub struct HeaderWatch {
    state: State,
    /// Inside a header block (HEADERS without END_HEADERS waits for its CONTINUATIONs).
    in_block: bool,
    /// When the incomplete part began (nanoseconds on the caller's clock), if one is open.
    open_since: Option<u64>,
}

impl HeaderWatch {
    /// A new connection: the preface is open from the moment of accept.
    pub fn new(now: u64) -> HeaderWatch {
        HeaderWatch {
            state: State::Preface(PREFACE_LEN),
            in_block: false,
            open_since: Some(now),
        }
    }

    /// Account for bytes the client sent at `now`.
    pub fn feed(&mut self, mut bytes: &[u8], now: u64) {
        while !bytes.is_empty() {
            bytes = self.step(bytes);
        }
        self.open_since = if self.is_open() {
            Some(self.open_since.unwrap_or(now))
        } else {
            None
        };
    }

    /// Consume what the current state needs from `bytes`; returns the rest.
    fn step<'a>(&mut self, bytes: &'a [u8]) -> &'a [u8] {
        match &mut self.state {
            State::Preface(left) => {
                let n = (*left).min(bytes.len());
                *left -= n;
                if *left == 0 {
                    self.state = State::FrameHeader {
                        buf: [0; FRAME_HEADER_LEN],
                        have: 0,
                    };
                }
                &bytes[n..]
            }
            State::FrameHeader { buf, have } => {
                let n = (FRAME_HEADER_LEN - *have).min(bytes.len());
                buf[*have..*have + n].copy_from_slice(&bytes[..n]);
                *have += n;
                if *have == FRAME_HEADER_LEN {
                    let header = *buf;
                    self.begin_frame(&header);
                }
                &bytes[n..]
            }
            State::Payload {
                remaining,
                ends_block,
            } => {
                let n = (*remaining).min(bytes.len());
                *remaining -= n;
                if *remaining == 0 {
                    if *ends_block {
                        self.in_block = false;
                    }
                    self.state = State::FrameHeader {
                        buf: [0; FRAME_HEADER_LEN],
                        have: 0,
                    };
                }
                &bytes[n..]
            }
        }
    }

    fn begin_frame(&mut self, h: &[u8; FRAME_HEADER_LEN]) {
        let len = (usize::from(h[0]) << 16) | (usize::from(h[1]) << 8) | usize::from(h[2]);
        let (kind, flags) = (h[3], h[4]);
        let header_frame = matches!(kind, HEADERS | PUSH_PROMISE | CONTINUATION);
        let ends_block = header_frame && flags & END_HEADERS != 0;
        if header_frame {
            self.in_block = true;
        }
        if len == 0 {
            if ends_block {
                self.in_block = false;
            }
            self.state = State::FrameHeader {
                buf: [0; FRAME_HEADER_LEN],
                have: 0,
            };
        } else {
            self.state = State::Payload {
                remaining: len,
                ends_block,
            };
        }
    }

    /// The preface, a frame header, or a header block is incomplete.
    fn is_open(&self) -> bool {
        match self.state {
            State::Preface(_) => true,
            State::FrameHeader { have, .. } => have > 0 || self.in_block,
            State::Payload { .. } => self.in_block,
        }
    }

    /// When the open part must be complete, if one is open.
    pub fn deadline(&self, timeout: Duration) -> Option<u64> {
        self.open_since
            .map(|t| t.saturating_add(timeout.as_nanos().min(u64::MAX as u128) as u64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    const T: Duration = Duration::from_secs(10);

    fn frame(kind: u8, flags: u8, payload: &[u8]) -> Vec<u8> {
        let len = payload.len();
        let mut f = vec![
            (len >> 16) as u8,
            (len >> 8) as u8,
            len as u8,
            kind,
            flags,
            0,
            0,
            0,
            1,
        ];
        f.extend_from_slice(payload);
        f
    }

    #[test]
    fn a_new_connection_is_open_until_its_preface_is_complete() {
        let mut w = HeaderWatch::new(5);
        assert_eq!(w.deadline(T), Some(5 + T.as_nanos() as u64));
        w.feed(&PREFACE[..10], 6);
        assert_eq!(
            w.deadline(T),
            Some(5 + T.as_nanos() as u64),
            "still since accept"
        );
        w.feed(&PREFACE[10..], 7);
        assert_eq!(w.deadline(T), None);
    }

    #[test]
    fn a_complete_settings_frame_and_header_block_leave_nothing_open() {
        let mut w = HeaderWatch::new(0);
        let mut bytes = PREFACE.to_vec();
        bytes.extend(frame(0x4, 0, &[0; 6]));
        bytes.extend(frame(HEADERS, END_HEADERS, b"abc"));
        bytes.extend(frame(0x0, 0x1, b"body"));
        w.feed(&bytes, 1);
        assert_eq!(w.deadline(T), None);
    }

    #[test]
    fn headers_trickled_one_byte_at_a_time_stay_open_since_the_first_byte() {
        let mut w = HeaderWatch::new(0);
        w.feed(PREFACE, 1);
        let f = frame(HEADERS, END_HEADERS, b"0123456789");
        for (i, b) in f[..f.len() - 1].iter().enumerate() {
            w.feed(&[*b], 100 + i as u64);
        }
        assert_eq!(w.deadline(T), Some(100 + T.as_nanos() as u64));
        w.feed(&f[f.len() - 1..], 1000);
        assert_eq!(w.deadline(T), None);
    }

    #[test]
    fn a_header_block_stays_open_until_its_last_continuation() {
        let mut w = HeaderWatch::new(0);
        w.feed(PREFACE, 1);
        w.feed(&frame(HEADERS, 0, b"ab"), 2);
        assert_eq!(w.deadline(T), Some(2 + T.as_nanos() as u64));
        w.feed(&frame(CONTINUATION, 0, b"cd"), 3);
        assert_eq!(w.deadline(T), Some(2 + T.as_nanos() as u64));
        w.feed(&frame(CONTINUATION, END_HEADERS, b""), 4);
        assert_eq!(w.deadline(T), None);
    }

    #[test]
    fn a_slow_data_frame_is_not_a_header_block() {
        let mut w = HeaderWatch::new(0);
        w.feed(PREFACE, 1);
        let f = frame(0x0, 0, b"0123456789");
        w.feed(&f[..12], 2);
        assert_eq!(
            w.deadline(T),
            None,
            "payload of DATA is the idle timeout's business"
        );
    }
}
