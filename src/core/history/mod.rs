//! The history store's formats, without I/O: packs of compressed blobs
//! ([`pack`]), the index naming which pack holds which blob ([`index`]),
//! directory tree blobs built from and loaded into manifests ([`tree`]),
//! snapshot selectors and times ([`select`]) and prune planning
//! ([`prune`]). The `xfer` crate's `fs::history` reads and writes them.

pub mod index;
pub mod pack;
pub mod prune;
pub mod select;
pub mod tree;

use thiserror::Error;

use crate::hash::ChunkId;
use crate::manifest::{ManifestError, RelPath};

/// Why bytes of the history store were refused.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum FormatError {
    /// A pack or index whose sizes or offsets do not fit its length, or
    /// that ends early: damaged or not written by xfer.
    #[error("{what} is malformed: {reason}")]
    Malformed {
        /// Which kind of object (`pack`, `index`, `tree blob`).
        what: &'static str,
        /// What did not fit.
        reason: String,
    },
    /// A blob whose bytes do not hash to its id.
    #[error("blob {0} does not hold the bytes it is named by (damaged)")]
    Mismatch(ChunkId),
    /// A tree blob that does not decode.
    #[error("tree blob {id} does not decode: {cause}")]
    Tree {
        /// The blob.
        id: ChunkId,
        /// Why.
        cause: postcard::Error,
    },
    /// A path that is not in the snapshot.
    #[error("{0} is not in this snapshot")]
    NotFound(RelPath),
    /// A path that goes through something other than a directory.
    #[error("{0} is not a directory in this snapshot")]
    NotDir(RelPath),
    /// The loaded entries do not form a manifest.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// A blob too large to encode in this format.
    #[error("a blob of {0} bytes is larger than the history store takes")]
    TooLarge(usize),
}

pub(crate) fn malformed(what: &'static str, reason: impl Into<String>) -> FormatError {
    FormatError::Malformed { what, reason: reason.into() }
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// The 32 bytes a 64-digit hex string names, if it does.
pub fn unhex32(text: &str) -> Option<[u8; 32]> {
    if text.len() != 64 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// [`FormatError::Malformed`], for the store's own checks.
pub fn malformed_error(what: &'static str, reason: impl Into<String>) -> FormatError {
    malformed(what, reason)
}
