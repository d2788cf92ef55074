#!/usr/bin/env python3
"""Turns the suite's JSON lines into BENCHMARKS.md and the README's headline table.

    report.py RESULTS.jsonl --benchmarks BENCHMARKS.md --readme README.md [--commands FILE]

Only the newest run (its `run_id`) is reported, so every ratio compares
tools measured side by side: the newest with rate lines for the rate tables
and the README, the newest with WAN lines (those with a `profile`) for the
WAN tables, so a run of only one part keeps the other's tables. The
README's table goes between the markers `<!-- bench:begin -->` and
`<!-- bench:end -->`.
"""
import argparse
import json
import os
import platform
from collections import defaultdict

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
    """(rate rows, their run id, WAN rows, their run id), each of its newest run."""
    with open(path) as f:
        rows = [json.loads(line) for line in f if line.strip()]

    def newest(part):
        if not part:
            return [], None
        run = max(r["run_id"] for r in part)
        return [r for r in part if r["run_id"] == run], run

    return (*newest([r for r in rows if not r.get("profile")]), *newest([r for r in rows if r.get("profile")]))


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


def wan_md(rows, run_id):
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
    lines += [
        "",
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


def rate_md(by, workloads, rates, tools_seen):
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


def benchmarks_md(rows, run_id, commands, wan_rows=(), wan_run_id=None):
    by = index(rows)
    workloads = workloads_of(rows)
    rates = [r for r in RATES if any(row["rate"] == r for row in rows)]
    tools_seen = [t for t in TOOLS if any(r["tool"] == t for r in rows)]
    versions = {}
    for r in rows:
        versions.setdefault(r["tool"], r.get("tool_version", ""))
    wrong = [r for r in list(rows) + list(wan_rows) if not r["correct"]]
    lines = [
        "# Benchmarks",
        "",
        "Generated by `scripts/bench/suite.sh` (do not edit by hand: rerun it). "
        f"Run `{run_id}` on {machine()}, all tools side by side in one run"
        + (f"; the WAN tables are of run `{wan_run_id}`." if wan_run_id and wan_run_id != run_id else "."),
        "",
    ]
    if rows:
        lines += rate_md(by, workloads, rates, tools_seen)
    lines += (["", "### Workloads"] if rows else ["## Workloads"]) + ["", "| workload | files v1 → v2 | MB v1 → v2 |", "|---|---|---|"]
    everything = list(rows) + list(wan_rows)
    for w in workloads_of(everything):
        a = by.get(("unlimited", w, "initial", "xfer")) or \
            next((r for r in everything if r["workload"] == w and r["phase"] == "initial"), None) or \
            next(r for r in everything if r["workload"] == w)
        b = by.get(("unlimited", w, "delta", "xfer")) or \
            next((r for r in everything if r["workload"] == w and r["phase"] == "delta"), None) or a
        lines.append(f"| {w} | {a['src_files']} → {b['src_files']} | {a['src_bytes'] / 1e6:.0f} → "
                     f"{b['src_bytes'] / 1e6:.0f} |")
    if wan_rows:
        lines += [""] + wan_md(wan_rows, wan_run_id)
    for r in wan_rows:
        versions.setdefault(r["tool"], r.get("tool_version", ""))
    lines += ["", "## Tools", ""]
    for t in TOOLS:
        if t in versions:
            lines.append(f"- `{t}`: {versions[t]}")
    if wrong:
        lines += ["", "## Incorrect results", ""]
        for r in wrong:
            lines.append(f"- {r['tool']} {r['workload']} {r['phase']} {r.get('profile') or r['rate']}: "
                         f"{'; '.join(r['problems'][:3])}")
    analysis = os.path.join(os.path.dirname(os.path.abspath(__file__)), "ANALYSIS.md")
    if os.path.exists(analysis):
        with open(analysis) as f:
            lines += ["", f.read().strip()]
    lines += ["", "## How it was run", "", "```sh", commands.strip(), "```", ""]
    with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "METHOD.md")) as f:
        lines.append(f.read().strip())
    lines.append("")
    return "\n".join(lines)


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
    rows, run_id, wan_rows, wan_run_id = load(args.results)
    if not rows and not wan_rows:
        raise SystemExit(f"report.py: no results in {args.results}")
    commands = open(args.commands).read() if args.commands else "scripts/bench/suite.sh"
    with open(args.benchmarks, "w") as f:
        f.write(benchmarks_md(rows, run_id or wan_run_id, commands, wan_rows, wan_run_id))
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
