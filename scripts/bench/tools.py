"""The tools the suite compares, one class each.

A tool gets a `Run` (its private directories: `src`, `dest`, `client`,
`server`, `scratch`) and says how to start its server, how to push, and
where the pushed tree can be read back for the correctness check. Snapshot
tools (restic, borg) are read back by a restore into `scratch`, from the
repository's files on the server's side (no server, no link).

Every tool is configured as its documentation recommends for replication or
offsite backup, with the compression a careful user would pick.
"""
import json
import os
import shlex
import subprocess

import net

SSH_PORT = 2222
XFER_PORT = 7878
RSYNC_PORT = 873
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
XFER = os.environ.get("XFER_BIN", os.path.join(ROOT, "target", "release", "xfer"))
PASSWORD = "xfer-bench-not-a-secret"


def _out(argv, **kw):
    return subprocess.run(argv, check=True, capture_output=True, text=True, **kw).stdout.strip()


class Tool:
    name = ""
    server_port = None
    server_udp = False
    peer = True

    def prepare(self, run):
        """Unmeasured one-off setup before the first phase (keys, repositories)."""

    def server(self, run):
        """argv of the server, run in the server namespace (None: sshd)."""
        raise NotImplementedError

    def push(self, run, phase):
        """(argv, env, cwd) of the measured push, run in the client namespace."""
        raise NotImplementedError

    def result(self, run, phase):
        """The directory that must now equal the source."""
        return run.dest

    def version(self):
        return ""

    def report(self, stdout):
        """What the tool says of the push that is worth keeping (xfer's JSON summary)."""
        return None

    def pull(self, run, target):
        """(argv, env, cwd) that copies the pushed tree back into the empty `target`, over the link
        (entries.py; only the tools it runs have one)."""
        raise NotImplementedError

    def pulled(self, run, target):
        """Where the tree landed after `pull(run, target)`."""
        return target


class Sshd:
    """A key-only sshd on port 2222 in the server namespace, for the ssh tools."""

    def prepare(self, run):
        keys = os.path.join(run.server, "ssh")
        os.makedirs(keys, exist_ok=True)
        host_key = os.path.join(keys, "host_ed25519")
        client_key = os.path.join(run.client, "id_ed25519")
        for key in (host_key, client_key):
            if not os.path.exists(key):
                _out(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", key])
        with open(client_key + ".pub") as pub, open(os.path.join(keys, "authorized_keys"), "w") as auth:
            auth.write(pub.read())
        os.makedirs("/run/sshd", exist_ok=True)
        config = os.path.join(keys, "sshd_config")
        with open(config, "w") as f:
            f.write(f"""Port {SSH_PORT}
ListenAddress {net.SERVER_IP}
HostKey {host_key}
AuthorizedKeysFile {keys}/authorized_keys
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
PidFile none
Subsystem sftp internal-sftp
""")
        run.state["sshd_config"] = config
        run.state["ssh"] = ["ssh", "-p", str(SSH_PORT), "-i", client_key, "-o", "BatchMode=yes",
                            "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                            "-o", "LogLevel=ERROR"]

    def server(self, run):
        return ["/usr/sbin/sshd", "-D", "-e", "-f", run.state["sshd_config"]]


class Rsync(Tool):
    """rsync daemon (rsync://, plain TCP), `rsync -a --delete`."""
    name = "rsync"
    server_port = RSYNC_PORT
    flags = []

    def prepare(self, run):
        conf = os.path.join(run.server, "rsyncd.conf")
        with open(conf, "w") as f:
            f.write(f"uid = root\ngid = root\nuse chroot = no\nmunge symlinks = no\n[bench]\npath = {run.dest}\nread only = no\n")
        run.state["rsyncd_conf"] = conf

    def server(self, run):
        return ["rsync", "--daemon", "--no-detach", f"--config={run.state['rsyncd_conf']}",
                f"--address={net.SERVER_IP}", f"--port={RSYNC_PORT}",
                f"--log-file={os.path.join(run.server, 'rsyncd.log')}"]

    def push(self, run, phase):
        return ["rsync", "-a", "--delete", *self.flags, run.src + "/",
                f"rsync://{net.SERVER_IP}:{RSYNC_PORT}/bench/"], None, None

    def pull(self, run, target):
        return ["rsync", "-a", *self.flags, f"rsync://{net.SERVER_IP}:{RSYNC_PORT}/bench/", target + "/"], None, None

    def version(self):
        return _out(["rsync", "--version"]).splitlines()[0]


class RsyncZ(Rsync):
    """The rsync daemon with zstd compression of literal data."""
    name = "rsync-z"
    flags = ["--compress", "--compress-choice=zstd"]


class RsyncSsh(Sshd, Tool):
    """`rsync -a --delete -e ssh`, the usual way to rsync to another host."""
    name = "rsync-ssh"
    server_port = SSH_PORT

    def push(self, run, phase):
        return ["rsync", "-a", "--delete", "-e", shlex.join(run.state["ssh"]), run.src + "/",
                f"root@{net.SERVER_IP}:{run.dest}/"], None, None

    def version(self):
        return _out(["rsync", "--version"]).splitlines()[0] + ", " + \
            subprocess.run(["ssh", "-V"], capture_output=True, text=True).stderr.strip()


class Restic(Sshd, Tool):
    """restic to an sftp repository (format 2, `--compression auto`)."""
    name = "restic"
    server_port = SSH_PORT

    def _env(self, run):
        sftp = shlex.join(run.state["ssh"] + [f"root@{net.SERVER_IP}", "-s", "sftp"])
        env = dict(os.environ, RESTIC_PASSWORD=PASSWORD, RESTIC_CACHE_DIR=os.path.join(run.client, "restic-cache"),
                   RESTIC_REPOSITORY=f"sftp:root@{net.SERVER_IP}:{run.dest}/repo")
        return env, ["-o", f"sftp.command={sftp}"]

    def prepare(self, run):
        Sshd.prepare(self, run)
        run.state["restic_prepare"] = True

    def after_server_start(self, run):
        # The repository is made once, with the server up, and is not measured.
        if run.state.pop("restic_prepare", False):
            env, opts = self._env(run)
            subprocess.run(net.in_client(["restic", *opts, "init", "--repository-version", "2"]), env=env,
                           check=True, capture_output=True)

    def push(self, run, phase):
        env, opts = self._env(run)
        return ["restic", *opts, "backup", "--quiet", "--host", "bench", "--compression", "auto", run.src], env, None

    def result(self, run, phase):
        # Restored from the repository's files directly, not over the link:
        # on a slow link a restore would cost as much as the push.
        env, _ = self._env(run)
        env["RESTIC_REPOSITORY"] = f"{run.dest}/repo"
        target = os.path.join(run.scratch, phase)
        subprocess.run(["restic", "restore", "latest", "--target", target], env=env, check=True, capture_output=True)
        return target + run.src

    def pull(self, run, target):
        # Over sftp, unlike result(): this restore is the measured pull.
        env, opts = self._env(run)
        return ["restic", *opts, "restore", "latest", "--target", target], env, None

    def pulled(self, run, target):
        return target + run.src

    def version(self):
        return _out(["restic", "version"])


class Borg(Sshd, Tool):
    """borg to an ssh repository (`repokey-blake2`, `--compression zstd,3`)."""
    name = "borg"
    server_port = SSH_PORT

    def _env(self, run):
        return dict(os.environ, BORG_PASSPHRASE=PASSWORD, BORG_BASE_DIR=os.path.join(run.client, "borg"),
                    BORG_RSH=shlex.join(run.state["ssh"][:1] + run.state["ssh"][3:]),
                    BORG_REPO=f"ssh://root@{net.SERVER_IP}:{SSH_PORT}{run.dest}/repo",
                    BORG_RELOCATED_REPO_ACCESS_IS_OK="yes")

    def prepare(self, run):
        Sshd.prepare(self, run)
        run.state["borg_prepare"] = True

    def after_server_start(self, run):
        if run.state.pop("borg_prepare", False):
            subprocess.run(net.in_client(["borg", "init", "--encryption=repokey-blake2"]), env=self._env(run),
                           check=True, capture_output=True)

    def push(self, run, phase):
        return ["borg", "create", "--compression", "zstd,3", f"::{phase}", "."], self._env(run), run.src

    def result(self, run, phase):
        # From the repository's files directly, as restic's (see there).
        target = os.path.join(run.scratch, phase)
        os.makedirs(target)
        env = dict(self._env(run), BORG_REPO=f"{run.dest}/repo")
        subprocess.run(["borg", "extract", f"::{phase}"], env=env, cwd=target, check=True, capture_output=True)
        return target

    def version(self):
        return _out(["borg", "--version"])


class Xfer(Tool):
    """`xfer serve` and `xfer push --delete` over QUIC, both keys pinned."""
    name = "xfer"
    server_port = XFER_PORT
    server_udp = True
    peer = False

    def prepare(self, run):
        run.state["client_cfg"] = os.path.join(run.client, "xfer-config")
        run.state["server_cfg"] = os.path.join(run.server, "xfer-config")
        run.state["client_fp"] = _out([XFER, "id", "--config-dir", run.state["client_cfg"]])
        run.state["server_fp"] = _out([XFER, "id", "--config-dir", run.state["server_cfg"]])

    def server(self, run):
        return [XFER, "serve", "-q", "--root", run.dest, "--listen", f"{net.SERVER_IP}:{XFER_PORT}",
                "--allow", run.state["client_fp"], "--config-dir", run.state["server_cfg"]]

    def push(self, run, phase):
        # The tree goes to ROOT/tree, so the server's ROOT/.xfer state stays
        # out of the comparison.
        return [XFER, "push", "-q", "--delete", "--json", "--state-dir", os.path.join(run.client, "xfer-state"),
                "--config-dir", run.state["client_cfg"], "--server-fingerprint", run.state["server_fp"],
                run.src, f"xfer://{net.SERVER_IP}:{XFER_PORT}/tree"], None, None

    def result(self, run, phase):
        return os.path.join(run.dest, "tree")

    def pull(self, run, target):
        return [XFER, "pull", "-q", "--json", "--state-dir", os.path.join(run.client, "xfer-pull-state"),
                "--config-dir", run.state["client_cfg"], "--server-fingerprint", run.state["server_fp"],
                f"xfer://{net.SERVER_IP}:{XFER_PORT}/tree", target], None, None

    def report(self, stdout):
        try:
            return json.loads(stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            return None

    def version(self):
        return _out([XFER, "--version"])


TOOLS = {tool.name: tool for tool in (Xfer(), Rsync(), RsyncZ(), RsyncSsh(), Restic(), Borg())}
PEERS = [name for name, tool in TOOLS.items() if tool.peer]
