#!/usr/bin/env python3
"""Checks the emulated WAN (net.up_wan) against its profiles; prints a markdown table.

    wan-verify.py [--seconds 20] [--seed 1] [--python] [PROFILE...]     (root; all profiles by default)

For each profile: `ping -c 20 -i 0.2` client to server (min/avg RTT must be
within 10% + 1 ms of the profile's RTT: an idle link adds only the delay),
then a TCP bulk transfer client to server for --seconds, once with the
kernel's BBR and once with CUBIC (iperf3 -C if installed, else a Python
sender and receiver that set TCP_CONGESTION), and the loss the router
measured against the configured probability. Exits 1 if a check fails.
"""
import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import net  # noqa: E402

PORT = 5201
MTU = 1500


def ping(count=20):
    out = subprocess.run(net.in_client(["ping", "-n", "-q", "-c", str(count), "-i", "0.2", net.SERVER_IP]),
                         capture_output=True, text=True).stdout
    match = re.search(r"= ([\d.]+)/([\d.]+)/([\d.]+)/", out)
    if not match:
        raise RuntimeError(f"ping printed no RTT summary: {out.strip()[-300:]}")
    return float(match.group(1)), float(match.group(2))


def wait_listening(proc, what):
    deadline = time.monotonic() + 10
    while not net.listening(PORT):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not start listening on {PORT}")
        time.sleep(0.05)


def bulk_iperf3(seconds, cc):
    server = subprocess.Popen(net.in_server(["iperf3", "-s", "-1", "-B", net.SERVER_IP, "-p", str(PORT)]),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_listening(server, "iperf3 -s")
        out = subprocess.run(net.in_client(["iperf3", "-c", net.SERVER_IP, "-p", str(PORT), "-t", str(seconds),
                                            "-C", cc, "--json"]), capture_output=True, text=True, check=True).stdout
        result = json.loads(out)
        return result["end"]["sum_received"]["bits_per_second"] / 1e6
    finally:
        server.wait(10)


def bulk_python(seconds, cc):
    server = subprocess.Popen(net.in_server([sys.executable, os.path.abspath(__file__), "--receive"]),
                              stdout=subprocess.PIPE, text=True)
    try:
        wait_listening(server, "the Python receiver")
        subprocess.run(net.in_client([sys.executable, os.path.abspath(__file__), "--send", str(seconds), cc]),
                       check=True)
        received, elapsed = server.stdout.read().split()
        return int(received) * 8 / float(elapsed) / 1e6
    finally:
        server.wait(10)


def receive():
    """Receiver (server namespace): prints bytes received and seconds from first byte to end."""
    with socket.create_server((net.SERVER_IP, PORT)) as listener:
        conn, _ = listener.accept()
        with conn:
            total, start = 0, None
            while chunk := conn.recv(1 << 20):
                start = start or time.monotonic()
                total += len(chunk)
            print(total, time.monotonic() - (start or time.monotonic()) or 1e-9)


def send(seconds, cc):
    """Sender (client namespace): writes zeros for `seconds` with congestion control `cc`."""
    with socket.create_connection((net.SERVER_IP, PORT)) as conn:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, cc.encode())
        block = bytes(1 << 20)
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            conn.sendall(block)


def delta(after, before, key):
    return {k: after[key][k] - before[key][k] for k in after[key] if k != "max_packet"}


def tun_drops():
    """Packets the client's TUN dropped before the router could read them."""
    out = subprocess.run(["ip", "-n", net.CLIENT_NS, "-s", "-j", "link", "show", "dev", net.CLIENT_DEV],
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out)[0]["stats64"]["tx"]["dropped"]


def verify(name, seconds, seed, bulk):
    profile = net.PROFILES[name]
    rtt, rate = profile["rtt_ms"], profile["rate_mbit"]
    net.up_wan(name, seed=seed)
    try:
        ping_min, ping_avg = ping()
        tolerance = 0.1 * rtt + 1
        row = dict(profile=name, ping_min=ping_min, ping_avg=ping_avg,
                   ping_ok=abs(ping_min - rtt) <= tolerance and abs(ping_avg - rtt) <= tolerance)
        before = net.router_stats()
        for cc in ("bbr", "cubic"):
            row[cc] = bulk(seconds, cc)
        after = net.router_stats()
        c2s, s2c = delta(after, before, "a_to_b"), delta(after, before, "b_to_a")
        row["loss_c2s"] = c2s["dropped_loss"] / max(1, c2s["packets_in"])
        row["loss_s2c"] = s2c["dropped_loss"] / max(1, s2c["packets_in"])
        row["packets_c2s"] = c2s["packets_in"]
        row["queue_drops"] = c2s["dropped_queue"]
        row["max_packet"] = max(after["a_to_b"]["max_packet"], after["b_to_a"]["max_packet"])
        row["tun_drops"] = tun_drops()
        row["write_errors"] = c2s["write_errors"] + s2c["write_errors"]
        return row
    finally:
        net.down()


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--receive":
        return receive()
    if len(sys.argv) > 1 and sys.argv[1] == "--send":
        return send(float(sys.argv[2]), sys.argv[3])
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("profiles", nargs="*", default=list(net.PROFILES))
    parser.add_argument("--seconds", type=int, default=20, help="length of each TCP bulk transfer")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--python", action="store_true", help="Python sockets even if iperf3 is installed")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("wan-verify.py: run as root (it creates network namespaces)")
    unknown = [p for p in args.profiles if p not in net.PROFILES]
    if unknown:
        sys.exit(f"wan-verify.py: unknown profiles {unknown}; known: {', '.join(net.PROFILES)}")
    bulk, tool = (bulk_iperf3, "iperf3") if shutil.which("iperf3") and not args.python else (bulk_python, "python sockets")
    print(f"TCP bulk: {tool}, {args.seconds} s per congestion control, client to server; seed {args.seed}\n")
    print("| profile | ping min / avg ms | TCP BBR Mbit/s | TCP CUBIC Mbit/s | loss c→s / s→c (set) "
          "| queue drops c→s | max packet | |")
    print("|---|---|---|---|---|---|---|---|")
    ok = True
    for name in args.profiles:
        p = net.PROFILES[name]
        r = verify(name, args.seconds, args.seed, bulk)
        problems = []
        if not r["ping_ok"]:
            problems.append(f"ping RTT not within 10% + 1 ms of {p['rtt_ms']} ms")
        if r["max_packet"] > MTU:
            problems.append(f"a {r['max_packet']}-byte packet reached the router (GSO/GRO?)")
        if r["tun_drops"] or r["write_errors"]:
            problems.append(f"{r['tun_drops']} TUN drops, {r['write_errors']} write errors")
        ok &= not problems
        print(f"| {name} | {r['ping_min']:.2f} / {r['ping_avg']:.2f} | {r['bbr']:.1f} ({r['bbr'] / p['rate_mbit']:.0%}) "
              f"| {r['cubic']:.1f} ({r['cubic'] / p['rate_mbit']:.0%}) "
              f"| {r['loss_c2s']:.3%} / {r['loss_s2c']:.3%} ({p['loss']:.1%}; {r['packets_c2s']} pkts) "
              f"| {r['queue_drops']} | {r['max_packet']} | {'ok' if not problems else '; '.join(problems)} |",
              flush=True)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
