//! A type change is a replacement, atomic per entry: where a directory
//! becomes a file or symlink, or a file or symlink a directory, the path
//! names the old entry or the new one at every instant, through a crash at
//! any step (the process aborted at a crash point, as `kill -9` would) and
//! to a reader polling it during the push. A re-push then completes and
//! leaves no temporary, file or directory.

use std::fs;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tempfile::TempDir;

use crate::delete_safety::{fresh_source, type_change_trees};
use crate::local_faults::xfer;
use crate::util::{assert_same_tree, read_tree, rel, seeded, Model, Node};

/// The signal `XFER_CRASH_AT` dies of (`abort`).
const SIGABRT: i32 = 6;

/// The type-change trees, with a big new file that sorts before the
/// changed entries, so that building it takes a while in the middle of the
/// push (a window in which a replaced entry must not be missing).
fn trees() -> (Model, Model) {
    let (v1, mut v2) = type_change_trees();
    v2.insert(rel(b"big.bin"), Node::File { data: seeded(24 << 20, 7), mode: 0o644, mtime: 200 });
    (v1, v2)
}

/// The paths holding an entry in both trees (every type change among them).
fn kept_paths(v1: &Model, v2: &Model) -> Vec<String> {
    v1.keys().filter(|p| v2.contains_key(*p)).map(|p| p.to_string()).collect()
}

/// Whether the entry at `abs` is the one `node` describes, by kind (and
/// content, for a file).
fn is(abs: &Path, node: &Node) -> bool {
    let Ok(lstat) = fs::symlink_metadata(abs) else { return false };
    match node {
        Node::Dir { .. } => lstat.is_dir(),
        Node::File { data, .. } => lstat.is_file() && fs::read(abs).is_ok_and(|d| d == *data),
        Node::Symlink { target, .. } => {
            use std::os::unix::ffi::OsStrExt;
            lstat.file_type().is_symlink() && fs::read_link(abs).is_ok_and(|t| t.as_os_str().as_bytes() == target)
        }
    }
}

fn push(tmp: &Path, src: &Path, dest: &Path, crash_at: Option<&str>) -> std::process::Output {
    let mut cmd = xfer(tmp);
    cmd.args(["push", "--json", "--delete"]).arg(src).arg(dest);
    if let Some(point) = crash_at {
        cmd.env("XFER_CRASH_AT", point);
    }
    cmd.output().expect("xfer runs")
}

/// A push killed before, during or after any replacement leaves every
/// type-changed path naming its old or its new entry, never nothing; the
/// next push completes with no temporary left. Passes are tried from the
/// first until the push no longer reaches the point.
#[test]
fn crash_during_type_change_leaves_old_or_new_entry() {
    let (v1, v2) = type_change_trees();
    let paths = kept_paths(&v1, &v2);
    // store.deleted: where a replacement used to be a delete first.
    let points = ["store.deleted", "store.exchange", "store.exchanged", "commit.rename", "commit.replaced"];
    let mut crashes = 0;
    for point in points {
        for nth in 1..=20 {
            let tmp = TempDir::new().unwrap();
            let (src, dest) = (tmp.path().join("src"), tmp.path().join("dest"));
            fresh_source(&src, &v1);
            let out = push(tmp.path(), &src, &dest, None);
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            fresh_source(&src, &v2);
            let out = push(tmp.path(), &src, &dest, Some(&format!("{point}:{nth}")));
            if out.status.success() {
                break;
            }
            assert_eq!(
                out.status.signal(),
                Some(SIGABRT),
                "{point}:{nth} failed without crashing: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            crashes += 1;
            for path in &paths {
                let abs = rel(path.as_bytes()).to_path(&dest);
                let (old, new) = (&v1[&rel(path.as_bytes())], &v2[&rel(path.as_bytes())]);
                assert!(
                    is(&abs, old) || is(&abs, new),
                    "after a crash at {point}:{nth}, {path} is neither old nor new"
                );
            }
            let out = push(tmp.path(), &src, &dest, None);
            assert!(out.status.success(), "re-push after {point}:{nth}: {}", String::from_utf8_lossy(&out.stderr));
            // Temporaries left, files or directories, would show here.
            assert_same_tree(&read_tree(&dest), &v2);
        }
    }
    // Each exchange point is passed once per replaced entry.
    assert!(crashes >= 20, "only {crashes} crashes: the replacement points were not reached");
}

/// A reader polling every type-changed path during a push never finds one
/// missing.
#[test]
fn reader_never_sees_a_replaced_entry_missing() {
    let (v1, v2) = trees();
    let paths = kept_paths(&v1, &v2);
    for _ in 0..3 {
        let tmp = TempDir::new().unwrap();
        let (src, dest) = (tmp.path().join("src"), tmp.path().join("dest"));
        fresh_source(&src, &v1);
        let out = push(tmp.path(), &src, &dest, None);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        fresh_source(&src, &v2);

        let stop = Arc::new(AtomicBool::new(false));
        let missing = Arc::new(Mutex::new(std::collections::BTreeSet::new()));
        let abs: Vec<(String, std::path::PathBuf)> =
            paths.iter().map(|p| (p.clone(), rel(p.as_bytes()).to_path(&dest))).collect();
        let reader = {
            let (stop, missing) = (stop.clone(), missing.clone());
            std::thread::spawn(move || {
                let mut polls = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    for (path, abs) in &abs {
                        if fs::symlink_metadata(abs).is_err() {
                            missing.lock().unwrap().insert(path.clone());
                        }
                    }
                    polls += 1;
                }
                polls
            })
        };
        let out = push(tmp.path(), &src, &dest, None);
        stop.store(true, Ordering::Relaxed);
        let polls = reader.join().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert_same_tree(&read_tree(&dest), &v2);
        assert!(polls > 0);
        let missing = missing.lock().unwrap();
        assert!(missing.is_empty(), "seen missing during the push ({polls} polls): {missing:?}");
    }
}

/// v1: directory `d` holding two files; v2: `d` is a file. Replacing it
/// loses three entries.
fn directory_then_file() -> (Model, Model) {
    let dir = Node::Dir { mode: 0o755, mtime: 100 };
    let file = |data: &str| Node::File { data: data.as_bytes().to_vec(), mode: 0o644, mtime: 200 };
    let mut v1 = Model::new();
    v1.insert(rel(b"d"), dir);
    v1.insert(rel(b"d/a"), file("a"));
    v1.insert(rel(b"d/b"), file("b"));
    let mut v2 = Model::new();
    v2.insert(rel(b"d"), file("now a file"));
    (v1, v2)
}

/// A directory replaced by a file still counts against `--max-delete`:
/// its whole subtree is lost.
#[test]
fn replaced_directory_counts_against_max_delete() {
    let tmp = TempDir::new().unwrap();
    let (src, dest) = (tmp.path().join("src"), tmp.path().join("dest"));
    let (v1, v2) = directory_then_file();
    fresh_source(&src, &v1);
    assert!(push(tmp.path(), &src, &dest, None).status.success());
    fresh_source(&src, &v2);
    let out = xfer(tmp.path()).args(["push", "--max-delete", "2"]).arg(&src).arg(&dest).output().unwrap();
    assert!(!out.status.success(), "a replacement of 3 entries passed --max-delete 2");
    assert_same_tree(&read_tree(&dest), &v1);
    let out = xfer(tmp.path()).args(["push", "--max-delete", "3"]).arg(&src).arg(&dest).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_same_tree(&read_tree(&dest), &v2);
}

/// A pull's receiver charges a replacement against its delete limit as the
/// `Delete` it replaces would have been: no `Delete` comes for it now.
#[test]
fn pull_charges_a_replaced_directory_to_its_delete_limit() {
    use xfer::plan::DeleteLimit;
    let tmp = TempDir::new().unwrap();
    let (src, dest, state) = (tmp.path().join("src"), tmp.path().join("dest"), tmp.path().join("state"));
    let (v1, v2) = directory_then_file();
    fresh_source(&src, &v2);
    fresh_source(&dest, &v1);
    let limited = DeleteLimit { max: Some(2), guard: false };
    assert!(crate::footguns::held_deletes::pull(&src, &dest, &state, limited).is_err(), "3 entries replaced under 2");
    assert_same_tree(&read_tree(&dest), &v1);
    let enough = DeleteLimit { max: Some(3), guard: false };
    crate::footguns::held_deletes::pull(&src, &dest, &state, enough).unwrap();
    assert_same_tree(&read_tree(&dest), &v2);
}
