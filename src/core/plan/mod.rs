//! Delta planning: from the source manifest and what the receiver holds, the
//! operations that turn the receiver's tree into the source's, and the chunks
//! it lacks. Pure functions: no I/O, so they are tested exhaustively.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;

use crate::chunk::{ChunkRef, FileDigest};
use crate::filter::Filter;
use crate::hash::{ChunkId, FileHash};
use crate::manifest::{Entry, EntryKind, Manifest, Meta, RelPath};

mod deletes;
mod list_edit;
mod stream;

pub use deletes::{deleted_entries, DeleteLimit, DeleteRefused, DeleteRule, TRIVIAL_DESTINATION};
pub use list_edit::{apply_list_edit, chunk_list_edit, wire_chunk_list, ListEdit};
pub use stream::{Entries, ManifestSource, OpStream, Pass, Planner, SourceError, SourceTree};

/// What the caller wants beyond making source entries appear.
#[derive(Clone, Debug, Default)]
pub struct PlanOptions {
    /// Delete receiver entries the source does not have (rsync's `--delete`).
    pub delete: bool,
    /// Receiver entries these patterns exclude (and everything inside an
    /// excluded directory) are never deleted, as rsync's excluded files are
    /// without `--delete-excluded`: not as extraneous entries, nor to make
    /// room for a source entry of another kind (that entry is skipped). A
    /// directory holding such entries is kept too. Pass the filter the
    /// source was scanned with.
    pub protect: Option<Arc<Filter>>,
    /// Source entries the sender skipped (unreadable, changing while read,
    /// of an unsupported kind): they exist in the source, so the receiver's
    /// entry at each path and everything below it is its last good backup.
    /// The plan leaves it untouched: never deleted, replaced or written
    /// under, and no directory holding it is deleted or replaced.
    pub skipped: Arc<HashSet<RelPath>>,
}

impl PlanOptions {
    /// Whether `path` is a skipped source entry or lies below one.
    fn is_skipped(&self, path: &RelPath) -> bool {
        under_any(path, &self.skipped)
    }
}

/// Whether `path` or one of its ancestors (the root included) is in `set`.
fn under_any(path: &RelPath, set: &HashSet<RelPath>) -> bool {
    if set.is_empty() {
        return false;
    }
    let mut at = path.clone();
    loop {
        if set.contains(&at) {
            return true;
        }
        if at.is_root() {
            return false;
        }
        at = at.parent();
    }
}

/// One step of a plan, applied in the plan's order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// Remove an entry (a whole subtree for a directory).
    Delete {
        /// The entry to remove.
        path: RelPath,
    },
    /// Create a directory (its mtime is set by a later `SetMeta`).
    Mkdir {
        /// The new directory.
        path: RelPath,
        /// Its mode.
        meta: Meta,
    },
    /// Build a file from chunks and move it into place atomically.
    WriteFile {
        /// Final name.
        path: RelPath,
        /// Mode and mtime to give it.
        meta: Meta,
        /// Content: chunk list and whole-file hash.
        digest: FileDigest,
    },
    /// Create or retarget a symlink atomically.
    Symlink {
        /// Final name.
        path: RelPath,
        /// Raw target.
        target: Vec<u8>,
        /// Its mtime (symlink modes are not settable).
        meta: Meta,
    },
    /// Make `path` another name of the file at `target` (a hard link),
    /// replacing what stands there atomically; only while `target` holds
    /// the content `size` and `hash` name.
    Link {
        /// The new name.
        path: RelPath,
        /// The file's first name, written or checked before.
        target: RelPath,
        /// The target's size.
        size: u64,
        /// The target's whole-file hash.
        hash: FileHash,
    },
    /// Set mode and mtime of an entry whose content is already right.
    SetMeta {
        /// The entry.
        path: RelPath,
        /// The metadata to set.
        meta: Meta,
    },
}

impl Op {
    /// The path the op acts on.
    pub fn path(&self) -> &RelPath {
        match self {
            Op::Delete { path }
            | Op::Mkdir { path, .. }
            | Op::WriteFile { path, .. }
            | Op::Symlink { path, .. }
            | Op::Link { path, .. }
            | Op::SetMeta { path, .. } => path,
        }
    }
}

impl Op {
    /// Whether the op removes the receiver's entry at its path (in `dest`,
    /// the receiver's tree): a delete, or a write that replaces an entry of
    /// the other side of the directory/non-directory divide, whose loss
    /// counts as a delete's.
    pub fn removes(&self, dest: &Manifest) -> bool {
        let is_dir = |path: &RelPath| dest.get(path).map(|e| matches!(e.kind, EntryKind::Dir));
        match self {
            Op::Delete { .. } => true,
            Op::Mkdir { path, .. } => is_dir(path) == Some(false),
            Op::WriteFile { path, .. } | Op::Symlink { path, .. } | Op::Link { path, .. } => is_dir(path) == Some(true),
            Op::SetMeta { .. } => false,
        }
    }
}

/// An entry the plan leaves alone, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Skipped {
    /// The source entry not applied.
    pub path: RelPath,
    /// Why.
    pub reason: &'static str,
}

/// The operations and the chunks the receiver must be sent.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Steps in order: new directories, files and
    /// symlinks, metadata of unchanged content, hard links (after every
    /// file they name, and after the metadata of those), extraneous deletes
    /// (deepest first), then directory metadata (deepest first, after their
    /// content).
    pub ops: Vec<Op>,
    /// Chunks no receiver file holds, each once, in first-use order.
    pub missing: Vec<ChunkRef>,
    /// Source entries that could not be applied without losing receiver data.
    pub skipped: Vec<Skipped>,
}

impl Plan {
    /// Whether the plan changes nothing.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty() && self.skipped.is_empty()
    }

    /// Number of files to (re)build.
    pub fn files_written(&self) -> usize {
        self.ops.iter().filter(|op| matches!(op, Op::WriteFile { .. })).count()
    }
}

impl Plan {
    /// Receiver entries the plan's deletes remove, counting a deleted
    /// directory's whole subtree: what the user would lose, not the number
    /// of delete steps. `dest` is the receiver's tree the plan was made
    /// against.
    pub fn deletions(&self, dest: &Manifest) -> u64 {
        deleted_entries(dest, self.ops.iter().filter(|op| op.removes(dest)).map(Op::path))
    }
}

/// Plans the transfer of `source` onto a receiver whose tree is `dest` and
/// which holds the chunks for which `dest_has` is true (in any file: renamed,
/// moved and copied files need no chunk data).
///
/// The collected form of the streamed plan ([`Planner`]): one walk for the
/// new directories, one for the rest.
pub fn plan(source: &Manifest, dest: &Manifest, dest_has: impl Fn(&ChunkId) -> bool, options: PlanOptions) -> Plan {
    let mut ops = VecDeque::new();
    let mut planner = Planner::new(dest, options, Pass::Mkdirs);
    for pass in [Pass::Mkdirs, Pass::Rest] {
        if pass == Pass::Rest {
            planner.restart(pass);
        }
        for entry in source.entries() {
            planner.feed(entry, dest, &mut ops);
        }
        planner.finish(dest, &mut ops);
    }
    let ops = Vec::from(ops);
    let missing = missing_chunks(&ops, dest_has);
    Plan { ops, missing, skipped: planner.take_skipped() }
}

/// The chunks `writes` need that the receiver lacks, each once.
fn missing_chunks(writes: &[Op], dest_has: impl Fn(&ChunkId) -> bool) -> Vec<ChunkRef> {
    let mut missing = Vec::new();
    let mut queued: HashSet<ChunkId> = HashSet::new();
    for op in writes {
        if let Op::WriteFile { digest, .. } = op {
            for chunk in &digest.chunks {
                if !dest_has(&chunk.id) && queued.insert(chunk.id) {
                    missing.push(*chunk);
                }
            }
        }
    }
    missing
}

/// The op that makes hard link `entry`.
fn link_op(entry: &Entry) -> Option<Op> {
    match &entry.kind {
        EntryKind::HardLink { target, size, hash } => {
            Some(Op::Link { path: entry.path.clone(), target: target.clone(), size: *size, hash: *hash })
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunk::digest_bytes;
    use std::collections::BTreeMap;

    fn file(path: &str) -> Entry {
        Entry {
            path: RelPath::new(path).unwrap(),
            meta: Meta::default(),
            kind: EntryKind::File(digest_bytes(path.as_bytes())),
        }
    }

    fn dir(path: &str) -> Entry {
        Entry { path: RelPath::new(path).unwrap(), meta: Meta::default(), kind: EntryKind::Dir }
    }

    fn paths<'a>(ops: impl Iterator<Item = &'a Op>) -> Vec<String> {
        ops.map(|op| op.path().to_string()).collect()
    }

    /// Paths deleted, sorted (extraneous deletes come deepest first).
    fn deletes(plan: &Plan) -> Vec<String> {
        let mut deleted = paths(plan.ops.iter().filter(|op| matches!(op, Op::Delete { .. })));
        deleted.sort();
        deleted
    }

    #[test]
    fn excluded_receiver_entries_are_not_deleted() {
        let mut filter = Filter::new();
        for pattern in ["*.log", "target/", "build/", "conflict", "!conflict/"] {
            filter.add_pattern(pattern, "--exclude").unwrap();
        }
        // What a scan with this filter yields: `build` and `conflict/` are
        // not excluded as a file and as a directory.
        let source =
            Manifest::new(vec![file("src.rs"), file("build"), dir("conflict"), file("conflict/inner")]).unwrap();
        let dest = Manifest::new(vec![
            file("keep.log"),
            file("old.txt"),
            dir("target"),
            file("target/a"),
            dir("mixed"),
            file("mixed/x.log"),
            file("mixed/y"),
            dir("build"),
            file("build/o"),
            file("conflict"),
            dir("gone"),
            file("gone/z"),
        ])
        .unwrap();

        let protect = Some(Arc::new(filter));
        let plan = plan(&source, &dest, |_| false, PlanOptions { delete: true, protect, ..Default::default() });
        // Unprotected extraneous entries go; `mixed` stays for its `x.log`.
        assert_eq!(deletes(&plan), ["gone", "mixed/y", "old.txt"]);
        assert_eq!(
            paths(plan.ops.iter().filter(|op| !matches!(op, Op::Delete { .. } | Op::SetMeta { .. }))),
            ["src.rs"]
        );
        // Source entries that would replace protected ones are skipped, the
        // directory with its subtree.
        let skipped: Vec<String> = plan.skipped.iter().map(|s| s.path.to_string()).collect();
        assert_eq!(skipped, ["build", "conflict"]);

        // Without protection the same plan removes them all: `build` and
        // `conflict` replaced by their writes (no Delete), the rest deleted.
        let unprotected =
            super::plan(&source, &dest, |_| false, PlanOptions { delete: true, protect: None, ..Default::default() });
        assert_eq!(deletes(&unprotected), ["gone", "keep.log", "mixed", "old.txt", "target"]);
        let mut removed = paths(unprotected.ops.iter().filter(|op| op.removes(&dest)));
        removed.sort();
        assert_eq!(removed, ["build", "conflict", "gone", "keep.log", "mixed", "old.txt", "target"]);
        // All 12 receiver entries, the replaced `build/o` among them.
        assert_eq!(unprotected.deletions(&dest), 12);
        assert!(unprotected.skipped.is_empty());
    }

    /// Paths generated trees draw from: few, so that source and receiver
    /// share paths with entries of every kind, nested.
    const PATHS: &[&str] = &["a", "a/x", "a/x/z", "a/y", "b", "b/x", "c"];

    /// A tree from (path, kind) pairs, later pairs winning: 0 a directory,
    /// 1 and 2 files of two contents, 3 a symlink. Every parent becomes a
    /// directory.
    fn tree(spec: &[(usize, u8)]) -> Manifest {
        let mut kinds: BTreeMap<RelPath, u8> = BTreeMap::new();
        for &(n, kind) in spec {
            let path = RelPath::new(PATHS[n]).unwrap();
            if kind != 0 {
                kinds.retain(|p, _| !p.is_inside(&path));
            }
            let mut parent = path.parent();
            while !parent.is_root() {
                kinds.insert(parent.clone(), 0);
                parent = parent.parent();
            }
            kinds.insert(path, kind);
        }
        let entries = kinds
            .into_iter()
            .map(|(path, kind)| {
                let kind = match kind {
                    0 => EntryKind::Dir,
                    3 => EntryKind::Symlink { target: b"t".to_vec() },
                    k => EntryKind::File(digest_bytes(&[k])),
                };
                Entry { path, meta: Meta::default(), kind }
            })
            .collect();
        Manifest::new(entries).unwrap()
    }

    proptest::proptest! {
        /// Whatever the trees and options, the receiver's entry at or below
        /// a path the sender skipped is never deleted, replaced or written,
        /// nor is a directory above it deleted.
        #[test]
        fn plan_never_touches_what_the_sender_skipped(
            source in proptest::collection::vec((0..PATHS.len(), 0u8..4), 0..8),
            dest in proptest::collection::vec((0..PATHS.len(), 0u8..4), 0..8),
            mask in 0u32..(1 << (PATHS.len() + 1)),
            delete: bool,
            protect: bool,
        ) {
            let (source, dest) = (tree(&source), tree(&dest));
            // The last bit stands for the root (a name that could not be read).
            let mut skipped: HashSet<RelPath> =
                (0..PATHS.len()).filter(|i| mask & (1 << i) != 0).map(|i| RelPath::new(PATHS[i]).unwrap()).collect();
            if mask & (1 << PATHS.len()) != 0 {
                skipped.insert(RelPath::root());
            }
            let protect = protect.then(|| {
                let mut filter = Filter::new();
                filter.add_pattern("y", "--exclude").unwrap();
                Arc::new(filter)
            });
            let options = PlanOptions { delete, protect, skipped: Arc::new(skipped.clone()) };
            let plan = plan(&source, &dest, |_| false, options);
            for op in &plan.ops {
                if let Op::Delete { path } = op {
                    proptest::prop_assert!(!under_any(path, &skipped), "deletes skipped {}", path);
                }
            }
            for kept in dest.entries().iter().filter(|e| under_any(&e.path, &skipped)) {
                for op in &plan.ops {
                    let hit = match op {
                        Op::Delete { path } => kept.path == *path || kept.path.is_inside(path),
                        Op::Mkdir { path, .. }
                        | Op::WriteFile { path, .. }
                        | Op::Symlink { path, .. }
                        | Op::Link { path, .. } => kept.path == *path,
                        Op::SetMeta { .. } => false,
                    };
                    proptest::prop_assert!(!hit, "{:?} touches the kept {}", op, kept.path);
                }
            }
        }
    }

    fn link(path: &str, target: &str) -> Entry {
        let digest = digest_bytes(target.as_bytes());
        Entry {
            path: RelPath::new(path).unwrap(),
            meta: Meta::default(),
            kind: EntryKind::HardLink { target: RelPath::new(target).unwrap(), size: digest.size, hash: digest.hash },
        }
    }

    #[test]
    fn links_follow_their_files_and_are_made_again_when_those_change() {
        let source = Manifest::new(vec![file("a"), dir("d"), link("d/b", "a"), file("z")]).unwrap();
        let fresh = plan(&source, &Manifest::EMPTY, |_| false, PlanOptions::default());
        let order: Vec<String> = paths(fresh.ops.iter().filter(|op| !matches!(op, Op::SetMeta { .. })));
        // The link comes after every file, its target's included.
        assert_eq!(order, ["d", "a", "z", "d/b"]);
        assert!(matches!(&fresh.ops[3], Op::Link { target, .. } if target.as_bytes() == b"a"));
        assert_eq!(fresh.files_written(), 2);

        // Unchanged: nothing to do.
        assert!(plan(&source, &source, |_| false, PlanOptions::default()).is_empty());

        // The target's metadata changes: the link is made again after it,
        // since a receiver gives a file with several names its own copy.
        let mut chmod = source.entries().to_vec();
        chmod[0].meta.mode = 0o600;
        chmod[2].meta.mode = 0o600;
        let chmod = Manifest::new(chmod).unwrap();
        let ops = plan(&chmod, &source, |_| false, PlanOptions::default()).ops;
        let kinds: Vec<(String, &str)> = ops
            .iter()
            .map(|op| {
                let kind = match op {
                    Op::SetMeta { .. } => "meta",
                    Op::Link { .. } => "link",
                    _ => "other",
                };
                (op.path().to_string(), kind)
            })
            .collect();
        assert_eq!(&kinds[..2], [("a".to_string(), "meta"), ("d/b".to_string(), "link")]);

        // A receiver name that is a file of its own becomes a link; a
        // receiver link the source splits off becomes a file.
        let dest = Manifest::new(vec![file("a"), dir("d"), file("d/b"), link("z", "a")]).unwrap();
        let ops = plan(&source, &dest, |_| false, PlanOptions::default()).ops;
        assert!(ops.iter().any(|op| matches!(op, Op::Link { path, .. } if path.as_bytes() == b"d/b")));
        assert!(ops.iter().any(|op| matches!(op, Op::WriteFile { path, .. } if path.as_bytes() == b"z")));
    }
}
