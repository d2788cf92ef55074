//! A mirror tree: the destination is an ordinary directory users can read
//! with any tool; xfer's state lives elsewhere (see [`super::state`]).
//!
//! Durability order, so that the state is never ahead of the data: each file
//! is built in a temporary file beside its final name; the filesystems of the
//! batch are synced (`syncfs`, once per batch, not per file); then the
//! temporaries are renamed into place and the filesystems synced again; only
//! then does the state database commit the batch. A crash at any point
//! leaves every final name holding a complete old or new version; stale
//! temporaries are removed by the next scan, and files whose stat key no
//! longer matches the database are re-read. The plan step by step, and why
//! it suffices: `MirrorStore::commit_batch`.

use std::borrow::BorrowMut;
use std::collections::{BTreeSet, HashMap};
use std::fs::{self, File};
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use filetime::FileTime;

use super::lock::TreeLock;
use super::state::{ChunkLoc, StateDb};
use crate::chunk::{ChunkRef, FileDigest};
use crate::codec::{self, EncodedChunk};
use crate::error::{Error, IoContext, Result};
use crate::fs::scan::{self, FileRecord, IdNames, MetaRecord, ScanOptions, StatKey, TEMP_PREFIX};
use crate::hash::{ChunkId, FileHash};
use crate::manifest::{Manifest, Meta, RelPath};
use crate::patch;
use crate::plan::Op;
use crate::session::{ApplyReport, Destination, FailedEntry, NeedInfo, Put};

/// Files per commit point. Larger batches let more reused chunks be read
/// before the files holding them are replaced; smaller ones commit sooner.
pub const DEFAULT_BATCH_FILES: usize = 4096;

/// Bytes of new file content per commit point (bounds temporary disk use).
pub const DEFAULT_BATCH_BYTES: u64 = 1 << 30;

/// What a receiver applies of the metadata it is sent; what it does not
/// apply as sent it keeps in its records ([`MetaRecord`]) and reports as
/// the entry's metadata, so a pull gives the originals back.
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
        })
    }

    /// Applies the metadata sent as `policy` says (the default is
    /// [`MetaPolicy::Faithful`]).
    pub fn with_policy(mut self, policy: MetaPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// Sets the commit batch limits (at least one file per batch).
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
        if path.as_bytes().split(|&b| b == b'/').any(|name| name.starts_with(TEMP_PREFIX)) {
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
    #[doc(hidden)]
    pub fn fail_at_step(&mut self, step: Option<u32>) {
        self.fail_at = step;
    }

    /// Steps taken by the last session on this store.
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

/// Opens the directory `dir` itself, never a symlink's target, so that a
/// mode change lands on the directory that was checked.
fn open_dir_nofollow(dir: &Path) -> std::io::Result<File> {
    use rustix::fs::OFlags;
    use std::os::unix::fs::OpenOptionsExt;
    File::options().read(true).custom_flags((OFlags::DIRECTORY | OFlags::NOFOLLOW).bits() as i32).open(dir)
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
        self.manifest = scan.manifest;
        Ok(&self.manifest)
    }

    /// For each id, whether the store holds that chunk somewhere.
    ///
    /// # Errors
    /// [`Error::State`] if the index cannot be read.
    pub fn has_chunks(&self, ids: &[ChunkId]) -> Result<Vec<bool>> {
        let index = self.db.chunks()?;
        ids.iter().map(|id| index.contains(id)).collect()
    }
}

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
/// unfinished removes the temporaries of what was not committed.
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

impl MirrorStore {
    /// Starts applying a plan step by step on this store.
    pub fn receive(&mut self) -> Receiving<&mut MirrorStore> {
        Receiving::new(self)
    }
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
    pub fn store(&self) -> &MirrorStore {
        self.store.borrow()
    }

    /// Files begun and not yet completed or abandoned.
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
        self.commit()?;
        let store = self.store.borrow_mut();
        store.step()?;
        store.unlock_parent(path);
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
        self.commit()?;
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
            Op::Delete { path } => self.delete(path),
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
        let mut build = self.store.borrow_mut().begin_file(path, digest, &mut self.batch, &mut self.report)?;
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
        if let Err(e) = self.store.borrow().finish_file(flight.build, &flight.meta, &flight.digest, &mut self.batch) {
            // Never renamed into place: the old version stays.
            self.forget_temp(&temp);
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
        let Some(flight) = self.in_flight.remove(&file) else { return Vec::new() };
        self.forget_temp(&flight.build.temp);
        self.report.failed.push(FailedEntry { path: flight.build.path.to_string(), error: reason.to_string() });
        self.release_homes(file)
    }

    /// Commits the rest and drops the state of deleted entries.
    ///
    /// # Errors
    /// As [`Receiving::commit`], or the state database update failing.
    fn finish(mut self) -> Result<ApplyReport> {
        for file in self.in_flight.keys().copied().collect::<Vec<_>>() {
            self.abandon_file(file, &Error::UnknownTransfer { file, need: usize::MAX }.to_string());
        }
        self.commit()?;
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
        Ok(std::mem::take(&mut self.report))
    }
}

impl<S: BorrowMut<MirrorStore>> Drop for Receiving<S> {
    fn drop(&mut self) {
        // Unfinished: leave final names as they were.
        self.store.borrow_mut().discard(&mut self.batch);
        // Finished or not, opened-up directories get their modes back.
        self.store.borrow_mut().relock();
    }
}

/// A temporary waiting to be renamed over its final name.
#[derive(Clone)]
struct Pending {
    temp: PathBuf,
    target: PathBuf,
    path: RelPath,
    /// The file's content, for its state record; `None` for a symlink.
    digest: Option<FileDigest>,
}

/// Built but not yet committed work.
#[derive(Default)]
struct Batch {
    /// Built entries waiting for their rename, in build order.
    pending: Vec<Pending>,
    /// Records to write once the batch's renames are durable.
    upserts: Vec<(RelPath, FileRecord)>,
    /// Records to drop in the same transaction (files a symlink replaced).
    removals: Vec<RelPath>,
    /// Directories a file, symlink or link replaced this batch: their old
    /// trees, now at temporary names, removed once the exchange is durable;
    /// the records under them dropped in the batch's transaction.
    replaced: Vec<(RelPath, PathBuf)>,
    /// Metadata records to set (applied differs from what was sent) or
    /// drop, in the same transaction.
    metas: Vec<(RelPath, Option<MetaRecord>)>,
    /// Files that got another name in this batch, with their content: a
    /// link changes the file's ctime, so their records are taken again.
    linked: HashMap<RelPath, FileDigest>,
    /// Chunks received in this batch, readable from their temporaries.
    received: HashMap<ChunkId, (PathBuf, u64, u32)>,
    files: usize,
    bytes: u64,
}

impl Batch {
    /// Keeps what was sent for `path` when the entry holds something else.
    fn keep_meta(&mut self, path: &RelPath, applied: Meta, sent: &Meta) {
        let record = (applied != *sent).then(|| MetaRecord { applied, original: sent.clone() });
        self.metas.push((path.clone(), record));
    }
}

/// Chunks a new file took from the receiver's own files.
#[derive(Default)]
struct Reused {
    chunks: u64,
    bytes: u64,
}

/// A chunk a file being rebuilt lacks, with an offer of old bytes for a delta.
struct Need {
    index: usize,
    offset: u64,
    chunk: ChunkRef,
    /// Where the old bytes resembling it are: file, offset, length.
    base: Option<(PathBuf, u64, usize)>,
    /// Signature of those old bytes, as offered to the sender.
    signature: Option<patch::Signature>,
}

/// A file being rebuilt in its temporary: chunks the receiver holds are
/// copied in at their offsets, the missing ones are listed as needs and
/// written where they belong as they arrive, in any order.
struct FileBuild {
    path: RelPath,
    temp: PathBuf,
    /// The temporary, open while it is filled; `None` while the file waits
    /// for chunks (see [`FileBuild::with_file`]).
    file: Option<File>,
    /// The temporary's device and inode, to know it again when reopened.
    id: (u64, u64),
    needs: Vec<Need>,
    /// Later occurrences of a needed chunk in the same file: (offset, the
    /// need whose bytes they copy). Each missing chunk is fetched once.
    repeats: Vec<(u64, usize)>,
}

impl FileBuild {
    /// Runs `f` on the temporary: the open one, or the temporary reopened
    /// for this call only.
    fn with_file<T>(&self, f: impl FnOnce(&File) -> std::io::Result<T>) -> Result<T> {
        match &self.file {
            Some(file) => f(file).at(&self.temp),
            None => f(&reopen_temp(&self.temp, self.id).at(&self.temp)?).at(&self.temp),
        }
    }
}

/// Opens the temporary at `temp` again, never through a symlink, and only
/// if it is still the file created there (`id`: device and inode): bytes
/// for a file in flight never land anywhere else.
fn reopen_temp(temp: &Path, id: (u64, u64)) -> std::io::Result<File> {
    use rustix::fs::OFlags;
    use std::os::unix::fs::OpenOptionsExt;
    let file = File::options().read(true).write(true).custom_flags(OFlags::NOFOLLOW.bits() as i32).open(temp)?;
    let stat = file.metadata()?;
    if (stat.dev(), stat.ino()) != id {
        return Err(std::io::Error::other("the temporary was replaced while its file was in flight"));
    }
    Ok(file)
}

impl MirrorStore {
    /// Starts rebuilding `path`: creates its temporary, copies in every chunk
    /// found locally (re-hashed on read), and lists the others with
    /// signatures of the old bytes found by content next to them.
    fn begin_file(
        &mut self,
        path: &RelPath,
        digest: &FileDigest,
        batch: &mut Batch,
        report: &mut ApplyReport,
    ) -> Result<FileBuild> {
        self.step()?;
        self.unlock_parent(path);
        let temp = self.temp_beside(path);
        let file = File::create_new(&temp).at(&temp)?;
        crate::crashpoint::hit("store.temp");
        let (build, reused) = match self.fill_temp(path, digest, batch, file, &temp) {
            Ok(filled) => filled,
            Err(e) => {
                // Half-built: it must never join the batch, whose commit
                // would rename it into place (a failed session is salvaged
                // by committing the batch).
                let _ = fs::remove_file(&temp);
                return Err(e);
            }
        };
        batch.pending.push(Pending { temp, target: self.abs(path), path: path.clone(), digest: Some(digest.clone()) });
        report.chunks_reused += reused.chunks;
        report.bytes_reused += reused.bytes;
        Ok(build)
    }

    /// Sizes the new temporary `file` and copies in the chunks found
    /// locally (counted in the returned [`Reused`]); the rest become needs.
    fn fill_temp(
        &self,
        path: &RelPath,
        digest: &FileDigest,
        batch: &Batch,
        file: File,
        temp: &Path,
    ) -> Result<(FileBuild, Reused)> {
        let mut reused = Reused::default();
        file.set_len(digest.size).at(temp)?;
        let mut reader = SourceReader::default();
        let index = self.db.chunks()?;
        let mut needs: Vec<Need> = Vec::new();
        let mut needed: HashMap<ChunkId, usize> = HashMap::new();
        let mut repeats = Vec::new();
        // The last chunk found locally: anchors where the old bytes of the
        // next missing chunk are, even after insertions shifted everything.
        let mut anchor: Option<(ChunkLoc, u64)> = None;
        let mut offset = 0u64;
        for (i, chunk) in digest.chunks.iter().enumerate() {
            let here = offset;
            offset += u64::from(chunk.len);
            if let Some(&need) = needed.get(&chunk.id) {
                repeats.push((here, need));
                continue;
            }
            let local = match batch.received.get(&chunk.id) {
                Some((temp_path, at, len)) => reader.read_verified(temp_path, *at, *len, &chunk.id),
                None => self.read_local(&index, chunk, &mut reader).map(|(bytes, loc)| {
                    anchor = Some((loc, offset));
                    bytes
                }),
            };
            match local {
                Some(bytes) => {
                    write_sparse(&file, &bytes, here).at(temp)?;
                    reused.chunks += 1;
                    reused.bytes += u64::from(chunk.len);
                }
                None => {
                    let base = self.base_region(path, here, chunk.len, anchor.as_ref());
                    let signature = base
                        .as_ref()
                        .and_then(|(file, at, len)| reader.read_range(file, *at, *len))
                        .filter(|bytes| !bytes.is_empty())
                        .map(|bytes| patch::signature(&bytes));
                    needed.insert(chunk.id, needs.len());
                    needs.push(Need { index: i, offset: here, chunk: *chunk, base, signature });
                }
            }
        }
        let stat = file.metadata().at(temp)?;
        let id = (stat.dev(), stat.ino());
        Ok((FileBuild { path: path.clone(), temp: temp.to_path_buf(), file: Some(file), id, needs, repeats }, reused))
    }

    /// The old bytes a need's signature describes, read again (they are not
    /// kept in memory while the chunk is in flight).
    fn base_bytes(&self, need: &Need) -> Option<Vec<u8>> {
        let (file, at, len) = need.base.as_ref()?;
        SourceReader::default().read_range(file, *at, *len)
    }

    /// Decodes a received chunk for need `n` of `build` and writes it in
    /// place. `Ok(false)` means a delta did not rebuild the chunk (a false
    /// signature match, or old bytes that changed since): fetch it again
    /// without a base.
    fn put_chunk(&self, build: &FileBuild, n: usize, encoded: &EncodedChunk, with_base: bool) -> Result<bool> {
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
                source: Box::new(source),
            }),
        }
    }

    /// Fills repeats, checks the whole-file hash, sets mode and mtime: the
    /// temporary is then ready for the batch's rename.
    fn finish_file(&self, build: FileBuild, meta: &Meta, digest: &FileDigest, batch: &mut Batch) -> Result<()> {
        let reopened;
        let file = match &build.file {
            Some(file) => file,
            None => {
                reopened = reopen_temp(&build.temp, build.id).at(&build.temp)?;
                &reopened
            }
        };
        for &(offset, n) in &build.repeats {
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
            return Err(Error::FileMismatch { path: self.abs(&build.path) });
        }
        let applied = self.apply_meta(&build.temp, meta)?;
        batch.keep_meta(&build.path, applied, meta);
        for need in &build.needs {
            batch.received.insert(need.chunk.id, (build.temp.clone(), need.offset, need.chunk.len));
        }
        batch.files += 1;
        batch.bytes += digest.size;
        crate::crashpoint::hit("store.sealed");
        Ok(())
    }

    /// Makes `path` another name of the file at `target` in a temporary,
    /// renamed into place at the commit, once `target` is known to hold
    /// `size` bytes hashing to `hash`.
    fn build_link(
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
    fn verify_target(
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
    fn replace_with_dir(&mut self, path: &RelPath, meta: &Meta) -> Result<()> {
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

    /// Gives `path`, a file with other names, a copy of its own with `meta`:
    /// a change in place would reach every other name, a snapshot's outside
    /// the tree too. The copy is durable before it takes the name.
    ///
    /// The rename gives the directory a new mtime, which a metadata change
    /// must not: the plan sets directory times back only where names come
    /// or go, so the directory keeps the mtime it had.
    fn detach(&mut self, path: &RelPath, abs: &Path, meta: &Meta) -> Result<Meta> {
        let parent = self.abs(&path.parent());
        let dir = open_dir_nofollow(&parent).at(&parent)?;
        let dir_mtime = FileTime::from_last_modification_time(&dir.metadata().at(&parent)?);
        let temp = self.temp_beside(path);
        let copied = copy_sparse(abs, &temp)
            .at(&temp)
            .and_then(|_| self.apply_meta(&temp, meta))
            .and_then(|applied| File::open(&temp).and_then(|f| f.sync_all()).at(&temp).map(|()| applied))
            .and_then(|applied| fs::rename(&temp, abs).at(abs).map(|()| applied));
        if copied.is_err() {
            let _ = fs::remove_file(&temp);
        }
        let applied = copied?;
        // Best effort once the change is made: a directory of another user
        // keeps the new time, and the next run sees it differ and sets it.
        let _ = filetime::set_file_handle_times(&dir, None, Some(dir_mtime));
        Ok(applied)
    }

    fn build_symlink(&mut self, path: &RelPath, target: &[u8], meta: &Meta, batch: &mut Batch) -> Result<()> {
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

    /// Gives the entry at `abs` (a temporary or a final name) the metadata
    /// `meta` as the policy allows, and returns what it then holds, as a
    /// scan reads it.
    ///
    /// Owners first (a chown clears setuid, setgid and file capabilities),
    /// xattrs next, mode then (it sets an ACL's mask), mtime last. A chown
    /// or xattr this process may not apply is left out, not an error: the
    /// difference is kept in the records.
    fn apply_meta(&self, abs: &Path, meta: &Meta) -> Result<Meta> {
        let lstat = fs::symlink_metadata(abs).at(abs)?;
        let symlink = lstat.file_type().is_symlink();
        if self.policy.owners() {
            use std::os::unix::fs::MetadataExt;
            let uid = self.names.map_uid(&meta.user, meta.uid);
            let gid = self.names.map_gid(&meta.group, meta.gid);
            if (lstat.uid(), lstat.gid()) != (uid, gid) {
                let _ = std::os::unix::fs::lchown(abs, Some(uid), Some(gid));
            }
        }
        self.apply_xattrs(abs, &meta.xattrs);
        let time = to_filetime(meta);
        if symlink {
            filetime::set_symlink_file_times(abs, time, time).at(abs)?;
        } else {
            fs::set_permissions(abs, fs::Permissions::from_mode(self.policy.mode(meta.mode))).at(abs)?;
            filetime::set_file_mtime(abs, time).at(abs)?;
        }
        let lstat = fs::symlink_metadata(abs).at(abs)?;
        Ok(scan::meta_of(abs, &lstat, &self.names).0)
    }

    /// Makes the xattrs of `abs` that the policy lets this receiver manage
    /// those of `wanted`, as far as this process may.
    fn apply_xattrs(&self, abs: &Path, wanted: &[crate::manifest::Xattr]) {
        let current = scan::read_xattrs(abs).unwrap_or_default();
        for old in &current {
            if self.policy.xattr(&old.name) && !wanted.iter().any(|x| x.name == old.name) {
                let _ = rustix::fs::lremovexattr(abs, old.name.as_slice());
            }
        }
        for new in wanted {
            if self.policy.xattr(&new.name) && !current.contains(new) {
                let _ = rustix::fs::lsetxattr(abs, new.name.as_slice(), &new.value, rustix::fs::XattrFlags::empty());
            }
        }
    }

    /// Reads `chunk` from some file that holds it, verifying its hash.
    fn read_local(
        &self,
        index: &super::state::ChunkIndex<'_>,
        chunk: &ChunkRef,
        reader: &mut SourceReader,
    ) -> Option<(Vec<u8>, ChunkLoc)> {
        let locations = index.locations(&chunk.id).ok()?;
        for loc in locations {
            if loc.len != chunk.len {
                continue;
            }
            if let Some(bytes) = reader.read_verified(&self.abs(&loc.path), loc.offset, loc.len, &chunk.id) {
                return Some((bytes, loc));
            }
        }
        None
    }

    /// Where the receiver's old bytes most likely to resemble a missing
    /// chunk at `offset` of `path` are: just after the anchor chunk (found by
    /// content), or at the same offset of the old version of the same file.
    fn base_region(
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

    /// Renames the batch into place, makes it durable, then records it. On
    /// failure the temporaries not yet renamed are removed.
    fn commit(&mut self, batch: &mut Batch, report: &mut ApplyReport) -> Result<()> {
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
    fn commit_batch(&mut self, batch: &mut Batch, report: &mut ApplyReport) -> Result<()> {
        if batch.pending.is_empty() && batch.upserts.is_empty() && batch.metas.is_empty() {
            return Ok(());
        }
        let filesystems = distinct_filesystems(batch.pending.iter().filter_map(|p| p.temp.parent()));
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

    /// Renames the batch's temporaries to their final names and notes the
    /// records they need; on a failure, what is left to place stays pending
    /// (so the discard removes it).
    fn place_pending(&mut self, batch: &mut Batch) -> Result<()> {
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
    fn remove_replaced(&mut self, batch: &mut Batch, report: &mut ApplyReport) -> Result<()> {
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
    fn discard(&mut self, batch: &mut Batch) {
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

/// The block holes are made of: a piece of a write that lies within one
/// such block of the file (aligned) and holds only zeros is not written.
/// 4 KiB is the block of the common filesystems; on one with larger blocks
/// a block that is only partly zero is allocated, as it must be.
const HOLE_BLOCK: u64 = 4096;

/// Writes `bytes` at `offset` of a temporary, leaving out the pieces that
/// are all zeros within one aligned [`HOLE_BLOCK`], so that zero runs stay
/// holes (a 200 MB disk image with 8 KB of data takes 8 KB, not 200 MB).
///
/// Sound because temporaries are new files sized by `set_len`, which read
/// as zeros wherever nothing was written, and every write to a range of one
/// carries that range's chunk bytes, verified against their id: no range
/// ever held other bytes that a skipped zero piece would have to clear.
/// The whole-file hash taken before the rename checks it all anyway.
fn write_sparse(file: &File, bytes: &[u8], offset: u64) -> std::io::Result<()> {
    // Start (in `bytes`) of the data not yet written.
    let mut data: Option<usize> = None;
    let mut at = 0usize;
    while at < bytes.len() {
        let pos = offset + at as u64;
        let to_boundary = HOLE_BLOCK - pos % HOLE_BLOCK;
        let end = at + (bytes.len() - at).min(to_boundary as usize);
        if is_zero(&bytes[at..end]) {
            if let Some(start) = data.take() {
                file.write_all_at(&bytes[start..at], offset + start as u64)?;
            }
        } else if data.is_none() {
            data = Some(at);
        }
        at = end;
    }
    match data {
        Some(start) => file.write_all_at(&bytes[start..], offset + start as u64),
        None => Ok(()),
    }
}

/// Copies the file `from` to the new file `to` with its permission bits,
/// leaving zero blocks as holes (a plain copy would allocate a sparse
/// file's holes), a bounded buffer at a time.
fn copy_sparse(from: &Path, to: &Path) -> std::io::Result<()> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let mut source = File::open(from)?;
    let meta = source.metadata()?;
    let target = fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(to)?;
    target.set_len(meta.len())?;
    let mut buffer = vec![0u8; 1 << 20];
    let mut offset = 0u64;
    loop {
        let read = source.read(&mut buffer)?;
        if read == 0 {
            break;
        }
        write_sparse(&target, &buffer[..read], offset)?;
        offset += read as u64;
    }
    if offset != meta.len() {
        return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "file changed while being copied"));
    }
    fs::set_permissions(to, meta.permissions())
}

/// Whether `bytes` are all zero; the inner OR has no early exit, so it is
/// vectorised.
fn is_zero(bytes: &[u8]) -> bool {
    bytes.chunks(64).all(|piece| piece.iter().fold(0u8, |acc, &b| acc | b) == 0)
}

/// Reads byte ranges of receiver files, keeping the last file open.
#[derive(Default)]
struct SourceReader {
    open: Option<(PathBuf, File)>,
}

impl SourceReader {
    fn file(&mut self, path: &Path) -> Option<&File> {
        if self.open.as_ref().is_none_or(|(p, _)| p != path) {
            let file = File::open(path).ok()?;
            self.open = Some((path.to_path_buf(), file));
        }
        self.open.as_ref().map(|(_, f)| f)
    }

    /// Up to `len` bytes at `offset` (fewer at end of file).
    fn read_range(&mut self, path: &Path, offset: u64, len: usize) -> Option<Vec<u8>> {
        let file = self.file(path)?;
        let mut buf = vec![0u8; len];
        let mut filled = 0;
        while filled < len {
            match file.read_at(&mut buf[filled..], offset + filled as u64) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => return None,
            }
        }
        buf.truncate(filled);
        Some(buf)
    }

    /// Exactly `len` bytes at `offset`, only if they hash to `id`: a file
    /// changed behind our back yields `None`, never wrong bytes.
    fn read_verified(&mut self, path: &Path, offset: u64, len: u32, id: &ChunkId) -> Option<Vec<u8>> {
        let bytes = self.read_range(path, offset, len as usize)?;
        (bytes.len() == len as usize && ChunkId::of(&bytes) == *id).then_some(bytes)
    }
}

/// One directory per filesystem among `dirs` (a tree may span mounts).
fn distinct_filesystems<'a>(dirs: impl Iterator<Item = &'a Path>) -> Vec<PathBuf> {
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
fn sync_filesystems(dirs: &[PathBuf]) -> Result<()> {
    for dir in dirs {
        File::open(dir).and_then(|d| rustix::fs::syncfs(&d).map_err(std::io::Error::from)).at(dir)?;
    }
    Ok(())
}

fn to_filetime(meta: &Meta) -> FileTime {
    FileTime::from_unix_time(meta.mtime.secs, meta.mtime.nanos)
}

/// Puts the temporary `temp` at `target`: a rename, or, where a directory
/// stands at `target`, an exchange of the two (true), so that `target`
/// always names the old directory or the new entry; the old directory is
/// then at `temp`, for the caller to remove. A type change is a
/// replacement, not a delete followed by a write.
fn place(temp: &Path, target: &Path) -> Result<bool> {
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
fn exchange(a: &Path, b: &Path) -> std::io::Result<bool> {
    use rustix::fs::{renameat_with, RenameFlags, CWD};
    use rustix::io::Errno;
    match renameat_with(CWD, a, CWD, b, RenameFlags::EXCHANGE) {
        Ok(()) => Ok(true),
        Err(e) if e == Errno::INVAL || e == Errno::NOSYS || e == Errno::OPNOTSUPP => Ok(false),
        Err(e) => Err(e.into()),
    }
}

fn remove_entry(abs: &Path) -> Result<()> {
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
fn open_up_tree(dir: &Path) {
    let _ = open_up(dir, 0o700);
    let Ok(entries) = fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            open_up_tree(&entry.path());
        }
    }
}
