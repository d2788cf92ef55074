//! The history store's files: durable writes (temporary name, fsync,
//! rename, fsync of the directory), listings that skip temporaries, and
//! the writer locks a prune respects.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::error::{IoContext, Result};

/// Prefix of temporaries: never an object name (objects are hex).
const TEMP_PREFIX: &str = ".tmp-";

/// Writes `bytes` as `dir/name`: whole or absent after a crash.
pub(super) fn write_durably(dir: &Path, name: &str, bytes: &[u8]) -> Result<PathBuf> {
    // Unique per write: two writers in one process may write the same object.
    static WRITES: AtomicU64 = AtomicU64::new(0);
    let n = WRITES.fetch_add(1, Ordering::Relaxed);
    let temp = dir.join(format!("{TEMP_PREFIX}{name}.{}.{n}", std::process::id()));
    let path = dir.join(name);
    let written = File::create(&temp).and_then(|mut file| {
        file.write_all(bytes)?;
        file.sync_all()
    });
    if let Err(e) = written {
        let _ = std::fs::remove_file(&temp);
        return Err(e).at(&temp);
    }
    std::fs::rename(&temp, &path).at(&path)?;
    sync_dir(dir)?;
    Ok(path)
}

/// Makes a directory's entries (a rename, a removal) durable.
pub(super) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).at(dir)
}

/// Creates `dir` (and its parent's entry durably) if missing.
pub(super) fn ensure_dir(dir: &Path) -> Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::create_dir_all(dir).at(dir)?;
    match dir.parent() {
        Some(parent) => sync_dir(parent),
        None => Ok(()),
    }
}

/// Removes `dir/name` durably; one already gone is fine.
pub(super) fn remove(dir: &Path, name: &str) -> Result<()> {
    let path = dir.join(name);
    match std::fs::remove_file(&path) {
        Ok(()) => sync_dir(dir),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).at(path),
    }
}

/// Milliseconds since the epoch, now.
pub(super) fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Random bytes for the store's id and lock names.
pub(super) fn random_hex() -> String {
    let mut bytes = [0u8; 16];
    let read = File::open("/dev/urandom").and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes));
    if read.is_err() {
        // No /dev/urandom: time and pid still tell stores and writers apart.
        let seed = format!("{}-{}-{:?}", now_ms(), std::process::id(), std::thread::current().id());
        bytes.copy_from_slice(&blake3::hash(seed.as_bytes()).as_bytes()[..16]);
    }
    crate::history::hex(&bytes)
}

fn host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map_or_else(|_| "unknown".into(), |h| h.trim().to_string())
}

/// One open writer, as `locks/NAME` records it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(super) struct LockRecord {
    pub(super) pid: u32,
    pub(super) host: String,
    /// When it opened the store, ms since the epoch.
    pub(super) start_ms: u64,
}

/// This writer's lock file, removed on drop.
#[derive(Debug)]
pub(super) struct WriterLock {
    pub(super) path: PathBuf,
}

impl WriterLock {
    pub(super) fn take(locks: &Path) -> Result<WriterLock> {
        let record = LockRecord { pid: std::process::id(), host: host(), start_ms: now_ms() };
        let bytes = serde_json::to_vec(&record).expect("invariant: a lock record serializes");
        let name = format!("{}-{}-{}", record.start_ms, record.pid, random_hex());
        let path = write_durably(locks, &name, &bytes)?;
        Ok(WriterLock { path })
    }
}

impl Drop for WriterLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The start times of the writers with a lock in `locks` other than
/// `own`, leaving out stale ones (a dead process on this host). A lock
/// that does not parse counts as started at 0 (oldest): when unsure,
/// keep data.
pub(super) fn other_writers(locks: &Path, own: &Path) -> Result<Vec<u64>> {
    let entries = match std::fs::read_dir(locks) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).at(locks),
    };
    let this_host = host();
    let mut starts = Vec::new();
    for entry in entries {
        let path = entry.at(locks)?.path();
        if path == own || path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(TEMP_PREFIX)) {
            continue;
        }
        let Ok(bytes) = std::fs::read(&path) else { continue };
        match serde_json::from_slice::<LockRecord>(&bytes) {
            // Its process died without removing it: tidy it away.
            Ok(lock) if lock.host == this_host && !alive(lock.pid) => {
                let _ = std::fs::remove_file(&path);
            }
            // The lock file's own mtime, not the time it records: packs are
            // compared by their mtimes, which come from the filesystem's
            // coarser clock and may read a few ms behind the system's.
            Ok(lock) => starts.push(modified_ms(&path).unwrap_or(lock.start_ms)),
            Err(_) => starts.push(0),
        }
    }
    Ok(starts)
}

fn modified_ms(path: &Path) -> Option<u64> {
    let modified = std::fs::metadata(path).ok()?.modified().ok()?;
    u64::try_from(modified.duration_since(std::time::UNIX_EPOCH).ok()?.as_millis()).ok()
}

fn alive(pid: u32) -> bool {
    Path::new("/proc").join(pid.to_string()).exists()
}

/// Temporaries older than this whose writer is gone are removed.
const STALE_TEMP: std::time::Duration = std::time::Duration::from_secs(3600);

/// Removes from `dir` the temporaries a crashed writer left: its process
/// gone and the file an hour old (another host's writer, whose process
/// this one cannot see, has long renamed or dropped it by then). Returns
/// how many went.
pub(super) fn remove_stale_temps(dir: &Path) -> Result<u64> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e).at(dir),
    };
    let mut removed = 0;
    for entry in entries {
        let entry = entry.at(dir)?;
        let name = entry.file_name();
        let Some(name) = name.to_str().filter(|n| n.starts_with(TEMP_PREFIX)) else { continue };
        // `.tmp-NAME.PID.N`
        let pid = name.rsplit('.').nth(1).and_then(|p| p.parse::<u32>().ok());
        let old = entry.metadata().ok().and_then(|m| m.modified().ok()).and_then(|t| t.elapsed().ok());
        if pid.is_some_and(|pid| !alive(pid)) && old.is_some_and(|age| age > STALE_TEMP) {
            let _ = std::fs::remove_file(entry.path());
            removed += 1;
        }
    }
    Ok(removed)
}
