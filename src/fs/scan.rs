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

pub use crate::fs::meta::{meta_of, read_xattrs, IdNames};

/// Prefix of xfer's temporary files; a scan never reports them as entries.
pub const TEMP_PREFIX: &[u8] = b".xfer-tmp.";

/// Prefix of the partial files a receiver keeps for files whose transfer
/// was interrupted (see `store::mirror`): no scan reports them as entries,
/// and a receiver's scan lists them in [`Scan::partials`] instead of
/// removing them, so the store can keep those it still has records of.
pub const PARTIAL_PREFIX: &[u8] = b".xfer-partial.";

/// Whether `name` is in xfer's namespace (a temporary or a partial file),
/// which no sender lists and no receiver writes as an entry.
pub fn is_reserved_name(name: &[u8]) -> bool {
    name.starts_with(TEMP_PREFIX) || name.starts_with(PARTIAL_PREFIX)
}

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

/// Metadata a receiver was sent and did not apply as sent (a server keeps
/// a remote client's setuid bits and owners off its disk; a receiver that
/// is not root cannot chown), kept to be given back: while the entry still
/// holds `applied`, a scan reports `original`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetaRecord {
    /// What the entry was left holding, as a scan reads it.
    pub applied: Meta,
    /// What the sender sent.
    pub original: Meta,
}

/// How to scan.
#[derive(Clone, Debug, Default)]
pub struct ScanOptions {
    /// Read every file even when its stat key is unchanged (`--checksum`).
    pub checksum: bool,
    /// Remove xfer temporary files found in the tree (left by a crash), and
    /// list partial files in [`Scan::partials`]; only a receiver does this,
    /// a sender just skips both.
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
    #[cfg(feature = "internals")]
    pub records: HashMap<RelPath, FileRecord>,
    /// Entries left out: special files, unreadable or changing files (not
    /// those the filter excludes: the user asked for that); and entries
    /// carried without their xattrs (unreadable, or over the limits).
    pub skipped: Vec<ScanSkip>,
    /// Files read in full (the rest passed the quick check).
    pub files_read: u64,
    /// Bytes read from those files.
    pub bytes_read: u64,
    /// Partial files found (with `remove_temps` only), for the store to
    /// keep or remove by its records.
    pub partials: Vec<PathBuf>,
}

impl Scan {
    /// The paths of the entries left out, for [`crate::plan::PlanOptions::skipped`]:
    /// they exist in the source, so the receiver keeps what it holds there.
    pub fn skipped_paths(&self) -> std::collections::HashSet<RelPath> {
        // An entry carried without something (its xattrs) is in the
        // manifest and is applied; only entries left out keep their backup.
        self.skipped.iter().filter(|s| self.manifest.get(&s.path).is_none()).map(|s| s.path.clone()).collect()
    }
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

    /// What to report as the metadata of `path` instead of `on_disk`: the
    /// original of a [`MetaRecord`] whose `applied` the entry still holds.
    ///
    /// # Errors
    /// Whatever stops the records being read; the scan ends with it.
    fn original_meta(&mut self, _path: &RelPath, _on_disk: &Meta) -> Result<Option<Meta>> {
        Ok(None)
    }
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
#[cfg(feature = "internals")]
struct Collect<'a> {
    previous: &'a HashMap<RelPath, FileRecord>,
    records: HashMap<RelPath, FileRecord>,
}

#[cfg(feature = "internals")]
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
#[cfg(feature = "internals")]
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
    let names = IdNames::load();
    let (mut files, mut bytes) = (0, 0);
    // Files with several names whose other names the walk has yet to meet:
    // the first name (a File entry) for the ones after it. Only files with
    // nlink > 1 are held, each until its last name is met.
    let mut groups: HashMap<(u64, u64), LinkGroup> = HashMap::new();
    while let Some((rel, abs)) = stack.pop() {
        let Some(meta) = stat_entry(&rel, &abs, filter, &mut scan) else { continue };
        let file_type = meta.file_type();
        let (base_meta, original) = entry_meta(&rel, &abs, &meta, &names, records, &mut scan)?;
        if file_type.is_dir() {
            let before = stack.len();
            if let Err(e) = list_dir(&rel, &abs, &options, &mut stack, &mut scan) {
                stack.truncate(before);
                skip(&mut scan, rel, format!("cannot list directory: {e}"));
                continue;
            }
            entries.push(Entry { path: rel, meta: base_meta, kind: EntryKind::Dir });
        } else if file_type.is_symlink() {
            entries.extend(symlink_entry(rel, &abs, base_meta, &mut scan));
        } else if file_type.is_file() {
            crate::crashpoint::hit("scan.file");
            if let Some(entry) = next_link_name(&mut groups, &meta, &rel) {
                entries.push(entry);
                continue;
            }
            let Some((record, changed)) = file_record(&rel, &abs, &meta, records, &options, &mut scan)? else {
                continue;
            };
            files += 1;
            bytes += record.digest.size;
            options.progress.emit(|| Event::Scanning { files, bytes, bytes_read: scan.bytes_read });
            records.record(&rel, &record, changed)?;
            // The mode and mtime the content was read under, unless the
            // records give the sender's originals.
            let file_meta = if original {
                base_meta
            } else {
                Meta { mode: record.stat.mode, mtime: record.stat.mtime, ..base_meta }
            };
            entries.push(first_name_entry(rel, &meta, file_meta, record, &mut groups));
        } else {
            skip(&mut scan, rel, "special file (device, fifo or socket): skipped".into());
        }
    }
    // Skipped directories can leave nothing behind them, so this only sorts.
    scan.manifest = Manifest::new(entries)?;
    Ok(scan)
}

/// The metadata of the entry at `abs`, or `None` when the entry is left
/// out: excluded by `filter`, or unreadable (then listed as skipped).
fn stat_entry(rel: &RelPath, abs: &Path, filter: Option<&Filter>, scan: &mut Scan) -> Option<fs::Metadata> {
    let meta = match fs::symlink_metadata(abs) {
        Ok(meta) => meta,
        Err(_) if filter.is_some_and(|f| f.excludes_entry(rel, false) || f.excludes_entry(rel, true)) => {
            return None;
        }
        Err(e) => {
            skip(scan, rel.clone(), format!("cannot stat: {e}"));
            return None;
        }
    };
    // Parents are never excluded here: an excluded directory is not listed.
    if filter.is_some_and(|f| f.excludes_entry(rel, meta.file_type().is_dir())) {
        return None;
    }
    Some(meta)
}

/// The metadata to report for the entry at `abs`, and whether it is the
/// original `records` keep rather than what is on disk.
fn entry_meta(
    rel: &RelPath,
    abs: &Path,
    meta: &fs::Metadata,
    names: &IdNames,
    records: &mut dyn Records,
    scan: &mut Scan,
) -> Result<(Meta, bool)> {
    let (disk_meta, problem) = meta_of(abs, meta, names);
    if let Some(problem) = problem {
        // Still carried, without its xattrs.
        scan.skipped.push(ScanSkip { path: rel.clone(), reason: problem });
    }
    Ok(match records.original_meta(rel, &disk_meta)? {
        Some(original) => (original, true),
        None => (disk_meta, false),
    })
}

/// The Symlink entry for the link at `abs`, or `None` when it cannot be
/// read (then listed as skipped).
fn symlink_entry(rel: RelPath, abs: &Path, meta: Meta, scan: &mut Scan) -> Option<Entry> {
    match fs::read_link(abs) {
        Ok(target) => {
            Some(Entry { path: rel, meta, kind: EntryKind::Symlink { target: target.as_os_str().as_bytes().to_vec() } })
        }
        Err(e) => {
            skip(scan, rel, format!("cannot read link: {e}"));
            None
        }
    }
}

/// The File entry for `rel`, the first name of its file the walk meets;
/// a file with further names is held in `groups` until they are met.
fn first_name_entry(
    rel: RelPath,
    meta: &fs::Metadata,
    file_meta: Meta,
    record: FileRecord,
    groups: &mut HashMap<(u64, u64), LinkGroup>,
) -> Entry {
    if meta.nlink() > 1 {
        let group = LinkGroup {
            target: rel.clone(),
            meta: file_meta.clone(),
            size: record.digest.size,
            hash: record.digest.hash,
            unmet: meta.nlink() - 1,
        };
        groups.insert((meta.dev(), meta.ino()), group);
    }
    Entry { path: rel, meta: file_meta, kind: EntryKind::File(record.digest) }
}

/// The HardLink entry for `rel` when it is a further name of a file whose
/// first name the walk has met; forgets the group once its last name is met.
fn next_link_name(groups: &mut HashMap<(u64, u64), LinkGroup>, meta: &fs::Metadata, rel: &RelPath) -> Option<Entry> {
    if meta.nlink() <= 1 {
        return None;
    }
    let inode = (meta.dev(), meta.ino());
    let group = groups.get_mut(&inode)?;
    // Names are met in manifest order, so the target is listed first.
    let entry = Entry {
        path: rel.clone(),
        meta: group.meta.clone(),
        kind: EntryKind::HardLink { target: group.target.clone(), size: group.size, hash: group.hash },
    };
    group.unmet -= 1;
    if group.unmet == 0 {
        groups.remove(&inode);
    }
    Some(entry)
}

/// The record of the file at `abs` and whether it changed since the last
/// scan: the previous one when its stat still matches (and no checksum is
/// asked for), else read afresh. `None` when the file cannot be read (then
/// listed as skipped).
fn file_record(
    rel: &RelPath,
    abs: &Path,
    meta: &fs::Metadata,
    records: &mut dyn Records,
    options: &ScanOptions,
    scan: &mut Scan,
) -> Result<Option<(FileRecord, bool)>> {
    let stat = StatKey::of(meta);
    let old = records.previous(rel)?;
    Ok(match old {
        Some(old) if old.stat == stat && !options.checksum => Some((old, false)),
        old => match read_file(abs, meta) {
            Ok(record) => {
                scan.files_read += 1;
                scan.bytes_read += record.digest.size;
                let changed = old.as_ref() != Some(&record);
                Some((record, changed))
            }
            Err(e) => {
                skip(scan, rel.clone(), e.to_string());
                None
            }
        },
    })
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
        if bytes.starts_with(PARTIAL_PREFIX) {
            if options.remove_temps {
                scan.partials.push(dirent.path());
            }
            continue;
        }
        if bytes.starts_with(TEMP_PREFIX) {
            if options.remove_temps {
                // Left by an interrupted run; never a user's file. A
                // directory: a new one not yet swapped in, or an old one
                // swapped out by a type change and not yet removed.
                let temp = dirent.path();
                match dirent.file_type() {
                    Ok(t) if t.is_dir() => {
                        if fs::remove_dir_all(&temp).is_err() {
                            open_up_all(&temp);
                            let _ = fs::remove_dir_all(&temp);
                        }
                    }
                    _ => {
                        let _ = fs::remove_file(&temp);
                    }
                }
            }
            continue;
        }
        names.push(name);
    }
    names.sort_by(|a, b| b.as_bytes().cmp(a.as_bytes()));
    for name in names {
        match rel.join(name.as_bytes()) {
            Ok(child) => stack.push((child, abs.join(&name))),
            // Its directory then stands for it: nothing there is deleted.
            Err(e) => skip(scan, rel.clone(), e.to_string()),
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

/// Gives the directories of the tree at `dir` owner rwx (symlinks not
/// followed), so that a left-over temporary holding read-only directories
/// can be removed.
fn open_up_all(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let Ok(meta) = fs::symlink_metadata(dir) else { return };
    if !meta.is_dir() {
        return;
    }
    let _ = fs::set_permissions(dir, fs::Permissions::from_mode((meta.mode() & 0o7777) | 0o700));
    let Ok(entries) = fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        open_up_all(&entry.path());
    }
}
