//! Audit records: one JSON line per session, saying what left and what
//! came in, who asked, and the tags they gave for cost allocation. The
//! server appends one per session (`serve --audit-log`); a client may keep
//! its own (`--log-json`). Never file contents: names of trees, counts and
//! byte totals only.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::Serialize;
use xfer_protocol::msg::{Summary, Tag};
use xfer_protocol::CloseCode;

use crate::error::{Error, IoContext, Result};

/// One session, as the log keeps it.
#[derive(Clone, Debug, Default, Serialize)]
pub struct AuditRecord {
    /// When the session ended (RFC 3339, UTC).
    pub time: String,
    /// The client's fingerprint (`unknown` when it showed no valid key).
    pub client: String,
    /// The server's fingerprint, in a client's own log.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server: Option<String>,
    /// The peer's address.
    pub peer: String,
    /// The tree's path on the server; absent when refused before `Open`.
    pub path: Option<String>,
    /// `push` or `pull`, as the client sees it, or the history request:
    /// `snapshots`, `forget` or `prune`; `retention` for the server's own
    /// scheduled forget and prune.
    pub direction: Option<&'static str>,
    /// The snapshot a pull restored from, as the client selected it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub at: Option<String>,
    /// Snapshots a `snapshots` request listed or a `forget` forgot.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snapshots: Option<u64>,
    /// Trees a `retention` run applied a policy to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trees: Option<u64>,
    /// History packs a `retention` run's prune deleted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub packs_deleted: Option<u64>,
    /// Bytes those packs held.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes_freed: Option<u64>,
    /// The client's `key=value` labels.
    pub tags: BTreeMap<String, String>,
    /// `ok`, `partial` (some entries failed, the rest committed),
    /// `refused`, `busy`, `cancelled` or `failed`.
    pub result: &'static str,
    /// Why it was not `ok`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Regular files written on the receiver.
    pub files_written: u64,
    /// Entries deleted on the receiver.
    pub files_deleted: u64,
    /// Entries that failed.
    pub files_failed: u64,
    /// Bytes of the files written (their decoded size).
    pub bytes_logical: u64,
    /// Chunk bytes that travelled, as encoded.
    pub bytes_sent: u64,
    /// UDP bytes this side sent (QUIC included).
    pub wire_bytes_sent: u64,
    /// UDP bytes this side received.
    pub wire_bytes_received: u64,
    /// Wall time of the session.
    pub duration_s: f64,
    /// The congestion controller that paced what this side sent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub congestion: Option<&'static str>,
    /// What the session cost the history store of a store-only server
    /// (`serve --store`): requests by kind and bytes each way, as a
    /// bucket bills them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub store: Option<crate::fs::history::Requests>,
}

impl AuditRecord {
    /// A record stamped now.
    pub fn now() -> Self {
        AuditRecord { time: jiff::Timestamp::now().to_string(), ..AuditRecord::default() }
    }

    /// Takes the session's figures from the receiver's summary.
    pub fn count(&mut self, summary: &Summary) {
        self.files_written = summary.files_written;
        self.files_deleted = summary.deleted;
        self.files_failed = summary.failed;
        self.bytes_logical = summary.bytes_written;
        self.bytes_sent = summary.bytes_received;
        if self.result == "ok" && summary.failed > 0 {
            self.result = "partial";
        }
    }

    /// Counts `entries` the sender skipped or could not apply (they never
    /// reached the receiver, so its summary does not count them): a
    /// finished session with any is `partial`.
    pub fn skipped(&mut self, entries: u64) {
        if entries == 0 {
            return;
        }
        self.files_failed = self.files_failed.saturating_add(entries);
        if self.result == "ok" {
            self.result = "partial";
        }
    }

    /// Marks the session as not done: `error`, with the close code that
    /// ended it, if one did.
    pub fn fail(&mut self, code: Option<CloseCode>, error: String) {
        self.result = match code {
            Some(CloseCode::Unauthorized | CloseCode::ReadOnly | CloseCode::OutsideAllowedPath) => "refused",
            Some(CloseCode::Busy) => "busy",
            Some(CloseCode::Cancelled) => "cancelled",
            _ => "failed",
        };
        self.error = Some(error);
    }

    /// Records the session's tags.
    pub fn tag(&mut self, tags: &[Tag]) {
        self.tags = tags.iter().map(|t| (t.key.clone(), t.value.clone())).collect();
    }
}

/// An append-only JSON-lines file, shared by concurrent sessions.
#[derive(Debug)]
pub struct AuditLog {
    path: PathBuf,
    file: Mutex<File>,
}

impl AuditLog {
    /// Opens `path` for appending, creating it (and its directory).
    ///
    /// # Errors
    /// The file cannot be created or opened.
    pub fn open(path: &Path) -> Result<AuditLog> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).at(dir)?;
        }
        let file = OpenOptions::new().create(true).append(true).open(path).at(path)?;
        Ok(AuditLog { path: path.to_path_buf(), file: Mutex::new(file) })
    }

    /// Where the log is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends `record` as one line, in one write, so concurrent sessions
    /// never interleave within a line.
    ///
    /// # Errors
    /// The write fails (a full disk, say).
    pub fn append(&self, record: &AuditRecord) -> Result<()> {
        let mut line = serde_json::to_vec(record).map_err(|e| Error::io(&self.path, std::io::Error::other(e)))?;
        line.push(b'\n');
        let mut file = self.file.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        file.write_all(&line).at(&self.path)
    }
}
