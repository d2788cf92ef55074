//! A source the sender walks instead of holding (a snapshot being
//! restored): its listings computed from a walk of the directory asked
//! for, and its plan sent as it is made, with the recent writes kept to
//! answer chunk requests.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use crate::chunk::{ChunkRef, FileDigest};
use crate::hash::TreeHash;
use crate::manifest::{ChildDigest, Entry, EntryKind, Manifest, RelPath, Tree};
use crate::plan::{Entries, Op, OpStream, Pass, PlanOptions, SourceError, SourceTree};

/// Writes kept to answer chunk requests: a receiver asks for the chunks of
/// the files it is building, a few thousand at most, in about the order
/// they were sent; the transport may hold many more sent and not yet read.
/// Older writes are found again by planning anew, a batch at a time.
const WRITES_KEPT: usize = 1 << 15;

/// Writes asked for, kept (the most recently asked): more than a receiver
/// builds at once ([`crate::session::MAX_FILES_IN_FLIGHT`]), so that a
/// long file's later requests never plan again.
const ASKED_KEPT: usize = 2 * crate::session::MAX_FILES_IN_FLIGHT;

#[cfg(test)]
thread_local! {
    /// Tests keep fewer writes, down to none, to plan again.
    pub(crate) static KEPT: std::cell::Cell<usize> = const { std::cell::Cell::new(WRITES_KEPT) };
}

/// How many writes are kept: the last sent, the last asked for, and a
/// batch found again.
fn writes_kept() -> usize {
    #[cfg(test)]
    return KEPT.with(std::cell::Cell::get);
    #[cfg(not(test))]
    WRITES_KEPT
}

/// A source tree walked, not held, and its root hash.
#[derive(Clone)]
pub struct WalkedSource {
    /// The tree.
    pub tree: Arc<dyn SourceTree>,
    /// Its root hash ([`Tree::root`] of its manifest; see [`root_hash`]).
    pub root: TreeHash,
}

/// The root hash of `tree`, in one walk.
///
/// # Errors
/// Walking the tree failed.
pub fn root_hash(tree: &dyn SourceTree) -> Result<TreeHash, SourceError> {
    let listing = listing_of(tree.entries_in(&RelPath::root()), &RelPath::root())?;
    Ok(Tree::listing_hash(&listing.children))
}

/// A directory's listing, and which of its children are regular files.
pub(super) struct Listing {
    pub(super) children: Vec<ChildDigest>,
    pub(super) files: HashSet<Vec<u8>>,
}

/// The listing of `dir` from `entries`, the entries inside it in order:
/// one listing held per open directory.
pub(super) fn listing_of(entries: Entries, dir: &RelPath) -> Result<Listing, SourceError> {
    // Open directories below `dir` and the children seen so far of each;
    // the first frame is `dir` itself.
    let mut stack: Vec<(Option<Entry>, Vec<ChildDigest>)> = vec![(None, Vec::new())];
    let mut files = HashSet::new();
    for entry in entries {
        let entry = entry?;
        close(&mut stack, &entry.path);
        if entry.path.parent() == *dir && matches!(entry.kind, EntryKind::File(_)) {
            files.insert(entry.path.name().to_vec());
        }
        if matches!(entry.kind, EntryKind::Dir) {
            stack.push((Some(entry), Vec::new()));
        } else {
            let child = ChildDigest::of(&entry, &[]);
            stack.last_mut().expect("invariant: the first frame stays").1.push(child);
        }
    }
    close(&mut stack, &RelPath::root());
    let (_, children) = stack.pop().expect("invariant: the first frame stays");
    Ok(Listing { children, files })
}

/// Closes the open directories `path` is not inside, adding each to its
/// parent's listing.
fn close(stack: &mut Vec<(Option<Entry>, Vec<ChildDigest>)>, path: &RelPath) {
    while stack.len() > 1 {
        let inside = stack.last().and_then(|(e, _)| e.as_ref()).is_some_and(|e| path.is_inside(&e.path));
        if inside {
            break;
        }
        let (entry, children) = stack.pop().expect("invariant: checked above");
        let entry = entry.expect("invariant: only the first frame has no entry");
        let child = ChildDigest::of(&entry, &children);
        stack.last_mut().expect("invariant: the first frame stays").1.push(child);
    }
}

/// The plan of a walked source, numbered as sent, with the writes a
/// receiver may still ask chunks of.
pub(super) struct WalkedOps {
    tree: Arc<dyn SourceTree>,
    dest: Arc<Manifest>,
    options: PlanOptions,
    stream: OpStream,
    /// The number of the next op.
    next: u32,
    /// The last writes sent, by number (increasing).
    recent: VecDeque<(u32, RelPath, FileDigest)>,
    /// Writes asked for lately, with their last use, and the order of
    /// uses (oldest first; a number may come more than once, the last
    /// counts).
    asked: HashMap<u32, (RelPath, FileDigest, u64)>,
    asked_order: VecDeque<(u32, u64)>,
    /// Uses of `asked` so far, to stamp each.
    uses: u64,
    /// Older writes found again: a batch from the first one asked for.
    recovered: HashMap<u32, (RelPath, FileDigest)>,
}

impl WalkedOps {
    pub(super) fn new(tree: Arc<dyn SourceTree>, dest: Arc<Manifest>, options: PlanOptions) -> WalkedOps {
        let stream = OpStream::new(Arc::clone(&tree), Arc::clone(&dest), options.clone(), Pass::Mkdirs);
        WalkedOps {
            tree,
            dest,
            options,
            stream,
            next: 0,
            recent: VecDeque::new(),
            asked: HashMap::new(),
            asked_order: VecDeque::new(),
            uses: 0,
            recovered: HashMap::new(),
        }
    }

    /// The next op and its number, if any.
    pub(super) fn next_op(&mut self) -> Result<Option<(u32, Op)>, SourceError> {
        let Some(op) = self.stream.next_op()? else { return Ok(None) };
        let n = self.next;
        self.next += 1;
        if let Op::WriteFile { path, digest, .. } = &op {
            self.recent.push_back((n, path.clone(), digest.clone()));
            while self.recent.len() > writes_kept() {
                self.recent.pop_front();
            }
        }
        Ok(Some((n, op)))
    }

    /// Chunk `index` of the file op `file` writes: its path, the chunk and
    /// its offset; `None` if op `file` was not sent, writes no file or has
    /// no such chunk.
    pub(super) fn chunk(&mut self, file: u32, index: usize) -> Result<Option<(RelPath, ChunkRef, u64)>, SourceError> {
        let Some((path, digest)) = self.write(file)? else { return Ok(None) };
        let Some(chunk) = digest.chunks.get(index).copied() else { return Ok(None) };
        let offset: u64 = digest.chunks[..index].iter().map(|c| u64::from(c.len)).sum();
        Ok(Some((path.clone(), chunk, offset)))
    }

    /// The write op `file`, kept as asked for; `None` if op `file` was not
    /// sent or writes no file.
    fn write(&mut self, file: u32) -> Result<Option<(&RelPath, &FileDigest)>, SourceError> {
        if file >= self.next {
            return Ok(None);
        }
        self.uses += 1;
        let stamp = self.uses;
        if let Some(asked) = self.asked.get_mut(&file) {
            asked.2 = stamp;
        } else {
            let found = match self.recent.binary_search_by_key(&file, |(n, _, _)| *n) {
                Ok(i) => Some((self.recent[i].1.clone(), self.recent[i].2.clone())),
                Err(_) => {
                    if !self.recovered.contains_key(&file) {
                        self.recover(file)?;
                    }
                    self.recovered.get(&file).cloned()
                }
            };
            let Some((path, digest)) = found else { return Ok(None) };
            self.asked.insert(file, (path, digest, stamp));
        }
        self.asked_order.push_back((file, stamp));
        self.trim_asked();
        Ok(self.asked.get(&file).map(|(path, digest, _)| (path, digest)))
    }

    /// Forgets the writes asked for longest ago, past [`ASKED_KEPT`].
    fn trim_asked(&mut self) {
        let cap = ASKED_KEPT.min(writes_kept()).max(1);
        while self.asked.len() > cap {
            let Some((oldest, stamp)) = self.asked_order.pop_front() else { break };
            // Only its last use counts.
            if self.asked.get(&oldest).is_some_and(|a| a.2 == stamp) {
                self.asked.remove(&oldest);
            }
        }
        if self.asked_order.len() > 4 * cap {
            let mut order: Vec<(u32, u64)> = self.asked.iter().map(|(n, a)| (*n, a.2)).collect();
            order.sort_by_key(|&(_, stamp)| stamp);
            self.asked_order = order.into();
        }
    }

    /// Plans again up to op `file`, which left the recent writes, and
    /// keeps the writes from it on, a batch of them (requests come in about
    /// the order the writes were sent): the plan is the same every time
    /// (same source, same receiver tree).
    fn recover(&mut self, file: u32) -> Result<(), SourceError> {
        self.recovered.clear();
        let mut stream =
            OpStream::new(Arc::clone(&self.tree), Arc::clone(&self.dest), self.options.clone(), Pass::Mkdirs);
        let mut n = 0u32;
        while n < self.next && self.recovered.len() < writes_kept().max(1) {
            let Some(op) = stream.next_op()? else { break };
            if let Op::WriteFile { path, digest, .. } = op {
                if n >= file {
                    self.recovered.insert(n, (path, digest));
                }
            }
            n += 1;
        }
        Ok(())
    }
}
