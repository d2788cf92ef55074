//! The codec registry: every number that says how bytes are encoded on the
//! wire (SPEC.md, "Codec registry"). Defined here once; the core's codecs
//! and patches use these values.

use crate::FEATURE_ZSTD_STREAM;

/// `ChunkData.codec`: the payload is the chunk's bytes.
pub const CODEC_RAW: u8 = 0;
/// `ChunkData.codec`: the payload is one zstd frame.
pub const CODEC_ZSTD: u8 = 1;
/// `ChunkData.codec`: the payload is one lz4 block without a length prefix.
pub const CODEC_LZ4: u8 = 2;
/// `ChunkData.codec`: the payload is a patch ([`crate::patch`]) against the
/// base the receiver described in `NeedChunk.signature`.
pub const CODEC_DELTA: u8 = 3;

/// `ChunkData.codec`, with feature [`FEATURE_ZSTD_STREAM`] in effect only:
/// the payload continues the zstd stream of the data stream the message
/// travels on, and decodes to exactly the chunk (SPEC.md, "Codec
/// registry").
pub const CODEC_ZSTD_STREAM: u8 = 4;

/// The codec numbers this version defines without features; any other is a
/// protocol error unless a negotiated feature defines it ([`codec_allowed`]).
pub const CODECS: [u8; 4] = [CODEC_RAW, CODEC_ZSTD, CODEC_LZ4, CODEC_DELTA];

/// Whether `codec` may appear in a `ChunkData` of a session whose features
/// in effect (the bits both peers set) are `features`.
pub fn codec_allowed(codec: u8, features: u64) -> bool {
    CODECS.contains(&codec) || (codec == CODEC_ZSTD_STREAM && features & FEATURE_ZSTD_STREAM != 0)
}

/// Patch literal section mode: the literal bytes as they are.
pub const LITERALS_RAW: u8 = 0;
/// Patch literal section mode: one zstd frame of the literal bytes.
pub const LITERALS_ZSTD: u8 = 1;
/// Patch literal section mode: one zstd frame of the literal bytes,
/// compressed with the patch's copied bytes (in output order) as a
/// raw-content dictionary: both ends have them before the literals are
/// decoded, and new lines of code or records resemble the ones around them.
pub const LITERALS_ZSTD_COPIES: u8 = 2;

/// The literal section modes this version defines.
pub const LITERAL_MODES: [u8; 3] = [LITERALS_RAW, LITERALS_ZSTD, LITERALS_ZSTD_COPIES];

/// zstd level xfer compresses patch literals with. A decoder accepts any
/// level; this value only makes xfer's own patches byte-for-byte
/// reproducible (the golden tests pin it).
///
/// Literals are few, so time goes to ratio. Measured on the source-tree
/// workload's delta phase (total wire MB / push seconds): level 3 6.86 /
/// 2.6 s, 6 6.66 / 2.4 s, 9 6.65 / 3.6 s, 19 6.60 / 6.1 s. Level 6 takes
/// nearly all the gain at no visible cost.
pub const LITERAL_ZSTD_LEVEL: i32 = 6;

/// Literal sections shorter than this are stored raw by xfer's encoder (a
/// zstd frame costs more); longer ones take whichever mode is smallest,
/// raw on a tie.
pub const MIN_COMPRESS_LEN: usize = 32;
