//! Runs push and pull sessions over a QUIC connection: the control
//! messages on one bidirectional stream, chunk data on a few unidirectional
//! ones, the session itself on a blocking thread (it reads and writes
//! files), and bounded channels between them.
//!
//! Its parts live beside it: stream pumps in `frames`, liveness in `watch`,
//! bandwidth caps in `caps`, link measurements in `link`, the server's
//! accept loop and admission in `admission`, and the served root's rules in
//! `served`.

use std::io;
use std::sync::Arc;

use quinn::{Connection, SendStream};
use tokio::sync::mpsc;
use tokio_util::task::AbortOnDropHandle;
use xfer_protocol::Message;

use super::caps::{charge_resent, Caps};
use super::frames::{
    check_lane, ended, inbound, DATA_STREAMS, open_control, read_data_streams, read_frames, write_data, write_frames, Inbound, Lane,
    Outgoing, Reading, CHANNEL_DEPTH, CONTROL_BUDGET, DATA_BUDGET,
};
use super::link::{adapt_level, Backlog, LinkClock, WindowFeed};
use super::manage::open_snapshot;
use super::served::{busy_or, check_real_dirs, open_served, ServeConfig, ServerState, SERVER_STATE_DIR};
use super::watch::{Activity, Watch};
use crate::fs::history::{RequestMeter, Requests};
use crate::fs::store::repo::ServedStore;
use crate::fs::store::{MirrorReceiver, ServedReceiver};
use crate::manifest::RelPath;
use crate::net::identity::Fingerprint;
use crate::session::{ChunkReader, Destination, FileReader, OpenRequest, Receiver, Sender, SenderConfig, SessionError};

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
    let _resent = AbortOnDropHandle::new(tokio::spawn(charge_resent(connection.clone(), caps.clone())));
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
                    e = watch.stalled() => Some(Some(Inbound::failed(e))),
                    e = watch.stopped() => Some(Some(Inbound::failed(e))),
                }
            });
            if let Some(message) = input {
                sender.handle(inbound(message, &conn)?)?;
                // What else has come too, before answering any: the reader
                // then sees a run of chunk requests it can fetch together.
                for _ in 0..CHANNEL_DEPTH {
                    let Ok(more) = in_rx.try_recv() else { break };
                    sender.handle(inbound(Some(more), &conn)?)?;
                }
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
async fn drive_receiver<D: Destination + Send + 'static>(
    connection: &Connection,
    send: SendStream,
    mut ctrl_in: mpsc::Receiver<Inbound>,
    mut receiver: Receiver<D>,
    caps: Caps,
    watch: Watch,
) -> Result<Receiver<D>, SessionError> {
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
    let session = tokio::task::spawn_blocking(move || -> Result<Receiver<D>, SessionError> {
        let mut out = Outgoing::new(out_tx, conn.clone());
        let step = |receiver: &mut Receiver<D>| -> Result<bool, SessionError> {
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
                    e = watch.stalled() => Some((Some(Inbound::failed(e)), Lane::Control)),
                    e = watch.stopped() => Some((Some(Inbound::failed(e)), Lane::Control)),
                }
            });
            if let Some((message, lane)) = input {
                let stream = message.as_ref().and_then(|m| m.stream);
                let message = inbound(message, &conn)?;
                check_lane(&message, lane)?;
                match stream {
                    Some(stream) => receiver.handle_data(stream, message)?,
                    None => receiver.handle(message)?,
                }
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
fn run_until_done<D: Destination>(
    receiver: &mut Receiver<D>,
    mut step: impl FnMut(&mut Receiver<D>) -> Result<bool, SessionError>,
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

/// Pulls with `receiver` over `connection` (the client side).
///
/// # Errors
/// Session errors from either side, or the connection failing.
pub async fn run_pull(
    connection: &Connection,
    receiver: MirrorReceiver,
    caps: Caps,
) -> Result<MirrorReceiver, SessionError> {
    let watch = Watch::unlimited();
    let (send, in_rx, reader) = open_control(connection, &watch.activity).await?;
    let result = drive_receiver(connection, send, in_rx, receiver, caps, watch).await;
    reader.abort();
    result
}

/// Failed entries of one session written to the server's log one by one;
/// the rest are counted.
const MAX_LOGGED_FAILURES: usize = 16;

/// A session's control stream once `Hello` and `Open` were read: its
/// sending half, the frames still to come, the task reading them, and the
/// two messages.
pub(super) struct Opened {
    pub(super) send: SendStream,
    pub(super) ctrl_in: mpsc::Receiver<Inbound>,
    pub(super) reader: AbortOnDropHandle<io::Result<()>>,
    pub(super) hello: Message,
    pub(super) open: xfer_protocol::msg::Open,
}

impl Opened {
    /// The feature bits the client's `Hello` offers.
    pub(super) fn client_features(&self) -> u64 {
        match &self.hello {
            Message::Hello(hello) => hello.features,
            _ => 0,
        }
    }
}

/// Reads the client's `Hello` (checking its version) and `Open`.
pub(super) async fn open_session(connection: &Connection, activity: &Activity) -> Result<Opened, SessionError> {
    let (send, recv) = connection.accept_bi().await.map_err(|_| ended(connection))?;
    let (ctrl_in_tx, mut ctrl_in) = mpsc::channel(CHANNEL_DEPTH);
    let reading = Reading::new(ctrl_in_tx, CONTROL_BUDGET, activity);
    let reader = AbortOnDropHandle::new(tokio::spawn(read_frames(recv, reading, Caps::default())));
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

/// Receives a push the client opened with `opened`; its summary, and
/// what the history store cost on a store-only server.
pub(super) async fn serve_push(
    connection: &Connection,
    opened: Opened,
    config: &Arc<ServeConfig>,
    client: &Fingerprint,
    watch: Watch,
) -> Result<(Option<xfer_protocol::msg::Summary>, Option<Requests>), SessionError> {
    let Opened { send, ctrl_in, reader, hello, open } = opened;
    let opener = config.clone();
    let client_hex = client.to_string();
    let meter: Arc<std::sync::Mutex<Option<RequestMeter>>> = Arc::default();
    let slot = Arc::clone(&meter);
    let mut receiver: ServedReceiver = Receiver::new(Box::new(move |request: &OpenRequest| {
        let store = open_served(&opener, request, &client_hex)?;
        if let ServedStore::Repo(repo) = &store {
            *slot.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(repo.meter());
        }
        Ok(store)
    }));
    if config.store.is_some() {
        receiver.offer_store_costs();
    }
    receiver.handle(hello)?;
    receiver.handle(Message::Open(open))?;
    let receiver = drive_receiver(connection, send, ctrl_in, receiver, config.caps(), watch).await?;
    drop(reader);
    log_failures(client, receiver.failed(), receiver.summary().map_or(0, |s| s.failed));
    if let Some(failures) = &config.failures {
        // The caller may be gone already: it then wanted no names.
        let _ = failures.send(receiver.failed().to_vec());
    }
    let costs = meter.lock().unwrap_or_else(std::sync::PoisonError::into_inner).as_ref().map(RequestMeter::requests);
    Ok((receiver.summary().copied(), costs))
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

/// Serves a pull of a snapshot (`Open.at`): the part of it at the
/// requested path, its chunks read from the history or the mirror; the
/// client's summary, the entries the sender skipped, and what the history
/// store cost on a store-only server. `request` is the client's `Hello`
/// features and its `Open`.
pub(super) async fn serve_pull_at(
    connection: &Connection,
    send: SendStream,
    ctrl_in: mpsc::Receiver<Inbound>,
    config: &Arc<ServeConfig>,
    request: (u64, xfer_protocol::msg::Open),
    watch: Watch,
) -> Result<(Option<xfer_protocol::msg::Summary>, u64, Option<Requests>), SessionError> {
    let (client_features, open) = request;
    let path = match open.path.as_slice() {
        [] => RelPath::root(),
        bytes => RelPath::new(bytes.to_vec()).map_err(|e| SessionError::Protocol(e.to_string()))?,
    };
    config.check_reserved(&path)?;
    // A store-only server's current tree is its latest snapshot.
    let selector = open.at.clone().unwrap_or_else(|| "latest".into());
    let served = config.clone();
    let opening = tokio::task::spawn_blocking(move || open_snapshot(&served, &path, &selector));
    let (walked, reader) = tokio::select! {
        opened = opening => opened.map_err(|e| SessionError::Protocol(format!("opening the snapshot failed: {e}")))??,
        e = watch.stopped() => return Err(e),
    };
    let meter = config.store.is_some().then(|| reader.meter());
    let encoder = crate::codec::Encoder::new(crate::codec::Compression::Auto)
        .map_err(|e| SessionError::from(crate::Error::Encoder(Box::new(e))))?
        .with_clock(std::time::Instant::now);
    let mut sender = SenderConfig::new(crate::manifest::Manifest::default(), reader, encoder);
    sender.walked = Some(walked);
    sender.plan = crate::plan::PlanOptions { delete: open.delete, protect: None, skipped: Arc::default() };
    sender.offer_store_costs = config.store.is_some();
    sender.zstd_stream = crate::crashpoint::zstd_stream();
    let sender = Sender::respond(sender, client_features, open.remembered_root);
    let sender = drive_sender(connection, send, ctrl_in, sender, config.caps(), watch).await?;
    Ok((sender.summary().copied(), sender.skipped().len() as u64, meter.map(|m| m.requests())))
}

/// Serves a pull: scans the requested tree and sends it. `request` is the
/// client's `Hello` features and its `Open`.
pub(super) async fn serve_pull(
    connection: &Connection,
    send: SendStream,
    ctrl_in: mpsc::Receiver<Inbound>,
    config: &ServeConfig,
    request: (u64, xfer_protocol::msg::Open),
    watch: Watch,
) -> Result<(Sender<FileReader>, u64), SessionError> {
    let (client_features, open) = request;
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
    sender.zstd_stream = crate::crashpoint::zstd_stream();
    // A mirror's reads cost nothing worth reporting: the server offers no
    // store costs, whatever the client's features.
    let sender = Sender::respond(sender, client_features, open.remembered_root);
    Ok((drive_sender(connection, send, ctrl_in, sender, config.caps(), watch).await?, scan_skipped))
}
