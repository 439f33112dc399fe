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
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
baseline="${1:-}"
requests="${2:-5000}"
bin="${BIN_DIR:-$repo/target/release}"
out="$repo/target/bench/tracing-cost-$(date -u +%Y%m%dT%H%M%S)"
mkdir -p "$out"
url_path=/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit
pid=""
cleanup() { [[ -n "$pid" ]] && kill "$pid" 2>/dev/null || true; }
trap cleanup EXIT

"$bin/tollgate-load" make-h2load-body --domain loadtest --descriptors 2 --out "$out/req.bin" >/dev/null

ok_count() {
    curl -sf "http://127.0.0.1:$1/metrics" | awk '/^tollgate_requests_total\{code="OK"\}/ {print $2}'
}

measure() { # label binary extra-args...
    local label=$1 binary=$2; shift 2
    local grpc=18181 http=18180
    valgrind --tool=callgrind --callgrind-out-file="$out/callgrind.$label" \
        "$binary" serve --config "$repo/scripts/bench/bench-config.yaml" \
        --grpc-addr "127.0.0.1:$grpc" --http-addr "127.0.0.1:$http" --log-level warn "$@" \
        2>"$out/$label.log" &
    pid=$!
    for _ in $(seq 600); do curl -sf -o /dev/null "http://127.0.0.1:$http/readyz" && break; sleep 0.1; done
    h2() {
        timeout 600 h2load -t 1 -n "$1" -c 1 -m 10 -d "$out/req.bin" \
            -H 'content-type: application/grpc' -H 'te: trailers' "http://127.0.0.1:$grpc$url_path" \
            | grep -E '^(finished|requests)'
    }
    h2 500 >/dev/null
    sleep 1
    callgrind_control -z "$pid" >/dev/null
    local before; before=$(ok_count "$http")
    h2 "$requests" >"$out/$label.h2load.txt"
    local after; after=$(ok_count "$http")
    callgrind_control -d "$pid" >/dev/null
    sleep 1
    kill "$pid"; wait "$pid" 2>/dev/null || true; pid=""
    # The first explicit dump (.1) holds exactly the measured calls; the file written at exit
    # holds only the shutdown.
    local dump="$out/callgrind.$label.1"
    local total; total=$(callgrind_annotate "$dump" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1; exit}')
    local calls=$((${after%.*} - ${before%.*}))
    printf '%-9s %12s instructions / %6d calls = %8d per call\n' "$label" "$total" "$calls" $((total / calls)) \
        | tee -a "$out/summary.txt"
}

[[ -n "$baseline" ]] && measure baseline "$baseline"
measure off "$bin/tollgate"
measure on "$bin/tollgate" --otlp-endpoint http://127.0.0.1:18199 --otlp-sampling-ratio 1.0
echo "summary: $out/summary.txt"
