//! Clock health: which peers' clocks are too far from this node's (quarantined: their states
//! are not merged, since a fast clock would refill buckets early everywhere it spreads), and
//! whether this node is the one that is off (the outlier, which stops taking traffic).
//!
//! Offsets come from each link's Pongs, corrected for half the round trip; the decisions here
//! are pure and take the offset as an argument.

use std::collections::HashSet;

use parking_lot::Mutex;
use tracing::{info, warn};

use super::Shared;
use crate::clock::Nanos;

#[derive(Debug, Default)]
pub(crate) struct ClockHealth {
    quarantined: Mutex<HashSet<String>>,
}

impl ClockHealth {
    /// Judge `peer`'s clock, `offset` from ours (positive: ahead), against `limit`: quarantine
    /// it when too far off, lift the quarantine when it is back within bounds. Says so in the
    /// log on each change.
    pub fn observe(&self, peer: &str, offset: Nanos, limit: Nanos) {
        let mut q = self.quarantined.lock();
        if offset.abs() > limit {
            if q.insert(peer.to_string()) {
                warn!(
                    peer,
                    offset_ms = offset / 1_000_000,
                    "peer clock too far off: quarantined (its states are not merged)"
                );
            }
        } else if q.remove(peer) {
            info!(
                peer,
                offset_ms = offset / 1_000_000,
                "peer clock back within bounds: quarantine lifted"
            );
        }
    }

    pub fn is_quarantined(&self, peer: &str) -> bool {
        self.quarantined.lock().contains(peer)
    }

    pub fn quarantined(&self) -> usize {
        self.quarantined.lock().len()
    }

    /// This node is the outlier when it quarantines more than half of two or more connected
    /// peers: then it is the one that is off. With a single peer nobody can tell which clock
    /// is wrong, so neither steps back.
    pub fn is_outlier(&self, connected: usize) -> bool {
        outlier(connected, self.quarantined())
    }
}

impl Shared {
    /// Recount the quarantined peers and step back from traffic when this node is the outlier.
    pub(super) fn update_outlier(&self) {
        let connected = self.links.count(|l| l.connected_node().is_some());
        self.metrics
            .quarantined
            .set(self.clock_health.quarantined() as f64);
        self.readiness
            .set_outlier(self.clock_health.is_outlier(connected));
    }
}

fn outlier(connected: usize, quarantined: usize) -> bool {
    connected >= 2 && quarantined * 2 > connected
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Nanos = 1_000_000;

    #[test]
    fn a_peer_too_far_off_is_quarantined_until_it_is_back_within_bounds() {
        let h = ClockHealth::default();
        h.observe("b", 600 * MS, 500 * MS);
        assert!(h.is_quarantined("b"));
        h.observe("b", -700 * MS, 500 * MS);
        assert!(h.is_quarantined("b"), "behind counts as off too");
        h.observe("b", 499 * MS, 500 * MS);
        assert!(!h.is_quarantined("b"));
        assert_eq!(h.quarantined(), 0);
    }

    #[test]
    fn the_node_is_the_outlier_only_when_it_quarantines_most_of_two_or_more_peers() {
        assert!(
            !outlier(1, 1),
            "one peer: nobody can tell whose clock is wrong"
        );
        assert!(!outlier(2, 1));
        assert!(outlier(2, 2));
        assert!(!outlier(4, 2));
        assert!(outlier(3, 2));
    }
}
