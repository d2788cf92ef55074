//! Packs: blob bodies (each zstd-compressed unless that does not make it
//! smaller), then a header listing them, its length and a magic.
//!
//! ```text
//! body*  entry{count}  u32 LE header length  "XFRPACK1"
//! entry: kind u8, compression u8, id [32], offset u64 LE, stored u32 LE, raw u32 LE
//! ```
//!
//! A pack is named by the BLAKE3 of all its bytes. The header sits at the
//! end so a writer streams bodies first; a reader reads the trailer, then
//! the header, and checks every offset and size against the pack's length
//! before it trusts any.

use super::{malformed, FormatError};
use crate::hash::ChunkId;

/// The last 8 bytes of every pack.
pub const PACK_MAGIC: [u8; 8] = *b"XFRPACK1";
/// Header length and magic.
pub const TRAILER_LEN: usize = 12;
/// Bytes of one header entry.
pub const ENTRY_LEN: usize = 50;
/// Largest blob (raw) a pack takes: a chunk is at most 4 MiB, a tree blob
/// is cut near 4 MiB but one huge file's chunk list may stand alone.
pub const MAX_BLOB: u32 = 64 << 20;
/// zstd level for blobs: cheap, and most of what a stronger level gains.
pub const ZSTD_LEVEL: i32 = 3;

/// What a blob holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BlobKind {
    /// A file chunk.
    Data,
    /// A directory tree blob.
    Tree,
}

/// How a blob's body is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Compression {
    /// As is.
    None,
    /// zstd.
    Zstd,
}

/// One blob of a pack.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PackEntry {
    /// What it holds.
    pub kind: BlobKind,
    /// BLAKE3 of its raw bytes.
    pub id: ChunkId,
    /// Where its body starts in the pack.
    pub offset: u64,
    /// Its body's length in the pack.
    pub stored: u32,
    /// Its length once decompressed.
    pub raw: u32,
    /// How the body is stored.
    pub compression: Compression,
}

impl PackEntry {
    /// The fixed-size encoding shared by pack headers and index files.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        out.push(match self.kind {
            BlobKind::Data => 0,
            BlobKind::Tree => 1,
        });
        out.push(match self.compression {
            Compression::None => 0,
            Compression::Zstd => 1,
        });
        out.extend_from_slice(&self.id.0);
        out.extend_from_slice(&self.offset.to_le_bytes());
        out.extend_from_slice(&self.stored.to_le_bytes());
        out.extend_from_slice(&self.raw.to_le_bytes());
    }

    /// Decodes one entry of exactly [`ENTRY_LEN`] bytes and checks its
    /// sizes on their own (callers check them against the pack).
    ///
    /// # Errors
    /// An unknown kind or compression, sizes that break the format.
    pub fn decode(bytes: &[u8], what: &'static str) -> Result<PackEntry, FormatError> {
        if bytes.len() != ENTRY_LEN {
            return Err(malformed(what, "entry of the wrong length"));
        }
        let kind = match bytes[0] {
            0 => BlobKind::Data,
            1 => BlobKind::Tree,
            other => return Err(malformed(what, format!("unknown blob kind {other}"))),
        };
        let compression = match bytes[1] {
            0 => Compression::None,
            1 => Compression::Zstd,
            other => return Err(malformed(what, format!("unknown compression {other}"))),
        };
        let mut id = [0u8; 32];
        id.copy_from_slice(&bytes[2..34]);
        let u32_at = |at: usize| u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
        let mut offset = [0u8; 8];
        offset.copy_from_slice(&bytes[34..42]);
        let entry = PackEntry {
            kind,
            id: ChunkId(id),
            offset: u64::from_le_bytes(offset),
            stored: u32_at(42),
            raw: u32_at(46),
            compression,
        };
        let sizes_ok = entry.raw <= MAX_BLOB
            && match compression {
                Compression::None => entry.stored == entry.raw,
                Compression::Zstd => entry.stored < entry.raw,
            };
        if !sizes_ok {
            return Err(malformed(what, format!("blob {} has impossible sizes", entry.id)));
        }
        Ok(entry)
    }

    /// Decodes this blob's `body` (its stored bytes) and checks it hashes
    /// to its id.
    ///
    /// # Errors
    /// A body of the wrong length, that does not decompress to `raw`
    /// bytes, or that hashes to another id.
    pub fn open(&self, body: &[u8]) -> Result<Vec<u8>, FormatError> {
        if body.len() != self.stored as usize {
            return Err(malformed("pack", format!("blob {} body has the wrong length", self.id)));
        }
        let raw = match self.compression {
            Compression::None => body.to_vec(),
            // The capacity bounds what a hostile body can make us allocate.
            Compression::Zstd => zstd::bulk::decompress(body, self.raw as usize)
                .map_err(|e| malformed("pack", format!("blob {} does not decompress: {e}", self.id)))?,
        };
        if raw.len() != self.raw as usize || ChunkId::of(&raw) != self.id {
            return Err(FormatError::Mismatch(self.id));
        }
        Ok(raw)
    }
}

/// A pack being filled, in memory (a pack is ~16 MiB).
#[derive(Debug, Default)]
pub struct PackBuilder {
    body: Vec<u8>,
    entries: Vec<PackEntry>,
}

impl PackBuilder {
    /// An empty pack.
    pub fn new() -> PackBuilder {
        PackBuilder::default()
    }

    /// Adds blob `raw` named `id` (the caller checked the name), compressed
    /// if that makes it smaller.
    ///
    /// # Errors
    /// A blob larger than [`MAX_BLOB`].
    pub fn add(&mut self, kind: BlobKind, id: ChunkId, raw: &[u8]) -> Result<PackEntry, FormatError> {
        let raw_len =
            u32::try_from(raw.len()).ok().filter(|&n| n <= MAX_BLOB).ok_or(FormatError::TooLarge(raw.len()))?;
        let offset = self.body.len() as u64;
        let compressed = zstd::bulk::compress(raw, ZSTD_LEVEL).ok().filter(|c| c.len() < raw.len());
        let (compression, stored) = match compressed {
            Some(c) => {
                self.body.extend_from_slice(&c);
                (Compression::Zstd, c.len())
            }
            None => {
                self.body.extend_from_slice(raw);
                (Compression::None, raw.len())
            }
        };
        let stored = u32::try_from(stored).map_err(|_| FormatError::TooLarge(stored))?;
        self.entries.push(PackEntry { kind, id, offset, stored, raw: raw_len, compression });
        Ok(*self.entries.last().expect("invariant: just pushed"))
    }

    /// The blob `id`'s entry and body, if this pack holds it.
    pub fn get(&self, id: &ChunkId) -> Option<(&PackEntry, &[u8])> {
        let entry = self.entries.iter().find(|e| e.id == *id)?;
        let start = usize::try_from(entry.offset).ok()?;
        Some((entry, self.body.get(start..start + entry.stored as usize)?))
    }

    /// Bytes of bodies so far.
    pub fn len(&self) -> usize {
        self.body.len()
    }

    /// Whether no blob was added.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The blobs so far.
    pub fn entries(&self) -> &[PackEntry] {
        &self.entries
    }

    /// The whole pack: bodies, header, trailer; and its entries.
    pub fn finish(mut self) -> (Vec<u8>, Vec<PackEntry>) {
        let header_start = self.body.len();
        for entry in &self.entries {
            entry.encode_into(&mut self.body);
        }
        let header_len = u32::try_from(self.body.len() - header_start).expect("invariant: a pack header fits u32");
        self.body.extend_from_slice(&header_len.to_le_bytes());
        self.body.extend_from_slice(&PACK_MAGIC);
        (self.body, self.entries)
    }
}

/// The header's length from a pack's last [`TRAILER_LEN`] bytes, checked
/// against the pack's length `pack_len`.
///
/// # Errors
/// No magic, or a header that cannot fit.
pub fn header_len(trailer: &[u8], pack_len: u64) -> Result<usize, FormatError> {
    if trailer.len() != TRAILER_LEN || pack_len < TRAILER_LEN as u64 {
        return Err(malformed("pack", "shorter than its trailer"));
    }
    if trailer[4..] != PACK_MAGIC {
        return Err(malformed("pack", "no pack magic at its end"));
    }
    let len = u32::from_le_bytes([trailer[0], trailer[1], trailer[2], trailer[3]]);
    if u64::from(len) > pack_len - TRAILER_LEN as u64 || len as usize % ENTRY_LEN != 0 {
        return Err(malformed("pack", format!("header length {len} does not fit a pack of {pack_len} bytes")));
    }
    Ok(len as usize)
}

/// The entries of a pack's `header` (as [`header_len`] sized it), each
/// checked to lie within the bodies of a pack of `pack_len` bytes.
///
/// # Errors
/// An entry that is malformed or reaches past the bodies.
pub fn decode_header(header: &[u8], pack_len: u64) -> Result<Vec<PackEntry>, FormatError> {
    let bodies = pack_len
        .checked_sub((header.len() + TRAILER_LEN) as u64)
        .ok_or_else(|| malformed("pack", "header longer than the pack"))?;
    if header.len() % ENTRY_LEN != 0 {
        return Err(malformed("pack", "header is not whole entries"));
    }
    header.chunks_exact(ENTRY_LEN).map(|bytes| check_entry(PackEntry::decode(bytes, "pack")?, bodies, "pack")).collect()
}

/// `entry`, if its body lies within the first `bodies` bytes of its pack.
///
/// # Errors
/// A body reaching past them.
pub fn check_entry(entry: PackEntry, bodies: u64, what: &'static str) -> Result<PackEntry, FormatError> {
    match entry.offset.checked_add(u64::from(entry.stored)) {
        Some(end) if end <= bodies => Ok(entry),
        _ => Err(malformed(what, format!("blob {} reaches past the pack's bodies", entry.id))),
    }
}

/// Decodes a whole pack held in memory: its entries, each checked.
///
/// # Errors
/// As [`header_len`] and [`decode_header`].
pub fn decode_pack(pack: &[u8]) -> Result<Vec<PackEntry>, FormatError> {
    let len = pack.len() as u64;
    let trailer = pack.get(pack.len().saturating_sub(TRAILER_LEN)..).unwrap_or(&[]);
    let header = header_len(trailer, len)?;
    let start = pack.len() - TRAILER_LEN - header;
    decode_header(&pack[start..pack.len() - TRAILER_LEN], len)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn blob(seed: u64, len: usize, compressible: bool) -> Vec<u8> {
        if compressible {
            vec![(seed % 251) as u8; len]
        } else {
            crate::fixture::seeded(len, seed)
        }
    }

    proptest! {
        #[test]
        fn packs_roundtrip(blobs in prop::collection::vec((any::<u64>(), 0usize..5000, any::<bool>(), any::<bool>()), 0..20)) {
            let mut builder = PackBuilder::new();
            let mut raws = Vec::new();
            for (seed, len, compressible, tree) in &blobs {
                let raw = blob(*seed, *len, *compressible);
                let kind = if *tree { BlobKind::Tree } else { BlobKind::Data };
                builder.add(kind, ChunkId::of(&raw), &raw).unwrap();
                raws.push(raw);
            }
            let (bytes, entries) = builder.finish();
            let decoded = decode_pack(&bytes).unwrap();
            prop_assert_eq!(&decoded, &entries);
            for (entry, raw) in decoded.iter().zip(&raws) {
                let body = &bytes[entry.offset as usize..entry.offset as usize + entry.stored as usize];
                prop_assert_eq!(&entry.open(body).unwrap(), raw);
            }
        }

        #[test]
        fn damaged_packs_are_errors_not_panics(cut in 0usize..400, flip in 0usize..400) {
            let mut builder = PackBuilder::new();
            builder.add(BlobKind::Data, ChunkId::of(b"one"), b"one").unwrap();
            let raw = vec![9u8; 100];
            builder.add(BlobKind::Tree, ChunkId::of(&raw), &raw).unwrap();
            let (bytes, _) = builder.finish();
            let truncated = &bytes[..cut.min(bytes.len() - 1)];
            prop_assert!(decode_pack(truncated).is_err());
            let mut flipped = bytes.clone();
            let at = flip % flipped.len();
            flipped[at] ^= 0x40;
            // Either refused, or every blob still opens to verified bytes or fails.
            if let Ok(entries) = decode_pack(&flipped) {
                for e in entries {
                    let body = &flipped[e.offset as usize..e.offset as usize + e.stored as usize];
                    if let Ok(raw) = e.open(body) {
                        prop_assert_eq!(ChunkId::of(&raw), e.id);
                    }
                }
            }
        }
    }

    #[test]
    fn compresses_only_when_smaller() {
        let mut builder = PackBuilder::new();
        let zeros = vec![0u8; 10_000];
        let noise = crate::fixture::seeded(10_000, 7);
        assert_eq!(builder.add(BlobKind::Data, ChunkId::of(&zeros), &zeros).unwrap().compression, Compression::Zstd);
        assert_eq!(builder.add(BlobKind::Data, ChunkId::of(&noise), &noise).unwrap().compression, Compression::None);
        assert!(builder.len() < 10_000 + 200);
    }

    #[test]
    fn a_wrong_body_is_a_mismatch() {
        let mut builder = PackBuilder::new();
        builder.add(BlobKind::Data, ChunkId::of(b"abc"), b"abc").unwrap();
        let (mut bytes, entries) = builder.finish();
        bytes[0] = b'x';
        assert!(matches!(entries[0].open(&bytes[..3]), Err(FormatError::Mismatch(_))));
        // A header entry pointing past the bodies is refused.
        let mut bad = entries[0];
        bad.offset = 10;
        assert!(check_entry(bad, 3, "pack").is_err());
    }
}
