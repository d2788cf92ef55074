//! What a mirror hands to its history store: before a file is overwritten
//! or deleted, the chunks of its old version that will sit nowhere else in
//! the mirror are copied to history and made durable; after a push, the
//! tree it left is recorded as a snapshot.
//!
//! Why this suffices: every chunk a snapshot names was in the mirror when
//! the snapshot was taken; from then on it can only leave the mirror
//! through xfer, which copies it to history first unless another file of
//! the mirror still holds it (then it leaves later, through the same gate).
//! A mirror edited behind xfer's back is the exception: the snapshots that
//! named the bytes edited away can no longer restore them.

use std::collections::HashSet;
use std::fs::{self, File};
use std::os::unix::fs::FileExt;

use super::MirrorStore;
use crate::error::Result;
use crate::fs::history::{History, SnapshotInfo, SnapshotRecord};
use crate::hash::ChunkId;
use crate::manifest::RelPath;

/// The history of a mirror and what its snapshots say of the push.
pub(super) struct Keeper {
    pub(super) history: History,
    pub(super) info: SnapshotInfo,
    /// Entries this session deleted: their records linger in the state
    /// database until the session ends, and must not count as holders.
    gone: HashSet<RelPath>,
}

impl Keeper {
    fn is_gone(&self, path: &RelPath) -> bool {
        let mut at = path.clone();
        loop {
            if self.gone.contains(&at) {
                return true;
            }
            if at.is_root() {
                return false;
            }
            at = at.parent();
        }
    }
}

impl MirrorStore {
    /// Keeps history in `history`: old versions of what pushes overwrite
    /// or delete, and a snapshot after each push, described by `info`.
    pub fn with_history(mut self, history: History, info: SnapshotInfo) -> Self {
        self.keeper = Some(Keeper { history, info, gone: HashSet::new() });
        self
    }

    /// Copies to history, durably, the chunks of the entries at or under
    /// `paths` that the mirror is about to lose: those not in `staying`
    /// (what replaces them), held by no file outside `paths`, and not in
    /// history yet. `deleting` says the entries go for good (their records
    /// linger until the session ends). A chunk whose bytes no longer match
    /// (the file changed behind xfer's back) cannot be kept and is passed
    /// over with a warning.
    pub(super) fn preserve(&mut self, paths: &[RelPath], staying: &HashSet<ChunkId>, deleting: bool) -> Result<()> {
        let Some(keeper) = self.keeper.as_mut() else { return Ok(()) };
        let leaving = |keeper: &Keeper, path: &RelPath| {
            keeper.is_gone(path) || paths.iter().any(|p| path == p || path.is_inside(p))
        };
        let index = self.db.chunks()?;
        let mut added = false;
        for path in paths {
            let mut files = vec![path.clone()];
            // Only a directory has records inside (one lookup per new file).
            if fs::symlink_metadata(path.to_path(&self.root)).is_ok_and(|m| m.is_dir()) {
                files.extend(self.db.paths_inside(path)?);
            }
            for file in files {
                let Some(record) = self.db.file(&file)? else { continue };
                let abs = file.to_path(&self.root);
                let mut offset = 0u64;
                let mut handle: Option<File> = None;
                for chunk in &record.digest.chunks {
                    let at = offset;
                    offset += u64::from(chunk.len);
                    if staying.contains(&chunk.id) || keeper.history.contains(&chunk.id) {
                        continue;
                    }
                    if index.locations(&chunk.id)?.iter().any(|loc| !leaving(keeper, &loc.path)) {
                        continue;
                    }
                    if handle.is_none() {
                        handle = Some(File::open(&abs).map_err(|e| crate::Error::io(&abs, e))?);
                    }
                    let Some(bytes) = read_verified(handle.as_ref(), at, chunk.len, &chunk.id) else {
                        tracing::warn!(path = %abs.display(), offset = at, "changed behind xfer's back: its old bytes cannot go to history");
                        continue;
                    };
                    keeper.history.add_chunk(chunk.id, &bytes)?;
                    added = true;
                }
            }
        }
        if added {
            keeper.history.flush()?;
            crate::crashpoint::hit("store.preserved");
        }
        if deleting {
            keeper.gone.extend(paths.iter().cloned());
        }
        Ok(())
    }

    /// Records the tree as it is now as a snapshot (`partial` when the
    /// push did not run to its end), if this mirror keeps history.
    pub(super) fn record_snapshot(&mut self, partial: bool) -> Result<Option<SnapshotRecord>> {
        if self.keeper.is_none() {
            return Ok(None);
        }
        // What is on disk now, not what was planned: a snapshot never
        // claims what was not stored.
        self.refresh(false)?;
        let Some(keeper) = self.keeper.as_mut() else { return Ok(None) };
        let mut info = keeper.info.clone();
        info.partial |= partial;
        info.time.get_or_insert_with(std::time::SystemTime::now);
        keeper.history.record_snapshot(&self.manifest, &info).map(Some)
    }
}

fn read_verified(file: Option<&File>, offset: u64, len: u32, id: &ChunkId) -> Option<Vec<u8>> {
    let mut bytes = vec![0; len as usize];
    file?.read_exact_at(&mut bytes, offset).ok()?;
    (ChunkId::of(&bytes) == *id).then_some(bytes)
}
