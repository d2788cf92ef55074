//! The receiving side: a tree that is rebuilt file by file, atomically, from
//! chunks it already holds and chunks it is sent.
//!
//! The sessions drive a receiving tree through
//! [`crate::session::Destination`]: the mirror tree here ([`MirrorStore`],
//! written through [`Receiving`]), and later other stores.

mod lock;
mod mirror;
pub mod repo;
pub mod shared;
pub mod state;

pub(crate) use lock::canonical_missing;
pub use lock::TreeLock;
pub use mirror::{MetaPolicy, MirrorStore, Receiving, DEFAULT_BATCH_BYTES, DEFAULT_BATCH_FILES};
pub use repo::{RepoDestination, ServedStore};

// What a receiving tree reports, defined with the sessions that drive it.
pub use crate::session::{ApplyReport, Destination, FailedEntry, NeedInfo, Put};

/// The receiver of a push or pull into a mirror tree.
pub type MirrorReceiver = crate::session::Receiver<Receiving<MirrorStore>>;

/// The receiver of a push into a server: a mirror tree or the history
/// store alone.
pub type ServedReceiver = crate::session::Receiver<ServedStore>;
