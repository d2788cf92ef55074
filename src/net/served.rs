//! What a server serves: its configuration, where the state of each tree
//! lives, and the filesystem rules a client's path must pass before a
//! store opens.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use xfer_protocol::CloseCode;

use super::access::Access;
use super::admission::HANDSHAKE_TIMEOUT;
use super::caps::Caps;
use crate::fs::history::{History, SnapshotInfo};
use crate::fs::store::shared::{SharedIndex, SharedIndexes};
use crate::fs::store::{MetaPolicy, MirrorStore, Receiving, RepoDestination, ServedStore};
use crate::manifest::RelPath;
use crate::net::audit::AuditLog;
use crate::session::{OpenRequest, SessionError};
use crate::net::limiter::Limiter;
use crate::net::metrics::Metrics;
use crate::pacing::Rate;

/// Name of the server's state directory inside its root; clients can never
/// push to it.
pub const SERVER_STATE_DIR: &str = ".xfer";

/// Sessions a server runs at once unless configured otherwise
/// (`ServeConfig::max_sessions`).
pub const DEFAULT_MAX_SESSIONS: usize = 64;

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
    /// Longest a handshake may take (or the idle timeout, if shorter).
    pub handshake_timeout: Duration,
    /// Cancelling it shuts the server down: no new session is accepted,
    /// each running one stops at its next commit point and is closed with
    /// the reason, its record is written, and then [`serve`](super::admission::serve) returns.
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
    /// Whether pushes keep history: old versions of what they overwrite
    /// or delete, and a snapshot of each tree they leave
    /// ([`ServeConfig::history_at`]).
    pub history: bool,
    /// Each client's index of the chunks it pushed to any tree here, so a
    /// tree pushed again elsewhere is not sent again; never consulted for
    /// another client unless [`ServeConfig::dedup_across_clients`]. Opened
    /// once per process, shared by its sessions.
    pub shared: SharedIndexes,
    /// One chunk index for every client (`serve --dedup-across-clients`):
    /// a push is not sent what any client stored here. Off by default: a
    /// client then learns that the server holds a chunk it never sent,
    /// i.e. that another client stored the same content.
    pub dedup_across_clients: bool,
    /// A store-only server: where its history store is (a directory for
    /// now). Pushes then land in the store alone, with no mirror tree, and
    /// a pull rebuilds files from its chunks; `root` serves nothing.
    pub store: Option<String>,
    /// Where each session is counted for `serve --metrics`.
    pub metrics: Option<Arc<Metrics>>,
}

/// Where a server's history store is: the store URL or path of a
/// store-only server, else a directory beside the mirror trees.
#[derive(Clone, Debug)]
pub struct HistoryAt {
    store: Option<String>,
    dir: PathBuf,
}

impl HistoryAt {
    /// Opens it (creating it if missing).
    ///
    /// # Errors
    /// As [`History::open_url`] and [`History::open`].
    pub fn open(&self) -> crate::Result<History> {
        match &self.store {
            Some(url) => History::open_url(url),
            None => History::open(&self.dir),
        }
    }

    /// Whether it may hold history: a mirror server's directory that was
    /// never made holds none (and is not made just to find that out).
    pub fn may_exist(&self) -> bool {
        self.store.is_some() || self.dir.is_dir()
    }
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
            handshake_timeout: HANDSHAKE_TIMEOUT,
            shutdown: CancellationToken::new(),
            metadata: MetaPolicy::Confined,
            failures: None,
            congestion: super::Congestion::default(),
            history: true,
            shared: SharedIndexes::default(),
            dedup_across_clients: false,
            store: None,
            metrics: None,
        }
    }

    /// A store-only server keeping every tree in the history store at
    /// `store`, as `access` allows: no mirror tree anywhere.
    pub fn store_only(store: String, access: Access) -> Self {
        ServeConfig { store: Some(store), ..ServeConfig::new(PathBuf::new(), access) }
    }

    /// Opens the history store (see [`ServeConfig::history_at`]).
    ///
    /// # Errors
    /// As [`HistoryAt::open`].
    pub fn open_history(&self) -> crate::Result<History> {
        self.history_at().open()
    }

    /// Where the history of every tree served is kept: the store of a
    /// store-only server, else `ROOT/.xfer/history`, or `DIR/history` when
    /// the state is outside the root. One store per server, so a chunk
    /// kept once serves every tree's snapshots.
    pub fn history_at(&self) -> HistoryAt {
        let dir = match &self.state {
            ServerState::InRoot => self.root.join(SERVER_STATE_DIR).join("history"),
            ServerState::Outside(dir) => dir.join("history"),
        };
        HistoryAt { store: self.store.clone(), dir }
    }

    /// The caps of a new session: its own, and the server's total.
    pub(super) fn caps(&self) -> Caps {
        Caps(vec![Limiter::new(self.per_session), self.total.clone()])
    }

    /// The state database of the tree at `path`, and whether the root's
    /// first component [`SERVER_STATE_DIR`] is reserved for it.
    pub(super) fn state_file(&self, path: &RelPath) -> (PathBuf, bool) {
        let key = blake3::hash(path.as_bytes()).to_hex();
        match &self.state {
            ServerState::InRoot => {
                (self.root.join(SERVER_STATE_DIR).join("trees").join(format!("{}.redb", &key[..32])), true)
            }
            ServerState::Outside(dir) => (dir.join(format!("{}.redb", &key[..32])), false),
        }
    }

    /// The chunk index of the client with fingerprint `client` (hex), in
    /// `ROOT/.xfer/clients`, or the server-wide `all.redb` there when
    /// dedup is across clients; none for state kept outside the root (the
    /// embedded server of a local push serves one tree).
    pub(super) fn shared_index(&self, client: &str) -> crate::Result<Option<Arc<SharedIndex>>> {
        if self.state != ServerState::InRoot {
            return Ok(None);
        }
        let clients = self.root.join(SERVER_STATE_DIR).join("clients");
        // One server-wide index rather than consulting every client's: one
        // lookup and one write per batch whatever the number of clients,
        // and no database per client held open by each session. As safe:
        // reads are verified and confined to real directories either way.
        // The per-client files are left as they are (used again if the
        // option goes off); "all" never collides with their hex names.
        let name = if self.dedup_across_clients {
            "all.redb".to_string()
        } else {
            format!("{}.redb", &blake3::hash(client.as_bytes()).to_hex()[..32])
        };
        self.shared.get(&clients.join(name), &self.root).map(Some)
    }

    /// Refuses `path` when it lies in the server's own state.
    pub(super) fn check_reserved(&self, path: &RelPath) -> Result<(), SessionError> {
        let first = path.as_bytes().split(|&b| b == b'/').next();
        // A store-only server keeps no state among the trees it serves.
        if self.store.is_none() && self.state == ServerState::InRoot && first == Some(SERVER_STATE_DIR.as_bytes()) {
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

/// Refuses a destination reached through a symlink or a file, and a pull
/// of a path that is not there. An earlier push may have left `site/link
/// -> /etc`: opening `site/link` must not lead out of the served root.
pub(super) fn check_real_dirs(root: &Path, path: &RelPath, must_exist: bool) -> Result<(), SessionError> {
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

/// What a push's snapshot says of it.
fn snapshot_info(path: &RelPath, request: &OpenRequest, client: &str) -> SnapshotInfo {
    SnapshotInfo {
        tree: super::manage::tree_name(path.as_bytes()),
        client: client.to_string(),
        host: request.source_host.clone(),
        source: request.source_path.clone(),
        tags: request.tags.iter().map(|t| (t.key.clone(), t.value.clone())).collect(),
        ..SnapshotInfo::default()
    }
}

/// Opens the destination client `client` asked for: a tree under the
/// server's root, or the history store alone.
pub(super) fn open_served(config: &ServeConfig, request: &OpenRequest, client: &str) -> Result<ServedStore, SessionError> {
    let path = request.path.clone().unwrap_or_else(RelPath::root);
    match &config.store {
        Some(store) => {
            let history = config.open_history()?;
            let repo = RepoDestination::open(history, store, snapshot_info(&path, request, client))
                .map_err(|e| busy_or(e, &path))?
                .across_clients(config.dedup_across_clients);
            Ok(ServedStore::Repo(Box::new(repo)))
        }
        None => open_store(config, request, client).map(|r| ServedStore::Mirror(Box::new(r))),
    }
}

/// Opens the destination client `client` asked for, under the server's root.
pub(super) fn open_store(config: &ServeConfig, request: &OpenRequest, client: &str) -> Result<Receiving, SessionError> {
    let path = request.path.clone().unwrap_or_else(RelPath::root);
    config.check_reserved(&path)?;
    check_real_dirs(&config.root, &path, false)?;
    let (state, reserve) = config.state_file(&path);
    let store = MirrorStore::open(&path.to_path(&config.root), &state).map_err(|e| busy_or(e, &path))?;
    let store = store.with_policy(config.metadata);
    let store = if path.is_root() && reserve { store.with_reserved(SERVER_STATE_DIR.as_bytes()) } else { store };
    // Without its index a push only sends more: never a reason to refuse it.
    let store = match config.shared_index(client) {
        Ok(Some(index)) => store.with_shared(index, path.clone()),
        Ok(None) => store,
        Err(e) => {
            tracing::warn!(%client, error = %e, "the client's chunk index is unavailable; sending everything");
            store
        }
    };
    let store = if config.history {
        let history = config.open_history()?;
        store.with_history(history, snapshot_info(&path, request, client))
    } else {
        store
    };
    Ok(Receiving::new(store))
}

/// `Busy` with what to do when another push holds the tree's state, else
/// the error itself.
pub(super) fn busy_or(e: crate::Error, path: &RelPath) -> SessionError {
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
