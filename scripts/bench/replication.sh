#!/usr/bin/env bash
# Replication bandwidth and resync time on real processes, 127.0.0.1 only (BENCHMARKS.md,
# "Replication: bandwidth and resync").
#
# 1. Bandwidth per changed key: 3 nodes in a full mesh (--peers, --sync-interval 20ms);
#    tollgate-load drives node n1 alone, open loop for $DURATION, one descriptor: 10k req/s over
#    10k keys, 2k / 10k / 20k req/s over 100k keys, 10k req/s on one hot key. /metrics of every
#    node before and after each case: tollgate_replication_{frames,keys,bytes}_sent_total per
#    peer -> bytes per key, keys per frame, keys/s and bytes/s per link (relays n2 <-> n3 too).
# 2. Resync time: node A alone (--peers lists only itself: replication on, nobody to wait for),
#    filled with ~N live keys under a 100/day rule (each hit keeps a bucket below full for
#    14 min: with 100/hour, keys hit once more than 36 s before the snapshot read as full and B
#    drops them on arrival; --gc-horizon 1h), then node B starts with --peers A,B and
#    --sync-timeout 120s (A learns B from its Hello and dials back). Time from B's exec to B's
#    /readyz 200 (B is not ready before it holds A's snapshot), snapshot bytes, live keys on B,
#    CPU and VmHWM of both. RESYNC_A_PEERS=both lists B in A's --peers too: A then runs with a
#    peer down during the fill (fair-share mode since afc9b07) and its link to B waits out its
#    reconnect backoff (up to 1 s) when B comes up.
#
# Usage: scripts/bench/replication.sh [TOLLGATE_BIN] [TOLLGATE_LOAD_BIN]
#   env: CASES (see below; empty: skip part 1), DURATION (10s), RESYNC_KEYS ("100000 1000000"),
#        RESYNC_A_PEERS (self | both), OUT (target/bench/...)
# Raw scrapes, load JSON, server logs and output.txt are kept under $OUT. ~2 min on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=${1:-target/release/tollgate}
LOAD=${2:-target/release/tollgate-load}
# name:keys:rate (req/s, open loop) of each bandwidth case
CASES=${CASES:-"u10k:uniform:10000:10000 u100k:uniform:100000:10000 u100k-2k:uniform:100000:2000 u100k-20k:uniform:100000:20000 hot:hot:10000"}
DURATION=${DURATION:-10s}
RESYNC_KEYS=${RESYNC_KEYS:-"100000 1000000"}
RESYNC_A_PEERS=${RESYNC_A_PEERS:-self}
SYNC_INTERVAL_MS=20
OUT=${OUT:-target/bench/replication-$(date -u +%Y%m%d-%H%M%S)}
HELPER=scripts/bench/repl_metrics.py
mkdir -p "$OUT"
exec > >(tee "$OUT/output.txt") 2>&1
tmp=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$tmp"
}
trap cleanup EXIT

for p in 18680 18681 18682 18690 18691 18692 18780 18781 18782 18880 18881 18882 18980 18981 18982; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
    echo "replication.sh: port $p on 127.0.0.1 is in use" >&2; exit 1
  fi
done

now_ns() { date +%s%N; }
since() { awk -v a="$1" -v b="$(now_ns)" 'BEGIN { printf "%.3f", (b - a) / 1e9 }'; }
# wait_ready HTTP_PORT SECONDS: poll /readyz every ~10 ms; fails after SECONDS.
wait_ready() {
  local end=$(( $(now_ns) + $2 * 1000000000 ))
  until curl -sf -o /dev/null "127.0.0.1:$1/readyz"; do
    (( $(now_ns) < end )) || { echo "replication.sh: :$1 not ready after $2 s" >&2; return 1; }
    sleep 0.01
  done
}
scrape() { curl -sf "127.0.0.1:$1/metrics" > "$2"; }
status() { awk -v k="$2:" '$1 == k {print $2 " " $3}' "/proc/$1/status"; }
# CPU time (user + system) of a process, in clock ticks; the comm field may hold spaces.
ticks() { sed 's/.*) //' "/proc/$1/stat" | awk '{print $12 + $13}'; }
stop() {  # SIGTERM one server we started, wait for it (handoff bounded by --shutdown-timeout)
  kill "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
}

{
  echo "date: $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
  echo "nproc: $(nproc); cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')"
  echo "kernel: $(uname -r); loadavg at start: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "tollgate: $("$BIN" --version); sha256 $(sha256sum "$BIN" | cut -c1-12)"
  echo "bandwidth cases: $CASES; duration: $DURATION; resync keys: $RESYNC_KEYS; A's peers: $RESYNC_A_PEERS"
} | tee "$OUT/machine.txt"
echo

# ---------------------------------------------------------------------------------------------
# 1. Bandwidth per changed key, 3-node mesh.
# ---------------------------------------------------------------------------------------------
if [[ -n $CASES ]]; then  # (not indented: heredoc below) ... fi after the cases
mkdir -p "$tmp/bw"
# Refill 1 token/s, capacity 1M: no request is ever refused, and a key stays below full for
# ~1 s per hit, so peers keep what they receive (a state that reads as a full bucket is dropped
# on arrival for an absent key: with a 1e9/s rule the peers would hold nothing).
cat > "$tmp/bw/limits.yaml" <<'YAML'
domain: loadtest
descriptors:
  - key: user
    rate_limit: {unit: hour, requests_per_unit: 3600, burst: 1000000}
YAML
nodes=(n1 n2 n3)
declare -A http grpc peer pid
mesh=127.0.0.1:18782,127.0.0.1:18882,127.0.0.1:18982
i=7
for n in "${nodes[@]}"; do
  http[$n]=18${i}80; grpc[$n]=18${i}81; peer[$n]=127.0.0.1:18${i}82
  echo "${peer[$n]}" > "$OUT/$n.peer"
  "$BIN" serve --config "$tmp/bw" --grpc-addr "127.0.0.1:${grpc[$n]}" \
    --http-addr "127.0.0.1:${http[$n]}" --peer-addr "${peer[$n]}" --peers "$mesh" \
    --node-id "$n" --sync-interval ${SYNC_INTERVAL_MS}ms --gc-horizon 30m --log-level warn \
    2> "$OUT/$n.log" & pid[$n]=$!; pids+=("${pid[$n]}")
  i=$((i + 1))
done
for n in "${nodes[@]}"; do wait_ready "${http[$n]}" 20; done
sleep 1  # every link up (each node dials the other two)
echo "## 1. bandwidth: 3 nodes, load on n1 only, open loop for $DURATION per case, sync ${SYNC_INTERVAL_MS} ms"
for case in $CASES; do
  name=${case%%:*}; rest=${case#*:}; rate=${rest##*:}; keys=${rest%:*}
  for n in "${nodes[@]}"; do scrape "${http[$n]}" "$OUT/$name-$n-before.prom"; done
  t0=$(now_ns)
  "$LOAD" run --target "http://127.0.0.1:${grpc[n1]}" --rate "$rate" --duration "$DURATION" \
    --keys "$keys" --descriptors 1 --descriptor-key user --domain loadtest \
    --connections 2 --streams 16 --json --no-progress > "$OUT/$name-load.json"
  sleep 1  # last ticks and their relays go out
  for n in "${nodes[@]}"; do scrape "${http[$n]}" "$OUT/$name-$n-after.prom"; done
  since "$t0" > "$OUT/$name-window"
  python3 "$HELPER" bandwidth "$OUT" "$name" "0.$(printf %03d $SYNC_INTERVAL_MS)" "${nodes[@]}" \
    | tee "$OUT/$name.txt"
done
for n in "${nodes[@]}"; do stop "${pid[$n]}"; done
pids=()
fi

# ---------------------------------------------------------------------------------------------
# 2. Resync: A holds ~N keys, B starts empty; B exec -> B ready.
# ---------------------------------------------------------------------------------------------
mkdir -p "$tmp/rs"
cat > "$tmp/rs/limits.yaml" <<'YAML'
domain: resync
descriptors:
  - key: user
    rate_limit: {unit: day, requests_per_unit: 100}
  - key: path
    rate_limit: {unit: day, requests_per_unit: 100}
  - key: user1
    rate_limit: {unit: day, requests_per_unit: 100}
  - key: path1
    rate_limit: {unit: day, requests_per_unit: 100}
YAML
a_peer=127.0.0.1:18682; b_peer=127.0.0.1:18692
common=(--config "$tmp/rs" --gc-horizon 1h --log-format json --log-level info)
case $RESYNC_A_PEERS in
  self) a_peers=$a_peer ;;
  both) a_peers=$a_peer,$b_peer ;;
  *) echo "replication.sh: RESYNC_A_PEERS is self or both" >&2; exit 1 ;;
esac
echo "## 2. resync: A alone (--peers $a_peers) with ~N keys, then B starts (--peers $a_peer,$b_peer --sync-timeout 120s)"
for N in $RESYNC_KEYS; do
  p="$OUT/resync-$N"
  "$BIN" serve "${common[@]}" --grpc-addr 127.0.0.1:18681 --http-addr 127.0.0.1:18680 \
    --peer-addr "$a_peer" --peers "$a_peers" --node-id a 2> "$p-a.log" & a=$!; pids+=("$a")
  wait_ready 18680 20
  # 4 descriptors (user, path, user1, path1) per request, keys uniform over N/4 indices,
  # 1.25 N requests = 5 draws per index: 1 - e^-5 = 99.3 % of the N keys are created.
  t0=$(now_ns)
  "$LOAD" run --target http://127.0.0.1:18681 --keys "uniform:$((N / 4))" --requests $((N * 5 / 4)) \
    --descriptors 4 --domain resync --connections 4 --streams 32 --json --no-progress > "$p-fill.json"
  fill_s=$(since "$t0")
  sleep 1
  scrape 18680 "$p-a-before.prom"
  a_rss_before=$(status "$a" VmRSS)
  a_ticks=$(ticks "$a")
  b_start=$(now_ns)
  "$BIN" serve "${common[@]}" --grpc-addr 127.0.0.1:18691 --http-addr 127.0.0.1:18690 \
    --peer-addr "$b_peer" --peers "$a_peer,$b_peer" --node-id b --sync-timeout 120s \
    2> "$p-b.log" & b=$!; pids+=("$b")
  wait_ready 18690 130
  ready_ns=$(( $(now_ns) - b_start ))
  a_cpu=$(( $(ticks "$a") - a_ticks )); b_cpu=$(ticks "$b")
  b_hwm_ready=$(status "$b" VmHWM)
  scrape 18690 "$p-b-after.prom"
  scrape 18680 "$p-a-after.prom"
  later_s=3
  sleep $later_s
  scrape 18690 "$p-b-later.prom"
  {
    echo "fill_requests=$((N * 5 / 4)) fill_s=$fill_s a_peer=$a_peer b_peer=$b_peer"
    echo "b_start_ns=$b_start ready_ns=$ready_ns later_s=$later_s"
    echo "a_cpu_ticks=$a_cpu b_cpu_ticks=$b_cpu clk_tck=$(getconf CLK_TCK)"
    echo "a_rss_before=${a_rss_before// /} a_hwm_after=$(status "$a" VmHWM | tr -d ' ')"
    echo "b_hwm_ready=${b_hwm_ready// /} b_hwm_later=$(status "$b" VmHWM | tr -d ' ')"
  } > "$p.env"
  stop "$b"; stop "$a"
  pids=()
  python3 "$HELPER" resync "$OUT" "$N" | tee "$p.txt"
done
echo "loadavg at end: $(cut -d' ' -f1-3 /proc/loadavg) (other work on the machine shows here)"
echo "raw outputs: $OUT"
