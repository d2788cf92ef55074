//! The in-memory index: which pack holds each blob, compact enough for
//! millions of blobs (sorted vectors of 52-byte rows for what the index
//! files held at open, shared by a process's sessions of one object store;
//! a map for what a session added since).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use super::objects::{Listed, Objects};
use crate::error::{Error, Result};
use crate::hash::ChunkId;
use crate::history::index::{self as index_file, IndexedPack, Item};
use crate::history::pack::{BlobKind, Compression, PackEntry, ENTRY_LEN};
use crate::history::{malformed_error, FormatError};

/// Largest index file read: prune writes them at most ~8 MiB (160,000
/// blobs); anything far past that is damage, not an index.
const MAX_INDEX_FILE: u64 = 64 << 20;

/// Where one blob is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Loc {
    /// Which pack: numbered across the index's runs, oldest first, then
    /// the packs a session added ([`Index::pack`]).
    pub(super) pack: u32,
    offset: u32,
    stored: u32,
    raw: u32,
    /// Bit 0: a tree blob; bit 1: zstd.
    flags: u8,
}

impl Loc {
    fn new(pack: u32, entry: &PackEntry) -> std::result::Result<Loc, FormatError> {
        // Packs are ~16 MiB: an offset past 4 GiB is damage, not data.
        let offset = u32::try_from(entry.offset).map_err(|_| malformed_error("index", "offset past 4 GiB"))?;
        let flags = u8::from(entry.kind == BlobKind::Tree) | u8::from(entry.compression == Compression::Zstd) << 1;
        Ok(Loc { pack, offset, stored: entry.stored, raw: entry.raw, flags })
    }

    pub(super) fn entry(&self, id: ChunkId) -> PackEntry {
        PackEntry {
            kind: if self.flags & 1 == 0 { BlobKind::Data } else { BlobKind::Tree },
            id,
            offset: u64::from(self.offset),
            stored: self.stored,
            raw: self.raw,
            compression: if self.flags & 2 == 0 { Compression::None } else { Compression::Zstd },
        }
    }
}

/// One pack the index knows.
#[derive(Clone, Copy, Debug)]
pub(super) struct PackInfo {
    pub(super) id: [u8; 32],
    pub(super) len: u64,
}

/// The rows of some index files, sorted by blob id: immutable once read,
/// so the sessions of a process share them.
#[derive(Debug, Default)]
pub(super) struct Run {
    packs: Vec<PackInfo>,
    pack_numbers: HashMap<[u8; 32], u32>,
    rows: Vec<(ChunkId, Loc)>,
    /// The index files read into it, sorted.
    files: Vec<String>,
}

impl Run {
    /// Reads `files`; `None` if one vanished since it was listed (a prune
    /// replaced it: list again).
    fn read(objects: &dyn Objects, files: &[&Listed]) -> Result<Option<Run>> {
        let mut run = Run { files: files.iter().map(|l| l.name.clone()).collect(), ..Run::default() };
        // Rows come to at most one per 50 bytes of index: reserve once
        // rather than grow (and briefly hold) twice the room.
        let bytes_total: u64 = files.iter().map(|l| l.size.min(MAX_INDEX_FILE)).sum();
        run.rows.reserve(usize::try_from(bytes_total / ENTRY_LEN as u64).unwrap_or(0));
        for file in files {
            let Some(bytes) = objects.get(&file.key, MAX_INDEX_FILE)? else { return Ok(None) };
            let mut pack = 0;
            index_file::visit(&bytes, |item| {
                match item {
                    Item::Pack { id, len, .. } => pack = run.pack_number(id, len),
                    Item::Entry(entry) => run.rows.push((entry.id, Loc::new(pack, &entry)?)),
                }
                Ok::<(), FormatError>(())
            })
            .map_err(|e| Error::History { path: objects.label(&file.key), cause: Box::new(e) })?;
        }
        run.files.sort_unstable();
        run.seal();
        Ok(Some(run))
    }

    /// Sorts the rows; among duplicates the first read wins (any is right).
    fn seal(&mut self) {
        self.rows.sort_by_key(|a| a.0);
        self.rows.dedup_by(|later, first| later.0 == first.0);
        self.rows.shrink_to_fit();
    }

    fn pack_number(&mut self, id: [u8; 32], len: u64) -> u32 {
        if let Some(&n) = self.pack_numbers.get(&id) {
            return n;
        }
        let n = u32::try_from(self.packs.len()).expect("invariant: fewer than 2^32 packs");
        self.packs.push(PackInfo { id, len });
        self.pack_numbers.insert(id, n);
        n
    }

    fn get(&self, id: &ChunkId) -> Option<Loc> {
        self.rows.binary_search_by(|(k, _)| k.cmp(id)).ok().map(|i| self.rows[i].1)
    }

    /// One run of `older`'s rows and `newer`'s, older first among duplicates.
    fn merge(older: &Run, newer: &Run) -> Run {
        let mut run = Run::default();
        run.rows.reserve(older.rows.len() + newer.rows.len());
        for part in [older, newer] {
            let numbers: Vec<u32> = part.packs.iter().map(|p| run.pack_number(p.id, p.len)).collect();
            run.rows.extend(part.rows.iter().map(|&(id, loc)| (id, Loc { pack: numbers[loc.pack as usize], ..loc })));
            run.files.extend(part.files.iter().cloned());
        }
        run.files.sort_unstable();
        run.seal();
        run
    }
}

/// The runs a process has read of one object store, older first.
pub(super) type Runs = Vec<Arc<Run>>;
static INDEX_CACHES: Mutex<Option<HashMap<PathBuf, Arc<Mutex<Runs>>>>> = Mutex::new(None);

/// The process's index of the object store at `label` (its URL). Index
/// files never change, so a server opening its store once a session reads
/// only the files written since its previous session, and its concurrent
/// sessions share one copy of the rows. A cached file the store no longer
/// lists means a prune replaced it: everything is read again, so no
/// session sees a pack a prune took out of the index.
pub(super) fn cache_of(label: &Path) -> Arc<Mutex<Runs>> {
    let mut caches = INDEX_CACHES.lock().unwrap_or_else(PoisonError::into_inner);
    caches.get_or_insert_with(HashMap::new).entry(label.to_path_buf()).or_default().clone()
}

/// Runs beyond this many are merged whatever their sizes (each lookup
/// searches every run).
const MAX_RUNS: usize = 8;

/// Every blob the store's index files name: shared runs read from them,
/// then what this session added.
#[derive(Debug, Default)]
pub(super) struct Index {
    runs: Runs,
    /// Packs numbered after every run's: those this session wrote or put back.
    own_packs: Run,
    added: HashMap<ChunkId, Loc>,
    /// The index files read at load, by name.
    pub(super) files: Vec<String>,
}

impl Index {
    /// Reads every index file in the store. A file a prune removed between
    /// the listing and the read means a newer index replaced it: list again.
    pub(super) fn load(objects: &dyn Objects) -> Result<Index> {
        Index::load_with(objects, None)
    }

    /// As [`Index::load`], starting from the runs in `cache` and leaving
    /// there what was read (see [`cache_of`]).
    pub(super) fn load_cached(objects: &dyn Objects, cache: &Mutex<Runs>) -> Result<Index> {
        Index::load_with(objects, Some(cache))
    }

    fn load_with(objects: &dyn Objects, cache: Option<&Mutex<Runs>>) -> Result<Index> {
        for _ in 0..10 {
            let listed = objects.list("index")?;
            let mut runs = cache.map(|c| c.lock().unwrap_or_else(PoisonError::into_inner).clone()).unwrap_or_default();
            let is_listed = |name: &String| listed.binary_search_by(|l| l.name.as_str().cmp(name)).is_ok();
            if !runs.iter().all(|run| run.files.iter().all(is_listed)) {
                runs.clear();
            }
            let known = |name: &str| runs.iter().any(|run| run.files.binary_search_by(|f| f.as_str().cmp(name)).is_ok());
            let new: Vec<&Listed> = listed.iter().filter(|l| !known(&l.name)).collect();
            if !new.is_empty() {
                let Some(run) = Run::read(objects, &new)? else { continue };
                runs.push(Arc::new(run));
                compact(&mut runs);
            }
            if let Some(cache) = cache {
                *cache.lock().unwrap_or_else(PoisonError::into_inner) = runs.clone();
            }
            let files = listed.into_iter().map(|l| l.name).collect();
            return Ok(Index { runs, files, ..Index::default() });
        }
        Err(Error::io(objects.label("index"), std::io::Error::other("index files keep vanishing while read")))
    }

    /// The pack numbered `n` (see [`Loc::pack`]).
    pub(super) fn pack(&self, n: u32) -> PackInfo {
        let mut n = n as usize;
        for run in self.runs.iter().map(|r| r.as_ref()).chain([&self.own_packs]) {
            if n < run.packs.len() {
                return run.packs[n];
            }
            n -= run.packs.len();
        }
        unreachable!("invariant: a Loc's pack number comes from this index")
    }

    fn runs_packs(&self) -> usize {
        self.runs.iter().map(|r| r.packs.len()).sum()
    }

    fn pack_number(&mut self, id: [u8; 32], len: u64) -> u32 {
        let mut offset = 0;
        for run in &self.runs {
            if let Some(&n) = run.pack_numbers.get(&id) {
                return offset + n;
            }
            offset += u32::try_from(run.packs.len()).expect("invariant: fewer than 2^32 packs");
        }
        offset + self.own_packs.pack_number(id, len)
    }

    /// Where blob `id` is.
    pub(super) fn get(&self, id: &ChunkId) -> Option<Loc> {
        let mut offset = 0;
        for run in &self.runs {
            if let Some(loc) = run.get(id) {
                return Some(Loc { pack: offset + loc.pack, ..loc });
            }
            offset += u32::try_from(run.packs.len()).expect("invariant: fewer than 2^32 packs");
        }
        self.added.get(id).copied()
    }

    /// Whether any blob is indexed in the pack `id`.
    pub(super) fn has_pack(&self, id: &[u8; 32]) -> bool {
        self.runs.iter().any(|r| r.pack_numbers.contains_key(id)) || self.own_packs.pack_numbers.contains_key(id)
    }

    /// Adds a pack just written (or put back); blobs indexed already stay where they are.
    pub(super) fn add_pack(&mut self, pack: &IndexedPack) -> std::result::Result<(), FormatError> {
        let number = self.pack_number(pack.id, pack.len);
        for entry in &pack.entries {
            if self.get(&entry.id).is_none() {
                self.added.insert(entry.id, Loc::new(number, entry)?);
            }
        }
        Ok(())
    }

    /// Every pack with the blobs this index places in it.
    pub(super) fn packs_with_entries(&self) -> Vec<IndexedPack> {
        let total = self.runs_packs() + self.own_packs.packs.len();
        let mut packs: Vec<IndexedPack> = (0..total)
            .map(|n| {
                let p = self.pack(u32::try_from(n).expect("invariant: fewer than 2^32 packs"));
                IndexedPack { id: p.id, len: p.len, entries: Vec::new() }
            })
            .collect();
        let mut offset = 0;
        for run in &self.runs {
            for (id, loc) in &run.rows {
                let pack = &mut packs[offset + loc.pack as usize];
                // A blob two runs name is placed where the first puts it.
                if offset == 0 || self.get(id).is_some_and(|l| l.pack as usize == offset + loc.pack as usize) {
                    pack.entries.push(loc.entry(*id));
                }
            }
            offset += run.packs.len();
        }
        for (id, loc) in &self.added {
            packs[loc.pack as usize].entries.push(loc.entry(*id));
        }
        for pack in &mut packs {
            pack.entries.sort_by_key(|e| e.offset);
        }
        packs
    }

    /// Number of blobs indexed (a blob in two runs counts twice until they merge).
    pub(super) fn len(&self) -> usize {
        self.runs.iter().map(|r| r.rows.len()).sum::<usize>() + self.added.len()
    }

    /// Bytes the blob rows take (the map's per-slot overhead counted).
    #[cfg(feature = "internals")]
    pub(super) fn heap_bytes(&self) -> usize {
        let row = std::mem::size_of::<(ChunkId, Loc)>();
        let runs: usize = self.runs.iter().map(|r| r.rows.capacity() * row + r.packs.capacity() * 80).sum();
        runs + self.added.capacity() * (row + 8) + self.own_packs.packs.capacity() * 80
    }
}

/// Merges the newest runs while the one before is no more than twice
/// the newest's size (so a row is copied O(log n) times over its life),
/// and any beyond [`MAX_RUNS`].
fn compact(runs: &mut Runs) {
    while let [.., older, newer] = runs.as_slice() {
        if older.rows.len() > 2 * newer.rows.len() && runs.len() <= MAX_RUNS {
            break;
        }
        let merged = Arc::new(Run::merge(older, newer));
        runs.truncate(runs.len() - 2);
        runs.push(merged);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A million blobs fit in well under 100 MiB.
    #[test]
    fn rows_are_compact() {
        assert!(std::mem::size_of::<(ChunkId, Loc)>() <= 52);
    }

    /// A run of index files: packs named by one byte, each with blobs
    /// named by one byte at the given offsets.
    fn run_of(name: usize, packs: &[(u8, Vec<(u8, u32)>)]) -> Run {
        let mut run = Run { files: vec![format!("{name:064x}")], ..Run::default() };
        for (pack, blobs) in packs {
            let number = run.pack_number([*pack; 32], 1 << 20);
            for &(blob, offset) in blobs {
                let entry = PackEntry {
                    kind: BlobKind::Data,
                    id: ChunkId([blob; 32]),
                    offset: u64::from(offset),
                    stored: 10,
                    raw: 10,
                    compression: Compression::None,
                };
                run.rows.push((entry.id, Loc::new(number, &entry).unwrap()));
            }
        }
        run.seal();
        run
    }

    type RunSpec = Vec<(u8, Vec<(u8, u32)>)>;

    proptest::proptest! {
        /// However runs are merged, every blob is found where the first
        /// run (the oldest) naming it puts it, and the packs listed for a
        /// new index hold each blob once, where a lookup finds it.
        #[test]
        fn runs_answer_as_one_index(
            specs in proptest::collection::vec(
                proptest::collection::vec((0u8..6, proptest::collection::vec((0u8..40, 0u32..1000), 0..12)), 0..4),
                1..12,
            ),
        ) {
            let specs: Vec<RunSpec> = specs;
            let mut first: HashMap<ChunkId, ([u8; 32], u64)> = HashMap::new();
            let mut runs: Runs = Vec::new();
            for (i, spec) in specs.iter().enumerate() {
                let run = run_of(i, spec);
                for (id, loc) in &run.rows {
                    first.entry(*id).or_insert((run.packs[loc.pack as usize].id, loc.entry(*id).offset));
                }
                runs.push(Arc::new(run));
                compact(&mut runs);
                proptest::prop_assert!(runs.len() <= MAX_RUNS);
            }
            let index = Index { runs, ..Index::default() };
            for (id, (pack, offset)) in &first {
                let loc = index.get(id).unwrap();
                proptest::prop_assert_eq!((index.pack(loc.pack).id, loc.entry(*id).offset), (*pack, *offset));
            }
            let mut seen = HashMap::new();
            for pack in index.packs_with_entries() {
                for entry in pack.entries {
                    proptest::prop_assert!(seen.insert(entry.id, pack.id).is_none(), "a blob listed twice");
                    proptest::prop_assert_eq!(pack.id, first[&entry.id].0);
                }
            }
            proptest::prop_assert_eq!(seen.len(), first.len());
        }
    }
}
