//! One direction of the emulated link, without I/O: the caller reads a
//! packet, stamps it with an `Instant` and asks [`Direction::offer`] what
//! becomes of it.
//!
//! The rules, in order, per packet:
//! 1. random loss: dropped with probability `loss`, independently of every
//!    other packet (a seeded PRNG, so one seed gives one loss pattern);
//! 2. rate: the link serialises one packet at a time, `bytes * 8 / rate`
//!    seconds each; a packet that would wait longer than `queue` for the link
//!    is dropped (tail drop on a queue bounded in time);
//! 3. delay: the packet arrives `delay` after its last bit left the queue.
//!
//! Delivery times never decrease, so the caller's delay line is a FIFO.

use std::time::{Duration, Instant};

/// The settings of one direction.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Params {
    /// Probability that a packet is lost, 0.0..=1.0.
    pub loss: f64,
    /// Link rate in bits per second; 0 means no rate limit (and no queue).
    pub rate_bps: u64,
    /// One-way propagation delay, applied after serialisation.
    pub delay: Duration,
    /// Longest wait for the link before a packet is dropped.
    pub queue: Duration,
}

impl Params {
    /// The default queue limit: `max(rtt, 25 ms)` worth of the rate, about one
    /// bandwidth-delay product, so a window-based sender can fill the link
    /// while its queue stays bounded.
    pub fn default_queue(rtt: Duration) -> Duration {
        rtt.max(Duration::from_millis(25))
    }
}

/// What becomes of one packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    DropLoss,
    DropQueue,
    DeliverAt(Instant),
}

/// A small, fast PRNG with a fixed algorithm (SplitMix64), so a seed gives
/// the same loss pattern on every machine and every build.
#[derive(Clone, Debug)]
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1) with 53 bits.
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// The schedule of one direction.
#[derive(Clone, Debug)]
pub struct Direction {
    params: Params,
    rng: SplitMix64,
    /// When the link finishes serialising the last accepted packet.
    link_free: Option<Instant>,
}

impl Direction {
    /// `stream` tells the directions of one seed apart (0: a to b, 1: b to a).
    pub fn new(params: Params, seed: u64, stream: u64) -> Self {
        // Two mixing rounds keep the streams of nearby seeds unrelated.
        let mut mix = SplitMix64(seed ^ stream.wrapping_mul(0xD1B5_4A32_D192_ED03));
        let start = mix.next() ^ mix.next().rotate_left(17);
        Direction { params, rng: SplitMix64(start), link_free: None }
    }

    /// Decides the fate of a packet of `bytes` arriving at `now`. Arrival
    /// times must not decrease between calls.
    pub fn offer(&mut self, bytes: usize, now: Instant) -> Verdict {
        // One draw per packet whatever happens next, so the loss pattern
        // depends only on the packet's index, not on the queue's state.
        let lost = self.rng.unit() < self.params.loss;
        if lost {
            return Verdict::DropLoss;
        }
        if self.params.rate_bps == 0 {
            return Verdict::DeliverAt(now + self.params.delay);
        }
        let start = match self.link_free {
            Some(free) if free > now => free,
            _ => now,
        };
        if start - now > self.params.queue {
            return Verdict::DropQueue;
        }
        let done = start + serialisation(bytes, self.params.rate_bps);
        self.link_free = Some(done);
        Verdict::DeliverAt(done + self.params.delay)
    }
}

/// Time to put `bytes` on a link of `rate_bps` (rounded up to the nanosecond).
pub fn serialisation(bytes: usize, rate_bps: u64) -> Duration {
    let bits = bytes as u128 * 8 * 1_000_000_000;
    let nanos = bits.div_ceil(rate_bps.max(1) as u128);
    Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(loss: f64, mbit: u64, delay_ms: u64, queue_ms: u64) -> Params {
        Params {
            loss,
            rate_bps: mbit * 1_000_000,
            delay: Duration::from_millis(delay_ms),
            queue: Duration::from_millis(queue_ms),
        }
    }

    fn at(t0: Instant, micros: u64) -> Instant {
        t0 + Duration::from_micros(micros)
    }

    #[test]
    fn serialisation_time_is_bits_over_rate() {
        assert_eq!(serialisation(1500, 100_000_000), Duration::from_micros(120));
        assert_eq!(serialisation(1500, 20_000_000), Duration::from_micros(600));
        assert_eq!(serialisation(1, 3), Duration::from_nanos(2_666_666_667));
    }

    #[test]
    fn idle_link_delivers_after_serialisation_plus_delay() {
        let t0 = Instant::now();
        let mut d = Direction::new(params(0.0, 20, 75, 150), 1, 0);
        assert_eq!(d.offer(1500, t0), Verdict::DeliverAt(t0 + Duration::from_micros(600) + Duration::from_millis(75)));
        // Long after: the link is idle again.
        let t1 = at(t0, 1_000_000);
        assert_eq!(d.offer(100, t1), Verdict::DeliverAt(t1 + Duration::from_micros(40) + Duration::from_millis(75)));
    }

    #[test]
    fn back_to_back_packets_queue_behind_each_other() {
        let t0 = Instant::now();
        let mut d = Direction::new(params(0.0, 20, 10, 150), 1, 0);
        let mut last = None;
        for i in 1..=10u64 {
            match d.offer(1500, t0) {
                Verdict::DeliverAt(t) => {
                    assert_eq!(t, t0 + Duration::from_micros(600 * i) + Duration::from_millis(10));
                    assert!(last.is_none_or(|l| l <= t), "delivery times must not decrease");
                    last = Some(t);
                }
                other => panic!("packet {i}: {other:?}"),
            }
        }
    }

    #[test]
    fn tail_drop_when_wait_exceeds_queue_limit() {
        let t0 = Instant::now();
        // 1500-byte packets at 20 Mbit: 600 us each; a 3 ms queue holds the
        // packet in service plus 5 waiting (waits 0, 0.6, ..., 3.0 ms).
        let mut d = Direction::new(params(0.0, 20, 0, 3), 1, 0);
        let verdicts: Vec<_> = (0..8).map(|_| d.offer(1500, t0)).collect();
        assert!(verdicts[..6].iter().all(|v| matches!(v, Verdict::DeliverAt(_))), "{verdicts:?}");
        assert_eq!(&verdicts[6..], &[Verdict::DropQueue, Verdict::DropQueue]);
        // Once the queue drains by one packet, one more fits.
        assert!(matches!(d.offer(1500, at(t0, 600)), Verdict::DeliverAt(_)));
        assert_eq!(d.offer(1500, at(t0, 600)), Verdict::DropQueue);
    }

    #[test]
    fn rate_is_held_over_a_saturating_stream() {
        // Offer 3x the rate for one second: what is delivered within the
        // second is the rate (plus at most the queue), the rest is dropped.
        let t0 = Instant::now();
        let rate = 100_000_000u64;
        let mut d = Direction::new(params(0.0, 100, 0, 25), 7, 0);
        let mut delivered_in_1s = 0u64;
        for i in 0..25_000u64 {
            if let Verdict::DeliverAt(t) = d.offer(1500, at(t0, i * 40)) {
                if t <= at(t0, 1_000_000) {
                    delivered_in_1s += 1500 * 8;
                }
            }
        }
        let ratio = delivered_in_1s as f64 / rate as f64;
        assert!((0.99..=1.0).contains(&ratio), "delivered {ratio} of the rate");
    }

    #[test]
    fn loss_rate_matches_probability_and_seed_is_reproducible() {
        let t0 = Instant::now();
        let run = |seed, stream| {
            let mut d = Direction::new(params(0.01, 0, 0, 0), seed, stream);
            (0..200_000).map(|_| d.offer(100, t0) == Verdict::DropLoss).collect::<Vec<_>>()
        };
        let a = run(1, 0);
        let lost = a.iter().filter(|&&x| x).count() as f64 / a.len() as f64;
        // 200,000 draws at p = 0.01: sd of the rate is 0.00022; 5 sd.
        assert!((lost - 0.01).abs() < 0.0011, "loss {lost}");
        assert_eq!(a, run(1, 0), "one seed, one pattern");
        assert_ne!(a, run(2, 0), "another seed, another pattern");
        assert_ne!(a, run(1, 1), "the two directions differ");
    }

    #[test]
    fn loss_draw_does_not_depend_on_queue_state() {
        // The same seed gives the same lost indices with and without a rate cap.
        let t0 = Instant::now();
        let lost = |mbit| {
            let mut d = Direction::new(params(0.05, mbit, 0, 1), 3, 0);
            (0..5000).map(|_| d.offer(1500, t0) == Verdict::DropLoss).collect::<Vec<_>>()
        };
        assert_eq!(lost(0), lost(20));
    }

    #[test]
    fn no_loss_never_drops_and_full_loss_always_drops() {
        let t0 = Instant::now();
        let mut none = Direction::new(params(0.0, 0, 5, 0), 9, 0);
        let mut all = Direction::new(params(1.0, 0, 5, 0), 9, 0);
        for _ in 0..10_000 {
            assert_eq!(none.offer(60, t0), Verdict::DeliverAt(t0 + Duration::from_millis(5)));
            assert_eq!(all.offer(60, t0), Verdict::DropLoss);
        }
    }

    #[test]
    fn delivery_times_are_monotone_under_random_arrivals() {
        let t0 = Instant::now();
        let mut rng = SplitMix64(42);
        let mut d = Direction::new(params(0.02, 20, 20, 40), 5, 1);
        let mut now = t0;
        let mut last = t0;
        for _ in 0..50_000 {
            now += Duration::from_micros(rng.next() % 1200);
            let size = 40 + (rng.next() % 1461) as usize;
            if let Verdict::DeliverAt(t) = d.offer(size, now) {
                assert!(t >= last && t >= now + Duration::from_millis(20));
                // Never later than arrival + queue limit + own serialisation + delay.
                assert!(
                    t <= now + Duration::from_millis(40) + serialisation(size, 20_000_000) + Duration::from_millis(20)
                );
                last = t;
            }
        }
    }

    #[test]
    fn default_queue_is_rtt_but_at_least_25ms() {
        assert_eq!(Params::default_queue(Duration::ZERO), Duration::from_millis(25));
        assert_eq!(Params::default_queue(Duration::from_millis(150)), Duration::from_millis(150));
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            /// Whatever the arrivals: deliveries keep their order, each
            /// packet waits at least its delay plus its own serialisation and
            /// at most the queue limit on top, and no window of time carries
            /// more than the rate (plus the one packet in service).
            #[test]
            fn schedule_respects_rate_queue_and_delay(
                gaps in proptest::collection::vec((0u64..2_000, 20usize..=1500), 1..400),
                mbit in 1u64..200,
                delay_ms in 0u64..100,
                queue_ms in 0u64..50,
                loss in 0.0f64..0.2,
                seed: u64,
            ) {
                let p = params(loss, mbit, delay_ms, queue_ms);
                let mut d = Direction::new(p, seed, 0);
                let t0 = Instant::now();
                let mut now = t0;
                let mut done: Vec<(Instant, usize)> = Vec::new();
                for (gap, size) in gaps {
                    now += Duration::from_micros(gap);
                    if let Verdict::DeliverAt(t) = d.offer(size, now) {
                        let ser = serialisation(size, p.rate_bps);
                        prop_assert!(t >= now + p.delay + ser);
                        prop_assert!(t <= now + p.queue + ser + p.delay);
                        if let Some(&(last, _)) = done.last() {
                            prop_assert!(t >= last + ser, "overlapping serialisation");
                        }
                        done.push((t, size));
                    }
                }
                // Bits delivered in (done[i] - ser_i, done[j]] fit in that span at the rate.
                for i in 0..done.len() {
                    let mut bits = 0u128;
                    for j in i..done.len() {
                        bits += done[j].1 as u128 * 8;
                        let span = done[j].0 - done[i].0 + serialisation(done[i].1, p.rate_bps);
                        prop_assert!(bits * 1_000_000_000 <= span.as_nanos() * p.rate_bps as u128 + p.rate_bps as u128);
                    }
                }
            }
        }
    }
}
