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
