//! Which packs a prune keeps, drops whole, or rewrites without the blobs
//! no snapshot references.

use std::collections::HashSet;

use super::index::IndexedPack;
use crate::hash::ChunkId;

/// A pack is rewritten when more than this share of its stored bytes is
/// unreferenced (numerator over 100).
pub const REPACK_PERCENT: u64 = 50;
/// ... and only if that frees at least this many bytes: rewriting to
/// save little costs more than it gains.
pub const MIN_REPACK_GAIN: u64 = 1 << 20;

/// What to do with each pack.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PrunePlan {
    /// Packs left as they are.
    pub keep: Vec<[u8; 32]>,
    /// Packs no referenced blob is in: out of the index.
    pub doom: Vec<[u8; 32]>,
    /// Packs to rewrite with only their referenced blobs (then doomed).
    pub repack: Vec<[u8; 32]>,
    /// Stored bytes of the unreferenced blobs left in kept packs.
    pub unused_kept: u64,
}

/// Plans a prune of `packs` given the `referenced` blobs; a blob held by
/// several packs is kept in the first that holds it, so duplicates left
/// by a crash go too. `min_gain` is [`MIN_REPACK_GAIN`] outside tests.
pub fn plan(packs: &[IndexedPack], referenced: &HashSet<ChunkId>, min_gain: u64) -> PrunePlan {
    let mut plan = PrunePlan::default();
    let mut placed: HashSet<ChunkId> = HashSet::new();
    for pack in packs {
        let (mut used, mut unused) = (0u64, 0u64);
        for entry in &pack.entries {
            if referenced.contains(&entry.id) && placed.insert(entry.id) {
                used += u64::from(entry.stored);
            } else {
                unused += u64::from(entry.stored);
            }
        }
        if used == 0 {
            plan.doom.push(pack.id);
        } else if unused * 100 > (used + unused) * REPACK_PERCENT && unused >= min_gain {
            plan.repack.push(pack.id);
        } else {
            plan.keep.push(pack.id);
            plan.unused_kept += unused;
        }
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::pack::{BlobKind, Compression, PackEntry};

    fn pack(n: u8, blobs: &[(u8, u32)]) -> IndexedPack {
        let entries = blobs
            .iter()
            .scan(0u64, |offset, &(id, stored)| {
                let entry = PackEntry {
                    kind: BlobKind::Data,
                    id: ChunkId([id; 32]),
                    offset: *offset,
                    stored,
                    raw: stored,
                    compression: Compression::None,
                };
                *offset += u64::from(stored);
                Some(entry)
            })
            .collect();
        IndexedPack { id: [n; 32], len: 0, entries }
    }

    #[test]
    fn keeps_dooms_and_repacks() {
        let packs = [
            pack(1, &[(1, 100), (2, 100)]),   // all referenced: kept
            pack(2, &[(3, 100), (4, 100)]),   // none: doomed
            pack(3, &[(5, 100), (6, 900)]),   // 90% unused: repacked
            pack(4, &[(7, 600), (8, 400)]),   // 40% unused: kept
            pack(5, &[(1, 100), (9, 10)]),    // 1 is kept in pack 1 already
            pack(6, &[(10, 10), (11, 2000)]), // most unused: repacked above the floor
        ];
        let referenced: HashSet<ChunkId> = [1, 2, 5, 7, 9, 10].iter().map(|&i| ChunkId([i; 32])).collect();
        let plan = plan(&packs, &referenced, 500);
        assert_eq!(plan.doom, vec![[2; 32]]);
        assert_eq!(plan.repack, vec![[3; 32], [6; 32]]);
        assert_eq!(plan.keep, vec![[1; 32], [4; 32], [5; 32]]);
        assert_eq!(plan.unused_kept, 400 + 100);
        // With a higher floor the smaller gain (900 bytes) is left alone.
        let plan = super::plan(&packs, &referenced, 1500);
        assert_eq!(plan.repack, vec![[6; 32]]);
    }
}
