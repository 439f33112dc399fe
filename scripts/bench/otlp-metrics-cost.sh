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
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
requests="${1:-3000}"
bin="${BIN_DIR:-$repo/target/release}"
out="$repo/target/bench/otlp-metrics-cost-$(date -u +%Y%m%dT%H%M%S)"
mkdir -p "$out"
url_path=/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit
pid=""
cleanup() { [[ -n "$pid" ]] && kill "$pid" 2>/dev/null || true; }
trap cleanup EXIT

"$bin/tollgate-load" make-h2load-body --domain loadtest --descriptors 2 --out "$out/req.bin" >/dev/null

ok_count() {
    curl -sf "http://127.0.0.1:$1/metrics" | awk '/^tollgate_requests_total\{code="OK"\}/ {print $2}'
}

measure() { # label extra-args...
    local label=$1; shift
    local grpc=18181 http=18180
    valgrind --tool=callgrind --callgrind-out-file="$out/callgrind.$label" \
        "$bin/tollgate" serve --config "$repo/scripts/bench/bench-config.yaml" \
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
    local dump="$out/callgrind.$label.1"
    callgrind_annotate --inclusive=yes "$dump" >"$out/$label.annotate.txt" 2>/dev/null || true
    local total; total=$(awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1; exit}' "$out/$label.annotate.txt")
    local decide; decide=$(awk '/ src\/rls.rs:tollgate::rls::decide \[/ {gsub(",", "", $1); print $1; exit}' "$out/$label.annotate.txt")
    local calls=$((${after%.*} - ${before%.*}))
    printf '%-8s %8d calls: %8d instructions per call (process), %8d per call in rls::decide\n' \
        "$label" "$calls" $((total / calls)) $((${decide:-0} / calls)) | tee -a "$out/summary.txt"
}

measure off
measure idle --otlp-metrics-endpoint http://127.0.0.1:18198 --otlp-metrics-interval 1h
measure pushing --otlp-metrics-endpoint http://127.0.0.1:18198 --otlp-metrics-interval 1s
echo "summary: $out/summary.txt"
