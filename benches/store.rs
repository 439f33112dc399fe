//! The store under the request path: a hot key, and keys spread over a million live buckets;
//! plus memory per live key, measured by a counting allocator.
//! `cargo bench --bench store`

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicIsize, Ordering};

use criterion::{criterion_group, criterion_main, Criterion};
use tollgate::bucket::{Limit, Mode, ReplicaId};
use tollgate::store::{Charge, KeyBuilder, KeyId, Store, StoreConfig};
use tollgate::unit::Unit;

/// Counts live heap bytes, so memory per key is measured, not estimated.
struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const T0: i64 = 1_700_000_000_000_000_000;
const KEYS: u64 = 1_000_000;

fn key(i: u64) -> KeyId {
    KeyBuilder::new("bench").str("user").u64(i).finish()
}

fn store() -> Store {
    Store::new(StoreConfig::default(), ReplicaId(0))
}

fn limit() -> Limit {
    Limit::new(1_000, 1_000, Unit::Second).expect("valid")
}

fn charge(k: KeyId) -> [Charge; 1] {
    [Charge {
        key: k,
        limit: limit(),
        hits: 1,
        enforce: true,
        rule: 1,
    }]
}

/// Fill a store with `KEYS` live keys and report heap bytes per key.
fn filled() -> (Store, f64) {
    let before = LIVE.load(Ordering::Relaxed);
    let s = store();
    for i in 0..KEYS {
        s.decide(&charge(key(i)), Mode::Shared, T0);
    }
    let bytes = (LIVE.load(Ordering::Relaxed) - before) as f64 / KEYS as f64;
    (s, bytes)
}

fn hot_key(c: &mut Criterion) {
    let s = store();
    let k = key(0);
    let mut t = T0;
    c.bench_function("store/decide_hot_key", |b| {
        b.iter(|| {
            t += 1_000;
            black_box(s.decide(&charge(k), Mode::Shared, t))
        })
    });
}

fn spread_keys(c: &mut Criterion) {
    let (s, bytes_per_key) = filled();
    eprintln!(
        "memory: {bytes_per_key:.1} heap bytes per live key at {KEYS} keys (key id included)"
    );
    // The same hot key, now with a million others in the store: the cost of a big table.
    let hot = key(0);
    let mut t = T0;
    c.bench_function("store/decide_hot_key_with_1M_live", |b| {
        b.iter(|| {
            t += 1_000;
            black_box(s.decide(&charge(hot), Mode::Shared, t))
        })
    });
    let mut i = 0u64;
    c.bench_function("store/decide_across_1M_keys", |b| {
        b.iter(|| {
            i = (i + 7_919) % KEYS;
            t += 1_000;
            black_box(s.decide(&charge(key(i)), Mode::Shared, t))
        })
    });
}

fn two_descriptors(c: &mut Criterion) {
    let s = store();
    let (a, b2) = (key(1), key(2));
    let mut t = T0;
    c.bench_function("store/decide_2_descriptors", |b| {
        b.iter(|| {
            t += 1_000;
            let charges = [charge(a)[0], charge(b2)[0]];
            black_box(s.decide(&charges, Mode::Shared, t))
        })
    });
}

criterion_group!(benches, hot_key, two_descriptors, spread_keys);
criterion_main!(benches);
