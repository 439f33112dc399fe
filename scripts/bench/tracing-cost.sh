#!/usr/bin/env bash
# Instructions per ShouldRateLimit under callgrind (deterministic, whatever else the machine
# does): what tracing costs on the request path, off and on.
#
#   scripts/bench/tracing-cost.sh [BASELINE_BIN] [REQUESTS]
#
# Runs, each under `valgrind --tool=callgrind` with scripts/bench/bench-config.yaml and h2load
# (1 connection x 10 streams, 2 descriptors, one fixed key):
#   baseline  BASELINE_BIN (e.g. a build of the commit before tracing), when given
#   off       target/release/tollgate, no --otlp-endpoint
#   on        target/release/tollgate --otlp-endpoint (nothing listens there: spans are made,
#             sampled and batched, and the export fails, which is the collector-down case)
# Counters are zeroed after a warm-up and dumped after REQUESTS (default 5000) calls; the
# figure is the program's total instructions over the calls counted by tollgate's own
# tollgate_requests_total{code="OK"} delta. Output under target/bench/tracing-cost-<time>/.
set -euo pipefail
name=tracing-cost
baseline="${1:-}"
requests="${2:-5000}"
source "$(dirname "${BASH_SOURCE[0]}")/callgrind-serve.sh"

measure() { # label binary extra-args...
    serve_counted "$@"
    printf '%-9s %12s instructions / %6d calls = %8d per call\n' "$1" "$total" "$calls" $((total / calls)) \
        | tee -a "$out/summary.txt"
}

[[ -n "$baseline" ]] && measure baseline "$baseline"
measure off "$bin/tollgate"
measure on "$bin/tollgate" --otlp-endpoint http://127.0.0.1:18199 --otlp-sampling-ratio 1.0
echo "summary: $out/summary.txt"
