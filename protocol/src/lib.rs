//! Wire format of xfer: frames, messages, limits, close codes, the codec
//! registry, the delta formats and the digests both ends compute.
//! `SPEC.md` beside this crate is normative; this crate implements it.
//!
//! The crate is pure: no I/O, no async. A reader feeds its buffer to
//! [`frame::check`] and [`frame::parse`]; a writer appends frames with
//! [`frame::encode`].
//!
//! ```
//! use xfer_protocol::{frame, Message, msg::Commit};
//!
//! let mut buf = Vec::new();
//! frame::encode(&Message::Commit(Commit { seq: 7 }), &mut buf);
//! let n = frame::check(&buf).unwrap().expect("a whole frame");
//! assert_eq!(frame::parse(&buf[..n]).unwrap(), Message::Commit(Commit { seq: 7 }));
//! ```
#![warn(missing_docs, unreachable_pub)]

pub mod codec;
pub mod digest;
pub mod error;
mod fields;
pub mod frame;
pub mod keys;
pub mod limits;
pub mod msg;
pub mod patch;
pub mod varint;

pub use error::{check_version, CloseCode, DecodeError};
pub use limits::*;
pub use msg::{Kind, Message};

/// The protocol version this crate speaks; also carried in the QUIC ALPN.
pub const PROTOCOL_VERSION: u32 = 3;

/// ALPN identifier of protocol version 3.
pub const ALPN: &[u8] = b"xfer/3";

/// Feature bit: the server reports what its object store cost the
/// session in a `StoreCosts` message (SPEC.md, "Store costs").
pub const FEATURE_STORE_COSTS: u64 = 1;

/// Feature bit: a push's sender may end a dry run with `DryRun` instead
/// of `Done`, and the receiver then records nothing (SPEC.md, "Dry run").
pub const FEATURE_DRY_RUN: u64 = 2;

/// Feature bit: chunks may be compressed as one zstd stream per data
/// stream (`ChunkData.codec` 4, SPEC.md, "Codec registry"), so a chunk
/// finds matches in the chunks sent before it on its stream.
pub const FEATURE_ZSTD_STREAM: u64 = 4;

/// `Hello.features` bits defined by this version.
pub const KNOWN_FEATURES: u64 = FEATURE_STORE_COSTS | FEATURE_DRY_RUN | FEATURE_ZSTD_STREAM;
