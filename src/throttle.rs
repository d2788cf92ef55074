//! Bandwidth limits: the rates, timetables, windows and token bucket of the
//! core's [`pacing`](xfer_core::pacing) (pure logic, times passed in), and the
//! async [`Limiter`] and local clock of the edge ([`crate::net::limiter`]).

pub use crate::net::limiter::{acquire_all, local_time_now, Limiter};
pub use xfer_core::pacing::{Bucket, Flow, LocalTime, Rate, ThrottleError, Ticket, Timetable, Window, MIN_BURST};
