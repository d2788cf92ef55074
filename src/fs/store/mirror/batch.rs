//! Commit points: temporaries waiting in a batch, renamed into place
//! together after one sync of their filesystems, then recorded.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fs::{self, File};
use std::path::{Path, PathBuf};

use super::{remove_entry, MirrorStore};
use crate::chunk::FileDigest;
use crate::error::{IoContext, Result};
use crate::fs::scan::{FileRecord, MetaRecord, StatKey};
use crate::hash::ChunkId;
use crate::manifest::{Meta, RelPath};
use crate::session::ApplyReport;

/// A temporary waiting to be renamed over its final name.
#[derive(Clone)]
pub(super) struct Pending {
    pub(super) temp: PathBuf,
    pub(super) target: PathBuf,
    pub(super) path: RelPath,
    /// The file's content, for its state record; `None` for a symlink.
    pub(super) digest: Option<FileDigest>,
}

/// Built but not yet committed work.
#[derive(Default)]
pub(super) struct Batch {
    /// Built entries waiting for their rename, in build order.
    pub(super) pending: Vec<Pending>,
    /// Records to write once the batch's renames are durable.
    pub(super) upserts: Vec<(RelPath, FileRecord)>,
    /// Records to drop in the same transaction (files a symlink replaced).
    pub(super) removals: Vec<RelPath>,
    /// Directories a file, symlink or link replaced this batch: their old
    /// trees, now at temporary names, removed once the exchange is durable;
    /// the records under them dropped in the batch's transaction.
    pub(super) replaced: Vec<(RelPath, PathBuf)>,
    /// Metadata records to set (applied differs from what was sent) or
    /// drop, in the same transaction.
    pub(super) metas: Vec<(RelPath, Option<MetaRecord>)>,
    /// Files that got another name in this batch, with their content: a
    /// link changes the file's ctime, so their records are taken again.
    pub(super) linked: HashMap<RelPath, FileDigest>,
    /// Chunks received in this batch, readable from their temporaries.
    pub(super) received: HashMap<ChunkId, (PathBuf, u64, u32)>,
    pub(super) files: usize,
    pub(super) bytes: u64,
}

impl Batch {
    /// Keeps what was sent for `path` when the entry holds something else.
    pub(super) fn keep_meta(&mut self, path: &RelPath, applied: Meta, sent: &Meta) {
        let record = (applied != *sent).then(|| MetaRecord { applied, original: sent.clone() });
        self.metas.push((path.clone(), record));
    }
}

/// Chunks a new file took from the receiver's own files.
#[derive(Default)]
pub(super) struct Reused {
    pub(super) chunks: u64,
    pub(super) bytes: u64,
}

impl MirrorStore {
    /// Renames the batch into place, makes it durable, then records it. On
    /// failure the temporaries not yet renamed are removed.
    pub(super) fn commit(&mut self, batch: &mut Batch, report: &mut ApplyReport) -> Result<()> {
        let result = self.commit_batch(batch, report);
        if result.is_err() {
            self.discard(batch);
        }
        result
    }

    /// The fsync plan, so that the state database is never ahead of the
    /// data (after a power loss as after `kill -9`):
    ///
    /// 1. Temporaries are written, hashed and given their mode and mtime.
    /// 2. `syncfs` on each filesystem of the batch: every temporary's data
    ///    and inode are durable before any of them gets a final name.
    /// 3. Renames into place (each atomic: a final name holds the old or
    ///    the new file, never a partial one).
    /// 4. `syncfs` again: the renames (directory entries) are durable.
    /// 5. Only then one redb transaction (fsynced at commit) records the
    ///    batch: the new files' stat keys and chunk lists, and the records
    ///    symlinks replaced.
    ///
    /// A crash before 5 leaves the state behind the tree, never ahead: the
    /// renamed files have new inodes, so their old records no longer match
    /// and the next scan re-reads them; stale temporaries are removed by
    /// that scan. A record is trusted only while the file's stat key (size,
    /// mtime, mode, inode, ctime) matches, and xfer never writes in place
    /// under a final name, so a matching key means the recorded content.
    /// Metadata-only changes (`SetMeta`) are recorded without a sync of
    /// their own: should the chmod or utime be lost, the key no longer
    /// matches and the content, which did not change, is re-read. Deletes
    /// reach the database after they happen (state behind again).
    pub(super) fn commit_batch(&mut self, batch: &mut Batch, report: &mut ApplyReport) -> Result<()> {
        if batch.pending.is_empty() && batch.upserts.is_empty() && batch.metas.is_empty() {
            return Ok(());
        }
        let filesystems = distinct_filesystems(batch.pending.iter().filter_map(|p| p.temp.parent()));
        self.preserve_replaced(batch)?;
        self.step()?;
        sync_filesystems(&filesystems)?;
        crate::crashpoint::hit("commit.synced");
        self.place_pending(batch)?;
        for (path, digest) in batch.linked.drain() {
            if let Ok(meta) = fs::symlink_metadata(self.abs(&path)) {
                batch.upserts.push((path, FileRecord { stat: StatKey::of(&meta), digest }));
            }
        }
        crate::crashpoint::hit("commit.renamed");
        self.step()?;
        sync_filesystems(&filesystems)?;
        crate::crashpoint::hit("commit.durable");
        // The exchanges are durable: the old directories can go. A crash
        // before this leaves them as temporaries, which the next scan removes.
        self.remove_replaced(batch, report)?;
        self.step()?;
        self.db.update_with_metas(&batch.upserts, &batch.removals, &batch.metas)?;
        crate::crashpoint::hit("commit.recorded");
        self.share_batch(batch);
        report.meta_kept += batch.metas.iter().filter(|(_, record)| record.is_some()).count() as u64;
        batch.upserts.clear();
        batch.removals.clear();
        batch.metas.clear();
        batch.received.clear();
        batch.files = 0;
        batch.bytes = 0;
        report.batches_committed += 1;
        Ok(())
    }

    /// Hands to history what the batch's renames are about to replace.
    fn preserve_replaced(&mut self, batch: &Batch) -> Result<()> {
        let paths: Vec<RelPath> = batch.pending.iter().map(|p| p.path.clone()).collect();
        let staying: HashSet<ChunkId> =
            batch.pending.iter().filter_map(|p| p.digest.as_ref()).flat_map(|d| d.chunks.iter().map(|c| c.id)).collect();
        self.preserve(&paths, &staying, false)
    }

    /// Renames the batch's temporaries to their final names and notes the
    /// records they need; on a failure, what is left to place stays pending
    /// (so the discard removes it).
    pub(super) fn place_pending(&mut self, batch: &mut Batch) -> Result<()> {
        let pending = std::mem::take(&mut batch.pending);
        for (n, Pending { temp, target, path, digest }) in pending.iter().enumerate() {
            let placed = self.step().and_then(|()| {
                let exchanged = place(temp, target)?;
                if exchanged {
                    batch.replaced.push((path.clone(), temp.clone()));
                }
                Ok(exchanged)
            });
            let exchanged = match placed {
                Ok(exchanged) => exchanged,
                Err(e) => {
                    batch.pending = pending[n..].to_vec();
                    return Err(e);
                }
            };
            crate::crashpoint::hit("commit.rename");
            match digest {
                Some(digest) => match fs::symlink_metadata(target).at(target) {
                    Ok(meta) => {
                        let record = FileRecord { stat: StatKey::of(&meta), digest: digest.clone() };
                        batch.upserts.push((path.clone(), record));
                    }
                    // The rest are still temporaries: the discard removes them.
                    Err(e) => {
                        batch.pending = pending[n + 1..].to_vec();
                        return Err(e);
                    }
                },
                // A symlink or link replaced whatever file stood here
                // (dropping a record that does not exist changes nothing).
                None => {
                    batch.removals.push(path.clone());
                    // A rename between two names of one file does nothing
                    // (after an exchange the temporary is the old directory,
                    // removed below).
                    if !exchanged && fs::symlink_metadata(temp).is_ok() {
                        let _ = fs::remove_file(temp);
                    }
                }
            }
        }
        Ok(())
    }

    /// Removes the old directories the batch's exchanges left behind (the
    /// exchanges are durable by now) and notes their records for dropping.
    pub(super) fn remove_replaced(&mut self, batch: &mut Batch, report: &mut ApplyReport) -> Result<()> {
        for (path, old) in std::mem::take(&mut batch.replaced) {
            self.step()?;
            remove_entry(&old)?;
            crate::crashpoint::hit("commit.replaced");
            report.entries_deleted += 1;
            batch.removals.extend(self.db.paths_inside(&path)?);
        }
        Ok(())
    }

    /// Removes the temporaries of a failed batch; final names are untouched.
    pub(super) fn discard(&mut self, batch: &mut Batch) {
        for Pending { temp, .. } in batch.pending.drain(..) {
            let _ = fs::remove_file(temp);
        }
        // Old directories already swapped out: what replaced them stays,
        // they are what the plan removes.
        for (_, old) in batch.replaced.drain(..) {
            let _ = remove_entry(&old);
        }
        batch.linked.clear();
        batch.upserts.clear();
        batch.removals.clear();
        batch.metas.clear();
        batch.received.clear();
    }
}

/// One directory per filesystem among `dirs` (a tree may span mounts).
pub(super) fn distinct_filesystems<'a>(dirs: impl Iterator<Item = &'a Path>) -> Vec<PathBuf> {
    use std::os::unix::fs::MetadataExt;
    let mut seen = BTreeSet::new();
    let mut unique = Vec::new();
    for dir in dirs {
        // An unreadable directory is kept: syncing it reports the error.
        let dev = fs::metadata(dir).map(|m| m.dev()).ok();
        if dev.is_none() || seen.insert(dev) {
            unique.push(dir.to_path_buf());
        }
    }
    unique
}

/// Flushes each filesystem once. A batch of thousands of small files costs
/// one journal commit instead of one per file: pushing 50,000 files took
/// 13.7 s with an fsync per file.
pub(super) fn sync_filesystems(dirs: &[PathBuf]) -> Result<()> {
    for dir in dirs {
        File::open(dir).and_then(|d| rustix::fs::syncfs(&d).map_err(std::io::Error::from)).at(dir)?;
    }
    Ok(())
}

/// Puts the temporary `temp` at `target`: a rename, or, where a directory
/// stands at `target`, an exchange of the two (true), so that `target`
/// always names the old directory or the new entry; the old directory is
/// then at `temp`, for the caller to remove. A type change is a
/// replacement, not a delete followed by a write.
pub(super) fn place(temp: &Path, target: &Path) -> Result<bool> {
    match fs::symlink_metadata(target) {
        Ok(meta) if meta.is_dir() => {}
        _ => return fs::rename(temp, target).at(target).map(|()| false),
    }
    crate::crashpoint::hit("store.exchange");
    if exchange(temp, target).at(target)? {
        crate::crashpoint::hit("store.exchanged");
        return Ok(true);
    }
    // No RENAME_EXCHANGE on this filesystem: delete, then rename, as
    // before; a crash between the two leaves the path absent until the
    // next run.
    remove_entry(target)?;
    fs::rename(temp, target).at(target).map(|()| false)
}

/// Swaps the entries at `a` and `b` atomically; `Ok(false)` where the
/// filesystem (or kernel) cannot.
pub(super) fn exchange(a: &Path, b: &Path) -> std::io::Result<bool> {
    use rustix::fs::{renameat_with, RenameFlags, CWD};
    use rustix::io::Errno;
    match renameat_with(CWD, a, CWD, b, RenameFlags::EXCHANGE) {
        Ok(()) => Ok(true),
        Err(e) if e == Errno::INVAL || e == Errno::NOSYS || e == Errno::OPNOTSUPP => Ok(false),
        Err(e) => Err(e.into()),
    }
}

impl MirrorStore {
    /// Records the batch's files in the client's index of its trees. Its
    /// failure costs only later savings, never this push: it is logged.
    fn share_batch(&self, batch: &Batch) {
        let Some((shared, tree)) = &self.shared else { return };
        let files = batch.upserts.iter().map(|(path, record)| (path, &record.digest));
        if let Err(e) = shared.record(tree, files) {
            tracing::warn!(error = %e, "the client's chunk index was not updated; later pushes may resend chunks");
        }
    }
}
