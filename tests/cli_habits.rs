//! Issue 19's CLI items: exit codes, `--connect-timeout`, server URLs,
//! `--bwlimit` numbers, errors said once, help and man pages, the human
//! summary and a progress bar driven by what the receiver acknowledged.
//! Each test runs the binary (found through CARGO_BIN_EXE_xfer at run
//! time, so it can be pointed at another build).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command as Process, Output, Stdio};
use std::time::{Duration, Instant};

use assert_cmd::Command;
use tempfile::TempDir;

use crate::util::wait_within;
use xfer::{Event, Meter};

use crate::util::{seeded, spawn_server};

fn xfer(state: &Path) -> Command {
    let mut cmd = Command::cargo_bin("xfer").unwrap();
    cmd.env("XFER_STATE_DIR", state).env("XFER_CONFIG_DIR", state.join("cfg"));
    cmd
}

/// As [`xfer`], for a process to run alongside others.
fn xfer_process(state: &Path) -> Process {
    let mut cmd = Process::new(assert_cmd::cargo::cargo_bin("xfer"));
    cmd.env("XFER_STATE_DIR", state).env("XFER_CONFIG_DIR", state.join("cfg"));
    cmd
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A source tree with one file of `len` random bytes.
fn source(dir: &Path, len: usize) -> PathBuf {
    fs::create_dir_all(dir).unwrap();
    fs::write(dir.join("blob"), seeded(len, 19)).unwrap();
    dir.to_path_buf()
}

/// A bad `--window` or `--bwlimit`, on the command line or in the config
/// file, is a usage error: exit 2, as a bad flag is.
#[test]
fn habits_bad_window_or_bwlimit_exits_2() {
    let tmp = TempDir::new().unwrap();
    let src = source(&tmp.path().join("src"), 10);
    let dest = tmp.path().join("dest");
    for flags in [["--window", "25:00-06:00"], ["--bwlimit", "10Q"], ["--bwlimit", "08:00"]] {
        let out = xfer(tmp.path()).arg("push").args(flags).arg(&src).arg(&dest).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{flags:?}: {}", stderr(&out));
    }
    fs::create_dir_all(tmp.path().join("cfg")).unwrap();
    for config in ["[defaults]\nbwlimit = \"fast\"\n", "[push]\nwindow = \"22:00\"\n"] {
        fs::write(tmp.path().join("cfg/config.toml"), config).unwrap();
        let out = xfer(tmp.path()).arg("push").arg(&src).arg(&dest).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{config}: {}", stderr(&out));
        assert!(stderr(&out).contains("config.toml"), "{}", stderr(&out));
    }
    assert!(!dest.exists(), "a refused run wrote its destination");
}

/// The first line `server` writes on stderr ("xfer: serving ROOT on ADDR
/// as FINGERPRINT"); the rest is read and dropped, so that the server's
/// log lines never meet a closed pipe.
fn first_line_then_drain(server: &mut Child) -> String {
    use std::io::BufRead;
    let mut reader = std::io::BufReader::new(server.stderr.take().unwrap());
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    std::thread::spawn(move || std::io::copy(&mut reader, &mut std::io::sink()));
    line
}

/// Waits until a transfer into `root` is writing (a temporary exists).
fn wait_for_temps(root: &Path, writer: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let writing = || {
        fs::read_dir(root).is_ok_and(|d| d.flatten().any(|e| e.file_name().to_string_lossy().starts_with(".xfer-tmp.")))
    };
    while !writing() {
        assert!(writer.try_wait().unwrap().is_none(), "the first push ended before it wrote");
        assert!(Instant::now() < deadline, "the first push never started writing");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A server with no session to spare, and a local destination another
/// push is writing, stay busy through `--busy-wait`: exit 5, not the
/// generic 1.
#[test]
fn habits_busy_destination_exits_5() {
    let tmp = TempDir::new().unwrap();
    let big = source(&tmp.path().join("big"), 3 << 20);
    let small = source(&tmp.path().join("small"), 10);
    let id = xfer(tmp.path()).arg("id").output().unwrap();
    let client_fp = String::from_utf8(id.stdout).unwrap().trim().to_string();
    let root = tmp.path().join("root");
    let mut server = xfer_process(&tmp.path().join("server"))
        .args(["serve", "--listen", "127.0.0.1:0", "--max-sessions", "1", "--allow", &client_fp, "--root"])
        .arg(&root)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let line = first_line_then_drain(&mut server);
    let words: Vec<&str> = line.split_whitespace().collect();
    let (addr, server_fp) = (words[words.len() - 3], words[words.len() - 1]);
    let mut writer = xfer_process(tmp.path())
        .args(["push", "-q", "--bwlimit", "1M", "--server-fingerprint", server_fp])
        .arg(&big)
        .arg(format!("xfer://{addr}/a"))
        .spawn()
        .unwrap();
    wait_for_temps(&root.join("a"), &mut writer);
    let remote = xfer(tmp.path())
        .args(["push", "--busy-wait", "0", "--server-fingerprint", server_fp])
        .arg(&small)
        .arg(format!("xfer://{addr}/b"))
        .output()
        .unwrap();
    let first = wait_within(&mut writer, Duration::from_secs(120));
    let _ = server.kill();
    let _ = server.wait();
    assert_eq!(remote.status.code(), Some(5), "{}", stderr(&remote));
    assert!(stderr(&remote).contains("--busy-wait"), "{}", stderr(&remote));
    assert!(first.is_some_and(|s| s.success()), "the first push failed: {first:?}");

    let dest = tmp.path().join("dest");
    let mut writer = xfer_process(&tmp.path().join("s1"))
        .args(["push", "-q", "--bwlimit", "1M"])
        .arg(&big)
        .arg(&dest)
        .spawn()
        .unwrap();
    wait_for_temps(&dest, &mut writer);
    let local =
        xfer(&tmp.path().join("s2")).args(["push", "--busy-wait", "0"]).arg(&small).arg(&dest).output().unwrap();
    let first = wait_within(&mut writer, Duration::from_secs(120));
    assert_eq!(local.status.code(), Some(5), "{}", stderr(&local));
    assert!(first.is_some_and(|s| s.success()), "the first push failed: {first:?}");
}

/// A port nobody answers on fails within `--connect-timeout` with exit 6,
/// naming the address and what to check; so does a name that does not
/// resolve.
#[test]
fn habits_dead_port_exits_6_within_connect_timeout() {
    let tmp = TempDir::new().unwrap();
    let src = source(&tmp.path().join("src"), 10);
    // Bound and never read: datagrams to it vanish, as to a dead server's.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = silent.local_addr().unwrap();
    let started = Instant::now();
    let out = xfer(tmp.path())
        .args(["push", "--accept-new", "--connect-timeout", "2"])
        .arg(&src)
        .arg(format!("xfer://{addr}/site"))
        .timeout(Duration::from_secs(50))
        .output()
        .unwrap();
    let took = started.elapsed();
    assert_eq!(out.status.code(), Some(6), "{}", stderr(&out));
    let said = stderr(&out);
    assert!(said.contains(&addr.to_string()) && said.contains("no answer within 2 s"), "{said}");
    assert!(said.contains("firewall") && said.contains("--connect-timeout"), "{said}");
    // Well inside quinn's minute of idle timeout that it took before.
    assert!(took < Duration::from_secs(30), "took {took:?}");

    let out = xfer(tmp.path())
        .args(["push", "--accept-new", "--connect-timeout", "5"])
        .arg(&src)
        .arg("xfer://no-such-host.invalid/site")
        .timeout(Duration::from_secs(50))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(6), "{}", stderr(&out));
    assert!(stderr(&out).contains("no-such-host.invalid"), "{}", stderr(&out));
}

/// A server whose key is not pinned, and a server that does not admit
/// this client's key: exit 7.
#[test]
fn habits_untrusted_keys_exit_7() {
    let tmp = TempDir::new().unwrap();
    let src = source(&tmp.path().join("src"), 10);
    let client_cfg = tmp.path().join("cfg");
    let stranger_cfg = tmp.path().join("stranger");
    let id = xfer(tmp.path()).args(["id", "--config-dir"]).arg(&client_cfg).output().unwrap();
    let client_fp = String::from_utf8(id.stdout).unwrap().trim().to_string();
    xfer(tmp.path()).args(["id", "--config-dir"]).arg(&stranger_cfg).output().unwrap();
    let (mut server, addr, server_fp) = spawn_server(&client_fp, &tmp.path().join("server"), &tmp.path().join("root"));
    let url = format!("xfer://{addr}/site");
    let unknown = xfer(tmp.path()).arg("push").arg(&src).arg(&url).output().unwrap();
    let refused = xfer(tmp.path())
        .args(["push", "--server-fingerprint", &server_fp, "--config-dir"])
        .arg(&stranger_cfg)
        .arg(&src)
        .arg(&url)
        .output()
        .unwrap();
    let admitted = xfer(tmp.path()).args(["push", "--server-fingerprint", &server_fp]).arg(&src).arg(&url).output();
    let _ = server.kill();
    let _ = server.wait();
    assert_eq!(unknown.status.code(), Some(7), "{}", stderr(&unknown));
    assert!(stderr(&unknown).contains("xfer trust"), "{}", stderr(&unknown));
    assert_eq!(refused.status.code(), Some(7), "{}", stderr(&refused));
    let admitted = admitted.unwrap();
    assert!(admitted.status.success(), "{}", stderr(&admitted));
}

/// A port that is not a number is a usage error naming it, not a host
/// to look up; so are a user name and a bare IPv6 address. An IPv6
/// address in brackets reaches the server.
#[test]
fn habits_server_urls_are_checked() {
    let tmp = TempDir::new().unwrap();
    let src = source(&tmp.path().join("src"), 10);
    for (url, says) in [
        ("xfer://127.0.0.1:abc/x", "\"abc\""),
        ("xfer://127.0.0.1:0/x", "\"0\""),
        ("xfer://127.0.0.1:/x", "port"),
        ("xfer://backup@127.0.0.1/x", "user"),
        ("xfer://::1/x", "brackets"),
        ("xfer://[::1/x", "]"),
        ("xfer://bad host/x", "host"),
    ] {
        let out = xfer(tmp.path()).arg("push").arg(&src).arg(url).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{url}: {}", stderr(&out));
        assert!(stderr(&out).contains(says), "{url}: {}", stderr(&out));
    }
    let v6 = std::net::UdpSocket::bind("[::1]:0");
    if v6.is_err() {
        eprintln!("no IPv6 loopback here: the bracketed address is not tried");
        return;
    }
    drop(v6);
    let client_cfg = tmp.path().join("cfg");
    let id = xfer(tmp.path()).args(["id", "--config-dir"]).arg(&client_cfg).output().unwrap();
    let client_fp = String::from_utf8(id.stdout).unwrap().trim().to_string();
    let mut server = Process::new(assert_cmd::cargo::cargo_bin("xfer"))
        .args(["serve", "--listen", "[::1]:0", "--allow", &client_fp, "--config-dir"])
        .arg(tmp.path().join("server"))
        .arg("--root")
        .arg(tmp.path().join("root"))
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let line = first_line_then_drain(&mut server);
    let words: Vec<&str> = line.split_whitespace().collect();
    let (addr, server_fp) = (words[words.len() - 3], words[words.len() - 1]);
    let out = xfer(tmp.path())
        .args(["push", "--server-fingerprint", server_fp])
        .arg(&src)
        .arg(format!("xfer://{addr}/site"))
        .output()
        .unwrap();
    let _ = server.kill();
    let _ = server.wait();
    assert!(addr.starts_with("[::1]:"), "{line}");
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(fs::read(tmp.path().join("root/site/blob")).unwrap(), seeded(10, 19));
}

/// `--bwlimit 1000` is 1000 KiB/s, as rsync and rclone read it: 100 KiB
/// take a moment, not the 100 s they took at 1000 bytes/s. A rate under
/// 1 KiB/s warns once.
#[test]
fn habits_bare_bwlimit_is_kib() {
    let tmp = TempDir::new().unwrap();
    let src = source(&tmp.path().join("src"), 100 << 10);
    let mut child = xfer_process(tmp.path())
        .args(["push", "--bwlimit", "1000"])
        .arg(&src)
        .arg(tmp.path().join("dest"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status = wait_within(&mut child, Duration::from_secs(40));
    assert!(status.is_some_and(|s| s.success()), "--bwlimit 1000 crawled: {status:?}");
    let mut warned = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut warned).unwrap();
    assert!(!warned.contains("warning"), "{warned}");

    let small = source(&tmp.path().join("small"), 10);
    let out =
        xfer(tmp.path()).args(["push", "--bwlimit", "0.5"]).arg(&small).arg(tmp.path().join("slow")).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stderr(&out).matches("under 1 KiB/s").count(), 1, "{}", stderr(&out));
}

/// An error is said once: not "No such file or directory (os error 2):
/// No such file or directory (os error 2)".
#[test]
fn habits_errors_are_said_once() {
    let tmp = TempDir::new().unwrap();
    let missing = tmp.path().join("missing");
    let pushed = xfer(tmp.path()).arg("push").arg(&missing).arg(tmp.path().join("dest")).output().unwrap();
    let digested = xfer(tmp.path()).arg("digest").arg(&missing).output().unwrap();
    for out in [pushed, digested] {
        assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
        let said = stderr(&out);
        assert_eq!(said.matches("No such file or directory").count(), 1, "{said}");
        assert!(said.contains(&missing.display().to_string()), "{said}");
    }
}

/// `pull --help` describes a pull: SRC is the server's tree to restore,
/// DEST where it goes, and it lists no flag a pull refuses; `push --help`
/// lists no pull-only flag.
#[test]
fn habits_help_fits_each_command() {
    let tmp = TempDir::new().unwrap();
    let pull = stdout(&xfer(tmp.path()).args(["pull", "--help"]).output().unwrap());
    assert!(!pull.contains("--exclude") && !pull.contains("--dry-run"), "{pull}");
    assert!(!pull.contains("The tree to send") && !pull.contains("The local tree"), "{pull}");
    assert!(pull.contains("tree to restore") && pull.contains("local directory"), "{pull}");
    let push = stdout(&xfer(tmp.path()).args(["push", "--help"]).output().unwrap());
    assert!(push.contains("--exclude") && !push.contains("--at <SEL>"), "{push}");
    assert!(push.contains("--connect-timeout") && push.contains("KiB/s"), "{push}");
    let top = stdout(&xfer(tmp.path()).arg("--help").output().unwrap());
    for code in ["5    busy", "6    unreachable", "7    untrusted key", "2    usage"] {
        assert!(top.contains(code), "{code}: {top}");
    }
}

/// `xfer man --dir` writes xfer(1) and a page for every subcommand it
/// names; `xfer man push` prints xfer-push(1).
#[test]
fn habits_man_pages_for_each_subcommand() {
    let tmp = TempDir::new().unwrap();
    let dir = tmp.path().join("man1");
    let out = xfer(tmp.path()).args(["man", "--dir"]).arg(&dir).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    // roff writes a hyphen as \-.
    let top = fs::read_to_string(dir.join("xfer.1")).unwrap().replace("\\-", "-");
    let mut named = 0;
    for word in top.split_whitespace() {
        if let Some(name) = word.strip_prefix("xfer-") {
            if let Some(name) = name.strip_suffix("(1)") {
                named += 1;
                assert!(dir.join(format!("xfer-{name}.1")).is_file(), "xfer(1) names xfer-{name}(1), which is missing");
            }
        }
    }
    assert!(named >= 8, "xfer(1) names {named} subcommand pages:\n{top}");
    let push = xfer(tmp.path()).args(["man", "push"]).output().unwrap();
    assert!(push.status.success(), "{}", stderr(&push));
    let page = stdout(&push).replace("\\-", "-");
    assert!(page.contains("xfer-push") && page.contains("connect-timeout"), "{page}");
    let unknown = xfer(tmp.path()).args(["man", "pusj"]).output().unwrap();
    assert_eq!(unknown.status.code(), Some(2), "{}", stderr(&unknown));
}

/// The summary a person reads has sizes in KiB and MiB, and `-v` logs no
/// `Summary { ... }` debug dump.
#[test]
fn habits_summary_is_for_people() {
    let tmp = TempDir::new().unwrap();
    let src = source(&tmp.path().join("src"), 3 << 20);
    let out = xfer(tmp.path()).args(["push", "-v"]).arg(&src).arg(tmp.path().join("dest")).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let said = stderr(&out);
    assert!(!said.contains("Summary {"), "{said}");
    let summary = said.lines().find(|l| l.contains("files changed")).unwrap_or_default();
    assert!(summary.contains("3.00 MiB") && summary.contains("wire "), "{said}");
    assert!(!summary.contains("3145728"), "{said}");
}

/// On a terminal, a capped push's bar grows with what the server
/// acknowledged: many positions between 0 and the total, where a bar fed
/// by files starting jumps from 0 to the whole file at once.
#[test]
fn habits_progress_bar_follows_acknowledged_bytes() {
    if Process::new("script").arg("--version").output().is_err() {
        eprintln!("no `script` here to give xfer a terminal: the bar is not checked");
        return;
    }
    let tmp = TempDir::new().unwrap();
    let src = source(&tmp.path().join("src"), 4 << 20);
    let bin = assert_cmd::cargo::cargo_bin("xfer");
    let command =
        format!("{} push --bwlimit 2M {} {}", bin.display(), src.display(), tmp.path().join("dest").display());
    let out = Process::new("script")
        .args(["-qefc", &command, "/dev/null"])
        .env("XFER_STATE_DIR", tmp.path().join("state"))
        .env("XFER_CONFIG_DIR", tmp.path().join("cfg"))
        .env("TERM", "xterm")
        .output()
        .unwrap();
    let screen = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{screen}");
    let mut under_total = std::collections::BTreeSet::new();
    for frame in screen.split(['\r', '\n']) {
        // "{bar} POSITION/TOTAL ...", POSITION being a number and a unit.
        let Some((before, rest)) = frame.split_once('/') else { continue };
        let words: Vec<&str> = before.split_whitespace().collect();
        if words.len() < 2 || !rest.starts_with("4.00 MiB") {
            continue;
        }
        let position = words[words.len() - 2..].join(" ");
        if position != "4.00 MiB" {
            under_total.insert(position);
        }
    }
    assert!(under_total.len() >= 3, "the bar showed {under_total:?} below the total:\n{screen}");
}

/// The meter behind the bar, I/O-free: a push counts a chunk once its
/// bytes (with a margin for headers) are acknowledged, past the bytes
/// acknowledged before the first chunk; the rate is measured and
/// smoothed; the time left is at least a second while bytes are left.
#[test]
fn habits_meter_counts_acknowledged_bytes() {
    let at = Duration::from_millis;
    let mut meter = Meter::new(true);
    meter.event(&Event::Acked { bytes: 5_000 }, at(0));
    meter.event(&Event::Planned { files: 1, bytes: 4_000_000 }, at(0));
    for _ in 0..4 {
        meter.event(&Event::Chunk { decoded: 1_000_000, encoded: 1_000_000 }, at(10));
    }
    // All four chunks handed over at once: none is done, whatever the
    // connection buffered.
    assert_eq!((meter.done(), meter.total()), (0, Some(4_000_000)));
    assert_eq!(meter.eta(), None);
    meter.event(&Event::Acked { bytes: 5_000 + 1_000_000 }, at(500));
    assert_eq!(meter.done(), 0, "a chunk counts only with the margin for headers");
    meter.event(&Event::Acked { bytes: 5_000 + 1_040_000 }, at(1_000));
    assert_eq!(meter.done(), 1_000_000);
    // Measured from when data began to be acknowledged: 1 MB in 0.5 s.
    let rate = meter.rate().unwrap();
    assert!((1_900_000.0..=2_100_000.0).contains(&rate), "{rate}");
    meter.event(&Event::Acked { bytes: 5_000 + 2_080_000 }, at(2_000));
    assert_eq!(meter.done(), 2_000_000);
    // 1 MB/s over the last second, smoothed with the 2 MB/s before.
    let smoothed = meter.rate().unwrap();
    assert!(smoothed > 1_000_000.0 && smoothed < rate, "{rate} then {smoothed}");
    let eta = meter.eta().unwrap();
    assert!(eta >= Duration::from_secs(1) && eta < Duration::from_secs(3), "{eta:?}");
    meter.event(&Event::Acked { bytes: 5_000 + 4_200_000 }, at(3_000));
    assert_eq!((meter.done(), meter.eta()), (4_000_000, Some(Duration::ZERO)));

    // A pull counts chunks as they arrive.
    let mut pulled = Meter::new(false);
    pulled.event(&Event::Chunk { decoded: 700, encoded: 300 }, at(0));
    assert_eq!(pulled.done(), 700);
}
