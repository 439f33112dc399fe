use super::tests::{fair_share, guarded};
use super::*;
use crate::unit::Unit;

const T0: i64 = 1_700_000_000_000_000_000;
const SEC: i64 = 1_000_000_000;

fn key(s: &str) -> KeyId {
    KeyBuilder::new("test").str(s).finish()
}

fn budget() -> Limit {
    Limit::new(1_000, 1_000, Unit::Minute).expect("valid")
}

fn tracked(max_keys: usize) -> Store {
    Store::new(
        StoreConfig {
            track_dirty: true,
            max_keys,
            overflow_buckets_per_limit: 1,
            ..StoreConfig::default()
        },
        ReplicaId(0),
    )
}

/// Pre-check, then report 300 tokens, until a pre-check refuses; returns the calls started.
fn calls_started(s: &Store, k: &str, now: i64) -> u32 {
    let mut started = 0;
    while s.precheck(key(k), budget(), s.mode(), now).within {
        started += 1;
        assert!(started <= 100, "never refuses");
        assert!(
            s.charge_with_debt(key(k), budget(), 300, s.mode(), now)
                .charged
        );
    }
    started
}

#[test]
fn usage_beyond_what_is_left_is_charged_and_the_next_precheck_refuses() {
    let s = tracked(1_000);
    assert_eq!(
        calls_started(&s, "user", T0),
        4,
        "the fourth starts with 100 left"
    );
    let v = s.precheck(key("user"), budget(), s.mode(), T0);
    assert!(!v.within && !v.charged);
    assert_eq!(v.outcome.remaining, 0);
    assert_eq!(
        s.get(key("user")).map(|(l, st)| st.tokens(&l, T0)),
        Some(-200)
    );
}

#[test]
fn a_usage_charge_reports_whether_the_tokens_were_there() {
    let s = tracked(1_000);
    let v = s.charge_with_debt(key("u"), budget(), 800, s.mode(), T0);
    assert!(v.within && v.charged);
    assert_eq!(v.outcome.remaining, 200);
    let v = s.charge_with_debt(key("u"), budget(), 800, s.mode(), T0);
    assert!(!v.within && v.charged, "charged anyway");
    assert_eq!(v.outcome.remaining, 0);
}

#[test]
fn the_debt_of_one_report_stops_at_one_capacity() {
    let s = tracked(1_000);
    s.charge_with_debt(key("u"), budget(), 50_000, s.mode(), T0);
    assert_eq!(
        s.get(key("u")).map(|(l, st)| st.tokens(&l, T0)),
        Some(-1_000)
    );
    // (1,000 + 1) tokens at 1,000 per minute: 60.06 s.
    assert!(
        !s.precheck(key("u"), budget(), s.mode(), T0 + 60_059_999_999)
            .within
    );
    assert!(
        s.precheck(key("u"), budget(), s.mode(), T0 + 60_060_000_000)
            .within
    );
}

#[test]
fn a_precheck_creates_no_key() {
    let s = tracked(1_000);
    assert!(s.precheck(key("q"), budget(), s.mode(), T0).within);
    assert_eq!(s.live_keys(), 0);
}

#[test]
fn a_refund_gives_tokens_back_up_to_the_capacity_and_replicates() {
    let s = tracked(1_000);
    let l = Limit::new(3, 3, Unit::Hour).expect("valid");
    for _ in 0..3 {
        assert!(
            s.charge_with_debt(key("streams"), l, 1, s.mode(), T0)
                .within
        );
    }
    assert!(
        !s.precheck(key("streams"), l, s.mode(), T0).within,
        "three in flight"
    );
    let mut out = Vec::new();
    s.drain_dirty(&mut out);
    let v = s.refund(key("streams"), l, 1, T0);
    assert!(v.charged);
    assert_eq!(v.outcome.remaining, 1);
    assert!(s.precheck(key("streams"), l, s.mode(), T0).within);
    s.drain_dirty(&mut out);
    assert_eq!(out, vec![key("streams"), key("streams")], "dirty again");
    let v = s.refund(key("streams"), l, 10, T0);
    assert_eq!(v.outcome.remaining, 3, "never above the capacity");
    assert!(
        !s.refund(key("streams"), l, 1, T0).charged,
        "nothing left to give"
    );
}

#[test]
fn a_refund_for_a_key_this_node_does_not_hold_creates_nothing() {
    let s = tracked(1_000);
    let v = s.refund(key("absent"), budget(), 5, T0);
    assert!(!v.charged);
    assert_eq!(v.outcome.remaining, 1_000);
    assert_eq!(s.live_keys(), 0);
}

#[test]
fn usage_reported_to_one_node_is_enforced_by_another_after_the_merge() {
    let a = tracked(1_000);
    let b = Store::new(
        StoreConfig {
            track_dirty: true,
            ..StoreConfig::default()
        },
        ReplicaId(1),
    );
    for _ in 0..4 {
        a.charge_with_debt(key("user"), budget(), 300, a.mode(), T0);
    }
    let (l, state) = a.get(key("user")).expect("live");
    assert!(b.merge(key("user"), l, &state, T0).changed());
    assert!(!b.precheck(key("user"), budget(), b.mode(), T0).within);
    // A refund on b comes back to a as a counter a did not have.
    b.refund(key("user"), budget(), 300, T0);
    let (_, back) = b.get(key("user")).expect("live");
    assert!(a.merge(key("user"), l, &back, T0).changed());
    assert_eq!(
        a.get(key("user")).map(|(l, st)| st.tokens(&l, T0)),
        Some(100)
    );
}

#[test]
fn usage_for_a_new_key_beyond_the_cap_goes_to_the_shared_bucket_and_is_prechecked_there() {
    let s = tracked(0);
    assert_eq!(calls_started(&s, "late", T0), 4);
    assert_eq!(s.live_keys(), 0, "memory stays bounded");
    assert_eq!(s.overflow_keys(), 1);
    let v = s.precheck(key("late"), budget(), s.mode(), T0);
    assert_eq!(v.placement, Placement::Shared);
    assert!(!v.within);
    assert!(
        s.precheck(key("late"), budget(), s.mode(), T0 + 20 * SEC)
            .within
    );
}

#[test]
fn usage_passes_the_burst_guard_but_the_guard_learns_it() {
    let s = tracked(1_000);
    s.set_mode(guarded(), T0);
    assert!(
        s.charge_with_debt(key("g"), budget(), 900, s.mode(), T0)
            .charged
    );
    assert_eq!(s.unacked_keys(), 1);
}

#[test]
fn in_fair_share_mode_usage_is_charged_to_the_local_share() {
    let s = tracked(1_000);
    s.set_mode(fair_share(4), T0);
    // A share of 250: the first report fits, the second goes past it.
    assert!(
        s.charge_with_debt(key("f"), budget(), 200, s.mode(), T0)
            .within
    );
    assert!(s.precheck(key("f"), budget(), s.mode(), T0).within);
    assert!(
        !s.charge_with_debt(key("f"), budget(), 200, s.mode(), T0)
            .within
    );
    assert!(!s.precheck(key("f"), budget(), s.mode(), T0).within);
    let (_, st) = s.get(key("f")).expect("live");
    assert_eq!(
        st.consumed_by(ReplicaId(0)),
        400,
        "counts recorded for the cluster"
    );
}
