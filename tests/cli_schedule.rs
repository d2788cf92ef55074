//! Windows, timetables and the config file's defaults, run through the
//! `xfer` binary with an injected clock (`XFER_CLOCK_FILE`).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command as Process, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::util::seeded;

/// The clock the binary reads: `DAY HH:MM`, replaced by rename so a reader
/// never sees it half-written.
struct Clock(PathBuf);

impl Clock {
    fn new(dir: &Path, at: &str) -> Clock {
        let clock = Clock(dir.join("clock"));
        clock.set(at);
        clock
    }

    fn set(&self, at: &str) {
        let temp = self.0.with_extension("tmp");
        fs::write(&temp, at).unwrap();
        fs::rename(&temp, &self.0).unwrap();
    }
}

fn xfer(tmp: &Path, clock: &Clock) -> Process {
    let mut cmd = Process::new(assert_cmd::cargo::cargo_bin("xfer"));
    cmd.env("XFER_STATE_DIR", tmp.join("state"))
        .env("XFER_CONFIG_DIR", tmp.join("cfg"))
        .env("XFER_CLOCK_FILE", &clock.0);
    cmd
}

fn spawn(mut cmd: Process) -> Child {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap()
}

/// Waits for `child` up to `limit`; kills it and fails past that.
fn finish(mut child: Child, limit: Duration) -> std::process::Output {
    let deadline = Instant::now() + limit;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("xfer still running after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

/// Chunks of `file` as the binary cuts them.
fn chunks_of(tmp: &Path, clock: &Clock, file: &Path) -> u64 {
    let out = xfer(tmp, clock).arg("digest").arg(file).output().unwrap();
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    json["chunks"].as_u64().unwrap()
}

/// The window closes mid-push: the push stops at a commit point with exit
/// 4, the files that arrived whole stay committed and nothing torn sits
/// under a final name; when the window opens again, the next run sends
/// exactly the chunks of the files still missing.
#[test]
fn window_closing_mid_push_stops_and_the_next_run_resumes() {
    const FILES: u64 = 32;
    const SIZE: usize = 512 << 10;
    let tmp = TempDir::new().unwrap();
    let (src, dest) = (tmp.path().join("src"), tmp.path().join("dest"));
    fs::create_dir(&src).unwrap();
    for i in 0..FILES {
        fs::write(src.join(format!("f{i:02}")), seeded(SIZE, 100 + i)).unwrap();
    }
    let clock = Clock::new(tmp.path(), "Mon 23:00");
    // 16 MiB at 2 MiB/s: the window closes about a third of the way in.
    let mut first = xfer(tmp.path(), &clock);
    first.args(["push", "--json", "--window", "22:00-06:00", "--bwlimit", "2M"]).arg(&src).arg(&dest);
    let started = Instant::now();
    let child = spawn(first);
    // Wait for data to arrive (temporaries appear), then let it flow a while.
    while !fs::read_dir(&dest).is_ok_and(|mut d| d.next().is_some()) {
        assert!(started.elapsed() < Duration::from_secs(60), "the push never started writing");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(2500));
    clock.set("Tue 06:30");
    let out = finish(child, Duration::from_secs(30));
    assert_eq!(out.status.code(), Some(4), "{}", String::from_utf8_lossy(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["exit_code"], 4, "{json}");
    assert!(json["error"].as_str().unwrap().contains("22:00-06:00"), "{json}");

    let mut missing = Vec::new();
    for entry in fs::read_dir(&dest).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        assert!(!name.starts_with(".xfer-tmp."), "temporary {name} left behind");
    }
    for i in 0..FILES {
        let name = format!("f{i:02}");
        match fs::read(dest.join(&name)) {
            Ok(bytes) => assert!(bytes == seeded(SIZE, 100 + i), "{name} is torn"),
            Err(_) => missing.push(name),
        }
    }
    let committed = FILES as usize - missing.len();
    assert!(
        committed > 0 && !missing.is_empty(),
        "{committed} of {FILES} committed: the window closed too early or late"
    );

    // Outside the window the next run does not start.
    let closed = xfer(tmp.path(), &clock).args(["push", "--window", "22:00-06:00"]).arg(&src).arg(&dest).output();
    assert_eq!(closed.unwrap().status.code(), Some(4));

    clock.set("Tue 22:10");
    let resumed = xfer(tmp.path(), &clock)
        .args(["push", "--json", "--window", "22:00-06:00"])
        .arg(&src)
        .arg(&dest)
        .output()
        .unwrap();
    assert!(resumed.status.success(), "{}", String::from_utf8_lossy(&resumed.stderr));
    let json: serde_json::Value = serde_json::from_slice(&resumed.stdout).unwrap();
    let expected: u64 = missing.iter().map(|name| chunks_of(tmp.path(), &clock, &src.join(name))).sum();
    assert_eq!(json["chunks_sent"].as_u64(), Some(expected), "re-sent chunks the server had: {json}");
    assert_eq!(json["files_changed"].as_u64(), Some(missing.len() as u64), "{json}");
    for i in 0..FILES {
        assert!(fs::read(dest.join(format!("f{i:02}"))).unwrap() == seeded(SIZE, 100 + i));
    }
}

/// `--wait` outside the window sleeps, writes nothing, and runs once the
/// window opens.
#[test]
fn wait_sleeps_until_the_window_opens() {
    let tmp = TempDir::new().unwrap();
    let (src, dest) = (tmp.path().join("src"), tmp.path().join("dest"));
    fs::create_dir(&src).unwrap();
    fs::write(src.join("a"), b"a").unwrap();
    let clock = Clock::new(tmp.path(), "Sat 21:59");
    let mut push = xfer(tmp.path(), &clock);
    push.args(["push", "--window", "Sat,22:00-23:00", "--wait"]).arg(&src).arg(&dest);
    let mut child = spawn(push);
    std::thread::sleep(Duration::from_millis(2500));
    assert!(child.try_wait().unwrap().is_none(), "--wait did not wait");
    assert!(!dest.join("a").exists(), "written before the window opened");
    clock.set("Sat 22:00");
    let out = finish(child, Duration::from_secs(30));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(fs::read(dest.join("a")).unwrap(), b"a");
    assert!(String::from_utf8_lossy(&out.stderr).contains("waiting for the window"));
}

/// The config file's window, excludes and rate apply when the command line
/// gives none; the command line's win; bad values name the file.
#[test]
fn config_defaults_for_window_exclude_and_bwlimit() {
    let tmp = TempDir::new().unwrap();
    let (src, dest, cfg) = (tmp.path().join("src"), tmp.path().join("dest"), tmp.path().join("cfg"));
    fs::create_dir_all(&cfg).unwrap();
    fs::create_dir(&src).unwrap();
    fs::write(src.join("keep"), b"keep").unwrap();
    fs::write(src.join("skip.tmp"), b"skip").unwrap();
    fs::write(src.join("cli.log"), b"log").unwrap();
    let clock = Clock::new(tmp.path(), "Wed 12:00");
    // exclude is for pushes only: it lives under [push], not [defaults].
    let config =
        "[defaults]\nwindow = \"22:00-06:00\"\nbwlimit = \"08:00,1M 19:00,off\"\n[push]\nexclude = [\"*.tmp\"]\n";
    fs::write(cfg.join("config.toml"), config).unwrap();
    let closed = xfer(tmp.path(), &clock).args(["push", "--json"]).arg(&src).arg(&dest).output().unwrap();
    assert_eq!(closed.status.code(), Some(4), "{}", String::from_utf8_lossy(&closed.stderr));
    assert!(!dest.join("keep").exists());

    let out = xfer(tmp.path(), &clock)
        .args(["push", "--window", "always", "--exclude", "*.log", "-i"])
        .arg(&src)
        .arg(&dest)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(dest.join("keep").exists());
    assert!(!dest.join("skip.tmp").exists(), "the config's exclude was not applied");
    assert!(!dest.join("cli.log").exists(), "--exclude was not applied next to the config's");

    fs::write(cfg.join("config.toml"), "[defaults]\nbwlimit = \"fast\"\n").unwrap();
    let bad = xfer(tmp.path(), &clock).arg("push").arg(&src).arg(&dest).output().unwrap();
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert_eq!(bad.status.code(), Some(2), "a bad config is a usage error");
    assert!(stderr.contains("config.toml") && stderr.contains("bwlimit") && stderr.contains("not"), "{stderr}");

    let mut no_window = xfer(tmp.path(), &Clock::new(tmp.path(), "Wed 12:00"));
    let out = no_window
        .env("XFER_CONFIG_DIR", tmp.path().join("none"))
        .args(["push", "--wait"])
        .arg(&src)
        .arg(&dest)
        .output();
    let out = out.unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--window"));
}

/// `-v` lists the changed entries and logs the session's steps; `-q` and
/// `-v` together are a usage error.
#[test]
fn verbose_lists_entries_and_steps() {
    let tmp = TempDir::new().unwrap();
    let (src, dest) = (tmp.path().join("src"), tmp.path().join("dest"));
    fs::create_dir(&src).unwrap();
    fs::write(src.join("a"), b"a").unwrap();
    let clock = Clock::new(tmp.path(), "Wed 12:00");
    let out = xfer(tmp.path(), &clock).args(["push", "-v"]).arg(&src).arg(&dest).output().unwrap();
    assert!(out.status.success());
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains(">f a"), "{stdout}");
    assert!(stderr.contains("scanned") && stderr.contains("connected"), "{stderr}");
    let both = xfer(tmp.path(), &clock).args(["push", "-v", "-q"]).arg(&src).arg(&dest).output().unwrap();
    assert_eq!(both.status.code(), Some(2));
}
