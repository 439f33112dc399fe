//! Where time comes from. The bucket math takes time as an argument; this is what the server
//! passes in.
//!
//! Replicas compare bucket states across machines, so the time is wall-clock nanoseconds since the
//! Unix epoch. But a wall clock can step backwards (NTP), which would let a node re-grant tokens
//! it already gave out; so [`SystemClock`] reads the wall clock once at start and advances it by
//! the monotonic clock from then on. No HLC: merging needs no causality, and an HLC would spread
//! one fast clock to every node.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// Nanoseconds since the Unix epoch. i64 lasts until the year 2262.
pub type Nanos = i64;

pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> Nanos;
}

/// A clock to hand around in settings (which are `Debug` and `Clone`).
#[derive(Clone)]
pub struct SharedClock(pub Arc<dyn Clock>);

impl SharedClock {
    pub fn new(c: impl Clock) -> Self {
        SharedClock(Arc::new(c))
    }
}

impl std::fmt::Debug for SharedClock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SharedClock(now: {})", self.0.now())
    }
}

/// Wall time anchored once, then advanced monotonically: never goes backwards.
#[derive(Debug, Clone)]
pub struct SystemClock {
    anchor_wall: Nanos,
    anchor: Instant,
}

impl SystemClock {
    pub fn new() -> Self {
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos().min(i64::MAX as u128) as i64)
            .unwrap_or(0);
        SystemClock {
            anchor_wall: wall,
            anchor: Instant::now(),
        }
    }
}

impl Default for SystemClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for SystemClock {
    fn now(&self) -> Nanos {
        let elapsed = self.anchor.elapsed().as_nanos().min(i64::MAX as u128) as i64;
        self.anchor_wall.saturating_add(elapsed)
    }
}

/// A clock that moves only when told to: every timing test is deterministic.
#[derive(Debug, Clone, Default)]
pub struct ManualClock {
    now: Arc<AtomicI64>,
}

impl ManualClock {
    pub fn new(start: Nanos) -> Self {
        ManualClock {
            now: Arc::new(AtomicI64::new(start)),
        }
    }

    pub fn set(&self, t: Nanos) {
        self.now.store(t, Ordering::SeqCst);
    }

    pub fn advance(&self, by: std::time::Duration) {
        let by = by.as_nanos().min(i64::MAX as u128) as i64;
        self.now.fetch_add(by, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Nanos {
        self.now.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_clock_never_goes_backwards() {
        let c = SystemClock::new();
        let mut last = c.now();
        for _ in 0..10_000 {
            let t = c.now();
            assert!(t >= last);
            last = t;
        }
    }

    #[test]
    fn manual_clock_moves_only_when_told() {
        let c = ManualClock::new(5);
        assert_eq!(c.now(), 5);
        c.advance(std::time::Duration::from_nanos(10));
        assert_eq!(c.now(), 15);
        c.set(1);
        assert_eq!(c.now(), 1);
    }
}
