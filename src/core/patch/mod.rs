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
//! # Wire formats
//!
//! The signature, patch and refinement-range encodings, their limits and
//! [`PatchError`] belong to the protocol crate ([`xfer_protocol::patch`],
//! SPEC.md "Delta formats"); this module computes what they carry.
//!
//! [`signature`]: signature()

use std::ops::Range;

pub use xfer_protocol::patch::{
    PatchError, Signature, MAX_BASE_LEN, MAX_BLOCK_LEN, MAX_KEY_BITS, MAX_REFINE_RANGES, MIN_BLOCK_LEN, MIN_KEY_BITS,
};

mod apply;
mod refine;
mod search;
mod signature;

pub(crate) use apply::encode_patch_with;
pub use apply::{apply, encode_patch};
pub use refine::{decode_ranges, encode_ranges, fine_signatures, gaps, refine, Gap, MAX_REFINE_LEN, MIN_REFINE_LEN};
pub use search::diff;
pub use signature::{block_len_for, key_bits_for, signature};

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

#[cfg(test)]
mod tests;
