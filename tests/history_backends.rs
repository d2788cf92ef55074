//! The history store on every place it can live: the same test bodies run
//! on a local directory (writer locks), on `memory:` and `file://` object
//! stores (time-based prune safety), and, as ignored `garage_*` tests, on
//! an S3 bucket (`eval "$(scripts/garage.sh start)"` sets XFER_TEST_BUCKET
//! and the AWS_* variables). Plus what only an object store has: the prune
//! grace, stale writers, request counts, and a model test on `memory:`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use xfer::fs::history::{History, StoreUrl};

use crate::history_store::{assert_restores, info, op, run_history_ops, Tree};

/// Where one test's store lives; the temporary directory goes with it.
struct Store {
    url: String,
    _tmp: Option<tempfile::TempDir>,
}

fn unique() -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    format!("{}-{nanos}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

impl Store {
    fn dir() -> Store {
        let tmp = tempfile::tempdir().unwrap();
        Store { url: tmp.path().join("history").to_str().unwrap().to_string(), _tmp: Some(tmp) }
    }

    fn memory() -> Store {
        Store { url: format!("memory:{}", unique()), _tmp: None }
    }

    fn file() -> Store {
        let tmp = tempfile::tempdir().unwrap();
        Store { url: format!("file://{}/history", tmp.path().display()), _tmp: Some(tmp) }
    }

    /// A fresh prefix in the test bucket, or `None` (with a message) when
    /// no bucket is set up.
    fn garage() -> Option<Store> {
        let Ok(bucket) = std::env::var("XFER_TEST_BUCKET") else {
            eprintln!("skipped: XFER_TEST_BUCKET is unset; run eval \"$(scripts/garage.sh start)\" first");
            return None;
        };
        Some(Store { url: format!("s3://{bucket}/test-{}", unique()), _tmp: None })
    }

    /// Opens the store; on an object store with no prune grace, so that
    /// a second prune deletes what the first doomed (as on a local store
    /// with no other writer).
    fn open(&self) -> History {
        let mut history = History::open_url(&self.url).unwrap();
        history.set_prune_grace(Duration::ZERO);
        history
    }
}

/// Records `n` snapshots of disjoint data, one pack each; returns them
/// with their trees and each one's pack bytes.
fn disjoint_snapshots(history: &mut History, n: usize) -> Vec<(xfer::fs::history::SnapshotRecord, Tree, u64)> {
    (0..n)
        .map(|i| {
            let before = history.pack_bytes().unwrap();
            let tree = Tree::new(2, 3, 40_000, |d, f| (i * 1000 + d * 10 + f) as u64);
            tree.store_in(history);
            let record = history.record_snapshot(&tree.manifest, &info("/site", 1000 + i as u64)).unwrap();
            (record, tree, history.pack_bytes().unwrap() - before)
        })
        .collect()
}

fn roundtrip(store: &Store) {
    let tree = Tree::new(3, 4, 20_000, |d, f| (d * 100 + f) as u64);
    let mut history = store.open();
    tree.store_in(&mut history);
    let (id, bytes) = &tree.chunks()[0];
    assert_eq!(history.read_chunk(id).unwrap().as_deref(), Some(&bytes[..]), "a buffered chunk reads back");
    let first = history.record_snapshot(&tree.manifest, &info("/site", 1_714_570_205)).unwrap();
    let changed = Tree::new(3, 4, 20_000, |d, f| (d * 100 + f + 1000 * usize::from(d == 2)) as u64);
    changed.store_in(&mut history);
    let second = history.record_snapshot(&changed.manifest, &info("/site", 1_714_570_300)).unwrap();
    drop(history);

    let history = store.open();
    assert_eq!(history.snapshots().unwrap(), vec![first.clone(), second.clone()]);
    for (id, bytes) in tree.chunks().iter().chain(&changed.chunks()) {
        assert_eq!(history.read_chunk(id).unwrap().as_deref(), Some(&bytes[..]));
    }
    assert_restores(&history, &first, &tree);
    assert_restores(&history, &second, &changed);
    assert_eq!(history.find("/site", "latest").unwrap(), second);
    assert_eq!(history.find("/site", &first.id[..8]).unwrap(), first);
}

/// The same tree again writes nothing but its snapshot record: one PUT,
/// and reopening costs one listing and one read per index file.
fn unchanged_costs_one_put(store: &Store) {
    let tree = Tree::new(4, 5, 30_000, |d, f| (d * 100 + f) as u64);
    let mut history = store.open();
    tree.store_in(&mut history);
    history.record_snapshot(&tree.manifest, &info("/site", 1000)).unwrap();
    let bytes = history.pack_bytes().unwrap();
    let before = history.requests();
    tree.store_in(&mut history);
    history.record_snapshot(&tree.manifest, &info("/site", 2000)).unwrap();
    let after = history.requests();
    assert_eq!(after.puts - before.puts, 1, "{before:?} -> {after:?}");
    assert_eq!((after.gets, after.deletes), (before.gets, before.deletes));
    assert_eq!(history.pack_bytes().unwrap(), bytes);
    drop(history);

    let history = store.open();
    let opened = history.requests();
    // The config, then the index listing and its one file (the chunks and
    // tree blobs went out in one pack).
    assert_eq!((opened.puts, opened.lists, opened.gets), (0, 1, 2), "{opened:?}");
    assert_eq!(history.snapshots().unwrap().len(), 2);
    let listed = history.requests();
    history.snapshots().unwrap();
    let again = history.requests();
    assert_eq!(again.gets, listed.gets, "snapshot records are read once");
}

/// A snapshot of 1,000 files of 64 KiB with 1% of them changed costs one
/// pack, one index file and one record: three PUTs, no GET. Prints them.
fn a_delta_costs_three_puts(store: &Store) {
    let before = Tree::new(20, 50, 65_536, |d, f| (d * 1000 + f) as u64);
    let after =
        Tree::new(20, 50, 65_536, |d, f| (d * 1000 + f + if f % 10 == 0 && d < 2 { 500_000 } else { 0 }) as u64);
    let mut history = store.open();
    before.store_in(&mut history);
    history.record_snapshot(&before.manifest, &info("/site", 1000)).unwrap();
    let start = history.requests();
    let clock = std::time::Instant::now();
    after.store_in(&mut history);
    history.record_snapshot(&after.manifest, &info("/site", 2000)).unwrap();
    let end = history.requests();
    eprintln!(
        "{}: delta snapshot (10 of 1,000 files changed): {} PUTs, {} bytes put, {} GETs, {:?}",
        store.url,
        end.puts - start.puts,
        end.bytes_put - start.bytes_put,
        end.gets - start.gets,
        clock.elapsed()
    );
    assert_eq!((end.puts - start.puts, end.gets - start.gets), (3, 0), "{start:?} -> {end:?}");
}

fn prune_frees_in_two_phases(store: &Store) {
    let mut history = store.open();
    let snaps = disjoint_snapshots(&mut history, 6);
    let before = history.pack_bytes().unwrap();
    let forgotten: Vec<String> = snaps.iter().step_by(2).map(|(r, _, _)| r.id.clone()).collect();
    let only_theirs: u64 = snaps.iter().step_by(2).map(|(_, _, bytes)| bytes).sum();
    assert!(history.forget(&["ffff0000".to_string()]).is_err(), "an unknown id is refused");
    history.forget(&forgotten).unwrap();
    assert_eq!(history.snapshots().unwrap().len(), 3);
    let first = history.prune().unwrap();
    assert_eq!((first.packs_doomed, first.packs_deleted), (3, 0));
    assert_eq!(history.pack_bytes().unwrap(), before);
    drop(history);
    let mut history = store.open();
    let second = history.prune().unwrap();
    assert_eq!((second.packs_deleted, second.packs_reinstated, second.bytes_freed), (3, 0, only_theirs));
    assert_eq!(history.pack_bytes().unwrap(), before - only_theirs);
    for (record, tree, _) in snaps.iter().skip(1).step_by(2) {
        assert_restores(&history, record, tree);
    }
    let third = history.prune().unwrap();
    assert_eq!((third.packs_doomed, third.packs_deleted, third.packs_repacked), (0, 0, 0));
}

fn doomed_pack_reinstated(store: &Store) {
    let mut pruner = store.open();
    let snaps = disjoint_snapshots(&mut pruner, 2);
    // A writer opened before the prune holds the first snapshot's blobs in its index.
    let mut writer = store.open();
    pruner.forget(&[snaps[0].0.id.clone()]).unwrap();
    assert_eq!(pruner.prune().unwrap().packs_doomed, 1);
    let bytes = pruner.pack_bytes().unwrap();
    snaps[0].1.store_in(&mut writer);
    let again = writer.record_snapshot(&snaps[0].1.manifest, &info("/site", 9000)).unwrap();
    assert_eq!(pruner.pack_bytes().unwrap(), bytes, "the writer wrote no new pack");
    drop(writer);
    // Restorable at once, from the doomed pack, not only once a later
    // prune has put it back.
    assert_restores(&store.open(), &again, &snaps[0].1);
    let report = pruner.prune().unwrap();
    assert_eq!((report.packs_reinstated, report.packs_deleted), (1, 0));
    drop(pruner);
    let history = store.open();
    assert_restores(&history, &again, &snaps[0].1);
    assert_restores(&history, &snaps[1].0, &snaps[1].1);
}

fn repacks(store: &Store) {
    let mut history = store.open();
    history.set_min_repack_gain(10_000);
    let small = Tree::new(1, 2, 20_000, |_, f| f as u64 + 1);
    let big = Tree::new(2, 5, 40_000, |d, f| (d * 10 + f) as u64 + 100);
    small.store_in(&mut history);
    big.store_in(&mut history);
    let keep = history.record_snapshot(&small.manifest, &info("/site", 100)).unwrap();
    let gone = history.record_snapshot(&big.manifest, &info("/site", 200)).unwrap();
    let before = history.pack_bytes().unwrap();
    history.forget(&[gone.id]).unwrap();
    assert_eq!(history.prune().unwrap().packs_repacked, 1);
    assert!(history.prune().unwrap().packs_deleted >= 1);
    let after = history.pack_bytes().unwrap();
    assert!(after < before / 4, "{after} of {before} left");
    drop(history);
    assert_restores(&store.open(), &keep, &small);
}

/// A writer indexes its pack before it records the snapshot that uses
/// it: a prune in between leaves the pack in the index, so the snapshot
/// restores at once (not only after a later prune puts the pack back).
fn prune_between_a_writers_pack_and_its_snapshot(store: &Store) {
    let tree = Tree::new(2, 3, 30_000, |d, f| (d * 10 + f) as u64 + 50);
    let mut writer = store.open();
    writer.set_prune_grace(Duration::from_secs(3600));
    tree.store_in(&mut writer);
    writer.flush().unwrap();
    let mut pruner = store.open();
    pruner.set_prune_grace(Duration::from_secs(3600));
    let report = pruner.prune().unwrap();
    assert_eq!((report.packs_doomed, report.packs_repacked), (0, 0), "{report:?}");
    let record = writer.record_snapshot(&tree.manifest, &info("/site", 1)).unwrap();
    drop((writer, pruner));
    assert_restores(&store.open(), &record, &tree);
}

macro_rules! on_backend {
    ($module:ident, $store:expr) => {
        mod $module {
            #[test]
            fn roundtrip() {
                super::roundtrip(&$store);
            }
            #[test]
            fn unchanged_costs_one_put() {
                super::unchanged_costs_one_put(&$store);
            }
            #[test]
            fn a_delta_costs_three_puts() {
                super::a_delta_costs_three_puts(&$store);
            }
            #[test]
            fn prune_frees_in_two_phases() {
                super::prune_frees_in_two_phases(&$store);
            }
            #[test]
            fn doomed_pack_reinstated() {
                super::doomed_pack_reinstated(&$store);
            }
            #[test]
            fn repacks() {
                super::repacks(&$store);
            }
            #[test]
            fn prune_between_a_writers_pack_and_its_snapshot() {
                super::prune_between_a_writers_pack_and_its_snapshot(&$store);
            }
        }
    };
}

on_backend!(dir, super::Store::dir());
on_backend!(memory, super::Store::memory());
on_backend!(file, super::Store::file());

/// Runs `body` on a fresh prefix of the test bucket, if there is one.
fn on_garage(body: fn(&Store)) {
    if let Some(store) = Store::garage() {
        body(&store);
    }
}

#[test]
#[ignore = "needs a Garage cluster: eval \"$(scripts/garage.sh start)\""]
fn garage_roundtrip() {
    on_garage(roundtrip);
}

#[test]
#[ignore = "needs a Garage cluster: eval \"$(scripts/garage.sh start)\""]
fn garage_unchanged_costs_one_put() {
    on_garage(unchanged_costs_one_put);
}

#[test]
#[ignore = "needs a Garage cluster: eval \"$(scripts/garage.sh start)\""]
fn garage_a_delta_costs_three_puts() {
    on_garage(a_delta_costs_three_puts);
}

#[test]
#[ignore = "needs a Garage cluster: eval \"$(scripts/garage.sh start)\""]
fn garage_prune_frees_in_two_phases() {
    on_garage(prune_frees_in_two_phases);
}

#[test]
#[ignore = "needs a Garage cluster: eval \"$(scripts/garage.sh start)\""]
fn garage_doomed_pack_reinstated() {
    on_garage(doomed_pack_reinstated);
}

#[test]
#[ignore = "needs a Garage cluster: eval \"$(scripts/garage.sh start)\""]
fn garage_repacks() {
    on_garage(repacks);
}

#[test]
#[ignore = "needs a Garage cluster: eval \"$(scripts/garage.sh start)\""]
fn garage_prune_between_a_writers_pack_and_its_snapshot() {
    on_garage(prune_between_a_writers_pack_and_its_snapshot);
}

#[test]
#[ignore = "needs a Garage cluster: eval \"$(scripts/garage.sh start)\""]
fn garage_prune_waits_for_the_grace() {
    on_garage(prune_waits_for_the_grace);
}

#[test]
fn a_bad_store_url_says_what_is_accepted() {
    for bad in ["gs://bucket/p", "s3:///nobucket", "file://relative", "history"] {
        let err = History::open_url(bad).unwrap_err().to_string();
        assert!(err.contains("s3://BUCKET/PREFIX") && err.contains("file:///"), "{bad}: {err}");
    }
    assert_eq!(StoreUrl::parse("s3://b/site/x").unwrap(), StoreUrl::S3 { bucket: "b".into(), prefix: "site/x".into() });
}

const GRACE: Duration = Duration::from_millis(1500);

/// A doomed pack stays until its doom record is older than the grace,
/// then goes.
fn prune_waits_for_the_grace(store: &Store) {
    let mut history = store.open();
    let snaps = disjoint_snapshots(&mut history, 2);
    history.set_prune_grace(GRACE);
    history.forget(&[snaps[0].0.id.clone()]).unwrap();
    let before = history.pack_bytes().unwrap();
    // Younger than the grace, the pack might be a writer's that no
    // snapshot references yet: it stays.
    assert_eq!(history.prune().unwrap().packs_doomed, 0, "doomed a young pack");
    std::thread::sleep(GRACE);
    assert_eq!(history.prune().unwrap().packs_doomed, 1);
    let early = history.prune().unwrap();
    assert_eq!(early.packs_deleted, 0, "deleted within the grace");
    assert_eq!(history.pack_bytes().unwrap(), before);
    std::thread::sleep(GRACE + Duration::from_millis(200));
    let late = history.prune().unwrap();
    assert_eq!((late.packs_deleted, late.bytes_freed), (1, snaps[0].2));
    assert_restores(&history, &snaps[1].0, &snaps[1].1);
}

/// A node opens its store once a session: records another session of the
/// process read (or wrote) are not fetched again, and one forgotten since
/// is not shown from the cache.
fn records_are_read_once_per_process(store: &Store) {
    let mut writer = store.open();
    let records: Vec<_> = disjoint_snapshots(&mut writer, 3).into_iter().map(|(r, _, _)| r).collect();
    drop(writer);

    let reader = store.open();
    let before = reader.requests();
    assert_eq!(reader.snapshots().unwrap().len(), 3);
    let after = reader.requests();
    assert_eq!(after.gets, before.gets, "records already read in this process are not fetched again");
    assert_eq!(after.lists, before.lists + 1, "the listing still decides what exists");

    let mut other = store.open();
    other.forget(&[records[0].id.clone()]).unwrap();
    let shown: Vec<String> = reader.snapshots().unwrap().into_iter().map(|r| r.id).collect();
    assert_eq!(shown, vec![records[1].id.clone(), records[2].id.clone()]);
}

/// Index files never change: a session reads only those its process has
/// not read before. After a prune replaces index files, a new session
/// reads the index whole again and sees none of the packs it dropped.
fn index_files_are_read_once_per_process(store: &Store) {
    let mut writer = store.open();
    let snapshots = disjoint_snapshots(&mut writer, 4);
    drop(writer);

    let first = store.open();
    let opened = first.requests();
    assert!(opened.gets > 1, "the first session reads the index files another wrote: {opened:?}");
    let second = store.open();
    let opened = second.requests();
    // The config only: the listing shows no index file this process lacks.
    assert_eq!((opened.lists, opened.gets), (1, 1), "{opened:?}");

    let mut pruner = store.open();
    pruner.forget(&[snapshots[0].0.id.clone(), snapshots[1].0.id.clone()]).unwrap();
    pruner.prune().unwrap();
    pruner.prune().unwrap();
    drop(pruner);
    // The prune read the index again in this process; a session now
    // must not see what it took out.
    let after = store.open();
    for (record, tree, _) in &snapshots[2..] {
        assert_restores(&after, record, tree);
    }
    // The blobs only the forgotten snapshots held are gone from the index.
    for (_, tree, _) in &snapshots[..2] {
        let gone = tree.chunks().iter().all(|(id, _)| !after.contains(id));
        assert!(gone, "a pruned chunk is still indexed");
    }
}

#[test]
fn memory_index_files_are_read_once_per_process() {
    index_files_are_read_once_per_process(&Store::memory());
}

#[test]
fn file_index_files_are_read_once_per_process() {
    index_files_are_read_once_per_process(&Store::file());
}

#[test]
#[ignore = "needs a Garage cluster: eval \"$(scripts/garage.sh start)\""]
fn garage_index_files_are_read_once_per_process() {
    on_garage(index_files_are_read_once_per_process);
}

#[test]
fn memory_records_are_read_once_per_process() {
    records_are_read_once_per_process(&Store::memory());
}

#[test]
fn file_records_are_read_once_per_process() {
    records_are_read_once_per_process(&Store::file());
}

#[test]
fn dir_records_are_read_once_per_process() {
    records_are_read_once_per_process(&Store::dir());
}

#[test]
fn memory_prune_waits_for_the_grace() {
    prune_waits_for_the_grace(&Store::memory());
}

/// A pack another writer has put but not yet indexed (it is between its
/// pack and its index) is not doomed while younger than the grace, and
/// its snapshot restores once the writer finishes; with no grace the
/// same pack would be doomed at once.
#[test]
fn a_young_unindexed_pack_is_left_alone() {
    let tree = Tree::new(2, 3, 30_000, |d, f| (d * 10 + f) as u64 + 7);
    for (grace, doomed) in [(Duration::ZERO, 1), (Duration::from_secs(3600), 0)] {
        let (writer, main) = (Store::file(), Store::file());
        let dir = |s: &Store| std::path::PathBuf::from(s.url.strip_prefix("file://").unwrap());
        let mut w = writer.open();
        tree.store_in(&mut w);
        w.flush().unwrap();
        let mut h = main.open();
        let kept = disjoint_snapshots(&mut h, 1);
        // The writer's pack lands in the main store, its index not yet.
        copy_tree(&dir(&writer).join("packs"), &dir(&main).join("packs"));
        h.set_prune_grace(grace);
        assert_eq!(h.prune().unwrap().packs_doomed, doomed, "grace {grace:?}");
        if doomed == 0 {
            // The writer finishes: its index and its snapshot.
            let record = w.record_snapshot(&tree.manifest, &info("/site", 5000)).unwrap();
            for sub in ["index", "packs", "snapshots"] {
                copy_tree(&dir(&writer).join(sub), &dir(&main).join(sub));
            }
            assert_eq!(h.prune().unwrap().packs_deleted, 0);
            let reopened = main.open();
            assert_restores(&reopened, &record, &tree);
            assert_restores(&reopened, &kept[0].0, &kept[0].1);
        }
    }
}

fn copy_tree(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// A writer open longer than half the grace refuses to record a
/// snapshot: a prune may have deleted packs its index still names.
#[test]
fn a_stale_writer_refuses_to_commit() {
    let store = Store::memory();
    let tree = Tree::new(1, 2, 10_000, |_, f| f as u64 + 3);
    let mut history = store.open();
    history.set_prune_grace(Duration::from_millis(400));
    tree.store_in(&mut history);
    std::thread::sleep(Duration::from_millis(250));
    let err = history.record_snapshot(&tree.manifest, &info("/site", 1)).unwrap_err();
    assert!(matches!(err, xfer::Error::HistoryStale { .. }), "{err}");
    assert!(err.to_string().contains("open it again"), "{err}");
    let mut fresh = store.open();
    fresh.set_prune_grace(Duration::from_millis(400));
    tree.store_in(&mut fresh);
    let record = fresh.record_snapshot(&tree.manifest, &info("/site", 2)).unwrap();
    assert_restores(&fresh, &record, &tree);
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(24))]

    /// On `memory:`, any sequence of records, forgets, prunes and reopens
    /// leaves every listed snapshot restoring exactly; forgetting all and
    /// pruning twice leaves no pack.
    #[test]
    fn memory_any_history_keeps_every_listed_snapshot(ops in proptest::collection::vec(op(), 1..14)) {
        let store = Store::memory();
        run_history_ops(&ops, || store.open())?;
    }
}

/// An object store is usable from inside a task of a single-threaded
/// runtime (its requests run on the store's own runtime, not the
/// caller's), and dropping it there does not panic.
#[tokio::test(flavor = "current_thread")]
async fn an_object_store_works_inside_a_task() {
    let store = Store::memory();
    let tree = Tree::new(1, 3, 10_000, |_, f| f as u64 + 11);
    let mut history = store.open();
    tree.store_in(&mut history);
    let record = history.record_snapshot(&tree.manifest, &info("/site", 1)).unwrap();
    drop(history);
    let history = store.open();
    assert_restores(&history, &record, &tree);
    drop(history);
}
