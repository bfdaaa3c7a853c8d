#!/usr/bin/env python3
"""Turns a run directory of benches/load/run.sh into the results JSON and Markdown.

Usage: report.py RUN_DIR OUT_JSON OUT_MD   (the Markdown also goes to stdout)
"""
import glob
import json
import os
import sys


def load(p, default=None):
    try:
        with open(p) as f:
            return json.load(f)
    except Exception:
        return default


def read(p, default=""):
    try:
        with open(p) as f:
            return f.read()
    except Exception:
        return default


def kind(name):
    """(letter, threads) of a contender name: direct, nginx, bare-tN, majordomo-tN."""
    if name == "direct":
        return "a", None
    if name == "nginx":
        return "b", None
    if name.startswith("majordomo-t"):
        return "c", name[len("majordomo-t"):]
    if name.startswith("bare-t"):
        return "d", name[len("bare-t"):]
    return "?", None


def cell_row(c, tck, peaks):
    """One wrk cell as a report row (rps, latency, CPU) or with its error."""
    w = c.get("wrk", {})
    r = {"contender": c["contender"], "mode": c["mode"], "conns": c["conns"]}
    r["letter"], r["threads"] = kind(c["contender"])
    if "requests" in w and w["requests"] > 0:
        dur = w["duration_us"] / 1e6
        lat = w["latency_us"]
        wall = c["wall_s"]
        gw_s = c["gw_cpu_ticks"] / tck
        mock_s = c["mock_cpu_ticks"] / tck
        busy_s = c["sys"].get("cpu", {}).get("busy", 0) / tck
        pg_s = c.get("pg_cpu_ticks", 0) / tck
        r.update({
            "requests": w["requests"], "rps": w["requests"] / dur,
            "p50_ms": lat["p50"] / 1e3, "p90_ms": lat["p90"] / 1e3, "p99_ms": lat["p99"] / 1e3,
            "p999_ms": lat["p999"] / 1e3,
            "errors": sum(w["errors"].values()), "errors_detail": w["errors"],
            "gw_cpu_us_per_req": 1e6 * gw_s / w["requests"], "gw_cpu_pct": 100 * gw_s / wall,
            "mock_cpu_pct": 100 * mock_s / wall, "wrk_cpu_pct": 100 * c["wrk_cpu_s"] / wall,
            "pg_cpu_us_per_req": 1e6 * pg_s / w["requests"],
            "other_cpu_pct": 100 * max(0.0, busy_s - gw_s - mock_s - c["wrk_cpu_s"]
                                       - (pg_s if r["letter"] == "c" else 0)) / wall,
            "cell_vmhwm_mb": c.get("gw_vmhwm_kb", 0) / 1024,
        })
    else:
        r["error"] = w.get("error", "wrk completed no request")
    pk = peaks.get(c["contender"])
    r["peak_rss_mb"] = pk["peak_vmhwm_kb"] / 1024 if pk else None
    return r


ORDER = {"a": 0, "b": 1, "d": 2, "c": 3}


def main():
    run_dir, out_json, out_md = sys.argv[1:4]
    meta = load(os.path.join(run_dir, "meta.json"), {})
    meta["loadavg_end"] = read(os.path.join(run_dir, "loadavg_end")).split()[:3]
    meta["elapsed_s"] = read(os.path.join(run_dir, "elapsed_s")).strip()
    tck = meta.get("clk_tck", 100)
    peaks = {}
    for f in glob.glob(os.path.join(run_dir, "cells", "*.peak.json")):
        p = load(f)
        if p:
            peaks[p["name"]] = p

    def read_cells(pattern):
        rows = []
        for f in sorted(glob.glob(os.path.join(run_dir, "cells", pattern))):
            c = load(f)
            if c and "contender" in c:
                rows.append(cell_row(c, tck, peaks))
        return rows

    cells = read_cells("*.cell-*.json")
    paced = read_cells("*.paced-*.json")
    by = {(r["contender"], r["mode"], r["conns"]): r for r in cells if "rps" in r}
    for r in cells:
        d = by.get(("direct", r["mode"], r["conns"]))
        if d and "rps" in r:
            r["vs_direct"] = r["rps"] / d["rps"]
            r["d_p50_ms"] = r["p50_ms"] - d["p50_ms"]
            r["d_p99_ms"] = r["p99_ms"] - d["p99_ms"]
    cells.sort(key=lambda r: (0 if r["mode"] == "json" else 1, r["conns"], ORDER.get(r["letter"], 9),
                              r["threads"] or ""))
    paced_by = {(r["contender"], r["mode"]): r for r in paced if "rps" in r}
    for r in paced:
        d = paced_by.get(("direct", r["mode"]))
        if d and "rps" in r:
            for q in ("p50", "p90", "p99", "p999"):
                r["d_%s_ms" % q] = r["%s_ms" % q] - d["%s_ms" % q]
    paced.sort(key=lambda r: (r["mode"], ORDER.get(r["letter"], 9), r["threads"] or ""))

    # ratios c/a, c/b, c/d per mode, conns and thread count
    ratios = []
    for r in cells:
        if r["letter"] != "c" or "rps" not in r:
            continue
        a = by.get(("direct", r["mode"], r["conns"]))
        b = by.get(("nginx", r["mode"], r["conns"]))
        d = by.get(("bare-t" + r["threads"], r["mode"], r["conns"]))
        ratios.append({
            "mode": r["mode"], "conns": r["conns"], "threads": r["threads"],
            "c_over_a": r["rps"] / a["rps"] if a else None,
            "c_over_b": r["rps"] / b["rps"] if b else None,
            "c_over_d": r["rps"] / d["rps"] if d else None,
            "cpu_c": r["gw_cpu_us_per_req"], "cpu_d": d["gw_cpu_us_per_req"] if d else None,
            "cpu_b": b["gw_cpu_us_per_req"] if b else None, "pg_c": r["pg_cpu_us_per_req"],
            "cpu_c_over_d": r["gw_cpu_us_per_req"] / d["gw_cpu_us_per_req"] if d else None,
            "d_p99_ms": r.get("d_p99_ms"),
        })

    failures = [l for l in read(os.path.join(run_dir, "failures.txt")).splitlines() if l.strip()]
    notes = [l for l in read(os.path.join(run_dir, "notes.txt")).splitlines() if l.strip()]
    rowcheck = read(os.path.join(run_dir, "rowcheck.md"))
    exact = {}
    for f in glob.glob(os.path.join(run_dir, "cells", "*.exact-*.json")):
        exact[os.path.basename(f)] = read(f).strip()

    json.dump({"meta": meta, "cells": cells, "paced": paced, "ratios": ratios, "failures": failures,
               "notes": notes, "rowcheck_md": rowcheck, "exact": exact},
              open(out_json, "w"), indent=1)

    def f(v, fmt):
        return "" if v is None else fmt % v

    m = meta
    md = ["## majordomo load benchmark %s" % m.get("timestamp", ""), ""]
    pin = ("split (gateway on CPU %s; wrk + mock on CPU %s)" % (m.get("gw_cpus"), m.get("load_cpus"))
           if m.get("pin") == "split" else "none")
    md.append("Host: %s, %s, %s CPUs, %.1f GiB. Pinning: %s. wrk -t%s, %s s per cell, warm-up %s s. "
              "Pingora threads of (c) and (d): %s. nginx mock and nginx proxy: 1 worker each. "
              "Load average at start %s, at end %s. Run took %s s. Versions: %s." % (
                  m.get("host"), m.get("cpu_model"), m.get("nproc"), m.get("mem_total_kb", 0) / 1048576,
                  pin, m.get("wrk_threads"), m.get("duration_s"), m.get("warmup_s"),
                  " ".join(m.get("threads", [])), " ".join(m.get("loadavg_start") or []),
                  " ".join(m.get("loadavg_end") or []), m.get("elapsed_s"),
                  ", ".join("%s %s" % kv for kv in (m.get("versions") or {}).items())))
    md.append("")
    md.append("(a) direct = wrk → mock; (b) nginx = nginx proxy_pass; (c) majordomo = key auth + usage "
              "parsing + pricing + PostgreSQL request log, all on; (d) bare = examples/bare_proxy.rs "
              "(Pingora, forwards only). -tN: N Pingora threads.")
    md.append("")
    md.append("| contender | mode | conns | rps | p50 ms | p99 ms | rps vs (a) | Δp50 ms | Δp99 ms "
              "| gw CPU µs/req | gw CPU % | peak RSS MB | errors | other CPU % |")
    md.append("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in cells:
        label = "(%s) %s" % (r["letter"], r["contender"])
        if "rps" not in r:
            md.append("| %s | %s | %d | FAILED: %s |||||||||||" % (label, r["mode"], r["conns"], r.get("error")))
            continue
        direct = r["letter"] == "a"
        md.append("| %s | %s | %d | %.0f | %.2f | %.2f | %s | %s | %s | %s | %s | %s | %d | %.0f |" % (
            label, r["mode"], r["conns"], r["rps"], r["p50_ms"], r["p99_ms"],
            f(100 * r["vs_direct"], "%.1f%%") if "vs_direct" in r else "",
            "" if direct else f(r.get("d_p50_ms"), "%+.2f"), "" if direct else f(r.get("d_p99_ms"), "%+.2f"),
            "-" if direct else "%.0f" % r["gw_cpu_us_per_req"], "-" if direct else "%.0f" % r["gw_cpu_pct"],
            "-" if direct else f(r.get("peak_rss_mb"), "%.1f"), r["errors"], r["other_cpu_pct"]))
    md.append("")
    if ratios:
        md.append("### Ratios (majordomo vs the others, same run)")
        md.append("")
        md.append("| mode | conns | threads | rps c/a | rps c/b | rps c/d | CPU µs/req c | CPU µs/req d "
                  "| CPU c/d | CPU µs/req b | PostgreSQL CPU µs/req (c) | Δp99 c vs a ms |")
        md.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for q in ratios:
            md.append("| %s | %d | %s | %s | %s | %s | %.0f | %s | %s | %s | %.0f | %s |" % (
                q["mode"], q["conns"], q["threads"], f(q["c_over_a"], "%.2f"), f(q["c_over_b"], "%.2f"),
                f(q["c_over_d"], "%.2f"), q["cpu_c"], f(q["cpu_d"], "%.0f"), f(q["cpu_c_over_d"], "%.2f"),
                f(q["cpu_b"], "%.0f"), q["pg_c"], f(q["d_p99_ms"], "%+.2f")))
        md.append("")
        md.append("Targets (issue 6): CPU c/d ≤ 1.15; rps c/b ≥ 1.0; CPU ≤ 50 µs/req; Δp99 ≤ 1 ms at 16 conns.")
        md.append("")
    if paced:
        md.append("### Added latency when not saturated: %s connections paced at %s requests/s in all"
                  % (m.get("paced_conns"), m.get("paced_rps")))
        md.append("")
        md.append("Each connection waits an exponential think time (mean conns/rate) between requests, "
                  "so the gateway is mostly idle and latency is its own path, not queueing behind a busy CPU.")
        md.append("")
        md.append("| contender | mode | rps | p50 ms | p90 ms | p99 ms | p99.9 ms | Δp50 ms | Δp99 ms | Δp99.9 ms "
                  "| gw CPU µs/req | errors |")
        md.append("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for r in paced:
            label = "(%s) %s" % (r["letter"], r["contender"])
            if "rps" not in r:
                md.append("| %s | %s | FAILED: %s ||||||||||" % (label, r["mode"], r.get("error")))
                continue
            direct = r["letter"] == "a"
            md.append("| %s | %s | %.0f | %.3f | %.3f | %.3f | %.3f | %s | %s | %s | %s | %d |" % (
                label, r["mode"], r["rps"], r["p50_ms"], r["p90_ms"], r["p99_ms"], r["p999_ms"],
                "" if direct else f(r.get("d_p50_ms"), "%+.3f"), "" if direct else f(r.get("d_p99_ms"), "%+.3f"),
                "" if direct else f(r.get("d_p999_ms"), "%+.3f"),
                "-" if direct else "%.0f" % r["gw_cpu_us_per_req"], r["errors"]))
        md.append("")
        md.append("Target (issue 6): Δp99 ≤ 1 ms at 16 connections — see both this table and the saturated one above.")
        md.append("")
    if rowcheck:
        md.append(rowcheck.rstrip())
        md.append("")
    if failures:
        md.append("### FAILED")
        md.append("")
        for l in failures:
            md.append("- " + l)
        md.append("")
    if notes:
        md.append("### Notes")
        md.append("")
        for l in notes:
            md.append("- " + l)
        md.append("")
    md.append("gw CPU: user+sys time of the gateway's process tree (/proc/PID/stat) during the cell, per "
              "completed request and as % of one core. Peak RSS: VmHWM after all of a contender's cells. "
              "other CPU %: busy CPU not used by the gateway, the mock or wrk (other processes on the "
              "machine; for (c) the PostgreSQL server's CPU is excluded, it is shown per request in the ratios table), as % of one core; "
              "above ~10 % the cell is noisy. Latency: wrk, time to the last "
              "byte, closed loop, no coordinated-omission correction.")
    text = "\n".join(md) + "\n"
    with open(out_md, "w") as fh:
        fh.write(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
