//! Progress of a push or pull, as events for whoever watches: the CLI turns
//! them into bars, a backup app into its own display or log. No terminal
//! code here.

use std::fmt;
use std::sync::Arc;

/// Something that happened during a transfer.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// The scan of the source tree goes on (pushes): the totals so far,
    /// after each regular file.
    Scanning {
        /// Regular files found so far.
        files: u64,
        /// Bytes in them.
        bytes: u64,
        /// Of those, bytes read because the quick check could not vouch
        /// for them.
        bytes_read: u64,
    },
    /// The source tree is scanned (pushes).
    Scanned {
        /// Regular files in it.
        files: u64,
        /// Bytes in them.
        bytes: u64,
    },
    /// The sender knows what differs: these files will be (re)written.
    Planned {
        /// Files to write.
        files: u64,
        /// Their total size.
        bytes: u64,
    },
    /// A file is being written (sent on a push, received on a pull).
    FileStarted {
        /// Its path in the tree.
        path: String,
        /// Its size.
        size: u64,
    },
    /// A file received on this side (a pull) is written whole and
    /// verified; it goes in place at the next commit point, which a
    /// cancel still reaches. The per-file end of [`Event::FileStarted`].
    FileDone {
        /// Its path in the tree.
        path: String,
    },
    /// An entry changes on the receiver (one per entry, as `--itemize`
    /// lists them).
    Entry {
        /// What happens to it.
        change: Change,
        /// Its path in the tree.
        path: String,
    },
    /// A chunk crossed the wire.
    Chunk {
        /// Its size once decoded.
        decoded: u64,
        /// Its size as sent (compressed, or a delta).
        encoded: u64,
    },
}

/// What happens to an entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    /// A file is written (new or changed content).
    Write,
    /// A directory is created.
    Mkdir,
    /// A symlink is written.
    Symlink,
    /// A hard link to another file of the tree is made.
    Link,
    /// Only mode or mtime change.
    Meta,
    /// The entry is deleted.
    Delete,
}

impl Change {
    /// The entry's change for `op`.
    pub fn of(op: &crate::plan::Op) -> Change {
        use crate::plan::Op;
        match op {
            Op::WriteFile { .. } => Change::Write,
            Op::Mkdir { .. } => Change::Mkdir,
            Op::Symlink { .. } => Change::Symlink,
            Op::Link { .. } => Change::Link,
            Op::SetMeta { .. } => Change::Meta,
            Op::Delete { .. } => Change::Delete,
        }
    }
}

/// Receives [`Event`]s; called from the transfer's threads, so it must be
/// quick (hand work off to a channel if it is not).
pub trait Progress: Send + Sync {
    /// One event.
    fn event(&self, event: &Event);
}

/// Where a transfer reports its events; by default nowhere.
#[derive(Clone, Default)]
pub struct ProgressSink(Option<Arc<dyn Progress>>);

impl ProgressSink {
    /// Reports to `progress`.
    pub fn new(progress: Arc<dyn Progress>) -> Self {
        ProgressSink(Some(progress))
    }

    /// Reports `event`, if anyone listens.
    pub fn emit(&self, event: impl FnOnce() -> Event) {
        if let Some(progress) = &self.0 {
            progress.event(&event());
        }
    }
}

impl fmt::Debug for ProgressSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_some() { "ProgressSink(..)" } else { "ProgressSink(none)" })
    }
}

/// Forwards events to a channel (bounded by the caller's choice of
/// channel; a full channel drops events rather than stall the transfer).
impl Progress for std::sync::mpsc::SyncSender<Event> {
    fn event(&self, event: &Event) {
        let _ = self.try_send(event.clone());
    }
}
