#!/usr/bin/env bash
# Resume inside files, measured: pushes one random file (1 GiB by default)
# to an `xfer serve` on loopback, interrupts the push in the middle of the
# file four ways, then pushes again and prints what the second push sent
# against what the destination was missing:
#
#   client-kill9   kill -9 of `xfer push`
#   server-kill9   kill -9 of `xfer serve` (restarted for the re-push)
#   link-cut       the server stopped (SIGTERM) and restarted: the
#                  client's connection is cut
#   window-stop    `--window` closing while the file is in flight
#
# "held" is what the partial file holds on disk when the re-push starts
# (all of it verified chunks, except after a kill -9 of the receiver,
# where up to 16 MiB written after its last checkpoint are not recorded
# and are sent again); "missing" is the file size minus "held".
#
#   scripts/resume-check.sh [MIB] [RATE]   (defaults: 1024, 50M)
#
# Uses a release build; installs nothing. Exits nonzero if a copy is not
# exact or a re-push sent more than missing + 5%.
set -euo pipefail
cd "$(dirname "$0")/.."
MIB=${1:-1024}
RATE=${2:-50M}
# A free UDP port, kept across the server's restarts.
PORT=${RESUME_PORT:-$(python3 -c 'import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}
cargo build --release --quiet --bin xfer
X=$PWD/target/release/xfer
W=$(mktemp -d /tmp/xfer-resume.XXXXXX)
SPID=
cleanup() {
  [ -n "$SPID" ] && kill "$SPID" 2>/dev/null || true
  rm -rf "$W"
}
trap cleanup EXIT

mkdir -p "$W/src" "$W/root"
head -c "${MIB}M" /dev/urandom >"$W/src/big.img"
SIZE=$((MIB * 1048576))
CFP=$("$X" id --config-dir "$W/client")
FAILED=0

start_server() { # the listener is up once its start line is logged
  "$X" serve --listen "127.0.0.1:$PORT" --root "$W/root" --allow "$CFP" --config-dir "$W/server" \
    --idle-timeout 3 2>>"$W/serve.log" >/dev/null &
  SPID=$!
  STARTS=$((STARTS + 1))
  until [ "$(grep -c serving "$W/serve.log" 2>/dev/null || true)" -ge "$STARTS" ] 2>/dev/null; do
    kill -0 "$SPID" 2>/dev/null || { echo "xfer serve did not start: $(cat "$W/serve.log")" >&2; exit 1; }
    sleep 0.1
  done
  # "xfer: serving ROOT on ADDR as FINGERPRINT"
  FP=$(grep serving "$W/serve.log" | tail -1 | awk '{print $NF}')
}

push() { # CASE [ARGS...]: runs in the background, PID in PPID_
  local case=$1
  shift
  "$X" push --json --busy-wait 120 --bwlimit "$RATE" --config-dir "$W/client" --server-fingerprint "$FP" \
    --state-dir "$W/state" "$@" "$W/src" "xfer://127.0.0.1:$PORT/$case" >"$W/$case.json" 2>"$W/$case.err" &
  PUSH_PID=$!
}

held() { # CASE: bytes the partial holds on disk
  local part
  part=$(find "$W/root/$1" -maxdepth 1 -name '.xfer-partial.*' 2>/dev/null | head -1)
  [ -n "$part" ] || { echo 0; return; }
  echo $(($(stat -c '%b * %B' "$part")))
}

wait_half() { # CASE: until the partial holds half the file
  until [ "$(held "$1")" -ge $((SIZE / 2)) ]; do
    kill -0 "$PUSH_PID" 2>/dev/null || { echo "$1: the push ended before half the file" >&2; return 1; }
    sleep 0.1
  done
}

report() { # CASE: re-push and print the figures
  local case=$1 kept missing sent
  sleep 1
  kept=$(held "$case")
  missing=$((SIZE - kept))
  push "$case"
  wait "$PUSH_PID" || { echo "$case: re-push failed: $(cat "$W/$case.err")" >&2; FAILED=1; return; }
  sent=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["bytes_sent"])' "$W/$case.json")
  local intact=yes
  cmp -s "$W/src/big.img" "$W/root/$case/big.img" || { intact=NO; FAILED=1; }
  [ "$sent" -le $((missing * 105 / 100)) ] || FAILED=1
  printf '%-13s held %6d MiB  missing %6d MiB  re-push bytes_sent %6d MiB (%.3f x missing)  exact copy: %s\n' \
    "$case" $((kept / 1048576)) $((missing / 1048576)) $((sent / 1048576)) \
    "$(python3 -c "print($sent / max($missing, 1))")" "$intact"
  rm -rf "${W:?}/root/$case" # keeps disk use near two copies of the file
}

echo "resume-check: ${MIB} MiB random file, --bwlimit $RATE, release build"
STARTS=0
start_server

# kill -9 of the client: the server notices the lost connection (idle
# timeout) and keeps the partial.
push client-kill9
wait_half client-kill9
kill -9 "$PUSH_PID"
wait "$PUSH_PID" 2>/dev/null || true
sleep 5
report client-kill9

# kill -9 of the server: only the checkpoints survive.
push server-kill9
wait_half server-kill9
kill -9 "$SPID"
wait "$SPID" 2>/dev/null || true
kill "$PUSH_PID" 2>/dev/null || true
wait "$PUSH_PID" 2>/dev/null || true
start_server
report server-kill9

# The link cut: the server stops (SIGTERM) mid-file and comes back.
push link-cut
wait_half link-cut
kill -TERM "$SPID"
wait "$SPID" 2>/dev/null || true
wait "$PUSH_PID" 2>/dev/null || true
start_server
report link-cut

# A window closing mid-file: started so that the window's last minute
# ends about halfway through the file.
secs=$(python3 -c "import re; r='$RATE'; m=float(re.match(r'[0-9.]+', r).group()); u={'K':1e3,'M':1e6,'G':1e9}.get(r[-1],1); print(int($SIZE/(m*u)))")
half=$((secs / 2))
[ "$half" -lt 55 ] || { echo "window-stop: the file takes too long at $RATE for a one-minute window" >&2; exit 1; }
while [ $((60 - 10#$(date +%S))) -ne $((half + 2)) ]; do sleep 0.2; done
window="$(date +%H:%M)-$(date -d '+1 min' +%H:%M)"
push window-stop --window "$window"
set +e
wait "$PUSH_PID"
code=$?
set -e
[ "$code" = 4 ] || echo "window-stop: push exited $code, expected 4 (stopped by the window)" >&2
report window-stop

exit "$FAILED"
