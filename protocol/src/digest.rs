//! Content identities both ends must compute alike (SPEC.md, "Digests"):
//! chunk ids, file hashes, and the Merkle digests of `Listing`, `Opened` and
//! `Open.remembered_root`. All are BLAKE3-256, unkeyed.
//!
//! An entry's digest covers its name, metadata, kind and content; a
//! directory's content is the digest of its listing, so equal root digests
//! mean equal trees. Every variable-length field is prefixed with its length
//! (u64 little-endian), so no two different entries hash the same bytes.

use crate::msg::{Hash, Mtime};

/// The chunk id of a chunk's uncompressed bytes, or the hash of a whole
/// file's content: BLAKE3-256 of the bytes.
pub fn content_hash(bytes: &[u8]) -> Hash {
    *blake3::hash(bytes).as_bytes()
}

/// The metadata an entry digest covers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EntryMeta<'a> {
    /// Permission bits (`SetMeta.mode`).
    pub mode: u32,
    /// Modification time.
    pub mtime: Mtime,
    /// Numeric owner (`Attrs.uid`).
    pub uid: u32,
    /// Numeric group (`Attrs.gid`).
    pub gid: u32,
    /// Owner name (`Attrs.user`, empty: none).
    pub user: &'a [u8],
    /// Group name (`Attrs.group`, empty: none).
    pub group: &'a [u8],
}

/// What an entry is, with what its digest covers of its content.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryContent<'a> {
    /// A directory: the [`listing_digest`] of its children.
    Dir {
        /// Digest of the directory's listing.
        listing: &'a Hash,
    },
    /// A symbolic link.
    Symlink {
        /// The link's target, raw.
        target: &'a [u8],
    },
    /// A regular file.
    File {
        /// Length in bytes.
        size: u64,
        /// [`content_hash`] of the whole file.
        hash: &'a Hash,
    },
    /// A hard link to another file of the tree.
    HardLink {
        /// Path of the first name of the file, from the transfer root.
        target: &'a [u8],
        /// The file's length.
        size: u64,
        /// The file's [`content_hash`].
        hash: &'a Hash,
    },
}

/// The digest of one entry (`ChildDigest.digest`), over in order: the
/// length-prefixed name, `mode` (u32 LE), `mtime.secs` (i64 LE),
/// `mtime.nanos` (u32 LE), `uid` and `gid` (u32 LE), the length-prefixed
/// user and group names, the xattr count (u64 LE) and each xattr's
/// length-prefixed name and value (sorted by name), then a kind byte and the
/// content: `d` + listing digest, `l` + target (no prefix), `f` + size
/// (u64 LE) + hash, or `h` + length-prefixed target + size (u64 LE) + hash.
pub fn entry_digest<'x>(
    name: &[u8],
    meta: &EntryMeta<'_>,
    xattrs: impl ExactSizeIterator<Item = (&'x [u8], &'x [u8])>,
    content: EntryContent<'_>,
) -> Hash {
    let mut hasher = blake3::Hasher::new();
    prefixed(&mut hasher, name);
    hasher.update(&meta.mode.to_le_bytes());
    hasher.update(&meta.mtime.secs.to_le_bytes());
    hasher.update(&meta.mtime.nanos.to_le_bytes());
    hasher.update(&meta.uid.to_le_bytes());
    hasher.update(&meta.gid.to_le_bytes());
    prefixed(&mut hasher, meta.user);
    prefixed(&mut hasher, meta.group);
    hasher.update(&(xattrs.len() as u64).to_le_bytes());
    for (name, value) in xattrs {
        prefixed(&mut hasher, name);
        prefixed(&mut hasher, value);
    }
    match content {
        EntryContent::Dir { listing } => {
            hasher.update(b"d");
            hasher.update(listing);
        }
        EntryContent::Symlink { target } => {
            hasher.update(b"l");
            hasher.update(target);
        }
        EntryContent::File { size, hash } => {
            hasher.update(b"f");
            hasher.update(&size.to_le_bytes());
            hasher.update(hash);
        }
        EntryContent::HardLink { target, size, hash } => {
            hasher.update(b"h");
            prefixed(&mut hasher, target);
            hasher.update(&size.to_le_bytes());
            hasher.update(hash);
        }
    }
    *hasher.finalize().as_bytes()
}

/// The digest of a directory's listing, and of the tree root (`Opened.root`):
/// over the children sorted by name bytewise, each child's length-prefixed
/// name and its [`entry_digest`]. An empty directory hashes no bytes.
pub fn listing_digest<'c>(children: impl IntoIterator<Item = (&'c [u8], &'c Hash)>) -> Hash {
    let mut hasher = blake3::Hasher::new();
    for (name, digest) in children {
        prefixed(&mut hasher, name);
        hasher.update(digest);
    }
    *hasher.finalize().as_bytes()
}

/// `bytes` after its length as u64 little-endian.
fn prefixed(hasher: &mut blake3::Hasher, bytes: &[u8]) {
    hasher.update(&(bytes.len() as u64).to_le_bytes());
    hasher.update(bytes);
}
