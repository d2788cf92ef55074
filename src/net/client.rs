//! The client's network edge: a pinned connection to a server, a session
//! run over it until it ends or is cancelled, and a short linger on close.
//! What is pushed or pulled, and why, is the use cases' business
//! (the use-case layer above).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use quinn::VarInt;
use thiserror::Error;
use tokio_util::sync::CancellationToken;
use xfer_protocol::CloseCode;

use super::admission::close_reason;

use super::caps::Caps;

use super::driver::{run_pull, run_sender};

use super::link::{wire_bytes, WireBytes};
use super::{client_config_counting, client_endpoint, Congestion, ServerPin, Tuning};
use crate::net::identity::{Fingerprint, Identity};
use crate::fs::store::MirrorReceiver;
use crate::session::{ChunkReader, Sender, SessionError};

/// Why a connection to a server could not be made.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// The server's key is not the pinned one (or none is pinned).
    #[error("{}", untrusted_message(.authority, .seen, .pinned))]
    Untrusted {
        /// The server.
        authority: String,
        /// What it presented.
        seen: Fingerprint,
        /// The key pinned for it: `None` for an unknown server, else the
        /// server's key has changed.
        pinned: Option<Fingerprint>,
    },
    /// Name resolution or connection setup failed.
    #[error("cannot reach {authority}: {reason}")]
    Unreachable {
        /// The server.
        authority: String,
        /// What failed.
        reason: String,
    },
    /// The server refused the connection before its handshake (too many
    /// at once): a busy answer, which callers retry.
    #[error(transparent)]
    Refused(SessionError),
    /// A local socket or TLS setup failed.
    #[error(transparent)]
    Local(#[from] crate::Error),
}

/// What a client says of a server whose key it does not trust: calm for
/// a server it has never pinned, loud for a key that changed (ssh's
/// distinction). Says nothing of how to pin: that is the caller's to say.
pub(crate) fn untrusted_message(authority: &str, seen: &Fingerprint, pinned: &Option<Fingerprint>) -> String {
    match pinned {
        None => format!("{authority} presents {seen}, and no key is pinned for it (a server not met before); nothing was sent"),
        Some(pinned) => format!(
            "WARNING: {authority} presents {seen}, NOT the key pinned for it ({pinned}). Someone may be \
             posing as the server (an attack on this connection), or the server's key was replaced; nothing \
             was sent"
        ),
    }
}

/// How a session run over a [`Link`] ended without failing.
pub enum Ran<T> {
    /// The session finished.
    Done(T),
    /// The caller cancelled it; the session wound down first.
    Cancelled,
}

/// A connection to a server that presented the pinned key.
pub struct Link {
    endpoint: quinn::Endpoint,
    connection: quinn::Connection,
    /// Bytes the server has acknowledged so far.
    acked: Arc<AtomicU64>,
    /// The key the server presented (the pin, once verified).
    pub server: Fingerprint,
}

impl Link {
    /// Connects to `authority`, whose server must present `pin`, within
    /// `timeout` (name resolution and handshake together).
    ///
    /// # Errors
    /// [`ConnectError`]; [`ConnectError::Unreachable`] when no answer came
    /// within `timeout`.
    pub async fn connect(
        authority: &str,
        identity: &Identity,
        pin: Option<Fingerprint>,
        congestion: Congestion,
        timeout: Duration,
    ) -> Result<Link, ConnectError> {
        // A closed UDP port does not answer at all (no ICMP reaches an
        // unconnected socket): without a deadline the handshake would wait
        // for quinn's idle timeout.
        match tokio::time::timeout(timeout, Link::connect_now(authority, identity, pin, congestion)).await {
            Ok(connected) => connected,
            Err(_) => Err(ConnectError::Unreachable {
                authority: authority.into(),
                reason: format!(
                    "no answer within {} s; check the host and port, that `xfer serve` runs there, and that \
                     no firewall drops UDP to that port (or give it longer with --connect-timeout SECS)",
                    timeout.as_secs_f64()
                ),
            }),
        }
    }

    async fn connect_now(
        authority: &str,
        identity: &Identity,
        pin: Option<Fingerprint>,
        congestion: Congestion,
    ) -> Result<Link, ConnectError> {
        let addr = resolve(authority).await?;
        let server_pin = ServerPin::new(pin);
        let bind: SocketAddr =
            if addr.is_ipv6() { "[::]:0" } else { "0.0.0.0:0" }.parse().expect("invariant: literal");
        let tuning = Tuning::with_congestion(congestion);
        let endpoint = client_endpoint(bind, tuning).map_err(|e| crate::Error::io("udp socket", e))?;
        let acked = Arc::new(AtomicU64::new(0));
        let config = client_config_counting(identity, &server_pin, tuning, Some(Arc::clone(&acked)))
            .map_err(|e| crate::Error::io("tls", e))?;
        let unreachable = |reason: String| ConnectError::Unreachable { authority: authority.into(), reason };
        let connecting = endpoint.connect_with(config, addr, "xfer").map_err(|e| unreachable(e.to_string()))?;
        match connecting.await {
            Ok(connection) => {
                let server = server_pin.seen().unwrap_or(Fingerprint([0; 32]));
                tracing::info!(%addr, %server, %congestion, rtt_ms = connection.rtt().as_millis() as u64, "connected");
                Ok(Link { endpoint, connection, acked, server })
            }
            // Refused before the handshake: the server has too many under way.
            Err(quinn::ConnectionError::ConnectionClosed(close))
                if close.error_code == quinn::TransportErrorCode::CONNECTION_REFUSED =>
            {
                Err(ConnectError::Refused(SessionError::Peer {
                    code: Some(CloseCode::Busy),
                    message: format!("{authority} refused the connection: too many at once; try again in a moment"),
                }))
            }
            Err(e) => Err(match server_pin.seen() {
                Some(seen) if Some(seen) != pin => {
                    ConnectError::Untrusted { authority: authority.into(), seen, pinned: pin }
                }
                _ => unreachable(e.to_string()),
            }),
        }
    }

    /// Runs `sender` (a push) until it ends or `cancel` fires.
    ///
    /// # Errors
    /// The session's error, with the peer's reason when it closed.
    pub async fn push<R: ChunkReader + Send + 'static>(
        &self,
        sender: Sender<R>,
        caps: Caps,
        cancel: &CancellationToken,
    ) -> Result<Ran<Sender<R>>, SessionError> {
        self.cancellable(cancel, run_sender(&self.connection, sender, caps)).await
    }

    /// Runs `receiver` (a pull) until it ends or `cancel` fires.
    ///
    /// # Errors
    /// As [`Link::push`].
    pub async fn pull(
        &self,
        receiver: MirrorReceiver,
        caps: Caps,
        cancel: &CancellationToken,
    ) -> Result<Ran<MirrorReceiver>, SessionError> {
        self.cancellable(cancel, run_pull(&self.connection, receiver, caps)).await
    }

    /// Sends a history request (list, forget, prune) and reads the answer.
    ///
    /// # Errors
    /// The server's refusal, with its reason, or a broken answer.
    pub async fn history(&self, open: xfer_protocol::msg::Open) -> Result<super::manage::Answer, SessionError> {
        match super::manage::request(&self.connection, open).await {
            Ok(answer) => Ok(answer),
            Err(e) => Err(super::frames::with_peer_reason(&self.connection, e).await),
        }
    }

    /// The bytes the server has acknowledged so far (the handshake's too).
    pub fn acked(&self) -> u64 {
        self.acked.load(Ordering::Relaxed)
    }

    /// The wire bytes of the connection so far.
    pub fn wire(&self) -> WireBytes {
        wire_bytes(&self.connection)
    }

    /// Closes the connection, telling the server how many entries this
    /// side skipped, and lingers a moment (see [`linger`]).
    pub async fn close(self, skipped_here: usize) {
        self.connection.close(0u32.into(), close_reason(skipped_here).as_bytes());
        linger(&self.endpoint, &self.connection).await;
    }

    /// Runs `session` until it ends or `cancel` fires; then closes the
    /// connection and waits for the session to wind down (the receiver, on
    /// either side, salvages what it has whole).
    async fn cancellable<T>(
        &self,
        cancel: &CancellationToken,
        session: impl std::future::Future<Output = Result<T, SessionError>>,
    ) -> Result<Ran<T>, SessionError> {
        tokio::pin!(session);
        tokio::select! {
            result = &mut session => match result {
                Ok(value) => Ok(Ran::Done(value)),
                Err(e) => Err(super::frames::with_peer_reason(&self.connection, e).await),
            },
            () = cancel.cancelled() => {
                self.connection.close(VarInt::from_u32(CloseCode::Cancelled as u32), b"cancelled by the client");
                let _ = session.await;
                Ok(Ran::Cancelled)
            }
        }
    }
}

async fn resolve(authority: &str) -> Result<SocketAddr, ConnectError> {
    let unreachable = |reason: String| ConnectError::Unreachable { authority: authority.into(), reason };
    let mut addrs = tokio::net::lookup_host(authority).await.map_err(|e| unreachable(e.to_string()))?;
    addrs.next().ok_or_else(|| unreachable("no address".into()))
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
