#!/usr/bin/env python3
"""Deterministic workload generator for the xfer benchmark suite.

    python3 workloads.py --data DIR [--huge-gib N] [--list] [NAMES...]
    python3 workloads.py --apply-edits DIR/huge-file/v2-edits.json FILE
    python3 workloads.py --regen-v1 FILE [--huge-gib N]

Each workload NAME is written to DIR/NAME/v1 and DIR/NAME/v2, the source tree
before and after a change; DIR/NAME/.done (JSON: name, params, counts, bytes)
is written last, so a workload without it is incomplete and gets rebuilt.
Everything is seeded: the same bytes, modes and mtimes on every run and host
(given the same e2fsprogs and SQLite versions for fs-image and database).
Modes are 0644 (files) / 0755 (dirs, executables). Every v1 entry has mtime
T1 = 1700000000; a v2 entry keeps T1 if it equals v1 at the same path (type,
bytes, symlink target, directory listing), else it gets T2 = 1700086400.

Workloads:
  source-tree     32 real crates from static.crates.io as <crate>/..., v1 at
                  early-2023 releases (~60 MiB, ~4k files), v2 at the
                  early-2024 releases of the same crates.
  log-append      20 logs app-00..19.log (~200 MiB of varied lines with
                  timestamps, request ids, stack traces) + current.log symlink;
                  v2 appends ~5% lines to each and rotates app-07.log to
                  app-07.log.1, starting a short new app-07.log.
  random-blob     one 256 MiB incompressible blob.bin; v2 overwrites 16
                  random 4 KiB regions in place.
  many-small      50,000 files of 100 B-8 KiB in dNN/sNN/, relative symlinks,
                  an empty dir, ~2% executables; v2 edits 1%, deletes 0.5%,
                  adds 0.5% and renames d07 and d31 to dNN-renamed.
  big-file-edits  one 512 MiB big.dat of mutated text slices (~3x zstd) with
                  ~15% random blocks; v2 applies 50 inserts/deletes/overwrites
                  of 1 B-16 KiB at random offsets (later data shifts).
  database        ~200 MiB SQLite app.db (users, orders, events, indexes;
                  page_size 4096, rollback journal); v2 updates ~1% of rows,
                  inserts ~0.5%, deletes ~0.2%, without VACUUM.
  fs-image        512 MiB ext4 disk.img (mkfs.ext4 -d, fixed UUIDs and fake
                  time) holding ~300 MiB of text, compressible binary and
                  random files; v2 (debugfs -w) rewrites ~5% of the files,
                  adds 20 and deletes 10.
  moved-files     ~3,000 files of 4-256 KiB (~250 MiB) in ~60 dirs; v2 moves
                  30% of them to other dirs, renames 4 dirs, edits 1%, adds
                  0.5%, deletes 0.5%.
  huge-file       one N GiB (--huge-gib, default 16) incompressible huge.img
                  (AES-CTR keystream via openssl). To save disk there is no
                  v2/: v2-edits.json lists 64 in-place overwrites of 4-64 KiB
                  that --apply-edits applies to a copy of v1.
  big-random      one 64 MiB incompressible big.bin (the WAN runs' large
                  file: every byte of a first push must cross the link); v2
                  overwrites 8 scattered 4 KiB regions and appends 1 MiB.

Python 3.11 stdlib only, plus openssl, mkfs.ext4, debugfs and e2fsck.
Memory stays bounded: big files are streamed in PIECE-sized writes.
"""
import argparse
import concurrent.futures
import functools
import hashlib
import json
import os
import posixpath
import random
import shutil
import sqlite3
import subprocess
import sys
import tarfile
import time
import urllib.error
import urllib.request

T1 = 1700000000
T2 = 1700086400
KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB
PIECE = 4 * MiB
# Bump when any generator changes its output, so old .done files are stale.
GEN_VERSION = 1


class WorkloadError(Exception):
    """A failure worth a one-line message rather than a traceback."""


def log(msg):
    print(f"[workloads] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- content

@functools.lru_cache(maxsize=1)
def corpus():
    """2 MiB of word-salad text shared by every text-like generator.

    Own seed, so it is the same whichever workload asks first. Zipf-weighted
    words give realistic entropy; slices of it repeat, as real text does.
    """
    rng = random.Random(0xC0FFEE)
    syl = ["ka", "lo", "mi", "ten", "dra", "sor", "vel", "un", "pe", "ri", "zan",
           "cho", "ba", "et", "qui", "nor", "as", "fel", "gri", "ox", "ta", "mu"]
    vocab = sorted({"".join(rng.choice(syl) for _ in range(rng.randint(1, 4)))
                    for _ in range(6000)})
    rng.shuffle(vocab)
    weights = [1.0 / (i + 1) for i in range(len(vocab))]
    cum, acc = [], 0.0
    for w in weights:
        acc += w
        cum.append(acc)
    words = rng.choices(vocab, cum_weights=cum, k=330_000)
    prefixes = ["", "", "", "    ", "  - ", "# ", "// "]
    lines, i = [], 0
    while i < len(words):
        k = rng.randint(3, 14)
        chunk = words[i:i + k]
        i += k
        lines.append(rng.choice(prefixes) + " ".join(chunk).capitalize()
                     + rng.choice([".", ".", ",", ":", ";", " {", ""]))
    return "\n".join(lines).encode()[:2 * MiB]


def text_like(rng, n):
    """n bytes of text: corpus slices with numbers sprinkled in (edits, ids)."""
    c = corpus()
    out = bytearray()
    while len(out) < n:
        off = rng.randrange(len(c) - 4096)
        out += c[off:off + min(n - len(out), rng.randint(512, 4096))]
    for _ in range(n // 1024 + 1):
        p = rng.randrange(n)
        digits = b"%d" % rng.randrange(10 ** rng.randint(1, 7))
        out[p:p + len(digits)] = digits
    return bytes(out[:n])


_LOW4 = bytes(i & 0x0F for i in range(256))


def binary_like(rng, n):
    """n bytes of compressible binary: 8-byte records of one random byte, a
    small counter-like nibble and a per-file tag, the rest zero (think sensor
    data or a sparse table); zstd shrinks it ~3-5x."""
    b = bytearray(n)
    k0, k1, k4 = len(range(0, n, 8)), len(range(1, n, 8)), len(range(4, n, 8))
    b[0::8] = rng.randbytes(k0)
    b[1::8] = rng.randbytes(k1).translate(_LOW4)
    b[4::8] = bytes([rng.randrange(256)]) * k4
    return bytes(b)


def write_file(path, data, executable=False):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
    if executable:
        os.chmod(path, 0o755)


def copy_range(src, dst, n):
    """Copy n bytes from file object src to dst in PIECE-sized reads."""
    while n > 0:
        piece = src.read(min(n, PIECE))
        if not piece:
            raise WorkloadError("unexpected end of file while copying")
        dst.write(piece)
        n -= len(piece)


def log_uniform(rng, lo, hi):
    """Size between lo and hi, uniform in log space (many small, few big)."""
    return int(lo * (hi / lo) ** rng.random())


# ---------------------------------------------------------------- source-tree

# (crate, v1 version ~Jan-Mar 2023, v2 version ~Jan-Feb 2024). Big, widely
# used crates so the tree looks like a real vendor/ or registry directory.
CRATES = [
    ("aho-corasick", "0.7.20", "1.1.2"),
    ("bindgen", "0.64.0", "0.69.4"),
    ("chrono", "0.4.23", "0.4.33"),
    ("clap", "4.1.4", "4.4.18"),
    ("cranelift-codegen", "0.92.0", "0.104.0"),
    ("diesel", "2.0.3", "2.1.4"),
    ("encoding_rs", "0.8.32", "0.8.33"),
    ("futures-util", "0.3.26", "0.3.30"),
    ("gimli", "0.27.1", "0.28.1"),
    ("h2", "0.3.15", "0.3.24"),
    ("hashbrown", "0.13.2", "0.14.3"),
    ("hyper", "0.14.24", "1.1.0"),
    ("idna", "0.3.0", "0.5.0"),
    ("image", "0.24.5", "0.24.8"),
    ("libc", "0.2.139", "0.2.153"),
    ("naga", "0.11.0", "0.19.0"),
    ("nix", "0.26.2", "0.27.1"),
    ("object", "0.30.3", "0.32.2"),
    ("rayon", "1.6.1", "1.8.1"),
    ("regex", "1.7.1", "1.10.3"),
    ("regex-syntax", "0.6.28", "0.8.2"),
    ("reqwest", "0.11.14", "0.11.24"),
    ("ring", "0.16.20", "0.17.7"),
    ("rustix", "0.36.8", "0.38.30"),
    ("rustls", "0.20.8", "0.22.2"),
    ("serde", "1.0.152", "1.0.196"),
    ("serde_json", "1.0.93", "1.0.113"),
    ("syn", "2.0.8", "2.0.48"),
    ("time", "0.3.17", "0.3.34"),
    ("tokio", "1.25.0", "1.36.0"),
    ("toml_edit", "0.19.3", "0.21.1"),
    ("tracing-subscriber", "0.3.16", "0.3.18"),
]
CRATES_URL = "https://static.crates.io/crates/{name}/{name}-{version}.crate"


def fetch_crate(cache, name, version):
    """Download one .crate into the cache (once); any non-200 is an error."""
    path = os.path.join(cache, f"{name}-{version}.crate")
    if os.path.exists(path):
        return path
    url = CRATES_URL.format(name=name, version=version)
    req = urllib.request.Request(url, headers={"User-Agent": "xfer-bench-workloads/1"})
    part = path + ".part"
    try:
        with urllib.request.urlopen(req, timeout=60) as resp, open(part, "wb") as f:
            if resp.status != 200:
                raise WorkloadError(f"{url}: HTTP {resp.status}")
            shutil.copyfileobj(resp, f, PIECE)
    except urllib.error.HTTPError as e:
        raise WorkloadError(f"{url}: HTTP {e.code} (pinned version missing?)") from e
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise WorkloadError(f"cannot download {url}: {reason} (network unreachable?)") from e
    os.replace(part, path)
    return path


def extract_crate(crate_path, name, version, dest):
    """Unpack a .crate into dest, dropping the top `name-version/` dir."""
    top = f"{name}-{version}"
    with tarfile.open(crate_path, "r:gz") as tar:
        for m in tar:
            head, _, rest = m.name.partition("/")
            if head != top:
                raise WorkloadError(f"{crate_path}: member outside {top}/: {m.name!r}")
            if not rest:
                continue
            parts = rest.split("/")
            if rest.startswith("/") or ".." in parts:
                raise WorkloadError(f"{crate_path}: unsafe member {m.name!r}")
            out = os.path.join(dest, *parts)
            if m.isdir():
                os.makedirs(out, exist_ok=True)
            elif m.isfile():
                os.makedirs(os.path.dirname(out), exist_ok=True)
                with tar.extractfile(m) as src, open(out, "wb") as f:
                    shutil.copyfileobj(src, f, PIECE)
                if m.mode & 0o111:
                    os.chmod(out, 0o755)
            else:
                # cargo package follows symlinks, so none are expected.
                log(f"source-tree: skipping non-regular member {m.name}")


def gen_source_tree(wdir, params, data_dir):
    cache = os.path.join(data_dir, ".cache", "crates")
    os.makedirs(cache, exist_ok=True)
    jobs = [(n, v) for n, a, b in CRATES for v in (a, b)]
    # Downloads are independent files, so parallelism cannot change output.
    with concurrent.futures.ThreadPoolExecutor(8) as ex:
        paths = dict(zip(jobs, ex.map(lambda j: fetch_crate(cache, *j), jobs)))
    for name, old, new in CRATES:
        extract_crate(paths[(name, old)], name, old, os.path.join(wdir, "v1", name))
        extract_crate(paths[(name, new)], name, new, os.path.join(wdir, "v2", name))


# ---------------------------------------------------------------- log-append

class LogStream:
    """An endless, seeded application log; each call continues the clock."""

    METHODS = ["GET"] * 6 + ["POST"] * 2 + ["PUT", "DELETE", "PATCH"]
    PATHS = ["/api/v1/users/{}", "/api/v1/orders/{}", "/api/v1/orders", "/healthz",
             "/api/v2/search?q={}", "/static/app.{}.js", "/api/v1/events/{}/ack",
             "/login", "/api/v1/carts/{}/items", "/metrics"]
    STATUS = [200] * 30 + [201, 204, 301, 304, 304, 400, 401, 403, 404, 404, 409, 429, 500, 502, 503]
    AGENTS = ["Mozilla/5.0 (X11; Linux x86_64) Firefox/119.0", "curl/8.4.0",
              "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_1) Safari/605.1.15",
              "okhttp/4.12.0", "python-requests/2.31.0", "Go-http-client/2.0"]
    TABLES = ["users", "orders", "order_items", "events", "sessions", "carts"]
    FRAMES = ["handle_request", "dispatch", "OrderService.place", "Repo.fetch_one",
              "pool.acquire", "json.decode", "CartController.add", "retry_with_backoff",
              "auth.verify_token", "cache.get_or_load", "serialize_response"]

    def __init__(self, rng, start_ms, service):
        self.rng = rng
        self.ms = start_ms
        self.service = service
        self._sec = None
        self._prefix = ""

    def _ts(self):
        sec, ms = divmod(self.ms, 1000)
        if sec != self._sec:
            self._sec = sec
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
        return f"{self._prefix}.{ms:03d}Z"

    def entry(self):
        """One log record (sometimes several lines) as str."""
        r = self.rng
        self.ms += r.randrange(1, 60)
        ts = self._ts()
        worker = f"{self.service}-w{r.randrange(16):02d}"
        rid = f"{r.getrandbits(64):016x}"
        x = r.random()
        if x < 0.58:
            path = r.choice(self.PATHS).format(r.randrange(1, 250000))
            status = r.choice(self.STATUS)
            lat = r.lognormvariate(2.5, 1.0)
            level = "INFO " if status < 400 else "WARN " if status < 500 else "ERROR"
            return (f"{ts} {level} [{worker}] http method={r.choice(self.METHODS)} path={path} "
                    f"status={status} bytes={r.randrange(80, 90000)} latency_ms={lat:.1f} "
                    f"req={rid} ua=\"{r.choice(self.AGENTS)}\"\n")
        if x < 0.74:
            t = r.choice(self.TABLES)
            return (f"{ts} DEBUG [{worker}] db query=\"SELECT * FROM {t} WHERE id = ${r.randrange(1, 4)}\" "
                    f"rows={r.randrange(0, 200)} took_ms={r.lognormvariate(0.5, 1.1):.2f} req={rid}\n")
        if x < 0.86:
            hit = "hit" if r.random() < 0.8 else "miss"
            return (f"{ts} INFO  [{worker}] cache {hit} key=user:{r.randrange(1, 250000)}:profile "
                    f"ttl_s={r.choice([30, 60, 300, 3600])} req={rid}\n")
        if x < 0.95:
            state = r.choice(["queued", "started", "finished", "finished", "retrying"])
            return (f"{ts} INFO  [{worker}] job id={r.getrandbits(32):08x} kind="
                    f"{r.choice(['email', 'invoice', 'reindex', 'thumbnail', 'export'])} "
                    f"state={state} attempt={r.randrange(1, 4)} queue_depth={r.randrange(0, 500)}\n")
        if x < 0.985:
            return (f"{ts} WARN  [{worker}] slow request path=/api/v1/orders/{r.randrange(1, 250000)} "
                    f"latency_ms={r.uniform(1000, 9000):.0f} threshold_ms=1000 req={rid}\n")
        lines = [f"{ts} ERROR [{worker}] unhandled error req={rid}: "
                 f"{r.choice(['connection reset by peer', 'deadline exceeded', 'invalid UTF-8 in body', 'pool timed out after 30s', 'unique constraint violated: orders_pkey'])}\n"]
        if r.random() < 0.5:
            lines.append("Traceback (most recent call first):\n")
            for _ in range(r.randint(4, 14)):
                lines.append(f"    at {r.choice(self.FRAMES)} (src/{r.choice(self.TABLES)}.rs:"
                             f"{r.randrange(10, 900)}:{r.randrange(1, 80)})\n")
        return "".join(lines)

    def write(self, f, *, count=None, nbytes=None):
        """Append records until count records or nbytes bytes; returns count."""
        buf, size, n = [], 0, 0
        written = 0
        while (count is not None and n < count) or (nbytes is not None and written + size < nbytes):
            e = self.entry().encode()
            buf.append(e)
            size += len(e)
            n += 1
            if size >= MiB:
                f.write(b"".join(buf))
                written += size
                buf, size = [], 0
        f.write(b"".join(buf))
        return n


def gen_log_append(wdir, params, data_dir):
    v1, v2 = os.path.join(wdir, "v1"), os.path.join(wdir, "v2")
    os.makedirs(v1)
    os.makedirs(v2)
    rng = random.Random(params["seed"])
    for i in range(20):
        name = f"app-{i:02d}.log"
        stream = LogStream(random.Random(rng.getrandbits(64)), 1699920000000 + i * 7919, f"svc{i % 5}")
        target = rng.randint(8 * MiB, 13 * MiB)
        with open(os.path.join(v1, name), "wb") as f:
            n = stream.write(f, nbytes=target)
        # v2 continues the same stream, so appended lines follow on in time.
        dest = os.path.join(v2, name + ".1" if i == 7 else name)
        shutil.copyfile(os.path.join(v1, name), dest)
        with open(dest, "ab") as f:
            stream.write(f, count=n // 20)
        if i == 7:
            with open(os.path.join(v2, name), "wb") as f:
                stream.write(f, count=300)
    for v in (v1, v2):
        os.symlink("app-00.log", os.path.join(v, "current.log"))


# ---------------------------------------------------------------- random-blob

def random_file_versions(wdir, name, rng, size, edits, append=0):
    """v1/NAME: `size` random bytes; v2/NAME: v1 with `edits` random 4 KiB
    rewrites, then `append` random bytes at the end."""
    p1, p2 = os.path.join(wdir, "v1", name), os.path.join(wdir, "v2", name)
    os.makedirs(os.path.dirname(p1))
    os.makedirs(os.path.dirname(p2))
    with open(p1, "wb") as f:
        for _ in range(size // PIECE):
            f.write(rng.randbytes(PIECE))
    shutil.copyfile(p1, p2)
    with open(p2, "r+b") as f:
        for _ in range(edits):
            f.seek(rng.randrange(size - 4 * KiB))
            f.write(rng.randbytes(4 * KiB))
        if append:
            f.seek(size)
            f.write(rng.randbytes(append))


def gen_random_blob(wdir, params, data_dir):
    random_file_versions(wdir, "blob.bin", random.Random(params["seed"]), 256 * MiB, edits=16)


def gen_big_random(wdir, params, data_dir):
    random_file_versions(wdir, "big.bin", random.Random(params["seed"]), 64 * MiB, edits=8, append=MiB)


# ---------------------------------------------------------------- many-small

STEMS = ["config", "index", "model", "util", "handler", "schema", "readme", "notes",
         "report", "cache", "state", "thumb", "record", "chunk", "patch", "data"]
TEXT_EXT = ["txt", "md", "json", "rs", "py", "yaml", "csv", "html"]
BIN_EXT = ["bin", "dat", "idx", "pack", "o"]


def gen_many_small(wdir, params, data_dir):
    rng = random.Random(params["seed"])
    v1, v2 = os.path.join(wdir, "v1"), os.path.join(wdir, "v2")
    files = []
    for d in range(50):
        for s in range(20):
            for k in range(50):
                text = rng.random() < 0.65
                ext = rng.choice(TEXT_EXT if text else BIN_EXT)
                rel = f"d{d:02d}/s{s:02d}/{rng.choice(STEMS)}-{k:02d}.{ext}"
                size = log_uniform(rng, 100, 8 * KiB)
                data = text_like(rng, size) if text else binary_like(rng, size)
                write_file(os.path.join(v1, rel), data, executable=rng.random() < 0.02)
                files.append(rel)
    os.makedirs(os.path.join(v1, "d00", "empty"))
    renamed = ["d07", "d31"]
    # Link targets avoid the renamed dirs, so no link dangles in v2.
    stable = [f for f in files if f[:3] not in renamed]
    link_targets = set()
    for i in range(12):
        target = rng.choice(stable)
        link_targets.add(target)
        at = f"d{rng.randrange(50):02d}/s{rng.randrange(20):02d}/link-{i:02d}"
        if at[:3] in renamed:
            at = "d00/" + at[4:]
        rel_target = posixpath.relpath(target, posixpath.dirname(at))
        os.symlink(rel_target, os.path.join(v1, at))

    shutil.copytree(v1, v2, symlinks=True)
    pool = sorted(set(files) - link_targets)
    rng.shuffle(pool)
    n = len(files)
    edits, deletes = pool[:n // 100], pool[n // 100:n // 100 + n // 200]
    for rel in sorted(edits):
        p = os.path.join(v2, rel)
        with open(p, "r+b") as f:
            size = os.fstat(f.fileno()).st_size
            if rng.random() < 0.5:
                # Small in-place change: a few bytes rewritten, size kept.
                k = rng.randint(1, 64)
                f.seek(rng.randrange(max(1, size - k)))
                f.write(rng.randbytes(k))
            else:
                f.seek(0, os.SEEK_END)
                f.write(b"\n" + text_like(rng, rng.randint(40, 600)))
    for rel in sorted(deletes):
        os.remove(os.path.join(v2, rel))
    for i in range(n // 200):
        rel = f"d{rng.randrange(50):02d}/s{rng.randrange(20):02d}/new-{i:03d}.{rng.choice(TEXT_EXT)}"
        write_file(os.path.join(v2, rel), text_like(rng, log_uniform(rng, 100, 8 * KiB)))
    for d in renamed:
        os.rename(os.path.join(v2, d), os.path.join(v2, d + "-renamed"))


# ---------------------------------------------------------------- big-file-edits

def mixed_block(rng, n, random_share):
    return rng.randbytes(n) if rng.random() < random_share else text_like(rng, n)


def gen_big_file_edits(wdir, params, data_dir):
    rng = random.Random(params["seed"])
    size = 512 * MiB
    p1, p2 = os.path.join(wdir, "v1", "big.dat"), os.path.join(wdir, "v2", "big.dat")
    os.makedirs(os.path.dirname(p1))
    os.makedirs(os.path.dirname(p2))
    with open(p1, "wb") as f:
        buf, left = bytearray(), size
        while left:
            # Unaligned block lengths so random and text regions do not sit
            # on a grid that a fixed-size chunker would favour.
            n = min(left, rng.randint(16 * KiB, 128 * KiB))
            buf += mixed_block(rng, n, 0.15)
            left -= n
            if len(buf) >= PIECE:
                f.write(buf)
                buf.clear()
        f.write(buf)

    edits, floor = [], 0
    raw = sorted((rng.randrange(size), rng.choice(["insert", "delete", "overwrite"]),
                  max(1, int(2 ** (rng.random() * 14)))) for _ in range(50))
    for off, kind, length in raw:
        off = max(off, floor)  # keep edits disjoint in v1 coordinates
        if off >= size:
            continue
        if kind != "insert":
            length = min(length, size - off)
        edits.append((off, kind, length))
        floor = off + (0 if kind == "insert" else length)
    with open(p1, "rb") as src, open(p2, "wb") as dst:
        pos = 0
        for off, kind, length in edits:
            copy_range(src, dst, off - pos)
            pos = off
            if kind != "delete":
                dst.write(mixed_block(rng, length, 0.15))
            if kind != "insert":
                src.seek(off + length)
                pos = off + length
        copy_range(src, dst, size - pos)


# ---------------------------------------------------------------- database

DB_SCHEMA = """
CREATE TABLE users (
    id INTEGER PRIMARY KEY, name TEXT NOT NULL, email TEXT NOT NULL,
    country TEXT, created_at INTEGER NOT NULL, bio TEXT, avatar BLOB);
CREATE UNIQUE INDEX users_email ON users(email);
CREATE TABLE orders (
    id INTEGER PRIMARY KEY, user_id INTEGER NOT NULL, created_at INTEGER NOT NULL,
    status TEXT NOT NULL, total_cents INTEGER NOT NULL, currency TEXT NOT NULL, items TEXT);
CREATE INDEX orders_user ON orders(user_id);
CREATE INDEX orders_created ON orders(created_at);
CREATE TABLE events (
    id INTEGER PRIMARY KEY, user_id INTEGER, ts INTEGER NOT NULL, kind TEXT NOT NULL,
    payload TEXT, data BLOB);
CREATE INDEX events_user_ts ON events(user_id, ts);
CREATE INDEX events_kind ON events(kind);
"""
DB_ROWS = {"users": 60_000, "orders": 420_000, "events": 480_000}
COUNTRIES = ["DE", "US", "FR", "JP", "BR", "IN", "GB", "NL", "SE", "PL", "CA", "AU"]
STATUSES = ["pending", "paid", "shipped", "delivered", "cancelled", "refunded"]
EVENT_KINDS = ["login", "logout", "view", "click", "search", "add_to_cart", "checkout", "error"]


def db_user(rng, i):
    first = text_like(rng, rng.randint(4, 9)).decode(errors="replace").split(" ")[0] or "x"
    return (i, f"{first.title()} {rng.choice(STEMS).title()}", f"user{i}.{rng.getrandbits(24):06x}@example.com",
            rng.choice(COUNTRIES), 1600000000 + rng.randrange(10 ** 8),
            text_like(rng, rng.randint(80, 500)).decode(errors="replace"),
            rng.randbytes(rng.randint(96, 900)))


def db_order(rng, i, n_users):
    items = [{"sku": f"SKU-{rng.randrange(10 ** 5):05d}", "qty": rng.randint(1, 5),
              "price": rng.randrange(199, 49999)} for _ in range(rng.randint(1, 4))]
    return (i, rng.randrange(1, n_users + 1), 1650000000 + rng.randrange(5 * 10 ** 7),
            rng.choice(STATUSES), sum(x["qty"] * x["price"] for x in items),
            rng.choice(["EUR", "USD", "GBP"]), json.dumps(items, separators=(",", ":")))


def db_event(rng, i, n_users):
    kind = rng.choice(EVENT_KINDS)
    payload = json.dumps({"path": f"/p/{rng.randrange(10 ** 4)}", "ref": rng.choice(STEMS),
                          "ms": rng.randrange(2000), "ok": rng.random() < 0.95},
                         separators=(",", ":"))
    data = binary_like(rng, rng.randint(16, 256)) if rng.random() < 0.4 else None
    return (i, rng.randrange(1, n_users + 1), 1690000000 + i * 13 + rng.randrange(13), kind, payload, data)


DB_INSERT = {
    "users": "INSERT INTO users VALUES (?,?,?,?,?,?,?)",
    "orders": "INSERT INTO orders VALUES (?,?,?,?,?,?,?)",
    "events": "INSERT INTO events VALUES (?,?,?,?,?,?)",
}


def db_row(rng, table, i):
    if table == "users":
        return db_user(rng, i)
    if table == "orders":
        return db_order(rng, i, DB_ROWS["users"])
    return db_event(rng, i, DB_ROWS["users"])


def db_connect(path):
    con = sqlite3.connect(path, isolation_level=None)
    con.execute("PRAGMA journal_mode=DELETE")
    con.execute("PRAGMA synchronous=OFF")  # speed; durability is irrelevant here
    return con


def gen_database(wdir, params, data_dir):
    rng = random.Random(params["seed"])
    p1, p2 = os.path.join(wdir, "v1", "app.db"), os.path.join(wdir, "v2", "app.db")
    os.makedirs(os.path.dirname(p1))
    os.makedirs(os.path.dirname(p2))
    con = sqlite3.connect(p1, isolation_level=None)
    con.execute("PRAGMA page_size=4096")  # must precede the first table
    con.execute("PRAGMA journal_mode=DELETE")
    con.execute("PRAGMA synchronous=OFF")
    con.executescript(DB_SCHEMA)
    for table, n in DB_ROWS.items():
        con.execute("BEGIN")
        for start in range(1, n + 1, 10_000):  # batches keep memory flat
            rows = [db_row(rng, table, i) for i in range(start, min(n, start + 9_999) + 1)]
            con.executemany(DB_INSERT[table], rows)
        con.execute("COMMIT")
    con.close()

    shutil.copyfile(p1, p2)
    con = db_connect(p2)
    con.execute("BEGIN")
    for table, n in DB_ROWS.items():
        for i in sorted(rng.sample(range(1, n + 1), n // 100)):
            if table == "users":
                con.execute("UPDATE users SET bio=?, country=? WHERE id=?",
                            (text_like(rng, rng.randint(80, 500)).decode(errors="replace"),
                             rng.choice(COUNTRIES), i))
            elif table == "orders":
                con.execute("UPDATE orders SET status=?, total_cents=total_cents+? WHERE id=?",
                            (rng.choice(STATUSES), rng.randrange(-500, 500), i))
            else:
                con.execute("UPDATE events SET kind=?, payload=? WHERE id=?",
                            (rng.choice(EVENT_KINDS), db_event(rng, i, DB_ROWS["users"])[4], i))
        con.executemany(DB_INSERT[table], [db_row(rng, table, n + 1 + k) for k in range(n // 200)])
        con.executemany(f"DELETE FROM {table} WHERE id=?",
                        [(i,) for i in sorted(rng.sample(range(1, n + 1), n // 500))])
    con.execute("COMMIT")
    con.close()
    for p in (p1, p2):
        for suffix in ("-journal", "-wal", "-shm"):
            if os.path.exists(p + suffix):
                raise WorkloadError(f"database: {p + suffix} left behind")


# ---------------------------------------------------------------- fs-image

FS_UUID = "0d5c1f3e-7a2b-4c9d-8e6f-5a4b3c2d1e0f"
FS_HASH_SEED = "6b1e2a3c-4d5e-4f60-9a7b-8c9d0e1f2a3b"
# Our own mke2fs.conf, so /etc/mke2fs.conf on the host cannot change defaults.
MKE2FS_CONF = """[defaults]
\tbase_features = sparse_super,large_file,filetype,resize_inode,dir_index,ext_attr
\tdefault_mntopts = acl,user_xattr
\tblocksize = 4096
\tinode_size = 256
\tinode_ratio = 16384
[fs_types]
\text4 = {
\t\tfeatures = has_journal,extent,huge_file,flex_bg,metadata_csum,64bit,dir_nlink,extra_isize
\t}
\tdefault = {
\t}
"""
FS_DIRS = {
    "text": ["etc/app", "etc/app/conf.d", "usr/share/doc/libfoo", "usr/share/doc/libbar",
             "usr/share/doc/tool", "var/log/app", "home/alice/projects/alpha/src",
             "home/alice/projects/beta/docs", "home/bob/notes"],
    "binary": ["usr/lib/app", "usr/lib/app/plugins", "var/lib/app/db", "var/lib/app/index",
               "srv/data/shard0", "srv/data/shard1", "srv/data/shard2", "opt/tools/bin"],
    "random": ["home/alice/photos/2023", "home/bob/music", "var/cache/app/blobs"],
}


def fs_tools_env(fake_time, workdir):
    # Fake time pins every timestamp e2fsprogs writes; LC_ALL=C pins the
    # order in which mkfs -d sorts (alphasort) the staging directories.
    return dict(os.environ, E2FSPROGS_FAKE_TIME=str(fake_time), LC_ALL="C",
                MKE2FS_CONFIG=os.path.join(workdir, "mke2fs.conf"))


def fs_run(cmd, env, what):
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        raise WorkloadError(f"fs-image: {what} failed ({r.returncode}): {r.stderr.strip()[-800:]}")
    return r


def fs_file(rng, kind):
    if kind == "text":
        return text_like(rng, log_uniform(rng, 1 * KiB, 1 * MiB))
    if kind == "binary":
        return binary_like(rng, log_uniform(rng, 16 * KiB, 8 * MiB))
    return rng.randbytes(log_uniform(rng, 1 * MiB, 8 * MiB))


def debugfs_script(env, image, lines, what):
    script = image + ".debugfs"
    with open(script, "w") as f:
        f.write("\n".join(lines) + "\n")
    r = fs_run(["debugfs", "-w", "-f", script, image], env, what)
    os.remove(script)
    # debugfs exits 0 even when a command fails; its errors go to stderr.
    bad = [ln for ln in r.stderr.splitlines() if ln.strip() and not ln.startswith("debugfs ")]
    if bad:
        raise WorkloadError(f"fs-image: {what}: {bad[:5]}")


def fs_fix_inodes(env, image, paths, t):
    """mkfs -d copies ctime and owner from the staging dir, which no one can
    set; pin them (and the other times) so the image is reproducible."""
    lines = []
    for p in paths:
        for field in ("ctime", "mtime", "atime", "crtime"):
            lines.append(f'sif "{p}" {field} @{t}')
        lines.append(f'sif "{p}" uid 0')
        lines.append(f'sif "{p}" gid 0')
    debugfs_script(env, image, lines, "fixing inode fields")


def gen_fs_image(wdir, params, data_dir):
    rng = random.Random(params["seed"])
    stage, tmp = os.path.join(wdir, "staging"), os.path.join(wdir, "tmp")
    img1, img2 = os.path.join(wdir, "v1", "disk.img"), os.path.join(wdir, "v2", "disk.img")
    for d in (stage, tmp, os.path.dirname(img1), os.path.dirname(img2)):
        os.makedirs(d)
    with open(os.path.join(tmp, "mke2fs.conf"), "w") as f:
        f.write(MKE2FS_CONF)

    files = []  # (path in image, kind)
    for kind, count in (("text", 200), ("binary", 110), ("random", 36)):
        for i in range(count):
            d = rng.choice(FS_DIRS[kind])
            ext = {"text": rng.choice(TEXT_EXT), "binary": rng.choice(BIN_EXT),
                   "random": rng.choice(["jpg", "mp3", "gz"])}[kind]
            rel = f"{d}/{rng.choice(STEMS)}-{i:03d}.{ext}"
            write_file(os.path.join(stage, rel), fs_file(rng, kind))
            files.append((rel, kind))
    dirs = sorted({posixpath.dirname(r) for r, _ in files})
    all_dirs = sorted({"/".join(d.split("/")[:k]) for d in dirs for k in range(1, d.count("/") + 2)})
    for root, dnames, fnames in os.walk(stage):
        for n in dnames:
            os.chmod(os.path.join(root, n), 0o755)
        for n in fnames:
            os.chmod(os.path.join(root, n), 0o644)

    env = fs_tools_env(T1, tmp)
    fs_run(["mkfs.ext4", "-q", "-F", "-t", "ext4", "-T", "default", "-d", stage,
            "-U", FS_UUID, "-L", "xfer-bench",
            "-E", f"hash_seed={FS_HASH_SEED},lazy_itable_init=0,lazy_journal_init=0,nodiscard",
            img1, "512M"], env, "mkfs.ext4")
    shutil.rmtree(stage)
    inodes = ["/", "/lost+found"] + ["/" + d for d in all_dirs] + ["/" + r for r, _ in files]
    fs_fix_inodes(env, img1, inodes, T1)

    shutil.copyfile(img1, img2)
    env = fs_tools_env(T2, tmp)
    pool = sorted(r for r, _ in files)
    rng.shuffle(pool)
    kinds = dict(files)
    n_rewrite = len(files) * 5 // 100
    rewrite, delete = sorted(pool[:n_rewrite]), sorted(pool[n_rewrite:n_rewrite + 10])
    lines, touched = [], []
    for i, rel in enumerate(rewrite):
        local = os.path.join(tmp, f"rw-{i:03d}")
        write_file(local, fs_file(rng, kinds[rel]))
        d, name = posixpath.split(rel)
        lines += [f'rm "/{rel}"', f'cd "/{d}"', f'write "{local}" "{name}"']
        touched.append("/" + rel)
    for rel in delete:
        lines.append(f'rm "/{rel}"')
    for i in range(20):
        kind = rng.choice(["text", "text", "binary"])
        d = rng.choice(FS_DIRS[kind])
        name = f"new-{i:02d}.{rng.choice(TEXT_EXT if kind == 'text' else BIN_EXT)}"
        local = os.path.join(tmp, f"new-{i:02d}")
        write_file(local, fs_file(rng, kind))
        lines += [f'cd "/{d}"', f'write "{local}" "{name}"']
        touched.append(f"/{d}/{name}")
    debugfs_script(env, img2, lines, "editing v2")
    fs_fix_inodes(env, img2, touched, T2)
    shutil.rmtree(tmp)
    for img in (img1, img2):
        r = subprocess.run(["e2fsck", "-fn", img], capture_output=True, text=True,
                           env=dict(os.environ, LC_ALL="C"))
        if r.returncode != 0:
            raise WorkloadError(f"fs-image: e2fsck -fn {img} reports errors:\n{r.stdout[-2000:]}")


# ---------------------------------------------------------------- moved-files

def gen_moved_files(wdir, params, data_dir):
    rng = random.Random(params["seed"])
    v1, v2 = os.path.join(wdir, "v1"), os.path.join(wdir, "v2")
    tops = ["assets", "build", "data", "docs", "lib", "media", "reports", "src"]
    subs = ["alpha", "beta", "core", "extra", "legacy", "shared", "tmp", "vendor", "x86", "arm"]
    level2, dirs = [], []
    for t in tops:
        for s in sorted(rng.sample(subs, rng.randint(3, 5))):
            level2.append(f"{t}/{s}")
            dirs.append(f"{t}/{s}")
            for k in range(rng.choice([0, 0, 1, 2, 3])):
                dirs.append(f"{t}/{s}/part{k}")
    for d in dirs:
        os.makedirs(os.path.join(v1, d), exist_ok=True)
    for i in range(3000):
        rel = f"{rng.choice(dirs)}/{rng.choice(STEMS)}-{i:04d}.{rng.choice(TEXT_EXT + BIN_EXT)}"
        size = int(4 * KiB * 64 ** (rng.random() ** 0.6))
        x = rng.random()
        if x < 0.45:
            data = text_like(rng, size)
        elif x < 0.85:
            data = binary_like(rng, size)
        else:  # half random: media-ish, still partly compressible
            data = rng.randbytes(size // 2) + binary_like(rng, size - size // 2)
        write_file(os.path.join(v1, rel), data)
    files = sorted(os.path.relpath(os.path.join(r, f), v1) for r, _, fs in os.walk(v1) for f in fs)

    shutil.copytree(v1, v2, symlinks=True)
    pool = files[:]
    rng.shuffle(pool)
    n = len(files)
    n_move, n_edit, n_del = n * 30 // 100, n // 100, n // 200
    moves = sorted(pool[:n_move])
    edits = sorted(pool[n_move:n_move + n_edit])
    deletes = sorted(pool[n_move + n_edit:n_move + n_edit + n_del])
    for rel in edits:
        with open(os.path.join(v2, rel), "r+b") as f:
            size = os.fstat(f.fileno()).st_size
            k = rng.randint(1 * KiB, 4 * KiB)
            f.seek(rng.randrange(max(1, size - k)))
            f.write(text_like(rng, k))
    for rel in deletes:
        os.remove(os.path.join(v2, rel))
    for rel in moves:
        # Names are unique (index in the name), so a move never collides.
        d = rng.choice([x for x in dirs if x != posixpath.dirname(rel)])
        os.rename(os.path.join(v2, rel), os.path.join(v2, d, posixpath.basename(rel)))
    for i in range(n // 200):
        rel = f"{rng.choice(dirs)}/new-{i:03d}.{rng.choice(TEXT_EXT)}"
        write_file(os.path.join(v2, rel), text_like(rng, int(4 * KiB * 64 ** rng.random())))
    # Rename whole level-2 dirs under distinct tops, so no rename nests in another.
    picked, seen = [], set()
    for d in rng.sample(level2, len(level2)):
        if d.split("/")[0] not in seen and len(picked) < 4:
            picked.append(d)
            seen.add(d.split("/")[0])
    for d in sorted(picked):
        os.rename(os.path.join(v2, d), os.path.join(v2, d + "-2024"))


# ---------------------------------------------------------------- huge-file

HUGE_KEY = "78666572626e6368776c2d6875676531"  # fixed: the file is a keystream
HUGE_IV = "00000000000000000000000000000000"


def check_free(path, need, what):
    free = shutil.disk_usage(path).free
    if free < need:
        raise WorkloadError(f"{what}: need {need / GiB:.1f} GiB free in {path}, have {free / GiB:.1f} GiB")


def regen_huge(path, gib):
    """Write the v1 huge file: AES-128-CTR keystream of gib GiB (fast, and
    identical everywhere because key and IV are fixed and there is no salt)."""
    size = gib * GiB
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    existing = os.path.getsize(path) if os.path.isfile(path) else 0
    check_free(parent, size + GiB - existing, "huge-file")
    part = path + ".part"
    with open(part, "wb") as out:
        head = subprocess.Popen(["head", "-c", str(size), "/dev/zero"], stdout=subprocess.PIPE)
        enc = subprocess.run(["openssl", "enc", "-aes-128-ctr", "-nosalt", "-K", HUGE_KEY, "-iv", HUGE_IV],
                             stdin=head.stdout, stdout=out, stderr=subprocess.PIPE)
        head.stdout.close()
        if head.wait() != 0 or enc.returncode != 0:
            raise WorkloadError(f"huge-file: openssl failed: {enc.stderr.decode(errors='replace').strip()}")
    if os.path.getsize(part) != size:
        raise WorkloadError(f"huge-file: {part} has {os.path.getsize(part)} bytes, expected {size}")
    os.replace(part, path)


def apply_edits(path, edits_json):
    """Turn a copy of huge-file v1 into v2 in place: each edit overwrites
    `length` bytes at `offset` with Random(seed).randbytes(length)."""
    with open(edits_json) as f:
        edits = json.load(f)
    with open(path, "r+b") as f:
        size = os.fstat(f.fileno()).st_size
        for e in edits:
            if e["offset"] + e["length"] > size:
                raise WorkloadError(f"{path}: edit at {e['offset']} beyond {size} bytes (wrong --huge-gib?)")
            f.seek(e["offset"])
            f.write(random.Random(e["seed"]).randbytes(e["length"]))
    # A changed file gets T2, as in every other workload; without it rsync's
    # size+mtime check would see no change at all.
    os.utime(path, (T2, T2))


def gen_huge_file(wdir, params, data_dir):
    rng = random.Random(params["seed"])
    size = params["gib"] * GiB
    regen_huge(os.path.join(wdir, "v1", "huge.img"), params["gib"])
    edits = []
    for _ in range(64):
        length = rng.randint(4 * KiB, 64 * KiB)
        edits.append({"offset": rng.randrange(size - length), "length": length, "seed": rng.getrandbits(63)})
    edits.sort(key=lambda e: e["offset"])
    with open(os.path.join(wdir, "v2-edits.json"), "w") as f:
        json.dump(edits, f, indent=1)
        f.write("\n")
    os.utime(os.path.join(wdir, "v2-edits.json"), (T1, T1))


# ---------------------------------------------------------------- driver

WORKLOADS = {
    "source-tree": gen_source_tree,
    "log-append": gen_log_append,
    "random-blob": gen_random_blob,
    "many-small": gen_many_small,
    "big-file-edits": gen_big_file_edits,
    "database": gen_database,
    "fs-image": gen_fs_image,
    "moved-files": gen_moved_files,
    "huge-file": gen_huge_file,
    # New workloads go last: a workload's seed is its position here.
    "big-random": gen_big_random,
}


def workload_params(name, args):
    p = {"gen": GEN_VERSION, "seed": 1000 + list(WORKLOADS).index(name)}
    if name == "source-tree":
        p["crates"] = hashlib.sha256(json.dumps(CRATES).encode()).hexdigest()[:16]
    if name == "huge-file":
        p["gib"] = args.huge_gib
    return p


def same_entry(a, b):
    """Is path b (v2) unchanged from path a (v1)? Content, type and target."""
    try:
        sa = os.lstat(a)
    except FileNotFoundError:
        return False
    sb = os.lstat(b)
    if (sa.st_mode & 0o170000) != (sb.st_mode & 0o170000):
        return False
    if os.path.islink(b):
        return os.readlink(a) == os.readlink(b)
    if os.path.isdir(b):
        return sorted(os.listdir(a)) == sorted(os.listdir(b))
    if sa.st_size != sb.st_size:
        return False
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            x, y = fa.read(PIECE), fb.read(PIECE)
            if x != y:
                return False
            if not x:
                return True


def normalise(tree, reference=None):
    """Pin modes and mtimes; with a reference (v1), unchanged entries keep T1."""
    for root, dnames, fnames in os.walk(tree, topdown=False):
        rel_root = os.path.relpath(root, tree)
        for name in fnames + dnames + ([] if root != tree else [None]):
            p = root if name is None else os.path.join(root, name)
            st = os.lstat(p)
            t = T1
            if reference is not None:
                rel = rel_root if name is None else os.path.join(rel_root, name)
                t = T1 if same_entry(os.path.join(reference, rel), p) else T2
            if os.path.islink(p):
                os.utime(p, (t, t), follow_symlinks=False)
                continue
            if os.path.isdir(p):
                os.chmod(p, 0o755)
            else:
                os.chmod(p, 0o755 if st.st_mode & 0o111 else 0o644)
            os.utime(p, (t, t))


def tree_stats(tree):
    s = {"files": 0, "dirs": 0, "symlinks": 0, "bytes": 0}
    for root, dnames, fnames in os.walk(tree):
        for n in dnames + fnames:
            p = os.path.join(root, n)
            if os.path.islink(p):
                s["symlinks"] += 1
            elif os.path.isdir(p):
                s["dirs"] += 1
            else:
                s["files"] += 1
                s["bytes"] += os.lstat(p).st_size
    return s


def generate(name, data_dir, args):
    wdir = os.path.join(data_dir, name)
    done = os.path.join(wdir, ".done")
    params = workload_params(name, args)
    if os.path.exists(done):
        try:
            with open(done) as f:
                if json.load(f).get("params") == params:
                    log(f"{name}: up to date, skipped")
                    return
        except (OSError, ValueError):
            pass
    if os.path.lexists(wdir):
        shutil.rmtree(wdir)
    os.makedirs(wdir)
    log(f"{name}: generating")
    t0 = time.monotonic()
    WORKLOADS[name](wdir, params, data_dir)
    v1, v2 = os.path.join(wdir, "v1"), os.path.join(wdir, "v2")
    normalise(v1)
    info = {"name": name, "params": params, "v1": tree_stats(v1)}
    if name == "huge-file":
        info["v2"] = "edits"
    else:
        normalise(v2, reference=v1)
        info["v2"] = tree_stats(v2)
    with open(done + ".tmp", "w") as f:
        json.dump(info, f, sort_keys=True)
        f.write("\n")
    os.replace(done + ".tmp", done)

    def desc(s):
        return s if isinstance(s, str) else f"{s['files']} files, {s['bytes'] / MiB:.1f} MiB"
    log(f"{name}: done in {time.monotonic() - t0:.1f}s; v1 {desc(info['v1'])}; v2 {desc(info['v2'])}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", metavar="DIR", help="output directory (keep it outside the repository)")
    ap.add_argument("--huge-gib", type=int, default=16, metavar="N", help="size of huge-file (default 16)")
    ap.add_argument("--list", action="store_true", help="print the workload names and exit")
    ap.add_argument("--apply-edits", nargs=2, metavar=("EDITS_JSON", "FILE"),
                    help="apply huge-file v2 edits to FILE in place")
    ap.add_argument("--regen-v1", metavar="FILE", help="(re)write huge-file v1 (size --huge-gib) at FILE")
    ap.add_argument("names", nargs="*", metavar="NAME", help="workloads to build (default: all)")
    args = ap.parse_args(argv)
    try:
        if args.list:
            print("\n".join(WORKLOADS))
            return 0
        if args.apply_edits:
            apply_edits(args.apply_edits[1], args.apply_edits[0])
            return 0
        if args.regen_v1:
            regen_huge(args.regen_v1, args.huge_gib)
            return 0
        if not args.data:
            ap.error("--data DIR is required")
        if args.huge_gib < 1:
            ap.error("--huge-gib must be at least 1")
        unknown = [n for n in args.names if n not in WORKLOADS]
        if unknown:
            ap.error(f"unknown workload(s): {', '.join(unknown)} (see --list)")
        data_dir = os.path.abspath(args.data)
        os.makedirs(data_dir, exist_ok=True)
        for name in args.names or WORKLOADS:
            generate(name, data_dir, args)
    except WorkloadError as e:
        log(f"error: {e}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
