//! Messages: the numbered registry, the body of each message and its limits.
//!
//! Every message is a struct whose fields are its body, in postcard's
//! encoding (SPEC.md, "Body encoding"). The single `messages!` table below
//! assigns each one its registry number ([`Kind`]); numbers are never reused
//! and the gaps between groups are reserved for later messages of the same
//! group.
//!
//! Paths (`path`, `dir`, `target`, listing names) are raw bytes, `/`
//! separated and relative to the session root. This crate checks only their
//! lengths; the receiver must validate them (no `..`, no empty or `.`
//! components, no leading `/`, no NUL) before touching the file system.

use serde::{Deserialize, Serialize};

use crate::error::DecodeError;
use crate::fields;
use crate::limits::*;

/// A BLAKE3-256 hash: a chunk id, a file hash or a tree digest.
pub type Hash = [u8; 32];

// The codec registry lives in `codec`; these names stay for `ChunkData` users.
pub use crate::codec::{CODEC_DELTA, CODEC_LZ4, CODEC_RAW, CODEC_ZSTD};

// ---------------------------------------------------------------------------
// Shared field types

/// Which way file data flows in a session.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Direction {
    /// Client sends, server receives.
    Push,
    /// Server sends, client receives.
    Pull,
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

// ---------------------------------------------------------------------------
// Message bodies

/// Both ways, first: protocol version, optional features, software name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Hello {
    /// [`PROTOCOL_VERSION`](crate::PROTOCOL_VERSION) of the sender.
    pub version: u32,
    /// Feature bits the sender supports (SPEC.md, "Versioning"). Version 2
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
    /// [`MAX_TAGS`]; they change nothing in the transfer.
    #[serde(with = "fields::seq")]
    pub tags: Vec<Tag>,
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

// ---------------------------------------------------------------------------
// Validation

/// A broken rule, before the message kind is known to the caller.
pub(crate) enum Violation {
    Limit { what: &'static str, len: u64, max: u64 },
    Invalid(&'static str),
}

impl Violation {
    fn at(self, kind: Kind) -> DecodeError {
        match self {
            Violation::Limit { what, len, max } => DecodeError::Limit { kind, what, len, max },
            Violation::Invalid(what) => DecodeError::Invalid { kind, what },
        }
    }
}

type Checked = Result<(), Violation>;

fn limit(what: &'static str, len: usize, max: usize) -> Checked {
    if len > max {
        Err(Violation::Limit { what, len: len as u64, max: max as u64 })
    } else {
        Ok(())
    }
}

fn path(what: &'static str, p: &[u8]) -> Checked {
    limit(what, p.len(), MAX_PATH_LEN)
}

fn text(what: &'static str, s: &str) -> Checked {
    limit(what, s.len(), MAX_TEXT_LEN)
}

fn mtime(m: &Mtime) -> Checked {
    if m.nanos >= 1_000_000_000 {
        return Err(Violation::Invalid("mtime nanoseconds of 1e9 or more"));
    }
    Ok(())
}

fn attrs(a: &Attrs) -> Checked {
    limit("user name", a.user.len(), MAX_OWNER_NAME_LEN)?;
    limit("group name", a.group.len(), MAX_OWNER_NAME_LEN)?;
    limit("xattrs", a.xattrs.len(), MAX_XATTRS)?;
    let mut total = 0;
    for (i, x) in a.xattrs.iter().enumerate() {
        limit("xattr name", x.name.len(), MAX_XATTR_NAME_LEN)?;
        limit("xattr value", x.value.len(), MAX_XATTR_VALUE_LEN)?;
        if x.name.is_empty() || x.name.contains(&0) {
            return Err(Violation::Invalid("xattr name empty or with a NUL byte"));
        }
        if i > 0 && a.xattrs[i - 1].name >= x.name {
            return Err(Violation::Invalid("xattr names not sorted and unique"));
        }
        total += x.name.len() + x.value.len();
    }
    limit("xattr bytes", total, MAX_XATTR_BYTES)
}

fn params(p: &ChunkParams) -> Checked {
    limit("params.max", p.max as usize, MAX_CHUNK_LEN as usize)?;
    if !(p.min <= p.avg && p.avg <= p.max) {
        return Err(Violation::Invalid("chunk params not min <= avg <= max"));
    }
    Ok(())
}

fn refs(r: &[ChunkRef]) -> Checked {
    for c in r {
        limit("chunk length", c.len as usize, MAX_CHUNK_LEN as usize)?;
    }
    Ok(())
}

/// Items a chunk list counts against [`MAX_CHUNK_REFS_PER_MESSAGE`].
fn list_items(list: &ChunkList) -> usize {
    match list {
        ChunkList::Implied => 0,
        ChunkList::Full(r) => r.len(),
        ChunkList::Edit(edits) => edits
            .iter()
            .map(|e| match e {
                ListEdit::Keep { .. } => 1,
                ListEdit::New(r) => 1 + r.len(),
            })
            .sum(),
    }
}

fn list(l: &ChunkList) -> Checked {
    limit("chunk list items", list_items(l), MAX_CHUNK_REFS_PER_MESSAGE)?;
    match l {
        ChunkList::Implied => Ok(()),
        ChunkList::Full(r) => refs(r),
        ChunkList::Edit(edits) => edits.iter().try_for_each(|e| match e {
            ListEdit::Keep { .. } => Ok(()),
            ListEdit::New(r) => refs(r),
        }),
    }
}

/// Rules a decoded body must satisfy beyond its encoding.
pub(crate) trait Validate {
    fn validate(&self) -> Checked;
}

impl Validate for Hello {
    fn validate(&self) -> Checked {
        text("agent", &self.agent)
    }
}

impl Validate for ErrorMsg {
    fn validate(&self) -> Checked {
        text("message", &self.message)
    }
}

impl Validate for Open {
    fn validate(&self) -> Checked {
        path("path", &self.path)?;
        limit("tags", self.tags.len(), MAX_TAGS)?;
        if self.tags.iter().any(|t| t.check().is_err()) {
            return Err(Violation::Invalid("a tag breaks the tag rules"));
        }
        Ok(())
    }
}

impl Validate for Opened {
    fn validate(&self) -> Checked {
        Ok(())
    }
}

impl Validate for ListDir {
    fn validate(&self) -> Checked {
        path("dir", &self.dir)
    }
}

impl Validate for Listing {
    fn validate(&self) -> Checked {
        path("dir", &self.dir)?;
        limit("children", self.children.len(), MAX_CHILDREN_PER_LISTING)?;
        self.children.iter().try_for_each(|c| limit("name", c.name.len(), MAX_NAME_LEN))
    }
}

impl Validate for GetFiles {
    fn validate(&self) -> Checked {
        limit("paths", self.paths.len(), MAX_FILES_PER_MESSAGE)?;
        self.paths.iter().try_for_each(|p| path("path", p))
    }
}

impl Validate for FileInfos {
    fn validate(&self) -> Checked {
        limit("files", self.files.len(), MAX_FILES_PER_MESSAGE)?;
        let total: usize = self.files.iter().map(|f| f.chunks.len()).sum();
        limit("chunk refs", total, MAX_CHUNK_REFS_PER_MESSAGE)?;
        for f in &self.files {
            path("path", &f.path)?;
            params(&f.params)?;
            refs(&f.chunks)?;
        }
        Ok(())
    }
}

impl Validate for HasChunks {
    fn validate(&self) -> Checked {
        limit("ids", self.ids.len(), MAX_IDS_PER_BATCH)
    }
}

impl Validate for Have {
    fn validate(&self) -> Checked {
        limit("bitmap bytes", self.bits.len(), MAX_IDS_PER_BATCH / 8)
    }
}

impl Validate for Mkdir {
    fn validate(&self) -> Checked {
        path("path", &self.path)?;
        mtime(&self.mtime)?;
        attrs(&self.attrs)
    }
}

impl Validate for WriteFile {
    fn validate(&self) -> Checked {
        path("path", &self.path)?;
        mtime(&self.mtime)?;
        attrs(&self.attrs)?;
        params(&self.params)?;
        list(&self.list)?;
        if self.list == ChunkList::Implied {
            if self.more {
                return Err(Violation::Invalid("implied chunk list with more set"));
            }
            limit("implied chunk length", usize::try_from(self.size).unwrap_or(usize::MAX), MAX_CHUNK_LEN as usize)?;
        }
        Ok(())
    }
}

impl Validate for MoreChunks {
    fn validate(&self) -> Checked {
        if self.list == ChunkList::Implied {
            return Err(Violation::Invalid("implied chunk list in a continuation"));
        }
        list(&self.list)
    }
}

impl Validate for Symlink {
    fn validate(&self) -> Checked {
        path("path", &self.path)?;
        path("target", &self.target)?;
        mtime(&self.mtime)?;
        attrs(&self.attrs)
    }
}

impl Validate for Link {
    fn validate(&self) -> Checked {
        path("path", &self.path)?;
        path("target", &self.target)
    }
}

impl Validate for SetMeta {
    fn validate(&self) -> Checked {
        path("path", &self.path)?;
        mtime(&self.mtime)?;
        attrs(&self.attrs)
    }
}

impl Validate for Delete {
    fn validate(&self) -> Checked {
        path("path", &self.path)
    }
}

impl Validate for NeedChunk {
    fn validate(&self) -> Checked {
        limit("signature", self.signature.as_ref().map_or(0, Vec::len), MAX_SIGNATURE_LEN)
    }
}

impl Validate for RefineRequest {
    fn validate(&self) -> Checked {
        limit("ranges", self.ranges.len(), MAX_RANGES_LEN)
    }
}

impl Validate for FineSignatures {
    fn validate(&self) -> Checked {
        limit("signatures", self.signatures.len(), MAX_FINE_SIGNATURES)?;
        limit("signature bytes", self.signatures.iter().map(Vec::len).sum(), MAX_SIGNATURE_LEN)
    }
}

impl Validate for ChunkData {
    fn validate(&self) -> Checked {
        limit("decoded_len", self.decoded_len as usize, MAX_CHUNK_LEN as usize)?;
        limit("payload", self.payload.len(), MAX_PAYLOAD_LEN as usize)
    }
}

impl Validate for Commit {
    fn validate(&self) -> Checked {
        Ok(())
    }
}

impl Validate for Committed {
    fn validate(&self) -> Checked {
        Ok(())
    }
}

impl Validate for FileFailed {
    fn validate(&self) -> Checked {
        text("message", &self.message)
    }
}

impl Validate for Done {
    fn validate(&self) -> Checked {
        Ok(())
    }
}

impl Validate for Summary {
    fn validate(&self) -> Checked {
        Ok(())
    }
}

/// Decodes one body: exactly `body`, no trailing bytes, then validated.
fn decode_body<'a, T>(kind: Kind, body: &'a [u8]) -> Result<T, DecodeError>
where
    T: Deserialize<'a> + Validate,
{
    let (msg, rest) = postcard::take_from_bytes::<T>(body).map_err(|source| DecodeError::Body { kind, source })?;
    if !rest.is_empty() {
        return Err(DecodeError::Invalid { kind, what: "trailing bytes after the body" });
    }
    msg.validate().map_err(|v| v.at(kind))?;
    Ok(msg)
}

// ---------------------------------------------------------------------------
// The registry

/// Defines [`Kind`] and [`Message`] from one table of `number Variant(Body)`.
macro_rules! messages {
    ($( $(#[$doc:meta])* $num:literal $variant:ident($body:ident), )*) => {
        /// A message's registry number, the frame's kind byte.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[repr(u8)]
        #[non_exhaustive]
        pub enum Kind {
            $( $(#[$doc])* $variant = $num, )*
        }

        impl Kind {
            /// Every kind, in number order.
            pub const ALL: &'static [Kind] = &[$(Kind::$variant),*];

            /// The kind numbered `n`, or `None` if `n` is unassigned or reserved.
            pub fn from_u8(n: u8) -> Option<Kind> {
                match n {
                    $( $num => Some(Kind::$variant), )*
                    _ => None,
                }
            }

            /// The message's name, as in SPEC.md.
            pub fn name(self) -> &'static str {
                match self {
                    $( Kind::$variant => stringify!($variant), )*
                }
            }
        }

        /// Any protocol message.
        #[derive(Clone, Debug, PartialEq, Eq)]
        pub enum Message {
            $( $(#[$doc])* $variant($body), )*
        }

        impl Message {
            /// The message's registry number.
            pub fn kind(&self) -> Kind {
                match self {
                    $( Message::$variant(_) => Kind::$variant, )*
                }
            }

            /// Checks the hard limits a decoder enforces, so a sender can
            /// catch a message its peer would refuse.
            ///
            /// # Errors
            ///
            /// [`DecodeError::Limit`] or [`DecodeError::Invalid`], as
            /// decoding the message would report.
            pub fn validate(&self) -> Result<(), DecodeError> {
                let checked = match self {
                    $( Message::$variant(m) => m.validate(), )*
                };
                checked.map_err(|v| v.at(self.kind()))
            }

            /// Appends the postcard body to `out`.
            pub(crate) fn encode_body(&self, out: Vec<u8>) -> Vec<u8> {
                let out = match self {
                    $( Message::$variant(m) => postcard::to_extend(m, out), )*
                };
                // Serializing plain structs into a Vec has no failure path:
                // no maps, no `serialize_any`, no custom errors.
                out.expect("invariant: postcard serializes message bodies into a Vec infallibly")
            }

            /// Decodes and validates the body of a `kind` message.
            pub(crate) fn decode_body(kind: Kind, body: &[u8]) -> Result<Message, DecodeError> {
                match kind {
                    $( Kind::$variant => decode_body::<$body>(kind, body).map(Message::$variant), )*
                }
            }
        }

        $(
            impl From<$body> for Message {
                fn from(m: $body) -> Message {
                    Message::$variant(m)
                }
            }
        )*
    };
}

// Numbers are never reused. Gaps are reserved for the group they sit in;
// 0 is reserved so that zeroed memory never parses; 128..=255 are reserved
// for messages of negotiated features (SPEC.md, "Versioning").
messages! {
    // 1..=7: session control.
    /// `Hello`: version and features, both ways, first.
    1 Hello(Hello),
    /// `Error`: fatal error, either way, any time.
    2 Error(ErrorMsg),
    // 8..=15: opening a transfer.
    /// `Open`: client asks for a push or pull of a tree.
    8 Open(Open),
    /// `Opened`: server answers with the receiver's root.
    9 Opened(Opened),
    // 16..=23: Merkle comparison.
    /// `ListDir`: sender asks for a directory's child digests.
    16 ListDir(ListDir),
    /// `Listing`: receiver's child digests.
    17 Listing(Listing),
    /// `GetFiles`: sender asks for files' chunk lists.
    18 GetFiles(GetFiles),
    /// `FileInfos`: receiver's chunk lists.
    19 FileInfos(FileInfos),
    // 24..=31: have/need.
    /// `HasChunks`: sender asks which chunks the receiver has.
    24 HasChunks(HasChunks),
    /// `Have`: receiver's bitmap answer.
    25 Have(Have),
    // 32..=47: entry changes, applied in order.
    /// `Mkdir`: create a directory.
    32 Mkdir(Mkdir),
    /// `WriteFile`: write a file from chunks.
    33 WriteFile(WriteFile),
    /// `MoreChunks`: continuation of a `WriteFile` chunk list.
    34 MoreChunks(MoreChunks),
    /// `Symlink`: create a symlink.
    35 Symlink(Symlink),
    /// `SetMeta`: set mode and mtime only.
    36 SetMeta(SetMeta),
    /// `Delete`: remove an entry.
    37 Delete(Delete),
    /// `Link`: make a name another hard link of a file in the tree.
    38 Link(Link),
    // 48..=63: chunk transfer and sub-chunk delta.
    /// `NeedChunk`: receiver asks for a chunk, maybe with a signature.
    48 NeedChunk(NeedChunk),
    /// `RefineRequest`: sender asks for finer signatures.
    49 RefineRequest(RefineRequest),
    /// `FineSignatures`: receiver's finer signatures.
    50 FineSignatures(FineSignatures),
    /// `ChunkData`: a chunk's bytes, on a data stream.
    51 ChunkData(ChunkData),
    // 64..=79: commit points and progress.
    /// `Commit`: sender asks for durability up to here.
    64 Commit(Commit),
    /// `Committed`: receiver confirms durability.
    65 Committed(Committed),
    /// `FileFailed`: receiver could not write one file.
    66 FileFailed(FileFailed),
    /// `Done`: sender has nothing more.
    67 Done(Done),
    /// `Summary`: receiver's final report.
    68 Summary(Summary),
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.name(), *self as u8)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kind_numbers_roundtrip() {
        for kind in Kind::ALL {
            assert_eq!(Kind::from_u8(*kind as u8), Some(*kind));
        }
        assert_eq!(Kind::from_u8(0), None);
        assert_eq!(Kind::from_u8(3), None);
        assert_eq!(Kind::from_u8(128), None);
        assert_eq!(Kind::ALL.len(), 26);
    }

    #[test]
    fn decode_body_refuses_trailing_bytes() {
        let err = Message::decode_body(Kind::Commit, &[1, 0]).unwrap_err();
        assert!(matches!(err, DecodeError::Invalid { kind: Kind::Commit, .. }), "{err}");
    }

    #[test]
    fn validate_refuses_bad_mtime_and_params() {
        let mtime = Mtime { secs: 0, nanos: 1_000_000_000 };
        let m = Message::Mkdir(Mkdir { path: b"a".to_vec(), mode: 0o755, mtime, attrs: Attrs::default() });
        assert!(matches!(m.validate(), Err(DecodeError::Invalid { .. })));
        let p = ChunkParams { min: 10, avg: 5, max: 20 };
        assert!(params(&p).is_err());
        let p = ChunkParams { min: 1, avg: 2, max: MAX_CHUNK_LEN + 1 };
        assert!(params(&p).is_err());
    }

    #[test]
    fn byte_fields_encode_like_sequences() {
        // The field helpers must not change the wire form serde would give.
        #[derive(Serialize)]
        struct Plain {
            a: Vec<u8>,
            b: Vec<Vec<u8>>,
            c: Option<Vec<u8>>,
        }
        #[derive(Serialize, Deserialize, PartialEq, Debug)]
        struct Helped {
            #[serde(with = "fields::bytes")]
            a: Vec<u8>,
            #[serde(with = "fields::byte_seq")]
            b: Vec<Vec<u8>>,
            #[serde(with = "fields::opt_bytes")]
            c: Option<Vec<u8>>,
        }
        let plain = Plain { a: vec![1, 2, 200], b: vec![vec![], vec![9; 130]], c: Some(vec![7]) };
        let helped = Helped { a: plain.a.clone(), b: plain.b.clone(), c: plain.c.clone() };
        let bytes = postcard::to_stdvec(&plain).unwrap();
        assert_eq!(bytes, postcard::to_stdvec(&helped).unwrap());
        assert_eq!(postcard::from_bytes::<Helped>(&bytes).unwrap(), helped);
    }
}
