//! A store-only destination: a push lands in the history store itself,
//! with no mirror tree beside it. The tree a push starts from is the
//! latest snapshot of its path; chunks go straight into packs; each file
//! is accepted only once its chunks, in order, hash to what the sender
//! promised; the push ends by recording one snapshot of the tree it left.
//!
//! That check reads the bytes it has at hand: what arrived in this push is
//! kept for it (up to [`KEPT_BUDGET`] at a time, and [`KEPT_IN_PROCESS`]
//! for all the pushes of the process, so a node's memory does not grow with
//! its sessions), so a new file costs no
//! request; only chunks the store held already, or kept past the budget,
//! are read back, in runs of ranged reads. On a bucket those reads are
//! billed: a changed file costs its unchanged bytes in reads.
//!
//! Durability order: chunks are buffered and written as packs, the packs
//! and their index are flushed before the snapshot record is written (the
//! history store's own rule), so a snapshot never names a chunk that is not
//! durable. A push cut short still flushes what it received: the next push
//! finds those chunks held and does not send them again.
//!
//! Isolation between clients: a chunk counts as held for client C pushing
//! tree T only if the store has it AND it is in T's latest snapshot (a
//! tree C may read anyway), or C itself sent it before (to any tree, in a
//! push cut short too), or the server dedups across clients. Otherwise C
//! must send the bytes: naming another tenant's chunk ids never gets C
//! their content, and the answers never say what others stored.
//!
//! What C sent is kept as immutable objects in the store itself,
//! `owners/<hash of C>/<hash>` (the sorted ids one push received), rather
//! than in a database beside it: a server over an object store keeps no
//! state on its node, and any node reads the same lists. They are loaded
//! into one sorted list at push start: 32 bytes per chunk C ever stored.
//! A list that cannot be read only makes C resend, never leaks; an id
//! pruned since stays listed but counts only while the store holds it.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::PathBuf;
use std::borrow::Borrow;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

use crate::chunk::{ChunkRef, FileDigest};
use crate::codec::{self, EncodedChunk};
use crate::error::{Error, Result};
use crate::fs::history::restore::ReadAhead;
use crate::fs::history::{History, RequestMeter, Requests, SnapshotInfo, SnapshotReader, SnapshotRecord};
use crate::hash::{ChunkId, FileHash};
use crate::manifest::{Entry, EntryKind, Manifest, Meta, RelPath};
use crate::patch::Signature;
use crate::plan::Op;
use crate::session::{ApplyReport, ChunkReader, Destination, FailedEntry, NeedInfo, Put};

/// Trees a push is writing in this process, by store and tree name.
static WRITING: Mutex<Option<HashSet<(String, String)>>> = Mutex::new(None);

/// Holds one tree of one store for one push; released when dropped.
struct TreeClaim {
    key: (String, String),
}

impl TreeClaim {
    /// Claims `tree` of the store at `store`, or says another push has it.
    fn take(store: &str, tree: &str) -> Result<TreeClaim> {
        let key = (store.to_string(), tree.to_string());
        let mut writing = WRITING.lock().unwrap_or_else(PoisonError::into_inner);
        if !writing.get_or_insert_with(HashSet::new).insert(key.clone()) {
            let path = PathBuf::from(tree);
            return Err(Error::Busy { holder: path.clone(), path });
        }
        Ok(TreeClaim { key })
    }
}

impl Drop for TreeClaim {
    fn drop(&mut self) {
        let mut writing = WRITING.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(set) = writing.as_mut() {
            set.remove(&self.key);
        }
    }
}

/// A missing chunk of a file in flight.
struct Slot {
    index: usize,
    offset: u64,
    chunk: ChunkRef,
}

struct Flight {
    path: RelPath,
    meta: Meta,
    digest: FileDigest,
    needs: Vec<Slot>,
    stored: Vec<bool>,
    /// Bytes of its chunks that arrived in this push, kept for the
    /// whole-file check so it need not read them back.
    kept: HashMap<ChunkId, Vec<u8>>,
}

/// Bytes of arrived chunks one push keeps, across its files in flight, for
/// their whole-file checks; past it, chunks are read back from the store.
const KEPT_BUDGET: u64 = 64 << 20;

/// Bytes of arrived chunks all the pushes of the process keep together.
const KEPT_IN_PROCESS: u64 = 256 << 20;

/// Bytes kept now, of [`KEPT_IN_PROCESS`].
static KEPT: AtomicU64 = AtomicU64::new(0);

/// Takes `len` bytes of the process's budget, if they are free.
fn reserve_kept(len: u64) -> bool {
    KEPT.fetch_update(Ordering::AcqRel, Ordering::Acquire, |kept| (kept + len <= KEPT_IN_PROCESS).then_some(kept + len))
        .is_ok()
}

fn need_info(need: usize, slot: &Slot) -> NeedInfo {
    NeedInfo { need, index: slot.index, offset: slot.offset, chunk: slot.chunk, signature: None }
}

/// Chunk ids per owner list object (32 MiB); a longer list is split.
const OWNED_PER_OBJECT: usize = 1 << 20;

/// Where the lists of the chunks `client` sent are kept in the store.
fn owners_dir(client: &str) -> String {
    format!("owners/{}", &blake3::hash(client.as_bytes()).to_hex()[..32])
}

/// Owner lists of one client past which a push start merges them into
/// one: each push leaves at least one, and every push start reads them all.
const MERGE_OWNER_LISTS: usize = 16;

/// The chunks `client` sent in earlier pushes, sorted; what cannot be read
/// is left out (the client then sends it again). Past
/// [`MERGE_OWNER_LISTS`] lists, they are merged.
fn load_owned(history: &History, client: &str) -> Vec<[u8; 32]> {
    let mut owned = Vec::new();
    let mut names = Vec::new();
    let max = (OWNED_PER_OBJECT * 32) as u64;
    let loaded = history.each_named(&owners_dir(client), max, |name, bytes| {
        names.push(name.to_string());
        owned.extend(bytes.chunks_exact(32).filter_map(|id| <[u8; 32]>::try_from(id).ok()));
        Ok(())
    });
    if let Err(e) = &loaded {
        tracing::warn!(%client, error = %e, "a list of the client's chunks is unreadable; it sends them again");
    }
    owned.sort_unstable();
    owned.dedup();
    if loaded.is_ok() && names.len() > MERGE_OWNER_LISTS {
        merge_owned(history, client, &owned, &names);
    }
    owned
}

/// Replaces the lists `names` of `client` by lists of `owned` (all they
/// held): the new ones are written first, so a reader finds each id in one
/// or the other, or, having listed the old names just before they went,
/// misses some and has the client send them again (never more than that:
/// a list only spares sends). A failure leaves the old lists.
fn merge_owned(history: &History, client: &str, owned: &[[u8; 32]], names: &[String]) {
    let dir = owners_dir(client);
    let mut kept = HashSet::new();
    for part in owned.chunks(OWNED_PER_OBJECT) {
        match history.put_named(&dir, &part.concat()) {
            Ok(name) => kept.insert(name),
            Err(e) => {
                tracing::warn!(%client, error = %e, "could not merge the lists of the client's chunks");
                return;
            }
        };
    }
    for name in names.iter().filter(|n| !kept.contains(*n)) {
        if let Err(e) = history.delete_named(&dir, name) {
            tracing::warn!(%client, error = %e, "could not remove a merged list of the client's chunks");
            return;
        }
    }
}

/// A push into the history store alone (see the module's comment).
pub struct RepoDestination {
    history: History,
    info: SnapshotInfo,
    /// The latest snapshot's tree, as the session plans against it.
    base: Manifest,
    /// The chunks of `base`'s files.
    in_tree: HashSet<ChunkId>,
    /// The chunks this client sent in earlier pushes, sorted.
    owned: Vec<[u8; 32]>,
    /// The chunks this push received: the client's own from now on.
    uploaded: HashSet<ChunkId>,
    /// Those of them not yet in an owner list of the store.
    unsaved: Vec<[u8; 32]>,
    /// Any chunk the store holds counts, whoever sent it.
    across_clients: bool,
    /// The tree as this push has changed it so far.
    tree: BTreeMap<RelPath, Entry>,
    /// Hard links by their target: who must get a copy when it goes.
    links: HashMap<RelPath, BTreeSet<RelPath>>,
    in_flight: HashMap<u32, Flight>,
    /// Each chunk asked for by a file in flight, by the need that asked.
    asked: HashMap<ChunkId, (u32, usize)>,
    /// Needs of other files waiting for an asked chunk.
    waiting: HashMap<ChunkId, Vec<(u32, usize)>>,
    /// Bytes in the files' `kept`: this push's part of [`KEPT`].
    kept_bytes: u64,
    /// Reads back, in runs, what a whole-file check lacks.
    ahead: ReadAhead,
    report: ApplyReport,
    _claim: TreeClaim,
}

impl RepoDestination {
    /// A push of the tree `info.tree` into `history`, whose location
    /// `store` names (two pushes to one tree of one store at once: the
    /// second is refused as busy).
    ///
    /// # Errors
    /// [`Error::Busy`] while another push in this process writes the tree.
    pub fn open(history: History, store: &str, info: SnapshotInfo) -> Result<RepoDestination> {
        let claim = TreeClaim::take(store, &info.tree)?;
        let owned = load_owned(&history, &info.client);
        Ok(RepoDestination {
            history,
            info,
            base: Manifest::default(),
            in_tree: HashSet::new(),
            owned,
            uploaded: HashSet::new(),
            unsaved: Vec::new(),
            across_clients: false,
            tree: BTreeMap::new(),
            links: HashMap::new(),
            in_flight: HashMap::new(),
            asked: HashMap::new(),
            waiting: HashMap::new(),
            kept_bytes: 0,
            ahead: ReadAhead::new(),
            report: ApplyReport::default(),
            _claim: claim,
        })
    }

    /// Reads what the history store costs this push.
    pub fn meter(&self) -> RequestMeter {
        self.history.meter()
    }

    /// Counts any chunk the store holds as held, whoever sent it
    /// (`serve --dedup-across-clients`): no resends, but a client learns
    /// what others stored.
    #[must_use]
    pub fn across_clients(mut self, on: bool) -> RepoDestination {
        self.across_clients = on;
        self
    }

    /// Whether the client need not send chunk `id` (the module's comment
    /// says when).
    fn holds(&self, id: &ChunkId) -> bool {
        self.history.contains(id)
            && (self.across_clients
                || self.in_tree.contains(id)
                || self.uploaded.contains(id)
                || self.owned.binary_search(&id.0).is_ok())
    }

    /// Records, once the packs holding them are durable, the chunks this
    /// push received as the client's own. A failure only costs resends.
    /// Called after each pack a push writes as well as at its end, so a
    /// push killed mid-way (no end at all) costs the next one only what
    /// was still buffered: one owner list per pack, read at each push start.
    fn save_uploaded(&mut self) {
        let mut ids = std::mem::take(&mut self.unsaved);
        if ids.is_empty() {
            return;
        }
        ids.sort_unstable();
        let dir = owners_dir(&self.info.client);
        for part in ids.chunks(OWNED_PER_OBJECT) {
            if let Err(e) = self.history.put_named(&dir, &part.concat()) {
                tracing::warn!(client = %self.info.client, error = %e, "could not record the client's chunks");
                return;
            }
        }
    }

    fn entry_error(path: &RelPath, reason: impl Into<String>) -> Error {
        Error::RepoEntry { path: PathBuf::from(path.to_string()), reason: reason.into() }
    }

    /// Refuses an entry whose parent is not a directory of the tree.
    fn check_parent(&self, path: &RelPath) -> Result<()> {
        if path.is_root() {
            return Err(Self::entry_error(path, "the tree's root is not an entry"));
        }
        let parent = path.parent();
        if parent.is_root() || self.tree.get(&parent).is_some_and(|e| matches!(e.kind, EntryKind::Dir)) {
            return Ok(());
        }
        Err(Self::entry_error(path, "its parent is not a directory of the tree"))
    }

    /// Puts `entry` in the tree in place of whatever stood at its path.
    fn put_entry(&mut self, entry: Entry) {
        self.remove_subtree(&entry.path);
        if let EntryKind::HardLink { target, .. } = &entry.kind {
            self.links.entry(target.clone()).or_default().insert(entry.path.clone());
        }
        self.tree.insert(entry.path.clone(), entry);
    }

    /// Removes `path` and everything under it; hard links elsewhere to a
    /// file removed get the file's content themselves, as on a disk.
    /// Whether anything was there.
    fn remove_subtree(&mut self, path: &RelPath) -> bool {
        let gone: Vec<RelPath> =
            self.tree.range(path.clone()..).map(|(p, _)| p).take_while(|p| *p == path || p.is_inside(path)).cloned().collect();
        let mut orphans = Vec::new();
        for p in &gone {
            let Some(entry) = self.tree.remove(p) else { continue };
            match entry.kind {
                EntryKind::File(digest) => {
                    if let Some(links) = self.links.remove(p) {
                        orphans.push((links, digest));
                    }
                }
                EntryKind::HardLink { target, .. } => self.unlink(&target, p),
                _ => {}
            }
        }
        for (links, digest) in orphans {
            self.detach_links(links, digest);
        }
        !gone.is_empty()
    }

    fn unlink(&mut self, target: &RelPath, link: &RelPath) {
        if let Some(set) = self.links.get_mut(target) {
            set.remove(link);
            if set.is_empty() {
                self.links.remove(target);
            }
        }
    }

    /// The links to a file that went: the first (in tree order) becomes
    /// the file, the others its links.
    fn detach_links(&mut self, links: BTreeSet<RelPath>, digest: FileDigest) {
        let links: Vec<RelPath> = links.into_iter().filter(|l| self.tree.contains_key(l)).collect();
        let mut links = links.into_iter();
        let Some(first) = links.next() else { return };
        let (size, hash) = (digest.size, digest.hash);
        if let Some(entry) = self.tree.get_mut(&first) {
            entry.kind = EntryKind::File(digest);
        }
        for link in links {
            if let Some(entry) = self.tree.get_mut(&link) {
                entry.kind = EntryKind::HardLink { target: first.clone(), size, hash };
                self.links.entry(first.clone()).or_default().insert(link);
            }
        }
    }

    /// A hard link `path` to `target` (which must hold `size` bytes hashing
    /// to `hash`); a copy when the target sorts after it, as a manifest's
    /// links must follow their target.
    fn link(&mut self, path: &RelPath, target: &RelPath, size: u64, hash: &FileHash) -> Result<()> {
        let refused = || Error::LinkTarget { path: PathBuf::from(path.to_string()), target: PathBuf::from(target.to_string()) };
        let (meta, digest) = match self.tree.get(target) {
            Some(Entry { meta, kind: EntryKind::File(d), .. }) if d.size == size && d.hash == *hash => (meta.clone(), d.clone()),
            _ => return Err(refused()),
        };
        if target == path || path.is_inside(target) {
            return Err(refused());
        }
        let kind = if target < path { EntryKind::HardLink { target: target.clone(), size, hash: *hash } } else { EntryKind::File(digest) };
        self.put_entry(Entry { path: path.clone(), meta, kind });
        Ok(())
    }

    fn set_meta(&mut self, path: &RelPath, meta: &Meta) -> Result<()> {
        let Some(entry) = self.tree.get_mut(path) else {
            return Err(Self::entry_error(path, "no such entry in the tree"));
        };
        entry.meta = meta.clone();
        match entry.kind.clone() {
            // A link's metadata is its file's: one of its own makes it a copy.
            EntryKind::HardLink { target, .. } => {
                let file = self.tree.get(&target).map(|t| (t.meta.clone(), t.file().cloned()));
                if let Some((target_meta, Some(digest))) = file {
                    if target_meta != *meta {
                        self.unlink(&target, path);
                        if let Some(entry) = self.tree.get_mut(path) {
                            entry.kind = EntryKind::File(digest);
                        }
                    }
                }
            }
            EntryKind::File(_) => {
                for link in self.links.get(path).into_iter().flatten() {
                    if let Some(entry) = self.tree.get_mut(link) {
                        entry.meta = meta.clone();
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Checks the whole-file hash of `flight`: its chunks in order, those
    /// that arrived from what was kept, the rest read back from the store.
    fn verify(&mut self, flight: &Flight) -> Result<()> {
        let mismatch = || Error::FileMismatch { path: PathBuf::from(flight.path.to_string()) };
        for chunk in flight.digest.chunks.iter().filter(|c| !flight.kept.contains_key(&c.id)) {
            self.ahead.hint(chunk.id);
        }
        let mut hasher = blake3::Hasher::new();
        let mut size = 0u64;
        for chunk in &flight.digest.chunks {
            // What was kept stays until the caller releases the whole file:
            // a chunk the list repeats is read from it each time.
            let read;
            let bytes: &[u8] = match flight.kept.get(&chunk.id) {
                Some(kept) => kept,
                None => {
                    read = self.ahead.read(&self.history, &chunk.id)?.ok_or_else(|| Error::HistoryDamaged {
                        path: PathBuf::from(flight.path.to_string()),
                        chunk: chunk.id,
                    })?;
                    &read
                }
            };
            if bytes.len() != chunk.len as usize {
                return Err(mismatch());
            }
            hasher.update(bytes);
            size += bytes.len() as u64;
        }
        if size != flight.digest.size || FileHash::from(hasher.finalize()) != flight.digest.hash {
            return Err(mismatch());
        }
        Ok(())
    }

    /// Lets go of what `flight` kept.
    fn release(&mut self, flight: &Flight) {
        self.unkeep(flight.kept.values().map(|b| b.len() as u64).sum::<u64>());
    }

    /// Gives `len` kept bytes back to the budget.
    fn unkeep(&mut self, len: u64) {
        self.kept_bytes -= len;
        KEPT.fetch_sub(len, Ordering::AcqRel);
    }

    /// The tree as it stands, as a manifest.
    fn current(&self) -> Result<Manifest> {
        Ok(Manifest::new(self.tree.values().cloned().collect())?)
    }

    /// The snapshot this push leaves (`partial` when it did not run to its end).
    fn record(&mut self, partial: bool) -> Result<SnapshotRecord> {
        let manifest = self.current()?;
        let mut info = self.info.clone();
        info.partial |= partial;
        info.time.get_or_insert_with(SystemTime::now);
        self.history.record_snapshot(&manifest, &info)
    }
}

/// The latest snapshot of `tree` in `history`, if any (latest by time,
/// then nanoseconds, then id: the order [`History::snapshots`] lists).
///
/// # Errors
/// An unreadable snapshot listing.
pub fn latest_snapshot(history: &History, tree: &str) -> Result<Option<SnapshotRecord>> {
    Ok(history.snapshots()?.into_iter().rfind(|r| r.tree == tree))
}

impl Destination for RepoDestination {
    type Error = Error;

    fn refresh(&mut self, _checksum: bool) -> Result<&Manifest> {
        self.base = match latest_snapshot(&self.history, &self.info.tree)? {
            Some(record) => self.history.load_tree(&record, &RelPath::root())?,
            None => Manifest::default(),
        };
        self.tree = self.base.entries().iter().map(|e| (e.path.clone(), e.clone())).collect();
        self.in_tree = self.base.entries().iter().filter_map(Entry::file).flat_map(|d| d.chunks.iter().map(|c| c.id)).collect();
        self.links.clear();
        for entry in self.base.entries() {
            if let EntryKind::HardLink { target, .. } = &entry.kind {
                self.links.entry(target.clone()).or_default().insert(entry.path.clone());
            }
        }
        Ok(&self.base)
    }

    fn manifest(&self) -> &Manifest {
        &self.base
    }

    fn has_chunks(&self, ids: &[ChunkId]) -> Result<Vec<bool>> {
        // Only what this client may reuse (the module's comment): the store
        // holding an id another client sent is neither said nor counted.
        Ok(ids.iter().map(|id| self.holds(id)).collect())
    }

    fn apply_op(&mut self, op: &Op) -> Result<()> {
        match op {
            Op::WriteFile { path, .. } => Err(Self::entry_error(path, "a file's content comes through begin_file")),
            Op::Mkdir { path, meta } => {
                self.check_parent(path)?;
                match self.tree.get_mut(path) {
                    Some(entry) if matches!(entry.kind, EntryKind::Dir) => entry.meta = meta.clone(),
                    _ => self.put_entry(Entry { path: path.clone(), meta: meta.clone(), kind: EntryKind::Dir }),
                }
                Ok(())
            }
            Op::Symlink { path, target, meta } => {
                self.check_parent(path)?;
                let kind = EntryKind::Symlink { target: target.clone() };
                self.put_entry(Entry { path: path.clone(), meta: meta.clone(), kind });
                Ok(())
            }
            Op::Link { path, target, size, hash } => {
                self.check_parent(path)?;
                self.link(path, target, *size, hash)
            }
            Op::Delete { path } => {
                if self.remove_subtree(path) {
                    self.report.entries_deleted += 1;
                }
                Ok(())
            }
            Op::SetMeta { path, meta } => self.set_meta(path, meta),
        }
    }

    fn batch_full(&self) -> bool {
        false
    }

    fn begin_file(&mut self, file: u32, path: &RelPath, meta: &Meta, digest: &FileDigest) -> Result<Vec<NeedInfo>> {
        self.check_parent(path)?;
        if self.in_flight.contains_key(&file) {
            return Err(Error::UnknownTransfer { file, need: usize::MAX });
        }
        let mut flight = Flight {
            path: path.clone(),
            meta: meta.clone(),
            digest: digest.clone(),
            needs: Vec::new(),
            stored: Vec::new(),
            kept: HashMap::new(),
        };
        let mut seen = HashSet::new();
        let mut asks = Vec::new();
        let mut offset = 0u64;
        for (index, chunk) in digest.chunks.iter().enumerate() {
            let at = offset;
            offset += u64::from(chunk.len);
            if !seen.insert(chunk.id) || self.holds(&chunk.id) {
                self.report.chunks_reused += 1;
                self.report.bytes_reused += u64::from(chunk.len);
                continue;
            }
            let n = flight.needs.len();
            flight.needs.push(Slot { index, offset: at, chunk: *chunk });
            flight.stored.push(false);
            match self.asked.get(&chunk.id) {
                // Another file in flight asked for it: wait for those bytes.
                Some(_) => self.waiting.entry(chunk.id).or_default().push((file, n)),
                None => {
                    self.asked.insert(chunk.id, (file, n));
                    asks.push(need_info(n, &flight.needs[n]));
                }
            }
        }
        self.in_flight.insert(file, flight);
        Ok(asks)
    }

    fn fine_signatures(&self, _file: u32, _need: usize, _request: &[u8]) -> Option<Vec<Signature>> {
        // No bases are offered: there is nothing to refine.
        None
    }

    fn put_chunk(&mut self, file: u32, need: usize, encoded: &EncodedChunk, _with_base: bool) -> Result<Put> {
        let Some(slot) = self.in_flight.get(&file).and_then(|f| f.needs.get(need)) else {
            return Err(Error::UnknownTransfer { file, need });
        };
        let (chunk, index) = (slot.chunk, slot.index);
        self.report.chunks_fetched += 1;
        self.report.bytes_fetched += encoded.payload.len() as u64;
        // No base was offered, so a delta cannot decode: an error for the file.
        let bytes = codec::decode(encoded, &chunk.id, None).map_err(|source| Error::Chunk {
            path: self.in_flight.get(&file).map(|f| PathBuf::from(f.path.to_string())).unwrap_or_default(),
            index,
            chunk: chunk.id,
            cause: Box::new(source),
        })?;
        let packs = self.history.packs_written();
        self.history.add_chunk(chunk.id, &bytes)?;
        // The client proved it has these bytes (they hash to the id).
        if self.uploaded.insert(chunk.id) {
            self.unsaved.push(chunk.id.0);
        }
        if self.history.packs_written() > packs {
            self.save_uploaded();
        }
        if let Some(flight) = self.in_flight.get_mut(&file) {
            flight.stored[need] = true;
            let len = bytes.len() as u64;
            if !flight.kept.contains_key(&chunk.id) && self.kept_bytes + len <= KEPT_BUDGET && reserve_kept(len) {
                self.kept_bytes += bytes.len() as u64;
                flight.kept.insert(chunk.id, bytes);
            }
        }
        if self.asked.get(&chunk.id) == Some(&(file, need)) {
            self.asked.remove(&chunk.id);
        }
        let mut ready = Vec::new();
        for (other, n) in self.waiting.remove(&chunk.id).unwrap_or_default() {
            let Some(flight) = self.in_flight.get_mut(&other) else { continue };
            if let Some(stored) = flight.stored.get_mut(n) {
                *stored = true;
            }
            if flight.stored.iter().all(|&s| s) {
                ready.push(other);
            }
        }
        Ok(Put::Stored(ready))
    }

    fn file_ready(&self, file: u32) -> bool {
        self.in_flight.get(&file).is_some_and(|f| f.stored.iter().all(|&s| s))
    }

    fn complete_file(&mut self, file: u32) -> Result<()> {
        if !self.file_ready(file) {
            return Err(Error::UnknownTransfer { file, need: usize::MAX });
        }
        let Some(flight) = self.in_flight.remove(&file) else {
            return Err(Error::UnknownTransfer { file, need: usize::MAX });
        };
        let verified = self.verify(&flight);
        self.release(&flight);
        verified?;
        let Flight { path, meta, digest, .. } = flight;
        self.check_parent(&path)?;
        self.put_entry(Entry { path, meta, kind: EntryKind::File(digest) });
        self.report.files_written += 1;
        Ok(())
    }

    fn abandon_file(&mut self, file: u32, reason: &str) -> Vec<(u32, NeedInfo)> {
        let Some(flight) = self.in_flight.remove(&file) else { return Vec::new() };
        self.release(&flight);
        self.report.failed.push(FailedEntry { path: flight.path.to_string(), error: reason.to_string() });
        for waiters in self.waiting.values_mut() {
            waiters.retain(|&(f, _)| f != file);
        }
        let mut asks = Vec::new();
        for (n, slot) in flight.needs.iter().enumerate() {
            if self.asked.get(&slot.chunk.id) != Some(&(file, n)) {
                continue;
            }
            self.asked.remove(&slot.chunk.id);
            let mut waiters = self.waiting.remove(&slot.chunk.id).unwrap_or_default().into_iter();
            // The first file still waiting asks for it; the others wait for that one.
            let Some((heir, m)) = waiters.find(|(f, _)| self.in_flight.contains_key(f)) else { continue };
            let Some(need) = self.in_flight.get(&heir).and_then(|f| f.needs.get(m)) else { continue };
            asks.push((heir, need_info(m, need)));
            self.asked.insert(slot.chunk.id, (heir, m));
            let rest: Vec<_> = waiters.collect();
            if !rest.is_empty() {
                self.waiting.insert(slot.chunk.id, rest);
            }
        }
        asks
    }

    fn finish(mut self, complete: bool) -> Result<ApplyReport> {
        for (&file, flight) in &self.in_flight {
            let error = Error::UnknownTransfer { file, need: usize::MAX }.to_string();
            self.report.failed.push(FailedEntry { path: flight.path.to_string(), error });
        }
        self.in_flight.clear();
        // What arrived of unfinished files stays: the next push finds it held.
        self.history.flush()?;
        self.save_uploaded();
        let partial = !complete || !self.report.failed.is_empty();
        self.record(partial)?;
        self.report.batches_committed += 1;
        self.report.store = Some(self.history.requests());
        Ok(std::mem::take(&mut self.report))
    }

    fn discard(self) -> ApplyReport {
        ApplyReport { store: Some(self.history.requests()), ..ApplyReport::default() }
    }
}

impl Drop for RepoDestination {
    fn drop(&mut self) {
        // What files still in flight kept goes back to the budget.
        let kept = self.kept_bytes;
        self.unkeep(kept);
        // Dropped without `finish`: keep the chunks received all the same
        // (a no-op after `finish`).
        match self.history.flush() {
            Ok(()) => self.save_uploaded(),
            Err(e) => tracing::warn!(error = %e, "could not flush the chunks of an interrupted push"),
        }
    }
}

/// Reads a snapshot's chunks from the history store alone (a store-only
/// server has no mirror to fall back on).
pub struct StoreReader<H: Borrow<History> = History> {
    history: H,
    ahead: ReadAhead,
}

impl<H: Borrow<History>> StoreReader<H> {
    /// Reads from `history`.
    pub fn new(history: H) -> StoreReader<H> {
        StoreReader { history, ahead: ReadAhead::new() }
    }
}

impl<H: Borrow<History>> ChunkReader for StoreReader<H> {
    type Error = Error;

    fn read(&mut self, path: &RelPath, _offset: u64, chunk: ChunkRef) -> Result<Vec<u8>> {
        match self.ahead.read(self.history.borrow(), &chunk.id)? {
            Some(bytes) if bytes.len() == chunk.len as usize => Ok(bytes),
            _ => Err(Error::HistoryDamaged { path: PathBuf::from(path.to_string()), chunk: chunk.id }),
        }
    }

    fn prefetch(&mut self, chunk: ChunkRef) {
        self.ahead.hint(chunk.id);
    }

    fn store_costs(&self) -> Option<Requests> {
        Some(self.history.borrow().requests())
    }
}

/// Where a pull of a snapshot reads its chunks: the history then the
/// mirror, or the history alone.
pub enum SnapshotSource {
    /// A mirror server's history and mirror tree.
    Mirror(SnapshotReader<Arc<History>>),
    /// A store-only server's history.
    Store(StoreReader<Arc<History>>),
}

impl SnapshotSource {
    /// Reads what the history store it reads costs.
    pub fn meter(&self) -> RequestMeter {
        match self {
            SnapshotSource::Mirror(reader) => reader.meter(),
            SnapshotSource::Store(reader) => reader.history.meter(),
        }
    }
}

impl ChunkReader for SnapshotSource {
    type Error = Error;

    fn read(&mut self, path: &RelPath, offset: u64, chunk: ChunkRef) -> Result<Vec<u8>> {
        match self {
            SnapshotSource::Mirror(reader) => reader.read(path, offset, chunk),
            SnapshotSource::Store(reader) => reader.read(path, offset, chunk),
        }
    }

    fn prefetch(&mut self, chunk: ChunkRef) {
        match self {
            SnapshotSource::Mirror(reader) => reader.prefetch(chunk),
            SnapshotSource::Store(reader) => reader.prefetch(chunk),
        }
    }

    fn store_costs(&self) -> Option<Requests> {
        match self {
            SnapshotSource::Mirror(_) => None,
            SnapshotSource::Store(reader) => reader.store_costs(),
        }
    }
}

/// What a server's push writes: a mirror tree, or the history store alone.
pub enum ServedStore {
    /// A mirror tree (which may keep history besides).
    Mirror(Box<super::Receiving>),
    /// The history store alone.
    Repo(Box<RepoDestination>),
}

/// Runs `$call` on whichever destination `$self` holds.
macro_rules! either {
    ($self:expr, $d:ident => $call:expr) => {
        match $self {
            ServedStore::Mirror($d) => $call,
            ServedStore::Repo($d) => $call,
        }
    };
}

impl Destination for ServedStore {
    type Error = Error;

    fn refresh(&mut self, checksum: bool) -> Result<&Manifest> {
        either!(self, d => d.refresh(checksum))
    }

    fn manifest(&self) -> &Manifest {
        either!(self, d => d.manifest())
    }

    fn has_chunks(&self, ids: &[ChunkId]) -> Result<Vec<bool>> {
        either!(self, d => d.has_chunks(ids))
    }

    fn apply_op(&mut self, op: &Op) -> Result<()> {
        either!(self, d => d.apply_op(op))
    }

    fn batch_full(&self) -> bool {
        either!(self, d => d.batch_full())
    }

    fn begin_file(&mut self, file: u32, path: &RelPath, meta: &Meta, digest: &FileDigest) -> Result<Vec<NeedInfo>> {
        either!(self, d => d.begin_file(file, path, meta, digest))
    }

    fn fine_signatures(&self, file: u32, need: usize, request: &[u8]) -> Option<Vec<Signature>> {
        either!(self, d => d.fine_signatures(file, need, request))
    }

    fn put_chunk(&mut self, file: u32, need: usize, encoded: &EncodedChunk, with_base: bool) -> Result<Put> {
        either!(self, d => d.put_chunk(file, need, encoded, with_base))
    }

    fn file_ready(&self, file: u32) -> bool {
        either!(self, d => d.file_ready(file))
    }

    fn complete_file(&mut self, file: u32) -> Result<()> {
        either!(self, d => d.complete_file(file))
    }

    fn abandon_file(&mut self, file: u32, reason: &str) -> Vec<(u32, NeedInfo)> {
        either!(self, d => d.abandon_file(file, reason))
    }

    fn finish(self, complete: bool) -> Result<ApplyReport> {
        either!(self, d => (*d).finish(complete))
    }

    fn discard(self) -> ApplyReport {
        either!(self, d => (*d).discard())
    }
}
