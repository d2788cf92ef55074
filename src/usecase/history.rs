//! The history of a backup target: list its snapshots, forget some (by id
//! or by a retention policy), prune; on a server, or in a local
//! destination's own history (kept beside the state of its local pushes).

use std::path::{Path, PathBuf};

use serde::Serialize;
use xfer_core::retention::{decide, KeepPolicy};
use xfer_protocol::msg::{Direction, Hash, Open};
use xfer_protocol::MAX_FORGET_IDS;

use super::{blocking, RemoteUrl, TransferError};
use crate::fs::history::{History, PruneReport, SnapshotRecord};
use crate::net::client::Link;
use crate::net::identity::{Fingerprint, Identity};
use crate::net::manage::Answer;
use crate::net::Congestion;

/// Whose history a request is about.
#[derive(Clone, Copy)]
pub enum Target<'a> {
    /// A tree on a server, which must present `pin`.
    Remote {
        /// The tree.
        url: &'a RemoteUrl,
        /// This client.
        identity: &'a Identity,
        /// The server's key.
        pin: Option<Fingerprint>,
    },
    /// A local push destination, whose history lives beside the state
    /// its local pushes keep in `state_dir`.
    Local {
        /// The destination directory.
        dest: &'a Path,
        /// The pushes' state directory.
        state_dir: &'a Path,
    },
    /// A tree inside a root this machine serves, read and changed on disk
    /// by the server's operator (no network): the server's history is
    /// `ROOT/.xfer/history`, shared by every tree it serves.
    Served {
        /// The served root.
        root: &'a Path,
        /// The tree, a directory inside `root` (or `root` itself).
        tree: &'a Path,
    },
}

/// One snapshot and what a forget decided for it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Verdict {
    /// The snapshot.
    pub snapshot: SnapshotRecord,
    /// Whether it stays.
    pub keep: bool,
    /// Why: the policy rules that keep it (`last`, `daily`, `within`...),
    /// or `named` for one forgotten by id.
    pub reasons: Vec<&'static str>,
}

/// What a forget did (or, on a dry run, would do).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Forgetting {
    /// The snapshots considered, oldest first, each with its verdict.
    pub snapshots: Vec<Verdict>,
    /// Snapshots forgotten (0 on a dry run).
    pub forgotten: u64,
    /// Nothing was forgotten: the verdicts say what a real run would do.
    pub dry_run: bool,
}

fn bad(message: String) -> TransferError {
    TransferError::History(message)
}

/// The local destination's history directory, if a local push made one.
fn local_history(dest: &Path, state_dir: &Path) -> Result<Option<PathBuf>, TransferError> {
    let dest = crate::fs::store::canonical_missing(dest)?;
    let state = crate::fs::state_dir::state_file(state_dir, "dests", &dest).with_extension("d");
    let dir = state.join("history");
    Ok(dir.is_dir().then_some(dir))
}

/// Opens a local destination's history, refusing one that has none.
fn open_local(dest: &Path, state_dir: &Path) -> Result<History, TransferError> {
    match local_history(dest, state_dir)? {
        Some(dir) => Ok(History::open(&dir)?),
        None => Err(bad(format!(
            "{} has no history: no local push into it kept one (with this state directory, {}); for a tree a \
             server on this machine serves, add --root ROOT (the root `xfer serve --root` names)",
            dest.display(),
            state_dir.display()
        ))),
    }
}

/// The history directory of the served root `root` and the name snapshot
/// records give the tree at `tree` inside it.
fn served(root: &Path, tree: &Path) -> Result<(PathBuf, String), TransferError> {
    let open = |path: &Path| path.canonicalize().map_err(|e| crate::Error::io(path, e));
    let (root, tree) = (open(root)?, open(tree)?);
    let Ok(rel) = tree.strip_prefix(&root) else {
        return Err(bad(format!(
            "{} is not inside {}: name a tree below the served root given with --root",
            tree.display(),
            root.display()
        )));
    };
    let parts: Vec<String> = rel.components().map(|c| c.as_os_str().to_string_lossy().into_owned()).collect();
    if parts.first().map(String::as_str) == Some(crate::net::served::SERVER_STATE_DIR) {
        return Err(bad(format!("{} is the server's own state, not a tree it serves", tree.display())));
    }
    let history = root.join(crate::net::served::SERVER_STATE_DIR).join("history");
    if !history.is_dir() {
        return Err(bad(format!(
            "{} has no history ({} is missing): is it the root `xfer serve --root` serves?",
            root.display(),
            history.display()
        )));
    }
    Ok((history, format!("/{}", parts.join("/"))))
}

/// Sends a history request about `url` and returns the answer.
async fn ask(url: &RemoteUrl, identity: &Identity, pin: Option<Fingerprint>, open: Open) -> Result<Answer, TransferError> {
    let link = Link::connect(&url.authority, identity, pin, Congestion::default(), super::DEFAULT_CONNECT_TIMEOUT).await?;
    let answer = link.history(open).await;
    link.close(0).await;
    Ok(answer?)
}

fn request(direction: Direction, url: &RemoteUrl, forget: Vec<Hash>) -> Open {
    Open {
        direction,
        path: url.path.as_bytes().to_vec(),
        delete: false,
        checksum: false,
        remembered_root: None,
        tags: Vec::new(),
        at: None,
        source_host: String::new(),
        source_path: String::new(),
        forget,
    }
}

/// The snapshots of the target's tree and the trees below it, oldest first.
///
/// # Errors
/// The server's refusal; a history that cannot be read.
pub async fn snapshots(target: Target<'_>) -> Result<Vec<SnapshotRecord>, TransferError> {
    match target {
        Target::Remote { url, identity, pin } => {
            match ask(url, identity, pin, request(Direction::Snapshots, url, Vec::new())).await? {
                Answer::Snapshots(records) => Ok(records),
                _ => Err(bad("the server answered a listing with something else".into())),
            }
        }
        Target::Local { dest, state_dir } => {
            let Some(dir) = local_history(dest, state_dir)? else { return Ok(Vec::new()) };
            blocking("reading the history", move || Ok(History::open(&dir)?.snapshots()?)).await
        }
        Target::Served { root, tree } => {
            let (dir, tree) = served(root, tree)?;
            let records = blocking("reading the history", move || Ok(History::open(&dir)?.snapshots()?)).await?;
            Ok(records.into_iter().filter(|r| crate::net::manage::tree_within(&r.tree, &tree)).collect())
        }
    }
}

/// The snapshot each of `ids` (full ids or unique prefixes of at least 4
/// hex digits) names among `records`.
///
/// # Errors
/// An id that matches none or several, saying what to do.
pub fn resolve(ids: &[String], records: &[SnapshotRecord]) -> Result<Vec<SnapshotRecord>, TransferError> {
    let mut found: Vec<SnapshotRecord> = Vec::new();
    for id in ids {
        let id = id.to_ascii_lowercase();
        if id.len() < 4 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad(format!("{id:?} is not a snapshot id: give at least 4 hex digits of one")));
        }
        let matches: Vec<&SnapshotRecord> = records.iter().filter(|r| r.id.starts_with(&id)).collect();
        match matches.as_slice() {
            [one] => {
                if !found.iter().any(|f| f.id == one.id) {
                    found.push((*one).clone());
                }
            }
            [] => return Err(bad(format!("no snapshot {id} here; `xfer snapshots TARGET` lists them"))),
            several => {
                return Err(bad(format!("{id} names {} snapshots; give more of its digits", several.len())))
            }
        }
    }
    if found.len() > MAX_FORGET_IDS {
        return Err(bad(format!("{} snapshots named; forget at most {MAX_FORGET_IDS} at once", found.len())));
    }
    Ok(found)
}

/// What `policy` decides for `records`, each tree's snapshots apart (a
/// tree's `keep-last 3` keeps its own last three).
pub fn judge(records: &[SnapshotRecord], policy: &KeepPolicy) -> Vec<Verdict> {
    let mut verdicts: Vec<Option<Verdict>> = vec![None; records.len()];
    let mut trees: Vec<&str> = records.iter().map(|r| r.tree.as_str()).collect();
    trees.sort_unstable();
    trees.dedup();
    for tree in trees {
        let at: Vec<usize> = (0..records.len()).filter(|&i| records[i].tree == tree).collect();
        let times: Vec<i64> = at.iter().map(|&i| records[i].time).collect();
        for (&i, decision) in at.iter().zip(decide(&times, policy)) {
            let snapshot = records[i].clone();
            verdicts[i] = Some(Verdict { snapshot, keep: decision.keep, reasons: decision.reasons });
        }
    }
    verdicts.into_iter().flatten().collect()
}

/// Forgets the snapshots `ids` name (full ids or unique prefixes); their
/// data goes at the next prune.
///
/// # Errors
/// An id that names none or several; the server's refusal (an `append` or
/// `ro` grant may not forget).
pub async fn forget(target: Target<'_>, ids: &[String]) -> Result<Forgetting, TransferError> {
    if ids.is_empty() {
        return Err(bad("name the snapshots to forget, or give a --keep-* policy".into()));
    }
    let records = snapshots(target).await?;
    let named = resolve(ids, &records)?;
    let verdicts = named.into_iter().map(|snapshot| Verdict { snapshot, keep: false, reasons: vec!["named"] }).collect();
    apply(target, verdicts, false).await
}

/// Forgets the snapshots `policy` does not keep, each tree's apart; with
/// `dry_run`, only says which.
///
/// # Errors
/// An empty policy (it would forget everything); as [`forget`].
pub async fn forget_by_policy(
    target: Target<'_>,
    policy: &KeepPolicy,
    dry_run: bool,
) -> Result<Forgetting, TransferError> {
    if policy.is_empty() {
        return Err(bad(
            "an empty policy would forget every snapshot; give at least one --keep-* rule (or ids to forget)".into(),
        ));
    }
    let records = snapshots(target).await?;
    apply(target, judge(&records, policy), dry_run).await
}

/// Forgets the snapshots `verdicts` do not keep, unless `dry_run`.
async fn apply(target: Target<'_>, verdicts: Vec<Verdict>, dry_run: bool) -> Result<Forgetting, TransferError> {
    let doomed: Vec<String> = verdicts.iter().filter(|v| !v.keep).map(|v| v.snapshot.id.clone()).collect();
    if dry_run || doomed.is_empty() {
        return Ok(Forgetting { snapshots: verdicts, forgotten: 0, dry_run });
    }
    let forgotten = match target {
        Target::Remote { url, identity, pin } => {
            let ids = doomed.iter().map(|id| hash_of(id)).collect::<Result<Vec<Hash>, _>>()?;
            let mut count = 0;
            for batch in ids.chunks(MAX_FORGET_IDS) {
                match ask(url, identity, pin, request(Direction::Forget, url, batch.to_vec())).await? {
                    Answer::Forgotten(n) => count += n,
                    _ => return Err(bad("the server answered a forget with something else".into())),
                }
            }
            count
        }
        Target::Local { dest, state_dir } => {
            let (dest, state_dir) = (dest.to_path_buf(), state_dir.to_path_buf());
            let count = doomed.len() as u64;
            blocking("forgetting snapshots", move || Ok(open_local(&dest, &state_dir)?.forget(&doomed)?)).await?;
            count
        }
        Target::Served { root, tree } => {
            let (dir, _) = served(root, tree)?;
            let count = doomed.len() as u64;
            blocking("forgetting snapshots", move || Ok(History::open(&dir)?.forget(&doomed)?)).await?;
            count
        }
    };
    Ok(Forgetting { snapshots: verdicts, forgotten, dry_run })
}

fn hash_of(id: &str) -> Result<Hash, TransferError> {
    blake3::Hash::from_hex(id).map(|h| *h.as_bytes()).map_err(|_| bad(format!("{id:?} is not a whole snapshot id")))
}

/// Garbage-collects the history: data no snapshot references goes (in two
/// phases, see [`History::prune`]).
///
/// # Errors
/// The server's refusal (an `append` or `ro` grant may not prune); a
/// history that cannot be read or written.
pub async fn prune(target: Target<'_>) -> Result<PruneReport, TransferError> {
    match target {
        Target::Remote { url, identity, pin } => match ask(url, identity, pin, request(Direction::Prune, url, Vec::new())).await? {
            Answer::Pruned(report) => Ok(report),
            _ => Err(bad("the server answered a prune with something else".into())),
        },
        Target::Local { dest, state_dir } => {
            let (dest, state_dir) = (dest.to_path_buf(), state_dir.to_path_buf());
            blocking("pruning the history", move || Ok(open_local(&dest, &state_dir)?.prune()?)).await
        }
        Target::Served { root, tree } => {
            let (dir, _) = served(root, tree)?;
            blocking("pruning the history", move || Ok(History::open(&dir)?.prune()?)).await
        }
    }
}

/// Checks a snapshot selector before it goes on the wire.
///
/// # Errors
/// One too long or with control characters.
pub fn check_selector(selector: &str) -> Result<(), TransferError> {
    let max = xfer_protocol::MAX_SELECTOR_LEN;
    if selector.is_empty() || selector.len() > max || selector.chars().any(char::is_control) {
        return Err(bad(format!(
            "{selector:?} is not a snapshot selector: use latest, an id (4 or more hex digits) or a time \
             (RFC 3339 or YYYY-MM-DD[ HH:MM[:SS]], UTC), at most {max} bytes"
        )));
    }
    Ok(())
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// A snapshot record with only what the judging reads.
    pub(in crate::usecase) fn record(id: &str, tree: &str, time: i64) -> SnapshotRecord {
        SnapshotRecord {
            id: id.into(),
            time,
            nanos: 0,
            time_text: String::new(),
            tree: tree.into(),
            client: String::new(),
            host: String::new(),
            source: String::new(),
            tags: vec![],
            partial: false,
            files: 0,
            dirs: 0,
            bytes: 0,
            root: String::new(),
        }
    }

    #[test]
    fn resolve_takes_unique_prefixes_only() {
        let records = vec![record("abcd01", "/a", 1), record("abcd02", "/a", 2), record("ef0123", "/b", 3)];
        let ids = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let found = resolve(&ids(&["ABCD01", "ef01", "ef0123"]), &records).unwrap();
        assert_eq!(found.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(), ["abcd01", "ef0123"]);
        let err = resolve(&ids(&["abcd"]), &records).unwrap_err().to_string();
        assert!(err.contains("names 2 snapshots") && err.contains("more of its digits"), "{err}");
        let err = resolve(&ids(&["9999"]), &records).unwrap_err().to_string();
        assert!(err.contains("no snapshot 9999") && err.contains("xfer snapshots"), "{err}");
        for short in ["abc", "xyz1", ""] {
            let err = resolve(&ids(&[short]), &records).unwrap_err().to_string();
            assert!(err.contains("at least 4 hex digits"), "{short}: {err}");
        }
    }

    #[test]
    fn selectors_are_bounded_and_printable() {
        assert!(check_selector("latest").is_ok() && check_selector("2026-01-02 10:00").is_ok());
        for bad in ["", "a\nb", &"9".repeat(xfer_protocol::MAX_SELECTOR_LEN + 1)] {
            let err = check_selector(bad).unwrap_err().to_string();
            assert!(err.contains("latest") && err.contains("RFC 3339"), "{err}");
        }
    }

    #[test]
    fn judge_decides_each_tree_apart() {
        let records = vec![record("01", "/a", 10), record("02", "/b", 20), record("03", "/a", 30)];
        let policy = KeepPolicy { last: 1, ..KeepPolicy::default() };
        let verdicts = judge(&records, &policy);
        let ids: Vec<&str> = verdicts.iter().map(|v| v.snapshot.id.as_str()).collect();
        assert_eq!(ids, ["01", "02", "03"], "input order");
        // /a keeps only its newest, /b its only one (needs the retention
        // rules of xfer_core::retention::decide).
        let keep: Vec<bool> = verdicts.iter().map(|v| v.keep).collect();
        assert_eq!(keep, [false, true, true]);
    }
}
