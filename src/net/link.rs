//! Link measurements: a connection's wire bytes, the receiving side's
//! request and receive windows, and the sender's view of its link (queue
//! backlog, rate, round trips) behind adaptive compression.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use quinn::{Connection, VarInt};

use super::caps::{Caps, WIRE_OVERHEAD_PERMILLE};
use crate::codec::LinkWindow;
use crate::session::{ChunkReader, Destination, Receiver, Sender, WindowEstimate};

/// What a connection did, for reports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WireBytes {
    /// UDP payload bytes this side sent (QUIC headers and handshakes included).
    pub sent: u64,
    /// UDP payload bytes this side received.
    pub received: u64,
}

/// The wire bytes of `connection` so far.
pub fn wire_bytes(connection: &Connection) -> WireBytes {
    let stats = connection.stats();
    WireBytes { sent: stats.udp_tx.bytes, received: stats.udp_rx.bytes }
}

/// Connection receive window of a receiving session: room for a stream
/// window of control messages the session does not read yet (they must
/// never starve the chunk data it waits for) and for the chunks it asked
/// for ([`Receiver::limits`]), plus frame headers; so a server with many
/// sessions promises each what its link needs, not the configured most.
/// From 36 MiB (the floors) to 60 MiB (the ceilings), under the 64 MiB
/// configured for the handshake.
fn receive_window(limits: crate::session::Limits) -> u64 {
    u64::from(super::STREAM_WINDOW) + limits.bytes + (4 << 20)
}

/// Feeds a receiving session its request window from what its connection
/// delivers ([`WindowEstimate`]), and sizes the connection's receive
/// window to match.
pub(super) struct WindowFeed {
    connection: Connection,
    start: Instant,
    estimate: WindowEstimate,
    /// The least round-trip time as last read: the connection's lock is
    /// taken once an interval, not once a message.
    rtt: Duration,
    /// The receive window last set.
    receive: u64,
}

impl WindowFeed {
    pub(super) fn new(connection: &Connection) -> Self {
        WindowFeed {
            connection: connection.clone(),
            start: Instant::now(),
            estimate: WindowEstimate::new(),
            rtt: Duration::ZERO,
            receive: 0,
        }
    }

    /// Updates `receiver` once an interval has passed (cheap otherwise).
    pub(super) fn tick<D: Destination>(&mut self, receiver: &mut Receiver<D>) {
        let now = self.start.elapsed();
        if !self.estimate.due(now, self.rtt) {
            return;
        }
        self.rtt = self.connection.min_rtt();
        let rtt = self.rtt;
        let received = self.connection.stats().udp_rx.bytes;
        if let Some(window) = self.estimate.update(now, received, rtt) {
            receiver.set_request_window(window);
            tracing::debug!(window, limits = ?receiver.limits(), rtt_ms = rtt.as_secs_f64() * 1e3, "request window");
        }
        let receive = receive_window(receiver.limits());
        if receive != self.receive {
            self.receive = receive;
            self.connection.set_receive_window(VarInt::from_u64(receive).unwrap_or(VarInt::MAX));
        }
    }
}

/// Lets the link's last window, if one has passed, set the zstd level.
pub(super) fn adapt_level<R: ChunkReader>(sender: &mut Sender<R>, link: &mut LinkClock) {
    if let Some(window) = link.window() {
        if let Some(step) = sender.adapt(window) {
            let (backlog_s, rate) = (window.backlog.as_secs_f64(), window.rate);
            let level = sender.encoder().level();
            tracing::debug!(?step, ?level, backlog_s, rate, "compression window");
        }
    }
}

/// How long the sender's data queue (session to data streams) held
/// messages: while it does, the link, not the encoder, is what the
/// transfer waits on.
#[derive(Debug)]
pub(super) struct Backlog(Mutex<BacklogState>);

#[derive(Debug)]
struct BacklogState {
    queued: u64,
    since: Instant,
    busy: Duration,
}

impl Default for Backlog {
    fn default() -> Self {
        Backlog(Mutex::new(BacklogState { queued: 0, since: Instant::now(), busy: Duration::ZERO }))
    }
}

impl Backlog {
    fn state(&self) -> std::sync::MutexGuard<'_, BacklogState> {
        // The state is a few counters, valid whatever a panicking holder did.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A message joined the queue.
    pub(super) fn enter(&self) {
        let mut state = self.state();
        if state.queued == 0 {
            state.since = Instant::now();
        }
        state.queued += 1;
    }

    /// A message left it, written to its stream.
    pub(super) fn leave(&self) {
        let mut state = self.state();
        if state.queued == 1 {
            let held = state.since.elapsed();
            state.busy += held;
        }
        state.queued = state.queued.saturating_sub(1);
    }

    /// The time the queue held messages since the last call.
    fn take(&self) -> Duration {
        let mut state = self.state();
        let mut busy = std::mem::take(&mut state.busy);
        if state.queued > 0 {
            let now = Instant::now();
            busy += now - state.since;
            state.since = now;
        }
        busy
    }
}

/// Cuts the sender's view of its link into [`crate::adapt::WINDOW`]s.
pub(super) struct LinkClock {
    connection: Connection,
    backlog: Arc<Backlog>,
    caps: Caps,
    started: Instant,
    sent: u64,
    /// Least round-trip time seen: the path without queues.
    base_rtt: Duration,
    /// Least smoothed round trip sampled in this window: a queue the link
    /// keeps lasts the whole window, a swing from one loss episode does not.
    window_rtt: Option<Duration>,
    /// DATA_BLOCKED and STREAM_DATA_BLOCKED frames sent so far.
    blocked: u64,
}

/// Frames this side sent saying the peer's flow control held it up.
fn flow_blocked_frames(connection: &Connection) -> u64 {
    let frames = connection.stats().frame_tx;
    frames.data_blocked + frames.stream_data_blocked
}

impl LinkClock {
    pub(super) fn new(connection: &Connection, backlog: Arc<Backlog>, caps: Caps) -> Self {
        let sent = wire_bytes(connection).sent;
        let base_rtt = connection.rtt();
        let blocked = flow_blocked_frames(connection);
        LinkClock {
            connection: connection.clone(),
            backlog,
            caps,
            started: Instant::now(),
            sent,
            base_rtt,
            window_rtt: None,
            blocked,
        }
    }

    /// The last window's figures, once a window has passed; samples the
    /// round trip on every call.
    fn window(&mut self) -> Option<LinkWindow> {
        let rtt = self.connection.rtt();
        let rtt = self.window_rtt.map_or(rtt, |least| least.min(rtt));
        self.window_rtt = Some(rtt);
        let window = self.started.elapsed();
        if window < crate::adapt::WINDOW {
            return None;
        }
        self.window_rtt = None;
        let sent = wire_bytes(&self.connection).sent;
        let mut backlog = self.backlog.take();
        // quinn's least raw sample, when it has one, is the path's floor.
        let floor = Some(self.connection.min_rtt()).filter(|d| !d.is_zero());
        self.base_rtt = self.base_rtt.min(rtt).min(floor.unwrap_or(rtt));
        // A queue held up by the peer's flow control (the receiver not
        // reading) is no sign of a busy link.
        let blocked = flow_blocked_frames(&self.connection);
        let flow_blocked = blocked > self.blocked;
        if flow_blocked {
            backlog = Duration::ZERO;
        }
        self.blocked = blocked;
        let (rtt_ms, base_ms) = (rtt.as_secs_f64() * 1e3, self.base_rtt.as_secs_f64() * 1e3);
        tracing::debug!(rtt_ms, base_ms, flow_blocked, "link window");
        let wire = sent.saturating_sub(self.sent) as f64;
        (self.started, self.sent) = (Instant::now(), sent);
        // What the link drained while it had something to drain, as payload:
        // over the backlog when the queue held chunks most of the window,
        // else over the whole window (a queue in the network is drained all
        // along); a cap is the most it can be.
        let backed_up = backlog.as_secs_f64() >= crate::adapt::LINK_BOUND_BACKLOG * window.as_secs_f64();
        let busy = if backed_up { backlog } else { window };
        let mut rate = wire * 1000.0 / WIRE_OVERHEAD_PERMILLE as f64 / busy.as_secs_f64().max(1e-3);
        if let Some(cap) = self.caps.rate() {
            rate = rate.min(cap as f64 * 1000.0 / WIRE_OVERHEAD_PERMILLE as f64);
        }
        Some(LinkWindow { window, backlog, rate, base_rtt: self.base_rtt, rtt })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::{Limits, MAX_OUTSTANDING_BYTES};

    #[test]
    fn receive_window_stays_within_the_configured_window() {
        let ceiling = Limits::for_window(u64::MAX, 1, 1, u64::MAX);
        assert_eq!(ceiling.bytes, MAX_OUTSTANDING_BYTES);
        let (low, high) = (receive_window(Limits::FLOOR), receive_window(ceiling));
        assert!(low < high, "{low} < {high}");
        assert!(high <= u64::from(super::super::CONNECTION_WINDOW), "{high}");
        // Room for a stream window of unread control messages and every
        // chunk asked for: the data never starves behind the control.
        assert!(low >= u64::from(super::super::STREAM_WINDOW) + Limits::FLOOR.bytes);
    }
}
