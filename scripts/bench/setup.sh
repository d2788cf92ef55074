#!/usr/bin/env bash
# Installs what the benchmark suite runs (Debian/Ubuntu, as root) and builds
# xfer in release mode. Idempotent: a second run only checks.
set -euo pipefail
[ "$(id -u)" = 0 ] || { echo "setup.sh: run as root (apt and network namespaces need it)" >&2; exit 2; }
need=(rsync openssh-server openssh-client restic borgbackup e2fsprogs iproute2 openssl time python3 sqlite3 iperf3 iputils-ping
  python3-matplotlib)
missing=()
for pkg in "${need[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup.sh: installing ${missing[*]}" >&2
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
# The suite starts its own sshd in a namespace; the system's is not needed.
mkdir -p /run/sshd
cd "$(dirname "$0")/../.."
cargo build --release --quiet --bin xfer
# The emulated WAN router (net.up_wan).
cargo build --release --quiet -p xfer-wanlink
