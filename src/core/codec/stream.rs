//! The zstd stream codec ([`Codec::ZstdStream`]): one zstd stream per data
//! stream of a session, so a chunk finds matches in the chunks sent before
//! it on its stream (small files of one tree share their licence headers,
//! imports and idioms, which a chunk compressed alone cannot use).
//!
//! The sender's [`StreamEncoder`] flushes after each chunk: the payload
//! ends on a block boundary, and the receiver's [`StreamDecoder`], fed the
//! payloads of its stream in order, decodes each one to the whole chunk as
//! soon as it arrives. Both sides must see every payload of the stream in
//! the same order; a payload decoded out of place yields an error or bytes
//! that fail the chunk id check, never a wrong file.

use std::io;

use xfer_protocol::MAX_ZSTD_STREAM_WINDOW_LOG;
use zstd::zstd_safe::{self, zstd_sys::ZSTD_EndDirective, CCtx, CParameter, DCtx, DParameter, InBuffer, OutBuffer};

use super::CodecError;
use crate::chunk::MAX_CHUNK_LEN;

/// Window of the frames xfer's encoder writes, as a power of two: the
/// protocol's ceiling, 4 MiB.
///
/// Measured on 151 MB of crate sources (16,937 chunks, level 1, four
/// streams taking turns every 1 MiB): 26.33 MB sent with a 2 MiB window,
/// 26.19 MB with 4 MiB and 26.19 MB with 8 MiB; each chunk alone, 36.90 MB.
pub const STREAM_WINDOW_LOG: u32 = MAX_ZSTD_STREAM_WINDOW_LOG;

/// Chunk bytes a frame carries before a new level may end it.
///
/// zstd applies a level to a whole frame, and a new frame starts with an
/// empty window. In `tests/remote.rs`'s slow-link push (8 MiB of text at
/// 512 KiB/s), the adaptive level stepped from 1 to 4, and ending the frame
/// at each step sent 1,061,676 bytes against 1,052,516 at level 1 without
/// a restart: on a short push the lost window outweighs the level. Two
/// windows of input first make the restart a small share of the frame.
pub const LEVEL_HOLD: usize = 2 << STREAM_WINDOW_LOG;

/// zstd's complaint as an I/O error.
fn zstd_error(code: zstd_safe::ErrorCode) -> io::Error {
    io::Error::other(zstd_safe::get_error_name(code))
}

/// One data stream's zstd compressor.
pub(super) struct StreamEncoder {
    cctx: CCtx<'static>,
    /// Level of the frame being written.
    level: i32,
    /// Level the next chunk starts a frame at, when it differs.
    wanted: i32,
    /// Chunk bytes that went into the current frame (none: no frame).
    in_frame: usize,
}

impl StreamEncoder {
    /// A stream compressing at `level` (already checked against zstd's range).
    pub(super) fn new(level: i32) -> Result<Self, CodecError> {
        let context = || CodecError::ZstdContext(io::Error::other("zstd stream context"));
        let mut cctx = CCtx::try_create().ok_or_else(context)?;
        // Long-distance matching finds repeats anywhere in the window that
        // level 1's small hash table forgets. First pushes, local, against
        // the same build without it: 4.3% fewer bytes on 380 MB of crate
        // sources, 5.4% on 801 MB of shared libraries, 1.1% on 117 MB of
        // mostly gzipped docs, 37% on a 512 MiB file of repeated text
        // slices; user CPU 6-16% higher, peak RSS unchanged.
        let parameters = [
            CParameter::CompressionLevel(level),
            CParameter::WindowLog(STREAM_WINDOW_LOG),
            CParameter::EnableLongDistanceMatching(true),
        ];
        for parameter in parameters {
            cctx.set_parameter(parameter).map_err(|code| CodecError::ZstdContext(zstd_error(code)))?;
        }
        Ok(StreamEncoder { cctx, level, wanted: level, in_frame: 0 })
    }

    /// Compresses the chunks at `level` from the next frame on.
    ///
    /// zstd applies a new level only to a new frame (a level set in the
    /// middle of one waits for its end), so a chunk's payload ends the
    /// current frame first, once it carried [`LEVEL_HOLD`] bytes, and the
    /// window starts empty again.
    pub(super) fn set_level(&mut self, level: i32) {
        self.wanted = level;
    }

    /// `data` as the stream's next payload: the chunk compressed in the
    /// stream's context and flushed.
    ///
    /// # Errors
    /// zstd's failure (out of memory). The context is then unusable, and
    /// the stream must carry no more chunks of this codec: the receiver has
    /// not seen what went into it.
    pub(super) fn encode(&mut self, data: &[u8]) -> io::Result<Vec<u8>> {
        // A flushed chunk costs at most its bound; ending a frame adds a
        // last block header.
        let mut out = Vec::with_capacity(zstd_safe::compress_bound(data.len()) + 16);
        if self.wanted != self.level && (self.in_frame == 0 || self.in_frame >= LEVEL_HOLD) {
            if self.in_frame > 0 {
                self.drive(&[], &mut out, ZSTD_EndDirective::ZSTD_e_end)?;
                self.in_frame = 0;
            }
            self.cctx.set_parameter(CParameter::CompressionLevel(self.wanted)).map_err(zstd_error)?;
            self.level = self.wanted;
        }
        self.drive(data, &mut out, ZSTD_EndDirective::ZSTD_e_flush)?;
        // A frame with nothing in it still counts as begun.
        self.in_frame = self.in_frame.saturating_add(data.len()).max(1);
        Ok(out)
    }

    /// Feeds `data` with `directive` until zstd has taken and written it all.
    fn drive(&mut self, data: &[u8], out: &mut Vec<u8>, directive: ZSTD_EndDirective) -> io::Result<()> {
        let mut input = InBuffer::around(data);
        loop {
            let pos = out.len();
            let mut output = OutBuffer::around_pos(out, pos);
            let left = self.cctx.compress_stream2(&mut output, &mut input, directive).map_err(zstd_error)?;
            if left == 0 && input.pos() == data.len() {
                return Ok(());
            }
            out.reserve(left.max(1024));
        }
    }
}

/// One data stream's zstd decompressor, refusing frames whose window
/// exceeds [`MAX_ZSTD_STREAM_WINDOW_LOG`].
pub struct StreamDecoder {
    dctx: DCtx<'static>,
}

impl std::fmt::Debug for StreamDecoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamDecoder").finish_non_exhaustive()
    }
}

impl StreamDecoder {
    /// A decoder for a new stream.
    ///
    /// # Errors
    /// [`CodecError::ZstdContext`] if zstd cannot allocate its context.
    pub fn new() -> Result<Self, CodecError> {
        let mut dctx =
            DCtx::try_create().ok_or_else(|| CodecError::ZstdContext(io::Error::other("zstd stream context")))?;
        dctx.set_parameter(DParameter::WindowLogMax(MAX_ZSTD_STREAM_WINDOW_LOG))
            .map_err(|code| CodecError::ZstdContext(zstd_error(code)))?;
        Ok(StreamDecoder { dctx })
    }

    /// The chunk of `decoded_len` bytes that `payload`, the stream's next
    /// payload, holds. The caller checks it against the chunk's id.
    ///
    /// # Errors
    /// [`CodecError::StreamTooLarge`] above [`MAX_CHUNK_LEN`] (nothing is
    /// fed or allocated then), and [`CodecError::Stream`] when the payload
    /// is corrupt, asks for too large a window, or decodes to more or fewer
    /// bytes than declared. After any error the stream is out of step: the
    /// session cannot go on with it.
    pub fn decode(&mut self, payload: &[u8], decoded_len: u32) -> Result<Vec<u8>, CodecError> {
        if decoded_len > MAX_CHUNK_LEN {
            return Err(CodecError::StreamTooLarge { len: decoded_len, max: MAX_CHUNK_LEN });
        }
        let fail = |source| CodecError::Stream { decoded_len, source };
        // Exactly the declared room: a payload that decodes further is
        // caught below, not by growing the buffer.
        let mut out = vec![0u8; decoded_len as usize];
        let mut written = 0;
        let mut input = InBuffer::around(payload);
        while input.pos() < payload.len() {
            let before = (input.pos(), written);
            let mut output = OutBuffer::around_pos(&mut out[..], written);
            self.dctx.decompress_stream(&mut output, &mut input).map_err(|code| fail(zstd_error(code)))?;
            written = output.pos();
            if (input.pos(), written) == before {
                return Err(fail(io::Error::other("the payload decodes past its declared length")));
            }
        }
        if written < out.len() {
            return Err(fail(io::Error::other(format!("the payload decodes to {written} bytes only"))));
        }
        // Anything more the payload holds would come out now.
        let mut probe = [0u8; 1];
        let mut output = OutBuffer::around(&mut probe[..]);
        self.dctx.decompress_stream(&mut output, &mut InBuffer::around(&[])).map_err(|code| fail(zstd_error(code)))?;
        if output.pos() > 0 {
            return Err(fail(io::Error::other("the payload decodes past its declared length")));
        }
        Ok(out)
    }
}
