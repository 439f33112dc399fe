use std::sync::Arc;

use super::*;
use crate::bucket::GEN_PERIOD_NS;
use crate::unit::Unit;

const T0: i64 = 1_700_000_000_000_000_000;
const SEC: i64 = 1_000_000_000;

/// The burst guard of a 3-member cluster whose acknowledgements take 60 ms.
pub(super) fn guarded() -> Mode {
    Mode::new(
        None,
        BurstGuard::new(3, std::time::Duration::from_millis(60)),
    )
}

/// Fair-share mode among `members`, without the guard.
pub(super) fn fair_share(members: u32) -> Mode {
    Mode::new(Some(members), None)
}

fn store() -> Store {
    Store::new(StoreConfig::default(), ReplicaId(0))
}

fn key(s: &str) -> KeyId {
    KeyBuilder::new("test").str(s).finish()
}

fn per_second(n: u32) -> Limit {
    Limit::new(n, n, Unit::Second).expect("valid")
}

fn charge(k: &str, limit: Limit, hits: u64) -> Charge {
    Charge {
        key: key(k),
        limit,
        hits,
        enforce: true,
        rule: 1,
    }
}

#[test]
fn a_request_over_one_limit_charges_none_of_its_buckets() {
    let s = store();
    let roomy = per_second(100);
    let tight = per_second(1);
    assert!(s.decide(&[charge("tight", tight, 1)], s.mode(), T0)[0].charged);
    let v = s.decide(
        &[charge("roomy", roomy, 1), charge("tight", tight, 1)],
        s.mode(),
        T0,
    );
    assert!(
        v[0].within && !v[0].charged,
        "roomy had room but must not be charged"
    );
    assert!(!v[1].within && !v[1].charged);
    assert_eq!(
        s.get(key("roomy")).map(|(l, st)| st.tokens(&l, T0)),
        Some(100)
    );
}

#[test]
fn a_request_within_all_limits_charges_every_bucket() {
    let s = store();
    let v = s.decide(
        &[charge("a", per_second(5), 2), charge("b", per_second(5), 3)],
        s.mode(),
        T0,
    );
    assert!(v.iter().all(|v| v.charged));
    assert_eq!(v[0].outcome.remaining, 3);
    assert_eq!(v[1].outcome.remaining, 2);
}

#[test]
fn the_same_bucket_twice_in_one_request_is_checked_against_the_sum() {
    let s = store();
    let l = per_second(3);
    let v = s.decide(&[charge("k", l, 2), charge("k", l, 2)], s.mode(), T0);
    assert!(v[0].within);
    assert!(!v[1].within, "2 + 2 > 3");
    assert!(!v[0].charged && !v[1].charged);
}

#[test]
fn a_shadow_charge_over_its_limit_does_not_block_the_request() {
    let s = store();
    let l = per_second(1);
    s.decide(&[charge("shadow", l, 1)], s.mode(), T0);
    let mut shadow = charge("shadow", l, 1);
    shadow.enforce = false;
    let v = s.decide(&[charge("real", per_second(10), 1), shadow], s.mode(), T0);
    assert!(v[0].charged);
    assert!(!v[1].within && !v[1].charged);
}

#[test]
fn a_query_neither_creates_nor_charges_a_key() {
    let s = store();
    let v = s.decide(&[charge("q", per_second(4), 0)], s.mode(), T0);
    assert!(v[0].within);
    assert_eq!(v[0].outcome.remaining, 4);
    assert_eq!(s.live_keys(), 0);
}

#[test]
fn new_keys_beyond_the_cap_share_overflow_buckets_and_are_never_unlimited() {
    let s = Store::new(
        StoreConfig {
            max_keys: 2,
            overflow_buckets_per_limit: 1,
            ..StoreConfig::default()
        },
        ReplicaId(0),
    );
    let l = per_second(2);
    s.decide(&[charge("a", l, 1)], s.mode(), T0);
    s.decide(&[charge("b", l, 1)], s.mode(), T0);
    assert_eq!(s.live_keys(), 2);
    // c and d are new, beyond the cap: they share one overflow bucket of 2 tokens.
    assert!(s.decide(&[charge("c", l, 1)], s.mode(), T0)[0].charged);
    let v = s.decide(&[charge("d", l, 1)], s.mode(), T0);
    assert_eq!(v[0].placement, Placement::Shared);
    assert!(v[0].charged);
    assert!(
        !s.decide(&[charge("e", l, 1)], s.mode(), T0)[0].charged,
        "shared bucket exhausted"
    );
    assert_eq!(s.live_keys(), 2, "memory stays bounded");
    assert_eq!(s.overflow_keys(), 1);
    assert_eq!(s.shared_total(), 3);
    // Existing keys keep their own buckets.
    assert_eq!(
        s.decide(&[charge("a", l, 1)], s.mode(), T0)[0].placement,
        Placement::Own
    );
}

#[test]
fn new_keys_are_refused_when_even_the_overflow_table_is_full() {
    let s = Store::new(
        StoreConfig {
            max_keys: 0,
            max_overflow_keys: 0,
            ..StoreConfig::default()
        },
        ReplicaId(0),
    );
    let v = s.decide(&[charge("x", per_second(10), 1)], s.mode(), T0);
    assert_eq!(v[0].placement, Placement::Refused);
    assert!(!v[0].within && !v[0].charged);
    assert_eq!(s.refused_total(), 1);
}

#[test]
fn gc_deletes_keys_full_for_the_horizon_and_only_those() {
    let s = store();
    let l = per_second(10);
    s.decide(&[charge("idle", l, 10)], s.mode(), T0);
    s.decide(&[charge("busy", l, 10)], s.mode(), T0 + 60 * SEC);
    // "idle" is full at T0 + 1 s; the horizon is 60 s.
    assert_eq!(s.gc(T0 + 61 * SEC - 1), 0);
    assert_eq!(s.gc(T0 + 61 * SEC), 1);
    assert!(s.get(key("idle")).is_none());
    assert!(s.get(key("busy")).is_some());
    assert_eq!(s.live_keys(), 1);
}

#[test]
fn gc_brings_memory_back_to_baseline() {
    let s = store();
    let l = per_second(10);
    for i in 0..10_000 {
        s.decide(&[charge(&i.to_string(), l, 1)], s.mode(), T0);
    }
    assert_eq!(s.live_keys(), 10_000);
    assert_eq!(s.gc(T0 + 120 * SEC), 10_000);
    assert_eq!(s.live_keys(), 0);
    let mut n = 0;
    s.for_each(|_, _, _| n += 1);
    assert_eq!(n, 0);
}

#[test]
fn a_late_full_state_does_not_resurrect_a_deleted_key() {
    let s = store();
    let l = per_second(10);
    s.decide(&[charge("k", l, 10)], s.mode(), T0);
    let (_, old) = s.get(key("k")).expect("live");
    s.gc(T0 + 120 * SEC);
    assert_eq!(s.merge(key("k"), l, &old, T0 + 120 * SEC), Merged::Dropped);
    assert!(s.get(key("k")).is_none());
}

#[test]
fn a_recreated_key_has_a_higher_generation_and_wins_over_its_old_state() {
    let s = store();
    let l = per_second(10);
    s.decide(&[charge("k", l, 10)], s.mode(), T0);
    let (_, old) = s.get(key("k")).expect("live");
    let later = T0 + 2 * GEN_PERIOD_NS + 120 * SEC;
    s.gc(later);
    s.decide(&[charge("k", l, 1)], s.mode(), later);
    let (_, fresh) = s.get(key("k")).expect("recreated");
    assert!(fresh.gen() > old.gen());
    // The old state, still draining in a peer's view, cannot add its counts to the new key.
    s.merge(key("k"), l, &old, later);
    assert_eq!(s.get(key("k")).map(|(l, st)| st.tokens(&l, later)), Some(9));
}

#[test]
fn merging_a_peer_state_charges_its_consumption() {
    let s = store();
    let l = per_second(10);
    // As if the peer admitted 4 at T0 on a bucket that was full.
    let mut peer_state = BucketState::new(crate::bucket::generation_at(T0));
    peer_state.admit(&l, ReplicaId(7), 4, T0, 10);
    assert!(s.merge(key("k"), l, &peer_state, T0).changed());
    assert_eq!(s.get(key("k")).map(|(l, st)| st.tokens(&l, T0)), Some(6));
}

#[test]
fn changed_keys_are_tracked_for_replication_only_when_asked() {
    let quiet = store();
    quiet.decide(&[charge("a", per_second(5), 1)], quiet.mode(), T0);
    let mut out = Vec::new();
    quiet.drain_dirty(&mut out);
    assert!(out.is_empty());

    let tracked = Store::new(
        StoreConfig {
            track_dirty: true,
            ..StoreConfig::default()
        },
        ReplicaId(0),
    );
    for _ in 0..3 {
        tracked.decide(&[charge("a", per_second(5), 1)], tracked.mode(), T0);
    }
    tracked.decide(&[charge("b", per_second(5), 1)], tracked.mode(), T0);
    tracked.drain_dirty(&mut out);
    out.sort();
    let mut want = vec![key("a"), key("b")];
    want.sort();
    assert_eq!(out, want, "coalesced: one entry per changed key");
    out.clear();
    tracked.drain_dirty(&mut out);
    assert!(out.is_empty());
}

#[test]
fn a_request_that_read_the_clock_before_a_later_one_forgives_nothing() {
    // 100 tokens, 1,000/s: drained at t2 the bucket is full again 100 ms later. A request that
    // read the clock 150 ms earlier and reached the lock only now used to see that as debt
    // beyond the cap (one capacity) and forgive it, handing 50 tokens back at t2.
    let s = store();
    let l = Limit::new(100, 1_000, Unit::Second).expect("valid");
    let t2 = T0 + 1_000_000_000;
    let drained = s.decide(&[charge("hot", l, 100)], s.mode(), t2);
    assert!(drained[0].charged);
    let stale = s.decide(&[charge("hot", l, 1)], s.mode(), t2 - 150_000_000);
    assert!(!stale[0].charged, "nothing is left at any time up to t2");
    let again = (0..100)
        .filter(|_| s.decide(&[charge("hot", l, 1)], s.mode(), t2)[0].charged)
        .count();
    assert_eq!(again, 0, "no token came back at t2");
}

#[test]
fn many_threads_on_one_key_never_admit_more_than_capacity_plus_refill() {
    let s = Arc::new(store());
    let l = Limit::new(100, 1_000, Unit::Second).expect("valid");
    let clock = Arc::new(std::sync::atomic::AtomicI64::new(T0));
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let s = s.clone();
            let clock = clock.clone();
            std::thread::spawn(move || {
                let mut admitted = 0u64;
                for _ in 0..20_000 {
                    // Time advances 1 µs per request across all threads: 1000/s refill means
                    // one token every 1000 requests.
                    let now = clock.fetch_add(1_000, Ordering::SeqCst) + 1_000;
                    if s.decide(&[charge("hot", l, 1)], s.mode(), now)[0].charged {
                        admitted += 1;
                    }
                }
                admitted
            })
        })
        .collect();
    let admitted: u64 = threads.into_iter().map(|t| t.join().expect("thread")).sum();
    let elapsed_s = (clock.load(Ordering::SeqCst) - T0) as f64 / 1e9;
    let allowance = 100.0 + 1_000.0 * elapsed_s;
    assert!(
        admitted as f64 <= allowance,
        "admitted {admitted} > C + r*t = {allowance}"
    );
    // Threads may reach the lock out of time order; that only ever refuses, never admits more.
    assert!(
        admitted as f64 >= allowance * 0.95,
        "admitted {admitted}, expected about {allowance}"
    );
}

#[test]
fn a_bucket_is_a_120_byte_slot_and_a_tag_byte() {
    // A million live keys: every byte here is a megabyte, paid 1.14 to 1.43 times per key (the
    // table is 70-88 % full). An empty slot costs no flag: `Entry` has a niche. Of the former
    // 104 bytes, 8 more are the refund counters' empty box and 8 the key budget's rule slot
    // (`budget.rs`).
    assert_eq!(std::mem::size_of::<Option<table::Slot<Entry>>>(), 120);
    assert_eq!(std::mem::size_of::<crate::bucket::BucketState>(), 80);
}

#[test]
fn versions_count_changes_and_keep_the_dirty_bit_apart() {
    let s = Store::new(
        StoreConfig {
            track_dirty: true,
            ..StoreConfig::default()
        },
        ReplicaId(0),
    );
    for _ in 0..3 {
        s.decide(&[charge("v", per_second(5), 1)], s.mode(), T0);
    }
    assert_eq!(s.version(key("v")), Some(3));
    let mut out = Vec::new();
    s.drain_dirty(&mut out);
    assert_eq!(s.version(key("v")), Some(3));
}

fn tracked() -> Store {
    Store::new(
        StoreConfig {
            track_dirty: true,
            ..StoreConfig::default()
        },
        ReplicaId(0),
    )
}

fn per_hour(n: u32) -> Limit {
    Limit::new(n, n, Unit::Hour).expect("valid")
}

/// Take single tokens until refused; returns how many were admitted.
fn take_all(s: &Store, k: &str, limit: Limit, now: i64) -> u64 {
    let mut n = 0;
    while s.decide(&[charge(k, limit, 1)], s.mode(), now)[0].charged {
        n += 1;
        assert!(n <= 10_000, "never refuses");
    }
    n
}

#[test]
fn the_burst_guard_holds_a_cold_burst_to_one_share_until_peers_acknowledge() {
    let s = tracked();
    let l = per_hour(300);
    s.set_mode(guarded(), T0);
    // A cold key: one third of the bucket may be in flight, not all of it.
    assert_eq!(take_all(&s, "cold", l, T0), 100);
    assert_eq!(s.unacked_keys(), 1);
    // The peers acknowledge what was sent: the next share goes through.
    let mut sent = Vec::new();
    s.drain_dirty_with(|d| sent.push((d.key, d.own)));
    assert_eq!(sent, vec![(key("cold"), (100, 101))]);
    s.acknowledge(&sent);
    assert_eq!(s.unacked_keys(), 0);
    // Its own demand is now known and nobody else asked: the whole rest may go.
    assert_eq!(take_all(&s, "cold", l, T0), 200);
}

#[test]
fn a_drained_key_says_whether_this_node_changed_it_or_only_a_merge_did() {
    let s = tracked();
    let l = per_hour(300);
    assert!(s.decide(&[charge("mine", l, 1)], s.mode(), T0)[0].charged);
    // A peer's admissions: a state that does not read as a full bucket (that would be dropped).
    let mut theirs = BucketState::new(crate::bucket::generation_at(T0));
    theirs.admit(&l, ReplicaId(1), 5, T0, 300);
    assert!(s.merge(key("theirs"), l, &theirs, T0).changed());
    assert!(s.merge(key("mine"), l, &theirs, T0).changed());
    let mut drained = Vec::new();
    s.drain_dirty_with(|d| drained.push((d.key, d.own_changed)));
    drained.sort();
    let mut want = vec![(key("mine"), true), (key("theirs"), false)];
    want.sort();
    assert_eq!(drained, want);
    // Drained: a merge alone afterwards is not this node's change.
    theirs.admit(&l, ReplicaId(1), 1, T0, 300);
    assert!(s.merge(key("mine"), l, &theirs, T0).changed());
    drained.clear();
    s.drain_dirty_with(|d| drained.push((d.key, d.own_changed)));
    assert_eq!(drained, vec![(key("mine"), false)]);
}

#[test]
fn a_partial_state_of_an_absent_key_is_kept_even_when_it_reads_full() {
    let s = tracked();
    let l = per_hour(300);
    let full = BucketState::new(crate::bucket::generation_at(T0));
    assert_eq!(s.merge(key("whole"), l, &full, T0), Merged::Dropped);
    assert!(s.merge_partial(key("part"), l, &full, T0).changed());
    assert!(s.get(key("part")).is_some());
}

#[test]
fn without_the_guard_a_single_node_spends_the_whole_bucket_at_once() {
    let s = tracked();
    assert_eq!(take_all(&s, "cold", per_hour(300), T0), 300);
    assert_eq!(s.unacked_keys(), 0, "nothing tracked with the guard off");
}

#[test]
fn the_guard_always_lets_one_request_through_when_nothing_is_in_flight() {
    let s = tracked();
    let l = per_hour(300);
    s.set_mode(guarded(), T0);
    // 200 tokens in one request is more than a share, but nothing is unacknowledged.
    assert!(s.decide(&[charge("big", l, 200)], s.mode(), T0)[0].charged);
    assert!(!s.decide(&[charge("big", l, 1)], s.mode(), T0)[0].charged);
}

#[test]
fn fair_share_mode_decides_on_a_share_and_never_writes_the_refill_floor() {
    let s = tracked();
    let l = per_hour(300);
    assert_eq!(
        s.decide(&[charge("k", l, 60)], s.mode(), T0)[0]
            .outcome
            .remaining,
        240
    );
    let (_, before) = s.get(key("k")).expect("live");
    s.set_mode(fair_share(3), T0);
    // 240 left in the view: 80 for this node.
    let v = s.decide(&[charge("k", l, 0)], s.mode(), T0);
    assert_eq!(v[0].outcome.remaining, 80);
    assert_eq!(take_all(&s, "k", l, T0), 80);
    let (_, after) = s.get(key("k")).expect("live");
    assert_eq!(after.base(), before.base(), "B untouched");
    assert_eq!(after.forgiven(), before.forgiven(), "F untouched");
    assert_eq!(
        after.consumed_by(ReplicaId(0)),
        140,
        "counts still recorded"
    );
    // A peer's spending merged during the mode does not shrink this node's share again.
    let mut theirs = BucketState::new(after.gen());
    theirs.record(ReplicaId(1), 50, true);
    s.merge(key("k"), l, &theirs, T0);
    assert!(
        s.decide(&[charge("k", l, 0)], s.mode(), T0)[0]
            .outcome
            .remaining
            == 0
    );
    // Back to the shared bucket: it holds what the view says.
    s.set_mode(Mode::Shared, T0);
    assert_eq!(take_all(&s, "k", l, T0), 110);
}

#[test]
fn a_fresh_key_in_fair_share_mode_gets_one_share_of_the_capacity() {
    let s = tracked();
    s.set_mode(fair_share(4), T0);
    assert_eq!(take_all(&s, "fresh", per_hour(100), T0), 25);
    // The share refills at a quarter of the rate: 100/h is one token per 36 s, so 144 s.
    assert_eq!(take_all(&s, "fresh", per_hour(100), T0 + 143 * SEC), 0);
    assert_eq!(take_all(&s, "fresh", per_hour(100), T0 + 144 * SEC), 1);
}

#[test]
fn a_new_key_charged_twice_in_one_request_is_created_once_and_charged_twice() {
    let s = store();
    let l = per_second(5);
    let v = s.decide(&[charge("new", l, 2), charge("new", l, 1)], s.mode(), T0);
    assert!(v[0].charged && v[1].charged);
    assert_eq!(v[1].outcome.remaining, 2);
    assert_eq!(s.live_keys(), 1);
}

#[test]
fn a_read_after_a_charge_in_one_request_sees_the_key_it_created() {
    let s = store();
    let l = per_second(5);
    let v = s.decide(&[charge("new", l, 2), charge("new", l, 0)], s.mode(), T0);
    assert_eq!(v[1].outcome.remaining, 3);
}

#[test]
fn a_request_that_grows_its_table_still_charges_its_other_keys() {
    let s = Store::new(
        StoreConfig {
            shards: 1,
            ..StoreConfig::default()
        },
        ReplicaId(0),
    );
    let l = per_second(1_000);
    // Each request creates a key (now and then growing the table, which moves every entry)
    // before it charges the same old key.
    for i in 0..200 {
        let v = s.decide(
            &[charge(&format!("new{i}"), l, 1), charge("old", l, 1)],
            s.mode(),
            T0,
        );
        assert!(v[0].charged && v[1].charged, "{i}");
        assert_eq!(v[1].outcome.remaining, 999 - i, "{i}");
    }
    assert_eq!(s.live_keys(), 201);
    assert_eq!(
        s.get(key("new7")).map(|(l, st)| st.tokens(&l, T0)),
        Some(999)
    );
}

#[test]
fn a_key_created_in_fair_share_mode_keeps_its_admissions_through_gc_and_replication() {
    let s = tracked();
    let l = per_hour(10);
    s.set_mode(fair_share(2), T0);
    assert_eq!(take_all(&s, "new", l, T0), 5);
    // Not idle: GC keeps it, and a peer with no such key takes the state instead of dropping
    // it as a full bucket.
    assert_eq!(s.gc(T0 + SEC), 0);
    let (_, state) = s.get(key("new")).expect("kept");
    let peer = tracked();
    assert!(matches!(
        peer.merge(key("new"), l, &state, T0 + SEC),
        Merged::Applied { .. }
    ));
    assert_eq!(take_all(&peer, "new", l, T0 + SEC), 5);
}

#[test]
fn gc_keeps_a_key_whose_fair_share_is_in_use_while_the_shared_view_reads_full() {
    let s = Store::new(
        StoreConfig {
            track_dirty: true,
            gc_horizon_ns: 60 * SEC,
            ..StoreConfig::default()
        },
        ReplicaId(0),
    );
    let l = per_second(10);
    assert!(s.decide(&[charge("k", l, 1)], s.mode(), T0)[0].charged);
    s.set_mode(fair_share(4), T0);
    // Ten minutes on a quarter of the rate: the share is spent as fast as it refills, while
    // the shared floor stays where the mode began and the view reads full.
    let mut t = T0;
    for _ in 0..600 {
        t += SEC;
        take_all(&s, "k", l, t);
    }
    let (_, state) = s.get(key("k")).expect("live");
    assert!(state.is_idle(&l, t, 60 * SEC), "the view reads long full");
    assert_eq!(s.gc(t), 0, "but the share is in use");
    assert!(
        !s.decide(&[charge("k", l, 3)], s.mode(), t)[0].charged,
        "share still spent"
    );
}

#[test]
fn keys_collected_by_gc_leave_the_burst_guard_count() {
    let s = tracked();
    s.set_mode(guarded(), T0);
    for k in ["a", "b"] {
        assert!(s.decide(&[charge(k, per_hour(300), 1)], s.mode(), T0)[0].charged);
    }
    assert_eq!(s.unacked_keys(), 2);
    // Full again after 12 s, then idle for the 60 s horizon.
    assert_eq!(s.gc(T0 + 120 * SEC), 2);
    assert_eq!(s.unacked_keys(), 0);
}

#[test]
fn a_request_is_decided_under_the_mode_it_was_handed() {
    let s = tracked();
    let l = per_hour(300);
    s.set_mode(fair_share(3), T0);
    // Read before the switch: the shared bucket, not the share of 100.
    assert!(s.decide(&[charge("k", l, 150)], Mode::Shared, T0)[0].charged);
    // Under the store's mode now: a third of the 150 the view holds.
    assert_eq!(take_all(&s, "k", l, T0), 50);
}

#[test]
fn setting_the_same_fair_share_again_keeps_the_spent_shares() {
    let s = tracked();
    let l = per_hour(300);
    s.set_mode(fair_share(3), T0);
    assert_eq!(take_all(&s, "k", l, T0), 100);
    // Replication sets the mode on every tick: only a change of members starts new shares.
    s.set_mode(
        Mode::new(
            Some(3),
            BurstGuard::new(3, std::time::Duration::from_millis(60)),
        ),
        T0,
    );
    assert_eq!(s.mode().guard().map(|g| g.members()), Some(3));
    assert_eq!(take_all(&s, "k", l, T0), 0);
    s.set_mode(fair_share(2), T0);
    assert_eq!(
        take_all(&s, "k", l, T0),
        100,
        "half of the 200 the view holds"
    );
}

proptest::proptest! {
    /// The short orders of one and two charges are the general case's: every shard once,
    /// ascending.
    #[test]
    fn a_request_locks_its_shards_ascending_and_each_once(
        keys in proptest::collection::vec(proptest::prelude::any::<u128>(), 1..6),
        shards in 0u32..4,
    ) {
        let s = Store::new(
            StoreConfig { shards: 1 << shards, ..StoreConfig::default() },
            ReplicaId(0),
        );
        let charges: Vec<Charge> = keys
            .iter()
            .map(|&k| Charge { key: KeyId(k), ..charge("x", per_second(5), 1) })
            .collect();
        let mut want: Vec<usize> = charges.iter().map(|c| s.shard_of(c.key)).collect();
        want.sort_unstable();
        want.dedup();
        let locked = s.lock(&charges, Mode::Shared, T0);
        proptest::prop_assert_eq!(&locked.order[..], &want[..]);
        for c in &charges {
            let i = locked.lock_of(s.shard_of(c.key));
            proptest::prop_assert_eq!(locked.order[i], s.shard_of(c.key));
        }
    }
}
