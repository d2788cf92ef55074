//! A snapshot as a [`SourceTree`]: its entries read from the tree blobs one
//! directory at a time, as often as the plan walks them, so that a restore
//! never holds the snapshot's whole manifest.

use std::sync::Arc;

use super::{History, LoadError, SnapshotRecord};
use crate::error::Result;
use crate::hash::ChunkId;
use crate::history::tree::{self, Walker};
use crate::history::FormatError;
use crate::manifest::{Entry, RelPath};
use crate::plan::{Entries, SourceError, SourceTree};

/// The part at `sub` of one snapshot, walked from the history store.
pub struct SnapshotTree {
    history: Arc<History>,
    root: ChunkId,
    sub: RelPath,
}

impl SnapshotTree {
    /// The part at `sub` of `snapshot` (paths relative to `sub`, a file's
    /// part one entry named as the file: what [`History::load_tree`] loads).
    ///
    /// # Errors
    /// A record whose root is not a blob id.
    pub fn new(history: Arc<History>, snapshot: &SnapshotRecord, sub: RelPath) -> Result<SnapshotTree> {
        let root = history.snapshot_root(snapshot)?;
        Ok(SnapshotTree { history, root, sub })
    }

    /// Whether the part is a directory (the whole tree is).
    ///
    /// # Errors
    /// The part is not in the snapshot; a tree blob missing or damaged.
    pub fn is_dir(&self) -> Result<bool> {
        if self.sub.is_root() {
            return Ok(true);
        }
        let node = tree::find(self.root, &self.sub, &mut |id: &ChunkId| self.history.tree_blob(id))
            .map_err(|e| self.history.load_error(e))?;
        Ok(matches!(node.kind, tree::NodeKind::Dir { .. }))
    }
}

impl SourceTree for SnapshotTree {
    fn entries_in(&self, dir: &RelPath) -> Entries {
        let history = Arc::clone(&self.history);
        let mut fetch = |id: &ChunkId| history.tree_blob(id);
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
            Ok(walker) => Box::new(SnapshotEntries { history: Arc::clone(&self.history), walker, inside, done: false }),
            // Not a directory of the snapshot: nothing inside.
            Err(LoadError::Format(FormatError::NotFound(_) | FormatError::NotDir(_))) => Box::new(std::iter::empty()),
            Err(e) => Box::new(std::iter::once(Err(boxed(&self.history, e)))),
        }
    }
}

/// One walk of a [`SnapshotTree`].
struct SnapshotEntries {
    history: Arc<History>,
    walker: Walker,
    /// Only the entries inside this directory, if set.
    inside: Option<RelPath>,
    done: bool,
}

impl Iterator for SnapshotEntries {
    type Item = std::result::Result<Entry, SourceError>;

    fn next(&mut self) -> Option<Self::Item> {
        while !self.done {
            let history = &self.history;
            match self.walker.next(&mut |id: &ChunkId| history.tree_blob(id)) {
                Ok(Some(entry)) if self.inside.as_ref().is_none_or(|dir| entry.path.is_inside(dir)) => {
                    return Some(Ok(entry))
                }
                Ok(Some(_)) => {}
                Ok(None) => self.done = true,
                Err(e) => {
                    self.done = true;
                    return Some(Err(boxed(history, e)));
                }
            }
        }
        None
    }
}

fn boxed(history: &History, e: LoadError) -> SourceError {
    Box::new(history.load_error(e))
}
