//! What a plan deletes: counting it, the guard that refuses too much,
//! and the receiver entries that must stay (excluded, or above a kept one).

use std::collections::{HashMap, HashSet};

use super::under_any;
use crate::filter::Filter;
use crate::manifest::{Entry, EntryKind, Manifest, RelPath};

/// Entries of `dest` at or below `paths` (each counted once, even when one
/// path lies inside another).
pub fn deleted_entries<'a>(dest: &Manifest, paths: impl IntoIterator<Item = &'a RelPath>) -> u64 {
    let mut paths: Vec<&RelPath> = paths.into_iter().collect();
    paths.sort();
    let entries = dest.entries();
    let mut counted: Option<&RelPath> = None;
    let mut total = 0u64;
    for path in paths {
        if counted.is_some_and(|dir| path == dir || path.is_inside(dir)) {
            continue;
        }
        counted = Some(path);
        total += subtree_len(entries, path);
    }
    total
}

/// Entries at `path` or inside it, in sorted `entries` (a subtree follows
/// its directory).
fn subtree_len(entries: &[Entry], path: &RelPath) -> u64 {
    if path.is_root() {
        return entries.len() as u64;
    }
    let Ok(start) = entries.binary_search_by(|e| e.path.cmp(path)) else { return 0 };
    let inside = entries[start + 1..].iter().take_while(|e| e.path.is_inside(path)).count();
    1 + inside as u64
}

/// Destinations of at most this many entries are "trivial": the
/// more-than-half rule of [`DeleteLimit`] leaves them alone (a small tree
/// legitimately changes wholesale), though emptying one from an empty
/// source is still refused.
pub const TRIVIAL_DESTINATION: u64 = 50;

/// How much a run may delete before it is refused, checked on the whole
/// plan before any change is sent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DeleteLimit {
    /// Refuse to delete more than this many entries (`--max-delete N`).
    pub max: Option<u64>,
    /// Refuse to delete more than half of a destination of more than
    /// [`TRIVIAL_DESTINATION`] entries (unless `max` is given), or anything
    /// from an empty source (an unmounted share looks like one);
    /// `--force-delete` lifts these two rules, never `max`.
    pub guard: bool,
}

impl DeleteLimit {
    /// No limit at all.
    pub const UNLIMITED: DeleteLimit = DeleteLimit { max: None, guard: false };

    /// The built-in rules, without a count.
    pub const GUARDED: DeleteLimit = DeleteLimit { max: None, guard: true };

    /// Checks `deleted` entries out of a destination of `total` entries,
    /// the source holding `source_entries`.
    ///
    /// # Errors
    /// [`DeleteRefused`], saying why and how to override.
    pub fn check(&self, deleted: u64, total: u64, source_entries: u64) -> Result<(), DeleteRefused> {
        let refused = |rule| Err(DeleteRefused { deleted, total, rule });
        if let Some(max) = self.max.filter(|&max| deleted > max) {
            return refused(DeleteRule::Max(max));
        }
        if self.guard && deleted > 0 && source_entries == 0 {
            return refused(DeleteRule::EmptySource);
        }
        // An explicit count replaces the half rule: the user said how much may go.
        if self.guard && self.max.is_none() && total > TRIVIAL_DESTINATION && deleted.saturating_mul(2) > total {
            return refused(DeleteRule::Half);
        }
        Ok(())
    }
}

/// Which rule of [`DeleteLimit`] refused a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeleteRule {
    /// More than `--max-delete N`.
    Max(u64),
    /// More than half of a non-trivial destination.
    Half,
    /// Deletes from an empty source.
    EmptySource,
}

/// A run refused for deleting too much; nothing was changed by it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub struct DeleteRefused {
    /// Entries the run would delete (subtrees included).
    pub deleted: u64,
    /// Entries in the destination.
    pub total: u64,
    /// The rule that refused it.
    pub rule: DeleteRule,
}

impl std::fmt::Display for DeleteRefused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let DeleteRefused { deleted, total, rule } = *self;
        write!(f, "refused to delete {deleted} of the destination's {total} entries: ")?;
        match rule {
            DeleteRule::Max(max) => write!(f, "more than the limit of {max}"),
            DeleteRule::Half => write!(f, "more than half of it (is the source complete?)"),
            DeleteRule::EmptySource => write!(f, "the source is empty (is it mounted?)"),
        }
    }
}

/// Why a receiver entry must stay.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Keep {
    /// Nothing protects it.
    No,
    /// The filter excludes it, or it holds excluded entries.
    Excluded,
    /// It is, lies below or holds an entry the sender skipped.
    Skipped,
}

/// Which receiver entries a plan must not delete.
pub(super) struct Protected {
    /// By index in the receiver's entries; empty when nothing is protected.
    keep: Vec<Keep>,
}

impl Protected {
    /// Nothing protected.
    pub(super) fn none() -> Protected {
        Protected { keep: Vec::new() }
    }

    pub(super) fn new(dest: &Manifest, filter: Option<&Filter>, skipped: &HashSet<RelPath>) -> Protected {
        let filter = filter.filter(|f| !f.is_empty());
        if filter.is_none() && skipped.is_empty() {
            return Protected { keep: Vec::new() };
        }
        let entries = dest.entries();
        let mut keep = vec![Keep::No; entries.len()];
        // Sorted order puts a directory's subtree right after it, so the last
        // excluded directory is the only one an entry can be inside.
        let mut excluded_dir: Option<&RelPath> = None;
        let mut holders: HashMap<RelPath, Keep> = HashMap::new();
        for (k, entry) in entries.iter().enumerate() {
            let is_dir = matches!(entry.kind, EntryKind::Dir);
            let why = if under_any(&entry.path, skipped) {
                Keep::Skipped
            } else if excluded_dir.is_some_and(|dir| entry.path.is_inside(dir)) {
                keep[k] = Keep::Excluded;
                continue;
            } else if filter.is_some_and(|f| f.excludes_entry(&entry.path, is_dir)) {
                if is_dir {
                    excluded_dir = Some(&entry.path);
                }
                Keep::Excluded
            } else {
                continue;
            };
            keep[k] = why;
            // Deleting any directory above it would delete it too.
            let mut dir = entry.path.parent();
            while !dir.is_root() && !holders.contains_key(&dir) {
                holders.insert(dir.clone(), why);
                dir = dir.parent();
            }
        }
        // A directory is passed before the entries that make it a holder,
        // hence a second pass.
        for (k, entry) in entries.iter().enumerate() {
            if let (Keep::No, Some(why)) = (keep[k], holders.get(&entry.path)) {
                keep[k] = *why;
            }
        }
        Protected { keep }
    }

    /// Whether the receiver's entry `k` must stay.
    pub(super) fn keeps(&self, k: usize) -> bool {
        self.keep.get(k).is_some_and(|why| *why != Keep::No)
    }

    /// Why a source entry cannot replace the receiver's entry `k`, which
    /// [`Protected::keeps`].
    pub(super) fn why(&self, k: usize) -> &'static str {
        match self.keep.get(k) {
            Some(Keep::Skipped) => {
                "the receiver's entry here holds the backup of a source entry that was skipped; \
                 it is kept until that entry can be read"
            }
            _ => {
                "an excluded entry, or a directory holding some, stands here on the receiver; \
                 excluded entries are never deleted"
            }
        }
    }
}
