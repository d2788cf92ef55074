//! Index files: which blobs which packs hold, so opening a store reads
//! these instead of every pack's header.
//!
//! ```text
//! "XFRIDX01"  u32 LE pack count
//! per pack:   id [32]  u64 LE pack length  u32 LE entry count  entry*  (pack.rs entries)
//! BLAKE3 of all the bytes before [32]
//! ```
//!
//! Several index files may name the same blob (a crash between writing
//! a new index and removing the old ones): readers take any.

use super::pack::{check_entry, PackEntry, ENTRY_LEN, TRAILER_LEN};
use super::{malformed, FormatError};

/// The first 8 bytes of every index file.
pub const INDEX_MAGIC: [u8; 8] = *b"XFRIDX01";

/// One pack as an index lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IndexedPack {
    /// BLAKE3 of the pack's bytes: its file name.
    pub id: [u8; 32],
    /// The pack's length in bytes.
    pub len: u64,
    /// Its blobs.
    pub entries: Vec<PackEntry>,
}

/// Encodes `packs` as an index file.
pub fn encode(packs: &[IndexedPack]) -> Vec<u8> {
    let entries: usize = packs.iter().map(|p| p.entries.len()).sum();
    let mut out = Vec::with_capacity(12 + packs.len() * 44 + entries * ENTRY_LEN + 32);
    out.extend_from_slice(&INDEX_MAGIC);
    out.extend_from_slice(&u32::try_from(packs.len()).expect("invariant: fewer than 2^32 packs").to_le_bytes());
    for pack in packs {
        out.extend_from_slice(&pack.id);
        out.extend_from_slice(&pack.len.to_le_bytes());
        let count = u32::try_from(pack.entries.len()).expect("invariant: fewer than 2^32 blobs in a pack");
        out.extend_from_slice(&count.to_le_bytes());
        for entry in &pack.entries {
            entry.encode_into(&mut out);
        }
    }
    let sum = blake3::hash(&out);
    out.extend_from_slice(sum.as_bytes());
    out
}

struct Cursor<'a> {
    bytes: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], FormatError> {
        if n > self.bytes.len() {
            return Err(malformed("index", "ends early"));
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }

    fn u32(&mut self) -> Result<u32, FormatError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self) -> Result<u64, FormatError> {
        let mut b = [0u8; 8];
        b.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(b))
    }
}

/// What [`visit`] hands out, in file order: a pack, then its entries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Item {
    /// A pack, with the number of entries that follow.
    Pack {
        /// Its id.
        id: [u8; 32],
        /// Its length.
        len: u64,
        /// Entries that follow.
        entries: usize,
    },
    /// One blob of the last pack.
    Entry(PackEntry),
}

/// Decodes an index file without building it in memory, handing each
/// item to `each`: the checksum is checked first, every count against
/// the bytes present, every entry against its pack's length.
///
/// # Errors
/// A wrong magic or checksum, counts or entries that do not fit; what
/// `each` returns.
pub fn visit<E: From<FormatError>>(bytes: &[u8], mut each: impl FnMut(Item) -> Result<(), E>) -> Result<(), E> {
    let body_len = bytes.len().checked_sub(32).ok_or_else(|| malformed("index", "shorter than its checksum"))?;
    let (body, sum) = bytes.split_at(body_len);
    if blake3::hash(body).as_bytes() != sum {
        return Err(malformed("index", "checksum does not match (damaged)").into());
    }
    let mut cursor = Cursor { bytes: body };
    if cursor.take(8)? != INDEX_MAGIC {
        return Err(malformed("index", "no index magic").into());
    }
    let count = cursor.u32()? as usize;
    if count > cursor.bytes.len() / 44 {
        return Err(malformed("index", format!("{count} packs cannot fit")).into());
    }
    for _ in 0..count {
        let mut id = [0u8; 32];
        id.copy_from_slice(cursor.take(32)?);
        let len = cursor.u64()?;
        let entries = cursor.u32()? as usize;
        if entries > cursor.bytes.len() / ENTRY_LEN {
            return Err(malformed("index", format!("{entries} entries cannot fit")).into());
        }
        each(Item::Pack { id, len, entries })?;
        let bodies = len.saturating_sub(TRAILER_LEN as u64 + (entries * ENTRY_LEN) as u64);
        for raw in cursor.take(entries * ENTRY_LEN)?.chunks_exact(ENTRY_LEN) {
            each(Item::Entry(check_entry(PackEntry::decode(raw, "index")?, bodies, "index")?))?;
        }
    }
    if !cursor.bytes.is_empty() {
        return Err(malformed("index", "trailing bytes").into());
    }
    Ok(())
}

/// Decodes a whole index file (see [`visit`]).
///
/// # Errors
/// As [`visit`].
pub fn decode(bytes: &[u8]) -> Result<Vec<IndexedPack>, FormatError> {
    let mut packs: Vec<IndexedPack> = Vec::new();
    visit(bytes, |item| {
        match item {
            Item::Pack { id, len, entries } => {
                packs.push(IndexedPack { id, len, entries: Vec::with_capacity(entries) })
            }
            Item::Entry(entry) => {
                packs.last_mut().expect("invariant: a pack comes before its entries").entries.push(entry)
            }
        }
        Ok::<(), FormatError>(())
    })?;
    Ok(packs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::pack::{BlobKind, PackBuilder};
    use proptest::prelude::*;

    fn pack(seed: u64, blobs: usize) -> IndexedPack {
        let mut builder = PackBuilder::new();
        for i in 0..blobs {
            let raw = crate::fixture::seeded(100 + i, seed + i as u64);
            builder.add(BlobKind::Data, crate::hash::ChunkId::of(&raw), &raw).unwrap();
        }
        let (bytes, entries) = builder.finish();
        IndexedPack { id: *blake3::hash(&bytes).as_bytes(), len: bytes.len() as u64, entries }
    }

    proptest! {
        #[test]
        fn indexes_roundtrip(sizes in prop::collection::vec(0usize..30, 0..8)) {
            let packs: Vec<_> = sizes.iter().enumerate().map(|(i, &n)| pack(i as u64 * 1000 + 1, n)).collect();
            let bytes = encode(&packs);
            prop_assert_eq!(decode(&bytes).unwrap(), packs);
            for cut in 0..bytes.len() {
                prop_assert!(decode(&bytes[..cut]).is_err());
            }
        }
    }

    #[test]
    fn damage_and_lies_are_refused() {
        let bytes = encode(&[pack(1, 3)]);
        let mut flipped = bytes.clone();
        flipped[20] ^= 1;
        assert!(decode(&flipped).is_err());
        // A huge count with a valid checksum is refused before allocating.
        let mut body = INDEX_MAGIC.to_vec();
        body.extend_from_slice(&u32::MAX.to_le_bytes());
        let sum = *blake3::hash(&body).as_bytes();
        body.extend_from_slice(&sum);
        assert!(decode(&body).is_err());
        // An entry past the pack's stated length is refused.
        let mut lying = pack(2, 2);
        lying.len = 20;
        assert!(decode(&encode(&[lying])).is_err());
    }
}
