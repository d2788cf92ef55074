//! The history store (src/fs/history, src/core/history): chunks and
//! snapshots round-trip, unchanged data costs nothing, restores read from
//! the store or the mirror, prune frees exactly what no snapshot needs in
//! two phases, and a crash at any history crash point loses nothing.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use xfer::chunk::digest_bytes;
use xfer::fs::history::{History, SnapshotInfo, SnapshotReader, SnapshotRecord};
use xfer::fs::scan::{FileRecord, StatKey};
use xfer::fs::store::state::StateDb;
use xfer::hash::{ChunkId, FileHash};
use xfer::manifest::{Entry, EntryKind, Manifest, Meta, Mtime, RelPath, Xattr};
use xfer::session::ChunkReader;

use crate::util::{rel, seeded};

/// A tree of `dirs` directories of `per_dir` files of `size` bytes, each
/// file's bytes from its seed (`seed_of(dir, file)`).
pub(crate) struct Tree {
    pub(crate) manifest: Manifest,
    pub(crate) data: HashMap<RelPath, Vec<u8>>,
}

impl Tree {
    pub(crate) fn new(dirs: usize, per_dir: usize, size: usize, seed_of: impl Fn(usize, usize) -> u64) -> Tree {
        let mut entries = Vec::new();
        let mut data = HashMap::new();
        for d in 0..dirs {
            let dir = rel(format!("d{d:03}").as_bytes());
            entries.push(Entry { path: dir.clone(), meta: Meta::basic(0o755, Mtime::default()), kind: EntryKind::Dir });
            for f in 0..per_dir {
                let path = dir.join(format!("f{f:04}").as_bytes()).unwrap();
                let bytes = seeded(size, seed_of(d, f));
                let meta = Meta::basic(0o644, Mtime { secs: 1_700_000_000, nanos: 0 });
                entries.push(Entry { path: path.clone(), meta, kind: EntryKind::File(digest_bytes(&bytes)) });
                data.insert(path, bytes);
            }
        }
        Tree { manifest: Manifest::new(entries).unwrap(), data }
    }

    /// Every chunk of every file, with its bytes.
    pub(crate) fn chunks(&self) -> Vec<(ChunkId, Vec<u8>)> {
        let mut out = Vec::new();
        for entry in self.manifest.entries() {
            if let Some(digest) = entry.file() {
                let bytes = &self.data[&entry.path];
                let mut offset = 0;
                for chunk in &digest.chunks {
                    out.push((chunk.id, bytes[offset..offset + chunk.len as usize].to_vec()));
                    offset += chunk.len as usize;
                }
            }
        }
        out
    }

    pub(crate) fn store_in(&self, history: &mut History) {
        for (id, bytes) in self.chunks() {
            history.add_chunk(id, &bytes).unwrap();
        }
    }
}

pub(crate) fn info(tree: &str, secs: u64) -> SnapshotInfo {
    SnapshotInfo {
        tree: tree.into(),
        host: "src-host".into(),
        source: "/srv/site".into(),
        tags: vec![("k".into(), "v".into())],
        time: Some(std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs)),
        ..SnapshotInfo::default()
    }
}

/// Bytes of every pack file under `dir/packs`.
fn pack_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    for sub in std::fs::read_dir(dir.join("packs")).unwrap() {
        for pack in std::fs::read_dir(sub.unwrap().path()).unwrap() {
            total += pack.unwrap().metadata().unwrap().len();
        }
    }
    total
}

/// Reads every file of `manifest` through `reader` and checks it against
/// its whole-file hash; returns the contents.
fn restore(manifest: &Manifest, reader: &mut impl ChunkReader<Error = xfer::Error>) -> HashMap<RelPath, Vec<u8>> {
    let mut out = HashMap::new();
    for entry in manifest.entries() {
        if let Some(digest) = entry.file() {
            let mut bytes = Vec::new();
            for chunk in &digest.chunks {
                bytes.extend(reader.read(&entry.path, bytes.len() as u64, *chunk).unwrap());
            }
            assert_eq!(FileHash::of(&bytes), digest.hash, "{}", entry.path);
            out.insert(entry.path.clone(), bytes);
        }
    }
    out
}

/// A reader over the history store alone (no mirror).
fn store_reader(history: &History) -> SnapshotReader<&History> {
    SnapshotReader::new(history, Path::new("/nonexistent-mirror"), Path::new("/nonexistent-mirror/state.redb")).unwrap()
}

/// Checks that `record` loads and every file restores to `tree`'s bytes.
pub(crate) fn assert_restores(history: &History, record: &SnapshotRecord, tree: &Tree) {
    let loaded = history.load_tree(record, &RelPath::root()).unwrap();
    assert_eq!(loaded, tree.manifest);
    let restored = restore(&loaded, &mut store_reader(history));
    assert_eq!(restored, tree.data);
}

#[test]
fn chunks_and_snapshots_roundtrip() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("history");
    let tree = Tree::new(3, 4, 20_000, |d, f| (d * 100 + f) as u64);
    let mut history = History::open(&dir).unwrap();
    tree.store_in(&mut history);
    // Buffered chunks read back before the flush too.
    let (id, bytes) = &tree.chunks()[0];
    assert_eq!(history.read_chunk(id).unwrap().as_deref(), Some(&bytes[..]));
    let first = history.record_snapshot(&tree.manifest, &info("/site", 1_714_570_205)).unwrap();
    let changed = Tree::new(3, 4, 20_000, |d, f| (d * 100 + f + 1000 * usize::from(d == 2)) as u64);
    changed.store_in(&mut history);
    let second = history.record_snapshot(&changed.manifest, &info("/site", 1_714_570_300)).unwrap();
    let other = history.record_snapshot(&tree.manifest, &info("/other", 1_714_570_400)).unwrap();
    drop(history);

    let history = History::open(&dir).unwrap();
    let listed = history.snapshots().unwrap();
    assert_eq!(listed, vec![first.clone(), second.clone(), other.clone()]);
    assert_eq!((first.files, first.dirs, first.bytes), (12, 3, 12 * 20_000));
    assert_eq!(first.time_text, "2024-05-01T13:30:05Z");
    assert_eq!(first.tags, vec![("k".to_string(), "v".to_string())]);
    for (id, bytes) in tree.chunks().iter().chain(&changed.chunks()) {
        assert_eq!(history.read_chunk(id).unwrap().as_deref(), Some(&bytes[..]));
    }
    assert_restores(&history, &first, &tree);
    assert_restores(&history, &second, &changed);
    // Selectors look only at the named tree.
    assert_eq!(history.find("/site", "latest").unwrap(), second);
    assert_eq!(history.find("/site", &first.id[..8]).unwrap(), first);
    assert_eq!(history.find("/site", "2024-05-01 13:30").unwrap(), first);
    assert_eq!(history.find("/site", "2024-05-01T13:31:39Z").unwrap(), first);
    assert_eq!(history.find("/site", "2024-05-01").unwrap(), second);
    assert_eq!(history.find("/other", "latest").unwrap(), other);
    let err = history.find("/site", "2024-04-30").unwrap_err().to_string();
    assert!(err.contains("no snapshot of this tree at or before"), "{err}");
    assert!(history.find("/site", &other.id[..10]).is_err());
    assert!(history.find("/nope", "latest").unwrap_err().to_string().contains("no snapshot"));
    // Wrong bytes for an id are refused.
    let mut history = history;
    assert!(history.add_chunk(ChunkId::of(b"x"), b"y").is_err());
}

#[test]
fn same_data_twice_costs_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("history");
    let tree = Tree::new(10, 10, 30_000, |d, f| (d * 100 + f) as u64);
    let mut history = History::open(&dir).unwrap();
    tree.store_in(&mut history);
    history.flush().unwrap();
    let after_chunks = pack_bytes(&dir);
    tree.store_in(&mut history);
    history.flush().unwrap();
    assert_eq!(pack_bytes(&dir), after_chunks, "the same chunks again added bytes");

    history.record_snapshot(&tree.manifest, &info("/site", 1000)).unwrap();
    let after_first = pack_bytes(&dir);
    assert!(after_first > after_chunks);
    let second = history.record_snapshot(&tree.manifest, &info("/site", 2000)).unwrap();
    assert_eq!(pack_bytes(&dir), after_first, "an unchanged tree's second snapshot wrote tree blobs");
    assert_eq!(history.snapshots().unwrap().len(), 2);
    assert_restores(&history, &second, &tree);
}

/// Two snapshots of 1,000 files of 64 KiB in 20 directories, the second
/// with 1% of the files changed: the second costs the changed chunks and
/// the changed directories' tree blobs only. Prints the figures.
#[test]
fn one_percent_changed_costs_one_percent() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("history");
    let before = Tree::new(20, 50, 65_536, |d, f| (d * 1000 + f) as u64);
    let after =
        Tree::new(20, 50, 65_536, |d, f| (d * 1000 + f + if f % 10 == 0 && d < 2 { 500_000 } else { 0 }) as u64);
    let changed = after.manifest.entries().iter().filter(|e| before.manifest.get(&e.path) != Some(e)).count();
    assert_eq!(changed, 10);
    let mut history = History::open(&dir).unwrap();
    before.store_in(&mut history);
    history.record_snapshot(&before.manifest, &info("/site", 1000)).unwrap();
    let first = pack_bytes(&dir);
    after.store_in(&mut history);
    history.record_snapshot(&after.manifest, &info("/site", 2000)).unwrap();
    let second = pack_bytes(&dir) - first;
    let changed_bytes = 10 * 65_536;
    println!("1% changed: first snapshot {first} bytes on disk, second adds {second} bytes ({changed_bytes} bytes of changed files)");
    // As a mirror's history holds them: file data in the mirror, only the
    // old versions of changed files' chunks and the tree blobs here.
    let trees_dir = tmp.path().join("trees-only");
    let mut trees_only = History::open(&trees_dir).unwrap();
    trees_only.record_snapshot(&before.manifest, &info("/site", 1000)).unwrap();
    let first_trees = pack_bytes(&trees_dir);
    trees_only.record_snapshot(&after.manifest, &info("/site", 2000)).unwrap();
    let second_trees = pack_bytes(&trees_dir) - first_trees;
    println!("1% changed, tree blobs only: first {first_trees} bytes, second adds {second_trees} bytes");
    assert!(second_trees * 5 < first_trees, "unchanged directories were stored again");
    // Random data does not compress: the second costs the changed files and a few tree blobs.
    assert!(second >= changed_bytes && second < changed_bytes + 40_000, "second snapshot cost {second}");
    // Headers (50 bytes a chunk) and tree blobs: under 1% over the data.
    assert!(first > 1000 * 65_536 && first < 1000 * 65_536 / 100 * 101, "first snapshot cost {first}");
}

/// Writes `files` of `tree` into a mirror at `root` and records them in
/// its state database at `db`, as a push would.
fn mirror_files(tree: &Tree, root: &Path, db: &Path, files: &[RelPath]) {
    let state = StateDb::open(db).unwrap();
    let mut upserts = Vec::new();
    for path in files {
        let target = path.to_path(root);
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        std::fs::write(&target, &tree.data[path]).unwrap();
        let digest = tree.manifest.get(path).unwrap().file().unwrap().clone();
        let stat = StatKey { size: digest.size, mtime: Mtime::default(), mode: 0o644, ino: 0, ctime: Mtime::default() };
        upserts.push((path.clone(), FileRecord { stat, digest }));
    }
    state.update(&upserts, &[]).unwrap();
}

#[test]
fn restores_a_subtree_and_a_file_from_store_and_mirror() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, mirror, db) = (tmp.path().join("history"), tmp.path().join("mirror"), tmp.path().join("state.redb"));
    let mut tree = Tree::new(3, 4, 50_000, |d, f| (d * 10 + f) as u64);
    // A hard link in d001 to a file in d000, an xattr, a symlink, an empty directory.
    let mut entries = tree.manifest.entries().to_vec();
    let target = rel(b"d000/f0001");
    let digest = tree.manifest.get(&target).unwrap().file().unwrap().clone();
    entries.push(Entry {
        path: rel(b"d001/link"),
        meta: tree.manifest.get(&target).unwrap().meta.clone(),
        kind: EntryKind::HardLink { target: target.clone(), size: digest.size, hash: digest.hash },
    });
    entries.push(Entry {
        path: rel(b"d001/sym"),
        meta: Meta::default(),
        kind: EntryKind::Symlink { target: b"f0000".to_vec() },
    });
    entries.push(Entry { path: rel(b"d001/empty"), meta: Meta::basic(0o700, Mtime::default()), kind: EntryKind::Dir });
    let noted = entries.iter().position(|e| e.path == rel(b"d001/f0000")).unwrap();
    entries[noted].meta.xattrs = vec![Xattr { name: b"user.note".to_vec(), value: b"kept".to_vec() }];
    tree.manifest = Manifest::new(entries).unwrap();

    // d000 and d001/f0000 only in the mirror, the rest only in the store.
    let in_mirror: Vec<RelPath> =
        ["d000/f0000", "d000/f0001", "d000/f0002", "d000/f0003", "d001/f0000"].map(|p| rel(p.as_bytes())).into();
    mirror_files(&tree, &mirror, &db, &in_mirror);
    let mut history = History::open(&dir).unwrap();
    for entry in tree.manifest.entries().iter().filter(|e| e.file().is_some() && !in_mirror.contains(&e.path)) {
        let bytes = &tree.data[&entry.path];
        let mut offset = 0;
        for chunk in &entry.file().unwrap().chunks {
            history.add_chunk(chunk.id, &bytes[offset..offset + chunk.len as usize]).unwrap();
            offset += chunk.len as usize;
        }
    }
    let record = history.record_snapshot(&tree.manifest, &info("/site", 5000)).unwrap();
    let mut reader = SnapshotReader::new(&history, &mirror, &db).unwrap();

    // The subtree d001: paths relative to it; the link to d000 becomes the file itself.
    let sub = history.load_tree(&record, &rel(b"d001")).unwrap();
    let names: Vec<String> = sub.entries().iter().map(|e| e.path.to_string()).collect();
    assert_eq!(names, ["empty", "f0000", "f0001", "f0002", "f0003", "link", "sym"]);
    assert!(matches!(sub.get(&rel(b"link")).unwrap().kind, EntryKind::File(ref d) if d.hash == digest.hash));
    assert_eq!(sub.get(&rel(b"f0000")).unwrap().meta.xattrs.len(), 1);
    let restored = restore(&sub, &mut reader);
    assert_eq!(restored[&rel(b"f0000")], tree.data[&rel(b"d001/f0000")]);
    assert_eq!(restored[&rel(b"link")], tree.data[&target]);

    // One file, named as itself.
    let one = history.load_tree(&record, &rel(b"d000/f0002")).unwrap();
    assert_eq!(one.entries().len(), 1);
    assert_eq!(one.entries()[0].path, rel(b"f0002"));
    assert_eq!(restore(&one, &mut reader)[&rel(b"f0002")], tree.data[&rel(b"d000/f0002")]);
    assert!(history.load_tree(&record, &rel(b"d000/missing")).is_err());

    // A chunk found nowhere: a per-entry error naming the file and the damage.
    std::fs::write(mirror.join("d000/f0003"), b"overwritten behind the mirror's back").unwrap();
    let f3 = history.load_tree(&record, &rel(b"d000/f0003")).unwrap();
    let chunk = f3.entries()[0].file().unwrap().chunks[0];
    let err = reader.read(&f3.entries()[0].path, 0, chunk).unwrap_err();
    assert!(err.is_per_entry());
    let text = err.to_string();
    assert!(text.contains("f0003") && text.contains("history is damaged"), "{text}");
}

/// Records `n` snapshots of disjoint data, one pack each; returns them
/// with their trees and each one's pack bytes.
fn disjoint_snapshots(history: &mut History, dir: &Path, n: usize) -> Vec<(SnapshotRecord, Tree, u64)> {
    (0..n)
        .map(|i| {
            let before = pack_bytes(dir);
            let tree = Tree::new(2, 3, 40_000, |d, f| (i * 1000 + d * 10 + f) as u64);
            tree.store_in(history);
            let record = history.record_snapshot(&tree.manifest, &info("/site", 1000 + i as u64)).unwrap();
            (record, tree, pack_bytes(dir) - before)
        })
        .collect()
}

#[test]
fn prune_frees_what_only_forgotten_snapshots_used() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("history");
    let mut history = History::open(&dir).unwrap();
    let snaps = disjoint_snapshots(&mut history, &dir, 6);
    let before = pack_bytes(&dir);
    let forgotten: Vec<String> = snaps.iter().step_by(2).map(|(r, _, _)| r.id.clone()).collect();
    let only_theirs: u64 = snaps.iter().step_by(2).map(|(_, _, bytes)| bytes).sum();
    assert!(history.forget(&["ffff0000".to_string()]).is_err(), "an unknown id is refused");
    history.forget(&forgotten).unwrap();
    assert_eq!(history.snapshots().unwrap().len(), 3);

    // Phase one takes them out of the index; nothing is deleted yet.
    let first = history.prune().unwrap();
    assert_eq!((first.packs_doomed, first.packs_deleted), (3, 0));
    assert_eq!(pack_bytes(&dir), before);
    // Phase two, on a later run, deletes them.
    drop(history);
    let mut history = History::open(&dir).unwrap();
    let second = history.prune().unwrap();
    assert_eq!((second.packs_deleted, second.packs_reinstated, second.bytes_freed), (3, 0, only_theirs));
    assert_eq!(pack_bytes(&dir), before - only_theirs);
    assert_eq!(second.bytes_after, before - only_theirs);
    for (record, tree, _) in snaps.iter().skip(1).step_by(2) {
        assert_restores(&history, record, tree);
    }
    // A third run has nothing to do.
    let third = history.prune().unwrap();
    assert_eq!((third.packs_doomed, third.packs_deleted, third.packs_repacked), (0, 0, 0));
}

#[test]
fn a_doomed_pack_a_newer_snapshot_uses_is_reinstated() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("history");
    let mut pruner = History::open(&dir).unwrap();
    let snaps = disjoint_snapshots(&mut pruner, &dir, 2);
    // A writer opened before the prune holds the first snapshot's blobs in its index.
    let mut writer = History::open(&dir).unwrap();
    pruner.forget(&[snaps[0].0.id.clone()]).unwrap();
    assert_eq!(pruner.prune().unwrap().packs_doomed, 1);
    // It records the same tree again: nothing new to write, all in the doomed pack.
    let bytes = pack_bytes(&dir);
    snaps[0].1.store_in(&mut writer);
    let again = writer.record_snapshot(&snaps[0].1.manifest, &info("/site", 9000)).unwrap();
    assert_eq!(pack_bytes(&dir), bytes);
    drop(writer);
    let report = pruner.prune().unwrap();
    assert_eq!((report.packs_reinstated, report.packs_deleted), (1, 0));
    drop(pruner);
    let history = History::open(&dir).unwrap();
    assert_restores(&history, &again, &snaps[0].1);
    assert_restores(&history, &snaps[1].0, &snaps[1].1);
}

#[test]
fn an_older_writer_keeps_doomed_packs() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("history");
    let mut pruner = History::open(&dir).unwrap();
    let snaps = disjoint_snapshots(&mut pruner, &dir, 2);
    let writer = History::open(&dir).unwrap();
    pruner.forget(&[snaps[0].0.id.clone()]).unwrap();
    assert_eq!(pruner.prune().unwrap().packs_doomed, 1);
    let held = pruner.prune().unwrap();
    assert_eq!(held.packs_deleted, 0, "deleted a pack an older writer may use");
    drop(writer);
    // A stale lock (a dead process on this host) does not hold anything back.
    let stale = serde_json::json!({"pid": u32::MAX - 1, "host": std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap().trim(), "start_ms": 0});
    std::fs::write(dir.join("locks/stale"), stale.to_string()).unwrap();
    let freed = pruner.prune().unwrap();
    assert_eq!((freed.packs_deleted, freed.bytes_freed), (1, snaps[0].2));
    assert_restores(&pruner, &snaps[1].0, &snaps[1].1);
}

#[test]
fn prune_repacks_mostly_unreferenced_packs() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("history");
    let mut history = History::open(&dir).unwrap();
    history.set_min_repack_gain(10_000);
    // One pack holding a small tree's data and a big one's.
    let small = Tree::new(1, 2, 20_000, |_, f| f as u64 + 1);
    let big = Tree::new(2, 5, 40_000, |d, f| (d * 10 + f) as u64 + 100);
    small.store_in(&mut history);
    big.store_in(&mut history);
    let keep = history.record_snapshot(&small.manifest, &info("/site", 100)).unwrap();
    let gone = history.record_snapshot(&big.manifest, &info("/site", 200)).unwrap();
    let before = pack_bytes(&dir);
    history.forget(&[gone.id]).unwrap();
    let first = history.prune().unwrap();
    assert_eq!(first.packs_repacked, 1);
    let second = history.prune().unwrap();
    assert!(second.packs_deleted >= 1);
    let after = pack_bytes(&dir);
    assert!(after < before / 4, "{after} of {before} left");
    drop(history);
    assert_restores(&History::open(&dir).unwrap(), &keep, &small);
}

#[test]
fn a_store_of_another_format_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("history");
    drop(History::open(&dir).unwrap());
    std::fs::write(dir.join("config"), r#"{"format": 9, "id": "x"}"#).unwrap();
    let err = History::open(&dir).unwrap_err().to_string();
    assert!(err.contains("format 9 is not supported"), "{err}");
}

/// 100,000 files in 100 directories: recording and loading hold one
/// directory's tree blob per level, never the whole tree.
#[test]
fn big_trees_record_and_load_one_directory_at_a_time() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("history");
    let digest = digest_bytes(b"same content everywhere");
    let mut entries = Vec::with_capacity(100_100);
    for d in 0..100 {
        let top = rel(format!("dir{d:03}").as_bytes());
        entries.push(Entry { path: top.clone(), meta: Meta::default(), kind: EntryKind::Dir });
        for f in 0..1000 {
            let path = top.join(format!("file{f:04}").as_bytes()).unwrap();
            let meta = Meta { mtime: Mtime { secs: f, nanos: 0 }, ..Meta::default() };
            entries.push(Entry { path, meta, kind: EntryKind::File(digest.clone()) });
        }
    }
    let manifest = Manifest::new(entries).unwrap();
    let (mut total, mut largest) = (0usize, 0usize);
    let (_, stats) = xfer::history::tree::build(&manifest, xfer::history::tree::PART_TARGET, |_, bytes| {
        total += bytes.len();
        largest = largest.max(bytes.len());
        Ok::<(), ()>(())
    })
    .unwrap();
    assert!(total > 5_000_000, "tree blobs: {total} bytes");
    // The root's part plus one directory's: far below the whole tree.
    assert!(
        stats.peak_held <= 2 * largest && stats.peak_held < total / 20,
        "build held {} of {total}",
        stats.peak_held
    );

    let mut history = History::open(&dir).unwrap();
    let record = history.record_snapshot(&manifest, &info("/big", 1)).unwrap();
    assert_eq!(record.files, 100_000);
    let (loaded, peak) = history.load_tree_measured(&record, &RelPath::root()).unwrap();
    assert_eq!(loaded, manifest);
    assert!(peak <= 2 * largest && peak < total / 20, "load held {peak} of {total}");
}

/// The child of the crash tests: runs a fixed history script in the store
/// named by `HIST_CRASH_DIR` until `XFER_CRASH_AT` aborts it, noting each
/// step it finished in `DIR.steps`.
#[test]
#[ignore = "run by history_store::crash_points_lose_nothing in a child process"]
fn crash_child() {
    let Some(dir) = std::env::var_os("HIST_CRASH_DIR").map(PathBuf::from) else { return };
    let steps = dir.with_extension("steps");
    let done = |step: &str| {
        let mut all = std::fs::read_to_string(&steps).unwrap_or_default();
        all.push_str(step);
        all.push('\n');
        std::fs::write(&steps, all).unwrap();
    };
    let mut history = History::open(&dir).unwrap();
    history.set_pack_target(60_000);
    let mut ids = Vec::new();
    for i in 0..3 {
        let tree = crash_tree(i);
        tree.store_in(&mut history);
        ids.push(history.record_snapshot(&tree.manifest, &info("/site", 100 + i as u64)).unwrap().id);
        done(&format!("recorded {i}"));
    }
    history.forget(&ids[..1]).unwrap();
    done("forgot 0");
    history.prune().unwrap();
    done("pruned");
    let tree = crash_tree(3);
    tree.store_in(&mut history);
    history.record_snapshot(&tree.manifest, &info("/site", 103)).unwrap();
    done("recorded 3");
    drop(history);
    let mut history = History::open(&dir).unwrap();
    history.prune().unwrap();
    done("pruned again");
}

fn crash_tree(i: usize) -> Tree {
    Tree::new(2, 3, 30_000, |d, f| (i * 100 + d * 10 + f) as u64)
}

#[test]
fn crash_points_lose_nothing() {
    let points = [
        ("history.pack_written", 1),
        ("history.pack_written", 4),
        ("history.index_written", 2),
        ("history.snapshot_written", 2),
        ("history.prune.new_index", 1),
        ("history.prune.delete", 1),
    ];
    for (point, nth) in points {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("history");
        let status = Command::new(std::env::current_exe().unwrap())
            .args(["history_store::crash_child", "--exact", "--ignored", "--test-threads", "1"])
            .env("HIST_CRASH_DIR", &dir)
            .env("XFER_CRASH_AT", format!("{point}:{nth}"))
            .env_remove("XFER_CRASH_TRACE")
            .output()
            .unwrap()
            .status;
        // Aborted at the point (SIGABRT), not failed some other way.
        assert_eq!(std::os::unix::process::ExitStatusExt::signal(&status), Some(6), "{point}:{nth}: {status}");
        let steps = std::fs::read_to_string(dir.with_extension("steps")).unwrap_or_default();
        let recorded: Vec<usize> = (0..4).filter(|i| steps.contains(&format!("recorded {i}\n"))).collect();
        let forgot = steps.contains("forgot 0");
        // Open, list, restore everything recorded; then prune twice and again.
        for round in 0..2 {
            let mut history = History::open(&dir).unwrap();
            let listed = history.snapshots().unwrap();
            for &i in &recorded {
                if i == 0 && forgot {
                    continue;
                }
                let record = listed
                    .iter()
                    .find(|r| r.time == 100 + i as i64)
                    .unwrap_or_else(|| panic!("{point}:{nth} round {round}: snapshot {i} lost ({steps})"));
                assert_restores(&history, record, &crash_tree(i));
            }
            // Whatever else is listed (recorded just before the crash) restores too.
            for record in &listed {
                let i = (record.time - 100) as usize;
                assert_restores(&history, record, &crash_tree(i));
            }
            history.prune().unwrap();
            drop(history);
        }
    }
}

/// One step of the model test.
#[derive(Clone, Debug)]
pub(crate) enum Op {
    /// Record a tree built from these seeds (one per file, 0 means absent).
    Record(Vec<u8>),
    /// Forget the snapshot at this position among those listed.
    Forget(usize),
    /// Prune.
    Prune,
    /// Close and reopen the store.
    Reopen,
}

pub(crate) fn op() -> impl proptest::strategy::Strategy<Value = Op> {
    use proptest::prelude::*;
    prop_oneof![
        3 => prop::collection::vec(0u8..6, 6).prop_map(Op::Record),
        1 => any::<usize>().prop_map(Op::Forget),
        2 => Just(Op::Prune),
        1 => Just(Op::Reopen),
    ]
}

/// A tree of up to six files whose contents come from `seeds` (shared
/// seeds share data between snapshots).
pub(crate) fn seeded_tree(seeds: &[u8]) -> Tree {
    let mut tree = Tree::new(0, 0, 0, |_, _| 0);
    let mut entries = vec![Entry { path: rel(b"d"), meta: Meta::default(), kind: EntryKind::Dir }];
    for (i, &seed) in seeds.iter().enumerate().filter(|(_, &s)| s != 0) {
        let path = rel(format!("d/f{i}").as_bytes());
        let bytes = seeded(20_000 + usize::from(seed) * 1000, u64::from(seed));
        entries.push(Entry { path: path.clone(), meta: Meta::default(), kind: EntryKind::File(digest_bytes(&bytes)) });
        tree.data.insert(path, bytes);
    }
    tree.manifest = Manifest::new(entries).unwrap();
    tree
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(24))]

    /// Any sequence of records, forgets, prunes and reopens leaves every
    /// snapshot still listed restoring exactly, and a final forget of all
    /// and two prunes leave no pack behind.
    #[test]
    fn any_history_keeps_every_listed_snapshot(ops in proptest::collection::vec(op(), 1..14)) {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("history");
        run_history_ops(&ops, || History::open(&dir).unwrap())?;
    }
}

/// Applies `ops` to the history `open` gives (again at each reopen, with
/// small packs and eager repacks): after each step every snapshot still
/// listed restores exactly, and forgetting all and pruning twice leaves no
/// pack behind.
pub(crate) fn run_history_ops(
    ops: &[Op],
    open: impl Fn() -> History,
) -> Result<(), proptest::test_runner::TestCaseError> {
    let open = || {
        let mut history = open();
        history.set_pack_target(50_000);
        history.set_min_repack_gain(1);
        history
    };
    let mut history = open();
    let mut live: Vec<(String, Vec<u8>)> = Vec::new();
    for (step, op) in ops.iter().enumerate() {
        match op {
            Op::Record(seeds) => {
                let tree = seeded_tree(seeds);
                tree.store_in(&mut history);
                let record = history.record_snapshot(&tree.manifest, &info("/site", step as u64)).unwrap();
                live.push((record.id, seeds.clone()));
            }
            Op::Forget(at) if !live.is_empty() => {
                let (id, _) = live.remove(at % live.len());
                history.forget(&[id]).unwrap();
            }
            Op::Forget(_) => {}
            Op::Prune => {
                history.prune().unwrap();
            }
            Op::Reopen => {
                drop(history);
                history = open();
            }
        }
        let listed = history.snapshots().unwrap();
        proptest::prop_assert_eq!(listed.len(), live.len());
        for (id, seeds) in &live {
            let record = listed.iter().find(|r| &r.id == id).unwrap();
            assert_restores(&history, record, &seeded_tree(seeds));
        }
    }
    let ids: Vec<String> = live.iter().map(|(id, _)| id.clone()).collect();
    history.forget(&ids).unwrap();
    history.prune().unwrap();
    history.prune().unwrap();
    proptest::prop_assert_eq!(history.pack_bytes().unwrap(), 0);
    Ok(())
}

/// A restore reads the mirror's state database read-only: while a push
/// holds it, opening the reader says so (busy: try again), and it never
/// creates a database that is not there.
#[test]
fn the_reader_opens_the_state_database_read_only() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, db) = (tmp.path().join("history"), tmp.path().join("state.redb"));
    let history = History::open(&dir).unwrap();
    drop(SnapshotReader::new(&history, tmp.path(), &db).unwrap());
    assert!(!db.exists(), "a missing state database was created");
    let held = StateDb::open(&db).unwrap();
    let err = SnapshotReader::new(&history, tmp.path(), &db).err().expect("opened a database a writer holds");
    assert!(err.is_busy(), "{err}");
    drop(held);
    let reader = SnapshotReader::new(&history, tmp.path(), &db).unwrap();
    // Once the reader is gone, a push opens the database again.
    drop(reader);
    drop(StateDb::open(&db).unwrap());
}

/// A state database another process (here: another handle) holds is
/// reported as in use, with what to do, not as the database's own error.
#[test]
fn a_state_database_in_use_says_what_to_do() {
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("state.redb");
    let held = StateDb::open(&db).unwrap();
    let err = StateDb::open(&db).err().expect("opened a database another handle holds");
    assert!(err.is_busy(), "{err}");
    let message = err.to_string();
    assert!(message.contains("in use by another xfer process") && message.contains("--state-dir"), "{message}");
    drop(held);
    drop(StateDb::open(&db).unwrap());
}

/// Prune tidies temporaries and locks a crashed writer left, and only those.
#[test]
fn prune_tidies_what_crashed_writers_left() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("history");
    let mut history = History::open(&dir).unwrap();
    let dead = u32::MAX - 1;
    let old = filetime::FileTime::from_unix_time(1_000_000_000, 0);
    let stale = dir.join(format!("index/.tmp-{}.{dead}.0", "a".repeat(64)));
    let fresh = dir.join(format!("snapshots/.tmp-{}.{dead}.1", "b".repeat(64)));
    let ours = dir.join(format!("index/.tmp-{}.{}.2", "c".repeat(64), std::process::id()));
    for path in [&stale, &fresh, &ours] {
        std::fs::write(path, b"half").unwrap();
    }
    filetime::set_file_mtime(&stale, old).unwrap();
    filetime::set_file_mtime(&ours, old).unwrap();
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    let lock = dir.join("locks/dead");
    std::fs::write(&lock, serde_json::json!({"pid": dead, "host": host.trim(), "start_ms": 0}).to_string()).unwrap();
    history.prune().unwrap();
    assert!(!stale.exists() && !lock.exists());
    assert!(fresh.exists() && ours.exists());
    // Temporaries are never listed as objects.
    assert!(history.snapshots().unwrap().is_empty());
}

/// An index of 1,000,000 blobs (as many index files as a store that
/// never pruned would have) takes well under 100 MiB in memory.
#[test]
fn a_million_blobs_index_compactly() {
    use xfer::history::index::{encode, IndexedPack};
    use xfer::history::pack::{BlobKind, Compression, PackEntry};
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("history");
    drop(History::open(&dir).unwrap());
    let id_of = |n: u64| ChunkId(*blake3::hash(&n.to_le_bytes()).as_bytes());
    // 4,000 packs of 250 blobs of 64 KiB, in 4 index files.
    for file in 0..4u64 {
        let packs: Vec<IndexedPack> = (0..1000u64)
            .map(|p| {
                let entries = (0..250u64)
                    .map(|b| PackEntry {
                        kind: BlobKind::Data,
                        id: id_of((file * 1000 + p) * 250 + b),
                        offset: b * 65_536,
                        stored: 65_536,
                        raw: 65_536,
                        compression: Compression::None,
                    })
                    .collect();
                IndexedPack {
                    id: *id_of(u64::MAX - file * 1000 - p).as_bytes(),
                    len: 250 * 65_536 + 12 + 250 * 50,
                    entries,
                }
            })
            .collect();
        let bytes = encode(&packs);
        std::fs::write(dir.join("index").join(xfer::history::hex(blake3::hash(&bytes).as_bytes())), bytes).unwrap();
    }
    let history = History::open(&dir).unwrap();
    let (blobs, bytes) = history.index_size();
    println!("1,000,000 blobs: {bytes} bytes of index in memory");
    assert_eq!(blobs, 1_000_000);
    assert!(bytes < 60 << 20, "{bytes} bytes");
    assert!(history.contains(&id_of(0)) && history.contains(&id_of(999_999)) && !history.contains(&id_of(1_000_000)));

    // A snapshot that uses them all: prune keeps every pack and rewrites
    // the index as files of bounded size, read one at a time on open.
    let params = xfer::chunk::ChunkParams::new(16_384, 65_536, 262_144).unwrap();
    let mut entries = Vec::new();
    for p in 0..4000u64 {
        let chunks = (0..250).map(|b| xfer::chunk::ChunkRef { id: id_of(p * 250 + b), len: 65_536 }).collect();
        let digest = xfer::chunk::FileDigest { size: 250 * 65_536, hash: FileHash([1; 32]), params, chunks };
        entries.push(Entry {
            path: rel(format!("f{p:04}").as_bytes()),
            meta: Meta::default(),
            kind: EntryKind::File(digest),
        });
    }
    let mut history = history;
    history.record_snapshot(&Manifest::new(entries).unwrap(), &info("/big", 1)).unwrap();
    let report = history.prune().unwrap();
    assert_eq!((report.packs_doomed, report.packs_repacked), (0, 0));
    let files: Vec<u64> =
        std::fs::read_dir(dir.join("index")).unwrap().map(|f| f.unwrap().metadata().unwrap().len()).collect();
    assert!(files.len() >= 7 && files.iter().all(|&len| len < 9 << 20), "{files:?}");
    drop(history);
    assert!(History::open(&dir).unwrap().index_size().0 > 1_000_000);
}
