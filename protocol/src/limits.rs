//! Hard limits a decoder enforces; SPEC.md ("Limits") is normative.
//!
//! The per-message counts are chosen so that any message within them fits
//! in one frame of [`MAX_FRAME_LEN`] (checked by a unit test below), so a
//! sender that splits by count never has to measure bytes.

/// Largest chunk, in bytes: 4 MiB. Equals `xfer::chunk::MAX_CHUNK_LEN`.
pub const MAX_CHUNK_LEN: u32 = 4 * 1024 * 1024;

/// Largest `ChunkData` payload: a chunk plus room for codec overhead
/// (a delta's op list, a zstd frame header on incompressible data).
pub const MAX_PAYLOAD_LEN: u32 = MAX_CHUNK_LEN + 32 * 1024;

/// Largest frame, counted after the length field (kind byte + body):
/// 4 MiB + 64 KiB, a chunk plus headers.
pub const MAX_FRAME_LEN: u32 = MAX_CHUNK_LEN + 64 * 1024;

/// Largest window a frame of the zstd stream codec may ask for: 2^22 bytes
/// (4 MiB). A receiver holds one window per data stream that carries the
/// codec, so this bounds its memory at [`MAX_ZSTD_STREAMS`] windows.
pub const MAX_ZSTD_STREAM_WINDOW_LOG: u32 = 22;

/// Most data streams of one session that may carry [`CODEC_ZSTD_STREAM`](crate::codec::CODEC_ZSTD_STREAM)
/// chunks (each costs the receiver a decoder and its window).
pub const MAX_ZSTD_STREAMS: usize = 4;

/// Longest path (relative, `/`-separated raw bytes), as Linux `PATH_MAX`.
/// Also bounds a symlink target.
pub const MAX_PATH_LEN: usize = 4096;

/// Longest single name in a listing, as Linux `NAME_MAX`.
pub const MAX_NAME_LEN: usize = 255;

/// Longest human-readable text (`Hello.agent`, `Error.message`,
/// `FileFailed.message`), in bytes of UTF-8.
pub const MAX_TEXT_LEN: usize = 4096;

/// Most chunk ids in one `HasChunks` (and so bits in one `Have`).
pub const MAX_IDS_PER_BATCH: usize = 4096;

/// Most children in one `Listing`; larger directories span several
/// `Listing` messages with `more` set on all but the last.
pub const MAX_CHILDREN_PER_LISTING: usize = 8192;

/// Most paths in one `GetFiles` and most records in one `FileInfos`.
pub const MAX_FILES_PER_MESSAGE: usize = 256;

/// Most chunk-list items in one message: [`ChunkRef`](crate::msg::ChunkRef)s
/// plus [`ListEdit`](crate::msg::ListEdit)s, summed over the whole message.
/// Longer lists continue in further messages (`WriteFile.more`,
/// `MoreChunks`, `FileInfo.continued`).
pub const MAX_CHUNK_REFS_PER_MESSAGE: usize = 65536;

/// Largest encoded signature in `NeedChunk`, and largest sum of the
/// signatures in one `FineSignatures`: a base of 8 MiB in 64-byte blocks
/// with 32-bit keys (512 KiB) plus a header.
pub const MAX_SIGNATURE_LEN: usize = 512 * 1024 + 16;

/// Most fine signatures in one `FineSignatures` (one per refinement range,
/// [`patch::MAX_REFINE_RANGES`](crate::patch::MAX_REFINE_RANGES)).
pub const MAX_FINE_SIGNATURES: usize = 64;

/// Largest encoded range list in one `RefineRequest` (64 ranges of two
/// varints each, with room to spare).
pub const MAX_RANGES_LEN: usize = 1024;

/// Most tags in one `Open`.
pub const MAX_TAGS: usize = 16;

/// Longest tag key or value.
pub const MAX_TAG_LEN: usize = 128;

/// Longest snapshot selector in `Open.at` (`latest`, an id or its
/// prefix, a time).
pub const MAX_SELECTOR_LEN: usize = 128;

/// Longest source host name in `Open.source_host` and in a snapshot
/// record; also bounds a record's `client`.
pub const MAX_HOST_LEN: usize = 255;

/// Most snapshot ids one `Open` may forget.
pub const MAX_FORGET_IDS: usize = 1024;

/// Most snapshot records in one `SnapshotList`.
pub const MAX_SNAPSHOTS_PER_MESSAGE: usize = 64;

/// Longest user or group name carried with an entry.
pub const MAX_OWNER_NAME_LEN: usize = 255;

/// Most extended attributes of one entry.
pub const MAX_XATTRS: usize = 256;

/// Longest extended attribute name, as Linux `XATTR_NAME_MAX`.
pub const MAX_XATTR_NAME_LEN: usize = 255;

/// Largest extended attribute value, as Linux `XATTR_SIZE_MAX`.
pub const MAX_XATTR_VALUE_LEN: usize = 64 * 1024;

/// Most bytes of names and values of one entry's extended attributes
/// together.
pub const MAX_XATTR_BYTES: usize = 256 * 1024;

#[cfg(test)]
mod tests {
    use super::*;

    /// Worst-case encoded sizes, in bytes, with postcard's varints at their
    /// longest (5 bytes for u32/usize counts below 2^32, 10 for u64).
    const VAR32: usize = 5;
    const VAR64: usize = 10;
    const HEADER: usize = 1; // kind byte; the length field is not counted
    const PATH: usize = VAR32 + MAX_PATH_LEN;
    const REF: usize = 32 + VAR32;
    const PARAMS: usize = 3 * VAR32;
    const MTIME: usize = VAR64 + VAR32;
    /// Worst-case `Attrs`: the byte total bounds names and values, each
    /// attribute adds two length prefixes.
    const ATTRS: usize =
        2 * VAR32 + 2 * (VAR32 + MAX_OWNER_NAME_LEN) + VAR32 + MAX_XATTRS * 2 * VAR32 + MAX_XATTR_BYTES;

    #[test]
    fn limits_fit_a_frame() {
        let max = MAX_FRAME_LEN as usize;
        let listing = HEADER + PATH + VAR32 + MAX_CHILDREN_PER_LISTING * (VAR32 + MAX_NAME_LEN + 32 + 1) + 1;
        assert!(listing <= max, "listing {listing}");
        let get_files = HEADER + VAR32 + MAX_FILES_PER_MESSAGE * PATH;
        assert!(get_files <= max, "get_files {get_files}");
        let file_info = PATH + VAR64 + 32 + PARAMS + VAR32 + 1;
        let file_infos = HEADER + VAR32 + MAX_FILES_PER_MESSAGE * file_info + MAX_CHUNK_REFS_PER_MESSAGE * REF + 1;
        assert!(file_infos <= max, "file_infos {file_infos}");
        // An edit list: each item is at most a Keep (tag + 2 varints) or a
        // ref inside a New (counted once as an item, once as a ref, with its
        // own tag and count).
        let item = (1 + 2 * VAR32).max(REF + 1 + VAR32);
        let write_file = HEADER
            + 2 * VAR32
            + PATH
            + MTIME
            + VAR64
            + 32
            + PARAMS
            + 1
            + VAR32
            + MAX_CHUNK_REFS_PER_MESSAGE * item
            + 1
            + ATTRS;
        assert!(write_file <= max, "write_file {write_file}");
        let chunk_data = HEADER + 2 * VAR32 + 1 + VAR32 + VAR32 + MAX_PAYLOAD_LEN as usize;
        assert!(chunk_data <= max, "chunk_data {chunk_data}");
        let need = HEADER + 2 * VAR32 + 1 + VAR32 + MAX_SIGNATURE_LEN;
        assert!(need <= max, "need {need}");
        let fine = HEADER + 2 * VAR32 + VAR32 + MAX_FINE_SIGNATURES * VAR32 + MAX_SIGNATURE_LEN;
        assert!(fine <= max, "fine {fine}");
        let has = HEADER + VAR32 + MAX_IDS_PER_BATCH * 32;
        assert!(has <= max, "has {has}");
        let symlink = HEADER + 2 * PATH + MTIME + ATTRS;
        assert!(symlink <= max, "symlink {symlink}");
        let tags = VAR32 + MAX_TAGS * 2 * (VAR32 + MAX_TAG_LEN);
        let open =
            HEADER + 1 + PATH + 2 + 33 + tags + 1 + VAR32 + MAX_SELECTOR_LEN + 2 * PATH + VAR32 + MAX_FORGET_IDS * 32;
        assert!(open <= max, "open {open}");
        let record = 32 + VAR64 + VAR32 + 2 * PATH + 2 * (VAR32 + MAX_HOST_LEN) + tags + 1 + 3 * VAR64 + 32;
        let list = HEADER + VAR32 + MAX_SNAPSHOTS_PER_MESSAGE * record + 1;
        assert!(list <= max, "snapshot list {list}");
    }
}
