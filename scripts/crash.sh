#!/usr/bin/env bash
# Kills the client or the server of a push (separate `xfer` processes on
# loopback) at every crash point of src/crashpoint.rs, one case after
# another, and prints one line per case (tests/crash.rs, crash_every_point).
# A handful of these cases run with every `cargo test`; this runs them all.
#
#   scripts/crash.sh [FILTER]    only the points whose name contains FILTER
#
# Exits nonzero if any case failed; the failing ones are listed last.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -gt 0 ]; then
  export XFER_CRASH_ONLY="$1"
fi
# `cargo test` builds the binary with the fault-injection feature (the
# package's dev-dependency on itself turns it on); a plain build has no crash points.
exec cargo test -j2 --test tests crash::crash_every_point -- --ignored --nocapture --test-threads 1
