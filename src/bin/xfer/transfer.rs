//! `xfer push` and `xfer pull`: flags and config into the library's
//! options, trust on first use, signals, and the report and exit code.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::bail;
use indicatif::HumanBytes;
use xfer::{
    default_state_dir, local_time_now, CancellationToken, Client, Compression, Congestion, DeleteLimit, DeleteRefused,
    DeleteRule, Excludes, Fingerprint, HostTrust, Identity, KnownHosts, LocalTime, PullOptions, PushOptions, RemoteUrl,
    Report, Timetable, TransferError, Window, DEFAULT_CONNECT_TIMEOUT,
};

use crate::args::{CompressArg, PushArgs};
use crate::config::{Config, Settings, Target};
use crate::record::{Ending, RunLog};
use crate::trust::{self, PinFrom};
use crate::{
    config_dir_or_default, exit_code_of, runtime, ui, usage, usage_bail, warn_slow_rate, StopSignals, EXIT_INTERRUPTED,
    EXIT_PARTIAL, EXIT_TERMINATED, EXIT_USAGE, EXIT_WINDOW, KNOWN_HOSTS,
};

/// Runs `session` against `url`'s server with this host's identity and the
/// server's pin (from `--server-fingerprint` or known hosts). An unknown
/// server is retried once with the key it presented when `--accept-new`
/// allows; the key a session verified is pinned for next time.
fn with_trust<T>(
    (args, log): (&PushArgs, &RunLog),
    url: &RemoteUrl,
    configured: Option<Fingerprint>,
    session: impl Fn(&Client, Option<Fingerprint>) -> Result<T, TransferError>,
) -> anyhow::Result<T> {
    let trust = Trust {
        config_dir: args.config_dir.clone(),
        server_fingerprint: args.server_fingerprint.clone(),
        accept_new: args.accept_new,
    };
    log.url(format!("xfer://{}/{}", url.authority, url.path));
    trusted(&trust, url, configured, session, &|client, server| log.keys(client, server))
}

/// How a command finds and trusts a server's key.
pub(crate) struct Trust {
    pub(crate) config_dir: Option<PathBuf>,
    pub(crate) server_fingerprint: Option<String>,
    pub(crate) accept_new: bool,
}

impl Trust {
    /// See [`with_trust`].
    pub(crate) fn run<T>(
        &self,
        url: &RemoteUrl,
        configured: Option<Fingerprint>,
        session: impl Fn(&Client, Option<Fingerprint>) -> Result<T, TransferError>,
    ) -> anyhow::Result<T> {
        trusted(self, url, configured, session, &|_, _| {})
    }
}

/// `noted` hears this host's key and the server's it trusted, for the
/// run's record.
fn trusted<T>(
    args: &Trust,
    url: &RemoteUrl,
    configured: Option<Fingerprint>,
    session: impl Fn(&Client, Option<Fingerprint>) -> Result<T, TransferError>,
    noted: &dyn Fn(Fingerprint, Option<Fingerprint>),
) -> anyhow::Result<T> {
    let config_dir = config_dir_or_default(args.config_dir.clone())?;
    let client = Client::new(Identity::load_or_create(&config_dir)?);
    let mut hosts = KnownHosts::load(&config_dir.join(KNOWN_HOSTS))?;
    let (pin, from) = match (&args.server_fingerprint, configured, hosts.check(&url.authority)) {
        (Some(fp), ..) => (Some(fp.parse::<Fingerprint>().map_err(usage)?), PinFrom::Flag),
        (None, Some(fp), _) => (Some(fp), PinFrom::Config),
        (None, None, HostTrust::Pinned(fp)) => (Some(fp), PinFrom::KnownHosts),
        (None, None, HostTrust::Unknown) => (None, PinFrom::Nowhere),
    };
    let mut used = pin;
    let mut result = session(&client, pin);
    if let Err(TransferError::UntrustedServer { seen, .. }) = &result {
        if pin.is_none() && args.accept_new {
            eprintln!("xfer: trusting {} on first use: {seen}", url.authority);
            used = Some(*seen);
            result = session(&client, used);
        }
    }
    noted(client.fingerprint(), used);
    let value = result.map_err(|e| trust::explain(e, &from, url, &hosts, &config_dir))?;
    if let Some(fp) = used {
        if hosts.check(&url.authority) != HostTrust::Pinned(fp) {
            hosts.pin(&url.authority, fp)?;
        }
    }
    Ok(value)
}

pub(crate) fn pull(args: PushArgs, quiet: bool) -> anyhow::Result<ExitCode> {
    let log = RunLog::start("pull", &args.src, &args.dest, args.json, args.log_json.as_deref());
    let result = pull_run(&args, quiet, &log);
    ended(&log, result)
}

fn pull_run(args: &PushArgs, quiet: bool, log: &RunLog) -> anyhow::Result<ExitCode> {
    let config = Config::load(&config_dir_or_default(args.config_dir.clone())?)?;
    let (url, configured) = match config.target(&args.src).map_err(usage)? {
        Target::Remote(url, pin) => (url, pin),
        Target::Local => usage_bail!(
            "{} is not a server URL or a remote of the config file: use xfer://HOST[:PORT]/PATH \
             (for local copies use xfer push)",
            args.src.display()
        ),
    };
    let settings = config.settings(false);
    log.open(settings.log_json.as_deref())?;
    if !excludes(args, &settings, false)?.is_empty() {
        usage_bail!(
            "exclude patterns work on pushes only (a pull's source is scanned by the server, and the protocol \
             does not carry patterns); expected a pull without --exclude or --exclude-from"
        );
    }
    transfer((args, log), &settings, false, quiet, |runtime, common| {
        let mut options = common_options!(PullOptions, common);
        if let Some(at) = &args.at {
            options = options.at(at.clone());
        }
        with_trust((args, log), &url, configured, |client, pin| {
            runtime.block_on(client.pull(&url, pin, &args.dest, &options))
        })
    })
}

pub(crate) fn push(args: PushArgs, quiet: bool) -> anyhow::Result<ExitCode> {
    let log = RunLog::start("push", &args.src, &args.dest, args.json, args.log_json.as_deref());
    let result = push_run(&args, quiet, &log);
    ended(&log, result)
}

/// Writes the record of a run that failed before it reached an ending of
/// its own (a bad config, an unreachable server...).
fn ended(log: &RunLog, result: anyhow::Result<ExitCode>) -> anyhow::Result<ExitCode> {
    if let Err(e) = &result {
        let code = exit_code_of(e);
        let report = e.downcast_ref::<TransferError>().and_then(TransferError::report);
        let result = if code == EXIT_USAGE { "usage" } else { "failed" };
        let error = Some(format!("{e:#}"));
        log.finish(Ending { code, result, report, extra: Default::default(), error });
    }
    result
}

fn push_run(args: &PushArgs, quiet: bool, log: &RunLog) -> anyhow::Result<ExitCode> {
    let config = Config::load(&config_dir_or_default(args.config_dir.clone())?)?;
    let target = config.target(&args.dest).map_err(usage)?;
    if args.at.is_some() {
        usage_bail!("--at names a snapshot to restore: it works on pulls only (xfer pull --at SEL URL DEST)");
    }
    let settings = config.settings(true);
    log.open(settings.log_json.as_deref())?;
    let excludes = excludes(args, &settings, true)?;
    transfer((args, log), &settings, true, quiet, |runtime, common| {
        let options = common_options!(PushOptions, common).exclude(excludes).dry_run(args.dry_run);
        match target {
            Target::Remote(url, configured) => with_trust((args, log), &url, configured, |client, pin| {
                runtime.block_on(client.push(&args.src, &url, pin, &options))
            }),
            Target::Local => runtime
                .block_on(Client::push_local(&args.src, &args.dest, &options))
                .map_err(|e| with_hint(e).context(format!("push {} -> {}", args.src.display(), args.dest.display()))),
        }
    })
}

/// What the flags and the config file say for a push or a pull, before
/// it becomes the library's options.
struct Common {
    state_dir: PathBuf,
    busy_wait: Option<Duration>,
    delete: bool,
    checksum: bool,
    delete_limit: DeleteLimit,
    compression: Compression,
    tags: BTreeMap<String, String>,
    congestion: Congestion,
    cancel: CancellationToken,
    connect_timeout: Duration,
    progress: Option<Arc<ui::Console>>,
    timetable: Option<Timetable>,
    window: Option<Window>,
    wait: bool,
}

/// Builds the library's push or pull options from [`Common`].
macro_rules! common_options {
    ($options:ty, $common:expr) => {{
        let common: &Common = $common;
        let mut options = <$options>::new(common.state_dir.clone())
            .delete(common.delete)
            .checksum(common.checksum)
            .delete_limit(common.delete_limit)
            .compression(common.compression)
            .tags(common.tags.clone())
            .congestion(common.congestion)
            .cancel(common.cancel.clone())
            .connect_timeout(common.connect_timeout)
            .clock(Arc::new(|| now().ok()));
        if let Some(wait) = common.busy_wait {
            options = options.busy_wait(wait);
        }
        if let Some(progress) = &common.progress {
            options = options.progress(progress.clone());
        }
        if let Some(timetable) = &common.timetable {
            options = options.bwlimit_timetable(timetable.clone());
        }
        if let Some(window) = &common.window {
            options = options.window(window.clone(), common.wait);
        }
        options
    }};
}
use common_options;

/// Runs a push or pull with the options of `args`: Ctrl-C cancels it at a
/// commit point; the outcome is reported (as JSON with `--json`, errors
/// included) and mapped to the exit code.
fn transfer(
    (args, log): (&PushArgs, &RunLog),
    settings: &Settings,
    push: bool,
    quiet: bool,
    run: impl FnOnce(&tokio::runtime::Runtime, &Common) -> anyhow::Result<Report>,
) -> anyhow::Result<ExitCode> {
    let mut common = common(args, settings)?;
    log.tags(common.tags.clone());
    let (window_text, window) = transfer_window(args, settings)?;
    let (bwlimit, what) = match (&args.bwlimit, &settings.bwlimit) {
        (Some(flag), _) => (Some(flag), "--bwlimit"),
        (None, configured) => (configured.as_ref(), "the config file's bwlimit"),
    };
    common.timetable = bwlimit.map(|text| text.parse::<Timetable>()).transpose()?;
    if let (Some(text), Some(timetable)) = (bwlimit, &common.timetable) {
        if timetable.is_slow() && !quiet {
            warn_slow_rate(what, text);
        }
    }
    // An unreadable clock file stops the run before it starts.
    let started_at = now()?;
    if let Some(window) = &window {
        if !window.is_open(started_at) && args.wait && !quiet {
            eprintln!("xfer: waiting for the window {} to open", window_text);
        }
    }
    (common.window, common.wait) = (window, args.wait);
    let runtime = runtime()?;
    // Bars only for a person watching: not under cron, not with -q.
    let bars = (!quiet && std::io::IsTerminal::is_terminal(&std::io::stderr())).then(|| ui::Bars::new(push));
    let console = Arc::new(ui::Console { bars, itemize: args.itemize.then_some(args.json) });
    if console.bars.is_some() || console.itemize.is_some() {
        common.progress = Some(console.clone());
    }
    let stop = watch_signals(&runtime, &common.cancel)?;
    let outcome = run(&runtime, &common);
    console.finish();
    transfer_outcome(outcome, (args, log), push, quiet, window_text, &stop)
}

/// The window the transfer runs in, with its text for messages. The
/// command line's window wins over the config file's; `--window always`
/// lifts a configured window.
fn transfer_window<'a>(args: &'a PushArgs, settings: &'a Settings) -> anyhow::Result<(&'a str, Option<Window>)> {
    let window_text = args.window.as_deref().or(settings.window.as_deref()).filter(|w| *w != "always");
    let window_text = window_text.unwrap_or_default();
    let window = (!window_text.is_empty()).then(|| window_text.parse::<Window>()).transpose()?;
    if args.wait && window.is_none() {
        usage_bail!("--wait waits for a window to open: give --window WINDOW (or a window in the config file)");
    }
    Ok((window_text, window))
}

/// Cancels the transfer on a stop signal; the returned code says which.
fn watch_signals(runtime: &tokio::runtime::Runtime, cancel: &CancellationToken) -> anyhow::Result<Arc<AtomicU8>> {
    let stop = Arc::new(AtomicU8::new(EXIT_INTERRUPTED));
    let mut signals = runtime.block_on(async { StopSignals::install() })?;
    let (cancel, reason) = (cancel.clone(), stop.clone());
    runtime.spawn(async move {
        let code = signals.next().await;
        reason.store(code, Ordering::SeqCst);
        cancel.cancel();
    });
    Ok(stop)
}

/// A library error with the command-line hint that helps with it, said
/// after the error's own message; the error stays typed for the exit code.
#[derive(Debug)]
pub(crate) struct Hinted {
    pub(crate) error: TransferError,
    hint: String,
}

impl std::fmt::Display for Hinted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}{}", self.error, self.hint)
    }
}

impl std::error::Error for Hinted {
    /// What lies under the error, not the error itself, which the
    /// message already says.
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.error.source()
    }
}

/// The error with the command-line hint for it, if one helps (an
/// untrusted server's: [`trust::explain`], which knows where its pin
/// came from).
pub(crate) fn with_hint(e: TransferError) -> anyhow::Error {
    let hint = match &e {
        TransferError::BadTag(_) => "; expected --tag KEY=VALUE".into(),
        _ if e.is_busy() => " (or wait for it with --busy-wait SECONDS)".into(),
        _ => return e.into(),
    };
    hinted(e, hint)
}

/// `e` followed by `hint`, the command line's advice on it; `e` stays
/// typed for the exit code.
pub(crate) fn hinted(e: TransferError, hint: String) -> anyhow::Error {
    Hinted { error: e, hint }.into()
}

/// How to go ahead with deletes a guard refused, in the CLI's flags.
fn delete_hint(refused: &DeleteRefused) -> String {
    match refused.rule {
        DeleteRule::Max(max) => format!("if this is intended, raise --max-delete {max}"),
        DeleteRule::Half => format!("if this is intended, pass --force-delete or --max-delete {}", refused.deleted),
        DeleteRule::EmptySource => "if emptying the destination is intended, pass --force-delete".into(),
    }
}

/// Reports the transfer's outcome and picks its exit code.
fn transfer_outcome(
    outcome: anyhow::Result<Report>,
    (args, log): (&PushArgs, &RunLog),
    push: bool,
    quiet: bool,
    window_text: &str,
    stop: &AtomicU8,
) -> anyhow::Result<ExitCode> {
    let e = match outcome {
        Ok(report) => return print_report(&report, (args, log), push, quiet),
        Err(e) => e,
    };
    let done = e.downcast_ref::<TransferError>().and_then(TransferError::report);
    let stopped_at = match e.downcast_ref::<TransferError>() {
        Some(TransferError::OutsideWindow { opens_in_min }) => {
            let when = opens_in_min.map_or_else(|| "never".to_string(), |m| format!("in {m} min"));
            let message = format!("outside the window {} (it opens {when}); pass --wait to wait", window_text);
            return Ok(stopped(log, quiet, (EXIT_WINDOW, done), message));
        }
        Some(TransferError::WindowClosed { .. }) => Some((EXIT_WINDOW, format!("the window {} closed", window_text))),
        Some(TransferError::Cancelled { .. }) => Some(match stop.load(Ordering::SeqCst) {
            EXIT_TERMINATED => (EXIT_TERMINATED, "stopped by SIGTERM".to_string()),
            code => (code, "interrupted".to_string()),
        }),
        _ => None,
    };
    if let Some((code, why)) = stopped_at {
        let message = format!("{why}; {KEPT}");
        return Ok(stopped(log, quiet, (code, done), message));
    }
    match e.downcast_ref::<TransferError>().and_then(TransferError::delete_refused) {
        Some(refused) => {
            let message = if args.dry_run {
                format!("dry run: the run would be refused: {refused}; {}", delete_hint(refused))
            } else {
                format!("{refused}; nothing was changed; {}", delete_hint(refused))
            };
            eprintln!("xfer: error: {message}");
            let error = Some(message);
            log.finish(Ending { code: EXIT_USAGE, result: "refused", report: done, extra: Default::default(), error });
            Ok(ExitCode::from(EXIT_USAGE))
        }
        // Recorded by the caller, with the exit code the error maps to.
        None => Err(e),
    }
}

/// What a stopped run keeps.
const KEPT: &str = "cancelled; the files already received whole were kept, and the next run goes on from there";

/// The local time of the week, for windows and timetables.
fn now() -> anyhow::Result<LocalTime> {
    #[cfg(feature = "fault-injection")]
    if let Some(at) = clock_file()? {
        return Ok(at);
    }
    Ok(local_time_now())
}

/// Test builds only: `XFER_CLOCK_FILE` names a file holding `DAY HH:MM`
/// to use instead of the system clock; tests move it to open and close
/// windows (write it by rename, so a reader never sees it half-written).
#[cfg(feature = "fault-injection")]
fn clock_file() -> anyhow::Result<Option<LocalTime>> {
    let Some(file) = std::env::var_os("XFER_CLOCK_FILE") else { return Ok(None) };
    use anyhow::Context;
    let text = std::fs::read_to_string(&file)
        .with_context(|| format!("read the clock file {} (XFER_CLOCK_FILE)", PathBuf::from(&file).display()))?;
    Ok(Some(text.parse()?))
}

/// Reports a run that stopped without failing (window, Ctrl-C). A closed
/// window is routine under cron: with -q only the exit code tells.
fn stopped(log: &RunLog, quiet: bool, (code, done): (u8, Option<&Report>), message: String) -> ExitCode {
    if !(quiet && code == EXIT_WINDOW) {
        eprintln!("xfer: {message}");
    }
    let result = if code == EXIT_WINDOW { "window" } else { "cancelled" };
    log.finish(Ending { code, result, report: done, extra: Default::default(), error: Some(message) });
    ExitCode::from(code)
}

/// An on/off flag and its `--no-` form: `None` when neither is given.
fn flag(on: bool, off: bool) -> Option<bool> {
    (on || off).then_some(on)
}

/// The exclusion patterns of a push: the source root's .xferignore, then
/// the config file's, then --exclude-from, then --exclude (the last match
/// wins, so the command line has the last word). A pull has only the
/// config file's and the command line's, which it refuses.
fn excludes(args: &PushArgs, defaults: &Settings, push: bool) -> anyhow::Result<Excludes> {
    let mut excludes = if push { Excludes::of_source(&args.src)? } else { Excludes::new() };
    for file in defaults.exclude_from.iter().chain(&args.exclude_from) {
        excludes.add_file(file)?;
    }
    for pattern in &defaults.exclude {
        excludes.add_pattern(pattern, "exclude in the config file")?;
    }
    for pattern in &args.exclude {
        excludes.add_pattern(pattern, "--exclude")?;
    }
    Ok(excludes)
}

/// The options shared by push and pull: flags first, then the config
/// file's settings for this command, then the library's defaults.
fn common(args: &PushArgs, defaults: &Settings) -> anyhow::Result<Common> {
    let compression = match args.compress {
        CompressArg::Auto => Compression::Auto,
        CompressArg::Zstd => Compression::Zstd { level: args.zstd_level },
        CompressArg::Lz4 => Compression::Lz4,
        CompressArg::Raw => Compression::Raw,
    };
    let state_dir = args.state_dir.clone().or_else(|| defaults.state_dir.clone()).or_else(default_state_dir);
    let Some(state_dir) = state_dir else {
        bail!("cannot find a state directory: set HOME (or an absolute XDG_STATE_HOME, or XFER_STATE_DIR), or pass --state-dir DIR");
    };
    let mut tags = BTreeMap::new();
    for (key, value) in &args.tags {
        if tags.insert(key.clone(), value.clone()).is_some() {
            usage_bail!("--tag {key}=... is given twice; give each key once");
        }
    }
    // The config's name was checked when it was loaded.
    let configured = defaults.congestion.as_deref().map(str::parse::<Congestion>).transpose()?;
    Ok(Common {
        state_dir,
        busy_wait: args.busy_wait.or(defaults.busy_wait).map(Duration::from_secs),
        delete: flag(args.delete, args.no_delete).or(defaults.delete).unwrap_or(false),
        checksum: flag(args.checksum, args.no_checksum).or(defaults.checksum).unwrap_or(false),
        delete_limit: DeleteLimit { max: args.max_delete.or(defaults.max_delete), guard: !args.force_delete },
        compression,
        tags,
        congestion: args.congestion.or(configured).unwrap_or_default(),
        cancel: CancellationToken::new(),
        connect_timeout: args.connect_timeout.map_or(DEFAULT_CONNECT_TIMEOUT, Duration::from_secs),
        progress: None,
        timetable: None,
        window: None,
        wait: false,
    })
}

/// Lists failed entries on stderr, prints the summary (JSON on stdout with
/// `--json`), and picks the exit code.
fn print_report(
    report: &Report,
    (args, log): (&PushArgs, &RunLog),
    push: bool,
    quiet: bool,
) -> anyhow::Result<ExitCode> {
    let json = args.json;
    // The billed direction: what this side sends on a push, receives on a pull.
    let data_bytes = match (report.dry_run, push) {
        (true, _) => report.bytes_sent,
        (false, true) => report.wire_bytes_sent,
        (false, false) => report.wire_bytes_received,
    };
    let cost = args.egress_price.map(|price| data_bytes as f64 / 1e9 * price);
    let request_cost = match (args.request_price, &report.store) {
        (Some(price), Some(store)) => {
            let writes = (store.puts + store.lists) as f64 * price.writes;
            Some((writes + store.gets as f64 * price.reads) / 1000.0)
        }
        (Some(_), None) => {
            eprintln!("xfer: --request-price: the server keeps no object store (serve --store), so no request costs");
            None
        }
        (None, _) => None,
    };
    for entry in &report.failed {
        eprintln!("xfer: skipped {}: {}", entry.path, entry.error);
    }
    let code = if report.is_partial() { EXIT_PARTIAL } else { 0 };
    // One line, not one per entry: the receiver keeps what it did not
    // apply, and the next unchanged run says nothing.
    if report.meta_kept > 0 && !json && !quiet {
        eprintln!(
            "xfer: {} entries' owners, special mode bits or xattrs were not applied as sent on the receiver \
             (a server never plants them for a remote client; a receiver that is not root cannot chown); \
             it keeps them in its records and gives them back on pull",
            report.meta_kept
        );
    }
    let mut extra = serde_json::Map::new();
    if let Some(peak) = peak_rss_bytes() {
        extra.insert("peak_rss_bytes".into(), peak.into());
    }
    if let Some(cost) = cost {
        extra.insert("egress_cost_usd".into(), cost.into());
    }
    if let Some(cost) = request_cost {
        extra.insert("request_cost_usd".into(), cost.into());
    }
    let result = if code == EXIT_PARTIAL { "partial" } else { "ok" };
    log.finish(Ending { code, result, report: Some(report), extra, error: None });
    if !json && !quiet {
        print_summary(report, cost.map(|cost| (data_bytes, cost)), request_cost);
    }
    Ok(ExitCode::from(code))
}

/// The human summary of a report on stderr, with the egress and request
/// costs if asked; sizes in binary units (KiB, MiB), as the bar shows them.
fn print_summary(report: &Report, cost: Option<(u64, f64)>, request_cost: Option<f64>) {
    let size = |bytes: u64| HumanBytes(bytes).to_string();
    if report.dry_run {
        eprintln!(
            "dry run: would write {} files, delete {}, send {} chunks in about {} (before deltas)",
            report.files_changed,
            report.files_deleted,
            report.chunks_sent,
            size(report.bytes_sent)
        );
    }
    if let Some((data_bytes, cost)) = cost {
        eprintln!("egress: {}, about {cost:.4} USD", size(data_bytes));
    }
    if let Some(s) = &report.store {
        let estimated = if report.dry_run { " (writes estimated)" } else { "" };
        eprintln!(
            "server's store{estimated}: {} writes, {} reads, {} listings, {} deletes; {} written, {} read",
            s.puts,
            s.gets,
            s.lists,
            s.deletes,
            size(s.bytes_put),
            size(s.bytes_got)
        );
    }
    if let Some(cost) = request_cost {
        eprintln!("store requests: about {cost:.4} USD");
    }
    eprintln!(
        "{} files changed ({}), {} deleted, {} failed; sent {} in {} chunks ({} as deltas), reused {} chunks; \
         wire {} up, {} down in {:.2} s",
        report.files_changed,
        size(report.bytes_written),
        report.files_deleted,
        report.failed.len(),
        size(report.bytes_sent),
        report.chunks_sent,
        report.chunks_delta,
        report.chunks_reused,
        size(report.wire_bytes_sent),
        size(report.wire_bytes_received),
        report.elapsed_s
    );
}

/// This process's peak resident memory so far (Linux's VmHWM), for reports.
fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|line| line.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}
