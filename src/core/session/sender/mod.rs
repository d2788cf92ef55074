//! The sending side of a push: plans against what the receiver reports (or
//! what it is remembered to hold) and serves the chunks it asks for.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use xfer_protocol::msg::{self, Message};
use xfer_protocol::{
    FEATURE_DRY_RUN, FEATURE_STORE_COSTS, FEATURE_ZSTD_STREAM, KNOWN_FEATURES, MAX_CHUNK_REFS_PER_MESSAGE,
    PROTOCOL_VERSION,
};

use super::destination::{ChunkReader, FailedEntry};
use super::SessionError;
use crate::adapt::Step;
use crate::chunk::FileDigest;
use crate::codec::{Encoder, LinkWindow, PendingDelta};
use crate::manifest::{ChildDigest, Manifest, RelPath, Tree};
use crate::plan::{plan, DeleteLimit, Op, OpStream, Pass, PlanOptions, Skipped};
use crate::progress::{Change, Event, ProgressSink};
use crate::wire;

mod chunks;
mod compare;
mod walked;

pub use chunks::{StreamTurns, STREAM_RUN};
use walked::WalkedOps;
#[cfg(test)]
pub(crate) use walked::KEPT;
pub use walked::{root_hash, WalkedSource};

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
    /// A push: labels for the server's audit log and snapshot record.
    pub tags: Vec<msg::Tag>,
    /// A push: the source host, for the receiver's snapshot record.
    pub source_host: String,
    /// A push: the source path on that host, for the snapshot record.
    pub source_path: String,
    /// Where progress goes.
    pub progress: ProgressSink,
    /// A source walked instead of `source` (which is then ignored): a
    /// snapshot restored without holding its manifest. Its plan is sent as
    /// it is made; [`Sender::ops`] is then empty.
    pub walked: Option<WalkedSource>,
    /// A pull's server: offer to report what its history store cost the
    /// session (`StoreCosts`, read from the reader once the client's
    /// summary is in). A pushing client always accepts the report.
    pub offer_store_costs: bool,
    /// Offer the zstd stream codec (`FEATURE_ZSTD_STREAM`): chunks compress
    /// with the ones sent before them on their data stream. On by default;
    /// off only to measure or test the per-chunk codecs.
    pub zstd_stream: bool,
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
            source_host: String::new(),
            source_path: String::new(),
            progress: ProgressSink::default(),
            walked: None,
            offer_store_costs: false,
            zstd_stream: true,
        }
    }
}

/// A chunk request checked and not yet answered: the request, the file's
/// path, the chunk and its offset.
type Need = (msg::NeedChunk, RelPath, crate::chunk::ChunkRef, u64);

/// The plan being sent: made whole before sending, or made as sent.
enum Ops {
    Listed { ops: Vec<Op>, next: usize },
    Walked(Box<WalkedOps>),
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
    /// FileFailed), with the data stream each travels on: they must never
    /// wait behind entry changes the receiver is not reading yet.
    data: VecDeque<(usize, Message)>,
    /// Which data stream the chunks take.
    data_turn: StreamTurns,
    /// Data messages other than chunks given a stream so far.
    answers_sent: usize,
    /// Chunk requests not yet answered. They are read and encoded only as
    /// the transport takes answers ([`Sender::poll_data`]), so the encoder
    /// runs just ahead of the link whatever the receiver's request window
    /// (the adaptive level then applies to what is still to be sent), and
    /// what waits here is a few bytes a request, not encoded chunks.
    needs: VecDeque<Need>,
    // Comparing: directories asked for, listings received, files asked for.
    lists_pending: usize,
    partial_listings: HashMap<RelPath, Vec<ChildDigest>>,
    listed: HashMap<RelPath, Vec<ChildDigest>>,
    files_wanted: Vec<RelPath>,
    files_pending: usize,
    infos: HashMap<RelPath, FileDigest>,
    /// Children found identical on both sides, by path.
    identical: HashSet<RelPath>,
    /// The source, when it is walked rather than held.
    walked: Option<WalkedSource>,
    // Sending: the plan, the receiver's tree as planned against, progress.
    ops: Ops,
    /// Why making the plan as it is sent failed, to be reported.
    broken: Option<SessionError>,
    /// The receiver's tree as planned against: the source itself when the
    /// roots are equal, so no copy is made then either.
    dest: Arc<Manifest>,
    deltas: HashMap<(u32, u32), (PendingDelta, Vec<u8>)>,
    summary: Option<msg::Summary>,
    /// Both sides offered `FEATURE_STORE_COSTS`: the server reports the
    /// store's costs (a push's receiver before `Summary`, a pull's sender
    /// after it).
    costs_agreed: bool,
    /// A pull's server offered the report (it learns the client's offer
    /// from `respond`).
    offer_store_costs: bool,
    /// What the server's store cost, as it reported.
    store_costs: Option<msg::StoreCosts>,
    /// The receiver takes `DryRun` (`FEATURE_DRY_RUN`) to end a dry run.
    dry_run_agreed: bool,
    /// This side offers `FEATURE_ZSTD_STREAM`.
    offer_zstd_stream: bool,
    /// Both sides offered it: whole chunks go as zstd streams.
    zstd_stream_agreed: bool,
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
            at: None,
            source_host: std::mem::take(&mut config.source_host),
            source_path: std::mem::take(&mut config.source_path),
            forget: Vec::new(),
        });
        let features = if config.zstd_stream { KNOWN_FEATURES } else { KNOWN_FEATURES & !FEATURE_ZSTD_STREAM };
        Sender::with_outbox(config, VecDeque::from([hello(features), open]))
    }

    fn with_outbox(config: SenderConfig<R>, outbox: VecDeque<Message>) -> Self {
        let SenderConfig {
            source,
            reader,
            encoder,
            plan,
            remembered,
            dry_run,
            delete_limit,
            progress,
            walked,
            offer_store_costs,
            zstd_stream,
            ..
        } = config;
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
            data_turn: StreamTurns::default(),
            answers_sent: 0,
            needs: VecDeque::new(),
            lists_pending: 0,
            partial_listings: HashMap::new(),
            listed: HashMap::new(),
            files_wanted: Vec::new(),
            files_pending: 0,
            infos: HashMap::new(),
            identical: HashSet::new(),
            walked,
            ops: Ops::Listed { ops: Vec::new(), next: 0 },
            broken: None,
            dest: Arc::default(),
            deltas: HashMap::new(),
            summary: None,
            costs_agreed: false,
            offer_store_costs,
            store_costs: None,
            dry_run_agreed: false,
            offer_zstd_stream: zstd_stream,
            zstd_stream_agreed: false,
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
    /// and unused). `client_features` are the bits of the client's `Hello`.
    /// `receiver_root` is the client's root from `Open`: equal trees end
    /// the session at once, otherwise the sender compares top-down.
    pub fn respond(mut config: SenderConfig<R>, client_features: u64, receiver_root: Option<[u8; 32]>) -> Self {
        config.remembered = None;
        let root = config.walked.as_ref().map_or_else(|| config.source.tree().root().0, |w| w.root.0);
        let opened = Message::Opened(msg::Opened { root, remembered: receiver_root == Some(root) });
        let offered = if config.offer_store_costs { FEATURE_STORE_COSTS } else { 0 }
            | if config.zstd_stream { FEATURE_ZSTD_STREAM } else { 0 };
        let mut sender = Sender::with_outbox(config, VecDeque::from([hello(offered), opened]));
        sender.costs_agreed = offered & client_features & FEATURE_STORE_COSTS != 0;
        sender.zstd_stream_agreed = offered & client_features & FEATURE_ZSTD_STREAM != 0;
        // The same decision as a push client's on `Opened`, with the
        // receiver's root from its `Open` (no root: compare top-down).
        let receiver = msg::Opened { root: receiver_root.unwrap_or_default(), remembered: false };
        sender.opened(receiver).expect("invariant: planning against known trees cannot fail");
        sender
    }

    /// The next answer to a chunk request (ChunkData, RefineRequest or
    /// FileFailed), if any, and the data stream (`0..DATA_STREAMS`) it must
    /// travel on, after the messages given for that stream before it: a
    /// zstd stream chunk continues its stream's compression. The chunk is
    /// read and encoded now, at the current level.
    ///
    /// # Errors
    /// Reading the source failed for a reason that ends the session.
    pub fn poll_data(&mut self) -> Result<Option<(usize, Message)>, SessionError> {
        if let Some(e) = self.broken.take() {
            return Err(e);
        }
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
        if self.broken.is_some() {
            return None;
        }
        // Chunk answers go first (above); entry changes fill the rest.
        let next = match &mut self.ops {
            Ops::Listed { ops, next } => {
                let n = *next;
                *next += 1;
                Ok(ops.get(n).map(|op| (n as u32, op.clone())))
            }
            Ops::Walked(walked) => walked.next_op(),
        };
        match next {
            Ok(Some((n, op))) => self.queue_op(n, &op),
            Ok(None) => {
                // A dry run's receiver that knows it records nothing.
                let end = if self.dry_run && self.dry_run_agreed {
                    Message::DryRun(msg::DryRun)
                } else {
                    Message::Done(msg::Done)
                };
                self.outbox.push_back(end);
                self.state = State::AwaitingSummary;
            }
            Err(e) => {
                // Reported by the next poll_data or handle.
                self.broken = Some(SessionError::Local(e));
                return None;
            }
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

    /// Whether chunks go as zstd streams (both sides offered
    /// `FEATURE_ZSTD_STREAM`; known once the peer's `Hello` is in).
    pub fn zstd_stream(&self) -> bool {
        self.zstd_stream_agreed
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

    /// What the server's history store cost a push, if it reported it.
    pub fn store_costs(&self) -> Option<&msg::StoreCosts> {
        self.store_costs.as_ref()
    }

    /// The plan's steps (after the comparison; empty for a walked source,
    /// whose plan is made as it is sent).
    pub fn ops(&self) -> &[Op] {
        match &self.ops {
            Ops::Listed { ops, .. } => ops,
            Ops::Walked(_) => &[],
        }
    }

    /// Takes one message from the receiver.
    ///
    /// # Errors
    /// [`SessionError`] for messages out of place, malformed content, an
    /// error from the peer, or local failures; the session is then over.
    pub fn handle(&mut self, message: Message) -> Result<(), SessionError> {
        if let Some(e) = self.broken.take() {
            return Err(e);
        }
        match (self.state, message) {
            (_, Message::Error(e)) => {
                Err(SessionError::Peer { code: xfer_protocol::CloseCode::from_u32(e.code), message: e.message })
            }
            (State::Opening, Message::Hello(hello)) => {
                xfer_protocol::check_version(hello.version).map_err(super::version_mismatch)?;
                self.costs_agreed = hello.features & KNOWN_FEATURES & FEATURE_STORE_COSTS != 0;
                self.dry_run_agreed = hello.features & FEATURE_DRY_RUN != 0;
                self.zstd_stream_agreed = self.offer_zstd_stream && hello.features & FEATURE_ZSTD_STREAM != 0;
                Ok(())
            }
            (State::Opening, Message::Opened(opened)) => self.opened(opened),
            (State::Comparing, Message::Listing(listing)) => self.listing(listing),
            (State::Comparing, Message::FileInfos(infos)) => self.file_infos(infos),
            (State::Sending | State::AwaitingSummary, Message::NeedChunk(need)) => self.need_chunk(need),
            (State::Sending | State::AwaitingSummary, Message::FineSignatures(fine)) => self.fine_signatures(fine),
            (State::AwaitingSummary, Message::StoreCosts(costs)) if self.costs_agreed && !self.offer_store_costs => {
                self.store_costs = Some(costs);
                Ok(())
            }
            (State::AwaitingSummary, Message::Summary(summary)) => {
                self.summary = Some(summary);
                if self.costs_agreed && self.offer_store_costs {
                    let costs = self.reader.store_costs().unwrap_or_default();
                    self.outbox.push_back(Message::StoreCosts(costs));
                }
                self.state = State::Finished;
                Ok(())
            }
            (state, message) => Err(SessionError::Unexpected { kind: message.kind(), state: state.name() }),
        }
    }

    /// The source's root hash.
    fn root(&self) -> [u8; 32] {
        self.walked.as_ref().map_or_else(|| self.tree.root().0, |w| w.root.0)
    }

    fn opened(&mut self, opened: msg::Opened) -> Result<(), SessionError> {
        if opened.root == self.root() && self.walked.is_some() {
            // Equal trees: nothing to plan.
            self.state = State::Sending;
            return Ok(());
        }
        if opened.root == self.root() {
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

    fn start_sending(&mut self) -> Result<(), SessionError> {
        if let Some(walked) = self.walked.clone() {
            return self.start_walked(walked);
        }
        let planned = plan(&self.source, &self.dest, |_| false, self.options.clone());
        self.deletions = planned.deletions(&self.dest);
        self.ops = Ops::Listed { ops: planned.ops, next: 0 };
        self.skipped = planned.skipped;
        let (files, bytes) = write_sizes(self.ops());
        self.started(files, bytes, self.source.len() as u64)
    }

    /// Starts sending the plan of a walked source: one walk counts what
    /// it writes and deletes (the delete limit is checked on the whole
    /// plan before any change is sent), then the plan is made as sent.
    fn start_walked(&mut self, walked: WalkedSource) -> Result<(), SessionError> {
        let mut counting =
            OpStream::new(Arc::clone(&walked.tree), Arc::clone(&self.dest), self.options.clone(), Pass::All);
        let (mut files, mut bytes, mut removed) = (0u64, 0u64, Vec::new());
        while let Some(op) = counting.next_op().map_err(SessionError::Local)? {
            if let Op::WriteFile { digest, .. } = &op {
                files += 1;
                bytes += digest.size;
            }
            if op.removes(&self.dest) {
                removed.push(op.path().clone());
            }
            if self.dry_run {
                self.progress.emit(|| Event::Entry { change: Change::of(&op), path: op.path().to_string() });
            }
        }
        self.deletions = crate::plan::deleted_entries(&self.dest, &removed);
        self.skipped = counting.take_skipped();
        let sources = counting.source_entries();
        self.ops = Ops::Walked(Box::new(WalkedOps::new(walked.tree, Arc::clone(&self.dest), self.options.clone())));
        if self.dry_run {
            self.ops = Ops::Listed { ops: Vec::new(), next: 0 };
        }
        self.started(files, bytes, sources)
    }

    /// The plan is made (`files` to write, of `bytes`): checks the delete
    /// limit and starts sending.
    fn started(&mut self, files: u64, bytes: u64, source_entries: u64) -> Result<(), SessionError> {
        let verdict = self.delete_limit.check(self.deletions, self.dest.len() as u64, source_entries);
        self.progress.emit(|| Event::Planned { files, bytes });
        self.state = State::Sending;
        if self.dry_run {
            if let Ops::Listed { ops, next } = &mut self.ops {
                for op in ops.iter() {
                    self.progress.emit(|| Event::Entry { change: Change::of(op), path: op.path().to_string() });
                }
                *next = ops.len();
            }
        }
        if let Err(refused) = verdict {
            // Nothing of the plan may leave: the session ends here.
            match &mut self.ops {
                Ops::Listed { ops, next } => *next = ops.len(),
                Ops::Walked(_) => self.ops = Ops::Listed { ops: Vec::new(), next: 0 },
            }
            self.state = State::Finished;
            return Err(refused.into());
        }
        Ok(())
    }

    fn queue_op(&mut self, file: u32, op: &Op) {
        self.progress.emit(|| Event::Entry { change: Change::of(op), path: op.path().to_string() });
        let message = match op {
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
}

/// Files the plan writes and their bytes.
fn write_sizes(ops: &[Op]) -> (u64, u64) {
    let sizes = ops.iter().filter_map(|op| match op {
        Op::WriteFile { digest, .. } => Some(digest.size),
        _ => None,
    });
    (sizes.clone().count() as u64, sizes.sum())
}

/// This side's `Hello`, offering the feature bits `features`.
pub fn hello(features: u64) -> Message {
    Message::Hello(msg::Hello { version: PROTOCOL_VERSION, features, agent: super::AGENT.into() })
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
