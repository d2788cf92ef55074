//! The one deterministic byte generator for data that must never change:
//! golden fixtures (chunk cut points and ids) and fuzz inputs, whose
//! meaning would drift with a generator that may change between crate
//! versions. Tests that only need random data use rand's `SmallRng`.

/// `len` pseudo-random bytes from `seed` (xorshift64*, the top byte of each
/// step): the same on every platform and in every version; a shorter run
/// is a prefix of a longer one. `chunk`'s golden test pins these bytes.
pub fn seeded(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.max(1);
    (0..len)
        .map(|_| {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            (state.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 56) as u8
        })
        .collect()
}
