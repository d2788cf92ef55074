//! Delta formats (SPEC.md, "Delta formats"): the signature a receiver sends
//! in `NeedChunk`, the patch a sender answers with in a `ChunkData` of codec
//! [`CODEC_DELTA`](crate::codec::CODEC_DELTA), and the ranges of a
//! `RefineRequest`.
//!
//! This module only encodes and decodes, checking every limit; building
//! signatures, searching and applying patches is the core's work. Every
//! decoder allocates only in proportion to its input.

use std::io;
use std::ops::Range;

use thiserror::Error;

use crate::codec::{LITERALS_RAW, LITERALS_ZSTD, LITERALS_ZSTD_COPIES};
use crate::limits::{MAX_CHUNK_LEN, MAX_FINE_SIGNATURES};
use crate::varint::{self, VarintError};

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

/// Most ranges one refinement may ask for (bounds the receiver's work);
/// one fine signature answers each.
pub const MAX_REFINE_RANGES: usize = MAX_FINE_SIGNATURES;

/// What was wrong with a signature, patch or range list.
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
        let at = self.pos;
        varint::get(self.bytes, &mut self.pos).map_err(|e| match e {
            VarintError::Truncated => PatchError::Truncated { at },
            VarintError::Overflow => PatchError::VarintOverflow { at },
        })
    }

    fn varint_u32(&mut self) -> Result<u32, PatchError> {
        let at = self.pos;
        u32::try_from(self.varint_u64()?).map_err(|_| PatchError::VarintOverflow { at })
    }
}

// ---------------------------------------------------------------------------
// Signature

/// Keys of a base's full blocks: what the receiver sends so the sender can
/// diff. Always within the limits above.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Signature {
    base_len: u32,
    block_shift: u8,
    key_bits: u8,
    keys: Vec<u32>,
}

impl Signature {
    /// A signature from its parts: a base of `base_len` bytes in blocks of
    /// `2^block_shift` bytes, one `key_bits`-bit key per full block.
    ///
    /// # Errors
    ///
    /// A part out of range, a key count other than `base_len >>
    /// block_shift`, or a key wider than `key_bits` ([`PatchError::Padding`]).
    pub fn from_parts(base_len: u32, block_shift: u8, key_bits: u8, keys: Vec<u32>) -> Result<Self, PatchError> {
        let blocks = check_header(base_len, block_shift, key_bits)?;
        let bytes = (blocks * usize::from(key_bits)).div_ceil(8);
        if keys.len() != blocks {
            let actual = (keys.len() * usize::from(key_bits)).div_ceil(8);
            return Err(PatchError::KeysLen { expected: bytes, actual });
        }
        if keys.iter().any(|&key| u64::from(key) >> key_bits != 0) {
            return Err(PatchError::Padding);
        }
        Ok(Signature { base_len, block_shift, key_bits, keys })
    }

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

    /// The key of each full block, in base order.
    pub fn keys(&self) -> &[u32] {
        &self.keys
    }

    /// The wire form: `base_len` varint, `log2(block_len)` byte, `key_bits`
    /// byte, then the keys packed least significant bit first.
    pub fn encode(&self) -> Vec<u8> {
        let key_bytes = (self.keys.len() * usize::from(self.key_bits)).div_ceil(8);
        let mut out = Vec::with_capacity(7 + key_bytes);
        varint::put(&mut out, u64::from(self.base_len));
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
        let blocks = check_header(base_len, block_shift, key_bits)?;
        let expected = (blocks * usize::from(key_bits)).div_ceil(8);
        let packed = r.rest();
        if packed.len() != expected {
            return Err(PatchError::KeysLen { expected, actual: packed.len() });
        }
        let keys = unpack_keys(packed, blocks, key_bits)?;
        Ok(Signature { base_len, block_shift, key_bits, keys })
    }
}

/// Checks a signature header; the number of full blocks.
fn check_header(base_len: u32, block_shift: u8, key_bits: u8) -> Result<usize, PatchError> {
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
    Ok((base_len >> block_shift) as usize)
}

/// `blocks` keys of `key_bits` bits from `packed`, whose length the caller
/// checked; the bits past the last key must be zero.
fn unpack_keys(packed: &[u8], blocks: usize, key_bits: u8) -> Result<Vec<u32>, PatchError> {
    // The caller's length check bounds this allocation by the input size.
    let mut keys = Vec::with_capacity(blocks);
    let mask = (1u64 << key_bits) - 1;
    let mut acc = 0u64;
    let mut filled = 0u32;
    let mut bytes = packed.iter();
    for _ in 0..blocks {
        while filled < u32::from(key_bits) {
            let Some(&b) = bytes.next() else {
                return Err(PatchError::Truncated { at: packed.len() });
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
    Ok(keys)
}

// ---------------------------------------------------------------------------
// Patch

/// One op of a patch as it travels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PatchOp {
    /// Copy `len` bytes of the base from `offset`.
    Copy {
        /// Start in the base.
        offset: u64,
        /// Bytes to copy.
        len: u32,
    },
    /// Take the next `len` bytes of the literal section.
    Literal {
        /// Bytes to take.
        len: u32,
    },
}

/// A patch's literal section: its mode ([`crate::codec`]'s `LITERALS_*`)
/// and its bytes, compressed as the mode says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Literals<'a> {
    /// `LITERALS_RAW`, `LITERALS_ZSTD` or `LITERALS_ZSTD_COPIES`.
    pub mode: u8,
    /// The section after the mode byte, to the end of the patch.
    pub bytes: &'a [u8],
}

/// A decoded patch: ops checked against the base and the output limit, the
/// literal section still encoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecodedPatch<'a> {
    /// Length of the bytes the patch rebuilds.
    pub new_len: u32,
    /// The ops, in output order; their lengths add up to `new_len`, and
    /// every copy lies inside the base.
    pub ops: Vec<PatchOp>,
    /// Sum of the literal ops' lengths: what the literal section decodes to.
    pub literal_len: usize,
    /// The literal section, present exactly when `literal_len > 0`.
    pub literals: Option<Literals<'a>>,
}

/// The wire form of a patch: `new_len`, the op count, each op's head
/// (`len << 1 | is_copy`) and for a copy the zigzag distance of its offset
/// from the end of the previous copy; then, if any op is literal, the
/// literal section's mode byte and bytes.
///
/// # Panics
///
/// If `literals` is missing although an op is literal, or present without
/// one: the caller builds both from the same ops.
pub fn encode_patch(new_len: u32, ops: &[PatchOp], literals: Option<Literals<'_>>) -> Vec<u8> {
    let has_literal = ops.iter().any(|op| matches!(op, PatchOp::Literal { .. }));
    assert_eq!(has_literal, literals.is_some(), "invariant: a literal section exactly when an op is literal");
    let mut out = Vec::with_capacity(16 + 4 * ops.len() + literals.map_or(0, |l| 1 + l.bytes.len()));
    varint::put(&mut out, u64::from(new_len));
    varint::put(&mut out, ops.len() as u64);
    let mut copy_end = 0i64;
    for op in ops {
        match *op {
            PatchOp::Copy { offset, len } => {
                varint::put(&mut out, u64::from(len) << 1 | 1);
                // Offsets come from bases of at most u32::MAX bytes.
                let offset = offset as i64;
                varint::put(&mut out, varint::zigzag(offset - copy_end));
                copy_end = offset + i64::from(len);
            }
            PatchOp::Literal { len } => varint::put(&mut out, u64::from(len) << 1),
        }
    }
    if let Some(literals) = literals {
        out.push(literals.mode);
        out.extend_from_slice(literals.bytes);
    }
    out
}

/// Decodes a patch against a base of `base_len` bytes, refusing one that
/// would rebuild more than `max_len` bytes.
///
/// # Errors
///
/// Truncation, a declared length over `max_len`, an empty op, copies
/// outside the base, ops that do not add up to the declared length, an
/// unknown literal mode, or bytes after a patch without literals. The
/// literal section's length is the caller's to check once decoded.
pub fn decode_patch(encoded: &[u8], base_len: usize, max_len: usize) -> Result<DecodedPatch<'_>, PatchError> {
    let mut r = Reader::new(encoded);
    let new_len = r.varint_u32()?;
    if new_len as usize > max_len {
        return Err(PatchError::TooLarge { new_len, max_len });
    }
    let (ops, literal_len) = decode_ops(&mut r, new_len, base_len)?;
    let literals = if literal_len == 0 {
        if r.remaining() > 0 {
            return Err(PatchError::Trailing { at: r.pos, len: r.remaining() });
        }
        None
    } else {
        let mode = r.byte()?;
        if ![LITERALS_RAW, LITERALS_ZSTD, LITERALS_ZSTD_COPIES].contains(&mode) {
            return Err(PatchError::LiteralMode(mode));
        }
        Some(Literals { mode, bytes: r.rest() })
    };
    Ok(DecodedPatch { new_len, ops, literal_len, literals })
}

/// The op count and ops; with the sum of the literal lengths.
fn decode_ops(r: &mut Reader<'_>, new_len: u32, base_len: usize) -> Result<(Vec<PatchOp>, usize), PatchError> {
    let op_count = r.varint_u32()? as usize;
    // Every op takes at least one byte, so a count beyond the input is a lie;
    // checking first keeps the allocation proportional to the input.
    if op_count > r.remaining() {
        return Err(PatchError::Truncated { at: r.bytes.len() });
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
        let len = len as u32;
        if head & 1 == 1 {
            let offset = copy_end.saturating_add(varint::unzigzag(r.varint_u64()?));
            let end = offset.saturating_add(i64::from(len));
            if offset < 0 || end > base_len as i64 {
                return Err(PatchError::CopyOutOfBounds { op, offset, len, base_len });
            }
            copy_end = end;
            ops.push(PatchOp::Copy { offset: offset as u64, len });
        } else {
            literal_len += len as usize;
            ops.push(PatchOp::Literal { len });
        }
    }
    if total != u64::from(new_len) {
        return Err(PatchError::OpsLen { declared: new_len, actual: total });
    }
    Ok((ops, literal_len))
}

// ---------------------------------------------------------------------------
// Refinement ranges

/// The wire form of a refinement request: the range count, then per range
/// the zigzag distance of its start from the end of the previous range and
/// its length.
///
/// # Panics
///
/// If a range ends before it starts.
pub fn encode_ranges(ranges: &[Range<u32>]) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + ranges.len() * 4);
    varint::put(&mut out, ranges.len() as u64);
    let mut last_end = 0u32;
    for range in ranges {
        varint::put(&mut out, varint::zigzag(i64::from(range.start) - i64::from(last_end)));
        varint::put(&mut out, u64::from(range.end - range.start));
        last_end = range.end;
    }
    out
}

/// Decodes a refinement request against a base of `base_len` bytes.
///
/// # Errors
/// [`PatchError`] for truncated input, too many ranges, an empty range or one
/// outside the base, or trailing bytes.
pub fn decode_ranges(bytes: &[u8], base_len: u32) -> Result<Vec<Range<u32>>, PatchError> {
    let mut r = Reader::new(bytes);
    let count = r.varint_u64()?;
    if count > MAX_REFINE_RANGES as u64 {
        return Err(PatchError::TooManyRanges { count });
    }
    let mut ranges = Vec::with_capacity(count as usize);
    let mut last_end = 0i64;
    for index in 0..count as usize {
        // Saturating: a hostile distance near i64::MAX must fail the bounds
        // check below, not overflow (a panic in debug, a wrapped negative
        // `end` that passes the check in release).
        let start = last_end.saturating_add(varint::unzigzag(r.varint_u64()?));
        let len = i64::from(r.varint_u32()?);
        let end = start.saturating_add(len);
        if start < 0 || len == 0 || end > i64::from(base_len) {
            return Err(PatchError::RangeOutOfBounds { index, start, len, base_len });
        }
        ranges.push(start as u32..end as u32);
        last_end = end;
    }
    if r.remaining() != 0 {
        return Err(PatchError::Trailing { at: r.pos, len: bytes.len() });
    }
    Ok(ranges)
}
