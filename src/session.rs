//! Push sessions: the I/O-free state machines of the core crate
//! ([`xfer_core::session`]), with what this crate plugs into them: the
//! mirror tree as their [`Destination`] (`crate::fs::store`) and
//! [`FileReader`] as the sender's source.

pub use crate::fs::reader::FileReader;
pub use xfer_core::session::*;

impl EntryError for crate::Error {
    fn is_per_entry(&self) -> bool {
        crate::Error::is_per_entry(self)
    }
}

impl From<crate::Error> for SessionError {
    fn from(e: crate::Error) -> Self {
        match e {
            crate::Error::DeleteRefused(refused) => SessionError::DeleteRefused(refused),
            e => SessionError::local(e),
        }
    }
}
