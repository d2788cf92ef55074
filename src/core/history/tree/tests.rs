use std::collections::{HashMap, HashSet};

use proptest::prelude::*;

use super::*;
use crate::chunk::digest_bytes;
use crate::manifest::{Mtime, Xattr};

type Blobs = HashMap<ChunkId, Vec<u8>>;

fn store(manifest: &Manifest, target: usize) -> (ChunkId, TreeStats, Blobs) {
    let mut blobs = Blobs::new();
    let (root, stats) = build(manifest, target, |id, bytes| {
        assert_eq!(ChunkId::of(&bytes), id);
        blobs.insert(id, bytes);
        Ok::<(), FormatError>(())
    })
    .unwrap();
    (root, stats, blobs)
}

fn getter(blobs: &Blobs) -> impl FnMut(&ChunkId) -> Result<Vec<u8>, FormatError> + '_ {
    |id| blobs.get(id).cloned().ok_or_else(|| malformed("test", "missing blob"))
}

/// A random manifest: nested directories (some empty), files, symlinks,
/// hard links to earlier files, owners and xattrs.
fn manifest_from(ops: &[(u8, u8, u16, u8)]) -> Manifest {
    let mut dirs = vec![RelPath::root()];
    let mut entries: Vec<Entry> = Vec::new();
    for (i, &(parent, kind, seed, flavour)) in ops.iter().enumerate() {
        let parent = dirs[parent as usize % dirs.len()].clone();
        let name = format!("{}{i}", ["a", "B", "z.", "\u{e9}", "a b"][seed as usize % 5]);
        let path = parent.join(name.as_bytes()).unwrap();
        let mut meta = Meta::basic(0o600 + u32::from(flavour % 64), Mtime { secs: i64::from(seed) - 100, nanos: 7 });
        if flavour % 3 == 0 {
            meta.uid = 1000;
            meta.user = b"alice".to_vec();
            meta.xattrs = vec![Xattr { name: b"user.k".to_vec(), value: vec![flavour; 3] }];
        }
        let kind = match kind % 4 {
            0 => {
                dirs.push(path.clone());
                EntryKind::Dir
            }
            1 | 3 => EntryKind::File(digest_bytes(&crate::fixture::seeded(usize::from(seed) * 40, u64::from(seed)))),
            _ => EntryKind::Symlink { target: format!("../t{seed}").into_bytes() },
        };
        entries.push(Entry { path, meta, kind });
    }
    entries.sort_by(|a, b| a.path.cmp(&b.path));
    // Every fourth file whose earlier neighbour file exists becomes a link to it.
    let mut last_file: Option<(RelPath, FileDigest)> = None;
    for (i, entry) in entries.iter_mut().enumerate() {
        if let EntryKind::File(digest) = &entry.kind {
            match &last_file {
                Some((target, d)) if i % 4 == 3 => {
                    entry.kind = EntryKind::HardLink { target: target.clone(), size: d.size, hash: d.hash };
                }
                _ => last_file = Some((entry.path.clone(), digest.clone())),
            }
        }
    }
    Manifest::new(entries).unwrap()
}

/// What loading `sub` should give, computed from the manifest directly.
fn expected_subtree(manifest: &Manifest, sub: &RelPath) -> Manifest {
    let strip = |p: &RelPath| RelPath::new(&p.as_bytes()[sub.as_bytes().len() + 1..]).unwrap();
    let mut moved: HashMap<RelPath, RelPath> = HashMap::new();
    let mut out = Vec::new();
    for entry in manifest.entries().iter().filter(|e| e.path.is_inside(sub)) {
        let path = strip(&entry.path);
        let kind = match &entry.kind {
            EntryKind::HardLink { target, size, hash } if !target.is_inside(sub) => match moved.get(target) {
                Some(first) => EntryKind::HardLink { target: first.clone(), size: *size, hash: *hash },
                None => {
                    moved.insert(target.clone(), path.clone());
                    manifest.get(target).unwrap().kind.clone()
                }
            },
            EntryKind::HardLink { target, size, hash } => {
                EntryKind::HardLink { target: strip(target), size: *size, hash: *hash }
            }
            other => other.clone(),
        };
        out.push(Entry { path, meta: entry.meta.clone(), kind });
    }
    Manifest::new(out).unwrap()
}

proptest! {
    #[test]
    fn trees_roundtrip_whole_and_in_parts(
        ops in prop::collection::vec((any::<u8>(), any::<u8>(), any::<u16>(), any::<u8>()), 0..60),
        small in any::<bool>(),
    ) {
        let manifest = manifest_from(&ops);
        // A tiny part target cuts every directory into one part per node.
        let target = if small { 1 } else { PART_TARGET };
        let (root, stats, blobs) = store(&manifest, target);
        prop_assert_eq!(load(root, &RelPath::root(), getter(&blobs)).unwrap(), manifest.clone());
        let files = manifest.entries().iter().filter(|e| e.file().is_some()).count() as u64;
        prop_assert_eq!(stats.files, files);
        for entry in manifest.entries() {
            let loaded = load(root, &entry.path, getter(&blobs)).unwrap();
            match &entry.kind {
                EntryKind::Dir => prop_assert_eq!(loaded, expected_subtree(&manifest, &entry.path)),
                kind => {
                    let single = &loaded.entries()[0];
                    prop_assert_eq!(loaded.len(), 1);
                    prop_assert_eq!(single.path.as_bytes(), entry.path.name());
                    prop_assert_eq!(&single.meta, &entry.meta);
                    match kind {
                        EntryKind::HardLink { target, .. } => {
                            prop_assert_eq!(&single.kind, &manifest.get(target).unwrap().kind)
                        }
                        other => prop_assert_eq!(&single.kind, other),
                    }
                }
            }
        }
        // Every blob the tree was stored as is referenced, and nothing else.
        let (mut trees, mut referenced_blobs) = (HashSet::new(), HashSet::new());
        referenced(root, &mut trees, &mut referenced_blobs, getter(&blobs)).unwrap();
        let chunk_ids: HashSet<ChunkId> =
            manifest.entries().iter().filter_map(|e| e.file()).flat_map(|d| d.chunks.iter().map(|c| c.id)).collect();
        let tree_ids: HashSet<ChunkId> = blobs.keys().copied().collect();
        prop_assert_eq!(referenced_blobs, &tree_ids | &chunk_ids);
    }
}

#[test]
fn unchanged_directories_keep_their_blob() {
    let ops: Vec<_> = (0..40u8).map(|i| (i / 3, i % 4, u16::from(i) * 7, i)).collect();
    let before = manifest_from(&ops);
    let mut entries = before.entries().to_vec();
    let last_file = entries.iter().rposition(|e| matches!(e.kind, EntryKind::File(_))).unwrap();
    entries[last_file].kind = EntryKind::File(digest_bytes(b"changed"));
    let changed_path = entries[last_file].path.clone();
    let after = Manifest::new(entries).unwrap();
    let (_, _, old) = store(&before, PART_TARGET);
    let (_, _, new) = store(&after, PART_TARGET);
    let fresh: Vec<_> = new.keys().filter(|id| !old.contains_key(id)).collect();
    // Only the changed file's directory and those above it are new blobs.
    assert_eq!(fresh.len(), changed_path.depth(), "{changed_path}");
}

#[test]
fn big_directories_are_cut_into_bounded_parts() {
    let entries: Vec<Entry> = (0..3000)
        .map(|i| Entry {
            path: RelPath::new(format!("file-{i:05}")).unwrap(),
            meta: Meta::default(),
            kind: EntryKind::Symlink { target: vec![b'x'; 50] },
        })
        .collect();
    let manifest = Manifest::new(entries).unwrap();
    let (root, _, blobs) = store(&manifest, 16 << 10);
    assert!(blobs.len() > 5);
    assert!(blobs.values().all(|b| b.len() <= 16 << 10));
    assert_eq!(blobs[&root][0], PARTS);
    assert_eq!(load(root, &RelPath::root(), getter(&blobs)).unwrap(), manifest);
}

#[test]
fn missing_paths_and_damaged_blobs_are_errors() {
    let manifest = manifest_from(&[(0, 0, 1, 1), (1, 1, 2, 2)]);
    let (root, _, mut blobs) = store(&manifest, PART_TARGET);
    let file = manifest.entries()[1].path.clone();
    assert!(matches!(load(root, &RelPath::new("nope").unwrap(), getter(&blobs)), Err(FormatError::NotFound(_))));
    assert!(matches!(load(root, &file.join(b"under").unwrap(), getter(&blobs)), Err(FormatError::NotDir(_))));
    let root_bytes = blobs.get_mut(&root).unwrap();
    root_bytes[3] ^= 1;
    assert!(load(root, &RelPath::root(), getter(&blobs)).is_err());
}
