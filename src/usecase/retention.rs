//! Retention applied by a server on its own schedule: each tree's policy
//! forgets what it does not keep, then the history is pruned. Nothing here
//! takes a lock a push or pull waits on: forgetting removes snapshot
//! records, and the history's prune works in two phases without blocking
//! its writers.

use std::time::Duration;

use serde::Serialize;
use tokio_util::sync::CancellationToken;
use xfer_core::retention::{KeepPolicy, RetentionError, RetentionTable};

use super::history::judge;
use super::TransferError;
use crate::fs::history::{PruneReport, SnapshotRecord};
use crate::net::served::HistoryAt;

/// How often a server applies its policies when it has any and no interval
/// was given.
pub const DEFAULT_PRUNE_EVERY: Duration = Duration::from_secs(24 * 3600);

/// The retention policies of a server's trees.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Retention {
    /// The policy of every tree no line of `table` covers.
    pub default: Option<KeepPolicy>,
    /// Per-tree policies (the longest matching prefix wins).
    pub table: RetentionTable,
    /// How often the server applies them; `None` never (an operator runs
    /// `xfer forget` and `xfer prune` instead).
    pub every: Option<Duration>,
}

impl Retention {
    /// Parses a retention file's text: one line per tree prefix and its
    /// `rule=value` words (`/laptop daily=7 weekly=4 within=30d`), `#`
    /// comments.
    ///
    /// # Errors
    /// The first bad line, by number, saying what to write.
    pub fn parse_table(text: &str) -> Result<RetentionTable, RetentionError> {
        RetentionTable::parse(text)
    }

    /// Whether any tree has a policy.
    pub fn is_set(&self) -> bool {
        self.default.is_some() || !self.table.entries.is_empty()
    }

    /// The policy of the tree named `tree`; `None` keeps everything.
    pub fn policy_for(&self, tree: &str) -> Option<&KeepPolicy> {
        self.table.policy_for(tree).or(self.default.as_ref())
    }
}

/// What one application of the policies did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct RetentionRun {
    /// Trees with a policy that had snapshots.
    pub trees: u64,
    /// Snapshots forgotten.
    pub forgotten: u64,
    /// What the prune after it did; `None` when it stopped before.
    pub prune: Option<PruneReport>,
    /// Stopped early by the server's shutdown.
    pub stopped: bool,
}

/// The ids of the snapshots `retention` does not keep, each tree judged
/// apart by its own policy, and how many trees had one.
pub fn doomed(records: &[SnapshotRecord], retention: &Retention) -> (u64, Vec<String>) {
    let mut trees: Vec<&str> = records.iter().map(|r| r.tree.as_str()).collect();
    trees.sort_unstable();
    trees.dedup();
    let mut ids = Vec::new();
    let mut judged = 0;
    for tree in trees {
        let Some(policy) = retention.policy_for(tree) else { continue };
        judged += 1;
        let own: Vec<SnapshotRecord> = records.iter().filter(|r| r.tree == tree).cloned().collect();
        ids.extend(judge(&own, policy).into_iter().filter(|v| !v.keep).map(|v| v.snapshot.id));
    }
    (judged, ids)
}

/// Applies `retention` to the history store `at` (blocking): forgets what
/// the policies do not keep, then prunes. Checks `stop` between steps.
/// A server that has no history yet has nothing to do.
///
/// # Errors
/// A history that cannot be read or written.
pub fn apply(at: &HistoryAt, retention: &Retention, stop: &CancellationToken) -> Result<RetentionRun, TransferError> {
    let mut run = RetentionRun::default();
    if !at.may_exist() || !retention.is_set() {
        return Ok(run);
    }
    let mut history = at.open()?;
    let (trees, doomed) = doomed(&history.snapshots()?, retention);
    run.trees = trees;
    if stop.is_cancelled() {
        run.stopped = true;
        return Ok(run);
    }
    if !doomed.is_empty() {
        history.forget(&doomed)?;
        run.forgotten = doomed.len() as u64;
    }
    if stop.is_cancelled() {
        run.stopped = true;
        return Ok(run);
    }
    run.prune = Some(history.prune()?);
    Ok(run)
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::usecase::history::tests::record;

    #[test]
    fn each_tree_follows_its_own_policy_and_uncovered_trees_keep_all() {
        let records: Vec<SnapshotRecord> = (0..4)
            .flat_map(|i| {
                [
                    record(&format!("a{i}"), "/laptop", i),
                    record(&format!("b{i}"), "/phone", i),
                    record(&format!("c{i}"), "/laptop/tmp", i),
                ]
            })
            .collect();
        let table = RetentionTable::parse("/laptop last=2\n/laptop/tmp last=1").unwrap();
        let retention = Retention { table, ..Retention::default() };
        let (trees, mut ids) = doomed(&records, &retention);
        ids.sort();
        assert_eq!(trees, 2);
        assert_eq!(ids, ["a0", "a1", "c0", "c1", "c2"], "/phone has no line and no default: all kept");
        let with_default = Retention { default: Some(KeepPolicy { last: 3, ..KeepPolicy::default() }), ..retention };
        let (trees, ids) = doomed(&records, &with_default);
        assert_eq!(trees, 3);
        assert!(ids.contains(&"b0".to_string()) && !ids.contains(&"b1".to_string()), "{ids:?}");
    }
}
