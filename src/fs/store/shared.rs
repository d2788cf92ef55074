//! One client's chunk index across the trees it pushed to on a server: a
//! tree pushed again to a new path is built from the chunks this client
//! already sent to another, without sending them again.
//!
//! Per client by default: "the server holds this chunk" answered from
//! another client's trees would tell a client what others stored. A server
//! whose clients trust each other may keep one index for all of them
//! (`serve --dedup-across-clients`); the index itself is the same.
//!
//! Entries may be stale (files change or go behind its back): every read is
//! re-hashed, and a chunk that does not verify is simply missing. A place a
//! read finds stale is removed (batched: with the session's next record, or
//! when the session ends), so stale places do not hold the few
//! slots a chunk has. Deleted trees and files are not looked up: their
//! entries go when a push next asks for one of their chunks. The index is
//! thus bounded by [`MAX_LOCATIONS`] places per distinct chunk ever
//! recorded, whatever the number of pushes.

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

/// Stale places a session holds for removal before a read removes them
/// itself: the batch stays small in memory, one write serves many.
const MAX_STALE: usize = 4096;

/// A place found stale: chunk id, place as stored.
type Stale = ([u8; 32], Vec<u8>);

/// A client's chunk index on a server whose trees live under `root`.
pub struct SharedIndex {
    db: Database,
    path: PathBuf,
    root: PathBuf,
}

/// Why a recorded place gave no chunk.
enum Miss {
    /// It no longer holds it (gone, changed, shorter, or reached only
    /// through something other than real directories): drop the place.
    Stale,
    /// It could not be read now (permissions, out of file handles): keep it.
    Unreadable,
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

    /// Removes the `stale` places, then records where the chunks of
    /// `files`, just committed to `tree`, are: one transaction.
    fn write<'a>(
        &self,
        stale: &[Stale],
        tree: &RelPath,
        files: impl Iterator<Item = (&'a RelPath, &'a FileDigest)>,
    ) -> Result<()> {
        let txn = self.db.begin_write().map_err(|e| self.err(e))?;
        {
            let mut table = txn.open_multimap_table(CHUNKS).map_err(|e| self.err(e))?;
            for (id, loc) in stale {
                table.remove(id, loc.as_slice()).map_err(|e| self.err(e))?;
            }
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

    /// The places recorded for `id`, as stored (to remove one) and decoded
    /// (`None`: damaged).
    fn locations(&self, id: &ChunkId) -> Result<Vec<(Vec<u8>, Option<SharedLoc>)>> {
        let txn = self.db.begin_read().map_err(|e| self.err(e))?;
        let table = txn.open_multimap_table(CHUNKS).map_err(|e| self.err(e))?;
        let mut locs = Vec::new();
        for value in table.get(&id.0).map_err(|e| self.err(e))? {
            let raw = value.map_err(|e| self.err(e))?.value().to_vec();
            let loc = SharedLoc::decode(&raw);
            locs.push((raw, loc));
        }
        Ok(locs)
    }

    /// The bytes of `chunk` from one of the recorded places, only if they
    /// hash to its id; `None` otherwise (stale, unreadable, or a path that
    /// does not lead through real directories under the root). The places
    /// tried and found stale are added to `stale`.
    fn read(&self, chunk: &ChunkRef, stale: &mut Vec<Stale>) -> Option<Vec<u8>> {
        let locs = self.locations(&chunk.id).ok()?;
        let mut found = None;
        for (raw, loc) in locs {
            // Another length is not this chunk's place: left as it is.
            let result = match &loc {
                None => Err(Miss::Stale),
                Some(loc) if loc.len != chunk.len => continue,
                Some(loc) => self.read_at(loc, &chunk.id),
            };
            match result {
                Ok(bytes) => {
                    found = Some(bytes);
                    break;
                }
                Err(Miss::Stale) => stale.push((chunk.id.0, raw)),
                Err(Miss::Unreadable) => {}
            }
        }
        found
    }

    /// The chunk `id` at `loc`, verified.
    fn read_at(&self, loc: &SharedLoc, id: &ChunkId) -> std::result::Result<Vec<u8>, Miss> {
        let file = open_beneath(&self.root, &loc.tree, &loc.path)?;
        let mut bytes = vec![0u8; loc.len as usize];
        file.read_exact_at(&mut bytes, loc.offset).map_err(|e| miss(&e))?;
        if ChunkId::of(&bytes) == *id {
            Ok(bytes)
        } else {
            Err(Miss::Stale)
        }
    }

}

/// One session's use of an index: the places its reads find stale are
/// removed with its next record, or when it ends, not one write per chunk.
/// It holds the index open meanwhile, so that last write never races a new
/// session opening the file.
pub struct SharedSession {
    index: Arc<SharedIndex>,
    stale: Mutex<Vec<Stale>>,
}

impl std::fmt::Debug for SharedSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedSession").field("index", &self.index).finish_non_exhaustive()
    }
}

impl SharedSession {
    /// A session drawing on and feeding `index`.
    pub fn new(index: Arc<SharedIndex>) -> SharedSession {
        SharedSession { index, stale: Mutex::new(Vec::new()) }
    }

    /// Records where the chunks of `files`, just committed to `tree`, are,
    /// and removes the places this session found stale, in one write.
    ///
    /// # Errors
    /// [`Error::State`] if the transaction fails; the index is then as
    /// before (stale places not removed are found again by a later read).
    pub fn record<'a>(&self, tree: &RelPath, files: impl Iterator<Item = (&'a RelPath, &'a FileDigest)>) -> Result<()> {
        // Removed before the inserts: a place this very batch records
        // again stays. One another session recorded again since the read
        // is lost: a missed saving, never a wrong byte (reads verify).
        self.index.write(&self.take_stale(), tree, files)
    }

    /// As [`SharedIndex::contains_all`].
    ///
    /// # Errors
    /// [`Error::State`] if the index cannot be read.
    pub fn contains_all(&self, ids: &[ChunkId]) -> Result<Vec<bool>> {
        self.index.contains_all(ids)
    }

    /// The bytes of `chunk` from one of the recorded places, verified;
    /// `None` if none holds it. Places found stale are held for removal
    /// (past [`MAX_STALE`] held, removed now).
    pub fn read(&self, chunk: &ChunkRef) -> Option<Vec<u8>> {
        let mut stale = Vec::new();
        let found = self.index.read(chunk, &mut stale);
        if !stale.is_empty() {
            let full = {
                let mut held = self.stale.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                held.extend(stale);
                held.len() >= MAX_STALE
            };
            if full {
                self.remove_stale();
            }
        }
        found
    }

    fn take_stale(&self) -> Vec<Stale> {
        std::mem::take(&mut *self.stale.lock().unwrap_or_else(std::sync::PoisonError::into_inner))
    }

    /// Removes the stale places held, in one write. A failure only leaves
    /// them to be found again: logged, never the session's error.
    fn remove_stale(&self) {
        let stale = self.take_stale();
        if stale.is_empty() {
            return;
        }
        if let Err(e) = self.index.write(&stale, &RelPath::root(), std::iter::empty()) {
            tracing::warn!(error = %e, "stale places were not removed from a chunk index; later reads find them again");
        }
    }
}

impl Drop for SharedSession {
    /// The session ends: what its reads found stale since its last record
    /// is removed now rather than never.
    fn drop(&mut self) {
        self.remove_stale();
    }
}

/// Whether the read error `e` says the place no longer holds the chunk
/// (gone, not a directory on the way, a symlink, shorter than recorded).
fn miss(e: &std::io::Error) -> Miss {
    use rustix::io::Errno;
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        return Miss::Stale;
    }
    match Errno::from_io_error(e) {
        Some(Errno::NOENT | Errno::NOTDIR | Errno::LOOP) => Miss::Stale,
        _ => Miss::Unreadable,
    }
}

/// Opens `ROOT/tree/path` for reading only if every directory on the way
/// is a real directory and the file itself is a regular file, never a
/// symlink: a link planted in a tree must not lead a read out of the root.
fn open_beneath(root: &Path, tree: &RelPath, path: &RelPath) -> std::result::Result<File, Miss> {
    use rustix::fs::OFlags;
    let full = path.as_bytes().split(|&b| b == b'/').try_fold(tree.clone(), |at, name| at.join(name).ok());
    let full = full.ok_or(Miss::Stale)?;
    let mut dir = full.parent();
    let mut dirs = Vec::new();
    while !dir.is_root() {
        dirs.push(dir.clone());
        dir = dir.parent();
    }
    for dir in dirs.iter().rev() {
        if !std::fs::symlink_metadata(dir.to_path(root)).map_err(|e| miss(&e))?.is_dir() {
            return Err(Miss::Stale);
        }
    }
    let flags = OFlags::NOFOLLOW.bits() as i32;
    let file = File::options().read(true).custom_flags(flags).open(full.to_path(root)).map_err(|e| miss(&e))?;
    if file.metadata().map_err(|e| miss(&e))?.is_file() {
        Ok(file)
    } else {
        Err(Miss::Stale)
    }
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
        let index = Arc::new(SharedIndex::open(&tmp.path().join("clients/x.redb"), &root).expect("open"));
        let session = SharedSession::new(index.clone());
        let digest = digest_bytes(&data);
        let path = rel("d/f");
        for tree in ["t", "t1", "t2", "t3", "t4", "t5", "t6"] {
            session.record(&rel(tree), std::iter::once((&path, &digest))).expect("record");
        }
        let first = digest.chunks[0];
        assert_eq!(session.contains_all(&[first.id]).expect("contains"), vec![true]);
        assert_eq!(index.locations(&first.id).expect("locations").len(), MAX_LOCATIONS);
        assert_eq!(session.read(&first).as_deref(), data.get(..first.len as usize));
        // Changed behind the index's back: the read no longer verifies.
        std::fs::write(root.join("t/d/f"), vec![0u8; data.len()]).expect("rewrite");
        assert_eq!(session.read(&first), None);
    }

    #[test]
    fn stale_places_are_dropped_once_found_in_one_write() {
        let tmp = tempfile::TempDir::new().expect("temp dir");
        let root = tmp.path().join("root");
        let data: Vec<u8> = (0..200_000u32).flat_map(|n| n.wrapping_mul(2_654_435_761).to_le_bytes()).collect();
        for tree in ["t", "u"] {
            std::fs::create_dir_all(root.join(tree)).expect("mkdir");
            std::fs::write(root.join(tree).join("f"), &data).expect("write");
        }
        let index = Arc::new(SharedIndex::open(&tmp.path().join("clients/x.redb"), &root).expect("open"));
        let session = SharedSession::new(index.clone());
        let digest = digest_bytes(&data);
        let path = rel("f");
        for tree in ["t", "u"] {
            session.record(&rel(tree), std::iter::once((&path, &digest))).expect("record");
        }
        let trees = |index: &SharedIndex, chunk: &ChunkRef| -> Vec<String> {
            let locs = index.locations(&chunk.id).expect("locations");
            let mut trees: Vec<String> =
                locs.into_iter().filter_map(|(_, loc)| Some(String::from_utf8_lossy(loc?.tree.as_bytes()).into()))
                    .collect();
            trees.sort();
            trees
        };
        let (first, second) = (digest.chunks[0], digest.chunks[1]);
        assert_eq!(trees(&index, &first), ["t", "u"]);

        // t/f goes: whichever place is tried first, reads find u's copy.
        std::fs::remove_file(root.join("t/f")).expect("remove");
        for chunk in [first, second] {
            let bytes = session.read(&chunk).expect("u still holds it");
            assert_eq!(ChunkId::of(&bytes), chunk.id);
        }
        // With u/f moved away too, a read meets every place, all stale;
        // they are held for the next write, not written chunk by chunk.
        std::fs::rename(root.join("u/f"), root.join("u/g")).expect("rename");
        assert_eq!(session.read(&first), None);
        assert_eq!(session.read(&second), None);
        assert_eq!(trees(&index, &first), ["t", "u"], "removed before the batch's write");

        // The next record removes them in its own transaction, before it
        // records u/f (back in place) again: t's go, u's stay.
        std::fs::rename(root.join("u/g"), root.join("u/f")).expect("rename back");
        session.record(&rel("u"), std::iter::once((&path, &digest))).expect("record");
        for chunk in [first, second] {
            assert_eq!(trees(&index, &chunk), ["u"], "t's stale place kept or u's place recorded again lost");
        }
        assert_eq!(session.read(&first).map(|b| ChunkId::of(&b)), Some(first.id));

        // Found stale with no later record: removed when the session ends.
        std::fs::remove_file(root.join("u/f")).expect("remove");
        assert_eq!(session.read(&first), None);
        assert_eq!(trees(&index, &first), ["u"]);
        drop(session);
        assert!(trees(&index, &first).is_empty(), "stale places survived the session's end");
        assert_eq!(trees(&index, &second), ["u"], "a place never read was removed");
        assert_eq!(index.contains_all(&[first.id, second.id]).expect("contains"), vec![false, true]);
    }
}
