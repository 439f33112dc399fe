//! The pure bucket: admit on one key, and the join replicas run on every received state.
//! `cargo bench --bench bucket`

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use tollgate::bucket::{BucketState, Limit, ReplicaId, Slot};
use tollgate::unit::Unit;

const T0: i64 = 1_700_000_000_000_000_000;

fn admit(c: &mut Criterion) {
    let limit = Limit::new(1_000_000, 1_000_000, Unit::Second).expect("valid");
    c.bench_function("bucket/admit", |b| {
        let mut s = BucketState::new(0);
        let mut t = T0;
        b.iter(|| {
            t += 1_000;
            black_box(s.admit(&limit, ReplicaId(0), 1, black_box(t), 1_000_000))
        })
    });
}

fn join(c: &mut Criterion) {
    let three = |base: i128, n: u64| {
        BucketState::from_parts(
            1,
            base,
            0,
            (0..3).map(|r| Slot {
                replica: ReplicaId(r),
                consumed: n + r as u64,
                requested: n + 2 * r as u64,
            }),
        )
    };
    let a = three(T0 as i128, 1_000);
    let b = three(T0 as i128 + 5, 1_001);
    c.bench_function("bucket/join_3_replicas", |bench| {
        bench.iter(|| {
            let mut x = a.clone();
            black_box(x.join(black_box(&b)))
        })
    });
}

criterion_group!(benches, admit, join);
criterion_main!(benches);
