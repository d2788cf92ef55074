//! Fuzz target: the bandwidth settings (`xfer_core::pacing`), as a user
//! types them (`--bwlimit`, timetables, `--window`), and the pacing behind
//! them (the network edge's `Limiter`).
//!
//! - `Rate`: a parsed rate prints as text that parses back to the same rate.
//! - `Timetable`: at any time of the week, `next_change_after` agrees with
//!   `rate_at` minute by minute (the rates hold until then and change then;
//!   `None` only if they never change).
//! - `Window`: `minutes_until_open` and `minutes_until_close` agree with
//!   `is_open` minute by minute, across the end of the week too.
//! - `Bucket`: with arbitrary rates, bursts, sizes and clock steps, a write
//!   never waits longer than all bytes taken so far need at the current
//!   rate, never waits under an unlimited rate, and within a stretch of
//!   constant rate and burst no more than burst + rate x time goes out.
//! - `Limiter`: on a paused tokio clock, every acquire ends, and no later than
//!   the bucket's bound plus the timer's millisecond.
//!
//! Parse errors must display; nothing may panic or overflow.
#![no_main]

use std::time::Duration;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use xfer::net::limiter::Limiter;
use xfer_core::pacing::{Bucket, Flow, LocalTime, Rate, Timetable, Window};

const MINUTES_PER_DAY: u32 = 24 * 60;
const MINUTES_PER_WEEK: u32 = 7 * MINUTES_PER_DAY;

/// Times of the week checked per input (each check may walk a whole week).
const MAX_TIMES: usize = 6;
/// Steps per bucket or limiter input.
const MAX_OPS: usize = 64;

#[derive(Arbitrary, Debug)]
enum Input {
    Rate(String),
    Timetable { times: Vec<(u8, u16)>, text: String },
    Window { times: Vec<(u8, u16)>, text: String },
    Bucket { rate: u64, burst: u64, ops: Vec<BucketOp> },
    Limiter { rate: u64, ops: Vec<LimiterOp> },
}

#[derive(Arbitrary, Debug)]
enum BucketOp {
    Take { bytes: u64, after_ms: u32 },
    SetRate { rate: u64, after_ms: u32 },
    SetBurst(u64),
}

#[derive(Arbitrary, Debug)]
enum LimiterOp {
    Acquire(u32),
    /// Two writers at once on the same limiter.
    AcquireBoth(u32, u32),
    SetRate(u64),
    Sleep(u16),
}

fuzz_target!(|input: Input| match input {
    Input::Rate(text) => check_rate(&text),
    Input::Timetable { times, text } => check_timetable(&text, &times),
    Input::Window { times, text } => check_window(&text, &times),
    Input::Bucket { rate, burst, ops } => check_bucket(rate, burst, &ops),
    Input::Limiter { rate, ops } => check_limiter(rate, &ops),
});

/// `0` and `u64::MAX` are the interesting ends; other values pass through.
fn rate_of(raw: u64) -> Rate {
    Rate((raw != 0).then_some(raw))
}

fn check_rate(text: &str) {
    let rate = match text.parse::<Rate>() {
        Ok(rate) => rate,
        Err(e) => {
            assert!(!e.to_string().is_empty());
            return;
        }
    };
    let shown = rate.to_string();
    let back: Rate = shown.parse().unwrap_or_else(|e| panic!("{text:?} displays as {shown:?}, which fails: {e}"));
    assert_eq!(back.bytes_per_sec(), rate.bytes_per_sec(), "{text:?} -> {shown:?}");
}

/// The minute of the week `LocalTime` documents: weekday modulo 7, minute
/// capped at 1439.
fn minute_of_week(at: LocalTime) -> u32 {
    u32::from(at.weekday % 7) * MINUTES_PER_DAY + u32::from(at.minute).min(MINUTES_PER_DAY - 1)
}

fn at_minute(minute_of_week: u32) -> LocalTime {
    let m = minute_of_week % MINUTES_PER_WEEK;
    LocalTime { weekday: (m / MINUTES_PER_DAY) as u8, minute: (m % MINUTES_PER_DAY) as u16 }
}

fn check_timetable(text: &str, times: &[(u8, u16)]) {
    let table = match text.parse::<Timetable>() {
        Ok(table) => table,
        Err(e) => {
            assert!(!e.to_string().is_empty());
            return;
        }
    };
    let week: Vec<(Rate, Rate)> = (0..MINUTES_PER_WEEK)
        .map(|m| (table.rate_at(at_minute(m), Flow::Up), table.rate_at(at_minute(m), Flow::Down)))
        .collect();
    for &(weekday, minute) in times.iter().take(MAX_TIMES) {
        let at = LocalTime { weekday, minute };
        let now = minute_of_week(at);
        let rates = (table.rate_at(at, Flow::Up), table.rate_at(at, Flow::Down));
        assert_eq!(rates, week[now as usize], "{text:?} at {at:?}: folding differs");
        match table.next_change_after(at) {
            None => assert!(week.iter().all(|r| *r == rates), "{text:?}: rates change, but no change is announced"),
            Some(wait) => {
                assert!((1..MINUTES_PER_WEEK).contains(&wait), "{text:?} at {at:?}: change in {wait} minutes");
                for step in 1..wait {
                    let m = ((now + step) % MINUTES_PER_WEEK) as usize;
                    assert_eq!(week[m], rates, "{text:?} at {at:?}: changes after {step}, announced {wait}");
                }
                let then = ((now + wait) % MINUTES_PER_WEEK) as usize;
                assert_ne!(week[then], rates, "{text:?} at {at:?}: no change after the announced {wait} minutes");
            }
        }
    }
}

fn check_window(text: &str, times: &[(u8, u16)]) {
    let window = match text.parse::<Window>() {
        Ok(window) => window,
        Err(e) => {
            assert!(!e.to_string().is_empty());
            return;
        }
    };
    let week: Vec<bool> = (0..MINUTES_PER_WEEK).map(|m| window.is_open(at_minute(m))).collect();
    assert!(week.contains(&true), "{text:?} parsed, yet never opens");
    let open_at = |m: u32| week[(m % MINUTES_PER_WEEK) as usize];
    for &(weekday, minute) in times.iter().take(MAX_TIMES) {
        let at = LocalTime { weekday, minute };
        let now = minute_of_week(at);
        let open = window.is_open(at);
        assert_eq!(open, open_at(now), "{text:?} at {at:?}: folding differs");
        match window.minutes_until_open(at) {
            None => panic!("{text:?} at {at:?}: a parsed window that never opens"),
            Some(0) => assert!(open, "{text:?} at {at:?}: closed, yet opens in 0 minutes"),
            Some(wait) => {
                assert!(!open, "{text:?} at {at:?}: open, yet opens in {wait} minutes");
                assert!(wait < MINUTES_PER_WEEK, "{text:?} at {at:?}: opens in {wait} minutes");
                assert!((1..wait).all(|s| !open_at(now + s)), "{text:?} at {at:?}: opens before {wait} minutes");
                assert!(open_at(now + wait), "{text:?} at {at:?}: not open after the announced {wait} minutes");
            }
        }
        match window.minutes_until_close(at) {
            None => assert!(week.iter().all(|&o| o), "{text:?}: closes sometime, yet announced always open"),
            Some(0) => assert!(!open, "{text:?} at {at:?}: open, yet closes in 0 minutes"),
            Some(wait) => {
                assert!(open, "{text:?} at {at:?}: closed, yet closes in {wait} minutes");
                assert!(wait <= MINUTES_PER_WEEK, "{text:?} at {at:?}: closes in {wait} minutes");
                assert!((0..wait).all(|s| open_at(now + s)), "{text:?} at {at:?}: closes before {wait} minutes");
                assert!(!open_at(now + wait), "{text:?} at {at:?}: still open after the announced {wait} minutes");
            }
        }
    }
}

/// Relative slack for float comparisons (the bucket counts bytes in f64).
const SLACK: f64 = 1e-9;

fn check_bucket(rate: u64, burst: u64, ops: &[BucketOp]) {
    let mut bucket = Bucket::new(rate_of(rate), burst);
    let mut now = Duration::ZERO;
    // All bytes ever taken: no debt can exceed them.
    let mut taken_total = 0f64;
    // The current stretch of constant rate and burst: its start, the
    // tokens it can have started with at most, and the bytes taken in it.
    let mut stretch_start = Duration::ZERO;
    let mut stretch_cap = burst as f64;
    let mut stretch_taken = 0f64;
    // When the bucket last counted its tokens (set_burst does not).
    let mut last_refill = Duration::ZERO;
    // The bucket places waiters on a running total of all credit ever
    // given, in f64: its waits are exact to a few units in the last place
    // of that total, no better (1 byte at 2^52 bytes). That total only
    // gets large at absurd rates and uptimes (exabytes per second for
    // months): a precision limit, not a pacing error.
    let mut credited = 0f64;
    let mut refill = |bucket: &Bucket, now: Duration, last_refill: &mut Duration| {
        if let Some(rate) = bucket.rate().bytes_per_sec() {
            credited += now.saturating_sub(*last_refill).as_secs_f64() * rate as f64;
        }
        *last_refill = now;
        credited * f64::EPSILON * 4.0
    };
    for op in ops.iter().take(MAX_OPS) {
        match *op {
            BucketOp::Take { bytes, after_ms } => {
                now += Duration::from_millis(u64::from(after_ms));
                let resolution = refill(&bucket, now, &mut last_refill);
                let wait = bucket.take(bytes, now);
                taken_total += bytes as f64;
                stretch_taken += bytes as f64;
                let Some(rate) = bucket.rate().bytes_per_sec() else {
                    assert_eq!(wait, Duration::ZERO, "an unlimited bucket made a write wait");
                    continue;
                };
                // A wait past Duration::MAX (584 billion years) saturates:
                // no bound to check below it.
                if wait == Duration::MAX {
                    continue;
                }
                let rate = rate as f64;
                let wait = wait.as_secs_f64();
                let longest = (taken_total + resolution) / rate;
                assert!(
                    wait <= longest * (1.0 + SLACK) + SLACK,
                    "waits {wait} s, more than the {longest} s all {taken_total} bytes ever taken need at {rate} B/s"
                );
                // The send time of this write, seen from the stretch's start.
                let elapsed = (now - stretch_start).as_secs_f64() + wait;
                // Waits are whole nanoseconds: one is worth `rate * 1e-9` bytes.
                let allowed = stretch_cap + rate * (elapsed + 1e-9) + resolution;
                assert!(
                    stretch_taken <= allowed + (allowed + stretch_taken) * SLACK + 1.0,
                    "{stretch_taken} bytes out within {elapsed} s at {rate} B/s with a burst of {stretch_cap}"
                );
            }
            BucketOp::SetRate { rate, after_ms } => {
                now += Duration::from_millis(u64::from(after_ms));
                refill(&bucket, now, &mut last_refill);
                bucket.set_rate(rate_of(rate), now);
                (stretch_start, stretch_cap, stretch_taken) = (now, bucket.burst() as f64, 0.0);
            }
            BucketOp::SetBurst(burst) => {
                bucket.set_burst(burst);
                // Tokens were capped as of the last refill; credit since
                // then is added at the next one.
                (stretch_start, stretch_cap, stretch_taken) = (last_refill, burst as f64, 0.0);
            }
        }
    }
}

fn check_limiter(rate: u64, ops: &[LimiterOp]) {
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build() else {
        return;
    };
    runtime.block_on(async {
        let limiter = Limiter::new(rate_of(rate));
        let origin = tokio::time::Instant::now();
        let mut taken_total = 0f64;
        // A bound on the bucket's running credit total, whose last place
        // limits the precision of waits (see `check_bucket`).
        let mut fastest = rate_of(rate).bytes_per_sec().unwrap_or(0) as f64;
        for op in ops.iter().take(MAX_OPS) {
            let start = tokio::time::Instant::now();
            let bytes = match *op {
                LimiterOp::Acquire(bytes) => {
                    limiter.acquire(u64::from(bytes)).await;
                    u64::from(bytes)
                }
                LimiterOp::AcquireBoth(a, b) => {
                    tokio::join!(limiter.acquire(u64::from(a)), limiter.acquire(u64::from(b)));
                    u64::from(a) + u64::from(b)
                }
                LimiterOp::SetRate(rate) => {
                    fastest = fastest.max(rate_of(rate).bytes_per_sec().unwrap_or(0) as f64);
                    limiter.set_rate(rate_of(rate));
                    assert_eq!(limiter.rate().bytes_per_sec(), rate_of(rate).bytes_per_sec());
                    continue;
                }
                LimiterOp::Sleep(ms) => {
                    tokio::time::sleep(Duration::from_millis(u64::from(ms))).await;
                    continue;
                }
            };
            taken_total += bytes as f64;
            let elapsed = start.elapsed().as_secs_f64();
            let resolution = fastest * origin.elapsed().as_secs_f64() * f64::EPSILON * 4.0;
            let bound = limiter.rate().bytes_per_sec().map_or(0.0, |rate| (taken_total + resolution) / rate as f64);
            // The paused clock still wakes timers on whole milliseconds.
            assert!(
                elapsed <= bound * (1.0 + SLACK) + 0.002,
                "acquire of {bytes} took {elapsed} s; all {taken_total} bytes ever taken need {bound} s"
            );
        }
    });
}
