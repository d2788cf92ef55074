//! Owners, groups, special mode bits, xattrs and ACLs: carried faithfully
//! where the receiver may apply them (a local push, a pull), never planted
//! on a server by a remote client, whose originals the server keeps in its
//! records and gives back on pull.
//!
//! These tests need root (to chown) and the `attr` and `acl` tools
//! (`getfattr`, `setfattr`, `getfacl`, `setfacl`); without them they print
//! why and pass without checking anything.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use proptest::collection::vec;
use proptest::prelude::*;
use tempfile::TempDir;
use xfer::fs::store::{MetaPolicy, MirrorStore};
use xfer::manifest::{Meta, Mtime, RelPath, Xattr};
use xfer::net::access::Access;
use xfer::net::admission::serve;
use xfer::net::identity::Identity;
use xfer::net::served::ServeConfig;
use xfer::net::{server_endpoint, Tuning};
use xfer::plan::Op;
use xfer::session::Destination;
use xfer::usecase::{local::push_local, pull::pull, push::push, RemoteUrl, TransferOptions};

/// Why these tests cannot run here, if they cannot.
fn unsupported(dir: &Path) -> Option<String> {
    if !crate::util::is_root() {
        return Some("not running as root (chown needs it)".into());
    }
    for tool in ["getfattr", "setfattr", "getfacl", "setfacl"] {
        if Command::new(tool).arg("--version").output().is_err() {
            return Some(format!("{tool} is missing (apt-get install attr acl)"));
        }
    }
    // The filesystem must take user xattrs and ACLs.
    let probe = dir.join("probe");
    std::fs::write(&probe, b"").unwrap();
    let ok =
        run_ok("setfattr", &["-n", "user.probe", "-v", "1"], &probe) && run_ok("setfacl", &["-m", "u:4321:r"], &probe);
    std::fs::remove_file(&probe).unwrap();
    (!ok).then(|| "the filesystem of the temporary directory takes no user xattrs or ACLs".into())
}

fn skip(test: &str, reason: &str) {
    println!("SKIPPED {test}: {reason}");
}

fn run_ok(tool: &str, args: &[&str], path: &Path) -> bool {
    Command::new(tool).args(args).arg(path).output().is_ok_and(|o| o.status.success())
}

fn run(tool: &str, args: &[&str], path: &Path) -> String {
    let out = Command::new(tool).args(args).arg(path).output().unwrap();
    assert!(out.status.success(), "{tool} {args:?} {}: {}", path.display(), String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn chown(path: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid)).unwrap();
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn set_mtime(path: &Path, secs: i64) {
    let t = filetime::FileTime::from_unix_time(secs, 0);
    filetime::set_symlink_file_times(path, t, t).unwrap();
}

/// A tree a backup of `/` holds: a setuid root binary, a setgid directory,
/// a sticky one, files and a symlink owned by someone else, user and
/// trusted xattrs, access and default ACLs.
fn metadata_tree(src: &Path) {
    let dir = |p: &str| {
        let path = src.join(p);
        std::fs::create_dir_all(&path).unwrap();
        path
    };
    let file = |p: &str, data: &str| {
        let path = src.join(p);
        std::fs::write(&path, data).unwrap();
        path
    };
    let bin = dir("usr/bin");
    let tool = file("usr/bin/tool", "#!/bin/sh\necho tool\n");
    chown(&tool, 0, 0);
    chmod(&tool, 0o6755);
    let other = file("usr/bin/other", "other");
    chown(&other, 1234, 5678);
    chmod(&other, 0o4750);
    let shared = dir("srv/shared");
    chown(&shared, 1234, 5678);
    chmod(&shared, 0o2775);
    let tmp = dir("tmp");
    chmod(&tmp, 0o1777);
    let home = dir("home/alice");
    chown(&home, 1234, 5678);
    run("setfacl", &["-m", "u:4321:rx", "-d", "-m", "u:4321:rwx"], &home);
    chmod(&home, 0o750);
    let notes = file("home/alice/notes.txt", "dear diary");
    chown(&notes, 1234, 5678);
    run("setfacl", &["-m", "u:4321:r"], &notes);
    chmod(&notes, 0o640);
    run("setfattr", &["-n", "user.comment", "-v", "hello world"], &notes);
    run("setfattr", &["-n", "user.empty", "-v", "\"\""], &notes);
    run("setfattr", &["-n", "trusted.origin", "-v", "backup"], &notes);
    let link = src.join("home/alice/link");
    std::os::unix::fs::symlink("notes.txt", &link).unwrap();
    chown(&link, 1234, 5678);
    for (n, path) in [&tool, &other, &notes, &link, &bin, &shared, &tmp, &home].into_iter().enumerate() {
        set_mtime(path, 1_600_000_000 + n as i64);
    }
    for p in ["usr", "srv", "home"] {
        set_mtime(&src.join(p), 1_500_000_000);
    }
}

/// Every entry under `root` as the tools see it: type, mode, owner, group,
/// mtime, every xattr (all namespaces, hex) and the ACL.
fn describe(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    describe_into(root, root, &mut out);
    out
}

fn describe_into(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
    for dirent in std::fs::read_dir(dir).unwrap() {
        let path = dirent.unwrap().path();
        let rel = path.strip_prefix(root).unwrap().display().to_string();
        if rel == ".xfer" {
            continue;
        }
        let meta = std::fs::symlink_metadata(&path).unwrap();
        let mut text = format!("{:o} {}:{} {}", meta.mode(), meta.uid(), meta.gid(), meta.mtime());
        let xattrs = run("getfattr", &["-h", "-d", "-m", "-", "-e", "hex", "--absolute-names"], &path);
        text.extend(xattrs.lines().filter(|l| !l.starts_with('#') && !l.is_empty()).map(|l| format!("\n  {l}")));
        if meta.file_type().is_symlink() {
            text.push_str(&format!("\n  -> {}", std::fs::read_link(&path).unwrap().display()));
        } else {
            let acl = run("getfacl", &["-n", "--omit-header", "--absolute-names"], &path);
            text.extend(acl.lines().filter(|l| !l.is_empty()).map(|l| format!("\n  acl {l}")));
        }
        if meta.is_dir() {
            describe_into(root, &path, out);
        } else if meta.is_file() {
            text.push_str(&format!("\n  {} bytes", meta.len()));
        }
        out.insert(rel, text);
    }
}

/// Asserts two descriptions are equal, naming each entry that differs.
fn assert_same(got: &BTreeMap<String, String>, want: &BTreeMap<String, String>) {
    let mut diffs = Vec::new();
    for (path, text) in want {
        match got.get(path) {
            None => diffs.push(format!("{path} missing")),
            Some(g) if g != text => diffs.push(format!("{path}:\n got  {g}\n want {text}")),
            _ => {}
        }
    }
    diffs.extend(got.keys().filter(|p| !want.contains_key(*p)).map(|p| format!("{p} should not exist")));
    assert!(diffs.is_empty(), "{}", diffs.join("\n"));
}

struct Server {
    id: Identity,
    addr: std::net::SocketAddr,
    root: PathBuf,
}

fn start_server(tmp: &TempDir, client: &Identity) -> Server {
    let id = Identity::generate().unwrap();
    let root = tmp.path().join("served");
    std::fs::create_dir(&root).unwrap();
    let endpoint = server_endpoint("127.0.0.1:0".parse().unwrap(), &id, Tuning::default()).unwrap();
    let addr = endpoint.local_addr().unwrap();
    let access = Access::allow(&[client.fingerprint()]);
    tokio::spawn(serve(endpoint, Arc::new(ServeConfig::new(root.clone(), access))));
    Server { id, addr, root }
}

fn options(tmp: &TempDir) -> TransferOptions {
    TransferOptions {
        delete: true,
        busy_wait: std::time::Duration::from_secs(10),
        ..TransferOptions::new(tmp.path().join("client-state"))
    }
}

/// Item 4: a remote client's setuid, setgid and sticky bits and foreign
/// owners never reach the server's disk (it runs as root here, the worst
/// case), and only its own user and group own what it wrote.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_push_never_plants_setuid_or_foreign_owners() {
    let tmp = TempDir::new().unwrap();
    if let Some(reason) = unsupported(tmp.path()) {
        return skip("remote_push_never_plants_setuid_or_foreign_owners", &reason);
    }
    let src = tmp.path().join("src");
    metadata_tree(&src);
    let client = Identity::generate().unwrap();
    let server = start_server(&tmp, &client);
    let url = RemoteUrl { authority: server.addr.to_string(), path: "laptop".into() };
    let report = push(&src, &url, &client, Some(server.id.fingerprint()), &options(&tmp)).await.unwrap();
    assert!(report.failed.is_empty(), "{:?}", report.failed);
    // Said once, as a count: the entries whose metadata the server kept.
    assert!(report.meta_kept >= 6, "{report:?}");
    let stored = describe(&server.root.join("laptop"));
    assert_eq!(stored.len(), describe(&src).len());
    for (path, text) in &stored {
        let meta = std::fs::symlink_metadata(server.root.join("laptop").join(path)).unwrap();
        assert_eq!(meta.mode() & 0o7000, 0, "{path} carries special bits on the server: {text}");
        assert_eq!((meta.uid(), meta.gid()), (0, 0), "{path} is owned by someone else on the server: {text}");
        assert!(!text.contains("trusted.") && !text.contains("security."), "{path}: {text}");
    }
}

/// Items 4 and 5: a pull as root gives back exactly what was pushed
/// (owners, groups, special bits, xattrs, ACLs), kept by the server in its
/// records; pushing again changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_round_trip_restores_everything() {
    let tmp = TempDir::new().unwrap();
    if let Some(reason) = unsupported(tmp.path()) {
        return skip("remote_round_trip_restores_everything", &reason);
    }
    let src = tmp.path().join("src");
    metadata_tree(&src);
    let want = describe(&src);
    let client = Identity::generate().unwrap();
    let server = start_server(&tmp, &client);
    let url = RemoteUrl { authority: server.addr.to_string(), path: "laptop".into() };
    let pin = Some(server.id.fingerprint());
    let first = push(&src, &url, &client, pin, &options(&tmp)).await.unwrap();
    assert!(first.failed.is_empty(), "{:?}", first.failed);

    let restored = tmp.path().join("restored");
    let pulled = pull(&url, &restored, &client, pin, &options(&tmp)).await.unwrap();
    assert!(pulled.failed.is_empty(), "{:?}", pulled.failed);
    assert_same(&describe(&restored), &want);

    // The server's records match what the client holds: nothing to send,
    // no metadata rewritten on either side.
    let again = push(&src, &url, &client, pin, &options(&tmp)).await.unwrap();
    assert_eq!((again.files_changed, again.files_deleted, again.chunks_sent), (0, 0, 0), "{again:?}");
    // Nothing new to say about metadata on an unchanged run.
    assert_eq!(again.meta_kept, 0, "{again:?}");
    let stored = describe(&server.root.join("laptop"));
    let repulled = pull(&url, &restored, &client, pin, &options(&tmp)).await.unwrap();
    assert_eq!((repulled.files_changed, repulled.files_deleted), (0, 0), "{repulled:?}");
    assert_same(&describe(&restored), &want);
    assert_same(&describe(&server.root.join("laptop")), &stored);
}

/// Item 5: a local push as root keeps owners, groups, special bits,
/// xattrs of every namespace and ACLs, and a second run changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_push_keeps_owners_xattrs_and_acls() {
    let tmp = TempDir::new().unwrap();
    if let Some(reason) = unsupported(tmp.path()) {
        return skip("local_push_keeps_owners_xattrs_and_acls", &reason);
    }
    let (src, dest) = (tmp.path().join("src"), tmp.path().join("dest"));
    metadata_tree(&src);
    let want = describe(&src);
    let report = push_local(&src, &dest, &options(&tmp)).await.unwrap();
    assert!(report.failed.is_empty(), "{:?}", report.failed);
    assert_same(&describe(&dest), &want);
    // As root everything was applied: nothing kept aside.
    assert_eq!(report.meta_kept, 0, "{report:?}");
    let again = push_local(&src, &dest, &options(&tmp)).await.unwrap();
    assert_eq!((again.files_changed, again.files_deleted, again.chunks_sent), (0, 0, 0), "{again:?}");
    assert_same(&describe(&dest), &want);

    // A change of owner, ACL or xattr alone travels as metadata.
    let notes = src.join("home/alice/notes.txt");
    chown(&notes, 4321, 5678);
    run("setfattr", &["-x", "user.comment"], &notes);
    run("setfacl", &["-m", "u:1234:rw"], &notes);
    chmod(&notes, 0o640);
    set_mtime(&notes, 1_600_000_002);
    let want = describe(&src);
    let third = push_local(&src, &dest, &options(&tmp)).await.unwrap();
    assert_eq!(third.chunks_sent, 0, "{third:?}");
    assert_same(&describe(&dest), &want);
}

/// Applies `meta` to a directory and a file of a store with `policy`, then
/// returns what a refresh reports for them.
fn apply_to_store(root: &Path, policy: MetaPolicy, dir_meta: &Meta, file_meta: &Meta) -> (Meta, Meta) {
    let tree = root.join("tree");
    std::fs::create_dir_all(&tree).unwrap();
    std::fs::write(tree.join("f"), b"content").unwrap();
    let mut store = MirrorStore::open(&tree, &root.join("state.redb")).unwrap().with_policy(policy);
    store.refresh(false).unwrap();
    let (d, f) = (RelPath::new("d").unwrap(), RelPath::new("f").unwrap());
    let ops = vec![
        Op::Mkdir { path: d.clone(), meta: dir_meta.clone() },
        Op::SetMeta { path: f.clone(), meta: file_meta.clone() },
        Op::SetMeta { path: d.clone(), meta: dir_meta.clone() },
    ];
    let mut rx = store.receive();
    for op in &ops {
        rx.apply_op(op).unwrap();
    }
    rx.finish(true).unwrap();
    let manifest = store.refresh(false).unwrap();
    (manifest.get(&d).unwrap().meta.clone(), manifest.get(&f).unwrap().meta.clone())
}

fn meta_strategy() -> impl Strategy<Value = Meta> {
    let xattr = (proptest::sample::select(vec!["user.a", "user.b", "trusted.t", "security.s"]), vec(any::<u8>(), 0..8));
    (0u32..0o10000, 0i64..2_000_000_000, 0u32..70_000, 0u32..70_000, vec(xattr, 0..4), any::<bool>()).prop_map(
        |(mode, secs, uid, gid, xattrs, named)| {
            let mut xattrs: Vec<Xattr> =
                xattrs.into_iter().map(|(name, value)| Xattr { name: name.as_bytes().to_vec(), value }).collect();
            xattrs.sort();
            xattrs.dedup_by(|a, b| a.name == b.name);
            let name = |s: &str| if named { s.as_bytes().to_vec() } else { Vec::new() };
            Meta {
                // The owner keeps rwx on directories and rw on files, or a
                // later write into them would need root's override anyway.
                mode: mode | 0o700,
                mtime: Mtime { secs, nanos: 0 },
                uid,
                gid,
                user: name("xfer-test-nobody"),
                group: name("xfer-test-nogroup"),
                xattrs,
            }
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Whatever metadata a client sends, a confined receiver's disk holds
    /// no special bit, no foreign owner and no privileged xattr, while its
    /// scans report exactly what was sent; a faithful one (as root) holds
    /// exactly what was sent.
    #[test]
    fn receiver_policies_keep_what_they_do_not_apply(dir_meta in meta_strategy(), file_meta in meta_strategy()) {
        let tmp = TempDir::new().unwrap();
        if let Some(reason) = unsupported(tmp.path()) {
            skip("receiver_policies_keep_what_they_do_not_apply", &reason);
            return Ok(());
        }
        for policy in [MetaPolicy::Confined, MetaPolicy::Faithful] {
            let root = tmp.path().join(format!("{policy:?}"));
            let (dir, file) = apply_to_store(&root, policy, &dir_meta, &file_meta);
            prop_assert_eq!(&dir, &dir_meta);
            prop_assert_eq!(&file, &file_meta);
            for (name, sent) in [("tree/d", &dir_meta), ("tree/f", &file_meta)] {
                let path = root.join(name);
                let disk = std::fs::symlink_metadata(&path).unwrap();
                let xattrs = xfer::fs::scan::read_xattrs(&path).unwrap();
                if policy == MetaPolicy::Confined {
                    prop_assert_eq!(disk.mode() & 0o7777, sent.mode & 0o777);
                    prop_assert_eq!((disk.uid(), disk.gid()), (0, 0));
                    prop_assert!(xattrs.iter().all(|x| x.name.starts_with(b"user.")));
                    let user: Vec<&Xattr> = sent.xattrs.iter().filter(|x| x.name.starts_with(b"user.")).collect();
                    prop_assert_eq!(xattrs.iter().collect::<Vec<_>>(), user);
                } else {
                    prop_assert_eq!(disk.mode() & 0o7777, sent.mode);
                    prop_assert_eq!((disk.uid(), disk.gid()), (sent.uid, sent.gid));
                    prop_assert_eq!(&xattrs, &sent.xattrs);
                }
            }
        }
    }
}

/// Changes queued behind a file in flight hold their xattrs (up to 256 KiB
/// each): the receiver stops reading control messages once they hold
/// `MAX_QUEUED_META_BYTES`, long before `MAX_QUEUED_OPS` changes, so a
/// sender cannot make it hold a gigabyte of xattrs.
#[test]
fn queued_xattrs_are_bounded_in_bytes() {
    use xfer::session::{OpenRequest, SessionError, MAX_QUEUED_META_BYTES, MAX_QUEUED_OPS};

    use xfer::fs::store::MirrorReceiver as Receiver;
    use xfer_protocol::{msg, Message};
    let tmp = TempDir::new().unwrap();
    let (dest, state) = (tmp.path().join("dest"), tmp.path().join("state.redb"));
    std::fs::create_dir(&dest).unwrap();
    let mut receiver = Receiver::new(Box::new(move |_: &OpenRequest| {
        MirrorStore::open(&dest, &state).map(xfer::fs::store::Receiving::new).map_err(SessionError::from)
    }));
    let hello = msg::Hello { version: xfer_protocol::PROTOCOL_VERSION, features: 0, agent: "test".into() };
    receiver.handle(Message::Hello(hello)).unwrap();
    let open = crate::util::pair::open_root_push();
    receiver.handle(Message::Open(open)).unwrap();
    // A file whose chunk never comes: metadata changes wait behind it.
    let data = b"payload";
    let params = xfer::chunk::ChunkParams::for_size(data.len() as u64);
    let pending = msg::WriteFile {
        file: 0,
        path: b"pending".to_vec(),
        mode: 0o644,
        mtime: msg::Mtime { secs: 1, nanos: 0 },
        size: data.len() as u64,
        hash: *blake3::hash(data).as_bytes(),
        params: xfer::wire::params_to_wire(params),
        list: msg::ChunkList::Implied,
        more: false,
        attrs: msg::Attrs::default(),
    };
    receiver.handle(Message::WriteFile(pending)).unwrap();
    let big = |n: usize| {
        let xattrs = (0..4)
            .map(|i| msg::Xattr {
                name: format!("user.{i}").into_bytes(),
                value: vec![n as u8; xfer_protocol::MAX_XATTR_VALUE_LEN],
            })
            .collect();
        Message::SetMeta(msg::SetMeta {
            path: format!("f{n}").into_bytes(),
            mode: 0o644,
            mtime: msg::Mtime { secs: 1, nanos: 0 },
            attrs: msg::Attrs { xattrs, ..msg::Attrs::default() },
        })
    };
    let mut sent = 0;
    while receiver.wants_input() {
        assert!(sent < MAX_QUEUED_OPS, "still reading after {sent} changes");
        receiver.handle(big(sent)).unwrap();
        sent += 1;
    }
    let per_change = 4 * xfer_protocol::MAX_XATTR_VALUE_LEN;
    assert!(sent <= MAX_QUEUED_META_BYTES / per_change + 1, "{sent} changes of {per_change} bytes queued");
}

/// The tree of `metadata_tree` and, on top, what a backup of `/` also
/// holds: a hard-link group of three names (one in another directory)
/// carrying setuid, xattrs and an ACL; a sparse 64 MiB disk image with two
/// names; a name whose other link lies outside the tree; a binary with a
/// file capability; a setgid and sticky directory; owners with a name in
/// /etc/passwd (daemon:mail) and without (1234:5678); default and access
/// ACLs with group entries and a mask on a directory. `None` when the
/// filesystem keeps no holes.
fn full_tree(tmp: &Path, src: &Path) -> Option<()> {
    metadata_tree(src);
    let mkdir = |p: &str| {
        let path = src.join(p);
        std::fs::create_dir_all(&path).unwrap();
        path
    };
    let link = |from: &Path, to: &str| std::fs::hard_link(from, src.join(to)).unwrap();

    let other = src.join("usr/bin/other");
    run("setfattr", &["-n", "user.role", "-v", "linked"], &other);
    run("setfattr", &["-n", "trusted.linked", "-v", "yes"], &other);
    run("setfacl", &["-m", "g:4321:r"], &other);
    chmod(&other, 0o4750);
    link(&other, "usr/bin/other-alias");
    mkdir("usr/lib");
    link(&other, "usr/lib/other");

    // chown clears capabilities, so the receiver must set them after it.
    let ping = src.join("usr/bin/ping");
    std::fs::write(&ping, "ping").unwrap();
    chown(&ping, 1, 8);
    chmod(&ping, 0o755);
    // cap_net_raw+ep, revision 2.
    run("setfattr", &["-n", "security.capability", "-v", "0x0100000200200000000000000000000000000000"], &ping);

    let mail = mkdir("var/mail");
    chown(&mail, 1, 8);
    chmod(&mail, 0o3775);
    let spool = mail.join("daemon");
    std::fs::write(&spool, "you have mail").unwrap();
    chown(&spool, 1, 8);
    chmod(&spool, 0o660);
    run("setfattr", &["-n", "user.read", "-v", "no"], &spool);

    let project = mkdir("srv/project");
    chown(&project, 1234, 5678);
    chmod(&project, 0o2770);
    run("setfacl", &["-m", "g:8:rwx,u:1:rx,m::rwx", "-d", "-m", "g:4321:rx,u:1:rwx"], &project);
    run("setfattr", &["-n", "user.project", "-v", "apollo"], &project);
    run("setfattr", &["-n", "trusted.project", "-v", "secret"], &project);
    // Created after the default ACL, so it inherits one.
    let plan = project.join("plan.txt");
    std::fs::write(&plan, "to the moon").unwrap();
    chown(&plan, 1234, 5678);

    let image = mkdir("var/lib").join("disk.img");
    {
        use std::io::{Seek, SeekFrom, Write};
        let mut f = std::fs::File::create(&image).unwrap();
        f.set_len(64 << 20).unwrap();
        f.seek(SeekFrom::Start(1 << 20)).unwrap();
        f.write_all(&[0xa5; 4096]).unwrap();
        f.seek(SeekFrom::Start((64 << 20) - 4096)).unwrap();
        f.write_all(&[0x5a; 4096]).unwrap();
    }
    chown(&image, 1, 8);
    chmod(&image, 0o640);
    run("setfattr", &["-n", "user.kind", "-v", "disk"], &image);
    mkdir("var/backups");
    link(&image, "var/backups/disk.img");

    let outside = tmp.join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    let shared = outside.join("shared.dat");
    std::fs::write(&shared, "linked from outside").unwrap();
    chown(&shared, 1234, 5678);
    link(&shared, "home/alice/from-outside");

    (std::fs::metadata(&image).unwrap().blocks() * 512 < 1 << 20).then_some(())
}

/// Relative paths of every entry under `root`, the receiver's `.xfer` aside.
fn entries(root: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        for dirent in std::fs::read_dir(dir).unwrap() {
            let path = dirent.unwrap().path();
            let rel = path.strip_prefix(root).unwrap().display().to_string();
            if rel == ".xfer" {
                continue;
            }
            assert!(!rel.contains(char::is_whitespace), "{rel}: the tool output is split at blanks");
            out.push(rel);
            if std::fs::symlink_metadata(&path).unwrap().is_dir() {
                walk(root, &path, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(root, root, &mut out);
    out.sort();
    out
}

/// Runs `tool args names..` in `root` and returns its output.
fn tool_in(root: &Path, tool: &str, args: &[&str], names: &[String]) -> String {
    let out = Command::new(tool).args(args).args(names).current_dir(root).output().unwrap();
    assert!(out.status.success(), "{tool} {args:?} in {}: {}", root.display(), String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The `# file:` blocks of a recursive `getfattr`/`getfacl` over `root`,
/// by path (relative, so two trees compare; readdir order differs).
fn tool_blocks(root: &Path, tool: &str, args: &[&str]) -> BTreeMap<String, String> {
    let top: Vec<String> = entries(root).into_iter().filter(|p| !p.contains('/')).collect();
    let text = tool_in(root, tool, args, &top);
    let mut blocks = BTreeMap::new();
    for block in text.split("\n\n").map(str::trim).filter(|b| !b.is_empty()) {
        let (head, body) = block.split_once('\n').unwrap_or((block, ""));
        let path = head.strip_prefix("# file: ").unwrap_or_else(|| panic!("{tool}: unexpected block {block}"));
        assert!(blocks.insert(path.to_string(), body.to_string()).is_none(), "{tool}: {path} twice");
    }
    blocks
}

/// One entry as `stat` sees it.
struct Stat {
    /// `%a %u %g %s %Y %F`: mode with special bits, owner, group, size,
    /// mtime (nanoseconds), type.
    line: String,
    links: u64,
    ino: u64,
}

fn stat_all(root: &Path) -> BTreeMap<String, Stat> {
    let text = tool_in(root, "stat", &["-c", "%n %a %u %g %s %.9Y %h %i %F"], &entries(root));
    text.lines()
        .map(|l| {
            let f: Vec<&str> = l.splitn(9, ' ').collect();
            let line = format!("{} {} {} {} {} {}", f[1], f[2], f[3], f[4], f[5], f[8]);
            (f[0].to_string(), Stat { line, links: f[6].parse().unwrap(), ino: f[7].parse().unwrap() })
        })
        .collect()
}

/// The names of each regular file, grouped by inode.
fn inode_groups(stats: &BTreeMap<String, Stat>) -> BTreeMap<String, BTreeSet<String>> {
    let mut by_ino: BTreeMap<u64, BTreeSet<String>> = BTreeMap::new();
    for (path, s) in stats.iter().filter(|(_, s)| s.line.ends_with("regular file") || s.line.ends_with("empty file")) {
        by_ino.entry(s.ino).or_default().insert(path.clone());
    }
    by_ino.into_values().flat_map(|g| g.clone().into_iter().map(move |p| (p, g.clone()))).collect()
}

/// `stat` lines with the link count of a regular file as the number of
/// its names inside the tree (a link from outside is not part of a backup).
fn stat_view(stats: &BTreeMap<String, Stat>) -> BTreeMap<String, String> {
    let groups = inode_groups(stats);
    stats
        .iter()
        .map(|(p, s)| {
            let links = groups.get(p).map_or(s.links, |g| g.len() as u64);
            (p.clone(), format!("{} links {links}", s.line))
        })
        .collect()
}

/// `du --block-size=1 -s`: (apparent bytes, allocated bytes), `.xfer` aside.
fn du(root: &Path) -> (u64, u64) {
    let size = |extra: &[&str]| -> u64 {
        let mut args = vec!["--block-size=1", "-s", "--exclude=.xfer"];
        args.extend_from_slice(extra);
        let out = run("du", &args, root);
        out.split_whitespace().next().unwrap().parse().unwrap()
    };
    (size(&["--apparent-size"]), size(&[]))
}

/// What the tools say about a tree: xattrs, ACLs, stat and link groups.
#[derive(Debug, PartialEq)]
struct ToolView {
    xattrs: BTreeMap<String, String>,
    acls: BTreeMap<String, String>,
    stat: BTreeMap<String, String>,
    groups: BTreeSet<BTreeSet<String>>,
}

fn tool_view(root: &Path) -> ToolView {
    let stats = stat_all(root);
    ToolView {
        xattrs: tool_blocks(root, "getfattr", &["-R", "-P", "-h", "-d", "-m", "-", "-e", "hex", "--absolute-names"]),
        acls: tool_blocks(root, "getfacl", &["-R", "-P", "--absolute-names"]),
        stat: stat_view(&stats),
        groups: inode_groups(&stats).into_values().collect(),
    }
}

fn assert_same_view(got: &ToolView, want: &ToolView, what: &str) {
    assert_same(&got.xattrs, &want.xattrs);
    assert_same(&got.acls, &want.acls);
    assert_same(&got.stat, &want.stat);
    assert_eq!(got.groups, want.groups, "{what}: link groups");
}

/// Every regular file under `root` has as many links as names in the tree:
/// a name linked from outside the source came back as a file of its own.
fn assert_links_are_names(root: &Path) {
    let stats = stat_all(root);
    for (path, names) in inode_groups(&stats) {
        assert_eq!(stats[&path].links, names.len() as u64, "{path}: links outside the tree");
    }
}

fn content_hash(path: &Path) -> blake3::Hash {
    let mut hasher = blake3::Hasher::new();
    std::io::copy(&mut std::fs::File::open(path).unwrap(), &mut hasher).unwrap();
    hasher.finalize()
}

/// The issue's acceptance item: push then pull as root of a tree with
/// owners, groups, setuid binaries, xattrs, ACLs, sparse files and hard
/// links gives back an identical tree as `getfattr`, `getfacl`, `stat` and
/// `du` see it, while the server's own copy holds the data but never
/// setuid/setgid/sticky bits or foreign owners. A second push and pull
/// change nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trip_as_the_tools_see_it() {
    const TEST: &str = "round_trip_as_the_tools_see_it";
    let tmp = TempDir::new().unwrap();
    if let Some(reason) = unsupported(tmp.path()) {
        return skip(TEST, &reason);
    }
    let src = tmp.path().join("src");
    if full_tree(tmp.path(), &src).is_none() {
        return skip(TEST, "the filesystem of the temporary directory keeps no holes");
    }
    let want = tool_view(&src);
    // The tree holds what this test is about.
    assert!(want.groups.iter().any(|g| g.len() == 3) && want.groups.iter().filter(|g| g.len() == 2).count() == 1);
    assert!(want.xattrs.values().any(|x| x.contains("trusted.")) && want.xattrs.contains_key("usr/bin/ping"));
    assert!(want.acls.values().any(|a| a.contains("default:")));
    assert_eq!(std::fs::metadata(src.join("home/alice/from-outside")).unwrap().nlink(), 2);
    let (src_apparent, src_allocated) = du(&src);

    let client = Identity::generate().unwrap();
    let server = start_server(&tmp, &client);
    let url = RemoteUrl { authority: server.addr.to_string(), path: "laptop".into() };
    let pin = Some(server.id.fingerprint());
    let first = push(&src, &url, &client, pin, &options(&tmp)).await.unwrap();
    assert!(first.failed.is_empty(), "{:?}", first.failed);

    // The server's copy: the data and link groups, none of the privileges.
    let stored = server.root.join("laptop");
    let src_stats = stat_all(&src);
    let stored_stats = stat_all(&stored);
    assert_eq!(stored_stats.keys().collect::<Vec<_>>(), src_stats.keys().collect::<Vec<_>>());
    for path in stored_stats.keys() {
        let (theirs, ours) = (src.join(path), stored.join(path));
        let meta = std::fs::symlink_metadata(&ours).unwrap();
        assert_eq!(meta.mode() & 0o7000, 0, "{path} carries special bits on the server");
        assert_eq!((meta.uid(), meta.gid()), (0, 0), "{path} is owned by someone else on the server");
        if meta.is_file() {
            assert_eq!(content_hash(&ours), content_hash(&theirs), "{path}: data on the server");
        } else if meta.is_symlink() {
            assert_eq!(std::fs::read_link(&ours).unwrap(), std::fs::read_link(&theirs).unwrap(), "{path}");
        }
    }
    for (path, x) in tool_blocks(&stored, "getfattr", &["-R", "-P", "-h", "-d", "-m", "-", "--absolute-names"]) {
        assert!(x.lines().all(|l| l.starts_with("user.")), "{path} carries privileged xattrs on the server: {x}");
    }
    let stored_groups: BTreeSet<BTreeSet<String>> = inode_groups(&stored_stats).into_values().collect();
    assert_eq!(stored_groups, want.groups, "link groups on the server");
    let (_, stored_allocated) = du(&stored);
    let slack = 256 << 10;
    assert!(stored_allocated <= src_allocated + slack, "server: {stored_allocated} allocated, source {src_allocated}");

    let restored = tmp.path().join("restored");
    let pulled = pull(&url, &restored, &client, pin, &options(&tmp)).await.unwrap();
    assert!(pulled.failed.is_empty(), "{:?}", pulled.failed);
    let got = tool_view(&restored);
    assert_same_view(&got, &want, "first pull");
    assert_links_are_names(&restored);
    let (apparent, allocated) = du(&restored);
    assert_eq!(apparent, src_apparent, "du --apparent-size");
    assert!(allocated <= src_allocated + slack, "restored: {allocated} allocated, source {src_allocated}");
    let image = restored.join("var/lib/disk.img");
    assert_eq!(content_hash(&image), content_hash(&src.join("var/lib/disk.img")));

    // Nothing to send, nothing to write, on either side.
    let stored_view = tool_view(&stored);
    let again = push(&src, &url, &client, pin, &options(&tmp)).await.unwrap();
    assert_eq!(
        (again.files_changed, again.files_deleted, again.chunks_sent, again.meta_kept),
        (0, 0, 0, 0),
        "{again:?}"
    );
    assert_same_view(&tool_view(&stored), &stored_view, "server after the second push");
    let repulled = pull(&url, &restored, &client, pin, &options(&tmp)).await.unwrap();
    assert_eq!((repulled.files_changed, repulled.files_deleted), (0, 0), "{repulled:?}");
    assert_same_view(&tool_view(&restored), &want, "second pull");
    assert_eq!(du(&restored), (apparent, allocated), "du after the second pull");

    // A metadata change of a linked file (owner, xattr, ACL, mode) and of
    // the sparse image travels alone and keeps the groups and the holes.
    let other = src.join("usr/bin/other");
    chown(&other, 1, 8);
    run("setfattr", &["-n", "user.role", "-v", "relinked"], &other);
    run("setfacl", &["-m", "u:1234:rx"], &other);
    chmod(&other, 0o4755);
    run("setfattr", &["-x", "user.kind"], &src.join("var/backups/disk.img"));
    let want = tool_view(&src);
    let third = push(&src, &url, &client, pin, &options(&tmp)).await.unwrap();
    assert!(third.failed.is_empty(), "{:?}", third.failed);
    assert_eq!(third.chunks_sent, 0, "{third:?}");
    let stored_groups: BTreeSet<BTreeSet<String>> = inode_groups(&stat_all(&stored)).into_values().collect();
    assert_eq!(stored_groups, want.groups, "link groups on the server after a metadata change");
    // The server applies mtimes as sent: its directories keep the source's.
    for path in entries(&src).into_iter().filter(|p| src.join(p).is_dir()) {
        let (a, b) = (std::fs::metadata(src.join(&path)).unwrap(), std::fs::metadata(stored.join(&path)).unwrap());
        assert_eq!((b.mtime(), b.mtime_nsec()), (a.mtime(), a.mtime_nsec()), "{path}: mtime on the server");
    }
    let pulled = pull(&url, &restored, &client, pin, &options(&tmp)).await.unwrap();
    assert!(pulled.failed.is_empty(), "{:?}", pulled.failed);
    assert_same_view(&tool_view(&restored), &want, "pull after a metadata change");
    let (_, allocated) = du(&restored);
    assert!(allocated <= src_allocated + slack, "restored: {allocated} allocated, source {src_allocated}");
    println!(
        "{TEST}: {} entries, {} xattr and {} ACL blocks; du apparent {apparent}, allocated: source {src_allocated}, \
         server {stored_allocated}, restored {allocated}",
        want.stat.len(),
        want.xattrs.len(),
        want.acls.len()
    );
}

/// The same tree through a local push as root: identical as the tools see
/// it, no more disk than the source, and a second run changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_push_as_the_tools_see_it() {
    const TEST: &str = "local_push_as_the_tools_see_it";
    let tmp = TempDir::new().unwrap();
    if let Some(reason) = unsupported(tmp.path()) {
        return skip(TEST, &reason);
    }
    let (src, dest) = (tmp.path().join("src"), tmp.path().join("dest"));
    if full_tree(tmp.path(), &src).is_none() {
        return skip(TEST, "the filesystem of the temporary directory keeps no holes");
    }
    let want = tool_view(&src);
    let (src_apparent, src_allocated) = du(&src);
    let report = push_local(&src, &dest, &options(&tmp)).await.unwrap();
    assert!(report.failed.is_empty(), "{:?}", report.failed);
    assert_eq!(report.meta_kept, 0, "{report:?}");
    assert_same_view(&tool_view(&dest), &want, "local push");
    assert_links_are_names(&dest);
    let (apparent, allocated) = du(&dest);
    assert_eq!(apparent, src_apparent, "du --apparent-size");
    assert!(allocated <= src_allocated + (256 << 10), "dest: {allocated} allocated, source {src_allocated}");
    let again = push_local(&src, &dest, &options(&tmp)).await.unwrap();
    assert_eq!((again.files_changed, again.files_deleted, again.chunks_sent), (0, 0, 0), "{again:?}");
    assert_same_view(&tool_view(&dest), &want, "second local push");
}
