//! Stream pumps: frames read from QUIC streams into bounded channels for
//! the session thread, under byte budgets, and written from its queues to
//! the control stream and the data streams; and why a connection ended.

use std::io;
use std::sync::Arc;

use quinn::{Connection, RecvStream, SendStream};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use xfer_protocol::{frame, CloseCode, Kind, Message};

use super::caps::{Caps, CAP_PIECE};
use super::link::Backlog;
use super::watch::Activity;
use crate::session::SessionError;

/// Streams that carry chunk data; the session says which one each data
/// message takes.
pub use crate::session::DATA_STREAMS;

/// Messages buffered between the network tasks and the session thread.
/// Not a limit on data in flight (QUIC's stream buffers hold that), so
/// it does not bind on a long link.
pub(super) const CHANNEL_DEPTH: usize = 64;

fn io_err(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

/// What a stream reader hands the session: a message, or why the bytes on
/// the stream are not one (the session closes with that error's code),
/// with the share of the streams' byte budget it holds until taken, and
/// the data stream it came on.
pub(super) struct Inbound {
    pub(super) frame: Result<Message, SessionError>,
    pub(super) _held: Option<OwnedSemaphorePermit>,
    /// The data stream's id (QUIC's stream index); `None` on the control
    /// stream.
    pub(super) stream: Option<u64>,
}

impl Inbound {
    /// Why the session cannot go on, as if a stream had said it.
    pub(super) fn failed(error: SessionError) -> Self {
        Inbound { frame: Err(error), _held: None, stream: None }
    }
}

/// Bytes of decoded control messages waiting for the session: a count of
/// messages alone would let 64 of 4 MiB each wait while the session
/// applies earlier changes. Entry changes are small and read ahead of the
/// files in flight, so this does not bind on a long link either.
pub(super) const CONTROL_BUDGET: u32 = 16 << 20;

/// Bytes of decoded data messages waiting for the session: above the most
/// a receiver asks for at once ([`crate::session::MAX_OUTSTANDING_BYTES`],
/// plus frame headers), so an honest sender never waits on it.
pub(super) const DATA_BUDGET: u32 = (crate::session::MAX_OUTSTANDING_BYTES + (4 << 20)) as u32;

/// Bytes that the messages read from some streams may hold while they wait
/// for the session, shared by those streams.
#[derive(Clone, Debug)]
struct Budget {
    bytes: Arc<Semaphore>,
    max: u32,
}

impl Budget {
    fn new(max: u32) -> Self {
        Budget { bytes: Arc::new(Semaphore::new(max as usize)), max }
    }

    /// Waits until `len` bytes fit (a frame larger than the whole budget
    /// takes all of it).
    async fn hold(&self, len: usize) -> Option<OwnedSemaphorePermit> {
        let len = u32::try_from(len).unwrap_or(u32::MAX).min(self.max);
        self.bytes.clone().acquire_many_owned(len).await.ok()
    }
}

/// The close code and reason for bytes that are not a frame.
fn bad_frame(e: &xfer_protocol::DecodeError) -> SessionError {
    SessionError::Peer { code: Some(e.close_code()), message: format!("bad frame: {e}") }
}

/// How a stream reader hands its frames on: the channel to the session,
/// the byte budget the waiting ones share, and when bytes last moved.
#[derive(Clone)]
pub(super) struct Reading {
    tx: mpsc::Sender<Inbound>,
    budget: Budget,
    activity: Activity,
    /// The data stream read, if it is one.
    stream: Option<u64>,
}

impl Reading {
    pub(super) fn new(tx: mpsc::Sender<Inbound>, budget: u32, activity: &Activity) -> Self {
        Reading { tx, budget: Budget::new(budget), activity: activity.clone(), stream: None }
    }

    /// The same, for the data stream `stream`, sharing the budget.
    fn on_stream(&self, stream: u64) -> Self {
        Reading { stream: Some(stream), ..self.clone() }
    }

    /// Hands `frame` to the session once the budget allows `len` bytes;
    /// `false` when the session is gone.
    async fn hand_on(&self, frame: Result<Message, SessionError>, len: usize) -> bool {
        let Some(held) = self.budget.hold(len).await else { return false };
        self.tx.send(Inbound { frame, _held: Some(held), stream: self.stream }).await.is_ok()
    }
}

/// Reads frames from `recv` into `to` until the stream ends, reading no
/// faster than `caps` allow (QUIC flow control then slows the sender). A
/// malformed frame is handed on as an error, and reading stops.
pub(super) async fn read_frames(mut recv: RecvStream, to: Reading, caps: Caps) -> io::Result<()> {
    let mut buf: Vec<u8> = Vec::new();
    loop {
        loop {
            match frame::decode(&buf) {
                Ok(Some((message, used))) => {
                    buf.drain(..used);
                    if !to.hand_on(Ok(message), used).await {
                        return Ok(());
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    to.hand_on(Err(bad_frame(&e)), 0).await;
                    return Err(io_err(e));
                }
            }
        }
        match recv.read_chunk(CAP_PIECE, true).await.map_err(io_err)? {
            Some(chunk) => {
                to.activity.touch();
                caps.take(chunk.bytes.len()).await;
                buf.extend_from_slice(&chunk.bytes);
            }
            None if buf.is_empty() => return Ok(()),
            None => {
                to.hand_on(Err(SessionError::Protocol("a stream ended inside a frame".into())), 0).await;
                return Err(io_err("stream ended inside a frame"));
            }
        }
    }
}

/// Writes frames from `rx` to `send` as fast as `caps` allow, then
/// finishes the stream. Each message written leaves `backlog`, if given.
pub(super) async fn write_frames(
    mut send: SendStream,
    mut rx: mpsc::Receiver<Message>,
    caps: Caps,
    activity: Activity,
    backlog: Option<Arc<Backlog>>,
) -> io::Result<()> {
    let mut bytes = Vec::new();
    while let Some(message) = rx.recv().await {
        bytes.clear();
        frame::encode(&message, &mut bytes);
        for piece in bytes.chunks(CAP_PIECE) {
            caps.take(piece.len()).await;
            send.write_all(piece).await.map_err(io_err)?;
            crate::crashpoint::hit("wire.piece");
            activity.touch();
        }
        if let Some(backlog) = &backlog {
            backlog.leave();
        }
    }
    send.finish().map_err(io_err)?;
    let _ = send.stopped().await;
    Ok(())
}

/// Writes data frames to the data streams the session chose for them
/// (each stream's frames in the order given: a zstd stream chunk follows
/// the ones it was compressed after).
pub(super) async fn write_data(
    streams: Vec<SendStream>,
    mut rx: mpsc::Receiver<(usize, Message)>,
    caps: Caps,
    activity: Activity,
    backlog: Arc<Backlog>,
) -> io::Result<()> {
    let mut senders = Vec::new();
    let mut tasks = Vec::new();
    for stream in streams {
        let (tx, stream_rx) = mpsc::channel(CHANNEL_DEPTH);
        senders.push(tx);
        let backlog = Some(backlog.clone());
        tasks.push(tokio::spawn(write_frames(stream, stream_rx, caps.clone(), activity.clone(), backlog)));
    }
    while let Some((stream, message)) = rx.recv().await {
        if senders[stream % senders.len()].send(message).await.is_err() {
            break;
        }
    }
    drop(senders);
    for task in tasks {
        task.await.map_err(io_err)??;
    }
    Ok(())
}

/// The client's control stream: its sending half, a channel of the frames
/// read from it, and the task reading them.
pub(super) async fn open_control(
    connection: &Connection,
    activity: &Activity,
) -> Result<(SendStream, mpsc::Receiver<Inbound>, tokio::task::JoinHandle<io::Result<()>>), SessionError> {
    // A server that refuses at once (busy, unknown client) may close the
    // connection before the stream opens: report its reason, not the failure.
    let (send, recv) = connection.open_bi().await.map_err(|_| ended(connection))?;
    let (in_tx, in_rx) = mpsc::channel(CHANNEL_DEPTH);
    let reading = Reading::new(in_tx, CONTROL_BUDGET, activity);
    Ok((send, in_rx, tokio::spawn(read_frames(recv, reading, Caps::default()))))
}

/// The next message of a stream, or why there is none. Its bytes leave the
/// stream's budget: the session accounts for what it keeps.
pub(super) fn inbound(received: Option<Inbound>, connection: &Connection) -> Result<Message, SessionError> {
    received.ok_or_else(|| ended(connection))?.frame
}

/// Which stream a message came on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Lane {
    Control,
    Data,
}

/// Refuses a message on the wrong kind of stream (SPEC.md section 3): data
/// streams carry only the sender's answers to `NeedChunk`, and chunk data
/// never travels on the control stream.
pub(super) fn check_lane(message: &Message, lane: Lane) -> Result<(), SessionError> {
    let kind = message.kind();
    let answer = matches!(kind, Kind::ChunkData | Kind::RefineRequest | Kind::FileFailed);
    match lane {
        Lane::Data if !answer => Err(SessionError::Protocol(format!("{kind:?} on a data stream"))),
        Lane::Control if kind == Kind::ChunkData => {
            Err(SessionError::Protocol("ChunkData on the control stream".into()))
        }
        _ => Ok(()),
    }
}

/// Reads every data stream the peer opens on `connection` into `reading`.
pub(super) async fn read_data_streams(connection: Connection, reading: Reading, caps: Caps) {
    while let Ok(stream) = connection.accept_uni().await {
        let id = stream.id().index();
        tokio::spawn(read_frames(stream, reading.on_stream(id), caps.clone()));
    }
}

/// An outgoing queue that never blocks the session thread: a message (or,
/// for the data streams, a message and its stream) that does not fit waits
/// here until [`Outgoing::room`] says there is space.
pub(super) struct Outgoing<T = Message> {
    tx: mpsc::Sender<T>,
    held: Option<T>,
    /// To tell why, when the channel's writer is gone.
    connection: Connection,
}

impl<T> Outgoing<T> {
    pub(super) fn new(tx: mpsc::Sender<T>, connection: Connection) -> Self {
        Outgoing { tx, held: None, connection }
    }

    /// Moves messages from `next` into the channel while it has room.
    pub(super) fn fill(&mut self, mut next: impl FnMut() -> Option<T>) -> Result<(), SessionError> {
        self.try_fill(|| Ok(next()))
    }

    /// [`Outgoing::fill`] from a source that can fail.
    pub(super) fn try_fill(
        &mut self,
        mut next: impl FnMut() -> Result<Option<T>, SessionError>,
    ) -> Result<(), SessionError> {
        loop {
            let held = self.held.take();
            let Some(message) = (if held.is_some() { held } else { next()? }) else { return Ok(()) };
            match self.tx.try_send(message) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(message)) => {
                    self.held = Some(message);
                    return Ok(());
                }
                Err(mpsc::error::TrySendError::Closed(_)) => return Err(ended(&self.connection)),
            }
        }
    }

    pub(super) fn is_idle(&self) -> bool {
        self.held.is_none()
    }

    /// Resolves once a held message fits (never, if none is held).
    pub(super) async fn room(&self) {
        if self.held.is_none() {
            return std::future::pending().await;
        }
        // Capacity seen now may be taken by nobody else: this side is the
        // only sender on the channel.
        match self.tx.reserve().await {
            Ok(permit) => drop(permit),
            Err(_) => std::future::pending().await,
        }
    }
}

/// `error`, or when it is a close without the peer's reason, the reason
/// once it arrives: a peer that fails drops its streams a moment before its
/// close frame says why, and "no space left on device" beats "the
/// connection closed".
pub(crate) async fn with_peer_reason(connection: &Connection, error: SessionError) -> SessionError {
    if !matches!(error, SessionError::Peer { code: None, .. }) {
        return error;
    }
    match tokio::time::timeout(PEER_REASON_WAIT, connection.closed()).await {
        Ok(_) => ended(connection),
        Err(_) => error,
    }
}

/// How long a session that lost its streams waits for the peer's close
/// frame (one round trip, as a rule).
const PEER_REASON_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Why the session could not go on: the connection's close, with the
/// peer's code and reason when it gave them.
pub(super) fn ended(connection: &Connection) -> SessionError {
    match connection.close_reason() {
        Some(quinn::ConnectionError::ApplicationClosed(close)) => {
            let code = u32::try_from(close.error_code.into_inner()).ok().and_then(CloseCode::from_u32);
            SessionError::Peer { code, message: String::from_utf8_lossy(&close.reason).into_owned() }
        }
        Some(reason) => SessionError::Peer { code: None, message: format!("the connection failed: {reason}") },
        None => SessionError::Peer { code: None, message: "the connection closed before the session ended".into() },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::MAX_OUTSTANDING_BYTES;

    #[test]
    fn data_budget_holds_every_chunk_asked_for() {
        assert!(u64::from(DATA_BUDGET) > MAX_OUTSTANDING_BYTES);
    }
}
