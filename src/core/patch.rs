//! Sub-chunk delta: signatures of the receiver's old bytes, copy and literal ops.
//!
//! rsync's scheme, in one round trip per changed chunk:
//!
//! 1. The receiver picks old bytes it expects to resemble the new chunk (the
//!    "base") and sends [`signature`]`(base)`: one short key per full block.
//! 2. The sender runs [`diff`] over the new chunk and sends
//!    [`encode_patch`]: copies of base ranges plus the bytes it must send.
//! 3. The receiver runs [`apply`] on its base; the caller then checks the
//!    result against the chunk id, and falls back to sending the whole chunk
//!    on a mismatch. A false match therefore costs a retry, never corruption.
//!
//! # Why one key per block instead of rsync's weak + strong sums
//!
//! Every signature byte is wire cost, so each block carries a single
//! `key_bits`-bit key (20..=32 bits, usually 21-27) taken from a well-mixed
//! 64-bit polynomial rolling hash, which is as good as a truncated BLAKE3 on
//! natural data and costs O(1) per position on the sender. The strength a
//! separate strong sum would add comes from context instead:
//!
//! - a free search (any block at any position) accepts only *two
//!   consecutive* base blocks at consecutive positions, 2 x `key_bits` bits
//!   of evidence: about 2^-20 false accepts per chunk at every size (see
//!   [`key_bits_for`]);
//! - a block at a *predicted* position (the next block of a run, or the
//!   block one or two blocks past an in-place overwrite) needs one key:
//!   a handful of candidates per edit, 2^-`key_bits` each.
//!
//! That is about 2.7 bytes per block where rsync's 6 would make the
//! signature of a 24 KiB base bigger than the whole patch. The price: a
//! lone unchanged block between two edits is found only when the first
//! edit did not shift offsets; otherwise it is sent as literal bytes.
//!
//! # Wire formats (all integers LEB128 varints unless noted)
//!
//! Signature: `base_len`, `log2(block_len)` (u8), `key_bits` (u8), then
//! `base_len / block_len` keys of `key_bits` bits, packed LSB first, the last
//! byte zero-padded.
//!
//! Patch: `new_len`, `op_count`, then per op `len << 1 | is_copy`, and for a
//! copy the zigzag distance of its offset from the end of the previous copy.
//! If any literal bytes: a mode byte (0 raw, 1 zstd) and the concatenated
//! literal bytes, zstd level 3 when that is smaller.

use std::io;
use std::ops::Range;

use thiserror::Error;

use crate::chunk::MAX_CHUNK_LEN;

/// Largest base a signature describes: 1.5 x a chunk is typical, 2 x is the cap.
pub const MAX_BASE_LEN: u32 = 2 * MAX_CHUNK_LEN;

/// Smallest block length a signature may use.
pub const MIN_BLOCK_LEN: u32 = 64;

/// Largest block length a signature may use.
pub const MAX_BLOCK_LEN: u32 = 8192;

/// Fewest key bits per block a signature may use; below this false matches,
/// and the fallbacks they cause, get frequent.
pub const MIN_KEY_BITS: u8 = 16;

/// Most key bits per block a signature may use.
pub const MAX_KEY_BITS: u8 = 32;

/// zstd level for literal bytes: they are few, so spend time on ratio.
/// Measured on the source-tree workload's delta phase (total wire MB / push
/// seconds): level 3 6.86 / 2.6 s, 6 6.66 / 2.4 s, 9 6.65 / 3.6 s, 19 6.60 /
/// 6.1 s. Level 6 takes nearly all the gain at no visible cost.
pub(crate) const LITERAL_ZSTD_LEVEL: i32 = 6;

/// Literal runs shorter than this are stored raw: a zstd frame costs more.
const MIN_COMPRESS_LEN: usize = 32;

/// Bound on the probe length of the sender's key table, so a hostile
/// signature full of colliding keys cannot make [`diff`] quadratic.
const MAX_PROBE: usize = 16;

/// How many blocks past a mismatch [`diff`] checks for the run to resume
/// in place (an overwrite of up to this many blocks), before searching.
const MAX_SKIP: usize = 2;

/// Literal section modes.
const LITERALS_RAW: u8 = 0;
const LITERALS_ZSTD: u8 = 1;
/// zstd with the copied bytes (in output order) as a raw-content dictionary:
/// both ends have them before the literals are decoded, and new lines of
/// code or records resemble the ones around them.
const LITERALS_ZSTD_COPIES: u8 = 2;

/// What was wrong with a signature or patch.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum PatchError {
    /// A refinement request asks for more ranges than allowed.
    #[error("refinement asks for {count} ranges, more than {MAX_REFINE_RANGES}")]
    TooManyRanges {
        /// Declared count.
        count: u64,
    },
    /// A refinement range is empty or lies outside the base.
    #[error("refinement range {index} ({start}+{len}) outside base of {base_len} bytes")]
    RangeOutOfBounds {
        /// Which range.
        index: usize,
        /// Declared start.
        start: i64,
        /// Declared length.
        len: i64,
        /// The base length.
        base_len: u32,
    },
    /// The input ended inside a field that starts at `at`.
    #[error("truncated at byte {at}")]
    Truncated {
        /// Offset of the field that did not fit.
        at: usize,
    },
    /// A varint at `at` does not fit its field.
    #[error("varint at byte {at} overflows")]
    VarintOverflow {
        /// Offset of the varint.
        at: usize,
    },
    /// The signature's block length is not a power of two in range.
    #[error("block length 2^{log2} out of range {MIN_BLOCK_LEN}..={MAX_BLOCK_LEN}")]
    BlockLen {
        /// The declared log2 of the block length.
        log2: u8,
    },
    /// The signature's key width is out of range.
    #[error("key width {bits} bits out of range {MIN_KEY_BITS}..={MAX_KEY_BITS}")]
    KeyBits {
        /// The declared width.
        bits: u8,
    },
    /// The signature describes a base larger than [`MAX_BASE_LEN`].
    #[error("base of {base_len} bytes exceeds {max}")]
    BaseTooLarge {
        /// The declared base length.
        base_len: u32,
        /// The limit.
        max: u32,
    },
    /// The packed keys do not have the length `base_len` and `block_len` imply.
    #[error("signature keys take {actual} bytes, expected {expected}")]
    KeysLen {
        /// Bytes the header implies.
        expected: usize,
        /// Bytes present.
        actual: usize,
    },
    /// The unused bits after the last key are not zero (not canonical).
    #[error("signature padding bits are not zero")]
    Padding,
    /// The patch would produce more than the caller allows.
    #[error("patch output of {new_len} bytes exceeds limit {max_len}")]
    TooLarge {
        /// The declared output length.
        new_len: u32,
        /// The caller's limit.
        max_len: usize,
    },
    /// Op number `op` has length zero.
    #[error("op {op} has zero length")]
    EmptyOp {
        /// Index of the op.
        op: usize,
    },
    /// Op number `op` copies bytes the base does not have.
    #[error("op {op} copies {len} bytes at offset {offset}, past the {base_len}-byte base")]
    CopyOutOfBounds {
        /// Index of the op.
        op: usize,
        /// Base offset (may be negative on hostile input).
        offset: i64,
        /// Bytes to copy.
        len: u32,
        /// Length of the base.
        base_len: usize,
    },
    /// The ops produce a different length than the patch declares.
    #[error("ops produce {actual} bytes but the patch declares {declared}")]
    OpsLen {
        /// Declared output length.
        declared: u32,
        /// What the ops add up to (so far, when they overshoot).
        actual: u64,
    },
    /// The literal section has an unknown mode byte.
    #[error("unknown literal mode {0}")]
    LiteralMode(u8),
    /// The literal bytes are not as long as the literal ops need.
    #[error("literal section holds {actual} bytes, ops need {expected}")]
    LiteralLen {
        /// Bytes the literal ops need.
        expected: usize,
        /// Bytes present (after decompression).
        actual: usize,
    },
    /// zstd refused the literal section (corrupt, or larger than declared).
    #[error("literal section does not decompress")]
    Decompress(#[source] io::Error),
    /// Bytes follow the end of the patch.
    #[error("{len} trailing bytes at offset {at}")]
    Trailing {
        /// Offset of the first unexpected byte.
        at: usize,
        /// How many there are.
        len: usize,
    },
}

// ---------------------------------------------------------------------------
// Rolling hash. Part of the wire format: both ends must compute identical keys.

/// Multiplier of the polynomial hash (odd, so every power is odd too).
const MUL: u64 = 0xd6e8_feb8_6659_fd93;

/// Finaliser multiplier, so the key's top bits depend on every input bit.
const MIX: u64 = 0x94d0_49bb_1331_11eb;

const fn splitmix64(seed: u64) -> u64 {
    let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Bytes are mapped through random 64-bit values before hashing, so windows
/// that differ by small byte deltas (case, digits) still differ in high bits.
const BYTE_MAP: [u64; 256] = {
    let mut table = [0u64; 256];
    let mut i = 0;
    while i < 256 {
        table[i] = splitmix64(0x7866_6572_2f70_6174 ^ i as u64);
        i += 1;
    }
    table
};

/// `h(w) = sum BYTE_MAP[w_i] * MUL^(len-1-i) mod 2^64` over one block-length window.
struct Roller {
    /// `BYTE_MAP[b] * MUL^block_len`: what the byte leaving the window contributes.
    leaving: [u64; 256],
}

impl Roller {
    fn new(block_len: usize) -> Self {
        // block_len <= MAX_BLOCK_LEN, so it fits u32.
        let power = MUL.wrapping_pow(block_len as u32);
        let mut leaving = [0u64; 256];
        for (out, byte) in leaving.iter_mut().zip(BYTE_MAP) {
            *out = byte.wrapping_mul(power);
        }
        Self { leaving }
    }

    /// The hash of `window` from scratch. Four interleaved lanes (powers of
    /// `MUL^4`) break the multiply dependency chain, so this runs several
    /// times faster than a byte-at-a-time fold; the result is identical.
    fn hash(window: &[u8]) -> u64 {
        let mul4 = MUL.wrapping_pow(4);
        let mut lanes = [0u64; 4];
        let mut quads = window.chunks_exact(4);
        for quad in &mut quads {
            for (lane, &b) in lanes.iter_mut().zip(quad) {
                *lane = lane.wrapping_mul(mul4).wrapping_add(BYTE_MAP[usize::from(b)]);
            }
        }
        let [a, b, c, d] = lanes;
        let h = a
            .wrapping_mul(MUL.wrapping_pow(3))
            .wrapping_add(b.wrapping_mul(MUL.wrapping_pow(2)))
            .wrapping_add(c.wrapping_mul(MUL))
            .wrapping_add(d);
        quads.remainder().iter().fold(h, |h, &b| h.wrapping_mul(MUL).wrapping_add(BYTE_MAP[usize::from(b)]))
    }

    #[inline(always)]
    fn roll(&self, h: u64, out: u8, inp: u8) -> u64 {
        h.wrapping_mul(MUL).wrapping_add(BYTE_MAP[usize::from(inp)]).wrapping_sub(self.leaving[usize::from(out)])
    }
}

/// The top `bits` bits of the mixed hash.
#[inline(always)]
fn key_of(h: u64, bits: u8) -> u32 {
    let mixed = (h ^ (h >> 29)).wrapping_mul(MIX);
    // bits is 16..=32, so the shift is 32..=48 and the result fits u32.
    (mixed >> (64 - u32::from(bits))) as u32
}

// ---------------------------------------------------------------------------
// Signature

/// Keys of a base's full blocks: what the receiver sends so the sender can diff.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Signature {
    base_len: u32,
    block_shift: u8,
    key_bits: u8,
    keys: Vec<u32>,
}

/// Ceil of log2, with `ceil_log2(0) == ceil_log2(1) == 0`.
fn ceil_log2(x: u64) -> u32 {
    if x <= 1 {
        0
    } else {
        u64::BITS - (x - 1).leading_zeros()
    }
}

/// Block length for a base of `base_len` bytes: the power of two nearest (in
/// log scale) to `sqrt(base_len * 3)`, clamped to 64..=8192.
///
/// Why: for one localised edit the cost is about `base_len / block_len * 3`
/// signature bytes (keys average ~3 bytes) plus about `block_len` literal
/// bytes (the edited block), minimised at `block_len = sqrt(3 * base_len)`.
/// That gives 256 for 16-24 KiB bases, 512 at 64 KiB, 2 KiB at 1 MiB.
pub fn block_len_for(base_len: u32) -> u32 {
    let target = (f64::from(base_len) * 3.0).sqrt().max(1.0);
    let shift = target
        .log2()
        .round()
        .clamp(f64::from(MIN_BLOCK_LEN.trailing_zeros()), f64::from(MAX_BLOCK_LEN.trailing_zeros()));
    // shift is an integer in 6..=13 after the clamp.
    1 << (shift as u32)
}

/// Key width for `blocks` blocks over `base_len` bytes.
///
/// A false pair needs two keys to collide, at any of about `base_len`
/// search positions against any of `blocks` pairs: probability about
/// `base_len * blocks / 2^(2 * bits)`. Choosing `bits = ceil(log2(blocks) +
/// log2(base_len)) / 2 + 10` holds that near 2^-20 whatever the size; run
/// extension risks 2^-bits per edit. 21 bits for a 24 KiB base, 27 for 8 MiB.
pub fn key_bits_for(base_len: u32, blocks: u32) -> u8 {
    let bits = (ceil_log2(u64::from(blocks)) + ceil_log2(u64::from(base_len))).div_ceil(2) + 10;
    // Clamped to 20..=32, so it fits u8.
    bits.clamp(20, u32::from(MAX_KEY_BITS)) as u8
}

/// The signature of `base`, with block length from [`block_len_for`] and key
/// width from [`key_bits_for`].
///
/// Bytes past [`MAX_BASE_LEN`] are ignored, and so is a last partial block.
pub fn signature(base: &[u8]) -> Signature {
    let base_len = u32::try_from(base.len()).unwrap_or(u32::MAX).min(MAX_BASE_LEN);
    let block_len = block_len_for(base_len);
    let blocks = base_len / block_len;
    let key_bits = key_bits_for(base_len, blocks);
    let keys = base[..base_len as usize]
        .chunks_exact(block_len as usize)
        .map(|block| key_of(Roller::hash(block), key_bits))
        .collect();
    Signature {
        base_len,
        // block_len is a power of two below 2^14.
        block_shift: block_len.trailing_zeros() as u8,
        key_bits,
        keys,
    }
}

impl Signature {
    /// Length of the base this signature describes.
    pub fn base_len(&self) -> u32 {
        self.base_len
    }

    /// Block length, a power of two in [`MIN_BLOCK_LEN`]..=[`MAX_BLOCK_LEN`].
    pub fn block_len(&self) -> u32 {
        1 << self.block_shift
    }

    /// Width of each block key in bits.
    pub fn key_bits(&self) -> u8 {
        self.key_bits
    }

    /// Number of full blocks (and keys).
    pub fn block_count(&self) -> usize {
        self.keys.len()
    }

    /// The wire form (see the module docs).
    pub fn encode(&self) -> Vec<u8> {
        let key_bytes = (self.keys.len() * usize::from(self.key_bits)).div_ceil(8);
        let mut out = Vec::with_capacity(7 + key_bytes);
        put_varint(&mut out, u64::from(self.base_len));
        out.push(self.block_shift);
        out.push(self.key_bits);
        let mut acc = 0u64;
        let mut filled = 0u32;
        for &key in &self.keys {
            acc |= u64::from(key) << filled;
            filled += u32::from(self.key_bits);
            while filled >= 8 {
                out.push(acc as u8);
                acc >>= 8;
                filled -= 8;
            }
        }
        if filled > 0 {
            out.push(acc as u8);
        }
        out
    }

    /// Parses and validates a signature from the wire.
    ///
    /// # Errors
    ///
    /// Any malformation: truncation, out-of-range block length, key width or
    /// base length, key bytes that do not match the header, non-zero padding
    /// or trailing bytes. Allocates only in proportion to `bytes`.
    pub fn decode(bytes: &[u8]) -> Result<Signature, PatchError> {
        let mut r = Reader::new(bytes);
        let base_len = r.varint_u32()?;
        let block_shift = r.byte()?;
        let key_bits = r.byte()?;
        if base_len > MAX_BASE_LEN {
            return Err(PatchError::BaseTooLarge { base_len, max: MAX_BASE_LEN });
        }
        let shifts = MIN_BLOCK_LEN.trailing_zeros()..=MAX_BLOCK_LEN.trailing_zeros();
        if !shifts.contains(&u32::from(block_shift)) {
            return Err(PatchError::BlockLen { log2: block_shift });
        }
        if !(MIN_KEY_BITS..=MAX_KEY_BITS).contains(&key_bits) {
            return Err(PatchError::KeyBits { bits: key_bits });
        }
        let blocks = (base_len >> block_shift) as usize;
        let total_bits = blocks * usize::from(key_bits);
        let packed = r.rest();
        if packed.len() != total_bits.div_ceil(8) {
            return Err(PatchError::KeysLen { expected: total_bits.div_ceil(8), actual: packed.len() });
        }
        // The length check above bounds this allocation by the input size.
        let mut keys = Vec::with_capacity(blocks);
        let mask = (1u64 << key_bits) - 1;
        let mut acc = 0u64;
        let mut filled = 0u32;
        let mut bytes_iter = packed.iter();
        for _ in 0..blocks {
            while filled < u32::from(key_bits) {
                let Some(&b) = bytes_iter.next() else {
                    return Err(PatchError::Truncated { at: bytes.len() });
                };
                acc |= u64::from(b) << filled;
                filled += 8;
            }
            keys.push((acc & mask) as u32);
            acc >>= key_bits;
            filled -= u32::from(key_bits);
        }
        if acc != 0 {
            return Err(PatchError::Padding);
        }
        Ok(Signature { base_len, block_shift, key_bits, keys })
    }
}

// ---------------------------------------------------------------------------
// Diff

/// One step of rebuilding the new bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// Copy `len` bytes of the base starting at `offset`.
    Copy {
        /// Start in the base.
        offset: u32,
        /// Bytes to copy.
        len: u32,
    },
    /// Send this range of the new bytes as they are.
    Literal(Range<u32>),
}

/// Ops that rebuild a new chunk from a base: what [`diff`] finds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Patch {
    ops: Vec<Op>,
    new_len: u32,
}

impl Patch {
    /// The ops, in output order; literal ranges tile the gaps between copies.
    pub fn ops(&self) -> &[Op] {
        &self.ops
    }

    /// Length of the new bytes the patch rebuilds.
    pub fn new_len(&self) -> u32 {
        self.new_len
    }

    /// Bytes taken from the base.
    pub fn copied_len(&self) -> u64 {
        self.ops
            .iter()
            .map(|op| match op {
                Op::Copy { len, .. } => u64::from(*len),
                Op::Literal(_) => 0,
            })
            .sum()
    }

    /// Bytes that must be sent.
    pub fn literal_len(&self) -> u64 {
        u64::from(self.new_len) - self.copied_len()
    }
}

/// Collects ops, merging adjacent copies and filling gaps with literals.
struct OpSink {
    ops: Vec<Op>,
    /// End of the last op in the new bytes.
    done: usize,
}

impl OpSink {
    fn copy(&mut self, new_start: usize, base_offset: usize, len: usize) {
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

    fn finish(mut self, new_len: usize) -> Patch {
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
    if !sig.keys.is_empty() && new.len() >= block {
        search(sig, new, &mut sink);
    }
    sink.finish(new.len())
}

fn search(sig: &Signature, new: &[u8], sink: &mut OpSink) {
    let block = sig.block_len() as usize;
    let keys = &sig.keys[..];
    let bits = sig.key_bits;
    let table = KeyTable::build(keys);
    let filter = KeyFilter::build(keys, bits);
    let roller = Roller::new(block);
    // Keys of the last 2 x block positions searched, for the pair test.
    let ring_mask = 2 * block - 1;
    let mut ring = vec![0u32; 2 * block];
    // Start of the last window.
    let last = new.len() - block;
    let key_at = |pos: usize| key_of(Roller::hash(&new[pos..pos + block]), bits);

    // The current run: new[run_start..pos] is base blocks from run_block on,
    // and base block next_block is expected at pos. It starts empty, with the
    // guess that the new bytes begin like the base.
    let mut run_start = 0usize;
    let mut run_block = 0usize;
    let mut pos = 0usize;
    let mut next_block = 0usize;
    loop {
        // Extend the run while the next base block follows.
        while pos <= last && next_block < keys.len() && key_at(pos) == keys[next_block] {
            next_block += 1;
            pos += block;
        }
        if pos > run_start {
            sink.copy(run_start, run_block * block, pos - run_start);
        }
        if pos > last {
            return;
        }
        // An in-place overwrite leaves the following blocks where they were:
        // try them before searching. A single predicted block risks only
        // 2^-key_bits, and this catches a lone block between two edits or at
        // the end, where no pair fits.
        let resume = (1..=MAX_SKIP).find(|&skip| {
            let at = pos + skip * block;
            at <= last && next_block + skip < keys.len() && key_at(at) == keys[next_block + skip]
        });
        if let Some(skip) = resume {
            pos += skip * block;
            next_block += skip;
            run_start = pos;
            run_block = next_block;
            continue;
        }

        // Search: roll from pos until the window and the one a block earlier
        // are two consecutive base blocks.
        let mut i = pos;
        let mut h = Roller::hash(&new[i..i + block]);
        let armed = i + block;
        let found = loop {
            let key = key_of(h, bits);
            ring[i & ring_mask] = key;
            if i >= armed && filter.contains(key) {
                let prev = ring[(i - block) & ring_mask];
                if let Some(found) = table.find_pair(key, prev, keys) {
                    break found;
                }
            }
            if i == last {
                return;
            }
            h = roller.roll(h, new[i], new[i + block]);
            i += 1;
        };
        run_start = i - block;
        run_block = found - 1;
        next_block = found + 1;
        pos = i + block;
    }
}

// ---------------------------------------------------------------------------
// Patch wire form

/// The wire form of `patch`, literals compressed with zstd level 3 when that
/// is smaller.
///
/// # Panics
///
/// If `new` is not as long as the bytes `patch` was computed from.
pub fn encode_patch(patch: &Patch, new: &[u8]) -> Vec<u8> {
    let mut zstd = zstd::bulk::Compressor::new(LITERAL_ZSTD_LEVEL).ok();
    encode_patch_with(patch, new, zstd.as_mut())
}

/// [`encode_patch`] with a caller-held zstd compressor (none: store raw), so
/// per-chunk callers do not pay for a fresh context each time.
pub(crate) fn encode_patch_with(patch: &Patch, new: &[u8], zstd: Option<&mut zstd::bulk::Compressor<'_>>) -> Vec<u8> {
    assert_eq!(new.len(), patch.new_len as usize, "encode_patch: new bytes differ from the ones diffed");
    let mut out = Vec::with_capacity(16 + 4 * patch.ops.len());
    put_varint(&mut out, u64::from(patch.new_len));
    put_varint(&mut out, patch.ops.len() as u64);
    let mut literals = Vec::new();
    let mut copy_end = 0i64;
    for op in &patch.ops {
        match op {
            Op::Copy { offset, len } => {
                put_varint(&mut out, u64::from(*len) << 1 | 1);
                let offset = i64::from(*offset);
                put_varint(&mut out, zigzag(offset - copy_end));
                copy_end = offset + i64::from(*len);
            }
            Op::Literal(range) => {
                put_varint(&mut out, u64::from(range.end - range.start) << 1);
                literals.extend_from_slice(&new[range.start as usize..range.end as usize]);
            }
        }
    }
    if literals.is_empty() {
        return out;
    }
    let mut best = (LITERALS_RAW, literals.clone());
    if literals.len() >= MIN_COMPRESS_LEN {
        let plain = zstd.and_then(|zstd| zstd.compress(&literals).ok());
        let copies = copied_bytes(
            patch.ops.iter().filter_map(|op| match op {
                Op::Copy { .. } => None,
                Op::Literal(range) => Some(range.clone()),
            }),
            new,
        );
        let with_copies = (!copies.is_empty())
            .then(|| zstd::bulk::Compressor::with_dictionary(LITERAL_ZSTD_LEVEL, &copies).ok())
            .flatten()
            .and_then(|mut zstd| zstd.compress(&literals).ok());
        for (mode, candidate) in [(LITERALS_ZSTD, plain), (LITERALS_ZSTD_COPIES, with_copies)] {
            if let Some(candidate) = candidate.filter(|c| c.len() < best.1.len()) {
                best = (mode, candidate);
            }
        }
    }
    out.push(best.0);
    out.extend_from_slice(&best.1);
    out
}

/// `new` without the `literal` ranges (sorted, disjoint): the copied bytes
/// in output order.
fn copied_bytes(literals: impl Iterator<Item = Range<u32>>, new: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(new.len());
    let mut at = 0usize;
    for range in literals {
        out.extend_from_slice(&new[at..range.start as usize]);
        at = range.end as usize;
    }
    out.extend_from_slice(&new[at..]);
    out
}

/// A parsed op: copy from the base, or take the next literal bytes.
enum WireOp {
    Copy { offset: usize, len: usize },
    Literal { len: usize },
}

/// Rebuilds the new bytes from an encoded patch and the base it was diffed
/// against, producing at most `max_len` bytes.
///
/// # Errors
///
/// Any malformation: truncation, a declared length over `max_len`, copies
/// outside `base`, ops that do not add up, literal bytes of the wrong length
/// or that zstd refuses, trailing bytes. Checks all ops before allocating
/// the output, and decompresses into a buffer of exactly the literal length.
pub fn apply(encoded: &[u8], base: &[u8], max_len: usize) -> Result<Vec<u8>, PatchError> {
    let mut r = Reader::new(encoded);
    let new_len = r.varint_u32()?;
    if new_len as usize > max_len {
        return Err(PatchError::TooLarge { new_len, max_len });
    }
    let op_count = r.varint_u32()? as usize;
    // Every op takes at least one byte, so a count beyond the input is a lie;
    // checking first keeps the allocation proportional to the input.
    if op_count > r.remaining() {
        return Err(PatchError::Truncated { at: encoded.len() });
    }
    let mut ops = Vec::with_capacity(op_count);
    let mut total = 0u64;
    let mut literal_len = 0usize;
    let mut copy_end = 0i64;
    for op in 0..op_count {
        let head = r.varint_u64()?;
        let len = head >> 1;
        if len == 0 {
            return Err(PatchError::EmptyOp { op });
        }
        total += len;
        if total > u64::from(new_len) {
            return Err(PatchError::OpsLen { declared: new_len, actual: total });
        }
        // len <= new_len <= u32::MAX from here on.
        let len = len as usize;
        if head & 1 == 1 {
            let delta = unzigzag(r.varint_u64()?);
            let offset = copy_end.saturating_add(delta);
            let end = offset.saturating_add(len as i64);
            if offset < 0 || end > base.len() as i64 {
                return Err(PatchError::CopyOutOfBounds { op, offset, len: len as u32, base_len: base.len() });
            }
            copy_end = end;
            ops.push(WireOp::Copy { offset: offset as usize, len });
        } else {
            literal_len += len;
            ops.push(WireOp::Literal { len });
        }
    }
    if total != u64::from(new_len) {
        return Err(PatchError::OpsLen { declared: new_len, actual: total });
    }

    let decompressed;
    let literals: &[u8] = if literal_len == 0 {
        &[]
    } else {
        match r.byte()? {
            LITERALS_RAW => r.rest(),
            LITERALS_ZSTD => {
                // Capacity is the exact literal length: a bomb errors out
                // instead of growing the buffer.
                decompressed = zstd::bulk::decompress(r.rest(), literal_len).map_err(PatchError::Decompress)?;
                &decompressed
            }
            LITERALS_ZSTD_COPIES => {
                let copies: Vec<u8> = ops
                    .iter()
                    .filter_map(|op| match op {
                        WireOp::Copy { offset, len } => Some(&base[*offset..*offset + *len]),
                        WireOp::Literal { .. } => None,
                    })
                    .flatten()
                    .copied()
                    .collect();
                decompressed = zstd::bulk::Decompressor::with_dictionary(&copies)
                    .and_then(|mut zstd| zstd.decompress(r.rest(), literal_len))
                    .map_err(PatchError::Decompress)?;
                &decompressed
            }
            mode => return Err(PatchError::LiteralMode(mode)),
        }
    };
    if literal_len == 0 && r.remaining() > 0 {
        return Err(PatchError::Trailing { at: r.pos, len: r.remaining() });
    }
    if literals.len() != literal_len {
        return Err(PatchError::LiteralLen { expected: literal_len, actual: literals.len() });
    }

    let mut out = Vec::with_capacity(new_len as usize);
    let mut lit_pos = 0usize;
    for op in ops {
        match op {
            WireOp::Copy { offset, len } => out.extend_from_slice(&base[offset..offset + len]),
            WireOp::Literal { len } => {
                out.extend_from_slice(&literals[lit_pos..lit_pos + len]);
                lit_pos += len;
            }
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------------------
// Varints

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    (v >> 1) as i64 ^ -((v & 1) as i64)
}

/// A cursor over untrusted bytes: every read is bounds-checked.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Self { bytes, pos: 0 }
    }

    fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }

    fn byte(&mut self) -> Result<u8, PatchError> {
        let b = *self.bytes.get(self.pos).ok_or(PatchError::Truncated { at: self.pos })?;
        self.pos += 1;
        Ok(b)
    }

    fn rest(&mut self) -> &'a [u8] {
        let rest = &self.bytes[self.pos..];
        self.pos = self.bytes.len();
        rest
    }

    fn varint_u64(&mut self) -> Result<u64, PatchError> {
        let start = self.pos;
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = *self.bytes.get(self.pos).ok_or(PatchError::Truncated { at: start })?;
            self.pos += 1;
            let bits = u64::from(b & 0x7f);
            if shift == 63 && bits > 1 {
                return Err(PatchError::VarintOverflow { at: start });
            }
            v |= bits << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(PatchError::VarintOverflow { at: start })
    }

    fn varint_u32(&mut self) -> Result<u32, PatchError> {
        let at = self.pos;
        u32::try_from(self.varint_u64()?).map_err(|_| PatchError::VarintOverflow { at })
    }
}

// ---------------------------------------------------------------------------
// Refinement: a second, finer signature round for the unmatched stretches.
//
// One signature level sends about a block of literal bytes per edit (the
// edited block), and the block length is a compromise with signature size.
// After the first diff the sender knows which base ranges it could not
// match; it asks for finer signatures of just those, and matches the literal
// runs against them. For a 100-byte overwrite in a 64 KiB chunk that turns
// ~600 literal bytes into ~160 for ~30 more signature bytes.

/// Shortest literal run worth a finer signature: below two of the smallest
/// blocks, no finer block can match inside it.
pub const MIN_REFINE_LEN: u32 = 2 * MIN_BLOCK_LEN;

/// Longest literal run refined: beyond this the stretch is new content, not
/// an edit, and finer signatures would cost more than they find.
pub const MAX_REFINE_LEN: u32 = 32 * 1024;

/// Most ranges one refinement may ask for (bounds the receiver's work).
pub const MAX_REFINE_RANGES: usize = 64;

/// A literal run of a patch and the base bytes it most likely replaced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Gap {
    /// The unmatched base range (between the neighbouring copies).
    pub base: Range<u32>,
    /// The literal run of the new bytes.
    pub new: Range<u32>,
}

/// The literal runs of `patch` worth a finer signature, each with the base
/// range between its neighbouring copies (padded by one block where a
/// neighbour is missing).
pub fn gaps(patch: &Patch, sig: &Signature) -> Vec<Gap> {
    let block = sig.block_len();
    let ops = patch.ops();
    let mut gaps = Vec::new();
    for (i, op) in ops.iter().enumerate() {
        let Op::Literal(new) = op else { continue };
        let len = new.end - new.start;
        if !(MIN_REFINE_LEN..=MAX_REFINE_LEN).contains(&len) {
            continue;
        }
        let prev_end = i.checked_sub(1).and_then(|j| match ops[j] {
            Op::Copy { offset, len } => Some(offset + len),
            Op::Literal(_) => None,
        });
        let next_start = match ops.get(i + 1) {
            Some(Op::Copy { offset, .. }) => Some(*offset),
            _ => None,
        };
        let base = match (prev_end, next_start) {
            (Some(p), Some(q)) if q > p => p..q,
            // Copies out of order: the literal replaced an unknown stretch.
            (Some(_), Some(_)) => continue,
            (Some(p), None) => p..p.saturating_add(len + block).min(sig.base_len()),
            (None, Some(q)) => q.saturating_sub(len + block)..q,
            (None, None) => continue,
        };
        let base_len = base.end - base.start;
        if base_len < MIN_BLOCK_LEN || base_len > 2 * len + 2 * block {
            continue;
        }
        gaps.push(Gap { base, new: new.clone() });
        if gaps.len() == MAX_REFINE_RANGES {
            break;
        }
    }
    gaps
}

/// The refinement request on the wire: the base ranges, as varints.
pub fn encode_ranges(gaps: &[Gap]) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + gaps.len() * 4);
    put_varint(&mut out, gaps.len() as u64);
    let mut last_end = 0u32;
    for gap in gaps {
        put_varint(&mut out, zigzag(i64::from(gap.base.start) - i64::from(last_end)));
        put_varint(&mut out, u64::from(gap.base.end - gap.base.start));
        last_end = gap.base.end;
    }
    out
}

/// Decodes a refinement request against a base of `base_len` bytes.
///
/// # Errors
/// [`PatchError`] for truncated input, too many ranges, or a range outside
/// the base.
pub fn decode_ranges(bytes: &[u8], base_len: u32) -> Result<Vec<Range<u32>>, PatchError> {
    let mut r = Reader::new(bytes);
    let count = r.varint_u64()?;
    if count > MAX_REFINE_RANGES as u64 {
        return Err(PatchError::TooManyRanges { count });
    }
    let mut ranges = Vec::with_capacity(count as usize);
    let mut last_end = 0i64;
    for op in 0..count as usize {
        // Saturating: a hostile distance near i64::MAX must fail the bounds
        // check below, not overflow (a panic in debug, a wrapped negative
        // `end` that passes the check in release).
        let start = last_end.saturating_add(unzigzag(r.varint_u64()?));
        let len = i64::from(r.varint_u32()?);
        let end = start.saturating_add(len);
        if start < 0 || len == 0 || end > i64::from(base_len) {
            return Err(PatchError::RangeOutOfBounds { index: op, start, len, base_len });
        }
        ranges.push(start as u32..end as u32);
        last_end = end;
    }
    if r.remaining() != 0 {
        return Err(PatchError::Trailing { at: r.pos, len: bytes.len() });
    }
    Ok(ranges)
}

/// The receiver's answer to a refinement: a finer signature of each range.
/// Ranges outside `base` yield empty signatures.
pub fn fine_signatures(base: &[u8], ranges: &[Range<u32>]) -> Vec<Signature> {
    ranges.iter().map(|range| signature(base.get(range.start as usize..range.end as usize).unwrap_or(&[]))).collect()
}

/// `patch` with each gap's literal run matched against its fine signature.
pub fn refine(patch: &Patch, new: &[u8], gaps: &[Gap], fine: &[Signature]) -> Patch {
    // The sink fills every stretch between copies with a literal, so only
    // copies need pushing, each at its position in the new bytes.
    let mut sink = OpSink { ops: Vec::with_capacity(patch.ops.len() + gaps.len() * 2), done: 0 };
    let mut pending = gaps.iter().zip(fine).peekable();
    let mut pos = 0u32;
    for op in &patch.ops {
        match op {
            Op::Copy { offset, len } => {
                sink.copy(pos as usize, *offset as usize, *len as usize);
                pos += len;
            }
            Op::Literal(range) => {
                if let Some((gap, sig)) = pending.next_if(|(gap, _)| gap.new == *range) {
                    let sub = diff(sig, &new[range.start as usize..range.end as usize]);
                    let mut at = range.start;
                    for sub_op in sub.ops() {
                        match sub_op {
                            Op::Copy { offset, len } => {
                                sink.copy(at as usize, (gap.base.start + offset) as usize, *len as usize);
                                at += len;
                            }
                            Op::Literal(r) => at += r.end - r.start,
                        }
                    }
                }
                pos = range.end;
            }
        }
    }
    sink.finish(patch.new_len as usize)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn refine_shrinks_small_overwrite() {
        let old = random_bytes(64 * 1024, 21);
        let mut new = old.clone();
        new[30_011..30_111].copy_from_slice(&random_bytes(100, 22));
        let base = old.clone();
        let sig = signature(&base);
        let coarse = diff(&sig, &new);
        let gaps = gaps(&coarse, &sig);
        assert_eq!(gaps.len(), 1, "{:?}", coarse.ops());
        let request = encode_ranges(&gaps);
        let ranges = decode_ranges(&request, sig.base_len()).unwrap();
        let fine = fine_signatures(&base, &ranges);
        let refined = refine(&coarse, &new, &gaps, &fine);
        assert!(
            refined.literal_len() <= coarse.literal_len() / 2,
            "{} vs {}",
            refined.literal_len(),
            coarse.literal_len()
        );
        let encoded = encode_patch(&refined, &new);
        assert_eq!(apply(&encoded, &base, new.len()).unwrap(), new);
        let fine_bytes: usize = fine.iter().map(|s| s.encode().len()).sum();
        let total = sig.encode().len() + request.len() + fine_bytes + encoded.len();
        let unrefined = sig.encode().len() + encode_patch(&coarse, &new).len();
        assert!(total < unrefined, "refined {total} B, unrefined {unrefined} B");
    }

    #[test]
    fn decode_ranges_rejects_hostile_input() {
        assert!(decode_ranges(&[], 100).is_err());
        assert!(decode_ranges(&[200, 1], 100).is_err());
        let out_of_base = encode_ranges(&[Gap { base: 90..120, new: 0..30 }]);
        assert!(decode_ranges(&out_of_base, 100).is_err());
        let mut trailing = encode_ranges(&[Gap { base: 10..20, new: 0..10 }]);
        assert_eq!(decode_ranges(&trailing, 100).unwrap(), vec![10..20]);
        trailing.push(0);
        assert!(decode_ranges(&trailing, 100).is_err());
    }

    #[test]
    fn decode_ranges_refuses_overflowing_start() {
        // Found by the decode_patch fuzz target: a start distance near
        // i64::MAX made `start + len` overflow.
        let crash = [0x28, 0xd6, 0xd6, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01, 0x80, 0x4d];
        assert!(matches!(decode_ranges(&crash, 0), Err(PatchError::RangeOutOfBounds { index: 0, .. })));
        // One range at distance i64::MAX (zigzag u64::MAX - 1), length 1:
        // with wrapping arithmetic `end` went negative and the range
        // u32::MAX..0 was accepted.
        let mut max_start = vec![1];
        put_varint(&mut max_start, zigzag(i64::MAX));
        max_start.push(1);
        assert!(matches!(decode_ranges(&max_start, 100), Err(PatchError::RangeOutOfBounds { index: 0, .. })));
        // The same after a valid range, where `last_end` is not zero.
        let mut second = encode_ranges(&[Gap { base: 10..20, new: 0..10 }]);
        second[0] = 2;
        put_varint(&mut second, zigzag(i64::MAX));
        second.push(1);
        assert!(matches!(decode_ranges(&second, 100), Err(PatchError::RangeOutOfBounds { index: 1, .. })));
    }

    proptest! {
        #[test]
        fn refine_roundtrip_proptest(seed in any::<u64>(), at in 0usize..60_000, len in 1usize..3000) {
            let old = random_bytes(64 * 1024, seed);
            let mut new = old.clone();
            let end = (at + len).min(new.len());
            new[at..end].copy_from_slice(&random_bytes(end - at, seed ^ 1));
            let sig = signature(&old);
            let coarse = diff(&sig, &new);
            let gaps = gaps(&coarse, &sig);
            let ranges = decode_ranges(&encode_ranges(&gaps), sig.base_len()).unwrap();
            let refined = refine(&coarse, &new, &gaps, &fine_signatures(&old, &ranges));
            prop_assert!(refined.literal_len() <= coarse.literal_len());
            prop_assert_eq!(apply(&encode_patch(&refined, &new), &old, new.len()).unwrap(), new);
        }
    }

    /// Deterministic pseudo-random bytes (splitmix64 stream).
    fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
        // Start streams at a hashed seed so nearby seeds do not overlap.
        let mut state = splitmix64(seed);
        let mut out = Vec::with_capacity(len + 8);
        while out.len() < len {
            state = state.wrapping_add(1);
            out.extend_from_slice(&splitmix64(state).to_le_bytes());
        }
        out.truncate(len);
        out
    }

    /// Round-trips `new` against `base`: (signature bytes, patch bytes).
    fn roundtrip(base: &[u8], new: &[u8]) -> (usize, usize) {
        let (sig, patch, exact) = roundtrip_lenient(base, new);
        assert!(exact, "key collision: pick other test data");
        (sig, patch)
    }

    /// Round-trips `new` against `base`: (signature bytes, patch bytes, and
    /// whether the result is `new`). It may not be only through a genuine key
    /// collision, which the caller's BLAKE3 check turns into a fallback.
    fn roundtrip_lenient(base: &[u8], new: &[u8]) -> (usize, usize, bool) {
        let sig = signature(base);
        let sig_bytes = sig.encode();
        let sig = Signature::decode(&sig_bytes).unwrap();
        let patch = diff(&sig, new);
        let expected = check_patch(&patch, base, new);
        let encoded = encode_patch(&patch, new);
        let rebuilt = apply(&encoded, base, new.len()).unwrap();
        assert!(rebuilt == expected, "apply differs from the ops");
        (sig_bytes.len(), encoded.len(), rebuilt == new)
    }

    /// Oracle: checks the ops tile `new` with whole, aligned base blocks,
    /// each equal to the bytes it replaces or a genuine key collision, and
    /// returns the ops applied naively.
    fn check_patch(patch: &Patch, base: &[u8], new: &[u8]) -> Vec<u8> {
        let sig = signature(base);
        let block = sig.block_len() as usize;
        let key = |bytes: &[u8]| key_of(Roller::hash(bytes), sig.key_bits());
        let mut out = Vec::new();
        for op in patch.ops() {
            match op {
                Op::Copy { offset, len } => {
                    let (offset, len) = (*offset as usize, *len as usize);
                    assert_eq!((offset % block, len % block), (0, 0));
                    let copied = &base[offset..offset + len];
                    let replaced = &new[out.len()..out.len() + len];
                    for (a, b) in copied.chunks(block).zip(replaced.chunks(block)) {
                        assert!(a == b || key(a) == key(b), "copy of a block that differs");
                    }
                    out.extend_from_slice(copied);
                }
                Op::Literal(range) => {
                    assert_eq!(range.start as usize, out.len());
                    out.extend_from_slice(&new[range.start as usize..range.end as usize]);
                }
            }
        }
        assert_eq!(out.len(), new.len());
        assert_eq!(patch.new_len() as usize, new.len());
        out
    }

    #[test]
    fn diff_identical_is_one_copy() {
        let base = random_bytes(16 * 1024, 1);
        let patch = diff(&signature(&base), &base);
        assert_eq!(patch.ops(), &[Op::Copy { offset: 0, len: 16 * 1024 }]);
        let (sig, enc) = roundtrip(&base, &base);
        assert!(enc < 16, "identical patch takes {enc} bytes");
        assert!(sig < 600, "signature takes {sig} bytes");
    }

    #[test]
    fn diff_overwrite_middle() {
        for len in [16 * 1024, 64 * 1024] {
            let base = random_bytes(len, 2);
            let mut new = base.clone();
            let at = len / 2 - 37;
            new[at..at + 100].copy_from_slice(&random_bytes(100, 3));
            let sig = signature(&base);
            let patch = diff(&sig, &new);
            assert!(check_patch(&patch, &base, &new) == new);
            // The edit spans at most two blocks, so at most 2 blocks are literal.
            assert!(patch.literal_len() <= 2 * u64::from(sig.block_len()));
            roundtrip(&base, &new);
        }
    }

    #[test]
    fn diff_insert_delete_front_middle_end() {
        let base = random_bytes(20_000, 4);
        let ins = random_bytes(333, 5);
        let mid = 9_999;
        let cases: Vec<Vec<u8>> = vec![
            [&ins[..], &base[..]].concat(),
            [&base[..mid], &ins[..], &base[mid..]].concat(),
            [&base[..], &ins[..]].concat(),
            base[333..].to_vec(),
            [&base[..mid], &base[mid + 333..]].concat(),
            base[..base.len() - 333].to_vec(),
        ];
        for new in &cases {
            let patch = diff(&signature(&base), new);
            assert!(check_patch(&patch, &base, new) == *new);
            // Everything but the edit and a few blocks around it is copied.
            assert!(patch.literal_len() < 333 + 4 * 256, "literal {} bytes", patch.literal_len());
            roundtrip(&base, new);
        }
    }

    #[test]
    fn diff_unrelated_empty_and_tiny() {
        let base = random_bytes(30_000, 6);
        let other = random_bytes(25_000, 7);
        let patch = diff(&signature(&base), &other);
        assert_eq!(patch.copied_len(), 0);
        roundtrip(&base, &other);
        roundtrip(&[], &other);
        roundtrip(&base, &[]);
        roundtrip(&[], &[]);
        roundtrip(&base[..100], &base[..50]);
        roundtrip(&base[..1000], &base[..1000]);
    }

    #[test]
    fn diff_repetitive_data() {
        // Zeros: every key equal, so the key table and runs must cope.
        let base = vec![0u8; 40_000];
        let mut new = vec![0u8; 35_000];
        new[20_000] = 1;
        let patch = diff(&signature(&base), &new);
        assert!(patch.literal_len() < 1024);
        roundtrip(&base, &new);
        let text: Vec<u8> = b"fn main() { println!(\"hi\"); }\n".iter().copied().cycle().take(50_000).collect();
        roundtrip(&text, &text[1234..]);
    }

    #[test]
    fn diff_small_overwrite_fits_size_budget() {
        // The key size claim: a 100-byte overwrite in a 16 KiB chunk, against
        // a 24 KiB base (the old chunk and 8 KiB that followed it), wherever
        // the overwrite falls.
        let old = random_bytes(24 * 1024, 8);
        let sig_len = signature(&old).encode().len();
        let (mut worst, mut total, mut count) = (0, 0, 0);
        for at in (0..16 * 1024 - 100).step_by(61) {
            let mut new = old[..16 * 1024].to_vec();
            new[at..at + 100].copy_from_slice(&random_bytes(100, at as u64));
            let (sig, patch) = roundtrip(&old, &new);
            assert_eq!(sig, sig_len);
            assert!(sig + patch < 900, "overwrite at {at}: {sig} + {patch}");
            worst = worst.max(patch);
            total += patch;
            count += 1;
        }
        eprintln!(
            "16 KiB chunk, 24 KiB base, 100-byte overwrite: signature {sig_len} + patch \
             {} mean, {worst} worst",
            total / count
        );
    }

    #[test]
    fn diff_finds_lone_blocks_between_overwrites() {
        // Every other block overwritten: no two consecutive blocks survive,
        // so only the in-place resume can find the ones left.
        let base = random_bytes(64 * 256, 16);
        let sig = signature(&base);
        assert_eq!(sig.block_len(), 256);
        let mut new = base.clone();
        for block in (1..64).step_by(2) {
            new[block * 256 + 10] ^= 0xff;
        }
        let patch = diff(&sig, &new);
        assert!(check_patch(&patch, &base, &new) == new);
        assert_eq!(patch.copied_len(), 32 * 256);
        // A lone block at the end, after an overwrite.
        let mut new = base[..16 * 256 + 100].to_vec();
        new[14 * 256 + 3] ^= 1;
        let patch = diff(&sig, &new);
        assert_eq!(patch.literal_len(), 256 + 100);
    }

    #[test]
    fn signature_roundtrip_and_sizes() {
        for len in [0, 63, 64, 200, 8 * 1024, 24 * 1024, 96 * 1024, 1 << 20] {
            let base = random_bytes(len, 10);
            let sig = signature(&base);
            let bytes = sig.encode();
            assert_eq!(Signature::decode(&bytes).unwrap(), sig);
            assert_eq!(sig.base_len() as usize, len);
            assert_eq!(sig.block_count(), len / sig.block_len() as usize);
        }
        assert_eq!(block_len_for(16 * 1024), 256);
        assert_eq!(block_len_for(24 * 1024), 256);
        assert_eq!(block_len_for(64 * 1024), 512);
        assert_eq!(block_len_for(1 << 20), 2048);
        assert_eq!(block_len_for(0), 64);
        assert_eq!(block_len_for(MAX_BASE_LEN), 4096);
        assert_eq!(key_bits_for(24 * 1024, 96), 21);
        assert_eq!(key_bits_for(MAX_BASE_LEN, 2048), 27);
    }

    #[test]
    fn signature_decode_rejects_hostile() {
        let good = signature(&random_bytes(24 * 1024, 11)).encode();
        for cut in 0..good.len() {
            assert!(Signature::decode(&good[..cut]).is_err(), "cut at {cut}");
        }
        let mut long = good.clone();
        long.push(0);
        assert!(matches!(Signature::decode(&long), Err(PatchError::KeysLen { .. })));

        let header = |base_len: u64, shift: u8, bits: u8| {
            let mut v = Vec::new();
            put_varint(&mut v, base_len);
            v.extend_from_slice(&[shift, bits]);
            v
        };
        assert!(matches!(
            Signature::decode(&header(u64::from(MAX_BASE_LEN) + 1, 8, 20)),
            Err(PatchError::BaseTooLarge { .. })
        ));
        assert!(matches!(
            Signature::decode(&header(u64::from(u32::MAX) + 1, 8, 20)),
            Err(PatchError::VarintOverflow { .. })
        ));
        assert!(matches!(Signature::decode(&[0xff; 12]), Err(PatchError::VarintOverflow { .. })));
        for shift in [0, 5, 14, 255] {
            assert!(matches!(Signature::decode(&header(1024, shift, 20)), Err(PatchError::BlockLen { .. })));
        }
        for bits in [0, 15, 33, 255] {
            assert!(matches!(Signature::decode(&header(1024, 8, bits)), Err(PatchError::KeyBits { .. })));
        }
        // Huge declared base, no keys: refused without allocating for it.
        assert!(matches!(Signature::decode(&header(u64::from(MAX_BASE_LEN), 6, 32)), Err(PatchError::KeysLen { .. })));
        // Non-zero padding: 3 keys of 20 bits leave 4 spare bits.
        let mut padded = header(3 * 64, 6, 20);
        padded.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0xf0]);
        assert!(matches!(Signature::decode(&padded), Err(PatchError::Padding)));
    }

    #[test]
    fn apply_rejects_hostile() {
        let base = random_bytes(20_000, 12);
        let mut new = base.clone();
        new[5000..5100].copy_from_slice(&random_bytes(100, 13));
        let good = encode_patch(&diff(&signature(&base), &new), &new);

        for cut in 0..good.len() {
            assert!(apply(&good[..cut], &base, 1 << 20).is_err(), "cut at {cut}");
        }
        let mut long = good.clone();
        long.push(0);
        assert!(apply(&long, &base, 1 << 20).is_err());
        // Output limit.
        assert!(matches!(apply(&good, &base, new.len() - 1), Err(PatchError::TooLarge { .. })));
        // A shorter base: copies fall out of bounds.
        assert!(matches!(apply(&good, &base[..10_000], 1 << 20), Err(PatchError::CopyOutOfBounds { .. })));

        let patch = |parts: &[u64]| {
            let mut v = Vec::new();
            for &p in parts {
                put_varint(&mut v, p);
            }
            v
        };
        let big = u64::from(u32::MAX);
        // Huge declared length with a generous limit: refused before allocating.
        assert!(apply(&patch(&[big, 1, big << 1 | 1, 0]), &base, usize::MAX).is_err());
        // Huge op count.
        assert!(matches!(apply(&patch(&[10, big]), &base, 100), Err(PatchError::Truncated { .. })));
        // Copy before the base, past the base, overflowing.
        assert!(matches!(
            apply(&patch(&[10, 1, 10 << 1 | 1, zigzag(-1)]), &base, 100),
            Err(PatchError::CopyOutOfBounds { .. })
        ));
        assert!(matches!(
            apply(&patch(&[10, 1, 10 << 1 | 1, 19_995]), &base, 100),
            Err(PatchError::CopyOutOfBounds { .. })
        ));
        assert!(apply(&patch(&[10, 1, 10 << 1 | 1, u64::MAX]), &base, 100).is_err());
        // Ops short of or beyond the declared length; zero-length op.
        assert!(matches!(apply(&patch(&[10, 1, 5 << 1 | 1, 0]), &base, 100), Err(PatchError::OpsLen { .. })));
        assert!(matches!(apply(&patch(&[10, 1, 11 << 1 | 1, 0]), &base, 100), Err(PatchError::OpsLen { .. })));
        assert!(matches!(apply(&patch(&[10, 1, 1, 0]), &base, 100), Err(PatchError::EmptyOp { .. })));
        // Literal section: unknown mode, short raw bytes, zstd bomb.
        assert!(matches!(
            apply(&[patch(&[4, 1, 4 << 1]), vec![7, 1, 2, 3, 4]].concat(), &base, 100),
            Err(PatchError::LiteralMode(7))
        ));
        assert!(matches!(
            apply(&[patch(&[4, 1, 4 << 1]), vec![0, 1, 2, 3]].concat(), &base, 100),
            Err(PatchError::LiteralLen { .. })
        ));
        let bomb = zstd::bulk::compress(&vec![0u8; 1 << 20], 3).unwrap();
        assert!(bomb.len() < 200);
        assert!(matches!(
            apply(&[patch(&[64, 1, 64 << 1]), vec![1], bomb].concat(), &base, 100),
            Err(PatchError::Decompress(_))
        ));
        let garbage = [patch(&[64, 1, 64 << 1]), vec![1], random_bytes(80, 14)].concat();
        assert!(apply(&garbage, &base, 100).is_err());
    }

    #[test]
    fn apply_random_garbage_never_panics() {
        let base = random_bytes(4096, 15);
        for seed in 0..2000 {
            let len = (splitmix64(seed) % 64) as usize;
            let bytes = random_bytes(len, seed + 100);
            let _ = apply(&bytes, &base, 1 << 16);
            let _ = Signature::decode(&bytes);
        }
    }

    #[test]
    fn encode_patch_compresses_text_literals() {
        let base: Vec<u8> =
            (0..2000).flat_map(|i| format!("let value_{i} = compute(value_{});\n", i / 2).into_bytes()).collect();
        let mut new = base.clone();
        let insert: Vec<u8> = b"    if ready { return Ok(()); }\n".iter().copied().cycle().take(3000).collect();
        new.splice(30_000..30_000, insert);
        let patch = diff(&signature(&base), &new);
        let encoded = encode_patch(&patch, &new);
        assert!((encoded.len() as u64) < patch.literal_len() / 4);
        assert_eq!(apply(&encoded, &base, new.len()).unwrap(), new);
    }

    /// An edit applied to the base to make the new bytes.
    #[derive(Clone, Debug)]
    enum Edit {
        Overwrite { at: f64, bytes: Vec<u8> },
        Insert { at: f64, bytes: Vec<u8> },
        Delete { at: f64, len: usize },
        Move { from: f64, to: f64, len: usize },
    }

    fn apply_edits(base: &[u8], edits: &[Edit]) -> Vec<u8> {
        let mut v = base.to_vec();
        let pos = |at: f64, len: usize| ((at * len as f64) as usize).min(len);
        for edit in edits {
            match edit {
                Edit::Overwrite { at, bytes } => {
                    let start = pos(*at, v.len());
                    let end = (start + bytes.len()).min(v.len());
                    v[start..end].copy_from_slice(&bytes[..end - start]);
                }
                Edit::Insert { at, bytes } => {
                    let start = pos(*at, v.len());
                    v.splice(start..start, bytes.iter().copied());
                }
                Edit::Delete { at, len } => {
                    let start = pos(*at, v.len());
                    let end = (start + len).min(v.len());
                    v.drain(start..end);
                }
                Edit::Move { from, to, len } => {
                    let start = pos(*from, v.len());
                    let end = (start + len).min(v.len());
                    let piece: Vec<u8> = v.drain(start..end).collect();
                    let to = pos(*to, v.len());
                    v.splice(to..to, piece);
                }
            }
        }
        v
    }

    fn edit_strategy() -> impl Strategy<Value = Edit> {
        let bytes = prop::collection::vec(any::<u8>(), 1..600);
        prop_oneof![
            (0.0..1.0f64, bytes.clone()).prop_map(|(at, bytes)| Edit::Overwrite { at, bytes }),
            (0.0..1.0f64, bytes).prop_map(|(at, bytes)| Edit::Insert { at, bytes }),
            (0.0..1.0f64, 1..3000usize).prop_map(|(at, len)| Edit::Delete { at, len }),
            (0.0..1.0f64, 0.0..1.0f64, 1..5000usize).prop_map(|(from, to, len)| Edit::Move { from, to, len }),
        ]
    }

    fn diff_roundtrip_impl(base: &[u8], edits: &[Edit], extra: &[u8]) {
        let new = apply_edits(base, edits);
        // The receiver's base often runs past the old chunk.
        let base = [base, extra].concat();
        // Key collisions (about 2^-20 per edit) are the one allowed miss.
        roundtrip_lenient(&base, &new);
    }

    proptest! {
        #[test]
        fn diff_roundtrip_proptest(
            seed in any::<u64>(),
            len in 0..40_000usize,
            text in any::<bool>(),
            edits in prop::collection::vec(edit_strategy(), 0..6),
            extra in prop::collection::vec(any::<u8>(), 0..2000),
        ) {
            let base = if text {
                // Low-entropy input: repeats make keys collide in the table.
                random_bytes(len, seed).iter().map(|b| b"ab \n"[usize::from(b & 3)]).collect()
            } else {
                random_bytes(len, seed)
            };
            diff_roundtrip_impl(&base, &edits, &extra);
        }
    }
}
