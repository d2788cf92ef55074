//! Where xfer keeps its state on this machine (one database per tree under
//! the state directory), and the source scan that reads and refreshes the
//! source tree's records there.

use std::path::{Path, PathBuf};

use crate::error::{Error, IoContext, Result};
use crate::fs::scan::{scan_with, Records, Scan, ScanOptions};
use crate::fs::store::state::StateDb;
use crate::manifest::RelPath;

/// The canonical forms of a local source and destination (which need not
/// exist yet).
///
/// # Errors
/// A missing source, or trees that overlap: a push would then read what it
/// writes.
pub fn local_pair(src: &Path, dest: &Path) -> Result<(PathBuf, PathBuf)> {
    let src = src.canonicalize().at(src)?;
    let dest = crate::fs::store::canonical_missing(dest)?;
    if src.starts_with(&dest) || dest.starts_with(&src) {
        return Err(Error::io(
            &dest,
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("source {} and destination overlap; choose a destination outside the source", src.display()),
            ),
        ));
    }
    Ok((src, dest))
}

/// Scans the source tree at `src` (canonical) as `options` say,
/// quick-checking against the records of its last scan kept in
/// `state_dir`, and records this one there ([`source_records`]); the
/// returned [`Scan::records`] is empty.
///
/// # Errors
/// An unreadable root or state database.
#[cfg(feature = "internals")]
pub fn scan_source(src: &Path, state_dir: &Path, options: ScanOptions) -> Result<Scan> {
    scan_source_until(src, state_dir, options, &|| false)
}

/// [`scan_source`], stopped before the next file once `stop` says so: a
/// scan of a large tree must not hold up a SIGTERM for minutes. What was
/// recorded so far stays (each record describes its file as read).
///
/// # Errors
/// As [`scan_source`], and [`Error::Stopped`] once `stop` returns true.
pub fn scan_source_until(src: &Path, state_dir: &Path, options: ScanOptions, stop: &dyn Fn() -> bool) -> Result<Scan> {
    let db = source_records(src, state_dir)?;
    let mut recorder = Until { inner: db.recorder()?, stop };
    let scanned = scan_with(src, &mut recorder, options)?;
    crate::crashpoint::hit("source.record");
    recorder.inner.finish(&scanned.manifest)?;
    Ok(scanned)
}

/// Records that end the scan once `stop` says so.
struct Until<'a, R> {
    inner: R,
    stop: &'a dyn Fn() -> bool,
}

impl<R: Records> Records for Until<'_, R> {
    fn previous(&mut self, path: &RelPath) -> Result<Option<crate::fs::scan::FileRecord>> {
        if (self.stop)() {
            return Err(Error::Stopped);
        }
        self.inner.previous(path)
    }

    fn record(&mut self, path: &RelPath, record: &crate::fs::scan::FileRecord, changed: bool) -> Result<()> {
        self.inner.record(path, record, changed)
    }
}

/// The state database holding the scan records of the source tree `src`
/// (canonical).
///
/// # Errors
/// A state database that cannot be opened.
pub fn source_records(src: &Path, state_dir: &Path) -> Result<StateDb> {
    StateDb::open(&state_file(state_dir, "sources", src))
}

/// The state file for `tree` under `state_dir/kind/`, named by a hash of
/// the tree's canonical path.
pub fn state_file(state_dir: &Path, kind: &str, tree: &Path) -> PathBuf {
    use std::os::unix::ffi::OsStrExt;
    let key = blake3::hash(tree.as_os_str().as_bytes()).to_hex();
    state_dir.join(kind).join(format!("{}.redb", &key[..32]))
}

/// The default state directory (see [`crate::fs::dirs::state_dir`]).
pub fn default_state_dir() -> Option<PathBuf> {
    crate::fs::dirs::state_dir()
}
