//! How many bytes may be in flight: the congestion controller the transport
//! uses by default, as pure arithmetic on send, acknowledgement and loss
//! events (the transport passes the clock in).
//!
//! Offsite links are long and lose packets for reasons other than a full
//! queue. A controller that cuts its window at every loss (CUBIC, NewReno)
//! fills a 150 ms link with 1% loss to a few percent: each loss halves what
//! took many round trips to grow. This one models the path instead, as BBR
//! does: the bottleneck's delivery rate (the most delivered per unit of time
//! over recent rounds) and the round trip without queues (the least seen),
//! and keeps their product in flight whatever the random loss.
//!
//! The transport's pacer sends at 1.25 x window / smoothed round trip, so the
//! window is the one control: it caps what is in flight and sets the pace.
//! BBR keeps twice the path's capacity in flight and paces separately; with
//! one knob that floods the bottleneck's queue, and every packet dropped
//! there is sent again at the user's expense. So the window is what the path
//! holds plus a short queue ([`QUEUE_RTT_SHARE`] of the round trip and
//! [`QUEUE_ALLOWANCE`]), never a multiple of it.
//!
//! - **Startup.** The window grows by what is acknowledged (doubling each
//!   round trip) until a round's least round trip grows (a queue is forming:
//!   the path is full), the delivery rate stops growing, or a round loses
//!   more than [`OVERFLOW_LOSS`] of its bytes.
//! - **Cruise.** The window follows the model; one round in
//!   [`PROBE_EVERY`] adds [`PROBE_GAIN`] to find bandwidth that has freed up.
//! - **Loss.** Random loss changes nothing. A round losing more than
//!   [`OVERFLOW_LOSS`] (a queue overflowing: the model overshot a shallow
//!   buffer) caps the window at [`OVERFLOW_BACKOFF`] of what was in flight,
//!   for [`OVERFLOW_ROUNDS`] rounds, without probing.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Share of the least round trip the window allows as queue at the
/// bottleneck, on top of [`QUEUE_ALLOWANCE`]: room for acknowledgements that
/// arrive late or in bursts, small enough that a buffer of a fraction of the
/// path's capacity holds it.
pub const QUEUE_RTT_SHARE: f64 = 0.125;

/// Queueing time the window allows whatever the round trip: on a short path
/// (loopback, a LAN) the receiver's batching and the delayed acknowledgements
/// add milliseconds the least round trip does not show.
pub const QUEUE_ALLOWANCE: Duration = Duration::from_millis(4);

/// Packets the window allows beyond the model: the peer acknowledges every
/// few packets, so that many may have arrived and still count as in flight.
pub const ACK_ALLOWANCE_PACKETS: u64 = 16;

/// Window gain during a probing round.
pub const PROBE_GAIN: f64 = 1.25;

/// One round in this many probes for more bandwidth.
pub const PROBE_EVERY: u64 = 8;

/// Rounds over which the delivery rate's maximum is taken: longer than
/// [`PROBE_EVERY`], so the last probe's figure is always in view.
pub const BANDWIDTH_ROUNDS: u64 = 10;

/// Share of a round's bytes lost above which the loss counts as a queue
/// overflowing rather than noise on the line. Random loss of a few percent
/// stays under it.
pub const OVERFLOW_LOSS: f64 = 0.05;

/// Packets a round must lose before its loss share counts: on a short path a
/// round is a handful of packets, and one loss there says nothing.
pub const OVERFLOW_MIN_PACKETS: u64 = 4;

/// What the window keeps of the bytes in flight when a queue overflowed.
pub const OVERFLOW_BACKOFF: f64 = 0.85;

/// Rounds the window stays capped after an overflow.
pub const OVERFLOW_ROUNDS: u64 = 16;

/// Startup's window is at most this many times what the path delivered in
/// a round trip: the pace of doubling, and at most one path's capacity of
/// queue when it fills.
pub const STARTUP_GAIN: f64 = 2.0;

/// Startup grows the window by this many times what is acknowledged. The
/// transport's pacer lets the send rate grow only 1.25 times the window
/// per round trip, so growth by what is acknowledged doubles the window
/// but not the pace (about 1.6 times per round trip); twice that brings the
/// pace to doubling, and [`STARTUP_GAIN`] still bounds the window by what
/// the path delivered.
pub const STARTUP_ACK_GAIN: u64 = 2;

/// Acknowledgements of a round needed before its round trips can show a
/// queue (see `Controller::queue_forming`).
pub const QUEUE_SAMPLES: u32 = 8;

/// Startup ends when the delivery rate grew less than this factor...
pub const STARTUP_GROWTH: f64 = 1.25;

/// ...over this many rounds.
pub const STARTUP_FLAT_ROUNDS: u32 = 3;

/// Window before anything is known, in bytes: ten full packets, as TCP and
/// QUIC start.
pub const INITIAL_WINDOW: u64 = 14_720;

/// Smallest window, in packets.
pub const MIN_WINDOW_PACKETS: u64 = 4;

/// Largest window: far beyond any path's capacity, and small enough that
/// the pacer keeps pacing (it gives up on windows past 4 GiB).
pub const MAX_WINDOW: u64 = 1 << 30;

/// Send records kept for rate samples: every packet in flight has one, and a
/// window of [`MAX_WINDOW`] is under a million packets; past this the oldest
/// go (their acknowledgements then give no sample).
const MAX_SEND_RECORDS: usize = 1 << 20;

/// The controller's phase.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Growing the window each round until the path is full.
    Startup,
    /// Keeping the model's window in flight.
    Cruise,
}

/// The path as seen at one send: what a sample's acknowledgement measures
/// against.
#[derive(Clone, Copy, Debug)]
struct SendRecord {
    sent: Instant,
    /// Bytes acknowledged before this send.
    delivered: u64,
    /// When the last of them was acknowledged.
    delivered_at: Instant,
    /// Send time of the newest packet acknowledged by then.
    first_sent: Instant,
}

/// The largest delivery rate seen over the last [`BANDWIDTH_ROUNDS`] rounds.
#[derive(Clone, Debug, Default)]
struct MaxRate {
    /// (round, the round's largest rate in bytes per second), oldest first.
    rounds: VecDeque<(u64, f64)>,
}

impl MaxRate {
    fn update(&mut self, round: u64, rate: f64) {
        match self.rounds.back_mut() {
            Some((last, best)) if *last == round => *best = best.max(rate),
            _ => self.rounds.push_back((round, rate)),
        }
        while self.rounds.front().is_some_and(|(r, _)| r + BANDWIDTH_ROUNDS < round) {
            self.rounds.pop_front();
        }
    }

    fn get(&self) -> f64 {
        self.rounds.iter().map(|(_, rate)| *rate).fold(0.0, f64::max)
    }
}

/// Figures of the round under way.
#[derive(Clone, Copy, Debug, Default)]
struct RoundTally {
    acked: u64,
    lost: u64,
    lost_packets: u64,
    least_rtt: Option<Duration>,
    samples: u32,
    app_limited: bool,
}

/// The window of one connection's path. See the module documentation.
#[derive(Clone, Debug)]
pub struct Controller {
    mtu: u64,
    window: u64,
    phase: Phase,
    in_flight: u64,
    delivered: u64,
    delivered_at: Option<Instant>,
    first_sent: Option<Instant>,
    records: VecDeque<SendRecord>,
    round: u64,
    /// A round ends when a packet sent after this many bytes were delivered
    /// is acknowledged.
    round_ends_at: u64,
    tally: RoundTally,
    min_rtt: Option<Duration>,
    bandwidth: MaxRate,
    /// Startup's best rate and the rounds since it grew by
    /// [`STARTUP_GROWTH`].
    startup_best: f64,
    startup_flat: u32,
    cruise_from: u64,
    /// After an overflow: the cap and the round it lifts.
    overflow_cap: Option<(u64, u64)>,
}

impl Controller {
    /// A controller for a path whose packets carry `mtu` bytes.
    pub fn new(mtu: u16) -> Self {
        Controller {
            mtu: u64::from(mtu),
            window: INITIAL_WINDOW,
            phase: Phase::Startup,
            in_flight: 0,
            delivered: 0,
            delivered_at: None,
            first_sent: None,
            records: VecDeque::new(),
            round: 0,
            round_ends_at: 0,
            tally: RoundTally::default(),
            min_rtt: None,
            bandwidth: MaxRate::default(),
            startup_best: 0.0,
            startup_flat: 0,
            cruise_from: 0,
            overflow_cap: None,
        }
    }

    /// Bytes that may be in flight.
    pub fn window(&self) -> u64 {
        self.window
    }

    /// The phase the controller is in.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// The delivery rate the model holds, in bytes per second.
    pub fn bandwidth(&self) -> f64 {
        self.bandwidth.get()
    }

    /// The least round trip seen.
    pub fn min_rtt(&self) -> Option<Duration> {
        self.min_rtt
    }

    /// The path's packet size changed.
    pub fn set_mtu(&mut self, mtu: u16) {
        self.mtu = u64::from(mtu);
        self.window = self.window.max(self.min_window());
    }

    /// A packet (or a batch sent at once) left at `now`.
    pub fn on_sent(&mut self, now: Instant) {
        let delivered_at = *self.delivered_at.get_or_insert(now);
        let first_sent = *self.first_sent.get_or_insert(now);
        if self.records.back().is_some_and(|last| last.sent >= now) {
            // A batch sent at one instant shares one record.
            return;
        }
        if self.records.len() >= MAX_SEND_RECORDS {
            self.records.pop_front();
        }
        self.records.push_back(SendRecord { sent: now, delivered: self.delivered, delivered_at, first_sent });
    }

    /// `bytes` sent at `sent` were acknowledged at `now`; `app_limited` says
    /// the sender had less to send than the window allowed.
    pub fn on_ack(&mut self, now: Instant, sent: Instant, bytes: u64, app_limited: bool) {
        self.delivered += bytes;
        self.delivered_at = Some(now);
        self.first_sent = Some(self.first_sent.map_or(sent, |first| first.max(sent)));
        self.tally.acked += bytes;
        self.tally.app_limited |= app_limited;
        let rtt = now.saturating_duration_since(sent);
        self.min_rtt = Some(self.min_rtt.map_or(rtt, |least| least.min(rtt)));
        self.tally.least_rtt = Some(self.tally.least_rtt.map_or(rtt, |least| least.min(rtt)));
        self.tally.samples += 1;

        // Records older than this packet's belong to packets acknowledged or
        // lost by now; a late acknowledgement of one just gives no sample.
        let at = self.records.partition_point(|record| record.sent < sent);
        self.records.drain(..at);
        let Some(record) = self.records.front().copied().filter(|record| record.sent == sent) else {
            return;
        };
        self.sample_rate(now, &record, app_limited);
        if record.delivered >= self.round_ends_at {
            self.end_round();
        }
        if self.phase == Phase::Startup && !app_limited {
            if self.queue_forming() {
                self.enter_cruise();
            } else {
                self.window = (self.window + STARTUP_ACK_GAIN * bytes).min(self.startup_ceiling());
            }
        }
    }

    /// Startup's window ceiling: [`STARTUP_GAIN`] times what the path was
    /// seen to deliver in a round trip. Growth by what is acknowledged
    /// doubles the window each round while the path has room; once it is
    /// full, acknowledgements keep coming and only this stops the window
    /// from running past the queue before the longer round trips show.
    fn startup_ceiling(&self) -> u64 {
        let seen = STARTUP_GAIN * self.path_capacity() as f64;
        (seen as u64 + ACK_ALLOWANCE_PACKETS * self.mtu).clamp(INITIAL_WINDOW, MAX_WINDOW)
    }

    /// Whether this round's round trips show a queue building: its least
    /// round trip, over at least [`QUEUE_SAMPLES`] acknowledgements (fewer
    /// could all have waited for a delayed acknowledgement), exceeds the
    /// least ever by an eighth, at least [`QUEUE_ALLOWANCE`] and at most four
    /// times it.
    fn queue_forming(&self) -> bool {
        match (self.tally.least_rtt, self.min_rtt) {
            (Some(round), Some(least)) if self.tally.samples >= QUEUE_SAMPLES => {
                round > least + (least / 8).clamp(QUEUE_ALLOWANCE, 4 * QUEUE_ALLOWANCE)
            }
            _ => false,
        }
    }

    /// Every acknowledgement of one ACK frame is in; `in_flight` bytes remain
    /// unacknowledged.
    pub fn on_end_acks(&mut self, in_flight: u64) {
        self.in_flight = in_flight;
        if self.phase == Phase::Cruise {
            self.window = self.cruise_window();
        }
    }

    /// Packets of `lost_bytes` were declared lost (`lost_bytes` 0: the
    /// path marked congestion); `persistent`: everything sent over several
    /// round trips was lost, so the model no longer describes the path.
    pub fn on_congestion(&mut self, persistent: bool, lost_bytes: u64) {
        if persistent {
            *self = Controller { min_rtt: self.min_rtt, ..Controller::new(self.mtu as u16) };
            self.window = self.min_window();
            return;
        }
        if lost_bytes == 0 {
            // An ECN mark: a queue is building, whatever the loss says.
            self.back_off();
            return;
        }
        self.tally.lost += lost_bytes;
        self.tally.lost_packets += lost_bytes.div_ceil(self.mtu.max(1));
    }

    /// A round trip ended: its figures decide the phase.
    fn end_round(&mut self) {
        let tally = std::mem::take(&mut self.tally);
        self.round += 1;
        self.round_ends_at = self.delivered;
        let overflowed = tally.lost_packets >= OVERFLOW_MIN_PACKETS
            && tally.lost as f64 > OVERFLOW_LOSS * (tally.acked + tally.lost) as f64;
        if overflowed {
            self.back_off();
        }
        if self.overflow_cap.is_some_and(|(_, until)| self.round >= until) {
            self.overflow_cap = None;
        }
        if self.phase == Phase::Startup && !tally.app_limited && self.path_full() {
            self.enter_cruise();
        }
    }

    /// Whether startup's delivery rate has stopped growing.
    fn path_full(&mut self) -> bool {
        let rate = self.bandwidth.get();
        if rate >= self.startup_best * STARTUP_GROWTH {
            (self.startup_best, self.startup_flat) = (rate, 0);
        } else {
            self.startup_flat += 1;
        }
        self.startup_flat >= STARTUP_FLAT_ROUNDS
    }

    fn enter_cruise(&mut self) {
        self.phase = Phase::Cruise;
        self.cruise_from = self.round;
        self.window = self.cruise_window();
    }

    /// A queue overflowed or was marked: leave startup, and cap the window
    /// below what was in flight for a while.
    fn back_off(&mut self) {
        let basis = if self.in_flight > 0 { self.in_flight } else { self.window };
        let cap = ((basis as f64 * OVERFLOW_BACKOFF) as u64).max(self.path_capacity()).max(self.min_window());
        self.overflow_cap = Some((cap, self.round + OVERFLOW_ROUNDS));
        if self.phase == Phase::Startup {
            self.enter_cruise();
        }
        self.window = self.cruise_window();
    }

    /// Bytes the path holds without a queue: rate x least round trip.
    fn path_capacity(&self) -> u64 {
        let rtt = self.min_rtt.unwrap_or_default();
        (self.bandwidth.get() * rtt.as_secs_f64()) as u64
    }

    fn cruise_window(&self) -> u64 {
        let rtt = self.min_rtt.unwrap_or_default();
        let queue = rtt.mul_f64(QUEUE_RTT_SHARE) + QUEUE_ALLOWANCE;
        let mut window = self.bandwidth.get() * (rtt + queue).as_secs_f64();
        let probing = (self.round - self.cruise_from) % PROBE_EVERY == PROBE_EVERY - 1;
        if probing && self.overflow_cap.is_none() {
            window *= PROBE_GAIN;
        }
        let mut window = window as u64 + ACK_ALLOWANCE_PACKETS * self.mtu;
        if let Some((cap, _)) = self.overflow_cap {
            window = window.min(cap);
        }
        window.clamp(self.min_window(), MAX_WINDOW)
    }

    fn min_window(&self) -> u64 {
        MIN_WINDOW_PACKETS * self.mtu
    }

    /// Takes the delivery rate over the interval `record` opened.
    fn sample_rate(&mut self, now: Instant, record: &SendRecord, app_limited: bool) {
        let send_elapsed = record.sent.saturating_duration_since(record.first_sent);
        let ack_elapsed = now.saturating_duration_since(record.delivered_at);
        let interval = send_elapsed.max(ack_elapsed);
        // Shorter than a round trip, a burst of acknowledgements looks like
        // a faster path than there is.
        if interval.is_zero() || self.min_rtt.is_some_and(|least| interval < least) {
            return;
        }
        let rate = (self.delivered - record.delivered) as f64 / interval.as_secs_f64();
        if !app_limited || rate > self.bandwidth.get() {
            self.bandwidth.update(self.round, rate);
        }
    }
}

#[cfg(test)]
mod tests;
