//! The in-memory index: which pack holds each blob, compact enough for
//! millions of blobs (a sorted vector of 52-byte rows for what the index
//! files held at open, a map for what was added since).

use std::collections::HashMap;

use super::objects::Objects;
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
    /// Position in [`Index::packs`].
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

/// Every blob the store's index files name.
#[derive(Debug, Default)]
pub(super) struct Index {
    pub(super) packs: Vec<PackInfo>,
    pack_numbers: HashMap<[u8; 32], u32>,
    base: Vec<(ChunkId, Loc)>,
    added: HashMap<ChunkId, Loc>,
    /// The index files read at load, by name.
    pub(super) files: Vec<String>,
}

impl Index {
    /// Reads every index file in the store. A file a prune removed between
    /// the listing and the read means a newer index replaced it: list again.
    pub(super) fn load(objects: &dyn Objects) -> Result<Index> {
        for _ in 0..10 {
            if let Some(index) = Index::load_once(objects)? {
                return Ok(index);
            }
        }
        Err(Error::io(objects.label("index"), std::io::Error::other("index files keep vanishing while read")))
    }

    fn load_once(objects: &dyn Objects) -> Result<Option<Index>> {
        let listed = objects.list("index")?;
        let mut index = Index { files: listed.iter().map(|l| l.name.clone()).collect(), ..Index::default() };
        // Rows come to at most one per 50 bytes of index: reserve once
        // rather than grow (and briefly hold) twice the room.
        let bytes_total: u64 = listed.iter().map(|l| l.size.min(MAX_INDEX_FILE)).sum();
        index.base.reserve(usize::try_from(bytes_total / ENTRY_LEN as u64).unwrap_or(0));
        for file in &listed {
            let Some(bytes) = objects.get(&file.key, MAX_INDEX_FILE)? else { return Ok(None) };
            let mut pack = 0;
            index_file::visit(&bytes, |item| {
                match item {
                    Item::Pack { id, len, .. } => pack = index.pack_number(id, len),
                    Item::Entry(entry) => index.base.push((entry.id, Loc::new(pack, &entry)?)),
                }
                Ok::<(), FormatError>(())
            })
            .map_err(|e| Error::History { path: objects.label(&file.key), source: Box::new(e) })?;
        }
        // Stable: the first index to name a blob wins among duplicates.
        index.base.sort_by_key(|a| a.0);
        index.base.dedup_by(|later, first| later.0 == first.0);
        index.base.shrink_to_fit();
        Ok(Some(index))
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

    /// Where blob `id` is.
    pub(super) fn get(&self, id: &ChunkId) -> Option<Loc> {
        if let Ok(i) = self.base.binary_search_by(|(k, _)| k.cmp(id)) {
            return Some(self.base[i].1);
        }
        self.added.get(id).copied()
    }

    /// Whether any blob is indexed in the pack `id`.
    pub(super) fn has_pack(&self, id: &[u8; 32]) -> bool {
        self.pack_numbers.contains_key(id)
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
        let mut packs: Vec<IndexedPack> =
            self.packs.iter().map(|p| IndexedPack { id: p.id, len: p.len, entries: Vec::new() }).collect();
        for (id, loc) in self.base.iter().map(|(id, loc)| (id, loc)).chain(self.added.iter()) {
            packs[loc.pack as usize].entries.push(loc.entry(*id));
        }
        for pack in &mut packs {
            pack.entries.sort_by_key(|e| e.offset);
        }
        packs
    }

    /// Number of blobs indexed.
    pub(super) fn len(&self) -> usize {
        self.base.len() + self.added.len()
    }

    /// Bytes the blob rows take (the map's per-slot overhead counted).
    #[cfg(feature = "internals")]
    pub(super) fn heap_bytes(&self) -> usize {
        let row = std::mem::size_of::<(ChunkId, Loc)>();
        self.base.capacity() * row + self.added.capacity() * (row + 8) + self.packs.capacity() * 80
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
}
