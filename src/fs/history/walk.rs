//! A snapshot as a [`SourceTree`]: its entries read from the tree blobs one
//! directory at a time, as often as the plan walks them, so that a restore
//! never holds the snapshot's whole manifest. The blobs read are kept, up
//! to [`TREE_CACHE`] bytes, for the walks after: a restore walks the
//! snapshot more than once (counting, sending, planning again for chunk
//! requests it no longer holds), and on a bucket every blob read is a
//! billed request with a round trip.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};

use super::{History, LoadError, SnapshotRecord};
use crate::error::Result;
use crate::hash::ChunkId;
use crate::history::tree::{self, Walker};
use crate::history::FormatError;
use crate::manifest::{Entry, RelPath};
use crate::plan::{Entries, SourceError, SourceTree};

/// Bytes of tree blobs one snapshot's walks keep between them.
pub const TREE_CACHE: usize = 8 << 20;

/// The part at `sub` of one snapshot, walked from the history store.
pub struct SnapshotTree {
    blobs: Arc<Blobs>,
    root: ChunkId,
    sub: RelPath,
}

/// Tree blobs read from a history, the latest kept up to a byte budget.
struct Blobs {
    history: Arc<History>,
    kept: Mutex<Kept>,
    budget: usize,
}

#[derive(Default)]
struct Kept {
    blobs: HashMap<ChunkId, Arc<[u8]>>,
    /// Oldest first: the first to go when room is needed.
    order: VecDeque<ChunkId>,
    bytes: usize,
}

impl Blobs {
    /// Blob `id`, kept or read (and kept, if it is not a large part of the
    /// budget alone).
    fn get(&self, id: &ChunkId) -> std::result::Result<Vec<u8>, LoadError> {
        let lock = || self.kept.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(bytes) = lock().blobs.get(id) {
            return Ok(bytes.to_vec());
        }
        let bytes = self.history.tree_blob(id)?;
        if bytes.len() <= self.budget / 8 {
            let mut kept = lock();
            while kept.bytes + bytes.len() > self.budget {
                let Some(old) = kept.order.pop_front() else { break };
                if let Some(gone) = kept.blobs.remove(&old) {
                    kept.bytes -= gone.len();
                }
            }
            if kept.blobs.insert(*id, Arc::from(&bytes[..])).is_none() {
                kept.bytes += bytes.len();
                kept.order.push_back(*id);
            }
        }
        Ok(bytes)
    }
}

impl SnapshotTree {
    /// The part at `sub` of `snapshot` (paths relative to `sub`, a file's
    /// part one entry named as the file: what [`History::load_tree`] loads).
    ///
    /// # Errors
    /// A record whose root is not a blob id.
    pub fn new(history: Arc<History>, snapshot: &SnapshotRecord, sub: RelPath) -> Result<SnapshotTree> {
        SnapshotTree::with_cache(history, snapshot, sub, TREE_CACHE)
    }

    /// As [`SnapshotTree::new`], keeping up to `budget` bytes of tree
    /// blobs between walks.
    ///
    /// # Errors
    /// A record whose root is not a blob id.
    pub fn with_cache(
        history: Arc<History>,
        snapshot: &SnapshotRecord,
        sub: RelPath,
        budget: usize,
    ) -> Result<SnapshotTree> {
        let root = history.snapshot_root(snapshot)?;
        let blobs = Arc::new(Blobs { history, kept: Mutex::default(), budget });
        Ok(SnapshotTree { blobs, root, sub })
    }

    /// Whether the part is a directory (the whole tree is).
    ///
    /// # Errors
    /// The part is not in the snapshot; a tree blob missing or damaged.
    pub fn is_dir(&self) -> Result<bool> {
        if self.sub.is_root() {
            return Ok(true);
        }
        let node = tree::find(self.root, &self.sub, &mut |id: &ChunkId| self.blobs.get(id))
            .map_err(|e| self.blobs.history.load_error(e))?;
        Ok(matches!(node.kind, tree::NodeKind::Dir { .. }))
    }
}

impl SourceTree for SnapshotTree {
    fn entries_in(&self, dir: &RelPath) -> Entries {
        let blobs = Arc::clone(&self.blobs);
        let mut fetch = |id: &ChunkId| blobs.get(id);
        // Hard links to files outside a part are told apart only by a walk
        // of the whole part: then walk it all and keep what is inside `dir`.
        let whole = dir.is_root() || !self.sub.is_root();
        let walker = if whole {
            Walker::new(self.root, &self.sub, &mut fetch)
        } else {
            Walker::inside(self.root, &self.sub, dir, &mut fetch)
        };
        let inside = (whole && !dir.is_root()).then(|| dir.clone());
        match walker {
            Ok(walker) => Box::new(SnapshotEntries { blobs: Arc::clone(&self.blobs), walker, inside, done: false }),
            // Not a directory of the snapshot: nothing inside.
            Err(LoadError::Format(FormatError::NotFound(_) | FormatError::NotDir(_))) => Box::new(std::iter::empty()),
            Err(e) => Box::new(std::iter::once(Err(boxed(&self.blobs.history, e)))),
        }
    }
}

/// One walk of a [`SnapshotTree`].
struct SnapshotEntries {
    blobs: Arc<Blobs>,
    walker: Walker,
    /// Only the entries inside this directory, if set.
    inside: Option<RelPath>,
    done: bool,
}

impl Iterator for SnapshotEntries {
    type Item = std::result::Result<Entry, SourceError>;

    fn next(&mut self) -> Option<Self::Item> {
        while !self.done {
            let blobs = &self.blobs;
            match self.walker.next(&mut |id: &ChunkId| blobs.get(id)) {
                Ok(Some(entry)) if self.inside.as_ref().is_none_or(|dir| entry.path.is_inside(dir)) => {
                    return Some(Ok(entry))
                }
                Ok(Some(_)) => {}
                Ok(None) => self.done = true,
                Err(e) => {
                    self.done = true;
                    return Some(Err(boxed(&blobs.history, e)));
                }
            }
        }
        None
    }
}

fn boxed(history: &History, e: LoadError) -> SourceError {
    Box::new(history.load_error(e))
}
