#!/usr/bin/env bash
# Figure 3's explanation: perf profiles of tollgate under a hot key and under 1M distinct keys
# (closed loop, 1 descriptor), to compare Store::decide against scheduler costs.
#
#   scripts/bench/profile-keys.sh [SECONDS]     # default 8; output under target/bench/profile-keys-<time>/
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
secs="${1:-8}"
bin="${BIN_DIR:-$repo/target/release}"
out="$repo/target/bench/profile-keys-$(date -u +%Y%m%dT%H%M%S)"
mkdir -p "$out"
"$bin/tollgate" --config "$repo/scripts/bench/bench-config.yaml" --grpc-addr 127.0.0.1:18081 \
    --http-addr 127.0.0.1:18080 --log-level warn --gc-horizon 30m >"$out/tollgate.log" 2>&1 &
tg=$!
trap 'kill "$tg" 2>/dev/null || true' EXIT
for _ in $(seq 100); do curl -sf -o /dev/null http://127.0.0.1:18080/readyz && break; sleep 0.05; done

run() { timeout $((secs + 60)) "$bin/tollgate-load" run --target 127.0.0.1:18081 --descriptors 1 \
    --no-progress --json "$@"; }
# Create most of the 1M keys first (~2M requests: ~86 %).
run --keys uniform:1000000 --key-tag m1 --duration 25s >"$out/warmup.json"
for mode in hot uniform; do
    if [[ $mode == hot ]]; then keys=(--keys hot); else keys=(--keys uniform:1000000 --key-tag m1 --seed 77); fi
    timeout $((secs + 60)) perf record -q -e cpu-clock -F 999 -p "$tg" -o "$out/$mode.data" -- sleep "$secs" 2>/dev/null &
    perf_pid=$!
    run "${keys[@]}" --duration "${secs}s" >"$out/$mode.json"
    wait "$perf_pid" || true
    python3 -c 'import json,sys; j=json.load(open(sys.argv[1])); print(sys.argv[2], round(j["throughput_rps"]), "req/s")' \
        "$out/$mode.json" "$mode"
    perf report -i "$out/$mode.data" --no-children --sort symbol --stdio 2>/dev/null | grep -v '^#' \
        | grep -v '^$' >"$out/$mode.txt" || true
    head -15 "$out/$mode.txt" | cut -c1-110
    echo "  ..."
    grep -E 'Store::decide|finish_task_switch|_raw_spin_unlock_irqrestore|lock_contended|lock_slow' \
        "$out/$mode.txt" | cut -c1-110 || true
done
echo "raw: $out"
