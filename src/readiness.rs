//! Two separate facts behind "ready":
//! - `synced`: this node's answers are correct (config loaded; with replication, the cluster's
//!   state received). Until then ShouldRateLimit answers UNAVAILABLE so Envoy's failure mode
//!   decides, rather than a wrong answer from an empty view.
//! - `draining`: shutting down. The node still answers correctly, but tells load balancers
//!   (readiness, gRPC health) to send traffic elsewhere.
//! - `outlier`: this node's clock is far off most peers' (replication quarantines it): same.
//!
//! The `tollgate_ready` gauge is set here and nowhere else, on every change, so it says what
//! `/readyz` answers: set by hand in several places it once missed the outlier case, and the
//! `TollgateNotReady` alert never fired for a node that answered 503.

use std::sync::atomic::{AtomicBool, Ordering};

use metrics::Gauge;
use parking_lot::Mutex;

pub struct Readiness {
    synced: AtomicBool,
    draining: AtomicBool,
    outlier: AtomicBool,
    /// `tollgate_ready`; the lock keeps two changes from publishing out of order.
    gauge: Mutex<Gauge>,
}

impl Readiness {
    pub fn new(synced: bool, gauge: Gauge) -> Self {
        let r = Readiness {
            synced: AtomicBool::new(synced),
            draining: AtomicBool::new(false),
            outlier: AtomicBool::new(false),
            gauge: Mutex::new(gauge),
        };
        r.change(|| {});
        r
    }

    /// Apply a change and publish the readiness it leaves.
    fn change(&self, apply: impl FnOnce()) {
        let gauge = self.gauge.lock();
        apply();
        gauge.set(if self.ready() { 1.0 } else { 0.0 });
    }

    pub fn set_synced(&self, v: bool) {
        self.change(|| self.synced.store(v, Ordering::Release));
    }

    pub fn set_draining(&self) {
        self.change(|| self.draining.store(true, Ordering::Release));
    }

    /// This node's clock is far from most of its peers': it should not take traffic.
    pub fn set_outlier(&self, v: bool) {
        self.change(|| self.outlier.store(v, Ordering::Release));
    }

    /// Answers are correct.
    pub fn synced(&self) -> bool {
        self.synced.load(Ordering::Acquire)
    }

    /// Should receive traffic.
    pub fn ready(&self) -> bool {
        self.synced()
            && !self.draining.load(Ordering::Acquire)
            && !self.outlier.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ready_gauge(m: &crate::metrics::Metrics) -> bool {
        m.render().contains("tollgate_ready 1\n")
    }

    #[test]
    fn the_ready_gauge_follows_every_change_the_outlier_included() {
        let m = crate::metrics::Metrics::new();
        let r = Readiness::new(false, m.ready.clone());
        assert!(!ready_gauge(&m), "not synced yet");
        r.set_synced(true);
        assert!(ready_gauge(&m));
        r.set_outlier(true);
        assert!(!r.ready());
        assert!(!ready_gauge(&m), "an outlier answers 503 and says so");
        r.set_outlier(false);
        assert!(ready_gauge(&m));
        r.set_draining();
        assert!(!ready_gauge(&m), "draining");
    }
}
