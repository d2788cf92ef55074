//! A restore streamed from the history store: the snapshot's entries are
//! walked from its tree blobs (never loaded whole) and the plan is sent as
//! it is made. Random snapshot trees (directories, files, symlinks, hard
//! links, empty directories) restored into empty and non-empty
//! destinations come out exact.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::sync::Arc;

use proptest::prelude::*;
use tempfile::TempDir;
use xfer::chunk::digest_bytes;
use xfer::codec::{Compression, Encoder};
use xfer::fs::history::{History, SnapshotInfo, SnapshotTree};
use xfer::fs::store::repo::StoreReader;
use xfer::fs::store::MirrorStore;
use xfer::manifest::{Entry, EntryKind, Manifest, RelPath};
use xfer::plan::{PlanOptions, SourceTree};
use xfer::session::{pair, root_hash, Sender, SenderConfig, WalkedSource};

use crate::util::pair::receiver_into;
use crate::util::{assert_same_tree, materialize, meta, read_tree, remove_subtree, seeded, Model, Node};

/// Paths trees draw from: nested, with names that sort around `/`.
const PATHS: &[&str] = &["a", "a/x", "a/x/z", "a/y", "a.b", "b", "b/x", "b/x/q", "c", "c/e"];

/// What stands at a path: 0 a directory, 1 and 2 files, 3 a symlink, 4 a
/// hard link to an earlier file (a file if there is none).
type Spec = Vec<(usize, u8, u8)>;

fn spec() -> impl Strategy<Value = Spec> {
    prop::collection::vec((0..PATHS.len(), 0u8..5, any::<u8>()), 0..14)
}

/// The tree `spec` describes (later pairs win; every parent a directory)
/// and its files' bytes.
fn tree(spec: &Spec, links: bool) -> (Manifest, BTreeMap<RelPath, Vec<u8>>) {
    let mut kinds: BTreeMap<RelPath, (u8, u8)> = BTreeMap::new();
    for &(n, kind, salt) in spec {
        let path = RelPath::new(PATHS[n]).unwrap();
        if kind != 0 {
            kinds.retain(|p, _| !p.is_inside(&path));
        }
        let mut parent = path.parent();
        while !parent.is_root() {
            kinds.insert(parent.clone(), (0, 0));
            parent = parent.parent();
        }
        kinds.insert(path, (kind, salt));
    }
    let mut entries: Vec<Entry> = Vec::new();
    let mut data = BTreeMap::new();
    for (path, (kind, salt)) in kinds {
        let mtime = 1_600_000_000 + i64::from(salt) * 1000;
        let first_file = entries.iter().find(|e| matches!(e.kind, EntryKind::File(_))).cloned();
        let (entry_meta, kind) = match kind {
            0 => (meta(if salt % 2 == 0 { 0o755 } else { 0o700 }, mtime), EntryKind::Dir),
            3 => (meta(0, mtime), EntryKind::Symlink { target: format!("t{salt}").into_bytes() }),
            4 if links && first_file.is_some() => {
                let target = first_file.expect("checked");
                let EntryKind::File(digest) = &target.kind else { unreachable!() };
                let kind = EntryKind::HardLink { target: target.path.clone(), size: digest.size, hash: digest.hash };
                (target.meta.clone(), kind)
            }
            k => {
                // Now and then a file of several chunks.
                let len =
                    if salt % 7 == 0 { 300_000 + usize::from(salt) } else { usize::from(salt) * 3 + usize::from(k) };
                let bytes = seeded(len, u64::from(salt) << 8 | u64::from(k));
                let digest = digest_bytes(&bytes);
                data.insert(path.clone(), bytes);
                (meta(if salt % 3 == 0 { 0o600 } else { 0o644 }, mtime), EntryKind::File(digest))
            }
        };
        entries.push(Entry { path, meta: entry_meta, kind });
    }
    (Manifest::new(entries).unwrap(), data)
}

/// What a restore of `manifest` must leave: hard links as their target.
fn expected(manifest: &Manifest, data: &BTreeMap<RelPath, Vec<u8>>) -> Model {
    let mut model = Model::new();
    for entry in manifest.entries() {
        let (mode, mtime) = (entry.meta.mode, entry.meta.mtime.secs);
        let node = match &entry.kind {
            EntryKind::Dir => Node::Dir { mode, mtime },
            EntryKind::Symlink { target } => Node::Symlink { target: target.clone(), mtime },
            EntryKind::File(_) => Node::File { data: data[&entry.path].clone(), mode, mtime },
            EntryKind::HardLink { target, .. } => Node::File { data: data[target].clone(), mode, mtime },
        };
        model.insert(entry.path.clone(), node);
    }
    model
}

/// Records `manifest` (chunks from `data`) as a snapshot in a new store.
fn snapshot(tmp: &TempDir, manifest: &Manifest, data: &BTreeMap<RelPath, Vec<u8>>) -> (SnapshotTree, Arc<History>) {
    let mut history = History::open(&tmp.path().join("history")).unwrap();
    for entry in manifest.entries() {
        if let EntryKind::File(digest) = &entry.kind {
            let mut offset = 0usize;
            for chunk in &digest.chunks {
                let bytes = &data[&entry.path][offset..offset + chunk.len as usize];
                history.add_chunk(chunk.id, bytes).unwrap();
                offset += chunk.len as usize;
            }
        }
    }
    history.flush().unwrap();
    let info = SnapshotInfo { tree: "/".into(), client: "xfer:test".into(), ..SnapshotInfo::default() };
    let record = history.record_snapshot(manifest, &info).unwrap();
    let history = Arc::new(history);
    (SnapshotTree::new(Arc::clone(&history), &record, RelPath::root()).unwrap(), history)
}

/// Restores the walked snapshot `tree` into `dest` (with deletes).
fn restore(tmp: &TempDir, tree: SnapshotTree, history: Arc<History>, dest: &std::path::Path) {
    let root = root_hash(&tree).unwrap();
    let encoder = Encoder::new(Compression::Auto).unwrap();
    let mut config = SenderConfig::new(Manifest::default(), StoreReader::new(history), encoder);
    config.walked = Some(WalkedSource { tree: Arc::new(tree), root });
    config.plan = PlanOptions { delete: true, ..Default::default() };
    let mut sender = Sender::new(config);
    let state = tmp.path().join("state.redb");
    let mut receiver = receiver_into(MirrorStore::open(dest, &state).unwrap());
    pair::run(&mut sender, &mut receiver).unwrap();
    assert!(sender.is_finished() && receiver.is_finished(), "the session stalled");
    assert!(sender.ops().is_empty(), "a walked source's plan is never held");
}

/// Every entry of `manifest`, as `tree` walks it: whole, and inside each
/// directory.
fn assert_walks_as(tree: &SnapshotTree, manifest: &Manifest) {
    let walked: Vec<Entry> = tree.entries_in(&RelPath::root()).map(Result::unwrap).collect();
    assert_eq!(walked, manifest.entries());
    for dir in manifest.entries().iter().filter(|e| matches!(e.kind, EntryKind::Dir)) {
        let inside: Vec<Entry> = tree.entries_in(&dir.path).map(Result::unwrap).collect();
        let want: Vec<Entry> = manifest.entries().iter().filter(|e| e.path.is_inside(&dir.path)).cloned().collect();
        assert_eq!(inside, want, "inside {}", dir.path);
    }
    for path in ["nope", "a/nope", "c/e"] {
        let path = RelPath::new(path).unwrap();
        if !manifest.get(&path).is_some_and(|e| matches!(e.kind, EntryKind::Dir)) {
            assert_eq!(tree.entries_in(&path).count(), 0, "{path} is no directory of the snapshot");
        }
    }
    assert_eq!(root_hash(tree).unwrap(), manifest.tree().root(), "the walked root hash is the manifest's");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 40, ..ProptestConfig::default() })]

    /// A streamed restore of a random snapshot into an empty or a
    /// non-empty destination leaves exactly the snapshot, hard links
    /// linked.
    #[test]
    fn a_streamed_restore_is_exact(source in spec(), existing in spec(), dest_kind in 0u8..3) {
        let tmp = TempDir::new().unwrap();
        let (manifest, data) = tree(&source, true);
        let (tree_, history) = snapshot(&tmp, &manifest, &data);
        assert_walks_as(&tree_, &manifest);
        let dest = tmp.path().join("dest");
        fs::create_dir(&dest).unwrap();
        match dest_kind {
            // Empty.
            0 => {}
            // Another tree.
            1 => {
                let (before, before_data) = tree(&existing, false);
                materialize(&expected(&before, &before_data), &dest);
            }
            // The snapshot itself, some of it gone: identical subtrees
            // beside differing ones.
            _ => {
                let mut before = expected(&manifest, &data);
                for &(n, _, _) in &existing {
                    remove_subtree(&mut before, &RelPath::new(PATHS[n]).unwrap());
                }
                materialize(&before, &dest);
            }
        }
        restore(&tmp, tree_, history, &dest);
        assert_same_tree(&read_tree(&dest), &expected(&manifest, &data));
        for entry in manifest.entries() {
            if let EntryKind::HardLink { target, .. } = &entry.kind {
                let ino = |p: &RelPath| fs::symlink_metadata(p.to_path(&dest)).unwrap().ino();
                prop_assert_eq!(ino(&entry.path), ino(target), "{} is not a link of {}", entry.path, target);
            }
        }
    }
}

/// A restore walks its snapshot more than once: the tree blobs a walk
/// read are kept for the next (within the budget), so on a bucket the
/// walks after the first cost no requests; with no budget each costs as
/// much as the first.
#[test]
fn later_walks_of_a_snapshot_read_no_tree_blobs_again() {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    let mut history = History::open_url(&format!("memory:walks-{}-{nanos}", std::process::id())).unwrap();
    let mut entries = Vec::new();
    for d in 0..40 {
        let dir = RelPath::new(format!("d{d:02}")).unwrap();
        entries.push(Entry { path: dir.clone(), meta: meta(0o755, 1), kind: EntryKind::Dir });
        for f in 0..5 {
            let digest = digest_bytes(format!("{d}/{f}").as_bytes());
            let path = RelPath::new(format!("d{d:02}/f{f}")).unwrap();
            entries.push(Entry { path, meta: meta(0o644, 1), kind: EntryKind::File(digest) });
        }
    }
    let manifest = Manifest::new(entries).unwrap();
    let info = SnapshotInfo { tree: "/".into(), client: "xfer:test".into(), ..SnapshotInfo::default() };
    let record = history.record_snapshot(&manifest, &info).unwrap();
    let history = Arc::new(history);
    let walk_gets = |tree: &SnapshotTree| {
        let before = history.requests().gets;
        assert_eq!(tree.entries_in(&RelPath::root()).count(), manifest.len());
        history.requests().gets - before
    };
    let cached = SnapshotTree::new(Arc::clone(&history), &record, RelPath::root()).unwrap();
    let first = walk_gets(&cached);
    assert!(first >= 1, "the first walk read nothing");
    assert_eq!(walk_gets(&cached), 0, "the second walk read tree blobs again");
    let uncached = SnapshotTree::with_cache(Arc::clone(&history), &record, RelPath::root(), 0).unwrap();
    let (once, again) = (walk_gets(&uncached), walk_gets(&uncached));
    assert_eq!(once, again);
    assert!(once >= first);
}
