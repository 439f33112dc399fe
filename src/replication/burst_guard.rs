//! The burst guard's acknowledgements (design section 4.3): the own counts each fan-out round
//! carried are held until every live member acknowledged that round; then they are known
//! cluster-wide, and the store lets the next own consumption of those keys through.

use std::collections::VecDeque;

use parking_lot::Mutex;

use super::Shared;
use crate::store::KeyId;

/// One fan-out round: its number and the own (consumed, requested) counts of its keys.
type Round = (u64, Vec<(KeyId, (u64, u64))>);

#[derive(Debug, Default)]
pub(crate) struct PendingAcks {
    /// Rounds not yet acknowledged by every live member, oldest first.
    pending: Mutex<VecDeque<Round>>,
}

impl PendingAcks {
    /// Round `round` carried these own counts.
    pub fn hold(&self, round: u64, counts: Vec<(KeyId, (u64, u64))>) {
        self.pending.lock().push_back((round, counts));
    }

    pub fn is_idle(&self) -> bool {
        self.pending.lock().is_empty()
    }

    /// Every round up to `acked` is acknowledged by every live member: their counts.
    pub fn settle(&self, acked: u64) -> Vec<(KeyId, (u64, u64))> {
        let mut done = Vec::new();
        let mut pending = self.pending.lock();
        while pending.front().is_some_and(|(r, _)| *r <= acked) {
            if let Some((_, keys)) = pending.pop_front() {
                done.extend(keys);
            }
        }
        done
    }
}

impl Shared {
    /// Apply the acknowledgements of every round all live members have acknowledged.
    pub(super) fn settle_acks(&self) {
        if !self.settings.burst_guard || self.pending_acks.is_idle() {
            return;
        }
        let now = self.monotonic();
        let timeout = self.settings.peer_timeout;
        // A suspected member (frozen, its connection still open) holds nothing back: the
        // cluster is in fair-share mode meanwhile.
        let acked = self
            .member_links()
            .into_iter()
            .filter(|r| !r.suspect)
            .filter_map(|r| r.link)
            .filter(|l| l.alive(now, timeout))
            .map(|l| l.acked_through(self.round()))
            .min()
            .unwrap_or_else(|| self.round());
        let done = self.pending_acks.settle(acked);
        if !done.is_empty() {
            self.store.acknowledge(&done);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_round_settles_only_once_acknowledged_and_in_order() {
        let g = PendingAcks::default();
        g.hold(1, vec![(KeyId(1), (1, 1))]);
        g.hold(2, vec![(KeyId(2), (2, 2))]);
        g.hold(4, vec![(KeyId(4), (4, 4))]);
        assert!(g.settle(0).is_empty());
        assert_eq!(
            g.settle(3),
            vec![(KeyId(1), (1, 1)), (KeyId(2), (2, 2))],
            "rounds 1 and 2, not 4"
        );
        assert!(!g.is_idle());
        assert_eq!(g.settle(4), vec![(KeyId(4), (4, 4))]);
        assert!(g.is_idle());
    }
}
