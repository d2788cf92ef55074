//! xfer-wanlink: an emulated WAN between two network namespaces.
//!
//! Two TUN devices, one inside each namespace; every IP packet one side
//! sends is read by this process, put through one direction of the link
//! (loss, rate with a bounded queue, delay; see link.rs) and written into
//! the other device when due. It forwards packets, so every protocol sees
//! the same path: TCP and QUIC alike, handshakes and retransmits included.
//!
//!     xfer-wanlink --ns-a xfb-c --dev-a xfb-c0 --ns-b xfb-s --dev-b xfb-s0 \
//!         --rtt-ms 150 --loss 0.01 --rate-mbit 20 --stats /run/wan.json
//!
//! Prints `ready` once both devices exist (still down and without
//! addresses: the caller configures them). Runs until SIGTERM or SIGINT;
//! writes the stats file every 200 ms, on SIGUSR1 and at exit.

mod link;
mod stats;
mod tun;

use std::collections::VecDeque;
use std::fs::File;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;

use link::{Direction, Params, Verdict};
use stats::Counters;

/// Emulated WAN router: forwards IP packets between two TUN devices in two
/// network namespaces with delay, random loss and a rate cap (run as root).
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Network namespace of side a (must exist: `ip netns add NAME`).
    #[arg(long)]
    ns_a: String,
    /// TUN device to create in namespace a.
    #[arg(long)]
    dev_a: String,
    /// Network namespace of side b.
    #[arg(long)]
    ns_b: String,
    /// TUN device to create in namespace b.
    #[arg(long)]
    dev_b: String,
    /// Round-trip time added to the path; each direction delays by half.
    #[arg(long, default_value_t = 0.0)]
    rtt_ms: f64,
    /// Probability that a packet is lost, each direction, 0 to 1.
    #[arg(long, default_value_t = 0.0)]
    loss: f64,
    /// Rate of each direction in Mbit/s of IP packet bytes; 0: unlimited.
    #[arg(long, default_value_t = 0.0)]
    rate_mbit: f64,
    /// Longest wait for the link before a packet is dropped (default: max(RTT, 25 ms)).
    #[arg(long)]
    queue_ms: Option<f64>,
    /// Seed of the loss pattern (each direction derives its own stream).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// MTU of both devices.
    #[arg(long, default_value_t = 1500)]
    mtu: u32,
    /// JSON stats file, rewritten every 200 ms and at exit.
    #[arg(long)]
    stats: PathBuf,
}

/// Upper bound of the bytes waiting in one direction's delay line. The link
/// itself bounds it to (queue + delay) x rate; this bounds the unlimited rate.
const DELAY_LINE_BYTES: usize = 64 << 20;
/// Largest packet a TUN read can return; anything above the MTU shows up in
/// `max_packet` instead of being cut.
const READ_BUFFER: usize = 65_536;

fn main() {
    if let Err(err) = run() {
        eprintln!("xfer-wanlink: {err:#}");
        std::process::exit(2);
    }
}

fn millis(ms: f64, what: &str) -> Result<Duration> {
    if !ms.is_finite() || ms < 0.0 {
        bail!("--{what} {ms}: give a number of milliseconds >= 0");
    }
    Ok(Duration::from_secs_f64(ms / 1000.0))
}

fn params(args: &Args) -> Result<Params> {
    if !(0.0..=1.0).contains(&args.loss) {
        bail!("--loss {}: give a probability from 0 to 1 (0.01 is 1%)", args.loss);
    }
    if !args.rate_mbit.is_finite() || args.rate_mbit < 0.0 {
        bail!("--rate-mbit {}: give a rate >= 0 (0: unlimited)", args.rate_mbit);
    }
    let rtt = millis(args.rtt_ms, "rtt-ms")?;
    let queue = match args.queue_ms {
        Some(ms) => millis(ms, "queue-ms")?,
        None => Params::default_queue(rtt),
    };
    Ok(Params { loss: args.loss, rate_bps: (args.rate_mbit * 1e6).round() as u64, delay: rtt / 2, queue })
}

fn run() -> Result<()> {
    let args = Args::parse();
    let params = params(&args)?;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("run as root: creating TUN devices in other network namespaces needs CAP_NET_ADMIN");
    }
    // Block the signals before any thread starts, so every thread inherits
    // the mask and only the main thread's sigtimedwait sees them.
    let signals = stats::block_signals()?;
    let dev_a = tun::open_in(&args.ns_a, &args.dev_a, args.mtu)?;
    let dev_b = tun::open_in(&args.ns_b, &args.dev_b, args.mtu)?;
    let a_to_b = Arc::new(Counters::default());
    let b_to_a = Arc::new(Counters::default());
    let (a_read, a_write) = (dev_a.try_clone().context("dup of device a")?, dev_a);
    let (b_read, b_write) = (dev_b.try_clone().context("dup of device b")?, dev_b);
    forward("a_to_b", a_read, b_write, Direction::new(params, args.seed, 0), a_to_b.clone())?;
    forward("b_to_a", b_read, a_write, Direction::new(params, args.seed, 1), b_to_a.clone())?;
    // A stats file that cannot be written fails now, before `ready`.
    stats::write(&args.stats, 0, &params, &a_to_b, &b_to_a)?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "ready").and_then(|()| out.flush()).context("writing `ready` to stdout")?;
    drop(out);
    stats::serve(&signals, &args.stats, &params, &a_to_b, &b_to_a)
}

/// The delay line of one direction: packets accepted by the link, in
/// delivery order (delivery times never decrease).
#[derive(Default)]
struct DelayLine {
    queue: Mutex<Line>,
    due: Condvar,
}

#[derive(Default)]
struct Line {
    packets: VecDeque<(Instant, Vec<u8>)>,
    bytes: usize,
}

/// Starts the reader and the writer of one direction.
fn forward(
    name: &'static str,
    mut from: File,
    mut to: File,
    mut link: Direction,
    counters: Arc<Counters>,
) -> Result<()> {
    let line = Arc::new(DelayLine::default());
    let reader_line = line.clone();
    let reader_counters = counters.clone();
    thread::Builder::new()
        .name(format!("{name}-read"))
        .spawn(move || {
            realtime(name);
            let mut buf = vec![0u8; READ_BUFFER];
            loop {
                let n = match from.read(&mut buf) {
                    Ok(n) => n,
                    Err(err) if err.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(err) => {
                        eprintln!("xfer-wanlink: reading a packet ({name}): {err}; stopping");
                        std::process::exit(1);
                    }
                };
                let now = Instant::now();
                reader_counters.arrived(n);
                match link.offer(n, now) {
                    Verdict::DropLoss => reader_counters.lost(n),
                    Verdict::DropQueue => reader_counters.queue_dropped(n),
                    Verdict::DeliverAt(at) => {
                        let mut q = reader_line.queue.lock().unwrap_or_else(|p| p.into_inner());
                        if q.bytes + n > DELAY_LINE_BYTES {
                            drop(q);
                            reader_counters.queue_dropped(n);
                            continue;
                        }
                        let was_empty = q.packets.is_empty();
                        q.packets.push_back((at, buf[..n].to_vec()));
                        q.bytes += n;
                        drop(q);
                        // A writer with packets waits for the front one only;
                        // a packet behind it changes nothing.
                        if was_empty {
                            reader_line.due.notify_one();
                        }
                    }
                }
            }
        })
        .with_context(|| format!("starting the {name} reader thread"))?;
    thread::Builder::new()
        .name(format!("{name}-write"))
        .spawn(move || {
            // Wake-ups as precise as the kernel allows: at 100 Mbit a full
            // packet leaves every 120 us, and the default 50 us slack is a
            // large part of that.
            realtime(name);
            // SAFETY: PR_SET_TIMERSLACK only changes this thread's timer slack.
            unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong, 0, 0, 0) };
            let mut batch = Vec::new();
            loop {
                let mut q = line.queue.lock().unwrap_or_else(|p| p.into_inner());
                loop {
                    let now = Instant::now();
                    match q.packets.front() {
                        None => q = line.due.wait(q).unwrap_or_else(|p| p.into_inner()),
                        Some(&(at, _)) if at > now => {
                            q = line.due.wait_timeout(q, at - now).unwrap_or_else(|p| p.into_inner()).0
                        }
                        Some(_) => break,
                    }
                }
                // Every packet due now goes out in one batch.
                let now = Instant::now();
                while q.packets.front().is_some_and(|&(at, _)| at <= now) {
                    if let Some((_, packet)) = q.packets.pop_front() {
                        q.bytes -= packet.len();
                        batch.push(packet);
                    }
                }
                drop(q);
                for packet in batch.drain(..) {
                    match to.write(&packet) {
                        // One write is one packet: a TUN write is never split.
                        Ok(n) if n == packet.len() => counters.delivered(n),
                        // A device that is down refuses packets; count and go on.
                        _ => counters.write_failed(packet.len()),
                    }
                }
            }
        })
        .with_context(|| format!("starting the {name} writer thread"))?;
    Ok(())
}

/// Real-time priority for the calling forwarding thread: on a machine busy
/// with builds or with the tools under test, a thread that waits for a core
/// adds milliseconds of delay the profile does not have. The threads block
/// between packets, so they cannot starve the machine (and the kernel's RT
/// throttling caps them anyway). Without the privilege it goes on, saying so.
fn realtime(name: &str) {
    let param = libc::sched_param { sched_priority: 10 };
    // SAFETY: sets the policy of the calling thread only; `param` is valid.
    let rc = unsafe { libc::pthread_setschedparam(libc::pthread_self(), libc::SCHED_FIFO, &param) };
    if rc != 0 {
        let err = std::io::Error::from_raw_os_error(rc);
        eprintln!("xfer-wanlink: {name}: no real-time priority ({err}); delays may stretch on a busy machine");
    }
}
