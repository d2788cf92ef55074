//! Fuzz target: the delta-format decoders of `xfer_protocol::patch`, each
//! fed hostile bytes the way a peer could, and what decodes re-encoded:
//!
//! - mode 0: `decode_patch` (receiver, `ChunkData` of codec delta) against a
//!   base length and output limit from the input: the ops must add up to
//!   the declared length within the limit, every copy must lie in the base,
//!   and the patch re-encoded must decode to the same thing;
//! - mode 1: `Signature::decode` (sender, `NeedChunk.signature`): the
//!   signature must re-encode to bytes that decode to it, and `from_parts`
//!   must accept its parts;
//! - mode 2: `decode_ranges` (receiver, `RefineRequest.ranges`) against a
//!   base length from the input: at most `MAX_REFINE_RANGES` non-empty
//!   ranges inside the base, which re-encode to ranges that decode alike.
//!
//! Input: `mode: u8`, `len: u32 LE` (base length; for mode 0 the output
//! limit is its low 16 bits), then the bytes to decode.
//! The core's algorithms (diff, apply) are fuzzed by the fuzz crate in
//! tests/fuzz (`delta_roundtrip`, `decode_chunk`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use xfer_protocol::patch::{self, PatchOp, Signature, MAX_REFINE_RANGES};

fuzz_target!(|data: &[u8]| {
    let Some((head, bytes)) = data.split_first_chunk::<5>() else { return };
    let len = u32::from_le_bytes([head[1], head[2], head[3], head[4]]);
    match head[0] % 3 {
        0 => patch_roundtrip(bytes, len as usize, usize::from(len as u16)),
        1 => {
            let Ok(sig) = Signature::decode(bytes) else { return };
            assert_eq!(Signature::decode(&sig.encode()).expect("re-encoded signature decodes"), sig);
            let parts = Signature::from_parts(
                sig.base_len(),
                sig.block_len().trailing_zeros() as u8,
                sig.key_bits(),
                sig.keys().to_vec(),
            );
            assert_eq!(parts.expect("decoded parts are valid"), sig);
        }
        _ => {
            let Ok(ranges) = patch::decode_ranges(bytes, len) else { return };
            assert!(ranges.len() <= MAX_REFINE_RANGES);
            assert!(ranges.iter().all(|r| r.start < r.end && r.end <= len));
            let again = patch::decode_ranges(&patch::encode_ranges(&ranges), len).expect("re-encoded ranges decode");
            assert_eq!(again, ranges);
        }
    }
});

fn patch_roundtrip(bytes: &[u8], base_len: usize, max_len: usize) {
    let Ok(decoded) = patch::decode_patch(bytes, base_len, max_len) else { return };
    assert!(decoded.new_len as usize <= max_len);
    let mut total = 0u64;
    let mut literal = 0usize;
    for op in &decoded.ops {
        match *op {
            PatchOp::Copy { offset, len } => {
                assert!(len > 0 && offset + u64::from(len) <= base_len as u64, "copy inside the base");
                total += u64::from(len);
            }
            PatchOp::Literal { len } => {
                assert!(len > 0);
                total += u64::from(len);
                literal += len as usize;
            }
        }
    }
    assert_eq!(total, u64::from(decoded.new_len));
    assert_eq!(literal, decoded.literal_len);
    assert_eq!(decoded.literals.is_some(), literal > 0);
    let again = patch::encode_patch(decoded.new_len, &decoded.ops, decoded.literals);
    assert_eq!(patch::decode_patch(&again, base_len, max_len).expect("re-encoded patch decodes"), decoded);
}
