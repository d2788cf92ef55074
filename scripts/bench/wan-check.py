#!/usr/bin/env python3
"""The slow tier's WAN check: one first push of xfer over the emulated WAN.

    wan-check.py [--profile 40ms-0.1pct-20mbit] [--mib 24] [--seed 14] [--work DIR]   (root)

Brings up net.up_wan(PROFILE), writes one file of MIB MiB of seeded random
bytes (incompressible; the same bytes on every machine), starts `xfer serve`
in the server namespace and runs one `xfer push` from the client namespace
(as the benchmark suite does: tools.Xfer), then asserts, printing the figures:

  link use     = bytes delivered client->server * 8 / (rate * push wall) >= 0.90
  egress ratio = bytes leaving the sender / bytes delivered             <= 1.05
  the file arrived intact.

Bytes are IP bytes counted by the router around the push (a_to_b bytes_in:
what the sender put on the link; bytes_out: what crossed it). Exits 1 if a
check fails, 2 if it could not run.
"""
import argparse
import os
import random
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402
import net  # noqa: E402
import tools  # noqa: E402

MIN_LINK_USE = 0.90
MAX_EGRESS = 1.05
# A push that takes longer than this is stopped: at 0.9 of 20 Mbit, 24 MiB
# takes 11 s; far longer means the check has failed anyway.
PUSH_TIMEOUT_S = 300


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--profile", default="40ms-0.1pct-20mbit", choices=list(net.PROFILES))
    parser.add_argument("--mib", type=int, default=24, help="size of the file pushed")
    parser.add_argument("--seed", type=int, default=14, help="seed of the file's bytes and of the loss pattern")
    parser.add_argument("--work", default="/var/tmp/xfer-wan-check")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("wan-check.py: run as root (it creates network namespaces and TUN devices)")
    if not os.path.exists(tools.XFER):
        sys.exit(f"wan-check.py: {tools.XFER} missing: build it with `cargo build --release --bin xfer`")
    rate_bps = net.PROFILES[args.profile]["rate_mbit"] * 1e6
    os.makedirs(args.work, exist_ok=True)
    run = bench.Run(args.work)
    tool = tools.Xfer()
    try:
        with open(os.path.join(run.src, "random.bin"), "wb") as f:
            f.write(random.Random(args.seed).randbytes(args.mib << 20))
        net.up_wan(args.profile, seed=args.seed)
        tool.prepare(run)
        server = bench.Server(tool, run)
        argv, env, cwd = tool.push(run, "initial")
        before = net.router_stats()
        status, wall, cpu, rss, _, err = bench.run_measured(
            net.in_client(["timeout", str(PUSH_TIMEOUT_S), *argv]), os.path.join(run.client, "initial"), env=env,
            cwd=cwd)
        after = net.router_stats()
        server.stop()
        problems = [] if status == 0 else [f"push exited {status}"
                                           f"{' (timed out)' if status == 124 else ''}: {err.strip()[-400:]}"]
        if status == 0:
            problems += bench.compare(run.src, tool.result(run, "initial"))
    finally:
        net.down()
        run.remove()
    c2s = {k: after["a_to_b"][k] - before["a_to_b"][k] for k in after["a_to_b"] if k != "max_packet"}
    s2c = {k: after["b_to_a"][k] - before["b_to_a"][k] for k in after["b_to_a"] if k != "max_packet"}
    link_use = c2s["bytes_out"] * 8 / (rate_bps * wall)
    egress = c2s["bytes_in"] / max(1, c2s["bytes_out"])
    print(f"wan-check: profile {args.profile}, {args.mib} MiB of random bytes, push wall {wall:.2f} s, "
          f"client cpu {cpu:.2f} s, peak rss {rss // 1024} MiB")
    print(f"wan-check: client->server sent {c2s['bytes_in'] / 1e6:.3f} MB in {c2s['packets_in']} packets, "
          f"delivered {c2s['bytes_out'] / 1e6:.3f} MB; dropped {c2s['dropped_loss']} by loss, "
          f"{c2s['dropped_queue']} by the queue; server->client {s2c['bytes_in'] / 1e6:.3f} MB")
    print(f"wan-check: goodput {(args.mib << 20) * 8 / wall / 1e6:.2f} Mbit/s of file data, "
          f"link {rate_bps / 1e6:.0f} Mbit/s")
    checks = [
        (f"link use {link_use:.3f} >= {MIN_LINK_USE}", link_use >= MIN_LINK_USE),
        (f"egress ratio {egress:.3f} <= {MAX_EGRESS}", egress <= MAX_EGRESS),
        (f"max packet {max(after['a_to_b']['max_packet'], after['b_to_a']['max_packet'])} <= 1500",
         max(after["a_to_b"]["max_packet"], after["b_to_a"]["max_packet"]) <= 1500),
        ("file arrived intact" if not problems else f"file NOT intact: {problems[0]}", not problems),
    ]
    for text, ok in checks:
        print(f"wan-check: {'ok  ' if ok else 'FAIL'} {text}")
    sys.exit(0 if all(ok for _, ok in checks) else 1)


if __name__ == "__main__":
    main()
