//! Refinement: a second, finer signature round for the unmatched stretches.
//!
//! One signature level sends about a block of literal bytes per edit (the
//! edited block), and the block length is a compromise with signature size.
//! After the first diff the sender knows which base ranges it could not
//! match; it asks for finer signatures of just those, and matches the literal
//! runs against them. For a 100-byte overwrite in a 64 KiB chunk that turns
//! ~600 literal bytes into ~160 for ~30 more signature bytes.

use std::ops::Range;

use super::search::{diff, OpSink};
use super::signature::signature;
use super::{Op, Patch, Signature, MAX_REFINE_RANGES, MIN_BLOCK_LEN};

/// Shortest literal run worth a finer signature: below two of the smallest
/// blocks, no finer block can match inside it.
pub const MIN_REFINE_LEN: u32 = 2 * MIN_BLOCK_LEN;

/// Longest literal run refined: beyond this the stretch is new content, not
/// an edit, and finer signatures would cost more than they find.
pub const MAX_REFINE_LEN: u32 = 32 * 1024;

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

/// The refinement request on the wire: the gaps' base ranges
/// ([`xfer_protocol::patch::encode_ranges`]).
pub fn encode_ranges(gaps: &[Gap]) -> Vec<u8> {
    let ranges: Vec<Range<u32>> = gaps.iter().map(|gap| gap.base.clone()).collect();
    xfer_protocol::patch::encode_ranges(&ranges)
}

pub use xfer_protocol::patch::decode_ranges;

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
