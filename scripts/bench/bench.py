#!/usr/bin/env python3
"""Runs tools x workloads x phases over the benchmark network; one JSON line per phase.

    bench.py --data DIR --out FILE [--rate RATE | --profile NAME] [--tools a,b]
             [--workloads x,y] [--seed-initial] [--work DIR] [--push-timeout S]

Each (tool, workload) gets fresh directories and runs three phases in order:
`initial` (push v1 into an empty destination), `delta` (push v2 over v1) and
`noop` (push v2 again). Before each phase the source is staged from the
generated data with a local `rsync -a --delete`, so unchanged files keep
their inode and ctime, as in a live directory. Each phase starts the tool's
server, runs the push in the client namespace, stops the server, then checks
the destination (or a restore of the newest snapshot) against the source:
paths, types, bytes, symlink targets and permission bits.

With `--seed-initial` the initial phase runs uncapped and is marked
`seeded`: the capped rates then measure delta and noop without paying for a
slow full copy of every workload.

With `--profile NAME` the namespaces are joined by the emulated WAN
(net.PROFILES: delay, loss and rate in a router) instead of the veth pair,
and no phase is seeded: the first push over the WAN is the point. Each
phase's line then also holds the router's counters over the push, per
direction (`router`: a_to_b is client to server), `link_use` (bytes that
arrived at the server / (rate x wall)) and `egress_ratio` (bytes that left
the client / bytes that arrived). The first push of the tools in
LINK_SAMPLED also gets `link_series`: the bytes delivered to the server,
read from its device every 100 ms, for the link-use chart.

Measures, per phase: wire bytes and packets each way on the veth pair (or
the client's end of the WAN), wall time of the push, CPU seconds and peak
RSS of each side (getrusage of the push and of the server, including the
processes they reaped), the bytes stored on the server, and correctness.
"""
import argparse
import datetime
import json
import os
import resource
import shutil
import signal
import socket
import stat
import subprocess
import sys
import threading
import time

import net
import tools
import workloads

HERE = os.path.dirname(os.path.abspath(__file__))
PHASES = [("initial", "v1"), ("delta", "v2"), ("noop", "v2")]
HUGE = "huge-file"


class Run:
    """One tool on one workload: its private directories and state."""

    def __init__(self, work):
        self.base = os.path.join(work, "run")
        shutil.rmtree(self.base, ignore_errors=True)
        for name in ("src", "dest", "client", "server", "scratch"):
            path = os.path.join(self.base, name)
            os.makedirs(path)
            setattr(self, name, path)
        self.state = {}

    def remove(self):
        shutil.rmtree(self.base, ignore_errors=True)


def stage(data, workload, version, src, staged):
    """Makes `src` hold the workload's `version`, touching only what differs.

    `staged` is the version `src` holds already, if any.
    """
    if workload == HUGE:
        image = os.path.join(src, "huge.img")
        if version == staged:
            # Rewriting the edits would change the file's ctime: not a no-op.
            return
        if version == "v1":
            subprocess.run(["cp", "-p", os.path.join(data, HUGE, "v1", "huge.img"), image], check=True)
        else:
            subprocess.run([sys.executable, os.path.join(HERE, "workloads.py"), "--apply-edits",
                            os.path.join(data, HUGE, "v2-edits.json"), image], check=True)
        return
    subprocess.run(["rsync", "-a", "--delete", os.path.join(data, workload, version) + "/", src + "/"], check=True)


def compare(expected, actual, limit=10):
    """Differences between two trees (paths, types, bytes, link targets, mode bits)."""
    problems = []

    def note(msg):
        if len(problems) < limit:
            problems.append(msg)

    def walk(rel):
        a_dir, b_dir = os.path.join(expected, rel), os.path.join(actual, rel)
        try:
            a_names, b_names = set(os.listdir(a_dir)), set(os.listdir(b_dir))
        except OSError as err:
            note(f"{rel or '.'}: {err}")
            return
        for name in sorted(a_names ^ b_names):
            note(f"{os.path.join(rel, name)}: only in {'source' if name in a_names else 'destination'}")
        for name in sorted(a_names & b_names):
            path = os.path.join(rel, name)
            a, b = os.lstat(os.path.join(expected, path)), os.lstat(os.path.join(actual, path))
            if stat.S_IFMT(a.st_mode) != stat.S_IFMT(b.st_mode):
                note(f"{path}: type differs")
            elif stat.S_ISLNK(a.st_mode):
                if os.readlink(os.path.join(expected, path)) != os.readlink(os.path.join(actual, path)):
                    note(f"{path}: symlink target differs")
            else:
                if stat.S_IMODE(a.st_mode) != stat.S_IMODE(b.st_mode):
                    note(f"{path}: mode {oct(stat.S_IMODE(b.st_mode))}, expected {oct(stat.S_IMODE(a.st_mode))}")
                if stat.S_ISDIR(a.st_mode):
                    walk(path)
                elif a.st_size != b.st_size:
                    note(f"{path}: {b.st_size} bytes, expected {a.st_size}")
                elif not same_bytes(os.path.join(expected, path), os.path.join(actual, path)):
                    note(f"{path}: contents differ")

    walk("")
    return problems


def same_bytes(a, b):
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            x, y = fa.read(1 << 20), fb.read(1 << 20)
            if x != y:
                return False
            if not x:
                return True


def tree_size(path):
    files = total = 0
    for root, dirs, names in os.walk(path):
        for name in names:
            st = os.lstat(os.path.join(root, name))
            files += 1
            total += st.st_size if stat.S_ISREG(st.st_mode) else 0
    return files, total


def disk_usage(path):
    out = subprocess.run(["du", "-sb", path], capture_output=True, text=True).stdout.split()
    return int(out[0]) if out else None


TIME_FORMAT = "%e %U %S %M"


def timed(argv, usage_file):
    """argv under GNU time, which writes the usage of argv and all it reaped.

    The usage cannot come from our own wait4: a child spawned by Python
    execs from Python's address space, and Linux carries that resident size
    into the child's peak RSS. GNU time is small, so its child starts clean.
    """
    return ["/usr/bin/time", "-f", TIME_FORMAT, "-o", usage_file, *argv]


def read_usage(usage_file):
    """(wall s, cpu s, peak rss KiB) from a `timed` run."""
    with open(usage_file) as f:
        last = f.read().strip().splitlines()[-1].split()
    return float(last[0]), float(last[1]) + float(last[2]), int(last[3])


class TimedOut(Exception):
    pass


def run_measured(argv, log_prefix, env=None, cwd=None, timeout=None):
    """Runs argv to completion: (exit status, wall s, cpu s, peak rss KiB, stdout, stderr).

    Past `timeout` seconds the whole process group is killed and TimedOut raised.
    """
    with open(log_prefix + ".out", "w+b") as out, open(log_prefix + ".err", "w+b") as err:
        # Its own session, so a timeout can kill the tool's children too (ssh, rsync's forks).
        proc = subprocess.Popen(timed(argv, log_prefix + ".usage"), env=env, cwd=cwd, stdout=out, stderr=err,
                                start_new_session=True)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise TimedOut(f"push killed after {timeout} s")
        except BaseException:
            # A Ctrl-C no longer reaches the push in its own session.
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise
        wall, cpu, rss = read_usage(log_prefix + ".usage")
        out.seek(0)
        err.seek(0)
        return (proc.returncode, wall, cpu, rss, out.read().decode(errors="replace"),
                err.read().decode(errors="replace"))


def settled_router(profile):
    """The router's counters once nothing is in flight in either direction.

    The wait of a round trip lets the answers to a closing connection's last
    packets come through, so they count to the push that caused them, and
    nothing started before the push (server start, restic's init) does.
    """
    time.sleep(0.1 + profile["rtt_ms"] / 1000)
    deadline = time.monotonic() + 5
    while True:
        stats = net.router_stats()
        if all(in_flight(stats[d]) == 0 for d in ("a_to_b", "b_to_a")) or time.monotonic() > deadline:
            return stats
        time.sleep(0.05)


def in_flight(d):
    return d["packets_in"] - d["dropped_loss"] - d["dropped_queue"] - d.get("write_errors", 0) - d["packets_out"]


def router_delta(before, after):
    """Per direction, every numeric counter's growth over the push (maxima as read after)."""
    out = {}
    for direction in ("a_to_b", "b_to_a"):
        a, b = before[direction], after[direction]
        out[direction] = {k: (v if k.startswith("max") else v - a.get(k, 0)) for k, v in b.items()
                          if isinstance(v, (int, float)) and not isinstance(v, bool)}
    return out


def wan_figures(profile, router, wall):
    """link_use and egress_ratio of one push from its router deltas."""
    c2s = router["a_to_b"]
    arrived, left = c2s["bytes_out"], c2s["bytes_in"]
    return dict(link_use=round(arrived * 8 / (profile["rate_mbit"] * 1e6 * max(wall, 1e-3)), 4),
                egress_ratio=round(left / arrived, 4) if arrived else None)


# Tools whose first push over a WAN profile is sampled for the link-use chart.
LINK_SAMPLED = ("xfer", "rsync-ssh")
LINK_SAMPLE_S = 0.1


class LinkSampler(threading.Thread):
    """Bytes delivered to the server, every LINK_SAMPLE_S during one push.

    Read from the server's device in its namespace (through the server's
    process), which counts what the router delivers: IP bytes, as link_use
    counts them. `series()` gives seconds since the push started and the
    bytes delivered client to server since then.
    """

    def __init__(self, server_pid):
        super().__init__(daemon=True)
        self.pid = server_pid
        self.stopping = threading.Event()
        self.base = net.rx_bytes_in_ns_of(self.pid)
        self.start_time = time.monotonic()
        self.t, self.delivered = [0.0], [0]

    def run(self):
        while not self.stopping.wait(LINK_SAMPLE_S):
            try:
                delivered = net.rx_bytes_in_ns_of(self.pid)
            except (OSError, RuntimeError):
                continue
            self.t.append(round(time.monotonic() - self.start_time, 3))
            self.delivered.append(delivered - self.base)

    def series(self):
        self.stopping.set()
        self.join()
        return dict(interval_s=LINK_SAMPLE_S, t_s=self.t, delivered_bytes=self.delivered)


class Server:
    """A tool's server in the server namespace; `stop()` gives its CPU and peak RSS."""

    def __init__(self, tool, run):
        argv = tool.server(run)
        self.usage_file = os.path.join(run.server, f"{tool.name}-server.usage")
        self.log = open(os.path.join(run.server, f"{tool.name}-server.log"), "ab")
        self.proc = subprocess.Popen(timed(net.in_server(argv), self.usage_file), stdout=self.log, stderr=self.log)
        deadline = time.monotonic() + 10
        while not net.listening(tool.server_port, tool.server_udp):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{tool.name} server did not start: {' '.join(argv)} (log in {run.server})")
            time.sleep(0.05)

    def pid(self):
        """The server process itself (GNU time's child), inside the server namespace."""
        with open(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children") as f:
            return int(f.read().split()[0])

    def stop(self):
        """Stops the server: (cpu s, peak rss KiB)."""
        # Let per-connection children finish and be reaped, so their usage counts.
        time.sleep(0.3)
        # The server is GNU time's child; time itself must live to report.
        with open(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children") as f:
            for child in f.read().split():
                os.kill(int(child), signal.SIGTERM)
        self.proc.wait()
        self.log.close()
        _, cpu, rss = read_usage(self.usage_file)
        return cpu, rss


def run_tool(tool, workload, args, out, context):
    run = Run(args.work)
    try:
        tool.prepare(run)
        for phase, version in PHASES:
            seeded = args.seed_initial and phase == "initial"
            if not args.profile:
                net.cap(None if seeded else args.rate)
            stage(args.data, workload, version, run.src, run.state.get("staged"))
            run.state["staged"] = version
            files, size = tree_size(run.src)
            server = Server(tool, run)
            if hasattr(tool, "after_server_start"):
                tool.after_server_start(run)
            argv, env, cwd = tool.push(run, phase)
            profile = net.PROFILES[args.profile] if args.profile else None
            router_before = settled_router(profile) if profile else None
            sampler = LinkSampler(server.pid()) if profile and phase == "initial" and tool.name in LINK_SAMPLED \
                else None
            before = net.counters()
            if sampler:
                sampler.start()
            try:
                status, wall, cpu, rss, stdout, err = run_measured(
                    net.in_client(argv), os.path.join(run.client, phase), env=env, cwd=cwd,
                    timeout=args.push_timeout)
            except TimedOut as error:
                status, wall, cpu, rss, stdout, err = "timeout", args.push_timeout, 0.0, 0, "", str(error)
            finally:
                series = sampler.series() if sampler else None
            after = net.counters()
            router_after = settled_router(profile) if profile else None
            server_cpu, server_rss = server.stop()
            problems = [] if status == 0 else [err] if status == "timeout" else \
                [f"push exited {status}: {err.strip()[-400:]}"]
            if status == 0:
                try:
                    result = tool.result(run, phase)
                    problems = compare(run.src, result)
                except subprocess.CalledProcessError as error:
                    problems = [f"reading the result back failed: {' '.join(error.cmd[:2])}: "
                                f"{(error.stderr or b'').decode(errors='replace').strip()[-400:]}"]
                except OSError as error:
                    problems = [f"reading the result back failed: {error}"]
            c2s, s2c = after[0] - before[0], after[1] - before[1]
            record = dict(context, tool=tool.name, workload=workload, phase=phase, seeded=seeded,
                          wire_c2s_bytes=c2s, wire_s2c_bytes=s2c, wire_total_bytes=c2s + s2c,
                          packets_c2s=after[2] - before[2], packets_s2c=after[3] - before[3],
                          wall_s=round(wall, 3), client_cpu_s=round(cpu, 3), server_cpu_s=round(server_cpu, 3),
                          client_peak_rss_kib=rss, server_peak_rss_kib=server_rss,
                          dest_bytes=disk_usage(run.dest), src_files=files, src_bytes=size,
                          correct=not problems, problems=problems, tool_version=tool.version(),
                          report=tool.report(stdout),
                          time=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
            wan = ""
            if profile:
                record["router"] = router_delta(router_before, router_after)
                record.update(wan_figures(profile, record["router"], wall))
                if series:
                    record["link_series"] = series
                sent = record["router"]["a_to_b"]["bytes_in"]
                wan = f"  sent {sent / 1e6:.2f} MB  link {record['link_use']:.0%}  egress {record['egress_ratio']}"
            out.write(json.dumps(record) + "\n")
            out.flush()
            print(f"{workload:15} {tool.name:9} {phase:7} {'(seeded) ' if seeded else ''}"
                  f"wire {(c2s + s2c) / 1e6:10.3f} MB  wall {wall:7.2f} s  cpu {cpu:6.2f}+{server_cpu:6.2f} s  "
                  f"rss {rss // 1024}/{server_rss // 1024} MiB{wan}  {'ok' if not problems else 'WRONG: ' + problems[0]}",
                  flush=True)
            if problems:
                return False
            shutil.rmtree(run.scratch, ignore_errors=True)
            os.makedirs(run.scratch)
        return True
    finally:
        run.remove()


# Per phase, besides the push: staging, server start and stop, waiting for
# the router to settle, the correctness check and restic's or borg's restore.
PHASE_OVERHEAD_S = 3.0
# Share of the link a push is assumed to use, and round trips of its handshakes.
ESTIMATE_LINK_USE = 0.9
ESTIMATE_RTTS = 10
# Without an earlier result, a delta is guessed to move this share of the
# files v2 changed (the tools send differences, restic and borg whole chunks).
ESTIMATE_DELTA_SHARE = 0.3


def changed_bytes(tree):
    """Bytes of the files a workload's v2 changed (they carry the T2 mtime)."""
    total = 0
    for root, _, names in os.walk(tree):
        for name in names:
            st = os.lstat(os.path.join(root, name))
            if stat.S_ISREG(st.st_mode) and int(st.st_mtime) != workloads.T1:
                total += st.st_size
    return total


def estimate_wan(profiles, data, workload_names, tool_names, results):
    """Seconds the WAN runs of these profiles x workloads x tools should take.

    Bytes per push come from the newest earlier result of the same tool,
    workload and phase in `results`, else from the workload's size (v1 for
    the initial phase, a share of v2's changed files for the delta).
    """
    seen = {}
    if os.path.exists(results):
        with open(results) as f:
            for line in f:
                try:
                    r = json.loads(line)
                    if r["correct"]:
                        seen[(r["tool"], r["workload"], r["phase"])] = r["wire_c2s_bytes"]
                except (ValueError, KeyError):
                    continue
    total = 0.0
    for workload in workload_names:
        with open(os.path.join(data, workload, ".done")) as f:
            v1 = json.load(f)["v1"]["bytes"]
        v2 = os.path.join(data, workload, "v2")
        delta = ESTIMATE_DELTA_SHARE * changed_bytes(v2) if os.path.isdir(v2) else 0
        fallback = {"initial": v1, "delta": delta, "noop": 0}
        for name in profiles:
            spec = net.PROFILES[name]
            for tool in tool_names:
                for phase, _ in PHASES:
                    size = seen.get((tool, workload, phase), fallback[phase])
                    total += size * 8 / (spec["rate_mbit"] * 1e6 * ESTIMATE_LINK_USE) + \
                        ESTIMATE_RTTS * spec["rtt_ms"] / 1000 + PHASE_OVERHEAD_S
    return total


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", required=True, help="generated workloads (workloads.py --data)")
    parser.add_argument("--out", required=True, help="JSON lines appended here")
    parser.add_argument("--work", default="/var/tmp/xfer-bench/work")
    link = parser.add_mutually_exclusive_group()
    link.add_argument("--rate", default=None, help="tbf rate such as 100mbit; none: uncapped")
    link.add_argument("--profile", default=None,
                      help="emulated WAN profile instead of the veth pair (net.PROFILES, e.g. 40ms-0.1pct-20mbit)")
    parser.add_argument("--wan-seed", type=int, default=1, help="seed of the WAN router's losses")
    parser.add_argument("--push-timeout", type=float, default=None,
                        help="seconds after which a push is killed and its phase marked wrong")
    parser.add_argument("--tools", default=",".join(tools.TOOLS))
    parser.add_argument("--workloads", required=True)
    parser.add_argument("--seed-initial", action="store_true")
    parser.add_argument("--run-id", default=datetime.datetime.now().strftime("%Y%m%d-%H%M%S"))
    parser.add_argument("--estimate", metavar="PROFILES",
                        help="only print the seconds the WAN runs of these profiles (space-separated) would take, "
                             "from earlier results in --out")
    args = parser.parse_args()
    if args.estimate is not None:
        profiles = args.estimate.split()
        unknown = [p for p in profiles if p not in getattr(net, "PROFILES", {})]
        if unknown:
            sys.exit(f"bench.py: unknown profiles {unknown}; known: {', '.join(getattr(net, 'PROFILES', {}))}")
        print(round(estimate_wan(profiles, args.data, args.workloads.split(","), args.tools.split(","), args.out)))
        return
    if os.geteuid() != 0:
        sys.exit("bench.py: run as root (it creates network namespaces)")
    unknown = [t for t in args.tools.split(",") if t not in tools.TOOLS]
    if unknown:
        sys.exit(f"bench.py: unknown tools {unknown}; known: {', '.join(tools.TOOLS)}")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if args.profile:
        profiles = getattr(net, "PROFILES", {})
        if args.profile not in profiles:
            sys.exit(f"bench.py: unknown profile {args.profile!r}; known: {', '.join(profiles) or 'none (no WAN in net.py)'}")
        if args.seed_initial:
            sys.exit("bench.py: --seed-initial does not go with --profile: the first push over the WAN is measured")
    context = dict(run_id=args.run_id, rate=args.rate or "unlimited", host=socket.gethostname())
    if args.profile:
        spec = net.PROFILES[args.profile]
        # `rate` names the link's rate; `profile` marks the line as a WAN run.
        context.update(rate=f"{spec['rate_mbit']:g}mbit", profile=args.profile, rtt_ms=spec["rtt_ms"],
                       loss=spec["loss"], wan_seed=args.wan_seed)
    ok = True
    try:
        if args.profile:
            net.up_wan(args.profile, seed=args.wan_seed)
        else:
            net.up()
        # TCP peers' throughput under loss depends on it; the report names it.
        context["tcp_cc"] = subprocess.run(net.in_client(["sysctl", "-n", "net.ipv4.tcp_congestion_control"]),
                                           capture_output=True, text=True).stdout.strip()
        with open(args.out, "a") as out:
            for workload in args.workloads.split(","):
                if not os.path.exists(os.path.join(args.data, workload, ".done")):
                    sys.exit(f"bench.py: workload {workload} not generated in {args.data}; run workloads.py first")
                for name in args.tools.split(","):
                    ok &= run_tool(tools.TOOLS[name], workload, args, out, context)
    finally:
        net.down()
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
