"""The benchmark's network: two namespaces joined by one veth pair.

The client namespace holds `xfb-c0` (10.209.0.1), the server namespace
`xfb-s0` (10.209.0.2). Every byte a tool moves crosses that pair, so the
veth counters see TCP and UDP alike, headers, handshakes and retransmits
included. A rate cap is a `tbf` qdisc on the egress of both ends, so both
directions are capped. There is no added latency: this kernel has no netem.
"""
import json
import subprocess

CLIENT_NS = "xfb-c"
SERVER_NS = "xfb-s"
CLIENT_DEV = "xfb-c0"
SERVER_DEV = "xfb-s0"
CLIENT_IP = "10.209.0.1"
SERVER_IP = "10.209.0.2"


def _ip(*args, check=True):
    return subprocess.run(["ip", *args], check=check, capture_output=True, text=True)


def down():
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


def in_client(argv):
    return ["ip", "netns", "exec", CLIENT_NS, *argv]


def in_server(argv):
    return ["ip", "netns", "exec", SERVER_NS, *argv]


def listening(port, udp=False):
    """Whether something in the server namespace listens on `port`."""
    proto = "-Hlnu" if udp else "-Hlnt"
    out = subprocess.run(in_server(["ss", proto, f"sport = :{port}"]), capture_output=True, text=True).stdout
    return bool(out.strip())
