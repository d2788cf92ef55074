//! A mirror tree: the destination is an ordinary directory users can read
//! with any tool; xfer's state lives elsewhere (see [`super::state`]).
//!
//! Durability order, so that the state is never ahead of the data: each file
//! is built in a temporary file beside its final name (its partial, kept
//! across runs when the transfer is cut: see `partial`); the filesystems of the
//! batch are synced (`syncfs`, once per batch, not per file); then the
//! temporaries are renamed into place and the filesystems synced again; only
//! then does the state database commit the batch. A crash at any point
//! leaves every final name holding a complete old or new version; stale
//! temporaries are removed by the next scan, and files whose stat key no
//! longer matches the database are re-read. The plan step by step, and why
//! it suffices: `MirrorStore::commit_batch`.
//!
//! Here: the store, its paths and the modes it opens up and restores; in
//! `receiving` a session's steps and the chunks files in flight share;
//! in `build` one file's temporary; in `partial` what an interrupted file
//! leaves for the next run; in `batch` the commit points; in `meta`
//! metadata; in `sparse` hole-keeping I/O.

use std::collections::HashMap;
use std::fs::{self, File};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::lock::TreeLock;
use super::shared::{SharedIndex, SharedSession};
use super::state::StateDb;
use crate::error::{Error, IoContext, Result};
use crate::fs::scan::{self, is_reserved_name, IdNames, ScanOptions, TEMP_PREFIX};
use crate::hash::ChunkId;
use crate::manifest::{Manifest, RelPath};

mod base;
mod batch;
mod build;
mod keep;
mod meta;
mod partial;
mod receiving;
mod sparse;

pub use receiving::Receiving;

/// Files per commit point. Larger batches let more reused chunks be read
/// before the files holding them are replaced; smaller ones commit sooner.
pub const DEFAULT_BATCH_FILES: usize = 4096;

/// Bytes of new file content per commit point (bounds temporary disk use).
pub const DEFAULT_BATCH_BYTES: u64 = 1 << 30;

/// What a receiver applies of the metadata it is sent; what it does not
/// apply as sent it keeps in its records
/// ([`MetaRecord`](crate::fs::scan::MetaRecord)) and reports as the entry's
/// metadata, so a pull gives the originals back.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum MetaPolicy {
    /// Everything this process may: owners and groups (by name when the
    /// name exists here, else by number), setuid, setgid and sticky bits,
    /// xattrs of every namespace (ACLs included). A local push, a pull.
    #[default]
    Faithful,
    /// Permission bits (`0o777`) and `user.*` xattrs only, on entries the
    /// receiving process owns: a server receiving from a remote client,
    /// which must never plant a setuid binary, a foreign owner, an ACL or
    /// a file capability on the server's disk.
    Confined,
}

impl MetaPolicy {
    fn mode(self, mode: u32) -> u32 {
        match self {
            MetaPolicy::Faithful => mode & 0o7777,
            MetaPolicy::Confined => mode & 0o777,
        }
    }

    fn owners(self) -> bool {
        self == MetaPolicy::Faithful
    }

    fn xattr(self, name: &[u8]) -> bool {
        self == MetaPolicy::Faithful || name.starts_with(b"user.")
    }
}

/// A receiving directory tree with its state database.
pub struct MirrorStore {
    root: PathBuf,
    db: StateDb,
    /// Held while the store is open: no other writer touches the tree,
    /// anything above it or inside it meanwhile.
    _lock: TreeLock,
    /// The tree as the last refresh found it; file records live in `db`
    /// only, read when needed, so the tree is not held twice.
    manifest: Manifest,
    temp_serial: u64,
    batch_files: usize,
    batch_bytes: u64,
    /// A top-level name that is not part of the tree (a server's state).
    reserved: Option<&'static [u8]>,
    /// What of the metadata sent is applied.
    policy: MetaPolicy,
    /// This machine's user and group names, to map owners by name.
    names: IdNames,
    /// Test hook: fail at this step number.
    fail_at: Option<u32>,
    steps: u32,
    /// Directories made writable for this run, with the mode to give back.
    unlocked: HashMap<PathBuf, Unlocked>,
    /// Where old versions and snapshots go, if this tree keeps history.
    keeper: Option<keep::Keeper>,
    /// The pushing client's index of its other trees, and this tree's
    /// path among them.
    shared: Option<(SharedSession, RelPath)>,
}

/// A directory opened up for writing: the mode it had, and which directory
/// it was (a path may name another one by the time the mode goes back).
struct Unlocked {
    mode: u32,
    dev: u64,
    ino: u64,
}

impl MirrorStore {
    /// Opens the tree at `root` (created if missing) with its state database
    /// at `state_path`. Call [`MirrorStore::refresh`] before planning against it.
    ///
    /// The tree is locked first ([`TreeLock`]): the state database alone
    /// would let two writers of one tree with different state directories,
    /// or of nested trees, remove each other's files.
    ///
    /// # Errors
    /// [`Error::Io`] if the root cannot be created, [`Error::Busy`] if
    /// another writer holds the tree, [`Error::State`] if the database
    /// cannot be opened.
    pub fn open(root: &Path, state_path: &Path) -> Result<MirrorStore> {
        let lock = TreeLock::acquire(root)?;
        let db = StateDb::open(state_path)?;
        Ok(MirrorStore {
            root: root.to_path_buf(),
            db,
            _lock: lock,
            manifest: Manifest::default(),
            temp_serial: 0,
            batch_files: DEFAULT_BATCH_FILES,
            batch_bytes: DEFAULT_BATCH_BYTES,
            reserved: None,
            policy: MetaPolicy::default(),
            names: IdNames::load(),
            fail_at: None,
            steps: 0,
            unlocked: HashMap::new(),
            keeper: None,
            shared: None,
        })
    }

    /// Applies the metadata sent as `policy` says (the default is
    /// [`MetaPolicy::Faithful`]).
    pub fn with_policy(mut self, policy: MetaPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// Consults `index` (its client's chunks in other trees) for chunks this
    /// tree lacks, and records there what each batch commits, as `tree`.
    pub fn with_shared(mut self, index: Arc<SharedIndex>, tree: RelPath) -> Self {
        self.shared = Some((SharedSession::new(index), tree));
        self
    }

    /// Sets the commit batch limits (at least one file per batch).
    #[cfg(feature = "internals")]
    pub fn with_batch_limits(mut self, files: usize, bytes: u64) -> Self {
        self.batch_files = files.max(1);
        self.batch_bytes = bytes.max(1);
        self
    }

    /// Keeps the top-level entry `name` out of the tree: never listed,
    /// never written, never deleted (a server keeps its state there).
    pub fn with_reserved(mut self, name: &'static [u8]) -> Self {
        self.reserved = Some(name);
        self
    }

    /// Refuses paths inside the reserved entry, paths with a name of the
    /// temporaries' namespace, and paths whose directories are not real
    /// directories under the root: a symlinked directory (planted by an
    /// earlier push or by anyone else) must never lead a write or a delete
    /// out of the tree.
    fn check_path(&self, path: &RelPath) -> Result<()> {
        if let Some(name) = self.reserved {
            if path.as_bytes().split(|&b| b == b'/').next() == Some(name) {
                return Err(Error::Reserved { path: self.abs(path) });
            }
        }
        // A file written under a temporary's name would be renamed over the
        // temporary of another file of the same batch, which would then be
        // renamed into place holding the wrong content; a directory there
        // would be hidden from every scan for good.
        if path.as_bytes().split(|&b| b == b'/').any(is_reserved_name) {
            return Err(Error::TempName { path: self.abs(path) });
        }
        let mut dir = path.parent();
        while !dir.is_root() {
            let abs = self.abs(&dir);
            match fs::symlink_metadata(&abs) {
                Ok(meta) if meta.is_dir() => {}
                // Missing directories are created by this plan, as directories.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                _ => return Err(Error::Escape { path: self.abs(path), via: abs }),
            }
            dir = dir.parent();
        }
        Ok(())
    }

    /// Makes the `step`-th fallible step of the next session on this store
    /// ([`Receiving`]) fail, so tests can check that every interruption
    /// leaves a consistent tree.
    #[cfg(feature = "internals")]
    #[doc(hidden)]
    pub fn fail_at_step(&mut self, step: Option<u32>) {
        self.fail_at = step;
    }

    /// Steps taken by the last session on this store.
    #[cfg(feature = "internals")]
    #[doc(hidden)]
    pub fn steps_taken(&self) -> u32 {
        self.steps
    }

    /// The tree as of the last refresh or apply.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    fn step(&mut self) -> Result<()> {
        let step = self.steps;
        self.steps += 1;
        if self.fail_at == Some(step) {
            return Err(Error::Injected { step });
        }
        Ok(())
    }

    fn abs(&self, path: &RelPath) -> PathBuf {
        path.to_path(&self.root)
    }

    fn temp_beside(&mut self, path: &RelPath) -> PathBuf {
        self.temp_serial += 1;
        let mut name = TEMP_PREFIX.to_vec();
        name.extend_from_slice(format!("{}.{}", std::process::id(), self.temp_serial).as_bytes());
        let parent = path.parent();
        let name = RelPath::new(name).expect("invariant: temp names are one safe component");
        parent.join(name.as_bytes()).expect("invariant: temp names are one safe component").to_path(&self.root)
    }

    /// Makes the directory holding `path` writable if it is not and this
    /// user owns it: a read-only directory of the source, copied with its
    /// mode, must not stop every later change inside it. The mode goes back
    /// when the run ends ([`MirrorStore::relock`]), or at the plan's final
    /// `SetMeta` of the directory. A directory of another user stays as it
    /// is, and what needs it fails with its own path.
    fn unlock_parent(&mut self, path: &RelPath) {
        let dir = self.abs(&path.parent());
        if self.unlocked.contains_key(&dir) {
            return;
        }
        if let Some(unlocked) = open_up(&dir, 0o300) {
            self.unlocked.insert(dir, unlocked);
        }
    }

    /// Gives the directories opened up for writing their modes back; one
    /// replaced meanwhile (another inode there) is left alone. Should this
    /// not happen (a crash), the next run finds the modes differ from the
    /// source's and sets them.
    fn relock(&mut self) {
        for (dir, Unlocked { mode, dev, ino }) in self.unlocked.drain() {
            let Ok(handle) = open_dir_nofollow(&dir) else { continue };
            if handle.metadata().is_ok_and(|m| m.dev() == dev && m.ino() == ino) {
                let _ = handle.set_permissions(fs::Permissions::from_mode(mode));
            }
        }
    }
}

/// Opens the entry at `path` itself, never a symlink's target: for
/// reading, and for writing too if `write`, with `extra` open flags.
pub(super) fn open_nofollow(path: &Path, write: bool, extra: rustix::fs::OFlags) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let flags = rustix::fs::OFlags::NOFOLLOW | extra;
    File::options().read(true).write(write).custom_flags(flags.bits() as i32).open(path)
}

/// Opens the directory `dir` itself, never a symlink's target, so that a
/// mode change lands on the directory that was checked.
fn open_dir_nofollow(dir: &Path) -> std::io::Result<File> {
    open_nofollow(dir, false, rustix::fs::OFlags::DIRECTORY)
}

/// Adds the owner permission bits `bits` to directory `dir` if it lacks
/// some; returns what it was when it changed. `None` when nothing changed:
/// the bits were there, the directory is not this user's, or it cannot be
/// opened (a mode without read permission).
fn open_up(dir: &Path, bits: u32) -> Option<Unlocked> {
    let handle = open_dir_nofollow(dir).ok()?;
    let meta = handle.metadata().ok()?;
    let mode = meta.mode() & 0o7777;
    if mode & bits == bits {
        return None;
    }
    handle.set_permissions(fs::Permissions::from_mode(mode | bits)).ok()?;
    Some(Unlocked { mode, dev: meta.dev(), ino: meta.ino() })
}

impl MirrorStore {
    /// Re-reads what changed behind xfer's back and returns the current tree.
    ///
    /// # Errors
    /// [`Error`] if the root or the state database cannot be read.
    pub fn refresh(&mut self, checksum: bool) -> Result<&Manifest> {
        // No filter: the receiver's tree is seen whole, and the planner
        // decides which excluded entries it protects.
        let options = ScanOptions { checksum, remove_temps: true, reserved: self.reserved, ..ScanOptions::default() };
        let mut recorder = self.db.recorder()?;
        let scan = scan::scan_with(&self.root, &mut recorder, options)?;
        crate::crashpoint::hit("store.refresh");
        recorder.finish(&scan.manifest)?;
        self.settle_partials(scan.partials)?;
        self.manifest = scan.manifest;
        Ok(&self.manifest)
    }

    /// For each id, whether the store holds that chunk somewhere (or, on a
    /// server, another tree of the same client is recorded to).
    ///
    /// # Errors
    /// [`Error::State`] if the index cannot be read.
    pub fn has_chunks(&self, ids: &[ChunkId]) -> Result<Vec<bool>> {
        let index = self.db.chunks()?;
        let mut held = ids.iter().map(|id| index.contains(id)).collect::<Result<Vec<bool>>>()?;
        // What this tree lacks may be in another tree of the same client.
        if let Some((shared, _)) = &self.shared {
            let missing: Vec<ChunkId> = ids.iter().zip(&held).filter(|(_, &h)| !h).map(|(id, _)| *id).collect();
            // Unreadable, it saves nothing this time; the push goes on.
            let mut elsewhere = shared.contains_all(&missing).unwrap_or_default().into_iter();
            for h in held.iter_mut().filter(|h| !**h) {
                *h = elsewhere.next().unwrap_or(false);
            }
        }
        Ok(held)
    }
}

impl MirrorStore {
    /// Starts applying a plan step by step on this store.
    #[cfg(feature = "internals")]
    pub fn receive(&mut self) -> Receiving<&mut MirrorStore> {
        Receiving::new(self)
    }
}

pub(super) fn remove_entry(abs: &Path) -> Result<()> {
    let result = match fs::symlink_metadata(abs) {
        Ok(meta) if meta.is_dir() => match fs::remove_dir_all(abs) {
            // Read-only directories inside (copies of the source's): open
            // them up and try again, once.
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                open_up_tree(abs);
                fs::remove_dir_all(abs)
            }
            other => other,
        },
        Ok(_) => fs::remove_file(abs),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    };
    result.at(abs)
}

/// Makes the directories of the tree at `dir` writable and searchable for
/// their owner, so that a tree holding read-only directories can be removed.
/// Symlinks are not followed; what cannot be opened up is left for the
/// removal to report.
pub(super) fn open_up_tree(dir: &Path) {
    let _ = open_up(dir, 0o700);
    let Ok(entries) = fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            open_up_tree(&entry.path());
        }
    }
}
