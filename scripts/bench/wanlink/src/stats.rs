//! Counters, the stats file and the signals that stop the router.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use anyhow::{bail, Context, Result};

use crate::link::Params;

/// The counters of one direction; bytes are IP packet bytes.
#[derive(Default)]
pub struct Counters {
    packets_in: AtomicU64,
    bytes_in: AtomicU64,
    dropped_loss: AtomicU64,
    dropped_loss_bytes: AtomicU64,
    dropped_queue: AtomicU64,
    dropped_queue_bytes: AtomicU64,
    packets_out: AtomicU64,
    bytes_out: AtomicU64,
    write_errors: AtomicU64,
    max_packet: AtomicU64,
}

impl Counters {
    pub fn arrived(&self, n: usize) {
        self.packets_in.fetch_add(1, Relaxed);
        self.bytes_in.fetch_add(n as u64, Relaxed);
        self.max_packet.fetch_max(n as u64, Relaxed);
    }
    pub fn lost(&self, n: usize) {
        self.dropped_loss.fetch_add(1, Relaxed);
        self.dropped_loss_bytes.fetch_add(n as u64, Relaxed);
    }
    pub fn queue_dropped(&self, n: usize) {
        self.dropped_queue.fetch_add(1, Relaxed);
        self.dropped_queue_bytes.fetch_add(n as u64, Relaxed);
    }
    pub fn delivered(&self, n: usize) {
        self.packets_out.fetch_add(1, Relaxed);
        self.bytes_out.fetch_add(n as u64, Relaxed);
    }
    pub fn write_failed(&self, _n: usize) {
        self.write_errors.fetch_add(1, Relaxed);
    }

    fn json(&self) -> serde_json::Value {
        let get = |c: &AtomicU64| c.load(Relaxed);
        serde_json::json!({
            "packets_in": get(&self.packets_in),
            "bytes_in": get(&self.bytes_in),
            "dropped_loss": get(&self.dropped_loss),
            "dropped_loss_bytes": get(&self.dropped_loss_bytes),
            "dropped_queue": get(&self.dropped_queue),
            "dropped_queue_bytes": get(&self.dropped_queue_bytes),
            "packets_out": get(&self.packets_out),
            "bytes_out": get(&self.bytes_out),
            "write_errors": get(&self.write_errors),
            "max_packet": get(&self.max_packet),
        })
    }
}

pub struct Signals(libc::sigset_t);

/// Blocks SIGTERM, SIGINT, SIGHUP and SIGUSR1 in the calling thread (and
/// so in every thread it starts afterwards).
pub fn block_signals() -> Result<Signals> {
    // SAFETY: sigset_t is plain data; sigemptyset/sigaddset initialise it and
    // pthread_sigmask reads it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGUSR1] {
            libc::sigaddset(&mut set, sig);
        }
        if libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) != 0 {
            bail!("blocking signals: {}", std::io::Error::last_os_error());
        }
        Ok(Signals(set))
    }
}

/// Writes the stats file every 200 ms and on SIGUSR1; returns after writing
/// it once more on SIGTERM, SIGINT or SIGHUP.
pub fn serve(signals: &Signals, path: &Path, params: &Params, a_to_b: &Counters, b_to_a: &Counters) -> Result<()> {
    let mut seq = 0u64;
    let timeout = libc::timespec { tv_sec: 0, tv_nsec: 200_000_000 };
    loop {
        seq += 1;
        write(path, seq, params, a_to_b, b_to_a)?;
        // SAFETY: waits for one of the blocked signals; both pointers are valid.
        let sig = unsafe { libc::sigtimedwait(&signals.0, std::ptr::null_mut(), &timeout) };
        if sig == libc::SIGTERM || sig == libc::SIGINT || sig == libc::SIGHUP {
            seq += 1;
            return write(path, seq, params, a_to_b, b_to_a);
        }
    }
}

pub fn write(path: &Path, seq: u64, params: &Params, a_to_b: &Counters, b_to_a: &Counters) -> Result<()> {
    let value = serde_json::json!({
        "seq": seq,
        "params": {
            "loss": params.loss,
            "rate_bps": params.rate_bps,
            "delay_ms": params.delay.as_secs_f64() * 1000.0,
            "queue_ms": params.queue.as_secs_f64() * 1000.0,
        },
        "a_to_b": a_to_b.json(),
        "b_to_a": b_to_a.json(),
    });
    // Written aside and renamed, so a reader never sees half a file.
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    std::fs::write(&tmp, value.to_string() + "\n").with_context(|| format!("writing {}", Path::new(&tmp).display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming onto {}", path.display()))
}
