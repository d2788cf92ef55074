"""xfer adapter for the bench harness in ../shared/bench (run.py with
XFER_BENCH_TOOLS pointing here): `xfer serve` in the server namespace,
`xfer push --delete` over QUIC from the client namespace, both identities
pinned. The tree goes to ROOT/tree so the server's ROOT/.xfer state stays out
of the correctness check.
"""
import os
import subprocess

PORT = 7878
HERE = os.path.dirname(os.path.abspath(__file__))
XFER = os.environ.get("XFER_BIN", os.path.join(HERE, "..", "..", "target", "release", "xfer"))


def _fingerprint(config_dir):
    out = subprocess.run([XFER, "id", "--config-dir", config_dir], check=True, capture_output=True, text=True)
    return out.stdout.strip()


def start_server(ctx):
    ctx.state["client_cfg"] = os.path.join(ctx.tmp, "xfer-client-cfg")
    server_cfg = os.path.join(ctx.tmp, "xfer-server-cfg")
    ctx.state["client_fp"] = _fingerprint(ctx.state["client_cfg"])
    ctx.state["server_fp"] = _fingerprint(server_cfg)
    ctx.spawn_server([XFER, "serve", "--root", ctx.dest, "--listen", f"{ctx.server_ip}:{PORT}",
                      "--allow", ctx.state["client_fp"], "--config-dir", server_cfg], wait_udp=PORT)


def push(ctx, src):
    return ctx.client([XFER, "push", "--delete", "--json",
                       "--state-dir", os.path.join(ctx.tmp, "xfer-client-state"),
                       "--config-dir", ctx.state["client_cfg"],
                       "--server-fingerprint", ctx.state["server_fp"],
                       src, f"xfer://{ctx.server_ip}:{PORT}/tree"])


def restore(ctx, scratch):
    return os.path.join(ctx.dest, "tree")


def version():
    return subprocess.run([XFER, "--version"], capture_output=True, text=True).stdout.strip()
