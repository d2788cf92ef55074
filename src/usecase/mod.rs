//! The use cases: what a push, a pull, a local push and a server do, each
//! in its own module, on top of the filesystem edge (`crate::fs`), the
//! network edge (`crate::net`) and the sans-IO sessions. Shared here: the
//! options a transfer runs with, its report and its error, its record in
//! the caller's log, retries on a busy destination and the schedule
//! (window and timetable) it keeps to.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use xfer_protocol::msg::Tag;
use xfer_protocol::{CloseCode, MAX_TAGS};

use crate::codec::Compression;
use crate::filter::Filter;
use crate::net::audit::{AuditLog, AuditRecord};
use crate::net::identity::{Fingerprint, Identity};
use crate::net::Congestion;
use crate::plan::DeleteLimit;
use crate::progress::ProgressSink;
use crate::session::SessionError;
use crate::net::limiter::Limiter;

pub mod local;
#[cfg(feature = "internals")]
pub mod memory;
pub mod history;
mod outcome;
pub mod pull;
pub mod push;
pub mod retention;
mod schedule;
pub mod serve;
mod url;

pub use outcome::{TransferError, Report};
pub use schedule::{Clock, Schedule};
pub use url::{RemoteUrl, DEFAULT_PORT, ROOT_PATH};

/// How long a client waits for a server to answer (name resolution and
/// handshake): well past any real link's round trips, well short of the
/// minute quinn's idle timeout would take on a dead port.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// Everything a push or pull runs with: the use cases' view of the
/// options. The public API builds it from `PushOptions` or `PullOptions`.
#[derive(Clone, Debug)]
pub struct TransferOptions {
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
    /// [`TransferError::Cancelled`]. The next run goes on from there.
    pub cancel: CancellationToken,
    /// Where progress events go.
    pub progress: ProgressSink,
    /// Exclusion patterns (pushes only; a pull refuses a non-empty one):
    /// matching source entries are not sent, and matching receiver entries
    /// are never deleted.
    pub filter: Option<Arc<Filter>>,
    /// Caps the data direction; its rate may change while the transfer
    /// runs (a timetable).
    pub bwlimit: Limiter,
    /// Compare and plan only: nothing is written and no chunk travels; the
    /// report says what a real run would do, with the chunk bytes
    /// estimated by encoding them here as the session would (without
    /// deltas, so an upper bound, but that with zstd streams the receiver
    /// may ask for chunks in a slightly other order).
    pub dry_run: bool,
    /// `key=value` labels for the server's audit log (and this side's):
    /// at most 16, keys without `=`, each at most 128 bytes.
    pub tags: BTreeMap<String, String>,
    /// A JSON-lines file to which this side appends its record of the
    /// session (as the server's audit log does), success or not.
    pub log: Option<PathBuf>,
    /// The congestion controller of this side's connection.
    pub congestion: Congestion,
    /// How long to wait for the server to answer before giving up.
    pub connect_timeout: Duration,
    /// The window the transfer runs in and the timetable of its rate.
    pub schedule: Schedule,
    /// A pull: the server's snapshot to restore instead of its current
    /// tree (`latest`, an id prefix, a time).
    pub at: Option<String>,
}

impl TransferOptions {
    /// Defaults: no deletes, quick check, automatic compression, a minute
    /// of waiting on a busy destination, state in `state_dir`.
    pub fn new(state_dir: impl Into<PathBuf>) -> Self {
        TransferOptions {
            delete: false,
            checksum: false,
            // Library callers choose their guard; the CLI turns it on.
            delete_limit: DeleteLimit::UNLIMITED,
            compression: Compression::Auto,
            state_dir: state_dir.into(),
            busy_wait: Duration::from_secs(60),
            cancel: CancellationToken::new(),
            progress: ProgressSink::default(),
            filter: None,
            bwlimit: Limiter::unlimited(),
            dry_run: false,
            tags: BTreeMap::new(),
            log: None,
            congestion: Congestion::default(),
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            schedule: Schedule::default(),
            at: None,
        }
    }

    /// The tags as the protocol carries them, checked.
    fn wire_tags(&self) -> Result<Vec<Tag>, TransferError> {
        if self.tags.len() > MAX_TAGS {
            return Err(TransferError::BadTag(format!("{} tags given; at most {MAX_TAGS} are allowed", self.tags.len())));
        }
        let tags: Vec<Tag> =
            self.tags.iter().map(|(key, value)| Tag { key: key.clone(), value: value.clone() }).collect();
        for tag in &tags {
            tag.check().map_err(TransferError::BadTag)?;
        }
        Ok(tags)
    }

    /// The caps on the data direction.
    fn caps(&self) -> crate::net::caps::Caps {
        crate::net::caps::Caps(vec![self.bwlimit.clone()])
    }
}

/// Where a session's record goes: the server as the log names it, the
/// pin, and the direction.
type LogTarget<'a> = (&'a RemoteUrl, Option<Fingerprint>, &'static str);

/// Runs `session` and appends this side's record of it to `options.log`.
/// The log is opened first, so a log that cannot be written stops the
/// run before anything moves.
async fn logged(
    options: &TransferOptions,
    identity: &Identity,
    (url, pin, direction): LogTarget<'_>,
    session: impl std::future::Future<Output = Result<Report, TransferError>>,
) -> Result<Report, TransferError> {
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
        Ok(report) => record_report(&mut record, report),
        Err(e) => record.fail(close_code(e), e.to_string()),
    }
    if let Err(e) = log.append(&record) {
        tracing::error!(log = %log.path().display(), error = %e, "cannot write the session log");
    }
    outcome
}

/// Logs a finished session's counts, each a field of its own (as `-v`
/// shows them), not the summary's debug form.
fn log_done(summary: &xfer_protocol::msg::Summary, wire: crate::net::link::WireBytes) {
    tracing::info!(
        files_written = summary.files_written,
        deleted = summary.deleted,
        failed = summary.failed,
        bytes_written = summary.bytes_written,
        chunks_received = summary.chunks_received,
        chunks_reused = summary.chunks_reused,
        chunks_delta = summary.chunks_delta,
        wire_sent = wire.sent,
        wire_received = wire.received,
        "session done"
    );
}

fn record_report(record: &mut AuditRecord, report: &Report) {
    record.result = if report.is_partial() { "partial" } else { "ok" };
    record.files_written = report.files_changed;
    record.files_deleted = report.files_deleted;
    record.files_failed = report.failed.len() as u64;
    record.bytes_logical = report.bytes_written;
    record.bytes_sent = report.bytes_sent;
    record.wire_bytes_sent = report.wire_bytes_sent;
    record.wire_bytes_received = report.wire_bytes_received;
}

/// The close code a failed session's record names.
fn close_code(e: &TransferError) -> Option<CloseCode> {
    match e {
        TransferError::Cancelled { .. } | TransferError::WindowClosed { .. } => Some(CloseCode::Cancelled),
        TransferError::Session(SessionError::Peer { code, .. }) => *code,
        TransferError::Session(e) => Some(e.close_code()),
        // This side refused the server's key.
        TransferError::UntrustedServer { .. } => Some(CloseCode::Unauthorized),
        _ => None,
    }
}

/// Retries `attempt` while the server answers busy, for up to `wait`.
async fn while_busy<T, F: std::future::Future<Output = Result<T, TransferError>>>(
    wait: Duration,
    mut attempt: impl FnMut() -> F,
) -> Result<T, TransferError> {
    let deadline = Instant::now() + wait;
    let mut pause = Duration::from_millis(200);
    loop {
        match attempt().await {
            Err(TransferError::Session(SessionError::Peer { code: Some(CloseCode::Busy), .. }))
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

/// Runs blocking `work` off the runtime; a task that panicked is a local
/// failure named `what`.
async fn blocking<T: Send + 'static>(
    what: &'static str,
    work: impl FnOnce() -> Result<T, TransferError> + Send + 'static,
) -> Result<T, TransferError> {
    tokio::task::spawn_blocking(work).await.map_err(|e| TransferError::Task { what, reason: e.to_string() })?
}

/// Where the sender remembers what it left on `server` at `path`.
fn memory_file(state_dir: &Path, server: &Fingerprint, path: &str) -> PathBuf {
    let key = blake3::hash(format!("{server} {path}").as_bytes()).to_hex();
    state_dir.join("remotes").join(format!("{}.manifest", &key[..32]))
}
