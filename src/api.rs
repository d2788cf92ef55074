//! The library API for backup apps: a [`Client`] that pushes and pulls
//! with its identity, and a [`Server`] to embed a receiver. Options,
//! reports, progress and cancellation are those of the CLI.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use crate::identity::{Fingerprint, Identity};
pub use crate::progress::{Event, Progress, ProgressSink};
pub use crate::transport::access::Access;
pub use crate::transport::client::{RemoteError, RemotePush as Options, RemoteUrl, Report};
pub use tokio_util::sync::CancellationToken;

use crate::transport::client;
use crate::transport::driver::{serve, ServeConfig};
use crate::transport::{server_endpoint, Tuning};

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
            compression: crate::codec::Compression::Auto,
            state_dir: state_dir.into(),
            busy_wait: std::time::Duration::from_secs(60),
            cancel: CancellationToken::new(),
            progress: ProgressSink::default(),
            filter: None,
            bwlimit: crate::throttle::Limiter::unlimited(),
        }
    }
}

/// A receiver serving a directory on a UDP port, running on the current
/// tokio runtime until [`Server::shutdown`].
pub struct Server {
    endpoint: quinn::Endpoint,
    fingerprint: Fingerprint,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    /// Serves `root` on `listen` as `identity`, to the clients `access`
    /// admits. Must be called inside a tokio runtime.
    ///
    /// # Errors
    /// The socket cannot be bound, or the TLS setup fails.
    pub fn start(listen: SocketAddr, root: PathBuf, access: Access, identity: &Identity) -> io::Result<Server> {
        let endpoint = server_endpoint(listen, identity, Tuning::default())?;
        let config = Arc::new(ServeConfig::new(root, access));
        let task = tokio::spawn(serve(endpoint.clone(), config));
        Ok(Server { endpoint, fingerprint: identity.fingerprint(), task })
    }

    /// The address it listens on (the real port when `listen` asked for 0).
    ///
    /// # Errors
    /// The socket's address cannot be read.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.endpoint.local_addr()
    }

    /// The server's fingerprint, for clients to pin.
    pub fn fingerprint(&self) -> Fingerprint {
        self.fingerprint
    }

    /// Stops accepting, closes open sessions (their receivers keep what
    /// arrived whole) and waits for the endpoint to go quiet.
    pub async fn shutdown(self) {
        self.endpoint.close(0u32.into(), b"server shutting down");
        self.endpoint.wait_idle().await;
        self.task.abort();
    }
}
