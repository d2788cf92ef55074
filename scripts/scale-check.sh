#!/usr/bin/env bash
# Small-scale check of the scale model in SCALE.md: CLIENTS clients, each
# with a tree of FILES small files, push through `xfer serve --store
# file://…` for NIGHTS nights (night 1 the whole tree; later nights rewrite
# 0.1% of the files and add a few), a fresh server per push so its peak RSS
# is that push's own. After every push the store's objects are counted by
# kind (a file:// store keeps one file per object), so what each push added
# (packs, index files, owner lists, snapshot records and their bytes) is
# measured rather than inferred; requests come from the audit log when the
# server records them.
#
#   scripts/scale-check.sh [CLIENTS] [FILES] [NIGHTS]     (default 4 20000 3)
#
# Prints one JSON line per push (and writes them to $dir/pushes.jsonl), then
# a summary the model's constants are read from. Uses $XFER or a release
# build (target/release/xfer, built if missing); needs GNU time and python3.
# Scratch under ${SCALE_DIR:-/var/tmp/xfer-scale-check}, removed at the end
# unless KEEP=1.
set -euo pipefail
cd "$(dirname "$0")/.."
clients=${1:-4}
files=${2:-20000}
nights=${3:-3}
port=${SCALE_PORT:-7931}
dir=${SCALE_DIR:-/var/tmp/xfer-scale-check}
x=${XFER:-$PWD/target/release/xfer}
[ -x /usr/bin/time ] || { echo "needs GNU time (/usr/bin/time)" >&2; exit 1; }
[ -x "$x" ] || cargo build --release --quiet
rm -rf "$dir"
mkdir -p "$dir"
cleanup() {
    pkill -INT -f "listen 127.0.0.1:$port" 2>/dev/null || true
    [ "${KEEP:-0}" = 1 ] || rm -rf "$dir"
}
trap cleanup EXIT
cd "$dir"
store="$dir/store"
mkdir -p "$store"

# Trees: FILES files of 1 B - 4 KB (one in 500 of 64 KB - 1 MB) in
# directories of 1,000, as scripts/rss-history.sh makes them.
edit() {
    python3 - "$@" <<'PY'
import os, random, sys, zlib
root, files, night = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
r = random.Random(zlib.crc32(f"{root}:{night}".encode()))
def body(i):
    n = r.randint(64 << 10, 1 << 20) if i % 500 == 0 else r.randint(1, 4096)
    return r.randbytes(n)
if night == 1:
    for i in range(files):
        d = f"{root}/d{i // 1000}"
        if i % 1000 == 0:
            os.makedirs(d, exist_ok=True)
        with open(f"{d}/f{i}", "wb") as f:
            f.write(body(i))
else:
    for i in r.sample(range(files), max(1, files // 1000)):
        with open(f"{root}/d{i // 1000}/f{i}", "wb") as f:
            f.write(body(i))
    for k in range(max(1, files // 5000)):
        with open(f"{root}/d0/new{night}-{k}", "wb") as f:
            f.write(body(k + 1))
PY
}

count_store() {
    python3 - "$store" <<'PY'
import json, os, sys
out = {}
for kind in ("packs", "index", "snapshots", "owners"):
    n = b = 0
    for base, _, names in os.walk(os.path.join(sys.argv[1], kind)):
        for name in names:
            n += 1
            b += os.path.getsize(os.path.join(base, name))
    out[kind] = [n, b]
print(json.dumps(out))
PY
}

sfp=$("$x" id --config-dir cfgs)
allow=()
for c in $(seq 0 $((clients - 1))); do
    allow+=(--allow "$("$x" id --config-dir "cfg$c")")
    edit "src$c" "$files" 1
done

: >pushes.jsonl
for night in $(seq 1 "$nights"); do
    for c in $(seq 0 $((clients - 1))); do
        [ "$night" = 1 ] || edit "src$c" "$files" "$night"
        before=$(count_store)
        /usr/bin/time -o server.time -f "%M" "$x" serve --store "file://$store" --listen "127.0.0.1:$port" \
            "${allow[@]}" --config-dir cfgs --audit-log audit.jsonl 2>>server.log &
        for _ in $(seq 100); do
            ss -ltnu 2>/dev/null | grep -q ":$port " && break
            sleep 0.1
        done
        /usr/bin/time -o client.time -f "%M %e" "$x" push -q --json --delete --config-dir "cfg$c" \
            --server-fingerprint "$sfp" "src$c" "xfer://127.0.0.1:$port/c$c" >push.json
        pkill -INT -f "listen 127.0.0.1:$port" || true
        wait
        after=$(count_store)
        python3 - "$night" "$c" "$before" "$after" <<'PY' | tee -a pushes.jsonl
import json, sys
night, client = int(sys.argv[1]), int(sys.argv[2])
before, after = json.loads(sys.argv[3]), json.loads(sys.argv[4])
push = json.load(open("push.json"))
audit = [json.loads(l) for l in open("audit.jsonl")][-1]
client_rss, wall = open("client.time").read().split()[-2:]
row = {
    "night": night, "client": client,
    "server_rss_kib": int(open("server.time").read().split()[-1]),
    "client_rss_kib": int(client_rss), "wall_s": float(wall),
    "files_changed": push.get("files_changed"), "bytes_sent": push.get("bytes_sent"),
    "wire_bytes_sent": push.get("wire_bytes_sent"),
    "added": {k: [after[k][0] - before[k][0], after[k][1] - before[k][1]] for k in after},
    "store": after,
    "requests": audit.get("store"),
}
print(json.dumps(row))
PY
    done
done

python3 - "$clients" "$files" <<'PY'
import json, sys
clients, files = int(sys.argv[1]), int(sys.argv[2])
rows = [json.loads(l) for l in open("pushes.jsonl")]
first = [r for r in rows if r["night"] == 1]
later = [r for r in rows if r["night"] > 1]
def mean(xs):
    xs = list(xs)
    return sum(xs) / len(xs) if xs else 0
last = rows[-1]["store"]
print(f"\n{clients} clients x {files} files, {len(rows)} pushes through file://")
print(f"store: {last['packs'][0]} packs {last['packs'][1]:,} B; {last['index'][0]} index files "
      f"{last['index'][1]:,} B; {last['snapshots'][0]} records; {last['owners'][0]} owner lists "
      f"{last['owners'][1]:,} B")
for name, rs in (("night 1", first), ("later nights", later)):
    if not rs:
        continue
    print(f"{name}: per push: server peak {mean(r['server_rss_kib'] for r in rs) / 1024:.1f} MiB, "
          f"objects added {mean(sum(v[0] for v in r['added'].values()) for r in rs):.1f} "
          f"(packs {mean(r['added']['packs'][0] for r in rs):.1f}, index {mean(r['added']['index'][0] for r in rs):.1f}), "
          f"index bytes added {mean(r['added']['index'][1] for r in rs):,.0f}, "
          f"owner bytes added {mean(r['added']['owners'][1] for r in rs):,.0f}, "
          f"chunk bytes sent {mean(r['bytes_sent'] or 0 for r in rs):,.0f}")
    reqs = [r["requests"] for r in rs if r.get("requests")]
    if reqs:
        keys = sorted(reqs[0])
        print("   requests per push: " + ", ".join(f"{k} {mean(q.get(k, 0) for q in reqs):,.1f}" for k in keys))
PY
