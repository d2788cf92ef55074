#!/usr/bin/env python3
"""Turns the suite's JSON lines into BENCHMARKS.md and the README's headline table.

    report.py RESULTS.jsonl --benchmarks BENCHMARKS.md --readme README.md [--commands FILE]

Only the newest run (its `run_id`) is reported, so every ratio compares
tools measured side by side: the newest with rate lines for the rate tables
and the README, the newest with WAN lines (those with a `profile`) for the
WAN tables, so a run of only one part keeps the other's tables. The
README's table goes between the markers `<!-- bench:begin -->` and
`<!-- bench:end -->`.

Hand-written sections are not generated but kept: each is one Markdown file
in scripts/bench/sections/ (its "## " heading included), copied verbatim
into BENCHMARKS.md at the place SECTIONS gives it, after a comment naming
the file. Edit a section in its file, never in BENCHMARKS.md: a
regeneration overwrites the latter. A new file must be added to SECTIONS
(report.py stops on one it cannot place, and on a listed one that is gone).
"""
import argparse
import json
import os
import platform
import sys
from collections import defaultdict

# The hand-written sections (see the docstring): {place: files, in order}.
SECTIONS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "sections")
SECTIONS = {
    # Figures measured apart from the suite (history.sh, rss-history.sh, store-nodes.sh):
    # after the generated tables, before "## Tools".
    "measured": ["history-disk.md", "history-memory.md", "store-nodes.md", "criterion.md"],
    # What the figures mean: before "## How it was run".
    "analysis": ["shortfalls.md", "defaults.md"],
}
# Charts go to this directory beside BENCHMARKS.md, linked relatively.
CHARTS_DIR = "bench-charts"
TOOLS = ["xfer", "rsync", "rsync-z", "rsync-ssh", "restic", "borg"]
RATES = ["unlimited", "100mbit", "20mbit"]
PHASES = ["initial", "delta", "noop"]
# The peers the delta target is measured against: the best of those that compress.
DELTA_PEERS = ["rsync-z", "restic", "borg"]
# Workloads whose data compresses, for the initial-phase target.
INCOMPRESSIBLE = {"random-blob", "huge-file", "big-random"}
TARGETS = {
    "delta_wire": 0.7,
    "noop_wire_bytes": 20_000,
    "wall_vs_rsync_ssh": 0.5,
    "initial_wall_vs_rsync_z": 0.5,
    "rss_kib": 100 * 1024,
}
# Issue 14's targets over the emulated WAN.
WAN_TARGETS = {
    "link_use": 0.90,
    "egress_ratio": 1.05,
    "delta_wall_vs_rsync_ssh": 0.6,
    # (d) holds on profiles with at least this round-trip time.
    "delta_min_rtt_ms": 40,
}


def load(path):
    """{part: (rows, run id)} of the newest run of each part: "rate", "wan" and "entries".

    WAN lines have a `profile`, entries.py's lines `kind: entries`; the rest
    are the rates'.
    """
    with open(path) as f:
        rows = [json.loads(line) for line in f if line.strip()]

    def newest(part):
        if not part:
            return [], None
        run = max(r["run_id"] for r in part)
        return [r for r in part if r["run_id"] == run], run

    def part(r):
        return "entries" if r.get("kind") == "entries" else "wan" if r.get("profile") else "rate"

    return {name: newest([r for r in rows if part(r) == name]) for name in ("rate", "wan", "entries")}


def index(rows):
    by = {}
    for r in rows:
        by[(r["rate"], r["workload"], r["phase"], r["tool"])] = r
    return by


def mb(n):
    return f"{n / 1e6:.3f}" if n < 1e6 else f"{n / 1e6:.2f}" if n < 1e8 else f"{n / 1e6:.0f}"


def cell(r):
    if r is None:
        return "–"
    if not r["correct"]:
        return "**wrong**"
    seeded = "†" if r.get("seeded") else ""
    return f"{mb(r['wire_total_bytes'])} ({r['wall_s']:.2f} s){seeded}"


def ok(flag):
    return "yes" if flag else "**no**"


def workloads_of(rows):
    order = ["source-tree", "log-append", "random-blob", "many-small", "big-file-edits", "database", "fs-image",
             "moved-files", "huge-file"]
    seen = {r["workload"] for r in rows}
    return [w for w in order if w in seen] + sorted(seen - set(order))


def machine():
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{cpu}, {os.cpu_count()} cores, {mem:.0f} GiB RAM, Linux {platform.release()}"


def targets(by, workloads):
    """Rows of (target, workload, xfer figure, reference figure, ratio, met)."""
    out = []
    for w in workloads:
        x = by.get(("unlimited", w, "delta", "xfer"))
        peers = [by.get(("unlimited", w, "delta", p)) for p in DELTA_PEERS]
        peers = [p for p in peers if p and p["correct"]]
        if x and peers:
            best = min(peers, key=lambda p: p["wire_total_bytes"])
            ratio = x["wire_total_bytes"] / max(best["wire_total_bytes"], 1)
            out.append(("delta wire ≤ 0.7x best of rsync -z/restic/borg", w, f"{mb(x['wire_total_bytes'])} MB",
                        f"{mb(best['wire_total_bytes'])} MB ({best['tool']})", f"{ratio:.2f}x",
                        ratio <= TARGETS["delta_wire"] and x["correct"]))
    for w in workloads:
        x = by.get(("unlimited", w, "noop", "xfer"))
        if x:
            out.append(("noop wire < 20 KB", w, f"{x['wire_total_bytes'] / 1e3:.1f} KB", "20 KB", "",
                        x["wire_total_bytes"] < TARGETS["noop_wire_bytes"]))
    for phase in ("delta", "noop"):
        for w in workloads:
            x, ref = by.get(("unlimited", w, phase, "xfer")), by.get(("unlimited", w, phase, "rsync-ssh"))
            if x and ref:
                ratio = x["wall_s"] / max(ref["wall_s"], 1e-3)
                out.append((f"{phase} wall ≤ 0.5x rsync over ssh (unlimited)", w, f"{x['wall_s']:.2f} s",
                            f"{ref['wall_s']:.2f} s", f"{ratio:.2f}x", ratio <= TARGETS["wall_vs_rsync_ssh"]))
    for w in workloads:
        if w in INCOMPRESSIBLE:
            continue
        x, ref = by.get(("100mbit", w, "initial", "xfer")), by.get(("100mbit", w, "initial", "rsync-z"))
        if x and ref and not x.get("seeded"):
            ratio = x["wall_s"] / max(ref["wall_s"], 1e-3)
            out.append(("initial wall at 100mbit ≤ 0.5x rsync -z", w, f"{x['wall_s']:.2f} s", f"{ref['wall_s']:.2f} s",
                        f"{ratio:.2f}x", ratio <= TARGETS["initial_wall_vs_rsync_z"]))
    for phase in PHASES:
        for w in workloads:
            x = by.get(("unlimited", w, phase, "xfer"))
            refs = [by.get(("unlimited", w, phase, t)) for t in ("restic", "borg")]
            refs = [r for r in refs if r]
            if x and refs:
                cpu = x["client_cpu_s"] + x["server_cpu_s"]
                least = min(refs, key=lambda r: r["client_cpu_s"] + r["server_cpu_s"])
                ref_cpu = least["client_cpu_s"] + least["server_cpu_s"]
                out.append((f"{phase} CPU (both sides) ≤ restic's and borg's", w, f"{cpu:.2f} s",
                            f"{ref_cpu:.2f} s ({least['tool']})", f"{cpu / max(ref_cpu, 1e-3):.2f}x", cpu <= ref_cpu))
    for w in workloads:
        xs = [r for (rate, wl, _, tool), r in by.items() if wl == w and tool == "xfer"]
        if xs:
            peak = max(max(r["client_peak_rss_kib"], r["server_peak_rss_kib"]) for r in xs)
            out.append(("peak RSS ≤ 100 MiB each side (all rates, phases)", w, f"{peak / 1024:.0f} MiB", "100 MiB", "",
                        peak <= TARGETS["rss_kib"]))
    return out


def profiles_of(rows):
    """The profiles in the rows, by round-trip time, loss, then rate."""
    seen = {r["profile"]: (r["rtt_ms"], r["loss"], float(r["rate"].removesuffix("mbit"))) for r in rows}
    return sorted(seen, key=seen.get)


def wan_index(rows):
    return {(r["profile"], r["workload"], r["phase"], r["tool"]): r for r in rows}


def sent(r):
    """Bytes that left the client over the push (the router's count, before its losses)."""
    return r["router"]["a_to_b"]["bytes_in"]


def met(flag):
    return "met" if flag else "**missed**"


def wan_targets(rows):
    """Rows of (profile, workload, (a), (b), (c), (d), bytes vs rsync -z) as table cells."""
    by = wan_index(rows)
    out = []
    for profile in profiles_of(rows):
        for w in workloads_of([r for r in rows if r["profile"] == profile]):
            x = by.get((profile, w, "initial", "xfer"))
            if x is None:
                continue
            if not x["correct"]:
                out.append((profile, w, "**wrong**", "**wrong**", "**wrong**", "–", "–"))
                continue
            a = f"{x['link_use']:.0%} {met(x['link_use'] >= WAN_TARGETS['link_use'])}"
            ratio = x["egress_ratio"]
            b = "–" if ratio is None else f"{ratio:.3f} {met(ratio <= WAN_TARGETS['egress_ratio'])}"
            refs = [by.get((profile, w, "initial", t)) for t in ("rsync-z", "rsync-ssh")]
            refs = [r for r in refs if r and r["correct"]]
            c = "–"
            if refs:
                best = min(refs, key=lambda r: r["wall_s"])
                c = (f"{x['wall_s']:.1f} s vs {best['wall_s']:.1f} s ({best['tool']}) "
                     f"{met(x['wall_s'] <= best['wall_s'])}")
            d = "–"
            xd, ref = by.get((profile, w, "delta", "xfer")), by.get((profile, w, "delta", "rsync-ssh"))
            if x["rtt_ms"] >= WAN_TARGETS["delta_min_rtt_ms"] and xd and ref and ref["correct"]:
                if not xd["correct"]:
                    d = "**wrong**"
                else:
                    ratio = xd["wall_s"] / max(ref["wall_s"], 1e-3)
                    d = (f"{xd['wall_s']:.1f} s = {ratio:.2f}x "
                         f"{met(ratio <= WAN_TARGETS['delta_wall_vs_rsync_ssh'])}")
            z = by.get((profile, w, "initial", "rsync-z"))
            bytes_vs_z = f"{sent(x) / max(sent(z), 1):.2f}x" if z and z["correct"] else "–"
            out.append((profile, w, a, b, c, d, bytes_vs_z))
    return out


def wan_md(rows, run_id, charts=(), link_charts=()):
    """The WAN section: issue 14's targets, then per profile and workload every tool's figures."""
    by = wan_index(rows)
    cc = sorted({r.get("tcp_cc", "?") for r in rows})
    lines = [
        "## WAN",
        "",
        f"Run `{run_id}` over the emulated WAN (see Method): every tool on every profile, the first push "
        f"included. The TCP tools ran with the kernel's `{', '.join(cc)}` congestion control.",
        "",
        "### WAN targets",
        "",
        "From issue 14, xfer's figures of this run: (a) first push uses ≥ 90% of the link; (b) bytes leaving "
        "the client ≤ 1.05x the bytes arriving, on the first push; (c) first-push wall ≤ the faster of rsync -z "
        "and rsync over ssh; (d) delta wall ≤ 0.6x rsync over ssh, on the 40 and 150 ms profiles. The last "
        "column, not a target, is the bytes xfer's first push sent against rsync -z's.",
        "",
        "| profile | workload | (a) link use | (b) egress ratio | (c) first-push wall | "
        "(d) delta wall vs rsync-ssh | first-push bytes vs rsync -z |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in wan_targets(rows):
        lines.append("| " + " | ".join(row) + " |")
    lines.append("")
    if link_charts:
        lines += ["Link use over the first push of xfer and of rsync over ssh: the bytes the router delivered to "
                  "the server in each 100 ms, as a share of the profile's rate.", ""] + chart_links(link_charts)
    lines += chart_links(charts)
    lines += [
        "Per profile and workload, each tool's push wall time per phase; MB sent: bytes that left the client "
        "per phase (initial / delta / noop), as the router counts them before it drops any; link use: bytes "
        "that arrived at the server x 8 / (rate x wall) of the first push; egress: bytes sent / bytes arrived, "
        "client → server, of the first push / of the delta; drops: packets the router dropped on the first push, by loss + by its full queue, "
        "client → server / server → client.",
        "",
    ]
    tools = [t for t in TOOLS if any(r["tool"] == t for r in rows)]
    for profile in profiles_of(rows):
        mine = [r for r in rows if r["profile"] == profile]
        spec = mine[0]
        for w in workloads_of(mine):
            lines += [f"### WAN {profile}, {w}", "",
                      f"{spec['rtt_ms']:g} ms RTT, {spec['loss'] * 100:g}% loss, {spec['rate']}.", "",
                      "| tool | initial s | delta s | noop s | MB sent | link use | egress | drops |",
                      "|---|---|---|---|---|---|---|---|"]
            for t in tools:
                phases = [by.get((profile, w, p, t)) for p in PHASES]
                if not any(phases):
                    continue
                walls = ["–" if r is None else "**wrong**" if not r["correct"] else f"{r['wall_s']:.2f}"
                         for r in phases]
                mbs = " / ".join("–" if r is None else mb(sent(r)) for r in phases)
                first = phases[0]
                if first is None or not first["correct"]:
                    use = egress = drops = "–"
                else:
                    use = f"{first['link_use']:.0%}"
                    egress = " / ".join("–" if r is None or not r["correct"] or r["egress_ratio"] is None
                                        else f"{r['egress_ratio']:.3f}" for r in phases[:2])
                    router = first["router"]
                    drops = " / ".join(f"{router[d]['dropped_loss']}+{router[d]['dropped_queue']}"
                                       for d in ("a_to_b", "b_to_a"))
                lines.append(f"| {t} | " + " | ".join(walls) + f" | {mbs} | {use} | {egress} | {drops} |")
            lines.append("")
    return lines


# Issue 18's targets: ratios from one run (see issue18_targets).
ISSUE18 = {
    "delta_wire_vs_best_peer": 0.7,
    "initial_wire_vs_rsync_z": 1.0,
    "delta_wall_vs_rsync_ssh": 0.5,
    "incompressible_mb_s": 300,
    "entries": 10_000_000,
    "entries_rss_mib": 200,
}
ISSUE18_NAMES = {
    1: "1a. delta wire ≤ 0.7x the best peer",
    2: "1b. first-push wire ≤ rsync -z's",
    3: "2. delta wall ≤ 0.5x rsync over ssh (unlimited)",
    4: "3a. uncapped first push of incompressible data ≥ 300 MB/s",
    5: "3b. CPU (both sides) ≤ restic's and borg's",
    6: "4. 10,000,000 entries: peak RSS ≤ 200 MiB each side",
    7: "4. seconds per million entries against rsync and restic",
}


def verdict(value, limit, at_most=True, unit="x", digits=2):
    """"met", or "**missed**" with the gap, for value against limit."""
    good = value <= limit if at_most else value >= limit
    if good:
        return "met"
    return f"**missed** ({value:.{digits}f}{unit}, needs {'≤' if at_most else '≥'} {limit:g}{unit})"


def ratio_row(key, w, x, ref, field, limit, fmt, ref_name=None):
    """A target row comparing x[field] with ref[field] (either may be missing or wrong)."""
    if x is None or ref is None:
        return None
    if not x["correct"]:
        return (key, w, "**wrong**", "", "", "**missed** (wrong result)")
    ratio = x[field] / max(ref[field], 1e-3)
    return (key, w, fmt(x[field]), f"{fmt(ref[field])} ({ref_name or ref['tool']})", f"{ratio:.2f}x",
            verdict(ratio, limit))


def issue18_rate_targets(by, workloads):
    """Targets 1a, 1b, 2, 3a and 3b from the unlimited rate's rows."""
    out = []
    peers = [t for t in TOOLS if t != "xfer"]
    for w in workloads:
        x = by.get(("unlimited", w, "delta", "xfer"))
        refs = [r for r in (by.get(("unlimited", w, "delta", t)) for t in peers) if r and r["correct"]]
        best = min(refs, key=lambda r: r["wire_total_bytes"]) if refs else None
        out.append(ratio_row(1, w, x, best, "wire_total_bytes", ISSUE18["delta_wire_vs_best_peer"],
                             lambda v: f"{mb(v)} MB"))
    for w in workloads:
        x, ref = by.get(("unlimited", w, "initial", "xfer")), by.get(("unlimited", w, "initial", "rsync-z"))
        ok_ref = ref if ref and ref["correct"] else None
        out.append(ratio_row(2, w, x, ok_ref, "wire_total_bytes", ISSUE18["initial_wire_vs_rsync_z"],
                             lambda v: f"{mb(v)} MB"))
    for w in workloads:
        x, ref = by.get(("unlimited", w, "delta", "xfer")), by.get(("unlimited", w, "delta", "rsync-ssh"))
        ok_ref = ref if ref and ref["correct"] else None
        out.append(ratio_row(3, w, x, ok_ref, "wall_s", ISSUE18["delta_wall_vs_rsync_ssh"], lambda v: f"{v:.2f} s"))
    for w in workloads:
        x = by.get(("unlimited", w, "initial", "xfer"))
        if w in INCOMPRESSIBLE and x:
            if not x["correct"]:
                out.append((4, w, "**wrong**", "", "", "**missed** (wrong result)"))
                continue
            rate = x["src_bytes"] / 1e6 / max(x["wall_s"], 1e-3)
            out.append((4, w, f"{rate:.0f} MB/s ({mb(x['src_bytes'])} MB in {x['wall_s']:.2f} s)", "300 MB/s", "",
                        verdict(rate, ISSUE18["incompressible_mb_s"], at_most=False, unit=" MB/s", digits=0)))
    for phase in PHASES:
        for w in workloads:
            x = by.get(("unlimited", w, phase, "xfer"))
            refs = [r for r in (by.get(("unlimited", w, phase, t)) for t in ("restic", "borg")) if r]
            if not x or not refs:
                continue
            least = min(refs, key=lambda r: r["client_cpu_s"] + r["server_cpu_s"])
            both = dict(x, cpu=x["client_cpu_s"] + x["server_cpu_s"])
            ref = dict(least, cpu=least["client_cpu_s"] + least["server_cpu_s"])
            out.append(ratio_row(5, f"{w}, {phase}", both, ref, "cpu", 1.0, lambda v: f"{v:.2f} s"))
    return [row for row in out if row]


def issue18_entries_targets(entries_rows):
    """Target 4 from entries.py's rows: RSS at 10,000,000 entries, and seconds per million against the peers."""
    if not entries_rows:
        return []
    by = {(r["entries"], r["tool"], r["phase"]): r for r in entries_rows}
    largest = max(r["entries"] for r in entries_rows)
    n = ISSUE18["entries"] if any(r["entries"] == ISSUE18["entries"] for r in entries_rows) else largest
    out = []
    for phase in ("push", "noop", "pull"):
        x = by.get((n, "xfer", phase))
        if x is None:
            continue
        scope = f"{n:,} entries, {phase}"
        if not x["correct"]:
            out.append((6, scope, "**wrong**", "", "", "**missed** (wrong result)"))
            continue
        peak = max(x["client_peak_rss_kib"], x["server_peak_rss_kib"]) / 1024
        figure = f"{x['client_peak_rss_kib'] / 1024:.0f} / {x['server_peak_rss_kib'] / 1024:.0f} MiB"
        status = verdict(peak, ISSUE18["entries_rss_mib"], unit=" MiB", digits=0)
        if n < ISSUE18["entries"]:
            status = (f"not measured at {ISSUE18['entries']:,} entries ({status.replace('**', '')} at {n:,}"
                      f"{rss_trend(by, n, phase)})")
        out.append((6, scope, figure, f"{ISSUE18['entries_rss_mib']} MiB", "", status))
        for peer in ("rsync", "restic"):
            ref = by.get((n, peer, phase))
            if ref and ref["correct"]:
                per_m = [r["wall_s"] / r["entries"] * 1e6 for r in (x, ref)]
                out.append((7, scope, f"{per_m[0]:.1f} s/M", f"{per_m[1]:.1f} s/M ({peer})",
                            f"{per_m[0] / max(per_m[1], 1e-3):.2f}x", "figure, no threshold"))
    return out


def rss_trend(by, n, phase):
    """", about X MiB at 10,000,000 if linear", from xfer's larger side on the two largest trees up to n."""
    sizes = sorted(m for (m, tool, p) in by if tool == "xfer" and p == phase and m <= n and by[(m, tool, p)]["correct"])
    if len(sizes) < 2:
        return ""
    (a, b) = sizes[-2:]
    peak = [max(by[(m, "xfer", phase)]["client_peak_rss_kib"], by[(m, "xfer", phase)]["server_peak_rss_kib"]) / 1024
            for m in (a, b)]
    slope = (peak[1] - peak[0]) / (b - a)
    if slope <= 0:
        return ""
    guess = peak[1] + slope * (ISSUE18["entries"] - b)
    return f"; {slope * 1e5:.0f} MiB more per 100,000 entries from {a:,} to {b:,}, so about {guess / 1024:,.1f} GiB " \
           f"at {ISSUE18['entries']:,} if it grows linearly"


def issue18_md(by, workloads, entries_rows):
    """Issue 18's targets: a line per target (met on how many), then every measured figure."""
    rows = sorted(issue18_rate_targets(by, workloads) + issue18_entries_targets(entries_rows), key=lambda r: r[0])
    lines = ["## Issue 18 targets", "",
             "Computed from this file's runs, every ratio between figures of one run: the rate rows at "
             "\"unlimited\" (delta bytes against the best of every peer, rsync without compression included) "
             "and the tree-size rows of \"Memory and time against tree size\". \"Where xfer falls short\" "
             "below gives the reason for each target missed.", ""]
    for key, name in ISSUE18_NAMES.items():
        mine = [r for r in rows if r[0] == key]
        missed = [r for r in mine if r[5].startswith("**missed")]
        unmeasured = [r for r in mine if r[5].startswith("not measured")]
        if key == 7:
            summary = "figures below" if mine else "not measured (no tree-size run)"
        elif not mine:
            summary = "**not measured** in this run"
        elif missed:
            summary = f"**missed** on {len(missed)} of {len(mine)}"
        elif unmeasured:
            summary = "**not measured** at 10,000,000 entries (see below for the largest tree run)"
        else:
            summary = f"met on {len(mine)} of {len(mine)}"
        lines.append(f"- {name}: {summary}")
    lines += ["", "| target | workload | xfer | reference | ratio | status |", "|---|---|---|---|---|---|"]
    for key, scope, xv, ref, ratio, status in rows:
        lines.append(f"| {ISSUE18_NAMES[key]} | {scope} | {xv} | {ref} | {ratio} | {status} |")
    return lines


def entries_md(rows, run_id, charts):
    """The tree-size part: wall, s per million entries and peak RSS per tool, size and phase."""
    sizes = sorted({r["entries"] for r in rows})
    by = {(r["entries"], r["tool"], r["phase"]): r for r in rows}
    tools = [t for t in TOOLS if any(r["tool"] == t for r in rows)]
    lines = ["## Memory and time against tree size", "",
             f"Run `{run_id}` of `scripts/bench/entries.py` (see Method): generated trees of empty and tiny files "
             "in flat, deep and wide directories, pushed into an empty destination, pushed again unchanged "
             "(noop), then pulled back into an empty directory, over the veth pair uncapped. Each cell: wall "
             "seconds (seconds per million entries), peak RSS client / server in MiB.", ""]
    lines += chart_links(charts)
    lines += ["| entries | files / dirs | tool | push | noop | pull |", "|---|---|---|---|---|---|"]
    for n in sizes:
        for t in tools:
            cells = []
            for phase in ("push", "noop", "pull"):
                r = by.get((n, t, phase))
                cells.append("–" if r is None else "**wrong**" if not r["correct"] else
                             f"{r['wall_s']:.2f} s ({r['wall_s'] / n * 1e6:.1f} s/M), "
                             f"{r['client_peak_rss_kib'] / 1024:.0f} / {r['server_peak_rss_kib'] / 1024:.0f}")
            some = next(r for r in rows if r["entries"] == n)
            lines.append(f"| {n:,} | {some['files']:,} / {some['dirs']:,} | {t} | " + " | ".join(cells) + " |")
    return lines


def rate_md(by, workloads, rates, tools_seen, charts=()):
    """The rate part: issue 6's targets, the tables per phase and rate, CPU and RSS."""
    lines = [
        "## Targets",
        "",
        "From issue 6; every ratio compares figures of this one run. "
        "A **no** is a missed target; \"Where xfer falls short\" below says why.",
        "",
        "| target | workload | xfer | reference | ratio | met |",
        "|---|---|---|---|---|---|",
    ]
    for name, w, xv, ref, ratio, met in targets(by, workloads):
        lines.append(f"| {name} | {w} | {xv} | {ref} | {ratio} | {ok(met)} |")
    lines += ["", "## Results", "",
              "Each cell: total wire bytes in MB, both directions, as counted on the veth link (TCP and UDP, "
              "all headers, handshakes and retransmits), then the push's wall time. † marks an initial phase "
              "seeded uncapped to save time at a slow rate (not a capped measurement).", ""]
    lines += chart_links(charts)
    for rate in rates:
        for phase in PHASES:
            present = [w for w in workloads if any((rate, w, phase, t) in by for t in tools_seen)]
            if not present:
                continue
            lines += [f"### {phase}, {rate}", "", "| workload | " + " | ".join(tools_seen) + " |",
                      "|---|" + "---|" * len(tools_seen)]
            for w in present:
                lines.append(f"| {w} | " + " | ".join(cell(by.get((rate, w, phase, t))) for t in tools_seen) + " |")
            lines.append("")
    lines += ["### CPU seconds (client + server) and peak RSS MiB (client / server), unlimited", "",
              "| workload | phase | " + " | ".join(tools_seen) + " |", "|---|---|" + "---|" * len(tools_seen)]
    for w in workloads:
        for phase in PHASES:
            cells = []
            for t in tools_seen:
                r = by.get(("unlimited", w, phase, t))
                cells.append("–" if r is None else
                             f"{r['client_cpu_s'] + r['server_cpu_s']:.2f} s, "
                             f"{r['client_peak_rss_kib'] // 1024}/{r['server_peak_rss_kib'] // 1024}")
            lines.append(f"| {w} | {phase} | " + " | ".join(cells) + " |")
    return lines


# What each chart shows, for its alt text, by file name prefix.
CHART_ALT = {
    "wall-": "Push wall time per tool and workload, one panel per phase",
    "wire-": "Wire bytes per tool and workload, one panel per phase",
    "wan-wall-": "WAN push wall time per tool and profile, one panel per phase",
    "wan-sent-": "WAN bytes sent by the client per tool and profile, one panel per phase",
    "link-": "Link use over time during the first push, per profile",
    "entries-rss": "Peak RSS per side against tree size",
    "entries-time": "Wall seconds per million entries against tree size",
}


def chart_links(charts):
    """Markdown lines showing the named charts (relative links), each its own paragraph."""
    lines = []
    for c in charts:
        alt = next((text for prefix, text in CHART_ALT.items() if c.startswith(prefix)), c)
        lines += [f"![{alt}: {c.removesuffix('.svg')}]({CHARTS_DIR}/{c})", ""]
    return lines


def read_sections(directory=SECTIONS_DIR, placement=SECTIONS):
    """{place: Markdown lines} of the hand-written sections, each after a blank line and a comment naming its file.

    Stops on a listed file that is missing and on a file no place lists, so none is dropped unnoticed.
    """
    listed = [name for names in placement.values() for name in names]
    try:
        present = {n for n in os.listdir(directory) if n.endswith(".md")}
    except OSError as e:
        raise SystemExit(f"report.py: the hand-written sections: {e}")
    unplaced = sorted(present - set(listed))
    if unplaced:
        raise SystemExit(f"report.py: {', '.join(unplaced)} in {directory} not placed: add to SECTIONS in report.py")
    # The comment names the file from the repository's root.
    where = os.path.relpath(directory, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
    out = {}
    for place, names in placement.items():
        out[place] = []
        for name in names:
            try:
                with open(os.path.join(directory, name), encoding="utf-8") as f:
                    text = f.read()
            except OSError as e:
                raise SystemExit(f"report.py: section {name} of SECTIONS: {e}")
            out[place] += ["", f"<!-- {where}/{name}, copied by report.py: edit it there -->", text.rstrip("\n")]
    return out


def benchmarks_md(parts, commands, charts=None, sections=None):
    """BENCHMARKS.md from load()'s parts; charts: {section: [file names]}, or None if they were skipped;
    sections: read_sections()'s lines, or None for none."""
    sections = sections or {}
    rows, run_id = parts["rate"]
    wan_rows, wan_run_id = parts["wan"]
    entries_rows, entries_run_id = parts["entries"]
    run_id = run_id or wan_run_id or entries_run_id
    drawn = charts or {}
    by = index(rows)
    workloads = workloads_of(rows)
    rates = [r for r in RATES if any(row["rate"] == r for row in rows)]
    tools_seen = [t for t in TOOLS if any(r["tool"] == t for r in rows)]
    versions = {}
    for r in rows:
        versions.setdefault(r["tool"], r.get("tool_version", ""))
    wrong = [r for r in list(rows) + list(wan_rows) + list(entries_rows) if not r["correct"]]
    others = []
    if wan_run_id and wan_run_id != run_id:
        others.append(f"the WAN tables are of run `{wan_run_id}`")
    if entries_run_id and entries_run_id != run_id:
        others.append(f"the tree-size tables of run `{entries_run_id}`")
    lines = [
        "# Benchmarks",
        "",
        "Generated by `scripts/bench/suite.sh` (do not edit by hand: rerun it). "
        f"Run `{run_id}` on {machine()}, all tools side by side in one run"
        + (f"; {'; '.join(others)}." if others else "."),
        "",
    ]
    if charts is None:
        lines += [f"Charts skipped: matplotlib is not installed for {sys.executable} "
                  "(`apt-get install python3-matplotlib`; setup.sh does).", ""]
    lines += issue18_md(by, workloads, entries_rows) + [""]
    if rows:
        lines += rate_md(by, workloads, rates, tools_seen, drawn.get("rate", []))
    everything = list(rows) + list(wan_rows)
    if everything:
        lines += (["", "### Workloads"] if rows else ["## Workloads"]) + \
            ["", "| workload | files v1 → v2 | MB v1 → v2 |", "|---|---|---|"]
    for w in workloads_of(everything):
        a = by.get(("unlimited", w, "initial", "xfer")) or \
            next((r for r in everything if r["workload"] == w and r["phase"] == "initial"), None) or \
            next(r for r in everything if r["workload"] == w)
        b = by.get(("unlimited", w, "delta", "xfer")) or \
            next((r for r in everything if r["workload"] == w and r["phase"] == "delta"), None) or a
        lines.append(f"| {w} | {a['src_files']} → {b['src_files']} | {a['src_bytes'] / 1e6:.0f} → "
                     f"{b['src_bytes'] / 1e6:.0f} |")
    if wan_rows:
        lines += [""] + wan_md(wan_rows, wan_run_id, drawn.get("wan", []), drawn.get("link", []))
    if entries_rows:
        lines += [""] + entries_md(entries_rows, entries_run_id, drawn.get("entries", []))
    lines += sections.get("measured", [])
    for r in list(wan_rows) + list(entries_rows):
        versions.setdefault(r["tool"], r.get("tool_version", ""))
    lines += ["", "## Tools", ""]
    for t in TOOLS:
        if t in versions:
            lines.append(f"- `{t}`: {versions[t]}")
    if wrong:
        lines += ["", "## Incorrect results", ""]
        for r in wrong:
            where = f"{r['entries']:,} entries" if r.get("kind") == "entries" else r.get("profile") or r["rate"]
            lines.append(f"- {r['tool']} {r.get('workload', 'tree')} {r['phase']} {where}: "
                         f"{'; '.join(r['problems'][:3])}")
    lines += sections.get("analysis", [])
    lines += ["", "## How it was run", "", "```sh", commands.strip(), "```", ""]
    with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "METHOD.md")) as f:
        lines.append(f.read().strip())
    lines.append("")
    return "\n".join(lines)


def draw_charts(parts, out_dir):
    """Every chart of the report into out_dir (its old SVGs removed): {section: [file names]}.

    None when matplotlib is missing: the tables are written without charts.
    """
    try:
        import charts
    except ImportError:
        return None
    os.makedirs(out_dir, exist_ok=True)
    for name in os.listdir(out_dir):
        if name.endswith(".svg"):
            os.unlink(os.path.join(out_dir, name))
    rows, _ = parts["rate"]
    wan_rows, _ = parts["wan"]
    entries_rows, _ = parts["entries"]
    drawn = {}
    if rows:
        tools = [t for t in TOOLS if any(r["tool"] == t for r in rows)]
        drawn["rate"] = charts.rate_charts(out_dir, index(rows), workloads_of(rows), tools)
    if wan_rows:
        tools = [t for t in TOOLS if any(r["tool"] == t for r in wan_rows)]
        profiles, workloads = profiles_of(wan_rows), workloads_of(wan_rows)
        drawn["wan"] = charts.wan_charts(out_dir, wan_index(wan_rows), profiles, workloads, tools)
        drawn["link"] = charts.link_charts(out_dir, wan_rows, profiles, workloads)
    if entries_rows:
        drawn["entries"] = charts.entries_charts(out_dir, entries_rows, ISSUE18["entries_rss_mib"])
    return drawn


def readme_table(rows):
    by = index(rows)
    out = ["| workload | xfer | rsync -z | rsync over ssh | restic | borg | xfer / best |", "|---|---|---|---|---|---|---|"]
    for w in workloads_of(rows):
        cells = [by.get(("unlimited", w, "delta", t)) for t in ("xfer", "rsync-z", "rsync-ssh", "restic", "borg")]
        if cells[0] is None:
            continue
        peers = [c for c in cells[1:] if c and c["correct"] and c["tool"] in DELTA_PEERS]
        best = min((c["wire_total_bytes"] for c in peers), default=None)
        ratio = f"{cells[0]['wire_total_bytes'] / best:.2f}x" if best else "–"
        out.append(f"| {w} | " + " | ".join(cell(c) for c in cells) + f" | {ratio} |")
    return "\n".join(out)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("results")
    parser.add_argument("--benchmarks", required=True)
    parser.add_argument("--readme")
    parser.add_argument("--commands", help="file holding the exact commands of the run")
    args = parser.parse_args()
    parts = load(args.results)
    if not any(rows for rows, _ in parts.values()):
        raise SystemExit(f"report.py: no results in {args.results}")
    commands = open(args.commands).read() if args.commands else "scripts/bench/suite.sh"
    # Before the charts, which replace the old ones: a missing section stops the report with nothing changed.
    sections = read_sections()
    charts = draw_charts(parts, os.path.join(os.path.dirname(os.path.abspath(args.benchmarks)), CHARTS_DIR))
    if charts is None:
        print(f"report.py: charts skipped: no matplotlib for {sys.executable}", file=sys.stderr)
    with open(args.benchmarks, "w") as f:
        f.write(benchmarks_md(parts, commands, charts, sections))
    rows, _ = parts["rate"]
    if args.readme and rows:
        with open(args.readme) as f:
            text = f.read()
        begin, end = "<!-- bench:begin -->", "<!-- bench:end -->"
        if begin not in text or end not in text:
            raise SystemExit(f"report.py: {args.readme} lacks the {begin} / {end} markers")
        head, rest = text.split(begin, 1)
        _, tail = rest.split(end, 1)
        with open(args.readme, "w") as f:
            f.write(head + begin + "\n" + readme_table(rows) + "\n" + end + tail)


if __name__ == "__main__":
    main()
