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
//! Every object is immutable once written and named by the BLAKE3 hash of
//! its bytes (but `config`, written once). In a local directory each is
//! written to a temporary name, fsynced, renamed into place and its
//! directory fsynced: a crash leaves an object whole or absent.
//!
//! ```text
//! DIR/config               format version and the store's random id (JSON)
//! DIR/packs/XY/HASH        a pack: blob bodies, then its header (see below)
//! DIR/index/HASH           which blobs which packs hold
//! DIR/snapshots/HASH       one snapshot record (JSON)
//! DIR/locks/NAME           one per open writer (pid, host, start time); local only
//! DIR/doomed/HASH          packs a prune took out of the index, to delete later
//! DIR/prune.lock           one prune at a time (flock); local only
//! ```
//!
//! Packs, index files and tree blobs are encoded as `xfer_core::history`
//! describes. A blob may be named by several index files (a crash between
//! a prune's new index and the removal of the old ones): any is right.
//! Prune never deletes in the run that decides: see [`History::prune`].
//!
//! # On an object store
//!
//! The same layout is kept on an object store ([`StoreUrl`]: `s3://BUCKET/PREFIX`,
//! `file:///PATH`, `memory:NAME`), each file one object whose key is its
//! relative path above under the prefix (at most 86 bytes plus the prefix).
//! A PUT is whole or absent. Writers commit in order (pack, then its index
//! file, then tree blobs' pack and index, then the snapshot record) and name
//! nothing whose PUT has not returned; names are content hashes, so two
//! writers putting the same object write the same bytes and no write
//! depends on a conditional PUT (some S3 servers ignore them).
//!
//! There are no lock files (a stale one would block every node, and
//! nothing on such a store can take one safely): prune's safety comes from
//! time. Phase two deletes a doomed pack only once its doom record is older
//! than the grace period ([`DEFAULT_PRUNE_GRACE`], 24 h) and the pack's own
//! last-modified time is too (a writer may have just put it and not yet its
//! index); phase one never dooms an unindexed pack younger than the grace.
//! A writer therefore must finish within half the grace: one whose index is
//! older than that refuses to record a snapshot ([`crate::Error::HistoryStale`]),
//! since a prune may since have deleted packs it deduplicated against.
//! Two prunes at once are safe the same way: each keeps what its own view
//! references, and deletion waits for the grace. Clocks of nodes and the
//! store must agree to well within half the grace.
//!
//! Requests and bytes are counted per open store ([`History::requests`];
//! a store-only server writes each session's in its audit record).
//! A node lists the index files and the snapshot records at open and reads
//! only those its process has not read before (neither ever changes; a
//! listed-before index file gone means a prune replaced it, and the index
//! is read whole again). Pack bodies are read by range; a restore reads
//! them ahead in the order the receiver asks for chunks
//! ([`restore::ReadAhead`]): 256 KiB blocks of packs, one request per run
//! of neighbouring blocks up to 4 MiB, several at once, at most 32 MiB held.


mod disk;
mod index;
// Until `xfer serve --store` opens stores by URL, the object store side
// is reached from tests only (with `internals`).
mod objects;
mod prune;
pub mod restore;
pub mod walk;

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::error::{Error, IoContext, Result};
use crate::hash::ChunkId;
use crate::history::index::{self as index_file, IndexedPack};
use crate::history::pack::{BlobKind, PackBuilder, PackEntry};
use crate::history::{hex, select, tree, unhex32, FormatError};
use crate::manifest::{Manifest, RelPath};

use index::Index;
use objects::{LocalDir, Objects};
pub use objects::{RequestMeter, Requests, StoreUrl};
pub use restore::SnapshotReader;
pub use walk::SnapshotTree;

/// How long prune waits, on an object store, between dooming a pack and
/// deleting it, and the least age of a pack it deletes or dooms unindexed.
pub const DEFAULT_PRUNE_GRACE: Duration = Duration::from_secs(24 * 3600);

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
    /// The directory or URL, for messages.
    dir: PathBuf,
    objects: Box<dyn Objects>,
    /// The local layout's directory and this writer's lock there; `None`
    /// on an object store.
    local: Option<(PathBuf, disk::WriterLock)>,
    index: Index,
    /// On an object store, the index rows this process has read of it.
    index_cache: Option<Arc<Mutex<index::Runs>>>,
    /// When `index` was read from the store, ms since the epoch.
    index_read_ms: u64,
    pending: PackBuilder,
    pending_ids: HashSet<ChunkId>,
    /// Packs this `History` has written.
    packs_written: u64,
    min_repack_gain: u64,
    pack_target: usize,
    prune_grace: Duration,
    /// Snapshot records read so far, by id: they never change. Shared by
    /// every `History` of this store in the process ([`record_cache`]).
    records: Arc<Mutex<HashMap<String, SnapshotRecord>>>,
    /// The blobs of doomed packs, read at the first blob the index lacks.
    doomed: Mutex<Option<Arc<DoomedBlobs>>>,
}

/// Where each blob of the doomed packs sits: its pack and entry.
type DoomedBlobs = HashMap<ChunkId, ([u8; 32], PackEntry)>;

/// Records per store, by the store's label (its directory or URL).
type RecordCaches = HashMap<PathBuf, Arc<Mutex<HashMap<String, SnapshotRecord>>>>;
static RECORD_CACHES: Mutex<Option<RecordCaches>> = Mutex::new(None);

/// The process's cache of the snapshot records of the store at `label`. A
/// server opens its store once a session: sharing the records it read means
/// a session GETs only the records written since, not every tree's (which
/// grows with clients times snapshots kept). A cached record is used only
/// while the store still lists it, and each was checked against its name
/// when read, so the cache can never show a record the store lacks.
fn record_cache(label: &Path) -> Arc<Mutex<HashMap<String, SnapshotRecord>>> {
    let mut caches = RECORD_CACHES.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    caches.get_or_insert_with(HashMap::new).entry(label.to_path_buf()).or_default().clone()
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
        let objects = LocalDir::new(dir);
        read_or_write_config(&objects)?;
        let lock = disk::WriterLock::take(&dir.join("locks"))?;
        History::with_objects(Box::new(objects), Some((dir.to_path_buf(), lock)))
    }

    /// Opens the store `url` names ([`StoreUrl`]: `s3://BUCKET/PREFIX`,
    /// `file:///PATH`, `memory:NAME`, or a directory in the local layout),
    /// creating it if missing. An S3 store takes its endpoint, region and
    /// credentials from the `AWS_*` environment variables.
    ///
    /// # Errors
    /// A URL of none of those forms (the message lists them); an
    /// unreachable or unreadable store, or one of an unknown format.
    pub fn open_url(url: &str) -> Result<History> {
        let parsed = StoreUrl::parse(url)?;
        if let StoreUrl::Dir(dir) = &parsed {
            return History::open(dir);
        }
        let objects = parsed.bucket(url)?;
        read_or_write_config(&objects)?;
        History::with_objects(Box::new(objects), None)
    }

    fn with_objects(objects: Box<dyn Objects>, local: Option<(PathBuf, disk::WriterLock)>) -> Result<History> {
        let dir = objects.label("");
        // A local store is read from disk cheaply and has one writer per
        // process; an object store charges per request.
        let index_cache = local.is_none().then(|| index::cache_of(&dir));
        let index_read_ms = disk::now_ms();
        let index = match &index_cache {
            Some(cache) => Index::load_cached(objects.as_ref(), cache)?,
            None => Index::load(objects.as_ref())?,
        };
        Ok(History {
            records: record_cache(&dir),
            doomed: Mutex::default(),
            index_cache,
            dir,
            objects,
            local,
            index,
            index_read_ms,
            pending: PackBuilder::new(),
            pending_ids: HashSet::new(),
            packs_written: 0,
            pack_target: PACK_TARGET,
            min_repack_gain: crate::history::prune::MIN_REPACK_GAIN,
            prune_grace: DEFAULT_PRUNE_GRACE,
        })
    }

    /// The requests this store has made since it was opened, and their bytes.
    pub fn requests(&self) -> Requests {
        self.objects.requests()
    }

    /// Reads this store's requests, also after it is handed on or closed.
    pub fn meter(&self) -> RequestMeter {
        self.objects.meter()
    }

    /// Sets how long, on an object store, prune keeps a doomed pack and
    /// leaves young packs alone ([`DEFAULT_PRUNE_GRACE`]); a local store
    /// uses writer locks instead. Zero is for a store with one writer.
    #[cfg_attr(not(feature = "internals"), allow(dead_code))]
    pub fn set_prune_grace(&mut self, grace: Duration) {
        self.prune_grace = grace;
    }

    /// Bytes of every pack in the store.
    ///
    /// # Errors
    /// The store cannot be listed.
    pub fn pack_bytes(&self) -> Result<u64> {
        Ok(self.objects.list("packs")?.iter().map(|p| p.size).sum())
    }

    /// Reads the index again (other writers may have added to it).
    fn reload_index(&mut self) -> Result<()> {
        let read_ms = disk::now_ms();
        self.index = match &self.index_cache {
            Some(cache) => Index::load_cached(self.objects.as_ref(), cache)?,
            None => Index::load(self.objects.as_ref())?,
        };
        self.index_read_ms = read_ms;
        Ok(())
    }

    /// Refuses, on an object store, a writer whose index is older than
    /// half the prune grace (see the module's notes).
    fn check_fresh(&self) -> Result<()> {
        if self.local.is_some() || self.prune_grace.is_zero() {
            return Ok(());
        }
        let age = Duration::from_millis(disk::now_ms().saturating_sub(self.index_read_ms));
        if age >= self.prune_grace / 2 {
            return Err(Error::HistoryStale {
                path: self.dir.clone(),
                age_secs: age.as_secs(),
                grace_secs: self.prune_grace.as_secs(),
            });
        }
        Ok(())
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
        Error::History { path: self.dir.clone(), cause: Box::new(source) }
    }

    /// Packs written so far: when it grows, every blob added before is
    /// durable (nothing stays buffered across a pack write).
    pub fn packs_written(&self) -> u64 {
        self.packs_written
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
        self.objects.put(&pack_key(&pack.id), &bytes)?;
        crate::crashpoint::hit("history.pack_written");
        let name = self.write_index(std::slice::from_ref(&pack))?;
        crate::crashpoint::hit("history.index_written");
        self.index.add_pack(&pack).map_err(|e| self.format_error(e))?;
        self.pending_ids.clear();
        self.packs_written += 1;
        Ok(Some((pack, name)))
    }

    /// Writes an index file naming `packs`; returns its name.
    fn write_index(&self, packs: &[IndexedPack]) -> Result<String> {
        let bytes = index_file::encode(packs);
        let name = hex(blake3::hash(&bytes).as_bytes());
        self.objects.put(&format!("index/{name}"), &bytes)?;
        Ok(name)
    }

    fn pack_path(&self, id: &[u8; 32]) -> PathBuf {
        self.objects.label(&pack_key(id))
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
        match self.blob_from(&self.index, id)? {
            Some(bytes) => Ok(Some(bytes)),
            None => self.blob_from_doomed(id),
        }
    }

    /// Blob `id` from a pack a prune doomed, if one holds it (see
    /// [`prune::doomed_blobs`]); the doomed packs are read once.
    fn blob_from_doomed(&self, id: &ChunkId) -> Result<Option<Vec<u8>>> {
        let doomed = {
            let mut slot = self.doomed.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            match &*slot {
                Some(doomed) => Arc::clone(doomed),
                None => Arc::clone(slot.insert(Arc::new(prune::doomed_blobs(self)?))),
            }
        };
        let Some((pack, entry)) = doomed.get(id) else { return Ok(None) };
        let body = self.read_body(pack, entry)?;
        self.open_entry(pack, entry, &body).map(Some)
    }

    /// Blob `id` as `index` places it, verified.
    fn blob_from(&self, index: &Index, id: &ChunkId) -> Result<Option<Vec<u8>>> {
        let Some(loc) = index.get(id) else { return Ok(None) };
        let pack = index.pack(loc.pack).id;
        let entry = loc.entry(*id);
        let body = self.read_body(&pack, &entry)?;
        entry.open(&body).map(Some).map_err(|e| Error::History { path: self.pack_path(&pack), cause: Box::new(e) })
    }

    fn read_body(&self, pack: &[u8; 32], entry: &PackEntry) -> Result<Vec<u8>> {
        self.objects.get_range(&pack_key(pack), entry.offset..entry.offset + u64::from(entry.stored))
    }

    /// Where blob `id` sits in a written pack: the pack, the pack's
    /// length and the blob's entry; `None` for a blob only buffered, or
    /// not held.
    pub(in crate::fs::history) fn locate(&self, id: &ChunkId) -> Option<([u8; 32], u64, PackEntry)> {
        if self.pending.get(id).is_some() {
            return None;
        }
        let loc = self.index.get(id)?;
        let pack = self.index.pack(loc.pack);
        Some((pack.id, pack.len, loc.entry(*id)))
    }

    /// Starts reading `range` of pack `pack` (see [`Objects::start_range`]).
    pub(in crate::fs::history) fn start_read(&self, pack: &[u8; 32], range: std::ops::Range<u64>) -> objects::Fetch {
        self.objects.start_range(&pack_key(pack), range)
    }

    /// The blob `entry` of pack `pack` from its stored `body`, verified.
    ///
    /// # Errors
    /// A body that does not decode to the blob.
    pub(in crate::fs::history) fn open_entry(&self, pack: &[u8; 32], entry: &PackEntry, body: &[u8]) -> Result<Vec<u8>> {
        entry.open(body).map_err(|e| Error::History { path: self.pack_path(pack), cause: Box::new(e) })
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
        self.check_fresh()?;
        self.objects.put(&format!("snapshots/{id}"), &bytes)?;
        crate::crashpoint::hit("history.snapshot_written");
        record.id = id;
        self.records.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(record.id.clone(), record.clone());
        Ok(record)
    }

    /// Every snapshot, oldest first.
    ///
    /// # Errors
    /// An unreadable snapshot directory or record.
    pub fn snapshots(&self) -> Result<Vec<SnapshotRecord>> {
        let listed = self.objects.list("snapshots")?;
        let mut cache = self.records.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        cache.retain(|id, _| listed.binary_search_by(|l| l.name.as_str().cmp(id)).is_ok());
        let mut records = Vec::new();
        for listed in listed {
            if let Some(record) = cache.get(&listed.name) {
                records.push(record.clone());
                continue;
            }
            // None: forgotten since the listing.
            let Some(bytes) = self.objects.get(&listed.key, MAX_RECORD)? else { continue };
            let path = self.objects.label(&listed.key);
            let bad = |reason: String| Error::HistoryConfig { path: path.clone(), reason };
            if hex(blake3::hash(&bytes).as_bytes()) != listed.name {
                return Err(bad("the snapshot record does not match its name (damaged)".into()));
            }
            let mut record: SnapshotRecord =
                serde_json::from_slice(&bytes).map_err(|e| bad(format!("the snapshot record does not parse: {e}")))?;
            record.id = listed.name;
            cache.insert(record.id.clone(), record.clone());
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
        let select_error = |source| Error::SnapshotSelect { path: self.dir.clone(), tree: tree.to_string(), cause: source };
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
        for id in doomed {
            self.objects.delete(&format!("snapshots/{id}"))?;
            self.records.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(&id);
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
        // One prune at a time on a local store, whoever runs it (a
        // server's schedule, a client's request, the operator by hand):
        // two whose plans differ could each keep in its new index a pack
        // the other doomed. The lock goes with the file, closed when this
        // returns. An object store has no such lock: the grace covers it.
        let _guard = match &self.local {
            Some((dir, _)) => {
                let path = dir.join("prune.lock");
                let file =
                    std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&path).at(&path)?;
                rustix::fs::flock(&file, rustix::fs::FlockOperation::LockExclusive)
                    .map_err(|e| Error::io(&path, std::io::Error::from(e)))?;
                Some(file)
            }
            None => None,
        };
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

/// The key of pack `id`.
fn pack_key(id: &[u8; 32]) -> String {
    format!("packs/{}/{}", hex(&id[..1]), hex(id))
}

fn read_or_write_config(objects: &dyn Objects) -> Result<()> {
    let path = objects.label("config");
    match objects.get("config", MAX_RECORD)? {
        Some(bytes) => {
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
        None => {
            // Two nodes creating one store at once each write a config;
            // either wins, and only the format matters to readers.
            let config = Config { format: FORMAT, id: disk::random_hex() };
            let bytes = serde_json::to_vec_pretty(&config).expect("invariant: a config serializes");
            objects.put("config", &bytes)
        }
    }
}

/// Named immutable objects under a key prefix of the store, for records
/// kept beside the repository's own (a store-only server's per-client
/// chunk lists): written and listed like every other object, on any backend.
impl History {
    /// Writes `bytes` as an object under `sub` (plain names joined by `/`),
    /// named by their hash; returns the name.
    ///
    /// # Errors
    /// A `sub` that is not plain names; failures writing.
    pub fn put_named(&self, sub: &str, bytes: &[u8]) -> Result<String> {
        self.check_sub(sub)?;
        let name = hex(blake3::hash(bytes).as_bytes());
        self.objects.put(&format!("{sub}/{name}"), bytes)?;
        Ok(name)
    }

    /// Hands each object under `sub` (none if there are none) to `each`
    /// with its name, one at a time, once checked against its name and
    /// `max` bytes.
    ///
    /// # Errors
    /// An unreadable, oversized or damaged object; `each`'s error.
    pub fn each_named(&self, sub: &str, max: u64, mut each: impl FnMut(&str, &[u8]) -> Result<()>) -> Result<()> {
        self.check_sub(sub)?;
        for listed in self.objects.list(sub)? {
            // None: removed since the listing.
            let Some(bytes) = self.objects.get(&listed.key, max)? else { continue };
            if hex(blake3::hash(&bytes).as_bytes()) != listed.name {
                let reason = "the object does not match its name (damaged)".to_string();
                return Err(Error::HistoryConfig { path: self.objects.label(&listed.key), reason });
            }
            each(&listed.name, &bytes)?;
        }
        Ok(())
    }

    /// Deletes the object `name` under `sub` (gone already is no error).
    ///
    /// # Errors
    /// A `sub` or `name` that is not a plain name; failures deleting.
    pub fn delete_named(&self, sub: &str, name: &str) -> Result<()> {
        self.check_sub(sub)?;
        self.check_sub(name)?;
        if name.contains('/') {
            let reason = format!("{name:?} is not an object name");
            return Err(Error::HistoryConfig { path: self.dir.clone(), reason });
        }
        self.objects.delete(&format!("{sub}/{name}"))
    }

    /// Refuses a prefix that is not plain names.
    fn check_sub(&self, sub: &str) -> Result<()> {
        if sub.split('/').any(|part| part.is_empty() || part == "." || part == "..") {
            let reason = format!("{sub:?} is not a subdirectory of the store");
            return Err(Error::HistoryConfig { path: self.dir.clone(), reason });
        }
        Ok(())
    }
}
