//! A pull: open the local tree, connect to the pinned server, run the
//! receiver (the server's sender plans against what is here) and report.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use xfer_protocol::msg::Summary;

use super::schedule::scheduled;
use super::{blocking, logged, TransferError, RemoteUrl, Report, TransferOptions};
use crate::net::client::{Link, Ran};
use crate::net::identity::{Fingerprint, Identity};
use crate::progress::{Event, Progress, ProgressSink};
use crate::fs::store::{MirrorReceiver, MirrorStore, Receiving};
use crate::session::Receiver;
use crate::pacing::Flow;

/// Pulls `url` into the local directory `dest`, whose server must present `pin`.
///
/// # Errors
/// As [`super::push::push`].
pub async fn pull(
    url: &RemoteUrl,
    dest: &Path,
    identity: &Identity,
    pin: Option<Fingerprint>,
    options: &TransferOptions,
) -> Result<Report, TransferError> {
    scheduled(options, Flow::Down, |options| async move {
        logged(&options, identity, (url, pin, "pull"), pull_unlogged(url, dest, identity, pin, &options)).await
    })
    .await
}

async fn pull_unlogged(
    url: &RemoteUrl,
    dest: &Path,
    identity: &Identity,
    pin: Option<Fingerprint>,
    options: &TransferOptions,
) -> Result<Report, TransferError> {
    let started = Instant::now();
    let done = Arc::new(DoneCount { inner: options.progress.clone(), files: AtomicU64::new(0) });
    let mut receiver = open_receiver(url, dest, options).await?;
    receiver.set_progress(ProgressSink::new(done.clone()));
    let link = Link::connect(&url.authority, identity, pin, options.congestion, options.connect_timeout).await?;
    let ran = link.pull(receiver, options.caps(), &options.cancel).await;
    let wire = link.wire();
    link.close(0).await;
    let (summary, failed, store) = match ran? {
        Ran::Done(receiver) => {
            (receiver.summary().copied().unwrap_or_default(), receiver.failed().to_vec(), receiver.store_costs().copied())
        }
        Ran::Cancelled => {
            // The files received whole are kept: those counted done.
            let kept = Summary { files_written: done.files.load(Ordering::Relaxed), ..Summary::default() };
            let mut report = Report::new(&kept, wire, Vec::new(), started);
            report.congestion = Some(options.congestion);
            return Err(TransferError::Cancelled { report: Box::new(report) });
        }
    };
    super::log_done(&summary, wire);
    let mut report = Report::new(&summary, wire, failed, started);
    report.congestion = Some(options.congestion);
    report.store = store;
    Ok(report)
}

/// Checks the options and opens the local tree for a pull of `url`.
async fn open_receiver(url: &RemoteUrl, dest: &Path, options: &TransferOptions) -> Result<MirrorReceiver, TransferError> {
    let tags = options.wire_tags()?;
    if let Some(at) = &options.at {
        super::history::check_selector(at)?;
    }
    if options.filter.as_ref().is_some_and(|f| !f.is_empty()) {
        return Err(TransferError::PullFilter);
    }
    if options.dry_run {
        return Err(TransferError::Unsupported("a dry run works on pushes only; a pull would write nothing to preview"));
    }
    std::fs::create_dir_all(dest).map_err(|e| crate::Error::io(dest, e))?;
    let dest = dest.canonicalize().map_err(|e| crate::Error::io(dest, e))?;
    let state = crate::fs::state_dir::state_file(&options.state_dir, "dests", &dest);
    let (path, delete, checksum) = (url.path.as_bytes().to_vec(), options.delete, options.checksum);
    let mut receiver = blocking("opening the destination", move || {
        let store = Receiving::new(MirrorStore::open(&dest, &state)?);
        Ok(Receiver::initiate(store, path, delete, checksum)?)
    })
    .await?;
    receiver.set_delete_limit(options.delete_limit);
    receiver.set_tags(tags);
    receiver.set_snapshot(options.at.clone());
    Ok(receiver)
}

/// Passes events on to the caller's sink, counting the files done: what
/// a cancelled pull kept.
struct DoneCount {
    inner: ProgressSink,
    files: AtomicU64,
}

impl Progress for DoneCount {
    fn event(&self, event: &Event) {
        if matches!(event, Event::FileDone { .. }) {
            self.files.fetch_add(1, Ordering::Relaxed);
        }
        self.inner.emit(|| event.clone());
    }
}
