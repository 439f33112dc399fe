#!/usr/bin/env bash
# Micro-benchmarks of the bucket and the store (BENCHMARKS.md figure 7, and figure 4's heap bytes
# per live key, measured by a counting allocator in benches/store.rs).
#
#   scripts/bench/criterion.sh        # full log under target/bench/criterion-<time>.log
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$repo"
mkdir -p target/bench
log="target/bench/criterion-$(date -u +%Y%m%dT%H%M%S).log"
timeout 2400 cargo bench --bench bucket --bench store 2>&1 | tee "$log" \
    | grep -E '^(bucket|store)/|time:|memory:|thrpt:' || true
echo "full log: $log"
