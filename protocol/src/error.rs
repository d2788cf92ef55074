//! Decode errors and the close codes a peer sees.
//!
//! [`DecodeError`] says what was wrong with bytes that came off the wire and
//! in which message; [`CloseCode`] is the stable number that goes back to the
//! peer (in an `Error` message, a `FileFailed` message or the QUIC
//! application close code).

use std::fmt;
use std::io;

use thiserror::Error;

use crate::msg::Kind;

/// Why bytes from the peer are not a valid frame.
///
/// Every variant is a protocol violation by the peer (or corruption), except
/// that [`frame::check`](crate::frame::check) reports a merely incomplete
/// buffer as `Ok(None)`, never as an error.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The buffer ends inside the frame (only from [`parse`](crate::frame::parse),
    /// which expects a whole frame; [`check`](crate::frame::check) answers `Ok(None)`).
    #[error("frame ends early: need {need} bytes, have {have}")]
    UnexpectedEnd {
        /// Bytes the frame needs, header included.
        need: u64,
        /// Bytes available.
        have: u64,
    },
    /// A frame whose length field is 0, so it has no kind byte.
    #[error("empty frame (length 0, no kind byte)")]
    Empty,
    /// A kind number that is not in the registry (or is reserved).
    #[error("unknown message kind {0}")]
    UnknownKind(u8),
    /// A declared frame length over [`MAX_FRAME_LEN`](crate::MAX_FRAME_LEN),
    /// refused before any of it is buffered.
    #[error("frame of {len} bytes exceeds the maximum of {max}")]
    TooLarge {
        /// Declared length (bytes after the length field).
        len: u64,
        /// The maximum.
        max: u64,
    },
    /// The body does not decode as the message's fields.
    #[error("malformed {kind} body")]
    Body {
        /// The message being decoded.
        kind: Kind,
        /// What postcard found wrong.
        #[source]
        source: postcard::Error,
    },
    /// The body decodes but breaks a rule that is not a size limit
    /// (trailing bytes, nanoseconds over a second, chunk parameters out of
    /// order, ...).
    #[error("invalid {kind}: {what}")]
    Invalid {
        /// The message being decoded.
        kind: Kind,
        /// The rule broken.
        what: &'static str,
    },
    /// A field over one of the hard limits in [`limits`](crate::limits).
    #[error("{kind}: {what} is {len}, over the limit of {max}")]
    Limit {
        /// The message being decoded.
        kind: Kind,
        /// The field or count that is too large.
        what: &'static str,
        /// Its length or count.
        len: u64,
        /// The limit.
        max: u64,
    },
    /// The peer speaks another protocol version.
    #[error("protocol version mismatch: ours {ours}, theirs {theirs}")]
    Version {
        /// [`PROTOCOL_VERSION`](crate::PROTOCOL_VERSION).
        ours: u32,
        /// What the peer's `Hello` said.
        theirs: u32,
    },
}

impl DecodeError {
    /// The close code to send the peer when closing because of this error.
    pub fn close_code(&self) -> CloseCode {
        match self {
            DecodeError::TooLarge { .. } => CloseCode::TooLarge,
            DecodeError::Version { .. } => CloseCode::VersionMismatch,
            _ => CloseCode::ProtocolError,
        }
    }
}

impl From<DecodeError> for io::Error {
    fn from(err: DecodeError) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, err)
    }
}

/// Checks the version in a peer's `Hello` against [`PROTOCOL_VERSION`](crate::PROTOCOL_VERSION).
///
/// # Errors
///
/// [`DecodeError::Version`] when they differ.
pub fn check_version(theirs: u32) -> Result<(), DecodeError> {
    if theirs == crate::PROTOCOL_VERSION {
        Ok(())
    } else {
        Err(DecodeError::Version { ours: crate::PROTOCOL_VERSION, theirs })
    }
}

macro_rules! close_codes {
    ($( $(#[$doc:meta])* $name:ident = $num:literal => $reason:literal, )*) => {
        /// Why a session, a request or a file ended, as the peer sees it.
        ///
        /// The numbers are stable wire values (SPEC.md, "Close codes"): they
        /// travel in `Error.code`, `FileFailed.code` and as the QUIC
        /// application close code. A number is never reused for another
        /// meaning.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        #[repr(u32)]
        pub enum CloseCode {
            $( $(#[$doc])* $name = $num, )*
        }

        impl CloseCode {
            /// Every code, in number order.
            pub const ALL: &'static [CloseCode] = &[$(CloseCode::$name),*];

            /// The code with wire number `n`, or `None` for a number this
            /// version does not know (treat it like [`CloseCode::Internal`]).
            pub fn from_u32(n: u32) -> Option<CloseCode> {
                match n {
                    $( $num => Some(CloseCode::$name), )*
                    _ => None,
                }
            }

            /// Short human-readable text for the code.
            pub fn reason(self) -> &'static str {
                match self {
                    $( CloseCode::$name => $reason, )*
                }
            }
        }
    };
}

close_codes! {
    /// Finished normally.
    Ok = 0 => "ok",
    /// The peer broke the protocol: malformed frame, unknown kind, message
    /// illegal in the current state.
    ProtocolError = 1 => "protocol error",
    /// The peers share no protocol version.
    VersionMismatch = 2 => "protocol version mismatch",
    /// The peer's certificate is not authorised for this operation.
    Unauthorized = 3 => "unauthorized",
    /// The requested path does not exist.
    NotFound = 4 => "not found",
    /// The target is read-only (or pushes are not allowed).
    ReadOnly = 5 => "read-only",
    /// The path escapes the directory the server exports.
    OutsideAllowedPath = 6 => "path outside the allowed root",
    /// The server is busy (too many sessions, or the tree is locked).
    Busy = 7 => "busy",
    /// The receiver ran out of disk space.
    NoSpace = 8 => "no space left",
    /// Bytes did not hash to the id they were sent for.
    ChunkMismatch = 9 => "chunk hash mismatch",
    /// A frame, message or file is over a limit.
    TooLarge = 10 => "too large",
    /// The peer was silent for too long.
    Timeout = 11 => "timed out",
    /// The user cancelled.
    Cancelled = 12 => "cancelled",
    /// A bug or an unexpected local failure.
    Internal = 13 => "internal error",
}

impl From<CloseCode> for u32 {
    fn from(code: CloseCode) -> u32 {
        code as u32
    }
}

impl fmt::Display for CloseCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.reason(), *self as u32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_code_numbers_are_stable() {
        for (i, code) in CloseCode::ALL.iter().enumerate() {
            assert_eq!(*code as u32, i as u32);
            assert_eq!(CloseCode::from_u32(i as u32), Some(*code));
        }
        assert_eq!(CloseCode::Internal as u32, 13);
        assert_eq!(CloseCode::from_u32(14), None);
        assert_eq!(CloseCode::from_u32(u32::MAX), None);
    }

    #[test]
    fn check_version_refuses_other_versions() {
        assert!(check_version(crate::PROTOCOL_VERSION).is_ok());
        let err = check_version(2).unwrap_err();
        assert!(matches!(err, DecodeError::Version { ours: 3, theirs: 2 }));
        assert_eq!(err.close_code(), CloseCode::VersionMismatch);
    }
}
