#!/usr/bin/env python3
"""Time and memory against tree size: push, no-op push and pull of trees of N entries.

    entries.py --dir DIR --out FILE --entries "10000 100000" [--tools xfer,rsync,restic]
               [--run-id ID] [--timeout S] [--no-image]

For each N, a tree of N entries (files and directories, its root not
counted) is generated once into DIR/data/entries-N, from a fixed seed, so
it holds the same names, bytes, modes and mtimes on every run and host:

  flat/   one directory of N/10 entries (split past 1,000,000)
  deep/   N/10 entries in chains of 64 nested directories, 2 files per level
  wide/   the rest: wide/aNNNN/bNNN/, 100 files per leaf directory

Half the files are empty, the others 1-64 bytes of text. Then each tool,
over the suite's veth pair uncapped (net.up(); client and server in their
own namespaces, so each side's memory is its own), runs three phases in
order, each with a fresh server:

  push    the tree into an empty destination
  noop    the same tree again
  pull    the destination back into an empty directory on the client
          (xfer pull; rsync from the daemon; restic restore over sftp)

and the pulled tree is compared with the source (paths, types, bytes, link
targets, mode bits): a wrong result marks the pull wrong. Each phase gives
one JSON line (`kind: entries`) with wall seconds, CPU seconds and peak RSS
of each side (GNU time, as bench.py measures them) and the wire bytes.

A tree of 10,000,000 entries needs about 4 x N inodes at once (the source,
the server's copy, the pulled copy, the tools' state), more than most root
filesystems have free. So unless --no-image is given, everything lives in a
sparse ext4 image DIR.img (inline_data: a file of up to ~60 bytes takes no
data block; 4 x N + 1,000,000 inodes, one per 4 KiB of apparent size),
loop-mounted on DIR for the run and kept for the next one, with the trees in
it, and trimmed after each tool. Disk actually used: about 1 KB per entry
kept (the trees) and at most ~3.5 KB per entry of the largest N during a
run (METHOD.md, "Cost of the tree-size part").
"""
import argparse
import datetime
import itertools
import json
import os
import random
import shutil
import socket
import subprocess
import sys

import bench
import net
import tools

TOOLS = ["xfer", "rsync", "restic"]
PHASES = ["push", "noop", "pull"]
T1 = 1700000000
# Bump when the generator changes its output, so old trees are rebuilt.
GEN_VERSION = 1
FLAT_DIR_MAX = 1_000_000
DEEP_LEVELS = 64
DEEP_FILES_PER_LEVEL = 2
WIDE_LEAF_FILES = 100
WIDE_LEAVES_PER_DIR = 100
TINY_MAX = 64
IMAGE_VERSION = 1


def layout(n):
    """(kind, relative path) of the tree's N entries, each directory before its contents."""
    flat = deep = n // 10
    return itertools.chain(_flat(flat), itertools.islice(_deep(), deep), itertools.islice(_wide(), n - flat - deep))


def _flat(budget):
    k = 0
    while budget > 0:
        d = "flat" if k == 0 else f"flat{k + 1}"
        yield "d", d
        take = min(FLAT_DIR_MAX, budget - 1)
        for i in range(take):
            yield "f", f"{d}/f{i:07d}"
        budget -= 1 + take
        k += 1


def _deep():
    yield "d", "deep"
    for chain in itertools.count():
        path = f"deep/c{chain:05d}"
        for level in range(DEEP_LEVELS):
            if level:
                path += f"/l{level:02d}"
            yield "d", path
            for i in range(DEEP_FILES_PER_LEVEL):
                yield "f", f"{path}/f{i}"


def _wide():
    yield "d", "wide"
    for leaf in itertools.count():
        top, below = divmod(leaf, WIDE_LEAVES_PER_DIR)
        if below == 0:
            yield "d", f"wide/a{top:04d}"
        d = f"wide/a{top:04d}/b{below:03d}"
        yield "d", d
        for i in range(WIDE_LEAF_FILES):
            yield "f", f"{d}/f{i:03d}"


def generate(n, data):
    """Writes the tree of N entries to DATA/entries-N/tree (once; `.done` marks it complete)."""
    base = os.path.join(data, f"entries-{n}")
    done = os.path.join(base, ".done")
    try:
        with open(done) as f:
            meta = json.load(f)
        if meta.get("gen_version") == GEN_VERSION:
            return os.path.join(base, "tree"), meta
    except (OSError, ValueError):
        pass
    shutil.rmtree(base, ignore_errors=True)
    tree = os.path.join(base, "tree")
    os.makedirs(tree)
    rng = random.Random(f"entries-{n}")
    text = bytes(rng.choice(b"abcdefghijklmnopqrstuvwxyz ,.\n") for _ in range(4096))
    files = dirs = size = 0
    made_dirs = []
    old_umask = os.umask(0o022)
    try:
        for kind, rel in layout(n):
            path = os.path.join(tree, rel)
            if kind == "d":
                os.mkdir(path, 0o755)
                made_dirs.append(path)
                dirs += 1
                continue
            length = 0 if rng.random() < 0.5 else rng.randint(1, TINY_MAX)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            try:
                if length:
                    start = rng.randrange(len(text) - length)
                    os.write(fd, text[start:start + length])
                os.utime(fd, (T1, T1))
            finally:
                os.close(fd)
            files += 1
            size += length
    finally:
        os.umask(old_umask)
    # Directories last, deepest first: adding an entry changes a directory's mtime.
    for path in reversed(made_dirs):
        os.utime(path, (T1, T1))
    os.utime(tree, (T1, T1))
    meta = dict(entries=n, files=files, dirs=dirs, bytes=size, gen_version=GEN_VERSION)
    with open(done, "w") as f:
        json.dump(meta, f)
    return tree, meta


def image_inodes(largest):
    return 4 * largest + 1_000_000


def mount_image(directory, largest):
    """Loop-mounts DIR.img on DIR, (re)made first when it is missing or has too few inodes.

    The image keeps the generated trees between runs; a bigger N than it was
    made for makes it anew (and the trees with it).
    """
    image, meta_path = directory + ".img", directory + ".img.json"
    need = image_inodes(largest)
    try:
        with open(meta_path) as f:
            meta = json.load(f)
    except (OSError, ValueError):
        meta = {}
    if os.path.ismount(directory):
        subprocess.run(["umount", directory], check=True)
    if meta.get("version") != IMAGE_VERSION or meta.get("inodes", 0) < need or not os.path.exists(image):
        for path in (image, meta_path):
            if os.path.exists(path):
                os.unlink(path)
        # ext4 holds at most one inode per block: the apparent size follows
        # the inode count; the file stays sparse.
        with open(image, "wb") as f:
            f.truncate(need * 4096)
        subprocess.run(["mkfs.ext4", "-q", "-F", "-O", "inline_data", "-N", str(need), "-m", "0",
                        "-E", "lazy_itable_init=1,lazy_journal_init=1,nodiscard", image], check=True)
        with open(meta_path, "w") as f:
            json.dump(dict(version=IMAGE_VERSION, inodes=need), f)
    os.makedirs(directory, exist_ok=True)
    # noinit_itable: the kernel need not zero the unused inode tables (GBs of writes).
    subprocess.run(["mount", "-o", "loop,noatime,noinit_itable", image, directory], check=True)


def unmount_image(directory):
    if os.path.ismount(directory):
        subprocess.run(["umount", directory], check=False)


def measure(argv, env, cwd, log_prefix, timeout):
    """(problems, wall s, cpu s, peak rss KiB, stdout) of one client command."""
    try:
        status, wall, cpu, rss, stdout, err = bench.run_measured(net.in_client(argv), log_prefix, env=env,
                                                                 cwd=cwd, timeout=timeout)
    except bench.TimedOut as error:
        return [str(error)], timeout, 0.0, 0, ""
    problems = [] if status == 0 else [f"{argv[0]} exited {status}: {err.strip()[-400:]}"]
    return problems, wall, cpu, rss, stdout


def run_phase(tool, run, phase, target, timeout):
    """One measured phase with its own server: a record's figures (without context)."""
    server = bench.Server(tool, run)
    if hasattr(tool, "after_server_start"):
        tool.after_server_start(run)
    argv, env, cwd = tool.pull(run, target) if phase == "pull" else tool.push(run, phase)
    before = net.counters()
    problems, wall, cpu, rss, stdout = measure(argv, env, cwd, os.path.join(run.client, phase), timeout)
    after = net.counters()
    server_cpu, server_rss = server.stop()
    if phase == "pull" and not problems:
        problems = bench.compare(run.src, tool.pulled(run, target))
    c2s, s2c = after[0] - before[0], after[1] - before[1]
    return dict(phase=phase, wall_s=round(wall, 3), client_cpu_s=round(cpu, 3), server_cpu_s=round(server_cpu, 3),
                client_peak_rss_kib=rss, server_peak_rss_kib=server_rss, wire_c2s_bytes=c2s, wire_s2c_bytes=s2c,
                correct=not problems, problems=problems, report=tool.report(stdout))


def run_tool(tool, tree, meta, args, out, context):
    """The three phases of one tool on one tree; False once one is wrong (the rest are skipped)."""
    run = bench.Run(args.work)
    # The generated tree is the source as it is: copying 10^7 entries per tool would double the run.
    run.src = tree
    target = os.path.join(run.scratch, "pulled")
    try:
        tool.prepare(run)
        for phase in PHASES:
            figures = run_phase(tool, run, phase, target, args.timeout)
            record = dict(context, kind="entries", tool=tool.name, entries=meta["entries"], files=meta["files"],
                          dirs=meta["dirs"], src_bytes=meta["bytes"], tool_version=tool.version(), **figures,
                          time=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
            out.write(json.dumps(record) + "\n")
            out.flush()
            per_million = figures["wall_s"] / meta["entries"] * 1e6
            print(f"entries {meta['entries']:>9} {tool.name:7} {phase:5} wall {figures['wall_s']:8.2f} s "
                  f"({per_million:7.1f} s/M)  cpu {figures['client_cpu_s']:7.2f}+{figures['server_cpu_s']:7.2f} s  "
                  f"rss {figures['client_peak_rss_kib'] // 1024}/{figures['server_peak_rss_kib'] // 1024} MiB  "
                  f"{'ok' if figures['correct'] else 'WRONG: ' + figures['problems'][0]}", flush=True)
            if not figures["correct"]:
                return False
        return True
    finally:
        run.remove()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dir", required=True, help="trees and work area (an image is mounted here)")
    parser.add_argument("--out", required=True, help="JSON lines appended here")
    parser.add_argument("--entries", required=True, help="space- or comma-separated tree sizes")
    parser.add_argument("--tools", default=",".join(TOOLS))
    parser.add_argument("--run-id", default=datetime.datetime.now().strftime("%Y%m%d-%H%M%S"))
    parser.add_argument("--timeout", type=float, default=None, help="seconds after which a phase is killed")
    parser.add_argument("--no-image", action="store_true", help="work in DIR itself, without an ext4 image")
    args = parser.parse_args()
    sizes = [int(x) for x in args.entries.replace(",", " ").split()]
    names = args.tools.split(",")
    unknown = [t for t in names if t not in TOOLS]
    if unknown or not sizes or min(sizes) < 10:
        sys.exit(f"entries.py: tools must be among {', '.join(TOOLS)} and sizes at least 10")
    if os.geteuid() != 0:
        sys.exit("entries.py: run as root (network namespaces, loop mount)")
    directory = os.path.abspath(args.dir)
    args.work = os.path.join(directory, "work")
    context = dict(run_id=args.run_id, host=socket.gethostname())
    ok = True
    try:
        if not args.no_image:
            mount_image(directory, max(sizes))
        net.up()
        with open(args.out, "a") as out:
            for n in sizes:
                tree, meta = generate(n, os.path.join(directory, "data"))
                for name in names:
                    ok &= run_tool(tools.TOOLS[name], tree, meta, args, out, context)
                    if not args.no_image:
                        # Hand the blocks the tool's copies freed back to the host: the sparse image
                        # then holds the largest tool's peak, not the sum of all tools'.
                        subprocess.run(["fstrim", directory], check=False)
    finally:
        net.down()
        if not args.no_image:
            unmount_image(directory)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
