//! Faults under `xfer serve --store` (separate `xfer` processes on
//! loopback): a store node killed with SIGKILL in the middle of a push, and,
//! as ignored `garage_*` tests on the real 3-node Garage cluster that
//! `scripts/garage.sh start` exports (XFER_GARAGE_DIR, AWS_*,
//! XFER_TEST_BUCKET), a Garage node killed during a push, every node
//! restarted between pushes and during one, and a node's disk wiped and
//! rebuilt.
//!
//! Each ends the same way: every snapshot that committed is still listed
//! and restores byte-exact (`pull --at`, trees compared); a snapshot the
//! faulted push left is partial or exact, and a partial one holds only
//! files whole as the push's source or the snapshot before had them (never
//! one claiming what was not stored); the next push completes.
//!
//! A faulted push must end within a deadline: it completes, or fails with
//! an error in its JSON report. Timings go to stderr (`--nocapture`).

use std::collections::{HashMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::util::{assert_same_tree, materialize, read_tree, rel, seeded, Model, Node};

/// QUIC idle timeout every process offers: a client gives up on a killed
/// node this long after its last packet (60 s in production).
const IDLE_MS: &str = "3000";

/// Longest any one push, pull or listing may run: a fault must end in an
/// answer, never a hang. object_store gives up on a request after at most
/// 3 minutes of retries.
const DEADLINE: Duration = Duration::from_secs(420);

/// What the faulted push is slowed to, so that a fault 2 s in hits it
/// mid-way (its delta is about 6.5 MiB).
const SLOW: &str = "1M";

/// How long the faulted push runs before the fault.
const FAULT_AFTER: Duration = Duration::from_secs(2);

fn xfer() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_xfer"));
    cmd.env("XFER_TEST_IDLE_TIMEOUT_MS", IDLE_MS).env_remove("XFER_CRASH_AT").env_remove("XFER_CRASH_TRACE");
    cmd
}

/// A child process, killed (by its id) and reaped if the test ends early.
struct Proc(Option<Child>);

impl Proc {
    fn child(&mut self) -> &mut Child {
        self.0.as_mut().expect("process already reaped")
    }

    /// Waits for the exit; past `DEADLINE` the process is killed and the
    /// test fails (a hang is a defect).
    fn wait(&mut self, what: &str) -> ExitStatus {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child().try_wait().unwrap() {
                return status;
            }
            if started.elapsed() > DEADLINE {
                let _ = self.child().kill();
                panic!("{what}: still running after {DEADLINE:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn is_running(&mut self) -> bool {
        self.child().try_wait().unwrap().is_none()
    }

    /// SIGKILL, as `kill -9`, and reaped.
    fn kill9(&mut self) {
        let child = self.child();
        child.kill().unwrap();
        let status = child.wait().unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(9), "{status}");
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// One `xfer serve --store` process: its own port, config dir (identity),
/// cache and state dirs and log.
struct StoreNode {
    proc: Proc,
    addr: String,
    fingerprint: String,
}

/// The tree the client pushes at version `k` (1, 2, 3...), about 8 MiB:
/// eight 256 KiB files of which version k rewrites the first 2(k-1), forty
/// small files of which it has deleted the first 5(k-1), and a directory
/// of twelve new 512 KiB files per version (the previous version's goes).
fn version(k: u64) -> Model {
    let mtime = |v: u64| 1_600_000_000 + v as i64 * 1000;
    let mut m = Model::new();
    let file = |data, v| Node::File { data, mode: 0o644, mtime: mtime(v) };
    m.insert(rel(b"a"), Node::Dir { mode: 0o755, mtime: mtime(k) });
    for i in 0..8u64 {
        let v = if i < 2 * (k - 1) { k } else { 1 };
        m.insert(rel(format!("a/f{i}").as_bytes()), file(seeded(256 << 10, 1000 * v + i), v));
    }
    m.insert(rel(b"b"), Node::Dir { mode: 0o750, mtime: mtime(k) });
    for i in (5 * (k - 1))..40 {
        m.insert(rel(format!("b/s{i:02}").as_bytes()), file(seeded(2000 + 100 * i as usize, 500 + i), 1));
    }
    let new = format!("n{k}");
    m.insert(rel(new.as_bytes()), Node::Dir { mode: 0o755, mtime: mtime(k) });
    for j in 0..12u64 {
        m.insert(rel(format!("{new}/g{j:02}").as_bytes()), file(seeded(512 << 10, 50_000 * k + j), k));
    }
    m.insert(rel(b"link"), Node::Symlink { target: format!("n{k}/g00").into_bytes(), mtime: mtime(k) });
    m
}

/// What a snapshot must restore to.
#[derive(Clone, Debug)]
enum Expect {
    /// Exactly this tree (a push that committed).
    Exact(Model),
    /// A push that a fault cut, from `old` (the tree's latest snapshot
    /// when it began) to `new`: whole, it is `new`; partial, each of its
    /// files is whole as `new` or `old` had it at that path.
    Cut { old: Model, new: Model },
}

/// One store, one client, the snapshots seen so far and what each must
/// restore to.
struct Fixture {
    tmp: TempDir,
    store: String,
    client_cfg: PathBuf,
    client_fp: String,
    nodes: usize,
    pulls: usize,
    snapshots: Vec<(String, Expect)>,
}

impl Fixture {
    /// `store` is a URL; `None` gives a `file://` store in the fixture's dir.
    fn new(store: Option<String>) -> Fixture {
        let tmp = TempDir::new().unwrap();
        let client_cfg = tmp.path().join("client-cfg");
        let id = xfer().args(["id", "--config-dir"]).arg(&client_cfg).output().unwrap();
        assert!(id.status.success(), "{}", String::from_utf8_lossy(&id.stderr));
        let client_fp = String::from_utf8(id.stdout).unwrap().trim().to_string();
        let store = store.unwrap_or_else(|| format!("file://{}/store", tmp.path().display()));
        Fixture { tmp, store, client_cfg, client_fp, nodes: 0, pulls: 0, snapshots: Vec::new() }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }

    /// A new store node on a port of its own, with `env` added.
    fn node(&mut self, env: &[(&str, &str)]) -> StoreNode {
        self.nodes += 1;
        let dir = self.path(&format!("node{}", self.nodes));
        fs::create_dir_all(&dir).unwrap();
        let log = dir.join("log");
        let mut cmd = xfer();
        cmd.args(["serve", "--store", &self.store, "--listen", "127.0.0.1:0", "--allow", &self.client_fp])
            .arg("--config-dir")
            .arg(dir.join("cfg"))
            .arg("--audit-log")
            .arg(dir.join("audit.jsonl"))
            .env("XDG_CACHE_HOME", dir.join("cache"))
            .env("XDG_STATE_HOME", dir.join("state"))
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).unwrap());
        let mut proc = Proc(Some(cmd.spawn().unwrap()));
        // "xfer: serving the store URL (no mirror tree) on ADDR as FINGERPRINT"
        let started = Instant::now();
        loop {
            let text = fs::read_to_string(&log).unwrap_or_default();
            if let Some(line) = text.lines().find(|l| l.starts_with("xfer: serving")) {
                let words: Vec<&str> = line.split_whitespace().collect();
                let n = words.len();
                assert!(n >= 4 && words[n - 2] == "as", "unexpected first line: {line}");
                return StoreNode { proc, addr: words[n - 3].to_string(), fingerprint: words[n - 1].to_string() };
            }
            assert!(proc.is_running(), "the store node exited on start: {text}");
            assert!(started.elapsed() < Duration::from_secs(60), "the store node did not start: {text}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn url(node: &StoreNode) -> String {
        format!("xfer://{}/site", node.addr)
    }

    /// A client command against `node`.
    fn client(&self, node: &StoreNode, verb: &str) -> Command {
        let mut cmd = xfer();
        cmd.args([verb, "--config-dir"])
            .arg(&self.client_cfg)
            .args(["--server-fingerprint", &node.fingerprint, "--state-dir"])
            .arg(self.path("client-state"));
        cmd
    }

    /// Makes the source tree `model`.
    fn source(&self, model: &Model) {
        let src = self.path("src");
        if src.exists() {
            fs::remove_dir_all(&src).unwrap();
        }
        fs::create_dir(&src).unwrap();
        materialize(model, &src);
    }

    /// Starts a push of the source through `node`, its JSON report to
    /// `push.out`, its log to `push.err`.
    fn start_push(&self, node: &StoreNode, bwlimit: Option<&str>) -> Proc {
        let mut cmd = self.client(node, "push");
        cmd.args(["--json", "--delete", "--busy-wait", "0"]);
        if let Some(rate) = bwlimit {
            cmd.args(["--bwlimit", rate]);
        }
        cmd.arg(self.path("src"))
            .arg(Self::url(node))
            .stdout(fs::File::create(self.path("push.out")).unwrap())
            .stderr(fs::File::create(self.path("push.err")).unwrap());
        Proc(Some(cmd.spawn().unwrap()))
    }

    /// How a finished push ended: `Ok` if it completed, else the error
    /// its report gives. A failure must come with a clear error.
    fn push_outcome(&self, status: ExitStatus) -> Result<serde_json::Value, String> {
        let out = fs::read(self.path("push.out")).unwrap();
        let err = fs::read_to_string(self.path("push.err")).unwrap();
        let report: serde_json::Value =
            serde_json::from_slice(&out).unwrap_or_else(|e| panic!("push ({status}) left no JSON report ({e}): {err}"));
        if status.success() {
            return Ok(report);
        }
        let error = report["error"].as_str().map(str::to_string).or_else(|| {
            let failed = report["failed"].as_array().filter(|f| !f.is_empty())?;
            Some(format!("{} entries failed: {failed:?}", failed.len()))
        });
        match error {
            Some(e) if !e.trim().is_empty() => Err(e),
            _ => panic!("push failed ({status}) without saying why: {report} {err}"),
        }
    }

    /// Pushes `model` through `node` to its end; it must complete and
    /// leave exactly one new snapshot, which restores to `model`.
    fn push_ok(&mut self, node: &StoreNode, model: &Model) -> serde_json::Value {
        self.source(model);
        let started = Instant::now();
        let status = self.start_push(node, None).wait("push");
        let report = self.push_outcome(status).unwrap_or_else(|e| panic!("push failed: {e}"));
        eprintln!("push completed in {:.1} s: {} bytes sent", started.elapsed().as_secs_f64(), report["bytes_sent"]);
        let new = self.new_snapshots(node);
        assert_eq!(new.len(), 1, "one push, one snapshot: {new:?}");
        assert!(!new[0].1, "a completed push left a partial snapshot");
        self.snapshots.push((new[0].0.clone(), Expect::Exact(model.clone())));
        report
    }

    /// Pushes `new` through `node`, slowed, and runs `fault` 2 s in, while
    /// the push runs; the push then completes or fails with a clear error
    /// (its error returned).
    fn faulted_push(
        &mut self,
        node: &mut StoreNode,
        new: &Model,
        fault: impl FnOnce(&mut StoreNode),
    ) -> Result<(), String> {
        self.source(new);
        let started = Instant::now();
        let mut push = self.start_push(node, Some(SLOW));
        std::thread::sleep(FAULT_AFTER);
        assert!(push.is_running(), "the push ended before the fault: slow it down further");
        fault(node);
        let status = push.wait("the faulted push");
        let outcome = self.push_outcome(status);
        eprintln!(
            "faulted push ended after {:.1} s: {}",
            started.elapsed().as_secs_f64(),
            match &outcome {
                Ok(report) => format!("completed, {} bytes sent", report["bytes_sent"]),
                Err(e) => format!("failed: {e}"),
            }
        );
        outcome.map(|_| ())
    }

    /// Records the snapshots a faulted push left, listed through `node`.
    fn record_cut(&mut self, node: &StoreNode, old: &Model, new: &Model) {
        let left = self.new_snapshots(node);
        eprintln!(
            "the faulted push left {} snapshot(s), partial: {:?}",
            left.len(),
            left.iter().map(|s| s.1).collect::<Vec<_>>()
        );
        assert!(left.len() <= 1, "one push, at most one snapshot: {left:?}");
        for (id, _) in left {
            self.snapshots.push((id, Expect::Cut { old: old.clone(), new: new.clone() }));
        }
    }

    /// The tree's snapshots as `node` lists them: (id, partial), oldest first.
    fn list(&self, node: &StoreNode) -> Vec<(String, bool)> {
        let mut cmd = self.client(node, "snapshots");
        cmd.arg("--json").arg(Self::url(node)).stdout(Stdio::piped()).stderr(Stdio::piped());
        let out = run(cmd, "snapshots");
        let records: Vec<serde_json::Value> = serde_json::from_slice(&out).unwrap();
        records.iter().map(|r| (r["id"].as_str().unwrap().to_string(), r["partial"].as_bool().unwrap())).collect()
    }

    /// Snapshots listed that were not seen before.
    fn new_snapshots(&self, node: &StoreNode) -> Vec<(String, bool)> {
        let seen: HashSet<&String> = self.snapshots.iter().map(|(id, _)| id).collect();
        self.list(node).into_iter().filter(|(id, _)| !seen.contains(id)).collect()
    }

    /// Restores snapshot `id` through `node` into a new directory.
    fn pull_at(&mut self, node: &StoreNode, id: &str) -> Model {
        self.pulls += 1;
        let into = self.path(&format!("pulled{}", self.pulls));
        let mut cmd = self.client(node, "pull");
        cmd.args(["-q", "--at", id]).arg(Self::url(node)).arg(&into).stdout(Stdio::piped()).stderr(Stdio::piped());
        run(cmd, &format!("pull --at {id}"));
        let tree = read_tree(&into);
        fs::remove_dir_all(&into).unwrap();
        tree
    }

    /// Every snapshot seen is still listed, and each restores as it must;
    /// none is listed that was not seen.
    fn verify(&mut self, node: &StoreNode) {
        let started = Instant::now();
        let listed: HashMap<String, bool> = self.list(node).into_iter().collect();
        let seen: HashSet<&String> = self.snapshots.iter().map(|(id, _)| id).collect();
        let unknown: Vec<_> = listed.keys().filter(|id| !seen.contains(id)).collect();
        assert!(unknown.is_empty(), "snapshots from nowhere: {unknown:?}");
        for (id, expect) in self.snapshots.clone() {
            let Some(&partial) = listed.get(&id) else { panic!("snapshot {id} lost; listed: {listed:?}") };
            let pulled = self.pull_at(node, &id);
            match (&expect, partial) {
                (Expect::Exact(model), false) => assert_same_tree(&pulled, model),
                (Expect::Exact(_), true) => panic!("the committed snapshot {id} became partial"),
                (Expect::Cut { new, .. }, false) => assert_same_tree(&pulled, new),
                (Expect::Cut { old, new }, true) => assert_whole_files_of(&pulled, old, new, &id),
            }
        }
        eprintln!(
            "{} snapshot(s) restore as they must ({:.1} s)",
            self.snapshots.len(),
            started.elapsed().as_secs_f64()
        );
    }
}

/// Runs `cmd` to its end within the deadline; it must succeed. Its stdout.
fn run(mut cmd: Command, what: &str) -> Vec<u8> {
    let mut child = Proc(Some(cmd.spawn().unwrap()));
    let mut stdout = child.child().stdout.take().unwrap();
    let mut stderr = child.child().stderr.take().unwrap();
    // Read on threads, so that a hung process still meets the deadline.
    let out = std::thread::spawn(move || {
        let mut out = Vec::new();
        std::io::Read::read_to_end(&mut stdout, &mut out).unwrap();
        out
    });
    let err = std::thread::spawn(move || {
        let mut err = String::new();
        std::io::Read::read_to_string(&mut stderr, &mut err).unwrap();
        err
    });
    let status = child.wait(what);
    let (out, err) = (out.join().unwrap(), err.join().unwrap());
    assert!(status.success(), "{what} failed ({status}): {err}");
    out
}

/// Every file of a partial snapshot's tree is whole as `new` or `old` had it.
fn assert_whole_files_of(pulled: &Model, old: &Model, new: &Model, id: &str) {
    for (path, node) in pulled {
        if let Node::File { data, .. } = node {
            let same = |m: &Model| matches!(m.get(path), Some(Node::File { data: d, .. }) if d == data);
            assert!(same(new) || same(old), "partial snapshot {id}: {path} ({} bytes) is neither version", data.len());
        }
    }
}

/// The Garage fault tests run one at a time: each hits the whole cluster.
static CLUSTER: Mutex<()> = Mutex::new(());

/// The cluster `scripts/garage.sh start` runs, as its exports name it.
struct Cluster {
    dir: String,
    bucket: String,
    endpoints: Vec<String>,
}

impl Cluster {
    /// The cluster, held for this test alone.
    fn get() -> (Cluster, std::sync::MutexGuard<'static, ()>) {
        let var = |name: &str| {
            std::env::var(name).unwrap_or_else(|_| {
                panic!("{name} is unset: run eval \"$(scripts/garage.sh start)\" first (it needs a Garage cluster)")
            })
        };
        let cluster = Cluster {
            dir: var("XFER_GARAGE_DIR"),
            bucket: var("XFER_TEST_BUCKET"),
            endpoints: var("XFER_GARAGE_ENDPOINTS").split_whitespace().map(str::to_string).collect(),
        };
        assert_eq!(cluster.endpoints.len(), 3, "XFER_GARAGE_ENDPOINTS: {:?}", cluster.endpoints);
        (cluster, CLUSTER.lock().unwrap_or_else(std::sync::PoisonError::into_inner))
    }

    /// A fresh prefix of the bucket.
    fn store(&self, name: &str) -> String {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
        format!("s3://{}/faults-{name}-{}-{nanos}", self.bucket, std::process::id())
    }

    /// `scripts/garage.sh ARGS DIR`, which must succeed.
    fn script(&self, args: &[&str]) {
        let started = Instant::now();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/garage.sh");
        let out = Command::new("bash").arg(script).args(args).arg(&self.dir).output().unwrap();
        assert!(out.status.success(), "garage.sh {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        eprintln!("garage.sh {} took {:.1} s", args.join(" "), started.elapsed().as_secs_f64());
    }
}

/// The store-node fault: the node serving a push is killed with SIGKILL
/// mid-way; a new node process (another port, its own dirs) serves the
/// next attempt, which completes; nothing committed is lost.
fn store_node_killed(store: Option<String>) {
    let mut fx = Fixture::new(store);
    let (v1, v2) = (version(1), version(2));
    let mut first = fx.node(&[]);
    fx.push_ok(&first, &v1);
    let cut = fx.faulted_push(&mut first, &v2, |node| node.proc.kill9());
    assert!(cut.is_err(), "the push completed through a killed node");
    let second = fx.node(&[]);
    fx.record_cut(&second, &v1, &v2);
    fx.verify(&second);
    fx.push_ok(&second, &v2);
    fx.verify(&second);
}

#[test]
fn store_node_killed_during_a_push_loses_nothing() {
    store_node_killed(None);
}

#[test]
#[ignore = "needs a Garage cluster: eval \"$(scripts/garage.sh start)\""]
fn garage_store_node_killed_during_a_push_loses_nothing() {
    let (cluster, _held) = Cluster::get();
    store_node_killed(Some(cluster.store("xfer-node")));
}

/// A Garage node killed with SIGKILL during a push, then restarted: first
/// one the xfer node does not talk to (the cluster goes on with 2 of 3),
/// then the one it talks to (back 5 s later).
#[test]
#[ignore = "needs a Garage cluster: eval \"$(scripts/garage.sh start)\""]
fn garage_node_killed_during_a_push_loses_nothing() {
    let (cluster, _held) = Cluster::get();
    let mut fx = Fixture::new(Some(cluster.store("garage-node")));
    let (v1, v2, v3) = (version(1), version(2), version(3));
    let mut node = fx.node(&[]);
    fx.push_ok(&node, &v1);
    let cut = fx.faulted_push(&mut node, &v2, |_| cluster.script(&["kill-node", "3"]));
    // Two of three hold a quorum: the push goes on.
    assert!(cut.is_ok(), "{cut:?}");
    fx.record_cut(&node, &v1, &v2);
    fx.verify(&node);
    cluster.script(&["start-node", "3"]);
    fx.push_ok(&node, &v2);

    let _ = fx.faulted_push(&mut node, &v3, |_| {
        cluster.script(&["kill-node", "1"]);
        std::thread::sleep(Duration::from_secs(5));
        cluster.script(&["start-node", "1"]);
    });
    fx.record_cut(&node, &v2, &v3);
    fx.push_ok(&node, &v3);
    fx.verify(&node);
}

/// Every Garage node stopped and started again on its data, between two
/// pushes and during one.
#[test]
#[ignore = "needs a Garage cluster: eval \"$(scripts/garage.sh start)\""]
fn garage_restarts_lose_nothing() {
    let (cluster, _held) = Cluster::get();
    let mut fx = Fixture::new(Some(cluster.store("restart")));
    let (v1, v2, v3) = (version(1), version(2), version(3));
    let mut node = fx.node(&[]);
    fx.push_ok(&node, &v1);
    cluster.script(&["restart"]);
    fx.verify(&node);
    fx.push_ok(&node, &v2);
    let _ = fx.faulted_push(&mut node, &v3, |_| cluster.script(&["restart"]));
    fx.record_cut(&node, &v2, &v3);
    fx.verify(&node);
    fx.push_ok(&node, &v3);
    fx.verify(&node);
}

/// A Garage node's disk lost and the node rebuilt by the cluster; read
/// back through that node's own endpoint, with another node down so that
/// every quorum needs the rebuilt one.
#[test]
#[ignore = "needs a Garage cluster: eval \"$(scripts/garage.sh start)\""]
fn garage_wiped_node_is_rebuilt_and_loses_nothing() {
    let (cluster, _held) = Cluster::get();
    let mut fx = Fixture::new(Some(cluster.store("wipe")));
    let (v1, v2, v3) = (version(1), version(2), version(3));
    let node = fx.node(&[]);
    fx.push_ok(&node, &v1);
    fx.push_ok(&node, &v2);
    cluster.script(&["wipe-node", "2"]);
    let via_rebuilt = fx.node(&[("AWS_ENDPOINT_URL", cluster.endpoints[1].as_str())]);
    cluster.script(&["kill-node", "3"]);
    fx.verify(&via_rebuilt);
    cluster.script(&["start-node", "3"]);
    fx.push_ok(&via_rebuilt, &v3);
    fx.verify(&node);
}

/// A TCP relay on loopback to `upstream` (HOST:PORT) that passes what its
/// clients send at `rate` bytes a second and the answers at full speed:
/// an S3 endpoint behind a slow uplink. Its threads end with the process.
fn slow_uplink(upstream: &str, rate: u64) -> String {
    use std::io::{Read, Write};
    use std::net::{Shutdown, TcpListener, TcpStream};
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let upstream = upstream.to_string();
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(mut client) = client else { return };
            let Ok(mut server) = TcpStream::connect(&upstream) else { return };
            let (mut client_back, mut server_back) = (client.try_clone().unwrap(), server.try_clone().unwrap());
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut server_back, &mut client_back);
                let _ = client_back.shutdown(Shutdown::Write);
            });
            std::thread::spawn(move || {
                let mut piece = [0u8; 8192];
                while let Ok(n) = client.read(&mut piece) {
                    if n == 0 || server.write_all(&piece[..n]).is_err() {
                        break;
                    }
                    std::thread::sleep(Duration::from_micros(n as u64 * 1_000_000 / rate));
                }
                let _ = server.shutdown(Shutdown::Write);
            });
        }
    });
    format!("http://{addr}")
}

/// A store node whose link to the bucket carries 160 KB/s: a pack (the
/// whole first push, 8.5 MB, one PUT) takes about a minute to upload, and
/// the push completes; nothing is lost.
#[test]
#[ignore = "needs a Garage cluster: eval \"$(scripts/garage.sh start)\""]
fn garage_push_over_a_slow_uplink_to_the_bucket_completes() {
    let (cluster, _held) = Cluster::get();
    let mut fx = Fixture::new(Some(cluster.store("slow-uplink")));
    let endpoint = cluster.endpoints[0].trim_start_matches("http://");
    let slow = slow_uplink(endpoint, 160_000);
    let node = fx.node(&[("AWS_ENDPOINT_URL", slow.as_str())]);
    fx.push_ok(&node, &version(1));
    let direct = fx.node(&[]);
    fx.verify(&direct);
}

/// The CLI prints what a push and a dry run cost the store node's bucket
/// (`--json` field `store`) and prices it with `--request-price`; a price
/// that does not parse is a usage error saying what to write.
#[test]
fn the_cli_prices_the_store_requests() {
    let mut fx = Fixture::new(None);
    let node = fx.node(&[]);
    fx.source(&version(1));
    let push = |extra: &[&str]| {
        let mut cmd = fx.client(&node, "push");
        cmd.args(["--json", "--request-price", "5,0.4"]).args(extra).arg(fx.path("src")).arg(Fixture::url(&node));
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        serde_json::from_slice::<serde_json::Value>(&run(cmd, "push")).unwrap()
    };
    let priced = |report: &serde_json::Value| {
        let n = |what: &str| report["store"][what].as_u64().unwrap_or_else(|| panic!("no store.{what}: {report}"));
        let want = ((n("puts") + n("lists")) as f64 * 5.0 + n("gets") as f64 * 0.4) / 1000.0;
        let got = report["request_cost_usd"].as_f64().unwrap();
        assert!((got - want).abs() < 1e-9, "{got} vs {want}: {report}");
        n("puts")
    };
    let first = push(&[]);
    assert!(priced(&first) >= 3 && first["store"]["bytes_put"].as_u64().unwrap() >= 8 << 20, "{first}");
    fx.source(&version(2));
    let plan = push(&["--dry-run"]);
    assert_eq!(plan["dry_run"], true);
    let estimated = priced(&plan);
    let real = priced(&push(&[]));
    assert!(estimated >= real && estimated <= real + 3, "estimated {estimated} writes, made {real}");

    let mut bad = fx.client(&node, "push");
    let out = bad.args(["--request-price", "cheap"]).arg(fx.path("src")).arg(Fixture::url(&node)).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("per 1,000 writes"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
