#!/usr/bin/env bash
# Layering check (the layering rules in README's Layout): the pure core never names the edges' crates, and
# only the binary names clap, anyhow and indicatif.
set -euo pipefail
cd "$(dirname "$0")/.."
status=0
core="src/chunk.rs src/hash.rs src/manifest.rs src/plan.rs src/codec.rs src/patch.rs"
if grep -nE '\b(std::fs|std::net|tokio|quinn|Instant::now)\b' $core; then
  echo "layers: the pure core (chunk, hash, manifest, plan, codec, patch) must not do I/O" >&2
  status=1
fi
if grep -rnE '\b(tokio|quinn|std::net|Instant::now)\b' src/session; then
  echo "layers: sessions are sans-IO: no sockets, no runtime, no clock" >&2
  status=1
fi
if grep -rnE '\bquinn::' src --include=*.rs | grep -v '^src/transport/'; then
  echo "layers: only src/transport names quinn" >&2
  status=1
fi
if grep -rnE '\b(clap|anyhow|indicatif)::' src --include=*.rs | grep -v '^src/bin/'; then
  echo "layers: clap, anyhow and indicatif belong to src/bin only" >&2
  status=1
fi
# (its tests, after #[cfg(test)], may read the clock)
if sed '/#\[cfg(test)\]/q' scripts/bench/wanlink/src/link.rs | grep -nE '\b(std::fs|std::net|std::thread|libc|Instant::now)\b'; then
  echo "layers: the WAN router's link.rs is its pure core: no I/O, no clock" >&2
  status=1
fi
exit $status
