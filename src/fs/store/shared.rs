//! One client's chunk index across the trees it pushed to on a server: a
//! tree pushed again to a new path is built from the chunks this client
//! already sent to another, without sending them again.
//!
//! Per client on purpose: "the server holds this chunk" answered from
//! another client's trees would tell a client what others stored. Entries
//! may be stale (files change or go behind its back): every read is
//! re-hashed, and a chunk that does not verify is simply missing.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};

use redb::{Builder, Database, MultimapTableDefinition, ReadableDatabase, ReadableMultimapTable};

use crate::chunk::{ChunkRef, FileDigest};
use crate::error::{Error, IoContext, Result};
use crate::hash::ChunkId;
use crate::manifest::RelPath;

/// Chunk id -> (tree, file in that tree, offset, length), encoded.
const CHUNKS: MultimapTableDefinition<&[u8; 32], &[u8]> = MultimapTableDefinition::new("chunks");

/// Locations kept per chunk: enough to survive a few stale ones, and the
/// index stays bounded by the distinct chunks a client ever pushed.
const MAX_LOCATIONS: usize = 4;

/// Cache of a client's index database (it is read chunk by chunk).
const CACHE_BYTES: usize = 16 << 20;

/// A client's chunk index on a server whose trees live under `root`.
pub struct SharedIndex {
    db: Database,
    path: PathBuf,
    root: PathBuf,
}

impl std::fmt::Debug for SharedIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedIndex").field("path", &self.path).finish_non_exhaustive()
    }
}

/// A chunk location as kept: which tree, which file, where.
#[derive(Clone, Debug, PartialEq, Eq)]
struct SharedLoc {
    tree: RelPath,
    path: RelPath,
    offset: u64,
    len: u32,
}

impl SharedLoc {
    fn encode(&self) -> Vec<u8> {
        let tree = self.tree.as_bytes();
        let mut bytes = Vec::with_capacity(16 + tree.len() + self.path.as_bytes().len());
        bytes.extend_from_slice(&self.offset.to_le_bytes());
        bytes.extend_from_slice(&self.len.to_le_bytes());
        bytes.extend_from_slice(&(tree.len() as u32).to_le_bytes());
        bytes.extend_from_slice(tree);
        bytes.extend_from_slice(self.path.as_bytes());
        bytes
    }

    /// `None` for anything that does not decode: a damaged entry is a
    /// missing one.
    fn decode(bytes: &[u8]) -> Option<SharedLoc> {
        let offset = u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?);
        let len = u32::from_le_bytes(bytes.get(8..12)?.try_into().ok()?);
        let tree_len = u32::from_le_bytes(bytes.get(12..16)?.try_into().ok()?) as usize;
        let tree_end = 16usize.checked_add(tree_len)?;
        let tree = match bytes.get(16..tree_end)? {
            [] => RelPath::root(),
            tree => RelPath::new(tree.to_vec()).ok()?,
        };
        let path = RelPath::new(bytes.get(tree_end..)?.to_vec()).ok()?;
        Some(SharedLoc { tree, path, offset, len })
    }
}

impl SharedIndex {
    /// Opens or creates the index at `path` for trees under `root`.
    ///
    /// # Errors
    /// [`Error::Io`] if its directory cannot be made, [`Error::State`] if
    /// the database cannot be opened.
    pub fn open(path: &Path, root: &Path) -> Result<SharedIndex> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).at(dir)?;
        }
        match SharedIndex::open_as_is(path, root) {
            // It holds only what later pushes save: a damaged one is moved
            // aside and started afresh, as a tree's state database is.
            Err(e) if super::state::is_damage(&e) => {
                let mut aside = path.as_os_str().to_owned();
                aside.push(".corrupt");
                std::fs::rename(path, &aside).at(path)?;
                tracing::warn!(database = %path.display(), error = %e,
                    "a client's chunk index was damaged: moved it aside and starting a new one");
                SharedIndex::open_as_is(path, root)
            }
            other => other,
        }
    }

    fn open_as_is(path: &Path, root: &Path) -> Result<SharedIndex> {
        let db = Builder::new().set_cache_size(CACHE_BYTES).create(path).map_err(|e| Error::state(path, e))?;
        let index = SharedIndex { db, path: path.to_path_buf(), root: root.to_path_buf() };
        let txn = index.db.begin_write().map_err(|e| index.err(e))?;
        txn.open_multimap_table(CHUNKS).map_err(|e| index.err(e))?;
        txn.commit().map_err(|e| index.err(e))?;
        Ok(index)
    }

    fn err(&self, e: impl Into<redb::Error>) -> Error {
        Error::state(&self.path, e)
    }

    /// Records where the chunks of `files`, just committed to `tree`, are.
    ///
    /// # Errors
    /// [`Error::State`] if the transaction fails; the index is then as before.
    pub fn record<'a>(&self, tree: &RelPath, files: impl Iterator<Item = (&'a RelPath, &'a FileDigest)>) -> Result<()> {
        let txn = self.db.begin_write().map_err(|e| self.err(e))?;
        {
            let mut table = txn.open_multimap_table(CHUNKS).map_err(|e| self.err(e))?;
            for (path, digest) in files {
                let mut offset = 0u64;
                for chunk in &digest.chunks {
                    let loc = SharedLoc { tree: tree.clone(), path: path.clone(), offset, len: chunk.len };
                    offset += u64::from(chunk.len);
                    if table.get(&chunk.id.0).map_err(|e| self.err(e))?.len() >= MAX_LOCATIONS as u64 {
                        continue;
                    }
                    table.insert(&chunk.id.0, loc.encode().as_slice()).map_err(|e| self.err(e))?;
                }
            }
        }
        txn.commit().map_err(|e| self.err(e))
    }

    /// For each of `ids`, whether this client's index names a place
    /// holding it (not read: a stale entry makes the chunk a need when its
    /// file is built). One read transaction.
    ///
    /// # Errors
    /// [`Error::State`] if the index cannot be read.
    pub fn contains_all(&self, ids: &[ChunkId]) -> Result<Vec<bool>> {
        let txn = self.db.begin_read().map_err(|e| self.err(e))?;
        let table = txn.open_multimap_table(CHUNKS).map_err(|e| self.err(e))?;
        ids.iter().map(|id| Ok(!table.get(&id.0).map_err(|e| self.err(e))?.is_empty())).collect()
    }

    fn locations(&self, id: &ChunkId) -> Result<Vec<SharedLoc>> {
        let txn = self.db.begin_read().map_err(|e| self.err(e))?;
        let table = txn.open_multimap_table(CHUNKS).map_err(|e| self.err(e))?;
        let mut locs = Vec::new();
        for value in table.get(&id.0).map_err(|e| self.err(e))? {
            locs.extend(SharedLoc::decode(value.map_err(|e| self.err(e))?.value()));
        }
        Ok(locs)
    }

    /// The bytes of `chunk` from one of the recorded places, only if they
    /// hash to its id; `None` otherwise (stale, unreadable, or a path that
    /// does not lead through real directories under the root).
    pub fn read(&self, chunk: &ChunkRef) -> Option<Vec<u8>> {
        let locs = self.locations(&chunk.id).ok()?;
        locs.iter().filter(|loc| loc.len == chunk.len).find_map(|loc| {
            let file = open_beneath(&self.root, &loc.tree, &loc.path)?;
            let mut bytes = vec![0u8; loc.len as usize];
            file.read_exact_at(&mut bytes, loc.offset).ok()?;
            (ChunkId::of(&bytes) == chunk.id).then_some(bytes)
        })
    }
}

/// Opens `ROOT/tree/path` for reading only if every directory on the way
/// is a real directory and the file itself is a regular file, never a
/// symlink: a link planted in a tree must not lead a read out of the root.
fn open_beneath(root: &Path, tree: &RelPath, path: &RelPath) -> Option<File> {
    use rustix::fs::OFlags;
    let full = path.as_bytes().split(|&b| b == b'/').try_fold(tree.clone(), |at, name| at.join(name).ok())?;
    let mut dir = full.parent();
    let mut dirs = Vec::new();
    while !dir.is_root() {
        dirs.push(dir.clone());
        dir = dir.parent();
    }
    for dir in dirs.iter().rev() {
        if !std::fs::symlink_metadata(dir.to_path(root)).ok()?.is_dir() {
            return None;
        }
    }
    let file = File::options().read(true).custom_flags(OFlags::NOFOLLOW.bits() as i32).open(full.to_path(root)).ok()?;
    file.metadata().ok()?.is_file().then_some(file)
}

/// The index of each client, shared by the sessions of a server process
/// (a database file is opened once per process) while any of them runs:
/// closed when the last one ends, so a damaged file is found at the next
/// opening.
#[derive(Clone, Debug, Default)]
pub struct SharedIndexes {
    open: Arc<Mutex<HashMap<PathBuf, Weak<SharedIndex>>>>,
}

impl SharedIndexes {
    /// The index at `path` (for trees under `root`), opened if no session
    /// holds it.
    ///
    /// # Errors
    /// As [`SharedIndex::open`].
    pub fn get(&self, path: &Path, root: &Path) -> Result<Arc<SharedIndex>> {
        let mut open = self.open.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        open.retain(|_, index| index.strong_count() > 0);
        if let Some(index) = open.get(path).and_then(Weak::upgrade) {
            return Ok(index);
        }
        let index = Arc::new(SharedIndex::open(path, root)?);
        open.insert(path.to_path_buf(), Arc::downgrade(&index));
        Ok(index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunk::digest_bytes;
    use proptest::prelude::*;

    fn rel(path: &str) -> RelPath {
        if path.is_empty() {
            return RelPath::root();
        }
        RelPath::new(path.as_bytes().to_vec()).expect("test paths are valid")
    }

    proptest! {
        #[test]
        fn locations_round_trip(tree in prop_oneof![Just(String::new()), "[a-z]{1,6}(/[a-z]{1,4}){0,2}"], path in "[a-z]{1,6}(/[a-z]{1,4}){0,2}",
                                offset: u64, len: u32) {
            let loc = SharedLoc { tree: rel(&tree), path: rel(&path), offset, len };
            prop_assert_eq!(SharedLoc::decode(&loc.encode()), Some(loc));
        }

        #[test]
        fn damaged_entries_decode_to_nothing_or_a_valid_location(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            // Never a panic; whatever decodes names relative paths only.
            if let Some(loc) = SharedLoc::decode(&bytes) {
                prop_assert!(!loc.path.as_bytes().starts_with(b"/"));
            }
        }
    }

    #[test]
    fn reads_verify_and_locations_stay_bounded() {
        let tmp = tempfile::TempDir::new().expect("temp dir");
        let root = tmp.path().join("root");
        let data: Vec<u8> = (0..200_000u32).flat_map(|n| n.wrapping_mul(2_654_435_761).to_le_bytes()).collect();
        std::fs::create_dir_all(root.join("t/d")).expect("mkdir");
        std::fs::write(root.join("t/d/f"), &data).expect("write");
        let index = SharedIndex::open(&tmp.path().join("clients/x.redb"), &root).expect("open");
        let digest = digest_bytes(&data);
        let path = rel("d/f");
        for tree in ["t", "t1", "t2", "t3", "t4", "t5", "t6"] {
            index.record(&rel(tree), std::iter::once((&path, &digest))).expect("record");
        }
        let first = digest.chunks[0];
        assert_eq!(index.contains_all(&[first.id]).expect("contains"), vec![true]);
        assert_eq!(index.locations(&first.id).expect("locations").len(), MAX_LOCATIONS);
        assert_eq!(index.read(&first).as_deref(), data.get(..first.len as usize));
        // Changed behind the index's back: the read no longer verifies.
        std::fs::write(root.join("t/d/f"), vec![0u8; data.len()]).expect("rewrite");
        assert_eq!(index.read(&first), None);
    }
}
