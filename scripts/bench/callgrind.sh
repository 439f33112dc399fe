#!/usr/bin/env bash
# Instructions per ShouldRateLimit call, counted by callgrind (deterministic, whatever else the
# machine does): tollgate's whole process, the no-op server's (same tonic stack, answers OK),
# and tollgate's limiter alone (Limiter::should_rate_limit inclusive: validate, resolve,
# decide, account, respond). Every request has 2 descriptors (tollgate-load make-h2load-body),
# on scripts/bench/bench-config.yaml's 1e9/s rules, so every descriptor is decided.
#
#   scripts/bench/callgrind.sh [REQUESTS]     # default 2000, after 200 warm-up requests
#
# Needs valgrind and h2load (scripts/setup-tools) and a release build (cargo build --release).
# Output: one line per figure; raw callgrind files under target/bench/callgrind-<time>/.
# Stops only what it started.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
n="${1:-2000}"
warm=200
bin="${BIN_DIR:-$repo/target/release}"
out="$repo/target/bench/callgrind-$(date -u +%Y%m%dT%H%M%S)"
mkdir -p "$out"
grpc=18181 http=18180 noop_port=18191
url_path=/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

"$bin/tollgate-load" make-h2load-body --domain loadtest --descriptors 2 --out "$out/req.bin" >/dev/null

load() { # port requests
    timeout 600 h2load -t 1 -c 1 -m 1 -n "$2" -d "$out/req.bin" \
        -H 'content-type: application/grpc' -H 'te: trailers' "http://127.0.0.1:$1$url_path" \
        >"$out/h2load.$1.$2.txt"
    grep -q " $2 succeeded, 0 failed" "$out/h2load.$1.$2.txt" \
        || { echo "h2load failed:" >&2; cat "$out/h2load.$1.$2.txt" >&2; exit 1; }
}
wait_tcp() { for _ in $(seq 1200); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; return 1; }

# The Ir total of the explicit dump (`callgrind_control -d` writes PREFIX.PID.1; the file
# written at exit, PREFIX.PID, holds only what ran after it, the shutdown).
total() { # file-prefix
    local f
    f=$(ls "$1".*.1 | head -1)
    awk '/^(summary|totals):/ { v = $2 } END { print v }' "$f"
}

measure() { # name port collect-args -- command...
    local name=$1 port=$2; shift 2
    local args=()
    while [ "$1" != "--" ]; do args+=("$1"); shift; done
    shift
    valgrind --tool=callgrind "${args[@]}" \
        --callgrind-out-file="$out/$name.%p" "$@" >"$out/$name.log" 2>&1 &
    local pid=$!; pids+=("$pid")
    wait_tcp "$port"
    load "$port" "$warm"
    callgrind_control -z "$pid" >/dev/null
    load "$port" "$n"
    callgrind_control -d "$pid" >/dev/null
    sleep 1
    kill "$pid"; wait "$pid" 2>/dev/null || true
    echo $(( $(total "$out/$name") / n ))
}

tg=("$bin/tollgate" --config "$repo/scripts/bench/bench-config.yaml" --grpc-addr "127.0.0.1:$grpc"
    --http-addr "127.0.0.1:$http" --log-level warn)
whole=$(measure tollgate "$grpc" -- "${tg[@]}")
noop=$(measure noop "$noop_port" -- "$bin/tollgate-load" noop-server --addr "127.0.0.1:$noop_port")
limiter=$(measure limiter "$grpc" "--toggle-collect=tollgate::limiter::Limiter::should_rate_limit*" \
    --collect-atstart=no -- "${tg[@]}")
echo "requests measured: $n (2 descriptors each, after $warm warm-up)"
echo "tollgate instructions/request: $whole"
echo "noop     instructions/request: $noop"
awk -v a="$whole" -v b="$noop" 'BEGIN { printf "ratio tollgate/noop: %.3f\n", a / b }'
echo "limiter  instructions/request: $limiter   (Limiter::should_rate_limit, inclusive)"
echo "raw: $out"
