//! A token bucket on a caller's clock.

use std::time::Duration;

use super::Rate;

/// Smallest burst [`Bucket::default_burst`] chooses.
pub const MIN_BURST: u64 = 16 * 1024;

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
pub struct Ticket(Option<f64>);

impl Ticket {
    /// Whether the bytes may go at once, whatever the rate does later.
    pub fn is_free(self) -> bool {
        self.0.is_none()
    }
}

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

    /// Takes `bytes` at `now` and returns their place in line: a waiter
    /// asks [`Bucket::wait_for`] again after a rate change, so its wait
    /// follows the new rate.
    pub fn reserve(&mut self, bytes: u64, now: Duration) -> Ticket {
        self.refill(now);
        if self.rate.bytes_per_sec().is_none() {
            return Ticket(None);
        }
        self.tokens -= bytes as f64;
        // Tokens are back to zero once `-tokens` more have been credited.
        Ticket((self.tokens < 0.0).then_some(self.credited - self.tokens))
    }

    /// How long `ticket`'s holder still waits at `now`: zero once it may send.
    pub fn wait_for(&mut self, ticket: Ticket, now: Duration) -> Duration {
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const KIB: u64 = 1024;
    const MIB: u64 = 1024 * 1024;

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
}
