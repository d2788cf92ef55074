//! Block keys of the delta formats (SPEC.md, "Block keys"): the rolling
//! hash a signature's keys are made with. Both ends must compute identical
//! keys: the receiver when it signs its base, the sender when it matches
//! new bytes against the signature at every offset.

/// Multiplier of the polynomial hash (odd, so every power is odd too).
const MUL: u64 = 0xd6e8_feb8_6659_fd93;

/// Finaliser multiplier, so the key's top bits depend on every input bit.
const MIX: u64 = 0x94d0_49bb_1331_11eb;

/// The splitmix64 finaliser that fills the byte table.
pub const fn splitmix64(seed: u64) -> u64 {
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
pub struct Roller {
    /// `BYTE_MAP[b] * MUL^block_len`: what the byte leaving the window contributes.
    leaving: [u64; 256],
}

impl Roller {
    /// A roller over windows of `block_len` bytes.
    pub fn new(block_len: usize) -> Self {
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
    #[inline]
    pub fn hash(window: &[u8]) -> u64 {
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

    /// The hash of the window one byte on: `out` leaves, `inp` enters.
    #[inline(always)]
    pub fn roll(&self, h: u64, out: u8, inp: u8) -> u64 {
        h.wrapping_mul(MUL).wrapping_add(BYTE_MAP[usize::from(inp)]).wrapping_sub(self.leaving[usize::from(out)])
    }
}

/// The key of a window hash: the top `bits` (16..=32) bits of the mixed hash.
#[inline(always)]
pub fn key_of(h: u64, bits: u8) -> u32 {
    let mixed = (h ^ (h >> 29)).wrapping_mul(MIX);
    // bits is 16..=32, so the shift is 32..=48 and the result fits u32.
    (mixed >> (64 - u32::from(bits))) as u32
}

/// The key of one block: `key_of(Roller::hash(block), bits)`.
pub fn block_key(block: &[u8], bits: u8) -> u32 {
    key_of(Roller::hash(block), bits)
}
