//! The receiver's state database (redb): file records for the quick check,
//! where each chunk's bytes sit in the tree, and the metadata it was sent
//! and did not apply as sent ([`MetaRecord`]).
//!
//! The database only ever describes data that is already durable: it is
//! committed after the files it names were fsynced and renamed. If it falls
//! behind (a crash between rename and commit), the stat keys of the renamed
//! files no longer match, so the next scan re-reads them. Nothing here is
//! trusted blindly: chunk bytes are re-hashed when read.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use redb::{
    Builder, Database, MultimapTableDefinition, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition,
};

use crate::error::{Error, IoContext, Result};
use crate::fs::scan::{FileRecord, MetaRecord, Records};
use crate::chunk::FileDigest;
use crate::hash::{ChunkId, FileHash};
use crate::manifest::{Manifest, Meta, RelPath};
use serde::{Deserialize, Serialize};

/// redb's page cache (read cache and write buffer). Its default, 1 GiB,
/// let a scan of 200,000 files keep every page it read in memory; records
/// are read once per scan, so a small cache costs little time.
const CACHE_BYTES: usize = 16 << 20;

/// Records a scan writes per transaction: bounds what it holds in memory.
const SCAN_FLUSH_RECORDS: usize = 4096;

const FILES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("files");
const CHUNKS: MultimapTableDefinition<&[u8; 32], &[u8]> = MultimapTableDefinition::new("chunks");
const METAS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("metas");
/// Partial files of interrupted transfers, by the path they are for
/// ([`PartialRecord`]), and the chunk list each was built to
/// (written once per partial, not at every checkpoint).
const PARTIALS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("partials");
const PARTIAL_DIGESTS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("partial_digests");

/// What a partial file of an interrupted transfer holds: which chunks of
/// the file it is built to were verified when written. Trusted only for
/// the file with this device and inode, and even then every chunk is
/// re-hashed when read.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartialRecord {
    /// The partial file's device.
    pub dev: u64,
    /// The partial file's inode.
    pub ino: u64,
    /// Size of the file it is built to.
    pub size: u64,
    /// Whole-file hash of the file it is built to.
    pub hash: FileHash,
    /// Verified chunks, as half-open ranges of chunk indices.
    pub verified: Vec<(u32, u32)>,
    /// Bytes of those chunks (what the partial holds; the rest are holes).
    pub bytes: u64,
    /// Order of recording: the oldest partials are dropped first.
    pub serial: u64,
}

/// Where a chunk's bytes can be read in the tree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChunkLoc {
    /// The file holding it.
    pub path: RelPath,
    /// Byte offset in that file.
    pub offset: u64,
    /// Length in bytes.
    pub len: u32,
}

impl ChunkLoc {
    fn encode(&self) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(12 + self.path.as_bytes().len());
        bytes.extend_from_slice(&self.offset.to_le_bytes());
        bytes.extend_from_slice(&self.len.to_le_bytes());
        bytes.extend_from_slice(self.path.as_bytes());
        bytes
    }

    fn decode(bytes: &[u8]) -> Option<ChunkLoc> {
        let offset = u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?);
        let len = u32::from_le_bytes(bytes.get(8..12)?.try_into().ok()?);
        let path = RelPath::new(bytes.get(12..)?.to_vec()).ok()?;
        Some(ChunkLoc { path, offset, len })
    }
}

/// The state database of one tree.
pub struct StateDb {
    db: Database,
    path: PathBuf,
}

impl StateDb {
    /// Opens or creates the database at `path`, creating its directory.
    ///
    /// A database that is damaged (or not a database at all) is moved aside
    /// to `PATH.corrupt`, replacing an older one, and started afresh with a
    /// warning: it only ever holds what can be derived again, and an empty
    /// one costs one full read of the tree, where refusing would stop every
    /// backup until someone deleted it by hand.
    ///
    /// # Errors
    /// [`Error::Io`] if the directory cannot be made or the damaged file
    /// moved, [`Error::State`] if the database cannot be opened (for
    /// example, another xfer holds it).
    pub fn open(path: &Path) -> Result<StateDb> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).at(dir)?;
        }
        match StateDb::open_as_is(path) {
            Err(e) if is_damage(&e) => {
                let mut aside = path.as_os_str().to_owned();
                aside.push(".corrupt");
                let aside = PathBuf::from(aside);
                std::fs::rename(path, &aside).at(path)?;
                tracing::warn!(
                    database = %path.display(),
                    moved_to = %aside.display(),
                    error = %e,
                    "the state database was damaged: moved it aside and starting a new one; \
                     this run reads every file of the tree once to rebuild it"
                );
                StateDb::open_as_is(path)
            }
            other => other,
        }
    }

    fn open_as_is(path: &Path) -> Result<StateDb> {
        let db = Builder::new().set_cache_size(CACHE_BYTES).create(path).map_err(|e| Error::state(path, e))?;
        let state = StateDb { db, path: path.to_path_buf() };
        let txn = state.db.begin_write().map_err(|e| state.err(e))?;
        txn.open_table(FILES).map_err(|e| state.err(e))?;
        txn.open_multimap_table(CHUNKS).map_err(|e| state.err(e))?;
        txn.open_table(METAS).map_err(|e| state.err(e))?;
        txn.open_table(PARTIALS).map_err(|e| state.err(e))?;
        txn.open_table(PARTIAL_DIGESTS).map_err(|e| state.err(e))?;
        txn.commit().map_err(|e| state.err(e))?;
        Ok(state)
    }

    /// Opens the database at `path` if there is one.
    ///
    /// # Errors
    /// As [`StateDb::open`].
    pub fn open_existing(path: &Path) -> Result<Option<StateDb>> {
        if !path.exists() {
            return Ok(None);
        }
        StateDb::open(path).map(Some)
    }

    /// A read view of the metadata records, consistent for its lifetime.
    ///
    /// # Errors
    /// [`Error::State`] if the database cannot be read.
    pub fn metas(&self) -> Result<MetaRecords<'_>> {
        let txn = self.db.begin_read().map_err(|e| self.err(e))?;
        let table = txn.open_table(METAS).map_err(|e| self.err(e))?;
        // Most trees have none: a scan then looks nothing up.
        let empty = table.is_empty().map_err(|e| self.err(e))?;
        Ok(MetaRecords { table, db: self, empty })
    }

    /// Records of the tree's metadata only: for a scan that keeps no file
    /// records (a pull's source) yet must report the originals a receiver
    /// kept instead of what it applied.
    ///
    /// # Errors
    /// [`Error::State`] if the database cannot be read.
    pub fn meta_overlay(&self) -> Result<MetaOverlay<'_>> {
        Ok(MetaOverlay { metas: self.metas()? })
    }

    fn err(&self, e: impl Into<redb::Error>) -> Error {
        Error::state(&self.path, e)
    }

    /// Every file record. A record that no longer decodes is dropped, which
    /// only costs a re-read of that file.
    ///
    /// # Errors
    /// [`Error::State`] if the database cannot be read.
    #[cfg(feature = "internals")]
    pub fn files(&self) -> Result<HashMap<RelPath, FileRecord>> {
        let txn = self.db.begin_read().map_err(|e| self.err(e))?;
        let table = txn.open_table(FILES).map_err(|e| self.err(e))?;
        let mut records = HashMap::new();
        for row in table.iter().map_err(|e| self.err(e))? {
            let (key, value) = row.map_err(|e| self.err(e))?;
            let (Ok(path), Ok(record)) =
                (RelPath::new(key.value().to_vec()), postcard::from_bytes::<FileRecord>(value.value()))
            else {
                continue;
            };
            records.insert(path, record);
        }
        Ok(records)
    }

    /// The record of `path`, if any (one that no longer decodes counts as none).
    ///
    /// # Errors
    /// [`Error::State`] if the database cannot be read.
    pub fn file(&self, path: &RelPath) -> Result<Option<FileRecord>> {
        self.records()?.get(path)
    }

    /// A read view of the file records, consistent for its lifetime.
    ///
    /// # Errors
    /// [`Error::State`] if the database cannot be read.
    pub fn records(&self) -> Result<FileRecords<'_>> {
        let txn = self.db.begin_read().map_err(|e| self.err(e))?;
        let table = txn.open_table(FILES).map_err(|e| self.err(e))?;
        Ok(FileRecords { table, db: self })
    }

    /// A sink for a scan that reads the previous records one by one and
    /// writes the changed ones as it goes, so no map of the whole tree is
    /// held; [`ScanRecorder::finish`] drops the records of vanished files.
    ///
    /// # Errors
    /// [`Error::State`] if the database cannot be read.
    pub fn recorder(&self) -> Result<ScanRecorder<'_>> {
        Ok(ScanRecorder { previous: self.records()?, metas: self.metas()?, upserts: Vec::new() })
    }

    /// The paths of the file and metadata records inside `dir` (not at it):
    /// a directory another entry replaced, whose records go in that
    /// batch's transaction.
    ///
    /// # Errors
    /// [`Error::State`] if the database cannot be read.
    pub fn paths_inside(&self, dir: &RelPath) -> Result<Vec<RelPath>> {
        let mut lo = dir.as_bytes().to_vec();
        lo.push(b'/');
        let mut hi = dir.as_bytes().to_vec();
        // '0' follows '/': the range holds exactly the paths inside `dir`.
        hi.push(b'0');
        let txn = self.db.begin_read().map_err(|e| self.err(e))?;
        let mut paths = Vec::new();
        for table in [FILES, METAS] {
            let table = txn.open_table(table).map_err(|e| self.err(e))?;
            for row in table.range::<&[u8]>(lo.as_slice()..hi.as_slice()).map_err(|e| self.err(e))? {
                let (key, _) = row.map_err(|e| self.err(e))?;
                paths.extend(RelPath::new(key.value().to_vec()).ok());
            }
        }
        Ok(paths)
    }

    /// Drops the records at or inside each of `dirs` (deleted entries)
    /// unless `current` says the record still describes the file there (it
    /// was written again after the delete).
    ///
    /// # Errors
    /// [`Error::State`] if the database cannot be read or written.
    pub fn remove_under(&self, dirs: &[RelPath], current: impl Fn(&RelPath, &FileRecord) -> bool) -> Result<()> {
        let mut stale = Vec::new();
        {
            let records = self.records()?;
            for dir in dirs {
                let mut lo = dir.as_bytes().to_vec();
                lo.push(b'/');
                let mut hi = dir.as_bytes().to_vec();
                // '0' follows '/': the range holds exactly the paths inside `dir`.
                hi.push(b'0');
                let exact = records.get(dir)?.map(|r| (dir.clone(), r));
                let inside = records.table.range::<&[u8]>(lo.as_slice()..hi.as_slice()).map_err(|e| self.err(e))?;
                let mut found = Vec::new();
                for row in inside {
                    let (key, value) = row.map_err(|e| self.err(e))?;
                    let Ok(path) = RelPath::new(key.value().to_vec()) else { continue };
                    // An undecodable record is stale whatever the file.
                    match postcard::from_bytes::<FileRecord>(value.value()) {
                        Ok(record) if current(&path, &record) => {}
                        _ => found.push(path),
                    }
                }
                stale.extend(exact.filter(|(p, r)| !current(p, r)).map(|(p, _)| p));
                stale.extend(found);
            }
        }
        if stale.is_empty() {
            return Ok(());
        }
        self.update(&[], &stale)
    }

    /// A read view for chunk lookups, consistent for its lifetime.
    ///
    /// # Errors
    /// [`Error::State`] if the database cannot be read.
    pub fn chunks(&self) -> Result<ChunkIndex<'_>> {
        let txn = self.db.begin_read().map_err(|e| self.err(e))?;
        let table = txn.open_multimap_table(CHUNKS).map_err(|e| self.err(e))?;
        Ok(ChunkIndex { table, db: self })
    }

    /// Replaces the records of `upserts`, removes those of `removals`, and
    /// keeps the chunk locations in step, in one transaction.
    ///
    /// # Errors
    /// [`Error::State`] if the transaction fails; the database is then as before.
    pub fn update(&self, upserts: &[(RelPath, FileRecord)], removals: &[RelPath]) -> Result<()> {
        self.update_with_metas(upserts, removals, &[])
    }

    /// As [`StateDb::update`], and in the same transaction sets (`Some`) or
    /// drops (`None`) the metadata records of `metas`; removals drop their
    /// metadata records too.
    ///
    /// # Errors
    /// [`Error::State`] if the transaction fails; the database is then as before.
    pub fn update_with_metas(
        &self,
        upserts: &[(RelPath, FileRecord)],
        removals: &[RelPath],
        metas: &[(RelPath, Option<MetaRecord>)],
    ) -> Result<()> {
        let txn = self.db.begin_write().map_err(|e| self.err(e))?;
        {
            let mut table = txn.open_table(METAS).map_err(|e| self.err(e))?;
            for path in removals {
                table.remove(path.as_bytes()).map_err(|e| self.err(e))?;
            }
            for (path, record) in metas {
                match record {
                    Some(record) => {
                        let value = postcard::to_allocvec(record).expect("invariant: encoding into a Vec cannot fail");
                        table.insert(path.as_bytes(), value.as_slice()).map_err(|e| self.err(e))?;
                    }
                    None => {
                        table.remove(path.as_bytes()).map_err(|e| self.err(e))?;
                    }
                }
            }
        }
        {
            let mut files = txn.open_table(FILES).map_err(|e| self.err(e))?;
            let mut chunks = txn.open_multimap_table(CHUNKS).map_err(|e| self.err(e))?;
            let paths = upserts.iter().map(|(path, _)| path).chain(removals);
            for path in paths {
                let old = files.remove(path.as_bytes()).map_err(|e| self.err(e))?;
                let old = old.and_then(|value| postcard::from_bytes::<FileRecord>(value.value()).ok());
                if let Some(old) = old {
                    for (offset, chunk) in chunk_offsets(&old) {
                        let loc = ChunkLoc { path: path.clone(), offset, len: chunk.len };
                        chunks.remove(&chunk.id.0, loc.encode().as_slice()).map_err(|e| self.err(e))?;
                    }
                }
            }
            for (path, record) in upserts {
                let value = postcard::to_allocvec(record).expect("invariant: encoding into a Vec cannot fail");
                files.insert(path.as_bytes(), value.as_slice()).map_err(|e| self.err(e))?;
                for (offset, chunk) in chunk_offsets(record) {
                    let loc = ChunkLoc { path: path.clone(), offset, len: chunk.len };
                    chunks.insert(&chunk.id.0, loc.encode().as_slice()).map_err(|e| self.err(e))?;
                }
            }
        }
        // A file committed or removed needs no partial any more; a partial
        // file left without its record is removed at the next refresh.
        self.drop_partial_records(&txn, upserts.iter().map(|(path, _)| path).chain(removals))?;
        crate::crashpoint::hit("state.txn");
        txn.commit().map_err(|e| self.err(e))
    }
}

impl StateDb {
    /// The record of the partial file for `path`, if any (one that no
    /// longer decodes counts as none).
    ///
    /// # Errors
    /// [`Error::State`] if the database cannot be read.
    pub fn partial(&self, path: &RelPath) -> Result<Option<PartialRecord>> {
        self.partial_value(PARTIALS, path)
    }

    /// The chunk list the partial file for `path` is built to.
    ///
    /// # Errors
    /// [`Error::State`] if the database cannot be read.
    pub fn partial_digest(&self, path: &RelPath) -> Result<Option<FileDigest>> {
        self.partial_value(PARTIAL_DIGESTS, path)
    }

    fn partial_value<T: serde::de::DeserializeOwned>(
        &self,
        table: TableDefinition<&[u8], &[u8]>,
        path: &RelPath,
    ) -> Result<Option<T>> {
        let txn = self.db.begin_read().map_err(|e| self.err(e))?;
        let table = txn.open_table(table).map_err(|e| self.err(e))?;
        let value = table.get(path.as_bytes()).map_err(|e| self.err(e))?;
        Ok(value.and_then(|v| postcard::from_bytes(v.value()).ok()))
    }

    /// Every partial record, oldest first (undecodable ones are skipped:
    /// their files are then removed as unrecorded).
    ///
    /// # Errors
    /// [`Error::State`] if the database cannot be read.
    pub fn partials(&self) -> Result<Vec<(RelPath, PartialRecord)>> {
        let txn = self.db.begin_read().map_err(|e| self.err(e))?;
        let table = txn.open_table(PARTIALS).map_err(|e| self.err(e))?;
        let mut all = Vec::new();
        for row in table.iter().map_err(|e| self.err(e))? {
            let (key, value) = row.map_err(|e| self.err(e))?;
            if let (Ok(path), Ok(record)) =
                (RelPath::new(key.value().to_vec()), postcard::from_bytes::<PartialRecord>(value.value()))
            {
                all.push((path, record));
            }
        }
        all.sort_by_key(|(_, record)| record.serial);
        Ok(all)
    }

    /// Records partial files (their data already synced), in one
    /// transaction, each newer than every one before; a digest given is
    /// stored as the chunk list of that partial.
    ///
    /// # Errors
    /// [`Error::State`] if the transaction fails; the database is then as before.
    pub fn record_partials(&self, partials: &mut [(RelPath, PartialRecord, Option<&FileDigest>)]) -> Result<()> {
        if partials.is_empty() {
            return Ok(());
        }
        let txn = self.db.begin_write().map_err(|e| self.err(e))?;
        {
            let mut table = txn.open_table(PARTIALS).map_err(|e| self.err(e))?;
            let mut digests = txn.open_table(PARTIAL_DIGESTS).map_err(|e| self.err(e))?;
            let mut serial = 0;
            for row in table.iter().map_err(|e| self.err(e))? {
                let (_, value) = row.map_err(|e| self.err(e))?;
                if let Ok(record) = postcard::from_bytes::<PartialRecord>(value.value()) {
                    serial = serial.max(record.serial);
                }
            }
            for (path, record, digest) in partials.iter_mut() {
                serial += 1;
                record.serial = serial;
                let value = postcard::to_allocvec(record).expect("invariant: encoding into a Vec cannot fail");
                table.insert(path.as_bytes(), value.as_slice()).map_err(|e| self.err(e))?;
                if let Some(digest) = digest {
                    let value = postcard::to_allocvec(digest).expect("invariant: encoding into a Vec cannot fail");
                    digests.insert(path.as_bytes(), value.as_slice()).map_err(|e| self.err(e))?;
                }
            }
        }
        txn.commit().map_err(|e| self.err(e))
    }

    fn drop_partial_records<'a>(
        &self,
        txn: &redb::WriteTransaction,
        paths: impl Iterator<Item = &'a RelPath>,
    ) -> Result<()> {
        let mut partials = txn.open_table(PARTIALS).map_err(|e| self.err(e))?;
        let mut digests = txn.open_table(PARTIAL_DIGESTS).map_err(|e| self.err(e))?;
        if partials.is_empty().map_err(|e| self.err(e))? {
            return Ok(());
        }
        for path in paths {
            partials.remove(path.as_bytes()).map_err(|e| self.err(e))?;
            digests.remove(path.as_bytes()).map_err(|e| self.err(e))?;
        }
        Ok(())
    }

    /// Drops the partial records of `paths`.
    ///
    /// # Errors
    /// [`Error::State`] if the transaction fails; the database is then as before.
    pub fn remove_partials(&self, paths: &[RelPath]) -> Result<()> {
        if paths.is_empty() {
            return Ok(());
        }
        let txn = self.db.begin_write().map_err(|e| self.err(e))?;
        self.drop_partial_records(&txn, paths.iter())?;
        txn.commit().map_err(|e| self.err(e))
    }
}

/// Whether `error` says the database file is damaged or no database at
/// all (redb reports a file without its magic number as invalid data),
/// rather than held, unreadable or on a failing disk.
pub(crate) fn is_damage(error: &Error) -> bool {
    let Error::State { cause: source, .. } = error else { return false };
    match &**source {
        redb::Error::Corrupted(_) | redb::Error::UpgradeRequired(_) => true,
        redb::Error::Io(e) => e.kind() == std::io::ErrorKind::InvalidData,
        _ => false,
    }
}

fn chunk_offsets(record: &FileRecord) -> impl Iterator<Item = (u64, &crate::chunk::ChunkRef)> {
    record.digest.chunks.iter().scan(0u64, |offset, chunk| {
        let at = *offset;
        *offset += u64::from(chunk.len);
        Some((at, chunk))
    })
}

/// File records within one read transaction.
pub struct FileRecords<'a> {
    table: redb::ReadOnlyTable<&'static [u8], &'static [u8]>,
    db: &'a StateDb,
}

impl FileRecords<'_> {
    /// The record of `path`; one that no longer decodes counts as none,
    /// which only costs a re-read of that file.
    ///
    /// # Errors
    /// [`Error::State`] if the database cannot be read.
    pub fn get(&self, path: &RelPath) -> Result<Option<FileRecord>> {
        let value = self.table.get(path.as_bytes()).map_err(|e| self.db.err(e))?;
        Ok(value.and_then(|v| postcard::from_bytes::<FileRecord>(v.value()).ok()))
    }
}

/// Metadata records within one read transaction.
pub struct MetaRecords<'a> {
    table: redb::ReadOnlyTable<&'static [u8], &'static [u8]>,
    db: &'a StateDb,
    empty: bool,
}

impl MetaRecords<'_> {
    /// The record of `path`; one that no longer decodes counts as none
    /// (the entry is then reported as it is on disk, and sent again).
    ///
    /// # Errors
    /// [`Error::State`] if the database cannot be read.
    pub fn get(&self, path: &RelPath) -> Result<Option<MetaRecord>> {
        if self.empty {
            return Ok(None);
        }
        let value = self.table.get(path.as_bytes()).map_err(|e| self.db.err(e))?;
        Ok(value.and_then(|v| postcard::from_bytes::<MetaRecord>(v.value()).ok()))
    }

    /// The original metadata of `path` while it still holds what was
    /// applied, `on_disk`.
    ///
    /// # Errors
    /// [`Error::State`] if the database cannot be read.
    pub fn original(&self, path: &RelPath, on_disk: &Meta) -> Result<Option<Meta>> {
        Ok(self.get(path)?.filter(|r| r.applied == *on_disk).map(|r| r.original))
    }
}

/// A scan's view of the metadata records alone: see [`StateDb::meta_overlay`].
pub struct MetaOverlay<'a> {
    metas: MetaRecords<'a>,
}

impl Records for MetaOverlay<'_> {
    fn previous(&mut self, _: &RelPath) -> Result<Option<FileRecord>> {
        Ok(None)
    }

    fn record(&mut self, _: &RelPath, _: &FileRecord, _: bool) -> Result<()> {
        Ok(())
    }

    fn original_meta(&mut self, path: &RelPath, on_disk: &Meta) -> Result<Option<Meta>> {
        self.metas.original(path, on_disk)
    }
}

/// Brings the file records in line with a scan as it runs: see
/// [`StateDb::recorder`].
pub struct ScanRecorder<'a> {
    previous: FileRecords<'a>,
    metas: MetaRecords<'a>,
    upserts: Vec<(RelPath, FileRecord)>,
}

impl Records for ScanRecorder<'_> {
    fn previous(&mut self, path: &RelPath) -> Result<Option<FileRecord>> {
        self.previous.get(path)
    }

    fn original_meta(&mut self, path: &RelPath, on_disk: &Meta) -> Result<Option<Meta>> {
        self.metas.original(path, on_disk)
    }

    fn record(&mut self, path: &RelPath, record: &FileRecord, changed: bool) -> Result<()> {
        if !changed {
            return Ok(());
        }
        self.upserts.push((path.clone(), record.clone()));
        // Each record describes its file as read just now, so writing it
        // before the scan ends is what writing it after would be.
        if self.upserts.len() >= SCAN_FLUSH_RECORDS {
            self.previous.db.update(&self.upserts, &[])?;
            self.upserts.clear();
        }
        Ok(())
    }
}

impl ScanRecorder<'_> {
    /// Writes the last changed records and drops those of files `scanned`
    /// no longer lists, in one transaction.
    ///
    /// # Errors
    /// [`Error::State`] if the database cannot be read or written.
    pub fn finish(self, scanned: &Manifest) -> Result<()> {
        let db = self.previous.db;
        let mut removals = Vec::new();
        // A fresh view: it also sees the records flushed during the scan.
        let records = db.records()?;
        for row in records.table.iter().map_err(|e| db.err(e))? {
            let (key, _) = row.map_err(|e| db.err(e))?;
            // A key that is no path was never written by xfer: left alone.
            let Ok(path) = RelPath::new(key.value().to_vec()) else { continue };
            if scanned.get(&path).is_none_or(|e| e.file().is_none()) {
                removals.push(path);
            }
        }
        drop(records);
        // Metadata records of entries gone from the tree.
        let mut stale_metas = Vec::new();
        if !self.metas.empty {
            for row in self.metas.table.iter().map_err(|e| db.err(e))? {
                let (key, _) = row.map_err(|e| db.err(e))?;
                let Ok(path) = RelPath::new(key.value().to_vec()) else { continue };
                if scanned.get(&path).is_none() {
                    stale_metas.push((path, None));
                }
            }
        }
        if self.upserts.is_empty() && removals.is_empty() && stale_metas.is_empty() {
            return Ok(());
        }
        db.update_with_metas(&self.upserts, &removals, &stale_metas)
    }
}

/// Chunk lookups within one read transaction.
pub struct ChunkIndex<'a> {
    table: redb::ReadOnlyMultimapTable<&'static [u8; 32], &'static [u8]>,
    db: &'a StateDb,
}

impl ChunkIndex<'_> {
    /// Every recorded location of `id`.
    ///
    /// # Errors
    /// [`Error::State`] if the database cannot be read.
    pub fn locations(&self, id: &ChunkId) -> Result<Vec<ChunkLoc>> {
        let mut locs = Vec::new();
        for value in self.table.get(&id.0).map_err(|e| self.db.err(e))? {
            let value = value.map_err(|e| self.db.err(e))?;
            locs.extend(ChunkLoc::decode(value.value()));
        }
        Ok(locs)
    }

    /// Whether some file is recorded to hold `id`.
    ///
    /// # Errors
    /// [`Error::State`] if the database cannot be read.
    pub fn contains(&self, id: &ChunkId) -> Result<bool> {
        let mut values = self.table.get(&id.0).map_err(|e| self.db.err(e))?;
        Ok(values.next().is_some())
    }
}

/// The chunk index of a tree's state database, opened read-only: a
/// restore reads chunks from the mirror without taking the database from
/// the writer that owns it.
pub struct ChunkLookup {
    db: redb::ReadOnlyDatabase,
    path: PathBuf,
}

impl ChunkLookup {
    /// Opens the database at `path` read-only, if there is one.
    ///
    /// # Errors
    /// [`Error::State`] if it cannot be opened (damaged, or held by a writer
    /// that shares no reads).
    pub fn open(path: &Path) -> Result<Option<ChunkLookup>> {
        if !path.exists() {
            return Ok(None);
        }
        let db = Builder::new().set_cache_size(CACHE_BYTES).open_read_only(path).map_err(|e| Error::state(path, e))?;
        Ok(Some(ChunkLookup { db, path: path.to_path_buf() }))
    }

    /// Every recorded location of `id`.
    ///
    /// # Errors
    /// [`Error::State`] if the database cannot be read.
    pub fn locations(&self, id: &ChunkId) -> Result<Vec<ChunkLoc>> {
        let err = |e: redb::Error| Error::state(&self.path, e);
        let txn = self.db.begin_read().map_err(|e| err(e.into()))?;
        let table = match txn.open_multimap_table(CHUNKS) {
            Ok(table) => table,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(err(e.into())),
        };
        let mut locs = Vec::new();
        for value in table.get(&id.0).map_err(|e| err(e.into()))? {
            let value = value.map_err(|e| err(e.into()))?;
            locs.extend(ChunkLoc::decode(value.value()));
        }
        Ok(locs)
    }
}
