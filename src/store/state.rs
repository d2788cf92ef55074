//! The receiver's state database (redb): file records for the quick check and
//! where each chunk's bytes sit in the tree.
//!
//! The database only ever describes data that is already durable: it is
//! committed after the files it names were fsynced and renamed. If it falls
//! behind (a crash between rename and commit), the stat keys of the renamed
//! files no longer match, so the next scan re-reads them. Nothing here is
//! trusted blindly: chunk bytes are re-hashed when read.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use redb::{Database, MultimapTableDefinition, ReadableDatabase, ReadableTable, TableDefinition};

use crate::error::{Error, IoContext, Result};
use crate::hash::ChunkId;
use crate::manifest::RelPath;
use crate::scan::FileRecord;

const FILES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("files");
const CHUNKS: MultimapTableDefinition<&[u8; 32], &[u8]> = MultimapTableDefinition::new("chunks");

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
    /// # Errors
    /// [`Error::Io`] if the directory cannot be made, [`Error::State`] if the
    /// database cannot be opened (for example, another xfer holds it).
    pub fn open(path: &Path) -> Result<StateDb> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).at(dir)?;
        }
        let db = Database::create(path).map_err(|e| Error::state(path, e))?;
        let state = StateDb { db, path: path.to_path_buf() };
        let txn = state.db.begin_write().map_err(|e| state.err(e))?;
        txn.open_table(FILES).map_err(|e| state.err(e))?;
        txn.open_multimap_table(CHUNKS).map_err(|e| state.err(e))?;
        txn.commit().map_err(|e| state.err(e))?;
        Ok(state)
    }

    fn err(&self, e: impl Into<redb::Error>) -> Error {
        Error::state(&self.path, e)
    }

    /// Every file record. A record that no longer decodes is dropped, which
    /// only costs a re-read of that file.
    ///
    /// # Errors
    /// [`Error::State`] if the database cannot be read.
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

    /// A read view for chunk lookups, consistent for its lifetime.
    ///
    /// # Errors
    /// [`Error::State`] if the database cannot be read.
    pub fn chunks(&self) -> Result<ChunkIndex<'_>> {
        let txn = self.db.begin_read().map_err(|e| self.err(e))?;
        let table = txn.open_multimap_table(CHUNKS).map_err(|e| self.err(e))?;
        Ok(ChunkIndex { table, db: self })
    }

    /// Brings the file records in line with a new scan of the tree: writes
    /// the records that changed since `previous` and drops the vanished ones.
    ///
    /// # Errors
    /// [`Error::State`] if the transaction fails.
    pub fn record_scan(
        &self,
        previous: &HashMap<RelPath, FileRecord>,
        records: &HashMap<RelPath, FileRecord>,
    ) -> Result<()> {
        let upserts: Vec<(RelPath, FileRecord)> = records
            .iter()
            .filter(|(path, record)| previous.get(*path) != Some(*record))
            .map(|(path, record)| (path.clone(), record.clone()))
            .collect();
        let removals: Vec<RelPath> = previous.keys().filter(|path| !records.contains_key(*path)).cloned().collect();
        if upserts.is_empty() && removals.is_empty() {
            return Ok(());
        }
        self.update(&upserts, &removals)
    }

    /// Replaces the records of `upserts`, removes those of `removals`, and
    /// keeps the chunk locations in step, in one transaction.
    ///
    /// # Errors
    /// [`Error::State`] if the transaction fails; the database is then as before.
    pub fn update(&self, upserts: &[(RelPath, FileRecord)], removals: &[RelPath]) -> Result<()> {
        let txn = self.db.begin_write().map_err(|e| self.err(e))?;
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
        crate::crashpoint::hit("state.txn");
        txn.commit().map_err(|e| self.err(e))
    }
}

fn chunk_offsets(record: &FileRecord) -> impl Iterator<Item = (u64, &crate::chunk::ChunkRef)> {
    record.digest.chunks.iter().scan(0u64, |offset, chunk| {
        let at = *offset;
        *offset += u64::from(chunk.len);
        Some((at, chunk))
    })
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
