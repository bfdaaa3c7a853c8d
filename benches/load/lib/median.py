#!/usr/bin/env python3
"""Median of several load/run.sh results (stdlib only).

Usage: median.py OUT.md RESULT.json [RESULT.json ...]

Per cell (contender, mode, connections): the median rps, p50, p99 and gateway
CPU µs/request over the runs; per (mode, connections, threads): the median of
each run's ratios (c/a, c/b, c/d rps, CPU c/d, Δp99 c vs a), each ratio taken
within one run so the machine's drift between runs cancels out. Also lists
each run's row check verdict.
"""
import json
import statistics
import sys


def med(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def fmt(v, spec):
    return "" if v is None else format(v, spec)


def main():
    out_md, paths = sys.argv[1], sys.argv[2:]
    runs = [json.load(open(p)) for p in paths]
    cells, ratios = {}, {}
    for run in runs:
        for c in run["cells"]:
            cells.setdefault((c["letter"], c["contender"], c["mode"], c["conns"]), []).append(c)
        for r in run["ratios"]:
            ratios.setdefault((r["mode"], r["conns"], r["threads"]), []).append(r)
    lines = [
        f"## Median of {len(runs)} runs of benches/load/run.sh",
        "",
        "Runs: " + ", ".join(p.rsplit("/", 1)[-1] for p in paths) + ".",
        f"Host: {runs[0]['meta'].get('host', '?')}, {runs[0]['meta'].get('nproc', '?')} CPUs, "
        f"{runs[0]['meta'].get('duration_s', '?')} s per cell.",
        "",
        "| contender | mode | conns | rps | p50 ms | p99 ms | gw CPU µs/req |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    order = {"a": 0, "b": 1, "d": 2, "c": 3}
    for key in sorted(cells, key=lambda k: (k[2], k[3], order.get(k[0], 9), k[1])):
        letter, name, mode, conns = key
        cs = cells[key]
        cpu = med([c.get("gw_cpu_us_per_req") or None for c in cs])
        lines.append(
            f"| ({letter}) {name} | {mode} | {conns} | {fmt(med([c['rps'] for c in cs]), '.0f')} | "
            f"{fmt(med([c['p50_ms'] for c in cs]), '.2f')} | {fmt(med([c['p99_ms'] for c in cs]), '.2f')} | "
            f"{fmt(cpu, '.0f') if cpu else '-'} |"
        )
    lines += [
        "",
        "| mode | conns | threads | rps c/a | rps c/b | rps c/d | CPU µs/req c | CPU µs/req d | CPU c/d | PostgreSQL CPU µs/req | Δp99 c vs a ms |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for key in sorted(ratios):
        rs = ratios[key]
        m = lambda f: med([r.get(f) for r in rs])
        lines.append(
            f"| {key[0]} | {key[1]} | {key[2]} | {fmt(m('c_over_a'), '.2f')} | {fmt(m('c_over_b'), '.2f')} | "
            f"{fmt(m('c_over_d'), '.2f')} | {fmt(m('cpu_c'), '.0f')} | {fmt(m('cpu_d'), '.0f')} | "
            f"{fmt(m('cpu_c_over_d'), '.2f')} | {fmt(m('pg_c'), '.0f')} | {fmt(m('d_p99_ms'), '+.2f')} |"
        )
    paced = {}
    for run in runs:
        for c in run.get("paced", []):
            paced.setdefault((c["letter"], c["contender"], c["mode"]), []).append(c)
    if paced:
        m0 = runs[0]["meta"]
        lines += [
            "",
            f"Paced ({m0.get('paced_conns')} connections, {m0.get('paced_rps')} requests/s in all, not saturated):",
            "",
            "| contender | mode | p50 ms | p99 ms | p99.9 ms | Δp50 ms | Δp99 ms | Δp99.9 ms | gw CPU µs/req |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for key in sorted(paced, key=lambda k: (k[2], order.get(k[0], 9), k[1])):
            cs = [c for c in paced[key] if "rps" in c]
            m = lambda f: med([c.get(f) for c in cs])
            direct = key[0] == "a"
            lines.append(
                f"| ({key[0]}) {key[1]} | {key[2]} | {fmt(m('p50_ms'), '.3f')} | {fmt(m('p99_ms'), '.3f')} | "
                f"{fmt(m('p999_ms'), '.3f')} | {'' if direct else fmt(m('d_p50_ms'), '+.3f')} | "
                f"{'' if direct else fmt(m('d_p99_ms'), '+.3f')} | {'' if direct else fmt(m('d_p999_ms'), '+.3f')} | "
                f"{'-' if direct else fmt(m('gw_cpu_us_per_req'), '.0f')} |"
            )
    lines += ["", "Row checks per run:"]
    for p, run in zip(paths, runs):
        md = run.get("rowcheck_md") or ""
        verdict = "FAIL" if "| FAIL |" in md else ("PASS" if "| PASS |" in md else "not run")
        lines.append(f"- {p.rsplit('/', 1)[-1]}: {verdict}" + (f"; failures: {run['failures']}" if run.get("failures") else ""))
    text = "\n".join(lines) + "\n"
    open(out_md, "w").write(text)
    sys.stdout.write(text)
    bad = any("| FAIL |" in (run.get("rowcheck_md") or "") or run.get("failures") for run in runs)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
