//! A plan applied step by step as a session delivers it, several files
//! in flight, chunks shared between them.

use std::borrow::BorrowMut;
use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::Path;

use super::batch::Batch;
use super::build::{FileBuild, Need};
use super::partial::{CHECKPOINT_BYTES, MIN_PARTIAL_BYTES};
use super::sparse::write_sparse;
use super::{remove_entry, MirrorStore};
use crate::chunk::FileDigest;
use crate::codec::{self, EncodedChunk};
use crate::error::{Error, IoContext, Result};
use crate::fs::scan::{FileRecord, StatKey};
use crate::hash::ChunkId;
use crate::manifest::{Manifest, Meta, RelPath};
use crate::patch;
use crate::plan::Op;
use crate::session::{ApplyReport, Destination, FailedEntry, NeedInfo, Put};

fn need_info(n: usize, need: &Need) -> NeedInfo {
    NeedInfo { need: n, index: need.index, offset: need.offset, chunk: need.chunk, signature: need.signature.clone() }
}

struct InFlight {
    build: FileBuild,
    meta: Meta,
    digest: FileDigest,
    stored: Vec<bool>,
}

/// A plan applied step by step as it arrives, with several files in flight
/// whose chunks arrive in any order: what a wire session drives. Dropping it
/// unfinished keeps the verified chunks of files in flight as partials
/// (see `partial`) and removes the other temporaries of what was not
/// committed.
pub struct Receiving<S: BorrowMut<MirrorStore> = MirrorStore> {
    store: S,
    batch: Batch,
    report: ApplyReport,
    removals: Vec<RelPath>,
    in_flight: HashMap<u32, InFlight>,
    /// Each chunk needed by files in flight, by the first need that asked
    /// for it: (file, need). Other files needing it wait for that one
    /// instead of fetching it again.
    homes: HashMap<ChunkId, (u32, usize)>,
    /// Needs waiting for a home need's bytes: home -> followers.
    followers: HashMap<(u32, usize), Vec<(u32, usize)>>,
}

impl<S: BorrowMut<MirrorStore>> Receiving<S> {
    /// Starts applying a plan step by step on `store` (owned or borrowed).
    pub fn new(mut store: S) -> Self {
        store.borrow_mut().steps = 0;
        Receiving {
            store,
            batch: Batch::default(),
            report: ApplyReport::default(),
            removals: Vec::new(),
            in_flight: HashMap::new(),
            homes: HashMap::new(),
            followers: HashMap::new(),
        }
    }

    /// The store being written.
    #[cfg(feature = "internals")]
    pub fn store(&self) -> &MirrorStore {
        self.store.borrow()
    }

    /// Files begun and not yet completed or abandoned.
    #[cfg(feature = "internals")]
    pub fn files_in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Creates directory `path` (owner-writable until its `SetMeta`), or
    /// swaps it in for the file or symlink standing there.
    fn make_dir(&mut self, path: &RelPath, meta: &Meta) -> Result<()> {
        let store = self.store.borrow_mut();
        store.step()?;
        store.unlock_parent(path);
        let abs = store.abs(path);
        match fs::create_dir(&abs) {
            Ok(()) => {}
            // A real directory only: `is_dir` would follow a symlink,
            // and the chmod below would then change its target.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                if !fs::symlink_metadata(&abs).at(&abs)?.is_dir() {
                    // A file or symlink the source made a directory:
                    // replaced in one step, never absent meanwhile.
                    store.preserve(std::slice::from_ref(path), &Default::default(), true)?;
                    store.replace_with_dir(path, meta)?;
                    self.report.entries_deleted += 1;
                    // Its record goes at the end, with the deletes'.
                    self.removals.push(path.clone());
                    return Ok(());
                }
            }
            Err(e) => return Err(Error::io(abs, e)),
        }
        crate::crashpoint::hit("store.mkdir");
        // Owner-writable until the final SetMeta, so the batch can fill it.
        fs::set_permissions(&abs, fs::Permissions::from_mode(store.policy.mode(meta.mode) | 0o700)).at(&abs)
    }

    /// Removes `path` and, at the end, its records.
    fn delete(&mut self, path: &RelPath) -> Result<()> {
        // Conflicting deletes come before any write; extraneous ones
        // after all writes: commit pending files first either way.
        self.settle()?;
        let store = self.store.borrow_mut();
        store.step()?;
        store.unlock_parent(path);
        store.preserve(std::slice::from_ref(path), &Default::default(), true)?;
        crate::crashpoint::hit("store.delete");
        remove_entry(&store.abs(path))?;
        crate::crashpoint::hit("store.deleted");
        self.report.entries_deleted += 1;
        // Its records (the subtree's) are dropped from the database
        // at the end.
        self.removals.push(path.clone());
        Ok(())
    }

    /// Applies the source's metadata to `path` and refreshes its record.
    fn set_meta(&mut self, path: &RelPath, meta: &Meta) -> Result<()> {
        self.settle()?;
        let store = self.store.borrow_mut();
        store.step()?;
        let abs = store.abs(path);
        crate::crashpoint::hit("store.setmeta");
        let applied = match fs::symlink_metadata(&abs) {
            Ok(lstat) if lstat.is_file() && lstat.nlink() > 1 => {
                // Its copy is made beside it, in a directory that may be read-only.
                store.unlock_parent(path);
                store.detach(path, &abs, meta)?
            }
            _ => store.apply_meta(&abs, meta)?,
        };
        self.batch.keep_meta(path, applied, meta);
        // Its mode is the source's now, whatever it was before.
        store.unlocked.remove(&abs);
        let lstat = fs::symlink_metadata(&abs).at(&abs)?;
        // Regular files only: a directory made where a deleted file
        // stood must not inherit its record (not yet dropped), which
        // would then claim the directory holds the old file. A file
        // here was not deleted, or was written again and committed.
        if lstat.is_file() {
            if let Some(record) = store.db.file(path)? {
                let stat = StatKey::of(&lstat);
                self.batch.upserts.push((path.clone(), FileRecord { stat, digest: record.digest }));
            }
        }
        Ok(())
    }

    /// Matches the needs of a new file with the files in flight: copies the
    /// chunks they hold already, waits for the ones they asked for, and
    /// returns which needs are stored and the ones to ask for.
    fn share_needs(&mut self, file: u32, build: &FileBuild) -> Result<(Vec<bool>, Vec<NeedInfo>)> {
        let mut stored = vec![false; build.needs.len()];
        let mut needs = Vec::new();
        for (n, need) in build.needs.iter().enumerate() {
            match self.homes.get(&need.chunk.id).copied() {
                // Another file in flight holds it already: copy it now.
                Some(home) if self.is_stored(home) => {
                    let bytes = self.home_bytes(home).ok_or(Error::UnknownTransfer { file, need: n })?;
                    build.with_file(|f| write_sparse(f, &bytes, need.offset))?;
                    stored[n] = true;
                    self.report.chunks_reused += 1;
                    self.report.bytes_reused += u64::from(need.chunk.len);
                }
                // Another file asked for it: wait for those bytes.
                Some(home) => self.followers.entry(home).or_default().push((file, n)),
                None => {
                    self.homes.insert(need.chunk.id, (file, n));
                    needs.push(need_info(n, need));
                }
            }
        }
        Ok((stored, needs))
    }

    fn is_stored(&self, (file, need): (u32, usize)) -> bool {
        self.in_flight.get(&file).is_some_and(|f| f.stored.get(need) == Some(&true))
    }

    /// The bytes a stored home need wrote into its temporary, re-verified.
    fn home_bytes(&self, (file, need): (u32, usize)) -> Option<Vec<u8>> {
        let build = &self.in_flight.get(&file)?.build;
        let need = build.needs.get(need)?;
        let mut bytes = vec![0u8; need.chunk.len as usize];
        build.with_file(|f| f.read_exact_at(&mut bytes, need.offset)).ok()?;
        (ChunkId::of(&bytes) == need.chunk.id).then_some(bytes)
    }

    /// Copies a newly stored home need's bytes to the needs waiting for it;
    /// returns the files that have every chunk now.
    fn feed_followers(&mut self, home: (u32, usize)) -> Result<Vec<u32>> {
        let Some(waiting) = self.followers.remove(&home) else { return Ok(Vec::new()) };
        let bytes = self.home_bytes(home).ok_or(Error::UnknownTransfer { file: home.0, need: home.1 })?;
        let mut ready = Vec::new();
        for (file, n) in waiting {
            let Some(flight) = self.in_flight.get_mut(&file) else { continue };
            let need = &flight.build.needs[n];
            flight.build.with_file(|f| write_sparse(f, &bytes, need.offset))?;
            flight.stored[n] = true;
            self.report.chunks_reused += 1;
            self.report.bytes_reused += u64::from(need.chunk.len);
            if flight.stored.iter().all(|&s| s) {
                ready.push(file);
            }
        }
        Ok(ready)
    }

    /// Forgets `file` as a home of chunks: its waiting followers, whose bytes
    /// will not come from it now, are returned to be asked for themselves.
    fn release_homes(&mut self, file: u32) -> Vec<(u32, NeedInfo)> {
        self.homes.retain(|_, home| home.0 != file);
        let orphaned: Vec<_> = self.followers.keys().filter(|home| home.0 == file).copied().collect();
        let mut asks = Vec::new();
        for home in orphaned {
            let mut waiting = self.followers.remove(&home).unwrap_or_default().into_iter();
            // The first follower asks; the others wait for it.
            let Some((heir, n)) = waiting.find(|(f, _)| self.in_flight.contains_key(f)) else { continue };
            let Some(need) = self.in_flight.get(&heir).map(|f| &f.build.needs[n]) else { continue };
            asks.push((heir, need_info(n, need)));
            self.homes.insert(need.chunk.id, (heir, n));
            let rest: Vec<_> = waiting.filter(|(f, _)| self.in_flight.contains_key(f)).collect();
            if !rest.is_empty() {
                self.followers.insert((heir, n), rest);
            }
        }
        asks
    }

    /// Takes a temporary out of the batch and removes it.
    fn forget_temp(&mut self, temp: &Path) {
        self.batch.pending.retain(|p| p.temp != temp);
        self.batch.received.retain(|_, (t, ..)| t != temp);
        let _ = fs::remove_file(temp);
    }

    /// Renames what is built into place and records it: a commit point.
    ///
    /// # Errors
    /// The first failure; the batch's temporaries are then removed.
    ///
    /// # Panics
    /// If files are in flight (their temporaries would be renamed half-built).
    pub fn commit(&mut self) -> Result<()> {
        assert!(self.in_flight.is_empty(), "commit with files in flight");
        self.store.borrow_mut().commit(&mut self.batch, &mut self.report)
    }

    /// Before a delete or a metadata change: commits the batch if it holds
    /// entries waiting for their rename, which must be in place first.
    /// Records alone (of earlier metadata changes) wait for the next commit
    /// that renames something, up to a batch's worth: a transaction (and
    /// its fsync) per directory whose mtime changed made a delta of a
    /// source tree wait on the disk hundreds of times. Their loss in a
    /// crash costs a re-read, never a wrong record.
    fn settle(&mut self) -> Result<()> {
        let records = self.batch.upserts.len() + self.batch.metas.len();
        if !self.batch.pending.is_empty() || records >= self.store.borrow().batch_files {
            self.commit()?;
        }
        Ok(())
    }
}

impl<S: BorrowMut<MirrorStore>> Destination for Receiving<S> {
    type Error = Error;

    fn refresh(&mut self, checksum: bool) -> Result<&Manifest> {
        self.store.borrow_mut().refresh(checksum)
    }

    fn manifest(&self) -> &Manifest {
        self.store.borrow().manifest()
    }

    fn has_chunks(&self, ids: &[ChunkId]) -> Result<Vec<bool>> {
        self.store.borrow().has_chunks(ids)
    }

    /// Applies a step that carries no file data: mkdir, symlink, delete or
    /// metadata. Deletes and metadata commit the files built so far first,
    /// so none may be in flight then.
    ///
    /// # Errors
    /// The step's failure; files committed before it stay committed.
    ///
    /// # Panics
    /// On a `WriteFile` (use [`Receiving::begin_file`]).
    fn apply_op(&mut self, op: &Op) -> Result<()> {
        self.store.borrow().check_path(op.path())?;
        match op {
            Op::WriteFile { .. } => panic!("apply_op takes no WriteFile: use begin_file"),
            Op::Symlink { path, target, meta } => {
                self.store.borrow_mut().build_symlink(path, target, meta, &mut self.batch)
            }
            Op::Mkdir { path, meta } => self.make_dir(path, meta),
            Op::Delete { path } => {
                self.delete(path)?;
                // A partial of a deleted path (or inside it) is not needed.
                self.store.borrow().drop_partials(path)
            }
            Op::Link { path, target, size, hash } => {
                // The target must be complete under its final name first.
                if self.batch.files > 0 || self.batch.pending.len() >= self.store.borrow().batch_files {
                    self.commit()?;
                }
                self.store.borrow_mut().build_link(path, target, *size, hash, &mut self.batch)
            }
            Op::SetMeta { path, meta } => self.set_meta(path, meta),
        }
    }

    /// Whether the batch is due to commit: the next file begun once none is
    /// in flight commits it first.
    fn batch_full(&self) -> bool {
        let store = self.store.borrow();
        self.batch.files >= store.batch_files || self.batch.bytes >= store.batch_bytes
    }

    /// Starts file number `file` (the session's name for it): copies in the
    /// chunks the receiver holds and returns the ones it needs.
    ///
    /// # Errors
    /// Failures creating the temporary or reading the state database.
    fn begin_file(&mut self, file: u32, path: &RelPath, meta: &Meta, digest: &FileDigest) -> Result<Vec<NeedInfo>> {
        self.store.borrow().check_path(path)?;
        if self.in_flight.is_empty() && self.batch_full() {
            self.commit()?;
        }
        let mut build = self.store.borrow_mut().begin_file(path, digest, &self.batch, &mut self.report)?;
        match self.share_needs(file, &build) {
            Ok((stored, needs)) => {
                if stored.contains(&false) {
                    // Its chunks are a round trip away: no descriptor held
                    // meanwhile (thousands of files may wait on a long link).
                    build.file = None;
                }
                self.in_flight.insert(file, InFlight { build, meta: meta.clone(), digest: digest.clone(), stored });
                Ok(needs)
            }
            Err(e) => {
                // Half-built: out of the batch, so no commit renames it
                // into place, and no other file waits for it.
                self.homes.retain(|_, home| home.0 != file);
                for waiting in self.followers.values_mut() {
                    waiting.retain(|&(f, _)| f != file);
                }
                self.forget_temp(&build.temp);
                Err(e)
            }
        }
    }

    /// Finer signatures of the base of need `need` of `file`, answering an
    /// encoded refinement request; `None` if the request or need is unknown.
    fn fine_signatures(&self, file: u32, need: usize, request: &[u8]) -> Option<Vec<patch::Signature>> {
        let need = self.in_flight.get(&file)?.build.needs.get(need)?;
        let base = self.store.borrow().base_bytes(need)?;
        let ranges = patch::decode_ranges(request, base.len() as u32).ok()?;
        Some(patch::fine_signatures(&base, &ranges))
    }

    /// Decodes and stores a chunk for need `need` of `file`. `with_base`
    /// says whether the sender was offered the need's signature.
    ///
    /// # Errors
    /// [`Error::Chunk`] for a chunk that does not decode to its id (the
    /// file can then be abandoned), I/O errors writing it.
    fn put_chunk(&mut self, file: u32, need: usize, encoded: &EncodedChunk, with_base: bool) -> Result<Put> {
        let Some(flight) = self.in_flight.get_mut(&file) else {
            return Err(Error::UnknownTransfer { file, need });
        };
        if need >= flight.stored.len() {
            return Err(Error::UnknownTransfer { file, need });
        }
        self.report.chunks_fetched += 1;
        self.report.bytes_fetched += encoded.payload.len() as u64;
        if !self.store.borrow().put_chunk(&flight.build, need, encoded, with_base)? {
            return Ok(Put::RetryWithoutBase);
        }
        flight.stored[need] = true;
        flight.build.unsynced += u64::from(flight.build.needs[need].chunk.len);
        if flight.build.unsynced >= CHECKPOINT_BYTES {
            self.checkpoint(file);
        }
        self.report.chunks_delta += u64::from(encoded.codec == codec::Codec::Delta);
        Ok(Put::Stored(self.feed_followers((file, need))?))
    }

    /// Whether every need of `file` has been stored.
    fn file_ready(&self, file: u32) -> bool {
        self.in_flight.get(&file).is_some_and(|f| f.stored.iter().all(|&s| s))
    }

    /// Checks and seals a file whose needs are all stored; it is renamed
    /// into place at the next commit.
    ///
    /// # Errors
    /// [`Error::FileMismatch`] if the content does not hash to what was
    /// promised, [`Error::UnknownTransfer`] if needs are missing.
    fn complete_file(&mut self, file: u32) -> Result<()> {
        if !self.file_ready(file) {
            return Err(Error::UnknownTransfer { file, need: usize::MAX });
        }
        let Some(flight) = self.in_flight.remove(&file) else {
            return Err(Error::UnknownTransfer { file, need: usize::MAX });
        };
        // Complete, so nothing waits on it; its chunks are found in the
        // batch from now on.
        self.homes.retain(|_, home| home.0 != file);
        let temp = flight.build.temp.clone();
        let path = flight.build.path.clone();
        if let Err(e) = self.store.borrow().finish_file(flight.build, &flight.meta, &flight.digest, &mut self.batch) {
            // Never renamed into place: the old version stays, and no
            // record of earlier checkpoints vouches for the partial.
            self.forget_temp(&temp);
            let _ = self.store.borrow().db.remove_partials(&[path]);
            return Err(e);
        }
        self.report.files_written += 1;
        Ok(())
    }

    /// Gives up on `file` (its source changed, a chunk did not verify): the
    /// old version stays, the reason is reported, the rest goes on.
    ///
    /// Returns the needs of other files that were waiting for this one's
    /// chunks: they must now be asked for themselves.
    fn abandon_file(&mut self, file: u32, reason: &str) -> Vec<(u32, NeedInfo)> {
        let Some(flight) = self.in_flight.get(&file) else { return Vec::new() };
        self.report.failed.push(FailedEntry { path: flight.build.path.to_string(), error: reason.to_string() });
        // Its verified chunks stay valid whatever the file becomes.
        self.keep_in_flight(&[file])
    }

    /// Commits the rest and drops the state of deleted entries.
    ///
    /// # Errors
    /// As [`Receiving::commit`], or the state database update failing.
    fn finish(mut self, complete: bool) -> Result<ApplyReport> {
        // Unfinished files are reported, and kept as partials together
        // (one transaction).
        let files: Vec<u32> = self.in_flight.keys().copied().collect();
        for (&file, flight) in &self.in_flight {
            let error = Error::UnknownTransfer { file, need: usize::MAX }.to_string();
            self.report.failed.push(FailedEntry { path: flight.build.path.to_string(), error });
        }
        self.keep_in_flight(&files);
        self.commit()?;
        self.store.borrow().trim_partials()?;
        if !self.removals.is_empty() {
            let store = self.store.borrow_mut();
            store.step()?;
            crate::crashpoint::hit("store.removals");
            // A path written again after its delete keeps its new record:
            // the one whose stat key matches the file now there.
            let root = store.root.clone();
            store.db.remove_under(&self.removals, |path, record| {
                fs::symlink_metadata(path.to_path(&root)).is_ok_and(|m| m.is_file() && StatKey::of(&m) == record.stat)
            })?;
        }
        let partial = !complete || !self.report.failed.is_empty();
        self.store.borrow_mut().record_snapshot(partial)?;
        Ok(std::mem::take(&mut self.report))
    }
}

impl<S: BorrowMut<MirrorStore>> Receiving<S> {
    /// Records what a file in flight holds verified so far (a checkpoint:
    /// a crash after it loses only the chunks that arrive later).
    fn checkpoint(&mut self, file: u32) {
        let Some(flight) = self.in_flight.get_mut(&file) else { return };
        let store = self.store.borrow();
        if let Err(e) = store.record_builds(&mut [(&mut flight.build, &flight.stored, &flight.digest)]) {
            tracing::warn!(error = %e, "could not record a checkpoint of a file in flight");
        }
    }

    /// Takes `files` out of flight, keeping each that holds enough verified
    /// chunks as a partial for the next run and removing the others.
    /// Returns the needs of other files that waited for their chunks.
    fn keep_in_flight(&mut self, files: &[u32]) -> Vec<(u32, NeedInfo)> {
        let mut flights: Vec<InFlight> = files.iter().filter_map(|f| self.in_flight.remove(f)).collect();
        let mut builds: Vec<_> =
            flights.iter_mut().map(|f| (&mut f.build, f.stored.as_slice(), &f.digest)).collect();
        let kept = self.store.borrow().record_builds(&mut builds).unwrap_or_else(|e| {
            tracing::warn!(error = %e, "could not keep the partial files of an interrupted session");
            Vec::new()
        });
        for flight in &flights {
            if !kept.contains(&flight.build.path) {
                self.forget_temp(&flight.build.temp);
            }
        }
        files.iter().flat_map(|&file| self.release_homes(file)).collect()
    }

    /// Keeps files that were complete but not committed as partials
    /// holding every chunk (the session ended before their commit point);
    /// the batch's discard removes the rest.
    fn keep_complete(&mut self) {
        let store = self.store.borrow();
        self.batch.pending.retain_mut(|pending| match &pending.digest {
            Some(digest) if digest.size >= MIN_PARTIAL_BYTES => {
                store.record_complete(&pending.path, &mut pending.temp, digest).is_err()
            }
            _ => true,
        });
    }
}

impl<S: BorrowMut<MirrorStore>> Drop for Receiving<S> {
    fn drop(&mut self) {
        // Unfinished: leave final names as they were, and keep what
        // arrived verified for the next run.
        let files: Vec<u32> = self.in_flight.keys().copied().collect();
        self.keep_in_flight(&files);
        self.keep_complete();
        self.store.borrow_mut().discard(&mut self.batch);
        let _ = self.store.borrow().trim_partials();
        // Finished or not, opened-up directories get their modes back.
        self.store.borrow_mut().relock();
    }
}
