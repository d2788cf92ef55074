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
    fs::hard_link(src.join("a"), src.join("b")).unwrap();
    let out = xfer(&state).arg("push").arg(&src).arg(&dest).output().unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("hard link"));
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

/// `xfer serve` and `xfer push xfer://...` as separate processes over
/// loopback: unknown server refused with the command to trust it, then
/// trusted on first use, then pinned.
#[test]
fn cli_remote_push_with_trust_on_first_use() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command as Process, Stdio};

    let tmp = TempDir::new().unwrap();
    let (client_cfg, server_cfg) = (tmp.path().join("client-cfg"), tmp.path().join("server-cfg"));
    let id = xfer(tmp.path()).args(["id", "--config-dir"]).arg(&client_cfg).output().unwrap();
    let client_fp = String::from_utf8(id.stdout).unwrap().trim().to_string();

    let served = tmp.path().join("served");
    let mut server = Process::new(assert_cmd::cargo::cargo_bin("xfer"))
        .args(["serve", "--listen", "127.0.0.1:0", "--allow", &client_fp, "--config-dir"])
        .arg(&server_cfg)
        .arg("--root")
        .arg(&served)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(server.stderr.take().unwrap()).read_line(&mut line).unwrap();
    // "xfer: serving ROOT on ADDR as FINGERPRINT"
    let words: Vec<&str> = line.split_whitespace().collect();
    let (addr, server_fp) = (words[words.len() - 3], words[words.len() - 1]);

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

    assert_eq!(unknown.status.code(), Some(1), "{stderr}");
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
