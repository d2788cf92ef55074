#!/usr/bin/env bash
# The whole benchmark, one command (Linux, as root): installs the peers,
# builds xfer, generates the workloads, runs every tool side by side at each
# rate, then over each emulated WAN profile, then on trees of growing size,
# and regenerates BENCHMARKS.md (tables, issue 18's targets, SVG charts in
# bench-charts/ beside it) and the README's comparison table.
#
#   sudo scripts/bench/suite.sh
#
# Settings (environment):
#   BENCH_DIR        data, work area and results      (/var/tmp/xfer-bench)
#   BENCH_WORKLOADS  comma-separated workloads at the rates (all but big-random; workloads.py --list)
#   BENCH_TOOLS      comma-separated tools             (xfer,rsync,rsync-z,rsync-ssh,restic,borg)
#   BENCH_RATES      space-separated rates; empty: none ("unlimited 100mbit 20mbit")
#   BENCH_HUGE_GIB   size of the huge-file workload    (16; needs about 4x that free on disk)
#   BENCH_WORKLOADS_<RATE>  workloads at one rate, e.g. BENCH_WORKLOADS_20mbit=source-tree,log-append
#   BENCH_PROFILES   space-separated WAN profiles, run after the rates; empty: none
#                    ("0ms-20mbit 0ms-100mbit 40ms-0.1pct-20mbit 40ms-0.1pct-100mbit
#                      150ms-1pct-20mbit 150ms-1pct-100mbit"; net.py's PROFILES)
#   BENCH_WAN_WORKLOADS  comma-separated workloads on each profile (source-tree,big-random)
#   BENCH_PUSH_TIMEOUT   seconds after which a push over the WAN is killed (900)
#   BENCH_ENTRIES    space-separated tree sizes for entries.py, after the WAN part; empty: none
#                    ("10000 100000"; issue 18's target is at 10000000: see METHOD.md for its disk and time)
#   BENCH_ENTRIES_TOOLS    comma-separated tools on those trees (xfer,rsync,restic)
#   BENCH_ENTRIES_TIMEOUT  seconds after which one phase on a tree is killed (21600)
#   BENCH_REPORT     1 to write BENCHMARKS.md/README   (1)
#   BENCH_BENCHMARKS where BENCHMARKS.md goes, its charts in bench-charts/ beside it (the repository's)
#   BENCH_README     the README whose table is rewritten; empty: none (the repository's)
#
# At 100mbit every phase is measured; huge-file runs uncapped only (a full
# copy of it would take hours on a capped link). At 20mbit the initial phase
# is seeded uncapped (marked † in the tables) and delta and noop are capped.
# Over the WAN profiles every phase is measured, the first push included.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
dir=${BENCH_DIR:-/var/tmp/xfer-bench}
rates=${BENCH_RATES-unlimited 100mbit 20mbit}
tools=${BENCH_TOOLS:-xfer,rsync,rsync-z,rsync-ssh,restic,borg}
huge=${BENCH_HUGE_GIB:-16}
# Unset means all six; set and empty means no WAN part.
profiles=${BENCH_PROFILES-0ms-20mbit 0ms-100mbit 40ms-0.1pct-20mbit 40ms-0.1pct-100mbit 150ms-1pct-20mbit 150ms-1pct-100mbit}
wan_workloads=${BENCH_WAN_WORKLOADS:-source-tree,big-random}
push_timeout=${BENCH_PUSH_TIMEOUT:-900}
entries=${BENCH_ENTRIES-10000 100000}
entries_tools=${BENCH_ENTRIES_TOOLS:-xfer,rsync,restic}
entries_timeout=${BENCH_ENTRIES_TIMEOUT:-21600}
benchmarks=${BENCH_BENCHMARKS:-$repo/BENCHMARKS.md}
readme=${BENCH_README-$repo/README.md}
[ "$(id -u)" = 0 ] || { echo "suite.sh: run as root (it installs packages and creates network namespaces)" >&2; exit 2; }
bash "$here/setup.sh"
# The tables name the code they measured; "+changes" marks an uncommitted tree.
built=$(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo unknown)
[ -z "$(git -C "$repo" status --porcelain --untracked-files=no 2>/dev/null)" ] || built="$built+changes"
# big-random is the WAN runs' large file; the rates have random-blob and huge-file.
all=$(python3 "$here/workloads.py" --list | grep -vx big-random | paste -sd, -)
workloads=${BENCH_WORKLOADS:-$all}
generate=
[ -z "$rates" ] || generate=$workloads
if [ -n "$profiles" ]; then
  generate="$generate,$wan_workloads"
  cargo build --release --quiet --manifest-path "$repo/Cargo.toml" -p xfer-wanlink
fi
mkdir -p "$dir"
generate=$(tr , '\n' <<<"$generate" | grep . | sort -u || true)
[ -z "$generate" ] || python3 "$here/workloads.py" --data "$dir/data" --huge-gib "$huge" $generate
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
if [ -n "$profiles" ]; then
  estimate=$(python3 "$here/bench.py" --estimate "$profiles" --data "$dir/data" --out "$results" --tools "$tools" \
    --workloads "$wan_workloads")
  echo "suite.sh: WAN part: $(wc -w <<<"$profiles") profiles x $wan_workloads x $tools," \
    "about $(((estimate + 59) / 60)) min (finishing near $(date -d "+$estimate sec" +%H:%M))" >&2
  started=$(date +%s)
  for profile in $profiles; do
    args=(--data "$dir/data" --work "$dir/work" --out "$results" --tools "$tools" --run-id "$run_id"
      --profile "$profile" --push-timeout "$push_timeout")
    echo "python3 scripts/bench/bench.py ${args[*]} --workloads $wan_workloads" >> "$commands"
    python3 "$here/bench.py" "${args[@]}" --workloads "$wan_workloads" || echo "suite.sh: some phases over $profile were not correct (see BENCHMARKS.md)" >&2
  done
  echo "suite.sh: WAN part took $((($(date +%s) - started) / 60)) min (estimated $(((estimate + 59) / 60)))" >&2
fi
if [ -n "$entries" ]; then
  args=(--dir "$dir/entries" --out "$results" --tools "$entries_tools" --run-id "$run_id" --timeout "$entries_timeout")
  echo "python3 scripts/bench/entries.py ${args[*]} --entries '$entries'" >> "$commands"
  started=$(date +%s)
  python3 "$here/entries.py" "${args[@]}" --entries "$entries" || echo "suite.sh: some phases on the generated trees were not correct (see BENCHMARKS.md)" >&2
  echo "suite.sh: tree-size part took $((($(date +%s) - started) / 60)) min" >&2
fi
if [ "${BENCH_REPORT:-1}" = 1 ]; then
  # The system's Python: setup.sh installs matplotlib for it with apt.
  py=python3
  [ -x /usr/bin/python3 ] && py=/usr/bin/python3
  "$py" "$here/report.py" "$results" --benchmarks "$benchmarks" ${readme:+--readme "$readme"} \
    --commands <(env | grep '^BENCH_' | sort | sed "s/^\([^=]*\)=\(.*\)\$/export \1='\2'/"; echo "sudo -E scripts/bench/suite.sh"; echo "# xfer built from commit $built"; echo "# which ran:"; cat "$commands")
  echo "suite.sh: wrote $benchmarks, its charts${readme:+ and the table in $readme} (results in $results)"
fi
