#!/usr/bin/env bash
# Runs every cargo-fuzz target of both fuzz crates for SECONDS each, one
# after another, and prints the executions of each:
#   protocol/fuzz  the wire decoders (frame, message bodies, delta formats)
#   tests/fuzz     the push session driven by arbitrary schedules, the
#                  bandwidth settings (rates, timetables, windows, pacing),
#                  the manifest, chunk codec and delta algorithms
#
#   scripts/fuzz.sh [SECONDS]    (default 60)
#
# Needs a nightly toolchain; installs cargo-fuzz if missing. Targets build
# with debug assertions and overflow checks (-a), into one target dir shared
# by both crates (tests/fuzz/target). Corpora grow in CRATE/corpus/TARGET, crashes
# land in CRATE/artifacts/TARGET and each run's log in
# CRATE/artifacts/TARGET.log (all ignored by git); a CRATE/TARGET.dict is
# passed to libFuzzer as its dictionary, and the words of a
# CRATE/TARGET.options as extra libFuzzer flags. Exits nonzero if any target
# crashed, leaked, timed out or ran out of memory (libFuzzer's default 2 GB
# rss limit).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
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
# cargo-fuzz builds with sanitizer flags; a target dir shared with normal
# builds from the environment would mix those builds, so both crates use
# their own.
unset CARGO_TARGET_DIR
flags=(-O -a --target-dir "$root/tests/fuzz/target")
failed=()
summary=()
cd "$root"
for crate in protocol/fuzz tests/fuzz; do
  # cargo fuzz looks for `fuzz/` next to the workspace's Cargo.toml unless
  # told where the crate is.
  dir=(--fuzz-dir "$crate")
  cargo +nightly fuzz build "${dir[@]}" "${flags[@]}"
  mkdir -p "$crate/artifacts"
  for target in $(cargo +nightly fuzz list "${dir[@]}"); do
    log=$crate/artifacts/$target.log
    extra=()
    if [ -f "$crate/$target.dict" ]; then
      extra+=("-dict=$crate/$target.dict")
    fi
    if [ -f "$crate/$target.options" ]; then
      read -ra options <"$crate/$target.options"
      extra+=("${options[@]}")
    fi
    echo "== $crate $target: ${seconds}s"
    start=$(date +%s)
    status=0
    cargo +nightly fuzz run "${dir[@]}" "${flags[@]}" "$target" -- -max_total_time="$seconds" -rss_limit_mb=2048 \
      -print_final_stats=1 "${extra[@]}" >"$log" 2>&1 || status=$?
    elapsed=$(($(date +%s) - start))
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    if [ -z "$execs" ]; then
      execs=$(sed -n 's/^Done \([0-9]*\) runs.*/\1/p' "$log" | tail -1)
    fi
    line="$target: ${execs:-?} executions in ${elapsed}s"
    if [ "$status" -ne 0 ]; then
      line="$line, FAILED (exit $status, see $root/$log)"
      failed+=("$target")
      grep -E '^(==[0-9]+== ?ERROR|thread .* panicked|SUMMARY|artifact_prefix|Test unit written)' "$log" | head -20 || true
    fi
    echo "$line"
    summary+=("$line")
  done
done
echo "== summary"
printf '%s\n' "${summary[@]}"
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz: failures in ${failed[*]}" >&2
  exit 1
fi
