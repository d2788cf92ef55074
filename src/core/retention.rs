//! Which snapshots a retention policy keeps.

/// How many snapshots to keep, per rule; a snapshot kept by any rule stays.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeepPolicy {
    /// The newest N.
    pub last: u32,
    /// The newest of each of the last N hours that have snapshots.
    pub hourly: u32,
    /// The newest of each of the last N days (UTC) that have snapshots.
    pub daily: u32,
    /// Likewise per ISO week.
    pub weekly: u32,
    /// Likewise per calendar month.
    pub monthly: u32,
    /// Likewise per calendar year.
    pub yearly: u32,
    /// Every snapshot at most this many seconds older than the newest one.
    pub within_secs: Option<u64>,
}

impl KeepPolicy {
    /// Whether no rule is set (such a policy keeps nothing, and callers
    /// refuse it rather than forget every snapshot).
    pub fn is_empty(&self) -> bool {
        *self == KeepPolicy::default()
    }
}

/// Whether one snapshot stays, and which rules keep it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Decision {
    /// Kept by at least one rule.
    pub keep: bool,
    /// The rules that keep it (`last`, `daily`, `within`...).
    pub reasons: Vec<&'static str>,
}

/// Decides for each snapshot time (seconds since the Unix epoch, UTC, in
/// any order) whether `policy` keeps it; the answer is in input order.
pub fn decide(times: &[i64], policy: &KeepPolicy) -> Vec<Decision> {
    let _ = policy;
    vec![Decision::default(); times.len()]
}
