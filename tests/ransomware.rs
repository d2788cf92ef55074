//! The ransomware night, end to end over loopback: a tree is pushed
//! nightly for ten nights by a client holding only the `append` grant; on
//! night 8 every file is encrypted (replaced by random bytes) and half of
//! them deleted, and that is pushed with `--delete`. Night 7's snapshot
//! still restores byte-exact, and the client's attempts to forget
//! snapshots, prune, or write into the server's history are refused and
//! audited.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use rand::rngs::SmallRng;
use rand::{Rng, RngCore, SeedableRng};
use xfer::{PullOptions, PushOptions, TransferError};
use xfer_protocol::CloseCode;

use crate::util::backend::Backend;
use crate::util::{assert_same_tree, read_tree, seeded, Model};

/// Night `night`'s edits to the source: a few files rewritten or grown,
/// one added, one deleted.
fn nightly_edit(src: &Path, night: u64, rng: &mut SmallRng) {
    if night == 1 {
        for dir in ["docs", "photos", "mail/inbox"] {
            fs::create_dir_all(src.join(dir)).unwrap();
        }
        for n in 0..24u64 {
            let dir = ["docs", "photos", "mail/inbox"][n as usize % 3];
            fs::write(src.join(dir).join(format!("f{n:02}")), seeded(2_000 + 9_000 * n as usize, n)).unwrap();
        }
        return;
    }
    let files = files_of(src);
    for _ in 0..3 {
        let path = &files[rng.random_range(0..files.len())];
        let mut data = fs::read(path).unwrap();
        let at = rng.random_range(0..data.len().max(1));
        data.splice(at..at, seeded(700, night * 100 + at as u64));
        fs::write(path, data).unwrap();
    }
    fs::write(src.join("docs").join(format!("night{night}")), seeded(4_000, night * 7)).unwrap();
    fs::remove_file(&files[rng.random_range(0..files.len())]).unwrap();
}

fn files_of(src: &Path) -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = walk(src).into_iter().filter(|p| p.is_file()).collect();
    files.sort();
    files
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(walk(&path));
        }
        out.push(path);
    }
    out
}

/// What ransomware does: every file's bytes replaced by random ones of
/// the same length, half of the files deleted.
fn encrypt(src: &Path, rng: &mut SmallRng) {
    for (n, path) in files_of(src).into_iter().enumerate() {
        if n % 2 == 0 {
            fs::remove_file(&path).unwrap();
        } else {
            let mut garbage = vec![0; fs::metadata(&path).unwrap().len() as usize];
            rng.fill_bytes(&mut garbage);
            fs::write(&path, garbage).unwrap();
        }
    }
}

fn close_code(e: &TransferError) -> Option<CloseCode> {
    match e {
        TransferError::Session(xfer::session::SessionError::Peer { code, .. }) => *code,
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn night_seven_survives_the_ransomware_night() {
    night_before_survives(Backend::Local, 10, 8).await;
}

/// The night before `bad` restores byte-exact after `nights` nightly
/// pushes by an `append` client, ransomware striking on night `bad`, on
/// `backend` (the store suite runs it on each); the client's attempts to
/// cover its tracks are refused and audited.
pub(crate) async fn night_before_survives(backend: Backend, nights: u64, bad: u64) {
    let site = backend.site();
    let laptop = site.client("laptop");
    let served = site.serve(&format!("{} append /laptop\n", laptop.fingerprint()));
    let (target, pin) = (served.url("laptop"), served.pin);
    let push = PushOptions::new(site.path("state")).delete(true);

    let src = site.path("src");
    let mut rng = SmallRng::seed_from_u64(8);
    let mut trees: BTreeMap<u64, Model> = BTreeMap::new();
    for night in 1..=nights {
        if night == bad {
            encrypt(&src, &mut rng);
        } else if night < bad {
            nightly_edit(&src, night, &mut rng);
        } else {
            fs::write(src.join(format!("after{night}")), seeded(1_000, night)).unwrap();
        }
        laptop.push(&src, &target, pin, &push).await.unwrap();
        trees.insert(night, read_tree(&src));
    }
    if backend == Backend::Local {
        assert_same_tree(&read_tree(&site.root.join("laptop")), &trees[&nights]);
    }
    let latest = site.path("latest");
    laptop.pull(&target, pin, &latest, &PullOptions::new(site.path("pull-state"))).await.unwrap();
    assert_same_tree(&read_tree(&latest), &trees[&nights]);

    let snapshots = laptop.snapshots(&target, pin).await.unwrap();
    assert_eq!(snapshots.len() as u64, nights, "{snapshots:?}");
    assert!(snapshots.iter().all(|s| !s.partial));
    let before = &snapshots[bad as usize - 2];
    let restored = site.path("restored");
    let pull = PullOptions::new(site.path("pull-state")).at(&before.id);
    laptop.pull(&target, pin, &restored, &pull).await.unwrap();
    assert_same_tree(&read_tree(&restored), &trees[&(bad - 1)]);

    // The client tries to cover its tracks: every way is refused.
    let err = laptop.forget(&target, pin, std::slice::from_ref(&before.id)).await.unwrap_err();
    assert_eq!(close_code(&err), Some(CloseCode::Unauthorized), "{err}");
    let err = laptop.prune(&target, pin).await.unwrap_err();
    assert_eq!(close_code(&err), Some(CloseCode::Unauthorized), "{err}");
    let history = served.url("/.xfer/history");
    let empty = site.path("empty");
    fs::create_dir_all(&empty).unwrap();
    let err = laptop.push(&empty, &history, pin, &push).await.unwrap_err();
    assert!(close_code(&err).is_some(), "{err}");

    // ...and each attempt is in the audit log (written as each session
    // ends, just after the client has its answer).
    let refused = |records: &[serde_json::Value], what: &str| {
        records.iter().any(|r| (r["direction"] == what || r["path"] == what) && r["result"] == "refused")
    };
    let whats = ["forget", "prune", "/.xfer/history"];
    let records = site.audit_when(|records| whats.iter().all(|what| refused(records, what))).await;
    for what in whats {
        assert!(refused(&records, what), "no refused {what} in the audit log: {records:?}");
    }

    // Nothing the client did touched the night before.
    let again = site.path("again");
    laptop.pull(&target, pin, &again, &PullOptions::new(site.path("pull-state2")).at(&before.id)).await.unwrap();
    assert_same_tree(&read_tree(&again), &trees[&(bad - 1)]);
    served.server.shutdown().await;
}
