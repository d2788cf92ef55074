//! Writers of nested trees exclude each other; a damaged state database is
//! rebuilt; SIGTERM stops `serve` and `push` at a commit point. The
//! binary is run as a user would, real signals included.

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::util::wait_within;

use crate::util::seeded;

const FILE: usize = 1 << 20;

fn xfer(state: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_xfer"));
    cmd.env("XFER_STATE_DIR", state);
    cmd
}

/// A source of eight 1 MiB files (two in `sub/`): eight seconds at 1 MiB/s.
fn big_source(at: &Path) -> PathBuf {
    fs::create_dir_all(at.join("sub")).unwrap();
    for i in 0..6 {
        fs::write(at.join(format!("f{i}")), seeded(FILE, i)).unwrap();
    }
    for i in 6..8 {
        fs::write(at.join(format!("sub/g{i}")), seeded(FILE, i)).unwrap();
    }
    at.to_path_buf()
}

fn assert_big_tree(at: &Path) {
    for i in 0..6 {
        assert!(fs::read(at.join(format!("f{i}"))).unwrap() == seeded(FILE, i), "f{i} differs");
    }
    for i in 6..8 {
        assert!(fs::read(at.join(format!("sub/g{i}"))).unwrap() == seeded(FILE, i), "sub/g{i} differs");
    }
}

fn small_source(at: &Path) -> PathBuf {
    fs::create_dir_all(at).unwrap();
    fs::write(at.join("small"), b"small").unwrap();
    at.to_path_buf()
}

/// The receiver's temporaries under `root`.
fn temps(root: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let Ok(dir) = fs::read_dir(root) else { return found };
    for entry in dir.flatten() {
        let path = entry.path();
        if entry.file_name().to_string_lossy().starts_with(".xfer-tmp.") {
            found.push(path);
        } else if entry.file_type().unwrap().is_dir() {
            found.extend(temps(&path));
        }
    }
    found
}

/// Waits until a transfer into `root` is writing (a temporary exists).
fn wait_for_temps(root: &Path, writer: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while temps(root).is_empty() {
        assert!(writer.try_wait().unwrap().is_none(), "the writer ended before it wrote");
        assert!(Instant::now() < deadline, "no temporary appeared under {}", root.display());
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn sigterm(child: &Child) {
    let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(status.success());
}

fn stderr_of(child: &mut Child) -> String {
    let mut text = String::new();
    if let Some(mut err) = child.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut err, &mut text);
    }
    text
}

/// `xfer serve` as its own process, its stderr collected by a thread.
struct Served {
    child: Child,
    addr: String,
    fingerprint: String,
    client_cfg: PathBuf,
    root: PathBuf,
    audit: PathBuf,
    log: Arc<Mutex<String>>,
}

impl Served {
    fn start(tmp: &Path) -> Served {
        let client_cfg = tmp.join("client-cfg");
        let id = xfer(tmp).args(["id", "--config-dir"]).arg(&client_cfg).output().unwrap();
        let client_fp = String::from_utf8(id.stdout).unwrap().trim().to_string();
        let (root, audit) = (tmp.join("served"), tmp.join("audit.jsonl"));
        let mut child = xfer(tmp)
            .args(["serve", "--listen", "127.0.0.1:0", "--allow", &client_fp, "--config-dir"])
            .arg(tmp.join("server-cfg"))
            .arg("--root")
            .arg(&root)
            .arg("--audit-log")
            .arg(&audit)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        // "xfer: serving ROOT on ADDR as FINGERPRINT"
        let first = lines.next().unwrap().unwrap();
        let words: Vec<&str> = first.split_whitespace().collect();
        let (addr, fingerprint) = (words[words.len() - 3].to_string(), words[words.len() - 1].to_string());
        let log = Arc::new(Mutex::new(String::new()));
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                let mut log = sink.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        Served { child, addr, fingerprint, client_cfg, root: root.canonicalize().unwrap(), audit, log }
    }

    /// `xfer push SRC xfer://ADDR/PATH` with `extra` flags, state in `state`.
    fn push(&self, state: &Path, src: &Path, path: &str, extra: &[&str]) -> Command {
        let mut cmd = xfer(state);
        cmd.args(["push", "--server-fingerprint", &self.fingerprint, "--config-dir"])
            .arg(&self.client_cfg)
            .args(extra)
            .arg(src)
            .arg(format!("xfer://{}/{path}", self.addr));
        cmd
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Item 6: a `--delete` push to `/a` while another push writes `/a/b`, or a
/// push to `/a/b/c` inside it, is told busy and touches nothing; a sibling
/// goes ahead; the push in flight completes whole.
#[test]
fn locks_nested_trees_on_a_server_exclude_each_other() {
    let tmp = TempDir::new().unwrap();
    let served = Served::start(tmp.path());
    let (big, small) = (big_source(&tmp.path().join("big")), small_source(&tmp.path().join("small")));
    let mut writer =
        served.push(&tmp.path().join("s1"), &big, "a/b", &["--bwlimit", "1M"]).stderr(Stdio::piped()).spawn().unwrap();
    wait_for_temps(&served.root.join("a/b"), &mut writer);

    let above = served.push(&tmp.path().join("s2"), &small, "a", &["--delete", "--busy-wait", "0"]).output().unwrap();
    assert_eq!(above.status.code(), Some(5), "a --delete push above a tree in flight ran: {}", text(&above));
    assert!(text(&above).contains("another transfer is writing /a"), "{}", text(&above));
    let inside = served.push(&tmp.path().join("s3"), &small, "a/b/c", &["--busy-wait", "0"]).output().unwrap();
    assert_eq!(inside.status.code(), Some(5), "a push inside a tree in flight ran: {}", text(&inside));
    assert!(!served.root.join("a/b/c").exists(), "the refused push made its directory inside the held tree");
    let sibling = served.push(&tmp.path().join("s4"), &small, "a/sibling", &["--busy-wait", "0"]).output().unwrap();
    assert!(sibling.status.success(), "siblings must not collide: {}", text(&sibling));

    let status = wait_within(&mut writer, Duration::from_secs(60)).expect("the push in flight finished");
    assert!(status.success(), "{}", stderr_of(&mut writer));
    assert_big_tree(&served.root.join("a/b"));
    assert!(temps(&served.root).is_empty());
    // Once it ended, the tree above is free again.
    let after = served.push(&tmp.path().join("s2"), &small, "a", &["--delete", "--busy-wait", "0"]).output().unwrap();
    assert!(after.status.success(), "{}", text(&after));
}

/// Item 6: two local pushes to one destination with different state
/// directories, or one into a directory inside it, collide: the lock lives
/// with the destination, not with the state.
#[test]
fn locks_local_pushes_with_different_state_dirs_collide() {
    let tmp = TempDir::new().unwrap();
    let (big, small) = (big_source(&tmp.path().join("big")), small_source(&tmp.path().join("small")));
    let dest = tmp.path().join("dest");
    let mut writer = xfer(&tmp.path().join("s1"))
        .args(["push", "--bwlimit", "1M"])
        .arg(&big)
        .arg(&dest)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_temps(&dest, &mut writer);

    let mut same = xfer(&tmp.path().join("s2"));
    let same = same.args(["push", "--delete", "--busy-wait", "0"]).arg(&small).arg(&dest).output().unwrap();
    assert_eq!(same.status.code(), Some(5), "a second push to the destination ran: {}", text(&same));
    assert!(text(&same).contains("another transfer is writing"), "{}", text(&same));
    let mut nested = xfer(&tmp.path().join("s3"));
    let nested = nested.args(["push", "--busy-wait", "0"]).arg(&small).arg(dest.join("sub")).output().unwrap();
    assert_eq!(nested.status.code(), Some(5), "a push inside the destination ran: {}", text(&nested));
    // Refused before it makes anything: not even its own missing directory.
    let mut fresh = xfer(&tmp.path().join("s3"));
    let fresh = fresh.args(["push", "--busy-wait", "0"]).arg(&small).arg(dest.join("new/deeper")).output().unwrap();
    assert_eq!(fresh.status.code(), Some(5), "a push inside the destination ran: {}", text(&fresh));
    assert!(!dest.join("new").exists(), "the refused push made a directory inside the held tree");

    let status = wait_within(&mut writer, Duration::from_secs(60)).expect("the push in flight finished");
    assert!(status.success(), "{}", stderr_of(&mut writer));
    assert_big_tree(&dest);
    assert!(!dest.join("small").exists() && !dest.join("sub/small").exists() && !dest.join("new").exists());
    assert!(temps(&dest).is_empty());
}

fn damage(file: &Path) {
    fs::write(file, b"this is no redb database\n".repeat(100)).unwrap();
}

fn redb_files(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for entry in fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if entry.file_type().unwrap().is_dir() {
            found.extend(redb_files(&path));
        } else if path.extension().is_some_and(|e| e == "redb") {
            found.push(path);
        }
    }
    found
}

/// Item 9: damaged state databases (the client's and the server's) are
/// moved aside and rebuilt with a warning, and the push goes on; a state
/// failure that remains is reported to the client without the server's
/// paths.
#[test]
fn state_damaged_databases_are_rebuilt_and_server_paths_stay_hidden() {
    let tmp = TempDir::new().unwrap();
    let served = Served::start(tmp.path());
    let src = small_source(&tmp.path().join("src"));
    fs::write(src.join("data"), seeded(300_000, 3)).unwrap();
    let state = tmp.path().join("client-state");
    let first = served.push(&state, &src, "site", &[]).output().unwrap();
    assert!(first.status.success(), "{}", text(&first));

    let server_dbs = redb_files(&served.root.join(".xfer"));
    let client_dbs = redb_files(&state);
    assert!(!server_dbs.is_empty() && !client_dbs.is_empty());
    for file in server_dbs.iter().chain(&client_dbs) {
        damage(file);
    }
    fs::write(src.join("data"), seeded(300_000, 4)).unwrap();
    let again = served.push(&state, &src, "site", &[]).output().unwrap();
    assert!(again.status.success(), "a damaged state database stopped the push: {}", text(&again));
    assert!(text(&again).contains("damaged"), "no warning: {}", text(&again));
    assert_eq!(fs::read(served.root.join("site/data")).unwrap(), seeded(300_000, 4));
    for file in server_dbs.iter().chain(&client_dbs) {
        let mut aside = file.as_os_str().to_owned();
        aside.push(".corrupt");
        assert!(Path::new(&aside).exists(), "{} was not moved aside", file.display());
    }
    assert!(served.log().contains("damaged"), "no warning in the server's log: {}", served.log());
    // Rebuilt: the next push finds everything in place.
    let third = served.push(&state, &src, "site", &["--json"]).output().unwrap();
    let json: serde_json::Value = serde_json::from_slice(&third.stdout).unwrap();
    assert_eq!(json["files_changed"], 0, "{}", text(&third));

    // Local pushes too: both of their databases.
    let (dest, local_state) = (tmp.path().join("dest"), tmp.path().join("local-state"));
    let local = xfer(&local_state).arg("push").arg(&src).arg(&dest).output().unwrap();
    assert!(local.status.success(), "{}", text(&local));
    for file in redb_files(&local_state) {
        damage(&file);
    }
    let local = xfer(&local_state).arg("push").arg(&src).arg(&dest).output().unwrap();
    assert!(local.status.success(), "{}", text(&local));
    assert_eq!(fs::read(dest.join("data")).unwrap(), seeded(300_000, 4));

    // A state database that cannot be opened at all (a directory stands
    // there): the push fails, and the message keeps the server's paths.
    for file in &server_dbs {
        fs::remove_file(file).unwrap();
        fs::create_dir(file).unwrap();
    }
    let failed = served.push(&state, &src, "site", &[]).output().unwrap();
    assert_eq!(failed.status.code(), Some(1), "{}", text(&failed));
    let message = text(&failed);
    assert!(message.contains("state database"), "{message}");
    assert!(!message.contains(&*served.root.to_string_lossy()), "the server's path reached the client: {message}");
}

/// Item 10: SIGTERM stops `serve` at a commit point: the push in flight
/// is closed with the reason at once, no temporary stays, the audit log
/// has its line, and the server exits 0.
#[test]
fn signals_sigterm_stops_serve_at_a_commit_point() {
    let tmp = TempDir::new().unwrap();
    let mut served = Served::start(tmp.path());
    let big = big_source(&tmp.path().join("big"));
    let mut client =
        served.push(&tmp.path().join("s1"), &big, "site", &["--bwlimit", "1M"]).stderr(Stdio::piped()).spawn().unwrap();
    wait_for_temps(&served.root.join("site"), &mut client);
    let signalled = Instant::now();
    sigterm(&served.child);
    let server = wait_within(&mut served.child, Duration::from_secs(15));
    let server_took = signalled.elapsed();
    let pushed = wait_within(&mut client, Duration::from_secs(15));
    let client_took = signalled.elapsed();
    let client_err = stderr_of(&mut client);
    eprintln!("server stopped in {server_took:?}, client in {client_took:?}");
    assert_eq!(server.and_then(|s| s.code()), Some(0), "serve did not exit cleanly: {server:?}; {}", served.log());
    assert!(server_took < Duration::from_secs(5), "serve took {server_took:?}");
    assert_eq!(pushed.and_then(|s| s.code()), Some(1), "client: {pushed:?}; {client_err}");
    assert!(client_took < Duration::from_secs(5), "the client waited {client_took:?}");
    assert!(client_err.contains("shutting down"), "{client_err}");
    assert!(temps(&served.root).is_empty(), "temporaries left: {:?}", temps(&served.root));
    let audit = fs::read_to_string(&served.audit).unwrap_or_default();
    let line = audit.lines().find(|l| l.contains("\"/site\"")).unwrap_or_else(|| panic!("no audit line: {audit}"));
    let record: serde_json::Value = serde_json::from_str(line).unwrap();
    assert_eq!(record["result"], "cancelled", "{line}");
    assert!(record["error"].as_str().unwrap().contains("shutting down"), "{line}");
}

/// Item 10: SIGTERM stops a local push at a commit point: exit 143, no
/// temporary left, every file whole or absent, the session log written.
#[test]
fn signals_sigterm_stops_a_local_push_at_a_commit_point() {
    let tmp = TempDir::new().unwrap();
    let big = big_source(&tmp.path().join("big"));
    let (dest, log) = (tmp.path().join("dest"), tmp.path().join("push.jsonl"));
    let mut push = xfer(&tmp.path().join("state"))
        .args(["push", "--bwlimit", "1M", "--log-json"])
        .arg(&log)
        .arg(&big)
        .arg(&dest)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_temps(&dest, &mut push);
    let signalled = Instant::now();
    sigterm(&push);
    let status = wait_within(&mut push, Duration::from_secs(15));
    let took = signalled.elapsed();
    let err = stderr_of(&mut push);
    eprintln!("push stopped in {took:?}");
    assert_eq!(status.and_then(|s| s.code()), Some(143), "{status:?}: {err}");
    assert!(took < Duration::from_secs(5), "took {took:?}");
    assert!(err.contains("SIGTERM"), "{err}");
    assert!(temps(&dest).is_empty(), "temporaries left: {:?}", temps(&dest));
    for (i, name) in (0..8).map(|i| (i, if i < 6 { format!("f{i}") } else { format!("sub/g{i}") })) {
        if let Ok(held) = fs::read(dest.join(&name)) {
            assert!(held == seeded(FILE, i), "{name} is torn");
        }
    }
    let record = fs::read_to_string(&log).unwrap();
    assert!(record.contains("\"result\":\"cancelled\""), "{record}");
    // The next run completes the tree.
    let again = xfer(&tmp.path().join("state")).arg("push").arg(&big).arg(&dest).output().unwrap();
    assert!(again.status.success(), "{}", text(&again));
    assert_big_tree(&dest);
}

/// Item 10: SIGTERM during a long scan (32 sparse files of 256 MiB to
/// read) stops the push within a few seconds, not when the scan ends: the
/// scan stops before its next file.
#[test]
fn signals_sigterm_stops_a_push_during_its_scan() {
    let tmp = TempDir::new().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir(&src).unwrap();
    for n in 0..32 {
        fs::File::create(src.join(format!("f{n:02}"))).unwrap().set_len(256 << 20).unwrap();
    }
    let dest = tmp.path().join("dest");
    let mut push =
        xfer(&tmp.path().join("state")).arg("push").arg(&src).arg(&dest).stderr(Stdio::piped()).spawn().unwrap();
    std::thread::sleep(Duration::from_millis(700));
    assert!(push.try_wait().unwrap().is_none(), "the scan ended too soon to test");
    let signalled = Instant::now();
    sigterm(&push);
    let status = wait_within(&mut push, Duration::from_secs(60));
    let took = signalled.elapsed();
    let err = stderr_of(&mut push);
    eprintln!("push stopped during its scan in {took:?}");
    assert_eq!(status.and_then(|s| s.code()), Some(143), "{status:?}: {err}");
    assert!(took < Duration::from_secs(5), "the scan held SIGTERM up for {took:?}");
    assert!(temps(&dest).is_empty());
}

/// Trees of the lock model: a root, nested paths and siblings.
const TREES: [&str; 7] = ["", "a", "a/b", "a/b/c", "a/d", "e", "e/f"];

/// Whether one of two trees lies in (or is) the other.
fn nested(x: &str, y: &str) -> bool {
    let inside =
        |inner: &str, outer: &str| outer.is_empty() || inner == outer || inner.starts_with(&format!("{outer}/"));
    inside(x, y) || inside(y, x)
}

/// Any sequence of locks taken and released on nested trees: a lock is
/// granted exactly when no held lock is on the same tree, above it or
/// inside it, and a refusal is busy.
fn lock_model_impl(steps: &[(usize, bool)]) {
    use xfer::fs::store::TreeLock;
    let tmp = TempDir::new().unwrap();
    let root = tmp.path().join("root");
    let mut held: Vec<Option<TreeLock>> = (0..TREES.len()).map(|_| None).collect();
    for &(tree, release) in steps {
        if release {
            held[tree] = None;
            continue;
        }
        let conflict = TREES.iter().zip(&held).any(|(other, lock)| lock.is_some() && nested(other, TREES[tree]));
        let mut acquired = TreeLock::try_acquire(&root.join(TREES[tree]));
        // Other tests of this process spawn children: between fork and exec
        // a child holds a copy of every descriptor, so a lock just dropped
        // can outlive its holder for that moment. Only a refusal that lasts
        // is a wrong one.
        for _ in 0..40 {
            if conflict || acquired.is_ok() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
            acquired = TreeLock::try_acquire(&root.join(TREES[tree]));
        }
        match acquired {
            Ok(lock) => {
                assert!(!conflict, "{} granted while a nested tree is held", TREES[tree]);
                held[tree] = Some(lock);
            }
            Err(e) => assert!(conflict && e.is_busy(), "{} refused: {e}", TREES[tree]),
        }
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: 64, ..Default::default() })]
    #[test]
    fn locks_model_proptest(steps in proptest::collection::vec((0..TREES.len(), proptest::prelude::any::<bool>()), 1..32)) {
        lock_model_impl(&steps);
    }
}
