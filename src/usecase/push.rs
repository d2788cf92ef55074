//! A push: scan the source, connect to the pinned server (retrying while
//! it is busy), run the sender, remember the receiver's tree for next
//! time, and report what was sent, skipped or changed while sent.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use xfer_protocol::msg::{Summary, Tag};

use super::schedule::scheduled;
use super::{blocking, logged, memory_file, while_busy, TransferError, RemoteUrl, Report, TransferOptions};
use crate::codec::{Compression, Encoder};
use crate::fs::scan::{Scan, ScanSkip, StatKey};
use crate::fs::store::FailedEntry;
use crate::manifest::{Manifest, RelPath};
use crate::net::client::{Link, Ran};
use crate::net::link::WireBytes;
use crate::net::identity::{Fingerprint, Identity};
use crate::plan::{Op, PlanOptions};
use crate::progress::Event;
use crate::session::{FileReader, Sender, SenderConfig};
use crate::pacing::Flow;

/// Pushes the tree at `src` to `url`, whose server must present `pin`.
///
/// # Errors
/// [`TransferError`]: an untrusted server, connection failures, session and
/// local errors; a cancel or a closing window with the report so far.
pub async fn push(
    src: &Path,
    url: &RemoteUrl,
    identity: &Identity,
    pin: Option<Fingerprint>,
    options: &TransferOptions,
) -> Result<Report, TransferError> {
    scheduled(options, Flow::Up, |options| async move {
        logged(&options, identity, (url, pin, "push"), push_unlogged(src, url, identity, pin, &options)).await
    })
    .await
}

/// A scanned source, ready to send.
pub(super) struct Source {
    /// The canonical source root.
    pub root: PathBuf,
    pub manifest: Arc<Manifest>,
    pub skipped: Arc<HashSet<RelPath>>,
    pub scan_skipped: Vec<ScanSkip>,
}

/// A push without its log record.
pub(super) async fn push_unlogged(
    src: &Path,
    url: &RemoteUrl,
    identity: &Identity,
    pin: Option<Fingerprint>,
    options: &TransferOptions,
) -> Result<Report, TransferError> {
    let started = Instant::now();
    let tags = options.wire_tags()?;
    let source = scan(src, options, started).await?;
    let sent = while_busy(options.busy_wait, || send(&source, url, identity, pin, options, &tags)).await?;
    let (sender, wire, server) = match sent {
        Sent::Done(sender, wire, server) => (sender, wire, server),
        Sent::Cancelled(wire) => {
            let mut report = Report::new(&Summary::default(), wire, Vec::new(), started);
            report.congestion = Some(options.congestion);
            source_figures(&mut report, &source.manifest);
            return Err(TransferError::Cancelled { report: Box::new(report) });
        }
    };
    let summary = sender.summary().copied().unwrap_or_default();
    super::log_done(&summary, wire);
    // Remember the receiver's tree only when it now is the source (a dry
    // run changed nothing, so what was remembered still holds).
    if !options.dry_run {
        crate::crashpoint::hit("client.remember");
        let memory = memory_file(&options.state_dir, &server, &url.path);
        remember(&memory, (summary.failed == 0).then_some(&*source.manifest));
    }
    let failed = push_failures(&source.root, url, options, &source.scan_skipped, &sender, &summary);
    let mut report = Report::new(&summary, wire, failed, started);
    report.congestion = Some(options.congestion);
    report.store = sender.store_costs().copied();
    source_figures(&mut report, &source.manifest);
    (report.zstd_level_last, report.zstd_level_max) = (sender.encoder().level(), sender.encoder().max_level());
    if options.dry_run {
        dry_run_report(&mut report, &source.root, options, &sender).await?;
    }
    Ok(report)
}

/// Scans `src` and announces its size.
pub(super) async fn scan(src: &Path, options: &TransferOptions, started: Instant) -> Result<Source, TransferError> {
    let root = src.canonicalize().map_err(|e| crate::Error::io(src, e))?;
    let scanned = scan_for_push(&root, options).await?;
    let skipped = Arc::new(scanned.skipped_paths());
    tracing::info!(
        src = %root.display(),
        entries = scanned.manifest.entries().len(),
        files_read = scanned.files_read,
        bytes_read = scanned.bytes_read,
        skipped = scanned.skipped.len(),
        elapsed_s = started.elapsed().as_secs_f64(),
        "scanned"
    );
    let manifest = Arc::new(scanned.manifest);
    options.progress.emit(|| {
        let files = || manifest.entries().iter().filter_map(|e| e.file());
        Event::Scanned { files: files().count() as u64, bytes: files().map(|f| f.size).sum() }
    });
    Ok(Source { root, manifest, skipped, scan_skipped: scanned.skipped })
}

/// How often a push reports the bytes the server acknowledged.
const ACKED_EVERY: std::time::Duration = std::time::Duration::from_millis(100);

/// How one attempt to send ended.
enum Sent {
    Done(Box<Sender<FileReader>>, WireBytes, Fingerprint),
    Cancelled(WireBytes),
}

/// One attempt: connect, plan against what the receiver is remembered to
/// hold, run the sender, close.
async fn send(
    source: &Source,
    url: &RemoteUrl,
    identity: &Identity,
    pin: Option<Fingerprint>,
    options: &TransferOptions,
    tags: &[Tag],
) -> Result<Sent, TransferError> {
    let link = Link::connect(&url.authority, identity, pin, options.congestion, options.connect_timeout).await?;
    let server = link.server;
    let memory = memory_file(&options.state_dir, &server, &url.path);
    let remembered = std::fs::read(&memory).ok().and_then(|bytes| Manifest::decode(&bytes).ok());
    let sender = new_sender(&source.root, url, options, &source.manifest, &source.skipped, tags, remembered)?;
    let ran = {
        // What the server acknowledged drives a progress display: chunks
        // handed to the connection may wait in its buffers for seconds.
        let pushing = link.push(sender, options.caps(), &options.cancel);
        tokio::pin!(pushing);
        let mut tick = tokio::time::interval(ACKED_EVERY);
        loop {
            tokio::select! {
                ran = &mut pushing => break ran,
                _ = tick.tick() => {
                    let bytes = link.acked();
                    options.progress.emit(|| Event::Acked { bytes });
                }
            }
        }
    };
    let wire = link.wire();
    // The server's audit log learns of the entries skipped on this side
    // only from here.
    let skipped_here = match &ran {
        Ok(Ran::Done(sender)) => source.scan_skipped.len() + sender.skipped().len(),
        _ => 0,
    };
    link.close(skipped_here).await;
    Ok(match ran? {
        Ran::Done(sender) => Sent::Done(Box::new(sender), wire, server),
        Ran::Cancelled => Sent::Cancelled(wire),
    })
}

/// Scans `src` for a push, recording into the source's state database;
/// the push's cancel token stops the scan.
async fn scan_for_push(src: &Path, options: &TransferOptions) -> Result<Scan, TransferError> {
    let state_dir = options.state_dir.clone();
    let src = src.to_path_buf();
    let scan_options = crate::fs::scan::ScanOptions {
        checksum: options.checksum,
        filter: options.filter.clone(),
        progress: options.progress.clone(),
        ..Default::default()
    };
    let cancel = options.cancel.clone();
    let stop = move || cancel.is_cancelled();
    blocking("scanning the source", move || {
        crate::fs::state_dir::scan_source_until(&src, &state_dir, scan_options, &stop).map_err(|e| match e {
            crate::Error::Stopped => TransferError::Cancelled { report: Box::default() },
            other => other.into(),
        })
    })
    .await
}

/// A sender of `source` (read from `src`) to `url`'s path, set up as
/// `options` ask, planning against the `remembered` receiver tree.
fn new_sender(
    src: &Path,
    url: &RemoteUrl,
    options: &TransferOptions,
    source: &Arc<Manifest>,
    skipped: &Arc<HashSet<RelPath>>,
    tags: &[Tag],
    remembered: Option<Manifest>,
) -> Result<Sender<FileReader>, TransferError> {
    let encoder = Encoder::new(options.compression)
        .map_err(|e| crate::Error::Encoder(Box::new(e)))?
        .with_clock(std::time::Instant::now);
    let mut config = SenderConfig::new(Arc::clone(source), FileReader::new(src.to_path_buf()), encoder);
    config.path = url.path.as_bytes().to_vec();
    config.plan = PlanOptions { delete: options.delete, protect: options.filter.clone(), skipped: Arc::clone(skipped) };
    config.checksum = options.checksum;
    config.remembered = remembered;
    config.progress = options.progress.clone();
    config.dry_run = options.dry_run;
    config.delete_limit = options.delete_limit;
    config.tags = tags.to_vec();
    config.source_host = label(&host_name(), xfer_protocol::MAX_HOST_LEN);
    config.source_path = label(&src.to_string_lossy(), xfer_protocol::MAX_PATH_LEN);
    config.zstd_stream = crate::crashpoint::zstd_stream();
    Ok(Sender::new(config))
}

/// This host's name, as the receiver's snapshot records it.
pub(super) fn host_name() -> String {
    rustix::system::uname().nodename().to_string_lossy().into_owned()
}

/// `text` as a snapshot label may hold it: control characters become `?`,
/// and it is cut to at most `max` bytes on a character boundary.
pub(super) fn label(text: &str, max: usize) -> String {
    let mut out = String::new();
    for c in text.chars().map(|c| if c.is_control() { '?' } else { c }) {
        if out.len() + c.len_utf8() > max {
            break;
        }
        out.push(c);
    }
    out
}

/// Every entry the push left as it was: skipped by the scan or the
/// sender, failed on either side, or changed while it was sent.
fn push_failures(
    src: &Path,
    url: &RemoteUrl,
    options: &TransferOptions,
    scan_skipped: &[ScanSkip],
    sender: &Sender<FileReader>,
    summary: &Summary,
) -> Vec<FailedEntry> {
    let mut failed: Vec<_> = scan_skipped
        .iter()
        .map(|s| FailedEntry { path: s.path.to_string(), error: s.reason.clone() })
        .collect();
    failed.extend(sender.failed().iter().cloned());
    failed.extend(
        sender
            .skipped()
            .iter()
            .map(|s| FailedEntry { path: s.path.to_string(), error: s.reason.into() }),
    );
    if !options.dry_run {
        // The scan's records are in the source's state database, not in
        // memory. Without them the check is skipped: the push itself is done.
        match crate::fs::state_dir::source_records(src, &options.state_dir).and_then(|db| {
            let records = db.records()?;
            let recorded = |path: &RelPath| records.get(path).ok().flatten().map(|r| r.stat);
            Ok(changed_since_scan(src, sender.ops(), recorded, sender.failed()))
        }) {
            Ok(changed) => failed.extend(changed),
            Err(e) => tracing::warn!(error = %e, "cannot check for files changed while sent"),
        }
    }
    // The receiver reports its own failures by count; the paths are in its log.
    let unnamed = summary.failed.saturating_sub(sender.failed().len() as u64);
    if unnamed > 0 {
        let error = format!("{unnamed} entries failed on the receiver; their old versions stay");
        failed.push(FailedEntry { path: format!("xfer://{}/{}", url.authority, url.path), error });
    }
    failed
}

/// The scanned tree's size, for the report.
fn source_figures(report: &mut Report, source: &Manifest) {
    let files = || source.entries().iter().filter_map(|e| e.file());
    report.files_scanned = Some(files().count() as u64);
    report.bytes_scanned = Some(files().map(|f| f.size).sum());
    report.chunks_total = Some(files().map(|f| f.chunks.len() as u64).sum());
}

/// Fills a dry run's report with what the run would have changed and sent.
async fn dry_run_report(
    report: &mut Report,
    src: &Path,
    options: &TransferOptions,
    sender: &Sender<FileReader>,
) -> Result<(), TransferError> {
    let (ops, known) = (sender.ops().to_vec(), sender.planned_against().clone());
    let (root, compression, streams) = (src.to_path_buf(), options.compression, sender.zstd_stream());
    let plan =
        blocking("estimating the dry run", move || Ok(dry_run_figures(&ops, &known, root, (compression, streams))?))
            .await?;
    report.dry_run = true;
    (report.files_changed, report.files_deleted, report.chunks_sent, report.bytes_sent) = plan;
    if let Some(store) = &mut report.store {
        // The dry run made the reads a real push makes; add its writes.
        let changes = report.files_changed + report.files_deleted > 0;
        let (puts, bytes) = estimated_store_writes(report.bytes_sent, changes);
        store.puts += puts;
        store.bytes_put += bytes;
    }
    Ok(())
}

/// The writes a push sending `bytes` of chunks makes on a history store
/// with the default pack size: per pack its object, its index file and
/// the client's list of chunks; for a changed tree, a pack of directory
/// blobs and its index file; and the snapshot record. Tree blobs and
/// records are small: they are left out of the bytes.
fn estimated_store_writes(bytes: u64, changes: bool) -> (u64, u64) {
    let packs = bytes.div_ceil(crate::fs::history::PACK_TARGET as u64);
    (3 * packs + 2 * u64::from(changes) + 1, bytes)
}

/// Files written by `ops` whose source changed after the scan (appended,
/// rewritten, replaced) yet were not caught by a chunk's hash, because
/// only unchanged parts were read: the receiver holds the version scanned,
/// whole and verified, not the file as it is now, so the run is partial.
fn changed_since_scan(
    src: &Path,
    ops: &[Op],
    recorded: impl Fn(&RelPath) -> Option<StatKey>,
    failed: &[FailedEntry],
) -> Vec<FailedEntry> {
    let caught: std::collections::HashSet<&str> = failed.iter().map(|f| f.path.as_str()).collect();
    let mut changed = Vec::new();
    for op in ops {
        let Op::WriteFile { path, .. } = op else { continue };
        let name = path.to_string();
        if caught.contains(name.as_str()) {
            continue;
        }
        let now = std::fs::symlink_metadata(path.to_path(src)).ok().map(|m| StatKey::of(&m));
        if now != recorded(path) {
            let error = "changed while being sent: the version scanned was committed; the next run sends the rest";
            changed.push(FailedEntry { path: name, error: error.into() });
        }
    }
    changed
}

/// What a plan would send: files written, entries deleted, chunks the
/// receiver is not known to hold, and their encoded bytes, each chunk
/// encoded as the session would (`encoding`: the compression, and whether
/// the receiver takes zstd streams).
fn dry_run_figures(
    ops: &[Op],
    known: &Manifest,
    root: PathBuf,
    encoding: (Compression, bool),
) -> Result<(u64, u64, u64, u64), crate::Error> {
    let (compression, streams) = encoding;
    let mut turns = crate::session::StreamTurns::default();
    use crate::session::ChunkReader;
    let mut held: std::collections::HashSet<_> =
        known.entries().iter().filter_map(|e| e.file()).flat_map(|f| f.chunks.iter().map(|c| c.id)).collect();
    let mut encoder = Encoder::new(compression).map_err(|e| crate::Error::Encoder(Box::new(e)))?;
    let mut reader = FileReader::new(root);
    let (mut files, mut deleted, mut chunks, mut bytes) = (0, 0, 0, 0);
    for op in ops {
        match op {
            Op::WriteFile { path, digest, .. } => {
                files += 1;
                let mut offset = 0;
                for chunk in &digest.chunks {
                    if held.insert(chunk.id) {
                        let data = reader.read(path, offset, *chunk)?;
                        chunks += 1;
                        let encoded = if streams {
                            encoder.encode_on_stream(turns.next(data.len()), &data)
                        } else {
                            encoder.encode(&data)
                        };
                        bytes += encoded.payload.len() as u64;
                    }
                    offset += u64::from(chunk.len);
                }
            }
            Op::Delete { .. } => deleted += 1,
            _ => {}
        }
    }
    Ok((files, deleted, chunks, bytes))
}

/// Records `tree` as what the receiver holds, or forgets the memory when
/// the push left the receiver somewhere else (`None`).
fn remember(memory: &Path, tree: Option<&Manifest>) {
    let Some(tree) = tree else {
        let _ = std::fs::remove_file(memory);
        return;
    };
    if let Some(dir) = memory.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let temp = memory.with_extension("tmp");
    if std::fs::write(&temp, tree.encode()).is_ok() {
        let _ = std::fs::rename(&temp, memory);
    }
}


#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_push_opens_with_its_source_host_and_path() {
        let url = RemoteUrl { authority: "h:1".into(), path: "site".into() };
        let options = TransferOptions::new("/nonexistent-state");
        let source = Arc::new(Manifest::new(Vec::new()).unwrap());
        let src = Path::new("/home/a/site\u{7}");
        let mut sender = new_sender(src, &url, &options, &source, &Arc::default(), &[], None).unwrap();
        let opened = std::iter::from_fn(|| sender.poll_transmit()).find_map(|m| match m {
            xfer_protocol::Message::Open(open) => Some(open),
            _ => None,
        });
        let open = opened.unwrap();
        assert_eq!(open.source_path, "/home/a/site?");
        assert_eq!(open.source_host, host_name());
        assert_eq!(open.path, b"site");
    }

    #[test]
    fn labels_are_bounded_and_printable() {
        assert_eq!(super::label("a\nb\tc", 100), "a?b?c");
        assert_eq!(super::label("ééé", 5), "éé");
        assert_eq!(super::label("", 5), "");
        assert!(!super::host_name().is_empty());
    }
}
