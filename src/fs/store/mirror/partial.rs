//! Partial files: the verified chunks of a file whose transfer was cut
//! (a closing window, a lost connection, either side killed) survive, so
//! the next run fetches only the chunks still missing.
//!
//! A file is built in a temporary beside its final name. Every
//! [`CHECKPOINT_BYTES`] of verified chunks, and when the session ends with
//! the file unfinished, the temporary takes the one partial name of its
//! path, `.xfer-partial.<hash of the name>` (at most one partial per
//! path), is fdatasynced, and then its verified chunk ranges are recorded
//! in the state database ([`PartialRecord`]), so a `kill -9` loses at most
//! that much. A record is trusted only for the same file (device, inode,
//! one link), and every chunk is re-hashed when read, as everywhere else.
//!
//! On the next run, a partial built to the same content is built on in
//! place; one built to other content (the source changed) lends its
//! verified chunks to the new build, which then takes its name. A partial
//! goes when its file commits (renamed into place), when its path is
//! deleted, when a refresh finds it without a valid record, and to keep
//! the bound: all partials together hold at most [`PARTIAL_BOUND_BATCHES`]
//! times the batch byte limit, the oldest dropped first, except that the
//! newest one always stays (a single file larger than the bound must
//! still be able to finish over several runs).

use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::build::FileBuild;
use super::{open_nofollow, remove_entry, MirrorStore};
use crate::chunk::FileDigest;
use crate::error::{IoContext, Result};
use crate::fs::scan::PARTIAL_PREFIX;
use crate::fs::store::state::PartialRecord;
use crate::hash::ChunkId;
use crate::manifest::RelPath;

/// Verified bytes of a file in flight between two checkpoints.
pub(super) const CHECKPOINT_BYTES: u64 = 16 << 20;

/// An unfinished file holding fewer verified bytes is not kept: sending
/// them again costs less than a sync and a record for each of the many
/// small files a long link keeps in flight.
pub(super) const MIN_PARTIAL_BYTES: u64 = 4 << 20;

/// Partials together hold at most this many times the batch byte limit.
pub(super) const PARTIAL_BOUND_BATCHES: u64 = 4;

/// What an earlier run left for a file about to be built.
pub(super) enum Prior {
    /// Nothing usable.
    Fresh,
    /// The partial at the build's own name, built to the same content:
    /// which chunks it holds verified (re-hashed before use).
    InPlace(Vec<bool>),
    /// A partial built to other content: its verified chunks by id
    /// (file, offset, length), re-hashed when copied.
    Lender(HashMap<ChunkId, (PathBuf, u64, u32)>),
}

/// Whether the `len` bytes at `offset` of `file` hash to `id`.
pub(super) fn verify_at(file: &File, offset: u64, len: u32, id: &ChunkId) -> bool {
    let mut bytes = vec![0u8; len as usize];
    file.read_exact_at(&mut bytes, offset).is_ok() && ChunkId::of(&bytes) == *id
}

/// Opens the partial at `abs` for writing if it is still the file
/// `record` describes: a regular file with one name (never a symlink,
/// never another file's second name), on the recorded device and inode.
fn open_recorded(abs: &Path, record: &PartialRecord) -> Option<File> {
    let file = open_nofollow(abs, false, rustix::fs::OFlags::empty()).ok()?;
    let stat = file.metadata().ok()?;
    if !stat.is_file() || stat.nlink() != 1 || (stat.dev(), stat.ino()) != (record.dev, record.ino) {
        return None;
    }
    // A completed file kept as a partial has its final mode, maybe read-only.
    file.set_permissions(fs::Permissions::from_mode(0o600)).ok()?;
    let file = open_nofollow(abs, true, rustix::fs::OFlags::empty()).ok()?;
    let again = file.metadata().ok()?;
    ((again.dev(), again.ino()) == (record.dev, record.ino)).then_some(file)
}

/// Which chunk indices `verified` names, over `count` chunks.
fn verified_mask(verified: &[(u32, u32)], count: usize) -> Vec<bool> {
    let mut mask = vec![false; count];
    for &(lo, hi) in verified {
        let hi = (hi as usize).min(count);
        for slot in mask.iter_mut().take(hi).skip(lo as usize) {
            *slot = true;
        }
    }
    mask
}

/// The verified chunks of `record` (built to `digest`) by id, in `abs`.
fn lent_chunks(abs: &Path, record: &PartialRecord, digest: &FileDigest) -> HashMap<ChunkId, (PathBuf, u64, u32)> {
    let mask = verified_mask(&record.verified, digest.chunks.len());
    let mut chunks = HashMap::new();
    let mut offset = 0u64;
    for (chunk, verified) in digest.chunks.iter().zip(mask) {
        if verified {
            chunks.entry(chunk.id).or_insert((abs.to_path_buf(), offset, chunk.len));
        }
        offset += u64::from(chunk.len);
    }
    chunks
}

impl MirrorStore {
    /// The one name the partial of `path` may have, beside it.
    pub(super) fn partial_beside(&self, path: &RelPath) -> PathBuf {
        let mut name = PARTIAL_PREFIX.to_vec();
        name.extend_from_slice(&blake3::hash(path.name()).to_hex().as_bytes()[..32]);
        path.parent().join(&name).expect("invariant: partial names are one safe component").to_path(&self.root)
    }

    /// Opens the file `path` is to be built in, to content `digest`:
    /// where to build it, the open file, what an earlier run left there,
    /// and whether that partial's chunk list is recorded already. A new
    /// file is built in a temporary, which takes the partial's name when
    /// first recorded; so is one whose partial only lends it chunks
    /// (removed once they are copied: [`MirrorStore::retire_lender`]).
    pub(super) fn open_build(&mut self, path: &RelPath, digest: &FileDigest) -> Result<(PathBuf, File, Prior, bool)> {
        let partial = self.partial_beside(path);
        let record = self.db.partial(path)?;
        let opened = record.as_ref().and_then(|r| Some((r, open_recorded(&partial, r)?)));
        if let Some((record, file)) = opened {
            if record.size == digest.size && record.hash == digest.hash {
                let mask = verified_mask(&record.verified, digest.chunks.len());
                return Ok((partial, file, Prior::InPlace(mask), true));
            }
            let lent = self.db.partial_digest(path)?.filter(|d| d.size == record.size && d.hash == record.hash);
            if let Some(old) = lent {
                let temp = self.temp_beside(path);
                let file = File::create_new(&temp).at(&temp)?;
                return Ok((temp, file, Prior::Lender(lent_chunks(&partial, record, &old)), false));
            }
        }
        // Nothing usable: whatever stands at the name goes (a directory
        // too: an old one exchanged out for a file, not yet removed).
        if record.is_some() {
            self.db.remove_partials(std::slice::from_ref(path))?;
        }
        remove_entry(&partial)?;
        let temp = self.temp_beside(path);
        let file = File::create_new(&temp).at(&temp)?;
        Ok((temp, file, Prior::Fresh, false))
    }

    /// After a build was filled from a lender: the lender goes, its
    /// chunks are in the new build now.
    pub(super) fn retire_lender(&self, build: &FileBuild, prior: &Prior) -> Result<()> {
        if !matches!(prior, Prior::Lender(_)) {
            return Ok(());
        }
        self.db.remove_partials(std::slice::from_ref(&build.path))?;
        remove_entry(&self.partial_beside(&build.path))
    }

    /// Gives a build's temporary its partial name, if it has not got it.
    fn name_partial(&self, path: &RelPath, temp: &mut PathBuf) -> Result<()> {
        let partial = self.partial_beside(path);
        if *temp != partial {
            fs::rename(&*temp, &partial).at(&partial)?;
            *temp = partial;
        }
        Ok(())
    }

    /// Syncs each build's partial and records what it holds verified
    /// (`stored[n]`: need `n` is), in one transaction. Returns the paths
    /// kept; builds with less than [`MIN_PARTIAL_BYTES`] verified are not
    /// (the caller removes them).
    pub(super) fn record_builds(&self, builds: &mut [(&mut FileBuild, &[bool], &FileDigest)]) -> Result<Vec<RelPath>> {
        let mut records = Vec::new();
        for (build, stored, digest) in builds.iter_mut() {
            let (verified, bytes) = verified_ranges(build, stored, digest);
            if bytes < MIN_PARTIAL_BYTES {
                continue;
            }
            self.name_partial(&build.path, &mut build.temp)?;
            build.with_file(|f| f.sync_data())?;
            let (dev, ino) = build.id;
            let record =
                PartialRecord { dev, ino, size: digest.size, hash: digest.hash, verified, bytes, serial: 0 };
            let chunks = (!build.digest_recorded).then_some(*digest);
            records.push((build.path.clone(), record, chunks));
        }
        self.db.record_partials(&mut records)?;
        for (build, ..) in builds.iter_mut() {
            if records.iter().any(|(path, ..)| *path == build.path) {
                build.digest_recorded = true;
                build.unsynced = 0;
            }
        }
        Ok(records.into_iter().map(|(path, ..)| path).collect())
    }

    /// Keeps a file that was complete but not yet committed (its session
    /// ended before the commit point) as a partial holding every chunk.
    pub(super) fn record_complete(&self, path: &RelPath, temp: &mut PathBuf, digest: &FileDigest) -> Result<()> {
        self.name_partial(path, temp)?;
        let file = File::open(&*temp).at(&*temp)?;
        file.sync_data().at(&*temp)?;
        let stat = file.metadata().at(&*temp)?;
        let count = u32::try_from(digest.chunks.len()).unwrap_or(u32::MAX);
        let record = PartialRecord {
            dev: stat.dev(),
            ino: stat.ino(),
            size: digest.size,
            hash: digest.hash,
            verified: vec![(0, count)],
            bytes: digest.size,
            serial: 0,
        };
        self.db.record_partials(&mut [(path.clone(), record, Some(digest))])
    }

    /// Removes the partials of `path` and of every path inside it.
    pub(super) fn drop_partials(&self, path: &RelPath) -> Result<()> {
        let doomed: Vec<RelPath> =
            self.db.partials()?.into_iter().map(|(p, _)| p).filter(|p| p == path || p.is_inside(path)).collect();
        for p in &doomed {
            let _ = fs::remove_file(self.partial_beside(p));
        }
        self.db.remove_partials(&doomed)
    }

    /// After a scan that listed the partial files `found`: removes those
    /// without a valid record and the records without their file, then
    /// keeps the bound.
    pub(super) fn settle_partials(&self, found: Vec<PathBuf>) -> Result<()> {
        let mut valid = HashSet::new();
        let mut gone = Vec::new();
        for (path, record) in self.db.partials()? {
            let abs = self.partial_beside(&path);
            match fs::symlink_metadata(&abs) {
                Ok(m) if m.is_file() && m.nlink() == 1 && (m.dev(), m.ino()) == (record.dev, record.ino) => {
                    valid.insert(abs);
                }
                _ => gone.push(path),
            }
        }
        // A directory here is an old one a file replaced by an exchange,
        // left by a crash before its removal.
        for abs in found.into_iter().filter(|abs| !valid.contains(abs)) {
            let _ = remove_entry(&abs);
        }
        self.db.remove_partials(&gone)?;
        self.trim_partials()
    }

    /// Drops the oldest partials while all together hold more than the
    /// bound (the newest always stays).
    pub(super) fn trim_partials(&self) -> Result<()> {
        let bound = self.batch_bytes.saturating_mul(PARTIAL_BOUND_BATCHES);
        let all = self.db.partials()?;
        let mut total: u64 = all.iter().map(|(_, r)| r.bytes).sum();
        let mut doomed = Vec::new();
        for (path, record) in all.iter().take(all.len().saturating_sub(1)) {
            if total <= bound {
                break;
            }
            let _ = fs::remove_file(self.partial_beside(path));
            total -= record.bytes;
            doomed.push(path.clone());
        }
        self.db.remove_partials(&doomed)
    }
}

/// The chunk index ranges a build holds verified, and their bytes: all
/// but the needs not yet stored and the repeats (filled at the end).
fn verified_ranges(build: &FileBuild, stored: &[bool], digest: &FileDigest) -> (Vec<(u32, u32)>, u64) {
    let mut mask = vec![true; digest.chunks.len()];
    for (need, done) in build.needs.iter().zip(stored) {
        if !done {
            mask[need.index] = false;
        }
    }
    for &(_, _, index) in &build.repeats {
        mask[index] = false;
    }
    let mut ranges: Vec<(u32, u32)> = Vec::new();
    let mut bytes = 0u64;
    for (i, (chunk, verified)) in digest.chunks.iter().zip(mask).enumerate() {
        if !verified {
            continue;
        }
        bytes += u64::from(chunk.len);
        let i = u32::try_from(i).unwrap_or(u32::MAX);
        match ranges.last_mut() {
            Some((_, hi)) if *hi == i => *hi += 1,
            _ => ranges.push((i, i + 1)),
        }
    }
    (ranges, bytes)
}
