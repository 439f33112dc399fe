#!/usr/bin/env bash
# Instructions per ShouldRateLimit under callgrind with the OTLP metrics push off and on:
# the request path must cost the same; the push costs its own task, once per interval.
#
#   scripts/bench/otlp-metrics-cost.sh [REQUESTS]
#
# Runs target/release/tollgate under `valgrind --tool=callgrind` with
# scripts/bench/bench-config.yaml and h2load (1 connection x 10 streams, 2 descriptors, one
# fixed key), three times:
#   off      no --otlp-metrics-endpoint
#   idle     --otlp-metrics-endpoint, --otlp-metrics-interval 1h (the option on, no push falls
#            inside the measured window)
#   pushing  --otlp-metrics-endpoint, --otlp-metrics-interval 1s (a push every second during
#            the window; nothing listens there, so each push renders, maps, and fails to
#            connect: the collector-down case)
# Counters are zeroed after a warm-up and dumped after REQUESTS (default 3000) calls. Two
# figures per run, over the calls counted by tollgate_requests_total{code="OK"}: the whole
# process's instructions per call (includes the push task), and the inclusive instructions of
# `tollgate::rls::decide` per call (the request path's own work, whatever else runs).
# Output under target/bench/otlp-metrics-cost-<time>/.
set -euo pipefail
name=otlp-metrics-cost
requests="${1:-3000}"
source "$(dirname "${BASH_SOURCE[0]}")/callgrind-serve.sh"

measure() { # label extra-args...
    local label=$1; shift
    serve_counted "$label" "$bin/tollgate" "$@"
    printf '%-8s %8d calls: %8d instructions per call (process), %8d per call in rls::decide\n' \
        "$label" "$calls" $((total / calls)) $((decide / calls)) | tee -a "$out/summary.txt"
}

measure off
measure idle --otlp-metrics-endpoint http://127.0.0.1:18198 --otlp-metrics-interval 1h
measure pushing --otlp-metrics-endpoint http://127.0.0.1:18198 --otlp-metrics-interval 1s
echo "summary: $out/summary.txt"
