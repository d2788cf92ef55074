#!/usr/bin/env bash
# Hostile-peer and access tests against a real server (tests/hostile.rs),
# the slow ones included: a flood that waits out the handshake timeout,
# `xfer serve`'s default idle timeout (60 s), and the memory one maximal
# chunk list costs the server (about 650 MiB). Prints the server's peak RSS
# for each memory check. Extra arguments go to the test binary.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --test tests hostile:: -- --include-ignored --nocapture --test-threads 2 "$@"
