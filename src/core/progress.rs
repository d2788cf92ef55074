//! Progress of a push or pull, as events for whoever watches: the CLI turns
//! them into bars, a backup app into its own display or log. No terminal
//! code here.

use std::collections::VecDeque;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// Something that happened during a transfer.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// The scan of the source tree goes on (pushes): the totals so far,
    /// after each regular file.
    Scanning {
        /// Regular files found so far.
        files: u64,
        /// Bytes in them.
        bytes: u64,
        /// Of those, bytes read because the quick check could not vouch
        /// for them.
        bytes_read: u64,
    },
    /// The source tree is scanned (pushes).
    Scanned {
        /// Regular files in it.
        files: u64,
        /// Bytes in them.
        bytes: u64,
    },
    /// The sender knows what differs: these files will be (re)written.
    Planned {
        /// Files to write.
        files: u64,
        /// Their total size.
        bytes: u64,
    },
    /// A file is being written (sent on a push, received on a pull).
    FileStarted {
        /// Its path in the tree.
        path: String,
        /// Its size.
        size: u64,
    },
    /// A file received on this side (a pull) is written whole and
    /// verified; it goes in place at the next commit point, which a
    /// cancel still reaches. The per-file end of [`Event::FileStarted`].
    FileDone {
        /// Its path in the tree.
        path: String,
    },
    /// An entry changes on the receiver (one per entry, as `--itemize`
    /// lists them).
    Entry {
        /// What happens to it.
        change: Change,
        /// Its path in the tree.
        path: String,
    },
    /// Wire bytes this side's peer has acknowledged so far (pushes: the
    /// connection's total, handshake included), sent every moment while
    /// chunks travel. What a progress display counts as done: chunks
    /// handed to the connection may still wait in its buffers.
    Acked {
        /// Acknowledged bytes since the connection opened.
        bytes: u64,
    },
    /// A chunk crossed the wire (handed to the connection, on a push;
    /// received, on a pull).
    Chunk {
        /// Its size once decoded.
        decoded: u64,
        /// Its size as sent (compressed, or a delta).
        encoded: u64,
    },
}

/// What happens to an entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    /// A file is written (new or changed content).
    Write,
    /// A directory is created.
    Mkdir,
    /// A symlink is written.
    Symlink,
    /// A hard link to another file of the tree is made.
    Link,
    /// Only mode or mtime change.
    Meta,
    /// The entry is deleted.
    Delete,
}

impl Change {
    /// The entry's change for `op`.
    pub fn of(op: &crate::plan::Op) -> Change {
        use crate::plan::Op;
        match op {
            Op::WriteFile { .. } => Change::Write,
            Op::Mkdir { .. } => Change::Mkdir,
            Op::Symlink { .. } => Change::Symlink,
            Op::Link { .. } => Change::Link,
            Op::SetMeta { .. } => Change::Meta,
            Op::Delete { .. } => Change::Delete,
        }
    }
}

/// Receives [`Event`]s; called from the transfer's threads, so it must be
/// quick (hand work off to a channel if it is not).
pub trait Progress: Send + Sync {
    /// One event.
    fn event(&self, event: &Event);
}

/// Where a transfer reports its events; by default nowhere.
#[derive(Clone, Default)]
pub struct ProgressSink(Option<Arc<dyn Progress>>);

impl ProgressSink {
    /// Reports to `progress`.
    pub fn new(progress: Arc<dyn Progress>) -> Self {
        ProgressSink(Some(progress))
    }

    /// Reports `event`, if anyone listens.
    pub fn emit(&self, event: impl FnOnce() -> Event) {
        if let Some(progress) = &self.0 {
            progress.event(&event());
        }
    }
}

impl fmt::Debug for ProgressSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_some() { "ProgressSink(..)" } else { "ProgressSink(none)" })
    }
}

/// Forwards events to a channel (bounded by the caller's choice of
/// channel; a full channel drops events rather than stall the transfer).
impl Progress for std::sync::mpsc::SyncSender<Event> {
    fn event(&self, event: &Event) {
        let _ = self.try_send(event.clone());
    }
}

/// What a progress display shows of a transfer, from its [`Event`]s: the
/// bytes of the planned files done, the rate and the time left. On a push
/// a chunk counts as done once the receiver acknowledged its bytes
/// ([`Event::Acked`]), not when it was handed to the connection; on a
/// pull, when it arrived. Times come from the caller.
#[derive(Clone, Debug)]
pub struct Meter {
    sending: bool,
    total: Option<u64>,
    done: u64,
    /// Chunks handed to the connection and not yet acknowledged: the
    /// encoded bytes sent up to and including each, and the decoded bytes
    /// it brings the display to. Oldest first, at most [`MAX_IN_FLIGHT`].
    in_flight: VecDeque<(u64, u64)>,
    encoded_sent: u64,
    decoded_sent: u64,
    /// Acknowledged wire bytes when the first chunk was sent (handshake,
    /// listings): not chunk data.
    acked_before_data: Option<u64>,
    acked: u64,
    rate: Option<f64>,
    /// When the rate was last sampled, and `done` then.
    sampled: (Duration, u64),
}

/// Chunks tracked in flight; past it the newest are tracked together.
const MAX_IN_FLIGHT: usize = 4096;

/// How long a rate sample spans: shorter ones are mostly noise.
const SAMPLE: Duration = Duration::from_millis(500);

/// Weight of a new sample in the smoothed rate.
const SMOOTHING: f64 = 0.3;

impl Meter {
    /// A meter for the side that sends the chunks (`sending`: a push's
    /// client) or receives them (a pull's).
    pub fn new(sending: bool) -> Meter {
        Meter {
            sending,
            total: None,
            done: 0,
            in_flight: VecDeque::new(),
            encoded_sent: 0,
            decoded_sent: 0,
            acked_before_data: None,
            acked: 0,
            rate: None,
            sampled: (Duration::ZERO, 0),
        }
    }

    /// Takes `event`, seen `at` into the transfer.
    pub fn event(&mut self, event: &Event, at: Duration) {
        match event {
            Event::Planned { bytes, .. } => self.total = Some(*bytes),
            Event::Chunk { decoded, encoded } if self.sending => {
                self.acked_before_data.get_or_insert(self.acked);
                self.encoded_sent += encoded;
                self.decoded_sent += decoded;
                let mark = (self.encoded_sent, self.decoded_sent);
                let full = self.in_flight.len() >= MAX_IN_FLIGHT;
                match self.in_flight.back_mut() {
                    Some(last) if full => *last = mark,
                    _ => self.in_flight.push_back(mark),
                }
            }
            Event::Chunk { decoded, .. } => self.done += decoded,
            Event::Acked { bytes } => {
                self.acked = self.acked.max(*bytes);
                self.confirm();
            }
            _ => return,
        }
        self.sample(at);
    }

    /// Counts the chunks whose bytes the acknowledged bytes cover. Wire
    /// bytes carry packet headers and messages besides the chunks' bytes,
    /// so a chunk counts only once a 1/32 margin over its bytes is
    /// acknowledged too.
    fn confirm(&mut self) {
        let Some(before) = self.acked_before_data else { return };
        let data = self.acked.saturating_sub(before);
        while let Some(&(encoded, decoded)) = self.in_flight.front() {
            if data < encoded + encoded / 32 {
                break;
            }
            self.done = decoded;
            self.in_flight.pop_front();
        }
    }

    /// Samples the rate every [`SAMPLE`], from when the first bytes were
    /// done (the scan and the handshake before them are not the link's
    /// rate).
    fn sample(&mut self, at: Duration) {
        if self.done == 0 {
            self.sampled = (at, 0);
            return;
        }
        let (then, done_then) = self.sampled;
        let span = at.saturating_sub(then);
        if span < SAMPLE {
            return;
        }
        let now = (self.done.saturating_sub(done_then)) as f64 / span.as_secs_f64();
        self.rate = Some(self.rate.map_or(now, |rate| rate + SMOOTHING * (now - rate)));
        self.sampled = (at, self.done);
    }

    /// The planned bytes, once the plan is made (pushes).
    pub fn total(&self) -> Option<u64> {
        self.total
    }

    /// Bytes done: of chunks acknowledged (pushes) or received (pulls),
    /// at their decoded size; never more than the total.
    pub fn done(&self) -> u64 {
        self.total.map_or(self.done, |total| self.done.min(total))
    }

    /// The smoothed rate of [`Meter::done`] in bytes/s, once measured.
    pub fn rate(&self) -> Option<f64> {
        self.rate
    }

    /// The time left at the measured rate: at least a second while any
    /// byte is left, `None` before a rate is measured or without a total.
    pub fn eta(&self) -> Option<Duration> {
        let left = self.total?.saturating_sub(self.done());
        if left == 0 {
            return Some(Duration::ZERO);
        }
        let rate = self.rate.filter(|r| *r > 0.0)?;
        Some(Duration::from_secs_f64((left as f64 / rate).clamp(1.0, 1e9)))
    }
}
