#!/usr/bin/env bash
# Layering check (the layering rules in README's Layout): the pure core never names the edges' crates, and
# only the binary names clap, anyhow and indicatif.
set -euo pipefail
cd "$(dirname "$0")/.."
status=0
# The core (src/core) is its own crate: it cannot name tokio or quinn (not
# its dependencies), and src/core/clippy.toml refuses std's file, socket,
# process and clock calls; this catches a dependency added by mistake.
if grep -nE '^(tokio|quinn|quinn-proto|rustls|redb|socket2|tracing)\b' src/core/Cargo.toml; then
  echo "layers: the core crate (src/core) must not depend on runtime, network or storage crates" >&2
  status=1
fi
if grep -rnE '\bxfer::' src/core --include=*.rs; then
  echo "layers: the core crate must not name the xfer crate" >&2
  status=1
fi
if grep -rnE '\b(tokio|quinn|std::net|Instant::now)\b' src/core/session; then
  echo "layers: sessions are sans-IO: no sockets, no runtime, no clock" >&2
  status=1
fi
if grep -rnE '\bquinn::' src --include=*.rs | grep -v '^src/net/'; then
  echo "layers: only src/net names quinn" >&2
  status=1
fi
if grep -rnE '\b(clap|anyhow|indicatif)::' src --include=*.rs | grep -v '^src/bin/'; then
  echo "layers: clap, anyhow and indicatif belong to src/bin only" >&2
  status=1
fi
# The CLI is built on the library's API alone (src/api.rs); the log
# target string naming a module is not an import.
if grep -rnE '\bxfer::(engine|fs|net|session|throttle|usecase|adapt|chunk|codec|congestion|filter|hash|manifest|patch|plan|progress|wire|error)::' src/bin --include=*.rs | grep -v 'with_target('; then
  echo "layers: the CLI (src/bin) uses only the library's API, not its modules" >&2
  status=1
fi
# Imports only go down: core < fs < net < usecase < the API < the CLI.
down() { # LAYER_DIR FORBIDDEN_PATTERN WHAT
  if grep -rnE "$2" "$1" --include=*.rs | grep -vE '^[^:]+:[0-9]+:\s*//'; then echo "layers: $3" >&2; status=1; fi
}
down src/fs '\bcrate::(net|usecase|api)\b' "the filesystem edge (src/fs) must not import net, usecase or the API"
down src/net '\bcrate::(usecase|api)\b' "the network edge (src/net) must not import the use cases or the API"
down src/usecase '\bcrate::api\b' "the use cases must not import the API"
# (its tests, after #[cfg(test)], may read the clock)
if sed '/#\[cfg(test)\]/q' scripts/bench/wanlink/src/link.rs | grep -nE '\b(std::fs|std::net|std::thread|libc|Instant::now)\b'; then
  echo "layers: the WAN router's link.rs is its pure core: no I/O, no clock" >&2
  status=1
fi
exit $status
