#!/usr/bin/env bash
# In-process fleets on the test network (tests/cluster/fleet.rs, peer connections in memory):
# 50 and 100 members at 1 ms and 25 ms one-way latency, with 1 % of the Deltas lost and
# without loss. Each run prints one "fleet of N" line: admitted per key, convergence after the
# load, bytes per admitted request, bytes per key per link crossing, crossings per request per
# member. The test suite runs only the 50-member, 1 % loss runs (in real and in paused time).
#
#   [RUNS=K] [LOSSES="10 0"] scripts/bench/fleet-in-process.sh [MEMBERS...]   # default: 50 100
#
# RUNS repeats each configuration (default 1): convergence is a tail on shared cores, so one
# run is a sample, not a figure. LOSSES lists the per-mille losses to run (default "10 0").
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
sizes=("$@")
[ ${#sizes[@]} -gt 0 ] || sizes=(50 100)
cargo test --release --test cluster --no-run >/dev/null
runs=${RUNS:-1}
losses=(${LOSSES:-10 0})
for n in "${sizes[@]}"; do
    for loss in "${losses[@]}"; do
        for _ in $(seq "$runs"); do
            # Every run prints its figures before its assertions, so a failed bound still reports.
            TOLLGATE_FLEET_MEMBERS=$n TOLLGATE_FLEET_LOSS_PER_MILLE=$loss \
                cargo test --release --test cluster fleet:: -- --nocapture --test-threads 1 2>&1 \
                | grep -E "fleet of|panicked|test result" || true
        done
    done
done
