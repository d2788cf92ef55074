use super::*;
use proptest::prelude::*;

/// Days from 1970-01-01 to a proleptic Gregorian date, counted the naive
/// way (year by year, month by month), independently of `year_month`.
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    fn leap(y: i64) -> bool {
        (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
    }
    fn month_len(y: i64, m: u32) -> i64 {
        match m {
            2 if leap(y) => 29,
            2 => 28,
            4 | 6 | 9 | 11 => 30,
            _ => 31,
        }
    }
    let mut days = 0i64;
    if year >= 1970 {
        for y in 1970..year {
            days += if leap(y) { 366 } else { 365 };
        }
    } else {
        for y in year..1970 {
            days -= if leap(y) { 366 } else { 365 };
        }
    }
    for m in 1..month {
        days += month_len(year, m);
    }
    days + i64::from(day) - 1
}

/// Seconds since the epoch of a UTC date and time.
fn ts(year: i64, month: u32, day: u32, hour: i64, min: i64, sec: i64) -> i64 {
    days_from_civil(year, month, day) * 86_400 + hour * 3600 + min * 60 + sec
}

fn kept(decisions: &[Decision]) -> Vec<usize> {
    decisions.iter().enumerate().filter(|(_, d)| d.keep).map(|(i, _)| i).collect()
}

fn only(policy: KeepPolicy, times: &[i64]) -> Vec<usize> {
    kept(&decide(times, &policy))
}

#[test]
fn calendar_helpers_agree_with_known_dates() {
    // Day numbers of known dates, leap days and century rules included.
    for (days, y, m, d) in [
        (19_782, 2024, 2, 29),
        (19_722, 2023, 12, 31),
        (19_723, 2024, 1, 1),
        (11_016, 2000, 2, 29),
        (-25_508, 1900, 3, 1),
        (-1, 1969, 12, 31),
        (0, 1970, 1, 1),
    ] {
        assert_eq!(days_from_civil(y, m, d), days, "{y}-{m}-{d}");
        assert_eq!(year_month(days), (y, m), "day {days}");
    }
    // 1900 was no leap year: the day before 1 March is 28 February.
    assert_eq!(year_month(-25_509), (1900, 2));
    assert_eq!(days_from_civil(1900, 2, 28), -25_509);
    // 2000 was: 29 February exists and 1 March follows it.
    assert_eq!(year_month(11_017), (2000, 3));
}

#[test]
fn empty_policy_or_no_snapshots_keep_nothing() {
    let times = [ts(2024, 1, 1, 0, 0, 0), ts(2024, 1, 2, 0, 0, 0)];
    assert!(KeepPolicy::default().is_empty());
    assert!(decide(&times, &KeepPolicy::default()).iter().all(|d| *d == Decision::default()));
    let all = KeepPolicy { last: 3, daily: 3, within_secs: Some(99), ..KeepPolicy::default() };
    assert!(!all.is_empty());
    assert!(decide(&[], &all).is_empty());
}

#[test]
fn last_keeps_the_newest_of_unsorted_input() {
    let times = [30, 10, 50, 20, 40];
    assert_eq!(only(KeepPolicy { last: 2, ..KeepPolicy::default() }, &times), vec![2, 4]);
    assert_eq!(only(KeepPolicy { last: 9, ..KeepPolicy::default() }, &times), vec![0, 1, 2, 3, 4]);
    // Equal times: exactly N kept, the last ones given (callers list
    // oldest first).
    assert_eq!(only(KeepPolicy { last: 2, ..KeepPolicy::default() }, &[5, 5, 5]), vec![1, 2]);
}

#[test]
fn daily_keeps_the_newest_of_each_day_with_snapshots() {
    let times = [
        ts(2024, 3, 10, 1, 0, 0),
        ts(2024, 3, 10, 23, 59, 59), // newest of 10 March
        ts(2024, 3, 10, 12, 0, 0),
        ts(2024, 3, 12, 0, 0, 0),  // 11 March has none
        ts(2024, 3, 12, 8, 30, 0), // newest of 12 March
        ts(2024, 3, 9, 23, 0, 0),
        ts(2024, 3, 13, 0, 0, 0), // newest overall
    ];
    let daily = |n| only(KeepPolicy { daily: n, ..KeepPolicy::default() }, &times);
    assert_eq!(daily(1), vec![6]);
    assert_eq!(daily(2), vec![4, 6]);
    // Days without snapshots do not count: the third is 10 March.
    assert_eq!(daily(3), vec![1, 4, 6]);
    assert_eq!(daily(4), vec![1, 4, 5, 6]);
    assert_eq!(daily(100), vec![1, 4, 5, 6]);
}

#[test]
fn hourly_splits_at_the_hour() {
    let times = [ts(2024, 5, 1, 10, 59, 59), ts(2024, 5, 1, 11, 0, 0), ts(2024, 5, 1, 10, 0, 0)];
    assert_eq!(only(KeepPolicy { hourly: 2, ..KeepPolicy::default() }, &times), vec![0, 1]);
    assert_eq!(only(KeepPolicy { hourly: 1, ..KeepPolicy::default() }, &times), vec![1]);
}

#[test]
fn weekly_follows_iso_weeks_across_year_ends() {
    let weekly = |n, times: &[i64]| only(KeepPolicy { weekly: n, ..KeepPolicy::default() }, times);
    // Sunday 2023-12-31 and Monday 2024-01-01 are in different weeks.
    let sun_mon = [ts(2023, 12, 31, 23, 59, 59), ts(2024, 1, 1, 0, 0, 0)];
    assert_eq!(weekly(2, &sun_mon), vec![0, 1]);
    // Monday 2024-12-30 and Wednesday 2025-01-01 share week 2025-W01.
    let w01 = [ts(2024, 12, 30, 9, 0, 0), ts(2025, 1, 1, 9, 0, 0), ts(2024, 12, 29, 9, 0, 0)];
    assert_eq!(weekly(1, &w01), vec![1]);
    assert_eq!(weekly(2, &w01), vec![1, 2]);
    // 2020 had a week 53, Monday 2020-12-28 to Sunday 2021-01-03.
    let w53 = [ts(2020, 12, 28, 0, 0, 0), ts(2021, 1, 3, 23, 0, 0), ts(2021, 1, 4, 0, 0, 0)];
    assert_eq!(weekly(2, &w53), vec![1, 2]);
    // The week holding 1970-01-01 (a Thursday) began on Monday 1969-12-29.
    let epoch = [ts(1969, 12, 28, 12, 0, 0), ts(1969, 12, 29, 0, 0, 0), ts(1970, 1, 4, 23, 0, 0)];
    assert_eq!(weekly(2, &epoch), vec![0, 2]);
}

#[test]
fn monthly_splits_at_month_ends_and_leap_days() {
    let times = [
        ts(2024, 1, 31, 23, 59, 59),
        ts(2024, 2, 1, 0, 0, 0),
        ts(2024, 2, 29, 23, 0, 0), // leap day: still February
        ts(2024, 3, 1, 0, 0, 0),
        ts(2023, 2, 28, 12, 0, 0),
    ];
    let monthly = |n| only(KeepPolicy { monthly: n, ..KeepPolicy::default() }, &times);
    assert_eq!(monthly(2), vec![2, 3]);
    assert_eq!(monthly(3), vec![0, 2, 3]);
    // Months without snapshots (March 2023 to December 2023) do not count.
    assert_eq!(monthly(4), vec![0, 2, 3, 4]);
}

#[test]
fn yearly_splits_at_new_year() {
    let times =
        [ts(2022, 12, 31, 23, 59, 59), ts(2023, 1, 1, 0, 0, 0), ts(2022, 6, 1, 0, 0, 0), ts(1969, 7, 20, 20, 17, 0)];
    let yearly = |n| only(KeepPolicy { yearly: n, ..KeepPolicy::default() }, &times);
    assert_eq!(yearly(1), vec![1]);
    assert_eq!(yearly(2), vec![0, 1]);
    assert_eq!(yearly(3), vec![0, 1, 3]);
}

#[test]
fn within_counts_back_from_the_newest_snapshot_not_the_clock() {
    // A set whose backups stopped in 2001: nothing is near today, yet the
    // last 30 days of it stay.
    let newest = ts(2001, 6, 30, 12, 0, 0);
    let times = [newest - 30 * 86_400, newest, newest - 30 * 86_400 - 1, newest - 86_400];
    let within = parse_within("30d").unwrap();
    let decisions = decide(&times, &KeepPolicy { within_secs: Some(within), ..KeepPolicy::default() });
    assert_eq!(kept(&decisions), vec![0, 1, 3]);
    assert_eq!(decisions[0].reasons, vec!["within"]);
    // Zero keeps the newest (and any snapshot of the same second).
    let zero = KeepPolicy { within_secs: Some(0), ..KeepPolicy::default() };
    assert_eq!(only(zero, &[7, 9, 9, 8]), vec![1, 2]);
}

#[test]
fn reasons_list_every_rule_that_keeps_a_snapshot() {
    let times = [ts(2024, 1, 31, 12, 0, 0), ts(2024, 2, 1, 12, 0, 0), ts(2024, 2, 1, 6, 0, 0)];
    let policy = KeepPolicy { last: 1, daily: 2, monthly: 2, within_secs: Some(3600), ..KeepPolicy::default() };
    let d = decide(&times, &policy);
    assert_eq!(d[1].reasons, vec!["last", "daily", "monthly", "within"]);
    assert_eq!(d[0].reasons, vec!["daily", "monthly"]);
    assert_eq!(d[2], Decision::default());
}

#[test]
fn parse_within_reads_units_and_sums() {
    const D: u64 = 86_400;
    for (text, secs) in [
        ("30d", 30 * D),
        ("2w", 14 * D),
        ("12h", 12 * 3600),
        ("6m", 6 * 31 * D),
        ("1y", 366 * D),
        ("1y6m", 366 * D + 6 * 31 * D),
        ("1d12h", D + 12 * 3600),
        (" 2w ", 14 * D),
        ("0d", 0),
    ] {
        assert_eq!(parse_within(text), Ok(secs), "{text}");
    }
}

#[test]
fn parse_within_refuses_what_is_not_a_duration() {
    for text in ["", "  ", "30", "d", "5x", "-1d", "1.5d", "1 d", "1y 6m", "1D", "30days", "+1d", "1d2"] {
        let err = parse_within(text).unwrap_err();
        assert_eq!(err, RetentionError::Within(text.to_owned()), "{text}");
        assert!(err.to_string().contains("e.g. 30d"), "{err}");
    }
    for text in ["99999999999999999999d", "60000000000000y", "500000000000y500000000000y"] {
        assert_eq!(parse_within(text), Err(RetentionError::WithinTooLarge(text.to_owned())), "{text}");
    }
}

// ---------------------------------------------------------------- properties

fn times_strategy() -> impl Strategy<Value = Vec<i64>> {
    prop_oneof![
        // Spread over years, across leap days, year ends and the epoch.
        prop::collection::vec(-100_000_000i64..1_800_000_000, 0..40),
        // Clustered: several per hour and per day.
        (1_000_000_000i64..1_700_000_000, prop::collection::vec(0i64..40 * 86_400, 0..60))
            .prop_map(|(base, offs)| offs.into_iter().map(|o| base + o).collect()),
    ]
}

fn policy_strategy() -> impl Strategy<Value = KeepPolicy> {
    (0u32..6, 0u32..6, 0u32..6, 0u32..6, 0u32..6, 0u32..6, prop::option::of(0u64..60 * 86_400)).prop_map(
        |(last, hourly, daily, weekly, monthly, yearly, within_secs)| KeepPolicy {
            last,
            hourly,
            daily,
            weekly,
            monthly,
            yearly,
            within_secs,
        },
    )
}

fn period_of(rule: usize) -> (Period, fn(u32) -> KeepPolicy) {
    match rule {
        0 => (Period::Hour, |n| KeepPolicy { hourly: n, ..KeepPolicy::default() }),
        1 => (Period::Day, |n| KeepPolicy { daily: n, ..KeepPolicy::default() }),
        2 => (Period::Week, |n| KeepPolicy { weekly: n, ..KeepPolicy::default() }),
        3 => (Period::Month, |n| KeepPolicy { monthly: n, ..KeepPolicy::default() }),
        _ => (Period::Year, |n| KeepPolicy { yearly: n, ..KeepPolicy::default() }),
    }
}

proptest! {
    #[test]
    fn calendar_helpers_round_trip(days in -800_000i64..800_000) {
        let (year, month) = year_month(days);
        prop_assert!((1..=12).contains(&month));
        let first = days_from_civil(year, month, 1);
        prop_assert!(first <= days && days - first < 31, "day {} in {}-{}", days, year, month);
    }

    #[test]
    fn the_newest_is_kept_whenever_a_rule_is_set(times in times_strategy(), policy in policy_strategy()) {
        prop_assume!(!policy.is_empty() && !times.is_empty());
        let d = decide(&times, &policy);
        let newest = times.iter().max().copied().unwrap();
        let first_newest = times.iter().position(|&t| t == newest).unwrap();
        prop_assert!(d[first_newest].keep);
    }

    #[test]
    fn adding_a_rule_never_forgets_a_kept_snapshot(
        times in times_strategy(),
        base in policy_strategy(),
        more in policy_strategy(),
    ) {
        let wider = KeepPolicy {
            last: base.last + more.last,
            hourly: base.hourly + more.hourly,
            daily: base.daily + more.daily,
            weekly: base.weekly + more.weekly,
            monthly: base.monthly + more.monthly,
            yearly: base.yearly + more.yearly,
            within_secs: match (base.within_secs, more.within_secs) {
                (Some(a), Some(b)) => Some(a + b),
                (a, b) => a.or(b),
            },
        };
        let narrow = decide(&times, &base);
        let wide = decide(&times, &wider);
        for (i, (n, w)) in narrow.iter().zip(&wide).enumerate() {
            prop_assert!(!n.keep || w.keep, "snapshot {} at {} kept by {:?}, not by {:?}", i, times[i], base, wider);
        }
    }

    #[test]
    fn keep_last_keeps_exactly_min_n_len(times in times_strategy(), n in 0u32..80, policy in policy_strategy()) {
        let alone = decide(&times, &KeepPolicy { last: n, ..KeepPolicy::default() });
        prop_assert_eq!(alone.iter().filter(|d| d.keep).count(), (n as usize).min(times.len()));
        // Among other rules, `last` still names exactly that many.
        let mixed = decide(&times, &KeepPolicy { last: n, ..policy });
        prop_assert_eq!(mixed.iter().filter(|d| d.reasons.contains(&"last")).count(), (n as usize).min(times.len()));
    }

    #[test]
    fn a_calendar_rule_keeps_the_newest_of_the_newest_n_periods(
        times in times_strategy(),
        rule in 0usize..5,
        n in 0u32..8,
    ) {
        let (period, policy) = period_of(rule);
        let kept = only(policy(n), &times);
        let mut keys: Vec<i64> = times.iter().map(|&t| period.key(t)).collect();
        keys.sort_unstable();
        keys.dedup();
        let wanted: Vec<i64> = keys.iter().rev().take(n as usize).copied().collect();
        prop_assert_eq!(kept.len(), wanted.len());
        for &i in &kept {
            let key = period.key(times[i]);
            prop_assert!(wanted.contains(&key));
            // The newest of its period, and the first given among equals.
            let newest = times.iter().filter(|&&t| period.key(t) == key).max().copied().unwrap();
            prop_assert_eq!(times[i], newest);
            prop_assert_eq!(times.iter().position(|&t| t == newest), Some(i));
        }
    }

    #[test]
    fn input_order_does_not_change_what_is_kept(
        times in times_strategy(),
        policy in policy_strategy(),
        seed in any::<u64>(),
    ) {
        let mut distinct = times.clone();
        distinct.sort_unstable();
        distinct.dedup();
        // A seeded rotation and reversal shuffle the order.
        let mut shuffled = distinct.clone();
        if !shuffled.is_empty() {
            let k = (seed % shuffled.len() as u64) as usize;
            shuffled.rotate_left(k);
            if seed & 1 == 1 {
                shuffled.reverse();
            }
        }
        let a = decide(&distinct, &policy);
        let b = decide(&shuffled, &policy);
        for (j, t) in shuffled.iter().enumerate() {
            let i = distinct.binary_search(t).unwrap();
            prop_assert_eq!(&a[i], &b[j]);
        }
    }
}

#[test]
fn rules_parse_into_a_policy() {
    let policy = parse_rules("daily=7 weekly=4  within=30d last=2").unwrap();
    let want = KeepPolicy { last: 2, daily: 7, weekly: 4, within_secs: Some(30 * DAY), ..KeepPolicy::default() };
    assert_eq!(policy, want);
    for (text, needle) in [
        ("", "no rule keeps anything"),
        ("daily", "has no `=`"),
        ("daily=x", "not a count for daily"),
        ("dayly=3", "\"dayly\" is not a rule"),
        ("daily=3 daily=4", "given twice"),
        ("daily=-1", "not a count"),
    ] {
        let err = parse_rules(text).unwrap_err().to_string();
        assert!(err.contains(needle) && err.contains("RULE=VALUE"), "{text:?}: {err}");
    }
    assert!(matches!(parse_rules("within=3q"), Err(RetentionError::Within(_))));
}

#[test]
fn table_picks_the_longest_prefix() {
    let text = "# retention\n/laptop daily=7 weekly=4 within=30d\n\n/laptop/tmp last=1   # scratch\n/ last=10\n";
    let table = RetentionTable::parse(text).unwrap();
    assert_eq!(table.entries.len(), 3);
    let last = |tree: &str| table.policy_for(tree).map(|p| (p.last, p.daily));
    assert_eq!(last("/laptop"), Some((0, 7)));
    assert_eq!(last("/laptop/home"), Some((0, 7)));
    assert_eq!(last("/laptop/tmp/x"), Some((1, 0)));
    assert_eq!(last("/laptopx"), Some((10, 0)), "a prefix covers whole components only");
    let only = RetentionTable::parse("/laptop/ last=3").unwrap();
    assert_eq!(only.policy_for("/laptop/a").map(|p| p.last), Some(3));
    assert_eq!(only.policy_for("/phone"), None, "no line covers it: kept whole");
}

#[test]
fn table_errors_name_the_line_and_what_to_write() {
    for (text, line, needle) in [
        ("/a last=1\nlaptop daily=7", 2, "not a tree prefix"),
        ("\n\n/a daily=seven", 3, "not a count for daily"),
        ("/a", 1, "no rule keeps anything"),
        ("/a last=1\n/a/ last=2", 2, "already has a line"),
        ("/a/../b last=1", 1, "not a tree prefix"),
    ] {
        let err = RetentionTable::parse(text).unwrap_err();
        assert!(matches!(err, RetentionError::Line { line: l, .. } if l == line), "{text:?}: {err:?}");
        let message = err.to_string();
        assert!(message.starts_with(&format!("line {line}: ")) && message.contains(needle), "{message}");
    }
}
