//! A receiver to embed: serves a directory on a UDP port from inside an
//! app's own tokio runtime.

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use super::access::Access;
use super::driver::{serve, ServeConfig};
use super::{server_endpoint, Congestion, Tuning};
use crate::net::identity::{Fingerprint, Identity};

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
        Server::start_with(listen, root, access, identity, Congestion::default())
    }

    /// As [`Server::start`], with `congestion` pacing what the server sends
    /// (the data of pulls).
    ///
    /// # Errors
    /// As [`Server::start`].
    pub fn start_with(
        listen: SocketAddr,
        root: PathBuf,
        access: Access,
        identity: &Identity,
        congestion: Congestion,
    ) -> io::Result<Server> {
        let endpoint = server_endpoint(listen, identity, Tuning::with_congestion(congestion))?;
        let config = Arc::new(ServeConfig { congestion, ..ServeConfig::new(root, access) });
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
