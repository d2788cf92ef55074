//! Chunk codecs: zstd, lz4, raw, the sub-chunk delta form, and zstd
//! streams that span the chunks of a data stream ([`stream`]).
//!
//! The sender turns each chunk it must send into an [`EncodedChunk`] with an
//! [`Encoder`]; the receiver turns it back with [`decode`], which bounds
//! every allocation by the declared length (itself capped at
//! [`MAX_CHUNK_LEN`]) and checks the result against the chunk id, so a
//! corrupt or hostile payload is an error, never a panic or a wrong file.
//! A [`Codec::ZstdStream`] chunk is first decoded by its data stream's
//! [`StreamDecoder`], in stream order, and then checked as a raw chunk.

use std::cell::RefCell;
use std::io;
use std::time::{Duration, Instant};

use thiserror::Error;
use xfer_protocol::codec::{CODEC_DELTA, CODEC_LZ4, CODEC_RAW, CODEC_ZSTD, CODEC_ZSTD_STREAM};

use crate::adapt::{LevelController, Observation, Step};
use crate::chunk::MAX_CHUNK_LEN;
use crate::hash::ChunkId;
use crate::patch::{self, PatchError, Signature};

mod stream;

use stream::StreamEncoder;
pub use stream::{StreamDecoder, LEVEL_HOLD, STREAM_WINDOW_LOG};

/// zstd level [`Compression::Auto`] starts a session at; it moves from
/// there as [`crate::adapt`] finds the link slower than the encoder.
///
/// Measured on source trees: level 1 ran ~390 MB/s at ratio 5.6, level 3
/// cost a third of that speed for 5% more ratio, so level 1 keeps a fast
/// link fed where the extra ratio would not pay for itself.
pub const DEFAULT_ZSTD_LEVEL: i32 = 1;

/// Least saving, in percent of the input, for [`Compression::Auto`] to keep
/// the zstd form: below it the receiver's decompression time buys almost
/// nothing, so the chunk is stored raw.
pub const MIN_SAVING_PERCENT: usize = 3;

/// How a chunk's payload is encoded; the tag is the protocol's codec
/// number ([`xfer_protocol::codec`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Codec {
    /// The bytes as they are.
    Raw = CODEC_RAW,
    /// One zstd frame.
    Zstd = CODEC_ZSTD,
    /// One lz4 block, without a length prefix (the length travels beside it).
    Lz4 = CODEC_LZ4,
    /// A [`patch`] against old bytes the receiver holds.
    Delta = CODEC_DELTA,
    /// The next piece of the zstd stream of the data stream the chunk
    /// travels on (feature `FEATURE_ZSTD_STREAM`).
    ZstdStream = CODEC_ZSTD_STREAM,
}

impl TryFrom<u8> for Codec {
    type Error = CodecError;

    fn try_from(tag: u8) -> Result<Self, CodecError> {
        match tag {
            CODEC_RAW => Ok(Codec::Raw),
            CODEC_ZSTD => Ok(Codec::Zstd),
            CODEC_LZ4 => Ok(Codec::Lz4),
            CODEC_DELTA => Ok(Codec::Delta),
            CODEC_ZSTD_STREAM => Ok(Codec::ZstdStream),
            _ => Err(CodecError::UnknownCodec(tag)),
        }
    }
}

impl From<Codec> for u8 {
    fn from(codec: Codec) -> u8 {
        codec as u8
    }
}

/// The user's choice of compression.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Compression {
    /// zstd from [`DEFAULT_ZSTD_LEVEL`], at a level the transport adapts
    /// to the link ([`Encoder::adapt`]), raw unless that saves
    /// [`MIN_SAVING_PERCENT`].
    #[default]
    Auto,
    /// zstd at `level`, raw if that does not shrink the chunk.
    Zstd {
        /// zstd compression level; negative levels are the fast modes.
        level: i32,
    },
    /// lz4, raw if that does not shrink the chunk.
    Lz4,
    /// No compression.
    Raw,
}

/// One chunk as it travels: codec tag, decoded length and payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EncodedChunk {
    /// How `payload` is encoded.
    pub codec: Codec,
    /// Length of the chunk once decoded, at most [`MAX_CHUNK_LEN`].
    pub decoded_len: u32,
    /// The encoded bytes.
    pub payload: Vec<u8>,
}

/// What went wrong encoding or decoding a chunk.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum CodecError {
    /// A codec tag this version does not know.
    #[error("unknown codec tag {0}")]
    UnknownCodec(u8),
    /// A zstd level zstd does not support.
    #[error("zstd level {level} outside {min}..={max}")]
    ZstdLevel {
        /// The requested level.
        level: i32,
        /// Lowest supported level.
        min: i32,
        /// Highest supported level.
        max: i32,
    },
    /// zstd could not set up a context (out of memory).
    #[error("cannot create a zstd context")]
    ZstdContext(#[source] io::Error),
    /// The declared length exceeds [`MAX_CHUNK_LEN`]; nothing was allocated.
    #[error("chunk {id}: declared length {len} exceeds {max}")]
    TooLarge {
        /// The chunk.
        id: ChunkId,
        /// Declared decoded length.
        len: u32,
        /// The limit.
        max: u32,
    },
    /// The zstd payload is corrupt or decodes past the declared length.
    #[error("chunk {id}: zstd payload does not decode within {decoded_len} bytes")]
    Zstd {
        /// The chunk.
        id: ChunkId,
        /// Declared decoded length.
        decoded_len: u32,
        /// zstd's complaint.
        #[source]
        source: io::Error,
    },
    /// The lz4 payload is corrupt or decodes past the declared length.
    #[error("chunk {id}: lz4 payload does not decode within {decoded_len} bytes")]
    Lz4 {
        /// The chunk.
        id: ChunkId,
        /// Declared decoded length.
        decoded_len: u32,
        /// lz4's complaint.
        #[source]
        source: lz4_flex::block::DecompressError,
    },
    /// A delta arrived but the caller has no base to apply it to.
    #[error("chunk {id}: delta payload without a base")]
    MissingBase {
        /// The chunk.
        id: ChunkId,
    },
    /// The delta payload is malformed or does not fit the base.
    #[error("chunk {id}: invalid delta")]
    Patch {
        /// The chunk.
        id: ChunkId,
        /// What was wrong with the patch.
        #[source]
        source: PatchError,
    },
    /// A [`Codec::ZstdStream`] chunk reached [`decode`]: only its data
    /// stream's [`StreamDecoder`] can decode it.
    #[error("chunk {id}: a zstd stream payload outside its stream")]
    OutsideStream {
        /// The chunk.
        id: ChunkId,
    },
    /// A zstd stream chunk declared longer than [`MAX_CHUNK_LEN`]; nothing
    /// was fed to the stream or allocated.
    #[error("zstd stream chunk: declared length {len} exceeds {max}")]
    StreamTooLarge {
        /// Declared decoded length.
        len: u32,
        /// The limit.
        max: u32,
    },
    /// A zstd stream payload did not decode to exactly its declared
    /// length: corrupt, out of order, or asking for too large a window.
    /// The stream is out of step from here on.
    #[error("zstd stream payload does not decode to its {decoded_len} bytes")]
    Stream {
        /// Declared decoded length.
        decoded_len: u32,
        /// What was wrong.
        #[source]
        source: io::Error,
    },
    /// The payload decoded to a different length than declared.
    #[error("chunk {id}: decoded {actual} bytes, declared {expected}")]
    Length {
        /// The chunk.
        id: ChunkId,
        /// Declared decoded length.
        expected: u32,
        /// Bytes actually decoded.
        actual: usize,
    },
    /// The decoded bytes are not the chunk they claim to be.
    #[error("chunk hash mismatch: expected {expected}, got {actual}")]
    HashMismatch {
        /// The id the chunk was sent under.
        expected: ChunkId,
        /// BLAKE3 of what was decoded.
        actual: ChunkId,
    },
}

/// Encodes chunks, reusing compression contexts across calls (a fresh zstd
/// context per chunk costs more than compressing a small chunk).
pub struct Encoder {
    compression: Compression,
    zstd: Option<zstd::bulk::Compressor<'static>>,
    /// For delta literals, created on first use.
    patch_zstd: Option<zstd::bulk::Compressor<'static>>,
    /// The zstd level now, and the highest used (`None` without zstd).
    level: Option<(i32, i32)>,
    /// [`Compression::Auto`]'s level controller and the window's figures.
    adaptive: Option<Adaptive>,
    /// The zstd stream of each data stream, by its index, made on first use.
    streams: Vec<StreamSlot>,
}

/// A data stream's zstd stream, as the encoder holds it.
enum StreamSlot {
    /// No chunk went into it yet.
    Unused,
    Open(Box<StreamEncoder>),
    /// zstd failed in it: what the context holds is unknown, so the data
    /// stream sends its chunks alone for the rest of the session.
    Broken,
}

/// A monotonic time source: the edges pass `std::time::Instant`'s `now`.
pub type Clock = fn() -> Instant;

/// What [`Compression::Auto`] measures of its own work between two calls of
/// [`Encoder::adapt`].
#[derive(Debug, Default)]
struct Adaptive {
    controller: LevelController,
    /// Times the encoding; the edge that owns the clock supplies it, since
    /// the core reads none.
    clock: Option<Clock>,
    input: u64,
    output: u64,
    time: Duration,
}

/// What the transport saw of the link over one window, for
/// [`Encoder::adapt`].
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct LinkWindow {
    /// The window's length.
    pub window: Duration,
    /// How long in it the send queue held chunks for the link.
    pub backlog: Duration,
    /// Payload bytes per second the link drained while it had a backlog.
    pub rate: f64,
    /// Least round trip seen on the path.
    pub base_rtt: Duration,
    /// The window's round trip ([`crate::adapt::link_bound`]).
    pub rtt: Duration,
}

impl std::fmt::Debug for Encoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Encoder").field("compression", &self.compression).finish_non_exhaustive()
    }
}

impl Encoder {
    /// An encoder for `compression`.
    ///
    /// # Errors
    ///
    /// [`CodecError::ZstdLevel`] for a level zstd does not support, and
    /// [`CodecError::ZstdContext`] if zstd cannot allocate its context.
    pub fn new(compression: Compression) -> Result<Self, CodecError> {
        let level = match compression {
            Compression::Auto => Some(DEFAULT_ZSTD_LEVEL),
            Compression::Zstd { level } => Some(level),
            Compression::Lz4 | Compression::Raw => None,
        };
        let zstd = match level {
            Some(level) => {
                let range = zstd::compression_level_range();
                if !range.contains(&level) {
                    return Err(CodecError::ZstdLevel { level, min: *range.start(), max: *range.end() });
                }
                Some(zstd::bulk::Compressor::new(level).map_err(CodecError::ZstdContext)?)
            }
            None => None,
        };
        let adaptive = (compression == Compression::Auto).then(Adaptive::default);
        Ok(Self { compression, zstd, patch_zstd: None, level: level.map(|l| (l, l)), adaptive, streams: Vec::new() })
    }

    /// This encoder, timing its work with `clock`. Without a clock
    /// [`Compression::Auto`] cannot weigh what a level costs, so it never
    /// raises the level.
    #[must_use]
    pub fn with_clock(mut self, clock: Clock) -> Self {
        if let Some(adaptive) = self.adaptive.as_mut() {
            adaptive.clock = Some(clock);
        }
        self
    }

    /// The compression this encoder applies.
    pub fn compression(&self) -> Compression {
        self.compression
    }

    /// The zstd level chunks are encoded at now, if zstd is in use.
    pub fn level(&self) -> Option<i32> {
        self.level.map(|(now, _)| now)
    }

    /// The highest zstd level used so far, if zstd is in use.
    pub fn max_level(&self) -> Option<i32> {
        self.level.map(|(_, max)| max)
    }

    /// Moves [`Compression::Auto`]'s level by what `link` and this
    /// encoder's own figures since the last call show (see
    /// [`crate::adapt`]); other compressions stay as they are.
    pub fn adapt(&mut self, link: LinkWindow) -> Option<Step> {
        let adaptive = self.adaptive.as_mut()?;
        let observation = Observation {
            input: std::mem::take(&mut adaptive.input),
            output: std::mem::take(&mut adaptive.output),
            encode_time: std::mem::take(&mut adaptive.time),
            window: link.window,
            backlog: link.backlog,
            link_rate: link.rate,
            base_rtt: link.base_rtt,
            rtt: link.rtt,
        };
        let step = adaptive.controller.observe(&observation);
        let level = adaptive.controller.level();
        if self.level() != Some(level) {
            // A level in MIN_LEVEL..=MAX_LEVEL always fits zstd's range;
            // should zstd refuse it anyway, the old level stays.
            if self.zstd.as_mut().is_some_and(|zstd| zstd.set_compression_level(level).is_ok()) {
                let max = self.max_level().unwrap_or(level).max(level);
                self.level = Some((level, max));
            }
        }
        Some(step)
    }

    /// `data` compressed as configured, or raw where compression does not
    /// pay (see [`Compression`]).
    ///
    /// # Panics
    ///
    /// If `data` is longer than [`MAX_CHUNK_LEN`]: the chunker never cuts
    /// such a chunk, and no receiver would accept it.
    pub fn encode(&mut self, data: &[u8]) -> EncodedChunk {
        self.timed(data, |encoder| encoder.compress(data))
    }

    /// `data` as the next chunk of the zstd stream of data stream `stream`
    /// ([`Codec::ZstdStream`]), for a session with `FEATURE_ZSTD_STREAM` in
    /// effect: the chunk finds matches in the chunks before it on that
    /// stream, and must travel on it, after them. Every chunk encoded here
    /// goes into the stream, compressible or not (zstd stores what it
    /// cannot shrink, at 3 bytes a block). Without zstd
    /// ([`Compression::Lz4`], [`Compression::Raw`]), for a `stream` past
    /// [`xfer_protocol::MAX_ZSTD_STREAMS`], or once zstd failed on that
    /// stream, as [`Encoder::encode`].
    ///
    /// # Panics
    ///
    /// If `data` is longer than [`MAX_CHUNK_LEN`].
    pub fn encode_on_stream(&mut self, stream: usize, data: &[u8]) -> EncodedChunk {
        self.timed(data, |encoder| encoder.stream_compress(stream, data).unwrap_or_else(|| encoder.compress(data)))
    }

    /// `data` in `stream`'s zstd stream, if it has one.
    fn stream_compress(&mut self, stream: usize, data: &[u8]) -> Option<(Codec, Vec<u8>)> {
        let level = self.level()?;
        if stream >= xfer_protocol::MAX_ZSTD_STREAMS {
            return None;
        }
        if self.streams.len() <= stream {
            self.streams.resize_with(stream + 1, || StreamSlot::Unused);
        }
        let slot = &mut self.streams[stream];
        if matches!(slot, StreamSlot::Unused) {
            *slot = StreamEncoder::new(level).map_or(StreamSlot::Broken, |encoder| StreamSlot::Open(Box::new(encoder)));
        }
        let StreamSlot::Open(encoder) = slot else { return None };
        encoder.set_level(level);
        match encoder.encode(data) {
            Ok(payload) if payload.len() <= xfer_protocol::MAX_PAYLOAD_LEN as usize => {
                Some((Codec::ZstdStream, payload))
            }
            // The context took the chunk, the receiver will not: never again.
            _ => {
                *slot = StreamSlot::Broken;
                None
            }
        }
    }

    /// Runs `compress` on `data`, timing it for [`Compression::Auto`].
    fn timed(&mut self, data: &[u8], compress: impl FnOnce(&mut Self) -> (Codec, Vec<u8>)) -> EncodedChunk {
        let decoded_len = chunk_len(data);
        let clock = self.adaptive.as_ref().and_then(|adaptive| adaptive.clock);
        let started = clock.map(|now| now());
        let (codec, payload) = compress(self);
        if let (Some(adaptive), Some(now), Some(started)) = (self.adaptive.as_mut(), clock, started) {
            adaptive.input += data.len() as u64;
            adaptive.output += payload.len() as u64;
            adaptive.time += now().saturating_duration_since(started);
        }
        EncodedChunk { codec, decoded_len, payload }
    }

    /// `data` compressed alone, or raw where compression does not pay.
    fn compress(&mut self, data: &[u8]) -> (Codec, Vec<u8>) {
        let compressed = match self.compression {
            Compression::Raw => None,
            // Keep zstd only below these sizes: writing into a buffer of
            // exactly that capacity makes zstd give up as soon as it overflows.
            Compression::Auto => self.zstd_within(data, data.len() * (100 - MIN_SAVING_PERCENT) / 100),
            Compression::Zstd { .. } => self.zstd_within(data, data.len().saturating_sub(1)),
            Compression::Lz4 => {
                let payload = lz4_flex::block::compress(data);
                (payload.len() < data.len()).then_some((Codec::Lz4, payload))
            }
        };
        compressed.unwrap_or_else(|| (Codec::Raw, data.to_vec()))
    }

    /// zstd form of `data` if it fits in `limit` bytes.
    fn zstd_within(&mut self, data: &[u8], limit: usize) -> Option<(Codec, Vec<u8>)> {
        let zstd = self.zstd.as_mut()?;
        if limit == 0 {
            return None;
        }
        let mut payload = Vec::with_capacity(limit);
        // An error here is nearly always "destination too small": store raw.
        zstd.compress_to_buffer(data, &mut payload).ok()?;
        // The allocator may round the capacity up; the limit is what counts.
        (payload.len() <= limit).then_some((Codec::Zstd, payload))
    }

    /// Like [`Encoder::encode`], but also tries a delta against the base
    /// `sig` describes, and keeps whichever payload is smaller.
    ///
    /// The delta's literal bytes are zstd level 3 whatever the
    /// [`Compression`]: they are few, and stored raw when that is smaller.
    ///
    /// # Panics
    ///
    /// If `data` is longer than [`MAX_CHUNK_LEN`].
    pub fn encode_with_base(&mut self, data: &[u8], sig: &Signature) -> EncodedChunk {
        match self.start_delta(data, sig) {
            DeltaStep::Done(chunk) => chunk,
            // No refinement round: the first diff as it stands.
            DeltaStep::Refine { pending, .. } => self.finish_delta(data, pending, None),
        }
    }

    /// [`Encoder::encode_with_base`] with a second, finer signature round,
    /// which the sender exchanges with the receiver as messages; this first
    /// half diffs `data` against `sig` and either finishes or asks for finer
    /// signatures of the base ranges the diff could not match.
    ///
    /// # Panics
    ///
    /// If `data` is longer than [`MAX_CHUNK_LEN`].
    pub fn start_delta(&mut self, data: &[u8], sig: &Signature) -> DeltaStep {
        let plain = self.encode(data);
        let patch = patch::diff(sig, data);
        if patch.copied_len() == 0 {
            // Nothing to copy: the delta would only add op overhead.
            return DeltaStep::Done(plain);
        }
        let gaps = patch::gaps(&patch, sig);
        let pending = PendingDelta { plain, patch, gaps };
        if pending.gaps.is_empty() {
            return DeltaStep::Done(self.finish_delta(data, pending, None));
        }
        DeltaStep::Refine { request: patch::encode_ranges(&pending.gaps), pending }
    }

    /// The second half: refines with the receiver's `fine` signatures (one
    /// per requested range; anything else is ignored) and keeps whichever of
    /// the delta and the plain encoding is smaller. `data` must be the bytes
    /// given to [`Encoder::start_delta`].
    ///
    /// # Panics
    ///
    /// If `data` differs in length from the bytes the delta was started on.
    pub fn finish_delta(&mut self, data: &[u8], pending: PendingDelta, fine: Option<&[Signature]>) -> EncodedChunk {
        let PendingDelta { plain, mut patch, gaps } = pending;
        if let Some(fine) = fine.filter(|fine| fine.len() == gaps.len() && !gaps.is_empty()) {
            patch = patch::refine(&patch, data, &gaps, fine);
        }
        if self.patch_zstd.is_none() {
            // Without a context the literals go raw; still a valid delta.
            self.patch_zstd = zstd::bulk::Compressor::new(xfer_protocol::codec::LITERAL_ZSTD_LEVEL).ok();
        }
        let delta = patch::encode_patch_with(&patch, data, self.patch_zstd.as_mut());
        if delta.len() < plain.payload.len() {
            EncodedChunk { codec: Codec::Delta, decoded_len: plain.decoded_len, payload: delta }
        } else {
            plain
        }
    }
}

/// Where [`Encoder::start_delta`] left a chunk.
#[derive(Debug)]
pub enum DeltaStep {
    /// Encoded; nothing more to ask.
    Done(EncodedChunk),
    /// Send `request` (encoded base ranges) to the receiver, then call
    /// [`Encoder::finish_delta`] with its finer signatures.
    Refine {
        /// The refinement request, as it goes on the wire.
        request: Vec<u8>,
        /// The state to finish with.
        pending: PendingDelta,
    },
}

/// A delta waiting for the receiver's finer signatures.
#[derive(Debug)]
pub struct PendingDelta {
    plain: EncodedChunk,
    patch: patch::Patch,
    gaps: Vec<patch::Gap>,
}

/// `data.len()` as a chunk length, enforcing [`MAX_CHUNK_LEN`].
fn chunk_len(data: &[u8]) -> u32 {
    match u32::try_from(data.len()) {
        Ok(len) if len <= MAX_CHUNK_LEN => len,
        _ => panic!("chunk of {} bytes exceeds MAX_CHUNK_LEN ({MAX_CHUNK_LEN})", data.len()),
    }
}

thread_local! {
    /// One zstd decompression context per thread: creating one per chunk
    /// costs about as much as decoding a small chunk.
    static ZSTD_DECODER: RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        const { RefCell::new(None) };
}

fn zstd_decompress(payload: &[u8], capacity: usize) -> io::Result<Vec<u8>> {
    ZSTD_DECODER.with(|cell| {
        let mut slot = cell.borrow_mut();
        let decoder = match &mut *slot {
            Some(decoder) => decoder,
            empty => empty.insert(zstd::bulk::Decompressor::new()?),
        };
        // The buffer has exactly `capacity` bytes of room: a frame that
        // expands further is an error, not a reallocation.
        decoder.decompress(payload, capacity)
    })
}

/// Decodes `chunk` and checks it is the chunk named `id`.
///
/// `base` is the receiver's old bytes the sender diffed against; only
/// [`Codec::Delta`] needs it. No allocation exceeds the declared length,
/// which is refused above [`MAX_CHUNK_LEN`] before anything is allocated.
///
/// # Errors
///
/// [`CodecError::TooLarge`], a decompression or patch error, a length other
/// than declared, [`CodecError::MissingBase`] for a delta without a base, and
/// [`CodecError::HashMismatch`] when the bytes are not the chunk `id`.
pub fn decode(chunk: &EncodedChunk, id: &ChunkId, base: Option<&[u8]>) -> Result<Vec<u8>, CodecError> {
    let id = *id;
    let decoded_len = chunk.decoded_len;
    if decoded_len > MAX_CHUNK_LEN {
        return Err(CodecError::TooLarge { id, len: decoded_len, max: MAX_CHUNK_LEN });
    }
    let len = decoded_len as usize;
    let payload = &chunk.payload[..];
    let data = match chunk.codec {
        Codec::Raw => {
            // Compare before copying, so a huge bogus payload is not cloned.
            if payload.len() != len {
                return Err(CodecError::Length { id, expected: decoded_len, actual: payload.len() });
            }
            payload.to_vec()
        }
        Codec::Zstd => zstd_decompress(payload, len).map_err(|source| CodecError::Zstd { id, decoded_len, source })?,
        Codec::Lz4 => {
            let mut out = vec![0u8; len];
            let written = lz4_flex::block::decompress_into(payload, &mut out).map_err(|source| CodecError::Lz4 {
                id,
                decoded_len,
                source,
            })?;
            out.truncate(written);
            out
        }
        Codec::Delta => {
            let base = base.ok_or(CodecError::MissingBase { id })?;
            patch::apply(payload, base, len).map_err(|source| CodecError::Patch { id, source })?
        }
        Codec::ZstdStream => return Err(CodecError::OutsideStream { id }),
    };
    if data.len() != len {
        return Err(CodecError::Length { id, expected: decoded_len, actual: data.len() });
    }
    let actual = ChunkId::of(&data);
    if actual != id {
        return Err(CodecError::HashMismatch { expected: id, actual });
    }
    Ok(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
        use rand::{rngs::SmallRng, RngCore, SeedableRng};
        let mut data = vec![0; len];
        SmallRng::seed_from_u64(seed).fill_bytes(&mut data);
        data
    }

    fn text_bytes(len: usize) -> Vec<u8> {
        let words = ["fn ", "let ", "self", ".len()", " = ", "value", "_id", "(&", ");\n", "    "];
        let mut out = Vec::with_capacity(len + 16);
        let mut i = 0usize;
        while out.len() < len {
            out.extend_from_slice(words[(i * 7 + i / 13) % words.len()].as_bytes());
            out.extend_from_slice(format!("{}", i % 97).as_bytes());
            i += 1;
        }
        out.truncate(len);
        out
    }

    fn all_compressions() -> [Compression; 5] {
        [
            Compression::Auto,
            Compression::Zstd { level: 1 },
            Compression::Zstd { level: 3 },
            Compression::Lz4,
            Compression::Raw,
        ]
    }

    #[test]
    fn codec_tag_roundtrip() {
        for codec in [Codec::Raw, Codec::Zstd, Codec::Lz4, Codec::Delta, Codec::ZstdStream] {
            assert_eq!(Codec::try_from(u8::from(codec)).unwrap(), codec);
        }
        assert!(matches!(Codec::try_from(5), Err(CodecError::UnknownCodec(5))));
    }

    #[test]
    fn encode_decode_roundtrip() {
        for compression in all_compressions() {
            let mut encoder = Encoder::new(compression).unwrap();
            for data in [text_bytes(100_000), random_bytes(70_000, 1), Vec::new(), vec![7]] {
                let chunk = encoder.encode(&data);
                let id = ChunkId::of(&data);
                assert_eq!(decode(&chunk, &id, None).unwrap(), data, "{compression:?}");
            }
        }
    }

    #[test]
    fn encode_picks_codec_by_saving() {
        let text = text_bytes(64 * 1024);
        let random = random_bytes(64 * 1024, 2);
        let expect = [
            (Compression::Auto, Codec::Zstd, Codec::Raw),
            (Compression::Zstd { level: 3 }, Codec::Zstd, Codec::Raw),
            (Compression::Lz4, Codec::Lz4, Codec::Raw),
            (Compression::Raw, Codec::Raw, Codec::Raw),
        ];
        for (compression, on_text, on_random) in expect {
            let mut encoder = Encoder::new(compression).unwrap();
            let chunk = encoder.encode(&text);
            assert_eq!(chunk.codec, on_text, "{compression:?}");
            if on_text != Codec::Raw {
                assert!(chunk.payload.len() < text.len() / 3);
            }
            let chunk = encoder.encode(&random);
            assert_eq!(chunk.codec, on_random, "{compression:?}");
            assert_eq!(chunk.payload, random);
        }
        // Auto wants 3%: 2% of compressible bytes in random data is not enough.
        let mut nearly_random = random_bytes(64 * 1024, 3);
        nearly_random[..1300].fill(0);
        let chunk = Encoder::new(Compression::Auto).unwrap().encode(&nearly_random);
        assert_eq!(chunk.codec, Codec::Raw);
        let chunk = Encoder::new(Compression::Zstd { level: 1 }).unwrap().encode(&nearly_random);
        assert_eq!(chunk.codec, Codec::Zstd);
    }

    #[test]
    fn encoder_rejects_bad_level() {
        assert!(matches!(
            Encoder::new(Compression::Zstd { level: 1000 }),
            Err(CodecError::ZstdLevel { level: 1000, .. })
        ));
    }

    #[test]
    fn delta_in_two_steps_refines() {
        let old = random_bytes(64 * 1024, 8);
        let mut new = old.clone();
        new[20_000..20_100].copy_from_slice(&random_bytes(100, 9));
        let sig = patch::signature(&old);
        let refine = |request: &[u8]| {
            let ranges = patch::decode_ranges(request, sig.base_len()).ok()?;
            Some(patch::fine_signatures(&old, &ranges))
        };
        let mut encoder = Encoder::new(Compression::Auto).unwrap();
        let unrefined = encoder.encode_with_base(&new, &sig);
        let DeltaStep::Refine { request, pending } = encoder.start_delta(&new, &sig) else {
            panic!("a 100-byte overwrite leaves a gap to refine");
        };
        let fine = refine(&request).unwrap();
        let two_steps = encoder.finish_delta(&new, pending, Some(&fine));
        assert_eq!(two_steps.codec, Codec::Delta);
        assert!(
            two_steps.payload.len() < unrefined.payload.len(),
            "{} vs {}",
            two_steps.payload.len(),
            unrefined.payload.len()
        );
        assert_eq!(decode(&two_steps, &ChunkId::of(&new), Some(&old)).unwrap(), new);
    }

    #[test]
    fn encode_with_base_prefers_delta() {
        let old = random_bytes(40_000, 4);
        let mut new = old[..32_000].to_vec();
        new[10_000..10_100].copy_from_slice(&random_bytes(100, 5));
        let sig = patch::signature(&old);
        let mut encoder = Encoder::new(Compression::Auto).unwrap();
        let chunk = encoder.encode_with_base(&new, &sig);
        assert_eq!(chunk.codec, Codec::Delta);
        assert!(chunk.payload.len() < 1200, "{}", chunk.payload.len());
        let id = ChunkId::of(&new);
        assert_eq!(decode(&chunk, &id, Some(&old)).unwrap(), new);
        assert!(matches!(decode(&chunk, &id, None), Err(CodecError::MissingBase { .. })));
        // The wrong base: out-of-bounds copies or a hash mismatch, never panic.
        assert!(decode(&chunk, &id, Some(&old[..5000])).is_err());
        assert!(matches!(decode(&chunk, &id, Some(&random_bytes(40_000, 6))), Err(CodecError::HashMismatch { .. })));

        // Unrelated base: plain encoding wins.
        let text = text_bytes(50_000);
        let chunk = encoder.encode_with_base(&text, &sig);
        assert_eq!(chunk.codec, Codec::Zstd);
        assert_eq!(decode(&chunk, &ChunkId::of(&text), None).unwrap(), text);
    }

    #[test]
    fn decode_refuses_oversized_declared_len() {
        for codec in [Codec::Raw, Codec::Zstd, Codec::Lz4, Codec::Delta] {
            let chunk = EncodedChunk { codec, decoded_len: MAX_CHUNK_LEN + 1, payload: vec![0; 16] };
            assert!(matches!(decode(&chunk, &ChunkId::of(b""), Some(b"")), Err(CodecError::TooLarge { .. })));
        }
    }

    #[test]
    fn decode_wrong_id_is_hash_mismatch() {
        let data = text_bytes(10_000);
        let wrong = ChunkId::of(b"something else");
        for compression in all_compressions() {
            let chunk = Encoder::new(compression).unwrap().encode(&data);
            match decode(&chunk, &wrong, None) {
                Err(CodecError::HashMismatch { expected, actual }) => {
                    assert_eq!(expected, wrong);
                    assert_eq!(actual, ChunkId::of(&data));
                }
                other => panic!("{compression:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn decode_corrupt_payload_is_error() {
        let data = text_bytes(20_000);
        let id = ChunkId::of(&data);
        for compression in [Compression::Auto, Compression::Lz4, Compression::Raw] {
            let chunk = Encoder::new(compression).unwrap().encode(&data);
            for seed in 0..200u64 {
                let mut bad = chunk.clone();
                let pos = (seed as usize * 7919) % bad.payload.len();
                bad.payload[pos] ^= 1 << (seed % 8);
                assert!(decode(&bad, &id, None).is_err(), "{compression:?} flip {pos}");
                bad.payload.truncate(pos);
                assert!(decode(&bad, &id, None).is_err(), "{compression:?} cut {pos}");
            }
        }
        // Garbage under every codec tag, with small and large declared lengths.
        for codec in [Codec::Raw, Codec::Zstd, Codec::Lz4, Codec::Delta] {
            for seed in 0..200u64 {
                let chunk = EncodedChunk {
                    codec,
                    decoded_len: [0, 10, 1000, MAX_CHUNK_LEN][seed as usize % 4],
                    payload: random_bytes(seed as usize, seed),
                };
                assert!(decode(&chunk, &id, Some(&data)).is_err());
            }
        }
        // Declared length differs from the payload's real length.
        let mut chunk = Encoder::new(Compression::Auto).unwrap().encode(&data);
        chunk.decoded_len += 1;
        assert!(matches!(decode(&chunk, &id, None), Err(CodecError::Length { .. })));
    }

    #[test]
    fn decode_refuses_bombs() {
        // Small payloads that expand far past the declared length.
        let zeros = vec![0u8; 1 << 20];
        let id = ChunkId::of(&zeros[..1000]);
        let zstd_bomb =
            EncodedChunk { codec: Codec::Zstd, decoded_len: 1000, payload: zstd::bulk::compress(&zeros, 1).unwrap() };
        assert!(zstd_bomb.payload.len() < 200);
        assert!(matches!(decode(&zstd_bomb, &id, None), Err(CodecError::Zstd { .. })));
        let lz4_bomb =
            EncodedChunk { codec: Codec::Lz4, decoded_len: 1000, payload: lz4_flex::block::compress(&zeros) };
        assert!(matches!(decode(&lz4_bomb, &id, None), Err(CodecError::Lz4 { .. })));
    }

    /// Similar small files, as a tree of source files holds: each alone
    /// compresses poorly, together well.
    fn similar_files(count: usize) -> Vec<Vec<u8>> {
        (0..count)
            .map(|i| {
                let mut file =
                    format!("// Licensed under the same terms as the rest of the tree ({i}).\n").into_bytes();
                file.extend_from_slice(&text_bytes(2000 + i * 37));
                file.extend_from_slice(&random_bytes(40, i as u64));
                file
            })
            .collect()
    }

    /// Encodes `chunks` on data streams in turn, as the sender does.
    fn encode_streams(encoder: &mut Encoder, chunks: &[Vec<u8>], streams: usize) -> Vec<(usize, EncodedChunk)> {
        chunks
            .iter()
            .enumerate()
            .map(|(i, chunk)| (i % streams, encoder.encode_on_stream(i % streams, chunk)))
            .collect()
    }

    /// Decodes `sent` with one decoder per stream, checking each chunk's id.
    fn decode_streams(sent: &[(usize, EncodedChunk)], chunks: &[Vec<u8>]) -> Result<Vec<Vec<u8>>, CodecError> {
        let mut decoders: Vec<StreamDecoder> = (0..4).map(|_| StreamDecoder::new().unwrap()).collect();
        let mut out = Vec::new();
        for ((stream, encoded), chunk) in sent.iter().zip(chunks) {
            let id = ChunkId::of(chunk);
            let bytes = match encoded.codec {
                Codec::ZstdStream => decoders[*stream].decode(&encoded.payload, encoded.decoded_len)?,
                _ => decode(encoded, &id, None)?,
            };
            let raw = EncodedChunk { codec: Codec::Raw, decoded_len: encoded.decoded_len, payload: bytes };
            out.push(decode(&raw, &id, None)?);
        }
        Ok(out)
    }

    #[test]
    fn stream_roundtrip_over_many_chunks() {
        let mut chunks = similar_files(300);
        chunks.push(Vec::new());
        chunks.push(random_bytes(200_000, 7));
        chunks.push(vec![0; MAX_CHUNK_LEN as usize]);
        chunks.push(random_bytes(MAX_CHUNK_LEN as usize, 8));
        for compression in all_compressions() {
            for streams in [1, 4] {
                let mut encoder = Encoder::new(compression).unwrap();
                let sent = encode_streams(&mut encoder, &chunks, streams);
                let uses_zstd = matches!(compression, Compression::Auto | Compression::Zstd { .. });
                assert!(sent.iter().all(|(_, c)| (c.codec == Codec::ZstdStream) == uses_zstd), "{compression:?}");
                assert_eq!(decode_streams(&sent, &chunks).unwrap(), chunks, "{compression:?} on {streams}");
                assert!(sent.iter().all(|(_, c)| c.payload.len() <= xfer_protocol::MAX_PAYLOAD_LEN as usize));
            }
        }
    }

    #[test]
    fn stream_compresses_similar_chunks_better_than_alone() {
        let chunks = similar_files(200);
        let mut encoder = Encoder::new(Compression::Auto).unwrap();
        let alone: usize = chunks.iter().map(|c| encoder.encode(c).payload.len()).sum();
        let sent = encode_streams(&mut Encoder::new(Compression::Auto).unwrap(), &chunks, 4);
        let streamed: usize = sent.iter().map(|(_, c)| c.payload.len()).sum();
        assert!(streamed * 2 < alone, "{streamed} bytes in streams, {alone} alone");
    }

    #[test]
    fn stream_level_change_starts_a_new_frame_the_decoder_follows() {
        // Big enough chunks that frames reach the hold and restart.
        let chunks: Vec<Vec<u8>> =
            (0..40).map(|i| text_bytes(1 << 20).into_iter().chain(random_bytes(64, i)).collect()).collect();
        let mut encoder = Encoder::new(Compression::Auto).unwrap();
        let mut sent = Vec::new();
        for (i, chunk) in chunks.iter().enumerate() {
            if i % 3 == 1 {
                // What the adaptive controller does, through its only door.
                let level = if encoder.level() == Some(1) { 3 } else { 1 };
                encoder.zstd.as_mut().unwrap().set_compression_level(level).unwrap();
                encoder.level = Some((level, 3));
            }
            sent.push((i % 2, encoder.encode_on_stream(i % 2, chunk)));
        }
        // Frames began again past the first chunk of each stream.
        let magic = [0x28, 0xb5, 0x2f, 0xfd];
        let restarts = sent[2..].iter().filter(|(_, c)| c.payload.windows(4).any(|w| w == magic)).count();
        assert!(restarts >= 2, "{restarts} frames restarted");
        assert_eq!(decode_streams(&sent, &chunks).unwrap(), chunks);
    }

    #[test]
    fn stream_out_of_order_or_missing_payload_is_an_error() {
        let chunks = similar_files(40);
        let sent = encode_streams(&mut Encoder::new(Compression::Auto).unwrap(), &chunks, 1);
        let wrong_order = |sent: &[(usize, EncodedChunk)], chunks: &[Vec<u8>]| match decode_streams(sent, chunks) {
            Err(CodecError::Stream { .. } | CodecError::HashMismatch { .. } | CodecError::Length { .. }) => {}
            other => panic!("{other:?}"),
        };
        // One payload missing: the ones after it reach back into it.
        let mut missing = sent.clone();
        missing.remove(10);
        let mut expected = chunks.clone();
        expected.remove(10);
        wrong_order(&missing, &expected);
        // Two payloads swapped.
        let mut swapped = sent.clone();
        swapped.swap(20, 21);
        let mut expected = chunks.clone();
        expected.swap(20, 21);
        wrong_order(&swapped, &expected);
        // A payload cut short, or with bytes added: its length is wrong.
        let mut decoder = StreamDecoder::new().unwrap();
        let (_, first) = &sent[0];
        assert!(matches!(
            decoder.decode(&first.payload[..first.payload.len() - 1], first.decoded_len),
            Err(CodecError::Stream { .. })
        ));
        let mut decoder = StreamDecoder::new().unwrap();
        assert!(matches!(decoder.decode(&first.payload, first.decoded_len - 1), Err(CodecError::Stream { .. })));
        let mut decoder = StreamDecoder::new().unwrap();
        assert!(matches!(decoder.decode(&first.payload, first.decoded_len + 1), Err(CodecError::Stream { .. })));
    }

    #[test]
    fn stream_refuses_a_window_past_the_limit_and_oversized_lengths() {
        use zstd::zstd_safe::{CCtx, CParameter};
        let data = text_bytes(10_000);
        let mut cctx = CCtx::create();
        cctx.set_parameter(CParameter::WindowLog(xfer_protocol::MAX_ZSTD_STREAM_WINDOW_LOG + 1)).unwrap();
        let mut payload = Vec::with_capacity(20_000);
        let mut input = zstd::zstd_safe::InBuffer::around(&data);
        let mut output = zstd::zstd_safe::OutBuffer::around(&mut payload);
        let end = zstd::zstd_safe::zstd_sys::ZSTD_EndDirective::ZSTD_e_flush;
        assert_eq!(cctx.compress_stream2(&mut output, &mut input, end).unwrap(), 0);
        let mut decoder = StreamDecoder::new().unwrap();
        match decoder.decode(&payload, chunk_len(&data)) {
            Err(CodecError::Stream { source, .. }) => assert!(source.to_string().contains("memory"), "{source}"),
            other => panic!("{other:?}"),
        }
        // Within the limit the same bytes decode.
        let mut encoder = Encoder::new(Compression::Auto).unwrap();
        let chunk = encoder.encode_on_stream(0, &data);
        assert_eq!(StreamDecoder::new().unwrap().decode(&chunk.payload, chunk.decoded_len).unwrap(), data);
        // A declared length past the chunk limit is refused before anything.
        assert!(matches!(
            StreamDecoder::new().unwrap().decode(&chunk.payload, MAX_CHUNK_LEN + 1),
            Err(CodecError::StreamTooLarge { .. })
        ));
        // Outside its stream a stream chunk does not decode.
        assert!(matches!(decode(&chunk, &ChunkId::of(&data), None), Err(CodecError::OutsideStream { .. })));
    }

    #[test]
    fn stream_decoder_survives_garbage_as_an_error() {
        for seed in 0..300u64 {
            let mut decoder = StreamDecoder::new().unwrap();
            let len = [0, 10, 1000, 70_000][seed as usize % 4];
            let _ = decoder.decode(&random_bytes(seed as usize * 3, seed), len);
            // Valid magic with random contents.
            let mut payload = vec![0x28, 0xb5, 0x2f, 0xfd];
            payload.extend(random_bytes(seed as usize, seed + 1000));
            if let Ok(bytes) = StreamDecoder::new().unwrap().decode(&payload, len) {
                assert_eq!(bytes.len(), len as usize);
            }
        }
    }
}
