//! Conversions between the core's types and the protocol's message fields.
//! Everything from the wire is validated here before the core sees it.

use thiserror::Error;
use xfer_protocol::msg;

use crate::chunk::{ChunkParams, ChunkRef, FileDigest, ParamsError};
use crate::hash::{ChunkId, FileHash, TreeHash};
use crate::manifest::{ChildDigest, Meta, Mtime, Xattr};
use crate::plan::{apply_list_edit, wire_chunk_list, ListEdit};

/// Longest chunk list of one file a receiver takes: about 1 TiB at the
/// chunk sizes xfer cuts big files with (1 MiB on average). A file's list
/// is held in memory while it is received, so a longer one is refused
/// before it is built.
pub const MAX_FILE_CHUNKS: usize = 1 << 20;

/// Why a message field was refused.
#[derive(Debug, Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum WireError {
    /// Chunk parameters that xfer would never cut with.
    #[error(transparent)]
    Params(#[from] ParamsError),
    /// A chunk list that does not rebuild against the receiver's old list.
    #[error("chunk list edit points outside the receiver's list of {old_len} chunks")]
    EditOutOfRange {
        /// Length of the receiver's old list.
        old_len: usize,
    },
    /// A chunk list whose lengths do not add up to the file size, or break
    /// the file's chunk parameters.
    #[error("chunk list of {chunks} chunks does not describe a file of {size} bytes")]
    Inconsistent {
        /// Declared file size.
        size: u64,
        /// Number of chunks.
        chunks: usize,
    },
    /// A time with nanoseconds out of range.
    #[error("mtime nanoseconds {0} out of range")]
    Nanos(u32),
    /// Mode bits beyond permissions, setuid, setgid and sticky.
    #[error("mode {0:#o} has bits beyond 0o7777")]
    Mode(u32),
    /// A chunk list longer than [`MAX_FILE_CHUNKS`].
    #[error("chunk list of {chunks} chunks is over the limit of {max} for one file")]
    TooManyChunks {
        /// Its length.
        chunks: u64,
        /// The limit.
        max: usize,
    },
}

/// The protocol form of chunk parameters.
pub fn params_to_wire(params: ChunkParams) -> msg::ChunkParams {
    msg::ChunkParams { min: params.min(), avg: params.avg(), max: params.max() }
}

/// Validated chunk parameters from the wire.
///
/// # Errors
/// [`WireError::Params`] unless they are powers of two within xfer's bounds.
pub fn params_from_wire(params: msg::ChunkParams) -> Result<ChunkParams, WireError> {
    Ok(ChunkParams::new(params.min, params.avg, params.max)?)
}

/// The protocol form of a chunk reference.
pub fn chunk_to_wire(chunk: &ChunkRef) -> msg::ChunkRef {
    msg::ChunkRef { id: chunk.id.0, len: chunk.len }
}

/// A chunk reference from the wire (its length is checked with the list).
pub fn chunk_from_wire(chunk: &msg::ChunkRef) -> ChunkRef {
    ChunkRef { id: ChunkId(chunk.id), len: chunk.len }
}

/// The protocol form of an mtime.
pub fn mtime_to_wire(mtime: Mtime) -> msg::Mtime {
    msg::Mtime { secs: mtime.secs, nanos: mtime.nanos }
}

/// An mtime from the wire.
///
/// # Errors
/// [`WireError::Nanos`] for nanoseconds of a second or more.
pub fn mtime_from_wire(mtime: msg::Mtime) -> Result<Mtime, WireError> {
    if mtime.nanos >= 1_000_000_000 {
        return Err(WireError::Nanos(mtime.nanos));
    }
    Ok(Mtime { secs: mtime.secs, nanos: mtime.nanos })
}

/// The protocol form of an entry's owner, group and xattrs.
pub fn attrs_to_wire(meta: &Meta) -> msg::Attrs {
    msg::Attrs {
        uid: meta.uid,
        gid: meta.gid,
        user: meta.user.clone(),
        group: meta.group.clone(),
        xattrs: meta.xattrs.iter().map(|x| msg::Xattr { name: x.name.clone(), value: x.value.clone() }).collect(),
    }
}

/// An entry's metadata from the wire (the decoder checked the xattrs'
/// sizes, order and names).
///
/// # Errors
/// [`WireError::Nanos`] for a bad mtime, [`WireError::Mode`] for mode bits
/// beyond `0o7777`.
pub fn meta_from_wire(mode: u32, mtime: msg::Mtime, attrs: msg::Attrs) -> Result<Meta, WireError> {
    if mode > 0o7777 {
        return Err(WireError::Mode(mode));
    }
    Ok(Meta {
        mode,
        mtime: mtime_from_wire(mtime)?,
        uid: attrs.uid,
        gid: attrs.gid,
        user: attrs.user,
        group: attrs.group,
        xattrs: attrs.xattrs.into_iter().map(|x| Xattr { name: x.name, value: x.value }).collect(),
    })
}

/// Bytes an entry's metadata holds beyond its fixed fields: what a queue of
/// entry changes is bounded by.
pub fn meta_heap_bytes(meta: &Meta) -> usize {
    meta.user.len() + meta.group.len() + meta.xattrs.iter().map(|x| x.name.len() + x.value.len() + 48).sum::<usize>()
}

/// The protocol form of a directory child.
pub fn child_to_wire(child: &ChildDigest) -> msg::ChildDigest {
    msg::ChildDigest { name: child.name.clone(), digest: child.digest.0, is_dir: child.is_dir }
}

/// A directory child from the wire (its name is validated where it is joined
/// to a path).
pub fn child_from_wire(child: &msg::ChildDigest) -> ChildDigest {
    ChildDigest { name: child.name.clone(), digest: TreeHash(child.digest), is_dir: child.is_dir }
}

/// How a changed file's chunk list goes on the wire, given the receiver's
/// old list for the same path: implied by the file hash, as edits, or whole
/// when edits would not be shorter.
pub fn chunk_list_to_wire(old: &[ChunkRef], new: &FileDigest) -> msg::ChunkList {
    match wire_chunk_list(old, new) {
        None => msg::ChunkList::Implied,
        Some(_) if old.is_empty() => msg::ChunkList::Full(new.chunks.iter().map(chunk_to_wire).collect()),
        Some(edits) => msg::ChunkList::Edit(
            edits
                .iter()
                .map(|edit| match edit {
                    ListEdit::Keep { from, count } => msg::ListEdit::Keep { from: *from, count: *count },
                    ListEdit::New(chunks) => msg::ListEdit::New(chunks.iter().map(chunk_to_wire).collect()),
                })
                .collect(),
        ),
    }
}

/// Rebuilds and checks a file's digest from a `WriteFile`'s fields against
/// the receiver's `old` list of the same path.
///
/// # Errors
/// [`WireError`] for bad parameters, edits outside `old`, or a list that
/// does not add up to `size` within the parameters' maximum chunk length.
pub fn digest_from_wire(
    size: u64,
    hash: [u8; 32],
    params: msg::ChunkParams,
    list: &msg::ChunkList,
    old: &[ChunkRef],
) -> Result<FileDigest, WireError> {
    let params = params_from_wire(params)?;
    // Counted before the list is built: `Keep` edits may name the same old
    // chunks again and again, so a small message could describe a huge list.
    let planned = match list {
        msg::ChunkList::Implied => 1,
        msg::ChunkList::Full(chunks) => chunks.len() as u64,
        msg::ChunkList::Edit(edits) => {
            let mut planned = 0u64;
            for edit in edits {
                planned += match edit {
                    msg::ListEdit::Keep { from, count } if u64::from(*from) + u64::from(*count) > old.len() as u64 => {
                        return Err(WireError::EditOutOfRange { old_len: old.len() })
                    }
                    msg::ListEdit::Keep { count, .. } => u64::from(*count),
                    msg::ListEdit::New(chunks) => chunks.len() as u64,
                };
            }
            planned
        }
    };
    check_chunk_count(planned, size, params)?;
    let chunks = match list {
        msg::ChunkList::Implied if size == 0 => Vec::new(),
        msg::ChunkList::Implied => vec![ChunkRef { id: ChunkId(hash), len: u32::try_from(size).unwrap_or(u32::MAX) }],
        msg::ChunkList::Full(chunks) => chunks.iter().map(chunk_from_wire).collect(),
        msg::ChunkList::Edit(edits) => {
            let edits: Vec<ListEdit> = edits
                .iter()
                .map(|edit| match edit {
                    msg::ListEdit::Keep { from, count } => ListEdit::Keep { from: *from, count: *count },
                    msg::ListEdit::New(chunks) => ListEdit::New(chunks.iter().map(chunk_from_wire).collect()),
                })
                .collect();
            apply_list_edit(old, &edits).ok_or(WireError::EditOutOfRange { old_len: old.len() })?
        }
    };
    let total: u64 = chunks.iter().map(|c| u64::from(c.len)).sum();
    if total != size || chunks.iter().any(|c| c.len == 0 || c.len > params.max()) {
        return Err(WireError::Inconsistent { size, chunks: chunks.len() });
    }
    Ok(FileDigest { size, hash: FileHash(hash), params, chunks })
}

/// Whether a file of `size` bytes cut with `params` can have `chunks`
/// chunks: at most [`MAX_FILE_CHUNKS`], and no more than the size allows
/// (FastCDC cuts no chunk below the minimum but a file's last).
///
/// # Errors
/// [`WireError::TooManyChunks`] over the limit, [`WireError::Inconsistent`]
/// for more chunks than the size holds.
pub fn check_chunk_count(chunks: u64, size: u64, params: ChunkParams) -> Result<(), WireError> {
    if chunks > MAX_FILE_CHUNKS as u64 {
        return Err(WireError::TooManyChunks { chunks, max: MAX_FILE_CHUNKS });
    }
    if chunks > size / u64::from(params.min()) + 1 {
        return Err(WireError::Inconsistent { size, chunks: usize::try_from(chunks).unwrap_or(usize::MAX) });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunk::digest_bytes;

    fn data(len: usize, seed: u8) -> Vec<u8> {
        (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 7) as u8).collect()
    }

    #[test]
    fn chunk_lists_roundtrip_in_every_form() {
        let old_bytes = data(300_000, 1);
        let mut new_bytes = old_bytes.clone();
        new_bytes.splice(150_000..150_000, data(777, 9));
        let old = digest_bytes(&old_bytes);
        let new = digest_bytes(&new_bytes);
        let small = digest_bytes(b"one chunk");
        for (old_list, digest) in
            [(&old.chunks[..], &new), (&[][..], &new), (&[][..], &small), (&[][..], &digest_bytes(&[]))]
        {
            let list = chunk_list_to_wire(old_list, digest);
            let back = digest_from_wire(digest.size, digest.hash.0, params_to_wire(digest.params), &list, old_list);
            assert_eq!(back.as_ref(), Ok(digest));
        }
        assert!(matches!(chunk_list_to_wire(&old.chunks, &new), msg::ChunkList::Edit(_)));
        assert_eq!(chunk_list_to_wire(&[], &small), msg::ChunkList::Implied);
    }

    #[test]
    fn hostile_lists_are_refused() {
        let digest = digest_bytes(&data(200_000, 3));
        let params = params_to_wire(digest.params);
        let full = chunk_list_to_wire(&[], &digest);
        // Wrong size, out-of-range edits, bad parameters, oversized chunks.
        assert!(digest_from_wire(digest.size + 1, digest.hash.0, params, &full, &[]).is_err());
        let edit = msg::ChunkList::Edit(vec![msg::ListEdit::Keep { from: 5, count: u32::MAX }]);
        assert_eq!(
            digest_from_wire(digest.size, digest.hash.0, params, &edit, &digest.chunks),
            Err(WireError::EditOutOfRange { old_len: digest.chunks.len() })
        );
        let bad_params = msg::ChunkParams { min: 3, avg: 8, max: 9 };
        assert!(matches!(
            digest_from_wire(1, [0; 32], bad_params, &msg::ChunkList::Implied, &[]),
            Err(WireError::Params(_))
        ));
        let huge = msg::ChunkList::Implied;
        assert!(digest_from_wire(u64::from(u32::MAX) + 10, [0; 32], params, &huge, &[]).is_err());
        // Keeping the same old chunks over and over would build a list far
        // longer than the message: refused before it is built.
        let keep_all = msg::ListEdit::Keep { from: 0, count: digest.chunks.len() as u32 };
        let times = MAX_FILE_CHUNKS / digest.chunks.len() + 1;
        let repeated = msg::ChunkList::Edit(vec![keep_all; times]);
        let size = digest.size * times as u64;
        let refused = digest_from_wire(size, digest.hash.0, params, &repeated, &digest.chunks).map(|d| d.chunks.len());
        let chunks = (digest.chunks.len() * times) as u64;
        assert_eq!(refused, Err(WireError::TooManyChunks { chunks, max: MAX_FILE_CHUNKS }));
        // More chunks than the size can hold at the minimum chunk length.
        let tiny = msg::ChunkRef { id: [1; 32], len: 1 };
        let crowded = msg::ChunkList::Full(vec![tiny; 3]);
        assert_eq!(
            digest_from_wire(3, [0; 32], params, &crowded, &[]),
            Err(WireError::Inconsistent { size: 3, chunks: 3 })
        );
        assert_eq!(mtime_from_wire(msg::Mtime { secs: 0, nanos: 1_000_000_000 }), Err(WireError::Nanos(1_000_000_000)));
        let attrs = msg::Attrs::default();
        assert_eq!(meta_from_wire(0o17777, msg::Mtime::default(), attrs), Err(WireError::Mode(0o17777)));
    }

    #[test]
    fn meta_roundtrips_through_the_wire() {
        let meta = Meta {
            mode: 0o6755,
            mtime: Mtime { secs: -3, nanos: 7 },
            uid: 1234,
            gid: 5678,
            user: b"alice".to_vec(),
            group: b"staff".to_vec(),
            xattrs: vec![
                Xattr { name: b"system.posix_acl_access".to_vec(), value: vec![2, 0, 0, 0, 1, 0, 6, 0] },
                Xattr { name: b"user.comment".to_vec(), value: b"hello".to_vec() },
            ],
        };
        let back = meta_from_wire(meta.mode, mtime_to_wire(meta.mtime), attrs_to_wire(&meta));
        assert_eq!(back, Ok(meta));
    }
}
