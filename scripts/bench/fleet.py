#!/usr/bin/env python3
"""Replication cost of a fleet on loopback (BENCHMARKS.md, "Replication at fleet scale").

N real `tollgate serve` processes on 127.0.0.1, each knowing only the first one's peer address
(--peers SEED: the others are learned from the membership protocol), --sync-interval 20ms.

1. Idle: once every node counts N members and none is in fair-share mode, and after a settle
   period, the CPU time of all N processes over --idle seconds (utime + stime from
   /proc/PID/stat), as a share of one core: whole cluster and per node.
2. Load: `tollgate-load scenario even-split` drives one hot key at --rate requests/s split
   round robin over every node for --duration, the limit sent as a per-request override
   (100/second unless --limit). Replication bytes are tollgate_replication_bytes_sent_total
   summed over every node and peer, before and after (plus a second for the last changes):
   bytes per admitted request cluster-wide, and MB/s.

Usage: scripts/bench/fleet.py [--nodes 20] [--idle 10] [--rate 200] [--duration 10s]
                              [--bin target/release] [--base-port 21000]
Ports: gRPC base+i, HTTP base+1000+i, peer base+2000+i.
Stops only the processes it started. Standard library only.
"""
import argparse
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)')


def port_free(port):
    with socket.socket() as s:
        # As tollgate binds (tokio sets SO_REUSEADDR): a TIME_WAIT left by a run before is free.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def scrape(http):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{http}/metrics", timeout=2) as r:
            return r.read().decode()
    except OSError:
        return ""


def total(text, name):
    """Sum of every series of metric `name` in a Prometheus text exposition."""
    out = 0.0
    for line in text.splitlines():
        m = SAMPLE.match(line)
        if m and m.group(1) == name:
            out += float(m.group(3))
    return out


def cpu_ticks(pids):
    t = 0
    for p in pids:
        with open(f"/proc/{p}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        t += int(fields[11]) + int(fields[12])  # utime, stime
    return t


def wait(what, secs, pred):
    end = time.time() + secs
    while time.time() < end:
        if pred():
            return
        time.sleep(0.2)
    sys.exit(f"fleet.py: timed out after {secs} s waiting for {what}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--nodes", type=int, default=20)
    ap.add_argument("--idle", type=float, default=10.0)
    ap.add_argument("--settle", type=float, default=5.0)
    ap.add_argument("--rate", type=int, default=200)
    ap.add_argument("--duration", default="10s")
    ap.add_argument("--limit", default="100/second")
    ap.add_argument("--bin", default="target/release")
    ap.add_argument("--base-port", type=int, default=21000)
    a = ap.parse_args()
    tmp = tempfile.mkdtemp()
    with open(os.path.join(tmp, "limits.yaml"), "w") as f:
        f.write("domain: loadtest\ndescriptors: []\n")
    # Fixed ports below the ephemeral range: a port picked by binding to 0 can be taken by
    # another node's outbound connection before its own node binds it.
    nodes = [dict(grpc=a.base_port + i, http=a.base_port + 1000 + i, peer=a.base_port + 2000 + i)
             for i in range(a.nodes)]
    busy = [p for n in nodes for p in n.values() if not port_free(p)]
    if busy:
        sys.exit(f"fleet.py: ports in use on 127.0.0.1: {busy[:5]} (try --base-port)")
    seed = f"127.0.0.1:{nodes[0]['peer']}"
    procs = []
    try:
        for i, n in enumerate(nodes):
            procs.append(subprocess.Popen(
                [f"{a.bin}/tollgate", "serve", "--config", tmp,
                 "--grpc-addr", f"127.0.0.1:{n['grpc']}", "--http-addr", f"127.0.0.1:{n['http']}",
                 "--peer-addr", f"127.0.0.1:{n['peer']}", "--peers", seed,
                 "--node-id", f"n{i}", "--sync-interval", "20ms", "--log-level", "error"],
                stdout=subprocess.DEVNULL, stderr=open(os.path.join(tmp, f"n{i}.log"), "w")))
        t0 = time.time()

        def formed():
            for n in nodes:
                m = scrape(n["http"])
                if total(m, "tollgate_cluster_members") != a.nodes:
                    return False
                if total(m, "tollgate_fair_share_mode") != 0 or total(m, "tollgate_ready") != 1:
                    return False
            return True

        try:
            wait(f"{a.nodes} members on every node, none in fair-share mode", 120, formed)
        except SystemExit:
            for i, n in enumerate(nodes):
                m = scrape(n["http"])
                print(f"n{i}: members {total(m, 'tollgate_cluster_members')}, fair share "
                      f"{total(m, 'tollgate_fair_share_mode')}, ready {total(m, 'tollgate_ready')}",
                      file=sys.stderr)
            raise
        print(f"nodes: {a.nodes}, joined through one seed, formed in {time.time() - t0:.1f} s")
        time.sleep(a.settle)
        pids = [p.pid for p in procs]
        hz = os.sysconf("SC_CLK_TCK")
        c0, w0 = cpu_ticks(pids), time.time()
        time.sleep(a.idle)
        c1, w1 = cpu_ticks(pids), time.time()
        core = (c1 - c0) / hz / (w1 - w0)
        print(f"idle: {100 * core:.1f}% of a core for the cluster, "
              f"{100 * core / a.nodes:.2f}% per node ({a.idle:.0f} s)")

        def sent():
            return sum(total(scrape(n["http"]), "tollgate_replication_bytes_sent_total")
                       for n in nodes)

        b0 = sent()
        targets = ",".join(f"http://127.0.0.1:{n['grpc']}" for n in nodes)
        out = subprocess.run(
            [f"{a.bin}/tollgate-load", "scenario", "even-split", "--targets", targets,
             "--limit", a.limit, "--override", "--keys", "hot", "--descriptors", "1",
             "--rate", str(a.rate), "--duration", a.duration, "--no-progress", "--json"],
            check=True, capture_output=True, text=True).stdout
        time.sleep(1.0)
        b1 = sent()
        report = json.loads(out)
        admitted = find(report, "admitted")
        secs = float(a.duration.rstrip("s"))
        print(f"load: {a.rate} req/s on one key, limit {a.limit}, split over {a.nodes} nodes "
              f"for {a.duration}: {admitted} admitted; accuracy {find(report, 'accuracy')}")
        print(f"replication: {(b1 - b0) / 1e6:.3f} MB in all, {(b1 - b0) / secs / 1e3:.1f} kB/s, "
              f"{(b1 - b0) / max(admitted, 1):.0f} bytes per admitted request cluster-wide")
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()


def find(obj, key):
    """The first value of `key` anywhere in a JSON document."""
    if isinstance(obj, dict):
        if key in obj:
            return obj[key]
        for v in obj.values():
            r = find(v, key)
            if r is not None:
                return r
    if isinstance(obj, list):
        for v in obj:
            r = find(v, key)
            if r is not None:
                return r
    return None


if __name__ == "__main__":
    main()
