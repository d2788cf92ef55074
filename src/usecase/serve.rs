//! Serving: a receiver for remote clients on a UDP port, with its grants,
//! limits, audit log and timeouts, stopped gracefully at commit points.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::retention::{apply, Retention, RetentionRun};
use super::schedule::Clock;
use super::TransferError;
use crate::fs::history::StoreUrl;
use crate::net::access::Access;
use crate::net::audit::{AuditLog, AuditRecord};
use crate::net::served::{ServeConfig, SERVER_STATE_DIR};
use crate::net::identity::{Fingerprint, Identity};
use crate::net::server::Listener;
use crate::net::Congestion;
use crate::net::limiter::{local_time_now, Limiter};
use crate::net::metrics::{Metrics, MetricsEndpoint, LAST_COMPLETE_FILE};
use crate::pacing::{Flow, Rate, Timetable};

/// Everything a server runs with: the use case's view of the options.
#[derive(Clone)]
pub struct ServeSettings {
    /// The directory served (created if missing); unused with `store`.
    pub root: PathBuf,
    /// A store-only server: the history store every tree is kept in (a
    /// directory, created if missing), with no mirror tree.
    pub store: Option<String>,
    /// Who may read and write where.
    pub access: Access,
    /// Cap on each session's data direction.
    pub per_session: Rate,
    /// Cap on all sessions together, by the time of the week (one rate
    /// for both directions: a timetable's first, UP, rate).
    pub total: Option<Timetable>,
    /// The audit log; `None` keeps it in `ROOT/.xfer/audit.jsonl`.
    pub audit_log: Option<PathBuf>,
    /// Whether to keep an audit log at all.
    pub audit: bool,
    /// Sessions served at once.
    pub max_sessions: usize,
    /// A session whose client moves nothing for this long is closed.
    pub idle_timeout: Duration,
    /// Longest a handshake may take.
    pub handshake_timeout: Duration,
    /// The congestion controller of the server's endpoint.
    pub congestion: Congestion,
    /// The clock the total's timetable is read against; `None` is the
    /// system's local time.
    pub clock: Option<Clock>,
    /// The trees' retention policies, applied on their schedule.
    pub retention: Retention,
    /// One chunk index for all clients ([`ServeConfig::dedup_across_clients`]).
    pub dedup_across_clients: bool,
    /// Where to serve Prometheus metrics over HTTP (`GET /metrics`).
    pub metrics: Option<SocketAddr>,
}

/// A running server.
pub struct Serving {
    listener: Listener,
    shutdown: CancellationToken,
    fingerprint: Fingerprint,
    _pacer: Option<Pacer>,
    pruner: Option<Pruner>,
    metrics: Option<MetricsEndpoint>,
}

/// The task that applies retention on its schedule. Dropped, it tells a
/// run under way to stop at its next step and ends the schedule.
struct Pruner {
    task: Option<tokio::task::JoinHandle<()>>,
    stop: CancellationToken,
}

impl Drop for Pruner {
    fn drop(&mut self) {
        self.stop.cancel();
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// The task that keeps the total cap to its timetable; it ends with the
/// server.
struct Pacer(tokio::task::JoinHandle<()>);

impl Drop for Pacer {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Serves `settings.root` on `listen` as `identity`, inside the current
/// tokio runtime.
///
/// # Errors
/// The root cannot be made or opened, the audit log cannot be opened, or
/// the socket cannot be bound.
pub fn start(listen: SocketAddr, identity: &Identity, settings: ServeSettings) -> crate::Result<Serving> {
    let (mut config, state_dir) = served(&settings)?;
    let audit = match (settings.audit, &settings.audit_log) {
        (false, _) => None,
        (true, Some(path)) => Some(Arc::new(AuditLog::open(path)?)),
        (true, None) => {
            let store = || crate::Error::AuditLogPlace { store: settings.store.clone().unwrap_or_default() };
            let state_dir = state_dir.clone().ok_or_else(store)?;
            Some(Arc::new(AuditLog::open(&state_dir.join("audit.jsonl"))?))
        }
    };
    config.per_session = settings.per_session;
    config.max_sessions = settings.max_sessions;
    config.idle_timeout = settings.idle_timeout;
    config.handshake_timeout = settings.handshake_timeout;
    config.congestion = settings.congestion;
    config.audit = audit;
    config.dedup_across_clients = settings.dedup_across_clients;
    let pacer = settings.total.clone().map(|timetable| pace(&mut config, timetable, settings.clock.clone()));
    let shutdown = config.shutdown.clone();
    let metrics = settings.metrics.map(|addr| serve_metrics(&mut config, addr, state_dir.as_deref())).transpose()?;
    let pruner = schedule_retention(&config, settings.retention);
    let listener = match Listener::start(listen, identity, config) {
        Ok(listener) => listener,
        Err(e) => {
            shutdown.cancel();
            return Err(crate::Error::io(listen.to_string(), e));
        }
    };
    Ok(Serving { listener, shutdown, fingerprint: identity.fingerprint(), _pacer: pacer, pruner, metrics })
}

/// Counts `config`'s sessions and serves the counts on `addr`. Each
/// tree's last complete push is kept in `state_dir` and starts from there
/// and from the history store's snapshots, so a restart keeps it.
fn serve_metrics(config: &mut ServeConfig, addr: SocketAddr, state_dir: Option<&Path>) -> crate::Result<MetricsEndpoint> {
    let metrics = match state_dir {
        Some(dir) => Metrics::new().keep_in(dir.join(LAST_COMPLETE_FILE)),
        None => Metrics::new(),
    };
    let snapshots = if config.history_at().may_exist() {
        config.open_history().and_then(|history| history.snapshots()).unwrap_or_else(|e| {
            // Metrics are no reason to refuse serving backups: trees the
            // kept file does not list start from their next push instead.
            tracing::warn!(error = %e, "metrics: cannot read the snapshots");
            Vec::new()
        })
    } else {
        Vec::new()
    };
    metrics.seed(&snapshots);
    let metrics = Arc::new(metrics);
    config.metrics = Some(metrics.clone());
    MetricsEndpoint::start(addr, metrics, config.shutdown.clone()).map_err(|e| crate::Error::io(addr.to_string(), e))
}

/// What `settings` serve, and where the server's own files go by default:
/// `ROOT/.xfer`, for a store-only server the store's directory, and none
/// for a store on an object store.
fn served(settings: &ServeSettings) -> crate::Result<(ServeConfig, Option<PathBuf>)> {
    if let Some(store) = &settings.store {
        let (store, local) = match StoreUrl::parse(store) {
            // A relative path: made absolute, so the store is found again
            // whatever the server's working directory.
            Err(_) if !store.contains(':') => {
                let dir = PathBuf::from(store);
                std::fs::create_dir_all(&dir).map_err(|e| crate::Error::io(&dir, e))?;
                let dir = dir.canonicalize().map_err(|e| crate::Error::io(&dir, e))?;
                let url = dir.to_str().map(str::to_string).ok_or_else(|| crate::Error::StoreUrl {
                    url: store.clone(),
                    reason: "the path is not UTF-8; give another".into(),
                })?;
                (url, Some(dir))
            }
            Err(e) => return Err(e),
            Ok(StoreUrl::Dir(dir)) => (store.clone(), Some(dir)),
            Ok(_) => (store.clone(), None),
        };
        let config = ServeConfig::store_only(store, settings.access.clone());
        // Opened once now: a bad URL, missing credentials or a store of
        // another format fail the start, not every push.
        drop(config.open_history()?);
        return Ok((config, local));
    }
    let root = &settings.root;
    std::fs::create_dir_all(root).map_err(|e| crate::Error::io(root, e))?;
    let root = root.canonicalize().map_err(|e| crate::Error::io(root, e))?;
    let state_dir = root.join(SERVER_STATE_DIR);
    Ok((ServeConfig::new(root, settings.access.clone()), Some(state_dir)))
}

/// Keeps the server's total cap to `timetable`, re-read every few seconds.
fn pace(config: &mut ServeConfig, timetable: Timetable, clock: Option<Clock>) -> Pacer {
    let now = move || clock.as_ref().map_or_else(|| Some(local_time_now()), |clock| clock());
    let rate = |at| timetable.rate_at(at, Flow::Up);
    config.total = Limiter::new(now().map_or(Rate(None), rate));
    let limiter = config.total.clone();
    Pacer(tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            if let Some(at) = now() {
                limiter.set_rate(timetable.rate_at(at, Flow::Up));
            }
        }
    }))
}

/// Applies `retention` every interval (the first one interval after
/// start) until the server shuts down; `None` when there is nothing to
/// schedule.
fn schedule_retention(config: &ServeConfig, retention: Retention) -> Option<Pruner> {
    let every = retention.every.filter(|_| retention.is_set())?;
    let stop = config.shutdown.child_token();
    let (dir, audit, token) = (config.history_at(), config.audit.clone(), stop.clone());
    let retention = Arc::new(retention);
    let task = tokio::spawn(async move {
        let stop = token;
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(every) => {}
            }
            let started = std::time::Instant::now();
            let (dir, retention, token) = (dir.clone(), retention.clone(), stop.clone());
            let outcome = tokio::task::spawn_blocking(move || apply(&dir, &retention, &token))
                .await
                .map_err(|e| TransferError::Task { what: "applying retention", reason: e.to_string() })
                .and_then(|result| result);
            report_retention(audit.as_deref(), &outcome, started.elapsed());
        }
    });
    Some(Pruner { task: Some(task), stop })
}

/// Logs one retention run and writes its audit line.
fn report_retention(audit: Option<&AuditLog>, outcome: &Result<RetentionRun, TransferError>, took: Duration) {
    let mut record = AuditRecord {
        client: "server".into(),
        path: Some("/".into()),
        direction: Some("retention"),
        duration_s: took.as_secs_f64(),
        ..AuditRecord::now()
    };
    match outcome {
        Ok(run) => {
            let prune = run.prune.clone().unwrap_or_default();
            tracing::info!(
                trees = run.trees,
                forgotten = run.forgotten,
                packs_deleted = prune.packs_deleted,
                packs_doomed = prune.packs_doomed,
                bytes_freed = prune.bytes_freed,
                bytes_after = prune.bytes_after,
                stopped = run.stopped,
                "retention applied"
            );
            record.result = if run.stopped { "cancelled" } else { "ok" };
            record.snapshots = Some(run.forgotten);
            record.trees = Some(run.trees);
            record.packs_deleted = Some(prune.packs_deleted);
            record.bytes_freed = Some(prune.bytes_freed);
        }
        Err(e) => {
            tracing::error!(error = %e, "retention failed");
            record.fail(None, e.to_string());
        }
    }
    if let Some(log) = audit {
        if let Err(e) = log.append(&record) {
            tracing::error!(log = %log.path().display(), error = %e, "cannot write the audit log");
        }
    }
}

impl Serving {
    /// The address it listens on.
    ///
    /// # Errors
    /// The socket's address cannot be read.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The server's fingerprint.
    pub fn fingerprint(&self) -> Fingerprint {
        self.fingerprint
    }

    /// Where the metrics are served, if they are.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().map(MetricsEndpoint::local_addr)
    }

    /// Stops accepting, lets each session reach its next commit point for
    /// up to `grace`, then closes what is left; `false` if some sessions
    /// were still running after `grace`.
    pub async fn stop(mut self, grace: Duration) -> bool {
        self.shutdown.cancel();
        let drained = self.listener.drain(grace).await;
        if let Some(mut pruner) = self.pruner.take() {
            // A run under way stops at its next step; its prune is two-phase,
            // so one cut short leaves nothing half-done.
            if let Some(task) = pruner.task.take() {
                let _ = tokio::time::timeout(grace, task).await;
            }
        }
        self.listener.close(Some(Duration::from_secs(2))).await;
        drained
    }

    /// Closes at once (open sessions end; their receivers keep what
    /// arrived whole) and waits for the endpoint to go quiet.
    pub async fn close(self) {
        self.listener.close(None).await;
    }
}
