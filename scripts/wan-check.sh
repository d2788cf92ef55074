#!/usr/bin/env bash
# The slow tier's WAN check (root, Linux with /dev/net/tun): builds release
# xfer and xfer-wanlink, then pushes one 24 MiB random file over the
# emulated WAN (40 ms RTT, 0.1% loss, 20 Mbit) and asserts link use >= 0.90,
# bytes leaving the sender <= 1.05x bytes delivered, and an intact copy.
# See scripts/bench/wan-check.py for the options (passed through).
#
#   sudo scripts/wan-check.sh [--profile NAME] [--mib N] [--seed N]
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "wan-check.sh: run as root (network namespaces, TUN devices)" >&2; exit 2; }
[ -e /dev/net/tun ] || { echo "wan-check.sh: /dev/net/tun missing (modprobe tun)" >&2; exit 2; }
cargo build --release --quiet --bin xfer
cargo build --release --quiet -p xfer-wanlink
exec python3 scripts/bench/wan-check.py "$@"
