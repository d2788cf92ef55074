//! Pacing as pure logic: bandwidth rates, weekly timetables and time
//! windows, and a token bucket.
//!
//! Every time comes from the caller (a [`LocalTime`] in the week, or a
//! [`Duration`](std::time::Duration) on a monotonic clock), so schedules
//! and pacing are tested with a fake clock; the edge reads the clocks and
//! sleeps.

mod bucket;
mod rate;
mod week;

use thiserror::Error;

pub use bucket::{Bucket, Ticket, MIN_BURST};
pub use rate::{Rate, SLOW_RATE};
pub use week::{Flow, LocalTime, Timetable, Window};

/// A rate, a timetable or a window could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum ThrottleError {
    /// Not a rate.
    #[error("\"{0}\" is not a rate: use e.g. 500K, 10M, 1.5G (bytes/s), 100 (KiB/s) or 100Mbit (bits/s), or off")]
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
