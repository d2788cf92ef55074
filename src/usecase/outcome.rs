//! How a transfer ends: a [`Report`] of what it did, or a [`TransferError`]
//! saying why it stopped (with the report of what was done when it was
//! stopped on purpose: cancelled, or its window closed).

use std::time::Instant;

use thiserror::Error;
use xfer_protocol::msg::{StoreCosts, Summary};
use xfer_protocol::CloseCode;

use crate::fs::store::FailedEntry;
use crate::net::client::ConnectError;
use crate::net::link::WireBytes;
use crate::net::identity::Fingerprint;
use crate::net::Congestion;
use crate::session::SessionError;

/// Why a push or pull failed or stopped.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum TransferError {
    /// The server's key is not the pinned one (or none is pinned): if it is
    /// the server's key, pin it and run again.
    #[error("{}", crate::net::client::untrusted_message(.authority, .seen, .pinned))]
    UntrustedServer {
        /// The server.
        authority: String,
        /// What it presented.
        seen: Fingerprint,
        /// The key pinned for it: `None` for an unknown server, else the
        /// server's key has changed.
        pinned: Option<Fingerprint>,
    },
    /// Name resolution or connection setup failed.
    #[error("cannot reach {authority}: {reason}")]
    Connect {
        /// The server.
        authority: String,
        /// What failed.
        reason: String,
    },
    /// The session failed.
    #[error(transparent)]
    Session(#[from] SessionError),
    /// A local failure (scan, store, state, log) naming its path.
    #[error(transparent)]
    Local(#[from] crate::Error),
    /// A background task of this side failed before it finished.
    #[error("{what} failed: {reason}")]
    Task {
        /// The task: scanning the source, opening the store...
        what: &'static str,
        /// What ended it.
        reason: String,
    },
    /// An option this operation does not support.
    #[error("{0}")]
    Unsupported(&'static str),
    /// The caller cancelled; the files received whole were kept.
    #[error("cancelled; the files already received whole were kept, and the next run goes on from there")]
    Cancelled {
        /// What was done until then.
        report: Box<Report>,
    },
    /// The transfer's window closed; the files received whole were kept.
    #[error("the window closed; the files already received whole were kept, and the next run goes on from there")]
    WindowClosed {
        /// What was done until then.
        report: Box<Report>,
    },
    /// The transfer's window is closed and the options say not to wait.
    #[error("outside the transfer window (it opens {})", .opens_in_min.map_or_else(|| "never".to_string(), |m| format!("in {m} min")))]
    OutsideWindow {
        /// Minutes until it opens (`None`: never).
        opens_in_min: Option<u32>,
    },
    /// A tag breaks the rules (a tag is KEY=VALUE).
    #[error("{0}")]
    BadTag(String),
    /// A server URL that cannot be used.
    #[error("{0}")]
    BadUrl(String),
    /// Exclusion patterns given for a pull.
    #[error(
        "exclude patterns work on pushes only (a pull's source is scanned by the server, and the protocol \
         does not carry patterns)"
    )]
    PullFilter,
    /// A history request that cannot be done as asked: no snapshot
    /// matches, an id names several, an empty retention policy.
    #[error("{0}")]
    History(String),
}

impl TransferError {
    /// What the transfer did before it stopped, for a stop on purpose
    /// (cancelled, window closed).
    pub fn report(&self) -> Option<&Report> {
        match self {
            TransferError::Cancelled { report } | TransferError::WindowClosed { report } => Some(report),
            _ => None,
        }
    }

    /// Whether it stopped on purpose (cancelled, or its window closed),
    /// at a commit point.
    pub fn is_stopped(&self) -> bool {
        self.report().is_some()
    }

    /// The local error behind it (this side's scan, store, state or log),
    /// if that is what failed.
    pub fn local(&self) -> Option<&crate::Error> {
        match self {
            TransferError::Local(e) => Some(e),
            TransferError::Session(e) => e.local_error::<crate::Error>(),
            _ => None,
        }
    }

    /// Whether the destination stayed busy (another transfer writing it,
    /// or a server with too many sessions) for as long as the caller
    /// was willing to wait.
    pub fn is_busy(&self) -> bool {
        match self {
            TransferError::Session(SessionError::Peer { code: Some(CloseCode::Busy), .. }) => true,
            _ => self.local().is_some_and(crate::Error::is_busy),
        }
    }

    /// Whether the server could not be reached: its name does not
    /// resolve, or it did not answer in time.
    pub fn is_unreachable(&self) -> bool {
        matches!(self, TransferError::Connect { .. })
    }

    /// Whether a key was refused: the server's is not the one pinned for
    /// it (or none is), or the server does not admit this client's key
    /// for what it asked.
    pub fn is_untrusted(&self) -> bool {
        matches!(
            self,
            TransferError::UntrustedServer { .. }
                | TransferError::Session(SessionError::Peer { code: Some(CloseCode::Unauthorized), .. })
        )
    }

    /// Whether the caller asked for something malformed (a bad URL or
    /// tag, an option the operation does not take): nothing was done.
    pub fn is_usage(&self) -> bool {
        matches!(
            self,
            TransferError::BadUrl(_) | TransferError::BadTag(_) | TransferError::PullFilter | TransferError::Unsupported(_)
        )
    }

    /// The delete limit's refusal, if that is what stopped the run.
    pub fn delete_refused(&self) -> Option<&crate::plan::DeleteRefused> {
        match self {
            TransferError::Session(SessionError::DeleteRefused(refused))
            | TransferError::Local(crate::Error::DeleteRefused(refused)) => Some(refused),
            _ => None,
        }
    }
}

impl From<ConnectError> for TransferError {
    fn from(e: ConnectError) -> Self {
        match e {
            ConnectError::Untrusted { authority, seen, pinned } => {
                TransferError::UntrustedServer { authority, seen, pinned }
            }
            ConnectError::Unreachable { authority, reason } => TransferError::Connect { authority, reason },
            ConnectError::Refused(e) => TransferError::Session(e),
            ConnectError::Local(e) => TransferError::Local(e),
        }
    }
}

/// What a push or pull did: the `--json` summary.
#[derive(Clone, Debug, Default, serde::Serialize)]
#[non_exhaustive]
pub struct Report {
    /// Regular files in the source (pushes only: a pull's source is remote).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub files_scanned: Option<u64>,
    /// Bytes in the source's regular files (pushes only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes_scanned: Option<u64>,
    /// Chunks in the source's files (pushes only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chunks_total: Option<u64>,
    /// Files written on the receiver.
    pub files_changed: u64,
    /// Entries deleted on the receiver.
    pub files_deleted: u64,
    /// Chunks that travelled.
    pub chunks_sent: u64,
    /// Encoded bytes of those chunks: the data direction's payload.
    pub bytes_sent: u64,
    /// Bytes of the files written (their full size, however few travelled).
    pub bytes_written: u64,
    /// Of the chunks sent, those encoded as a delta against old bytes.
    pub chunks_delta: u64,
    /// Chunks the receiver took from what it already had.
    pub chunks_reused: u64,
    /// UDP payload bytes this side sent (QUIC headers and handshake included).
    pub wire_bytes_sent: u64,
    /// UDP payload bytes this side received.
    pub wire_bytes_received: u64,
    /// A dry run: the figures above say what a real run would send.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub dry_run: bool,
    /// zstd level the chunks were last encoded at (automatic compression
    /// adapts it to the link; absent without zstd or for a pull).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub zstd_level_last: Option<i32>,
    /// Highest zstd level used.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub zstd_level_max: Option<i32>,
    /// The congestion controller that paced what this side sent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub congestion: Option<Congestion>,
    /// Entries whose mode bits, owner, group or xattrs the receiver did not
    /// (or could not) apply as sent; it keeps them in its records and gives
    /// them back on a pull. Counted when written, not again on later runs.
    pub meta_kept: u64,
    /// What the server's history store cost the run (requests by kind and
    /// bytes each way), from a server that keeps its history in an object
    /// store or a `file://` store (`serve --store`); absent otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub store: Option<StoreCosts>,
    /// Wall time of the whole run.
    pub elapsed_s: f64,
    /// Entries skipped or failed, with the reason; the rest committed.
    pub failed: Vec<FailedEntry>,
}

impl Report {
    pub(crate) fn new(summary: &Summary, wire: WireBytes, failed: Vec<FailedEntry>, started: Instant) -> Self {
        Report {
            files_changed: summary.files_written,
            files_deleted: summary.deleted,
            chunks_sent: summary.chunks_received,
            bytes_sent: summary.bytes_received,
            bytes_written: summary.bytes_written,
            chunks_delta: summary.chunks_delta,
            chunks_reused: summary.chunks_reused,
            wire_bytes_sent: wire.sent,
            wire_bytes_received: wire.received,
            meta_kept: summary.meta_kept,
            elapsed_s: started.elapsed().as_secs_f64(),
            failed,
            ..Report::default()
        }
    }

    /// Whether some entries were skipped or failed (a partial transfer).
    pub fn is_partial(&self) -> bool {
        !self.failed.is_empty()
    }
}
