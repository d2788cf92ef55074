//! Reading a snapshot's chunks for a restore: from the history store if
//! it holds them, else from the mirror tree where the state database says
//! a file holds them; always verified against their id.

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

/// A [`ChunkReader`] over one snapshot: the history store, then the mirror.
pub struct SnapshotReader<'a> {
    history: &'a History,
    mirror: PathBuf,
    chunks: Option<ChunkLookup>,
}

impl<'a> SnapshotReader<'a> {
    /// Reads from `history`, then from the mirror tree at `mirror` through
    /// its state database `state_db` (opened read-only; a missing one means
    /// every chunk must be in the history store).
    ///
    /// The database is shared with pushes to the mirror: while one holds
    /// it the reader cannot open, and while the reader is open a push
    /// finds it busy; keep readers for the length of one restore.
    ///
    /// # Errors
    /// A state database that cannot be opened; busy ([`Error::is_busy`])
    /// while a push holds it: try again when the push ends.
    pub fn new(history: &'a History, mirror: &Path, state_db: &Path) -> Result<SnapshotReader<'a>> {
        Ok(SnapshotReader { history, mirror: mirror.to_path_buf(), chunks: ChunkLookup::open(state_db)? })
    }

    /// The chunk `id` from a mirror file the state database names, if one
    /// still holds it (files change after they are recorded: each copy is
    /// re-hashed, and one that no longer matches is passed over).
    fn read_mirror(&self, id: &ChunkId, len: u32) -> Result<Option<Vec<u8>>> {
        let Some(chunks) = &self.chunks else { return Ok(None) };
        for loc in chunks.locations(id)? {
            if loc.len != len {
                continue;
            }
            let path = loc.path.to_path(&self.mirror);
            let mut bytes = vec![0u8; len as usize];
            let read = File::open(&path).and_then(|f| f.read_exact_at(&mut bytes, loc.offset));
            if read.is_ok() && ChunkId::of(&bytes) == *id {
                return Ok(Some(bytes));
            }
        }
        Ok(None)
    }
}

impl ChunkReader for SnapshotReader<'_> {
    type Error = Error;

    fn read(&mut self, path: &RelPath, _offset: u64, chunk: ChunkRef) -> Result<Vec<u8>> {
        let found = match self.history.read_chunk(&chunk.id) {
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
                .read_mirror(&chunk.id, chunk.len)?
                .ok_or_else(|| Error::HistoryDamaged { path: PathBuf::from(path.to_string()), chunk: chunk.id }),
        }
    }
}
