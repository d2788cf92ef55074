//! Push sessions as state machines with no sockets and no clock: each side
//! takes messages with `handle` and gives the ones to send with
//! `poll_transmit`. The transport moves frames; tests drive a pair in memory.
//!
//! A push: `Hello` both ways; `Open`/`Opened`; the sender finds what
//! differs (its memory of the receiver's tree when the root hashes agree,
//! else `ListDir`/`Listing` down differing directories and `GetFiles` for
//! differing files); then it streams the plan's entry changes and `Done`,
//! answering the receiver's `NeedChunk` (and `RefineRequest`) with
//! `ChunkData`; the receiver ends with `Summary`.
//!
//! Both sides are generic over where the data lives: the receiver drives a
//! [`Destination`] (the mirror tree, later other stores), the sender reads
//! through a [`ChunkReader`]. [`pair`] runs both in memory.

mod destination;
pub mod pair;
mod receiver;
mod sender;
#[cfg(test)]
mod tests;
mod window;

pub use destination::{ApplyReport, ChunkReader, Destination, EntryError, FailedEntry, NeedInfo, Put};
pub use receiver::{
    OpenRequest, Opener, Receiver, MAX_FAILED_KEPT, MAX_HELD_CHUNK_REFS, MAX_QUEUED_ANSWERS, MAX_QUEUED_META_BYTES,
    MAX_QUEUED_OPS,
};
pub use sender::{hello, root_hash, Sender, SenderConfig, StreamTurns, WalkedSource, STREAM_RUN};
pub use window::{
    Limits, WindowEstimate, MAX_FILES_IN_FLIGHT, MAX_OUTSTANDING_BYTES, MAX_OUTSTANDING_CHUNKS, MAX_REQUEST_WINDOW,
    MIN_FILES_IN_FLIGHT, MIN_OUTSTANDING_BYTES, MIN_OUTSTANDING_CHUNKS, MIN_REQUEST_WINDOW,
};

use thiserror::Error;
use xfer_protocol::{CloseCode, DecodeError, Kind};

/// Why a session stopped.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum SessionError {
    /// The peer sent a message the session cannot take now.
    #[error("unexpected {kind:?} from the peer while {state}")]
    Unexpected {
        /// The message's kind.
        kind: Kind,
        /// What the session was doing.
        state: &'static str,
    },
    /// The peer sent something malformed or inconsistent.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The session was refused or closed with an error, by the peer or by
    /// this side for the peer to see; the message says why and what to do.
    #[error("{message}")]
    Peer {
        /// The peer's close code.
        code: Option<CloseCode>,
        /// The peer's explanation.
        message: String,
    },
    /// The run would delete more than its limit allows; nothing of it was
    /// changed.
    #[error(transparent)]
    DeleteRefused(#[from] crate::plan::DeleteRefused),
    /// A local failure (disk, state database): the store's or reader's own
    /// error, which the edge that made it can downcast.
    #[error(transparent)]
    Local(Box<dyn std::error::Error + Send + Sync>),
}

impl SessionError {
    /// The close code to send the peer for this error.
    pub fn close_code(&self) -> CloseCode {
        match self {
            SessionError::Unexpected { .. } | SessionError::Protocol(_) => CloseCode::ProtocolError,
            SessionError::Peer { code, .. } => code.unwrap_or(CloseCode::Internal),
            SessionError::DeleteRefused(_) | SessionError::Local(_) => CloseCode::Internal,
        }
    }

    /// A local failure from a store or reader.
    pub fn local(error: impl std::error::Error + Send + Sync + 'static) -> SessionError {
        SessionError::Local(Box::new(error))
    }

    /// The local failure, if it is one of type `E`.
    pub fn local_error<E: std::error::Error + 'static>(&self) -> Option<&E> {
        match self {
            SessionError::Local(e) => e.downcast_ref(),
            _ => None,
        }
    }
}

/// Data streams a sender spreads its answers over ([`Sender::poll_data`]
/// says which one each takes), so one lost packet stalls only a share.
///
/// `scripts/bench/sweep.sh` with 1, 2, 4 and 8 (run 20261127-090232, the
/// median of two rounds) found no difference beyond noise: a 268 MB
/// incompressible push at 100 Mbit/s took 24.19, 24.13, 24.25 and 24.14 s,
/// and uncapped 1.98, 1.90, 1.92 and 1.86 s. That link loses packets only
/// at tbf's queue; with random loss, which the bench machine cannot make,
/// one stream would stall all chunk data behind each lost packet, so a few
/// streams are kept at no measured cost.
pub const DATA_STREAMS: usize = 4;

// Every data stream may carry zstd stream chunks.
const _: () = assert!(DATA_STREAMS <= xfer_protocol::MAX_ZSTD_STREAMS);

fn protocol(what: impl std::fmt::Display) -> SessionError {
    SessionError::Protocol(what.to_string())
}

/// This side's agent string in `Hello`. The core crate and the `xfer`
/// crate share one version number.
const AGENT: &str = concat!("xfer/", env!("CARGO_PKG_VERSION"));

/// A peer's `Hello` with another version: `VersionMismatch`, as SPEC.md
/// says, so the peer can tell an old client from a broken one.
pub fn version_mismatch(e: DecodeError) -> SessionError {
    SessionError::Peer { code: Some(e.close_code()), message: e.to_string() }
}
