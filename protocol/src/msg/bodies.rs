//! The body of each message: its fields, in wire order.

use serde::{Deserialize, Serialize};

use super::types::*;
use crate::fields;
use crate::limits::MAX_TAG_LEN;
#[cfg(doc)]
use crate::{codec::*, limits::*};

/// Both ways, first: protocol version, optional features, software name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Hello {
    /// [`PROTOCOL_VERSION`](crate::PROTOCOL_VERSION) of the sender.
    pub version: u32,
    /// Feature bits the sender supports (SPEC.md, "Versioning"). Version 3
    /// defines none: send 0, ignore bits you do not know.
    pub features: u64,
    /// Software name and version, for logs (e.g. `xfer/0.1.0`).
    pub agent: String,
}

/// Either way, any time: a fatal error; the sender closes after it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ErrorMsg {
    /// A [`CloseCode`](crate::CloseCode) number.
    pub code: u32,
    /// Human-readable detail.
    pub message: String,
}

/// Client to server: start a transfer of the tree at `path`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Open {
    /// Push (client sends) or pull (server sends).
    pub direction: Direction,
    /// Path of the tree on the server.
    #[serde(with = "fields::bytes")]
    pub path: Vec<u8>,
    /// Delete receiver entries the sender does not have.
    pub delete: bool,
    /// Compare file contents by hash even where size and mtime match.
    pub checksum: bool,
    /// The receiver's tree root as the client remembers it from last time.
    pub remembered_root: Option<Hash>,
    /// Labels for the server's audit log (cost allocation), at most
    /// [`MAX_TAGS`]; they change nothing in the transfer, and a push's
    /// snapshot records them.
    #[serde(with = "fields::seq")]
    pub tags: Vec<Tag>,
    /// Pull only: the snapshot to send instead of the current tree
    /// (`latest`, an id prefix, a time), at most [`MAX_SELECTOR_LEN`]
    /// bytes without control characters.
    pub at: Option<String>,
    /// Push: the source host, for the snapshot record; at most
    /// [`MAX_HOST_LEN`] bytes without control characters.
    pub source_host: String,
    /// Push: the source path on that host, for the snapshot record; at
    /// most [`MAX_PATH_LEN`] bytes without control characters.
    pub source_path: String,
    /// Forget only: the snapshots to forget, at most [`MAX_FORGET_IDS`].
    #[serde(with = "fields::seq")]
    pub forget: Vec<Hash>,
}

/// A `key=value` label of a session.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Tag {
    /// Non-empty, at most [`MAX_TAG_LEN`] bytes, without `=` or control
    /// characters.
    pub key: String,
    /// At most [`MAX_TAG_LEN`] bytes, without control characters.
    pub value: String,
}

impl Tag {
    /// Whether this tag keeps the rules an `Open` is checked against; the
    /// reason it does not, if not.
    pub fn check(&self) -> Result<(), String> {
        let bad = |s: &str| s.chars().any(char::is_control);
        if self.key.is_empty() || self.key.contains('=') || bad(&self.key) || bad(&self.value) {
            return Err(format!(
                "tag {:?}={:?}: the key must be non-empty without '=', and neither may hold control characters",
                self.key, self.value
            ));
        }
        if self.key.len() > MAX_TAG_LEN || self.value.len() > MAX_TAG_LEN {
            return Err(format!("tag {:?}: key and value may be at most {MAX_TAG_LEN} bytes each", self.key));
        }
        Ok(())
    }
}

/// Server to client, answering `Open { direction: Snapshots }`: (part of)
/// the snapshots of the trees at or below `Open.path`, oldest first.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SnapshotList {
    /// Records, at most [`MAX_SNAPSHOTS_PER_MESSAGE`].
    #[serde(with = "fields::seq")]
    pub snapshots: Vec<SnapshotEntry>,
    /// More `SnapshotList` messages follow.
    pub more: bool,
}

/// Server to client, answering `Open { direction: Forget }`: the records
/// are gone (their data goes at the next prune).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Forgotten {
    /// Snapshots forgotten.
    pub count: u64,
}

/// Server to client, answering `Open { direction: Prune }`: what the
/// garbage collection did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Pruned {
    /// Packs deleted (doomed by an earlier prune, still unreferenced).
    pub packs_deleted: u64,
    /// Bytes freed by them.
    pub bytes_freed: u64,
    /// Packs taken out of the index this run, deleted by a later one.
    pub packs_doomed: u64,
    /// Packs rewritten without their unreferenced blobs.
    pub packs_repacked: u64,
    /// Doomed packs a newer snapshot referenced again, put back.
    pub packs_reinstated: u64,
    /// Bytes the history holds after the run.
    pub bytes_after: u64,
}

/// Server to client, with feature `FEATURE_STORE_COSTS`: the requests
/// the server's history store made for this session and the bytes they
/// moved (for a billed object store; a local directory counts the same
/// operations).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct StoreCosts {
    /// Objects written.
    pub puts: u64,
    /// Objects or ranges read, and size queries.
    pub gets: u64,
    /// Listing pages (one per 1,000 keys, as S3 pages them).
    pub lists: u64,
    /// Objects deleted.
    pub deletes: u64,
    /// Bytes written.
    pub bytes_put: u64,
    /// Bytes read.
    pub bytes_got: u64,
    /// Keys listed.
    pub keys_listed: u64,
}

/// Sender to receiver, with feature `FEATURE_DRY_RUN`, in place of `Done`:
/// the push was a dry run, which sent no entry changes; the receiver
/// records nothing of it (no snapshot) and answers as to `Done`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct DryRun;

/// Server to client: the receiver's tree root.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Opened {
    /// The receiver's current tree root hash.
    pub root: Hash,
    /// `Open.remembered_root` equals `root`: the sender may plan against its
    /// memory of the receiver's tree instead of asking for listings.
    pub remembered: bool,
}

/// Sender to receiver: list directory `dir` (empty: the root).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ListDir {
    /// The directory.
    #[serde(with = "fields::bytes")]
    pub dir: Vec<u8>,
}

/// Receiver to sender: (part of) a directory's children, sorted by name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Listing {
    /// The directory, as in the `ListDir`.
    #[serde(with = "fields::bytes")]
    pub dir: Vec<u8>,
    /// Children, at most [`MAX_CHILDREN_PER_LISTING`].
    #[serde(with = "fields::seq")]
    pub children: Vec<ChildDigest>,
    /// More `Listing` messages for the same `dir` follow.
    pub more: bool,
}

/// Sender to receiver: send the chunk lists of these files.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct GetFiles {
    /// Paths, at most [`MAX_FILES_PER_MESSAGE`].
    #[serde(with = "fields::byte_seq")]
    pub paths: Vec<Vec<u8>>,
}

/// Receiver to sender: the current chunk lists of requested files.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct FileInfos {
    /// Records, at most [`MAX_FILES_PER_MESSAGE`]; a requested path that is
    /// not a regular file on the receiver has no record.
    #[serde(with = "fields::seq")]
    pub files: Vec<FileInfo>,
    /// More `FileInfos` messages answer the same `GetFiles`.
    pub more: bool,
}

/// Sender to receiver: which of these chunks do you have?
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct HasChunks {
    /// Chunk ids, at most [`MAX_IDS_PER_BATCH`].
    #[serde(with = "fields::seq")]
    pub ids: Vec<Hash>,
}

/// Receiver to sender: the answer to the oldest unanswered `HasChunks`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Have {
    /// Bit `i` (byte `i / 8`, bit `i % 8`, LSB first) is set when the
    /// receiver has id `i`; exactly `ceil(ids / 8)` bytes, padding bits 0.
    #[serde(with = "fields::bytes")]
    pub bits: Vec<u8>,
}

/// Sender to receiver: create directory `path` (or set its metadata).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Mkdir {
    /// The directory.
    #[serde(with = "fields::bytes")]
    pub path: Vec<u8>,
    /// Unix permission bits.
    pub mode: u32,
    /// Modification time (applied after the directory's contents).
    pub mtime: Mtime,
    /// Owner, group and extended attributes.
    pub attrs: Attrs,
}

/// Sender to receiver: write file `path` from these chunks.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct WriteFile {
    /// Session-local file number, named by `NeedChunk`/`ChunkData`.
    pub file: u32,
    /// The file.
    #[serde(with = "fields::bytes")]
    pub path: Vec<u8>,
    /// Unix permission bits.
    pub mode: u32,
    /// Modification time.
    pub mtime: Mtime,
    /// Length in bytes.
    pub size: u64,
    /// BLAKE3-256 of the whole content.
    pub hash: Hash,
    /// Parameters the chunk list was cut with.
    pub params: ChunkParams,
    /// The chunk list (or its first part).
    pub list: ChunkList,
    /// The list continues in `MoreChunks` messages for the same `file`.
    pub more: bool,
    /// Owner, group and extended attributes.
    pub attrs: Attrs,
}

/// Sender to receiver: the next part of a `WriteFile`'s chunk list.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct MoreChunks {
    /// The `WriteFile.file` this continues.
    pub file: u32,
    /// Same variant as the `WriteFile`'s list (`Full` or `Edit`, never
    /// `Implied`); `Keep` indexes still refer to the old list.
    pub list: ChunkList,
    /// Another `MoreChunks` for this file follows.
    pub more: bool,
}

/// Sender to receiver: create symlink `path` pointing at `target`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Symlink {
    /// The link.
    #[serde(with = "fields::bytes")]
    pub path: Vec<u8>,
    /// Its target, raw bytes, not interpreted.
    #[serde(with = "fields::bytes")]
    pub target: Vec<u8>,
    /// Modification time of the link itself.
    pub mtime: Mtime,
    /// Owner, group and extended attributes of the link itself.
    pub attrs: Attrs,
}

/// Sender to receiver: make `path` another name of the file at `target`
/// (a hard link), once that file holds the content `size` and `hash` name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Link {
    /// The new name.
    #[serde(with = "fields::bytes")]
    pub path: Vec<u8>,
    /// The existing file it shares, a path in the same tree.
    #[serde(with = "fields::bytes")]
    pub target: Vec<u8>,
    /// The target's length in bytes.
    pub size: u64,
    /// BLAKE3-256 of the target's whole content.
    pub hash: Hash,
}

/// Sender to receiver: the content is unchanged, set metadata only.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SetMeta {
    /// The entry.
    #[serde(with = "fields::bytes")]
    pub path: Vec<u8>,
    /// Unix permission bits.
    pub mode: u32,
    /// Modification time.
    pub mtime: Mtime,
    /// Owner, group and extended attributes.
    pub attrs: Attrs,
}

/// Sender to receiver: remove `path` (recursively for a directory).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Delete {
    /// The entry.
    #[serde(with = "fields::bytes")]
    pub path: Vec<u8>,
}

/// Receiver to sender: send chunk `index` of `file`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct NeedChunk {
    /// `WriteFile.file`.
    pub file: u32,
    /// Index into that file's new chunk list.
    pub index: u32,
    /// Encoded signature ([`crate::patch::Signature`]) of old bytes the
    /// receiver holds, inviting a delta; `None`: send the chunk whole.
    #[serde(with = "fields::opt_bytes")]
    pub signature: Option<Vec<u8>>,
}

/// Sender to receiver: send finer signatures of these base ranges.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RefineRequest {
    /// `WriteFile.file`.
    pub file: u32,
    /// Chunk index, as in the `NeedChunk`.
    pub index: u32,
    /// Encoded ranges ([`crate::patch::encode_ranges`]).
    #[serde(with = "fields::bytes")]
    pub ranges: Vec<u8>,
}

/// Receiver to sender: one finer signature per requested range.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct FineSignatures {
    /// `WriteFile.file`.
    pub file: u32,
    /// Chunk index.
    pub index: u32,
    /// Encoded signatures, in range order.
    #[serde(with = "fields::byte_seq")]
    pub signatures: Vec<Vec<u8>>,
}

/// Sender to receiver (on a data stream): the bytes of one chunk.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ChunkData {
    /// `WriteFile.file`.
    pub file: u32,
    /// Chunk index.
    pub index: u32,
    /// How `payload` is encoded: [`CODEC_RAW`], [`CODEC_ZSTD`],
    /// [`CODEC_LZ4`] or [`CODEC_DELTA`].
    pub codec: u8,
    /// Length of the chunk once decoded, at most [`MAX_CHUNK_LEN`].
    pub decoded_len: u32,
    /// The encoded bytes, at most [`MAX_PAYLOAD_LEN`].
    #[serde(with = "fields::bytes")]
    pub payload: Vec<u8>,
}

/// Sender to receiver: make everything before this durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Commit {
    /// Commit sequence number, 1 and up.
    pub seq: u64,
}

/// Receiver to sender: everything up to commit `seq` is durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Committed {
    /// The `Commit.seq` acknowledged.
    pub seq: u64,
    /// Files completed so far.
    pub files: u64,
    /// File bytes written so far.
    pub bytes: u64,
}

/// Receiver to sender: file `file` could not be written; the session goes on.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct FileFailed {
    /// `WriteFile.file`.
    pub file: u32,
    /// A [`CloseCode`](crate::CloseCode) number.
    pub code: u32,
    /// Human-readable detail.
    pub message: String,
}

/// Sender to receiver: nothing more follows (after the last `Commit`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Done;

/// Receiver to sender: the final report; the session ends after it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Summary {
    /// Regular files written.
    pub files_written: u64,
    /// Directories created.
    pub dirs_created: u64,
    /// Symlinks written.
    pub symlinks_written: u64,
    /// Entries whose metadata alone changed.
    pub meta_updated: u64,
    /// Entries deleted.
    pub deleted: u64,
    /// Files that failed (`FileFailed` sent).
    pub failed: u64,
    /// File bytes written (decoded length).
    pub bytes_written: u64,
    /// `ChunkData` payload bytes received.
    pub bytes_received: u64,
    /// Chunks received in `ChunkData`.
    pub chunks_received: u64,
    /// Chunks taken from the receiver's own store or files.
    pub chunks_reused: u64,
    /// Chunks received as deltas.
    pub chunks_delta: u64,
    /// Entries whose mode bits, owner, group or xattrs the receiver did
    /// not (or could not) apply as sent and kept in its records instead,
    /// to give them back on a pull.
    pub meta_kept: u64,
}
