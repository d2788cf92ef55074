//! A local push run in memory: scan the source and drive a push session
//! pair (no server, no sockets) into the receiving store, with chunks
//! encoded exactly as they would travel on the wire. What the tests and
//! tools drive; the CLI's local push goes through an in-process server
//! ([`super::local`]).

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;
use xfer_protocol::msg::Summary;

use crate::codec::{Compression, Encoder};
use crate::error::{Error, Result};
use crate::filter::Filter;
use crate::fs::reader::FileReader;
use crate::fs::state_dir::{local_pair, scan_source, state_file};
use crate::fs::scan::ScanOptions;
use crate::fs::store::{FailedEntry, MirrorStore, Receiving};
use crate::manifest::{EntryKind, Manifest};
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
