//! Retention applied by the server on its own schedule: each tree's policy
//! forgets what it does not keep, the history is pruned, and pushes and
//! pulls running meanwhile complete exactly.

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use tempfile::TempDir;
use xfer::{
    Access, Client, Fingerprint, Identity, KeepPolicy, PullOptions, PushOptions, RemoteUrl, Retention, RetentionTable,
    Server, ServerOptions,
};

use crate::util::{assert_same_tree, read_tree, seeded, Model};

/// Each push replaces this file with new random bytes: its old version is
/// what the history keeps, and what a forgotten snapshot alone holds.
const BIG: usize = 3 << 20;
/// The file rewritten by the pushes that run while retention does.
const SCRATCH: usize = 32 << 10;

/// Bytes of the history's packs, as the disk has them.
fn pack_bytes(root: &Path) -> u64 {
    fn walk(dir: &Path) -> u64 {
        let Ok(entries) = fs::read_dir(dir) else { return 0 };
        // Retention runs meanwhile: a pack its prune deletes during the
        // walk is gone, and counts nothing.
        entries
            .filter_map(Result::ok)
            .map(|e| match e.file_type() {
                Ok(kind) if kind.is_dir() => walk(&e.path()),
                _ => e.metadata().map_or(0, |m| m.len()),
            })
            .sum()
    }
    walk(&root.join(".xfer/history/packs"))
}

struct Served {
    client: Client,
    grants: String,
    root: std::path::PathBuf,
    audit: std::path::PathBuf,
    server_id: Identity,
}

impl Served {
    fn new(tmp: &Path) -> Served {
        let client = Client::new(Identity::load_or_create(&tmp.join("client")).unwrap());
        let grants = format!("{} rw\n", client.fingerprint());
        let (root, audit) = (tmp.join("served"), tmp.join("audit.jsonl"));
        Served { client, grants, root, audit, server_id: Identity::generate().unwrap() }
    }

    fn start(&self, retention: Retention) -> (Server, Option<Fingerprint>, String) {
        let access = Access::parse(&self.grants, "grants").unwrap();
        let options = ServerOptions::new(&self.root, access).audit_log(&self.audit).retention(retention);
        let server = Server::start("127.0.0.1:0".parse().unwrap(), &self.server_id, options).unwrap();
        let (pin, addr) = (Some(server.fingerprint()), server.local_addr().unwrap().to_string());
        (server, pin, addr)
    }
}

fn url(addr: &str, tree: &str) -> RemoteUrl {
    RemoteUrl::parse_checked(&format!("xfer://{addr}{tree}")).unwrap()
}

/// Pushes `versions` states of a tree to `tree`, each replacing `big`,
/// and returns each state's model.
async fn push_versions(
    served: &Served,
    tmp: &Path,
    addr: &str,
    pin: Option<Fingerprint>,
    tree: &str,
    versions: u64,
) -> Vec<Model> {
    let src = tmp.join(format!("src{}", tree.replace('/', "_")));
    fs::create_dir_all(src.join("docs")).unwrap();
    fs::write(src.join("docs/readme"), b"the same in every snapshot").unwrap();
    let push = PushOptions::new(tmp.join("state")).delete(true);
    let mut models = Vec::new();
    // Each tree's versions its own: none shares data with another tree.
    let seed = tree.bytes().map(u64::from).sum::<u64>() * 1000;
    for n in 0..versions {
        fs::write(src.join("big"), seeded(BIG, seed + n)).unwrap();
        fs::write(src.join("docs/version"), format!("{n}")).unwrap();
        served.client.push(&src, &url(addr, tree), pin, &push).await.unwrap();
        models.push(read_tree(&src));
    }
    models
}

fn last(n: u32) -> KeepPolicy {
    KeepPolicy { last: n, ..KeepPolicy::default() }
}

/// Pushes new files into /scratch and pulls /laptop, over and over until
/// `done`, checking each result exactly; returns how many rounds ran.
async fn traffic(
    tmp: std::path::PathBuf,
    addr: String,
    pin: Option<Fingerprint>,
    laptop: Model,
    root: std::path::PathBuf,
    done: xfer::CancellationToken,
) -> u64 {
    let client = Client::new(Identity::load_or_create(&tmp.join("client")).unwrap());
    let src = tmp.join("scratch");
    fs::create_dir_all(&src).unwrap();
    let push = PushOptions::new(tmp.join("scratch-state"));
    let mut rounds = 0;
    while !done.is_cancelled() {
        // One small file rewritten: what /scratch adds to the history
        // stays small beside the laptop's versions measured.
        fs::write(src.join("f"), seeded(SCRATCH, 5000 + rounds)).unwrap();
        client.push(&src, &url(&addr, "/scratch"), pin, &push).await.unwrap();
        assert_same_tree(&read_tree(&root.join("scratch")), &read_tree(&src));
        let pulled = tmp.join(format!("pulled{rounds}"));
        client.pull(&url(&addr, "/laptop"), pin, &pulled, &PullOptions::new(tmp.join("pull-state"))).await.unwrap();
        assert_same_tree(&read_tree(&pulled), &laptop);
        fs::remove_dir_all(&pulled).unwrap();
        rounds += 1;
    }
    rounds
}

fn audit_lines(audit: &Path, direction: &str) -> Vec<serde_json::Value> {
    let text = fs::read_to_string(audit).unwrap_or_default();
    text.lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|r| r["direction"] == direction)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduled_retention_keeps_last_two_and_frees_what_the_others_alone_held() {
    let tmp = TempDir::new().unwrap();
    let served = Served::new(tmp.path());
    // Five snapshots, made while no policy is set.
    let (server, pin, addr) = served.start(Retention::default());
    let models = push_versions(&served, tmp.path(), &addr, pin, "/laptop", 5).await;
    let before = served.client.snapshots(&url(&addr, "/laptop"), pin).await.unwrap();
    assert_eq!(before.len(), 5);
    server.shutdown().await;
    let bytes_before = pack_bytes(&served.root);
    // Old versions 1 to 4 of `big` are in the packs (the 5th is the mirror's).
    assert!(bytes_before >= 4 * BIG as u64, "{bytes_before}");

    // The same root served with keep-last 2, applied every second.
    let every = Duration::from_secs(1);
    let retention = Retention { default: Some(last(2)), every: Some(every), ..Retention::default() };
    let started = Instant::now();
    let (server, pin, addr) = served.start(retention);
    let done = xfer::CancellationToken::new();
    let traffic = tokio::spawn(traffic(
        tmp.path().to_path_buf(),
        addr.clone(),
        pin,
        models[4].clone(),
        served.root.clone(),
        done.clone(),
    ));
    // Versions 1 to 3 were referenced only by the three forgotten
    // snapshots; a prune deletes what an earlier one set aside, so it
    // takes two runs.
    let target = bytes_before - 3 * BIG as u64;
    let slack = 256 << 10;
    while started.elapsed() < Duration::from_secs(60) && pack_bytes(&served.root) > target + slack {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    done.cancel();
    let rounds = traffic.await.unwrap();
    assert!(rounds >= 1, "no push or pull ran while retention did");
    // Two more runs with nothing else going on: what /scratch's forgotten
    // snapshots held is gone too, and the figure is settled.
    let runs = audit_lines(&served.audit, "retention").len();
    while started.elapsed() < Duration::from_secs(90) && audit_lines(&served.audit, "retention").len() < runs + 2 {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let bytes_after = pack_bytes(&served.root);
    let freed = bytes_before - bytes_after;
    eprintln!(
        "pack bytes before {bytes_before}, after {bytes_after}, freed {freed}; {rounds} push+pull rounds meanwhile"
    );
    // Freed: the three old versions only the forgotten snapshots held;
    // left: /scratch's one kept old version and the trees' blobs.
    assert!(
        freed + slack >= 3 * BIG as u64 && freed <= 3 * BIG as u64 + slack,
        "freed {freed}, expected about {}",
        3 * BIG
    );
    assert!(bytes_after >= BIG as u64, "the kept snapshots' old version went: {bytes_after}");

    let after = served.client.snapshots(&url(&addr, "/laptop"), pin).await.unwrap();
    let ids: Vec<&str> = after.iter().filter(|s| s.tree == "/laptop").map(|s| s.id.as_str()).collect();
    assert_eq!(ids, [before[3].id.as_str(), before[4].id.as_str()]);
    for (snapshot, model) in [(&before[3], &models[3]), (&before[4], &models[4])] {
        let out = tmp.path().join(format!("restored-{}", &snapshot.id[..8]));
        let pull = PullOptions::new(tmp.path().join("restore-state")).at(&snapshot.id);
        served.client.pull(&url(&addr, "/laptop"), pin, &out, &pull).await.unwrap();
        assert_same_tree(&read_tree(&out), model);
    }
    // Not at startup: the first run came one interval after it.
    let runs = audit_lines(&served.audit, "retention");
    assert!(runs.len() >= 2, "{runs:?}");
    assert!(runs.iter().all(|r| r["result"] == "ok"), "{runs:?}");
    let forgotten: u64 = runs.iter().map(|r| r["snapshots"].as_u64().unwrap()).sum();
    assert!(forgotten >= 3, "{runs:?}");
    let freed_logged: u64 = runs.iter().map(|r| r["bytes_freed"].as_u64().unwrap()).sum();
    assert!(freed_logged >= 3 * BIG as u64, "{runs:?}");
    assert!(started.elapsed() >= every);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retention_file_gives_each_tree_its_own_policy() {
    let tmp = TempDir::new().unwrap();
    let served = Served::new(tmp.path());
    let (server, pin, addr) = served.start(Retention::default());
    let all = push_versions(&served, tmp.path(), &addr, pin, "/all", 3).await;
    push_versions(&served, tmp.path(), &addr, pin, "/one", 3).await;
    server.shutdown().await;

    // /all has no line and there is no default: it keeps everything.
    let table = RetentionTable::parse("# per tree\n/one last=1\n/none/else daily=2\n").unwrap();
    let retention = Retention { table, every: Some(Duration::from_millis(300)), ..Retention::default() };
    let (server, pin, addr) = served.start(retention);
    let started = Instant::now();
    let mut one = Vec::new();
    while started.elapsed() < Duration::from_secs(60) {
        one = served.client.snapshots(&url(&addr, "/one"), pin).await.unwrap();
        if one.len() == 1 && !audit_lines(&served.audit, "retention").is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(one.len(), 1, "{one:?}");
    let kept = served.client.snapshots(&url(&addr, "/all"), pin).await.unwrap();
    assert_eq!(kept.len(), 3, "{kept:?}");
    for (snapshot, model) in kept.iter().zip(&all) {
        let out = tmp.path().join(format!("restored-{}", &snapshot.id[..8]));
        let pull = PullOptions::new(tmp.path().join("restore-state")).at(&snapshot.id);
        served.client.pull(&url(&addr, "/all"), pin, &out, &pull).await.unwrap();
        assert_same_tree(&read_tree(&out), model);
    }
    server.shutdown().await;
}

#[test]
fn serve_names_a_bad_retention_line_and_what_to_write() {
    let tmp = TempDir::new().unwrap();
    let file = tmp.path().join("retention");
    fs::write(&file, "# trees\n/laptop daily=7 weekly=4\n/phone daily=seven\n").unwrap();
    let fingerprint = Identity::generate().unwrap().fingerprint().to_string();
    let out = assert_cmd::Command::cargo_bin("xfer")
        .unwrap()
        .env("XFER_CONFIG_DIR", tmp.path().join("config"))
        .args(["serve", "--listen", "127.0.0.1:0", "--allow", &fingerprint, "--root"])
        .arg(tmp.path().join("root"))
        .arg("--retention")
        .arg(&file)
        .timeout(Duration::from_secs(30))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&file.display().to_string()) && err.contains("line 3"), "{err}");
    assert!(err.contains("\"seven\" is not a count for daily") && err.contains("daily=7 weekly=4 within=30d"), "{err}");
    for bad in [["--prune-every", "5m"], ["--prune-every", "1s"]] {
        let out = assert_cmd::Command::cargo_bin("xfer")
            .unwrap()
            .env("XFER_CONFIG_DIR", tmp.path().join("config"))
            .args(["serve", "--listen", "127.0.0.1:0", "--allow", &fingerprint, "--root"])
            .arg(tmp.path().join("root"))
            .args(bad)
            .timeout(Duration::from_secs(30))
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        let want = if bad[1] == "5m" { "use a number and s, min, h or d" } else { "needs a policy" };
        assert!(err.contains(want), "{bad:?}: {err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_forgets_and_prunes_a_served_tree_on_disk() {
    let tmp = TempDir::new().unwrap();
    let served = Served::new(tmp.path());
    let (server, pin, addr) = served.start(Retention::default());
    let site = push_versions(&served, tmp.path(), &addr, pin, "/site", 3).await;
    push_versions(&served, tmp.path(), &addr, pin, "/other", 2).await;
    server.shutdown().await;
    let before = pack_bytes(&served.root);

    let xfer = |args: &[&str]| {
        let out = assert_cmd::Command::cargo_bin("xfer")
            .unwrap()
            .env("XFER_CONFIG_DIR", tmp.path().join("config"))
            .env("XFER_STATE_DIR", tmp.path().join("cli-state"))
            .args(args)
            .timeout(Duration::from_secs(60))
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let (root, tree) = (served.root.to_str().unwrap(), served.root.join("site"));
    let tree = tree.to_str().unwrap();
    // Without --root the tree alone is a plain directory: the error says what to add.
    let (code, _, err) = xfer(&["prune", tree]);
    assert_ne!(code, Some(0));
    assert!(err.contains("--root ROOT"), "{err}");

    let (code, out, err) = xfer(&["forget", "--json", "--keep-last", "1", "--root", root, tree]);
    assert_eq!(code, Some(0), "{err}");
    let forgot: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(forgot["forgotten"], 2, "{out}");
    // Two runs: the second deletes what the first set aside.
    let mut reported = 0;
    for _ in 0..2 {
        let (code, out, err) = xfer(&["prune", "--json", "--root", root, tree]);
        assert_eq!(code, Some(0), "{err}");
        let report: serde_json::Value = serde_json::from_str(&out).unwrap();
        reported += report["bytes_freed"].as_u64().unwrap();
    }
    let freed = before - pack_bytes(&served.root);
    // A repack writes small new packs: what the disk shows is a little less.
    assert!(reported > 0 && reported.abs_diff(freed) <= 64 << 10, "reported {reported}, on disk {freed}");
    assert!(freed + (64 << 10) >= 2 * BIG as u64, "freed {freed}");
    let (code, out, err) = xfer(&["snapshots", "--json", "--root", root, tree]);
    assert_eq!(code, Some(0), "{err}");
    let list: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    assert_eq!(list.len(), 1, "{out}");

    // /other was not touched, and /site's last snapshot still restores.
    let (server, pin, addr) = served.start(Retention::default());
    assert_eq!(served.client.snapshots(&url(&addr, "/other"), pin).await.unwrap().len(), 2);
    let out = tmp.path().join("restored");
    let pull = PullOptions::new(tmp.path().join("restore-state")).at(list[0]["id"].as_str().unwrap());
    served.client.pull(&url(&addr, "/site"), pin, &out, &pull).await.unwrap();
    assert_same_tree(&read_tree(&out), &site[2]);
    server.shutdown().await;
}

/// A scheduled prune, a client's and the operator's may meet: they run one
/// at a time (two with different plans could each index a pack the other
/// doomed).
#[test]
fn prunes_of_one_history_run_one_at_a_time() {
    use xfer::fs::history::History;
    let tmp = TempDir::new().unwrap();
    let dir = tmp.path().join("history");
    drop(History::open(&dir).unwrap());
    let held = fs::OpenOptions::new().write(true).create(true).truncate(false).open(dir.join("prune.lock")).unwrap();
    rustix::fs::flock(&held, rustix::fs::FlockOperation::LockExclusive).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let worker = {
        let dir = dir.clone();
        std::thread::spawn(move || tx.send(History::open(&dir).unwrap().prune().map(|_| ())).unwrap())
    };
    assert!(rx.recv_timeout(Duration::from_millis(500)).is_err(), "a prune ran while another held the history");
    drop(held);
    rx.recv_timeout(Duration::from_secs(30)).unwrap().unwrap();
    worker.join().unwrap();
}
