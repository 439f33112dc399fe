#!/usr/bin/env python3
"""Render a single_node.py results.json as the Markdown tables of BENCHMARKS.md.

    python3 scripts/bench/report_md.py target/bench/single-node-<time>/results.json
"""
import json
import sys


def noise(n):
    return (f"{n['server_cpu_us_per_req']} | {n['client_cpu_pct_of_machine']} | "
            f"{n['other_cpu_pct_of_machine']}")


def main():
    r = json.load(open(sys.argv[1]))
    m = r["machine"]
    print(f"Run of {m['date_utc']} UTC, git {m['git']}, {m['nproc']} x {m['cpu']}, "
          f"kernel {m['kernel']}, {m['h2load']}\n")
    f = r.get("fig1_2")
    if f:
        for fig in ("1a", "1b"):
            print(f"**{fig}** (`{f[fig]['body']}`)\n")
            print("| pair | tollgate req/s | noop req/s | ratio | tollgate `requests_total{code=\"OK\"}` delta "
                  "| h2load done / 2xx | within / over-limit hits | server CPU us/req tollgate / noop "
                  "| other CPU % during tollgate / noop run |")
            print("|---|---|---|---|---|---|---|---|---|")
            for i, run in enumerate(f[fig]["runs"]):
                t, n = run["tollgate"], run["noop"]
                mt = t["metrics"]
                print(f"| {i} | {t['rps']:.0f} | {n['rps']:.0f} | {run['ratio']:.3f} | "
                      f"{mt['requests_OK']} (non-OK {mt['requests_InvalidArgument'] + mt['requests_Unavailable'] + mt['requests_Internal']}) | "
                      f"{t['done']} / {t['http_2xx']} | {mt['within_limit']} / {mt['over_limit']} | "
                      f"{t['noise']['server_cpu_us_per_req']} / {n['noise']['server_cpu_us_per_req']} | "
                      f"{t['noise']['other_cpu_pct_of_machine']} / {n['noise']['other_cpu_pct_of_machine']} |")
            print(f"\nMedian ratio **{f[fig]['median_ratio']:.3f}** (medians: tollgate "
                  f"{f[fig]['median_tollgate_rps']:.0f}, noop {f[fig]['median_noop_rps']:.0f} req/s)\n")
        print("**1c** (tollgate-load, closed loop)\n")
        print("| pair | tollgate req/s | noop req/s | ratio | tollgate decisions OK / errors | OK counter delta "
              "| server CPU us/req tollgate / noop | client CPU % of machine | other CPU % |")
        print("|---|---|---|---|---|---|---|---|---|")
        for i, run in enumerate(f["1c"]["runs"]):
            t, n = run["tollgate"], run["noop"]
            print(f"| {i} | {t['throughput_rps']:.0f} | {n['throughput_rps']:.0f} | {run['ratio']:.3f} | "
                  f"{t['decisions']['OK']} / {sum(t['errors'].values()) if t['errors'] else 0} | "
                  f"{t['metrics']['requests_OK']} | {t['noise']['server_cpu_us_per_req']} / "
                  f"{n['noise']['server_cpu_us_per_req']} | {t['noise']['client_cpu_pct_of_machine']} | "
                  f"{t['noise']['other_cpu_pct_of_machine']} / {n['noise']['other_cpu_pct_of_machine']} |")
        print(f"\nMedian ratio **{f['1c']['median_ratio']:.3f}** (medians: tollgate "
              f"{f['1c']['median_tollgate_rps']:.0f}, noop {f['1c']['median_noop_rps']:.0f} req/s)\n")
        lat_table(f"**2** open loop at {f['2']['rate']} req/s", f["2"]["runs"], pairs=True)
        lat_table("**2, sweep** (one pair per rate)", f["2_sweep"], pairs=False)
    p = r.get("pinned")
    if p:
        print("**1c/2 pinned** (server `taskset -c 1`, client `taskset -c 0`)\n")
        print("| pair | tollgate req/s | noop req/s | ratio | server CPU us/req tollgate / noop |")
        print("|---|---|---|---|---|")
        for i, run in enumerate(p["1p"]["runs"]):
            t, n = run["tollgate"], run["noop"]
            print(f"| {i} | {t['throughput_rps']:.0f} | {n['throughput_rps']:.0f} | {run['ratio']:.3f} | "
                  f"{t['noise']['server_cpu_us_per_req']} / {n['noise']['server_cpu_us_per_req']} |")
        print(f"\nMedian ratio **{p['1p']['median_ratio']:.3f}**\n")
        lat_table("**2, sweep, pinned**", p["2p_sweep"], pairs=False)
    g = r.get("fig3_4")
    if g:
        print("**3** hot key vs `uniform:1000000`, 1 descriptor, closed loop (req/s)\n")
        print("| pair | tollgate hot | tollgate 1M | noop hot | noop 1M | tollgate 1M/hot | noop 1M/hot "
              "| normalized | server CPU us/req tollgate hot / 1M |")
        print("|---|---|---|---|---|---|---|---|---|")
        for i, run in enumerate(g["runs"]):
            print(f"| {i} | {run['tollgate_hot']['throughput_rps']:.0f} | "
                  f"{run['tollgate_uniform']['throughput_rps']:.0f} | {run['noop_hot']['throughput_rps']:.0f} | "
                  f"{run['noop_uniform']['throughput_rps']:.0f} | {run['uniform_over_hot_tollgate']:.3f} | "
                  f"{run['uniform_over_hot_noop']:.3f} | {run['uniform_over_hot_normalized']:.3f} | "
                  f"{run['tollgate_hot']['noise']['server_cpu_us_per_req']} / "
                  f"{run['tollgate_uniform']['noise']['server_cpu_us_per_req']} |")
        print(f"\nMedians: tollgate 1M/hot **{g['median_uniform_over_hot_tollgate']:.3f}**, noop "
              f"{g['median_uniform_over_hot_noop']:.3f}, normalized {g['median_uniform_over_hot_normalized']:.3f}\n")
        print(f"**4** VmRSS idle {g['rss_idle_kB']} kB; after the warm-up ({g['warmup']['requests']} requests, "
              f"{g['warmup']['rps']:.0f} req/s) {g['rss_after_warmup_kB']} kB with `tollgate_live_keys` "
              f"{g['live_keys_after_warmup']}: **{g['bytes_per_live_key_rss']:.0f} bytes of RSS per live key**; "
              f"at the end {g['rss_end_kB']} kB with {g['live_keys_end']} live keys, "
              f"`tollgate_keys_over_cap_total` {g['keys_over_cap_total']}\n")
        print(f"**6** VmHWM after figures 3-4 (1M keys): {g['6_1m']['VmHWM_kB']} kB")
    if f:
        print(f"**6** VmHWM after figures 1-2 (hot keys): {f['6_hot']['VmHWM_kB']} kB\n")
    h = r.get("fig5")
    if h:
        print(f"**5** exec -> /readyz 200, ms: {', '.join(f'{x:.1f}' for x in h['ms'])}; "
              f"median **{h['median_ms']:.1f} ms**")


def lat_table(title, rows, pairs):
    print(f"{title} (latency us, from the intended send time; service = from the actual send)\n")
    print("| run | rate | server | p50 | p90 | p99 | p99.9 | max | service p50 / p99 | other CPU % |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for i, row in enumerate(rows):
        for who in ("tollgate", "noop"):
            x = row[who]
            l, s = x["latency_us"], x["service_time_us"]
            rate = x["setup"].get("target_rate")
            print(f"| {i if pairs else ''} | {rate} | {who} | {l['p50']:.0f} | {l['p90']:.0f} | {l['p99']:.0f} | "
                  f"{l['p999']:.0f} | {l['max']:.0f} | {s['p50']:.0f} / {s['p99']:.0f} | "
                  f"{x['noise']['other_cpu_pct_of_machine']} |")
    print()


if __name__ == "__main__":
    main()
