//! Two separate facts behind "ready":
//! - `synced`: this node's answers are correct (config loaded; with replication, the cluster's
//!   state received). Until then ShouldRateLimit answers UNAVAILABLE so Envoy's failure mode
//!   decides, rather than a wrong answer from an empty view.
//! - `draining`: shutting down. The node still answers correctly, but tells load balancers
//!   (readiness, gRPC health) to send traffic elsewhere.
//! - `outlier`: this node's clock is far off most peers' (replication quarantines it): same.

use std::sync::atomic::{AtomicBool, Ordering};

#[derive(Debug, Default)]
pub struct Readiness {
    synced: AtomicBool,
    draining: AtomicBool,
    outlier: AtomicBool,
}

impl Readiness {
    pub fn new(synced: bool) -> Self {
        Readiness {
            synced: AtomicBool::new(synced),
            draining: AtomicBool::new(false),
            outlier: AtomicBool::new(false),
        }
    }

    pub fn set_synced(&self, v: bool) {
        self.synced.store(v, Ordering::Release);
    }

    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    /// This node's clock is far from most of its peers': it should not take traffic.
    pub fn set_outlier(&self, v: bool) {
        self.outlier.store(v, Ordering::Release);
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
