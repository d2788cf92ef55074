//! Sparse files stay sparse on the receiver (locally and through a server,
//! with zero runs costing next to nothing on the wire), and read-only
//! source directories do not freeze the backup of what is inside them.

use std::fs::{self, File};
use std::io::Read;
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;

use proptest::prelude::*;
use tempfile::TempDir;
use xfer::codec::Compression;
use xfer::net::access::Access;
use xfer::net::admission::serve;
use xfer::net::identity::Identity;
use xfer::net::served::ServeConfig;
use xfer::net::{server_endpoint, Tuning};
use xfer::usecase::memory::{push_local, PushOptions};
use xfer::usecase::{push::push, RemoteUrl, TransferOptions};

use crate::util::seeded;
use crate::util::{as_nobody, is_root};

const SPARSE_SIZE: u64 = 200 << 20;

fn xfer(tmp: &Path) -> Command {
    let mut cmd = Command::new(assert_cmd::cargo::cargo_bin("xfer"));
    cmd.env("XFER_STATE_DIR", tmp.join("state")).env("XFER_CONFIG_DIR", tmp.join("cfg"));
    cmd
}

fn json(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!("{e}: {}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
    })
}

fn allocated(path: &Path) -> u64 {
    fs::metadata(path).unwrap().blocks() * 512
}

/// A 200 MB file holding 4 KB of data in its middle and 4 KB at its end,
/// the rest holes; `None` where the filesystem does not keep holes.
fn sparse_source(dir: &Path) -> Option<PathBuf> {
    let path = dir.join("disk.img");
    let file = File::create(&path).unwrap();
    file.set_len(SPARSE_SIZE).unwrap();
    file.write_all_at(&seeded(4096, 1), 100 << 20).unwrap();
    file.write_all_at(&seeded(4096, 2), SPARSE_SIZE - 4096).unwrap();
    drop(file);
    (allocated(&path) <= 64 << 10).then_some(path)
}

/// Compares two files piece by piece (200 MB twice would be a lot of memory).
fn assert_same_content(a: &Path, b: &Path) {
    let (mut fa, mut fb) = (File::open(a).unwrap(), File::open(b).unwrap());
    assert_eq!(fa.metadata().unwrap().len(), fb.metadata().unwrap().len(), "{} vs {}", a.display(), b.display());
    let (mut ba, mut bb) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    loop {
        let n = fa.read(&mut ba).unwrap();
        if n == 0 {
            return;
        }
        fb.read_exact(&mut bb[..n]).unwrap();
        assert!(ba[..n] == bb[..n], "{} and {} differ", a.display(), b.display());
    }
}

/// The receiver's copy of a 200 MB sparse file with 8 KB of data stays
/// sparse after a local push (main at 9faa489 allocated all 200 MB), and
/// again after a push that changes a little of it.
#[test]
fn sparse_file_stays_sparse_in_a_local_push() {
    let tmp = TempDir::new().unwrap();
    let (src, dest) = (tmp.path().join("src"), tmp.path().join("dest"));
    fs::create_dir(&src).unwrap();
    let Some(image) = sparse_source(&src) else {
        eprintln!("skipped: this filesystem does not keep holes");
        return;
    };
    let out = xfer(tmp.path()).args(["push", "--json"]).arg(&src).arg(&dest).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(json(&out)["files_changed"], 1);
    let copy = dest.join("disk.img");
    assert_same_content(&image, &copy);
    let used = allocated(&copy);
    eprintln!("local push: source {} bytes allocated, copy {used}", allocated(&image));
    assert!(used <= 1 << 20, "the copy of a sparse file has {used} bytes allocated");

    // A changed file is rebuilt from the old copy's chunks: those reused
    // zero chunks must not fill the holes either.
    File::options().write(true).open(&image).unwrap().write_all_at(&seeded(4096, 3), 50 << 20).unwrap();
    let out = xfer(tmp.path()).args(["push", "--json"]).arg(&src).arg(&dest).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(json(&out)["files_changed"], 1);
    assert_same_content(&image, &copy);
    let used = allocated(&copy);
    assert!(used <= 1 << 20, "after a change the copy has {used} bytes allocated");
}

/// Through a server: the copy stays sparse, and the 200 MB of zeros cost
/// a few kilobytes on the wire (one zero chunk, sent once, compressed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sparse_file_stays_sparse_through_a_server_and_costs_little_wire() {
    let tmp = TempDir::new().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir(&src).unwrap();
    let Some(image) = sparse_source(&src) else {
        eprintln!("skipped: this filesystem does not keep holes");
        return;
    };
    let client = Identity::generate().unwrap();
    let server_id = Identity::generate().unwrap();
    let root = tmp.path().join("served");
    fs::create_dir(&root).unwrap();
    let endpoint = server_endpoint("127.0.0.1:0".parse().unwrap(), &server_id, Tuning::default()).unwrap();
    let addr = endpoint.local_addr().unwrap();
    tokio::spawn(serve(endpoint, Arc::new(ServeConfig::new(root.clone(), Access::allow(&[client.fingerprint()])))));
    let url = RemoteUrl { authority: addr.to_string(), path: "site".into() };
    let options = TransferOptions {
        busy_wait: std::time::Duration::from_secs(10),
        ..TransferOptions::new(tmp.path().join("cs"))
    };
    let report = push(&src, &url, &client, Some(server_id.fingerprint()), &options).await.unwrap();
    assert!(report.failed.is_empty(), "{:?}", report.failed);
    let copy = root.join("site/disk.img");
    assert_same_content(&image, &copy);
    let used = allocated(&copy);
    let wire = report.wire_bytes_sent + report.wire_bytes_received;
    eprintln!("server push: copy {used} bytes allocated, wire {wire} bytes, data {} bytes", report.bytes_sent);
    assert!(used <= 1 << 20, "the server's copy has {used} bytes allocated");
    // 8 KB of random data, one compressed zero chunk and the file's list of
    // about 800 chunk ids; the zero runs themselves cost nothing.
    assert!(wire < 128 << 10, "a 200 MB sparse file with 8 KB of data cost {wire} wire bytes");
}

/// Bytes made of zero runs and data runs: `(zeros, data)` pairs.
fn zero_runs(runs: &[(usize, usize)], seed: u64) -> Vec<u8> {
    let mut bytes = Vec::new();
    for (n, &(zeros, data)) in runs.iter().enumerate() {
        bytes.resize(bytes.len() + zeros, 0);
        bytes.extend(seeded(data, seed + n as u64));
    }
    bytes
}

/// Bytes a file whose content is `bytes` needs at most when every 4 KiB
/// block holding only zeros is a hole, with room for the filesystem's
/// extent blocks.
fn sparse_bound(bytes: &[u8]) -> u64 {
    let data_blocks = bytes.chunks(4096).filter(|b| b.iter().any(|&x| x != 0)).count() as u64;
    (data_blocks + 4) * 4096
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Files of zero runs and data runs of any lengths and alignments, new
    /// and then changed (rebuilt partly from the old copy's chunks), arrive
    /// byte for byte with every all-zero block a hole.
    #[test]
    fn zero_runs_arrive_exact_and_as_holes(
        runs in prop::collection::vec((0usize..200_000, 0usize..6_000), 1..12),
        edit in (0usize..400_000, 1usize..3_000, any::<bool>()),
        seed in any::<u64>(),
    ) {
        let tmp = TempDir::new().unwrap();
        let (src, dest) = (tmp.path().join("src"), tmp.path().join("dest"));
        fs::create_dir(&src).unwrap();
        let options = PushOptions {
            delete: true,
            checksum: false,
            compression: Compression::Auto,
            state_dir: tmp.path().join("state"),
            filter: None,
        };
        let mut bytes = zero_runs(&runs, seed);
        for round in 0..2 {
            fs::write(src.join("f"), &bytes).unwrap();
            push_local(&src, &dest, &options).unwrap();
            let copy = fs::read(dest.join("f")).unwrap();
            prop_assert!(copy == bytes, "round {}: content differs", round);
            let used = allocated(&dest.join("f"));
            prop_assert!(used <= sparse_bound(&bytes), "round {}: {} bytes allocated, bound {}", round, used, sparse_bound(&bytes));
            // A change: data written into the zeros, or zeros over data.
            let (at, len, zeros) = edit;
            let at = at.min(bytes.len());
            let end = (at + len).min(bytes.len());
            let fill = if zeros { vec![0; end - at] } else { seeded(end - at, seed ^ 0x5a5a) };
            bytes[at..end].copy_from_slice(&fill);
        }
    }
}

fn chmod(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

fn mode(path: &Path) -> u32 {
    fs::symlink_metadata(path).unwrap().mode() & 0o7777
}

/// Pushes `src` to `dest` as `nobody`, with `--delete`.
fn push_as_nobody(tmp: &Path, src: &Path, dest: &Path) -> Option<Output> {
    let mut cmd = xfer(tmp);
    cmd.args(["push", "--delete", "--json"]).arg(src).arg(dest);
    Some(as_nobody(&cmd)?.output().unwrap())
}

/// A tree all users may enter, with state and config dirs `nobody` can use.
fn shared_tmp() -> TempDir {
    let tmp = TempDir::new().unwrap();
    chmod(tmp.path(), 0o777);
    for dir in ["state", "cfg"] {
        fs::create_dir(tmp.path().join(dir)).unwrap();
        chmod(&tmp.path().join(dir), 0o777);
    }
    tmp
}

/// Read-only source directories (mode 555) pushed by a non-root user: the
/// copies get 555 too, and later changes inside them (a changed file, a
/// new one, a deleted one, a deleted read-only subdirectory, finally the
/// whole directory) still land, with the modes back to 555 afterwards. On
/// main at 9faa489 the second push failed for every entry inside.
#[test]
fn read_only_source_directories_do_not_freeze_the_backup() {
    let tmp = shared_tmp();
    let (src, dest) = (tmp.path().join("src"), tmp.path().join("dest"));
    fs::create_dir_all(src.join("ro/sub")).unwrap();
    fs::write(src.join("ro/a"), b"a1").unwrap();
    fs::write(src.join("ro/b"), b"b1").unwrap();
    fs::write(src.join("ro/sub/c"), b"c1").unwrap();
    fs::write(src.join("top"), b"top").unwrap();
    chmod(&src.join("ro/sub"), 0o555);
    chmod(&src.join("ro"), 0o555);
    let Some(first) = push_as_nobody(tmp.path(), &src, &dest) else {
        eprintln!("skipped: cannot run as another user here");
        return;
    };
    assert_eq!(first.status.code(), Some(0), "{}", String::from_utf8_lossy(&first.stderr));
    assert_eq!(mode(&dest.join("ro")), 0o555);
    assert_eq!(mode(&dest.join("ro/sub")), 0o555);
    assert_eq!(fs::read(dest.join("ro/sub/c")).unwrap(), b"c1");

    // The source's directories are opened up for the edits (root would not
    // need it) and closed again.
    let (ro, sub) = (src.join("ro"), src.join("ro/sub"));
    chmod(&ro, 0o755);
    chmod(&sub, 0o755);
    fs::write(src.join("ro/a"), b"a2, longer").unwrap();
    fs::write(src.join("ro/new"), b"new").unwrap();
    fs::remove_file(src.join("ro/b")).unwrap();
    fs::write(src.join("ro/sub/c"), b"c2").unwrap();
    chmod(&sub, 0o555);
    chmod(&ro, 0o555);
    let second = push_as_nobody(tmp.path(), &src, &dest).unwrap();
    assert_eq!(second.status.code(), Some(0), "{}", String::from_utf8_lossy(&second.stderr));
    assert_eq!(json(&second)["files_changed"], 3);
    assert_eq!(fs::read(dest.join("ro/a")).unwrap(), b"a2, longer");
    assert_eq!(fs::read(dest.join("ro/new")).unwrap(), b"new");
    assert_eq!(fs::read(dest.join("ro/sub/c")).unwrap(), b"c2");
    assert!(!dest.join("ro/b").exists());
    assert_eq!(mode(&dest.join("ro")), 0o555, "the mode was not restored");
    assert_eq!(mode(&dest.join("ro/sub")), 0o555, "the mode was not restored");
    let noop = push_as_nobody(tmp.path(), &src, &dest).unwrap();
    assert_eq!(noop.status.code(), Some(0), "{}", String::from_utf8_lossy(&noop.stderr));
    assert_eq!(json(&noop)["files_changed"], 0);

    // A read-only subdirectory with a file in it goes.
    chmod(&ro, 0o755);
    chmod(&sub, 0o755);
    fs::remove_dir_all(&sub).unwrap();
    chmod(&ro, 0o555);
    let third = push_as_nobody(tmp.path(), &src, &dest).unwrap();
    assert_eq!(third.status.code(), Some(0), "{}", String::from_utf8_lossy(&third.stderr));
    assert!(!dest.join("ro/sub").exists());
    assert_eq!(mode(&dest.join("ro")), 0o555);

    // The whole read-only tree goes, with a read-only directory inside.
    chmod(&ro, 0o755);
    fs::create_dir(src.join("ro/sub2")).unwrap();
    fs::write(src.join("ro/sub2/d"), b"d").unwrap();
    chmod(&src.join("ro/sub2"), 0o555);
    chmod(&ro, 0o555);
    let fourth = push_as_nobody(tmp.path(), &src, &dest).unwrap();
    assert_eq!(fourth.status.code(), Some(0), "{}", String::from_utf8_lossy(&fourth.stderr));
    assert_eq!(mode(&dest.join("ro/sub2")), 0o555);
    chmod(&ro, 0o755);
    chmod(&src.join("ro/sub2"), 0o755);
    fs::remove_dir_all(&ro).unwrap();
    let fifth = push_as_nobody(tmp.path(), &src, &dest).unwrap();
    assert_eq!(fifth.status.code(), Some(0), "{}", String::from_utf8_lossy(&fifth.stderr));
    assert!(!dest.join("ro").exists());
    assert_eq!(fs::read(dest.join("top")).unwrap(), b"top");
}

/// Hard links inside a read-only directory, pushed by a non-root user: a
/// new link and a linked file whose mode changes (which gets a copy of its
/// own beside it) both need to write into the directory. Before the fix
/// both failed with "Permission denied" on a temporary inside it (found by
/// the never_lose property test).
#[test]
fn hard_links_inside_read_only_directories_land() {
    let tmp = shared_tmp();
    let (src, dest) = (tmp.path().join("src"), tmp.path().join("dest"));
    fs::create_dir_all(src.join("ro")).unwrap();
    fs::write(src.join("ro/a"), b"linked content").unwrap();
    fs::hard_link(src.join("ro/a"), src.join("ro/b")).unwrap();
    chmod(&src.join("ro"), 0o555);
    let Some(first) = push_as_nobody(tmp.path(), &src, &dest) else {
        eprintln!("skipped: cannot run as another user here");
        return;
    };
    assert_eq!(first.status.code(), Some(0), "{}", String::from_utf8_lossy(&first.stderr));
    let ino = |p: &str| fs::symlink_metadata(dest.join(p)).unwrap().ino();
    assert_eq!(ino("ro/a"), ino("ro/b"));

    // A third name, and a new mode for the group.
    chmod(&src.join("ro"), 0o755);
    fs::hard_link(src.join("ro/a"), src.join("ro/c")).unwrap();
    chmod(&src.join("ro/a"), 0o604);
    chmod(&src.join("ro"), 0o555);
    let second = push_as_nobody(tmp.path(), &src, &dest).unwrap();
    assert_eq!(second.status.code(), Some(0), "{}", String::from_utf8_lossy(&second.stderr));
    assert_eq!(fs::read(dest.join("ro/c")).unwrap(), b"linked content");
    assert_eq!(mode(&dest.join("ro/a")), 0o604);
    assert_eq!(ino("ro/a"), ino("ro/c"));
    assert_eq!(ino("ro/a"), ino("ro/b"));
    assert_eq!(mode(&dest.join("ro")), 0o555, "the mode was not restored");
}

/// A destination directory the pushing user does not own and may not write
/// cannot be opened up: each failing entry is reported by its own path and
/// the rest is committed (exit 3), and nothing else is touched.
#[test]
fn an_unwritable_directory_not_ours_names_each_failing_file() {
    if !is_root() {
        eprintln!("skipped: needs root, to push as a user who does not own the destination");
        return;
    }
    let tmp = shared_tmp();
    let (src, dest) = (tmp.path().join("src"), tmp.path().join("dest"));
    fs::create_dir_all(src.join("theirs")).unwrap();
    fs::write(src.join("theirs/changed"), b"new").unwrap();
    fs::write(src.join("theirs/added"), b"added").unwrap();
    fs::write(src.join("ok"), b"ok").unwrap();
    chmod(&src, 0o777);
    // The destination is the test's (root's), writable at the top only.
    fs::create_dir_all(dest.join("theirs")).unwrap();
    fs::write(dest.join("theirs/changed"), b"old").unwrap();
    chmod(&dest, 0o777);
    chmod(&dest.join("theirs"), 0o555);
    let Some(out) = push_as_nobody(tmp.path(), &src, &dest) else {
        eprintln!("skipped: cannot run as another user here");
        return;
    };
    chmod(&dest.join("theirs"), 0o755);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    for name in ["theirs/changed", "theirs/added"] {
        assert!(stderr.contains(name), "{name} not named: {stderr}");
    }
    assert_eq!(fs::read(dest.join("ok")).unwrap(), b"ok");
    assert_eq!(fs::read(dest.join("theirs/changed")).unwrap(), b"old");
    assert!(!dest.join("theirs/added").exists());
}
