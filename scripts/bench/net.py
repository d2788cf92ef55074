"""The benchmark's network: two namespaces joined by one veth pair, or by
an emulated WAN.

The client namespace holds `xfb-c0` (10.209.0.1), the server namespace
`xfb-s0` (10.209.0.2). Every byte a tool moves crosses that link, so the
device counters see TCP and UDP alike, headers, handshakes and retransmits
included.

`up()` joins them with a veth pair; a rate cap is a `tbf` qdisc on the
egress of both ends, so both directions are capped, with no added latency.

`up_wan(profile)` joins them through `xfer-wanlink` (scripts/bench/wanlink),
a router process that forwards IP packets between a TUN device in each
namespace with the profile's delay, random loss and rate (this kernel has no
netem). The devices keep the same names and addresses, so `counters()` still
reads the client's device: its tx bytes are the bytes leaving the sender,
before the link drops any. `router_stats()` gives the router's own counts.

XFB_NET=NAME (environment) names the namespaces NAME-c and NAME-s instead,
so two runs on one machine do not tear down each other's network.
"""
import json
import os
import select
import signal
import subprocess
import time

PREFIX = os.environ.get("XFB_NET", "xfb")
CLIENT_NS = f"{PREFIX}-c"
SERVER_NS = f"{PREFIX}-s"
CLIENT_DEV = f"{PREFIX}-c0"
SERVER_DEV = f"{PREFIX}-s0"
CLIENT_IP = "10.209.0.1"
SERVER_IP = "10.209.0.2"

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WANLINK = os.environ.get("XFER_WANLINK_BIN", os.path.join(ROOT, "target", "release", "xfer-wanlink"))
ROUTER_STATS = f"/run/xfer-wanlink-{PREFIX}.json"
ROUTER_PID = f"/run/xfer-wanlink-{PREFIX}.pid"
ROUTER_LOG = f"/run/xfer-wanlink-{PREFIX}.log"

# The WAN profiles: round-trip time added to the path (each direction gets
# half), independent loss per packet in each direction, and the rate of each
# direction in Mbit/s of IP bytes.
PROFILES = {
    "0ms-20mbit": dict(rtt_ms=0, loss=0.0, rate_mbit=20),
    "0ms-100mbit": dict(rtt_ms=0, loss=0.0, rate_mbit=100),
    "40ms-0.1pct-20mbit": dict(rtt_ms=40, loss=0.001, rate_mbit=20),
    "40ms-0.1pct-100mbit": dict(rtt_ms=40, loss=0.001, rate_mbit=100),
    "150ms-1pct-20mbit": dict(rtt_ms=150, loss=0.01, rate_mbit=20),
    "150ms-1pct-100mbit": dict(rtt_ms=150, loss=0.01, rate_mbit=100),
}

_router = None  # the Popen of the router this process started

def _ip(*args, check=True):
    return subprocess.run(["ip", *args], check=check, capture_output=True, text=True)


def down():
    """Stops the WAN router, if any, and deletes both namespaces."""
    _stop_router()
    for ns in (CLIENT_NS, SERVER_NS):
        _ip("netns", "del", ns, check=False)


def up():
    """Creates both namespaces afresh, uncapped."""
    down()
    _ip("netns", "add", CLIENT_NS)
    _ip("netns", "add", SERVER_NS)
    _ip("link", "add", CLIENT_DEV, "netns", CLIENT_NS, "type", "veth", "peer", "name", SERVER_DEV,
        "netns", SERVER_NS)
    for ns, dev, addr in ((CLIENT_NS, CLIENT_DEV, CLIENT_IP), (SERVER_NS, SERVER_DEV, SERVER_IP)):
        # IPv6 off: router solicitations would add stray bytes to the counters.
        subprocess.run(["ip", "netns", "exec", ns, "sysctl", "-q", "-w",
                        f"net.ipv6.conf.{dev}.disable_ipv6=1"], check=True)
        _ip("-n", ns, "addr", "add", f"{addr}/24", "dev", dev)
        _ip("-n", ns, "link", "set", dev, "up")
        _ip("-n", ns, "link", "set", "lo", "up")


def cap(rate):
    """Caps both directions at `rate` (a tc rate such as `100mbit`); None lifts the cap."""
    for ns, dev in ((CLIENT_NS, CLIENT_DEV), (SERVER_NS, SERVER_DEV)):
        subprocess.run(["tc", "-n", ns, "qdisc", "del", "dev", dev, "root"], capture_output=True)
        if rate:
            # A burst of 20 ms at the rate (at least 32 KiB) keeps tbf from
            # starving a sender between ticks; a 100 ms queue bounds the delay.
            burst = max(32 * 1024, rate_bits(rate) // 8 // 50)
            subprocess.run(["tc", "-n", ns, "qdisc", "add", "dev", dev, "root", "tbf", "rate", rate,
                            "burst", str(burst), "latency", "100ms"], check=True)


def rate_bits(rate):
    units = {"kbit": 10**3, "mbit": 10**6, "gbit": 10**9}
    for suffix, factor in units.items():
        if rate.endswith(suffix):
            return int(float(rate[: -len(suffix)]) * factor)
    raise ValueError(f"rate {rate!r}: use a number followed by kbit, mbit or gbit")


def counters():
    """(client→server bytes, server→client bytes, packets c→s, packets s→c)."""
    out = _ip("-n", CLIENT_NS, "-s", "-j", "link", "show", "dev", CLIENT_DEV).stdout
    stats = json.loads(out)[0]["stats64"]
    return stats["tx"]["bytes"], stats["rx"]["bytes"], stats["tx"]["packets"], stats["rx"]["packets"]


def rx_bytes_in_ns_of(pid, dev=SERVER_DEV):
    """Bytes `dev` has received, read in the network namespace of process `pid`.

    A plain procfs read (no subprocess, no signal to the router), cheap
    enough to sample every 100 ms during a measured push. Over the WAN the
    server's device receives exactly what the router delivers to it.
    """
    with open(f"/proc/{pid}/net/dev") as f:
        for line in f:
            name, _, fields = line.partition(":")
            if name.strip() == dev:
                return int(fields.split()[0])
    raise RuntimeError(f"no device {dev} in the network namespace of process {pid}")


def in_client(argv):
    return ["ip", "netns", "exec", CLIENT_NS, *argv]


def in_server(argv):
    return ["ip", "netns", "exec", SERVER_NS, *argv]


def listening(port, udp=False):
    """Whether something in the server namespace listens on `port`."""
    proto = "-Hlnu" if udp else "-Hlnt"
    out = subprocess.run(in_server(["ss", proto, f"sport = :{port}"]), capture_output=True, text=True).stdout
    return bool(out.strip())


def up_wan(profile_name, seed=1, binary=None):
    """Creates both namespaces afresh, joined by the WAN router with `profile_name`.

    `seed` picks the loss pattern; `binary` defaults to
    target/release/xfer-wanlink, built if missing.
    """
    global _router
    if profile_name not in PROFILES:
        raise ValueError(f"WAN profile {profile_name!r}: known profiles are {', '.join(PROFILES)}")
    profile = PROFILES[profile_name]
    binary = binary or WANLINK
    if not os.path.exists(binary):
        subprocess.run(["cargo", "build", "--release", "--quiet", "-p", "xfer-wanlink"], cwd=ROOT, check=True)
    down()
    _ip("netns", "add", CLIENT_NS)
    _ip("netns", "add", SERVER_NS)
    for path in (ROUTER_STATS, ROUTER_STATS + ".tmp"):
        if os.path.exists(path):
            os.unlink(path)
    argv = [binary, "--ns-a", CLIENT_NS, "--dev-a", CLIENT_DEV, "--ns-b", SERVER_NS, "--dev-b", SERVER_DEV,
            "--rtt-ms", str(profile["rtt_ms"]), "--loss", str(profile["loss"]),
            "--rate-mbit", str(profile["rate_mbit"]), "--seed", str(seed), "--stats", ROUTER_STATS]
    with open(ROUTER_LOG, "wb") as log:
        # Its own session: a Ctrl-C meant for the suite must not stop the
        # link under a push; down() stops it.
        _router = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=log, start_new_session=True)
    with open(ROUTER_PID, "w") as f:
        f.write(str(_router.pid))
    ready, _, _ = select.select([_router.stdout], [], [], 10)
    line = _router.stdout.readline().decode(errors="replace").strip() if ready else ""
    if line != "ready":
        _stop_router()
        with open(ROUTER_LOG, errors="replace") as f:
            raise RuntimeError(f"xfer-wanlink did not start: {f.read().strip()[-400:]} ({' '.join(argv)})")
    for ns, dev, addr, peer in ((CLIENT_NS, CLIENT_DEV, CLIENT_IP, SERVER_IP),
                                (SERVER_NS, SERVER_DEV, SERVER_IP, CLIENT_IP)):
        subprocess.run(["ip", "netns", "exec", ns, "sysctl", "-q", "-w",
                        f"net.ipv6.conf.{dev}.disable_ipv6=1"], check=True)
        _ip("-n", ns, "addr", "add", addr, "peer", peer, "dev", dev)
        # A TUN device drops what does not fit its queue of txqueuelen
        # packets before the router sees it; a long queue keeps a sender's
        # burst from being lost there, uncounted.
        _ip("-n", ns, "link", "set", dev, "txqueuelen", "10000", "up")
        _ip("-n", ns, "link", "set", "lo", "up")


def router_stats():
    """The router's counters now: {"a_to_b": {...}, "b_to_a": {...}, "params": ..., "seq": n}.

    a_to_b is client to server. Per direction: packets_in, bytes_in (what
    the sending side put on the link), dropped_loss(_bytes),
    dropped_queue(_bytes), packets_out, bytes_out (what arrived),
    write_errors, max_packet. Bytes are IP packet bytes.
    """
    stats = _read_stats()
    if _router is not None and _router.poll() is None:
        # Ask for a fresh write rather than take one up to 200 ms old.
        old = stats["seq"] if stats else -1
        _router.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:
            stats = _read_stats()
            if stats and stats["seq"] > old:
                return stats
            time.sleep(0.002)
    if stats is None:
        raise RuntimeError(f"no WAN router stats in {ROUTER_STATS}: call up_wan() first")
    return stats


def _read_stats():
    try:
        with open(ROUTER_STATS) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _stop_router():
    """Stops the router this process started, or one a crashed run left behind."""
    global _router
    pids = []
    if _router is not None:
        pids.append(_router.pid)
    try:
        with open(ROUTER_PID) as f:
            pid = int(f.read().strip())
        # Only a process that still is xfer-wanlink, not a reused pid.
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            if b"xfer-wanlink" in f.read() and pid not in pids:
                pids.append(pid)
    except (OSError, ValueError):
        pass
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    if _router is not None:
        try:
            _router.wait(5)
        except subprocess.TimeoutExpired:
            _router.kill()
            _router.wait()
        _router.stdout.close()
        _router = None
    for pid in pids:
        deadline = time.monotonic() + 5
        while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
            time.sleep(0.02)
    if os.path.exists(ROUTER_PID):
        os.unlink(ROUTER_PID)
