//! Rebuilding one file in a temporary beside its final name: chunks
//! copied from local files or received, links, symlinks, replacements.

use std::collections::HashMap;
use std::fs::{self, File};
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use filetime::FileTime;

use super::base::{kept_in_place, kept_ranges, lay_base};
use super::batch::{exchange, Batch, Pending, Reused};
use super::partial::{verify_at, Prior};
use super::sparse::{copy_sparse, write_sparse, SourceReader};
use super::{open_nofollow, remove_entry, MirrorStore};
use crate::chunk::{ChunkRef, FileDigest};
use crate::codec::{self, EncodedChunk};
use crate::error::{Error, IoContext, Result};
use crate::fs::scan::StatKey;
use crate::fs::store::state::ChunkLoc;
use crate::hash::{ChunkId, FileHash};
use crate::manifest::{Meta, RelPath};
use crate::patch;
use crate::session::ApplyReport;

/// A chunk a file being rebuilt lacks, with an offer of old bytes for a delta.
pub(super) struct Need {
    pub(super) index: usize,
    pub(super) offset: u64,
    pub(super) chunk: ChunkRef,
    /// Where the old bytes resembling it are: file, offset, length.
    pub(super) base: Option<(PathBuf, u64, usize)>,
    /// Signature of those old bytes, as offered to the sender.
    pub(super) signature: Option<patch::Signature>,
}

/// A file being rebuilt in its temporary: chunks the receiver holds are
/// copied in at their offsets, the missing ones are listed as needs and
/// written where they belong as they arrive, in any order.
pub(super) struct FileBuild {
    pub(super) path: RelPath,
    pub(super) temp: PathBuf,
    /// The temporary, open while it is filled; `None` while the file waits
    /// for chunks (see [`FileBuild::with_file`]).
    pub(super) file: Option<File>,
    /// The temporary's device and inode, to know it again when reopened.
    pub(super) id: (u64, u64),
    pub(super) needs: Vec<Need>,
    /// Later occurrences of a needed chunk in the same file: (offset, the
    /// need whose bytes they copy, chunk index). Each missing chunk is
    /// fetched once.
    pub(super) repeats: Vec<(u64, usize, usize)>,
    /// Whether the state database holds this partial's chunk list.
    pub(super) digest_recorded: bool,
    /// Bytes verified since the last checkpoint.
    pub(super) unsynced: u64,
    /// Whether chunks were laid from the old version on its record's word
    /// (see `base`): checked by the whole-file hash only.
    pub(super) on_old: bool,
}

impl FileBuild {
    /// The build of `path` in `temp`, holding every chunk of `digest` but
    /// `needs` and their `repeats`, and what filling it reused.
    fn filled(
        path: &RelPath,
        temp: &Path,
        file: File,
        (needs, repeats): (Vec<Need>, Vec<(u64, usize, usize)>),
        digest: &FileDigest,
        on_old: bool,
    ) -> Result<(FileBuild, Reused)> {
        let id = file.metadata().map(|stat| (stat.dev(), stat.ino())).at(temp)?;
        let missing = needs.iter().map(|n| n.chunk.len).chain(repeats.iter().map(|&(_, n, _)| needs[n].chunk.len));
        let reused = Reused {
            chunks: (digest.chunks.len() - needs.len() - repeats.len()) as u64,
            bytes: digest.size.saturating_sub(missing.map(u64::from).sum::<u64>()),
        };
        let (path, temp, file) = (path.clone(), temp.to_path_buf(), Some(file));
        let build = FileBuild { path, temp, file, id, needs, repeats, digest_recorded: false, unsynced: 0, on_old };
        Ok((build, reused))
    }

    /// Runs `f` on the temporary: the open one, or the temporary reopened
    /// for this call only.
    pub(super) fn with_file<T>(&self, f: impl FnOnce(&File) -> std::io::Result<T>) -> Result<T> {
        match &self.file {
            Some(file) => f(file).at(&self.temp),
            None => f(&reopen_temp(&self.temp, self.id).at(&self.temp)?).at(&self.temp),
        }
    }
}

/// Whether chunk `i`, at `offset` of the partial being built on, was
/// verified by an earlier run and still hashes right: it is already where
/// it belongs.
fn held_in_place(prior: &Prior, file: &File, i: usize, offset: u64, chunk: &ChunkRef) -> bool {
    matches!(prior, Prior::InPlace(held) if held.get(i) == Some(&true)) && verify_at(file, offset, chunk.len, &chunk.id)
}

/// Opens the temporary at `temp` again, never through a symlink, and only
/// if it is still the file created there (`id`: device and inode): bytes
/// for a file in flight never land anywhere else.
pub(super) fn reopen_temp(temp: &Path, id: (u64, u64)) -> std::io::Result<File> {
    let file = open_nofollow(temp, true, rustix::fs::OFlags::empty())?;
    let stat = file.metadata()?;
    if (stat.dev(), stat.ino()) != id {
        return Err(std::io::Error::other("the temporary was replaced while its file was in flight"));
    }
    Ok(file)
}

impl MirrorStore {
    /// Starts rebuilding `path`: opens its partial (what an earlier run left,
    /// see `partial`), copies in every chunk found locally (re-hashed on
    /// read), and lists the others with signatures of the old bytes found by
    /// content next to them. The file joins the batch when it is complete
    /// ([`MirrorStore::finish_file`]): until then an interrupted session
    /// keeps it as a partial.
    pub(super) fn begin_file(
        &mut self,
        path: &RelPath,
        digest: &FileDigest,
        batch: &Batch,
        report: &mut ApplyReport,
    ) -> Result<FileBuild> {
        self.step()?;
        self.unlock_parent(path);
        let (temp, file, prior, recorded) = self.open_build(path, digest)?;
        crate::crashpoint::hit("store.temp");
        let filled = self.fill_temp(path, digest, batch, file, &temp, &prior).and_then(|(mut build, reused)| {
            build.digest_recorded = recorded;
            self.retire_lender(&build, &prior)?;
            Ok((build, reused))
        });
        let (build, reused) = match filled {
            Ok(filled) => filled,
            Err(e) => {
                // Half-built and unrecorded: it never joins the batch, whose
                // commit would rename it into place.
                let _ = fs::remove_file(&temp);
                return Err(e);
            }
        };
        report.chunks_reused += reused.chunks;
        report.bytes_reused += reused.bytes;
        Ok(build)
    }

    /// Sizes the temporary `file` and copies in the chunks found locally
    /// (counted in the returned [`Reused`]): those `prior` holds verified,
    /// then the batch's and the tree's; the rest become needs.
    pub(super) fn fill_temp(
        &self,
        path: &RelPath,
        digest: &FileDigest,
        batch: &Batch,
        file: File,
        temp: &Path,
        prior: &Prior,
    ) -> Result<(FileBuild, Reused)> {
        let laid = self.lay_old_version(path, digest, &file, temp, prior)?;
        let mut reader = SourceReader::default();
        let index = self.db.chunks()?;
        let mut needs: Vec<Need> = Vec::new();
        let mut needed: HashMap<ChunkId, usize> = HashMap::new();
        let mut repeats = Vec::new();
        // Chunks this file holds verified already, to copy to later places.
        let mut own: HashMap<ChunkId, (PathBuf, u64, u32)> = HashMap::new();
        // The last chunk found locally: anchors where the old bytes of the
        // next missing chunk are, even after insertions shifted everything.
        let mut anchor: Option<(ChunkLoc, u64)> = None;
        let mut offset = 0u64;
        for (i, chunk) in digest.chunks.iter().enumerate() {
            let here = offset;
            offset += u64::from(chunk.len);
            if let Some(&need) = needed.get(&chunk.id) {
                repeats.push((here, need, i));
                continue;
            }
            let laid_here = laid.get(i) == Some(&true);
            if laid_here || held_in_place(prior, &file, i, here, chunk) {
                own.entry(chunk.id).or_insert((temp.to_path_buf(), here, chunk.len));
                if laid_here {
                    anchor = Some((ChunkLoc { path: path.clone(), offset: here, len: chunk.len }, offset));
                }
                continue;
            }
            let lent = if let Prior::Lender(chunks) = prior { chunks.get(&chunk.id) } else { None };
            let local = match own.get(&chunk.id).or(lent).or(batch.received.get(&chunk.id)) {
                Some((from, at, len)) => reader.read_verified(from, *at, *len, &chunk.id),
                None => self.read_local(&index, chunk, &mut reader).map(|(bytes, loc)| {
                    anchor = loc.map(|loc| (loc, offset)).or(anchor.take());
                    bytes
                }),
            };
            match local {
                Some(bytes) => write_sparse(&file, &bytes, here).at(temp)?,
                None => {
                    needed.insert(chunk.id, needs.len());
                    needs.push(self.need(path, (i, here, chunk), anchor.as_ref(), &mut reader));
                }
            }
        }
        FileBuild::filled(path, temp, file, (needs, repeats), digest, !laid.is_empty())
    }

    /// Sizes the new temporary `file` and, building afresh on a trusted
    /// old version of `path`, lays in the chunks that stay where they were
    /// (see `base`). Returns which chunks were laid; empty if none.
    fn lay_old_version(
        &self,
        path: &RelPath,
        digest: &FileDigest,
        file: &File,
        temp: &Path,
        prior: &Prior,
    ) -> Result<Vec<bool>> {
        if matches!(prior, Prior::Fresh) {
            if let Some((old, old_digest)) = self.trusted_old(path)? {
                let kept = kept_in_place(&old_digest, digest);
                let ranges = kept_ranges(digest, &kept);
                if !ranges.is_empty() && lay_base(&old, file, digest.size, &ranges).at(temp)? {
                    return Ok(kept);
                }
            }
        }
        file.set_len(digest.size).at(temp)?;
        Ok(Vec::new())
    }

    /// A need for chunk number `i` at offset `here`, with a signature of
    /// the old bytes that most likely resemble it.
    fn need(
        &self,
        path: &RelPath,
        (i, here, chunk): (usize, u64, &ChunkRef),
        anchor: Option<&(ChunkLoc, u64)>,
        reader: &mut SourceReader,
    ) -> Need {
        let base = self.base_region(path, here, chunk.len, anchor);
        let signature = base
            .as_ref()
            .and_then(|(file, at, len)| reader.read_range(file, *at, *len))
            .filter(|bytes| !bytes.is_empty())
            .map(|bytes| patch::signature(&bytes));
        Need { index: i, offset: here, chunk: *chunk, base, signature }
    }

    /// The old bytes a need's signature describes, read again (they are not
    /// kept in memory while the chunk is in flight).
    pub(super) fn base_bytes(&self, need: &Need) -> Option<Vec<u8>> {
        let (file, at, len) = need.base.as_ref()?;
        SourceReader::default().read_range(file, *at, *len)
    }

    /// Decodes a received chunk for need `n` of `build` and writes it in
    /// place. `Ok(false)` means a delta did not rebuild the chunk (a false
    /// signature match, or old bytes that changed since): fetch it again
    /// without a base.
    pub(super) fn put_chunk(
        &self,
        build: &FileBuild,
        n: usize,
        encoded: &EncodedChunk,
        with_base: bool,
    ) -> Result<bool> {
        let need = &build.needs[n];
        let base = if with_base { self.base_bytes(need) } else { None };
        match codec::decode(encoded, &need.chunk.id, base.as_deref()) {
            Ok(bytes) => {
                build.with_file(|f| write_sparse(f, &bytes, need.offset))?;
                crate::crashpoint::hit("store.chunk");
                Ok(true)
            }
            Err(_) if with_base && encoded.codec == codec::Codec::Delta => Ok(false),
            Err(source) => Err(Error::Chunk {
                path: self.abs(&build.path),
                index: need.index,
                chunk: need.chunk.id,
                cause: Box::new(source),
            }),
        }
    }

    /// Fills repeats, checks the whole-file hash, sets mode and mtime: the
    /// temporary is then ready for the batch's rename.
    pub(super) fn finish_file(
        &self,
        build: FileBuild,
        meta: &Meta,
        digest: &FileDigest,
        batch: &mut Batch,
    ) -> Result<()> {
        let reopened;
        let file = match &build.file {
            Some(file) => file,
            None => {
                reopened = reopen_temp(&build.temp, build.id).at(&build.temp)?;
                &reopened
            }
        };
        for &(offset, n, _) in &build.repeats {
            let need = &build.needs[n];
            let mut bytes = vec![0u8; need.chunk.len as usize];
            file.read_exact_at(&mut bytes, need.offset).at(&build.temp)?;
            write_sparse(file, &bytes, offset).at(&build.temp)?;
        }
        // Chunks landed in any order, so the whole-file hash is taken from
        // the temporary itself (page cache), which also proves what will be
        // renamed into place.
        let mut hasher = blake3::Hasher::new();
        let mut piece = vec![0u8; 1 << 20];
        let mut at = 0u64;
        while at < digest.size {
            let len = piece.len().min((digest.size - at) as usize);
            file.read_exact_at(&mut piece[..len], at).at(&build.temp)?;
            hasher.update(&piece[..len]);
            at += len as u64;
        }
        if FileHash::from(hasher.finalize()) != digest.hash {
            if build.on_old {
                self.distrust_old(&build.path)?;
            }
            return Err(Error::FileMismatch { path: self.abs(&build.path) });
        }
        let applied = self.apply_meta(&build.temp, meta)?;
        batch.keep_meta(&build.path, applied, meta);
        for need in &build.needs {
            batch.received.insert(need.chunk.id, (build.temp.clone(), need.offset, need.chunk.len));
        }
        let target = self.abs(&build.path);
        batch.pending.push(Pending { temp: build.temp, target, path: build.path, digest: Some(digest.clone()) });
        batch.files += 1;
        batch.bytes += digest.size;
        crate::crashpoint::hit("store.sealed");
        Ok(())
    }

    /// Makes `path` another name of the file at `target` in a temporary,
    /// renamed into place at the commit, once `target` is known to hold
    /// `size` bytes hashing to `hash`.
    pub(super) fn build_link(
        &mut self,
        path: &RelPath,
        target: &RelPath,
        size: u64,
        hash: &FileHash,
        batch: &mut Batch,
    ) -> Result<()> {
        self.check_path(target)?;
        self.step()?;
        let from = self.abs(target);
        let refused = || Error::LinkTarget { path: self.abs(path), target: from.clone() };
        let digest = match batch.linked.get(target) {
            Some(digest) if digest.size == size && digest.hash == *hash => Some(digest.clone()),
            Some(_) => return Err(refused()),
            None => self.verify_target(target, &from, size, hash)?.ok_or_else(refused)?,
        };
        self.unlock_parent(path);
        let temp = self.temp_beside(path);
        // Not following a symlink: one at `target` failed the check above.
        match fs::hard_link(&from, &temp) {
            Ok(()) => {
                crate::crashpoint::hit("store.link");
                batch.pending.push(Pending { temp, target: self.abs(path), path: path.clone(), digest: None });
                if let Some(digest) = digest {
                    batch.linked.insert(target.clone(), digest);
                }
            }
            // The receiver's tree spans file systems where the sender's did
            // not, or the file has all the names it may have: a copy of its
            // own still gives the name its content (synced with the batch).
            Err(e)
                if [rustix::io::Errno::XDEV, rustix::io::Errno::MLINK]
                    .map(|n| Some(n.raw_os_error()))
                    .contains(&e.raw_os_error()) =>
            {
                let copied = copy_sparse(&from, &temp).and_then(|()| {
                    let mtime = FileTime::from_last_modification_time(&fs::symlink_metadata(&from)?);
                    filetime::set_file_mtime(&temp, mtime)
                });
                if let Err(e) = copied {
                    let _ = fs::remove_file(&temp);
                    return Err(Error::io(temp, e));
                }
                batch.pending.push(Pending { temp, target: self.abs(path), path: path.clone(), digest });
            }
            Err(e) => return Err(Error::io(temp, e)),
        }
        Ok(())
    }

    /// Whether `target` is a regular file of `size` bytes hashing to `hash`:
    /// by its record while its stat key matches, else by reading it.
    /// `Some(None)`: it is, with no record to keep.
    pub(super) fn verify_target(
        &self,
        target: &RelPath,
        abs: &Path,
        size: u64,
        hash: &FileHash,
    ) -> Result<Option<Option<FileDigest>>> {
        let lstat = match fs::symlink_metadata(abs) {
            Ok(lstat) if lstat.is_file() && lstat.len() == size => lstat,
            _ => return Ok(None),
        };
        if let Some(record) = self.db.file(target)? {
            if record.stat == StatKey::of(&lstat) {
                let same = record.digest.size == size && record.digest.hash == *hash;
                return Ok(same.then_some(Some(record.digest)));
            }
        }
        let mut hasher = blake3::Hasher::new();
        let read = File::open(abs).and_then(|mut file| std::io::copy(&mut file, &mut hasher));
        Ok((read.at(abs)? == size && FileHash::from(hasher.finalize()) == *hash).then_some(None))
    }

    /// Replaces the file or symlink at `path` by a new directory of mode
    /// `meta`: made at a temporary name, exchanged with the old entry, which
    /// is then removed. The path names the old entry or the new directory
    /// at every instant.
    pub(super) fn replace_with_dir(&mut self, path: &RelPath, meta: &Meta) -> Result<()> {
        let abs = self.abs(path);
        let temp = self.temp_beside(path);
        fs::create_dir(&temp).at(&temp)?;
        // Owner-writable until the final SetMeta, so the batch can fill it.
        let mode = fs::Permissions::from_mode(self.policy.mode(meta.mode) | 0o700);
        let exchanged = fs::set_permissions(&temp, mode).at(&temp).and_then(|()| {
            crate::crashpoint::hit("store.exchange");
            exchange(&temp, &abs).at(&abs)
        });
        match exchanged {
            Ok(true) => {
                crate::crashpoint::hit("store.exchanged");
                remove_entry(&temp)
            }
            // No RENAME_EXCHANGE here: delete, then rename, as before; a
            // crash between the two leaves the path absent until next run.
            Ok(false) => remove_entry(&abs).and_then(|()| fs::rename(&temp, &abs).at(&abs)),
            Err(e) => {
                let _ = fs::remove_dir(&temp);
                Err(e)
            }
        }
    }

    pub(super) fn build_symlink(
        &mut self,
        path: &RelPath,
        target: &[u8],
        meta: &Meta,
        batch: &mut Batch,
    ) -> Result<()> {
        use std::os::unix::ffi::OsStrExt;
        self.step()?;
        self.unlock_parent(path);
        let temp = self.temp_beside(path);
        std::os::unix::fs::symlink(std::ffi::OsStr::from_bytes(target), &temp).at(&temp)?;
        crate::crashpoint::hit("store.symlink");
        batch.pending.push(Pending { temp: temp.clone(), target: self.abs(path), path: path.clone(), digest: None });
        let applied = self.apply_meta(&temp, meta)?;
        batch.keep_meta(path, applied, meta);
        Ok(())
    }

    /// Reads `chunk` from some file that holds it, verifying its hash: in
    /// this tree (with where), else in another tree of the same client.
    pub(super) fn read_local(
        &self,
        index: &crate::fs::store::state::ChunkIndex<'_>,
        chunk: &ChunkRef,
        reader: &mut SourceReader,
    ) -> Option<(Vec<u8>, Option<ChunkLoc>)> {
        let locations = index.locations(&chunk.id).ok()?;
        for loc in locations {
            if loc.len != chunk.len {
                continue;
            }
            if let Some(bytes) = reader.read_verified(&self.abs(&loc.path), loc.offset, loc.len, &chunk.id) {
                return Some((bytes, Some(loc)));
            }
        }
        // Not in this tree: perhaps in another of the same client's. No
        // anchor from there (deltas draw on this tree's old bytes only).
        let (shared, _) = self.shared.as_ref()?;
        shared.read(chunk).map(|bytes| (bytes, None))
    }

    /// Where the receiver's old bytes most likely to resemble a missing
    /// chunk at `offset` of `path` are: just after the anchor chunk (found by
    /// content), or at the same offset of the old version of the same file.
    pub(super) fn base_region(
        &self,
        path: &RelPath,
        offset: u64,
        len: u32,
        anchor: Option<&(ChunkLoc, u64)>,
    ) -> Option<(PathBuf, u64, usize)> {
        let (file, start) = match anchor {
            Some((loc, anchor_end)) => {
                (&loc.path, loc.offset + u64::from(loc.len) + offset.saturating_sub(*anchor_end))
            }
            None if self.manifest.get(path).is_some_and(|e| e.file().is_some()) => (path, offset),
            None => return None,
        };
        // Some slack before and after (edits shift bytes), with the block grid
        // of the signature aligned on the predicted start of the old bytes,
        // so an unshifted chunk matches from its first byte.
        let len = u64::from(len);
        let block = u64::from(patch::block_len_for((len + len / 8 + len / 4).min(u64::from(u32::MAX)) as u32));
        let lo = start.saturating_sub((len / 8).next_multiple_of(block));
        let hi = start + len + len / 4;
        Some((self.abs(file), lo, (hi - lo) as usize))
    }
}
