//! The sender's source on disk: chunk bytes read from a source tree.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use crate::chunk::ChunkRef;
use crate::error::{Error, IoContext, Result};
use crate::hash::ChunkId;
use crate::manifest::RelPath;
use crate::session::ChunkReader;

/// Reads chunks from a source tree on disk, keeping the last file open.
pub struct FileReader {
    root: PathBuf,
    open: Option<(RelPath, File)>,
}

impl FileReader {
    /// A reader of the tree at `root`.
    pub fn new(root: PathBuf) -> Self {
        FileReader { root, open: None }
    }
}

impl ChunkReader for FileReader {
    type Error = Error;

    /// # Errors
    /// [`Error::SourceChanged`] when the file no longer holds the chunk.
    fn read(&mut self, path: &RelPath, offset: u64, chunk: ChunkRef) -> Result<Vec<u8>> {
        let abs = path.to_path(&self.root);
        if self.open.as_ref().is_none_or(|(p, _)| p != path) {
            self.open = Some((path.clone(), File::open(&abs).at(&abs)?));
        }
        let (_, file) = self.open.as_ref().expect("invariant: opened just above");
        let mut bytes = vec![0u8; chunk.len as usize];
        crate::crashpoint::hit("sender.chunk");
        match file.read_exact_at(&mut bytes, offset) {
            Ok(()) if ChunkId::of(&bytes) == chunk.id => Ok(bytes),
            Ok(()) => Err(Error::SourceChanged { path: abs }),
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(Error::SourceChanged { path: abs }),
            Err(e) => Err(Error::io(abs, e)),
        }
    }
}
