//! Content-defined chunking (FastCDC 2020) of byte streams of any size.
//!
//! A file is cut with parameters chosen from its size ([`ChunkParams::for_size`]),
//! so both ends cut identical chunks for identical content, and the parameters
//! are recorded next to every chunk list. Reading is streaming: memory is a
//! window of a few maximum-size chunks, whatever the file size.

use std::io::{self, Read};

use fastcdc::v2020::{self, MASKS};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::hash::{ChunkId, FileHash};

/// Smallest average chunk size xfer chooses, for files up to 24 MiB.
///
/// Chosen with `scripts/delta-workloads.sh` on the public workloads (delta
/// phase, total wire MB for source-tree / log-append / random-blob /
/// many-small / big-file-edits): avg = clamp(4 sqrt(size/1.5), 16K, 1M) sent
/// 6.66 / 2.23 / 0.086 / 0.98 / 0.22 = 10.17 MB; 2 sqrt with an 8K floor
/// 6.66 / 2.46 / 0.080 / 0.97 / 0.22 = 10.40; sqrt with a 4K floor 11.29;
/// 4 sqrt with a 32K floor 10.68; 8 sqrt with a 16K floor 10.74. With the
/// sub-chunk delta, small chunks no longer pay (averages of 2K, 8K and 32K
/// won only without it, in an earlier measurement on the same workloads),
/// and bigger ones mean fewer ids.
pub const AVG_SIZE_MIN: u32 = 16 * 1024;

/// Largest average chunk size xfer chooses (files over 24 GiB): a 100 GiB
/// file is about 100,000 chunks, not millions.
pub const AVG_SIZE_MAX: u32 = 1024 * 1024;

/// Largest chunk xfer ever cuts (4 x [`AVG_SIZE_MAX`]); nothing decodes past it.
pub const MAX_CHUNK_LEN: u32 = 4 * AVG_SIZE_MAX;

// The wire's limit, which cannot depend on this crate, must agree.
const _: () = assert!(MAX_CHUNK_LEN == xfer_protocol::MAX_CHUNK_LEN);

/// FastCDC parameters: power-of-two minimum, average and maximum chunk sizes.
///
/// Always valid once constructed: the fastcdc crate checks its bounds only in
/// debug builds, so xfer checks them itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "RawParams", into = "RawParams")]
pub struct ChunkParams {
    min: u32,
    avg: u32,
    max: u32,
}

#[derive(Serialize, Deserialize)]
struct RawParams {
    min: u32,
    avg: u32,
    max: u32,
}

impl TryFrom<RawParams> for ChunkParams {
    type Error = ParamsError;
    fn try_from(raw: RawParams) -> Result<Self, ParamsError> {
        ChunkParams::new(raw.min, raw.avg, raw.max)
    }
}

impl From<ChunkParams> for RawParams {
    fn from(params: ChunkParams) -> RawParams {
        RawParams { min: params.min, avg: params.avg, max: params.max }
    }
}

/// Why a set of chunk parameters was refused.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("invalid chunk parameters {min}/{avg}/{max}: {reason}")]
pub struct ParamsError {
    min: u32,
    avg: u32,
    max: u32,
    reason: &'static str,
}

impl ChunkParams {
    /// Validates `min < avg < max`, each a power of two within FastCDC's bounds
    /// and `max` at most [`MAX_CHUNK_LEN`].
    ///
    /// # Errors
    /// [`ParamsError`] naming the broken rule.
    pub fn new(min: u32, avg: u32, max: u32) -> Result<Self, ParamsError> {
        let fail = |reason| Err(ParamsError { min, avg, max, reason });
        if !(min.is_power_of_two() && avg.is_power_of_two() && max.is_power_of_two()) {
            return fail("each size must be a power of two");
        }
        if !(min < avg && avg < max) {
            return fail("sizes must satisfy min < avg < max");
        }
        if !(v2020::MINIMUM_MIN..=v2020::MINIMUM_MAX).contains(&min) {
            return fail("min out of FastCDC bounds (64 B to 1 MiB)");
        }
        if !(v2020::AVERAGE_MIN..=v2020::AVERAGE_MAX).contains(&avg) {
            return fail("avg out of FastCDC bounds (256 B to 4 MiB)");
        }
        if !(v2020::MAXIMUM_MIN..=MAX_CHUNK_LEN).contains(&max) {
            return fail("max out of bounds (1 KiB to 4 MiB)");
        }
        Ok(Self { min, avg, max })
    }

    /// The parameters xfer uses for a file of `size` bytes.
    ///
    /// The average is the power of two at or above `4 * sqrt(size / 1.5)`,
    /// clamped to [`AVG_SIZE_MIN`]..=[`AVG_SIZE_MAX`] (rsync also scales its
    /// block with the square root), with min = avg/4 and max = avg*4:
    ///
    /// | file size | min/avg/max |
    /// |---|---|
    /// | up to 24 MiB | 4K/16K/64K |
    /// | up to 96 MiB | 8K/32K/128K |
    /// | up to 384 MiB | 16K/64K/256K |
    /// | up to 1.5 GiB | 32K/128K/512K |
    /// | up to 6 GiB, 24 GiB | 64K/256K/1M, 128K/512K/2M |
    /// | above 24 GiB | 256K/1M/4M: a 100 GiB file is about 100,000 chunks |
    ///
    /// A file whose size crosses a boundary is cut anew, so the boundaries sit
    /// at 1.5 x powers of four rather than at the powers of two that disk
    /// images and preallocated files tend to have.
    pub fn for_size(size: u64) -> Self {
        let target = (4.0 * (size as f64 / 1.5).sqrt()).ceil() as u64;
        let avg = target.max(1).next_power_of_two().clamp(u64::from(AVG_SIZE_MIN), u64::from(AVG_SIZE_MAX)) as u32;
        Self { min: avg / 4, avg, max: avg * 4 }
    }

    /// Minimum chunk length in bytes (except a file's last chunk).
    pub fn min(&self) -> u32 {
        self.min
    }

    /// Target average chunk length in bytes.
    pub fn avg(&self) -> u32 {
        self.avg
    }

    /// Maximum chunk length in bytes.
    pub fn max(&self) -> u32 {
        self.max
    }

    /// Length of the next chunk at the start of `data`, given that `data`
    /// either holds at least `max` bytes or runs to the end of the stream.
    fn cut(&self, data: &[u8]) -> usize {
        // Normalization level 1, as fastcdc's `FastCDC::new`.
        let bits = self.avg.trailing_zeros() as usize;
        let (mask_s, mask_l) = (MASKS[bits + 1], MASKS[bits - 1]);
        let (_, len) = v2020::cut(
            data,
            self.min as usize,
            self.avg as usize,
            self.max as usize,
            mask_s,
            mask_l,
            mask_s << 1,
            mask_l << 1,
        );
        len
    }
}

/// A chunk of a file: its id and length. Offsets follow from the order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ChunkRef {
    /// BLAKE3 of the chunk's bytes.
    pub id: ChunkId,
    /// Length in bytes, at most [`MAX_CHUNK_LEN`].
    pub len: u32,
}

/// Cut points of an in-memory slice, as `(offset, len)` pairs.
pub fn cut_points(data: &[u8], params: ChunkParams) -> impl Iterator<Item = (usize, usize)> + '_ {
    let mut offset = 0;
    std::iter::from_fn(move || {
        if offset >= data.len() {
            return None;
        }
        let len = params.cut(&data[offset..]).max(1);
        let start = offset;
        offset += len;
        Some((start, len))
    })
}

/// The chunks and whole-file hash of a file, computed in one read.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileDigest {
    /// Total length in bytes.
    pub size: u64,
    /// BLAKE3 of all the bytes.
    pub hash: FileHash,
    /// Parameters the chunks were cut with.
    pub params: ChunkParams,
    /// The chunks, in file order.
    pub chunks: Vec<ChunkRef>,
}

/// Bytes read at a time.
const READ_PIECE: usize = 1 << 20;

/// Streams from this size up read on a second thread, which also computes
/// the whole-file hash, so chunking and chunk hashing keep one core busy.
/// Below it a thread costs more than it saves (50,000 small files).
const THREADED_FROM: u64 = 8 << 20;

/// Pieces the reader thread may run ahead: bounds memory to a few MiB.
const READ_AHEAD: usize = 4;

/// Chunks and hashes everything `reader` yields, handing each chunk's bytes to
/// `on_chunk` as it goes (so a caller can store or send it without a re-read).
///
/// `params` are usually `ChunkParams::for_size(expected size)`; a stream that
/// turns out longer or shorter still chunks correctly with them, and the
/// caller can compare `FileDigest::size` with what it expected. Memory stays
/// within a few maximum-size chunks plus a few MiB of read-ahead.
///
/// # Errors
/// Any I/O error from `reader`, or one returned by `on_chunk`.
pub fn digest_stream<R: Read + Send>(
    reader: R,
    params: ChunkParams,
    on_chunk: impl FnMut(u64, &[u8], ChunkId) -> io::Result<()>,
) -> io::Result<FileDigest> {
    digest_stream_sized(reader, params, u64::MAX, on_chunk)
}

/// [`digest_stream`] for a stream expected to hold `size_hint` bytes, which
/// picks between reading on this thread and on a second one.
///
/// # Errors
/// Any I/O error from `reader`, or one returned by `on_chunk`.
pub fn digest_stream_sized<R: Read + Send>(
    mut reader: R,
    params: ChunkParams,
    size_hint: u64,
    on_chunk: impl FnMut(u64, &[u8], ChunkId) -> io::Result<()>,
) -> io::Result<FileDigest> {
    let mut cutter = Cutter::new(params, on_chunk);
    let hash = if size_hint < THREADED_FROM {
        let mut hasher = blake3::Hasher::new();
        // Sized to the file: zeroing a whole piece per small file cost more
        // than reading it (4,634 files of a source tree, 4.6 GB of memset).
        let piece_len = usize::try_from(size_hint.saturating_add(1)).map_or(READ_PIECE, |n| n.min(READ_PIECE));
        let mut piece = vec![0u8; piece_len];
        loop {
            let n = read_some(&mut reader, &mut piece)?;
            if n == 0 {
                break;
            }
            hasher.update(&piece[..n]);
            cutter.feed(&piece[..n])?;
        }
        hasher.finalize()
    } else {
        std::thread::scope(|scope| {
            let (full_tx, full_rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(READ_AHEAD);
            let (empty_tx, empty_rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(READ_AHEAD + 2);
            let reader_thread = scope.spawn(move || -> io::Result<blake3::Hash> {
                let mut hasher = blake3::Hasher::new();
                loop {
                    let mut piece = empty_rx.try_recv().unwrap_or_else(|_| vec![0u8; READ_PIECE]);
                    piece.resize(READ_PIECE, 0);
                    let n = read_some(&mut reader, &mut piece)?;
                    if n == 0 {
                        return Ok(hasher.finalize());
                    }
                    piece.truncate(n);
                    hasher.update(&piece);
                    if full_tx.send(piece).is_err() {
                        // The chunker stopped on an error of its own.
                        return Ok(hasher.finalize());
                    }
                }
            });
            let mut fed = Ok(());
            for piece in full_rx {
                fed = cutter.feed(&piece);
                if fed.is_err() {
                    break;
                }
                let _ = empty_tx.try_send(piece);
            }
            let read = reader_thread.join().map_err(|_| io::Error::other("reader thread panicked"))?;
            fed.and(read)
        })?
    };
    let (size, chunks) = cutter.finish()?;
    Ok(FileDigest { size, hash: hash.into(), params, chunks })
}

/// Reads until `buf` is full or the stream ends; returns the bytes read.
fn read_some(reader: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// Cuts chunks from bytes fed in pieces, keeping only the uncut tail.
struct Cutter<F> {
    params: ChunkParams,
    window: Vec<u8>,
    start: usize,
    offset: u64,
    chunks: Vec<ChunkRef>,
    on_chunk: F,
}

impl<F: FnMut(u64, &[u8], ChunkId) -> io::Result<()>> Cutter<F> {
    fn new(params: ChunkParams, on_chunk: F) -> Self {
        let window = Vec::with_capacity(params.max as usize + READ_PIECE);
        Cutter { params, window, start: 0, offset: 0, chunks: Vec::new(), on_chunk }
    }

    fn feed(&mut self, piece: &[u8]) -> io::Result<()> {
        self.window.drain(..self.start);
        self.start = 0;
        self.window.extend_from_slice(piece);
        // A cut is final only when a whole maximum-size chunk is in view.
        while self.window.len() - self.start >= self.params.max as usize {
            self.cut_one()?;
        }
        Ok(())
    }

    fn cut_one(&mut self) -> io::Result<()> {
        let len = self.params.cut(&self.window[self.start..]).max(1);
        let bytes = &self.window[self.start..self.start + len];
        let id = ChunkId::of(bytes);
        (self.on_chunk)(self.offset, bytes, id)?;
        self.chunks.push(ChunkRef { id, len: len as u32 });
        self.offset += len as u64;
        self.start += len;
        Ok(())
    }

    fn finish(mut self) -> io::Result<(u64, Vec<ChunkRef>)> {
        while self.start < self.window.len() {
            self.cut_one()?;
        }
        // Kept for the whole session in the manifest: a one-chunk file's
        // list would otherwise hold room for four.
        self.chunks.shrink_to_fit();
        Ok((self.offset, self.chunks))
    }
}

/// [`digest_stream`] over an in-memory slice.
pub fn digest_bytes(data: &[u8]) -> FileDigest {
    let params = ChunkParams::for_size(data.len() as u64);
    let mut chunks = Vec::new();
    for (offset, len) in cut_points(data, params) {
        let bytes = &data[offset..offset + len];
        chunks.push(ChunkRef { id: ChunkId::of(bytes), len: len as u32 });
    }
    FileDigest { size: data.len() as u64, hash: FileHash::of(data), params, chunks }
}

#[cfg(test)]
mod tests {
    use super::*;
    // Golden cut points need bytes that never change.
    use crate::fixture::seeded;

    #[test]
    fn params_reject_invalid() {
        assert!(ChunkParams::new(2048, 8192, 32768).is_ok());
        assert!(ChunkParams::new(2000, 8192, 32768).is_err());
        assert!(ChunkParams::new(8192, 8192, 32768).is_err());
        assert!(ChunkParams::new(32, 128, 512).is_err());
        assert!(ChunkParams::new(1 << 20, 1 << 21, 1 << 24).is_err());
    }

    #[test]
    fn params_scale_with_size() {
        assert_eq!(ChunkParams::for_size(0).avg(), AVG_SIZE_MIN);
        assert_eq!(ChunkParams::for_size(24 << 20).avg(), 16384);
        assert_eq!(ChunkParams::for_size((24 << 20) + 1).avg(), 32768);
        assert_eq!(ChunkParams::for_size(64 << 20).avg(), 32768);
        assert_eq!(ChunkParams::for_size((64 << 20) + 1).avg(), 32768);
        assert_eq!(ChunkParams::for_size(512 << 20).avg(), 131072);
        assert_eq!(ChunkParams::for_size(100 << 30).avg(), AVG_SIZE_MAX);
        for size in [0u64, 1, 1 << 20, 1 << 30, 1 << 40] {
            let p = ChunkParams::for_size(size);
            assert_eq!(ChunkParams::new(p.min(), p.avg(), p.max()), Ok(p));
        }
    }

    #[test]
    fn params_deserialize_validates() {
        let bad = postcard::to_allocvec(&RawParams { min: 3, avg: 8192, max: 32768 }).unwrap();
        assert!(postcard::from_bytes::<ChunkParams>(&bad).is_err());
    }

    #[test]
    fn digest_stream_matches_slice_chunking() {
        let data = seeded(3 << 20, 7);
        let params = ChunkParams::new(1024, 4096, 16384).unwrap();
        // A reader that returns odd small pieces exercises the refill logic.
        struct Dribble<'a>(&'a [u8]);
        impl Read for Dribble<'_> {
            fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
                let n = out.len().min(self.0.len()).min(977);
                out[..n].copy_from_slice(&self.0[..n]);
                self.0 = &self.0[n..];
                Ok(n)
            }
        }
        let mut seen = Vec::new();
        let digest = digest_stream(Dribble(&data), params, |off, bytes, id| {
            seen.push((off as usize, bytes.len()));
            assert_eq!(id, ChunkId::of(bytes));
            Ok(())
        })
        .unwrap();
        let expected: Vec<_> = cut_points(&data, params).collect();
        assert_eq!(seen, expected);
        // The same through the reader thread.
        let threaded = digest_stream_sized(Dribble(&data), params, THREADED_FROM, |_, _, _| Ok(())).unwrap();
        assert_eq!(threaded, digest);
        assert_eq!(digest.hash, FileHash::of(&data));
        assert_eq!(digest.size, data.len() as u64);
        assert!(digest.chunks.iter().all(|c| c.len <= 16384));
    }

    #[test]
    fn cut_points_match_fastcdc_crate() {
        let data = seeded(2 << 20, 3);
        for params in [ChunkParams::for_size(0), ChunkParams::for_size(1 << 30)] {
            let ours: Vec<_> = cut_points(&data, params).collect();
            let theirs: Vec<_> = v2020::FastCDC::new(&data, params.min(), params.avg(), params.max())
                .map(|c| (c.offset, c.length))
                .collect();
            assert_eq!(ours, theirs);
        }
    }

    #[test]
    fn digest_empty_has_no_chunks() {
        let digest = digest_bytes(&[]);
        assert!(digest.chunks.is_empty());
        assert_eq!(digest.hash, FileHash::of(&[]));
    }

    #[test]
    fn insertion_at_front_changes_few_chunks() {
        let data = seeded(8 << 20, 11);
        let mut shifted = vec![0x5a];
        shifted.extend_from_slice(&data);
        let old = digest_bytes(&data);
        let new = digest_bytes(&shifted);
        let known: std::collections::HashSet<_> = old.chunks.iter().map(|c| c.id).collect();
        let fresh = new.chunks.iter().filter(|c| !known.contains(&c.id)).count();
        assert!(fresh <= 2, "{fresh} new chunks after a 1-byte insertion");
    }

    /// Golden cut points and ids for a seeded input: a change here changes the
    /// format (chunk ids on both ends) and needs a new manifest version.
    #[test]
    fn golden_cut_points() {
        let data = seeded(1 << 20, 42);
        let digest = digest_bytes(&data);
        let lens: Vec<u32> = digest.chunks.iter().map(|c| c.len).collect();
        let first_ids: Vec<String> = digest.chunks.iter().take(3).map(|c| c.id.to_string()).collect();
        check_golden(&lens, &first_ids, &digest.hash.to_string());
    }

    fn check_golden(lens: &[u32], ids: &[String], file: &str) {
        let golden = include_str!("../../tests/fixtures/golden_chunks.txt");
        let actual = format!("lens {lens:?}\nids {ids:?}\nfile {file}\n");
        assert_eq!(actual, golden, "chunk cut points or ids changed");
    }
}
