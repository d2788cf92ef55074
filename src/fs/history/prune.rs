//! Prune, in two phases. Phase one (every run) finds the blobs the
//! snapshots reference, rewrites mostly-unreferenced packs, writes one new
//! index without the packs it drops, removes the index files it replaced,
//! and lists the dropped packs in `doomed/` with the time. Phase two (the
//! next run) deletes them, but only once no writer that opened before
//! that time is still open (it may hold their blobs in its index and have
//! recorded snapshots that use them), and puts back any pack a snapshot
//! references after all. A pack file no index names and no doom record
//! lists (a crash between steps, or a writer's pack not yet indexed) is
//! doomed too: the same rule keeps it while its writer may still index it.

use std::collections::HashSet;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::index::Index;
use super::{disk, History, PruneReport};
use crate::error::{Error, IoContext, Result};
use crate::hash::ChunkId;
use crate::history::index::IndexedPack;
use crate::history::pack::{decode_header, header_len, TRAILER_LEN};
use crate::history::{hex, prune, tree, unhex32, FormatError};

/// One `doomed/` record.
#[derive(Serialize, Deserialize)]
struct DoomRecord {
    /// When the packs left the index, ms since the epoch.
    time_ms: u64,
    /// The packs, hex.
    packs: Vec<String>,
}

pub(super) fn run(h: &mut History) -> Result<PruneReport> {
    h.flush()?;
    let mut attempts = 0;
    let (doomed, referenced) = loop {
        // Other writers may have added packs and snapshots since this one opened.
        h.index = Index::load(&h.dir.join("index"))?;
        let doomed = read_doom_records(h)?;
        // Tree blobs of snapshots a writer recorded against a doomed pack
        // are only there: read them from it while finding what is referenced.
        let mut fallback = Index::default();
        for (_, record) in &doomed {
            for pack in &record.packs {
                if let Some(pack) = doomed_pack(h, pack)? {
                    fallback.add_pack(&pack).map_err(|e| h.format_error(e))?;
                }
            }
        }
        match referenced(h, &fallback) {
            Ok(referenced) => break (doomed, referenced),
            // A snapshot recorded since the index was read may name blobs
            // of an index file written after it: read the index again.
            Err(_) if attempts < 3 => attempts += 1,
            Err(e) => return Err(e),
        }
    };
    let mut report = PruneReport::default();
    let (kept_records, reinstated) = phase_two(h, doomed, &referenced, &mut report)?;
    phase_one(h, &referenced, &kept_records, reinstated, &mut report)?;
    remove_stale_temps(&h.dir)?;
    report.bytes_after = pack_bytes(&h.dir.join("packs"))?;
    Ok(report)
}

/// Tidies temporaries crashed writers left in every directory of the store.
fn remove_stale_temps(dir: &Path) -> Result<()> {
    for sub in ["index", "snapshots", "doomed", "locks"] {
        disk::remove_stale_temps(&dir.join(sub))?;
    }
    disk::remove_stale_temps(dir)?;
    let packs = dir.join("packs");
    for sub in std::fs::read_dir(&packs).at(&packs)? {
        disk::remove_stale_temps(&sub.at(&packs)?.path())?;
    }
    Ok(())
}

/// Every blob a snapshot references: tree blobs and file chunks (most of
/// the latter are in the mirror, not here).
fn referenced(h: &History, fallback: &Index) -> Result<HashSet<ChunkId>> {
    let (mut trees, mut blobs) = (HashSet::new(), HashSet::new());
    for record in h.snapshots()? {
        let root = h.snapshot_root(&record)?;
        let fetch = |id: &ChunkId| match h.tree_blob(id) {
            Err(super::LoadError::Format(_)) => match h.blob_from(fallback, id) {
                Ok(Some(bytes)) => Ok(bytes),
                Ok(None) => h.tree_blob(id),
                Err(e) => Err(super::LoadError::Other(e)),
            },
            other => other,
        };
        tree::referenced(root, &mut trees, &mut blobs, fetch).map_err(|e| h.load_error(e))?;
    }
    Ok(blobs)
}

fn read_doom_records(h: &History) -> Result<Vec<(String, DoomRecord)>> {
    let dir = h.dir.join("doomed");
    let mut records = Vec::new();
    for name in disk::list(&dir)? {
        let path = dir.join(&name);
        let bytes = std::fs::read(&path).at(&path)?;
        // A record that does not parse is left alone: its packs stay.
        match serde_json::from_slice(&bytes) {
            Ok(record) => records.push((name, record)),
            Err(e) => tracing::warn!(record = %path.display(), error = %e, "unreadable doom record left in place"),
        }
    }
    Ok(records)
}

/// A doomed pack's blobs from its own header, if its file is there and no
/// index names it.
fn doomed_pack(h: &History, pack: &str) -> Result<Option<IndexedPack>> {
    let Some(id) = unhex32(pack) else { return Ok(None) };
    if h.index.has_pack(&id) {
        return Ok(None);
    }
    let path = h.pack_path(&id);
    match read_pack(&path, id) {
        Ok(pack) => Ok(Some(pack)),
        Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => Ok(None),
        // Its blobs cannot be known, so it is never deleted (every prune
        // dooms it again as a pack no index names).
        Err(e @ Error::History { .. }) => {
            tracing::warn!(error = %e, "a doomed pack is damaged; it stays on disk");
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// A pack's entries from its header, checked against its length.
fn read_pack(path: &Path, id: [u8; 32]) -> Result<IndexedPack> {
    let file = File::open(path).at(path)?;
    let len = file.metadata().at(path)?.len();
    let bad = |e: FormatError| Error::History { path: path.to_path_buf(), source: Box::new(e) };
    let mut trailer = [0u8; TRAILER_LEN];
    file.read_exact_at(&mut trailer, len.saturating_sub(TRAILER_LEN as u64)).at(path)?;
    let header_len = header_len(&trailer, len).map_err(bad)?;
    let mut header = vec![0u8; header_len];
    file.read_exact_at(&mut header, len - (TRAILER_LEN + header_len) as u64).at(path)?;
    let entries = decode_header(&header, len).map_err(bad)?;
    Ok(IndexedPack { id, len, entries })
}

/// Deletes or puts back the packs of earlier doom records no older writer
/// may need; returns the records left for a later run and the index files
/// written for the packs put back.
fn phase_two(
    h: &mut History,
    doomed: Vec<(String, DoomRecord)>,
    referenced: &HashSet<ChunkId>,
    report: &mut PruneReport,
) -> Result<(Vec<DoomRecord>, Vec<String>)> {
    let writers = disk::other_writers(&h.dir.join("locks"), &h.lock.path)?;
    let (mut left, mut written) = (Vec::new(), Vec::new());
    for (name, record) in doomed {
        if writers.iter().any(|&start| start <= record.time_ms) {
            left.push(record);
            continue;
        }
        for pack in &record.packs {
            let Some(pack) = doomed_pack(h, pack)? else { continue };
            let needed = pack.entries.iter().any(|e| referenced.contains(&e.id) && h.index.get(&e.id).is_none());
            if needed {
                written.push(h.write_index(std::slice::from_ref(&pack))?);
                h.index.add_pack(&pack).map_err(|e| h.format_error(e))?;
                report.packs_reinstated += 1;
            } else {
                crate::crashpoint::hit("history.prune.delete");
                disk::remove(&h.pack_dir(&pack.id), &hex(&pack.id))?;
                report.packs_deleted += 1;
                report.bytes_freed += pack.len;
            }
        }
        disk::remove(&h.dir.join("doomed"), &name)?;
    }
    Ok((left, written))
}

/// Plans, repacks, writes the new index, removes the old ones, and dooms
/// what left the index.
fn phase_one(
    h: &mut History,
    referenced: &HashSet<ChunkId>,
    kept_records: &[DoomRecord],
    reinstated: Vec<String>,
    report: &mut PruneReport,
) -> Result<()> {
    // The view `referenced` was computed against: packs indexed since are
    // another writer's, left alone.
    let mut old_files = h.index.files.clone();
    old_files.extend(reinstated);
    let packs = h.index.packs_with_entries();
    let plan = prune::plan(&packs, referenced, h.min_repack_gain);
    let mut new_packs = repack(h, &packs, &plan.repack, referenced, &mut old_files)?;
    report.packs_repacked = plan.repack.len() as u64;
    let dropped: HashSet<[u8; 32]> = plan.doom.iter().chain(&plan.repack).copied().collect();
    let mut kept: Vec<IndexedPack> = packs.into_iter().filter(|p| !dropped.contains(&p.id)).collect();
    kept.append(&mut new_packs);
    if dropped.is_empty() && old_files.len() <= 1 {
        // Nothing leaves the index: leave it as it is.
        return doom_orphans(h, &kept, kept_records, Vec::new(), report);
    }
    let new_index = write_index_files(h, &kept)?;
    crate::crashpoint::hit("history.prune.new_index");
    for name in old_files.iter().filter(|&name| !new_index.contains(name)) {
        disk::remove(&h.dir.join("index"), name)?;
    }
    let dropped = plan.doom.iter().chain(&plan.repack).map(|id| hex(id)).collect();
    report.packs_doomed = plan.doom.len() as u64;
    doom_orphans(h, &kept, kept_records, dropped, report)?;
    h.index = Index::load(&h.dir.join("index"))?;
    Ok(())
}

/// Blobs one index file names at most: opening a store then reads at most
/// ~8 MiB of index at a time, however many blobs it holds.
const INDEX_FILE_BLOBS: usize = 160_000;

/// Writes `packs` as index files of at most [`INDEX_FILE_BLOBS`] blobs
/// each (a pack's entries stay in one file); returns their names.
fn write_index_files(h: &History, packs: &[IndexedPack]) -> Result<Vec<String>> {
    let mut names = Vec::new();
    let (mut start, mut blobs) = (0, 0);
    for (i, pack) in packs.iter().enumerate() {
        if blobs > 0 && blobs + pack.entries.len() > INDEX_FILE_BLOBS {
            names.push(h.write_index(&packs[start..i])?);
            (start, blobs) = (i, 0);
        }
        blobs += pack.entries.len();
    }
    if start < packs.len() || names.is_empty() {
        names.push(h.write_index(&packs[start..])?);
    }
    Ok(names)
}

/// Copies the referenced blobs of the packs `ids` into new packs; their
/// index files join `index_files` (the new index replaces them).
fn repack(
    h: &mut History,
    packs: &[IndexedPack],
    ids: &[[u8; 32]],
    referenced: &HashSet<ChunkId>,
    index_files: &mut Vec<String>,
) -> Result<Vec<IndexedPack>> {
    let mut written = Vec::new();
    let mut copied = HashSet::new();
    for pack in packs.iter().filter(|p| ids.contains(&p.id)) {
        for entry in pack.entries.iter().filter(|e| referenced.contains(&e.id)) {
            if !copied.insert(entry.id) {
                continue;
            }
            let raw = h.blob_from(&h.index, &entry.id)?.ok_or_else(|| {
                h.format_error(crate::history::malformed_error("pack", format!("blob {} vanished", entry.id)))
            })?;
            h.pending.add(entry.kind, entry.id, &raw).map_err(|e| h.format_error(e))?;
            if h.pending.len() >= h.pack_target {
                written.extend(h.flush_pack()?);
            }
        }
    }
    written.extend(h.flush_pack()?);
    Ok(written
        .into_iter()
        .map(|(pack, name)| {
            index_files.push(name);
            pack
        })
        .collect())
}

/// Writes a doom record for `dropped` and for every pack file that neither
/// `kept` nor a pending record names.
fn doom_orphans(
    h: &History,
    kept: &[IndexedPack],
    kept_records: &[DoomRecord],
    mut dropped: Vec<String>,
    report: &mut PruneReport,
) -> Result<()> {
    let known: HashSet<String> = kept
        .iter()
        .map(|p| hex(&p.id))
        .chain(kept_records.iter().flat_map(|r| r.packs.iter().cloned()))
        .chain(dropped.iter().cloned())
        .collect();
    // Index files other writers wrote during this run name their packs.
    let current = Index::load(&h.dir.join("index"))?;
    let packs = h.dir.join("packs");
    for sub in std::fs::read_dir(&packs).at(&packs)? {
        let sub = sub.at(&packs)?.path();
        for name in disk::list(&sub)? {
            if !known.contains(&name) && !current.has_pack(&unhex32(&name).unwrap_or_default()) {
                report.packs_doomed += 1;
                dropped.push(name);
            }
        }
    }
    if dropped.is_empty() {
        return Ok(());
    }
    // Taken after the old index files are gone: a writer that opens from
    // now on cannot see the dropped packs.
    let record = DoomRecord { time_ms: disk::now_ms(), packs: dropped };
    let bytes = serde_json::to_vec(&record).expect("invariant: a doom record serializes");
    disk::write_durably(&h.dir.join("doomed"), &hex(blake3::hash(&bytes).as_bytes()), &bytes)?;
    Ok(())
}

/// Bytes of every pack file.
fn pack_bytes(packs: &Path) -> Result<u64> {
    let mut total = 0;
    for sub in std::fs::read_dir(packs).at(packs)? {
        let sub = sub.at(packs)?.path();
        for name in disk::list(&sub)? {
            let path = sub.join(name);
            total += std::fs::metadata(&path).at(&path)?.len();
        }
    }
    Ok(total)
}
