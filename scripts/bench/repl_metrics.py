#!/usr/bin/env python3
"""Arithmetic for scripts/bench/replication.sh: reads the /metrics scrapes it saved and prints
the figures. Standard library only.

  repl_metrics.py bandwidth DIR CASE SYNC_INTERVAL_S NODE...   # one load case, 3-node mesh
  repl_metrics.py resync DIR N                                 # one resync run

File names (written by replication.sh): DIR/CASE-NODE-before.prom, DIR/CASE-NODE-after.prom,
DIR/CASE-load.json, DIR/NODE.peer (the node's peer address); for resync DIR/resync-N-*.
"""
import json
import re
import sys
from datetime import datetime, timezone
from pathlib import Path

SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([^}]*)\})?\s+(\S+)')
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse(path):
    """{(name, frozenset(labels.items())): value} of a Prometheus text exposition."""
    out = {}
    for line in Path(path).read_text().splitlines():
        if not line or line.startswith("#"):
            continue
        m = SAMPLE.match(line)
        if not m:
            continue
        labels = frozenset(LABEL.findall(m.group(3) or ""))
        out[(m.group(1), labels)] = float(m.group(4))
    return out


def by_label(samples, name, label):
    """{label value: sample value} for every sample of `name`."""
    res = {}
    for (n, labels), v in samples.items():
        if n == name:
            d = dict(labels)
            if label in d:
                res[d[label]] = res.get(d[label], 0.0) + v
    return res


def value(samples, name, **want):
    tot = 0.0
    for (n, labels), v in samples.items():
        if n == name and all(dict(labels).get(k) == w for k, w in want.items()):
            tot += v
    return tot


def delta(before, after, name, label="peer"):
    a, b = by_label(after, name, label), by_label(before, name, label)
    return {k: a[k] - b.get(k, 0.0) for k in a}


def fmt(x, nd=1):
    return f"{x:,.{nd}f}"


def bandwidth(d, case, sync_s, nodes):
    d = Path(d)
    load = json.loads((d / f"{case}-load.json").read_text())
    peer_name = {(d / f"{n}.peer").read_text().strip(): n for n in nodes}
    elapsed = load["elapsed_s"]
    reqs = load["requests"]
    rate = reqs / elapsed
    keys = load["setup"]["keys"]
    # Window of the /metrics deltas: from the scrape before the load to the one after it
    # (the load plus the settle time); rates below are per second of load.
    window = float((d / f"{case}-window").read_text())
    n_keys = 1 if keys == "hot" else int(keys.split(":")[1])
    per_tick = rate * sync_s
    expect = n_keys * (1 - (1 - 1 / n_keys) ** per_tick) / sync_s
    print(f"### {case}: {keys}, {reqs} requests in {elapsed:.2f} s ({rate:,.0f} req/s) on "
          f"{nodes[0]} only; /metrics window {window:.2f} s")
    errs = sum(load["errors"].values())
    print(f"decisions OK {load['decisions']['OK']}, OVER_LIMIT {load['decisions']['OVER_LIMIT']},"
          f" errors {errs}, unsent {load['unsent']}")
    print(f"expected distinct keys changed per {sync_s * 1000:.0f} ms tick at {nodes[0]}: "
          f"{expect * sync_s:,.1f} of {per_tick:,.1f} requests -> {expect:,.0f} changed keys/s "
          f"(uniform draws: N(1-(1-1/N)^(r*dt))/dt)")
    print("| link | frames | keys | bytes | bytes/key | keys/frame | keys/s | bytes/s (per s of load) |")
    print("|---|---|---|---|---|---|---|---|")
    tot_keys = tot_bytes = 0.0
    origin_keys = None
    for n in nodes:
        b = parse(d / f"{case}-{n}-before.prom")
        a = parse(d / f"{case}-{n}-after.prom")
        fr = delta(b, a, "tollgate_replication_frames_sent_total")
        ks = delta(b, a, "tollgate_replication_keys_sent_total")
        by = delta(b, a, "tollgate_replication_bytes_sent_total")
        for peer in sorted(by):
            to = peer_name.get(peer, peer)
            if to == n:
                continue
            f, k, y = fr.get(peer, 0), ks.get(peer, 0), by[peer]
            tot_keys += k
            tot_bytes += y
            if n == nodes[0]:
                origin_keys = k if origin_keys is None else max(origin_keys, k)
            print(f"| {n} -> {to} | {f:.0f} | {k:.0f} | {y:.0f} | "
                  f"{(y / k if k else float('nan')):.1f} | {(k / f if f else float('nan')):.1f} | "
                  f"{k / elapsed:,.0f} | {y / elapsed:,.0f} |")
    if origin_keys:
        print(f"all links: {tot_keys:.0f} keys, {tot_bytes:.0f} bytes = "
              f"{tot_keys / origin_keys:.2f} key sends and {tot_bytes / origin_keys:.1f} bytes "
              f"per key changed at {nodes[0]} (a full mesh of {len(nodes)} needs "
              f"{len(nodes) - 1} sends)")
        merges = {}
        for n in nodes[1:]:
            b = parse(d / f"{case}-{n}-before.prom")
            a = parse(d / f"{case}-{n}-after.prom")
            merges[n] = value(a, "tollgate_replication_merges_total") - value(
                b, "tollgate_replication_merges_total")
        print("merges that changed a state: " +
              ", ".join(f"{n} {v:.0f}" for n, v in merges.items()))
    print()


def log_events(path):
    """(unix ns, message, fields) of each JSON log line of a tollgate server."""
    out = []
    for line in Path(path).read_text().splitlines():
        try:
            e = json.loads(line)
        except ValueError:
            continue
        ts = datetime.strptime(e["timestamp"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(
            tzinfo=timezone.utc)
        ns = int(ts.timestamp()) * 1_000_000_000 + ts.microsecond * 1000
        out.append((ns, e["fields"].get("message", ""), e["fields"]))
    return out


def resync(d, n):
    d = Path(d)
    p = f"resync-{n}"
    kv = dict(
        line.split("=", 1) for line in (d / f"{p}.env").read_text().split() if "=" in line)
    b_start = int(kv["b_start_ns"])
    ready_s = int(kv["ready_ns"]) / 1e9
    transfer_s = None
    for ns, msg, f in log_events(d / f"{p}-a.log"):
        if msg == "sending full snapshot" and f.get("peer") == "b" and ns >= b_start:
            kv["b_to_a_snapshot_start"] = f"{(ns - b_start) / 1e9:.3f} s"
            kv["snapshot_to_ready"] = f"{ready_s - (ns - b_start) / 1e9:.3f} s"
            transfer_s = ready_s - (ns - b_start) / 1e9
            break
    for ns, msg, f in log_events(d / f"{p}-b.log"):
        if msg == "replication started":
            kv["b_repl_start"] = f"{(ns - b_start) / 1e9:.3f} s"
        elif msg == "synced with peers: ready":
            kv["b_log_synced"] = f"{f.get('elapsed')} (logged at {(ns - b_start) / 1e9:.3f} s)"
        elif msg.startswith("sync timeout"):
            kv["b_sync_timeout"] = "YES: " + msg
    a_after = parse(d / f"{p}-a-after.prom")
    b_after = parse(d / f"{p}-b-after.prom")
    a_before = parse(d / f"{p}-a-before.prom")
    b_later = parse(d / f"{p}-b-later.prom")
    b_peer = kv["b_peer"]
    sent = lambda s, m: by_label(s, m, "peer").get(b_peer, 0.0)
    bytes_ = sent(a_after, "tollgate_replication_bytes_sent_total") - sent(
        a_before, "tollgate_replication_bytes_sent_total")
    keys = sent(a_after, "tollgate_replication_keys_sent_total") - sent(
        a_before, "tollgate_replication_keys_sent_total")
    frames = sent(a_after, "tollgate_replication_frames_sent_total") - sent(
        a_before, "tollgate_replication_frames_sent_total")
    a_live = value(a_before, "tollgate_live_keys")
    b_live = value(b_after, "tollgate_live_keys")
    b_live_later = value(b_later, "tollgate_live_keys")
    recv = by_label(b_after, "tollgate_replication_bytes_received_total", "peer").get("a", 0.0)
    keys_in = by_label(b_after, "tollgate_replication_keys_received_total", "peer").get("a", 0.0)
    echo_keys = by_label(b_later, "tollgate_replication_keys_sent_total", "peer")
    echo_bytes = by_label(b_later, "tollgate_replication_bytes_sent_total", "peer")
    a_peer = kv["a_peer"]
    tck = int(kv["clk_tck"])
    print(f"### resync, {n} keys requested (uniform:{n // 4} x 4 descriptors)")
    print(f"| | |")
    print(f"|---|---|")
    print(f"| fill | {kv['fill_requests']} requests in {float(kv['fill_s']):.1f} s |")
    print(f"| live keys on A before B starts | {a_live:,.0f} |")
    print(f"| **B exec -> /readyz 200** | **{ready_s:.3f} s** (polled every ~10 ms) |")
    kv.setdefault("b_sync_timeout", "no")
    for k, label in [("b_repl_start", "B exec -> B logs 'replication started'"),
                     ("b_to_a_snapshot_start", "B exec -> A logs 'sending full snapshot' to B"),
                     ("snapshot_to_ready", "A starts the snapshot -> B's /readyz 200 (transfer + merge)"),
                     ("b_log_synced", "B's log: replication start -> 'synced with peers: ready'"),
                     ("b_sync_timeout", "B hit --sync-timeout")]:
        if k in kv:
            print(f"| {label} | {kv[k]} |")
    print(f"| A -> B: frames / keys / bytes | {frames:.0f} / {keys:,.0f} / {bytes_:,.0f} |")
    if keys:
        print(f"| bytes per key (snapshot) | {bytes_ / keys:.1f} |")
        print(f"| snapshot bytes / B's time to ready | {bytes_ / ready_s / 1e6:.1f} MB/s, "
              f"{keys / ready_s:,.0f} keys/s |")
        if transfer_s:
            print(f"| snapshot bytes / (snapshot start -> B ready) | "
                  f"{bytes_ / transfer_s / 1e6:.1f} MB/s, {keys / transfer_s:,.0f} keys/s, "
                  f"{transfer_s / keys * 1e6:.2f} us/key |")
    print(f"| B received from A (bytes) | {recv:,.0f} |")
    print(f"| CPU from B's exec to B ready: A / B | {int(kv['a_cpu_ticks']) / tck:.2f} s / "
          f"{int(kv['b_cpu_ticks']) / tck:.2f} s |")
    print(f"| live keys on B at ready / {kv['later_s']} s later | {b_live:,.0f} / {b_live_later:,.0f} |")
    print(f"| B -> A after sync (keys / bytes, echo) | "
          f"{echo_keys.get(a_peer, 0):,.0f} / {echo_bytes.get(a_peer, 0):,.0f} |")
    print(f"| A VmRSS before B starts / A VmHWM after | {kv['a_rss_before']} / {kv['a_hwm_after']} |")
    print(f"| B VmHWM at ready / {kv['later_s']} s later | {kv['b_hwm_ready']} / {kv['b_hwm_later']} |")
    if b_live != a_live:
        merges = value(b_after, "tollgate_replication_merges_total")
        print(f"WARNING: B holds {b_live:,.0f} keys at ready, A held {a_live:,.0f} "
              f"(B received {keys_in:,.0f} key states, {merges:,.0f} merges changed a state)")
    print()


def main():
    cmd = sys.argv[1] if len(sys.argv) > 1 else ""
    if cmd == "bandwidth":
        bandwidth(sys.argv[2], sys.argv[3], float(sys.argv[4]), sys.argv[5:])
    elif cmd == "resync":
        resync(sys.argv[2], int(sys.argv[3]))
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
