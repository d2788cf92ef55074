//! Hard-linked files: copied, link groups inside the tree kept as hard links
//! on the receiver, each group's data sent once, locally and through a
//! server; a receiver never writes through a link into another name.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use proptest::prelude::*;
use tempfile::TempDir;
use xfer::codec::Compression;
use xfer::net::access::Access;
use xfer::net::admission::serve;
use xfer::net::identity::Identity;
use xfer::net::served::ServeConfig;
use xfer::net::{server_endpoint, Tuning};
use xfer::usecase::memory::{push_local, PushOptions, Stats};
use xfer::usecase::{pull::pull, push::push, RemoteUrl, TransferOptions};

use crate::util::{assert_same_tree, read_tree, seeded};

/// The regular files under `root`, grouped by inode: each set is one file's
/// names (relative paths), so equal partitions mean equal link groups.
fn link_groups(root: &Path) -> BTreeSet<BTreeSet<String>> {
    fn walk(root: &Path, dir: &Path, groups: &mut BTreeMap<(u64, u64), BTreeSet<String>>) {
        for dirent in fs::read_dir(dir).unwrap() {
            let path = dirent.unwrap().path();
            let meta = fs::symlink_metadata(&path).unwrap();
            if meta.is_dir() {
                walk(root, &path, groups);
            } else if meta.is_file() {
                let name = path.strip_prefix(root).unwrap().to_string_lossy().into_owned();
                groups.entry((meta.dev(), meta.ino())).or_default().insert(name);
            }
        }
    }
    let mut groups = BTreeMap::new();
    walk(root, root, &mut groups);
    groups.into_values().collect()
}

fn ino(path: &Path) -> u64 {
    fs::symlink_metadata(path).unwrap().ino()
}

fn mode(path: &Path) -> u32 {
    fs::symlink_metadata(path).unwrap().mode() & 0o7777
}

/// Content and link groups of `dest` equal `src`'s.
fn assert_mirrors(src: &Path, dest: &Path) {
    assert_same_tree(&read_tree(dest), &read_tree(src));
    assert_eq!(link_groups(dest), link_groups(src));
}

struct Local {
    tmp: TempDir,
    src: PathBuf,
    dest: PathBuf,
}

impl Local {
    fn new() -> Local {
        let tmp = TempDir::new().unwrap();
        let (src, dest) = (tmp.path().join("src"), tmp.path().join("dest"));
        fs::create_dir(&src).unwrap();
        Local { tmp, src, dest }
    }

    fn push(&self, delete: bool) -> Stats {
        let options = PushOptions {
            delete,
            checksum: false,
            compression: Compression::Auto,
            state_dir: self.tmp.path().join("state"),
            filter: None,
        };
        push_local(&self.src, &self.dest, &options).unwrap()
    }
}

const BIG: usize = 3 << 20;

/// `big` with two more names (one in another directory), `outside` whose
/// other name is outside the tree, and a plain file.
fn linked_tree(tmp: &Path, src: &Path) {
    fs::create_dir_all(src.join("a")).unwrap();
    fs::create_dir_all(src.join("b")).unwrap();
    fs::write(src.join("a/big"), seeded(BIG, 1)).unwrap();
    fs::hard_link(src.join("a/big"), src.join("a/big2")).unwrap();
    fs::hard_link(src.join("a/big"), src.join("b/big3")).unwrap();
    fs::write(tmp.join("elsewhere"), seeded(100_000, 2)).unwrap();
    fs::hard_link(tmp.join("elsewhere"), src.join("outside")).unwrap();
    fs::write(src.join("plain"), b"plain").unwrap();
}

#[test]
fn local_push_copies_hard_links_and_sends_data_once() {
    let l = Local::new();
    linked_tree(l.tmp.path(), &l.src);
    let stats = l.push(true);
    assert!(stats.skipped.is_empty(), "{:?}", stats.skipped);
    assert_mirrors(&l.src, &l.dest);
    let big = ino(&l.dest.join("a/big"));
    assert_eq!(ino(&l.dest.join("a/big2")), big);
    assert_eq!(ino(&l.dest.join("b/big3")), big);
    assert_eq!(fs::metadata(l.dest.join("a/big")).unwrap().nlink(), 3);
    // A link crossing out of the tree is an ordinary file on the receiver.
    assert_eq!(fs::metadata(l.dest.join("outside")).unwrap().nlink(), 1);
    // One file per group is written, and its data travels once.
    assert_eq!(stats.files_changed, 3, "{stats:?}");
    let data = (BIG + 100_000 + 5) as u64;
    assert!(stats.bytes_sent >= data && stats.bytes_sent < data + data / 50, "{stats:?}");

    // Nothing changed: nothing to do, links stay.
    let again = l.push(true);
    assert_eq!((again.files_changed, again.bytes_sent), (0, 0), "{again:?}");
    assert!(again.skipped.is_empty(), "{:?}", again.skipped);
    assert_eq!(ino(&l.dest.join("b/big3")), big);
}

/// Groups split, joined, rewritten and re-moded between pushes, with and
/// without `--delete`; a name the receiver shares with a file outside its
/// tree (an older snapshot made with `cp -al`) is never written through.
#[test]
fn local_link_groups_follow_the_source() {
    for delete in [false, true] {
        let l = Local::new();
        let (src, dest) = (&l.src, &l.dest);
        fs::write(src.join("x"), seeded(200_000, 3)).unwrap();
        fs::hard_link(src.join("x"), src.join("y")).unwrap();
        fs::write(src.join("z"), seeded(150_000, 4)).unwrap();
        l.push(delete);
        assert_mirrors(src, dest);
        assert_eq!(ino(&dest.join("x")), ino(&dest.join("y")));

        // An older snapshot shares every file with the receiver's tree.
        let snap = l.tmp.path().join("snap");
        fs::create_dir(&snap).unwrap();
        for name in ["x", "z"] {
            fs::hard_link(dest.join(name), snap.join(name)).unwrap();
        }
        let snap_x = fs::read(snap.join("x")).unwrap();

        // Split: y becomes a file of its own with the same content.
        fs::remove_file(src.join("y")).unwrap();
        fs::write(src.join("y"), seeded(200_000, 3)).unwrap();
        // Join: z becomes another name of x.
        fs::remove_file(src.join("z")).unwrap();
        fs::hard_link(src.join("x"), src.join("z")).unwrap();
        let stats = l.push(delete);
        assert!(stats.skipped.is_empty(), "{:?}", stats.skipped);
        assert_mirrors(src, dest);
        assert_ne!(ino(&dest.join("x")), ino(&dest.join("y")));
        assert_eq!(ino(&dest.join("x")), ino(&dest.join("z")));

        // Rewrite the group in place and change its mode: both names follow.
        fs::write(src.join("x"), seeded(210_000, 5)).unwrap();
        fs::set_permissions(src.join("x"), fs::Permissions::from_mode(0o600)).unwrap();
        l.push(delete);
        assert_mirrors(src, dest);
        assert_eq!(mode(&dest.join("z")), 0o600);

        // Mode only: the receiver's names change, the snapshot's do not.
        fs::hard_link(dest.join("x"), snap.join("x-now")).unwrap();
        fs::set_permissions(src.join("x"), fs::Permissions::from_mode(0o640)).unwrap();
        let stats = l.push(delete);
        assert!(stats.skipped.is_empty(), "{:?}", stats.skipped);
        assert_mirrors(src, dest);
        assert_eq!(mode(&dest.join("z")), 0o640);
        assert_eq!(mode(&snap.join("x-now")), 0o600, "a metadata change went through a link out of the tree");
        assert_eq!(fs::read(snap.join("x")).unwrap(), snap_x, "the snapshot's data changed");
        assert_eq!(fs::read(snap.join("x-now")).unwrap(), seeded(210_000, 5));

        // A name leaves the group: gone with --delete, kept whole without.
        fs::remove_file(src.join("z")).unwrap();
        l.push(delete);
        if delete {
            assert_mirrors(src, dest);
        } else {
            assert_eq!(fs::read(dest.join("z")).unwrap(), seeded(210_000, 5));
        }
        assert_eq!(fs::read(dest.join("x")).unwrap(), seeded(210_000, 5));
    }
}

struct Server {
    id: Identity,
    addr: std::net::SocketAddr,
    root: PathBuf,
}

fn start_server(tmp: &TempDir, client: &Identity) -> Server {
    let id = Identity::generate().unwrap();
    let root = tmp.path().join("served");
    fs::create_dir(&root).unwrap();
    let endpoint = server_endpoint("127.0.0.1:0".parse().unwrap(), &id, Tuning::default()).unwrap();
    let addr = endpoint.local_addr().unwrap();
    let access = Access::allow(&[client.fingerprint()]);
    tokio::spawn(serve(endpoint, Arc::new(ServeConfig::new(root.clone(), access))));
    Server { id, addr, root }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_push_and_pull_keep_link_groups() {
    let tmp = TempDir::new().unwrap();
    let client = Identity::generate().unwrap();
    let server = start_server(&tmp, &client);
    let src = tmp.path().join("src");
    linked_tree(tmp.path(), &src);
    let url = RemoteUrl { authority: server.addr.to_string(), path: "site".into() };
    let pin = Some(server.id.fingerprint());
    for delete in [false, true] {
        let options = TransferOptions {
            delete,
            compression: Compression::Auto,
            busy_wait: std::time::Duration::from_secs(10),
            ..TransferOptions::new(tmp.path().join("client-state"))
        };
        let dest = server.root.join("site");
        let first = push(&src, &url, &client, pin, &options).await.unwrap();
        assert!(first.failed.is_empty(), "{:?}", first.failed);
        assert_mirrors(&src, &dest);
        if !delete {
            assert_eq!(first.files_changed, 3, "{first:?}");
            let data = (BIG + 100_000 + 5) as u64;
            assert!(first.bytes_sent >= data && first.bytes_sent < data + data / 50, "{first:?}");
        }

        let noop = push(&src, &url, &client, pin, &options).await.unwrap();
        assert!(noop.failed.is_empty(), "{:?}", noop.failed);
        assert_eq!((noop.files_changed, noop.bytes_sent), (0, 0), "{noop:?}");

        // Split big3 off, join plain to big2's group, then push.
        fs::remove_file(src.join("b/big3")).unwrap();
        fs::write(src.join("b/big3"), seeded(BIG, 1)).unwrap();
        fs::remove_file(src.join("plain")).unwrap();
        fs::hard_link(src.join("a/big2"), src.join("plain")).unwrap();
        let changed = push(&src, &url, &client, pin, &options).await.unwrap();
        assert!(changed.failed.is_empty(), "{:?}", changed.failed);
        assert_mirrors(&src, &dest);
        assert!(changed.bytes_sent < 100_000, "the split file's data is on the server already: {changed:?}");

        // A pull into an empty directory restores the groups.
        let restored = tmp.path().join(format!("restored-{delete}"));
        let back = pull(&url, &restored, &client, pin, &options).await.unwrap();
        assert!(back.failed.is_empty(), "{:?}", back.failed);
        assert_mirrors(&src, &restored);

        // Back to the first shape for the next round.
        fs::remove_dir_all(&src).unwrap();
        fs::remove_file(tmp.path().join("elsewhere")).unwrap();
        linked_tree(tmp.path(), &src);
    }
}

/// A link whose target is missing or does not hold the content named
/// fails alone, as a file does; the rest of the plan is applied.
#[test]
fn a_link_to_the_wrong_content_fails_alone() {
    use xfer::chunk::digest_bytes;
    use xfer::fs::store::MirrorStore;
    use xfer_protocol::{msg, Message};

    let tmp = TempDir::new().unwrap();
    let dest = tmp.path().join("dest");
    fs::create_dir(&dest).unwrap();
    fs::write(dest.join("t"), b"target").unwrap();
    fs::write(dest.join("l"), b"old l").unwrap();
    let state = tmp.path().join("state.redb");
    let mut receiver = crate::util::pair::receiver_into(MirrorStore::open(&dest, &state).unwrap());
    let (right, wrong) = (digest_bytes(b"target"), digest_bytes(b"other"));
    let link = |path: &str, target: &str, digest: &xfer::chunk::FileDigest| {
        Message::Link(msg::Link {
            path: path.as_bytes().to_vec(),
            target: target.as_bytes().to_vec(),
            size: digest.size,
            hash: digest.hash.0,
        })
    };
    let hello = msg::Hello { version: xfer_protocol::PROTOCOL_VERSION, features: 0, agent: "test".into() };
    let open = crate::util::pair::open_root_push();
    for message in [
        Message::Hello(hello),
        Message::Open(open),
        link("l", "t", &wrong),
        link("m", "missing", &right),
        link("ok", "t", &right),
        Message::Done(msg::Done),
    ] {
        receiver.handle(message).unwrap();
    }
    assert!(receiver.is_finished());
    let failed: Vec<&str> = receiver.failed().iter().map(|f| f.path.as_str()).collect();
    assert_eq!(failed, ["l", "m"], "{:?}", receiver.failed());
    drop(receiver);
    assert_eq!(fs::read(dest.join("l")).unwrap(), b"old l");
    assert!(!dest.join("m").exists());
    assert_eq!(ino(&dest.join("ok")), ino(&dest.join("t")));
    // The next scan sees the group, and no temporary is left.
    let names: Vec<String> =
        fs::read_dir(&dest).unwrap().map(|d| d.unwrap().file_name().into_string().unwrap()).collect();
    assert!(names.iter().all(|n| !n.starts_with(".xfer-tmp")), "{names:?}");
    let mut store = MirrorStore::open(&dest, &state).unwrap();
    let manifest = store.refresh(false).unwrap();
    // `ok` sorts first, so it is the file and `t` its other name.
    let kind = &manifest.get(&crate::util::rel(b"t")).unwrap().kind;
    assert!(
        matches!(kind, xfer::manifest::EntryKind::HardLink { target, .. } if target.as_bytes() == b"ok"),
        "{kind:?}"
    );
}

/// Names of a source tree: `d/` holds some, so links cross directories.
const NAMES: [&str; 6] = ["a", "b", "d/c", "d/e", "f", "g"];

/// One source state: each name absent or a name of file `0..3`, whose
/// content and mode depend on `version`.
fn build_source(src: &Path, groups: &[Option<u8>], versions: &[(u8, bool)]) {
    let _ = fs::remove_dir_all(src);
    fs::create_dir_all(src.join("d")).unwrap();
    let mut first: BTreeMap<u8, PathBuf> = BTreeMap::new();
    for (name, group) in NAMES.iter().zip(groups) {
        let Some(g) = group else { continue };
        let path = src.join(name);
        match first.get(g) {
            Some(target) => fs::hard_link(target, &path).unwrap(),
            None => {
                let (version, private) = versions[*g as usize];
                let len = 20_000 + 7_000 * usize::from(version);
                fs::write(&path, seeded(len, u64::from(*g) * 100 + u64::from(version))).unwrap();
                let mode = if private { 0o600 } else { 0o644 };
                fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
                filetime::set_file_mtime(&path, filetime::FileTime::from_unix_time(1_700_000_000, 0)).unwrap();
                first.insert(*g, path);
            }
        }
    }
}

/// Each file under `root` with its content and mode.
fn snapshot_of(root: &Path) -> BTreeMap<String, (Vec<u8>, u32)> {
    let mut files = BTreeMap::new();
    for group in link_groups(root) {
        for name in group {
            let path = root.join(&name);
            files.insert(name, (fs::read(&path).unwrap(), mode(&path)));
        }
    }
    files
}

/// One push: which file each name is, each file's version and privacy,
/// and whether to delete.
type Step = (Vec<Option<u8>>, Vec<(u8, bool)>, bool);

fn link_groups_case(steps: Vec<Step>) {
    let l = Local::new();
    let mut snapshots = Vec::new();
    for (k, (groups, versions, delete)) in steps.into_iter().enumerate() {
        build_source(&l.src, &groups, &versions);
        let stats = l.push(delete);
        assert!(stats.skipped.is_empty(), "{:?}", stats.skipped);
        let (src_groups, dest_groups) = (link_groups(&l.src), link_groups(&l.dest));
        if delete {
            assert_mirrors(&l.src, &l.dest);
        } else {
            // Every source name holds its content, in its group and no other.
            for group in &src_groups {
                let inodes: BTreeSet<u64> = group.iter().map(|n| ino(&l.dest.join(n))).collect();
                assert_eq!(inodes.len(), 1, "{group:?} split on the receiver: {dest_groups:?}");
                for name in group {
                    assert_eq!(fs::read(l.dest.join(name)).unwrap(), fs::read(l.src.join(name)).unwrap(), "{name}");
                    assert_eq!(mode(&l.dest.join(name)), mode(&l.src.join(name)), "{name}");
                }
            }
            let firsts: BTreeSet<u64> = src_groups.iter().map(|g| ino(&l.dest.join(g.first().unwrap()))).collect();
            assert_eq!(firsts.len(), src_groups.len(), "source groups joined on the receiver: {dest_groups:?}");
        }
        // A snapshot beside the receiver shares its files from now on.
        let snap = l.tmp.path().join(format!("snap{k}"));
        fs::create_dir(&snap).unwrap();
        for group in &dest_groups {
            for name in group {
                fs::create_dir_all(snap.join(name).parent().unwrap()).unwrap();
                fs::hard_link(l.dest.join(name), snap.join(name)).unwrap();
            }
        }
        snapshots.push((snapshot_of(&snap), snap));
    }
    for (before, snap) in snapshots {
        assert_eq!(snapshot_of(&snap), before, "a push wrote through a link into {}", snap.display());
    }
}

fn step() -> impl Strategy<Value = Step> {
    (
        proptest::collection::vec(proptest::option::of(0u8..3), NAMES.len()),
        proptest::collection::vec((0u8..2, any::<bool>()), 3),
        any::<bool>(),
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Random link groups over pushes: the receiver's groups, contents and
    /// modes follow the source's, and snapshots hard-linked to the
    /// receiver's files keep what they held.
    #[test]
    fn link_groups_follow_the_source_and_never_leak(steps in proptest::collection::vec(step(), 1..4)) {
        link_groups_case(steps);
    }
}

/// Through the wire: a `Link` whose target does not hold the content it
/// names, or is missing, fails that entry alone; the session and the link
/// that is right go on. A link waits for its target's chunks to arrive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wire_link_to_the_wrong_content_fails_alone() {
    use crate::util::raw::{chunk_data, connect, send_on, write_file};
    use xfer_protocol::msg::{self, Message};

    let tmp = TempDir::new().unwrap();
    let client = Identity::generate().unwrap();
    let server = start_server(&tmp, &client);
    let mut raw = connect(server.addr, server.id.fingerprint(), &client).await.unwrap();
    assert!(raw.open(msg::Direction::Push, b"h").await);
    let data = seeded(5000, 9);
    let link = |path: &[u8], target: &[u8], content: &[u8]| {
        Message::Link(msg::Link {
            path: path.to_vec(),
            target: target.to_vec(),
            size: content.len() as u64,
            hash: *blake3::hash(content).as_bytes(),
        })
    };
    assert!(raw.send(&write_file(0, b"t", &data)).await);
    // Sent before the target's chunk: applied once it is in.
    assert!(raw.send(&link(b"ok", b"t", &data)).await);
    assert!(raw.send(&link(b"bad", b"t", b"other")).await);
    assert!(raw.send(&link(b"gone", b"missing", &data)).await);
    let wait = std::time::Duration::from_secs(10);
    assert!(raw.recv_until(wait, |m| matches!(m, Message::NeedChunk(_))).await.is_some());
    let mut stream = raw.data_stream().await;
    assert!(send_on(&mut stream, &chunk_data(0, &data)).await);
    assert!(raw.send(&Message::Done(msg::Done)).await);
    let Some(Message::Summary(summary)) = raw.recv_until(wait, |m| matches!(m, Message::Summary(_))).await else {
        panic!("no Summary");
    };
    assert_eq!((summary.files_written, summary.failed), (1, 2), "{summary:?}");
    let dest = server.root.join("h");
    assert_eq!(ino(&dest.join("ok")), ino(&dest.join("t")));
    assert_eq!(fs::read(dest.join("ok")).unwrap(), data);
    assert!(!dest.join("bad").exists() && !dest.join("gone").exists());
}

/// A receiver whose tree spans file systems where the sender's does not:
/// a name on another file system than its target gets a copy of its own.
#[test]
fn a_link_across_file_systems_on_the_receiver_becomes_a_copy() {
    struct Mounted(PathBuf);
    impl Drop for Mounted {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
        }
    }
    let l = Local::new();
    fs::create_dir_all(l.src.join("a")).unwrap();
    fs::create_dir_all(l.src.join("b")).unwrap();
    fs::write(l.src.join("a/f"), seeded(50_000, 6)).unwrap();
    fs::hard_link(l.src.join("a/f"), l.src.join("b/g")).unwrap();
    fs::create_dir_all(l.dest.join("b")).unwrap();
    let mount = std::process::Command::new("mount").args(["-t", "tmpfs", "none"]).arg(l.dest.join("b")).output();
    if !mount.as_ref().is_ok_and(|out| out.status.success()) {
        println!("skipped: cannot mount a tmpfs here (needs root): {mount:?}");
        return;
    }
    let _mounted = Mounted(l.dest.join("b"));
    let stats = l.push(true);
    assert!(stats.skipped.is_empty(), "{:?}", stats.skipped);
    assert_same_tree(&read_tree(&l.dest), &read_tree(&l.src));
    let (f, g) = (fs::metadata(l.dest.join("a/f")).unwrap(), fs::metadata(l.dest.join("b/g")).unwrap());
    assert_ne!(f.dev(), g.dev());
    assert_eq!(g.mtime(), f.mtime());
}
