#!/usr/bin/env python3
"""Single-node benchmarks of tollgate: every figure of BENCHMARKS.md "Single node", end to end.

    scripts/bench/single-node.sh            # builds, then runs this
    python3 scripts/bench/single_node.py --duration 10s --pairs 3 --out DIR

Figures (numbering as in BENCHMARKS.md):
  1a  max throughput, h2load, 2 descriptors, 10 conns x 10 streams, domain with a 1e9/s limit
      (every descriptor decided and admitted): tollgate vs the no-op server, alternating.
  1b  the same with a 100/s limit on the (single, hot) key: nearly every request OVER_LIMIT.
  1c  the same as 1a with `tollgate-load run` (closed loop).
  2   latency p50/p90/p99/p99.9 at 50% of 1c's tollgate median, open loop, tollgate vs noop.
  3   hot key vs uniform:1000000 (1 descriptor, so 1M keys = 1M live buckets), closed loop,
      tollgate and noop alternating, after a warm-up run that creates most of the keys.
  4   VmRSS before / after the 1M keys, and the tollgate_live_keys gauge.
  5   startup: exec to the first /readyz 200, median of 10.
  6   VmHWM (peak RSS) of each tollgate process after its load phase.

Runs alternate tollgate / noop (A B A B ...) so slow drifts of a shared, noisy 2-core machine
hit both; the figure is the median of the per-pair ratios. Every raw result (h2load text,
tollgate-load JSON, /metrics snapshots) is kept under --out. Only 127.0.0.1 is used; only the
processes started here are stopped, by their pid.
"""

import argparse
import datetime
import json
import os
import re
import resource
import signal
import statistics
import subprocess
import sys
import time
import urllib.request

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
CONFIG = os.path.join(ROOT, "scripts", "bench", "bench-config.yaml")
PATH_RLS = "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit"
TICKS = os.sysconf("SC_CLK_TCK")


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- machine and noise


def machine():
    model = ""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    rev = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"],
                         capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", ROOT, "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True).stdout.strip()
    h2 = subprocess.run(["h2load", "--version"], capture_output=True, text=True).stdout.strip()
    return {
        "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S"),
        "nproc": os.cpu_count(),
        "cpu": model,
        "kernel": os.uname().release,
        "git": rev + (" (+ uncommitted changes)" if dirty else ""),
        "h2load": h2.splitlines()[0] if h2 else "",
    }


def cpu_busy():
    """(busy, total) jiffies of the whole machine, from /proc/stat."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    idle = v[3] + v[4]
    return sum(v) - idle, sum(v)


def proc_cpu(pid):
    """utime + stime of a process, in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def proc_status(pid, field):
    """A /proc/PID/status field in kB (VmRSS, VmHWM)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return None


def wait_quiet(limit_pct=15.0, max_wait=90.0):
    """Before a run: wait (bounded) for a 1 s window in which the machine is at most
    `limit_pct` busy, so a concurrent compile does not land inside the measurement.
    Returns the seconds waited; after `max_wait` the run goes ahead anyway (and its
    `other_cpu_pct_of_machine` shows the noise)."""
    t0 = time.monotonic()
    while True:
        b0, t0_ = cpu_busy()
        time.sleep(1.0)
        b1, t1 = cpu_busy()
        pct = 100 * (b1 - b0) / max(1, t1 - t0_)
        waited = time.monotonic() - t0
        if pct <= limit_pct or waited >= max_wait:
            if waited > 1.5:
                log(f"waited {waited:.0f}s for a quiet machine (last second {pct:.0f}% busy)")
            return round(waited - 1.0, 1)


class Noise:
    """Machine-wide CPU use during a run, and how much of it was the server under test."""

    def __init__(self, server_pid):
        self.waited_s = wait_quiet()
        self.pid = server_pid
        self.load = os.getloadavg()[0]
        self.busy0, self.total0 = cpu_busy()
        self.srv0 = proc_cpu(server_pid)
        self.cli0 = self.children_cpu()
        self.t0 = time.monotonic()

    @staticmethod
    def children_cpu():
        ru = resource.getrusage(resource.RUSAGE_CHILDREN)
        return ru.ru_utime + ru.ru_stime

    def end(self, requests):
        busy1, total1 = cpu_busy()
        srv = proc_cpu(self.pid) - self.srv0
        cli = self.children_cpu() - self.cli0
        wall = time.monotonic() - self.t0
        ncpu = os.cpu_count()
        busy = (busy1 - self.busy0) / max(1, total1 - self.total0)
        return {
            "waited_for_quiet_s": self.waited_s,
            "client_cpu_pct_of_machine": round(100 * cli / (wall * ncpu), 1),
            # Whatever else ran meanwhile (the lead's compiles, the kernel's softirq time is
            # charged to whoever was running): the noise of this run.
            "other_cpu_pct_of_machine": round(100 * busy - 100 * (srv + cli) / (wall * ncpu), 1),
            "loadavg1_before": round(self.load, 2),
            "machine_busy_pct": round(100 * (busy1 - self.busy0) / max(1, total1 - self.total0), 1),
            "server_cpu_s": round(srv, 2),
            "server_cpu_pct_of_machine": round(100 * srv / (wall * ncpu), 1),
            "server_cpu_us_per_req": round(1e6 * srv / requests, 2) if requests else None,
        }


# ---------------------------------------------------------------- processes


class Proc:
    """A server started here; stopped by its own pid only."""

    def __init__(self, name, argv, logdir):
        self.name = name
        self.argv = argv
        self.log = open(os.path.join(logdir, f"{name}.log"), "ab")
        self.t_exec = time.monotonic()
        self.p = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT)
        self.pid = self.p.pid

    def stop(self):
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait(timeout=5)
        self.log.close()


def http_get(url, timeout=1.0):
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, ""
    except OSError:
        return None, ""


def wait_port(port, timeout=10.0):
    import socket
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return True
        except OSError:
            time.sleep(0.01)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


def wait_ready(http_port, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if http_get(f"http://127.0.0.1:{http_port}/readyz", 0.2)[0] == 200:
            return True
        time.sleep(0.001)
    raise RuntimeError(f"/readyz on {http_port} not 200 after {timeout}s")


def metrics(http_port):
    """Prometheus text -> {(name, frozenset(labels)): value}."""
    status, text = http_get(f"http://127.0.0.1:{http_port}/metrics", 5.0)
    if status != 200:
        raise RuntimeError(f"/metrics answered {status}")
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = re.match(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)$', line)
        if not m:
            continue
        labels = frozenset(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(3) or ""))
        out[(m.group(1), labels)] = float(m.group(4))
    return out, text


def msum(snap, name, **want):
    return sum(v for (n, labels), v in snap.items()
               if n == name and all((k, w) in labels for k, w in want.items()))


def metrics_delta(before, after):
    d = {}
    for code in ("OK", "InvalidArgument", "Unavailable", "Internal"):
        d[f"requests_{code}"] = msum(after, "tollgate_requests_total", code=code) - \
            msum(before, "tollgate_requests_total", code=code)
    for name in ("hits", "within_limit", "over_limit", "unknown_domain", "keys_over_cap"):
        full = f"tollgate_{name}_total"
        d[name] = msum(after, full) - msum(before, full)
    d["live_keys"] = msum(after, "tollgate_live_keys")
    return {k: int(v) for k, v in d.items()}


# ---------------------------------------------------------------- clients


def h2load(port, body, seconds, conns, streams, save):
    argv = ["h2load", "-t", "1", "-D", str(seconds), "-c", str(conns),
            "-m", str(streams), "-d", body, "-H", "content-type: application/grpc",
            "-H", "te: trailers", f"http://127.0.0.1:{port}{PATH_RLS}"]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60)
    with open(save, "w") as f:
        f.write("$ " + " ".join(argv) + "\n" + r.stdout + r.stderr)
    m = re.search(r"finished in ([\d.]+)s, ([\d.]+) req/s", r.stdout)
    q = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, "
                  r"(\d+) failed, (\d+) errored, (\d+) timeout", r.stdout)
    s = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", r.stdout)
    if not (m and q and s):
        raise RuntimeError(f"h2load output not understood:\n{r.stdout}\n{r.stderr}")
    return {
        "cmd": " ".join(argv),
        "rps": float(m.group(2)),
        "done": int(q.group(3)),
        "succeeded": int(q.group(4)),
        "failed": int(q.group(5)),
        "errored": int(q.group(6)),
        "http_2xx": int(s.group(1)),
    }


def load_run(bin_load, port, extra, save, seconds, cpu=None):
    pin = ["taskset", "-c", cpu] if cpu else []
    argv = pin + [bin_load, "run", "--target", f"127.0.0.1:{port}", "--no-progress", "--json"] + extra
    r = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 90)
    with open(save, "w") as f:
        f.write(r.stdout)
    if r.returncode != 0:
        raise RuntimeError(f"tollgate-load failed ({r.returncode}): {r.stderr[-2000:]}")
    j = json.loads(r.stdout)
    j["cmd"] = " ".join(argv)
    return j


# ---------------------------------------------------------------- the figures


class Bench:
    def __init__(self, a):
        self.a = a
        self.secs = int(a.duration.rstrip("s"))
        self.out = a.out
        os.makedirs(self.out, exist_ok=True)
        self.tg_bin = os.path.join(a.target_dir, "tollgate")
        self.load_bin = os.path.join(a.target_dir, "tollgate-load")
        self.procs = []
        self.results = {"machine": machine(), "settings": vars(a)}

    def start_tollgate(self, name, *extra, cpu=None):
        pin = ["taskset", "-c", cpu] if cpu else []
        argv = pin + [self.tg_bin, "--config", CONFIG, "--grpc-addr", f"127.0.0.1:{self.a.grpc_port}",
                "--http-addr", f"127.0.0.1:{self.a.http_port}", "--log-level", "warn", *extra]
        p = Proc(name, argv, self.out)
        self.procs.append(p)
        wait_ready(self.a.http_port)
        wait_port(self.a.grpc_port)
        log(f"started {name} pid {p.pid}: {' '.join(argv)}")
        return p

    def start_noop(self, cpu=None):
        pin = ["taskset", "-c", cpu] if cpu else []
        argv = pin + [self.load_bin, "noop-server", "--addr", f"127.0.0.1:{self.a.noop_port}"]
        p = Proc("noop", argv, self.out)
        self.procs.append(p)
        wait_port(self.a.noop_port)
        log(f"started noop pid {p.pid}: {' '.join(argv)}")
        return p

    def stop(self, p):
        p.stop()
        self.procs.remove(p)

    def stop_all(self):
        for p in list(self.procs):
            self.stop(p)

    def body(self, domain, descriptors):
        path = os.path.join(self.out, f"req-{domain}-{descriptors}.bin")
        subprocess.run([self.load_bin, "make-h2load-body", "--domain", domain, "--descriptors",
                        str(descriptors), "--out", path], check=True, capture_output=True)
        return path

    # One measured run against tollgate (with /metrics cross-check) or the noop server.
    def h2_run(self, label, which, srv, body):
        port = self.a.grpc_port if which == "tollgate" else self.a.noop_port
        before = metrics(self.a.http_port)[0] if which == "tollgate" else None
        noise = Noise(srv.pid)
        r = h2load(port, body, self.secs, self.a.connections, self.a.streams,
                   os.path.join(self.out, f"{label}.txt"))
        r["noise"] = noise.end(r["done"])
        if before is not None:
            time.sleep(0.2)
            r["metrics"] = metrics_delta(before, metrics(self.a.http_port)[0])
        log(f"{label}: {r['rps']:.0f} req/s  {r['noise']}" +
            (f"  metrics {r['metrics']}" if before is not None else ""))
        return r

    def load_run(self, label, which, srv, extra, cpu=None):
        port = self.a.grpc_port if which == "tollgate" else self.a.noop_port
        before = metrics(self.a.http_port)[0] if which == "tollgate" else None
        noise = Noise(srv.pid)
        r = load_run(self.load_bin, port, extra, os.path.join(self.out, f"{label}.json"),
                     self.secs, cpu)
        r["noise"] = noise.end(r["requests"])
        if before is not None:
            time.sleep(0.2)
            r["metrics"] = metrics_delta(before, metrics(self.a.http_port)[0])
        lat = r["latency_us"]
        log(f"{label}: {r['throughput_rps']:.0f} req/s p50 {lat['p50']:.0f}us p99 {lat['p99']:.0f}us "
            f"errors {r['errors']} decisions {r['decisions']} {r['noise']}")
        return r

    def fig1_2(self):
        a = self.a
        tg = self.start_tollgate("tollgate-fig1")
        noop = self.start_noop()
        time.sleep(1)
        res = {"tollgate_cmd": " ".join(tg.argv), "noop_cmd": " ".join(noop.argv)}

        # 1a / 1b: h2load, alternating.
        for fig, domain in (("1a", "loadtest"), ("1b", "limited")):
            body = self.body(domain, 2)
            runs = []
            for i in range(a.pairs):
                t = self.h2_run(f"fig{fig}-tollgate-{i}", "tollgate", tg, body)
                n = self.h2_run(f"fig{fig}-noop-{i}", "noop", noop, body)
                runs.append({"tollgate": t, "noop": n, "ratio": t["rps"] / n["rps"]})
            res[fig] = {"body": f"tollgate-load make-h2load-body --domain {domain} --descriptors 2",
                        "runs": runs,
                        "median_ratio": statistics.median(r["ratio"] for r in runs),
                        "median_tollgate_rps": statistics.median(r["tollgate"]["rps"] for r in runs),
                        "median_noop_rps": statistics.median(r["noop"]["rps"] for r in runs)}
            log(f"fig {fig}: median ratio {res[fig]['median_ratio']:.3f}")

        # 1c: tollgate-load closed loop, alternating.
        common = ["--duration", a.duration, "--connections", str(a.connections),
                  "--streams", str(a.streams), "--descriptors", "2", "--domain", "loadtest"]
        runs = []
        for i in range(a.pairs):
            t = self.load_run(f"fig1c-tollgate-{i}", "tollgate", tg, common)
            n = self.load_run(f"fig1c-noop-{i}", "noop", noop, common)
            runs.append({"tollgate": t, "noop": n,
                         "ratio": t["throughput_rps"] / n["throughput_rps"]})
        max_tg = statistics.median(r["tollgate"]["throughput_rps"] for r in runs)
        res["1c"] = {"runs": runs, "median_ratio": statistics.median(r["ratio"] for r in runs),
                     "median_tollgate_rps": max_tg,
                     "median_noop_rps": statistics.median(r["noop"]["throughput_rps"] for r in runs)}
        log(f"fig 1c: median ratio {res['1c']['median_ratio']:.3f}, tollgate max {max_tg:.0f}")

        # 2: open loop at 50% of tollgate's closed-loop max, alternating.
        rate = a.rate or int(round(max_tg * 0.5, -3))
        runs = []
        for i in range(a.pairs):
            t = self.load_run(f"fig2-tollgate-{i}", "tollgate", tg, common + ["--rate", str(rate)])
            n = self.load_run(f"fig2-noop-{i}", "noop", noop, common + ["--rate", str(rate)])
            runs.append({"tollgate": t, "noop": n})
        res["2"] = {"rate": rate, "runs": runs}
        for who in ("tollgate", "noop"):
            res["2"][f"median_{who}"] = {
                q: statistics.median(r[who]["latency_us"][q] for r in runs)
                for q in ("p50", "p90", "p99", "p999", "max")}
            res["2"][f"median_{who}_service"] = {
                q: statistics.median(r[who]["service_time_us"][q] for r in runs)
                for q in ("p50", "p90", "p99", "p999", "max")}

        res["2_sweep"] = self.sweep("fig2s", tg, noop, common, None)

        # 6 (first part): peak RSS of this process after its load.
        res["6_hot"] = {"VmHWM_kB": proc_status(tg.pid, "VmHWM"),
                        "VmRSS_kB": proc_status(tg.pid, "VmRSS")}
        self.stop(noop)
        self.stop(tg)
        self.results["fig1_2"] = res

    def sweep(self, label, tg, noop, common, cpu):
        """Open-loop latency at a few fixed rates, tollgate then noop at each."""
        out = []
        for rate in self.a.sweep:
            t = self.load_run(f"{label}-tollgate-{rate}", "tollgate", tg,
                              common + ["--rate", str(rate)], cpu)
            n = self.load_run(f"{label}-noop-{rate}", "noop", noop,
                              common + ["--rate", str(rate)], cpu)
            out.append({"rate": rate, "tollgate": t, "noop": n})
        return out

    def fig2_pinned(self):
        """Figures 1c and 2 again with the server alone on CPU 1 and the client on CPU 0, so
        the two never preempt each other (tokio sizes its pool from the affinity mask: one
        worker each). Shows how much of figure 2's tail is client/server CPU sharing."""
        a = self.a
        tg = self.start_tollgate("tollgate-pinned", cpu="1")
        noop = self.start_noop(cpu="1")
        time.sleep(1)
        common = ["--duration", a.duration, "--connections", str(a.connections),
                  "--streams", str(a.streams), "--descriptors", "2", "--domain", "loadtest"]
        res = {"tollgate_cmd": " ".join(tg.argv), "noop_cmd": " ".join(noop.argv)}
        runs = []
        for i in range(a.pairs):
            t = self.load_run(f"fig1p-tollgate-{i}", "tollgate", tg, common, cpu="0")
            n = self.load_run(f"fig1p-noop-{i}", "noop", noop, common, cpu="0")
            runs.append({"tollgate": t, "noop": n,
                         "ratio": t["throughput_rps"] / n["throughput_rps"]})
        max_tg = statistics.median(r["tollgate"]["throughput_rps"] for r in runs)
        res["1p"] = {"runs": runs, "median_ratio": statistics.median(r["ratio"] for r in runs),
                     "median_tollgate_rps": max_tg,
                     "median_noop_rps": statistics.median(r["noop"]["throughput_rps"] for r in runs)}
        res["2p_sweep"] = self.sweep("fig2p", tg, noop, common, "0")
        self.stop(noop)
        self.stop(tg)
        self.results["pinned"] = res

    def fig3_4(self):
        a = self.a
        # A fresh process; a long GC horizon so the 1M keys stay live between the runs (keys
        # with a 1e9/s limit are full again at once and would be deleted 60 s after their last
        # touch otherwise, shrinking the table during the hot-key runs).
        tg = self.start_tollgate("tollgate-fig3", "--gc-horizon", "30m")
        noop = self.start_noop()
        time.sleep(1)
        res = {"tollgate_cmd": " ".join(tg.argv)}
        snap, _ = metrics(a.http_port)
        res["rss_idle_kB"] = proc_status(tg.pid, "VmRSS")
        res["live_keys_idle"] = int(msum(snap, "tollgate_live_keys"))

        base = ["--connections", str(a.connections), "--streams", str(a.streams),
                "--descriptors", "1", "--domain", "loadtest"]
        uni = ["--keys", "uniform:1000000", "--key-tag", "m1"]
        # Warm-up: create most of the 1M keys (1 - e^-(N/1M) of them after N requests).
        w = self.load_run("fig3-warmup", "tollgate", tg,
                          base + uni + ["--duration", a.warmup])
        snap, _ = metrics(a.http_port)
        res["warmup"] = {"requests": w["requests"], "rps": w["throughput_rps"], "cmd": w["cmd"]}
        res["rss_after_warmup_kB"] = proc_status(tg.pid, "VmRSS")
        res["live_keys_after_warmup"] = int(msum(snap, "tollgate_live_keys"))

        runs = []
        for i in range(a.pairs):
            row = {}
            for which, srv in (("tollgate", tg), ("noop", noop)):
                # A fresh seed per uniform run, so it samples the 1M keys anew instead of
                # replaying the warm-up's sequence (the default seed is fixed).
                for keys, extra in (("hot", ["--keys", "hot"]),
                                    ("uniform", uni + ["--seed", str(1000 + i)])):
                    row[f"{which}_{keys}"] = self.load_run(
                        f"fig3-{which}-{keys}-{i}", which, srv,
                        base + extra + ["--duration", a.duration])
            rps = {k: v["throughput_rps"] for k, v in row.items()}
            row["uniform_over_hot_tollgate"] = rps["tollgate_uniform"] / rps["tollgate_hot"]
            row["uniform_over_hot_noop"] = rps["noop_uniform"] / rps["noop_hot"]
            row["uniform_over_hot_normalized"] = (row["uniform_over_hot_tollgate"] /
                                                  row["uniform_over_hot_noop"])
            runs.append(row)
        res["runs"] = runs
        for k in ("uniform_over_hot_tollgate", "uniform_over_hot_noop",
                  "uniform_over_hot_normalized"):
            res[f"median_{k}"] = statistics.median(r[k] for r in runs)
        snap, _ = metrics(a.http_port)
        res["rss_end_kB"] = proc_status(tg.pid, "VmRSS")
        res["live_keys_end"] = int(msum(snap, "tollgate_live_keys"))
        res["keys_over_cap_total"] = int(msum(snap, "tollgate_keys_over_cap_total"))
        res["bytes_per_live_key_rss"] = (1024 * (res["rss_after_warmup_kB"] - res["rss_idle_kB"]) /
                                         max(1, res["live_keys_after_warmup"] - res["live_keys_idle"]))
        res["6_1m"] = {"VmHWM_kB": proc_status(tg.pid, "VmHWM"),
                       "VmRSS_kB": proc_status(tg.pid, "VmRSS")}
        log(f"fig 3: {json.dumps({k: v for k, v in res.items() if k != 'runs'})}")
        self.stop(noop)
        self.stop(tg)
        self.results["fig3_4"] = res

    def fig5(self):
        a = self.a
        argv = [self.tg_bin, "--config", CONFIG, "--grpc-addr", f"127.0.0.1:{a.grpc_port}",
                "--http-addr", f"127.0.0.1:{a.http_port}", "--log-level", "warn"]
        times = []
        for i in range(10):
            t0 = time.monotonic()
            p = Proc(f"tollgate-startup", argv, self.out)
            self.procs.append(p)
            wait_ready(a.http_port)
            times.append(1000 * (time.monotonic() - t0))
            self.stop(p)
            time.sleep(0.2)
        self.results["fig5"] = {"cmd": " ".join(argv), "ms": [round(t, 2) for t in times],
                                "median_ms": statistics.median(times)}
        log(f"fig 5: startup ms {self.results['fig5']}")

    def run(self):
        try:
            if "1" in self.a.figures:
                self.fig1_2()
            if "p" in self.a.figures:
                self.fig2_pinned()
            if "3" in self.a.figures:
                self.fig3_4()
            if "5" in self.a.figures:
                self.fig5()
        finally:
            self.stop_all()
            with open(os.path.join(self.out, "results.json"), "w") as f:
                json.dump(self.results, f, indent=1, default=str)
        summary(self.results)


# ---------------------------------------------------------------- report


def print_sweep(title, rows):
    print(f"{title} (us, open loop, corrected):")
    for row in rows:
        for who in ("tollgate", "noop"):
            l, run = row[who]["latency_us"], row[who]
            print(f"  {row['rate']:6} req/s {who:8}: p50 {l['p50']:6.0f} p90 {l['p90']:6.0f} "
                  f"p99 {l['p99']:6.0f} p99.9 {l['p999']:6.0f} max {l['max']:6.0f}  service p99 "
                  f"{run['service_time_us']['p99']:6.0f}  other CPU {run['noise']['other_cpu_pct_of_machine']}%")


def summary(r):
    m = r["machine"]
    print(f"machine: {m['nproc']} x {m['cpu']}, kernel {m['kernel']}, {m['date_utc']} UTC, "
          f"git {m['git']}")
    f = r.get("fig1_2")
    if f:
        for fig, name in (("1a", "h2load, 1e9/s rule (all OK)"),
                          ("1b", "h2load, 100/s rule (hot key OVER_LIMIT)")):
            print(f"\n{fig} max throughput, {name}:")
            for i, run in enumerate(f[fig]["runs"]):
                t, n = run["tollgate"], run["noop"]
                print(f"  pair {i}: tollgate {t['rps']:8.0f}  noop {n['rps']:8.0f}  "
                      f"ratio {run['ratio']:.3f}  | tollgate OK counter +{t['metrics']['requests_OK']}"
                      f" (h2load done {t['done']}, 2xx {t['http_2xx']}), over_limit hits "
                      f"+{t['metrics']['over_limit']}, within +{t['metrics']['within_limit']}  "
                      f"| server CPU us/req tollgate {t['noise']['server_cpu_us_per_req']} "
                      f"noop {n['noise']['server_cpu_us_per_req']}  loadavg {t['noise']['loadavg1_before']}")
            print(f"  median ratio {f[fig]['median_ratio']:.3f} (tollgate median "
                  f"{f[fig]['median_tollgate_rps']:.0f}, noop median {f[fig]['median_noop_rps']:.0f})")
        print("\n1c max throughput, tollgate-load closed loop:")
        for i, run in enumerate(f["1c"]["runs"]):
            t, n = run["tollgate"], run["noop"]
            print(f"  pair {i}: tollgate {t['throughput_rps']:8.0f}  noop {n['throughput_rps']:8.0f}"
                  f"  ratio {run['ratio']:.3f}  | decisions {t['decisions']} errors {t['errors']} "
                  f"OK counter +{t['metrics']['requests_OK']}")
        print(f"  median ratio {f['1c']['median_ratio']:.3f}")
        print(f"\n2 latency at {f['2']['rate']} req/s open loop (us, corrected for coordinated omission):")
        for i, run in enumerate(f["2"]["runs"]):
            for who in ("tollgate", "noop"):
                l = run[who]["latency_us"]
                print(f"  pair {i} {who:8}: p50 {l['p50']:7.0f} p90 {l['p90']:7.0f} p99 {l['p99']:7.0f}"
                      f" p99.9 {l['p999']:7.0f} max {l['max']:7.0f}  achieved "
                      f"{run[who]['throughput_rps']:.0f} req/s unsent {run[who]['unsent']}")
        for who in ("tollgate", "noop"):
            l = f["2"][f"median_{who}"]
            s = f["2"][f"median_{who}_service"]
            print(f"  median {who:8}: p50 {l['p50']:.0f} p90 {l['p90']:.0f} p99 {l['p99']:.0f} "
                  f"p99.9 {l['p999']:.0f}  (service time p50 {s['p50']:.0f} p99 {s['p99']:.0f})")
        print_sweep("\n2s latency sweep, unpinned", f["2_sweep"])
        print(f"\n6 peak RSS (VmHWM) after figures 1-2, hot keys: {f['6_hot']['VmHWM_kB']} kB")
    p = r.get("pinned")
    if p:
        print("\n1c/2 pinned (server on CPU 1, client on CPU 0), tollgate-load:")
        for i, run in enumerate(p["1p"]["runs"]):
            t, n = run["tollgate"], run["noop"]
            print(f"  pair {i}: tollgate {t['throughput_rps']:8.0f}  noop {n['throughput_rps']:8.0f}"
                  f"  ratio {run['ratio']:.3f}  | decisions {t['decisions']} errors {t['errors']}")
        print(f"  median ratio {p['1p']['median_ratio']:.3f}")
        print_sweep("latency sweep, pinned", p["2p_sweep"])
    g = r.get("fig3_4")
    if g:
        print("\n3 hot key vs uniform:1000000 (1 descriptor), closed loop:")
        for i, run in enumerate(g["runs"]):
            rps = {k: run[k]["throughput_rps"] for k in
                   ("tollgate_hot", "tollgate_uniform", "noop_hot", "noop_uniform")}
            print(f"  pair {i}: " + "  ".join(f"{k} {v:.0f}" for k, v in rps.items()) +
                  f"  | tollgate uniform/hot {run['uniform_over_hot_tollgate']:.3f} noop "
                  f"{run['uniform_over_hot_noop']:.3f} normalized {run['uniform_over_hot_normalized']:.3f}")
        print(f"  median tollgate uniform/hot {g['median_uniform_over_hot_tollgate']:.3f}, "
              f"noop uniform/hot {g['median_uniform_over_hot_noop']:.3f}, "
              f"normalized {g['median_uniform_over_hot_normalized']:.3f}")
        print(f"\n4 memory: VmRSS idle {g['rss_idle_kB']} kB, after warm-up ({g['warmup']['requests']} "
              f"requests) {g['rss_after_warmup_kB']} kB with {g['live_keys_after_warmup']} live keys "
              f"-> {g['bytes_per_live_key_rss']:.0f} bytes per live key (RSS); at the end "
              f"{g['rss_end_kB']} kB, {g['live_keys_end']} live keys, keys over cap "
              f"{g['keys_over_cap_total']}")
        print(f"6 peak RSS (VmHWM) after figures 3-4, 1M keys: {g['6_1m']['VmHWM_kB']} kB")
    h = r.get("fig5")
    if h:
        print(f"\n5 startup exec -> /readyz 200: median {h['median_ms']:.1f} ms of {h['ms']}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", default="10s", help="each measured run, whole seconds (10s)")
    ap.add_argument("--warmup", default="40s", help="figure 3's key-creating run (40s)")
    ap.add_argument("--pairs", type=int, default=3, help="tollgate/noop pairs per figure (3)")
    ap.add_argument("--connections", type=int, default=10)
    ap.add_argument("--streams", type=int, default=10)
    ap.add_argument("--rate", type=int, default=0,
                    help="figure 2's rate (default: 50%% of figure 1c's tollgate median)")
    ap.add_argument("--figures", default="1p35",
                    help="which groups: 1 (1-2, 6), p (1c and 2 pinned), 3 (3-4, 6), 5")
    ap.add_argument("--sweep", default="5000,10000,20000",
                    type=lambda v: [int(x) for x in v.split(",") if x],
                    help="extra open-loop rates for the latency sweep (one pair each)")
    ap.add_argument("--grpc-port", type=int, default=18081)
    ap.add_argument("--http-port", type=int, default=18080)
    ap.add_argument("--noop-port", type=int, default=18091)
    ap.add_argument("--target-dir", default=os.path.join(ROOT, "target", "release"))
    ap.add_argument("--out", default=os.path.join(
        ROOT, "target", "bench", "single-node-" + time.strftime("%Y%m%dT%H%M%S")))
    a = ap.parse_args()
    if not a.duration.endswith("s") or not a.duration[:-1].isdigit():
        ap.error("--duration: whole seconds, e.g. 10s")
    Bench(a).run()


if __name__ == "__main__":
    main()
