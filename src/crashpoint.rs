//! Crash points: named places in a transfer where a test can make the
//! process die on the spot, as `kill -9` would, to check that every
//! interruption leaves the destination and both state databases
//! consistent (tests/crash.rs, scripts/crash.sh).
//!
//! Inert unless the environment names a point when the process first
//! passes one:
//!
//! - `XFER_CRASH_AT=NAME[:N]` aborts the process the Nth time (first by
//!   default) it passes NAME. Nothing is unwound or flushed: temporaries,
//!   half-written files and open database transactions stay as the kernel
//!   holds them, and the peer hears nothing.
//! - `XFER_CRASH_TRACE=FILE` appends the name of every point passed to FILE,
//!   one per line, so a test can check the order of the durable steps.
//! - `XFER_TEST_IDLE_TIMEOUT_MS=MS` shortens the QUIC idle timeout this side
//!   offers (the shorter offer wins), so the survivor of a crash notices
//!   within seconds instead of a minute.
//! - `XFER_TEST_NO_ZSTD_STREAM=1` makes this side's senders not offer the
//!   zstd stream codec (`FEATURE_ZSTD_STREAM`), so a benchmark can measure
//!   the per-chunk codecs with the same build.
//!
//! Unset, a point costs one atomic load. Without the `fault-injection`
//! cargo feature (off by default; the integration tests turn it on) none
//! of this exists: a point is an empty function and the environment is
//! never read, so no variable can abort a host process.

#[cfg(feature = "fault-injection")]
pub(crate) use injected::{hit, idle_timeout, zstd_stream};

/// Passes the crash point `name`: nothing happens in this build.
#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub(crate) fn hit(_name: &str) {}

/// The idle timeout a test asked for: none in this build.
#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub(crate) fn idle_timeout() -> Option<std::time::Duration> {
    None
}

/// Whether senders offer the zstd stream codec: always in this build.
#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub(crate) fn zstd_stream() -> bool {
    true
}

#[cfg(feature = "fault-injection")]
mod injected {

    use std::fs::File;
    use std::io::Write;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;
    use std::time::Duration;

    struct Armed {
        /// The point to crash at, and on which pass (1-based).
        at: Option<(String, u64)>,
        passes: AtomicU64,
        trace: Option<File>,
    }

    static ARMED: OnceLock<Option<Armed>> = OnceLock::new();

    fn from_env() -> Option<Armed> {
        let at = std::env::var("XFER_CRASH_AT").ok().filter(|v| !v.is_empty()).map(|spec| match spec.split_once(':') {
            // A malformed count crashes at the first pass rather than never:
            // a test that meant to crash must not pass by accident.
            Some((name, nth)) => (name.to_string(), nth.parse().unwrap_or(1)),
            None => (spec, 1),
        });
        let trace = std::env::var_os("XFER_CRASH_TRACE")
            .filter(|v| !v.is_empty())
            .and_then(|path| File::options().create(true).append(true).open(path).ok());
        (at.is_some() || trace.is_some()).then(|| Armed { at, passes: AtomicU64::new(0), trace })
    }

    /// Passes the crash point `name`: aborts the process if the environment
    /// says so (see the module docs), else does nothing.
    pub(crate) fn hit(name: &str) {
        let Some(armed) = ARMED.get_or_init(from_env) else { return };
        if let Some(mut trace) = armed.trace.as_ref() {
            // One write per line: O_APPEND keeps lines whole across threads.
            let _ = trace.write_all(format!("{name}\n").as_bytes());
        }
        if let Some((at, nth)) = &armed.at {
            if at == name && armed.passes.fetch_add(1, Ordering::Relaxed) + 1 == *nth {
                std::process::abort();
            }
        }
    }

    /// The idle timeout a test asked this process to offer, if any.
    pub(crate) fn idle_timeout() -> Option<Duration> {
        static IDLE: OnceLock<Option<Duration>> = OnceLock::new();
        *IDLE.get_or_init(|| {
            let ms = std::env::var("XFER_TEST_IDLE_TIMEOUT_MS").ok()?.parse::<u64>().ok()?;
            Some(Duration::from_millis(ms.max(1)))
        })
    }

    /// Whether senders offer the zstd stream codec: unless a test or
    /// benchmark turned it off.
    pub(crate) fn zstd_stream() -> bool {
        static ON: OnceLock<bool> = OnceLock::new();
        *ON.get_or_init(|| std::env::var_os("XFER_TEST_NO_ZSTD_STREAM").is_none_or(|v| v.is_empty()))
    }
}
