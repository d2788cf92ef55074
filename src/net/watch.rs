//! How long a session waits on its peer: when stream bytes last moved,
//! the server's idle timeout, and its shutdown.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use xfer_protocol::CloseCode;

use crate::session::SessionError;

/// When stream bytes last moved on a connection, either way: what tells a
/// stalled peer from a slow one (at a low cap a 4 MiB chunk takes minutes
/// to become a message, yet its bytes keep arriving).
#[derive(Clone, Debug)]
pub(super) struct Activity {
    start: Instant,
    last_ms: Arc<AtomicU64>,
}

impl Activity {
    pub(super) fn new() -> Self {
        Activity { start: Instant::now(), last_ms: Arc::default() }
    }

    pub(super) fn touch(&self) {
        let now = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(now, Ordering::Relaxed);
    }

    fn last(&self) -> Instant {
        self.start + Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }
}

/// How long a session may wait on its peer: the server's idle timeout, or
/// no limit (the client, whose user decides how long to wait).
#[derive(Clone, Debug)]
pub(super) struct Watch {
    pub(super) activity: Activity,
    pub(super) idle: Option<Duration>,
    /// The server shutting down (never, on a client: its user cancels
    /// through the connection instead).
    pub(super) stop: CancellationToken,
}

impl Watch {
    pub(super) fn unlimited() -> Self {
        Watch { activity: Activity::new(), idle: None, stop: CancellationToken::new() }
    }

    /// Resolves with the reason once the server shuts down.
    pub(super) async fn stopped(&self) -> SessionError {
        self.stop.cancelled().await;
        shutting_down()
    }

    /// Resolves with a `Timeout` error once no stream byte has moved for
    /// the idle timeout since this wait began: time this side spends on
    /// its own work (a commit's sync) never counts against the peer.
    pub(super) async fn stalled(&self) -> SessionError {
        let Some(idle) = self.idle else { return std::future::pending().await };
        let mut from = Instant::now();
        loop {
            tokio::time::sleep_until((from + idle).into()).await;
            let last = self.activity.last();
            if last <= from {
                return timed_out(idle);
            }
            from = last;
        }
    }
}

/// Why a session ends when its server stops (SIGTERM, Ctrl-C): the files
/// received whole were committed first.
pub(super) fn shutting_down() -> SessionError {
    SessionError::Peer {
        code: Some(CloseCode::Cancelled),
        message: "the server is shutting down; the files it received whole were kept, \
                  and the next run goes on from there"
            .into(),
    }
}

pub(super) fn timed_out(idle: Duration) -> SessionError {
    SessionError::Peer {
        code: Some(CloseCode::Timeout),
        message: format!("the peer sent nothing for {:.1} s; closing the session", idle.as_secs_f64()),
    }
}
