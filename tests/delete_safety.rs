//! `--delete` never removes the backup of an entry the source still has but
//! the sender skipped (unreadable, changing while read, of an unsupported
//! kind); every type change is applied; a partial run is never recorded as
//! `ok`. Local pushes through the CLI, remote ones through a server on
//! loopback.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tempfile::TempDir;
use xfer::net::access::Access;
use xfer::net::admission::serve;
use xfer::net::audit::AuditLog;
use xfer::net::identity::Identity;
use xfer::net::served::ServeConfig;
use xfer::net::{server_endpoint, Tuning};
use xfer::usecase::{push::push, RemoteUrl, TransferOptions};

use crate::local_faults::{json, open_up, xfer};
use crate::util::as_nobody;
use crate::util::{assert_same_tree, materialize, read_tree, rel, seeded, Model, Node};

/// Paths of the report's `failed` list.
fn failed_paths(report: &serde_json::Value) -> Vec<String> {
    let failed = report["failed"].as_array().expect("a failed list");
    for entry in failed {
        let error = entry["error"].as_str().unwrap_or_default();
        assert!(!error.is_empty(), "a skip without its reason: {entry}");
    }
    failed.iter().map(|f| f["path"].as_str().unwrap_or_default().to_string()).collect()
}

/// Makes `path` a named pipe, which every scan skips.
fn mkfifo(path: &Path) {
    let made = Command::new("mkfifo").arg(path).status().expect("mkfifo runs");
    assert!(made.success(), "mkfifo {}", path.display());
}

/// Appends a byte to a file every millisecond until dropped, so that any
/// read of it sees it change.
struct Appender {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Appender {
    fn start(path: PathBuf) -> Appender {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                let mut file = fs::OpenOptions::new().append(true).open(&path).unwrap();
                std::io::Write::write_all(&mut file, b"+").unwrap();
                drop(file);
                std::thread::sleep(Duration::from_millis(1));
            }
        });
        // Let it change the file's stat key before any scan starts.
        std::thread::sleep(Duration::from_millis(20));
        Appender { stop, thread: Some(thread) }
    }
}

impl Drop for Appender {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// An unreadable file, an unlistable directory and an unreadable file
/// where the backup holds a directory: with `--delete`, each backup stays
/// as it was, the report names each with its reason, the run exits 3; an
/// entry really gone from the source is still deleted.
#[test]
fn unreadable_entries_keep_their_backup_under_delete() {
    let tmp = TempDir::new().unwrap();
    open_up(tmp.path(), 0o777);
    let (src, dest) = (tmp.path().join("src"), tmp.path().join("dest"));
    fs::create_dir_all(src.join("sub")).unwrap();
    fs::create_dir_all(src.join("kind")).unwrap();
    fs::write(src.join("db"), b"db v1").unwrap();
    fs::write(src.join("sub/s"), b"s v1").unwrap();
    fs::write(src.join("kind/in"), b"in v1").unwrap();
    fs::write(src.join("gone"), b"gone").unwrap();
    fs::write(src.join("ok"), b"ok").unwrap();
    for dir in [&src, &src.join("sub"), &src.join("kind")] {
        open_up(dir, 0o777);
    }
    let mut first = xfer(tmp.path());
    first.args(["push", "--delete", "--json"]).arg(&src).arg(&dest);
    let Some(mut first) = as_nobody(&first) else {
        eprintln!("skipped: cannot run as another user here");
        return;
    };
    let out = first.output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    open_up(&src.join("db"), 0o000);
    open_up(&src.join("sub"), 0o000);
    fs::remove_dir_all(src.join("kind")).unwrap();
    fs::write(src.join("kind"), b"now a file").unwrap();
    open_up(&src.join("kind"), 0o000);
    fs::remove_file(src.join("gone")).unwrap();
    let mut second = xfer(tmp.path());
    second.args(["push", "--delete", "--json"]).arg(&src).arg(&dest);
    let out = as_nobody(&second).unwrap().output().unwrap();
    open_up(&src.join("sub"), 0o777);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert_eq!(fs::read(dest.join("db")).unwrap(), b"db v1", "the backup of an unreadable file was lost");
    assert_eq!(fs::read(dest.join("sub/s")).unwrap(), b"s v1", "the backup of an unlistable dir was lost");
    assert_eq!(fs::read(dest.join("kind/in")).unwrap(), b"in v1", "a skipped entry's backup was replaced");
    assert!(!dest.join("gone").exists(), "an entry gone from the source was kept");
    assert_eq!(fs::read(dest.join("ok")).unwrap(), b"ok");
    let mut failed = failed_paths(&json(&out));
    failed.sort();
    assert_eq!(failed, ["db", "kind", "sub"], "{stderr}");
    for name in ["db", "kind", "sub"] {
        assert!(stderr.contains(&format!("skipped {name}: ")), "{name} not in the text report: {stderr}");
    }
}

/// A file that changes while the scan reads it is skipped: with
/// `--delete` its backup stays, and the run exits 3 naming it.
#[test]
fn file_changing_while_scanned_keeps_its_backup_under_delete() {
    let tmp = TempDir::new().unwrap();
    let (src, dest) = (tmp.path().join("src"), tmp.path().join("dest"));
    fs::create_dir(&src).unwrap();
    let v1 = seeded(8 << 20, 3);
    fs::write(src.join("log"), &v1).unwrap();
    fs::write(src.join("other"), b"other").unwrap();
    let out = xfer(tmp.path()).args(["push", "--delete", "--json"]).arg(&src).arg(&dest).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let appender = Appender::start(src.join("log"));
    let out = xfer(tmp.path()).args(["push", "--delete", "--json"]).arg(&src).arg(&dest).output().unwrap();
    drop(appender);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(fs::read(dest.join("log")).is_ok_and(|b| b == v1), "the backup of a changing file was lost");
    assert_eq!(failed_paths(&json(&out)), ["log"], "{stderr}");
    assert_eq!(fs::read(dest.join("other")).unwrap(), b"other");
}

struct Server {
    id: Identity,
    addr: std::net::SocketAddr,
    root: PathBuf,
    audit: PathBuf,
}

fn start_server(tmp: &TempDir, client: &Identity) -> Server {
    let id = Identity::generate().unwrap();
    let root = tmp.path().join("served");
    fs::create_dir(&root).unwrap();
    let audit = tmp.path().join("audit.jsonl");
    let endpoint = server_endpoint("127.0.0.1:0".parse().unwrap(), &id, Tuning::default()).unwrap();
    let addr = endpoint.local_addr().unwrap();
    let config = ServeConfig {
        audit: Some(Arc::new(AuditLog::open(&audit).unwrap())),
        ..ServeConfig::new(root.clone(), Access::allow(&[client.fingerprint()]))
    };
    tokio::spawn(serve(endpoint, Arc::new(config)));
    Server { id, addr, root, audit }
}

fn remote_options(tmp: &TempDir, delete: bool) -> TransferOptions {
    TransferOptions {
        delete,
        busy_wait: Duration::from_secs(10),
        ..TransferOptions::new(tmp.path().join("client-state"))
    }
}

/// The server's audit records, once it has written `count` of them.
fn audit_records(path: &Path, count: usize) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = fs::read_to_string(path).unwrap_or_default();
        let records: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        if records.len() >= count || Instant::now() > deadline {
            return records;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Through a server: a file become a named pipe, a directory become a
/// named pipe and a file changing while scanned are skipped; with
/// `--delete` their backups stay and the report names them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_delete_keeps_backups_of_skipped_entries() {
    let tmp = TempDir::new().unwrap();
    let client = Identity::generate().unwrap();
    let server = start_server(&tmp, &client);
    let src = tmp.path().join("src");
    fs::create_dir_all(src.join("dir")).unwrap();
    fs::write(src.join("pipe"), b"pipe v1").unwrap();
    fs::write(src.join("dir/in"), b"in v1").unwrap();
    let v1 = seeded(8 << 20, 5);
    fs::write(src.join("log"), &v1).unwrap();
    fs::write(src.join("gone"), b"gone").unwrap();
    let url = RemoteUrl { authority: server.addr.to_string(), path: "site".into() };
    let pin = Some(server.id.fingerprint());
    let first = push(&src, &url, &client, pin, &remote_options(&tmp, true)).await.unwrap();
    assert!(first.failed.is_empty(), "{:?}", first.failed);

    fs::remove_file(src.join("pipe")).unwrap();
    mkfifo(&src.join("pipe"));
    fs::remove_dir_all(src.join("dir")).unwrap();
    mkfifo(&src.join("dir"));
    fs::remove_file(src.join("gone")).unwrap();
    let appender = Appender::start(src.join("log"));
    let report = push(&src, &url, &client, pin, &remote_options(&tmp, true)).await.unwrap();
    drop(appender);
    let site = server.root.join("site");
    assert_eq!(fs::read(site.join("pipe")).unwrap(), b"pipe v1", "a skipped entry's backup was deleted");
    assert_eq!(fs::read(site.join("dir/in")).unwrap(), b"in v1", "a skipped entry's backup was replaced");
    assert!(fs::read(site.join("log")).is_ok_and(|b| b == v1), "the backup of a changing file was lost");
    assert!(!site.join("gone").exists(), "an entry gone from the source was kept");
    let mut failed: Vec<&str> = report.failed.iter().map(|f| f.path.as_str()).collect();
    failed.sort_unstable();
    assert_eq!(failed, ["dir", "log", "pipe"], "{:?}", report.failed);
    assert!(report.failed.iter().all(|f| !f.error.is_empty()));
}

/// v1 and v2 differ by type changes only, in every direction and nested:
/// file, directory (empty or not) and symlink each become each other kind.
pub(crate) fn type_change_trees() -> (Model, Model) {
    let dir = Node::Dir { mode: 0o755, mtime: 100 };
    let file = |data: &str| Node::File { data: data.as_bytes().to_vec(), mode: 0o644, mtime: 200 };
    let link = |target: &str| Node::Symlink { target: target.as_bytes().to_vec(), mtime: 300 };
    let mut v1 = Model::new();
    let mut v2 = Model::new();
    for top in ["", "nest/"] {
        if !top.is_empty() {
            v1.insert(rel(b"nest"), dir.clone());
            v2.insert(rel(b"nest"), dir.clone());
            v1.insert(rel(b"nest/stays"), file("stays"));
            v2.insert(rel(b"nest/stays"), file("stays"));
        }
        let p = |name: &str| rel(format!("{top}{name}").as_bytes());
        // file -> dir, file -> symlink
        v1.insert(p("f2d"), file("f2d v1"));
        v2.insert(p("f2d"), dir.clone());
        v2.insert(p("f2d/in"), file("f2d in"));
        v1.insert(p("f2l"), file("f2l v1"));
        v2.insert(p("f2l"), link("f2l-target"));
        // dir (non-empty, nested) -> file, dir -> symlink, empty dir -> file
        v1.insert(p("d2f"), dir.clone());
        v1.insert(p("d2f/a"), file("a"));
        v1.insert(p("d2f/sub"), dir.clone());
        v1.insert(p("d2f/sub/b"), file("b"));
        v2.insert(p("d2f"), file("d2f v2"));
        v1.insert(p("d2l"), dir.clone());
        v1.insert(p("d2l/a"), file("a"));
        v2.insert(p("d2l"), link("d2l-target"));
        v1.insert(p("e2f"), dir.clone());
        v2.insert(p("e2f"), file("e2f v2"));
        // symlink -> file, symlink -> dir
        v1.insert(p("l2f"), link("l2f-target"));
        v2.insert(p("l2f"), file("l2f v2"));
        v1.insert(p("l2d"), link("l2d-target"));
        v2.insert(p("l2d"), dir.clone());
        v2.insert(p("l2d/x"), file("x"));
    }
    (v1, v2)
}

pub(crate) fn fresh_source(src: &Path, model: &Model) {
    if src.exists() {
        fs::remove_dir_all(src).unwrap();
    }
    fs::create_dir_all(src).unwrap();
    materialize(model, src);
}

/// Every type change is applied by a local push, with and without
/// `--delete`, and the run says it succeeded only when it did.
#[test]
fn type_changes_are_applied_local() {
    for delete in [false, true] {
        let tmp = TempDir::new().unwrap();
        let (src, dest) = (tmp.path().join("src"), tmp.path().join("dest"));
        let (v1, v2) = type_change_trees();
        fresh_source(&src, &v1);
        let out = xfer(tmp.path()).args(["push", "--json"]).arg(&src).arg(&dest).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert_same_tree(&read_tree(&dest), &v1);
        fresh_source(&src, &v2);
        let mut push = xfer(tmp.path());
        push.args(["push", "--json"]);
        if delete {
            push.arg("--delete");
        }
        let out = push.arg(&src).arg(&dest).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "delete={delete}: {stderr}");
        assert!(failed_paths(&json(&out)).is_empty(), "delete={delete}: {stderr}");
        assert_same_tree(&read_tree(&dest), &v2);
    }
}

/// Every type change is applied through a server, with and without
/// `--delete`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn type_changes_are_applied_remote() {
    for delete in [false, true] {
        let tmp = TempDir::new().unwrap();
        let client = Identity::generate().unwrap();
        let server = start_server(&tmp, &client);
        let src = tmp.path().join("src");
        let (v1, v2) = type_change_trees();
        let url = RemoteUrl { authority: server.addr.to_string(), path: "site".into() };
        let pin = Some(server.id.fingerprint());
        fresh_source(&src, &v1);
        push(&src, &url, &client, pin, &remote_options(&tmp, delete)).await.unwrap();
        assert_same_tree(&read_tree(&server.root.join("site")), &v1);
        fresh_source(&src, &v2);
        let report = push(&src, &url, &client, pin, &remote_options(&tmp, delete)).await.unwrap();
        assert!(report.failed.is_empty(), "delete={delete}: {:?}", report.failed);
        assert_same_tree(&read_tree(&server.root.join("site")), &v2);
    }
}

/// A session the client reports as partial (an entry skipped on its side)
/// is `partial` in the server's audit log too, not `ok`; so is a pull in
/// which the server skipped entries of its tree.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_audit_says_partial_when_the_client_skipped() {
    let tmp = TempDir::new().unwrap();
    let client = Identity::generate().unwrap();
    let server = start_server(&tmp, &client);
    let src = tmp.path().join("src");
    fs::create_dir(&src).unwrap();
    fs::write(src.join("file"), b"data").unwrap();
    let url = RemoteUrl { authority: server.addr.to_string(), path: "site".into() };
    let pin = Some(server.id.fingerprint());
    let clean = push(&src, &url, &client, pin, &remote_options(&tmp, false)).await.unwrap();
    assert!(!clean.is_partial());
    mkfifo(&src.join("pipe"));
    let partial = push(&src, &url, &client, pin, &remote_options(&tmp, false)).await.unwrap();
    assert!(partial.is_partial(), "{:?}", partial.failed);
    let records = audit_records(&server.audit, 2);
    assert_eq!(records.len(), 2, "{records:?}");
    assert_eq!(records[0]["result"], "ok", "{}", records[0]);
    assert_eq!(records[1]["result"], "partial", "the client's partial run is logged as {}", records[1]);
    assert!(records[1]["files_failed"].as_u64() >= Some(1), "{}", records[1]);
    // A pull whose source, the server's tree, holds an entry its scan skips.
    mkfifo(&server.root.join("site/served-pipe"));
    let restored = tmp.path().join("restored");
    xfer::usecase::pull::pull(&url, &restored, &client, pin, &remote_options(&tmp, false)).await.unwrap();
    let records = audit_records(&server.audit, 3);
    assert_eq!(records.len(), 3, "{records:?}");
    assert_eq!(records[2]["result"], "partial", "a pull the server skipped entries of is logged as {}", records[2]);
}
