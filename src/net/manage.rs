//! The server's history over the wire: listing snapshots, forgetting
//! them, pruning, and opening a snapshot for a pull (`Open.at`); and the
//! client's side of the first three.

use std::sync::Arc;

use quinn::{Connection, SendStream};
use xfer_protocol::msg::{self, Direction, Hash, SnapshotEntry, Tag};
use xfer_protocol::{frame, CloseCode, Message, MAX_SNAPSHOTS_PER_MESSAGE};

use super::frames::{ended, inbound, open_control};
use super::served::ServeConfig;
use super::watch::Activity;
use crate::fs::history::{History, PruneReport, Requests, SnapshotReader, SnapshotRecord, SnapshotTree};
use crate::fs::store::repo::{SnapshotSource, StoreReader};
use crate::manifest::RelPath;
use crate::session::{root_hash, SessionError, WalkedSource};

/// The name snapshot records give the served tree at `path`: `/site`, or
/// `/` for the root.
pub fn tree_name(path: &[u8]) -> String {
    format!("/{}", String::from_utf8_lossy(path))
}

/// Whether the tree named `tree` is `under` or lies below it.
pub fn tree_within(tree: &str, under: &str) -> bool {
    under == "/" || tree == under || tree.strip_prefix(under).is_some_and(|rest| rest.starts_with('/'))
}

fn refused(code: CloseCode, message: String) -> SessionError {
    SessionError::Peer { code: Some(code), message }
}

/// A record as the wire carries it.
fn to_entry(record: &SnapshotRecord) -> Result<SnapshotEntry, SessionError> {
    let hash = |hex: &str, what: &str| {
        blake3::Hash::from_hex(hex)
            .map(|h| *h.as_bytes())
            .map_err(|_| refused(CloseCode::Internal, format!("snapshot {}: its {what} is not a hash", record.id)))
    };
    Ok(SnapshotEntry {
        id: hash(&record.id, "id")?,
        time: record.time,
        nanos: record.nanos,
        tree: record.tree.clone(),
        client: record.client.clone(),
        host: record.host.clone(),
        source: record.source.clone(),
        tags: record.tags.iter().map(|(key, value)| Tag { key: key.clone(), value: value.clone() }).collect(),
        partial: record.partial,
        files: record.files,
        dirs: record.dirs,
        bytes: record.bytes,
        root: hash(&record.root, "root")?,
    })
}

/// A record as the client lists it.
pub fn from_entry(entry: &SnapshotEntry) -> SnapshotRecord {
    SnapshotRecord {
        id: blake3::Hash::from_bytes(entry.id).to_hex().to_string(),
        time: entry.time,
        nanos: entry.nanos,
        time_text: crate::history::select::format_time(entry.time),
        tree: entry.tree.clone(),
        client: entry.client.clone(),
        host: entry.host.clone(),
        source: entry.source.clone(),
        tags: entry.tags.iter().map(|t| (t.key.clone(), t.value.clone())).collect(),
        partial: entry.partial,
        files: entry.files,
        dirs: entry.dirs,
        bytes: entry.bytes,
        root: blake3::Hash::from_bytes(entry.root).to_hex().to_string(),
    }
}

/// The snapshots of the trees at or below `tree`, in bounded batches; the
/// last has `more` unset (an empty history is one empty batch).
pub fn list_messages(records: &[SnapshotRecord], tree: &str) -> Result<Vec<Message>, SessionError> {
    let mine: Vec<SnapshotEntry> =
        records.iter().filter(|r| tree_within(&r.tree, tree)).map(to_entry).collect::<Result<_, _>>()?;
    let mut batches: Vec<Message> = mine
        .chunks(MAX_SNAPSHOTS_PER_MESSAGE)
        .map(|batch| Message::SnapshotList(msg::SnapshotList { snapshots: batch.to_vec(), more: true }))
        .collect();
    match batches.last_mut() {
        Some(Message::SnapshotList(last)) => last.more = false,
        _ => batches.push(Message::SnapshotList(msg::SnapshotList { snapshots: Vec::new(), more: false })),
    }
    Ok(batches)
}

/// Forgets the snapshots `ids`, each of a tree at or below `tree` (a
/// client granted one tree cannot forget another's).
fn forget(history: &mut History, tree: &str, ids: &[Hash]) -> Result<Message, SessionError> {
    let records = history.snapshots()?;
    let mut forgotten = Vec::new();
    for id in ids {
        let id = blake3::Hash::from_bytes(*id).to_hex().to_string();
        match records.iter().find(|r| r.id == id) {
            Some(r) if tree_within(&r.tree, tree) => forgotten.push(id),
            Some(r) => {
                return Err(refused(
                    CloseCode::OutsideAllowedPath,
                    format!("snapshot {} is of {}, not of {tree}; forget it through its own tree", &id[..12], r.tree),
                ))
            }
            None => {
                return Err(refused(
                    CloseCode::NotFound,
                    format!("no snapshot {} in the history of {tree}; `xfer snapshots` lists them", &id[..12]),
                ))
            }
        }
    }
    forgotten.sort();
    forgotten.dedup();
    history.forget(&forgotten)?;
    Ok(Message::Forgotten(msg::Forgotten { count: forgotten.len() as u64 }))
}

fn pruned(report: &PruneReport) -> Message {
    Message::Pruned(msg::Pruned {
        packs_deleted: report.packs_deleted,
        bytes_freed: report.bytes_freed,
        packs_doomed: report.packs_doomed,
        packs_repacked: report.packs_repacked,
        packs_reinstated: report.packs_reinstated,
        bytes_after: report.bytes_after,
    })
}

/// What the server answers a history request with (after its `Hello`),
/// and what the history store cost on a store-only server.
fn answer(config: &ServeConfig, open: &msg::Open) -> Result<(Vec<Message>, Option<Requests>), SessionError> {
    let mut history = config.open_history()?;
    let tree = tree_name(&open.path);
    let replies = match open.direction {
        Direction::Snapshots => list_messages(&history.snapshots()?, &tree)?,
        Direction::Forget => vec![forget(&mut history, &tree, &open.forget)?],
        Direction::Prune => vec![pruned(&history.prune()?)],
        Direction::Push | Direction::Pull => {
            return Err(SessionError::Protocol("a transfer is not a history request".into()));
        }
    };
    Ok((replies, config.store.is_some().then(|| history.requests())))
}

/// Serves a history request (list, forget, prune) the client opened with
/// `open`, its access already checked; the snapshots answered or
/// forgotten, and what the history store cost on a store-only server.
pub(super) async fn serve_history(
    connection: &Connection,
    mut send: SendStream,
    open: msg::Open,
    config: &ServeConfig,
) -> Result<(u64, Option<Requests>), SessionError> {
    let config = config.clone();
    let (replies, costs) = tokio::task::spawn_blocking(move || answer(&config, &open))
        .await
        .map_err(|e| SessionError::Protocol(format!("history task failed: {e}")))??;
    let count = replies.iter().map(|m| match m {
        Message::SnapshotList(list) => list.snapshots.len() as u64,
        Message::Forgotten(f) => f.count,
        _ => 0,
    });
    let count = count.sum();
    let mut bytes = Vec::new();
    frame::encode(&crate::session::hello(0), &mut bytes);
    for reply in &replies {
        reply.validate().map_err(|e| refused(CloseCode::Internal, format!("a snapshot record breaks the limits: {e}")))?;
        frame::encode(reply, &mut bytes);
    }
    send.write_all(&bytes).await.map_err(|_| ended(connection))?;
    send.finish().map_err(|_| ended(connection))?;
    Ok((count, costs))
}

/// The served tree whose snapshots hold `path`: the path itself or its
/// nearest ancestor with snapshots.
fn snapshot_tree(records: &[SnapshotRecord], path: &RelPath) -> Option<RelPath> {
    let mut at = path.clone();
    loop {
        let name = tree_name(at.as_bytes());
        if records.iter().any(|r| r.tree == name) {
            return Some(at);
        }
        if at.is_root() {
            return None;
        }
        at = at.parent();
    }
}

/// Opens what a pull of `path` with `Open.at = selector` sends: the
/// part of the selected snapshot at `path`, and a reader of its chunks.
///
/// # Errors
/// `NotFound` when no snapshot matches (saying how to list them) or
/// `path` is not in it; failures reading the history.
pub(super) fn open_snapshot(
    config: &ServeConfig,
    path: &RelPath,
    selector: &str,
) -> Result<(WalkedSource, SnapshotSource), SessionError> {
    let history = Arc::new(config.open_history()?);
    let records = history.snapshots()?;
    let shown = tree_name(path.as_bytes());
    let not_found = |why: String| refused(CloseCode::NotFound, why);
    let Some(tree) = snapshot_tree(&records, path) else {
        return Err(not_found(format!(
            "no snapshot holds {shown}: the history has none of it or of a tree above it; \
             `xfer snapshots xfer://HOST/PATH` lists what there is"
        )));
    };
    let tree_shown = tree_name(tree.as_bytes());
    let record = history.find(&tree_shown, selector).map_err(|e| {
        not_found(format!("{e} (snapshots of {tree_shown}: `xfer snapshots xfer://HOST{tree_shown}` lists them)"))
    })?;
    // `tree` is `path` or an ancestor of it: the rest is the part below.
    let rest = path.as_bytes().get(tree.as_bytes().len()..).unwrap_or_default();
    let rest = rest.strip_prefix(b"/").unwrap_or(rest);
    let sub = if rest.is_empty() { RelPath::root() } else { rel(rest)? };
    // Walked, never loaded whole: a restore holds one directory per level.
    let walked = SnapshotTree::new(Arc::clone(&history), &record, sub.clone())?;
    let missing = |e: crate::Error| {
        not_found(format!("{shown} in snapshot {} of {tree_shown}: {e}", &record.id[..12.min(record.id.len())]))
    };
    // Paths of a single file's part are relative to its directory.
    let at = if walked.is_dir().map_err(missing)? { sub } else { sub.parent() };
    let root = root_hash(&walked).map_err(SessionError::Local)?;
    let walked = WalkedSource { tree: Arc::new(walked), root };
    if config.store.is_some() {
        // No mirror: every chunk a snapshot names is in the store.
        return Ok((walked, SnapshotSource::Store(StoreReader::new(history))));
    }
    let mirror = tree.to_path(&config.root);
    let (state, _) = config.state_file(&tree);
    let reader = match SnapshotReader::new(Arc::clone(&history), &mirror, &state) {
        Ok(reader) => reader,
        // A push holds the state database: chunks the store lacks are read
        // where the snapshot had them (unchanged files), which is most.
        Err(e) if e.is_busy() => SnapshotReader::without_index(history, &mirror),
        Err(e) => return Err(e.into()),
    };
    Ok((walked, SnapshotSource::Mirror(reader.with_prefix(at))))
}

fn rel(bytes: &[u8]) -> Result<RelPath, SessionError> {
    RelPath::new(bytes.to_vec()).map_err(|e| SessionError::Protocol(e.to_string()))
}

// ---------------------------------------------------------------------------
// The client's side

/// What a history request answered.
pub enum Answer {
    /// The snapshots listed, oldest first.
    Snapshots(Vec<SnapshotRecord>),
    /// Snapshots forgotten.
    Forgotten(u64),
    /// What a prune did.
    Pruned(PruneReport),
}

/// Sends `open` (a history request) on `connection` and reads the answer.
///
/// # Errors
/// The server's refusal, or a broken answer.
pub async fn request(connection: &Connection, open: msg::Open) -> Result<Answer, SessionError> {
    let activity = Activity::new();
    let (mut send, mut in_rx, reader) = open_control(connection, &activity).await?;
    let mut bytes = Vec::new();
    frame::encode(&crate::session::hello(0), &mut bytes);
    frame::encode(&Message::Open(open), &mut bytes);
    let sent = send.write_all(&bytes).await.map_err(|_| ended(connection));
    let answer = match sent {
        Ok(()) => read_answer(connection, &mut in_rx).await,
        Err(e) => Err(e),
    };
    reader.abort();
    answer
}

async fn read_answer(
    connection: &Connection,
    in_rx: &mut tokio::sync::mpsc::Receiver<super::frames::Inbound>,
) -> Result<Answer, SessionError> {
    match inbound(in_rx.recv().await, connection)? {
        Message::Hello(h) => xfer_protocol::check_version(h.version).map_err(crate::session::version_mismatch)?,
        other => return Err(SessionError::Unexpected { kind: other.kind(), state: "waiting for Hello" }),
    }
    let mut records = Vec::new();
    loop {
        match inbound(in_rx.recv().await, connection)? {
            Message::SnapshotList(list) => {
                records.extend(list.snapshots.iter().map(from_entry));
                if !list.more {
                    return Ok(Answer::Snapshots(records));
                }
            }
            Message::Forgotten(f) if records.is_empty() => return Ok(Answer::Forgotten(f.count)),
            Message::Pruned(p) if records.is_empty() => {
                return Ok(Answer::Pruned(PruneReport {
                    packs_deleted: p.packs_deleted,
                    bytes_freed: p.bytes_freed,
                    packs_doomed: p.packs_doomed,
                    packs_repacked: p.packs_repacked,
                    packs_reinstated: p.packs_reinstated,
                    bytes_after: p.bytes_after,
                }))
            }
            other => return Err(SessionError::Unexpected { kind: other.kind(), state: "waiting for the history's answer" }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(n: u8, tree: &str) -> SnapshotRecord {
        SnapshotRecord {
            id: blake3::Hash::from_bytes([n; 32]).to_hex().to_string(),
            time: 1_700_000_000 + i64::from(n),
            nanos: 0,
            time_text: crate::history::select::format_time(1_700_000_000 + i64::from(n)),
            tree: tree.into(),
            client: "xfer:abc".into(),
            host: "laptop".into(),
            source: "/home/a".into(),
            tags: vec![("k".into(), "v".into())],
            partial: n % 2 == 0,
            files: 3,
            dirs: 1,
            bytes: 300,
            root: blake3::Hash::from_bytes([n.wrapping_add(100); 32]).to_hex().to_string(),
        }
    }

    #[test]
    fn trees_match_by_component() {
        assert!(tree_within("/site", "/site") && tree_within("/site/a", "/site") && tree_within("/x", "/"));
        assert!(!tree_within("/site2", "/site") && !tree_within("/", "/site"));
        assert_eq!(tree_name(b""), "/");
        assert_eq!(tree_name(b"site/a"), "/site/a");
    }

    #[test]
    fn listing_roundtrips_in_bounded_batches() {
        let mut records: Vec<SnapshotRecord> = (0..150).map(|n| record(n, "/site")).collect();
        records.push(record(200, "/other"));
        let messages = list_messages(&records, "/site").unwrap();
        assert_eq!(messages.len(), 3);
        let mut back = Vec::new();
        for (i, m) in messages.iter().enumerate() {
            m.validate().unwrap();
            let Message::SnapshotList(list) = m else { panic!("not a list") };
            assert!(list.snapshots.len() <= MAX_SNAPSHOTS_PER_MESSAGE);
            assert_eq!(list.more, i + 1 < messages.len());
            back.extend(list.snapshots.iter().map(from_entry));
        }
        assert_eq!(back, records[..150]);
        let empty = list_messages(&records, "/nothing").unwrap();
        assert_eq!(empty, vec![Message::SnapshotList(msg::SnapshotList { snapshots: vec![], more: false })]);
        assert_eq!(list_messages(&records, "/").unwrap().len(), 3);
    }

    #[test]
    fn snapshot_tree_is_the_nearest_ancestor_with_snapshots() {
        let records = vec![record(1, "/site"), record(2, "/")];
        let path = |p: &str| RelPath::new(p.as_bytes().to_vec()).unwrap();
        assert_eq!(snapshot_tree(&records, &path("site/docs/a.txt")), Some(path("site")));
        assert_eq!(snapshot_tree(&records, &path("site")), Some(path("site")));
        assert_eq!(snapshot_tree(&records, &path("other/x")), Some(RelPath::root()));
        assert_eq!(snapshot_tree(&records[..1], &path("other/x")), None);
    }
}
