//! Progress bars on a terminal (indicatif), fed by the library's events.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use indicatif::{HumanBytes, HumanDuration, ProgressBar, ProgressStyle};
use xfer::{Change, Event, Meter, Progress};

/// What the terminal shows of a transfer: a bar, itemized changes, both.
pub struct Console {
    pub bars: Option<Bars>,
    /// `--itemize`: one line per changed entry, on stderr when stdout
    /// carries JSON.
    pub itemize: Option<bool>,
}

impl Console {
    pub fn finish(&self) {
        if let Some(bars) = &self.bars {
            bars.finish();
        }
    }
}

impl Progress for Console {
    fn event(&self, event: &Event) {
        if let (Some(to_stderr), Event::Entry { change, path }) = (self.itemize, event) {
            let code = match change {
                Change::Write => ">f",
                Change::Mkdir => "cd",
                Change::Symlink => "cL",
                Change::Link => "hf",
                Change::Meta => ".m",
                Change::Delete => "*deleting",
            };
            let line = format!("{code} {path}");
            match (&self.bars, to_stderr) {
                (Some(bars), _) => bars.bar.suspend(|| println!("{line}")),
                (None, true) => eprintln!("{line}"),
                (None, false) => println!("{line}"),
            }
        }
        if let Some(bars) = &self.bars {
            bars.event(event);
        }
    }
}

/// One bar: bytes of the files to write that the receiver has (chunks
/// acknowledged on a push, received on a pull; reused ones never travel),
/// the measured rate and the time left, with the encoded bytes sent, what
/// compression saved, and the largest file begun in the last moments.
pub struct Bars {
    pub bar: ProgressBar,
    started: Instant,
    meter: Mutex<Meter>,
    sent: AtomicU64,
    largest: Mutex<(u64, String)>,
}

impl Bars {
    /// Bars for the side that sends the chunks (`sending`, a push) or
    /// receives them.
    pub fn new(sending: bool) -> Self {
        let bar = ProgressBar::new_spinner();
        bar.set_style(
            ProgressStyle::with_template("{spinner} {msg}").unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        bar.set_message("scanning");
        bar.enable_steady_tick(std::time::Duration::from_millis(120));
        Bars {
            bar,
            started: Instant::now(),
            meter: Mutex::new(Meter::new(sending)),
            sent: AtomicU64::new(0),
            largest: Mutex::new((0, String::new())),
        }
    }

    /// Removes the bar (the summary line follows).
    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }

    /// Moves the bar to what the meter counts done, and says the rate,
    /// the time left and what was sent.
    fn describe(&self, meter: &Meter) {
        self.bar.set_position(meter.done());
        let sent = self.sent.load(Ordering::Relaxed);
        let rate = meter.rate().map_or_else(|| "-".to_string(), |r| format!("{}/s", HumanBytes(r as u64)));
        let eta = meter.eta().map_or_else(|| "?".to_string(), |eta| HumanDuration(eta).to_string());
        let largest = self.largest.lock().map(|l| l.1.clone()).unwrap_or_default();
        self.bar.set_message(format!("{rate} eta {eta} | sent {} {largest}", HumanBytes(sent)));
    }
}

impl Progress for Bars {
    fn event(&self, event: &Event) {
        let Ok(mut meter) = self.meter.lock() else { return };
        meter.event(event, self.started.elapsed());
        match event {
            Event::Scanning { files, bytes, bytes_read } => {
                self.bar.set_message(format!(
                    "scanning: {files} files, {} ({} read)",
                    HumanBytes(*bytes),
                    HumanBytes(*bytes_read)
                ));
            }
            Event::Scanned { files, bytes } => {
                self.bar.set_message(format!("scanned {files} files, {}; comparing", HumanBytes(*bytes)));
            }
            Event::Planned { bytes, .. } => {
                self.bar.set_length(*bytes);
                if let Ok(style) = ProgressStyle::with_template("{bar:30} {bytes}/{total_bytes} {msg}") {
                    self.bar.set_style(style);
                }
                self.describe(&meter);
            }
            Event::FileStarted { path, size } => {
                if let Ok(mut largest) = self.largest.lock() {
                    // The largest file lately: decays so a new one shows.
                    if *size >= largest.0 / 2 {
                        *largest = (*size, format!("{path} ({})", HumanBytes(*size)));
                    } else {
                        largest.0 -= largest.0 / 16;
                    }
                }
                self.describe(&meter);
            }
            Event::Chunk { encoded, .. } => {
                self.sent.fetch_add(*encoded, Ordering::Relaxed);
                self.describe(&meter);
            }
            Event::Acked { .. } => self.describe(&meter),
            _ => {}
        }
    }
}
