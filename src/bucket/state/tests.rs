use proptest::prelude::*;

use super::*;

const T0: i64 = 1_700_000_000_000_000_000;
const ME: ReplicaId = ReplicaId(0);
const SEC: i64 = 1_000_000_000;

fn limit(c: u32, r: u32, unit: Unit) -> Limit {
    Limit::new(c, r, unit).expect("valid limit")
}

/// A plain token-counting bucket, written independently of GCRA: tokens are kept scaled by
/// `unit_ns` so refill is exact (`R` scaled tokens per nanosecond).
struct ReferenceBucket {
    capacity: i128,
    per_unit: i128,
    unit_ns: i128,
    tokens_scaled: i128,
    last: i128,
}

impl ReferenceBucket {
    fn new(l: &Limit, start: i64) -> Self {
        ReferenceBucket {
            capacity: l.capacity() as i128,
            per_unit: l.per_unit() as i128,
            unit_ns: l.unit_ns() as i128,
            tokens_scaled: l.capacity() as i128 * l.unit_ns() as i128,
            last: start as i128,
        }
    }

    fn refill(&mut self, now: i64) {
        let now = now as i128;
        if now > self.last {
            let full = self.capacity * self.unit_ns;
            self.tokens_scaled = (self.tokens_scaled + (now - self.last) * self.per_unit).min(full);
            self.last = now;
        }
    }

    /// (allowed, remaining, reset_ns)
    fn take(&mut self, n: u64, now: i64) -> (bool, u64, u64) {
        self.refill(now);
        let cost = n as i128 * self.unit_ns;
        let allowed = self.tokens_scaled >= cost;
        if allowed {
            self.tokens_scaled -= cost;
        }
        let remaining = (self.tokens_scaled / self.unit_ns) as u64;
        let missing = self.capacity * self.unit_ns - self.tokens_scaled;
        let reset = (missing + self.per_unit - 1) / self.per_unit;
        // A period of up to 100 years a token can make "full again" later than u64 nanoseconds
        // reach (about 584 years): the bucket then says u64::MAX, and so does the model.
        (allowed, remaining, reset.clamp(0, u64::MAX as i128) as u64)
    }
}

#[test]
fn ten_per_second_admits_a_burst_of_ten_then_refills_continuously() {
    let l = limit(10, 10, Unit::Second);
    let mut s = BucketState::new(0);
    for i in 0..10 {
        let o = s.admit(&l, ME, 1, T0, 0);
        assert!(o.allowed, "request {i} of the burst");
        assert_eq!(o.remaining, 9 - i);
    }
    assert!(!s.admit(&l, ME, 1, T0, 0).allowed);
    // After 0.35 s, 3.5 tokens have come back: 3 whole ones.
    let later = T0 + 350_000_000;
    assert_eq!(s.tokens(&l, later), 3);
    assert_eq!(s.time_until_full(&l, later), 650_000_000);
    for _ in 0..3 {
        assert!(s.admit(&l, ME, 1, later, 0).allowed);
    }
    assert!(!s.admit(&l, ME, 1, later, 0).allowed);
}

#[test]
fn reset_is_the_time_until_the_bucket_is_full() {
    let l = limit(60, 60, Unit::Minute);
    let mut s = BucketState::new(0);
    let o = s.admit(&l, ME, 6, T0, 0);
    assert_eq!(o.reset_ns, 6 * SEC as u64);
    assert_eq!(o.full_at_ns, T0 + 6 * SEC);
    assert_eq!(s.time_until_full(&l, T0 + 6 * SEC), 0);
}

#[test]
fn a_request_larger_than_the_capacity_is_never_admitted() {
    let l = limit(5, 5, Unit::Second);
    let mut s = BucketState::new(0);
    assert!(!s.admit(&l, ME, 6, T0, 0).allowed);
    assert_eq!(s.tokens(&l, T0), 5, "a refused request charges nothing");
}

#[test]
fn burst_capacity_is_independent_of_the_refill_rate() {
    // 1 token per second, but up to 20 at once.
    let l = limit(20, 1, Unit::Second);
    let mut s = BucketState::new(0);
    assert!(s.admit(&l, ME, 20, T0, 0).allowed);
    assert!(!s.admit(&l, ME, 1, T0, 0).allowed);
    assert!(s.admit(&l, ME, 1, T0 + SEC, 0).allowed);
}

#[test]
fn a_query_reads_without_consuming() {
    let l = limit(3, 3, Unit::Hour);
    let mut s = BucketState::new(0);
    s.admit(&l, ME, 3, T0, 0);
    let before = s.clone();
    let o = s.peek(&l, T0);
    assert!(
        o.allowed,
        "an exhausted bucket is at its limit, not over it"
    );
    assert_eq!(o.remaining, 0);
    assert_eq!(s, before);
}

#[test]
fn forced_refusal_records_demand_but_consumes_nothing() {
    let l = limit(3, 3, Unit::Second);
    let mut s = BucketState::new(0);
    let o = s.charge(&l, ME, 2, T0, 0, false);
    assert!(!o.allowed);
    assert_eq!(s.tokens(&l, T0), 3);
    assert_eq!(s.slots()[0].requested, 2);
    assert_eq!(s.slots()[0].consumed, 0);
}

#[test]
fn late_remote_consumption_becomes_debt_that_is_repaid_at_the_refill_rate() {
    let l = limit(10, 10, Unit::Second);
    let mut a = BucketState::new(0);
    let mut b = BucketState::new(0);
    // Both replicas drain the full bucket concurrently.
    assert!(a.admit(&l, ReplicaId(1), 10, T0, 100).allowed);
    assert!(b.admit(&l, ReplicaId(2), 10, T0, 100).allowed);
    a.join(&b);
    assert_eq!(
        a.tokens(&l, T0),
        -10,
        "20 admitted against a capacity of 10"
    );
    // 1 s later the debt is repaid, but the bucket is still empty.
    assert_eq!(a.tokens(&l, T0 + SEC), 0);
    assert!(!a.admit(&l, ReplicaId(1), 1, T0 + SEC, 100).allowed);
    assert_eq!(a.tokens(&l, T0 + 2 * SEC), 10);
}

#[test]
fn debt_beyond_the_forgiveness_cap_is_forgiven() {
    let l = limit(10, 10, Unit::Second);
    let mut a = BucketState::new(0);
    let b = BucketState::from_parts(
        0,
        0,
        0,
        [Slot {
            replica: ReplicaId(2),
            consumed: 1_000,
            requested: 1_000,
        }],
    );
    a.admit(&l, ReplicaId(1), 0, T0, 5);
    a.join(&b);
    assert!(a.tokens(&l, T0) < -900);
    // The next admit caps the debt at K = 5 tokens.
    assert!(!a.admit(&l, ReplicaId(1), 1, T0, 5).allowed);
    assert_eq!(a.tokens(&l, T0), -5);
}

#[test]
fn higher_generation_replaces_stale_state() {
    let l = limit(10, 10, Unit::Second);
    let mut old = BucketState::new(1);
    old.admit(&l, ME, 10, T0, 0);
    let fresh = BucketState::new(2);
    let mut merged = old.clone();
    assert!(merged.join(&fresh));
    assert_eq!(merged, fresh);
    let mut other_way = fresh.clone();
    assert!(!other_way.join(&old));
    assert_eq!(other_way, fresh);
}

#[test]
fn no_overflow_at_the_extremes() {
    let l = limit(u32::MAX, 1_000_000_000, Unit::Year);
    let near_max = (1u64 << 63) - 1;
    let mut s = BucketState::from_parts(
        u32::MAX,
        i128::MAX / 2,
        0,
        (0..4).map(|i| Slot {
            replica: ReplicaId(i),
            consumed: near_max,
            requested: u64::MAX,
        }),
    );
    for t in [i64::MIN, -1, 0, T0, i64::MAX] {
        let o = s.admit(&l, ME, u64::MAX, t, u64::MAX);
        assert!(!o.allowed);
        let _ = s.peek(&l, t);
        let _ = s.tokens(&l, t);
        let _ = s.is_idle(&l, t, i64::MAX);
        let _ = s.full_at_ns(&l);
    }
    let mut hostile = BucketState::from_parts(0, i128::MIN, i128::MAX, []);
    let _ = hostile.admit(&l, ME, 1, T0, u64::MAX);
    hostile.join(&s);
}

#[test]
fn a_period_of_several_units_refills_over_the_whole_period() {
    let five_minutes = Limit::over(1000, 1000, Unit::Minute, 5).expect("valid");
    assert_eq!(five_minutes.unit_ns(), 300 * SEC as u64);
    let mut s = BucketState::new(0);
    assert!(s.admit(&five_minutes, ME, 1000, T0, 0).allowed);
    assert_eq!(s.peek(&five_minutes, T0).reset_ns, 300 * SEC as u64);
    // A fifth of the period, a fifth of the tokens.
    assert_eq!(s.tokens(&five_minutes, T0 + 60 * SEC), 200);
    assert_eq!(s.tokens(&five_minutes, T0 + 300 * SEC), 1000);
}

#[test]
fn a_limit_stays_twelve_bytes_and_refuses_a_zero_or_too_long_period() {
    assert_eq!(std::mem::size_of::<Limit>(), 12);
    assert_eq!(Limit::over(1, 1, Unit::Minute, 0), None);
    assert!(Limit::over(1, 1, Unit::Year, 100).is_some());
    assert_eq!(Limit::over(1, 1, Unit::Year, 101), None);
    assert_eq!(Limit::over(1, 1, Unit::Year, u16::MAX), None);
    assert_eq!(
        Limit::new(5, 5, Unit::Hour).map(|l| l.multiplier()),
        Some(1)
    );
}

#[test]
fn year_limit_with_a_billion_per_unit_is_exact() {
    let l = limit(1_000_000_000, 1_000_000_000, Unit::Year);
    let mut s = BucketState::new(0);
    assert!(s.admit(&l, ME, 1_000_000_000, T0, 0).allowed);
    // One token comes back every year / 1e9 = 31.536 ms.
    let token_ns = Unit::Year.nanos() as i64 / 1_000_000_000;
    assert_eq!(s.tokens(&l, T0 + token_ns - 1), 0);
    assert_eq!(s.tokens(&l, T0 + token_ns), 1);
}

#[test]
fn idle_only_after_being_full_for_the_horizon() {
    let l = limit(10, 10, Unit::Second);
    let mut s = BucketState::new(0);
    s.admit(&l, ME, 10, T0, 0);
    let full_at = T0 + SEC;
    assert!(!s.is_idle(&l, full_at + 60 * SEC - 1, 60 * SEC));
    assert!(s.is_idle(&l, full_at + 60 * SEC, 60 * SEC));
}

// ---- restart without bootstrap (design section 2, "Restart and join") -----------------------

/// The cluster's state of a key drained every second for 20 s, at 10 per second with a burst
/// of 10, by two replicas taking turns: created (and its refill floor `B` set) at `start`, it
/// holds 210 tokens of counts and is full again at `start + 21 s`.
fn busy_for_twenty_seconds(l: &Limit, start: i64) -> BucketState {
    let mut s = BucketState::new(crate::bucket::generation_at(start));
    for i in 0..=20u32 {
        let who = ReplicaId(1 + i % 2);
        let o = s.admit(l, who, 10, start + i as i64 * SEC, 10);
        assert!(o.allowed, "drain at second {i}");
    }
    assert_eq!(s.full_at_ns(l), start + 21 * SEC);
    s
}

/// A generation begins at this wall time: everything below happens within its 30 s.
fn generation_start() -> i64 {
    (T0 / crate::bucket::GEN_PERIOD_NS + 1) * crate::bucket::GEN_PERIOD_NS
}

#[test]
fn rebasing_an_empty_view_then_merging_the_old_counts_locks_the_key_out_for_their_sum() {
    let l = limit(10, 10, Unit::Second);
    let start = generation_start();
    let old = busy_for_twenty_seconds(&l, start);
    // Half a second after the last drain a restarted node that skipped the bootstrap admits
    // on an empty view, in the key's own generation. No forgiveness cap: this is the raw effect.
    let t1 = start + 20 * SEC + SEC / 2;
    assert_eq!(crate::bucket::generation_at(t1), old.gen());
    assert_eq!(old.tokens(&l, t1), 5, "what the cluster has left");
    let fresh = ReplicaId(3);
    let no_cap = u64::MAX / 4;
    let mut empty = BucketState::new(crate::bucket::generation_at(t1));
    let o = empty.admit(&l, fresh, 1, t1, no_cap);
    assert!(o.allowed);
    assert_eq!(o.remaining, 9, "an empty view sees a full bucket");
    assert_eq!(empty.base(), l.scaled(t1), "and rebases B to now");

    let newcomer = empty.clone();

    // Then the cluster's counts arrive: with B at t1 all 210 old tokens count as taken at t1.
    assert!(empty.join(&old));
    assert_eq!(empty.base(), l.scaled(t1), "B is a max: the rebase stays");
    assert_eq!(empty.tokens(&l, t1), 10 - 211, "far below zero");
    assert_eq!(
        empty.time_until_full(&l, t1),
        21_100_000_000,
        "(210 + 1) / r"
    );
    // Denied until TAT + 1 token <= t + C tokens: (211 + 1 - 10) / r = 20.2 s, about
    // sum(old) / r, although the true bucket is full again 0.6 s after t1.
    let lockout = 20_200_000_000;
    assert!(!empty.check(&l, 1, t1 + SEC));
    assert!(!empty.check(&l, 1, t1 + lockout - 1));
    assert!(empty.check(&l, 1, t1 + lockout));
    assert!(!empty.admit(&l, fresh, 1, t1 + 10 * SEC, no_cap).allowed);

    // Every other replica gets the same lockout once it merges the newcomer's state.
    let mut elsewhere = old.clone();
    assert!(elsewhere.join(&newcomer));
    assert_eq!(elsewhere.tokens(&l, t1), 10 - 211);
    assert!(!elsewhere.check(&l, 1, t1 + lockout - 1));
}

#[test]
fn merging_the_old_counts_before_the_first_admit_sees_exactly_the_remaining_tokens() {
    let l = limit(10, 10, Unit::Second);
    let start = generation_start();
    let old = busy_for_twenty_seconds(&l, start);
    let t1 = start + 20 * SEC + SEC / 2;
    let fresh = ReplicaId(3);
    // Bootstrapped: the snapshot is merged first, then the node admits.
    let mut boot = BucketState::default();
    boot.join(&old);
    assert_eq!(boot.tokens(&l, t1), 5, "exactly what the cluster has left");
    let o = boot.admit(&l, fresh, 1, t1, u64::MAX / 4);
    assert!(o.allowed);
    assert_eq!(o.remaining, 4);
    assert_eq!(boot.base(), old.base(), "not full: nothing rebased");
    assert_eq!(boot.time_until_full(&l, t1), 600_000_000);
    // No lockout: the next token is there after one token's time.
    assert!(boot.check(&l, 4, t1));
    assert!(!boot.check(&l, 5, t1));
    assert!(boot.check(&l, 10, t1 + 600_000_000));
    // Merging the old state again (it keeps arriving from other peers) changes nothing.
    assert!(!boot.join(&old));
}

#[test]
fn the_debt_cap_shortens_a_lockout_from_an_unbootstrapped_restart_to_k_tokens() {
    let l = limit(10, 10, Unit::Second);
    let start = generation_start();
    let old = busy_for_twenty_seconds(&l, start);
    let t1 = start + 20 * SEC + SEC / 2;
    let fresh = ReplicaId(3);
    let k = 10; // the store's K: one capacity per other node
    let mut empty = BucketState::new(crate::bucket::generation_at(t1));
    empty.admit(&l, fresh, 1, t1, k);
    empty.join(&old);
    // The first request after the merge forgives all debt beyond K tokens: TAT = t1 + (C + K)/r,
    // so the key is back (K + 1) / r = 1.1 s later instead of 20.2 s.
    assert!(!empty.admit(&l, fresh, 1, t1, k).allowed);
    assert_eq!(empty.time_until_full(&l, t1), 2 * SEC as u64);
    assert!(!empty.check(&l, 1, t1 + 1_100_000_000 - 1));
    assert!(empty.admit(&l, fresh, 1, t1 + 1_100_000_000, k).allowed);
}

#[test]
fn an_empty_view_in_a_later_generation_replaces_the_old_counts_instead_of_adding_them() {
    // The same missing bootstrap 35 s after the key was created (a later generation): the
    // fresh key's gen wins wholesale, so instead of a lockout the cluster forgets what it
    // consumed and reads a full bucket. Bootstrapping (merge first) prevents both.
    let l = limit(10, 10, Unit::Second);
    let start = generation_start();
    let mut old = BucketState::new(crate::bucket::generation_at(start));
    for i in 0..=35u32 {
        assert!(
            old.admit(&l, ReplicaId(1 + i % 2), 10, start + i as i64 * SEC, 10)
                .allowed
        );
    }
    let t2 = start + 35 * SEC;
    assert_eq!(old.tokens(&l, t2), 0, "the cluster just drained it");
    assert!(crate::bucket::generation_at(t2) > old.gen());
    let fresh = ReplicaId(3);
    let mut empty = BucketState::new(crate::bucket::generation_at(t2));
    assert!(empty.admit(&l, fresh, 1, t2, 10).allowed);
    let mut elsewhere = old.clone();
    assert!(elsewhere.join(&empty));
    assert_eq!(elsewhere, empty, "the old counts are gone on every replica");
    assert_eq!(elsewhere.tokens(&l, t2), 9);
    assert!(!empty.join(&old));
    // Bootstrapped, the same request is refused: the bucket is empty.
    let mut boot = BucketState::default();
    boot.join(&old);
    assert!(!boot.admit(&l, fresh, 1, t2, 10).allowed);
}

// ---- properties ----------------------------------------------------------------------------

fn arb_slot() -> impl Strategy<Value = Slot> {
    (0u32..4, 0u64..2_000, 0u64..4_000).prop_map(|(r, c, q)| Slot {
        replica: ReplicaId(r),
        consumed: c,
        requested: q.max(c),
    })
}

fn arb_refund() -> impl Strategy<Value = Refund> {
    (0u32..4, 0u64..1_500).prop_map(|(r, n)| Refund {
        replica: ReplicaId(r),
        refunded: n,
    })
}

fn arb_state() -> impl Strategy<Value = BucketState> {
    // Bases around T0 scaled by R = 100: for smaller R the bucket is in debt, for larger R full.
    // Refund counters on some states, so every law below covers them too.
    (
        0u32..3,
        0i128..10_000_000_000_000,
        0i128..1_000_000_000_000,
        prop::collection::vec(arb_slot(), 0..5),
        prop::collection::vec(arb_refund(), 0..3),
    )
        .prop_map(|(g, b, f, slots, refunds)| {
            BucketState::from_parts(g, T0 as i128 * 100 + b, f, slots).with_refunds(refunds)
        })
}

fn arb_limit() -> impl Strategy<Value = Limit> {
    (
        1u32..200,
        1u32..200,
        prop::sample::select(Unit::ALL.to_vec()),
        prop::sample::select(vec![1u16, 1, 1, 5, 100]),
    )
        .prop_map(|(c, r, u, m)| Limit::over(c, r, u, m).expect("valid"))
}

/// Time steps: mostly small, some equal timestamps, some huge gaps.
fn arb_step() -> impl Strategy<Value = i64> {
    prop_oneof![
        3 => Just(0i64),
        6 => 0i64..2 * SEC,
        1 => 0i64..(400 * 86_400 * SEC),
    ]
}

proptest! {
    #[test]
    fn join_is_commutative(a in arb_state(), b in arb_state()) {
        let mut ab = a.clone();
        ab.join(&b);
        let mut ba = b.clone();
        ba.join(&a);
        prop_assert_eq!(ab, ba);
    }

    #[test]
    fn join_is_associative(a in arb_state(), b in arb_state(), c in arb_state()) {
        let mut left = a.clone();
        left.join(&b);
        left.join(&c);
        let mut bc = b.clone();
        bc.join(&c);
        let mut right = a.clone();
        right.join(&bc);
        prop_assert_eq!(left, right);
    }

    #[test]
    fn join_is_idempotent(a in arb_state()) {
        let mut aa = a.clone();
        prop_assert!(!aa.join(&a));
        prop_assert_eq!(aa, a);
    }

    #[test]
    fn bottom_is_the_identity(a in arb_state()) {
        let mut x = a.clone();
        x.join(&BucketState::default());
        prop_assert_eq!(&x, &a);
        let mut y = BucketState::default();
        y.join(&a);
        prop_assert_eq!(y, a);
    }

    #[test]
    fn join_result_is_an_upper_bound(a in arb_state(), b in arb_state()) {
        let mut j = a.clone();
        j.join(&b);
        prop_assert!(a.le(&j));
        prop_assert!(b.le(&j));
    }

    #[test]
    fn every_mutator_inflates(
        s in arb_state(),
        l in arb_limit(),
        who in 0u32..4,
        n in 0u64..300,
        dt in arb_step(),
        k in 0u64..100,
        permit in any::<bool>(),
    ) {
        let mut after = s.clone();
        after.charge(&l, ReplicaId(who), n, T0 + dt, k, permit);
        prop_assert!(s.le(&after), "{:?} -> {:?}", s, after);
    }

    #[test]
    fn more_knowledge_never_admits_more(
        s in arb_state(),
        extra in prop::collection::vec(arb_slot(), 0..4),
        extra_base in 0i128..1_000_000,
        l in arb_limit(),
        n in 0u64..300,
        dt in 0i64..10 * SEC,
    ) {
        // s' >= s with the same gen and F.
        let bigger = BucketState::from_parts(s.gen(), s.base() + extra_base, s.forgiven(), s.slots().iter().copied().chain(extra))
            .with_refunds(s.refunds());
        let mut more = s.clone();
        more.join(&bigger);
        prop_assert!(s.le(&more));
        let t = T0 + dt;
        prop_assert!(more.tokens(&l, t) <= s.tokens(&l, t));
        if more.check(&l, n, t) {
            prop_assert!(s.check(&l, n, t));
        }
    }

    #[test]
    fn one_node_behaves_as_a_reference_token_bucket(
        l in arb_limit(),
        ops in prop::collection::vec((arb_step(), 0u64..250), 1..200),
    ) {
        let mut s = BucketState::new(1);
        let mut reference = ReferenceBucket::new(&l, T0);
        let mut t = T0;
        for (dt, n) in ops {
            t += dt;
            let o = s.admit(&l, ME, n, t, l.capacity() as u64);
            let (allowed, remaining, reset) = reference.take(n, t);
            prop_assert_eq!(o.allowed, allowed, "decision at t+{} for n={}", t - T0, n);
            prop_assert_eq!(o.remaining, remaining, "remaining at t+{}", t - T0);
            prop_assert_eq!(o.reset_ns, reset, "reset at t+{}", t - T0);
            prop_assert_eq!(s.forgiven(), 0, "one node never goes into debt");
        }
    }

    #[test]
    fn check_agrees_with_admit(s in arb_state(), l in arb_limit(), n in 0u64..300, dt in arb_step()) {
        let would = s.check(&l, n, T0 + dt);
        let mut x = s.clone();
        // Debt cap large enough that forgiveness cannot change the answer.
        let did = x.admit(&l, ME, n, T0 + dt, u64::MAX / 4).allowed;
        prop_assert_eq!(would, did);
    }

    #[test]
    fn an_idle_state_reads_as_a_full_bucket(s in arb_state(), l in arb_limit(), dt in arb_step()) {
        let t = T0 + dt;
        if s.is_idle(&l, t, 0) {
            prop_assert_eq!(s.tokens(&l, t), l.capacity() as i128);
            prop_assert_eq!(s.time_until_full(&l, t), 0);
        }
    }
}

#[test]
fn a_key_opened_and_recorded_in_fair_share_mode_keeps_its_admissions() {
    let l = limit(10, 10, Unit::Hour);
    // Without a floor, counts alone read as a bucket full since 1970: GC would delete the key.
    let mut bare = BucketState::new(0);
    bare.record(ME, 5, true);
    assert!(bare.is_idle(&l, T0, 0));
    let mut opened = BucketState::new(0);
    opened.open_at(&l, T0);
    opened.record(ME, 5, true);
    assert!(!opened.is_idle(&l, T0, 0));
    assert_eq!(opened.tokens(&l, T0), 5);
}

#[test]
fn opening_a_key_that_has_a_floor_changes_nothing() {
    let l = limit(10, 10, Unit::Hour);
    let mut s = BucketState::new(0);
    s.admit(&l, ME, 3, T0, 10);
    let before = s.clone();
    s.open_at(&l, T0 + 3600 * SEC);
    assert_eq!(s, before);
}

// ---- charging after the fact: debt, pre-checks, refunds (src/bucket/usage.rs) -------------

/// The issue's budget: 1,000 tokens per minute, each call using 300 reported after the fact.
#[test]
fn four_calls_start_on_a_thousand_token_budget_and_the_fifth_is_refused() {
    let l = limit(1_000, 1_000, Unit::Minute);
    let cap = l.capacity() as u64;
    let mut s = BucketState::new(0);
    let mut started = 0;
    for call in 0..5 {
        if !s.precheck(&l, T0).allowed {
            break;
        }
        started += 1;
        let o = s.charge_into_debt(&l, ME, 300, T0, cap);
        assert_eq!(o.allowed, call < 3, "call {call}: 300 fit in what was left");
    }
    assert_eq!(started, 4, "the fourth starts with 100 left");
    assert_eq!(s.tokens(&l, T0), -200, "and leaves the bucket 200 in debt");
    // The debt and then one whole token come back at 1,000 per minute: 201 tokens, 12.06 s.
    assert!(!s.precheck(&l, T0 + 12_059_999_999).allowed);
    assert!(s.precheck(&l, T0 + 12_060_000_000).allowed);
}

#[test]
fn a_charge_beyond_the_debt_cap_forgives_the_rest_and_reads_exactly_the_cap() {
    let l = limit(10, 10, Unit::Second);
    let mut s = BucketState::new(0);
    let o = s.charge_into_debt(&l, ME, 50, T0, 10);
    assert!(!o.allowed, "50 did not fit in 10");
    assert_eq!(o.remaining, 0);
    assert_eq!(s.tokens(&l, T0), -10, "debt stops at one capacity");
    assert_eq!(s.consumed_by(ME), 50, "the counts keep the whole report");
    // From -10, one whole token is back after (10 + 1) / r = 1.1 s.
    assert!(!s.precheck(&l, T0 + 1_100_000_000 - 1).allowed);
    assert!(s.precheck(&l, T0 + 1_100_000_000).allowed);
    assert_eq!(s.time_until_full(&l, T0), 2 * SEC as u64);
}

#[test]
fn a_zero_hit_precheck_refuses_an_empty_bucket_that_a_plain_query_lets_through() {
    let l = limit(3, 3, Unit::Hour);
    let mut s = BucketState::new(0);
    assert!(s.precheck(&l, T0).allowed, "a full bucket");
    s.charge_into_debt(&l, ME, 3, T0, 3);
    assert!(
        s.peek(&l, T0).allowed,
        "plain query: at the limit, not over it"
    );
    let o = s.precheck(&l, T0);
    assert!(!o.allowed, "pre-check: empty is over");
    assert_eq!(o.remaining, 0);
    let before = s.clone();
    s.precheck(&l, T0);
    assert_eq!(s, before, "a pre-check changes nothing");
}

#[test]
fn usage_merged_from_a_peer_counts_in_full_until_the_next_charge_caps_the_debt() {
    let l = limit(10, 10, Unit::Second);
    let mut s = BucketState::new(0);
    s.charge_into_debt(&l, ReplicaId(1), 10, T0, 10);
    let mut late = BucketState::new(0);
    late.record(ReplicaId(2), 100, true);
    s.join(&late);
    assert_eq!(s.tokens(&l, T0), -100, "110 used of 10");
    // Pre-checks enforce all of it: one whole token is back after 101 / r = 10.1 s.
    let mut capped = s.clone();
    assert!(!s.precheck(&l, T0 + 10_100_000_000 - 1).allowed);
    assert!(s.precheck(&l, T0 + 10_100_000_000).allowed);
    // A usage report (even of 0 tokens) caps the debt at one capacity: back after 1.1 s.
    capped.charge_into_debt(&l, ReplicaId(1), 0, T0, 10);
    assert_eq!(capped.tokens(&l, T0), -10);
    assert!(!capped.precheck(&l, T0 + 1_100_000_000 - 1).allowed);
    assert!(capped.precheck(&l, T0 + 1_100_000_000).allowed);
}

#[test]
fn a_refund_gives_back_only_tokens_in_use() {
    let l = limit(5, 5, Unit::Minute);
    let mut s = BucketState::new(0);
    let full = s.clone();
    let o = s.refund(&l, ME, 3, T0);
    assert_eq!(o.remaining, 5);
    assert_eq!(s, full, "a full bucket stays full and records nothing");
    s.charge_into_debt(&l, ME, 2, T0, 5);
    let o = s.refund(&l, ME, 10, T0);
    assert_eq!(o.remaining, 5, "never above the capacity");
    assert_eq!(s.refunded_by(ME), 2, "only the two in use were given back");
}

#[test]
fn two_replicas_refunding_at_once_both_count_after_the_join() {
    // A concurrency limit of 4: four streams start, two end on each of two other nodes.
    let l = limit(4, 4, Unit::Hour);
    let mut a = BucketState::new(0);
    a.charge_into_debt(&l, ReplicaId(1), 4, T0, 4);
    let mut b = a.clone();
    let mut c = a.clone();
    b.refund(&l, ReplicaId(2), 1, T0);
    c.refund(&l, ReplicaId(3), 1, T0);
    b.join(&c);
    a.join(&b);
    assert_eq!(a.tokens(&l, T0), 2, "both refunds, not the max of one");
    assert!(!a.join(&b), "joining again changes nothing");
}

/// A plain token counter that may go into debt, written apart from GCRA: tokens scaled by
/// `unit_ns`, refilled exactly, floored at `-cap` after a charge, refunds bounded by the
/// whole tokens in use.
struct DebtReference {
    capacity: i128,
    per_unit: i128,
    unit_ns: i128,
    cap: i128,
    tokens_scaled: i128,
    last: i128,
}

impl DebtReference {
    fn new(l: &Limit, cap: u64, start: i64) -> Self {
        DebtReference {
            capacity: l.capacity() as i128,
            per_unit: l.per_unit() as i128,
            unit_ns: l.unit_ns() as i128,
            cap: cap as i128,
            tokens_scaled: l.capacity() as i128 * l.unit_ns() as i128,
            last: start as i128,
        }
    }

    fn refill(&mut self, now: i64) {
        let now = now as i128;
        if now > self.last {
            let full = self.capacity * self.unit_ns;
            self.tokens_scaled = (self.tokens_scaled + (now - self.last) * self.per_unit).min(full);
            self.last = now;
        }
    }

    fn whole(&self) -> i128 {
        self.tokens_scaled.div_euclid(self.unit_ns)
    }

    /// Whether the tokens were there; charged either way.
    fn charge(&mut self, n: u64, now: i64) -> bool {
        self.refill(now);
        let cost = n as i128 * self.unit_ns;
        let fits = self.tokens_scaled >= cost;
        self.tokens_scaled = (self.tokens_scaled - cost).max(-self.cap * self.unit_ns);
        fits
    }

    fn refund(&mut self, n: u64, now: i64) {
        self.refill(now);
        let give = (n as i128).min(self.capacity - self.whole());
        let full = self.capacity * self.unit_ns;
        self.tokens_scaled = (self.tokens_scaled + give * self.unit_ns).min(full);
    }

    fn precheck(&mut self, now: i64) -> bool {
        self.refill(now);
        self.whole() >= 1
    }
}

#[derive(Debug, Clone, Copy)]
enum UsageOp {
    Precheck,
    Charge(u64),
    Refund(u64),
}

fn arb_usage_op() -> impl Strategy<Value = UsageOp> {
    prop_oneof![
        2 => Just(UsageOp::Precheck),
        3 => (0u64..600).prop_map(UsageOp::Charge),
        2 => (0u64..300).prop_map(UsageOp::Refund),
    ]
}

proptest! {
    /// Debt is repaid at the refill rate and nothing else: one node with charges into debt,
    /// pre-checks and refunds reads, decides and resets like the independent counter above.
    #[test]
    fn one_node_with_debt_and_refunds_behaves_as_a_reference_counter(
        l in arb_limit(),
        cap_capacities in 0u64..3,
        ops in prop::collection::vec((arb_step(), arb_usage_op()), 1..150),
    ) {
        let cap = l.capacity() as u64 * cap_capacities;
        let mut s = BucketState::new(1);
        let mut reference = DebtReference::new(&l, cap, T0);
        let mut t = T0;
        for (dt, op) in ops {
            t += dt;
            match op {
                UsageOp::Precheck => {
                    prop_assert_eq!(s.precheck(&l, t).allowed, reference.precheck(t));
                }
                UsageOp::Charge(n) => {
                    let o = s.charge_into_debt(&l, ME, n, t, cap);
                    prop_assert_eq!(o.allowed, reference.charge(n, t), "fit of {} at t+{}", n, t - T0);
                }
                UsageOp::Refund(n) => {
                    s.refund(&l, ME, n, t);
                    reference.refund(n, t);
                }
            }
            prop_assert_eq!(s.tokens(&l, t), reference.whole(), "tokens at t+{} after {:?}", t - T0, op);
            prop_assert!(s.tokens(&l, t) >= -(cap as i128), "debt within the cap");
            prop_assert!(s.tokens(&l, t) <= l.capacity() as i128, "never above the capacity");
        }
    }

    #[test]
    fn a_refund_adds_back_at_most_the_capacity(
        s in arb_state(), l in arb_limit(), n in 0u64..400, dt in arb_step(),
    ) {
        let t = T0 + dt;
        let before = s.tokens(&l, t);
        let mut after = s.clone();
        after.refund(&l, ME, n, t);
        let expect = (before + n as i128).min(l.capacity() as i128);
        prop_assert_eq!(after.tokens(&l, t), expect);
        prop_assert!(s.le(&after), "a refund only inflates the state");
    }

    #[test]
    fn charging_into_debt_inflates_and_respects_the_cap(
        s in arb_state(), l in arb_limit(), who in 0u32..4, n in 0u64..600,
        dt in arb_step(), k in 0u64..400,
    ) {
        let t = T0 + dt;
        let mut after = s.clone();
        after.charge_into_debt(&l, ReplicaId(who), n, t, k);
        prop_assert!(s.le(&after), "{:?} -> {:?}", s, after);
        prop_assert!(after.tokens(&l, t) >= -(k as i128));
        if n > 0 {
            prop_assert!(after.consumed_by(ReplicaId(who)) >= s.consumed_by(ReplicaId(who)) + n
                || after.consumed_by(ReplicaId(who)) == u64::MAX);
        }
    }

    /// A pre-check is the answer a one-token admit would give, without its side effects.
    #[test]
    fn a_precheck_agrees_with_a_one_token_admit(s in arb_state(), l in arb_limit(), dt in arb_step()) {
        let t = T0 + dt;
        let would = s.precheck(&l, t).allowed;
        let mut x = s.clone();
        // Debt cap large enough that forgiveness cannot change the answer.
        prop_assert_eq!(would, x.admit(&l, ME, 1, t, u64::MAX / 4).allowed);
    }

    /// The join laws with debt and refunds in play: states that went through usage charges and
    /// refunds on different replicas still merge to the same state in any order.
    #[test]
    fn join_laws_hold_after_debt_and_refunds(
        a in arb_state(), b in arb_state(), c in arb_state(), l in arb_limit(),
        ops in prop::collection::vec((0usize..3, 0u32..4, arb_usage_op(), arb_step()), 0..12),
    ) {
        let mut states = [a, b, c];
        let mut t = T0;
        for (i, who, op, dt) in ops {
            t += dt;
            match op {
                UsageOp::Precheck => {}
                UsageOp::Charge(n) => {
                    states[i].charge_into_debt(&l, ReplicaId(who), n, t, l.capacity() as u64);
                }
                UsageOp::Refund(n) => {
                    states[i].refund(&l, ReplicaId(who), n, t);
                }
            }
        }
        let [a, b, c] = states;
        let mut ab = a.clone();
        ab.join(&b);
        let mut ba = b.clone();
        ba.join(&a);
        prop_assert_eq!(&ab, &ba, "commutative");
        let mut ab_c = ab.clone();
        ab_c.join(&c);
        let mut bc = b.clone();
        bc.join(&c);
        let mut a_bc = a.clone();
        a_bc.join(&bc);
        prop_assert_eq!(&ab_c, &a_bc, "associative");
        let mut again = ab_c.clone();
        prop_assert!(!again.join(&ab_c), "idempotent");
        prop_assert!(a.le(&ab_c) && b.le(&ab_c) && c.le(&ab_c), "upper bound");
    }
}

#[test]
fn the_burst_guard_never_holds_back_a_query_that_takes_nothing() {
    let limit = Limit::new(100, 100, Unit::Second).expect("limit");
    let mut s = BucketState::new(0);
    assert!(s.admit(&limit, ME, 40, T0, 0).allowed);
    // 40 own tokens unacknowledged, 4 members: a share of 25 each.
    let g = Guard {
        acked_consumed: 0,
        acked_requested: 0,
        members: 4,
        round_trip_ns: 0,
    };
    assert!(
        !s.guard_allows(&limit, ME, 1, T0, &g),
        "a request beyond the share waits"
    );
    assert!(
        s.guard_allows(&limit, ME, 0, T0, &g),
        "a 0-hit query is answered by the bucket"
    );
}

// ---- the 64-bit fast path against the former all-i128 arithmetic ------------------------------

/// The bucket math as it was before the widening multiplications and the single count of the
/// tokens in use: every product saturating in i128, TAT recomputed from the counts after every
/// step. The fast path must give the same state and the same outcome on any input, extremes
/// included.
mod saturating_reference {
    use super::*;

    fn scaled(l: &Limit, now: i64) -> i128 {
        (now as i128).saturating_mul(l.per_unit() as i128)
    }

    fn span(l: &Limit, n: u64) -> i128 {
        (l.unit_ns() as i128).saturating_mul(n as i128)
    }

    /// (base, forgiven, slots) of a state being charged, and its refund total.
    pub struct Parts {
        pub base: i128,
        pub forgiven: i128,
        pub slots: Vec<Slot>,
        refunded: i128,
    }

    impl Parts {
        pub fn of(s: &BucketState) -> Parts {
            Parts {
                base: s.base(),
                forgiven: s.forgiven(),
                slots: s.slots().to_vec(),
                refunded: s
                    .refunds()
                    .fold(0i128, |a, r| a.saturating_add(r.refunded as i128)),
            }
        }

        pub fn tat(&self, l: &Limit) -> i128 {
            let consumed = self
                .slots
                .iter()
                .fold(0i128, |a, s| a.saturating_add(s.consumed as i128));
            self.base
                .saturating_add(
                    (l.unit_ns() as i128).saturating_mul(consumed.saturating_sub(self.refunded)),
                )
                .saturating_sub(self.forgiven)
        }
    }

    pub fn check(s: &BucketState, l: &Limit, n: u64, now: i64) -> bool {
        let t = scaled(l, now);
        Parts::of(s).tat(l).max(t).saturating_add(span(l, n))
            <= t.saturating_add(span(l, l.capacity() as u64))
    }

    /// The former `charge`: the new (base, forgiven, slots) and the outcome.
    #[allow(clippy::too_many_arguments)]
    pub fn charge(
        s: &BucketState,
        l: &Limit,
        who: ReplicaId,
        n: u64,
        now: i64,
        debt_cap: u64,
        permit: bool,
    ) -> (Parts, Outcome) {
        let mut p = Parts::of(s);
        let t = scaled(l, now);
        let tat = p.tat(l);
        if tat < t {
            p.base = p.base.saturating_add(t.saturating_sub(tat));
        }
        let tat = p.tat(l);
        let ceiling = t.saturating_add(span(l, (l.capacity() as u64).saturating_add(debt_cap)));
        if tat > ceiling {
            p.forgiven = p.forgiven.saturating_add(tat.saturating_sub(ceiling));
        }
        let mut tat = p.tat(l);
        let fits =
            tat.max(t).saturating_add(span(l, n)) <= t.saturating_add(span(l, l.capacity() as u64));
        let allowed = permit && fits;
        if n > 0 {
            let i = match p.slots.binary_search_by_key(&who, |s| s.replica) {
                Ok(i) => i,
                Err(i) => {
                    p.slots.insert(
                        i,
                        Slot {
                            replica: who,
                            ..Slot::default()
                        },
                    );
                    i
                }
            };
            p.slots[i].requested = p.slots[i].requested.saturating_add(n);
            if allowed {
                p.slots[i].consumed = p.slots[i].consumed.saturating_add(n);
                tat = p.tat(l);
            }
        }
        (p, outcome(l, tat, t, allowed))
    }

    /// The former outcome: every quotient in i128.
    fn outcome(l: &Limit, tat: i128, t: i128, allowed: bool) -> Outcome {
        let token = l.unit_ns() as i128;
        let r = l.per_unit() as i128;
        let ahead = tat.saturating_sub(t).max(0);
        let used = ahead.saturating_add(token - 1) / token;
        let capacity = l.capacity() as i128;
        Outcome {
            allowed,
            remaining: (capacity - used).clamp(0, capacity) as u64,
            reset_ns: (ahead.saturating_add(r - 1) / r).clamp(0, u64::MAX as i128) as u64,
            full_at_ns: (tat.max(0).saturating_add(r - 1) / r).clamp(0, i64::MAX as i128) as i64,
        }
    }
}

/// States anywhere in the i128 range, with counts up to `u64::MAX`: where saturation happens.
fn arb_extreme_state() -> impl Strategy<Value = BucketState> {
    let wide = prop_oneof![
        2 => any::<i128>(),
        1 => Just(i128::MAX),
        1 => Just(i128::MIN),
        2 => 0i128..1 << 100,
        2 => Just(0i128),
    ];
    let count = prop_oneof![2 => any::<u64>(), 1 => Just(u64::MAX), 2 => 0u64..10_000];
    let slot = (0u32..3, count.clone(), count.clone()).prop_map(|(r, c, q)| Slot {
        replica: ReplicaId(r),
        consumed: c,
        requested: q,
    });
    let refund = (0u32..3, count).prop_map(|(r, n)| Refund {
        replica: ReplicaId(r),
        refunded: n,
    });
    (
        wide.clone(),
        wide,
        prop::collection::vec(slot, 0..4),
        prop::collection::vec(refund, 0..3),
    )
        .prop_map(|(b, f, slots, refunds)| {
            BucketState::from_parts(1, b, f, slots).with_refunds(refunds)
        })
}

fn arb_any_limit() -> impl Strategy<Value = Limit> {
    (
        1u32..=u32::MAX,
        1u32..=u32::MAX,
        prop::sample::select(Unit::ALL.to_vec()),
        prop::sample::select(vec![1u16, 7, 100]),
    )
        .prop_map(|(c, r, u, m)| Limit::over(c, r, u, m).expect("valid"))
}

fn arb_time() -> impl Strategy<Value = i64> {
    prop_oneof![
        3 => (T0 - 400 * 86_400 * SEC)..(T0 + 400 * 86_400 * SEC),
        1 => any::<i64>(),
        1 => Just(i64::MAX),
        1 => Just(i64::MIN),
    ]
}

proptest! {
    #[test]
    fn the_fast_path_charges_exactly_as_the_i128_path(
        s in prop_oneof![arb_state(), arb_extreme_state()],
        l in prop_oneof![arb_limit(), arb_any_limit()],
        who in (0u32..3).prop_map(ReplicaId),
        n in prop_oneof![0u64..300, any::<u64>()],
        now in prop_oneof![arb_step().prop_map(|dt| T0 + dt), arb_time()],
        debt_cap in prop_oneof![0u64..1_000, any::<u64>()],
        permit in any::<bool>(),
    ) {
        prop_assert_eq!(s.tat(&l), saturating_reference::Parts::of(&s).tat(&l));
        prop_assert_eq!(s.check(&l, n, now), saturating_reference::check(&s, &l, n, now));
        let (want, want_outcome) =
            saturating_reference::charge(&s, &l, who, n, now, debt_cap, permit);
        let mut got = s.clone();
        let outcome = got.charge(&l, who, n, now, debt_cap, permit);
        prop_assert_eq!(outcome, want_outcome);
        prop_assert_eq!(got.base(), want.base);
        prop_assert_eq!(got.forgiven(), want.forgiven);
        prop_assert_eq!(got.slots(), &want.slots[..]);
    }
}

/// States at the edges of the bounded path: `B` and `F` just inside and outside 2^124, net
/// counts just inside and outside an i64.
fn arb_near_bound_state() -> impl Strategy<Value = BucketState> {
    let edge = 1i128 << 124;
    let wide = prop_oneof![
        2 => -edge..edge,
        1 => Just(edge - 1),
        1 => Just(1 - edge),
        1 => Just(edge),
        2 => 0i128..1 << 100,
    ];
    let top = i64::MAX as u64;
    let count = prop_oneof![
        1 => Just(top),
        1 => (top - 10_000)..=(top + 10_000),
        2 => 0u64..10_000,
        1 => any::<u64>(),
    ];
    let slot = (0u32..3, count.clone(), count.clone()).prop_map(|(r, c, q)| Slot {
        replica: ReplicaId(r),
        consumed: c,
        requested: q,
    });
    let refund = (0u32..3, count).prop_map(|(r, n)| Refund {
        replica: ReplicaId(r),
        refunded: n,
    });
    (
        wide.clone(),
        wide,
        prop::collection::vec(slot, 0..3),
        prop::collection::vec(refund, 0..2),
    )
        .prop_map(|(b, f, slots, refunds)| {
            BucketState::from_parts(1, b, f, slots).with_refunds(refunds)
        })
}

#[test]
fn a_real_bucket_is_charged_on_the_bounded_path() {
    let l = Limit::new(1_000_000_000, 1_000_000_000, Unit::Second).expect("valid");
    let mut s = BucketState::new(1);
    for i in 0..3 {
        let now = T0 + i * SEC;
        assert!(s.bounded(&l, 5, now, u64::from(l.capacity())).is_some());
        assert!(
            s.admit(&l, ReplicaId(0), 5, now, u64::from(l.capacity()))
                .allowed
        );
    }
}

proptest! {
    #[test]
    fn a_bounded_charge_is_the_saturating_charge(
        s in prop_oneof![arb_state(), arb_extreme_state(), arb_near_bound_state()],
        l in prop_oneof![arb_limit(), arb_any_limit()],
        who in (0u32..3).prop_map(ReplicaId),
        n in prop_oneof![0u64..300, any::<u64>(), Just(u64::MAX)],
        now in prop_oneof![arb_step().prop_map(|dt| T0 + dt), arb_time(), Just(0i64)],
        debt_cap in prop_oneof![0u64..1_000, any::<u64>()],
        permit in any::<bool>(),
    ) {
        // Only states the bounded path takes: the others are charged by the saturating one.
        let Some(b) = s.bounded(&l, n, now, debt_cap) else {
            return Ok(());
        };
        let (mut fast, mut slow) = (s.clone(), s);
        let got = fast.charge_bounded(&l, who, n, now, b, permit);
        let want = slow.charge_saturating(&l, who, n, now, debt_cap, permit);
        prop_assert_eq!(got, want);
        prop_assert_eq!(fast, slow);
    }
}

proptest! {
    #[test]
    fn a_bounded_fit_check_is_the_saturating_one(
        s in prop_oneof![arb_state(), arb_extreme_state(), arb_near_bound_state()],
        l in prop_oneof![arb_limit(), arb_any_limit()],
        n in prop_oneof![0u64..300, any::<u64>(), Just(u64::MAX)],
        now in prop_oneof![arb_step().prop_map(|dt| T0 + dt), arb_time(), Just(0i64)],
    ) {
        let want = BucketState::fits(&l, s.tat(&l), l.scaled(now), n);
        prop_assert_eq!(s.check(&l, n, now), want);
        if let Some(tat) = s.bounded_tat(&l) {
            prop_assert_eq!(tat, s.tat(&l));
        }
    }
}
