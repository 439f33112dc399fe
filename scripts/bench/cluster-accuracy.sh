#!/usr/bin/env bash
# Over-admission E = admitted - (C + r*T) on a 3-node loopback cluster, per traffic scenario
# of the design (shared/design/replicated-bucket.md section 4): even split, hot node, cold
# synchronized burst with and without the burst guard, and a partition {n3} / {n4, n5} with
# fair share and without it (full limit per side).
# Usage: scripts/bench/cluster-accuracy.sh [TOLLGATE_BIN] [TOLLGATE_LOAD_BIN]
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=${1:-target/release/tollgate}
LOAD=${2:-target/release/tollgate-load}
dir=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  pids=()
}
trap 'cleanup; rm -rf "$dir"' EXIT
echo "domain: loadtest" > "$dir/limits.yaml"
echo "descriptors: []" >> "$dir/limits.yaml"

# Peer links of n3 go through proxies that can cut n3 off; n4 <-> n5 are direct. Nodes
# advertise no address, so no node learns a direct path around the proxies.
proxy=(19034:18482:cut 19035:18582:cut 19043:18382:cut 19053:18382:cut)
peers_of=([3]=127.0.0.1:19034,127.0.0.1:19035 [4]=127.0.0.1:19043,127.0.0.1:18582
  [5]=127.0.0.1:19053,127.0.0.1:18482)
proxy_pid=
start_cluster() {
  python3 scripts/bench/partition_proxy.py "${proxy[@]}" 2>"$dir/proxy.log" & proxy_pid=$!
  pids+=("$proxy_pid")
  for i in 3 4 5; do
    "$BIN" serve --config "$dir" --grpc-addr 127.0.0.1:18${i}81 --http-addr 127.0.0.1:18${i}80 \
      --peer-addr 127.0.0.1:18${i}82 --peers "${peers_of[$i]}" --peer-advertise-addr none \
      --node-id "n$i" --sync-interval 20ms --log-level error "$@" & pids+=($!)
  done
  for i in 3 4 5; do
    for _ in $(seq 200); do curl -sf 127.0.0.1:18${i}80/readyz >/dev/null && break; sleep 0.05; done
  done
  # Until every member is up and caught up the first nodes serve fair shares: wait it out.
  for i in 3 4 5; do
    for _ in $(seq 100); do
      curl -sf 127.0.0.1:18${i}80/metrics | grep -q '^tollgate_fair_share_mode 0' && break
      sleep 0.05
    done
  done
}

targets=http://127.0.0.1:18381,http://127.0.0.1:18481,http://127.0.0.1:18581
# r = 100/s, C = 100, limit sent as a per-request override (no config needed).
common=(--targets "$targets" --limit 100/second --override --keys hot --descriptors 1 --no-progress)
show() { grep -E "accuracy|total|requests|target"; }

echo "### even-split, 600 req/s offered for 10 s"
start_cluster
"$LOAD" scenario even-split "${common[@]}" --rate 600 --duration 10s | show
cleanup

echo "### hot-node, 600 req/s on one node for 10 s"
start_cluster
"$LOAD" scenario hot-node "${common[@]}" --rate 600 --duration 10s | show
cleanup

for guard in true false; do
  echo "### cold-burst, 200 requests per node at the same instant, --burst-guard $guard"
  start_cluster --burst-guard "$guard"
  "$LOAD" scenario cold-burst "${common[@]}" --per-target 200 | show
  cleanup
done

# Partition {n3} / {n4, n5} from 3 s to 8 s of a 12 s run at 600 req/s (r T = 1200, C = 100).
# Fair share (default --peer-timeout 500ms) against each side deciding on the whole limit
# (a peer timeout never reached and no burst guard) and against the guard alone (no fair
# share: unacknowledged consumption stalls on each side until the heal).
for mode in fair-share full-limit-per-side guard-without-fair-share; do
  echo "### partition {n3}/{n4,n5} for 5 s of 12 s, 600 req/s even split, $mode"
  case $mode in
    fair-share) start_cluster ;;
    full-limit-per-side) start_cluster --peer-timeout 1h --burst-guard false ;;
    guard-without-fair-share) start_cluster --peer-timeout 1h ;;
  esac
  ( sleep 3; kill -USR1 "$proxy_pid"; sleep 5; kill -USR2 "$proxy_pid" ) & cutter=$!
  "$LOAD" scenario partition "${common[@]}" --rate 600 --duration 12s | show
  wait "$cutter" || true
  curl -s 127.0.0.1:18380/metrics | grep -E '^tollgate_fair_share_mode_entered_total' || true
  cleanup
done
