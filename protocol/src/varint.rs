//! Unsigned LEB128 varints and zigzag, as the patch, signature and range
//! formats use them (SPEC.md, "Delta formats"). Message bodies get the same
//! encoding from postcard.

/// Why a varint did not decode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VarintError {
    /// The input ended before the last byte (high bit clear).
    Truncated,
    /// The value does not fit 64 bits.
    Overflow,
}

/// Appends `v` in its shortest form: 7 bits a byte, least significant
/// first, the high bit set on every byte but the last.
pub fn put(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// The varint at `bytes[*pos..]`, advancing `pos` past it. At most 10
/// bytes; longer than shortest forms are accepted while they fit.
pub fn get(bytes: &[u8], pos: &mut usize) -> Result<u64, VarintError> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *bytes.get(*pos).ok_or(VarintError::Truncated)?;
        *pos += 1;
        let bits = u64::from(b & 0x7f);
        if shift == 63 && bits > 1 {
            return Err(VarintError::Overflow);
        }
        v |= bits << shift;
        if b & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err(VarintError::Overflow)
}

/// Signed to unsigned: 0, -1, 1, -2 ... become 0, 1, 2, 3 ...
pub fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

/// The inverse of [`zigzag`].
pub fn unzigzag(v: u64) -> i64 {
    (v >> 1) as i64 ^ -((v & 1) as i64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn known_bytes() {
        let enc = |v| {
            let mut out = Vec::new();
            put(&mut out, v);
            out
        };
        assert_eq!(enc(0), [0]);
        assert_eq!(enc(127), [0x7f]);
        assert_eq!(enc(128), [0x80, 0x01]);
        assert_eq!(enc(300), [0xac, 0x02]);
        assert_eq!(enc(u64::MAX), [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]);
        assert_eq!(get(&[0xff; 10], &mut 0), Err(VarintError::Overflow));
        assert_eq!(get(&[0x80], &mut 0), Err(VarintError::Truncated));
        assert_eq!([zigzag(0), zigzag(-1), zigzag(1), zigzag(-2)], [0, 1, 2, 3]);
    }

    proptest! {
        #[test]
        fn roundtrip_matches_postcard(v in any::<u64>(), s in any::<i64>()) {
            let mut out = Vec::new();
            put(&mut out, v);
            prop_assert_eq!(&out, &postcard::to_stdvec(&v).unwrap());
            let mut pos = 0;
            prop_assert_eq!(get(&out, &mut pos), Ok(v));
            prop_assert_eq!(pos, out.len());
            prop_assert_eq!(unzigzag(zigzag(s)), s);
            let mut z = Vec::new();
            put(&mut z, zigzag(s));
            prop_assert_eq!(postcard::to_stdvec(&s).unwrap(), z);
        }
    }
}
