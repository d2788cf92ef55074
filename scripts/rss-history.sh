#!/usr/bin/env bash
# Peak RSS of both sides of the history commands at scale: a served tree of
# N small files gets NIGHTS real pushes through `xfer serve` (night 1 all of
# it; each later night rewrites ~0.1% of the files, adds and deletes a few
# hundred, renames one directory, and pushes with --delete), then each of
#   xfer snapshots, xfer pull --at <night 1> (whole tree, checked exact),
#   xfer pull --at latest of one directory (the flat one, checked exact),
#   xfer forget --keep-last 15, xfer prune (phase one), xfer prune (phase two)
# runs under GNU time on both sides, a fresh server per command so the
# server's peak is that command's own.
#
#   scripts/rss-history.sh [N] [NIGHTS]      (default 1000000 30)
#
# RSS_UNTIL=EPOCH-SECONDS stops pushing nights (from night 3 on) once the
# next one, as long as the last, would end after that time (or once the
# file $dir/stop-nights exists): the commands
# are then measured on the nights done (the table says how many). forget
# keeps the newest half (15 of 30; KEEP_LAST sets it).
#
# RSS_ONLY=restore measures the two restores and skips forget and prune.
# RSS_REUSE=1 measures again on the history a KEEP=1 run left in $dir
# (same N and NIGHTS), skipping the tree and the pushes: to compare two
# builds (XFER=...) on one history.
#
# Tree: N files of 1 B - 4 KB random bytes (one in 500 from 64 KB to 1 MB),
# in directories of 1000 below 30 groups, plus one flat directory of
# min(100000, N/10) files. Needs GNU time (/usr/bin/time), python3 and ss.
# Uses $XFER or a release build (target/release/xfer, built if missing);
# scratch under ${RSS_DIR:-/var/tmp/xfer-rss-history}, removed at the end
# unless KEEP=1 (removing a million files takes a while too). Per-night
# figures go to $dir/nights.log (and stdout).
#
# Measured 2026-12-07 on main 2b7b162 (release, 2 shared cores beside a CI
# run, nice 5; MiB; the run before restores were streamed, 0970429, had the
# server at 1020 MiB for the whole restore and 119 MiB for the flat one):
#   N=1000000 NIGHTS=30       client  server    wall s
#   push night 1                 924     404      1671
#   push night 30                923     838        26
#   snapshots                     11      22       0.1
#   pull --at night1 (all)        64     107       470
#   pull --at latest (flat dir)   48      54       105
#   forget --keep-last 15         11      22         2
#   prune (phase one)             11     120       106
#   prune (phase two)             11     118        69
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-1000000}
nights=${2:-30}
port=${RSS_PORT:-7913}
dir=${RSS_DIR:-/var/tmp/xfer-rss-history}
x=${XFER:-$PWD/target/release/xfer}
[ -x /usr/bin/time ] || { echo "needs GNU time (/usr/bin/time)" >&2; exit 1; }
[ "$nights" -ge 2 ] || { echo "NIGHTS must be at least 2" >&2; exit 2; }
[ -x "$x" ] || cargo build --release --quiet
reuse=${RSS_REUSE:-0}
if [ "$reuse" = 1 ]; then
    [ -s "$dir/night1.id" ] || { echo "RSS_REUSE=1 needs a KEEP=1 run's $dir" >&2; exit 2; }
    rm -rf "$dir/restored" "$dir/flat" "$dir/stp"
else
    rm -rf "$dir"
    mkdir -p "$dir"
fi
server=
stop_server() {
    [ -n "$server" ] || return 0
    # GNU time ignores SIGINT while it waits: signal the server itself.
    local child
    child=$(pgrep -P "$server" || true)
    [ -z "$child" ] || kill -INT "$child" 2>/dev/null || true
    wait "$server" || true
    server=
}
cleanup() {
    stop_server
    if [ "${KEEP:-0}" = 1 ]; then echo "kept $dir"; else rm -rf "$dir"; fi
}
trap cleanup EXIT
cd "$dir"
t0=$(date +%s)
elapsed() { echo "+$(( $(date +%s) - t0 ))s"; }

# --- the tree -------------------------------------------------------------
[ "$reuse" = 1 ] || python3 - "$n" <<'EOF'
import os, random, sys
n = int(sys.argv[1])
flat = min(100000, n // 10)
r = random.Random(1)
def body():
    if r.randrange(500) == 0:
        return r.randbytes(r.randint(64 << 10, 1 << 20))
    return r.randbytes(r.randint(1, 4096))
os.makedirs("src/flat")
for i in range(flat):
    with open(f"src/flat/f{i:06d}", "wb") as f:
        f.write(body())
for i in range(n - flat):
    d = f"src/g{i // 1000 % 30:02d}/d{i // 1000:04d}"
    if i % 1000 == 0:
        os.makedirs(d)
    with open(f"{d}/f{i:07d}.bin", "wb") as f:
        f.write(body())
EOF
echo "tree: $n files, $(du -sh src | cut -f1) $(elapsed)"

cfp=$("$x" id --config-dir cfgc)
sfp=$("$x" id --config-dir cfgs)
mkdir -p dst
url="xfer://127.0.0.1:$port/tree"
common=(--config-dir cfgc --server-fingerprint "$sfp")

start_server() {
    /usr/bin/time -o server.time -f "%M" "$x" serve -q --root dst --listen "127.0.0.1:$port" \
        --allow "$cfp" --config-dir cfgs 2>>server.log &
    server=$!
    local i
    for i in $(seq 100); do
        ss -Hlun "sport = :$port" | grep -q . && return 0
        sleep 0.1
    done
    echo "server did not start (see $dir/server.log)" >&2
    exit 1
}

# Runs one client command under GNU time against a fresh server (its stdout
# to client.out); prints a table row and appends it to rows.
measure() {
    local label=$1
    shift
    start_server
    local rc=0
    /usr/bin/time -o client.time -f "%M %e" "$x" "$@" > client.out || rc=$?
    stop_server
    [ "$rc" = 0 ] || { echo "$label: exit $rc" >&2; exit 1; }
    local client wall
    read -r client wall < <(tail -n1 client.time)
    local row
    row=$(awk -v l="$label" -v c="$client" -v s="$(tail -n1 server.time)" -v w="$wall" \
        'BEGIN { printf "%-34s %10.1f %10.1f %9s", l, c / 1024, s / 1024, w }')
    echo "$row" | tee -a rows
}

# A checksum list of a tree: path, kind, size, mtime (s), blake2b of the bytes.
sums() {
    python3 - "$1" <<'EOF'
import hashlib, os, sys
root = sys.argv[1]
out = []
for d, dirs, files in os.walk(root):
    rel = os.path.relpath(d, root)
    out.append(f"{rel}/ dir")
    for f in files:
        p = os.path.join(d, f)
        st = os.lstat(p)
        with open(p, "rb") as fh:
            h = hashlib.blake2b(fh.read(), digest_size=16).hexdigest()
        out.append(f"{rel}/{f} {st.st_size} {int(st.st_mtime)} {h}")
out.sort()
sys.stdout.write("\n".join(out) + "\n")
EOF
}

push() {
    measure "$1" push -q --delete --state-dir st "${common[@]}" src "$url"
}

# --- the history ----------------------------------------------------------
if [ "$reuse" = 1 ]; then
night1=$(cat night1.id)
nights=$(cat nights.done)
else
: > rows
push "push night 1" | tee -a nights.log
sums src > night1.sums
night1=$("$x" snapshots --json --root dst dst/tree | python3 -c '
import json, sys
v = json.load(sys.stdin)
s = v["snapshots"] if isinstance(v, dict) else v
assert len(s) == 1, s
print(s[0]["id"])')
echo "night 1 snapshot $night1 $(elapsed)"
last_wall=0
for night in $(seq 2 "$nights"); do
    if [ "$night" -gt 2 ] && { [ -e stop-nights ] || { [ -n "${RSS_UNTIL:-}" ] &&
        [ $(( $(date +%s) + last_wall * 6 / 5 + 60 )) -gt "$RSS_UNTIL" ]; }; }; then
        echo "stopping after night $(( night - 1 )) of $nights"
        nights=$(( night - 1 ))
        break
    fi
    night_start=$(date +%s)
    python3 - "$n" "$night" <<'EOF'
import os, random, sys
n, night = int(sys.argv[1]), int(sys.argv[2])
r = random.Random(1000 + night)
files = []
for d, _, fs in os.walk("src"):
    files.extend(os.path.join(d, f) for f in fs)
files.sort()
for p in r.sample(files, max(1, n // 1000)):
    with open(p, "wb") as f:
        f.write(r.randbytes(r.randint(1, 4096)))
gone = set(r.sample(files, 300))
for p in gone:
    os.remove(p)
live = [p for p in files if p not in gone]
for i in range(300):
    d = os.path.dirname(r.choice(live))
    with open(os.path.join(d, f"new{night:02d}-{i:03d}"), "wb") as f:
        f.write(r.randbytes(r.randint(1, 4096)))
dirs = sorted({os.path.dirname(p) for p in live if os.path.basename(os.path.dirname(p)).startswith("d")})
d = r.choice(dirs)
os.rename(d, f"{d}-n{night:02d}")
EOF
    push "push night $night" >> nights.log
    echo "night $night: $(tail -n1 nights.log | cut -c35-) $(elapsed)"
    last_wall=$(( $(date +%s) - night_start ))
done
echo "$night1" > night1.id
echo "$nights" > nights.done
fi
keep=${KEEP_LAST:-$(( nights / 2 ))}
du_hist() { du -sm dst/.xfer/history | cut -f1; }
echo "history store: $(du_hist) MiB after $nights nights $(elapsed)"

# --- the measured commands ------------------------------------------------
: > rows
measure "snapshots" snapshots -q --json "${common[@]}" "$url"
cp client.out snapshots.json
listed=$(python3 -c '
import json, sys
v = json.load(open("snapshots.json"))
print(len(v["snapshots"] if isinstance(v, dict) else v))')
[ "$listed" = "$nights" ] || { echo "listed $listed snapshots, pushed $nights nights" >&2; exit 1; }
measure "pull --at night1 (all)" pull -q --at "$night1" --state-dir stp "${common[@]}" "$url" restored
sums restored > restored.sums
cmp -s night1.sums restored.sums || { echo "night 1 RESTORE DIFFERS" >&2; diff night1.sums restored.sums | head >&2; exit 1; }
echo "night 1 restore exact $(elapsed)"
measure "pull --at latest (flat dir)" pull -q --at latest --state-dir stp "${common[@]}" "$url/flat" flat
diff -r src/flat flat > /dev/null || { echo "flat RESTORE DIFFERS" >&2; exit 1; }
echo "latest flat restore exact $(elapsed)"
if [ "${RSS_ONLY:-}" = restore ]; then
    echo
    printf '%-34s %10s %10s %9s\n' command client server wall
    cat rows
    exit 0
fi
measure "forget --keep-last $keep" forget -q --keep-last "$keep" "${common[@]}" "$url"
before=$(du_hist)
measure "prune (phase one)" prune -q "${common[@]}" "$url"
measure "prune (phase two)" prune -q "${common[@]}" "$url"
echo "history store: $before MiB before prune, $(du_hist) MiB after $(elapsed)"

echo
echo "N=$n NIGHTS=$nights (RSS in MiB, wall in s; nights 2.. also edit, add, delete and rename)"
printf '%-34s %10s %10s %9s\n' command client server wall
grep -E "night (1|$nights)\b" nights.log
cat rows
