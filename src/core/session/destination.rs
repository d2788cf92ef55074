//! What the sessions need from the world: a receiving tree to rebuild files
//! in ([`Destination`]) and a source to read chunks from ([`ChunkReader`]).
//! The mirror tree implements the first, a source tree on disk the second;
//! other stores plug in the same way.

use serde::Serialize;

use crate::chunk::{ChunkRef, FileDigest};
use crate::codec::EncodedChunk;
use crate::hash::ChunkId;
use crate::manifest::{Manifest, Meta, RelPath};
use crate::patch::Signature;
use crate::plan::Op;
use xfer_protocol::msg;

/// An error from a store or reader, which says whether it concerns one
/// entry alone (the session then reports it and goes on) or stops the run.
pub trait EntryError: std::error::Error + Send + Sync + 'static {
    /// Whether the failure concerns one entry alone.
    fn is_per_entry(&self) -> bool;
}

/// Reads source chunk bytes for the sender.
pub trait ChunkReader {
    /// What stops a read.
    type Error: EntryError;

    /// The bytes of `chunk` at `offset` of the source file `path`, verified
    /// against the chunk's id.
    ///
    /// # Errors
    /// A per-entry error when the file no longer holds the chunk (the file
    /// is then not sent), others end the session.
    fn read(&mut self, path: &RelPath, offset: u64, chunk: ChunkRef) -> Result<Vec<u8>, Self::Error>;

    /// Says that `chunk` will be read soon, after those hinted before it:
    /// the sender hints each chunk as it is asked for and reads them in
    /// that order, so a reader on slow storage can fetch them together
    /// and ahead. A hint is only a hint: a reader may ignore it (the
    /// default), and reads come whether hinted or not.
    fn prefetch(&mut self, chunk: ChunkRef) {
        let _ = chunk;
    }

    /// What the history store this reader reads has cost so far, for a
    /// server that reports it (`StoreCosts`); `None` for any other source.
    fn store_costs(&self) -> Option<msg::StoreCosts> {
        None
    }
}

/// A receiving tree, rebuilt file by file as a session's steps arrive: a
/// file under its final name is always either its old or its new version.
///
/// Steps without data go through [`Destination::apply_op`]; a file is begun
/// with [`Destination::begin_file`], which says which chunks it lacks, fed
/// with [`Destination::put_chunk`], and sealed with
/// [`Destination::complete_file`] (or given up with
/// [`Destination::abandon_file`]); [`Destination::finish`] commits the rest.
pub trait Destination {
    /// What stops a step.
    type Error: EntryError;

    /// Re-reads what changed behind xfer's back and returns the current tree.
    ///
    /// # Errors
    /// A tree or record that cannot be read.
    fn refresh(&mut self, checksum: bool) -> Result<&Manifest, Self::Error>;

    /// The tree as last refreshed.
    fn manifest(&self) -> &Manifest;

    /// For each id, whether the tree holds that chunk somewhere.
    ///
    /// # Errors
    /// An index that cannot be read.
    fn has_chunks(&self, ids: &[ChunkId]) -> Result<Vec<bool>, Self::Error>;

    /// Applies a step that carries no file data: mkdir, symlink, link,
    /// delete or metadata. Deletes, links and metadata commit the files
    /// built so far first, so none may be in flight then.
    ///
    /// # Errors
    /// The step's failure; files committed before it stay committed.
    fn apply_op(&mut self, op: &Op) -> Result<(), Self::Error>;

    /// Whether the batch is due to commit: the next file begun once none is
    /// in flight commits it first.
    fn batch_full(&self) -> bool;

    /// Starts file number `file` (the session's name for it): takes the
    /// chunks the tree holds and returns the ones it needs.
    ///
    /// # Errors
    /// Failures starting the file.
    fn begin_file(
        &mut self,
        file: u32,
        path: &RelPath,
        meta: &Meta,
        digest: &FileDigest,
    ) -> Result<Vec<NeedInfo>, Self::Error>;

    /// Finer signatures of the base of need `need` of `file`, answering an
    /// encoded refinement request; `None` if the request or need is unknown.
    fn fine_signatures(&self, file: u32, need: usize, request: &[u8]) -> Option<Vec<Signature>>;

    /// Decodes and stores a chunk for need `need` of `file`. `with_base`
    /// says whether the sender was offered the need's signature.
    ///
    /// # Errors
    /// A chunk that does not decode to its id (per entry), failures
    /// writing it.
    fn put_chunk(
        &mut self,
        file: u32,
        need: usize,
        encoded: &EncodedChunk,
        with_base: bool,
    ) -> Result<Put, Self::Error>;

    /// Whether every need of `file` has been stored.
    fn file_ready(&self, file: u32) -> bool;

    /// Checks and seals a file whose needs are all stored; it reaches its
    /// final name at the next commit.
    ///
    /// # Errors
    /// Content that does not hash to what was promised (per entry).
    fn complete_file(&mut self, file: u32) -> Result<(), Self::Error>;

    /// Gives up on `file` for `reason`: the old version stays. Returns the
    /// needs of other files that waited for this one's chunks, which must
    /// now be asked for themselves.
    fn abandon_file(&mut self, file: u32, reason: &str) -> Vec<(u32, NeedInfo)>;

    /// Commits the rest (files still in flight are abandoned) and reports.
    /// `complete` says whether the sender said it was done (false after a
    /// cut connection, a cancel or a closing window): a store that keeps
    /// history marks what it records of such a run as partial.
    ///
    /// # Errors
    /// The first failure committing; what was committed before stays.
    fn finish(self, complete: bool) -> Result<ApplyReport, Self::Error>;

    /// Ends a dry run, which applied nothing: records nothing (no
    /// snapshot, no state) and reports only what the store cost.
    fn discard(self) -> ApplyReport
    where
        Self: Sized,
    {
        ApplyReport::default()
    }
}

/// A chunk a file being received lacks, as offered to the sender.
#[derive(Debug)]
pub struct NeedInfo {
    /// The need's number within its file (what [`Destination::put_chunk`] takes).
    pub need: usize,
    /// Position of the chunk in the file's chunk list.
    pub index: usize,
    /// Its byte offset in the file.
    pub offset: u64,
    /// Its id and length.
    pub chunk: ChunkRef,
    /// Signature of the receiver's old bytes resembling it, if any.
    pub signature: Option<Signature>,
}

/// What [`Destination::put_chunk`] made of a chunk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Put {
    /// Verified and written in place, and copied to other files in flight
    /// that needed it; those of them that now have every chunk are listed.
    Stored(Vec<u32>),
    /// A delta that did not rebuild the chunk (a false signature match, or
    /// old bytes that changed since): ask for it again without a base.
    RetryWithoutBase,
}

/// What applying a plan did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ApplyReport {
    /// Files rebuilt and renamed into place.
    pub files_written: u64,
    /// Chunks copied from files the receiver already had.
    pub chunks_reused: u64,
    /// Bytes of those chunks.
    pub bytes_reused: u64,
    /// Chunks fetched from the sender.
    pub chunks_fetched: u64,
    /// Bytes of those chunks as handed to [`Destination::put_chunk`]:
    /// encoded, but for zstd stream chunks, which the session decodes
    /// first (it counts the payloads for `Summary.bytes_received` itself).
    pub bytes_fetched: u64,
    /// Of those, chunks sent as a delta against the receiver's old bytes.
    pub chunks_delta: u64,
    /// Signature bytes offered to the sender (the reverse direction),
    /// refinement rounds included.
    pub signature_bytes: u64,
    /// Refinement requests the sender made (data direction).
    pub refine_request_bytes: u64,
    /// Entries removed (a directory counts once).
    pub entries_deleted: u64,
    /// Commit points passed: each one leaves the tree and state consistent.
    pub batches_committed: u64,
    /// Entries whose metadata this receiver did not (or could not) apply
    /// as sent, and kept in its records to give back.
    pub meta_kept: u64,
    /// Files left as they were because of a problem with that file alone.
    pub failed: Vec<FailedEntry>,
    /// What the history store cost, for a store that reports it.
    pub store: Option<msg::StoreCosts>,
}

/// A file the plan could not apply, with the reason.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FailedEntry {
    /// The file, relative to the root.
    pub path: String,
    /// What went wrong.
    pub error: String,
}
