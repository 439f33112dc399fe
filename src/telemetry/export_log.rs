//! When a failing metrics export is worth a log line.
//!
//! A collector that is down fails every push, every interval, possibly for hours: a line per
//! failure would bury the log. The first failure is said at once, then at most one line per
//! [`ExportLog::every`] saying how many failed since the last line, and the recovery once.
//! Every failure is still counted (`tollgate_otlp_metrics_exports_total{result="failed"}`).
//! Time comes in as an argument, so the policy is tested without waiting.

use std::time::{Duration, Instant};

/// One line per this while exports keep failing.
pub const LOG_EVERY: Duration = Duration::from_secs(300);

#[derive(Debug, PartialEq, Eq)]
pub enum Say {
    Nothing,
    /// Warn: this many exports failed since the last line (this one included).
    Failing {
        failed: u64,
    },
    /// Say that exports work again after this many failures.
    Recovered {
        failed: u64,
    },
}

#[derive(Debug)]
pub struct ExportLog {
    every: Duration,
    last_line: Option<Instant>,
    unsaid: u64,
    failed_in_a_row: u64,
}

impl ExportLog {
    pub fn new(every: Duration) -> ExportLog {
        ExportLog {
            every,
            last_line: None,
            unsaid: 0,
            failed_in_a_row: 0,
        }
    }

    pub fn failed(&mut self, now: Instant) -> Say {
        self.failed_in_a_row += 1;
        self.unsaid += 1;
        let due = match self.last_line {
            Some(at) => self.failed_in_a_row == 1 || now.duration_since(at) >= self.every,
            None => true,
        };
        if !due {
            return Say::Nothing;
        }
        self.last_line = Some(now);
        Say::Failing {
            failed: std::mem::take(&mut self.unsaid),
        }
    }

    pub fn succeeded(&mut self) -> Say {
        self.unsaid = 0;
        match std::mem::take(&mut self.failed_in_a_row) {
            0 => Say::Nothing,
            failed => Say::Recovered { failed },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Duration = Duration::from_secs(60);

    #[test]
    fn the_first_failure_is_said_then_one_line_per_period_with_the_count() {
        let t0 = Instant::now();
        let mut log = ExportLog::new(5 * MIN);
        assert_eq!(log.failed(t0), Say::Failing { failed: 1 });
        for i in 1..5 {
            assert_eq!(log.failed(t0 + i * MIN), Say::Nothing);
        }
        assert_eq!(log.failed(t0 + 5 * MIN), Say::Failing { failed: 5 });
        assert_eq!(log.failed(t0 + 6 * MIN), Say::Nothing);
    }

    #[test]
    fn a_recovery_is_said_once_and_the_next_outage_is_said_at_once() {
        let t0 = Instant::now();
        let mut log = ExportLog::new(5 * MIN);
        assert_eq!(log.succeeded(), Say::Nothing);
        log.failed(t0);
        log.failed(t0 + MIN);
        assert_eq!(log.succeeded(), Say::Recovered { failed: 2 });
        assert_eq!(log.succeeded(), Say::Nothing);
        assert_eq!(log.failed(t0 + 2 * MIN), Say::Failing { failed: 1 });
    }
}
