//! Runs push sessions over a QUIC connection: the control messages on one
//! bidirectional stream, chunk data on a few unidirectional ones, the
//! session itself on a blocking thread (it reads and writes files), and
//! bounded channels between them.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use quinn::{Connection, RecvStream, SendStream, VarInt};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use xfer_protocol::{frame, CloseCode, Kind, Message};

use super::access::{Access, Refusal, Want};
use super::peer_fingerprint;
use crate::codec::LinkWindow;
use crate::fs::store::{MetaPolicy, MirrorReceiver as Receiver, MirrorStore, Receiving};
use crate::manifest::RelPath;
use crate::net::audit::{AuditLog, AuditRecord};
use crate::net::identity::Fingerprint;
use crate::session::{ChunkReader, FileReader, OpenRequest, Sender, SenderConfig, SessionError, WindowEstimate};
use crate::throttle::{acquire_all, Limiter, Rate};

/// Streams that carry chunk data, so one lost packet stalls only a share.
///
/// `scripts/bench/sweep.sh` with 1, 2, 4 and 8 (run 20261127-090232, the
/// median of two rounds) found no difference beyond noise: a 268 MB
/// incompressible push at 100 Mbit/s took 24.19, 24.13, 24.25 and 24.14 s,
/// and uncapped 1.98, 1.90, 1.92 and 1.86 s. That link loses packets only
/// at tbf's queue; with random loss, which the bench machine cannot make,
/// one stream would stall all chunk data behind each lost packet, so a few
/// streams are kept at no measured cost.
pub const DATA_STREAMS: usize = 4;

/// Messages buffered between the network tasks and the session thread.
/// Not a limit on data in flight (QUIC's stream buffers hold that), so
/// it does not bind on a long link.
const CHANNEL_DEPTH: usize = 64;

/// Name of the server's state directory inside its root; clients can never
/// push to it.
pub const SERVER_STATE_DIR: &str = ".xfer";

/// Sessions a server runs at once unless configured otherwise
/// ([`ServeConfig::max_sessions`]).
pub const DEFAULT_MAX_SESSIONS: usize = 64;

/// Handshakes under way at once; past this a new connection is refused
/// before any key operation (clients retry), so a flood of handshakes costs
/// little and half-finished ones never hold up sessions.
pub const MAX_HANDSHAKES: usize = 64;

/// Longest a handshake may take (or the idle timeout, if shorter): a client
/// that starts one and vanishes holds its slot no longer.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// What the server serves and to whom.
#[derive(Clone, Debug)]
pub struct ServeConfig {
    /// The directory whose subdirectories clients push into.
    pub root: PathBuf,
    /// Who may read and write where.
    pub access: Access,
    /// Where the state of each served tree is kept.
    pub state: ServerState,
    /// Cap on each session's data direction (`serve --bwlimit`).
    pub per_session: Rate,
    /// Cap on all sessions together (`serve --bwlimit-total`).
    pub total: Limiter,
    /// Where each session leaves its record (`serve --audit-log`).
    pub audit: Option<Arc<AuditLog>>,
    /// Sessions served at once; a connection over the limit is closed with
    /// `Busy` and a reason (clients retry).
    pub max_sessions: usize,
    /// A session whose client moves no stream bytes for this long, while
    /// the server waits on it, is closed with `Timeout`. QUIC's idle
    /// timeout alone does not do it: the client's stack answers keep-alives
    /// even when the client itself has stalled.
    pub idle_timeout: Duration,
    /// Cancelling it shuts the server down: no new session is accepted,
    /// each running one stops at its next commit point and is closed with
    /// the reason, its record is written, and then [`serve`] returns.
    pub shutdown: CancellationToken,
    /// What of a pushed entry's metadata is applied: a remote client's
    /// setuid bits, owners, ACLs and privileged xattrs never reach the
    /// disk ([`MetaPolicy::Confined`], the default) and are kept in the
    /// tree's records, to be given back on pull. The embedded server of a
    /// local push, whose client is the user at hand, applies them all.
    pub metadata: MetaPolicy,
    /// Where an in-process caller gets the entries each push session could
    /// not write, by path: the embedded server of a local push, whose user
    /// sees no server log (the wire carries only their count).
    pub failures: Option<tokio::sync::mpsc::UnboundedSender<Vec<crate::fs::store::FailedEntry>>>,
    /// The congestion controller of the server's endpoint, for the audit
    /// log (the endpoint's [`super::Tuning`] sets it).
    pub congestion: super::Congestion,
}

impl ServeConfig {
    /// Serves `root` as `access` allows, keeping state in `ROOT/.xfer`.
    pub fn new(root: PathBuf, access: Access) -> Self {
        ServeConfig {
            root,
            access,
            state: ServerState::InRoot,
            per_session: Rate(None),
            total: Limiter::unlimited(),
            audit: None,
            max_sessions: DEFAULT_MAX_SESSIONS,
            idle_timeout: super::IDLE_TIMEOUT,
            shutdown: CancellationToken::new(),
            metadata: MetaPolicy::Confined,
            failures: None,
            congestion: super::Congestion::default(),
        }
    }

    /// The caps of a new session: its own, and the server's total.
    fn caps(&self) -> Caps {
        Caps(vec![Limiter::new(self.per_session), self.total.clone()])
    }

    /// The state database of the tree at `path`, and whether the root's
    /// first component [`SERVER_STATE_DIR`] is reserved for it.
    fn state_file(&self, path: &RelPath) -> (PathBuf, bool) {
        let key = blake3::hash(path.as_bytes()).to_hex();
        match &self.state {
            ServerState::InRoot => {
                (self.root.join(SERVER_STATE_DIR).join("trees").join(format!("{}.redb", &key[..32])), true)
            }
            ServerState::Outside(dir) => (dir.join(format!("{}.redb", &key[..32])), false),
        }
    }

    /// Refuses `path` when it lies in the server's own state.
    fn check_reserved(&self, path: &RelPath) -> Result<(), SessionError> {
        let first = path.as_bytes().split(|&b| b == b'/').next();
        if self.state == ServerState::InRoot && first == Some(SERVER_STATE_DIR.as_bytes()) {
            return Err(SessionError::Peer {
                code: Some(CloseCode::OutsideAllowedPath),
                message: format!("/{SERVER_STATE_DIR} is the server's own state; use another path"),
            });
        }
        Ok(())
    }
}

/// Where a server keeps the state (chunk index, file records) of the trees
/// it serves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServerState {
    /// In `ROOT/.xfer`, which clients can then never read or write: a
    /// server's state travels with its root.
    InRoot,
    /// In this directory outside the root, which is then served whole: the
    /// embedded server of a local push, whose destination is the user's own
    /// directory.
    Outside(PathBuf),
}

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

fn io_err(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

/// Bandwidth caps on a session's data direction: every limiter is charged
/// for every byte (a per-session cap and a server-wide total, say).
#[derive(Clone, Debug, Default)]
pub struct Caps(pub Vec<Limiter>);

/// Bytes charged at a time: small enough that a cap stays smooth at
/// low rates, large enough to cost nothing at high ones.
const CAP_PIECE: usize = 16 * 1024;

/// Wire bytes per payload byte, in 1/1000: QUIC, UDP and IP headers and
/// the peer's ACKs add about 3.5% (a 2 MiB/s cap measured 2.165 MB/s on
/// the loopback counters when only payload was charged).
const WIRE_OVERHEAD_PERMILLE: usize = 1035;

impl Caps {
    /// The tightest cap's rate in bytes per second, if any is set.
    fn rate(&self) -> Option<u64> {
        self.0.iter().filter_map(|limiter| limiter.rate().bytes_per_sec()).min()
    }

    /// Waits until every cap allows `bytes` of payload, charged as the wire
    /// bytes they become: a cap is a promise about the link, not the payload.
    async fn take(&self, bytes: usize) {
        self.take_wire((bytes * WIRE_OVERHEAD_PERMILLE / 1000) as u64).await;
    }

    /// Charges `bytes` that are wire bytes already (no overhead added).
    async fn take_wire(&self, bytes: u64) {
        if !self.0.is_empty() {
            let limiters: Vec<&Limiter> = self.0.iter().collect();
            acquire_all(&limiters, bytes).await;
        }
    }
}

/// How often the bytes of lost packets are charged to the caps: often
/// enough that the writers feel the debt within a few of their pieces.
const RESENT_CHARGE_INTERVAL: Duration = Duration::from_millis(20);

/// Charges `caps` for what `connection` sends again. quinn resends the data
/// of a lost packet on its own, past the writers' pacing, yet the second
/// copy is on the wire as much as the first: uncharged, 15% loss put a
/// 1 MiB/s cap 15% over on the wire. The writers then wait that much
/// longer, so the wire keeps to the cap.
async fn charge_resent(connection: Connection, caps: Caps) {
    let mut charged = connection.stats().path.lost_bytes;
    loop {
        tokio::time::sleep(RESENT_CHARGE_INTERVAL).await;
        let lost = connection.stats().path.lost_bytes;
        if lost > charged {
            caps.take_wire(lost - charged).await;
            charged = lost;
        }
    }
}

/// What a stream reader hands the session: a message, or why the bytes on
/// the stream are not one (the session closes with that error's code),
/// with the share of the streams' byte budget it holds until taken.
struct Inbound {
    frame: Result<Message, SessionError>,
    _held: Option<OwnedSemaphorePermit>,
}

/// Bytes of decoded control messages waiting for the session: a count of
/// messages alone would let 64 of 4 MiB each wait while the session
/// applies earlier changes. Entry changes are small and read ahead of the
/// files in flight, so this does not bind on a long link either.
const CONTROL_BUDGET: u32 = 16 << 20;

/// Bytes of decoded data messages waiting for the session: above the most
/// a receiver asks for at once ([`crate::session::MAX_OUTSTANDING_BYTES`],
/// plus frame headers), so an honest sender never waits on it.
const DATA_BUDGET: u32 = (crate::session::MAX_OUTSTANDING_BYTES + (4 << 20)) as u32;

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
struct WindowFeed {
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
    fn new(connection: &Connection) -> Self {
        WindowFeed {
            connection: connection.clone(),
            start: Instant::now(),
            estimate: WindowEstimate::new(),
            rtt: Duration::ZERO,
            receive: 0,
        }
    }

    /// Updates `receiver` once an interval has passed (cheap otherwise).
    fn tick(&mut self, receiver: &mut Receiver) {
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

/// When stream bytes last moved on a connection, either way: what tells a
/// stalled peer from a slow one (at a low cap a 4 MiB chunk takes minutes
/// to become a message, yet its bytes keep arriving).
#[derive(Clone, Debug)]
struct Activity {
    start: Instant,
    last_ms: Arc<AtomicU64>,
}

impl Activity {
    fn new() -> Self {
        Activity { start: Instant::now(), last_ms: Arc::default() }
    }

    fn touch(&self) {
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
struct Watch {
    activity: Activity,
    idle: Option<Duration>,
    /// The server shutting down (never, on a client: its user cancels
    /// through the connection instead).
    stop: CancellationToken,
}

impl Watch {
    fn unlimited() -> Self {
        Watch { activity: Activity::new(), idle: None, stop: CancellationToken::new() }
    }

    /// Resolves with the reason once the server shuts down.
    async fn stopped(&self) -> SessionError {
        self.stop.cancelled().await;
        shutting_down()
    }

    /// Resolves with a `Timeout` error once no stream byte has moved for
    /// the idle timeout since this wait began: time this side spends on
    /// its own work (a commit's sync) never counts against the peer.
    async fn stalled(&self) -> SessionError {
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
fn shutting_down() -> SessionError {
    SessionError::Peer {
        code: Some(CloseCode::Cancelled),
        message: "the server is shutting down; the files it received whole were kept, \
                  and the next run goes on from there"
            .into(),
    }
}

fn timed_out(idle: Duration) -> SessionError {
    SessionError::Peer {
        code: Some(CloseCode::Timeout),
        message: format!("the peer sent nothing for {:.1} s; closing the session", idle.as_secs_f64()),
    }
}

/// The close code and reason for bytes that are not a frame.
fn bad_frame(e: &xfer_protocol::DecodeError) -> SessionError {
    SessionError::Peer { code: Some(e.close_code()), message: format!("bad frame: {e}") }
}

/// How a stream reader hands its frames on: the channel to the session,
/// the byte budget the waiting ones share, and when bytes last moved.
#[derive(Clone)]
struct Reading {
    tx: mpsc::Sender<Inbound>,
    budget: Budget,
    activity: Activity,
}

impl Reading {
    fn new(tx: mpsc::Sender<Inbound>, budget: u32, activity: &Activity) -> Self {
        Reading { tx, budget: Budget::new(budget), activity: activity.clone() }
    }

    /// Hands `frame` to the session once the budget allows `len` bytes;
    /// `false` when the session is gone.
    async fn hand_on(&self, frame: Result<Message, SessionError>, len: usize) -> bool {
        let Some(held) = self.budget.hold(len).await else { return false };
        self.tx.send(Inbound { frame, _held: Some(held) }).await.is_ok()
    }
}

/// Reads frames from `recv` into `to` until the stream ends, reading no
/// faster than `caps` allow (QUIC flow control then slows the sender). A
/// malformed frame is handed on as an error, and reading stops.
async fn read_frames(mut recv: RecvStream, to: Reading, caps: Caps) -> io::Result<()> {
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
async fn write_frames(
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

/// Spreads data frames over the data streams.
async fn write_data(
    streams: Vec<SendStream>,
    mut rx: mpsc::Receiver<Message>,
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
    let mut next = 0;
    while let Some(message) = rx.recv().await {
        if senders[next % senders.len()].send(message).await.is_err() {
            break;
        }
        next += 1;
    }
    drop(senders);
    for task in tasks {
        task.await.map_err(io_err)??;
    }
    Ok(())
}

/// Pushes with `sender` over `connection` (the client side).
///
/// # Errors
/// Session errors from either side, or the connection failing.
pub async fn run_sender<R: ChunkReader + Send + 'static>(
    connection: &Connection,
    sender: Sender<R>,
    caps: Caps,
) -> Result<Sender<R>, SessionError> {
    let watch = Watch::unlimited();
    let (send, in_rx, reader) = open_control(connection, &watch.activity).await?;
    let result = drive_sender(connection, send, in_rx, sender, caps, watch).await;
    reader.abort();
    result
}

/// The client's control stream: its sending half, a channel of the frames
/// read from it, and the task reading them.
async fn open_control(
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
fn inbound(received: Option<Inbound>, connection: &Connection) -> Result<Message, SessionError> {
    received.ok_or_else(|| ended(connection))?.frame
}

/// Runs `sender` with its control input `in_rx`, control output `send`, and
/// data streams it opens on `connection`.
async fn drive_sender<R: ChunkReader + Send + 'static>(
    connection: &Connection,
    send: SendStream,
    mut in_rx: mpsc::Receiver<Inbound>,
    mut sender: Sender<R>,
    caps: Caps,
    watch: Watch,
) -> Result<Sender<R>, SessionError> {
    let mut data_streams = Vec::new();
    for _ in 0..DATA_STREAMS {
        data_streams.push(connection.open_uni().await.map_err(|_| ended(connection))?);
    }
    let (ctrl_tx, ctrl_rx) = mpsc::channel(CHANNEL_DEPTH);
    let (data_tx, data_rx) = mpsc::channel(CHANNEL_DEPTH);
    let backlog = Arc::new(Backlog::default());
    let mut link = LinkClock::new(connection, backlog.clone(), caps.clone());
    let writer = tokio::spawn(write_frames(send, ctrl_rx, Caps::default(), watch.activity.clone(), None));
    let _resent = AbortOnDrop(tokio::spawn(charge_resent(connection.clone(), caps.clone())));
    let data_writer = tokio::spawn(write_data(data_streams, data_rx, caps, watch.activity.clone(), backlog.clone()));
    let runtime = tokio::runtime::Handle::current();
    let conn = connection.clone();
    let session = tokio::task::spawn_blocking(move || -> Result<Sender<R>, SessionError> {
        // Never block on an outgoing queue while input waits: the receiver
        // may need an answer to a NeedChunk before it reads more.
        let mut ctrl = Outgoing::new(ctrl_tx, conn.clone());
        let mut data = Outgoing::new(data_tx, conn.clone());
        loop {
            ctrl.fill(|| sender.poll_transmit())?;
            data.try_fill(|| Ok(sender.poll_data()?.inspect(|_| backlog.enter())))?;
            adapt_level(&mut sender, &mut link);
            if sender.is_finished() && ctrl.is_idle() && data.is_idle() {
                return Ok(sender);
            }
            let input = runtime.block_on(async {
                tokio::select! {
                    m = in_rx.recv() => Some(m),
                    () = ctrl.room() => None,
                    () = data.room() => None,
                    e = watch.stalled() => Some(Some(Inbound { frame: Err(e), _held: None })),
                    e = watch.stopped() => Some(Some(Inbound { frame: Err(e), _held: None })),
                }
            });
            if let Some(message) = input {
                sender.handle(inbound(message, &conn)?)?;
            }
        }
    });
    let result = session.await.map_err(|e| SessionError::Protocol(format!("session thread failed: {e}")))?;
    let _ = writer.await;
    let _ = data_writer.await;
    result
}

/// Lets the link's last window, if one has passed, set the zstd level.
fn adapt_level<R: ChunkReader>(sender: &mut Sender<R>, link: &mut LinkClock) {
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
struct Backlog(Mutex<BacklogState>);

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
    fn enter(&self) {
        let mut state = self.state();
        if state.queued == 0 {
            state.since = Instant::now();
        }
        state.queued += 1;
    }

    /// A message left it, written to its stream.
    fn leave(&self) {
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
struct LinkClock {
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
    fn new(connection: &Connection, backlog: Arc<Backlog>, caps: Caps) -> Self {
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

/// Which stream a message came on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Lane {
    Control,
    Data,
}

/// Refuses a message on the wrong kind of stream (SPEC.md section 3): data
/// streams carry only the sender's answers to `NeedChunk`, and chunk data
/// never travels on the control stream.
fn check_lane(message: &Message, lane: Lane) -> Result<(), SessionError> {
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

/// Runs `receiver` with control input `ctrl_in`, control output `send`, and
/// the data streams the peer opens on `connection`.
async fn drive_receiver(
    connection: &Connection,
    send: SendStream,
    mut ctrl_in: mpsc::Receiver<Inbound>,
    mut receiver: Receiver,
    caps: Caps,
    watch: Watch,
) -> Result<Receiver, SessionError> {
    let (data_in_tx, mut data_in) = mpsc::channel(CHANNEL_DEPTH);
    let (out_tx, out_rx) = mpsc::channel(CHANNEL_DEPTH);
    let writer = tokio::spawn(write_frames(send, out_rx, Caps::default(), watch.activity.clone(), None));
    // One budget for all data streams: together they carry the answers to
    // the receiver's bounded requests.
    let reading = Reading::new(data_in_tx, DATA_BUDGET, &watch.activity);
    let data_readers = tokio::spawn(read_data_streams(connection.clone(), reading, caps));
    let runtime = tokio::runtime::Handle::current();
    let conn = connection.clone();
    let mut feed = WindowFeed::new(connection);
    let session = tokio::task::spawn_blocking(move || -> Result<Receiver, SessionError> {
        let mut out = Outgoing::new(out_tx, conn.clone());
        let step = |receiver: &mut Receiver| -> Result<bool, SessionError> {
            feed.tick(receiver);
            if receiver.is_finished() {
                crate::crashpoint::hit("receiver.finished");
            }
            out.fill(|| receiver.poll_transmit())?;
            if receiver.is_finished() && out.is_idle() {
                return Ok(true);
            }
            let wants_control = receiver.wants_input();
            // Chunk data is always read; control messages only while the
            // receiver has room for more entry changes.
            let input = runtime.block_on(async {
                tokio::select! {
                    m = ctrl_in.recv(), if wants_control => Some((m, Lane::Control)),
                    m = data_in.recv() => Some((m, Lane::Data)),
                    () = out.room() => None,
                    e = watch.stalled() => Some((Some(Inbound { frame: Err(e), _held: None }), Lane::Control)),
                    e = watch.stopped() => Some((Some(Inbound { frame: Err(e), _held: None }), Lane::Control)),
                }
            });
            if let Some((message, lane)) = input {
                let message = inbound(message, &conn)?;
                check_lane(&message, lane)?;
                receiver.handle(message)?;
            }
            Ok(false)
        };
        run_until_done(&mut receiver, step).map(|()| receiver)
    });
    let result = session.await.map_err(|e| SessionError::Protocol(format!("session thread failed: {e}")))?;
    let _ = writer.await;
    data_readers.abort();
    result
}

/// Runs `step` until it says the session is done; on a failure, salvages
/// what the receiver completed.
fn run_until_done(
    receiver: &mut Receiver,
    mut step: impl FnMut(&mut Receiver) -> Result<bool, SessionError>,
) -> Result<(), SessionError> {
    loop {
        match step(receiver) {
            Ok(false) => {}
            Ok(true) => return Ok(()),
            Err(e) => {
                receiver.salvage();
                return Err(e);
            }
        }
    }
}

/// Reads every data stream the peer opens on `connection` into `reading`.
async fn read_data_streams(connection: Connection, reading: Reading, caps: Caps) {
    while let Ok(stream) = connection.accept_uni().await {
        tokio::spawn(read_frames(stream, reading.clone(), caps.clone()));
    }
}

/// Pulls with `receiver` over `connection` (the client side).
///
/// # Errors
/// Session errors from either side, or the connection failing.
pub async fn run_pull(connection: &Connection, receiver: Receiver, caps: Caps) -> Result<Receiver, SessionError> {
    let watch = Watch::unlimited();
    let (send, in_rx, reader) = open_control(connection, &watch.activity).await?;
    let result = drive_receiver(connection, send, in_rx, receiver, caps, watch).await;
    reader.abort();
    result
}

/// An outgoing queue that never blocks the session thread: a message that
/// does not fit waits here until [`Outgoing::room`] says there is space.
struct Outgoing {
    tx: mpsc::Sender<Message>,
    held: Option<Message>,
    /// To tell why, when the channel's writer is gone.
    connection: Connection,
}

impl Outgoing {
    fn new(tx: mpsc::Sender<Message>, connection: Connection) -> Self {
        Outgoing { tx, held: None, connection }
    }

    /// Moves messages from `next` into the channel while it has room.
    fn fill(&mut self, mut next: impl FnMut() -> Option<Message>) -> Result<(), SessionError> {
        self.try_fill(|| Ok(next()))
    }

    /// [`Outgoing::fill`] from a source that can fail.
    fn try_fill(
        &mut self,
        mut next: impl FnMut() -> Result<Option<Message>, SessionError>,
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

    fn is_idle(&self) -> bool {
        self.held.is_none()
    }

    /// Resolves once a held message fits (never, if none is held).
    async fn room(&self) {
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
fn ended(connection: &Connection) -> SessionError {
    match connection.close_reason() {
        Some(quinn::ConnectionError::ApplicationClosed(close)) => {
            let code = u32::try_from(close.error_code.into_inner()).ok().and_then(CloseCode::from_u32);
            SessionError::Peer { code, message: String::from_utf8_lossy(&close.reason).into_owned() }
        }
        Some(reason) => SessionError::Peer { code: None, message: format!("the connection failed: {reason}") },
        None => SessionError::Peer { code: None, message: "the connection closed before the session ended".into() },
    }
}

/// Serves connections from `endpoint` until it is closed: at most
/// [`MAX_HANDSHAKES`] handshakes and [`ServeConfig::max_sessions`] sessions
/// at once; connections over either limit are refused (`Busy` after the
/// handshake, with a reason).
pub async fn serve(endpoint: quinn::Endpoint, config: Arc<ServeConfig>) {
    let handshakes = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    let max_sessions = u32::try_from(config.max_sessions.max(1)).unwrap_or(u32::MAX);
    let sessions = Arc::new(Semaphore::new(max_sessions as usize));
    loop {
        let incoming = tokio::select! {
            incoming = endpoint.accept() => incoming,
            () = config.shutdown.cancelled() => None,
        };
        let Some(incoming) = incoming else { break };
        let Ok(handshaking) = handshakes.clone().try_acquire_owned() else {
            let from = incoming.remote_address();
            tracing::warn!(%from, "connection refused before its handshake: too many handshakes under way");
            incoming.refuse();
            continue;
        };
        let (config, sessions) = (config.clone(), sessions.clone());
        tokio::spawn(async move {
            let connection = handshake(incoming, config.idle_timeout.min(HANDSHAKE_TIMEOUT)).await;
            drop(handshaking);
            let Some(connection) = connection else { return };
            if config.shutdown.is_cancelled() {
                refuse_shutdown(&connection, &config);
                return;
            }
            match sessions.try_acquire_owned() {
                Ok(permit) => {
                    serve_and_record(connection, config).await;
                    drop(permit);
                }
                Err(_) => refuse_busy(&connection, &config),
            }
        });
    }
    // Shut down: every session permit back means every session stopped
    // at its commit point, closed with its reason and left its record.
    if config.shutdown.is_cancelled() {
        let _ = sessions.acquire_many(max_sessions).await;
    }
}

/// Closes a connection that completed its handshake as the server shut
/// down, and records it.
fn refuse_shutdown(connection: &Connection, config: &ServeConfig) {
    let mut record = audit_record(connection);
    let error = shutting_down();
    record.fail(Some(error.close_code()), error.to_string());
    audit(config, &record);
    connection.close(VarInt::from_u32(error.close_code() as u32), error.to_string().as_bytes());
}

/// Completes a handshake within `limit`, or records why not (a client
/// that does not trust this server's key aborts it).
async fn handshake(incoming: quinn::Incoming, limit: Duration) -> Option<Connection> {
    let from = incoming.remote_address();
    let connecting = match incoming.accept() {
        Ok(connecting) => connecting,
        Err(e) => {
            tracing::warn!(%from, error = %e, "connection failed before its handshake");
            return None;
        }
    };
    match tokio::time::timeout(limit, connecting).await {
        Ok(Ok(connection)) => Some(connection),
        Ok(Err(e)) => {
            tracing::warn!(
                %from,
                error = %e,
                "handshake failed: the client refused this server's key (not pinned there), or is not an xfer client"
            );
            None
        }
        Err(_) => {
            tracing::warn!(%from, limit_s = limit.as_secs_f64(), "handshake timed out");
            None
        }
    }
}

/// Runs one session and records how it ended: in the audit log, then in
/// the operator's log.
async fn serve_and_record(connection: Connection, config: Arc<ServeConfig>) {
    let started = Instant::now();
    let mut record =
        AuditRecord { result: "ok", congestion: Some(config.congestion.name()), ..audit_record(&connection) };
    let result = serve_connection(connection.clone(), config.clone(), &mut record).await;
    let wire = wire_bytes(&connection);
    (record.wire_bytes_sent, record.wire_bytes_received) = (wire.sent, wire.received);
    record.duration_s = started.elapsed().as_secs_f64();
    record.time = AuditRecord::now().time;
    if let Err(e) = &result {
        record.fail(Some(e.close_code()), e.to_string());
    }
    // The record first: it must not depend on the operator's terminal (a
    // closed stderr fails the log lines below).
    audit(&config, &record);
    let (from, client) = (&record.peer, &record.client);
    match &result {
        Ok(()) => tracing::info!(%from, %client, elapsed_s = record.duration_s, "session done"),
        Err(e) => {
            let code = e.close_code() as u32;
            tracing::warn!(%from, %client, code, error = %e, "session refused or failed");
        }
    }
}

/// A session's audit record as its connection tells it: now, from where,
/// and which client.
fn audit_record(connection: &Connection) -> AuditRecord {
    AuditRecord {
        peer: connection.remote_address().to_string(),
        client: peer_fingerprint(connection).map_or_else(|| "unknown".to_string(), |fp| fp.to_string()),
        ..AuditRecord::now()
    }
}

/// Appends `record` to the server's audit log, if it keeps one.
fn audit(config: &ServeConfig, record: &AuditRecord) {
    if let Some(log) = &config.audit {
        if let Err(e) = log.append(record) {
            tracing::error!(log = %log.path().display(), error = %e, "cannot write the audit log");
        }
    }
}

/// Closes a connection over the session limit with `Busy` and why, and
/// records it.
fn refuse_busy(connection: &Connection, config: &ServeConfig) {
    let max_sessions = config.max_sessions;
    let mut record = audit_record(connection);
    let reason = format!("the server is serving {max_sessions} sessions, its limit; try again in a moment");
    record.fail(Some(CloseCode::Busy), reason.clone());
    audit(config, &record);
    let (from, client, code) = (&record.peer, &record.client, CloseCode::Busy as u32);
    tracing::warn!(%from, %client, code, max_sessions, "session refused: too many sessions");
    connection.close(VarInt::from_u32(code), reason.as_bytes());
}

/// Runs one client's session on the server, then closes the connection:
/// with the error's close code and message when it failed, so the client
/// can say why. What the session did goes into `record`.
///
/// # Errors
/// The session's failure (also sent to the client).
pub async fn serve_connection(
    connection: Connection,
    config: Arc<ServeConfig>,
    record: &mut AuditRecord,
) -> Result<(), SessionError> {
    let client = peer_fingerprint(&connection);
    let result = serve_session(&connection, &config, client, record).await;
    match &result {
        // The client closes the connection once it has what it needs,
        // saying whether it skipped entries on its side.
        Ok(()) => {
            if let quinn::ConnectionError::ApplicationClosed(close) = connection.closed().await {
                record.skipped(skipped_in_close(&close.reason));
            }
        }
        Err(e) => {
            let mut reason = client_reason(&config, e);
            while reason.len() > MAX_CLOSE_REASON {
                reason.pop();
            }
            connection.close(VarInt::from_u32(e.close_code() as u32), reason.as_bytes());
        }
    }
    result
}

/// What a client is told of a failure: the server's own paths are none of
/// its business, so the root becomes `/` (as the client names paths) and
/// the state database is named as such.
fn client_reason(config: &ServeConfig, error: &SessionError) -> String {
    let mut reason = match error.local_error::<crate::Error>() {
        Some(crate::Error::State { source, .. }) => format!("the server's state database: {source}"),
        _ => error.to_string(),
    };
    if let ServerState::Outside(dir) = &config.state {
        reason = reason.replace(&*dir.to_string_lossy(), "<server state>");
    }
    let root = config.root.to_string_lossy();
    if root != "/" && !root.is_empty() {
        reason = reason.replace(&format!("{root}/"), "/").replace(&*root, "/");
    }
    reason
}

/// How a client's `Ok` close reason starts when it skipped entries on its
/// side (SPEC.md, `Summary`): `partial: N entries skipped by the sender`.
pub(crate) const PARTIAL_CLOSE: &str = "partial: ";

/// The close reason of a session that skipped `entries` on the sender's side.
pub(crate) fn close_reason(entries: usize) -> String {
    if entries == 0 {
        return "done".into();
    }
    format!("{PARTIAL_CLOSE}{entries} entries skipped by the sender")
}

/// Entries a client's close reason says it skipped (none for another reason;
/// at least one when it says partial without a readable count).
fn skipped_in_close(reason: &[u8]) -> u64 {
    let Some(rest) = reason.strip_prefix(PARTIAL_CLOSE.as_bytes()) else { return 0 };
    let digits: Vec<u8> = rest.iter().copied().take_while(u8::is_ascii_digit).take(20).collect();
    std::str::from_utf8(&digits).ok().and_then(|d| d.parse::<u64>().ok()).unwrap_or(1).max(1)
}

/// Longest close reason sent: it must fit one packet with room to spare.
const MAX_CLOSE_REASON: usize = 512;

/// Failed entries of one session written to the server's log one by one;
/// the rest are counted.
const MAX_LOGGED_FAILURES: usize = 16;

/// A session's control stream once `Hello` and `Open` were read: its
/// sending half, the frames still to come, the task reading them, and the
/// two messages.
struct Opened {
    send: SendStream,
    ctrl_in: mpsc::Receiver<Inbound>,
    reader: AbortOnDrop<io::Result<()>>,
    hello: Message,
    open: xfer_protocol::msg::Open,
}

/// Reads the client's `Hello` (checking its version) and `Open`.
async fn open_session(connection: &Connection, activity: &Activity) -> Result<Opened, SessionError> {
    let (send, recv) = connection.accept_bi().await.map_err(|_| ended(connection))?;
    let (ctrl_in_tx, mut ctrl_in) = mpsc::channel(CHANNEL_DEPTH);
    let reading = Reading::new(ctrl_in_tx, CONTROL_BUDGET, activity);
    let reader = AbortOnDrop(tokio::spawn(read_frames(recv, reading, Caps::default())));
    let hello = inbound(ctrl_in.recv().await, connection)?;
    match &hello {
        Message::Hello(h) => xfer_protocol::check_version(h.version).map_err(crate::session::version_mismatch)?,
        other => return Err(SessionError::Unexpected { kind: other.kind(), state: "waiting for Hello" }),
    }
    match inbound(ctrl_in.recv().await, connection)? {
        Message::Open(open) => Ok(Opened { send, ctrl_in, reader, hello, open }),
        other => Err(SessionError::Unexpected { kind: other.kind(), state: "waiting for Open" }),
    }
}

async fn serve_session(
    connection: &Connection,
    config: &Arc<ServeConfig>,
    client: Option<Fingerprint>,
    record: &mut AuditRecord,
) -> Result<(), SessionError> {
    // Edits to the authorized-clients file take effect from the next
    // connection: a revoked client is refused without a restart.
    if let Err(e) = config.access.reload() {
        tracing::error!(error = %e, "authorized clients unusable; the file grants nothing until it is fixed");
    }
    let access = config.access.current();
    // Refused before a stream is read, let alone a file touched.
    let client = match client {
        Some(fp) if access.knows(&fp) => fp,
        other => {
            let refusal = Refusal::UnknownClient { client: other.unwrap_or(Fingerprint([0; 32])) };
            return Err(SessionError::Peer { code: Some(refusal.close_code()), message: refusal.to_string() });
        }
    };
    let watch = Watch { activity: Activity::new(), idle: Some(config.idle_timeout), stop: config.shutdown.clone() };
    let opening = open_session(connection, &watch.activity);
    let opened = tokio::select! {
        opened = tokio::time::timeout(config.idle_timeout, opening) => opened,
        e = watch.stopped() => return Err(e),
    };
    let opened = opened.map_err(|_| timed_out(config.idle_timeout))??;
    let open = &opened.open;
    let want = match open.direction {
        xfer_protocol::msg::Direction::Pull => Want::Read,
        xfer_protocol::msg::Direction::Push => Want::Write,
    };
    record.path = Some(format!("/{}", String::from_utf8_lossy(&open.path)));
    record.direction = Some(if want == Want::Read { "pull" } else { "push" });
    record.tag(&open.tags);
    if let Err(refusal) = access.check(&client, want, &open.path) {
        return Err(SessionError::Peer { code: Some(refusal.close_code()), message: refusal.to_string() });
    }
    let mut skipped_here = 0;
    let summary = if want == Want::Read {
        let Opened { send, ctrl_in, reader, open, .. } = opened;
        let pulled = serve_pull(connection, send, ctrl_in, config, open, watch).await;
        drop(reader);
        pulled.map(|(sender, scan_skipped)| {
            skipped_here = scan_skipped + sender.skipped().len() as u64;
            sender.summary().copied()
        })
    } else {
        serve_push(connection, opened, config, &client, watch).await
    };
    summary.map(|summary| {
        record.count(&summary.unwrap_or_default());
        record.skipped(skipped_here);
    })
}

/// Receives a push the client opened with `opened`; its summary.
async fn serve_push(
    connection: &Connection,
    opened: Opened,
    config: &Arc<ServeConfig>,
    client: &Fingerprint,
    watch: Watch,
) -> Result<Option<xfer_protocol::msg::Summary>, SessionError> {
    let Opened { send, ctrl_in, reader, hello, open } = opened;
    let opener = config.clone();
    let mut receiver = Receiver::new(Box::new(move |request: &OpenRequest| open_store(&opener, request)));
    receiver.handle(hello)?;
    receiver.handle(Message::Open(open))?;
    let receiver = drive_receiver(connection, send, ctrl_in, receiver, config.caps(), watch).await?;
    drop(reader);
    log_failures(client, receiver.failed(), receiver.summary().map_or(0, |s| s.failed));
    if let Some(failures) = &config.failures {
        // The caller may be gone already: it then wanted no names.
        let _ = failures.send(receiver.failed().to_vec());
    }
    Ok(receiver.summary().copied())
}

/// The server's record of entries a push could not write.
fn log_failures(client: &Fingerprint, failed: &[crate::fs::store::FailedEntry], count: u64) {
    for entry in failed.iter().take(MAX_LOGGED_FAILURES) {
        tracing::warn!(%client, path = %entry.path, error = %entry.error, "entry not written");
    }
    let logged = failed.len().min(MAX_LOGGED_FAILURES) as u64;
    if count > logged {
        tracing::warn!(%client, more = count - logged, "more entries not written");
    }
}

/// A task aborted when its handle goes out of scope.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Refuses a destination reached through a symlink or a file, and a pull
/// of a path that is not there. An earlier push may have left `site/link
/// -> /etc`: opening `site/link` must not lead out of the served root.
fn check_real_dirs(root: &Path, path: &RelPath, must_exist: bool) -> Result<(), SessionError> {
    use std::os::unix::ffi::OsStrExt;
    let mut at = root.to_path_buf();
    let mut shown = String::new();
    for component in path.as_bytes().split(|&b| b == b'/').filter(|c| !c.is_empty()) {
        at.push(std::ffi::OsStr::from_bytes(component));
        shown.push('/');
        shown.push_str(&String::from_utf8_lossy(component));
        match std::fs::symlink_metadata(&at) {
            Ok(meta) if meta.is_dir() => {}
            Ok(meta) => {
                let what = if meta.file_type().is_symlink() { "a symlink" } else { "not a directory" };
                return Err(SessionError::Peer {
                    code: Some(CloseCode::OutsideAllowedPath),
                    message: format!("{shown} is {what} on the server; use a path through real directories only"),
                });
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound && !must_exist => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(SessionError::Peer {
                    code: Some(CloseCode::NotFound),
                    message: format!("{shown} does not exist on the server"),
                })
            }
            Err(e) => return Err(crate::Error::io(at, e).into()),
        }
    }
    Ok(())
}

/// Serves a pull: scans the requested tree and sends it.
async fn serve_pull(
    connection: &Connection,
    send: SendStream,
    ctrl_in: mpsc::Receiver<Inbound>,
    config: &ServeConfig,
    open: xfer_protocol::msg::Open,
    watch: Watch,
) -> Result<(Sender<FileReader>, u64), SessionError> {
    let path = match open.path.as_slice() {
        [] => RelPath::root(),
        bytes => RelPath::new(bytes.to_vec()).map_err(|e| SessionError::Protocol(e.to_string()))?,
    };
    config.check_reserved(&path)?;
    check_real_dirs(&config.root, &path, true)?;
    let abs = path.to_path(&config.root);
    let reserved = (path.is_root() && config.state == ServerState::InRoot).then_some(SERVER_STATE_DIR.as_bytes());
    let (tree, checksum) = (abs.clone(), open.checksum);
    let (state, _) = config.state_file(&path);
    let scanning = tokio::task::spawn_blocking(move || {
        let options = crate::fs::scan::ScanOptions { checksum, reserved, ..Default::default() };
        // What pushes left in the records (a client's setuid bits and
        // owners, kept off this disk) goes back as it was sent.
        match crate::fs::store::state::StateDb::open_existing(&state) {
            Ok(Some(db)) => crate::fs::scan::scan_with(&tree, &mut db.meta_overlay()?, options),
            Ok(None) => crate::fs::scan::scan_with(&tree, &mut crate::fs::scan::Unrecorded, options),
            Err(e) => Err(e),
        }
    });
    // A scan only reads: on shutdown it is left to finish alone.
    let scanned = tokio::select! {
        scanned = scanning => scanned,
        e = watch.stopped() => return Err(e),
    };
    let scanned =
        scanned.map_err(|e| SessionError::Protocol(format!("scan failed: {e}")))?.map_err(|e| busy_or(e, &path))?;
    let encoder = crate::codec::Encoder::new(crate::codec::Compression::Auto)
        .map_err(|e| SessionError::from(crate::Error::Encoder(Box::new(e))))?
        .with_clock(std::time::Instant::now);
    // The protocol carries no patterns: a pull sends the served tree whole.
    let options =
        crate::plan::PlanOptions { delete: open.delete, protect: None, skipped: Arc::new(scanned.skipped_paths()) };
    let scan_skipped = scanned.skipped.len() as u64;
    let mut sender = SenderConfig::new(scanned.manifest, FileReader::new(abs), encoder);
    sender.plan = options;
    let sender = Sender::respond(sender, open.remembered_root);
    Ok((drive_sender(connection, send, ctrl_in, sender, config.caps(), watch).await?, scan_skipped))
}

/// Opens the destination a client asked for, under the server's root.
fn open_store(config: &ServeConfig, request: &OpenRequest) -> Result<Receiving, SessionError> {
    let path = request.path.clone().unwrap_or_else(RelPath::root);
    config.check_reserved(&path)?;
    check_real_dirs(&config.root, &path, false)?;
    let (state, reserve) = config.state_file(&path);
    let store = MirrorStore::open(&path.to_path(&config.root), &state).map_err(|e| busy_or(e, &path))?;
    let store = store.with_policy(config.metadata);
    let store = if path.is_root() && reserve { store.with_reserved(SERVER_STATE_DIR.as_bytes()) } else { store };
    Ok(Receiving::new(store))
}

/// `Busy` with what to do when another push holds the tree's state, else
/// the error itself.
fn busy_or(e: crate::Error, path: &RelPath) -> SessionError {
    if e.is_busy() {
        return SessionError::Peer {
            code: Some(CloseCode::Busy),
            message: format!(
                "another transfer is writing /{path}, a directory above it or one inside it; \
                 try again when it ends"
            ),
        };
    }
    e.into()
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

    #[test]
    fn data_budget_holds_every_chunk_asked_for() {
        assert!(u64::from(DATA_BUDGET) > MAX_OUTSTANDING_BYTES);
    }
}
