//! How long to wait after a failed `accept`.
//!
//! When the process is out of file descriptors, `accept` fails at once every time, and a loop
//! that retries immediately burns a core and floods the log. Waiting, doubling from 5 ms to 1 s,
//! keeps the cost negligible while still picking connections up soon after descriptors free.

use std::time::Duration;

const FIRST: Duration = Duration::from_millis(5);
const MAX: Duration = Duration::from_secs(1);

#[derive(Debug, Default)]
pub struct AcceptBackoff {
    /// The next delay; `None` when the last accept succeeded.
    next: Option<Duration>,
}

impl AcceptBackoff {
    /// An accept failed: how long to wait, and whether this starts a failing episode (so it
    /// is logged once, not once per retry).
    pub fn failed(&mut self) -> (Duration, bool) {
        let first = self.next.is_none();
        let delay = self.next.unwrap_or(FIRST);
        self.next = Some((delay * 2).min(MAX));
        (delay, first)
    }

    /// An accept succeeded; returns whether a failing episode just ended.
    pub fn succeeded(&mut self) -> bool {
        self.next.take().is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_a_second_and_only_the_first_failure_is_reported() {
        let mut b = AcceptBackoff::default();
        let (d, first) = b.failed();
        assert_eq!((d, first), (FIRST, true));
        let delays: Vec<Duration> = (0..12)
            .map(|_| b.failed())
            .map(|(d, f)| {
                assert!(!f);
                d
            })
            .collect();
        assert_eq!(delays[0], FIRST * 2);
        assert_eq!(*delays.last().expect("some"), MAX);
        assert!(b.succeeded());
        assert!(!b.succeeded());
        assert_eq!(b.failed(), (FIRST, true), "a new episode starts over");
    }
}
