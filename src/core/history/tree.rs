//! Tree blobs: one directory's children, sorted by name, each with its
//! metadata and content (a subtree's blob id, a file's chunk list, a
//! symlink's target, a hard link's first name).
//!
//! A blob is a marker byte and then either nodes (postcard, one after the
//! other) or, for a directory whose nodes pass [`PART_TARGET`] bytes, the
//! ids of the node blobs it was cut into: memory stays bounded by a part,
//! whatever a directory holds. A blob's id is the BLAKE3 of its bytes, so an
//! unchanged directory has the same id in every snapshot and is stored once.

use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};

use super::{malformed, FormatError};
use crate::chunk::FileDigest;
use crate::hash::{ChunkId, FileHash};
use crate::manifest::{Entry, EntryKind, Manifest, Meta, RelPath};

/// Size at which a directory's nodes are cut into another part.
pub const PART_TARGET: usize = 4 << 20;

const NODES: u8 = 1;
const PARTS: u8 = 2;

/// One child of a directory.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    /// Its name in the directory.
    pub name: Vec<u8>,
    /// Its metadata.
    pub meta: Meta,
    /// What it is.
    pub kind: NodeKind,
}

/// What a child is, with its content.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum NodeKind {
    /// A directory: its own tree blob.
    Dir {
        /// The subtree's blob id.
        tree: ChunkId,
    },
    /// A regular file.
    File(FileDigest),
    /// A symbolic link.
    Symlink {
        /// Its raw target.
        target: Vec<u8>,
    },
    /// Another name of the file at `target` (a path from the snapshot's root).
    HardLink {
        /// The file's first name.
        target: RelPath,
        /// Its size.
        size: u64,
        /// Its hash.
        hash: FileHash,
    },
}

/// Counts a snapshot record carries.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TreeStats {
    /// Regular files (hard links count once).
    pub files: u64,
    /// Directories.
    pub dirs: u64,
    /// Bytes of the regular files.
    pub bytes: u64,
    /// The most encoded tree bytes held at once while building (one part
    /// per open directory level): what memory the tree costs.
    pub peak_held: usize,
}

/// One directory being encoded.
struct Frame {
    path: RelPath,
    name: Vec<u8>,
    meta: Meta,
    part: Vec<u8>,
    parts: Vec<ChunkId>,
}

impl Frame {
    fn new(path: RelPath, meta: Meta) -> Frame {
        Frame { name: path.name().to_vec(), path, meta, part: vec![NODES], parts: Vec::new() }
    }

    fn add<E>(
        &mut self,
        node: &Node,
        target: usize,
        put: &mut impl FnMut(ChunkId, Vec<u8>) -> Result<(), E>,
    ) -> Result<(), E> {
        let bytes = postcard::to_allocvec(node).expect("invariant: encoding into a Vec cannot fail");
        if self.part.len() > 1 && self.part.len() + bytes.len() > target {
            let part = std::mem::replace(&mut self.part, vec![NODES]);
            let id = ChunkId::of(&part);
            put(id, part)?;
            self.parts.push(id);
        }
        self.part.extend_from_slice(&bytes);
        Ok(())
    }

    fn finish<E>(mut self, put: &mut impl FnMut(ChunkId, Vec<u8>) -> Result<(), E>) -> Result<(Node, ChunkId), E> {
        let blob = if self.parts.is_empty() {
            self.part
        } else {
            if self.part.len() > 1 {
                let id = ChunkId::of(&self.part);
                put(id, self.part)?;
                self.parts.push(id);
            }
            let mut blob = Vec::with_capacity(1 + 32 * self.parts.len());
            blob.push(PARTS);
            self.parts.iter().for_each(|id| blob.extend_from_slice(&id.0));
            blob
        };
        let id = ChunkId::of(&blob);
        put(id, blob)?;
        Ok((Node { name: self.name, meta: self.meta, kind: NodeKind::Dir { tree: id } }, id))
    }
}

/// Encodes `manifest` as tree blobs, handing each to `put` (children
/// before their directory; the same blob may come twice), and returns the
/// root's id. Holds one part per directory level, never the whole tree.
///
/// # Errors
/// Whatever `put` returns.
pub fn build<E>(
    manifest: &Manifest,
    part_target: usize,
    mut put: impl FnMut(ChunkId, Vec<u8>) -> Result<(), E>,
) -> Result<(ChunkId, TreeStats), E> {
    let mut stats = TreeStats::default();
    let mut stack = vec![Frame::new(RelPath::root(), Meta::default())];
    for entry in manifest.entries() {
        close_until(&mut stack, &entry.path, part_target, &mut put)?;
        let kind = match &entry.kind {
            EntryKind::Dir => {
                stats.dirs += 1;
                stack.push(Frame::new(entry.path.clone(), entry.meta.clone()));
                continue;
            }
            EntryKind::File(digest) => {
                stats.files += 1;
                stats.bytes += digest.size;
                NodeKind::File(digest.clone())
            }
            EntryKind::Symlink { target } => NodeKind::Symlink { target: target.clone() },
            EntryKind::HardLink { target, size, hash } => {
                NodeKind::HardLink { target: target.clone(), size: *size, hash: *hash }
            }
        };
        let node = Node { name: entry.path.name().to_vec(), meta: entry.meta.clone(), kind };
        stack.last_mut().expect("invariant: the root frame stays").add(&node, part_target, &mut put)?;
        stats.peak_held = stats.peak_held.max(stack.iter().map(|f| f.part.len() + 32 * f.parts.len()).sum());
    }
    close_until(&mut stack, &RelPath::root(), part_target, &mut put)?;
    let root = stack.pop().expect("invariant: the root frame stays");
    let (_, id) = root.finish(&mut put)?;
    Ok((id, stats))
}

/// Finishes every open directory `path` is not inside (all but the root
/// for the root path), adding each to its parent.
fn close_until<E>(
    stack: &mut Vec<Frame>,
    path: &RelPath,
    part_target: usize,
    put: &mut impl FnMut(ChunkId, Vec<u8>) -> Result<(), E>,
) -> Result<(), E> {
    while stack.len() > 1 && !stack.last().is_some_and(|f| path.is_inside(&f.path)) {
        let frame = stack.pop().expect("invariant: checked above");
        let (node, _) = frame.finish(put)?;
        stack.last_mut().expect("invariant: the root frame stays").add(&node, part_target, put)?;
    }
    Ok(())
}

/// Reads one directory's nodes, one part at a time.
struct DirCursor {
    /// Part ids still to read, last first.
    parts: Vec<ChunkId>,
    blob: ChunkId,
    bytes: Vec<u8>,
    pos: usize,
    /// The name of the node read last, to check the order.
    last: Option<Vec<u8>>,
}

fn fetch_checked<E: From<FormatError>>(
    id: &ChunkId,
    fetch: &mut impl FnMut(&ChunkId) -> Result<Vec<u8>, E>,
) -> Result<Vec<u8>, E> {
    let bytes = fetch(id)?;
    if ChunkId::of(&bytes) != *id {
        return Err(FormatError::Mismatch(*id).into());
    }
    Ok(bytes)
}

impl DirCursor {
    fn open<E: From<FormatError>>(
        id: ChunkId,
        fetch: &mut impl FnMut(&ChunkId) -> Result<Vec<u8>, E>,
    ) -> Result<DirCursor, E> {
        let bytes = fetch_checked(&id, fetch)?;
        match bytes.first() {
            Some(&NODES) => Ok(DirCursor { parts: Vec::new(), blob: id, bytes, pos: 1, last: None }),
            Some(&PARTS) if (bytes.len() - 1) % 32 == 0 => {
                let mut parts: Vec<ChunkId> = bytes[1..]
                    .chunks_exact(32)
                    .map(|c| ChunkId(c.try_into().expect("invariant: chunks_exact(32)")))
                    .collect();
                parts.reverse();
                Ok(DirCursor { parts, blob: id, bytes: Vec::new(), pos: 0, last: None })
            }
            _ => Err(malformed("tree blob", format!("blob {id} is not a tree blob")).into()),
        }
    }

    fn next<E: From<FormatError>>(
        &mut self,
        fetch: &mut impl FnMut(&ChunkId) -> Result<Vec<u8>, E>,
    ) -> Result<Option<Node>, E> {
        loop {
            if self.pos < self.bytes.len() {
                let (node, rest) = postcard::take_from_bytes::<Node>(&self.bytes[self.pos..])
                    .map_err(|source| FormatError::Tree { id: self.blob, cause: source })?;
                self.pos = self.bytes.len() - rest.len();
                return Ok(Some(node));
            }
            let Some(id) = self.parts.pop() else { return Ok(None) };
            let bytes = fetch_checked(&id, fetch)?;
            if bytes.first() != Some(&NODES) {
                return Err(malformed("tree blob", format!("part {id} holds no nodes")).into());
            }
            (self.blob, self.bytes, self.pos) = (id, bytes, 1);
        }
    }
}

/// The node at `path` (not the root) of the tree `root`.
///
/// # Errors
/// [`FormatError::NotFound`], [`FormatError::NotDir`], or what `fetch` or
/// decoding returns.
pub fn find<E: From<FormatError>>(
    root: ChunkId,
    path: &RelPath,
    fetch: &mut impl FnMut(&ChunkId) -> Result<Vec<u8>, E>,
) -> Result<Node, E> {
    let mut dir = root;
    let mut components = path.as_bytes().split(|&b| b == b'/').peekable();
    let mut walked = RelPath::root();
    while let Some(name) = components.next() {
        let mut cursor = DirCursor::open(dir, fetch)?;
        let node = loop {
            match cursor.next(fetch)? {
                Some(node) if node.name == name => break node,
                Some(_) => {}
                None => return Err(FormatError::NotFound(path.clone()).into()),
            }
        };
        walked = walked.join(name).map_err(|e| malformed("tree blob", e.to_string()))?;
        if components.peek().is_none() {
            return Ok(node);
        }
        match node.kind {
            NodeKind::Dir { tree } => dir = tree,
            _ => return Err(FormatError::NotDir(walked).into()),
        }
    }
    Err(FormatError::NotFound(path.clone()).into())
}

/// The part of the tree `root` at `sub` as a manifest with paths relative
/// to `sub` (a file or symlink: one entry named as it). Hard links to a
/// file outside `sub` become the file at their first name inside it.
///
/// # Errors
/// `sub` missing, a blob missing or damaged (what `fetch` returns), nodes
/// that do not form a manifest.
pub fn load<E: From<FormatError>>(
    root: ChunkId,
    sub: &RelPath,
    fetch: impl FnMut(&ChunkId) -> Result<Vec<u8>, E>,
) -> Result<Manifest, E> {
    load_measured(root, sub, fetch).map(|(manifest, _)| manifest)
}

/// As [`load`], with the most tree blob bytes held at once (one blob per
/// directory level on the current path, never the whole tree).
///
/// # Errors
/// As [`load`].
pub fn load_measured<E: From<FormatError>>(
    root: ChunkId,
    sub: &RelPath,
    mut fetch: impl FnMut(&ChunkId) -> Result<Vec<u8>, E>,
) -> Result<(Manifest, usize), E> {
    let mut walker = Walker::new(root, sub, &mut fetch)?;
    let mut entries = Vec::new();
    while let Some(entry) = walker.next(&mut fetch)? {
        entries.push(entry);
    }
    Ok((Manifest::new(entries).map_err(FormatError::from)?, walker.peak))
}

fn file_at<E: From<FormatError>>(
    root: ChunkId,
    path: &RelPath,
    fetch: &mut impl FnMut(&ChunkId) -> Result<Vec<u8>, E>,
) -> Result<FileDigest, E> {
    match find(root, path, fetch)?.kind {
        NodeKind::File(digest) => Ok(digest),
        _ => Err(malformed("tree blob", format!("hard link target {path} is not a file")).into()),
    }
}

/// The entries of a snapshot's part one at a time, depth first in name
/// order (the manifest's order), as [`load`] gives them: one tree blob part
/// held per open directory, never the whole tree.
pub struct Walker {
    root: ChunkId,
    /// The part of the snapshot walked; paths are relative to it.
    sub: RelPath,
    stack: Vec<(RelPath, DirCursor)>,
    /// Hard link targets outside `sub`, and where their first name inside went.
    moved: HashMap<RelPath, RelPath>,
    /// A part that is one file or symlink: its entry, until taken.
    single: Option<Entry>,
    /// The most tree blob bytes held at once.
    peak: usize,
}

impl Walker {
    /// Walks the part at `sub` of the tree `root`, as [`load`] reads it.
    ///
    /// # Errors
    /// `sub` missing, a blob missing or damaged.
    pub fn new<E: From<FormatError>>(
        root: ChunkId,
        sub: &RelPath,
        fetch: &mut impl FnMut(&ChunkId) -> Result<Vec<u8>, E>,
    ) -> Result<Walker, E> {
        if sub.is_root() {
            return Walker::open(root, root, sub, RelPath::root(), fetch);
        }
        let node = find(root, sub, fetch)?;
        let kind = match node.kind {
            NodeKind::Dir { tree } => return Walker::open(root, tree, sub, RelPath::root(), fetch),
            NodeKind::File(digest) => EntryKind::File(digest),
            NodeKind::Symlink { target } => EntryKind::Symlink { target },
            NodeKind::HardLink { target, .. } => EntryKind::File(file_at(root, &target, fetch)?),
        };
        let path = RelPath::new(sub.name()).map_err(|e| malformed("tree blob", e.to_string()))?;
        let mut walker = Walker::open_empty(root, sub);
        walker.single = Some(Entry { path, meta: node.meta, kind });
        Ok(walker)
    }

    /// Walks only inside directory `dir` of the part at `sub` of the tree
    /// `root` (paths still relative to `sub`). Hard links to files outside
    /// `sub` are told apart only by a walk of the whole part.
    ///
    /// # Errors
    /// `dir` missing or not a directory, a blob missing or damaged.
    pub fn inside<E: From<FormatError>>(
        root: ChunkId,
        sub: &RelPath,
        dir: &RelPath,
        fetch: &mut impl FnMut(&ChunkId) -> Result<Vec<u8>, E>,
    ) -> Result<Walker, E> {
        let at = join_paths(sub, dir).map_err(|e| malformed("tree blob", e.to_string()))?;
        let tree = if at.is_root() {
            root
        } else {
            match find(root, &at, fetch)?.kind {
                NodeKind::Dir { tree } => tree,
                _ => return Err(FormatError::NotDir(at).into()),
            }
        };
        Walker::open(root, tree, sub, dir.clone(), fetch)
    }

    fn open_empty(root: ChunkId, sub: &RelPath) -> Walker {
        Walker { root, sub: sub.clone(), stack: Vec::new(), moved: HashMap::new(), single: None, peak: 0 }
    }

    fn open<E: From<FormatError>>(
        root: ChunkId,
        dir: ChunkId,
        sub: &RelPath,
        at: RelPath,
        fetch: &mut impl FnMut(&ChunkId) -> Result<Vec<u8>, E>,
    ) -> Result<Walker, E> {
        let mut walker = Walker::open_empty(root, sub);
        walker.stack.push((at, DirCursor::open(dir, fetch)?));
        Ok(walker)
    }

    /// The next entry, if any.
    ///
    /// # Errors
    /// A blob missing or damaged, nodes out of order or malformed.
    pub fn next<E: From<FormatError>>(
        &mut self,
        fetch: &mut impl FnMut(&ChunkId) -> Result<Vec<u8>, E>,
    ) -> Result<Option<Entry>, E> {
        if let Some(entry) = self.single.take() {
            return Ok(Some(entry));
        }
        loop {
            let Some((parent, cursor)) = self.stack.last_mut() else { return Ok(None) };
            let last = cursor.last.take();
            let Some(node) = cursor.next(fetch)? else {
                self.stack.pop();
                continue;
            };
            // Tree blobs are written sorted; the plan relies on the order.
            if last.as_ref().is_some_and(|name| *name >= node.name) {
                return Err(malformed("tree blob", format!("names out of order in blob {}", cursor.blob)).into());
            }
            cursor.last = Some(node.name.clone());
            let path = parent.join(&node.name).map_err(|e| malformed("tree blob", e.to_string()))?;
            self.peak = self.peak.max(self.stack.iter().map(|(_, c)| c.bytes.len() + 32 * c.parts.len()).sum());
            let kind = match node.kind {
                NodeKind::Dir { tree } => {
                    self.stack.push((path.clone(), DirCursor::open(tree, fetch)?));
                    EntryKind::Dir
                }
                NodeKind::File(digest) => EntryKind::File(digest),
                NodeKind::Symlink { target } => EntryKind::Symlink { target },
                NodeKind::HardLink { target, size, hash } => self.link(&path, target, size, hash, fetch)?,
            };
            return Ok(Some(Entry { path, meta: node.meta, kind }));
        }
    }

    /// A hard link at `path` as the part sees it: a link within it, or the
    /// file itself at the first name inside it of a file outside.
    fn link<E: From<FormatError>>(
        &mut self,
        path: &RelPath,
        target: RelPath,
        size: u64,
        hash: FileHash,
        fetch: &mut impl FnMut(&ChunkId) -> Result<Vec<u8>, E>,
    ) -> Result<EntryKind, E> {
        let sub = &self.sub;
        Ok(if sub.is_root() {
            EntryKind::HardLink { target, size, hash }
        } else if target.is_inside(sub) {
            let inside = RelPath::new(&target.as_bytes()[sub.as_bytes().len() + 1..])
                .map_err(|e| malformed("tree blob", e.to_string()))?;
            EntryKind::HardLink { target: inside, size, hash }
        } else if let Some(first) = self.moved.get(&target) {
            EntryKind::HardLink { target: first.clone(), size, hash }
        } else {
            let digest = file_at(self.root, &target, fetch)?;
            self.moved.insert(target, path.clone());
            EntryKind::File(digest)
        })
    }
}

/// `a/b`, either may be the root.
fn join_paths(a: &RelPath, b: &RelPath) -> Result<RelPath, crate::manifest::PathError> {
    match (a.is_root(), b.is_root()) {
        (true, _) => Ok(b.clone()),
        (_, true) => Ok(a.clone()),
        _ => RelPath::new([a.as_bytes(), b"/", b.as_bytes()].concat()),
    }
}

/// Adds to `blobs` every blob id the tree `root` references, tree blobs
/// and file chunks; `trees` holds the tree blobs already walked (across
/// calls), so each is read once however many snapshots share it: what a
/// prune keeps.
///
/// # Errors
/// A blob missing or damaged.
pub fn referenced<E: From<FormatError>>(
    root: ChunkId,
    trees: &mut HashSet<ChunkId>,
    blobs: &mut HashSet<ChunkId>,
    mut fetch: impl FnMut(&ChunkId) -> Result<Vec<u8>, E>,
) -> Result<(), E> {
    let mut pending = vec![root];
    while let Some(id) = pending.pop() {
        if !trees.insert(id) {
            continue;
        }
        blobs.insert(id);
        let mut cursor = DirCursor::open(id, &mut fetch)?;
        blobs.extend(cursor.parts.iter().copied());
        while let Some(node) = cursor.next(&mut fetch)? {
            match node.kind {
                NodeKind::Dir { tree } => pending.push(tree),
                NodeKind::File(digest) => blobs.extend(digest.chunks.iter().map(|c| c.id)),
                NodeKind::Symlink { .. } | NodeKind::HardLink { .. } => {}
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
