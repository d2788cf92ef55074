//! Weekly schedules: a local time in the week, timetables of rates, and
//! the windows in which transfers may run.

use std::collections::BTreeMap;
use std::str::FromStr;

use super::{Rate, ThrottleError};

const MINUTES_PER_DAY: u16 = 24 * 60;
const MINUTES_PER_WEEK: u32 = 7 * MINUTES_PER_DAY as u32;
const DAY_NAMES: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

/// A local wall-clock time within the week, to the minute.
///
/// Out-of-range values are folded in: `weekday` modulo 7, `minute` capped at
/// 1439.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LocalTime {
    /// 0 = Monday .. 6 = Sunday.
    pub weekday: u8,
    /// Minutes since local midnight, 0..1440.
    pub minute: u16,
}

impl LocalTime {
    fn minute_of_week(self) -> u32 {
        u32::from(self.weekday % 7) * u32::from(MINUTES_PER_DAY) + u32::from(self.minute.min(MINUTES_PER_DAY - 1))
    }
}

/// `DAY HH:MM`, e.g. `Mon 23:00`.
impl FromStr for LocalTime {
    type Err = ThrottleError;

    fn from_str(s: &str) -> Result<LocalTime, ThrottleError> {
        let bad = || ThrottleError::Time(s.to_string());
        let (day, time) = s.trim().split_once(' ').ok_or_else(bad)?;
        let weekday = parse_day(day).map_err(|_| bad())?;
        let minute = parse_hhmm(time.trim(), false).ok_or_else(bad)?;
        Ok(LocalTime { weekday, minute })
    }
}

/// Which way data flows, seen from this side: which of a timetable's
/// two rates applies (not the protocol's push or pull of a session).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Flow {
    /// This side sends data (a client's push).
    Up,
    /// This side receives data (a client's pull).
    Down,
}

/// One rate change in a [`Timetable`], at a minute of the week.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Change {
    at: u32,
    up: Rate,
    down: Rate,
}

/// A weekly bandwidth schedule: the rates a `--bwlimit` timetable sets.
///
/// Parsed from entries separated by whitespace, each `[Day-]HH:MM,RATE` or
/// `[Day-]HH:MM,UP:DOWN` (the push rate, then the pull rate), or from a lone
/// `RATE` or `UP:DOWN` for a constant limit: `"08:00,512K 19:00,10M
/// 23:00,off"`, `"Mon-08:00,1M Sat-00:00,off"`, `"10M:off"`.
///
/// The entry in force is the last one at or before now. An entry without a
/// day applies every day; an entry with a day once a week, and at the same
/// minute it overrides an everyday entry. Before the first entry of a day or
/// week, the last one of the day or week before is in force.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timetable {
    /// Sorted by `at`, never empty, everyday entries expanded to seven.
    changes: Vec<Change>,
}

impl Timetable {
    /// The same rate at all times, both ways.
    pub fn constant(rate: Rate) -> Timetable {
        Timetable { changes: vec![Change { at: 0, up: rate, down: rate }] }
    }

    /// The rate in force at `at` for data flowing `flow`.
    pub fn rate_at(&self, at: LocalTime, flow: Flow) -> Rate {
        let change = self.changes[self.index_at(at.minute_of_week())];
        match flow {
            Flow::Up => change.up,
            Flow::Down => change.down,
        }
    }

    /// Minutes from the start of `at`'s minute until the next entry that
    /// changes either rate, or `None` if the rates never change.
    pub fn next_change_after(&self, at: LocalTime) -> Option<u32> {
        let now = at.minute_of_week();
        let current = self.index_at(now);
        let (up, down) = (self.changes[current].up, self.changes[current].down);
        let n = self.changes.len();
        (1..n).map(|k| self.changes[(current + k) % n]).find(|c| (c.up, c.down) != (up, down)).map(|c| {
            // The entry is later in the week, or in next week's.
            (c.at + MINUTES_PER_WEEK - now) % MINUTES_PER_WEEK
        })
    }

    /// Whether any of its rates limits to under [`super::SLOW_RATE`].
    pub fn is_slow(&self) -> bool {
        self.changes.iter().any(|c| c.up.is_slow() || c.down.is_slow())
    }

    fn index_at(&self, minute_of_week: u32) -> usize {
        match self.changes.partition_point(|c| c.at <= minute_of_week) {
            // Before the week's first entry: the last one of last week.
            0 => self.changes.len() - 1,
            i => i - 1,
        }
    }
}

impl FromStr for Timetable {
    type Err = ThrottleError;

    fn from_str(s: &str) -> Result<Timetable, ThrottleError> {
        let tokens: Vec<&str> = s.split_whitespace().collect();
        match tokens[..] {
            [] => return Err(ThrottleError::EmptyTimetable),
            [only] if !only.contains(',') => {
                let (up, down) = parse_up_down(only)?;
                return Ok(Timetable { changes: vec![Change { at: 0, up, down }] });
            }
            _ => {}
        }
        let mut daily: BTreeMap<u32, (Rate, Rate)> = BTreeMap::new();
        let mut weekly: BTreeMap<u32, (Rate, Rate)> = BTreeMap::new();
        for token in tokens {
            let Some((when, rates)) = token.split_once(',') else {
                return Err(match parse_up_down(token) {
                    Ok(_) => ThrottleError::ConstantNotAlone(token.to_string()),
                    Err(_) => ThrottleError::TimetableEntry(token.to_string()),
                });
            };
            let (day, time) = match when.split_once('-') {
                Some((day, time)) => (Some(parse_day(day)?), time),
                None => (None, when),
            };
            let minute = parse_hhmm(time, false).ok_or_else(|| ThrottleError::TimetableEntry(token.to_string()))?;
            let rates = parse_up_down(rates)?;
            let (map, at) = match day {
                Some(day) => (&mut weekly, u32::from(day) * u32::from(MINUTES_PER_DAY) + u32::from(minute)),
                None => (&mut daily, u32::from(minute)),
            };
            if map.insert(at, rates).is_some() {
                return Err(ThrottleError::DuplicateEntry(token.to_string()));
            }
        }
        let mut week = BTreeMap::new();
        for day in 0..7 {
            for (&minute, &rates) in &daily {
                week.insert(day * u32::from(MINUTES_PER_DAY) + minute, rates);
            }
        }
        // Inserted last, so a day's entry overrides the everyday one.
        week.extend(weekly);
        Ok(Timetable { changes: week.into_iter().map(|(at, (up, down))| Change { at, up, down }).collect() })
    }
}

/// `RATE` (both ways) or `UP:DOWN`.
fn parse_up_down(s: &str) -> Result<(Rate, Rate), ThrottleError> {
    // "08:00" alone would read as 8 B/s up, unlimited down: surely a time
    // whose rate was forgotten.
    if parse_hhmm(s, false).is_some() {
        return Err(ThrottleError::TimetableEntry(s.to_string()));
    }
    match s.split_once(':') {
        Some((up, down)) => Ok((up.parse()?, down.parse()?)),
        None => {
            let rate = s.parse()?;
            Ok((rate, rate))
        }
    }
}

/// `H:MM` or `HH:MM` as minutes since midnight; `24:00` only if `allow_24`.
fn parse_hhmm(s: &str, allow_24: bool) -> Option<u16> {
    let (h, m) = s.split_once(':')?;
    let digits = |t: &str, max_len: usize| -> Option<u16> {
        if t.is_empty() || t.len() > max_len || !t.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        t.parse().ok()
    };
    let (h, m) = (digits(h, 2)?, digits(m, 2).filter(|_| m.len() == 2)?);
    match (h, m) {
        (24, 0) if allow_24 => Some(MINUTES_PER_DAY),
        (0..24, 0..60) => Some(h * 60 + m),
        _ => None,
    }
}

/// `Mon`..`Sun`, case-insensitive, as 0..=6.
fn parse_day(s: &str) -> Result<u8, ThrottleError> {
    let lower = s.to_ascii_lowercase();
    (0u8..7).find(|&d| DAY_NAMES[usize::from(d)] == lower).ok_or_else(|| ThrottleError::Day(s.to_string()))
}

/// When transfers may run: one or more weekly time windows.
///
/// Parsed from windows separated by whitespace, each `[DAYS,]HH:MM-HH:MM`
/// where DAYS is a comma-separated list of days or day ranges (`Mon-Fri`,
/// `Sat,Sun`, `Fri-Mon`); without days a window opens every day. A window
/// whose end is not after its start runs past midnight and belongs to the day
/// it starts: `Fri,22:00-06:00` is open from Friday 22:00 to Saturday 06:00.
/// `00:00-24:00` is a whole day.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    /// Open intervals `[start, end)` in minutes of the week: sorted, disjoint,
    /// not touching, within `0..=MINUTES_PER_WEEK`.
    open: Vec<(u32, u32)>,
}

impl Window {
    /// Whether the window is open at `at`.
    pub fn is_open(&self, at: LocalTime) -> bool {
        self.containing(at.minute_of_week()).is_some()
    }

    /// Minutes from `at` until the window opens: 0 if open now, `None` if it
    /// never opens.
    pub fn minutes_until_open(&self, at: LocalTime) -> Option<u32> {
        let now = at.minute_of_week();
        if self.containing(now).is_some() {
            return Some(0);
        }
        let next = self.open.iter().find(|&&(start, _)| start > now);
        match next {
            Some(&(start, _)) => Some(start - now),
            // Nothing later this week: the first opening of next week.
            None => self.open.first().map(|&(start, _)| start + MINUTES_PER_WEEK - now),
        }
    }

    /// Minutes from `at` until the window closes: 0 if closed now, `None` if
    /// it is always open.
    pub fn minutes_until_close(&self, at: LocalTime) -> Option<u32> {
        if self.open[..] == [(0, MINUTES_PER_WEEK)] {
            return None;
        }
        let now = at.minute_of_week();
        let Some((_, end)) = self.containing(now) else { return Some(0) };
        match self.open.first() {
            // Open to the end of the week and from the start of the next.
            Some(&(0, first_end)) if end == MINUTES_PER_WEEK => Some(end - now + first_end),
            _ => Some(end - now),
        }
    }

    fn containing(&self, minute_of_week: u32) -> Option<(u32, u32)> {
        self.open.iter().copied().find(|&(start, end)| (start..end).contains(&minute_of_week))
    }
}

impl FromStr for Window {
    type Err = ThrottleError;

    fn from_str(s: &str) -> Result<Window, ThrottleError> {
        let mut intervals = Vec::new();
        for token in s.split_whitespace() {
            let bad = || ThrottleError::Window(token.to_string());
            let (days, range) = match token.rsplit_once(',') {
                Some((days, range)) => (parse_days(days)?, range),
                None => ([true; 7], token),
            };
            let (start, end) = range.split_once('-').ok_or_else(bad)?;
            let start = parse_hhmm(start, false).ok_or_else(bad)?;
            let end = parse_hhmm(end, true).ok_or_else(bad)?;
            if start == end {
                return Err(ThrottleError::EmptyWindow(token.to_string()));
            }
            let len = u32::from(if end > start { end - start } else { end + MINUTES_PER_DAY - start });
            for day in (0..7u32).filter(|&d| days[d as usize]) {
                let from = day * u32::from(MINUTES_PER_DAY) + u32::from(start);
                let to = from + len;
                if to <= MINUTES_PER_WEEK {
                    intervals.push((from, to));
                } else {
                    // Sunday night into Monday: the week wraps.
                    intervals.push((from, MINUTES_PER_WEEK));
                    intervals.push((0, to - MINUTES_PER_WEEK));
                }
            }
        }
        if intervals.is_empty() {
            return Err(ThrottleError::NoWindow);
        }
        intervals.sort_unstable();
        let mut open: Vec<(u32, u32)> = Vec::with_capacity(intervals.len());
        for (start, end) in intervals {
            match open.last_mut() {
                Some(last) if last.1 >= start => last.1 = last.1.max(end),
                _ => open.push((start, end)),
            }
        }
        Ok(Window { open })
    }
}

/// `Mon`, `Mon-Fri` (wrapping: `Fri-Mon`), or several joined by commas.
fn parse_days(s: &str) -> Result<[bool; 7], ThrottleError> {
    let mut days = [false; 7];
    for part in s.split(',') {
        let (first, last) = match part.split_once('-') {
            Some((first, last)) => (parse_day(first)?, parse_day(last)?),
            None => {
                let day = parse_day(part)?;
                (day, day)
            }
        };
        let mut day = first;
        loop {
            days[usize::from(day)] = true;
            if day == last {
                break;
            }
            day = (day + 1) % 7;
        }
    }
    Ok(days)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KIB: u64 = 1024;
    const MIB: u64 = 1024 * 1024;

    fn at(weekday: u8, hh: u16, mm: u16) -> LocalTime {
        LocalTime { weekday, minute: hh * 60 + mm }
    }

    const MON: u8 = 0;
    const TUE: u8 = 1;
    const WED: u8 = 2;
    const THU: u8 = 3;
    const FRI: u8 = 4;
    const SAT: u8 = 5;
    const SUN: u8 = 6;

    fn table(s: &str) -> Timetable {
        s.parse().unwrap()
    }

    fn both(t: &Timetable, when: LocalTime) -> (Option<u64>, Option<u64>) {
        (t.rate_at(when, Flow::Up).0, t.rate_at(when, Flow::Down).0)
    }

    #[test]
    fn timetable_constant() {
        let t = table("10M");
        for when in [at(MON, 0, 0), at(WED, 12, 30), at(SUN, 23, 59)] {
            assert_eq!(both(&t, when), (Some(10 * MIB), Some(10 * MIB)));
        }
        assert_eq!(t.next_change_after(at(WED, 12, 0)), None);
        assert_eq!(table("10M"), Timetable::constant(Rate(Some(10 * MIB))));
        assert_eq!(both(&table("10M:off"), at(TUE, 3, 0)), (Some(10 * MIB), None));
        assert_eq!(both(&table("off"), at(TUE, 3, 0)), (None, None));
    }

    #[test]
    fn timetable_daily() {
        let t = table("08:00,512K 19:00,10M 23:00,off");
        let k512 = Some(512 * KIB);
        assert_eq!(both(&t, at(WED, 8, 0)), (k512, k512));
        assert_eq!(both(&t, at(WED, 12, 0)), (k512, k512));
        assert_eq!(both(&t, at(WED, 18, 59)), (k512, k512));
        assert_eq!(both(&t, at(WED, 19, 30)), (Some(10 * MIB), Some(10 * MIB)));
        assert_eq!(both(&t, at(WED, 23, 0)), (None, None));
        // Before the day's first entry: the previous day's last one.
        assert_eq!(both(&t, at(WED, 7, 59)), (None, None));
        assert_eq!(both(&t, at(WED, 0, 0)), (None, None));
        // Monday morning follows Sunday night.
        assert_eq!(both(&t, at(MON, 2, 0)), (None, None));

        assert_eq!(t.next_change_after(at(WED, 12, 0)), Some(7 * 60));
        assert_eq!(t.next_change_after(at(WED, 8, 0)), Some(11 * 60));
        assert_eq!(t.next_change_after(at(WED, 23, 30)), Some(8 * 60 + 30));
        assert_eq!(t.next_change_after(at(SUN, 23, 30)), Some(8 * 60 + 30));
        assert_eq!(t.next_change_after(at(MON, 0, 0)), Some(8 * 60));
    }

    #[test]
    fn timetable_next_change_skips_entries_that_change_nothing() {
        let t = table("08:00,1M 12:00,1M 20:00,off");
        assert_eq!(t.next_change_after(at(TUE, 9, 0)), Some(11 * 60));
        assert_eq!(table("08:00,1M 20:00,1M").next_change_after(at(TUE, 9, 0)), None);
        // A change in one direction only is still a change.
        assert_eq!(table("08:00,1M:off 20:00,1M:2M").next_change_after(at(TUE, 9, 0)), Some(11 * 60));
    }

    #[test]
    fn timetable_weekly_wraps_from_sunday_to_monday() {
        let t = table("Sun-22:00,2M wed-06:00,off");
        assert_eq!(both(&t, at(SUN, 21, 59)), (None, None));
        assert_eq!(both(&t, at(SUN, 22, 0)), (Some(2 * MIB), Some(2 * MIB)));
        assert_eq!(both(&t, at(MON, 3, 0)), (Some(2 * MIB), Some(2 * MIB)));
        assert_eq!(both(&t, at(TUE, 23, 0)), (Some(2 * MIB), Some(2 * MIB)));
        assert_eq!(both(&t, at(WED, 6, 0)), (None, None));
        assert_eq!(both(&t, at(SAT, 12, 0)), (None, None));
        assert_eq!(t.next_change_after(at(SUN, 23, 0)), Some(2 * 1440 + 7 * 60));
        assert_eq!(t.next_change_after(at(WED, 6, 0)), Some(4 * 1440 + 16 * 60));
    }

    #[test]
    fn timetable_weekly_before_first_entry_is_last_weeks_last() {
        let t = table("Tue-10:00,1M Thu-10:00,2M");
        assert_eq!(both(&t, at(MON, 12, 0)), (Some(2 * MIB), Some(2 * MIB)));
        assert_eq!(both(&t, at(TUE, 9, 59)), (Some(2 * MIB), Some(2 * MIB)));
        assert_eq!(both(&t, at(TUE, 10, 0)), (Some(MIB), Some(MIB)));
        assert_eq!(both(&t, at(THU, 9, 0)), (Some(MIB), Some(MIB)));
        assert_eq!(t.next_change_after(at(SUN, 23, 59)), Some(1 + 1440 + 600));
    }

    #[test]
    fn timetable_up_down() {
        let t = table("08:00,1M:off 20:00,off:5M");
        assert_eq!(t.rate_at(at(FRI, 9, 0), Flow::Up), Rate(Some(MIB)));
        assert_eq!(t.rate_at(at(FRI, 9, 0), Flow::Down), Rate(None));
        assert_eq!(t.rate_at(at(FRI, 21, 0), Flow::Up), Rate(None));
        assert_eq!(t.rate_at(at(FRI, 21, 0), Flow::Down), Rate(Some(5 * MIB)));
        assert_eq!(both(&t, at(FRI, 7, 0)), (None, Some(5 * MIB)));
    }

    #[test]
    fn timetable_mixes_daily_and_weekly_entries() {
        let t = table("08:00,1M Sat-00:00,off");
        assert_eq!(both(&t, at(SAT, 7, 59)), (None, None));
        assert_eq!(both(&t, at(SAT, 8, 0)), (Some(MIB), Some(MIB)));
        assert_eq!(both(&t, at(FRI, 7, 59)), (Some(MIB), Some(MIB)));
        // A day's entry overrides the everyday one at the same minute.
        let t = table("08:00,1M Mon-08:00,5M 20:00,off");
        assert_eq!(both(&t, at(MON, 9, 0)), (Some(5 * MIB), Some(5 * MIB)));
        assert_eq!(both(&t, at(TUE, 9, 0)), (Some(MIB), Some(MIB)));
    }

    #[test]
    fn timetable_errors() {
        let err = |s: &str| s.parse::<Timetable>().unwrap_err();
        assert_eq!(err(""), ThrottleError::EmptyTimetable);
        assert_eq!(err("  "), ThrottleError::EmptyTimetable);
        assert_eq!(err("25:00,1M"), ThrottleError::TimetableEntry("25:00,1M".into()));
        assert_eq!(err("08:60,1M"), ThrottleError::TimetableEntry("08:60,1M".into()));
        assert_eq!(err("8:0,1M"), ThrottleError::TimetableEntry("8:0,1M".into()));
        assert_eq!(err("24:00,1M"), ThrottleError::TimetableEntry("24:00,1M".into()));
        assert_eq!(err("Foo-08:00,1M"), ThrottleError::Day("Foo".into()));
        assert_eq!(err("Monday-08:00,1M"), ThrottleError::Day("Monday".into()));
        assert_eq!(err("08:00,10Q"), ThrottleError::Rate("10Q".into()));
        assert_eq!(err("08:00,1M:2M:3M"), ThrottleError::Rate("2M:3M".into()));
        assert_eq!(err("08:00,1M 08:00,2M"), ThrottleError::DuplicateEntry("08:00,2M".into()));
        assert_eq!(err("Mon-08:00,1M mon-08:00,2M"), ThrottleError::DuplicateEntry("mon-08:00,2M".into()));
        assert_eq!(err("10M 08:00,1M"), ThrottleError::ConstantNotAlone("10M".into()));
        // A time whose rate was forgotten is not 8 B/s up and unlimited down.
        assert_eq!(err("08:00"), ThrottleError::TimetableEntry("08:00".into()));
        assert_eq!(err("08:00,10:00"), ThrottleError::TimetableEntry("10:00".into()));
        assert_eq!(err("08:00,1M bogus"), ThrottleError::TimetableEntry("bogus".into()));
        assert!(err("Foo-08:00,1M").to_string().contains("use Mon, Tue, Wed, Thu, Fri, Sat or Sun"));
        assert!(err("25:00,1M").to_string().contains("[Day-]HH:MM,RATE"));
    }

    fn window(s: &str) -> Window {
        s.parse().unwrap()
    }

    #[test]
    fn window_wraps_midnight() {
        let w = window("22:00-06:00");
        assert!(w.is_open(at(WED, 23, 0)));
        assert!(w.is_open(at(WED, 22, 0)));
        assert!(w.is_open(at(THU, 5, 59)));
        assert!(!w.is_open(at(THU, 6, 0)));
        assert!(!w.is_open(at(WED, 21, 59)));
        assert!(w.is_open(at(MON, 1, 0)), "Sunday's window runs into Monday");
        assert_eq!(w.minutes_until_open(at(WED, 21, 0)), Some(60));
        assert_eq!(w.minutes_until_open(at(THU, 6, 0)), Some(16 * 60));
        assert_eq!(w.minutes_until_open(at(WED, 23, 0)), Some(0));
        assert_eq!(w.minutes_until_close(at(WED, 23, 0)), Some(7 * 60));
        assert_eq!(w.minutes_until_close(at(SUN, 23, 0)), Some(7 * 60));
        assert_eq!(w.minutes_until_close(at(WED, 12, 0)), Some(0));
    }

    #[test]
    fn window_weekdays_name_the_day_it_starts() {
        let w = window("Mon-Fri,22:00-06:00");
        assert!(w.is_open(at(FRI, 23, 0)));
        assert!(w.is_open(at(SAT, 5, 0)), "Friday's window runs into Saturday");
        assert!(!w.is_open(at(SAT, 23, 0)));
        assert!(!w.is_open(at(SUN, 23, 0)));
        assert!(!w.is_open(at(MON, 5, 0)), "no window starts on Sunday");
        assert!(w.is_open(at(MON, 22, 0)));
        assert_eq!(w.minutes_until_open(at(SAT, 6, 0)), Some(18 * 60 + 1440 + 22 * 60));
        assert_eq!(w.minutes_until_close(at(FRI, 22, 0)), Some(8 * 60));

        let w = window("fri,22:00-06:00");
        assert!(w.is_open(at(FRI, 22, 0)));
        assert!(w.is_open(at(SAT, 5, 59)));
        assert!(!w.is_open(at(FRI, 5, 0)));
        assert!(!w.is_open(at(SAT, 22, 0)));
    }

    #[test]
    fn window_sunday_night_wraps_the_week() {
        let w = window("Sun,22:00-06:00");
        assert!(w.is_open(at(SUN, 22, 0)));
        assert!(w.is_open(at(MON, 5, 0)));
        assert!(!w.is_open(at(MON, 6, 0)));
        assert!(!w.is_open(at(SAT, 23, 0)));
        assert_eq!(w.minutes_until_close(at(SUN, 23, 0)), Some(60 + 6 * 60));
        assert_eq!(w.minutes_until_open(at(MON, 6, 0)), Some(6 * 1440 + 16 * 60));
    }

    #[test]
    fn window_whole_days() {
        let w = window("Sat,00:00-24:00");
        assert!(w.is_open(at(SAT, 0, 0)));
        assert!(w.is_open(at(SAT, 23, 59)));
        assert!(!w.is_open(at(SUN, 0, 0)));
        assert!(!w.is_open(at(FRI, 23, 59)));
        assert_eq!(w.minutes_until_close(at(SAT, 12, 0)), Some(12 * 60));
        assert_eq!(w.minutes_until_open(at(FRI, 23, 0)), Some(60));

        // Adjacent days join into one opening.
        for s in ["Sat,Sun,00:00-24:00", "Sat-Sun,00:00-24:00", "Sat,00:00-24:00 Sun,00:00-24:00"] {
            assert_eq!(window(s).minutes_until_close(at(SAT, 12, 0)), Some(12 * 60 + 1440), "{s}");
        }

        let always = window("00:00-24:00");
        assert!(always.is_open(at(MON, 0, 0)) && always.is_open(at(SUN, 23, 59)));
        assert_eq!(always.minutes_until_close(at(WED, 12, 0)), None);
        assert_eq!(always.minutes_until_open(at(WED, 12, 0)), Some(0));
        assert_eq!(window("Mon-Sun,00:00-24:00"), always);
        assert_eq!(window("12:00-24:00 00:00-12:00"), always);
    }

    #[test]
    fn window_day_ranges_wrap_and_windows_combine() {
        let w = window("Fri-Mon,09:00-10:00");
        assert!(w.is_open(at(FRI, 9, 30)));
        assert!(w.is_open(at(SUN, 9, 30)));
        assert!(w.is_open(at(MON, 9, 30)));
        assert!(!w.is_open(at(TUE, 9, 30)));
        assert!(!w.is_open(at(THU, 9, 30)));

        let w = window("Mon-Fri,22:00-06:00 Sat,Sun,10:00-16:00");
        assert!(w.is_open(at(SAT, 12, 0)));
        assert!(!w.is_open(at(SAT, 9, 0)));
        assert_eq!(w.minutes_until_open(at(SAT, 9, 0)), Some(60));
        assert_eq!(w.minutes_until_open(at(SUN, 16, 0)), Some(8 * 60 + 22 * 60));
    }

    #[test]
    fn window_errors() {
        let err = |s: &str| s.parse::<Window>().unwrap_err();
        assert_eq!(err(""), ThrottleError::NoWindow);
        assert_eq!(err("22:00"), ThrottleError::Window("22:00".into()));
        assert_eq!(err("Mon-Fri 22:00-06:00"), ThrottleError::Window("Mon-Fri".into()));
        assert_eq!(err("24:00-01:00"), ThrottleError::Window("24:00-01:00".into()));
        assert_eq!(err("10:00-24:01"), ThrottleError::Window("10:00-24:01".into()));
        assert_eq!(err("10:00-10:00"), ThrottleError::EmptyWindow("10:00-10:00".into()));
        assert_eq!(err("Foo,10:00-11:00"), ThrottleError::Day("Foo".into()));
        assert_eq!(err("Mon-Foo,10:00-11:00"), ThrottleError::Day("Foo".into()));
        assert!(err("22:00").to_string().contains("Mon-Fri,22:00-06:00"));
    }

    #[test]
    fn local_time_parses_day_and_minute() {
        assert_eq!("Mon 23:00".parse(), Ok(LocalTime { weekday: 0, minute: 23 * 60 }));
        assert_eq!("sun 0:05".parse(), Ok(LocalTime { weekday: 6, minute: 5 }));
        for bad in ["23:00", "Mon", "Mon 24:00", "Xyz 10:00", "Mon 10:0"] {
            assert_eq!(bad.parse::<LocalTime>(), Err(ThrottleError::Time(bad.into())), "{bad}");
        }
    }
}
