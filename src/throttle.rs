//! Bandwidth limits: rates, weekly timetables and time windows, a token
//! bucket, and an async [`Limiter`] that paces writes with it.
//!
//! Everything but [`local_time_now`] and [`Limiter`] is pure: the time is
//! passed in (a [`LocalTime`] in the week, or a [`Duration`] on a monotonic
//! clock), so schedules and pacing are tested with a fake clock.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use thiserror::Error;
use tokio::sync::Notify;

const MINUTES_PER_DAY: u16 = 24 * 60;
const MINUTES_PER_WEEK: u32 = 7 * MINUTES_PER_DAY as u32;
const DAY_NAMES: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

/// Smallest burst [`Bucket::default_burst`] chooses.
pub const MIN_BURST: u64 = 16 * 1024;

/// A rate, a timetable or a window could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum ThrottleError {
    /// Not a rate.
    #[error("\"{0}\" is not a rate: use e.g. 500K, 10M, 1.5G (bytes/s) or 100Mbit (bits/s), or off")]
    Rate(String),
    /// A rate above `u64::MAX` bytes/s.
    #[error("\"{0}\" is too large a rate: use at most 16777215T (bytes/s), or off")]
    RateTooLarge(String),
    /// Not a weekday name.
    #[error("\"{0}\" is not a weekday: use Mon, Tue, Wed, Thu, Fri, Sat or Sun")]
    Day(String),
    /// A timetable entry is malformed.
    #[error(
        "\"{0}\" is not a timetable entry: use [Day-]HH:MM,RATE or [Day-]HH:MM,UP:DOWN with HH:MM from 00:00 to \
         23:59, e.g. 08:00,512K or Sat-10:00,1M:off"
    )]
    TimetableEntry(String),
    /// The timetable has no entries.
    #[error("empty timetable: use a rate such as 10M, or entries such as \"08:00,512K 19:00,off\"")]
    EmptyTimetable,
    /// A rate without a time next to timed entries.
    #[error("\"{0}\" has no time: a rate without HH:MM must be the only timetable entry; use e.g. 08:00,{0}")]
    ConstantNotAlone(String),
    /// Two entries of the same kind set the rate at the same moment.
    #[error("\"{0}\" sets the rate at a time an earlier entry already set: give each [Day-]HH:MM once")]
    DuplicateEntry(String),
    /// A window is malformed.
    #[error(
        "\"{0}\" is not a window: use [DAYS,]HH:MM-HH:MM, e.g. 22:00-06:00, Mon-Fri,22:00-06:00 or Sat,00:00-24:00"
    )]
    Window(String),
    /// A window that starts when it ends.
    #[error("\"{0}\" is an empty window: use 00:00-24:00 for a whole day")]
    EmptyWindow(String),
    /// No window given.
    #[error("no window given: use e.g. 22:00-06:00 or Mon-Fri,22:00-06:00")]
    NoWindow,
    /// Not a time of the week.
    #[error("\"{0}\" is not a time of the week: use DAY HH:MM, e.g. Mon 23:00")]
    Time(String),
}

/// A transfer rate in bytes per second; `None` is unlimited.
///
/// `Rate(Some(0))` is treated as unlimited too, as `0` is on the command line
/// (like rsync's and rclone's `--bwlimit 0`): pausing is a [`Window`]'s job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Rate(pub Option<u64>);

impl Rate {
    /// The limit in bytes per second, or `None` when unlimited.
    pub fn bytes_per_sec(self) -> Option<u64> {
        self.0.filter(|&r| r > 0)
    }
}

impl FromStr for Rate {
    type Err = ThrottleError;

    /// `off`, `unlimited` and `0` are unlimited; `500K`, `10M`, `1.5G`, `2T`
    /// (binary multiples, optional `B` or `iB`) and plain numbers are bytes/s;
    /// `512kbit`, `100Mbit`, `1.5Gbit` are decimal bits/s. Case-insensitive.
    fn from_str(s: &str) -> Result<Rate, ThrottleError> {
        let bad = || ThrottleError::Rate(s.to_string());
        let lower = s.trim().to_ascii_lowercase();
        if lower == "off" || lower == "unlimited" {
            return Ok(Rate(None));
        }
        let split = lower.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(lower.len());
        let (number, unit) = lower.split_at(split);
        // bytes/s = number * mul / div
        let (mul, div): (u128, u128) = match unit {
            "" | "b" => (1, 1),
            "k" | "kb" | "kib" => (1 << 10, 1),
            "m" | "mb" | "mib" => (1 << 20, 1),
            "g" | "gb" | "gib" => (1 << 30, 1),
            "t" | "tb" | "tib" => (1 << 40, 1),
            "bit" => (1, 8),
            "kbit" => (1_000, 8),
            "mbit" => (1_000_000, 8),
            "gbit" => (1_000_000_000, 8),
            "tbit" => (1_000_000_000_000, 8),
            _ => return Err(bad()),
        };
        let (int, frac) = match number.split_once('.') {
            Some((int, frac)) if !frac.is_empty() => (int, frac),
            Some(_) => return Err(bad()),
            None => (number, ""),
        };
        if int.is_empty() || !int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        // Exact decimal arithmetic: 1.5G is 1610612736, not a float's guess.
        // Digits past the 18th fraction digit cannot change a whole byte/s.
        let frac = &frac[..frac.len().min(18)];
        let too_large = || ThrottleError::RateTooLarge(s.to_string());
        let scale = 10u128.pow(frac.len() as u32);
        let int: u128 = int.parse().map_err(|_| too_large())?;
        let frac: u128 = if frac.is_empty() { 0 } else { frac.parse().map_err(|_| bad())? };
        let scaled = int.checked_mul(scale).and_then(|v| v.checked_add(frac)).ok_or_else(too_large)?;
        if scaled == 0 {
            return Ok(Rate(None));
        }
        let den = scale * div;
        let rounded = scaled.checked_mul(mul).and_then(|n| n.checked_add(den / 2));
        let bytes = rounded.ok_or_else(too_large)? / den;
        // A positive rate under 1 byte/s rounds up, not to 0 (unlimited).
        let bytes = u64::try_from(bytes.max(1)).map_err(|_| too_large())?;
        Ok(Rate(Some(bytes)))
    }
}

impl fmt::Display for Rate {
    /// `off`, or the largest binary multiple that is exact (`512K`, `10M`),
    /// so that the text parses back to the same rate.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Some(bytes) = self.bytes_per_sec() else { return f.write_str("off") };
        for (shift, unit) in [(40, "T"), (30, "G"), (20, "M"), (10, "K")] {
            if bytes % (1 << shift) == 0 {
                return write!(f, "{}{unit}", bytes >> shift);
            }
        }
        write!(f, "{bytes}")
    }
}

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

/// The local wall-clock time now, in the system's time zone (UTC if it
/// cannot be determined).
pub fn local_time_now() -> LocalTime {
    let now = jiff::ZonedDateTime::now();
    LocalTime {
        weekday: now.weekday().to_monday_zero_offset().unsigned_abs(),
        minute: u16::from(now.hour().unsigned_abs()) * 60 + u16::from(now.minute().unsigned_abs()),
    }
}

/// Which way data flows, seen from this side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
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

/// A weekly bandwidth schedule, like rclone's `--bwlimit` timetable.
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

    /// The rate in force at `at` for data flowing in `direction`.
    pub fn rate_at(&self, at: LocalTime, direction: Direction) -> Rate {
        let change = self.changes[self.index_at(at.minute_of_week())];
        match direction {
            Direction::Up => change.up,
            Direction::Down => change.down,
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

/// A token bucket on a caller's clock: how long to wait before sending.
///
/// Tokens (bytes) refill at the rate up to the burst. A write takes its bytes
/// at once and may drive the tokens negative; it then waits until they are
/// back to zero, so a large write waits in proportion to its size and
/// traffic stays smooth instead of alternating bursts and pauses.
#[derive(Debug, Clone)]
pub struct Bucket {
    rate: Rate,
    burst: u64,
    tokens: f64,
    /// The clock at the last refill.
    last: Duration,
    /// All tokens ever credited (uncapped): a waiter's position in line, so
    /// its wait can be worked out again after a rate change.
    credited: f64,
}

/// A place in a [`Bucket`]'s line: sending may start once `credited`
/// reaches the target; `None` if it may start at once.
#[derive(Debug, Clone, Copy)]
struct Ticket(Option<f64>);

impl Bucket {
    /// A full bucket.
    pub fn new(rate: Rate, burst: u64) -> Bucket {
        Bucket { rate, burst, tokens: burst as f64, last: Duration::ZERO, credited: 0.0 }
    }

    /// `max(16 KiB, rate / 50)`: 20 ms of traffic.
    ///
    /// That much slack absorbs late wake-ups (the 1 ms timer, a busy
    /// runtime) that would otherwise lose credit and run below the rate,
    /// while any second carries at most 2% more than the rate. The floor
    /// lets a small message through at once after a pause at low rates,
    /// at the cost of at most 16 KiB over the rate in a second.
    pub fn default_burst(rate: Rate) -> u64 {
        rate.bytes_per_sec().map_or(MIN_BURST, |r| (r / 50).max(MIN_BURST))
    }

    /// The current rate.
    pub fn rate(&self) -> Rate {
        self.rate
    }

    /// The current burst in bytes.
    pub fn burst(&self) -> u64 {
        self.burst
    }

    /// Changes the rate from `now` on; tokens earned so far at the old rate
    /// are kept (up to the burst).
    pub fn set_rate(&mut self, rate: Rate, now: Duration) {
        self.refill(now);
        self.rate = rate;
    }

    /// Changes the burst, dropping tokens above it.
    pub fn set_burst(&mut self, burst: u64) {
        self.burst = burst;
        self.tokens = self.tokens.min(burst as f64);
    }

    /// Takes `bytes` at `now` and returns how long to wait before sending
    /// them: zero if they may go now.
    pub fn take(&mut self, bytes: u64, now: Duration) -> Duration {
        let ticket = self.reserve(bytes, now);
        self.wait_for(ticket, now)
    }

    fn refill(&mut self, now: Duration) {
        let elapsed = now.saturating_sub(self.last).as_secs_f64();
        self.last = self.last.max(now);
        match self.rate.bytes_per_sec() {
            // Unlimited forgives any debt: the bucket is simply full.
            None => self.tokens = self.burst as f64,
            Some(rate) => {
                let credit = elapsed * rate as f64;
                self.credited += credit;
                self.tokens = (self.tokens + credit).min(self.burst as f64);
            }
        }
    }

    fn reserve(&mut self, bytes: u64, now: Duration) -> Ticket {
        self.refill(now);
        if self.rate.bytes_per_sec().is_none() {
            return Ticket(None);
        }
        self.tokens -= bytes as f64;
        // Tokens are back to zero once `-tokens` more have been credited.
        Ticket((self.tokens < 0.0).then_some(self.credited - self.tokens))
    }

    fn wait_for(&mut self, ticket: Ticket, now: Duration) -> Duration {
        let Some(target) = ticket.0 else { return Duration::ZERO };
        self.refill(now);
        let Some(rate) = self.rate.bytes_per_sec() else { return Duration::ZERO };
        let owed = target - self.credited;
        if owed <= 0.0 {
            return Duration::ZERO;
        }
        Duration::try_from_secs_f64(owed / rate as f64).unwrap_or(Duration::MAX)
    }
}

/// A shared rate limit for async writers.
///
/// Clones share one [`Bucket`], so the limit holds across all the streams
/// (tasks) that call [`acquire`](Limiter::acquire) on it. For a session's own
/// limit under a total one, give each write to [`acquire_all`].
#[derive(Debug, Clone)]
pub struct Limiter {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    bucket: Mutex<Bucket>,
    origin: tokio::time::Instant,
    /// Wakes waiters after [`Limiter::set_rate`] so their waits follow the
    /// new rate (a slow rate's long wait would otherwise outlast a raise).
    rate_changed: Notify,
}

impl Limiter {
    /// A limiter at `rate` with [`Bucket::default_burst`].
    pub fn new(rate: Rate) -> Limiter {
        Limiter {
            shared: Arc::new(Shared {
                bucket: Mutex::new(Bucket::new(rate, Bucket::default_burst(rate))),
                origin: tokio::time::Instant::now(),
                rate_changed: Notify::new(),
            }),
        }
    }

    /// A limiter that never waits (until given a rate).
    pub fn unlimited() -> Limiter {
        Limiter::new(Rate(None))
    }

    /// The current rate.
    pub fn rate(&self) -> Rate {
        self.bucket().rate()
    }

    /// Changes the rate for all sharers, including writes already waiting.
    pub fn set_rate(&self, rate: Rate) {
        {
            let now = self.now();
            let mut bucket = self.bucket();
            bucket.set_rate(rate, now);
            bucket.set_burst(Bucket::default_burst(rate));
        }
        self.shared.rate_changed.notify_waiters();
    }

    /// Waits until `bytes` may be sent.
    ///
    /// The bytes count from the call on: dropping the future before it
    /// completes does not give them back.
    pub async fn acquire(&self, bytes: u64) {
        let ticket = self.reserve(bytes);
        self.wait(ticket).await;
    }

    fn now(&self) -> Duration {
        tokio::time::Instant::now().saturating_duration_since(self.shared.origin)
    }

    fn bucket(&self) -> MutexGuard<'_, Bucket> {
        // The bucket is consistent between statements: a panicking holder
        // leaves nothing half-done.
        self.shared.bucket.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn reserve(&self, bytes: u64) -> Ticket {
        let now = self.now();
        self.bucket().reserve(bytes, now)
    }

    async fn wait(&self, ticket: Ticket) {
        if ticket.0.is_none() {
            return;
        }
        loop {
            let changed = self.shared.rate_changed.notified();
            tokio::pin!(changed);
            // Registered before reading the bucket, so a rate change between
            // the reading and the sleep still wakes this waiter.
            changed.as_mut().enable();
            let wait = {
                let now = self.now();
                self.bucket().wait_for(ticket, now)
            };
            if wait.is_zero() {
                return;
            }
            tokio::select! {
                // Done, even if float rounding would ask for a nanosecond more.
                () = tokio::time::sleep(wait) => return,
                () = &mut changed => {}
            }
        }
    }
}

/// Waits until `bytes` may be sent under every one of `limiters` (e.g. a
/// session's limit and a total limit): the bytes count against all of them
/// at once, so the wait is the longest of theirs, not their sum.
pub async fn acquire_all(limiters: &[&Limiter], bytes: u64) {
    let tickets: Vec<Ticket> = limiters.iter().map(|limiter| limiter.reserve(bytes)).collect();
    for (limiter, ticket) in limiters.iter().zip(tickets) {
        limiter.wait(ticket).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const KIB: u64 = 1024;
    const MIB: u64 = 1024 * 1024;

    fn rate(s: &str) -> Option<u64> {
        s.parse::<Rate>().unwrap().0
    }

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

    #[test]
    fn rate_parses_binary_multiples() {
        for s in ["500K", "500k", "500KB", "500KiB", "500kib", "500kB"] {
            assert_eq!(rate(s), Some(500 * KIB), "{s}");
        }
        assert_eq!(rate("10M"), Some(10 * MIB));
        assert_eq!(rate("10MiB"), Some(10 * MIB));
        assert_eq!(rate("1.5G"), Some(1_610_612_736));
        assert_eq!(rate("1.5gib"), Some(1_610_612_736));
        assert_eq!(rate("2T"), Some(2 << 40));
        assert_eq!(rate("0.5K"), Some(512));
        assert_eq!(rate(" 10M "), Some(10 * MIB));
    }

    #[test]
    fn rate_parses_plain_bytes() {
        assert_eq!(rate("1234"), Some(1234));
        assert_eq!(rate("1234B"), Some(1234));
        assert_eq!(rate("1"), Some(1));
    }

    #[test]
    fn rate_parses_decimal_bits() {
        assert_eq!(rate("100Mbit"), Some(12_500_000));
        assert_eq!(rate("100mbit"), Some(12_500_000));
        assert_eq!(rate("1.5Gbit"), Some(187_500_000));
        assert_eq!(rate("512kbit"), Some(64_000));
        assert_eq!(rate("1Tbit"), Some(125_000_000_000));
        assert_eq!(rate("80bit"), Some(10));
        // Under 1 B/s rounds up rather than to 0, which would mean unlimited.
        assert_eq!(rate("1bit"), Some(1));
    }

    #[test]
    fn rate_off_unlimited_and_zero_are_unlimited() {
        for s in ["off", "OFF", "Off", "unlimited", "Unlimited", "0", "0K", "0.0M", "0Mbit"] {
            assert_eq!(rate(s), None, "{s}");
        }
        assert_eq!(Rate(Some(0)).bytes_per_sec(), None);
        assert_eq!(Rate(Some(5)).bytes_per_sec(), Some(5));
    }

    #[test]
    fn rate_errors_say_what_is_expected() {
        assert_eq!(
            "10Q".parse::<Rate>().unwrap_err().to_string(),
            "\"10Q\" is not a rate: use e.g. 500K, 10M, 1.5G (bytes/s) or 100Mbit (bits/s), or off"
        );
        for s in ["", "K", "M10", "-1M", "+1M", "1.2.3M", "1e6", "10 M", "fast", "1,5M", "5.", ".5K", "10Mb/s", "1KKB"]
        {
            assert_eq!(s.parse::<Rate>(), Err(ThrottleError::Rate(s.to_string())), "{s:?}");
        }
    }

    #[test]
    fn rate_too_large_is_an_error() {
        assert_eq!(rate("16777215T"), Some(16_777_215 << 40));
        for s in ["16777216T", "99999999999999999999", "1e", "123456789012345678901234567890123456789012T"] {
            let err = s.parse::<Rate>().unwrap_err();
            if s == "1e" {
                assert_eq!(err, ThrottleError::Rate(s.to_string()));
            } else {
                assert_eq!(err, ThrottleError::RateTooLarge(s.to_string()), "{s}");
                assert!(err.to_string().contains("at most 16777215T"));
            }
        }
    }

    /// A rate whose bytes times the unit land within rounding of u128's
    /// end: rounding overflowed (a panic with overflow checks, and in a
    /// release build the wrapped sum parsed as 1 B/s).
    #[test]
    fn rate_at_the_end_of_u128_is_too_large() {
        // (2^88 - 1) * 2^40 = 2^128 - 2^40, plus half of 10^18 wraps.
        for s in ["309485009.821345068724781055T", "309485009.821345068724781055TiB"] {
            assert_eq!(s.parse::<Rate>(), Err(ThrottleError::RateTooLarge(s.to_string())), "{s}");
        }
    }

    #[test]
    fn rate_display() {
        assert_eq!(Rate(None).to_string(), "off");
        assert_eq!(Rate(Some(0)).to_string(), "off");
        assert_eq!(Rate(Some(512 * KIB)).to_string(), "512K");
        assert_eq!(Rate(Some(1536 * MIB)).to_string(), "1536M");
        assert_eq!(Rate(Some(3 << 40)).to_string(), "3T");
        assert_eq!(Rate(Some(1000)).to_string(), "1000");
    }

    proptest! {
        #[test]
        fn rate_display_parses_back(bytes in 1u64..) {
            prop_assert_eq!(Rate(Some(bytes)).to_string().parse::<Rate>(), Ok(Rate(Some(bytes))));
        }
    }

    fn table(s: &str) -> Timetable {
        s.parse().unwrap()
    }

    fn both(t: &Timetable, when: LocalTime) -> (Option<u64>, Option<u64>) {
        (t.rate_at(when, Direction::Up).0, t.rate_at(when, Direction::Down).0)
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
        assert_eq!(t.rate_at(at(FRI, 9, 0), Direction::Up), Rate(Some(MIB)));
        assert_eq!(t.rate_at(at(FRI, 9, 0), Direction::Down), Rate(None));
        assert_eq!(t.rate_at(at(FRI, 21, 0), Direction::Up), Rate(None));
        assert_eq!(t.rate_at(at(FRI, 21, 0), Direction::Down), Rate(Some(5 * MIB)));
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

    #[test]
    fn local_time_now_is_in_range() {
        let now = local_time_now();
        assert!(now.weekday < 7 && now.minute < 1440, "{now:?}");
    }

    /// Bytes sent in each second of `[0, secs)` by a writer that sends
    /// `sizes()` back to back, each when the bucket says; `hook` may change
    /// the bucket between writes.
    fn simulate(
        bucket: &mut Bucket,
        secs: u64,
        mut sizes: impl FnMut() -> u64,
        mut hook: impl FnMut(&mut Bucket, Duration),
    ) -> Vec<u64> {
        let mut per_second = vec![0; secs as usize];
        let mut now = Duration::ZERO;
        // A bucket that stops pacing would spin here forever at time zero.
        for _ in 0..20_000_000 {
            hook(bucket, now);
            let size = sizes();
            let sent_at = now + bucket.take(size, now);
            if sent_at.as_secs() >= secs {
                return per_second;
            }
            per_second[sent_at.as_secs() as usize] += size;
            now = sent_at;
        }
        panic!("20M writes in {secs} s of fake time: the bucket is not pacing");
    }

    /// Every second at most 10% over `rate`; the average within 3% of it.
    fn assert_smooth(per_second: &[u64], rate: u64) -> Result<(), TestCaseError> {
        for (second, &bytes) in per_second.iter().enumerate() {
            prop_assert!(bytes as f64 <= rate as f64 * 1.10, "second {second}: {bytes} bytes at rate {rate}");
        }
        let average = per_second.iter().sum::<u64>() as f64 / per_second.len() as f64;
        prop_assert!((average / rate as f64 - 1.0).abs() <= 0.03, "average {average} at rate {rate}");
        Ok(())
    }

    #[test]
    fn bucket_is_smooth_at_one_mb_per_second() {
        let rate = Rate(Some(1_000_000));
        let mut bucket = Bucket::new(rate, Bucket::default_burst(rate));
        let per_second = simulate(&mut bucket, 30, || 64 * KIB, |_, _| {});
        assert_smooth(&per_second, 1_000_000).unwrap();
    }

    #[test]
    fn bucket_large_write_waits_in_proportion() {
        let rate = Rate(Some(MIB));
        let mut bucket = Bucket::new(rate, 16 * KIB);
        // Within the burst: no wait.
        assert_eq!(bucket.take(16 * KIB, Duration::ZERO), Duration::ZERO);
        // 1 MiB on an empty bucket: one second, not all at once then nothing.
        let wait = bucket.take(MIB, Duration::ZERO);
        assert!((wait.as_secs_f64() - 1.0).abs() < 1e-6, "{wait:?}");
        // The next write queues behind it.
        let wait = bucket.take(MIB / 2, Duration::from_millis(500));
        assert!((wait.as_secs_f64() - 1.0).abs() < 1e-6, "{wait:?}");
        // After an idle spell the bucket holds no more than the burst.
        let wait = bucket.take(32 * KIB, Duration::from_secs(100));
        assert!((wait.as_secs_f64() - 1.0 / 64.0).abs() < 1e-6, "{wait:?}");
    }

    #[test]
    fn bucket_unlimited_never_waits() {
        let mut bucket = Bucket::new(Rate(None), MIN_BURST);
        assert_eq!(bucket.take(u64::MAX, Duration::ZERO), Duration::ZERO);
        assert_eq!(bucket.take(u64::MAX, Duration::ZERO), Duration::ZERO);
        // A rate set later starts from a full bucket, not from the debt.
        bucket.set_rate(Rate(Some(MIB)), Duration::from_secs(1));
        assert_eq!(bucket.take(MIN_BURST, Duration::from_secs(1)), Duration::ZERO);
        assert!(bucket.take(MIB, Duration::from_secs(1)) > Duration::from_millis(900));
    }

    #[test]
    fn bucket_default_burst() {
        assert_eq!(Bucket::default_burst(Rate(Some(1_000_000))), 20_000);
        assert_eq!(Bucket::default_burst(Rate(Some(100 * MIB))), 2 * MIB);
        assert_eq!(Bucket::default_burst(Rate(Some(64 * KIB))), MIN_BURST);
        assert_eq!(Bucket::default_burst(Rate(None)), MIN_BURST);
    }

    #[test]
    fn bucket_rate_change_takes_effect_within_one_burst() {
        let (fast, slow) = (1_000_000, 200_000);
        let change = Duration::from_secs(10);
        let mut bucket = Bucket::new(Rate(Some(fast)), Bucket::default_burst(Rate(Some(fast))));
        let old_burst = bucket.burst();
        let mut changed = false;
        let per_second = simulate(
            &mut bucket,
            30,
            || 4 * KIB,
            |bucket, now| {
                if !changed && now >= change {
                    bucket.set_rate(Rate(Some(slow)), now);
                    bucket.set_burst(Bucket::default_burst(Rate(Some(slow))));
                    changed = true;
                }
            },
        );
        assert!(changed);
        // The first second after the change carries the new rate plus at
        // most one burst (and one write) earned at the old rate.
        assert!(per_second[10] <= slow + old_burst + 4 * KIB, "{per_second:?}");
        assert_smooth(&per_second[11..], slow).unwrap();
        assert_smooth(&per_second[..10], fast).unwrap();

        // And back up: the new rate from the first second on.
        let mut bucket = Bucket::new(Rate(Some(slow)), Bucket::default_burst(Rate(Some(slow))));
        let mut changed = false;
        let per_second = simulate(
            &mut bucket,
            20,
            || 4 * KIB,
            |bucket, now| {
                if !changed && now >= change {
                    bucket.set_rate(Rate(Some(fast)), now);
                    bucket.set_burst(Bucket::default_burst(Rate(Some(fast))));
                    changed = true;
                }
            },
        );
        assert_smooth(&per_second[10..], fast).unwrap();
        assert_smooth(&per_second[..10], slow).unwrap();
    }

    #[test]
    fn bucket_pending_wait_follows_a_rate_change() {
        let mut bucket = Bucket::new(Rate(Some(KIB)), 0);
        let ticket = bucket.reserve(MIB, Duration::ZERO);
        let wait = bucket.wait_for(ticket, Duration::ZERO);
        assert!((wait.as_secs_f64() - 1024.0).abs() < 1e-6, "{wait:?}");
        // After one second (1 KiB paid) the rate goes up 1024 times.
        let now = Duration::from_secs(1);
        bucket.set_rate(Rate(Some(MIB)), now);
        let wait = bucket.wait_for(ticket, now);
        assert!((wait.as_secs_f64() - 1023.0 / 1024.0).abs() < 1e-6, "{wait:?}");
        bucket.set_rate(Rate(None), now);
        assert_eq!(bucket.wait_for(ticket, now), Duration::ZERO);
    }

    proptest! {
        /// Rates from 12 MiB/s: a 1 MiB write lands in one second whole, on
        /// top of that second's rate, so it must stay under 10% of the rate
        /// minus the 2% burst.
        #[test]
        fn bucket_is_smooth_for_any_write_sizes(
            rate in 12 * MIB..=256 * MIB,
            sizes in prop::collection::vec(1..=MIB, 1..16),
        ) {
            // Tiny sizes at a high rate are millions of writes: skip them
            // (shrinking would otherwise crawl there).
            let mean = sizes.iter().sum::<u64>() as f64 / sizes.len() as f64;
            prop_assume!(rate as f64 * 30.0 / mean < 4e6);
            let mut bucket = Bucket::new(Rate(Some(rate)), Bucket::default_burst(Rate(Some(rate))));
            let mut next = sizes.iter().copied().cycle();
            let per_second = simulate(&mut bucket, 30, || next.next().unwrap_or(1), |_, _| {});
            assert_smooth(&per_second, rate)?;
        }
    }

    /// Virtual time for `tasks` tasks sharing `limiter` to send `each` bytes
    /// apiece in 64 KiB writes.
    async fn time_to_send(limiter: &Limiter, tasks: u64, each: u64) -> Duration {
        let start = tokio::time::Instant::now();
        let handles: Vec<_> = (0..tasks)
            .map(|_| {
                let limiter = limiter.clone();
                tokio::spawn(async move {
                    for _ in 0..each / (64 * KIB) {
                        limiter.acquire(64 * KIB).await;
                    }
                })
            })
            .collect();
        for handle in handles {
            handle.await.unwrap();
        }
        start.elapsed()
    }

    #[tokio::test]
    async fn limiter_caps_the_total_across_tasks() {
        tokio::time::pause();
        let limiter = Limiter::new(Rate(Some(MIB)));
        let elapsed = time_to_send(&limiter, 2, 2 * MIB).await;
        assert!((elapsed.as_secs_f64() - 4.0).abs() <= 0.4, "{elapsed:?}");
    }

    #[tokio::test]
    async fn limiter_unlimited_does_not_wait() {
        tokio::time::pause();
        let elapsed = time_to_send(&Limiter::unlimited(), 2, 64 * MIB).await;
        assert_eq!(elapsed, Duration::ZERO);
    }

    #[tokio::test]
    async fn limiter_rate_change_wakes_waiting_writes() {
        tokio::time::pause();
        let limiter = Limiter::new(Rate(Some(KIB)));
        let start = tokio::time::Instant::now();
        let writer = tokio::spawn({
            let limiter = limiter.clone();
            async move { limiter.acquire(MIB).await }
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(!writer.is_finished());
        // At 1 KiB/s the write would wait about 1000 s; at 1 MiB/s the rest
        // takes under a second.
        limiter.set_rate(Rate(Some(MIB)));
        assert_eq!(limiter.rate(), Rate(Some(MIB)));
        writer.await.unwrap();
        let elapsed = start.elapsed();
        assert!(elapsed > Duration::from_millis(1900) && elapsed < Duration::from_secs(2), "{elapsed:?}");

        // Off releases waiters at once.
        limiter.acquire(MIB).await;
        let writer = tokio::spawn({
            let limiter = limiter.clone();
            async move { limiter.acquire(MIB).await }
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!writer.is_finished());
        let before = tokio::time::Instant::now();
        limiter.set_rate(Rate(None));
        writer.await.unwrap();
        assert_eq!(before.elapsed(), Duration::ZERO);
    }

    #[tokio::test]
    async fn acquire_all_waits_for_the_slowest_limit_not_the_sum() {
        tokio::time::pause();
        let session = Limiter::new(Rate(Some(MIB)));
        let total = Limiter::new(Rate(Some(MIB / 2)));
        let start = tokio::time::Instant::now();
        let writer = tokio::spawn({
            let (session, total) = (session.clone(), total.clone());
            async move { acquire_all(&[&session, &total], MIB).await }
        });
        // Let the writer take its bytes from both limits.
        tokio::task::yield_now().await;
        // The session limit was charged the 1 MiB at once, so another 64 KiB
        // on it waits about a second.
        session.acquire(64 * KIB).await;
        let session_wait = start.elapsed();
        assert!(session_wait > Duration::from_millis(1000), "{session_wait:?}");
        writer.await.unwrap();
        // 1 MiB at the total's 512 KiB/s: 2 s (3 s if the waits added up).
        let elapsed = start.elapsed();
        assert!((elapsed.as_secs_f64() - 2.0).abs() <= 0.2, "{elapsed:?}");
    }
}
