#!/usr/bin/env bash
# Disk use of a month of nightly backups: xfer against restic, borg and an
# rsync --link-dest rotation of the same seeded series (history.py's
# docstring describes the series and the figures; METHOD.md the method).
#
#   scripts/bench/history.sh          # as root the first time: installs the tools
#
# Settings (environment):
#   BENCH_DIR        work area and results            (/var/tmp/xfer-bench)
#   HISTORY_NIGHTS   nights in the series             (30)
#   HISTORY_SCALE    size of the tree, 1 = ~300 MiB  (1)
#   HISTORY_SEED     seed of the series               (1)
#   HISTORY_TOOLS    comma-separated subset           (xfer,restic,borg,rsync)
#   XFER             the xfer binary                  (target/release/xfer, built if missing)
# Results: JSON lines appended to $BENCH_DIR/history.jsonl, the table on
# stdout and in $BENCH_DIR/history/history.md.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
dir=${BENCH_DIR:-/var/tmp/xfer-bench}
need=(restic borgbackup rsync zstd python3 coreutils)
missing=()
for pkg in "${need[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
# python3-zstandard is faster than piping each file through the zstd CLI,
# which history.py falls back to; install it when we can, never require it.
dpkg-query -W -f='${Status}' python3-zstandard 2>/dev/null | grep -q "install ok installed" || opt=python3-zstandard
if [ ${#missing[@]} -gt 0 ] || [ -n "${opt:-}" ]; then
  if [ "$(id -u)" = 0 ]; then
    echo "history.sh: installing ${missing[*]} ${opt:-}" >&2
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" ${opt:-} >/dev/null
  elif [ ${#missing[@]} -gt 0 ]; then
    echo "history.sh: missing ${missing[*]}: run it once as root to install them" >&2
    exit 2
  fi
fi
xfer=${XFER:-$repo/target/release/xfer}
if [ -z "${XFER:-}" ] && [ ! -x "$xfer" ]; then
  cargo build --release --quiet --manifest-path "$repo/Cargo.toml" --bin xfer
fi
[ -x "$xfer" ] || { echo "history.sh: no xfer binary at $xfer" >&2; exit 2; }
mkdir -p "$dir"
exec python3 "$here/history.py" --dir "$dir/history" --out "$dir/history.jsonl" \
  --nights "${HISTORY_NIGHTS:-30}" --scale "${HISTORY_SCALE:-1}" --seed "${HISTORY_SEED:-1}" \
  --tools "${HISTORY_TOOLS:-xfer,restic,borg,rsync}" --xfer "$xfer"
