//! Manifests: a deterministic description of a tree (paths, kinds, metadata,
//! chunk lists) with directory-level Merkle hashes for top-down comparison.

use std::cmp::Ordering;
use std::collections::HashMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::chunk::FileDigest;
use crate::hash::{FileHash, TreeHash};
use xfer_protocol::digest::{entry_digest, listing_digest, EntryContent, EntryMeta};

/// Version of the manifest encoding and of the chunking rules behind it
/// (`ChunkParams::for_size`, FastCDC 2020 normalization level 1, BLAKE3 ids).
/// Format 2 added owners, groups, names and xattrs to [`Meta`], and
/// [`EntryKind::HardLink`].
pub const MANIFEST_FORMAT: u32 = 2;

/// A path relative to a tree's root: raw bytes (Unix names need not be UTF-8),
/// `/`-separated, with no empty, `.` or `..` component and no NUL byte.
///
/// Ordered component by component, so a directory's whole subtree sorts right
/// after it and before its next sibling.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "Vec<u8>", into = "Vec<u8>")]
pub struct RelPath(Vec<u8>);

/// Why bytes were refused as a relative path.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("unsafe path {path:?}: {reason}")]
pub struct PathError {
    path: String,
    reason: &'static str,
}

impl RelPath {
    /// The tree's root itself (the empty path); never an entry of a manifest.
    pub fn root() -> Self {
        RelPath(Vec::new())
    }

    /// Validates `bytes` as a relative path.
    ///
    /// # Errors
    /// [`PathError`] for an empty path, an absolute path, an empty, `.` or `..`
    /// component, or a NUL byte: none of them may reach the filesystem.
    pub fn new(bytes: impl Into<Vec<u8>>) -> Result<Self, PathError> {
        let bytes = bytes.into();
        let fail = |reason| Err(PathError { path: String::from_utf8_lossy(&bytes).into_owned(), reason });
        if bytes.is_empty() {
            return fail("empty");
        }
        if bytes.contains(&0) {
            return fail("contains a NUL byte");
        }
        if bytes[0] == b'/' {
            return fail("absolute");
        }
        for component in bytes.split(|&b| b == b'/') {
            match component {
                b"" => return fail("empty component"),
                b"." | b".." => return fail("`.` or `..` component"),
                _ => {}
            }
        }
        Ok(RelPath(bytes))
    }

    /// `self/name`, for a single valid component `name`.
    ///
    /// # Errors
    /// [`PathError`] if `name` is not one safe component.
    pub fn join(&self, name: &[u8]) -> Result<Self, PathError> {
        if name.contains(&b'/') {
            return Err(PathError { path: String::from_utf8_lossy(name).into_owned(), reason: "name contains `/`" });
        }
        if self.0.is_empty() {
            return RelPath::new(name);
        }
        let mut bytes = Vec::with_capacity(self.0.len() + 1 + name.len());
        bytes.extend_from_slice(&self.0);
        bytes.push(b'/');
        bytes.extend_from_slice(name);
        RelPath::new(bytes)
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Whether this is the root (empty) path.
    pub fn is_root(&self) -> bool {
        self.0.is_empty()
    }

    /// The last component (empty for the root).
    pub fn name(&self) -> &[u8] {
        match self.0.iter().rposition(|&b| b == b'/') {
            Some(i) => &self.0[i + 1..],
            None => &self.0,
        }
    }

    /// The containing directory (the root for top-level entries).
    pub fn parent(&self) -> RelPath {
        match self.0.iter().rposition(|&b| b == b'/') {
            Some(i) => RelPath(self.0[..i].to_vec()),
            None => RelPath::root(),
        }
    }

    /// Number of components (0 for the root).
    pub fn depth(&self) -> usize {
        if self.0.is_empty() {
            0
        } else {
            self.0.iter().filter(|&&b| b == b'/').count() + 1
        }
    }

    /// Whether `self` lies strictly inside directory `dir`.
    pub fn is_inside(&self, dir: &RelPath) -> bool {
        dir.0.is_empty() && !self.0.is_empty()
            || self.0.len() > dir.0.len() && self.0.starts_with(&dir.0) && self.0[dir.0.len()] == b'/'
    }

    /// The path under `root` on this machine.
    #[cfg(unix)]
    pub fn to_path(&self, root: &std::path::Path) -> std::path::PathBuf {
        use std::os::unix::ffi::OsStrExt;
        if self.0.is_empty() {
            return root.to_path_buf();
        }
        root.join(std::ffi::OsStr::from_bytes(&self.0))
    }
}

impl TryFrom<Vec<u8>> for RelPath {
    type Error = PathError;
    fn try_from(bytes: Vec<u8>) -> Result<Self, PathError> {
        RelPath::new(bytes)
    }
}

impl From<RelPath> for Vec<u8> {
    fn from(path: RelPath) -> Vec<u8> {
        path.0
    }
}

impl Ord for RelPath {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0.split(|&b| b == b'/').cmp(other.0.split(|&b| b == b'/'))
    }
}

impl PartialOrd for RelPath {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Debug for RelPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", String::from_utf8_lossy(&self.0))
    }
}

impl fmt::Display for RelPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&String::from_utf8_lossy(&self.0))
    }
}

/// Modification time with nanoseconds, as seconds since the Unix epoch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Mtime {
    /// Whole seconds (negative before 1970).
    pub secs: i64,
    /// Nanoseconds, below 1,000,000,000.
    pub nanos: u32,
}

/// Metadata xfer carries for every entry.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Meta {
    /// Permission bits (`0o7777` at most).
    pub mode: u32,
    /// Last modification time.
    pub mtime: Mtime,
    /// Numeric owner.
    pub uid: u32,
    /// Numeric group.
    pub gid: u32,
    /// The owner's name where the entry was read (empty: none known), so a
    /// receiver can map by name.
    pub user: Vec<u8>,
    /// The group's name, as `user`.
    pub group: Vec<u8>,
    /// Extended attributes, sorted by name, names unique (ACLs are the
    /// `system.posix_acl_*` ones).
    pub xattrs: Vec<Xattr>,
}

/// One extended attribute.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Xattr {
    /// Full name, namespace included (`user.comment`).
    pub name: Vec<u8>,
    /// Raw value.
    pub value: Vec<u8>,
}

impl Meta {
    /// Mode and mtime alone, owned by uid 0 with no names or xattrs.
    pub fn basic(mode: u32, mtime: Mtime) -> Meta {
        Meta { mode, mtime, ..Meta::default() }
    }

    /// Whether the special mode bits (setuid, setgid, sticky) are set.
    pub fn has_special_bits(&self) -> bool {
        self.mode & 0o7000 != 0
    }
}

/// What an entry is, with its content.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EntryKind {
    /// A directory (its content is the entries below it).
    Dir,
    /// A symbolic link with its raw target.
    Symlink {
        /// The link's target, as stored (not resolved).
        target: Vec<u8>,
    },
    /// A regular file, with its chunks and whole-file hash.
    File(FileDigest),
    /// Another name of the regular file at `target`, an earlier entry (the
    /// first of the file's names in manifest order): the same inode, so
    /// its data is carried once, by the target. Its metadata is the
    /// target's.
    HardLink {
        /// The file's first name.
        target: RelPath,
        /// The target's size, so that a changed target changes this entry.
        size: u64,
        /// The target's whole-file hash, for the same reason.
        hash: FileHash,
    },
}

impl EntryKind {
    /// A short name for reports.
    pub fn label(&self) -> &'static str {
        match self {
            EntryKind::Dir => "directory",
            EntryKind::Symlink { .. } => "symlink",
            EntryKind::File(_) => "file",
            EntryKind::HardLink { .. } => "hard link",
        }
    }
}

/// One entry of a tree.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Where it is, relative to the root.
    pub path: RelPath,
    /// Mode and mtime.
    pub meta: Meta,
    /// Kind and content.
    pub kind: EntryKind,
}

impl Entry {
    /// The file digest, for regular files.
    pub fn file(&self) -> Option<&FileDigest> {
        match &self.kind {
            EntryKind::File(digest) => Some(digest),
            _ => None,
        }
    }
}

/// Why a manifest was refused.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ManifestError {
    /// Encoded with another format version.
    #[error("manifest format {theirs} is not supported (this xfer reads format {ours})")]
    Version {
        /// The version this build reads.
        ours: u32,
        /// The version found.
        theirs: u32,
    },
    /// The bytes do not decode.
    #[error("manifest does not decode: {0}")]
    Decode(postcard::Error),
    /// The same path appears twice.
    #[error("duplicate entry {0}")]
    Duplicate(RelPath),
    /// An entry's parent is missing or is not a directory.
    #[error("entry {0} has no parent directory in the manifest")]
    Orphan(RelPath),
    /// A file's chunk list does not add up to its size or breaks its parameters.
    #[error("file {path}: chunk list inconsistent with its size or parameters")]
    BadChunks {
        /// The file.
        path: RelPath,
    },
    /// A hard link whose target is not a regular file listed before it.
    #[error("hard link {path}: its target {target} is not a file listed before it")]
    BadLink {
        /// The link.
        path: RelPath,
        /// Its target.
        target: RelPath,
    },
}

// Not `#[from]`, which would make the cause a `source()` too, said twice
// by a printer of the error chain.
impl From<postcard::Error> for ManifestError {
    fn from(e: postcard::Error) -> Self {
        ManifestError::Decode(e)
    }
}

/// A whole tree, sorted by path, each entry's parent present before it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Manifest {
    entries: Vec<Entry>,
}

#[derive(Serialize, Deserialize)]
struct Encoded<'a> {
    format: u32,
    #[serde(borrow)]
    entries: std::borrow::Cow<'a, [Entry]>,
}

impl Manifest {
    /// The empty tree.
    pub const EMPTY: Manifest = Manifest { entries: Vec::new() };

    /// Sorts and checks `entries`.
    ///
    /// # Errors
    /// [`ManifestError`] for duplicates, entries without a parent directory, or
    /// file chunk lists that do not add up.
    pub fn new(mut entries: Vec<Entry>) -> Result<Self, ManifestError> {
        entries.sort_by(|a, b| a.path.cmp(&b.path));
        Self::check(&entries)?;
        // Held for a whole session: no room left over from growing.
        entries.shrink_to_fit();
        Ok(Manifest { entries })
    }

    fn check(entries: &[Entry]) -> Result<(), ManifestError> {
        // Open directories along the current path: sorted order visits each
        // directory before its subtree, so a stack suffices.
        let mut open: Vec<&RelPath> = Vec::new();
        for (i, entry) in entries.iter().enumerate() {
            if i > 0 && entries[i - 1].path == entry.path {
                return Err(ManifestError::Duplicate(entry.path.clone()));
            }
            if entry.path.is_root() {
                return Err(ManifestError::Orphan(entry.path.clone()));
            }
            while open.last().is_some_and(|dir| !entry.path.is_inside(dir)) {
                open.pop();
            }
            if open.len() + 1 != entry.path.depth() {
                return Err(ManifestError::Orphan(entry.path.clone()));
            }
            match &entry.kind {
                EntryKind::Dir => open.push(&entry.path),
                EntryKind::File(digest) => {
                    let total: u64 = digest.chunks.iter().map(|c| u64::from(c.len)).sum();
                    let max = digest.params.max();
                    if total != digest.size || digest.chunks.iter().any(|c| c.len == 0 || c.len > max) {
                        return Err(ManifestError::BadChunks { path: entry.path.clone() });
                    }
                }
                EntryKind::Symlink { .. } => {}
                EntryKind::HardLink { target, .. } => {
                    // Sorted and unique: a binary search over the entries before.
                    let found = entries[..i].binary_search_by(|e| e.path.cmp(target)).ok();
                    if !found.is_some_and(|k| matches!(entries[k].kind, EntryKind::File(_))) {
                        return Err(ManifestError::BadLink { path: entry.path.clone(), target: target.clone() });
                    }
                }
            }
        }
        Ok(())
    }

    /// The entries in order.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the tree is empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The entry at `path`.
    pub fn get(&self, path: &RelPath) -> Option<&Entry> {
        self.entries.binary_search_by(|e| e.path.cmp(path)).ok().map(|i| &self.entries[i])
    }

    /// Compact binary form (postcard), starting with the format version.
    pub fn encode(&self) -> Vec<u8> {
        let encoded = Encoded { format: MANIFEST_FORMAT, entries: (&self.entries[..]).into() };
        postcard::to_allocvec(&encoded).expect("invariant: encoding into a Vec cannot fail")
    }

    /// Decodes and checks what [`Manifest::encode`] wrote.
    ///
    /// # Errors
    /// [`ManifestError`] for another format version, bytes that do not decode,
    /// or entries that break the manifest's rules.
    pub fn decode(bytes: &[u8]) -> Result<Self, ManifestError> {
        let format: u32 = postcard::take_from_bytes(bytes).map(|(f, _)| f)?;
        if format != MANIFEST_FORMAT {
            return Err(ManifestError::Version { ours: MANIFEST_FORMAT, theirs: format });
        }
        let decoded: Encoded<'_> = postcard::from_bytes(bytes)?;
        let entries = decoded.entries.into_owned();
        if entries.windows(2).any(|w| w[0].path >= w[1].path) {
            return Manifest::new(entries);
        }
        Self::check(&entries)?;
        Ok(Manifest { entries })
    }

    /// Merkle hashes of every directory (the root under [`RelPath::root`]).
    pub fn tree(&self) -> Tree {
        Tree::new(self)
    }
}

/// One child of a directory as the top-down comparison sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChildDigest {
    /// The child's name within its directory.
    pub name: Vec<u8>,
    /// Hash of the child's kind, metadata and content (its subtree for directories).
    pub digest: TreeHash,
    /// Whether the child is a directory (so the comparison can descend).
    pub is_dir: bool,
}

impl ChildDigest {
    /// `entry` as its directory's listing holds it; a directory's digest
    /// covers `children`, its own listing (sorted by name).
    pub fn of(entry: &Entry, children: &[ChildDigest]) -> ChildDigest {
        let meta = &entry.meta;
        let wire_meta = EntryMeta {
            mode: meta.mode,
            mtime: xfer_protocol::msg::Mtime { secs: meta.mtime.secs, nanos: meta.mtime.nanos },
            uid: meta.uid,
            gid: meta.gid,
            user: &meta.user,
            group: &meta.group,
        };
        let xattrs = meta.xattrs.iter().map(|x| (x.name.as_slice(), x.value.as_slice()));
        let listing;
        let content = match &entry.kind {
            EntryKind::Dir => {
                listing = listing_hash(children);
                EntryContent::Dir { listing: &listing.0 }
            }
            EntryKind::Symlink { target } => EntryContent::Symlink { target },
            EntryKind::File(digest) => EntryContent::File { size: digest.size, hash: &digest.hash.0 },
            EntryKind::HardLink { target, size, hash } => {
                EntryContent::HardLink { target: target.as_bytes(), size: *size, hash: &hash.0 }
            }
        };
        let digest = TreeHash(entry_digest(entry.path.name(), &wire_meta, xattrs, content));
        ChildDigest { name: entry.path.name().to_vec(), digest, is_dir: matches!(entry.kind, EntryKind::Dir) }
    }
}

/// Directory listings with Merkle digests: what a peer asks for, one directory
/// at a time, to find what differs without a full listing.
#[derive(Clone, Debug, Default)]
pub struct Tree {
    listings: HashMap<RelPath, Vec<ChildDigest>>,
    root: TreeHash,
}

impl Tree {
    fn new(manifest: &Manifest) -> Tree {
        let mut listings: HashMap<RelPath, Vec<ChildDigest>> = HashMap::new();
        // Reverse sorted order visits every subtree before its directory.
        for entry in manifest.entries.iter().rev() {
            let child = match &entry.kind {
                EntryKind::Dir => {
                    let children = listings.entry(entry.path.clone()).or_default();
                    children.reverse();
                    ChildDigest::of(entry, children)
                }
                _ => ChildDigest::of(entry, &[]),
            };
            listings.entry(entry.path.parent()).or_default().push(child);
        }
        let root_children = listings.entry(RelPath::root()).or_default();
        root_children.reverse();
        let root = listing_hash(root_children);
        Tree { listings, root }
    }

    /// The hash of a directory's listing: the root hash, for the root's.
    pub fn listing_hash(children: &[ChildDigest]) -> TreeHash {
        listing_hash(children)
    }

    /// The root hash: equal roots mean equal trees.
    pub fn root(&self) -> TreeHash {
        self.root
    }

    /// The children of directory `dir`, sorted by name (empty if unknown).
    pub fn listing(&self, dir: &RelPath) -> &[ChildDigest] {
        self.listings.get(dir).map_or(&[], Vec::as_slice)
    }
}

fn listing_hash(children: &[ChildDigest]) -> TreeHash {
    TreeHash(listing_digest(children.iter().map(|child| (child.name.as_slice(), &child.digest.0))))
}

/// Where two trees differ, found top-down.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TreeDiff {
    /// Paths whose entry differs or exists on one side only (subtrees that
    /// exist on one side only are named by their top directory).
    pub changed: Vec<RelPath>,
    /// How many directory listings were compared: the cost on a wire.
    pub listings_compared: usize,
}

/// Compares `local` with `remote` top-down, descending only into directories
/// whose digests differ: a change deep in a huge tree costs one listing per
/// level on its path.
///
/// `remote` is asked for listings one directory at a time, as a peer would be,
/// after its root hash `remote_root` was found to differ.
pub fn diff_trees(
    local: &Tree,
    remote_root: TreeHash,
    mut remote: impl FnMut(&RelPath) -> Vec<ChildDigest>,
) -> TreeDiff {
    let mut diff = TreeDiff::default();
    let mut pending = Vec::new();
    if local.root() != remote_root {
        pending.push(RelPath::root());
    }
    while let Some(dir) = pending.pop() {
        let ours = local.listing(&dir);
        let theirs = remote(&dir);
        diff.listings_compared += 1;
        let (mut i, mut j) = (0, 0);
        while i < ours.len() || j < theirs.len() {
            let order = match (ours.get(i), theirs.get(j)) {
                (Some(a), Some(b)) => a.name.as_slice().cmp(b.name.as_slice()),
                (Some(_), None) => Ordering::Less,
                _ => Ordering::Greater,
            };
            let name = match order {
                Ordering::Less => &ours[i].name,
                _ => &theirs[j].name,
            };
            let Ok(path) = dir.join(name) else {
                // A remote name that is not a safe component never matches ours.
                j += 1;
                continue;
            };
            match order {
                Ordering::Equal => {
                    let (a, b) = (&ours[i], &theirs[j]);
                    if a.digest != b.digest {
                        if a.is_dir && b.is_dir {
                            pending.push(path.clone());
                        }
                        diff.changed.push(path);
                    }
                    i += 1;
                    j += 1;
                }
                Ordering::Less => {
                    diff.changed.push(path);
                    i += 1;
                }
                Ordering::Greater => {
                    diff.changed.push(path);
                    j += 1;
                }
            }
        }
    }
    diff.changed.sort();
    diff
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunk::digest_bytes;

    fn file(path: &str, content: &[u8]) -> Entry {
        Entry {
            path: RelPath::new(path).unwrap(),
            meta: Meta::basic(0o644, Mtime { secs: 1, nanos: 5 }),
            kind: EntryKind::File(digest_bytes(content)),
        }
    }

    fn dir(path: &str) -> Entry {
        Entry { path: RelPath::new(path).unwrap(), meta: Meta::default(), kind: EntryKind::Dir }
    }

    #[test]
    fn relpath_rejects_unsafe_paths() {
        for bad in [&b""[..], b"/etc", b"a//b", b"a/../b", b"..", b".", b"a/", b"a\0b"] {
            assert!(RelPath::new(bad.to_vec()).is_err(), "{bad:?}");
        }
        assert!(RelPath::new(b"a/\xff/c".to_vec()).is_ok());
        assert!(postcard::from_bytes::<RelPath>(&postcard::to_allocvec(&b"../x".to_vec()).unwrap()).is_err());
    }

    #[test]
    fn relpath_orders_subtrees_together() {
        let mut paths: Vec<RelPath> = ["a.d", "a/x", "a", "b", "a/x/y"].map(|p| RelPath::new(p).unwrap()).into();
        paths.sort();
        let names: Vec<String> = paths.iter().map(ToString::to_string).collect();
        assert_eq!(names, ["a", "a/x", "a/x/y", "a.d", "b"]);
        assert!(RelPath::new("a/x").unwrap().is_inside(&RelPath::new("a").unwrap()));
        assert!(!RelPath::new("a.d").unwrap().is_inside(&RelPath::new("a").unwrap()));
    }

    #[test]
    fn manifest_roundtrip_and_validation() {
        let m = Manifest::new(vec![file("d/f", b"hello"), dir("d"), file("g", &[7; 100_000])]).unwrap();
        assert_eq!(Manifest::decode(&m.encode()).unwrap(), m);
        assert!(matches!(Manifest::new(vec![file("d/f", b"x")]), Err(ManifestError::Orphan(_))));
        assert!(matches!(Manifest::new(vec![file("f", b"x"), file("f", b"y")]), Err(ManifestError::Duplicate(_))));
        let mut bad = file("f", &[1; 50_000]);
        if let EntryKind::File(d) = &mut bad.kind {
            d.size += 1;
        }
        assert!(matches!(Manifest::new(vec![bad]), Err(ManifestError::BadChunks { .. })));
        let mut other_version = m.encode();
        other_version[0] = 9;
        assert!(matches!(Manifest::decode(&other_version), Err(ManifestError::Version { theirs: 9, .. })));
        // Truncations and garbage are errors, never panics.
        let bytes = m.encode();
        for len in 0..bytes.len() {
            assert!(Manifest::decode(&bytes[..len]).is_err());
        }
    }

    #[test]
    fn tree_root_changes_with_any_entry() {
        let base = vec![dir("d"), file("d/f", b"one"), file("g", b"two")];
        let root = Manifest::new(base.clone()).unwrap().tree().root();
        let mut renamed = base.clone();
        renamed[1] = file("d/h", b"one");
        let mut touched = base.clone();
        touched[2].meta.mtime.nanos += 1;
        let mut chmod = base.clone();
        chmod[0].meta.mode = 0o700;
        let mut chown = base.clone();
        chown[1].meta.uid = 1000;
        let mut renamed_owner = base.clone();
        renamed_owner[1].meta.user = b"alice".to_vec();
        let mut xattr = base.clone();
        xattr[2].meta.xattrs = vec![Xattr { name: b"user.a".to_vec(), value: b"1".to_vec() }];
        let mut xattr_value = xattr.clone();
        xattr_value[2].meta.xattrs[0].value = b"2".to_vec();
        let root_with_xattr = Manifest::new(xattr.clone()).unwrap().tree().root();
        assert_ne!(Manifest::new(xattr_value).unwrap().tree().root(), root_with_xattr);
        for variant in [renamed, touched, chmod, chown, renamed_owner, xattr] {
            assert_ne!(Manifest::new(variant).unwrap().tree().root(), root);
        }
        assert_eq!(Manifest::new(base).unwrap().tree().root(), root);
    }

    /// 1,000,000 files (100 directories of 100 directories of 100 files):
    /// one change deep down costs one listing per level on its path.
    #[test]
    fn diff_trees_deep_change_costs_a_path() {
        let meta = Meta::default();
        let digest = digest_bytes(b"x");
        let changed = digest_bytes(b"y");
        let build = |edit: bool| {
            let mut entries = Vec::with_capacity(1_010_100);
            for a in 0..100 {
                let top = RelPath::new(format!("{a:02}")).unwrap();
                entries.push(Entry { path: top.clone(), meta: meta.clone(), kind: EntryKind::Dir });
                for b in 0..100 {
                    let mid = top.join(format!("{b:02}").as_bytes()).unwrap();
                    entries.push(Entry { path: mid.clone(), meta: meta.clone(), kind: EntryKind::Dir });
                    for c in 0..100 {
                        let path = mid.join(format!("{c:02}").as_bytes()).unwrap();
                        let d = if edit && (a, b, c) == (42, 17, 99) { &changed } else { &digest };
                        entries.push(Entry { path, meta: meta.clone(), kind: EntryKind::File(d.clone()) });
                    }
                }
            }
            Manifest::new(entries).unwrap()
        };
        let (ours, theirs) = (build(true).tree(), build(false).tree());
        let diff = diff_trees(&ours, theirs.root(), |dir| theirs.listing(dir).to_vec());
        let names: Vec<String> = diff.changed.iter().map(ToString::to_string).collect();
        assert_eq!(names, ["42", "42/17", "42/17/99"]);
        assert_eq!(diff.listings_compared, 3);
        let same = diff_trees(&theirs, theirs.root(), |dir| theirs.listing(dir).to_vec());
        assert_eq!(same, TreeDiff::default());
    }

    fn link(path: &str, target: &str, content: &[u8]) -> Entry {
        let digest = digest_bytes(content);
        Entry {
            path: RelPath::new(path).unwrap(),
            meta: Meta { mode: 0o644, mtime: Mtime { secs: 1, nanos: 5 }, ..Meta::default() },
            kind: EntryKind::HardLink { target: RelPath::new(target).unwrap(), size: digest.size, hash: digest.hash },
        }
    }

    #[test]
    fn hard_links_name_an_earlier_file() {
        let m = Manifest::new(vec![file("a", b"x"), dir("d"), link("d/b", "a", b"x")]).unwrap();
        assert_eq!(Manifest::decode(&m.encode()).unwrap(), m);
        // The target must be a file listed before the link.
        for bad in [
            vec![link("a", "b", b"x"), file("b", b"x")],
            vec![dir("d"), link("e", "d", b"x")],
            vec![link("a", "missing", b"x")],
            vec![file("a", b"x"), link("b", "a", b"x"), link("c", "b", b"x")],
        ] {
            assert!(matches!(Manifest::new(bad), Err(ManifestError::BadLink { .. })));
        }
        // A link's digest follows its target's content and its own name.
        let root = m.tree().root();
        let changed = Manifest::new(vec![file("a", b"y"), dir("d"), link("d/b", "a", b"y")]).unwrap();
        let unchanged_file = Manifest::new(vec![file("a", b"x"), dir("d"), link("d/b", "a", b"y")]).unwrap();
        assert_ne!(changed.tree().listing(&RelPath::new("d").unwrap()), m.tree().listing(&RelPath::new("d").unwrap()));
        assert_ne!(unchanged_file.tree().root(), root);
        let as_file = Manifest::new(vec![file("a", b"x"), dir("d"), file("d/b", b"x")]).unwrap();
        assert_ne!(as_file.tree().root(), root);
    }
}
