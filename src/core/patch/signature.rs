//! The receiver's side: block length, key width and the signature of a base.

use super::{Signature, MAX_BASE_LEN, MAX_BLOCK_LEN, MAX_KEY_BITS, MIN_BLOCK_LEN};
use xfer_protocol::keys::{key_of, Roller};

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
    // block_len is a power of two below 2^14.
    let block_shift = block_len.trailing_zeros() as u8;
    Signature::from_parts(base_len, block_shift, key_bits, keys)
        .expect("invariant: block length and key width are chosen in range, one key per full block")
}
