//! The history over the wire: the `append` grant (push and pull, never
//! forget or prune, refusals in the audit log), `rw` managing its paths,
//! `ro` reading only, snapshot listings, and pulls of a snapshot (a whole
//! tree, a subtree, one file).
//!
//! Tests marked "needs the history store" exercise `History` methods
//! another item implements (recording, finding, loading, pruning); they
//! pass once it is merged.

use std::fs;
use std::path::{Path, PathBuf};

use tempfile::TempDir;
use xfer::{
    Access, Client, Identity, KeepPolicy, PullOptions, PushOptions, RemoteUrl, Server, ServerOptions, TransferError,
};
use xfer_protocol::msg::{Direction, Open};
use xfer_protocol::CloseCode;

use crate::util::seeded;

/// A client whose identity can also drive a raw connection.
struct Who {
    client: Client,
    identity: Identity,
}

fn who(tmp: &TempDir, name: &str) -> Who {
    let dir = tmp.path().join("id").join(name);
    Who {
        client: Client::new(Identity::load_or_create(&dir).unwrap()),
        identity: Identity::load_or_create(&dir).unwrap(),
    }
}

/// A server on loopback with `grants` (authorized-clients lines) and an
/// audit log.
fn serve(tmp: &TempDir, grants: &str) -> (Server, PathBuf, PathBuf) {
    let root = tmp.path().join("served");
    let audit = tmp.path().join("audit.jsonl");
    let access = Access::parse(grants, "test grants").unwrap();
    let options = ServerOptions::new(&root, access).audit_log(&audit);
    let server = Server::start("127.0.0.1:0".parse().unwrap(), &Identity::generate().unwrap(), options).unwrap();
    (server, root, audit)
}

fn url(server: &Server, path: &str) -> RemoteUrl {
    RemoteUrl::parse_checked(&format!("xfer://{}/{path}", server.local_addr().unwrap())).unwrap()
}

fn push_options(tmp: &TempDir) -> PushOptions {
    PushOptions::new(tmp.path().join("state")).busy_wait(std::time::Duration::ZERO)
}

fn pull_options(tmp: &TempDir) -> PullOptions {
    PullOptions::new(tmp.path().join("state"))
}

/// A source tree: `a.txt`, `b.txt` and `docs/c.txt`, contents by `seed`.
fn source(dir: &Path, seed: u64) {
    fs::create_dir_all(dir.join("docs")).unwrap();
    fs::write(dir.join("a.txt"), seeded(50_000, seed)).unwrap();
    fs::write(dir.join("b.txt"), seeded(20_000, seed + 1)).unwrap();
    fs::write(dir.join("docs/c.txt"), seeded(30_000, seed + 2)).unwrap();
}

/// The close code a failed call was refused with.
fn refusal_code(e: &TransferError) -> Option<CloseCode> {
    match e {
        TransferError::Session(xfer::session::SessionError::Peer { code, .. }) => *code,
        _ => None,
    }
}

fn open(direction: Direction, path: &str, forget: Vec<[u8; 32]>) -> Open {
    Open {
        direction,
        path: path.as_bytes().to_vec(),
        delete: false,
        checksum: false,
        remembered_root: None,
        tags: vec![],
        at: None,
        source_host: String::new(),
        source_path: String::new(),
        forget,
    }
}

/// Sends one history request as `who` on a connection of its own.
async fn raw_request(
    server: &Server,
    who: &Who,
    open: Open,
) -> Result<xfer::net::manage::Answer, xfer::session::SessionError> {
    let authority = server.local_addr().unwrap().to_string();
    let link = xfer::net::client::Link::connect(
        &authority,
        &who.identity,
        Some(server.fingerprint()),
        Default::default(),
        xfer::DEFAULT_CONNECT_TIMEOUT,
    )
    .await
    .unwrap();
    let answer = link.history(open).await;
    link.close(0).await;
    answer
}

/// The audit records, one JSON object each.
fn audit_records(audit: &Path) -> Vec<serde_json::Value> {
    // The server writes a record as the session ends, just after the client
    // has its answer.
    for _ in 0..100 {
        let text = fs::read_to_string(audit).unwrap_or_default();
        let records: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        if records.iter().any(|r| r["direction"] == "forget") && records.iter().any(|r| r["direction"] == "prune") {
            return records;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    panic!("no forget and prune records in {}", fs::read_to_string(audit).unwrap_or_default());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn append_client_pushes_and_pulls_but_may_not_forget_or_prune() {
    let tmp = TempDir::new().unwrap();
    let phone = who(&tmp, "phone");
    let grants = format!("{} append /phone\n", phone.client.fingerprint());
    let (server, root, audit) = serve(&tmp, &grants);
    let pin = Some(server.fingerprint());
    let src = tmp.path().join("src");
    source(&src, 1);
    let target = url(&server, "phone");
    phone.client.push(&src, &target, pin, &push_options(&tmp)).await.unwrap();
    // A push with --delete is allowed too (what it deletes stays in the history).
    fs::remove_file(src.join("b.txt")).unwrap();
    let report = phone.client.push(&src, &target, pin, &push_options(&tmp).delete(true)).await.unwrap();
    assert_eq!(report.files_deleted, 1);
    assert!(!root.join("phone/b.txt").exists());
    let dest = tmp.path().join("restored");
    phone.client.pull(&target, pin, &dest, &pull_options(&tmp)).await.unwrap();
    assert_eq!(fs::read(dest.join("a.txt")).unwrap(), fs::read(src.join("a.txt")).unwrap());
    // Listing is reading: allowed.
    phone.client.snapshots(&target, pin).await.unwrap();

    // Forget and prune are refused by the server, whatever the ids.
    let forget = raw_request(&server, &phone, open(Direction::Forget, "phone", vec![[7; 32]])).await;
    let Err(e) = forget else { panic!("an append client forgot snapshots") };
    assert!(matches!(e, xfer::session::SessionError::Peer { code: Some(CloseCode::Unauthorized), .. }), "{e}");
    assert!(e.to_string().contains("may not forget snapshots or prune under /phone"), "{e}");
    let err = phone.client.prune(&target, pin).await.unwrap_err();
    assert_eq!(refusal_code(&err), Some(CloseCode::Unauthorized), "{err}");
    assert!(err.to_string().contains("its grant is append"), "{err}");

    let records = audit_records(&audit);
    for action in ["forget", "prune"] {
        let record = records.iter().find(|r| r["direction"] == action).unwrap();
        assert_eq!(record["path"], "/phone", "{record}");
        assert_eq!(record["result"], "refused", "{record}");
        assert_eq!(record["client"], phone.client.fingerprint().to_string(), "{record}");
        let error = record["error"].as_str().unwrap();
        assert!(error.contains("may not forget snapshots or prune") && error.contains("append"), "{error}");
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ro_client_cannot_push_but_lists_and_pulls() {
    let tmp = TempDir::new().unwrap();
    let (writer, monitor) = (who(&tmp, "writer"), who(&tmp, "monitor"));
    let grants = format!("{} rw /site\n{} ro\n", writer.client.fingerprint(), monitor.client.fingerprint());
    let (server, root, _) = serve(&tmp, &grants);
    let pin = Some(server.fingerprint());
    let src = tmp.path().join("src");
    source(&src, 3);
    let target = url(&server, "site");
    writer.client.push(&src, &target, pin, &push_options(&tmp)).await.unwrap();

    fs::write(src.join("a.txt"), b"changed by the monitor").unwrap();
    let err = monitor.client.push(&src, &target, pin, &push_options(&tmp)).await.unwrap_err();
    assert_eq!(refusal_code(&err), Some(CloseCode::ReadOnly), "{err}");
    assert_ne!(fs::read(root.join("site/a.txt")).unwrap(), b"changed by the monitor");
    let dest = tmp.path().join("pulled");
    monitor.client.pull(&target, pin, &dest, &pull_options(&tmp)).await.unwrap();
    assert!(dest.join("docs/c.txt").is_file());
    monitor.client.snapshots(&target, pin).await.unwrap();
    let err = monitor.client.prune(&target, pin).await.unwrap_err();
    assert_eq!(refusal_code(&err), Some(CloseCode::Unauthorized), "{err}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rw_forget_reaches_the_history_only_under_its_prefix() {
    let tmp = TempDir::new().unwrap();
    let admin = who(&tmp, "admin");
    let grants = format!("{} rw /site\n", admin.client.fingerprint());
    let (server, _, _) = serve(&tmp, &grants);
    // Admitted: the history answers (no such snapshot), not the grants.
    let e = raw_request(&server, &admin, open(Direction::Forget, "site", vec![[9; 32]])).await.err().unwrap();
    assert!(matches!(e, xfer::session::SessionError::Peer { code: Some(CloseCode::NotFound), .. }), "{e}");
    assert!(e.to_string().contains("xfer snapshots"), "{e}");
    // Outside its prefix: refused by the grants.
    let e = raw_request(&server, &admin, open(Direction::Forget, "other", vec![[9; 32]])).await.err().unwrap();
    assert!(matches!(e, xfer::session::SessionError::Peer { code: Some(CloseCode::OutsideAllowedPath), .. }), "{e}");
    // An empty policy is refused before anything is asked.
    let (target, empty) = (url(&server, "site"), KeepPolicy::default());
    let err = admin.client.forget_by_policy(&target, Some(server.fingerprint()), &empty, false).await.unwrap_err();
    assert!(matches!(err, TransferError::History(_)) && err.to_string().contains("--keep-"), "{err}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_at_without_snapshots_says_how_to_list_them() {
    let tmp = TempDir::new().unwrap();
    let reader = who(&tmp, "reader");
    let (server, root, _) = serve(&tmp, &format!("{} ro\n", reader.client.fingerprint()));
    fs::create_dir_all(root.join("site")).unwrap();
    let options = pull_options(&tmp).at("latest");
    let dest = tmp.path().join("restored");
    let err = reader.client.pull(&url(&server, "site/docs"), Some(server.fingerprint()), &dest, &options).await;
    let err = err.unwrap_err();
    assert_eq!(refusal_code(&err), Some(CloseCode::NotFound), "{err}");
    assert!(
        err.to_string().contains("no snapshot holds /site/docs") && err.to_string().contains("xfer snapshots"),
        "{err}"
    );
    let bad = pull_options(&tmp).at("2026-01-01\n");
    let err = reader.client.pull(&url(&server, "site"), Some(server.fingerprint()), &dest, &bad).await.unwrap_err();
    assert!(matches!(err, TransferError::History(_)), "{err}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_destination_without_history_lists_nothing_and_refuses_prune() {
    let tmp = TempDir::new().unwrap();
    let dest = tmp.path().join("dest");
    fs::create_dir_all(&dest).unwrap();
    let state = tmp.path().join("state");
    assert!(Client::snapshots_local(&dest, &state).await.unwrap().is_empty());
    let err = Client::prune_local(&dest, &state).await.unwrap_err();
    assert!(matches!(err, TransferError::History(_)) && err.to_string().contains("has no history"), "{err}");
}

// ---------------------------------------------------------------------------
// Needs the history store (recording, finding, loading, pruning).

/// Records a snapshot of the served tree `tree` as the store does, and
/// returns its record.
fn record_snapshot(root: &Path, tree: &str, host: &str) -> xfer::SnapshotRecord {
    let mirror = root.join(tree.trim_start_matches('/'));
    let options = xfer::fs::scan::ScanOptions::default();
    let manifest = xfer::fs::scan::scan(&mirror, &Default::default(), options).unwrap().manifest;
    let mut history = xfer::fs::history::History::open(&root.join(".xfer/history")).unwrap();
    let info = xfer::fs::history::SnapshotInfo {
        tree: tree.into(),
        client: "xfer:test".into(),
        host: host.into(),
        source: "/home/a".into(),
        tags: vec![("k".into(), "v".into())],
        partial: false,
        time: Some(std::time::SystemTime::now()),
    };
    history.record_snapshot(&manifest, &info).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_listing_roundtrips_over_the_wire() {
    let tmp = TempDir::new().unwrap();
    let reader = who(&tmp, "reader");
    let (server, root, _) = serve(&tmp, &format!("{} ro\n", reader.client.fingerprint()));
    source(&root.join("site"), 5);
    source(&root.join("other"), 6);
    let mut site = Vec::new();
    for n in 0..3 {
        site.push(record_snapshot(&root, "/site", &format!("host{n}")));
    }
    let other = record_snapshot(&root, "/other", "elsewhere");
    let pin = Some(server.fingerprint());
    let listed = reader.client.snapshots(&url(&server, "site"), pin).await.unwrap();
    let mut expected = site.clone();
    expected.sort_by_key(|r| r.time);
    assert_eq!(listed, expected);
    let everything = reader.client.snapshots(&url(&server, "."), pin).await.unwrap();
    assert_eq!(everything.len(), 4);
    assert!(everything.contains(&other));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rw_client_forgets_by_id_and_prunes() {
    let tmp = TempDir::new().unwrap();
    let admin = who(&tmp, "admin");
    let (server, root, _) = serve(&tmp, &format!("{} rw /site\n", admin.client.fingerprint()));
    source(&root.join("site"), 7);
    let first = record_snapshot(&root, "/site", "h");
    let second = record_snapshot(&root, "/site", "h2");
    let (target, pin) = (url(&server, "site"), Some(server.fingerprint()));
    let done = admin.client.forget(&target, pin, &[first.id[..8].to_string()]).await.unwrap();
    assert_eq!(done.forgotten, 1);
    assert_eq!(admin.client.snapshots(&target, pin).await.unwrap(), vec![second]);
    admin.client.prune(&target, pin).await.unwrap();
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_at_restores_a_tree_a_subtree_and_one_file() {
    let tmp = TempDir::new().unwrap();
    let owner = who(&tmp, "owner");
    let (server, root, _) = serve(&tmp, &format!("{} rw\n", owner.client.fingerprint()));
    let (target, pin) = (url(&server, "site"), Some(server.fingerprint()));
    let (v1, v2) = (tmp.path().join("v1"), tmp.path().join("v2"));
    source(&v1, 10);
    owner.client.push(&v1, &target, pin, &push_options(&tmp)).await.unwrap();
    // The second version overwrites every file and deletes one.
    source(&v2, 20);
    fs::remove_file(v2.join("b.txt")).unwrap();
    owner.client.push(&v2, &target, pin, &push_options(&tmp).delete(true)).await.unwrap();
    assert!(!root.join("site/b.txt").exists());
    let snapshots = owner.client.snapshots(&target, pin).await.unwrap();
    assert_eq!(snapshots.len(), 2, "{snapshots:?}");
    let first = &snapshots[0].id[..10];

    let whole = tmp.path().join("whole");
    owner.client.pull(&target, pin, &whole, &pull_options(&tmp).at(first)).await.unwrap();
    for file in ["a.txt", "b.txt", "docs/c.txt"] {
        assert_eq!(fs::read(whole.join(file)).unwrap(), fs::read(v1.join(file)).unwrap(), "{file}");
    }
    let docs = tmp.path().join("docs");
    owner.client.pull(&url(&server, "site/docs"), pin, &docs, &pull_options(&tmp).at(first)).await.unwrap();
    assert_eq!(fs::read(docs.join("c.txt")).unwrap(), fs::read(v1.join("docs/c.txt")).unwrap());
    assert!(!docs.join("a.txt").exists());
    let one = tmp.path().join("one");
    owner.client.pull(&url(&server, "site/b.txt"), pin, &one, &pull_options(&tmp).at(first)).await.unwrap();
    assert_eq!(fs::read(one.join("b.txt")).unwrap(), fs::read(v1.join("b.txt")).unwrap());
    let latest = tmp.path().join("latest");
    owner.client.pull(&target, pin, &latest, &pull_options(&tmp).at("latest")).await.unwrap();
    assert_eq!(fs::read(latest.join("a.txt")).unwrap(), fs::read(v2.join("a.txt")).unwrap());
    assert!(!latest.join("b.txt").exists());
    server.shutdown().await;
}

// ---------------------------------------------------------------------------
// The command line.

fn xfer(tmp: &TempDir) -> assert_cmd::Command {
    let mut cmd = assert_cmd::Command::cargo_bin("xfer").unwrap();
    cmd.env("XFER_STATE_DIR", tmp.path().join("state")).env("XFER_CONFIG_DIR", tmp.path().join("config"));
    cmd
}

#[test]
fn cli_history_commands_refuse_what_they_cannot_do() {
    let tmp = TempDir::new().unwrap();
    let (src, dest) = (tmp.path().join("src"), tmp.path().join("dest"));
    source(&src, 30);
    fs::create_dir_all(&dest).unwrap();
    let stderr = |out: std::process::Output| String::from_utf8_lossy(&out.stderr).into_owned();

    // A policy without rules would forget everything.
    let out = xfer(&tmp).arg("forget").arg(&dest).output().unwrap();
    assert!(!out.status.success());
    assert!(stderr(out).contains("a policy without rules would forget every snapshot"));
    let out = xfer(&tmp).args(["forget", "--keep-within", "3x"]).arg(&dest).output().unwrap();
    assert!(stderr(out).contains("is not a duration"));
    let out = xfer(&tmp).args(["forget", "--keep-last", "1", "abcd"]).arg(&dest).output().unwrap();
    assert!(stderr(out).contains("not both"));
    // --at restores: a push refuses it.
    let out = xfer(&tmp).args(["push", "--at", "latest"]).arg(&src).arg(&dest).output().unwrap();
    assert!(!out.status.success());
    assert!(stderr(out).contains("works on pulls only"));
    // A destination without history lists nothing, and says so.
    let out = xfer(&tmp).args(["snapshots", "--json"]).arg(&dest).output().unwrap();
    assert!(out.status.success(), "{}", stderr(out.clone()));
    assert_eq!(serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap(), serde_json::json!([]));
    let out = xfer(&tmp).arg("prune").arg(&dest).output().unwrap();
    assert!(!out.status.success());
    assert!(stderr(out).contains("has no history"));
}

#[test]
fn cli_serve_help_explains_append() {
    let out = assert_cmd::Command::cargo_bin("xfer").unwrap().args(["serve", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("rw|append|ro"), "{help}");
    assert!(help.contains("never forget or prune"), "{help}");
}

/// Needs the history store: snapshots of local pushes, listed and
/// forgotten by policy from the command line.
#[test]
fn cli_local_snapshots_and_forget_by_policy() {
    let tmp = TempDir::new().unwrap();
    let (src, dest) = (tmp.path().join("src"), tmp.path().join("dest"));
    source(&src, 40);
    for n in 0..3u8 {
        fs::write(src.join("a.txt"), [n; 100]).unwrap();
        let out = xfer(&tmp).arg("push").arg(&src).arg(&dest).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    let out = xfer(&tmp).args(["snapshots", "--json"]).arg(&dest).output().unwrap();
    let listed: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed.len(), 3);
    let out = xfer(&tmp).args(["forget", "--keep-last", "1", "--dry-run"]).arg(&dest).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.lines().filter(|l| l.starts_with("forget")).count(), 2, "{text}");
    assert!(text.lines().any(|l| l.starts_with("keep") && l.contains("(last)")), "{text}");
    let out = xfer(&tmp).args(["forget", "--keep-last", "1", "--json"]).arg(&dest).output().unwrap();
    let done: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(done["forgotten"], 2);
    let out = xfer(&tmp).args(["snapshots", "--json"]).arg(&dest).output().unwrap();
    let left: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(left, listed[2..]);
}

/// What a push says of its source reaches the store opener, which records
/// it in the snapshot.
#[test]
fn push_open_carries_source_and_tags_to_the_store_opener() {
    use std::sync::{Arc, Mutex};
    use xfer::session::{OpenRequest, SessionError};
    let seen: Arc<Mutex<Option<OpenRequest>>> = Arc::default();
    let keep = seen.clone();
    let mut receiver = xfer::fs::store::MirrorReceiver::new(Box::new(move |request: &OpenRequest| {
        *keep.lock().unwrap() = Some(request.clone());
        Err(SessionError::Protocol("captured".into()))
    }));
    let hello = xfer_protocol::msg::Hello { version: xfer_protocol::PROTOCOL_VERSION, features: 0, agent: "t".into() };
    receiver.handle(hello.into()).unwrap();
    let tag = xfer_protocol::msg::Tag { key: "project".into(), value: "web".into() };
    let open = Open {
        source_host: "laptop".into(),
        source_path: "/home/a/site".into(),
        tags: vec![tag.clone()],
        ..open(Direction::Push, "site", vec![])
    };
    assert!(receiver.handle(open.into()).is_err());
    let request = seen.lock().unwrap().take().unwrap();
    assert_eq!((request.source_host.as_str(), request.source_path.as_str()), ("laptop", "/home/a/site"));
    assert_eq!(request.tags, vec![tag]);
    assert_eq!(request.path.unwrap().as_bytes(), b"site");
}
