//! The library API for backup apps: a [`Client`] that pushes and pulls
//! with its identity, and a [`Server`] to embed a receiver. Options,
//! reports, progress and cancellation are those of the CLI.

use std::path::{Path, PathBuf};

pub use crate::net::access::Access;
pub use crate::net::client::{RemoteError, RemotePush as Options, RemoteUrl, Report};
pub use crate::net::identity::{Fingerprint, Identity};
pub use crate::progress::{Event, Progress, ProgressSink};
pub use tokio_util::sync::CancellationToken;

pub use crate::net::server::Server;
pub use crate::net::Congestion;

use crate::net::client;

/// Pushes and pulls as one identity.
pub struct Client {
    identity: Identity,
}

impl Client {
    /// A client presenting `identity` (see [`Identity::load_or_create`]).
    pub fn new(identity: Identity) -> Self {
        Client { identity }
    }

    /// This client's fingerprint, for the server's allow list.
    pub fn fingerprint(&self) -> Fingerprint {
        self.identity.fingerprint()
    }

    /// Pushes the tree at `src` to `url`, whose server must present `server`.
    ///
    /// # Errors
    /// [`RemoteError`]; [`RemoteError::Cancelled`] after `options.cancel`.
    pub async fn push(
        &self,
        src: &Path,
        url: &RemoteUrl,
        server: Fingerprint,
        options: &Options,
    ) -> Result<Report, RemoteError> {
        client::push(src, url, &self.identity, Some(server), options).await
    }

    /// Pulls `url`, whose server must present `server`, into `dest`.
    ///
    /// # Errors
    /// As [`Client::push`].
    pub async fn pull(
        &self,
        url: &RemoteUrl,
        server: Fingerprint,
        dest: &Path,
        options: &Options,
    ) -> Result<Report, RemoteError> {
        client::pull(url, dest, &self.identity, Some(server), options).await
    }

    /// Pushes into a local directory through an in-process server (the same
    /// protocol and checks; no identity needed).
    ///
    /// # Errors
    /// As [`Client::push`].
    pub async fn push_local(src: &Path, dest: &Path, options: &Options) -> Result<Report, RemoteError> {
        client::push_embedded(src, dest, options).await
    }
}

impl Options {
    /// Defaults: no deletes, quick check, automatic compression, a minute
    /// of waiting on a busy destination, state in `state_dir`.
    pub fn new(state_dir: impl Into<PathBuf>) -> Self {
        Options {
            delete: false,
            checksum: false,
            // Library callers choose their guard; the CLI turns it on.
            delete_limit: crate::plan::DeleteLimit::UNLIMITED,
            compression: crate::codec::Compression::Auto,
            state_dir: state_dir.into(),
            busy_wait: std::time::Duration::from_secs(60),
            cancel: CancellationToken::new(),
            progress: ProgressSink::default(),
            filter: None,
            bwlimit: crate::throttle::Limiter::unlimited(),
            dry_run: false,
            tags: std::collections::BTreeMap::new(),
            log: None,
            congestion: crate::net::Congestion::default(),
        }
    }
}
