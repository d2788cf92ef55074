//! Field types shared by several message bodies.

use serde::{Deserialize, Serialize};

#[cfg(doc)]
use super::bodies::*;
use crate::fields;
#[cfg(doc)]
use crate::limits::*;

/// A BLAKE3-256 hash: a chunk id, a file hash or a tree digest.
pub type Hash = [u8; 32];

/// What a session does: which way file data flows, or which request about
/// the server's history it makes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Direction {
    /// Client sends, server receives.
    Push,
    /// Server sends, client receives (from the mirror, or from a snapshot
    /// with `Open.at`).
    Pull,
    /// The server lists the snapshots of the trees at or below `path`
    /// ([`SnapshotList`]).
    Snapshots,
    /// The server forgets the snapshots `Open.forget` names
    /// ([`Forgotten`]).
    Forget,
    /// The server garbage-collects its history ([`Pruned`]).
    Prune,
}

impl Direction {
    /// Whether this is a request about the history rather than a transfer.
    pub fn is_history(self) -> bool {
        matches!(self, Direction::Snapshots | Direction::Forget | Direction::Prune)
    }
}

/// A modification time: seconds since the Unix epoch and nanoseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Mtime {
    /// Seconds since 1970-01-01T00:00:00Z; negative before.
    pub secs: i64,
    /// Nanoseconds, below 1,000,000,000.
    pub nanos: u32,
}

/// FastCDC parameters a file was cut with, so both ends cut identically.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ChunkParams {
    /// Minimum chunk length.
    pub min: u32,
    /// Average (target) chunk length.
    pub avg: u32,
    /// Maximum chunk length, at most [`MAX_CHUNK_LEN`].
    pub max: u32,
}

/// One chunk of a file: its id and length.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ChunkRef {
    /// BLAKE3-256 of the chunk's uncompressed bytes.
    pub id: Hash,
    /// Length in bytes, at most [`MAX_CHUNK_LEN`].
    pub len: u32,
}

/// One child of a directory in a [`Listing`].
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ChildDigest {
    /// The child's name (one path component, raw bytes).
    #[serde(with = "fields::bytes")]
    pub name: Vec<u8>,
    /// Merkle digest of the child: a file's content-and-metadata digest or a
    /// directory's tree digest.
    pub digest: Hash,
    /// Whether the child is a directory (so the sender may `ListDir` it).
    pub is_dir: bool,
}

/// The receiver's current state of one file, in a [`FileInfos`].
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct FileInfo {
    /// The file's path.
    #[serde(with = "fields::bytes")]
    pub path: Vec<u8>,
    /// Its length in bytes.
    pub size: u64,
    /// BLAKE3-256 of its whole content.
    pub hash: Hash,
    /// Parameters its chunk list was cut with.
    pub params: ChunkParams,
    /// Its chunks, in order (this record's part of them).
    #[serde(with = "fields::seq")]
    pub chunks: Vec<ChunkRef>,
    /// The next record (in this message or the next `FileInfos`) is the same
    /// file and continues `chunks`; its other fields repeat this record's.
    pub continued: bool,
}

/// How a [`WriteFile`] describes the new file's chunks.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ChunkList {
    /// One chunk, whose id is the file hash and whose length is the file
    /// size (at most [`MAX_CHUNK_LEN`]).
    Implied,
    /// The whole list.
    Full(#[serde(with = "fields::seq")] Vec<ChunkRef>),
    /// Edits of the receiver's current list for the same path (as it
    /// reported in `FileInfos` or as the sender remembers it).
    Edit(#[serde(with = "fields::seq")] Vec<ListEdit>),
}

/// One step of rebuilding a chunk list from the receiver's old one.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ListEdit {
    /// Keep `count` entries of the old list starting at index `from`.
    Keep {
        /// Index into the old list.
        from: u32,
        /// Number of entries.
        count: u32,
    },
    /// New entries.
    New(#[serde(with = "fields::seq")] Vec<ChunkRef>),
}

/// One snapshot as a [`SnapshotList`] carries it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SnapshotEntry {
    /// The snapshot's id (BLAKE3 of its record).
    pub id: Hash,
    /// When the push that left it committed, seconds since the Unix epoch.
    pub time: i64,
    /// Nanoseconds past `time`, below 1,000,000,000.
    pub nanos: u32,
    /// The served tree it is of (`/site`; `/` for the root), at most
    /// [`MAX_PATH_LEN`] bytes.
    pub tree: String,
    /// The pushing client's fingerprint (empty for a local push), at most
    /// [`MAX_HOST_LEN`] bytes.
    pub client: String,
    /// The source host as the client named it, at most [`MAX_HOST_LEN`].
    pub host: String,
    /// The source path on that host, at most [`MAX_PATH_LEN`].
    pub source: String,
    /// The push's tags, as in `Open`.
    #[serde(with = "fields::seq")]
    pub tags: Vec<super::bodies::Tag>,
    /// The push did not complete.
    pub partial: bool,
    /// Regular files.
    pub files: u64,
    /// Directories.
    pub dirs: u64,
    /// Bytes of the regular files.
    pub bytes: u64,
    /// The snapshot's root tree blob.
    pub root: Hash,
}

/// Owner, group and extended attributes of an entry (ACLs are the xattrs
/// `system.posix_acl_access` and `system.posix_acl_default`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Attrs {
    /// Numeric owner on the sender.
    pub uid: u32,
    /// Numeric group on the sender.
    pub gid: u32,
    /// The owner's name on the sender, at most [`MAX_OWNER_NAME_LEN`]
    /// bytes; empty when it has none. A receiver maps by name when the name
    /// exists there, else by number.
    #[serde(with = "fields::bytes")]
    pub user: Vec<u8>,
    /// The group's name on the sender, as `user`.
    #[serde(with = "fields::bytes")]
    pub group: Vec<u8>,
    /// Extended attributes, sorted by name, names unique; at most
    /// [`MAX_XATTRS`], [`MAX_XATTR_BYTES`] of names and values together.
    #[serde(with = "fields::seq")]
    pub xattrs: Vec<Xattr>,
}

/// One extended attribute: its full name (`user.comment`) and raw value.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Xattr {
    /// Non-empty, at most [`MAX_XATTR_NAME_LEN`] bytes, no NUL.
    #[serde(with = "fields::bytes")]
    pub name: Vec<u8>,
    /// At most [`MAX_XATTR_VALUE_LEN`] bytes.
    #[serde(with = "fields::bytes")]
    pub value: Vec<u8>,
}
