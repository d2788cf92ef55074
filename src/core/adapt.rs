//! The zstd level of [`Compression::Auto`](crate::codec::Compression::Auto),
//! adapted to the link while a session runs (as `zstd --adapt` does).
//!
//! A fast link wants a cheap level, a slow one a strong level: what matters
//! is which of the two, the encoder or the link, holds the transfer up. The
//! transport measures both over a window and hands them to a
//! [`LevelController`] as an [`Observation`]; the controller is pure
//! arithmetic on those figures, so its decisions are tested without sockets.
//!
//! The test: `load` = link rate / encoder output rate, the share of the
//! encoder's time that keeping the link busy at the current level takes.
//! Well under 1, the encoder idles while the link drains its queue, and a
//! stronger level sends fewer bytes at no cost in time; near 1 the encoder
//! is what the link waits for, and a cheaper level is faster. A link that
//! drains the queue as fast as chunks come (no backlog) is not the
//! bottleneck at all, so the level falls back to the cheapest.

use std::time::Duration;

use crate::codec::DEFAULT_ZSTD_LEVEL;

/// Cheapest level the controller uses: [`DEFAULT_ZSTD_LEVEL`], so an
/// unlimited link costs what level 1 costs.
pub const MIN_LEVEL: i32 = DEFAULT_ZSTD_LEVEL;

/// Strongest level the controller uses.
///
/// Measured on 200 MiB of source text in 64 KiB blocks (`zstd -b1 -e9`):
/// ratio 4.24 at level 1, 4.67 at 5, 4.82 at 6, 4.92 at 9, with speed
/// falling 16x from level 1 to 9. Levels 7-9 add 2% of ratio for half the
/// speed, and on the veth pair at 20 Mbit/s with the machine's two cores
/// busy, a log-append push that climbed to 9 fell behind the link: 49.3 MB
/// in 23.2 s, against 53.4 MB in 20.6 s at level 1; capped at 6 it sent
/// 50.2 MB in 22.1 s. So 6 is the ceiling. Against a fixed level 1 at
/// 20 Mbit/s (`scripts/bench/sweep.sh`, run 20261127-091111) it saved 5%
/// of bytes and time on log-append and 3% on database, but sent 1.5% more
/// on moved-files, where the stronger levels do not compress better, at
/// 40-50% more CPU; at 100 Mbit/s the times were equal.
pub const MAX_LEVEL: i32 = 6;

/// How often the transport takes an [`Observation`]: long enough for a
/// few dozen chunks at 20 Mbit/s, short enough to settle within seconds.
pub const WINDOW: Duration = Duration::from_millis(500);

/// Share of a window the send queue must hold chunks for the link to
/// count as the bottleneck; below it the link keeps up with the encoder.
///
/// Measured on loopback (200 MiB of source text and 100 MiB of random
/// bytes): under `--bwlimit 20Mbit` the queue held chunks for 75-100% of
/// each window; at 100 Mbit/s the text part, bound by per-file round trips
/// rather than the link, showed 10-60%, and staying at level 1 there was
/// right (16.1 s adaptive against 16.9 s at fixed level 1, 23.4 s at 9).
pub const LINK_BOUND_BACKLOG: f64 = 0.5;

/// Least queueing delay (smoothed round trip over the least one) that
/// counts as a standing queue at the bottleneck, on any path.
///
/// On the veth pair capped at 20 Mbit/s (tbf, 100 ms queue) the round trip
/// of a source-tree push rose from under 1 ms to 30-100 ms; uncapped it
/// stayed under 5 ms.
pub const QUEUE_FLOOR: Duration = Duration::from_millis(15);

/// On a long path the queueing delay must also exceed this share of the
/// least round trip; see [`link_bound`].
pub const QUEUE_SHARE: f64 = 0.25;

/// Queueing delay above which a path whose least round trip is `base_rtt`
/// counts as holding a standing queue: the larger of [`QUEUE_FLOOR`] and
/// [`QUEUE_SHARE`] of `base_rtt`.
pub fn queue_threshold(base_rtt: Duration) -> Duration {
    QUEUE_FLOOR.max(base_rtt.mul_f64(QUEUE_SHARE))
}

/// Whether a window was link-bound: the link, not the encoder or the
/// receiver's requests, is what the sender waited on. `base_rtt` is the
/// least round trip seen, `rtt` the window's (the least smoothed round
/// trip sampled in it, so that one loss episode does not count), and
/// `backlog_share` the share of the window the send queue held chunks for
/// the link (a `--bwlimit` cap backs it up; a flow-control stall must not
/// be counted in it).
///
/// A link slowed by the network rather than by a cap never backs up the
/// send queue: the packets queue in the network instead, which shows as a
/// longer round trip. Why the delay threshold is relative on long paths:
/// without any queue the smoothed round trip still moves, by delayed and
/// coalesced ACKs (one per 8 packets, or after the peer's ACK delay when
/// the sender is sparse, i.e. exactly when it is not link-bound) and by
/// loss recovery; on a 150 ms path with 1% loss that exceeds a fixed
/// 15 ms and took a receiver-bound sender for a link-bound one. A real
/// bottleneck's standing queue grows with the path too: buffers are sized
/// near one bandwidth-delay product (a base round trip of queue), and a
/// loss-based sender refills to at least about 30% of it after each back
/// off (CUBIC keeps 0.7 of its window). A quarter of the base round trip
/// sits under that and well over the noise, while the 15 ms floor keeps
/// the short-path rule that was measured above.
pub fn link_bound(base_rtt: Duration, rtt: Duration, backlog_share: f64) -> bool {
    backlog_share >= LINK_BOUND_BACKLOG || rtt.saturating_sub(base_rtt) > queue_threshold(base_rtt)
}

/// Raise the level when the encoder's load is below this...
pub const RAISE_BELOW: f64 = 0.5;

/// ...and lower it above this. The gap between the two is the hysteresis;
/// both were set on the simulated level table of this module's tests, and
/// under `--bwlimit 20Mbit` the benchmark above settled at levels 6-9 with
/// 150.4 MB and 61.4 s, against 61.0-61.4 s for the best fixed levels (6, 9)
/// and 63.1 s for level 1;
/// a level known to load the encoder past [`LOWER_ABOVE`] is not retried
/// while that figure is fresh ([`MEMORY_WINDOWS`]).
pub const LOWER_ABOVE: f64 = 0.85;

/// Least input:output ratio worth raising the level for: incompressible
/// data gains nothing from a stronger level but its cost.
pub const MIN_RATIO: f64 = 1.05;

/// Least input in a window for its figures to count: a few small chunks
/// say little about the encoder's speed.
pub const MIN_SAMPLE_BYTES: u64 = 256 * 1024;

/// Windows for which a level's measured output rate is trusted when
/// deciding whether to move to it (the data changes as the session goes).
pub const MEMORY_WINDOWS: u32 = 20;

/// What one window showed.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Observation {
    /// Bytes given to the encoder.
    pub input: u64,
    /// Bytes it produced (the raw bytes, where it kept a chunk raw).
    pub output: u64,
    /// Time it spent encoding them.
    pub encode_time: Duration,
    /// The window's length.
    pub window: Duration,
    /// How long in the window the send queue held chunks for the link.
    pub backlog: Duration,
    /// Payload bytes per second the link drained while it had a backlog
    /// (the `--bwlimit` rate, or lower if the link itself is slower).
    pub link_rate: f64,
    /// Least round trip seen on the path (zero: unknown).
    pub base_rtt: Duration,
    /// The window's round trip (zero: unknown); see [`link_bound`].
    pub rtt: Duration,
}

/// What the controller made of an [`Observation`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Too little input in the window to judge.
    Unjudged,
    /// The link keeps up: the cheapest level is the fastest.
    LinkIdle,
    /// The encoder has time to spare: a stronger level.
    Raise,
    /// The encoder holds the link up: a cheaper level.
    Lower,
    /// In balance, at a bound, or the next level is known to cost too much.
    Hold,
}

/// Picks the zstd level window by window; see the module doc.
#[derive(Clone, Debug)]
pub struct LevelController {
    level: i32,
    highest: i32,
    /// Per level from [`MIN_LEVEL`]: the last measured output rate (bytes
    /// out per second of encoding) and its age in windows.
    rates: Vec<Option<(f64, u32)>>,
}

impl Default for LevelController {
    fn default() -> Self {
        Self::new()
    }
}

impl LevelController {
    /// Starts at [`MIN_LEVEL`]: until a window shows otherwise, the link is
    /// presumed fast.
    pub fn new() -> Self {
        LevelController {
            level: MIN_LEVEL,
            highest: MIN_LEVEL,
            rates: vec![None; (MAX_LEVEL - MIN_LEVEL + 1) as usize],
        }
    }

    /// The level to encode at.
    pub fn level(&self) -> i32 {
        self.level
    }

    /// The highest level used so far.
    pub fn highest(&self) -> i32 {
        self.highest
    }

    fn slot(&mut self, level: i32) -> Option<&mut Option<(f64, u32)>> {
        self.rates.get_mut(usize::try_from(level - MIN_LEVEL).ok()?)
    }

    /// Takes one window's figures, moves the level at most one step, and
    /// returns what it decided.
    pub fn observe(&mut self, obs: &Observation) -> Step {
        for (_, age) in self.rates.iter_mut().flatten() {
            *age = age.saturating_add(1);
        }
        let step = self.judge(obs);
        match step {
            Step::Raise => self.level += 1,
            Step::Lower | Step::LinkIdle => self.level -= 1,
            Step::Unjudged | Step::Hold => {}
        }
        self.level = self.level.clamp(MIN_LEVEL, MAX_LEVEL);
        self.highest = self.highest.max(self.level);
        step
    }

    fn judge(&mut self, obs: &Observation) -> Step {
        let level = self.level;
        let encode = obs.encode_time.as_secs_f64();
        let measured = obs.input >= MIN_SAMPLE_BYTES && obs.output > 0 && encode > 0.0;
        let out_rate = obs.output as f64 / encode;
        if measured {
            // Kept even when the link is not the bottleneck: an encoder
            // too slow to build a backlog is what that level costs.
            if let Some(slot) = self.slot(level) {
                *slot = Some((out_rate, 0));
            }
        }
        let window = obs.window.as_secs_f64();
        let share = if window > 0.0 { obs.backlog.as_secs_f64() / window } else { 0.0 };
        if window <= 0.0 || !link_bound(obs.base_rtt, obs.rtt, share) {
            return if level > MIN_LEVEL { Step::LinkIdle } else { Step::Hold };
        }
        if !measured || obs.link_rate <= 0.0 {
            return Step::Unjudged;
        }
        let load = obs.link_rate / out_rate;
        if load > LOWER_ABOVE {
            return if level > MIN_LEVEL { Step::Lower } else { Step::Hold };
        }
        let ratio = obs.input as f64 / obs.output as f64;
        if load >= RAISE_BELOW || ratio < MIN_RATIO || level >= MAX_LEVEL {
            return Step::Hold;
        }
        // A stronger level lately seen too slow for this link stays off.
        let known = self.slot(level + 1).and_then(|slot| *slot);
        match known {
            Some((rate, age)) if age <= MEMORY_WINDOWS && obs.link_rate / rate > LOWER_ABOVE => Step::Hold,
            _ => Step::Raise,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MB: f64 = 1e6;

    /// A window in which the link drained `link` MB/s, the encoder turned
    /// `input` MB into `input / ratio` MB in `encode` seconds, and the
    /// queue was backlogged for `backlog` of the 0.5 s.
    fn window(link: f64, input: f64, ratio: f64, encode: f64, backlog: f64) -> Observation {
        Observation {
            input: (input * MB) as u64,
            output: (input * MB / ratio) as u64,
            encode_time: Duration::from_secs_f64(encode),
            window: Duration::from_millis(500),
            backlog: Duration::from_secs_f64(backlog * 0.5),
            link_rate: link * MB,
            ..Observation::default()
        }
    }

    /// Encoder figures per level, shaped like zstd's on source text:
    /// (input MB/s, ratio).
    fn encoder(level: i32) -> (f64, f64) {
        let speed = [400.0, 300.0, 220.0, 180.0, 120.0, 60.0, 40.0, 30.0, 25.0];
        let ratio = [4.24, 4.27, 4.43, 4.44, 4.67, 4.82, 4.86, 4.90, 4.92];
        let i = (level - MIN_LEVEL) as usize;
        (speed[i], ratio[i])
    }

    /// Runs the controller against a simulated link of `link` MB/s: each
    /// window the encoder works as long as the link needs to drain what it
    /// produces (or the whole window, if it cannot keep up).
    fn simulate(link: f64, windows: usize) -> (LevelController, Vec<i32>) {
        let mut controller = LevelController::new();
        let mut levels = Vec::new();
        for _ in 0..windows {
            let (speed, ratio) = encoder(controller.level());
            // Output rate the encoder could sustain; the transfer runs at the
            // slower of it and the link.
            let out_rate = speed / ratio;
            let rate = out_rate.min(link);
            let busy = (rate / out_rate).min(1.0) * 0.5;
            let input = rate * ratio * 0.5;
            let backlog = if link < out_rate { 1.0 } else { 0.2 };
            controller.observe(&window(link, input, ratio, busy, backlog));
            levels.push(controller.level());
        }
        (controller, levels)
    }

    const BASE_150: Duration = Duration::from_millis(150);

    /// Smoothed round trips of a 150 ms path with 1% loss and no queue:
    /// loss recovery and delayed ACKs lift each window's by 0-35 ms
    /// (spread evenly over that range in a scrambled order, so every run
    /// sees the same swings and the same share above the queue floor).
    fn lossy_rtt(window: usize) -> Duration {
        BASE_150 + Duration::from_micros((window as u64 * 7919) % 35_000)
    }

    /// A 150 ms path with a standing queue of 60-150 ms at its bottleneck.
    fn queued_rtt(window: usize) -> Duration {
        BASE_150 + Duration::from_millis(60 + (window as u64 * 37) % 90)
    }

    /// Runs the controller on a path of `base` round trip and `link` MB/s
    /// whose sender has no cap (so the send queue never backs up: a queue
    /// forms in the network, if anywhere) and is asked for at most `demand`
    /// MB/s of input by the receiver; `rtt` gives each window's round trip.
    fn simulate_path(link: f64, demand: f64, windows: usize, rtt: impl Fn(usize) -> Duration) -> Vec<i32> {
        let mut controller = LevelController::new();
        let mut levels = Vec::new();
        for i in 0..windows {
            let (speed, ratio) = encoder(controller.level());
            let out_rate = speed / ratio;
            let rate = out_rate.min(link).min(demand / ratio);
            let input = rate * ratio * 0.5;
            let busy = (rate / out_rate).min(1.0) * 0.5;
            let obs = Observation { base_rtt: BASE_150, rtt: rtt(i), ..window(rate, input, ratio, busy, 0.0) };
            controller.observe(&obs);
            levels.push(controller.level());
        }
        levels
    }

    #[test]
    fn link_bound_on_short_and_long_paths() {
        let ms = Duration::from_millis;
        // Short path (veth, loopback): the 15 ms floor decides.
        let lan = Duration::from_micros(300);
        assert!(!link_bound(lan, ms(5), 0.1));
        assert!(link_bound(lan, ms(30), 0.1));
        // 40 ms: a quarter is 10 ms, so the floor still decides.
        assert_eq!(queue_threshold(ms(40)), QUEUE_FLOOR);
        assert!(!link_bound(ms(40), ms(54), 0.1));
        assert!(link_bound(ms(40), ms(60), 0.1));
        // 150 ms with loss: swings of 30 ms are noise, 50 ms a queue.
        assert_eq!(queue_threshold(BASE_150), Duration::from_micros(37_500));
        assert!(!link_bound(BASE_150, ms(180), 0.1));
        assert!(link_bound(BASE_150, ms(200), 0.1));
        // A backed-up send queue (a cap) is link-bound at any round trip.
        assert!(link_bound(BASE_150, BASE_150, LINK_BOUND_BACKLOG));
        assert!(!link_bound(BASE_150, BASE_150, LINK_BOUND_BACKLOG - 0.01));
        // Unknown round trips (zero) leave the backlog to decide.
        assert!(!link_bound(Duration::ZERO, Duration::ZERO, 0.2));
    }

    #[test]
    fn long_lossy_path_does_not_raise_the_level_of_a_sender_the_link_does_not_hold_up() {
        // The receiver asks for 1 MB/s on a 20 Mbit/s (2.5 MB/s), 150 ms,
        // 1% loss path: the link idles and the round trip only swings.
        let levels = simulate_path(2.5, 1.0, 40, lossy_rtt);
        assert!(levels.iter().all(|&l| l == MIN_LEVEL), "{levels:?}");
        // A fixed 15 ms over the base would have called most of these
        // windows link-bound.
        let swings = (0..40).filter(|&i| lossy_rtt(i) - BASE_150 > QUEUE_FLOOR).count();
        assert!(swings > 20, "{swings}");
    }

    #[test]
    fn long_path_whose_link_is_the_bottleneck_still_climbs() {
        // The same path, the sender now held up by the link: a standing
        // queue of 60-150 ms in the network, none in the send queue.
        let levels = simulate_path(2.5, f64::INFINITY, 40, queued_rtt);
        assert!(levels[20..].iter().all(|&l| l == MAX_LEVEL), "{levels:?}");
        // And on a 100 Mbit/s link it settles where the encoder keeps up.
        let levels = simulate_path(12.5, f64::INFINITY, 60, queued_rtt);
        assert!(levels[30..].iter().all(|&l| (5..=6).contains(&l)), "{levels:?}");
    }

    #[test]
    fn slow_link_climbs_and_settles() {
        // 20 Mbit/s: 2.5 MB/s. Level 9 turns out 25 / 4.92 = 5 MB/s, a load
        // of 0.5: the controller climbs to the top and stays.
        let (controller, levels) = simulate(2.5, 40);
        assert_eq!(controller.level(), MAX_LEVEL, "{levels:?}");
        assert!(levels[20..].iter().all(|&l| l == MAX_LEVEL), "{levels:?}");
    }

    #[test]
    fn medium_link_stops_below_what_it_cannot_feed() {
        // 12.5 MB/s (100 Mbit/s): level 6 makes 12.4 MB/s, a load of 1.0;
        // level 5 makes 25.7, a load of 0.49. It must settle at 5 or 6 and
        // not flap between 5 and 7 forever.
        let (_, levels) = simulate(12.5, 60);
        let tail = &levels[30..];
        assert!(tail.iter().all(|&l| (5..=6).contains(&l)), "{levels:?}");
        let moves = tail.windows(2).filter(|w| w[0] != w[1]).count();
        assert!(moves <= 2, "flapping: {levels:?}");
    }

    #[test]
    fn fast_link_stays_cheapest() {
        // 1 GB/s: the encoder can never keep it busy.
        let (controller, levels) = simulate(1000.0, 20);
        assert_eq!(controller.highest(), MIN_LEVEL, "{levels:?}");
    }

    #[test]
    fn no_backlog_falls_back_to_the_cheapest() {
        let mut controller = LevelController::new();
        for _ in 0..5 {
            assert_eq!(controller.observe(&window(2.5, 5.0, 4.0, 0.05, 1.0)), Step::Raise);
        }
        assert_eq!(controller.level(), 6);
        // The receiver, say, is now slower than the link: the queue empties.
        for expected in (MIN_LEVEL..6).rev() {
            assert_eq!(controller.observe(&window(2.5, 5.0, 4.0, 0.05, 0.1)), Step::LinkIdle);
            assert_eq!(controller.level(), expected);
        }
        assert_eq!(controller.observe(&window(2.5, 5.0, 4.0, 0.05, 0.1)), Step::Hold);
        assert_eq!(controller.highest(), 6);
    }

    #[test]
    fn busy_encoder_lowers_then_holds() {
        let mut controller = LevelController::new();
        controller.observe(&window(2.5, 5.0, 4.0, 0.05, 1.0));
        controller.observe(&window(2.5, 5.0, 4.0, 0.05, 1.0));
        assert_eq!(controller.level(), 3);
        // Level 3 now makes 1 MB of output per 0.45 s: 2.2 MB/s, load 1.1.
        assert_eq!(controller.observe(&window(2.5, 4.0, 4.0, 0.45, 1.0)), Step::Lower);
        assert_eq!(controller.level(), 2);
        // Level 2 has room (load 0.25), but level 3 was just seen too slow.
        assert_eq!(controller.observe(&window(2.5, 5.0, 4.0, 0.125, 1.0)), Step::Hold);
        assert_eq!(controller.level(), 2);
        // Once that figure is stale, level 3 is tried again.
        for _ in 0..MEMORY_WINDOWS {
            controller.observe(&window(2.5, 5.0, 4.0, 0.125, 1.0));
        }
        assert_eq!(controller.level(), 3);
        // At the cheapest level, a busy encoder can only hold.
        let mut controller = LevelController::new();
        assert_eq!(controller.observe(&window(100.0, 50.0, 4.0, 0.5, 1.0)), Step::Hold);
        assert_eq!(controller.level(), MIN_LEVEL);
    }

    #[test]
    fn incompressible_data_and_thin_windows_hold() {
        let mut controller = LevelController::new();
        // Ratio 1.0: a stronger level would buy nothing.
        assert_eq!(controller.observe(&window(2.5, 5.0, 1.0, 0.01, 1.0)), Step::Hold);
        // Too little input to judge, or nothing measured.
        assert_eq!(controller.observe(&window(2.5, 0.1, 4.0, 0.001, 1.0)), Step::Unjudged);
        assert_eq!(controller.observe(&window(2.5, 5.0, 4.0, 0.0, 1.0)), Step::Unjudged);
        assert_eq!(controller.observe(&Observation::default()), Step::Hold);
        assert_eq!(controller.level(), MIN_LEVEL);
    }

    #[test]
    fn level_stays_in_bounds() {
        let mut controller = LevelController::new();
        for _ in 0..50 {
            controller.observe(&window(0.1, 5.0, 4.0, 0.001, 1.0));
        }
        assert_eq!(controller.level(), MAX_LEVEL);
        for _ in 0..50 {
            controller.observe(&window(0.1, 5.0, 4.0, 0.001, 0.0));
        }
        assert_eq!(controller.level(), MIN_LEVEL);
        assert_eq!(controller.highest(), MAX_LEVEL);
    }
}
