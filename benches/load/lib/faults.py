#!/usr/bin/env python3
"""Where a process's resident memory comes from: page faults by the code that touched the page.

Reads `perf script` output of `perf record -e page-faults -c 1 --call-graph dwarf` (every
first touch of a 4 KiB page of anonymous memory, with its call stack) and attributes each
fault to its *site*: the innermost frame that is not a copy, the allocator, the kernel or
the standard library (so a page first written by `memcpy` while a future is moved into a
`Box` counts for the function that moved it). Prints a Markdown table of the top sites and
a summary by crate, in kB per stream (faults x 4 KiB / STREAMS).

    perf script -i perf.data -F comm,tid,event,ip,sym,dso | faults.py --streams 1000 --title majordomo
"""
import argparse
import collections
import re
import sys

PAGE_KB = 4.096  # kB per 4 KiB page

# Frames that only carry the write out for someone else.
PASS_THROUGH = re.compile(
    r"^(__mem(move|cpy|set)|_rjem_|je_|_int_(malloc|free|realloc)|malloc|calloc|realloc|free|"
    r"alloc::|core::|std::|<alloc::|<core::|<std::|bytes::|<bytes::|hashbrown::|<hashbrown::|"
    r"\[unknown\]|_copy_to_iter|copy_|__|asm_|exc_|do_|handle_|rep_movs|clear_page|memcpy|memset|"
    # jemalloc's static functions and glibc malloc's internals
    r"extent_|arena_|tcache_|emap_|base_|pac_|sec_|hpa_|sysmalloc|_int_memalign|tcache)"
)
CRATES = ["majordomo", "pingora_proxy", "pingora_core", "pingora_http", "pingora_timeout",
          "tokio", "http::", "httparse", "tokio_postgres", "rustls"]


def crate_of(sym):
    """The crate named first in the symbol: `pin<pingora_core::…<HttpProxy<majordomo::…>>`
    is Pingora's code, generic over majordomo's type."""
    found = [(sym.find(c), c) for c in CRATES if sym.find(c) >= 0]
    return min(found)[1].rstrip(":") if found else "other"


def shorten(sym):
    sym = re.sub(r"::\{\{closure\}\}", "::{closure}", sym)
    sym = re.sub(r"\+0x[0-9a-f]+$", "", sym)
    return sym if len(sym) <= 110 else sym[:107] + "..."


def samples(lines):
    frames = []
    kernel_only = True
    for line in lines:
        line = line.rstrip("\n")
        if not line.strip():
            if frames:
                yield frames, kernel_only
            frames, kernel_only = [], True
            continue
        if not line.startswith((" ", "\t")):
            continue  # the sample's header line
        # The dso is the last parenthesised part: a symbol may hold `, (A, B)`.
        m = re.match(r"\s+[0-9a-f]+\s+(.*)\s+\(([^()]*)\)$", line)
        if not m:
            continue
        sym, dso = m.group(1), m.group(2)
        if "kernel" not in dso:
            kernel_only = False
        frames.append((sym, dso))
    if frames:
        yield frames, kernel_only


def site_of(frames):
    inlined = None
    for sym, dso in frames:
        if "kernel" in dso or "vdso" in dso:
            continue
        passes = PASS_THROUGH.match(sym.lstrip("<")) and not sym.startswith("<T as")
        # Inlined frames mostly name generic helpers (`poll_read`, `{closure#0}`);
        # the next real frame is the function they were inlined into. The first
        # inlined one that names a crate is kept for when no real frame is left
        # but the thread's entry (everything inlined into it).
        if dso == "inlined":
            if inlined is None and not passes and "::" in sym:
                inlined = sym
            continue
        if passes:
            continue
        return sym
    return inlined or "[no user frame]"


def owner_of(frames, site):
    """majordomo when one of its functions is on the stack inside Pingora's
    (a header it inserts grows Pingora's header map: its choice, its page);
    else the crate of the site."""
    for sym, dso in frames:
        if "kernel" in dso:
            continue
        # Inlined frames count too: majordomo's code inlined into Pingora's.
        if sym.lstrip("<").startswith("majordomo::"):
            return "majordomo"
        if dso == "inlined":
            continue
        if sym.lstrip("<").startswith(("pingora_proxy", "pingora_core", "T as pingora_core")):
            break
    return crate_of(site) if site != "[no user frame]" else "other"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--streams", type=int, required=True)
    ap.add_argument("--title", default="process")
    ap.add_argument("--top", type=int, default=15)
    a = ap.parse_args()
    by_site = collections.Counter()
    by_crate = collections.Counter()
    total = 0
    for frames, _ in samples(sys.stdin):
        site = site_of(frames)
        by_site[shorten(site)] += 1
        by_crate[owner_of(frames, site)] += 1
        total += 1
    per = lambda n: n * PAGE_KB / a.streams  # noqa: E731
    print(f"#### {a.title}: {total} page faults while the streams opened, "
          f"{per(total):.1f} kB per stream")
    print()
    print("| owner: majordomo if its code is on the stack inside Pingora's, else the site's crate "
          "| kB / stream | share |")
    print("|---|---:|---:|")
    for c, n in by_crate.most_common():
        print(f"| {c} | {per(n):.1f} | {100 * n / max(total, 1):.1f} % |")
    print()
    print("| site (first frame past copies, the allocator and std) | kB / stream |")
    print("|---|---:|")
    for s, n in by_site.most_common(a.top):
        print(f"| `{s}` | {per(n):.1f} |")
    print()


if __name__ == "__main__":
    main()
