//! Fuzz target: the core's delta algorithms (`xfer_core::patch`) behind the
//! protocol's delta formats, each fed hostile bytes the way a peer could:
//!
//! - mode 0: `patch::apply` (receiver, delta payload) against a base from
//!   the input, with a fixed output limit;
//! - mode 1: `Signature::decode` (sender, `NeedChunk.signature`), then
//!   `diff` of new bytes against it, `gaps` and the refinement request
//!   (`encode_ranges` / `decode_ranges`) the sender would build from it;
//! - mode 2: `decode_ranges` (receiver, `RefineRequest.ranges`) and
//!   `fine_signatures` over a base from the input;
//! - mode 3: not hostile, a roundtrip: `apply(encode_patch(diff(signature(base), new)), base)`
//!   rebuilds `new`, except where a block key collides (see below).
//!
//! Input: `mode: u8`, `split: u16 LE`, then bytes cut at `split` (clamped)
//! into a first and a second part.
#![no_main]

use libfuzzer_sys::fuzz_target;
use xfer_core::patch::{self, Piece, Signature};

/// Output limit for `apply`: small enough to keep executions fast, large
/// enough to need multi-byte varints.
const MAX_LEN: usize = 64 * 1024;

fuzz_target!(|data: &[u8]| {
    let Some((head, rest)) = data.split_first_chunk::<3>() else { return };
    let split = usize::from(u16::from_le_bytes([head[1], head[2]])).min(rest.len());
    let (first, second) = rest.split_at(split);
    match head[0] % 4 {
        0 => {
            // first: base, second: encoded patch.
            if let Ok(out) = patch::apply(second, first, MAX_LEN) {
                assert!(out.len() <= MAX_LEN);
            }
        }
        1 => {
            // first: encoded signature, second: new bytes.
            let Ok(sig) = Signature::decode(first) else { return };
            assert_eq!(Signature::decode(&sig.encode()).expect("re-encoded signature decodes"), sig);
            let p = patch::diff(&sig, second);
            assert_eq!(p.new_len() as usize, second.len());
            let gaps = patch::gaps(&p, &sig);
            let request = patch::encode_ranges(&gaps);
            let ranges = patch::decode_ranges(&request, sig.base_len()).expect("own request decodes");
            assert!(ranges.iter().eq(gaps.iter().map(|g| &g.base)));
        }
        2 => {
            // first: encoded ranges, second: base.
            let base_len = u32::try_from(second.len()).unwrap_or(u32::MAX);
            if let Ok(ranges) = patch::decode_ranges(first, base_len) {
                assert!(ranges.len() <= patch::MAX_REFINE_RANGES);
                let sigs = patch::fine_signatures(second, &ranges);
                assert_eq!(sigs.len(), ranges.len());
            }
        }
        _ => {
            // first: base, second: new bytes.
            let sig = patch::signature(first);
            let p = patch::diff(&sig, second);
            let encoded = patch::encode_patch(&p, second);
            let out = patch::apply(&encoded, first, second.len()).expect("own patch applies");
            assert_eq!(out.len(), second.len());
            // Copied blocks may differ: a key collision (a false match, by
            // design at 2^-key_bits per predicted block) that the caller's
            // chunk-id check catches (`codec::decode`'s HashMismatch, then a
            // resend without base). Literals may then differ too: they can
            // be compressed with the copied bytes as zstd dictionary, which
            // the decoder takes from the base. With true matches only, the
            // new bytes come back exactly.
            let block = sig.block_len();
            let mut at = 0usize;
            let mut true_matches = true;
            for op in p.pieces() {
                match op {
                    Piece::Literal(r) => at = r.end as usize,
                    Piece::Copy { offset, len } => {
                        assert!(offset % block == 0 && len % block == 0 && *len > 0);
                        assert!(u64::from(*offset) + u64::from(*len) <= u64::from(sig.base_len()));
                        let (offset, len) = (*offset as usize, *len as usize);
                        true_matches &= first[offset..offset + len] == second[at..at + len];
                        at += len;
                    }
                }
            }
            if true_matches {
                assert!(out == second, "a patch of true matches rebuilt other bytes");
            }
        }
    }
});
