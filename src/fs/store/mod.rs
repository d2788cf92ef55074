//! The receiving side: a tree that is rebuilt file by file, atomically, from
//! chunks it already holds and chunks it is sent.
//!
//! [`Store`] is the seam between the engine and where the data lives: the
//! mirror tree here ([`MirrorStore`]), and later object stores.

mod lock;
mod mirror;
pub mod state;

pub(crate) use lock::canonical_missing;
pub use lock::TreeLock;
pub use mirror::{MetaPolicy, MirrorStore, NeedInfo, Put, Receiving, DEFAULT_BATCH_BYTES, DEFAULT_BATCH_FILES};

use serde::Serialize;

use crate::chunk::ChunkRef;
use crate::codec::EncodedChunk;
use crate::error::Result;
use crate::hash::ChunkId;
use crate::manifest::{Manifest, RelPath};
use crate::patch::Signature;
use crate::plan::Plan;

/// A chunk the receiver needs, with what it can offer to shrink it.
pub struct ChunkRequest<'a> {
    /// The source file the chunk belongs to.
    pub path: &'a RelPath,
    /// Its position in that file's chunk list.
    pub index: usize,
    /// Its byte offset in that file.
    pub offset: u64,
    /// Its id and length.
    pub chunk: ChunkRef,
    /// Signature of the receiver's old bytes around the same place, so the
    /// sender can send a delta against them.
    pub base: Option<&'a Signature>,
    /// The receiver's side of the refinement round: takes an encoded request
    /// for finer signatures of base ranges, returns them (see
    /// [`crate::codec::Encoder::encode_with_base_refined`]).
    pub refine: &'a dyn Fn(&[u8]) -> Option<Vec<Signature>>,
}

/// Where missing chunks come from: the sender, across whatever lies between.
pub trait ChunkSupply {
    /// The encoded bytes of the requested chunk.
    ///
    /// # Errors
    /// Whatever stops the sender from producing it (for example, the source
    /// file changed); the receiver then leaves the file as it was.
    fn fetch(&mut self, request: &ChunkRequest<'_>) -> Result<EncodedChunk>;
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
    /// Encoded bytes of those chunks (the data direction's payload).
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
}

/// A file the plan could not apply, with the reason.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FailedEntry {
    /// The file, relative to the root.
    pub path: String,
    /// What went wrong.
    pub error: String,
}

/// A receiving tree.
pub trait Store {
    /// Re-reads what changed behind xfer's back and returns the current tree.
    ///
    /// # Errors
    /// [`crate::Error`] if the root or the state database cannot be read.
    fn refresh(&mut self, checksum: bool) -> Result<&Manifest>;

    /// For each id, whether the store holds that chunk somewhere.
    ///
    /// # Errors
    /// [`crate::Error::State`] if the index cannot be read.
    fn has_chunks(&self, ids: &[ChunkId]) -> Result<Vec<bool>>;

    /// Applies `plan`; a file under its final name is always either its old
    /// or its new version, whatever fails.
    ///
    /// # Errors
    /// The first failure; files committed before it stay committed.
    fn apply(&mut self, plan: &Plan, supply: &mut dyn ChunkSupply) -> Result<ApplyReport>;
}
