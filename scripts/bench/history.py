#!/usr/bin/env python3
"""Disk use of a month of nightly backups: xfer against restic, borg and an
rsync --link-dest rotation, side by side.

    history.py --dir DIR --out FILE [--nights N] [--scale S] [--seed K]
               [--tools xfer,restic,borg,rsync] [--xfer PATH]

A seeded series of N nightly versions of one source tree (DIR/src, changed
in place each night, so untouched files keep their inode and mtime as in a
live directory) is backed up after every night by each tool into its own
repository under DIR/repos. Afterwards `du -sb` (apparent bytes) and
`du -sk` (allocated) of each repository are compared, and against them the
*compressed changed bytes*: for every night, the previous night's files
whose content changed or was deleted (a file whose content is still in the
tree under some path, e.g. after a rename, does not count), each compressed
with zstd -3 on its own. That is what a history must keep on top of the
newest tree; xfer's *history extra cost* is (its destination + its state
directory - the final tree's du) / that sum.

The tree at scale 1 (~300 MiB), built from the generators of workloads.py:
  src/   ~2,000 text files of 0.5-64 KiB in 24 dirs, a few binary assets;
         each night edits 1% (in place or appended), adds 0.5%, renames 0.3%
         (some to another dir), deletes 0.3%; every 10th night renames a dir.
  logs/  8 application logs of ~10 MiB and current.log (a symlink); each
         night appends ~2% to three of them; every 7th night one is rotated
         to app-NN.log.NIGHT and restarted; rotated logs go after 14 nights.
  db/    a ~100 MiB SQLite database (page size 4096, rollback journal); each
         night updates 0.3% of rows, inserts 0.2%, deletes 0.05%.
  vm/    a 96 MiB disk image of text and ~15% random blocks; each night
         overwrites 8 regions of 4-64 KiB in place.
--scale shrinks or grows every count and size. Every changed file gets the
mtime of its night (T1 + night days), so the series is the same on every run.

One JSON line per night and tool (wall seconds), per night (the change), per
tool (sizes) and a summary go to --out; the markdown table goes to stdout and
to DIR/history.md.
"""
import argparse
import datetime
import hashlib
import json
import os
import random
import shutil
import sqlite3
import subprocess
import sys
import time

import workloads as wl

KiB, MiB = wl.KiB, wl.MiB
T1 = wl.T1
DAY = 86_400
PASSWORD = "xfer-bench-not-a-secret"
TOOLS = ["xfer", "restic", "borg", "rsync"]
PEERS = ["restic", "borg", "rsync"]

try:
    import zstandard
except ImportError:
    zstandard = None


def log(msg):
    print(f"[history] {msg}", file=sys.stderr, flush=True)


def night_time(night):
    return T1 + night * DAY


def touch(path, night):
    t = night_time(night)
    os.utime(path, (t, t), follow_symlinks=False)


# ---------------------------------------------------------------- the series

class Series:
    """The source tree and what each night does to it."""

    def __init__(self, root, seed, scale):
        self.root = root
        self.seed = seed
        self.scale = scale
        self.db_rows = {t: max(50, int(n * scale / 2)) for t, n in wl.DB_ROWS.items()}
        self.next_id = dict(self.db_rows)
        self.src_dirs = [f"{top}/{sub}" for top in ("app", "lib", "docs", "tests")
                         for sub in ("core", "net", "ui", "util", "io", "extra")]
        self.file_no = 0

    def n(self, base):
        return max(1, int(base * self.scale))

    def path(self, rel):
        return os.path.join(self.root, rel)

    def rng(self, night, part):
        return random.Random(f"{self.seed}/{night}/{part}")

    def generate(self):
        """Night 1: the first version of every part."""
        if os.path.lexists(self.root):
            shutil.rmtree(self.root)
        os.makedirs(self.root)
        self.gen_src(self.rng(1, "src"))
        self.gen_logs(self.rng(1, "logs"))
        self.gen_db(self.rng(1, "db"))
        self.gen_vm(self.rng(1, "vm"))
        for dirpath, dirs, files in os.walk(self.root):
            for name in files + dirs:
                touch(os.path.join(dirpath, name), 1)

    def change(self, night):
        """Night 2 onwards: edit, add, rename and delete a little of everything."""
        self.change_src(night, self.rng(night, "src"))
        self.change_logs(night, self.rng(night, "logs"))
        self.change_db(night, self.rng(night, "db"))
        self.change_vm(night, self.rng(night, "vm"))

    # src/ ------------------------------------------------------------

    def new_src_file(self, rng, night):
        d = rng.choice(self.src_dirs)
        self.file_no += 1
        if rng.random() < 0.03:
            rel = f"src/{d}/asset-{self.file_no:05d}.{rng.choice(wl.BIN_EXT)}"
            data = wl.binary_like(rng, wl.log_uniform(rng, 16 * KiB, 512 * KiB))
        else:
            rel = f"src/{d}/{rng.choice(wl.STEMS)}-{self.file_no:05d}.{rng.choice(wl.TEXT_EXT)}"
            data = wl.text_like(rng, wl.log_uniform(rng, 512, 64 * KiB))
        wl.write_file(self.path(rel), data)
        touch(self.path(rel), night)

    def src_files(self):
        out = []
        for dirpath, _, files in os.walk(self.path("src")):
            out += [os.path.relpath(os.path.join(dirpath, f), self.root) for f in files]
        return sorted(out)

    def gen_src(self, rng):
        for _ in range(self.n(2000)):
            self.new_src_file(rng, 1)

    def change_src(self, night, rng):
        files = self.src_files()
        rng.shuffle(files)
        n = len(files)
        k_edit, k_move, k_del = max(1, n // 100), max(1, n * 3 // 1000), max(1, n * 3 // 1000)
        edits, moves = files[:k_edit], files[k_edit:k_edit + k_move]
        deletes = files[k_edit + k_move:k_edit + k_move + k_del]
        for rel in edits:
            p = self.path(rel)
            with open(p, "r+b") as f:
                size = os.fstat(f.fileno()).st_size
                if rng.random() < 0.5:
                    k = min(size, rng.randint(16, 2 * KiB))
                    f.seek(rng.randrange(max(1, size - k)))
                    f.write(wl.text_like(rng, k))
                else:
                    f.seek(0, os.SEEK_END)
                    f.write(b"\n" + wl.text_like(rng, rng.randint(40, 4 * KiB)))
            touch(p, night)
        for rel in moves:
            d = rng.choice(self.src_dirs)
            base = os.path.basename(rel)
            if rng.random() < 0.5:
                base = "renamed-" + base
            target = self.path(f"src/{d}/{base}")
            if not os.path.exists(target):
                os.makedirs(os.path.dirname(target), exist_ok=True)
                os.rename(self.path(rel), target)
        for rel in deletes:
            if os.path.exists(self.path(rel)):
                os.remove(self.path(rel))
        for _ in range(max(1, n // 200)):
            self.new_src_file(rng, night)
        if night % 10 == 0:
            old = rng.choice(self.src_dirs)
            new = f"{old}-{night}"
            if os.path.isdir(self.path("src/" + old)):
                os.rename(self.path("src/" + old), self.path("src/" + new))
            self.src_dirs[self.src_dirs.index(old)] = new

    # logs/ -----------------------------------------------------------

    def gen_logs(self, rng):
        os.makedirs(self.path("logs"))
        self.streams = {}
        for i in range(8):
            stream = wl.LogStream(random.Random(rng.getrandbits(64)), 1699920000000 + i * 7919, f"svc{i % 4}")
            self.streams[i] = stream
            with open(self.path(f"logs/app-{i:02d}.log"), "wb") as f:
                stream.write(f, nbytes=int(rng.randint(8 * MiB, 12 * MiB) * self.scale))
        os.symlink("app-00.log", self.path("logs/current.log"))
        self.rotated = []

    def change_logs(self, night, rng):
        for i in sorted({night % 8, (night + 3) % 8, (night + 5) % 8}):
            p = self.path(f"logs/app-{i:02d}.log")
            size = os.path.getsize(p)
            with open(p, "ab") as f:
                self.streams[i].write(f, nbytes=max(4 * KiB, size // 50))
            touch(p, night)
        if night % 7 == 0:
            i = rng.randrange(8)
            p = self.path(f"logs/app-{i:02d}.log")
            os.rename(p, f"{p}.{night}")
            self.rotated.append((night, f"{p}.{night}"))
            with open(p, "wb") as f:
                self.streams[i].write(f, count=200)
            touch(p, night)
        for when, p in list(self.rotated):
            if night - when >= 14:
                os.remove(p)
                self.rotated.remove((when, p))

    # db/ -------------------------------------------------------------

    def gen_db(self, rng):
        p = self.path("db/app.db")
        os.makedirs(os.path.dirname(p))
        con = sqlite3.connect(p, isolation_level=None)
        con.execute("PRAGMA page_size=4096")  # must precede the first table
        con.execute("PRAGMA journal_mode=DELETE")
        con.execute("PRAGMA synchronous=OFF")
        con.executescript(wl.DB_SCHEMA)
        for table, n in self.db_rows.items():
            con.execute("BEGIN")
            for start in range(1, n + 1, 10_000):  # batches keep memory flat
                rows = [wl.db_row(rng, table, i) for i in range(start, min(n, start + 9_999) + 1)]
                con.executemany(wl.DB_INSERT[table], rows)
            con.execute("COMMIT")
        con.close()

    def change_db(self, night, rng):
        p = self.path("db/app.db")
        con = wl.db_connect(p)
        con.execute("BEGIN")
        for table, n in self.db_rows.items():
            top = self.next_id[table]
            for i in sorted(rng.sample(range(1, top + 1), max(1, n * 3 // 1000))):
                if table == "users":
                    con.execute("UPDATE users SET bio=?, country=? WHERE id=?",
                                (wl.text_like(rng, rng.randint(80, 500)).decode(errors="replace"),
                                 rng.choice(wl.COUNTRIES), i))
                elif table == "orders":
                    con.execute("UPDATE orders SET status=?, total_cents=total_cents+? WHERE id=?",
                                (rng.choice(wl.STATUSES), rng.randrange(-500, 500), i))
                else:
                    con.execute("UPDATE events SET kind=?, payload=? WHERE id=?",
                                (rng.choice(wl.EVENT_KINDS), wl.db_event(rng, i, n)[4], i))
            added = max(1, n // 500)
            con.executemany(wl.DB_INSERT[table], [wl.db_row(rng, table, top + 1 + k) for k in range(added)])
            self.next_id[table] = top + added
            con.executemany(f"DELETE FROM {table} WHERE id=?",
                            [(i,) for i in sorted(rng.sample(range(1, top + 1), max(1, n // 2000)))])
        con.execute("COMMIT")
        con.close()
        touch(p, night)

    # vm/ -------------------------------------------------------------

    def gen_vm(self, rng):
        p = self.path("vm/disk.img")
        os.makedirs(os.path.dirname(p))
        left = int(96 * MiB * self.scale)
        with open(p, "wb") as f:
            while left:
                n = min(left, rng.randint(16 * KiB, 128 * KiB))
                f.write(wl.mixed_block(rng, n, 0.15))
                left -= n

    def change_vm(self, night, rng):
        p = self.path("vm/disk.img")
        size = os.path.getsize(p)
        with open(p, "r+b") as f:
            for _ in range(8):
                k = min(size, rng.randint(4 * KiB, 64 * KiB))
                f.seek(rng.randrange(max(1, size - k)))
                f.write(wl.mixed_block(rng, k, 0.15))
        touch(p, night)


# ---------------------------------------------------------------- what changed

def zstd_size(path):
    """Bytes of the file compressed with zstd -3, streamed."""
    total = 0
    if zstandard is not None:
        with open(path, "rb") as f:
            reader = zstandard.ZstdCompressor(level=3).stream_reader(f)
            while piece := reader.read(wl.PIECE):
                total += len(piece)
        return total
    proc = subprocess.Popen(["zstd", "-3", "-q", "-c", path], stdout=subprocess.PIPE)
    while piece := proc.stdout.read(wl.PIECE):
        total += len(piece)
    if proc.wait() != 0:
        raise RuntimeError(f"zstd failed on {path}")
    return total


BLOCK = 4 * KiB


def file_hash(path, blocks=None):
    """sha256 of the file; with a list given, also appends an 8-byte digest
    of each BLOCK-sized piece to it."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while piece := f.read(wl.PIECE):
            h.update(piece)
            if blocks is not None:
                for at in range(0, len(piece), BLOCK):
                    blocks.append(hashlib.blake2b(piece[at:at + BLOCK], digest_size=8).digest())
    return h.hexdigest()


def listing(root, previous):
    """path -> (size, mtime_ns, sha256, zstd size, block digests) of every
    regular file; entries whose size and mtime did not change are taken
    from previous."""
    out = {}
    for dirpath, _, files in os.walk(root):
        for name in files:
            p = os.path.join(dirpath, name)
            if os.path.islink(p):
                continue
            st = os.lstat(p)
            rel = os.path.relpath(p, root)
            old = previous.get(rel)
            if old and old[0] == st.st_size and old[1] == st.st_mtime_ns:
                out[rel] = old
            else:
                blocks = []
                digest = file_hash(p, blocks)
                out[rel] = (st.st_size, st.st_mtime_ns, digest, zstd_size(p), b"".join(blocks))
    return out


def changed_blocks(old, new):
    """Bytes of old's BLOCK-sized pieces that new lacks at the same offset."""
    old_blocks, new_blocks = old[4], new[4] if new else b""
    lost = 0
    for i in range(0, len(old_blocks), 8):
        if old_blocks[i:i + 8] != new_blocks[i:i + 8]:
            lost += min(BLOCK, old[0] - i // 8 * BLOCK)
    return lost


def changed_bytes(before, after):
    """What the previous night's tree loses: its files whose content is gone,
    whole (`raw`, `z`) and as the blocks that differ at the same offset in
    the file now at that path (`blocks_raw`; `blocks_z` estimates them
    compressed at the ratio of the whole old file)."""
    kept = {entry[2] for entry in after.values()}
    gone = {}
    by_path = {"files": 0, "raw": 0, "z": 0}
    for rel, entry in before.items():
        now = after.get(rel)
        if now and now[2] == entry[2]:
            continue
        by_path["files"] += 1
        by_path["raw"] += entry[0]
        by_path["z"] += entry[3]
        if entry[2] not in kept:
            gone[entry[2]] = (entry, now)  # the same content twice is kept once
    blocks_raw = blocks_z = 0
    for entry, now in gone.values():
        lost = changed_blocks(entry, now)
        blocks_raw += lost
        blocks_z += lost * entry[3] // entry[0] if entry[0] else 0
    return {"files": len(gone), "raw": sum(e[0] for e, _ in gone.values()),
            "z": sum(e[3] for e, _ in gone.values()), "blocks_raw": blocks_raw, "blocks_z": blocks_z,
            "by_path": by_path}


# ---------------------------------------------------------------- the tools

def run(argv, env=None, cwd=None):
    t0 = time.monotonic()
    r = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True)
    wall = time.monotonic() - t0
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:3])}... exited {r.returncode}: {r.stderr.strip()[-1500:]}")
    return wall, r.stdout


class Tools:
    def __init__(self, base, src, xfer):
        self.base, self.src, self.xfer = base, src, xfer
        self.repos = os.path.join(base, "repos")
        self.scratch = os.path.join(base, "scratch")
        self.paths = {
            "restic": [os.path.join(self.repos, "restic")],
            "borg": [os.path.join(self.repos, "borg")],
            "rsync": [os.path.join(self.repos, "rsync")],
            # The destination tree and the state directory (where xfer keeps
            # its scan cache, chunk index and, with the history store, the
            # snapshots) together.
            "xfer": [os.path.join(self.repos, "xfer"), os.path.join(self.scratch, "xfer-xdg")],
        }
        self.env = {
            "restic": dict(os.environ, RESTIC_PASSWORD=PASSWORD, RESTIC_REPOSITORY=self.paths["restic"][0],
                           RESTIC_CACHE_DIR=os.path.join(self.scratch, "restic-cache")),
            "borg": dict(os.environ, BORG_REPO=self.paths["borg"][0],
                         BORG_BASE_DIR=os.path.join(self.scratch, "borg-base"),
                         BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK="yes",
                         BORG_RELOCATED_REPO_ACCESS_IS_OK="yes"),
            "xfer": {k: v for k, v in os.environ.items() if k not in ("XFER_STATE_DIR", "XFER_CONFIG_DIR")}
            | {"XDG_STATE_HOME": os.path.join(self.scratch, "xfer-xdg"),
               "XDG_CONFIG_HOME": os.path.join(self.scratch, "xfer-config")},
        }

    def init(self, tools):
        for d in (self.repos, self.scratch):
            shutil.rmtree(d, ignore_errors=True)
            os.makedirs(d)
        if "restic" in tools:
            run(["restic", "init", "--repository-version", "2"], env=self.env["restic"])
        if "borg" in tools:
            run(["borg", "init", "--encryption", "none"], env=self.env["borg"])
        if "rsync" in tools:
            os.makedirs(self.paths["rsync"][0])

    def backup(self, tool, night):
        stamp = datetime.datetime.fromtimestamp(night_time(night), datetime.timezone.utc)
        if tool == "restic":
            return run(["restic", "backup", "--quiet", "--host", "bench", "--compression", "auto",
                        "--time", stamp.strftime("%Y-%m-%d %H:%M:%S"), self.src], env=self.env["restic"])
        if tool == "borg":
            return run(["borg", "create", "--compression", "zstd,3", "--timestamp",
                        stamp.strftime("%Y-%m-%dT%H:%M:%S"), f"::night-{night:02d}", "."],
                       env=self.env["borg"], cwd=self.src)
        if tool == "rsync":
            rot = self.paths["rsync"][0]
            argv = ["rsync", "-a", "--delete"]
            if night > 1:
                argv.append(f"--link-dest={rot}/night-{night - 1:02d}")
            return run(argv + [self.src + "/", f"{rot}/night-{night:02d}/"])
        return run([self.xfer, "push", "-q", "--delete", "--json", self.src, self.paths["xfer"][0]],
                   env=self.env["xfer"])

    def final_tree(self, tool, nights):
        """Where the last night's backup can be read as a tree; restic and
        borg restore it into scratch first."""
        if tool == "rsync":
            return os.path.join(self.paths["rsync"][0], f"night-{nights:02d}")
        if tool == "xfer":
            return self.paths["xfer"][0]
        target = os.path.join(self.scratch, f"{tool}-restore")
        shutil.rmtree(target, ignore_errors=True)
        os.makedirs(target)
        if tool == "restic":
            run(["restic", "restore", "latest", "--target", target], env=self.env["restic"])
            return target + self.src
        run(["borg", "extract", f"::night-{nights:02d}"], env=self.env["borg"], cwd=target)
        return target


def snapshot_count(paths):
    """Snapshot records xfer's history store holds (DIR/snapshots/HASH, by
    its layout) anywhere under paths; 0 means it kept a mirror only."""
    count = 0
    for root in paths:
        for dirpath, _, files in os.walk(root):
            if os.path.basename(dirpath) == "snapshots":
                count += len(files)
    return count


def du(paths, flag):
    """du's grand total over paths in one call (hard links counted once)."""
    paths = [p for p in paths if os.path.exists(p)]
    if not paths:
        return 0
    out = subprocess.run(["du", "-c", flag, *paths], check=True, capture_output=True, text=True).stdout
    total = int(out.strip().splitlines()[-1].split()[0])
    return total * 1024 if flag == "-sk" else total


def same_tree(a, b):
    """Whether b holds a's regular files and symlinks with the same bytes;
    top-level names starting with .xfer (the tool's own) are not compared."""
    def entries(root):
        out = {}
        for dirpath, dirs, files in os.walk(root):
            if dirpath == root:
                dirs[:] = [d for d in dirs if not d.startswith(".xfer")]
                files = [f for f in files if not f.startswith(".xfer")]
            for name in files + [d for d in dirs if os.path.islink(os.path.join(dirpath, d))]:
                p = os.path.join(dirpath, name)
                rel = os.path.relpath(p, root)
                out[rel] = ("L", os.readlink(p)) if os.path.islink(p) else ("F", file_hash(p))
        return out
    return entries(a) == entries(b)


# ---------------------------------------------------------------- report

def mib(n):
    return f"{n / MiB:,.1f}"


def table(sizes, walls, tools, change, source_b, nights, snapshots, correct):
    peers = [t for t in PEERS if t in tools]
    best = min((sizes[t]["du_b"] for t in peers), default=None)
    label = {"xfer": "xfer (dest + state)", "restic": "restic (repo, --compression auto)",
             "borg": "borg (repo, none, zstd,3)", "rsync": "rsync --link-dest rotation"}
    lines = [f"History of {nights} nights, source {mib(source_b)} MiB at the end (du -sb).", "",
             "| tool | du -sb MiB | du -sk MiB | vs best peer | total backup wall s | last night restored |",
             "|---|---|---|---|---|---|"]
    for t in tools:
        ratio = f"{sizes[t]['du_b'] / best:.2f}x" if best else "-"
        lines.append(f"| {label[t]} | {mib(sizes[t]['du_b'])} | {mib(sizes[t]['du_k'])} | {ratio} | {walls[t]:.1f} | "
                     f"{'same as source' if correct[t] else '**wrong**'} |")
    change_z = change["z"]
    lines += ["", f"Compressed changed bytes (zstd -3, whole files, {nights - 1} nights): {mib(change_z)} MiB; "
              f"as changed 4 KiB blocks (estimated): {mib(change['blocks_z'])} MiB."]
    summary = {"best_peer_du_b": best, "change_z": change_z, "change_blocks_z": change["blocks_z"]}
    if "xfer" in tools:
        extra = sizes["xfer"]["du_b"] - source_b
        ratio = extra / change_z if change_z else None
        by_blocks = extra / change["blocks_z"] if change["blocks_z"] else None
        summary |= {"xfer_extra_b": extra, "xfer_extra_ratio": ratio, "xfer_extra_ratio_blocks": by_blocks,
                    "xfer_snapshots": snapshots}
        lines.append(f"xfer history extra cost: {mib(extra)} MiB = "
                     + (f"{ratio:.2f}x" if ratio is not None else "-") + " the compressed changed bytes, "
                     + (f"{by_blocks:.2f}x" if by_blocks is not None else "-") + " the changed blocks"
                     + f" ({snapshots} snapshot records found).")
        if best:
            ok_size = sizes["xfer"]["du_b"] <= best
            ok_extra = ratio is not None and ratio <= 1.2
            if snapshots < nights:
                # A mirror alone is small and restores nothing old: no goal applies.
                lines.append(f"Goals: not applicable: xfer kept {snapshots} of {nights} snapshots (a mirror only).")
            else:
                lines.append(f"Goals: xfer <= best peer: {'met' if ok_size else 'missed'}; "
                             f"extra cost <= 1.2x: {'met' if ok_extra else 'missed'}.")
    return "\n".join(lines) + "\n", summary


# ---------------------------------------------------------------- main

def check_free(base, scale, nights, tools):
    # Measured at scale 0.25 over 30 nights, per MiB of scale: the source
    # and xfer's copy, ~70 a night for restic and for borg, ~250 a night for
    # the rotation (db, vm and three logs are new files every night).
    per_night = 70 * (("restic" in tools) + ("borg" in tools)) + 250 * ("rsync" in tools)
    need = int(MiB * scale * (600 + per_night * nights))
    os.makedirs(base, exist_ok=True)
    free = shutil.disk_usage(base).free
    if free < need:
        raise RuntimeError(f"need about {need / MiB / 1024:.1f} GiB free in {base}, have {free / MiB / 1024:.1f} GiB "
                           "(lower HISTORY_SCALE or HISTORY_NIGHTS)")


def night_loop(series, tools_, tools, nights, out, run_id):
    walls = {t: 0.0 for t in tools}
    change_total = {"files": 0, "raw": 0, "z": 0, "blocks_raw": 0, "blocks_z": 0}
    before = {}
    for night in range(1, nights + 1):
        t0 = time.monotonic()
        if night == 1:
            series.generate()
        else:
            series.change(night)
        after = listing(series.root, before)
        gen_s = time.monotonic() - t0
        if night > 1:
            change = changed_bytes(before, after)
            for k in change_total:
                change_total[k] += change[k]
            out.write(json.dumps({"run": run_id, "kind": "change", "night": night, "gen_s": round(gen_s, 2)} | change) + "\n")
        before = after
        for t in tools:
            wall, stdout = tools_.backup(t, night)
            walls[t] += wall
            line = {"run": run_id, "kind": "night", "night": night, "tool": t, "wall_s": round(wall, 3)}
            if t == "xfer" and stdout.strip():
                try:
                    line["report"] = json.loads(stdout.strip().splitlines()[-1])
                except ValueError:
                    pass
            out.write(json.dumps(line) + "\n")
        out.flush()
        log(f"night {night}/{nights}: " + ", ".join(f"{t} {walls[t]:.1f}s" for t in tools))
    return walls, change_total


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", required=True, help="work area (source and repositories; wiped first)")
    ap.add_argument("--out", required=True, help="JSON lines are appended here")
    ap.add_argument("--nights", type=int, default=30)
    ap.add_argument("--scale", type=float, default=1.0, help="size of the tree (1: ~300 MiB)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--tools", default=",".join(TOOLS))
    ap.add_argument("--xfer", default=os.environ.get("XFER", "xfer"))
    args = ap.parse_args(argv)
    tools = [t for t in TOOLS if t in args.tools.split(",")]
    unknown = set(args.tools.split(",")) - set(TOOLS)
    if unknown or not tools:
        ap.error(f"--tools takes a comma-separated subset of {','.join(TOOLS)}")
    if args.nights < 2 or args.scale <= 0:
        ap.error("--nights must be at least 2 and --scale above 0")
    base = os.path.abspath(args.dir)
    run_id = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d-%H%M%S")
    try:
        check_free(base, args.scale, args.nights, tools)
        src = os.path.join(base, "src")
        series = Series(src, args.seed, args.scale)
        tools_ = Tools(base, src, args.xfer)
        tools_.init(tools)
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "a") as out:
            started = time.monotonic()
            walls, change = night_loop(series, tools_, tools, args.nights, out, run_id)
            source_b = du([src], "-sb")
            sizes = {t: {"du_b": du(tools_.paths[t], "-sb"), "du_k": du(tools_.paths[t], "-sk")} for t in tools}
            # After du, so the restores in scratch are not measured.
            correct = {t: same_tree(src, tools_.final_tree(t, args.nights)) for t in tools}
            shutil.rmtree(tools_.scratch + "/restic-restore", ignore_errors=True)
            shutil.rmtree(tools_.scratch + "/borg-restore", ignore_errors=True)
            for t in tools:
                out.write(json.dumps({"run": run_id, "kind": "size", "tool": t, "nights": args.nights,
                                      "scale": args.scale, "wall_s": round(walls[t], 2),
                                      "correct": correct.get(t)} | sizes[t]) + "\n")
            snapshots = snapshot_count(tools_.paths["xfer"]) if "xfer" in tools else 0
            text, summary = table(sizes, walls, tools, change, source_b, args.nights, snapshots, correct)
            out.write(json.dumps({"run": run_id, "kind": "summary", "nights": args.nights, "scale": args.scale,
                                  "seed": args.seed, "source_du_b": source_b, "change": change,
                                  "zstd": "python-zstandard" if zstandard else "zstd CLI",
                                  "total_s": round(time.monotonic() - started, 1)} | summary) + "\n")
        wrong = [t for t, ok in correct.items() if not ok]
        if wrong:
            text += f"\nWRONG: the final tree of {', '.join(wrong)} differs from the source.\n"
        with open(os.path.join(base, "history.md"), "w") as f:
            f.write(text)
        print(text, end="")
        return 1 if wrong else 0
    except (RuntimeError, OSError, wl.WorkloadError) as e:
        log(f"error: {e}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
