#!/usr/bin/env bash
# The figure behind transport::DATA_STREAMS: builds xfer with 1, 2, 4 and 8
# data streams (from a scratch worktree of HEAD) and pushes the same
# workloads with each, alternating the builds over ROUNDS rounds so that a
# burst of load elsewhere on the machine hits them all alike. Run as root
# after suite.sh has generated the data:
#
#   sudo scripts/bench/sweep-streams.sh
#
# Settings (environment): BENCH_DIR (/var/tmp/xfer-bench), SWEEP_COUNTS
# ("1 2 4 8"), SWEEP_RATES ("unlimited 100mbit"), SWEEP_WORKLOADS
# (random-blob,log-append), ROUNDS (2). Results: $BENCH_DIR/streams-N.jsonl,
# and a table on stdout: median wall time and wire bytes per phase.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
dir=${BENCH_DIR:-/var/tmp/xfer-bench}
counts=${SWEEP_COUNTS:-1 2 4 8}
rates=${SWEEP_RATES:-unlimited 100mbit}
workloads=${SWEEP_WORKLOADS:-random-blob,log-append}
rounds=${ROUNDS:-2}
[ "$(id -u)" = 0 ] || { echo "sweep-streams.sh: run as root (it creates network namespaces)" >&2; exit 2; }
[ -d "$dir/data" ] || { echo "sweep-streams.sh: no workloads in $dir/data; run suite.sh first" >&2; exit 2; }

tree=$(mktemp -d /var/tmp/xfer-sweep.XXXXXX)
trap 'git -C "$repo" worktree remove --force "$tree" >/dev/null 2>&1 || true' EXIT
git -C "$repo" worktree add -q --detach "$tree" HEAD
for n in $counts; do
  sed -i "s/^pub const DATA_STREAMS: usize = .*;/pub const DATA_STREAMS: usize = $n;/" "$tree/src/transport/driver.rs"
  grep -q "^pub const DATA_STREAMS: usize = $n;" "$tree/src/transport/driver.rs" ||
    { echo "sweep-streams.sh: transport::DATA_STREAMS not found in driver.rs" >&2; exit 1; }
  CARGO_TARGET_DIR="$dir/sweep-target" cargo build -q --release --manifest-path "$tree/Cargo.toml" --bin xfer
  cp "$dir/sweep-target/release/xfer" "$dir/xfer-streams-$n"
done

run_id=$(date -u +%Y%m%d-%H%M%S)
for round in $(seq "$rounds"); do
  for rate in $rates; do
    rate_args=()
    [ "$rate" = unlimited ] || rate_args=(--rate "$rate")
    for n in $counts; do
      echo "round $round, $rate, $n streams" >&2
      XFER_BIN="$dir/xfer-streams-$n" python3 "$here/bench.py" --data "$dir/data" --work "$dir/work" \
        --out "$dir/streams-$n.jsonl" --tools xfer --workloads "$workloads" --run-id "$run_id" "${rate_args[@]}"
    done
  done
done
python3 - "$dir" "$run_id" $counts <<'PY'
import json, statistics, sys
dir, run_id, counts = sys.argv[1], sys.argv[2], sys.argv[3:]
cells = {}
for n in counts:
    with open(f"{dir}/streams-{n}.jsonl") as f:
        for line in f:
            r = json.loads(line)
            if r["run_id"] != run_id:
                continue
            if not r["correct"]:
                raise SystemExit(f"{n} streams: {r['rate']} {r['workload']} {r['phase']} was not correct")
            cells.setdefault((r["rate"], r["workload"], r["phase"]), {}).setdefault(n, []).append(r)
print(f"run {run_id}: median wall s (wire MB) per data-stream count")
print("| rate | workload | phase | " + " | ".join(f"{n} streams" for n in counts) + " |")
print("|---|---|---|" + "---|" * len(counts))
for (rate, workload, phase), by_n in sorted(cells.items()):
    row = []
    for n in counts:
        rs = by_n.get(n, [])
        if not rs:
            row.append("–")
            continue
        wall = statistics.median(r["wall_s"] for r in rs)
        wire = statistics.median(r["wire_total_bytes"] for r in rs) / 1e6
        row.append(f"{wall:.2f} ({wire:.1f})")
    print(f"| {rate} | {workload} | {phase} | " + " | ".join(row) + " |")
PY
