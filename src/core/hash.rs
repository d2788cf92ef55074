//! Content identities: BLAKE3 digests of chunks, files and directory trees.

use std::fmt;

use serde::{Deserialize, Serialize};

macro_rules! digest_newtype {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        pub struct $name(pub [u8; 32]);

        impl $name {
            /// The digest of `bytes` (SPEC.md, "Digests": plain BLAKE3-256).
            pub fn of(bytes: &[u8]) -> Self {
                Self(xfer_protocol::digest::content_hash(bytes))
            }

            /// The raw 32 digest bytes.
            pub fn as_bytes(&self) -> &[u8; 32] {
                &self.0
            }
        }

        impl From<blake3::Hash> for $name {
            fn from(hash: blake3::Hash) -> Self {
                Self(*hash.as_bytes())
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self)
            }
        }

        impl fmt::Display for $name {
            /// The first 8 bytes in hex: enough to tell digests apart in logs.
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                for byte in &self.0[..8] {
                    write!(f, "{byte:02x}")?;
                }
                Ok(())
            }
        }
    };
}

digest_newtype!(
    /// BLAKE3 of a chunk's uncompressed bytes: the chunk's name everywhere.
    ChunkId
);
digest_newtype!(
    /// BLAKE3 of a whole file's bytes.
    FileHash
);
digest_newtype!(
    /// Merkle hash of a directory: its entries' names, metadata and content.
    TreeHash
);
