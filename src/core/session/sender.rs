//! The sending side of a push: plans against what the receiver reports (or
//! what it is remembered to hold) and serves the chunks it asks for.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use xfer_protocol::msg::{self, Message};
use xfer_protocol::{MAX_CHUNK_REFS_PER_MESSAGE, MAX_FILES_PER_MESSAGE, PROTOCOL_VERSION};

use super::destination::{ChunkReader, EntryError, FailedEntry};
use super::{protocol, SessionError};
use crate::adapt::Step;
use crate::chunk::FileDigest;
use crate::codec::{DeltaStep, EncodedChunk, Encoder, LinkWindow, PendingDelta};
use crate::manifest::{ChildDigest, Entry, EntryKind, Manifest, Meta, Mtime, RelPath, Tree};
use crate::patch::Signature;
use crate::plan::{plan, DeleteLimit, Op, PlanOptions, Skipped};
use crate::progress::{Change, Event, ProgressSink};
use crate::wire;

/// What a [`Sender`] sends and how: [`SenderConfig::new`] takes what every
/// session needs, the fields say the rest.
#[non_exhaustive]
pub struct SenderConfig<R> {
    /// The source tree. Shared with the caller, which keeps it after the
    /// session (to remember it): one copy of the tree, not two.
    pub source: Arc<Manifest>,
    /// Reads the source's chunks.
    pub reader: R,
    /// Encodes them.
    pub encoder: Encoder,
    /// How to plan (deletes, protected entries, skipped ones).
    pub plan: PlanOptions,
    /// A push: the destination path on the receiver (root: empty).
    pub path: Vec<u8>,
    /// A push: whether the receiver re-reads every file.
    pub checksum: bool,
    /// A push: the receiver's tree as this sender last left it, used only
    /// if the receiver's root hash confirms it.
    pub remembered: Option<Manifest>,
    /// Plan only: send `Done` right after the comparison (`--dry-run`);
    /// [`Sender::ops`] holds the plan.
    pub dry_run: bool,
    /// Refuses the session, before any change is sent, when the plan
    /// deletes more than this allows (on a dry run too, after listing the
    /// plan).
    pub delete_limit: DeleteLimit,
    /// A push: labels for the server's audit log.
    pub tags: Vec<msg::Tag>,
    /// Where progress goes.
    pub progress: ProgressSink,
}

impl<R> SenderConfig<R> {
    /// A push of `source` into the receiver's root, reading chunks with
    /// `reader` and encoding them with `encoder`; everything else default.
    pub fn new(source: impl Into<Arc<Manifest>>, reader: R, encoder: Encoder) -> Self {
        SenderConfig {
            source: source.into(),
            reader,
            encoder,
            plan: PlanOptions::default(),
            path: Vec::new(),
            checksum: false,
            remembered: None,
            dry_run: false,
            delete_limit: DeleteLimit::UNLIMITED,
            tags: Vec::new(),
            progress: ProgressSink::default(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Opening,
    Comparing,
    Sending,
    AwaitingSummary,
    Finished,
}

impl State {
    fn name(self) -> &'static str {
        match self {
            State::Opening => "opening",
            State::Comparing => "comparing trees",
            State::Sending => "sending",
            State::AwaitingSummary => "waiting for the summary",
            State::Finished => "finished",
        }
    }
}

/// Metadata the receiver did not report: never equal to a real entry's, so
/// the plan restores the source's.
const UNKNOWN_META: Meta = Meta {
    mode: u32::MAX,
    mtime: Mtime { secs: i64::MIN, nanos: 0 },
    uid: u32::MAX,
    gid: u32::MAX,
    user: Vec::new(),
    group: Vec::new(),
    xattrs: Vec::new(),
};

/// The sender of a push.
pub struct Sender<R> {
    state: State,
    /// Shared with the caller, which keeps it after the session (to
    /// remember it): one copy of the tree, not two.
    source: Arc<Manifest>,
    tree: Tree,
    reader: R,
    encoder: Encoder,
    options: PlanOptions,
    remembered: Option<Manifest>,
    outbox: VecDeque<Message>,
    /// ChunkData and what else answers a NeedChunk (RefineRequest,
    /// FileFailed), which travel on data streams: they must never wait
    /// behind entry changes the receiver is not reading yet.
    data: VecDeque<Message>,
    /// Chunk requests not yet answered. They are read and encoded only as
    /// the transport takes answers ([`Sender::poll_data`]), so the encoder
    /// runs just ahead of the link whatever the receiver's request window
    /// (the adaptive level then applies to what is still to be sent), and
    /// what waits here is a few bytes a request, not encoded chunks.
    needs: VecDeque<msg::NeedChunk>,
    // Comparing: directories asked for, listings received, files asked for.
    lists_pending: usize,
    partial_listings: HashMap<RelPath, Vec<ChildDigest>>,
    listed: HashMap<RelPath, Vec<ChildDigest>>,
    files_wanted: Vec<RelPath>,
    files_pending: usize,
    infos: HashMap<RelPath, FileDigest>,
    // Sending: the plan, the receiver's tree as planned against, progress.
    ops: Vec<Op>,
    next_op: usize,
    /// The receiver's tree as planned against: the source itself when the
    /// roots are equal, so no copy is made then either.
    dest: Arc<Manifest>,
    deltas: HashMap<(u32, u32), (PendingDelta, Vec<u8>)>,
    summary: Option<msg::Summary>,
    /// Files this side gave up on (their source changed while read).
    failed: Vec<FailedEntry>,
    /// Source entries the plan could not apply, and why.
    skipped: Vec<Skipped>,
    progress: ProgressSink,
    /// Plan only: send `Done` right after the comparison.
    dry_run: bool,
    /// How much the plan may delete; checked before any change is sent.
    delete_limit: DeleteLimit,
    /// Receiver entries the plan deletes, subtrees included.
    deletions: u64,
}

impl<R: ChunkReader> Sender<R> {
    /// A push as `config` says, into `config.path` on the receiver.
    pub fn new(mut config: SenderConfig<R>) -> Self {
        let open = Message::Open(msg::Open {
            direction: msg::Direction::Push,
            path: std::mem::take(&mut config.path),
            delete: config.plan.delete,
            checksum: config.checksum,
            remembered_root: config.remembered.as_ref().map(|m| m.tree().root().0),
            tags: std::mem::take(&mut config.tags),
        });
        Sender::with_outbox(config, VecDeque::from([hello(), open]))
    }

    fn with_outbox(config: SenderConfig<R>, outbox: VecDeque<Message>) -> Self {
        let SenderConfig { source, reader, encoder, plan, remembered, dry_run, delete_limit, progress, .. } = config;
        let tree = source.tree();
        Sender {
            state: State::Opening,
            source,
            tree,
            reader,
            encoder,
            options: plan,
            remembered,
            outbox,
            data: VecDeque::new(),
            needs: VecDeque::new(),
            lists_pending: 0,
            partial_listings: HashMap::new(),
            listed: HashMap::new(),
            files_wanted: Vec::new(),
            files_pending: 0,
            infos: HashMap::new(),
            ops: Vec::new(),
            next_op: 0,
            dest: Arc::default(),
            deltas: HashMap::new(),
            summary: None,
            failed: Vec::new(),
            skipped: Vec::new(),
            progress,
            dry_run,
            delete_limit,
            deletions: 0,
        }
    }

    /// The sender of a pull, on the server: answers the client's `Hello` and
    /// `Open` (already read by the transport) for `config.source` (its
    /// path, checksum, tags and remembered tree are the client's business
    /// and unused). `receiver_root` is the client's root from `Open`: equal
    /// trees end the session at once, otherwise the sender compares
    /// top-down.
    pub fn respond(mut config: SenderConfig<R>, receiver_root: Option<[u8; 32]>) -> Self {
        config.remembered = None;
        let root = config.source.tree().root().0;
        let opened = Message::Opened(msg::Opened { root, remembered: receiver_root == Some(root) });
        let mut sender = Sender::with_outbox(config, VecDeque::from([hello(), opened]));
        // The same decision as a push client's on `Opened`, with the
        // receiver's root from its `Open` (no root: compare top-down).
        let receiver = msg::Opened { root: receiver_root.unwrap_or_default(), remembered: false };
        sender.opened(receiver).expect("invariant: planning against known trees cannot fail");
        sender
    }

    /// The next answer to a chunk request (ChunkData, RefineRequest or
    /// FileFailed), to send on a data stream, if any: the chunk is read and
    /// encoded now, at the current level.
    ///
    /// # Errors
    /// Reading the source failed for a reason that ends the session.
    pub fn poll_data(&mut self) -> Result<Option<Message>, SessionError> {
        loop {
            if let Some(message) = self.data.pop_front() {
                return Ok(Some(message));
            }
            let Some(need) = self.needs.pop_front() else { return Ok(None) };
            self.answer(need)?;
        }
    }

    /// The next message to send on the control stream, if any.
    pub fn poll_transmit(&mut self) -> Option<Message> {
        if let Some(message) = self.outbox.pop_front() {
            return Some(message);
        }
        if self.state != State::Sending {
            return None;
        }
        // Chunk answers go first (above); entry changes fill the rest.
        if self.next_op < self.ops.len() {
            let n = self.next_op;
            self.next_op += 1;
            self.queue_op(n);
        } else {
            self.outbox.push_back(Message::Done(msg::Done));
            self.state = State::AwaitingSummary;
        }
        self.outbox.pop_front()
    }

    /// Whether the receiver reported its summary.
    pub fn is_finished(&self) -> bool {
        self.state == State::Finished
    }

    /// Receiver entries the plan deletes, a directory's subtree included
    /// (after the comparison).
    pub fn deletions(&self) -> u64 {
        self.deletions
    }

    /// The receiver's tree as this sender planned against it (files that
    /// compared equal may lack their chunk lists).
    pub fn planned_against(&self) -> &Manifest {
        &self.dest
    }

    /// Files this side could not send (the receiver kept their old
    /// version), with the reason.
    pub fn failed(&self) -> &[FailedEntry] {
        &self.failed
    }

    /// Source entries the plan left alone, with the reason (after the
    /// comparison); the receiver keeps what it holds there.
    pub fn skipped(&self) -> &[Skipped] {
        &self.skipped
    }

    /// The chunk encoder, whose level tells what [`Sender::adapt`] chose.
    pub fn encoder(&self) -> &Encoder {
        &self.encoder
    }

    /// Adapts the compression level to what the transport saw of the link
    /// over the last window ([`Encoder::adapt`]).
    pub fn adapt(&mut self, link: LinkWindow) -> Option<Step> {
        self.encoder.adapt(link)
    }

    /// The receiver's summary, once finished.
    pub fn summary(&self) -> Option<&msg::Summary> {
        self.summary.as_ref()
    }

    /// The plan's steps (after the comparison).
    pub fn ops(&self) -> &[Op] {
        &self.ops
    }

    /// Takes one message from the receiver.
    ///
    /// # Errors
    /// [`SessionError`] for messages out of place, malformed content, an
    /// error from the peer, or local failures; the session is then over.
    pub fn handle(&mut self, message: Message) -> Result<(), SessionError> {
        match (self.state, message) {
            (_, Message::Error(e)) => {
                Err(SessionError::Peer { code: xfer_protocol::CloseCode::from_u32(e.code), message: e.message })
            }
            (State::Opening, Message::Hello(hello)) => {
                xfer_protocol::check_version(hello.version).map_err(super::version_mismatch)?;
                Ok(())
            }
            (State::Opening, Message::Opened(opened)) => self.opened(opened),
            (State::Comparing, Message::Listing(listing)) => self.listing(listing),
            (State::Comparing, Message::FileInfos(infos)) => self.file_infos(infos),
            (State::Sending | State::AwaitingSummary, Message::NeedChunk(need)) => self.need_chunk(need),
            (State::Sending | State::AwaitingSummary, Message::FineSignatures(fine)) => self.fine_signatures(fine),
            (State::AwaitingSummary, Message::Summary(summary)) => {
                self.summary = Some(summary);
                self.state = State::Finished;
                Ok(())
            }
            (state, message) => Err(SessionError::Unexpected { kind: message.kind(), state: state.name() }),
        }
    }

    fn opened(&mut self, opened: msg::Opened) -> Result<(), SessionError> {
        if opened.root == self.tree.root().0 {
            // Equal trees: nothing to send at all.
            self.dest = Arc::clone(&self.source);
            return self.start_sending();
        }
        if opened.remembered {
            if let Some(remembered) = self.remembered.take() {
                self.dest = Arc::new(remembered);
                return self.start_sending();
            }
        }
        self.state = State::Comparing;
        self.ask_listing(RelPath::root());
        Ok(())
    }

    fn ask_listing(&mut self, dir: RelPath) {
        self.lists_pending += 1;
        self.outbox.push_back(Message::ListDir(msg::ListDir { dir: dir.as_bytes().to_vec() }));
    }

    fn listing(&mut self, listing: msg::Listing) -> Result<(), SessionError> {
        let dir = match listing.dir.as_slice() {
            [] => RelPath::root(),
            bytes => RelPath::new(bytes.to_vec()).map_err(protocol)?,
        };
        let part = self.partial_listings.entry(dir.clone()).or_default();
        part.extend(listing.children.iter().map(wire::child_from_wire));
        if listing.more {
            return Ok(());
        }
        let theirs = self.partial_listings.remove(&dir).unwrap_or_default();
        self.lists_pending = self.lists_pending.checked_sub(1).ok_or_else(|| protocol("listing not asked for"))?;
        let ours: HashMap<&[u8], &ChildDigest> =
            self.tree.listing(&dir).iter().map(|c| (c.name.as_slice(), c)).collect();
        let mut subdirs = Vec::new();
        for child in &theirs {
            let path = dir.join(&child.name).map_err(protocol)?;
            let same = ours.get(child.name.as_slice()).is_some_and(|c| c.digest == child.digest);
            if same {
                continue;
            }
            if child.is_dir {
                // An excluded directory is kept whole, whatever it holds:
                // listing it would cost round trips and change no plan.
                if !self.options.protect.as_ref().is_some_and(|f| f.excludes_entry(&path, true)) {
                    subdirs.push(path);
                }
            } else if self.source.get(&path).is_some_and(|e| e.file().is_some()) {
                self.files_wanted.push(path);
            }
        }
        self.listed.insert(dir, theirs);
        for subdir in subdirs {
            self.ask_listing(subdir);
        }
        if self.lists_pending == 0 {
            self.ask_files()?;
        }
        Ok(())
    }

    fn ask_files(&mut self) -> Result<(), SessionError> {
        let wanted = std::mem::take(&mut self.files_wanted);
        for batch in wanted.chunks(MAX_FILES_PER_MESSAGE) {
            self.files_pending += 1;
            let paths = batch.iter().map(|p| p.as_bytes().to_vec()).collect();
            self.outbox.push_back(Message::GetFiles(msg::GetFiles { paths }));
        }
        if self.files_pending == 0 {
            return self.finish_comparing();
        }
        Ok(())
    }

    fn file_infos(&mut self, infos: msg::FileInfos) -> Result<(), SessionError> {
        for info in infos.files {
            let path = RelPath::new(info.path.clone()).map_err(protocol)?;
            let params = wire::params_from_wire(info.params).map_err(protocol)?;
            let entry = self.infos.entry(path).or_insert_with(|| FileDigest {
                size: info.size,
                hash: crate::hash::FileHash(info.hash),
                params,
                chunks: Vec::new(),
            });
            entry.chunks.extend(info.chunks.iter().map(wire::chunk_from_wire));
        }
        if !infos.more {
            self.files_pending = self.files_pending.checked_sub(1).ok_or_else(|| protocol("files not asked for"))?;
            if self.files_pending == 0 {
                self.finish_comparing()?;
            }
        }
        Ok(())
    }

    /// Builds the receiver's tree as far as it matters (identical subtrees
    /// are taken from the source) and plans against it.
    fn finish_comparing(&mut self) -> Result<(), SessionError> {
        let mut identical: HashSet<RelPath> = HashSet::new();
        let mut entries: Vec<Entry> = Vec::new();
        for (dir, theirs) in &self.listed {
            let ours: HashMap<&[u8], &ChildDigest> =
                self.tree.listing(dir).iter().map(|c| (c.name.as_slice(), c)).collect();
            for child in theirs {
                let Ok(path) = dir.join(&child.name) else { continue };
                if ours.get(child.name.as_slice()).is_some_and(|c| c.digest == child.digest) {
                    identical.insert(path);
                    continue;
                }
                let kind = if child.is_dir {
                    EntryKind::Dir
                } else if let Some(digest) =
                    self.infos.get(&path).filter(|d| d.chunks.iter().map(|c| u64::from(c.len)).sum::<u64>() == d.size)
                {
                    EntryKind::File(digest.clone())
                } else {
                    // Kind unknown and not needed: any non-directory is
                    // replaced by a rename or removed by a delete.
                    EntryKind::Symlink { target: Vec::new() }
                };
                entries.push(Entry { path, meta: UNKNOWN_META, kind });
            }
        }
        for entry in self.source.entries() {
            let mut at = Some(entry.path.clone());
            while let Some(path) = at {
                if identical.contains(&path) {
                    entries.push(entry.clone());
                    break;
                }
                at = (!path.parent().is_root()).then(|| path.parent());
            }
        }
        // A hard link taken from an identical subtree whose target lies where
        // the view holds no file: what the receiver has there is unknown.
        entries.sort_by(|a, b| a.path.cmp(&b.path));
        let unknown: Vec<usize> = (0..entries.len())
            .filter(|&i| match &entries[i].kind {
                EntryKind::HardLink { target, .. } => {
                    !entries.binary_search_by(|e| e.path.cmp(target)).is_ok_and(|k| entries[k].file().is_some())
                }
                _ => false,
            })
            .collect();
        for i in unknown {
            entries[i].kind = EntryKind::Symlink { target: Vec::new() };
        }
        // A malformed view (a hostile listing) plans against nothing: the
        // receiver then gets everything, which is safe.
        self.dest = Arc::new(Manifest::new(entries).unwrap_or_default());
        self.start_sending()
    }

    fn start_sending(&mut self) -> Result<(), SessionError> {
        let planned = plan(&self.source, &self.dest, |_| false, self.options.clone());
        self.deletions = planned.deletions(&self.dest);
        self.ops = planned.ops;
        self.skipped = planned.skipped;
        let verdict = self.delete_limit.check(self.deletions, self.dest.len() as u64, self.source.len() as u64);
        self.progress.emit(|| {
            let sizes = self.ops.iter().filter_map(|op| match op {
                Op::WriteFile { digest, .. } => Some(digest.size),
                _ => None,
            });
            Event::Planned { files: sizes.clone().count() as u64, bytes: sizes.sum() }
        });
        self.state = State::Sending;
        if self.dry_run {
            for op in &self.ops {
                self.progress.emit(|| Event::Entry { change: Change::of(op), path: op.path().to_string() });
            }
            self.next_op = self.ops.len();
        }
        if let Err(refused) = verdict {
            // Nothing of the plan may leave: the session ends here.
            self.next_op = self.ops.len();
            self.state = State::Finished;
            return Err(refused.into());
        }
        Ok(())
    }

    fn queue_op(&mut self, n: usize) {
        let file = n as u32;
        self.progress.emit(|| Event::Entry { change: Change::of(&self.ops[n]), path: self.ops[n].path().to_string() });
        let message = match &self.ops[n] {
            Op::Mkdir { path, meta } => Message::Mkdir(msg::Mkdir {
                path: path.as_bytes().to_vec(),
                mode: meta.mode,
                mtime: wire::mtime_to_wire(meta.mtime),
                attrs: wire::attrs_to_wire(meta),
            }),
            Op::Symlink { path, target, meta } => Message::Symlink(msg::Symlink {
                path: path.as_bytes().to_vec(),
                target: target.clone(),
                mtime: wire::mtime_to_wire(meta.mtime),
                attrs: wire::attrs_to_wire(meta),
            }),
            Op::SetMeta { path, meta } => Message::SetMeta(msg::SetMeta {
                path: path.as_bytes().to_vec(),
                mode: meta.mode,
                mtime: wire::mtime_to_wire(meta.mtime),
                attrs: wire::attrs_to_wire(meta),
            }),
            Op::Delete { path } => Message::Delete(msg::Delete { path: path.as_bytes().to_vec() }),
            Op::Link { path, target, size, hash } => Message::Link(msg::Link {
                path: path.as_bytes().to_vec(),
                target: target.as_bytes().to_vec(),
                size: *size,
                hash: hash.0,
            }),
            Op::WriteFile { path, meta, digest } => {
                let old = self.dest.get(path).and_then(|e| e.file()).map_or(&[][..], |f| &f.chunks[..]);
                let mut list = wire::chunk_list_to_wire(old, digest);
                if edit_refs(&list) > MAX_CHUNK_REFS_PER_MESSAGE {
                    list = wire::chunk_list_to_wire(&[], digest);
                }
                let (first, rest) = split_list(list);
                self.progress.emit(|| Event::FileStarted { path: path.to_string(), size: digest.size });
                self.outbox.push_back(Message::WriteFile(msg::WriteFile {
                    file,
                    path: path.as_bytes().to_vec(),
                    mode: meta.mode,
                    mtime: wire::mtime_to_wire(meta.mtime),
                    size: digest.size,
                    hash: digest.hash.0,
                    params: wire::params_to_wire(digest.params),
                    list: first,
                    more: !rest.is_empty(),
                    attrs: wire::attrs_to_wire(meta),
                }));
                let parts = rest.len();
                for (i, list) in rest.into_iter().enumerate() {
                    self.outbox.push_back(Message::MoreChunks(msg::MoreChunks { file, list, more: i + 1 < parts }));
                }
                return;
            }
        };
        self.outbox.push_back(message);
    }

    fn write_op(&self, file: u32) -> Result<(&RelPath, &FileDigest), SessionError> {
        match self.ops.get(file as usize) {
            Some(Op::WriteFile { path, digest, .. }) => Ok((path, digest)),
            _ => Err(protocol(format!("chunk asked for file {file}, which is not a file being written"))),
        }
    }

    /// Checks a chunk request and queues it for [`Sender::poll_data`].
    fn need_chunk(&mut self, need: msg::NeedChunk) -> Result<(), SessionError> {
        let (_, digest) = self.write_op(need.file)?;
        if need.index as usize >= digest.chunks.len() {
            return Err(protocol("chunk index out of range"));
        }
        // An honest receiver never has more asked for than its ceiling.
        if self.needs.len() >= super::window::MAX_OUTSTANDING_CHUNKS {
            return Err(protocol(format!(
                "more than {} chunks asked for and not answered",
                super::window::MAX_OUTSTANDING_CHUNKS
            )));
        }
        self.needs.push_back(need);
        Ok(())
    }

    /// Reads and encodes the chunk `need` asks for (checked on arrival).
    fn answer(&mut self, need: msg::NeedChunk) -> Result<(), SessionError> {
        let (path, digest) = self.write_op(need.file)?;
        let index = need.index as usize;
        let chunk = *digest.chunks.get(index).ok_or_else(|| protocol("chunk index out of range"))?;
        let offset: u64 = digest.chunks[..index].iter().map(|c| u64::from(c.len)).sum();
        let path = path.clone();
        let bytes = match self.reader.read(&path, offset, chunk) {
            Ok(bytes) => bytes,
            Err(e) if e.is_per_entry() => {
                self.failed.push(FailedEntry { path: path.to_string(), error: e.to_string() });
                self.data.push_back(Message::FileFailed(msg::FileFailed {
                    file: need.file,
                    code: xfer_protocol::CloseCode::ChunkMismatch as u32,
                    message: e.to_string(),
                }));
                return Ok(());
            }
            Err(e) => return Err(SessionError::local(e)),
        };
        let encoded = match need.signature.as_deref().map(Signature::decode).transpose().map_err(protocol)? {
            None => self.encoder.encode(&bytes),
            Some(sig) => match self.encoder.start_delta(&bytes, &sig) {
                DeltaStep::Done(encoded) => encoded,
                DeltaStep::Refine { request, pending } => {
                    self.data.push_back(Message::RefineRequest(msg::RefineRequest {
                        file: need.file,
                        index: need.index,
                        ranges: request,
                    }));
                    self.deltas.insert((need.file, need.index), (pending, bytes));
                    return Ok(());
                }
            },
        };
        self.send_chunk(need.file, need.index, encoded);
        Ok(())
    }

    fn fine_signatures(&mut self, fine: msg::FineSignatures) -> Result<(), SessionError> {
        let Some((pending, bytes)) = self.deltas.remove(&(fine.file, fine.index)) else {
            return Err(protocol("fine signatures nobody asked for"));
        };
        let signatures: Option<Vec<Signature>> = fine.signatures.iter().map(|s| Signature::decode(s).ok()).collect();
        let encoded = self.encoder.finish_delta(&bytes, pending, signatures.as_deref());
        self.send_chunk(fine.file, fine.index, encoded);
        Ok(())
    }

    fn send_chunk(&mut self, file: u32, index: u32, encoded: EncodedChunk) {
        self.progress
            .emit(|| Event::Chunk { decoded: u64::from(encoded.decoded_len), encoded: encoded.payload.len() as u64 });
        self.data.push_back(Message::ChunkData(msg::ChunkData {
            file,
            index,
            codec: encoded.codec as u8,
            decoded_len: encoded.decoded_len,
            payload: encoded.payload,
        }));
    }
}

/// This side's `Hello`.
pub(super) fn hello() -> Message {
    Message::Hello(msg::Hello { version: PROTOCOL_VERSION, features: 0, agent: super::AGENT.into() })
}

/// Entries an edit list puts in one message (edits plus new references).
fn edit_refs(list: &msg::ChunkList) -> usize {
    match list {
        msg::ChunkList::Edit(edits) => edits
            .iter()
            .map(|edit| match edit {
                msg::ListEdit::Keep { .. } => 1,
                msg::ListEdit::New(chunks) => 1 + chunks.len(),
            })
            .sum(),
        _ => 0,
    }
}

/// Splits a chunk list into message-sized parts.
fn split_list(list: msg::ChunkList) -> (msg::ChunkList, Vec<msg::ChunkList>) {
    match list {
        msg::ChunkList::Full(chunks) if chunks.len() > MAX_CHUNK_REFS_PER_MESSAGE => {
            let mut parts = chunks.chunks(MAX_CHUNK_REFS_PER_MESSAGE).map(|p| msg::ChunkList::Full(p.to_vec()));
            let first = parts.next().unwrap_or(msg::ChunkList::Full(Vec::new()));
            (first, parts.collect())
        }
        // Edit lists over the limit were replaced by full lists above.
        other => (other, Vec::new()),
    }
}
