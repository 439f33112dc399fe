//! How the cluster's state constrains one node's decision on a key: which bucket decides, and
//! what holds it back. A pure policy beside the bucket math, for the three modes replication
//! puts a node in:
//!
//! - **shared**: the replicated bucket decides alone (one node, or a cluster without the guard);
//! - **guarded**: the shared bucket, and the burst guard (design section 4.3) on top: this node's
//!   consumption that its peers have not acknowledged stays below its share of the bucket;
//! - **fair share** (design section 4.4, `fair.rs`): while a member cannot be heard from, this
//!   node decides on its own share of every limit and only records its counts in the shared
//!   state.
//!
//! Why a value and not state kept beside the buckets: the mode changes a few times a day, a
//! decision reads it on every request. Read once per request and handed to every step of it,
//! one request is decided under one mode, the store's decision is locking and table access, and
//! every mode can be tested on a plain state without a cluster.
//!
//! What a mode needs to remember per key (the fair shares, the acknowledged counts) is the
//! store's: it lives next to the key, under the same lock, and comes in here as arguments.

use std::time::Duration;

use super::fair::FairShare;
use super::state::{BucketState, Guard, Limit, Outcome, ReplicaId};

/// The burst guard's view of the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BurstGuard {
    members: u32,
    round_trip_ns: u64,
}

impl BurstGuard {
    /// The guard for a cluster of `members` (this node included) whose acknowledgements take
    /// about `round_trip`; `None` for a cluster of one, where nobody over-admits against this
    /// node's unacknowledged consumption.
    pub fn new(members: u32, round_trip: Duration) -> Option<BurstGuard> {
        (members > 1).then(|| BurstGuard {
            members,
            round_trip_ns: round_trip.as_nanos().min(u64::MAX as u128) as u64,
        })
    }

    /// Members of the cluster, this node included.
    pub fn members(&self) -> u32 {
        self.members
    }

    /// The acknowledgement round trip, in nanoseconds.
    pub fn round_trip_ns(&self) -> u64 {
        self.round_trip_ns
    }

    fn with_acked(&self, (acked_consumed, acked_requested): (u64, u64)) -> Guard {
        Guard {
            acked_consumed,
            acked_requested,
            members: self.members,
            round_trip_ns: self.round_trip_ns,
        }
    }
}

/// The cluster's mode as one decision sees it: small and `Copy`, read once per request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// The shared bucket decides alone.
    #[default]
    Shared,
    /// The shared bucket, held back by the burst guard.
    Guarded(BurstGuard),
    /// This node's `1 / members` of every limit decides. `guard` is the burst guard the
    /// cluster runs with otherwise: it does not decide here, but this node's unacknowledged
    /// counts are still recorded, so that the guard finds them when the mode ends.
    FairShare {
        members: u32,
        guard: Option<BurstGuard>,
    },
}

/// What one key is asked for: `hits` tokens of `limit`, for replica `me`, at `now`.
#[derive(Debug, Clone, Copy)]
pub struct Ask {
    pub limit: Limit,
    pub me: ReplicaId,
    pub hits: u64,
    pub now: i64,
}

impl Mode {
    /// Fair share with `fair_share` members when it is `Some` (and not 0), else guarded when
    /// there is a guard, else shared.
    pub fn new(fair_share: Option<u32>, guard: Option<BurstGuard>) -> Mode {
        match (fair_share.filter(|&m| m > 0), guard) {
            (Some(members), guard) => Mode::FairShare { members, guard },
            (None, Some(g)) => Mode::Guarded(g),
            (None, None) => Mode::Shared,
        }
    }

    /// Members sharing every limit, in fair-share mode.
    pub fn fair_share(&self) -> Option<u32> {
        match *self {
            Mode::FairShare { members, .. } => Some(members),
            _ => None,
        }
    }

    /// The burst guard whose acknowledgements are tracked (in fair-share mode too).
    pub fn guard(&self) -> Option<BurstGuard> {
        match *self {
            Mode::Shared => None,
            Mode::Guarded(g) => Some(g),
            Mode::FairShare { guard, .. } => guard,
        }
    }

    /// Whether the ask fits `state` under this mode. `share` is the key's fair share if one was
    /// started (fair-share mode starts one from the state otherwise); `acked` is this node's
    /// own (consumed, requested) as of the last changes every peer acknowledged, `None` when
    /// nothing is waiting for an acknowledgement.
    ///
    /// Inline (as [`charge`](Self::charge)): the store calls it for every charge, and in the
    /// shared mode it is one branch in front of the bucket's own check.
    #[inline]
    pub fn fits(
        &self,
        ask: &Ask,
        state: &BucketState,
        share: Option<FairShare>,
        acked: Option<(u64, u64)>,
    ) -> bool {
        let Ask {
            limit,
            me,
            hits,
            now,
        } = *ask;
        match *self {
            Mode::Shared => state.check(&limit, hits, now),
            Mode::Guarded(g) => {
                if !state.check(&limit, hits, now) {
                    return false;
                }
                let acked =
                    acked.unwrap_or_else(|| (state.consumed_by(me), state.requested_by(me)));
                state.guard_allows(&limit, me, hits, now, &g.with_acked(acked))
            }
            Mode::FairShare { members, .. } => {
                Self::share_of(share, state, &limit, now).check(&limit, hits, now, members)
            }
        }
    }

    /// Charge the ask on a key: the hits are taken when `permit` (the request is admitted and
    /// they fit), else only the demand is recorded. In fair-share mode `share` is taken from
    /// (started from the state if it was not yet) and the shared state only counts; otherwise
    /// the shared bucket is charged, its debt capped at `debt_cap` tokens. Returns what to
    /// answer.
    #[inline]
    pub fn charge(
        &self,
        ask: &Ask,
        state: &mut BucketState,
        share: &mut Option<FairShare>,
        debt_cap: u64,
        permit: bool,
    ) -> Outcome {
        let Ask {
            limit,
            me,
            hits,
            now,
        } = *ask;
        let Mode::FairShare { members, .. } = *self else {
            return state.charge(&limit, me, hits, now, debt_cap, permit);
        };
        let s = share.get_or_insert_with(|| FairShare::start(state, &limit, now));
        if permit {
            s.take(&limit, hits, now, members);
        }
        // Record the counts, never `B` or `F`: the share decided, not the shared view.
        state.record(me, hits, permit);
        s.outcome(&limit, now, members, permit)
    }

    /// A key this node creates under this mode. In fair-share mode its counts need a floor to
    /// stand on, or the key reads as long full and GC (and every peer) drops it with what was
    /// admitted on it; a charge on the shared bucket lays that floor itself.
    pub fn created(&self, state: &mut BucketState, limit: &Limit, now: i64) {
        if let Mode::FairShare { .. } = self {
            state.open_at(limit, now);
        }
    }

    /// Read the key without charging it (0 hits): the share in fair-share mode, the shared
    /// bucket otherwise. `allowed` is what the decision found.
    pub fn read(
        &self,
        state: &BucketState,
        share: Option<FairShare>,
        limit: &Limit,
        now: i64,
        allowed: bool,
    ) -> Outcome {
        match *self {
            Mode::FairShare { members, .. } => {
                Self::share_of(share, state, limit, now).outcome(limit, now, members, allowed)
            }
            _ => Outcome {
                allowed,
                ..state.peek(limit, now)
            },
        }
    }

    /// Charge usage reported after the fact: always taken, into debt if it must be (at most
    /// `debt_cap` tokens of it on the shared bucket). The burst guard does not hold usage
    /// back: it already happened. `allowed` in the outcome says whether the tokens were there.
    pub fn charge_usage(
        &self,
        ask: &Ask,
        state: &mut BucketState,
        share: &mut Option<FairShare>,
        debt_cap: u64,
    ) -> Outcome {
        let Ask {
            limit,
            me,
            hits,
            now,
        } = *ask;
        let Mode::FairShare { members, .. } = *self else {
            return state.charge_into_debt(&limit, me, hits, now, debt_cap);
        };
        let s = share.get_or_insert_with(|| FairShare::start(state, &limit, now));
        let fits = s.check(&limit, hits, now, members);
        s.take(&limit, hits, now, members);
        state.record(me, hits, true);
        s.outcome(&limit, now, members, fits)
    }

    /// A 0-hit query on a budget charged after the fact: allowed while one whole token is left
    /// (of the share, in fair-share mode).
    pub fn precheck(
        &self,
        state: &BucketState,
        share: Option<FairShare>,
        limit: &Limit,
        now: i64,
    ) -> Outcome {
        match *self {
            Mode::FairShare { members, .. } => {
                let s = Self::share_of(share, state, limit, now);
                let ok = s.check(limit, 1, now, members);
                s.outcome(limit, now, members, ok)
            }
            _ => state.precheck(limit, now),
        }
    }

    fn share_of(
        share: Option<FairShare>,
        state: &BucketState,
        limit: &Limit,
        now: i64,
    ) -> FairShare {
        share.unwrap_or_else(|| FairShare::start(state, limit, now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::unit::Unit;

    const SEC: i64 = 1_000_000_000;
    const T0: i64 = 1_700_000_000 * SEC;
    const ME: ReplicaId = ReplicaId(0);

    fn per_hour(n: u32) -> Limit {
        Limit::over(n, n, Unit::Hour, 1).expect("valid")
    }

    fn ask(limit: Limit, hits: u64) -> Ask {
        Ask {
            limit,
            me: ME,
            hits,
            now: T0,
        }
    }

    fn guard(members: u32) -> Option<BurstGuard> {
        BurstGuard::new(members, Duration::from_millis(60))
    }

    #[test]
    fn a_cluster_of_one_has_no_burst_guard() {
        assert_eq!(guard(1), None);
        assert_eq!(Mode::new(None, guard(1)), Mode::Shared);
        assert_eq!(guard(3).map(|g| g.members()), Some(3));
    }

    #[test]
    fn fair_share_decides_but_keeps_the_guard_for_when_it_ends() {
        let m = Mode::new(Some(3), guard(3));
        assert_eq!(m.fair_share(), Some(3));
        assert_eq!(m.guard(), guard(3));
        assert_eq!(Mode::new(Some(0), None), Mode::Shared, "0 members is off");
        assert_eq!(
            Mode::new(None, guard(3)),
            Mode::Guarded(guard(3).expect("3"))
        );
    }

    #[test]
    fn the_guard_holds_back_unacknowledged_spending_the_shared_bucket_would_admit() {
        let l = per_hour(300);
        let mut s = BucketState::new(0);
        s.admit(&l, ME, 100, T0, 300);
        // Nothing of the 100 is acknowledged: a third of what is left is already in flight.
        let acked = Some((0, 0));
        let a = ask(l, 50);
        assert!(Mode::Shared.fits(&a, &s, None, acked));
        assert!(!Mode::new(None, guard(3)).fits(&a, &s, None, acked));
        // Once acknowledged, the guard lets it through.
        assert!(Mode::new(None, guard(3)).fits(&a, &s, None, None));
    }

    #[test]
    fn in_fair_share_mode_the_share_decides_whatever_the_shared_bucket_holds() {
        let l = per_hour(300);
        let s = BucketState::new(0);
        let fair = Mode::new(Some(3), None);
        // A full bucket: a third of it for this node.
        assert!(fair.fits(&ask(l, 100), &s, None, None));
        assert!(!fair.fits(&ask(l, 101), &s, None, None));
        assert!(Mode::Shared.fits(&ask(l, 101), &s, None, None));
        // A share already spent refuses, though the shared view is full.
        let mut share = None;
        let mut spent = s.clone();
        fair.charge(&ask(l, 100), &mut spent, &mut share, 300, true);
        assert!(!fair.fits(&ask(l, 1), &s, share, None));
    }

    #[test]
    fn a_fair_share_charge_records_the_counts_and_never_moves_the_floor() {
        let l = per_hour(300);
        let mut s = BucketState::new(0);
        let mut share = None;
        let fair = Mode::new(Some(3), None);
        let o = fair.charge(&ask(l, 30), &mut s, &mut share, 300, true);
        assert!(o.allowed);
        assert_eq!(o.remaining, 70, "of the share of 100");
        assert_eq!((s.base(), s.forgiven()), (0, 0));
        assert_eq!((s.consumed_by(ME), s.requested_by(ME)), (30, 30));
        // Refused by the request: only the demand is counted.
        fair.charge(&ask(l, 5), &mut s, &mut share, 300, false);
        assert_eq!((s.consumed_by(ME), s.requested_by(ME)), (30, 35));
    }

    #[test]
    fn a_key_created_in_fair_share_mode_gets_a_floor_and_in_shared_mode_none() {
        let l = per_hour(300);
        let mut fresh = BucketState::new(0);
        Mode::Shared.created(&mut fresh, &l, T0);
        assert_eq!(fresh.base(), 0, "a shared charge lays its own floor");
        Mode::new(Some(2), None).created(&mut fresh, &l, T0);
        assert!(fresh.base() > 0);
    }

    #[test]
    fn usage_goes_past_the_share_into_debt_and_reports_it_did_not_fit() {
        let l = per_hour(300);
        let mut s = BucketState::new(0);
        let mut share = None;
        let fair = Mode::new(Some(3), None);
        assert!(
            fair.charge_usage(&ask(l, 80), &mut s, &mut share, 300)
                .allowed
        );
        assert!(
            !fair
                .charge_usage(&ask(l, 80), &mut s, &mut share, 300)
                .allowed
        );
        assert_eq!(s.consumed_by(ME), 160, "charged either way");
        assert!(!fair.precheck(&s, share, &l, T0).allowed);
        assert!(
            Mode::Shared.precheck(&s, None, &l, T0).allowed,
            "the view has room"
        );
    }
}
