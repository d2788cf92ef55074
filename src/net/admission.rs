//! Admission: the server's accept loop, handshakes, the limits on
//! handshakes and sessions, who may open which path, the reason a client
//! is told, and the audit record of every session.

use std::sync::Arc;
use std::time::{Duration, Instant};

use quinn::{Connection, VarInt};
use tokio::sync::Semaphore;
use xfer_protocol::msg::Direction;
use xfer_protocol::CloseCode;

use super::access::{Refusal, Want};
use super::driver::{open_session, serve_pull, serve_pull_at, serve_push, Opened};
use super::manage::serve_history;
use super::link::wire_bytes;
use super::peer_fingerprint;
use super::served::{ServeConfig, ServerState};
use super::watch::{shutting_down, timed_out, Activity, Watch};
use crate::net::audit::AuditRecord;
use crate::net::identity::Fingerprint;
use crate::session::SessionError;

/// Handshakes under way at once; past this a new connection is refused
/// before any key operation (clients retry), so a flood of handshakes costs
/// little and half-finished ones never hold up sessions.
pub const MAX_HANDSHAKES: usize = 64;

/// Longest a handshake may take (or the idle timeout, if shorter): a client
/// that starts one and vanishes holds its slot no longer.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

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
            if let Some(metrics) = &config.metrics {
                metrics.refused("handshakes");
            }
            incoming.refuse();
            continue;
        };
        let (config, sessions) = (config.clone(), sessions.clone());
        tokio::spawn(async move {
            let connection = handshake(incoming, config.idle_timeout.min(config.handshake_timeout)).await;
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
    count(config, connection, &record, Some(error.close_code()));
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
    let _active = config.metrics.as_ref().map(|metrics| metrics.session_started());
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
    count(&config, &connection, &record, result.as_ref().err().map(SessionError::close_code));
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

/// Counts a session that ended as `record` says in the server's metrics,
/// if it keeps them.
fn count(config: &ServeConfig, connection: &Connection, record: &AuditRecord, code: Option<CloseCode>) {
    if let Some(metrics) = &config.metrics {
        let admitted = peer_fingerprint(connection).is_some_and(|fp| config.access.current().knows(&fp));
        metrics.session_ended(record, code, admitted);
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
    count(config, connection, &record, Some(CloseCode::Busy));
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
        Some(crate::Error::State { cause, .. }) => format!("the server's state database: {cause}"),
        Some(crate::Error::StateInUse { .. }) => {
            "the server's state database of this tree is in use by another transfer; try again when it ends".into()
        }
        _ => error.to_string(),
    };
    if let ServerState::Outside(dir) = &config.state {
        reason = reason.replace(&*dir.to_string_lossy(), "<server state>");
    }
    if let Some(store) = config.store.as_deref().filter(|s| !s.is_empty()) {
        reason = reason.replace(store, "<server store>");
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
        Direction::Pull | Direction::Snapshots => Want::Read,
        Direction::Push => Want::Write,
        Direction::Forget | Direction::Prune => Want::Manage,
    };
    record.path = Some(format!("/{}", String::from_utf8_lossy(&open.path)));
    record.direction = Some(direction_name(open.direction));
    record.at.clone_from(&open.at);
    record.tag(&open.tags);
    if let Err(refusal) = access.check(&client, want, &open.path) {
        return Err(SessionError::Peer { code: Some(refusal.close_code()), message: refusal.to_string() });
    }
    run_opened(connection, opened, config, &client, watch, record).await
}

/// What the audit log calls a session's request.
fn direction_name(direction: Direction) -> &'static str {
    match direction {
        Direction::Push => "push",
        Direction::Pull => "pull",
        Direction::Snapshots => "snapshots",
        Direction::Forget => "forget",
        Direction::Prune => "prune",
    }
}

/// Runs the session `opened` asks for, its access checked, and counts what
/// it did into `record`.
async fn run_opened(
    connection: &Connection,
    opened: Opened,
    config: &Arc<ServeConfig>,
    client: &Fingerprint,
    watch: Watch,
    record: &mut AuditRecord,
) -> Result<(), SessionError> {
    let mut skipped_here = 0;
    let summary = match opened.open.direction {
        Direction::Push => serve_push(connection, opened, config, client, watch).await.map(|(summary, costs)| {
            record.store = costs;
            summary
        }),
        Direction::Pull if opened.open.at.is_some() || config.store.is_some() => {
            let features = opened.client_features();
            let Opened { send, ctrl_in, reader, open, .. } = opened;
            let pulled = serve_pull_at(connection, send, ctrl_in, config, (features, open), watch).await;
            drop(reader);
            pulled.map(|(summary, skipped, costs)| {
                skipped_here = skipped;
                record.store = costs;
                summary
            })
        }
        Direction::Pull => {
            let features = opened.client_features();
            let Opened { send, ctrl_in, reader, open, .. } = opened;
            let pulled = serve_pull(connection, send, ctrl_in, config, (features, open), watch).await;
            drop(reader);
            pulled.map(|(sender, scan_skipped)| {
                skipped_here = scan_skipped + sender.skipped().len() as u64;
                sender.summary().copied()
            })
        }
        Direction::Snapshots | Direction::Forget | Direction::Prune => {
            let Opened { send, reader, open, .. } = opened;
            let answered = serve_history(connection, send, open, config).await;
            drop(reader);
            return answered.map(|(count, costs)| {
                record.snapshots = Some(count);
                record.store = costs;
            });
        }
    };
    summary.map(|summary| {
        record.count(&summary.unwrap_or_default());
        record.skipped(skipped_here);
    })
}
