#!/usr/bin/env bash
# The figure behind a default: builds xfer once per value of one constant
# (from a scratch worktree of HEAD) and pushes the same workloads with each
# build, alternating the builds over ROUNDS rounds so that a burst of load
# elsewhere on the machine hits them all alike. Run as root after suite.sh
# has generated the data:
#
#   sudo scripts/bench/sweep.sh src/net/frames.rs DATA_STREAMS "1 2 4 8"
#   sudo scripts/bench/sweep.sh src/core/adapt.rs MAX_LEVEL "1 6"
#
# Settings (environment): BENCH_DIR (/var/tmp/xfer-bench), SWEEP_RATES
# ("unlimited 100mbit"), SWEEP_WORKLOADS (random-blob,log-append), ROUNDS (2).
# Results: $BENCH_DIR/sweep-NAME-VALUE.jsonl, and a table on stdout: median
# wall time, wire bytes and CPU seconds (both sides) per phase.
set -euo pipefail
[ $# = 3 ] || { echo "usage: sweep.sh FILE CONSTANT \"VALUE...\"" >&2; exit 2; }
file=$1 name=$2 values=$3
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
dir=${BENCH_DIR:-/var/tmp/xfer-bench}
rates=${SWEEP_RATES:-unlimited 100mbit}
workloads=${SWEEP_WORKLOADS:-random-blob,log-append}
rounds=${ROUNDS:-2}
[ "$(id -u)" = 0 ] || { echo "sweep.sh: run as root (it creates network namespaces)" >&2; exit 2; }
[ -d "$dir/data" ] || { echo "sweep.sh: no workloads in $dir/data; run suite.sh first" >&2; exit 2; }
pattern="^\(pub \)\?const $name: \([^=]*\) = .*;"
grep -q "$pattern" "$repo/$file" || { echo "sweep.sh: no 'const $name' in $file" >&2; exit 2; }

tree=$(mktemp -d /var/tmp/xfer-sweep.XXXXXX)
trap 'git -C "$repo" worktree remove --force "$tree" >/dev/null 2>&1 || true' EXIT
git -C "$repo" worktree add -q --detach "$tree" HEAD
for value in $values; do
  sed -i "s/$pattern/\1const $name: \2 = $value;/" "$tree/$file"
  grep -q "const $name: [^=]* = $value;" "$tree/$file" || { echo "sweep.sh: could not set $name to $value" >&2; exit 1; }
  CARGO_TARGET_DIR="$dir/sweep-target" cargo build -q --release --manifest-path "$tree/Cargo.toml" --bin xfer
  cp "$dir/sweep-target/release/xfer" "$dir/xfer-$name-$value"
done

run_id=$(date -u +%Y%m%d-%H%M%S)
for round in $(seq "$rounds"); do
  for rate in $rates; do
    rate_args=()
    [ "$rate" = unlimited ] || rate_args=(--rate "$rate")
    for value in $values; do
      echo "round $round, $rate, $name = $value" >&2
      XFER_BIN="$dir/xfer-$name-$value" python3 "$here/bench.py" --data "$dir/data" --work "$dir/work" \
        --out "$dir/sweep-$name-$value.jsonl" --tools xfer --workloads "$workloads" --run-id "$run_id" "${rate_args[@]}"
    done
  done
done
python3 - "$dir" "$name" "$run_id" $values <<'PY'
import json, statistics, sys
dir, name, run_id, values = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
cells = {}
for value in values:
    with open(f"{dir}/sweep-{name}-{value}.jsonl") as f:
        for line in f:
            r = json.loads(line)
            if r["run_id"] != run_id:
                continue
            if not r["correct"]:
                raise SystemExit(f"{name} = {value}: {r['rate']} {r['workload']} {r['phase']} was not correct")
            cells.setdefault((r["rate"], r["workload"], r["phase"]), {}).setdefault(value, []).append(r)
print(f"run {run_id}: median wall s / wire MB / CPU s (both sides) per value of {name}")
print("| rate | workload | phase | " + " | ".join(f"{name} = {v}" for v in values) + " |")
print("|---|---|---|" + "---|" * len(values))
for (rate, workload, phase), by_value in sorted(cells.items()):
    row = []
    for value in values:
        rs = by_value.get(value, [])
        if not rs:
            row.append("–")
            continue
        wall = statistics.median(r["wall_s"] for r in rs)
        wire = statistics.median(r["wire_total_bytes"] for r in rs) / 1e6
        cpu = statistics.median(r["client_cpu_s"] + r["server_cpu_s"] for r in rs)
        row.append(f"{wall:.2f} / {wire:.1f} / {cpu:.1f}")
    print(f"| {rate} | {workload} | {phase} | " + " | ".join(row) + " |")
PY
