//! How much the receiver asks for at once: a request window sized from the
//! link's bandwidth-delay product, which the transport measures and hands
//! in as a number (no clock, no socket here).
//!
//! What caps a push on a long link, per round trip (150 ms, first push of
//! a source tree: ~15 KB files, ~4 KB each on the wire):
//! - files in flight: each small file costs a `NeedChunk` -> `ChunkData`
//!   round trip, so the fixed 64 of old carried 64 x 4 KB per 150 ms,
//!   about 14 Mbit/s. This is the limit that bound; it now follows the
//!   window ([`Limits::files`]).
//! - chunks asked for: 256 (one per small file) bound the same way just
//!   behind it; now [`Limits::chunks`].
//! - bytes asked for: 16 MiB is 8x the BDP of 100 Mbit/s at 150 ms and
//!   never bound there; it grows for faster links ([`Limits::bytes`]).
//! - per phase, not per file: `Open`, one `ListDir` per directory level
//!   that differs, one `GetFiles`, `Done` -> `Summary`: a few round trips
//!   per session. A batch commit (every 4,096 files, see the store) waits
//!   for the files in flight: one round trip per batch. `SetMeta`,
//!   `Delete` and `Link` wait for the files in flight too, but the plan
//!   puts them after all writes, so that costs one round trip in all.

use std::time::Duration;

/// Least request window, in wire bytes: twice the BDP of 20 Mbit/s at
/// 200 ms, so a push starts with the window a common long link needs while
/// the measurement catches up (on a short link a larger window costs only
/// the requests, which are bounded below).
pub const MIN_REQUEST_WINDOW: u64 = 1 << 20;

/// Largest request window, in wire bytes, whatever the link is measured
/// at: twice the BDP of 1 Gbit/s at 250 ms.
pub const MAX_REQUEST_WINDOW: u64 = 64 << 20;

/// Files being rebuilt at once, at least: the files of
/// [`MIN_REQUEST_WINDOW`] at ~4 KB each on the wire (64 before files in
/// flight stopped holding descriptors).
pub const MIN_FILES_IN_FLIGHT: usize = 256;

/// Files being rebuilt at once, at most. A file in flight holds no file
/// descriptor while it waits for its chunks (the store reopens its
/// temporary when they arrive), so this bounds memory (its chunk list and
/// needs, a few hundred bytes for a small file) and temporary files; 4,096
/// small files of ~4 KB on the wire fill 2x the BDP of 100 Mbit/s at
/// 650 ms.
pub const MAX_FILES_IN_FLIGHT: usize = 4096;

/// Chunks asked for and not yet received, at least: four per file of
/// [`MIN_FILES_IN_FLIGHT`] (256 before).
pub const MIN_OUTSTANDING_CHUNKS: usize = 1024;

/// Chunks asked for and not yet received, at most: each costs an entry
/// here and a queued answer at the sender, both bounded in bytes by
/// [`MAX_OUTSTANDING_BYTES`] too.
pub const MAX_OUTSTANDING_CHUNKS: usize = 16384;

/// Bytes (decoded) of chunks asked for and not yet received, at least:
/// chunk sizes grow with file size (up to 4 MiB), so a count alone would
/// let memory grow with them. 16 MiB was the old fixed value.
pub const MIN_OUTSTANDING_BYTES: u64 = 16 << 20;

/// Bytes (decoded) asked for and not yet received, at most: bounds the
/// sender's read-ahead and what both sides buffer. 40 MiB covers twice
/// the BDP of 1 Gbit/s at 150 ms with incompressible data.
pub const MAX_OUTSTANDING_BYTES: u64 = 40 << 20;

/// Mean encoded chunk size assumed at least, so that a run of empty or
/// tiny chunks cannot turn a window into a huge count (the ceilings hold
/// anyway).
const MIN_MEAN_CHUNK: u64 = 256;

/// Decoded bytes per wire byte counted at most when the window is turned
/// into decoded bytes.
const MAX_RATIO: u64 = 16;

/// What the receiver may have asked for and not received.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Files being rebuilt.
    pub files: usize,
    /// Chunks asked for.
    pub chunks: usize,
    /// Their decoded bytes.
    pub bytes: u64,
}

impl Limits {
    /// The floors: what a receiver asks for before it knows its link.
    pub const FLOOR: Limits =
        Limits { files: MIN_FILES_IN_FLIGHT, chunks: MIN_OUTSTANDING_CHUNKS, bytes: MIN_OUTSTANDING_BYTES };

    /// The limits for a window of `window` wire bytes, given the chunks
    /// received so far (`chunks` of them, `encoded` bytes on the wire
    /// decoding to `decoded`): the window holds `window / mean encoded
    /// chunk` chunks, and as many small files; in decoded bytes it is the
    /// window times the compression ratio. Each is clamped between its
    /// floor and its ceiling.
    pub fn for_window(window: u64, chunks: u64, encoded: u64, decoded: u64) -> Limits {
        let window = window.clamp(MIN_REQUEST_WINDOW, MAX_REQUEST_WINDOW);
        if chunks == 0 {
            // Nothing seen yet: sizes unknown, the floors with the bytes
            // the window holds uncompressed.
            let bytes = window.clamp(MIN_OUTSTANDING_BYTES, MAX_OUTSTANDING_BYTES);
            return Limits { bytes, ..Limits::FLOOR };
        }
        let mean = (encoded / chunks).max(MIN_MEAN_CHUNK);
        let count = usize::try_from(window / mean).unwrap_or(usize::MAX);
        let chunks = count.clamp(MIN_OUTSTANDING_CHUNKS, MAX_OUTSTANDING_CHUNKS);
        // A small file is one chunk: as many files as chunks, so the
        // count of files never binds before the chunks do.
        let files = count.clamp(MIN_FILES_IN_FLIGHT, MAX_FILES_IN_FLIGHT);
        let ratio_x16 = (decoded.saturating_mul(16) / encoded.max(1)).clamp(16, MAX_RATIO * 16);
        let bytes = (window.saturating_mul(ratio_x16) / 16).clamp(MIN_OUTSTANDING_BYTES, MAX_OUTSTANDING_BYTES);
        Limits { files, chunks, bytes }
    }
}

/// Recent delivery-rate samples kept (their maximum is taken, so a dip
/// while a loss is repaired or the disk commits does not shrink the
/// window).
const RATE_SAMPLES: usize = 8;

/// Shortest interval a rate is measured over: short ones on a fast link
/// measure scheduling noise.
const MIN_INTERVAL: Duration = Duration::from_millis(50);

/// Estimates the bandwidth-delay product from the bytes a connection
/// received and its least round-trip time, and turns it into a request
/// window: twice the BDP, so the pipe stays full while answers to the
/// last requests are still on their way, within the window's floor and
/// ceiling.
///
/// A receiver held back by its window receives one window per round trip,
/// so the next window is twice that: the window doubles each interval (a
/// round trip, like the sender's slow start) until the link, not the
/// window, caps the rate. Queueing delay then
/// lengthens the round trip, not the least one, and the window stops
/// growing.
#[derive(Clone, Debug, Default)]
pub struct WindowEstimate {
    /// Start of the current interval and the bytes received by then.
    mark: Option<(Duration, u64)>,
    /// Bytes per second of recent intervals.
    rates: [u64; RATE_SAMPLES],
    next: usize,
    window: u64,
}

impl WindowEstimate {
    /// An estimate with no samples: the floor.
    pub fn new() -> Self {
        WindowEstimate { window: MIN_REQUEST_WINDOW, ..Default::default() }
    }

    /// The current window, in wire bytes.
    pub fn window(&self) -> u64 {
        self.window
    }

    /// Whether an interval has passed at `now` (so [`WindowEstimate::update`]
    /// is worth the connection's counters).
    pub fn due(&self, now: Duration, rtt: Duration) -> bool {
        self.mark.is_none_or(|(at, _)| now.saturating_sub(at) >= interval(rtt))
    }

    /// Takes a sample at `now` (any fixed origin) of `received`, the bytes
    /// the connection received in all, and `rtt`, its least round-trip
    /// time; returns the new window once an interval has passed.
    pub fn update(&mut self, now: Duration, received: u64, rtt: Duration) -> Option<u64> {
        let Some((at, bytes)) = self.mark else {
            self.mark = Some((now, received));
            return None;
        };
        let elapsed = now.saturating_sub(at);
        if elapsed < interval(rtt) {
            return None;
        }
        let rate = u128::from(received.saturating_sub(bytes)) * 1_000_000 / elapsed.as_micros().max(1);
        self.rates[self.next % RATE_SAMPLES] = u64::try_from(rate).unwrap_or(u64::MAX);
        self.next += 1;
        self.mark = Some((now, received));
        let best = u128::from(self.rates.iter().copied().max().unwrap_or(0));
        let bdp = best * rtt.as_micros() / 1_000_000;
        let window = u64::try_from(bdp.saturating_mul(2)).unwrap_or(u64::MAX);
        self.window = window.clamp(MIN_REQUEST_WINDOW, MAX_REQUEST_WINDOW);
        Some(self.window)
    }
}

/// A rate is measured over a round trip, and no less than [`MIN_INTERVAL`].
fn interval(rtt: Duration) -> Duration {
    rtt.max(MIN_INTERVAL)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    /// Feeds `rate` bytes/s for `intervals` intervals of `rtt` links.
    fn run(estimate: &mut WindowEstimate, start: &mut (Duration, u64), rate: u64, rtt: Duration, intervals: u32) {
        let step = interval(rtt);
        for _ in 0..intervals {
            start.0 += step;
            start.1 += rate * step.as_millis() as u64 / 1000;
            estimate.update(start.0, start.1, rtt);
        }
    }

    #[test]
    fn window_starts_at_the_floor() {
        let mut estimate = WindowEstimate::new();
        assert_eq!(estimate.window(), MIN_REQUEST_WINDOW);
        assert_eq!(estimate.update(Duration::ZERO, 0, 150 * MS), None);
        assert_eq!(estimate.update(10 * MS, 1 << 30, 150 * MS), None, "an interval is a round trip");
    }

    #[test]
    fn window_is_twice_the_bdp() {
        // 100 Mbit/s at 150 ms: BDP 1.875 MB.
        let mut estimate = WindowEstimate::new();
        let mut at = (Duration::ZERO, 0);
        estimate.update(at.0, at.1, 150 * MS);
        run(&mut estimate, &mut at, 12_500_000, 150 * MS, 3);
        assert_eq!(estimate.window(), 3_750_000);
    }

    #[test]
    fn window_grows_with_the_bdp_and_keeps_the_best_recent_rate() {
        let mut estimate = WindowEstimate::new();
        let mut at = (Duration::ZERO, 0);
        estimate.update(at.0, at.1, 150 * MS);
        run(&mut estimate, &mut at, 2_500_000, 150 * MS, 2);
        let slow = estimate.window();
        run(&mut estimate, &mut at, 12_500_000, 150 * MS, 1);
        let fast = estimate.window();
        assert!(fast > slow, "{fast} > {slow}");
        // A dip (a loss repaired, a commit) keeps the window...
        run(&mut estimate, &mut at, 100_000, 150 * MS, RATE_SAMPLES as u32 - 1);
        assert_eq!(estimate.window(), fast);
        // ...until the fast sample is out of the recent ones.
        run(&mut estimate, &mut at, 100_000, 150 * MS, 1);
        assert_eq!(estimate.window(), MIN_REQUEST_WINDOW);
    }

    #[test]
    fn window_stays_between_floor_and_ceiling() {
        let mut estimate = WindowEstimate::new();
        let mut at = (Duration::ZERO, 0);
        estimate.update(at.0, at.1, 150 * MS);
        // Loopback: a fast link with no delay stays at the floor.
        run(&mut estimate, &mut at, 300_000_000, Duration::from_micros(100), 3);
        assert_eq!(estimate.window(), MIN_REQUEST_WINDOW);
        // A peer that claims an absurd rate on a long link: the ceiling.
        let long = Duration::from_secs(10);
        assert_eq!(estimate.update(at.0 + long, u64::MAX, long), Some(MAX_REQUEST_WINDOW));
    }

    #[test]
    fn limits_hold_the_floors_until_sizes_are_known() {
        assert_eq!(Limits::for_window(0, 0, 0, 0), Limits::FLOOR);
        assert_eq!(Limits::for_window(MAX_REQUEST_WINDOW, 0, 0, 0).files, MIN_FILES_IN_FLIGHT);
    }

    #[test]
    fn limits_grow_with_the_window() {
        // Small compressed files: 4 KB on the wire, 15 KB decoded.
        let (chunks, encoded, decoded) = (100, 400_000, 1_500_000);
        let floor = Limits::for_window(MIN_REQUEST_WINDOW, chunks, encoded, decoded);
        assert_eq!(floor.files, (MIN_REQUEST_WINDOW / 4000) as usize);
        let wan = Limits::for_window(3_750_000, chunks, encoded, decoded);
        assert_eq!(wan.files, 937);
        assert_eq!(wan.chunks, 937.max(MIN_OUTSTANDING_CHUNKS));
        assert!(wan.bytes >= MIN_OUTSTANDING_BYTES);
        // Large incompressible chunks: the bytes grow past the floor.
        let big = Limits::for_window(MAX_REQUEST_WINDOW, 10, 10 << 20, 10 << 20);
        assert_eq!(big.bytes, MAX_OUTSTANDING_BYTES);
        assert_eq!(big.chunks, MIN_OUTSTANDING_CHUNKS);
    }

    #[test]
    fn limits_never_pass_the_ceilings() {
        for window in [0, 1, MIN_REQUEST_WINDOW, 3 << 20, MAX_REQUEST_WINDOW, u64::MAX] {
            for (chunks, encoded, decoded) in [(1, 0, u64::MAX), (u64::MAX, 1, 1), (7, 7 << 22, 1), (1, 1, 1)] {
                let limits = Limits::for_window(window, chunks, encoded, decoded);
                assert!((MIN_FILES_IN_FLIGHT..=MAX_FILES_IN_FLIGHT).contains(&limits.files), "{limits:?}");
                assert!((MIN_OUTSTANDING_CHUNKS..=MAX_OUTSTANDING_CHUNKS).contains(&limits.chunks), "{limits:?}");
                assert!((MIN_OUTSTANDING_BYTES..=MAX_OUTSTANDING_BYTES).contains(&limits.bytes), "{limits:?}");
            }
        }
    }
}
