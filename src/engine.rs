//! The local push: scan the source and run a push session in memory into
//! the receiving store, with chunks encoded exactly as they would travel on
//! the wire; and the state files both sides keep.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;
use xfer_protocol::msg::Summary;

use crate::codec::{Compression, Encoder};
use crate::error::{Error, IoContext, Result};
use crate::filter::Filter;
use crate::fs::reader::FileReader;
use crate::fs::scan::{scan_with, Records, Scan, ScanOptions};
use crate::fs::store::state::StateDb;
use crate::fs::store::{FailedEntry, MirrorStore, Receiving};
use crate::manifest::{EntryKind, Manifest, RelPath};
use crate::plan::PlanOptions;
use crate::session::pair::{self, Traffic};
use crate::session::{OpenRequest, Receiver, Sender, SenderConfig, SessionError};

/// What a push should do.
#[derive(Clone, Debug)]
pub struct PushOptions {
    /// Delete destination entries the source lacks.
    pub delete: bool,
    /// Read every file, ignoring the quick check (`--checksum`).
    pub checksum: bool,
    /// How chunks are encoded.
    pub compression: Compression,
    /// Where xfer keeps its state for this machine (scan caches, the local
    /// destination's chunk index); never inside a transferred tree.
    pub state_dir: PathBuf,
    /// Exclusion patterns: matching source entries are not pushed, and
    /// matching destination entries are never deleted. The caller builds it,
    /// the source root's `.xferignore` included
    /// ([`crate::fs::ignore::with_root_ignore`]).
    pub filter: Option<Arc<Filter>>,
}

/// What a push did, as reported by `--json`.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Stats {
    /// Regular files in the source.
    pub files_scanned: u64,
    /// Files (re)written on the destination.
    pub files_changed: u64,
    /// Bytes in the source's regular files.
    pub bytes_scanned: u64,
    /// Source files read in full (the others passed the quick check).
    pub files_read: u64,
    /// Chunks in the source's files.
    pub chunks_total: u64,
    /// Chunks the receiver needed and was sent.
    pub chunks_sent: u64,
    /// Encoded bytes of those chunks: the data direction's payload.
    pub bytes_sent: u64,
    /// Of the chunks sent, those encoded as a delta against old bytes.
    pub chunks_delta: u64,
    /// Signature bytes the receiver offered for deltas (reverse direction).
    pub signature_bytes: u64,
    /// Requests for finer signatures the sender made (data direction).
    pub refine_request_bytes: u64,
    /// Chunks the receiver copied from files it already had.
    pub chunks_reused: u64,
    /// Encoded size of the entry changes themselves (paths, metadata, chunk
    /// list edits against the receiver's old list, a hash for a file the
    /// receiver holds elsewhere): what a sender that remembers the
    /// receiver's tree sends besides chunks.
    pub metadata_bytes: u64,
    /// Entries deleted on the destination.
    pub entries_deleted: u64,
    /// Entries not transferred, with the reason (special files,
    /// unreadable or changing files, conflicts).
    pub skipped: Vec<FailedEntry>,
}

impl Stats {
    /// Whether some entries were skipped or failed (a partial transfer).
    pub fn is_partial(&self) -> bool {
        !self.skipped.is_empty()
    }
}

/// Pushes the tree at `src` into the local directory `dest`: a push
/// session whose sender and receiver run here, in memory
/// ([`crate::session::pair`]), with chunks encoded exactly as they would
/// travel on the wire.
///
/// # Errors
/// [`Error`] when the push cannot go on: unreadable roots, state database
/// failures, a full disk. Problems with single entries do not stop it; they
/// are listed in [`Stats::skipped`].
pub fn push_local(src: &Path, dest: &Path, options: &PushOptions) -> Result<Stats> {
    let (src, dest) = local_pair(src, dest)?;

    // The destination is made by MirrorStore::open under its lock.
    let scan_options =
        ScanOptions { checksum: options.checksum, filter: options.filter.clone(), ..ScanOptions::default() };
    let scanned = scan_source(&src, &options.state_dir, scan_options)?;
    let store = MirrorStore::open(&dest, &state_file(&options.state_dir, "dests", &dest))?;

    let source = Arc::new(scanned.manifest.clone());
    let encoder = Encoder::new(options.compression).map_err(|e| Error::Encoder(Box::new(e)))?;
    let mut config = SenderConfig::new(Arc::clone(&source), FileReader::new(src), encoder);
    config.plan = PlanOptions {
        delete: options.delete,
        protect: options.filter.clone(),
        skipped: Arc::new(scanned.skipped_paths()),
    };
    config.checksum = options.checksum;
    let mut sender = Sender::new(config);
    let mut store = Some(Receiving::new(store));
    let mut receiver = Receiver::new(Box::new(move |_: &OpenRequest| {
        store.take().ok_or_else(|| SessionError::Protocol("the destination was opened twice".into()))
    }));
    let traffic = pair::run(&mut sender, &mut receiver).map_err(|e| local_error(e, &dest))?;
    let summary = receiver.summary().copied().ok_or_else(|| local_error(stalled(), &dest))?;

    let mut stats = Stats::default();
    for entry in source.entries() {
        if let EntryKind::File(digest) = &entry.kind {
            stats.files_scanned += 1;
            stats.bytes_scanned += digest.size;
            stats.chunks_total += digest.chunks.len() as u64;
        }
    }
    stats.files_read = scanned.files_read;
    stats.metadata_bytes = metadata_bytes(sender.ops(), sender.planned_against());
    absorb(&mut stats, &summary, &traffic);
    // The receiver's failures include the files the sender gave up on.
    stats.skipped.extend(receiver.failed().iter().cloned());
    stats
        .skipped
        .extend(scanned.skipped.iter().map(|s| FailedEntry { path: s.path.to_string(), error: s.reason.clone() }));
    stats
        .skipped
        .extend(sender.skipped().iter().map(|s| FailedEntry { path: s.path.to_string(), error: s.reason.into() }));
    Ok(stats)
}

/// A session run in memory that ended with neither side failing nor both
/// finished: a fault of the sessions themselves.
fn stalled() -> SessionError {
    SessionError::Protocol("the local session stopped before the receiver's summary".into())
}

/// A local session's failure as this crate's error: the sides' own errors
/// as they were; a session fault (no peer is involved) named with the
/// destination.
fn local_error(e: SessionError, dest: &Path) -> Error {
    match e {
        SessionError::DeleteRefused(refused) => Error::DeleteRefused(refused),
        SessionError::Local(e) => match e.downcast::<Error>() {
            Ok(e) => *e,
            Err(e) => Error::io(dest, std::io::Error::other(e)),
        },
        e => Error::io(dest, std::io::Error::other(e)),
    }
}

/// The canonical forms of a local source and destination (which need not
/// exist yet).
///
/// # Errors
/// A missing source, or trees that overlap: a push would then read what it
/// writes.
pub fn local_pair(src: &Path, dest: &Path) -> Result<(PathBuf, PathBuf)> {
    let src = src.canonicalize().at(src)?;
    let dest = crate::fs::store::canonical_missing(dest)?;
    if src.starts_with(&dest) || dest.starts_with(&src) {
        return Err(Error::io(
            &dest,
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("source {} and destination overlap; choose a destination outside the source", src.display()),
            ),
        ));
    }
    Ok((src, dest))
}

/// Scans the source tree at `src` (canonical) as `options` say,
/// quick-checking against the records of its last scan kept in
/// `state_dir`, and records this one there ([`source_records`]); the
/// returned [`Scan::records`] is empty.
///
/// # Errors
/// An unreadable root or state database.
pub fn scan_source(src: &Path, state_dir: &Path, options: ScanOptions) -> Result<Scan> {
    scan_source_until(src, state_dir, options, &|| false)
}

/// [`scan_source`], stopped before the next file once `stop` says so: a
/// scan of a large tree must not hold up a SIGTERM for minutes. What was
/// recorded so far stays (each record describes its file as read).
///
/// # Errors
/// As [`scan_source`], and [`Error::Stopped`] once `stop` returns true.
pub fn scan_source_until(src: &Path, state_dir: &Path, options: ScanOptions, stop: &dyn Fn() -> bool) -> Result<Scan> {
    let db = source_records(src, state_dir)?;
    let mut recorder = Until { inner: db.recorder()?, stop };
    let scanned = scan_with(src, &mut recorder, options)?;
    crate::crashpoint::hit("source.record");
    recorder.inner.finish(&scanned.manifest)?;
    Ok(scanned)
}

/// Records that end the scan once `stop` says so.
struct Until<'a, R> {
    inner: R,
    stop: &'a dyn Fn() -> bool,
}

impl<R: Records> Records for Until<'_, R> {
    fn previous(&mut self, path: &RelPath) -> Result<Option<crate::fs::scan::FileRecord>> {
        if (self.stop)() {
            return Err(Error::Stopped);
        }
        self.inner.previous(path)
    }

    fn record(&mut self, path: &RelPath, record: &crate::fs::scan::FileRecord, changed: bool) -> Result<()> {
        self.inner.record(path, record, changed)
    }
}

/// The state database holding the scan records of the source tree `src`
/// (canonical).
///
/// # Errors
/// A state database that cannot be opened.
pub fn source_records(src: &Path, state_dir: &Path) -> Result<StateDb> {
    StateDb::open(&state_file(state_dir, "sources", src))
}

fn absorb(stats: &mut Stats, summary: &Summary, traffic: &Traffic) {
    stats.files_changed = summary.files_written;
    stats.chunks_sent = summary.chunks_received;
    stats.bytes_sent = summary.bytes_received;
    stats.chunks_delta = summary.chunks_delta;
    stats.signature_bytes = traffic.signature_bytes;
    stats.refine_request_bytes = traffic.refine_request_bytes;
    stats.chunks_reused = summary.chunks_reused;
    stats.entries_deleted = summary.deleted;
}

/// Encoded size of the plan's entry changes against the receiver's tree `dest`.
fn metadata_bytes(ops: &[crate::plan::Op], dest: &Manifest) -> u64 {
    use crate::plan::{wire_chunk_list, Op};
    let held: HashSet<_> = dest.entries().iter().filter_map(|e| e.file()).map(|f| f.hash).collect();
    let size = |value: &dyn erased::Encode| value.encoded_len();
    let mut total = 0;
    for op in ops {
        total += match op {
            Op::WriteFile { path, meta, digest } if held.contains(&digest.hash) => size(&(path, meta, digest.hash)),
            Op::WriteFile { path, meta, digest } => {
                let old = dest.get(path).and_then(|e| e.file()).map_or(&[][..], |f| &f.chunks[..]);
                let edit = wire_chunk_list(old, digest);
                size(&(path, meta, digest.size, digest.hash, digest.params, edit))
            }
            Op::Symlink { path, target, meta } => size(&(path, target, meta)),
            Op::Link { path, target, size: len, hash } => size(&(path, target, len, hash)),
            Op::Mkdir { path, meta } | Op::SetMeta { path, meta } => size(&(path, meta)),
            Op::Delete { path } => size(path),
        };
    }
    total as u64
}

/// Postcard sizes of differently typed values through one function.
mod erased {
    pub(super) trait Encode {
        fn encoded_len(&self) -> usize;
    }

    impl<T: serde::Serialize> Encode for T {
        fn encoded_len(&self) -> usize {
            postcard::experimental::serialized_size(self).unwrap_or(0)
        }
    }
}

/// The state file for `tree` under `state_dir/kind/`, named by a hash of
/// the tree's canonical path.
pub fn state_file(state_dir: &Path, kind: &str, tree: &Path) -> PathBuf {
    use std::os::unix::ffi::OsStrExt;
    let key = blake3::hash(tree.as_os_str().as_bytes()).to_hex();
    state_dir.join(kind).join(format!("{}.redb", &key[..32]))
}

/// The default state directory: `$XDG_STATE_HOME/xfer`, else
/// `~/.local/state/xfer`.
pub fn default_state_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("XDG_STATE_HOME").filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(dir).join("xfer"));
    }
    std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".local/state/xfer"))
}
