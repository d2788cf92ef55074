//! Reading a snapshot's chunks for a restore: from the history store if
//! it holds them, else from the mirror tree where the state database says
//! a file holds them; always verified against their id.

use std::borrow::Borrow;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::objects::Fetch;
use super::History;
use crate::history::pack::PackEntry;
use crate::chunk::ChunkRef;
use crate::error::{Error, Result};
use crate::fs::store::state::ChunkLookup;
use crate::hash::ChunkId;
use crate::manifest::RelPath;
use crate::session::ChunkReader;

/// A [`ChunkReader`] over one snapshot: the history store, then the mirror
/// (the file at the same path first, then wherever the state database says
/// the chunk sits).
pub struct SnapshotReader<H: Borrow<History> = History> {
    history: H,
    /// The mirror tree the snapshot was taken of.
    mirror: PathBuf,
    /// Where the manifest being sent starts within the tree (a subtree's
    /// or a single file's restore).
    prefix: RelPath,
    chunks: Option<ChunkLookup>,
    ahead: ReadAhead,
}

impl<H: Borrow<History>> SnapshotReader<H> {
    /// Reads from `history`, then from the mirror tree at `mirror` through
    /// its state database `state_db` (opened read-only; a missing one means
    /// every chunk must be in the history store or at its old place).
    ///
    /// The database is shared with pushes to the mirror: while one holds
    /// it the reader cannot open, and while the reader is open a push
    /// waits; keep readers for the length of one restore.
    ///
    /// # Errors
    /// A state database that cannot be opened; busy ([`Error::is_busy`])
    /// while a push holds it: try again when the push ends, or read
    /// without it ([`SnapshotReader::without_index`]).
    pub fn new(history: H, mirror: &Path, state_db: &Path) -> Result<SnapshotReader<H>> {
        let chunks = ChunkLookup::open(state_db)?;
        Ok(SnapshotReader { history, mirror: mirror.to_path_buf(), prefix: RelPath::root(), chunks, ahead: ReadAhead::new() })
    }

    /// A reader that finds a chunk the store lacks only where the snapshot
    /// had it (the same file and offset): what a restore can do while a
    /// push holds the state database.
    pub fn without_index(history: H, mirror: &Path) -> SnapshotReader<H> {
        SnapshotReader {
            history,
            mirror: mirror.to_path_buf(),
            prefix: RelPath::root(),
            chunks: None,
            ahead: ReadAhead::new(),
        }
    }

    /// Reads what the history store costs.
    pub fn meter(&self) -> super::RequestMeter {
        self.history.borrow().meter()
    }

    /// The manifest read from starts at `prefix` within the tree.
    pub fn with_prefix(mut self, prefix: RelPath) -> Self {
        self.prefix = prefix;
        self
    }

    /// The chunk `id` from the mirror file at `path` and `offset` (where
    /// the snapshot had it, and where an unchanged file still has it), else
    /// from a mirror file the state database names; each copy is re-hashed,
    /// and one that no longer matches is passed over.
    fn read_mirror(&self, path: &RelPath, offset: u64, id: &ChunkId, len: u32) -> Result<Option<Vec<u8>>> {
        let in_tree = if self.prefix.is_root() { Ok(path.clone()) } else { self.prefix.join(path.as_bytes()) };
        if let Some(bytes) = in_tree.ok().and_then(|p| read_verified(&p.to_path(&self.mirror), offset, id, len)) {
            return Ok(Some(bytes));
        }
        let Some(chunks) = &self.chunks else { return Ok(None) };
        for loc in chunks.locations(id)? {
            if loc.len != len {
                continue;
            }
            if let Some(bytes) = read_verified(&loc.path.to_path(&self.mirror), loc.offset, id, len) {
                return Ok(Some(bytes));
            }
        }
        Ok(None)
    }
}

fn read_verified(path: &Path, offset: u64, id: &ChunkId, len: u32) -> Option<Vec<u8>> {
    let mut bytes = vec![0u8; len as usize];
    File::open(path).and_then(|f| f.read_exact_at(&mut bytes, offset)).ok()?;
    (ChunkId::of(&bytes) == *id).then_some(bytes)
}

impl<H: Borrow<History>> ChunkReader for SnapshotReader<H> {
    type Error = Error;

    fn read(&mut self, path: &RelPath, offset: u64, chunk: ChunkRef) -> Result<Vec<u8>> {
        let found = match self.ahead.read(self.history.borrow(), &chunk.id) {
            Ok(Some(bytes)) if bytes.len() == chunk.len as usize => Some(bytes),
            Ok(_) => None,
            // A damaged or missing pack: the mirror may still hold the chunk.
            Err(e) => {
                tracing::warn!(file = %path, chunk = %chunk.id, error = %e, "history store read failed; trying the mirror");
                None
            }
        };
        match found {
            Some(bytes) => Ok(bytes),
            None => self
                .read_mirror(path, offset, &chunk.id, chunk.len)?
                .ok_or_else(|| Error::HistoryDamaged { path: PathBuf::from(path.to_string()), chunk: chunk.id }),
        }
    }

    fn prefetch(&mut self, chunk: ChunkRef) {
        self.ahead.hint(chunk.id);
    }
}

/// Bytes fetched ahead and kept at most: ranges being fetched, fetched
/// and not yet read, and recently read (they may hold blobs asked for
/// next). One blob larger than what is left may pass it when nothing else
/// is held.
pub const READ_AHEAD: u64 = 32 << 20;
/// Packs are read in aligned blocks of this size: a blob is fetched with
/// the rest of its block, so neighbours asked for later (a restore reads
/// blobs in about the order a push wrote them) are read once, and the
/// bytes read beside a lone blob stay under two blocks (on a bucket the
/// egress of 256 KiB costs about as much as 60 requests).
const BLOCK: u64 = 256 << 10;
/// Longest single ranged read: several of them run at once (up to the
/// store's requests in flight), each a few per 16 MiB pack.
const MAX_SPAN: u64 = 4 << 20;
/// Hints kept at most (as many as a receiver may have asked for).
const MAX_HINTS: usize = crate::session::MAX_OUTSTANDING_CHUNKS;
/// How far into the hints a read not fetched ahead looks for its own.
const MAX_HINT_SEARCH: usize = 1024;

/// Reads a restore's blobs ahead from the history store, given the order
/// they will be read in ([`ChunkReader::prefetch`]): the blocks of packs
/// that hinted blobs need are fetched by one ranged request per run of
/// neighbouring blocks (at most [`MAX_SPAN`]), requests for different runs
/// run at once (on an object store, up to its requests in flight), and
/// everything held stays under [`READ_AHEAD`] bytes: fetched ranges no
/// hinted read still needs are let go oldest first when room is needed,
/// and a hinted blob never read stops pinning its range once a blob
/// hinted after it is read. A blob read without a hint is read alone
/// unless its blocks are held.
#[derive(Debug)]
pub struct ReadAhead {
    hints: VecDeque<ChunkId>,
    /// Ranges being fetched or fetched, by number (older ones lower).
    spans: BTreeMap<u64, Span>,
    /// Which span holds each block of a pack.
    blocks: HashMap<([u8; 32], u64), u64>,
    next_span: u64,
    /// Hints taken into a top-up so far, and the number of the latest
    /// one of each blob fetched ahead: reading it means every blob
    /// hinted before was read, or never will be.
    hinted: u64,
    hint_no: HashMap<ChunkId, u64>,
    /// Top-ups so far: the blobs of one top-up were hinted after those of
    /// every earlier one.
    batch: u64,
    /// Bytes of the spans held.
    held: u64,
    budget: u64,
    /// Most bytes ever held (tests).
    peak: u64,
}

#[derive(Debug)]
struct Span {
    pack: [u8; 32],
    start: u64,
    len: u64,
    data: SpanData,
    /// Hinted reads still to come from it.
    uses: usize,
    /// The latest top-up that hinted a blob in it.
    batch: u64,
    /// The number of the latest hint of a blob in it.
    last_hint: u64,
}

#[derive(Debug)]
enum SpanData {
    Fetching(Fetch),
    Fetched(Vec<u8>),
}

impl Default for ReadAhead {
    fn default() -> Self {
        ReadAhead::new()
    }
}

/// The blocks blob `entry` lies in.
fn blocks_of(entry: &PackEntry) -> std::ops::RangeInclusive<u64> {
    let end = entry.offset + u64::from(entry.stored).max(1);
    entry.offset / BLOCK..=(end - 1) / BLOCK
}

impl ReadAhead {
    /// Holds up to [`READ_AHEAD`] bytes.
    pub fn new() -> ReadAhead {
        ReadAhead::with_budget(READ_AHEAD)
    }

    /// Holds up to `budget` bytes.
    pub fn with_budget(budget: u64) -> ReadAhead {
        ReadAhead {
            hints: VecDeque::new(),
            spans: BTreeMap::new(),
            blocks: HashMap::new(),
            next_span: 0,
            hinted: 0,
            hint_no: HashMap::new(),
            batch: 0,
            held: 0,
            budget,
            peak: 0,
        }
    }

    /// Notes that blob `id` will be read after those hinted before.
    pub fn hint(&mut self, id: ChunkId) {
        if self.hints.len() < MAX_HINTS {
            self.hints.push_back(id);
        }
    }

    /// The most bytes held so far.
    #[cfg(any(test, feature = "internals"))]
    pub fn peak(&self) -> u64 {
        self.peak
    }

    /// The blob `id`, verified, if `history` holds it: from the blocks
    /// fetched ahead if they are held, else read alone.
    ///
    /// # Errors
    /// A pack that cannot be read or holds other bytes than it should.
    pub fn read(&mut self, history: &History, id: &ChunkId) -> Result<Option<Vec<u8>>> {
        let located = history.locate(id);
        let held = located.as_ref().is_some_and(|(pack, _, entry)| {
            blocks_of(entry).all(|block| self.blocks.contains_key(&(*pack, block)))
        });
        // Fetch in runs of at least a span, unless this blob must wait
        // for a fetch: fetching each block as room frees up would make a
        // request of every block.
        if !held || self.budget.saturating_sub(self.held) >= MAX_SPAN.min(self.budget / 4) {
            self.top_up(history);
        }
        // Its hint, if it was not fetched ahead (read before it could be),
        // and those before it: read already, or never to be.
        if !self.hint_no.contains_key(id) {
            if let Some(at) = self.hints.iter().take(MAX_HINT_SEARCH).position(|h| h == id) {
                self.hints.drain(..=at);
            }
        }
        let Some((pack, _, entry)) = located else { return history.read_chunk(id) };
        let mut body = Vec::with_capacity(entry.stored as usize);
        let (start, end) = (entry.offset, entry.offset + u64::from(entry.stored));
        for block in blocks_of(&entry) {
            let Some(&span_no) = self.blocks.get(&(pack, block)) else { return history.read_chunk(id) };
            let span = self.wait_for(span_no)?;
            span.uses = span.uses.saturating_sub(1);
            let SpanData::Fetched(bytes) = &span.data else { unreachable!("waited for above") };
            let from = start.max(block * BLOCK).max(span.start);
            let to = end.min((block + 1) * BLOCK).min(span.start + span.len);
            let piece = usize::try_from(from - span.start).ok().zip(usize::try_from(to.saturating_sub(from)).ok());
            match piece.and_then(|(at, n)| bytes.get(at..at + n)) {
                Some(piece) => body.extend_from_slice(piece),
                None => return history.read_chunk(id),
            }
        }
        if let Some(n) = self.hint_no.remove(id) {
            self.unpin_before(n);
        }
        history.open_entry(&pack, &entry, &body).map(Some)
    }

    /// Span `span_no`, its bytes there; one whose fetch failed is let go
    /// (its blobs are read alone when asked for again).
    fn wait_for(&mut self, span_no: u64) -> Result<&mut Span> {
        let span = self.spans.get_mut(&span_no).expect("invariant: blocks name held spans");
        if let SpanData::Fetching(_) = &span.data {
            let SpanData::Fetching(fetch) = std::mem::replace(&mut span.data, SpanData::Fetched(Vec::new())) else {
                unreachable!("matched above")
            };
            match fetch.wait() {
                Ok(bytes) => span.data = SpanData::Fetched(bytes),
                Err(e) => {
                    self.drop_span(span_no);
                    return Err(e);
                }
            }
        }
        Ok(self.spans.get_mut(&span_no).expect("invariant: present above"))
    }

    /// Every blob hinted before hint `n` was read already, or never will
    /// be: spans only they pinned need no longer be kept.
    fn unpin_before(&mut self, n: u64) {
        for span in self.spans.values_mut().filter(|s| s.last_hint < n) {
            span.uses = 0;
        }
        if self.hint_no.len() > MAX_HINTS {
            self.hint_no.retain(|_, hint| *hint > n);
        }
    }

    /// Lets go of spans no hinted read needs, oldest first, until `room`
    /// bytes are free or none is left to let go.
    fn make_room(&mut self, room: u64) {
        while self.budget.saturating_sub(self.held) < room {
            let forming = self.batch + 1;
            let Some(old) = self.spans.iter().find(|(_, s)| s.uses == 0 && s.batch != forming).map(|(n, _)| *n) else {
                return;
            };
            self.drop_span(old);
        }
    }

    fn drop_span(&mut self, span_no: u64) {
        if let Some(span) = self.spans.remove(&span_no) {
            self.held -= span.len;
            let first = span.start / BLOCK;
            for block in first..first + span.len.div_ceil(BLOCK) {
                if self.blocks.get(&(span.pack, block)) == Some(&span_no) {
                    self.blocks.remove(&(span.pack, block));
                }
            }
        }
    }

    /// Fetches the blocks the hinted blobs need and no span holds, while
    /// they fit in the budget; each hinted blob pins the spans it is in.
    fn top_up(&mut self, history: &History) {
        let forming = self.batch + 1;
        let mut fresh: BTreeMap<([u8; 32], u64), u64> = BTreeMap::new();
        let mut picked: Vec<([u8; 32], PackEntry, u64)> = Vec::new();
        while let Some(id) = self.hints.front().copied() {
            if let Some((pack, pack_len, entry)) = history.locate(&id) {
                let new: Vec<u64> = blocks_of(&entry)
                    .filter(|b| !self.blocks.contains_key(&(pack, *b)) && !fresh.contains_key(&(pack, *b)))
                    .collect();
                let cost = BLOCK * new.len() as u64 + BLOCK * fresh.len() as u64;
                // Spans this blob needs are not let go to make room.
                for block in blocks_of(&entry) {
                    if let Some(span) = self.blocks.get(&(pack, block)).and_then(|n| self.spans.get_mut(n)) {
                        span.batch = forming;
                    }
                }
                self.make_room(cost);
                let room = self.budget.saturating_sub(self.held);
                if cost > room && (self.held > 0 || !fresh.is_empty()) {
                    break;
                }
                fresh.extend(new.into_iter().map(|b| ((pack, b), pack_len)));
                self.hinted += 1;
                self.hint_no.insert(id, self.hinted);
                picked.push((pack, entry, self.hinted));
            }
            self.hints.pop_front();
        }
        if picked.is_empty() {
            return;
        }
        self.batch = forming;
        self.add_spans(history, &fresh);
        for (pack, entry, hint) in &picked {
            for block in blocks_of(entry) {
                if let Some(span) = self.blocks.get(&(*pack, block)).and_then(|n| self.spans.get_mut(n)) {
                    span.uses += 1;
                    span.last_hint = span.last_hint.max(*hint);
                }
            }
        }
        self.peak = self.peak.max(self.held);
    }

    /// Starts fetching `blocks` (sorted; each with its pack's length), one
    /// request per run of neighbours in one pack, up to [`MAX_SPAN`].
    fn add_spans(&mut self, history: &History, blocks: &BTreeMap<([u8; 32], u64), u64>) {
        let mut run: Option<([u8; 32], u64, u64, u64)> = None;
        for (&(pack, block), &pack_len) in blocks {
            run = match run {
                Some((p, first, last, len)) if p == pack && block == last + 1 && (block + 1 - first) * BLOCK <= MAX_SPAN => {
                    Some((p, first, block, len))
                }
                Some(done) => {
                    self.add_span(history, done);
                    Some((pack, block, block, pack_len))
                }
                None => Some((pack, block, block, pack_len)),
            };
        }
        if let Some(done) = run {
            self.add_span(history, done);
        }
    }

    fn add_span(&mut self, history: &History, (pack, first, last, pack_len): ([u8; 32], u64, u64, u64)) {
        let (start, end) = (first * BLOCK, ((last + 1) * BLOCK).min(pack_len));
        if end <= start {
            return;
        }
        let span_no = self.next_span;
        self.next_span += 1;
        for block in first..=last {
            self.blocks.insert((pack, block), span_no);
        }
        let data = SpanData::Fetching(history.start_read(&pack, start..end));
        self.spans.insert(span_no, Span { pack, start, len: end - start, data, uses: 0, batch: self.batch, last_hint: 0 });
        self.held += end - start;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `n` incompressible chunks of `len` bytes in `history`, in packs of
    /// about 1 MiB; their ids in the order written.
    fn fill(history: &mut History, n: u64, len: usize) -> Vec<(ChunkId, Vec<u8>)> {
        history.pack_target = 1 << 20;
        let chunks: Vec<(ChunkId, Vec<u8>)> = (0..n)
            .map(|i| {
                let mut bytes = vec![0u8; len];
                blake3::Hasher::new().update(&i.to_le_bytes()).finalize_xof().fill(&mut bytes);
                (ChunkId::of(&bytes), bytes)
            })
            .collect();
        for (id, bytes) in &chunks {
            history.add_chunk(*id, bytes).unwrap();
        }
        history.flush().unwrap();
        chunks
    }

    /// Reads hinted in order cost a request per run of neighbouring
    /// blocks, not one per chunk, read every byte once, and hold at most
    /// the budget; unhinted reads cost one request each.
    #[test]
    fn hinted_reads_are_few_and_bounded() {
        let mut history = History::open_url("memory:readahead-few").unwrap();
        let chunks = fill(&mut history, 600, 20_000);
        let stored: u64 = chunks.iter().map(|(_, b)| b.len() as u64).sum();
        let budget = 2 << 20;
        let mut ahead = ReadAhead::with_budget(budget);
        for (id, _) in &chunks {
            ahead.hint(*id);
        }
        let before = history.requests();
        for (id, bytes) in &chunks {
            assert_eq!(ahead.read(&history, id).unwrap().as_deref(), Some(&bytes[..]));
        }
        let after = history.requests();
        let gets = after.gets - before.gets;
        let got = after.bytes_got - before.bytes_got;
        eprintln!("600 chunks, {stored} bytes: {gets} GETs, {got} bytes, peak {} held", ahead.peak());
        // 12 MB in 1 MiB packs: a request or two per pack.
        assert!(gets <= 2 * stored.div_ceil(1 << 20) + 2, "{gets} GETs");
        // Every byte once, and pack headers at most besides.
        assert!(got >= stored && got <= stored + stored / 20, "{got} bytes for {stored}");
        assert!(ahead.peak() <= budget, "held {} > {budget}", ahead.peak());

        let mut alone = ReadAhead::with_budget(budget);
        let before = history.requests();
        for (id, bytes) in chunks.iter().take(50) {
            assert_eq!(alone.read(&history, id).unwrap().as_deref(), Some(&bytes[..]));
        }
        assert_eq!(history.requests().gets - before.gets, 50, "unhinted: one read each");
    }

    /// Hinted chunks that are never read (a file given up) pin nothing:
    /// the reads after them are served and the held bytes stay bounded;
    /// repeated and unknown ids are read right.
    #[test]
    fn skipped_hints_pin_nothing() {
        let mut history = History::open_url("memory:readahead-skip").unwrap();
        let chunks = fill(&mut history, 400, 30_000);
        let budget = 1 << 20;
        let mut ahead = ReadAhead::with_budget(budget);
        let unknown = ChunkId::of(b"not stored");
        for (i, (id, _)) in chunks.iter().enumerate() {
            ahead.hint(*id);
            if i % 7 == 0 {
                ahead.hint(chunks[0].0);
                ahead.hint(unknown);
            }
        }
        let before = history.requests();
        for (i, (id, bytes)) in chunks.iter().enumerate() {
            if i % 3 == 1 {
                continue;
            }
            assert_eq!(ahead.read(&history, id).unwrap().as_deref(), Some(&bytes[..]), "chunk {i}");
            if i % 7 == 0 {
                assert_eq!(ahead.read(&history, &chunks[0].0).unwrap().as_deref(), Some(&chunks[0].1[..]));
                assert_eq!(ahead.read(&history, &unknown).unwrap(), None);
            }
        }
        assert!(ahead.peak() <= budget, "held {} > {budget}", ahead.peak());
        let gets = history.requests().gets - before.gets;
        // Fewer requests than reads, though the skipped and repeated
        // hints cost some.
        assert!(gets < 300, "{gets} GETs for 383 reads in order");
    }
}
