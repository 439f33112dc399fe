#!/usr/bin/env bash
# Over-admission E = admitted - (C + r*T) on a 3-node loopback cluster, per traffic scenario.
# Usage: scripts/bench/cluster-accuracy.sh [TOLLGATE_BIN] [TOLLGATE_LOAD_BIN]
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=${1:-target/release/tollgate}
LOAD=${2:-target/release/tollgate-load}
dir=$(mktemp -d)
pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$dir"' EXIT
echo "domain: loadtest" > "$dir/limits.yaml"
echo "descriptors: []" >> "$dir/limits.yaml"
peers=127.0.0.1:18382,127.0.0.1:18482,127.0.0.1:18582
for i in 3 4 5; do
  "$BIN" serve --config "$dir" --grpc-addr 127.0.0.1:18${i}81 --http-addr 127.0.0.1:18${i}80 \
    --peer-addr 127.0.0.1:18${i}82 --peers "$peers" --node-id "n$i" --sync-interval 20ms \
    --log-level warn & pids+=($!)
done
for i in 3 4 5; do
  for _ in $(seq 200); do curl -sf 127.0.0.1:18${i}80/readyz >/dev/null && break; sleep 0.05; done
done
targets=http://127.0.0.1:18381,http://127.0.0.1:18481,http://127.0.0.1:18581
# r = 100/s, C = 100, limit sent as a per-request override (no config needed).
common=(--targets "$targets" --limit 100/second --override --keys hot --descriptors 1 --no-progress)
echo "### even-split, 600 req/s offered for 10 s"
"$LOAD" scenario even-split "${common[@]}" --rate 600 --duration 10s | grep -E "accuracy|total|requests"
echo "### hot-node, 600 req/s on one node for 10 s"
"$LOAD" scenario hot-node "${common[@]}" --rate 600 --duration 10s | grep -E "accuracy|total|requests"
echo "### cold-burst, 200 requests per node at the same instant"
"$LOAD" scenario cold-burst "${common[@]}" --per-target 200 | grep -E "accuracy|total|requests"
