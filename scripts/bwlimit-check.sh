#!/usr/bin/env bash
# Measures --bwlimit on the wire: an `xfer serve` and an `xfer push` on
# loopback, the lo interface's byte counter (both directions, IP headers
# included) sampled every second. Prints each full second's bytes against
# the limit, and the average.
#
#   scripts/bwlimit-check.sh [RATE_BYTES_PER_S] [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
rate=${1:-2097152}
seconds=${2:-32}
cargo build --release --quiet
xfer=$PWD/target/release/xfer
work=$(mktemp -d)
trap 'kill "$server" 2>/dev/null || true; rm -rf "$work"' EXIT
mkdir -p "$work/src"
head -c $((rate * seconds)) /dev/urandom > "$work/src/blob"
client_fp=$("$xfer" id --config-dir "$work/ccfg")
"$xfer" serve --root "$work/served" --listen 127.0.0.1:0 --allow "$client_fp" --config-dir "$work/scfg" 2> "$work/serve.log" &
server=$!
sleep 1
read -r _ _ _ _ addr _ server_fp < <(head -1 "$work/serve.log")
python3 - "$work/samples" "$((seconds + 6))" <<'PY' &
import sys, time
def lo():
    for line in open('/proc/net/dev'):
        if line.strip().startswith('lo:'):
            return int(line.split(':')[1].split()[0])
out, n = sys.argv[1], int(sys.argv[2])
prev, samples, start = lo(), [], time.time()
for _ in range(n):
    time.sleep(1.0 - ((time.time() - start) % 1.0))
    cur = lo(); samples.append(cur - prev); prev = cur
open(out, 'w').write(' '.join(map(str, samples)))
PY
sampler=$!
"$xfer" push -q --bwlimit "${rate}B" --server-fingerprint "$server_fp" --config-dir "$work/ccfg" \
  --state-dir "$work/state" "$work/src" "xfer://$addr/b"
wait "$sampler"
python3 - "$work/samples" "$rate" <<'PY'
import sys
samples = [int(x) for x in open(sys.argv[1]).read().split()]
rate = int(sys.argv[2])
# Whole seconds of transfer: drop the ramp-up and tail seconds.
busy = [s for s in samples if s > rate / 2][1:-1]
for s in busy:
    print(f"{s:>10} B  {100 * (s / rate - 1):+5.1f}%")
avg = sum(busy) / len(busy)
print(f"{len(busy)} s: min {100 * (min(busy) / rate - 1):+.1f}%, max {100 * (max(busy) / rate - 1):+.1f}%, "
      f"average {100 * (avg / rate - 1):+.1f}% of {rate} B/s")
PY
