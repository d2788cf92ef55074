#!/usr/bin/env bash
# Peak RSS of both sides of a push over loopback: `xfer serve` and
# `xfer push`, each under GNU time, for an initial push of N small files
# (default 50,000: 100 B - 8 KB each, random, in 1000 directories), a delta
# push (1% of files edited, two directories renamed) and a no-op push.
#
#   scripts/rss-many-files.sh [N] [--big SIZE]
#
# With --big SIZE the tree is one file of SIZE random bytes instead (e.g. 2G).
# Needs GNU time (/usr/bin/time) and python3. Uses $XFER or a release build
# (target/release/xfer, built if missing) and scratch space under
# ${RSS_DIR:-/var/tmp/xfer-rss-many}, removed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
n=50000
big=
while [ $# -gt 0 ]; do
    case $1 in
        --big) big=$2; shift 2 ;;
        *) n=$1; shift ;;
    esac
done
port=${RSS_PORT:-7911}
dir=${RSS_DIR:-/var/tmp/xfer-rss-many}
x=${XFER:-$PWD/target/release/xfer}
[ -x /usr/bin/time ] || { echo "needs GNU time (/usr/bin/time)" >&2; exit 1; }
[ -x "$x" ] || cargo build --release --quiet
rm -rf "$dir"
mkdir -p "$dir"
trap 'pkill -INT -f "listen 127.0.0.1:$port" 2>/dev/null || true; rm -rf "$dir"' EXIT
cd "$dir"

if [ -n "$big" ]; then
    mkdir src
    head -c "$big" /dev/urandom > src/big
else
    python3 - "$n" <<'EOF'
import os, random, sys
n = int(sys.argv[1])
r = random.Random(1)
for i in range(n):
    d = f"src/d{i % 100:02d}/s{(i // 100) % 10:02d}"
    os.makedirs(d, exist_ok=True)
    with open(f"{d}/f{i:07d}.bin", "wb") as f:
        f.write(r.randbytes(r.randint(100, 8000)))
EOF
fi

cfp=$("$x" id --config-dir cfgc)
sfp=$("$x" id --config-dir cfgs)

run() {
    local label=$1
    mkdir -p dst
    /usr/bin/time -o server.time -f "%M" "$x" serve --root dst --listen "127.0.0.1:$port" --allow "$cfp" \
        --config-dir cfgs 2>server.log &
    local server=$!
    sleep 0.5
    /usr/bin/time -o client.time -f "%M %e" "$x" push -q --delete --state-dir st --config-dir cfgc \
        --server-fingerprint "$sfp" src "xfer://127.0.0.1:$port/tree"
    pkill -INT -f "listen 127.0.0.1:$port" || true
    wait "$server" || true
    read -r client wall < client.time
    printf '%-8s client maxrss %7d KiB  server maxrss %7d KiB  wall %s s\n' \
        "$label" "$client" "$(tail -n1 server.time)" "$wall"
}

run initial
if [ -z "$big" ]; then
    # 1% of the files rewritten, two directories renamed.
    python3 - "$n" <<'EOF'
import random, sys
n = int(sys.argv[1])
r = random.Random(2)
for i in r.sample(range(n), n // 100):
    p = f"src/d{i % 100:02d}/s{(i // 100) % 10:02d}/f{i:07d}.bin"
    with open(p, "wb") as f:
        f.write(r.randbytes(r.randint(100, 8000)))
EOF
    mv src/d01 src/d01-renamed
    mv src/d02/s03 src/d02/s03-renamed
else
    # One 1 MiB region rewritten in the middle.
    head -c 1M /dev/urandom | dd of=src/big bs=1M seek=100 conv=notrunc status=none
fi
run delta
run noop
diff -r src dst/tree >/dev/null && echo "trees equal" || { echo "TREES DIFFER" >&2; exit 1; }
