//! Command lines that used to wipe or divert a backup and exit 0: a URL
//! without a path, a mistyped remote or an scp-style destination, an empty
//! source with --delete, and a `delete` default that reached restores.

use std::fs;
use std::path::Path;
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

/// `xfer serve` on loopback, admitting the client of `tmp/client-cfg`.
fn serve(tmp: &Path) -> ServerProcess {
    let id = xfer(tmp).arg("id").output().unwrap();
    let client = String::from_utf8(id.stdout).unwrap().trim().to_string();
    ServerProcess::start(&client, tmp)
}

/// `count` files under `dir` (created).
fn fill(dir: &Path, prefix: &str, count: usize) {
    fs::create_dir_all(dir).unwrap();
    for i in 0..count {
        fs::write(dir.join(format!("{prefix}{i}")), format!("{prefix} {i}")).unwrap();
    }
}

fn entries(dir: &Path) -> usize {
    fs::read_dir(dir).unwrap().count()
}

/// `xfer://HOST:PORT` with no path used to open the server's root, and
/// `--delete` then removed every other host's tree. Now it is refused
/// without connecting; the root is named explicitly as `xfer://HOST/.`.
#[test]
fn footgun_url_without_path_is_refused() {
    let tmp = TempDir::new().unwrap();
    let served = serve(tmp.path());
    fill(&served.root.join("other-host"), "kept", 3);
    let src = tmp.path().join("src");
    fill(&src, "a", 2);
    let push = |url: &str, extra: &[&str]| {
        xfer(tmp.path())
            .args(["push", "--delete", "--server-fingerprint", &served.fingerprint])
            .args(extra)
            .arg(&src)
            .arg(url)
            .output()
            .unwrap()
    };

    for url in [format!("xfer://{}", served.addr), format!("xfer://{}/", served.addr)] {
        let out = push(&url, &[]);
        assert!(!out.status.success(), "{url} was accepted: {}", stderr(&out));
        assert!(stderr(&out).contains(&format!("xfer://{}/.", served.addr)), "{}", stderr(&out));
        assert_eq!(entries(&served.root.join("other-host")), 3, "another host's tree was touched");
        assert!(!served.root.join("a0").exists());
    }
    // Pulls read the same URLs: no path is refused there too.
    let pulled = xfer(tmp.path())
        .args(["pull", "--server-fingerprint", &served.fingerprint])
        .arg(format!("xfer://{}", served.addr))
        .arg(tmp.path().join("restore"))
        .output()
        .unwrap();
    assert!(!pulled.status.success());
    assert!(stderr(&pulled).contains("names no path"), "{}", stderr(&pulled));

    // The root, named explicitly, is what it says.
    let out = push(&format!("xfer://{}/.", served.addr), &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(fs::read(served.root.join("a1")).unwrap(), b"a 1");
    assert!(!served.root.join("other-host").exists());
}

/// A bare word that is neither a remote nor an existing path used to become
/// a new local directory (the backup silently went to the working
/// directory); `host:/path`, rsync's habit, the same.
#[test]
fn footgun_mistyped_remote_and_scp_destination_are_refused() {
    let tmp = TempDir::new().unwrap();
    fs::create_dir_all(tmp.path().join("client-cfg")).unwrap();
    fs::write(
        tmp.path().join("client-cfg/config.toml"),
        "[remotes.backup]\nurl = \"xfer://127.0.0.1:9/site\"\n\n[remotes.offsite]\nurl = \"xfer://127.0.0.1:9/x\"\n",
    )
    .unwrap();
    let src = tmp.path().join("src");
    fill(&src, "f", 2);
    let push = |dest: &str| xfer(tmp.path()).arg("push").arg(&src).arg(dest).output().unwrap();

    let typo = push("bakup");
    assert!(!typo.status.success(), "a mistyped remote was accepted");
    assert!(!tmp.path().join("bakup").exists(), "a mistyped remote became a local directory");
    let message = stderr(&typo);
    assert!(message.contains("backup, offsite") && message.contains("./bakup"), "{message}");

    let scp = push("host:/srv/www");
    assert!(!scp.status.success(), "host:/path was accepted");
    assert!(fs::read_dir(tmp.path()).unwrap().all(|e| !e.unwrap().file_name().to_string_lossy().contains(':')));
    assert!(stderr(&scp).contains("xfer://host/srv/www"), "{}", stderr(&scp));

    // What is clearly a path, or exists, is still a local destination.
    for dest in ["./new", "sub/new"] {
        let out = push(dest);
        assert!(out.status.success(), "{dest}: {}", stderr(&out));
        assert_eq!(fs::read(tmp.path().join(dest).join("f1")).unwrap(), b"f 1");
    }
    fs::create_dir(tmp.path().join("existing")).unwrap();
    let out = push("existing");
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(tmp.path().join("existing/f0").exists());
}

/// An empty source (an unmounted share) with --delete used to wipe the
/// backup; so did a source missing most of the tree. The run is refused
/// (exit 2) before anything changes, on a dry run too, unless told.
#[test]
fn footgun_empty_source_or_mass_delete_is_refused() {
    let tmp = TempDir::new().unwrap();
    let (src, dest) = (tmp.path().join("src"), tmp.path().join("dest"));
    fill(&src.join("big"), "b", 40);
    fill(&src.join("small"), "s", 20);
    let push = |extra: &[&str]| {
        xfer(tmp.path()).args(["push", "--delete", "--json"]).args(extra).arg(&src).arg(&dest).output().unwrap()
    };
    assert!(push(&[]).status.success());

    // The share is not mounted: the source is an empty directory. Ten
    // entries is a small destination, yet emptying it is still refused.
    fs::rename(&src, tmp.path().join("src.away")).unwrap();
    fs::create_dir(&src).unwrap();
    for extra in [&[][..], &["--dry-run"], &["--max-delete", "1000"]] {
        let out = push(extra);
        assert_eq!(out.status.code(), Some(2), "{extra:?}: {}", stderr(&out));
        assert!(stderr(&out).contains("source is empty") && stderr(&out).contains("--force-delete"));
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(json["exit_code"], 2);
        assert_eq!((entries(&dest.join("big")), entries(&dest.join("small"))), (40, 20));
    }
    let dry = push(&["--dry-run"]);
    assert!(stderr(&dry).contains("dry run"), "{}", stderr(&dry));

    // Half the tree is gone from the source: `big` and its 40 files are 41
    // of 62 entries, counted with the subtree.
    fs::remove_dir(&src).unwrap();
    fs::rename(tmp.path().join("src.away"), &src).unwrap();
    fs::remove_dir_all(src.join("big")).unwrap();
    let out = push(&[]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("41 of the destination's 62"), "{}", stderr(&out));
    assert_eq!(entries(&dest.join("big")), 40);
    let out = push(&["--max-delete", "40"]);
    assert_eq!(out.status.code(), Some(2), "a directory's subtree was not counted: {}", stderr(&out));
    assert!(stderr(&out).contains("--max-delete 40"), "{}", stderr(&out));
    assert_eq!(entries(&dest.join("big")), 40);

    // Told so, it goes ahead.
    let out = push(&["--max-delete", "41"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!dest.join("big").exists());
    fs::remove_dir_all(&src).unwrap();
    fs::create_dir(&src).unwrap();
    let out = push(&["--force-delete"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(entries(&dest), 0);
}

/// The same limits hold for a remote push and for a pull (a restore whose
/// source turns out empty must not empty the local directory).
#[test]
fn footgun_delete_limits_hold_remotely_and_for_pulls() {
    let tmp = TempDir::new().unwrap();
    let served = serve(tmp.path());
    fill(&served.root.join("site"), "s", 30);
    fs::create_dir_all(served.root.join("empty")).unwrap();
    let fp = served.fingerprint.clone();
    let url = |path: &str| format!("xfer://{}/{path}", served.addr);

    let src = tmp.path().join("src");
    fs::create_dir(&src).unwrap();
    let out = xfer(tmp.path())
        .args(["push", "--delete", "--server-fingerprint", &fp])
        .arg(&src)
        .arg(url("site"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert_eq!(entries(&served.root.join("site")), 30);

    let restore = tmp.path().join("restore");
    fill(&restore, "mine", 5);
    let out = xfer(tmp.path())
        .args(["pull", "--delete", "--server-fingerprint", &fp])
        .arg(url("empty"))
        .arg(&restore)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("source is empty"), "{}", stderr(&out));
    assert_eq!(entries(&restore), 5);

    // A pull that would delete 60 of 60 local entries is refused, and
    // deletes nothing: its deletes were held back until the server was done.
    fill(&restore, "more", 55);
    let out = xfer(tmp.path())
        .args(["pull", "--delete", "--server-fingerprint", &fp])
        .arg(url("site"))
        .arg(&restore)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let mine =
        fs::read_dir(&restore).unwrap().filter(|e| !e.as_ref().unwrap().file_name().to_string_lossy().starts_with('s'));
    assert_eq!(mine.count(), 60, "a refused pull deleted local files");

    let out = xfer(tmp.path())
        .args(["pull", "--delete", "--force-delete", "--server-fingerprint", &fp])
        .arg(url("site"))
        .arg(&restore)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(entries(&restore), 30);
}

/// `[defaults] delete = true` used to make a restore delete unrelated local
/// files, and `[defaults] exclude` made every pull fail. Settings now say
/// which command they are for; `delete` under `[defaults]` is refused, and
/// each on/off flag has a `--no-` form.
#[test]
fn footgun_config_settings_name_their_command() {
    let tmp = TempDir::new().unwrap();
    let served = serve(tmp.path());
    let cfg = tmp.path().join("client-cfg");
    let remote =
        format!("[remotes.backup]\nurl = \"xfer://{}/site\"\nfingerprint = \"{}\"\n", served.addr, served.fingerprint);
    let src = tmp.path().join("src");
    fill(&src, "f", 3);
    fs::write(src.join("debug.log"), b"noise").unwrap();
    let restore = tmp.path().join("restore");
    fill(&restore, "unrelated", 1);
    let pull = || xfer(tmp.path()).args(["pull", "backup"]).arg(&restore).output().unwrap();
    let push = |extra: &[&str]| xfer(tmp.path()).arg("push").args(extra).arg(&src).arg("backup").output().unwrap();

    fill(&served.root.join("site"), "backed-up", 1);

    // The old sample config: refused, naming the section to use, before
    // anything is touched.
    fs::write(cfg.join("config.toml"), format!("[defaults]\ndelete = true\n\n{remote}")).unwrap();
    let out = pull();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("[push]"), "{}", stderr(&out));
    assert!(restore.join("unrelated0").exists(), "a pull applied the push's delete");
    fs::write(cfg.join("config.toml"), format!("[defaults]\nexclude = [\"*.log\"]\n\n{remote}")).unwrap();
    let out = push(&[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("under [push]"), "{}", stderr(&out));

    // [push] settings apply to pushes only.
    fs::write(cfg.join("config.toml"), format!("[push]\ndelete = true\nexclude = [\"*.log\"]\n\n{remote}")).unwrap();
    fs::write(served.root.join("site/stale"), b"old").unwrap();
    let out = push(&["--no-delete"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(served.root.join("site/stale").exists(), "--no-delete did not undo the config's delete");
    let out = push(&["--delete", "--no-delete", "--no-checksum", "--no-json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(served.root.join("site/stale").exists(), "the last of --delete/--no-delete did not win");
    let out = push(&[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!served.root.join("site/stale").exists(), "[push] delete = true was not applied");
    assert!(served.root.join("site/f2").exists() && !served.root.join("site/debug.log").exists());

    let out = pull();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(restore.join("f0").exists());
    assert!(restore.join("unrelated0").exists(), "a pull applied [push] delete");
}

/// `Plan::deletions` counts what a plan removes from the receiver, a
/// directory with everything inside it: an entry is lost exactly when its
/// path, or a directory above it, is gone from the source or changes
/// between directory and non-directory.
mod deletions {
    use proptest::prelude::*;
    use rand::rngs::SmallRng;
    use rand::SeedableRng;
    use xfer::plan::{plan, DeleteLimit, DeleteRule, PlanOptions, TRIVIAL_DESTINATION};

    use crate::plan_model::random_tree;
    use crate::util::{manifest_of, Model, Node};

    fn lost(v1: &Model, v2: &Model) -> u64 {
        let is_dir = |n: &Node| matches!(n, Node::Dir { .. });
        let gone = |path: &xfer::manifest::RelPath, node: &Node| v2.get(path).is_none_or(|n| is_dir(n) != is_dir(node));
        let count = v1
            .iter()
            .filter(|(path, node)| {
                let mut above = path.parent();
                let mut lost = gone(path, node);
                while !lost && !above.is_root() {
                    lost = gone(&above, &Node::Dir { mode: 0, mtime: 0 });
                    above = above.parent();
                }
                lost
            })
            .count();
        count as u64
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]
        #[test]
        fn deletions_count_lost_entries(seed in any::<u64>(), n1 in 0usize..25, n2 in 0usize..25) {
            let mut rng = SmallRng::seed_from_u64(seed);
            let (v1, v2) = (random_tree(&mut rng, n1), random_tree(&mut rng, n2));
            let (m1, m2) = (manifest_of(&v1), manifest_of(&v2));
            let planned = plan(&m2, &m1, |_| false, PlanOptions { delete: true, protect: None, ..Default::default() });
            prop_assert_eq!(planned.deletions(&m1), lost(&v1, &v2));
            // Without --delete only replacements delete, never more.
            let kept = plan(&m2, &m1, |_| false, PlanOptions { delete: false, protect: None, ..Default::default() });
            prop_assert!(kept.deletions(&m1) <= planned.deletions(&m1));
        }
    }

    #[test]
    fn delete_limit_rules() {
        let big = TRIVIAL_DESTINATION + 10;
        let guarded = DeleteLimit::GUARDED;
        assert!(guarded.check(big / 2, big, 5).is_ok());
        assert_eq!(guarded.check(big / 2 + 1, big, 5).unwrap_err().rule, DeleteRule::Half);
        // A small destination may change wholesale, unless from an empty source.
        assert!(guarded.check(TRIVIAL_DESTINATION, TRIVIAL_DESTINATION, 1).is_ok());
        assert_eq!(guarded.check(1, 3, 0).unwrap_err().rule, DeleteRule::EmptySource);
        assert!(guarded.check(0, 3, 0).is_ok());
        // An explicit count replaces the half rule, not the empty-source one.
        let max = DeleteLimit { max: Some(big), guard: true };
        assert!(max.check(big, big, 5).is_ok());
        assert_eq!(max.check(1, big, 0).unwrap_err().rule, DeleteRule::EmptySource);
        let forced = DeleteLimit { max: Some(3), guard: false };
        assert!(forced.check(3, 3, 0).is_ok());
        assert_eq!(forced.check(4, 100, 0).unwrap_err().rule, DeleteRule::Max(3));
        assert!(DeleteLimit::UNLIMITED.check(u64::MAX, u64::MAX, 0).is_ok());
    }
}

/// A pull's receiver holds its deletes back until the server is done: the
/// tree still comes out as the source (replacements, metadata after
/// deletes), and a refused pull deletes nothing.
pub(crate) mod held_deletes {
    use std::collections::HashMap;
    use std::fs;

    use proptest::prelude::*;
    use rand::rngs::SmallRng;
    use rand::SeedableRng;
    use tempfile::TempDir;
    use xfer::codec::{Compression, Encoder};
    use xfer::fs::scan::{scan, ScanOptions};
    use xfer::fs::store::MirrorStore;
    use xfer::plan::{DeleteLimit, PlanOptions};
    use xfer::session::{FileReader, Sender, SenderConfig, SessionError};

    use xfer::fs::store::MirrorReceiver as Receiver;
    use xfer_protocol::frame;

    use crate::plan_model::random_tree;
    use crate::util::{assert_same_tree, materialize, read_tree};

    fn roundtrip(message: xfer_protocol::Message) -> xfer_protocol::Message {
        let mut bytes = Vec::new();
        frame::encode(&message, &mut bytes);
        frame::decode(&bytes).expect("valid frame").expect("complete frame").0
    }

    /// One pull of `src` into `dest` under `limit`, in memory.
    pub(crate) fn pull(
        src: &std::path::Path,
        dest: &std::path::Path,
        state: &std::path::Path,
        limit: DeleteLimit,
    ) -> Result<(), SessionError> {
        let store = MirrorStore::open(dest, state).unwrap();
        let mut receiver = Receiver::initiate(xfer::fs::store::Receiving::new(store), Vec::new(), true, false).unwrap();
        receiver.set_delete_limit(limit);
        let _hello = receiver.poll_transmit().unwrap();
        let Some(xfer_protocol::Message::Open(open)) = receiver.poll_transmit() else { panic!("Open expected") };
        let source = scan(src, &HashMap::new(), ScanOptions::default()).unwrap().manifest;
        let encoder = Encoder::new(Compression::Raw).unwrap();
        let options = PlanOptions { delete: true, protect: None, ..Default::default() };
        let mut config = SenderConfig::new(source, FileReader::new(src.to_path_buf()), encoder);
        config.plan = options;
        let mut sender = Sender::respond(config, 0, open.remembered_root);
        xfer::session::pair::run_with(&mut sender, &mut receiver, |_, message| roundtrip(message))?;
        assert!(sender.is_finished() && receiver.is_finished(), "pull stalled");
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        #[test]
        fn held_deletes_keep_pulls_exact(seed in any::<u64>(), n1 in 0usize..20, n2 in 0usize..20) {
            let mut rng = SmallRng::seed_from_u64(seed);
            let (v1, v2) = (random_tree(&mut rng, n1), random_tree(&mut rng, n2));
            let tmp = TempDir::new().unwrap();
            let (src, dest, state) = (tmp.path().join("src"), tmp.path().join("dest"), tmp.path().join("state"));
            fs::create_dir_all(&src).unwrap();
            fs::create_dir_all(&dest).unwrap();
            materialize(&v2, &src);
            materialize(&v1, &dest);
            // Any deletion at all is past a limit of 0: refused, nothing deleted.
            let zero = DeleteLimit { max: Some(0), guard: false };
            match pull(&src, &dest, &state, zero) {
                Ok(()) => assert_same_tree(&read_tree(&dest), &v2),
                Err(_) => {
                    for path in v1.keys() {
                        prop_assert!(fs::symlink_metadata(path.to_path(&dest)).is_ok(), "{} was deleted", path);
                    }
                }
            }
            // Unlimited, the held deletes still make the tree exactly the source.
            pull(&src, &dest, &state.with_extension("2"), DeleteLimit::UNLIMITED).unwrap();
            assert_same_tree(&read_tree(&dest), &v2);
        }
    }
}

/// `delete` set for every command through the environment is refused as it
/// is in the config file's `[defaults]`: it would reach restores too.
#[test]
fn footgun_defaults_delete_from_the_environment_is_refused() {
    let tmp = TempDir::new().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir(&src).unwrap();
    fs::write(src.join("a"), b"a").unwrap();
    let dest = tmp.path().join("dest");
    let out = xfer(tmp.path()).env("XFER_DEFAULTS_DELETE", "true").arg("push").arg(&src).arg(&dest).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("XFER_DEFAULTS_DELETE"), "{}", stderr(&out));
    assert!(!dest.exists(), "a refused run wrote the destination");
}
