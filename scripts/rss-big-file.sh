#!/usr/bin/env bash
# Peak memory of chunking one big file: creates SIZE (default 4G) of random
# bytes, chunks it with `xfer digest`, prints the result, the wall time and
# the peak RSS. Needs GNU time (/usr/bin/time, Debian package `time`).
set -euo pipefail
cd "$(dirname "$0")/.."
size=${1:-4G}
file=$(mktemp /var/tmp/xfer-rss.XXXXXX)
trap 'rm -f "$file"' EXIT
[ -x /usr/bin/time ] || apt-get install -y time >/dev/null
head -c "$size" /dev/urandom > "$file"
cargo build --release --quiet
/usr/bin/time -f 'wall %e s, peak RSS %M KiB' ./target/release/xfer digest "$file"
