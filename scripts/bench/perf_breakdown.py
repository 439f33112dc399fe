#!/usr/bin/env python3
"""Inclusive shares of chosen frames in a `perf script -F tid,ip,sym` dump of a DWARF call-graph
profile (scripts/bench/profile.sh writes one), and what sits directly under a given frame.

    perf script -i tollgate-graph.data -F tid,ip,sym > graph.script
    python3 scripts/bench/perf_breakdown.py graph.script
"""
import collections
import sys

PATTERNS = [
    "tollgate::rls::decide", "Limiter::should_rate_limit", "Store::decide", "KeyBuilder",
    "xxh3", "metrics_util", "metrics::", "Histogram", "Instant", "clock_gettime", "parking_lot",
    "arc_swap", "ProstDecoder", "ProstEncoder", "drop_in_place<tonic::request::Request",
    "malloc", "free", "[unknown]",
]
UNDER = ["tollgate::rls::decide", "Limiter::should_rate_limit", "Store::decide"]


def samples(path):
    cur = []
    for line in open(path, errors="replace"):
        if line.startswith("\t") or line.startswith(" "):
            parts = line.strip().split(" ", 1)
            cur.append(parts[1] if len(parts) > 1 else parts[0])
        else:
            if cur:
                yield cur
            cur = []
    if cur:
        yield cur


def main():
    ss = list(samples(sys.argv[1]))
    n = len(ss)
    print(f"{n} samples (leaf first); inclusive share of all the server's samples:")
    for pat in PATTERNS:
        k = sum(1 for s in ss if any(pat in f for f in s))
        print(f"  {100 * k / n:6.2f}%  {pat}")
    for top in UNDER:
        c = collections.Counter()
        for s in ss:
            for i, f in enumerate(s):
                if top in f:
                    c[s[i - 1] if i > 0 else "(self)"] += 1
                    break
        print(f"--- directly under {top} (inclusive)")
        for k, v in c.most_common(14):
            print(f"  {100 * v / n:6.2f}%  {k[:140]}")


if __name__ == "__main__":
    main()
