//! The library's error type: each variant says where things went wrong.

use std::io;
use std::path::PathBuf;

use thiserror::Error;

use crate::chunk::ParamsError;
use crate::codec::CodecError;
use crate::hash::ChunkId;
use crate::manifest::{ManifestError, PathError};
use crate::patch::PatchError;

/// Result with xfer's [`enum@Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in the xfer library.
///
/// A variant says its cause in its message and does not also return it
/// as its `source()`: a printer of the error chain would say it twice.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum Error {
    /// Reading or writing a file or directory failed.
    #[error("{path}: {cause}")]
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        cause: io::Error,
    },
    /// Invalid chunking parameters.
    #[error(transparent)]
    Params(#[from] ParamsError),
    /// A path in a manifest or plan is not a safe relative path.
    #[error(transparent)]
    Path(#[from] PathError),
    /// A manifest could not be built or decoded.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// A chunk could not be decoded or failed verification.
    #[error("chunk {chunk} of {path} (index {index}): {cause}")]
    Chunk {
        /// File the chunk belongs to.
        path: PathBuf,
        /// Position of the chunk in that file's chunk list.
        index: usize,
        /// The chunk's id.
        chunk: ChunkId,
        /// What went wrong.
        cause: Box<CodecError>,
    },
    /// The chunk encoder could not be set up (for example, a bad zstd level).
    #[error("cannot set up chunk encoding: {0}")]
    Encoder(Box<CodecError>),
    /// A sub-chunk delta or signature was malformed.
    #[error(transparent)]
    Patch(#[from] PatchError),
    /// The run would delete more than its [`crate::plan::DeleteLimit`] allows.
    #[error(transparent)]
    DeleteRefused(#[from] crate::plan::DeleteRefused),
    /// A chunk the plan relies on is neither on the receiver nor supplied.
    #[error("chunk {chunk} needed at offset {offset} of {path} is not available")]
    ChunkUnavailable {
        /// The file being rebuilt.
        path: PathBuf,
        /// Where in that file the chunk goes.
        offset: u64,
        /// The chunk's id.
        chunk: ChunkId,
    },
    /// A rebuilt file's content did not hash to what the plan promised.
    #[error("{path}: rebuilt content does not match the source's hash; nothing was replaced")]
    FileMismatch {
        /// The file being rebuilt.
        path: PathBuf,
    },
    /// A source file changed while it was being read.
    #[error("{path}: changed while being read; it was not sent")]
    SourceChanged {
        /// The source file.
        path: PathBuf,
    },
    /// Another xfer process has the state database open.
    #[error(
        "state database {path} is in use by another xfer process; try again when it ends \
         (to run two transfers of one source at once, give each its own --state-dir)"
    )]
    StateInUse {
        /// The database file.
        path: PathBuf,
    },
    /// The receiver's state database failed.
    #[error("state database {path}: {cause}")]
    State {
        /// The database file.
        path: PathBuf,
        /// What the database reported.
        cause: Box<redb::Error>,
    },
    /// A step a store-only server cannot apply to the tree it keeps.
    #[error("{path}: {reason}; the entry was not stored")]
    RepoEntry {
        /// The entry, relative to the pushed tree.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// Another transfer is writing this tree, a directory above it or one
    /// inside it (each transfer locks the tree it writes).
    #[error(
        "{path}: another xfer transfer is writing {holder} or a directory inside it; \
         try again when it ends"
    )]
    Busy {
        /// The tree that was to be written.
        path: PathBuf,
        /// The directory found locked.
        holder: PathBuf,
    },
    /// A path inside the receiver's reserved state directory.
    #[error("{path}: reserved for the receiver's own state; nothing may be written or deleted there")]
    Reserved {
        /// The refused path.
        path: PathBuf,
    },
    /// A path with a name in the receiver's namespace for temporaries
    /// (`.xfer-tmp.`, `.xfer-partial.`): no scan reports such a name, so no
    /// sender has one to send, and writing one could replace the temporary
    /// of a file being built.
    #[error("{path}: names starting with .xfer-tmp. or .xfer-partial. are the receiver's temporaries; nothing may be written there")]
    TempName {
        /// The refused path.
        path: PathBuf,
    },
    /// A path that would lead out of the tree through a symlink or a file.
    #[error("{path}: refused, {via} is not a directory of the tree (a symlink or a file)")]
    Escape {
        /// The refused path.
        path: PathBuf,
        /// The component that is not a real directory.
        via: PathBuf,
    },
    /// A hard link whose target does not hold the file the sender meant
    /// (its own write failed, or it changed since): the link is not made.
    #[error("{path}: not linked, {target} is not the file it should share (its transfer failed or it changed)")]
    LinkTarget {
        /// The link.
        path: PathBuf,
        /// Its target.
        target: PathBuf,
    },
    /// A chunk or file number the transfer never announced.
    #[error("no file {file} with need {need} is being received")]
    UnknownTransfer {
        /// The session's file number.
        file: u32,
        /// The need within it.
        need: usize,
    },
    /// The caller asked to stop (a signal) before the work was done.
    #[error("stopped on request")]
    Stopped,
    /// A history store object (pack, index, tree blob) is malformed or damaged.
    #[error("history store {path}: {cause}")]
    History {
        /// The store's directory or the object's file.
        path: PathBuf,
        /// What is wrong.
        cause: Box<crate::history::FormatError>,
    },
    /// A history store of a format this build does not read, or whose
    /// config or snapshot record does not parse.
    #[error("history store {path}: {reason}")]
    HistoryConfig {
        /// The file.
        path: PathBuf,
        /// What is wrong, and what to do.
        reason: String,
    },
    /// A snapshot selector that names no single snapshot.
    #[error("history store {path}, tree {tree}: {cause}")]
    SnapshotSelect {
        /// The store's directory.
        path: PathBuf,
        /// The tree whose snapshots were searched.
        tree: String,
        /// Why.
        cause: crate::history::select::SelectError,
    },
    /// A snapshot id to forget that names no snapshot, or several.
    #[error("history store {path}: {id} names no single snapshot; list the snapshots to see their ids")]
    UnknownSnapshot {
        /// The store's directory.
        path: PathBuf,
        /// The id given.
        id: String,
    },
    /// A chunk of a snapshot's file that neither the history store nor the
    /// mirror holds: the file cannot be restored.
    #[error(
        "{path}: chunk {chunk} is neither in the history store nor in the mirror; \
         the history is damaged and this file cannot be restored from this snapshot"
    )]
    HistoryDamaged {
        /// The file being restored.
        path: PathBuf,
        /// The missing chunk.
        chunk: ChunkId,
    },
    /// A request to the object store holding a history store failed.
    #[error("object store {url}: {cause}")]
    ObjectStore {
        /// The object's URL (or the store's).
        url: String,
        /// What the store said.
        cause: Box<object_store::Error>,
    },
    /// A server on an object store without a place for its audit log.
    #[error("the store {store} is on an object store, which keeps no local files: give the audit log's place (`xfer serve --audit-log FILE`)")]
    AuditLogPlace {
        /// The store's URL.
        store: String,
    },
    /// A history store URL that is none of the accepted forms.
    #[error("{url:?} is not a history store location: {reason}")]
    StoreUrl {
        /// The URL given.
        url: String,
        /// What is wrong, and the forms accepted.
        reason: String,
    },
    /// A writer that has had the history store open longer than half of
    /// prune's grace period (on an object store, where no lock protects
    /// it): data it counts on may since have been pruned.
    #[error("history store {path}: open for {age_secs} s, longer than half the prune grace of {grace_secs} s; open it again and retry")]
    HistoryStale {
        /// The store.
        path: PathBuf,
        /// How long it has been open.
        age_secs: u64,
        /// The prune grace period.
        grace_secs: u64,
    },
    /// A failure injected by a test at a numbered step.
    #[error("injected failure at step {step}")]
    Injected {
        /// The step that failed.
        step: u32,
    },
}

// errno values on Linux.
const ENOTDIR: i32 = 20;
const EISDIR: i32 = 21;
const ENAMETOOLONG: i32 = 36;

impl Error {
    /// Wraps an I/O error with the path it concerns.
    pub fn io(path: impl Into<PathBuf>, source: io::Error) -> Self {
        Error::Io { path: path.into(), cause: source }
    }

    /// Whether the error concerns one entry only (a source file that changed,
    /// a chunk that failed verification), so the rest of a transfer can go on.
    ///
    /// I/O errors that belong to one path count too: a directory this user
    /// may not write, a name too long for the filesystem, a file where a
    /// directory is expected. A full disk or a failing device does not:
    /// every entry after it would fail the same way.
    pub fn is_per_entry(&self) -> bool {
        match self {
            Error::SourceChanged { .. }
            | Error::FileMismatch { .. }
            | Error::Chunk { .. }
            | Error::ChunkUnavailable { .. }
            | Error::Reserved { .. }
            | Error::TempName { .. }
            | Error::Escape { .. }
            | Error::LinkTarget { .. }
            | Error::RepoEntry { .. }
            | Error::HistoryDamaged { .. } => true,
            Error::Io { cause, .. } => {
                cause.kind() == io::ErrorKind::PermissionDenied
                    || matches!(cause.raw_os_error(), Some(ENOTDIR | EISDIR | ENAMETOOLONG))
            }
            _ => false,
        }
    }

    /// Whether another transfer holds the same tree's state (its database
    /// lock dies with its process: nothing to clean up by hand).
    pub fn is_busy(&self) -> bool {
        match self {
            Error::Busy { .. } | Error::StateInUse { .. } => true,
            Error::State { cause, .. } => matches!(**cause, redb::Error::DatabaseAlreadyOpen),
            _ => false,
        }
    }

    /// Wraps a state database error with the database's path.
    pub(crate) fn state(path: impl Into<PathBuf>, err: impl Into<redb::Error>) -> Self {
        match err.into() {
            redb::Error::DatabaseAlreadyOpen => Error::StateInUse { path: path.into() },
            err => Error::State { path: path.into(), cause: Box::new(err) },
        }
    }
}

/// Attaches a path to I/O results.
pub(crate) trait IoContext<T> {
    fn at(self, path: impl Into<PathBuf>) -> Result<T>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn at(self, path: impl Into<PathBuf>) -> Result<T> {
        self.map_err(|e| Error::io(path, e))
    }
}
