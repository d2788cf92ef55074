//! The sender's comparison of trees: listings down the directories that
//! differ, digests of the files that differ, and the receiver's tree as
//! far as it matters, to plan against.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use xfer_protocol::msg::{self, Message};
use xfer_protocol::MAX_FILES_PER_MESSAGE;

use crate::chunk::FileDigest;
use crate::manifest::{ChildDigest, Entry, EntryKind, Manifest, Meta, Mtime, RelPath};
use crate::session::destination::ChunkReader;
use crate::session::{protocol, SessionError};
use crate::wire;

use super::walked::{listing_of, Listing};
use super::Sender;

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

impl<R: ChunkReader> Sender<R> {
    pub(super) fn ask_listing(&mut self, dir: RelPath) {
        self.lists_pending += 1;
        self.outbox.push_back(Message::ListDir(msg::ListDir { dir: dir.as_bytes().to_vec() }));
    }

    pub(super) fn listing(&mut self, listing: msg::Listing) -> Result<(), SessionError> {
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
        let listing = self.our_listing(&dir)?;
        let ours: HashMap<&[u8], &ChildDigest> = listing.children.iter().map(|c| (c.name.as_slice(), c)).collect();
        let mut subdirs = Vec::new();
        for child in &theirs {
            let path = dir.join(&child.name).map_err(protocol)?;
            let same = ours.get(child.name.as_slice()).is_some_and(|c| c.digest == child.digest);
            if same {
                self.identical.insert(path);
                continue;
            }
            if child.is_dir {
                // An excluded directory is kept whole, whatever it holds:
                // listing it would cost round trips and change no plan.
                if !self.options.protect.as_ref().is_some_and(|f| f.excludes_entry(&path, true)) {
                    subdirs.push(path);
                }
            } else if listing.files.contains(&child.name) {
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

    pub(super) fn ask_files(&mut self) -> Result<(), SessionError> {
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

    pub(super) fn file_infos(&mut self, infos: msg::FileInfos) -> Result<(), SessionError> {
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

    /// This side's listing of `dir`, and which children are files.
    fn our_listing(&self, dir: &RelPath) -> Result<Listing, SessionError> {
        if let Some(walked) = &self.walked {
            return listing_of(walked.tree.entries_in(dir), dir).map_err(SessionError::Local);
        }
        let children = self.tree.listing(dir).to_vec();
        let files = children
            .iter()
            .filter(|c| !c.is_dir)
            .filter(|c| dir.join(&c.name).ok().and_then(|p| self.source.get(&p)).is_some_and(|e| e.file().is_some()))
            .map(|c| c.name.clone())
            .collect();
        Ok(Listing { children, files })
    }

    /// Adds to `entries` the source entries at or below the `identical`
    /// paths: the receiver holds them as the source does.
    fn identical_entries(&self, identical: &HashSet<RelPath>, entries: &mut Vec<Entry>) -> Result<(), SessionError> {
        let inside = |entry: &Entry| {
            let mut at = Some(entry.path.clone());
            while let Some(path) = at {
                if identical.contains(&path) {
                    return true;
                }
                at = (!path.parent().is_root()).then(|| path.parent());
            }
            false
        };
        match &self.walked {
            Some(walked) => {
                for entry in walked.tree.entries_in(&RelPath::root()) {
                    let entry = entry.map_err(SessionError::Local)?;
                    if inside(&entry) {
                        entries.push(entry);
                    }
                }
            }
            None => entries.extend(self.source.entries().iter().filter(|e| inside(e)).cloned()),
        }
        Ok(())
    }

    /// Builds the receiver's tree as far as it matters (identical subtrees
    /// are taken from the source) and plans against it.
    pub(super) fn finish_comparing(&mut self) -> Result<(), SessionError> {
        let identical = std::mem::take(&mut self.identical);
        let mut entries: Vec<Entry> = Vec::new();
        for (dir, theirs) in &self.listed {
            for child in theirs {
                let Ok(path) = dir.join(&child.name) else { continue };
                if identical.contains(&path) {
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
        if !identical.is_empty() {
            self.identical_entries(&identical, &mut entries)?;
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
}
