//! Sparse I/O: zero runs stay holes, and chunk bytes read from local
//! files are verified against their ids.

use std::fs::{self, File};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::hash::ChunkId;

/// The block holes are made of: a piece of a write that lies within one
/// such block of the file (aligned) and holds only zeros is not written.
/// 4 KiB is the block of the common filesystems; on one with larger blocks
/// a block that is only partly zero is allocated, as it must be.
pub(super) const HOLE_BLOCK: u64 = 4096;

/// Writes `bytes` at `offset` of a temporary, leaving out the pieces that
/// are all zeros within one aligned [`HOLE_BLOCK`], so that zero runs stay
/// holes (a 200 MB disk image with 8 KB of data takes 8 KB, not 200 MB).
///
/// Sound because temporaries are new files sized by `set_len`, which read
/// as zeros wherever nothing was written, and every write to a range of one
/// carries that range's chunk bytes, verified against their id: no range
/// ever held other bytes that a skipped zero piece would have to clear.
/// The whole-file hash taken before the rename checks it all anyway.
pub(super) fn write_sparse(file: &File, bytes: &[u8], offset: u64) -> std::io::Result<()> {
    // Start (in `bytes`) of the data not yet written.
    let mut data: Option<usize> = None;
    let mut at = 0usize;
    while at < bytes.len() {
        let pos = offset + at as u64;
        let to_boundary = HOLE_BLOCK - pos % HOLE_BLOCK;
        let end = at + (bytes.len() - at).min(to_boundary as usize);
        if is_zero(&bytes[at..end]) {
            if let Some(start) = data.take() {
                file.write_all_at(&bytes[start..at], offset + start as u64)?;
            }
        } else if data.is_none() {
            data = Some(at);
        }
        at = end;
    }
    match data {
        Some(start) => file.write_all_at(&bytes[start..], offset + start as u64),
        None => Ok(()),
    }
}

/// Copies the file `from` to the new file `to` with its permission bits,
/// leaving zero blocks as holes (a plain copy would allocate a sparse
/// file's holes), a bounded buffer at a time.
pub(super) fn copy_sparse(from: &Path, to: &Path) -> std::io::Result<()> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let mut source = File::open(from)?;
    let meta = source.metadata()?;
    let target = fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(to)?;
    target.set_len(meta.len())?;
    let mut buffer = vec![0u8; 1 << 20];
    let mut offset = 0u64;
    loop {
        let read = source.read(&mut buffer)?;
        if read == 0 {
            break;
        }
        write_sparse(&target, &buffer[..read], offset)?;
        offset += read as u64;
    }
    if offset != meta.len() {
        return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "file changed while being copied"));
    }
    fs::set_permissions(to, meta.permissions())
}

/// Whether `bytes` are all zero; the inner OR has no early exit, so it is
/// vectorised.
pub(super) fn is_zero(bytes: &[u8]) -> bool {
    bytes.chunks(64).all(|piece| piece.iter().fold(0u8, |acc, &b| acc | b) == 0)
}

/// Reads byte ranges of receiver files, keeping the last file open.
#[derive(Default)]
pub(super) struct SourceReader {
    pub(super) open: Option<(PathBuf, File)>,
}

impl SourceReader {
    pub(super) fn file(&mut self, path: &Path) -> Option<&File> {
        if self.open.as_ref().is_none_or(|(p, _)| p != path) {
            let file = File::open(path).ok()?;
            self.open = Some((path.to_path_buf(), file));
        }
        self.open.as_ref().map(|(_, f)| f)
    }

    /// Up to `len` bytes at `offset` (fewer at end of file).
    pub(super) fn read_range(&mut self, path: &Path, offset: u64, len: usize) -> Option<Vec<u8>> {
        let file = self.file(path)?;
        let mut buf = vec![0u8; len];
        let mut filled = 0;
        while filled < len {
            match file.read_at(&mut buf[filled..], offset + filled as u64) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => return None,
            }
        }
        buf.truncate(filled);
        Some(buf)
    }

    /// Exactly `len` bytes at `offset`, only if they hash to `id`: a file
    /// changed behind our back yields `None`, never wrong bytes.
    pub(super) fn read_verified(&mut self, path: &Path, offset: u64, len: u32, id: &ChunkId) -> Option<Vec<u8>> {
        let bytes = self.read_range(path, offset, len as usize)?;
        (bytes.len() == len as usize && ChunkId::of(&bytes) == *id).then_some(bytes)
    }
}
