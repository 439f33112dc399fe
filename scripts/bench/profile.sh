#!/usr/bin/env bash
# Profile of tollgate under load (BENCHMARKS.md figure 8), with perf's cpu-clock software event
# (this VM exposes no hardware counters: `perf stat -e instructions` says <not supported>).
#
#   scripts/bench/profile.sh [SECONDS]        # default 10; needs perf (apt-get install linux-perf)
#
# Starts tollgate (scripts/bench/bench-config.yaml, 1e9/s rule: every descriptor decided) and, for
# comparison, the no-op server on the same tonic stack; drives each with h2load (10 connections x
# 10 streams, 2 descriptors) while `perf record` samples only that server's pid; prints the top
# symbols by self time for both, then tollgate's top entries by inclusive time (DWARF call graphs).
# Output and perf.data files under target/bench/profile-<time>/. Stops only what it started.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
secs="${1:-10}"
bin="${BIN_DIR:-$repo/target/release}"
out="$repo/target/bench/profile-$(date -u +%Y%m%dT%H%M%S)"
mkdir -p "$out"
grpc=18081 http=18080 noop_port=18091
url_path=/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

"$bin/tollgate-load" make-h2load-body --domain loadtest --descriptors 2 --out "$out/req.bin" >/dev/null

h2() {
    timeout $((secs + 30)) h2load -t 1 -D "$secs" -c 10 -m 10 -d "$out/req.bin" \
        -H 'content-type: application/grpc' -H 'te: trailers' "http://127.0.0.1:$1$url_path" \
        | grep -E '^(finished|requests|status codes)'
}

wait_http() { for _ in $(seq 100); do curl -sf -o /dev/null "$1" && return 0; sleep 0.05; done; return 1; }
wait_tcp() { for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done; return 1; }

profile() { # name pid port callgraph-args...
    local name=$1 pid=$2 port=$3; shift 3
    timeout $((secs + 60)) perf record -q -e cpu-clock -F 999 "$@" -p "$pid" -o "$out/$name.data" \
        -- sleep "$secs" 2>"$out/$name.perf.err" &
    local perf_pid=$!
    h2 "$port" | tee "$out/$name.h2load.txt"
    wait "$perf_pid" || true
}

"$bin/tollgate" --config "$repo/scripts/bench/bench-config.yaml" --grpc-addr "127.0.0.1:$grpc" \
    --http-addr "127.0.0.1:$http" --log-level warn >"$out/tollgate.log" 2>&1 &
tg=$!; pids+=("$tg")
"$bin/tollgate-load" noop-server --addr "127.0.0.1:$noop_port" >"$out/noop.log" 2>&1 &
noop=$!; pids+=("$noop")
wait_http "http://127.0.0.1:$http/readyz"; wait_tcp "$noop_port"

echo "== tollgate, flat (self time by symbol) =="
profile tollgate-flat "$tg" "$grpc"
perf report -i "$out/tollgate-flat.data" --no-children --sort symbol --percent-limit 0.7 \
    --stdio 2>/dev/null | grep -v '^#' | grep -v '^$' >"$out/tollgate-flat.txt" || true
head -45 "$out/tollgate-flat.txt"
echo "== tollgate, by shared object =="
perf report -i "$out/tollgate-flat.data" --no-children --sort dso --stdio 2>/dev/null \
    | grep -v '^#' | grep -v '^$' >"$out/tollgate-dso.txt" || true
head -8 "$out/tollgate-dso.txt"

echo "== noop server, flat =="
profile noop-flat "$noop" "$noop_port"
perf report -i "$out/noop-flat.data" --no-children --sort symbol --percent-limit 0.7 \
    --stdio 2>/dev/null | grep -v '^#' | grep -v '^$' >"$out/noop-flat.txt" || true
head -30 "$out/noop-flat.txt"
perf report -i "$out/noop-flat.data" --no-children --sort dso --stdio 2>/dev/null \
    | grep -v '^#' | grep -v '^$' >"$out/noop-dso.txt" || true
head -4 "$out/noop-dso.txt"

echo "== tollgate, inclusive time (DWARF call graphs) =="
profile tollgate-graph "$tg" "$grpc" --call-graph dwarf,16384
perf script -i "$out/tollgate-graph.data" -F tid,ip,sym 2>/dev/null >"$out/tollgate-graph.script"
python3 "$repo/scripts/bench/perf_breakdown.py" "$out/tollgate-graph.script" | tee "$out/tollgate-breakdown.txt"
echo "== noop server, inclusive =="
profile noop-graph "$noop" "$noop_port" --call-graph dwarf,16384
perf script -i "$out/noop-graph.data" -F tid,ip,sym 2>/dev/null >"$out/noop-graph.script"
python3 "$repo/scripts/bench/perf_breakdown.py" "$out/noop-graph.script" >"$out/noop-breakdown.txt" || true
head -19 "$out/noop-breakdown.txt"
echo "raw: $out"
