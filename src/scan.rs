//! Scanning a directory tree into a [`Manifest`], reading only files whose
//! size, mtime, mode, inode or ctime changed since the previous scan.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::chunk::{digest_stream_sized, ChunkParams, FileDigest};
use crate::error::{Error, IoContext, Result};
use crate::filter::Filter;
use crate::hash::FileHash;
use crate::manifest::{Entry, EntryKind, Manifest, Meta, Mtime, RelPath};
use crate::progress::{Event, ProgressSink};

/// Prefix of xfer's temporary files; a scan never reports them as entries.
pub const TEMP_PREFIX: &[u8] = b".xfer-tmp.";

/// What identifies an unchanged file without reading it.
///
/// ctime and inode are included because a rename or a write behind our back
/// always changes them, even when size and mtime were forged or restored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatKey {
    /// Size in bytes.
    pub size: u64,
    /// Modification time.
    pub mtime: Mtime,
    /// Permission bits.
    pub mode: u32,
    /// Inode number.
    pub ino: u64,
    /// Status change time.
    pub ctime: Mtime,
}

impl StatKey {
    /// The key of `meta` (from `lstat` or `fstat`).
    pub fn of(meta: &fs::Metadata) -> StatKey {
        StatKey {
            size: meta.len(),
            mtime: Mtime { secs: meta.mtime(), nanos: meta.mtime_nsec() as u32 },
            mode: meta.mode() & 0o7777,
            ino: meta.ino(),
            ctime: Mtime { secs: meta.ctime(), nanos: meta.ctime_nsec() as u32 },
        }
    }
}

/// A file's digest together with the stat key it was computed under.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRecord {
    /// Stat key when the file was read.
    pub stat: StatKey,
    /// Its content.
    pub digest: FileDigest,
}

/// How to scan.
#[derive(Clone, Debug, Default)]
pub struct ScanOptions {
    /// Read every file even when its stat key is unchanged (`--checksum`).
    pub checksum: bool,
    /// Remove xfer temporary files found in the tree (left by a crash); only
    /// a receiver does this, a sender just skips them.
    pub remove_temps: bool,
    /// Skip a top-level entry of this name (a server's reserved state dir).
    pub reserved: Option<&'static [u8]>,
    /// Entries these patterns exclude are left out silently (not listed in
    /// [`Scan::skipped`]), and excluded directories are not entered.
    pub filter: Option<Arc<Filter>>,
    /// Where [`Event::Scanning`] goes.
    pub progress: ProgressSink,
}

/// Why an entry was left out of the manifest.
#[derive(Debug)]
pub struct ScanSkip {
    /// The entry.
    pub path: RelPath,
    /// The reason, for a report.
    pub reason: String,
}

/// The outcome of a scan.
#[derive(Debug, Default)]
pub struct Scan {
    /// The tree, without skipped entries.
    pub manifest: Manifest,
    /// Records of every file, for the next quick check; filled by [`scan`]
    /// only ([`scan_with`] hands them to its [`Records`]).
    pub records: HashMap<RelPath, FileRecord>,
    /// Entries left out: special files, unreadable or changing files
    /// (not those the filter excludes: the user asked for that).
    pub skipped: Vec<ScanSkip>,
    /// Files read in full (the rest passed the quick check).
    pub files_read: u64,
    /// Bytes read from those files.
    pub bytes_read: u64,
}

/// Where a scan finds the records of its last run and leaves its own.
pub trait Records {
    /// The record of `path` from the last scan, if any.
    ///
    /// # Errors
    /// Whatever stops the records being read; the scan ends with it.
    fn previous(&mut self, path: &RelPath) -> Result<Option<FileRecord>>;

    /// The record of file `path` in this scan, in manifest order; `changed`
    /// when it differs from [`Records::previous`]'s.
    ///
    /// # Errors
    /// Whatever stops the record being kept; the scan ends with it.
    fn record(&mut self, path: &RelPath, record: &FileRecord, changed: bool) -> Result<()>;
}

/// No records: every file is read, nothing is kept (a pull's one-off scan).
pub struct Unrecorded;

impl Records for Unrecorded {
    fn previous(&mut self, _: &RelPath) -> Result<Option<FileRecord>> {
        Ok(None)
    }

    fn record(&mut self, _: &RelPath, _: &FileRecord, _: bool) -> Result<()> {
        Ok(())
    }
}

/// Records in memory: the last scan's, and this one's collected whole.
struct Collect<'a> {
    previous: &'a HashMap<RelPath, FileRecord>,
    records: HashMap<RelPath, FileRecord>,
}

impl Records for Collect<'_> {
    fn previous(&mut self, path: &RelPath) -> Result<Option<FileRecord>> {
        Ok(self.previous.get(path).cloned())
    }

    fn record(&mut self, path: &RelPath, record: &FileRecord, _: bool) -> Result<()> {
        self.records.insert(path.clone(), record.clone());
        Ok(())
    }
}

/// Scans the tree at `root`; `previous` gives the record of each file from
/// the last scan, so unchanged files are not read. Every file's record is
/// returned in [`Scan::records`].
///
/// # Errors
/// Only when `root` itself cannot be read; problems with single entries are
/// listed in [`Scan::skipped`].
pub fn scan(root: &Path, previous: &HashMap<RelPath, FileRecord>, options: ScanOptions) -> Result<Scan> {
    let mut collect = Collect { previous, records: HashMap::new() };
    let mut scan = scan_with(root, &mut collect, options)?;
    scan.records = collect.records;
    Ok(scan)
}

/// Scans the tree at `root` as [`scan`] does, with the records of the last
/// scan and of this one kept by `records` (a state database) instead of in
/// memory.
///
/// # Errors
/// When `root` itself cannot be read or `records` fails; problems with
/// single entries are listed in [`Scan::skipped`].
pub fn scan_with(root: &Path, records: &mut dyn Records, options: ScanOptions) -> Result<Scan> {
    let root_meta = fs::metadata(root).at(root)?;
    if !root_meta.is_dir() {
        return Err(Error::io(root, io::Error::new(io::ErrorKind::NotADirectory, "not a directory")));
    }
    let mut scan = Scan::default();
    let mut entries = Vec::new();
    // Depth-first with sorted siblings yields manifest order directly.
    let mut stack: Vec<(RelPath, PathBuf)> = Vec::new();
    list_dir(&RelPath::root(), root, &options, &mut stack, &mut scan).at(root)?;
    let filter = options.filter.as_deref().filter(|f| !f.is_empty());
    let (mut files, mut bytes) = (0, 0);
    // Files with several names whose other names the walk has yet to meet:
    // the first name (a File entry) for the ones after it. Only files with
    // nlink > 1 are held, each until its last name is met.
    let mut groups: HashMap<(u64, u64), LinkGroup> = HashMap::new();
    while let Some((rel, abs)) = stack.pop() {
        let meta = match fs::symlink_metadata(&abs) {
            Ok(meta) => meta,
            Err(_) if filter.is_some_and(|f| f.excludes_entry(&rel, false) || f.excludes_entry(&rel, true)) => {
                continue;
            }
            Err(e) => {
                skip(&mut scan, rel, format!("cannot stat: {e}"));
                continue;
            }
        };
        let file_type = meta.file_type();
        // Parents are never excluded here: an excluded directory is not listed.
        if filter.is_some_and(|f| f.excludes_entry(&rel, file_type.is_dir())) {
            continue;
        }
        let base_meta =
            Meta { mode: meta.mode() & 0o7777, mtime: Mtime { secs: meta.mtime(), nanos: meta.mtime_nsec() as u32 } };
        if file_type.is_dir() {
            let before = stack.len();
            if let Err(e) = list_dir(&rel, &abs, &options, &mut stack, &mut scan) {
                stack.truncate(before);
                skip(&mut scan, rel, format!("cannot list directory: {e}"));
                continue;
            }
            entries.push(Entry { path: rel, meta: base_meta, kind: EntryKind::Dir });
        } else if file_type.is_symlink() {
            match fs::read_link(&abs) {
                Ok(target) => entries.push(Entry {
                    path: rel,
                    meta: Meta { mode: 0, ..base_meta },
                    kind: EntryKind::Symlink { target: target.as_os_str().as_bytes().to_vec() },
                }),
                Err(e) => skip(&mut scan, rel, format!("cannot read link: {e}")),
            }
        } else if file_type.is_file() {
            crate::crashpoint::hit("scan.file");
            let inode = (meta.dev(), meta.ino());
            if meta.nlink() > 1 {
                if let Some(group) = groups.get_mut(&inode) {
                    // Names are met in manifest order, so the target is listed first.
                    entries.push(Entry {
                        path: rel,
                        meta: group.meta,
                        kind: EntryKind::HardLink { target: group.target.clone(), size: group.size, hash: group.hash },
                    });
                    group.unmet -= 1;
                    if group.unmet == 0 {
                        groups.remove(&inode);
                    }
                    continue;
                }
            }
            let stat = StatKey::of(&meta);
            let old = records.previous(&rel)?;
            let (record, changed) = match old {
                Some(old) if old.stat == stat && !options.checksum => (old, false),
                old => match read_file(&abs, &meta) {
                    Ok(record) => {
                        scan.files_read += 1;
                        scan.bytes_read += record.digest.size;
                        let changed = old.as_ref() != Some(&record);
                        (record, changed)
                    }
                    Err(e) => {
                        skip(&mut scan, rel, e.to_string());
                        continue;
                    }
                },
            };
            files += 1;
            bytes += record.digest.size;
            options.progress.emit(|| Event::Scanning { files, bytes, bytes_read: scan.bytes_read });
            records.record(&rel, &record, changed)?;
            let file_meta = Meta { mode: record.stat.mode, mtime: record.stat.mtime };
            if meta.nlink() > 1 {
                let group = LinkGroup {
                    target: rel.clone(),
                    meta: file_meta,
                    size: record.digest.size,
                    hash: record.digest.hash,
                    unmet: meta.nlink() - 1,
                };
                groups.insert(inode, group);
            }
            entries.push(Entry { path: rel, meta: file_meta, kind: EntryKind::File(record.digest) });
        } else {
            skip(&mut scan, rel, "special file (device, fifo or socket): skipped".into());
        }
    }
    // Skipped directories can leave nothing behind them, so this only sorts.
    scan.manifest = Manifest::new(entries)?;
    Ok(scan)
}

/// A file with several names, as its first name in the tree left it.
struct LinkGroup {
    target: RelPath,
    meta: Meta,
    size: u64,
    hash: FileHash,
    /// Names (by the link count) not met yet; some may lie outside the tree.
    unmet: u64,
}

fn skip(scan: &mut Scan, path: RelPath, reason: String) {
    scan.skipped.push(ScanSkip { path, reason });
}

/// Pushes the children of `dir` on `stack` so that they pop in name order.
fn list_dir(
    rel: &RelPath,
    abs: &Path,
    options: &ScanOptions,
    stack: &mut Vec<(RelPath, PathBuf)>,
    scan: &mut Scan,
) -> io::Result<()> {
    let mut names = Vec::new();
    for dirent in fs::read_dir(abs)? {
        let dirent = dirent?;
        let name = dirent.file_name();
        let bytes = name.as_bytes();
        if rel.is_root() && options.reserved == Some(bytes) {
            continue;
        }
        if bytes.starts_with(TEMP_PREFIX) {
            if options.remove_temps {
                // Left by an interrupted run; never a user's file.
                let _ = fs::remove_file(dirent.path());
            }
            continue;
        }
        names.push(name);
    }
    names.sort_by(|a, b| b.as_bytes().cmp(a.as_bytes()));
    for name in names {
        match rel.join(name.as_bytes()) {
            Ok(child) => stack.push((child, abs.join(&name))),
            Err(e) => skip(scan, RelPath::root(), e.to_string()),
        }
    }
    Ok(())
}

/// Reads and chunks one file, refusing a file that changed while being read.
fn read_file(abs: &Path, meta: &fs::Metadata) -> Result<FileRecord> {
    let file = File::open(abs).at(abs)?;
    let before = file.metadata().at(abs)?;
    let params = ChunkParams::for_size(before.len());
    let digest = digest_stream_sized(&file, params, before.len(), |_, _, _| Ok(())).at(abs)?;
    let after = file.metadata().at(abs)?;
    let stat = StatKey::of(&before);
    if digest.size != before.len() || StatKey::of(&after) != stat || stat.ino != meta.ino() {
        return Err(Error::SourceChanged { path: abs.to_path_buf() });
    }
    Ok(FileRecord { stat, digest })
}
