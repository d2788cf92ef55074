//! The `xfer` command line.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{CommandFactory, Parser};

mod args;
mod config;
mod ui;

use args::{Cli, Command, CompressArg, PushArgs};
use config::{Config, Settings, Target};

use xfer::codec::Compression;
use xfer::engine::default_state_dir;
use xfer::filter::Filter;
use xfer::net;
use xfer::net::access::Access;
use xfer::net::client::{self, RemoteError, RemotePush, RemoteUrl, Report};
use xfer::net::identity::{Fingerprint, HostTrust, Identity, KnownHosts};
use xfer::plan::DeleteLimit;
use xfer::throttle::{local_time_now, Flow, Limiter, LocalTime, Rate, Timetable, Window};

/// Exit code of a usage error, and of a run refused before it changed
/// anything (too many deletes), which is the user's call to make.
const EXIT_REFUSED: u8 = 2;

/// Exit code when some entries were skipped or failed and the rest committed.
const EXIT_PARTIAL: u8 = 3;

/// Exit code when the allowed window is closed (or closed mid-run): the
/// run is resumable.
const EXIT_WINDOW: u8 = 4;

/// Exit code after Ctrl-C (128 + SIGINT, as shells report it).
const EXIT_INTERRUPTED: u8 = 130;

/// Exit code after SIGTERM (`systemctl stop`, `kill`): 128 + SIGTERM, as
/// shells report it, though the run stopped at a commit point.
const EXIT_TERMINATED: u8 = 143;

/// Longest a stopping server waits for its sessions to reach their commit
/// point before it closes what is left.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// SIGINT and SIGTERM, caught: a transfer or a server stops at its next
/// commit point instead of dying mid-write.
struct StopSignals {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
}

impl StopSignals {
    /// Catches both signals from now on (call inside the runtime).
    fn install() -> anyhow::Result<StopSignals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(StopSignals {
            interrupt: signal(SignalKind::interrupt()).context("catch SIGINT")?,
            terminate: signal(SignalKind::terminate()).context("catch SIGTERM")?,
        })
    }

    /// The exit code of the first signal to arrive (128 + its number).
    async fn next(&mut self) -> u8 {
        tokio::select! {
            _ = self.interrupt.recv() => EXIT_INTERRUPTED,
            _ = self.terminate.recv() => EXIT_TERMINATED,
        }
    }
}

fn main() -> ExitCode {
    tune_malloc();
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("xfer: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// glibc's malloc gives threads arenas of their own (up to 8 per core) and
/// raises its mmap threshold whenever a large block is freed, so memory
/// freed by the scan thread and by large chunk buffers stays in the
/// process. Two arenas and a fixed 256 KiB threshold: a push of 50,000
/// small files peaked at 79 MB RSS on the client without, 60 MB with.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn tune_malloc() {
    extern "C" {
        fn mallopt(param: std::ffi::c_int, value: std::ffi::c_int) -> std::ffi::c_int;
    }
    const M_MMAP_THRESHOLD: std::ffi::c_int = -3;
    const M_ARENA_MAX: std::ffi::c_int = -8;
    // SAFETY: mallopt only sets allocator parameters, and this runs first
    // in main, before any other thread exists. A refusal (0) leaves the
    // defaults, which are merely larger.
    unsafe {
        mallopt(M_ARENA_MAX, 2);
        mallopt(M_MMAP_THRESHOLD, 256 * 1024);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn tune_malloc() {}

/// Logging of a push or pull: with -v what it does (-vv in detail),
/// without it only what the user must know.
fn init_transfer_logging(verbose: u8, quiet: bool) {
    if verbose > 0 {
        let level = if verbose > 1 { tracing::Level::DEBUG } else { tracing::Level::INFO };
        tracing_subscriber::fmt().with_max_level(level).with_writer(std::io::stderr).with_target(false).init();
    } else if !quiet {
        // Only a damaged state database that was moved aside and rebuilt.
        use tracing_subscriber::prelude::*;
        let only =
            tracing_subscriber::filter::Targets::new().with_target("xfer::fs::store::state", tracing::Level::WARN);
        let layer = tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_target(false);
        tracing_subscriber::registry().with(layer.with_filter(only)).init();
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let verbose = cli.verbose > 0;
    if matches!(cli.command, Command::Push(_) | Command::Pull(_)) {
        init_transfer_logging(cli.verbose, cli.quiet);
    }
    // -v lists what changes, as rsync -v lists the files it sends.
    match cli.command {
        Command::Push(args) => push(PushArgs { itemize: args.itemize || verbose, ..args }, cli.quiet),
        Command::Pull(args) => pull(PushArgs { itemize: args.itemize || verbose, ..args }, cli.quiet),
        Command::Serve {
            root,
            listen,
            allow,
            authorized_clients,
            config_dir,
            bwlimit,
            bwlimit_total,
            congestion,
            audit_log,
            max_sessions,
            idle_timeout,
        } => {
            let per_session = bwlimit.as_deref().map(str::parse::<Rate>).transpose()?.unwrap_or_default();
            let total = bwlimit_total.as_deref().map(str::parse::<Rate>).transpose()?.unwrap_or_default();
            let grants = (allow.as_slice(), authorized_clients.as_deref());
            let config_dir = config_dir_or_default(config_dir)?;
            let configured = Config::load(&config_dir)?.serve.congestion;
            // Checked when the config was loaded.
            let configured = configured.as_deref().map(str::parse::<net::Congestion>).transpose()?;
            let limits = ServeLimits {
                per_session,
                total,
                max_sessions,
                idle_timeout: Duration::from_secs(idle_timeout),
                congestion: congestion.or(configured).unwrap_or_default(),
            };
            serve(root, listen, grants, config_dir, limits, audit_log)
        }
        Command::Trust { authority, fingerprint, config_dir } => {
            let fingerprint: Fingerprint = fingerprint.parse()?;
            let mut hosts = KnownHosts::load(&config_dir_or_default(config_dir)?.join(KNOWN_HOSTS))?;
            hosts.pin(&authority, fingerprint)?;
            eprintln!("xfer: pinned {authority} to {fingerprint}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Digest { file } => digest(&file),
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "xfer", &mut std::io::stdout());
            Ok(ExitCode::SUCCESS)
        }
        Command::Man => {
            clap_mangen::Man::new(Cli::command()).render(&mut std::io::stdout()).context("write the man page")?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Id { config_dir } => {
            let identity = Identity::load_or_create(&config_dir_or_default(config_dir)?)?;
            println!("{}", identity.fingerprint());
            Ok(ExitCode::SUCCESS)
        }
    }
}

const KNOWN_HOSTS: &str = "known_hosts";

fn config_dir_or_default(dir: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    match dir.or_else(xfer::net::identity::default_config_dir) {
        Some(dir) => Ok(dir),
        None => bail!("cannot find a config directory: set XDG_CONFIG_HOME or HOME, or pass --config-dir DIR"),
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().context("cannot start the async runtime")
}

/// What `xfer serve` allows each session and all of them.
struct ServeLimits {
    per_session: Rate,
    total: Rate,
    max_sessions: usize,
    idle_timeout: Duration,
    congestion: net::Congestion,
}

/// The clients `xfer serve` admits: `--allow` and `--authorized-clients`
/// together, at least one.
fn serve_access(allow: &[String], authorized_clients: Option<&std::path::Path>) -> anyhow::Result<Access> {
    let allow = allow.iter().map(|fp| fp.parse::<Fingerprint>()).collect::<Result<Vec<_>, _>>()?;
    let mut access = Access::allow(&allow);
    if let Some(file) = authorized_clients {
        access.extend(Access::load(file)?);
    }
    if access.is_empty() {
        bail!(
            "no client is allowed: pass --allow FINGERPRINT or --authorized-clients FILE \
             (run `xfer id` on the client to get its fingerprint)"
        );
    }
    Ok(access)
}

fn serve(
    root: PathBuf,
    listen: std::net::SocketAddr,
    (allow, authorized_clients): (&[String], Option<&std::path::Path>),
    config_dir: PathBuf,
    limits: ServeLimits,
    audit_log: Option<PathBuf>,
) -> anyhow::Result<ExitCode> {
    let identity = Identity::load_or_create(&config_dir)?;
    let access = serve_access(allow, authorized_clients)?;
    std::fs::create_dir_all(&root).with_context(|| format!("create {}", root.display()))?;
    let root = root.canonicalize().with_context(|| format!("open {}", root.display()))?;
    let audit_log = audit_log.unwrap_or_else(|| root.join(net::driver::SERVER_STATE_DIR).join("audit.jsonl"));
    let audit = xfer::net::audit::AuditLog::open(&audit_log).context("open the audit log (--audit-log FILE)")?;
    // Session records on stderr, one line each, for the operator's log.
    tracing_subscriber::fmt().with_writer(std::io::stderr).with_target(false).init();
    let runtime = runtime()?;
    runtime.block_on(async {
        let tuning = net::Tuning::with_congestion(limits.congestion);
        let endpoint =
            net::server_endpoint(listen, &identity, tuning).with_context(|| format!("listen on {listen}"))?;
        eprintln!("xfer: serving {} on {} as {}", root.display(), endpoint.local_addr()?, identity.fingerprint());
        let mut config = net::driver::ServeConfig::new(root, access);
        config.per_session = limits.per_session;
        config.total = Limiter::new(limits.total);
        config.max_sessions = limits.max_sessions;
        config.idle_timeout = limits.idle_timeout;
        config.congestion = limits.congestion;
        config.audit = Some(Arc::new(audit));
        let shutdown = config.shutdown.clone();
        let config = std::sync::Arc::new(config);
        let mut signals = StopSignals::install()?;
        let serving = net::driver::serve(endpoint.clone(), config);
        tokio::pin!(serving);
        tokio::select! {
            () = &mut serving => {}
            code = signals.next() => {
                let name = if code == EXIT_TERMINATED { "SIGTERM" } else { "SIGINT" };
                eprintln!("xfer: {name}: stopping each session at its next commit point");
                shutdown.cancel();
                if tokio::time::timeout(SHUTDOWN_GRACE, &mut serving).await.is_err() {
                    tracing::warn!(grace_s = SHUTDOWN_GRACE.as_secs(), "sessions still running after the grace period");
                }
                endpoint.close(0u32.into(), b"server shutting down");
                let _ = tokio::time::timeout(Duration::from_secs(2), endpoint.wait_idle()).await;
            }
        }
        Ok::<_, anyhow::Error>(())
    })?;
    // A pull's scan left running reads only: not waited for.
    runtime.shutdown_timeout(Duration::from_secs(1));
    Ok(ExitCode::SUCCESS)
}

/// Runs `session` against `url`'s server with this host's identity and the
/// server's pin (from `--server-fingerprint` or known hosts). An unknown
/// server is retried once with the key it presented when `--accept-new`
/// allows; the key a session verified is pinned for next time.
fn with_trust<T>(
    args: &PushArgs,
    url: &RemoteUrl,
    configured: Option<Fingerprint>,
    session: impl Fn(&Identity, Option<Fingerprint>) -> Result<T, RemoteError>,
) -> anyhow::Result<T> {
    let config_dir = config_dir_or_default(args.config_dir.clone())?;
    let identity = Identity::load_or_create(&config_dir)?;
    let mut hosts = KnownHosts::load(&config_dir.join(KNOWN_HOSTS))?;
    let pin = match (&args.server_fingerprint, configured, hosts.check(&url.authority)) {
        (Some(fp), ..) => Some(fp.parse::<Fingerprint>()?),
        (None, Some(fp), _) | (None, None, HostTrust::Pinned(fp)) => Some(fp),
        (None, None, HostTrust::Unknown) => None,
    };
    let mut used = pin;
    let mut result = session(&identity, pin);
    if let Err(RemoteError::UntrustedServer { seen, .. }) = &result {
        if pin.is_none() && args.accept_new {
            eprintln!("xfer: trusting {} on first use: {seen}", url.authority);
            used = Some(*seen);
            result = session(&identity, used);
        }
    }
    let value = result?;
    if let Some(fp) = used {
        if hosts.check(&url.authority) != HostTrust::Pinned(fp) {
            hosts.pin(&url.authority, fp)?;
        }
    }
    Ok(value)
}

fn pull(args: PushArgs, quiet: bool) -> anyhow::Result<ExitCode> {
    let config = Config::load(&config_dir_or_default(args.config_dir.clone())?)?;
    let (url, configured) = match config.target(&args.src)? {
        Target::Remote(url, pin) => (url, pin),
        Target::Local => bail!(
            "{} is not a server URL or a remote of the config file: use xfer://HOST[:PORT]/PATH \
             (for local copies use xfer push)",
            args.src.display()
        ),
    };
    transfer(&args, &config, false, quiet, |runtime, options| {
        with_trust(&args, &url, configured, |identity, pin| {
            runtime.block_on(client::pull(&url, &args.dest, identity, pin, options))
        })
    })
}

fn push(args: PushArgs, quiet: bool) -> anyhow::Result<ExitCode> {
    let config = Config::load(&config_dir_or_default(args.config_dir.clone())?)?;
    let target = config.target(&args.dest)?;
    transfer(&args, &config, true, quiet, |runtime, options| match target {
        Target::Remote(url, configured) => with_trust(&args, &url, configured, |identity, pin| {
            runtime.block_on(client::push(&args.src, &url, identity, pin, options))
        }),
        Target::Local => runtime
            .block_on(client::push_embedded(&args.src, &args.dest, options))
            .with_context(|| format!("push {} -> {}", args.src.display(), args.dest.display())),
    })
}

/// Runs a push or pull with the options of `args`: Ctrl-C cancels it at a
/// commit point; the outcome is reported (as JSON with `--json`, errors
/// included) and mapped to the exit code.
fn transfer(
    args: &PushArgs,
    config: &Config,
    push: bool,
    quiet: bool,
    run: impl FnOnce(&tokio::runtime::Runtime, &RemotePush) -> anyhow::Result<Report>,
) -> anyhow::Result<ExitCode> {
    let settings = config.settings(push);
    let mut options = options(args, &settings, push)?;
    let (window_text, window) = transfer_window(args, &settings)?;
    let bwlimit = args.bwlimit.as_deref().or(settings.bwlimit.as_deref());
    let timetable = bwlimit.map(str::parse::<Timetable>).transpose()?;
    let direction = if push { Flow::Up } else { Flow::Down };
    let started_at = now()?;
    if let Some(timetable) = &timetable {
        options.bwlimit = Limiter::new(timetable.rate_at(started_at, direction));
    }
    let runtime = runtime()?;
    if let Some(window) = &window {
        if let Some(code) = wait_for_window(&runtime, window, window_text, started_at, args, quiet) {
            return Ok(code);
        }
    }
    // Bars only for a person watching: not under cron, not with -q.
    let bars = (!quiet && std::io::IsTerminal::is_terminal(&std::io::stderr())).then(ui::Bars::new);
    let console = Arc::new(ui::Console { bars, itemize: args.itemize.then_some(args.json) });
    if console.bars.is_some() || console.itemize.is_some() {
        options.progress = xfer::progress::ProgressSink::new(console.clone());
    }
    let stop = watch_stops(&runtime, &options, timetable, window, direction)?;
    let outcome = run(&runtime, &options);
    console.finish();
    transfer_outcome(outcome, args, push, quiet, window_text, &stop)
}

/// The window the transfer runs in, with its text for messages. The
/// command line's window wins over the config file's; `--window always`
/// lifts a configured window.
fn transfer_window<'a>(args: &'a PushArgs, settings: &'a Settings) -> anyhow::Result<(&'a str, Option<Window>)> {
    let window_text = args.window.as_deref().or(settings.window.as_deref()).filter(|w| *w != "always");
    let window_text = window_text.unwrap_or_default();
    let window = (!window_text.is_empty()).then(|| window_text.parse::<Window>()).transpose()?;
    if args.wait && window.is_none() {
        bail!("--wait waits for a window to open: give --window WINDOW (or a window in the config file)");
    }
    Ok((window_text, window))
}

/// Waits (with `--wait`) for a closed `window` to open; without it, the
/// exit code of a run outside its window.
fn wait_for_window(
    runtime: &tokio::runtime::Runtime,
    window: &Window,
    window_text: &str,
    started_at: LocalTime,
    args: &PushArgs,
    quiet: bool,
) -> Option<ExitCode> {
    if window.is_open(started_at) {
        return None;
    }
    let wait = window.minutes_until_open(started_at);
    if !args.wait {
        let when = wait.map_or_else(|| "never".to_string(), |m| format!("in {m} min"));
        let message = format!("outside the window {} (it opens {when}); pass --wait to wait", window_text);
        return Some(stopped(args.json, quiet, EXIT_WINDOW, &message));
    }
    if !quiet {
        eprintln!("xfer: waiting for the window {} to open", window_text);
    }
    runtime.block_on(async {
        // An unreadable clock file reads as closed until it is fixed.
        while !now().is_ok_and(|at| window.is_open(at)) {
            tokio::time::sleep(RECHECK).await;
        }
    });
    None
}

/// Cancels the transfer on a stop signal or when the window closes, and
/// keeps the rate to the timetable; the returned code says why it stopped.
fn watch_stops(
    runtime: &tokio::runtime::Runtime,
    options: &RemotePush,
    timetable: Option<Timetable>,
    window: Option<Window>,
    direction: Flow,
) -> anyhow::Result<Arc<AtomicU8>> {
    let stop = Arc::new(AtomicU8::new(EXIT_INTERRUPTED));
    let mut signals = runtime.block_on(async { StopSignals::install() })?;
    let (cancel, reason) = (options.cancel.clone(), stop.clone());
    runtime.spawn(async move {
        let code = signals.next().await;
        // A window that closed first keeps its code.
        let _ = reason.compare_exchange(EXIT_INTERRUPTED, code, Ordering::SeqCst, Ordering::SeqCst);
        cancel.cancel();
    });
    // The window closing stops the transfer at a commit point; a timetable
    // is re-read as the clock moves.
    let (cancel, limiter, reason) = (options.cancel.clone(), options.bwlimit.clone(), stop.clone());
    runtime.spawn(async move {
        loop {
            tokio::time::sleep(RECHECK).await;
            // An unreadable clock file (tests only) changes nothing.
            let Ok(at) = now() else { continue };
            if let Some(timetable) = &timetable {
                limiter.set_rate(timetable.rate_at(at, direction));
            }
            if window.as_ref().is_some_and(|w| !w.is_open(at)) {
                reason.store(EXIT_WINDOW, Ordering::SeqCst);
                cancel.cancel();
                return;
            }
        }
    });
    Ok(stop)
}

/// Reports the transfer's outcome and picks its exit code.
fn transfer_outcome(
    outcome: anyhow::Result<Report>,
    args: &PushArgs,
    push: bool,
    quiet: bool,
    window_text: &str,
    stop: &AtomicU8,
) -> anyhow::Result<ExitCode> {
    match outcome {
        Ok(report) => print_report(&report, args, push, quiet),
        Err(e) if matches!(e.downcast_ref::<RemoteError>(), Some(RemoteError::Cancelled)) => {
            let code = stop.load(Ordering::SeqCst);
            let message = match code {
                EXIT_WINDOW => format!("the window {} closed; {e:#}", window_text),
                EXIT_TERMINATED => format!("stopped by SIGTERM; {e:#}"),
                _ => format!("interrupted; {e:#}"),
            };
            Ok(stopped(args.json, quiet, code, &message))
        }
        Err(e) => match delete_refused(&e) {
            Some(refused) => {
                let message = if args.dry_run {
                    format!("dry run: the run would be refused: {refused}")
                } else {
                    format!("{refused}; nothing was changed")
                };
                if args.json {
                    println!("{}", serde_json::json!({ "exit_code": EXIT_REFUSED, "error": message }));
                }
                eprintln!("xfer: error: {message}");
                Ok(ExitCode::from(EXIT_REFUSED))
            }
            None => {
                if args.json {
                    println!("{}", serde_json::json!({ "exit_code": 1, "error": format!("{e:#}") }));
                }
                Err(e)
            }
        },
    }
}

/// The delete limit's refusal, if that is what stopped the run.
fn delete_refused(e: &anyhow::Error) -> Option<&xfer::plan::DeleteRefused> {
    use xfer::session::SessionError;
    match e.downcast_ref::<RemoteError>()? {
        RemoteError::Session(SessionError::DeleteRefused(refused))
        | RemoteError::Local(xfer::Error::DeleteRefused(refused)) => Some(refused),
        _ => None,
    }
}

/// The local time of the week, for windows and timetables.
/// `XFER_CLOCK_FILE` names a file holding `DAY HH:MM` to use instead of the
/// system clock: tests move it to open and close windows (write it by
/// rename, so a reader never sees it half-written).
fn now() -> anyhow::Result<LocalTime> {
    let Some(file) = std::env::var_os("XFER_CLOCK_FILE") else {
        return Ok(local_time_now());
    };
    let text = std::fs::read_to_string(&file)
        .with_context(|| format!("read the clock file {} (XFER_CLOCK_FILE)", PathBuf::from(&file).display()))?;
    Ok(text.parse()?)
}

/// How often a running transfer re-reads the clock for its window and
/// timetable: reading it is cheap, and a window that closes should stop the
/// transfer within a second or so.
const RECHECK: std::time::Duration = std::time::Duration::from_secs(1);

/// Reports a run that stopped without failing (window, Ctrl-C). A closed
/// window is routine under cron: with -q only the exit code tells.
fn stopped(json: bool, quiet: bool, code: u8, message: &str) -> ExitCode {
    if json {
        println!("{}", serde_json::json!({ "exit_code": code, "error": message }));
    }
    if !(quiet && code == EXIT_WINDOW) {
        eprintln!("xfer: {message}");
    }
    ExitCode::from(code)
}

/// An on/off flag and its `--no-` form: `None` when neither is given.
fn flag(on: bool, off: bool) -> Option<bool> {
    (on || off).then_some(on)
}

/// The options shared by push and pull: flags first, then the config
/// file's settings for this command, then built-in defaults.
fn options(args: &PushArgs, defaults: &Settings, push: bool) -> anyhow::Result<RemotePush> {
    // The source root's .xferignore, then --exclude-from, then --exclude:
    // the last match wins, so the command line has the last word.
    let mut filter = if push { xfer::fs::ignore::with_root_ignore(&args.src)? } else { Filter::new() };
    // The config file's patterns come before the command line's.
    for file in defaults.exclude_from.iter().chain(&args.exclude_from) {
        xfer::fs::ignore::add_file(&mut filter, file)?;
    }
    for pattern in &defaults.exclude {
        filter.add_pattern(pattern, "exclude in the config file")?;
    }
    for pattern in &args.exclude {
        filter.add_pattern(pattern, "--exclude")?;
    }
    let filter = (!filter.is_empty()).then(|| Arc::new(filter));
    let compression = match args.compress {
        CompressArg::Auto => Compression::Auto,
        CompressArg::Zstd => Compression::Zstd { level: args.zstd_level },
        CompressArg::Lz4 => Compression::Lz4,
        CompressArg::Raw => Compression::Raw,
    };
    let state_dir = args.state_dir.clone().or_else(|| defaults.state_dir.clone()).or_else(default_state_dir);
    let Some(state_dir) = state_dir else {
        bail!("cannot find a state directory: set XDG_STATE_HOME or HOME, or pass --state-dir DIR");
    };
    // Built-in defaults come from the library's Options::new.
    let mut options = RemotePush::new(state_dir);
    if let Some(seconds) = args.busy_wait.or(defaults.busy_wait) {
        options.busy_wait = std::time::Duration::from_secs(seconds);
    }
    options.delete = flag(args.delete, args.no_delete).or(defaults.delete).unwrap_or(false);
    options.checksum = flag(args.checksum, args.no_checksum).or(defaults.checksum).unwrap_or(false);
    options.delete_limit = DeleteLimit { max: args.max_delete.or(defaults.max_delete), guard: !args.force_delete };
    options.compression = compression;
    options.filter = filter;
    options.dry_run = args.dry_run;
    for (key, value) in &args.tags {
        if options.tags.insert(key.clone(), value.clone()).is_some() {
            bail!("--tag {key}=... is given twice; give each key once");
        }
    }
    options.log = args.log_json.clone();
    // The config's name was checked when it was loaded.
    let configured = defaults.congestion.as_deref().map(str::parse::<net::Congestion>).transpose()?;
    options.congestion = args.congestion.or(configured).unwrap_or_default();
    Ok(options)
}

/// Lists failed entries on stderr, prints the summary (JSON on stdout with
/// `--json`), and picks the exit code.
fn print_report(report: &Report, args: &PushArgs, push: bool, quiet: bool) -> anyhow::Result<ExitCode> {
    let json = args.json;
    // The billed direction: what this side sends on a push, receives on a pull.
    let data_bytes = match (report.dry_run, push) {
        (true, _) => report.bytes_sent,
        (false, true) => report.wire_bytes_sent,
        (false, false) => report.wire_bytes_received,
    };
    let cost = args.egress_price.map(|price| data_bytes as f64 / 1e9 * price);
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
    if json {
        let mut value = serde_json::to_value(report)?;
        if let Some(object) = value.as_object_mut() {
            object.insert("exit_code".into(), code.into());
            if let Some(peak) = peak_rss_bytes() {
                object.insert("peak_rss_bytes".into(), peak.into());
            }
            if let Some(cost) = cost {
                object.insert("egress_cost_usd".into(), cost.into());
            }
        }
        println!("{value}");
    } else if !quiet {
        if report.dry_run {
            eprintln!(
                "dry run: would write {} files, delete {}, send {} chunks in about {} bytes (before deltas)",
                report.files_changed, report.files_deleted, report.chunks_sent, report.bytes_sent
            );
        }
        if let Some(cost) = cost {
            eprintln!("egress: {data_bytes} bytes, about {cost:.4} USD");
        }
        eprintln!(
            "{} files changed, {} deleted, {} failed; sent {} chunks in {} bytes ({} as deltas), reused {}; \
             wire {} B up, {} B down in {:.2} s",
            report.files_changed,
            report.files_deleted,
            report.failed.len(),
            report.chunks_sent,
            report.bytes_sent,
            report.chunks_delta,
            report.chunks_reused,
            report.wire_bytes_sent,
            report.wire_bytes_received,
            report.elapsed_s
        );
    }
    Ok(ExitCode::from(code))
}

fn digest(path: &std::path::Path) -> anyhow::Result<ExitCode> {
    let file = std::fs::File::open(path).with_context(|| format!("open {}", path.display()))?;
    let size = file.metadata().with_context(|| format!("stat {}", path.display()))?.len();
    let params = xfer::chunk::ChunkParams::for_size(size);
    let digest = xfer::chunk::digest_stream_sized(file, params, size, |_, _, _| Ok(()))
        .with_context(|| format!("read {}", path.display()))?;
    let report = serde_json::json!({
        "size": digest.size,
        "hash": blake3::Hash::from_bytes(digest.hash.0).to_hex().to_string(),
        "chunk_params": [params.min(), params.avg(), params.max()],
        "chunks": digest.chunks.len(),
    });
    println!("{report}");
    Ok(ExitCode::SUCCESS)
}

/// This process's peak resident memory so far (Linux's VmHWM), for reports.
fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|line| line.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}
