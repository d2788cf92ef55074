//! Wire format of xfer: protocol version, limits and (from the wire issue on)
//! frames and messages. `SPEC.md` beside this crate is normative.
#![warn(missing_docs, unreachable_pub)]

/// The protocol version this crate speaks; also carried in the QUIC ALPN.
pub const PROTOCOL_VERSION: u32 = 1;

/// ALPN identifier of protocol version 1.
pub const ALPN: &[u8] = b"xfer/1";
