//! The record of one push or pull: what `--json` prints on stdout and
//! `--log-json FILE` appends, one JSON line per run, on every outcome
//! (done, partial, window, refused, failed, SIGINT, SIGTERM). It names the
//! run (start and end time, host, pid, version, command, source and
//! destination), carries every count of the summary (what was done until
//! the run stopped, on a stop or an error) and the exit code.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::Context;
use serde::Serialize;
use xfer::{Fingerprint, Report};

/// One run's record, filled in as the run learns its facts, written once.
pub(crate) struct RunLog {
    started: jiff::Timestamp,
    command: &'static str,
    source: String,
    destination: String,
    /// `--json`: the record on stdout too.
    json: bool,
    facts: Mutex<Facts>,
}

/// What the run learns on the way.
#[derive(Default)]
struct Facts {
    /// `--log-json` or the config's `log_json`, and the file once open.
    path: Option<PathBuf>,
    file: Option<File>,
    url: Option<String>,
    client: Option<Fingerprint>,
    server: Option<Fingerprint>,
    tags: BTreeMap<String, String>,
    written: bool,
}

/// How a run ended, as the record says it.
pub(crate) struct Ending<'a> {
    pub(crate) code: u8,
    /// `ok`, `partial`, `window`, `cancelled`, `refused` or `failed`.
    pub(crate) result: &'static str,
    /// What was done, complete or until the run stopped.
    pub(crate) report: Option<&'a Report>,
    /// Figures the CLI adds to the report (peak memory, costs).
    pub(crate) extra: serde_json::Map<String, serde_json::Value>,
    pub(crate) error: Option<String>,
}

#[derive(Serialize)]
struct Record<'a> {
    run_id: String,
    start: String,
    end: String,
    host: String,
    pid: u32,
    version: &'static str,
    command: &'static str,
    source: &'a str,
    destination: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    url: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    client: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    server: Option<String>,
    tags: &'a BTreeMap<String, String>,
    exit_code: u8,
    result: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a str>,
    #[serde(flatten)]
    report: &'a Report,
    #[serde(flatten)]
    extra: &'a serde_json::Map<String, serde_json::Value>,
}

impl RunLog {
    /// A run of `command` from `source` to `destination` starting now;
    /// `log` is the command line's `--log-json`.
    pub(crate) fn start(
        command: &'static str,
        source: &Path,
        destination: &Path,
        json: bool,
        log: Option<&Path>,
    ) -> Self {
        let facts = Facts { path: log.map(Path::to_path_buf), ..Facts::default() };
        RunLog {
            started: jiff::Timestamp::now(),
            command,
            source: source.display().to_string(),
            destination: destination.display().to_string(),
            json,
            facts: Mutex::new(facts),
        }
    }

    fn facts(&self) -> std::sync::MutexGuard<'_, Facts> {
        self.facts.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Opens the log, `configured` (the config's `log_json`) unless the
    /// command line named one, creating its directories: a log that cannot
    /// be written stops the run before anything moves.
    pub(crate) fn open(&self, configured: Option<&Path>) -> anyhow::Result<()> {
        let mut facts = self.facts();
        if facts.path.is_none() {
            facts.path = configured.map(Path::to_path_buf);
        }
        facts.open()
    }

    /// The server URL a remote's name stood for.
    pub(crate) fn url(&self, url: String) {
        self.facts().url = Some(url);
    }

    /// This host's and the server's keys, once known.
    pub(crate) fn keys(&self, client: Fingerprint, server: Option<Fingerprint>) {
        let mut facts = self.facts();
        (facts.client, facts.server) = (Some(client), server);
    }

    /// The run's `--tag`s.
    pub(crate) fn tags(&self, tags: BTreeMap<String, String>) {
        self.facts().tags = tags;
    }

    /// Writes the record of how the run ended, once: on stdout with
    /// `--json`, appended to the log if there is one. A log that cannot be
    /// written is said on stderr; the exit code stays the run's.
    pub(crate) fn finish(&self, ending: Ending<'_>) {
        let mut facts = self.facts();
        if facts.written {
            return;
        }
        facts.written = true;
        let end = jiff::Timestamp::now();
        let none = Report::default();
        let record = Record {
            run_id: format!("{}-{}", self.started.as_millisecond(), std::process::id()),
            start: rfc3339(self.started),
            end: rfc3339(end),
            host: host(),
            pid: std::process::id(),
            version: env!("CARGO_PKG_VERSION"),
            command: self.command,
            source: &self.source,
            destination: &self.destination,
            url: facts.url.as_deref(),
            client: facts.client.map(|fp| fp.to_string()),
            server: facts.server.map(|fp| fp.to_string()),
            tags: &facts.tags,
            exit_code: ending.code,
            result: ending.result,
            error: ending.error.as_deref(),
            report: ending.report.unwrap_or(&none),
            extra: &ending.extra,
        };
        let line = match serde_json::to_string(&record) {
            Ok(line) => line,
            Err(e) => return eprintln!("xfer: error: cannot write the run's record: {e}"),
        };
        if self.json {
            println!("{line}");
        }
        if let Err(e) = facts.append(&line) {
            eprintln!("xfer: error: {e:#}");
        }
    }
}

impl Facts {
    fn open(&mut self) -> anyhow::Result<()> {
        let Some(path) = self.path.as_ref().filter(|_| self.file.is_none()) else { return Ok(()) };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| format!("create {} for --log-json", dir.display()))?;
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("open {} for --log-json", path.display()))?;
        self.file = Some(file);
        Ok(())
    }

    /// Appends `line` in one write, so runs sharing a log never
    /// interleave within a line.
    fn append(&mut self, line: &str) -> anyhow::Result<()> {
        self.open()?;
        let (Some(file), Some(path)) = (&mut self.file, &self.path) else { return Ok(()) };
        let mut bytes = Vec::with_capacity(line.len() + 1);
        bytes.extend_from_slice(line.as_bytes());
        bytes.push(b'\n');
        file.write_all(&bytes).with_context(|| format!("append the run's record to {}", path.display()))
    }
}

/// RFC 3339 in UTC, with exactly three decimals so that the text sorts
/// as the times do.
fn rfc3339(at: jiff::Timestamp) -> String {
    format!("{at:.3}")
}

/// This machine's name, so one log can gather several machines' runs.
fn host() -> String {
    rustix::system::uname().nodename().to_string_lossy().into_owned()
}
