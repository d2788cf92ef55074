//! The history store: every snapshot of a tree that pushes left, costing
//! only the bytes that changed.
//!
//! A mirror tree holds the current version of every file. When a push
//! overwrites or deletes a file, the chunks of the old version that no
//! longer sit anywhere in the mirror are first copied here (compressed,
//! packed, deduplicated, verified); every push that commits then records a
//! snapshot: the tree it left, as directory tree blobs stored here too. A
//! snapshot's file chunks are therefore each in this store or in the mirror
//! (read there through the state database's chunk index, re-hashed on read).
//!
//! # Layout (format 1)
//!
//! Every object is immutable once written, named by the BLAKE3 hash of its
//! bytes, written to a temporary name, fsynced, renamed into place and its
//! directory fsynced: a crash leaves an object whole or absent. The same
//! layout can be kept on an object store (one key per file).
//!
//! ```text
//! DIR/config               format version and the store's random id (JSON)
//! DIR/packs/XY/HASH        a pack: blob bodies, then its header (see below)
//! DIR/index/HASH           which blobs which packs hold
//! DIR/snapshots/HASH       one snapshot record (JSON)
//! DIR/locks/NAME           one per open writer (pid, host, start time)
//! DIR/doomed/HASH          packs a prune took out of the index, to delete later
//! ```
//!
//! Packs, index files and tree blobs are encoded as `xfer_core::history`
//! describes. A blob may be named by several index files (a crash between
//! a prune's new index and the removal of the old ones): any is right.
//! Prune never deletes in the run that decides: see [`History::prune`].


mod disk;
mod index;
mod prune;
pub mod restore;

use std::collections::HashSet;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::error::{Error, IoContext, Result};
use crate::hash::ChunkId;
use crate::history::index::{self as index_file, IndexedPack};
use crate::history::pack::{BlobKind, PackBuilder, PackEntry};
use crate::history::{hex, select, tree, unhex32, FormatError};
use crate::manifest::{Manifest, RelPath};

use index::Index;
pub use restore::SnapshotReader;

/// The layout version `config` names.
pub const FORMAT: u32 = 1;
/// Largest snapshot record read (they are a few hundred bytes).
const MAX_RECORD: u64 = 1 << 20;
/// A pack is written once its bodies pass this size.
pub const PACK_TARGET: usize = 16 << 20;

/// What a push says about the snapshot it leaves, beside the tree itself.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SnapshotInfo {
    /// The served tree's path (`/site`; `/` for the root).
    pub tree: String,
    /// The client's key fingerprint, hex (empty for a local push).
    pub client: String,
    /// The source host as the client names it.
    pub host: String,
    /// The source path on that host.
    pub source: String,
    /// The session's `key=value` tags.
    pub tags: Vec<(String, String)>,
    /// The push did not complete (window stop, failed entries): the
    /// snapshot holds what the mirror held when it stopped.
    pub partial: bool,
    /// When the push committed.
    pub time: Option<SystemTime>,
}

/// A snapshot as listed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotRecord {
    /// Its id: hex of the BLAKE3 of its record, which is also its file name.
    pub id: String,
    /// Seconds since the Unix epoch, UTC.
    pub time: i64,
    /// Nanoseconds past `time`: pushes a second apart still list in the
    /// order they ran.
    #[serde(default)]
    pub nanos: u32,
    /// RFC 3339 of `time`.
    pub time_text: String,
    /// The served tree it is of (`/site`; `/` for the root).
    pub tree: String,
    /// The pushing client's fingerprint (empty for a local push).
    pub client: String,
    /// The source host as the client named it.
    pub host: String,
    /// The source path on that host.
    pub source: String,
    /// The push's `key=value` tags.
    pub tags: Vec<(String, String)>,
    /// The push did not run to its end (window stop, cancel, cut
    /// connection, failed entries): the snapshot holds what the tree held
    /// when it stopped.
    pub partial: bool,
    /// Regular files (hard links count once).
    pub files: u64,
    /// Directories.
    pub dirs: u64,
    /// Bytes of the regular files.
    pub bytes: u64,
    /// The root directory's tree blob, hex.
    pub root: String,
}

/// What a prune did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PruneReport {
    /// Packs deleted (doomed by an earlier prune, still unreferenced).
    pub packs_deleted: u64,
    /// Bytes freed by them.
    pub bytes_freed: u64,
    /// Packs taken out of the index this run, deleted by a later one.
    pub packs_doomed: u64,
    /// Packs rewritten because most of their blobs were unreferenced.
    pub packs_repacked: u64,
    /// Doomed packs a newer snapshot referenced again, put back.
    pub packs_reinstated: u64,
    /// Bytes the store holds after the run (packs only).
    pub bytes_after: u64,
}

#[derive(Serialize, Deserialize)]
struct Config {
    format: u32,
    id: String,
}

/// One history store, open for reading and adding.
pub struct History {
    dir: PathBuf,
    index: Index,
    pending: PackBuilder,
    pending_ids: HashSet<ChunkId>,
    /// The pack read last, kept open: a restore reads runs of blobs from one pack.
    open_pack: Mutex<Option<([u8; 32], File)>>,
    min_repack_gain: u64,
    pack_target: usize,
    lock: disk::WriterLock,
}

impl std::fmt::Debug for History {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("History").field("dir", &self.dir).field("blobs", &self.index.len()).finish_non_exhaustive()
    }
}

impl History {
    /// Opens the store at `dir`, creating it if missing, and registers this
    /// writer in `locks/` until dropped (a prune deletes nothing a writer
    /// that started before its first phase may still count on).
    ///
    /// # Errors
    /// An unreadable store, or one of an unknown format.
    pub fn open(dir: &Path) -> Result<History> {
        disk::ensure_dir(dir)?;
        for sub in ["packs", "index", "snapshots", "locks", "doomed"] {
            disk::ensure_dir(&dir.join(sub))?;
        }
        read_or_write_config(dir)?;
        let lock = disk::WriterLock::take(&dir.join("locks"))?;
        let index = Index::load(&dir.join("index"))?;
        Ok(History {
            dir: dir.to_path_buf(),
            index,
            pending: PackBuilder::new(),
            pending_ids: HashSet::new(),
            open_pack: Mutex::new(None),
            pack_target: PACK_TARGET,
            min_repack_gain: crate::history::prune::MIN_REPACK_GAIN,
            lock,
        })
    }

    /// Sets the size at which packs are written (tests use small packs to
    /// see several).
    #[cfg(feature = "internals")]
    pub fn set_pack_target(&mut self, bytes: usize) {
        self.pack_target = bytes.max(1);
    }

    /// Blobs indexed, and the bytes the in-memory index takes for them.
    #[cfg(feature = "internals")]
    pub fn index_size(&self) -> (usize, usize) {
        (self.index.len(), self.index.heap_bytes())
    }

    /// Sets the least a repack must free (tests use small packs).
    #[cfg(feature = "internals")]
    pub fn set_min_repack_gain(&mut self, bytes: u64) {
        self.min_repack_gain = bytes;
    }

    /// Whether the store holds the blob `id` (a chunk or a tree).
    pub fn contains(&self, id: &ChunkId) -> bool {
        self.pending_ids.contains(id) || self.index.get(id).is_some()
    }

    /// Adds the chunk `bytes`, which must hash to `id`, unless held already.
    /// Buffered: durable after [`History::flush`].
    ///
    /// # Errors
    /// Bytes that do not hash to `id`; failures writing a full pack.
    pub fn add_chunk(&mut self, id: ChunkId, bytes: &[u8]) -> Result<()> {
        if ChunkId::of(bytes) != id {
            return Err(self.format_error(FormatError::Mismatch(id)));
        }
        if self.contains(&id) {
            return Ok(());
        }
        self.add_blob(BlobKind::Data, id, bytes)
    }

    /// Buffers a blob whose id the caller checked, writing a pack when full.
    fn add_blob(&mut self, kind: BlobKind, id: ChunkId, bytes: &[u8]) -> Result<()> {
        self.pending.add(kind, id, bytes).map_err(|e| self.format_error(e))?;
        self.pending_ids.insert(id);
        if self.pending.len() >= self.pack_target {
            self.flush()?;
        }
        Ok(())
    }

    fn format_error(&self, source: FormatError) -> Error {
        Error::History { path: self.dir.clone(), source: Box::new(source) }
    }

    /// Writes what is buffered as a pack and its index entry, durably.
    ///
    /// # Errors
    /// Failures writing or syncing.
    pub fn flush(&mut self) -> Result<()> {
        self.flush_pack().map(|_| ())
    }

    /// As [`History::flush`], returning the pack written and its index
    /// file's name, if anything was buffered.
    fn flush_pack(&mut self) -> Result<Option<(IndexedPack, String)>> {
        if self.pending.is_empty() {
            return Ok(None);
        }
        let (bytes, entries) = std::mem::take(&mut self.pending).finish();
        let pack = IndexedPack { id: *blake3::hash(&bytes).as_bytes(), len: bytes.len() as u64, entries };
        let pack_dir = self.pack_dir(&pack.id);
        disk::ensure_dir(&pack_dir)?;
        disk::write_durably(&pack_dir, &hex(&pack.id), &bytes)?;
        crate::crashpoint::hit("history.pack_written");
        let name = self.write_index(std::slice::from_ref(&pack))?;
        crate::crashpoint::hit("history.index_written");
        self.index.add_pack(&pack).map_err(|e| self.format_error(e))?;
        self.pending_ids.clear();
        Ok(Some((pack, name)))
    }

    /// Writes an index file naming `packs`; returns its name.
    fn write_index(&self, packs: &[IndexedPack]) -> Result<String> {
        let bytes = index_file::encode(packs);
        let name = hex(blake3::hash(&bytes).as_bytes());
        disk::write_durably(&self.dir.join("index"), &name, &bytes)?;
        Ok(name)
    }

    fn pack_dir(&self, id: &[u8; 32]) -> PathBuf {
        self.dir.join("packs").join(hex(&id[..1]))
    }

    fn pack_path(&self, id: &[u8; 32]) -> PathBuf {
        self.pack_dir(id).join(hex(id))
    }

    /// The chunk `id`, verified, if the store holds it.
    ///
    /// # Errors
    /// A pack that cannot be read or holds other bytes than it should.
    pub fn read_chunk(&self, id: &ChunkId) -> Result<Option<Vec<u8>>> {
        self.read_blob(id)
    }

    /// Any blob `id` (chunk or tree), verified.
    fn read_blob(&self, id: &ChunkId) -> Result<Option<Vec<u8>>> {
        if let Some((entry, body)) = self.pending.get(id) {
            return entry.open(body).map(Some).map_err(|e| self.format_error(e));
        }
        self.blob_from(&self.index, id)
    }

    /// Blob `id` as `index` places it, verified.
    fn blob_from(&self, index: &Index, id: &ChunkId) -> Result<Option<Vec<u8>>> {
        let Some(loc) = index.get(id) else { return Ok(None) };
        let pack = index.packs[loc.pack as usize].id;
        let entry = loc.entry(*id);
        let body = self.read_body(&pack, &entry)?;
        entry.open(&body).map(Some).map_err(|e| Error::History { path: self.pack_path(&pack), source: Box::new(e) })
    }

    fn read_body(&self, pack: &[u8; 32], entry: &PackEntry) -> Result<Vec<u8>> {
        let path = self.pack_path(pack);
        let mut open = self.open_pack.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if open.as_ref().is_none_or(|(id, _)| id != pack) {
            *open = Some((*pack, File::open(&path).at(&path)?));
        }
        let (_, file) = open.as_ref().expect("invariant: opened above");
        let mut body = vec![0u8; entry.stored as usize];
        file.read_exact_at(&mut body, entry.offset).at(&path)?;
        Ok(body)
    }

    /// A tree blob, which must be there.
    fn tree_blob(&self, id: &ChunkId) -> std::result::Result<Vec<u8>, LoadError> {
        match self.read_blob(id) {
            Ok(Some(bytes)) => Ok(bytes),
            Ok(None) => Err(LoadError::Format(crate::history::malformed_error(
                "snapshot",
                format!("tree blob {id} is missing from the store (damaged)"),
            ))),
            Err(e) => Err(LoadError::Other(e)),
        }
    }

    /// Records `manifest` (the tree as a push left it) as a snapshot: its
    /// tree blobs, then its record, each durable before the next.
    ///
    /// # Errors
    /// Failures writing or syncing.
    pub fn record_snapshot(&mut self, manifest: &Manifest, info: &SnapshotInfo) -> Result<SnapshotRecord> {
        let (root, stats) = tree::build(manifest, tree::PART_TARGET, |id, bytes| {
            if self.contains(&id) {
                return Ok(());
            }
            self.add_blob(BlobKind::Tree, id, &bytes)
        })?;
        self.flush()?;
        let time = info.time.unwrap_or_else(SystemTime::now);
        let (time, nanos) = match time.duration_since(UNIX_EPOCH) {
            Ok(d) => (i64::try_from(d.as_secs()).unwrap_or(i64::MAX), d.subsec_nanos()),
            Err(e) => (-i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX), 0),
        };
        let mut record = SnapshotRecord {
            id: String::new(),
            time,
            nanos,
            time_text: select::format_time(time),
            tree: info.tree.clone(),
            client: info.client.clone(),
            host: info.host.clone(),
            source: info.source.clone(),
            tags: info.tags.clone(),
            partial: info.partial,
            files: stats.files,
            dirs: stats.dirs,
            bytes: stats.bytes,
            root: hex(&root.0),
        };
        let bytes = serde_json::to_vec(&record).expect("invariant: a snapshot record serializes");
        let id = hex(blake3::hash(&bytes).as_bytes());
        disk::write_durably(&self.dir.join("snapshots"), &id, &bytes)?;
        crate::crashpoint::hit("history.snapshot_written");
        record.id = id;
        Ok(record)
    }

    /// Every snapshot, oldest first.
    ///
    /// # Errors
    /// An unreadable snapshot directory or record.
    pub fn snapshots(&self) -> Result<Vec<SnapshotRecord>> {
        let dir = self.dir.join("snapshots");
        let mut records = Vec::new();
        for name in disk::list(&dir)? {
            let path = dir.join(&name);
            let bytes = match read_bounded(&path, MAX_RECORD) {
                Ok(bytes) => bytes,
                // Forgotten since the listing.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(Error::io(path, e)),
            };
            let bad = |reason: String| Error::HistoryConfig { path: path.clone(), reason };
            if hex(blake3::hash(&bytes).as_bytes()) != name {
                return Err(bad("the snapshot record does not match its name (damaged)".into()));
            }
            let mut record: SnapshotRecord =
                serde_json::from_slice(&bytes).map_err(|e| bad(format!("the snapshot record does not parse: {e}")))?;
            record.id = name;
            records.push(record);
        }
        records.sort_by(|a, b| (a.time, a.nanos, &a.id).cmp(&(b.time, b.nanos, &b.id)));
        Ok(records)
    }

    /// The snapshot of `tree` that `selector` names: `latest`, a unique
    /// prefix of an id (at least 4 hex digits), or a time (RFC 3339 or
    /// `YYYY-MM-DD[ HH:MM[:SS]]`, UTC) naming the last snapshot at or
    /// before it (a date alone: the end of that day).
    ///
    /// # Errors
    /// None or several match (the message says which and what to do).
    pub fn find(&self, tree: &str, selector: &str) -> Result<SnapshotRecord> {
        let select_error = |source| Error::SnapshotSelect { path: self.dir.clone(), tree: tree.to_string(), source };
        let selector = select::parse(selector).map_err(select_error)?;
        let mut records: Vec<SnapshotRecord> = self.snapshots()?.into_iter().filter(|r| r.tree == tree).collect();
        let keys: Vec<(&str, i64)> = records.iter().map(|r| (r.id.as_str(), r.time)).collect();
        let at = select::pick(&keys, &selector).map_err(select_error)?;
        Ok(records.swap_remove(at))
    }

    /// The part of snapshot `snapshot` at `sub` (a file or a directory;
    /// the root for the whole tree), as a manifest whose paths are
    /// relative to `sub` (a file: one entry named as the file).
    ///
    /// # Errors
    /// `sub` is not in the snapshot; a tree blob missing or damaged.
    pub fn load_tree(&self, snapshot: &SnapshotRecord, sub: &RelPath) -> Result<Manifest> {
        let root = self.snapshot_root(snapshot)?;
        tree::load(root, sub, |id| self.tree_blob(id)).map_err(|e| self.load_error(e))
    }

    /// As [`History::load_tree`], with the most tree blob bytes held at
    /// once while loading (tests check it stays one directory's worth).
    ///
    /// # Errors
    /// As [`History::load_tree`].
    #[cfg(feature = "internals")]
    pub fn load_tree_measured(&self, snapshot: &SnapshotRecord, sub: &RelPath) -> Result<(Manifest, usize)> {
        let root = self.snapshot_root(snapshot)?;
        tree::load_measured(root, sub, |id| self.tree_blob(id)).map_err(|e| self.load_error(e))
    }

    fn snapshot_root(&self, snapshot: &SnapshotRecord) -> Result<ChunkId> {
        unhex32(&snapshot.root).map(ChunkId).ok_or_else(|| Error::HistoryConfig {
            path: self.dir.join("snapshots").join(&snapshot.id),
            reason: format!("root {:?} is not a blob id", snapshot.root),
        })
    }

    fn load_error(&self, e: LoadError) -> Error {
        match e {
            LoadError::Format(source) => self.format_error(source),
            LoadError::Other(e) => e,
        }
    }

    /// Removes the records of the snapshots `ids` (full ids or unique
    /// prefixes of at least 4 digits; their data goes at the next prune).
    /// Every id is checked before any record is removed.
    ///
    /// # Errors
    /// An unknown id; failures removing.
    pub fn forget(&mut self, ids: &[String]) -> Result<()> {
        let records = self.snapshots()?;
        let mut doomed = Vec::new();
        for id in ids {
            let id_lower = id.to_ascii_lowercase();
            let mut matches = records.iter().filter(|r| id_lower.len() >= select::MIN_PREFIX && r.id.starts_with(&id_lower));
            match (matches.next(), matches.next()) {
                (Some(record), None) => doomed.push(record.id.clone()),
                _ => return Err(Error::UnknownSnapshot { path: self.dir.clone(), id: id.clone() }),
            }
        }
        let dir = self.dir.join("snapshots");
        for id in doomed {
            disk::remove(&dir, &id)?;
        }
        Ok(())
    }

    /// Garbage-collects blobs no snapshot references, in two phases that
    /// never block a writer: packs whose blobs are all unreferenced (or
    /// rewritten without them) leave the index and are listed in
    /// `doomed/`; a later prune deletes them once no writer that started
    /// before that is still open, unless a snapshot recorded since then
    /// references them again.
    ///
    /// # Errors
    /// Failures reading or writing.
    pub fn prune(&mut self) -> Result<PruneReport> {
        // One prune at a time, whoever runs it (a server's schedule, a
        // client's request, the operator by hand): two whose plans differ
        // could each keep in its new index a pack the other doomed. The
        // lock goes with the file, closed when this returns.
        let path = self.dir.join("prune.lock");
        let file = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&path).at(&path)?;
        rustix::fs::flock(&file, rustix::fs::FlockOperation::LockExclusive)
            .map_err(|e| Error::io(&path, std::io::Error::from(e)))?;
        prune::run(self)
    }
}

/// What loading a tree can fail with: the format's errors, or the store's.
enum LoadError {
    Format(FormatError),
    Other(Error),
}

impl From<FormatError> for LoadError {
    fn from(e: FormatError) -> Self {
        LoadError::Format(e)
    }
}

/// The bytes of `path`, unless it is larger than `max` (a stray or
/// damaged file must not make a listing allocate without bound).
fn read_bounded(path: &Path, max: u64) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut bytes = Vec::new();
    File::open(path)?.take(max + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, format!("larger than {max} bytes")));
    }
    Ok(bytes)
}

fn read_or_write_config(dir: &Path) -> Result<()> {
    let path = dir.join("config");
    match read_bounded(&path, MAX_RECORD) {
        Ok(bytes) => {
            let bad = |reason: String| Error::HistoryConfig { path: path.clone(), reason };
            let config: Config = serde_json::from_slice(&bytes)
                .map_err(|e| bad(format!("not a history store config ({e}); is this the right directory?")))?;
            if config.format != FORMAT {
                return Err(bad(format!(
                    "format {} is not supported (this xfer reads format {FORMAT}); use the xfer that wrote it",
                    config.format
                )));
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let config = Config { format: FORMAT, id: disk::random_hex() };
            let bytes = serde_json::to_vec_pretty(&config).expect("invariant: a config serializes");
            disk::write_durably(dir, "config", &bytes).map(|_| ())
        }
        Err(e) => Err(Error::io(path, e)),
    }
}

/// Named immutable objects in a subdirectory of the store, for records
/// kept beside the repository's own (a store-only server's per-client
/// chunk lists): written and listed like every other object.
impl History {
    /// Writes `bytes` durably as an object of `sub` (plain names joined by
    /// `/`, created if missing), named by their hash; returns the name.
    ///
    /// # Errors
    /// A `sub` that is not plain names; failures writing or syncing.
    pub fn put_named(&self, sub: &str, bytes: &[u8]) -> Result<String> {
        if sub.split('/').any(|part| part.is_empty() || part == "." || part == "..") {
            let reason = format!("{sub:?} is not a subdirectory of the store");
            return Err(Error::HistoryConfig { path: self.dir.clone(), reason });
        }
        let mut dir = self.dir.clone();
        for part in sub.split('/') {
            dir.push(part);
            disk::ensure_dir(&dir)?;
        }
        let name = hex(blake3::hash(bytes).as_bytes());
        disk::write_durably(&dir, &name, bytes)?;
        Ok(name)
    }

    /// Hands each object of `sub` (none if it is missing) to `each`, one
    /// at a time, once checked against its name and `max` bytes.
    ///
    /// # Errors
    /// An unreadable, oversized or damaged object; `each`'s error.
    pub fn each_named(&self, sub: &str, max: u64, mut each: impl FnMut(&[u8]) -> Result<()>) -> Result<()> {
        if sub.split('/').any(|part| part.is_empty() || part == "." || part == "..") {
            let reason = format!("{sub:?} is not a subdirectory of the store");
            return Err(Error::HistoryConfig { path: self.dir.clone(), reason });
        }
        let dir = self.dir.join(sub);
        for name in disk::list(&dir)? {
            let path = dir.join(&name);
            let bytes = match read_bounded(&path, max) {
                Ok(bytes) => bytes,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(Error::io(path, e)),
            };
            if hex(blake3::hash(&bytes).as_bytes()) != name {
                let reason = "the object does not match its name (damaged)".to_string();
                return Err(Error::HistoryConfig { path, reason });
            }
            each(&bytes)?;
        }
        Ok(())
    }
}
