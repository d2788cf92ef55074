//! Messages: the numbered registry, the body of each message and its limits.
//!
//! Every message is a struct whose fields are its body, in postcard's
//! encoding (SPEC.md, "Body encoding"). The single `messages!` table below
//! assigns each one its registry number ([`Kind`]); numbers are never reused
//! and the gaps between groups are reserved for later messages of the same
//! group.
//!
//! Paths (`path`, `dir`, `target`, listing names) are raw bytes, `/`
//! separated and relative to the session root. This crate checks only their
//! lengths; the receiver must validate them (no `..`, no empty or `.`
//! components, no leading `/`, no NUL) before touching the file system.

use serde::Deserialize;

use crate::error::DecodeError;

mod bodies;
mod types;
mod validate;

pub use bodies::*;
pub use types::*;
use validate::Validate;

// The codec registry lives in `codec`; these names stay for `ChunkData` users.
pub use crate::codec::{CODEC_DELTA, CODEC_LZ4, CODEC_RAW, CODEC_ZSTD};

/// Decodes one body: exactly `body`, no trailing bytes, then validated.
fn decode_body<'a, T>(kind: Kind, body: &'a [u8]) -> Result<T, DecodeError>
where
    T: Deserialize<'a> + Validate,
{
    let (msg, rest) = postcard::take_from_bytes::<T>(body).map_err(|source| DecodeError::Body { kind, source })?;
    if !rest.is_empty() {
        return Err(DecodeError::Invalid { kind, what: "trailing bytes after the body" });
    }
    msg.validate().map_err(|v| v.at(kind))?;
    Ok(msg)
}

// ---------------------------------------------------------------------------
// The registry

/// Defines [`Kind`] and [`Message`] from one table of `number Variant(Body)`.
macro_rules! messages {
    ($( $(#[$doc:meta])* $num:literal $variant:ident($body:ident), )*) => {
        /// A message's registry number, the frame's kind byte.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[repr(u8)]
        #[non_exhaustive]
        pub enum Kind {
            $( $(#[$doc])* $variant = $num, )*
        }

        impl Kind {
            /// Every kind, in number order.
            pub const ALL: &'static [Kind] = &[$(Kind::$variant),*];

            /// The kind numbered `n`, or `None` if `n` is unassigned or reserved.
            pub fn from_u8(n: u8) -> Option<Kind> {
                match n {
                    $( $num => Some(Kind::$variant), )*
                    _ => None,
                }
            }

            /// The message's name, as in SPEC.md.
            pub fn name(self) -> &'static str {
                match self {
                    $( Kind::$variant => stringify!($variant), )*
                }
            }
        }

        /// Any protocol message.
        #[derive(Clone, Debug, PartialEq, Eq)]
        pub enum Message {
            $( $(#[$doc])* $variant($body), )*
        }

        impl Message {
            /// The message's registry number.
            pub fn kind(&self) -> Kind {
                match self {
                    $( Message::$variant(_) => Kind::$variant, )*
                }
            }

            /// Checks the hard limits a decoder enforces, so a sender can
            /// catch a message its peer would refuse.
            ///
            /// # Errors
            ///
            /// [`DecodeError::Limit`] or [`DecodeError::Invalid`], as
            /// decoding the message would report.
            pub fn validate(&self) -> Result<(), DecodeError> {
                let checked = match self {
                    $( Message::$variant(m) => m.validate(), )*
                };
                checked.map_err(|v| v.at(self.kind()))
            }

            /// Appends the postcard body to `out`.
            pub(crate) fn encode_body(&self, out: Vec<u8>) -> Vec<u8> {
                let out = match self {
                    $( Message::$variant(m) => postcard::to_extend(m, out), )*
                };
                // Serializing plain structs into a Vec has no failure path:
                // no maps, no `serialize_any`, no custom errors.
                out.expect("invariant: postcard serializes message bodies into a Vec infallibly")
            }

            /// Decodes and validates the body of a `kind` message.
            pub(crate) fn decode_body(kind: Kind, body: &[u8]) -> Result<Message, DecodeError> {
                match kind {
                    $( Kind::$variant => decode_body::<$body>(kind, body).map(Message::$variant), )*
                }
            }
        }

        $(
            impl From<$body> for Message {
                fn from(m: $body) -> Message {
                    Message::$variant(m)
                }
            }
        )*
    };
}

// Numbers are never reused. Gaps are reserved for the group they sit in;
// 0 is reserved so that zeroed memory never parses; 128..=255 are reserved
// for messages of negotiated features (SPEC.md, "Versioning").
messages! {
    // 1..=7: session control.
    /// `Hello`: version and features, both ways, first.
    1 Hello(Hello),
    /// `Error`: fatal error, either way, any time.
    2 Error(ErrorMsg),
    // 8..=15: opening a transfer.
    /// `Open`: client asks for a push or pull of a tree.
    8 Open(Open),
    /// `Opened`: server answers with the receiver's root.
    9 Opened(Opened),
    // 16..=23: Merkle comparison.
    /// `ListDir`: sender asks for a directory's child digests.
    16 ListDir(ListDir),
    /// `Listing`: receiver's child digests.
    17 Listing(Listing),
    /// `GetFiles`: sender asks for files' chunk lists.
    18 GetFiles(GetFiles),
    /// `FileInfos`: receiver's chunk lists.
    19 FileInfos(FileInfos),
    // 24..=31: have/need.
    /// `HasChunks`: sender asks which chunks the receiver has.
    24 HasChunks(HasChunks),
    /// `Have`: receiver's bitmap answer.
    25 Have(Have),
    // 32..=47: entry changes, applied in order.
    /// `Mkdir`: create a directory.
    32 Mkdir(Mkdir),
    /// `WriteFile`: write a file from chunks.
    33 WriteFile(WriteFile),
    /// `MoreChunks`: continuation of a `WriteFile` chunk list.
    34 MoreChunks(MoreChunks),
    /// `Symlink`: create a symlink.
    35 Symlink(Symlink),
    /// `SetMeta`: set mode and mtime only.
    36 SetMeta(SetMeta),
    /// `Delete`: remove an entry.
    37 Delete(Delete),
    /// `Link`: make a name another hard link of a file in the tree.
    38 Link(Link),
    // 48..=63: chunk transfer and sub-chunk delta.
    /// `NeedChunk`: receiver asks for a chunk, maybe with a signature.
    48 NeedChunk(NeedChunk),
    /// `RefineRequest`: sender asks for finer signatures.
    49 RefineRequest(RefineRequest),
    /// `FineSignatures`: receiver's finer signatures.
    50 FineSignatures(FineSignatures),
    /// `ChunkData`: a chunk's bytes, on a data stream.
    51 ChunkData(ChunkData),
    // 64..=79: commit points and progress.
    /// `Commit`: sender asks for durability up to here.
    64 Commit(Commit),
    /// `Committed`: receiver confirms durability.
    65 Committed(Committed),
    /// `FileFailed`: receiver could not write one file.
    66 FileFailed(FileFailed),
    /// `Done`: sender has nothing more.
    67 Done(Done),
    /// `Summary`: receiver's final report.
    68 Summary(Summary),
    // 72..=79: the server's history.
    /// `SnapshotList`: server's snapshot records.
    72 SnapshotList(SnapshotList),
    /// `Forgotten`: server forgot snapshots.
    73 Forgotten(Forgotten),
    /// `Pruned`: server pruned its history.
    74 Pruned(Pruned),
    // 128..=255: messages of negotiated features.
    /// `StoreCosts`: what the server's history store cost the session
    /// (feature `FEATURE_STORE_COSTS`).
    128 StoreCosts(StoreCosts),
    /// `DryRun`: the sender only planned; the receiver records nothing
    /// (feature `FEATURE_DRY_RUN`).
    129 DryRun(DryRun),
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.name(), *self as u8)
    }
}

#[cfg(test)]
mod tests {
    use serde::Serialize;

    use super::validate::params;
    use super::*;
    use crate::fields;
    use crate::limits::MAX_CHUNK_LEN;

    #[test]
    fn kind_numbers_roundtrip() {
        for kind in Kind::ALL {
            assert_eq!(Kind::from_u8(*kind as u8), Some(*kind));
        }
        assert_eq!(Kind::from_u8(0), None);
        assert_eq!(Kind::from_u8(3), None);
        assert_eq!(Kind::from_u8(130), None);
        assert_eq!(Kind::ALL.len(), 31);
    }

    #[test]
    fn decode_body_refuses_trailing_bytes() {
        let err = Message::decode_body(Kind::Commit, &[1, 0]).unwrap_err();
        assert!(matches!(err, DecodeError::Invalid { kind: Kind::Commit, .. }), "{err}");
    }

    #[test]
    fn validate_refuses_bad_mtime_and_params() {
        let mtime = Mtime { secs: 0, nanos: 1_000_000_000 };
        let m = Message::Mkdir(Mkdir { path: b"a".to_vec(), mode: 0o755, mtime, attrs: Attrs::default() });
        assert!(matches!(m.validate(), Err(DecodeError::Invalid { .. })));
        let p = ChunkParams { min: 10, avg: 5, max: 20 };
        assert!(params(&p).is_err());
        let p = ChunkParams { min: 1, avg: 2, max: MAX_CHUNK_LEN + 1 };
        assert!(params(&p).is_err());
    }

    #[test]
    fn byte_fields_encode_like_sequences() {
        // The field helpers must not change the wire form serde would give.
        #[derive(Serialize)]
        struct Plain {
            a: Vec<u8>,
            b: Vec<Vec<u8>>,
            c: Option<Vec<u8>>,
        }
        #[derive(Serialize, Deserialize, PartialEq, Debug)]
        struct Helped {
            #[serde(with = "fields::bytes")]
            a: Vec<u8>,
            #[serde(with = "fields::byte_seq")]
            b: Vec<Vec<u8>>,
            #[serde(with = "fields::opt_bytes")]
            c: Option<Vec<u8>>,
        }
        let plain = Plain { a: vec![1, 2, 200], b: vec![vec![], vec![9; 130]], c: Some(vec![7]) };
        let helped = Helped { a: plain.a.clone(), b: plain.b.clone(), c: plain.c.clone() };
        let bytes = postcard::to_stdvec(&plain).unwrap();
        assert_eq!(bytes, postcard::to_stdvec(&helped).unwrap());
        assert_eq!(postcard::from_bytes::<Helped>(&bytes).unwrap(), helped);
    }
}
