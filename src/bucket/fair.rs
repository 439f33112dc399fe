//! Fair-share mode (design section 4.4): while a member of the cluster cannot be heard from,
//! each node admits on a local bucket holding only its share `w = 1 / members` of the limit:
//! capacity `w C`, refill `w r`, starting at `w * tokens_view`.
//!
//! Why not keep deciding on the shared bucket: each side of a partition would then spend the
//! whole limit, and after the heal the other side's consumption arrives as debt (minutes of
//! denial for an hourly limit). The shares of all nodes add up to one limit, so the cluster
//! keeps to it while split, and since the local bucket never writes `B` or `F` nothing is owed
//! when the sides merge again.
//!
//! The local bucket is a GCRA in the same scaled time as the shared one, with one token costing
//! `members` token spans and a tolerance of `C` spans: that holds `C / members` tokens, refills
//! at `r / members`, and starting its TAT at the shared bucket's TAT holds exactly
//! `tokens_view / members`. A share below one token is rounded up to one, so a tiny limit still
//! admits something on every node.

use super::state::{BucketState, Limit, Outcome, Wide};

/// The local share of one key while in fair-share mode. Never replicated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FairShare {
    /// Scaled theoretical arrival time of the local bucket (8-byte aligned, like the state's).
    tat: Wide,
}

impl FairShare {
    /// Start the local bucket from the shared view at `now`.
    pub fn start(state: &BucketState, limit: &Limit, now: i64) -> FairShare {
        let t = limit.scaled(now);
        FairShare::of(state.tat(limit).max(t))
    }

    fn of(v: i128) -> FairShare {
        FairShare { tat: Wide::of(v) }
    }

    fn tat(&self) -> i128 {
        self.tat.get()
    }

    fn tolerance(limit: &Limit, members: u32) -> i128 {
        limit.tokens_span((limit.capacity() as u64).max(members as u64))
    }

    fn cost(limit: &Limit, n: u64, members: u32) -> i128 {
        limit.tokens_span(n).saturating_mul(members.max(1) as i128)
    }

    /// Whether `n` tokens fit in this node's share at `now`.
    pub fn check(&self, limit: &Limit, n: u64, now: i64, members: u32) -> bool {
        let t = limit.scaled(now);
        self.tat()
            .max(t)
            .saturating_add(Self::cost(limit, n, members))
            <= t.saturating_add(Self::tolerance(limit, members))
    }

    /// Take `n` tokens from the share (the caller checked they fit).
    pub fn take(&mut self, limit: &Limit, n: u64, now: i64, members: u32) {
        let t = limit.scaled(now);
        *self = FairShare::of(
            self.tat()
                .max(t)
                .saturating_add(Self::cost(limit, n, members)),
        );
    }

    /// True once the share has been full since `now - horizon_ns`. GC keeps a key whose share
    /// is still in use even when the shared view reads full: in fair-share mode the shared
    /// refill floor does not move, so the view falls behind what the share spent.
    pub fn is_idle(&self, limit: &Limit, now: i64, horizon_ns: i64) -> bool {
        self.tat() <= limit.scaled(now.saturating_sub(horizon_ns))
    }

    /// What to answer: remaining tokens of the share and when it is full again.
    pub fn outcome(&self, limit: &Limit, now: i64, members: u32, allowed: bool) -> Outcome {
        let t = limit.scaled(now);
        let m = members.max(1) as i128;
        let room = t
            .saturating_add(Self::tolerance(limit, members))
            .saturating_sub(self.tat().max(t))
            .max(0);
        let remaining = (room / limit.token() / m).clamp(0, u64::MAX as i128) as u64;
        let ahead = self.tat().saturating_sub(t).max(0);
        let reset = limit.unscale_ceil(ahead);
        Outcome {
            allowed,
            remaining,
            reset_ns: reset.clamp(0, u64::MAX as i128) as u64,
            full_at_ns: limit
                .unscale_ceil(self.tat().max(0))
                .clamp(0, i64::MAX as i128) as i64,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bucket::ReplicaId;
    use crate::unit::Unit;

    const SEC: i64 = 1_000_000_000;
    const T0: i64 = 1_700_000_000 * SEC;

    fn limit(c: u32, per_second: u32) -> Limit {
        Limit::new(c, per_second, Unit::Second).expect("valid")
    }

    /// Admit single tokens every `step` from `from` to `to`, returning how many were admitted.
    fn drive(f: &mut FairShare, l: &Limit, members: u32, from: i64, to: i64, step: i64) -> u64 {
        let mut admitted = 0;
        let mut t = from;
        while t < to {
            if f.check(l, 1, t, members) {
                f.take(l, 1, t, members);
                admitted += 1;
            }
            t += step;
        }
        admitted
    }

    #[test]
    fn a_full_bucket_gives_each_of_three_members_a_third_of_the_burst() {
        let l = limit(300, 100);
        let mut f = FairShare::start(&BucketState::new(0), &l, T0);
        assert_eq!(f.outcome(&l, T0, 3, true).remaining, 100);
        // All at once: exactly the share, not one more.
        let got = (0..1000).filter(|_| {
            let ok = f.check(&l, 1, T0, 3);
            if ok {
                f.take(&l, 1, T0, 3);
            }
            ok
        });
        assert_eq!(got.count(), 100);
    }

    #[test]
    fn the_share_refills_at_a_member_fraction_of_the_rate() {
        let l = limit(30, 30);
        let mut f = FairShare::start(&BucketState::new(0), &l, T0);
        // 10 s of demand far above the rate: burst of 10, then 10 per second.
        let got = drive(&mut f, &l, 3, T0, T0 + 10 * SEC, SEC / 1000);
        assert!((105..=111).contains(&got), "admitted {got}");
    }

    #[test]
    fn a_drained_view_starts_the_share_drained() {
        let l = limit(300, 1);
        let mut s = BucketState::new(0);
        for _ in 0..240 {
            s.admit(&l, ReplicaId(0), 1, T0, 300);
        }
        // 60 tokens left in the view: 20 for each of three members.
        let f = FairShare::start(&s, &l, T0);
        assert_eq!(f.outcome(&l, T0, 3, true).remaining, 20);
        assert!(f.check(&l, 20, T0, 3));
        assert!(!f.check(&l, 21, T0, 3));
    }

    #[test]
    fn a_share_smaller_than_one_token_still_admits_one() {
        let l = limit(1, 1);
        let mut f = FairShare::start(&BucketState::new(0), &l, T0);
        assert!(f.check(&l, 1, T0, 3));
        f.take(&l, 1, T0, 3);
        assert!(!f.check(&l, 1, T0 + SEC, 3));
        assert!(f.check(&l, 1, T0 + 3 * SEC, 3));
    }

    #[test]
    fn the_shares_of_all_members_add_up_to_one_limit() {
        // Three nodes, each with its own share, hammered for 20 s: together they admit the
        // view plus r * T, like one bucket would.
        let l = limit(100, 50);
        let start = BucketState::new(0);
        let mut total = 0;
        for _ in 0..3 {
            let mut f = FairShare::start(&start, &l, T0);
            total += drive(&mut f, &l, 3, T0, T0 + 20 * SEC, SEC / 500);
        }
        let ideal = 100 + 50 * 20;
        assert!(total <= ideal + 3, "admitted {total} > {ideal}");
        assert!(total >= ideal - 6, "admitted {total} < {ideal}");
    }
}
