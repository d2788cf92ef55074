"""The SVG charts of BENCHMARKS.md, drawn with matplotlib from the suite's result rows.

Each function writes one SVG into `out_dir` and returns its file name, or
None when the rows hold nothing to draw. The same rows give the same bytes:
no timestamp in the file, fixed ids (svg.hashsalt), text kept as text.
report.py imports this module only when matplotlib is there.
"""
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
from matplotlib import ticker  # noqa: E402

matplotlib.rcParams.update({
    "svg.hashsalt": "xfer-bench",
    "svg.fonttype": "none",
    "font.size": 9,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.axisbelow": True,
})

# One colour per tool, the same in every chart; xfer stands out.
COLOURS = {
    "xfer": "#d62728",
    "rsync": "#7f7f7f",
    "rsync-z": "#1f77b4",
    "rsync-ssh": "#2ca02c",
    "restic": "#9467bd",
    "borg": "#ff7f0e",
}
PHASES = ["initial", "delta", "noop"]


def save(fig, out_dir, name):
    fig.savefig(os.path.join(out_dir, name), format="svg", bbox_inches="tight", metadata={"Date": None})
    plt.close(fig)
    return name


def wide_range(values):
    """Whether the positive values span more than 20x, so a log scale reads better."""
    positive = [v for v in values if v and v > 0]
    return len(positive) > 1 and max(positive) / min(positive) > 20


def plain_log(axis):
    """A log axis labelled 1, 2, 5, 10, 20 ... in plain numbers, not powers of ten."""
    axis.set_major_locator(ticker.LogLocator(base=10, subs=(1, 2, 5)))
    axis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:,.10g}"))
    axis.set_minor_formatter(ticker.NullFormatter())


def entries_axis(ax, sizes):
    """Log x axis with a tick at each tree size run, labelled 10k, 1M ..."""
    ax.set_xscale("log")
    ax.set_xticks(sizes)
    ax.set_xticklabels([f"{n / 1e6:g}M" if n >= 1e6 else f"{n / 1e3:g}k" for n in sizes])
    ax.xaxis.set_minor_locator(ticker.NullLocator())
    ax.set_xlabel("entries in the tree")


def grouped_bars(ax, groups, tools, value, unit):
    """Bars of value(group, tool) (None: no bar), one cluster per group, one colour per tool."""
    width = 0.8 / max(len(tools), 1)
    values = []
    for i, tool in enumerate(tools):
        xs, ys = [], []
        for g, group in enumerate(groups):
            v = value(group, tool)
            if v is not None:
                xs.append(g - 0.4 + width * (i + 0.5))
                ys.append(v)
        values += ys
        ax.bar(xs, ys, width, label=tool, color=COLOURS.get(tool), edgecolor="black" if tool == "xfer" else None,
               linewidth=0.6)
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels(groups, rotation=20, ha="right")
    ax.set_ylabel(unit)
    if wide_range(values):
        ax.set_yscale("log")
        plain_log(ax.yaxis)
    return values


def header(fig, title, ax, columns, height):
    """Title and one legend for the whole figure above its panels."""
    handles, labels = ax.get_legend_handles_labels()
    # Text, not suptitle: tight_layout would make room for a suptitle a second time.
    fig.text(0.01, 1 - 0.05 / height, title, ha="left", va="top", fontsize=11)
    fig.legend(handles, labels, ncol=min(columns, 6), loc="upper left", bbox_to_anchor=(0.01, 1 - 0.3 / height),
               frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.6 / height))


def phase_bars(out_dir, name, title, groups, tools, value, unit):
    """One grouped-bar panel per phase, stacked; value(phase, group, tool)."""
    phases = [p for p in PHASES if any(value(p, g, t) is not None for g in groups for t in tools)]
    if not phases:
        return None
    height = 2.6 * len(phases) + 0.8
    fig, axes = plt.subplots(len(phases), 1, figsize=(max(6.0, 1.1 * len(groups) + 2), height), squeeze=False)
    for ax, phase in zip(axes[:, 0], phases):
        grouped_bars(ax, groups, tools, lambda g, t, p=phase: value(p, g, t), unit)
        ax.set_title(f"{phase}", loc="left", fontsize=9)
    header(fig, title, axes[0, 0], len(tools), height)
    return save(fig, out_dir, name)


def rate_charts(out_dir, by, workloads, tools, rate="unlimited"):
    """Wall time and wire bytes per tool and workload, one panel per phase, at `rate`."""
    def figure(key, scale):
        def value(phase, w, t):
            r = by.get((rate, w, phase, t))
            return r[key] * scale if r and r["correct"] and r[key] > 0 else None
        return value

    return [c for c in (
        phase_bars(out_dir, f"wall-{rate}.svg", f"Push wall time, {rate} (log scale where wide)", workloads, tools,
                   figure("wall_s", 1), "seconds"),
        phase_bars(out_dir, f"wire-{rate}.svg", f"Wire bytes both ways, {rate}", workloads, tools,
                   figure("wire_total_bytes", 1e-6), "MB"),
    ) if c]


def wan_charts(out_dir, by, profiles, workloads, tools):
    """Per WAN workload: wall time and bytes sent per tool and profile, one panel per phase."""
    made = []
    for w in workloads:
        def wall(phase, p, t, w=w):
            r = by.get((p, w, phase, t))
            return r["wall_s"] if r and r["correct"] else None

        def sent(phase, p, t, w=w):
            r = by.get((p, w, phase, t))
            return r["router"]["a_to_b"]["bytes_in"] / 1e6 if r and r["correct"] else None

        made += [c for c in (
            phase_bars(out_dir, f"wan-wall-{w}.svg", f"WAN push wall time, {w}", profiles, tools, wall, "seconds"),
            phase_bars(out_dir, f"wan-sent-{w}.svg", f"WAN bytes sent by the client, {w}", profiles, tools, sent,
                       "MB"),
        ) if c]
    return made


def utilisation(series, rate_mbit):
    """(mid-interval seconds, % of the cap) from cumulative delivered bytes."""
    t, b = series["t_s"], series["delivered_bytes"]
    xs, ys = [], []
    for i in range(1, len(t)):
        dt = t[i] - t[i - 1]
        if dt > 0:
            xs.append((t[i] + t[i - 1]) / 2)
            ys.append((b[i] - b[i - 1]) * 8 / (rate_mbit * 1e6 * dt) * 100)
    return xs, ys


def link_charts(out_dir, rows, profiles, workloads):
    """Per WAN workload: link use (% of the cap) over the first push, one panel per profile."""
    made = []
    for w in workloads:
        panels = []
        for p in profiles:
            sampled = [r for r in rows if r["profile"] == p and r["workload"] == w and r["phase"] == "initial"
                       and r.get("link_series") and r["correct"]]
            if sampled:
                panels.append((p, sorted(sampled, key=lambda r: r["tool"] != "xfer")))
        if not panels:
            continue
        fig, axes = plt.subplots(len(panels), 1, figsize=(7.5, 2.1 * len(panels)), squeeze=False)
        for ax, (p, sampled) in zip(axes[:, 0], panels):
            for r in sampled:
                rate = float(r["rate"].removesuffix("mbit"))
                xs, ys = utilisation(r["link_series"], rate)
                ax.plot(xs, ys, label=f"{r['tool']} ({r['wall_s']:.1f} s, {r['link_use']:.0%} on average)",
                        color=COLOURS.get(r["tool"]), linewidth=1.2 if r["tool"] == "xfer" else 0.9)
            ax.axhline(100, color="black", linewidth=0.6, linestyle=":")
            ax.set_ylim(0, 110)
            ax.set_xlim(left=0)
            ax.set_ylabel("% of the cap")
            ax.set_title(p, loc="left", fontsize=9)
            ax.legend(loc="lower right", bbox_to_anchor=(1, 1), ncol=2, fontsize=8, frameon=False)
        axes[-1, 0].set_xlabel("seconds since the push started")
        fig.suptitle(f"Link use during the first push, {w} (100 ms samples of bytes delivered to the server)",
                     x=0.01, ha="left")
        fig.tight_layout()
        made.append(save(fig, out_dir, f"link-{w}.svg"))
    return made


ENTRY_PHASES = ["push", "noop", "pull"]


def entries_charts(out_dir, rows, rss_target_mib):
    """Peak RSS per side and seconds per million entries against tree size, one panel per phase."""
    if not rows:
        return []
    tools = [t for t in COLOURS if any(r["tool"] == t for r in rows)]
    phases = [p for p in ENTRY_PHASES if any(r["phase"] == p for r in rows)]
    sizes = sorted({r["entries"] for r in rows})

    def series(tool, phase, value):
        pts = sorted((r["entries"], value(r)) for r in rows
                     if r["tool"] == tool and r["phase"] == phase and r["correct"])
        return [x for x, _ in pts], [y for _, y in pts]

    made = []
    fig, axes = plt.subplots(1, len(phases), figsize=(3.3 * len(phases), 3.4), squeeze=False, sharey=True)
    for ax, phase in zip(axes[0], phases):
        for t in tools:
            # Hollow squares and dashes for the server, so the sides differ even at a single tree size.
            for side, style, marker, face in (("client", "-", "o", COLOURS[t]), ("server", "--", "s", "white")):
                xs, ys = series(t, phase, lambda r, s=side: r[f"{s}_peak_rss_kib"] / 1024)
                if xs:
                    ax.plot(xs, ys, style, marker=marker, markersize=4, markerfacecolor=face, color=COLOURS[t],
                            label=f"{t} {side}")
        ax.axhline(rss_target_mib, color="black", linewidth=0.6, linestyle=":")
        entries_axis(ax, sizes)
        ax.set_yscale("log")
        plain_log(ax.yaxis)
        ax.set_title(phase, loc="left", fontsize=9)
    axes[0, 0].set_ylabel(f"peak RSS, MiB (dotted: {rss_target_mib} MiB)")
    axes[0, -1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1), frameon=False)
    fig.suptitle("Peak RSS against tree size (client: solid, dots; server: dashed, hollow squares)", x=0.01, ha="left")
    fig.tight_layout()
    made.append(save(fig, out_dir, "entries-rss.svg"))

    fig, axes = plt.subplots(1, len(phases), figsize=(3.3 * len(phases), 3.4), squeeze=False, sharey=True)
    for ax, phase in zip(axes[0], phases):
        for t in tools:
            xs, ys = series(t, phase, lambda r: r["wall_s"] / r["entries"] * 1e6)
            if xs:
                ax.plot(xs, ys, marker="o", markersize=3, color=COLOURS[t], label=t)
        entries_axis(ax, sizes)
        ax.set_yscale("log")
        plain_log(ax.yaxis)
        ax.set_title(phase, loc="left", fontsize=9)
    axes[0, 0].set_ylabel("wall seconds per million entries")
    axes[0, -1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1), frameon=False)
    fig.suptitle("Wall time per million entries against tree size", x=0.01, ha="left")
    fig.tight_layout()
    made.append(save(fig, out_dir, "entries-time.svg"))
    return made
