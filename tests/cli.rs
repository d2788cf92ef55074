//! The `xfer` binary, run as a user would.

use std::fs;

use assert_cmd::Command;
use tempfile::TempDir;

use crate::util::seeded;

fn xfer(state: &std::path::Path) -> Command {
    let mut cmd = Command::cargo_bin("xfer").unwrap();
    cmd.env("XFER_STATE_DIR", state);
    cmd
}

#[test]
fn cli_push_prints_json_summary() {
    let tmp = TempDir::new().unwrap();
    let (src, dest, state) = (tmp.path().join("src"), tmp.path().join("dest"), tmp.path().join("state"));
    fs::create_dir_all(src.join("sub")).unwrap();
    fs::write(src.join("sub/a"), seeded(300_000, 1)).unwrap();
    fs::write(src.join("b"), b"hello").unwrap();
    let out = xfer(&state).args(["push", "--json"]).arg(&src).arg(&dest).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["files_scanned"], 2);
    assert_eq!(json["files_changed"], 2);
    assert_eq!(json["bytes_scanned"], 300_005);
    assert!(json["chunks_total"].as_u64().unwrap() >= 2);
    assert_eq!(json["chunks_sent"], json["chunks_total"]);
    // Random data does not compress: stored raw, so sent bytes equal the data.
    assert!(json["bytes_sent"].as_u64().unwrap() >= 300_000);
    // A local push runs the protocol against an in-process server: its
    // chunks crossed a loopback QUIC connection.
    assert!(json["wire_bytes_sent"].as_u64().unwrap() > json["bytes_sent"].as_u64().unwrap());
    assert!(json["wire_bytes_received"].as_u64().unwrap() > 0);
    assert_eq!(fs::read(dest.join("sub/a")).unwrap(), seeded(300_000, 1));

    let again = xfer(&state).args(["push", "--json"]).arg(&src).arg(&dest).output().unwrap();
    let json: serde_json::Value = serde_json::from_slice(&again.stdout).unwrap();
    assert_eq!((json["files_changed"].as_u64(), json["bytes_sent"].as_u64()), (Some(0), Some(0)));
}

#[test]
fn cli_partial_push_exits_3() {
    let tmp = TempDir::new().unwrap();
    let (src, dest, state) = (tmp.path().join("src"), tmp.path().join("dest"), tmp.path().join("state"));
    fs::create_dir(&src).unwrap();
    fs::write(src.join("a"), b"a").unwrap();
    assert!(std::process::Command::new("mkfifo").arg(src.join("pipe")).status().unwrap().success());
    let out = xfer(&state).arg("push").arg(&src).arg(&dest).output().unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("special file"));
}

#[test]
fn cli_bad_input_says_what_to_do() {
    let tmp = TempDir::new().unwrap();
    let out = xfer(tmp.path()).args(["push", "/nonexistent/xfer-src"]).arg(tmp.path().join("d")).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/xfer-src"));
    let usage = xfer(tmp.path()).args(["push"]).output().unwrap();
    assert_eq!(usage.status.code(), Some(2));
    // A destination inside the source is refused before anything is written.
    let src = tmp.path().join("s");
    fs::create_dir(&src).unwrap();
    let nested = xfer(tmp.path()).arg("push").arg(&src).arg(src.join("inner")).output().unwrap();
    assert_eq!(nested.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&nested.stderr).contains("overlap"));
}

/// Cron use: `-q` keeps a successful run silent, `--json` carries the exit
/// code (errors included), and completions and the man page come from the
/// same definitions as `--help`.
#[test]
fn cli_quiet_json_completions_and_man() {
    let tmp = TempDir::new().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir(&src).unwrap();
    fs::write(src.join("a"), b"a").unwrap();
    let quiet = xfer(tmp.path()).args(["push", "-q"]).arg(&src).arg(tmp.path().join("d")).output().unwrap();
    assert!(quiet.status.success() && quiet.stderr.is_empty(), "{}", String::from_utf8_lossy(&quiet.stderr));
    let json = xfer(tmp.path()).args(["push", "--json"]).arg(&src).arg(tmp.path().join("d")).output().unwrap();
    let json: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(json["exit_code"], 0);
    let failed = xfer(tmp.path()).args(["push", "--json", "/nonexistent/xfer-src"]).arg(tmp.path().join("e")).output();
    let failed = failed.unwrap();
    assert_eq!(failed.status.code(), Some(1));
    let json: serde_json::Value = serde_json::from_slice(&failed.stdout).unwrap();
    assert_eq!(json["exit_code"], 1);
    assert!(json["error"].as_str().unwrap().contains("/nonexistent/xfer-src"), "{json}");

    let bash = xfer(tmp.path()).args(["completions", "bash"]).output().unwrap();
    let bash = String::from_utf8_lossy(&bash.stdout).to_string();
    assert!(bash.contains("complete -F") && bash.contains("--delete") && bash.contains("--server-fingerprint"));
    let man = xfer(tmp.path()).arg("man").output().unwrap();
    let man = String::from_utf8_lossy(&man.stdout).to_string();
    assert!(man.contains(".TH xfer") && man.contains("push"), "{man}");
    // Exit codes are listed once, in `xfer --help`; push's help points there.
    let help = xfer(tmp.path()).arg("--help").output().unwrap();
    assert!(String::from_utf8_lossy(&help.stdout).contains("130  interrupted"));
    let help = xfer(tmp.path()).args(["push", "--help"]).output().unwrap();
    assert!(String::from_utf8_lossy(&help.stdout).contains("Exit codes: see `xfer --help`"));
    let serve_help = xfer(tmp.path()).args(["serve", "--help"]).output().unwrap();
    let serve_help = String::from_utf8_lossy(&serve_help.stdout).to_string();
    assert!(serve_help.contains("--max-sessions") && serve_help.contains("--audit-log"), "{serve_help}");
    let zero = xfer(tmp.path()).args(["serve", "--root", "r", "--max-sessions", "0"]).output().unwrap();
    assert_eq!(zero.status.code(), Some(2));
}

/// `--exclude`, `--exclude-from` and the source root's `.xferignore`.
#[test]
fn cli_excludes() {
    let tmp = TempDir::new().unwrap();
    let (src, dest) = (tmp.path().join("src"), tmp.path().join("dest"));
    fs::create_dir_all(src.join("target")).unwrap();
    for name in ["keep.rs", "debug.log", "target/out", "secret", "notes.tmp"] {
        fs::write(src.join(name), name).unwrap();
    }
    fs::write(src.join(".xferignore"), "secret\n").unwrap();
    fs::write(tmp.path().join("patterns"), "# temporary files\n*.tmp\n").unwrap();
    let out = xfer(tmp.path())
        .args(["push", "--exclude", "*.log", "--exclude", "target/", "--exclude-from"])
        .arg(tmp.path().join("patterns"))
        .arg(&src)
        .arg(&dest)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(dest.join("keep.rs").exists() && dest.join(".xferignore").exists());
    for gone in ["debug.log", "target", "secret", "notes.tmp"] {
        assert!(!dest.join(gone).exists(), "{gone} was not excluded");
    }
}

/// `--bwlimit` caps the data direction: 3 MiB at 1 MiB/s cannot finish in
/// under 2.5 s (a lower bound only; smoothness is the throttle module's
/// fake-clock tests).
#[test]
fn cli_bwlimit_caps_a_push() {
    let tmp = TempDir::new().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir(&src).unwrap();
    fs::write(src.join("blob"), seeded(3 << 20, 9)).unwrap();
    let started = std::time::Instant::now();
    let out = xfer(tmp.path()).args(["push", "--bwlimit", "1M"]).arg(&src).arg(tmp.path().join("d")).output();
    let out = out.unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(started.elapsed().as_secs_f64() >= 2.5, "{:?}", started.elapsed());
    assert_eq!(fs::read(tmp.path().join("d/blob")).unwrap(), seeded(3 << 20, 9));
    let bad = xfer(tmp.path()).args(["push", "--bwlimit", "10Q"]).arg(&src).arg(tmp.path().join("e")).output();
    assert!(String::from_utf8_lossy(&bad.unwrap().stderr).contains("is not a rate"));
}

/// Outside `--window`: exit 4 at once, nothing written, and the JSON says so.
#[test]
fn cli_outside_window_exits_4() {
    let tmp = TempDir::new().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir(&src).unwrap();
    fs::write(src.join("a"), b"a").unwrap();
    // A one-hour window starting two hours from now.
    let now = xfer::net::limiter::local_time_now();
    let at = |minutes: u16| format!("{:02}:{:02}", (minutes / 60) % 24, minutes % 60);
    let window = format!("{}-{}", at(now.minute + 120), at(now.minute + 180));
    let mut push = xfer(tmp.path());
    let out = push.args(["push", "--json", "--window", &window]).arg(&src).arg(tmp.path().join("d")).output().unwrap();
    assert_eq!(out.status.code(), Some(4), "{}", String::from_utf8_lossy(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["exit_code"], 4);
    assert!(String::from_utf8_lossy(&out.stderr).contains("--wait"));
    assert!(!tmp.path().join("d/a").exists());
}

/// `--itemize`: one line per changed entry, on stdout; with `--json`, on
/// stderr so stdout stays one JSON object.
#[test]
fn cli_itemize_lists_changes() {
    let tmp = TempDir::new().unwrap();
    let (src, dest) = (tmp.path().join("src"), tmp.path().join("dest"));
    fs::create_dir_all(src.join("dir")).unwrap();
    fs::write(src.join("dir/a"), b"a").unwrap();
    fs::write(src.join("gone"), b"g").unwrap();
    let push = |extra: &[&str]| xfer(tmp.path()).arg("push").args(extra).arg(&src).arg(&dest).output().unwrap();
    let first = String::from_utf8(push(&["-i"]).stdout).unwrap();
    assert!(first.contains("cd dir\n") && first.contains(">f dir/a\n") && first.contains(">f gone\n"), "{first}");
    fs::remove_file(src.join("gone")).unwrap();
    let second = push(&["-i", "--delete", "--json"]);
    assert!(String::from_utf8_lossy(&second.stderr).contains("*deleting gone"));
    let json: serde_json::Value = serde_json::from_slice(&second.stdout).unwrap();
    assert_eq!(json["files_deleted"], 1);
    assert!(push(&["-i"]).stdout.is_empty(), "a no-change push lists nothing");
}

/// `-n` plans against the destination and changes nothing; its estimate
/// covers what a real run then sends; `--egress-price` prices it.
#[test]
fn cli_dry_run_changes_nothing() {
    let tmp = TempDir::new().unwrap();
    let (src, dest) = (tmp.path().join("src"), tmp.path().join("dest"));
    fs::create_dir(&src).unwrap();
    fs::write(src.join("a"), seeded(500_000, 3)).unwrap();
    fs::write(src.join("b"), b"small").unwrap();
    let push = |extra: &[&str]| {
        let out = xfer(tmp.path()).args(["push", "--json"]).args(extra).arg(&src).arg(&dest).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        (serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap(), String::from_utf8(out.stderr).unwrap())
    };
    let (plan, _) = push(&["-n", "-i", "--egress-price", "0.09"]);
    assert_eq!(plan["dry_run"], true);
    assert_eq!(plan["files_changed"], 2);
    assert!(!dest.join("a").exists() && !dest.join("b").exists(), "a dry run wrote files");
    let estimate = plan["bytes_sent"].as_u64().unwrap();
    let cost = plan["egress_cost_usd"].as_f64().unwrap();
    assert!((cost - estimate as f64 / 1e9 * 0.09).abs() < 1e-12, "{plan}");
    let (real, _) = push(&[]);
    assert_eq!(real["files_changed"], 2);
    assert_eq!(real["chunks_sent"], plan["chunks_sent"]);
    assert!(real["bytes_sent"].as_u64().unwrap() <= estimate, "{real} vs {plan}");
    let (again, _) = push(&["-n"]);
    assert_eq!((again["files_changed"].as_u64(), again["bytes_sent"].as_u64()), (Some(0), Some(0)));
}

#[test]
fn cli_id_is_stable() {
    let tmp = TempDir::new().unwrap();
    let run = || {
        let out = xfer(tmp.path()).args(["id", "--config-dir"]).arg(tmp.path().join("cfg")).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    let first = run();
    assert!(first.starts_with("xfer:"), "{first}");
    assert_eq!(run(), first);
}

/// An `xfer serve` process on loopback that admits the client whose config
/// dir is `client_cfg`.
struct Served {
    server: std::process::Child,
    addr: String,
    server_fp: String,
    client_cfg: std::path::PathBuf,
    root: std::path::PathBuf,
}

fn serve(tmp: &TempDir) -> Served {
    let (client_cfg, server_cfg) = (tmp.path().join("client-cfg"), tmp.path().join("server-cfg"));
    let id = xfer(tmp.path()).args(["id", "--config-dir"]).arg(&client_cfg).output().unwrap();
    let client_fp = String::from_utf8(id.stdout).unwrap().trim().to_string();
    let root = tmp.path().join("served");
    let (server, addr, server_fp) = crate::util::spawn_server(&client_fp, &server_cfg, &root);
    Served { server, addr, server_fp, client_cfg, root }
}

/// A remote named in the config file, with its fingerprint and a setting
/// from `[push]`; a broken config is refused with its path.
#[test]
fn cli_config_file_names_remotes() {
    let tmp = TempDir::new().unwrap();
    let Served { mut server, addr, server_fp, client_cfg, root } = serve(&tmp);
    fs::write(
        client_cfg.join("config.toml"),
        format!(
            "[push]\ndelete = true\n\n[remotes.backup]\nurl = \"xfer://{addr}/site\"\nfingerprint = \"{server_fp}\"\n"
        ),
    )
    .unwrap();
    let src = tmp.path().join("src");
    fs::create_dir(&src).unwrap();
    fs::write(src.join("a"), b"a").unwrap();
    fs::create_dir_all(root.join("site")).unwrap();
    fs::write(root.join("site/stale"), b"old").unwrap();
    let run = || {
        xfer(&tmp.path().join("state")).args(["push", "--config-dir"]).arg(&client_cfg).arg(&src).arg("backup").output()
    };
    let pushed = run().unwrap();
    fs::write(client_cfg.join("config.toml"), "[defaults]\ndelet = true\n").unwrap();
    let broken = run().unwrap();
    let _ = server.kill();
    let _ = server.wait();
    assert!(pushed.status.success(), "{}", String::from_utf8_lossy(&pushed.stderr));
    assert_eq!(fs::read(root.join("site/a")).unwrap(), b"a");
    assert!(!root.join("site/stale").exists(), "the config's [push] delete = true was not applied");
    assert!(!tmp.path().join("backup").exists() && !src.join("backup").exists());
    assert_eq!(broken.status.code(), Some(2), "a broken config file is a usage error");
    assert!(
        String::from_utf8_lossy(&broken.stderr).contains("config.toml"),
        "{}",
        String::from_utf8_lossy(&broken.stderr)
    );
}

/// Peak resident memory of a running process (VmHWM), in bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() * 1024
}

/// A 2 GiB file pushed to a server process and pulled back into an empty
/// directory: identical, and no process's memory grows with the file.
#[test]
fn cli_two_gib_file_round_trips_in_flat_memory() {
    use std::io::{Read, Write};
    const SIZE: usize = 2 << 30;
    const BLOCK: usize = 8 << 20;
    // Measured 57/54/52 MiB (push, pull, server) with 16 MiB of chunks in flight.
    const MEMORY_LIMIT: u64 = 100 << 20;

    let tmp = TempDir::new().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir(&src).unwrap();
    let mut file = std::io::BufWriter::new(fs::File::create(src.join("big")).unwrap());
    for block in 0..SIZE / BLOCK {
        file.write_all(&seeded(BLOCK, block as u64)).unwrap();
    }
    file.into_inner().unwrap().sync_all().unwrap();

    let Served { mut server, addr, server_fp, client_cfg, root } = serve(&tmp);
    let url = format!("xfer://{addr}/big");
    let run = |command: &str, from: &std::path::Path, to: &str| {
        let out = xfer(&tmp.path().join("state"))
            .args([command, "--json", "--server-fingerprint", &server_fp, "--config-dir"])
            .arg(&client_cfg)
            .arg(from)
            .arg(to)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let pushed = run("push", &src, &url);
    let restored = tmp.path().join("restored");
    let pulled = run("pull", std::path::Path::new(&url), restored.to_str().unwrap());
    let server_peak = peak_rss(server.id());
    let _ = server.kill();
    let _ = server.wait();

    let peaks = (pushed["peak_rss_bytes"].as_u64().unwrap(), pulled["peak_rss_bytes"].as_u64().unwrap(), server_peak);
    eprintln!("peak RSS (MiB): push {}, pull {}, server {}", peaks.0 >> 20, peaks.1 >> 20, peaks.2 >> 20);
    assert!(peaks.0 < MEMORY_LIMIT && peaks.1 < MEMORY_LIMIT && peaks.2 < MEMORY_LIMIT, "{peaks:?}");
    assert_eq!(pushed["bytes_scanned"], SIZE);
    assert_eq!(pulled["files_changed"], 1);
    for copy in [root.join("big/big"), restored.join("big")] {
        let (mut a, mut b) = (fs::File::open(src.join("big")).unwrap(), fs::File::open(&copy).unwrap());
        let (mut x, mut y) = (vec![0; BLOCK], vec![0; BLOCK]);
        for _ in 0..SIZE / BLOCK {
            a.read_exact(&mut x).unwrap();
            b.read_exact(&mut y).unwrap();
            assert!(x == y, "{} differs", copy.display());
        }
        assert_eq!(b.read(&mut y).unwrap(), 0, "{} is longer", copy.display());
    }
}

/// `xfer serve` and `xfer push xfer://...` as separate processes over
/// loopback: unknown server refused with the command to trust it, then
/// trusted on first use, then pinned.
#[test]
fn cli_remote_push_with_trust_on_first_use() {
    let tmp = TempDir::new().unwrap();
    let Served { mut server, addr, server_fp, client_cfg, root: served } = serve(&tmp);
    let src = tmp.path().join("src");
    fs::create_dir(&src).unwrap();
    fs::write(src.join("a"), seeded(200_000, 5)).unwrap();
    let url = format!("xfer://{addr}/site");
    let run = |extra: &[&str]| {
        xfer(&tmp.path().join("state"))
            .args(["push", "--json", "--config-dir"])
            .arg(&client_cfg)
            .args(extra)
            .arg(&src)
            .arg(&url)
            .output()
            .unwrap()
    };
    let unknown = run(&[]);
    let stderr = String::from_utf8_lossy(&unknown.stderr).to_string();
    let first = run(&["--accept-new"]);
    let pinned = run(&[]);
    let restored = tmp.path().join("restored");
    let pulled = xfer(&tmp.path().join("state"))
        .args(["pull", "--config-dir"])
        .arg(&client_cfg)
        .arg(&url)
        .arg(&restored)
        .output()
        .unwrap();
    let _ = server.kill();
    let _ = server.wait();

    assert_eq!(unknown.status.code(), Some(7), "{stderr}");
    assert!(stderr.contains(&format!("xfer trust {addr} {server_fp}")), "{stderr}");
    assert!(first.status.success(), "{}", String::from_utf8_lossy(&first.stderr));
    assert!(pinned.status.success(), "{}", String::from_utf8_lossy(&pinned.stderr));
    assert_eq!(fs::read(served.join("site/a")).unwrap(), seeded(200_000, 5));
    assert!(pulled.status.success(), "{}", String::from_utf8_lossy(&pulled.stderr));
    assert_eq!(fs::read(restored.join("a")).unwrap(), seeded(200_000, 5));
    let json: serde_json::Value = serde_json::from_slice(&pinned.stdout).unwrap();
    assert_eq!(json["files_changed"], 0);
    assert!(json["elapsed_s"].as_f64().is_some() && json["chunks_total"].as_u64().unwrap() > 0);
    assert!(json["wire_bytes_sent"].as_u64().unwrap() > 0);
}

/// The server appends one JSON line per session to its audit log (default
/// ROOT/.xfer/audit.jsonl) with the client's tags, and never file contents;
/// refusals leave a line too; the client's `--log-json` gets the run's
/// record, with the same tags and the keys of both sides.
#[test]
fn cli_audit_log_records_sessions_and_tags() {
    let tmp = TempDir::new().unwrap();
    let Served { mut server, addr, server_fp, client_cfg, root } = serve(&tmp);
    let src = tmp.path().join("src");
    fs::create_dir(&src).unwrap();
    fs::write(src.join("secret.txt"), b"SECRET-CONTENT-8472").unwrap();
    let client_log = tmp.path().join("client.jsonl");
    let url = format!("xfer://{addr}/site");
    let push = xfer(&tmp.path().join("state"))
        .args(["push", "--tag", "project=web", "--tag", "cost-center=42", "--server-fingerprint", &server_fp])
        .arg("--log-json")
        .arg(&client_log)
        .arg("--config-dir")
        .arg(&client_cfg)
        .arg(&src)
        .arg(&url)
        .output()
        .unwrap();
    let bad_tag = xfer(&tmp.path().join("state"))
        .args(["push", "--tag", "a\u{7}b=c", "--server-fingerprint", &server_fp, "--config-dir"])
        .arg(&client_cfg)
        .arg(&src)
        .arg(&url)
        .output()
        .unwrap();
    let stranger = xfer(&tmp.path().join("state"))
        .args(["push", "--server-fingerprint", &server_fp, "--config-dir"])
        .arg(tmp.path().join("stranger-cfg"))
        .arg(&src)
        .arg(&url)
        .output()
        .unwrap();
    let pull = xfer(&tmp.path().join("state"))
        .args(["pull", "--tag", "project=restore", "--server-fingerprint", &server_fp, "--config-dir"])
        .arg(&client_cfg)
        .arg(&url)
        .arg(tmp.path().join("restored"))
        .output()
        .unwrap();
    // Records are written as sessions end on the server; give the last a moment.
    let audit = root.join(".xfer/audit.jsonl");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while fs::read_to_string(&audit).map_or(0, |t| t.lines().count()) < 3 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let _ = server.kill();
    let _ = server.wait();
    assert!(push.status.success(), "{}", String::from_utf8_lossy(&push.stderr));
    assert!(pull.status.success(), "{}", String::from_utf8_lossy(&pull.stderr));
    assert_eq!(bad_tag.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad_tag.stderr).contains("KEY=VALUE"));
    assert_eq!(stranger.status.code(), Some(7));

    let text = fs::read_to_string(&audit).unwrap();
    assert!(!text.contains("SECRET-CONTENT"), "file contents in the audit log");
    let records: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(records.len(), 3, "{text}");
    let pushed = records.iter().find(|r| r["direction"] == "push").expect("no push record");
    assert_eq!(pushed["result"], "ok");
    assert_eq!(pushed["path"], "/site");
    assert_eq!(pushed["tags"], serde_json::json!({ "project": "web", "cost-center": "42" }));
    assert_eq!((pushed["files_written"].as_u64(), pushed["bytes_logical"].as_u64()), (Some(1), Some(19)));
    assert!(pushed["wire_bytes_received"].as_u64().unwrap() > 19 && pushed["duration_s"].as_f64().unwrap() > 0.0);
    let client_fp = pushed["client"].as_str().unwrap().to_string();
    assert!(client_fp.starts_with("xfer:"), "{pushed}");
    let pulled = records.iter().find(|r| r["direction"] == "pull").expect("no pull record");
    assert_eq!((pulled["result"].as_str(), pulled["tags"]["project"].as_str()), (Some("ok"), Some("restore")));
    assert!(pulled["wire_bytes_sent"].as_u64().unwrap() > 19);
    let refused = records.iter().find(|r| r["result"] == "refused").expect("no refusal record");
    assert_ne!(refused["client"].as_str(), Some(client_fp.as_str()));
    assert!(refused["error"].as_str().unwrap().contains("--allow"), "{refused}");

    let mine: Vec<serde_json::Value> =
        fs::read_to_string(&client_log).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(mine.len(), 1);
    assert_eq!((mine[0]["result"].as_str(), mine[0]["command"].as_str()), (Some("ok"), Some("push")));
    assert_eq!(mine[0]["tags"], pushed["tags"]);
    assert_eq!(mine[0]["client"].as_str(), Some(client_fp.as_str()));
    assert_eq!(mine[0]["server"].as_str(), Some(server_fp.as_str()));
    assert_eq!(mine[0]["bytes_written"], 19);
}

/// Load: 16 clients push different trees to one server process at once,
/// while 4 more push into one shared path. All complete (the shared path's
/// pushes wait for each other), every file arrives whole, nothing is lost,
/// and the server's memory stays bounded. Prints throughput and peak.
#[test]
fn cli_load_sixteen_clients_and_four_on_one_path() {
    const FILES: usize = 16;
    const SIZE: usize = 128 << 10;
    let tmp = TempDir::new().unwrap();
    let Served { mut server, addr, server_fp, client_cfg, root } = serve(&tmp);
    let tree = |k: usize| {
        let src = tmp.path().join(format!("src{k}"));
        fs::create_dir_all(&src).unwrap();
        for i in 0..FILES {
            fs::write(src.join(format!("f{k}-{i}")), seeded(SIZE, (k * 1000 + i) as u64)).unwrap();
        }
        src
    };
    let started = std::time::Instant::now();
    let pushes: Vec<_> = (0..20)
        .map(|k| {
            let dest = if k < 16 { format!("xfer://{addr}/own{k}") } else { format!("xfer://{addr}/shared") };
            let mut cmd: std::process::Command = std::process::Command::new(assert_cmd::cargo::cargo_bin("xfer"));
            cmd.env("XFER_STATE_DIR", tmp.path().join(format!("state{k}")))
                .args(["push", "--json", "--busy-wait", "120", "--server-fingerprint", &server_fp, "--config-dir"])
                .arg(&client_cfg)
                .arg(tree(k))
                .arg(dest)
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped());
            cmd.spawn().unwrap()
        })
        .collect();
    let outputs: Vec<_> = pushes.into_iter().map(|p| p.wait_with_output().unwrap()).collect();
    let elapsed = started.elapsed();
    let peak = peak_rss(server.id());
    let _ = server.kill();
    let _ = server.wait();
    for (k, out) in outputs.iter().enumerate() {
        assert!(out.status.success(), "client {k}: {}", String::from_utf8_lossy(&out.stderr));
    }
    for k in 0..20 {
        let dir = if k < 16 { root.join(format!("own{k}")) } else { root.join("shared") };
        for i in 0..FILES {
            let got = fs::read(dir.join(format!("f{k}-{i}"))).unwrap_or_default();
            assert!(got == seeded(SIZE, (k * 1000 + i) as u64), "client {k} file {i} lost or torn");
        }
    }
    let total = (20 * FILES * SIZE) as f64;
    eprintln!(
        "load: 20 clients, {:.1} MiB in {:.2} s ({:.1} MiB/s), server peak RSS {} MiB",
        total / 1048576.0,
        elapsed.as_secs_f64(),
        total / 1048576.0 / elapsed.as_secs_f64(),
        peak >> 20
    );
    assert!(peak < 200 << 20, "server peak RSS {} MiB", peak >> 20);
}

/// A server whose stderr was closed (the terminal that started it went
/// away, or a test that read only its first line) goes on serving: a
/// refused client still hears why, later pushes work, and SIGTERM still
/// stops it cleanly. Writing a log line must never take a session down.
#[test]
fn cli_serve_with_its_stderr_closed_keeps_serving() {
    let tmp = TempDir::new().unwrap();
    // spawn_server reads the first line, then closes its end of the pipe.
    let Served { mut server, addr, server_fp, client_cfg, root } = serve(&tmp);
    let src = tmp.path().join("src");
    fs::create_dir(&src).unwrap();
    fs::write(src.join("a"), b"first").unwrap();
    let push = |cfg: &std::path::Path, state: &str| {
        xfer(&tmp.path().join(state))
            .args(["push", "--server-fingerprint", &server_fp, "--config-dir"])
            .arg(cfg)
            .arg(&src)
            .arg(format!("xfer://{addr}/site"))
            .output()
            .unwrap()
    };
    let first = push(&client_cfg, "s1");
    assert!(first.status.success(), "{}", String::from_utf8_lossy(&first.stderr));
    let stranger = push(&tmp.path().join("stranger-cfg"), "s2");
    let said = String::from_utf8_lossy(&stranger.stderr);
    let reason = said.trim().strip_prefix("xfer: error:").unwrap_or(&said).trim();
    assert!(!reason.is_empty(), "a refused client was told nothing: {said:?}");
    assert_eq!(stranger.status.code(), Some(7), "{said}");
    fs::write(src.join("a"), b"second").unwrap();
    let again = push(&client_cfg, "s1");
    assert!(again.status.success(), "{}", String::from_utf8_lossy(&again.stderr));
    assert_eq!(fs::read(root.join("site/a")).unwrap(), b"second");
    let term = std::process::Command::new("kill").args(["-TERM", &server.id().to_string()]).status().unwrap();
    assert!(term.success());
    let status = crate::util::wait_within(&mut server, std::time::Duration::from_secs(20));
    let status = status.expect("serve did not stop on SIGTERM");
    assert_eq!(status.code(), Some(0), "serve did not exit cleanly: {status:?}");
}
