//! A transfer's schedule: the weekly window it may run in and the
//! timetable of its bandwidth limit, read against a clock. A window that
//! closes stops the transfer at a commit point, as a cancel does.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{TransferError, TransferOptions};
use crate::net::limiter::{local_time_now, Limiter};
use crate::pacing::{Flow, LocalTime, Timetable, Window};

/// Reads the local time of the week; `None` when it cannot be read (the
/// window then counts as closed, the timetable stays as it is).
pub type Clock = Arc<dyn Fn() -> Option<LocalTime> + Send + Sync>;

/// How often a running transfer re-reads the clock: reading it is cheap,
/// and a window that closes should stop the transfer within a second.
const RECHECK: Duration = Duration::from_secs(1);

/// When a transfer may run and how fast; by default always, unlimited.
#[derive(Clone, Default)]
pub struct Schedule {
    /// The window the transfer runs in; `None` is always open.
    pub window: Option<Window>,
    /// Outside the window, wait for it to open (else fail at once with
    /// [`TransferError::OutsideWindow`]).
    pub wait: bool,
    /// The bandwidth limit's timetable (it replaces the fixed limit).
    pub timetable: Option<Timetable>,
    /// The clock; `None` is the system's local time.
    pub clock: Option<Clock>,
}

impl fmt::Debug for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Schedule")
            .field("window", &self.window)
            .field("wait", &self.wait)
            .field("timetable", &self.timetable)
            .finish_non_exhaustive()
    }
}

impl Schedule {
    fn now(&self) -> Option<LocalTime> {
        match &self.clock {
            Some(clock) => clock(),
            None => Some(local_time_now()),
        }
    }

    fn is_open(&self, at: Option<LocalTime>) -> bool {
        self.window.as_ref().is_none_or(|window| at.is_some_and(|at| window.is_open(at)))
    }

    /// Waits (if asked) for the window to open.
    async fn until_open(&self) -> Result<(), TransferError> {
        let at = self.now();
        if self.is_open(at) {
            return Ok(());
        }
        if !self.wait {
            let opens_in_min = self.window.as_ref().zip(at).and_then(|(window, at)| window.minutes_until_open(at));
            return Err(TransferError::OutsideWindow { opens_in_min });
        }
        while !self.is_open(self.now()) {
            tokio::time::sleep(RECHECK).await;
        }
        Ok(())
    }
}

/// Runs `transfer` within `options.schedule`: after its window opens, at
/// the timetable's rate, and stopped when the window closes (then
/// [`TransferError::WindowClosed`] instead of [`TransferError::Cancelled`]).
pub(super) async fn scheduled<F, Fut>(
    options: &TransferOptions,
    direction: Flow,
    transfer: F,
) -> Result<super::Report, TransferError>
where
    F: FnOnce(TransferOptions) -> Fut,
    Fut: std::future::Future<Output = Result<super::Report, TransferError>>,
{
    let schedule = &options.schedule;
    if schedule.window.is_none() && schedule.timetable.is_none() {
        return transfer(options.clone()).await;
    }
    schedule.until_open().await?;
    let mut options = options.clone();
    if let (Some(timetable), Some(at)) = (&schedule.timetable, schedule.now()) {
        options.bwlimit = Limiter::new(timetable.rate_at(at, direction));
    }
    let (parent, cancel) = (options.cancel.clone(), options.cancel.child_token());
    options.cancel = cancel.clone();
    let (task, closed) = watch(schedule.clone(), options.bwlimit.clone(), direction, (parent, cancel));
    let result = transfer(options).await;
    task.abort();
    match result {
        Err(TransferError::Cancelled { report }) if closed.load(Ordering::SeqCst) => {
            Err(TransferError::WindowClosed { report })
        }
        other => other,
    }
}

/// Keeps `limiter` to the timetable and cancels the transfer's token when
/// the window closes; returns the task and whether the window stopped the
/// transfer (a cancel of the caller's token that came first keeps its
/// meaning).
fn watch(
    schedule: Schedule,
    limiter: Limiter,
    direction: Flow,
    (parent, cancel): (CancellationToken, CancellationToken),
) -> (tokio::task::JoinHandle<()>, Arc<AtomicBool>) {
    let fired = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&fired);
    let task = tokio::spawn(async move {
        loop {
            tokio::time::sleep(RECHECK).await;
            // An unreadable clock changes nothing while running.
            let Some(at) = schedule.now() else { continue };
            if let Some(timetable) = &schedule.timetable {
                limiter.set_rate(timetable.rate_at(at, direction));
            }
            if schedule.window.as_ref().is_some_and(|w| !w.is_open(at)) {
                flag.store(!parent.is_cancelled(), Ordering::SeqCst);
                cancel.cancel();
                return;
            }
        }
    });
    (task, fired)
}
