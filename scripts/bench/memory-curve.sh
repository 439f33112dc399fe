#!/usr/bin/env bash
# Heap bytes per live key as the store grows (BENCHMARKS.md figure 4: the store's tables grow in
# steps, so one key count says little). Builds a throwaway program in a temp dir that links this
# repo's `tollgate` library through its public store API, with the same counting allocator and
# key scheme as benches/store.rs, and prints bytes per key, and the time to create the keys, at
# several key counts. Nothing in the repo is written except target/bench/memory-curve-target
# (cargo's build dir for the throwaway program).
#
#   scripts/bench/memory-curve.sh [N1,N2,...]      # default 500000,800000,900000,917000,950000,1000000,1200000,1500000,2000000
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
counts="${1:-500000,800000,900000,917000,950000,1000000,1200000,1500000,2000000}"
dir="$(mktemp -d /tmp/tollgate-memory-curve.XXXXXX)"
trap 'rm -rf "$dir"' EXIT
mkdir -p "$dir/src"
cat >"$dir/Cargo.toml" <<TOML
[package]
name = "memory-curve"
version = "0.0.0"
edition = "2021"
publish = false
[dependencies]
tollgate = { path = "$repo" }
[profile.release]
debug = false
[workspace]
TOML
cat >"$dir/src/main.rs" <<'RS'
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};
use tollgate::bucket::{Limit, ReplicaId};
use tollgate::store::{Charge, KeyBuilder, Store, StoreConfig};
use tollgate::unit::Unit;

struct Counting;
static LIVE: AtomicIsize = AtomicIsize::new(0);
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(p, l) }
    }
}
#[global_allocator]
static GLOBAL: Counting = Counting;

fn main() {
    let counts: Vec<u64> = std::env::args().nth(1).unwrap_or_default()
        .split(',').filter_map(|s| s.parse().ok()).collect();
    let limit = Limit::new(1_000, 1_000, Unit::Second).expect("valid");
    for n in counts {
        let before = LIVE.load(Ordering::Relaxed);
        let start = std::time::Instant::now();
        let s = Store::new(StoreConfig::default(), ReplicaId(0));
        for i in 0..n {
            let k = KeyBuilder::new("bench").str("user").u64(i).finish();
            s.decide(&[Charge { key: k, limit, hits: 1, enforce: true }], 1_700_000_000_000_000_000);
        }
        let took = start.elapsed();
        let bytes = (LIVE.load(Ordering::Relaxed) - before) as f64 / n as f64;
        println!("{n} keys ({} live): {bytes:.1} heap bytes per live key (key id included), created in {} ms", s.live_keys(), took.as_millis());
    }
}
RS
CARGO_TARGET_DIR="$repo/target/bench/memory-curve-target" timeout 1800 \
    cargo run --quiet --release --manifest-path "$dir/Cargo.toml" -- "$counts"
