# Sourced by tracing-cost.sh and otlp-metrics-cost.sh: one way to count the instructions of
# ShouldRateLimit calls in a tollgate process under callgrind, so that the two compare alike.
#
# Before sourcing, set `name` (the output folder's prefix) and `requests`. Defines `repo`,
# `bin`, `out` (target/bench/NAME-<time>/, with the request body req.bin) and
#   serve_counted LABEL BINARY ARGS...
# which runs BINARY serve on scripts/bench/bench-config.yaml under `valgrind --tool=callgrind`
# with ARGS, warms it up (500 calls), zeroes the counters, drives REQUESTS calls with h2load
# (1 connection x 10 streams, 2 descriptors, one fixed key), dumps and stops it, and sets
#   calls   the calls counted by tollgate_requests_total{code="OK"} over the measured window
#   total   the process's instructions over that window
#   decide  the inclusive instructions of tollgate::rls::decide (the request path's own work)
# Files: $out/LABEL.log, $out/LABEL.h2load.txt, $out/callgrind.LABEL*, $out/LABEL.annotate.txt.
# Stops only what it started.

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
bin="${BIN_DIR:-$repo/target/release}"
out="$repo/target/bench/$name-$(date -u +%Y%m%dT%H%M%S)"
mkdir -p "$out"
url_path=/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit
pid=""
cleanup() { [[ -n "$pid" ]] && kill "$pid" 2>/dev/null || true; }
trap cleanup EXIT

"$bin/tollgate-load" make-h2load-body --domain loadtest --descriptors 2 --out "$out/req.bin" >/dev/null

ok_count() {
    curl -sf "http://127.0.0.1:$1/metrics" | awk '/^tollgate_requests_total\{code="OK"\}/ {print $2}'
}

h2() { # port requests
    timeout 600 h2load -t 1 -n "$2" -c 1 -m 10 -d "$out/req.bin" \
        -H 'content-type: application/grpc' -H 'te: trailers' "http://127.0.0.1:$1$url_path" \
        | grep -E '^(finished|requests)'
}

serve_counted() { # label binary extra-args...
    local label=$1 binary=$2; shift 2
    local grpc=18181 http=18180
    valgrind --tool=callgrind --callgrind-out-file="$out/callgrind.$label" \
        "$binary" serve --config "$repo/scripts/bench/bench-config.yaml" \
        --grpc-addr "127.0.0.1:$grpc" --http-addr "127.0.0.1:$http" --log-level warn "$@" \
        2>"$out/$label.log" &
    pid=$!
    for _ in $(seq 600); do curl -sf -o /dev/null "http://127.0.0.1:$http/readyz" && break; sleep 0.1; done
    h2 "$grpc" 500 >/dev/null
    sleep 1
    callgrind_control -z "$pid" >/dev/null
    local before; before=$(ok_count "$http")
    h2 "$grpc" "$requests" >"$out/$label.h2load.txt"
    local after; after=$(ok_count "$http")
    callgrind_control -d "$pid" >/dev/null
    sleep 1
    kill "$pid"; wait "$pid" 2>/dev/null || true; pid=""
    # The first explicit dump (.1) holds exactly the measured calls; the file written at exit
    # holds only the shutdown.
    callgrind_annotate --inclusive=yes "$out/callgrind.$label.1" >"$out/$label.annotate.txt" 2>/dev/null || true
    total=$(awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1; exit}' "$out/$label.annotate.txt")
    decide=$(awk '/ src\/rls.rs:tollgate::rls::decide \[/ {gsub(",", "", $1); print $1; exit}' "$out/$label.annotate.txt")
    decide=${decide:-0}
    calls=$((${after%.*} - ${before%.*}))
}
