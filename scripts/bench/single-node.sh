#!/usr/bin/env bash
# Single-node benchmarks (BENCHMARKS.md figures 1-6), end to end:
#   builds the release binaries, makes sure h2load is there, then runs
#   scripts/bench/single_node.py, which starts tollgate (scripts/bench/bench-config.yaml) and the
#   no-op server on 127.0.0.1, alternates tollgate / noop runs, keeps every raw result under
#   target/bench/single-node-<time>/ and prints the figures.
#
#   scripts/bench/single-node.sh                      # defaults: 10 s runs, 3 pairs (~15 min)
#   scripts/bench/single-node.sh --duration 5s --pairs 1 --figures 1   # a quick look
#
# Every option is passed to single_node.py (`--help` lists them).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$repo"

if ! command -v h2load >/dev/null 2>&1; then
    if [[ $(id -u) -eq 0 ]]; then
        timeout 900 apt-get install -y nghttp2-client >/dev/null
    else
        echo "single-node.sh: h2load missing: apt-get install -y nghttp2-client" >&2
        exit 1
    fi
fi
command -v taskset >/dev/null || { echo "single-node.sh: taskset (util-linux) missing" >&2; exit 1; }

timeout 1800 cargo build --release --workspace --bins
# Run copies of the binaries, so a rebuild during the ~13 minutes cannot swap them mid-run.
bin="$(mktemp -d /tmp/tollgate-bench-bin.XXXXXX)"
trap 'rm -rf "$bin"' EXIT
cp target/release/tollgate target/release/tollgate-load "$bin/"
timeout 3600 python3 scripts/bench/single_node.py --target-dir "$bin" "$@"
