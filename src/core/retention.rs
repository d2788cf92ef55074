//! Which snapshots a retention policy keeps.
//!
//! The rules are those of a `forget --keep-*` command: `last` keeps the
//! newest N snapshots; each calendar rule (hourly, daily, weekly, monthly,
//! yearly) walks the snapshots newest first and keeps the newest one of
//! each distinct period until it has kept N periods; `within` keeps every
//! snapshot at most that long before the newest snapshot. A snapshot that
//! any rule keeps stays.
//!
//! Periods are UTC. `within` counts back from the newest snapshot, not
//! from the clock: the core has no clock, and a backup set whose backups
//! stopped must not be wiped because time went on.

use thiserror::Error;

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

/// A retention setting could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum RetentionError {
    /// Not a duration.
    #[error(
        "\"{0}\" is not a duration: use a number and a unit, y (years), m (months), w (weeks), d (days) or h \
         (hours), e.g. 30d, 2w, 12h or 1y6m"
    )]
    Within(String),
    /// A duration too long to count in seconds.
    #[error("\"{0}\" is too long a duration: the longest is 500000000000y (in seconds, a u64)")]
    WithinTooLarge(String),
    /// A `rule=value` list that does not parse.
    #[error(
        "{0}: write rules as RULE=VALUE separated by spaces, RULE one of last, hourly, daily, weekly, monthly, \
         yearly (a count) or within (a duration such as 30d), e.g. `daily=7 weekly=4 within=30d`"
    )]
    Rules(String),
    /// A line of a retention file that does not parse.
    #[error("line {line}: {reason}")]
    Line {
        /// The line's number, from 1.
        line: usize,
        /// What is wrong and what to write.
        reason: String,
    },
}

const HOUR: u64 = 3600;
const DAY: u64 = 24 * HOUR;

/// Seconds per unit of a `--keep-within` duration. A month counts as 31
/// days and a year as 366: a duration in seconds cannot follow the
/// calendar, and taking the longest month and year means `within` never
/// keeps less than the calendar reading of the same words would.
fn unit_secs(unit: char) -> Option<u64> {
    match unit {
        'h' => Some(HOUR),
        'd' => Some(DAY),
        'w' => Some(7 * DAY),
        'm' => Some(31 * DAY),
        'y' => Some(366 * DAY),
        _ => None,
    }
}

/// Parses a `--keep-within` duration such as `30d`, `2w`, `6m`, `1y`,
/// `12h` or `1y6m` (terms add up) into seconds.
pub fn parse_within(text: &str) -> Result<u64, RetentionError> {
    let bad = || RetentionError::Within(text.to_owned());
    let too_large = || RetentionError::WithinTooLarge(text.to_owned());
    let mut rest = text.trim();
    if rest.is_empty() {
        return Err(bad());
    }
    let mut total: u64 = 0;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
        if digits == 0 {
            return Err(bad());
        }
        let (number, tail) = rest.split_at(digits);
        let unit = tail.chars().next().ok_or_else(bad)?;
        let per = unit_secs(unit).ok_or_else(bad)?;
        // Digits only, so the one failure left is a number too big for u64.
        let count: u64 = number.parse().map_err(|_| too_large())?;
        let secs = count.checked_mul(per).ok_or_else(too_large)?;
        total = total.checked_add(secs).ok_or_else(too_large)?;
        rest = &tail[unit.len_utf8()..];
    }
    Ok(total)
}

/// Parses a policy written as `rule=value` words (`daily=7 weekly=4
/// within=30d`); a rule given twice, an unknown rule or an empty list is
/// refused.
pub fn parse_rules(text: &str) -> Result<KeepPolicy, RetentionError> {
    let mut policy = KeepPolicy::default();
    let mut seen: Vec<&str> = Vec::new();
    for word in text.split_whitespace() {
        let rules = |why: String| RetentionError::Rules(why);
        let (rule, value) = word.split_once('=').ok_or_else(|| rules(format!("{word:?} has no `=`")))?;
        if seen.contains(&rule) {
            return Err(rules(format!("{rule} is given twice")));
        }
        seen.push(rule);
        if rule == "within" {
            policy.within_secs = Some(parse_within(value)?);
            continue;
        }
        let slot = match rule {
            "last" => &mut policy.last,
            "hourly" => &mut policy.hourly,
            "daily" => &mut policy.daily,
            "weekly" => &mut policy.weekly,
            "monthly" => &mut policy.monthly,
            "yearly" => &mut policy.yearly,
            _ => return Err(rules(format!("{rule:?} is not a rule"))),
        };
        *slot = value.parse().map_err(|_| rules(format!("{value:?} is not a count for {rule}")))?;
    }
    if policy.is_empty() {
        return Err(RetentionError::Rules(
            "no rule keeps anything (a policy keeping nothing would forget every snapshot)".into(),
        ));
    }
    Ok(policy)
}

/// Per-tree policies: each line a tree prefix and its rules
/// (`/laptop daily=7 weekly=4`), `#` starting a comment. The longest
/// prefix that covers a tree gives its policy.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RetentionTable {
    /// Prefixes and their policies, in file order.
    pub entries: Vec<(String, KeepPolicy)>,
}

impl RetentionTable {
    /// Parses a retention file's text.
    ///
    /// # Errors
    /// The first bad line, by number, saying what to write.
    pub fn parse(text: &str) -> Result<RetentionTable, RetentionError> {
        let mut entries: Vec<(String, KeepPolicy)> = Vec::new();
        for (at, raw) in text.lines().enumerate() {
            let line = raw.split('#').next().unwrap_or_default().trim();
            if line.is_empty() {
                continue;
            }
            let bad = |reason: String| RetentionError::Line { line: at + 1, reason };
            let (prefix, rules) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
            if !prefix.starts_with('/') || prefix.contains("//") || prefix.split('/').any(|c| c == ".." || c == ".") {
                return Err(bad(format!(
                    "{prefix:?} is not a tree prefix: start the line with a path below the served root, e.g. \
                     `/laptop daily=7 weekly=4` (or `/` for every tree)"
                )));
            }
            let prefix = if prefix.len() > 1 { prefix.trim_end_matches('/') } else { prefix };
            if entries.iter().any(|(p, _)| p == prefix) {
                return Err(bad(format!("{prefix} already has a line; give each prefix one line")));
            }
            let policy = parse_rules(rules).map_err(|e| bad(e.to_string()))?;
            entries.push((prefix.to_owned(), policy));
        }
        Ok(RetentionTable { entries })
    }

    /// The policy of the longest prefix covering `tree` (a tree name such
    /// as `/laptop/home`), if any.
    pub fn policy_for(&self, tree: &str) -> Option<&KeepPolicy> {
        let covers = |prefix: &str| {
            prefix == "/" || tree == prefix || tree.strip_prefix(prefix).is_some_and(|rest| rest.starts_with('/'))
        };
        self.entries.iter().filter(|(p, _)| covers(p)).max_by_key(|(p, _)| p.len()).map(|(_, policy)| policy)
    }
}

/// A calendar period a rule keeps one snapshot of.
#[derive(Clone, Copy, Debug)]
enum Period {
    Hour,
    Day,
    Week,
    Month,
    Year,
}

impl Period {
    /// A number that two times share exactly when they fall in the same
    /// period; later periods have larger numbers.
    fn key(self, time: i64) -> i64 {
        let days = time.div_euclid(DAY as i64);
        match self {
            Period::Hour => time.div_euclid(HOUR as i64),
            Period::Day => days,
            // ISO weeks run Monday to Sunday; day 0 (1970-01-01) was a
            // Thursday, so shifting by 3 puts each Monday at a multiple of 7.
            Period::Week => (days + 3).div_euclid(7),
            Period::Month => {
                let (year, month) = year_month(days);
                year * 12 + i64::from(month) - 1
            }
            Period::Year => year_month(days).0,
        }
    }
}

/// The year and month (1-12) of a day counted from 1970-01-01.
fn year_month(days: i64) -> (i64, u32) {
    let (year, month, _) = crate::calendar::civil_from_days(days);
    (year, u32::try_from(month).expect("invariant: a month number is 1 to 12"))
}

/// Decides for each snapshot time (seconds since the Unix epoch, UTC, in
/// any order) whether `policy` keeps it; the answer is in input order.
/// Of snapshots within the same second, the later in the input counts as
/// the newer (callers list snapshots oldest first).
pub fn decide(times: &[i64], policy: &KeepPolicy) -> Vec<Decision> {
    let mut out = vec![Decision::default(); times.len()];
    // Newest first; equal times later-in-input first, so the answer is the
    // same on every call with the same input.
    let mut order: Vec<usize> = (0..times.len()).collect();
    order.sort_by(|&a, &b| times[b].cmp(&times[a]).then(b.cmp(&a)));

    for &i in order.iter().take(policy.last as usize) {
        keep(&mut out[i], "last");
    }
    let calendar = [
        ("hourly", policy.hourly, Period::Hour),
        ("daily", policy.daily, Period::Day),
        ("weekly", policy.weekly, Period::Week),
        ("monthly", policy.monthly, Period::Month),
        ("yearly", policy.yearly, Period::Year),
    ];
    for (rule, count, period) in calendar {
        let mut left = count;
        let mut previous = None;
        for &i in &order {
            if left == 0 {
                break;
            }
            let key = period.key(times[i]);
            // Newest first, so the first time of a new period is its newest.
            if previous != Some(key) {
                previous = Some(key);
                left -= 1;
                keep(&mut out[i], rule);
            }
        }
    }
    if let (Some(within), Some(&newest)) = (policy.within_secs, order.first()) {
        let newest = i128::from(times[newest]);
        for &i in &order {
            if newest - i128::from(times[i]) > i128::from(within) {
                break;
            }
            keep(&mut out[i], "within");
        }
    }
    out
}

fn keep(decision: &mut Decision, rule: &'static str) {
    decision.keep = true;
    decision.reasons.push(rule);
}

#[cfg(test)]
mod tests;
