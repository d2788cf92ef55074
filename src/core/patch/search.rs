//! The sender's side: the ops that rebuild new bytes from a signed base.

use super::{Op, Patch, Signature};
#[cfg(doc)]
use crate::chunk::MAX_CHUNK_LEN;
use xfer_protocol::keys::{key_of, Roller};

/// Bound on the probe length of the sender's key table, so a hostile
/// signature full of colliding keys cannot make [`diff`] quadratic.
const MAX_PROBE: usize = 16;

/// How many blocks past a mismatch [`diff`] checks for the run to resume
/// in place (an overwrite of up to this many blocks), before searching.
const MAX_SKIP: usize = 2;

/// Collects ops, merging adjacent copies and filling gaps with literals.
pub(super) struct OpSink {
    pub(super) ops: Vec<Op>,
    /// End of the last op in the new bytes.
    pub(super) done: usize,
}

impl OpSink {
    pub(super) fn copy(&mut self, new_start: usize, base_offset: usize, len: usize) {
        if new_start > self.done {
            self.ops.push(Op::Literal(self.done as u32..new_start as u32));
        } else if let Some(Op::Copy { offset, len: last_len }) = self.ops.last_mut() {
            if (*offset + *last_len) as usize == base_offset {
                *last_len += len as u32;
                self.done = new_start + len;
                return;
            }
        }
        self.ops.push(Op::Copy { offset: base_offset as u32, len: len as u32 });
        self.done = new_start + len;
    }

    pub(super) fn finish(mut self, new_len: usize) -> Patch {
        if new_len > self.done {
            self.ops.push(Op::Literal(self.done as u32..new_len as u32));
        }
        Patch { ops: self.ops, new_len: new_len as u32 }
    }
}

/// A bitmap of key bits, 64 per block: most search positions match no
/// block, and this answers them from L1 without probing the table.
struct KeyFilter {
    words: Vec<u64>,
    mask: usize,
}

impl KeyFilter {
    fn build(keys: &[u32], key_bits: u8) -> Self {
        // At most one bit per possible key: 2^(key_bits - 6) words.
        let max_words = 1usize << (key_bits - 6);
        let size = keys.len().next_power_of_two().min(max_words);
        let mut words = vec![0u64; size];
        let mask = size - 1;
        for &key in keys {
            words[(key as usize >> 6) & mask] |= 1 << (key & 63);
        }
        Self { words, mask }
    }

    #[inline(always)]
    fn contains(&self, key: u32) -> bool {
        self.words[(key as usize >> 6) & self.mask] >> (key & 63) & 1 != 0
    }
}

/// Open-addressing table from key to block index, probes bounded by
/// [`MAX_PROBE`]. Slots hold `key << 32 | (block + 1)`; zero is empty.
struct KeyTable {
    slots: Vec<u64>,
    mask: usize,
}

impl KeyTable {
    fn build(keys: &[u32]) -> Self {
        let size = (keys.len() * 4).next_power_of_two().max(64);
        let mask = size - 1;
        let mut slots = vec![0u64; size];
        // Block 0 can never be the second block of a pair, so skip it.
        for (block, &key) in keys.iter().enumerate().skip(1) {
            let mut slot = key as usize & mask;
            for _ in 0..MAX_PROBE {
                if slots[slot] == 0 {
                    slots[slot] = u64::from(key) << 32 | (block as u64 + 1);
                    break;
                }
                slot = (slot + 1) & mask;
            }
            // A full probe window (only on hostile or degenerate keys) drops
            // the block: it can only cost a copy, never correctness.
        }
        Self { slots, mask }
    }

    /// A block `j` keyed `key` whose predecessor is keyed `prev`.
    #[inline(always)]
    fn find_pair(&self, key: u32, prev: u32, keys: &[u32]) -> Option<usize> {
        let mut slot = key as usize & self.mask;
        for _ in 0..MAX_PROBE {
            let entry = self.slots[slot];
            if entry == 0 {
                return None;
            }
            if (entry >> 32) as u32 == key {
                let block = (entry as u32 - 1) as usize;
                if keys[block - 1] == prev {
                    return Some(block);
                }
            }
            slot = (slot + 1) & self.mask;
        }
        None
    }
}

/// Ops that rebuild `new` from the base `sig` describes.
///
/// Rolls a block-length window over `new`; where the window and the one a
/// block earlier match two consecutive base blocks, starts a copy, then
/// extends it a block at a time while the next base block follows. Greedy,
/// O(`new.len()`), no allocation beyond the ops, a key table of 4 slots per
/// block and a ring of 2 keys per block-length byte.
///
/// # Panics
///
/// If `new` is longer than `u32::MAX` bytes (chunks are at most
/// [`MAX_CHUNK_LEN`]).
pub fn diff(sig: &Signature, new: &[u8]) -> Patch {
    assert!(u32::try_from(new.len()).is_ok(), "diff input of {} bytes exceeds u32::MAX", new.len());
    let mut sink = OpSink { ops: Vec::new(), done: 0 };
    let block = sig.block_len() as usize;
    if !sig.keys().is_empty() && new.len() >= block {
        search(sig, new, &mut sink);
    }
    sink.finish(new.len())
}

fn search(sig: &Signature, new: &[u8], sink: &mut OpSink) {
    let mut s = Search::new(sig, new);
    let block = s.block;
    // The current run: new[run_start..pos] is base blocks from run_block on,
    // and base block next_block is expected at pos. It starts empty, with the
    // guess that the new bytes begin like the base.
    let (mut run_start, mut run_block, mut pos, mut next_block) = (0usize, 0usize, 0usize, 0usize);
    loop {
        (pos, next_block) = s.extend(pos, next_block);
        if pos > run_start {
            sink.copy(run_start, run_block * block, pos - run_start);
        }
        if pos > s.last {
            return;
        }
        if let Some(skip) = s.resume(pos, next_block) {
            pos += skip * block;
            next_block += skip;
            run_start = pos;
            run_block = next_block;
            continue;
        }
        let Some((i, found)) = s.find(pos) else { return };
        run_start = i - block;
        run_block = found - 1;
        next_block = found + 1;
        pos = i + block;
    }
}

/// What [`search`] looks things up in.
struct Search<'a> {
    new: &'a [u8],
    keys: &'a [u32],
    bits: u8,
    block: usize,
    /// Start of the last window.
    last: usize,
    table: KeyTable,
    filter: KeyFilter,
    roller: Roller,
    /// Keys of the last 2 x block positions searched, for the pair test.
    ring: Vec<u32>,
}

impl<'a> Search<'a> {
    fn new(sig: &'a Signature, new: &'a [u8]) -> Self {
        let block = sig.block_len() as usize;
        let keys = sig.keys();
        Search {
            new,
            keys,
            bits: sig.key_bits(),
            block,
            last: new.len() - block,
            table: KeyTable::build(keys),
            filter: KeyFilter::build(keys, sig.key_bits()),
            roller: Roller::new(block),
            ring: vec![0u32; 2 * block],
        }
    }

    #[inline(always)]
    fn key_at(&self, pos: usize) -> u32 {
        key_of(Roller::hash(&self.new[pos..pos + self.block]), self.bits)
    }

    /// The run extended from `pos` while the next base block follows: the
    /// new `pos` and `next_block`.
    fn extend(&self, mut pos: usize, mut next_block: usize) -> (usize, usize) {
        while pos <= self.last && next_block < self.keys.len() && self.key_at(pos) == self.keys[next_block] {
            next_block += 1;
            pos += self.block;
        }
        (pos, next_block)
    }

    /// An in-place overwrite leaves the following blocks where they were:
    /// try them before searching. A single predicted block risks only
    /// 2^-key_bits, and this catches a lone block between two edits or at
    /// the end, where no pair fits. How many blocks to skip.
    fn resume(&self, pos: usize, next_block: usize) -> Option<usize> {
        (1..=MAX_SKIP).find(|&skip| {
            let at = pos + skip * self.block;
            at <= self.last && next_block + skip < self.keys.len() && self.key_at(at) == self.keys[next_block + skip]
        })
    }

    /// Rolls from `pos` until the window and the one a block earlier are two
    /// consecutive base blocks: the window's start and its block, or `None`
    /// at the end of the new bytes.
    fn find(&mut self, pos: usize) -> Option<(usize, usize)> {
        let (block, ring_mask) = (self.block, 2 * self.block - 1);
        let mut i = pos;
        let mut h = Roller::hash(&self.new[i..i + block]);
        let armed = i + block;
        loop {
            let key = key_of(h, self.bits);
            self.ring[i & ring_mask] = key;
            if i >= armed && self.filter.contains(key) {
                let prev = self.ring[(i - block) & ring_mask];
                if let Some(found) = self.table.find_pair(key, prev, self.keys) {
                    return Some((i, found));
                }
            }
            if i == self.last {
                return None;
            }
            h = self.roller.roll(h, self.new[i], self.new[i + block]);
            i += 1;
        }
    }
}
