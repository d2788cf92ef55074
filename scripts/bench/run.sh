#!/usr/bin/env bash
# Runs the shared bench harness with xfer beside rsync, rsync -z and rsync
# over ssh, side by side in one run (as root, Linux).
#
#   scripts/bench/run.sh HARNESS_DIR [RATE] [WORKLOADS...]
#
# HARNESS_DIR is the harness (run.py, setup.sh, workloads.py), RATE a tbf
# rate such as 100mbit or `unlimited`. Results go to
# /var/tmp/xfer-bench/results-RATE.jsonl and a markdown summary beside it.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
harness=${1:?usage: run.sh HARNESS_DIR [RATE] [WORKLOADS...]}
rate=${2:-unlimited}
shift 2 || shift $#
workloads=("$@")
[ ${#workloads[@]} -gt 0 ] || workloads=(source-tree log-append random-blob many-small big-file-edits)
(cd "$here/../.." && cargo build --release --quiet)
bash "$harness/setup.sh"
data=/var/tmp/xfer-bench/data
python3 "$harness/workloads.py" --data "$data" "${workloads[@]}"
out=/var/tmp/xfer-bench/results-$rate.jsonl
rm -f "$out"
rate_args=()
[ "$rate" = unlimited ] || rate_args=(--rate "$rate")
for w in "${workloads[@]}"; do
  for tool in xfer rsync rsync-z rsync-ssh; do
    XFER_BENCH_TOOLS="$here" python3 "$harness/run.py" "$tool" "$w" --data "$data" "${rate_args[@]}" --out "$out" >/dev/null \
      || echo "run failed: $tool $w" >&2
  done
done
python3 "$harness/summarize.py" "$out" > "${out%.jsonl}.md"
echo "results: $out, summary: ${out%.jsonl}.md"
