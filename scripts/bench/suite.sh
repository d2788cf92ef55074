#!/usr/bin/env bash
# The whole benchmark, one command (Linux, as root): installs the peers,
# builds xfer, generates the workloads, runs every tool side by side at each
# rate, and regenerates BENCHMARKS.md and the README's comparison table.
#
#   sudo scripts/bench/suite.sh
#
# Settings (environment):
#   BENCH_DIR        data, work area and results      (/var/tmp/xfer-bench)
#   BENCH_WORKLOADS  comma-separated workloads         (all; workloads.py --list)
#   BENCH_TOOLS      comma-separated tools             (xfer,rsync,rsync-z,rsync-ssh,restic,borg)
#   BENCH_RATES      space-separated rates             ("unlimited 100mbit 20mbit")
#   BENCH_HUGE_GIB   size of the huge-file workload    (16; needs about 4x that free on disk)
#   BENCH_WORKLOADS_<RATE>  workloads at one rate, e.g. BENCH_WORKLOADS_20mbit=source-tree,log-append
#   BENCH_REPORT     1 to write BENCHMARKS.md/README   (1)
#
# At 100mbit every phase is measured; huge-file runs uncapped only (a full
# copy of it would take hours on a capped link). At 20mbit the initial phase
# is seeded uncapped (marked † in the tables) and delta and noop are capped.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
dir=${BENCH_DIR:-/var/tmp/xfer-bench}
rates=${BENCH_RATES:-unlimited 100mbit 20mbit}
tools=${BENCH_TOOLS:-xfer,rsync,rsync-z,rsync-ssh,restic,borg}
huge=${BENCH_HUGE_GIB:-16}
[ "$(id -u)" = 0 ] || { echo "suite.sh: run as root (it installs packages and creates network namespaces)" >&2; exit 2; }
bash "$here/setup.sh"
# The tables name the code they measured; "+changes" marks an uncommitted tree.
built=$(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo unknown)
[ -z "$(git -C "$repo" status --porcelain --untracked-files=no 2>/dev/null)" ] || built="$built+changes"
all=$(python3 "$here/workloads.py" --list | paste -sd, -)
workloads=${BENCH_WORKLOADS:-$all}
mkdir -p "$dir"
python3 "$here/workloads.py" --data "$dir/data" --huge-gib "$huge" ${workloads//,/ }
run_id=$(date -u +%Y%m%d-%H%M%S)
results=$dir/results.jsonl
commands=$dir/commands-$run_id.txt
: > "$commands"
for rate in $rates; do
  args=(--data "$dir/data" --work "$dir/work" --out "$results" --tools "$tools" --run-id "$run_id")
  selected=$workloads
  case $rate in
    unlimited) ;;
    20mbit) args+=(--rate "$rate" --seed-initial); selected=$(tr , '\n' <<<"$workloads" | grep -vx huge-file | paste -sd, -) ;;
    *) args+=(--rate "$rate"); selected=$(tr , '\n' <<<"$workloads" | grep -vx huge-file | paste -sd, -) ;;
  esac
  per_rate=BENCH_WORKLOADS_$rate
  selected=${!per_rate:-$selected}
  [ -n "$selected" ] || continue
  echo "python3 scripts/bench/bench.py ${args[*]} --workloads $selected" >> "$commands"
  python3 "$here/bench.py" "${args[@]}" --workloads "$selected" || echo "suite.sh: some phases at $rate were not correct (see BENCHMARKS.md)" >&2
done
if [ "${BENCH_REPORT:-1}" = 1 ]; then
  python3 "$here/report.py" "$results" --benchmarks "$repo/BENCHMARKS.md" --readme "$repo/README.md" \
    --commands <(env | grep '^BENCH_' | sort | sed "s/^\([^=]*\)=\(.*\)\$/export \1='\2'/"; echo "sudo -E scripts/bench/suite.sh"; echo "# xfer built from commit $built"; echo "# which ran:"; cat "$commands")
  echo "suite.sh: wrote $repo/BENCHMARKS.md and the README table (results in $results)"
fi
