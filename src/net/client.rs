//! The client side of a remote push: scan, connect to a pinned server, run
//! the session, remember the receiver's tree for next time.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use quinn::VarInt;
use tokio_util::sync::CancellationToken;
use xfer_protocol::CloseCode;

use thiserror::Error;
use xfer_protocol::msg::{Summary, Tag};
use xfer_protocol::MAX_TAGS;

use super::driver::{close_reason, run_sender, wire_bytes, ServeConfig, ServerState, WireBytes};
use super::{client_config, client_endpoint, Congestion, ServerPin, Tuning};
use crate::codec::{Compression, Encoder};
use crate::filter::Filter;
use crate::manifest::Manifest;
use crate::net::audit::{AuditLog, AuditRecord};
use crate::net::identity::{Fingerprint, Identity};
use crate::plan::{DeleteLimit, PlanOptions};
use crate::progress::{Event, ProgressSink};
use crate::session::{FileReader, Sender, SenderConfig, SessionError};
use crate::throttle::Limiter;

/// A destination on a server: `xfer://HOST:PORT/PATH`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteUrl {
    /// `HOST:PORT`, as pinned in known hosts.
    pub authority: String,
    /// The path under the server's root (no leading `/`).
    pub path: String,
}

/// Default port of `xfer serve`.
pub const DEFAULT_PORT: u16 = 7878;

impl RemoteUrl {
    /// Parses `xfer://HOST[:PORT]/PATH`; `None` if `text` is not such a
    /// URL ([`RemoteUrl::parse_checked`] says why).
    pub fn parse(text: &str) -> Option<RemoteUrl> {
        RemoteUrl::parse_checked(text).ok()
    }

    /// Parses `xfer://HOST[:PORT]/PATH`, where PATH names a tree under the
    /// server's root and `/.` names the root itself. A URL without a path
    /// is refused: a push with `--delete` to the root replaces every tree
    /// the server holds, so the root must be asked for explicitly.
    ///
    /// # Errors
    /// [`RemoteError::BadUrl`], saying what to write instead.
    pub fn parse_checked(text: &str) -> Result<RemoteUrl, RemoteError> {
        let bad = |why: String| Err(RemoteError::BadUrl(format!("{text:?} {why}")));
        let Some(rest) = text.strip_prefix("xfer://") else {
            return bad("is not a server URL; use xfer://HOST[:PORT]/PATH".into());
        };
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        if authority.is_empty() {
            return bad("names no server; use xfer://HOST[:PORT]/PATH".into());
        }
        let path = match path.trim_matches('/') {
            "" => {
                return bad(format!(
                    "names no path on the server; name the tree, as xfer://{authority}/NAME, or the server's \
                     whole root explicitly, as xfer://{authority}/. (with --delete that replaces every tree \
                     the server holds)"
                ))
            }
            ROOT_PATH => "",
            path => path,
        };
        let authority = if authority.rsplit_once(':').is_some_and(|(_, port)| port.parse::<u16>().is_ok())
            && !authority.ends_with(']')
        {
            authority.to_string()
        } else {
            format!("{authority}:{DEFAULT_PORT}")
        };
        Ok(RemoteUrl { authority, path: path.to_string() })
    }
}

/// The path of a URL that names the server's root: `xfer://HOST/.`.
pub const ROOT_PATH: &str = ".";

/// Why a remote push failed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum RemoteError {
    /// The server's key is not the pinned one (or none is pinned).
    #[error(
        "{authority} presents {seen}, which is not the key pinned for it{pinned}. If that is the \
         server's key (run `xfer id` on the server), trust it with:\n    xfer trust {authority} {seen}\n\
         or pass --server-fingerprint {seen}"
    )]
    UntrustedServer {
        /// The server.
        authority: String,
        /// What it presented.
        seen: Fingerprint,
        /// The pin, for the message.
        pinned: String,
    },
    /// Name resolution or connection setup failed.
    #[error("cannot reach {authority}: {reason}")]
    Connect {
        /// The server.
        authority: String,
        /// What failed.
        reason: String,
    },
    /// The session failed.
    #[error(transparent)]
    Session(#[from] SessionError),
    /// A local failure.
    #[error(transparent)]
    Local(#[from] crate::Error),
    /// An option this operation does not support.
    #[error("{0}")]
    Unsupported(&'static str),
    /// The caller cancelled; the files received whole were kept.
    #[error("cancelled; the files already received whole were kept, and the next run goes on from there")]
    Cancelled,
    /// A tag breaks the rules.
    #[error("{0}; expected --tag KEY=VALUE")]
    BadTag(String),
    /// A server URL that cannot be used.
    #[error("{0}")]
    BadUrl(String),
    /// Exclusion patterns given for a pull.
    #[error(
        "exclude patterns work on pushes only (a pull's source is scanned by the server, and the protocol \
         does not carry patterns); expected a pull without --exclude or --exclude-from"
    )]
    PullFilter,
}

/// What a push or pull did: the `--json` summary.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Report {
    /// Regular files in the source (pushes only: a pull's source is remote).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub files_scanned: Option<u64>,
    /// Bytes in the source's regular files (pushes only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes_scanned: Option<u64>,
    /// Chunks in the source's files (pushes only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chunks_total: Option<u64>,
    /// Files written on the receiver.
    pub files_changed: u64,
    /// Entries deleted on the receiver.
    pub files_deleted: u64,
    /// Chunks that travelled.
    pub chunks_sent: u64,
    /// Encoded bytes of those chunks: the data direction's payload.
    pub bytes_sent: u64,
    /// Bytes of the files written (their full size, however few travelled).
    pub bytes_written: u64,
    /// Of the chunks sent, those encoded as a delta against old bytes.
    pub chunks_delta: u64,
    /// Chunks the receiver took from what it already had.
    pub chunks_reused: u64,
    /// UDP payload bytes this side sent (QUIC headers and handshake included).
    pub wire_bytes_sent: u64,
    /// UDP payload bytes this side received.
    pub wire_bytes_received: u64,
    /// A dry run: the figures above say what a real run would send.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub dry_run: bool,
    /// zstd level the chunks were last encoded at (`--compress auto`
    /// adapts it to the link; absent without zstd or for a pull).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub zstd_level_last: Option<i32>,
    /// Highest zstd level used.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub zstd_level_max: Option<i32>,
    /// The congestion controller that paced what this side sent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub congestion: Option<Congestion>,
    /// Entries whose mode bits, owner, group or xattrs the receiver did not
    /// (or could not) apply as sent; it keeps them in its records and gives
    /// them back on a pull. Counted when written, not again on later runs.
    pub meta_kept: u64,
    /// Wall time of the whole run.
    pub elapsed_s: f64,
    /// Entries skipped or failed, with the reason; the rest committed.
    pub failed: Vec<crate::fs::store::FailedEntry>,
}

impl Report {
    fn new(summary: &Summary, wire: WireBytes, failed: Vec<crate::fs::store::FailedEntry>, started: Instant) -> Self {
        Report {
            files_changed: summary.files_written,
            files_deleted: summary.deleted,
            chunks_sent: summary.chunks_received,
            bytes_sent: summary.bytes_received,
            bytes_written: summary.bytes_written,
            chunks_delta: summary.chunks_delta,
            chunks_reused: summary.chunks_reused,
            wire_bytes_sent: wire.sent,
            wire_bytes_received: wire.received,
            meta_kept: summary.meta_kept,
            elapsed_s: started.elapsed().as_secs_f64(),
            failed,
            ..Report::default()
        }
    }

    /// Whether some entries were skipped or failed (a partial transfer).
    pub fn is_partial(&self) -> bool {
        !self.failed.is_empty()
    }
}

/// Options of a push or pull.
#[derive(Clone, Debug)]
pub struct RemotePush {
    /// Delete receiver entries the source lacks.
    pub delete: bool,
    /// Re-read every source file.
    pub checksum: bool,
    /// How much the run may delete on the receiver (subtrees counted
    /// whole). A push checks its whole plan before sending any change, on
    /// a dry run too; a pull, whose plan the server makes, checks each
    /// delete as it arrives and holds them back until the server is done,
    /// so a refused pull deletes nothing (only an entry replaced by one of
    /// another kind goes at once).
    pub delete_limit: DeleteLimit,
    /// How chunks are encoded.
    pub compression: Compression,
    /// The sender's state directory (scan cache, memory of receivers).
    pub state_dir: PathBuf,
    /// How long to keep retrying while another session holds the
    /// destination (the server answers "busy"); zero fails at once.
    pub busy_wait: Duration,
    /// Cancelling it stops the session: the receiver commits the files it
    /// has whole and verified, and the call returns
    /// [`RemoteError::Cancelled`]. The next run goes on from there.
    pub cancel: CancellationToken,
    /// Where progress events go.
    pub progress: ProgressSink,
    /// Exclusion patterns (pushes only; a pull refuses a non-empty one):
    /// matching source entries are not sent, and matching receiver entries
    /// are never deleted. The caller builds it, the source root's
    /// `.xferignore` included ([`crate::fs::ignore::with_root_ignore`]).
    pub filter: Option<Arc<Filter>>,
    /// Caps the data direction (`--bwlimit`); its rate may change while
    /// the transfer runs (a timetable).
    pub bwlimit: Limiter,
    /// Compare and plan only (`--dry-run`): nothing is written and no chunk
    /// travels; the report says what a real run would do, with the chunk
    /// bytes estimated by encoding them here (without deltas, so an upper
    /// bound).
    pub dry_run: bool,
    /// `key=value` labels for the server's audit log (and this side's):
    /// at most 16, keys without `=`, each at most 128 bytes.
    pub tags: BTreeMap<String, String>,
    /// A JSON-lines file to which this side appends its record of the
    /// session (as the server's audit log does), success or not.
    pub log: Option<PathBuf>,
    /// The congestion controller of this side's connection (`--congestion`).
    pub congestion: Congestion,
}

impl RemotePush {
    /// The tags as the protocol carries them, checked.
    fn wire_tags(&self) -> Result<Vec<Tag>, RemoteError> {
        if self.tags.len() > MAX_TAGS {
            return Err(RemoteError::BadTag(format!("{} tags given; at most {MAX_TAGS} are allowed", self.tags.len())));
        }
        let tags: Vec<Tag> =
            self.tags.iter().map(|(key, value)| Tag { key: key.clone(), value: value.clone() }).collect();
        for tag in &tags {
            tag.check().map_err(RemoteError::BadTag)?;
        }
        Ok(tags)
    }
}

/// Runs `session` and appends this side's record of it to `options.log`.
/// The log is opened first, so a log that cannot be written stops the
/// run before anything moves.
async fn logged(
    options: &RemotePush,
    identity: &Identity,
    (url, pin, direction): (&RemoteUrl, Option<Fingerprint>, &'static str),
    session: impl std::future::Future<Output = Result<Report, RemoteError>>,
) -> Result<Report, RemoteError> {
    let log = options.log.as_deref().map(AuditLog::open).transpose()?;
    let started = Instant::now();
    let outcome = session.await;
    let Some(log) = log else { return outcome };
    let mut record = AuditRecord {
        client: identity.fingerprint().to_string(),
        server: pin.map(|fp| fp.to_string()),
        peer: url.authority.clone(),
        path: Some(format!("/{}", url.path)),
        direction: Some(direction),
        tags: options.tags.clone(),
        duration_s: started.elapsed().as_secs_f64(),
        congestion: Some(options.congestion.name()),
        ..AuditRecord::now()
    };
    match &outcome {
        Ok(report) => {
            record.result = if report.is_partial() { "partial" } else { "ok" };
            record.files_written = report.files_changed;
            record.files_deleted = report.files_deleted;
            record.files_failed = report.failed.len() as u64;
            record.bytes_logical = report.bytes_written;
            record.bytes_sent = report.bytes_sent;
            record.wire_bytes_sent = report.wire_bytes_sent;
            record.wire_bytes_received = report.wire_bytes_received;
        }
        Err(e) => {
            let code = match e {
                RemoteError::Cancelled => Some(CloseCode::Cancelled),
                RemoteError::Session(SessionError::Peer { code, .. }) => *code,
                RemoteError::Session(e) => Some(e.close_code()),
                // This side refused the server's key.
                RemoteError::UntrustedServer { .. } => Some(CloseCode::Unauthorized),
                _ => None,
            };
            record.fail(code, e.to_string());
        }
    }
    if let Err(e) = log.append(&record) {
        tracing::error!(log = %log.path().display(), error = %e, "cannot write the session log");
    }
    outcome
}

fn caps(options: &RemotePush) -> super::driver::Caps {
    super::driver::Caps(vec![options.bwlimit.clone()])
}

/// Runs `session` on `connection` until it ends or `cancel` fires; then
/// closes the connection and waits for the session to wind down (the
/// receiver, on either side, salvages what it has whole).
async fn cancellable<T>(
    connection: &quinn::Connection,
    cancel: &CancellationToken,
    session: impl std::future::Future<Output = Result<T, SessionError>>,
) -> Result<T, RemoteError> {
    tokio::pin!(session);
    tokio::select! {
        result = &mut session => match result {
            Ok(value) => Ok(value),
            Err(e) => Err(super::driver::with_peer_reason(connection, e).await.into()),
        },
        () = cancel.cancelled() => {
            connection.close(VarInt::from_u32(CloseCode::Cancelled as u32), b"cancelled by the client");
            let _ = session.await;
            Err(RemoteError::Cancelled)
        }
    }
}

/// Retries `attempt` while the server answers busy, for up to `wait`.
async fn while_busy<T, F: std::future::Future<Output = Result<T, RemoteError>>>(
    wait: Duration,
    mut attempt: impl FnMut() -> F,
) -> Result<T, RemoteError> {
    let deadline = Instant::now() + wait;
    let mut pause = Duration::from_millis(200);
    loop {
        match attempt().await {
            Err(RemoteError::Session(SessionError::Peer { code: Some(CloseCode::Busy), .. }))
                if Instant::now() + pause < deadline =>
            {
                tracing::info!(retry_in_s = pause.as_secs_f64(), "another session holds the destination; waiting");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(5));
            }
            other => return other,
        }
    }
}

/// Pushes the tree at `src` to `url`, whose server must present `pin`.
///
/// # Errors
/// [`RemoteError`]: an untrusted server (with the command to trust it),
/// connection failures, session and local errors.
pub async fn push(
    src: &Path,
    url: &RemoteUrl,
    identity: &Identity,
    pin: Option<Fingerprint>,
    options: &RemotePush,
) -> Result<Report, RemoteError> {
    logged(options, identity, (url, pin, "push"), push_unlogged(src, url, identity, pin, options)).await
}

async fn push_unlogged(
    src: &Path,
    url: &RemoteUrl,
    identity: &Identity,
    pin: Option<Fingerprint>,
    options: &RemotePush,
) -> Result<Report, RemoteError> {
    let started = Instant::now();
    let tags = options.wire_tags()?;
    let src = src.canonicalize().map_err(|e| crate::Error::io(src, e))?;
    let scanned = scan_for_push(&src, options).await?;
    let skipped = Arc::new(scanned.skipped_paths());
    let source = std::sync::Arc::new(scanned.manifest);
    tracing::info!(
        src = %src.display(),
        entries = source.entries().len(),
        files_read = scanned.files_read,
        bytes_read = scanned.bytes_read,
        skipped = scanned.skipped.len(),
        elapsed_s = started.elapsed().as_secs_f64(),
        "scanned"
    );
    options.progress.emit(|| {
        let files = || source.entries().iter().filter_map(|e| e.file());
        Event::Scanned { files: files().count() as u64, bytes: files().map(|f| f.size).sum() }
    });
    let (sender, wire, server) = while_busy(options.busy_wait, || async {
        let (endpoint, connection, server) = connect(url, identity, pin, options.congestion).await?;
        let memory = memory_file(&options.state_dir, &server, &url.path);
        let remembered = std::fs::read(&memory).ok().and_then(|bytes| Manifest::decode(&bytes).ok());
        let sender = new_sender(&src, url, options, &source, &skipped, &tags, remembered)?;
        let sender = cancellable(&connection, &options.cancel, run_sender(&connection, sender, caps(options))).await;
        let wire = wire_bytes(&connection);
        // The server's audit log learns of the entries skipped on this side
        // only from here.
        let skipped_here = sender.as_ref().map_or(0, |s| scanned.skipped.len() + s.skipped().len());
        connection.close(0u32.into(), close_reason(skipped_here).as_bytes());
        linger(&endpoint, &connection).await;
        Ok((sender?, wire, server))
    })
    .await?;
    let memory = memory_file(&options.state_dir, &server, &url.path);
    let summary = sender.summary().copied().unwrap_or_default();
    tracing::info!(?summary, wire_sent = wire.sent, wire_received = wire.received, "session done");
    // Remember the receiver's tree only when it now is the source (a dry
    // run changed nothing, so what was remembered still holds).
    if !options.dry_run {
        crate::crashpoint::hit("client.remember");
        remember(&memory, (summary.failed == 0).then_some(&*source));
    }
    let failed = push_failures(&src, url, options, &scanned.skipped, &sender, &summary);
    let mut report = Report::new(&summary, wire, failed, started);
    report.congestion = Some(options.congestion);
    scan_figures(&mut report, &source, &sender);
    if options.dry_run {
        dry_run_report(&mut report, &src, options, &sender).await?;
    }
    Ok(report)
}

/// Scans `src` for a push, recording into the source's state database;
/// the push's cancel token stops the scan.
async fn scan_for_push(src: &Path, options: &RemotePush) -> Result<crate::fs::scan::Scan, RemoteError> {
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
    tokio::task::spawn_blocking(move || crate::engine::scan_source_until(&src, &state_dir, scan_options, &stop))
        .await
        .map_err(|e| RemoteError::Connect { authority: "local scan".into(), reason: e.to_string() })?
        .map_err(|e| match e {
            crate::Error::Stopped => RemoteError::Cancelled,
            other => other.into(),
        })
}

/// A sender of `source` (read from `src`) to `url`'s path, set up as
/// `options` ask, planning against the `remembered` receiver tree.
fn new_sender(
    src: &Path,
    url: &RemoteUrl,
    options: &RemotePush,
    source: &Arc<Manifest>,
    skipped: &Arc<std::collections::HashSet<crate::manifest::RelPath>>,
    tags: &[Tag],
    remembered: Option<Manifest>,
) -> Result<Sender<FileReader>, RemoteError> {
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
    Ok(Sender::new(config))
}

/// Every entry the push left as it was: skipped by the scan or the
/// sender, failed on either side, or changed while it was sent.
fn push_failures(
    src: &Path,
    url: &RemoteUrl,
    options: &RemotePush,
    scan_skipped: &[crate::fs::scan::ScanSkip],
    sender: &Sender<FileReader>,
    summary: &Summary,
) -> Vec<crate::fs::store::FailedEntry> {
    let mut failed: Vec<_> = scan_skipped
        .iter()
        .map(|s| crate::fs::store::FailedEntry { path: s.path.to_string(), error: s.reason.clone() })
        .collect();
    failed.extend(sender.failed().iter().cloned());
    failed.extend(
        sender
            .skipped()
            .iter()
            .map(|s| crate::fs::store::FailedEntry { path: s.path.to_string(), error: s.reason.into() }),
    );
    if !options.dry_run {
        // The scan's records are in the source's state database, not in
        // memory. Without them the check is skipped: the push itself is done.
        match crate::engine::source_records(src, &options.state_dir).and_then(|db| {
            let records = db.records()?;
            let recorded = |path: &crate::manifest::RelPath| records.get(path).ok().flatten().map(|r| r.stat);
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
        failed.push(crate::fs::store::FailedEntry { path: format!("xfer://{}/{}", url.authority, url.path), error });
    }
    failed
}

/// The scanned tree's size, and the encoder's levels, for the report.
fn scan_figures(report: &mut Report, source: &Manifest, sender: &Sender<FileReader>) {
    let files = || source.entries().iter().filter_map(|e| e.file());
    report.files_scanned = Some(files().count() as u64);
    report.bytes_scanned = Some(files().map(|f| f.size).sum());
    report.chunks_total = Some(files().map(|f| f.chunks.len() as u64).sum());
    report.zstd_level_last = sender.encoder().level();
    report.zstd_level_max = sender.encoder().max_level();
}

/// Fills a dry run's report with what the run would have changed and sent.
async fn dry_run_report(
    report: &mut Report,
    src: &Path,
    options: &RemotePush,
    sender: &Sender<FileReader>,
) -> Result<(), RemoteError> {
    let (ops, known) = (sender.ops().to_vec(), sender.planned_against().clone());
    let (root, compression) = (src.to_path_buf(), options.compression);
    let plan = tokio::task::spawn_blocking(move || dry_run_figures(&ops, &known, root, compression))
        .await
        .map_err(|e| RemoteError::Connect { authority: "local estimate".into(), reason: e.to_string() })??;
    report.dry_run = true;
    (report.files_changed, report.files_deleted, report.chunks_sent, report.bytes_sent) = plan;
    Ok(())
}

/// Files written by `ops` whose source changed after the scan (appended,
/// rewritten, replaced) yet were not caught by a chunk's hash, because
/// only unchanged parts were read: the receiver holds the version scanned,
/// whole and verified, not the file as it is now, so the run is partial.
fn changed_since_scan(
    src: &Path,
    ops: &[crate::plan::Op],
    recorded: impl Fn(&crate::manifest::RelPath) -> Option<crate::fs::scan::StatKey>,
    failed: &[crate::fs::store::FailedEntry],
) -> Vec<crate::fs::store::FailedEntry> {
    let caught: std::collections::HashSet<&str> = failed.iter().map(|f| f.path.as_str()).collect();
    let mut changed = Vec::new();
    for op in ops {
        let crate::plan::Op::WriteFile { path, .. } = op else { continue };
        let name = path.to_string();
        if caught.contains(name.as_str()) {
            continue;
        }
        let now = std::fs::symlink_metadata(path.to_path(src)).ok().map(|m| crate::fs::scan::StatKey::of(&m));
        if now != recorded(path) {
            let error = "changed while being sent: the version scanned was committed; the next run sends the rest";
            changed.push(crate::fs::store::FailedEntry { path: name, error: error.into() });
        }
    }
    changed
}

/// What a plan would send: files written, entries deleted, chunks the
/// receiver is not known to hold, and their encoded bytes.
fn dry_run_figures(
    ops: &[crate::plan::Op],
    known: &Manifest,
    root: PathBuf,
    compression: Compression,
) -> Result<(u64, u64, u64, u64), crate::Error> {
    use crate::plan::Op;
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
                        bytes += encoder.encode(&data).payload.len() as u64;
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

/// Pushes the tree at `src` into the local directory `dest` through an
/// in-process server on loopback: the same protocol, checks and atomic
/// commits as a remote push, with no setup. The embedded server's identity
/// lives in the state directory, so the sender's memory of `dest` carries
/// over between runs.
///
/// # Errors
/// As [`push`]; overlapping source and destination are refused before
/// anything is written.
pub async fn push_embedded(src: &Path, dest: &Path, options: &RemotePush) -> Result<Report, RemoteError> {
    let (src, dest) = crate::engine::local_pair(src, dest)?;
    // The destination is made by the server's store once its lock is held:
    // made here, it could land inside a tree another push holds.
    let identity = Identity::load_or_create(&options.state_dir.join("embedded"))
        .map_err(|e| RemoteError::Connect { authority: "embedded server".into(), reason: e.to_string() })?;
    let loopback: SocketAddr = "127.0.0.1:0".parse().expect("invariant: literal");
    let endpoint = super::server_endpoint(loopback, &identity, Tuning::with_congestion(options.congestion))
        .map_err(|e| crate::Error::io("embedded server", e))?;
    let addr = endpoint.local_addr().map_err(|e| crate::Error::io("embedded server", e))?;
    let state = crate::engine::state_file(&options.state_dir, "dests", &dest).with_extension("d");
    let config_root = dest.display().to_string();
    let access = super::access::Access::allow(&[identity.fingerprint()]);
    let (failures, mut failed_rx) = tokio::sync::mpsc::unbounded_channel();
    // The caller keeps its own record (`RemotePush::log`), so no audit log.
    // The user at hand pushes their own files: owners, special bits and
    // every xattr are applied, as far as this process may.
    let config = ServeConfig {
        state: ServerState::Outside(state),
        metadata: crate::fs::store::MetaPolicy::Faithful,
        failures: Some(failures),
        congestion: options.congestion,
        ..ServeConfig::new(dest, access)
    };
    let server = tokio::spawn(super::driver::serve(endpoint.clone(), std::sync::Arc::new(config)));
    let url = RemoteUrl { authority: addr.to_string(), path: String::new() };
    // The log names the destination directory, not the loopback server.
    let logged_as = RemoteUrl { authority: "local".into(), path: config_root.trim_start_matches('/').to_string() };
    let session = async {
        let mut result = push_unlogged(&src, &url, &identity, Some(identity.fingerprint()), options).await;
        if let Ok(report) = &mut result {
            name_receiver_failures(report, &url, &mut failed_rx).await;
        }
        result
    };
    let result = logged(options, &identity, (&logged_as, None, "push"), session).await;
    endpoint.close(0u32.into(), b"done");
    endpoint.wait_idle().await;
    server.abort();
    result
}

/// Replaces the count of entries the embedded receiver failed to write
/// with those entries, by path: a local push has no server log to look in.
async fn name_receiver_failures(
    report: &mut Report,
    url: &RemoteUrl,
    failed_rx: &mut tokio::sync::mpsc::UnboundedReceiver<Vec<crate::fs::store::FailedEntry>>,
) {
    let unnamed = format!("xfer://{}/{}", url.authority, url.path);
    if !report.failed.iter().any(|f| f.path == unnamed) {
        return;
    }
    // The server's session hands them over as it ends, which can be just
    // after the client has its summary.
    let Ok(Some(named)) = tokio::time::timeout(Duration::from_secs(10), failed_rx.recv()).await else { return };
    // A full list may have left some out: the count then stays too.
    let whole = named.len() < crate::session::MAX_FAILED_KEPT;
    let known: std::collections::HashSet<String> = report.failed.iter().map(|f| f.path.clone()).collect();
    let fresh: Vec<_> = named.into_iter().filter(|f| !known.contains(&f.path)).collect();
    if !fresh.is_empty() {
        if whole {
            report.failed.retain(|f| f.path != unnamed);
        }
        report.failed.extend(fresh);
    }
}

/// Connects to `url`'s server, which must present `pin`.
async fn connect(
    url: &RemoteUrl,
    identity: &Identity,
    pin: Option<Fingerprint>,
    congestion: Congestion,
) -> Result<(quinn::Endpoint, quinn::Connection, Fingerprint), RemoteError> {
    let addr = resolve(&url.authority).await?;
    let server_pin = ServerPin::new(pin);
    let bind: SocketAddr = if addr.is_ipv6() { "[::]:0" } else { "0.0.0.0:0" }.parse().expect("invariant: literal");
    let tuning = Tuning::with_congestion(congestion);
    let endpoint = client_endpoint(bind, tuning).map_err(|e| crate::Error::io("udp socket", e))?;
    let config = client_config(identity, &server_pin, tuning).map_err(|e| crate::Error::io("tls", e))?;
    let connecting = endpoint
        .connect_with(config, addr, "xfer")
        .map_err(|e| RemoteError::Connect { authority: url.authority.clone(), reason: e.to_string() })?;
    match connecting.await {
        Ok(connection) => {
            let server = server_pin.seen().unwrap_or(Fingerprint([0; 32]));
            tracing::info!(%addr, %server, %congestion, rtt_ms = connection.rtt().as_millis() as u64, "connected");
            Ok((endpoint, connection, server))
        }
        // Refused before the handshake: the server has too many under way.
        // Busy, so the caller's busy wait retries.
        Err(quinn::ConnectionError::ConnectionClosed(close))
            if close.error_code == quinn::TransportErrorCode::CONNECTION_REFUSED =>
        {
            Err(RemoteError::Session(SessionError::Peer {
                code: Some(CloseCode::Busy),
                message: format!("{} refused the connection: too many at once; try again in a moment", url.authority),
            }))
        }
        Err(e) => Err(match server_pin.seen() {
            Some(seen) if Some(seen) != pin => RemoteError::UntrustedServer {
                authority: url.authority.clone(),
                seen,
                pinned: pin.map_or_else(|| " (none is)".into(), |p| format!(" ({p})")),
            },
            _ => RemoteError::Connect { authority: url.authority.clone(), reason: e.to_string() },
        }),
    }
}

/// Pulls `url` into the local directory `dest`, whose server must present `pin`.
///
/// # Errors
/// As [`push`].
pub async fn pull(
    url: &RemoteUrl,
    dest: &Path,
    identity: &Identity,
    pin: Option<Fingerprint>,
    options: &RemotePush,
) -> Result<Report, RemoteError> {
    logged(options, identity, (url, pin, "pull"), pull_unlogged(url, dest, identity, pin, options)).await
}

async fn pull_unlogged(
    url: &RemoteUrl,
    dest: &Path,
    identity: &Identity,
    pin: Option<Fingerprint>,
    options: &RemotePush,
) -> Result<Report, RemoteError> {
    let tags = options.wire_tags()?;
    if options.filter.as_ref().is_some_and(|f| !f.is_empty()) {
        return Err(RemoteError::PullFilter);
    }
    let started = Instant::now();
    if options.dry_run {
        return Err(RemoteError::Unsupported("--dry-run works on pushes only; a pull would write nothing to preview"));
    }
    std::fs::create_dir_all(dest).map_err(|e| crate::Error::io(dest, e))?;
    let dest = dest.canonicalize().map_err(|e| crate::Error::io(dest, e))?;
    let state = crate::engine::state_file(&options.state_dir, "dests", &dest);
    let (path, delete, checksum) = (url.path.as_bytes().to_vec(), options.delete, options.checksum);
    let receiver = tokio::task::spawn_blocking(move || -> Result<crate::fs::store::MirrorReceiver, RemoteError> {
        let store = crate::fs::store::Receiving::new(crate::fs::store::MirrorStore::open(&dest, &state)?);
        Ok(crate::session::Receiver::initiate(store, path, delete, checksum)?)
    })
    .await
    .map_err(|e| RemoteError::Connect { authority: "local store".into(), reason: e.to_string() })??;
    let (endpoint, connection, _) = connect(url, identity, pin, options.congestion).await?;
    let mut receiver = receiver;
    receiver.set_progress(options.progress.clone());
    receiver.set_delete_limit(options.delete_limit);
    receiver.set_tags(tags);
    let receiver =
        cancellable(&connection, &options.cancel, super::driver::run_pull(&connection, receiver, caps(options))).await;
    let wire = wire_bytes(&connection);
    connection.close(0u32.into(), b"done");
    linger(&endpoint, &connection).await;
    let receiver = receiver?;
    let summary = receiver.summary().copied().unwrap_or_default();
    tracing::info!(?summary, wire_sent = wire.sent, wire_received = wire.received, "session done");
    let mut report = Report::new(&summary, wire, receiver.failed().to_vec(), started);
    report.congestion = Some(options.congestion);
    Ok(report)
}

async fn resolve(authority: &str) -> Result<SocketAddr, RemoteError> {
    let mut addrs = tokio::net::lookup_host(authority)
        .await
        .map_err(|e| RemoteError::Connect { authority: authority.into(), reason: e.to_string() })?;
    addrs.next().ok_or_else(|| RemoteError::Connect { authority: authority.into(), reason: "no address".into() })
}

/// Where the sender remembers what it left on `server` at `path`.
fn memory_file(state_dir: &Path, server: &Fingerprint, path: &str) -> PathBuf {
    let key = blake3::hash(format!("{server} {path}").as_bytes()).to_hex();
    state_dir.join("remotes").join(format!("{}.manifest", &key[..32]))
}

/// Waits, after closing `connection`, until `endpoint` is idle or a round
/// trip has passed: long enough for the close to leave and to be sent again
/// if the server was still sending. quinn's full draining period (three
/// probe timeouts) matters only to an endpoint that stays up, and cost a
/// client most of a second on a 150 ms link.
async fn linger(endpoint: &quinn::Endpoint, connection: &quinn::Connection) {
    let grace = connection.rtt() + Duration::from_millis(10);
    let _ = tokio::time::timeout(grace, endpoint.wait_idle()).await;
}
