//! Runs push sessions over a QUIC connection: the control messages on one
//! bidirectional stream, chunk data on a few unidirectional ones, the
//! session itself on a blocking thread (it reads and writes files), and
//! bounded channels between them.

use std::collections::HashMap;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use quinn::{Connection, RecvStream, SendStream, VarInt};
use tokio::sync::mpsc;
use xfer_protocol::{frame, CloseCode, Message};

use super::access::{Access, Refusal, Want};
use super::peer_fingerprint;
use crate::audit::{AuditLog, AuditRecord};
use crate::identity::Fingerprint;
use crate::manifest::RelPath;
use crate::session::{ChunkReader, FileReader, OpenRequest, Receiver, Sender, SessionError};
use crate::store::MirrorStore;
use crate::throttle::{acquire_all, Limiter, Rate};

/// Streams that carry chunk data, so one lost packet stalls only a share.
pub const DATA_STREAMS: usize = 4;

/// Messages buffered between the network tasks and the session thread.
const CHANNEL_DEPTH: usize = 64;

/// Name of the server's state directory inside its root; clients can never
/// push to it.
pub const SERVER_STATE_DIR: &str = ".xfer";

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
    /// Waits until every cap allows `bytes` of payload, charged as the wire
    /// bytes they become: a cap is a promise about the link, not the payload.
    async fn take(&self, bytes: usize) {
        if !self.0.is_empty() {
            let limiters: Vec<&Limiter> = self.0.iter().collect();
            acquire_all(&limiters, (bytes * WIRE_OVERHEAD_PERMILLE / 1000) as u64).await;
        }
    }
}

/// Reads frames from `recv` into `tx` until the stream ends, reading no
/// faster than `caps` allow (QUIC flow control then slows the sender).
async fn read_frames(mut recv: RecvStream, tx: mpsc::Sender<Message>, caps: Caps) -> io::Result<()> {
    let mut buf: Vec<u8> = Vec::new();
    loop {
        while let Some((message, used)) = frame::decode(&buf).map_err(io_err)? {
            buf.drain(..used);
            if tx.send(message).await.is_err() {
                return Ok(());
            }
        }
        match recv.read_chunk(CAP_PIECE, true).await.map_err(io_err)? {
            Some(chunk) => {
                caps.take(chunk.bytes.len()).await;
                buf.extend_from_slice(&chunk.bytes);
            }
            None if buf.is_empty() => return Ok(()),
            None => return Err(io_err("stream ended inside a frame")),
        }
    }
}

/// Writes frames from `rx` to `send` as fast as `caps` allow, then
/// finishes the stream.
async fn write_frames(mut send: SendStream, mut rx: mpsc::Receiver<Message>, caps: Caps) -> io::Result<()> {
    let mut bytes = Vec::new();
    while let Some(message) = rx.recv().await {
        bytes.clear();
        frame::encode(&message, &mut bytes);
        for piece in bytes.chunks(CAP_PIECE) {
            caps.take(piece.len()).await;
            send.write_all(piece).await.map_err(io_err)?;
            crate::crashpoint::hit("wire.piece");
        }
    }
    send.finish().map_err(io_err)?;
    let _ = send.stopped().await;
    Ok(())
}

/// Spreads data frames over the data streams.
async fn write_data(streams: Vec<SendStream>, mut rx: mpsc::Receiver<Message>, caps: Caps) -> io::Result<()> {
    let mut senders = Vec::new();
    let mut tasks = Vec::new();
    for stream in streams {
        let (tx, stream_rx) = mpsc::channel(CHANNEL_DEPTH);
        senders.push(tx);
        tasks.push(tokio::spawn(write_frames(stream, stream_rx, caps.clone())));
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
    let (send, in_rx, reader) = open_control(connection).await?;
    let result = drive_sender(connection, send, in_rx, sender, caps).await;
    reader.abort();
    result
}

/// The client's control stream: its sending half, a channel of the frames
/// read from it, and the task reading them.
async fn open_control(
    connection: &Connection,
) -> Result<(SendStream, mpsc::Receiver<Message>, tokio::task::JoinHandle<io::Result<()>>), SessionError> {
    let (send, recv) = connection.open_bi().await.map_err(net)?;
    let (in_tx, in_rx) = mpsc::channel(CHANNEL_DEPTH);
    Ok((send, in_rx, tokio::spawn(read_frames(recv, in_tx, Caps::default()))))
}

fn net(e: impl std::fmt::Display) -> SessionError {
    SessionError::Local(crate::Error::io("connection", io_err(e)))
}

/// Runs `sender` with its control input `in_rx`, control output `send`, and
/// data streams it opens on `connection`.
async fn drive_sender<R: ChunkReader + Send + 'static>(
    connection: &Connection,
    send: SendStream,
    mut in_rx: mpsc::Receiver<Message>,
    mut sender: Sender<R>,
    caps: Caps,
) -> Result<Sender<R>, SessionError> {
    let mut data_streams = Vec::new();
    for _ in 0..DATA_STREAMS {
        data_streams.push(connection.open_uni().await.map_err(net)?);
    }
    let (ctrl_tx, ctrl_rx) = mpsc::channel(CHANNEL_DEPTH);
    let (data_tx, data_rx) = mpsc::channel(CHANNEL_DEPTH);
    let writer = tokio::spawn(write_frames(send, ctrl_rx, Caps::default()));
    let data_writer = tokio::spawn(write_data(data_streams, data_rx, caps));
    let runtime = tokio::runtime::Handle::current();
    let conn = connection.clone();
    let session = tokio::task::spawn_blocking(move || -> Result<Sender<R>, SessionError> {
        // Never block on an outgoing queue while input waits: the receiver
        // may need an answer to a NeedChunk before it reads more.
        let mut ctrl = Outgoing::new(ctrl_tx, conn.clone());
        let mut data = Outgoing::new(data_tx, conn.clone());
        loop {
            ctrl.fill(|| sender.poll_transmit())?;
            data.fill(|| sender.poll_data())?;
            if sender.is_finished() && ctrl.is_idle() && data.is_idle() {
                return Ok(sender);
            }
            let input = runtime.block_on(async {
                tokio::select! {
                    m = in_rx.recv() => Some(m),
                    () = ctrl.room() => None,
                    () = data.room() => None,
                }
            });
            if let Some(message) = input {
                sender.handle(message.ok_or_else(|| ended(&conn))?)?;
            }
        }
    });
    let result = session.await.map_err(|e| SessionError::Protocol(format!("session thread failed: {e}")))?;
    let _ = writer.await;
    let _ = data_writer.await;
    result
}

/// Runs `receiver` with control input `ctrl_in`, control output `send`, and
/// the data streams the peer opens on `connection`.
async fn drive_receiver(
    connection: &Connection,
    send: SendStream,
    mut ctrl_in: mpsc::Receiver<Message>,
    mut receiver: Receiver,
    caps: Caps,
) -> Result<Receiver, SessionError> {
    let (data_in_tx, mut data_in) = mpsc::channel(CHANNEL_DEPTH);
    let (out_tx, out_rx) = mpsc::channel(CHANNEL_DEPTH);
    let writer = tokio::spawn(write_frames(send, out_rx, Caps::default()));
    let data_conn = connection.clone();
    let data_readers = tokio::spawn(async move {
        while let Ok(stream) = data_conn.accept_uni().await {
            tokio::spawn(read_frames(stream, data_in_tx.clone(), caps.clone()));
        }
    });
    let runtime = tokio::runtime::Handle::current();
    let conn = connection.clone();
    let session = tokio::task::spawn_blocking(move || -> Result<Receiver, SessionError> {
        let mut out = Outgoing::new(out_tx, conn.clone());
        let mut step = || -> Result<bool, SessionError> {
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
                    m = ctrl_in.recv(), if wants_control => Some(m),
                    m = data_in.recv() => Some(m),
                    () = out.room() => None,
                }
            });
            if let Some(message) = input {
                receiver.handle(message.ok_or_else(|| ended(&conn))?)?;
            }
            Ok(false)
        };
        loop {
            match step() {
                Ok(false) => {}
                Ok(true) => return Ok(receiver),
                Err(e) => {
                    receiver.salvage();
                    return Err(e);
                }
            }
        }
    });
    let result = session.await.map_err(|e| SessionError::Protocol(format!("session thread failed: {e}")))?;
    let _ = writer.await;
    data_readers.abort();
    result
}

/// Pulls with `receiver` over `connection` (the client side).
///
/// # Errors
/// Session errors from either side, or the connection failing.
pub async fn run_pull(connection: &Connection, receiver: Receiver, caps: Caps) -> Result<Receiver, SessionError> {
    let (send, in_rx, reader) = open_control(connection).await?;
    let result = drive_receiver(connection, send, in_rx, receiver, caps).await;
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
        loop {
            let Some(message) = self.held.take().or_else(&mut next) else { return Ok(()) };
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

/// Serves connections from `endpoint` until it is closed.
pub async fn serve(endpoint: quinn::Endpoint, config: Arc<ServeConfig>) {
    while let Some(incoming) = endpoint.accept().await {
        let config = config.clone();
        tokio::spawn(async move {
            let Ok(connection) = incoming.await else { return };
            let started = std::time::Instant::now();
            let mut record = AuditRecord {
                peer: connection.remote_address().to_string(),
                client: peer_fingerprint(&connection).map_or_else(|| "unknown".to_string(), |fp| fp.to_string()),
                result: "ok",
                ..AuditRecord::default()
            };
            let result = serve_connection(connection.clone(), config.clone(), &mut record).await;
            let wire = wire_bytes(&connection);
            (record.wire_bytes_sent, record.wire_bytes_received) = (wire.sent, wire.received);
            record.duration_s = started.elapsed().as_secs_f64();
            record.time = AuditRecord::now().time;
            if let Err(e) = &result {
                record.fail(Some(e.close_code()), e.to_string());
            }
            // The record first: it must not depend on the operator's
            // terminal (a closed stderr fails the log lines below).
            if let Some(log) = &config.audit {
                if let Err(e) = log.append(&record) {
                    tracing::error!(log = %log.path().display(), error = %e, "cannot write the audit log");
                }
            }
            let (from, client) = (&record.peer, &record.client);
            match &result {
                Ok(()) => tracing::info!(%from, %client, elapsed_s = record.duration_s, "session done"),
                Err(e) => {
                    let code = e.close_code() as u32;
                    tracing::warn!(%from, %client, code, error = %e, "session refused or failed");
                }
            }
        });
    }
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
        // The client closes the connection once it has what it needs.
        Ok(()) => {
            connection.closed().await;
        }
        Err(e) => {
            let mut reason = e.to_string();
            while reason.len() > MAX_CLOSE_REASON {
                reason.pop();
            }
            connection.close(VarInt::from_u32(e.close_code() as u32), reason.as_bytes());
        }
    }
    result
}

/// Longest close reason sent: it must fit one packet with room to spare.
const MAX_CLOSE_REASON: usize = 512;

async fn serve_session(
    connection: &Connection,
    config: &Arc<ServeConfig>,
    client: Option<Fingerprint>,
    record: &mut AuditRecord,
) -> Result<(), SessionError> {
    // Refused before a stream is read, let alone a file touched.
    let client = match client {
        Some(fp) if config.access.knows(&fp) => fp,
        other => {
            let refusal = Refusal::UnknownClient { client: other.unwrap_or(Fingerprint([0; 32])) };
            return Err(SessionError::Peer { code: Some(refusal.close_code()), message: refusal.to_string() });
        }
    };
    let (send, recv) = connection.accept_bi().await.map_err(net)?;
    let (ctrl_in_tx, mut ctrl_in) = mpsc::channel(CHANNEL_DEPTH);
    let reader = AbortOnDrop(tokio::spawn(read_frames(recv, ctrl_in_tx, Caps::default())));
    // Hello and Open decide which side of a session this server plays.
    let (Some(hello), Some(Message::Open(open))) = (ctrl_in.recv().await, ctrl_in.recv().await) else {
        return Err(SessionError::Protocol("expected Hello and Open".into()));
    };
    let want = match open.direction {
        xfer_protocol::msg::Direction::Pull => Want::Read,
        xfer_protocol::msg::Direction::Push => Want::Write,
    };
    record.path = Some(format!("/{}", String::from_utf8_lossy(&open.path)));
    record.direction = Some(if want == Want::Read { "pull" } else { "push" });
    record.tag(&open.tags);
    if let Err(refusal) = config.access.check(&client, want, &open.path) {
        return Err(SessionError::Peer { code: Some(refusal.close_code()), message: refusal.to_string() });
    }
    let summary = if want == Want::Read {
        serve_pull(connection, send, ctrl_in, config, open).await.map(|sender| sender.summary().copied())
    } else {
        let opener = config.clone();
        let mut receiver = Receiver::new(Box::new(move |request: &OpenRequest| open_store(&opener, request)));
        receiver.handle(hello)?;
        receiver.handle(Message::Open(open))?;
        drive_receiver(connection, send, ctrl_in, receiver, config.caps()).await.map(|r| r.summary().copied())
    };
    let result = summary.map(|summary| record.count(&summary.unwrap_or_default()));
    drop(reader);
    result
}

/// A task aborted when its handle goes out of scope.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Serves a pull: scans the requested tree and sends it.
async fn serve_pull(
    connection: &Connection,
    send: SendStream,
    ctrl_in: mpsc::Receiver<Message>,
    config: &ServeConfig,
    open: xfer_protocol::msg::Open,
) -> Result<Sender<FileReader>, SessionError> {
    let path = match open.path.as_slice() {
        [] => RelPath::root(),
        bytes => RelPath::new(bytes.to_vec()).map_err(|e| SessionError::Protocol(e.to_string()))?,
    };
    config.check_reserved(&path)?;
    let abs = path.to_path(&config.root);
    let reserved = (path.is_root() && config.state == ServerState::InRoot).then_some(SERVER_STATE_DIR.as_bytes());
    let (tree, checksum) = (abs.clone(), open.checksum);
    let scanned = tokio::task::spawn_blocking(move || {
        let options = crate::scan::ScanOptions { checksum, reserved, ..Default::default() };
        crate::scan::scan(&tree, &HashMap::new(), options)
    })
    .await
    .map_err(|e| SessionError::Protocol(format!("scan failed: {e}")))??;
    let encoder = crate::codec::Encoder::new(crate::codec::Compression::Auto)
        .map_err(|e| SessionError::Local(crate::Error::Encoder(Box::new(e))))?;
    // The protocol carries no patterns: a pull sends the served tree whole.
    let options = crate::plan::PlanOptions { delete: open.delete, protect: None };
    let sender = Sender::respond(scanned.manifest, FileReader::new(abs), encoder, options, open.remembered_root);
    drive_sender(connection, send, ctrl_in, sender, config.caps()).await
}

/// Opens the destination a client asked for, under the server's root.
fn open_store(config: &ServeConfig, request: &OpenRequest) -> Result<MirrorStore, SessionError> {
    let path = request.path.clone().unwrap_or_else(RelPath::root);
    config.check_reserved(&path)?;
    let (state, reserve) = config.state_file(&path);
    let store = match MirrorStore::open(&path.to_path(&config.root), &state) {
        Ok(store) => store,
        Err(e) if e.is_busy() => {
            return Err(SessionError::Peer {
                code: Some(CloseCode::Busy),
                message: format!("another push to /{path} is in progress; try again when it ends"),
            })
        }
        Err(e) => return Err(e.into()),
    };
    Ok(if path.is_root() && reserve { store.with_reserved(SERVER_STATE_DIR.as_bytes()) } else { store })
}
