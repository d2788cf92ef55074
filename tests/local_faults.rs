//! Bad local conditions, through the `xfer` binary: sources that change
//! while being sent, a destination filesystem that fills up, unreadable
//! sources and unwritable destinations, names that are not UTF-8, deep
//! paths.

use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::util::as_nobody;
use crate::util::seeded;

pub(crate) fn xfer(tmp: &Path) -> Command {
    let mut cmd = Command::new(assert_cmd::cargo::cargo_bin("xfer"));
    cmd.env("XFER_STATE_DIR", tmp.join("state")).env("XFER_CONFIG_DIR", tmp.join("cfg"));
    cmd
}

pub(crate) fn json(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!("{e}: {}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
    })
}

fn temporaries(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for entry in walk(dir) {
        if entry.file_name().is_some_and(|n| n.as_bytes().starts_with(b".xfer-tmp.")) {
            found.push(entry);
        }
    }
    found
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            out.extend(walk(&path));
        }
        out.push(path);
    }
    out
}

/// Waits until `dest` holds something (data is arriving), up to a minute.
fn wait_for_data(child: &mut Child, dest: &Path) {
    let started = Instant::now();
    while !fs::read_dir(dest).is_ok_and(|mut d| d.next().is_some()) {
        assert!(child.try_wait().unwrap().is_none(), "the push ended before data arrived");
        assert!(started.elapsed() < Duration::from_secs(60), "no data arrived");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A file appended, truncated or replaced while it is being sent is never
/// committed as a mix: the destination holds the version scanned (whole,
/// hash-checked) or its old state, the file is reported, the other files
/// are committed, and the run exits 3; the next run sends the new version.
#[test]
fn source_changing_while_sent_is_reported_never_torn() {
    const BIG: usize = 24 << 20;
    for (case, change) in [("append", 0), ("truncate", 1), ("replace", 2)] {
        let tmp = TempDir::new().unwrap();
        let (src, dest) = (tmp.path().join("src"), tmp.path().join("dest"));
        fs::create_dir(&src).unwrap();
        let scanned = seeded(BIG, 7);
        fs::write(src.join("big"), &scanned).unwrap();
        fs::write(src.join("small"), b"small").unwrap();
        let mut child = xfer(tmp.path())
            .args(["push", "--json", "--bwlimit", "8M"])
            .arg(&src)
            .arg(&dest)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        wait_for_data(&mut child, &dest);
        std::thread::sleep(Duration::from_millis(300));
        let now = match change {
            0 => {
                let mut file = fs::OpenOptions::new().append(true).open(src.join("big")).unwrap();
                std::io::Write::write_all(&mut file, b"appended").unwrap();
                [scanned.clone(), b"appended".to_vec()].concat()
            }
            1 => {
                fs::OpenOptions::new().write(true).open(src.join("big")).unwrap().set_len(1 << 20).unwrap();
                scanned[..1 << 20].to_vec()
            }
            _ => {
                let other = seeded(BIG, 8);
                fs::write(src.join("big.new"), &other).unwrap();
                fs::rename(src.join("big.new"), src.join("big")).unwrap();
                other
            }
        };
        let out = child.wait_with_output().unwrap();
        assert_eq!(out.status.code(), Some(3), "{case}: {}", String::from_utf8_lossy(&out.stderr));
        let report = json(&out);
        let failed = report["failed"].as_array().unwrap();
        assert!(failed.iter().any(|f| f["path"] == "big"), "{case}: not reported: {report}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("big"), "{case}");
        assert_eq!(fs::read(dest.join("small")).unwrap(), b"small", "{case}: the rest was not committed");
        if let Ok(bytes) = fs::read(dest.join("big")) {
            assert!(bytes == scanned, "{case}: a torn file ({} bytes) under the final name", bytes.len());
        }
        assert!(temporaries(&dest).is_empty(), "{case}: temporaries left");
        let again = xfer(tmp.path()).args(["push", "--json"]).arg(&src).arg(&dest).output().unwrap();
        assert!(again.status.success(), "{case}: {}", String::from_utf8_lossy(&again.stderr));
        assert!(fs::read(dest.join("big")).unwrap() == now, "{case}: the next run did not catch up");
    }
}

/// Names that are not UTF-8, a 255-byte name and a deep path round-trip
/// byte for byte.
#[test]
fn odd_names_and_deep_paths_round_trip() {
    let tmp = TempDir::new().unwrap();
    let (src, dest) = (tmp.path().join("src"), tmp.path().join("dest"));
    fs::create_dir(&src).unwrap();
    let latin1 = std::ffi::OsStr::from_bytes(b"caf\xe9 \xff\xfe");
    fs::write(src.join(latin1), b"latin-1").unwrap();
    let long_name = "n".repeat(255);
    fs::write(src.join(&long_name), b"long").unwrap();
    // 30 levels of 100-byte names: a 3,030-byte relative path.
    let mut deep = src.clone();
    for level in 0..30 {
        deep.push(format!("{level:02}{}", "d".repeat(98)));
    }
    fs::create_dir_all(&deep).unwrap();
    fs::write(deep.join("leaf"), b"deep").unwrap();
    let out = xfer(tmp.path()).args(["push", "--json"]).arg(&src).arg(&dest).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(json(&out)["files_changed"], 3);
    assert_eq!(fs::read(dest.join(latin1)).unwrap(), b"latin-1");
    assert_eq!(fs::read(dest.join(&long_name)).unwrap(), b"long");
    let deep_dest = dest.join(deep.strip_prefix(&src).unwrap());
    assert_eq!(fs::read(deep_dest.join("leaf")).unwrap(), b"deep");
    let again = xfer(tmp.path()).args(["push", "--json"]).arg(&src).arg(&dest).output().unwrap();
    assert_eq!(json(&again)["files_changed"], 0);
}

pub(crate) fn open_up(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

/// An unreadable source file and an unwritable destination directory are
/// per-entry errors naming the path; everything else is committed, and
/// the run exits 3.
#[test]
fn unreadable_source_and_unwritable_destination_are_per_entry_errors() {
    let tmp = TempDir::new().unwrap();
    open_up(tmp.path(), 0o777);
    let (src, dest) = (tmp.path().join("src"), tmp.path().join("dest"));
    fs::create_dir_all(src.join("locked")).unwrap();
    fs::write(src.join("ok"), b"ok").unwrap();
    fs::write(src.join("secret"), b"secret").unwrap();
    fs::write(src.join("locked/inside"), b"inside").unwrap();
    fs::create_dir_all(dest.join("locked")).unwrap();
    fs::create_dir_all(tmp.path().join("state")).unwrap();
    for dir in [&src, &src.join("locked"), &dest, &tmp.path().join("state")] {
        open_up(dir, 0o777);
    }
    open_up(&src.join("ok"), 0o644);
    open_up(&src.join("locked/inside"), 0o644);
    open_up(&src.join("secret"), 0o000);
    // The destination's `locked` exists and may not be written into.
    open_up(&dest.join("locked"), 0o555);
    let mut push = xfer(tmp.path());
    push.args(["push", "--json"]).arg(&src).arg(&dest);
    let Some(mut push) = as_nobody(&push) else {
        eprintln!("skipped: cannot run as another user here");
        return;
    };
    let out = push.output().unwrap();
    open_up(&dest.join("locked"), 0o755);
    assert_eq!(out.status.code(), Some(3), "{}", String::from_utf8_lossy(&out.stderr));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("secret") && stderr.to_lowercase().contains("permission denied"), "{stderr}");
    assert_eq!(fs::read(dest.join("ok")).unwrap(), b"ok");
    assert!(!dest.join("secret").exists());
    assert!(!dest.join("locked/inside").exists());
    assert!(temporaries(&dest).is_empty());
}

/// A destination filesystem that fills up: the push fails with a clear
/// "no space" error, every file committed before stays intact, no
/// temporary is left, and once space is freed the re-push completes.
/// Needs root (a size-limited tmpfs mounted by the test).
#[test]
fn full_disk_fails_clearly_and_recovers() {
    let tmp = TempDir::new().unwrap();
    let mnt = tmp.path().join("small");
    fs::create_dir(&mnt).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=8m", "xfer-test"])
        .arg(&mnt)
        .output()
        .is_ok_and(|o| o.status.success());
    if !mounted {
        eprintln!("skipped: cannot mount a tmpfs here (needs root)");
        return;
    }
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg("-l").arg(&self.0).output();
        }
    }
    let _unmount = Unmount(mnt.clone());
    let (src, dest) = (tmp.path().join("src"), mnt.join("dest"));
    fs::create_dir(&src).unwrap();
    fs::write(src.join("kept"), seeded(1 << 20, 1)).unwrap();
    let first = xfer(tmp.path()).args(["push", "--json"]).arg(&src).arg(&dest).output().unwrap();
    assert!(first.status.success(), "{}", String::from_utf8_lossy(&first.stderr));
    for i in 0..6 {
        fs::write(src.join(format!("big{i}")), seeded(2 << 20, 10 + i)).unwrap();
    }
    fs::write(src.join("kept"), seeded(1 << 20, 2)).unwrap();
    let full = xfer(tmp.path()).args(["push", "--json"]).arg(&src).arg(&dest).output().unwrap();
    let stderr = String::from_utf8_lossy(&full.stderr);
    assert_ne!(full.status.code(), Some(0), "a push into a full disk succeeded");
    assert!(stderr.to_lowercase().contains("no space"), "unclear error: {stderr}");
    assert_eq!(fs::read(dest.join("kept")).unwrap(), seeded(1 << 20, 1), "a committed file was damaged");
    for i in 0..6 {
        if let Ok(bytes) = fs::read(dest.join(format!("big{i}"))) {
            assert!(bytes == seeded(2 << 20, 10 + i), "big{i} is torn");
        }
    }
    assert!(temporaries(&dest).is_empty(), "temporaries left: {:?}", temporaries(&dest));
    let grown = Command::new("mount").args(["-o", "remount,size=64m"]).arg(&mnt).output().unwrap();
    assert!(grown.status.success());
    let again = xfer(tmp.path()).args(["push", "--json"]).arg(&src).arg(&dest).output().unwrap();
    assert!(again.status.success(), "{}", String::from_utf8_lossy(&again.stderr));
    assert_eq!(fs::read(dest.join("kept")).unwrap(), seeded(1 << 20, 2));
    for i in 0..6 {
        assert!(fs::read(dest.join(format!("big{i}"))).unwrap() == seeded(2 << 20, 10 + i));
    }
}

/// 1,000,000 entries in one directory: the push completes, a no-change
/// push sends nothing, and neither side's memory runs away. Slow (minutes):
/// `scripts/slow-tests.sh` runs it.
#[test]
#[ignore = "slow: creates a million files; run by scripts/slow-tests.sh"]
fn million_entries_in_one_directory() {
    const ENTRIES: usize = 1_000_000;
    let tmp = TempDir::new().unwrap();
    let (src, dest) = (tmp.path().join("src"), tmp.path().join("dest"));
    fs::create_dir(&src).unwrap();
    for i in 0..ENTRIES {
        fs::write(src.join(format!("entry-{i:07}")), (i as u32).to_le_bytes()).unwrap();
    }
    let started = Instant::now();
    let out = xfer(tmp.path()).args(["push", "--json"]).arg(&src).arg(&dest).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let first = json(&out);
    assert_eq!(first["files_changed"].as_u64(), Some(ENTRIES as u64));
    let again = json(&xfer(tmp.path()).args(["push", "--json"]).arg(&src).arg(&dest).output().unwrap());
    assert_eq!(again["files_changed"], 0);
    assert_eq!(fs::read(dest.join("entry-0999999")).unwrap(), 999_999u32.to_le_bytes());
    let peak = first["peak_rss_bytes"].as_u64().unwrap();
    eprintln!("1M entries: first push {:.1} s, peak RSS {} MiB", started.elapsed().as_secs_f64(), peak >> 20);
    // Both sides share this process. File records now stay in the state
    // databases, but each side still holds its whole manifest, Merkle
    // listings and (the sender) its plan, a few hundred bytes per entry:
    // the 1 GiB bound returns when those stream per directory (issue 6).
    // Until then this catches the cost growing.
    assert!(peak < 4 << 30, "peak RSS {} MiB: per-entry memory grew", peak >> 20);
}
