#!/usr/bin/env bash
# Runs every cargo-fuzz target of protocol/fuzz for SECONDS each, one after
# another, and prints the executions of each.
#
#   scripts/fuzz.sh [SECONDS]    (default 60)
#
# Needs a nightly toolchain; installs cargo-fuzz if missing. Corpora grow in
# protocol/fuzz/corpus/TARGET, crashes land in protocol/fuzz/artifacts/TARGET
# and each run's log in protocol/fuzz/artifacts/TARGET.log (all ignored by
# git). Exits nonzero if any target crashed, leaked, timed out or ran out of
# memory (libFuzzer's default 2 GB rss limit).
set -euo pipefail
cd "$(dirname "$0")/../protocol"
seconds=${1:-60}
case $seconds in
  '' | *[!0-9]*) echo "usage: $0 [SECONDS]" >&2; exit 2 ;;
esac
if ! rustup run nightly rustc --version >/dev/null 2>&1; then
  echo "fuzz: a nightly toolchain is needed (rustup toolchain install nightly)" >&2
  exit 2
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked
fi
# cargo-fuzz keeps its own target dir (fuzz/target); a shared one from the
# environment would mix sanitizer builds into it.
unset CARGO_TARGET_DIR
cargo +nightly fuzz build
mkdir -p fuzz/artifacts
failed=()
summary=()
for target in $(cargo +nightly fuzz list); do
  log=fuzz/artifacts/$target.log
  echo "== $target: ${seconds}s"
  start=$(date +%s)
  status=0
  cargo +nightly fuzz run "$target" -- -max_total_time="$seconds" -rss_limit_mb=2048 -print_final_stats=1 \
    >"$log" 2>&1 || status=$?
  elapsed=$(($(date +%s) - start))
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  if [ -z "$execs" ]; then
    execs=$(sed -n 's/^Done \([0-9]*\) runs.*/\1/p' "$log" | tail -1)
  fi
  line="$target: ${execs:-?} executions in ${elapsed}s"
  if [ "$status" -ne 0 ]; then
    line="$line, FAILED (exit $status, see $PWD/$log)"
    failed+=("$target")
    grep -E '^(==[0-9]+== ?ERROR|thread .* panicked|SUMMARY|artifact_prefix|Test unit written)' "$log" | head -20 || true
  fi
  echo "$line"
  summary+=("$line")
done
echo "== summary"
printf '%s\n' "${summary[@]}"
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz: failures in ${failed[*]}" >&2
  exit 1
fi
