//! Progress bars on a terminal (indicatif), fed by the library's events.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use indicatif::{HumanBytes, ProgressBar, ProgressStyle};
use xfer::{Change, Event, Progress};

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

/// One bar: source bytes of the files to write (started so far), with the
/// encoded bytes sent, what compression and deduplication saved, and the
/// largest file begun in the last moments.
pub struct Bars {
    pub bar: ProgressBar,
    sent: AtomicU64,
    largest: Mutex<(u64, String)>,
}

impl Bars {
    pub fn new() -> Self {
        let bar = ProgressBar::new_spinner();
        bar.set_style(
            ProgressStyle::with_template("{spinner} {msg}").unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        bar.set_message("scanning");
        bar.enable_steady_tick(std::time::Duration::from_millis(120));
        Bars { bar, sent: AtomicU64::new(0), largest: Mutex::new((0, String::new())) }
    }

    /// Removes the bar (the summary line follows).
    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }

    fn describe(&self) {
        let sent = self.sent.load(Ordering::Relaxed);
        let saved = self.bar.position().saturating_sub(sent);
        let largest = self.largest.lock().map(|l| l.1.clone()).unwrap_or_default();
        self.bar.set_message(format!("sent {} ({} saved) {largest}", HumanBytes(sent), HumanBytes(saved)));
    }
}

impl Progress for Bars {
    fn event(&self, event: &Event) {
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
                let template = "{bar:30} {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta} | {msg}";
                if let Ok(style) = ProgressStyle::with_template(template) {
                    self.bar.set_style(style);
                }
            }
            Event::FileStarted { path, size } => {
                self.bar.inc(*size);
                if let Ok(mut largest) = self.largest.lock() {
                    // The largest file lately: decays so a new one shows.
                    if *size >= largest.0 / 2 {
                        *largest = (*size, format!("{path} ({})", HumanBytes(*size)));
                    } else {
                        largest.0 -= largest.0 / 16;
                    }
                }
                self.describe();
            }
            Event::Chunk { encoded, .. } => {
                self.sent.fetch_add(*encoded, Ordering::Relaxed);
                self.describe();
            }
            _ => {}
        }
    }
}
