//! The server's network edge: an endpoint serving sessions on a UDP port
//! from a task of the current tokio runtime.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use super::admission::serve;

use super::served::ServeConfig;
use super::{server_endpoint, Tuning};
use crate::net::identity::Identity;

/// An endpoint serving sessions until it is stopped.
pub struct Listener {
    endpoint: quinn::Endpoint,
    task: tokio::task::JoinHandle<()>,
}

impl Listener {
    /// Serves `config` on `listen` as `identity`. Must be called inside a
    /// tokio runtime.
    ///
    /// # Errors
    /// The socket cannot be bound, or the TLS setup fails.
    pub fn start(listen: SocketAddr, identity: &Identity, config: ServeConfig) -> io::Result<Listener> {
        let endpoint = server_endpoint(listen, identity, Tuning::with_congestion(config.congestion))?;
        let task = tokio::spawn(serve(endpoint.clone(), Arc::new(config)));
        Ok(Listener { endpoint, task })
    }

    /// The address it listens on (the real port when `listen` asked for 0).
    ///
    /// # Errors
    /// The socket's address cannot be read.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.endpoint.local_addr()
    }

    /// Waits until the serve loop returns (after its config's shutdown
    /// token fired and every session was recorded), for at most `grace`;
    /// `false` if sessions were still running then.
    pub async fn drain(&mut self, grace: Duration) -> bool {
        tokio::time::timeout(grace, &mut self.task).await.is_ok()
    }

    /// Waits until the serve loop returns (its shutdown token fired).
    #[cfg(feature = "internals")]
    pub async fn finished(&mut self) {
        let _ = (&mut self.task).await;
    }

    /// Closes the endpoint (open sessions end; their receivers keep what
    /// arrived whole) and waits up to `wait` for it to go quiet.
    pub async fn close(self, wait: Option<Duration>) {
        self.endpoint.close(0u32.into(), b"server shutting down");
        match wait {
            Some(wait) => {
                let _ = tokio::time::timeout(wait, self.endpoint.wait_idle()).await;
            }
            None => self.endpoint.wait_idle().await,
        }
        self.task.abort();
    }

    /// Closes the endpoint after a local session: the client is done.
    pub async fn close_done(self) {
        self.endpoint.close(0u32.into(), b"done");
        self.endpoint.wait_idle().await;
        self.task.abort();
    }
}
