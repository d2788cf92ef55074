//! The controller on a simulated path: a bottleneck of fixed rate with a
//! tail-drop queue, a fixed delay each way, random loss, a receiver that
//! acknowledges every [`ACK_EVERY`] packets or after [`ACK_DELAY`] (and at
//! once on a gap), and a sender that paces as the transport does (1.25 x
//! window / smoothed round trip) and declares a packet lost three packets or
//! 9/8 of a round trip after it.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashSet};
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use super::*;

const PACKET: u64 = 1400;
const ACK_EVERY: u32 = 8;
const ACK_DELAY: Duration = Duration::from_millis(25);

#[derive(Clone, Copy, Debug)]
struct Path {
    rate_mbit: f64,
    rtt: Duration,
    loss: f64,
    queue: Duration,
}

impl Path {
    fn new(rate_mbit: f64, rtt_ms: u64, loss: f64) -> Self {
        let rtt = Duration::from_millis(rtt_ms);
        // About one path's capacity of buffer, at least 25 ms.
        Path { rate_mbit, rtt, loss, queue: rtt.max(Duration::from_millis(25)) }
    }

    fn serialisation(&self, bytes: u64) -> Duration {
        Duration::from_secs_f64(bytes as f64 * 8.0 / (self.rate_mbit * 1e6))
    }
}

#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Event {
    /// The sender may send again (pacing).
    Send,
    /// Packet `pn` reaches the receiver.
    Arrive(u64),
    /// The receiver's acknowledgement timer.
    AckTimer,
    /// An acknowledgement of these packets reaches the sender.
    Ack(Vec<u64>),
}

struct Sent {
    at: Instant,
    bytes: u64,
    data: u64,
}

/// What one simulated run showed.
#[derive(Debug)]
struct Outcome {
    /// Distinct payload delivered / what the link could carry in the time.
    link_use: f64,
    /// Bytes entering the bottleneck / bytes leaving it.
    egress_ratio: f64,
    queue_drops: u64,
}

struct Sim {
    path: Path,
    start: Instant,
    now: Instant,
    events: BinaryHeap<Reverse<(Instant, u64, Event)>>,
    seq: u64,
    rng: SmallRng,
    cc: Controller,
    // sender
    next_pn: u64,
    next_data: u64,
    unacked: BTreeMap<u64, Sent>,
    retransmit: Vec<u64>,
    in_flight: u64,
    srtt: Option<Duration>,
    next_send: Instant,
    send_scheduled: bool,
    // link
    link_free: Instant,
    bytes_in: u64,
    bytes_out: u64,
    queue_drops: u64,
    // receiver
    received: HashSet<u64>,
    delivered_payload: u64,
    expected_pn: u64,
    to_ack: Vec<u64>,
    timer_set: bool,
    traced: u128,
}

impl Sim {
    fn new(path: Path, seed: u64) -> Self {
        let start = Instant::now();
        Sim {
            path,
            start,
            now: start,
            events: BinaryHeap::new(),
            seq: 0,
            rng: SmallRng::seed_from_u64(seed),
            cc: Controller::new(PACKET as u16),
            next_pn: 0,
            next_data: 0,
            unacked: BTreeMap::new(),
            retransmit: Vec::new(),
            in_flight: 0,
            srtt: None,
            next_send: start,
            send_scheduled: false,
            link_free: start,
            bytes_in: 0,
            bytes_out: 0,
            queue_drops: 0,
            received: HashSet::new(),
            delivered_payload: 0,
            expected_pn: 0,
            to_ack: Vec::new(),
            timer_set: false,
            traced: 0,
        }
    }

    fn schedule(&mut self, at: Instant, event: Event) {
        self.seq += 1;
        self.events.push(Reverse((at, self.seq, event)));
    }

    fn run(mut self, duration: Duration) -> Outcome {
        self.try_send();
        self.run_until(self.start + duration);
        let capacity = self.path.rate_mbit * 1e6 / 8.0 * duration.as_secs_f64();
        Outcome {
            link_use: self.delivered_payload as f64 / capacity,
            egress_ratio: self.bytes_in as f64 / self.bytes_out.max(1) as f64,
            queue_drops: self.queue_drops,
        }
    }

    fn run_until(&mut self, end: Instant) {
        while let Some(Reverse((at, _, event))) = self.events.pop() {
            if at > end {
                break;
            }
            self.now = at;
            self.trace();
            match event {
                Event::Send => {
                    self.send_scheduled = false;
                    self.try_send();
                }
                Event::Arrive(pn) => self.arrive(pn),
                Event::AckTimer => {
                    self.timer_set = false;
                    self.send_ack();
                }
                Event::Ack(pns) => self.on_ack(&pns),
            }
        }
    }

    /// With SIM_TRACE set, the controller's state every 100 ms.
    fn trace(&mut self) {
        let tenth = (self.now - self.start).as_millis() / 100;
        if std::env::var_os("SIM_TRACE").is_some() && tenth != self.traced {
            self.traced = tenth;
            eprintln!(
                "t={:.1} {:?} w={} bw={:.0} drops={} inflight={}",
                (self.now - self.start).as_secs_f64(),
                self.cc.phase(),
                self.cc.window(),
                self.cc.bandwidth(),
                self.queue_drops,
                self.in_flight
            );
        }
    }

    fn try_send(&mut self) {
        while self.in_flight + PACKET <= self.cc.window() {
            if self.now < self.next_send {
                if !self.send_scheduled {
                    self.send_scheduled = true;
                    self.schedule(self.next_send, Event::Send);
                }
                return;
            }
            let data = self.retransmit.pop().unwrap_or_else(|| {
                self.next_data += 1;
                self.next_data
            });
            let pn = self.next_pn;
            self.next_pn += 1;
            self.unacked.insert(pn, Sent { at: self.now, bytes: PACKET, data });
            self.in_flight += PACKET;
            self.cc.on_sent(self.now);
            self.enter_link(pn);
            // The transport's pacer: 1.25 x window per smoothed round trip.
            let srtt = self.srtt.unwrap_or(Duration::from_millis(100));
            let rate = 1.25 * self.cc.window() as f64 / srtt.as_secs_f64();
            self.next_send = self.now + Duration::from_secs_f64(PACKET as f64 / rate);
        }
    }

    fn enter_link(&mut self, pn: u64) {
        self.bytes_in += PACKET;
        if self.rng.random_bool(self.path.loss) {
            return;
        }
        let wait = self.link_free.saturating_duration_since(self.now);
        if wait > self.path.queue {
            self.queue_drops += 1;
            return;
        }
        let departs = self.link_free.max(self.now) + self.path.serialisation(PACKET);
        self.link_free = departs;
        self.bytes_out += PACKET;
        self.schedule(departs + self.path.rtt / 2, Event::Arrive(pn));
    }

    fn arrive(&mut self, pn: u64) {
        let data = self.unacked.get(&pn).map(|sent| sent.data);
        // A packet declared lost may still arrive; count its data once.
        if let Some(data) = data {
            if self.received.insert(data) {
                self.delivered_payload += PACKET;
            }
        }
        let gap = pn > self.expected_pn;
        self.expected_pn = self.expected_pn.max(pn + 1);
        self.to_ack.push(pn);
        if gap || self.to_ack.len() as u32 >= ACK_EVERY {
            self.send_ack();
        } else if !self.timer_set {
            self.timer_set = true;
            self.schedule(self.now + ACK_DELAY, Event::AckTimer);
        }
    }

    fn send_ack(&mut self) {
        if self.to_ack.is_empty() {
            return;
        }
        let pns = std::mem::take(&mut self.to_ack);
        self.schedule(self.now + self.path.rtt / 2, Event::Ack(pns));
    }

    fn on_ack(&mut self, pns: &[u64]) {
        let mut largest = None;
        for pn in pns {
            if let Some(sent) = self.unacked.remove(pn) {
                self.in_flight -= sent.bytes;
                self.cc.on_ack(self.now, sent.at, sent.bytes, false);
                let rtt = self.now - sent.at;
                self.srtt = Some(self.srtt.map_or(rtt, |s| (s * 7 + rtt) / 8));
                largest = largest.max(Some(*pn));
            }
        }
        self.cc.on_end_acks(self.in_flight);
        if let Some(largest) = largest {
            self.detect_loss(largest);
        }
        self.try_send();
    }

    fn detect_loss(&mut self, largest: u64) {
        let srtt = self.srtt.unwrap_or_default();
        let too_old = self.now.checked_sub(srtt.mul_f64(9.0 / 8.0));
        let lost: Vec<u64> = self
            .unacked
            .range(..largest)
            .filter(|(pn, sent)| **pn + 3 <= largest || too_old.is_some_and(|old| sent.at < old))
            .map(|(pn, _)| *pn)
            .collect();
        let mut lost_bytes = 0;
        for pn in lost {
            if let Some(sent) = self.unacked.remove(&pn) {
                self.in_flight -= sent.bytes;
                lost_bytes += sent.bytes;
                if !self.received.contains(&sent.data) {
                    self.retransmit.push(sent.data);
                }
            }
        }
        if lost_bytes > 0 {
            self.cc.on_congestion(false, lost_bytes);
        }
    }
}

fn run(path: Path, seconds: u64) -> Outcome {
    let outcome = Sim::new(path, 7).run(Duration::from_secs(seconds));
    eprintln!("{path:?}: {outcome:?}");
    outcome
}

/// The profiles: whatever the delay and random loss, the link fills
/// and the bytes sent are what arrives plus the loss.
#[test]
fn fills_long_lossy_paths_without_flooding_them() {
    for (rate, rtt, loss) in
        [(20.0, 150, 0.01), (100.0, 150, 0.01), (20.0, 40, 0.001), (100.0, 40, 0.001), (20.0, 1, 0.0), (100.0, 1, 0.0)]
    {
        let outcome = run(Path::new(rate, rtt, loss), 30);
        assert!(outcome.link_use >= 0.90, "{rate} Mbit/s, {rtt} ms, {loss}: {outcome:?}");
        // A buffer of the path's capacity holds startup's overshoot.
        assert!(outcome.queue_drops <= 100, "{rate} Mbit/s, {rtt} ms, {loss}: {outcome:?}");
        assert!(outcome.egress_ratio <= 1.0 + loss + 0.02, "{rate} Mbit/s, {rtt} ms, {loss}: {outcome:?}");
    }
}

/// A buffer far smaller than the path's capacity overflows on probes and in
/// startup; the controller backs off instead of losing a share of its
/// packets there all along.
#[test]
fn a_shallow_buffer_costs_little() {
    for rtt in [40, 150] {
        let path = Path { queue: Duration::from_millis(rtt / 8), ..Path::new(100.0, rtt, 0.001) };
        let outcome = run(path, 30);
        assert!(outcome.link_use >= 0.85, "{path:?}: {outcome:?}");
        assert!(outcome.egress_ratio <= 1.05, "{path:?}: {outcome:?}");
    }
}

/// Random loss of a few percent, far beyond the profiles, still leaves the
/// window at the path's capacity.
#[test]
fn random_loss_does_not_shrink_the_window() {
    let path = Path::new(20.0, 100, 0.03);
    let outcome = run(path, 30);
    assert!(outcome.link_use >= 0.85, "{outcome:?}");
}

#[test]
fn startup_doubles_then_cruises_at_the_path_capacity() {
    let path = Path::new(20.0, 100, 0.0);
    let mut sim = Sim::new(path, 1);
    sim.try_send();
    sim.run_until(sim.start + Duration::from_secs(5));
    assert_eq!(sim.cc.phase(), Phase::Cruise);
    let capacity = 20e6 / 8.0 * 0.1;
    let window = sim.cc.window() as f64;
    assert!(window >= capacity && window <= capacity * 1.6, "window {window} against capacity {capacity}");
    let bandwidth = sim.cc.bandwidth();
    assert!((bandwidth - 20e6 / 8.0).abs() < 20e6 / 8.0 * 0.1, "bandwidth {bandwidth}");
}

#[test]
fn persistent_congestion_starts_over_from_the_smallest_window() {
    let mut cc = Controller::new(1200);
    let t0 = Instant::now();
    for i in 0..100u64 {
        let sent = t0 + Duration::from_millis(i);
        cc.on_sent(sent);
        cc.on_ack(sent + Duration::from_millis(50), sent, 1200, false);
    }
    assert!(cc.window() > INITIAL_WINDOW);
    cc.on_congestion(true, 12_000);
    assert_eq!(cc.window(), MIN_WINDOW_PACKETS * 1200);
    assert_eq!(cc.phase(), Phase::Startup);
    assert_eq!(cc.min_rtt(), Some(Duration::from_millis(50)));
}

#[test]
fn app_limited_acks_neither_grow_the_window_nor_lower_the_rate() {
    let mut cc = Controller::new(1200);
    let t0 = Instant::now();
    for i in 0..1000u64 {
        let sent = t0 + Duration::from_millis(i);
        cc.on_sent(sent);
        cc.on_ack(sent + Duration::from_millis(20), sent, 1200, true);
        cc.on_end_acks(1200);
    }
    assert_eq!(cc.window(), INITIAL_WINDOW);
}
