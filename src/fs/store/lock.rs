//! The lock a writer holds on a receiving tree, kept on the tree's own
//! directories (flock), so that every writer of one tree meets it whatever
//! its state directory, process or path spelling.
//!
//! Hierarchical: the writer of `T` holds `T` exclusively and each directory
//! above it shared. A writer of an ancestor `A` (whose `--delete` could
//! remove `T` with its temporaries) then finds `A` held shared, and a
//! writer of a descendant `T/x` cannot take `T` shared; siblings share
//! their common ancestors and never meet. flock locks belong to the open
//! file, so two sessions of one server exclude each other as two processes
//! do, and a lock dies with its holder: nothing to clean up by hand.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use rustix::fs::{flock, FlockOperation};

use crate::error::{Error, IoContext, Result};

/// How often, and how far apart, a refused lock is tried again before the
/// tree is reported busy: one second in all.
const BUSY_RETRIES: u32 = 40;
const BUSY_RETRY_PAUSE: std::time::Duration = std::time::Duration::from_millis(25);

/// Held locks on a tree and its ancestors, released on drop.
#[derive(Debug)]
pub struct TreeLock {
    _held: Vec<File>,
}

impl TreeLock {
    /// Locks the directory `root` for writing, creating it (and missing
    /// directories above it) once the directories above each are held, so
    /// nothing is made inside a tree another writer holds.
    ///
    /// # Errors
    /// [`Error::Busy`] if another writer holds `root`, a directory above it
    /// or one inside it; [`Error::Io`] if a directory cannot be made or
    /// opened.
    pub fn acquire(root: &Path) -> Result<TreeLock> {
        // A lock just released can look held for a moment: a child process
        // forked by another thread of this process holds a copy of every
        // descriptor until it execs. A writer that really holds the tree
        // holds it far longer than this patience.
        let mut attempts = 0;
        loop {
            match TreeLock::try_acquire(root) {
                Err(e) if e.is_busy() && attempts < BUSY_RETRIES => {
                    attempts += 1;
                    std::thread::sleep(BUSY_RETRY_PAUSE);
                }
                other => return other,
            }
        }
    }

    /// [`TreeLock::acquire`] without waiting: busy at the first refusal.
    ///
    /// # Errors
    /// As [`TreeLock::acquire`].
    pub fn try_acquire(root: &Path) -> Result<TreeLock> {
        let root = canonical_missing(root)?;
        let mut held = Vec::new();
        let ancestors: Vec<&Path> = root.ancestors().skip(1).collect();
        for dir in ancestors.into_iter().rev() {
            make_dir(dir)?;
            // An ancestor this user may not open is skipped: the lock of
            // the tree itself still keeps this user's writers apart.
            let Ok(file) = File::open(dir) else { continue };
            match try_lock(&file, FlockOperation::NonBlockingLockShared) {
                Ok(()) => held.push(file),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return Err(Error::Busy { path: root.clone(), holder: dir.to_path_buf() })
                }
                // A filesystem without flock: the state database's own lock
                // still keeps two writers of this exact tree apart.
                Err(_) => {}
            }
        }
        make_dir(&root)?;
        let file = File::open(&root).at(&root)?;
        match try_lock(&file, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => held.push(file),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                return Err(Error::Busy { holder: root.clone(), path: root })
            }
            Err(_) => {}
        }
        Ok(TreeLock { _held: held })
    }
}

/// Creates the directory `dir` unless it exists.
fn make_dir(dir: &Path) -> Result<()> {
    match std::fs::create_dir(dir) {
        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => Err(Error::io(dir, e)),
        _ => Ok(()),
    }
}

/// The absolute, symlink-free form of `path`, which need not exist yet:
/// its longest existing prefix resolved, the rest appended.
pub(crate) fn canonical_missing(path: &Path) -> Result<PathBuf> {
    let absolute = std::path::absolute(path).at(path)?;
    let mut existing = absolute.as_path();
    let mut rest = Vec::new();
    while std::fs::symlink_metadata(existing).is_err() {
        match (existing.parent(), existing.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name.to_owned());
                existing = parent;
            }
            _ => break,
        }
    }
    let mut resolved = existing.canonicalize().at(existing)?;
    resolved.extend(rest.iter().rev());
    Ok(resolved)
}

fn try_lock(file: &File, operation: FlockOperation) -> io::Result<()> {
    flock(file, operation).map_err(io::Error::from)
}
