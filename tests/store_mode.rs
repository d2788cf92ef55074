//! Store-only serving (`xfer serve --store PATH`): pushes land in the
//! history store alone, with no mirror tree; every push records one
//! snapshot; a pull rebuilds the latest (or `--at`) snapshot from the
//! store's chunks; a cut push keeps what arrived; two pushes to one tree at
//! once are refused as busy; forget and prune work as on a mirror server.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use proptest::prelude::*;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tempfile::TempDir;
use xfer::chunk::digest_bytes;
use xfer::codec::{Compression, Encoder};
use xfer::fs::history::{History, SnapshotInfo};
use xfer::fs::store::repo::{latest_snapshot, RepoDestination, StoreReader};
use xfer::fs::store::{Destination, Put};
use xfer::manifest::RelPath;
use xfer::plan::PlanOptions;
use xfer::session::pair;
use xfer::session::{OpenRequest, Receiver, Sender, SenderConfig, SessionError};
use xfer::{Access, Client, Identity, PullOptions, PushOptions, Rate, RemoteUrl, Server, ServerOptions};

use crate::util::pair::ModelReader;
use crate::util::{
    assert_same_tree, file_contents, manifest_of, meta, model_from, read_tree, rel, remove_subtree, seeded, Model, Node,
};

// ---------------------------------------------------------------------------
// Over the wire

fn client(tmp: &TempDir, name: &str) -> Client {
    Client::new(Identity::load_or_create(&tmp.path().join("id").join(name)).unwrap())
}

/// A store-only server at `TMP/store` admitting `client` read-write.
fn serve_store(tmp: &TempDir, client: &Client) -> (Server, PathBuf) {
    let store = tmp.path().join("store");
    let access = Access::allow(&[client.fingerprint()]);
    let options =
        ServerOptions::store(store.to_string_lossy().into_owned(), access).audit_log(tmp.path().join("audit.jsonl"));
    let server = Server::start("127.0.0.1:0".parse().unwrap(), &Identity::generate().unwrap(), options).unwrap();
    (server, store)
}

fn url(server: &Server, path: &str) -> RemoteUrl {
    RemoteUrl::parse_checked(&format!("xfer://{}/{path}", server.local_addr().unwrap())).unwrap()
}

fn push_options(tmp: &TempDir) -> PushOptions {
    PushOptions::new(tmp.path().join("state")).busy_wait(Duration::ZERO)
}

fn pull_options(tmp: &TempDir) -> PullOptions {
    PullOptions::new(tmp.path().join("pull-state"))
}

fn set_mtime(path: &Path, secs: i64) {
    let t = filetime::FileTime::from_unix_time(secs, 0);
    filetime::set_symlink_file_times(path, t, t).unwrap();
}

/// A source tree with directories of several modes, a file of several
/// chunks, an empty file, a symlink and a hard link.
fn first_source(src: &Path) {
    fs::create_dir_all(src.join("docs/deep")).unwrap();
    fs::create_dir_all(src.join("private")).unwrap();
    fs::write(src.join("big.bin"), seeded(9 << 20, 1)).unwrap();
    fs::write(src.join("a.txt"), seeded(40_000, 2)).unwrap();
    fs::write(src.join("empty"), b"").unwrap();
    fs::write(src.join("docs/c.txt"), seeded(70_000, 3)).unwrap();
    fs::write(src.join("docs/deep/d.txt"), b"deep").unwrap();
    fs::write(src.join("private/key"), seeded(300, 4)).unwrap();
    fs::set_permissions(src.join("private/key"), fs::Permissions::from_mode(0o600)).unwrap();
    fs::set_permissions(src.join("private"), fs::Permissions::from_mode(0o700)).unwrap();
    std::os::unix::fs::symlink("docs/c.txt", src.join("link")).unwrap();
    fs::hard_link(src.join("a.txt"), src.join("docs/a-again.txt")).unwrap();
    settle_mtimes(src, 1_700_000_000);
}

/// Gives every entry a distinct whole-second mtime, directories last.
pub(crate) fn settle_mtimes(root: &Path, base: i64) {
    let model = read_tree(root);
    for (i, path) in model.keys().enumerate() {
        set_mtime(&path.to_path(root), base + i as i64);
    }
    for (i, (path, node)) in model.iter().enumerate().rev() {
        if matches!(node, Node::Dir { .. }) {
            set_mtime(&path.to_path(root), base + i as i64);
        }
    }
}

/// Edits, a rename, deletes, a changed symlink and a new empty file.
fn edit_source(src: &Path) {
    let mut big = fs::read(src.join("big.bin")).unwrap();
    big[5 << 20..(5 << 20) + 1000].copy_from_slice(&seeded(1000, 9));
    fs::write(src.join("big.bin"), big).unwrap();
    fs::rename(src.join("docs/c.txt"), src.join("c-moved.txt")).unwrap();
    fs::remove_dir_all(src.join("docs/deep")).unwrap();
    fs::remove_file(src.join("link")).unwrap();
    std::os::unix::fs::symlink("c-moved.txt", src.join("link")).unwrap();
    fs::write(src.join("docs/new-empty"), b"").unwrap();
    fs::set_permissions(src.join("a.txt"), fs::Permissions::from_mode(0o640)).unwrap();
    settle_mtimes(src, 1_700_100_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_push_delta_pull_and_pull_at_are_exact() {
    let tmp = TempDir::new().unwrap();
    let owner = client(&tmp, "owner");
    let (server, store) = serve_store(&tmp, &owner);
    let (target, pin) = (url(&server, "site"), Some(server.fingerprint()));
    let src = tmp.path().join("src");
    first_source(&src);
    let v1 = read_tree(&src);
    push_ok(&owner, &src, &target, pin, &push_options(&tmp)).await;
    // No mirror tree: the store holds the repository's layout only.
    let mut names: Vec<_> = fs::read_dir(&store).unwrap().map(|e| e.unwrap().file_name()).collect();
    names.sort();
    assert!(!names.iter().any(|n| n == "site"), "{names:?}");

    let pulled = tmp.path().join("pulled1");
    owner.pull(&target, pin, &pulled, &pull_options(&tmp)).await.unwrap();
    assert_same_tree(&read_tree(&pulled), &v1);
    let a = fs::metadata(pulled.join("a.txt")).unwrap();
    assert_eq!(a.ino(), fs::metadata(pulled.join("docs/a-again.txt")).unwrap().ino(), "the hard link came back");

    // The same tree again: nothing but the listing moves.
    let again = owner.push(&src, &target, pin, &push_options(&tmp)).await.unwrap();
    assert_eq!((again.chunks_sent, again.bytes_sent, again.files_changed), (0, 0, 0), "{again:?}");

    edit_source(&src);
    let v2 = read_tree(&src);
    let delta = owner.push(&src, &target, pin, &push_options(&tmp).delete(true)).await.unwrap();
    assert!(delta.files_deleted >= 2, "{delta:?}");
    // One chunk of the big file changed, and the moved file's bytes are held.
    assert!(delta.bytes_sent < 3 << 20, "{delta:?}");
    let pulled = tmp.path().join("pulled2");
    owner.pull(&target, pin, &pulled, &pull_options(&tmp)).await.unwrap();
    assert_same_tree(&read_tree(&pulled), &v2);

    let snapshots = owner.snapshots(&target, pin).await.unwrap();
    assert_eq!(snapshots.len(), 3, "{snapshots:?}");
    assert!(snapshots.iter().all(|s| !s.partial && s.tree == "/site"), "{snapshots:?}");
    let old = tmp.path().join("old");
    owner.pull(&target, pin, &old, &pull_options(&tmp).at(&snapshots[0].id[..10])).await.unwrap();
    assert_same_tree(&read_tree(&old), &v1);
    server.shutdown().await;
}

/// `Client::push`, which must succeed with every entry.
async fn push_ok(client: &Client, src: &Path, target: &RemoteUrl, pin: Option<xfer::Fingerprint>, o: &PushOptions) {
    let report = client.push(src, target, pin, o).await.unwrap();
    assert!(report.failed.is_empty(), "{report:?}");
}

/// How the first push is cut short.
#[derive(Clone, Copy, Debug)]
enum Cut {
    /// The client cancels it.
    Cancel,
    /// The server closes at once mid-push (its connections cut); another
    /// server on the same store takes the next push.
    ServerClosed,
}

async fn cut_push_resumes(cut: Cut) {
    let tmp = TempDir::new().unwrap();
    let owner = client(&tmp, "owner");
    let (mut server, _) = serve_store(&tmp, &owner);
    let (mut target, mut pin) = (url(&server, "site"), Some(server.fingerprint()));
    let src = tmp.path().join("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("small.txt"), b"small").unwrap();
    let total = 40u64 << 20;
    fs::write(src.join("huge.bin"), seeded(total as usize, 5)).unwrap();
    // A capped push, cut a while into the big file.
    let slow = push_options(&tmp).bwlimit("16M".parse::<Rate>().unwrap());
    let after = Duration::from_millis(1500);
    match cut {
        Cut::Cancel => {
            let cancel = slow.cancel_token();
            let canceller = tokio::spawn(async move {
                tokio::time::sleep(after).await;
                cancel.cancel();
            });
            let first = owner.push(&src, &target, pin, &slow).await;
            canceller.await.unwrap();
            assert!(first.is_err() || first.as_ref().is_ok_and(|r| !r.failed.is_empty()), "{first:?}");
        }
        Cut::ServerClosed => {
            let pushing = owner.push(&src, &target, pin, &slow);
            let closing = async {
                tokio::time::sleep(after).await;
                server.shutdown().await;
            };
            let (first, ()) = tokio::join!(pushing, closing);
            assert!(first.is_err(), "the push ended before it was cut: {first:?}");
            server = serve_store(&tmp, &owner).0;
            (target, pin) = (url(&server, "site"), Some(server.fingerprint()));
        }
    }
    let snapshots = wait_for_snapshots(&owner, &target, pin, 1).await;
    assert!(snapshots[0].partial, "{snapshots:?}");

    let resumed = owner.push(&src, &target, pin, &push_options(&tmp)).await.unwrap();
    assert!(resumed.failed.is_empty(), "{resumed:?}");
    assert!(resumed.bytes_sent < total - (4 << 20), "{cut:?}: resent {} of {total}", resumed.bytes_sent);
    let snapshots = owner.snapshots(&target, pin).await.unwrap();
    assert!(snapshots.len() == 2 && !snapshots[1].partial, "{snapshots:?}");
    let pulled = tmp.path().join("pulled");
    owner.pull(&target, pin, &pulled, &pull_options(&tmp)).await.unwrap();
    assert_same_tree(&read_tree(&pulled), &read_tree(&src));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_cancelled_push_leaves_a_partial_snapshot_and_resends_only_what_is_missing() {
    cut_push_resumes(Cut::Cancel).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_push_cut_by_the_server_leaves_a_partial_snapshot_and_the_next_server_resumes() {
    cut_push_resumes(Cut::ServerClosed).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_hard_links_keep_their_content_when_their_first_name_goes() {
    let tmp = TempDir::new().unwrap();
    let owner = client(&tmp, "owner");
    let (server, _) = serve_store(&tmp, &owner);
    let (target, pin) = (url(&server, "site"), Some(server.fingerprint()));
    let src = tmp.path().join("src");
    fs::create_dir_all(src.join("d")).unwrap();
    fs::write(src.join("a"), seeded(90_000, 8)).unwrap();
    fs::hard_link(src.join("a"), src.join("d/b")).unwrap();
    fs::hard_link(src.join("a"), src.join("d/c")).unwrap();
    settle_mtimes(&src, 1_700_000_000);
    push_ok(&owner, &src, &target, pin, &push_options(&tmp)).await;
    // The first name goes; the other two still share the content.
    fs::remove_file(src.join("a")).unwrap();
    push_ok(&owner, &src, &target, pin, &push_options(&tmp).delete(true)).await;
    let pulled = tmp.path().join("pulled");
    owner.pull(&target, pin, &pulled, &pull_options(&tmp)).await.unwrap();
    assert_same_tree(&read_tree(&pulled), &read_tree(&src));
    let (b, c) = (fs::metadata(pulled.join("d/b")).unwrap(), fs::metadata(pulled.join("d/c")).unwrap());
    assert_eq!(b.ino(), c.ino());
    server.shutdown().await;
}

/// The snapshots once there are `count` (the server records a cut push's
/// as its session ends, just after the client gave up).
async fn wait_for_snapshots(
    owner: &Client,
    target: &RemoteUrl,
    pin: Option<xfer::Fingerprint>,
    count: usize,
) -> Vec<xfer::SnapshotRecord> {
    for _ in 0..100 {
        let snapshots = owner.snapshots(target, pin).await.unwrap();
        if snapshots.len() >= count {
            return snapshots;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("fewer than {count} snapshots");
}

fn dir_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    for entry in fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let meta = entry.metadata().unwrap();
        total += if meta.is_dir() { dir_bytes(&entry.path()) } else { meta.len() };
    }
    total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_forget_and_prune_free_space_and_the_rest_restores_exact() {
    let tmp = TempDir::new().unwrap();
    let owner = client(&tmp, "owner");
    let (server, store) = serve_store(&tmp, &owner);
    let (target, pin) = (url(&server, "site"), Some(server.fingerprint()));
    let src = tmp.path().join("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("keep.txt"), seeded(100_000, 1)).unwrap();
    fs::write(src.join("old.bin"), seeded(6 << 20, 2)).unwrap();
    push_ok(&owner, &src, &target, pin, &push_options(&tmp)).await;
    fs::write(src.join("old.bin"), seeded(6 << 20, 3)).unwrap();
    push_ok(&owner, &src, &target, pin, &push_options(&tmp)).await;
    let v2 = read_tree(&src);
    let snapshots = owner.snapshots(&target, pin).await.unwrap();
    assert_eq!(snapshots.len(), 2);
    let before = dir_bytes(&store.join("packs"));
    assert!(before > 12 << 20, "{before}");
    let forgotten = owner.forget(&target, pin, &[snapshots[0].id.clone()]).await.unwrap();
    assert_eq!(forgotten.forgotten, 1);
    // Two phases: the first prune takes packs out of the index, a later one deletes them.
    let first = owner.prune(&target, pin).await.unwrap();
    let second = owner.prune(&target, pin).await.unwrap();
    let freed = first.bytes_freed + second.bytes_freed;
    let after = dir_bytes(&store.join("packs"));
    assert!(freed >= 5 << 20 && after < before - (5 << 20), "freed {freed}, {before} -> {after}");
    let pulled = tmp.path().join("pulled");
    owner.pull(&target, pin, &pulled, &pull_options(&tmp)).await.unwrap();
    assert_same_tree(&read_tree(&pulled), &v2);
    server.shutdown().await;
}

/// A store-only server where `a` may write `/a` only and `b` `/b` only.
fn serve_two(tmp: &TempDir, a: &Client, b: &Client, across_clients: bool) -> Server {
    let store = tmp.path().join("store");
    let grants = format!("{} rw /a\n{} rw /b\n", a.fingerprint(), b.fingerprint());
    let access = Access::parse(&grants, "grants").unwrap();
    let options =
        ServerOptions::store(store.to_string_lossy().into_owned(), access).dedup_across_clients(across_clients);
    Server::start("127.0.0.1:0".parse().unwrap(), &Identity::generate().unwrap(), options).unwrap()
}

/// A pushes a tree to /a, then B (another key) the same tree to /b: what B
/// sends, and B's pull of /b.
async fn second_client_pushes_the_same_tree(across_clients: bool) -> (xfer::Report, xfer::Report) {
    let tmp = TempDir::new().unwrap();
    let (a, b) = (client(&tmp, "a"), client(&tmp, "b"));
    let server = serve_two(&tmp, &a, &b, across_clients);
    let pin = Some(server.fingerprint());
    let src = tmp.path().join("src");
    first_source(&src);
    let options = |who: &str| PushOptions::new(tmp.path().join("state").join(who)).busy_wait(Duration::ZERO);
    let first = a.push(&src, &url(&server, "a"), pin, &options("a")).await.unwrap();
    let second = b.push(&src, &url(&server, "b"), pin, &options("b")).await.unwrap();
    assert!(first.failed.is_empty() && second.failed.is_empty(), "{first:?} {second:?}");
    let pulled = tmp.path().join("pulled");
    b.pull(&url(&server, "b"), pin, &pulled, &pull_options(&tmp)).await.unwrap();
    assert_same_tree(&read_tree(&pulled), &read_tree(&src));
    server.shutdown().await;
    (first, second)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_a_client_sends_every_chunk_another_client_stored() {
    let (first, second) = second_client_pushes_the_same_tree(false).await;
    assert!(first.bytes_sent > 9 << 20, "{first:?}");
    // Nothing of A's counts as B's: B proves it has every byte.
    assert_eq!((second.chunks_sent, second.bytes_sent), (first.chunks_sent, first.bytes_sent), "{second:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_dedup_across_clients_sends_nothing_already_stored() {
    let (first, second) = second_client_pushes_the_same_tree(true).await;
    assert!(first.bytes_sent > 9 << 20, "{first:?}");
    assert_eq!((second.chunks_sent, second.bytes_sent), (0, 0), "{second:?}");
}

#[test]
fn serve_needs_exactly_one_of_root_and_store() {
    let tmp = TempDir::new().unwrap();
    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_xfer"))
            .arg("serve")
            .args(args)
            .args(["--listen", "127.0.0.1:0", "--allow", "xfer:00"])
            .env("XFER_CONFIG_DIR", tmp.path().join("cfg"))
            .output()
            .unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let root = tmp.path().join("root");
    let store = tmp.path().join("store");
    let both = run(&["--root", root.to_str().unwrap(), "--store", store.to_str().unwrap()]);
    assert!(both.contains("--root and --store exclude each other"), "{both}");
    let neither = run(&[]);
    assert!(neither.contains("give --root DIR") && neither.contains("--store PATH"), "{neither}");
    assert!(!root.exists() && !store.exists());
}

// ---------------------------------------------------------------------------
// The destination itself

fn info(tree: &str) -> SnapshotInfo {
    SnapshotInfo { tree: tree.into(), client: "xfer:test".into(), ..SnapshotInfo::default() }
}

fn repo(store: &Path, tree: &str) -> xfer::Result<RepoDestination> {
    RepoDestination::open(History::open(store)?, &store.to_string_lossy(), info(tree))
}

#[test]
fn second_push_to_the_same_tree_is_busy_until_the_first_ends() {
    let tmp = TempDir::new().unwrap();
    let store = tmp.path().join("store");
    let first = repo(&store, "/site").unwrap();
    let err = repo(&store, "/site").err().expect("a second push to /site opened");
    assert!(err.is_busy(), "{err}");
    // Another tree of the same store is free.
    let other = repo(&store, "/other").unwrap();
    drop((first, other));
    repo(&store, "/site").unwrap();
}

#[test]
fn interrupted_file_keeps_its_chunks_for_the_next_push() {
    let tmp = TempDir::new().unwrap();
    let store = tmp.path().join("store");
    let data = seeded(6 << 20, 11);
    let digest = digest_bytes(&data);
    assert!(digest.chunks.len() >= 4, "{} chunks", digest.chunks.len());
    let path = rel(b"big");
    let mut encoder = Encoder::new(Compression::Auto).unwrap();
    let mut dest = repo(&store, "/").unwrap();
    dest.refresh(false).unwrap();
    let needs = dest.begin_file(0, &path, &meta(0o644, 1), &digest).unwrap();
    assert_eq!(needs.len(), digest.chunks.len());
    let half = needs.len() / 2;
    for need in &needs[..half] {
        let start = need.offset as usize;
        let encoded = encoder.encode(&data[start..start + need.chunk.len as usize]);
        assert!(matches!(dest.put_chunk(0, need.need, &encoded, false).unwrap(), Put::Stored(_)));
    }
    // The connection is cut: the session ends unfinished.
    let report = dest.finish(false).unwrap();
    assert_eq!(report.failed.len(), 1);
    let history = History::open(&store).unwrap();
    let latest = latest_snapshot(&history, "/").unwrap().unwrap();
    assert!(latest.partial && latest.files == 0, "{latest:?}");
    drop(history);

    let mut dest = repo(&store, "/").unwrap();
    dest.refresh(false).unwrap();
    let ids: Vec<_> = digest.chunks.iter().map(|c| c.id).collect();
    let held = dest.has_chunks(&ids).unwrap();
    assert_eq!(held.iter().filter(|&&h| h).count(), half, "{held:?}");
    let again = dest.begin_file(0, &path, &meta(0o644, 1), &digest).unwrap();
    assert_eq!(again.len(), needs.len() - half);
}

/// A push killed mid-way (no end, no drop: as kill -9 leaves it) has
/// written full packs; the chunks in them count as the client's own for
/// its next push, which sends only what was still buffered.
#[test]
fn killed_push_keeps_its_written_packs_for_the_next_push() {
    let tmp = TempDir::new().unwrap();
    let store = tmp.path().join("store");
    let data = seeded(40 << 20, 12);
    let digest = digest_bytes(&data);
    let path = rel(b"big");
    let mut encoder = Encoder::new(Compression::Raw).unwrap();
    let mut dest = repo(&store, "/site").unwrap();
    dest.refresh(false).unwrap();
    let needs = dest.begin_file(0, &path, &meta(0o644, 1), &digest).unwrap();
    for need in &needs {
        let start = need.offset as usize;
        let encoded = encoder.encode(&data[start..start + need.chunk.len as usize]);
        dest.put_chunk(0, need.need, &encoded, false).unwrap();
    }
    // Killed: neither finish nor Drop runs (the tree stays claimed in this
    // process, as a dead process's would not matter: push to another tree).
    std::mem::forget(dest);

    let mut next = repo(&store, "/elsewhere").unwrap();
    next.refresh(false).unwrap();
    let ids: Vec<_> = digest.chunks.iter().map(|c| c.id).collect();
    let held: u64 = digest
        .chunks
        .iter()
        .zip(next.has_chunks(&ids).unwrap())
        .filter(|(_, h)| *h)
        .map(|(c, _)| u64::from(c.len))
        .sum();
    // Two full packs of 16 MiB were written; the rest was only buffered.
    assert!(held >= 32 << 20, "held {held} of {} bytes", data.len());
    assert!(held < data.len() as u64, "what was only buffered cannot be held");
}

/// A push by `client` to `tree` of the store `url` names (a directory, or
/// an object store).
fn repo_of(url: &str, tree: &str, client: &str) -> RepoDestination {
    let info = SnapshotInfo { tree: tree.into(), client: client.into(), ..SnapshotInfo::default() };
    RepoDestination::open(History::open_url(url).unwrap(), url, info).unwrap()
}

/// `client` pushes one file of `data` to `tree`, all of it.
fn push_file(store: &str, tree: &str, client: &str, data: &[u8]) {
    let digest = digest_bytes(data);
    let mut dest = repo_of(store, tree, client);
    dest.refresh(false).unwrap();
    let mut encoder = Encoder::new(Compression::Auto).unwrap();
    for need in dest.begin_file(0, &rel(b"f"), &meta(0o644, 1), &digest).unwrap() {
        let start = need.offset as usize;
        dest.put_chunk(0, need.need, &encoder.encode(&data[start..start + need.chunk.len as usize]), false).unwrap();
    }
    dest.complete_file(0).unwrap();
    assert!(dest.finish(true).unwrap().failed.is_empty());
}

#[test]
fn naming_chunks_another_client_sent_never_gets_their_content() {
    let tmp = TempDir::new().unwrap();
    naming_chunks_of_another(tmp.path().join("store").to_str().unwrap());
}

#[test]
fn naming_chunks_another_client_sent_never_gets_their_content_on_an_object_store() {
    // The clients' lists live in the store: a node with no local state
    // (another process) keeps them apart all the same.
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    naming_chunks_of_another(&format!("memory:isolation-{}-{nanos}", std::process::id()));
}

fn naming_chunks_of_another(store: &str) {
    let data = seeded(3 << 20, 13);
    let digest = digest_bytes(&data);
    let ids: Vec<_> = digest.chunks.iter().map(|c| c.id).collect();
    assert!(ids.len() >= 3, "{} chunks", ids.len());
    push_file(store, "/a", "xfer:a", &data);

    // B learned the file's chunk ids: the store says it holds none of them
    // and asks B for every one.
    let mut dest = repo_of(store, "/b", "xfer:b");
    dest.refresh(false).unwrap();
    assert!(dest.has_chunks(&ids).unwrap().iter().all(|&h| !h));
    let needs = dest.begin_file(0, &rel(b"stolen"), &meta(0o644, 1), &digest).unwrap();
    assert_eq!(needs.len(), ids.len());
    assert!(!dest.file_ready(0) && dest.complete_file(0).is_err());
    // B cannot send them: the file fails and /b's snapshot has no file.
    let report = dest.finish(true).unwrap();
    assert_eq!(report.failed.len(), 1, "{report:?}");
    let history = History::open_url(store).unwrap();
    let latest = latest_snapshot(&history, "/b").unwrap().unwrap();
    assert!(latest.partial && history.load_tree(&latest, &RelPath::root()).unwrap().is_empty(), "{latest:?}");
    drop(history);

    // A's own chunks are A's in any tree; a tree's chunks are its readers'
    // (B pushing to /a, which it may then read); and everyone's with
    // dedup across clients.
    let held = |tree: &str, client: &str, across: bool| {
        let mut dest = repo_of(store, tree, client).across_clients(across);
        dest.refresh(false).unwrap();
        dest.has_chunks(&ids).unwrap()
    };
    assert!(held("/elsewhere", "xfer:a", false).iter().all(|&h| h));
    assert!(held("/a", "xfer:b", false).iter().all(|&h| h));
    assert!(held("/b", "xfer:b", true).iter().all(|&h| h));
    assert!(held("/b", "xfer:b", false).iter().all(|&h| !h));
}

/// Every push leaves a list of the chunks its client sent, and every push
/// start reads them all: past a few dozen they are merged into one, and the
/// client's chunks all still count as its own.
#[test]
fn a_clients_chunk_lists_are_merged_as_they_pile_up() {
    let tmp = TempDir::new().unwrap();
    let store = tmp.path().join("store");
    let url = store.to_str().unwrap();
    let mut ids = Vec::new();
    for night in 0..40u64 {
        let data = seeded(20_000, 7000 + night);
        ids.extend(digest_bytes(&data).chunks.iter().map(|c| c.id));
        push_file(url, &format!("/t{night}"), "xfer:a", &data);
    }
    let lists = || {
        let owners = fs::read_dir(store.join("owners")).unwrap().next().unwrap().unwrap().path();
        fs::read_dir(owners).unwrap().count()
    };
    assert!(lists() <= 17, "{} lists after 40 pushes", lists());
    // A push to a new tree is spared every chunk the client ever sent.
    let mut dest = repo_of(url, "/elsewhere", "xfer:a");
    dest.refresh(false).unwrap();
    assert!(dest.has_chunks(&ids).unwrap().iter().all(|&held| held), "a merged list lost chunks");
    drop(dest);
    let mut other = repo_of(url, "/elsewhere", "xfer:b");
    other.refresh(false).unwrap();
    assert!(other.has_chunks(&ids).unwrap().iter().all(|&held| !held), "another client got them");
}

/// Pushes `data` as file `f` of `/` through a fresh destination on the
/// object store `url` (packs of 1 MiB); what checking the file read back.
fn push_and_count_reads(url: &str, data: &[u8]) -> (u64, u64, usize) {
    let mut history = History::open_url(url).unwrap();
    history.set_pack_target(1 << 20);
    let mut dest = RepoDestination::open(history, url, info("/")).unwrap();
    dest.refresh(false).unwrap();
    let digest = digest_bytes(data);
    let mut encoder = Encoder::new(Compression::Auto).unwrap();
    let needs = dest.begin_file(0, &rel(b"f"), &meta(0o644, 1), &digest).unwrap();
    for need in &needs {
        let start = need.offset as usize;
        dest.put_chunk(0, need.need, &encoder.encode(&data[start..start + need.chunk.len as usize]), false).unwrap();
    }
    let before = dest.meter().requests();
    dest.complete_file(0).unwrap();
    let after = dest.meter().requests();
    assert!(dest.finish(true).unwrap().failed.is_empty());
    (after.gets - before.gets, after.bytes_got - before.bytes_got, digest.chunks.len() - needs.len())
}

/// The whole-file check on a store reads back only the chunks the store
/// held before the push (in runs of ranged reads), never those that just
/// arrived: on a bucket every read is billed.
#[test]
fn a_file_check_reads_back_only_what_the_store_held() {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    let url = format!("memory:file-check-{}-{nanos}", std::process::id());
    let mut data = seeded(8 << 20, 21);
    let (gets, got, held) = push_and_count_reads(&url, &data);
    assert_eq!((gets, got, held), (0, 0, 0), "a new file read back");

    data[4 << 20..(4 << 20) + 1000].fill(7);
    let (gets, got, held) = push_and_count_reads(&url, &data);
    let chunks = digest_bytes(&data).chunks.len();
    eprintln!("{chunks} chunks, {held} held: {gets} reads, {got} bytes");
    assert!(held + 4 >= chunks && held < chunks, "{held} of {chunks} held");
    // 8 MiB in packs of 1 MiB: a read or two per pack, not one per chunk.
    assert!(gets <= 18 && (gets as usize) < held, "{gets} reads for {held} chunks held");
    assert!(got <= 9 << 20, "{got} bytes read back");
}

#[test]
fn a_file_whose_chunks_do_not_add_up_is_not_accepted() {
    let tmp = TempDir::new().unwrap();
    let store = tmp.path().join("store");
    let data = seeded(200_000, 12);
    let mut digest = digest_bytes(&data);
    // The sender promises another whole-file hash than its chunks give.
    digest.hash = digest_bytes(b"something else").hash;
    let mut dest = repo(&store, "/").unwrap();
    dest.refresh(false).unwrap();
    let needs = dest.begin_file(0, &rel(b"f"), &meta(0o644, 1), &digest).unwrap();
    let mut encoder = Encoder::new(Compression::Auto).unwrap();
    for need in &needs {
        let start = need.offset as usize;
        let encoded = encoder.encode(&data[start..start + need.chunk.len as usize]);
        dest.put_chunk(0, need.need, &encoded, false).unwrap();
    }
    let err = dest.complete_file(0).unwrap_err();
    assert!(matches!(err, xfer::Error::FileMismatch { .. }) && err.is_per_entry(), "{err}");
    dest.finish(true).unwrap();
    let history = History::open(&store).unwrap();
    let latest = latest_snapshot(&history, "/").unwrap().unwrap();
    assert!(history.load_tree(&latest, &RelPath::root()).unwrap().is_empty());
}

// ---------------------------------------------------------------------------
// A property: after each push, the latest snapshot is the source

/// A receiver into the store's tree `/`, opened once.
fn receiver_into(store: &Path) -> Receiver<RepoDestination> {
    let mut dest = Some(repo(store, "/").unwrap());
    Receiver::new(Box::new(move |_: &OpenRequest| {
        dest.take().ok_or_else(|| SessionError::Protocol("opened twice".into()))
    }))
}

/// The latest snapshot of `/` as a model, every file read from the store.
fn latest_model(store: &Path) -> Model {
    let history = History::open(store).unwrap();
    let snapshot = latest_snapshot(&history, "/").unwrap().unwrap();
    let manifest = history.load_tree(&snapshot, &RelPath::root()).unwrap();
    let mut reader = StoreReader::new(History::open(store).unwrap());
    model_from(&manifest, &mut reader)
}

/// Makes `dir` (and its parents) directories of the model.
fn ensure_dir(model: &mut Model, dir: &str) -> RelPath {
    let mut at = RelPath::root();
    for part in dir.split('/') {
        at = at.join(part.as_bytes()).unwrap();
        if !matches!(model.get(&at), Some(Node::Dir { .. })) {
            remove_subtree(model, &at);
            model.insert(at.clone(), Node::Dir { mode: 0o755, mtime: 1_600_000_000 });
        }
    }
    at
}

/// One round of edits: files written (empty ones too), grown, moved,
/// deleted, symlinks, directories replaced by files and back.
fn edit(model: &mut Model, rng: &mut SmallRng, round: i64) {
    for _ in 0..rng.random_range(1..5) {
        let dir = ensure_dir(model, ["a", "b", "a/c"][rng.random_range(0..3)]);
        let path = dir.join(format!("f{}", rng.random_range(0..6)).as_bytes()).unwrap();
        let mtime = 1_600_000_000 + round;
        let paths: Vec<RelPath> = model.keys().cloned().collect();
        let pick = paths.get(rng.random_range(0..paths.len())).cloned();
        match rng.random_range(0..7) {
            0 | 1 => {
                remove_subtree(model, &path);
                let len = if rng.random_bool(0.2) { 0 } else { rng.random_range(1..150_000) };
                let data = seeded(len, rng.random_range(0..4));
                model.insert(path, Node::File { data, mode: [0o644, 0o600][rng.random_range(0..2)], mtime });
            }
            2 => {
                if let Some(Node::File { data, mtime: t, .. }) = pick.as_ref().and_then(|p| model.get_mut(p)) {
                    data.extend(seeded(rng.random_range(1..30_000), round as u64));
                    *t += 1;
                }
            }
            3 => {
                if let Some(p) = pick {
                    remove_subtree(model, &p);
                }
            }
            4 => {
                remove_subtree(model, &path);
                model.insert(path, Node::Symlink { target: format!("../t{round}").into_bytes(), mtime });
            }
            5 => {
                if let Some(from) = pick.filter(|p| matches!(model.get(p), Some(Node::File { .. }))) {
                    let node = model.remove(&from).unwrap_or(Node::Dir { mode: 0o755, mtime });
                    remove_subtree(model, &path);
                    model.insert(path, node);
                }
            }
            _ => {
                let top = rel(["a", "b"][rng.random_range(0..2)].as_bytes());
                remove_subtree(model, &top);
                if rng.random_bool(0.5) {
                    model.insert(top, Node::File { data: seeded(10, round as u64), mode: 0o644, mtime });
                }
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 10, ..ProptestConfig::default() })]

    #[test]
    fn every_push_leaves_the_source_as_the_latest_snapshot(seed in any::<u64>(), rounds in 2usize..6) {
        let scratch = TempDir::new().unwrap();
        let store = scratch.path().join("store");
        let mut rng = SmallRng::seed_from_u64(seed);
        let mut model = Model::new();
        for round in 0..rounds {
            edit(&mut model, &mut rng, round as i64);
            let mut config = SenderConfig::new(manifest_of(&model), ModelReader(file_contents(&model)), Encoder::new(Compression::Auto).unwrap());
            config.plan = PlanOptions { delete: true, ..Default::default() };
            let mut sender = Sender::new(config);
            let mut receiver = receiver_into(&store);
            pair::run(&mut sender, &mut receiver).unwrap();
            prop_assert!(sender.is_finished() && receiver.is_finished(), "the session stalled");
            prop_assert!(receiver.failed().is_empty(), "{:?}", receiver.failed());
            assert_same_tree(&latest_model(&store), &model);
        }
        let history = History::open(&store).unwrap();
        let snapshots = history.snapshots().unwrap();
        prop_assert_eq!(snapshots.len(), rounds);
        prop_assert!(snapshots.iter().all(|s| !s.partial));
    }
}

// ---------------------------------------------------------------------------
// A property: a client is spared exactly the chunks of its tree's latest
// snapshot and those it sent itself

/// One push of the property below.
#[derive(Clone, Debug)]
struct Step {
    client: usize,
    tree: usize,
    /// Which of the shared segments the file is made of, in order.
    parts: Vec<usize>,
    /// Cut after sending half of what was asked.
    cut: bool,
}

fn step() -> impl Strategy<Value = Step> {
    (0..2usize, 0..3usize, prop::collection::vec(0..4usize, 1..4), any::<bool>())
        .prop_map(|(client, tree, parts, cut)| Step { client, tree, parts, cut })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

    #[test]
    fn a_push_is_spared_only_its_trees_and_its_own_chunks(steps in prop::collection::vec(step(), 1..8)) {
        let scratch = TempDir::new().unwrap();
        let store = scratch.path().join("store");
        let store = store.to_str().unwrap();
        let segments: Vec<Vec<u8>> = (0..4).map(|k| seeded(150_000, 40 + k)).collect();
        let (clients, trees) = (["xfer:a", "xfer:b"], ["/a", "/b", "/c"]);
        let mut sent: Vec<std::collections::HashSet<_>> = vec![Default::default(); 2];
        let mut in_tree: Vec<std::collections::HashSet<_>> = vec![Default::default(); 3];
        let mut encoder = Encoder::new(Compression::Auto).unwrap();
        for s in &steps {
            let data: Vec<u8> = s.parts.iter().flat_map(|&p| segments[p].iter().copied()).collect();
            let digest = digest_bytes(&data);
            let ids: Vec<_> = digest.chunks.iter().map(|c| c.id).collect();
            let mut dest = repo_of(store, trees[s.tree], clients[s.client]);
            dest.refresh(false).unwrap();
            let expected: Vec<bool> = ids.iter().map(|id| in_tree[s.tree].contains(id) || sent[s.client].contains(id)).collect();
            prop_assert_eq!(dest.has_chunks(&ids).unwrap(), expected.clone());
            let needs = dest.begin_file(0, &rel(b"f"), &meta(0o644, 1), &digest).unwrap();
            let unheld: std::collections::HashSet<_> = ids.iter().zip(&expected).filter(|(_, &h)| !h).map(|(id, _)| *id).collect();
            prop_assert_eq!(needs.len(), unheld.len());
            let send = if s.cut { needs.len() / 2 } else { needs.len() };
            for need in &needs[..send] {
                let start = need.offset as usize;
                dest.put_chunk(0, need.need, &encoder.encode(&data[start..start + need.chunk.len as usize]), false).unwrap();
                sent[s.client].insert(need.chunk.id);
            }
            if s.cut && send < needs.len() {
                dest.finish(false).unwrap();
            } else {
                dest.complete_file(0).unwrap();
                prop_assert!(dest.finish(true).unwrap().failed.is_empty());
                in_tree[s.tree] = ids.iter().copied().collect();
            }
        }
    }
}
