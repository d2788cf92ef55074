//! Trusting servers as ssh does: a changed key is refused loudly with the
//! line that pins the old one, an unknown key calmly with the command
//! that pins it; `xfer trust HOST` pins the default port; `xfer trust`
//! edits known hosts in place; a wrong pin in config.toml is to be fixed
//! there, not with `xfer trust`.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Output;

use assert_cmd::Command;
use tempfile::TempDir;

use crate::util::ServerProcess;

fn xfer(tmp: &Path) -> Command {
    let mut cmd = Command::cargo_bin("xfer").unwrap();
    cmd.env("XFER_STATE_DIR", tmp.join("state")).env("XFER_CONFIG_DIR", tmp.join("client-cfg")).current_dir(tmp);
    cmd
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A fingerprint no server has.
fn other_key() -> String {
    xfer::Identity::generate().unwrap().fingerprint().to_string()
}

/// `xfer serve` on loopback, admitting the client of `tmp/client-cfg`.
fn serve(tmp: &Path) -> ServerProcess {
    let id = xfer(tmp).arg("id").output().unwrap();
    let client = String::from_utf8(id.stdout).unwrap().trim().to_string();
    ServerProcess::start(&client, tmp)
}

fn source(tmp: &Path) -> PathBuf {
    let src = tmp.join("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("a"), b"data").unwrap();
    src
}

fn push(tmp: &Path, dest: &str) -> Output {
    xfer(tmp).arg("push").arg(source(tmp)).arg(dest).output().unwrap()
}

/// A server whose key no longer matches its known-hosts pin is refused
/// loudly: both keys, the file and line of the old pin, that it may be an
/// attack, and the command that replaces the pin. A server never pinned
/// gets the calm first-use advice instead. (On 9faa489 both got the same
/// mild message.)
#[test]
fn trust_changed_key_is_refused_loudly() {
    let tmp = TempDir::new().unwrap();
    let served = serve(tmp.path());
    let url = format!("xfer://{}/site", served.addr);

    let unknown = push(tmp.path(), &url);
    let calm = stderr(&unknown);
    let old = other_key();
    let known_hosts = tmp.path().join("client-cfg/known_hosts");
    fs::write(&known_hosts, format!("# pins\nelsewhere:7878 {}\n{} {old}\n", other_key(), served.addr)).unwrap();
    let changed = push(tmp.path(), &url);
    let loud = stderr(&changed);

    assert!(!unknown.status.success() && !changed.status.success());
    assert!(calm.contains(&format!("xfer trust {} {}", served.addr, served.fingerprint)), "{calm}");
    assert!(!calm.contains("WARNING") && !calm.contains("attack"), "an unknown server is no alarm: {calm}");
    for needed in [
        "WARNING".to_string(),
        "attack".to_string(),
        old.clone(),
        served.fingerprint.clone(),
        format!("line 3 of {}", known_hosts.display()),
        format!("xfer trust {} {}", served.addr, served.fingerprint),
    ] {
        assert!(loud.contains(&needed), "{needed:?} missing from: {loud}");
    }
    assert!(!tmp.path().join("served/site/a").exists(), "a push went to a server with a changed key");
}

/// `xfer trust HOST` without a port pins HOST at the default port, as a
/// push to `xfer://HOST/...` looks it up; pinning it again with the port
/// replaces that pin instead of adding another. (On 9faa489 the pin was
/// written as `HOST`, which no push ever matched.)
#[test]
fn trust_without_port_pins_the_default_port() {
    let tmp = TempDir::new().unwrap();
    let (first, second) = (other_key(), other_key());
    let trust = |host: &str, fingerprint: &str| xfer(tmp.path()).args(["trust", host, fingerprint]).output().unwrap();

    let bare = trust("Backup.Example", &first);
    let text = fs::read_to_string(tmp.path().join("client-cfg/known_hosts")).unwrap();
    let again = trust("backup.example:7878", &second);
    let replaced = fs::read_to_string(tmp.path().join("client-cfg/known_hosts")).unwrap();

    assert!(bare.status.success(), "{}", stderr(&bare));
    assert!(text.lines().any(|l| l == format!("backup.example:7878 {first}")), "{text}");
    assert!(again.status.success(), "{}", stderr(&again));
    let pins: Vec<&str> = replaced.lines().filter(|l| !l.starts_with('#')).collect();
    assert_eq!(pins, [format!("backup.example:7878 {second}")], "{replaced}");
    let url = xfer::RemoteUrl::parse("xfer://backup.example/site").unwrap();
    assert_eq!(url.authority, "backup.example:7878");
    // A server's URL names the same pin.
    let third = other_key();
    let by_url = trust("xfer://backup.example/site", &third);
    assert!(by_url.status.success(), "{}", stderr(&by_url));
    let text = fs::read_to_string(tmp.path().join("client-cfg/known_hosts")).unwrap();
    let pins: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
    assert_eq!(pins, [format!("backup.example:7878 {third}")], "{text}");
}

/// `xfer trust` replaces the host's pin where it stands and keeps every
/// other line (comments, blank lines, other hosts, their order) and the
/// file's permissions. (On 9faa489 it rewrote the file from its pins,
/// dropping the comments.)
#[test]
fn trust_keeps_comments_and_order() {
    let tmp = TempDir::new().unwrap();
    let (stale, office, fresh) = (other_key(), other_key(), other_key());
    let path = tmp.path().join("client-cfg/known_hosts");
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    let before = format!(
        "# my servers\n\n# backup box, re-keyed in March\nbackup.example:7878 {stale}\n\n\
         # the office\noffice.example:7000 {office}\n"
    );
    fs::write(&path, &before).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();

    let out = xfer(tmp.path()).args(["trust", "backup.example:7878", &fresh]).output().unwrap();

    assert!(out.status.success(), "{}", stderr(&out));
    let after = fs::read_to_string(&path).unwrap();
    assert_eq!(after, before.replace(&stale, &fresh));
    assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    let leftovers: Vec<_> = fs::read_dir(path.parent().unwrap()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(leftovers.len(), 1, "temporary files left: {leftovers:?}");
}

/// A remote's `fingerprint` in config.toml that is not the server's key:
/// the message names config.toml and the remote and says to fix the pin
/// there; it does not suggest `xfer trust`, which the config's pin would
/// override. (On 9faa489 it suggested `xfer trust`.)
#[test]
fn trust_wrong_config_pin_says_fix_config() {
    let tmp = TempDir::new().unwrap();
    let served = serve(tmp.path());
    let config = tmp.path().join("client-cfg/config.toml");
    let wrong = other_key();
    fs::write(&config, format!("[remotes.backup]\nurl = \"xfer://{}/site\"\nfingerprint = \"{wrong}\"\n", served.addr))
        .unwrap();

    let out = push(tmp.path(), "backup");
    let message = stderr(&out);

    assert!(!out.status.success(), "{message}");
    assert!(message.contains(&config.display().to_string()), "{message}");
    assert!(message.contains("\"backup\""), "{message}");
    assert!(message.contains("does not match"), "{message}");
    assert!(message.contains(&format!("fingerprint = \"{}\"", served.fingerprint)), "{message}");
    assert!(!message.contains("xfer trust"), "xfer trust cannot override a config pin: {message}");
}
