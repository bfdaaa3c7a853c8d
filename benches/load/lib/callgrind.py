#!/usr/bin/env python3
"""Summarise a callgrind profile of a gateway that served N requests.

    callgrind.py report OUT.md LABEL N FILE [LABEL N FILE ...]

Reads each callgrind output file (one per gateway, counters zeroed after the
warm-up and dumped after exactly N requests), and writes a Markdown report:
instructions per request (user space only: callgrind does not see the
kernel), the ratio of each gateway to the first one, where the instructions go
by library, the cost of each of majordomo's ProxyHttp phases (what its own code
adds to Pingora's), and the functions with the most instructions of their own.
Instruction counts do not depend on what else the machine is doing: the same
binary and inputs give the same numbers, so small changes can be compared on a
shared, noisy machine.
"""
import collections
import re
import sys

FN = re.compile(r"c?fn=\((\d+)\)(?: (.*))?")


def parse(path):
    """-> names{id: name}, self_cost{id: Ir}, edges{(caller, callee): [Ir, calls]}"""
    names, self_cost = {}, collections.Counter()
    edges = collections.defaultdict(lambda: [0, 0])
    cur = callee = None
    pending = None
    with open(path, errors="replace") as f:
        for line in f:
            c = line[:1]
            if line.startswith("fn="):
                m = FN.match(line.rstrip("\n"))
                if m.group(2):
                    names[m.group(1)] = m.group(2)
                cur = m.group(1)
            elif line.startswith("cfn="):
                m = FN.match(line.rstrip("\n"))
                if m.group(2):
                    names[m.group(1)] = m.group(2)
                callee = m.group(1)
            elif line.startswith("calls="):
                pending = int(line.split()[0][6:])
            elif c.isdigit() or c in "+-*":
                parts = line.split()
                if len(parts) < 2 or cur is None:
                    continue
                cost = int(parts[1])
                if pending is not None:
                    e = edges[(cur, callee)]
                    e[0] += cost
                    e[1] += pending
                    pending = None
                else:
                    self_cost[cur] += cost
    return names, self_cost, edges


GROUPS = [
    ("majordomo", r"majordomo::"),
    ("pingora", r"pingora"),
    ("tokio", r"tokio::"),
    ("serde / serde_json", r"serde_json|serde_core|serde::"),
    # glibc's malloc (the bare proxy) and jemalloc (majordomo: _rjem_* entry points, je_* inside)
    ("malloc / free", r"^(malloc|free|cfree|realloc|calloc|_int_\w+|unlink_chunk.*|malloc_consolidate|__libc_\w*alloc)$|__rust(c::__rdl)?_(alloc|dealloc|realloc)|^_?rjem_|^_rjem_je_|^je_|tikv_jemalloc"),
    ("memcpy / memmove", r"mem(cpy|move|set)"),
    ("http / httparse", r"^(http::|httparse::|<http::)"),
]


def group_of(name):
    for g, rx in GROUPS:
        if re.search(rx, name):
            return g
    return "other"


PHASE = re.compile(r"<majordomo::gateway::Gateway as pingora_proxy::proxy_trait::ProxyHttp>::(\w+)")


def summary(names, self_cost, edges, n):
    total = sum(self_cost.values())
    groups = collections.Counter()
    for k, v in self_cost.items():
        groups[group_of(names.get(k, k))] += v
    # a phase's cost: calls into it from outside majordomo, by phase name
    phases = collections.Counter()
    for (caller, callee), (cost, _) in edges.items():
        cn, ce = names.get(caller, ""), names.get(callee, "")
        if "majordomo::" in ce and "majordomo::" not in cn:
            m = PHASE.search(ce)
            phases[m.group(1) if m else "other (sink writers, background tasks)"] += cost
    top = [(v, names.get(k, k)) for k, v in self_cost.most_common(15)]
    return total, groups, phases, top


def main():
    if len(sys.argv) < 6 or sys.argv[1] != "report":
        sys.exit(__doc__)
    out = sys.argv[2]
    runs = []
    args = sys.argv[3:]
    for i in range(0, len(args), 3):
        label, n, path = args[i], int(args[i + 1]), args[i + 2]
        runs.append((label, n, summary(*parse(path), n)))
    lines = []
    base_label, base_n, (base_total, *_rest) = runs[0]
    lines.append("| gateway | requests | instructions / request | × " + base_label + " |")
    lines.append("|---|---:|---:|---:|")
    for label, n, (total, *_x) in runs:
        lines.append(f"| {label} | {n} | {total // n:,} | {(total / n) / (base_total / base_n):.2f} |")
    for label, n, (total, groups, phases, top) in runs:
        lines.append("")
        lines.append(f"#### {label}: where the instructions go (per request)")
        lines.append("")
        lines.append("| library | instructions | share |")
        lines.append("|---|---:|---:|")
        for g, v in groups.most_common():
            lines.append(f"| {g} | {v // n:,} | {100 * v / total:.1f} % |")
        if phases:
            lines.append("")
            lines.append("| majordomo phase (its own code, inclusive) | instructions |")
            lines.append("|---|---:|")
            for p, v in phases.most_common():
                lines.append(f"| {p} | {v // n:,} |")
        lines.append("")
        lines.append("| function (self) | instructions |")
        lines.append("|---|---:|")
        for v, name in top:
            name = name.replace("|", "\\|")
            if len(name) > 110:
                name = name[:107] + "..."
            lines.append(f"| `{name}` | {v // n:,} |")
    with open(out, "a") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines[: 2 + len(runs)]))


if __name__ == "__main__":
    main()
