#!/usr/bin/env python3
"""Checks of the report's issue 18 verdicts, its charts, its hand-written sections and entries.py's tree layout.

    python3 scripts/bench/test_report.py      (no root, no network; charts need matplotlib)
"""
import hashlib
import os
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import entries  # noqa: E402
import report  # noqa: E402


def row(tool, workload, phase, **figures):
    r = dict(run_id="r", rate="unlimited", tool=tool, workload=workload, phase=phase, correct=True, problems=[],
             wire_total_bytes=1_000_000, wall_s=1.0, client_cpu_s=1.0, server_cpu_s=1.0, src_bytes=256_000_000,
             src_files=1, client_peak_rss_kib=10_240, server_peak_rss_kib=10_240)
    r.update(figures)
    return r


def entry_row(tool, n, phase, client_mib, server_mib, wall):
    return dict(run_id="e", kind="entries", tool=tool, entries=n, files=n, dirs=0, phase=phase, wall_s=wall,
                client_cpu_s=1.0, server_cpu_s=1.0, client_peak_rss_kib=client_mib * 1024,
                server_peak_rss_kib=server_mib * 1024, correct=True, problems=[])


class Layout(unittest.TestCase):
    def test_exactly_n_distinct_entries_parents_first(self):
        for n in (10, 999, 12_345):
            made = list(entries.layout(n))
            self.assertEqual(len(made), n)
            paths = [p for _, p in made]
            self.assertEqual(len(set(paths)), n)
            dirs = set()
            for kind, path in made:
                parent = os.path.dirname(path)
                self.assertTrue(parent == "" or parent in dirs, path)
                if kind == "d":
                    dirs.add(path)

    def test_deep_chains_are_deep(self):
        depth = max(p.count("/") for _, p in entries.layout(10_000))
        self.assertGreaterEqual(depth, entries.DEEP_LEVELS)


class Issue18(unittest.TestCase):
    def test_delta_bytes_against_best_peer_reports_the_gap(self):
        rows = [row("xfer", "w", "delta", wire_total_bytes=930), row("rsync", "w", "delta", wire_total_bytes=1000),
                row("rsync-z", "w", "delta", wire_total_bytes=5000)]
        [found] = [r for r in report.issue18_rate_targets(report.index(rows), ["w"]) if r[0] == 1]
        self.assertEqual(found[4], "0.93x")
        self.assertEqual(found[5], "**missed** (0.93x, needs ≤ 0.7x)")

    def test_incompressible_rate_met_at_300_mb_s(self):
        rows = [row("xfer", "random-blob", "initial", src_bytes=300_000_000, wall_s=0.99)]
        [found] = [r for r in report.issue18_rate_targets(report.index(rows), ["random-blob"]) if r[0] == 4]
        self.assertEqual(found[5], "met")

    def test_wrong_result_is_missed(self):
        rows = [row("xfer", "w", "delta", correct=False), row("rsync", "w", "delta")]
        [found] = [r for r in report.issue18_rate_targets(report.index(rows), ["w"]) if r[0] == 1]
        self.assertTrue(found[5].startswith("**missed** (wrong"))

    def test_entries_below_ten_million_are_not_measured(self):
        rows = [entry_row("xfer", 100_000, "push", 50, 300, 10.0)]
        [found] = report.issue18_entries_targets(rows)
        self.assertTrue(found[5].startswith("not measured at 10,000,000"), found[5])
        self.assertIn("missed", found[5])

    def test_entries_at_ten_million_judged_on_the_larger_side(self):
        rows = [entry_row("xfer", 10_000_000, "pull", 150, 250, 100.0),
                entry_row("rsync", 10_000_000, "pull", 50, 50, 200.0)]
        found = report.issue18_entries_targets(rows)
        self.assertEqual(found[0][5], "**missed** (250 MiB, needs ≤ 200 MiB)")
        self.assertEqual(found[1][4], "0.50x")


class Charts(unittest.TestCase):
    def test_same_rows_give_the_same_svg_bytes(self):
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            self.skipTest("no matplotlib")
        rows = [row(t, w, p, wall_s=1 + i) for i, (t, w, p) in enumerate(
            (t, w, p) for t in ("xfer", "rsync") for w in ("a", "b") for p in ("initial", "delta", "noop"))]
        rows += [entry_row(t, n, p, 10, 20, n / 1e4) for t in ("xfer", "rsync") for n in (10_000, 100_000)
                 for p in ("push", "noop", "pull")]
        parts = {"rate": (rows[:12], "r"), "wan": ([], None), "entries": (rows[12:], "e")}
        digests = []
        for _ in range(2):
            with tempfile.TemporaryDirectory() as out:
                drawn = report.draw_charts(parts, out)
                names = sorted(n for names in drawn.values() for n in names)
                svgs = []
                for n in names:
                    with open(os.path.join(out, n), "rb") as f:
                        svgs.append(f.read())
                digests.append([hashlib.sha256(svg).hexdigest() for svg in svgs])
                for svg in svgs:
                    self.assertNotIn(b"<dc:date>", svg)
        self.assertEqual(len(digests[0]), 4)
        self.assertEqual(digests[0], digests[1])


class Sections(unittest.TestCase):
    # Trailing spaces, a table and no final newline: all must survive as written.
    TEXT = "## Hand-written\n\nFigures from  another script.  \n\n| a | b |\n|---|---|\n| 1 | 2 |"

    def report_with(self, directory, placement):
        rows = [row(t, "w", p) for t in ("xfer", "rsync") for p in ("initial", "delta", "noop")]
        parts = {"rate": (rows, "r"), "wan": ([], None), "entries": ([], None)}
        return report.benchmarks_md(parts, "suite.sh", {}, report.read_sections(directory, placement))

    def write(self, directory, name, text):
        with open(os.path.join(directory, name), "w", encoding="utf-8") as f:
            f.write(text)

    def test_section_file_is_carried_verbatim_at_its_place(self):
        with tempfile.TemporaryDirectory() as d:
            self.write(d, "measured.md", self.TEXT)
            self.write(d, "analysis.md", "## Analysis\n\nWhy.\n")
            md = self.report_with(d, {"measured": ["measured.md"], "analysis": ["analysis.md"]})
        self.assertEqual(md.count(self.TEXT + "\n"), 1)
        at = md.index(self.TEXT)
        self.assertLess(md.index("### CPU seconds"), at)
        self.assertLess(at, md.index("## Tools"))
        self.assertLess(md.index("## Tools"), md.index("## Analysis\n\nWhy.\n"))
        self.assertLess(md.index("## Analysis"), md.index("## How it was run"))
        self.assertIn("measured.md, copied by report.py", md[:at])

    def test_unplaced_or_missing_file_stops_the_report(self):
        with tempfile.TemporaryDirectory() as d:
            self.write(d, "listed.md", self.TEXT)
            self.write(d, "stray.md", self.TEXT)
            with self.assertRaises(SystemExit) as stray:
                report.read_sections(d, {"measured": ["listed.md"]})
            self.assertIn("stray.md", str(stray.exception))
            with self.assertRaises(SystemExit) as gone:
                report.read_sections(d, {"measured": ["listed.md", "stray.md", "gone.md"]})
            self.assertIn("gone.md", str(gone.exception))

    def test_repository_sections_are_all_placed_documented_and_each_is_one_section(self):
        placed = report.read_sections()
        with open(os.path.join(os.path.dirname(report.SECTIONS_DIR), "METHOD.md"), encoding="utf-8") as f:
            method = f.read()
        for name in (n for names in report.SECTIONS.values() for n in names):
            with open(os.path.join(report.SECTIONS_DIR, name), encoding="utf-8") as f:
                text = f.read()
            self.assertIn(f"`{name}`", method)
            self.assertTrue(text.startswith("## "), name)
            self.assertEqual([line for line in text.splitlines() if line.startswith("## ")][1:], [], name)
            self.assertIn(text.rstrip("\n"), [line for lines in placed.values() for line in lines])


if __name__ == "__main__":
    unittest.main()
