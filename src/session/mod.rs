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

mod receiver;
mod sender;
mod window;

pub use receiver::{
    OpenRequest, Receiver, MAX_FAILED_KEPT, MAX_HELD_CHUNK_REFS, MAX_QUEUED_ANSWERS, MAX_QUEUED_META_BYTES,
    MAX_QUEUED_OPS,
};
pub use sender::{ChunkReader, FileReader, Sender};
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
    /// A local failure (disk, state database).
    #[error(transparent)]
    Local(#[from] crate::Error),
}

impl SessionError {
    /// The close code to send the peer for this error.
    pub fn close_code(&self) -> CloseCode {
        match self {
            SessionError::Unexpected { .. } | SessionError::Protocol(_) => CloseCode::ProtocolError,
            SessionError::Peer { code, .. } => code.unwrap_or(CloseCode::Internal),
            SessionError::Local(_) => CloseCode::Internal,
        }
    }
}

fn protocol(what: impl std::fmt::Display) -> SessionError {
    SessionError::Protocol(what.to_string())
}

/// A peer's `Hello` with another version: `VersionMismatch`, as SPEC.md
/// says, so the peer can tell an old client from a broken one.
pub(crate) fn version_mismatch(e: DecodeError) -> SessionError {
    SessionError::Peer { code: Some(e.close_code()), message: e.to_string() }
}
