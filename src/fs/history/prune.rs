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
//!
//! On an object store, where there are no writer locks, "no older writer
//! is open" becomes "the doom record is older than the grace period" (a
//! writer refuses to commit once open half that long), and a pack younger
//! than the grace by its last-modified time is neither doomed unindexed
//! nor deleted.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::index::Index;
use super::objects::Listed;
use super::{disk, pack_key, History, PruneReport};
use crate::error::{Error, Result};
use crate::hash::ChunkId;
use crate::history::index::IndexedPack;
use crate::history::pack::{decode_header, header_len, PackEntry, TRAILER_LEN};
use crate::history::{hex, prune, tree, unhex32, FormatError};

/// Largest doom record read (a list of pack names).
const MAX_DOOM_RECORD: u64 = 64 << 20;

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
        h.reload_index()?;
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
    if let Some((dir, _)) = &h.local {
        remove_stale_temps(dir)?;
    }
    report.bytes_after = h.pack_bytes()?;
    Ok(report)
}

/// Tidies temporaries crashed writers left in every directory of the store.
fn remove_stale_temps(dir: &Path) -> Result<()> {
    for sub in ["index", "snapshots", "doomed", "locks"] {
        disk::remove_stale_temps(&dir.join(sub))?;
    }
    disk::remove_stale_temps(dir)?;
    let packs = dir.join("packs");
    let subs = std::fs::read_dir(&packs).map_err(|e| Error::io(&packs, e))?;
    for sub in subs {
        disk::remove_stale_temps(&sub.map_err(|e| Error::io(&packs, e))?.path())?;
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
    let mut records = Vec::new();
    for listed in h.objects.list("doomed")? {
        // Gone since the listing: another prune's phase two took it.
        let Some(bytes) = h.objects.get(&listed.key, MAX_DOOM_RECORD)? else { continue };
        // A record that does not parse is left alone: its packs stay.
        match serde_json::from_slice(&bytes) {
            Ok(record) => records.push((listed.name, record)),
            Err(e) => {
                let path = h.objects.label(&listed.key);
                tracing::warn!(record = %path.display(), error = %e, "unreadable doom record left in place");
            }
        }
    }
    Ok(records)
}

/// Where each blob of the doomed packs no index names sits: a snapshot a
/// writer recorded against a pack a prune doomed meanwhile (the writer's
/// index still had it) reads its blobs there until a later prune puts the
/// pack back.
pub(super) fn doomed_blobs(h: &History) -> Result<HashMap<ChunkId, ([u8; 32], PackEntry)>> {
    let mut blobs = HashMap::new();
    for (_, record) in read_doom_records(h)? {
        for pack in &record.packs {
            let Some(pack) = doomed_pack(h, pack)? else { continue };
            blobs.extend(pack.entries.into_iter().map(|entry| (entry.id, (pack.id, entry))));
        }
    }
    Ok(blobs)
}

/// A doomed pack's blobs from its own header, if its file is there and no
/// index names it.
fn doomed_pack(h: &History, pack: &str) -> Result<Option<IndexedPack>> {
    let Some(id) = unhex32(pack) else { return Ok(None) };
    if h.index.has_pack(&id) {
        return Ok(None);
    }
    match read_pack(h, id) {
        Ok(pack) => Ok(pack),
        // Its blobs cannot be known, so it is never deleted (every prune
        // dooms it again as a pack no index names).
        Err(e @ Error::History { .. }) => {
            tracing::warn!(error = %e, "a doomed pack is damaged; it stays on disk");
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// A pack's entries from its header, checked against its length; `None`
/// if the pack is gone.
fn read_pack(h: &History, id: [u8; 32]) -> Result<Option<IndexedPack>> {
    let key = pack_key(&id);
    let Some(len) = h.objects.size(&key)? else { return Ok(None) };
    let bad = |e: FormatError| Error::History { path: h.objects.label(&key), cause: Box::new(e) };
    if len < TRAILER_LEN as u64 {
        return Err(bad(crate::history::malformed_error("pack", "shorter than its trailer")));
    }
    // Deleted since its size was read (another prune): gone, not an error.
    let read = |range: std::ops::Range<u64>| match h.objects.get_range(&key, range) {
        Err(e) if h.objects.size(&key).is_ok_and(|size| size.is_none()) => {
            tracing::debug!(error = %e, "a doomed pack went while read");
            Ok(None)
        }
        other => other.map(Some),
    };
    let Some(trailer) = read(len - TRAILER_LEN as u64..len)? else { return Ok(None) };
    let trailer: [u8; TRAILER_LEN] = trailer.try_into().expect("invariant: get_range returns the length asked");
    let header_len = header_len(&trailer, len).map_err(bad)?;
    let start = len - (TRAILER_LEN + header_len) as u64;
    let Some(header) = read(start..start + header_len as u64)? else { return Ok(None) };
    let entries = decode_header(&header, len).map_err(bad)?;
    Ok(Some(IndexedPack { id, len, entries }))
}

/// Whether a doom record of `time_ms` may now be acted on: on a local
/// store, no writer that opened before it is still open; on an object
/// store, it is older than the grace.
fn record_settled(h: &History, writers: &[u64], time_ms: u64, now_ms: u64) -> bool {
    match &h.local {
        Some(_) => !writers.iter().any(|&start| start <= time_ms),
        None => older_than(time_ms, now_ms, h.prune_grace),
    }
}

fn older_than(time_ms: u64, now_ms: u64, grace: Duration) -> bool {
    time_ms <= now_ms && Duration::from_millis(now_ms - time_ms) >= grace
}

/// Last-modified times of the packs, on an object store only (a local
/// store's writer locks cover young packs).
fn pack_ages(h: &History) -> Result<HashMap<String, u64>> {
    if h.local.is_some() {
        return Ok(HashMap::new());
    }
    Ok(h.objects.list("packs")?.into_iter().map(|l| (l.name, l.modified_ms)).collect())
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
    let writers = match &h.local {
        Some((dir, lock)) => disk::other_writers(&dir.join("locks"), &lock.path)?,
        None => Vec::new(),
    };
    let now = disk::now_ms();
    let ages = if doomed.is_empty() { HashMap::new() } else { pack_ages(h)? };
    let (mut left, mut written) = (Vec::new(), Vec::new());
    for (name, record) in doomed {
        if !record_settled(h, &writers, record.time_ms, now) {
            left.push(record);
            continue;
        }
        let mut young = Vec::new();
        for pack in &record.packs {
            // Put again since it was doomed (a writer with the same bytes):
            // its index may be on its way.
            if ages.get(pack).is_some_and(|&modified| !older_than(modified, now, h.prune_grace)) {
                young.push(pack.clone());
                continue;
            }
            let Some(pack) = doomed_pack(h, pack)? else { continue };
            let needed = pack.entries.iter().any(|e| referenced.contains(&e.id) && h.index.get(&e.id).is_none());
            if needed {
                written.push(h.write_index(std::slice::from_ref(&pack))?);
                h.index.add_pack(&pack).map_err(|e| h.format_error(e))?;
                report.packs_reinstated += 1;
            } else {
                crate::crashpoint::hit("history.prune.delete");
                h.objects.delete(&pack_key(&pack.id))?;
                report.packs_deleted += 1;
                report.bytes_freed += pack.len;
            }
        }
        if !young.is_empty() {
            // Judged again by a later run, from now.
            let record = DoomRecord { time_ms: now, packs: young };
            write_doom_record(h, &record)?;
            left.push(record);
        }
        h.objects.delete(&format!("doomed/{name}"))?;
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
    let mut plan = prune::plan(&packs, referenced, h.min_repack_gain);
    // A writer indexes each pack before it records the snapshot that uses
    // it: a pack it may still be about to reference stays in the index.
    let young = young_packs(h)?;
    plan.doom.retain(|id| !young.contains(id));
    plan.repack.retain(|id| !young.contains(id));
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
        h.objects.delete(&format!("index/{name}"))?;
    }
    let dropped = plan.doom.iter().chain(&plan.repack).map(|id| hex(id)).collect();
    report.packs_doomed = plan.doom.len() as u64;
    doom_orphans(h, &kept, kept_records, dropped, report)?;
    h.reload_index()?;
    Ok(())
}

/// The packs a writer still open may have written and not yet referenced
/// from a snapshot: on an object store, those younger than the grace (a
/// writer refuses to commit once open half that long); on a local store,
/// those written since the oldest other open writer started.
fn young_packs(h: &History) -> Result<HashSet<[u8; 32]>> {
    let now = disk::now_ms();
    let young: Box<dyn Fn(u64) -> bool> = match &h.local {
        None => Box::new(move |modified| !older_than(modified, now, h.prune_grace)),
        Some((dir, lock)) => match disk::other_writers(&dir.join("locks"), &lock.path)?.into_iter().min() {
            Some(oldest) => Box::new(move |modified| modified >= oldest),
            None => return Ok(HashSet::new()),
        },
    };
    Ok(h.objects.list("packs")?.into_iter().filter(|l| young(l.modified_ms)).filter_map(|l| unhex32(&l.name)).collect())
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
    let current = Index::load(h.objects.as_ref())?;
    let now = disk::now_ms();
    for Listed { name, modified_ms, .. } in h.objects.list("packs")? {
        if known.contains(&name) || current.has_pack(&unhex32(&name).unwrap_or_default()) {
            continue;
        }
        // On an object store a young unindexed pack is a writer's whose
        // index may be on its way: leave it to a later run.
        if h.local.is_none() && !older_than(modified_ms, now, h.prune_grace) {
            continue;
        }
        report.packs_doomed += 1;
        dropped.push(name);
    }
    if dropped.is_empty() {
        return Ok(());
    }
    // Taken after the old index files are gone: a writer that opens from
    // now on cannot see the dropped packs.
    write_doom_record(h, &DoomRecord { time_ms: disk::now_ms(), packs: dropped })
}

fn write_doom_record(h: &History, record: &DoomRecord) -> Result<()> {
    let bytes = serde_json::to_vec(record).expect("invariant: a doom record serializes");
    h.objects.put(&format!("doomed/{}", hex(blake3::hash(&bytes).as_bytes())), &bytes)
}
