//! The pacing edge: the async [`Limiter`] that paces writes with the
//! core's token bucket on tokio's clock, and the local wall-clock time that
//! timetables and windows are read at.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::Notify;

use xfer_core::pacing::{Bucket, LocalTime, Rate, Ticket};

/// The local wall-clock time now, in the system's time zone (UTC if it
/// cannot be determined).
pub fn local_time_now() -> LocalTime {
    let now = jiff::ZonedDateTime::now();
    LocalTime {
        weekday: now.weekday().to_monday_zero_offset().unsigned_abs(),
        minute: u16::from(now.hour().unsigned_abs()) * 60 + u16::from(now.minute().unsigned_abs()),
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
    #[cfg(feature = "internals")]
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
        if ticket.is_free() {
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

    const KIB: u64 = 1024;
    const MIB: u64 = 1024 * 1024;

    #[test]
    fn local_time_now_is_in_range() {
        let now = local_time_now();
        assert!(now.weekday < 7 && now.minute < 1440, "{now:?}");
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
