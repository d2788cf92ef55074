//! Resume inside files: the verified chunks of a file whose transfer was
//! interrupted survive as a partial file, so the next run fetches only
//! the chunks still missing; a partial never shows in a scan (nor so in
//! a pull), is trusted only after re-hashing, and goes when its file is
//! completed or deleted.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use proptest::prelude::*;
use tempfile::TempDir;
use xfer::chunk::{digest_bytes, FileDigest};
use xfer::codec::{Compression, Encoder};
use xfer::fs::scan::{scan, ScanOptions};
use xfer::fs::store::state::StateDb;
use xfer::fs::store::{Destination, MirrorStore, Receiving};
use xfer::hash::ChunkId;
use xfer::manifest::RelPath;
use xfer::plan::Op;

use crate::util::{meta, rel, seeded};

const PARTIAL: &[u8] = b".xfer-partial.";
/// Below this many verified bytes an unfinished file is not kept.
const MIN_KEPT: u64 = 4 << 20;

/// How the first run ends with the file unfinished.
#[derive(Clone, Copy, Debug)]
enum Cut {
    /// The session is dropped (a connection cut, an error).
    Drop,
    /// The session finishes with the file in flight (a closing window).
    Finish,
    /// The file alone is given up (its source changed), then the session ends.
    Abandon,
}

fn partials_in(dir: &Path) -> Vec<PathBuf> {
    use std::os::unix::ffi::OsStrExt;
    fs::read_dir(dir)
        .map(|entries| {
            entries.flatten().filter(|e| e.file_name().as_bytes().starts_with(PARTIAL)).map(|e| e.path()).collect()
        })
        .unwrap_or_default()
}

fn open(dest: &Path, state: &Path) -> MirrorStore {
    let mut store = MirrorStore::open(dest, state).unwrap();
    store.refresh(false).unwrap();
    store
}

/// Puts the needs of `file` that `pick` selects (all if `None`), from
/// `data`; returns the ids put.
fn put_needs(
    rx: &mut Receiving<&mut MirrorStore>,
    file: u32,
    needs: &[xfer::fs::store::NeedInfo],
    data: &[u8],
    pick: impl Fn(usize) -> bool,
) -> HashSet<ChunkId> {
    let mut encoder = Encoder::new(Compression::Raw).unwrap();
    let mut put = HashSet::new();
    for need in needs.iter().filter(|n| pick(n.index)) {
        let start = need.offset as usize;
        let bytes = &data[start..start + need.chunk.len as usize];
        rx.put_chunk(file, need.need, &encoder.encode(bytes), false).unwrap();
        put.insert(need.chunk.id);
    }
    put
}

/// Runs a session that begins `path` with content `data`, puts the needs
/// `pick` selects and ends as `cut` says; returns the ids put.
fn interrupted(
    store: &mut MirrorStore,
    path: &RelPath,
    data: &[u8],
    pick: impl Fn(usize) -> bool,
    cut: Cut,
) -> HashSet<ChunkId> {
    let mut rx = store.receive();
    let needs = rx.begin_file(0, path, &meta(0o644, 7), &digest_bytes(data)).unwrap();
    let put = put_needs(&mut rx, 0, &needs, data, pick);
    match cut {
        Cut::Drop => drop(rx),
        Cut::Finish => {
            rx.finish(false).unwrap();
        }
        Cut::Abandon => {
            rx.abandon_file(0, "the source changed");
            rx.finish(false).unwrap();
        }
    }
    put
}

/// Completes `path` as `data` in a new session; returns the ids it had to
/// fetch.
fn complete(store: &mut MirrorStore, path: &RelPath, data: &[u8]) -> Vec<ChunkId> {
    let mut rx = store.receive();
    let needs = rx.begin_file(0, path, &meta(0o644, 7), &digest_bytes(data)).unwrap();
    let fetched = needs.iter().map(|n| n.chunk.id).collect();
    put_needs(&mut rx, 0, &needs, data, |_| true);
    rx.complete_file(0).unwrap();
    rx.finish(true).unwrap();
    fetched
}

fn distinct(digest: &FileDigest) -> HashSet<ChunkId> {
    digest.chunks.iter().map(|c| c.id).collect()
}

fn bytes_of(digest: &FileDigest, ids: &HashSet<ChunkId>) -> u64 {
    let mut seen = HashSet::new();
    digest.chunks.iter().filter(|c| ids.contains(&c.id) && seen.insert(c.id)).map(|c| u64::from(c.len)).sum()
}

/// v1 with an insertion in the middle and a new tail: shares most chunks.
fn changed(v1: &[u8], seed: u64) -> Vec<u8> {
    let mut v2 = v1.to_vec();
    let mid = v2.len() / 2;
    v2.splice(mid..mid, seeded(5000, seed ^ 0xabc));
    let tail = v2.len() - 70_000;
    v2.truncate(tail);
    v2.extend(seeded(90_000, seed ^ 0xdef));
    v2
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

    /// A resumed run fetches exactly the chunks the first run did not
    /// verify (or, the source changed meanwhile, the new file's chunks the
    /// partial lacks) and yields the file byte for byte; the partial never
    /// shows in a scan and is gone once the file is complete.
    #[test]
    fn resumed_run_fetches_only_missing_chunks(
        size in (3usize << 20)..(9usize << 20),
        seed in any::<u64>(),
        percent in 0u64..=100,
        cut in prop_oneof![Just(Cut::Drop), Just(Cut::Finish), Just(Cut::Abandon)],
        source_changed in any::<bool>(),
    ) {
        let tmp = TempDir::new().unwrap();
        let (dest, state) = (tmp.path().join("dest"), tmp.path().join("state.redb"));
        let path = rel(b"image.bin");
        let v1 = seeded(size, seed);
        let pick = |i: usize| (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15).wrapping_add(seed) % 100 < percent;
        let put = {
            let mut store = open(&dest, &state);
            interrupted(&mut store, &path, &v1, pick, cut)
        };
        let d1 = digest_bytes(&v1);
        let kept = bytes_of(&d1, &put) >= MIN_KEPT;
        prop_assert_eq!(partials_in(&dest).len(), usize::from(kept), "a partial is kept iff it holds enough");
        // Never a tree entry: not for a sender's scan (a pull), nor for the receiver.
        let listed = scan(&dest, &HashMap::new(), ScanOptions::default()).unwrap().manifest;
        prop_assert!(listed.entries().iter().all(|e| !e.path.name().starts_with(PARTIAL)));
        let v2 = if source_changed { changed(&v1, seed) } else { v1.clone() };
        let d2 = digest_bytes(&v2);
        let mut store = open(&dest, &state);
        prop_assert!(store.manifest().entries().iter().all(|e| !e.path.name().starts_with(PARTIAL)));
        let fetched = complete(&mut store, &path, &v2);
        let held: HashSet<ChunkId> = if kept { put } else { HashSet::new() };
        let expected: HashSet<ChunkId> = distinct(&d2).difference(&held).copied().collect();
        prop_assert_eq!(fetched.iter().copied().collect::<HashSet<_>>(), expected);
        prop_assert_eq!(fetched.len(), distinct(&d2).difference(&held).count(), "a chunk fetched twice");
        prop_assert_eq!(fs::read(path.to_path(&dest)).unwrap(), v2);
        prop_assert!(partials_in(&dest).is_empty(), "the partial outlived its file");
        drop(store);
        prop_assert!(StateDb::open(&state).unwrap().partials().unwrap().is_empty());
    }
}

/// A chunk of the partial damaged between runs is fetched again: what a
/// record says is verified is re-hashed before it is trusted.
#[test]
fn resume_rehashes_partial_chunks() {
    let tmp = TempDir::new().unwrap();
    let (dest, state) = (tmp.path().join("dest"), tmp.path().join("state.redb"));
    let path = rel(b"f");
    let data = seeded(6 << 20, 11);
    let digest = digest_bytes(&data);
    let mut store = open(&dest, &state);
    let put = interrupted(&mut store, &path, &data, |_| true, Cut::Drop);
    drop(store);
    assert_eq!(put.len(), distinct(&digest).len());
    let partial = partials_in(&dest).pop().expect("a partial kept");
    // Damage the third chunk in place (same inode: the record still matches).
    let at = u64::from(digest.chunks[0].len + digest.chunks[1].len) + 10;
    let file = fs::OpenOptions::new().write(true).open(&partial).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&file, b"XXXX", at).unwrap();
    drop(file);
    let mut store = open(&dest, &state);
    let fetched = complete(&mut store, &path, &data);
    assert_eq!(fetched, vec![digest.chunks[2].id]);
    assert_eq!(fs::read(dest.join("f")).unwrap(), data);
}

/// A partial replaced by another file's second name is never written
/// through: the other file keeps its bytes.
#[test]
fn resume_never_writes_through_a_replaced_partial() {
    let tmp = TempDir::new().unwrap();
    let (dest, state) = (tmp.path().join("dest"), tmp.path().join("state.redb"));
    let data = seeded(8 << 20, 12);
    let mut store = open(&dest, &state);
    interrupted(&mut store, &rel(b"f"), &data, |i| i % 4 != 0, Cut::Finish);
    drop(store);
    let partial = partials_in(&dest).pop().expect("a partial kept");
    let other = tmp.path().join("other");
    fs::write(&other, seeded(8 << 20, 13)).unwrap();
    fs::remove_file(&partial).unwrap();
    fs::hard_link(&other, &partial).unwrap();
    let mut store = open(&dest, &state);
    complete(&mut store, &rel(b"f"), &data);
    assert_eq!(fs::read(&other).unwrap(), seeded(8 << 20, 13));
    assert_eq!(fs::read(dest.join("f")).unwrap(), data);
}

/// Partials go with their path's delete, and a name in the partials'
/// namespace is never written as an entry.
#[test]
fn partial_goes_with_its_path_and_its_names_are_refused() {
    let tmp = TempDir::new().unwrap();
    let (dest, state) = (tmp.path().join("dest"), tmp.path().join("state.redb"));
    fs::create_dir(&dest).unwrap();
    fs::write(dest.join("f"), b"old").unwrap();
    let mut store = open(&dest, &state);
    interrupted(&mut store, &rel(b"f"), &seeded(6 << 20, 14), |_| true, Cut::Drop);
    assert_eq!(partials_in(&dest).len(), 1);
    let mut rx = store.receive();
    rx.apply_op(&Op::Delete { path: rel(b"f") }).unwrap();
    let refused = rx.begin_file(0, &rel(b".xfer-partial.x"), &meta(0o644, 1), &digest_bytes(b"hi"));
    assert!(matches!(refused, Err(xfer::Error::TempName { .. })), "{refused:?}");
    rx.finish(true).unwrap();
    assert!(partials_in(&dest).is_empty());
    assert!(!dest.join("f").exists());
    drop(store);
    assert!(StateDb::open(&state).unwrap().partials().unwrap().is_empty());
}

/// Partials together stay within four batches' bytes, the oldest dropped
/// first; a lone partial larger than that stays.
#[test]
fn partials_are_bounded() {
    let tmp = TempDir::new().unwrap();
    let (dest, state) = (tmp.path().join("dest"), tmp.path().join("state.redb"));
    let bound = 16u64 << 20;
    let mut store = MirrorStore::open(&dest, &state).unwrap().with_batch_limits(100, bound / 4);
    store.refresh(false).unwrap();
    for (n, name) in [b"a", b"b", b"c"].iter().enumerate() {
        interrupted(&mut store, &rel(*name), &seeded(6 << 20, 20 + n as u64), |_| true, Cut::Finish);
    }
    drop(store);
    let db = StateDb::open(&state).unwrap();
    let records = db.partials().unwrap();
    let total: u64 = records.iter().map(|(_, r)| r.bytes).sum();
    assert!(total <= bound, "{total} bytes of partials over the bound");
    assert_eq!(records.iter().map(|(p, _)| p.clone()).collect::<Vec<_>>(), vec![rel(b"b"), rel(b"c")]);
    assert_eq!(partials_in(&dest).len(), 2);
    drop(db);
    let mut store = MirrorStore::open(&dest, &state).unwrap().with_batch_limits(100, bound / 4);
    store.refresh(false).unwrap();
    interrupted(&mut store, &rel(b"huge"), &seeded(20 << 20, 30), |_| true, Cut::Finish);
    drop(store);
    let records = StateDb::open(&state).unwrap().partials().unwrap();
    assert_eq!(records.iter().map(|(p, _)| p.clone()).collect::<Vec<_>>(), vec![rel(b"huge")]);
}

/// The state directory's database of the destination a local push wrote.
fn dest_state(state_dir: &Path) -> PathBuf {
    let mut found = Vec::new();
    let mut stack = vec![state_dir.join("dests")];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "redb") {
                found.push(path);
            }
        }
    }
    assert_eq!(found.len(), 1, "one destination database: {found:?}");
    found.remove(0)
}

/// End to end: a local push of a 64 MiB random file killed (`kill -9` at
/// a chunk write) after about 60% of its chunks; the next push sends only
/// what the last checkpoint did not hold.
#[test]
fn killed_push_resumes_inside_the_file() {
    let tmp = TempDir::new().unwrap();
    let (src, dest, state_dir) = (tmp.path().join("src"), tmp.path().join("dest"), tmp.path().join("state"));
    fs::create_dir(&src).unwrap();
    let data = seeded(64 << 20, 40);
    fs::write(src.join("big.img"), &data).unwrap();
    let chunks = digest_bytes(&data).chunks.len();
    let push = |crash: Option<String>| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_xfer"));
        cmd.args(["push", "--json", "--state-dir"]).arg(&state_dir).arg(&src).arg(&dest);
        cmd.env_remove("XFER_CRASH_AT");
        if let Some(at) = crash {
            cmd.env("XFER_CRASH_AT", at);
        }
        cmd.output().unwrap()
    };
    let killed = push(Some(format!("store.chunk:{}", chunks * 6 / 10)));
    assert!(!killed.status.success(), "the push was not killed");
    let record = {
        let db = StateDb::open(&dest_state(&state_dir)).unwrap();
        let mut records = db.partials().unwrap();
        assert_eq!(records.len(), 1, "one partial recorded");
        records.remove(0).1
    };
    assert!(record.bytes >= 32 << 20, "the checkpoints kept only {} bytes", record.bytes);
    let missing = data.len() as u64 - record.bytes;
    let done = push(None);
    assert!(done.status.success(), "{}", String::from_utf8_lossy(&done.stderr));
    let report: serde_json::Value = serde_json::from_slice(&done.stdout).unwrap();
    let sent = report["bytes_sent"].as_u64().unwrap();
    eprintln!(
        "killed after {} of {} bytes were checkpointed; re-push sent {sent} for {missing} missing",
        record.bytes,
        data.len()
    );
    assert!(sent <= missing + missing / 20, "sent {sent} bytes for {missing} missing");
    assert_eq!(fs::read(dest.join("big.img")).unwrap(), data);
    assert!(partials_in(&dest).is_empty());
}
