//! Fuzz target: the sans-IO push session (src/core/session) between a real
//! `Sender` and a real `Receiver` writing into a `MirrorStore` on a
//! temporary directory, as the transport drives them, with the messages
//! between them delivered, dropped, duplicated, reordered, corrupted or
//! forged as the input says.
//!
//! The input describes the destination's tree before the session, the
//! source tree (built from a few shared blocks, so files share chunks and
//! old versions resemble new ones: reuse, deltas and refinements happen),
//! push or pull, `--delete`, whether the sender remembers the destination,
//! and a schedule of steps. Messages travel on lanes modelled on the
//! transport's QUIC streams: one FIFO per data stream (`ChunkData`,
//! `RefineRequest`, `FileFailed`), the control stream each way. A step
//! delivers the head of a lane, or breaks the rules: drops, duplicates or
//! swaps heads, corrupts a field, forges a message to either side, changes a
//! source file under the sender, or cuts the connection. After the schedule
//! the lanes are drained in order; a receiver that did not finish is
//! salvaged, as the transport does on any error. Forged names include the
//! receiver's temporaries' (`.xfer-tmp.PID.N`), and the process runs under
//! a file size limit that a forged chunk list can cross, so that building
//! a file fails midway as on a full disk.
//!
//! Checked, beyond "no panic" (and libFuzzer's RSS limit for memory):
//! - every message either side sends passes the frame codec's limits, and a
//!   receiver failing with a `SessionError` has queued an `Error` for the
//!   peer;
//! - nothing is written outside the destination (the state database aside);
//! - no temporary is left once the receiver is dropped;
//! - every regular file in the destination is whole: its old content, or a
//!   content whose BLAKE3 hash a `WriteFile` for that very path declared
//!   (which the receiver can only produce from chunks that all arrived);
//! - a schedule that broke no rule completes, with the destination equal to
//!   the source (kinds, contents, modes, mtimes, symlink targets).
#![no_main]

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::OnceLock;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
// The edges under test: the mirror tree (the receiver's destination),
// the temporaries' names and the transport's data streams.
use xfer::fs::scan::TEMP_PREFIX;
use xfer::fs::store::{MirrorReceiver, MirrorStore, Receiving};
use xfer::net::frames::DATA_STREAMS;
use xfer_core::chunk::{digest_bytes, ChunkRef};
use xfer_core::codec::{Compression, Encoder};
// Fuzz inputs must mean the same data in every version.
use xfer_core::fixture::seeded;
use xfer_core::hash::ChunkId;
use xfer_core::manifest::{Entry, EntryKind, Manifest, Meta, Mtime, RelPath};
use xfer_core::plan::PlanOptions;
use xfer_core::session::{ChunkReader, OpenRequest, Receiver, Sender, SenderConfig, SessionError};
use xfer_core::wire;
use xfer_protocol::{frame, msg, Message, MAX_CHUNK_REFS_PER_MESSAGE};

// ---------------------------------------------------------------------------
// Inputs

#[derive(Arbitrary, Debug)]
struct Input {
    before: Vec<(u8, NodeSpec)>,
    source: Vec<(u8, NodeSpec)>,
    pull: bool,
    delete: bool,
    checksum: bool,
    /// Push only: the sender remembers the destination as it is.
    remembered: bool,
    /// The order in which the lanes are drained after the schedule.
    drain: u8,
    steps: Vec<Step>,
}

#[derive(Arbitrary, Debug, Clone)]
enum NodeSpec {
    File { content: ContentSpec, mode: u8, mtime: u8 },
    Dir { mode: u8, mtime: u8 },
    Symlink { target: u8, mtime: u8 },
}

/// File content as a sequence of shared blocks, each maybe cut short or
/// with one byte changed, and a short tail.
#[derive(Arbitrary, Debug, Clone)]
struct ContentSpec {
    blocks: Vec<BlockSpec>,
    tail: u8,
}

#[derive(Arbitrary, Debug, Clone)]
struct BlockSpec {
    block: u8,
    len: Option<u16>,
    edit: Option<(u16, u8)>,
}

#[derive(Arbitrary, Debug)]
enum Step {
    /// Delivers the head of a ready lane (the control lane only while the
    /// receiver wants input): what the transport does.
    Deliver(u8),
    Drop(u8),
    Duplicate(u8),
    /// Swaps the first two messages of a lane.
    Swap(u8),
    Corrupt(u8, Corruption),
    /// A message the sender never sent, to the receiver.
    Forge(Forged),
    /// A message the receiver never sent, to the sender.
    Answer(Answer),
    /// A source file changes under the sender.
    ChangeSource {
        path: u8,
        at: u16,
    },
    /// The connection breaks.
    Cut,
}

#[derive(Arbitrary, Debug)]
enum Corruption {
    File(u8),
    Index(u8),
    Codec(u8),
    DecodedLen(i16),
    Payload {
        at: u16,
        xor: u8,
    },
    Truncate(u16),
    Path(u8),
    Hash(u8),
    Size(i16),
    More,
    Signature {
        at: u16,
        xor: u8,
    },
    /// A byte of the encoded body, whatever the message.
    Byte {
        at: u16,
        xor: u8,
    },
}

#[derive(Arbitrary, Debug)]
enum Forged {
    WriteFile {
        file: u8,
        path: u8,
        content: ContentSpec,
        list: ListForm,
        mode: u8,
        more: bool,
    },
    MoreChunks {
        file: u8,
        content: ContentSpec,
        from: u8,
        more: bool,
    },
    ChunkData {
        file: u8,
        index: u8,
        content: ContentSpec,
        chunk: u8,
        compression: u8,
        codec: Option<u8>,
        junk: Option<Vec<u8>>,
    },
    RefineRequest {
        file: u8,
        index: u8,
        ranges: Vec<u8>,
    },
    FileFailed {
        file: u8,
    },
    Mkdir {
        path: u8,
        mode: u8,
    },
    Symlink {
        path: u8,
        target: u8,
    },
    SetMeta {
        path: u8,
        mode: u8,
    },
    Delete {
        path: u8,
    },
    Done,
    Hello {
        version: u32,
    },
    Open {
        path: u8,
        push: bool,
        remembered: Option<u8>,
    },
    ListDir {
        dir: u8,
    },
    GetFiles {
        paths: Vec<u8>,
    },
    HasChunks {
        ids: Vec<u8>,
    },
    Commit {
        seq: u64,
    },
    Error {
        code: u32,
    },
}

#[derive(Arbitrary, Debug)]
enum ListForm {
    Implied,
    Full,
    /// The full list without one chunk.
    FullSkip(u8),
    /// The full list with one chunk twice.
    FullRepeat(u8),
    /// One chunk repeated into a file over the process's file size limit
    /// (`FILE_SIZE_LIMIT`): creating it fails midway.
    Oversized(u8),
    /// Edits of the receiver's old list for the path.
    Edit(Vec<EditForm>),
}

#[derive(Arbitrary, Debug)]
enum EditForm {
    Keep { from: u8, count: u8 },
    New(u8),
}

#[derive(Arbitrary, Debug)]
enum Answer {
    NeedChunk { file: u8, index: u8, signature: SigForm },
    FineSignatures { file: u8, index: u8, signatures: Vec<SigForm> },
    Listing { dir: u8, children: Vec<(u8, bool, u8)>, more: bool },
    FileInfos { files: Vec<(u8, ContentSpec, bool)>, more: bool },
    Opened { root: u8, remembered: bool },
    Summary,
    Have { bits: Vec<u8> },
    Hello { version: u32 },
    Error { code: u32 },
}

#[derive(Arbitrary, Debug)]
enum SigForm {
    None,
    Of(ContentSpec),
    Junk(Vec<u8>),
}

// ---------------------------------------------------------------------------
// Pools the input picks from

/// Paths of the generated trees: `d` as a file in one tree conflicts with
/// `d/...` in the other.
const TREE_PATHS: [&str; 8] = ["a", "b", "d", "d/a", "d/b", "d/e/f", "e", "e/a"];
/// Symlink targets, some leading out of the destination (which must never
/// be followed for a write).
const LINK_TARGETS: [&str; 6] = ["a", "d/a", "..", "../..", "../../..", "nowhere"];
const FILE_MODES: [u32; 4] = [0o644, 0o600, 0o755, 0o444];
const DIR_MODES: [u32; 3] = [0o755, 0o700, 0o555];
const MTIMES: [i64; 4] = [1, 7, 1_600_000_000, 1_700_000_000];
/// Names a forged listing may carry, valid or not.
const CHILD_NAMES: [&str; 9] = ["a", "b", "d", "e", "f", "..", ".", "x/y", ""];

/// Paths forged messages use: the trees' own, malformed ones, and names
/// of the receiver's temporaries (`.xfer-tmp.PID.SERIAL`, serials counting
/// from 1 in each store).
fn forged_paths() -> &'static [Vec<u8>] {
    static PATHS: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    PATHS.get_or_init(|| {
        let mut paths: Vec<Vec<u8>> = TREE_PATHS.iter().map(|p| p.as_bytes().to_vec()).collect();
        for odd in ["", ".", "..", "../x", "/abs", "a//b", "a/./b", "d/e", "l", "d/e/f/g", "a\0b"] {
            paths.push(odd.as_bytes().to_vec());
        }
        let pid = std::process::id();
        for serial in 1..=3 {
            let mut temp = TEMP_PREFIX.to_vec();
            temp.extend_from_slice(format!("{pid}.{serial}").as_bytes());
            paths.push(temp.clone());
            let mut nested = b"d/".to_vec();
            nested.extend_from_slice(&temp);
            paths.push(nested);
        }
        paths
    })
}

fn forged_path(pick: u8) -> Vec<u8> {
    let paths = forged_paths();
    paths[usize::from(pick) % paths.len()].clone()
}

const BLOCK_LEN: usize = 20 * 1024;
const BLOCKS: usize = 5;
const MAX_BLOCKS_PER_FILE: usize = 6;
const MAX_ENTRIES: usize = 12;
const MAX_STEPS: usize = 400;
/// Deliveries after the schedule; a small session needs a few hundred.
const MAX_DRAIN: usize = 20_000;

/// The shared blocks: random ones (FastCDC cuts them into several chunks)
/// and a compressible one, so zstd and lz4 get used.
fn blocks() -> &'static [Vec<u8>] {
    static BLOCKS_: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    BLOCKS_.get_or_init(|| {
        (0..BLOCKS as u64)
            .map(|seed| {
                let mut bytes = seeded(BLOCK_LEN, seed + 1);
                if seed == 3 {
                    for (i, b) in bytes.iter_mut().enumerate() {
                        *b = if i % 64 < 48 { b"the quick brown fox "[i % 20] } else { *b };
                    }
                }
                bytes
            })
            .collect()
    })
}

impl ContentSpec {
    fn bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for spec in self.blocks.iter().take(MAX_BLOCKS_PER_FILE) {
            let block = &blocks()[usize::from(spec.block) % BLOCKS];
            let len = spec.len.map_or(BLOCK_LEN, |l| usize::from(l) % (BLOCK_LEN + 1));
            let start = out.len();
            out.extend_from_slice(&block[..len]);
            if let Some((at, xor)) = spec.edit {
                if len > 0 {
                    out[start + usize::from(at) % len] ^= xor.max(1);
                }
            }
        }
        out.extend_from_slice(&seeded(usize::from(self.tail), 99));
        out
    }
}

fn pick<T: Copy>(pool: &[T], n: u8) -> T {
    pool[usize::from(n) % pool.len()]
}

fn file_number(n: u8) -> u32 {
    if n == u8::MAX {
        u32::MAX
    } else {
        u32::from(n)
    }
}

// ---------------------------------------------------------------------------
// Trees

#[derive(Clone, PartialEq, Eq)]
enum Node {
    Dir { mode: u32, mtime: i64 },
    File { data: Vec<u8>, mode: u32, mtime: i64 },
    Symlink { target: Vec<u8>, mtime: i64 },
}

/// Contents shown by length and hash: a failing assertion stays readable.
impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Node::Dir { mode, mtime } => write!(f, "Dir {{ mode: {mode:o}, mtime: {mtime} }}"),
            Node::File { data, mode, mtime } => {
                let hash = blake3::hash(data).to_hex();
                write!(f, "File {{ {} bytes, {}.., mode: {mode:o}, mtime: {mtime} }}", data.len(), &hash[..12])
            }
            Node::Symlink { target, mtime } => {
                write!(f, "Symlink {{ {:?}, mtime: {mtime} }}", String::from_utf8_lossy(target))
            }
        }
    }
}

type Model = BTreeMap<RelPath, Node>;

fn rel(path: &[u8]) -> RelPath {
    RelPath::new(path.to_vec()).expect("invariant: pool paths are valid")
}

/// A well-formed tree from the specs: parents are added as directories,
/// and entries that conflict with earlier ones are skipped.
fn build_model(specs: &[(u8, NodeSpec)]) -> Model {
    let mut model = Model::new();
    for (path, spec) in specs.iter().take(MAX_ENTRIES) {
        let path = rel(pick(&TREE_PATHS, *path).as_bytes());
        let node = match spec {
            NodeSpec::File { content, mode, mtime } => {
                Node::File { data: content.bytes(), mode: pick(&FILE_MODES, *mode), mtime: pick(&MTIMES, *mtime) }
            }
            NodeSpec::Dir { mode, mtime } => Node::Dir { mode: pick(&DIR_MODES, *mode), mtime: pick(&MTIMES, *mtime) },
            NodeSpec::Symlink { target, mtime } => {
                Node::Symlink { target: pick(&LINK_TARGETS, *target).as_bytes().to_vec(), mtime: pick(&MTIMES, *mtime) }
            }
        };
        if model.contains_key(&path) {
            continue;
        }
        // Every ancestor must be (or become) a directory; a non-directory
        // must not have entries below it.
        let mut ancestors = Vec::new();
        let mut parent = path.parent();
        while !parent.is_root() {
            ancestors.push(parent.clone());
            parent = parent.parent();
        }
        if ancestors.iter().any(|a| model.get(a).is_some_and(|n| !matches!(n, Node::Dir { .. }))) {
            continue;
        }
        if !matches!(node, Node::Dir { .. }) && model.keys().any(|k| k.is_inside(&path)) {
            continue;
        }
        for a in ancestors {
            model.entry(a).or_insert(Node::Dir { mode: 0o755, mtime: 1 });
        }
        model.insert(path, node);
    }
    model
}

fn manifest_of(model: &Model) -> Manifest {
    let entries = model
        .iter()
        .map(|(path, node)| {
            let meta = |mode, secs| Meta::basic(mode, Mtime { secs, nanos: 0 });
            let (meta, kind) = match node {
                Node::Dir { mode, mtime } => (meta(*mode, *mtime), EntryKind::Dir),
                Node::File { data, mode, mtime } => (meta(*mode, *mtime), EntryKind::File(digest_bytes(data))),
                Node::Symlink { target, mtime } => (meta(0, *mtime), EntryKind::Symlink { target: target.clone() }),
            };
            Entry { path: path.clone(), meta, kind }
        })
        .collect();
    Manifest::new(entries).expect("invariant: built models are well formed")
}

fn materialize(model: &Model, root: &Path) {
    for (path, node) in model {
        let abs = path.to_path(root);
        match node {
            Node::Dir { .. } => fs::create_dir(&abs).expect("create a directory of the tree before"),
            Node::File { data, mode, mtime } => {
                fs::write(&abs, data).expect("write a file of the tree before");
                fs::set_permissions(&abs, fs::Permissions::from_mode(*mode)).expect("chmod");
                filetime::set_file_mtime(&abs, filetime::FileTime::from_unix_time(*mtime, 0)).expect("mtime");
            }
            Node::Symlink { target, mtime } => {
                std::os::unix::fs::symlink(std::ffi::OsStr::from_bytes(target), &abs).expect("symlink");
                let t = filetime::FileTime::from_unix_time(*mtime, 0);
                filetime::set_symlink_file_times(&abs, t, t).expect("symlink mtime");
            }
        }
    }
    for (path, node) in model.iter().rev() {
        if let Node::Dir { mode, mtime } = node {
            let abs = path.to_path(root);
            fs::set_permissions(&abs, fs::Permissions::from_mode(*mode)).expect("chmod");
            filetime::set_file_mtime(&abs, filetime::FileTime::from_unix_time(*mtime, 0)).expect("mtime");
        }
    }
}

/// The tree under `root` as a model (no xfer code involved).
fn read_tree(root: &Path) -> Model {
    fn walk(dir: &Path, rel_dir: &RelPath, model: &mut Model) {
        let entries = fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        for dirent in entries {
            let dirent = dirent.expect("read a directory entry");
            let rel = rel_dir.join(dirent.file_name().as_bytes()).expect("a name read from disk is one component");
            let meta = fs::symlink_metadata(dirent.path()).expect("lstat");
            let node = if meta.is_dir() {
                walk(&dirent.path(), &rel, model);
                Node::Dir { mode: meta.mode() & 0o7777, mtime: meta.mtime() }
            } else if meta.file_type().is_symlink() {
                let target = fs::read_link(dirent.path()).expect("readlink").as_os_str().as_bytes().to_vec();
                Node::Symlink { target, mtime: meta.mtime() }
            } else {
                Node::File {
                    data: fs::read(dirent.path()).expect("read"),
                    mode: meta.mode() & 0o7777,
                    mtime: meta.mtime(),
                }
            };
            model.insert(rel, node);
        }
    }
    let mut model = Model::new();
    walk(root, &RelPath::root(), &mut model);
    model
}

// ---------------------------------------------------------------------------
// The sender's source: in memory, and changeable under it

#[derive(Clone, Default)]
struct Source(Rc<RefCell<HashMap<RelPath, Vec<u8>>>>);

impl ChunkReader for Source {
    // The mirror's error type: `SourceChanged` concerns one file alone.
    type Error = xfer::Error;

    fn read(&mut self, path: &RelPath, offset: u64, chunk: ChunkRef) -> xfer::Result<Vec<u8>> {
        let changed = || xfer::Error::SourceChanged { path: PathBuf::from(path.to_string()) };
        let files = self.0.borrow();
        let data = files.get(path).ok_or_else(changed)?;
        let start = usize::try_from(offset).map_err(|_| changed())?;
        let end = start.checked_add(chunk.len as usize).ok_or_else(changed)?;
        let bytes = data.get(start..end).ok_or_else(changed)?;
        if ChunkId::of(bytes) != chunk.id {
            return Err(changed());
        }
        Ok(bytes.to_vec())
    }
}

// ---------------------------------------------------------------------------
// Lanes

const DATA_LANES: usize = DATA_STREAMS;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Lane {
    Data(usize),
    /// Sender to receiver, control stream.
    Control,
    /// Receiver to sender, control stream.
    Back,
}

#[derive(Default)]
struct Lanes {
    data: [VecDeque<Message>; DATA_LANES],
    control: VecDeque<Message>,
    back: VecDeque<Message>,
}

impl Lanes {
    fn lane(&mut self, lane: Lane) -> &mut VecDeque<Message> {
        match lane {
            Lane::Data(i) => &mut self.data[i],
            Lane::Control => &mut self.control,
            Lane::Back => &mut self.back,
        }
    }

    /// Non-empty lanes; the control lane only if `control` (the receiver
    /// reads it only while it wants input).
    fn ready(&self, control: bool) -> Vec<Lane> {
        let mut ready: Vec<Lane> = (0..DATA_LANES).filter(|&i| !self.data[i].is_empty()).map(Lane::Data).collect();
        if control && !self.control.is_empty() {
            ready.push(Lane::Control);
        }
        if !self.back.is_empty() {
            ready.push(Lane::Back);
        }
        ready
    }
}

// ---------------------------------------------------------------------------
// One run

// The errors are read only through `Debug`, in assertion messages.
#[allow(dead_code)]
#[derive(Debug)]
enum End {
    ReceiverFailed(SessionError),
    SenderFailed(SessionError),
    /// A frame the reader refuses, or a cut: the connection is gone.
    ConnectionLost,
}

struct Run {
    sender: Sender<Source>,
    receiver: MirrorReceiver,
    source: Source,
    lanes: Lanes,
    encoder: Encoder,
    /// Path -> hashes a WriteFile delivered to the receiver declared for it.
    declared: HashMap<Vec<u8>, HashSet<[u8; 32]>>,
    /// Whether any step broke the rules (and had an effect).
    faulted: bool,
    end: Option<End>,
}

/// Through the frame codec, as the transport sends and reads: `None` if
/// the reader would refuse the frame (and close the connection).
fn over_the_wire(message: &Message) -> Option<Message> {
    // An invalid message is encoded all the same and refused by the
    // reader, but `frame::encode` asserts validity in debug builds.
    message.validate().ok()?;
    let mut bytes = Vec::new();
    frame::encode(message, &mut bytes);
    match frame::decode(&bytes) {
        Ok(Some((decoded, used))) => {
            assert_eq!(used, bytes.len());
            Some(decoded)
        }
        Ok(None) => panic!("a whole frame decoded as incomplete: {message:?}"),
        Err(_) => None,
    }
}

impl Run {
    /// Moves everything both sides have to say onto the lanes.
    fn collect(&mut self) {
        loop {
            let (lane, message) = match self.sender.poll_data() {
                Ok(Some(answer)) => answer,
                Ok(None) => break,
                // Only a read failing beyond one file ends the sender.
                Err(e) => {
                    self.end.get_or_insert(End::SenderFailed(e));
                    break;
                }
            };
            // On the data stream the sender chose: a zstd stream chunk
            // belongs to its stream.
            self.lanes.data[lane].push_back(message);
        }
        while let Some(message) = self.sender.poll_transmit() {
            self.lanes.control.push_back(message);
        }
        while let Some(message) = self.receiver.poll_transmit() {
            self.lanes.back.push_back(message);
        }
    }

    /// Hands a message to the side its lane leads to.
    fn deliver(&mut self, lane: Lane, message: Message, genuine: bool) {
        let Some(message) = over_the_wire(&message) else {
            // Both sessions only send what the codec takes.
            assert!(!genuine, "a side sent a message its peer's codec refuses: {message:?}");
            self.end = Some(End::ConnectionLost);
            return;
        };
        if lane == Lane::Back {
            if let Err(e) = self.sender.handle(message) {
                self.end = Some(End::SenderFailed(e));
            }
            return;
        }
        if let Message::WriteFile(w) = &message {
            self.declared.entry(w.path.clone()).or_default().insert(w.hash);
        }
        let handled = match lane {
            Lane::Data(stream) => self.receiver.handle_data(stream as u64, message),
            _ => self.receiver.handle(message),
        };
        if let Err(e) = handled {
            let queued: Vec<Message> = std::iter::from_fn(|| self.receiver.poll_transmit()).collect();
            assert!(
                matches!(queued.last(), Some(Message::Error(_))),
                "the receiver failed ({e}) without telling the sender: {queued:?}"
            );
            self.end = Some(End::ReceiverFailed(e));
        }
    }

    fn step(&mut self, step: &Step) {
        self.collect();
        let any = |lanes: &Lanes, n: u8| {
            let ready = lanes.ready(true);
            (!ready.is_empty()).then(|| ready[usize::from(n) % ready.len()])
        };
        match step {
            Step::Deliver(n) => {
                let ready = self.lanes.ready(self.receiver.wants_input());
                if ready.is_empty() {
                    return;
                }
                let lane = ready[usize::from(*n) % ready.len()];
                let message = self.lanes.lane(lane).pop_front().expect("invariant: the lane is ready");
                self.deliver(lane, message, true);
            }
            Step::Drop(n) => {
                if let Some(lane) = any(&self.lanes, *n) {
                    self.lanes.lane(lane).pop_front();
                    self.faulted = true;
                }
            }
            Step::Duplicate(n) => {
                if let Some(lane) = any(&self.lanes, *n) {
                    let queue = self.lanes.lane(lane);
                    let head = queue.front().cloned().expect("invariant: the lane is ready");
                    queue.push_front(head);
                    self.faulted = true;
                }
            }
            Step::Swap(n) => {
                if let Some(lane) = any(&self.lanes, *n) {
                    let queue = self.lanes.lane(lane);
                    if queue.len() >= 2 {
                        queue.swap(0, 1);
                        self.faulted = true;
                    }
                }
            }
            Step::Corrupt(n, corruption) => {
                if let Some(lane) = any(&self.lanes, *n) {
                    let head = self.lanes.lane(lane).pop_front().expect("invariant: the lane is ready");
                    self.faulted = true;
                    match corrupt(head, corruption) {
                        Some(message) => self.deliver(lane, message, false),
                        None => self.end = Some(End::ConnectionLost),
                    }
                }
            }
            Step::Forge(forged) => {
                self.faulted = true;
                let message = forge(forged, &mut self.encoder);
                self.deliver(Lane::Control, message, false);
            }
            Step::Answer(answer) => {
                self.faulted = true;
                let message = answer_with(answer);
                self.deliver(Lane::Back, message, false);
            }
            Step::ChangeSource { path, at } => {
                let mut files = self.source.0.borrow_mut();
                let mut paths: Vec<RelPath> = files.keys().cloned().collect();
                paths.sort();
                if paths.is_empty() {
                    return;
                }
                let data = files.get_mut(&paths[usize::from(*path) % paths.len()]).expect("invariant: listed above");
                if data.is_empty() {
                    return;
                }
                let at = usize::from(*at) % data.len();
                data[at] ^= 0x5a;
                self.faulted = true;
            }
            Step::Cut => {
                self.faulted = true;
                self.end = Some(End::ConnectionLost);
            }
        }
    }

    /// Delivers what is left, in order, as the transport would.
    fn drain(&mut self, order: u8) {
        for n in 0..MAX_DRAIN {
            if self.end.is_some() {
                return;
            }
            self.collect();
            let ready = self.lanes.ready(self.receiver.wants_input());
            if ready.is_empty() {
                return;
            }
            let lane = ready[(usize::from(order) + n) % ready.len()];
            let message = self.lanes.lane(lane).pop_front().expect("invariant: the lane is ready");
            self.deliver(lane, message, true);
        }
        panic!("{MAX_DRAIN} deliveries after the schedule and the session still talks");
    }
}

fn corrupt(message: Message, corruption: &Corruption) -> Option<Message> {
    use Corruption as C;
    use Message as M;
    let flip = |bytes: &mut Vec<u8>, at: u16, xor: u8| {
        if !bytes.is_empty() {
            let at = usize::from(at) % bytes.len();
            bytes[at] ^= xor.max(1);
        }
    };
    let message = match (message, corruption) {
        (M::ChunkData(mut c), C::File(f)) => {
            c.file = file_number(*f);
            M::ChunkData(c)
        }
        (M::ChunkData(mut c), C::Index(i)) => {
            c.index = u32::from(*i);
            M::ChunkData(c)
        }
        (M::ChunkData(mut c), C::Codec(k)) => {
            c.codec = *k % 6;
            M::ChunkData(c)
        }
        (M::ChunkData(mut c), C::DecodedLen(d)) => {
            c.decoded_len = c.decoded_len.saturating_add_signed(i32::from(*d));
            M::ChunkData(c)
        }
        (M::ChunkData(mut c), C::Payload { at, xor }) => {
            flip(&mut c.payload, *at, *xor);
            M::ChunkData(c)
        }
        (M::ChunkData(mut c), C::Truncate(n)) => {
            let keep = c.payload.len().saturating_sub(usize::from(*n).max(1));
            c.payload.truncate(keep);
            M::ChunkData(c)
        }
        (M::WriteFile(mut w), C::File(f)) => {
            w.file = file_number(*f);
            M::WriteFile(w)
        }
        (M::WriteFile(mut w), C::Path(p)) => {
            w.path = forged_path(*p);
            M::WriteFile(w)
        }
        (M::WriteFile(mut w), C::Hash(h)) => {
            w.hash[usize::from(*h) % 32] ^= 1;
            M::WriteFile(w)
        }
        (M::WriteFile(mut w), C::Size(d)) => {
            w.size = w.size.saturating_add_signed(i64::from(*d));
            M::WriteFile(w)
        }
        (M::WriteFile(mut w), C::More) => {
            w.more = !w.more;
            M::WriteFile(w)
        }
        (M::MoreChunks(mut m), C::File(f)) => {
            m.file = file_number(*f);
            M::MoreChunks(m)
        }
        (M::MoreChunks(mut m), C::More) => {
            m.more = !m.more;
            M::MoreChunks(m)
        }
        (M::Mkdir(mut m), C::Path(p)) => {
            m.path = forged_path(*p);
            M::Mkdir(m)
        }
        (M::Symlink(mut s), C::Path(p)) => {
            s.path = forged_path(*p);
            M::Symlink(s)
        }
        (M::SetMeta(mut s), C::Path(p)) => {
            s.path = forged_path(*p);
            M::SetMeta(s)
        }
        (M::Delete(mut d), C::Path(p)) => {
            d.path = forged_path(*p);
            M::Delete(d)
        }
        (M::NeedChunk(mut n), C::File(f)) => {
            n.file = file_number(*f);
            M::NeedChunk(n)
        }
        (M::NeedChunk(mut n), C::Index(i)) => {
            n.index = u32::from(*i);
            M::NeedChunk(n)
        }
        (M::NeedChunk(mut n), C::Signature { at, xor }) => {
            if let Some(sig) = &mut n.signature {
                flip(sig, *at, *xor);
            }
            M::NeedChunk(n)
        }
        (M::RefineRequest(mut r), C::Index(i)) => {
            r.index = u32::from(*i);
            M::RefineRequest(r)
        }
        (M::RefineRequest(mut r), C::Payload { at, xor }) => {
            flip(&mut r.ranges, *at, *xor);
            M::RefineRequest(r)
        }
        (M::FineSignatures(mut f), C::Signature { at, xor }) => {
            if let Some(sig) = f.signatures.first_mut() {
                flip(sig, *at, *xor);
            }
            M::FineSignatures(f)
        }
        (M::FileFailed(mut f), C::File(n)) => {
            f.file = file_number(*n);
            M::FileFailed(f)
        }
        (message, corruption) => {
            // Any other pairing: a byte of the encoded frame body.
            let (at, xor) = match corruption {
                C::Byte { at, xor } | C::Payload { at, xor } | C::Signature { at, xor } => (*at, *xor),
                _ => (0, 0xff),
            };
            let mut bytes = Vec::new();
            frame::encode(&message, &mut bytes);
            let body = frame::HEADER_LEN..bytes.len();
            if body.is_empty() {
                return Some(message);
            }
            let at = body.start + usize::from(at) % body.len();
            bytes[at] ^= xor.max(1);
            return match frame::decode(&bytes) {
                Ok(Some((decoded, _))) => Some(decoded),
                _ => None,
            };
        }
    };
    Some(message)
}

fn mtime() -> msg::Mtime {
    msg::Mtime { secs: 1, nanos: 0 }
}

fn forge(forged: &Forged, encoder: &mut Encoder) -> Message {
    match forged {
        Forged::WriteFile { file, path, content, list: list_form, mode, more } => {
            let digest = digest_bytes(&content.bytes());
            let chunks: Vec<msg::ChunkRef> = digest.chunks.iter().map(wire::chunk_to_wire).collect();
            let at = |n: u8| usize::from(n) % chunks.len().max(1);
            let list = match list_form {
                ListForm::Implied => msg::ChunkList::Implied,
                ListForm::Full => msg::ChunkList::Full(chunks.clone()),
                ListForm::FullSkip(n) => {
                    let mut c = chunks.clone();
                    if !c.is_empty() {
                        c.remove(at(*n));
                    }
                    msg::ChunkList::Full(c)
                }
                ListForm::FullRepeat(n) => {
                    let mut c = chunks.clone();
                    if let Some(&one) = c.get(at(*n)) {
                        c.insert(at(*n), one);
                    }
                    msg::ChunkList::Full(c)
                }
                ListForm::Oversized(n) => {
                    let repeated = chunks.get(at(*n)).map_or(Vec::new(), |&one| {
                        let count = (FILE_SIZE_LIMIT / u64::from(one.len)).saturating_add(1);
                        vec![one; count.min(MAX_CHUNK_REFS_PER_MESSAGE as u64) as usize]
                    });
                    msg::ChunkList::Full(repeated)
                }
                ListForm::Edit(edits) => msg::ChunkList::Edit(
                    edits
                        .iter()
                        .take(16)
                        .map(|e| match e {
                            EditForm::Keep { from, count } => {
                                msg::ListEdit::Keep { from: u32::from(*from), count: u32::from(*count) }
                            }
                            EditForm::New(n) => msg::ListEdit::New(chunks.get(at(*n)).copied().into_iter().collect()),
                        })
                        .collect(),
                ),
            };
            let size = match &list {
                msg::ChunkList::Full(refs) if matches!(list_form, ListForm::Oversized(_)) => {
                    refs.iter().map(|c| u64::from(c.len)).sum()
                }
                _ => digest.size,
            };
            Message::WriteFile(msg::WriteFile {
                file: file_number(*file),
                path: forged_path(*path),
                mode: pick(&FILE_MODES, *mode),
                mtime: mtime(),
                size,
                hash: digest.hash.0,
                params: wire::params_to_wire(digest.params),
                list,
                more: *more,
                attrs: Default::default(),
            })
        }
        Forged::MoreChunks { file, content, from, more } => {
            let digest = digest_bytes(&content.bytes());
            let chunks = digest.chunks.iter().skip(usize::from(*from) % 4).map(wire::chunk_to_wire).collect();
            Message::MoreChunks(msg::MoreChunks {
                file: file_number(*file),
                list: msg::ChunkList::Full(chunks),
                more: *more,
            })
        }
        Forged::ChunkData { file, index, content, chunk, compression, codec, junk } => {
            let bytes = content.bytes();
            let digest = digest_bytes(&bytes);
            let mut offset = 0usize;
            let mut piece: &[u8] = &[];
            let wanted = usize::from(*chunk) % digest.chunks.len().max(1);
            for (i, c) in digest.chunks.iter().enumerate() {
                if i == wanted {
                    piece = &bytes[offset..offset + c.len as usize];
                }
                offset += c.len as usize;
            }
            let mut other;
            let encoder = match compression % 3 {
                0 => encoder,
                1 => {
                    other = Encoder::new(Compression::Lz4).expect("an lz4 encoder");
                    &mut other
                }
                _ => {
                    other = Encoder::new(Compression::Raw).expect("a raw encoder");
                    &mut other
                }
            };
            let encoded = encoder.encode(piece);
            Message::ChunkData(msg::ChunkData {
                file: file_number(*file),
                index: u32::from(*index),
                codec: codec.map_or(encoded.codec as u8, |c| c % 6),
                decoded_len: encoded.decoded_len,
                payload: junk.clone().unwrap_or(encoded.payload),
            })
        }
        Forged::RefineRequest { file, index, ranges } => Message::RefineRequest(msg::RefineRequest {
            file: file_number(*file),
            index: u32::from(*index),
            ranges: ranges.clone(),
        }),
        Forged::FileFailed { file } => Message::FileFailed(msg::FileFailed {
            file: file_number(*file),
            code: xfer_protocol::CloseCode::ChunkMismatch as u32,
            message: "forged".into(),
        }),
        Forged::Mkdir { path, mode } => Message::Mkdir(msg::Mkdir {
            path: forged_path(*path),
            mode: pick(&DIR_MODES, *mode),
            mtime: mtime(),
            attrs: Default::default(),
        }),
        Forged::Symlink { path, target } => Message::Symlink(msg::Symlink {
            path: forged_path(*path),
            target: pick(&LINK_TARGETS, *target).as_bytes().to_vec(),
            mtime: mtime(),
            attrs: Default::default(),
        }),
        Forged::SetMeta { path, mode } => Message::SetMeta(msg::SetMeta {
            path: forged_path(*path),
            mode: pick(&FILE_MODES, *mode),
            mtime: mtime(),
            attrs: Default::default(),
        }),
        Forged::Delete { path } => Message::Delete(msg::Delete { path: forged_path(*path) }),
        Forged::Done => Message::Done(msg::Done),
        Forged::Hello { version } => {
            Message::Hello(msg::Hello { version: *version % 4, features: 0, agent: "forged".into() })
        }
        Forged::Open { path, push, remembered } => Message::Open(msg::Open {
            direction: if *push { msg::Direction::Push } else { msg::Direction::Pull },
            path: forged_path(*path),
            delete: true,
            checksum: false,
            remembered_root: remembered.map(|r| [r; 32]),
            tags: Vec::new(),
            at: None,
            source_host: String::new(),
            source_path: String::new(),
            forget: Vec::new(),
        }),
        Forged::ListDir { dir } => Message::ListDir(msg::ListDir { dir: forged_path(*dir) }),
        Forged::GetFiles { paths } => {
            Message::GetFiles(msg::GetFiles { paths: paths.iter().take(8).map(|p| forged_path(*p)).collect() })
        }
        Forged::HasChunks { ids } => {
            Message::HasChunks(msg::HasChunks { ids: ids.iter().take(8).map(|&i| [i; 32]).collect() })
        }
        Forged::Commit { seq } => Message::Commit(msg::Commit { seq: *seq }),
        Forged::Error { code } => Message::Error(msg::ErrorMsg { code: *code, message: "forged".into() }),
    }
}

fn signature(form: &SigForm) -> Option<Vec<u8>> {
    match form {
        SigForm::None => None,
        SigForm::Of(content) => Some(xfer_core::patch::signature(&content.bytes()).encode()),
        SigForm::Junk(bytes) => Some(bytes.clone()),
    }
}

fn answer_with(answer: &Answer) -> Message {
    match answer {
        Answer::NeedChunk { file, index, signature: sig } => Message::NeedChunk(msg::NeedChunk {
            file: file_number(*file),
            index: u32::from(*index),
            signature: signature(sig),
        }),
        Answer::FineSignatures { file, index, signatures } => Message::FineSignatures(msg::FineSignatures {
            file: file_number(*file),
            index: u32::from(*index),
            signatures: signatures.iter().take(8).map(|s| signature(s).unwrap_or_default()).collect(),
        }),
        Answer::Listing { dir, children, more } => {
            let mut children: Vec<msg::ChildDigest> = children
                .iter()
                .take(8)
                .map(|&(name, is_dir, digest)| msg::ChildDigest {
                    name: pick(&CHILD_NAMES, name).as_bytes().to_vec(),
                    digest: [digest; 32],
                    is_dir,
                })
                .collect();
            children.sort_by(|a, b| a.name.cmp(&b.name));
            Message::Listing(msg::Listing { dir: forged_path(*dir), children, more: *more })
        }
        Answer::FileInfos { files, more } => Message::FileInfos(msg::FileInfos {
            files: files
                .iter()
                .take(4)
                .map(|(path, content, continued)| {
                    let digest = digest_bytes(&content.bytes());
                    msg::FileInfo {
                        path: forged_path(*path),
                        size: digest.size,
                        hash: digest.hash.0,
                        params: wire::params_to_wire(digest.params),
                        chunks: digest.chunks.iter().map(wire::chunk_to_wire).collect(),
                        continued: *continued,
                    }
                })
                .collect(),
            more: *more,
        }),
        Answer::Opened { root, remembered } => {
            Message::Opened(msg::Opened { root: [*root; 32], remembered: *remembered })
        }
        Answer::Summary => Message::Summary(msg::Summary::default()),
        Answer::Have { bits } => Message::Have(msg::Have { bits: bits.iter().take(8).copied().collect() }),
        Answer::Hello { version } => {
            Message::Hello(msg::Hello { version: *version % 4, features: 0, agent: "forged".into() })
        }
        Answer::Error { code } => Message::Error(msg::ErrorMsg { code: *code, message: "forged".into() }),
    }
}

// ---------------------------------------------------------------------------
// The target

/// The largest file this process may write (RLIMIT_FSIZE): a write or a
/// `set_len` past it fails with EFBIG, as on a filesystem's size limit.
/// Generated trees stay far below it; only `ListForm::Oversized` crosses it.
const FILE_SIZE_LIMIT: u64 = 64 << 20;

/// Sets the file size limit once; SIGXFSZ is ignored so that crossing it
/// is an error, not the end of the process.
fn limit_file_size() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        let limit = libc::rlimit { rlim_cur: FILE_SIZE_LIMIT, rlim_max: libc::RLIM_INFINITY };
        // SAFETY: plain system calls with a valid struct; no memory is shared.
        unsafe {
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            assert_eq!(libc::setrlimit(libc::RLIMIT_FSIZE, &limit), 0, "setrlimit(RLIMIT_FSIZE)");
        }
    });
}

/// Where the temporary trees go: tmpfs when there is one (each execution
/// syncs the filesystem at every commit point).
fn scratch() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    let builder = tempfile::Builder::new().prefix("xfer-fuzz-").tempdir_in(shm);
    builder.or_else(|_| tempfile::tempdir()).expect("a temporary directory")
}

fuzz_target!(|input: Input| {
    limit_file_size();
    let scratch = scratch();
    // dest is three levels down, so that symlinks up to `../../..` still
    // point inside the scratch directory, where a write would be seen.
    let dest = scratch.path().join("outer/inner/dest");
    let state = scratch.path().join("state.redb");
    fs::create_dir_all(&dest).expect("create the destination");
    let before = build_model(&input.before);
    materialize(&before, &dest);
    let source_model = build_model(&input.source);
    let source_manifest = manifest_of(&source_model);
    let source = Source(Rc::new(RefCell::new(
        source_model
            .iter()
            .filter_map(|(path, node)| match node {
                Node::File { data, .. } => Some((path.clone(), data.clone())),
                _ => None,
            })
            .collect(),
    )));
    let encoder = || Encoder::new(Compression::Auto).expect("the default encoder");
    let options = PlanOptions { delete: input.delete, protect: None, ..Default::default() };

    let (sender, receiver) = if input.pull {
        let store = MirrorStore::open(&dest, &state).expect("open the destination store");
        let mut receiver = Receiver::initiate(Receiving::new(store), Vec::new(), input.delete, input.checksum)
            .expect("a pull's receiver scans its destination");
        // The transport reads the client's Hello and Open before it starts
        // the sender.
        let hello = receiver.poll_transmit();
        assert!(matches!(hello, Some(Message::Hello(_))), "{hello:?}");
        let Some(Message::Open(open)) = receiver.poll_transmit() else { panic!("a pull opens with Open") };
        let mut config = SenderConfig::new(source_manifest, source.clone(), encoder());
        config.plan = PlanOptions { delete: open.delete, protect: None, ..Default::default() };
        let sender = Sender::respond(config, 0, open.remembered_root);
        (sender, receiver)
    } else {
        let remembered = input.remembered.then(|| {
            let mut store = MirrorStore::open(&dest, &state).expect("open the destination store");
            store.refresh(false).expect("scan the destination").clone()
        });
        let mut config = SenderConfig::new(source_manifest, source.clone(), encoder());
        config.plan = options;
        config.checksum = input.checksum;
        config.remembered = remembered;
        let sender = Sender::new(config);
        let (dest, state) = (dest.clone(), state.clone());
        let receiver = Receiver::new(Box::new(move |_: &OpenRequest| {
            MirrorStore::open(&dest, &state).map(Receiving::new).map_err(SessionError::from)
        }));
        (sender, receiver)
    };
    let mut run = Run {
        sender,
        receiver,
        source,
        lanes: Lanes::default(),
        encoder: encoder(),
        declared: HashMap::new(),
        faulted: false,
        end: None,
    };
    for step in input.steps.iter().take(MAX_STEPS) {
        if run.end.is_some() {
            break;
        }
        run.step(step);
    }
    run.drain(input.drain);
    let completed = run.end.is_none() && run.sender.is_finished() && run.receiver.is_finished();
    let faulted = run.faulted;
    if !faulted {
        assert!(completed, "a session that broke no rule did not complete: {:?}", run.end);
        assert!(run.receiver.failed().is_empty(), "{:?}", run.receiver.failed());
        assert!(run.sender.failed().is_empty(), "{:?}", run.sender.failed());
    }
    // A session that did not end well is salvaged, as the transport does.
    run.receiver.salvage();
    let Run { sender, receiver, declared, .. } = run;
    drop(receiver);
    drop(sender);

    check_scratch(scratch.path(), &dest, &state);
    let after = read_tree(&dest);
    for (path, node) in &after {
        let name = path.as_bytes().rsplit(|&b| b == b'/').next().unwrap_or_default();
        assert!(!name.starts_with(TEMP_PREFIX), "temporary {path} left behind");
        let Node::File { data, .. } = node else { continue };
        let old = matches!(before.get(path), Some(Node::File { data: old, .. }) if old == data);
        let hash = *blake3::hash(data).as_bytes();
        let new = declared.get(path.as_bytes()).is_some_and(|hashes| hashes.contains(&hash));
        assert!(old || new, "{path} is torn: neither its old content nor one declared for it ({} bytes)", data.len());
    }
    if !faulted {
        for (path, node) in &source_model {
            // Without --delete a non-empty directory is never replaced by a
            // file or symlink (the plan skips that entry, as rsync does).
            let kept_dir = !input.delete
                && !matches!(node, Node::Dir { .. })
                && matches!(before.get(path), Some(Node::Dir { .. }))
                && before.keys().any(|p| p.is_inside(path));
            if kept_dir {
                continue;
            }
            assert_eq!(after.get(path), Some(node), "{path} differs from the source");
        }
        if input.delete {
            for path in after.keys() {
                assert!(source_model.contains_key(path), "{path} should have been deleted");
            }
        }
    }
});

/// Nothing but the destination and the state database in the scratch
/// directory: no write escaped through a symlink.
fn check_scratch(scratch: &Path, dest: &Path, state: &Path) {
    let mut stack = vec![scratch.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for dirent in fs::read_dir(&dir).expect("read the scratch directory") {
            let path = dirent.expect("a scratch entry").path();
            if path == dest || path == state {
                continue;
            }
            assert!(dest.starts_with(&path), "{} was written outside the destination", path.display());
            stack.push(path);
        }
    }
}
