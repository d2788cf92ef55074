//! The library API: a [`Client`] that pushes and pulls with its identity,
//! a [`Server`] to embed a receiver, their options as builders, the
//! [`Report`] of every transfer and the [`TransferError`] of one that
//! failed or was stopped.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub use crate::codec::Compression;
pub use crate::filter::FilterError;
pub use crate::fs::history::{PruneReport, Requests as StoreCosts, SnapshotRecord};
pub use crate::fs::store::FailedEntry;
pub use crate::net::access::{Access, AccessError, Grant, Refusal, Want};
pub use crate::net::admission::HANDSHAKE_TIMEOUT;
pub use crate::net::identity::{
    default_config_dir, server_authority, Fingerprint, HostTrust, Identity, IdentityError, KnownHosts,
};
pub use crate::net::limiter::local_time_now;
pub use crate::net::served::DEFAULT_MAX_SESSIONS;
pub use crate::net::{Congestion, UnknownCongestion, IDLE_TIMEOUT};
pub use crate::pacing::{LocalTime, Rate, ThrottleError, Timetable, Window};
pub use crate::plan::{DeleteLimit, DeleteRefused, DeleteRule};
pub use crate::progress::{Change, Event, Meter, Progress};
pub use crate::usecase::history::{Forgetting, Verdict};
pub use crate::usecase::retention::{Retention, RetentionRun, DEFAULT_PRUNE_EVERY};
pub use crate::usecase::{Clock, RemoteUrl, Report, TransferError, DEFAULT_CONNECT_TIMEOUT, DEFAULT_PORT, ROOT_PATH};
pub use tokio_util::sync::CancellationToken;
pub use xfer_core::retention::{parse_rules, parse_within, KeepPolicy, RetentionError, RetentionTable};

use crate::filter::Filter;
use crate::net::limiter::Limiter;
use crate::progress::ProgressSink;
use crate::usecase::history::Target;
use crate::usecase::{self, serve::ServeSettings, TransferOptions};

/// Pushes and pulls as one identity.
pub struct Client {
    identity: Identity,
}

impl Client {
    /// A client presenting `identity` (see [`Identity::load_or_create`]).
    pub fn new(identity: Identity) -> Self {
        Client { identity }
    }

    /// This client's fingerprint, for the server's allow list.
    pub fn fingerprint(&self) -> Fingerprint {
        self.identity.fingerprint()
    }

    /// Pushes the tree at `src` to `url`, whose server must present the
    /// key `server` (with `None`, the call fails with
    /// [`TransferError::UntrustedServer`] naming the key it saw).
    ///
    /// # Errors
    /// [`TransferError`]; a cancel or a closing window stops the push at a
    /// commit point with [`TransferError::Cancelled`] or
    /// [`TransferError::WindowClosed`], whose [`TransferError::report`]
    /// says what was done.
    pub async fn push(
        &self,
        src: &Path,
        url: &RemoteUrl,
        server: Option<Fingerprint>,
        options: &PushOptions,
    ) -> Result<Report, TransferError> {
        usecase::push::push(src, url, &self.identity, server, &options.0).await
    }

    /// Pulls `url`, whose server must present the key `server`, into `dest`.
    ///
    /// # Errors
    /// As [`Client::push`].
    pub async fn pull(
        &self,
        url: &RemoteUrl,
        server: Option<Fingerprint>,
        dest: &Path,
        options: &PullOptions,
    ) -> Result<Report, TransferError> {
        usecase::pull::pull(url, dest, &self.identity, server, &options.0).await
    }

    /// Pushes into a local directory through an in-process server (the same
    /// protocol and checks; no identity needed).
    ///
    /// # Errors
    /// As [`Client::push`]; overlapping source and destination are refused
    /// before anything is written.
    pub async fn push_local(src: &Path, dest: &Path, options: &PushOptions) -> Result<Report, TransferError> {
        usecase::local::push_local(src, dest, &options.0).await
    }

    fn remote<'a>(&'a self, url: &'a RemoteUrl, server: Option<Fingerprint>) -> Target<'a> {
        Target::Remote { url, identity: &self.identity, pin: server }
    }

    /// The snapshots of the tree at `url` and the trees below it, oldest
    /// first (any grant on the path may list them).
    ///
    /// # Errors
    /// As [`Client::push`]: the server's refusal, connection failures.
    pub async fn snapshots(
        &self,
        url: &RemoteUrl,
        server: Option<Fingerprint>,
    ) -> Result<Vec<SnapshotRecord>, TransferError> {
        usecase::history::snapshots(self.remote(url, server)).await
    }

    /// Forgets the snapshots `ids` name (whole ids or unique prefixes of at
    /// least 4 hex digits) at `url`; their data goes at the next prune.
    /// Only an `rw` grant may.
    ///
    /// # Errors
    /// [`TransferError::History`] for an id that names none or several;
    /// the server's refusal.
    pub async fn forget(
        &self,
        url: &RemoteUrl,
        server: Option<Fingerprint>,
        ids: &[String],
    ) -> Result<Forgetting, TransferError> {
        usecase::history::forget(self.remote(url, server), ids).await
    }

    /// Forgets the snapshots at `url` that `policy` does not keep (each
    /// tree's apart); with `dry_run`, only says which.
    ///
    /// # Errors
    /// [`TransferError::History`] for an empty policy; as [`Client::forget`].
    pub async fn forget_by_policy(
        &self,
        url: &RemoteUrl,
        server: Option<Fingerprint>,
        policy: &KeepPolicy,
        dry_run: bool,
    ) -> Result<Forgetting, TransferError> {
        usecase::history::forget_by_policy(self.remote(url, server), policy, dry_run).await
    }

    /// Deletes the history data no snapshot references any more on the
    /// server of `url`. Only an `rw` grant may.
    ///
    /// # Errors
    /// The server's refusal; its failures reading or writing the history.
    pub async fn prune(&self, url: &RemoteUrl, server: Option<Fingerprint>) -> Result<PruneReport, TransferError> {
        usecase::history::prune(self.remote(url, server)).await
    }

    /// The snapshots local pushes left of `dest` (their history is kept
    /// with their state, in `state_dir`), oldest first; none if it has no
    /// history.
    ///
    /// # Errors
    /// A history that cannot be read.
    pub async fn snapshots_local(dest: &Path, state_dir: &Path) -> Result<Vec<SnapshotRecord>, TransferError> {
        usecase::history::snapshots(Target::Local { dest, state_dir }).await
    }

    /// [`Client::forget`] for a local push destination.
    ///
    /// # Errors
    /// As [`Client::forget`]; a destination without history.
    pub async fn forget_local(dest: &Path, state_dir: &Path, ids: &[String]) -> Result<Forgetting, TransferError> {
        usecase::history::forget(Target::Local { dest, state_dir }, ids).await
    }

    /// [`Client::forget_by_policy`] for a local push destination.
    ///
    /// # Errors
    /// As [`Client::forget_by_policy`]; a destination without history.
    pub async fn forget_by_policy_local(
        dest: &Path,
        state_dir: &Path,
        policy: &KeepPolicy,
        dry_run: bool,
    ) -> Result<Forgetting, TransferError> {
        usecase::history::forget_by_policy(Target::Local { dest, state_dir }, policy, dry_run).await
    }

    /// [`Client::prune`] for a local push destination.
    ///
    /// # Errors
    /// A destination without history; failures reading or writing it.
    pub async fn prune_local(dest: &Path, state_dir: &Path) -> Result<PruneReport, TransferError> {
        usecase::history::prune(Target::Local { dest, state_dir }).await
    }

    /// The snapshots of `tree`, a directory inside the root `root` that a
    /// server on this machine serves, and of the trees below it, read from
    /// the server's history on disk (for its operator; no network).
    ///
    /// # Errors
    /// `tree` outside `root`; a root without history; a history that
    /// cannot be read.
    pub async fn snapshots_served(root: &Path, tree: &Path) -> Result<Vec<SnapshotRecord>, TransferError> {
        usecase::history::snapshots(Target::Served { root, tree }).await
    }

    /// [`Client::forget`] on a served root's tree, on disk.
    ///
    /// # Errors
    /// As [`Client::snapshots_served`] and [`Client::forget`].
    pub async fn forget_served(root: &Path, tree: &Path, ids: &[String]) -> Result<Forgetting, TransferError> {
        usecase::history::forget(Target::Served { root, tree }, ids).await
    }

    /// [`Client::forget_by_policy`] on a served root's tree, on disk.
    ///
    /// # Errors
    /// As [`Client::snapshots_served`] and [`Client::forget_by_policy`].
    pub async fn forget_by_policy_served(
        root: &Path,
        tree: &Path,
        policy: &KeepPolicy,
        dry_run: bool,
    ) -> Result<Forgetting, TransferError> {
        usecase::history::forget_by_policy(Target::Served { root, tree }, policy, dry_run).await
    }

    /// [`Client::prune`] on a served root's history, on disk (the history
    /// is shared by every tree of the root: all of it is pruned).
    ///
    /// # Errors
    /// As [`Client::snapshots_served`]; failures writing the history.
    pub async fn prune_served(root: &Path, tree: &Path) -> Result<PruneReport, TransferError> {
        usecase::history::prune(Target::Served { root, tree }).await
    }
}

/// Options of a push ([`Client::push`], [`Client::push_local`]).
#[derive(Clone, Debug)]
pub struct PushOptions(TransferOptions);

/// Options of a pull ([`Client::pull`]).
#[derive(Clone, Debug)]
pub struct PullOptions(TransferOptions);

/// The builder methods push and pull share.
macro_rules! transfer_options {
    ($options:ident) => {
        impl $options {
            /// Defaults: no deletes, quick check, automatic compression, no
            /// delete limit, a minute of waiting on a busy destination,
            /// this side's state (scan cache, memory of receivers) in
            /// `state_dir`.
            pub fn new(state_dir: impl Into<PathBuf>) -> Self {
                $options(TransferOptions::new(state_dir))
            }

            /// Delete receiver entries the source lacks.
            pub fn delete(mut self, delete: bool) -> Self {
                self.0.delete = delete;
                self
            }

            /// Re-read every source file instead of trusting size and mtime.
            pub fn checksum(mut self, checksum: bool) -> Self {
                self.0.checksum = checksum;
                self
            }

            /// How much the run may delete on the receiver. A push checks
            /// its whole plan before any change; a pull holds deletes back
            /// until the server is done, so a refused run deletes nothing.
            pub fn delete_limit(mut self, limit: DeleteLimit) -> Self {
                self.0.delete_limit = limit;
                self
            }

            /// How chunks are encoded.
            pub fn compression(mut self, compression: Compression) -> Self {
                self.0.compression = compression;
                self
            }

            /// How long to keep retrying while another session holds the
            /// destination; zero fails at once.
            pub fn busy_wait(mut self, wait: Duration) -> Self {
                self.0.busy_wait = wait;
                self
            }

            /// Cancelling `token` stops the transfer at a commit point: the
            /// receiver keeps the files it has whole and verified, and the
            /// call returns [`TransferError::Cancelled`] with its report.
            pub fn cancel(mut self, token: CancellationToken) -> Self {
                self.0.cancel = token;
                self
            }

            /// Where progress events go (called from the transfer's
            /// threads: hand slow work off to a channel).
            pub fn progress(mut self, progress: Arc<dyn Progress>) -> Self {
                self.0.progress = ProgressSink::new(progress);
                self
            }

            /// A fixed cap on the data direction.
            pub fn bwlimit(mut self, rate: Rate) -> Self {
                self.0.bwlimit = Limiter::new(rate);
                self
            }

            /// A cap on the data direction that follows a weekly timetable.
            pub fn bwlimit_timetable(mut self, timetable: Timetable) -> Self {
                self.0.schedule.timetable = Some(timetable);
                self
            }

            /// Runs only inside `window`: outside it the call fails with
            /// [`TransferError::OutsideWindow`], or with `wait` waits for it
            /// to open; a window that closes stops the transfer at a commit
            /// point ([`TransferError::WindowClosed`]).
            pub fn window(mut self, window: Window, wait: bool) -> Self {
                self.0.schedule.window = Some(window);
                self.0.schedule.wait = wait;
                self
            }

            /// The clock the window and timetable are read against (by
            /// default the system's local time).
            pub fn clock(mut self, clock: Clock) -> Self {
                self.0.schedule.clock = Some(clock);
                self
            }

            /// `key=value` labels for the server's audit log and this
            /// side's: at most 16, keys without `=`, each at most 128 bytes.
            pub fn tags(mut self, tags: BTreeMap<String, String>) -> Self {
                self.0.tags = tags;
                self
            }

            /// A JSON-lines file to which this side appends its record of
            /// the session, success or not.
            pub fn log(mut self, path: impl Into<PathBuf>) -> Self {
                self.0.log = Some(path.into());
                self
            }

            /// The congestion controller of this side's connection.
            pub fn congestion(mut self, congestion: Congestion) -> Self {
                self.0.congestion = congestion;
                self
            }

            /// How long to wait for the server to answer (name resolution
            /// and handshake) before failing with [`TransferError::Connect`];
            /// [`DEFAULT_CONNECT_TIMEOUT`] unless set.
            pub fn connect_timeout(mut self, timeout: Duration) -> Self {
                self.0.connect_timeout = timeout;
                self
            }

            /// The cancel token (a clone): cancel it to stop the transfer.
            pub fn cancel_token(&self) -> CancellationToken {
                self.0.cancel.clone()
            }
        }
    };
}

transfer_options!(PushOptions);
transfer_options!(PullOptions);

impl PullOptions {
    /// Restores the server's snapshot `selector` names instead of its
    /// current tree: `latest`, an id (or a unique prefix of at least 4 hex
    /// digits), or a time (RFC 3339 or `YYYY-MM-DD[ HH:MM[:SS]]`, UTC: the
    /// last snapshot at or before it). The URL may name a tree, a
    /// directory inside one, or one file.
    pub fn at(mut self, selector: impl Into<String>) -> Self {
        self.0.at = Some(selector.into());
        self
    }
}

impl PushOptions {
    /// Leaves out the source entries `excludes` match, and never deletes
    /// receiver entries they match.
    pub fn exclude(mut self, excludes: Excludes) -> Self {
        self.0.filter = (!excludes.0.is_empty()).then(|| Arc::new(excludes.0));
        self
    }

    /// Compare and plan only: nothing is written and no chunk travels; the
    /// report says what a real run would do, with the chunk bytes
    /// estimated here (without deltas, so an upper bound).
    pub fn dry_run(mut self, dry_run: bool) -> Self {
        self.0.dry_run = dry_run;
        self
    }
}

/// Exclusion patterns of a push, with git's ignore rules: the last match
/// wins, `!` re-includes.
#[derive(Clone, Debug, Default)]
pub struct Excludes(Filter);

impl Excludes {
    /// No patterns.
    pub fn new() -> Self {
        Excludes::default()
    }

    /// The patterns of `src/.xferignore`, if there is one.
    ///
    /// # Errors
    /// The file cannot be read, or holds a bad pattern.
    pub fn of_source(src: &Path) -> Result<Self, FilterError> {
        crate::fs::ignore::with_root_ignore(src).map(Excludes)
    }

    /// Adds the patterns of a file, one per line.
    ///
    /// # Errors
    /// As [`Excludes::of_source`].
    pub fn add_file(&mut self, path: &Path) -> Result<(), FilterError> {
        crate::fs::ignore::add_file(&mut self.0, path)
    }

    /// Adds one pattern; `origin` names where it came from, for errors.
    ///
    /// # Errors
    /// A bad pattern.
    pub fn add_pattern(&mut self, pattern: &str, origin: &str) -> Result<(), FilterError> {
        self.0.add_pattern(pattern, origin)
    }

    /// Whether no pattern was added.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Options of a [`Server`].
#[derive(Clone)]
pub struct ServerOptions(ServeSettings);

impl ServerOptions {
    /// Serves `root` (created if missing) to the clients `access` admits,
    /// with no bandwidth limit, no audit log, at most
    /// [`DEFAULT_MAX_SESSIONS`] sessions and the default timeouts.
    pub fn new(root: impl Into<PathBuf>, access: Access) -> Self {
        ServerOptions(ServeSettings {
            root: root.into(),
            store: None,
            access,
            per_session: Rate(None),
            total: None,
            audit_log: None,
            audit: false,
            max_sessions: DEFAULT_MAX_SESSIONS,
            idle_timeout: IDLE_TIMEOUT,
            handshake_timeout: HANDSHAKE_TIMEOUT,
            congestion: Congestion::default(),
            clock: None,
            retention: Retention::default(),
            dedup_across_clients: false,
            metrics: None,
        })
    }

    /// Serves Prometheus metrics on `addr` over HTTP (`GET /metrics`):
    /// sessions by outcome and under way, wire bytes by client and tag,
    /// refusals by reason, session durations, and each tree's last
    /// complete push (derived from the history at start, so it survives a
    /// restart).
    pub fn metrics(mut self, addr: SocketAddr) -> Self {
        self.0.metrics = Some(addr);
        self
    }

    /// Dedups across clients: a push is not sent the chunks any client
    /// already stored on this server (off by default, each client's own
    /// only). A client can then learn that the server holds a chunk it
    /// never sent, i.e. that another client stored the same content: for
    /// clients that trust each other, such as one organisation's machines.
    pub fn dedup_across_clients(mut self, on: bool) -> Self {
        self.0.dedup_across_clients = on;
        self
    }

    /// A store-only server: keeps every tree pushed to it in the history
    /// store at `store` (a directory, created if missing) and no mirror
    /// tree; a pull rebuilds files from the store's chunks, a pull without
    /// a snapshot selector gets the latest snapshot. Otherwise as
    /// [`ServerOptions::new`]; the default audit log is `STORE/audit.jsonl`.
    pub fn store(store: impl Into<String>, access: Access) -> Self {
        let mut options = ServerOptions::new(PathBuf::new(), access);
        options.0.store = Some(store.into());
        options
    }

    /// The trees' retention policies and how often the server applies
    /// them (forget what a tree's policy does not keep, then prune the
    /// history; the first run one interval after start).
    pub fn retention(mut self, retention: Retention) -> Self {
        self.0.retention = retention;
        self
    }

    /// A cap on each session's data direction.
    pub fn bwlimit(mut self, rate: Rate) -> Self {
        self.0.per_session = rate;
        self
    }

    /// A cap on all sessions together that follows a weekly timetable
    /// (one rate both ways: a timetable's first, UP, rate);
    /// [`Timetable::constant`] for a fixed cap.
    pub fn bwlimit_total(mut self, timetable: Timetable) -> Self {
        self.0.total = Some(timetable);
        self
    }

    /// The clock the timetable is read against (by default the system's
    /// local time).
    pub fn clock(mut self, clock: Clock) -> Self {
        self.0.clock = Some(clock);
        self
    }

    /// Appends one JSON line per session to `path`.
    pub fn audit_log(mut self, path: impl Into<PathBuf>) -> Self {
        (self.0.audit, self.0.audit_log) = (true, Some(path.into()));
        self
    }

    /// Keeps the audit log in the served root's state directory
    /// (`ROOT/.xfer/audit.jsonl`; a store-only server's in the store,
    /// `STORE/audit.jsonl`).
    pub fn audit_log_in_root(mut self) -> Self {
        (self.0.audit, self.0.audit_log) = (true, None);
        self
    }

    /// Sessions served at once; a connection over the limit is refused
    /// as busy (clients retry).
    pub fn max_sessions(mut self, max: usize) -> Self {
        self.0.max_sessions = max;
        self
    }

    /// A session whose client moves nothing for this long is closed.
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.0.idle_timeout = timeout;
        self
    }

    /// Longest a handshake may take.
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.0.handshake_timeout = timeout;
        self
    }

    /// The congestion controller of the server's endpoint (it paces the
    /// data of pulls).
    pub fn congestion(mut self, congestion: Congestion) -> Self {
        self.0.congestion = congestion;
        self
    }
}

/// A receiver serving a directory on a UDP port, running on the current
/// tokio runtime until [`Server::stop`] or [`Server::shutdown`].
pub struct Server(usecase::serve::Serving);

impl Server {
    /// Serves as `options` say on `listen`, as `identity`. Must be called
    /// inside a tokio runtime.
    ///
    /// # Errors
    /// The root or the audit log cannot be opened, or the socket cannot be
    /// bound.
    pub fn start(listen: SocketAddr, identity: &Identity, options: ServerOptions) -> Result<Server, crate::Error> {
        usecase::serve::start(listen, identity, options.0).map(Server)
    }

    /// The address it listens on (the real port when `listen` asked for 0).
    ///
    /// # Errors
    /// The socket's address cannot be read.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.0.local_addr()
    }

    /// The server's fingerprint, for clients to pin.
    pub fn fingerprint(&self) -> Fingerprint {
        self.0.fingerprint()
    }

    /// Where the metrics are served (the real port when asked for 0), if
    /// [`ServerOptions::metrics`] asked for them.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.0.metrics_addr()
    }

    /// Stops gracefully: accepts nothing new, lets each session reach its
    /// next commit point for up to `grace` (each is recorded), then
    /// closes what is left. `false` if sessions were still running.
    pub async fn stop(self, grace: Duration) -> bool {
        self.0.stop(grace).await
    }

    /// Stops accepting, closes open sessions at once (their receivers keep
    /// what arrived whole) and waits for the endpoint to go quiet.
    pub async fn shutdown(self) {
        self.0.close().await;
    }
}

/// A file's content digest, as a push computes it.
#[derive(Clone, Debug, serde::Serialize)]
#[non_exhaustive]
pub struct FileDigest {
    /// The file's size.
    pub size: u64,
    /// Its BLAKE3 content hash, in hex.
    pub hash: String,
    /// The chunk sizes used: minimum, average, maximum.
    pub chunk_params: [u32; 3],
    /// Its number of chunks.
    pub chunks: usize,
}

impl FileDigest {
    /// Reads and digests the file at `path`.
    ///
    /// # Errors
    /// The file cannot be read.
    pub fn of(path: &Path) -> Result<FileDigest, crate::Error> {
        let file = std::fs::File::open(path).map_err(|e| crate::Error::io(path, e))?;
        let size = file.metadata().map_err(|e| crate::Error::io(path, e))?.len();
        let params = crate::chunk::ChunkParams::for_size(size);
        let digest = crate::chunk::digest_stream_sized(file, params, size, |_, _, _| Ok(()))
            .map_err(|e| crate::Error::io(path, e))?;
        Ok(FileDigest {
            size: digest.size,
            hash: blake3::Hash::from_bytes(digest.hash.0).to_hex().to_string(),
            chunk_params: [params.min(), params.avg(), params.max()],
            chunks: digest.chunks.len(),
        })
    }
}

/// Where this host keeps its transfer state by default (scan caches,
/// memory of receivers): `$XFER_STATE_DIR`, else systemd's
/// `$STATE_DIRECTORY`, else `$XDG_STATE_HOME/xfer` (absolute), else
/// `~/.local/state/xfer`, else `/var/lib/xfer` for root without a home.
pub fn default_state_dir() -> Option<PathBuf> {
    crate::fs::state_dir::default_state_dir()
}

/// The system-wide config directory, whose `config.toml` is read under
/// the user's: `/etc/xfer`, or `$XFER_SYSTEM_CONFIG_DIR` when that is an
/// absolute path (for tests and packagers).
pub fn system_config_dir() -> PathBuf {
    crate::fs::dirs::system_config_dir()
}
