#!/usr/bin/env bash
# Runs the slow tests that `cargo test` skips (#[ignore]): a million entries
# in one directory, and whatever else is marked slow. Prints their figures.
# Without a FILTER it then runs the WAN check (scripts/wan-check.sh: one push
# over the emulated WAN), which needs root and /dev/net/tun.
#
#   scripts/slow-tests.sh [FILTER]
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --test tests "${1:-}" -- --ignored --nocapture --test-threads 1
if [ -n "${1:-}" ]; then
  exit 0
fi
if [ "$(id -u)" = 0 ] && [ -e /dev/net/tun ]; then
  bash scripts/wan-check.sh
else
  echo "slow-tests.sh: WAN check skipped: it needs root and /dev/net/tun (scripts/wan-check.sh)"
fi
