//! Server metrics for Prometheus (`serve --metrics ADDR`): sessions by
//! outcome and those under way, wire bytes by client and tag, refusals by
//! reason, session durations, and per tree the time of its last complete
//! push, served as text on `GET /metrics`.
//!
//! Label values never come from what a client may choose freely: clients
//! are the admitted ones (any other is `unknown`), trees are those a push
//! wrote to (an admitted client's, with a grant for it), reasons and
//! outcomes are fixed lists, and a client's tag sets are capped at
//! [`MAX_TAG_SETS`] (more are counted as `other`).
//!
//! The last complete push of each tree survives a restart: each complete
//! push writes it to [`LAST_COMPLETE_FILE`] in the server's state
//! directory, read back at start. A tree that file does not list yet (one
//! pushed before metrics were on, or on a server whose store is on an
//! object store, which has no state directory) starts from the history
//! store's newest snapshot not marked partial. The file is needed because
//! a snapshot does not record entries the client skipped (it learns of
//! them only after the commit), while the session's outcome does.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::convert::Infallible;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use xfer_protocol::CloseCode;

use crate::fs::history::SnapshotRecord;
use crate::net::audit::AuditRecord;

/// Where a server with metrics keeps each tree's last complete push (in
/// its state directory): a JSON object of tree to Unix time.
pub const LAST_COMPLETE_FILE: &str = "last-complete.json";

/// Distinct tag sets counted apart per client; a client's further sets
/// are counted as `other`, so a client cannot grow the label set.
pub const MAX_TAG_SETS: usize = 16;

/// Scrapes served at once; more connections wait for their turn.
const MAX_SCRAPES: usize = 4;

/// Longest one scrape connection may stay open (a slow or stuck client
/// holds a slot no longer).
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(10);

/// What OpenMetrics text is served as (Prometheus reads it).
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SessionLabels {
    direction: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClientLabels {
    client: String,
    tag: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DirectionLabels {
    direction: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TreeLabels {
    tree: String,
}

/// Session durations, in seconds: 0.5 s to about 4 days, by fours.
fn duration_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.5, 4.0, 10))
}

/// The server's metrics, shared by its sessions.
pub struct Metrics {
    registry: Registry,
    sessions: Family<SessionLabels, Counter>,
    active: Gauge,
    received: Family<ClientLabels, Counter>,
    sent: Family<ClientLabels, Counter>,
    refusals: Family<ReasonLabels, Counter>,
    durations: Family<DirectionLabels, Histogram>,
    last_complete: Family<TreeLabels, Gauge>,
    last_push: Family<TreeLabels, Gauge>,
    /// The tag sets counted apart so far, per client.
    tag_sets: Mutex<HashMap<String, HashSet<String>>>,
    /// Where the last complete pushes are kept, and what it holds.
    complete_file: Option<PathBuf>,
    completed: Mutex<BTreeMap<String, i64>>,
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// Metrics with nothing counted yet.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("xfer");
        let metrics = Metrics {
            sessions: Family::default(),
            active: Gauge::default(),
            received: Family::default(),
            sent: Family::default(),
            refusals: Family::default(),
            durations: Family::new_with_constructor(duration_histogram),
            last_complete: Family::default(),
            last_push: Family::default(),
            tag_sets: Mutex::new(HashMap::new()),
            complete_file: None,
            completed: Mutex::new(BTreeMap::new()),
            registry: Registry::default(),
        };
        registry.register("sessions", "Sessions ended, by request and outcome", metrics.sessions.clone());
        registry.register("sessions_active", "Sessions under way", metrics.active.clone());
        registry.register(
            "received_bytes",
            "UDP bytes received from clients (QUIC included), by client and tag set",
            metrics.received.clone(),
        );
        registry.register(
            "sent_bytes",
            "UDP bytes sent to clients (QUIC included), by client and tag set",
            metrics.sent.clone(),
        );
        registry.register("refusals", "Connections and sessions refused, by reason", metrics.refusals.clone());
        registry.register(
            "session_duration_seconds",
            "Wall time of sessions, by request",
            metrics.durations.clone(),
        );
        registry.register(
            "tree_last_complete_push_timestamp_seconds",
            "Unix time of the last push of the tree that committed everything (0: none yet)",
            metrics.last_complete.clone(),
        );
        registry.register(
            "tree_last_push_timestamp_seconds",
            "Unix time of the last push of the tree, complete or not",
            metrics.last_push.clone(),
        );
        Metrics { registry, ..metrics }
    }

    /// Keeps each tree's last complete push in `file` (see
    /// [`LAST_COMPLETE_FILE`]).
    pub fn keep_in(self, file: PathBuf) -> Metrics {
        Metrics { complete_file: Some(file), ..self }
    }

    /// Sets each tree's last push and last complete push from the history
    /// store's snapshots, then the last complete pushes from the file (at
    /// start: what a restart must not forget).
    pub fn seed(&self, snapshots: &[SnapshotRecord]) {
        for snapshot in snapshots {
            let tree = TreeLabels { tree: snapshot.tree.clone() };
            raise(&self.last_push.get_or_create(&tree), snapshot.time);
            let complete = self.last_complete.get_or_create(&tree);
            if !snapshot.partial {
                raise(&complete, snapshot.time);
            }
        }
        let Some(file) = &self.complete_file else { return };
        let kept: BTreeMap<String, i64> = match std::fs::read(file) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                tracing::warn!(file = %file.display(), error = %e, "metrics: unreadable; using the snapshots");
                BTreeMap::new()
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => {
                tracing::warn!(file = %file.display(), error = %e, "metrics: unreadable; using the snapshots");
                BTreeMap::new()
            }
        };
        for (tree, time) in &kept {
            let tree = TreeLabels { tree: tree.clone() };
            self.last_complete.get_or_create(&tree).set(*time);
            raise(&self.last_push.get_or_create(&tree), *time);
        }
        *self.completed.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = kept;
    }

    /// A session started; the guard counts it as ended when dropped.
    pub fn session_started(self: &Arc<Self>) -> ActiveSession {
        self.active.inc();
        ActiveSession(self.clone())
    }

    /// Counts a session that ended as `record` says, closed with `code`
    /// (none when it ended well); `admitted` tells whether its client is
    /// one the server knows (else it is counted as `unknown`).
    pub fn session_ended(&self, record: &AuditRecord, code: Option<CloseCode>, admitted: bool) {
        let direction = record.direction.unwrap_or("none").to_string();
        let outcome = SessionLabels { direction: direction.clone(), outcome: record.result.to_string() };
        self.sessions.get_or_create(&outcome).inc();
        if matches!(record.result, "refused" | "busy") {
            self.refused(code.map_or("unknown", reason_name));
        }
        let client = if admitted { record.client.clone() } else { "unknown".to_string() };
        let tag = self.tag_label(&client, record);
        let labels = ClientLabels { client, tag };
        self.received.get_or_create(&labels).inc_by(record.wire_bytes_received);
        self.sent.get_or_create(&labels).inc_by(record.wire_bytes_sent);
        self.durations.get_or_create(&DirectionLabels { direction }).observe(record.duration_s);
        if let (Some("push"), Some(tree), true) = (record.direction, &record.path, admitted) {
            self.pushed(tree, record.result);
        }
    }

    /// Counts a connection refused before any session (`reason`: a fixed
    /// name such as `handshakes`).
    pub fn refused(&self, reason: &str) {
        self.refusals.get_or_create(&ReasonLabels { reason: reason.to_string() }).inc();
    }

    /// Moves `tree`'s times after a push that ended with `result`: a
    /// complete one moves both, one that may have committed part of the
    /// tree only the last push.
    fn pushed(&self, tree: &str, result: &str) {
        if !matches!(result, "ok" | "partial" | "cancelled" | "failed") {
            return;
        }
        let now = unix_now();
        let labels = TreeLabels { tree: tree.to_string() };
        self.last_push.get_or_create(&labels).set(now);
        let complete = self.last_complete.get_or_create(&labels);
        if result == "ok" {
            complete.set(now);
            self.keep_complete(tree, now);
        }
    }

    /// Writes `tree`'s last complete push to the file, if there is one: a
    /// temporary renamed over it, so a crash leaves the old file or the new.
    fn keep_complete(&self, tree: &str, time: i64) {
        let Some(file) = &self.complete_file else { return };
        let mut completed = self.completed.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        completed.insert(tree.to_string(), time);
        let temp = file.with_extension("json.tmp");
        let dir = file.parent().filter(|d| !d.as_os_str().is_empty());
        let written = serde_json::to_vec(&*completed)
            .map_err(std::io::Error::other)
            .and_then(|bytes| dir.map_or(Ok(()), std::fs::create_dir_all).map(|()| bytes))
            .and_then(|bytes| std::fs::write(&temp, bytes))
            .and_then(|()| std::fs::rename(&temp, file));
        if let Err(e) = written {
            tracing::warn!(file = %file.display(), error = %e, "metrics: cannot keep the last complete push");
        }
    }

    /// The session's tags as one label value (`key:value` pairs in key
    /// order, `;` between them), or `other` past the client's
    /// [`MAX_TAG_SETS`].
    fn tag_label(&self, client: &str, record: &AuditRecord) -> String {
        let tags: Vec<String> = record.tags.iter().map(|(k, v)| format!("{k}:{v}")).collect();
        let tags = tags.join(";");
        let mut known = self.tag_sets.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let sets = known.entry(client.to_string()).or_default();
        if sets.contains(&tags) || sets.len() < MAX_TAG_SETS {
            sets.insert(tags.clone());
            tags
        } else {
            "other".to_string()
        }
    }

    /// The metrics as OpenMetrics text.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}

/// A session under way; counted as ended when dropped.
pub struct ActiveSession(Arc<Metrics>);

impl Drop for ActiveSession {
    fn drop(&mut self) {
        self.0.active.dec();
    }
}

/// Sets `gauge` to `time` if that is later than what it holds.
fn raise(gauge: &Gauge, time: i64) {
    if time > gauge.get() {
        gauge.set(time);
    }
}

fn unix_now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// A refusal's reason label: the close code's name in snake case.
fn reason_name(code: CloseCode) -> &'static str {
    match code {
        CloseCode::Unauthorized => "unauthorized",
        CloseCode::ReadOnly => "read_only",
        CloseCode::OutsideAllowedPath => "outside_allowed_path",
        CloseCode::Busy => "busy",
        _ => "other",
    }
}

/// The HTTP endpoint serving [`Metrics`] on `GET /metrics`; it stops when
/// dropped or when its server shuts down.
pub struct MetricsEndpoint {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for MetricsEndpoint {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl MetricsEndpoint {
    /// Listens on `addr` (TCP) for scrapes of `metrics` until `stop`
    /// fires. Must be called inside a tokio runtime.
    ///
    /// # Errors
    /// The socket cannot be bound.
    pub fn start(addr: SocketAddr, metrics: Arc<Metrics>, stop: CancellationToken) -> std::io::Result<Self> {
        let listener = std::net::TcpListener::bind(addr)?;
        listener.set_nonblocking(true)?;
        let listener = tokio::net::TcpListener::from_std(listener)?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(serve_scrapes(listener, metrics, stop));
        Ok(MetricsEndpoint { addr, task })
    }

    /// The address it listens on (the real port when asked for 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

/// Accepts scrape connections, [`MAX_SCRAPES`] at a time, each for at
/// most [`SCRAPE_TIMEOUT`].
async fn serve_scrapes(listener: tokio::net::TcpListener, metrics: Arc<Metrics>, stop: CancellationToken) {
    let slots = Arc::new(Semaphore::new(MAX_SCRAPES));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else { return };
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = stop.cancelled() => return,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::warn!(error = %e, "metrics endpoint: cannot accept a connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let response = answer(&request, &metrics);
                async move { Ok::<_, Infallible>(response) }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .keep_alive(false)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            let _ = tokio::time::timeout(SCRAPE_TIMEOUT, connection).await;
            drop(slot);
        });
    }
}

type Body = http_body_util::Full<hyper::body::Bytes>;

/// The answer to one request: the metrics on `GET /metrics`, else 404 or 405.
fn answer<B>(request: &hyper::Request<B>, metrics: &Metrics) -> hyper::Response<Body> {
    let (status, content_type, body) = match (request.method(), request.uri().path()) {
        (&hyper::Method::GET | &hyper::Method::HEAD, "/metrics") => {
            (hyper::StatusCode::OK, CONTENT_TYPE, metrics.encode())
        }
        (_, "/metrics") => (hyper::StatusCode::METHOD_NOT_ALLOWED, "text/plain", "use GET\n".to_string()),
        _ => (hyper::StatusCode::NOT_FOUND, "text/plain", "the metrics are at /metrics\n".to_string()),
    };
    let mut response = hyper::Response::new(Body::new(body.into()));
    *response.status_mut() = status;
    if let Ok(value) = hyper::header::HeaderValue::from_str(content_type) {
        response.headers_mut().insert(hyper::header::CONTENT_TYPE, value);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(direction: &'static str, result: &'static str, client: &str, tags: &[(&str, &str)]) -> AuditRecord {
        AuditRecord {
            direction: Some(direction),
            result,
            client: client.to_string(),
            path: Some("/site".into()),
            tags: tags.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            wire_bytes_received: 1000,
            wire_bytes_sent: 10,
            duration_s: 1.0,
            ..AuditRecord::default()
        }
    }

    /// A client's tag sets beyond the cap count as `other`; an unknown
    /// client's never name it.
    #[test]
    fn label_sets_are_bounded() {
        let metrics = Metrics::new();
        for i in 0..MAX_TAG_SETS + 5 {
            let value = i.to_string();
            metrics.session_ended(&record("push", "ok", "xfer:a", &[("n", &value)]), None, true);
        }
        metrics.session_ended(&record("push", "refused", "xfer:intruder", &[]), Some(CloseCode::Unauthorized), false);
        let text = metrics.encode();
        let series = text.lines().filter(|l| l.starts_with("xfer_received_bytes_total{")).count();
        assert_eq!(series, MAX_TAG_SETS + 2, "{text}");
        assert!(text.contains(r#"xfer_received_bytes_total{client="xfer:a",tag="other"} 5000"#), "{text}");
        assert!(!text.contains("intruder"), "{text}");
        assert!(text.contains(r#"xfer_refusals_total{reason="unauthorized"} 1"#), "{text}");
    }

    /// A complete push is kept in the file and wins, after a restart,
    /// over a newer snapshot that does not know its client skipped
    /// entries; a partial push is not kept.
    #[test]
    fn last_complete_push_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join(LAST_COMPLETE_FILE);
        let first = Metrics::new().keep_in(file.clone());
        first.session_ended(&record("push", "ok", "xfer:a", &[]), None, true);
        let kept: BTreeMap<String, i64> = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
        let time = kept["/site"];
        first.session_ended(&record("push", "partial", "xfer:a", &[]), None, true);
        let unchanged: BTreeMap<String, i64> = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
        assert_eq!(unchanged, kept);
        let restarted = Metrics::new().keep_in(file);
        let mut newer = snapshot("/site", time + 100, false);
        newer.client = "xfer:a".into();
        restarted.seed(&[newer]);
        let text = restarted.encode();
        let line = format!(r#"xfer_tree_last_complete_push_timestamp_seconds{{tree="/site"}} {time}"#);
        assert!(text.contains(&line), "{text}");
    }

    fn snapshot(tree: &str, time: i64, partial: bool) -> SnapshotRecord {
        SnapshotRecord {
            id: String::new(),
            time,
            nanos: 0,
            time_text: String::new(),
            tree: tree.to_string(),
            client: String::new(),
            host: String::new(),
            source: String::new(),
            tags: Vec::new(),
            partial,
            files: 0,
            dirs: 0,
            bytes: 0,
            root: String::new(),
        }
    }

    /// Seeded from snapshots, the last complete push is the newest
    /// snapshot not marked partial; a tree with none has 0.
    #[test]
    fn seeding_takes_complete_snapshots_only() {
        let metrics = Metrics::new();
        metrics.seed(&[snapshot("/a", 100, false), snapshot("/a", 200, true), snapshot("/b", 300, true)]);
        let text = metrics.encode();
        assert!(text.contains(r#"xfer_tree_last_complete_push_timestamp_seconds{tree="/a"} 100"#), "{text}");
        assert!(text.contains(r#"xfer_tree_last_push_timestamp_seconds{tree="/a"} 200"#), "{text}");
        assert!(text.contains(r#"xfer_tree_last_complete_push_timestamp_seconds{tree="/b"} 0"#), "{text}");
    }
}
