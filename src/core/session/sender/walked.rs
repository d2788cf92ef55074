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
/// the files it is building, a few thousand at most, among the last ones
/// sent. An older one is found again by planning anew up to it.
const WRITES_KEPT: usize = 1 << 15;

#[cfg(test)]
thread_local! {
    /// Tests keep fewer writes, down to none, to plan again.
    pub(crate) static KEPT: std::cell::Cell<usize> = const { std::cell::Cell::new(WRITES_KEPT) };
}

fn writes_kept() -> usize {
    #[cfg(test)]
    return KEPT.with(std::cell::Cell::get);
    #[cfg(not(test))]
    WRITES_KEPT
}

/// Recovered writes kept, at most.
const RECOVERED_KEPT: usize = 1024;

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
    /// Older writes found again.
    recovered: HashMap<u32, (RelPath, FileDigest)>,
}

impl WalkedOps {
    pub(super) fn new(tree: Arc<dyn SourceTree>, dest: Arc<Manifest>, options: PlanOptions) -> WalkedOps {
        let stream = OpStream::new(Arc::clone(&tree), Arc::clone(&dest), options.clone(), Pass::Mkdirs);
        WalkedOps { tree, dest, options, stream, next: 0, recent: VecDeque::new(), recovered: HashMap::new() }
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
    /// its offset; `None` if op `file` was not sent or writes no file.
    pub(super) fn chunk(&mut self, file: u32, index: usize) -> Result<Option<(RelPath, ChunkRef, u64)>, SourceError> {
        if file >= self.next {
            return Ok(None);
        }
        let found = match self.recent.binary_search_by_key(&file, |(n, _, _)| *n) {
            Ok(i) => Some((&self.recent[i].1, &self.recent[i].2)),
            Err(_) => {
                if !self.recovered.contains_key(&file) {
                    self.recover(file)?;
                }
                self.recovered.get(&file).map(|(path, digest)| (path, digest))
            }
        };
        Ok(found.and_then(|(path, digest)| {
            let chunk = *digest.chunks.get(index)?;
            let offset: u64 = digest.chunks[..index].iter().map(|c| u64::from(c.len)).sum();
            Some((path.clone(), chunk, offset))
        }))
    }

    /// The number of chunks of the file op `file` writes (0 if none).
    pub(super) fn chunk_count(&mut self, file: u32) -> Result<Option<usize>, SourceError> {
        if file >= self.next {
            return Ok(None);
        }
        if let Ok(i) = self.recent.binary_search_by_key(&file, |(n, _, _)| *n) {
            return Ok(Some(self.recent[i].2.chunks.len()));
        }
        if !self.recovered.contains_key(&file) {
            self.recover(file)?;
        }
        Ok(self.recovered.get(&file).map(|(_, digest)| digest.chunks.len()))
    }

    /// Plans again up to op `file`, which left the recent writes: the plan
    /// is the same every time (same source, same receiver tree).
    fn recover(&mut self, file: u32) -> Result<(), SourceError> {
        let mut stream =
            OpStream::new(Arc::clone(&self.tree), Arc::clone(&self.dest), self.options.clone(), Pass::Mkdirs);
        for _ in 0..file {
            if stream.next_op()?.is_none() {
                return Ok(());
            }
        }
        if let Some(Op::WriteFile { path, digest, .. }) = stream.next_op()? {
            if self.recovered.len() >= RECOVERED_KEPT {
                self.recovered.clear();
            }
            self.recovered.insert(file, (path, digest));
        }
        Ok(())
    }
}
