//! The receiving side of a push: answers the sender's questions about its
//! tree, applies entry changes as they arrive, and asks for the chunks it
//! lacks, a bounded number at a time.

use std::collections::{HashMap, HashSet, VecDeque};

use xfer_protocol::msg::{self, Message};
use xfer_protocol::{CloseCode, FEATURE_DRY_RUN, FEATURE_STORE_COSTS, FEATURE_ZSTD_STREAM, KNOWN_FEATURES};

use super::destination::{Destination, FailedEntry, NeedInfo};
use super::window::Limits;
use super::{protocol, SessionError};
use crate::chunk::FileDigest;
use crate::codec::StreamDecoder;
use crate::hash::FileHash;
use crate::manifest::{Manifest, Meta, RelPath, Tree};
use crate::plan::{deleted_entries, DeleteLimit, Op};
use crate::progress::ProgressSink;
use crate::wire::{self, WireError};

mod answers;
mod flow;

/// Entry changes buffered ahead of the one being applied; past this the
/// transport should stop reading (see [`Receiver::wants_input`]).
pub const MAX_QUEUED_OPS: usize = 4096;

/// Chunk references held for files queued or being rebuilt, summed: a
/// file's list costs memory by its length, and one `WriteFile` may carry
/// 65,536 of them, so a count of files alone would let a sender make the
/// receiver hold billions. Past this the transport stops reading control
/// messages, and no further file is begun until some finish; a single file
/// always proceeds.
pub const MAX_HELD_CHUNK_REFS: usize = 1 << 20;

/// Bytes of owner names and xattrs held by the entry changes buffered
/// ahead (up to 256 KiB each): past this the transport stops reading
/// control messages, so a sender cannot make 4,096 queued changes hold a
/// gigabyte of xattrs.
pub const MAX_QUEUED_META_BYTES: usize = 16 << 20;

/// Answers waiting to be sent; past this the transport stops reading
/// control messages, so a peer that asks without reading the answers
/// cannot make them pile up.
pub const MAX_QUEUED_ANSWERS: usize = 256;

/// Failed entries kept with their reasons; past this they are only counted
/// (a peer sending endless refused paths must not grow memory).
pub const MAX_FAILED_KEPT: usize = 1024;

/// What a client asked to open.
#[derive(Clone, Debug)]
pub struct OpenRequest {
    /// The destination path, relative to what the server serves (root: empty).
    pub path: Option<RelPath>,
    /// Whether extraneous entries will be deleted.
    pub delete: bool,
    /// Whether every file must be re-read instead of quick-checked.
    pub checksum: bool,
    /// The source host as the client names it, for the snapshot record.
    pub source_host: String,
    /// The source path on that host, for the snapshot record.
    pub source_path: String,
    /// The session's `key=value` labels, for the snapshot record.
    pub tags: Vec<msg::Tag>,
}

/// Opens the destination a client asks for, deciding what it may write.
pub type Opener<D> = Box<dyn FnMut(&OpenRequest) -> Result<D, SessionError> + Send>;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// A pull: this side asked, waiting for `Hello` and `Opened`.
    Asking,
    Greeting,
    Open,
    /// A pull's summary sent: waiting for the server's `StoreCosts`.
    AwaitingCosts,
    Finished,
}

enum Queued {
    Op(Op),
    Write { file: u32, path: RelPath, meta: Meta, digest: FileDigest },
}

impl Queued {
    /// What it holds in names and xattrs.
    fn meta_bytes(&self) -> usize {
        match self {
            Queued::Write { meta, .. }
            | Queued::Op(Op::Mkdir { meta, .. } | Op::Symlink { meta, .. } | Op::SetMeta { meta, .. }) => {
                wire::meta_heap_bytes(meta)
            }
            Queued::Op(_) => 0,
        }
    }
}

struct FileNeeds {
    path: RelPath,
    /// Chunk index -> the need not yet stored.
    open: HashMap<u32, OpenNeed>,
    /// Length of the file's chunk list.
    refs: usize,
    /// Needs asked for and not yet answered.
    outstanding: usize,
    /// Their decoded bytes.
    outstanding_bytes: u64,
    /// Needs still waiting in `to_ask`.
    unasked: usize,
}

/// A chunk asked for and not yet stored.
#[derive(Clone, Copy)]
struct OpenNeed {
    /// The need's number within its file.
    need: usize,
    /// Whether the request offered a base to send a delta against.
    offered: bool,
    /// Whether the sender already asked to refine that base (at most once).
    refined: bool,
    /// The chunk's length.
    len: u64,
}

/// The receiver of a push, rebuilding files in a [`Destination`].
pub struct Receiver<D> {
    state: State,
    opener: Opener<D>,
    /// The destination being written; its manifest (the tree as refreshed)
    /// is the one this side compares and plans with, never copied.
    rx: Option<D>,
    tree: Tree,
    outbox: VecDeque<Message>,
    queued: VecDeque<Queued>,
    /// Chunk references of the queued writes.
    queued_refs: usize,
    /// Name and xattr bytes of the queued changes.
    queued_meta_bytes: usize,
    /// Chunk references of the files being rebuilt.
    in_flight_refs: usize,
    partial: Option<PartialList>,
    to_ask: VecDeque<(u32, NeedInfo)>,
    files: HashMap<u32, FileNeeds>,
    abandoned: HashSet<u32>,
    outstanding: usize,
    outstanding_bytes: u64,
    /// The request window (wire bytes) the transport measured, and the
    /// limits it makes with the chunk sizes seen.
    window: u64,
    limits: Limits,
    /// Chunks received, their wire and decoded bytes.
    seen: (u64, u64, u64),
    done: bool,
    counts: Counts,
    failed: Vec<FailedEntry>,
    /// All failed entries, kept or not.
    failed_count: u64,
    summary: Option<msg::Summary>,
    progress: ProgressSink,
    /// A pull's limit on deletes: this side does not see the plan, so each
    /// `Delete` is charged as it arrives and held back until `Done` (or
    /// until a new entry takes its place, for a replacement); the first
    /// one past the limit ends the session with the held ones undone.
    delete_limit: Option<DeleteLimit>,
    /// Entries charged so far, subtrees included.
    deletes_charged: u64,
    /// Deletes held back, and the parents' `SetMeta` that follow them.
    held: Vec<Queued>,
    /// Parents of the held deletes.
    held_parents: HashSet<RelPath>,
    /// The sender's tree is empty (from `Opened`).
    source_empty: bool,
    /// The server of a push offers to report its store's costs.
    offer_store_costs: bool,
    /// Both sides offered `FEATURE_STORE_COSTS` (see the sender's field).
    costs_agreed: bool,
    /// What the server's store cost a pull, as it reported.
    store_costs: Option<msg::StoreCosts>,
    /// Both sides offered `FEATURE_DRY_RUN`: a dry run ends with `DryRun`.
    dry_run_agreed: bool,
    /// An entry change arrived (a `DryRun` after one is refused).
    changes_sent: bool,
    /// Both sides offered `FEATURE_ZSTD_STREAM`.
    zstd_stream_agreed: bool,
    /// The zstd stream decoder of each data stream (by the transport's id)
    /// that carried such chunks: at most `MAX_ZSTD_STREAMS`.
    streams: Vec<(u64, StreamDecoder)>,
}

#[derive(Default)]
struct Counts {
    dirs: u64,
    symlinks: u64,
    metas: u64,
}

impl<D: Destination> Receiver<D> {
    /// A receiver that opens the destination a client asks for with
    /// `opener` (which decides what the client may write).
    pub fn new(opener: Opener<D>) -> Self {
        Receiver {
            state: State::Greeting,
            opener,
            rx: None,
            tree: Tree::default(),
            outbox: VecDeque::new(),
            queued: VecDeque::new(),
            queued_refs: 0,
            queued_meta_bytes: 0,
            in_flight_refs: 0,
            partial: None,
            to_ask: VecDeque::new(),
            files: HashMap::new(),
            abandoned: HashSet::new(),
            outstanding: 0,
            outstanding_bytes: 0,
            window: 0,
            limits: Limits::FLOOR,
            seen: (0, 0, 0),
            done: false,
            counts: Counts::default(),
            failed: Vec::new(),
            failed_count: 0,
            summary: None,
            progress: ProgressSink::default(),
            delete_limit: None,
            deletes_charged: 0,
            held: Vec::new(),
            held_parents: HashSet::new(),
            source_empty: false,
            offer_store_costs: false,
            costs_agreed: false,
            store_costs: None,
            dry_run_agreed: false,
            changes_sent: false,
            zstd_stream_agreed: false,
            streams: Vec::new(),
        }
    }

    /// Offers to report what the destination's history store cost the
    /// push (`StoreCosts`, from [`ApplyReport::store`]), if the client
    /// takes it. Call before the first message is handled.
    pub fn offer_store_costs(&mut self) {
        self.offer_store_costs = true;
    }

    /// What the server's history store cost a pull, if it reported it.
    pub fn store_costs(&self) -> Option<&msg::StoreCosts> {
        self.store_costs.as_ref()
    }

    /// The receiver of a pull, on the client: asks the server for `path` and
    /// receives it into `store`.
    ///
    /// # Errors
    /// A store that cannot be scanned.
    pub fn initiate(mut store: D, path: Vec<u8>, delete: bool, checksum: bool) -> Result<Self, SessionError> {
        let mut receiver =
            Receiver::new(Box::new(|_: &OpenRequest| Err(protocol("this side asked; it opens nothing"))));
        receiver.tree = store.refresh(checksum).map_err(SessionError::local)?.tree();
        let root = receiver.tree.root().0;
        receiver.outbox.push_back(super::sender::hello(KNOWN_FEATURES));
        receiver.outbox.push_back(Message::Open(msg::Open {
            direction: msg::Direction::Pull,
            path,
            delete,
            checksum,
            // In a pull the client sends its own root: equal roots, nothing to do.
            remembered_root: Some(root),
            tags: Vec::new(),
            at: None,
            source_host: String::new(),
            source_path: String::new(),
            forget: Vec::new(),
        }));
        receiver.rx = Some(store);
        receiver.state = State::Asking;
        Ok(receiver)
    }

    /// Refuses deletes past `limit` (pulls: the sender is the server,
    /// which does not know the client's limit). Deletes are held back
    /// until the sender is done, so a refused session deletes nothing
    /// (but entries replaced by one of another kind). Call before the
    /// first message is handled.
    pub fn set_delete_limit(&mut self, limit: DeleteLimit) {
        self.delete_limit = Some(limit);
    }

    /// Counts what deleting `path` removes against the limit, before it is
    /// queued.
    fn charge_delete(&mut self, path: &RelPath) -> Result<(), SessionError> {
        let Some(limit) = self.delete_limit else { return Ok(()) };
        let total = self.manifest().len() as u64;
        let charged = self.deletes_charged.saturating_add(deleted_entries(self.manifest(), [path]));
        let source_entries = u64::from(!self.source_empty);
        limit.check(charged, total, source_entries)?;
        self.deletes_charged = charged;
        Ok(())
    }

    /// The next message to send, if any.
    pub fn poll_transmit(&mut self) -> Option<Message> {
        self.outbox.pop_front()
    }

    /// Whether the transport should read more control input: false while
    /// the entry changes buffered ahead are many or long, or answers wait
    /// to be sent (flow control then stalls the sender).
    pub fn wants_input(&self) -> bool {
        self.queued.len() < MAX_QUEUED_OPS
            && self.queued_refs < MAX_HELD_CHUNK_REFS
            && self.queued_meta_bytes < MAX_QUEUED_META_BYTES
            && self.outbox.len() < MAX_QUEUED_ANSWERS
    }

    /// Sets the request window: the wire bytes to keep asked for and not
    /// yet received, twice the link's bandwidth-delay product as the
    /// transport measures it ([`super::WindowEstimate`]). The files,
    /// chunks and bytes asked for follow it, between floors that keep a
    /// short link's speed and ceilings that bound memory whatever it says.
    /// A smaller window takes effect as answers arrive.
    pub fn set_request_window(&mut self, window: u64) {
        self.window = window;
        self.relimit();
    }

    fn relimit(&mut self) {
        let (chunks, encoded, decoded) = self.seen;
        self.limits = Limits::for_window(self.window, chunks, encoded, decoded);
    }

    /// What may be asked for and not yet received now.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// What is asked for and not yet received now: files being rebuilt,
    /// chunks and their decoded bytes.
    pub fn in_flight(&self) -> Limits {
        Limits { files: self.files.len(), chunks: self.outstanding, bytes: self.outstanding_bytes }
    }

    /// Whether the session is over (the summary is queued).
    pub fn is_finished(&self) -> bool {
        self.state == State::Finished
    }

    /// Entries that could not be applied, with the reason (the first
    /// [`MAX_FAILED_KEPT`]; the summary counts them all).
    pub fn failed(&self) -> &[FailedEntry] {
        &self.failed
    }

    fn record_failure(&mut self, path: String, error: String) {
        self.failed_count += 1;
        if self.failed.len() < MAX_FAILED_KEPT {
            self.failed.push(FailedEntry { path, error });
        }
    }

    /// After a failed session (a cut connection, a peer error): commits the
    /// files already received and verified, and drops the rest, so the next
    /// session need not send them again. Every committed file is whole and
    /// checked; nothing half-built reaches a final name.
    pub fn salvage(&mut self) {
        if let Some(rx) = self.rx.take() {
            let _ = rx.finish(false);
        }
    }

    /// Labels a pull for the server's audit log; call before the first
    /// poll, while `Open` waits in the outbox.
    pub fn set_tags(&mut self, tags: Vec<msg::Tag>) {
        for message in &mut self.outbox {
            if let Message::Open(open) = message {
                open.tags.clone_from(&tags);
            }
        }
    }

    /// Asks for the snapshot `selector` names instead of the server's
    /// current tree; call before the first poll, while `Open` waits in the
    /// outbox.
    pub fn set_snapshot(&mut self, selector: Option<String>) {
        for message in &mut self.outbox {
            if let Message::Open(open) = message {
                open.at.clone_from(&selector);
            }
        }
    }

    /// Reports progress to `progress` from now on.
    pub fn set_progress(&mut self, progress: ProgressSink) {
        self.progress = progress;
    }

    /// What this side applied, once finished.
    pub fn summary(&self) -> Option<&msg::Summary> {
        self.summary.as_ref()
    }

    /// Takes one message from the sender's control stream.
    ///
    /// # Errors
    /// [`SessionError`] for messages out of place or malformed, or local
    /// failures; an `Error` message for the peer is then queued.
    pub fn handle(&mut self, message: Message) -> Result<(), SessionError> {
        self.handle_on(None, message)
    }

    /// Takes one message from the sender's data stream `stream` (any id
    /// the transport gives it, unique in the session), in the order the
    /// stream delivered them: a zstd stream chunk is decoded with the ones
    /// before it on its stream.
    ///
    /// # Errors
    /// As [`Receiver::handle`].
    pub fn handle_data(&mut self, stream: u64, message: Message) -> Result<(), SessionError> {
        self.handle_on(Some(stream), message)
    }

    fn handle_on(&mut self, stream: Option<u64>, message: Message) -> Result<(), SessionError> {
        let result = self.dispatch(stream, message);
        if let Err(e) = &result {
            self.outbox
                .push_back(Message::Error(msg::ErrorMsg { code: e.close_code() as u32, message: e.to_string() }));
            self.state = State::Finished;
        }
        result
    }

    fn dispatch(&mut self, stream: Option<u64>, message: Message) -> Result<(), SessionError> {
        match (self.state, message) {
            (_, Message::Error(e)) => Err(SessionError::Peer { code: CloseCode::from_u32(e.code), message: e.message }),
            (State::Greeting, Message::Hello(hello)) => self.greet(&hello),
            (State::Greeting, Message::Open(open)) => self.open(open),
            (State::Asking, Message::Hello(hello)) => {
                xfer_protocol::check_version(hello.version).map_err(super::version_mismatch)?;
                self.costs_agreed = hello.features & KNOWN_FEATURES & FEATURE_STORE_COSTS != 0;
                self.zstd_stream_agreed = hello.features & FEATURE_ZSTD_STREAM != 0;
                Ok(())
            }
            (State::Asking, Message::Opened(opened)) => {
                self.opened(&opened);
                Ok(())
            }
            (State::Open, Message::ListDir(list)) => self.list_dir(list),
            (State::Open, Message::GetFiles(get)) => self.get_files(get),
            (State::Open, Message::Mkdir(m)) => self.mkdir(m),
            (State::Open, Message::Symlink(s)) => self.symlink(s),
            (State::Open, Message::SetMeta(s)) => self.set_meta(s),
            (State::Open, Message::Delete(d)) => self.delete(d),
            (State::Open, Message::Link(l)) => self.link(l),
            (State::Open, Message::WriteFile(w)) if self.partial.is_none() => self.write_file_header(w),
            (State::Open, Message::MoreChunks(more)) => self.more_chunks(more),
            (State::Open, Message::ChunkData(data)) => self.chunk_data(stream, data),
            (State::Open, Message::RefineRequest(refine)) => self.refine(refine),
            (State::Open, Message::FileFailed(failed)) => self.file_failed(failed),
            (State::Open, Message::Done(_)) => self.sender_done(),
            (State::Open, Message::DryRun(_)) if self.dry_run_agreed => self.discard(),
            (State::AwaitingCosts, Message::StoreCosts(costs)) => {
                self.store_costs = Some(costs);
                self.state = State::Finished;
                Ok(())
            }
            // Answers for a file given up on may still be on their way after
            // the summary (data streams are not ordered with the control
            // stream): ignored, as before it (SPEC.md section 3).
            (State::Finished | State::AwaitingCosts, message) if self.answers_abandoned(&message) => Ok(()),
            (state, message) => Err(unexpected(state, &message)),
        }
    }

    /// Whether `message` is a data stream answer for a file given up on.
    fn answers_abandoned(&self, message: &Message) -> bool {
        let file = match message {
            Message::ChunkData(data) => data.file,
            Message::RefineRequest(refine) => refine.file,
            Message::FileFailed(failed) => failed.file,
            _ => return false,
        };
        self.abandoned.contains(&file)
    }

    fn greet(&mut self, hello: &msg::Hello) -> Result<(), SessionError> {
        xfer_protocol::check_version(hello.version).map_err(super::version_mismatch)?;
        let offered =
            FEATURE_DRY_RUN | FEATURE_ZSTD_STREAM | if self.offer_store_costs { FEATURE_STORE_COSTS } else { 0 };
        self.costs_agreed = offered & hello.features & FEATURE_STORE_COSTS != 0;
        self.dry_run_agreed = hello.features & FEATURE_DRY_RUN != 0;
        self.zstd_stream_agreed = hello.features & FEATURE_ZSTD_STREAM != 0;
        self.outbox.push_back(super::sender::hello(offered));
        Ok(())
    }

    fn opened(&mut self, opened: &msg::Opened) {
        self.source_empty = opened.root == Manifest::EMPTY.tree().root().0;
        self.state = State::Open;
    }

    fn mkdir(&mut self, m: msg::Mkdir) -> Result<(), SessionError> {
        let meta = wire::meta_from_wire(m.mode, m.mtime, m.attrs).map_err(protocol)?;
        self.enqueue(Queued::Op(Op::Mkdir { path: path(m.path)?, meta }))
    }

    fn symlink(&mut self, s: msg::Symlink) -> Result<(), SessionError> {
        let meta = wire::meta_from_wire(0, s.mtime, s.attrs).map_err(protocol)?;
        self.enqueue(Queued::Op(Op::Symlink { path: path(s.path)?, target: s.target, meta }))
    }

    fn set_meta(&mut self, s: msg::SetMeta) -> Result<(), SessionError> {
        let meta = wire::meta_from_wire(s.mode, s.mtime, s.attrs).map_err(protocol)?;
        self.enqueue(Queued::Op(Op::SetMeta { path: path(s.path)?, meta }))
    }

    fn delete(&mut self, d: msg::Delete) -> Result<(), SessionError> {
        let path = path(d.path)?;
        self.charge_delete(&path)?;
        self.enqueue(Queued::Op(Op::Delete { path }))
    }

    fn link(&mut self, l: msg::Link) -> Result<(), SessionError> {
        let (path, target) = (path(l.path)?, path(l.target)?);
        self.enqueue(Queued::Op(Op::Link { path, target, size: l.size, hash: FileHash(l.hash) }))
    }

    /// A `WriteFile` header: written at once, or held while its chunk list continues.
    fn write_file_header(&mut self, mut w: msg::WriteFile) -> Result<(), SessionError> {
        if w.more {
            // The header keeps no copy of the list: the parts gather in `chunks`.
            let msg::ChunkList::Full(first) = std::mem::replace(&mut w.list, msg::ChunkList::Implied) else {
                return Err(protocol("a continued chunk list must be a full list"));
            };
            let mut partial = PartialList { header: w, chunks: Vec::new(), bytes: 0 };
            partial.extend(first)?;
            self.partial = Some(partial);
            return Ok(());
        }
        self.write_file(w)
    }

    fn more_chunks(&mut self, more: msg::MoreChunks) -> Result<(), SessionError> {
        let Some(mut partial) = self.partial.take() else {
            return Err(protocol("MoreChunks without a WriteFile"));
        };
        let msg::ChunkList::Full(part) = more.list else {
            return Err(protocol("a continued chunk list must be a full list"));
        };
        if more.file != partial.header.file {
            return Err(protocol("MoreChunks for another file"));
        }
        partial.extend(part)?;
        if more.more {
            self.partial = Some(partial);
            return Ok(());
        }
        let PartialList { header, chunks, .. } = partial;
        self.write_file(msg::WriteFile { list: msg::ChunkList::Full(chunks), more: false, ..header })
    }

    fn file_failed(&mut self, failed: msg::FileFailed) -> Result<(), SessionError> {
        // The sender's message names the file and why; said as the
        // sender's own source-changed failure reads.
        let reason = format!("{}: changed while being read; it was not sent", failed.message);
        self.abandon(failed.file, &reason);
        self.pump()
    }

    fn sender_done(&mut self) -> Result<(), SessionError> {
        // Every delete passed the limit: they go ahead.
        self.release_held()?;
        self.done = true;
        self.pump()
    }

    fn open(&mut self, open: msg::Open) -> Result<(), SessionError> {
        if open.direction != msg::Direction::Push {
            return Err(SessionError::Peer {
                code: Some(CloseCode::ProtocolError),
                message: "this receiver takes pushes only".into(),
            });
        }
        let path = match open.path.as_slice() {
            [] => None,
            bytes => Some(path(bytes.to_vec())?),
        };
        let request = OpenRequest {
            path,
            delete: open.delete,
            checksum: open.checksum,
            source_host: open.source_host,
            source_path: open.source_path,
            tags: open.tags,
        };
        let mut store = (self.opener)(&request)?;
        self.tree = store.refresh(open.checksum).map_err(SessionError::local)?.tree();
        let root = self.tree.root().0;
        self.outbox.push_back(Message::Opened(msg::Opened { root, remembered: open.remembered_root == Some(root) }));
        self.rx = Some(store);
        self.state = State::Open;
        Ok(())
    }

    /// The receiving tree as refreshed (empty before `Open`).
    fn manifest(&self) -> &Manifest {
        static EMPTY: Manifest = Manifest::EMPTY;
        self.rx.as_ref().map_or(&EMPTY, |rx| rx.manifest())
    }

    fn write_file(&mut self, w: msg::WriteFile) -> Result<(), SessionError> {
        let path = path(w.path)?;
        let old = self.manifest().get(&path).and_then(|e| e.file()).map_or(&[][..], |f| &f.chunks[..]);
        let digest = wire::digest_from_wire(w.size, w.hash, w.params, &w.list, old).map_err(wire_error)?;
        let meta = wire::meta_from_wire(w.mode, w.mtime, w.attrs).map_err(protocol)?;
        self.enqueue(Queued::Write { file: w.file, path, meta, digest })
    }
}

fn path(bytes: Vec<u8>) -> Result<RelPath, SessionError> {
    RelPath::new(bytes).map_err(protocol)
}

/// A `WriteFile` whose chunk list continues in `MoreChunks`: the parts so
/// far and the sum of their lengths.
struct PartialList {
    header: msg::WriteFile,
    chunks: Vec<msg::ChunkRef>,
    bytes: u64,
}

impl PartialList {
    /// Adds the next `part` once the list with it still fits its file, so
    /// that a list that never ends, or outgrows its file, is refused before
    /// it is held: at most [`wire::MAX_FILE_CHUNKS`] chunks, no more than
    /// the size allows (FastCDC cuts none below the minimum but a file's
    /// last), lengths within the size.
    fn extend(&mut self, part: Vec<msg::ChunkRef>) -> Result<(), SessionError> {
        let params = wire::params_from_wire(self.header.params).map_err(protocol)?;
        let count = self.chunks.len() + part.len();
        wire::check_chunk_count(count as u64, self.header.size, params).map_err(wire_error)?;
        let bytes = self.bytes + part.iter().map(|c| u64::from(c.len)).sum::<u64>();
        if bytes > self.header.size {
            return Err(protocol(WireError::Inconsistent { size: self.header.size, chunks: count }));
        }
        self.bytes = bytes;
        self.chunks.extend(part);
        Ok(())
    }
}

/// A refused field: a list over the receiver's limit is `TooLarge`, the
/// rest malformed.
fn unexpected(state: State, message: &Message) -> SessionError {
    SessionError::Unexpected {
        kind: message.kind(),
        state: match state {
            State::Asking => "waiting for Opened",
            State::Greeting => "waiting for Open",
            State::Open => "receiving",
            State::AwaitingCosts => "waiting for the store's costs",
            State::Finished => "finished",
        },
    }
}

fn wire_error(e: WireError) -> SessionError {
    match e {
        WireError::TooManyChunks { .. } => {
            SessionError::Peer { code: Some(CloseCode::TooLarge), message: e.to_string() }
        }
        e => protocol(e),
    }
}
