//! History as a property: random trees edited night after night (files
//! rewritten, grown, moved, copied, deleted, turned into directories and
//! back), each night pushed with deletes into a mirror that keeps history;
//! afterwards every night's snapshot restores exactly that night's tree,
//! though the mirror holds only the last one.

use proptest::prelude::*;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tempfile::TempDir;
use xfer::fs::history::SnapshotReader;
use xfer::fs::history::{History, SnapshotInfo, SnapshotRecord};
use xfer::fs::store::MirrorStore;
use xfer::manifest::RelPath;

use crate::util::pair::{push_into, ModelReader};
use crate::util::{assert_same_tree, file_contents, manifest_of, model_from, rel, remove_subtree, seeded, Model, Node};

/// File bodies share pieces, so chunks recur across files and nights.
fn body(rng: &mut SmallRng) -> Vec<u8> {
    let pieces = rng.random_range(1..4);
    let mut data = Vec::new();
    for _ in 0..pieces {
        let len = rng.random_range(0..40_000);
        data.extend(seeded(len, rng.random_range(0..6)));
    }
    data
}

fn files(model: &Model) -> Vec<RelPath> {
    model.iter().filter(|(_, n)| matches!(n, Node::File { .. })).map(|(p, _)| p.clone()).collect()
}

fn add_file(model: &mut Model, rng: &mut SmallRng, night: i64) {
    let dir = ["a", "b", "a/c"][rng.random_range(0..3)];
    let mut at = RelPath::root();
    for part in dir.split('/') {
        at = at.join(part.as_bytes()).unwrap();
        if !matches!(model.get(&at), Some(Node::Dir { .. })) {
            remove_subtree(model, &at);
            model.insert(at.clone(), Node::Dir { mode: 0o755, mtime: 1_600_000_000 });
        }
    }
    let path = at.join(format!("f{}", rng.random_range(0..12)).as_bytes()).unwrap();
    remove_subtree(model, &path);
    model.insert(path, Node::File { data: body(rng), mode: 0o644, mtime: 1_600_000_000 + night });
}

/// One night's edits.
fn edit(model: &mut Model, rng: &mut SmallRng, night: i64) {
    for _ in 0..rng.random_range(1..6) {
        let files = files(model);
        let pick = |rng: &mut SmallRng| files.get(rng.random_range(0..files.len().max(1))).cloned();
        match rng.random_range(0..6) {
            0 | 1 => add_file(model, rng, night),
            2 => {
                if let Some(path) = pick(rng) {
                    if let Some(Node::File { data, mtime, .. }) = model.get_mut(&path) {
                        data.extend(seeded(rng.random_range(1..20_000), night as u64));
                        *mtime += 1;
                    }
                }
            }
            3 => {
                if let Some(path) = pick(rng) {
                    remove_subtree(model, &path);
                }
            }
            4 => {
                // A move (or a copy when the old name stays).
                if let (Some(from), true) = (pick(rng), rng.random_bool(0.5)) {
                    let node = model[&from].clone();
                    let to = rel(format!("moved{}", rng.random_range(0..4)).as_bytes());
                    remove_subtree(model, &to);
                    model.insert(to, node);
                    if rng.random_bool(0.5) {
                        model.remove(&from);
                    }
                }
            }
            _ => {
                // A directory deleted whole, or a file turned into one.
                let dir = rel(["a", "b"][rng.random_range(0..2)].as_bytes());
                remove_subtree(model, &dir);
                if rng.random_bool(0.5) {
                    model.insert(dir, Node::Dir { mode: 0o700, mtime: 1_600_000_000 });
                }
            }
        }
    }
}

/// Snapshot number `night` (oldest first) as a model.
fn restored(history: History, dest: &std::path::Path, state: &std::path::Path, night: usize) -> Model {
    let snapshot = history.snapshots().unwrap()[night].clone();
    snapshot_model(&history, &snapshot, dest, state)
}

/// The snapshot's tree as a model, every file read through the restore
/// reader (history first, then the mirror at `dest` with its state `state`).
pub fn snapshot_model(
    history: &History,
    snapshot: &SnapshotRecord,
    dest: &std::path::Path,
    state: &std::path::Path,
) -> Model {
    let manifest = history.load_tree(snapshot, &RelPath::root()).unwrap();
    let mut reader = SnapshotReader::new(history, dest, state).unwrap();
    model_from(&manifest, &mut reader)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

    #[test]
    fn every_night_restores_exactly(seed in any::<u64>(), nights in 3usize..7) {
        let scratch = TempDir::new().unwrap();
        let dest = scratch.path().join("dest");
        let state = scratch.path().join("state.redb");
        let hist = scratch.path().join("history");
        let mut rng = SmallRng::seed_from_u64(seed);
        let mut model = Model::new();
        let mut kept = Vec::new();
        for night in 0..nights {
            edit(&mut model, &mut rng, night as i64);
            let store = MirrorStore::open(&dest, &state).unwrap();
            let time = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_600_000_000 + 86_400 * night as u64);
            let info = SnapshotInfo { tree: "/".into(), time: Some(time), ..SnapshotInfo::default() };
            let store = store.with_history(History::open(&hist).unwrap(), info);
            let (result, _) = push_into(manifest_of(&model), ModelReader(file_contents(&model)), store);
            result.unwrap();
            kept.push(model.clone());
        }
        for (night, expected) in kept.iter().enumerate() {
            let got = restored(History::open(&hist).unwrap(), &dest, &state, night);
            assert_same_tree(&got, expected);
        }
    }
}

fn push_night(scratch: &std::path::Path, model: &Model, night: u64) {
    let store = MirrorStore::open(&scratch.join("dest"), &scratch.join("state.redb")).unwrap();
    let time = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_600_000_000 + 86_400 * night);
    let info = SnapshotInfo { tree: "/".into(), time: Some(time), ..SnapshotInfo::default() };
    let store = store.with_history(History::open(&scratch.join("history")).unwrap(), info);
    let (result, _) = push_into(manifest_of(model), ModelReader(file_contents(model)), store);
    result.unwrap();
}

/// Two copies of the same bytes deleted in one push: each delete sees the
/// other copy's record, which lingers until the push ends; the second must
/// not count the first (already gone) as still holding the chunks.
#[test]
fn copies_deleted_together_stay_in_history() {
    let scratch = TempDir::new().unwrap();
    let data = seeded(300_000, 7);
    let mut night1 = Model::new();
    for name in ["x", "y"] {
        night1.insert(rel(name.as_bytes()), Node::File { data: data.clone(), mode: 0o644, mtime: 1_600_000_000 });
    }
    night1.insert(rel(b"z"), Node::File { data: b"small".to_vec(), mode: 0o644, mtime: 1_600_000_000 });
    push_night(scratch.path(), &night1, 0);
    let mut night2 = night1.clone();
    night2.remove(&rel(b"x"));
    night2.remove(&rel(b"y"));
    push_night(scratch.path(), &night2, 1);
    let dest = scratch.path().join("dest");
    let state = scratch.path().join("state.redb");
    let history = History::open(&scratch.path().join("history")).unwrap();
    assert_same_tree(&restored(history, &dest, &state, 0), &night1);
}
