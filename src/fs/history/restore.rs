//! Reading a snapshot's chunks for a restore: from the history store if
//! it holds them, else from the mirror tree where the state database says
//! a file holds them; always verified against their id.

use std::borrow::Borrow;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::History;
use crate::chunk::ChunkRef;
use crate::error::{Error, Result};
use crate::fs::store::state::ChunkLookup;
use crate::hash::ChunkId;
use crate::manifest::RelPath;
use crate::session::ChunkReader;

/// A [`ChunkReader`] over one snapshot: the history store, then the mirror
/// (the file at the same path first, then wherever the state database says
/// the chunk sits).
pub struct SnapshotReader<H: Borrow<History> = History> {
    history: H,
    /// The mirror tree the snapshot was taken of.
    mirror: PathBuf,
    /// Where the manifest being sent starts within the tree (a subtree's
    /// or a single file's restore).
    prefix: RelPath,
    chunks: Option<ChunkLookup>,
}

impl<H: Borrow<History>> SnapshotReader<H> {
    /// Reads from `history`, then from the mirror tree at `mirror` through
    /// its state database `state_db` (opened read-only; a missing one means
    /// every chunk must be in the history store or at its old place).
    ///
    /// The database is shared with pushes to the mirror: while one holds
    /// it the reader cannot open, and while the reader is open a push
    /// waits; keep readers for the length of one restore.
    ///
    /// # Errors
    /// A state database that cannot be opened; busy ([`Error::is_busy`])
    /// while a push holds it: try again when the push ends, or read
    /// without it ([`SnapshotReader::without_index`]).
    pub fn new(history: H, mirror: &Path, state_db: &Path) -> Result<SnapshotReader<H>> {
        let chunks = ChunkLookup::open(state_db)?;
        Ok(SnapshotReader { history, mirror: mirror.to_path_buf(), prefix: RelPath::root(), chunks })
    }

    /// A reader that finds a chunk the store lacks only where the snapshot
    /// had it (the same file and offset): what a restore can do while a
    /// push holds the state database.
    pub fn without_index(history: H, mirror: &Path) -> SnapshotReader<H> {
        SnapshotReader { history, mirror: mirror.to_path_buf(), prefix: RelPath::root(), chunks: None }
    }

    /// The manifest read from starts at `prefix` within the tree.
    pub fn with_prefix(mut self, prefix: RelPath) -> Self {
        self.prefix = prefix;
        self
    }

    /// The chunk `id` from the mirror file at `path` and `offset` (where
    /// the snapshot had it, and where an unchanged file still has it), else
    /// from a mirror file the state database names; each copy is re-hashed,
    /// and one that no longer matches is passed over.
    fn read_mirror(&self, path: &RelPath, offset: u64, id: &ChunkId, len: u32) -> Result<Option<Vec<u8>>> {
        let in_tree = if self.prefix.is_root() { Ok(path.clone()) } else { self.prefix.join(path.as_bytes()) };
        if let Some(bytes) = in_tree.ok().and_then(|p| read_verified(&p.to_path(&self.mirror), offset, id, len)) {
            return Ok(Some(bytes));
        }
        let Some(chunks) = &self.chunks else { return Ok(None) };
        for loc in chunks.locations(id)? {
            if loc.len != len {
                continue;
            }
            if let Some(bytes) = read_verified(&loc.path.to_path(&self.mirror), loc.offset, id, len) {
                return Ok(Some(bytes));
            }
        }
        Ok(None)
    }
}

fn read_verified(path: &Path, offset: u64, id: &ChunkId, len: u32) -> Option<Vec<u8>> {
    let mut bytes = vec![0u8; len as usize];
    File::open(path).and_then(|f| f.read_exact_at(&mut bytes, offset)).ok()?;
    (ChunkId::of(&bytes) == *id).then_some(bytes)
}

impl<H: Borrow<History>> ChunkReader for SnapshotReader<H> {
    type Error = Error;

    fn read(&mut self, path: &RelPath, offset: u64, chunk: ChunkRef) -> Result<Vec<u8>> {
        let found = match self.history.borrow().read_chunk(&chunk.id) {
            Ok(Some(bytes)) if bytes.len() == chunk.len as usize => Some(bytes),
            Ok(_) => None,
            // A damaged or missing pack: the mirror may still hold the chunk.
            Err(e) => {
                tracing::warn!(file = %path, chunk = %chunk.id, error = %e, "history store read failed; trying the mirror");
                None
            }
        };
        match found {
            Some(bytes) => Ok(bytes),
            None => self
                .read_mirror(path, offset, &chunk.id, chunk.len)?
                .ok_or_else(|| Error::HistoryDamaged { path: PathBuf::from(path.to_string()), chunk: chunk.id }),
        }
    }
}
