//! The plan as a stream: the merge walk of source and receiver entries
//! fed one source entry at a time, emitting each op as soon as the order
//! the receiver needs allows, and holding back only what must wait (hard
//! links, metadata of unchanged files, deletes, directory metadata).
//!
//! New directories come before anything else, so the source is walked
//! twice: once for the `Mkdir`s, once for the rest. Memory is then bounded
//! by the depth of the tree and what is held back, not by its size, when
//! the source is a [`SourceTree`] that reads one directory at a time.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;

use super::deletes::Protected;
use super::{link_op, Op, PlanOptions, Skipped};
use crate::manifest::{Entry, EntryKind, Manifest, Meta, RelPath};

/// Why walking a source failed (the source's own error, boxed).
pub type SourceError = Box<dyn std::error::Error + Send + Sync>;

/// A source's entries in manifest order.
pub type Entries = Box<dyn Iterator<Item = Result<Entry, SourceError>> + Send + Sync>;

/// A source tree walked as often as needed, in manifest order, without
/// holding it whole.
pub trait SourceTree: Send + Sync {
    /// The entries inside directory `dir` (every entry for the root), with
    /// paths from the tree's root, in manifest order; none if `dir` is not
    /// a directory of the tree.
    fn entries_in(&self, dir: &RelPath) -> Entries;
}

/// A manifest in memory as a [`SourceTree`].
pub struct ManifestSource(pub Arc<Manifest>);

impl SourceTree for ManifestSource {
    fn entries_in(&self, dir: &RelPath) -> Entries {
        let manifest = Arc::clone(&self.0);
        let entries = manifest.entries();
        let start = if dir.is_root() {
            0
        } else {
            match entries.binary_search_by(|e| e.path.cmp(dir)) {
                Ok(i) => i + 1,
                Err(_) => entries.len(),
            }
        };
        let end = start + entries[start..].iter().take_while(|e| e.path.is_inside(dir)).count();
        Box::new((start..end).map(move |i| Ok(manifest.entries()[i].clone())))
    }
}

/// Which ops a walk of the source emits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pass {
    /// New directories only (the first walk).
    Mkdirs,
    /// Everything else (the second walk), then what was held back.
    Rest,
    /// Everything in one walk, directories mixed in: for counting.
    All,
}

/// A hard link the receiver holds already, made again only if its target
/// changes.
struct KeptLink {
    op: Op,
    target: RelPath,
}

/// One walk of the merge: fed source entries in order, it emits ops into
/// `out` and holds back what must come after every write.
pub struct Planner {
    options: PlanOptions,
    guard: Protected,
    pass: Pass,
    /// The next receiver entry.
    j: usize,
    // Set when a receiver directory is replaced wholesale, so its receiver
    // subtree needs no deletes of its own and its source subtree is all new.
    replaced_dir: Option<RelPath>,
    // Set when a source directory cannot replace a protected receiver entry,
    // so nothing is created below it.
    blocked_dir: Option<RelPath>,
    /// Source directories around the current position: path, metadata, and
    /// whether it gets its metadata set at the end.
    open: Vec<(RelPath, Meta, bool)>,
    /// Targets of the source's hard links (found by the first walk): only
    /// changes to these are remembered, for the links to be made again.
    link_targets: HashSet<RelPath>,
    changed_targets: HashSet<RelPath>,
    metas: Vec<Op>,
    links: Vec<Op>,
    relinks: Vec<KeptLink>,
    extraneous: Vec<RelPath>,
    dir_metas: Vec<(RelPath, Meta)>,
    skipped: Vec<Skipped>,
}

impl Planner {
    /// A planner against `dest` (the receiver's tree), for walk `pass`.
    pub fn new(dest: &Manifest, options: PlanOptions, pass: Pass) -> Planner {
        let guard = Protected::new(dest, options.protect.as_deref(), &options.skipped);
        Planner {
            options,
            guard,
            pass,
            j: 0,
            replaced_dir: None,
            blocked_dir: None,
            open: Vec::new(),
            link_targets: HashSet::new(),
            changed_targets: HashSet::new(),
            metas: Vec::new(),
            links: Vec::new(),
            relinks: Vec::new(),
            extraneous: Vec::new(),
            dir_metas: Vec::new(),
            skipped: Vec::new(),
        }
    }

    /// Starts the next walk (`pass`), keeping what the last one learned of
    /// hard link targets.
    pub fn restart(&mut self, pass: Pass) {
        let link_targets = std::mem::take(&mut self.link_targets);
        let options = self.options.clone();
        let guard = std::mem::replace(&mut self.guard, Protected::none());
        *self = Planner { link_targets, guard, ..Planner::new(&Manifest::EMPTY, options, pass) };
    }

    /// Source entries the plan leaves alone (after a `Rest` or `All` walk).
    pub fn take_skipped(&mut self) -> Vec<Skipped> {
        std::mem::take(&mut self.skipped)
    }

    /// Takes source entry `s` (entries in manifest order), after the
    /// receiver entries before it.
    pub fn feed(&mut self, s: &Entry, dest: &Manifest, out: &mut VecDeque<Op>) {
        let dst = dest.entries();
        while let Some(d) = dst.get(self.j).filter(|d| d.path < s.path) {
            self.receiver_only(d, self.j);
            self.j += 1;
            self.leave_replaced(dst);
        }
        self.enter(&s.path);
        if let EntryKind::HardLink { target, .. } = &s.kind {
            if self.pass == Pass::Mkdirs {
                self.link_targets.insert(target.clone());
            }
        }
        match dst.get(self.j).filter(|d| d.path == s.path) {
            Some(d) => {
                self.j += 1;
                if self.options.is_skipped(&s.path) {
                    // Reported by whoever skipped it; the backup stays as is.
                    self.open_dir(s, false);
                    return;
                }
                self.both(s, d, self.j - 1, out);
            }
            None => {
                if !self.blocked_dir.as_ref().is_some_and(|dir| s.path.is_inside(dir))
                    && !self.options.is_skipped(&s.path)
                {
                    self.create(s, out);
                } else {
                    self.open_dir(s, false);
                }
            }
        }
        self.leave_replaced(dst);
    }

    /// After the last source entry: the receiver entries left, then (on a
    /// `Rest` or `All` walk) what was held back, in the plan's order.
    pub fn finish(&mut self, dest: &Manifest, out: &mut VecDeque<Op>) {
        let dst = dest.entries();
        while let Some(d) = dst.get(self.j) {
            self.receiver_only(d, self.j);
            self.j += 1;
            self.leave_replaced(dst);
        }
        self.enter(&RelPath::root());
        if self.pass == Pass::Mkdirs {
            return;
        }
        out.extend(self.metas.drain(..));
        out.extend(self.links.drain(..));
        let changed = std::mem::take(&mut self.changed_targets);
        let relinks = self.relinks.drain(..).filter(|k| changed.contains(&k.target)).map(|k| k.op);
        out.extend(relinks);
        out.extend(self.extraneous.drain(..).rev().map(|path| Op::Delete { path }));
        // Deepest first, after their content: reverse path order.
        self.dir_metas.sort_by(|a, b| b.0.cmp(&a.0));
        out.extend(self.dir_metas.drain(..).map(|(path, meta)| Op::SetMeta { path, meta }));
    }

    /// Leaves the open directories `path` is not inside; a left directory
    /// whose metadata must be set is held back for the end.
    fn enter(&mut self, path: &RelPath) {
        while let Some((dir, _, _)) = self.open.last() {
            if path.is_inside(dir) && !path.is_root() {
                break;
            }
            let (dir, meta, touched) = self.open.pop().expect("invariant: checked above");
            if touched && self.pass != Pass::Mkdirs {
                self.dir_metas.push((dir, meta));
            }
        }
    }

    /// Opens source directory `s` (no-op for other kinds).
    fn open_dir(&mut self, s: &Entry, touched: bool) {
        if matches!(s.kind, EntryKind::Dir) {
            self.open.push((s.path.clone(), s.meta.clone(), touched));
        }
    }

    /// A change at `path`: its directory, if the source has it, gets its
    /// metadata back at the end (creating or removing an entry changes
    /// the directory's mtime on the receiver).
    fn touch_parent(&mut self, path: &RelPath) {
        let parent = path.parent();
        if parent.is_root() {
            return;
        }
        if let Some(open) = self.open.iter_mut().rev().find(|(dir, _, _)| *dir == parent) {
            open.2 = true;
        }
    }

    /// Leave a replaced receiver directory once past its subtree.
    fn leave_replaced(&mut self, dst: &[Entry]) {
        if self.replaced_dir.as_ref().is_some_and(|dir| dst.get(self.j).is_none_or(|d| !d.path.is_inside(dir))) {
            self.replaced_dir = None;
        }
    }

    /// Receiver entry `k`, which the source lacks: deleted with --delete,
    /// unless protected or covered by a replaced or deleted directory.
    fn receiver_only(&mut self, d: &Entry, k: usize) {
        self.enter(&d.path);
        let under_replaced = self.replaced_dir.as_ref().is_some_and(|dir| d.path.is_inside(dir));
        if self.options.delete
            && !under_replaced
            && !self.guard.keeps(k)
            && !self.extraneous.last().is_some_and(|p: &RelPath| d.path.is_inside(p))
        {
            self.touch_parent(&d.path);
            if self.pass != Pass::Mkdirs {
                self.extraneous.push(d.path.clone());
            }
        }
    }

    /// Source entry `s` at the path of receiver entry `k`, `d`.
    fn both(&mut self, s: &Entry, d: &Entry, k: usize, out: &mut VecDeque<Op>) {
        match (&s.kind, &d.kind) {
            (EntryKind::Dir, EntryKind::Dir) => self.open_dir(s, s.meta != d.meta),
            (EntryKind::File(a), EntryKind::File(b)) if a.hash == b.hash && a.size == b.size => self.meta(s, d),
            // Owner and xattrs as well as the mtime (a symlink's mode is 0).
            (EntryKind::Symlink { target: a }, EntryKind::Symlink { target: b }) if a == b => self.meta(s, d),
            // Its metadata is its target's, set there.
            (EntryKind::HardLink { target, .. }, EntryKind::HardLink { .. }) if s.kind == d.kind => {
                // Made again only if its target is rewritten or its metadata
                // changes (a receiver gives a file with several names a
                // fresh copy before changing it); the target came before.
                if self.changed_targets.contains(target) {
                    self.touch_parent(&s.path);
                }
                if let Some(op) = link_op(s) {
                    self.relinks.push(KeptLink { op, target: target.clone() });
                }
            }
            (EntryKind::Dir, _) | (_, EntryKind::Dir) if self.guard.keeps(k) => {
                self.skipped.push(Skipped { path: s.path.clone(), reason: self.guard.why(k) });
                if matches!(s.kind, EntryKind::Dir) {
                    self.blocked_dir = Some(s.path.clone());
                }
                self.open_dir(s, false);
            }
            // A file or symlink stands where a directory goes: the
            // Mkdir replaces it in one step (no Delete first, so
            // that the path never names nothing).
            (EntryKind::Dir, _) => self.create(s, out),
            (_, EntryKind::Dir) => {
                // The source says this is now a file or symlink: the
                // directory is replaced, with or without --delete (its
                // content no longer exists in the source either way),
                // by the write itself, atomically.
                self.replaced_dir = Some(d.path.clone());
                self.create(s, out);
            }
            // Content differs, or a file becomes a symlink or back:
            // an atomic rename replaces it in one step.
            _ => self.create(s, out),
        }
    }

    /// Metadata of an entry whose content is right.
    fn meta(&mut self, s: &Entry, d: &Entry) {
        if s.meta != d.meta {
            self.changed(&s.path);
            if self.pass != Pass::Mkdirs {
                self.metas.push(Op::SetMeta { path: s.path.clone(), meta: s.meta.clone() });
            }
        }
    }

    /// Remembers a change to a hard link target.
    fn changed(&mut self, path: &RelPath) {
        if self.link_targets.contains(path) {
            self.changed_targets.insert(path.clone());
        }
    }

    fn create(&mut self, s: &Entry, out: &mut VecDeque<Op>) {
        self.touch_parent(&s.path);
        let (path, meta) = (s.path.clone(), s.meta.clone());
        match &s.kind {
            EntryKind::Dir => {
                if self.pass != Pass::Rest {
                    out.push_back(Op::Mkdir { path, meta });
                }
                self.open_dir(s, true);
            }
            _ if self.pass == Pass::Mkdirs => {}
            EntryKind::File(digest) => {
                self.changed(&path);
                out.push_back(Op::WriteFile { path, meta, digest: digest.clone() });
            }
            EntryKind::Symlink { target } => {
                self.changed(&path);
                out.push_back(Op::Symlink { path, target: target.clone(), meta });
            }
            // Links go after every file and its metadata: their targets
            // are then complete under their final names.
            EntryKind::HardLink { .. } => self.links.extend(link_op(s)),
        }
    }
}

/// The ops of a plan against `dest` from a [`SourceTree`], one at a time:
/// the source is walked once for the new directories, once for the rest
/// ([`Pass::All`]: once, in one mixed order, for counting).
pub struct OpStream {
    tree: Arc<dyn SourceTree>,
    dest: Arc<Manifest>,
    planner: Planner,
    pass: Pass,
    entries: Option<Entries>,
    ready: VecDeque<Op>,
    finished: bool,
    /// Source entries fed on the current walk.
    seen: u64,
}

impl OpStream {
    /// The plan of `tree` onto `dest`, as [`super::plan`] orders it (with
    /// [`Pass::Mkdirs`]), or in one walk (with [`Pass::All`]).
    pub fn new(tree: Arc<dyn SourceTree>, dest: Arc<Manifest>, options: PlanOptions, pass: Pass) -> OpStream {
        let pass = if pass == Pass::All { Pass::All } else { Pass::Mkdirs };
        let planner = Planner::new(&dest, options, pass);
        OpStream { tree, dest, planner, pass, entries: None, ready: VecDeque::new(), finished: false, seen: 0 }
    }

    /// The next op, if any.
    ///
    /// # Errors
    /// Walking the source failed.
    pub fn next_op(&mut self) -> Result<Option<Op>, SourceError> {
        loop {
            if let Some(op) = self.ready.pop_front() {
                return Ok(Some(op));
            }
            if self.finished {
                return Ok(None);
            }
            let tree = &self.tree;
            let entries = self.entries.get_or_insert_with(|| tree.entries_in(&RelPath::root()));
            match entries.next() {
                Some(entry) => {
                    self.seen += 1;
                    self.planner.feed(&entry?, &self.dest, &mut self.ready);
                }
                None => {
                    self.planner.finish(&self.dest, &mut self.ready);
                    self.entries = None;
                    if self.pass == Pass::Mkdirs {
                        self.pass = Pass::Rest;
                        self.planner.restart(Pass::Rest);
                        self.seen = 0;
                    } else {
                        self.finished = true;
                    }
                }
            }
        }
    }

    /// Source entries walked over on the last walk (all of them once it
    /// is over).
    pub fn source_entries(&self) -> u64 {
        self.seen
    }

    /// Source entries the plan leaves alone (once the stream is over).
    pub fn take_skipped(&mut self) -> Vec<Skipped> {
        self.planner.take_skipped()
    }
}
