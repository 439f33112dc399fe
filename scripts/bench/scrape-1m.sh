#!/usr/bin/env bash
# Time of a /metrics scrape with ~1M live keys (issue: scrapes must not scan the key table).
# Usage: scripts/bench/scrape-1m.sh [TOLLGATE_BIN] [TOLLGATE_LOAD_BIN]
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=${1:-target/release/tollgate}
LOAD=${2:-target/release/tollgate-load}
dir=$(mktemp -d)
trap 'kill "$pid" 2>/dev/null || true; rm -rf "$dir"' EXIT
cat > "$dir/limits.yaml" <<'YAML'
domain: loadtest
descriptors:
  - key: user
    rate_limit: {unit: second, requests_per_unit: 1000000000}
YAML
"$BIN" serve --config "$dir" --grpc-addr 127.0.0.1:18181 --http-addr 127.0.0.1:18180 \
  --gc-horizon 30m --log-level warn & pid=$!
for _ in $(seq 100); do curl -sf 127.0.0.1:18180/readyz >/dev/null && break; sleep 0.05; done
scrape() { curl -s -o /dev/null -w '%{time_total}\n' 127.0.0.1:18180/metrics; }
echo "empty store: scrape seconds: $(for _ in 1 2 3 4 5; do scrape; done | sort -n | sed -n 3p) (median of 5)"
"$LOAD" run --target http://127.0.0.1:18181 --keys uniform:1000000 --requests 3000000 \
  --descriptors 1 --descriptor-key user --domain loadtest --connections 4 --streams 32 \
  --no-progress > "$dir/load.txt"
keys=$(curl -s 127.0.0.1:18180/metrics | awk '/^tollgate_live_keys /{print $2}')
echo "live keys: $keys"
echo "loaded store: scrape seconds: $(for _ in 1 2 3 4 5; do scrape; done | sort -n | sed -n 3p) (median of 5)"
