//! Patches on the wire: the sender encodes its ops with the literal bytes
//! compressed as best it can, the receiver rebuilds the new bytes. The byte
//! format is the protocol crate's ([`xfer_protocol::patch`]).

use std::borrow::Cow;
use std::ops::Range;

use xfer_protocol::codec::{LITERALS_RAW, LITERALS_ZSTD, LITERALS_ZSTD_COPIES, LITERAL_ZSTD_LEVEL, MIN_COMPRESS_LEN};
use xfer_protocol::patch::{decode_patch, Literals, PatchOp};

use super::{Op, Patch, PatchError};

/// The wire form of `patch`, literals compressed with zstd at
/// [`LITERAL_ZSTD_LEVEL`] when that is smaller.
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
    let mut literals = Vec::new();
    let ops: Vec<PatchOp> = patch
        .ops
        .iter()
        .map(|op| match op {
            Op::Copy { offset, len } => PatchOp::Copy { offset: u64::from(*offset), len: *len },
            Op::Literal(range) => {
                literals.extend_from_slice(&new[range.start as usize..range.end as usize]);
                PatchOp::Literal { len: range.end - range.start }
            }
        })
        .collect();
    if literals.is_empty() {
        return xfer_protocol::patch::encode_patch(patch.new_len, &ops, None);
    }
    let (mode, bytes) = compress_literals(patch, new, literals, zstd);
    xfer_protocol::patch::encode_patch(patch.new_len, &ops, Some(Literals { mode, bytes: &bytes }))
}

/// The smallest literal section: raw, zstd, or zstd with the copied bytes
/// as dictionary (raw on a tie, and for sections too short to pay a frame).
fn compress_literals(
    patch: &Patch,
    new: &[u8],
    literals: Vec<u8>,
    zstd: Option<&mut zstd::bulk::Compressor<'_>>,
) -> (u8, Vec<u8>) {
    if literals.len() < MIN_COMPRESS_LEN {
        return (LITERALS_RAW, literals);
    }
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
    let mut best = (LITERALS_RAW, literals);
    for (mode, candidate) in [(LITERALS_ZSTD, plain), (LITERALS_ZSTD_COPIES, with_copies)] {
        if let Some(candidate) = candidate.filter(|c| c.len() < best.1.len()) {
            best = (mode, candidate);
        }
    }
    best
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
    let patch = decode_patch(encoded, base.len(), max_len)?;
    let literals = match patch.literals {
        None => Cow::Borrowed(&[][..]),
        Some(literals) => decode_literals(literals, &patch.ops, base, patch.literal_len)?,
    };
    if literals.len() != patch.literal_len {
        return Err(PatchError::LiteralLen { expected: patch.literal_len, actual: literals.len() });
    }
    let mut out = Vec::with_capacity(patch.new_len as usize);
    let mut lit_pos = 0usize;
    for op in patch.ops {
        match op {
            // decode_patch checked every copy against the base.
            PatchOp::Copy { offset, len } => out.extend_from_slice(&base[offset as usize..][..len as usize]),
            PatchOp::Literal { len } => {
                out.extend_from_slice(&literals[lit_pos..lit_pos + len as usize]);
                lit_pos += len as usize;
            }
        }
    }
    Ok(out)
}

/// The literal bytes of a patch, decompressed into at most `literal_len`
/// bytes: a bomb errors out instead of growing the buffer.
fn decode_literals<'a>(
    literals: Literals<'a>,
    ops: &[PatchOp],
    base: &[u8],
    literal_len: usize,
) -> Result<Cow<'a, [u8]>, PatchError> {
    match literals.mode {
        LITERALS_RAW => Ok(Cow::Borrowed(literals.bytes)),
        LITERALS_ZSTD => {
            zstd::bulk::decompress(literals.bytes, literal_len).map(Cow::Owned).map_err(PatchError::Decompress)
        }
        LITERALS_ZSTD_COPIES => {
            let copies: Vec<u8> = ops
                .iter()
                .filter_map(|op| match *op {
                    PatchOp::Copy { offset, len } => Some(&base[offset as usize..][..len as usize]),
                    PatchOp::Literal { .. } => None,
                })
                .flatten()
                .copied()
                .collect();
            zstd::bulk::Decompressor::with_dictionary(&copies)
                .and_then(|mut zstd| zstd.decompress(literals.bytes, literal_len))
                .map(Cow::Owned)
                .map_err(PatchError::Decompress)
        }
        mode => Err(PatchError::LiteralMode(mode)),
    }
}
