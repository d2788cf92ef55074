#!/usr/bin/env bash
# Stateless nodes on one bucket: two `xfer serve --store s3://…` processes
# share a Garage bucket; CLIENTS clients (default 16) push their own trees at
# once, half through each node, then every tree is pulled back through the
# OTHER node and compared; finally two clients push different trees to the
# same path through different nodes at once, and "latest" must be exactly one
# of them. Prints wall time, bytes, each node's peak RSS and request counts
# from the audit logs.
#
#   scripts/store-nodes.sh [CLIENTS] [MB_PER_TREE]
#
# With WORKLOADS=DIR (a --data directory of scripts/bench/workloads.py, e.g.
# after `python3 scripts/bench/workloads.py --data DIR source-tree log-append
# random-blob many-small big-file-edits database fs-image moved-files`),
# client c pushes the v1 tree of the (c mod N)-th workload there instead of a
# generated tree (MB_PER_TREE is then ignored).
#
# Needs a Garage build (scripts/garage.sh install) and GNU time; uses $XFER
# or target/release/xfer (built if missing). Starts its own cluster on
# GARAGE_PORT_BASE (default 4100) and removes everything at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
clients=${1:-16}
mb=${2:-8}
x=${XFER:-$PWD/target/release/xfer}
[ -x "$x" ] || cargo build --release --quiet
[ -x /usr/bin/time ] || { echo "needs GNU time (/usr/bin/time)" >&2; exit 1; }
export GARAGE_PORT_BASE=${GARAGE_PORT_BASE:-4100}
dir=${NODES_DIR:-/var/tmp/xfer-store-nodes}
rm -rf "$dir"; mkdir -p "$dir"
# Absolute: the cleanup runs after the cd below.
garage="$PWD/scripts/garage.sh"
garage_env=$("$garage" start "$dir/garage")
eval "$garage_env"
cleanup() {
    pkill -INT -f "listen 127.0.0.1:796[12]" 2>/dev/null || true
    sleep 1
    "$garage" stop "$dir/garage" >/dev/null 2>&1 || true
    rm -rf "$dir"
}
trap cleanup EXIT
cd "$dir"
store="s3://$XFER_TEST_BUCKET/nodes-$$"

srcs=()
if [ -n "${WORKLOADS:-}" ]; then
    mapfile -t names < <(find "$WORKLOADS" -mindepth 2 -maxdepth 2 -name v1 -type d | sort)
    [ "${#names[@]}" -gt 0 ] || { echo "no workload v1 trees under $WORKLOADS" >&2; exit 2; }
    for c in $(seq 0 $((clients - 1))); do srcs+=("${names[$((c % ${#names[@]}))]}"); done
else
    for c in $(seq 0 $((clients - 1))); do srcs+=("$dir/src$c"); done
python3 - "$clients" "$mb" <<'PY'
import os, random, sys
clients, mb = int(sys.argv[1]), int(sys.argv[2])
for c in range(clients):
    r = random.Random(c)
    left = mb << 20
    i = 0
    while left > 0:
        d = f"src{c}/d{i % 7}"
        os.makedirs(d, exist_ok=True)
        n = min(left, r.choice([300, 5000, 60000, 700000]))
        with open(f"{d}/f{i}", "wb") as f:
            # Half text-like (compressible), half random.
            f.write(r.randbytes(n) if i % 2 else (b"line %d of file %d\n" % (i, c)) * (n // 20 + 1))
        left -= n
        i += 1
PY
fi

sfp=$("$x" id --config-dir cfgs)
allow=()
for c in $(seq 0 $((clients - 1))); do
    allow+=(--allow "$("$x" id --config-dir "cfg$c")")
done
for n in 1 2; do
    /usr/bin/time -o "node$n.time" -f "%M" "$x" serve --store "$store" --listen "127.0.0.1:$((7960 + n))" \
        "${allow[@]}" --config-dir cfgs --audit-log "audit$n.jsonl" 2>"node$n.log" &
done
sleep 2
node_of() { echo $((7961 + $1 % 2)); }
other_of() { echo $((7962 - $1 % 2)); }

# Every client pushes its own tree at once, half through each node; each
# has its own state directory, as separate machines would (two runs of one
# source at once share none).
start=$(date +%s.%N)
pids=()
for c in $(seq 0 $((clients - 1))); do
    "$x" push -q --json --config-dir "cfg$c" --state-dir "st$c" --server-fingerprint "$sfp" "${srcs[$c]}" \
        "xfer://127.0.0.1:$(node_of "$c")/c$c" >"push$c.json" 2>"push$c.err" &
    pids+=($!)
done
failed=0
for p in "${pids[@]}"; do wait "$p" || failed=$((failed + 1)); done
push_wall=$(python3 -c "import sys; print(float(sys.argv[1]) - float(sys.argv[2]))" "$(date +%s.%N)" "$start")
[ "$failed" = 0 ] || { echo "$failed pushes failed:" >&2; cat push*.err >&2; exit 1; }

# Each tree back through the other node.
pull_start=$(date +%s.%N)
for c in $(seq 0 $((clients - 1))); do
    "$x" pull -q --config-dir "cfg$c" --state-dir "st$c" --server-fingerprint "$sfp" "xfer://127.0.0.1:$(other_of "$c")/c$c" "out$c"
    diff -r "${srcs[$c]}" "out$c" >/dev/null || { echo "tree c$c differs after a pull through the other node" >&2; exit 1; }
done
pull_wall=$(python3 -c "import sys; print(float(sys.argv[1]) - float(sys.argv[2]))" "$(date +%s.%N)" "$pull_start")
echo "every tree restores exact through the other node (pulled one after another in $pull_wall s)"

# Two clients, two nodes, one path, at once: each snapshot whole, latest one of them.
"$x" push -q --config-dir cfg0 --state-dir st0 --server-fingerprint "$sfp" "${srcs[0]}" "xfer://127.0.0.1:7961/same" &
a=$!
"$x" push -q --config-dir cfg1 --state-dir st1 --server-fingerprint "$sfp" "${srcs[1]}" "xfer://127.0.0.1:7962/same" &
b=$!
wait "$a"; wait "$b"
"$x" pull -q --config-dir cfg0 --state-dir st0 --server-fingerprint "$sfp" "xfer://127.0.0.1:7962/same" same
if diff -r "${srcs[0]}" same >/dev/null; then latest="client 0"
elif diff -r "${srcs[1]}" same >/dev/null; then latest="client 1"
else echo "the latest snapshot of /same is neither push: torn" >&2; exit 1; fi
"$x" snapshots --config-dir cfg0 --state-dir st0 --server-fingerprint "$sfp" "xfer://127.0.0.1:7961/same" | tail -n +2 | wc -l \
    | xargs -I{} echo "/same: {} snapshots, latest is $latest's tree whole"

pkill -INT -f "listen 127.0.0.1:796[12]" || true
wait 2>/dev/null || true
python3 - "$clients" "$mb" "$push_wall" <<'PY'
import json, sys
clients, mb, wall = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
sent = wire = scanned = 0
for c in range(clients):
    with open(f"push{c}.json") as f:
        r = json.load(f)
    sent += r["bytes_sent"]
    wire += r["wire_bytes_sent"]
    scanned += r["bytes_scanned"]
total = scanned / 2**20
print(f"{clients} clients, {total:.0f} MiB in all, pushed at once through 2 nodes: {wall:.1f} s, {total / wall:.1f} MiB/s")
print(f"chunk bytes sent {sent:,}, wire bytes up {wire:,}")
for n in (1, 2):
    rss = open(f"node{n}.time").read().split()[-1]
    records = [json.loads(line) for line in open(f"audit{n}.jsonl")]
    costs = {}
    for record in records:
        for key, value in (record.get("store") or {}).items():
            costs[key] = costs.get(key, 0) + value
    shown = ", ".join(f"{k} {v:,}" for k, v in sorted(costs.items()))
    print(f"node {n}: peak RSS {int(rss) / 1024:.0f} MiB, {len(records)} sessions; store requests: {shown}")
PY
