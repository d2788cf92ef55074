//! A local push: the tree goes into a local directory through a server
//! embedded in this process on loopback, with the same protocol, checks
//! and atomic commits as a remote push.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use tokio::sync::mpsc::UnboundedReceiver;

use super::push::push_unlogged;
use super::schedule::scheduled;
use super::{logged, TransferError, RemoteUrl, Report, TransferOptions};
use crate::fs::store::{FailedEntry, MetaPolicy};
use crate::net::access::Access;
use crate::net::served::{ServeConfig, ServerState};
use crate::net::identity::Identity;
use crate::net::server::Listener;
use crate::pacing::Flow;

/// Pushes the tree at `src` into the local directory `dest` through an
/// in-process server on loopback. The embedded server's identity lives in
/// the state directory, so the sender's memory of `dest` carries over
/// between runs.
///
/// # Errors
/// As [`super::push::push`]; overlapping source and destination are
/// refused before anything is written.
pub async fn push_local(src: &Path, dest: &Path, options: &TransferOptions) -> Result<Report, TransferError> {
    scheduled(options, Flow::Up, |options| async move { push_embedded(src, dest, &options).await }).await
}

async fn push_embedded(src: &Path, dest: &Path, options: &TransferOptions) -> Result<Report, TransferError> {
    let (src, dest) = crate::fs::state_dir::local_pair(src, dest)?;
    // The destination is made by the server's store once its lock is held:
    // made here, it could land inside a tree another push holds.
    let identity = Identity::load_or_create(&options.state_dir.join("embedded"))
        .map_err(|e| TransferError::Task { what: "loading the embedded server's identity", reason: e.to_string() })?;
    let state = crate::fs::state_dir::state_file(&options.state_dir, "dests", &dest).with_extension("d");
    let logged_path = dest.display().to_string();
    let access = Access::allow(&[identity.fingerprint()]);
    let (failures, mut failed_rx) = tokio::sync::mpsc::unbounded_channel();
    // The caller keeps its own record (`TransferOptions::log`), so no audit
    // log. The user at hand pushes their own files: owners, special bits
    // and every xattr are applied, as far as this process may.
    let config = ServeConfig {
        state: ServerState::Outside(state),
        metadata: MetaPolicy::Faithful,
        failures: Some(failures),
        congestion: options.congestion,
        ..ServeConfig::new(dest, access)
    };
    let loopback: SocketAddr = "127.0.0.1:0".parse().expect("invariant: literal");
    let server = Listener::start(loopback, &identity, config).map_err(|e| crate::Error::io("embedded server", e))?;
    let addr = server.local_addr().map_err(|e| crate::Error::io("embedded server", e))?;
    let url = RemoteUrl { authority: addr.to_string(), path: String::new() };
    // The log names the destination directory, not the loopback server.
    let logged_as = RemoteUrl { authority: "local".into(), path: logged_path.trim_start_matches('/').to_string() };
    let session = async {
        let mut result = push_unlogged(&src, &url, &identity, Some(identity.fingerprint()), options).await;
        if let Ok(report) = &mut result {
            name_receiver_failures(report, &url, &mut failed_rx).await;
        }
        result
    };
    let result = logged(options, &identity, (&logged_as, None, "push"), session).await;
    server.close_done().await;
    result
}

/// Replaces the count of entries the embedded receiver failed to write
/// with those entries, by path: a local push has no server log to look in.
async fn name_receiver_failures(
    report: &mut Report,
    url: &RemoteUrl,
    failed_rx: &mut UnboundedReceiver<Vec<FailedEntry>>,
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
