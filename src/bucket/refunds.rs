//! The refund counters of one key (Envoy's `is_negative_hits`): tokens given back, per replica.
//!
//! Why a G-counter per replica and not a register: two nodes that each give back a token at the
//! same time must together give back two, and a join by `max` of one shared "refunded" value
//! would keep only one. Like `consumed`, each replica only ever raises its own count, so the
//! join is the per-replica `max` and stays commutative, associative and idempotent. The bucket
//! reads `TAT = B + T * (sum(consumed) - sum(refunded)) - F`.
//!
//! Why boxed and absent until the first refund, and not a third count in every `Slot`: a million
//! live keys each hold their slots inline, and most rules never refund. Here a key without
//! refunds pays one pointer-sized word (a `None` box, 8 bytes, pinned by the store's layout
//! test); a key with refunds pays one small allocation, for up to two replicas inline.

use smallvec::SmallVec;

use super::state::ReplicaId;

/// One replica's refunds on a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Refund {
    pub replica: ReplicaId,
    /// Tokens this replica gave back, after clamping (never more than were in use).
    pub refunded: u64,
}

/// Sorted by replica, no zero counts, and `None` rather than an empty list: equal counters
/// compare equal.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Refunds(Option<Box<SmallVec<[Refund; 2]>>>);

impl Refunds {
    fn list(&self) -> &[Refund] {
        self.0.as_deref().map_or(&[], |v| v.as_slice())
    }

    pub fn iter(&self) -> impl Iterator<Item = Refund> + '_ {
        self.list().iter().copied()
    }

    /// Every replica's refunds added up.
    pub fn total(&self) -> i128 {
        // Fewer than 2^63 counts below 2^64: the sum never overflows an i128.
        self.list().iter().map(|r| i128::from(r.refunded)).sum()
    }

    /// Tokens `who` gave back on this key.
    pub fn by(&self, who: ReplicaId) -> u64 {
        self.list()
            .iter()
            .find(|r| r.replica == who)
            .map_or(0, |r| r.refunded)
    }

    /// Raise `who`'s count to `to` if that is higher; returns whether anything changed.
    pub fn raise(&mut self, who: ReplicaId, to: u64) -> bool {
        if to == 0 {
            return false;
        }
        let list = self.0.get_or_insert_with(Box::default);
        match list.binary_search_by_key(&who, |r| r.replica) {
            Ok(i) if list[i].refunded >= to => false,
            Ok(i) => {
                list[i].refunded = to;
                true
            }
            Err(i) => {
                list.insert(
                    i,
                    Refund {
                        replica: who,
                        refunded: to,
                    },
                );
                true
            }
        }
    }

    /// Add `n` to `who`'s count (a local refund).
    pub fn add(&mut self, who: ReplicaId, n: u64) {
        let to = self.by(who).saturating_add(n);
        self.raise(who, to);
    }

    /// Per-replica max. Returns whether `self` changed.
    pub fn join(&mut self, other: &Refunds) -> bool {
        let mut changed = false;
        for r in other.iter() {
            changed |= self.raise(r.replica, r.refunded);
        }
        changed
    }

    /// The lattice order: every replica's count here is at most the other's.
    pub fn le(&self, other: &Refunds) -> bool {
        self.iter().all(|r| r.refunded <= other.by(r.replica))
    }
}
