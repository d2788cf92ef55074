#!/usr/bin/env bash
# Runs the slow tests that `cargo test` skips (#[ignore]): a million entries
# in one directory, and whatever else is marked slow. Prints their figures.
#
#   scripts/slow-tests.sh [FILTER]
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --test tests "${1:-}" -- --ignored --nocapture --test-threads 1
