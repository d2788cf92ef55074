//! The `xfer` command line.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{CommandFactory, Parser};

mod args;
mod config;
mod history;
mod record;
mod serve;
mod transfer;
mod trust;
mod ui;

use args::{Cli, Command, PushArgs};
use serve::{serve, ServeLimits};
use transfer::{pull, push};

use xfer::{FileDigest, Identity, TransferError};

// Exit codes: args.rs's EXIT_CODES lists them for the user, and
// `exit_code_of` picks them from typed errors.

/// Exit code of a usage error (a bad flag, value or config file), and of a
/// run refused before it changed anything (too many deletes), which is the
/// user's call to make.
const EXIT_USAGE: u8 = 2;

/// Exit code when some entries were skipped or failed and the rest committed.
const EXIT_PARTIAL: u8 = 3;

/// Exit code when the allowed window is closed (or closed mid-run): the
/// run is resumable.
const EXIT_WINDOW: u8 = 4;

/// Exit code when the destination stayed busy through `--busy-wait`.
const EXIT_BUSY: u8 = 5;

/// Exit code when the server could not be reached.
const EXIT_UNREACHABLE: u8 = 6;

/// Exit code when a key was refused: the server's, or this client's by the
/// server.
const EXIT_UNTRUSTED: u8 = 7;

/// Exit code after Ctrl-C (128 + SIGINT, as shells report it).
const EXIT_INTERRUPTED: u8 = 130;

/// Exit code after SIGTERM (`systemctl stop`, `kill`): 128 + SIGTERM, as
/// shells report it, though the run stopped at a commit point.
const EXIT_TERMINATED: u8 = 143;

/// A command the user must change: a bad flag, value or config file
/// (exit 2). It reads as the error it wraps.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub(crate) struct Usage(#[from] anyhow::Error);

/// `err`, marked as a usage error.
pub(crate) fn usage(err: impl Into<anyhow::Error>) -> anyhow::Error {
    Usage(err.into()).into()
}

impl Usage {
    /// A usage error that says `message`.
    pub(crate) fn error(message: impl Into<String>) -> anyhow::Error {
        usage(anyhow::anyhow!(message.into()))
    }
}

/// Returns a usage error made as `anyhow!` makes one.
macro_rules! usage_bail {
    ($($arg:tt)*) => {
        return Err($crate::usage(anyhow::anyhow!($($arg)*)))
    };
}
pub(crate) use usage_bail;

/// The exit code of a command that failed with `err`, from the typed
/// errors in its chain (never from its text): the first that has one.
pub(crate) fn exit_code_of(err: &anyhow::Error) -> u8 {
    err.chain().find_map(code_of).unwrap_or(1)
}

fn code_of(cause: &(dyn std::error::Error + 'static)) -> Option<u8> {
    let usage = cause.is::<Usage>()
        || cause.is::<xfer::ThrottleError>()
        || cause.is::<xfer::UnknownCongestion>()
        || cause.is::<xfer::RetentionError>()
        || cause.is::<toml::de::Error>()
        || matches!(
            cause.downcast_ref::<xfer::IdentityError>(),
            Some(xfer::IdentityError::BadFingerprint(_) | xfer::IdentityError::BadAuthority { .. })
        )
        || cause.downcast_ref::<xfer::FilterError>().is_some_and(|e| !matches!(e, xfer::FilterError::Read { .. }));
    if usage {
        return Some(EXIT_USAGE);
    }
    let transfer = match cause.downcast_ref::<transfer::Hinted>() {
        Some(hinted) => &hinted.error,
        None => cause.downcast_ref::<TransferError>()?,
    };
    Some(if transfer.is_usage() || transfer.delete_refused().is_some() {
        EXIT_USAGE
    } else if transfer.is_busy() {
        EXIT_BUSY
    } else if transfer.is_unreachable() {
        EXIT_UNREACHABLE
    } else if transfer.is_untrusted() {
        EXIT_UNTRUSTED
    } else {
        1
    })
}

/// `eprintln!` for a process that must outlive its stderr (a server whose
/// terminal went away): a line that cannot be written is dropped instead
/// of panicking.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}
pub(crate) use say;

/// Warns that a rate caps a transfer under 1 KiB/s, which is surely a
/// slip (a bare number read as bytes/s): bare numbers are KiB/s.
pub(crate) fn warn_slow_rate(what: &str, text: &str) {
    eprintln!(
        "xfer: warning: {what} {text:?} caps the transfer under 1 KiB/s; a bare number is KiB/s \
         (100 is 100 KiB/s), a byte rate needs its B (500B)"
    );
}

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
            ExitCode::from(exit_code_of(&err))
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
/// without it only what the user must know (a damaged state database
/// that was moved aside and rebuilt), with -q nothing.
fn init_transfer_logging(verbose: u8, quiet: bool) -> anyhow::Result<()> {
    use tracing::Level;
    use tracing_subscriber::filter::Targets;
    let default = match (verbose, quiet) {
        (0, true) => Targets::new(),
        (0, false) => Targets::new().with_target("xfer::fs::store::state", Level::WARN),
        (1, _) => Targets::new().with_default(Level::INFO),
        _ => Targets::new().with_default(Level::DEBUG),
    };
    init_logging(default)
}

/// Log lines on stderr, filtered by `RUST_LOG` when it is set, else by
/// `default`. Under journald (stderr is the stream `$JOURNAL_STREAM`
/// names) lines carry no time of their own: the journal stamps each one.
pub(crate) fn init_logging(default: tracing_subscriber::filter::Targets) -> anyhow::Result<()> {
    use tracing_subscriber::prelude::*;
    use tracing_subscriber::{EnvFilter, Layer, Registry};
    let filter: Box<dyn Layer<Registry> + Send + Sync> = match std::env::var("RUST_LOG") {
        Ok(text) if !text.trim().is_empty() => Box::new(EnvFilter::try_new(&text).map_err(|e| {
            Usage::error(format!(
                "RUST_LOG={text:?} is not a log filter ({e}); e.g. RUST_LOG=info or RUST_LOG=xfer=debug"
            ))
        })?),
        _ => Box::new(default),
    };
    let journal = stderr_is_journal();
    // Two layers, one of them absent: each sits at its own place in the stack.
    // A closed stderr loses the lines and nothing else: the layer would
    // report its write error with eprintln!, which panics there.
    let timed = (!journal).then(|| {
        tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_target(false).log_internal_errors(false)
    });
    let untimed = journal.then(|| {
        tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_target(false)
            .log_internal_errors(false)
            .without_time()
    });
    // A second call (none is made) would find a subscriber set: harmless.
    let _ = tracing_subscriber::registry().with(filter).with(timed).with(untimed).try_init();
    Ok(())
}

/// Whether stderr is journald's stream: systemd sets `JOURNAL_STREAM` to
/// its `DEVICE:INODE`, which a redirected stderr no longer matches.
fn stderr_is_journal() -> bool {
    let Some(named) = std::env::var_os("JOURNAL_STREAM") else { return false };
    let Ok(stat) = rustix::fs::fstat(std::io::stderr()) else { return false };
    named.to_str() == Some(format!("{}:{}", stat.st_dev, stat.st_ino).as_str())
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let verbose = cli.verbose > 0;
    if matches!(cli.command, Command::Push(_) | Command::Pull(_)) {
        init_transfer_logging(cli.verbose, cli.quiet)?;
    }
    // -v lists what changes, as rsync -v lists the files it sends.
    match cli.command {
        Command::Push(args) => push(PushArgs { itemize: args.itemize || verbose, ..args }, cli.quiet),
        Command::Pull(args) => pull(PushArgs { itemize: args.itemize || verbose, ..args }, cli.quiet),
        Command::Serve {
            root,
            store,
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
            dedup_across_clients,
            metrics,
            retention,
        } => {
            let config_dir = config_dir_or_default(config_dir)?;
            let rates = (bwlimit.as_deref(), bwlimit_total.as_deref());
            let limits = ServeLimits::from_flags(
                rates,
                (congestion, metrics),
                &config_dir,
                max_sessions,
                idle_timeout,
                dedup_across_clients,
            )?;
            let grants = (allow.as_slice(), authorized_clients.as_deref());
            serve((root, store), listen, grants, config_dir, limits, audit_log, serve::retention(&retention)?)
        }
        Command::Snapshots(args) => history::snapshots(&args),
        Command::Forget(args) => history::forget(&args),
        Command::Prune(args) => history::prune(&args),
        Command::Trust { authority, fingerprint, config_dir } => trust::trust(&authority, &fingerprint, config_dir),
        Command::Digest { file } => digest(&file),
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "xfer", &mut std::io::stdout());
            Ok(ExitCode::SUCCESS)
        }
        Command::Man { command, dir } => man(command.as_deref(), dir.as_deref()),
        Command::Id { config_dir } => {
            let identity = Identity::load_or_create(&config_dir_or_default(config_dir)?)?;
            println!("{}", identity.fingerprint());
            Ok(ExitCode::SUCCESS)
        }
    }
}

const KNOWN_HOSTS: &str = "known_hosts";

fn config_dir_or_default(dir: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    match dir.or_else(xfer::default_config_dir) {
        Some(dir) => Ok(dir),
        None => bail!("cannot find a config directory: set HOME (or an absolute XDG_CONFIG_HOME, or XFER_CONFIG_DIR), or pass --config-dir DIR"),
    }
}

/// `xfer man`: xfer(1) or one subcommand's page on stdout, or every
/// page into `dir`.
fn man(command: Option<&str>, dir: Option<&std::path::Path>) -> anyhow::Result<ExitCode> {
    let mut cli = Cli::command().disable_help_subcommand(true);
    // Gives each subcommand its page name (xfer-push), which xfer(1) cites.
    cli.build();
    if let Some(dir) = dir {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        clap_mangen::generate_to(cli, dir).with_context(|| format!("write the man pages into {}", dir.display()))?;
        return Ok(ExitCode::SUCCESS);
    }
    let page = match command {
        None => cli,
        Some(name) => {
            let pages = || cli.get_subcommands().filter(|c| !c.is_hide_set());
            let Some(sub) = pages().find(|c| c.get_name() == name) else {
                let names: Vec<&str> = pages().map(clap::Command::get_name).collect();
                usage_bail!("no page for {name:?}: the subcommands are {}", names.join(", "));
            };
            sub.clone()
        }
    };
    clap_mangen::Man::new(page).render(&mut std::io::stdout()).context("write the man page")?;
    Ok(ExitCode::SUCCESS)
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().context("cannot start the async runtime")
}

fn digest(path: &std::path::Path) -> anyhow::Result<ExitCode> {
    let digest = FileDigest::of(path).with_context(|| format!("digest {}", path.display()))?;
    println!("{}", serde_json::to_value(&digest)?);
    Ok(ExitCode::SUCCESS)
}
