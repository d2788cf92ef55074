//! The first promise as a property: random trees and random edits (type
//! changes in every direction, unreadable entries, a file growing during
//! the scan, hard-link groups inside and across the tree, sparse files,
//! xattrs, modes and owners), pushed with and without `--delete`, locally
//! and through an `xfer serve` process, as root and as an unprivileged
//! user. After every push:
//! - each readable source entry arrives exact, with its metadata;
//! - no destination entry is deleted unless it is absent from the source
//!   (or a source entry of another kind replaced it or a directory above it);
//! - an entry that was skipped keeps its previous backup;
//! - the report lists every skip with its reason, and the exit code says so.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use proptest::prelude::*;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tempfile::TempDir;

use crate::util::seeded;

const NOBODY: u32 = 65534;
/// The file a thread appends to while a push runs.
const GROWING: &str = "growing.log";

#[derive(Clone, Debug)]
enum Item {
    Dir {
        mode: u32,
    },
    File {
        body: Body,
        mode: u32,
        xattr: Option<Vec<u8>>,
        owner: Option<u32>,
        outside_link: bool,
    },
    Symlink {
        target: Vec<u8>,
    },
    /// A second name of the file at `to` (materialized with `link(2)`).
    Link {
        to: String,
    },
}

#[derive(Clone, Debug)]
enum Body {
    Dense(Vec<u8>),
    /// `len` bytes of holes with islands of data.
    Sparse {
        len: u64,
        islands: Vec<(u64, Vec<u8>)>,
    },
}

type Tree = BTreeMap<String, Item>;

fn parent(path: &str) -> Option<&str> {
    path.rfind('/').map(|i| &path[..i])
}

fn is_under(path: &str, dir: &str) -> bool {
    path.len() > dir.len() && path.starts_with(dir) && path.as_bytes()[dir.len()] == b'/'
}

fn random_name(rng: &mut SmallRng) -> String {
    const NAMES: [&str; 8] = ["a", "b", "c", "d", "e", "f", "g", "h"];
    NAMES[rng.random_range(0..NAMES.len())].to_string()
}

/// A path whose parent is a directory of `tree` (or the root).
fn random_path(tree: &Tree, rng: &mut SmallRng) -> String {
    let dirs: Vec<&String> = tree.iter().filter(|(_, i)| matches!(i, Item::Dir { .. })).map(|(p, _)| p).collect();
    let name = random_name(rng);
    match rng.random_range(0..=dirs.len()) {
        0 => name,
        k => format!("{}/{name}", dirs[k - 1]),
    }
}

fn random_body(rng: &mut SmallRng) -> Body {
    if rng.random_range(0..8) == 0 {
        let len = 4 << 20;
        let islands = (0..rng.random_range(1..4))
            .map(|_| (rng.random_range(0..len / 4096) * 4096, seeded(rng.random_range(1..9000), rng.random())))
            .collect();
        Body::Sparse { len, islands }
    } else {
        Body::Dense(seeded(rng.random_range(0..20_000), rng.random()))
    }
}

fn random_file(rng: &mut SmallRng, root: bool) -> Item {
    let mode = *[0o644, 0o640, 0o755, 0o604].get(rng.random_range(0..4)).unwrap_or(&0o644);
    let mode = if root && rng.random_range(0..6) == 0 { 0o4755 } else { mode };
    let xattr = (rng.random_range(0..4) == 0).then(|| seeded(rng.random_range(1..64), rng.random()));
    let owner = (root && rng.random_range(0..5) == 0).then_some(1000 + rng.random_range(0..3));
    Item::File { body: random_body(rng), mode, xattr, owner, outside_link: rng.random_range(0..10) == 0 }
}

fn random_item(tree: &Tree, rng: &mut SmallRng, root: bool) -> Item {
    let files: Vec<&String> = tree.iter().filter(|(_, i)| matches!(i, Item::File { .. })).map(|(p, _)| p).collect();
    match rng.random_range(0..10) {
        0 => Item::Dir { mode: 0o755 },
        1 => Item::Symlink { target: format!("../{}", random_name(rng)).into_bytes() },
        2 if !files.is_empty() => Item::Link { to: files[rng.random_range(0..files.len())].clone() },
        _ => random_file(rng, root),
    }
}

/// Puts `item` at `path`, replacing whatever was there (and its subtree).
fn put(tree: &mut Tree, path: String, item: Item) {
    tree.retain(|p, _| !is_under(p, &path));
    tree.insert(path, item);
}

fn random_tree(rng: &mut SmallRng, root: bool) -> Tree {
    let mut tree = Tree::new();
    for _ in 0..rng.random_range(4..16) {
        let path = random_path(&tree, rng);
        let item = random_item(&tree, rng, root);
        if !tree.contains_key(&path) {
            put(&mut tree, path, item);
        }
    }
    tree
}

/// One random edit; `nobody` allows unreadable entries (root reads all).
fn random_edit(tree: &mut Tree, rng: &mut SmallRng, root: bool) {
    let paths: Vec<String> = tree.keys().cloned().collect();
    let Some(path) = paths.get(rng.random_range(0..paths.len().max(1))).cloned() else {
        let path = random_path(tree, rng);
        let item = random_item(tree, rng, root);
        return put(tree, path, item);
    };
    match rng.random_range(0..9) {
        // A type change in any direction: the new kind at the same name.
        0..=2 => {
            let item = match (rng.random_range(0..3), &tree[&path]) {
                (0, Item::Dir { .. }) | (1, Item::Dir { .. }) => random_file(rng, root),
                (0, _) => Item::Dir { mode: 0o755 },
                (1, _) => Item::Symlink { target: b"elsewhere".to_vec() },
                _ => random_file(rng, root),
            };
            let nested = matches!(item, Item::Dir { .. }) && rng.random_range(0..2) == 0;
            put(tree, path.clone(), item);
            if nested {
                put(tree, format!("{path}/{}", random_name(rng)), random_file(rng, root));
            }
        }
        3 => {
            tree.retain(|p, _| p != &path && !is_under(p, &path));
        }
        4 => {
            if let Some(Item::File { body: Body::Dense(data), .. }) = tree.get_mut(&path) {
                let at = rng.random_range(0..=data.len());
                data.splice(at..at, seeded(rng.random_range(1..500), rng.random()));
            }
        }
        5 => match tree.get_mut(&path) {
            Some(Item::File { mode, .. }) => *mode = if root { 0o4750 } else { 0o000 },
            Some(Item::Dir { mode }) => *mode = if rng.random_range(0..2) == 0 { 0o555 } else { 0o000 },
            _ => {}
        },
        6 => {
            if let Some(Item::File { xattr, .. }) = tree.get_mut(&path) {
                *xattr = (xattr.is_none()).then(|| seeded(rng.random_range(1..64), rng.random()));
            }
        }
        _ => {
            let path = random_path(tree, rng);
            let item = random_item(tree, rng, root);
            put(tree, path, item);
        }
    }
}

/// Writes `tree` under `root` (empty); returns the outside directory's
/// extra names (links that cross out of the tree).
fn materialize(tree: &Tree, root: &Path, outside: &Path, round: u64) {
    for (path, item) in tree {
        let abs = root.join(path);
        match item {
            Item::Dir { .. } => fs::create_dir(&abs).unwrap(),
            Item::File { body, mode, xattr, owner, outside_link } => {
                let mut file = fs::File::create(&abs).unwrap();
                match body {
                    Body::Dense(data) => file.write_all(data).unwrap(),
                    Body::Sparse { len, islands } => {
                        file.set_len(*len).unwrap();
                        for (at, data) in islands {
                            std::os::unix::fs::FileExt::write_all_at(&file, data, *at).unwrap();
                        }
                    }
                }
                drop(file);
                if let Some(value) = xattr {
                    rustix::fs::lsetxattr(&abs, "user.note", value, rustix::fs::XattrFlags::empty()).unwrap();
                }
                if let Some(uid) = owner {
                    std::os::unix::fs::lchown(&abs, Some(*uid), Some(*uid)).unwrap();
                }
                fs::set_permissions(&abs, fs::Permissions::from_mode(*mode)).unwrap();
                if *outside_link {
                    fs::hard_link(&abs, outside.join(path.replace('/', "_"))).unwrap();
                }
            }
            Item::Symlink { target } => std::os::unix::fs::symlink(std::ffi::OsStr::from_bytes(target), &abs).unwrap(),
            Item::Link { .. } => {}
        }
    }
    for (path, item) in tree {
        if let Item::Link { to } = item {
            if matches!(tree.get(to), Some(Item::File { .. })) {
                fs::hard_link(root.join(to), root.join(path)).unwrap();
            }
        }
    }
    // Its own bytes each round, so a backup kept as it was is told apart
    // from one the scan found unchanged.
    fs::write(root.join(GROWING), seeded(10_000, round + 1)).unwrap();
    for (path, item) in tree.iter().rev() {
        if let Item::Dir { mode } = item {
            fs::set_permissions(root.join(path), fs::Permissions::from_mode(*mode)).unwrap();
        }
    }
}

/// What the test compares of one entry, read with root's eyes.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Seen {
    kind: Kind,
    mode: u32,
    uid: u32,
    mtime: (i64, i64),
    xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
    ino: u64,
    blocks: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Kind {
    Dir,
    File(blake3::Hash),
    Symlink(Vec<u8>),
}

type Snapshot = BTreeMap<String, Seen>;

fn snapshot(root: &Path) -> Snapshot {
    let mut out = Snapshot::new();
    if root.exists() {
        walk(root, "", &mut out);
    }
    out
}

fn walk(dir: &Path, prefix: &str, out: &mut Snapshot) {
    for dirent in fs::read_dir(dir).unwrap() {
        let dirent = dirent.unwrap();
        let name = dirent.file_name().to_string_lossy().into_owned();
        if prefix.is_empty() && name == ".xfer" {
            continue;
        }
        let rel = if prefix.is_empty() { name } else { format!("{prefix}/{name}") };
        let abs = dirent.path();
        let meta = fs::symlink_metadata(&abs).unwrap();
        let kind = if meta.is_dir() {
            Kind::Dir
        } else if meta.file_type().is_symlink() {
            Kind::Symlink(fs::read_link(&abs).unwrap().as_os_str().as_bytes().to_vec())
        } else {
            Kind::File(blake3::hash(&fs::read(&abs).unwrap()))
        };
        let seen = Seen {
            kind,
            mode: meta.mode() & 0o7777,
            uid: meta.uid(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            xattrs: user_xattrs(&abs),
            ino: meta.ino(),
            blocks: meta.blocks(),
        };
        if meta.is_dir() {
            walk(&abs, &rel, out);
        }
        out.insert(rel, seen);
    }
}

fn user_xattrs(path: &Path) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let mut names = vec![0u8; 65536];
    let Ok(len) = rustix::fs::llistxattr(path, &mut names[..]) else { return BTreeMap::new() };
    let mut out = BTreeMap::new();
    for name in names[..len].split(|&b| b == 0).filter(|n| n.starts_with(b"user.")) {
        let mut value = vec![0u8; 65536];
        if let Ok(n) = rustix::fs::lgetxattr(path, std::ffi::OsStr::from_bytes(name), &mut value[..]) {
            out.insert(name.to_vec(), value[..n].to_vec());
        }
    }
    out
}

#[derive(Clone, Copy, Debug)]
struct Case {
    delete: bool,
    remote: bool,
    nobody: bool,
}

/// Which source entries the pushing user cannot read: files without read
/// permission for it, directories it cannot list, and all below those.
fn unreadable(src: &Snapshot, case: Case) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    if !case.nobody {
        return out;
    }
    for (path, seen) in src {
        let blocked = match seen.kind {
            Kind::Dir => seen.mode & 0o005 != 0o005,
            Kind::File(_) => seen.mode & 0o004 == 0,
            Kind::Symlink(_) => false,
        };
        if blocked {
            out.insert(path.clone());
        }
    }
    out
}

/// Whether `path` lies at or under an entry of `set`.
fn covered(set: &BTreeSet<String>, path: &str) -> bool {
    set.iter().any(|s| s == path || is_under(path, s))
}

struct World {
    tmp: TempDir,
    src: PathBuf,
    dest: PathBuf,
    outside: PathBuf,
    server: Option<(Child, String, String, PathBuf)>,
}

impl Drop for World {
    fn drop(&mut self) {
        if let Some((child, ..)) = &mut self.server {
            let _ = child.kill();
            let _ = child.wait();
        }
        // 000 directories must open up for the temporary directory to go.
        let _ = Command::new("chmod").args(["-R", "u+rwx"]).arg(self.tmp.path()).status();
    }
}

fn xfer() -> Command {
    Command::new(assert_cmd::cargo::cargo_bin("xfer"))
}

fn world(case: Case) -> World {
    let tmp = TempDir::new().unwrap();
    fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let (src, outside) = (tmp.path().join("src"), tmp.path().join("outside"));
    let (state, cfg) = (tmp.path().join("state"), tmp.path().join("cfg"));
    for dir in [&state, &cfg, &outside] {
        fs::create_dir(dir).unwrap();
    }
    let id = xfer().args(["id", "--config-dir"]).arg(&cfg).output().unwrap();
    let client_fp = String::from_utf8(id.stdout).unwrap().trim().to_string();
    let mut server = None;
    let dest = if case.remote {
        let root = tmp.path().join("served");
        let (child, addr, fp) = crate::util::spawn_server(&client_fp, &tmp.path().join("server-cfg"), &root);
        server = Some((child, addr, fp, root.clone()));
        root.join("site")
    } else {
        tmp.path().join("dest")
    };
    if case.nobody {
        let status = Command::new("chown").args(["-R", "65534:65534"]).arg(&state).arg(&cfg).status().unwrap();
        assert!(status.success());
        if !case.remote {
            fs::create_dir(&dest).unwrap();
            std::os::unix::fs::chown(&dest, Some(NOBODY), Some(NOBODY)).unwrap();
        }
    }
    World { tmp, src, dest, outside, server }
}

/// Runs one push of `src` while a thread appends to the growing file;
/// returns the exit code and the JSON report's failed paths and reasons.
fn push(w: &World, case: Case, round: u64) -> (i32, Vec<(String, String)>) {
    let mut cmd = if case.nobody {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups"]).arg(assert_cmd::cargo::cargo_bin("xfer"));
        c
    } else {
        xfer()
    };
    cmd.env("XFER_STATE_DIR", w.tmp.path().join("state"));
    cmd.args(["push", "--json", "--config-dir"]).arg(w.tmp.path().join("cfg"));
    if case.delete {
        cmd.arg("--delete");
    }
    cmd.arg(&w.src);
    match &w.server {
        Some((_, addr, fp, _)) => cmd.args(["--server-fingerprint", fp, &format!("xfer://{addr}/site")]),
        None => cmd.arg(&w.dest),
    };
    let stop = Arc::new(AtomicBool::new(false));
    let growing = w.src.join(GROWING);
    let appender = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            for k in 0..3000u64 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                if let Ok(mut f) = fs::OpenOptions::new().append(true).open(&growing) {
                    let _ = f.write_all(&seeded(97, round << 32 | k));
                }
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        })
    };
    let out = cmd.output().unwrap();
    stop.store(true, Ordering::Relaxed);
    appender.join().unwrap();
    let code = out.status.code().unwrap_or(-1);
    if std::env::var_os("NEVER_LOSE_DEBUG").is_some() {
        eprintln!("push: {}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap_or("{}"))
        .unwrap_or_else(|e| panic!("no JSON report ({e}): {stdout} {}", String::from_utf8_lossy(&out.stderr)));
    // 2: the delete limits refused the run before it changed anything (a
    // source left empty by skips looks like an unmounted share).
    let refused = code == 2 && report["error"].as_str().is_some_and(|e| e.contains("--force-delete"));
    assert!(
        code == 0 || code == 3 || refused,
        "push failed with {code}: {report} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    if refused {
        return (code, Vec::new());
    }
    let failed = report["failed"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|f| (f["path"].as_str().unwrap_or("").to_string(), f["error"].as_str().unwrap_or("").to_string()))
                .collect()
        })
        .unwrap_or_default();
    (code, failed)
}

fn same_entry(src: &Seen, dst: &Seen, case: Case, path: &str) {
    assert_eq!(src.kind, dst.kind, "{path}: content or kind differs");
    if matches!(src.kind, Kind::Symlink(_)) {
        return;
    }
    if case.remote {
        // A server never plants setuid, setgid or sticky bits of a client.
        assert_eq!(dst.mode, src.mode & 0o777, "{path}: mode on the server");
    } else {
        assert_eq!(dst.mode, src.mode, "{path}: mode");
        if !case.nobody {
            assert_eq!(dst.uid, src.uid, "{path}: owner");
        }
    }
    assert_eq!(dst.mtime, src.mtime, "{path}: mtime");
    assert_eq!(dst.xattrs, src.xattrs, "{path}: xattrs");
    if matches!(src.kind, Kind::File(_)) {
        assert!(
            dst.blocks <= src.blocks + 64,
            "{path}: {} blocks allocated for the source's {}",
            dst.blocks,
            src.blocks
        );
    }
}

/// Checks one push: `before` is the destination before it, `src` the
/// source as the push saw it (the growing file excepted).
fn check(
    w: &World,
    case: Case,
    src: &Snapshot,
    before: &Snapshot,
    after: &Snapshot,
    code: i32,
    failed: &[(String, String)],
) {
    let blocked = unreadable(src, case);
    // Skipped: unreadable entries whose parent could be listed.
    let skipped: BTreeSet<String> =
        blocked.iter().filter(|p| parent(p).is_none_or(|d| !covered(&blocked, d))).cloned().collect();
    let listed =
        |path: &str| failed.iter().any(|(p, why)| (p == path || p.ends_with(&format!("/{path}"))) && !why.is_empty());
    for path in &skipped {
        assert!(listed(path), "skip of {path} not reported: {failed:?}");
    }
    if after.get(GROWING).map(|s| &s.kind) != src.get(GROWING).map(|s| &s.kind) {
        // Kept as it was, or the consistent prefix the scan read; said either way.
        let kept = after.get(GROWING).map(|s| &s.kind) == before.get(GROWING).map(|s| &s.kind);
        let (sent, now) = (fs::read(w.dest.join(GROWING)).unwrap_or_default(), fs::read(w.src.join(GROWING)).unwrap());
        assert!(kept || now.starts_with(&sent) && sent.len() >= 10_000, "growing file torn ({} bytes)", sent.len());
        // A consistent prefix may be the file as it was when the push
        // ended (the appender is not stopped at that exact instant); a
        // file kept as it was was skipped, and that is always said.
        assert!(!kept || listed(GROWING), "the growing file was not sent, and not reported: {failed:?}");
    }
    assert_eq!(code == 3, !failed.is_empty(), "exit {code} with failed {failed:?}");

    for (path, seen) in src {
        if path == GROWING || covered(&blocked, path) {
            continue;
        }
        let got = after.get(path).unwrap_or_else(|| panic!("{path} missing on the destination"));
        same_entry(seen, got, case, path);
    }
    // Skipped entries keep their previous backup, subtree and all.
    for (path, seen) in before {
        if covered(&skipped, path) {
            assert_eq!(after.get(path).map(|s| &s.kind), Some(&seen.kind), "{path}: backup of a skipped entry lost");
        }
    }
    for (path, seen) in before {
        if after.contains_key(path) || covered(&skipped, path) {
            continue;
        }
        let replaced_above = {
            let mut at = parent(path);
            let mut hit = false;
            while let Some(dir) = at {
                hit |= src.get(dir).is_some_and(|s| s.kind != Kind::Dir);
                at = parent(dir);
            }
            hit
        };
        assert!(
            case.delete && !src.contains_key(path) || replaced_above,
            "{path} ({:?}) deleted though the source {}",
            seen.kind,
            if src.contains_key(path) { "has it" } else { "was pushed without --delete" }
        );
    }
    // Hard-link groups inside the tree stay groups.
    let mut groups: HashMap<u64, Vec<&String>> = HashMap::new();
    for (path, seen) in src {
        if matches!(seen.kind, Kind::File(_)) && !covered(&blocked, path) && path != GROWING {
            groups.entry(seen.ino).or_default().push(path);
        }
    }
    for names in groups.values().filter(|g| g.len() > 1) {
        let inos: BTreeSet<u64> = names.iter().filter_map(|p| after.get(*p)).map(|s| s.ino).collect();
        assert_eq!(inos.len(), 1, "link group {names:?} split on the destination");
    }
}

fn never_lose_impl(seed: u64, case: Case) {
    if case.nobody && Command::new("setpriv").arg("--version").output().is_err() {
        eprintln!("skipped: setpriv is missing");
        return;
    }
    let root = crate::util::is_root();
    if !root && (case.nobody || !case.remote) {
        // Owners and other users need root; the remote case still runs.
        eprintln!("skipped: needs root");
        return;
    }
    let mut rng = SmallRng::seed_from_u64(seed);
    let w = world(case);
    let mut tree = random_tree(&mut rng, !case.nobody);
    let mut before = Snapshot::new();
    for round in 0..3u64 {
        if round > 0 {
            for _ in 0..rng.random_range(1..6) {
                random_edit(&mut tree, &mut rng, !case.nobody);
            }
            let _ = Command::new("chmod").args(["-R", "u+rwx"]).arg(&w.src).status();
            fs::remove_dir_all(&w.src).unwrap();
            for f in fs::read_dir(&w.outside).unwrap() {
                fs::remove_file(f.unwrap().path()).unwrap();
            }
        }
        fs::create_dir(&w.src).unwrap();
        fs::set_permissions(&w.src, fs::Permissions::from_mode(0o755)).unwrap();
        if std::env::var_os("NEVER_LOSE_DEBUG").is_some() {
            eprintln!(
                "round {round}: {:?}",
                tree.iter()
                    .map(|(p, i)| (
                        p,
                        match i {
                            Item::File { body: Body::Sparse { .. }, mode, .. } => format!("sparse {mode:o}"),
                            Item::File { mode, .. } => format!("file {mode:o}"),
                            other => format!("{other:?}"),
                        }
                    ))
                    .collect::<Vec<_>>()
            );
        }
        materialize(&tree, &w.src, &w.outside, round);
        let (code, failed) = push(&w, case, round);
        let src = snapshot(&w.src);
        let after = snapshot(&w.dest);
        if code == 2 {
            assert_eq!(after, before, "a refused push changed the destination");
            continue;
        }
        check(&w, case, &src, &before, &after, code, &failed);
        before = after;
    }
}

fn cases() -> u32 {
    std::env::var("NEVER_LOSE_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(6)
}

proptest! {
    // NEVER_LOSE_CASES=N runs more cases (a soak); CI runs six of each.
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]
    #[test]
    fn never_lose_local_proptest(seed in any::<u64>(), delete in any::<bool>()) {
        never_lose_impl(seed, Case { delete, remote: false, nobody: false });
    }

    #[test]
    fn never_lose_local_nobody_proptest(seed in any::<u64>(), delete in any::<bool>()) {
        never_lose_impl(seed, Case { delete, remote: false, nobody: true });
    }

    #[test]
    fn never_lose_remote_proptest(seed in any::<u64>(), delete in any::<bool>(), nobody in any::<bool>()) {
        never_lose_impl(seed, Case { delete, remote: true, nobody });
    }
}
