#!/usr/bin/env bash
# A real 3-node Garage cluster on loopback, for the object-store tests.
#
#   scripts/garage.sh install        build the pinned Garage once per machine
#                                    (cargo install, 20 to 30 min on 2 cores)
#   scripts/garage.sh installed      exit 0 iff that build is cached
#   eval "$(scripts/garage.sh start [DIR])"
#                                    3 nodes, replication factor 3, one bucket
#                                    and one key; prints only `export` lines
#   scripts/garage.sh stop [DIR]     stop every node, remove DIR
#   scripts/garage.sh status [DIR]   `garage status` from a live node
#   scripts/garage.sh kill-node N [DIR]   kill -9 node N (1..3)
#   scripts/garage.sh start-node N [DIR]  restart node N on its own data
#   scripts/garage.sh restart [DIR]       stop every node (SIGTERM), then
#                                    start them all again on their data
#   scripts/garage.sh wipe-node N [DIR]   lose node N's disk: kill it, delete its
#                                    data and metadata, start it empty and
#                                    let the cluster rebuild it
#   scripts/garage.sh selftest       the above, end to end, with curl
#
# DIR defaults to $XFER_GARAGE_DIR (which `start` exports), else
# /var/tmp/xfer-garage. Node I listens for RPC on GARAGE_PORT_BASE+I and
# for S3 on GARAGE_PORT_BASE+10+I (base 3900 by default), so clusters with
# different bases and DIRs do not clash. Logs: DIR/nI/log.
#
# Losing a node's disk also loses its identity (the node key lives in its
# metadata dir), so the empty node comes back under a new id. Garage then
# needs: the new node connected to the others; a layout assigning the new
# id in place of the old (`layout assign NEW --replace OLD`, `layout
# apply`); the dead old id skipped so the layout change can finish (`layout
# skip-dead-nodes`, without --allow-missing-data: the metadata still syncs
# to the new node first); then, on the new node, `repair clear-resync-queue`
# and `repair blocks`, since it would otherwise wait 2 x rpc_timeout
# (10 min) before copying the data blocks it now holds. wipe-node does all
# of it and waits until the layout is stable, the cluster healthy and the
# new node has copied every block.
set -euo pipefail

GARAGE_VERSION=2.5.0
GARAGE_ROOT=${GARAGE_ROOT:-${XDG_CACHE_HOME:-$HOME/.cache}/xfer/garage}
GARAGE_BIN=$GARAGE_ROOT/bin/garage
PORT_BASE=${GARAGE_PORT_BASE:-3900}
REGION=garage
BUCKET=${XFER_TEST_BUCKET:-xfer-test}
# A fixed key: the cluster is throwaway and lives on loopback only. Garage
# wants "GK" + 24 hex digits and a 64-hex-digit secret.
KEY_ID=GK0123456789abcdef01234567
KEY_SECRET=0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef
NODES="1 2 3"
# The file that marks DIR as ours: `stop` removes only such a directory.
MARKER=xfer-garage.env

say() { echo "garage.sh: $*" >&2; }
die() { say "$*"; exit 1; }

cluster_dir() { echo "${1:-${XFER_GARAGE_DIR:-/var/tmp/xfer-garage}}"; }
rpc_port() { echo $((PORT_BASE + $1)); }
s3_port() { echo $((PORT_BASE + 10 + $1)); }

# The ports a cluster in DIR uses are those it was started with.
load_ports() {
  local dir=$1
  if [ -f "$dir/port_base" ]; then
    PORT_BASE=$(cat "$dir/port_base")
  fi
}

installed_version() { # "garage cargo:2.5.0 [features: ...]" -> 2.5.0
  local out
  [ -x "$GARAGE_BIN" ] || return 1
  out=$("$GARAGE_BIN" --version 2>/dev/null) || return 1
  [[ "$out" =~ [0-9]+\.[0-9]+\.[0-9]+ ]] && echo "${BASH_REMATCH[0]}"
}

cmd_installed() {
  [ "$(installed_version || true)" = "$GARAGE_VERSION" ]
}

cmd_install() {
  if cmd_installed; then
    say "garage $GARAGE_VERSION already in $GARAGE_BIN"
    return 0
  fi
  say "building garage $GARAGE_VERSION into $GARAGE_ROOT (20 to 30 min on 2 cores)"
  cargo install --locked "garage@$GARAGE_VERSION" --root "$GARAGE_ROOT"
  cmd_installed || die "$GARAGE_BIN does not report version $GARAGE_VERSION after the build"
}

require_garage() {
  cmd_installed || die "garage $GARAGE_VERSION is not in $GARAGE_BIN; run: scripts/garage.sh install"
}

g() { # g NODE ARGS...: the garage CLI, talking to NODE over RPC
  local n=$1
  shift
  "$GARAGE_BIN" -c "$DIR/n$n/garage.toml" "$@"
}

node_pid() { # the pid of node N if it runs, else nothing
  local f="$DIR/n$1/pid" pid
  [ -f "$f" ] || return 1
  pid=$(cat "$f")
  # The pid must still be our garage on this node's config, not a reused pid.
  local cmdline
  cmdline=$(tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline") || return 1
  if [[ "$cmdline" == *"$DIR/n$1/garage.toml"* ]]; then
    echo "$pid"
  else
    return 1
  fi
}

live_node() { # the first running node, for CLI commands
  local n
  for n in $NODES; do
    if node_pid "$n" >/dev/null; then
      echo "$n"
      return 0
    fi
  done
  die "no node of the cluster in $DIR is running"
}

alive() { # process $1 exists and is not a zombie awaiting its parent
  local st
  st=$(cut -d' ' -f3 "/proc/$1/stat" 2>/dev/null) || return 1
  [ -n "$st" ] && [ "$st" != Z ]
}

port_taken() { # something accepts connections on 127.0.0.1:$1
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# retry SECONDS DESCRIPTION CMD...: run CMD until it succeeds, or die.
retry() {
  local secs=$1 what=$2 end
  shift 2
  end=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    [ "$SECONDS" -lt "$end" ] || die "$what: still failing after ${secs}s (logs: $DIR/n*/log)"
    sleep 0.5
  done
}

write_config() {
  local n=$1 secret=$2
  mkdir -p "$DIR/n$n/meta" "$DIR/n$n/data"
  cat >"$DIR/n$n/garage.toml" <<EOF
metadata_dir = "$DIR/n$n/meta"
data_dir = "$DIR/n$n/data"
# sqlite survives a kill -9; lmdb (the default) has been seen to corrupt.
db_engine = "sqlite"
replication_factor = 3
rpc_bind_addr = "127.0.0.1:$(rpc_port "$n")"
rpc_public_addr = "127.0.0.1:$(rpc_port "$n")"
rpc_secret = "$secret"

[s3_api]
api_bind_addr = "127.0.0.1:$(s3_port "$n")"
s3_region = "$REGION"
EOF
}

spawn_node() { # start node N's server in the background, record its pid
  local n=$1
  # No inherited stdout, so `$(scripts/garage.sh start)` does not wait on
  # it. It stays in the caller's process group: a Ctrl-C or a CI timeout
  # that ends the group ends the cluster too.
  "$GARAGE_BIN" -c "$DIR/n$n/garage.toml" server \
    </dev/null >>"$DIR/n$n/log" 2>&1 &
  echo $! >"$DIR/n$n/pid"
}

node_id() { # full id@addr of node N (its key exists once the server started)
  local end=$((SECONDS + 30))
  until g "$1" node id -q >/dev/null 2>&1; do
    node_pid "$1" >/dev/null || die "node $1 exited on start (log: $DIR/n$1/log)"
    [ "$SECONDS" -lt "$end" ] || die "node $1 has no id after 30 s (log: $DIR/n$1/log)"
    sleep 0.2
  done
  g "$1" node id -q 2>/dev/null
}

wait_rpc() { # node N answers the CLI
  retry 60 "node $1 RPC" g "$1" status
}

# A signed S3 request: s3 METHOD URL [FILE]; prints the body, fails on an
# HTTP error. curl signs it (SigV4) for region "garage".
s3() {
  local method=$1 url=$2 file=${3:-} sha
  local args=(-sS --fail-with-body --max-time 60 -X "$method"
    --aws-sigv4 "aws:amz:$REGION:s3" --user "$KEY_ID:$KEY_SECRET")
  if [ -n "$file" ]; then
    sha=$(sha256sum "$file" | awk '{print $1}')
    args+=(--data-binary "@$file")
  else
    sha=$(printf '' | sha256sum | awk '{print $1}')
  fi
  curl "${args[@]}" -H "x-amz-content-sha256: $sha" "$url"
}

curl_has_sigv4() {
  local help
  help=$(curl --help all 2>/dev/null) || return 1
  [[ "$help" == *--aws-sigv4* ]]
}

s3_ready() { # node N's S3 endpoint answers a signed listing of the bucket
  local url
  url="http://127.0.0.1:$(s3_port "$1")"
  if curl_has_sigv4; then
    s3 GET "$url/$BUCKET?list-type=2" >/dev/null
  else
    # Without SigV4 in curl, any HTTP answer shows the endpoint is up.
    curl -s -o /dev/null --max-time 5 "$url/"
  fi
}

endpoints() {
  local n out=""
  for n in $NODES; do out="$out http://127.0.0.1:$(s3_port "$n")"; done
  echo "${out# }"
}

exports() {
  cat <<EOF
export AWS_ACCESS_KEY_ID=$KEY_ID
export AWS_SECRET_ACCESS_KEY=$KEY_SECRET
export AWS_ENDPOINT_URL=http://127.0.0.1:$(s3_port 1)
export AWS_REGION=$REGION
export AWS_ALLOW_HTTP=true
export XFER_TEST_BUCKET=$BUCKET
export XFER_GARAGE_DIR=$DIR
export XFER_GARAGE_ENDPOINTS="$(endpoints)"
EOF
}

prepare_dir() {
  local n p
  for n in $NODES; do
    if node_pid "$n" >/dev/null; then
      die "a cluster already runs in $DIR; stop it first: scripts/garage.sh stop $DIR"
    fi
  done
  if [ -e "$DIR" ]; then
    # Remove only a leftover of ours (or an empty dir), never a user's data.
    if [ -f "$DIR/$MARKER" ] || [ -z "$(ls -A "$DIR")" ]; then
      rm -rf "$DIR"
    else
      die "$DIR exists and is not a cluster of this script; choose another DIR"
    fi
  fi
  for n in $NODES; do
    for p in $(rpc_port "$n") $(s3_port "$n"); do
      port_taken "$p" && die "port $p on 127.0.0.1 is taken; set GARAGE_PORT_BASE to another base (now $PORT_BASE)"
    done
  done
  mkdir -p "$DIR"
  echo "$PORT_BASE" >"$DIR/port_base"
}

cmd_start() {
  DIR=$(cluster_dir "${1:-}")
  require_garage
  prepare_dir
  # A start that fails halfway leaves no node behind; the logs' ends say why.
  trap 'start_failed' EXIT
  local secret n ids=()
  secret=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
  for n in $NODES; do
    write_config "$n" "$secret"
    spawn_node "$n"
  done
  say "3 nodes starting in $DIR (RPC $(rpc_port 1)-$(rpc_port 3), S3 $(s3_port 1)-$(s3_port 3))"
  for n in $NODES; do
    ids+=("$(node_id "$n")")
    echo "${ids[-1]%@*}" >"$DIR/n$n/id"
    wait_rpc "$n"
  done
  for n in 2 3; do
    retry 30 "connect node $n" g 1 node connect "${ids[n - 1]}"
  done
  g 1 layout assign -z dc1 -c 1G "${ids[@]%@*}" >/dev/null
  g 1 layout apply --version 1 >/dev/null
  # The first writes need a quorum under the new layout: retry until it holds.
  retry 60 "bucket create" g 1 bucket create "$BUCKET"
  retry 30 "key import" g 1 key import --yes -n xfer-test "$KEY_ID" "$KEY_SECRET"
  retry 30 "bucket allow" g 1 bucket allow --read --write --owner "$BUCKET" --key xfer-test
  for n in $NODES; do
    retry 60 "S3 on node $n" s3_ready "$n"
  done
  touch "$DIR/$MARKER"
  exports >"$DIR/$MARKER"
  trap - EXIT
  say "cluster up; S3 at $(endpoints), region $REGION, bucket $BUCKET"
  cat "$DIR/$MARKER"
}

start_failed() {
  local n
  for n in $NODES; do
    if [ -f "$DIR/n$n/log" ]; then
      say "node $n log, last lines:"
      tail -n 5 "$DIR/n$n/log" >&2
    fi
    stop_node "$n"
  done
  rm -rf "$DIR"
}

stop_node() { # SIGTERM, then SIGKILL after 10 s
  local n=$1 pid
  pid=$(node_pid "$n") || { rm -f "$DIR/n$n/pid"; return 0; }
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 100); do
    alive "$pid" || break
    sleep 0.1
  done
  if alive "$pid"; then
    say "node $n ignored SIGTERM for 10 s; killing it"
    kill -KILL "$pid" 2>/dev/null || true
    while alive "$pid"; do sleep 0.1; done
  fi
  rm -f "$DIR/n$n/pid"
}

cmd_stop() {
  DIR=$(cluster_dir "${1:-}")
  [ -d "$DIR" ] || { say "no cluster in $DIR"; return 0; }
  [ -f "$DIR/$MARKER" ] || [ -f "$DIR/port_base" ] ||
    die "$DIR is not a cluster of this script; not touching it"
  local n
  for n in $NODES; do stop_node "$n"; done
  rm -rf "$DIR"
  say "cluster in $DIR stopped and removed"
}

cmd_status() {
  DIR=$(cluster_dir "${1:-}")
  require_garage
  g "$(live_node)" status
}

check_node_arg() {
  case "${1:-}" in
    1 | 2 | 3) ;;
    *) die "node number must be 1, 2 or 3 (got '${1:-}')" ;;
  esac
  DIR=$(cluster_dir "${2:-}")
  [ -f "$DIR/n$1/garage.toml" ] || die "no cluster in $DIR (start one: scripts/garage.sh start)"
  load_ports "$DIR"
}

cmd_kill_node() {
  check_node_arg "$@"
  local n=$1 pid
  pid=$(node_pid "$n") || die "node $n is not running"
  kill -KILL "$pid"
  while alive "$pid"; do sleep 0.1; done
  rm -f "$DIR/n$n/pid"
  say "node $n (pid $pid) killed"
}

# Bring node N up and into the cluster: its peers are remembered in its
# metadata, but a connect from a live node makes sure.
join_node() {
  local n=$1 id other
  wait_rpc "$n"
  id=$(node_id "$n")
  for other in $NODES; do
    if [ "$other" != "$n" ] && node_pid "$other" >/dev/null; then
      retry 30 "connect node $n" g "$other" node connect "$id"
    fi
  done
  retry 30 "node $n to see every running node" node_sees_running "$n"
}

node_sees_running() { # node N counts as up at least as many nodes as run
  local out up running=0 other
  for other in $NODES; do
    if node_pid "$other" >/dev/null; then running=$((running + 1)); fi
  done
  out=$(g "$1" json-api GetClusterStatus 2>/dev/null) || return 1
  up=$(grep -o '"isUp": *true' <<<"$out" | wc -l)
  [ "$up" -ge "$running" ]
}

cmd_start_node() {
  check_node_arg "$@"
  local n=$1
  require_garage
  node_pid "$n" >/dev/null && die "node $n already runs"
  spawn_node "$n"
  join_node "$n"
  retry 60 "S3 on node $n" s3_ready "$n"
  say "node $n restarted on its data"
}

cmd_restart() {
  DIR=$(cluster_dir "${1:-}")
  [ -f "$DIR/n1/garage.toml" ] || die "no cluster in $DIR (start one: scripts/garage.sh start)"
  load_ports "$DIR"
  require_garage
  local n
  for n in $NODES; do stop_node "$n"; done
  # All at once: none can serve alone (a write needs 2 of 3).
  for n in $NODES; do spawn_node "$n"; done
  for n in $NODES; do join_node "$n"; done
  for n in $NODES; do retry 60 "S3 on node $n" s3_ready "$n"; done
  say "every node restarted on its data"
}

layout_version() {
  g "$1" layout show | awk -F': ' '/Current cluster layout version/ {print $2}'
}

# (Output captured first: `grep -q` closing the pipe early would fail the
# pipeline under pipefail.)
layout_stable() {
  local out
  out=$(g "$1" layout history 2>/dev/null) || return 1
  grep -q "stable state with a single live layout version" <<<"$out"
}

cluster_healthy() {
  local out
  out=$(g "$1" health 2>/dev/null) || return 1
  grep -qw HEALTHY <<<"$out"
}

node_stat() { # node_stat N LABEL: a number from node N's own `garage stats`
  local out
  out=$(g "$1" stats 2>/dev/null) || { echo unknown; return 0; }
  awk -F: -v l="$2" 'index($0, l) && !done {print $2 + 0; done = 1}' <<<"$out"
}

tables_match() { # nodes A and B hold as many objects, versions and block refs
  local a b
  a=$(g "$1" stats 2>/dev/null) || return 1
  b=$(g "$2" stats 2>/dev/null) || return 1
  a=$(awk '$1 == "object" || $1 == "version" || $1 == "block_ref" {print $1, $2}' <<<"$a")
  b=$(awk '$1 == "object" || $1 == "version" || $1 == "block_ref" {print $1, $2}' <<<"$b")
  [ -n "$a" ] && [ "$a" = "$b" ]
}

repair_done() { # node N's `repair blocks` scan has finished
  local out states
  out=$(g "$1" worker list 2>/dev/null) || return 1
  states=$(awk '/Block repair worker/ {print $2}' <<<"$out" | sort -u)
  [ "$states" = Done ]
}

resync_idle() { # node N's block resync workers have nothing due to copy
  local out states
  out=$(g "$1" worker list 2>/dev/null) || return 1
  states=$(awk '/Block resync worker/ {print $2}' <<<"$out" | sort -u)
  [ "$states" = Idle ]
}

# Wait until the rebuilt node $2 holds everything again, as seen from node
# $1: one layout version (its metadata synced), all nodes healthy, and its
# block copies done.
wait_rebuilt() {
  local via=$1 n=$2 v copying="" idle=0 end=$((SECONDS + 300))
  while [ "$SECONDS" -lt "$end" ]; do
    sleep 1
    if ! layout_stable "$via"; then
      # Only the dead old id's acknowledgement is skipped: the metadata
      # must still sync to the new node (no --allow-missing-data).
      v=$(layout_version "$via")
      g "$via" layout skip-dead-nodes --version "$v" >/dev/null 2>&1 || true
      continue
    fi
    cluster_healthy "$via" || continue
    # A stable layout can show before the new node's tables hold every
    # entry: compare them with a node that kept its disk.
    tables_match "$via" "$n" || continue
    if [ -z "$copying" ]; then
      # The new node's tables now list every block it must hold, but it
      # schedules each copy for 2 x rpc_timeout (10 min) later; clearing
      # the queue and rescanning copies them now.
      g "$n" repair --yes clear-resync-queue >/dev/null
      g "$n" repair --yes blocks >/dev/null
      copying=1
      continue
    fi
    if [ "$copying" = 1 ]; then
      repair_done "$n" || continue
      # The scan hands its blocks to the queue in batches up to 2 s late.
      sleep 3
      copying=2
    fi
    # Done when nothing due is left: twice in a row, its resync workers
    # idle and no block in error. Its queue may still hold items deferred
    # by the GC delay (10 min) after recent deletes or overwrites; waiting
    # for an empty queue timed out whenever the cluster had been written.
    if resync_idle "$n" && [ "$(node_stat "$n" "blocks with resync errors")" = 0 ]; then
      idle=$((idle + 1))
      [ "$idle" -lt 2 ] || return 0
    else
      idle=0
    fi
  done
  die "node $n not rebuilt after 300 s (scripts/garage.sh status; logs $DIR/n*/log)"
}

cmd_wipe_node() {
  check_node_arg "$@"
  local n=$1 old new via v
  require_garage
  old=$(cat "$DIR/n$n/id")
  if node_pid "$n" >/dev/null; then cmd_kill_node "$n" "$DIR"; fi
  rm -rf "$DIR/n$n/data" "$DIR/n$n/meta"
  mkdir -p "$DIR/n$n/data" "$DIR/n$n/meta"
  say "node $n: data and metadata deleted; starting it empty"
  spawn_node "$n"
  join_node "$n"
  new=$(node_id "$n")
  new=${new%@*}
  echo "$new" >"$DIR/n$n/id"
  via=""
  for v in $NODES; do
    if [ "$v" != "$n" ] && node_pid "$v" >/dev/null; then via=$v; break; fi
  done
  [ -n "$via" ] || die "node $n cannot be rebuilt: no other node runs"
  v=$(layout_version "$via")
  say "node $n: new id ${new:0:16} replaces ${old:0:16} in layout v$((v + 1))"
  # --replace takes several ids: it goes last, after the new id.
  g "$via" layout assign "$new" -z dc1 -c 1G --replace "$old" >/dev/null
  g "$via" layout apply --version $((v + 1)) >/dev/null
  # A full table sync now rather than at the next periodic one.
  g "$n" repair --yes tables >/dev/null
  wait_rebuilt "$via" "$n"
  retry 60 "S3 on node $n" s3_ready "$n"
  say "node $n rebuilt: layout v$((v + 1)) stable, cluster healthy, every block copied"
}

# ---- selftest ----

check() { # check DESCRIPTION CMD...: run, print ok/FAIL with the time taken
  local what=$1 t0=$SECONDS
  shift
  if "$@"; then
    echo "ok   $what ($((SECONDS - t0)) s)"
  else
    echo "FAIL $what"
    exit 1
  fi
}

get_equals() { # get_equals ENDPOINT KEY FILE: GET returns FILE's bytes
  local got
  got=$(mktemp)
  s3 GET "$1/$BUCKET/$2" >"$got" && cmp -s "$got" "$3"
  local rc=$?
  rm -f "$got"
  return $rc
}

get_missing() { # GET of KEY answers 404
  local code
  code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 60 \
    --aws-sigv4 "aws:amz:$REGION:s3" --user "$KEY_ID:$KEY_SECRET" \
    -H "x-amz-content-sha256: $(printf '' | sha256sum | awk '{print $1}')" "$1/$BUCKET/$2")
  [ "$code" = 404 ]
}

list_has() { # list_has ENDPOINT KEY...: the ListObjectsV2 answer names each KEY
  local out key
  out=$(s3 GET "$1/$BUCKET?list-type=2") || return 1
  shift
  for key in "$@"; do
    [[ "$out" == *"<Key>$key</Key>"* ]] || return 1
  done
}

start_into() { "$1" start "$DIR" >"$2"; }

stop_gone() { "$1" stop "$DIR" && [ ! -e "$DIR" ]; }

block_files() { find "$DIR/n$1/data" -type f | wc -l; }

same_blocks() { # node A and node B hold as many block files (replication 3)
  local a b
  a=$(block_files "$1")
  b=$(block_files "$2")
  echo "     node $1 holds $a block files, node $2 holds $b"
  [ "$a" -gt 0 ] && [ "$a" = "$b" ]
}

cmd_selftest() {
  curl_has_sigv4 || die "selftest needs curl with --aws-sigv4 (curl 7.75 or later)"
  require_garage
  # Its own ports and dir, so it never touches a cluster already running.
  export GARAGE_PORT_BASE=${GARAGE_PORT_BASE:-3940}
  PORT_BASE=$GARAGE_PORT_BASE
  local self e1 e2 e3
  self=$(cd "$(dirname "$0")" && pwd)/$(basename "$0")
  DIR=/var/tmp/xfer-garage-selftest-$$
  tmp=$(mktemp -d)
  # shellcheck disable=SC2064 # expanded now: the locals are gone at exit
  trap "$(printf '%q' "$self") stop $(printf '%q' "$DIR") || true; rm -rf $(printf '%q' "$tmp")" EXIT
  head -c 3145728 /dev/urandom >"$tmp/big"   # 3 MiB: several 1 MiB blocks
  echo "hello garage" >"$tmp/small"

  check "start: 3 nodes, layout, bucket, key" start_into "$self" "$tmp/env"
  # shellcheck disable=SC1091
  . "$tmp/env"
  read -r e1 e2 e3 <<<"$XFER_GARAGE_ENDPOINTS"
  echo "     $(grep -c '^export' "$tmp/env") export lines; endpoints $XFER_GARAGE_ENDPOINTS"

  check "PUT small on node 1" s3 PUT "$e1/$BUCKET/a/small" "$tmp/small"
  check "PUT 3 MiB on node 1" s3 PUT "$e1/$BUCKET/a/big" "$tmp/big"
  check "GET 3 MiB on node 2, same bytes" get_equals "$e2" a/big "$tmp/big"
  check "LIST on node 3 names a/small" list_has "$e3" a/small
  check "DELETE a/small on node 2" s3 DELETE "$e2/$BUCKET/a/small"
  check "GET a/small on node 1 now 404" get_missing "$e1" a/small

  check "kill -9 node 3" "$self" kill-node 3 "$DIR"
  check "2 of 3 up: PUT on node 1" s3 PUT "$e1/$BUCKET/b/big" "$tmp/big"
  check "2 of 3 up: GET on node 2, same bytes" get_equals "$e2" b/big "$tmp/big"
  check "restart node 3 on its data" "$self" start-node 3 "$DIR"
  check "GET b/big on node 3, same bytes" get_equals "$e3" b/big "$tmp/big"

  check "wipe node 2 and rebuild it" "$self" wipe-node 2 "$DIR"
  check "rebuilt node 2 holds every block" same_blocks 1 2
  check "kill -9 node 1 (left: rebuilt 2 and 3)" "$self" kill-node 1 "$DIR"
  check "GET a/big on rebuilt node 2, same bytes" get_equals "$e2" a/big "$tmp/big"
  check "GET b/big on rebuilt node 2, same bytes" get_equals "$e2" b/big "$tmp/big"
  check "LIST on node 2 names a/big and b/big" list_has "$e2" a/big b/big
  check "restart node 1" "$self" start-node 1 "$DIR"
  "$self" status "$DIR" >&2
  check "stop: nodes ended, dir removed" stop_gone "$self"
  trap 'rm -rf "$tmp"' EXIT
  echo "selftest passed"
}

main() {
  [[ "$PORT_BASE" =~ ^[0-9]+$ ]] && [ "$PORT_BASE" -ge 1024 ] && [ "$PORT_BASE" -le 65500 ] ||
    die "GARAGE_PORT_BASE must be a number from 1024 to 65500 (got '$PORT_BASE')"
  local cmd=${1:-}
  [ $# -gt 0 ] && shift
  case "$cmd" in
    install) cmd_install ;;
    installed) cmd_installed ;;
    start) cmd_start "$@" ;;
    stop) cmd_stop "$@" ;;
    status) cmd_status "$@" ;;
    kill-node) cmd_kill_node "$@" ;;
    start-node) cmd_start_node "$@" ;;
    restart) cmd_restart "$@" ;;
    wipe-node) cmd_wipe_node "$@" ;;
    selftest) cmd_selftest ;;
    *)
      sed -n '2,/^set -/p' "$0" | grep '^#' | sed 's/^# \{0,1\}//' >&2
      exit 2
      ;;
  esac
}

main "$@"
