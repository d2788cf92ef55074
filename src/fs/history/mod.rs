//! The history store: every snapshot of a tree that pushes left, costing
//! only the bytes that changed.
//!
//! A mirror tree holds the current version of every file. When a push
//! overwrites or deletes a file, the chunks of the old version that no
//! longer sit anywhere in the mirror are first copied here (compressed,
//! packed, deduplicated, verified); every push that commits then records a
//! snapshot: the tree it left, as directory tree blobs stored here too. A
//! snapshot's file chunks are therefore each in this store or in the mirror
//! (read there through the state database's chunk index, re-hashed on read).
//!
//! # Layout (format 1)
//!
//! Every object is immutable once written, named by the BLAKE3 hash of its
//! bytes, written to a temporary name, fsynced, renamed into place and its
//! directory fsynced: a crash leaves an object whole or absent. The same
//! layout can be kept on an object store (one key per file).
//!
//! ```text
//! DIR/config               format version and the store's random id (JSON)
//! DIR/packs/XY/HASH        a pack: blob bodies, then its header (see below)
//! DIR/index/HASH           which blobs which packs hold
//! DIR/snapshots/HASH       one snapshot record (JSON)
//! DIR/locks/NAME           one per open writer (pid, host, start time)
//! DIR/doomed/HASH          packs a prune took out of the index, to delete later
//! ```
//!
//! (Format details: see the submodules once written.)

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::hash::ChunkId;
use crate::manifest::{Manifest, RelPath};

/// A snapshot's name: BLAKE3 of its record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SnapshotId(pub [u8; 32]);

/// What a push says about the snapshot it leaves, beside the tree itself.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SnapshotInfo {
    /// The served tree's path (`/site`; `/` for the root).
    pub tree: String,
    /// The client's key fingerprint, hex (empty for a local push).
    pub client: String,
    /// The source host as the client names it.
    pub host: String,
    /// The source path on that host.
    pub source: String,
    /// The session's `key=value` tags.
    pub tags: Vec<(String, String)>,
    /// The push did not complete (window stop, failed entries): the
    /// snapshot holds what the mirror held when it stopped.
    pub partial: bool,
    /// When the push committed.
    pub time: Option<SystemTime>,
}

/// A snapshot as listed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotRecord {
    /// Its id (hex of [`SnapshotId`] in JSON).
    pub id: String,
    /// Seconds since the Unix epoch, UTC.
    pub time: i64,
    /// RFC 3339 of `time`.
    pub time_text: String,
    /// As in [`SnapshotInfo`].
    pub tree: String,
    /// As in [`SnapshotInfo`].
    pub client: String,
    /// As in [`SnapshotInfo`].
    pub host: String,
    /// As in [`SnapshotInfo`].
    pub source: String,
    /// As in [`SnapshotInfo`].
    pub tags: Vec<(String, String)>,
    /// As in [`SnapshotInfo`].
    pub partial: bool,
    /// Regular files (hard links count once).
    pub files: u64,
    /// Directories.
    pub dirs: u64,
    /// Bytes of the regular files.
    pub bytes: u64,
    /// The root directory's tree blob, hex.
    pub root: String,
}

/// What [`History::prune`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PruneReport {
    /// Packs deleted (doomed by an earlier prune, still unreferenced).
    pub packs_deleted: u64,
    /// Bytes freed by them.
    pub bytes_freed: u64,
    /// Packs taken out of the index this run, deleted by a later one.
    pub packs_doomed: u64,
    /// Packs rewritten because most of their blobs were unreferenced.
    pub packs_repacked: u64,
    /// Doomed packs a newer snapshot referenced again, put back.
    pub packs_reinstated: u64,
    /// Bytes the store holds after the run (packs only).
    pub bytes_after: u64,
}

/// One history store, open for reading and adding.
pub struct History {
    dir: PathBuf,
}

impl History {
    /// Opens the store at `dir`, creating it if missing, and registers this
    /// writer in `locks/` until dropped (a prune deletes nothing a writer
    /// that started before its first phase may still count on).
    ///
    /// # Errors
    /// An unreadable store, or one of an unknown format.
    pub fn open(dir: &Path) -> Result<History> {
        Ok(History { dir: dir.to_path_buf() })
    }

    /// The store's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether the store holds the blob `id` (a chunk or a tree).
    pub fn contains(&self, id: &ChunkId) -> bool {
        let _ = id;
        false
    }

    /// Adds the chunk `bytes`, which must hash to `id`, unless held already.
    /// Buffered: durable after [`History::flush`].
    ///
    /// # Errors
    /// Bytes that do not hash to `id`; failures writing a full pack.
    pub fn add_chunk(&mut self, id: ChunkId, bytes: &[u8]) -> Result<()> {
        let _ = (id, bytes);
        Ok(())
    }

    /// Writes what is buffered as a pack and its index entry, durably.
    ///
    /// # Errors
    /// Failures writing or syncing.
    pub fn flush(&mut self) -> Result<()> {
        Ok(())
    }

    /// The chunk `id`, verified, if the store holds it.
    ///
    /// # Errors
    /// A pack that cannot be read or holds other bytes than it should.
    pub fn read_chunk(&self, id: &ChunkId) -> Result<Option<Vec<u8>>> {
        let _ = id;
        Ok(None)
    }

    /// Records `manifest` (the tree as a push left it) as a snapshot: its
    /// tree blobs, then its record, each durable before the next.
    ///
    /// # Errors
    /// Failures writing or syncing.
    pub fn record_snapshot(&mut self, manifest: &Manifest, info: &SnapshotInfo) -> Result<SnapshotRecord> {
        let _ = (manifest, info);
        unimplemented!()
    }

    /// Every snapshot, oldest first.
    ///
    /// # Errors
    /// An unreadable snapshot directory or record.
    pub fn snapshots(&self) -> Result<Vec<SnapshotRecord>> {
        Ok(Vec::new())
    }

    /// The snapshot of `tree` that `selector` names: `latest`, a unique
    /// prefix of an id (at least 4 hex digits), or a time (RFC 3339 or
    /// `YYYY-MM-DD[ HH:MM[:SS]]`, UTC) naming the last snapshot at or
    /// before it.
    ///
    /// # Errors
    /// None or several match (the message says which and what to do).
    pub fn find(&self, tree: &str, selector: &str) -> Result<SnapshotRecord> {
        let _ = (tree, selector);
        unimplemented!()
    }

    /// The part of snapshot `snapshot` at `sub` (a file or a directory;
    /// the root for the whole tree), as a manifest whose paths are
    /// relative to `sub` (a file: one entry named as the file).
    ///
    /// # Errors
    /// `sub` is not in the snapshot; a tree blob missing or damaged.
    pub fn load_tree(&self, snapshot: &SnapshotRecord, sub: &RelPath) -> Result<Manifest> {
        let _ = (snapshot, sub);
        unimplemented!()
    }

    /// Removes the records of the snapshots `ids` (their data goes at the
    /// next prune).
    ///
    /// # Errors
    /// An unknown id; failures removing.
    pub fn forget(&mut self, ids: &[String]) -> Result<()> {
        let _ = ids;
        Ok(())
    }

    /// Garbage-collects blobs no snapshot references, in two phases that
    /// never block a writer: packs whose blobs are all unreferenced (or
    /// rewritten without them) leave the index and are listed in
    /// `doomed/`; a later prune deletes them once no writer that started
    /// before that is still open, unless a snapshot recorded since then
    /// references them again.
    ///
    /// # Errors
    /// Failures reading or writing.
    pub fn prune(&mut self) -> Result<PruneReport> {
        unimplemented!()
    }
}
