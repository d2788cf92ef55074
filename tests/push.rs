//! Local pushes run in memory (usecase::memory) into the mirror store, on real files.

use std::collections::HashMap;
use std::fs;
use std::path::Path;
use std::sync::Arc;

use proptest::prelude::*;
use rand::rngs::SmallRng;
use rand::SeedableRng;
use tempfile::TempDir;
use xfer::codec::{Compression, Encoder};
use xfer::filter::Filter;
use xfer::fs::scan::{scan, FileRecord, ScanOptions, StatKey};
use xfer::fs::store::state::StateDb;
use xfer::fs::store::MirrorStore;
use xfer::manifest::{EntryKind, RelPath};
use xfer::plan::{wire_chunk_list, ListEdit};
use xfer::session::Destination;
use xfer::usecase::memory::{push_local, PushOptions, Stats};

use crate::plan_model::{random_edit, random_tree};
use crate::util::pair::{push_into, ModelReader};
use crate::util::{assert_same_tree, file_contents, materialize, read_tree, rel, seeded, Model, Node};

struct Dirs {
    _tmp: TempDir,
    src: std::path::PathBuf,
    dest: std::path::PathBuf,
    state: std::path::PathBuf,
}

fn dirs() -> Dirs {
    let tmp = TempDir::new().unwrap();
    let (src, dest, state) = (tmp.path().join("src"), tmp.path().join("dest"), tmp.path().join("state"));
    fs::create_dir(&src).unwrap();
    Dirs { _tmp: tmp, src, dest, state }
}

fn options(d: &Dirs) -> PushOptions {
    PushOptions {
        delete: true,
        checksum: false,
        compression: Compression::Auto,
        state_dir: d.state.clone(),
        filter: None,
    }
}

fn push(d: &Dirs) -> Stats {
    push_local(&d.src, &d.dest, &options(d)).unwrap()
}

fn replace_src(d: &Dirs, model: &Model) {
    fs::remove_dir_all(&d.src).unwrap();
    fs::create_dir(&d.src).unwrap();
    materialize(model, &d.src);
}

fn push_roundtrip_impl(seed: u64, files: usize, edits: usize) {
    let d = dirs();
    let mut rng = SmallRng::seed_from_u64(seed);
    let v1 = random_tree(&mut rng, files);
    materialize(&v1, &d.src);
    push(&d);
    assert_same_tree(&read_tree(&d.dest), &v1);
    let mut v2 = v1.clone();
    for _ in 0..edits {
        random_edit(&mut v2, &mut rng);
    }
    replace_src(&d, &v2);
    let stats = push(&d);
    assert_same_tree(&read_tree(&d.dest), &v2);
    assert!(stats.skipped.is_empty(), "{:?}", stats.skipped);
    // Nothing changed since: nothing is read or sent.
    let again = push(&d);
    assert_eq!((again.files_changed, again.chunks_sent, again.files_read), (0, 0, 0));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]
    #[test]
    fn push_roundtrip_proptest(seed in any::<u64>(), files in 0usize..12, edits in 0usize..10) {
        push_roundtrip_impl(seed, files, edits);
    }
}

#[test]
fn push_roundtrip_cases() {
    for (seed, files, edits) in [(1, 0, 0), (2, 8, 6), (3, 12, 12)] {
        push_roundtrip_impl(seed, files, edits);
    }
}

/// A tree of `files` random files of `size` bytes under `dir/`.
fn big_tree(dir: &str, files: usize, size: usize) -> Model {
    let mut model = Model::new();
    model.insert(rel(dir.as_bytes()), Node::Dir { mode: 0o755, mtime: 10 });
    for i in 0..files {
        let path = rel(format!("{dir}/file{i}").as_bytes());
        model.insert(path, Node::File { data: seeded(size, i as u64 + 1), mode: 0o644, mtime: 10 });
    }
    model
}

#[test]
fn push_moved_tree_sends_no_chunks() {
    let d = dirs();
    let v1 = big_tree("before", 25, 4 << 20); // 100 MiB
    materialize(&v1, &d.src);
    let first = push(&d);
    assert_eq!(first.bytes_scanned, 100 << 20);
    // The same files renamed and moved into new directories.
    let mut v2 = Model::new();
    v2.insert(rel(b"after"), Node::Dir { mode: 0o755, mtime: 10 });
    v2.insert(rel(b"after/deeper"), Node::Dir { mode: 0o755, mtime: 10 });
    for (path, node) in v1.iter().filter(|(_, n)| matches!(n, Node::File { .. })) {
        let name = String::from_utf8_lossy(path.name()).into_owned();
        v2.insert(rel(format!("after/deeper/{name}.renamed").as_bytes()), node.clone());
    }
    replace_src(&d, &v2);
    let stats = push(&d);
    assert_same_tree(&read_tree(&d.dest), &v2);
    assert_eq!(stats.files_changed, 25);
    assert_eq!((stats.chunks_sent, stats.bytes_sent), (0, 0));
}

#[test]
fn push_front_insertion_sends_few_chunks() {
    let d = dirs();
    let data = seeded(64 << 20, 77);
    fs::write(d.src.join("big"), &data).unwrap();
    push(&d);
    let mut shifted = vec![b'!'];
    shifted.extend_from_slice(&data);
    fs::write(d.src.join("big"), &shifted).unwrap();
    let stats = push(&d);
    assert_eq!(fs::read(d.dest.join("big")).unwrap(), shifted);
    assert!(stats.chunks_sent <= 3, "{} chunks sent for a 1-byte insertion", stats.chunks_sent);
}

/// Wire bytes of a changed file's metadata when the sender knows the
/// receiver's previous chunk list: path, metadata, size, hash, list edit.
fn metadata_bytes(path: &RelPath, old: &[xfer::chunk::ChunkRef], new: &xfer::chunk::FileDigest) -> usize {
    let edit: Option<Vec<ListEdit>> = wire_chunk_list(old, new);
    let message = (path, new.size, new.hash, new.params, &edit);
    postcard::to_allocvec(&message).unwrap().len() + 16 // mode and mtime
}

#[test]
fn push_small_overwrite_costs_under_1kib() {
    let d = dirs();
    let data = seeded(64 << 20, 5);
    fs::write(d.src.join("disk.img"), &data).unwrap();
    push(&d);
    let before = scan(&d.src, &HashMap::new(), ScanOptions::default()).unwrap();
    let mut edited = data.clone();
    let at = 40 << 20;
    edited[at..at + 100].copy_from_slice(&seeded(100, 6));
    fs::write(d.src.join("disk.img"), &edited).unwrap();
    let stats = push(&d);
    assert_eq!(fs::read(d.dest.join("disk.img")).unwrap(), edited);
    let after = scan(&d.src, &HashMap::new(), ScanOptions::default()).unwrap();
    let path = rel(b"disk.img");
    let old = before.manifest.get(&path).and_then(|e| e.file()).unwrap();
    let new = after.manifest.get(&path).and_then(|e| e.file()).unwrap();
    let meta = metadata_bytes(&path, &old.chunks, new);
    let total = meta as u64 + stats.signature_bytes + stats.refine_request_bytes + stats.bytes_sent;
    eprintln!(
        "100-byte overwrite: metadata {meta} B, signatures {} B, chunk data {} B in {} chunks, total {total} B",
        stats.signature_bytes, stats.bytes_sent, stats.chunks_sent
    );
    assert!(stats.chunks_sent >= 1 && stats.chunks_delta >= 1);
    assert!(total < 1024, "{total} bytes on the wire for a 100-byte overwrite");
}

#[test]
fn push_reindexes_files_edited_on_destination() {
    let d = dirs();
    fs::write(d.src.join("a"), seeded(100_000, 1)).unwrap();
    push(&d);
    fs::write(d.dest.join("a"), b"edited behind xfer's back").unwrap();
    let stats = push(&d);
    assert_eq!(fs::read(d.dest.join("a")).unwrap(), seeded(100_000, 1));
    assert_eq!(stats.files_changed, 1);
}

/// Metadata changes (a directory's mtime, a chmod) wait for the next
/// commit instead of each committing a transaction of its own: a delta of
/// a source tree, whose every directory's mtime changes, waited on the disk
/// once per directory. Steps count every change the store makes, a commit
/// three of them (sync, renames, record).
#[test]
fn metadata_changes_share_a_commit() {
    const DIRS: usize = 40;
    let mut v1 = Model::new();
    for d in 0..DIRS {
        v1.insert(rel(format!("d{d:02}").as_bytes()), Node::Dir { mode: 0o755, mtime: 5 });
        v1.insert(
            rel(format!("d{d:02}/f").as_bytes()),
            Node::File { data: seeded(100, d as u64), mode: 0o644, mtime: 5 },
        );
    }
    let mut v2 = v1.clone();
    for node in v2.values_mut() {
        match node {
            Node::Dir { mtime, .. } => *mtime = 9,
            Node::File { mode, .. } => *mode = 0o600,
            Node::Symlink { .. } => {}
        }
    }
    let tmp = TempDir::new().unwrap();
    let dest = tmp.path().join("dest");
    fs::create_dir(&dest).unwrap();
    materialize(&v1, &dest);
    let mut store = MirrorStore::open(&dest, &tmp.path().join("state.redb")).unwrap();
    // The probe: a step this far in fails the push.
    store.fail_at_step(Some(3 * DIRS as u32));
    let (result, receiver) = push_into(crate::util::manifest_of(&v2), ModelReader(file_contents(&v2)), store);
    drop(receiver);
    result.unwrap_or_else(|e| panic!("{} metadata changes took {} steps or more: {e:?}", 2 * DIRS, 3 * DIRS));
    assert_same_tree(&read_tree(&dest), &v2);
}

/// Makes the destination's record of `name` vouch for the bytes there
/// now, as it would after bits rotted under an unchanged stat.
fn forge_record(d: &Dirs, name: &str) {
    let db = fs::read_dir(d.state.join("dests"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "redb"))
        .unwrap();
    let db = StateDb::open(&db).unwrap();
    let record = db.file(&rel(name.as_bytes())).unwrap().unwrap();
    let stat = StatKey::of(&fs::symlink_metadata(d.dest.join(name)).unwrap());
    db.update(&[(rel(name.as_bytes()), FileRecord { stat, digest: record.digest })], &[]).unwrap();
}

/// A changed file is built on its old version, whose unchanged chunks are
/// trusted by their record and checked by the whole-file hash only. Old
/// bytes that rotted under an unchanged stat fail that hash: the new
/// version is refused (the old file stays as it was), and the next push,
/// no longer trusting the record, sends what the rot spoiled.
#[test]
fn a_version_built_on_rotted_old_bytes_is_refused_then_repaired() {
    let d = dirs();
    let mut data = seeded(4 << 20, 7);
    fs::write(d.src.join("big"), &data).unwrap();
    push(&d);
    let on_dest = d.dest.join("big");
    let mut rotted = fs::read(&on_dest).unwrap();
    rotted[3 << 20] ^= 0x40;
    fs::write(&on_dest, &rotted).unwrap();
    forge_record(&d, "big");
    data[100] ^= 1;
    fs::write(d.src.join("big"), &data).unwrap();

    let stats = push(&d);
    assert!(stats.skipped.iter().any(|s| s.path == "big"), "{:?}", stats.skipped);
    assert_eq!(fs::read(&on_dest).unwrap(), rotted, "the old version stays as it was");
    let stats = push(&d);
    assert!(!stats.is_partial(), "{:?}", stats.skipped);
    assert_eq!(fs::read(&on_dest).unwrap(), data);
}

/// Building on the old version keeps every byte right where new chunks
/// bring zeros over old data, or data over old zeros and holes.
#[test]
fn a_version_built_on_the_old_one_is_exact_around_zeros_and_holes() {
    let d = dirs();
    let mut data = seeded(6 << 20, 3);
    data[(2 << 20)..(3 << 20)].fill(0);
    fs::write(d.src.join("f"), &data).unwrap();
    push(&d);
    // Zeros over data, data over zeros, and a shorter file.
    data[(4 << 20)..(4 << 20) + 70_000].fill(0);
    data[(2 << 20) + 5000..(2 << 20) + 9000].fill(0xa5);
    data.truncate((5 << 20) + 123);
    fs::write(d.src.join("f"), &data).unwrap();
    let stats = push(&d);
    assert!(!stats.is_partial(), "{:?}", stats.skipped);
    assert!(stats.chunks_reused > 0);
    assert_eq!(fs::read(d.dest.join("f")).unwrap(), data);
}

#[test]
fn push_skips_and_reports_fifos_and_copies_hard_links() {
    let d = dirs();
    fs::write(d.src.join("one"), b"1").unwrap();
    fs::hard_link(d.src.join("one"), d.src.join("two")).unwrap();
    fs::write(d.src.join("plain"), b"p").unwrap();
    let fifo = std::process::Command::new("mkfifo").arg(d.src.join("pipe")).status().unwrap();
    assert!(fifo.success());
    let stats = push(&d);
    let skipped: Vec<&str> = stats.skipped.iter().map(|s| s.path.as_str()).collect();
    assert_eq!(skipped, ["pipe"]);
    assert!(stats.skipped[0].error.contains("special"));
    assert_eq!(fs::read(d.dest.join("plain")).unwrap(), b"p");
    assert!(!d.dest.join("pipe").exists());
    // Hard links are copied as one file with two names (tests/hardlinks.rs).
    use std::os::unix::fs::MetadataExt;
    let (one, two) = (fs::metadata(d.dest.join("one")).unwrap(), fs::metadata(d.dest.join("two")).unwrap());
    assert_eq!((one.ino(), one.nlink()), (two.ino(), 2));
}

#[test]
fn push_keeps_state_out_of_destination() {
    let d = dirs();
    fs::write(d.src.join("f"), b"x").unwrap();
    push(&d);
    let names: Vec<_> = fs::read_dir(&d.dest).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names, vec![std::ffi::OsString::from("f")]);
    assert!(fs::read_dir(&d.state).unwrap().count() > 0);
}

/// Interrupts a push session at every step of the store in turn. Each time,
/// every destination file must be wholly its old or its new version, the
/// state database must not claim anything the disk does not hold, and a
/// re-run must complete the transfer.
#[test]
fn apply_interrupted_at_every_step_is_atomic() {
    let v1 = {
        let mut m = big_tree("d", 4, 150_000);
        m.insert(rel(b"keep"), Node::File { data: seeded(70_000, 99), mode: 0o644, mtime: 3 });
        m.insert(rel(b"gone"), Node::File { data: seeded(50_000, 98), mode: 0o644, mtime: 3 });
        m
    };
    let mut v2 = v1.clone();
    // Edits, a swap of two files' contents (each rebuilt from the other's
    // old chunks), a move, a delete and a new file.
    if let Some(Node::File { data, mtime, .. }) = v2.get_mut(&rel(b"d/file0")) {
        data.splice(1000..1000, seeded(500, 1));
        *mtime = 20;
    }
    let f1 = v2[&rel(b"d/file1")].clone();
    let f2 = v2[&rel(b"d/file2")].clone();
    v2.insert(rel(b"d/file1"), f2);
    v2.insert(rel(b"d/file2"), f1);
    let moved = v2.remove(&rel(b"keep")).unwrap();
    v2.insert(rel(b"d/kept"), moved);
    v2.remove(&rel(b"gone"));
    v2.insert(rel(b"new"), Node::File { data: seeded(40_000, 7), mode: 0o600, mtime: 4 });
    let old_files = file_contents(&v1);
    let new_files = file_contents(&v2);

    let mut step = 0;
    loop {
        let tmp = TempDir::new().unwrap();
        let (dest, state_path) = (tmp.path().join("dest"), tmp.path().join("state.redb"));
        fs::create_dir(&dest).unwrap();
        materialize(&v1, &dest);
        let mut store = MirrorStore::open(&dest, &state_path).unwrap().with_batch_limits(2, u64::MAX);
        let source = crate::util::manifest_of(&v2);
        store.fail_at_step(Some(step));
        let (result, receiver) = push_into(source.clone(), ModelReader(new_files.clone()), store);
        let finished = result.is_ok();
        if let Err(e) = &result {
            assert!(matches!(e.local_error::<xfer::Error>(), Some(xfer::Error::Injected { .. })), "{e:?}");
        }
        drop(receiver);

        // Every final name holds a complete old or new version; no temporaries.
        let on_disk = read_tree(&dest);
        for (path, node) in &on_disk {
            assert!(!path.name().starts_with(b".xfer-tmp."), "step {step}: temporary {path} left behind");
            if let Node::File { data, .. } = node {
                let old = old_files.get(path) == Some(data);
                let new = new_files.get(path) == Some(data);
                assert!(old || new, "step {step}: {path} is neither its old nor its new version");
            }
        }
        // The state never claims what the disk does not hold.
        let db = StateDb::open(&state_path).unwrap();
        for (path, record) in db.files().unwrap() {
            let abs = path.to_path(&dest);
            let Ok(meta) = fs::symlink_metadata(&abs) else { continue };
            if StatKey::of(&meta) == record.stat {
                let data = fs::read(&abs).unwrap();
                assert_eq!(xfer::hash::FileHash::of(&data), record.digest.hash, "step {step}: state ahead of {path}");
            }
        }
        drop(db);
        // A re-run completes the transfer.
        let store = MirrorStore::open(&dest, &state_path).unwrap();
        push_into(source, ModelReader(new_files.clone()), store).0.unwrap();
        assert_same_tree(&read_tree(&dest), &v2);
        if finished {
            assert!(step > 10, "only {step} steps: the test covers too little");
            break;
        }
        step += 1;
    }
}

/// The scan reports its running totals after each file; the last report
/// is the whole tree, and only files it had to read count as read.
#[test]
fn scan_reports_progress_per_file() {
    let d = dirs();
    for i in 0..10 {
        fs::write(d.src.join(format!("f{i}")), seeded(1000 + i as usize, i)).unwrap();
    }
    let collect = |previous: &HashMap<RelPath, xfer::fs::scan::FileRecord>| {
        let (tx, rx) = std::sync::mpsc::sync_channel(100);
        let options =
            ScanOptions { progress: xfer::progress::ProgressSink::new(Arc::new(tx)), ..ScanOptions::default() };
        let scanned = scan(&d.src, previous, options).unwrap();
        (scanned, rx.try_iter().collect::<Vec<_>>())
    };
    let (first, events) = collect(&HashMap::new());
    assert_eq!(events.len(), 10);
    let total: u64 = (0..10).map(|i| 1000 + i).sum();
    assert_eq!(events[9], xfer::progress::Event::Scanning { files: 10, bytes: total, bytes_read: total });
    let (_, again) = collect(&first.records);
    assert_eq!(again.last(), Some(&xfer::progress::Event::Scanning { files: 10, bytes: total, bytes_read: 0 }));
}

#[test]
fn scan_quick_check_skips_unchanged_files() {
    let d = dirs();
    for i in 0..20 {
        fs::write(d.src.join(format!("f{i}")), seeded(10_000, i)).unwrap();
    }
    let first = scan(&d.src, &HashMap::new(), ScanOptions::default()).unwrap();
    assert_eq!(first.files_read, 20);
    fs::write(d.src.join("f3"), b"changed").unwrap();
    let second = scan(&d.src, &first.records, ScanOptions::default()).unwrap();
    assert_eq!(second.files_read, 1);
    let forced = scan(&d.src, &first.records, ScanOptions { checksum: true, ..ScanOptions::default() }).unwrap();
    assert_eq!(forced.files_read, 20);
    let entry = second.manifest.get(&rel(b"f3")).unwrap();
    assert!(matches!(&entry.kind, EntryKind::File(f) if f.size == 7));
}

#[test]
fn push_sends_a_repeated_chunk_once() {
    let d = dirs();
    // Runs of zeros cut into identical maximum-size chunks.
    let mut data = seeded(100_000, 3);
    data.extend(std::iter::repeat_n(0u8, 4 << 20));
    data.extend(seeded(100_000, 4));
    fs::write(d.src.join("image"), &data).unwrap();
    let stats = push(&d);
    assert_eq!(fs::read(d.dest.join("image")).unwrap(), data);
    let digest = xfer::chunk::digest_bytes(&data);
    let distinct: std::collections::HashSet<_> = digest.chunks.iter().map(|c| c.id).collect();
    assert!(distinct.len() < digest.chunks.len(), "the test needs repeated chunks");
    assert_eq!(stats.chunks_sent, distinct.len() as u64);
}

/// Two files in flight at once, their chunks stored in reverse and
/// interleaved order, as a wire session may deliver them.
#[test]
fn receiving_accepts_chunks_in_any_order() {
    let tmp = TempDir::new().unwrap();
    let (dest, state_path) = (tmp.path().join("dest"), tmp.path().join("state.redb"));
    let mut store = MirrorStore::open(&dest, &state_path).unwrap();
    store.refresh(false).unwrap();
    let files: Vec<(RelPath, Vec<u8>)> = vec![(rel(b"a"), seeded(300_000, 1)), (rel(b"b"), seeded(200_000, 2))];
    let meta = crate::util::meta(0o640, 12345);
    let mut encoder = Encoder::new(Compression::Auto).unwrap();
    let mut rx = store.receive();
    let mut pending = Vec::new();
    for (n, (path, data)) in files.iter().enumerate() {
        let digest = xfer::chunk::digest_bytes(data);
        for need in rx.begin_file(n as u32, path, &meta, &digest).unwrap() {
            let bytes = &data[need.offset as usize..need.offset as usize + need.chunk.len as usize];
            pending.push((n as u32, need.need, encoder.encode(bytes)));
        }
    }
    assert_eq!(rx.files_in_flight(), 2);
    pending.reverse();
    pending.sort_by_key(|(_, need, _)| *need % 2);
    for (file, need, encoded) in &pending {
        assert!(matches!(rx.put_chunk(*file, *need, encoded, false).unwrap(), xfer::fs::store::Put::Stored(_)));
    }
    // A chunk for a file that was never announced is refused.
    assert!(rx.put_chunk(9, 0, &pending[0].2, false).is_err());
    rx.complete_file(0).unwrap();
    rx.complete_file(1).unwrap();
    let report = rx.finish(true).unwrap();
    assert_eq!(report.files_written, 2);
    for (path, data) in &files {
        assert_eq!(&fs::read(path.to_path(&dest)).unwrap(), data);
    }
}

/// Two files in flight that share content: the shared chunks are asked for
/// once, and the second file gets them when they reach the first; if the
/// first is abandoned before they arrive, the second asks for them itself.
#[test]
fn receiving_shares_chunks_between_files_in_flight() {
    use xfer::fs::store::Put;
    for abandon_first in [false, true] {
        let tmp = TempDir::new().unwrap();
        let (dest, state_path) = (tmp.path().join("dest"), tmp.path().join("state.redb"));
        let mut store = MirrorStore::open(&dest, &state_path).unwrap();
        store.refresh(false).unwrap();
        let shared = seeded(300_000, 1);
        let mut second = seeded(100_000, 2);
        second.extend_from_slice(&shared);
        let meta = crate::util::meta(0o640, 12345);
        let mut encoder = Encoder::new(Compression::Auto).unwrap();
        let mut rx = store.receive();
        let (first_digest, second_digest) = (xfer::chunk::digest_bytes(&shared), xfer::chunk::digest_bytes(&second));
        let first_needs = rx.begin_file(0, &rel(b"a"), &meta, &first_digest).unwrap();
        let second_needs = rx.begin_file(1, &rel(b"b"), &meta, &second_digest).unwrap();
        let common = second_digest.chunks.iter().filter(|c| first_digest.chunks.contains(c)).count();
        assert!(common >= 2, "the test needs shared chunks");
        assert_eq!(second_needs.len(), second_digest.chunks.len() - common, "shared chunks asked twice");
        let encode = |encoder: &mut Encoder, data: &[u8], need: &xfer::fs::store::NeedInfo| {
            encoder.encode(&data[need.offset as usize..need.offset as usize + need.chunk.len as usize])
        };
        let mut more = Vec::new();
        if abandon_first {
            more = rx.abandon_file(0, &xfer::Error::UnknownTransfer { file: 0, need: 0 }.to_string());
            assert_eq!(more.len(), common, "orphaned needs are handed back");
        } else {
            let mut ready = Vec::new();
            for need in &first_needs {
                if let Put::Stored(also) =
                    rx.put_chunk(0, need.need, &encode(&mut encoder, &shared, need), false).unwrap()
                {
                    ready.extend(also);
                }
            }
            assert!(ready.is_empty(), "the second file still lacks its own chunks");
            rx.complete_file(0).unwrap();
        }
        for need in &second_needs {
            rx.put_chunk(1, need.need, &encode(&mut encoder, &second, need), false).unwrap();
        }
        for (file, need) in &more {
            assert_eq!(*file, 1);
            rx.put_chunk(1, need.need, &encode(&mut encoder, &second, need), false).unwrap();
        }
        assert!(rx.file_ready(1));
        rx.complete_file(1).unwrap();
        rx.finish(true).unwrap();
        assert_eq!(fs::read(dest.join("b")).unwrap(), second);
        assert_eq!(fs::read(dest.join("a")).is_ok(), !abandon_first);
    }
}

#[test]
fn store_is_exclusive_while_open() {
    let tmp = TempDir::new().unwrap();
    let (dest, state) = (tmp.path().join("dest"), tmp.path().join("state.redb"));
    let first = MirrorStore::open(&dest, &state).unwrap();
    let second = MirrorStore::open(&dest, &state).err().expect("a second open must fail");
    assert!(second.is_busy(), "{second}");
    drop(first);
    assert!(MirrorStore::open(&dest, &state).is_ok(), "the lock goes with its holder");
}

/// Lays out a source with excluded entries (`target/`, `*.log` on the
/// command line, `secret.txt` in `.xferignore`) and a destination that
/// already holds an excluded `keep.log` and a stale file; returns the filter
/// a caller builds from them.
pub(crate) fn exclusion_scenario(src: &Path, dest: &Path) -> Filter {
    fs::create_dir_all(src.join("target/debug")).unwrap();
    fs::create_dir_all(src.join("sub")).unwrap();
    for (path, content) in [
        ("target/debug/app", "binary"),
        ("a.log", "log"),
        ("sub/b.log", "log"),
        (".xferignore", "# local secrets\nsecret.txt\n"),
        ("secret.txt", "password"),
        ("sub/secret.txt", "password"),
        ("keep.txt", "kept"),
        ("sub/c.txt", "kept"),
        ("keep.log", "the source's keep.log, excluded"),
    ] {
        fs::write(src.join(path), content).unwrap();
    }
    fs::create_dir_all(dest).unwrap();
    fs::write(dest.join("keep.log"), "the destination's own").unwrap();
    fs::write(dest.join("stale.txt"), "not in the source").unwrap();
    let mut filter = xfer::fs::ignore::with_root_ignore(src).unwrap();
    filter.add_pattern("target/", "--exclude").unwrap();
    filter.add_pattern("*.log", "--exclude").unwrap();
    filter
}

/// What the destination of [`exclusion_scenario`] holds after a push with
/// `--delete`: what was not excluded, `.xferignore` included, and its own
/// excluded `keep.log`; the stale file is gone.
pub(crate) fn assert_exclusion_outcome(dest: &Path) {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        for entry in fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            out.push(path.strip_prefix(root).unwrap().display().to_string());
            if path.is_dir() {
                walk(root, &path, out);
            }
        }
    }
    let mut found = Vec::new();
    walk(dest, dest, &mut found);
    found.sort();
    assert_eq!(found, [".xferignore", "keep.log", "keep.txt", "sub", "sub/c.txt"]);
    assert_eq!(fs::read_to_string(dest.join("keep.log")).unwrap(), "the destination's own");
    assert_eq!(fs::read_to_string(dest.join(".xferignore")).unwrap(), "# local secrets\nsecret.txt\n");
}

#[test]
fn push_leaves_out_excluded_entries_and_keeps_them_on_the_destination() {
    let d = dirs();
    let filter = Arc::new(exclusion_scenario(&d.src, &d.dest));
    let options = PushOptions { filter: Some(filter.clone()), ..options(&d) };
    let stats = push_local(&d.src, &d.dest, &options).unwrap();
    assert_exclusion_outcome(&d.dest);
    assert!(stats.skipped.is_empty(), "excluded entries are not reported as skipped: {:?}", stats.skipped);
    assert_eq!((stats.files_scanned, stats.entries_deleted), (3, 1));

    // The scan itself never lists what is excluded.
    let scanned =
        scan(&d.src, &HashMap::new(), ScanOptions { filter: Some(filter), ..ScanOptions::default() }).unwrap();
    let listed: Vec<String> = scanned.manifest.entries().iter().map(|e| e.path.to_string()).collect();
    assert_eq!(listed, [".xferignore", "keep.txt", "sub", "sub/c.txt"]);

    // Again: nothing to do, and `keep.log` still survives `--delete`.
    let again = push_local(&d.src, &d.dest, &options).unwrap();
    assert_eq!((again.files_changed, again.entries_deleted), (0, 0));
    assert_exclusion_outcome(&d.dest);

    // The control: without the filter the excluded files go too, and the
    // source's keep.log replaces the destination's.
    let unfiltered = push(&d);
    assert_eq!(unfiltered.files_changed, 6, "{unfiltered:?}");
    assert_eq!(fs::read_to_string(d.dest.join("keep.log")).unwrap(), "the source's keep.log, excluded");
}
